//! Vulkan backend conformance: every IR op, several shapes including odd ones, against the
//! reference backend, with a per-op tolerance; then whole tiny models.
//!
//! Without a Vulkan device the tests print a loud SKIP and pass, unless `CI=true` or
//! `LDM_REQUIRE_VULKAN=1`, where a missing device fails them.
#![cfg(feature = "vulkan")]

use ldm_edge::arch::{init::random_param, ModelConfig};
use ldm_edge::backend::reference::ReferenceBackend;
use ldm_edge::backend::vulkan::{VariantUse, VulkanBackend, VulkanOptions};
use ldm_edge::backend::{Backend, Tensor, WeightSource};
use ldm_edge::format::quant::{dequantize_q4, dequantize_q8, quantize_q4, quantize_q8};
use ldm_edge::format::DType;
use ldm_edge::graph::{shape::infer, Graph, Node, Op, ValueType};
use std::borrow::Cow;
use std::collections::HashMap;

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("LDM_REQUIRE_VULKAN").is_ok_and(|v| v == "1")
}

fn backend(opts: VulkanOptions) -> Option<VulkanBackend> {
    match VulkanBackend::with_options(opts) {
        Ok(b) => Some(b),
        Err(e) if required() => {
            panic!("Vulkan is required here (CI / LDM_REQUIRE_VULKAN) but unavailable: {e}")
        }
        Err(e) => {
            eprintln!(
                "\n*** SKIP: no usable Vulkan device ({e}); Vulkan conformance NOT tested ***\n"
            );
            None
        }
    }
}

/// Per-op tolerance on max|a-b| / max(max|ref|, 1e-6), for f32 storage.
fn tolerance(kind: &str) -> f32 {
    match kind {
        // Copies and lookups are exact.
        "reshape" | "permute" | "concat" | "slice" | "upsample2x" | "embedding" => 0.0,
        "add" | "mul" | "scale" => 1e-6,
        "silu" | "gelu" | "timestep_embedding" => 1e-6,
        // f32 accumulation over K, two-pass f32 moments, online softmax.
        "conv2d" | "linear" | "group_norm" | "layer_norm" | "attention" => 1e-5,
        _ => 1e-5,
    }
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| {
        if x.is_nan() != y.is_nan() {
            f32::INFINITY
        } else {
            m.max((x - y).abs())
        }
    }) / scale
}

/// A tiny graph builder (the tracer lives behind `Ops`; here we want single raw ops).
#[derive(Default)]
struct B {
    g: Graph,
    inputs: Vec<Tensor>,
    weights: HashMap<String, Tensor>,
    seed: u64,
}

impl B {
    fn data(&mut self, n: usize, amp: f32) -> Vec<f32> {
        self.seed += 1;
        // random_param of a 1-D ".bias" path is a plain uniform draw; scale it to taste.
        random_param(self.seed, "x.bias", &[n])
            .iter()
            .map(|v| v * amp * 10.0)
            .collect()
    }
    fn push(&mut self, op: Op, inputs: Vec<usize>, shape: Vec<usize>) -> usize {
        self.g.nodes.push(Node {
            op,
            inputs,
            shape,
            ty: ValueType::F32,
        });
        self.g.nodes.len() - 1
    }
    fn input(&mut self, shape: &[usize]) -> usize {
        let d = self.data(shape.iter().product(), 1.0);
        self.input_with(shape, d)
    }
    fn input_with(&mut self, shape: &[usize], data: Vec<f32>) -> usize {
        let name = format!("in{}", self.inputs.len());
        self.inputs.push(Tensor::new(shape.to_vec(), data).unwrap());
        self.push(
            Op::Input {
                name,
                ty: ValueType::F32,
            },
            vec![],
            shape.to_vec(),
        )
    }
    fn param(&mut self, shape: &[usize]) -> usize {
        let path = format!("p{}.weight", self.g.nodes.len());
        let d = self.data(shape.iter().product(), 0.5);
        self.weights
            .insert(path.clone(), Tensor::new(shape.to_vec(), d).unwrap());
        self.push(Op::Param { path }, vec![], shape.to_vec())
    }
    fn op(&mut self, op: Op, ins: &[usize]) -> usize {
        let shapes: Vec<&[usize]> = ins
            .iter()
            .map(|&i| self.g.nodes[i].shape.as_slice())
            .collect();
        let s = infer(&op, &shapes).unwrap();
        self.push(op, ins.to_vec(), s)
    }
    fn finish(mut self, outs: &[usize]) -> Self {
        self.g.outputs = outs.to_vec();
        self
    }
}

