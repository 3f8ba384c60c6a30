//! Pipelines: text-to-image now; img2img, inpainting and upscaling build on the same loop.
pub mod image;
pub mod progress;
pub mod txt2img;

pub use progress::{Cancel, Progress};
pub use txt2img::{Generated, Pipeline, Txt2Img};
