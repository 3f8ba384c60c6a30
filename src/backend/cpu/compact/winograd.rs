//! Winograd convolution F(m x m, 3 x 3) for stride-1 3x3 layers (Lavin & Gray 2016, "Fast
//! Algorithms for Convolutional Neural Networks"), the same family ncnn and NNPACK run on CPUs.
//!
//! A 3x3 convolution computes each `m x m` block of outputs from an `a x a` input tile
//! (`a = m + 2`). Transformed into the Winograd domain, the product over input channels becomes
//! `a * a` independent GEMMs of `[O, C] x [C, tiles]`, which do `a^2 / (9 m^2)` of the direct
//! multiply-adds: 0.44 for F(2x2), 0.25 for F(4x4). The transforms are additions and a few
//! constant multiplications per value, done here over whole rows of tiles so they vectorize.
//!
//! Memory stays bounded like the im2col path's: the transformed input covers a chunk of tile
//! rows (at most `COLS` values), the transformed weight a panel of output channels (at most
//! `PANEL` values), widened from the stored dtype and transformed per call, so a q8 weight is
//! never kept in f32.
use super::kernels::{grow, matmul, ConvShape, Mat, SendPtr};
use super::math::multiversion;
use super::weight::CompactWeight;
use rayon::prelude::*;

/// One Winograd variant: output tile `m`, input tile `a = m + 2`, and its matrices, row-major:
/// `bt [a, a]` (input), `g [a, 3]` (weight), `at [m, a]` (output).
pub struct Variant {
    pub m: usize,
    pub a: usize,
    bt: &'static [f32],
    g: &'static [f32],
    at: &'static [f32],
}

/// F(2x2, 3x3): exact in floating point up to rounding of a few additions.
pub const F2: Variant = Variant {
    m: 2,
    a: 4,
    bt: &[
        1.0, 0.0, -1.0, 0.0, //
        0.0, 1.0, 1.0, 0.0, //
        0.0, -1.0, 1.0, 0.0, //
        0.0, 1.0, 0.0, -1.0,
    ],
    g: &[
        1.0, 0.0, 0.0, //
        0.5, 0.5, 0.5, //
        0.5, -0.5, 0.5, //
        0.0, 0.0, 1.0,
    ],
    at: &[
        1.0, 1.0, 1.0, 0.0, //
        0.0, 1.0, -1.0, -1.0,
    ],
};

/// F(4x4, 3x3) with interpolation points 0, +-1, +-2 (Lavin & Gray, section 4.2): a quarter of
/// the direct multiply-adds, at a few times F(2x2)'s rounding error.
pub const F4: Variant = Variant {
    m: 4,
    a: 6,
    bt: &[
        4.0, 0.0, -5.0, 0.0, 1.0, 0.0, //
        0.0, -4.0, -4.0, 1.0, 1.0, 0.0, //
        0.0, 4.0, -4.0, -1.0, 1.0, 0.0, //
        0.0, -2.0, -1.0, 2.0, 1.0, 0.0, //
        0.0, 2.0, -1.0, -2.0, 1.0, 0.0, //
        0.0, 4.0, 0.0, -5.0, 0.0, 1.0,
    ],
    g: &[
        1.0 / 4.0,
        0.0,
        0.0, //
        -1.0 / 6.0,
        -1.0 / 6.0,
        -1.0 / 6.0, //
        -1.0 / 6.0,
        1.0 / 6.0,
        -1.0 / 6.0, //
        1.0 / 24.0,
        1.0 / 12.0,
        1.0 / 6.0, //
        1.0 / 24.0,
        -1.0 / 12.0,
        1.0 / 6.0, //
        0.0,
        0.0,
        1.0,
    ],
    at: &[
        1.0, 1.0, 1.0, 1.0, 1.0, 0.0, //
        0.0, 1.0, -1.0, 2.0, -2.0, 0.0, //
        0.0, 1.0, 1.0, 4.0, 4.0, 0.0, //
        0.0, 1.0, -1.0, 8.0, -8.0, 1.0,
    ],
};

