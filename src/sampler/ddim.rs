//! DDIM (Song et al. 2020, eq. 12 and 16) as diffusers' `DDIMScheduler` with `clip_sample=False`
//! and `set_alpha_to_one=False`, Stable Diffusion's settings.
//!
//! - The previous timestep is `t - N // steps` (diffusers' rule, whatever the spacing).
//! - When that is negative (the last step), `a_prev = final_alpha_cumprod = alphas_cumprod[0]`,
//!   not 1: the chain ends at the noise level of training timestep 0 (sigma ~ 0.029 for SD), so
//!   the final sample is `sqrt(a_0) x0 + sqrt(1 - a_0) eps`, not exactly `x0`. That is what SD's
//!   `steps_offset=1, set_alpha_to_one=False` config does; we keep it for parity.
//! - `std = eta * sqrt((1 - a_prev)/(1 - a_t) * (1 - a_t/a_prev))`,
//!   `x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps + std z`, noise drawn only if eta > 0.
use super::ddpm::vp_add_noise;
use super::schedule::{check_timesteps, inference_timesteps};
use super::scheduler::check_step_args;
use super::{NoiseGen, NoiseSchedule, Prediction, SamplerError, ScheduleConfig, Scheduler};

pub struct DdimScheduler {
    schedule: NoiseSchedule,
    prediction: Prediction,
    timesteps: Vec<f32>,
    step_ratio: usize,
    eta: f32,
    x0: Option<Vec<f32>>,
}

impl DdimScheduler {
    pub fn new(cfg: &ScheduleConfig, steps: usize, eta: f32) -> Result<Self, SamplerError> {
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(SamplerError::InvalidEta(eta));
        }
        let schedule = NoiseSchedule::new(cfg)?;
        let timesteps = inference_timesteps(cfg, steps);
        check_timesteps(&timesteps, cfg)?;
        let step_ratio = cfg.num_train_timesteps / steps;
        Ok(Self {
            schedule,
            prediction: cfg.prediction,
            timesteps,
            step_ratio,
            eta,
            x0: None,
        })
    }

    /// `(a_t, a_prev)` for `step`.
    fn alphas(&self, step: usize) -> (f32, f32) {
        let ac = &self.schedule.alphas_cumprod;
        let t = self.timesteps[step] as usize;
        let a_prev = match t.checked_sub(self.step_ratio) {
            Some(p) => ac[p],
            None => ac[0], // set_alpha_to_one=False
        };
        (ac[t], a_prev)
    }
}

impl Scheduler for DdimScheduler {
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
        check_step_args("ddim", self.timesteps.len(), step, model_output, sample);
        let (a_t, a_prev) = self.alphas(step);
        let beta_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt(), beta_t.sqrt());
        // (x0, eps) from the model output.
        let (x0, eps): (Vec<f32>, Vec<f32>) = match self.prediction {
            Prediction::Epsilon => (
                model_output
                    .iter()
                    .zip(sample)
                    .map(|(&e, &x)| (x - sb * e) / sa)
                    .collect(),
                model_output.to_vec(),
            ),
            Prediction::VPrediction => model_output
                .iter()
                .zip(sample)
                .map(|(&v, &x)| (sa * x - sb * v, sa * v + sb * x))
                .unzip(),
        };
        let variance = (1.0 - a_prev) / beta_t * (1.0 - a_t / a_prev);
        let std = self.eta * variance.sqrt();
        // Clamped at 0: only eta > 1 could make it negative, where diffusers would produce NaN.
        let c_dir = (1.0 - a_prev - std * std).max(0.0).sqrt();
        let c_x0 = a_prev.sqrt();
        let mut prev: Vec<f32> = x0
            .iter()
            .zip(&eps)
            .map(|(&x0, &e)| c_x0 * x0 + c_dir * e)
            .collect();
        if self.eta > 0.0 {
            for p in prev.iter_mut() {
                *p += std * noise.next_normal();
            }
        }
        self.x0 = Some(x0);
        prev
    }

    fn add_noise(&self, x0: &[f32], noise: &[f32], step: usize) -> Vec<f32> {
        vp_add_noise(self.alphas(step).0, x0, noise)
    }

    fn pred_original_sample(&self) -> Option<&[f32]> {
        self.x0.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::testutil::*;

    /// eta = 0 with an oracle model keeps eps fixed, so starting from `add_noise(x0, eps)` the
    /// chain must end exactly at `sqrt(a_0) x0 + sqrt(1 - a_0) eps` (see module docs) and every
    /// step must predict x0 itself.
    #[test]
    fn deterministic_oracle_recovers_x0() {
        for prediction in [Prediction::Epsilon, Prediction::VPrediction] {
            let cfg = ScheduleConfig {
                prediction,
                ..ScheduleConfig::default()
            };
            for steps in [1, 5, 20, 50, 250] {
                let mut s = DdimScheduler::new(&cfg, steps, 0.0).unwrap();
                let eps = NoiseGen::new(1).sample(x0().len());
                let start = s.add_noise(&x0(), &eps, 0);
                let out = run_oracle(&mut s, &cfg, start, 0, 99);
                assert_close(
                    s.pred_original_sample().unwrap(),
                    &x0(),
                    1e-4,
                    "ddim x0 prediction",
                );
                let a0 = s.schedule.alphas_cumprod[0];
                let want: Vec<f32> = x0()
                    .iter()
                    .zip(&eps)
                    .map(|(&x, &e)| a0.sqrt() * x + (1.0 - a0).sqrt() * e)
                    .collect();
                assert_close(&out, &want, 1e-4, "ddim final sample");
            }
        }
    }

    #[test]
    fn oracle_from_pure_noise_ends_near_x0() {
        for eta in [0.0, 1.0] {
            let cfg = ScheduleConfig::default();
            let mut s = DdimScheduler::new(&cfg, 30, eta).unwrap();
            let out = run_from_noise(&mut s, &cfg, 4);
            assert_close(
                s.pred_original_sample().unwrap(),
                &x0(),
                1e-4,
                "ddim x0 prediction",
            );
            // The final noise level is sqrt(1 - a_0) ~ 0.029 times a unit Gaussian.
            assert_close(&out, &x0(), 0.15, "ddim final");
        }
    }

    #[test]
    fn eta_one_is_reproducible_and_eta_zero_draws_nothing() {
        let cfg = ScheduleConfig::default();
        let run = |eta, seed| {
            let mut s = DdimScheduler::new(&cfg, 10, eta).unwrap();
            first_steps(&mut s, &cfg, seed, 3)
        };
        assert_eq!(run(1.0, 5), run(1.0, 5));
        assert_ne!(run(1.0, 5), run(1.0, 6));
        // With eta = 0 the step noise stream is unused, so the seed only sets the initial noise.
        let mut s = DdimScheduler::new(&cfg, 10, 0.0).unwrap();
        let mut g = NoiseGen::new(3);
        s.step(&[0.1], 0, &[0.2], &mut g);
        assert_eq!(g.next_normal(), NoiseGen::new(3).next_normal());
    }

    #[test]
    fn final_step_uses_alphas_cumprod_0() {
        let cfg = ScheduleConfig::default();
        let s = DdimScheduler::new(&cfg, 50, 0.0).unwrap();
        let ac = &s.schedule.alphas_cumprod;
        assert_eq!(s.alphas(0), (ac[981], ac[961]));
        assert_eq!(s.alphas(49), (ac[1], ac[0]));
    }
}
