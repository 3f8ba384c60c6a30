//! Opening and validating `.ldm` files. See SPEC.md for the rules enforced here.
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::{Map, Value};

use super::quant::{dequantize_q4, dequantize_q8};
use super::{
    align_up, check_name, checked_sizes, strict_json, DType, FormatError, ALIGN, BYTE_ORDER_MARK,
    DIGEST_RANGE, MAGIC, MAX_HEADER_LEN, PREAMBLE_LEN, VERSION,
};

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    /// Row-major shape; empty for a 0-d scalar. No dimension is zero.
    pub shape: Vec<usize>,
    /// Byte offset **relative to the start of the data section** (see
    /// [`ModelFile::data_offset`]); always a multiple of 64.
    pub offset: u64,
    /// Byte length, exactly `dtype.byte_len(numel)`.
    pub len: u64,
}

impl TensorInfo {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }
}

/// A tensor's table entry and its bytes inside the mapping.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub info: &'a TensorInfo,
    pub bytes: &'a [u8],
}

impl TensorView<'_> {
    pub fn numel(&self) -> usize {
        self.info.numel()
    }
    pub fn name(&self) -> &str {
        &self.info.name
    }
    pub fn dtype(&self) -> DType {
        self.info.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.info.shape
    }

    /// Decodes (converting or dequantizing) every element to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        Self::decode(self.info.dtype, self.bytes, self.numel())
    }

    /// Decodes `n` values stored as `dtype` (bytes copied out of a file included) to f32.
    pub fn decode(dtype: DType, bytes: &[u8], n: usize) -> Vec<f32> {
        match dtype {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::Q8 => dequantize_q8(bytes, n),
            DType::Q4 => dequantize_q4(bytes, n),
        }
    }
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

/// A tensor's bytes that keep the file alive: a reference-counted view into the mapping, so a
/// prepared backend plan can read weights straight from the page cache for as long as it lives
/// without borrowing the [`ModelFile`] or copying anything.
#[derive(Clone)]
pub struct SharedBytes {
    storage: std::sync::Arc<Storage>,
    start: usize,
    len: usize,
}

impl SharedBytes {
    /// Bytes owned by this value alone (weights that come from no file).
    pub fn from_vec(v: Vec<u8>) -> Self {
        let len = v.len();
        Self {
            storage: std::sync::Arc::new(Storage::Owned(v)),
            start: 0,
            len,
        }
    }
}

impl std::ops::Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // In bounds by construction: `ModelFile::tensor_shared` checked the range.
        &self.storage.bytes()[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes at {})", self.len, self.start)
    }
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A validated `.ldm` file, memory-mapped (or owned, with [`ModelFile::from_bytes`]).
pub struct ModelFile {
    path: PathBuf,
    storage: std::sync::Arc<Storage>,
    meta: Value,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    data_offset: u64,
    header_len: u64,
    digest: [u8; 32],
}

impl std::fmt::Debug for ModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFile")
            .field("path", &self.path)
            .field("file_len", &self.file_len())
            .field("tensors", &self.tensors.len())
            .field("data_offset", &self.data_offset)
            .finish_non_exhaustive()
    }
}

