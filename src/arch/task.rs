//! What a model is for, and how its conditioning enters the UNet: the LDM paper's
//! concatenation (section 4.4 super-resolution, 4.5 inpainting). Training and every runtime
//! pipeline build the UNet input through these functions, so the channel order, the mask
//! convention and the degradation cannot drift between the two.
//!
//! Conventions (images in [-1, 1], NCHW, one image at a time, `f` = autoencoder factor):
//! - **sr**: the low-resolution image is the high-resolution one box-downsampled by `f`
//!   ([`downsample_box`]), so it has the latent's spatial size. UNet input =
//!   `[z_t (z), lowres (3)]`, in_channels = z + 3.
//! - **inpaint**: a mask is 1 where content is to be generated and 0 where the input is kept.
//!   The masked image is `image * (1 - mask)` (hidden pixels become 0, mid-gray), encoded by the
//!   autoencoder and multiplied by the latent scale. The mask reaches the latent by max-pooling
//!   over f x f cells ([`mask_to_latent`]), so a latent cell touching the hole counts as hole.
//!   UNet input = `[z_t (z), mask (1), masked-image latent (z)]` (diffusers'
//!   StableDiffusionInpaintPipeline order), in_channels = 2z + 1.
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The model's task, stored as `config.task` in the model header (absent = txt2img, so files
/// written before this field existed still load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    #[default]
    Txt2img,
    /// 4x (= autoencoder factor) super-resolution by concatenating the low-res image.
    Sr,
    /// Inpainting by concatenating the mask and the masked image's latent.
    Inpaint,
}

impl Task {
    /// The UNet input channels this task needs for `z` latent channels.
    pub fn unet_in_channels(self, z: usize) -> usize {
        match self {
            Task::Txt2img => z,
            Task::Sr => z + 3,
            Task::Inpaint => 2 * z + 1,
        }
    }

    /// What `ldm` subcommand runs this kind of model (for errors that name the fix).
    pub fn command(self) -> &'static str {
        match self {
            Task::Txt2img => "ldm generate",
            Task::Sr => "ldm upscale",
            Task::Inpaint => "ldm inpaint",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Task::Txt2img => "txt2img",
            Task::Sr => "sr",
            Task::Inpaint => "inpaint",
        })
    }
}

impl FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "txt2img" => Ok(Task::Txt2img),
            "sr" => Ok(Task::Sr),
            "inpaint" => Ok(Task::Inpaint),
            _ => Err(Error::Config(format!(
                "unknown task `{s}` (expected txt2img, sr or inpaint)"
            ))),
        }
    }
}

/// Box (area) downsampling by an integer factor: the SR degradation. `img` is [c, h, w].
pub fn downsample_box(img: &[f32], c: usize, h: usize, w: usize, f: usize) -> Result<Vec<f32>> {
    if f == 0 || h % f != 0 || w % f != 0 || img.len() != c * h * w {
        return Err(Error::Input(format!(
            "cannot downsample a {c}x{h}x{w} image ({} values) by {f}",
            img.len()
        )));
    }
    let (ho, wo) = (h / f, w / f);
    let inv = 1.0 / (f * f) as f32;
    let mut out = vec![0.0; c * ho * wo];
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                out[(ch * ho + y / f) * wo + x / f] += img[(ch * h + y) * w + x] * inv;
            }
        }
    }
    Ok(out)
}

/// The mask at latent resolution: max over each f x f cell. `mask` is [h, w] in {0, 1}.
pub fn mask_to_latent(mask: &[f32], h: usize, w: usize, f: usize) -> Result<Vec<f32>> {
    if f == 0 || h % f != 0 || w % f != 0 || mask.len() != h * w {
        return Err(Error::Input(format!(
            "cannot reduce a {h}x{w} mask ({} values) by {f}",
            mask.len()
        )));
    }
    let wo = w / f;
    let mut out = vec![0.0f32; (h / f) * wo];
    for y in 0..h {
        for x in 0..w {
            let o = &mut out[(y / f) * wo + x / f];
            *o = o.max(mask[y * w + x]);
        }
    }
    Ok(out)
}

/// `image * (1 - mask)`: the pixels the model may see. `image` is [3, h, w], `mask` [h, w].
pub fn masked_image(image: &[f32], mask: &[f32]) -> Vec<f32> {
    let hw = mask.len();
    image
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 - mask[i % hw]))
        .collect()
}

/// The UNet input for one image: the noisy latent followed by the task's conditioning
/// channels (`cond`, already at latent resolution, in the order of the module docs).
pub fn concat_channels(x_t: &[f32], cond: &[f32]) -> Vec<f32> {
    let mut v = Vec::with_capacity(x_t.len() + cond.len());
    v.extend_from_slice(x_t);
    v.extend_from_slice(cond);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_per_task() {
        assert_eq!(Task::Txt2img.unet_in_channels(4), 4);
        assert_eq!(Task::Sr.unet_in_channels(4), 7);
        assert_eq!(Task::Inpaint.unet_in_channels(4), 9);
        for t in [Task::Txt2img, Task::Sr, Task::Inpaint] {
            assert_eq!(t.to_string().parse::<Task>().unwrap(), t);
        }
        assert!("upscale".parse::<Task>().is_err());
    }

    #[test]
    fn box_downsample_averages_cells() {
        // 1 channel 4x4 -> 2x2: each output is the mean of its 2x2 cell.
        let img: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let d = downsample_box(&img, 1, 4, 4, 2).unwrap();
        assert_eq!(d, vec![2.5, 4.5, 10.5, 12.5]);
        assert!(downsample_box(&img, 1, 4, 4, 3).is_err());
        assert!(downsample_box(&img[..15], 1, 4, 4, 2).is_err());
    }

    #[test]
    fn mask_reduction_is_conservative() {
        // One hole pixel marks its whole latent cell.
        let mut m = vec![0.0; 16];
        m[5] = 1.0;
        assert_eq!(
            mask_to_latent(&m, 4, 4, 2).unwrap(),
            vec![1.0, 0.0, 0.0, 0.0]
        );
        let img = vec![0.5; 3 * 16];
        let mi = masked_image(&img, &m);
        assert_eq!(mi[5], 0.0);
        assert_eq!(mi[16 + 5], 0.0);
        assert_eq!(mi[4], 0.5);
    }
}
