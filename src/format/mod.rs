//! The compact `.ldm` model file: one memory-mapped file holding a JSON header (configs,
//! sampler defaults, tokenizer, provenance), a tensor table and 64-byte aligned tensor data.
//! The byte-level specification is `src/format/SPEC.md`.
//!
//! * [`ModelFile`] maps a file and validates it strictly before returning it.
//! * [`ModelWriter`] writes one atomically (temporary file, fsync, rename).
//! * [`quant`] is the single definition of the q8/q4 block layouts.
use std::path::PathBuf;

pub mod dtype;
pub mod quant;
pub mod reader;
pub(crate) mod strict_json;
pub mod writer;

pub use dtype::DType;
pub use reader::{ModelFile, SharedBytes, TensorInfo, TensorView};
pub use writer::{encode, ModelWriter, WriteReport};

/// File magic, the first 8 bytes of every `.ldm` file.
pub const MAGIC: [u8; 8] = *b"LDMEDGE\0";
/// The format version this crate reads and writes.
pub const VERSION: u32 = 1;
/// Byte-order mark, written as a little-endian u32.
pub const BYTE_ORDER_MARK: u32 = 0x0102_0304;
/// Size of the fixed preamble: magic, version, byte-order mark, header length, digest.
pub const PREAMBLE_LEN: usize = 8 + 4 + 4 + 8 + 32;
/// Byte range of the digest inside the preamble.
pub const DIGEST_RANGE: std::ops::Range<usize> = 24..56;
/// Largest JSON header accepted (64 MiB).
pub const MAX_HEADER_LEN: u64 = 64 << 20;
/// Alignment of the data section and of every tensor.
pub const ALIGN: u64 = 64;
/// Maximum tensor rank.
pub const MAX_RANK: usize = 8;
/// Maximum tensor name length in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// Rounds `x` up to a multiple of [`ALIGN`], `None` on overflow.
pub fn align_up(x: u64) -> Option<u64> {
    x.checked_add(ALIGN - 1).map(|v| v & !(ALIGN - 1))
}

