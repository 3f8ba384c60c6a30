//! The one definition of the q8 and q4 block layouts, shared by the writer, the reader and
//! (through SPEC.md) the shaders.
//!
//! A tensor of `n` values is flattened row-major and cut into `nblocks = ceil(n / 32)` blocks of
//! [`BLOCK`] values; the last block is padded with zeros. A quantized tensor stores **all quant
//! bytes first, then all scales**, so shaders can read the quants as aligned `u32` words:
//!
//! ```text
//! q8: [nblocks * 32 bytes: int8 q]          [nblocks * 2 bytes: f16 LE scale]
//! q4: [nblocks * 16 bytes: packed nibbles]  [nblocks * 2 bytes: f16 LE scale]
//! ```
//!
//! * q8: `q` in `[-127, 127]` as two's-complement `i8`; value = `q * scale`.
//! * q4: `q` in `[-7, 7]`, stored as the nibble `q + 8` (1..=15; nibble 0 is never written but a
//!   reader decodes it as -8). Byte `i` of a block holds element `2i` in its low nibble and
//!   element `2i + 1` in its high nibble. Value = `(nibble - 8) * scale`.
//!
//! Quantization is symmetric round-to-nearest: `scale = f16(absmax / QMAX)` (QMAX = 127 or 7,
//! saturating at `f16::MAX`), then `q = clamp(round(x / scale), -QMAX, QMAX)` using the
//! f16-rounded scale as an f32 (`round` = half away from zero). A block whose scale is zero
//! quantizes to all zeros. NaN quantizes to 0. The error per element is bounded by
//! [`q8_error_bound`] / [`q4_error_bound`].
use half::f16;

/// Values per quantization block.
pub const BLOCK: usize = 32;
/// Bytes per q8 block: 32 quants + one f16 scale.
pub const Q8_BLOCK_BYTES: usize = BLOCK + 2;
/// Bytes per q4 block: 16 packed bytes + one f16 scale.
pub const Q4_BLOCK_BYTES: usize = BLOCK / 2 + 2;
/// Largest q8 magnitude.
pub const Q8_MAX: i32 = 127;
/// Largest q4 magnitude (symmetric; -8 is never produced).
pub const Q4_MAX: i32 = 7;

fn nblocks(n: usize) -> usize {
    n / BLOCK + usize::from(n % BLOCK != 0)
}

/// The scale of one block, already rounded to f16.
fn block_scale(block: &[f32], qmax: i32) -> f16 {
    let absmax = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let s = absmax / qmax as f32;
    if s >= f16::MAX.to_f32() {
        f16::MAX
    } else {
        f16::from_f32(s)
    }
}

fn quantize_one(x: f32, scale: f32, qmax: i32) -> i32 {
    if scale == 0.0 {
        return 0;
    }
    // `as` saturates and maps NaN to 0.
    ((x / scale).round() as i32).clamp(-qmax, qmax)
}

fn scale_at(bytes: &[u8], at: usize) -> f32 {
    match bytes.get(at..at + 2) {
        Some(&[a, b]) => f16::from_le_bytes([a, b]).to_f32(),
        _ => 0.0,
    }
}

/// Quantizes `data` to q8 (`DType::Q8.byte_len(data.len())` bytes).
pub fn quantize_q8(data: &[f32]) -> Vec<u8> {
    let nb = nblocks(data.len());
    let mut quants = Vec::with_capacity(nb * (BLOCK + 2));
    let mut scales = Vec::with_capacity(nb * 2);
    for block in data.chunks(BLOCK) {
        let scale = block_scale(block, Q8_MAX);
        let s = scale.to_f32();
        for i in 0..BLOCK {
            let x = block.get(i).copied().unwrap_or(0.0);
            quants.push(quantize_one(x, s, Q8_MAX) as i8 as u8);
        }
        scales.extend_from_slice(&scale.to_le_bytes());
    }
    quants.extend_from_slice(&scales);
    quants
}

