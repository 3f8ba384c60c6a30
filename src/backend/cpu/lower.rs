//! Lowering of the graph IR to an in-memory ONNX model, one small function per op.
//!
//! Only plain opset-13 operators that tract has supported for a long time are used: norms,
//! activations and attention are decomposed rather than mapped onto newer fused operators, and
//! the 2x upsampling is a reshape + broadcast rather than `Resize`, whose many modes are the
//! part of ONNX importers most often subtly wrong.
use super::compact::conv_algo::Prepared;
use super::compact::kernels::ConvShape;
use super::compact::{CompactOp, CompactWeight, Kernel};
use super::onnx::{attr_int, attr_ints, dims, ProtoBuilder};
use crate::backend::reference::kernels::timestep_freqs;
use crate::backend::WeightSource;
use crate::format::DType;
use crate::graph::shape::numel;
use crate::graph::{Graph, NodeId, Op, ValueType};
use crate::{Error, Result};
use std::sync::Arc;
use tract_onnx::pb::ModelProto;

/// ONNX `Cast` targets.
const TO_FLOAT: i64 = 1;
const TO_INT64: i64 = 7;

/// Added to masked attention scores. Finite, so no `inf - inf` can turn a row into NaN, and far
/// below any real score, so its softmax weight underflows to exactly zero as `-inf` would.
const MASKED: f32 = -1e30;

fn err(msg: String) -> Error {
    Error::Backend {
        backend: "cpu",
        msg,
    }
}

/// How the lowering treats the weights of linear, conv and embedding nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightMode {
    /// Every weight becomes an f32 initializer: plain ONNX, what `export --onnx` writes and
    /// what tract packs for its own kernels.
    Expanded,
    /// Weight-bearing nodes and attention become compact nodes that read the stored bytes
    /// (`compact`); the proto holds only small tensors (norms, biases).
    Compact,
    /// Compact, and the conv weights that `conv_algo::prepares` names are also held in f32,
    /// packed or transformed for their algorithm at preparation, and every other linear and
    /// conv weight stored as f16/q8/q4 widened to f32 once: faster, for boards with RAM to
    /// spare.
    Packed,
}

impl WeightMode {
    /// Whether weight-bearing nodes become compact nodes.
    fn compact(self) -> bool {
        matches!(self, WeightMode::Compact | WeightMode::Packed)
    }
}

/// Builds the plain ONNX model of `graph`, reading every weight once from `weights`.
pub fn lower(graph: &Graph, weights: &dyn WeightSource) -> Result<ModelProto> {
    Ok(lower_with(graph, weights, WeightMode::Expanded)?.0)
}

/// Builds the ONNX model of `graph` for the CPU plan; in compact mode also returns the compact
/// ops its `LdmCompact` nodes stand for, by slot.
pub fn lower_with(
    graph: &Graph,
    weights: &dyn WeightSource,
    mode: WeightMode,
) -> Result<(ModelProto, Vec<CompactOp>)> {
    let mut l = Lowerer::new(graph, mode);
    for id in 0..graph.nodes.len() {
        l.lower_node(id, weights)?;
    }
    for &o in &graph.outputs {
        // One Identity per output gives each its own name, so an output that is also an input,
        // a weight, or another output is still a distinct graph output to tract.
        let v = l.f32_of(o)?;
        let name = l.b.node("Identity", &[&v], vec![]);
        l.b.output(&name, &graph.nodes[o].shape);
    }
    Ok((l.b.finish(), l.compact_ops))
}

/// How a weight is read: as stored, and/or transposed (the `[in, out]` right operand of MatMul
/// that `Linear`'s torch-layout `[out, in]` weight becomes).
#[derive(Clone, Copy, Default)]
struct ParamUse {
    plain: bool,
    transposed: bool,
    /// Read in its stored dtype by a compact node.
    compact: bool,
}