/// The chunking of one layer: output channels per weight panel and tile rows per input chunk.
pub struct Blocks {
    pub panel_rows: usize,
    pub tile_rows: usize,
}

/// Panel and chunk sizes that keep every buffer inside the scratch limits `panel` and `cols`
/// (in f32 values): the transformed weight `[nb, a^2, C]`, the widened weight `[nb, 9C]`, the
/// transformed input `[C, a^2, rows * tw]` and the product `[nb, a^2, rows * tw]`.
pub fn blocks(v: &Variant, g: &ConvShape, panel: usize, cols: usize) -> Blocks {
    let (ho, wo) = g.out_hw();
    let (th, st) = (ho.div_ceil(v.m), stride(v, wo));
    let a2 = v.a * v.a;
    let mut panel_rows = (panel / (a2 * g.c).max(1)).clamp(1, g.o.max(1));
    // Whole multiples of the GEMM's 16-row register block: a 102-row panel of a 1280-channel
    // layer ran its last 6 rows through the slow edge kernel in every one of 13 panels.
    if panel_rows < g.o && panel_rows >= 16 {
        panel_rows -= panel_rows % 16;
    }
    let widest = g.c.max(panel_rows);
    let tile_rows = (cols / (a2 * widest * st).max(1)).clamp(1, th.max(1));
    Blocks {
        panel_rows,
        tile_rows,
    }
}

/// Scratch values (f32) the layer grows: `[widened weight, transformed input, transformed
/// weight, product]`, matching the buffers `conv2d` takes. For the memory planner.
pub fn scratch_values(v: &Variant, g: &ConvShape, panel: usize, cols: usize) -> [u64; 4] {
    let b = blocks(v, g, panel, cols);
    let (_, wo) = g.out_hw();
    let tc = (b.tile_rows * stride(v, wo)) as u64;
    let (a2, nb, c) = ((v.a * v.a) as u64, b.panel_rows as u64, g.c as u64);
    [nb * 9 * c, c * a2 * tc, nb * a2 * c, nb * a2 * tc]
}

/// `u[o][xi][c] = (G w[o][c] G^T)[xi]` for the `nb` weight rows `w [nb, C, 3, 3]`.
fn transform_weight(v: &Variant, w: &[f32], c: usize, u: &mut [f32]) {
    let a = v.a;
    u.par_chunks_mut(a * a * c)
        .zip(w.par_chunks(9 * c))
        .for_each_init(
            || (vec![0f32; 9 * c], vec![0f32; a * 3 * c]),
            |(wt, t), (uo, wo)| weight_row(v, wo, c, wt, t, uo),
        );
}

multiversion!(
    fn weight_row(v: &Variant, wo: &[f32], c: usize, wt: &mut [f32], t: &mut [f32], uo: &mut [f32]) => weight_row_body
);

#[inline(always)]
fn weight_row_body(
    v: &Variant,
    wo: &[f32],
    c: usize,
    wt: &mut [f32],
    t: &mut [f32],
    uo: &mut [f32],
) {
    let a = v.a;
    // wt[k][c] = wo[c][k]: the channel becomes the contiguous, vectorized axis.
    for (k, row) in wt.chunks_exact_mut(c).enumerate().take(9) {
        for (d, k9) in row.iter_mut().zip(wo.chunks_exact(9)) {
            *d = k9[k];
        }
    }
    // t[yi][kx][c] = sum_ky G[yi][ky] w[ky][kx][c]
    for yi in 0..a {
        for kx in 0..3 {
            let dst = &mut t[(yi * 3 + kx) * c..][..c];
            combine(dst, 0.0, &v.g[yi * 3..][..3], |ky| {
                &wt[(ky * 3 + kx) * c..][..c]
            });
        }
    }
    // u[yi][xi][c] = sum_kx G[xi][kx] t[yi][kx][c]
    for yi in 0..a {
        for xi in 0..a {
            let dst = &mut uo[(yi * a + xi) * c..][..c];
            combine(dst, 0.0, &v.g[xi * 3..][..3], |kx| {
                &t[(yi * 3 + kx) * c..][..c]
            });
        }
    }
}

