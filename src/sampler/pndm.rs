//! Pseudo numerical methods (PNDM; Liu et al. 2022, "Pseudo Numerical Methods for Diffusion
//! Models", arXiv 2202.09778) as diffusers' `PNDMScheduler` (`scheduling_pndm.py`,
//! `set_timesteps`, `step_prk`, `step_plms`): PLMS throughout with `skip_prk_steps=True` (what
//! Stable Diffusion ships), or first three pseudo Runge-Kutta steps with `skip_prk_steps=False`
//! (diffusers' default).
//!
//! With the Runge-Kutta warm-up (`prk`), the last four ascending timesteps `a < b < c < d` and
//! `h = N // n // 2` give 12 evaluations `d, c+h, c+h, c, c, b+h, b+h, b, b, a+h, a+h, a`, four
//! per step: each transfers the step's first sample with its own output (to `t - h`, `t`, `t - h`
//! as diffusers computes the targets), and the fourth with `(e1 + 2 e2 + 2 e3 + e4) / 6`; the
//! first output of each step joins the history, so PLMS continues from `a` at fourth order
//! (`T[:-3]` reversed). diffusers needs at least 4 steps for this.
//!
//! - Timesteps `T` ascending by the spacing (linspace rounded, leading with `steps_offset`,
//!   trailing), then run as `T(n-1), T(n-2), T(n-2), T(n-3), ..., T0`: n + 1 model evaluations
//!   for n steps, the second at the same timestep as the first (diffusers' PLMS warm-up).
//! - Each evaluation moves from `t` to `t - N // n` (diffusers uses that stride whatever the
//!   spacing) with the PNDM transfer (eq. 9):
//!   `x' = sqrt(a'/a) x - (a' - a) e / (a sqrt(1 - a') + sqrt(a (1 - a) a'))`, `a' = 1` or
//!   `alphas_cumprod[0]` below timestep 0 (`set_alpha_to_one`); v-prediction is turned into
//!   epsilon first (`e = sqrt(a) v + sqrt(1 - a) x`).
//! - `e` combines the model outputs so far: the first; for the second call, the mean of the
//!   first two, applied again from the first sample (a Heun-like redo of step 0); then the
//!   Adams-Bashforth weights of order 2, 3 and 4: `(3, -1) / 2`, `(23, -16, 5) / 12`,
//!   `(55, -59, 37, -9) / 24` over the latest outputs.
//!
//! Like diffusers, the state follows the number of calls, not the step index, so an img2img
//! late start warms up the same way from wherever it starts. Deterministic.
use super::ddpm::vp_add_noise;
use super::scheduler::check_step_args;
use super::{
    NoiseGen, NoiseSchedule, Prediction, SamplerError, ScheduleConfig, Scheduler, TimestepSpacing,
};

pub struct PndmScheduler {
    schedule: NoiseSchedule,
    prediction: Prediction,
    timesteps: Vec<f32>,
    /// `N // n`, the transfer's stride.
    ratio: usize,
    final_alpha: f32,
    /// Calls so far.
    counter: usize,
    /// The latest (at most 4) model outputs, oldest first.
    ets: Vec<Vec<f32>>,
    /// The sample of the first call, for the second (PLMS), or of a Runge-Kutta step's first
    /// evaluation, for its others.
    cur_sample: Option<Vec<f32>>,
    /// Evaluations of the Runge-Kutta warm-up (12, or 0 with `skip_prk_steps`).
    prk_len: usize,
    /// `N // n // 2`, the Runge-Kutta half step.
    half: usize,
    /// The Runge-Kutta weighted sum so far.
    rk_sum: Vec<f32>,
    /// The evaluation index of the first call (0, or img2img's late start).
    first_index: Option<usize>,
}

/// The ascending integer timesteps `_timesteps` of diffusers' PNDM `set_timesteps`.
fn base_timesteps(cfg: &ScheduleConfig, steps: usize) -> Vec<usize> {
    let n = cfg.num_train_timesteps;
    let mut ts: Vec<usize> = match cfg.timestep_spacing {
        TimestepSpacing::Linspace => super::schedule::np_linspace(0.0, (n - 1) as f64, steps)
            .into_iter()
            .map(|t| t.round_ties_even() as usize)
            .collect(),
        TimestepSpacing::Leading => (0..steps)
            .map(|i| i * (n / steps) + cfg.steps_offset)
            .collect(),
        // round(arange(N, 0, -N / n))[::-1] - 1: DDIM's trailing timesteps, ascending.
        TimestepSpacing::Trailing => super::schedule::trailing_timesteps(n, steps)
            .into_iter()
            .rev()
            .map(|t| t.max(0.0) as usize)
            .collect(),
    };
    ts.sort_unstable();
    ts
}

