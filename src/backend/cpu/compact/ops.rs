//! The compact kernels as one tract op, so tract still schedules, frees and runs the whole
//! graph while the weight-bearing nodes read their weights from the mapping.
//!
//! The lowering emits a node of type [`OP_TYPE`] whose only attribute is a slot number; the
//! op itself (kernel, weight, output shape) waits in a table that [`import`] makes visible to
//! tract's ONNX parser for the duration of the import. The weights therefore never pass
//! through the proto, and every node is whole from the moment tract creates it.
use super::conv_algo::Prepared;
use super::kernels::{self, ConvShape};
use super::weight::CompactWeight;
use std::cell::RefCell;
use std::sync::Arc;
use tract_onnx::pb::{ModelProto, NodeProto};
use tract_onnx::prelude::{Framework, InferenceModel};
use tract_onnx::tract_hir::internal::*;

/// The ONNX op type of a compact node. Only our own lowering emits it; such protos are never
/// written out (`export --onnx` lowers with plain ONNX ops).
pub const OP_TYPE: &str = "LdmCompact";

#[derive(Clone, Debug)]
pub enum Kernel {
    /// inputs: `x [.., K]`, optional `bias [N]`; weight `[N, K]`
    Linear(Arc<CompactWeight>),
    /// inputs: `x [B, C, H, W]`, optional `bias [O]`; weight `[O, C, kh, kw]`
    Conv {
        weight: Arc<CompactWeight>,
        stride: usize,
        pads: [usize; 4],
        /// The same weight prepared for its algorithm at plan preparation (the packed plan).
        packed: Option<Arc<Prepared>>,
    },
    /// inputs: ids (int64); table `[V, D]`
    Embedding(Arc<CompactWeight>),
    /// inputs: q, k, v
    Attention { heads: usize, causal: bool },
    /// Attention whose keys are all zero: each output row is the per-head mean of the values.
    /// inputs: `v [B, Lk, heads * dv]`; out `[B, Lq, heads * dv]`
    MeanAttention { heads: usize },
    /// inputs: `x [N, C, ...]`, `gamma [C]`, `beta [C]`
    GroupNorm { groups: usize, eps: f32 },
    /// inputs: `x [.., D]`, `gamma [D]`, `beta [D]`
    LayerNorm { eps: f32 },
    /// inputs: x
    Silu,
    /// inputs: x
    Gelu,
    /// inputs: `x [.., H, W]`
    Upsample2x,
    /// inputs: `x [.., 2h]`; out `[.., h] = x[.., :h] * gelu(x[.., h:])`
    GeGlu,
}

#[derive(Clone, Debug)]
pub struct CompactOp {
    /// Unique per lowered node, so tract never merges two of them.
    pub slot: usize,
    pub kernel: Kernel,
    pub out_shape: Vec<usize>,
}

impl PartialEq for CompactOp {
    fn eq(&self, other: &Self) -> bool {
        self.slot == other.slot && self.out_shape == other.out_shape
    }
}

impl Eq for CompactOp {}

impl Op for CompactOp {
    fn name(&self) -> StaticName {
        match self.kernel {
            Kernel::Linear(_) => "LdmLinear",
            Kernel::Conv { .. } => "LdmConv",
            Kernel::Embedding(_) => "LdmEmbedding",
            Kernel::Attention { .. } => "LdmAttention",
            Kernel::MeanAttention { .. } => "LdmMeanAttention",
            Kernel::GroupNorm { .. } => "LdmGroupNorm",
            Kernel::LayerNorm { .. } => "LdmLayerNorm",
            Kernel::Silu => "LdmSilu",
            Kernel::Gelu => "LdmGelu",
            Kernel::Upsample2x => "LdmUpsample2x",
            Kernel::GeGlu => "LdmGeGlu",
        }
        .into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(match &self.kernel {
            Kernel::Conv {
                weight,
                packed: Some(p),
                ..
            } => vec![format!("weight {weight:?}, {p:?}")],
            Kernel::Linear(w) | Kernel::Conv { weight: w, .. } | Kernel::Embedding(w) => {
                vec![format!("weight {w:?}")]
            }
            Kernel::Attention { heads, causal } => vec![format!("heads {heads} causal {causal}")],
            Kernel::MeanAttention { heads } => vec![format!("heads {heads}")],
            Kernel::GroupNorm { groups, eps } => vec![format!("groups {groups} eps {eps}")],
            Kernel::LayerNorm { eps } => vec![format!("eps {eps}")],
            Kernel::Silu | Kernel::Gelu | Kernel::Upsample2x | Kernel::GeGlu => vec![],
        })
    }

