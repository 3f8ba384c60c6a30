//! Heun's second-order method in sigma space (Karras et al. 2022, Algorithm 1 without churn) as
//! diffusers' `HeunDiscreteScheduler` (`scheduling_heun_discrete.py`).
//!
//! Each step but the last evaluates the model twice, so, as in diffusers, the step sequence
//! interleaves them: timesteps `t0, t1, t1, t2, t2, ..., t(n-1), t(n-1)` (2n - 1 model
//! evaluations for n steps) over sigmas `s0, s1, s1, ..., s(n-1), s(n-1), 0`.
//! - An evaluation in the first-order state (every even index) is an Euler step from `s` to
//!   `s'`, remembering its derivative `d`, `dt = s' - s` and the sample `x`.
//! - The next evaluation, at `s'` on the Euler result, gives `d'`; the step is redone as
//!   `x + (d + d') / 2 dt` from the remembered sample.
//! - The last step, to sigma 0, is Euler only (diffusers' sequence ends after it).
//!
//! Timesteps and sigmas are Euler's ([`sigmas::discrete_sigmas`], Karras sigmas included);
//! diffusers' Heun has no `final_sigmas_type`, the chain always ends at 0.
use super::euler::{denoised, init_noise_sigma};
use super::scheduler::check_step_args;
use super::sigmas;
use super::{NoiseGen, NoiseSchedule, Prediction, SamplerError, ScheduleConfig, Scheduler};

/// The first half of a Heun step, kept for the second.
struct Pending {
    derivative: Vec<f32>,
    dt: f32,
    sample: Vec<f32>,
}

pub struct HeunScheduler {
    prediction: Prediction,
    /// Interleaved, 2n - 1 entries.
    timesteps: Vec<f32>,
    /// Interleaved, 2n entries.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    pending: Option<Pending>,
    x0: Option<Vec<f32>>,
}

impl HeunScheduler {
    pub fn new(cfg: &ScheduleConfig, steps: usize) -> Result<Self, SamplerError> {
        let schedule = NoiseSchedule::new(cfg)?;
        let (ts, mut sig) = sigmas::discrete_sigmas(cfg, &schedule, steps);
        super::schedule::check_timesteps_in_range(&ts, cfg)?;
        if !cfg.use_karras_sigmas {
            super::schedule::check_timesteps(&ts, cfg)?;
        }
        sig.push(0.0);
        // torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]]) and
        // torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
        let mut sigmas = vec![sig[0]];
        sigmas.extend(sig[1..sig.len() - 1].iter().flat_map(|&s| [s, s]));
        sigmas.push(0.0);
        let mut timesteps = vec![ts[0]];
        timesteps.extend(ts[1..].iter().flat_map(|&t| [t, t]));
        let init_noise_sigma = init_noise_sigma(cfg, &sigmas);
        Ok(Self {
            prediction: cfg.prediction,
            timesteps,
            sigmas,
            init_noise_sigma,
            pending: None,
            x0: None,
        })
    }
}

impl Scheduler for HeunScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, x: &mut [f32], step: usize) {
        super::euler::scale_by_sigma(x, self.sigmas[step]);
    }

    /// Step k of the user's n starts at evaluation 2k (diffusers' `timesteps[t_start * order:]`).
    fn eval_index(&self, step: usize) -> usize {
        2 * step
    }

    /// A step is complete after its second evaluation, or after the last (Euler-only) one.
    fn completes_step(&self, i: usize) -> bool {
        i % 2 == 1 || i + 1 == self.timesteps.len()
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step: usize,
        sample: &[f32],
        _noise: &mut NoiseGen,
    ) -> Vec<f32> {
        check_step_args("heun", self.timesteps.len(), step, model_output, sample);
        let prev = match self.pending.take() {
            None => {
                let (s, s_next) = (self.sigmas[step], self.sigmas[step + 1]);
                let x0 = denoised(self.prediction, s, model_output, sample);
                let derivative: Vec<f32> =
                    sample.iter().zip(&x0).map(|(&x, &d)| (x - d) / s).collect();
                let dt = s_next - s;
                let prev = sample
                    .iter()
                    .zip(&derivative)
                    .map(|(&x, &d)| x + d * dt)
                    .collect();
                self.pending = Some(Pending {
                    derivative,
                    dt,
                    sample: sample.to_vec(),
                });
                self.x0 = Some(x0);
                prev
            }
            Some(p) => {
                // Evaluated at the Euler result, at sigma s' = sigmas[step].
                let s_next = self.sigmas[step];
                let x0 = denoised(self.prediction, s_next, model_output, sample);
                let prev = (0..sample.len())
                    .map(|k| {
                        let d = (sample[k] - x0[k]) / s_next;
                        let avg = (p.derivative[k] + d) / 2.0;
                        p.sample[k] + avg * p.dt
                    })
                    .collect();
                self.x0 = Some(x0);
                prev
            }
        };
        prev
    }

    /// `x0 + sigma * noise` (diffusers' Heun `add_noise`).
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
    fn interleaves_like_diffusers() {
        let cfg = ScheduleConfig::default();
        let s = HeunScheduler::new(&cfg, 4).unwrap();
        // leading, offset 1, 4 steps: 751, 501, 251, 1
        assert_eq!(s.timesteps(), [751., 501., 501., 251., 251., 1., 1.]);
        assert_eq!(s.sigmas.len(), 8);
        assert_eq!(s.sigmas[1], s.sigmas[2]);
        assert_eq!(s.sigmas[7], 0.0);
        let done: Vec<bool> = (0..7).map(|i| s.completes_step(i)).collect();
        assert_eq!(done.iter().filter(|&&d| d).count(), 4);
    }

    #[test]
    fn oracle_converges_to_x0() {
        for base in all_configs() {
            for karras in [false, true] {
                let cfg = ScheduleConfig {
                    use_karras_sigmas: karras,
                    ..base.clone()
                };
                let mut s = HeunScheduler::new(&cfg, 10).unwrap();
                let out = run_from_noise(&mut s, &cfg, 3);
                assert_close(&out, &x0(), 1e-3, &format!("heun {cfg:?}"));
            }
        }
    }
}
