//! Samplers: noise schedules, the DDPM and DDIM schedulers (formulas as in diffusers),
//! classifier-free guidance and the seeded noise generator.
pub mod cfg;
mod ddim;
mod ddpm;
pub mod noise;
pub mod schedule;
pub mod scheduler;
#[cfg(test)]
mod testutil;

pub use cfg::{batch_of_two, guidance, guided_from_batch, split_batch};
pub use ddim::DdimScheduler;
pub use ddpm::DdpmScheduler;
pub use noise::NoiseGen;
pub use schedule::{
    inference_timesteps, BetaSchedule, NoiseSchedule, Prediction, ScheduleConfig, TimestepSpacing,
};
pub use scheduler::Scheduler;

#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("unknown sampler `{0}`; expected one of: ddpm, ddim, euler_a, dpmpp_2m")]
    UnknownSampler(String),
    #[error("invalid step count {steps}: must be between 1 and num_train_timesteps ({max})")]
    InvalidSteps { steps: usize, max: usize },
    #[error("invalid eta {0}: must be finite and >= 0")]
    InvalidEta(f32),
    #[error("invalid schedule config: {0}")]
    InvalidConfig(String),
    #[error("invalid timesteps: {0}")]
    InvalidTimesteps(String),
}
