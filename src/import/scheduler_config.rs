//! `scheduler/scheduler_config.json` -> (schedule, default sampler).
//!
//! The class names the sampler; every key that changes its math is read and honoured, or
//! refused by name when we do not implement that setting; keys of code paths we never take
//! (e.g. thresholding ratios with thresholding off) are ignored, and keys unknown to us are
//! logged at debug level (see [`Fields::finish`]). Absent keys take diffusers' own defaults for
//! that class, so a hand-trimmed config means what it means to diffusers.
//! A class we do not implement imports with a warning naming the sampler used instead.
use super::fields::Fields;
use crate::sampler::{FinalSigma, SamplerKind, ScheduleConfig, TimestepSpacing};
use crate::{Error, Result};
use serde_json::{json, Value};

pub const FILE: &str = "scheduler/scheduler_config.json";

/// What an unimplemented scheduler class imports as: DDIM shares every class's noise
/// schedule and is deterministic.
const FALLBACK: SamplerKind = SamplerKind::Ddim;

/// The sampler for a diffusers scheduler class (`None`: not implemented).
fn kind_of(class: &str) -> Option<SamplerKind> {
    Some(match class {
        "DDIMScheduler" => SamplerKind::Ddim,
        "DDPMScheduler" => SamplerKind::Ddpm,
        "PNDMScheduler" => SamplerKind::Pndm,
        "EulerDiscreteScheduler" => SamplerKind::Euler,
        "EulerAncestralDiscreteScheduler" => SamplerKind::EulerAncestral,
        "HeunDiscreteScheduler" => SamplerKind::Heun,
        // The algorithm (ODE or SDE) is read below.
        "DPMSolverMultistepScheduler" => SamplerKind::DpmSolverPP2M,
        "UniPCMultistepScheduler" => SamplerKind::UniPc,
        "LCMScheduler" => SamplerKind::Lcm,
        _ => return None,
    })
}

/// diffusers' default `timestep_spacing` per class.
fn default_spacing(kind: SamplerKind) -> TimestepSpacing {
    match kind {
        SamplerKind::Ddim | SamplerKind::Ddpm | SamplerKind::Pndm | SamplerKind::Lcm => {
            TimestepSpacing::Leading
        }
        _ => TimestepSpacing::Linspace,
    }
}