/// Runs a graph on both backends; returns the relative error of every output.
fn compare(vk: &VulkanBackend, g: &Graph, w: &dyn WeightSource, inputs: &[Tensor]) -> f32 {
    let r = ReferenceBackend.prepare(g, w).unwrap().run(inputs).unwrap();
    let mut plan = vk.prepare(g, w).unwrap();
    // Run twice: the recorded command buffer must replay with the same result.
    let _ = plan.run(inputs).unwrap();
    let v = plan.run(inputs).unwrap();
    r.iter()
        .zip(&v)
        .map(|(r, v)| {
            assert_eq!(r.shape, v.shape);
            rel_err(&v.data, &r.data)
        })
        .fold(0.0, f32::max)
}

fn check(vk: &VulkanBackend, kind: &str, label: &str, b: B, errors: &mut Vec<String>) {
    let e = compare(vk, &b.g, &b.weights, &b.inputs);
    let tol = tolerance(kind);
    println!("{kind:>20} {label:<40} rel err {e:.2e} (tol {tol:.0e})");
    if e > tol {
        errors.push(format!("{kind} {label}: {e:.3e} > {tol:.0e}"));
    }
}

fn single(op: Op, shapes: &[&[usize]]) -> B {
    let mut b = B::default();
    let ins: Vec<usize> = shapes.iter().map(|s| b.input(s)).collect();
    let y = b.op(op, &ins);
    b.finish(&[y])
}

fn conv(x: &[usize], w: &[usize], bias: bool, stride: usize, pads: [usize; 4]) -> B {
    let mut b = B::default();
    let xi = b.input(x);
    let wi = b.param(w);
    let mut ins = vec![xi, wi];
    if bias {
        ins.push(b.param(&[w[0]]));
    }
    let y = b.op(Op::Conv2d { stride, pads }, &ins);
    b.finish(&[y])
}

fn embedding(vocab: usize, d: usize, ids: &[usize]) -> B {
    let mut b = B::default();
    let n: usize = ids.iter().product();
    let table = b.param(&[vocab, d]);
    let id_data = (0..n).map(|i| ((i * 5 + 3) % vocab) as f32).collect();
    let ii = b.input_with(ids, id_data);
    let y = b.op(Op::Embedding, &[table, ii]);
    b.finish(&[y])
}

fn linear(x: &[usize], w: &[usize], bias: bool) -> B {
    let mut b = B::default();
    let xi = b.input(x);
    let wi = b.param(w);
    let mut ins = vec![xi, wi];
    if bias {
        ins.push(b.param(&[w[0]]));
    }
    let y = b.op(Op::Linear, &ins);
    b.finish(&[y])
}

fn norm(op: Op, x: &[usize], c: usize) -> B {
    let mut b = B::default();
    let xi = b.input(x);
    let g = b.param(&[c]);
    let be = b.param(&[c]);
    let y = b.op(op, &[xi, g, be]);
    b.finish(&[y])
}

/// GroupNorm (alone and fused with SiLU) and LayerNorm: the kernels with reduction variants.
fn norm_cases(vk: &VulkanBackend, e: &mut Vec<String>) {
    for (x, groups, eps) in [
        (&[2, 6, 5, 3][..], 3, 1e-5),
        (&[1, 32, 9, 7], 8, 1e-6),
        (&[1, 4, 300], 2, 1e-5),
        (&[3, 5], 5, 1e-5),
    ] {
        check(
            vk,
            "group_norm",
            &format!("{x:?} g{groups}"),
            norm(Op::GroupNorm { groups, eps }, x, x[1]),
            e,
        );
        // GroupNorm followed by SiLU is fused into one kernel.
        let mut b = norm(Op::GroupNorm { groups, eps }, x, x[1]);
        let gn = b.g.outputs[0];
        let y = b.op(Op::Silu, &[gn]);
        check(
            vk,
            "group_norm",
            &format!("{x:?} g{groups} +silu (fused)"),
            b.finish(&[y]),
            e,
        );
    }
    for x in [&[3, 7][..], &[2, 5, 33], &[1, 1, 300]] {
        let c = *x.last().unwrap();
        check(
            vk,
            "layer_norm",
            &format!("{x:?}"),
            norm(Op::LayerNorm { eps: 1e-5 }, x, c),
            e,
        );
    }
}