/// `dst = init + sum_k row[k] src(k)`, skipping zero coefficients: one row of a transform
/// matrix applied to whole vectors of tiles.
#[inline(always)]
fn combine<'a>(dst: &mut [f32], init: f32, row: &[f32], src: impl Fn(usize) -> &'a [f32]) {
    dst.fill(init);
    for (k, &c) in row.iter().enumerate() {
        if c != 0.0 {
            axpy(c, src(k), dst);
        }
    }
}

#[inline(always)]
fn axpy(s: f32, x: &[f32], y: &mut [f32]) {
    if s == 1.0 {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y += x);
    } else if s == -1.0 {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y -= x);
    } else {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y += s * x);
    }
}

/// Tiles per tile row as the transforms lay them out: `tw` real ones and `(a - 1) / m` more
/// whose values are never used. The extra columns let each transform step run as one long
/// vector operation over every tile row of a chunk (tile `tx`'s `j`-th input column is
/// phase `j % m` of the row at index `tx + j / m`, which for the last real tile reaches into
/// the next tile row's slots), at the cost of computing `(a - 1) / m / tw` more tiles: 1/17
/// for F(4x4) at 64 columns.
pub fn stride(v: &Variant, wo: usize) -> usize {
    wo.div_ceil(v.m) + (v.a - 1) / v.m
}

/// The transformed input of tile rows `r0 .. r0 + rows` of one image `x [C, H, W]`:
/// `vt[c][xi][t] = (B^T d B)[xi]` for the tile `t = ty * stride + tx`.
fn transform_input(v: &Variant, x: &[f32], g: &ConvShape, r0: usize, rows: usize, vt: &mut [f32]) {
    let (a, m) = (v.a, v.m);
    let s = stride(v, g.out_hw().1);
    let tc = rows * s;
    let extra = (a - 1) / m;
    vt.par_chunks_mut(a * a * tc)
        .zip(x.par_chunks(g.h * g.w))
        .for_each_init(
            || {
                (
                    vec![0f32; s * m + a],
                    vec![0f32; a * m * (tc + extra)],
                    vec![0f32; a * a * tc],
                )
            },
            |(padded, ph, r), (vc, plane)| input_channel(v, plane, g, r0, rows, padded, ph, r, vc),
        );
}

multiversion!(
    #[allow(clippy::too_many_arguments)]
    fn input_channel(v: &Variant, plane: &[f32], g: &ConvShape, r0: usize, rows: usize, padded: &mut [f32], ph: &mut [f32], r: &mut [f32], vc: &mut [f32]) => input_channel_body
);

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn input_channel_body(
    v: &Variant,
    plane: &[f32],
    g: &ConvShape,
    r0: usize,
    rows: usize,
    padded: &mut [f32],
    ph: &mut [f32],
    r: &mut [f32],
    vc: &mut [f32],
) {
    let (a, m) = (v.a, v.m);
    let s = stride(v, g.out_hw().1);
    let tc = rows * s;
    let len = tc + (a - 1) / m;
    let (pt, pl) = (g.pads[0], g.pads[1]);
    // ph[i][q][ty * s + k] = x[(r0 + ty) m + i - top][k m + q - left]: the tile rows' input
    // rows, split into their m phases, zero outside the image.
    for i in 0..a {
        for ty in 0..rows {
            let iy = ((r0 + ty) * m + i).checked_sub(pt).filter(|&y| y < g.h);
            padded.fill(0.0);
            if let Some(iy) = iy {
                let src = &plane[iy * g.w..][..g.w];
                // padded[k] = x[.., k - left]
                let n = g.w.min(padded.len().saturating_sub(pl));
                padded[pl..pl + n].copy_from_slice(&src[..n]);
            }
            for q in 0..m {
                let dst = &mut ph[(i * m + q) * len + ty * s..][..s];
                for (k, d) in dst.iter_mut().enumerate() {
                    *d = padded[k * m + q];
                }
            }
        }
    }
    // r[i][xi][t] = sum_j B^T[xi][j] d[i][j][t]
    for i in 0..a {
        for xi in 0..a {
            let dst = &mut r[(i * a + xi) * tc..][..tc];
            combine(dst, 0.0, &v.bt[xi * a..][..a], |j| {
                &ph[(i * m + j % m) * len + j / m..][..tc]
            });
        }
    }
    // vc[yi][xi][t] = sum_i B^T[yi][i] r[i][xi][t]
    for yi in 0..a {
        for xi in 0..a {
            let dst = &mut vc[(yi * a + xi) * tc..][..tc];
            combine(dst, 0.0, &v.bt[yi * a..][..a], |i| {
                &r[(i * a + xi) * tc..][..tc]
            });
        }
    }
}

