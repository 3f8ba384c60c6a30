//! The health check an install must pass before it commits: the model opens and validates
//! against its architecture, its digest matches, and one small image generated with the model's
//! own sampler defaults is finite and not constant.
use std::path::Path;

use crate::arch::Task;
use crate::backend::Tensor;
use crate::model::Model;
use crate::pipeline::{Cancel, Generated, Inpaint, Pipeline, Txt2Img, Upscale};

/// Health-check settings; the defaults are the model's own.
#[derive(Clone, Debug)]
pub struct HealthOptions {
    /// `auto`, `cpu`, `vulkan` or `reference`: what `ldm generate` would use.
    pub backend: String,
    /// Denoising steps [default: the model's].
    pub steps: Option<usize>,
}

impl Default for HealthOptions {
    fn default() -> Self {
        HealthOptions {
            backend: "auto".into(),
            steps: None,
        }
    }
}

/// What a passed check measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HealthReport {
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    /// Largest spread of one 8-bit channel (max - min over the pixels).
    pub range: u8,
    pub seconds: f64,
}

/// A test input for image-conditioned tasks: a diagonal gradient, so an SR or inpainting model
/// that ignores its input still has structure to keep.
fn gradient(h: usize, w: usize) -> Tensor {
    let mut data = Vec::with_capacity(3 * h * w);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let v = (x + y + c) as f32 / (h + w + 2) as f32;
                data.push(v * 2.0 - 1.0);
            }
        }
    }
    Tensor {
        shape: vec![1, 3, h, w],
        data,
    }
}

/// Runs the check; `Err` carries the reason the model is unfit, in words for the report.
pub fn check(path: &Path, opts: &HealthOptions) -> Result<HealthReport, String> {
    let start = std::time::Instant::now();
    let model = Model::open(path).map_err(|e| format!("model does not open: {e}"))?;
    model
        .file
        .verify_digest()
        .map_err(|e| format!("model digest: {e}"))?;
    let backend = crate::backend::select(&opts.backend).map_err(|e| format!("backend: {e}"))?;
    let pipe = Pipeline::new(&model, backend);
    let cfg = &model.config;
    // The smallest image the UNet takes, at most the native size: 8 latent pixels a side.
    let side = (8 * cfg.vae.factor()).min(cfg.image_size);
    let cancel = Cancel::new();
    let mut on_step = |_: crate::pipeline::Progress<'_>| {};
    let gen = |r: crate::Result<Generated>| r.map_err(|e| format!("generation failed: {e}"));
    let (out, steps) = match cfg.task {
        Task::Txt2img => {
            let mut req = Txt2Img::new(&model, "a test image").map_err(|e| e.to_string())?;
            (req.width, req.height) = (side, side);
            if let Some(s) = opts.steps {
                req.steps = s;
            }
            (gen(pipe.txt2img(&req, &mut on_step, &cancel))?, req.steps)
        }
        Task::Inpaint => {
            let mask: Vec<f32> = (0..side * side)
                .map(|i| if (i % side) < side / 2 { 1.0 } else { 0.0 })
                .collect();
            let mut req = Inpaint::new(&model, "a test image", gradient(side, side), mask)
                .map_err(|e| e.to_string())?;
            if let Some(s) = opts.steps {
                req.params.steps = s;
            }
            let steps = req.params.steps;
            (gen(pipe.inpaint(&req, &mut on_step, &cancel))?, steps)
        }
        Task::Sr => {
            let t = crate::pipeline::upscale::tile_size(&model);
            let mut req = Upscale::new(&model, gradient(t, t)).map_err(|e| e.to_string())?;
            if let Some(s) = opts.steps {
                req.steps = s;
            }
            (gen(pipe.upscale(&req, &mut on_step, &cancel))?, req.steps)
        }
    };
    if let Some(bad) = out.latents.data.iter().find(|v| !v.is_finite()) {
        return Err(format!("latents are not finite ({bad})"));
    }
    if let Some(bad) = out.image.data.iter().find(|v| !v.is_finite()) {
        return Err(format!("image is not finite ({bad})"));
    }
    // Per channel: a dead decoder (zero weights, saturated activations) gives one flat
    // colour, whose channels may differ from each other. 2 levels of 255 is below any real
    // image's spread.
    let range = (0..3)
        .map(|c| {
            let (lo, hi) = out
                .rgb
                .iter()
                .skip(c)
                .step_by(3)
                .fold((u8::MAX, u8::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            hi.saturating_sub(lo)
        })
        .max()
        .unwrap_or(0);
    if range < 2 {
        return Err(format!(
            "image is constant (each channel varies by at most {range} of 255)"
        ));
    }
    Ok(HealthReport {
        width: out.width,
        height: out.height,
        steps,
        range,
        seconds: start.elapsed().as_secs_f64(),
    })
}
