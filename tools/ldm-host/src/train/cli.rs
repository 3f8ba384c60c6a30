//! The `train` and `export` subcommands: argument parsing only; the work is in the stage modules.
use super::autoencoder::{self, AeArgs};
use super::checkpoint::Checkpoint;
use super::data::{RandomSet, TrainSet};
use super::ldm::{self, LdmArgs};
use super::presets;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use ldm_edge::format::DType;
use std::path::PathBuf;

pub use crate::dataset::DatasetArgs as DataOpts;

/// The dataset module's samples as the trainer reads them.
struct FromDataset {
    ds: Box<dyn crate::dataset::Dataset>,
    size: usize,
}

impl TrainSet for FromDataset {
    fn len(&self) -> usize {
        self.ds.len()
    }
    fn image_size(&self) -> usize {
        self.size
    }
    fn get(&self, i: usize) -> Result<(Vec<f32>, String)> {
        let s = self.ds.get(i)?;
        if s.size != self.size {
            bail!("sample {i} is {} px, expected {}", s.size, self.size);
        }
        Ok((s.image, s.caption))
    }
    fn caption(&self, i: usize) -> Result<String> {
        self.ds.caption(i)
    }
}

fn open_data(d: &DataOpts) -> Result<Box<dyn TrainSet>> {
    if d.dataset == "random" {
        return Ok(Box::new(RandomSet {
            n: d.dataset_len.unwrap_or(2048),
            size: d.image_size,
        }));
    }
    Ok(Box::new(FromDataset {
        ds: d.open()?,
        size: d.image_size,
    }))
}

#[derive(Args, Clone)]
pub struct Common {
    /// Model size preset: `micro` (CI) or `shapes` (the shipped 32 px model).
    #[arg(long, default_value = "shapes")]
    pub preset: String,
    #[arg(long)]
    pub steps: u64,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The checkpoint to write (and to resume from with --resume).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Continue from --out if it exists (same loss curve as an uninterrupted run).
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value_t = 200)]
    pub ckpt_every: u64,
    /// Start a linear learning-rate decay to 10% at --steps from this step (0 = constant).
    #[arg(long, default_value_t = 0)]
    pub decay_start: u64,
    /// Fit the run into this many seconds: the schedule's end (and the decay start, in
    /// proportion) follows the measured step rate; --steps becomes the upper bound.
    #[arg(long)]
    pub max_seconds: Option<f64>,
    /// CSV training log.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// No progress bar (logs only).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Subcommand)]
