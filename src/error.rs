//! The crate's one error type. Each layer keeps its own typed error and converts into this one,
//! so binaries can add context with anyhow while library callers can still match on the cause.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
    #[error(transparent)]
    Sampler(#[from] crate::sampler::SamplerError),
    #[error("shape error in {op}: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error("missing weight `{0}`")]
    MissingWeight(String),
    #[error("weight `{path}` has shape {found:?}, the architecture expects {expected:?}")]
    WeightShape {
        path: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("invalid config: {0}")]
    Config(String),
    #[error("backend `{backend}`: {msg}")]
    Backend { backend: &'static str, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("cancelled")]
    Cancelled,
    /// A request that cannot run inside the memory budget, refused before any work.
    #[error("out of memory budget: {0}")]
    Memory(String),
    #[error("numerical failure: {0}")]
    NonFinite(String),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
