//! Super-resolution evaluation: held-out shapes renders are box-downsampled by the model's
//! factor (the degradation the model trained on, `arch::task::downsample_box`), quantized to
//! 8 bits as a user's low-res PNG would be, then upscaled by the model through the runtime
//! (`Pipeline::upscale`) and by bicubic interpolation (Catmull-Rom, the usual baseline).
//! Both are scored against the original render by PSNR and SSIM.
use super::ssim::{psnr_rgb8, ssim_rgb8};
use crate::dataset::rgb8_to_chw;
use crate::dataset::shapes::{held_out_scene, render};
use anyhow::{bail, Context, Result};
use ldm_edge::arch::task::downsample_box;
use ldm_edge::pipeline::image::from_rgb8;
use ldm_edge::pipeline::{Cancel, Pipeline, Upscale};
use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct SrReport {
    pub images: usize,
    pub steps: usize,
    pub model_psnr_db: f64,
    pub bicubic_psnr_db: f64,
    pub model_ssim: f64,
    pub bicubic_ssim: f64,
    /// Images where the model's PSNR beats bicubic's.
    pub model_wins: usize,
}

/// [-1, 1] CHW -> interleaved RGB8.
fn chw_to_rgb8(x: &[f32], w: usize, h: usize) -> Vec<u8> {
    let plane = w * h;
    let mut out = vec![0u8; plane * 3];
    for c in 0..3 {
        for i in 0..plane {
            out[i * 3 + c] = ((x[c * plane + i] + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

pub fn bicubic(lr: &[u8], w: usize, h: usize, f: usize) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_raw(w as u32, h as u32, lr.to_vec())
        .context("low-res buffer size")?;
    let up = image::imageops::resize(
        &img,
        (w * f) as u32,
        (h * f) as u32,
        image::imageops::FilterType::CatmullRom,
    );
    Ok(up.into_raw())
}

pub fn evaluate(pipe: &Pipeline, n: usize, steps: Option<usize>, seed: u64) -> Result<SrReport> {
    let cfg = &pipe.model.config;
    let size = cfg.image_size;
    let f = cfg.vae.factor();
    let lo = size / f;
    if n == 0 {
        bail!("the SR evaluation needs at least one image");
    }
    let mut r = SrReport {
        images: n,
        ..Default::default()
    };
    let cancel = Cancel::new();
    for i in 0..n {
        let hr = render(&held_out_scene(i as u64), size);
        let lr = chw_to_rgb8(
            &downsample_box(&rgb8_to_chw(&hr, size), 3, size, size, f)?,
            lo,
            lo,
        );
        let mut req = Upscale::new(pipe.model, from_rgb8(&lr, lo, lo)?)?;
        req.seed = seed.wrapping_add(i as u64);
        if let Some(s) = steps {
            req.steps = s;
        }
        r.steps = req.steps;
        let out = pipe
            .upscale(&req, &mut |_| {}, &cancel)
            .with_context(|| format!("upscaling held-out image {i}"))?;
        if (out.width, out.height) != (size, size) {
            bail!(
                "upscaled to {}x{}, expected {size}x{size}",
                out.width,
                out.height
            );
        }
        let bc = bicubic(&lr, lo, lo, f)?;
        let (pm, pb) = (psnr_rgb8(&out.rgb, &hr), psnr_rgb8(&bc, &hr));
        r.model_psnr_db += pm;
        r.bicubic_psnr_db += pb;
        r.model_ssim += ssim_rgb8(&out.rgb, &hr, size, size);
        r.bicubic_ssim += ssim_rgb8(&bc, &hr, size, size);
        r.model_wins += (pm > pb) as usize;
        if (i + 1) % 50 == 0 {
            eprintln!("  sr: {}/{n}", i + 1);
        }
    }
    let k = n as f64;
    r.model_psnr_db /= k;
    r.bicubic_psnr_db /= k;
    r.model_ssim /= k;
    r.bicubic_ssim /= k;
    Ok(r)
}
