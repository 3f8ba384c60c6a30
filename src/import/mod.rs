//! Import of existing Stable Diffusion weights into a `.ldm` file: a diffusers folder
//! ([`Import::from_diffusers`]) or a single-file original checkpoint in safetensors
//! ([`Import::from_checkpoint`]). Pickle checkpoints are refused (see [`refuse_pickle`]).
//!
//! Every tensor the architecture reads must be present at its exact shape, and every tensor in
//! the source must be used: a missing or extra tensor, a wrong shape or an unsupported config
//! field is an error that names it. `ldm-host import` and the parity tests share this code.
mod clip_bpe;
mod configs;
mod fields;
mod json;
pub mod lora;
pub mod safetensors;
mod scheduler_config;
mod single_file;

use crate::arch::{ModelConfig, TEXT, UNET, VAE};
use crate::format::{DType, ModelWriter, WriteReport};
use crate::model::SamplerDefaults;
use crate::sampler::SamplerKind;
use crate::{Error, Result};
use fields::Fields;
use safetensors::SafeTensors;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Buffers that transformers saves with some CLIP checkpoints (`position_ids` = 0..n). They are
/// not weights; the architecture derives positions itself.
const KNOWN_BUFFERS: [&str; 1] = ["text_encoder.text_model.embeddings.position_ids"];

/// Where one of our parameters comes from.
struct Source {
    file: usize,
    name: String,
    /// `Some((i, n))`: the i-th of n equal parts along the first axis (OpenCLIP's fused q/k/v).
    chunk: Option<(usize, usize)>,
}

impl Source {
    fn load(&self, files: &[SafeTensors]) -> Result<Vec<f32>> {
        let data = files[self.file].load_f32(&self.name)?;
        let Some((i, n)) = self.chunk else {
            return Ok(data);
        };
        // Row-major, so a part along the first axis is a contiguous range; `matched` checked
        // that the first axis divides by n.
        let len = data.len() / n;
        Ok(data[i * len..(i + 1) * len].to_vec())
    }
}

/// A checkpoint mapped onto our architecture, checked, ready to write.
pub struct Import {
    pub config: ModelConfig,
    pub sampler: SamplerDefaults,
    pub tokenizer_json: String,
    /// What was imported, for the file's provenance.
    pub source: String,
    files: Vec<SafeTensors>,
    /// Our parameter path -> its tensor in `files`, in `param_specs` order.
    plan: Vec<(String, Vec<usize>, Source)>,
    /// LoRA updates merged into the weights as they are loaded (before any quantization).
    lora: lora::LoraMerge,
    /// The LoRA files merged, `FILE:SCALE`, for the provenance.
    loras: Vec<String>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    json::parse(&text, &path.display().to_string())
}

/// A diffusers `scheduler_config.json`'s text -> (schedule, the sampler it names), as
/// `Import::from_diffusers` reads it (Python's `Infinity`/`NaN` accepted).
pub fn read_scheduler_config(text: &str) -> Result<(crate::sampler::ScheduleConfig, SamplerKind)> {
    scheduler_config::scheduler(json::parse(text, scheduler_config::FILE)?)
}

fn fields(dir: &Path, rel: &str) -> Result<Fields> {
    Fields::new(rel, read_json(&dir.join(rel))?)
}

/// Refuses pickle-based checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`, or any file that starts
/// like a zip or pickle stream): unpickling runs whatever code the file embeds.
pub fn refuse_pickle(path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut head = [0u8; 4];
    let looks_pickled = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .map(|_| head == *b"PK\x03\x04" || (head[0] == 0x80 && (2..=5).contains(&head[1])))
        .unwrap_or(false);
    if matches!(ext.as_str(), "ckpt" | "pt" | "pth" | "bin") || looks_pickled {
        return Err(Error::Input(format!(
            "{} is a pickle (PyTorch) checkpoint; it is refused because unpickling executes \
             arbitrary code embedded in the file. Convert it to .safetensors first (e.g. with \
             diffusers or safetensors' convert script, in a sandbox) and import that",
            path.display()
        )));
    }
    Ok(())
}

