//! Previews during sampling: what the image will look like, long before the decoder runs.
//!
//! The cheap method is a per-pixel linear map from the latent to RGB (a 1x1 convolution,
//! `3 x z` weights and 3 biases), fitted once per model by [`fit`] and stored in the model file
//! as two optional tensors. Applied to the sampler's current estimate of the clean latent, it
//! costs `3 (z + 1)` multiply-adds per latent pixel, so it can run after every step.
pub mod fit;

use crate::backend::WeightSource;
use crate::{Error, Result};

/// Tensor names of the stored map: weight [3, z] (RGB rows over latent channels), bias [3].
/// The map takes the latent as the sampler sees it (times latent_scale) to RGB in [-1, 1].
pub const LATENT_RGB_WEIGHT: &str = "preview.latent_rgb.weight";
pub const LATENT_RGB_BIAS: &str = "preview.latent_rgb.bias";

/// The optional preview tensors and their shapes for a model with `z` latent channels.
pub fn param_specs(z: usize) -> [(&'static str, Vec<usize>); 2] {
    [(LATENT_RGB_WEIGHT, vec![3, z]), (LATENT_RGB_BIAS, vec![3])]
}

/// A latent-to-RGB linear map.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentRgb {
    /// Row-major [3, z].
    pub weight: Vec<f32>,
    pub bias: [f32; 3],
}

/// An 8-bit RGB preview at image resolution.
#[derive(Clone, Debug, PartialEq)]
pub struct PreviewImage {
    pub width: usize,
    pub height: usize,
    /// Row-major RGB, 3 bytes per pixel.
    pub rgb: Vec<u8>,
    /// 1-based sampler step it shows.
    pub step: usize,
}

impl LatentRgb {
    /// The map stored in a model file, None when the file has none.
    pub fn load(weights: &dyn WeightSource, z: usize) -> Result<Option<Self>> {
        if weights.shape(LATENT_RGB_WEIGHT).is_none() && weights.shape(LATENT_RGB_BIAS).is_none() {
            return Ok(None);
        }
        let w = weights.load_f32(LATENT_RGB_WEIGHT)?;
        let b = weights.load_f32(LATENT_RGB_BIAS)?;
        if w.len() != 3 * z || b.len() != 3 {
            return Err(Error::Config(format!(
                "preview map has {} weights and {} biases, a {z}-channel latent needs {} and 3",
                w.len(),
                b.len(),
                3 * z
            )));
        }
        if w.iter().chain(&b).any(|v| !v.is_finite()) {
            return Err(Error::Config("preview map holds a non-finite value".into()));
        }
        Ok(Some(Self {
            weight: w,
            bias: [b[0], b[1], b[2]],
        }))
    }

    /// Stores the map in a file being written (f32: it is 15 numbers).
    pub fn add_to(&self, w: &mut crate::format::ModelWriter) -> Result<()> {
        w.add(
            LATENT_RGB_WEIGHT,
            &[3, self.channels()],
            &self.weight,
            crate::format::DType::F32,
        )?;
        w.add(LATENT_RGB_BIAS, &[3], &self.bias, crate::format::DType::F32)?;
        Ok(())
    }

    pub fn channels(&self) -> usize {
        self.weight.len() / 3
    }

    /// Latent [z, h, w] (one image, as sampled) -> RGB in [-1, 1] at latent resolution,
    /// planar [3, h, w].
    pub fn apply(&self, latent: &[f32], h: usize, w: usize) -> Result<Vec<f32>> {
        let z = self.channels();
        if latent.len() != z * h * w {
            return Err(Error::shape(
                "preview",
                format!("latent of {} values is not {z} x {h} x {w}", latent.len()),
            ));
        }
        let n = h * w;
        let mut out = vec![0f32; 3 * n];
        for (c, plane) in out.chunks_exact_mut(n).enumerate() {
            plane.fill(self.bias[c]);
            for k in 0..z {
                let wk = self.weight[c * z + k];
                for (o, &v) in plane.iter_mut().zip(&latent[k * n..(k + 1) * n]) {
                    *o += wk * v;
                }
            }
        }
        Ok(out)
    }

    /// The preview image of a latent [z, h, w], upsampled by `f` (bilinear, pixel centres
    /// aligned as the decoder's output is) to the image size.
    pub fn preview(
        &self,
        latent: &[f32],
        h: usize,
        w: usize,
        f: usize,
        step: usize,
    ) -> Result<PreviewImage> {
        let planar = self.apply(latent, h, w)?;
        Ok(upsample_to_rgb8(&planar, h, w, f, step))
    }
}

/// Planar [3, h, w] in [-1, 1] -> interleaved 8-bit RGB at (h f) x (w f), bilinear.
fn upsample_to_rgb8(planar: &[f32], h: usize, w: usize, f: usize, step: usize) -> PreviewImage {
    let (oh, ow) = (h * f, w * f);
    let n = h * w;
    let mut rgb = vec![0u8; oh * ow * 3];
    // Source coordinate of an output pixel centre, clamped to the edge pixels' centres.
    let src = |o: usize, len: usize| -> (usize, usize, f32) {
        let x = ((o as f32 + 0.5) / f as f32 - 0.5).clamp(0.0, (len - 1) as f32);
        let i0 = x.floor() as usize;
        let i1 = (i0 + 1).min(len - 1);
        (i0, i1, x - i0 as f32)
    };
    for oy in 0..oh {
        let (y0, y1, fy) = src(oy, h);
        for ox in 0..ow {
            let (x0, x1, fx) = src(ox, w);
            for c in 0..3 {
                let p = &planar[c * n..(c + 1) * n];
                let top = p[y0 * w + x0] * (1.0 - fx) + p[y0 * w + x1] * fx;
                let bot = p[y1 * w + x0] * (1.0 - fx) + p[y1 * w + x1] * fx;
                let v = top * (1.0 - fy) + bot * fy;
                rgb[(oy * ow + ox) * 3 + c] = to_u8(v);
            }
        }
    }
    PreviewImage {
        width: ow,
        height: oh,
        rgb,
        step,
    }
}

/// [-1, 1] -> 0..=255, as the pipeline converts decoded images.
fn to_u8(v: f32) -> u8 {
    (((v + 1.0) * 127.5).round()).clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_is_a_per_pixel_affine_map() {
        let m = LatentRgb {
            weight: vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5],
            bias: [0.0, 0.1, -0.1],
        };
        // z = 2, 1x2 latent: channel 0 = [1, 2], channel 1 = [3, 4].
        let out = m.apply(&[1.0, 2.0, 3.0, 4.0], 1, 2).unwrap();
        assert_eq!(out, vec![1.0, 2.0, 3.1, 4.1, 1.9, 2.9]);
        assert!(m.apply(&[1.0; 3], 1, 2).is_err());
    }

    #[test]
    fn a_constant_latent_previews_as_a_constant_image() {
        let m = LatentRgb {
            weight: vec![0.5; 12],
            bias: [0.0; 3],
        };
        let p = m.preview(&[0.25; 4 * 3 * 5], 3, 5, 4, 1).unwrap();
        assert_eq!((p.width, p.height), (20, 12));
        assert!(p.rgb.iter().all(|&v| v == p.rgb[0]));
        assert_eq!(p.rgb[0], to_u8(0.5));
    }
}
