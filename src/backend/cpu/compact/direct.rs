//! Direct stride-1 convolution on AVX-512: no im2col matrix and no GEMM packing, the layer's
//! input is read straight out of a zero-padded, channel-blocked copy (`[B][C/16][Hp][Wp][16]`,
//! the layout onnxruntime's MLAS calls NCHWc) by a register-blocked kernel that keeps 32 output
//! channels of up to 12 pixels in 24 vector registers.
//!
//! Why: on SD-1.5's 16x16 level im2col + GEMM ran at 240-310 GFLOP/s here (2 cores,
//! AVX-512) against onnxruntime's ~400 (its NCHWc direct convolution): building and re-reading
//! the 9x larger column matrix costs as much as the product, and Winograd's per-call weight
//! transform costs more than 64 tiles save. This kernel is the x86-64 override of that layer;
//! every other CPU keeps im2col and Winograd ([`super::conv_algo`] picks).
//!
//! The weight is repacked per call, into `[8 channel blocks][kh*kw][16 c][32 o]` slices (one 32-output
//! group, one 128-channel K-group) that stay in the packing thread's L2 until used, so q8 and
//! q4 weights are widened a slice at a time and never held whole in f32 (issue #11's memory
//! line).
use super::kernels::ConvShape;
#[cfg(target_arch = "x86_64")]
use super::kernels::{grow, SendPtr};
use super::weight::CompactWeight;
use rayon::prelude::*;

/// Output channels per kernel call (two 16-lane registers per pixel).
const OB: usize = 32;
/// Input channels per block (one 16-lane register).
const CB: usize = 16;
/// Most pixels one kernel call computes: 2 x 12 accumulators + 2 weights + 1 broadcast fit
/// in AVX-512's 32 registers.
#[cfg(target_arch = "x86_64")]
const MAX_R: usize = 12;
/// Input-channel blocks per pass over a group of tiles: the panel slice one pass reads
/// (8 x 16 channels x 9 taps x 32 outputs x 4 B = 147 KiB) stays in L2 while every tile of
/// the thread's share runs through it.
#[cfg(target_arch = "x86_64")]
const K_GROUP: usize = 8;

/// Whether this CPU runs the kernel (AVX-512F), and `LDM_CPU_DIRECT=0` does not turn it off
/// (to measure against, or as a way out should it misbehave on some CPU); read once.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::env::var("LDM_CPU_DIRECT").map_or(true, |v| v != "0")
                && std::arch::is_x86_feature_detected!("avx512f")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the kernel takes this layer's geometry (stride 1; any kernel size and padding).
pub fn fits(g: &ConvShape) -> bool {
    g.stride == 1
}

/// Scratch values (f32) the layer grows in the shared scratch: `[padded input, product]`,
/// matching [`Buffers`]. Each thread also keeps two K-group slices (147 KiB each for
/// 3x3) for the life of the process. For the memory planner.
pub fn scratch_values(g: &ConvShape) -> [u64; 2] {
    let (ho, wo) = g.out_hw();
    let (hp, wp) = padded(g);
    let cb = g.c.div_ceil(CB) as u64;
    [
        g.batch as u64 * cb * (hp * wp * CB) as u64,
        g.batch as u64 * g.o.div_ceil(OB) as u64 * (ho * wo * OB) as u64,
    ]
}

fn padded(g: &ConvShape) -> (usize, usize) {
    (g.h + g.pads[0] + g.pads[2], g.w + g.pads[1] + g.pads[3])
}

/// The scratch a call uses, grown as needed.
pub struct Buffers<'a> {
    pub input: &'a mut Vec<f32>,
    pub prod: &'a mut Vec<f32>,
}

thread_local! {
    /// A thread's packed K-group slice and the widened weight runs it is packed from: both
    /// stay in L2 between packing and use. Packing whole output groups ahead into one shared
    /// panel sent every packed value out to memory and back (10 ms of a 49 ms 1280-channel
    /// 16x16 layer).
    static SLICES: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// A conv weight packed once, at plan preparation, into the kernel's own layout: every
/// `[C/16][kh*kw][16 c][32 o]` K-group slice of every 32-output group, back to back
/// (`[O/32][C/16][taps][16][32]`, zero-padded to whole groups and blocks). The packed plan
/// (`--backend cpu-packed`) keeps these in f32 for the layers where repacking per call costs
/// more than the product: the 8x8 and 4x4 levels, where a 59 MB weight meets 16-128 pixels
/// ([`super::conv_algo::prepares`]).
pub struct Packed {
    data: Vec<f32>,
    /// `[O, C, kh, kw]` of the weight it was packed from.
    shape: [usize; 4],
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "packed{:?}", self.shape)
    }
}

