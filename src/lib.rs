//! ldm-edge: latent diffusion on edge devices.
//!
//! Layers, from the file up: [`format`] (the mapped `.ldm` file), [`arch`] (UNet, autoencoder and
//! text encoder written once over [`ops::Ops`]), [`graph`] (the IR those architectures trace into),
//! [`backend`] (executors of the IR), [`sampler`] and [`pipeline`].
pub mod error;
pub mod format;
pub mod sampler;

pub use error::{Error, Result};
pub mod arch;
pub mod backend;
pub mod graph;
pub mod npy;
pub mod ops;
pub mod tokenizer;
pub mod bench;
pub mod model;
pub mod pipeline;
pub mod sampler;