impl ModelFile {
    /// Maps `path` and validates the preamble, JSON header and tensor table (not the digest:
    /// the cost is independent of the data size; call [`ModelFile::verify_digest`] for that).
    pub fn open(path: impl AsRef<Path>) -> Result<ModelFile, FormatError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
        if len < PREAMBLE_LEN as u64 {
            return Err(FormatError::TruncatedPreamble { len });
        }
        // SAFETY: the mapping is read-only. Mutating or truncating the file while it is mapped
        // is undefined behaviour; `ModelWriter` never does that (it renames a new file over the
        // old one, so existing mappings keep the old inode).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        Self::build(path.to_path_buf(), Storage::Mapped(map))
    }

    /// Validates an in-memory file (same rules as [`ModelFile::open`]).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<ModelFile, FormatError> {
        Self::build(PathBuf::from("<memory>"), Storage::Owned(bytes))
    }

    fn build(path: PathBuf, storage: Storage) -> Result<ModelFile, FormatError> {
        let v = validate(storage.bytes())?;
        Ok(ModelFile {
            path,
            storage: std::sync::Arc::new(storage),
            meta: v.meta,
            tensors: v.tensors,
            index: v.index,
            data_offset: v.data_offset,
            header_len: v.header_len,
            digest: v.digest,
        })
    }

    /// The JSON header without its `tensors` key, exactly as stored.
    pub fn meta(&self) -> &Value {
        &self.meta
    }

    /// The tensor table, in header order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Looks a tensor up by name.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let info = self.tensors.get(*self.index.get(name)?)?;
        let start = usize::try_from(self.data_offset.checked_add(info.offset)?).ok()?;
        let end = start.checked_add(usize::try_from(info.len).ok()?)?;
        let bytes = self.storage.bytes().get(start..end)?;
        Some(TensorView { info, bytes })
    }

    /// Looks a tensor up by name and returns its bytes as a view that keeps the mapping alive
    /// (see [`SharedBytes`]), with its table entry.
    pub fn tensor_shared(&self, name: &str) -> Option<(&TensorInfo, SharedBytes)> {
        let info = self.tensors.get(*self.index.get(name)?)?;
        let start = usize::try_from(self.data_offset.checked_add(info.offset)?).ok()?;
        let len = usize::try_from(info.len).ok()?;
        let end = start.checked_add(len)?;
        self.storage.bytes().get(start..end)?;
        let bytes = SharedBytes {
            storage: self.storage.clone(),
            start,
            len,
        };
        Some((info, bytes))
    }

    /// Drops this process's resident pages of the mapping (they stay in the page cache, and
    /// the next read faults them back in). A pipeline calls this between stages so only the
    /// running stage's weights count in its resident memory. No-op for in-memory files.
    pub fn release_pages(&self) {
        self.drop_pages(0, usize::MAX, "the model mapping");
    }

    /// Drops this process's resident pages of one tensor (those wholly inside it; the pages it
    /// shares with its neighbours stay). For a backend that has copied the tensor to its own
    /// memory, so the mapping does not hold a second copy while the stage runs.
    pub fn release_tensor_pages(&self, path: &str) {
        if let Some(t) = self.tensor(path) {
            let start = t.bytes.as_ptr() as usize - self.storage.bytes().as_ptr() as usize;
            self.drop_pages(start, t.bytes.len(), path);
        }
    }

    /// MADV_DONTNEED on the whole pages inside `len` bytes from `start` of a mapped file.
    fn drop_pages(&self, start: usize, len: usize, what: &str) {
        #[cfg(unix)]
        if let Storage::Mapped(m) = &*self.storage {
            const PAGE: usize = 4096;
            let first = start.div_ceil(PAGE) * PAGE;
            // The mapping's last page has no neighbour past it: up to its end it goes whole.
            let stop = start.saturating_add(len);
            let end = if stop >= m.len() {
                m.len()
            } else {
                stop / PAGE * PAGE
            };
            if end <= first {
                return;
            }
            // SAFETY: the mapping is read-only and file-backed, so MADV_DONTNEED only drops
            // page-table entries: every later read sees the same file bytes again. No view
            // into the mapping is invalidated.
            let r = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first)
            };
            if let Err(e) = r {
                log::debug!("madvise(DONTNEED) on {what} failed: {e}");
            }
        }
        #[cfg(not(unix))]
        let _ = (start, len, what);
    }

    /// Absolute file offset of the data section (a multiple of 64).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Length of the JSON header in bytes (without padding).
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    pub fn file_len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// The path given to [`ModelFile::open`] (`<memory>` for [`ModelFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The digest stored in the preamble.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Hashes the whole file (except the digest field) and compares with the stored digest.
    pub fn verify_digest(&self) -> Result<(), FormatError> {
        let computed = compute_digest(self.storage.bytes());
        if computed == self.digest {
            Ok(())
        } else {
            Err(FormatError::DigestMismatch {
                expected: hex(&self.digest),
                computed: hex(&computed),
            })
        }
    }
}