impl Packed {
    /// Packs `w` (`[O, C, kh, kw]`, any stored dtype), one 32-output group per task.
    pub fn new(w: &CompactWeight) -> crate::Result<Packed> {
        let shape: [usize; 4] = w.shape[..].try_into().map_err(|_| crate::Error::Backend {
            backend: "cpu",
            msg: format!("a conv weight must be [O, C, kh, kw], not {:?}", w.shape),
        })?;
        let [o, c, kh, kw] = shape;
        let taps = kh * kw;
        let (ncb, kdim, block) = (c.div_ceil(CB), c * taps, taps * CB * OB);
        let mut data = vec![0f32; Self::values(&shape) as usize];
        data.par_chunks_mut((ncb * block).max(1))
            .enumerate()
            .for_each(|(op, group)| {
                let n_o = OB.min(o - op * OB);
                let mut rows = vec![0f32; n_o * kdim];
                w.widen_into(op * OB * kdim, &mut rows);
                for (cb, dst) in group.chunks_exact_mut(block).enumerate() {
                    pack(
                        &rows,
                        kdim,
                        cb * CB * taps,
                        n_o,
                        CB.min(c - cb * CB),
                        taps,
                        dst,
                    );
                }
            });
        Ok(Packed { data, shape })
    }

    /// f32 values a packed `[O, C, kh, kw]` weight holds. For the memory planner.
    pub fn values(shape: &[usize; 4]) -> u64 {
        let [o, c, kh, kw] = *shape;
        (o.div_ceil(OB) * c.div_ceil(CB) * kh * kw * CB * OB) as u64
    }

    pub fn bytes(&self) -> usize {
        4 * self.data.len()
    }

    /// Whether this is `g`'s weight.
    pub fn fits(&self, g: &ConvShape) -> bool {
        self.shape == [g.o, g.c, g.kh, g.kw]
    }
}

