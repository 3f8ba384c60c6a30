//! Samplers: noise schedules, the DDPM, DDIM, PNDM (PLMS), Euler, Euler-ancestral, Heun,
//! DPM-Solver++ 2M (ODE and SDE), UniPC and LCM schedulers (formulas as in diffusers; Karras
//! sigmas where diffusers offers them), classifier-free guidance and the seeded noise generator.
//!
//! The pipeline builds a scheduler with [`make_scheduler`] and drives it through the
//! [`Scheduler`] trait (the loop is sketched in [`scheduler`]), so it never names a sampler.
use std::fmt;
use std::str::FromStr;

pub mod cfg;
mod ddim;
mod ddpm;
mod dpmpp2m;
mod euler;
mod euler_a;
mod heun;
pub mod lcm;
pub mod noise;
mod pndm;
pub mod schedule;
pub mod scheduler;
pub mod sigmas;
#[cfg(test)]
mod testutil;
mod unipc;

pub use cfg::{batch_of_two, guidance, guided_from_batch, split_batch};
pub use ddim::DdimScheduler;
pub use ddpm::DdpmScheduler;
pub use dpmpp2m::{DpmAlgorithm, DpmSolverPP2MScheduler};
pub use euler::EulerScheduler;
pub use euler_a::EulerAncestralScheduler;
pub use heun::HeunScheduler;
pub use lcm::LcmScheduler;
pub use noise::NoiseGen;
pub use pndm::PndmScheduler;
pub use schedule::{
    inference_timesteps, BetaSchedule, FinalSigma, NoiseSchedule, Prediction, ScheduleConfig,
    TimestepSpacing,
};
pub use scheduler::Scheduler;
pub use unipc::UniPcScheduler;

#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error(
        "unknown sampler `{0}`; expected one of: ddpm, ddim, pndm, euler, euler_a, heun, \
         dpmpp_2m, dpmpp_2m_sde, unipc, lcm"
    )]
    UnknownSampler(String),
    #[error("invalid step count {steps}: must be between 1 and num_train_timesteps ({max})")]
    InvalidSteps { steps: usize, max: usize },
    #[error(
        "invalid step count {steps} for lcm: it samples at most {original} steps, the length of \
         the schedule the model was distilled on"
    )]
    TooManyLcmSteps { steps: usize, original: usize },
    #[error("invalid eta {0}: must be finite and >= 0")]
    InvalidEta(f32),
    #[error("invalid schedule config: {0}")]
    InvalidConfig(String),
    #[error("invalid timesteps: {0}")]
    InvalidTimesteps(String),
}

/// The samplers by their CLI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    Ddpm,
    Ddim,
    /// PLMS, as diffusers' `PNDMScheduler(skip_prk_steps=True)`.
    Pndm,
    /// Euler (diffusers' `EulerDiscreteScheduler`).
    Euler,
    EulerAncestral,
    /// Heun's second-order method: two UNet evaluations per step but the last.
    Heun,
    DpmSolverPP2M,
    /// DPM-Solver++ 2M SDE: fresh noise every step.
    DpmSolverPP2MSde,
    /// UniPC-2 (bh2), predictor-corrector.
    UniPc,
    /// Multi-step consistency sampling, for LCM-distilled models.
    Lcm,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 10] = [
        SamplerKind::Ddpm,
        SamplerKind::Ddim,
        SamplerKind::Pndm,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::Heun,
        SamplerKind::DpmSolverPP2M,
        SamplerKind::DpmSolverPP2MSde,
        SamplerKind::UniPc,
        SamplerKind::Lcm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddpm => "ddpm",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Pndm => "pndm",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler_a",
            SamplerKind::Heun => "heun",
            SamplerKind::DpmSolverPP2M => "dpmpp_2m",
            SamplerKind::DpmSolverPP2MSde => "dpmpp_2m_sde",
            SamplerKind::UniPc => "unipc",
            SamplerKind::Lcm => "lcm",
        }
    }

    /// Whether the sampler walks a sigma schedule, so Karras sigmas apply to it.
    pub fn uses_sigmas(self) -> bool {
        matches!(
            self,
            SamplerKind::Euler
                | SamplerKind::Heun
                | SamplerKind::DpmSolverPP2M
                | SamplerKind::DpmSolverPP2MSde
                | SamplerKind::UniPc
        )
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = SamplerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| SamplerError::UnknownSampler(s.to_string()))
    }
}

