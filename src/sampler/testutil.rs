//! Test helpers: an oracle denoiser for data that is always one fixed `x0` (zero variance).
//!
//! For such data the ideal model knows x0, so from a VP model input `x = sqrt(a) x0 + sqrt(1-a) eps`
//! it returns `eps = (x - sqrt(a) x0) / sqrt(1 - a)`, or `v = sqrt(a) eps - sqrt(1 - a) x0`.
//! Every sampler's model input (after `scale_model_input`) is such a VP sample.
use super::{NoiseGen, NoiseSchedule, Prediction, ScheduleConfig, Scheduler, TimestepSpacing};

/// A fixed "clean latent" with values of both signs and a spread of magnitudes.
pub fn x0() -> Vec<f32> {
    (0..64)
        .map(|i| ((i as f32) * 0.37).sin() * 1.5 - 0.2)
        .collect()
}

/// `alphas_cumprod` at a (possibly fractional) model timestep, via the interpolated sigma.
pub fn alpha_at(cfg: &ScheduleConfig, t: f32) -> f32 {
    let schedule = NoiseSchedule::new(cfg).unwrap();
    if t.fract() == 0.0 {
        return schedule.alphas_cumprod[t as usize];
    }
    let sigma = schedule.interp_sigmas(&[t])[0] as f64;
    (1.0 / (1.0 + sigma * sigma)) as f32
}

/// The ideal model output for model input `x` at noise level `a`, in f64.
pub fn oracle(prediction: Prediction, x: &[f32], x0: &[f32], a: f32) -> Vec<f32> {
    let a = a as f64;
    let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
    x.iter()
        .zip(x0)
        .map(|(&x, &x0)| {
            let eps = (x as f64 - sa * x0 as f64) / sb;
            match prediction {
                Prediction::Epsilon => eps as f32,
                Prediction::VPrediction => (sa * eps - sb * x0 as f64) as f32,
            }
        })
        .collect()
}

/// Runs steps `start..` with the oracle from sample `x`, returns the final sample.
pub fn run_oracle(
    s: &mut dyn Scheduler,
    cfg: &ScheduleConfig,
    mut x: Vec<f32>,
    start: usize,
    seed: u64,
) -> Vec<f32> {
    let target = x0();
    let mut g = NoiseGen::new(seed);
    for i in start..s.num_steps() {
        let mut input = x.clone();
        s.scale_model_input(&mut input, i);
        let out = oracle(
            cfg.prediction,
            &input,
            &target,
            alpha_at(cfg, s.timesteps()[i]),
        );
        x = s.step(&out, i, &x, &mut g);
    }
    x
}

/// Full txt2img-style run: `init_noise_sigma * noise(seed)`, then every step.
pub fn run_from_noise(s: &mut dyn Scheduler, cfg: &ScheduleConfig, seed: u64) -> Vec<f32> {
    let sigma = s.init_noise_sigma();
    let x: Vec<f32> = NoiseGen::new(seed)
        .sample(x0().len())
        .iter()
        .map(|v| v * sigma)
        .collect();
    run_oracle(s, cfg, x, 0, seed + 1000)
}

/// The samples after each of the first `n` steps of an oracle run (for reproducibility checks).
pub fn first_steps(
    s: &mut dyn Scheduler,
    cfg: &ScheduleConfig,
    seed: u64,
    n: usize,
) -> Vec<Vec<f32>> {
    let mut g = NoiseGen::new(seed);
    let sigma = s.init_noise_sigma();
    let mut x: Vec<f32> = g.sample(x0().len()).iter().map(|v| v * sigma).collect();
    let mut out = Vec::new();
    for i in 0..n {
        let mut input = x.clone();
        s.scale_model_input(&mut input, i);
        let m = oracle(
            cfg.prediction,
            &input,
            &x0(),
            alpha_at(cfg, s.timesteps()[i]),
        );
        x = s.step(&m, i, &x, &mut g);
        out.push(x.clone());
    }
    out
}

pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: max abs error {worst} > {tol}");
}

/// SD's schedule under every prediction type and timestep spacing, for grid tests.
pub fn all_configs() -> Vec<ScheduleConfig> {
    let mut out = Vec::new();
    for prediction in [Prediction::Epsilon, Prediction::VPrediction] {
        for timestep_spacing in [
            TimestepSpacing::Leading,
            TimestepSpacing::Trailing,
            TimestepSpacing::Linspace,
        ] {
            out.push(ScheduleConfig {
                prediction,
                timestep_spacing,
                ..ScheduleConfig::default()
            });
        }
    }
    out
}
