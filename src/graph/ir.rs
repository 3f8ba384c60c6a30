//! The graph IR: a closed set of ops with static shapes, in topological order.
use std::fmt;

pub type NodeId = usize;

/// Element type of a graph value. Integer inputs (token ids) are carried as exact
/// integer-valued f32 by host tensors and declared as i64 to backends that care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    F32,
    I64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A runtime input, bound by name.
    Input {
        name: String,
        ty: ValueType,
    },
    /// A weight, addressed by path in the weight source.
    Param {
        path: String,
    },
    /// inputs: x, w, [b]
    Conv2d {
        stride: usize,
        pads: [usize; 4],
    },
    /// inputs: x, w [out, in], [b]
    Linear,
    Add,
    Mul,
    Scale {
        s: f32,
    },
    /// inputs: x, gamma, beta
    GroupNorm {
        groups: usize,
        eps: f32,
    },
    /// inputs: x, gamma, beta
    LayerNorm {
        eps: f32,
    },
    Silu,
    Gelu,
    /// inputs: q, k, v
    Attention {
        heads: usize,
        causal: bool,
    },
    Reshape {
        shape: Vec<usize>,
    },
    Permute {
        perm: Vec<usize>,
    },
    Concat {
        axis: usize,
    },
    Slice {
        axis: usize,
        start: usize,
        end: usize,
    },
    Upsample2x,
    TimestepEmbedding {
        dim: usize,
        flip_sin_to_cos: bool,
        shift: f32,
    },
    /// inputs: table, ids
    Embedding,
}

impl Op {
    /// A short stable name, used in logs, benchmarks and conformance reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Conv2d { .. } => "conv2d",
            Op::Linear => "linear",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Scale { .. } => "scale",
            Op::GroupNorm { .. } => "group_norm",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Silu => "silu",
            Op::Gelu => "gelu",
            Op::Attention { .. } => "attention",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Upsample2x => "upsample2x",
            Op::TimestepEmbedding { .. } => "timestep_embedding",
            Op::Embedding => "embedding",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub shape: Vec<usize>,
    pub ty: ValueType,
}

/// A traced computation. Nodes only refer to earlier nodes, so index order is a valid
/// execution order.
/// Equal graphs compute the same thing from the same weights: the pipeline's kept plans are
/// found by it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub outputs: Vec<NodeId>,
}

impl Graph {
    /// Input nodes in order of appearance.
    pub fn inputs(&self) -> Vec<NodeId> {
        (0..self.nodes.len())
            .filter(|&i| matches!(self.nodes[i].op, Op::Input { .. }))
            .collect()
    }

    /// Every weight path the graph reads, with the shape it reads it at, in first-use order.
    pub fn params(&self) -> Vec<(String, Vec<usize>)> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Param { path } => Some((path.clone(), n.shape.clone())),
                _ => None,
            })
            .collect()
    }

    /// For each node, the index of the last node that reads it (or usize::MAX for outputs),
    /// which lets executors free values as soon as they are dead.
    pub fn last_use(&self) -> Vec<usize> {
        let mut last = vec![0usize; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &j in &n.inputs {
                last[j] = i;
            }
        }
        for &o in &self.outputs {
            last[o] = usize::MAX;
        }
        last
    }

    /// Multiply-accumulate count of the conv, linear and attention nodes, for GFLOP/s reports.
    pub fn macs(&self) -> u64 {
        let numel = |s: &[usize]| s.iter().product::<usize>() as u64;
        self.nodes
            .iter()
            .map(|n| match n.op {
                Op::Conv2d { .. } => {
                    let w = &self.nodes[n.inputs[1]].shape;
                    numel(&n.shape) * (w[1] * w[2] * w[3]) as u64
                }
                Op::Linear => {
                    let w = &self.nodes[n.inputs[1]].shape;
                    numel(&n.shape) * w[1] as u64
                }
                Op::Attention { .. } => {
                    let q = &self.nodes[n.inputs[0]].shape;
                    let k = &self.nodes[n.inputs[1]].shape;
                    // QK^T and PV, each B*Lq*Lk*C.
                    2 * (q[0] * q[1] * k[1] * q[2]) as u64
                }
                _ => 0,
            })
            .sum()
    }
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nodes.iter().enumerate() {
            writeln!(f, "%{i} = {:?}{:?} -> {:?}", n.op, n.inputs, n.shape)?;
        }
        writeln!(f, "outputs {:?}", self.outputs)
    }
}
