//! The CPU kernels that read weights in their stored dtype: linear, conv2d, embedding, and an
//! attention that never holds the whole score matrix.
//!
//! Weights are widened to f32 a panel of output rows at a time (at most `PANEL`, 2M values), so
//! the f32 copy of any weight is bounded and short-lived; the products run on the `gemm`
//! crate's f32 kernels. Convolutions are im2col + GEMM over chunks of output positions (at
//! most `COLS`, 4M values, of im2col at once), so a 512 px decoder layer never builds its
//! gigabyte-sized column matrix; stride-1 3x3 layers on large images run Winograd instead
//! ([`super::winograd`]), in bounded chunks too, and on 16x16-level images an AVX-512 direct
//! kernel ([`super::direct`]) where the CPU has it.
use super::conv_algo::{self, Algo};
use super::direct;
use super::math;
use super::weight::CompactWeight;
use super::winograd;
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::Mutex;

/// Largest f32 weight panel: 8 MiB. A weight that fits is widened once per call; larger ones
/// (the deep UNet levels, where activations are small) are streamed panel by panel.
const PANEL: usize = 2 << 20;
/// Largest im2col chunk: 16 MiB.
const COLS: usize = 4 << 20;
/// Largest Winograd input chunk and product: 32 MiB each. The transformed weight panel is
/// rebuilt for every chunk, so a chunk must hold enough tiles to amortize it: at 16 MiB a
/// 1280-channel layer at 32x32 took two chunks and ran 1.18x faster than im2col, at 32 MiB one
/// chunk and 1.36x (`examples/conv_algos.rs`).
const WINOGRAD_COLS: usize = 8 << 20;
/// Attention rows per task are chosen so one task's scores take about 4 MiB: each task packs
/// its head's keys and values for the GEMMs, so taller query blocks amortize that (SD-1.5 at
/// 64x64 latents, 4096 keys: 256 rows per block instead of 64 took attention from 562-578 ms
/// to 512-531 ms per UNet step, back to back on a quiet machine).
const SCORES: usize = 1 << 20;

/// Reused buffers: allocating and zeroing them per call would cost page faults on every layer
/// of every step.
#[derive(Default)]
struct Scratch {
    /// A widened weight panel.
    panel: Vec<f32>,
    /// An im2col chunk.
    cols: Vec<f32>,
    /// The transposed input and the product of a weight-streaming linear (small, see
    /// [`streams_weight`]).
    xt: Vec<f32>,
    prod: Vec<f32>,
}

impl Scratch {
    /// The buffers the direct kernel grows (the planner's `scratch_values` counts these).
    fn direct(&mut self) -> direct::Buffers<'_> {
        direct::Buffers {
            input: &mut self.cols,
            prod: &mut self.prod,
        }
    }

    /// The buffers Winograd grows.
    fn winograd(&mut self) -> winograd::Buffers<'_> {
        winograd::Buffers {
            widened: &mut self.panel,
            input: &mut self.cols,
            weight: &mut self.xt,
            prod: &mut self.prod,
        }
    }
}

/// One set of scratch buffers for the process: kernels run one at a time (plans take turns,
/// see the CPU plan's `on_pool`), and per-thread buffers would each keep their largest size
/// on every thread that ever ran a kernel.
static SCRATCH: Mutex<Scratch> = Mutex::new(Scratch {
    panel: Vec::new(),
    cols: Vec::new(),
    xt: Vec::new(),
    prod: Vec::new(),
});

