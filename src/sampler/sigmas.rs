//! Sigma-space schedules shared by the Euler, Heun, DPM-Solver++ and UniPC samplers, computed as
//! diffusers computes them (numpy float64 over the float32 training sigmas):
//! - Karras et al. 2022 (arXiv 2206.00364, eq. 5) sigmas, rho = 7
//!   (`_convert_to_karras` in `scheduling_euler_discrete.py` and copies);
//! - the timestep of a sigma by interpolating log-sigma over the training grid (`_sigma_to_t`);
//! - the timestep placement of the multistep solvers (`set_timesteps` of
//!   `scheduling_dpmsolver_multistep.py` and `scheduling_unipc_multistep.py`).
use super::schedule::{np_linspace, trailing_timesteps};
use super::{FinalSigma, NoiseSchedule, ScheduleConfig, TimestepSpacing};

const RHO: f64 = 7.0;

/// `(max^(1/rho) + ramp (min^(1/rho) - max^(1/rho)))^rho` over `ramp = linspace(0, 1, n)`.
pub fn karras(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let (lo, hi) = (sigma_min.powf(1.0 / RHO), sigma_max.powf(1.0 / RHO));
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (hi + r * (lo - hi)).powf(RHO))
        .collect()
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose log-sigma matches, linear
/// in log-sigma between the two grid points around it, clamped to the grid.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // The last grid index at or below log_sigma (log_sigmas ascend with t), kept so that a
    // neighbour above exists; 0 when none is below.
    let below = log_sigmas
        .iter()
        .take_while(|&&l| log_sigma - l as f64 >= 0.0)
        .count();
    let low = below.saturating_sub(1).min(log_sigmas.len() - 2);
    let (l, h) = (log_sigmas[low] as f64, log_sigmas[low + 1] as f64);
    let w = ((l - log_sigma) / (l - h)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// `np.log` of the float32 training sigmas, in float32.
pub fn log_sigmas(schedule: &NoiseSchedule) -> Vec<f32> {
    schedule.sigmas().iter().map(|s| s.ln()).collect()
}

/// The final sigma appended to a schedule: 0, or the smallest training sigma.
pub fn final_sigma(cfg: &ScheduleConfig, schedule: &NoiseSchedule) -> f32 {
    match cfg.final_sigmas_type {
        FinalSigma::Zero => 0.0,
        FinalSigma::SigmaMin => schedule.sigmas()[0],
    }
}

/// The highest timestep a DPM-Solver schedule may start from: `N` minus the number of training
/// timesteps whose log-SNR `lambda = ln sqrt(a) - ln sqrt(1 - a)` lies below
/// `lambda_min_clipped` (diffusers' `searchsorted` over the flipped lambdas); `N` without one.
fn last_timestep(cfg: &ScheduleConfig, schedule: &NoiseSchedule) -> usize {
    let n = cfg.num_train_timesteps;
    let Some(min) = cfg.lambda_min_clipped.filter(|m| m.is_finite()) else {
        return n;
    };
    let below = schedule
        .alphas_cumprod
        .iter()
        .filter(|&&a| {
            let lambda = a.sqrt().ln() - (1.0 - a).sqrt().ln();
            (lambda as f64) < min
        })
        .count();
    n - below
}

/// The multistep solvers' integer timesteps (DPM-Solver++, UniPC), descending:
/// - linspace: `round(linspace(0, last - 1, steps + 1))`, reversed, without its last value;
/// - leading: `arange(0, steps + 1) * (last // (steps + 1))`, reversed, without its last value,
///   plus `steps_offset` (SD, 20 steps: 941, 894, ..., 48);
/// - trailing: DDIM's.
///
/// `last` is N, or less under `lambda_min_clipped` (DPM-Solver only; UniPC has no clipping).
pub fn multistep_timesteps(
    cfg: &ScheduleConfig,
    schedule: &NoiseSchedule,
    steps: usize,
) -> Vec<f32> {
    let last = last_timestep(cfg, schedule);
    match cfg.timestep_spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (last as f64) - 1.0, steps + 1)
            .into_iter()
            .rev()
            .take(steps)
            .map(|t| t.round_ties_even() as f32)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = last / (steps + 1);
            (1..=steps)
                .rev()
                .map(|i| (i * ratio + cfg.steps_offset) as f32)
                .collect()
        }
        // diffusers' DPM-Solver starts trailing at `last`, which is N unless clipped.
        TimestepSpacing::Trailing if last == cfg.num_train_timesteps => {
            trailing_timesteps(last, steps)
        }
        TimestepSpacing::Trailing => {
            let ratio = cfg.num_train_timesteps as f64 / steps as f64;
            super::schedule::np_arange(last as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| (t.round_ties_even() - 1.0) as f32)
                .collect()
        }
    }
}