impl PndmScheduler {
    pub fn new(cfg: &ScheduleConfig, steps: usize) -> Result<Self, SamplerError> {
        let schedule = NoiseSchedule::new(cfg)?;
        let t = base_timesteps(cfg, steps);
        let ratio = cfg.num_train_timesteps / steps;
        let half = ratio / 2;
        let plms: Vec<usize> = if cfg.skip_prk_steps {
            // concat(T[:-1], T[-2:-1], T[-1:])[::-1]
            let mut p: Vec<usize> = t[..t.len() - 1].to_vec();
            if t.len() >= 2 {
                p.push(t[t.len() - 2]);
            }
            p.push(t[t.len() - 1]);
            p.reverse();
            p
        } else {
            if steps < 4 {
                return Err(SamplerError::InvalidTimesteps(format!(
                    "pndm with its Runge-Kutta warm-up (skip_prk_steps false) needs at least 4 \
                     steps, got {steps}"
                )));
            }
            // (T[-4:].repeat(2) + tile([0, h], 4))[:-1].repeat(2)[1:-1][::-1], then T[:-3][::-1]
            let last4 = &t[t.len() - 4..];
            let pairs: Vec<usize> = last4.iter().flat_map(|&x| [x, x + half]).collect();
            let doubled: Vec<usize> = pairs[..pairs.len() - 1]
                .iter()
                .flat_map(|&x| [x, x])
                .collect();
            let mut p: Vec<usize> = doubled[1..doubled.len() - 1]
                .iter()
                .rev()
                .copied()
                .collect();
            p.extend(t[..t.len() - 3].iter().rev());
            p
        };
        let timesteps: Vec<f32> = plms.iter().map(|&t| t as f32).collect();
        super::schedule::check_timesteps_in_range(&timesteps, cfg)?;
        // The second PLMS call evaluates at T(n-2) but transfers from T(n-2) + ratio.
        if cfg.skip_prk_steps && plms.len() > 1 && plms[1] + ratio >= cfg.num_train_timesteps {
            return Err(SamplerError::InvalidTimesteps(format!(
                "pndm with {steps} steps and {:?} spacing would step from timestep {}, outside \
                 the trained range",
                cfg.timestep_spacing,
                plms[1] + ratio
            )));
        }
        let final_alpha = if cfg.set_alpha_to_one {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        Ok(Self {
            schedule,
            prediction: cfg.prediction,
            timesteps,
            ratio,
            final_alpha,
            counter: 0,
            ets: Vec::new(),
            cur_sample: None,
            prk_len: if cfg.skip_prk_steps { 0 } else { 12 },
            half,
            rk_sum: Vec::new(),
            first_index: None,
        })
    }

    /// diffusers' `_get_prev_sample`: from timestep `t` to `prev` (negative: the final alpha).
    fn transfer(&self, sample: &[f32], t: usize, prev: isize, e: &[f32]) -> Vec<f32> {
        let a = self.schedule.alphas_cumprod[t];
        let a_prev = if prev >= 0 {
            self.schedule.alphas_cumprod[prev as usize]
        } else {
            self.final_alpha
        };
        let (b, b_prev) = (1.0 - a, 1.0 - a_prev);
        let sample_coeff = (a_prev / a).sqrt();
        let denom = a * b_prev.sqrt() + (a * b * a_prev).sqrt();
        sample
            .iter()
            .zip(e)
            .map(|(&x, &m)| {
                let eps = match self.prediction {
                    Prediction::Epsilon => m,
                    Prediction::VPrediction => a.sqrt() * m + b.sqrt() * x,
                };
                sample_coeff * x - (a_prev - a) * eps / denom
            })
            .collect()
    }
}

impl PndmScheduler {
    /// diffusers' `step_prk` for call `counter` (< 12).
    fn step_prk(&mut self, model_output: &[f32], step: usize, sample: &[f32]) -> Vec<f32> {
        let c = self.counter;
        let t_in = self.timesteps[step] as isize;
        let prev = t_in - if c % 2 == 1 { 0 } else { self.half as isize };
        let t = self.timesteps[c / 4 * 4] as usize;
        let add = |sum: &mut Vec<f32>, w: f32| {
            if sum.is_empty() {
                *sum = vec![0.0; model_output.len()];
            }
            for (s, &m) in sum.iter_mut().zip(model_output) {
                *s += w * m;
            }
        };
        let e: Vec<f32> = match c % 4 {
            0 => {
                self.rk_sum.clear();
                add(&mut self.rk_sum, 1.0 / 6.0);
                self.ets.push(model_output.to_vec());
                self.cur_sample = Some(sample.to_vec());
                model_output.to_vec()
            }
            1 | 2 => {
                add(&mut self.rk_sum, 1.0 / 3.0);
                model_output.to_vec()
            }
            _ => {
                let sum = std::mem::take(&mut self.rk_sum);
                sum.iter()
                    .zip(model_output)
                    .map(|(&s, &m)| s + (1.0 / 6.0) * m)
                    .collect()
            }
        };
        let from = self.cur_sample.clone().unwrap_or_else(|| sample.to_vec());
        let out = self.transfer(&from, t, prev, &e);
        self.counter += 1;
        out
    }
}

/// `sum_i w_i e_i / d` over the latest outputs (oldest first in `ets`).
fn combine(ets: &[Vec<f32>], w: &[f32], d: f32) -> Vec<f32> {
    let k = ets.len();
    (0..ets[0].len())
        .map(|j| {
            // The newest output has the first weight.
            let s: f32 = w
                .iter()
                .enumerate()
                .map(|(i, &wi)| wi * ets[k - 1 - i][j])
                .sum();
            s / d
        })
        .collect()
}

impl Scheduler for PndmScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// PLMS: every call after the first completes a step (n + 1 evaluations make n steps,
    /// also from img2img's late start); with the Runge-Kutta warm-up every fourth of its 12,
    /// then every PLMS call.
    fn completes_step(&self, i: usize) -> bool {
        if self.prk_len > 0 {
            return if i < self.prk_len { i % 4 == 3 } else { true };
        }
        i != self.first_index.unwrap_or(0) || self.timesteps.len() == 1
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step: usize,
        sample: &[f32],
        _noise: &mut NoiseGen,
    ) -> Vec<f32> {
        check_step_args("pndm", self.timesteps.len(), step, model_output, sample);
        self.first_index.get_or_insert(step);
        if self.counter < self.prk_len {
            return self.step_prk(model_output, step, sample);
        }
        let mut t = self.timesteps[step] as usize;
        let mut prev = t as isize - self.ratio as isize;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.to_vec());
        } else {
            prev = t as isize;
            t += self.ratio;
        }
        let mut from = sample;
        let taken;
        let e: Vec<f32> = match (self.ets.len(), self.counter) {
            (1, 0) => {
                self.cur_sample = Some(sample.to_vec());
                model_output.to_vec()
            }
            (1, 1) => {
                taken = self.cur_sample.take().unwrap_or_else(|| sample.to_vec());
                from = &taken;
                model_output
                    .iter()
                    .zip(&self.ets[0])
                    .map(|(&a, &b)| (a + b) / 2.0)
                    .collect()
            }
            (2, _) => combine(&self.ets, &[3.0, -1.0], 2.0),
            (3, _) => combine(&self.ets, &[23.0, -16.0, 5.0], 12.0),
            _ => {
                // (1/24) * (55 e1 - 59 e2 + 37 e3 - 9 e4), in diffusers' order of operations.
                let s = combine(&self.ets, &[55.0, -59.0, 37.0, -9.0], 1.0);
                s.into_iter().map(|v| v * (1.0 / 24.0)).collect()
            }
        };
        let out = self.transfer(from, t, prev, &e);
        self.counter += 1;
        out
    }

    fn add_noise(&self, x0: &[f32], noise: &[f32], step: usize) -> Vec<f32> {
        let t = self.timesteps[step] as usize;
        vp_add_noise(self.schedule.alphas_cumprod[t], x0, noise)
    }

    /// PLMS never forms a clean estimate.
    fn pred_original_sample(&self) -> Option<&[f32]> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::testutil::*;

    #[test]
    fn timesteps_follow_diffusers() {
        // PNDMScheduler(SD config, skip_prk_steps=True).set_timesteps(4).timesteps
        let s = PndmScheduler::new(&ScheduleConfig::default(), 4).unwrap();
        assert_eq!(s.timesteps(), [751., 501., 501., 251., 1.]);
        let one = PndmScheduler::new(&ScheduleConfig::default(), 1).unwrap();
        assert_eq!(one.timesteps(), [1.]);
    }

    #[test]
    fn runge_kutta_timesteps_follow_diffusers() {
        // PNDMScheduler(SD config, skip_prk_steps=False).set_timesteps(5).timesteps
        let cfg = ScheduleConfig {
            skip_prk_steps: false,
            ..ScheduleConfig::default()
        };
        let s = PndmScheduler::new(&cfg, 5).unwrap();
        assert_eq!(
            s.timesteps(),
            [801., 701., 701., 601., 601., 501., 501., 401., 401., 301., 301., 201., 201., 1.]
        );
        assert_eq!((0..14).filter(|&i| s.completes_step(i)).count(), 5);
        assert!(PndmScheduler::new(&cfg, 3).is_err());
    }

    #[test]
    fn oracle_converges_to_x0() {
        // Only leading spacing moves by exactly N // n between evaluations; with the others
        // diffusers' stride lands beside the next timestep (mirrored here, tested against
        // diffusers in tests/sampler_parity.rs).
        // PLMS combines raw model outputs and converts v to epsilon with the current sample
        // afterwards (diffusers' order), so only epsilon is exact for the oracle.
        for base in all_configs().into_iter().filter(|c| {
            c.timestep_spacing == TimestepSpacing::Leading && c.prediction == Prediction::Epsilon
        }) {
            for skip_prk_steps in [true, false] {
                // With the final alpha 1 the last transfer lands on x0 itself.
                let cfg = ScheduleConfig {
                    set_alpha_to_one: true,
                    skip_prk_steps,
                    ..base.clone()
                };
                for steps in [10, 30] {
                    let mut s = PndmScheduler::new(&cfg, steps).unwrap();
                    let out = run_from_noise(&mut s, &cfg, 5);
                    assert_close(&out, &x0(), 1e-3, &format!("pndm {cfg:?} {steps}"));
                }
            }
        }
    }
}
