//! Noise schedules and inference timesteps, computed the way diffusers computes them.
//!
//! diffusers builds `betas` and `alphas_cumprod` as torch float32 tensors (e.g.
//! `src/diffusers/schedulers/scheduling_ddim.py`, `__init__`):
//! `betas = torch.linspace(beta_start**0.5, beta_end**0.5, N, dtype=torch.float32) ** 2` for
//! `scaled_linear`, `torch.linspace(beta_start, beta_end, N, dtype=torch.float32)` for `linear`,
//! then `alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)`. We reproduce that arithmetic in f32
//! (see [`NoiseSchedule::new`]) so a model trained against diffusers sees the same noise levels.
//! Inference timesteps follow `set_timesteps`, which is numpy float64 code; the helpers below
//! emulate the numpy functions it calls, including their rounding.
use serde::{Deserialize, Serialize};

use super::SamplerError;

/// How betas grow over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `betas = linspace(beta_start, beta_end, N)` (DDPM).
    Linear,
    /// `betas = linspace(sqrt(beta_start), sqrt(beta_end), N)^2` (LDM / Stable Diffusion).
    ScaledLinear,
}

/// How inference timesteps are placed over the training range (Table 2 of
/// "Common Diffusion Noise Schedules and Sample Steps are Flawed", arXiv 2305.08891).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// What the denoiser predicts. Serialized as diffusers' `prediction_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The added noise `eps`.
    Epsilon,
    /// `v = sqrt(a) * eps - sqrt(1 - a) * x0` (Salimans & Ho, progressive distillation).
    VPrediction,
}

/// The last sigma of a sigma-space schedule (diffusers' `final_sigmas_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigma {
    /// The chain ends at sigma 0: the last step returns the model's clean estimate.
    #[default]
    Zero,
    /// The chain ends at the smallest training sigma, `sqrt((1 - a_0) / a_0)`.
    SigmaMin,
}

/// Training-time noise schedule plus how inference steps are laid out.
///
/// The serde names are diffusers' `scheduler_config.json` keys, so such a file deserializes
/// directly (its other keys are ignored; `prediction_type` is accepted for `prediction`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "snake_case")]
pub struct ScheduleConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    #[serde(alias = "prediction_type")]
    pub prediction: Prediction,
    pub steps_offset: usize,
    pub timestep_spacing: TimestepSpacing,
    /// Karras et al. (2022) sigmas (rho = 7) between the schedule's extremes instead of the
    /// training sigmas at the spaced timesteps (Euler, Heun, DPM-Solver++, UniPC).
    pub use_karras_sigmas: bool,
    /// Where sigma-space samplers end (Euler, DPM-Solver++, UniPC).
    pub final_sigmas_type: FinalSigma,
    /// Multistep solvers (DPM-Solver++, UniPC) drop to first order at the end: always for
    /// UniPC, below 15 steps for DPM-Solver++ (diffusers' rule).
    pub lower_order_final: bool,
    /// DPM-Solver's `lambda_min_clipped`: timesteps whose log-SNR is below it are not sampled.
    /// `None` is diffusers' default of -infinity (no clipping).
    pub lambda_min_clipped: Option<f64>,
    /// PNDM's final step goes to alpha 1 (pure data) instead of `alphas_cumprod[0]`.
    pub set_alpha_to_one: bool,
    /// PNDM without its Runge-Kutta warm-up (PLMS from the first step), as SD ships it.
    pub skip_prk_steps: bool,
    /// Order of the multistep solvers (DPM-Solver++, UniPC): 1 or 2.
    pub solver_order: usize,
    /// DPM-Solver++ takes a first-order (Euler) last step whatever the step count.
    pub euler_at_final: bool,
    /// UniPC skips its corrector after these steps (diffusers' `disable_corrector`).
    pub disable_corrector: Vec<usize>,
}

impl Default for ScheduleConfig {
    /// Stable Diffusion's `scheduler_config.json`: scaled_linear 0.00085..0.012 over 1000 steps,
    /// epsilon, `steps_offset: 1`, and "leading" spacing (the default when SD's config was written).
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            prediction: Prediction::Epsilon,
            steps_offset: 1,
            timestep_spacing: TimestepSpacing::Leading,
            use_karras_sigmas: false,
            final_sigmas_type: FinalSigma::Zero,
            lower_order_final: true,
            lambda_min_clipped: None,
            set_alpha_to_one: false,
            skip_prk_steps: true,
            solver_order: 2,
            euler_at_final: false,
            disable_corrector: Vec::new(),
        }
    }
}