/// Where a call's weight comes from: the stored weight, packed a K-group slice at a time, or
/// one packed at preparation.
#[derive(Clone, Copy)]
pub enum Weight<'a> {
    Stored(&'a CompactWeight),
    Packed(&'a Packed),
}

/// `out [B, O, Ho, Wo] = conv(x [B, C, H, W], w [O, C, kh, kw]) + bias`, stride 1.
/// The caller checked [`available`] and [`fits`] (and, for a packed weight, [`Packed::fits`]).
pub(super) fn conv2d(
    x: &[f32],
    g: &ConvShape,
    w: Weight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    bufs: Buffers,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if available() && fits(g) {
            // SAFETY: AVX-512F is present (checked above).
            unsafe { conv2d_avx512(x, g, w, bias, out, bufs) };
            return;
        }
    }
    let _ = (x, w, bias, out, bufs);
    unreachable!(
        "direct::conv2d called without AVX-512 or with stride {}",
        g.stride
    );
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn conv2d_avx512(
    x: &[f32],
    g: &ConvShape,
    w: Weight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    bufs: Buffers,
) {
    let (ho, wo) = g.out_hw();
    let (hp, wp) = padded(g);
    let ncb = g.c.div_ceil(CB);
    let nop = g.o.div_ceil(OB);
    let taps = g.kh * g.kw;
    let plane = hp * wp * CB;
    let kdim = g.c * taps;

    // Zero-padded, channel-blocked input: input[b][cb][y][x][ci].
    let input = grow(bufs.input, g.batch * ncb * plane);
    input
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(bc, dst)| {
            let (b, cb) = (bc / ncb, bc % ncb);
            dst.fill(0.0);
            for ci in 0..CB.min(g.c - cb * CB) {
                let src = &x[((b * g.c) + cb * CB + ci) * g.h * g.w..][..g.h * g.w];
                for (y, row) in src.chunks_exact(g.w).enumerate() {
                    let d = &mut dst[((y + g.pads[0]) * wp + g.pads[1]) * CB + ci..];
                    for (xx, &v) in row.iter().enumerate() {
                        d[xx * CB] = v;
                    }
                }
            }
        });
    let input: &[f32] = input;

    // Tiles: (b, output row, run of up to MAX_R pixels).
    let per_row = wo.div_ceil(MAX_R);
    let r_full = wo.div_ceil(per_row.max(1));
    let tiles = g.batch * ho * per_row;
    // Each task is one 32-channel output group (all its tiles), so it packs each slice of
    // its weight once; layers with few groups split their tiles too, repacking per task.
    // A packed weight costs nothing to split.
    let threads = rayon::current_num_threads().max(1);
    let (stored, packed) = match w {
        Weight::Stored(w) => (Some(w), None),
        Weight::Packed(p) => (None, Some(&p.data[..])),
    };
    let splits = (2 * threads).div_ceil(nop).clamp(1, tiles.max(1));
    let chunk = tiles.div_ceil(splits);
    let prod = grow(bufs.prod, g.batch * nop * ho * wo * OB);
    let prod_ptr = SendPtr(prod.as_mut_ptr());
    let wf = stored.and_then(|w| w.f32_view());
    let block = taps * CB * OB;

    (0..nop * splits).into_par_iter().for_each(|task| {
        let (op, part) = (task / splits, task % splits);
        let (t0, t1) = (part * chunk, ((part + 1) * chunk).min(tiles));
        let rows0 = op * OB;
        let n_o = OB.min(g.o - rows0);
        SLICES.with(|cell| {
            let mut cell = cell.borrow_mut();
            let (slice, wide) = &mut *cell;
            let slice = match packed {
                Some(_) => &mut slice[..0],
                None => grow(slice, K_GROUP * block),
            };
            for k0 in (0..ncb).step_by(K_GROUP) {
                let kn = K_GROUP.min(ncb - k0);
                let col0 = k0 * CB * taps;
                let pan = match (packed, stored) {
                    (Some(p), _) => p[(op * ncb + k0) * block..][..kn * block].as_ptr(),
                    (None, Some(w)) => {
                        pack_group(w, wf, (rows0, n_o, kdim), (k0, kn, col0), g, slice, wide);
                        slice.as_ptr()
                    }
                    (None, None) => unreachable!("a weight is stored or packed"),
                };
                // The next group's weight runs, fetched a share per tile while this group
                // computes, so packing it does not wait on memory for 32 rows at once
                // (conv_algos, with and without, alternating, three rounds: 2x1280->640 at
                // 16x16 21.9-22.2 ms against 22.9-23.9, 2x1920->640 32-34.5 against 34.7-37.7).
                let next = (k0 + K_GROUP < ncb).then(|| {
                    let c1 = col0 + kn * CB * taps;
                    (c1, (K_GROUP * CB * taps).min(kdim - c1))
                });
                let lines = next.map_or(0, |(_, sp)| n_o * sp.div_ceil(16));
                let per_tile = lines.div_ceil((t1 - t0).max(1));
                for (i, t) in (t0..t1).enumerate() {
                    if let (Some((c1, sp)), Some(wf)) = (next, wf) {
                        let row_lines = sp.div_ceil(16);
                        for l in i * per_tile..((i + 1) * per_tile).min(lines) {
                            let (oo, li) = (l / row_lines, l % row_lines);
                            let at = (rows0 + oo) * kdim + c1 + li * 16;
                            // SAFETY: a prefetch of an address inside the weight.
                            unsafe {
                                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                                    wf.as_ptr().add(at) as *const i8,
                                )
                            };
                        }
                    }
                    let (b, rest) = (t / (ho * per_row), t % (ho * per_row));
                    let (y, xt) = (rest / per_row, rest % per_row);
                    let x0 = xt * r_full;
                    let r = r_full.min(wo - x0);
                    // SAFETY: the tile's input reads stay inside its image's padded planes
                    // (x0 + r - 1 + kw - 1 < wp, y + kh - 1 < hp), its panel reads inside
                    // the slice, and its 32 x r accumulators are its own part of `prod`.
                    unsafe {
                        let k = Kern {
                            panel: pan,
                            ncb: kn,
                            kh: g.kh,
                            kw: g.kw,
                            x: input
                                .as_ptr()
                                .add(((b * ncb + k0) * hp + y) * wp * CB + x0 * CB),
                            x_cb: plane,
                            x_row: wp * CB,
                            acc: prod_ptr.get().add((((b * nop + op) * ho + y) * wo + x0) * OB),
                            first: k0 == 0,
                        };
                        dispatch(r, &k);
                    }
                }
            }
        });
    });

    // out[b][o][y][x] = prod[b][o / 32][y][x][o % 32] + bias[o].
    let p = ho * wo;
    out[..g.batch * g.o * p]
        .par_chunks_mut(p.max(1))
        .enumerate()
        .for_each(|(bo, dst)| {
            let (b, o) = (bo / g.o, bo % g.o);
            let src = &prod[((b * nop + o / OB) * p) * OB + o % OB..];
            let bv = bias.map_or(0.0, |v| v[o]);
            for (i, d) in dst.iter_mut().enumerate() {
                *d = src[i * OB] + bv;
            }
        });
}