/// Dequantizes `n` values from q8 bytes.
///
/// `bytes.len()` should equal `DType::Q8.byte_len(n)` (the reader guarantees it). This function
/// never panics: with a shorter slice, values whose bytes are missing decode as 0.0.
pub fn dequantize_q8(bytes: &[u8], n: usize) -> Vec<f32> {
    let nb = nblocks(n);
    let scales_at = nb.saturating_mul(BLOCK);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let b = i / BLOCK;
        let s = scale_at(bytes, scales_at.saturating_add(b * 2));
        let q = bytes.get(i).map_or(0.0, |&q| q as i8 as f32);
        out.push(q * s);
    }
    out
}

/// Quantizes `data` to q4 (`DType::Q4.byte_len(data.len())` bytes).
pub fn quantize_q4(data: &[f32]) -> Vec<u8> {
    let nb = nblocks(data.len());
    let mut quants = Vec::with_capacity(nb * (BLOCK / 2 + 2));
    let mut scales = Vec::with_capacity(nb * 2);
    for block in data.chunks(BLOCK) {
        let scale = block_scale(block, Q4_MAX);
        let s = scale.to_f32();
        for i in 0..BLOCK / 2 {
            let lo = block.get(2 * i).copied().unwrap_or(0.0);
            let hi = block.get(2 * i + 1).copied().unwrap_or(0.0);
            let lo = (quantize_one(lo, s, Q4_MAX) + 8) as u8;
            let hi = (quantize_one(hi, s, Q4_MAX) + 8) as u8;
            quants.push(lo | (hi << 4));
        }
        scales.extend_from_slice(&scale.to_le_bytes());
    }
    quants.extend_from_slice(&scales);
    quants
}

/// Dequantizes `n` values from q4 bytes. Same length contract as [`dequantize_q8`].
pub fn dequantize_q4(bytes: &[u8], n: usize) -> Vec<f32> {
    let nb = nblocks(n);
    let scales_at = nb.saturating_mul(BLOCK / 2);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let b = i / BLOCK;
        let s = scale_at(bytes, scales_at.saturating_add(b * 2));
        let q = match bytes.get(i / 2) {
            Some(&byte) => {
                let nib = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                (i32::from(nib) - 8) as f32
            }
            None => 0.0,
        };
        out.push(q * s);
    }
    out
}

fn error_bound(block: &[f32], qmax: i32) -> f32 {
    let absmax = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let s = block_scale(block, qmax).to_f32();
    // Rounding costs at most s/2; values beyond qmax*s (f16 rounding of the scale down, a
    // subnormal or saturated scale, or a zero scale) are clamped to qmax*s. The last term covers
    // f32 rounding in x/s and q*s.
    let clamp = (absmax - qmax as f32 * s).max(0.0);
    (0.5 * s).max(clamp) + absmax * f32::EPSILON * 4.0
}

/// Documented bound on `|x - dequantize(quantize(x))|` for every finite `x` of one q8 block
/// (`block.len() <= BLOCK`):
/// `max(s/2, absmax - 127*s) + 4*eps*absmax`, where `s` is the block's f16-rounded scale.
/// For normal scales this is about `absmax / 254`.
pub fn q8_error_bound(block: &[f32]) -> f32 {
    error_bound(block, Q8_MAX)
}