/// Per-training-timestep betas and cumulative alphas, in f32 like diffusers.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    pub betas: Vec<f32>,
    pub alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    /// Builds the schedule as torch does on the CPU:
    /// - `torch.linspace` in float32: both ends cast to f32, `step = (end - start) / (n - 1)` in
    ///   f32, the first half as `start + step * i` and the second half as
    ///   `end - step * (n - 1 - i)` (aten's `linspace_kernel`; its vectorized chunks can differ by
    ///   an ulp of a beta, which moves `alphas_cumprod` by far less than 1e-6);
    /// - `** 2` as an f32 multiply, `1 - betas` in f32;
    /// - `torch.cumprod` on the CPU accumulates float in double (`acc_type<float>` is `double`)
    ///   and rounds each output to f32.
    pub fn new(cfg: &ScheduleConfig) -> Result<Self, SamplerError> {
        let n = cfg.num_train_timesteps;
        if n < 2 {
            return Err(SamplerError::InvalidConfig(format!(
                "num_train_timesteps must be at least 2, got {n}"
            )));
        }
        let ok = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
        if !ok(cfg.beta_start) || !ok(cfg.beta_end) || cfg.beta_start > cfg.beta_end {
            return Err(SamplerError::InvalidConfig(format!(
                "betas must satisfy 0 < beta_start <= beta_end < 1, got {} and {}",
                cfg.beta_start, cfg.beta_end
            )));
        }
        let betas: Vec<f32> = match cfg.beta_schedule {
            BetaSchedule::Linear => {
                torch_linspace_f32(cfg.beta_start as f32, cfg.beta_end as f32, n)
            }
            BetaSchedule::ScaledLinear => {
                // Python computes `beta_start**0.5` in f64; torch then casts it to f32.
                let (s, e) = (cfg.beta_start.sqrt() as f32, cfg.beta_end.sqrt() as f32);
                torch_linspace_f32(s, e, n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
        };
        let mut acc = 1.0f64;
        let alphas_cumprod = betas
            .iter()
            .map(|&b| {
                acc *= (1.0f32 - b) as f64;
                acc as f32
            })
            .collect();
        Ok(Self {
            betas,
            alphas_cumprod,
        })
    }

    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// Karras-style noise levels per training timestep, `((1 - a) / a) ** 0.5` in f32 as
    /// diffusers' Euler and DPM-Solver schedulers compute them on the torch tensor.
    pub fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|&a| ((1.0f32 - a) / a).sqrt())
            .collect()
    }

    /// `np.interp(timesteps, arange(N), sigmas)` in f64, cast to f32 (diffusers' Euler and
    /// DPM-Solver `set_timesteps`). Fractional timesteps interpolate linearly.
    pub fn interp_sigmas(&self, timesteps: &[f32]) -> Vec<f32> {
        self.interp_sigmas_f64(timesteps)
            .into_iter()
            .map(|s| s as f32)
            .collect()
    }

    /// [`Self::interp_sigmas`] before the cast to f32 (Karras sigmas start from these).
    pub fn interp_sigmas_f64(&self, timesteps: &[f32]) -> Vec<f64> {
        let fp: Vec<f64> = self.sigmas().into_iter().map(f64::from).collect();
        timesteps
            .iter()
            .map(|&t| np_interp_unit_grid(t as f64, &fp))
            .collect()
    }
}

/// Inference timesteps (descending, integer-valued) for `steps` steps, as diffusers' DDPM and
/// DDIM `set_timesteps` compute them; Euler uses the same except for unrounded `linspace`.
/// - leading: `arange(0, steps) * (N // steps)`, reversed, plus `steps_offset`
///   (SD, 50 steps: 981, 961, ..., 1);
/// - trailing: `round(arange(N, 0, -N / steps)) - 1` (50 steps: 999, 979, ..., 19);
/// - linspace: `round(linspace(0, N - 1, steps))`, reversed (rounding half to even, as numpy).
///
/// numpy's float `arange` sometimes yields one element too many (for N = 1000: steps = 61, 103,
/// ...), the extra one being `round(~1e-13) - 1 = -1`; diffusers would then use timestep -1. We
/// keep the first `steps` values instead.
pub fn inference_timesteps(cfg: &ScheduleConfig, steps: usize) -> Vec<f32> {
    let n = cfg.num_train_timesteps;
    if steps == 0 {
        return Vec::new();
    }
    match cfg.timestep_spacing {
        TimestepSpacing::Leading => {
            let ratio = n / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio + cfg.steps_offset) as f32)
                .collect()
        }
        TimestepSpacing::Trailing => trailing_timesteps(n, steps),
        TimestepSpacing::Linspace => np_linspace(0.0, (n - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(|t| t.round_ties_even() as f32)
            .collect(),
    }
}