/// Packs the K-group `k0 .. k0 + kn` (channel blocks; weight columns from `col0`) of the
/// 32-output group at `rows0` into `slice`: from the mapping in place when the weight is f32,
/// otherwise through `wide`, this group's columns widened.
#[cfg(target_arch = "x86_64")]
fn pack_group(
    w: &CompactWeight,
    wf: Option<&[f32]>,
    (rows0, n_o, kdim): (usize, usize, usize),
    (k0, kn, col0): (usize, usize, usize),
    g: &ConvShape,
    slice: &mut [f32],
    wide: &mut Vec<f32>,
) {
    let taps = g.kh * g.kw;
    let block = taps * CB * OB;
    let span = (kn * CB * taps).min(kdim - col0);
    let (src, ld, c0) = match wf {
        Some(wf) => (&wf[rows0 * kdim..], kdim, col0),
        None => {
            let wide = grow(wide, n_o * span);
            for (oo, run) in wide.chunks_exact_mut(span).enumerate() {
                w.widen_into((rows0 + oo) * kdim + col0, run);
            }
            (&wide[..], span, 0)
        }
    };
    for (i, dst) in slice.chunks_exact_mut(block).take(kn).enumerate() {
        let cb = k0 + i;
        pack(
            src,
            ld,
            c0 + i * CB * taps,
            n_o,
            CB.min(g.c - cb * CB),
            taps,
            dst,
        );
    }
}

/// `dst[t][ci][oo] = rows[oo][col0 + ci * taps + t]` for `n_o` rows of `kdim` values and `n_c`
/// channels; zero elsewhere. Reads each row's run contiguously; the 18 KiB block stays in L1
/// while its 4608 values are stored.
fn pack(
    rows: &[f32],
    kdim: usize,
    col0: usize,
    n_o: usize,
    n_c: usize,
    taps: usize,
    dst: &mut [f32],
) {
    debug_assert!(dst.len() == taps * CB * OB);
    if n_o < OB || n_c < CB {
        dst.fill(0.0);
    }
    for oo in 0..n_o {
        let src = &rows[oo * kdim + col0..][..n_c * taps];
        for (ci, run) in src.chunks_exact(taps).enumerate() {
            let d = &mut dst[ci * OB + oo..];
            for (t, &v) in run.iter().enumerate() {
                d[t * CB * OB] = v;
            }
        }
    }
}

