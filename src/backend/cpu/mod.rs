//! The CPU backend: the IR is lowered to an in-memory ONNX model (`lower.rs`), which tract
//! imports, optimizes and runs (`plan.rs`). Weights are dequantized to f32 at load: tract's f16
//! kernels are far slower than its f32 ones on x86.
mod export;
mod lower;
mod onnx;
mod plan;

pub use export::to_onnx;

use super::{check_weights, Backend, Executable, WeightSource};
use crate::graph::Graph;
use crate::{Error, Result};
use std::sync::Once;

pub struct CpuBackend;

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
        init_threads();
        check_weights(graph, weights)?;
        let proto = lower::lower(graph, weights)?;
        let model = plan::build(proto)?;
        Ok(Box::new(plan::CpuPlan::new(graph, model)))
    }
}