/// The component's weights file in a diffusers folder: `<stem>.safetensors`, or the shards
/// named by `<stem>.safetensors.index.json`.
fn weight_files(dir: &Path, comp: &str, stem: &str) -> Result<Vec<PathBuf>> {
    let d = dir.join(comp);
    let single = d.join(format!("{stem}.safetensors"));
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = d.join(format!("{stem}.safetensors.index.json"));
    if index.exists() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::Config(format!("{}: no weight_map", index.display())))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(Value::as_str)
            .map(|f| d.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    for ext in ["bin", "ckpt", "pt", "pth"] {
        let p = d.join(format!("{stem}.{ext}"));
        if p.exists() {
            refuse_pickle(&p)?;
        }
    }
    Err(Error::Input(format!(
        "{}: no {stem}.safetensors in {comp}/",
        dir.display()
    )))
}

/// transformers 5 saves `CLIPTextModel` without its `text_model.` prefix; earlier versions (and
/// every published SD checkpoint) keep it. Our names follow the latter.
fn canonical(comp: &str, name: &str) -> String {
    if comp == "text_encoder" && !name.starts_with("text_model.") {
        format!("text_model.{name}")
    } else {
        name.to_string()
    }
}

/// Legacy diffusers VAE attention names (before diffusers 0.14) -> current ones.
fn modern_name(name: &str) -> String {
    for (old, new) in [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ] {
        if name.contains(".attentions.") && name.contains(old) {
            return name.replacen(old, new, 1);
        }
    }
    name.to_string()
}

impl Import {
    /// A diffusers StableDiffusionPipeline folder (model_index.json; unet/, vae/,
    /// text_encoder/, tokenizer/, scheduler/).
    pub fn from_diffusers(dir: &Path) -> Result<Self> {
        let (config, sampler, tokenizer_json) = Self::configs(dir)?;
        let mut files = Vec::new();
        let mut names = BTreeMap::new();
        for (comp, stem, prefix) in [
            ("unet", "diffusion_pytorch_model", UNET),
            ("vae", "diffusion_pytorch_model", VAE),
            ("text_encoder", "model", TEXT),
        ] {
            for path in weight_files(dir, comp, stem)? {
                let st = SafeTensors::open(&path)?;
                for n in st.entries.keys() {
                    let ours = format!("{prefix}{}", modern_name(&canonical(comp, n)));
                    let src = Source {
                        file: files.len(),
                        name: n.clone(),
                        chunk: None,
                    };
                    if names.insert(ours.clone(), src).is_some() {
                        return Err(Error::Config(format!("tensor `{ours}` appears twice")));
                    }
                }
                files.push(st);
            }
        }
        Self::matched(
            config,
            sampler,
            tokenizer_json,
            dir.display().to_string(),
            files,
            names,
        )
    }

    /// The architecture, sampler defaults and tokenizer of a diffusers folder, from its config
    /// files and tokenizer only (no weights are read): model_index.json, unet/config.json,
    /// vae/config.json, text_encoder/config.json, scheduler/scheduler_config.json, tokenizer/.
    fn configs(dir: &Path) -> Result<(ModelConfig, SamplerDefaults, String)> {
        let index = read_json(&dir.join("model_index.json"))?;
        for (comp, class) in [
            ("unet", "UNet2DConditionModel"),
            ("vae", "AutoencoderKL"),
            ("text_encoder", "CLIPTextModel"),
        ] {
            let found = index
                .get(comp)
                .and_then(|v| v.get(1))
                .and_then(Value::as_str);
            if found != Some(class) {
                return Err(Error::Config(format!(
                    "model_index.json: `{comp}` is {found:?}; only {class} is supported"
                )));
            }
        }
        let (unet, sample_size) = configs::unet(fields(dir, "unet/config.json")?)?;
        let (vae, latent_scale, _) = configs::vae(fields(dir, "vae/config.json")?)?;
        let text = configs::clip_text(fields(dir, "text_encoder/config.json")?)?;
        let (schedule, kind) =
            scheduler_config::scheduler(read_json(&dir.join(scheduler_config::FILE))?)?;
        // SD-inpainting checkpoints carry the mask and masked-image latent as 5 extra UNet
        // inputs, in the order our inpaint task uses; anything else is not a task we run.
        let z = vae.latent_channels;
        let task = match unet.in_channels {
            c if c == z => crate::arch::Task::Txt2img,
            c if c == 2 * z + 1 => crate::arch::Task::Inpaint,
            c => {
                return Err(Error::Config(format!(
                    "unet in_channels {c} with {z} latent channels is neither text-to-image nor inpainting"
                )))
            }
        };
        let config = ModelConfig {
            image_size: sample_size * vae.factor(),
            unet,
            vae,
            text_encoder: text,
            latent_scale,
            task,
        };
        config.validate()?;
        let tokenizer_json = clip_bpe::load(
            &dir.join("tokenizer"),
            config.text_encoder.max_position_embeddings,
        )?;
        // diffusers' pipeline defaults: 4 steps at scale 8.5 for an LCM-distilled UNet
        // (LatentConsistencyModelPipeline), else 25 at 7.5 (what SD users run).
        let (steps, guidance) = if kind == SamplerKind::Lcm {
            (4, 8.5)
        } else {
            (25, 7.5)
        };
        let sampler = SamplerDefaults {
            schedule,
            sampler: kind.to_string(),
            steps,
            guidance,
        };
        Ok((config, sampler, tokenizer_json))
    }

