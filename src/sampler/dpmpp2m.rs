//! DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095) and its SDE variant as diffusers'
//! `DPMSolverMultistepScheduler(algorithm_type="dpmsolver++" | "sde-dpmsolver++",
//! solver_order=2, solver_type="midpoint")`, `scheduling_dpmsolver_multistep.py`.
//!
//! - Timesteps and sigmas: [`sigmas::multistep_timesteps`] and [`sigmas::multistep_sigmas`]
//!   (DPM-Solver's spacing rules, which differ from DDIM's; `lambda_min_clipped`; Karras sigmas
//!   with rounded timesteps; the final sigma per `final_sigmas_type`).
//! - With `alpha = 1 / sqrt(sigma^2 + 1)`, `sigma_t = sigma * alpha`, `lambda = ln alpha - ln sigma_t`,
//!   `h = lambda_next - lambda_cur`, and data predictions `D0` (this step) and `D_prev`,
//!   `D1 = (D0 - D_prev) h / h_prev`:
//!   - ODE (`dpmsolver++`): first order `x' = (s'/s) x - a' (e^-h - 1) D0`; second order
//!     (midpoint) adds `- 0.5 a' (e^-h - 1) D1`;
//!   - SDE (`sde-dpmsolver++`): first order
//!     `x' = (s'/s) e^-h x + a' (1 - e^-2h) D0 + s' sqrt(1 - e^-2h) z`; second order adds
//!     `+ 0.5 a' (1 - e^-2h) D1`. `z` is drawn from the seeded [`NoiseGen`] on every step, also
//!     the last, as diffusers' `randn_tensor` is.
//! - Order: the first step has no history, so it is first order, and so is the step after an
//!   img2img late start. The last step is first order when the final sigma is 0 or when
//!   `lower_order_final` holds with fewer than 15 steps (diffusers' `step`). Every other step is
//!   second order.
use super::scheduler::check_step_args;
use super::sigmas::{self, alpha_sigma, lambda};
use super::{NoiseGen, NoiseSchedule, Prediction, SamplerError, ScheduleConfig, Scheduler};

/// Which DPM-Solver++ update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmAlgorithm {
    /// The probability-flow ODE solver (`dpmsolver++`).
    Ode,
    /// The SDE solver (`sde-dpmsolver++`): fresh noise every step.
    Sde,
}

pub struct DpmSolverPP2MScheduler {
    prediction: Prediction,
    algorithm: DpmAlgorithm,
    /// `final_sigmas_type = zero`, `euler_at_final`, or `lower_order_final` below 15 steps: the
    /// last step is first order.
    last_first_order: bool,
    /// `solver_order = 1`: every step is first order.
    first_order_only: bool,
    timesteps: Vec<f32>,
    /// One per timestep plus the final one.
    sigmas: Vec<f32>,
    /// The previous step's index and data prediction, for the second-order update.
    last: Option<(usize, Vec<f32>)>,
}

/// diffusers' DPM-Solver `set_timesteps` timesteps (without Karras sigmas).
#[cfg(test)]
fn dpm_timesteps(cfg: &ScheduleConfig, steps: usize) -> Vec<f32> {
    match NoiseSchedule::new(cfg) {
        Ok(s) => sigmas::multistep_timesteps(cfg, &s, steps),
        Err(_) => Vec::new(),
    }
}

impl DpmSolverPP2MScheduler {
    pub fn new(cfg: &ScheduleConfig, steps: usize) -> Result<Self, SamplerError> {
        Self::with_algorithm(cfg, steps, DpmAlgorithm::Ode)
    }

