//! The sampler-agnostic interface the pipeline loop drives, mirroring diffusers' scheduler API
//! with step indices instead of timestep values (so repeated or fractional timesteps and
//! img2img's late start need no lookup).
//!
//! ```text
//! let mut x = noise.sample(n); x *= s.init_noise_sigma();            // or s.add_noise(x0, eps, k)
//! for i in 0..s.num_steps() {                                       // or k..s.num_steps()
//!     let mut input = x.clone(); s.scale_model_input(&mut input, i);
//!     let out = unet(batch_of_two(&input), s.timesteps()[i], context); // [uncond; cond]
//!     x = s.step(&guided_from_batch(&out, scale), i, &x, &mut noise);
//! }
//! ```
use super::NoiseGen;

pub trait Scheduler: Send {
    /// The model's timestep input for each step, in sampling order (descending).
    fn timesteps(&self) -> &[f32];

    /// Number of model evaluations (`timesteps().len()`): the number of denoising steps, except
    /// for Heun (2n - 1) and PNDM (n + 1), which evaluate some steps twice, as in diffusers.
    fn num_steps(&self) -> usize {
        self.timesteps().len()
    }

    /// The evaluation index where the user's step `step` starts (img2img's late start):
    /// diffusers' `timesteps[t_start * scheduler.order:]`.
    fn eval_index(&self, step: usize) -> usize {
        step
    }

    /// Whether evaluation `i` finishes one of the user's steps (for progress reports).
    fn completes_step(&self, _i: usize) -> bool {
        true
    }

    /// Standard deviation of the initial noise: multiply unit Gaussian noise by this.
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    /// Scales the sample in place into the model's input space for step `step` (identity for
    /// all but Euler, whose samples live in sigma space).
    fn scale_model_input(&self, _x: &mut [f32], _step: usize) {}

    /// One denoising step: from `sample` at step `step` and the (guided) model output for it,
    /// returns the sample for step `step + 1` (after the last step: the final latent).
    /// `model_output` is read as epsilon or v according to the config's `Prediction`.
    /// Stochastic samplers draw their noise from `noise`; deterministic ones leave it untouched.
    /// Panics if the lengths differ or `step >= num_steps()`.
    fn step(
        &mut self,
        model_output: &[f32],
        step: usize,
        sample: &[f32],
        noise: &mut NoiseGen,
    ) -> Vec<f32>;

    /// Noises a clean `x0` to the level of step `step` (img2img: start the loop at `step`).
    /// `noise` is unit Gaussian; the result is already in this sampler's sample space.
    fn add_noise(&self, x0: &[f32], noise: &[f32], step: usize) -> Vec<f32>;

    /// The model's estimate of the clean sample from the last `step` call (for previews).
    fn pred_original_sample(&self) -> Option<&[f32]>;
}

/// Shared argument checks: programmer errors, so they panic with a clear message.
pub(crate) fn check_step_args(name: &str, n_steps: usize, step: usize, a: &[f32], b: &[f32]) {
    assert!(
        step < n_steps,
        "{name}: step {step} out of range (0..{n_steps})"
    );
    assert_eq!(
        a.len(),
        b.len(),
        "{name}: model output and sample lengths differ"
    );
}