#[test]
fn every_op_matches_reference() {
    let Some(vk) = backend(VulkanOptions::default()) else {
        return;
    };
    let mut errors = Vec::new();
    let e = &mut errors;

    for (x, w, bias, s, p) in [
        (&[1, 3, 5, 7][..], &[4, 3, 3, 3][..], true, 1, [1, 1, 1, 1]),
        (&[2, 5, 9, 6], &[7, 5, 3, 3], true, 2, [1, 1, 1, 1]),
        (&[1, 16, 4, 5], &[33, 16, 1, 1], false, 1, [0; 4]),
        (&[1, 6, 11, 13], &[70, 6, 3, 3], true, 2, [0, 0, 1, 1]),
        // Small outputs with long K run split-K (lower::k_split) plus split_sum: 2 slices, the
        // last one short; and one with a stride, odd sizes and no bias.
        (&[1, 64, 4, 4], &[40, 64, 3, 3], true, 1, [1, 1, 1, 1]),
        (&[1, 70, 5, 7], &[9, 70, 3, 3], false, 2, [1, 0, 1, 0]),
    ] {
        check(
            &vk,
            "conv2d",
            &format!("{x:?}*{w:?} s{s} p{p:?}"),
            conv(x, w, bias, s, p),
            e,
        );
    }
    for (x, w, bias) in [
        (&[3, 5][..], &[7, 5][..], true),
        (&[2, 9, 33], &[65, 33], false),
        (&[1, 130], &[70, 130], true),
        (&[2, 77, 64], &[128, 64], true),
        // Split K: 4 slices of 288, the last 236 long.
        (&[2, 3, 1100], &[40, 1100], true),
    ] {
        check(
            &vk,
            "linear",
            &format!("{x:?}*{w:?}"),
            linear(x, w, bias),
            e,
        );
    }
    for op in [Op::Add, Op::Mul] {
        for (a, bb) in [
            (&[2, 3, 5][..], &[2, 3, 5][..]),
            (&[2, 3, 4, 5], &[3, 1, 1]),
            (&[4, 1], &[1, 5]),
            (&[2, 7, 9], &[9]),
            (&[1], &[3, 7]),
        ] {
            check(
                &vk,
                op.kind(),
                &format!("{a:?}, {bb:?}"),
                single(op.clone(), &[a, bb]),
                e,
            );
        }
    }
    for s in [&[3, 7][..], &[1000], &[2, 3, 5, 7]] {
        check(
            &vk,
            "scale",
            &format!("{s:?}"),
            single(Op::Scale { s: -0.37 }, &[s]),
            e,
        );
        check(&vk, "silu", &format!("{s:?}"), single(Op::Silu, &[s]), e);
        check(&vk, "gelu", &format!("{s:?}"), single(Op::Gelu, &[s]), e);
    }
    norm_cases(&vk, e);
    for (q, k, v, heads, causal) in [
        (&[2, 5, 8][..], &[2, 7, 8][..], &[2, 7, 12][..], 2, false),
        (&[1, 9, 16], &[1, 9, 16], &[1, 9, 16], 1, true),
        (&[2, 37, 40], &[2, 11, 40], &[2, 11, 40], 5, false),
        (&[1, 4, 320], &[1, 4, 320], &[1, 4, 320], 2, false),
        (&[1, 70, 16], &[1, 70, 16], &[1, 70, 16], 2, true),
        (&[1, 70, 16], &[1, 70, 16], &[1, 70, 16], 2, false),
        // The SD autoencoder's mid attention: one 512-wide head (the wide variant).
        (&[1, 40, 512], &[1, 40, 512], &[1, 40, 512], 1, false),
        (&[2, 6, 300], &[2, 33, 300], &[2, 33, 260], 1, false),
    ] {
        let label = format!("q{q:?} k{k:?} v{v:?} h{heads} causal={causal}");
        check(
            &vk,
            "attention",
            &label,
            single(Op::Attention { heads, causal }, &[q, k, v]),
            e,
        );
    }
    // Reshape is a view: check it as an output and as the input of another op.
    for (x, s) in [
        (&[2, 3, 4][..], vec![6, 4]),
        (&[5, 7], vec![35]),
        (&[1, 2, 3, 5], vec![2, 15]),
    ] {
        check(
            &vk,
            "reshape",
            &format!("{x:?}->{s:?}"),
            single(Op::Reshape { shape: s.clone() }, &[x]),
            e,
        );
        let mut b = B::default();
        let xi = b.input(x);
        let r = b.op(Op::Reshape { shape: s.clone() }, &[xi]);
        let y = b.op(Op::Scale { s: 2.0 }, &[r]);
        let z = b.op(Op::Add, &[y, r]);
        check(
            &vk,
            "reshape",
            &format!("{x:?}->{s:?} then ops"),
            b.finish(&[z, r]),
            e,
        );
    }
    for (x, p) in [
        (&[2, 3, 4][..], vec![2, 0, 1]),
        (&[2, 3, 5, 7], vec![0, 2, 3, 1]),
        (&[4, 5], vec![1, 0]),
    ] {
        check(
            &vk,
            "permute",
            &format!("{x:?} {p:?}"),
            single(Op::Permute { perm: p.clone() }, &[x]),
            e,
        );
    }
    for (shapes, axis) in [
        (vec![&[2, 3, 4][..], &[2, 5, 4]], 1),
        (vec![&[1, 3][..], &[2, 3]], 0),
        (vec![&[2, 3, 1][..], &[2, 3, 4], &[2, 3, 3]], 2),
    ] {
        check(
            &vk,
            "concat",
            &format!("{shapes:?} axis {axis}"),
            single(Op::Concat { axis }, &shapes),
            e,
        );
    }
    for (x, axis, s0, s1) in [
        (&[2, 7, 5][..], 1, 2, 5),
        (&[2, 7, 5], 2, 0, 3),
        (&[3, 4], 0, 1, 2),
    ] {
        let op = Op::Slice {
            axis,
            start: s0,
            end: s1,
        };
        check(
            &vk,
            "slice",
            &format!("{x:?} axis {axis} {s0}..{s1}"),
            single(op, &[x]),
            e,
        );
    }
    for x in [&[1, 2, 3, 5][..], &[2, 3, 4, 4], &[3, 1, 1]] {
        check(
            &vk,
            "upsample2x",
            &format!("{x:?}"),
            single(Op::Upsample2x, &[x]),
            e,
        );
    }
    for (t, dim, flip, shift) in [
        (vec![0.0, 1.5, 999.0], 8, true, 1.0),
        (vec![981.0, 1.0], 32, false, 0.0),
        (vec![500.0, 250.5, 3.0, 999.0, 0.0], 320, true, 0.0),
    ] {
        let mut b = B::default();
        let ti = b.input_with(&[t.len()], t.clone());
        let y = b.op(
            Op::TimestepEmbedding {
                dim,
                flip_sin_to_cos: flip,
                shift,
            },
            &[ti],
        );
        check(
            &vk,
            "timestep_embedding",
            &format!("t{t:?} dim {dim}"),
            b.finish(&[y]),
            e,
        );
    }
    for (v, d, ids) in [
        (11, 5, vec![2usize, 3]),
        (64, 33, vec![1, 16]),
        (7, 1, vec![4]),
    ] {
        let mut b = B::default();
        let n: usize = ids.iter().product();
        let table = b.param(&[v, d]);
        let id_data = (0..n).map(|i| ((i * 5 + 3) % v) as f32).collect();
        let ii = b.input_with(&ids, id_data);
        let y = b.op(Op::Embedding, &[table, ii]);
        check(
            &vk,
            "embedding",
            &format!("[{v},{d}] ids {ids:?}"),
            b.finish(&[y]),
            e,
        );
    }
    assert!(
        errors.is_empty(),
        "ops outside tolerance:\n{}",
        errors.join("\n")
    );
}

