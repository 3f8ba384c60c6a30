//! DDPM ancestral sampling (Ho et al. 2020, eq. 6-7) as diffusers' `DDPMScheduler` with
//! `variance_type="fixed_small"` and `clip_sample=False` (SD's config; latents are not in [-1, 1]).
//!
//! Per step, with `a` = alphas_cumprod, `t` the current and `p` the next timestep of the list
//! (`a_p = 1` after the last one, as diffusers' `previous_timestep`):
//! `x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t)` (or `sqrt(a_t) x - sqrt(1 - a_t) v`),
//! `mean = sqrt(a_p) (1 - a_t/a_p) / (1 - a_t) * x0 + sqrt(a_t/a_p) (1 - a_p) / (1 - a_t) * x`,
//! `var = (1 - a_p) / (1 - a_t) * (1 - a_t/a_p)` clamped to >= 1e-20, and noise is added when t > 0.
//! Scalars are computed in f32 like diffusers' float32 tensors.
use super::schedule::{check_timesteps, inference_timesteps};
use super::scheduler::check_step_args;
use super::{NoiseGen, NoiseSchedule, Prediction, SamplerError, ScheduleConfig, Scheduler};

pub struct DdpmScheduler {
    schedule: NoiseSchedule,
    prediction: Prediction,
    timesteps: Vec<f32>,
    x0: Option<Vec<f32>>,
}

impl DdpmScheduler {
    pub fn new(cfg: &ScheduleConfig, steps: usize) -> Result<Self, SamplerError> {
        let schedule = NoiseSchedule::new(cfg)?;
        let timesteps = inference_timesteps(cfg, steps);
        check_timesteps(&timesteps, cfg)?;
        Ok(Self {
            schedule,
            prediction: cfg.prediction,
            timesteps,
            x0: None,
        })
    }

    fn alpha(&self, step: usize) -> f32 {
        self.schedule.alphas_cumprod[self.timesteps[step] as usize]
    }
}

impl Scheduler for DdpmScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step: usize,
        sample: &[f32],
        noise: &mut NoiseGen,
    ) -> Vec<f32> {
        check_step_args("ddpm", self.timesteps.len(), step, model_output, sample);
        let a_t = self.alpha(step);
        let a_p = if step + 1 < self.timesteps.len() {
            self.alpha(step + 1)
        } else {
            1.0
        };
        let (beta_t, beta_p) = (1.0 - a_t, 1.0 - a_p);
        let cur_alpha = a_t / a_p;
        let cur_beta = 1.0 - cur_alpha;
        let (sa, sb) = (a_t.sqrt(), beta_t.sqrt());
        let x0: Vec<f32> = match self.prediction {
            Prediction::Epsilon => model_output
                .iter()
                .zip(sample)
                .map(|(&e, &x)| (x - sb * e) / sa)
                .collect(),
            Prediction::VPrediction => model_output
                .iter()
                .zip(sample)
                .map(|(&v, &x)| sa * x - sb * v)
                .collect(),
        };
        let c_x0 = a_p.sqrt() * cur_beta / beta_t;
        let c_x = cur_alpha.sqrt() * beta_p / beta_t;
        let mut prev: Vec<f32> = x0
            .iter()
            .zip(sample)
            .map(|(&x0, &x)| c_x0 * x0 + c_x * x)
            .collect();
        if self.timesteps[step] > 0.0 {
            let std = (beta_p / beta_t * cur_beta).max(1e-20).sqrt();
            for p in prev.iter_mut() {
                *p += std * noise.next_normal();
            }
        }
        self.x0 = Some(x0);
        prev
    }

    fn add_noise(&self, x0: &[f32], noise: &[f32], step: usize) -> Vec<f32> {
        vp_add_noise(self.alpha(step), x0, noise)
    }

    fn pred_original_sample(&self) -> Option<&[f32]> {
        self.x0.as_deref()
    }
}

/// `sqrt(a) x0 + sqrt(1 - a) noise` (diffusers' DDPM/DDIM `add_noise`).
pub(crate) fn vp_add_noise(a: f32, x0: &[f32], noise: &[f32]) -> Vec<f32> {
    assert_eq!(
        x0.len(),
        noise.len(),
        "add_noise: x0 and noise lengths differ"
    );
    let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
    x0.iter()
        .zip(noise)
        .map(|(&x, &n)| sa * x + sb * n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::testutil::*;

    #[test]
    fn oracle_converges_to_x0() {
        for prediction in [Prediction::Epsilon, Prediction::VPrediction] {
            let cfg = ScheduleConfig {
                prediction,
                ..ScheduleConfig::default()
            };
            for steps in [10, 50] {
                let mut s = DdpmScheduler::new(&cfg, steps).unwrap();
                let out = run_from_noise(&mut s, &cfg, 11);
                assert_close(&out, &x0(), 1e-3, "ddpm final");
            }
        }
    }

    #[test]
    fn seeded_runs_reproduce_and_seeds_differ() {
        let cfg = ScheduleConfig::default();
        let run = |seed| {
            let mut s = DdpmScheduler::new(&cfg, 10).unwrap();
            first_steps(&mut s, &cfg, seed, 3)
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn one_step_matches_hand_computation() {
        let cfg = ScheduleConfig::default();
        let mut s = DdpmScheduler::new(&cfg, 50).unwrap();
        let ac = &s.schedule.alphas_cumprod;
        let (a_t, a_p) = (ac[981] as f64, ac[961] as f64);
        let (x, e) = (0.7f32, -0.3f32);
        let mut g = NoiseGen::new(9);
        let got = s.step(&[e], 0, &[x], &mut g)[0] as f64;
        let z = NoiseGen::new(9).next_normal() as f64;
        let x0 = (x as f64 - (1.0 - a_t).sqrt() * e as f64) / a_t.sqrt();
        let beta = 1.0 - a_t / a_p;
        let mean = a_p.sqrt() * beta / (1.0 - a_t) * x0
            + (a_t / a_p).sqrt() * (1.0 - a_p) / (1.0 - a_t) * x as f64;
        let var = (1.0 - a_p) / (1.0 - a_t) * beta;
        assert!((got - (mean + var.sqrt() * z)).abs() < 1e-5, "{got}");
    }
}