/// Everything that can be wrong with a `.ldm` file, one variant per validation rule.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("file is {len} bytes, shorter than the {PREAMBLE_LEN}-byte preamble")]
    TruncatedPreamble { len: u64 },
    #[error("bad magic {found:02x?}: not an .ldm file")]
    BadMagic { found: [u8; 8] },
    #[error("unsupported format version {found} (this reader supports version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error(
        "bad byte order mark {found:#010x} (expected 0x01020304 read little-endian; \
         0x04030201 means a big-endian writer)"
    )]
    ByteOrder { found: u32 },
    #[error("JSON header of {len} bytes exceeds the cap of {max} bytes")]
    HeaderTooLarge { len: u64, max: u64 },
    #[error("JSON header ends at byte {end} but the file is only {file_len} bytes")]
    HeaderOutOfBounds { end: u64, file_len: u64 },
    #[error("JSON header is not valid UTF-8: {0}")]
    HeaderUtf8(std::str::Utf8Error),
    #[error("JSON header does not parse: {0}")]
    HeaderJson(String),
    #[error("JSON header is not an object")]
    HeaderNotObject,
    #[error("JSON header has the key `{key}` twice in one object")]
    DuplicateKey { key: String },
    #[error("JSON header has no `tensors` key")]
    MissingTensors,
    #[error("JSON header `tensors` is not an array")]
    TensorsNotArray,
    #[error("tensor entry #{index} is not an object")]
    TensorEntryNotObject { index: usize },
    #[error("tensor entry #{index} has no `{field}` field")]
    MissingField { index: usize, field: &'static str },
    #[error("tensor entry #{index}: field `{field}` {problem}")]
    BadField {
        index: usize,
        field: &'static str,
        problem: String,
    },
    #[error("tensor entry #{index} has an unknown field `{field}`")]
    UnknownField { index: usize, field: String },
    #[error("tensor name {name:?} is invalid: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("tensor `{name}` has unknown dtype `{dtype}`")]
    UnknownDType { name: String, dtype: String },
    #[error("tensor `{name}` has rank {rank}, more than the maximum {MAX_RANK}")]
    RankTooLarge { name: String, rank: usize },
    #[error("tensor `{name}` has a zero-sized dimension in shape {shape:?}")]
    ZeroDim { name: String, shape: Vec<u64> },
    #[error("tensor `{name}`: shape {shape:?} overflows (element count or byte length)")]
    ShapeOverflow { name: String, shape: Vec<u64> },
    #[error("tensor `{name}`: {dtype} shape {shape:?} needs {expected} bytes but len is {found}")]
    LengthMismatch {
        name: String,
        dtype: DType,
        shape: Vec<u64>,
        expected: u64,
        found: u64,
    },
    #[error("tensor `{name}`: offset {offset} is not a multiple of {ALIGN}")]
    Misaligned { name: String, offset: u64 },
    #[error("tensor `{name}`: bytes {offset}..{offset}+{len} are past the end of the data section ({data_len} bytes)")]
    OutOfBounds {
        name: String,
        offset: u64,
        len: u64,
        data_len: u64,
    },
    #[error("tensors `{first}` and `{second}` overlap")]
    Overlap { first: String, second: String },
    #[error("tensor `{name}` starts at {offset}, expected {expected}: tensors must be packed at the next {ALIGN}-byte boundary")]
    Gap {
        name: String,
        offset: u64,
        expected: u64,
    },
    #[error("duplicate tensor name `{name}`")]
    DuplicateName { name: String },
    #[error("file is {file_len} bytes, the header and tensor table say {expected}")]
    FileLength { expected: u64, file_len: u64 },
    #[error("nonzero padding byte at file offset {at}")]
    NonZeroPadding { at: u64 },
    #[error("digest mismatch: header says {expected}, file hashes to {computed}")]
    DigestMismatch { expected: String, computed: String },
    #[error("writer metadata must be a JSON object without a `tensors` key")]
    BadMeta,
    #[error("tensor `{name}`: shape {shape:?} has {numel} elements but {found} values were given")]
    DataLength {
        name: String,
        shape: Vec<u64>,
        numel: u64,
        found: usize,
    },
    #[error("tensor `{name}` cannot be stored as {dtype}: {reason}")]
    Unrepresentable {
        name: String,
        dtype: DType,
        reason: String,
    },
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Checks a tensor name: 1..=1024 bytes, no control characters. Shared by reader and writer.
pub(crate) fn check_name(name: &str) -> Result<(), FormatError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 1024 bytes"
    } else if name.chars().any(char::is_control) {
        "contains a control character"
    } else if name.trim() != name {
        "has leading or trailing whitespace"
    } else {
        return Ok(());
    };
    Err(FormatError::BadName {
        name: truncate(name),
        reason,
    })
}

fn truncate(name: &str) -> String {
    name.chars().take(80).collect()
}

/// Element count and byte length of a shape, with checked arithmetic.
pub(crate) fn checked_sizes(
    name: &str,
    shape: &[u64],
    dtype: DType,
) -> Result<(u64, u64), FormatError> {
    if shape.len() > MAX_RANK {
        return Err(FormatError::RankTooLarge {
            name: name.to_string(),
            rank: shape.len(),
        });
    }
    if shape.contains(&0) {
        return Err(FormatError::ZeroDim {
            name: name.to_string(),
            shape: shape.to_vec(),
        });
    }
    let overflow = || FormatError::ShapeOverflow {
        name: name.to_string(),
        shape: shape.to_vec(),
    };
    let numel = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    // Every element must be addressable in memory once dequantized to f32.
    let as_f32 = numel.checked_mul(4).ok_or_else(overflow)?;
    if usize::try_from(as_f32).is_err() || shape.iter().any(|&d| usize::try_from(d).is_err()) {
        return Err(overflow());
    }
    let bytes = dtype.byte_len(numel).ok_or_else(overflow)?;
    Ok((numel, bytes))
}

#[cfg(test)]
mod tests;