/// BLAKE3 of `file[0..24] ++ file[56..]`: everything but the digest field.
pub(crate) fn compute_digest(file: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(file.get(..DIGEST_RANGE.start).unwrap_or(file));
    h.update(file.get(DIGEST_RANGE.end..).unwrap_or(&[]));
    *h.finalize().as_bytes()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Validated {
    meta: Value,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    data_offset: u64,
    header_len: u64,
    digest: [u8; 32],
}

fn u32_at(p: &[u8; PREAMBLE_LEN], at: usize) -> u32 {
    u32::from_le_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

fn validate(bytes: &[u8]) -> Result<Validated, FormatError> {
    let file_len = bytes.len() as u64;
    let pre: &[u8; PREAMBLE_LEN] = bytes
        .get(..PREAMBLE_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or(FormatError::TruncatedPreamble { len: file_len })?;

    let mut magic = [0u8; 8];
    magic.copy_from_slice(&pre[..8]);
    if magic != MAGIC {
        return Err(FormatError::BadMagic { found: magic });
    }
    let version = u32_at(pre, 8);
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    let bom = u32_at(pre, 12);
    if bom != BYTE_ORDER_MARK {
        return Err(FormatError::ByteOrder { found: bom });
    }
    let mut hl = [0u8; 8];
    hl.copy_from_slice(&pre[16..24]);
    let header_len = u64::from_le_bytes(hl);
    if header_len > MAX_HEADER_LEN {
        return Err(FormatError::HeaderTooLarge {
            len: header_len,
            max: MAX_HEADER_LEN,
        });
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&pre[DIGEST_RANGE]);

    // header_len <= 64 MiB, so none of this can overflow.
    let header_end = PREAMBLE_LEN as u64 + header_len;
    let header_bytes = usize::try_from(header_end)
        .ok()
        .and_then(|end| bytes.get(PREAMBLE_LEN..end))
        .ok_or(FormatError::HeaderOutOfBounds {
            end: header_end,
            file_len,
        })?;
    let text = std::str::from_utf8(header_bytes).map_err(FormatError::HeaderUtf8)?;
    let Value::Object(mut header) = strict_json::parse(text)? else {
        return Err(FormatError::HeaderNotObject);
    };
    let Value::Array(entries) = header
        .remove("tensors")
        .ok_or(FormatError::MissingTensors)?
    else {
        return Err(FormatError::TensorsNotArray);
    };

    let data_offset = header_end.next_multiple_of(ALIGN);
    let data_len = file_len.saturating_sub(data_offset);

    let mut tensors = Vec::with_capacity(entries.len());
    let mut index = HashMap::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let t = parse_entry(i, entry, data_len)?;
        if index.insert(t.name.clone(), i).is_some() {
            return Err(FormatError::DuplicateName { name: t.name });
        }
        tensors.push(t);
    }

    // Layout: sorted by offset, the first tensor at 0 and each next one at the 64-byte boundary
    // after the previous one ends; the file ends at the boundary after the last tensor.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors.get(i).map_or(0, |t| t.offset));
    let mut prev: Option<&TensorInfo> = None;
    let mut next = 0u64;
    let mut pad_ranges = vec![(header_end, data_offset)];
    for t in order.iter().filter_map(|&i| tensors.get(i)) {
        if let Some(p) = prev {
            if t.offset < p.offset + p.len {
                return Err(FormatError::Overlap {
                    first: p.name.clone(),
                    second: t.name.clone(),
                });
            }
        }
        if t.offset != next {
            return Err(FormatError::Gap {
                name: t.name.clone(),
                offset: t.offset,
                expected: next,
            });
        }
        // In bounds of the data section (checked in parse_entry), so no overflow below.
        let end = t.offset + t.len;
        next = align_up(end).unwrap_or(u64::MAX);
        pad_ranges.push((data_offset + end, data_offset.saturating_add(next)));
        prev = Some(t);
    }
    let expected = data_offset.saturating_add(next);
    if expected != file_len {
        return Err(FormatError::FileLength { expected, file_len });
    }
    // Padding: fewer than 64 bytes per tensor, so this is cheap.
    for (start, end) in pad_ranges {
        for at in start..end {
            let byte = usize::try_from(at).ok().and_then(|a| bytes.get(a)).copied();
            if byte != Some(0) {
                return Err(FormatError::NonZeroPadding { at });
            }
        }
    }

    Ok(Validated {
        meta: Value::Object(header),
        tensors,
        index,
        data_offset,
        header_len,
        digest,
    })
}

const FIELDS: [&str; 5] = ["name", "dtype", "shape", "offset", "len"];

fn parse_entry(index: usize, entry: Value, data_len: u64) -> Result<TensorInfo, FormatError> {
    let Value::Object(obj) = entry else {
        return Err(FormatError::TensorEntryNotObject { index });
    };
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(FormatError::UnknownField {
            index,
            field: k.chars().take(80).collect(),
        });
    }
    let get = |field: &'static str| {
        obj.get(field)
            .ok_or(FormatError::MissingField { index, field })
    };
    let bad = |field: &'static str, problem: &str| FormatError::BadField {
        index,
        field,
        problem: problem.to_string(),
    };

    let name = get("name")?
        .as_str()
        .ok_or_else(|| bad("name", "is not a string"))?;
    check_name(name)?;
    let name = name.to_string();
    let dtype_name = get("dtype")?
        .as_str()
        .ok_or_else(|| bad("dtype", "is not a string"))?;
    let dtype = DType::from_name(dtype_name).ok_or_else(|| FormatError::UnknownDType {
        name: name.clone(),
        dtype: dtype_name.chars().take(80).collect(),
    })?;
    let shape: Vec<u64> = get("shape")?
        .as_array()
        .and_then(|dims| dims.iter().map(Value::as_u64).collect())
        .ok_or_else(|| bad("shape", "is not an array of non-negative integers"))?;
    let offset = uint(&obj, "offset", index)?;
    let len = uint(&obj, "len", index)?;

    let (_, expected) = checked_sizes(&name, &shape, dtype)?;
    if len != expected {
        return Err(FormatError::LengthMismatch {
            name,
            dtype,
            shape,
            expected,
            found: len,
        });
    }
    if offset % ALIGN != 0 {
        return Err(FormatError::Misaligned { name, offset });
    }
    if offset.checked_add(len).is_none_or(|end| end > data_len) {
        return Err(FormatError::OutOfBounds {
            name,
            offset,
            len,
            data_len,
        });
    }
    // checked_sizes guarantees every dimension fits in usize.
    let shape = shape
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
        .collect();
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        offset,
        len,
    })
}

fn uint(obj: &Map<String, Value>, field: &'static str, index: usize) -> Result<u64, FormatError> {
    obj.get(field)
        .ok_or(FormatError::MissingField { index, field })?
        .as_u64()
        .ok_or_else(|| FormatError::BadField {
            index,
            field,
            problem: "is not a non-negative integer".to_string(),
        })
}
