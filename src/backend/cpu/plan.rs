//! The tract plan: builds an optimized runnable model from the lowered ONNX proto and runs it,
//! checking inputs first so that bad data is an error and never a panic inside tract.
use super::tract_err;
use crate::backend::profile::Profile;
use crate::backend::{check_inputs, Executable, Tensor};
use crate::graph::{Graph, NodeId, Op, ValueType};
use crate::{Error, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::{
    tvec, InferenceModelExt, IntoRunnable, TValue, TVec, TypedRunnableModel,
};
use tract_onnx::tract_core::plan::SimpleState;

/// Parses `proto` (its `LdmCompact` nodes resolved from `compact`) and optimizes it. The
/// proto is consumed so any weights it holds are freed as soon as tract holds its own. With
/// expanded weights `examples/cpu_memory.rs` measures the cost: preparing peaks near 2.3x the
/// f32 weights (proto, tract's import, its packed copy), the plan keeps ~1.2x. With compact
/// weights the proto holds only norms and biases.
pub fn build(
    proto: ModelProto,
    compact: Vec<super::compact::CompactOp>,
) -> Result<std::sync::Arc<TypedRunnableModel>> {
    let model = super::compact::ops::import(&proto, compact)
        .map_err(tract_err("importing the lowered ONNX model"))?;
    drop(proto);
    model
        .into_optimized()
        .map_err(tract_err("optimizing"))?
        .into_runnable()
        .map_err(tract_err("making the plan runnable"))
}

/// How one graph input is handed to tract.
#[derive(Clone, Debug)]
enum InputKind {
    F32,
    /// Token ids, given as integer-valued f32 and passed as int64. `vocab` is the smallest
    /// vocabulary of the embeddings they index, when that can be seen from the graph.
    I64 {
        vocab: Option<usize>,
    },
}

pub struct CpuPlan {
    /// The weightless graph, for `check_inputs` and output shapes.
    graph: Graph,
    kinds: Vec<InputKind>,
    model: std::sync::Arc<TypedRunnableModel>,
}

impl CpuPlan {
    pub fn new(graph: &Graph, model: std::sync::Arc<TypedRunnableModel>) -> Self {
        let limits = vocab_limits(graph);
        let kinds = graph
            .inputs()
            .into_iter()
            .map(|i| match graph.nodes[i].op {
                Op::Input {
                    ty: ValueType::I64, ..
                } => InputKind::I64 { vocab: limits[i] },
                _ => InputKind::F32,
            })
            .collect();
        Self {
            // The IR holds no weight data, so this clone is small.
            graph: graph.clone(),
            kinds,
            model,
        }
    }
}

/// For each input node, the smallest vocabulary of the embeddings its values reach as ids,
/// following layout-only ops (reshape, permute, slice, concat) back from each `Embedding`.
/// tract's `Gather` wraps negative indices and panics past the end, so `run` checks first.
fn vocab_limits(g: &Graph) -> Vec<Option<usize>> {
    let mut lim: Vec<Option<usize>> = vec![None; g.nodes.len()];
    for n in &g.nodes {
        if !matches!(n.op, Op::Embedding) {
            continue;
        }
        let vocab = g.nodes[n.inputs[0]].shape[0];
        let mut stack: Vec<NodeId> = vec![n.inputs[1]];
        while let Some(i) = stack.pop() {
            match g.nodes[i].op {
                Op::Input { .. } => lim[i] = Some(lim[i].map_or(vocab, |l| l.min(vocab))),
                Op::Reshape { .. } | Op::Permute { .. } | Op::Slice { .. } | Op::Concat { .. } => {
                    stack.extend(&g.nodes[i].inputs)
                }
                _ => {}
            }
        }
    }
    lim
}

fn to_ids(t: &Tensor, vocab: Option<usize>) -> Result<Vec<i64>> {
    t.data
        .iter()
        .map(|&v| {
            let in_vocab = vocab.is_none_or(|n| (v as f64) < n as f64);
            // With no vocabulary in sight, still refuse values `as i64` would saturate (~2^53
            // is far past any vocabulary and well inside i64). NaN fails every comparison.
            if v.fract() == 0.0 && (0.0..9.0e15).contains(&v) && in_vocab {
                Ok(v as i64)
            } else {
                let why = vocab.map_or(String::new(), |n| format!(" of {n} entries"));
                Err(Error::Input(format!(
                    "token id {v} is not an index into the vocabulary{why}"
                )))
            }
        })
        .collect()
}

impl CpuPlan {
    fn tract_inputs(&self, inputs: &[Tensor]) -> Result<TVec<TValue>> {
        check_inputs(&self.graph, inputs)?;
        let mut tv: TVec<TValue> = tvec![];
        for (t, kind) in inputs.iter().zip(&self.kinds) {
            let tensor = match kind {
                InputKind::F32 => tract_onnx::prelude::Tensor::from_shape(&t.shape, &t.data),
                InputKind::I64 { vocab } => {
                    tract_onnx::prelude::Tensor::from_shape(&t.shape, &to_ids(t, *vocab)?)
                }
            }
            .map_err(tract_err("making an input tensor"))?;
            tv.push(tensor.into());
        }
        Ok(tv)
    }
}

/// Runs `f` on a worker of rayon's global pool, the caller blocked (asleep) until it is done.
/// The compact kernels split their work over that pool; when tract ran the plan on the calling
/// thread, that thread and the pool's workers (which spin and yield for a while after each
/// parallel kernel) were one more runnable thread than cores, and every serial op between two
/// kernels (an add, a reshape) waited for the scheduler. Measured on this 2-core machine, SD-1.5
/// f32 at 32x32 latents: a 64x1280x1280 linear took 11.9 ms in the plan against 1.0 ms alone.
///
/// Runs take turns, one plan at a time in the process. Each already uses every core, and a
/// worker that waits inside a kernel runs other queued jobs meanwhile: had a second run's job
/// been queued, it could start on a thread where tract holds its thread-local matmul scratch,
/// and tract panics on the second borrow. The lock is taken before the job is queued, so no
/// second run is ever in the queue. A caller that is itself a pool worker runs inline.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if rayon::current_thread_index().is_some() {
        return f();
    }
    // A run that panicked left nothing behind that the lock guards.
    let _turn = RUNS.lock().unwrap_or_else(|e| e.into_inner());
    rayon::scope(|_| f())
}