/// `round(arange(N, 0, -N / steps)) - 1`, cut to `steps` values (see [`inference_timesteps`]).
pub(crate) fn trailing_timesteps(n: usize, steps: usize) -> Vec<f32> {
    let mut ts: Vec<f32> = np_arange(n as f64, 0.0, -(n as f64) / steps as f64)
        .into_iter()
        .map(|t| (t.round_ties_even() - 1.0) as f32)
        .collect();
    ts.truncate(steps);
    ts
}

/// Rejects timesteps the model was never trained on, or repeated ones (which would make a
/// sampler step by zero).
pub(crate) fn check_timesteps(ts: &[f32], cfg: &ScheduleConfig) -> Result<(), SamplerError> {
    check_timesteps_in_range(ts, cfg)?;
    if ts.windows(2).any(|w| w[1] >= w[0]) {
        return Err(SamplerError::InvalidTimesteps(format!(
            "{} steps with {:?} spacing repeat a timestep; use fewer steps",
            ts.len(),
            cfg.timestep_spacing
        )));
    }
    Ok(())
}

/// Rejects timesteps the model was never trained on.
pub(crate) fn check_timesteps_in_range(
    ts: &[f32],
    cfg: &ScheduleConfig,
) -> Result<(), SamplerError> {
    let last = (cfg.num_train_timesteps - 1) as f32;
    if let Some(&t) = ts.iter().find(|&&t| !(0.0..=last).contains(&t)) {
        return Err(SamplerError::InvalidTimesteps(format!(
            "timestep {t} is outside the trained range 0..={last} \
             ({:?} spacing, steps_offset {}, {} steps); use fewer steps or another spacing",
            cfg.timestep_spacing,
            cfg.steps_offset,
            ts.len()
        )));
    }
    Ok(())
}

/// aten's CPU `linspace` for float32, scalar path (see [`NoiseSchedule::new`]).
fn torch_linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// `numpy.linspace(start, stop, num)` in float64: `i * step + start`, last element set to `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// `numpy.arange(start, stop, step)` for floats: length `ceil((stop - start) / step)`, element 1
/// is `start + step`, and element i is `start + i * delta` with `delta = element1 - start`
/// (numpy's `DOUBLE_fill`).
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len < 1.0 {
        return Vec::new();
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| {
            if i == 0 {
                start
            } else {
                start + i as f64 * delta
            }
        })
        .collect()
}

