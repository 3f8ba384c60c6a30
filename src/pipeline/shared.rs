//! The stages every pipeline shares: text encoding, the autoencoder both ways, size and task
//! checks, and the CPU rerun after a GPU fault.
use super::denoise::Denoiser;
use super::vae_tiles::VaeTiling;
use crate::arch::Task;
use crate::backend::{Backend, Executable, Tensor};
use crate::model::Model;
use crate::{Error, Result};

/// The result: the image in [-1, 1] as [1, 3, H, W], its 8-bit RGB pixels, and the final latents.
pub struct Generated {
    pub image: Tensor,
    pub latents: Tensor,
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

impl Generated {
    /// Checks the image and converts it to pixels.
    pub(crate) fn from_image(image: Tensor, latents: Tensor) -> Result<Self> {
        check_finite(&image, "the decoded image")?;
        let rgb = super::image::to_rgb8(&image)?;
        let (height, width) = (image.shape[2], image.shape[3]);
        Ok(Self {
            image,
            latents,
            rgb,
            width,
            height,
        })
    }
}

pub struct Pipeline<'m> {
    pub model: &'m Model,
    pub backend: Box<dyn Backend>,
    /// Run the autoencoder in overlapping tiles when a latent is larger than one tile, so a
    /// large image's decode is not the memory peak; None (the default) runs it whole.
    pub vae_tiling: Option<VaeTiling>,
    /// With no tiling set: let the memory planner tile the autoencoder when a whole decode
    /// (or encode) would be the request's memory peak (the default). Cleared by
    /// [`Pipeline::with_vae_tiling`], which makes the choice explicit.
    pub vae_auto: bool,
    /// Host memory a request may use. With a budget, each request is planned before any
    /// work ([`Pipeline::plan_memory`]): VAE tiling is chosen to fit, or the request is
    /// refused with [`Error::Memory`]. `Pipeline::new` takes the cgroup's `memory.max` when
    /// the process runs under one, so a request is refused rather than killed.
    pub memory_budget: Option<u64>,
    /// Preview every k-th step (and the last) through the progress callback. None: no
    /// previews.
    pub preview_every: Option<usize>,
    /// How previews are made: the latent-to-RGB map or the tiny decoder.
    pub preview_method: Decoder,
    /// Which decoder makes the final image.
    pub decoder: Decoder,
    /// How the backend's plans use device memory (the backend's own by default; a board's
    /// for `ldm plan`). None: plans live in host memory.
    pub device_model: Option<Box<dyn crate::backend::DeviceMemoryModel>>,
    /// Plans kept between requests ([`Pipeline::with_plan_reuse`]); None: each request
    /// prepares its own.
    pub(crate) plans: Option<super::plans::PlanStore>,
}

/// A way from latents to pixels. `Linear` is the stored latent-to-RGB map (previews only),
/// `Tiny` the distilled tiny decoder, `Full` the autoencoder's decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    Full,
    Tiny,
    Linear,
}

impl std::str::FromStr for Decoder {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(Decoder::Full),
            "tiny" => Ok(Decoder::Tiny),
            "linear" => Ok(Decoder::Linear),
            other => Err(Error::Input(format!(
                "unknown decoder `{other}` (full, tiny or linear)"
            ))),
        }
    }
}

pub(crate) fn check_finite(t: &Tensor, what: &str) -> Result<()> {
    match t.data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite(format!(
            "{what} holds {} at element {i}",
            t.data[i]
        ))),
    }
}

pub fn check_sampling(steps: usize, guidance: f32) -> Result<()> {
    if steps == 0 || steps > 1000 {
        return Err(Error::Input(format!(
            "steps must be in 1..=1000, got {steps}"
        )));
    }
    if !guidance.is_finite() || guidance < 0.0 {
        return Err(Error::Input(format!(
            "guidance must be finite and >= 0, got {guidance}"
        )));
    }
    Ok(())
}

pub(crate) fn check_prompt(prompt: &str) -> Result<()> {
    if prompt.trim().is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    Ok(())
}