#[test]
fn out_of_vocabulary_id_is_an_error() {
    let Some(vk) = backend(VulkanOptions::default()) else {
        return;
    };
    let mut b = B::default();
    let table = b.param(&[5, 3]);
    let ii = b.input_with(&[2], vec![1.0, 5.0]);
    let y = b.op(Op::Embedding, &[table, ii]);
    let b = b.finish(&[y]);
    let mut plan = vk.prepare(&b.g, &b.weights).unwrap();
    assert!(plan.run(&b.inputs).is_err());
}

/// A weight source that stores every 2-D+ weight as q8, q4 or f16 bytes and reports the
/// dequantized values through `load_f32`, so the reference sees exactly what the bytes mean.
struct Stored {
    f32s: HashMap<String, Tensor>,
    raw: HashMap<String, (DType, Vec<u8>)>,
}

impl Stored {
    fn new(w: &HashMap<String, Tensor>, dt: DType) -> Self {
        let mut f32s = HashMap::new();
        let mut raw = HashMap::new();
        for (k, t) in w {
            if t.shape.len() < 2 {
                f32s.insert(k.clone(), t.clone());
                continue;
            }
            let n = t.data.len();
            let (bytes, deq) = match dt {
                DType::Q8 => {
                    let q = quantize_q8(&t.data);
                    let d = dequantize_q8(&q, n);
                    (q, d)
                }
                DType::Q4 => {
                    let q = quantize_q4(&t.data);
                    let d = dequantize_q4(&q, n);
                    (q, d)
                }
                _ => {
                    let h: Vec<half::f16> =
                        t.data.iter().map(|&x| half::f16::from_f32(x)).collect();
                    (
                        h.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        h.iter().map(|x| x.to_f32()).collect(),
                    )
                }
            };
            f32s.insert(k.clone(), Tensor::new(t.shape.clone(), deq).unwrap());
            raw.insert(k.clone(), (dt, bytes));
        }
        Stored { f32s, raw }
    }
}