    /// A single-file original SD-1.x or SD-2.x checkpoint (`.safetensors` only; pickles are
    /// refused).
    ///
    /// The file holds weights only, so the architecture, scheduler and tokenizer come from
    /// `config_dir`: a diffusers folder of the same model, of which only the config files and
    /// tokenizer/ are read (its weight files, if any, are ignored). This is what diffusers'
    /// `from_single_file(..., config=DIR)` does too.
    pub fn from_checkpoint(path: &Path, config_dir: Option<&Path>) -> Result<Self> {
        refuse_pickle(path)?;
        let config_dir = config_dir.ok_or_else(|| {
            Error::Input(
                "a single-file checkpoint does not record its architecture or tokenizer: pass \
                 the model's diffusers config folder (model_index.json, unet/config.json, \
                 vae/config.json, text_encoder/config.json, scheduler/, tokenizer/; weights \
                 are not needed)"
                    .into(),
            )
        })?;
        let st = SafeTensors::open(path)?;
        let (config, sampler, tokenizer_json) = Self::configs(config_dir)?;
        let names = single_file::map_names(st.entries.keys(), &config)?
            .into_iter()
            .map(|(ours, (name, chunk))| {
                let src = Source {
                    file: 0,
                    name,
                    chunk,
                };
                (ours, src)
            })
            .collect();
        Self::matched(
            config,
            sampler,
            tokenizer_json,
            format!("{} (config {})", path.display(), config_dir.display()),
            vec![st],
            names,
        )
    }

    /// Matches the source tensors against the architecture's parameters, exactly.
    fn matched(
        config: ModelConfig,
        sampler: SamplerDefaults,
        tokenizer_json: String,
        source: String,
        files: Vec<SafeTensors>,
        mut names: BTreeMap<String, Source>,
    ) -> Result<Self> {
        let tk = crate::tokenizer::TextTokenizer::from_json(
            &tokenizer_json,
            config.text_encoder.max_position_embeddings,
        )?;
        if tk.vocab_size() > config.text_encoder.vocab_size {
            return Err(Error::Config(format!(
                "the tokenizer has {} tokens, the text encoder embeds {}",
                tk.vocab_size(),
                config.text_encoder.vocab_size
            )));
        }
        let mut plan = Vec::new();
        for (path, shape) in config.param_specs()? {
            let src = names
                .remove(&path)
                .ok_or_else(|| Error::MissingWeight(path.clone()))?;
            let mut found = files[src.file].entries[&src.name].shape.clone();
            if let Some((i, n)) = src.chunk {
                match found.first_mut() {
                    Some(d) if *d % n == 0 => *d /= n,
                    _ => {
                        return Err(Error::Config(format!(
                            "`{}` has shape {found:?}, which does not split in {n} parts along \
                             its first axis (for part {i}: `{path}`)",
                            src.name
                        )))
                    }
                }
            }
            let found = &found;
            // 1x1 convolutions stored for a linear layer (original SD's VAE attention and
            // SD 1.x-style proj_in) are the same numbers.
            let squeezed: Vec<usize> = found.iter().copied().filter(|&d| d != 1).collect();
            let want: Vec<usize> = shape.iter().copied().filter(|&d| d != 1).collect();
            if *found != shape && !(shape.len() == 2 && found.len() == 4 && squeezed == want) {
                // Name the tensor as the source file does too when that differs (single files).
                let path = if path.ends_with(src.name.as_str()) {
                    path
                } else {
                    format!("{path}`, file tensor `{}", src.name)
                };
                return Err(Error::WeightShape {
                    path,
                    expected: shape,
                    found: found.clone(),
                });
            }
            plan.push((path, shape, src));
        }
        for b in KNOWN_BUFFERS {
            if names.remove(b).is_some() {
                log::info!("import: skipping buffer {b} (not a weight)");
            }
        }
        if !names.is_empty() {
            let list: Vec<String> = names
                .iter()
                .take(8)
                .map(|(k, s)| format!("{k} (from {})", s.name))
                .collect();
            return Err(Error::Config(format!(
                "{} tensor(s) in the checkpoint are not used by the architecture, e.g. {}",
                names.len(),
                list.join(", ")
            )));
        }
        Ok(Self {
            config,
            sampler,
            tokenizer_json,
            source,
            files,
            plan,
            lora: lora::LoraMerge::new(),
            loras: Vec::new(),
        })
    }

