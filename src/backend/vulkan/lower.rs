//! Lowering of a graph to a flat list of kernel dispatches over planned storage. Pure: no device
//! calls, so the plan (buffer reuse, fusion, push constants) is testable on its own.
//!
//! IR rewrites done here: Reshape is a view (it shares its input's storage), and a GroupNorm
//! whose only reader is a SiLU runs as one fused kernel.
use super::arena::Arena;
use super::backend_error;
use crate::backend::reference::kernels::timestep_freqs;
use crate::graph::shape::numel;
use crate::graph::{Graph, Op};
use crate::Result;
use std::collections::HashMap;

/// Where a value lives on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// `len` f32 elements at element offset `off` of the activation arena.
    Arena { off: u64, len: u64 },
    /// A whole weight/constant buffer.
    Weight(usize),
}

/// How a matrix weight (of Linear or Conv2d) or an embedding table is stored on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFmt {
    F32,
    F16,
    Q8,
    Q4,
}

impl WeightFmt {
    pub fn suffix(self) -> &'static str {
        match self {
            WeightFmt::F32 => "f32",
            WeightFmt::F16 => "f16",
            WeightFmt::Q8 => "q8",
            WeightFmt::Q4 => "q4",
        }
    }
}

/// A device buffer to fill at prepare time.
#[derive(Clone, Debug)]
pub enum WeightData {
    Param {
        path: String,
        fmt: WeightFmt,
        numel: usize,
    },
    Const(Vec<f32>),
}

#[derive(Clone, Debug)]
pub struct Step {
    pub node: usize,
    pub kernel: String,
    pub bufs: Vec<Storage>,
    pub push: Vec<u32>,
    pub groups: Groups,
}

#[derive(Clone, Copy, Debug)]
pub enum Groups {
    /// A 1-D count of workgroups, laid out by the device's grid limits.
    Linear(u64),
    /// An explicit 2-D tile grid.
    Grid([u32; 3]),
}

pub struct Lowered {
    pub steps: Vec<Step>,
    pub weights: Vec<WeightData>,
    /// Storage of each graph input, in `Graph::inputs()` order.
    pub inputs: Vec<Storage>,
    pub outputs: Vec<(Storage, Vec<usize>)>,
    pub arena_elems: u64,
    /// (graph input position, vocabulary) of embedding ids that come straight from an input;
    /// `run` validates them on the host like the reference does.
    pub id_checks: Vec<(usize, usize)>,
}

impl WeightFmt {
    /// The file dtype with this layout (the device keeps the file's bytes as they are).
    pub fn dtype(self) -> crate::format::DType {
        match self {
            WeightFmt::F32 => crate::format::DType::F32,
            WeightFmt::F16 => crate::format::DType::F16,
            WeightFmt::Q8 => crate::format::DType::Q8,
            WeightFmt::Q4 => crate::format::DType::Q4,
        }
    }

    /// Bytes of `numel` values in this format, padded to whole u32 words as uploaded.
    pub fn device_bytes(self, numel: u64) -> u64 {
        self.dtype().byte_len(numel).unwrap_or(u64::MAX).div_ceil(4) * 4
    }
}

impl Lowered {
    /// The device memory this lowering asks `VulkanPlan::new` to allocate: each weight
    /// buffer, the arena (at least one element) and one host-visible buffer per input and
    /// output. Computed from the lowering alone, so the planner predicts it without a device.
    pub fn device_memory(&self, graph: &Graph) -> crate::backend::DeviceMemory {
        let weight = |w: &WeightData| match w {
            WeightData::Const(v) => (v.len() as u64 * 4).max(4),
            WeightData::Param { fmt, numel, .. } => fmt.device_bytes(*numel as u64).max(4),
        };
        let value = |shape: &[usize]| shape.iter().map(|&d| d as u64).product::<u64>().max(1) * 4;
        let inputs: u64 = graph
            .inputs()
            .iter()
            .map(|&id| value(&graph.nodes[id].shape))
            .sum();
        let outputs: u64 = self.outputs.iter().map(|(_, shape)| value(shape)).sum();
        let binding = |s: &Storage| match *s {
            Storage::Arena { len, .. } => len.max(1) * 4,
            Storage::Weight(k) => self.weights.get(k).map_or(0, weight),
        };
        crate::backend::DeviceMemory {
            weights: self.weights.iter().map(weight).sum(),
            activations: self.arena_elems.max(1) * 4,
            transfer: inputs + outputs,
            largest_binding: self
                .steps
                .iter()
                .flat_map(|st| st.bufs.iter().map(binding))
                .max()
                .unwrap_or(0),
        }
    }
}

