//! Euler sampling of the probability-flow ODE in sigma space (Karras et al. 2022, Algorithm 2
//! without churn) as diffusers' `EulerDiscreteScheduler` (`scheduling_euler_discrete.py`) with
//! its defaults `s_churn = 0`, `interpolation_type = "linear"`, `timestep_type = "discrete"`.
//!
//! - Timesteps and sigmas: [`sigmas::discrete_sigmas`] (unrounded linspace; Karras sigmas with
//!   fractional timesteps when `use_karras_sigmas`), then the final sigma per
//!   `final_sigmas_type`.
//! - `init_noise_sigma`: the largest sigma for linspace/trailing spacing, `sqrt(max^2 + 1)` for
//!   leading; the model sees `x / sqrt(sigma^2 + 1)`.
//! - Step from `s` to `s'`: `x0` from the model output (epsilon: `x - s eps`; v:
//!   `v (-s / sqrt(s^2 + 1)) + x / (s^2 + 1)`), `x' = x + (x - x0) / s (s' - s)`.
//! - Deterministic: the noise generator is not used.
use super::scheduler::check_step_args;
use super::sigmas;
use super::{
    NoiseGen, NoiseSchedule, Prediction, SamplerError, ScheduleConfig, Scheduler, TimestepSpacing,
};

pub struct EulerScheduler {
    prediction: Prediction,
    timesteps: Vec<f32>,
    /// One per timestep plus the final one.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    x0: Option<Vec<f32>>,
}

/// x0 from a sigma-space sample and the model output at sigma `s` (k-diffusion's
/// parameterisations, as diffusers' Euler and Heun schedulers write them).
pub(crate) fn denoised(prediction: Prediction, s: f32, out: &[f32], x: &[f32]) -> Vec<f32> {
    match prediction {
        Prediction::Epsilon => out.iter().zip(x).map(|(&e, &x)| x - s * e).collect(),
        Prediction::VPrediction => {
            let c_out = -s / (s * s + 1.0).sqrt();
            let c_skip = s * s + 1.0;
            out.iter()
                .zip(x)
                .map(|(&v, &x)| v * c_out + x / c_skip)
                .collect()
        }
    }
}

/// The sigma-space samplers' model input: `x / sqrt(sigma^2 + 1)`.
pub(crate) fn scale_by_sigma(x: &mut [f32], sigma: f32) {
    let scale = (sigma * sigma + 1.0).sqrt();
    for v in x {
        *v /= scale;
    }
}

/// diffusers' Euler, Euler ancestral and Heun `init_noise_sigma`.
pub(crate) fn init_noise_sigma(cfg: &ScheduleConfig, sigmas: &[f32]) -> f32 {
    let max = sigmas.iter().copied().fold(0.0f32, f32::max);
    match cfg.timestep_spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
    }
}

impl EulerScheduler {
    pub fn new(cfg: &ScheduleConfig, steps: usize) -> Result<Self, SamplerError> {
        let schedule = NoiseSchedule::new(cfg)?;
        let (timesteps, mut sigmas) = sigmas::discrete_sigmas(cfg, &schedule, steps);
        super::schedule::check_timesteps_in_range(&timesteps, cfg)?;
        if !cfg.use_karras_sigmas {
            super::schedule::check_timesteps(&timesteps, cfg)?;
        }
        sigmas.push(sigmas::final_sigma(cfg, &schedule));
        let init_noise_sigma = init_noise_sigma(cfg, &sigmas);
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

impl Scheduler for EulerScheduler {
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
        _noise: &mut NoiseGen,
    ) -> Vec<f32> {
        check_step_args("euler", self.timesteps.len(), step, model_output, sample);
        let (s, s_next) = (self.sigmas[step], self.sigmas[step + 1]);
        let x0 = denoised(self.prediction, s, model_output, sample);
        let dt = s_next - s;
        let prev = x0
            .iter()
            .zip(sample)
            .map(|(&x0, &x)| x + (x - x0) / s * dt)
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
    use crate::sampler::FinalSigma;

    #[test]
    fn oracle_converges_to_x0() {
        for base in all_configs() {
            for karras in [false, true] {
                let cfg = ScheduleConfig {
                    use_karras_sigmas: karras,
                    ..base.clone()
                };
                for steps in [5, 30] {
                    let mut s = EulerScheduler::new(&cfg, steps).unwrap();
                    let out = run_from_noise(&mut s, &cfg, 21);
                    let (p, sp) = (cfg.prediction, cfg.timestep_spacing);
                    assert_close(
                        &out,
                        &x0(),
                        1e-3,
                        &format!("euler {p:?} {sp:?} {karras} {steps}"),
                    );
                }
            }
        }
    }

    #[test]
    fn karras_sigmas_span_the_spaced_extremes() {
        let cfg = ScheduleConfig {
            use_karras_sigmas: true,
            final_sigmas_type: FinalSigma::SigmaMin,
            ..ScheduleConfig::default()
        };
        let plain = EulerScheduler::new(&ScheduleConfig::default(), 10).unwrap();
        let k = EulerScheduler::new(&cfg, 10).unwrap();
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs();
        assert!(close(k.sigmas()[0], plain.sigmas()[0]));
        assert!(close(k.sigmas()[9], plain.sigmas()[9]));
        // Karras spacing puts more steps at low noise than the interpolated schedule.
        assert!(k.sigmas()[5] < plain.sigmas()[5]);
        let train = NoiseSchedule::new(&cfg).unwrap().sigmas();
        assert_eq!(k.sigmas()[10], train[0]);
        // Its timesteps are the fractional inverses of its sigmas.
        assert!(k.timesteps().iter().any(|t| t.fract() != 0.0));
    }
}
