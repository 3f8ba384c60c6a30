//! A weight kept in its stored dtype for the life of a CPU plan, and the one routine that
//! widens a range of it to f32 when a kernel needs it.
//!
//! The bytes are a [`SharedBytes`] view of the model file's mapping, so a q8 UNet costs its
//! file size in (reclaimable, shared) page cache instead of four times that in private f32
//! copies. The block layout is `format::quant`'s, the same one the writer and the shaders use.
use crate::format::quant::BLOCK;
use crate::format::{DType, SharedBytes};
use crate::{Error, Result};
use half::f16;
use rayon::prelude::*;

/// Below this many values a dequantization is not worth a thread hand-off.
const PAR_MIN: usize = 1 << 16;

#[derive(Clone)]
pub struct CompactWeight {
    pub dtype: DType,
    pub shape: Vec<usize>,
    numel: usize,
    bytes: SharedBytes,
}

impl std::fmt::Debug for CompactWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{:?}", self.dtype.name(), self.shape)
    }
}

impl CompactWeight {
    /// Checks that `bytes` is exactly what `dtype` needs for `shape`.
    pub fn new(dtype: DType, shape: &[usize], bytes: SharedBytes) -> Result<Self> {
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let need = numel.and_then(|n| dtype.byte_len(n as u64));
        match (numel, need) {
            (Some(numel), Some(need)) if need == bytes.len() as u64 => Ok(Self {
                dtype,
                shape: shape.to_vec(),
                numel,
                bytes,
            }),
            _ => Err(Error::Backend {
                backend: "cpu",
                msg: format!(
                    "a {} weight of shape {shape:?} cannot be {} bytes",
                    dtype.name(),
                    bytes.len()
                ),
            }),
        }
    }

    /// An f32 weight that comes from no file (tests, in-memory weight maps).
    pub fn from_f32(shape: &[usize], data: &[f32]) -> Result<Self> {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::new(DType::F32, shape, SharedBytes::from_vec(bytes))
    }

    /// This weight widened to f32 once, as an f32 weight the kernels read in place (the packed
    /// plan's copies). Widens straight into the new weight's bytes; going through
    /// [`CompactWeight::from_f32`] would convert them 4 bytes at a time and hold the weight
    /// twice.
    pub fn to_f32(&self) -> Result<Self> {
        let mut bytes = vec![0u8; 4 * self.numel];
        // SAFETY: every bit pattern is a valid f32, and align_to_mut only hands out the
        // aligned middle; a misaligned buffer (or a big-endian host) takes the slow path.
        let (pre, mid, post) = unsafe { bytes.align_to_mut::<f32>() };
        if pre.is_empty() && post.is_empty() && cfg!(target_endian = "little") {
            self.widen_into(0, mid);
        } else {
            let mut v = vec![0f32; self.numel];
            self.widen_into(0, &mut v);
            for (b, x) in bytes.chunks_exact_mut(4).zip(&v) {
                b.copy_from_slice(&x.to_le_bytes());
            }
        }
        Self::new(DType::F32, &self.shape, SharedBytes::from_vec(bytes))
    }

    pub fn numel(&self) -> usize {
        self.numel
    }

    /// Bytes held in the stored dtype.
    pub fn stored_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The stored values themselves when they already are f32 (and aligned, on a
    /// little-endian host): the kernels then read the mapping with no widened copy at all.
    pub fn f32_view(&self) -> Option<&[f32]> {
        if self.dtype != DType::F32 || cfg!(target_endian = "big") {
            return None;
        }
        // SAFETY: every bit pattern is a valid f32, and align_to only hands out the aligned
        // middle; a misaligned mapping falls back to widening.
        let (pre, mid, post) = unsafe { self.bytes[..].align_to::<f32>() };
        (pre.is_empty() && post.is_empty()).then_some(mid)
    }

    /// Writes the flat (row-major) elements `start .. start + out.len()` as f32. The caller
    /// keeps the range inside the tensor; past its end values read as 0.
    pub fn widen_into(&self, start: usize, out: &mut [f32]) {
        if out.len() < PAR_MIN {
            self.widen_serial(start, out);
            return;
        }
        // Chunks of whole blocks, so no two threads decode the same block.
        let chunk = PAR_MIN;
        let first = (BLOCK - start % BLOCK) % BLOCK;
        let (head, rest) = out.split_at_mut(first.min(out.len()));
        self.widen_serial(start, head);
        let base = start + head.len();
        rest.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| self.widen_serial(base + i * chunk, c));
    }