    /// Merges a LoRA file (kohya or diffusers/PEFT layout; see [`lora`]) at `scale` into the
    /// UNet and text encoder weights as they are loaded and written. Returns the number of
    /// layers it adapts.
    pub fn add_lora(&mut self, file: &Path, scale: f32) -> Result<usize> {
        let params: BTreeMap<String, Vec<usize>> = self
            .plan
            .iter()
            .map(|(p, s, _)| (p.clone(), s.clone()))
            .collect();
        let n = self.lora.add(file, scale, &params)?;
        self.loras.push(format!("{}:{scale}", file.display()));
        Ok(n)
    }

    /// Our parameter paths and shapes, in the order they are written.
    pub fn params(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.plan.iter().map(|(p, s, _)| (p.as_str(), s.as_slice()))
    }

    /// The numbers of one of our parameters as the source stores them, converted to f32.
    pub fn load(&self, path: &str) -> Result<Vec<f32>> {
        let (_, _, src) = self
            .plan
            .iter()
            .find(|(p, _, _)| p == path)
            .ok_or_else(|| Error::MissingWeight(path.to_string()))?;
        let mut data = src.load(&self.files)?;
        self.lora.apply(path, &mut data);
        Ok(data)
    }

    /// Number of tensors that will be written.
    pub fn len(&self) -> usize {
        self.plan.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plan.is_empty()
    }

    /// Writes the `.ldm`: matrices and kernels in `dtype`, vectors in f32 when quantizing
    /// (biases and norm parameters are tiny and sensitive).
    pub fn write(&self, dtype: DType, out: &Path, recipe: &str) -> Result<WriteReport> {
        let tokenizer: Value = serde_json::from_str(&self.tokenizer_json)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let (map, fit) = crate::preview::fit::fit_from(&self.config, &|p| self.load(p))?;
        let meta = json!({
            "config": self.config,
            "sampler": self.sampler,
            "tokenizer": tokenizer,
            "provenance": {
                "kind": "imported",
                "source": self.source,
                "lora": self.loras,
                "dtype": format!("{dtype:?}"),
                "recipe": recipe,
                "tool": concat!("ldm-edge ", env!("CARGO_PKG_VERSION")),
                "preview": fit.provenance(),
            },
        });
        let mut w = ModelWriter::new(meta)?;
        map.add_to(&mut w)?;
        for (path, shape, src) in &self.plan {
            let mut data = src.load(&self.files)?;
            self.lora.apply(path, &mut data);
            let d = match dtype {
                DType::Q8 | DType::Q4 if shape.len() < 2 => DType::F32,
                d => d,
            };
            w.add(path, shape, &data, d)?;
        }
        let report = crate::quant_report::QuantReport::counts(
            concat!("ldm-edge ", env!("CARGO_PKG_VERSION")),
            "import",
            dtype.name(),
            &format!("the imported weights ({})", self.source),
            &w,
        );
        report.insert_into(w.meta_mut())?;
        Ok(w.write(out)?)
    }
}
