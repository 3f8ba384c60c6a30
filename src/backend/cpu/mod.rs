//! The CPU backend: the IR is lowered to an in-memory ONNX model (`lower.rs`), which tract
//! imports, optimizes and runs (`plan.rs`).
//!
//! Two ways to hold the weights:
//! - [`CpuBackend`] (`--backend cpu`, the default): linear, conv and embedding weights stay in
//!   their stored dtype in the model file's mapping and are widened a panel at a time inside
//!   the compact kernels ([`compact`]); attention never holds its score matrix. Memory is the
//!   mapped file plus activations.
//! - [`CpuPackedBackend`] (`--backend cpu-packed`): the same plan, with the conv weights of
//!   the layers where repacking per call costs most (the 16x16 level and below) also packed in
//!   f32 for the direct kernel at preparation; faster, for boards with RAM to spare.
//! - [`CpuExpandedBackend`] (`--backend cpu-expanded`): every weight is widened to f32 and
//!   packed by tract at load, as before the compact plan existed.
pub mod compact;
mod export;
mod lower;
mod onnx;
mod plan;

pub use export::{to_onnx, ExternalWritten, OnnxModel, OnnxWritten};
pub use lower::WeightMode;

use super::{check_weights, Backend, Executable, WeightSource};
use crate::graph::Graph;
use crate::{Error, Result};
use std::sync::Once;

/// The CPU backend with weights kept in their stored dtype (see the module doc).
pub struct CpuBackend;

/// The compact CPU backend with the direct kernel's conv weights packed at preparation.
pub struct CpuPackedBackend;

/// The CPU backend with every weight widened to f32 and packed by tract at load.
pub struct CpuExpandedBackend;

/// Maps a tract error to the crate's, keeping tract's whole cause chain (`{:#}`).
fn tract_err(what: &'static str) -> impl Fn(tract_onnx::prelude::TractError) -> Error {
    move |e| Error::Backend {
        backend: "cpu",
        msg: format!("tract failed {what}: {e:#}"),
    }
}

/// tract runs its matrix products on one thread unless a default executor is installed; with the
/// `multithread-mm` feature of tract-linalg, this installs a rayon pool of one thread per core.
/// Matmuls and convolutions are nearly all of a UNet's time, so this is most of the speed-up
/// available on a multi-core board. Done once per process: the pool is global to tract.
fn init_threads() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        if n > 1 {
            // `Executor::multithread` panics if the OS refuses threads; stay single-threaded then.
            match std::panic::catch_unwind(|| tract_linalg::multithread::Executor::multithread(n)) {
                Ok(ex) => tract_linalg::multithread::set_default_executor(ex),
                Err(_) => log::warn!("cpu backend: could not start {n} threads, running on one"),
            }
        }
    });
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn prepare(&self, graph: &Graph, weights: &dyn WeightSource) -> Result<Box<dyn Executable>> {
        prepare(graph, weights, WeightMode::Compact)
    }
}

impl Backend for CpuPackedBackend {
    fn name(&self) -> &'static str {
        "cpu-packed"
    }

    fn prepare(&self, graph: &Graph, weights: &dyn WeightSource) -> Result<Box<dyn Executable>> {
        prepare(graph, weights, WeightMode::Packed)
    }
}

impl Backend for CpuExpandedBackend {
    fn name(&self) -> &'static str {
        "cpu-expanded"
    }

    fn prepare(&self, graph: &Graph, weights: &dyn WeightSource) -> Result<Box<dyn Executable>> {
        prepare(graph, weights, WeightMode::Expanded)
    }
}

fn prepare(
    graph: &Graph,
    weights: &dyn WeightSource,
    mode: WeightMode,
) -> Result<Box<dyn Executable>> {
    init_threads();
    check_weights(graph, weights)?;
    let (proto, compact) = lower::lower_with(graph, weights, mode)?;
    let model = plan::build(proto, compact)?;
    Ok(Box::new(plan::CpuPlan::new(graph, model)))
}
