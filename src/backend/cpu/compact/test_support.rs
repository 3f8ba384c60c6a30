//! Test helpers shared by the convolution kernels' unit tests.
use super::kernels::ConvShape;

/// A stride-1 `k x k` convolution of `batch` images of `c` channels and `(h, w)` pixels
/// into `o` channels.
pub fn shape(
    batch: usize,
    c: usize,
    (h, w): (usize, usize),
    o: usize,
    k: usize,
    pads: [usize; 4],
) -> ConvShape {
    ConvShape {
        batch,
        c,
        h,
        w,
        o,
        kh: k,
        kw: k,
        stride: 1,
        pads,
    }
}

pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

/// Direct convolution in f64: the definition, with nothing shared with the kernels.
pub fn naive(x: &[f32], g: &ConvShape, w: &[f32], bias: &[f32]) -> Vec<f64> {
    let (ho, wo) = g.out_hw();
    let mut out = vec![0f64; g.batch * g.o * ho * wo];
    for b in 0..g.batch {
        for o in 0..g.o {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = bias[o] as f64;
                    for c in 0..g.c {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy + ky) as isize - g.pads[0] as isize;
                                let ix = (ox + kx) as isize - g.pads[1] as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv = x[((b * g.c + c) * g.h + iy as usize) * g.w + ix as usize];
                                acc +=
                                    xv as f64 * w[((o * g.c + c) * g.kh + ky) * g.kw + kx] as f64;
                            }
                        }
                    }
                    out[((b * g.o + o) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    out
}

/// Max |out - reference| relative to the reference's largest value; a NaN (a value never
/// written: the tests start outputs as NaN) counts as infinite.
pub fn max_rel_err(out: &[f32], reference: &[f64]) -> f64 {
    let scale = reference.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    let err = out.iter().zip(reference).fold(0f64, |m, (&o, &r)| {
        let d = (o as f64 - r).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    });
    err / scale
}