    op_as_typed_op!();
}

fn f32s(t: &TValue) -> TractResult<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}

fn dims(t: &TValue, rank: usize, what: &str) -> TractResult<Vec<usize>> {
    let s = t.shape().to_vec();
    ensure!(
        s.len() == rank,
        "{what}: expected rank {rank}, got shape {s:?}"
    );
    Ok(s)
}

impl CompactOp {
    fn bias<'a>(&self, inputs: &'a [TValue], n: usize) -> TractResult<Option<&'a [f32]>> {
        match inputs.get(1) {
            None => Ok(None),
            Some(b) => {
                let b = f32s(b)?;
                ensure!(b.len() == n, "bias of {} values for {n} outputs", b.len());
                Ok(Some(b))
            }
        }
    }

    fn compute(&self, inputs: &[TValue], out: &mut [f32]) -> TractResult<()> {
        match &self.kernel {
            Kernel::Linear(w) => {
                let (n, k) = (w.shape[0], w.shape[1]);
                let x = f32s(&inputs[0])?;
                let m = x.len() / k.max(1);
                ensure!(
                    m * k == x.len() && m * n == out.len(),
                    "linear [{n}, {k}] on an input of {} values",
                    x.len()
                );
                kernels::linear(x, m, w, self.bias(inputs, n)?, out);
            }
            Kernel::Conv {
                weight,
                stride,
                pads,
                packed,
            } => {
                let xs = dims(&inputs[0], 4, "conv input")?;
                let ws = &weight.shape;
                ensure!(ws[1] == xs[1], "conv weight {ws:?} on input {xs:?}");
                let g = ConvShape::new(&xs, ws, *stride, *pads);
                let (ho, wo) = g.out_hw();
                ensure!(
                    self.out_shape == [g.batch, g.o, ho, wo],
                    "conv output {:?}, expected {:?}",
                    [g.batch, g.o, ho, wo],
                    self.out_shape
                );
                let (x, bias) = (f32s(&inputs[0])?, self.bias(inputs, g.o)?);
                match packed {
                    Some(p) => {
                        ensure!(p.fits(&g), "conv {g:?} with a weight prepared as {p:?}");
                        kernels::conv2d_packed(x, &g, p, bias, out);
                    }
                    None => kernels::conv2d(x, &g, weight, bias, out),
                }
            }
            Kernel::Embedding(table) => {
                let (v, d) = (table.shape[0], table.shape[1]);
                let ids = inputs[0].try_as_plain_ram()?.as_slice::<i64>()?;
                ensure!(
                    ids.len() * d == out.len(),
                    "{} ids for {:?}",
                    ids.len(),
                    self.out_shape
                );
                let ids = ids
                    .iter()
                    .map(|&i| match usize::try_from(i) {
                        Ok(i) if i < v => Ok(i),
                        _ => bail!("token id {i} is outside the vocabulary of {v}"),
                    })
                    .collect::<TractResult<Vec<usize>>>()?;
                kernels::embedding(table, &ids, out);
            }
            Kernel::Attention { heads, causal } => {
                let qs = dims(&inputs[0], 3, "attention q")?;
                let ks = dims(&inputs[1], 3, "attention k")?;
                let vs = dims(&inputs[2], 3, "attention v")?;
                ensure!(
                    qs[2] % heads == 0
                        && vs[2] % heads == 0
                        && ks[2] == qs[2]
                        && ks[..2] == vs[..2]
                        && ks[0] == qs[0]
                        && self.out_shape == [qs[0], qs[1], vs[2]],
                    "attention on q {qs:?}, k {ks:?}, v {vs:?} with {heads} heads"
                );
                let (q, k, v) = (f32s(&inputs[0])?, f32s(&inputs[1])?, f32s(&inputs[2])?);
                kernels::attention(q, &qs, k, &ks, v, &vs, *heads, *causal, out);
            }
            Kernel::MeanAttention { heads } => {
                let vs = dims(&inputs[0], 3, "attention v")?;
                let o = &self.out_shape;
                ensure!(
                    *heads > 0
                        && vs[2] % heads == 0
                        && o.len() == 3
                        && o[0] == vs[0]
                        && o[2] == vs[2],
                    "mean attention on v {vs:?} into {o:?} with {heads} heads"
                );
                kernels::mean_rows(f32s(&inputs[0])?, &vs, o[1], out);
            }
            Kernel::GroupNorm { groups, eps } => {
                let xs = inputs[0].shape().to_vec();
                let (x, g, b) = (f32s(&inputs[0])?, f32s(&inputs[1])?, f32s(&inputs[2])?);
                ensure!(
                    xs.len() >= 2
                        && xs[1] % groups == 0
                        && g.len() == xs[1]
                        && b.len() == xs[1]
                        && x.len() == out.len(),
                    "group norm of {groups} groups on {xs:?}"
                );
                kernels::group_norm(x, &xs, g, b, *groups, *eps, out);
            }
            Kernel::LayerNorm { eps } => {
                let xs = inputs[0].shape().to_vec();
                let (x, g, b) = (f32s(&inputs[0])?, f32s(&inputs[1])?, f32s(&inputs[2])?);
                let d = xs.last().copied().unwrap_or(0);
                ensure!(
                    d > 0 && g.len() == d && b.len() == d && x.len() == out.len(),
                    "layer norm on {xs:?}"
                );
                kernels::layer_norm(x, d, g, b, *eps, out);
            }
            Kernel::Silu => {
                let x = f32s(&inputs[0])?;
                ensure!(x.len() == out.len(), "silu on {} values", x.len());
                kernels::silu(x, out);
            }
            Kernel::Gelu => {
                let x = f32s(&inputs[0])?;
                ensure!(x.len() == out.len(), "gelu on {} values", x.len());
                kernels::gelu(x, out);
            }
            Kernel::GeGlu => {
                let xs = inputs[0].shape().to_vec();
                let two_h = xs.last().copied().unwrap_or(0);
                let mut want = xs.clone();
                if let Some(l) = want.last_mut() {
                    *l /= 2;
                }
                ensure!(
                    two_h % 2 == 0 && self.out_shape == want,
                    "GEGLU of {xs:?} into {:?}",
                    self.out_shape
                );
                kernels::geglu(f32s(&inputs[0])?, two_h / 2, out);
            }
            Kernel::Upsample2x => {
                let xs = inputs[0].shape().to_vec();
                let r = xs.len();
                let mut want = xs.clone();
                if r >= 2 {
                    want[r - 2] *= 2;
                    want[r - 1] *= 2;
                }
                ensure!(
                    r >= 2 && self.out_shape == want,
                    "2x upsampling of {xs:?} into {:?}",
                    self.out_shape
                );
                kernels::upsample2x(f32s(&inputs[0])?, xs[r - 2], xs[r - 1], out);
            }
        }
        Ok(())
    }
}