/// Latents [B, z, h, w] -> (B, h, w), or an error naming what was given.
pub(crate) fn latent_dims(latents: &Tensor, z: usize) -> Result<(usize, usize, usize)> {
    match latents.shape[..] {
        [b, c, h, w] if c == z && latents.data.len() == b * c * h * w => Ok((b, h, w)),
        _ => Err(Error::Input(format!(
            "latents must have shape [B, {z}, h, w], got {:?}",
            latents.shape
        ))),
    }
}

/// [1, 3, H, W] -> (H, W), or an error naming what was given.
pub(crate) fn image_hw(image: &Tensor, what: &str) -> Result<(usize, usize)> {
    match image.shape[..] {
        [1, 3, h, w] if image.data.len() == 3 * h * w => Ok((h, w)),
        _ => Err(Error::Input(format!(
            "the {what} must have shape [1, 3, H, W], got {:?}",
            image.shape
        ))),
    }
}

pub(crate) fn first(mut v: Vec<Tensor>) -> Result<Tensor> {
    if v.is_empty() {
        return Err(Error::Backend {
            backend: "pipeline",
            msg: "graph produced no output".into(),
        });
    }
    Ok(v.swap_remove(0))
}

impl<'m> Pipeline<'m> {
    pub fn new(model: &'m Model, backend: Box<dyn Backend>) -> Self {
        Self {
            model,
            device_model: backend.device_memory_model(),
            backend,
            vae_tiling: None,
            vae_auto: true,
            memory_budget: super::memory::cgroup_limit(),
            preview_every: None,
            preview_method: Decoder::Linear,
            decoder: Decoder::Full,
            plans: None,
        }
    }

    /// Keeps prepared plans between requests, so the second image of a model and size
    /// prepares nothing (an app that generates one image after another: plan preparation is
    /// 15-18 ms of a 28 ms image for the shapes LCM student here). Kept plans hold their
    /// memory between requests; the memory planner counts them, and where the budget has no
    /// room it turns reuse off for that request and drops them. Off by default: `ldm
    /// generate` makes one request per process.
    pub fn with_plan_reuse(mut self, on: bool) -> Self {
        self.plans = on.then(super::plans::PlanStore::default);
        self
    }

    /// Prepares `graph` on `backend`, or lends the plan kept from an earlier request.
    pub(crate) fn prepare_on(
        &self,
        backend: &dyn Backend,
        graph: &crate::graph::Graph,
    ) -> Result<Box<dyn Executable>> {
        match &self.plans {
            Some(store) => store.lend(backend, graph, self.model),
            None => backend.prepare(graph, self.model),
        }
    }

    /// Chooses the decoder of the final image. `Tiny` needs a model with a tiny decoder
    /// (`ldm-host train tiny-decoder`); `Linear` makes no final image and is refused.
    pub fn with_decoder(mut self, d: Decoder) -> Result<Self> {
        match d {
            Decoder::Linear => {
                return Err(Error::Input(
                    "the linear map makes previews only; the final image needs the full or \
                     the tiny decoder"
                        .into(),
                ))
            }
            Decoder::Tiny => {
                self.require_tiny()?;
            }
            Decoder::Full => {}
        }
        self.decoder = d;
        Ok(self)
    }

    /// Chooses how previews are made: the linear map or the tiny decoder. The full decoder
    /// is refused: its plan would be held beside the UNet's, which the memory planner does
    /// not count, and it costs as much as the final decode at every preview.
    pub fn with_preview_method(mut self, d: Decoder) -> Result<Self> {
        match d {
            Decoder::Tiny => {
                self.require_tiny()?;
            }
            // Checked by `with_preview`, when previews are asked for.
            Decoder::Linear => {}
            Decoder::Full => {
                return Err(Error::Input(
                    "previews use the linear map or the tiny decoder, not the full decoder".into(),
                ))
            }
        }
        self.preview_method = d;
        Ok(self)
    }