impl WeightSource for Stored {
    fn shape(&self, path: &str) -> Option<Vec<usize>> {
        self.f32s.shape(path)
    }
    fn load_f32(&self, path: &str) -> ldm_edge::Result<Vec<f32>> {
        self.f32s.load_f32(path)
    }
    fn raw_dtype(&self, path: &str) -> Option<DType> {
        Some(self.raw.get(path).map_or(DType::F32, |r| r.0))
    }
    fn load_raw(&self, path: &str) -> Option<(DType, Cow<'_, [u8]>)> {
        self.raw
            .get(path)
            .map(|(d, b)| (*d, Cow::Borrowed(b.as_slice())))
    }
}

/// The reductions of the norm kernels in both variants: subgroupAdd (the default where the
/// device has subgroup arithmetic, as llvmpipe does) and the portable workgroup-memory tree.
#[test]
fn norm_reduction_variants_match_reference() {
    for subgroup_reduce in [true, false] {
        let Some(vk) = backend(VulkanOptions {
            subgroup_reduce,
            ..VulkanOptions::default()
        }) else {
            return;
        };
        let choice = vk.kernel_choice().expect("kernel choice");
        println!("norm kernels: {choice:?} (asked subgroup_reduce={subgroup_reduce})");
        if subgroup_reduce && !choice.subgroup_reduce {
            eprintln!(
                "*** this device has no subgroup arithmetic: the `_sg` variant is NOT tested ***"
            );
        }
        let mut errors = Vec::new();
        norm_cases(&vk, &mut errors);
        assert!(errors.is_empty(), "{choice:?}: {}", errors.join("\n"));
    }
}

/// q8, q4 and f16 weights are read by the conv/linear kernels themselves (dequantized in the
/// tile loads). Compared with the reference on the dequantized values, so the f32 tolerance (1e-5) holds.
#[test]
fn quantized_and_f16_weights_match_reference() {
    let Some(vk) = backend(VulkanOptions::default()) else {
        return;
    };
    let mut errors = Vec::new();
    for dt in [DType::Q8, DType::Q4, DType::F16] {
        let cases: Vec<(String, B)> = vec![
            (
                "conv [1,3,5,7]*[4,3,3,3]".into(),
                conv(&[1, 3, 5, 7], &[4, 3, 3, 3], true, 1, [1; 4]),
            ),
            (
                "conv [2,5,9,6]*[7,5,3,3] s2".into(),
                conv(&[2, 5, 9, 6], &[7, 5, 3, 3], true, 2, [1; 4]),
            ),
            (
                "conv [1,40,4,5]*[33,40,1,1]".into(),
                conv(&[1, 40, 4, 5], &[33, 40, 1, 1], false, 1, [0; 4]),
            ),
            ("linear [3,5]*[7,5]".into(), linear(&[3, 5], &[7, 5], true)),
            (
                "linear [2,9,33]*[65,33]".into(),
                linear(&[2, 9, 33], &[65, 33], false),
            ),
            (
                "linear [1,130]*[70,130]".into(),
                linear(&[1, 130], &[70, 130], true),
            ),
            (
                "linear [2,3,1100]*[40,1100] split-K".into(),
                linear(&[2, 3, 1100], &[40, 1100], true),
            ),
            (
                "conv [1,64,4,4]*[40,64,3,3] split-K".into(),
                conv(&[1, 64, 4, 4], &[40, 64, 3, 3], true, 1, [1; 4]),
            ),
            // Tables are read in their stored format too (SD's token table: 40 MiB as q8,
            // 145 MiB as f32), including a last partial block.
            ("embedding [7,5] ids [4]".into(), embedding(7, 5, &[4])),
            (
                "embedding [64,33] ids [1,16]".into(),
                embedding(64, 33, &[1, 16]),
            ),
            (
                "embedding [100,48] ids [2,77]".into(),
                embedding(100, 48, &[2, 77]),
            ),
        ];
        for (label, b) in cases {
            let src = Stored::new(&b.weights, dt);
            let err = compare(&vk, &b.g, &src, &b.inputs);
            println!(
                "{:>20} {label:<40} rel err {err:.2e} (tol 1e-5)",
                format!("{dt:?}")
            );
            if err > 1e-5 {
                errors.push(format!("{dt:?} {label}: {err:.3e}"));
            }
        }
    }
    assert!(
        errors.is_empty(),
        "outside tolerance:\n{}",
        errors.join("\n")
    );
}

