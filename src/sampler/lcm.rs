//! Multi-step latent consistency sampling (Luo et al. 2023, algorithm 3) as diffusers'
//! `LCMScheduler` with its defaults (`original_inference_steps=50`, `timestep_scaling=10`,
//! no clipping or thresholding, `set_alpha_to_one` per the schedule: off for SD).
//!
//! - Timesteps: the distillation schedule is every `k = N / original`-th training step,
//!   `k - 1, 2k - 1, ..., N - 1`; `steps` of them are taken, from the top, at the indices
//!   `floor(i * (original / steps))` computed in f64 as numpy's `linspace` does.
//! - Each step maps the sample to the consistency function's output
//!   `f(x, t) = c_skip(t) x + c_out(t) x0(x, t)`, with `c_skip = s^2 / ((10 t)^2 + s^2)`,
//!   `c_out = 10 t / sqrt((10 t)^2 + s^2)`, `s = 0.5`, and `x0` from the model output (epsilon
//!   or v). Every step but the last then noises it to the next timestep with fresh noise drawn
//!   from the seeded [`NoiseGen`]: `sqrt(a_next) f + sqrt(1 - a_next) z`. The last step returns
//!   `f` itself, so one step is one model evaluation and no noise.
use super::ddpm::vp_add_noise;
use super::scheduler::check_step_args;
use super::{NoiseGen, NoiseSchedule, Prediction, SamplerError, ScheduleConfig, Scheduler};

/// Length of the distillation schedule the student was trained on (diffusers'
/// `original_inference_steps` default; LCM-SD1.5 and LCM-LoRA use it).
pub const ORIGINAL_STEPS: usize = 50;
/// `timestep_scaling` of the boundary-condition scalings (diffusers' default).
const TIMESTEP_SCALING: f64 = 10.0;
const SIGMA_DATA: f64 = 0.5;

/// The inference timesteps, descending: `steps` of the `original`-step distillation schedule
/// over `num_train` training steps.
pub fn lcm_timesteps(
    num_train: usize,
    original: usize,
    steps: usize,
) -> Result<Vec<usize>, SamplerError> {
    if original == 0 || original > num_train {
        return Err(SamplerError::InvalidConfig(format!(
            "LCM's original_inference_steps is {original}; it must be between 1 and \
             num_train_timesteps ({num_train})"
        )));
    }
    if steps == 0 || steps > original {
        return Err(SamplerError::TooManyLcmSteps { steps, original });
    }
    let k = num_train / original;
    let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
    // numpy: linspace(0, len, steps, endpoint=False) = i * (len / steps) in f64, floored.
    let stride = origin.len() as f64 / steps as f64;
    Ok((0..steps)
        .map(|i| origin[((i as f64 * stride).floor() as usize).min(origin.len() - 1)])
        .collect())
}

/// `(c_skip, c_out)` at training timestep `t`.
fn boundary_scalings(t: usize) -> (f32, f32) {
    let st = t as f64 * TIMESTEP_SCALING;
    let d = st * st + SIGMA_DATA * SIGMA_DATA;
    ((SIGMA_DATA * SIGMA_DATA / d) as f32, (st / d.sqrt()) as f32)
}

pub struct LcmScheduler {
    schedule: NoiseSchedule,
    prediction: Prediction,
    steps: Vec<usize>,
    timesteps: Vec<f32>,
    denoised: Option<Vec<f32>>,
}

impl LcmScheduler {
    pub fn new(cfg: &ScheduleConfig, steps: usize, original: usize) -> Result<Self, SamplerError> {
        let schedule = NoiseSchedule::new(cfg)?;
        let steps = lcm_timesteps(cfg.num_train_timesteps, original, steps)?;
        Ok(Self {
            schedule,
            prediction: cfg.prediction,
            timesteps: steps.iter().map(|&t| t as f32).collect(),
            steps,
            denoised: None,
        })
    }
}

