//! Writing `.ldm` files atomically: temporary file in the target directory, fsync, rename.
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use half::f16;
use serde_json::{json, Map, Value};

use super::quant::{quantize_q4, quantize_q8, BLOCK, Q4_MAX, Q8_MAX};
use super::reader::hex;
use super::{
    align_up, check_name, checked_sizes, DType, FormatError, ALIGN, BYTE_ORDER_MARK, DIGEST_RANGE,
    MAGIC, MAX_HEADER_LEN, PREAMBLE_LEN, VERSION,
};

/// `data` in `dtype`'s stored layout (see SPEC.md), with the checks of [`ModelWriter::add`]:
/// f16 rejects finite values that overflow to infinity; q8/q4 reject non-finite values and
/// blocks whose scale would overflow f16. `name` only labels the error.
pub fn encode(name: &str, data: &[f32], dtype: DType) -> Result<Vec<u8>, FormatError> {
    let unrepresentable = |reason: String| FormatError::Unrepresentable {
        name: name.to_string(),
        dtype,
        reason,
    };
    let bytes = match dtype {
        DType::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => {
            let mut out = Vec::with_capacity(data.len() * 2);
            for (i, &x) in data.iter().enumerate() {
                let h = f16::from_f32(x);
                if x.is_finite() && !h.is_finite() {
                    return Err(unrepresentable(format!("value {x} at index {i} overflows")));
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
            out
        }
        DType::Q8 | DType::Q4 => {
            let qmax = if dtype == DType::Q8 { Q8_MAX } else { Q4_MAX };
            let limit = f16::MAX.to_f32() * qmax as f32;
            if let Some(i) = data.iter().position(|x| !x.is_finite()) {
                return Err(unrepresentable(format!("non-finite value at index {i}")));
            }
            if let Some(i) = data.iter().position(|x| x.abs() > limit) {
                return Err(unrepresentable(format!(
                    "|value| at index {i} exceeds {limit} (block {}): f16 scale overflows",
                    i / BLOCK
                )));
            }
            if dtype == DType::Q8 {
                quantize_q8(data)
            } else {
                quantize_q4(data)
            }
        }
    };
    Ok(bytes)
}

struct Pending {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    bytes: Vec<u8>,
}

/// Collects metadata and tensors in memory, then writes one `.ldm` file.
pub struct ModelWriter {
    meta: Map<String, Value>,
    tensors: Vec<Pending>,
    names: HashSet<String>,
}

/// What [`ModelWriter::write`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReport {
    pub path: PathBuf,
    pub file_len: u64,
    pub header_len: u64,
    pub data_offset: u64,
    pub tensors: usize,
    pub digest: [u8; 32],
}

impl WriteReport {
    pub fn digest_hex(&self) -> String {
        hex(&self.digest)
    }
}

impl ModelWriter {
    /// `meta` becomes the JSON header (config, sampler, tokenizer, provenance, ...). It must be an
    /// object and must not contain `tensors`, which the writer owns.
    pub fn new(meta: Value) -> Result<ModelWriter, FormatError> {
        match meta {
            Value::Object(map) if !map.contains_key("tensors") => Ok(ModelWriter {
                meta: map,
                tensors: Vec::new(),
                names: HashSet::new(),
            }),
            _ => Err(FormatError::BadMeta),
        }
    }

    /// The JSON header being built, so a tool can record what it did after adding tensors
    /// (the quantization report counts them). `tensors` stays the writer's: it is replaced on
    /// write.
    pub fn meta_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.meta
    }

    /// Name, dtype, shape and stored byte length of every tensor added, in order.
    pub fn tensor_list(&self) -> impl Iterator<Item = (&str, DType, &[u64], u64)> {
        self.tensors.iter().map(|t| {
            (
                t.name.as_str(),
                t.dtype,
                t.shape.as_slice(),
                t.bytes.len() as u64,
            )
        })
    }

    /// Number of tensors added so far.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Adds a tensor from f32 values (row-major), converting or quantizing to `dtype`.
    ///
    /// f32 stores anything; f16 rejects finite values that overflow to infinity; q8/q4 reject
    /// non-finite values and blocks whose scale would overflow f16.
    pub fn add(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &[f32],
        dtype: DType,
    ) -> Result<(), FormatError> {
        let shape = self.check_new(name, shape)?;
        let (numel, _) = checked_sizes(name, &shape, dtype)?;
        if numel != data.len() as u64 {
            return Err(FormatError::DataLength {
                name: name.to_string(),
                shape,
                numel,
                found: data.len(),
            });
        }
        let bytes = encode(name, data, dtype)?;
        self.push(name, dtype, shape, bytes);
        Ok(())
    }

    /// Adds a tensor from bytes already in `dtype`'s layout (see SPEC.md); only the length is
    /// checked.
    pub fn add_raw(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        bytes: impl Into<Vec<u8>>,
    ) -> Result<(), FormatError> {
        let bytes = bytes.into();
        let shape = self.check_new(name, shape)?;
        let (_, expected) = checked_sizes(name, &shape, dtype)?;
        if bytes.len() as u64 != expected {
            return Err(FormatError::LengthMismatch {
                name: name.to_string(),
                dtype,
                shape,
                expected,
                found: bytes.len() as u64,
            });
        }
        self.push(name, dtype, shape, bytes);
        Ok(())
    }

    /// Adds every tensor of `file` that `keep` accepts, bytes as stored (no re-quantization):
    /// how a tool writes a copy of a model with components added or replaced.
    pub fn add_all_from(
        &mut self,
        file: &super::ModelFile,
        keep: impl Fn(&str) -> bool,
    ) -> Result<(), FormatError> {
        for t in file.tensors() {
            if !keep(&t.name) {
                continue;
            }
            if let Some(v) = file.tensor(&t.name) {
                self.add_raw(&t.name, v.shape(), v.dtype(), v.bytes.to_vec())?;
            }
        }
        Ok(())
    }

    fn check_new(&self, name: &str, shape: &[usize]) -> Result<Vec<u64>, FormatError> {
        check_name(name)?;
        if self.names.contains(name) {
            return Err(FormatError::DuplicateName {
                name: name.to_string(),
            });
        }
        Ok(shape.iter().map(|&d| d as u64).collect())
    }

    fn push(&mut self, name: &str, dtype: DType, shape: Vec<u64>, bytes: Vec<u8>) {
        self.names.insert(name.to_string());
        self.tensors.push(Pending {
            name: name.to_string(),
            dtype,
            shape,
            bytes,
        });
    }

    /// Serializes the JSON header: `meta` plus the tensor table.
    fn header(&self) -> Result<Vec<u8>, FormatError> {
        let mut offset = 0u64;
        let mut table = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let len = t.bytes.len() as u64;
            table.push(json!({
                "name": t.name,
                "dtype": t.dtype,
                "shape": t.shape,
                "offset": offset,
                "len": len,
            }));
            offset = offset.checked_add(len).and_then(align_up).ok_or_else(|| {
                FormatError::ShapeOverflow {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                }
            })?;
        }
        let mut header = self.meta.clone();
        header.insert("tensors".to_string(), Value::Array(table));
        let bytes = serde_json::to_vec(&Value::Object(header))
            .map_err(|e| FormatError::HeaderJson(e.to_string()))?;
        if bytes.len() as u64 > MAX_HEADER_LEN {
            return Err(FormatError::HeaderTooLarge {
                len: bytes.len() as u64,
                max: MAX_HEADER_LEN,
            });
        }
        Ok(bytes)
    }

    /// Writes the file: a temporary file next to `path`, fsync, then an atomic rename over
    /// `path`. An existing file is never modified in place, so live mappings of it stay valid.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<WriteReport, FormatError> {
        let path = path.as_ref();
        let header = self.header()?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| FormatError::io(path, std::io::Error::other("path has no file name")))?;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = dir.join(format!(
            ".{}.tmp-{}-{}",
            file_name.to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| FormatError::io(&tmp, e))?;
        let result = self
            .write_to(file, &header)
            .map_err(|e| FormatError::io(&tmp, e))
            .and_then(|report| {
                fs::rename(&tmp, path).map_err(|e| FormatError::io(path, e))?;
                Ok(report)
            });
        let (file_len, digest) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // Make the rename itself durable. Not every platform can open a directory; that is fine.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(WriteReport {
            path: path.to_path_buf(),
            file_len,
            header_len: header.len() as u64,
            data_offset: (PREAMBLE_LEN + header.len()).next_multiple_of(ALIGN as usize) as u64,
            tensors: self.tensors.len(),
            digest,
        })
    }

    /// The bytes [`ModelWriter::write`] would put in the file, built in memory: how a tool
    /// tries a variant of a model (`ModelFile::from_bytes`) without a file per trial.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        let header = self.header()?;
        let mut out = vec![0u8; PREAMBLE_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&BYTE_ORDER_MARK.to_le_bytes());
        out[16..24].copy_from_slice(&(header.len() as u64).to_le_bytes());
        let pad = |out: &mut Vec<u8>| {
            let n = (out.len() as u64).next_multiple_of(ALIGN) as usize;
            out.resize(n, 0);
        };
        out.extend_from_slice(&header);
        pad(&mut out);
        for t in &self.tensors {
            out.extend_from_slice(&t.bytes);
            pad(&mut out);
        }
        let mut h = blake3::Hasher::new();
        h.update(&out[..DIGEST_RANGE.start]);
        h.update(&out[PREAMBLE_LEN..]);
        out[DIGEST_RANGE].copy_from_slice(h.finalize().as_bytes());
        Ok(out)
    }

    /// Streams the file into `file` while hashing it, then patches in the digest and fsyncs.
    fn write_to(&self, file: File, header: &[u8]) -> std::io::Result<(u64, [u8; 32])> {
        let mut pre = [0u8; PREAMBLE_LEN];
        pre[..8].copy_from_slice(&MAGIC);
        pre[8..12].copy_from_slice(&VERSION.to_le_bytes());
        pre[12..16].copy_from_slice(&BYTE_ORDER_MARK.to_le_bytes());
        pre[16..24].copy_from_slice(&(header.len() as u64).to_le_bytes());

        let mut out = Out {
            w: BufWriter::new(file),
            h: blake3::Hasher::new(),
            pos: 0,
        };
        out.h.update(&pre[..DIGEST_RANGE.start]);
        out.w.write_all(&pre)?;
        out.pos = PREAMBLE_LEN as u64;
        out.put(header)?;
        out.pad()?;
        for t in &self.tensors {
            out.put(&t.bytes)?;
            out.pad()?;
        }
        let digest = *out.h.finalize().as_bytes();
        let mut file = out.w.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(DIGEST_RANGE.start as u64))?;
        file.write_all(&digest)?;
        file.sync_all()?;
        Ok((out.pos, digest))
    }
}

struct Out {
    w: BufWriter<File>,
    h: blake3::Hasher,
    pos: u64,
}

impl Out {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.w.write_all(bytes)?;
        self.h.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }
    fn pad(&mut self) -> std::io::Result<()> {
        let n = self.pos.next_multiple_of(ALIGN) - self.pos;
        self.put(&[0u8; ALIGN as usize][..n as usize])
    }
}
