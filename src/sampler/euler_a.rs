//! Euler ancestral sampling in sigma space (Karras et al. 2022; k-diffusion's
//! `sample_euler_ancestral`) as diffusers' `EulerAncestralDiscreteScheduler`.
//!
//! Samples live in sigma space, `x = x0 + sigma * eps` with `sigma = sqrt((1 - a) / a)`:
//! - sigmas: `np.interp(timesteps, arange(N), sigmas)` over the training sigmas, then a final 0;
//!   with `linspace` spacing the timesteps are NOT rounded (diffusers keeps them as float32);
//! - `init_noise_sigma = max sigma` for linspace/trailing, `sqrt(max sigma^2 + 1)` for leading
//!   (diffusers' rule; with leading spacing the first sigma is below the training maximum);
//! - the model sees `x / sqrt(sigma^2 + 1)`, which is the VP sample `sqrt(a) x0 + sqrt(1 - a) eps`;
//! - step from `s = sigma_i` to `s' = sigma_{i+1}`: `x0` from the model output,
//!   `up = sqrt(s'^2 (s^2 - s'^2) / s^2)`, `down = sqrt(s'^2 - up^2)`,
//!   `x' = x + (x - x0) / s * (down - s) + up * z`. The noise `z` is drawn on every step (also the
//!   last, where `up = 0`) like diffusers, so each step consumes one value per element.
//!
//! Scalar arithmetic is f32, like diffusers' float32 sigma tensor.
use super::schedule::{check_timesteps, inference_timesteps, np_linspace};
use super::scheduler::check_step_args;
use super::{
    NoiseGen, NoiseSchedule, Prediction, SamplerError, ScheduleConfig, Scheduler, TimestepSpacing,
};

pub struct EulerAncestralScheduler {
    prediction: Prediction,
    timesteps: Vec<f32>,
    /// One per timestep plus the final 0.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    x0: Option<Vec<f32>>,
}

impl EulerAncestralScheduler {
    pub fn new(cfg: &ScheduleConfig, steps: usize) -> Result<Self, SamplerError> {
        let schedule = NoiseSchedule::new(cfg)?;
        let timesteps: Vec<f32> = match cfg.timestep_spacing {
            // np.linspace(0, N - 1, steps, dtype=np.float32)[::-1]: f64 values cast to f32.
            TimestepSpacing::Linspace => {
                np_linspace(0.0, (cfg.num_train_timesteps - 1) as f64, steps)
                    .into_iter()
                    .rev()
                    .map(|t| t as f32)
                    .collect()
            }
            _ => inference_timesteps(cfg, steps),
        };
        check_timesteps(&timesteps, cfg)?;
        let mut sigmas = schedule.interp_sigmas(&timesteps);
        sigmas.push(0.0);
        let init_noise_sigma = super::euler::init_noise_sigma(cfg, &sigmas);
        Ok(Self {
            prediction: cfg.prediction,
            timesteps,
            sigmas,
            init_noise_sigma,
            x0: None,
        })
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for EulerAncestralScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, x: &mut [f32], step: usize) {
        super::euler::scale_by_sigma(x, self.sigmas[step]);
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step: usize,
        sample: &[f32],
        noise: &mut NoiseGen,
    ) -> Vec<f32> {
        check_step_args("euler_a", self.timesteps.len(), step, model_output, sample);
        let (s, s_next) = (self.sigmas[step], self.sigmas[step + 1]);
        let x0 = super::euler::denoised(self.prediction, s, model_output, sample);
        // Clamped at 0 against rounding; mathematically both radicands are >= 0.
        let up = (s_next * s_next * (s * s - s_next * s_next) / (s * s))
            .max(0.0)
            .sqrt();
        let down = (s_next * s_next - up * up).max(0.0).sqrt();
        let dt = down - s;
        let prev = x0
            .iter()
            .zip(sample)
            .map(|(&x0, &x)| {
                let derivative = (x - x0) / s;
                x + derivative * dt + noise.next_normal() * up
            })
            .collect();
        self.x0 = Some(x0);
        prev
    }

    /// `x0 + sigma * noise` (sigma-space sample; diffusers' Euler `add_noise`).
    fn add_noise(&self, x0: &[f32], noise: &[f32], step: usize) -> Vec<f32> {
        assert_eq!(
            x0.len(),
            noise.len(),
            "add_noise: x0 and noise lengths differ"
        );
        let sigma = self.sigmas[step];
        x0.iter().zip(noise).map(|(&x, &n)| x + n * sigma).collect()
    }

    fn pred_original_sample(&self) -> Option<&[f32]> {
        self.x0.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::testutil::*;

    #[test]
    fn oracle_converges_to_x0() {
        for cfg in all_configs() {
            for steps in [5, 30] {
                let mut s = EulerAncestralScheduler::new(&cfg, steps).unwrap();
                let out = run_from_noise(&mut s, &cfg, 21);
                let (p, sp) = (cfg.prediction, cfg.timestep_spacing);
                assert_close(&out, &x0(), 1e-3, &format!("euler_a {p:?} {sp:?} {steps}"));
            }
        }
    }

    #[test]
    fn seeded_runs_reproduce_and_seeds_differ() {
        let cfg = ScheduleConfig::default();
        let run = |seed| {
            let mut s = EulerAncestralScheduler::new(&cfg, 10).unwrap();
            first_steps(&mut s, &cfg, seed, 3)
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn sigmas_and_init_noise_follow_diffusers() {
        let cfg = ScheduleConfig::default();
        let schedule = NoiseSchedule::new(&cfg).unwrap();
        let train = schedule.sigmas();
        let s = EulerAncestralScheduler::new(&cfg, 50).unwrap();
        assert_eq!(s.sigmas().len(), 51);
        assert_eq!(s.sigmas()[0], train[981]);
        assert_eq!(s.sigmas()[49], train[1]);
        assert_eq!(s.sigmas()[50], 0.0);
        let m = train[981];
        assert_eq!(s.init_noise_sigma(), (m * m + 1.0).sqrt());
        let lin = ScheduleConfig {
            timestep_spacing: TimestepSpacing::Linspace,
            ..cfg.clone()
        };
        let s = EulerAncestralScheduler::new(&lin, 10).unwrap();
        assert_eq!(s.timesteps()[..3], [999.0, 888.0, 777.0]);
        assert_eq!(s.init_noise_sigma(), train[999]);
        // Unrounded linspace: np.linspace(0, 999, 7, dtype=np.float32) has 166.5, 832.5.
        let s = EulerAncestralScheduler::new(&lin, 7).unwrap();
        assert_eq!(s.timesteps()[1], 832.5);
        let mid = ((train[832] as f64 + train[833] as f64) / 2.0) as f32;
        assert_eq!(s.sigmas()[1], mid);
    }

    #[test]
    fn scale_model_input_divides_by_sqrt_sigma2_plus_1() {
        let s = EulerAncestralScheduler::new(&ScheduleConfig::default(), 20).unwrap();
        let sigma = s.sigmas()[3];
        let mut x = [2.0f32];
        s.scale_model_input(&mut x, 3);
        assert_eq!(x[0], 2.0 / (sigma * sigma + 1.0).sqrt());
    }
}