/// `np.interp(x, arange(len(fp)), fp)`: clamps outside the grid, exact on grid points.
fn np_interp_unit_grid(x: f64, fp: &[f64]) -> f64 {
    let last = fp.len() - 1;
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return fp[0];
    }
    if x >= last as f64 {
        return fp[last];
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return fp[j];
    }
    let slope = fp[j + 1] - fp[j];
    slope * (x - j as f64) + fp[j]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd() -> ScheduleConfig {
        ScheduleConfig::default()
    }

    fn linear() -> ScheduleConfig {
        ScheduleConfig {
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            ..ScheduleConfig::default()
        }
    }

    // Expected values: diffusers' formula (`scheduling_ddim.py` / `scheduling_ddpm.py` __init__:
    // `torch.linspace(beta_start**0.5, beta_end**0.5, 1000, dtype=torch.float32) ** 2`, then
    // `torch.cumprod(1.0 - betas, dim=0)`), evaluated in float32 with numpy 2.4:
    //   betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float32)**2
    //   np.cumprod(1 - betas, dtype=np.float32)[[0, 499, 999]]
    // and for linear `betas = np.linspace(0.0001, 0.02, 1000, dtype=np.float32)`. numpy's f32
    // cumprod and torch's double-accumulated one differ by at most 3e-7 here.
    #[test]
    fn scaled_linear_matches_diffusers() {
        let s = NoiseSchedule::new(&sd()).unwrap();
        assert_eq!(s.len(), 1000);
        for (t, want) in [
            (0, 0.9991499781608582),
            (499, 0.2776695191860199),
            (999, 0.004660089500248432),
        ] {
            let got = s.alphas_cumprod[t] as f64;
            assert!((got - want).abs() < 1e-6, "t={t}: {got} vs {want}");
        }
        assert!((s.betas[0] as f64 - 0.0008499999530613422).abs() < 1e-9);
        assert!((s.betas[999] as f64 - 0.011999999172985554).abs() < 1e-9);
    }

    #[test]
    fn linear_matches_diffusers() {
        let s = NoiseSchedule::new(&linear()).unwrap();
        for (t, want) in [
            (0, 0.9998999834060669),
            (499, 0.07858724147081375),
            (999, 4.035832535009831e-05),
        ] {
            let got = s.alphas_cumprod[t] as f64;
            assert!((got - want).abs() < 1e-6, "t={t}: {got} vs {want}");
        }
    }

    #[test]
    fn invalid_config_is_rejected() {
        let bad = ScheduleConfig {
            beta_start: 0.5,
            beta_end: 0.1,
            ..sd()
        };
        assert!(matches!(
            NoiseSchedule::new(&bad),
            Err(SamplerError::InvalidConfig(_))
        ));
        let bad = ScheduleConfig {
            num_train_timesteps: 1,
            ..sd()
        };
        assert!(NoiseSchedule::new(&bad).is_err());
    }

    #[test]
    fn leading_50_matches_diffusers_ddim_sd() {
        // diffusers DDIMScheduler(SD config).set_timesteps(50).timesteps == [981, 961, ..., 1]
        let ts = inference_timesteps(&sd(), 50);
        let want: Vec<f32> = (0..50).rev().map(|i| (i * 20 + 1) as f32).collect();
        assert_eq!(ts, want);
        assert_eq!(ts[0], 981.0);
        assert_eq!(*ts.last().unwrap(), 1.0);
    }

    #[test]
    fn trailing_matches_numpy() {
        let cfg = ScheduleConfig {
            timestep_spacing: TimestepSpacing::Trailing,
            ..sd()
        };
        let want: Vec<f32> = (0..50).rev().map(|i| (i * 20 + 19) as f32).collect();
        assert_eq!(inference_timesteps(&cfg, 50), want);
        // np.round(np.arange(1000, 0, -1000/16)) - 1: 937.5 and 812.5 round half to even.
        let want16 = [
            999., 937., 874., 811., 749., 687., 624., 561., 499., 437., 374., 311., 249., 187.,
            124., 61.,
        ];
        assert_eq!(inference_timesteps(&cfg, 16), want16);
        // np.arange(1000, 0, -1000/3) -> [1000, 666.67, 333.33] -> [999, 666, 332]
        assert_eq!(inference_timesteps(&cfg, 3), [999., 666., 332.]);
        // numpy yields 62 values for 61 steps (the last is -1); we keep 61.
        let ts = inference_timesteps(&cfg, 61);
        assert_eq!(ts.len(), 61);
        assert!(check_timesteps(&ts, &cfg).is_ok());
    }

    #[test]
    fn linspace_matches_numpy() {
        let cfg = ScheduleConfig {
            timestep_spacing: TimestepSpacing::Linspace,
            ..sd()
        };
        // np.linspace(0, 999, 10).round()[::-1]: 999, 888, 777, 666, 555, 444, 333, 222, 111, 0
        let want: Vec<f32> = (0..10).rev().map(|i| (i * 111) as f32).collect();
        assert_eq!(inference_timesteps(&cfg, 10), want);
        // np.linspace(0, 999, 5) = [0, 249.75, 499.5, 749.25, 999] -> round -> 250, 500 (even), 749
        assert_eq!(inference_timesteps(&cfg, 5), [999., 749., 500., 250., 0.]);
    }

    #[test]
    fn out_of_range_timesteps_are_rejected() {
        // Leading with offset 1 and 1000 steps would ask for timestep 1000.
        let ts = inference_timesteps(&sd(), 1000);
        assert!(matches!(
            check_timesteps(&ts, &sd()),
            Err(SamplerError::InvalidTimesteps(_))
        ));
    }

    #[test]
    fn interp_is_exact_on_grid_and_linear_between() {
        let s = NoiseSchedule::new(&sd()).unwrap();
        let sig = s.sigmas();
        let got = s.interp_sigmas(&[0.0, 500.0, 999.0, 10.5]);
        assert_eq!(&got[..3], &[sig[0], sig[500], sig[999]]);
        let mid = (sig[10] as f64 + sig[11] as f64) / 2.0;
        assert!((got[3] as f64 - mid).abs() < 1e-7);
        // SD's largest sigma is about 14.6.
        assert!((sig[999] - 14.6146).abs() < 1e-3, "{}", sig[999]);
    }

    #[test]
    fn config_serde_reads_diffusers_json() {
        let json = r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
            "skip_prk_steps": true, "steps_offset": 1, "prediction_type": "v_prediction",
            "timestep_spacing": "trailing"}"#;
        let cfg: ScheduleConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.prediction, Prediction::VPrediction);
        assert_eq!(cfg.timestep_spacing, TimestepSpacing::Trailing);
        let back: ScheduleConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        let empty: ScheduleConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, ScheduleConfig::default());
    }
}
