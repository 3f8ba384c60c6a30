//! Text-to-image: prompt -> text encoder -> the denoising loop from pure noise -> decoder.
use super::denoise::{Sampling, Start};
use super::memory::MemoryRequest;
use super::progress::{Cancel, Progress, Steps};
use super::shared::{check_prompt, check_sampling, Generated, Pipeline};
use crate::arch::Task;
use crate::backend::{Backend, Tensor};
use crate::model::Model;
use crate::sampler::SamplerKind;
use crate::Result;

/// One text-to-image request. `Txt2Img::new` fills the model's defaults. img2img and
/// inpainting take one of these for their sampling settings.
#[derive(Clone, Debug)]
pub struct Txt2Img {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f32,
    pub seed: u64,
    pub sampler: SamplerKind,
    /// DDIM's eta (0 = deterministic).
    pub eta: f32,
    /// Karras sigmas on or off for the sigma-space samplers (None: the model's schedule).
    pub karras: Option<bool>,
    pub width: usize,
    pub height: usize,
    /// Initial latent noise [1, z, h, w]; replaces the seeded noise when given.
    pub init_noise: Option<Tensor>,
}

impl Txt2Img {
    pub fn new(model: &Model, prompt: &str) -> Result<Self> {
        let d = &model.sampler;
        Ok(Self {
            prompt: prompt.to_string(),
            negative_prompt: String::new(),
            steps: d.steps,
            guidance: d.guidance,
            seed: 0,
            sampler: d.kind()?,
            eta: 0.0,
            karras: None,
            width: model.config.image_size,
            height: model.config.image_size,
            init_noise: None,
        })
    }

    pub(crate) fn sampling(&self) -> Sampling<'_> {
        Sampling {
            steps: self.steps,
            sampler: self.sampler,
            eta: self.eta,
            karras: self.karras,
            seed: self.seed,
            init_noise: self.init_noise.as_ref(),
        }
    }
}

impl Pipeline<'_> {
    /// Runs the request (CPU rerun on a GPU fault: see [`Pipeline::with_fallback`]).
    pub fn txt2img(
        &self,
        req: &Txt2Img,
        on_step: &mut dyn FnMut(Progress),
        cancel: &Cancel,
    ) -> Result<Generated> {
        self.require_task(Task::Txt2img)?;
        self.with_fallback(|b| {
            let mut steps = Steps::new(&mut *on_step, req.steps)
                .with_preview(self.preview_plan(b, req.width, req.height)?);
            self.sample_on(b, req, Start::Noise, &[], &mut steps, cancel)
        })
    }

    /// `count` images of one request, with seeds `req.seed`, `req.seed + 1`, ...: the text
    /// encoder, the UNet and the decoder are prepared once for all of them, so an app that
    /// wants several images pays plan preparation once. Memory is one image's plus the
    /// latents of the others. Progress counts the steps of all of them.
    pub fn txt2img_many(
        &self,
        req: &Txt2Img,
        count: usize,
        on_step: &mut dyn FnMut(Progress),
        cancel: &Cancel,
    ) -> Result<Vec<Generated>> {
        self.require_task(Task::Txt2img)?;
        if count == 0 || count > 4096 {
            return Err(crate::Error::Input(format!(
                "image count must be in 1..=4096, got {count}"
            )));
        }
        if count > 1 && req.init_noise.is_some() {
            return Err(crate::Error::Input(
                "an explicit initial noise makes one image; several images take their noise \
                 from consecutive seeds"
                    .into(),
            ));
        }
        self.with_fallback(|b| {
            let mut steps = Steps::new(&mut *on_step, req.steps * count)
                .with_preview(self.preview_plan(b, req.width, req.height)?);
            self.sample_many_on(b, req, count, Start::Noise, &[], &mut steps, cancel)
        })
    }

    /// The checks and the loop shared by txt2img, img2img and inpainting: one image at the
    /// request's size, `cond` at latent resolution, decoded.
    pub(crate) fn sample_on(
        &self,
        backend: &dyn Backend,
        req: &Txt2Img,
        start: Start,
        cond: &[f32],
        steps: &mut Steps,
        cancel: &Cancel,
    ) -> Result<Generated> {
        let mut v = self.sample_many_on(backend, req, 1, start, cond, steps, cancel)?;
        v.pop().ok_or_else(|| crate::Error::Backend {
            backend: "pipeline",
            msg: "no image was made".into(),
        })
    }

    /// `sample_on` for `count` consecutive seeds, every plan prepared once.
    #[allow(clippy::too_many_arguments)]
    fn sample_many_on(
        &self,
        backend: &dyn Backend,
        req: &Txt2Img,
        count: usize,
        start: Start,
        cond: &[f32],
        steps: &mut Steps,
        cancel: &Cancel,
    ) -> Result<Vec<Generated>> {
        check_prompt(&req.prompt)?;
        check_sampling(req.steps, req.guidance)?;
        let hw = self.latent_size(req.width, req.height)?;
        // Before any work: refuse what cannot fit, choose VAE tiling that does.
        let plan = self.plan_memory(&MemoryRequest {
            width: req.width,
            height: req.height,
            cfg: req.guidance != 1.0,
            // img2img and inpainting encode their image before this point.
            encode: false,
        })?;
        log::info!("memory plan:\n{plan}");
        if let Some(store) = &self.plans {
            store.set_keeping(plan.kept.is_some());
        }
        // Even a zero limit is set: it is what the plan counted.
        if crate::alloc::installed() {
            crate::alloc::set_cache_limit(plan.alloc_cache as usize);
        }
        let all_latents = {
            let mut den =
                self.denoiser(backend, &req.prompt, &req.negative_prompt, req.guidance, hw)?;
            let mut out = Vec::with_capacity(count);
            for i in 0..count {
                let mut sampling = req.sampling();
                sampling.seed = req.seed.wrapping_add(i as u64);
                out.push(den.run(
                    &sampling,
                    &self.model.sampler.schedule,
                    start,
                    cond,
                    steps,
                    cancel,
                )?);
            }
            out
            // The UNet plan is dropped here, before the decoder is prepared.
        };
        self.end_stage();
        let tiled = match plan.vae_tiling {
            // The planner tiles the full decoder; the tiny one runs whole.
            Some(t) if self.decoder == super::Decoder::Full => Some(t),
            _ => None,
        };
        // One decoder plan for every image, unless the autoencoder runs in tiles.
        let mut whole = match (tiled, self.vae_tiles_for(hw.0, hw.1)?) {
            (None, None) => Some(self.decoder_plan_on(backend, self.decoder, 1, hw.0, hw.1)?),
            _ => None,
        };
        let mut images = Vec::with_capacity(count);
        for latents in all_latents {
            let image = match (&tiled, whole.as_mut()) {
                (Some(t), _) => self.decode_tiled_on(backend, &latents, t)?,
                (None, Some(p)) => self.decode_with(p.as_mut(), &latents)?,
                (None, None) => self.decode_on(backend, &latents)?,
            };
            images.push(Generated::from_image(image, latents)?);
        }
        Ok(images)
    }
}
