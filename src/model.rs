//! A loaded model: the mapped file, its parsed config and tokenizer, checked against the
//! architecture before anything runs.
use crate::arch::tiny_decoder::{self, TinyDecoderConfig};
use crate::arch::ModelConfig;
use crate::backend::WeightSource;
use crate::format::ModelFile;
use crate::preview::LatentRgb;
use crate::sampler::{SamplerKind, ScheduleConfig};
use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Sampling defaults stored in the file's `sampler` header key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerDefaults {
    pub schedule: ScheduleConfig,
    pub sampler: String,
    pub steps: usize,
    pub guidance: f32,
}

impl SamplerDefaults {
    /// The stored sampler name as a kind (`Model::open` has already checked that it parses).
    pub fn kind(&self) -> Result<SamplerKind> {
        self.sampler
            .parse()
            .map_err(|e: crate::sampler::SamplerError| Error::Config(e.to_string()))
    }
}

impl Default for SamplerDefaults {
    fn default() -> Self {
        Self {
            schedule: ScheduleConfig::default(),
            sampler: SamplerKind::Ddim.to_string(),
            steps: 20,
            guidance: 5.0,
        }
    }
}

pub struct Model {
    pub file: ModelFile,
    pub config: ModelConfig,
    pub sampler: SamplerDefaults,
    pub tokenizer: TextTokenizer,
    /// The optional latent-to-RGB preview map (`preview.latent_rgb.*` tensors).
    pub latent_rgb: Option<LatentRgb>,
    /// The optional tiny decoder (`tiny_decoder` header key, `tiny_decoder.*` tensors).
    pub tiny_decoder: Option<TinyDecoderConfig>,
}

fn meta_field<T: serde::de::DeserializeOwned>(meta: &serde_json::Value, key: &str) -> Result<T> {
    let v = meta
        .get(key)
        .ok_or_else(|| Error::Config(format!("model header has no `{key}`")))?;
    serde_json::from_value(v.clone())
        .map_err(|e| Error::Config(format!("model header `{key}`: {e}")))
}

impl Model {
    /// Maps and validates the file, then checks that its tensors are exactly those the
    /// architecture in its config reads, at the same shapes. Costs the header and table only:
    /// no weight is read here.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_file(ModelFile::open(path)?)
    }

    /// The same checks as [`Model::open`] on a file already validated, mapped or in memory
    /// (`ModelFile::from_bytes`: the quantizer's trial variants).
    pub fn from_file(file: ModelFile) -> Result<Self> {
        let meta = file.meta();
        let config: ModelConfig = meta_field(meta, "config")?;
        config.validate()?;
        let sampler: SamplerDefaults = meta_field(meta, "sampler")?;
        sampler.kind()?;
        let tok_json = meta
            .get("tokenizer")
            .ok_or_else(|| Error::Config("model header has no `tokenizer`".into()))?;
        let tokenizer = TextTokenizer::from_json(
            &tok_json.to_string(),
            config.text_encoder.max_position_embeddings,
        )?;
        if tokenizer.vocab_size() > config.text_encoder.vocab_size {
            return Err(Error::Config(format!(
                "tokenizer has {} tokens but the text encoder embeds only {}",
                tokenizer.vocab_size(),
                config.text_encoder.vocab_size
            )));
        }
        let tiny_decoder: Option<TinyDecoderConfig> = match meta.get(tiny_decoder::HEADER_KEY) {
            None => None,
            Some(_) => Some(meta_field(meta, tiny_decoder::HEADER_KEY)?),
        };
        if let Some(t) = &tiny_decoder {
            t.validate()?;
            if t.latent_channels != config.vae.latent_channels || t.factor != config.vae.factor() {
                return Err(Error::Config(format!(
                    "the tiny decoder takes {} channels at factor {}, the autoencoder has {} at {}",
                    t.latent_channels,
                    t.factor,
                    config.vae.latent_channels,
                    config.vae.factor()
                )));
            }
        }
        let model = Self {
            file,
            config,
            sampler,
            tokenizer,
            latent_rgb: None,
            tiny_decoder,
        };
        let mut model = model;
        model.check_tensors()?;
        model.latent_rgb = LatentRgb::load(&model, model.config.vae.latent_channels)?;
        Ok(model)
    }

    fn check_tensors(&self) -> Result<()> {
        let mut stored: HashMap<&str, &[usize]> = self
            .file
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice()))
            .collect();
        for (path, shape) in self.config.param_specs()? {
            match stored.remove(path.as_str()) {
                None => return Err(Error::MissingWeight(path)),
                Some(s) if s != shape.as_slice() => {
                    return Err(Error::WeightShape {
                        path,
                        expected: shape,
                        found: s.to_vec(),
                    })
                }
                Some(_) => {}
            }
        }
        if let Some(t) = &self.tiny_decoder {
            for (path, shape) in t.param_specs()? {
                match stored.remove(path.as_str()) {
                    None => return Err(Error::MissingWeight(path)),
                    Some(s) if s != shape.as_slice() => {
                        return Err(Error::WeightShape {
                            path,
                            expected: shape,
                            found: s.to_vec(),
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        // Optional components: present whole, at their shapes, or absent.
        let preview = crate::preview::param_specs(self.config.vae.latent_channels);
        if preview.iter().any(|(p, _)| stored.contains_key(p)) {
            for (path, shape) in preview {
                match stored.remove(path) {
                    None => return Err(Error::MissingWeight(path.to_string())),
                    Some(s) if s != shape.as_slice() => {
                        return Err(Error::WeightShape {
                            path: path.to_string(),
                            expected: shape,
                            found: s.to_vec(),
                        })
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some(extra) = stored.keys().min() {
            return Err(Error::Config(format!(
                "tensor `{extra}` is not used by the architecture in the config ({} unused)",
                stored.len()
            )));
        }
        Ok(())
    }
}

impl WeightSource for Model {
    fn shape(&self, path: &str) -> Option<Vec<usize>> {
        self.file.tensor(path).map(|t| t.shape().to_vec())
    }
    fn load_f32(&self, path: &str) -> Result<Vec<f32>> {
        let t = self
            .file
            .tensor(path)
            .ok_or_else(|| Error::MissingWeight(path.to_string()))?;
        Ok(t.to_f32())
    }
    fn raw_dtype(&self, path: &str) -> Option<crate::format::DType> {
        self.file.tensor(path).map(|t| t.dtype())
    }
    fn done_with(&self, path: &str) {
        self.file.release_tensor_pages(path);
    }
    fn load_raw(&self, path: &str) -> Option<(crate::format::DType, std::borrow::Cow<'_, [u8]>)> {
        // Borrowed straight from the mapping: no copy of the weight in host memory.
        self.file
            .tensor(path)
            .map(|t| (t.dtype(), std::borrow::Cow::Borrowed(t.bytes)))
    }
    fn load_shared(
        &self,
        path: &str,
    ) -> Option<(crate::format::DType, crate::format::SharedBytes)> {
        self.file
            .tensor_shared(path)
            .map(|(info, bytes)| (info.dtype, bytes))
    }
}
