//! Installing signed bundles on a device: a content-addressed store, one atomically replaced
//! pointer, a health check before commit, automatic revert, and N-1 kept for `rollback`.
//! The protocol and the root's layout are in `src/bundle/SPEC.md`.
pub mod fault;
pub mod fsutil;
pub mod health;
mod protocol;
pub mod root;
mod status;

pub use health::{HealthOptions, HealthReport};
pub use protocol::{install, rollback, InstallOptions, Outcome};
pub use root::{Entry, Root, State, DEFAULT_ROOT};
pub use status::{status, ActiveStatus, StatusReport};

/// Failures of the machinery itself (as opposed to a bundle refused or rolled back, which are
/// [`Outcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("another install or rollback holds the lock on {0}")]
    Busy(String),
    #[error("the pointer state.json is unreadable: {0}")]
    BadState(String),
    #[error("no model is installed in {0}")]
    NoModel(String),
    #[error("no previous model to roll back to")]
    NoPrevious,
    #[error("trusted key {path}: {reason}")]
    BadKeyFile { path: String, reason: String },
    #[error("the previous model is unusable: {0}")]
    PreviousUnfit(String),
}
