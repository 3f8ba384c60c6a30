//! Pipelines: text-to-image, image-to-image, inpainting and upscaling, all through one
//! denoising loop ([`denoise`]) with classifier-free guidance, progress, cancellation and the
//! CPU rerun after a GPU fault. The autoencoder can run in overlapping tiles
//! ([`Pipeline::with_vae_tiling`]) so a large image's decode is not the memory peak.
//!
//! Each pipeline runs one kind of model ([`crate::arch::Task`], from the model file):
//! txt2img and img2img a txt2img model, [`Pipeline::inpaint`] an inpaint model and
//! [`Pipeline::upscale`] an sr model; the wrong kind is an [`crate::Error::Input`] naming the
//! command the model needs.
mod denoise;
pub mod image;
pub mod img2img;
pub mod inpaint;
pub mod memory;
mod plans;
pub mod progress;
mod shared;
pub mod tiles;
pub mod txt2img;
pub mod upscale;
mod vae_norm;
mod vae_tiles;

pub use img2img::{Img2Img, DEFAULT_STRENGTH};
pub use inpaint::Inpaint;
pub use progress::{Cancel, Progress};
pub use shared::{check_sampling, Decoder, Generated, Pipeline};
pub use txt2img::Txt2Img;
pub use upscale::{tile_seed, tile_size, TileLayout, Upscale};
pub use vae_tiles::VaeTiling;
