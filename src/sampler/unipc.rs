//! UniPC (Zhao et al. 2023, arXiv 2302.04867), the unified predictor-corrector, as diffusers'
//! `UniPCMultistepScheduler(solver_order=2, solver_type="bh2", predict_x0=True)`
//! (`scheduling_unipc_multistep.py`: `multistep_uni_p_bh_update`, `multistep_uni_c_bh_update`,
//! `step`).
//!
//! Timesteps and sigmas are the multistep solvers' ([`sigmas::multistep_timesteps`] without
//! lambda clipping, [`sigmas::multistep_sigmas`]). With data predictions `m` (the model output
//! turned into x0, as DPM-Solver++), `lambda = ln alpha - ln sigma`, `h = lambda' - lambda`,
//! `hh = -h`, `B(h) = e^hh - 1` (bh2) and `phi1 = e^hh - 1`:
//! - every step but the first first corrects the sample it was given (UniC, using this step's
//!   model output, at the order of the previous predictor): with `D1_t = m_t - m_prev`,
//!   order 1: `x_c = (s_t/s_0) x_prev - a_t phi1 m_prev - a_t B(h) 0.5 D1_t`;
//!   order 2: `rho = R^-1 b` over `r1 = (lambda_-1 - lambda_0) / h`, and
//!   `x_c = ... - a_t B(h) (rho_0 (m_-1 - m_prev) / r1 + rho_1 D1_t)`;
//! - then predicts (UniP) to the next sigma: order 1 is DPM-Solver++'s first-order step,
//!   order 2 adds `- a_t B(h) 0.5 (m_-1 - m_0) / r1`;
//! - order: `min(2, steps left)` with `lower_order_final` (else 2), and never more than the
//!   number of outputs seen (warm-up).
//!
//! Scalar arithmetic is f32 as in torch, except the 2x2 solve, done in f64.
use super::scheduler::check_step_args;
use super::sigmas::{self, alpha_sigma, lambda};
use super::{NoiseGen, NoiseSchedule, Prediction, SamplerError, ScheduleConfig, Scheduler};

pub struct UniPcScheduler {
    prediction: Prediction,
    lower_order_final: bool,
    solver_order: usize,
    /// Steps after which the corrector is skipped.
    disable_corrector: Vec<usize>,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    /// Data predictions of the last two steps, newest last, with their step index.
    outputs: Vec<(usize, Vec<f32>)>,
    /// The sample the last predictor started from, and that predictor's order.
    last: Option<(Vec<f32>, usize)>,
}

impl UniPcScheduler {
    pub fn new(cfg: &ScheduleConfig, steps: usize) -> Result<Self, SamplerError> {
        let schedule = NoiseSchedule::new(cfg)?;
        if !(1..=2).contains(&cfg.solver_order) {
            return Err(SamplerError::InvalidConfig(format!(
                "UniPC solver_order {} is not implemented (1 or 2)",
                cfg.solver_order
            )));
        }
        // UniPC has no lambda_min_clipped.
        let plain = ScheduleConfig {
            lambda_min_clipped: None,
            ..cfg.clone()
        };
        let ts = sigmas::multistep_timesteps(&plain, &schedule, steps);
        let (timesteps, sigmas) = sigmas::multistep_sigmas(cfg, &schedule, ts, true);
        super::schedule::check_timesteps_in_range(&timesteps, cfg)?;
        if !cfg.use_karras_sigmas {
            super::schedule::check_timesteps(&timesteps, cfg)?;
        }
        Ok(Self {
            prediction: cfg.prediction,
            lower_order_final: cfg.lower_order_final,
            solver_order: cfg.solver_order,
            disable_corrector: cfg.disable_corrector.clone(),
            timesteps,
            sigmas,
            outputs: Vec::new(),
            last: None,
        })
    }

    fn data_prediction(&self, out: &[f32], x: &[f32], step: usize) -> Vec<f32> {
        let (a, s) = alpha_sigma(self.sigmas[step]);
        match self.prediction {
            Prediction::Epsilon => out.iter().zip(x).map(|(&e, &x)| (x - s * e) / a).collect(),
            Prediction::VPrediction => out.iter().zip(x).map(|(&v, &x)| a * x - s * v).collect(),
        }
    }
}