pub enum TrainCmd {
    /// Stage 1: the KL autoencoder (L1 + KL), reports held-out PSNR and the latent scale.
    Autoencoder {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        data: DataOpts,
        #[arg(long, default_value_t = 1e-3)]
        lr: f32,
        #[arg(long, default_value_t = 1e-6)]
        kl_weight: f32,
        /// Linear learning-rate warmup steps.
        #[arg(long, default_value_t = 100)]
        warmup: u64,
        /// Items at the end of the dataset kept out of training for PSNR.
        #[arg(long, default_value_t = 64)]
        heldout: usize,
        /// Start from a finished autoencoder checkpoint (fresh optimizer, step 0). Ignored
        /// when --resume finds a checkpoint.
        #[arg(long)]
        init_from: Option<PathBuf>,
        /// Fine-tune only the decoder of --init-from: the encoder and the latent scale stay
        /// as they are, so models trained on its latents can take the new decoder
        /// (`export --decoder`).
        #[arg(long)]
        decoder_only: bool,
    },
    /// Stage 2: UNet + text encoder on latents of a trained autoencoder checkpoint.
    Ldm {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        data: DataOpts,
        /// The stage-1 checkpoint (frozen).
        #[arg(long)]
        autoencoder: PathBuf,
        /// tokenizer.json; by default the shapes WordPiece tokenizer.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, default_value_t = 5e-4)]
        lr: f32,
        #[arg(long, default_value_t = 200)]
        warmup: u64,
        #[arg(long, default_value_t = 0.999)]
        ema_decay: f32,
        /// Fraction of captions replaced by the empty caption (classifier-free guidance).
        #[arg(long, default_value_t = 0.1)]
        cond_dropout: f32,
        /// What the model learns: txt2img, sr (4x super-resolution, low-res image
        /// concatenated) or inpaint (mask and masked-image latent concatenated).
        #[arg(long, default_value = "txt2img")]
        task: ldm_edge::arch::Task,
        /// Start the UNet and text encoder from a stage-2 checkpoint trained on the same
        /// autoencoder and tokenizer (e.g. inpainting from a text-to-image run); new UNet
        /// input channels start at zero. Ignored when --resume finds a checkpoint.
        #[arg(long)]
        init_from: Option<PathBuf>,
        /// Write a sample grid PNG every N steps (0 = never; txt2img only).
        #[arg(long, default_value_t = 0)]
        sample_every: u64,
        #[arg(long)]
        sample_dir: Option<PathBuf>,
    },
    /// Distil a tiny decoder (a few convolutions, a few percent of the full decoder's work)
    /// from a model file's own autoencoder, for previews and `ldm generate --decoder tiny`.
    TinyDecoder {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        data: DataOpts,
        /// The model whose encoder feeds and whose decoder teaches (not modified).
        #[arg(long, short = 'm')]
        model: PathBuf,
        /// Width of the tiny decoder's layers.
        #[arg(long, default_value_t = 16)]
        channels: usize,
        /// Residual blocks per 2x level.
        #[arg(long, default_value_t = 1)]
        blocks: usize,
        #[arg(long, default_value_t = 2e-3)]
        lr: f32,
        #[arg(long, default_value_t = 100)]
        warmup: u64,
        /// Items at the end of the dataset kept out of training, for the held-out PSNR.
        #[arg(long, default_value_t = 128)]
        heldout: usize,
        /// Write the model with the trained tiny decoder to this file.
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportDtype {
    F32,
    F16,
    Q8,
    Q4,
}

#[derive(Args)]
pub struct ExportArgs {
    /// A `train ldm` checkpoint.
    pub checkpoint: PathBuf,
    #[arg(long, value_enum, default_value = "f16")]
    pub dtype: ExportDtype,
    /// Export the raw weights instead of the EMA.
    #[arg(long)]
    pub no_ema: bool,
    /// A JSON file of evaluation figures to store in the provenance.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// LoRA files (`FILE[:SCALE]`) merged into the weights before quantization.
    #[arg(skip)]
    pub lora: Vec<(PathBuf, f32)>,
    /// Ship the decoder of this `train autoencoder --decoder-only` checkpoint instead of the
    /// one the model was trained with (its encoder must be the model's, bit for bit).
    #[arg(long)]
    pub decoder: Option<PathBuf>,
    #[arg(long, short = 'o')]
    pub output: PathBuf,
}

fn recipe() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

pub fn run_train(
    cmd: TrainCmd,
    tokenizer_json: impl Fn(Option<&PathBuf>) -> Result<String>,
) -> Result<()> {
    match cmd {
        TrainCmd::Autoencoder {
            common,
            data,
            lr,
            kl_weight,
            warmup,
            heldout,
            init_from,
            decoder_only,
        } => {
            let set = open_data(&data)?;
            let cfg = presets::config(&common.preset, 64)?;
            let args = AeArgs {
                vae: cfg.vae,
                steps: common.steps,
                batch: common.batch,
                lr,
                kl_weight,
                warmup,
                decay_start: common.decay_start,
                seed: common.seed,
                heldout,
                out: common.out,
                resume: common.resume,
                ckpt_every: common.ckpt_every.max(1),
                log: common.log,
                recipe: recipe(),
                quiet: common.quiet,
                max_seconds: common.max_seconds,
                init_from,
                decoder_only,
            };
            let (psnr, scale) = autoencoder::train(set.as_ref(), &args)?;
            println!("psnr_db={psnr:.3} latent_scale={scale}");
        }
        TrainCmd::TinyDecoder {
            common,
            data,
            model,
            channels,
            blocks,
            lr,
            warmup,
            heldout,
            write,
        } => {
            let set = open_data(&data)?;
            let args = super::tiny_decoder::TinyArgs {
                model,
                channels,
                blocks,
                steps: common.steps,
                batch: common.batch,
                lr,
                warmup,
                decay_start: common.decay_start,
                seed: common.seed,
                heldout,
                out: common.out,
                resume: common.resume,
                ckpt_every: common.ckpt_every.max(1),
                log: common.log,
                recipe: recipe(),
                quiet: common.quiet,
                max_seconds: common.max_seconds,
                write,
            };
            let p = super::tiny_decoder::train(set.as_ref(), &args)?;
            println!("heldout_psnr_vs_full_db={p:.3}");
        }
        TrainCmd::Ldm {
            common,
            data,
            autoencoder,
            tokenizer,
            lr,
            warmup,
            ema_decay,
            cond_dropout,
            task,
            init_from,
            sample_every,
            sample_dir,
        } => {
            let set = open_data(&data)?;
            let tok = tokenizer_json(tokenizer.as_ref())?;
            let vocab = ldm_edge::tokenizer::TextTokenizer::from_json(&tok, 1)?.vocab_size();
            let args = LdmArgs {
                cfg: presets::config(&common.preset, vocab)?,
                task,
                init_from,
                tokenizer_json: tok,
                autoencoder,
                steps: common.steps,
                batch: common.batch,
                lr,
                warmup,
                decay_start: common.decay_start,
                ema_decay,
                cond_dropout,
                seed: common.seed,
                out: common.out,
                resume: common.resume,
                ckpt_every: common.ckpt_every.max(1),
                sample_every,
                sample_dir,
                log: common.log,
                recipe: recipe(),
                quiet: common.quiet,
                max_seconds: common.max_seconds,
            };
            let loss = ldm::train(set.as_ref(), &args)?;
            println!("loss_avg={loss:.5}");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum DistillCmd {
    /// Latent consistency distillation: a student that takes the guidance scale as an input
    /// and samples in 1-8 steps with `--sampler lcm` (stored as the model's default).
    Lcm {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        data: DataOpts,
        /// The stage-2 checkpoint to distill (frozen; its text encoder and autoencoder are
        /// kept as they are).
        #[arg(long)]
        teacher: PathBuf,
        #[arg(long, default_value_t = 1e-4)]
        lr: f32,
        #[arg(long, default_value_t = 100)]
        warmup: u64,
        /// Width of the guidance-scale embedding (diffusers `time_cond_proj_dim`).
        #[arg(long, default_value_t = 64)]
        cond_dim: usize,
        /// Range of w (the CFG scale minus one) sampled per example.
        #[arg(long, default_value_t = 1.0)]
        w_min: f32,
        #[arg(long, default_value_t = 7.0)]
        w_max: f32,
        /// Pseudo-Huber loss constant.
        #[arg(long, default_value_t = 0.001)]
        huber_c: f32,
        /// EMA decay of the target network.
        #[arg(long, default_value_t = 0.95)]
        target_decay: f32,
        /// Guidance scale the exported model uses by default.
        #[arg(long, default_value_t = 5.0)]
        guidance: f32,
    },
}

pub fn run_distill(cmd: DistillCmd) -> Result<()> {
    match cmd {
        DistillCmd::Lcm {
            common,
            data,
            teacher,
            lr,
            warmup,
            cond_dim,
            w_min,
            w_max,
            huber_c,
            target_decay,
            guidance,
        } => {
            let set = open_data(&data)?;
            let args = super::distill::LcmArgs {
                teacher,
                cond_dim,
                w_min,
                w_max,
                huber_c,
                target_decay,
                guidance,
                steps: common.steps,
                batch: common.batch,
                lr,
                warmup,
                decay_start: common.decay_start,
                seed: common.seed,
                out: common.out,
                resume: common.resume,
                ckpt_every: common.ckpt_every.max(1),
                log: common.log,
                recipe: recipe(),
                quiet: common.quiet,
                max_seconds: common.max_seconds,
            };
            let loss = super::distill::distill(set.as_ref(), &args)?;
            println!("loss_avg={loss:.6}");
        }
    }
    Ok(())
}

pub fn run_export(a: ExportArgs) -> Result<()> {
    let mut ck = Checkpoint::load(&a.checkpoint)?;
    if let Some(d) = &a.decoder {
        let ae = Checkpoint::load(d)?;
        let n = super::export::swap_decoder(&mut ck, &ae)
            .with_context(|| format!("cannot use the decoder of {}", d.display()))?;
        eprintln!("decoder: {n} tensors from {}", d.display());
    }
    let eval = match &a.eval {
        Some(p) => serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        )
        .with_context(|| format!("{} is not JSON", p.display()))?,
        None => serde_json::json!({}),
    };
    for ((file, scale), n) in a
        .lora
        .iter()
        .zip(super::export::merge_lora(&mut ck, &a.lora)?)
    {
        eprintln!(
            "LoRA {} at scale {scale}: {n} layers merged",
            file.display()
        );
    }
    let dtype = match a.dtype {
        ExportDtype::F32 => DType::F32,
        ExportDtype::F16 => DType::F16,
        ExportDtype::Q8 => DType::Q8,
        ExportDtype::Q4 => DType::Q4,
    };
    let bytes = super::export::to_ldm(&ck, dtype, &a.output, !a.no_ema, eval)?;
    eprintln!("wrote {} ({bytes} bytes)", a.output.display());
    Ok(())
}