fn param_uses(g: &Graph, mode: WeightMode) -> Vec<ParamUse> {
    let mut uses = vec![ParamUse::default(); g.nodes.len()];
    for n in &g.nodes {
        for (slot, &i) in n.inputs.iter().enumerate() {
            let param = matches!(g.nodes[i].op, Op::Param { .. });
            let weight_slot = match n.op {
                Op::Linear | Op::Conv2d { .. } => slot == 1,
                Op::Embedding => slot == 0,
                _ => false,
            };
            if mode.compact() && param && weight_slot {
                uses[i].compact = true;
            } else if matches!(n.op, Op::Linear) && slot == 1 {
                uses[i].transposed = true;
            } else {
                uses[i].plain = true;
            }
        }
    }
    for &o in &g.outputs {
        uses[o].plain = true;
    }
    uses
}

fn transpose2d(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

struct Lowerer<'g> {
    g: &'g Graph,
    b: ProtoBuilder,
    mode: WeightMode,
    uses: Vec<ParamUse>,
    /// The stored-dtype weight of each `Param` read by compact nodes.
    compact_w: Vec<Option<Arc<CompactWeight>>>,
    /// Packed mode: each conv weight as prepared for its algorithm.
    packed_w: Vec<Option<Arc<Prepared>>>,
    /// Packed mode: the f32 copy of each non-f32 weight that is not prepared.
    widened_w: Vec<Option<Arc<CompactWeight>>>,
    compact_ops: Vec<CompactOp>,
    /// The f32 ONNX value of each IR node, once made.
    f32s: Vec<Option<String>>,
    /// The int64 ONNX value of each IR node (token-id inputs, or casts made for `Gather`).
    i64s: Vec<Option<String>>,
    /// The transposed initializer of each `Linear` weight.
    transposed: Vec<Option<String>>,
}

impl<'g> Lowerer<'g> {
    fn new(g: &'g Graph, mode: WeightMode) -> Self {
        let n = g.nodes.len();
        Self {
            g,
            b: ProtoBuilder::default(),
            mode,
            uses: param_uses(g, mode),
            compact_w: vec![None; n],
            packed_w: vec![None; n],
            widened_w: vec![None; n],
            compact_ops: Vec::new(),
            f32s: vec![None; n],
            i64s: vec![None; n],
            transposed: vec![None; n],
        }
    }

    /// The f32 value of node `id`, casting an int64 input on first use.
    fn f32_of(&mut self, id: NodeId) -> Result<String> {
        if let Some(v) = &self.f32s[id] {
            return Ok(v.clone());
        }
        let i = self.i64s[id]
            .clone()
            .ok_or_else(|| err(format!("node {id} is read before it is defined")))?;
        let v = self.b.node("Cast", &[&i], vec![attr_int("to", TO_FLOAT)]);
        self.f32s[id] = Some(v.clone());
        Ok(v)
    }

    /// The int64 value of node `id`, for `Gather` indices.
    fn i64_of(&mut self, id: NodeId) -> Result<String> {
        if let Some(v) = &self.i64s[id] {
            return Ok(v.clone());
        }
        let f = self.f32_of(id)?;
        let v = self.b.node("Cast", &[&f], vec![attr_int("to", TO_INT64)]);
        self.i64s[id] = Some(v.clone());
        Ok(v)
    }