    fn require_tiny(&self) -> Result<&'m crate::arch::tiny_decoder::TinyDecoderConfig> {
        self.model.tiny_decoder.as_ref().ok_or_else(|| {
            Error::Input(format!(
                "{} has no tiny decoder; train one with `ldm-host train tiny-decoder`",
                self.model.file.path().display()
            ))
        })
    }

    fn require_linear(&self) -> Result<()> {
        if self.model.latent_rgb.is_none() {
            return Err(Error::Input(format!(
                "{} has no preview map; add one with `ldm-host preview fit {} -o OUT`",
                self.model.file.path().display(),
                self.model.file.path().display()
            )));
        }
        Ok(())
    }

    /// Asks for a preview image every `every` steps and at the last step, passed to the
    /// progress callback ([`super::Progress::preview`]). Refused when the model stores no
    /// preview map (`ldm-host preview fit` adds one) or `every` is 0.
    pub fn with_preview(mut self, every: Option<usize>) -> Result<Self> {
        if let Some(k) = every {
            if k == 0 {
                return Err(Error::Input("preview every 0 steps: use 1 or more".into()));
            }
            if self.preview_method == Decoder::Linear {
                self.require_linear()?;
            }
        }
        self.preview_every = every;
        Ok(self)
    }

    /// The preview settings for one request's step counter: the map, or a decoder plan
    /// prepared on `backend` for the request's latent size.
    pub(crate) fn preview_plan(
        &self,
        backend: &dyn Backend,
        width: usize,
        height: usize,
    ) -> Result<Option<super::progress::PreviewPlan<'m>>> {
        use super::progress::{PreviewPlan, PreviewSource};
        let Some(every) = self.preview_every else {
            return Ok(None);
        };
        let source = match self.preview_method {
            Decoder::Linear => match self.model.latent_rgb.as_ref() {
                Some(map) => PreviewSource::Linear {
                    map,
                    factor: self.model.config.vae.factor(),
                },
                None => return Ok(None),
            },
            d => {
                let (h, w) = self.latent_size(width, height)?;
                PreviewSource::Decoder {
                    plan: self.decoder_plan_on(backend, d, 1, h, w)?,
                    inv_scale: 1.0 / self.model.config.latent_scale,
                }
            }
        };
        Ok(Some(PreviewPlan { source, every }))
    }

    /// The full or tiny decoder's plan for `batch` latents of h x w.
    pub(crate) fn decoder_plan_on(
        &self,
        backend: &dyn Backend,
        d: Decoder,
        batch: usize,
        h: usize,
        w: usize,
    ) -> Result<Box<dyn Executable>> {
        let graph = match d {
            Decoder::Tiny => self.require_tiny()?.graph(batch, h, w)?,
            _ => self.model.config.decoder_graph(batch, h, w)?,
        };
        self.prepare_on(backend, &graph)
    }

    /// Plans device memory with `m` (a board's device, planned from another machine).
    pub fn with_device_model(
        mut self,
        m: Option<Box<dyn crate::backend::DeviceMemoryModel>>,
    ) -> Self {
        self.device_model = m;
        self
    }

    /// Sets (or with None removes) the memory budget, in bytes.
    pub fn with_memory_budget(mut self, bytes: Option<u64>) -> Self {
        self.memory_budget = bytes;
        self
    }

    /// Sets the autoencoder tiling (None: always whole), turning off the planner's own
    /// choice; checked when the autoencoder runs.
    pub fn with_vae_tiling(mut self, t: Option<VaeTiling>) -> Self {
        self.vae_tiling = t;
        self.vae_auto = false;
        self
    }

    /// Between two stages: drops the finished stage's mapped weight pages and the CPU kernels'
    /// scratch, so the next stage holds only its own (as the memory planner counts). Not where
    /// plans are kept between requests: the plan's weights would fault back in and the
    /// scratch grow again (about 3 ms of a 20 ms request of the 32 px model), and the planner
    /// counted both kept (`MemoryPlan::kept_cost`).
    pub(crate) fn end_stage(&self) {
        if log::log_enabled!(log::Level::Debug) {
            // Anonymous vs file-backed (mapped weights, the binary's code) resident memory.
            use super::memory::{mib, proc_status_bytes};
            let field = |k| proc_status_bytes(k).map_or("?".into(), mib);
            log::debug!(
                "memory: stage ended at {} resident (anon {}, file {})",
                mib(super::memory::current_rss()),
                field("RssAnon"),
                field("RssFile")
            );
        }
        if self.plans.as_ref().is_some_and(|p| p.keeping()) {
            return;
        }
        self.model.file.release_pages();
        crate::backend::cpu::compact::kernels::release_scratch();
    }

    /// Latent size for an image size, or a clear error naming the constraint.
    pub fn latent_size(&self, width: usize, height: usize) -> Result<(usize, usize)> {
        let f = self.model.config.vae.factor();
        let m = f * self.model.config.latent_multiple();
        if width == 0 || height == 0 || width % m != 0 || height % m != 0 {
            return Err(Error::Input(format!(
                "image size {width}x{height} must be a positive multiple of {m}"
            )));
        }
        if width > 4096 || height > 4096 {
            return Err(Error::Input(format!(
                "image size {width}x{height} exceeds 4096x4096"
            )));
        }
        Ok((height / f, width / f))
    }

    /// Each pipeline runs one kind of model: the wrong kind would fail deep in the UNet with a
    /// channel mismatch, so say which command the model needs instead.
    pub fn require_task(&self, want: Task) -> Result<()> {
        let have = self.model.config.task;
        if have == want {
            return Ok(());
        }
        Err(Error::Input(format!(
            "this model is for task {have}, not {want}: it runs with `{}`",
            have.command()
        )))
    }

    /// Encodes prompts to context [B, L, D].
    pub fn encode_text(&self, prompts: &[&str]) -> Result<Tensor> {
        self.encode_text_on(self.backend.as_ref(), prompts)
    }

    pub(crate) fn encode_text_on(&self, backend: &dyn Backend, prompts: &[&str]) -> Result<Tensor> {
        let tok = &self.model.tokenizer;
        let mut ids = Vec::new();
        for p in prompts {
            ids.extend(tok.encode(p)?.into_iter().map(|i| i as f32));
        }
        let graph = self.model.config.text_graph(prompts.len())?;
        let mut plan = self.prepare_on(backend, &graph)?;
        let input = Tensor::new(vec![prompts.len(), tok.max_len()], ids)?;
        first(plan.run(&[input])?)
    }

    /// Encodes an image [1, 3, H, W] in [-1, 1] to latents as the sampler sees them: the
    /// posterior mean (no sampling, so the same image always gives the same latent) times
    /// latent_scale.
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        self.encode_on(self.backend.as_ref(), image)
    }

    pub(crate) fn encode_on(&self, backend: &dyn Backend, image: &Tensor) -> Result<Tensor> {
        let (h, w) = image_hw(image, "image to encode")?;
        let (lh, lw) = self.latent_size(w, h)?;
        if let Some(t) = self.vae_tiles_for(lh, lw)? {
            return self.encode_tiled_on(backend, image, t);
        }
        let graph = self.model.config.encoder_graph(1, h, w)?;
        let mut plan = self.prepare_on(backend, &graph)?;
        let moments = first(plan.run(std::slice::from_ref(image))?)?;
        self.posterior_mean(&moments)
    }

    /// Encoder moments [1, 2z, h, w] -> the mean times latent_scale, [1, z, h, w].
    pub(crate) fn posterior_mean(&self, moments: &Tensor) -> Result<Tensor> {
        let z = self.model.config.vae.latent_channels;
        let s = &moments.shape;
        if s.len() != 4 || s[1] != 2 * z || moments.data.len() != s.iter().product::<usize>() {
            return Err(Error::shape(
                "encode",
                format!("encoder gave {s:?}, expected [1, {}, h, w]", 2 * z),
            ));
        }
        let n = z * s[2] * s[3];
        let scale = self.model.config.latent_scale;
        let mean = moments.data[..n].iter().map(|v| v * scale).collect();
        Tensor::new(vec![1, z, s[2], s[3]], mean)
    }

    /// Decodes latents (as sampled, i.e. still multiplied by latent_scale) to an image.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode_on(self.backend.as_ref(), latents)
    }

    pub(crate) fn decode_on(&self, backend: &dyn Backend, latents: &Tensor) -> Result<Tensor> {
        let (b, h, w) = latent_dims(latents, self.model.config.vae.latent_channels)?;
        if self.decoder == Decoder::Tiny {
            // Whole: the tiny decoder's largest activation is a few channels at image size.
            let mut plan = self.decoder_plan_on(backend, Decoder::Tiny, b, h, w)?;
            return self.decode_with(plan.as_mut(), latents);
        }
        if let Some(t) = self.vae_tiles_for(h, w)? {
            return self.decode_tiled_on(backend, latents, t);
        }
        let mut plan = self.decoder_on(backend, b, h, w)?;
        self.decode_with(plan.as_mut(), latents)
    }

    /// The decoder prepared once for many latents of one size (upscale tiles).
    pub(crate) fn decoder_on(
        &self,
        backend: &dyn Backend,
        batch: usize,
        h: usize,
        w: usize,
    ) -> Result<Box<dyn Executable>> {
        self.decoder_plan_on(backend, self.decoder, batch, h, w)
    }

    pub(crate) fn decode_with(
        &self,
        plan: &mut dyn Executable,
        latents: &Tensor,
    ) -> Result<Tensor> {
        let inv = 1.0 / self.model.config.latent_scale;
        let z = Tensor::new(
            latents.shape.clone(),
            latents.data.iter().map(|v| v * inv).collect(),
        )?;
        first(plan.run(&[z])?)
    }

    /// Encodes the prompts and prepares the UNet for latents of h x w. Classifier-free guidance
    /// batches [unconditional, conditional] through one UNet call; at scale 1 the
    /// unconditional half would be multiplied by zero, so it is skipped. A guidance-distilled
    /// UNet takes the scale as an input instead and runs the conditional branch alone (one
    /// evaluation per step): the negative prompt has no role there, as in diffusers' LCM
    /// pipeline.
    pub(crate) fn denoiser(
        &self,
        backend: &dyn Backend,
        prompt: &str,
        negative_prompt: &str,
        guidance: f32,
        (h, w): (usize, usize),
    ) -> Result<Denoiser> {
        let distilled = self.model.config.unet.time_cond_proj_dim.is_some();
        let cfg_on = guidance != 1.0 && !distilled;
        let prompts: Vec<&str> = if cfg_on {
            vec![negative_prompt, prompt]
        } else {
            vec![prompt]
        };
        let context = self.encode_text_on(backend, &prompts)?;
        // The text encoder's weights are done with: only the UNet's stay resident.
        self.end_stage();
        let graph = self.model.config.unet_graph(prompts.len(), h, w)?;
        let unet = self.prepare_on(backend, &graph)?;
        let z = self.model.config.vae.latent_channels;
        Ok(Denoiser::new(
            unet,
            context,
            cfg_on.then_some(guidance),
            distilled.then_some(guidance - 1.0),
            vec![1, z, h, w],
        ))
    }

    /// Runs a whole request on the pipeline's backend. With `--backend auto` on a GPU, a fault
    /// of the GPU backend during the run (device lost, out of memory) reruns the whole request
    /// on the CPU: same seed, same result; progress starts again from step 1.
    pub(crate) fn with_fallback<T>(
        &self,
        mut run: impl FnMut(&dyn Backend) -> Result<T>,
    ) -> Result<T> {
        match run(self.backend.as_ref()) {
            Err(e) => match self.backend.fallback() {
                Some((from, fb)) if crate::backend::fallback::is_fault_of(&e, from) => {
                    log::warn!("{e}; rerunning the request on `{}`", fb.name());
                    // The faulted device's kept plans may hold buffers of a lost device.
                    if let Some(store) = &self.plans {
                        store.clear();
                    }
                    run(fb)
                }
                _ => Err(e),
            },
            ok => ok,
        }
    }
}
