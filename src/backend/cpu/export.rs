//! ONNX export: the very lowering the CPU backend hands to tract, serialized to `.onnx` bytes,
//! so an exported file computes exactly what `--backend cpu` runs.
//!
//! A model over protobuf's 2 GiB limit (an SD-1.5-sized UNet at f32 is 3.4 GB) is written with
//! ONNX external data: the large initializers' values go to a side file `<name>.onnx.data`, each
//! at an offset aligned to [`EXTERNAL_ALIGN`] so onnxruntime can map it instead of copying, and
//! their `TensorProto`s keep only `data_location = EXTERNAL` and `location`/`offset`/`length`.
//!
//! `cpu/mod.rs` re-exports only [`to_onnx`]; the types below are reached through its result
//! (`to_onnx(..)?.write(..)`, `.into_bytes()`), so callers never need to name them.
use super::lower;
use crate::backend::{check_weights, WeightSource};
use crate::graph::{Graph, Op};
use crate::{Error, Result};
use prost::Message;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tract_onnx::pb::{tensor_proto, ModelProto, StringStringEntryProto, TensorProto};

/// protobuf's hard limit on one message; beyond it weights need ONNX external data.
const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

/// Offset alignment of each tensor in the external data file: the page size, so onnxruntime
/// (and tract) can memory-map an initializer where it lies instead of reading it into a copy.
pub const EXTERNAL_ALIGN: u64 = 4096;

/// Initializers smaller than this stay inline: padding a few biases to a page each would cost
/// more bytes than they hold, and shape constants must be readable without the side file.
pub const EXTERNAL_MIN_BYTES: usize = 4096;

/// Floats converted to little-endian bytes per write: bounds the staging buffer (1 MiB) while
/// keeping system calls few.
const CHUNK_FLOATS: usize = 1 << 18;

fn err(msg: String) -> Error {
    Error::Backend {
        backend: "onnx",
        msg,
    }
}