    fn shape(&self, id: NodeId) -> &'g [usize] {
        &self.g.nodes[id].shape
    }

    fn lower_node(&mut self, id: NodeId, weights: &dyn WeightSource) -> Result<()> {
        let g = self.g;
        let node = &g.nodes[id];
        if let Op::Input { ty, .. } = node.op {
            let int64 = ty == ValueType::I64;
            let v = self.b.input(&node.shape, int64);
            if int64 {
                self.i64s[id] = Some(v);
            } else {
                self.f32s[id] = Some(v);
            }
            return Ok(());
        }
        if let Op::Param { path } = &node.op {
            return self.param(id, path, weights);
        }
        let ins = node.inputs.clone();
        if let Some(out) = self.compact_node(id)? {
            self.f32s[id] = Some(out);
            return Ok(());
        }
        let x = |l: &mut Self, j: usize| l.f32_of(ins[j]);
        let out = match &node.op {
            Op::Input { .. } | Op::Param { .. } => {
                return Err(err(format!("leaf node {id} reached the op lowering")))
            }
            Op::Conv2d { stride, pads } => {
                let args: Vec<String> =
                    (0..ins.len()).map(|j| x(self, j)).collect::<Result<_>>()?;
                self.conv2d(&args, *stride, *pads)
            }
            Op::Linear => {
                let bias = if ins.len() > 2 {
                    Some(x(self, 2)?)
                } else {
                    None
                };
                let xv = x(self, 0)?;
                self.linear(&xv, ins[1], bias.as_deref())?
            }
            Op::Add => {
                let (a, b) = (x(self, 0)?, x(self, 1)?);
                self.b.node("Add", &[&a, &b], vec![])
            }
            Op::Mul => {
                let (a, b) = (x(self, 0)?, x(self, 1)?);
                self.b.node("Mul", &[&a, &b], vec![])
            }
            Op::Scale { s } => {
                let a = x(self, 0)?;
                let c = self.b.const_f32(&[], vec![*s]);
                self.b.node("Mul", &[&a, &c], vec![])
            }
            Op::GroupNorm { groups, eps } => {
                let (a, g, b) = (x(self, 0)?, x(self, 1)?, x(self, 2)?);
                self.group_norm(&a, self.shape(ins[0]), &g, &b, *groups, *eps)
            }
            Op::LayerNorm { eps } => {
                let (a, g, b) = (x(self, 0)?, x(self, 1)?, x(self, 2)?);
                self.layer_norm(&a, self.shape(ins[0]).len(), &g, &b, *eps)
            }
            Op::Silu => {
                let a = x(self, 0)?;
                let s = self.b.node("Sigmoid", &[&a], vec![]);
                self.b.node("Mul", &[&a, &s], vec![])
            }
            Op::Gelu => {
                let a = x(self, 0)?;
                self.gelu(&a)
            }
            Op::Attention { heads, causal } => {
                let (q, k, v) = (x(self, 0)?, x(self, 1)?, x(self, 2)?);
                let shapes = [self.shape(ins[0]), self.shape(ins[1]), self.shape(ins[2])];
                self.attention([&q, &k, &v], shapes, *heads, *causal)
            }
            Op::Reshape { shape } => {
                let a = x(self, 0)?;
                self.reshape(&a, shape)
            }
            Op::Permute { perm } => {
                let a = x(self, 0)?;
                self.transpose(&a, perm)
            }
            Op::Concat { axis } => {
                let args: Vec<String> =
                    (0..ins.len()).map(|j| x(self, j)).collect::<Result<_>>()?;
                let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
                self.b
                    .node("Concat", &refs, vec![attr_int("axis", *axis as i64)])
            }
            Op::Slice { axis, start, end } => {
                let a = x(self, 0)?;
                self.slice(&a, *axis, *start, *end)
            }
            Op::Upsample2x => {
                let a = x(self, 0)?;
                self.upsample2x(&a, self.shape(ins[0]))
            }
            Op::TimestepEmbedding {
                dim,
                flip_sin_to_cos,
                shift,
            } => {
                let t = x(self, 0)?;
                self.timestep_embedding(&t, self.shape(ins[0])[0], *dim, *flip_sin_to_cos, *shift)
            }
            Op::Embedding => {
                let table = x(self, 0)?;
                let ids = self.i64_of(ins[1])?;
                self.b
                    .node("Gather", &[&table, &ids], vec![attr_int("axis", 0)])
            }
        };
        self.f32s[id] = Some(out);
        Ok(())
    }

    /// `Some(x)` when node `id` is GEGLU's `x[.., :h] * gelu(x[.., h:])` over the last axis
    /// of one value `x` (the UNet feed-forward). One kernel then reads `x` in place: tract's
    /// Slice copies both halves and GELU a third tensor, each half the size of `x`, which at
    /// 64x64 latents with CFG is 126 MB alive at the UNet's peak.
    fn geglu_source(&self, id: NodeId) -> Option<NodeId> {
        let n = &self.g.nodes;
        let (a, b) = match n[id].inputs[..] {
            [a, b] => (a, b),
            _ => return None,
        };
        let slice = |s: NodeId| match n[s].op {
            Op::Slice { axis, start, end } => Some((n[s].inputs[0], axis, start, end)),
            _ => None,
        };
        let gate = match n[b].op {
            Op::Gelu => n[b].inputs[0],
            _ => return None,
        };
        let (x, axis, s0, e0) = slice(a)?;
        let (x1, axis1, s1, e1) = slice(gate)?;
        let xs = &n[x].shape;
        let last = xs.len().checked_sub(1)?;
        let h = xs[last] / 2;
        (x == x1
            && axis == last
            && axis1 == last
            && xs[last] == 2 * h
            && (s0, e0, s1, e1) == (0, h, h, 2 * h))
            .then_some(x)
    }

    /// In compact mode, lowers a weight-bearing node (or attention) to an `LdmCompact` node;
    /// `None` when the node is lowered to plain ONNX.
    fn compact_node(&mut self, id: NodeId) -> Result<Option<String>> {
        if !self.mode.compact() {
            return Ok(None);
        }
        let node = &self.g.nodes[id];
        let ins = &node.inputs;
        let weight_at = |slot: usize| ins.get(slot).and_then(|&i| self.compact_w[i].clone());
        let (kernel, args) = match node.op {
            Op::Linear => match weight_at(1) {
                Some(w) => (
                    Kernel::Linear(self.widened(ins[1], w)?),
                    [&ins[..1], ins.get(2..).unwrap_or(&[])].concat(),
                ),
                None => return Ok(None),
            },
            Op::Conv2d { stride, pads } => match weight_at(1) {
                Some(weight) => {
                    let packed = self.packed(ins[0], ins[1], &weight, stride, pads)?;
                    let weight = match packed {
                        Some(_) => weight,
                        None => self.widened(ins[1], weight)?,
                    };
                    (
                        Kernel::Conv {
                            packed,
                            weight,
                            stride,
                            pads,
                        },
                        [&ins[..1], ins.get(2..).unwrap_or(&[])].concat(),
                    )
                }
                None => return Ok(None),
            },
            Op::Embedding => match weight_at(0) {
                Some(w) => (Kernel::Embedding(w), vec![]),
                None => return Ok(None),
            },
            // Zero keys (how the tiled VAE's stats pass takes means): every score is 0, so the
            // output is the mean of the values and q and k need not exist. Wiring them would
            // let tract fold the zero keys into a constant the plan keeps: 19 MB per GroupNorm
            // at 384 px tiles, 180 MiB for an SD decoder.
            Op::Attention {
                heads,
                causal: false,
            } if matches!(self.g.nodes[ins[1]].op, Op::Scale { s } if s == 0.0) => {
                (Kernel::MeanAttention { heads }, vec![ins[2]])
            }
            Op::Attention { heads, causal } => (Kernel::Attention { heads, causal }, ins.clone()),
            // Norms and SiLU have no big weights, but tract's decompositions of them hold
            // full-size temporaries: at 512 px they set the decoder's peak.
            Op::GroupNorm { groups, eps } => (Kernel::GroupNorm { groups, eps }, ins.clone()),
            Op::LayerNorm { eps } => (Kernel::LayerNorm { eps }, ins.clone()),
            Op::Silu => (Kernel::Silu, ins.clone()),
            Op::Gelu => (Kernel::Gelu, ins.clone()),
            Op::Mul => match self.geglu_source(id) {
                Some(x) => (Kernel::GeGlu, vec![x]),
                None => return Ok(None),
            },
            Op::Upsample2x => (Kernel::Upsample2x, ins.clone()),
            _ => return Ok(None),
        };
        let mut names = Vec::with_capacity(args.len());
        if matches!(kernel, Kernel::Embedding(_)) {
            names.push(self.i64_of(ins[1])?);
        }
        for a in args {
            names.push(self.f32_of(a)?);
        }
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let slot = self.compact_ops.len();
        self.compact_ops.push(CompactOp {
            slot,
            kernel,
            out_shape: node.shape.clone(),
        });
        let attrs = vec![attr_int("slot", slot as i64)];
        Ok(Some(self.b.node(
            super::compact::ops::OP_TYPE,
            &refs,
            attrs,
        )))
    }

    /// In packed mode, the conv weight (node `wid`) prepared for the algorithm of the layer
    /// reading input `xid`, if `conv_algo::prepares` one. A weight read by several convs (a
    /// tiled decoder's tiles, all of one shape) is prepared once.
    fn packed(
        &mut self,
        xid: NodeId,
        wid: NodeId,
        w: &CompactWeight,
        stride: usize,
        pads: [usize; 4],
    ) -> Result<Option<Arc<Prepared>>> {
        let x = &self.g.nodes[xid].shape;
        if self.mode != WeightMode::Packed || x.len() != 4 || w.shape.len() != 4 {
            return Ok(None);
        }
        let g = ConvShape::new(x, &w.shape, stride, pads);
        if let Some(p) = self.packed_w[wid].as_ref().filter(|p| p.fits(&g)) {
            return Ok(Some(p.clone()));
        }
        let p = Prepared::new(&g, w)?.map(Arc::new);
        if p.is_some() {
            self.packed_w[wid] = p.clone();
        }
        Ok(p)
    }

    /// In packed mode, the f32 copy of a linear or (unprepared) conv weight stored as f16, q8
    /// or q4, widened once here rather than a panel per call; the weight itself otherwise. An
    /// f32 weight is read in place either way.
    fn widened(&mut self, wid: NodeId, w: Arc<CompactWeight>) -> Result<Arc<CompactWeight>> {
        if self.mode != WeightMode::Packed || w.dtype == DType::F32 {
            return Ok(w);
        }
        if let Some(f) = &self.widened_w[wid] {
            return Ok(f.clone());
        }
        let f = Arc::new(w.to_f32()?);
        self.widened_w[wid] = Some(f.clone());
        Ok(f)
    }

    /// Loads a weight once and emits the initializer(s) its readers need.
    fn param(&mut self, id: NodeId, path: &str, weights: &dyn WeightSource) -> Result<()> {
        let shape = self.shape(id);
        let use_ = self.uses[id];
        if use_.compact {
            let w = match weights.load_shared(path) {
                Some((dtype, bytes)) => CompactWeight::new(dtype, shape, bytes)?,
                None => CompactWeight::from_f32(shape, &weights.load_f32(path)?)?,
            };
            if w.numel() != numel(shape) {
                return Err(err(format!(
                    "weight `{path}` holds {} values, its shape {shape:?} needs {}",
                    w.numel(),
                    numel(shape)
                )));
            }
            self.compact_w[id] = Some(Arc::new(w));
            if !use_.plain && !use_.transposed {
                return Ok(());
            }
        }
        let data = weights.load_f32(path)?;
        if data.len() != numel(shape) {
            return Err(err(format!(
                "weight `{path}` holds {} values, its shape {shape:?} needs {}",
                data.len(),
                numel(shape)
            )));
        }
        if use_.transposed && shape.len() == 2 {
            let t = transpose2d(&data, shape[0], shape[1]);
            self.transposed[id] = Some(self.b.const_f32(&[shape[1], shape[0]], t));
        }
        if use_.plain {
            self.f32s[id] = Some(self.b.const_f32(shape, data));
        }
        Ok(())
    }

    fn conv2d(&mut self, args: &[String], stride: usize, pads: [usize; 4]) -> String {
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        // ONNX pads are [top, left, bottom, right] for 2-D, the IR's order too.
        let attrs = vec![
            attr_ints("strides", &[stride as i64, stride as i64]),
            attr_ints("pads", &dims(&pads)),
        ];
        self.b.node("Conv", &refs, attrs)
    }

    /// `x @ w^T + b`. The transpose is done once at load time on the host, so tract sees a
    /// plain constant `[in, out]` right operand it can pack for its matmul kernels.
    fn linear(&mut self, x: &str, w: NodeId, bias: Option<&str>) -> Result<String> {
        let wt = match self.transposed[w].clone() {
            Some(wt) => wt,
            None => {
                // A computed weight (not a `Param`): transpose it in the graph.
                let wv = self.f32_of(w)?;
                self.transpose(&wv, &[1, 0])
            }
        };
        let y = self.b.node("MatMul", &[x, &wt], vec![]);
        Ok(match bias {
            Some(b) => self.b.node("Add", &[&y, b], vec![]),
            None => y,
        })
    }

    fn reshape(&mut self, x: &str, shape: &[usize]) -> String {
        let s = self.b.const_ints(&dims(shape));
        self.b.node("Reshape", &[x, &s], vec![])
    }

    fn transpose(&mut self, x: &str, perm: &[usize]) -> String {
        self.b
            .node("Transpose", &[x], vec![attr_ints("perm", &dims(perm))])
    }

    /// `(x - mean) / sqrt(var + eps)` over the last axis, with the biased variance.
    fn normalize_last(&mut self, x: &str, rank: usize, eps: f32) -> String {
        let axes = || {
            vec![
                attr_ints("axes", &[rank as i64 - 1]),
                attr_int("keepdims", 1),
            ]
        };
        let mean = self.b.node("ReduceMean", &[x], axes());
        let d = self.b.node("Sub", &[x, &mean], vec![]);
        let d2 = self.b.node("Mul", &[&d, &d], vec![]);
        let var = self.b.node("ReduceMean", &[&d2], axes());
        let e = self.b.const_f32(&[], vec![eps]);
        let ve = self.b.node("Add", &[&var, &e], vec![]);
        let den = self.b.node("Sqrt", &[&ve], vec![]);
        self.b.node("Div", &[&d, &den], vec![])
    }

    fn group_norm(
        &mut self,
        x: &str,
        xs: &[usize],
        gamma: &str,
        beta: &str,
        groups: usize,
        eps: f32,
    ) -> String {
        // [N, C, ...] -> [N, G, C/G * spatial]: each group is one contiguous row.
        let per = numel(&xs[1..]) / groups;
        let rows = self.reshape(x, &[xs[0], groups, per]);
        let y = self.normalize_last(&rows, 3, eps);
        let y = self.reshape(&y, xs);
        // gamma, beta [C] -> [C, 1, ...] so they broadcast over the spatial axes.
        let mut cs = vec![xs[1]];
        cs.resize(xs.len() - 1, 1);
        let g = self.reshape(gamma, &cs);
        let b = self.reshape(beta, &cs);
        let yg = self.b.node("Mul", &[&y, &g], vec![]);
        self.b.node("Add", &[&yg, &b], vec![])
    }

    fn layer_norm(&mut self, x: &str, rank: usize, gamma: &str, beta: &str, eps: f32) -> String {
        let y = self.normalize_last(x, rank, eps);
        let yg = self.b.node("Mul", &[&y, gamma], vec![]);
        self.b.node("Add", &[&yg, beta], vec![])
    }

    /// Exact GELU: `0.5 * x * (1 + erf(x / sqrt 2))`.
    fn gelu(&mut self, x: &str) -> String {
        let r = self.b.const_f32(&[], vec![std::f32::consts::FRAC_1_SQRT_2]);
        let xr = self.b.node("Mul", &[x, &r], vec![]);
        let e = self.b.node("Erf", &[&xr], vec![]);
        let one = self.b.const_f32(&[], vec![1.0]);
        let e1 = self.b.node("Add", &[&e, &one], vec![]);
        let half = self.b.const_f32(&[], vec![0.5]);
        let hx = self.b.node("Mul", &[x, &half], vec![]);
        self.b.node("Mul", &[&hx, &e1], vec![])
    }

    /// softmax(Q K^T / sqrt(d) [+ causal mask]) V, heads split as [B, H, L, d].
    fn attention(
        &mut self,
        [q, k, v]: [&str; 3],
        [qs, ks, vs]: [&[usize]; 3],
        heads: usize,
        causal: bool,
    ) -> String {
        let (b, lq, lk) = (qs[0], qs[1], ks[1]);
        let (d, dv) = (qs[2] / heads, vs[2] / heads);
        let q = self.reshape(q, &[b, lq, heads, d]);
        let q = self.transpose(&q, &[0, 2, 1, 3]);
        let k = self.reshape(k, &[b, lk, heads, d]);
        let k = self.transpose(&k, &[0, 2, 3, 1]);
        let v = self.reshape(v, &[b, lk, heads, dv]);
        let v = self.transpose(&v, &[0, 2, 1, 3]);
        let s = self.b.node("MatMul", &[&q, &k], vec![]);
        let c = self
            .b
            .const_f32(&[], vec![(1.0 / (d as f64).sqrt()) as f32]);
        let mut s = self.b.node("Mul", &[&s, &c], vec![]);
        if causal {
            let mask = (0..lq * lk)
                .map(|i| if i % lk > i / lk { MASKED } else { 0.0 })
                .collect();
            let m = self.b.const_f32(&[lq, lk], mask);
            s = self.b.node("Add", &[&s, &m], vec![]);
        }
        let p = self.b.node("Softmax", &[&s], vec![attr_int("axis", 3)]);
        let o = self.b.node("MatMul", &[&p, &v], vec![]);
        let o = self.transpose(&o, &[0, 2, 1, 3]);
        self.reshape(&o, &[b, lq, heads * dv])
    }

    fn slice(&mut self, x: &str, axis: usize, start: usize, end: usize) -> String {
        let s = self.b.const_ints(&[start as i64]);
        let e = self.b.const_ints(&[end as i64]);
        let a = self.b.const_ints(&[axis as i64]);
        self.b.node("Slice", &[x, &s, &e, &a], vec![])
    }

    /// Nearest 2x: [P, H, 1, W, 1] broadcast to [P, H, 2, W, 2] is exactly the upsampled
    /// [P, 2H, 2W] in row-major order.
    fn upsample2x(&mut self, x: &str, xs: &[usize]) -> String {
        let n = xs.len();
        let (p, h, w) = (numel(&xs[..n - 2]), xs[n - 2], xs[n - 1]);
        let r = self.reshape(x, &[p, h, 1, w, 1]);
        let to = self.b.const_ints(&dims(&[p, h, 2, w, 2]));
        let e = self.b.node("Expand", &[&r, &to], vec![]);
        let mut os = xs.to_vec();
        os[n - 2] *= 2;
        os[n - 1] *= 2;
        self.reshape(&e, &os)
    }

    /// `t [B] * freqs [half]` formed in f32 like the reference, then [sin | cos] or [cos | sin].
    fn timestep_embedding(
        &mut self,
        t: &str,
        batch: usize,
        dim: usize,
        flip: bool,
        shift: f32,
    ) -> String {
        let half = dim / 2;
        let t = self.reshape(t, &[batch, 1]);
        let f = self.b.const_f32(&[1, half], timestep_freqs(dim, shift));
        let arg = self.b.node("Mul", &[&t, &f], vec![]);
        let sin = self.b.node("Sin", &[&arg], vec![]);
        let cos = self.b.node("Cos", &[&arg], vec![]);
        let (first, second) = if flip { (cos, sin) } else { (sin, cos) };
        self.b
            .node("Concat", &[&first, &second], vec![attr_int("axis", 1)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Tracer;
    use crate::ops::Ops;

    /// One weight `w`, stored as q8.
    struct Q8 {
        shape: Vec<usize>,
        bytes: Vec<u8>,
    }

    impl WeightSource for Q8 {
        fn shape(&self, path: &str) -> Option<Vec<usize>> {
            (path == "w").then(|| self.shape.clone())
        }
        fn load_f32(&self, _: &str) -> Result<Vec<f32>> {
            Ok(crate::format::quant::dequantize_q8(
                &self.bytes,
                numel(&self.shape),
            ))
        }
        fn load_shared(&self, _: &str) -> Option<(DType, crate::format::SharedBytes)> {
            let bytes = crate::format::SharedBytes::from_vec(self.bytes.clone());
            Some((DType::Q8, bytes))
        }
    }

    /// Whether each conv of `x [1, c, h, w]` * `w [o, c, 3, 3]` (stored as q8) is lowered with
    /// a prepared weight; checks on the way that the planner counts the bytes the lowering
    /// holds beside the stored weight: prepared weights, and f32 copies of the others.
    fn packed_convs(mode: WeightMode, x: &[usize], o: usize) -> Vec<bool> {
        let mut t = Tracer::new();
        let xi = t.input("x", x, ValueType::F32);
        let ws = [o, x[1], 3, 3];
        let wi = t.param("w", &ws).unwrap();
        let y = t.conv2d(&xi, &wi, None, 1, [1; 4]).unwrap();
        let g = t.finish(&[y]);
        let data: Vec<f32> = (0..numel(&ws)).map(|i| (i % 7) as f32).collect();
        let weights = Q8 {
            shape: ws.to_vec(),
            bytes: crate::format::quant::quantize_q8(&data),
        };
        let (_, ops) = lower_with(&g, &weights, mode).unwrap();
        let held: usize = ops
            .iter()
            .filter_map(|op| match &op.kernel {
                Kernel::Conv {
                    packed: Some(p), ..
                } => Some(p.bytes()),
                Kernel::Conv { weight, .. } if weight.dtype == DType::F32 => {
                    Some(weight.stored_bytes())
                }
                _ => None,
            })
            .sum();
        let planned = match mode {
            WeightMode::Packed => super::super::compact::kernels::packed_bytes(&[g], &|_| false),
            _ => 0,
        };
        assert_eq!(held as u64, planned, "{mode:?} {x:?} -> {o}");
        ops.iter()
            .filter_map(|op| match &op.kernel {
                Kernel::Conv { packed, .. } => Some(packed.is_some()),
                _ => None,
            })
            .collect()
    }

    /// The packed plan prepares what `conv_algo::prepares` names and nothing else; the compact
    /// plan prepares nothing.
    #[test]
    fn packed_mode_packs_the_layers_conv_algo_names() {
        let direct = super::super::compact::direct::available();
        use WeightMode::{Compact, Packed};
        let cases = [
            // One image at 8x8: per-call packing would not pay, a packed weight does.
            (Packed, [1, 64, 8, 8], direct),
            (Compact, [1, 64, 8, 8], false),
            // Too few channels: im2col, on an f32 copy of the weight.
            (Packed, [1, 32, 8, 8], false),
            // One image at 16x16: Winograd F(2x2) on a weight transformed beforehand, any CPU.
            (Packed, [1, 64, 16, 16], true),
            // 64x64 runs Winograd, its weight transformed beforehand.
            (Packed, [1, 64, 64, 64], true),
        ];
        for (mode, x, prepared) in cases {
            assert_eq!(packed_convs(mode, &x, 32), [prepared], "{mode:?} {x:?}");
        }
    }
}