/// Writes output rows of tile rows `r0 .. r0 + rows` for the `nb` channels of `out [nb, Ho,
/// Wo]` from the product `prod[o][xi][t]`: `y = A^T M A + bias`, cut at the image's edge.
fn transform_output(
    v: &Variant,
    prod: &[f32],
    r0: usize,
    rows: usize,
    (ho, wo): (usize, usize),
    bias: &[f32],
    out: &mut [f32],
) {
    let (a, m) = (v.a, v.m);
    let tc = rows * stride(v, wo);
    out.par_chunks_mut(ho * wo)
        .zip(prod.par_chunks(a * a * tc))
        .zip(bias.par_iter())
        .for_each_init(
            || (vec![0f32; a * m * tc], vec![0f32; m * m * tc]),
            |(s, y), ((oc, mo), &b)| output_channel(v, mo, r0, rows, ho, wo, b, s, y, oc),
        );
}

multiversion!(
    #[allow(clippy::too_many_arguments)]
    fn output_channel(v: &Variant, mo: &[f32], r0: usize, rows: usize, ho: usize, wo: usize, b: f32, s: &mut [f32], y: &mut [f32], oc: &mut [f32]) => output_channel_body
);

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn output_channel_body(
    v: &Variant,
    mo: &[f32],
    r0: usize,
    rows: usize,
    ho: usize,
    wo: usize,
    b: f32,
    s: &mut [f32],
    y: &mut [f32],
    oc: &mut [f32],
) {
    let (a, m) = (v.a, v.m);
    let st = stride(v, wo);
    let tc = rows * st;
    // s[yi][ux][t] = sum_xi A^T[ux][xi] M[yi][xi][t]
    for yi in 0..a {
        for ux in 0..m {
            let dst = &mut s[(yi * m + ux) * tc..][..tc];
            combine(dst, 0.0, &v.at[ux * a..][..a], |xi| {
                &mo[(yi * a + xi) * tc..][..tc]
            });
        }
    }
    // y[uy][ux][t] = bias + sum_yi A^T[uy][yi] s[yi][ux][t]
    for uy in 0..m {
        for ux in 0..m {
            let dst = &mut y[(uy * m + ux) * tc..][..tc];
            combine(dst, b, &v.at[uy * a..][..a], |yi| {
                &s[(yi * m + ux) * tc..][..tc]
            });
        }
    }
    let tw = wo.div_ceil(m);
    for ty in 0..rows {
        for uy in 0..m {
            let oy = (r0 + ty) * m + uy;
            if oy >= ho {
                break;
            }
            let row = &mut oc[oy * wo..][..wo];
            for ux in 0..m {
                let src = &y[(uy * m + ux) * tc + ty * st..][..tw];
                for (tx, &val) in src.iter().enumerate() {
                    if let Some(d) = row.get_mut(tx * m + ux) {
                        *d = val;
                    }
                }
            }
        }
    }
}

/// Buffers the layer works in, taken from the kernels' shared scratch.
pub struct Buffers<'a> {
    pub widened: &'a mut Vec<f32>,
    pub input: &'a mut Vec<f32>,
    pub weight: &'a mut Vec<f32>,
    pub prod: &'a mut Vec<f32>,
}

