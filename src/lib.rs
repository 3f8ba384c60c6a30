//! ldm-edge: latent diffusion on edge devices.
//!
//! Layers, from the file up: [`format`] (the mapped `.ldm` file), [`arch`] (UNet, autoencoder and
//! text encoder written once over [`ops::Ops`]), [`graph`] (the IR those architectures trace into),
//! [`backend`] (executors of the IR), [`sampler`] and [`pipeline`].
pub mod error;
pub mod format;
pub mod sampler;

pub use error::{Error, Result};