impl EvalOp for CompactOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        // Written in place: building an ndarray first and converting it cost a full copy of
        // every output (5% of a 64x64 UNet step).
        // Not zeroed either: every kernel writes each value of its output (a zeroing pass was a
        // single-threaded write of every output before the kernel's own first write).
        // SAFETY: f32 has no invalid bit patterns, and `compute` writes all of `out` before
        // anything reads it.
        let mut t = unsafe { Tensor::uninitialized::<f32>(&self.out_shape)? };
        self.compute(&inputs, t.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?)?;
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for CompactOp {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&self.out_shape)))
    }

    as_op!();
}

/// The inference-time face of a [`CompactOp`]: states the output type and shape, then wires
/// the op itself into the typed model.
#[derive(Clone, Debug)]
struct CompactNode(CompactOp);

impl Expansion for CompactNode {
    fn name(&self) -> StaticName {
        Op::name(&self.0)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        _inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        let shape: TVec<TDim> = self.0.out_shape.iter().map(|&d| d.to_dim()).collect();
        s.equals(&outputs[0].shape, ShapeFactoid::from(shape))
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

thread_local! {
    /// The ops of the proto being imported, by slot (see the module doc).
    static PENDING: RefCell<Vec<CompactOp>> = const { RefCell::new(Vec::new()) };
}

fn build_node(
    _ctx: &tract_onnx::model::ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let slot: i64 = node.get_attr("slot")?;
    let op = PENDING
        .with(|p| {
            usize::try_from(slot)
                .ok()
                .and_then(|s| p.borrow().get(s).cloned())
        })
        .ok_or_else(|| format_err!("{OP_TYPE} node `{}`: no op in slot {slot}", node.name))?;
    Ok((expand(CompactNode(op)), vec![]))
}

/// Imports `proto` with its compact nodes resolved from `ops` (indexed by slot).
pub fn import(proto: &ModelProto, ops: Vec<CompactOp>) -> TractResult<InferenceModel> {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            PENDING.with(|p| p.borrow_mut().clear());
        }
    }
    let mut fw = tract_onnx::onnx();
    fw.op_register.insert(OP_TYPE, build_node);
    PENDING.with(|p| *p.borrow_mut() = ops);
    let _clear = Clear;
    fw.model_for_proto_model(proto)
}
