//! Generating images for prompts through the runtime pipeline: evaluation measures exactly what
//! `ldm generate` would produce, not a training-framework forward.
use anyhow::{bail, Context, Result};
use ldm_edge::model::Model;
use ldm_edge::pipeline::{Cancel, Generated, Pipeline, Txt2Img};

/// Settings shared by every prompt of one evaluation pass.
#[derive(Clone, Copy, Debug)]
pub struct GenSettings {
    pub steps: usize,
    pub guidance: f32,
    /// Prompt i uses seed `seed + i`: different noise per prompt, the same across guidance
    /// scales so the CFG comparison is paired.
    pub seed: u64,
    /// Square image side; None: the model's own size.
    pub size: Option<usize>,
}

/// RGB8 images (model-native size) for `prompts`; `progress(done)` after each.
pub fn generate(
    pipe: &Pipeline,
    prompts: &[String],
    s: GenSettings,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<u8>>> {
    Ok(generate_full(pipe, prompts, s, progress)?
        .into_iter()
        .map(|g| g.rgb)
        .collect())
}

/// [`generate`] with the whole result of each: the image as floats, its pixels and latents.
pub fn generate_full(
    pipe: &Pipeline,
    prompts: &[String],
    s: GenSettings,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Generated>> {
    let model: &Model = pipe.model;
    let mut out = Vec::with_capacity(prompts.len());
    let cancel = Cancel::new();
    for (i, p) in prompts.iter().enumerate() {
        let mut req = Txt2Img::new(model, p)?;
        req.steps = s.steps;
        req.guidance = s.guidance;
        req.seed = s.seed.wrapping_add(i as u64);
        if let Some(size) = s.size {
            (req.width, req.height) = (size, size);
        }
        let g = pipe
            .txt2img(&req, &mut |_| {}, &cancel)
            .with_context(|| format!("generating \"{p}\""))?;
        if g.width != g.height {
            bail!(
                "the checker needs square images, got {}x{}",
                g.width,
                g.height
            );
        }
        out.push(g);
        progress(i + 1);
    }
    Ok(out)
}