    pub fn with_algorithm(
        cfg: &ScheduleConfig,
        steps: usize,
        algorithm: DpmAlgorithm,
    ) -> Result<Self, SamplerError> {
        let schedule = NoiseSchedule::new(cfg)?;
        let ts = sigmas::multistep_timesteps(cfg, &schedule, steps);
        let (timesteps, sigmas) = sigmas::multistep_sigmas(cfg, &schedule, ts, false);
        super::schedule::check_timesteps_in_range(&timesteps, cfg)?;
        if !cfg.use_karras_sigmas {
            // Karras timesteps are rounded model inputs and may repeat at many steps, as in
            // diffusers; the sigmas still decrease strictly.
            super::schedule::check_timesteps(&timesteps, cfg)?;
        }
        if !(1..=2).contains(&cfg.solver_order) {
            return Err(SamplerError::InvalidConfig(format!(
                "DPM-Solver++ solver_order {} is not implemented (1 or 2)",
                cfg.solver_order
            )));
        }
        let last_first_order = cfg.final_sigmas_type == super::FinalSigma::Zero
            || cfg.euler_at_final
            || (cfg.lower_order_final && steps < 15);
        Ok(Self {
            prediction: cfg.prediction,
            algorithm,
            last_first_order,
            first_order_only: cfg.solver_order == 1,
            timesteps,
            sigmas,
            last: None,
        })
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for DpmSolverPP2MScheduler {
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
        check_step_args("dpmpp_2m", self.timesteps.len(), step, model_output, sample);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[step]);
        // DPM-Solver++ integrates the data prediction, so convert the model output to x0.
        let d0: Vec<f32> = match self.prediction {
            Prediction::Epsilon => model_output
                .iter()
                .zip(sample)
                .map(|(&e, &x)| (x - sigma_s0 * e) / alpha_s0)
                .collect(),
            Prediction::VPrediction => model_output
                .iter()
                .zip(sample)
                .map(|(&v, &x)| alpha_s0 * x - sigma_s0 * v)
                .collect(),
        };
        let z = match self.algorithm {
            DpmAlgorithm::Sde => noise.sample(sample.len()),
            DpmAlgorithm::Ode => Vec::new(),
        };
        let last_step = step + 1 == self.timesteps.len();
        let history = match &self.last {
            Some((prev_step, d_prev)) if *prev_step + 1 == step && step > 0 => Some(d_prev),
            _ => None,
        }
        .filter(|_| !(last_step && self.last_first_order) && !self.first_order_only);
        let prev = if self.sigmas[step + 1] == 0.0 {
            // First order to sigma 0: sigma_t = 0 and e^-h = 0, so x' = D0 exactly for both
            // algorithms. Written out to avoid evaluating 0 * ln(0).
            d0.clone()
        } else {
            let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step + 1]);
            let lambda_s0 = lambda(self.sigmas[step]);
            let h = lambda(self.sigmas[step + 1]) - lambda_s0;
            // x' = c_x x + c_d (D0 + 0.5 D1) + c_z z
            let (c_x, c_d, c_z) = match self.algorithm {
                DpmAlgorithm::Ode => (sigma_t / sigma_s0, -(alpha_t * ((-h).exp() - 1.0)), 0.0),
                DpmAlgorithm::Sde => (
                    sigma_t / sigma_s0 * (-h).exp(),
                    alpha_t * (1.0 - (-2.0 * h).exp()),
                    sigma_t * (1.0 - (-2.0 * h).exp()).sqrt(),
                ),
            };
            let d1_scale = history.map(|_| {
                let r0 = (lambda_s0 - lambda(self.sigmas[step - 1])) / h;
                1.0 / r0
            });
            (0..sample.len())
                .map(|k| {
                    let (x, m0) = (sample[k], d0[k]);
                    let mut v = c_x * x + c_d * m0;
                    if let (Some(d_prev), Some(s)) = (history, d1_scale) {
                        v += 0.5 * c_d * (s * (m0 - d_prev[k]));
                    }
                    if let Some(&zk) = z.get(k) {
                        v += c_z * zk;
                    }
                    v
                })
                .collect()
        };
        self.last = Some((step, d0));
        prev
    }

    /// `alpha_t x0 + sigma_t noise` at the step's sigma (diffusers' DPM-Solver `add_noise`).
    fn add_noise(&self, x0: &[f32], noise: &[f32], step: usize) -> Vec<f32> {
        assert_eq!(
            x0.len(),
            noise.len(),
            "add_noise: x0 and noise lengths differ"
        );
        let (alpha, sigma) = alpha_sigma(self.sigmas[step]);
        x0.iter()
            .zip(noise)
            .map(|(&x, &n)| alpha * x + sigma * n)
            .collect()
    }

    fn pred_original_sample(&self) -> Option<&[f32]> {
        self.last.as_ref().map(|(_, d)| d.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::testutil::*;
    use crate::sampler::TimestepSpacing;

    #[test]
    fn timesteps_follow_diffusers_dpm_rules() {
        let sd = ScheduleConfig::default();
        let want: Vec<f32> = (1..=20).rev().map(|i| (i * 47 + 1) as f32).collect();
        let ts = dpm_timesteps(&sd, 20);
        assert_eq!(ts, want);
        assert_eq!((ts[0], ts[19]), (941.0, 48.0));
        let lin = ScheduleConfig {
            timestep_spacing: TimestepSpacing::Linspace,
            ..sd.clone()
        };
        // np.linspace(0, 999, 11).round()[::-1][:-1]
        assert_eq!(
            dpm_timesteps(&lin, 10),
            [999., 899., 799., 699., 599., 500., 400., 300., 200., 100.]
        );
        let tr = ScheduleConfig {
            timestep_spacing: TimestepSpacing::Trailing,
            ..sd
        };
        assert_eq!(dpm_timesteps(&tr, 4), [999., 749., 499., 249.]);
    }

    #[test]
    fn oracle_converges_to_x0() {
        for cfg in all_configs() {
            for steps in [3, 20] {
                let mut s = DpmSolverPP2MScheduler::new(&cfg, steps).unwrap();
                let out = run_from_noise(&mut s, &cfg, 8);
                let (p, sp) = (cfg.prediction, cfg.timestep_spacing);
                assert_close(&out, &x0(), 1e-3, &format!("dpmpp_2m {p:?} {sp:?} {steps}"));
            }
        }
    }

    /// With an exact data prediction D0 = D_prev = x0, D1 = 0 and each update is the exact
    /// DPM-Solver++ solution for constant data, so the VP relation x = alpha x0 + sigma eps keeps
    /// eps fixed step after step.
    #[test]
    fn oracle_keeps_the_noise_direction() {
        let cfg = ScheduleConfig::default();
        let mut s = DpmSolverPP2MScheduler::new(&cfg, 10).unwrap();
        let eps = NoiseGen::new(2).sample(x0().len());
        let mut x = s.add_noise(&x0(), &eps, 0);
        let mut g = NoiseGen::new(0);
        for i in 0..s.num_steps() - 1 {
            let out = oracle(cfg.prediction, &x, &x0(), alpha_at(&cfg, s.timesteps()[i]));
            x = s.step(&out, i, &x, &mut g);
            let want = s.add_noise(&x0(), &eps, i + 1);
            assert_close(&x, &want, 1e-4, &format!("step {i}"));
        }
    }

    #[test]
    fn second_order_needs_the_previous_step() {
        // The same call at step 3 gives different results with and without step 2's history.
        let cfg = ScheduleConfig::default();
        let mut g = NoiseGen::new(0);
        let mut fresh = DpmSolverPP2MScheduler::new(&cfg, 10).unwrap();
        let a = fresh.step(&[0.3], 3, &[0.5], &mut g);
        let mut warm = DpmSolverPP2MScheduler::new(&cfg, 10).unwrap();
        warm.step(&[-0.2], 2, &[0.9], &mut g);
        let b = warm.step(&[0.3], 3, &[0.5], &mut g);
        assert_ne!(a, b);
    }

    /// Max error at the last nonzero sigma against the exact probability-flow ODE solution for
    /// Gaussian data x0 ~ N(mu, s2), whose ideal denoiser is D(x, sigma) = mu + s2 / (s2 +
    /// sigma^2) (x - mu) and whose ODE solution in sigma space is
    /// x(sigma) - mu = (x(sigma_0) - mu) sqrt(s2 + sigma^2) / sqrt(s2 + sigma_0^2).
    /// `history = false` drops the previous step, forcing first-order (DDIM-like) updates.
    fn gaussian_ode_error(steps: usize, history: bool) -> f64 {
        let cfg = ScheduleConfig {
            timestep_spacing: TimestepSpacing::Trailing,
            ..ScheduleConfig::default()
        };
        let (mu, s2) = (0.5f64, 0.25f64);
        let mut sch = DpmSolverPP2MScheduler::new(&cfg, steps).unwrap();
        let sig: Vec<f64> = sch.sigmas().iter().map(|&v| v as f64).collect();
        let alpha = |s: f64| 1.0 / (1.0 + s * s).sqrt();
        let start: Vec<f64> = [-1.5, -0.3, 0.4, 1.7]
            .iter()
            .map(|e| mu + e * sig[0])
            .collect();
        let mut x: Vec<f32> = start.iter().map(|v| (v * alpha(sig[0])) as f32).collect();
        let mut g = NoiseGen::new(0);
        for i in 0..steps - 1 {
            if !history {
                sch.last = None;
            }
            let eps: Vec<f32> = x
                .iter()
                .map(|&v| {
                    let xs = v as f64 / alpha(sig[i]);
                    let d = mu + s2 / (s2 + sig[i] * sig[i]) * (xs - mu);
                    ((xs - d) / sig[i]) as f32
                })
                .collect();
            x = sch.step(&eps, i, &x, &mut g);
        }
        let end = sig[steps - 1];
        let scale = ((s2 + end * end) / (s2 + sig[0] * sig[0])).sqrt();
        x.iter()
            .zip(&start)
            .map(|(&v, &x0)| (v as f64 - (mu + (x0 - mu) * scale) * alpha(end)).abs())
            .fold(0.0, f64::max)
    }

    /// The 2M update must beat first order clearly (about 10x here; a wrong sign or scale on D1
    /// makes it worse than first order).
    #[test]
    fn multistep_update_beats_first_order_on_gaussian_data() {
        for steps in [10, 20] {
            let (e1, e2) = (
                gaussian_ode_error(steps, false),
                gaussian_ode_error(steps, true),
            );
            assert!(
                e2 * 5.0 < e1,
                "{steps} steps: first order {e1:e}, 2M {e2:e}"
            );
            assert!(e2 < 1e-2, "{steps} steps: 2M error {e2:e}");
        }
    }
}
