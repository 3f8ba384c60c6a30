//! Plain f32 kernels of every IR op. Written for obviousness, not speed: this is the oracle.
//! Reductions accumulate in f64 so the oracle is more precise than what it judges.
use crate::graph::shape::numel;
use crate::{Error, Result};

fn strides(s: &[usize]) -> Vec<usize> {
    let mut st = vec![1; s.len()];
    for i in (0..s.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1] * s[i + 1];
    }
    st
}

/// Elementwise binary op with numpy broadcasting into `out_shape`.
pub fn broadcast_binary(
    a: &[f32],
    sa: &[usize],
    b: &[f32],
    sb: &[usize],
    out_shape: &[usize],
    f: impl Fn(f32, f32) -> f32,
) -> Vec<f32> {
    let n = out_shape.len();
    let pad = |s: &[usize]| {
        let mut p = vec![1; n - s.len()];
        p.extend_from_slice(s);
        p
    };
    let (pa, pb) = (pad(sa), pad(sb));
    let (sta, stb) = (strides(&pa), strides(&pb));
    let sto = strides(out_shape);
    (0..numel(out_shape))
        .map(|i| {
            let (mut ia, mut ib) = (0, 0);
            for d in 0..n {
                let c = (i / sto[d]) % out_shape[d];
                if pa[d] != 1 {
                    ia += c * sta[d];
                }
                if pb[d] != 1 {
                    ib += c * stb[d];
                }
            }
            f(a[ia], b[ib])
        })
        .collect()
}

pub fn conv2d(
    x: &[f32],
    xs: &[usize],
    w: &[f32],
    ws: &[usize],
    b: Option<&[f32]>,
    stride: usize,
    pads: [usize; 4],
    os: &[usize],
) -> Vec<f32> {
    let (n, ci, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
    let (co, kh, kw) = (ws[0], ws[2], ws[3]);
    let (oh, ow) = (os[2], os[3]);
    let mut out = vec![0f32; numel(os)];
    for bn in 0..n {
        for oc in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0f64;
                    for ic in 0..ci {
                        for ky in 0..kh {
                            let iy = (oy * stride + ky) as isize - pads[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * stride + kx) as isize - pads[1] as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x[((bn * ci + ic) * h + iy as usize) * wd + ix as usize];
                                let wv = w[((oc * ci + ic) * kh + ky) * kw + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    let bias = b.map_or(0.0, |b| b[oc] as f64);
                    out[((bn * co + oc) * oh + oy) * ow + ox] = (acc + bias) as f32;
                }
            }
        }
    }
    out
}

pub fn linear(x: &[f32], w: &[f32], ws: &[usize], b: Option<&[f32]>) -> Vec<f32> {
    let (o, i) = (ws[0], ws[1]);
    let rows = x.len() / i;
    let mut out = vec![0f32; rows * o];
    for r in 0..rows {
        let xr = &x[r * i..(r + 1) * i];
        for c in 0..o {
            let wr = &w[c * i..(c + 1) * i];
            let acc: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
            out[r * o + c] = (acc + b.map_or(0.0, |b| b[c] as f64)) as f32;
        }
    }
    out
}

/// Mean and biased variance in f64.
fn moments(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&a| a as f64).sum::<f64>() / n;
    let var = v.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var)
}

pub fn group_norm(
    x: &[f32],
    xs: &[usize],
    g: &[f32],
    b: &[f32],
    groups: usize,
    eps: f32,
) -> Vec<f32> {
    let (n, c) = (xs[0], xs[1]);
    let spatial = numel(&xs[2..]);
    let per = c / groups * spatial;
    let mut out = x.to_vec();
    for bn in 0..n {
        for gi in 0..groups {
            let start = (bn * c + gi * (c / groups)) * spatial;
            let (mean, var) = moments(&x[start..start + per]);
            let inv = 1.0 / (var + eps as f64).sqrt();
            for j in 0..per {
                let ch = gi * (c / groups) + j / spatial;
                let v = (x[start + j] as f64 - mean) * inv;
                out[start + j] = (v * g[ch] as f64 + b[ch] as f64) as f32;
            }
        }
    }
    out
}

pub fn layer_norm(x: &[f32], c: usize, g: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let mut out = x.to_vec();
    for (row, o) in x.chunks(c).zip(out.chunks_mut(c)) {
        let (mean, var) = moments(row);
        let inv = 1.0 / (var + eps as f64).sqrt();
        for j in 0..c {
            o[j] = (((row[j] as f64 - mean) * inv) * g[j] as f64 + b[j] as f64) as f32;
        }
    }
    out
}

pub fn silu(x: f32) -> f32 {
    let x = x as f64;
    (x / (1.0 + (-x).exp())) as f32
}

