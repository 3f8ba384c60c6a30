//! The reference executor: interprets the IR node by node with [`kernels`]. Slow and plain on
//! purpose; it is the oracle every other backend is tested against.
pub mod kernels;

use super::{check_inputs, check_weights, Backend, Executable, Tensor, WeightSource};
use crate::graph::{Graph, Op};
use crate::{Error, Result};
use std::sync::Arc;

pub struct ReferenceBackend;

impl Backend for ReferenceBackend {
    fn name(&self) -> &'static str {
        "reference"
    }
    fn prepare(&self, graph: &Graph, weights: &dyn WeightSource) -> Result<Box<dyn Executable>> {
        check_weights(graph, weights)?;
        let mut params = vec![None; graph.nodes.len()];
        for (i, n) in graph.nodes.iter().enumerate() {
            if let Op::Param { path } = &n.op {
                params[i] = Some(Arc::new(weights.load_f32(path)?));
            }
        }
        Ok(Box::new(ReferencePlan {
            graph: graph.clone(),
            params,
        }))
    }
}

struct ReferencePlan {
    graph: Graph,
    params: Vec<Option<Arc<Vec<f32>>>>,
}

impl Executable for ReferencePlan {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        check_inputs(&self.graph, inputs)?;
        run_graph(&self.graph, &self.params, inputs)
    }
}

fn run_graph(
    g: &Graph,
    params: &[Option<Arc<Vec<f32>>>],
    inputs: &[Tensor],
) -> Result<Vec<Tensor>> {
    let last_use = g.last_use();
    let mut vals: Vec<Option<Arc<Vec<f32>>>> = vec![None; g.nodes.len()];
    let mut next_input = inputs.iter();
    for (i, node) in g.nodes.iter().enumerate() {
        let arg = |j: usize| -> Result<&[f32]> {
            vals[node.inputs[j]]
                .as_deref()
                .map(|v| v.as_slice())
                .ok_or_else(|| Error::Backend {
                    backend: "reference",
                    msg: format!("node {i} reads a freed value"),
                })
        };
        let sh = |j: usize| g.nodes[node.inputs[j]].shape.as_slice();
        let os = node.shape.as_slice();
        let out: Vec<f32> = match &node.op {
            Op::Input { .. } => next_input
                .next()
                .map(|t| t.data.clone())
                .unwrap_or_default(),
            Op::Param { .. } => {
                vals[i] = params[i].clone();
                continue;
            }
            Op::Conv2d { stride, pads } => {
                let b = if node.inputs.len() > 2 {
                    Some(arg(2)?)
                } else {
                    None
                };
                kernels::conv2d(arg(0)?, sh(0), arg(1)?, sh(1), b, *stride, *pads, os)
            }
            Op::Linear => {
                let b = if node.inputs.len() > 2 {
                    Some(arg(2)?)
                } else {
                    None
                };
                kernels::linear(arg(0)?, arg(1)?, sh(1), b)
            }
            Op::Add => kernels::broadcast_binary(arg(0)?, sh(0), arg(1)?, sh(1), os, |a, b| a + b),
            Op::Mul => kernels::broadcast_binary(arg(0)?, sh(0), arg(1)?, sh(1), os, |a, b| a * b),
            Op::Scale { s } => arg(0)?.iter().map(|v| v * s).collect(),
            Op::GroupNorm { groups, eps } => {
                kernels::group_norm(arg(0)?, sh(0), arg(1)?, arg(2)?, *groups, *eps)
            }
            Op::LayerNorm { eps } => {
                let c = *sh(0).last().unwrap_or(&1);
                kernels::layer_norm(arg(0)?, c, arg(1)?, arg(2)?, *eps)
            }
            Op::Silu => arg(0)?.iter().map(|&v| kernels::silu(v)).collect(),
            Op::Gelu => arg(0)?.iter().map(|&v| kernels::gelu(v)).collect(),
            Op::Attention { heads, causal } => kernels::attention(
                arg(0)?,
                sh(0),
                arg(1)?,
                sh(1),
                arg(2)?,
                sh(2),
                *heads,
                *causal,
            ),
            Op::Reshape { .. } => arg(0)?.to_vec(),
            Op::Permute { perm } => kernels::permute(arg(0)?, sh(0), perm, os),
            Op::Concat { axis } => {
                let mut out = vec![0f32; os.iter().product()];
                let mut off = 0;
                for j in 0..node.inputs.len() {
                    kernels::place(&mut out, os, arg(j)?, sh(j), *axis, off);
                    off += sh(j)[*axis];
                }
                out
            }
            Op::Slice { axis, start, end } => kernels::slice(arg(0)?, sh(0), *axis, *start, *end),
            Op::Upsample2x => kernels::upsample2x(arg(0)?, sh(0)),
            Op::TimestepEmbedding {
                dim,
                flip_sin_to_cos,
                shift,
            } => kernels::timestep_embedding(arg(0)?, *dim, *flip_sin_to_cos, *shift),
            Op::Embedding => kernels::embedding(arg(0)?, sh(0), arg(1)?)?,
        };
        vals[i] = Some(Arc::new(out));
        for &j in &node.inputs {
            if last_use[j] == i {
                vals[j] = None;
            }
        }
    }
    g.outputs
        .iter()
        .map(|&o| {
            let data = vals[o].as_deref().cloned().unwrap_or_default();
            Tensor::new(g.nodes[o].shape.clone(), data)
        })
        .collect()
}