/// Same as [`q8_error_bound`] for q4: `max(s/2, absmax - 7*s) + 4*eps*absmax` (about `absmax/14`).
pub fn q4_error_bound(block: &[f32]) -> f32 {
    error_bound(block, Q4_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::DType;

    /// Tiny deterministic PRNG (xorshift64*), no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        /// Uniform in [-1, 1).
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    fn random(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut r = Rng(seed | 1);
        (0..n).map(|_| r.unit() * amp).collect()
    }

    type Quant = fn(&[f32]) -> Vec<u8>;
    type Dequant = fn(&[u8], usize) -> Vec<f32>;
    type Bound = fn(&[f32]) -> f32;
    const KINDS: [(DType, Quant, Dequant, Bound); 2] = [
        (DType::Q8, quantize_q8, dequantize_q8, q8_error_bound),
        (DType::Q4, quantize_q4, dequantize_q4, q4_error_bound),
    ];

    #[test]
    fn error_within_documented_bound() {
        for (dtype, quant, dequant, bound) in KINDS {
            for (k, &n) in [1usize, 5, 31, 32, 33, 64, 100, 1000, 4099]
                .iter()
                .enumerate()
            {
                for amp in [1e-6f32, 1e-3, 1.0, 300.0, 60000.0] {
                    let mut x = random(n, 7 + k as u64, amp);
                    // Make the second block all zeros when there is one.
                    if n > 2 * BLOCK {
                        x[BLOCK..2 * BLOCK].fill(0.0);
                    }
                    let bytes = quant(&x);
                    assert_eq!(bytes.len() as u64, dtype.byte_len(n as u64).unwrap());
                    let y = dequant(&bytes, n);
                    assert_eq!(y.len(), n);
                    for (b, (xb, yb)) in x.chunks(BLOCK).zip(y.chunks(BLOCK)).enumerate() {
                        let lim = bound(xb);
                        for (xi, yi) in xb.iter().zip(yb) {
                            assert!(
                                (xi - yi).abs() <= lim,
                                "{dtype} n={n} amp={amp} block {b}: {xi} -> {yi}, bound {lim}"
                            );
                        }
                    }
                    if n > 2 * BLOCK {
                        assert!(y[BLOCK..2 * BLOCK].iter().all(|&v| v == 0.0));
                    }
                }
            }
        }
    }

    #[test]
    fn bound_is_tight_for_normal_scales() {
        let x = random(32, 3, 1.0);
        let absmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(q8_error_bound(&x) <= absmax / 254.0 * 1.01);
        assert!(q4_error_bound(&x) <= absmax / 14.0 * 1.01);
    }

    #[test]
    fn requantizing_is_identity() {
        for (_, quant, dequant, _) in KINDS {
            for n in [1usize, 31, 32, 33, 250] {
                let x = random(n, 99 + n as u64, 2.5);
                let q = quant(&x);
                let y = dequant(&q, n);
                assert_eq!(quant(&y), q, "n={n}");
                assert_eq!(dequant(&quant(&y), n), y);
            }
        }
    }

    #[test]
    fn all_zero_block() {
        let z = vec![0.0f32; 40];
        let q8 = quantize_q8(&z);
        assert!(q8.iter().all(|&b| b == 0));
        assert_eq!(dequantize_q8(&q8, 40), z);
        let q4 = quantize_q4(&z);
        // Zero is the nibble 8; scales are zero.
        assert!(q4[..32].iter().all(|&b| b == 0x88));
        assert!(q4[32..].iter().all(|&b| b == 0));
        assert_eq!(dequantize_q4(&q4, 40), z);
    }

    #[test]
    fn layout_is_quants_then_scales() {
        let mut x = vec![0.0f32; 33];
        x[0] = 127.0;
        x[1] = -1.0;
        x[32] = -2.0;
        let q8 = quantize_q8(&x);
        assert_eq!(q8.len(), 68);
        assert_eq!(q8[0], 127);
        assert_eq!(q8[1] as i8, -1);
        assert_eq!(q8[32] as i8, -127);
        assert_eq!(&q8[64..66], &f16::from_f32(1.0).to_le_bytes());
        assert_eq!(&q8[66..68], &f16::from_f32(2.0 / 127.0).to_le_bytes());

        let mut x = vec![0.0f32; 32];
        x[0] = 7.0; // low nibble of byte 0
        x[1] = -7.0; // high nibble of byte 0
        x[3] = 3.0; // high nibble of byte 1
        let q4 = quantize_q4(&x);
        assert_eq!(q4.len(), 18);
        assert_eq!(q4[0], 15 | (1 << 4));
        assert_eq!(q4[1], 8 | (11 << 4));
        assert_eq!(&q4[16..18], &f16::from_f32(1.0).to_le_bytes());
    }

    #[test]
    fn short_or_hostile_input_does_not_panic() {
        assert_eq!(dequantize_q8(&[], 40), vec![0.0; 40]);
        assert_eq!(dequantize_q4(&[1, 2, 3], 70).len(), 70);
        let x = [f32::NAN, f32::INFINITY, -f32::INFINITY, f32::MAX, 1.0];
        assert_eq!(quantize_q8(&x).len(), 34);
        assert_eq!(quantize_q4(&x).len(), 18);
        assert_eq!(quantize_q8(&[]), Vec::<u8>::new());
    }
}