pub fn gelu(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
}

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
) -> Vec<f32> {
    let (bsz, lq, c) = (qs[0], qs[1], qs[2]);
    let (lk, cv) = (ks[1], vs[2]);
    let (d, dv) = (c / heads, cv / heads);
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0f32; bsz * lq * cv];
    let mut p = vec![0f64; lk];
    for b in 0..bsz {
        for h in 0..heads {
            for i in 0..lq {
                let qi = &q[(b * lq + i) * c + h * d..][..d];
                let mut max = f64::NEG_INFINITY;
                for (j, pj) in p.iter_mut().enumerate() {
                    if causal && j > i {
                        *pj = f64::NEG_INFINITY;
                        continue;
                    }
                    let kj = &k[(b * lk + j) * c + h * d..][..d];
                    let s: f64 = qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum();
                    *pj = s * scale;
                    max = max.max(*pj);
                }
                let mut sum = 0.0;
                for pj in p.iter_mut() {
                    *pj = (*pj - max).exp();
                    sum += *pj;
                }
                for e in 0..dv {
                    let acc: f64 = p
                        .iter()
                        .enumerate()
                        .map(|(j, pj)| pj * v[(b * lk + j) * cv + h * dv + e] as f64)
                        .sum();
                    out[(b * lq + i) * cv + h * dv + e] = (acc / sum) as f32;
                }
            }
        }
    }
    out
}

pub fn permute(x: &[f32], xs: &[usize], perm: &[usize], os: &[usize]) -> Vec<f32> {
    let sx = strides(xs);
    let so = strides(os);
    (0..x.len())
        .map(|i| {
            let mut src = 0;
            for (d, &p) in perm.iter().enumerate() {
                src += ((i / so[d]) % os[d]) * sx[p];
            }
            x[src]
        })
        .collect()
}

/// Copies `x` into its `axis` range `offset..` of `out`.
pub fn place(out: &mut [f32], os: &[usize], x: &[f32], xs: &[usize], axis: usize, offset: usize) {
    let outer = numel(&os[..axis]);
    let inner = numel(&os[axis + 1..]);
    for o in 0..outer {
        let dst = (o * os[axis] + offset) * inner;
        let src = o * xs[axis] * inner;
        out[dst..dst + xs[axis] * inner].copy_from_slice(&x[src..src + xs[axis] * inner]);
    }
}

pub fn slice(x: &[f32], xs: &[usize], axis: usize, start: usize, end: usize) -> Vec<f32> {
    let outer = numel(&xs[..axis]);
    let inner = numel(&xs[axis + 1..]);
    let mut out = Vec::with_capacity(outer * (end - start) * inner);
    for o in 0..outer {
        let base = (o * xs[axis] + start) * inner;
        out.extend_from_slice(&x[base..base + (end - start) * inner]);
    }
    out
}

pub fn upsample2x(x: &[f32], xs: &[usize]) -> Vec<f32> {
    let n = xs.len();
    let (h, w) = (xs[n - 2], xs[n - 1]);
    let planes = numel(&xs[..n - 2]);
    let mut out = vec![0f32; x.len() * 4];
    for p in 0..planes {
        for y in 0..2 * h {
            for xx in 0..2 * w {
                out[(p * 2 * h + y) * 2 * w + xx] = x[(p * h + y / 2) * w + xx / 2];
            }
        }
    }
    out
}

/// The frequencies of diffusers' `get_timestep_embedding` (max_period 10000), rounded to f32 as
/// torch holds them. Shared with every backend that lowers this op so they agree bit for bit.
pub fn timestep_freqs(dim: usize, shift: f32) -> Vec<f32> {
    let half = dim / 2;
    (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - shift as f64)).exp() as f32)
        .collect()
}

pub fn timestep_embedding(t: &[f32], dim: usize, flip: bool, shift: f32) -> Vec<f32> {
    let freqs = timestep_freqs(dim, shift);
    let half = dim / 2;
    let mut out = vec![0f32; t.len() * dim];
    for (b, &tb) in t.iter().enumerate() {
        for (i, &f) in freqs.iter().enumerate() {
            let arg = (tb * f) as f64; // the product is formed in f32, as torch does
            let (s, c) = (arg.sin() as f32, arg.cos() as f32);
            let (first, second) = if flip { (c, s) } else { (s, c) };
            out[b * dim + i] = first;
            out[b * dim + half + i] = second;
        }
    }
    out
}

pub fn embedding(table: &[f32], ts: &[usize], ids: &[f32]) -> Result<Vec<f32>> {
    let (v, d) = (ts[0], ts[1]);
    let mut out = Vec::with_capacity(ids.len() * d);
    for &id in ids {
        if !(id >= 0.0 && (id as usize) < v && id.fract() == 0.0) {
            return Err(Error::Input(format!(
                "token id {id} outside the vocabulary of {v}"
            )));
        }
        out.extend_from_slice(&table[id as usize * d..][..d]);
    }
    Ok(out)
}
