//! The full-precision model the quantizer starts from and measures against, and the variants it
//! assembles from it in memory (one dtype per tensor) without writing a file per trial.
use crate::train::checkpoint::Checkpoint;
use anyhow::{bail, Context, Result};
use ldm_edge::arch::{ModelConfig, Task};
use ldm_edge::format::{encode, DType, ModelFile, ModelWriter};
use ldm_edge::model::Model;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;

/// One tensor as the input stores it.
pub struct RefTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub bytes: Vec<u8>,
    /// A matrix or kernel of the architecture: may be stored as f16, q8 or q4. Vectors (biases,
    /// norms) and the optional extras (preview map, tiny decoder) are not.
    pub candidate: bool,
    /// A parameter of the architecture (vectors included); extras are copied as stored.
    pub param: bool,
}

pub struct Reference {
    /// The header of the input, written back with the report replaced.
    pub meta: Map<String, Value>,
    pub config: ModelConfig,
    pub tensors: Vec<RefTensor>,
    /// What full precision is here, for the report.
    pub description: String,
    /// Encodings made so far, by tensor index and dtype.
    cache: HashMap<(usize, DType), Vec<u8>>,
}

/// Which extension decides how IN is read: a `.safetensors` checkpoint or a `.ldm` file.
pub fn load(path: &Path) -> Result<Reference> {
    let is_ckpt = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if is_ckpt {
        let ck = Checkpoint::load(path)?;
        let step = ck.meta("step").unwrap_or("?").to_string();
        let w = crate::train::export::build(&ck, DType::F32, true, serde_json::json!({}))
            .with_context(|| format!("cannot build a model from {}", path.display()))?;
        let file = ModelFile::from_bytes(w.to_bytes()?)?;
        Reference::from_file(
            &file,
            format!(
                "f32 checkpoint {} (EMA weights, step {step})",
                file_name(path)
            ),
        )
    } else {
        let file = ModelFile::open(path)
            .with_context(|| format!("cannot open model {}", path.display()))?;
        let mut r = Reference::from_file(&file, String::new())?;
        // What the quantizable weights are stored as says what "full precision" means here.
        let mut kinds: Vec<&str> = r
            .tensors
            .iter()
            .filter(|t| t.candidate)
            .map(|t| t.dtype.name())
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        r.description = match kinds.as_slice() {
            ["f32"] => format!("f32 model {}", file_name(path)),
            [d] => format!(
                "{d} model {} dequantized to f32 (its own {d} values are the reference, \
                 not the f32 weights it was made from)",
                file_name(path)
            ),
            _ => format!(
                "model {} ({}) dequantized to f32",
                file_name(path),
                kinds.join("/")
            ),
        };
        Ok(r)
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

impl Reference {
    pub fn from_file(file: &ModelFile, description: String) -> Result<Reference> {
        let Some(meta) = file.meta().as_object().cloned() else {
            bail!("the model header is not a JSON object");
        };
        let config: ModelConfig = serde_json::from_value(
            meta.get("config")
                .cloned()
                .context("the model header has no `config`")?,
        )
        .context("the model header's `config`")?;
        let params: std::collections::HashSet<String> =
            config.param_specs()?.into_iter().map(|(p, _)| p).collect();
        let mut tensors = Vec::with_capacity(file.tensors().len());
        for t in file.tensors() {
            let view = file
                .tensor(&t.name)
                .with_context(|| format!("tensor `{}` is out of bounds", t.name))?;
            let param = params.contains(&t.name);
            tensors.push(RefTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype,
                bytes: view.bytes.to_vec(),
                candidate: param && t.shape.len() >= 2,
                param,
            });
        }
        Ok(Reference {
            meta,
            config,
            tensors,
            description,
            cache: HashMap::new(),
        })
    }

    pub fn task(&self) -> Task {
        self.config.task
    }

    /// Tensor `i` in `dtype`: the stored bytes when that is its dtype (re-quantizing a
    /// dequantized q8/q4 tensor would give the same bytes anyway), else encoded once and kept.
    pub fn encoded(&mut self, i: usize, dtype: DType) -> Result<&[u8]> {
        let t = &self.tensors[i];
        if t.dtype == dtype {
            return Ok(&self.tensors[i].bytes);
        }
        if !self.cache.contains_key(&(i, dtype)) {
            let data = ldm_edge::format::TensorView::decode(t.dtype, &t.bytes, numel(&t.shape));
            let bytes = encode(&t.name, &data, dtype)?;
            self.cache.insert((i, dtype), bytes);
        }
        Ok(&self.cache[&(i, dtype)])
    }

    /// Drops cached encodings (a large model's q8 and q4 copies) once a phase is done.
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// The dtype tensor `i` takes when the model's quantizable tensors go to `want`: vectors
    /// stay f32 when quantizing (as `export --dtype` stores them), extras keep their dtype.
    pub fn default_dtype(&self, i: usize, want: DType) -> DType {
        let t = &self.tensors[i];
        if !t.param {
            t.dtype
        } else if t.candidate {
            want
        } else {
            crate::init::storage_dtype(&t.shape, want)
        }
    }

    /// The input as stored: the reference every trial is compared with.
    pub fn stored_dtypes(&self) -> Vec<DType> {
        self.tensors.iter().map(|t| t.dtype).collect()
    }

    /// A writer holding the model with tensor i in `dtypes[i]`, under `meta`.
    pub fn writer(&mut self, dtypes: &[DType], meta: Map<String, Value>) -> Result<ModelWriter> {
        let mut w = ModelWriter::new(Value::Object(meta))?;
        for (i, &d) in dtypes.iter().enumerate() {
            let bytes = self.encoded(i, d)?.to_vec();
            let t = &self.tensors[i];
            w.add_raw(&t.name, &t.shape, d, bytes)?;
        }
        Ok(w)
    }

    /// The variant as a loaded model, in memory.
    pub fn model(&mut self, dtypes: &[DType]) -> Result<Model> {
        let bytes = self.writer(dtypes, self.meta.clone())?.to_bytes()?;
        Ok(Model::from_file(ModelFile::from_bytes(bytes)?)?)
    }

    /// Bytes of tensor i in `dtype`.
    pub fn bytes_as(&self, i: usize, dtype: DType) -> u64 {
        dtype
            .byte_len(numel(&self.tensors[i].shape) as u64)
            .unwrap_or(u64::MAX)
    }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}