/// Builds a scheduler for `steps` denoising steps. `eta` is DDIM's noise weight (0 =
/// deterministic, 1 = DDPM-like); the other samplers ignore it, but it must still be valid.
pub fn make_scheduler(
    kind: SamplerKind,
    cfg: &ScheduleConfig,
    steps: usize,
    eta: f32,
) -> Result<Box<dyn Scheduler>, SamplerError> {
    if steps == 0 || steps > cfg.num_train_timesteps {
        return Err(SamplerError::InvalidSteps {
            steps,
            max: cfg.num_train_timesteps,
        });
    }
    if !(eta.is_finite() && eta >= 0.0) {
        return Err(SamplerError::InvalidEta(eta));
    }
    Ok(match kind {
        SamplerKind::Ddpm => Box::new(DdpmScheduler::new(cfg, steps)?),
        SamplerKind::Ddim => Box::new(DdimScheduler::new(cfg, steps, eta)?),
        SamplerKind::Pndm => Box::new(PndmScheduler::new(cfg, steps)?),
        SamplerKind::Euler => Box::new(EulerScheduler::new(cfg, steps)?),
        SamplerKind::EulerAncestral => Box::new(EulerAncestralScheduler::new(cfg, steps)?),
        SamplerKind::Heun => Box::new(HeunScheduler::new(cfg, steps)?),
        SamplerKind::DpmSolverPP2M => Box::new(DpmSolverPP2MScheduler::new(cfg, steps)?),
        SamplerKind::DpmSolverPP2MSde => Box::new(DpmSolverPP2MScheduler::with_algorithm(
            cfg,
            steps,
            DpmAlgorithm::Sde,
        )?),
        SamplerKind::UniPc => Box::new(UniPcScheduler::new(cfg, steps)?),
        SamplerKind::Lcm => Box::new(LcmScheduler::new(cfg, steps, lcm::ORIGINAL_STEPS)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in SamplerKind::ALL {
            assert_eq!(k.to_string().parse::<SamplerKind>().unwrap(), k);
        }
        assert_eq!(
            "dpmpp_2m".parse::<SamplerKind>().unwrap(),
            SamplerKind::DpmSolverPP2M
        );
        let err = "euler_b".parse::<SamplerKind>().unwrap_err();
        assert!(
            err.to_string().contains("unknown sampler `euler_b`"),
            "{err}"
        );
        assert!(err.to_string().contains("euler_a"), "{err}");
    }

    #[test]
    fn bad_arguments_are_clear_errors() {
        let cfg = ScheduleConfig::default();
        for k in SamplerKind::ALL {
            assert!(matches!(
                make_scheduler(k, &cfg, 0, 0.0),
                Err(SamplerError::InvalidSteps {
                    steps: 0,
                    max: 1000
                })
            ));
            assert!(matches!(
                make_scheduler(k, &cfg, 1001, 0.0),
                Err(SamplerError::InvalidSteps { .. })
            ));
            assert!(matches!(
                make_scheduler(k, &cfg, 20, -1.0),
                Err(SamplerError::InvalidEta(_))
            ));
            let s = make_scheduler(k, &cfg, 20, 0.0).unwrap();
            let done = (0..s.num_steps()).filter(|&i| s.completes_step(i)).count();
            assert_eq!(done, 20, "{k}");
        }
        let msg = match make_scheduler(SamplerKind::Ddim, &cfg, 0, 0.0) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("0 steps accepted"),
        };
        assert!(msg.contains("between 1 and"), "{msg}");
    }
}
