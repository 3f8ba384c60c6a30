//! A minimal, strict reader of the safetensors format (8-byte little-endian header length, a
//! JSON header of `name -> {dtype, shape, data_offsets}`, then the data), memory-mapped.
//!
//! Written here rather than taken from the `safetensors` crate because the importer lives in the
//! library (the parity tests call it) and the format is this small; every offset is checked.
use crate::{Error, Result};
use half::{bf16, f16};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Clone, Debug)]
pub struct Entry {
    pub dtype: String,
    pub shape: Vec<usize>,
    begin: usize,
    end: usize,
}

pub struct SafeTensors {
    pub path: PathBuf,
    map: memmap2::Mmap,
    data_start: usize,
    pub entries: BTreeMap<String, Entry>,
    /// The header's `__metadata__` (string to string; LoRA files keep their adapter config here).
    pub metadata: BTreeMap<String, String>,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Input(format!(
        "{}: not a valid safetensors file: {msg}",
        path.display()
    ))
}

fn elem_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" => 8,
        "F32" | "I32" => 4,
        "F16" | "BF16" | "I16" => 2,
        "U8" | "I8" | "BOOL" => 1,
        _ => return None,
    })
}

impl SafeTensors {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only and the importer never writes to its inputs; a file
        // changed underneath would give wrong numbers, not memory unsafety in our reads, which
        // are all bounds-checked against the length at open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        if map.len() < 8 {
            return Err(bad(path, "shorter than the 8-byte header length"));
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&map[..8]);
        let hlen = u64::from_le_bytes(len8);
        if hlen > MAX_HEADER || 8 + hlen > map.len() as u64 {
            return Err(bad(path, format!("header length {hlen} is out of bounds")));
        }
        let data_start = 8 + hlen as usize;
        let header: serde_json::Value = serde_json::from_slice(&map[8..data_start])
            .map_err(|e| bad(path, format!("header JSON: {e}")))?;
        let obj = header
            .as_object()
            .ok_or_else(|| bad(path, "header is not a JSON object"))?;
        let data_len = map.len() - data_start;
        let mut entries = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, v) in obj {
            if name == "__metadata__" {
                let m = v
                    .as_object()
                    .ok_or_else(|| bad(path, "__metadata__ is not an object"))?;
                for (k, v) in m {
                    let v = v
                        .as_str()
                        .ok_or_else(|| bad(path, format!("__metadata__ `{k}` is not a string")))?;
                    metadata.insert(k.clone(), v.to_string());
                }
                continue;
            }
            let e: RawEntry = serde_json::from_value(v.clone())
                .map_err(|e| bad(path, format!("tensor `{name}`: {e}")))?;
            let size = elem_size(&e.dtype)
                .ok_or_else(|| bad(path, format!("tensor `{name}`: unknown dtype {}", e.dtype)))?;
            let [begin, end] = e.data_offsets;
            let numel = e
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .and_then(|n| n.checked_mul(size));
            if begin > end || end > data_len || numel != Some(end - begin) {
                return Err(bad(
                    path,
                    format!(
                        "tensor `{name}`: offsets {begin}..{end} do not hold shape {:?} of {} in \
                         {data_len} data bytes",
                        e.shape, e.dtype
                    ),
                ));
            }
            entries.insert(
                name.clone(),
                Entry {
                    dtype: e.dtype,
                    shape: e.shape,
                    begin,
                    end,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
            data_start,
            entries,
            metadata,
        })
    }

    /// The tensor `name` converted to f32 (exactly, from f16/bf16/f32; rounded from f64).
    pub fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| Error::MissingWeight(format!("{name} (in {})", self.path.display())))?;
        let b = &self.map[self.data_start + e.begin..self.data_start + e.end];
        let out = match e.dtype.as_str() {
            "F32" => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            "F16" => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            "BF16" => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            "F64" => b
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    f64::from_le_bytes(a) as f32
                })
                .collect(),
            "I64" => b
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    i64::from_le_bytes(a) as f32
                })
                .collect(),
            d => {
                return Err(Error::Input(format!(
                    "{}: tensor `{name}` has dtype {d}, which is not a float weight",
                    self.path.display()
                )))
            }
        };
        Ok(out)
    }
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}