/// Attention at the shapes the models run: SD-1.5's heads (40/80/160 wide, 8 heads), the text
/// encoders' causal 77-token self-attention (64), the SD decoder's one 512-wide head, and
/// self-attention over 4096 tokens (a 64x64 latent), through the flash kernel and through the
/// per-row kernel it replaces (the fallback a workaround or `LDM_VULKAN_DISABLE=flash` picks).
#[test]
fn attention_kernels_match_reference_at_model_shapes() {
    // (batch, lq, lk, heads, d, dv, causal); the per-row kernel skips the 4096-token cases.
    let cases: [(usize, usize, usize, usize, usize, usize, bool); 10] = [
        (1, 4096, 77, 8, 40, 40, false),
        (2, 1024, 1024, 8, 40, 40, false),
        (2, 77, 77, 12, 64, 64, true),
        (1, 4096, 4096, 1, 64, 64, false),
        (1, 1024, 1024, 8, 80, 80, false),
        (2, 256, 77, 8, 160, 160, false),
        (1, 1024, 1024, 1, 512, 512, false),
        (1, 77, 77, 1, 512, 512, true),
        // Odd sizes: partial query blocks, key tiles and output-dim blocks.
        (3, 37, 50, 3, 24, 70, false),
        (1, 33, 33, 2, 130, 130, true),
    ];
    for flash in [true, false] {
        let Some(vk) = backend(VulkanOptions {
            flash_attention: flash,
            ..VulkanOptions::default()
        }) else {
            return;
        };
        let mut errors = Vec::new();
        for (b, lq, lk, heads, d, dv, causal) in cases {
            if !flash && lq * lk > 1 << 21 {
                continue;
            }
            let t = std::time::Instant::now();
            check(
                &vk,
                "attention",
                &format!("flash={flash} b{b} {lq}x{lk} h{heads} d{d}/{dv} causal={causal}"),
                single(
                    Op::Attention { heads, causal },
                    &[
                        &[b, lq, heads * d],
                        &[b, lk, heads * d],
                        &[b, lk, heads * dv],
                    ],
                ),
                &mut errors,
            );
            println!("    {:.1} s with the reference", t.elapsed().as_secs_f64());
        }
        assert!(errors.is_empty(), "flash={flash}: {}", errors.join("\n"));
    }
}

/// The `_f16` conv/linear variants (f16 tiles and products, f32 sums), on any device with
/// `shaderFloat16` (llvmpipe has it). Their own tolerance: inputs and weights rounded to f16
/// (2^-11 relative) and 16-term f16 partial sums, stated as 3e-3 of the output's range.
#[test]
fn f16_math_variants_match_reference() {
    let Some(vk) = backend(VulkanOptions {
        f16_math: VariantUse::On,
        ..VulkanOptions::default()
    }) else {
        return;
    };
    let choice = vk.kernel_choice().expect("kernel choice");
    if !choice.f16_math {
        assert!(!required(), "this device has no shaderFloat16: {choice:?}");
        eprintln!("*** SKIP: no shaderFloat16; the f16-math variants are NOT tested ***");
        return;
    }
    let mut errors = Vec::new();
    for dt in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
        for (label, b) in [
            (
                "conv 3x3",
                conv(&[1, 3, 5, 7], &[4, 3, 3, 3], true, 1, [1; 4]),
            ),
            (
                "conv s2",
                conv(&[2, 5, 9, 6], &[7, 5, 3, 3], true, 2, [1; 4]),
            ),
            (
                "conv 1x1",
                conv(&[1, 40, 4, 5], &[33, 40, 1, 1], false, 1, [0; 4]),
            ),
            (
                "conv split-K",
                conv(&[1, 64, 4, 4], &[40, 64, 3, 3], true, 1, [1; 4]),
            ),
            (
                "conv SD-like",
                conv(&[1, 320, 16, 16], &[320, 320, 3, 3], true, 1, [1; 4]),
            ),
            ("linear", linear(&[2, 9, 33], &[65, 33], false)),
            ("linear split-K", linear(&[2, 3, 1100], &[40, 1100], true)),
            ("linear SD-like", linear(&[2, 77, 768], &[320, 768], true)),
        ] {
            let src = Stored::new(&b.weights, dt);
            let t = std::time::Instant::now();
            let err = compare(&vk, &b.g, &src, &b.inputs);
            println!(
                "f16 math {dt:?} {label:<16} rel err {err:.2e} (tol 3e-3), {:.1} s",
                t.elapsed().as_secs_f64()
            );
            if err > 3e-3 {
                errors.push(format!("{dt:?} {label}: {err:.3e}"));
            }
        }
    }
    assert!(
        errors.is_empty(),
        "outside tolerance:\n{}",
        errors.join("\n")
    );
}