/// A 3x3 weight transformed once, at plan preparation, for one variant: `u [O][a^2][C]`, the
/// whole layer's left GEMM operands (the packed plan, `--backend cpu-packed`). Per call the
/// transform reads the weight and writes `a^2 / 9` times as much again: 1.8x for F(2x2), 4x
/// for F(4x4).
pub struct Transformed {
    u: Vec<f32>,
    /// The variant's output tile and `[O, C]` of the weight.
    m: usize,
    shape: [usize; 2],
}

impl std::fmt::Debug for Transformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "winograd-f{}{:?}", self.m, self.shape)
    }
}

impl Transformed {
    /// Transforms `w [O, C, 3, 3]` (any stored dtype), widening at most a panel of rows at a
    /// time.
    pub fn new(v: &Variant, w: &CompactWeight) -> crate::Result<Transformed> {
        let (o, c) = match w.shape[..] {
            [o, c, 3, 3] => (o, c),
            _ => {
                return Err(crate::Error::Backend {
                    backend: "cpu",
                    msg: format!("a Winograd weight must be [O, C, 3, 3], not {:?}", w.shape),
                })
            }
        };
        let (a2, kdim) = (v.a * v.a, 9 * c);
        let mut u = vec![0f32; Self::values(v, o, c) as usize];
        let rows = ((1 << 20) / kdim.max(1)).clamp(1, o.max(1));
        let mut wide = Vec::new();
        for o0 in (0..o).step_by(rows) {
            let nb = rows.min(o - o0);
            let src = match w.f32_view() {
                Some(wf) => &wf[o0 * kdim..][..nb * kdim],
                None => {
                    let wide = grow(&mut wide, nb * kdim);
                    w.widen_into(o0 * kdim, wide);
                    &wide[..]
                }
            };
            transform_weight(v, src, c, &mut u[o0 * a2 * c..][..nb * a2 * c]);
        }
        Ok(Transformed {
            u,
            m: v.m,
            shape: [o, c],
        })
    }

    /// f32 values a transformed `[O, C, 3, 3]` weight holds. For the memory planner.
    pub fn values(v: &Variant, o: usize, c: usize) -> u64 {
        (o * v.a * v.a * c) as u64
    }

    pub fn bytes(&self) -> usize {
        4 * self.u.len()
    }

    /// Whether this is `g`'s weight, transformed for `v`.
    pub fn fits(&self, v: &Variant, g: &ConvShape) -> bool {
        self.m == v.m && self.shape == [g.o, g.c] && g.kh == 3 && g.kw == 3
    }
}