/// One kernel call: 32 output channels of `r` pixels over `ncb` input-channel blocks.
#[cfg(target_arch = "x86_64")]
struct Kern {
    panel: *const f32,
    ncb: usize,
    kh: usize,
    kw: usize,
    /// Input at the tile's top-left tap, first channel block of the group.
    x: *const f32,
    x_cb: usize,
    x_row: usize,
    /// `[r][32]` accumulators in the product.
    acc: *mut f32,
    first: bool,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dispatch(r: usize, k: &Kern) {
    match r {
        1 => tile::<1>(k),
        2 => tile::<2>(k),
        3 => tile::<3>(k),
        4 => tile::<4>(k),
        5 => tile::<5>(k),
        6 => tile::<6>(k),
        7 => tile::<7>(k),
        8 => tile::<8>(k),
        9 => tile::<9>(k),
        10 => tile::<10>(k),
        11 => tile::<11>(k),
        _ => tile::<12>(k),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize>(k: &Kern) {
    use std::arch::x86_64::*;
    let mut a0 = [_mm512_setzero_ps(); R];
    let mut a1 = [_mm512_setzero_ps(); R];
    if !k.first {
        for r in 0..R {
            a0[r] = _mm512_loadu_ps(k.acc.add(r * OB));
            a1[r] = _mm512_loadu_ps(k.acc.add(r * OB + 16));
        }
    }
    let mut wp = k.panel;
    for cb in 0..k.ncb {
        for ky in 0..k.kh {
            for kx in 0..k.kw {
                let xp = k.x.add(cb * k.x_cb + ky * k.x_row + kx * CB);
                for ci in 0..CB {
                    let w0 = _mm512_loadu_ps(wp.add(ci * OB));
                    let w1 = _mm512_loadu_ps(wp.add(ci * OB + 16));
                    for r in 0..R {
                        let v = _mm512_set1_ps(*xp.add(r * CB + ci));
                        a0[r] = _mm512_fmadd_ps(w0, v, a0[r]);
                        a1[r] = _mm512_fmadd_ps(w1, v, a1[r]);
                    }
                }
                wp = wp.add(CB * OB);
            }
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(k.acc.add(r * OB), a0[r]);
        _mm512_storeu_ps(k.acc.add(r * OB + 16), a1[r]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{data, max_rel_err, naive, shape};
    use super::*;
    use crate::format::quant::{dequantize_q4, dequantize_q8, quantize_q4, quantize_q8};
    use crate::format::{DType, SharedBytes};

    /// Max error relative to the largest output against the f64 definition, and the lengths
    /// the shared buffers grew to, with the weight packed per call (`packed` false) or at
    /// preparation. The output starts as NaN, so a value never written shows.
    fn check(g: ConvShape, dtype: DType, packed: bool) -> (f64, [u64; 2]) {
        let x = data(g.batch * g.c * g.h * g.w, 1);
        let mut wf = data(g.o * g.c * g.kh * g.kw, 2);
        let bias = data(g.o, 3);
        let dims = [g.o, g.c, g.kh, g.kw];
        let w = match dtype {
            DType::Q8 => {
                let q = quantize_q8(&wf);
                wf = dequantize_q8(&q, wf.len());
                CompactWeight::new(DType::Q8, &dims, SharedBytes::from_vec(q)).unwrap()
            }
            DType::Q4 => {
                let q = quantize_q4(&wf);
                wf = dequantize_q4(&q, wf.len());
                CompactWeight::new(DType::Q4, &dims, SharedBytes::from_vec(q)).unwrap()
            }
            _ => CompactWeight::from_f32(&dims, &wf).unwrap(),
        };
        let (ho, wo) = g.out_hw();
        let mut out = vec![f32::NAN; g.batch * g.o * ho * wo];
        let (mut input, mut prod) = (vec![], vec![]);
        let bufs = Buffers {
            input: &mut input,
            prod: &mut prod,
        };
        let p = Packed::new(&w).unwrap();
        assert!(p.fits(&g));
        assert_eq!(p.bytes() as u64, 4 * Packed::values(&dims));
        let weight = match packed {
            true => Weight::Packed(&p),
            false => Weight::Stored(&w),
        };
        conv2d(&x, &g, weight, Some(&bias), &mut out, bufs);
        let r = naive(&x, &g, &wf, &bias);
        (
            max_rel_err(&out, &r),
            [input.len() as u64, prod.len() as u64],
        )
    }

    #[test]
    fn matches_a_direct_convolution_on_odd_shapes() {
        if !available() {
            eprintln!("SKIPPED: this CPU has no AVX-512F, so the direct kernel never runs here");
            return;
        }
        let shapes = [
            // Partial channel block and output group, one pixel per row run.
            shape(1, 5, (3, 1), 3, 3, [1; 4]),
            // Rows of 13: runs of 7 and 6; 45 outputs: a partial second group.
            shape(2, 70, (13, 13), 45, 3, [1; 4]),
            // 200 channels: two K-groups (8 blocks each), the second partial.
            shape(1, 200, (16, 16), 40, 3, [1; 4]),
            // Asymmetric padding, 12-pixel runs (24 wide).
            shape(1, 33, (9, 24), 64, 3, [0, 1, 2, 0]),
            // Other kernel sizes: 1x1 and 5x5.
            shape(2, 20, (7, 9), 33, 1, [0; 4]),
            shape(1, 17, (11, 12), 35, 5, [2; 4]),
        ];
        for g in shapes {
            for dtype in [DType::F32, DType::Q8, DType::Q4] {
                for packed in [false, true] {
                    let (err, _) = check(g, dtype, packed);
                    assert!(
                        err < 1e-5,
                        "{g:?} {dtype:?} packed {packed}: relative error {err:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn scratch_values_are_what_the_layer_grows() {
        if !available() {
            eprintln!("SKIPPED: this CPU has no AVX-512F, so the direct kernel never runs here");
            return;
        }
        for g in [
            shape(2, 70, (13, 13), 45, 3, [1; 4]),
            shape(1, 33, (9, 24), 64, 3, [0, 1, 2, 0]),
        ] {
            for packed in [false, true] {
                let (_, grown) = check(g, DType::Q8, packed);
                assert_eq!(grown, scratch_values(&g), "{g:?} packed {packed}");
            }
        }
    }
}
