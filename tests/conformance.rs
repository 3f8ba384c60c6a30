//! Conformance: every IR op, at several shapes including odd ones, run on a backend and on the
//! reference, compared within a per-op tolerance. The idea of ggml's `test-backend-ops` and
//! ncnn's `test_layer`: each op is checked alone, so a failure names the op that is wrong.
//!
//! Run with `cargo test --release --test conformance -- --nocapture` to see one line per case.
use ldm_edge::backend::cpu::{CpuBackend, CpuExpandedBackend, CpuPackedBackend};
use ldm_edge::backend::reference::ReferenceBackend;
use ldm_edge::backend::{Backend, Tensor, WeightSource};
use ldm_edge::format::quant::{dequantize_q4, dequantize_q8, quantize_q4, quantize_q8};
use ldm_edge::format::{DType, SharedBytes};
use ldm_edge::graph::{Graph, NodeId, Tracer, ValueType};
use ldm_edge::ops::Ops;
use ldm_edge::Result;
use std::collections::HashMap;

/// Max relative error allowed per op: max|a - b| / max(max|ref|, 1e-6). The reference
/// accumulates in f64, tract in f32, so ops with long reductions or transcendental functions
/// get more room than pure data movement, which must be exact.
const TOLERANCE: &[(&str, f64)] = &[
    ("conv2d", 1e-5),
    // Winograd F(4x4, 3x3) multiplies by up to 8 and divides by 24 in its transforms, so it
    // rounds a few times more than a direct product: 0.8-2e-5 of the output's largest value
    // on the SD-1.5 layer shapes (`examples/conv_algos.rs`).
    ("conv2d_winograd", 5e-5),
    // A plain f32 dot product like im2col's, summed in another order.
    ("conv2d_direct", 1e-5),
    ("linear", 1e-5),
    ("add", 1e-6),
    ("mul", 1e-6),
    ("scale", 1e-6),
    ("group_norm", 1e-5),
    ("layer_norm", 1e-5),
    ("silu", 1e-5),
    ("gelu", 1e-5),
    ("geglu", 1e-5),
    ("attention", 1e-5),
    ("reshape", 0.0),
    ("permute", 0.0),
    ("concat", 0.0),
    ("slice", 0.0),
    ("upsample2x", 0.0),
    ("timestep_embedding", 1e-5),
    ("embedding", 0.0),
    ("resnet_block", 1e-5),
    ("edge_graph", 1e-5),
];

fn tolerance(op: &str) -> f64 {
    TOLERANCE
        .iter()
        .find(|(o, _)| *o == op)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no tolerance stated for `{op}`"))
}

/// splitmix64: small, deterministic, and good enough for test data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// One test graph under construction: the tracer, its weights and its input data.
struct Case {
    t: Tracer,
    rng: Rng,
    weights: HashMap<String, Tensor>,
    inputs: Vec<Tensor>,
}

impl Case {
    fn new(seed: u64) -> Self {
        Self {
            t: Tracer::new(),
            rng: Rng(seed),
            weights: HashMap::new(),
            inputs: vec![],
        }
    }
    fn random(&mut self, shape: &[usize], scale: f32, offset: f32) -> Vec<f32> {
        let n: usize = shape.iter().product();
        (0..n)
            .map(|_| self.rng.uniform() * scale + offset)
            .collect()
    }
    fn input_data(&mut self, shape: &[usize], ty: ValueType, data: Vec<f32>) -> NodeId {
        let name = format!("in{}", self.inputs.len());
        self.inputs.push(Tensor::new(shape.to_vec(), data).unwrap());
        self.t.input(&name, shape, ty)
    }
    /// An f32 input uniform in [offset - scale, offset + scale).
    fn input_scaled(&mut self, shape: &[usize], scale: f32, offset: f32) -> NodeId {
        let data = self.random(shape, scale, offset);
        self.input_data(shape, ValueType::F32, data)
    }
    fn input(&mut self, shape: &[usize]) -> NodeId {
        self.input_scaled(shape, 1.0, 0.0)
    }
    fn param(&mut self, shape: &[usize]) -> NodeId {
        let path = format!("p{}.weight", self.weights.len());
        let data = self.random(shape, 1.0, 0.0);
        self.weights
            .insert(path.clone(), Tensor::new(shape.to_vec(), data).unwrap());
        self.t.param(&path, shape).unwrap()
    }
}

