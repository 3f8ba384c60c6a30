//! exp and erfc for f32 written so that the compiler vectorizes loops over them.
//!
//! libm's scalar `expf` is a call per element and does not vectorize; in attention's softmax
//! at 64x64 latents that is hundreds of millions of calls per UNet step. These use only
//! multiply-add, min/max and integer bit operations, which vectorize on every target (SSE2,
//! NEON), so a loop of them runs several lanes at once. Accuracy: exp within 2 ulp (Cephes'
//! polynomial on a two-constant range reduction), erfc within 1.5e-7 absolute
//! (Abramowitz & Stegun 7.1.26).

/// `e^x`, saturating: inputs below -87 give about 1.6e-38 instead of a denormal or 0, inputs
/// above 88 give about 1.7e38.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // 1.5 * 2^23: adding it leaves round(x * log2 e) in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    // ln 2 split in two so that n * C1 is exact for |n| < 2^9.
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let k = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let r = x - n * C1 - n * C2;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let e = (p * r * r) + r + 1.0;
    e * f32::from_bits(((k + 127) << 23) as u32)
}

/// `erfc(z)` for `z >= 0`.
#[inline(always)]
pub fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let p = 1.061_405_4;
    let p = p * t - 1.453_152_1;
    let p = p * t + 1.421_413_8;
    let p = p * t - 0.284_496_74;
    let p = p * t + 0.254_829_6;
    p * t * exp(-z * z)
}

/// `x * sigmoid(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `0.5 x (1 + erf(x / sqrt 2))`, from erfc on both sides so the negative tail keeps its
/// relative accuracy instead of cancelling in `1 + erf`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let c = erfc_pos(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    let phi = if x >= 0.0 { 2.0 - c } else { c };
    0.5 * x * phi
}

/// Defines `$name` as `$body` compiled three times, for AVX-512, AVX2+FMA and the baseline
/// (the build targets baseline x86-64, so without this the loops get 4-wide SSE2 and no FMA),
/// and picked per call from the running CPU. `$body` must be `#[inline(always)]` so that its
/// loops are compiled inside each variant.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),*) $(-> $r:ty)? => $body:ident) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn v4($($a: $t),*) $(-> $r)? {
                    $body($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($a: $t),*) $(-> $r)? {
                    $body($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { v4($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { v3($($a),*) };
                }
            }
            $body($($a),*)
        }
    };
}
pub(super) use multiversion;

multiversion!(
    /// Softmax of one row without its last pass: writes `exp(v - max)` in place and returns the
    /// sum, by which the caller divides (attention divides its 40-value output rows rather than
    /// the 4096 scores). At 64x64 latents the softmax of the 4096-token self-attention is a
    /// tenth of a UNet step in the baseline build.
    pub fn exp_sum(row: &mut [f32]) -> f32 => exp_sum_lanes
);

#[inline(always)]
fn exp_sum_lanes(row: &mut [f32]) -> f32 {
    const L: usize = 16;
    let mut m = [f32::NEG_INFINITY; L];
    let mut chunks = row.chunks_exact(L);
    for c in &mut chunks {
        for i in 0..L {
            m[i] = m[i].max(c[i]);
        }
    }
    let max = chunks.remainder().iter().fold(
        m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)),
        |a, &b| a.max(b),
    );
    let mut s = [0.0f32; L];
    let mut chunks = row.chunks_exact_mut(L);
    for c in &mut chunks {
        for i in 0..L {
            c[i] = exp(c[i] - max);
            s[i] += c[i];
        }
    }
    let mut sum: f32 = s.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    sum
}

multiversion!(
    /// `out[i] = gelu(x[i])`.
    pub fn gelu_into(x: &[f32], out: &mut [f32]) => gelu_lanes
);
multiversion!(
    /// `out[i] = silu(x[i])`.
    pub fn silu_into(x: &[f32], out: &mut [f32]) => silu_lanes
);
multiversion!(
    /// `out[i] = val[i] * gelu(gate[i])`.
    pub fn gated_gelu_into(val: &[f32], gate: &[f32], out: &mut [f32]) => gated_gelu_lanes
);