/// `linear_q8_dot`: q8 weights against activations quantized per 32-block to int8, through
/// dot4I8Packed (llvmpipe runs it, unaccelerated). Against the reference on the dequantized
/// weights, the error is the activations' int8 rounding (1/254 of each block's range),
/// stated as 1e-2 of the output's range. Shapes where K or the split chunk is not a multiple of
/// 32 take `linear_q8` instead, and must stay at the f32 tolerance.
#[test]
fn int8_dot_linear_matches_reference() {
    let Some(vk) = backend(VulkanOptions {
        int8_dot: VariantUse::On,
        ..VulkanOptions::default()
    }) else {
        return;
    };
    let choice = vk.kernel_choice().expect("kernel choice");
    if !choice.int8_dot {
        assert!(
            !required(),
            "this device has no integer dot product: {choice:?}"
        );
        eprintln!("*** SKIP: no shaderIntegerDotProduct; linear_q8_dot is NOT tested ***");
        return;
    }
    let mut errors = Vec::new();
    for (x, w, tol) in [
        (&[3, 64][..], &[7, 64][..], 1e-2),
        (&[2, 77, 768], &[320, 768], 1e-2),
        (&[1, 130, 320], &[70, 320], 1e-2),
        // Split K, chunks of 288 = 9 blocks.
        (&[2, 3, 1152], &[40, 1152], 1e-2),
        // K = 33: not block-aligned, runs linear_q8.
        (&[2, 9, 33], &[65, 33], 1e-5),
    ] {
        let b = linear(x, w, true);
        let src = Stored::new(&b.weights, DType::Q8);
        let t = std::time::Instant::now();
        let err = compare(&vk, &b.g, &src, &b.inputs);
        println!(
            "int8 dot {x:?}*{w:?} rel err {err:.2e} (tol {tol:.0e}), {:.1} s",
            t.elapsed().as_secs_f64()
        );
        if err > tol {
            errors.push(format!("{x:?}*{w:?}: {err:.3e} > {tol:.0e}"));
        }
    }
    assert!(
        errors.is_empty(),
        "outside tolerance:\n{}",
        errors.join("\n")
    );
}

/// `f16_weights` keeps f32 sources as f16 on the device: error against the f32 reference is
/// the f16 rounding of the weights, stated as 2e-3.
#[test]
fn f16_weight_storage_is_close() {
    let Some(vk) = backend(VulkanOptions {
        f16_weights: true,
        ..VulkanOptions::default()
    }) else {
        return;
    };
    for (label, b) in [
        (
            "conv",
            conv(&[1, 6, 11, 13], &[70, 6, 3, 3], true, 2, [0, 0, 1, 1]),
        ),
        ("linear", linear(&[2, 77, 64], &[128, 64], true)),
    ] {
        let err = compare(&vk, &b.g, &b.weights, &b.inputs);
        println!("f16 storage {label}: rel err {err:.2e} (tol 2e-3)");
        assert!(err <= 2e-3, "{label}: {err}");
    }
}

fn model_weights(cfg: &ModelConfig) -> HashMap<String, Tensor> {
    cfg.param_specs()
        .unwrap()
        .into_iter()
        .map(|(p, s)| {
            let d = random_param(7, &p, &s);
            (p, Tensor { shape: s, data: d })
        })
        .collect()
}

fn noise(seed: u64, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor {
        shape: shape.to_vec(),
        data: random_param(seed, "input.bias", &[n])
            .iter()
            .map(|v| v * 10.0)
            .collect(),
    }
}