/// Where a call's weight comes from: the stored weight, transformed per call a panel at a
/// time, or one transformed at preparation.
#[derive(Clone, Copy)]
pub enum Weight<'a> {
    Stored(&'a CompactWeight),
    Transformed(&'a Transformed),
}

/// `out[B, O, Ho, Wo] = conv3x3(x[B, C, H, W], w[O, C, 3, 3]) (+ bias[O])`, stride 1. A
/// transformed weight must [`Transformed::fits`] `v` and `g`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    v: &Variant,
    x: &[f32],
    g: &ConvShape,
    w: Weight,
    bias: Option<&[f32]>,
    out: &mut [f32],
    bufs: Buffers,
    (panel, cols): (usize, usize),
) {
    debug_assert!(g.kh == 3 && g.kw == 3 && g.stride == 1);
    let (ho, wo) = g.out_hw();
    let (th, st) = (ho.div_ceil(v.m), stride(v, wo));
    let a2 = v.a * v.a;
    let b = blocks(v, g, panel, cols);
    let (nb_max, rows_max) = (b.panel_rows, b.tile_rows);
    let zeros;
    let bias = match bias {
        Some(b) => b,
        None => {
            zeros = vec![0f32; g.o];
            &zeros
        }
    };
    let (stored, pre) = match w {
        Weight::Stored(w) => (Some(w), None),
        Weight::Transformed(t) => (None, Some(&t.u[..])),
    };
    let direct = stored.and_then(|w| w.f32_view());
    let whole = pre.is_some() || nb_max >= g.o;
    let kdim = 9 * g.c;
    let u = match pre {
        Some(_) => &mut bufs.weight[..0],
        None => grow(bufs.weight, nb_max * a2 * g.c),
    };
    let widened = match (stored, direct) {
        (Some(_), None) => grow(bufs.widened, nb_max * kdim),
        _ => &mut bufs.widened[..0],
    };
    let mut load_panel = |o0: usize, nb: usize, u: &mut [f32]| {
        let Some(w) = stored else { return };
        let rows = match direct {
            Some(wf) => &wf[o0 * kdim..][..nb * kdim],
            None => {
                w.widen_into(o0 * kdim, &mut widened[..nb * kdim]);
                &widened[..nb * kdim]
            }
        };
        transform_weight(v, rows, g.c, &mut u[..nb * a2 * g.c]);
    };
    if whole && pre.is_none() {
        load_panel(0, g.o, u);
    }
    let vt = grow(bufs.input, g.c * a2 * rows_max * st);
    let prod = grow(bufs.prod, nb_max * a2 * rows_max * st);
    let image = g.c * g.h * g.w;
    for (bi, ob) in out
        .chunks_exact_mut(g.o * ho * wo)
        .enumerate()
        .take(g.batch)
    {
        let xb = &x[bi * image..][..image];
        for r0 in (0..th).step_by(rows_max) {
            let rows = rows_max.min(th - r0);
            let tc = rows * st;
            transform_input(v, xb, g, r0, rows, &mut vt[..g.c * a2 * tc]);
            for o0 in (0..g.o).step_by(nb_max) {
                let nb = nb_max.min(g.o - o0);
                let uo: &[f32] = match pre {
                    Some(p) => &p[o0 * a2 * g.c..],
                    None if whole => &u[o0 * a2 * g.c..],
                    None => {
                        load_panel(o0, nb, u);
                        &u[..]
                    }
                };
                let (up, vp, pp) = (
                    SendPtr(uo.as_ptr() as *mut f32),
                    SendPtr(vt.as_ptr() as *mut f32),
                    SendPtr(prod.as_mut_ptr()),
                );
                // The a^2 products are independent: one per thread at a time, each GEMM
                // single-threaded, so no product waits on another's threads.
                (0..a2).into_par_iter().for_each(|xi| {
                    let (ld_u, ld_v) = ((a2 * g.c) as isize, (a2 * tc) as isize);
                    // SAFETY: product xi reads rows xi of u [nb][a2][C] and vt [C][a2][tc],
                    // and writes row xi of prod [nb][a2][tc], which no other xi writes; every
                    // extent lies inside the buffers grown above.
                    unsafe {
                        matmul(
                            nb,
                            tc,
                            g.c,
                            (pp.get().add(xi * tc), ld_v, 1),
                            false,
                            Mat {
                                ptr: up.get().add(xi * g.c),
                                rs: ld_u,
                                cs: 1,
                            },
                            Mat {
                                ptr: vp.get().add(xi * tc),
                                rs: ld_v,
                                cs: 1,
                            },
                            1.0,
                            gemm::Parallelism::None,
                        )
                    }
                });
                transform_output(
                    v,
                    &prod[..nb * a2 * tc],
                    r0,
                    rows,
                    (ho, wo),
                    &bias[o0..o0 + nb],
                    &mut ob[o0 * ho * wo..(o0 + nb) * ho * wo],
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{data, max_rel_err, naive, shape};
    use super::*;
    use crate::format::quant::{dequantize_q8, quantize_q8};
    use crate::format::{DType, SharedBytes};

    /// Runs the layer on fresh buffers (the output starts as NaN, so a value never written
    /// shows); returns the output and the lengths the buffers grew to.
    fn run(
        v: &Variant,
        x: &[f32],
        g: &ConvShape,
        w: Weight,
        bias: Option<&[f32]>,
        limits: (usize, usize),
    ) -> (Vec<f32>, [u64; 4]) {
        let (ho, wo) = g.out_hw();
        let mut out = vec![f32::NAN; g.batch * g.o * ho * wo];
        let (mut a, mut b, mut c, mut d) = (vec![], vec![], vec![], vec![]);
        let bufs = Buffers {
            widened: &mut a,
            input: &mut b,
            weight: &mut c,
            prod: &mut d,
        };
        conv2d(v, x, g, w, bias, &mut out, bufs, limits);
        (out, [a.len(), b.len(), c.len(), d.len()].map(|n| n as u64))
    }

    /// Max error relative to the largest output, of `v` on `g` with scratch limits
    /// `(panel, cols)` small enough to force several weight panels and input chunks; the
    /// weight transformed per call, or beforehand (`pre`).
    fn rel_err(v: &Variant, g: ConvShape, q8: bool, pre: bool, limits: (usize, usize)) -> f64 {
        let x = data(g.batch * g.c * g.h * g.w, 1);
        let mut wf = data(g.o * g.c * 9, 2);
        let bias = data(g.o, 3);
        let w = if q8 {
            let bytes = quantize_q8(&wf);
            wf = dequantize_q8(&bytes, wf.len());
            CompactWeight::new(DType::Q8, &[g.o, g.c, 3, 3], SharedBytes::from_vec(bytes)).unwrap()
        } else {
            CompactWeight::from_f32(&[g.o, g.c, 3, 3], &wf).unwrap()
        };
        let t = Transformed::new(v, &w).unwrap();
        assert!(t.fits(v, &g));
        assert_eq!(t.bytes() as u64, 4 * Transformed::values(v, g.o, g.c));
        let weight = match pre {
            true => Weight::Transformed(&t),
            false => Weight::Stored(&w),
        };
        let (out, _) = run(v, &x, &g, weight, Some(&bias), limits);
        let r = naive(&x, &g, &wf, &bias);
        max_rel_err(&out, &r)
    }

    #[test]
    fn variants_match_a_direct_convolution() {
        let shapes = [
            shape(1, 5, (8, 8), 3, 3, [1; 4]),
            shape(2, 7, (13, 11), 6, 3, [1; 4]),
            shape(1, 4, (9, 17), 5, 3, [0, 1, 2, 0]),
            shape(1, 3, (6, 5), 2, 3, [0; 4]),
            shape(3, 9, (21, 19), 10, 3, [2, 0, 1, 2]),
        ];
        let big = (usize::MAX / 64, usize::MAX / 64);
        for v in [&F2, &F4] {
            for g in shapes {
                for (q8, pre) in [(false, false), (true, false), (false, true), (true, true)] {
                    // Whole, then limits that split the weight into panels of one or two output
                    // channels and the input into chunks of one tile row.
                    for limits in [big, (v.a * v.a * g.c * 2, 1)] {
                        let e = rel_err(v, g, q8, pre, limits);
                        let tol = if v.m == 2 { 2e-6 } else { 2e-5 };
                        assert!(
                            e <= tol,
                            "F({m}) {g:?} q8 {q8} pre {pre} limits {limits:?}: {e:.2e}",
                            m = v.m
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn scratch_values_bound_what_the_layer_grows() {
        let g = shape(2, 70, (40, 37), 50, 3, [1; 4]);
        for v in [&F2, &F4] {
            let limits = (v.a * v.a * g.c * 7, 200_000);
            let [pw, pi, pu, pp] = scratch_values(v, &g, limits.0, limits.1);
            let x = data(g.batch * g.c * g.h * g.w, 1);
            let w = CompactWeight::new(
                DType::Q8,
                &[g.o, g.c, 3, 3],
                SharedBytes::from_vec(quantize_q8(&data(g.o * g.c * 9, 2))),
            )
            .unwrap();
            let (_, grown) = run(v, &x, &g, Weight::Stored(&w), None, limits);
            assert_eq!(grown, [pw, pi, pu, pp]);
            assert!(pu <= limits.0 as u64 && pi <= limits.1 as u64 && pp <= limits.1 as u64);
            // A prepared weight grows neither weight buffer (the planner's packed count).
            let t = Transformed::new(v, &w).unwrap();
            let (_, grown) = run(v, &x, &g, Weight::Transformed(&t), None, limits);
            assert_eq!(grown, [0, pi, 0, pp]);
        }
    }
}