#[inline(always)]
fn gelu_lanes(x: &[f32], out: &mut [f32]) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = gelu(v));
}

#[inline(always)]
fn silu_lanes(x: &[f32], out: &mut [f32]) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = silu(v));
}

#[inline(always)]
fn gated_gelu_lanes(val: &[f32], gate: &[f32], out: &mut [f32]) {
    out.iter_mut()
        .zip(val.iter().zip(gate))
        .for_each(|(o, (&v, &g))| *o = v * gelu(g));
}

multiversion!(
    /// Sum and sum of squared deviations from `shift` of `x`, in f64: the norms subtract the
    /// mean first, as the reference does, and the stats pass averages values far from zero.
    pub fn sums(x: &[f32], shift: f64, acc: &mut [f64; 2]) => sums_lanes
);

#[inline(always)]
fn sums_lanes(x: &[f32], shift: f64, acc: &mut [f64; 2]) {
    // Eight independent f64 partial sums: a single running sum is a serial chain that the
    // compiler may not reorder into vector lanes.
    const L: usize = 8;
    let (mut s, mut q) = ([0f64; L], [0f64; L]);
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for i in 0..L {
            let d = c[i] as f64 - shift;
            s[i] += d;
            q[i] += d * d;
        }
    }
    for &v in chunks.remainder() {
        let d = v as f64 - shift;
        s[0] += d;
        q[0] += d * d;
    }
    acc[0] += s.iter().sum::<f64>();
    acc[1] += q.iter().sum::<f64>();
}

multiversion!(
    /// `out[i] = (x[i] - mean) * inv * g[i] + b[i]`.
    pub fn norm_into(x: &[f32], mean: f32, inv: f32, g: &[f32], b: &[f32], out: &mut [f32]) => norm_lanes
);

#[inline(always)]
fn norm_lanes(x: &[f32], mean: f32, inv: f32, g: &[f32], b: &[f32], out: &mut [f32]) {
    out.iter_mut()
        .zip(x.iter().zip(g.iter().zip(b)))
        .for_each(|(o, (&v, (&g, &b)))| *o = (v - mean) * inv * g + b);
}

multiversion!(
    /// `out[i] = (x[i] - mean) * a + b`.
    pub fn affine1_into(x: &[f32], mean: f32, a: f32, b: f32, out: &mut [f32]) => affine1_lanes
);

#[inline(always)]
fn affine1_lanes(x: &[f32], mean: f32, a: f32, b: f32, out: &mut [f32]) {
    out.iter_mut()
        .zip(x)
        .for_each(|(o, &v)| *o = (v - mean) * a + b);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sweeps the whole useful range against libm in f64.
    #[test]
    fn exp_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.000_37;
        }
        assert!(worst < 2.5e-7, "exp rel err {worst:e}");
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn gelu_and_silu_match_libm() {
        let mut x = -12.0f32;
        while x < 12.0 {
            let xd = x as f64;
            let g = 0.5 * xd * (1.0 + libm::erf(xd / std::f64::consts::SQRT_2));
            assert!(
                (gelu(x) as f64 - g).abs() <= 3e-7 * (1.0 + g.abs()),
                "gelu({x})"
            );
            let s = xd / (1.0 + (-xd).exp());
            assert!(
                (silu(x) as f64 - s).abs() <= 3e-7 * (1.0 + s.abs()),
                "silu({x})"
            );
            x += 0.001_3;
        }
    }

    #[test]
    fn softmax_sums_to_one_and_is_exact_enough() {
        let mut row: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 / 9.0 - 5.0)
            .collect();
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let denom: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        let want: Vec<f64> = row
            .iter()
            .map(|&v| (v as f64 - max).exp() / denom)
            .collect();
        let mut plain = row.clone();
        let (sa, sp) = (exp_sum(&mut row), exp_sum_lanes(&mut plain));
        for ((a, p), b) in row.iter().zip(&plain).zip(&want) {
            let (a, p) = (a / sa, p / sp);
            assert!((a as f64 - b).abs() < 1e-7, "{a} vs {b}");
            assert!((p as f64 - b).abs() < 1e-7, "{p} vs {b}");
        }
    }
}