fn f(v: f32) -> u32 {
    v.to_bits()
}

fn u(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        backend_error(format!(
            "size {v} does not fit the 32-bit indices of the kernels"
        ))
    })
}

fn elementwise(n: usize) -> Groups {
    Groups::Linear(n.div_ceil(256) as u64)
}

fn strides(s: &[usize]) -> Vec<usize> {
    let mut st = vec![1; s.len()];
    for i in (0..s.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1] * s[i + 1];
    }
    st
}

/// Packs up to 8 values as two vec4<u32> (zero padded).
fn vec8(v: &[usize]) -> Result<Vec<u32>> {
    let mut out = vec![0u32; 8];
    for (o, &x) in out.iter_mut().zip(v) {
        *o = u(x)?;
    }
    Ok(out)
}

fn tile_grid(cols: usize, rows: usize) -> Result<Groups> {
    let (x, y) = (cols.div_ceil(64), rows.div_ceil(64));
    if y > 65535 || x > 65535 {
        return Err(backend_error(format!(
            "a {rows}x{cols} matrix product exceeds the dispatch grid"
        )));
    }
    Ok(Groups::Grid([x as u32, y as u32, 1]))
}

/// How many K slices a product with an `rows` x `cols` output and depth `k` is split into, and
/// the K per slice (a multiple of the kernels' K step of 16). A product whose 64x64 tiles are too
/// few to fill a GPU (the low-resolution levels of a UNet: one workgroup for an 8x8 latent at
/// 1280 channels would leave all but a few compute units idle) runs its K range in parallel
/// slices and adds them in `split_sum`; each slice keeps at least 256 of K so the extra pass
/// stays small next to the product. Unsplit: (1, k rounded up to 16).
pub fn k_split(rows: usize, cols: usize, k: usize) -> (usize, usize) {
    const TARGET_GROUPS: usize = 256;
    const MIN_SLICE: usize = 256;
    const MAX_SLICES: usize = 32;
    let tiles = rows.div_ceil(64) * cols.div_ceil(64);
    let whole = (1, k.max(1).div_ceil(16) * 16);
    if tiles >= TARGET_GROUPS / 2 {
        return whole;
    }
    let want = TARGET_GROUPS
        .div_ceil(tiles)
        .min(k / MIN_SLICE)
        .min(MAX_SLICES);
    if want < 2 {
        return whole;
    }
    let chunk = k.div_ceil(want).div_ceil(16) * 16;
    (k.div_ceil(chunk), chunk)
}

/// `fmt_of(path)` says how a weight that only feeds Linear/Conv2d as their weight is stored;
/// every other weight is f32. `align` is the storage offset alignment in elements.
pub fn lower(g: &Graph, fmt_of: &dyn Fn(&str) -> WeightFmt, align: u64) -> Result<Lowered> {
    lower_with(g, fmt_of, align, LowerOpts::default())
}

/// Lowering choices that change a step's dispatch, not only which built kernel runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowerOpts {
    /// Split long reductions of small conv/linear outputs over several workgroups.
    pub split_k: bool,
    /// Attention through the query-blocked flash kernel (else one workgroup per query row).
    pub flash_attention: bool,
    /// q8 Linear through int8 dot products (`linear_q8_dot`) where K and its split chunk are
    /// multiples of the 32-element quant block.
    pub int8_dot: bool,
}

impl Default for LowerOpts {
    fn default() -> Self {
        LowerOpts {
            split_k: true,
            flash_attention: true,
            int8_dot: false,
        }
    }
}

