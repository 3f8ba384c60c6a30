//! Element types of `.ldm` tensors and their byte lengths.
use serde::{Deserialize, Serialize};

use super::quant::{BLOCK, Q4_BLOCK_BYTES, Q8_BLOCK_BYTES};

/// Storage type of a tensor. The JSON names are `"f32"`, `"f16"`, `"q8"` and `"q4"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE 754 binary32, little-endian.
    F32,
    /// IEEE 754 binary16, little-endian.
    F16,
    /// Blocks of 32 int8 values with one f16 scale per block (see `quant.rs`).
    Q8,
    /// Blocks of 32 packed 4-bit values with one f16 scale per block (see `quant.rs`).
    Q4,
}

impl DType {
    pub const ALL: [DType; 4] = [DType::F32, DType::F16, DType::Q8, DType::Q4];

    /// The name used in the JSON header.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Q8 => "q8",
            DType::Q4 => "q4",
        }
    }

    /// Parses a JSON header name; `None` for an unknown dtype.
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// True for the block-quantized types.
    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Q8 | DType::Q4)
    }

    /// Number of bytes a tensor of `numel` elements occupies, or `None` on overflow.
    ///
    /// Quantized types round `numel` up to whole blocks of [`BLOCK`] values.
    pub fn byte_len(self, numel: u64) -> Option<u64> {
        match self {
            DType::F32 => numel.checked_mul(4),
            DType::F16 => numel.checked_mul(2),
            DType::Q8 => blocks(numel).checked_mul(Q8_BLOCK_BYTES as u64),
            DType::Q4 => blocks(numel).checked_mul(Q4_BLOCK_BYTES as u64),
        }
    }
}

/// Number of quantization blocks covering `numel` values (never overflows).
pub(crate) fn blocks(numel: u64) -> u64 {
    let b = BLOCK as u64;
    numel / b + u64::from(numel % b != 0)
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_lengths() {
        assert_eq!(DType::F32.byte_len(3), Some(12));
        assert_eq!(DType::F16.byte_len(3), Some(6));
        assert_eq!(DType::Q8.byte_len(0), Some(0));
        assert_eq!(DType::Q8.byte_len(1), Some(34));
        assert_eq!(DType::Q8.byte_len(32), Some(34));
        assert_eq!(DType::Q8.byte_len(33), Some(68));
        assert_eq!(DType::Q4.byte_len(32), Some(18));
        assert_eq!(DType::Q4.byte_len(64), Some(36));
        assert_eq!(DType::F32.byte_len(u64::MAX / 2), None);
        assert_eq!(DType::Q8.byte_len(u64::MAX), None);
        assert!(DType::Q4.byte_len(u64::MAX).is_some());
    }

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.name()));
            assert_eq!(serde_json::from_str::<DType>(&json).unwrap(), d);
        }
        assert_eq!(DType::from_name("bf16"), None);
    }
}