/// The ONNX model of `graph` with every weight loaded. Inputs keep the graph's names
/// (`input_ids`, `sample`, `timestep`, `context`, `latent`); outputs are `output`, `output1`, ...
/// Turn it into bytes with [`OnnxModel::into_bytes`] or into files with [`OnnxModel::write`].
pub fn to_onnx(graph: &Graph, weights: &dyn WeightSource) -> Result<OnnxModel> {
    check_weights(graph, weights)?;
    let mut proto = lower::lower(graph, weights)?;
    let names: Vec<String> = graph
        .inputs()
        .into_iter()
        .filter_map(|i| match &graph.nodes[i].op {
            Op::Input { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    if let Some(g) = proto.graph.as_mut() {
        // The lowering names values v0, v1, ... in node order, so its inputs come in the same
        // order as `graph.inputs()`.
        let mut rename = HashMap::new();
        for (vi, n) in g.input.iter_mut().zip(names) {
            rename.insert(std::mem::replace(&mut vi.name, n.clone()), n);
        }
        for (i, vo) in g.output.iter_mut().enumerate() {
            let n = if i == 0 {
                "output".to_string()
            } else {
                format!("output{i}")
            };
            rename.insert(std::mem::replace(&mut vo.name, n.clone()), n);
        }
        for node in g.node.iter_mut() {
            for x in node.input.iter_mut().chain(node.output.iter_mut()) {
                if let Some(n) = rename.get(x.as_str()) {
                    *x = n.clone();
                }
            }
        }
    }
    Ok(OnnxModel { proto })
}

/// A lowered model, weights included, not yet serialized.
pub struct OnnxModel {
    proto: ModelProto,
}

/// What [`OnnxModel::write`] wrote.
#[derive(Debug, Clone)]
pub struct OnnxWritten {
    pub path: PathBuf,
    /// Size of the `.onnx` file itself.
    pub onnx_bytes: u64,
    /// The external data file, when one was written.
    pub data: Option<ExternalWritten>,
}

#[derive(Debug, Clone)]
pub struct ExternalWritten {
    pub path: PathBuf,
    pub bytes: u64,
    /// Initializers stored in it.
    pub tensors: usize,
}

/// A file created under a temporary name next to its destination and renamed over it only once
/// complete, so a reader never sees half an export; removed if dropped before `commit`.
struct TempFile {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl TempFile {
    fn create(dest: &Path) -> Result<(Self, File)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = dest
            .file_name()
            .ok_or_else(|| Error::io(dest, std::io::Error::other("path has no file name")))?;
        let tmp = dest.with_file_name(format!(
            ".{}.tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        let t = TempFile {
            tmp,
            dest: dest.to_path_buf(),
            committed: false,
        };
        Ok((t, file))
    }

    fn commit(mut self) -> Result<()> {
        fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn entry(key: &str, value: String) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.into(),
        value,
    }
}

/// Whether `t` goes to the external file: float initializers of at least
/// [`EXTERNAL_MIN_BYTES`]. The lowering stores every weight as `float_data`; its int64
/// initializers are shapes and axes, a few bytes each.
fn goes_external(t: &TensorProto) -> bool {
    t.data_type == tensor_proto::DataType::Float as i32
        && t.float_data.len() * 4 >= EXTERNAL_MIN_BYTES
}

/// Appends `data` as little-endian f32 to `w` (ONNX's byte order for external data, whatever the
/// host's).
fn write_f32s(w: &mut impl Write, data: &[f32], buf: &mut Vec<u8>) -> std::io::Result<()> {
    for chunk in data.chunks(CHUNK_FLOATS) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(buf)?;
    }
    Ok(())
}

/// fsync of `path`'s directory, so the renames into it are durable. Not every platform can open
/// a directory; that is fine.
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl OnnxModel {
    /// Size of the whole model as one protobuf message (weights inline).
    pub fn encoded_len(&self) -> usize {
        self.proto.encoded_len()
    }

    /// The model as one `.onnx` message with every weight inline. Fails over protobuf's 2 GiB
    /// limit; [`write`](Self::write) handles any size.
    pub fn into_bytes(self) -> Result<Vec<u8>> {
        let len = self.encoded_len();
        if len > PROTOBUF_LIMIT {
            return Err(err(format!(
                "the model is {len} bytes, over protobuf's 2 GiB limit; write it to a file \
                 with external data instead"
            )));
        }
        Ok(self.proto.encode_to_vec())
    }

    /// The side file of the model written to `path`: `<file name>.data` in the same folder.
    pub fn data_path(path: &Path) -> Result<PathBuf> {
        let name = path
            .file_name()
            .ok_or_else(|| Error::io(path, std::io::Error::other("path has no file name")))?;
        let mut data = name.to_os_string();
        data.push(".data");
        Ok(path.with_file_name(data))
    }

    /// Writes the model to `path`, atomically (temporary files, fsync, rename). With
    /// `external` false the weights are inline unless the message would pass protobuf's 2 GiB
    /// limit; with `external` true, or over the limit, initializers of at least
    /// `EXTERNAL_MIN_BYTES` go to [`data_path`](Self::data_path), streamed one at a time and
    /// freed as written, so the export never holds the weights twice.
    ///
    /// An inline write removes a data file left by an earlier external export of the same
    /// name, which nothing refers to any more.
    pub fn write(mut self, path: &Path, external: bool) -> Result<OnnxWritten> {
        let external = external || self.encoded_len() > PROTOBUF_LIMIT;
        let data_path = Self::data_path(path)?;
        let data = if external {
            Some(self.externalize(&data_path)?)
        } else {
            None
        };
        let len = self.encoded_len();
        if len > PROTOBUF_LIMIT {
            // Only the graph and the small initializers are left; a graph this large is not
            // something the lowering can produce, but protobuf readers would reject it.
            return Err(err(format!(
                "the model's graph alone is {len} bytes, over protobuf's 2 GiB limit"
            )));
        }
        let bytes = self.proto.encode_to_vec();
        drop(self);
        let (tmp, mut file) = TempFile::create(path)?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(&tmp.tmp, e))?;
        drop(file);
        // The data file is renamed first: the new `.onnx` must never be visible without it.
        let data = match data {
            Some((t, written)) => {
                t.commit()?;
                Some(written)
            }
            None => {
                match fs::remove_file(&data_path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&data_path, e)),
                }
                None
            }
        };
        tmp.commit()?;
        sync_dir(path);
        Ok(OnnxWritten {
            path: path.to_path_buf(),
            onnx_bytes: bytes.len() as u64,
            data,
        })
    }

    /// Moves the large initializers' values into a temporary data file destined for
    /// `data_path` and points their protos at it. Returns the uncommitted file.
    fn externalize(&mut self, data_path: &Path) -> Result<(TempFile, ExternalWritten)> {
        // The location is relative to the `.onnx` file's folder, as ONNX requires; both files
        // are written side by side.
        let location = data_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::io(data_path, std::io::Error::other("no file name")))?;
        let (tmp, file) = TempFile::create(data_path)?;
        let io = |e| Error::io(&tmp.tmp, e);
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let mut buf = Vec::with_capacity(CHUNK_FLOATS * 4);
        let zeros = [0u8; EXTERNAL_ALIGN as usize];
        let mut pos = 0u64;
        let mut tensors = 0;
        if let Some(g) = self.proto.graph.as_mut() {
            for t in g.initializer.iter_mut().filter(|t| goes_external(t)) {
                let pad = pos.next_multiple_of(EXTERNAL_ALIGN) - pos;
                w.write_all(&zeros[..pad as usize]).map_err(io)?;
                pos += pad;
                // Taken out of the proto and dropped after writing: the weights exist once.
                let values = std::mem::take(&mut t.float_data);
                write_f32s(&mut w, &values, &mut buf).map_err(io)?;
                let length = values.len() as u64 * 4;
                drop(values);
                t.data_location = Some(tensor_proto::DataLocation::External as i32);
                t.external_data = vec![
                    entry("location", location.clone()),
                    entry("offset", pos.to_string()),
                    entry("length", length.to_string()),
                ];
                pos += length;
                tensors += 1;
            }
        }
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        let written = ExternalWritten {
            path: data_path.to_path_buf(),
            bytes: pos,
            tensors,
        };
        Ok((tmp, written))
    }
}
