//! The tracer: an `Ops` implementation that records the architecture into a [`Graph`].
use super::ir::{Graph, Node, NodeId, Op, ValueType};
use super::shape::infer;
use crate::ops::{Ops, Pads};
use crate::Result;

#[derive(Default)]
pub struct Tracer {
    graph: Graph,
}

impl Tracer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn input(&mut self, name: &str, shape: &[usize], ty: ValueType) -> NodeId {
        self.graph.nodes.push(Node {
            op: Op::Input {
                name: name.to_string(),
                ty,
            },
            inputs: vec![],
            shape: shape.to_vec(),
            ty,
        });
        self.graph.nodes.len() - 1
    }

    pub fn finish(mut self, outputs: &[NodeId]) -> Graph {
        self.graph.outputs = outputs.to_vec();
        self.graph
    }

    /// Appends a node after inferring its shape; the single entry point for every op.
    pub fn push(&mut self, op: Op, inputs: &[NodeId]) -> Result<NodeId> {
        let shapes: Vec<&[usize]> = inputs
            .iter()
            .map(|&i| self.graph.nodes[i].shape.as_slice())
            .collect();
        let shape = infer(&op, &shapes)?;
        self.graph.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            shape,
            ty: ValueType::F32,
        });
        Ok(self.graph.nodes.len() - 1)
    }
}

fn with_bias(x: NodeId, w: NodeId, b: Option<&NodeId>) -> Vec<NodeId> {
    let mut v = vec![x, w];
    v.extend(b.copied());
    v
}

impl Ops for Tracer {
    type T = NodeId;

    fn shape(&self, t: &NodeId) -> Vec<usize> {
        self.graph.nodes[*t].shape.clone()
    }

    fn param(&mut self, path: &str, shape: &[usize]) -> Result<NodeId> {
        self.graph.nodes.push(Node {
            op: Op::Param {
                path: path.to_string(),
            },
            inputs: vec![],
            shape: shape.to_vec(),
            ty: ValueType::F32,
        });
        Ok(self.graph.nodes.len() - 1)
    }

    fn conv2d(
        &mut self,
        x: &NodeId,
        w: &NodeId,
        b: Option<&NodeId>,
        stride: usize,
        pads: Pads,
    ) -> Result<NodeId> {
        self.push(Op::Conv2d { stride, pads }, &with_bias(*x, *w, b))
    }
    fn linear(&mut self, x: &NodeId, w: &NodeId, b: Option<&NodeId>) -> Result<NodeId> {
        self.push(Op::Linear, &with_bias(*x, *w, b))
    }
    fn add(&mut self, a: &NodeId, b: &NodeId) -> Result<NodeId> {
        self.push(Op::Add, &[*a, *b])
    }
    fn mul(&mut self, a: &NodeId, b: &NodeId) -> Result<NodeId> {
        self.push(Op::Mul, &[*a, *b])
    }
    fn scale(&mut self, x: &NodeId, s: f32) -> Result<NodeId> {
        self.push(Op::Scale { s }, &[*x])
    }
    fn group_norm(
        &mut self,
        x: &NodeId,
        g: &NodeId,
        b: &NodeId,
        groups: usize,
        eps: f32,
    ) -> Result<NodeId> {
        self.push(Op::GroupNorm { groups, eps }, &[*x, *g, *b])
    }
    fn layer_norm(&mut self, x: &NodeId, g: &NodeId, b: &NodeId, eps: f32) -> Result<NodeId> {
        self.push(Op::LayerNorm { eps }, &[*x, *g, *b])
    }
    fn silu(&mut self, x: &NodeId) -> Result<NodeId> {
        self.push(Op::Silu, &[*x])
    }
    fn gelu(&mut self, x: &NodeId) -> Result<NodeId> {
        self.push(Op::Gelu, &[*x])
    }
    fn attention(
        &mut self,
        q: &NodeId,
        k: &NodeId,
        v: &NodeId,
        heads: usize,
        causal: bool,
    ) -> Result<NodeId> {
        self.push(Op::Attention { heads, causal }, &[*q, *k, *v])
    }
    fn reshape(&mut self, x: &NodeId, shape: &[usize]) -> Result<NodeId> {
        self.push(
            Op::Reshape {
                shape: shape.to_vec(),
            },
            &[*x],
        )
    }
    fn permute(&mut self, x: &NodeId, perm: &[usize]) -> Result<NodeId> {
        self.push(
            Op::Permute {
                perm: perm.to_vec(),
            },
            &[*x],
        )
    }
    fn concat(&mut self, xs: &[&NodeId], axis: usize) -> Result<NodeId> {
        let ids: Vec<NodeId> = xs.iter().map(|x| **x).collect();
        self.push(Op::Concat { axis }, &ids)
    }
    fn slice(&mut self, x: &NodeId, axis: usize, start: usize, end: usize) -> Result<NodeId> {
        self.push(Op::Slice { axis, start, end }, &[*x])
    }
    fn upsample_nearest2x(&mut self, x: &NodeId) -> Result<NodeId> {
        self.push(Op::Upsample2x, &[*x])
    }
    fn timestep_embedding(
        &mut self,
        t: &NodeId,
        dim: usize,
        flip_sin_to_cos: bool,
        shift: f32,
    ) -> Result<NodeId> {
        self.push(
            Op::TimestepEmbedding {
                dim,
                flip_sin_to_cos,
                shift,
            },
            &[*t],
        )
    }
    fn embedding(&mut self, table: &NodeId, ids: &NodeId) -> Result<NodeId> {
        self.push(Op::Embedding, &[*table, *ids])
    }
}