impl Executable for CpuPlan {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let this = &*self;
        on_pool(|| {
            let tv = this.tract_inputs(inputs)?;
            // A safety net: a panic inside tract (a kernel bug, an id we could not see from
            // the graph) becomes an error instead of unwinding through the caller.
            let outs = catch_unwind(AssertUnwindSafe(|| this.model.run(tv)))
                .map_err(|_| Error::Backend {
                    backend: "cpu",
                    msg: "tract panicked while running the plan".into(),
                })?
                .map_err(tract_err("running"))?;
            outs.iter()
                .zip(&this.graph.outputs)
                .map(|(o, &id)| {
                    let view = o
                        .to_plain_array_view::<f32>()
                        .map_err(tract_err("reading an output"))?;
                    Tensor::new(
                        this.graph.nodes[id].shape.clone(),
                        view.iter().copied().collect(),
                    )
                })
                .collect()
        })
    }

    /// Times every tract node of one run (wall clock; the kernels inside use both cores), by
    /// op name: `LdmConv`, `LdmAttention`, ... for the compact kernels, tract's own names for
    /// the rest.
    fn profile(&mut self, inputs: &[Tensor]) -> Result<Option<Profile>> {
        let this = &*self;
        on_pool(|| {
            let tv = this.tract_inputs(inputs)?;
            let mut steps: Vec<(String, String, f64)> = Vec::new();
            let mut state = SimpleState::new(&this.model).map_err(tract_err("starting a run"))?;
            let run = catch_unwind(AssertUnwindSafe(|| {
                state.run_plan_with_eval(tv, |ctx, op_state, node, input| {
                    let t0 = Instant::now();
                    let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, input);
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    let shape = node.outputs.first().map(|o| format!("{:?}", o.fact.shape));
                    steps.push((
                        node.op().name().to_string(),
                        format!(
                            "{} {} {}",
                            node.op().name(),
                            node.name,
                            shape.unwrap_or_default()
                        ),
                        ms,
                    ));
                    out
                })
            }));
            run.map_err(|_| Error::Backend {
                backend: "cpu",
                msg: "tract panicked while running the plan".into(),
            })?
            .map_err(tract_err("running"))?;
            Ok(Some(Profile::from_steps(&steps)))
        })
    }
}