fn scratch_slot() -> std::sync::MutexGuard<'static, Scratch> {
    // Buffers hold no invariant a panic could break.
    SCRATCH.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` with the scratch, taken out of its slot for the duration. A kernel waits inside
/// its parallel sections, and rayon lets the waiting thread run another queued job meanwhile,
/// possibly another kernel: that one finds the slot empty and grows buffers of its own.
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut s = std::mem::take(&mut *scratch_slot());
    let r = f(&mut s);
    *scratch_slot() = s;
    r
}

/// Frees the scratch buffers, which otherwise keep their largest size: the pipeline calls this
/// when a stage ends, so the next stage's memory is its own.
pub fn release_scratch() {
    drop(std::mem::take(&mut *scratch_slot()));
}

fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

pub(super) fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// A strided matrix operand: pointer, row stride, column stride (in elements).
#[derive(Clone, Copy)]
pub(super) struct Mat {
    pub(super) ptr: *const f32,
    pub(super) rs: isize,
    pub(super) cs: isize,
}

/// `dst[m x n] = (dst if accumulate) + s * lhs[m x k] rhs[k x n]`.
///
/// # Safety
/// Every operand must address valid memory for its extent; `dst` must not alias the others.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut f32, isize, isize),
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    s: f32,
    par: Parallelism,
) {
    // gemm's convention: dst = alpha * dst + beta * lhs * rhs, strides given column first.
    gemm::gemm(
        m, n, k, dst.0, dst.2, dst.1, accumulate, lhs.ptr, lhs.cs, lhs.rs, rhs.ptr, rhs.cs, rhs.rs,
        1.0, s, false, false, false, par,
    )
}

/// Rows of a weight viewed as `[rows, cols]` that fit one panel (at least one).
fn panel_rows(rows: usize, cols: usize) -> usize {
    (PANEL / cols.max(1)).clamp(1, rows.max(1))
}

/// Whether a linear of `m` rows runs faster as `w x^T` (the weight as the GEMM's row-major
/// left operand, `x` and the product transposed around it) than as `x w^T`.
///
/// With few rows the product is bound by streaming the weight, and `x w^T` makes the GEMM
/// pack the weight with a row stride of `k` values: at k = 5120 (20 KiB, a multiple of the
/// 4 KiB cache-set period) every row of a packing step lands in the same cache sets. Measured
/// on this machine (`cargo run --release --example linear_algos`: cold weights, 2 threads,
/// the two transposes included, `x w^T` against `w x^T`, ms): 128x1280x5120 16.2 vs 5.5;
/// 128x10240x1280 15.5 vs 11.9; 128x1280x1280 1.56 vs 1.15; 154x1280x768 1.15 vs 0.94;
/// 512x640x2560 5.75 vs 4.9; 512x640x640 1.15 vs 1.10. With many rows and a wide output the
/// transposes cost more than they save: 512x5120x640 8.4 vs 9.8; 2048x2560x320 8.5 vs 11.5;
/// 2048x320x320 1.0 vs 1.6.
fn streams_weight(m: usize, n: usize, k: usize) -> bool {
    m <= 256 || (m <= 512 && n <= 2 * k)
}

/// Transposing tile: 16 values (a cache line) of each of 16 rows.
const T: usize = 16;

/// `dst[j, off + i] = src[i, j]` (or `+=` with `add`) for `src [r, c]` into the `c` rows of
/// `dst` (row stride `ld`), a 16x16 tile at a time through a local tile, so every read and
/// every write is a whole 64-byte run. Writing one value per destination row instead (the
/// first version) touched 32 lines a row stride apart, the same L1 set whenever the stride
/// is a multiple of 4 KiB: 6 ms for a [10240, 128] product, now under 1.
fn transpose(src: &[f32], r: usize, c: usize, dst: &mut [f32], ld: usize, off: usize, add: bool) {
    dst.par_chunks_mut(T * ld.max(1))
        .enumerate()
        .for_each(|(cb, d)| {
            let (c0, cn) = (cb * T, T.min(c - cb * T));
            let mut tile = [[0f32; T]; T];
            for r0 in (0..r).step_by(T) {
                let rn = T.min(r - r0);
                for (i, s) in src[r0 * c + c0..].chunks(c).take(rn).enumerate() {
                    for (j, &v) in s[..cn].iter().enumerate() {
                        tile[j][i] = v;
                    }
                }
                for (j, t) in tile.iter().enumerate().take(cn) {
                    let row = &mut d[j * ld + off + r0..][..rn];
                    if add {
                        row.iter_mut().zip(t).for_each(|(d, &v)| *d += v);
                    } else {
                        row.copy_from_slice(&t[..rn]);
                    }
                }
            }
        });
}

/// `out[m, n] = x[m, k] w[n, k]^T (+ bias[n])`.
pub fn linear(x: &[f32], m: usize, w: &CompactWeight, bias: Option<&[f32]>, out: &mut [f32]) {
    let (n, k) = (w.shape[0], w.shape[1]);
    linear_with(streams_weight(m, n, k), x, m, w, bias, out)
}

/// [`linear`] with the layout given rather than chosen (for benchmarks and tests): `stream`
/// runs `w x^T` between two transposes, otherwise `x w^T`.
pub fn linear_with(
    stream: bool,
    x: &[f32],
    m: usize,
    w: &CompactWeight,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (n, k) = (w.shape[0], w.shape[1]);
    debug_assert!(x.len() == m * k && out.len() == m * n);
    // `out` is fresh memory (see `CompactOp::eval`): this first write faults its pages in, so
    // it is spread over the threads.
    let rows_per = ((1 << 14) / n.max(1)).max(1);
    out.par_chunks_mut(rows_per * n.max(1))
        .for_each(|o| match bias {
            Some(b) => o.chunks_exact_mut(n).for_each(|r| r.copy_from_slice(b)),
            None => o.fill(0.0),
        });
    // An f32 weight is read in place, all rows in one product; others a widened panel at a time.
    let direct = w.f32_view();
    let rows = match direct {
        Some(_) => n.max(1),
        None => panel_rows(n, k),
    };
    with_scratch(|s| {
        {
            let Scratch {
                panel, xt, prod, ..
            } = s;
            let panel = match direct {
                Some(_) => &mut panel[..0],
                None => grow(panel, rows * k),
            };
            let (xt, prod) = if stream {
                let xt = grow(xt, k * m);
                transpose(x, m, k, xt, m, 0, false);
                (xt, grow(prod, rows.min(n) * m))
            } else {
                (&mut xt[..0], &mut prod[..0])
            };
            for n0 in (0..n).step_by(rows) {
                let nb = rows.min(n - n0);
                let rhs = match direct {
                    Some(wf) => wf[n0 * k..].as_ptr(),
                    None => {
                        w.widen_into(n0 * k, &mut panel[..nb * k]);
                        panel.as_ptr()
                    }
                };
                if stream {
                    // SAFETY: the weight rows n0..n0+nb ([nb, k]) times xt ([k, m]) into
                    // prod ([nb, m]); all in bounds and distinct.
                    unsafe {
                        matmul(
                            nb,
                            m,
                            k,
                            (prod.as_mut_ptr(), m as isize, 1),
                            false,
                            Mat {
                                ptr: rhs,
                                rs: k as isize,
                                cs: 1,
                            },
                            Mat {
                                ptr: xt.as_ptr(),
                                rs: m as isize,
                                cs: 1,
                            },
                            1.0,
                            threads(),
                        )
                    }
                    transpose(&prod[..nb * m], nb, m, out, n, n0, true);
                    continue;
                }
                // SAFETY: x is [m, k], the weight rows n0..n0+nb ([nb, k], in place or
                // widened) read transposed, dst the columns n0..n0+nb of out [m, n]; all in
                // bounds and distinct.
                unsafe {
                    matmul(
                        m,
                        nb,
                        k,
                        (out.as_mut_ptr().add(n0), n as isize, 1),
                        true,
                        Mat {
                            ptr: x.as_ptr(),
                            rs: k as isize,
                            cs: 1,
                        },
                        Mat {
                            ptr: rhs,
                            rs: 1,
                            cs: k as isize,
                        },
                        1.0,
                        threads(),
                    )
                }
            }
        }
    });
}

/// Geometry of one convolution, NCHW.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    pub batch: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    /// top, left, bottom, right
    pub pads: [usize; 4],
}

impl ConvShape {
    /// The geometry of `x [B, C, H, W]` convolved with `w [O, C, kh, kw]`.
    pub fn new(x: &[usize], w: &[usize], stride: usize, pads: [usize; 4]) -> Self {
        ConvShape {
            batch: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            o: w[0],
            kh: w[2],
            kw: w[3],
            stride,
            pads,
        }
    }

    pub fn out_hw(&self) -> (usize, usize) {
        let ho = (self.h + self.pads[0] + self.pads[2] - self.kh) / self.stride + 1;
        let wo = (self.w + self.pads[1] + self.pads[3] - self.kw) / self.stride + 1;
        (ho, wo)
    }
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pads == [0; 4]
    }
}

/// Fills `cols[K, pc]` with the im2col columns of output positions `p0 .. p0 + pc`.
/// Works a run of one output row at a time, so a stride-1 row is a bounds computation and a
/// copy rather than a division and a branch per value.
/// Row `kk` starts at `cols[kk * ld]` (`ld >= pc`), so several images' columns can sit side
/// by side in one matrix.
fn im2col(x: &[f32], g: &ConvShape, wo: usize, p0: usize, pc: usize, cols: &mut [f32], ld: usize) {
    let (kh, kw, st) = (g.kh, g.kw, g.stride);
    let (pt, pl) = (g.pads[0] as isize, g.pads[1] as isize);
    cols.par_chunks_mut(ld).enumerate().for_each(|(kk, row)| {
        let row = &mut row[..pc];
        let (ci, ky, kx) = (kk / (kh * kw), kk / kw % kh, kk % kw);
        let plane = &x[ci * g.h * g.w..][..g.h * g.w];
        let (mut j, mut p) = (0, p0);
        while j < pc {
            let (oy, ox0) = (p / wo, p % wo);
            let len = (wo - ox0).min(pc - j);
            let seg = &mut row[j..j + len];
            let iy = (oy * st + ky) as isize - pt;
            if iy < 0 || iy >= g.h as isize {
                seg.fill(0.0);
            } else {
                let src = &plane[iy as usize * g.w..][..g.w];
                // Input column of seg[t]: (ox0 + t) * st + kx - pl.
                let x0 = (ox0 * st + kx) as isize - pl;
                if st == 1 {
                    let lo = (-x0).clamp(0, len as isize) as usize;
                    let hi = (g.w as isize - x0).clamp(lo as isize, len as isize) as usize;
                    seg[..lo].fill(0.0);
                    if hi > lo {
                        let from = (x0 + lo as isize) as usize;
                        seg[lo..hi].copy_from_slice(&src[from..from + hi - lo]);
                    }
                    seg[hi..].fill(0.0);
                } else {
                    for (t, v) in seg.iter_mut().enumerate() {
                        let ix = x0 + (t * st) as isize;
                        *v = if ix >= 0 && ix < g.w as isize {
                            src[ix as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
            j += len;
            p += len;
        }
    });
}

/// `out[B, O, Ho, Wo] = conv(x[B, C, H, W], w[O, C, kh, kw]) (+ bias[O])`.
pub fn conv2d(x: &[f32], g: &ConvShape, w: &CompactWeight, bias: Option<&[f32]>, out: &mut [f32]) {
    conv2d_with(conv_algo::choose(g), x, g, w, bias, out)
}

/// [`conv2d`] with a weight prepared at plan preparation (the packed CPU plan's layers, see
/// [`conv_algo::prepares`]). The caller checked [`conv_algo::Prepared::fits`].
pub fn conv2d_packed(
    x: &[f32],
    g: &ConvShape,
    w: &conv_algo::Prepared,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    with_scratch(|s| match w {
        conv_algo::Prepared::Direct(p) => {
            let bufs = s.direct();
            direct::conv2d(x, g, direct::Weight::Packed(p), bias, out, bufs);
        }
        conv_algo::Prepared::Winograd(v, t) => {
            let bufs = s.winograd();
            let w = winograd::Weight::Transformed(t);
            winograd::conv2d(v, x, g, w, bias, out, bufs, (PANEL, WINOGRAD_COLS));
        }
    });
}

/// [`conv2d`] with the algorithm given rather than chosen (for benchmarks and tests); one the
/// layer or the CPU cannot run falls back to im2col ([`conv_algo::resolve`]).
pub fn conv2d_with(
    algo: Algo,
    x: &[f32],
    g: &ConvShape,
    w: &CompactWeight,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let algo = conv_algo::resolve(algo, g);
    if algo == Algo::Direct {
        with_scratch(|s| {
            let bufs = s.direct();
            direct::conv2d(x, g, direct::Weight::Stored(w), bias, out, bufs);
        });
        return;
    }
    if let Some(v) = algo.variant() {
        with_scratch(|s| {
            let bufs = s.winograd();
            let w = winograd::Weight::Stored(w);
            winograd::conv2d(v, x, g, w, bias, out, bufs, (PANEL, WINOGRAD_COLS));
        });
        return;
    }
    let (ho, wo) = g.out_hw();
    let p = ho * wo;
    let kdim = g.c * g.kh * g.kw;
    let direct = w.f32_view();
    // An f32 weight is read in place, so one product covers every output channel.
    let rows = match direct {
        Some(_) => g.o,
        None => panel_rows(g.o, kdim),
    };
    let whole = rows >= g.o;
    let chunk = if g.pointwise() {
        p
    } else {
        (COLS / kdim).clamp(1, p)
    };
    with_scratch(|s| {
        let Scratch { panel, cols, .. } = s;
        let panel = match direct {
            Some(_) => &mut panel[..0],
            None => grow(panel, rows * kdim),
        };
        // A weight that fits one panel is widened once for the whole batch (both halves of a
        // classifier-free-guidance call), not once per image.
        if whole && direct.is_none() {
            w.widen_into(0, &mut panel[..g.o * kdim]);
        }
        // Images small enough that several fit one im2col chunk (the deep levels, where the
        // weight is large and the activations small) share one product, so the weight is read
        // once for all of them rather than once per image.
        let group = if g.pointwise() {
            1
        } else {
            (COLS / (kdim * p).max(1)).clamp(1, g.batch.max(1))
        };
        if group > 1 {
            let Scratch { cols, prod, .. } = s;
            let cols = grow(cols, kdim * group * p);
            let prod = grow(prod, g.o * group * p);
            let image = g.c * g.h * g.w;
            for b0 in (0..g.batch).step_by(group) {
                let gi = group.min(g.batch - b0);
                let n = gi * p;
                for j in 0..gi {
                    let xb = &x[(b0 + j) * image..][..image];
                    im2col(xb, g, wo, 0, p, &mut cols[j * p..kdim * n], n);
                }
                for o0 in (0..g.o).step_by(rows) {
                    let nb = rows.min(g.o - o0);
                    let lhs = match direct {
                        Some(wf) => wf[o0 * kdim..].as_ptr(),
                        None if whole => s.panel[o0 * kdim..].as_ptr(),
                        None => {
                            w.widen_into(o0 * kdim, &mut s.panel[..nb * kdim]);
                            s.panel.as_ptr()
                        }
                    };
                    // SAFETY: lhs is nb rows of the weight [.., kdim]; rhs the [kdim, n] im2col
                    // columns of gi images; dst rows o0.. of prod [O, n]; all in bounds.
                    unsafe {
                        matmul(
                            nb,
                            n,
                            kdim,
                            (prod.as_mut_ptr().add(o0 * n), n as isize, 1),
                            false,
                            Mat {
                                ptr: lhs,
                                rs: kdim as isize,
                                cs: 1,
                            },
                            Mat {
                                ptr: cols.as_ptr(),
                                rs: n as isize,
                                cs: 1,
                            },
                            1.0,
                            threads(),
                        )
                    }
                }
                // Each image's [O, P] block out of the shared product, with the bias.
                let prod = &prod[..g.o * n];
                out[b0 * g.o * p..(b0 + gi) * g.o * p]
                    .par_chunks_mut(p)
                    .enumerate()
                    .for_each(|(r, dst)| {
                        let (j, o) = (r / g.o, r % g.o);
                        let src = &prod[o * n + j * p..][..p];
                        let b = bias.map_or(0.0, |b| b[o]);
                        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v + b);
                    });
            }
            return;
        }
        let cols = if g.pointwise() {
            &mut cols[..0]
        } else {
            grow(cols, kdim * chunk)
        };
        for (b, ob) in out.chunks_exact_mut(g.o * p).enumerate().take(g.batch) {
            // The first write of fresh memory, spread over the threads (see `linear`).
            ob.par_chunks_mut(p.max(1))
                .enumerate()
                .for_each(|(o, r)| r.fill(bias.map_or(0.0, |b| b[o])));
            let xb = &x[b * g.c * g.h * g.w..][..g.c * g.h * g.w];
            for p0 in (0..p).step_by(chunk) {
                let pc = chunk.min(p - p0);
                let rhs = if g.pointwise() {
                    Mat {
                        ptr: xb[p0..].as_ptr(),
                        rs: p as isize,
                        cs: 1,
                    }
                } else {
                    im2col(xb, g, wo, p0, pc, &mut cols[..kdim * pc], pc);
                    Mat {
                        ptr: cols.as_ptr(),
                        rs: pc as isize,
                        cs: 1,
                    }
                };
                for o0 in (0..g.o).step_by(rows) {
                    let nb = rows.min(g.o - o0);
                    let lhs = match direct {
                        Some(wf) => wf[o0 * kdim..].as_ptr(),
                        None if whole => panel[o0 * kdim..].as_ptr(),
                        None => {
                            w.widen_into(o0 * kdim, &mut panel[..nb * kdim]);
                            panel.as_ptr()
                        }
                    };
                    // SAFETY: lhs is nb rows of the weight [.., kdim] (in place or widened);
                    // rhs is [kdim, pc] (im2col, or x itself for a pointwise conv); dst is
                    // rows o0.. and columns p0.. of this batch item's [O, P] output.
                    unsafe {
                        matmul(
                            nb,
                            pc,
                            kdim,
                            (ob.as_mut_ptr().add(o0 * p + p0), p as isize, 1),
                            true,
                            Mat {
                                ptr: lhs,
                                rs: kdim as isize,
                                cs: 1,
                            },
                            rhs,
                            1.0,
                            threads(),
                        )
                    }
                }
            }
        }
    });
}

/// Rows `ids` of `table [V, D]`, widened. Ids were checked against V by the caller.
pub fn embedding(table: &CompactWeight, ids: &[usize], out: &mut [f32]) {
    let d = table.shape[1];
    for (row, &id) in out.chunks_exact_mut(d).zip(ids) {
        table.widen_into(id * d, row);
    }
}

/// Shares a raw pointer with the tasks of one parallel loop.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: tasks write disjoint regions of one output buffer that outlives them.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer. A closure that calls this captures the whole `SendPtr` (which is `Sync`);
    /// one that names the field captures only the raw pointer (which is not).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// softmax(q k^T / sqrt(d)) v per head, on `[B, L, heads * d]` tensors, computed a block of
/// query rows at a time: the scores of one block (about 256 KiB) are all that is held, never
/// the `[B, heads, Lq, Lk]` matrix (8 x 4096 x 4096 f32 = 512 MiB per image for SD at 64x64).
/// Exact: each row's softmax sees all of its keys.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    qs: &[usize],
    k: &[f32],
    ks: &[usize],
    v: &[f32],
    vs: &[usize],
    heads: usize,
    causal: bool,
    out: &mut [f32],
) {
    let (bsz, lq, c) = (qs[0], qs[1], qs[2]);
    let (lk, cv) = (ks[1], vs[2]);
    let (d, dv) = (c / heads, cv / heads);
    let scale = 1.0 / (d as f32).sqrt();
    if lk == 0 {
        // No keys: the products below would have nothing to write.
        out.fill(0.0);
        return;
    }
    let rows = (SCORES / lk.max(1)).clamp(1, lq.max(1));
    let tasks: Vec<(usize, usize, usize)> = (0..bsz)
        .flat_map(|b| (0..heads).flat_map(move |h| (0..lq).step_by(rows).map(move |r| (b, h, r))))
        .collect();
    let dst = SendPtr(out.as_mut_ptr());
    tasks.par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(scores, sums): &mut (Vec<f32>, Vec<f32>), &(b, h, r0)| {
            let nr = rows.min(lq - r0);
            let s = grow(scores, nr * lk);
            sums.clear();
            // SAFETY: q rows r0..r0+nr of head h, k and v all rows of head h (strided views of
            // the [B, L, heads*d] inputs); the scores are this task's own; the output block (rows
            // r0.., columns h*dv..) is written by this task alone.
            unsafe {
                matmul(
                    nr,
                    lk,
                    d,
                    (s.as_mut_ptr(), lk as isize, 1),
                    false,
                    Mat {
                        ptr: q.as_ptr().add((b * lq + r0) * c + h * d),
                        rs: c as isize,
                        cs: 1,
                    },
                    Mat {
                        ptr: k.as_ptr().add(b * lk * c + h * d),
                        rs: 1,
                        cs: c as isize,
                    },
                    scale,
                    Parallelism::None,
                );
            }
            for (i, row) in s.chunks_exact_mut(lk).enumerate() {
                // Causal: query r0+i sees keys 0..=r0+i.
                let seen = if causal { (r0 + i + 1).min(lk) } else { lk };
                let (live, masked) = row.split_at_mut(seen);
                masked.fill(0.0);
                sums.push(math::exp_sum(live));
            }
            unsafe {
                matmul(
                    nr,
                    dv,
                    lk,
                    (dst.get().add((b * lq + r0) * cv + h * dv), cv as isize, 1),
                    false,
                    Mat {
                        ptr: s.as_ptr(),
                        rs: lk as isize,
                        cs: 1,
                    },
                    Mat {
                        ptr: v.as_ptr().add(b * lk * cv + h * dv),
                        rs: cv as isize,
                        cs: 1,
                    },
                    1.0,
                    Parallelism::None,
                );
                // The softmax's division, on the dv outputs of each row instead of its lk
                // scores.
                for (i, &sum) in sums.iter().enumerate() {
                    let row = std::slice::from_raw_parts_mut(
                        dst.get().add((b * lq + r0 + i) * cv + h * dv),
                        dv,
                    );
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|o| *o *= inv);
                }
            }
        },
    );
}

/// `out[b, i, :] = mean over l of v[b, l, :]` for every one of the `lq` rows `i`: attention
/// with all-zero keys, where softmax gives every key the same weight. Summed in f64 because
/// the stats pass averages up to hundreds of thousands of positions.
pub fn mean_rows(v: &[f32], vs: &[usize], lq: usize, out: &mut [f32]) {
    let (lk, c) = (vs[1], vs[2]);
    for (vb, ob) in v.chunks_exact(lk * c).zip(out.chunks_exact_mut(lq * c)) {
        let sums = vb
            .par_chunks(c * 1024)
            .map(|rows| {
                let mut s = vec![0f64; c];
                for row in rows.chunks_exact(c) {
                    s.iter_mut().zip(row).for_each(|(s, &x)| *s += x as f64);
                }
                s
            })
            .reduce(
                || vec![0f64; c],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        let n = lk.max(1) as f64;
        for row in ob.chunks_exact_mut(c) {
            row.iter_mut()
                .zip(&sums)
                .for_each(|(o, s)| *o = (s / n) as f32);
        }
    }
}

/// Mean and biased variance in f64, two passes (the values may be far from zero).
fn moments(x: &[f32]) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let mut a = [0f64; 2];
    math::sums(x, 0.0, &mut a);
    let mean = a[0] / n;
    let mut a = [0f64; 2];
    math::sums(x, mean, &mut a);
    (mean as f32, (a[1] / n) as f32)
}

/// GroupNorm of `x [N, C, ...]` with per-channel affine, written straight into `out`: tract's
/// decomposition (mean, difference, square, variance, quotient) holds three full-size
/// temporaries, which at the top of a 512 px decoder are 128 MiB each.
pub fn group_norm(
    x: &[f32],
    shape: &[usize],
    gamma: &[f32],
    beta: &[f32],
    groups: usize,
    eps: f32,
    out: &mut [f32],
) {
    let c = shape[1];
    let spatial: usize = shape[2..].iter().product();
    let cg = c / groups;
    let len = cg * spatial;
    out.par_chunks_mut(len.max(1))
        .zip(x.par_chunks(len.max(1)))
        .enumerate()
        .for_each(|(i, (o, xi))| {
            let g = i % groups;
            let (mean, var) = moments(xi);
            let inv = 1.0 / (var + eps).sqrt();
            for (ci, (o, xi)) in o.chunks_mut(spatial).zip(xi.chunks(spatial)).enumerate() {
                let ch = g * cg + ci;
                math::affine1_into(xi, mean, gamma[ch] * inv, beta[ch], o);
            }
        });
}

/// LayerNorm over the last axis (`d` values per row), same reason as [`group_norm`].
pub fn layer_norm(x: &[f32], d: usize, gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let rows = (4096 / d.max(1)).max(1);
    out.par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
                let (mean, var) = moments(x);
                let inv = 1.0 / (var + eps).sqrt();
                math::norm_into(x, mean, inv, gamma, beta, o);
            }
        });
}

/// `x * sigmoid(x)` in one pass (tract's Sigmoid + Mul holds the sigmoid as a temporary).
pub fn silu(x: &[f32], out: &mut [f32]) {
    map(x, out, math::silu_into)
}

/// Exact (erf) GELU in one pass: tract's Erf decomposition holds two full-size temporaries
/// and calls a scalar erf per value.
pub fn gelu(x: &[f32], out: &mut [f32]) {
    map(x, out, math::gelu_into)
}

/// GEGLU, `out[r, j] = x[r, j] * gelu(x[r, h + j])` for rows of `2h` values, read in place.
pub fn geglu(x: &[f32], h: usize, out: &mut [f32]) {
    let rows = ((1 << 14) / h.max(1)).max(1);
    out.par_chunks_mut(rows * h.max(1))
        .zip(x.par_chunks(rows * 2 * h.max(1)))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_exact_mut(h).zip(x.chunks_exact(2 * h)) {
                let (val, gate) = x.split_at(h);
                math::gated_gelu_into(val, gate, o);
            }
        });
}

/// `f` over chunks of `x` into `out`, in parallel.
fn map(x: &[f32], out: &mut [f32], f: fn(&[f32], &mut [f32])) {
    out.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(o, x)| f(x, o));
}

/// Nearest-neighbour 2x upsampling of the last two axes, written once: tract's
/// Reshape + Expand + Reshape materializes the expanded tensor and then copies it again.
pub fn upsample2x(x: &[f32], h: usize, w: usize, out: &mut [f32]) {
    let plane = h * w;
    out.par_chunks_mut(4 * plane.max(1))
        .zip(x.par_chunks(plane.max(1)))
        .for_each(|(o, x)| {
            for (y, src) in x.chunks_exact(w).enumerate() {
                let (top, bottom) = o[4 * y * w..][..4 * w].split_at_mut(2 * w);
                for (pair, &v) in top.chunks_exact_mut(2).zip(src) {
                    pair[0] = v;
                    pair[1] = v;
                }
                bottom.copy_from_slice(top);
            }
        });
}

/// The scratch buffers (`panel`, `cols`, `xt`, `prod`, in f32 values) that `node`'s kernel
/// grows on the compact CPU plan.
fn scratch_values(
    graph: &crate::graph::Graph,
    node: &crate::graph::Node,
    packed: bool,
) -> [u64; 4] {
    use crate::graph::Op;
    let numel = |s: &[usize]| s.iter().map(|&d| d as u64).product::<u64>();
    match node.op {
        Op::Linear => {
            let w = &graph.nodes[node.inputs[1]].shape;
            let (n, k) = (w[0], w[1]);
            let m = numel(&node.shape) / n.max(1) as u64;
            let panel = numel(w).min(PANEL as u64);
            if streams_weight(m as usize, n, k) {
                [panel, 0, m * k as u64, m * (panel / k.max(1) as u64).max(1)]
            } else {
                [panel, 0, 0, 0]
            }
        }
        Op::Conv2d { stride, pads } => {
            let w = &graph.nodes[node.inputs[1]].shape;
            let g = ConvShape::new(&graph.nodes[node.inputs[0]].shape, w, stride, pads);
            let prepared = packed.then(|| conv_algo::prepares(&g)).flatten();
            let algo = prepared.unwrap_or_else(|| conv_algo::choose(&g));
            if algo == Algo::Direct {
                let [input, prod] = direct::scratch_values(&g);
                // The buffers `conv2d_with` hands it: cols and prod.
                return [0, input, 0, prod];
            }
            if let Some(v) = algo.variant() {
                let [widened, input, weight, prod] =
                    winograd::scratch_values(v, &g, PANEL, WINOGRAD_COLS);
                // A prepared weight is read where it lies: no widened or transformed panel.
                return match prepared {
                    Some(_) => [0, input, 0, prod],
                    None => [widened, input, weight, prod],
                };
            }
            let k = numel(&w[1..]);
            let (b, o) = (node.shape[0] as u64, w[0] as u64);
            let p = numel(&node.shape[2..]);
            let pointwise = w[2] == 1 && w[3] == 1;
            let group = if pointwise {
                1
            } else {
                (COLS as u64 / (k * p).max(1)).clamp(1, b.max(1))
            };
            let cols = if pointwise {
                0
            } else {
                (k * p * group).min(COLS as u64)
            };
            let prod = if group > 1 { o * group * p } else { 0 };
            [numel(w).min(PANEL as u64), cols, 0, prod]
        }
        _ => [0; 4],
    }
}

/// Bytes the process-wide scratch reaches while `graphs` run one after another on the compact
/// plan (`packed`: the packed plan, whose prepared convs may run another algorithm): each
/// buffer keeps its largest size until [`release_scratch`]. For the memory planner.
pub fn scratch_bytes(graphs: &[crate::graph::Graph], packed: bool) -> u64 {
    let mut most = [0u64; 4];
    for g in graphs {
        for n in &g.nodes {
            for (m, v) in most.iter_mut().zip(scratch_values(g, n, packed)) {
                *m = (*m).max(v);
            }
        }
    }
    4 * most.iter().sum::<u64>()
}

/// Bytes the packed plan (`--backend cpu-packed`) adds while `graphs` run: each conv weight
/// it prepares ([`conv_algo::prepares`]), and the f32 copy of every other linear and conv
/// weight that `f32_stored` says is not stored as f32. Each weight once however many graphs
/// read it (a tiled decoder's tiles share theirs within one plan; exact for one graph, an
/// upper bound across several). For the memory planner.
pub fn packed_bytes(graphs: &[crate::graph::Graph], f32_stored: &dyn Fn(&str) -> bool) -> u64 {
    use crate::graph::Op;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    for graph in graphs {
        for node in &graph.nodes {
            let conv = match node.op {
                Op::Conv2d { stride, pads } => Some((stride, pads)),
                Op::Linear => None,
                _ => continue,
            };
            let Some(&wid) = node.inputs.get(1) else {
                continue;
            };
            let w = &graph.nodes[wid].shape;
            let Op::Param { path } = &graph.nodes[wid].op else {
                continue;
            };
            if !seen.insert(path.clone()) {
                continue;
            }
            let x = &graph.nodes[node.inputs[0]].shape;
            let prepared = match conv {
                Some((stride, pads)) if x.len() == 4 && w.len() == 4 => {
                    conv_algo::Prepared::bytes_for(&ConvShape::new(x, w, stride, pads))
                }
                _ => 0,
            };
            total += if prepared > 0 {
                prepared
            } else if f32_stored(path) {
                0
            } else {
                4 * w.iter().map(|&d| d as u64).product::<u64>()
            };
        }
    }
    total
}

/// Working memory one node holds on top of its inputs, its output and the shared scratch
/// ([`scratch_bytes`]) while it runs on the compact CPU plan: attention's score blocks, one
/// per thread. For the memory planner.
pub fn transient_bytes(graph: &crate::graph::Graph, node: &crate::graph::Node) -> u64 {
    use crate::graph::Op;
    let threads = rayon::current_num_threads().max(1) as u64;
    match node.op {
        Op::Attention { .. } => {
            let lk = graph.nodes[node.inputs[1]]
                .shape
                .get(1)
                .copied()
                .unwrap_or(1) as u64;
            4 * threads * (SCORES as u64).max(lk)
        }
        _ => 0,
    }
}
