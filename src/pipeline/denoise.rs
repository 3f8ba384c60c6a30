//! The one denoising loop behind txt2img, img2img, inpainting and upscaling: scheduler steps
//! over the UNet with classifier-free guidance and the task's conditioning channels.
use super::progress::{Cancel, Steps};
use super::shared::first;
use crate::arch::task::concat_channels;
use crate::backend::{Executable, Tensor};
use crate::sampler::{guidance, make_scheduler, NoiseGen, SamplerKind, ScheduleConfig};
use crate::{Error, Result};

/// The seeded, per-run part of a request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sampling<'a> {
    pub steps: usize,
    pub sampler: SamplerKind,
    pub eta: f32,
    /// Karras sigmas on or off instead of the model's schedule setting (None: the model's).
    pub karras: Option<bool>,
    pub seed: u64,
    /// Replaces the seed's initial noise [1, z, h, w] when given.
    pub init_noise: Option<&'a Tensor>,
}

/// Where the chain starts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Start<'a> {
    /// Pure noise at the first timestep (txt2img, inpainting, upscaling, img2img strength 1).
    Noise,
    /// img2img: the clean latent `z0` noised to the level of step `first` of `steps`.
    Latent { z0: &'a [f32], first: usize },
}

/// A prepared UNet with its text context, reused across runs of the same latent size (the
/// tiles of an upscale).
pub(crate) struct Denoiser {
    unet: Box<dyn Executable>,
    /// [1 or 2, L, D]: [uncond, cond] when guiding.
    context: Tensor,
    /// The CFG scale, or None when only the conditional branch runs.
    guidance: Option<f32>,
    /// The UNet's own guidance input (scale minus one) when it is guidance-distilled.
    w: Option<f32>,
    latent_shape: Vec<usize>,
}

impl Denoiser {
    pub(crate) fn new(
        unet: Box<dyn Executable>,
        context: Tensor,
        guidance: Option<f32>,
        w: Option<f32>,
        latent_shape: Vec<usize>,
    ) -> Self {
        Self {
            unet,
            context,
            guidance,
            w,
            latent_shape,
        }
    }

    /// The seed's initial noise (or the request's own), checked against the latent shape.
    pub(crate) fn initial_noise(&self, s: &Sampling) -> Result<Vec<f32>> {
        match s.init_noise {
            Some(n) if n.shape != self.latent_shape => Err(Error::Input(format!(
                "init noise has shape {:?}, this run needs {:?}",
                n.shape, self.latent_shape
            ))),
            Some(n) => Ok(n.data.clone()),
            None => Ok(NoiseGen::new(s.seed).sample(self.latent_shape.iter().product())),
        }
    }

    /// Runs the chain and returns the final latent [1, z, h, w]. `cond` holds the task's extra
    /// UNet input channels at latent resolution (empty for txt2img); every batch element gets
    /// the same copy.
    pub(crate) fn run(
        &mut self,
        s: &Sampling,
        schedule: &ScheduleConfig,
        start: Start,
        cond: &[f32],
        progress: &mut Steps,
        cancel: &Cancel,
    ) -> Result<Tensor> {
        let schedule = match s.karras {
            Some(true) if !s.sampler.uses_sigmas() => {
                return Err(Error::Input(format!(
                    "Karras sigmas apply to euler, heun, dpmpp_2m, dpmpp_2m_sde and unipc, not \
                     to {}",
                    s.sampler
                )))
            }
            Some(k) => ScheduleConfig {
                use_karras_sigmas: k,
                ..schedule.clone()
            },
            None => schedule.clone(),
        };
        let mut sched = make_scheduler(s.sampler, &schedule, s.steps, s.eta)
            .map_err(|e| Error::Input(e.to_string()))?;
        let init = self.initial_noise(s)?;
        let (mut x, first_step) = match start {
            Start::Noise => {
                let sigma = sched.init_noise_sigma();
                (init.into_iter().map(|v| v * sigma).collect(), 0)
            }
            Start::Latent { z0, first } => {
                if z0.len() != init.len() || first >= s.steps {
                    return Err(Error::Input(format!(
                        "cannot start at step {first} of {} from a latent of {} values \
                         (need {})",
                        s.steps,
                        z0.len(),
                        init.len()
                    )));
                }
                let first = sched.eval_index(first);
                (sched.add_noise(z0, &init, first), first)
            }
        };
        // Stochastic samplers draw from a stream apart from the initial noise, so the initial
        // noise is the same whatever the sampler.
        let mut noise = NoiseGen::new(s.seed.wrapping_add(1));
        let timesteps = sched.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate().skip(first_step) {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let mut xin = x.clone();
            sched.scale_model_input(&mut xin, i);
            let out = self.eval(&xin, cond, t)?;
            let eps = match self.guidance {
                Some(g) => {
                    let n = xin.len();
                    guidance(&out[..n], &out[n..], g)
                }
                None => out,
            };
            x = sched.step(&eps, i, &x, &mut noise);
            // Some samplers (Heun, PNDM's warm-up) take several evaluations per user step.
            if !sched.completes_step(i) {
                continue;
            }
            if progress.wants_preview() {
                // The sampler's estimate of the clean latent shows the final image; the noisy
                // latent itself would show mostly noise until the last steps.
                let est = sched.pred_original_sample().unwrap_or(&x);
                let (h, w) = (self.latent_shape[2], self.latent_shape[3]);
                progress.tick_with_latent(est, h, w)?;
            } else {
                progress.tick();
            }
        }
        let latents = Tensor::new(self.latent_shape.clone(), x)?;
        super::shared::check_finite(&latents, "the final latent")?;
        Ok(latents)
    }

    /// One UNet evaluation on a batch of copies of [x, cond], one per context row.
    fn eval(&mut self, x: &[f32], cond: &[f32], t: f32) -> Result<Vec<f32>> {
        let batch = self.context.shape[0];
        let one = concat_channels(x, cond);
        let (h, w) = (self.latent_shape[2], self.latent_shape[3]);
        let sample = Tensor::new(vec![batch, one.len() / (h * w), h, w], one.repeat(batch))?;
        let ts = Tensor::new(vec![batch], vec![t; batch])?;
        let mut inputs = vec![sample, ts, self.context.clone()];
        if let Some(w) = self.w {
            inputs.push(Tensor::new(vec![batch], vec![w; batch])?);
        }
        Ok(first(self.unet.run(&inputs)?)?.data)
    }
}
