//! Text-to-image: prompt -> text encoder -> sampler loop over the UNet with CFG -> decoder.
use super::progress::{Cancel, Progress};
use crate::backend::{Backend, Executable, Tensor};
use crate::model::Model;
use crate::sampler::{guidance, make_scheduler, NoiseGen, SamplerKind};
use crate::{Error, Result};
use std::time::Instant;

/// One text-to-image request. `Txt2Img::new` fills the model's defaults.
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
            sampler: d
                .sampler
                .parse()
                .map_err(|e: crate::sampler::SamplerError| Error::Config(e.to_string()))?,
            eta: 0.0,
            width: model.config.image_size,
            height: model.config.image_size,
            init_noise: None,
        })
    }
}

/// The result: the image in [-1, 1] as [1, 3, H, W], its 8-bit RGB pixels, and the final latents.
pub struct Generated {
    pub image: Tensor,
    pub latents: Tensor,
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

pub struct Pipeline<'m> {
    pub model: &'m Model,
    pub backend: Box<dyn Backend>,
}

fn check_finite(t: &Tensor, what: &str) -> Result<()> {
    match t.data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite(format!(
            "{what} holds {} at element {i}",
            t.data[i]
        ))),
    }
}

impl<'m> Pipeline<'m> {
    pub fn new(model: &'m Model, backend: Box<dyn Backend>) -> Self {
        Self { model, backend }
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

    /// Encodes prompts to context [B, L, D].
    pub fn encode_text(&self, prompts: &[&str]) -> Result<Tensor> {
        self.encode_text_on(self.backend.as_ref(), prompts)
    }

    fn encode_text_on(&self, backend: &dyn Backend, prompts: &[&str]) -> Result<Tensor> {
        let tok = &self.model.tokenizer;
        let mut ids = Vec::new();
        for p in prompts {
            ids.extend(tok.encode(p)?.into_iter().map(|i| i as f32));
        }
        let graph = self.model.config.text_graph(prompts.len())?;
        let mut plan = backend.prepare(&graph, self.model)?;
        let input = Tensor::new(vec![prompts.len(), tok.max_len()], ids)?;
        first(plan.run(&[input])?)
    }

    /// Decodes latents (as sampled, i.e. still multiplied by latent_scale) to an image.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode_on(self.backend.as_ref(), latents)
    }

    fn decode_on(&self, backend: &dyn Backend, latents: &Tensor) -> Result<Tensor> {
        let s = &latents.shape;
        let graph = self.model.config.decoder_graph(s[0], s[2], s[3])?;
        let mut plan = backend.prepare(&graph, self.model)?;
        let inv = 1.0 / self.model.config.latent_scale;
        let z = Tensor::new(s.clone(), latents.data.iter().map(|v| v * inv).collect())?;
        first(plan.run(&[z])?)
    }

    /// Runs the request. With `--backend auto` on a GPU, a fault of the GPU backend during the
    /// run (device lost, out of memory) reruns the whole request on the CPU: same seed, same
    /// result; progress starts again from step 1.
    pub fn txt2img(
        &self,
        req: &Txt2Img,
        on_step: &mut dyn FnMut(Progress),
        cancel: &Cancel,
    ) -> Result<Generated> {
        match self.txt2img_on(self.backend.as_ref(), req, on_step, cancel) {
            Err(e) => match self.backend.fallback() {
                Some((from, fb)) if crate::backend::fallback::is_fault_of(&e, from) => {
                    log::warn!("{e}; rerunning the request on `{}`", fb.name());
                    self.txt2img_on(fb, req, on_step, cancel)
                }
                _ => Err(e),
            },
            ok => ok,
        }
    }

    fn txt2img_on(
        &self,
        backend: &dyn Backend,
        req: &Txt2Img,
        on_step: &mut dyn FnMut(Progress),
        cancel: &Cancel,
    ) -> Result<Generated> {
        if req.prompt.trim().is_empty() {
            return Err(Error::Input("the prompt is empty".into()));
        }
        if req.steps == 0 || req.steps > 1000 {
            return Err(Error::Input(format!(
                "steps must be in 1..=1000, got {}",
                req.steps
            )));
        }
        if !req.guidance.is_finite() || req.guidance < 0.0 {
            return Err(Error::Input(format!(
                "guidance must be finite and >= 0, got {}",
                req.guidance
            )));
        }
        let (h, w) = self.latent_size(req.width, req.height)?;
        let zc = self.model.config.unet.in_channels;
        let latent_shape = vec![1, zc, h, w];
        let mut x = match &req.init_noise {
            Some(n) if n.shape != latent_shape => {
                return Err(Error::Input(format!(
                    "init noise has shape {:?}, this run needs {latent_shape:?}",
                    n.shape
                )))
            }
            Some(n) => n.data.clone(),
            None => NoiseGen::new(req.seed).sample(latent_shape.iter().product()),
        };
        // Classifier-free guidance batches [unconditional, conditional] through one UNet call;
        // at scale 1 the unconditional half would be multiplied by zero, so it is skipped.
        let cfg_on = req.guidance != 1.0;
        let prompts: Vec<&str> = if cfg_on {
            vec![&req.negative_prompt, &req.prompt]
        } else {
            vec![&req.prompt]
        };
        let batch = prompts.len();
        let context = self.encode_text_on(backend, &prompts)?;
        let graph = self.model.config.unet_graph(batch, h, w)?;
        let mut unet = backend.prepare(&graph, self.model)?;

        let mut sched = make_scheduler(
            req.sampler,
            &self.model.sampler.schedule,
            req.steps,
            req.eta,
        )
        .map_err(|e| Error::Input(e.to_string()))?;
        let mut noise = NoiseGen::new(req.seed.wrapping_add(1));
        let sigma = sched.init_noise_sigma();
        x.iter_mut().for_each(|v| *v *= sigma);
        let start = Instant::now();
        let timesteps = sched.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let mut xin = x.clone();
            sched.scale_model_input(&mut xin, i);
            let out = run_unet(unet.as_mut(), &xin, &latent_shape, batch, t, &context)?;
            let eps = if cfg_on {
                let n = xin.len();
                guidance(&out[..n], &out[n..], req.guidance)
            } else {
                out
            };
            x = sched.step(&eps, i, &x, &mut noise);
            on_step(Progress {
                step: i + 1,
                total: timesteps.len(),
                elapsed: start.elapsed(),
            });
        }
        let latents = Tensor::new(latent_shape, x)?;
        check_finite(&latents, "the final latent")?;
        let image = self.decode_on(backend, &latents)?;
        check_finite(&image, "the decoded image")?;
        let (height, width) = (image.shape[2], image.shape[3]);
        let rgb = super::image::to_rgb8(&image)?;
        Ok(Generated {
            image,
            latents,
            rgb,
            width,
            height,
        })
    }
}

fn first(mut v: Vec<Tensor>) -> Result<Tensor> {
    if v.is_empty() {
        return Err(Error::Backend {
            backend: "pipeline",
            msg: "graph produced no output".into(),
        });
    }
    Ok(v.swap_remove(0))
}

/// One UNet evaluation on `batch` copies of the latent.
fn run_unet(
    plan: &mut dyn Executable,
    x: &[f32],
    shape: &[usize],
    batch: usize,
    t: f32,
    context: &Tensor,
) -> Result<Vec<f32>> {
    let mut s = shape.to_vec();
    s[0] = batch;
    let sample = Tensor::new(s, x.repeat(batch))?;
    let ts = Tensor::new(vec![batch], vec![t; batch])?;
    Ok(first(plan.run(&[sample, ts, context.clone()])?)?.data)
}
