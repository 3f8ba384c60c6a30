//! `ldm-host import` (diffusers folder or single-file safetensors -> `.ldm`) and
//! `ldm-host export --onnx` (a `.ldm` -> unet.onnx, decoder.onnx, text_encoder.onnx). The
//! mapping itself is `ldm_edge::import`, shared with the parity tests.
use anyhow::{bail, Context, Result};
use clap::Args;
use ldm_edge::format::DType;
use ldm_edge::import::Import;
use ldm_edge::model::Model;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ImportArgs {
    /// A diffusers StableDiffusionPipeline folder (model_index.json, unet/, vae/, ...).
    #[arg(
        long,
        conflicts_with = "checkpoint",
        required_unless_present = "checkpoint"
    )]
    diffusers: Option<PathBuf>,
    /// A single-file original SD-1.x or SD-2.x checkpoint (.safetensors with
    /// model.diffusion_model.*, first_stage_model.*, and cond_stage_model.transformer.* (CLIP) or
    /// cond_stage_model.model.* (OpenCLIP)). Needs --config. Pickle files (.ckpt/.pt/.bin) are
    /// refused; SDXL single files are not supported.
    #[arg(long, requires = "config")]
    checkpoint: Option<PathBuf>,
    /// For --checkpoint: the model's diffusers folder, of which only the configs are read
    /// (model_index.json, unet/ vae/ text_encoder/ config.json, scheduler/, tokenizer/), since a
    /// single file records neither its architecture nor its tokenizer. E.g. a download of
    /// runwayml/stable-diffusion-v1-5 without the weight files.
    #[arg(long, requires = "checkpoint")]
    config: Option<PathBuf>,
    /// Storage type of matrices and kernels: f32, f16, q8 or q4.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: DType,
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Also export ONNX files of the imported model into this folder.
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// Merge a LoRA into the UNet and text encoder before quantization: `FILE[:SCALE]`
    /// (scale 1 by default; kohya `lora_unet_`/`lora_te_` with `.alpha`, or the diffusers/PEFT
    /// layout of `save_lora_weights`). Repeatable; keys that match no layer, or shapes of
    /// another base model, are errors.
    #[arg(long, value_name = "FILE[:SCALE]")]
    lora: Vec<String>,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The `.ldm` model to export.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Folder for unet.onnx, decoder.onnx and text_encoder.onnx.
    #[arg(long)]
    pub onnx: PathBuf,
    /// Batch of the UNet and text encoder graphs (2 = one classifier-free-guidance call).
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Latent side in pixels; default: the model's image size / the VAE factor.
    #[arg(long)]
    pub latent_size: Option<usize>,
    /// Store the weights as ONNX external data (`<name>.onnx.data`, page-aligned) even when
    /// the model would fit protobuf's 2 GiB limit; over it, external data is used anyway.
    #[arg(long)]
    pub external_data: bool,
    /// Which graphs to write (comma-separated; all three by default).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub components: Vec<Component>,
}

/// One exported graph.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Component {
    /// text_encoder.onnx (named like its file, so `text_encoder`, not clap's `text-encoder`)
    #[value(name = "text_encoder", alias = "text-encoder")]
    TextEncoder,
    /// unet.onnx
    Unet,
    /// decoder.onnx (batch 1)
    Decoder,
}

impl Component {
    pub const ALL: [Component; 3] = [Component::TextEncoder, Component::Unet, Component::Decoder];

    fn file_stem(self) -> &'static str {
        match self {
            Component::TextEncoder => "text_encoder",
            Component::Unet => "unet",
            Component::Decoder => "decoder",
        }
    }
}

/// How to export: graph shapes, where weights go, and which graphs.
struct ExportOpts {
    batch: usize,
    side: usize,
    external_data: bool,
    components: Vec<Component>,
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "q8" => Ok(DType::Q8),
        "q4" => Ok(DType::Q4),
        _ => Err(format!("unknown dtype `{s}` (f32, f16, q8, q4)")),
    }
}

pub fn import(a: ImportArgs) -> Result<()> {
    let mut imp = match (&a.diffusers, &a.checkpoint) {
        (Some(dir), None) => Import::from_diffusers(dir)
            .with_context(|| format!("importing diffusers folder {}", dir.display()))?,
        (None, Some(file)) => Import::from_checkpoint(file, a.config.as_deref())
            .with_context(|| format!("importing checkpoint {}", file.display()))?,
        _ => bail!("give exactly one of --diffusers DIR or --checkpoint FILE"),
    };
    for spec in &a.lora {
        let (file, scale) = ldm_edge::import::lora::parse_spec(spec);
        let n = imp
            .add_lora(&file, scale)
            .with_context(|| format!("merging LoRA {}", file.display()))?;
        eprintln!(
            "LoRA {} at scale {scale}: {n} layers merged",
            file.display()
        );
    }
    let recipe = std::env::args().collect::<Vec<_>>().join(" ");
    let report = imp.write(a.dtype, &a.output, &recipe)?;
    eprintln!(
        "wrote {} ({} tensors, {} bytes, {:?})",
        a.output.display(),
        report.tensors,
        report.file_len,
        a.dtype
    );
    if let Some(dir) = a.onnx {
        let cfg = &imp.config;
        let side = cfg.image_size / cfg.vae.factor();
        let opts = ExportOpts {
            batch: 2,
            side,
            external_data: false,
            components: Component::ALL.to_vec(),
        };
        export(&a.output, &dir, &opts)?;
    }
    Ok(())
}

pub fn export_cmd(a: ExportArgs) -> Result<()> {
    let m = Model::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let side = a
        .latent_size
        .unwrap_or(m.config.image_size / m.config.vae.factor());
    drop(m);
    let components = if a.components.is_empty() {
        Component::ALL.to_vec()
    } else {
        a.components
    };
    let opts = ExportOpts {
        batch: a.batch,
        side,
        external_data: a.external_data,
        components,
    };
    export(&a.model, &a.onnx, &opts)
}

fn export(model: &Path, dir: &Path, o: &ExportOpts) -> Result<()> {
    if o.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let m = Model::open(model).with_context(|| format!("opening {}", model.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let c = &m.config;
    for &comp in &o.components {
        let name = comp.file_stem();
        let graph = match comp {
            Component::TextEncoder => c.text_graph(o.batch)?,
            Component::Unet => c.unet_graph(o.batch, o.side, o.side)?,
            Component::Decoder => c.decoder_graph(1, o.side, o.side)?,
        };
        let path = dir.join(format!("{name}.onnx"));
        // One graph's weights at a time: the lowered model is dropped as soon as it is written.
        let w = ldm_edge::backend::cpu::to_onnx(&graph, &m)
            .and_then(|onnx| onnx.write(&path, o.external_data))
            .with_context(|| format!("exporting {name} to {}", path.display()))?;
        match &w.data {
            Some(d) => eprintln!(
                "wrote {} ({} bytes) + {} ({} bytes, {} tensors)",
                w.path.display(),
                w.onnx_bytes,
                d.path.display(),
                d.bytes,
                d.tensors
            ),
            None => eprintln!("wrote {} ({} bytes)", w.path.display(), w.onnx_bytes),
        }
    }
    Ok(())
}