/// `(hh, phi1 = e^hh - 1, B(h))` for bh2, and the b vector of orders 1 and 2.
fn coefficients(h: f32) -> (f32, f32, f32, [f32; 2]) {
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0f32;
    let mut b = [0.0f32; 2];
    for (i, bi) in b.iter_mut().enumerate() {
        *bi = h_phi_k * factorial / b_h;
        factorial *= (i + 2) as f32;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    (hh, h_phi_1, b_h, b)
}

impl Scheduler for UniPcScheduler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step: usize,
        sample: &[f32],
        _noise: &mut NoiseGen,
    ) -> Vec<f32> {
        check_step_args("unipc", self.timesteps.len(), step, model_output, sample);
        let m_t = self.data_prediction(model_output, sample, step);
        // History only counts when it is the previous step's (an img2img start has none).
        if self.outputs.last().is_some_and(|(i, _)| i + 1 != step) {
            self.outputs.clear();
            self.last = None;
        }
        // Corrector (UniC) of the sample this step was handed.
        let mut x = sample.to_vec();
        let corrector = step > 0 && !self.disable_corrector.contains(&(step - 1));
        if let (true, Some((x_prev, order)), Some((_, m0))) =
            (corrector, self.last.as_ref(), self.outputs.last())
        {
            let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step]);
            let (_, sigma_s0) = alpha_sigma(self.sigmas[step - 1]);
            let lambda_s0 = lambda(self.sigmas[step - 1]);
            let h = lambda(self.sigmas[step]) - lambda_s0;
            let (_, h_phi_1, b_h, b) = coefficients(h);
            // (rho for the older output, rho for D1_t)
            let (rho_old, rho_t, older) = if *order == 1 || self.outputs.len() < 2 {
                (0.0f32, 0.5f32, None)
            } else {
                let (_, m_old) = &self.outputs[self.outputs.len() - 2];
                let r1 = (lambda(self.sigmas[step - 2]) - lambda_s0) / h;
                // Solve [[1, 1], [r1, 1]] rho = b.
                let (r, b0, b1) = (r1 as f64, b[0] as f64, b[1] as f64);
                let det = 1.0 - r;
                let rho0 = (b0 - b1) / det;
                let rho1 = (b1 - r * b0) / det;
                (rho0 as f32, rho1 as f32, Some((m_old, r1)))
            };
            for k in 0..x.len() {
                let base = sigma_t / sigma_s0 * x_prev[k] - alpha_t * h_phi_1 * m0[k];
                let mut corr = 0.0f32;
                if let Some((m_old, r1)) = older {
                    corr = rho_old * ((m_old[k] - m0[k]) / r1);
                }
                let d1_t = m_t[k] - m0[k];
                x[k] = base - alpha_t * b_h * (corr + rho_t * d1_t);
            }
        }
        self.outputs.push((step, m_t));
        if self.outputs.len() > 2 {
            self.outputs.remove(0);
        }
        let left = self.timesteps.len() - step;
        let this_order = if self.lower_order_final {
            left.min(self.solver_order)
        } else {
            self.solver_order
        };
        let order = this_order.min(self.outputs.len());
        // Predictor (UniP) from the corrected sample.
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step + 1]);
        let (_, sigma_s0) = alpha_sigma(self.sigmas[step]);
        let lambda_s0 = lambda(self.sigmas[step]);
        let h = lambda(self.sigmas[step + 1]) - lambda_s0;
        let (_, h_phi_1, b_h, _) = coefficients(h);
        let m0 = &self.outputs[self.outputs.len() - 1].1;
        let older = (order == 2).then(|| {
            let r1 = (lambda(self.sigmas[step - 1]) - lambda_s0) / h;
            (&self.outputs[0].1, r1)
        });
        let prev: Vec<f32> = (0..x.len())
            .map(|k| {
                let base = sigma_t / sigma_s0 * x[k] - alpha_t * h_phi_1 * m0[k];
                match older {
                    Some((m_old, r1)) => {
                        let d1 = (m_old[k] - m0[k]) / r1;
                        base - alpha_t * b_h * (0.5 * d1)
                    }
                    None => base,
                }
            })
            .collect();
        self.last = Some((x, order));
        prev
    }

    /// `alpha_t x0 + sigma_t noise` at the step's sigma (diffusers' UniPC `add_noise`).
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
        self.outputs.last().map(|(_, m)| m.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::testutil::*;

    #[test]
    fn oracle_converges_to_x0() {
        for base in all_configs() {
            for karras in [false, true] {
                let cfg = ScheduleConfig {
                    use_karras_sigmas: karras,
                    ..base.clone()
                };
                for steps in [3, 20] {
                    let mut s = UniPcScheduler::new(&cfg, steps).unwrap();
                    let out = run_from_noise(&mut s, &cfg, 8);
                    assert_close(&out, &x0(), 1e-3, &format!("unipc {cfg:?} {steps}"));
                }
            }
        }
    }
}