impl Scheduler for LcmScheduler {
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
        check_step_args("lcm", self.steps.len(), step, model_output, sample);
        let ac = &self.schedule.alphas_cumprod;
        let t = self.steps[step];
        let a_t = ac[t];
        let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        let (c_skip, c_out) = boundary_scalings(t);
        let denoised: Vec<f32> = model_output
            .iter()
            .zip(sample)
            .map(|(&m, &x)| {
                let x0 = match self.prediction {
                    Prediction::Epsilon => (x - sb * m) / sa,
                    Prediction::VPrediction => sa * x - sb * m,
                };
                c_out * x0 + c_skip * x
            })
            .collect();
        let out = match self.steps.get(step + 1) {
            Some(&next) => vp_add_noise(ac[next], &denoised, &noise.sample(denoised.len())),
            None => denoised.clone(),
        };
        self.denoised = Some(denoised);
        out
    }

    fn add_noise(&self, x0: &[f32], noise: &[f32], step: usize) -> Vec<f32> {
        vp_add_noise(self.schedule.alphas_cumprod[self.steps[step]], x0, noise)
    }

    fn pred_original_sample(&self) -> Option<&[f32]> {
        self.denoised.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::testutil;

    #[test]
    fn timesteps_match_diffusers() {
        // diffusers 0.42 LCMScheduler().set_timesteps(n); timesteps.tolist()
        let want: [(usize, &[usize]); 7] = [
            (1, &[999]),
            (2, &[999, 499]),
            (4, &[999, 759, 499, 259]),
            (8, &[999, 879, 759, 639, 499, 379, 259, 139]),
            (3, &[999, 679, 339]),
            (6, &[999, 839, 679, 499, 339, 179]),
            // The index of the tenth, 9 * (50 / 18), is 25 only when computed as numpy does.
            (
                18,
                &[
                    999, 959, 899, 839, 779, 739, 679, 619, 559, 499, 459, 399, 339, 279, 239, 179,
                    119, 59,
                ],
            ),
        ];
        for (n, w) in want {
            assert_eq!(
                lcm_timesteps(1000, ORIGINAL_STEPS, n).unwrap(),
                w,
                "{n} steps"
            );
        }
        // All 50 are the whole schedule, 999 down to 19.
        let all = lcm_timesteps(1000, 50, 50).unwrap();
        assert_eq!((all[0], all[49]), (999, 19));
    }

    #[test]
    fn bad_step_counts_are_clear_errors() {
        let e = lcm_timesteps(1000, 50, 51).unwrap_err().to_string();
        assert!(e.contains("at most 50"), "{e}");
        assert!(lcm_timesteps(1000, 50, 0).is_err());
        assert!(lcm_timesteps(1000, 0, 4).is_err());
        assert!(lcm_timesteps(1000, 2000, 4).is_err());
    }

    #[test]
    fn the_oracle_lands_on_x0() {
        // With the ideal model, f(x, t) = x0 up to c_skip's leak of the noisy input, which is
        // ~1e-7 of it at t >= 19, so every step returns x0 up to rounding.
        let cfg = ScheduleConfig::default();
        let x0 = testutil::x0();
        let mut s = LcmScheduler::new(&cfg, 4, ORIGINAL_STEPS).unwrap();
        let mut noise = NoiseGen::new(7);
        let mut x = noise.sample(x0.len());
        for i in 0..s.num_steps() {
            let a = s.schedule.alphas_cumprod[s.steps[i]];
            let out = testutil::oracle(cfg.prediction, &x, &x0, a);
            x = s.step(&out, i, &x, &mut noise);
        }
        for (a, b) in x.iter().zip(&x0) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    /// diffusers' `LCMScheduler` stepped on fixed inputs with the project's noise stream
    /// injected (`tests/parity/make_lcm_fixture.py`), against ours on the same inputs.
    #[test]
    fn matches_diffusers_with_the_same_noise() {
        #[derive(serde::Deserialize)]
        struct Case {
            prediction: String,
            steps: usize,
            seed: u64,
            n: usize,
            timesteps: Vec<usize>,
            x_init: Vec<f32>,
            model_outputs: Vec<Vec<f32>>,
            prev_samples: Vec<Vec<f32>>,
            denoised: Vec<Vec<f32>>,
        }
        #[derive(serde::Deserialize)]
        struct Fixture {
            cases: Vec<Case>,
        }
        let f: Fixture = serde_json::from_str(include_str!(
            "../../tests/parity/fixtures/lcm_scheduler.json"
        ))
        .unwrap();
        assert_eq!(f.cases.len(), 3);
        for c in f.cases {
            let cfg = ScheduleConfig {
                prediction: match c.prediction.as_str() {
                    "epsilon" => Prediction::Epsilon,
                    _ => Prediction::VPrediction,
                },
                ..ScheduleConfig::default()
            };
            let mut s = LcmScheduler::new(&cfg, c.steps, ORIGINAL_STEPS).unwrap();
            assert_eq!(s.steps, c.timesteps);
            // The fixture's port of the noise generator gives our stream bit for bit.
            let mut noise = NoiseGen::new(c.seed);
            let mut x = noise.sample(c.n);
            assert_eq!(x, c.x_init);
            for i in 0..c.steps {
                x = s.step(&c.model_outputs[i], i, &x, &mut noise);
                let close = |a: &[f32], b: &[f32], what: &str| {
                    for (a, b) in a.iter().zip(b) {
                        assert!(
                            (a - b).abs() <= 2e-5 * (1.0 + b.abs()),
                            "{} step {i} {what}: {a} vs {b}",
                            c.prediction
                        );
                    }
                };
                close(&x, &c.prev_samples[i], "prev_sample");
                close(
                    s.pred_original_sample().unwrap(),
                    &c.denoised[i],
                    "denoised",
                );
            }
        }
    }
}