#[test]
fn tiny_models_match_reference() {
    let Some(vk) = backend(VulkanOptions::default()) else {
        return;
    };
    let cfg = ModelConfig::tiny(64);
    let w = model_weights(&cfg);
    let l = cfg.text_encoder.max_position_embeddings;
    let ids = Tensor::new(
        vec![2, l],
        (0..2 * l).map(|i| ((i * 7 + 1) % 64) as f32).collect(),
    )
    .unwrap();
    let mut report = Vec::new();
    let mut bad = Vec::new();
    let cases = [
        ("text", cfg.text_graph(2).unwrap(), vec![ids]),
        (
            "unet",
            cfg.unet_graph(2, 8, 6).unwrap(),
            vec![
                noise(1, &[2, 4, 8, 6]),
                Tensor {
                    shape: vec![2],
                    data: vec![981.0, 1.0],
                },
                noise(3, &[2, l, cfg.unet.cross_attention_dim]),
            ],
        ),
        (
            "decoder",
            cfg.decoder_graph(1, 5, 7).unwrap(),
            vec![noise(4, &[1, 4, 5, 7])],
        ),
    ];
    for (name, g, inputs) in cases {
        let e = compare(&vk, &g, &w, &inputs);
        let plan = vk.prepare_plan(&g, &w).unwrap();
        report.push(format!(
            "{name}: rel err {e:.2e}, {} dispatches, device memory {} KiB",
            plan.dispatches(),
            plan.peak_device_bytes() / 1024
        ));
        if e > 1e-4 {
            bad.push(format!("{name}: {e:.3e}"));
        }
    }
    println!("{}", report.join("\n"));
    assert!(bad.is_empty(), "whole-model disagreement > 1e-4: {bad:?}");
}

/// The memory planner predicts a board's device memory from the lowering alone; here the
/// prediction meets the buffers a real device allocates, for each stage of the shipped model
/// and with each weight option (q8 kept, f16 storage, f32).
#[test]
fn predicted_device_memory_is_what_plans_allocate() {
    use ldm_edge::backend::DeviceMemoryModel;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/shapes-32.ldm");
    let model = ldm_edge::model::Model::open(&path).unwrap();
    let cfg = &model.config;
    let graphs = [
        ("text encoder", cfg.text_graph(2).unwrap()),
        ("unet 8x8", cfg.unet_graph(2, 8, 8).unwrap()),
        ("unet 16x24", cfg.unet_graph(1, 16, 24).unwrap()),
        ("decoder", cfg.decoder_graph(1, 8, 8).unwrap()),
    ];
    let options = [
        VulkanOptions::default(),
        VulkanOptions {
            quantized: false,
            f16_weights: true,
            ..Default::default()
        },
        VulkanOptions {
            quantized: false,
            ..Default::default()
        },
    ];
    for opts in options {
        let Some(vk) = backend(opts.clone()) else {
            return;
        };
        let m = vk.memory_model();
        for (name, g) in &graphs {
            let predicted = m.predict(g, &model).unwrap();
            let plan = vk.prepare_plan(g, &model).unwrap();
            assert_eq!(
                predicted,
                plan.device_memory(),
                "{name} with {opts:?}: predicted vs allocated"
            );
            assert!(predicted.weights > 0 && predicted.activations > 0, "{name}");
        }
    }
}

/// The SD-1.5 autoencoder's decoder, whose mid-block attention is one 512-wide head, runs on
/// Vulkan (through the wide attention variant) and agrees with the reference. Random weights
/// at a 4x4 latent keep it quick on a software device.
#[test]
fn sd_decoder_with_its_512_wide_attention_matches_reference() {
    let Some(vk) = backend(VulkanOptions::default()) else {
        return;
    };
    let cfg = ModelConfig::sd15_shaped(100);
    let g = cfg.decoder_graph(1, 4, 4).unwrap();
    let weights: HashMap<String, Tensor> = g
        .params()
        .into_iter()
        .map(|(p, shape)| {
            let data = random_param(7, &p, &shape);
            (p, Tensor::new(shape, data).unwrap())
        })
        .collect();
    let latent: Vec<f32> = (0..64)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0)
        .collect();
    let input = Tensor::new(vec![1, 4, 4, 4], latent).unwrap();
    let e = compare(&vk, &g, &weights, &[input]);
    println!("SD decoder at a 4x4 latent: rel err {e:.2e}");
    assert!(e < 1e-3, "rel err {e}");
}
