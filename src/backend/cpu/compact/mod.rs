//! Weights kept in their stored dtype on the CPU (the default CPU plan).
//!
//! Linear, conv and embedding nodes whose weight is a model tensor become one tract op
//! ([`ops::CompactOp`]) that holds a reference-counted view of the mapped bytes and widens a
//! bounded panel at a time into f32 for the `gemm` crate's kernels. Attention becomes a
//! query-blocked kernel that never materializes the score matrix. Everything else (norms,
//! activations, data movement) is still plain ONNX lowered to tract, so tract keeps planning
//! and freeing activations.
//!
//! Why this route (issue #11): tract's own block-quant matmul has kernels for Q4_0 only and
//! ran 3-5x slower than f32 here; its int8 ops take per-tensor or per-row scales, not our
//! 32-value blocks; and re-preparing per-segment tract plans every step would pay tract's
//! optimizer per UNet evaluation. Widening a panel into L2-sized f32 and running a tuned f32
//! GEMM costs one pass over the stored bytes per evaluation, which is also all the memory
//! traffic an f32 plan spends reading its own packed weights.
pub mod conv_algo;
pub mod direct;
pub mod kernels;
mod math;
pub mod ops;
#[cfg(test)]
mod test_support;
pub mod weight;
pub mod winograd;

pub use ops::{CompactOp, Kernel};
pub use weight::CompactWeight;