/// The multistep solvers' `(timesteps, sigmas)`: with Karras sigmas, `steps` of them between
/// the smallest and largest training sigma, their timesteps the rounded `sigma_to_t`;
/// otherwise the training sigmas interpolated at `timesteps`. Then the final sigma, per
/// `final_sigmas_type`; for `sigma_min` diffusers appends the smallest training sigma, except
/// UniPC with Karras sigmas, which appends the last Karras sigma (`karras_final_is_last`).
pub fn multistep_sigmas(
    cfg: &ScheduleConfig,
    schedule: &NoiseSchedule,
    mut timesteps: Vec<f32>,
    karras_final_is_last: bool,
) -> (Vec<f32>, Vec<f32>) {
    let steps = timesteps.len();
    let mut sigmas: Vec<f32> = if cfg.use_karras_sigmas {
        let train = schedule.sigmas();
        let logs = log_sigmas(schedule);
        let k = karras(train[0] as f64, train[train.len() - 1] as f64, steps);
        timesteps = k
            .iter()
            .map(|&s| sigma_to_t(s, &logs).round_ties_even() as f32)
            .collect();
        k.into_iter().map(|s| s as f32).collect()
    } else {
        schedule.interp_sigmas(&timesteps)
    };
    let last = match (
        cfg.final_sigmas_type,
        cfg.use_karras_sigmas && karras_final_is_last,
    ) {
        (FinalSigma::SigmaMin, true) => sigmas[steps - 1],
        _ => final_sigma(cfg, schedule),
    };
    sigmas.push(last);
    (timesteps, sigmas)
}

/// Euler and Heun's timesteps (`scheduling_euler_discrete.py` `set_timesteps`): DDIM's for
/// leading and trailing, and for linspace `np.linspace(0, N - 1, steps, dtype=float32)`
/// reversed, NOT rounded.
pub fn discrete_timesteps(cfg: &ScheduleConfig, steps: usize) -> Vec<f32> {
    match cfg.timestep_spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (cfg.num_train_timesteps - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(|t| t as f32)
            .collect(),
        _ => super::inference_timesteps(cfg, steps),
    }
}

/// Euler and Heun's `(timesteps, sigmas)` before the final sigma: the training sigmas
/// interpolated at [`discrete_timesteps`], or Karras sigmas between the first and last of
/// those, with the unrounded `sigma_to_t` as timesteps.
pub fn discrete_sigmas(
    cfg: &ScheduleConfig,
    schedule: &NoiseSchedule,
    steps: usize,
) -> (Vec<f32>, Vec<f32>) {
    let ts = discrete_timesteps(cfg, steps);
    let interp = schedule.interp_sigmas_f64(&ts);
    if !cfg.use_karras_sigmas {
        return (ts, interp.into_iter().map(|s| s as f32).collect());
    }
    let logs = log_sigmas(schedule);
    let k = karras(interp[interp.len() - 1], interp[0], steps);
    let ts = k.iter().map(|&s| sigma_to_t(s, &logs) as f32).collect();
    (ts, k.into_iter().map(|s| s as f32).collect())
}

/// `(alpha_t, sigma_t)` of the VP process at Karras sigma `sigma` (`_sigma_to_alpha_sigma_t`).
pub fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// Log-SNR `ln alpha - ln sigma` (+infinity at sigma 0).
pub fn lambda(sigma: f32) -> f32 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn karras_spans_the_extremes() {
        let k = karras(0.03, 14.6, 5);
        assert!((k[0] - 14.6).abs() < 1e-12 && (k[4] - 0.03).abs() < 1e-12);
        assert!(k.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn sigma_to_t_inverts_the_grid() {
        let cfg = ScheduleConfig::default();
        let s = NoiseSchedule::new(&cfg).unwrap();
        let logs = log_sigmas(&s);
        let sig = s.sigmas();
        for t in [0usize, 1, 500, 998, 999] {
            let got = sigma_to_t(sig[t] as f64, &logs);
            assert!((got - t as f64).abs() < 1e-3, "t {t}: {got}");
        }
        // Outside the grid it clamps.
        assert_eq!(sigma_to_t(1e-6, &logs), 0.0);
        assert_eq!(sigma_to_t(1e6, &logs), 999.0);
    }

    #[test]
    fn lambda_clipping_lowers_the_first_timestep() {
        let cfg = ScheduleConfig {
            timestep_spacing: TimestepSpacing::Linspace,
            ..ScheduleConfig::default()
        };
        let s = NoiseSchedule::new(&cfg).unwrap();
        assert_eq!(multistep_timesteps(&cfg, &s, 10)[0], 999.0);
        let clipped = ScheduleConfig {
            lambda_min_clipped: Some(-2.0),
            ..cfg
        };
        let ts = multistep_timesteps(&clipped, &s, 10);
        assert!(ts[0] < 999.0, "{ts:?}");
        let lam = |t: usize| {
            let a = s.alphas_cumprod[t];
            a.sqrt().ln() - (1.0 - a).sqrt().ln()
        };
        assert!(
            lam(ts[0] as usize) as f64 >= -2.0 - 0.05,
            "{}",
            lam(ts[0] as usize)
        );
    }
}