/// `lower` with explicit choices (A/B switches, and what the device's workarounds disable).
pub fn lower_with(
    g: &Graph,
    fmt_of: &dyn Fn(&str) -> WeightFmt,
    align: u64,
    opts: LowerOpts,
) -> Result<Lowered> {
    let split_k = opts.split_k;
    let n = g.nodes.len();
    let last = g.last_use();
    // Storage roots: a Reshape shares its input's storage, so a root lives until its last
    // reader through any view.
    let mut root: Vec<usize> = (0..n).collect();
    for (i, node) in g.nodes.iter().enumerate() {
        if matches!(node.op, Op::Reshape { .. }) {
            root[i] = root[node.inputs[0]];
        }
    }
    let mut end = vec![0usize; n];
    for i in 0..n {
        let r = root[i];
        end[r] = end[r].max(last[i]).max(i);
    }
    // Readers of each node, and whether a param is only ever a matrix weight.
    let mut readers: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    for (i, node) in g.nodes.iter().enumerate() {
        for (pos, &j) in node.inputs.iter().enumerate() {
            readers[j].push((i, pos));
        }
    }
    let is_output = |i: usize| g.outputs.contains(&i);
    // GroupNorm -> SiLU fusion: the SiLU's storage is produced by the GroupNorm.
    let mut fused_into = vec![None; n];
    for i in 0..n {
        if let Op::GroupNorm { .. } = g.nodes[i].op {
            if let [(j, 0)] = readers[i][..] {
                if matches!(g.nodes[j].op, Op::Silu) && !is_output(i) {
                    fused_into[i] = Some(j);
                }
            }
        }
    }

    let mut fused_silu = vec![false; n];
    for j in fused_into.iter().flatten() {
        fused_silu[*j] = true;
    }

    let mut arena = Arena::new(align);
    let mut store: Vec<Option<Storage>> = vec![None; n];
    let mut weights: Vec<WeightData> = Vec::new();
    let mut weight_ids: HashMap<(String, WeightFmt), usize> = HashMap::new();
    let mut wfmt = vec![WeightFmt::F32; n];
    let mut steps = Vec::new();
    let mut inputs = Vec::new();
    let mut id_checks = Vec::new();
    let input_pos: HashMap<usize, usize> = g
        .inputs()
        .into_iter()
        .enumerate()
        .map(|(k, i)| (i, k))
        .collect();

    for i in 0..n {
        let node = &g.nodes[i];
        let os = node.shape.as_slice();
        let on = numel(os);
        // Place the output (before freeing inputs, so it never overlaps what it reads).
        match &node.op {
            Op::Param { path } => {
                // Weights the kernels read in their stored format: matrices of linear and conv
                // layers, and embedding tables (SD's 49408 x 768 token table binds 40 MiB as
                // q8, under the 128 MiB storage binding of llvmpipe and many mobile GPUs, where
                // its f32 copy, 145 MiB, does not).
                let matrix = !readers[i].is_empty()
                    && readers[i].iter().all(|&(r, pos)| match g.nodes[r].op {
                        Op::Linear | Op::Conv2d { .. } => pos == 1,
                        Op::Embedding => pos == 0,
                        _ => false,
                    });
                let fmt = if matrix { fmt_of(path) } else { WeightFmt::F32 };
                wfmt[i] = fmt;
                let id = *weight_ids.entry((path.clone(), fmt)).or_insert_with(|| {
                    weights.push(WeightData::Param {
                        path: path.clone(),
                        fmt,
                        numel: on,
                    });
                    weights.len() - 1
                });
                store[i] = Some(Storage::Weight(id));
            }
            Op::Reshape { .. } => store[i] = store[node.inputs[0]],
            // A fused GroupNorm writes straight into its SiLU's storage (placed below); that SiLU
            // was placed when its GroupNorm was.
            _ if fused_into[i].is_some() || store[i].is_some() => {}
            _ => {
                let off = arena.alloc(on as u64);
                store[i] = Some(Storage::Arena {
                    off,
                    len: on as u64,
                });
            }
        }
        if let Some(j) = fused_into[i] {
            let len = numel(&g.nodes[j].shape) as u64;
            store[j] = Some(Storage::Arena {
                off: arena.alloc(len),
                len,
            });
        }
        let st = |j: usize| -> Result<Storage> {
            store[j].ok_or_else(|| {
                backend_error(format!("node {i} reads node {j} before it is placed"))
            })
        };
        let arg = |k: usize| st(node.inputs[k]);
        let sh = |k: usize| g.nodes[node.inputs[k]].shape.as_slice();
        let out = match fused_into[i] {
            Some(j) => st(j)?,
            None => st(i)?,
        };
        let mut step = |kernel: String, bufs: Vec<Storage>, push: Vec<u32>, groups: Groups| {
            steps.push(Step {
                node: i,
                kernel,
                bufs,
                push,
                groups,
            });
        };
        match &node.op {
            Op::Input { .. } => inputs.push(out),
            Op::Param { .. } | Op::Reshape { .. } => {}
            Op::Silu if fused_silu[i] => {}
            Op::Conv2d { stride, pads } => {
                let (xs, ws) = (sh(0), sh(1));
                let fmt = wfmt[node.inputs[1]];
                let k = ws[1] * ws[2] * ws[3];
                let m = os[0] * os[2] * os[3];
                let has_bias = node.inputs.len() > 2;
                let bias = if has_bias { arg(2)? } else { arg(0)? };
                let push = vec![
                    u(m)?,
                    u(ws[0])?,
                    u(k)?,
                    has_bias as u32,
                    u(numel(ws).div_ceil(32))?,
                    u(xs[1])?,
                    u(xs[2])?,
                    u(xs[3])?,
                    u(os[2])?,
                    u(os[3])?,
                    u(ws[2])?,
                    u(ws[3])?,
                    u(*stride)?,
                    u(pads[0])?,
                    u(pads[1])?,
                ];
                let ohw = os[2] * os[3];
                let split = Split::plan(m, ws[0], k, has_bias, ohw, ws[0], split_k, &mut arena);
                step(
                    format!("conv2d_{}", fmt.suffix()),
                    vec![arg(0)?, arg(1)?, bias, split.target(out)],
                    split.push(push)?,
                    split.grid(tile_grid(ws[0], m)?),
                );
                if let Some((kernel, bufs, push, groups)) = split.finish(bias, out, &mut arena)? {
                    step(kernel, bufs, push, groups);
                }
            }
            Op::Linear => {
                let ws = sh(1);
                let fmt = wfmt[node.inputs[1]];
                let (nn, k) = (ws[0], ws[1]);
                let m = numel(sh(0)) / k.max(1);
                let has_bias = node.inputs.len() > 2;
                let bias = if has_bias { arg(2)? } else { arg(0)? };
                let push = vec![
                    u(m)?,
                    u(nn)?,
                    u(k)?,
                    has_bias as u32,
                    u(numel(ws).div_ceil(32))?,
                ];
                let split = Split::plan(m, nn, k, has_bias, 1, nn, split_k, &mut arena);
                let dot = opts.int8_dot
                    && fmt == WeightFmt::Q8
                    && k.is_multiple_of(32)
                    && split.chunk.is_multiple_of(32);
                step(
                    if dot {
                        "linear_q8_dot".into()
                    } else {
                        format!("linear_{}", fmt.suffix())
                    },
                    vec![arg(0)?, arg(1)?, bias, split.target(out)],
                    split.push(push)?,
                    split.grid(tile_grid(nn, m)?),
                );
                if let Some((kernel, bufs, push, groups)) = split.finish(bias, out, &mut arena)? {
                    step(kernel, bufs, push, groups);
                }
            }
            Op::Add | Op::Mul => {
                let r = os.len();
                if r > 8 {
                    return Err(backend_error(format!(
                        "{}: rank {r} > 8 is not supported",
                        node.op.kind()
                    )));
                }
                let pad = |s: &[usize]| {
                    let mut p = vec![1; r - s.len()];
                    p.extend_from_slice(s);
                    p
                };
                let bstr = |s: &[usize]| {
                    let p = pad(s);
                    strides(&p)
                        .iter()
                        .zip(&p)
                        .map(|(&st, &d)| if d == 1 { 0 } else { st })
                        .collect::<Vec<_>>()
                };
                let contiguous = sh(0) == os && sh(1) == os;
                let mut push = vec![
                    u(on)?,
                    matches!(node.op, Op::Mul) as u32,
                    u(r)?,
                    contiguous as u32,
                ];
                push.extend(vec8(os)?);
                push.extend(vec8(&bstr(sh(0)))?);
                push.extend(vec8(&bstr(sh(1)))?);
                step(
                    "binary".into(),
                    vec![arg(0)?, arg(1)?, out],
                    push,
                    elementwise(on),
                );
            }
            Op::Scale { s } => step(
                "scale".into(),
                vec![arg(0)?, out],
                vec![u(on)?, f(*s)],
                elementwise(on),
            ),
            Op::Silu => step(
                "silu".into(),
                vec![arg(0)?, out],
                vec![u(on)?, 0],
                elementwise(on),
            ),
            Op::Gelu => step(
                "gelu".into(),
                vec![arg(0)?, out],
                vec![u(on)?, 0],
                elementwise(on),
            ),
            Op::GroupNorm { groups, eps } => {
                let xs = sh(0);
                let spatial = numel(&xs[2..]);
                let cpg = xs[1] / groups;
                let total = xs[0] * groups;
                let push = vec![
                    u(cpg * spatial)?,
                    u(spatial)?,
                    u(cpg)?,
                    u(*groups)?,
                    f(*eps),
                    fused_into[i].is_some() as u32,
                    u(total)?,
                ];
                step(
                    "group_norm".into(),
                    vec![arg(0)?, arg(1)?, arg(2)?, out],
                    push,
                    Groups::Linear(total as u64),
                );
            }
            Op::LayerNorm { eps } => {
                let c = *os.last().unwrap_or(&1);
                let rows = on / c.max(1);
                let push = vec![u(c)?, f(*eps), u(rows)?];
                step(
                    "layer_norm".into(),
                    vec![arg(0)?, arg(1)?, arg(2)?, out],
                    push,
                    Groups::Linear(rows as u64),
                );
            }
            Op::Attention { heads, causal } => {
                let (qs, ks, vs) = (sh(0), sh(1), sh(2));
                let (d, dv) = (qs[2] / heads, vs[2] / heads);
                let scale = f((1.0 / (d as f64).sqrt()) as f32);
                let head = [
                    u(qs[1])?,
                    u(ks[1])?,
                    u(qs[2])?,
                    u(vs[2])?,
                    u(*heads)?,
                    u(d)?,
                    u(dv)?,
                    *causal as u32,
                    scale,
                ];
                if opts.flash_attention {
                    // Blocks of 16 query rows x 64 output dims (flash_attention.wgsl).
                    let (qblocks, dvblocks) = (qs[1].div_ceil(16), dv.div_ceil(64));
                    let groups = qs[0] * heads * qblocks * dvblocks;
                    let mut push = head.to_vec();
                    push.extend([u(qblocks)?, u(dvblocks)?, u(groups)?]);
                    step(
                        "flash_attention".into(),
                        vec![arg(0)?, arg(1)?, arg(2)?, out],
                        push,
                        Groups::Linear(groups as u64),
                    );
                } else {
                    // One workgroup per query row; output dims per thread of a workgroup of 32:
                    // the smallest variant that fits.
                    let slots = match d.max(dv) {
                        0..=256 => 8,
                        257..=512 => 16,
                        _ => {
                            return Err(backend_error(format!(
                                "attention head size {d}/{dv} > 512 needs the flash-attention \
                                 kernel, which is disabled on this device"
                            )))
                        }
                    };
                    let rows = qs[0] * heads * qs[1];
                    let mut push = head.to_vec();
                    push.push(u(rows)?);
                    step(
                        format!("attention_{slots}"),
                        vec![arg(0)?, arg(1)?, arg(2)?, out],
                        push,
                        Groups::Linear(rows as u64),
                    );
                }
            }
            Op::Permute { perm } => {
                let xs = sh(0);
                if os.len() > 8 {
                    return Err(backend_error(format!(
                        "permute: rank {} > 8 is not supported",
                        os.len()
                    )));
                }
                let sx = strides(xs);
                let st: Vec<usize> = perm.iter().map(|&p| sx[p]).collect();
                let mut push = vec![u(on)?, u(os.len())?, 0, 0];
                push.extend(vec8(os)?);
                push.extend(vec8(&st)?);
                step("permute".into(), vec![arg(0)?, out], push, elementwise(on));
            }
            Op::Concat { axis } => {
                let inner = numel(&os[axis + 1..]);
                let mut off = 0;
                for k in 0..node.inputs.len() {
                    let xs = sh(k);
                    let xn = numel(xs);
                    let push = vec![
                        u(xn)?,
                        u(xs[*axis] * inner)?,
                        u(os[*axis] * inner)?,
                        u(off * inner)?,
                    ];
                    step("concat".into(), vec![arg(k)?, out], push, elementwise(xn));
                    off += xs[*axis];
                }
            }
            Op::Slice { axis, start, end } => {
                let xs = sh(0);
                let inner = numel(&xs[axis + 1..]);
                let push = vec![
                    u(on)?,
                    u((end - start) * inner)?,
                    u(xs[*axis] * inner)?,
                    u(start * inner)?,
                ];
                step("slice".into(), vec![arg(0)?, out], push, elementwise(on));
            }
            Op::Upsample2x => {
                let xs = sh(0);
                let r = xs.len();
                step(
                    "upsample2x".into(),
                    vec![arg(0)?, out],
                    vec![u(on)?, u(xs[r - 2])?, u(xs[r - 1])?],
                    elementwise(on),
                );
            }
            Op::TimestepEmbedding {
                dim,
                flip_sin_to_cos,
                shift,
            } => {
                weights.push(WeightData::Const(timestep_freqs(*dim, *shift)));
                let freqs = Storage::Weight(weights.len() - 1);
                let half = dim / 2;
                let nb = sh(0)[0] * half;
                let push = vec![u(nb)?, u(half)?, *flip_sin_to_cos as u32];
                step(
                    "timestep_embedding".into(),
                    vec![arg(0)?, freqs, out],
                    push,
                    elementwise(nb),
                );
            }
            Op::Embedding => {
                let ts = sh(0);
                if let Some(&k) = input_pos.get(&node.inputs[1]) {
                    id_checks.push((k, ts[0]));
                }
                let push = vec![u(on)?, u(ts[1])?, u(ts[0])?, u(numel(ts).div_ceil(32))?];
                step(
                    format!("embedding_{}", wfmt[node.inputs[0]].suffix()),
                    vec![arg(1)?, arg(0)?, out],
                    push,
                    elementwise(on),
                );
            }
        }
        // Release storage whose last reader (through any view) was this node, and values
        // nobody reads at all.
        let mut done: Vec<usize> = node.inputs.iter().map(|&j| root[j]).collect();
        done.push(root[i]);
        done.sort_unstable();
        done.dedup();
        for r in done {
            if end[r] <= i && !is_output(r) {
                if let Some(Storage::Arena { off, len }) = store[r] {
                    arena.free(off, len);
                }
            }
        }
    }
    let outputs = g
        .outputs
        .iter()
        .map(|&o| {
            Ok((
                store[o].ok_or_else(|| backend_error("an output has no storage"))?,
                g.nodes[o].shape.clone(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Lowered {
        steps,
        weights,
        inputs,
        outputs,
        arena_elems: arena.size(),
        id_checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Node, ValueType};

    fn node(op: Op, inputs: Vec<usize>, shape: &[usize]) -> Node {
        Node {
            op,
            inputs,
            shape: shape.to_vec(),
            ty: ValueType::F32,
        }
    }

    /// A chain of elementwise ops reuses storage: at most two values are live at a time.
    #[test]
    fn chain_reuses_storage() {
        let mut g = Graph::default();
        g.nodes.push(node(
            Op::Input {
                name: "x".into(),
                ty: ValueType::F32,
            },
            vec![],
            &[64],
        ));
        for i in 0..6 {
            g.nodes.push(node(Op::Scale { s: 2.0 }, vec![i], &[64]));
        }
        g.outputs = vec![6];
        let low = lower(&g, &|_| WeightFmt::F32, 1).unwrap();
        assert_eq!(low.steps.len(), 6);
        assert_eq!(low.arena_elems, 128);
    }

    /// GroupNorm + SiLU becomes one dispatch; a Reshape is a view with no dispatch.
    #[test]
    fn fuses_group_norm_silu_and_views_reshape() {
        let mut g = Graph::default();
        let f = ValueType::F32;
        g.nodes.push(node(
            Op::Input {
                name: "x".into(),
                ty: f,
            },
            vec![],
            &[1, 4, 3],
        ));
        g.nodes
            .push(node(Op::Param { path: "g".into() }, vec![], &[4]));
        g.nodes
            .push(node(Op::Param { path: "b".into() }, vec![], &[4]));
        g.nodes.push(node(
            Op::GroupNorm {
                groups: 2,
                eps: 1e-5,
            },
            vec![0, 1, 2],
            &[1, 4, 3],
        ));
        g.nodes.push(node(Op::Silu, vec![3], &[1, 4, 3]));
        g.nodes
            .push(node(Op::Reshape { shape: vec![12] }, vec![4], &[12]));
        g.outputs = vec![5];
        let low = lower(&g, &|_| WeightFmt::F32, 1).unwrap();
        assert_eq!(low.steps.len(), 1);
        assert_eq!(low.steps[0].kernel, "group_norm");
        assert_eq!(low.steps[0].push[5], 1, "silu flag");
        assert_eq!(
            low.outputs[0].0, low.steps[0].bufs[3],
            "the reshape views the fused output"
        );
    }
}

/// A split-K product in the making: its scratch for the partial sums (placed in the arena for
/// just the two steps) and what the product and the `split_sum` step push.
struct Split {
    slices: usize,
    chunk: usize,
    /// Scratch (offset, len) in the arena; `None` when unsplit.
    scratch: Option<(u64, u64)>,
    out_len: usize,
    has_bias: bool,
    bias_div: usize,
    bias_mod: usize,
}

impl Split {
    /// The output is `rows` x `cols`; its bias index is (i / bias_div) % bias_mod.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        rows: usize,
        cols: usize,
        k: usize,
        has_bias: bool,
        bias_div: usize,
        bias_mod: usize,
        enabled: bool,
        arena: &mut Arena,
    ) -> Split {
        let (slices, chunk) = if enabled {
            k_split(rows, cols, k)
        } else {
            (1, k.max(1).div_ceil(16) * 16)
        };
        let out_len = rows * cols;
        let scratch = (slices > 1).then(|| {
            let len = (slices * out_len) as u64;
            (arena.alloc(len), len)
        });
        Split {
            slices,
            chunk,
            scratch,
            out_len,
            has_bias,
            bias_div: bias_div.max(1),
            bias_mod: bias_mod.max(1),
        }
    }

    /// Where the product writes: the scratch when split, else the output.
    fn target(&self, out: Storage) -> Storage {
        match self.scratch {
            Some((off, len)) => Storage::Arena { off, len },
            None => out,
        }
    }

    /// The product's push constants with `kchunk` appended; split, the bias waits for
    /// `split_sum` (push word 3 is `has_bias` in both kernels).
    fn push(&self, mut push: Vec<u32>) -> Result<Vec<u32>> {
        if self.scratch.is_some() {
            push[3] = 0;
        }
        push.push(u(self.chunk)?);
        Ok(push)
    }

    fn grid(&self, g: Groups) -> Groups {
        match g {
            Groups::Grid([x, y, _]) => Groups::Grid([x, y, self.slices as u32]),
            other => other,
        }
    }

    /// The `split_sum` step, if split, and the scratch released (nothing after reads it).
    #[allow(clippy::type_complexity)]
    fn finish(
        &self,
        bias: Storage,
        out: Storage,
        arena: &mut Arena,
    ) -> Result<Option<(String, Vec<Storage>, Vec<u32>, Groups)>> {
        let Some((off, len)) = self.scratch else {
            return Ok(None);
        };
        arena.free(off, len);
        Ok(Some((
            "split_sum".into(),
            vec![Storage::Arena { off, len }, bias, out],
            vec![
                u(self.out_len)?,
                u(self.slices)?,
                self.has_bias as u32,
                u(self.bias_div)?,
                u(self.bias_mod)?,
            ],
            elementwise(self.out_len),
        )))
    }
}

#[cfg(test)]
mod split_tests {
    use super::k_split;

    #[test]
    fn only_small_outputs_with_long_k_are_split() {
        // SD-1.5 at 64x64 latents: 4096 pixels x 320 channels fills the device; unsplit.
        assert_eq!(k_split(4096, 320, 2880).0, 1);
        // 8x8 latents at 1280 channels, K = 11520: 20 tiles, split.
        let (s, c) = k_split(64, 1280, 11520);
        assert!(s > 1 && c % 16 == 0 && s * c >= 11520 && (s - 1) * c < 11520);
        // Short K is never split.
        assert_eq!(k_split(16, 64, 130), (1, 144));
    }
}