pub fn scheduler(v: Value) -> Result<(ScheduleConfig, SamplerKind)> {
    let class = v
        .get("_class_name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut f = Fields::new(FILE, v)?;
    let mut kind = match kind_of(&class) {
        Some(k) => k,
        None => {
            log::warn!(
                "{FILE}: scheduler class {class:?} is not implemented; the model will use the \
                 `{FALLBACK}` sampler over the same noise schedule (choose another with \
                 `ldm generate --sampler`)"
            );
            FALLBACK
        }
    };
    let mut cfg = ScheduleConfig {
        num_train_timesteps: f.or("num_train_timesteps", 1000)?,
        beta_start: f.float_or("beta_start", 0.0001)?,
        beta_end: f.float_or("beta_end", 0.02)?,
        beta_schedule: f.or("beta_schedule", crate::sampler::BetaSchedule::Linear)?,
        prediction: f.or("prediction_type", crate::sampler::Prediction::Epsilon)?,
        steps_offset: f.or("steps_offset", 0)?,
        timestep_spacing: f.or("timestep_spacing", default_spacing(kind))?,
        ..ScheduleConfig::default()
    };
    // Every class we implement computes betas from the schedule; these would replace them.
    f.expect_null("trained_betas")?;
    f.expect("rescale_betas_zero_snr", json!(false))?;
    f.expect("thresholding", json!(false))?;
    // Only read with thresholding or clip_sample on, which are refused.
    f.ignore(&[
        "dynamic_thresholding_ratio",
        "sample_max_value",
        "clip_sample_range",
    ]);
    if kind_of(&class).is_none() {
        // Only the schedule is taken from a class we do not implement.
        f.finish()?;
        return Ok((cfg, kind));
    }
    match kind {
        SamplerKind::Ddim => {
            // Our DDIM is diffusers' with SD's settings.
            f.expect("clip_sample", json!(false))?;
            f.expect("set_alpha_to_one", json!(false))?;
        }
        SamplerKind::Ddpm => {
            if f.or("clip_sample", true)? {
                return Err(refused("clip_sample", json!(true), "false"));
            }
            f.expect("variance_type", json!("fixed_small"))?;
        }
        SamplerKind::Pndm => {
            cfg.skip_prk_steps = f.or("skip_prk_steps", false)?;
            cfg.set_alpha_to_one = f.or("set_alpha_to_one", false)?;
        }
        SamplerKind::EulerAncestral => {}
        SamplerKind::Euler | SamplerKind::Heun => {
            cfg.use_karras_sigmas = f.or("use_karras_sigmas", false)?;
            sigma_variants(&mut f)?;
            if kind == SamplerKind::Euler {
                cfg.final_sigmas_type = f.or("final_sigmas_type", FinalSigma::Zero)?;
                f.expect("interpolation_type", json!("linear"))?;
                f.expect("timestep_type", json!("discrete"))?;
                f.expect_null("sigma_min")?;
                f.expect_null("sigma_max")?;
            } else {
                f.expect("clip_sample", json!(false))?;
            }
        }
        SamplerKind::DpmSolverPP2M | SamplerKind::DpmSolverPP2MSde | SamplerKind::UniPc => {
            cfg.use_karras_sigmas = f.or("use_karras_sigmas", false)?;
            cfg.final_sigmas_type = f.or("final_sigmas_type", FinalSigma::Zero)?;
            cfg.lower_order_final = f.or("lower_order_final", true)?;
            sigma_variants(&mut f)?;
            cfg.solver_order = f.or("solver_order", 2)?;
            if !(1..=2).contains(&cfg.solver_order) {
                return Err(refused("solver_order", json!(cfg.solver_order), "1 or 2"));
            }
            f.expect("use_flow_sigmas", json!(false))?;
            f.expect("use_dynamic_shifting", json!(false))?;
            // Only read with flow sigmas or dynamic shifting, both refused above.
            f.ignore(&["flow_shift", "time_shift_type"]);
            if kind == SamplerKind::UniPc {
                f.expect("solver_type", json!("bh2"))?;
                f.expect("predict_x0", json!(true))?;
                f.expect_null("solver_p")?;
                f.expect_null("sigma_min")?;
                f.expect_null("sigma_max")?;
                f.expect_null("shift_terminal")?;
                cfg.disable_corrector = f.or("disable_corrector", Vec::new())?;
            } else {
                kind = match f.or("algorithm_type", "dpmsolver++".to_string())?.as_str() {
                    "dpmsolver++" => SamplerKind::DpmSolverPP2M,
                    "sde-dpmsolver++" => SamplerKind::DpmSolverPP2MSde,
                    a => {
                        return Err(refused(
                            "algorithm_type",
                            json!(a),
                            "\"dpmsolver++\" or \"sde-dpmsolver++\"",
                        ))
                    }
                };
                f.expect("solver_type", json!("midpoint"))?;
                cfg.euler_at_final = f.or("euler_at_final", false)?;
                f.expect("use_lu_lambdas", json!(false))?;
                f.expect_null("variance_type")?;
                let clip = f.float_or("lambda_min_clipped", f64::NEG_INFINITY)?;
                if clip.is_nan() {
                    return Err(refused("lambda_min_clipped", json!("NaN"), "a number"));
                }
                cfg.lambda_min_clipped = clip.is_finite().then_some(clip);
            }
        }
        SamplerKind::Lcm => {
            // Our LCM sampler is diffusers' with these defaults (LCM-SD1.5's own config).
            f.expect(
                "original_inference_steps",
                json!(crate::sampler::lcm::ORIGINAL_STEPS),
            )?;
            f.expect("timestep_scaling", json!(10.0))?;
            f.expect("clip_sample", json!(false))?;
            // LCM steps between trained timesteps >= 0, so the final alpha is never read.
            f.ignore(&["set_alpha_to_one"]);
        }
    }
    f.finish()?;
    Ok((cfg, kind))
}

/// The sigma schedules other than Karras' (exponential, beta) are not implemented.
fn sigma_variants(f: &mut Fields) -> Result<()> {
    f.expect("use_exponential_sigmas", json!(false))?;
    f.expect("use_beta_sigmas", json!(false))
}

fn refused(key: &str, val: Value, supported: &str) -> Error {
    Error::Config(format!(
        "{FILE}: unsupported config field `{key}` = {val} (only {supported} is supported)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LCM-SD1.5's scheduler_config.json as diffusers writes it (the keys that matter).
    fn lcm_config() -> Value {
        json!({
            "_class_name": "LCMScheduler",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "clip_sample": false,
            "num_train_timesteps": 1000,
            "original_inference_steps": 50,
            "prediction_type": "epsilon",
            "set_alpha_to_one": true,
            "steps_offset": 1,
            "timestep_scaling": 10.0
        })
    }

    #[test]
    fn lcm_scheduler_imports_as_lcm() {
        let (cfg, kind) = scheduler(lcm_config()).unwrap();
        assert_eq!(kind, SamplerKind::Lcm);
        assert_eq!(cfg.num_train_timesteps, 1000);
    }

    #[test]
    fn lcm_settings_we_do_not_implement_are_refused_by_name() {
        for (k, bad) in [
            ("original_inference_steps", json!(100)),
            ("timestep_scaling", json!(5.0)),
            ("clip_sample", json!(true)),
        ] {
            let mut v = lcm_config();
            v[k] = bad;
            let e = scheduler(v).unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
        let mut v = lcm_config();
        v["timestep_scaling"] = json!(10);
        assert!(scheduler(v).is_ok(), "10 and 10.0 are the same setting");
    }

    /// DPMSolverMultistepScheduler().save_pretrained() of diffusers 0.42, verbatim apart from the
    /// SD betas: `-Infinity` and all.
    const DPM: &str = r#"{
  "_class_name": "DPMSolverMultistepScheduler",
  "_diffusers_version": "0.42.1",
  "algorithm_type": "dpmsolver++",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "dynamic_thresholding_ratio": 0.995,
  "euler_at_final": false,
  "final_sigmas_type": "zero",
  "flow_shift": 1.0,
  "lambda_min_clipped": -Infinity,
  "lower_order_final": true,
  "num_train_timesteps": 1000,
  "prediction_type": "epsilon",
  "rescale_betas_zero_snr": false,
  "sample_max_value": 1.0,
  "solver_order": 2,
  "solver_type": "midpoint",
  "steps_offset": 0,
  "thresholding": false,
  "time_shift_type": "exponential",
  "timestep_spacing": "linspace",
  "trained_betas": null,
  "use_beta_sigmas": false,
  "use_dynamic_shifting": false,
  "use_exponential_sigmas": false,
  "use_flow_sigmas": false,
  "use_karras_sigmas": false,
  "use_lu_lambdas": false,
  "variance_type": null
}"#;

    fn dpm() -> Value {
        super::super::json::parse(DPM, FILE).unwrap()
    }

    #[test]
    fn diffusers_dpm_config_with_minus_infinity_imports() {
        assert!(
            serde_json::from_str::<Value>(DPM).is_err(),
            "strict JSON refuses it"
        );
        let (cfg, kind) = scheduler(dpm()).unwrap();
        assert_eq!(kind, SamplerKind::DpmSolverPP2M);
        assert_eq!(cfg.lambda_min_clipped, None);
        assert_eq!(cfg.timestep_spacing, TimestepSpacing::Linspace);
        assert_eq!(cfg.steps_offset, 0);
        assert!(cfg.lower_order_final && !cfg.use_karras_sigmas);
    }

    #[test]
    fn dpm_settings_are_honoured() {
        let mut v = dpm();
        v["algorithm_type"] = json!("sde-dpmsolver++");
        v["use_karras_sigmas"] = json!(true);
        v["final_sigmas_type"] = json!("sigma_min");
        v["lower_order_final"] = json!(false);
        v["lambda_min_clipped"] = json!(-5.1);
        let (cfg, kind) = scheduler(v).unwrap();
        assert_eq!(kind, SamplerKind::DpmSolverPP2MSde);
        assert!(cfg.use_karras_sigmas && !cfg.lower_order_final);
        assert_eq!(cfg.final_sigmas_type, FinalSigma::SigmaMin);
        assert_eq!(cfg.lambda_min_clipped, Some(-5.1));
    }

    #[test]
    fn settings_we_do_not_implement_are_refused_by_name() {
        let cases: [(&str, &str, Value); 13] = [
            ("DPMSolverMultistepScheduler", "solver_order", json!(3)),
            (
                "DPMSolverMultistepScheduler",
                "algorithm_type",
                json!("dpmsolver"),
            ),
            ("DPMSolverMultistepScheduler", "solver_type", json!("heun")),
            ("DPMSolverMultistepScheduler", "use_lu_lambdas", json!(true)),
            (
                "DPMSolverMultistepScheduler",
                "lambda_min_clipped",
                json!("NaN"),
            ),
            ("DPMSolverMultistepScheduler", "thresholding", json!(true)),
            (
                "EulerDiscreteScheduler",
                "interpolation_type",
                json!("log_linear"),
            ),
            (
                "EulerDiscreteScheduler",
                "use_exponential_sigmas",
                json!(true),
            ),
            ("EulerDiscreteScheduler", "sigma_max", json!(80.0)),
            ("HeunDiscreteScheduler", "clip_sample", json!(true)),
            ("UniPCMultistepScheduler", "disable_corrector", json!("all")),
            ("UniPCMultistepScheduler", "predict_x0", json!(false)),
            (
                "UniPCMultistepScheduler",
                "beta_schedule",
                json!("squaredcos_cap_v2"),
            ),
        ];
        for (class, key, val) in cases {
            let mut v = json!({"_class_name": class, "skip_prk_steps": true});
            v[key] = val;
            let e = match scheduler(v) {
                Ok(_) => panic!("{class} {key} accepted"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(key), "{class}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_ignored_and_defaults_are_diffusers() {
        let v = json!({"_class_name": "EulerDiscreteScheduler", "some_future_key": 1});
        let (cfg, kind) = scheduler(v).unwrap();
        assert_eq!(kind, SamplerKind::Euler);
        // EulerDiscreteScheduler's own defaults.
        assert_eq!(cfg.timestep_spacing, TimestepSpacing::Linspace);
        assert_eq!(
            (cfg.beta_start, cfg.beta_end, cfg.steps_offset),
            (0.0001, 0.02, 0)
        );
        let (cfg, _) = scheduler(json!({"_class_name": "PNDMScheduler"})).unwrap();
        assert_eq!(cfg.timestep_spacing, TimestepSpacing::Leading);
        // PNDMScheduler's default is the Runge-Kutta warm-up.
        assert!(!cfg.skip_prk_steps);
    }

    #[test]
    fn an_unimplemented_class_falls_back_with_its_schedule() {
        let v = json!({"_class_name": "KDPM2DiscreteScheduler", "beta_start": 0.00085,
                       "beta_end": 0.012, "beta_schedule": "scaled_linear",
                       "use_karras_sigmas": true});
        let (cfg, kind) = scheduler(v).unwrap();
        assert_eq!(kind, FALLBACK);
        assert_eq!(cfg.beta_end, 0.012);
        // Its settings belong to a sampler we do not run, so they are not applied to DDIM.
        assert!(!cfg.use_karras_sigmas);
    }
}
