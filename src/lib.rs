//! ldm-edge: latent diffusion on edge devices.
//!
//! Layers, from the file up: [`format`] (the mapped `.ldm` file), [`arch`] (UNet, autoencoder and
//! text encoder written once over [`ops::Ops`]), [`graph`] (the IR those architectures trace into),
//! [`backend`] (executors of the IR), [`sampler`], [`pipeline`] and [`model`] (a loaded file).
pub mod alloc;
pub mod arch;
pub mod backend;
pub mod bench;
pub mod board;
pub mod bundle;
pub mod display;
pub mod error;
pub mod format;
pub mod graph;
pub mod import;
pub mod install;
pub mod model;
pub mod npy;
pub mod ops;
pub mod pipeline;
pub mod preview;
pub mod quant_report;
pub mod sampler;
pub mod tokenizer;

pub use error::{Error, Result};

// The scratch directory the integration tests use, removed when the test process exits.
#[cfg(test)]
#[path = "../tests/support/scratch.rs"]
mod scratch;