fn max_rel_err(a: &Tensor, r: &Tensor) -> f64 {
    assert_eq!(a.shape, r.shape, "output shapes differ");
    let diff = a
        .data
        .iter()
        .zip(&r.data)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(
            0.0,
            |m: f64, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        );
    let scale = r
        .data
        .iter()
        .map(|y| (*y as f64).abs())
        .fold(1e-6, f64::max);
    diff / scale
}

/// Weights as a model file stores them in `dtype`: the compact CPU kernels read the stored
/// bytes (`load_shared`), while `load_f32` gives every other reader, the reference included,
/// the same values dequantized. So a kernel is checked on exactly the weights it was handed.
struct Stored<'a> {
    dtype: DType,
    inner: &'a HashMap<String, Tensor>,
}

impl Stored<'_> {
    fn bytes(&self, x: &[f32]) -> Vec<u8> {
        match self.dtype {
            DType::Q8 => quantize_q8(x),
            DType::Q4 => quantize_q4(x),
            DType::F16 => x
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            DType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

impl WeightSource for Stored<'_> {
    fn shape(&self, path: &str) -> Option<Vec<usize>> {
        self.inner.shape(path)
    }
    fn load_f32(&self, path: &str) -> Result<Vec<f32>> {
        let x = self.inner.load_f32(path)?;
        let b = self.bytes(&x);
        Ok(match self.dtype {
            DType::Q8 => dequantize_q8(&b, x.len()),
            DType::Q4 => dequantize_q4(&b, x.len()),
            DType::F16 => x.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect(),
            DType::F32 => x,
        })
    }
    fn load_shared(&self, path: &str) -> Option<(DType, SharedBytes)> {
        let x = self.inner.load_f32(path).ok()?;
        Some((self.dtype, SharedBytes::from_vec(self.bytes(&x))))
    }
}

/// Builds one case and runs it on every CPU configuration and on the reference: compact
/// kernels on f32 (in-memory), f16, q8 and q4 weights, and tract with expanded weights.
/// Returns the largest error found.
fn check(op: &str, desc: &str, seed: u64, build: impl FnOnce(&mut Case) -> Result<NodeId>) -> f64 {
    let mut c = Case::new(seed);
    let out = build(&mut c).unwrap_or_else(|e| panic!("{op} {desc}: building failed: {e}"));
    let graph: Graph = c.t.finish(&[out]);
    let run = |b: &dyn Backend, w: &dyn WeightSource, what: &str| {
        let mut exe = b
            .prepare(&graph, w)
            .unwrap_or_else(|e| panic!("{op} {desc}: {what} prepare: {e}"));
        exe.run(&c.inputs)
            .unwrap_or_else(|e| panic!("{op} {desc}: {what} run: {e}"))
    };
    let tol = tolerance(op);
    let mut worst = 0f64;
    let mut line = String::new();
    let r = run(&ReferenceBackend, &c.weights, "reference");
    for (what, b) in [
        ("cpu", &CpuBackend as &dyn Backend),
        ("cpu-packed", &CpuPackedBackend),
        ("cpu-expanded", &CpuExpandedBackend),
    ] {
        let err = max_rel_err(&run(b, &c.weights, what)[0], &r[0]);
        line += &format!(" {what} {err:.1e}");
        worst = worst.max(err);
    }
    for dtype in [DType::F16, DType::Q8, DType::Q4] {
        let w = Stored {
            dtype,
            inner: &c.weights,
        };
        let r = run(&ReferenceBackend, &w, "reference");
        for (what, b) in [
            ("", &CpuBackend as &dyn Backend),
            ("-packed", &CpuPackedBackend),
        ] {
            let err = max_rel_err(&run(b, &w, dtype.name())[0], &r[0]);
            line += &format!(" {}{what} {err:.1e}", dtype.name());
            worst = worst.max(err);
        }
    }
    let verdict = if worst <= tol { "ok" } else { "FAIL" };
    println!("{op:<20} {desc:<44}{line} (tol {tol:.0e}) {verdict}");
    worst
}

/// Runs every case of one op and fails after printing them all if any is out of tolerance.
fn suite(op: &str, cases: Vec<(String, Build)>) {
    let tol = tolerance(op);
    let mut worst = 0f64;
    for (i, (desc, build)) in cases.into_iter().enumerate() {
        worst = worst.max(check(op, &desc, 1000 + i as u64, build));
    }
    assert!(worst <= tol, "{op}: max rel err {worst:.2e} over {tol:.0e}");
}

type Build = Box<dyn FnOnce(&mut Case) -> Result<NodeId>>;

/// Boxes one case; going through this bound lets closures infer `&mut Case` for any lifetime.
fn case(desc: &str, build: impl FnOnce(&mut Case) -> Result<NodeId> + 'static) -> (String, Build) {
    (desc.to_string(), Box::new(build))
}

macro_rules! cases {
    ($($desc:expr => $build:expr),+ $(,)?) => {
        vec![$(case($desc, $build)),+]
    };
}

fn conv(
    c: &mut Case,
    x: &[usize],
    w: &[usize],
    bias: bool,
    stride: usize,
    pads: [usize; 4],
) -> Result<NodeId> {
    let xi = c.input(x);
    let wi = c.param(w);
    let bi = bias.then(|| c.param(&[w[0]]));
    c.t.conv2d(&xi, &wi, bi.as_ref(), stride, pads)
}

#[test]
fn conv2d() {
    suite(
        "conv2d",
        cases![
            "x[1,3,7,5] w[4,3,3,3] s1 p1 bias" => |c| conv(c, &[1, 3, 7, 5], &[4, 3, 3, 3], true, 1, [1; 4]),
            "x[2,3,9,7] w[5,3,3,3] s2 p1 bias" => |c| conv(c, &[2, 3, 9, 7], &[5, 3, 3, 3], true, 2, [1; 4]),
            "x[1,4,8,6] w[4,4,3,3] s2 p[0,0,1,1] nobias" => |c| conv(c, &[1, 4, 8, 6], &[4, 4, 3, 3], false, 2, [0, 0, 1, 1]),
            "x[1,8,5,5] w[6,8,1,1] s1 p0 bias" => |c| conv(c, &[1, 8, 5, 5], &[6, 8, 1, 1], true, 1, [0; 4]),
            "x[2,3,7,5] w[2,3,3,2] s1 p[0,1,2,0] nobias" => |c| conv(c, &[2, 3, 7, 5], &[2, 3, 3, 2], false, 1, [0, 1, 2, 0]),
            // Padding wider than the kernel: whole im2col runs fall in the padding.
            "x[1,2,4,3] w[3,2,1,2] s1 p[2,3,1,2] bias" => |c| conv(c, &[1, 2, 4, 3], &[3, 2, 1, 2], true, 1, [2, 3, 1, 2]),
            "x[1,3,11,10] w[2,3,2,3] s3 p[1,4,0,2] nobias" => |c| conv(c, &[1, 3, 11, 10], &[2, 3, 2, 3], false, 3, [1, 4, 0, 2]),
            "x[1,32,16,16] w[32,32,3,3] s1 p1 bias" => |c| conv(c, &[1, 32, 16, 16], &[32, 32, 3, 3], true, 1, [1; 4]),
            // Compact kernel limits: im2col split into chunks (K*P > 4M values), and a weight
            // streamed in several panels (> 2M values), with rows that straddle q8 blocks.
            // 3x2 kernels: a 3x3 one of this size runs Winograd (below), not im2col.
            "x[2,130,66,66] w[3,130,3,2] s1 p1 (im2col chunks)" => |c| conv(c, &[2, 130, 66, 66], &[3, 130, 3, 2], true, 1, [1; 4]),
            "x[1,290,3,3] w[850,290,3,3] s1 p1 (panels)" => |c| conv(c, &[1, 290, 3, 3], &[850, 290, 3, 3], true, 1, [1; 4]),
            "x[1,300,4,5] w[7000,300,1,1] s1 p0 (panels)" => |c| conv(c, &[1, 300, 4, 5], &[7000, 300, 1, 1], false, 1, [0; 4]),
            "x[3,290,3,3] w[850,290,3,3] s1 p1 (images share a product, panels)" => |c| conv(c, &[3, 290, 3, 3], &[850, 290, 3, 3], true, 1, [1; 4]),
            "x[3,100,40,40] w[4,100,3,2] s1 p1 (two images, then one)" => |c| conv(c, &[3, 100, 40, 40], &[4, 100, 3, 2], false, 1, [1; 4]),
        ],
    );
}

/// Stride-1 3x3 convolutions of 32x32 outputs and up, with at least 64 input and 32 output
/// channels, run Winograd on the compact plan (`backend::cpu::compact::conv_algo::choose`):
/// F(2x2, 3x3) from 32x32, F(4x4, 3x3) from 64x64, here with partial tiles at the right and
/// bottom edges and asymmetric padding. Weight panels and input chunks are covered by the
/// module's unit tests, which can shrink the scratch limits.
#[test]
fn conv2d_winograd() {
    suite(
        "conv2d_winograd",
        cases![
            "x[1,64,32,32] w[32,64,3,3] p1 bias (F2)" => |c| conv(c, &[1, 64, 32, 32], &[32, 64, 3, 3], true, 1, [1; 4]),
            "x[2,64,33,35] w[40,64,3,3] p1 nobias (F2)" => |c| conv(c, &[2, 64, 33, 35], &[40, 64, 3, 3], false, 1, [1; 4]),
            "x[1,64,64,64] w[32,64,3,3] p1 bias (F4)" => |c| conv(c, &[1, 64, 64, 64], &[32, 64, 3, 3], true, 1, [1; 4]),
            "x[1,65,67,70] w[33,65,3,3] p[0,1,2,0] bias (F4)" => |c| conv(c, &[1, 65, 67, 70], &[33, 65, 3, 3], true, 1, [0, 1, 2, 0]),
        ],
    );
}

/// The compact CPU plan's AVX-512 direct convolution: chosen for 3x3 stride-1 layers of 512
/// output pixels and more per call below Winograd's sizes (`conv_algo::choose`), with partial channel blocks and output
/// groups, two K-groups, odd row runs and asymmetric padding. On a CPU without AVX-512 these
/// run im2col (the kernel's own unit tests say SKIPPED there).
#[test]
fn conv2d_direct() {
    suite(
        "conv2d_direct",
        cases![
            "x[2,64,16,16] w[32,64,3,3] p1 bias" => |c| conv(c, &[2, 64, 16, 16], &[32, 64, 3, 3], true, 1, [1; 4]),
            "x[4,70,13,11] w[45,70,3,3] p1 nobias" => |c| conv(c, &[4, 70, 13, 11], &[45, 70, 3, 3], false, 1, [1; 4]),
            "x[2,200,17,19] w[40,200,3,3] p[0,1,2,0] bias" => |c| conv(c, &[2, 200, 17, 19], &[40, 200, 3, 3], true, 1, [0, 1, 2, 0]),
            // Too few pixels for the per-call packing; cpu-packed runs it on its packed weight.
            "x[1,96,6,5] w[40,96,3,3] p1 bias" => |c| conv(c, &[1, 96, 6, 5], &[40, 96, 3, 3], true, 1, [1; 4]),
        ],
    );
}

fn linear(c: &mut Case, x: &[usize], out: usize, bias: bool) -> Result<NodeId> {
    let xi = c.input(x);
    let wi = c.param(&[out, *x.last().unwrap()]);
    let bi = bias.then(|| c.param(&[out]));
    c.t.linear(&xi, &wi, bi.as_ref())
}

#[test]
fn linear_() {
    suite(
        "linear",
        cases![
            "x[5,7] w[3,7] bias" => |c| linear(c, &[5, 7], 3, true),
            "x[5,7] w[3,7] nobias" => |c| linear(c, &[5, 7], 3, false),
            "x[2,77,16] w[24,16] nobias" => |c| linear(c, &[2, 77, 16], 24, false),
            "x[1,3,5] w[5,5] bias" => |c| linear(c, &[1, 3, 5], 5, true),
            "x[2,9,320] w[640,320] bias" => |c| linear(c, &[2, 9, 320], 640, true),
            "x[3,1000] w[2500,1000] bias (panels, odd rows)" => |c| linear(c, &[3, 1000], 2500, true),
            "x[1,4,33] w[65,33] nobias (rows straddle blocks)" => |c| linear(c, &[1, 4, 33], 65, false),
            "x[1,300,40] w[100,40] bias (many rows: x w^T)" => |c| linear(c, &[1, 300, 40], 100, true),
            "x[2,100,40] w[70,40] nobias (w x^T, then transposed)" => |c| linear(c, &[2, 100, 40], 70, false),
            "x[1,400,64] w[100,64] bias (w x^T at 257-512 rows)" => |c| linear(c, &[1, 400, 64], 100, true),
            "x[1,600,64] w[100,64] bias (x w^T past 512 rows)" => |c| linear(c, &[1, 600, 64], 100, true),
        ],
    );
}

fn binary(c: &mut Case, a: &[usize], b: &[usize], mul: bool) -> Result<NodeId> {
    let (x, y) = (c.input(a), c.input(b));
    if mul {
        c.t.mul(&x, &y)
    } else {
        c.t.add(&x, &y)
    }
}

fn binary_cases(mul: bool) -> Vec<(String, Build)> {
    cases![
        "[2,3,7,5] . [2,3,7,5]" => move |c| binary(c, &[2, 3, 7, 5], &[2, 3, 7, 5], mul),
        "[2,3,7,5] . [3,1,1]" => move |c| binary(c, &[2, 3, 7, 5], &[3, 1, 1], mul),
        "[2,77,8] . [8]" => move |c| binary(c, &[2, 77, 8], &[8], mul),
        "[1,4,1,1] . [2,4,5,3]" => move |c| binary(c, &[1, 4, 1, 1], &[2, 4, 5, 3], mul),
    ]
}

#[test]
fn add() {
    suite("add", binary_cases(false));
}

#[test]
fn mul() {
    suite("mul", binary_cases(true));
}

#[test]
fn scale() {
    suite(
        "scale",
        cases![
            "[2,3,7,5] * 0.18215" => |c| { let x = c.input(&[2, 3, 7, 5]); c.t.scale(&x, 0.18215) },
            "[77] * -3" => |c| { let x = c.input(&[77]); c.t.scale(&x, -3.0) },
            "[3,5,1] * 1e3" => |c| { let x = c.input(&[3, 5, 1]); c.t.scale(&x, 1e3) },
        ],
    );
}

fn group_norm(c: &mut Case, x: &[usize], groups: usize, eps: f32) -> Result<NodeId> {
    // An offset and a spread so the mean subtraction and the variance both matter.
    let xi = c.input_scaled(x, 3.0, 0.7);
    let (g, b) = (c.param(&[x[1]]), c.param(&[x[1]]));
    c.t.group_norm(&xi, &g, &b, groups, eps)
}

#[test]
fn group_norm_() {
    suite(
        "group_norm",
        cases![
            "[1,8,7,5] g4 eps1e-5" => |c| group_norm(c, &[1, 8, 7, 5], 4, 1e-5),
            "[2,6,3,3] g3 eps1e-6" => |c| group_norm(c, &[2, 6, 3, 3], 3, 1e-6),
            "[2,32,9,9] g32 eps1e-5" => |c| group_norm(c, &[2, 32, 9, 9], 32, 1e-5),
            "[1,4,77] g2 (3-D)" => |c| group_norm(c, &[1, 4, 77], 2, 1e-5),
            "[3,4] g2 (2-D)" => |c| group_norm(c, &[3, 4], 2, 1e-5),
        ],
    );
}

fn layer_norm(c: &mut Case, x: &[usize], eps: f32) -> Result<NodeId> {
    let xi = c.input_scaled(x, 3.0, -0.4);
    let n = *x.last().unwrap();
    let (g, b) = (c.param(&[n]), c.param(&[n]));
    c.t.layer_norm(&xi, &g, &b, eps)
}

#[test]
fn layer_norm_() {
    suite(
        "layer_norm",
        cases![
            "[2,77,24] eps1e-5" => |c| layer_norm(c, &[2, 77, 24], 1e-5),
            "[5,7] eps1e-6" => |c| layer_norm(c, &[5, 7], 1e-6),
            "[1,3,4,9] eps1e-5" => |c| layer_norm(c, &[1, 3, 4, 9], 1e-5),
        ],
    );
}

#[test]
fn silu() {
    suite(
        "silu",
        cases![
            "[2,3,7,5] in +-6" => |c| { let x = c.input_scaled(&[2, 3, 7, 5], 6.0, 0.0); c.t.silu(&x) },
            "[77] in +-20" => |c| { let x = c.input_scaled(&[77], 20.0, 0.0); c.t.silu(&x) },
            "[3,1,5] in +-1" => |c| { let x = c.input(&[3, 1, 5]); c.t.silu(&x) },
        ],
    );
}

#[test]
fn gelu() {
    suite(
        "gelu",
        cases![
            "[2,3,7,5] in +-6" => |c| { let x = c.input_scaled(&[2, 3, 7, 5], 6.0, 0.0); c.t.gelu(&x) },
            "[77] in +-20" => |c| { let x = c.input_scaled(&[77], 20.0, 0.0); c.t.gelu(&x) },
            "[3,1,5] in +-1" => |c| { let x = c.input(&[3, 1, 5]); c.t.gelu(&x) },
        ],
    );
}

/// The UNet feed-forward's `x[.., :h] * gelu(x[.., h:])` (one compact kernel on the CPU),
/// and near misses of that pattern, which must stay plain slices, GELU and product.
fn geglu(
    c: &mut Case,
    x: &[usize],
    (s0, e0): (usize, usize),
    (s1, e1): (usize, usize),
) -> Result<NodeId> {
    let xi = c.input_scaled(x, 4.0, 0.0);
    let last = x.len() - 1;
    let val = c.t.slice(&xi, last, s0, e0)?;
    let gate = c.t.slice(&xi, last, s1, e1)?;
    let gate = c.t.gelu(&gate)?;
    c.t.mul(&val, &gate)
}

#[test]
fn geglu_() {
    suite(
        "geglu",
        cases![
            "[2,5,14] halves" => |c| geglu(c, &[2, 5, 14], (0, 7), (7, 14)),
            "[3,1280] halves" => |c| geglu(c, &[3, 1280], (0, 640), (640, 1280)),
            "[2,5,14] gate first (no fusion)" => |c| geglu(c, &[2, 5, 14], (7, 14), (0, 7)),
            "[2,5,16] thirds (no fusion)" => |c| geglu(c, &[2, 5, 16], (0, 5), (5, 10)),
        ],
    );
}

fn attention(
    c: &mut Case,
    q: [usize; 3],
    lk: usize,
    cv: usize,
    heads: usize,
    causal: bool,
) -> Result<NodeId> {
    let qi = c.input_scaled(&q, 2.0, 0.0);
    let ki = c.input_scaled(&[q[0], lk, q[2]], 2.0, 0.0);
    let vi = c.input(&[q[0], lk, cv]);
    c.t.attention(&qi, &ki, &vi, heads, causal)
}

fn zero_key_attention(
    c: &mut Case,
    b: usize,
    lq: usize,
    lk: usize,
    ck: usize,
    cv: usize,
    heads: usize,
) -> Result<NodeId> {
    let src = c.input_scaled(&[b, lk, ck], 3.0, 0.0);
    let k = c.t.scale(&src, 0.0)?;
    let q = c.t.slice(&k, 1, 0, lq)?;
    let v = c.input_scaled(&[b, lk, cv], 2.0, 1.0);
    c.t.attention(&q, &k, &v, heads, false)
}

#[test]
fn attention_() {
    suite(
        "attention",
        cases![
            "q[1,7,16] kv[1,5,16] h2" => |c| attention(c, [1, 7, 16], 5, 16, 2, false),
            "q[2,9,12] k[2,77,12] v[2,77,18] h3" => |c| attention(c, [2, 9, 12], 77, 18, 3, false),
            "q=kv[2,77,24] h3 causal" => |c| attention(c, [2, 77, 24], 77, 24, 3, true),
            "q=kv[1,5,8] h1 causal" => |c| attention(c, [1, 5, 8], 5, 8, 1, true),
            "q[1,4,8] kv[1,6,8] h4 causal" => |c| attention(c, [1, 4, 8], 6, 8, 4, true),
            "q[2,64,40] kv[2,64,40] h8" => |c| attention(c, [2, 64, 40], 64, 40, 8, false),
            // Several query blocks per head (64K scores per block).
            "q[1,300,16] kv[1,1000,16] h2 (blocks)" => |c| attention(c, [1, 300, 16], 1000, 16, 2, false),
            "q=kv[1,700,8] h1 causal (blocks)" => |c| attention(c, [1, 700, 8], 700, 8, 1, true),
            // Zero keys, as the tiled VAE's stats pass builds them: a mean of the values (one
            // compact kernel with no q or k on the CPU).
            "zero k[2,300,4] v[2,300,12] q[2,3,4] h4" => |c| zero_key_attention(c, 2, 3, 300, 4, 12, 4),
            "zero k[1,5000,2] v[1,5000,6] q[1,1,2] h2" => |c| zero_key_attention(c, 1, 1, 5000, 2, 6, 2),
        ],
    );
}

#[test]
fn reshape() {
    suite(
        "reshape",
        cases![
            "[2,3,7,5] -> [6,35]" => |c| { let x = c.input(&[2, 3, 7, 5]); c.t.reshape(&x, &[6, 35]) },
            "[77,8] -> [7,11,8]" => |c| { let x = c.input(&[77, 8]); c.t.reshape(&x, &[7, 11, 8]) },
            "[3,5] -> [15]" => |c| { let x = c.input(&[3, 5]); c.t.reshape(&x, &[15]) },
        ],
    );
}

#[test]
fn permute() {
    suite(
        "permute",
        cases![
            "[2,3,7,5] [0,2,3,1]" => |c| { let x = c.input(&[2, 3, 7, 5]); c.t.permute(&x, &[0, 2, 3, 1]) },
            "[2,77,24] [1,0,2]" => |c| { let x = c.input(&[2, 77, 24]); c.t.permute(&x, &[1, 0, 2]) },
            "[3,5] [1,0]" => |c| { let x = c.input(&[3, 5]); c.t.permute(&x, &[1, 0]) },
        ],
    );
}

fn concat(c: &mut Case, shapes: &[&[usize]], axis: usize) -> Result<NodeId> {
    let ids: Vec<NodeId> = shapes.iter().map(|s| c.input(s)).collect();
    let refs: Vec<&NodeId> = ids.iter().collect();
    c.t.concat(&refs, axis)
}

#[test]
fn concat_() {
    suite(
        "concat",
        cases![
            "[2,3,7,5]+[2,4,7,5] axis1" => |c| concat(c, &[&[2, 3, 7, 5], &[2, 4, 7, 5]], 1),
            "[1,5]+[2,5]+[3,5] axis0" => |c| concat(c, &[&[1, 5], &[2, 5], &[3, 5]], 0),
            "[2,7,3]+[2,7,5]+[2,7,1] axis2" => |c| concat(c, &[&[2, 7, 3], &[2, 7, 5], &[2, 7, 1]], 2),
        ],
    );
}

#[test]
fn slice() {
    suite(
        "slice",
        cases![
            "[2,8,7,5] axis1 2..5" => |c| { let x = c.input(&[2, 8, 7, 5]); c.t.slice(&x, 1, 2, 5) },
            "[77,24] axis1 0..12" => |c| { let x = c.input(&[77, 24]); c.t.slice(&x, 1, 0, 12) },
            "[3,5,7] axis2 6..7" => |c| { let x = c.input(&[3, 5, 7]); c.t.slice(&x, 2, 6, 7) },
        ],
    );
}

#[test]
fn upsample2x() {
    suite(
        "upsample2x",
        cases![
            "[1,3,7,5]" => |c| { let x = c.input(&[1, 3, 7, 5]); c.t.upsample_nearest2x(&x) },
            "[2,4,1,1]" => |c| { let x = c.input(&[2, 4, 1, 1]); c.t.upsample_nearest2x(&x) },
            "[3,5] (2-D)" => |c| { let x = c.input(&[3, 5]); c.t.upsample_nearest2x(&x) },
        ],
    );
}

fn timestep(c: &mut Case, t: Vec<f32>, dim: usize, flip: bool, shift: f32) -> Result<NodeId> {
    let ti = c.input_data(&[t.len()], ValueType::F32, t);
    c.t.timestep_embedding(&ti, dim, flip, shift)
}

#[test]
fn timestep_embedding() {
    suite(
        "timestep_embedding",
        cases![
            "t[0,1,999] dim32 flip shift0" => |c| timestep(c, vec![0.0, 1.0, 999.0], 32, true, 0.0),
            "t[999,500.5] dim320 noflip shift1" => |c| timestep(c, vec![999.0, 500.5], 320, false, 1.0),
            "t[7,981,3] dim6 flip shift1" => |c| timestep(c, vec![7.0, 981.0, 3.0], 6, true, 1.0),
            "t[998] dim256 noflip shift0" => |c| timestep(c, vec![998.0], 256, false, 0.0),
        ],
    );
}

fn embedding(c: &mut Case, vocab: usize, d: usize, ids: &[usize]) -> Result<NodeId> {
    let table = c.param(&[vocab, d]);
    let data: Vec<f32> = (0..ids.iter().product())
        .map(|_| c.rng.below(vocab) as f32)
        .collect();
    let ii = c.input_data(ids, ValueType::I64, data);
    c.t.embedding(&table, &ii)
}

#[test]
fn embedding_() {
    suite(
        "embedding",
        cases![
            "table[11,8] ids[2,5]" => |c| embedding(c, 11, 8, &[2, 5]),
            "table[49,16] ids[1,77]" => |c| embedding(c, 49, 16, &[1, 77]),
            "table[3,5] ids[7]" => |c| embedding(c, 3, 5, &[7]),
        ],
    );
}

/// A composite (GroupNorm, SiLU, conv, residual add), to check that ops also agree chained.
#[test]
fn resnet_block() {
    suite(
        "resnet_block",
        cases![
            "x[1,8,7,5] g4" => |c| {
                let x = c.input(&[1, 8, 7, 5]);
                let (g, b) = (c.param(&[8]), c.param(&[8]));
                let h = c.t.group_norm(&x, &g, &b, 4, 1e-5)?;
                let h = c.t.silu(&h)?;
                let (w, wb) = (c.param(&[8, 8, 3, 3]), c.param(&[8]));
                let h = c.t.conv2d(&h, &w, Some(&wb), 1, [1; 4])?;
                c.t.add(&x, &h)
            },
        ],
    );
}

/// Graph shapes the lowering must not trip on: outputs that are inputs or weights, the same
/// value output twice, a `Linear` whose weight is computed, token ids also read as floats.
#[test]
fn edge_graphs() {
    let mut c = Case::new(11);
    let x = c.input(&[2, 5]);
    let w = c.param(&[3, 5]);
    let w2 = c.t.scale(&w, 0.5).unwrap();
    let y = c.t.linear(&x, &w2, None).unwrap();
    let z = c.t.linear(&x, &w, None).unwrap();
    let table = c.param(&[6, 4]);
    let ids = c.input_data(&[2], ValueType::I64, vec![5.0, 0.0]);
    let e = c.t.embedding(&table, &ids).unwrap();
    let idf = c.t.scale(&ids, 1.0).unwrap();
    let g = c.t.finish(&[y, x, w, y, z, e, idf]);
    let r = ReferenceBackend
        .prepare(&g, &c.weights)
        .unwrap()
        .run(&c.inputs)
        .unwrap();
    let mut err = 0f64;
    for b in [&CpuBackend as &dyn Backend, &CpuExpandedBackend] {
        let a = b.prepare(&g, &c.weights).unwrap().run(&c.inputs).unwrap();
        assert_eq!(a.len(), r.len());
        err = a
            .iter()
            .zip(&r)
            .map(|(a, r)| max_rel_err(a, r))
            .fold(err, f64::max);
    }
    println!(
        "edge_graph           7 outputs (input, weight, duplicate, ...)     max rel err {err:.2e}"
    );
    assert!(err <= tolerance("edge_graph"));
}

/// Bad inputs are errors from `run`, never panics.
#[test]
fn bad_inputs_are_errors() {
    let mut c = Case::new(7);
    let table = c.param(&[11, 4]);
    let ids = c.input_data(&[3], ValueType::I64, vec![0.0, 1.0, 2.0]);
    let out = c.t.embedding(&table, &ids).unwrap();
    let g = c.t.finish(&[out]);
    let mut exe = CpuBackend.prepare(&g, &c.weights).unwrap();
    assert!(exe.run(&c.inputs).is_ok());
    let bad = |data: Vec<f32>| vec![Tensor::new(vec![data.len()], data).unwrap()];
    for ids in [
        vec![0.0, 11.0, 2.0],
        vec![-1.0, 0.0, 0.0],
        vec![0.5, 0.0, 0.0],
        vec![f32::NAN, 0.0, 0.0],
    ] {
        let e = exe
            .run(&bad(ids.clone()))
            .expect_err("out-of-vocab id accepted");
        println!("ids {ids:?}: {e}");
    }
    let e = exe
        .run(&bad(vec![0.0, 1.0]))
        .expect_err("wrong input shape accepted");
    println!("shape [2] for [3]: {e}");
    assert!(exe.run(&[]).is_err(), "missing input accepted");

    let mut c = Case::new(8);
    let x = c.input(&[1, 3, 7, 5]);
    let y = c.t.silu(&x).unwrap();
    let g = c.t.finish(&[y]);
    let mut exe = CpuBackend.prepare(&g, &c.weights).unwrap();
    let wrong = Tensor::zeros(&[1, 3, 5, 7]);
    let e = exe.run(&[wrong]).expect_err("wrong input shape accepted");
    println!("shape [1,3,5,7] for [1,3,7,5]: {e}");
}

/// Missing or mis-shaped weights are errors at prepare time.
#[test]
fn bad_weights_are_errors() {
    let mut c = Case::new(9);
    let x = c.input(&[2, 4]);
    let w = c.param(&[3, 4]);
    let y = c.t.linear(&x, &w, None).unwrap();
    let g = c.t.finish(&[y]);
    let mut weights = c.weights.clone();
    weights.insert("p0.weight".into(), Tensor::zeros(&[4, 3]));
    assert!(CpuBackend.prepare(&g, &weights).is_err());
    assert!(CpuBackend.prepare(&g, &HashMap::new()).is_err());
}