    fn widen_serial(&self, start: usize, out: &mut [f32]) {
        let end = (start + out.len()).min(self.numel);
        if start >= end {
            out.fill(0.0);
            return;
        }
        out[end - start..].fill(0.0);
        let b = &self.bytes[..];
        match self.dtype {
            DType::F32 => {
                for (o, c) in out.iter_mut().zip(b[start * 4..end * 4].chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            DType::F16 => {
                for (o, c) in out.iter_mut().zip(b[start * 2..end * 2].chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            DType::Q8 | DType::Q4 => {
                // Partial blocks at either end one value at a time; whole blocks in between
                // with a loop the compiler vectorizes (this is most of the widening).
                let first = (start.div_ceil(BLOCK) * BLOCK).min(end);
                let last = (end / BLOCK * BLOCK).max(first);
                let (head, rest) = out[..end - start].split_at_mut(first - start);
                self.widen_each(start, head);
                let (mid, tail) = rest.split_at_mut(last - first);
                let scales = &b[self.quant_bytes()..];
                let (b0, nb) = (first / BLOCK, mid.len() / BLOCK);
                let sc = scales[b0 * 2..(b0 + nb) * 2].chunks_exact(2);
                if self.dtype == DType::Q8 {
                    let q = b[first..first + nb * BLOCK].chunks_exact(BLOCK);
                    for ((o, q), s) in mid.chunks_exact_mut(BLOCK).zip(q).zip(sc) {
                        let s = f16::from_le_bytes([s[0], s[1]]).to_f32();
                        for (o, &q) in o.iter_mut().zip(q) {
                            *o = q as i8 as f32 * s;
                        }
                    }
                } else {
                    let q = b[first / 2..first / 2 + nb * BLOCK / 2].chunks_exact(BLOCK / 2);
                    for ((o, q), s) in mid.chunks_exact_mut(BLOCK).zip(q).zip(sc) {
                        let s = f16::from_le_bytes([s[0], s[1]]).to_f32();
                        for (pair, &byte) in o.chunks_exact_mut(2).zip(q) {
                            pair[0] = (i32::from(byte & 0x0f) - 8) as f32 * s;
                            pair[1] = (i32::from(byte >> 4) - 8) as f32 * s;
                        }
                    }
                }
                self.widen_each(last, tail);
            }
        }
    }

    /// One value at a time (q8/q4 partial blocks).
    fn widen_each(&self, start: usize, out: &mut [f32]) {
        let b = &self.bytes[..];
        for (j, o) in out.iter_mut().enumerate() {
            let i = start + j;
            let s = self.scale(i / BLOCK);
            *o = match self.dtype {
                DType::Q4 => {
                    let byte = b[i / 2];
                    let nib = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                    (i32::from(nib) - 8) as f32 * s
                }
                _ => b[i] as i8 as f32 * s,
            };
        }
    }

    fn quant_bytes(&self) -> usize {
        let nblocks = self.numel.div_ceil(BLOCK);
        match self.dtype {
            DType::Q4 => nblocks * BLOCK / 2,
            _ => nblocks * BLOCK,
        }
    }

    /// The f16 scale of block `blk` (q8/q4: all quants first, then all scales).
    fn scale(&self, blk: usize) -> f32 {
        let at = self.quant_bytes() + blk * 2;
        f16::from_le_bytes([self.bytes[at], self.bytes[at + 1]]).to_f32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::quant::{dequantize_q4, dequantize_q8, quantize_q4, quantize_q8};

    fn data(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect()
    }

    /// Every dtype, every odd range, against the format's own dequantization.
    #[test]
    fn widen_matches_the_format_reference() {
        let n = 32 * 5 + 7;
        let x = data(n);
        let cases: Vec<(DType, Vec<u8>, Vec<f32>)> = vec![
            (
                DType::F32,
                x.iter().flat_map(|v| v.to_le_bytes()).collect(),
                x.clone(),
            ),
            (
                DType::F16,
                x.iter()
                    .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                    .collect(),
                x.iter().map(|v| f16::from_f32(*v).to_f32()).collect(),
            ),
            (
                DType::Q8,
                quantize_q8(&x),
                dequantize_q8(&quantize_q8(&x), n),
            ),
            (
                DType::Q4,
                quantize_q4(&x),
                dequantize_q4(&quantize_q4(&x), n),
            ),
        ];
        for (dt, bytes, want) in cases {
            let w = CompactWeight::new(dt, &[n], SharedBytes::from_vec(bytes)).unwrap();
            let f = w.to_f32().unwrap();
            assert_eq!(f.dtype, DType::F32);
            assert_eq!(f.f32_view(), Some(&want[..]), "{dt:?} to_f32");
            for (start, len) in [(0, n), (1, 40), (31, 2), (33, 64), (n - 3, 3), (5, 0)] {
                let mut out = vec![f32::NAN; len];
                w.widen_into(start, &mut out);
                assert_eq!(out, want[start..start + len], "{dt:?} {start}+{len}");
            }
        }
    }

    #[test]
    fn wrong_byte_length_is_an_error() {
        let bytes = SharedBytes::from_vec(vec![0; 33]);
        assert!(CompactWeight::new(DType::Q8, &[32], bytes).is_err());
    }
}
