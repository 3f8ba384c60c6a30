//! `ldm-host`: the workstation half of ldm-edge. Makes model files for the device runtime.
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ldm_edge::arch::ModelConfig;
use ldm_edge::format::DType;
use std::path::PathBuf;
use std::process::ExitCode;

mod bundle;
mod dataset;
mod defaults;
mod eval;
mod flash;
mod import;
mod init;
mod preview;
mod quantize;
mod tokenizer;
mod train;

// The workspace's test scratch directory (removed when the test process exits).
#[cfg(test)]
#[path = "../../../tests/support/scratch.rs"]
mod scratch;

#[derive(Parser)]
#[command(
    name = "ldm-host",
    version,
    about = "Make, train and export ldm-edge models"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// The tiny test architecture (32 px images, f = 4).
    Tiny,
    /// SD-1.5's UNet and VAE with a BERT-base-sized text encoder (benchmarks).
    Sd15,
}

#[derive(Clone, Copy, ValueEnum)]
enum Dtype {
    F32,
    F16,
    Q8,
    Q4,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a model file with deterministic random weights (an untrained placeholder).
    Init {
        #[arg(long, value_enum, default_value = "tiny")]
        preset: Preset,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// A tokenizer.json to store; by default a WordPiece tokenizer is trained on the
        /// shapes vocabulary.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
    /// Import a diffusers folder or a single-file SD checkpoint (.safetensors) into a .ldm.
    Import(import::ImportArgs),
    /// Train a BERT-style WordPiece tokenizer on captions (one per line) and write tokenizer.json.
    Tokenizer {
        /// Caption file, one caption per line; by default the shapes vocabulary.
        #[arg(long, conflicts_with = "dataset")]
        captions: Option<PathBuf>,
        /// Train on a dataset's captions instead (`shapes`, `folder:DIR`, ...; see `dataset`).
        #[arg(long)]
        dataset: Option<String>,
        /// How many captions of the dataset to use (procedural datasets: how many to generate).
        #[arg(long, requires = "dataset")]
        dataset_len: Option<usize>,
        #[arg(long, default_value_t = 256)]
        vocab_size: usize,
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
    /// Train a model: `autoencoder` (stage 1), then `ldm` (stage 2).
    #[command(subcommand)]
    Train(train::cli::TrainCmd),
    /// Distill a trained model into a few-step student: `lcm` (latent consistency distillation).
    #[command(subcommand)]
    Distill(train::cli::DistillCmd),
    /// Write a model file from a `train ldm` checkpoint (`export CKPT -o F.ldm`), or a model
    /// file's text encoder, UNet and decoder as ONNX (`export --onnx DIR -m F.ldm`).
    Export(ExportArgs),
    /// Store a model's weights as q8, q4 or a measured f16/q8/q4 mix (`--target mixed` with
    /// `--budget-bytes` or `--min-psnr`), with a quality report against full precision in the
    /// file (`provenance.quantization`).
    Quantize(quantize::QuantizeArgs),
    /// Inspect datasets: preview grids, caption dumps, the held-out prompt set.
    Dataset {
        #[command(subcommand)]
        cmd: dataset::cli::DatasetCmd,
    },
    /// Latent-to-RGB preview maps: `fit` adds one to a model file.
    Preview {
        #[command(subcommand)]
        cmd: preview::PreviewCmd,
    },
    /// Rewrite a model file's sampling defaults (sampler, steps, guidance), tensors unchanged.
    Defaults(defaults::DefaultsArgs),
    /// Make a fleet signing key pair: KEY.key (secret) and KEY.pub (for devices' keys/).
    Keygen(bundle::KeygenArgs),
    /// Signed model bundles for `ldm install`: `bundle create`, `bundle inspect`.
    #[command(subcommand)]
    Bundle(bundle::BundleCmd),
    /// Push a bundle to a fleet over SSH and install it on every device; writes a JSON report.
    Flash(flash::FlashArgs),
    /// Measure a shapes model: text alignment read back by an analytic checker (at the model's
    /// guidance and at 1.0), and autoencoder reconstruction PSNR.
    Eval(eval::EvalArgs),
}

fn tokenizer_json(path: Option<&PathBuf>) -> Result<String> {
    match path {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        }
        None => {
            let tk = tokenizer::train_wordpiece(&tokenizer::shapes_vocabulary_captions(), 256)?;
            tk.to_string(false)
                .map_err(|e| anyhow::anyhow!("cannot serialize the tokenizer: {e}"))
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Import(a) => import::import(a)?,
        Cmd::Init {
            preset,
            dtype,
            seed,
            tokenizer,
            output,
        } => {
            let tok = tokenizer_json(tokenizer.as_ref())?;
            let vocab = ldm_edge::tokenizer::TextTokenizer::from_json(&tok, 1)?.vocab_size();
            let cfg = match preset {
                Preset::Tiny => ModelConfig::tiny(vocab),
                Preset::Sd15 => ModelConfig::sd15_shaped(vocab),
            };
            let dtype = match dtype {
                Dtype::F32 => DType::F32,
                Dtype::F16 => DType::F16,
                Dtype::Q8 => DType::Q8,
                Dtype::Q4 => DType::Q4,
            };
            let recipe = std::env::args().collect::<Vec<_>>().join(" ");
            let bytes = init::write_random_model(&cfg, &tok, seed, dtype, &recipe, &output)?;
            eprintln!("wrote {} ({bytes} bytes)", output.display());
        }
        Cmd::Tokenizer {
            captions,
            dataset,
            dataset_len,
            vocab_size,
            output,
        } => {
            let caps: Vec<String> = match (captions, dataset) {
                (Some(p), _) => std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read {}", p.display()))?
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(String::from)
                    .collect(),
                (None, Some(d)) => tokenizer::dataset_captions(&d, dataset_len)?,
                (None, None) => tokenizer::shapes_vocabulary_captions(),
            };
            if caps.is_empty() {
                bail!("no captions to train the tokenizer on");
            }
            let tk = tokenizer::train_wordpiece(&caps, vocab_size)?;
            tk.save(&output, true)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", output.display()))?;
            eprintln!(
                "wrote {} ({} tokens)",
                output.display(),
                tk.get_vocab_size(true)
            );
        }
        Cmd::Train(t) => train::cli::run_train(t, tokenizer_json)?,
        Cmd::Distill(d) => train::cli::run_distill(d)?,
        Cmd::Export(a) => export(a)?,
        Cmd::Quantize(a) => quantize::run(&a)?,
        Cmd::Dataset { cmd } => dataset::cli::run(cmd)?,
        Cmd::Eval(args) => eval::run(&args)?,
        Cmd::Preview { cmd } => preview::run(cmd)?,
        Cmd::Defaults(a) => defaults::run(&a)?,
        Cmd::Keygen(a) => bundle::keygen(a)?,
        Cmd::Bundle(bundle::BundleCmd::Create(a)) => bundle::create(a)?,
        Cmd::Bundle(bundle::BundleCmd::Inspect { bundle, key }) => {
            bundle::inspect(&bundle, key.as_deref())?
        }
        Cmd::Flash(a) => {
            if !flash::flash(a)? {
                bail!("not every device took the update (see the report)");
            }
        }
    }
    Ok(())
}

/// One `export` verb for both directions out of the tool: checkpoint -> .ldm, and .ldm -> ONNX.
#[derive(clap::Args)]
struct ExportArgs {
    /// A `train ldm` checkpoint to write as a .ldm file (with -o).
    checkpoint: Option<PathBuf>,
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "f16")]
    dtype: train::cli::ExportDtype,
    /// Export the raw weights instead of the EMA.
    #[arg(long)]
    no_ema: bool,
    /// A JSON file of evaluation figures to store in the provenance.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Ship the decoder of this `train autoencoder --decoder-only` checkpoint instead of the
    /// one the model was trained with (its encoder must be the model's, bit for bit).
    #[arg(long, conflicts_with = "onnx")]
    decoder: Option<PathBuf>,
    /// Merge a LoRA into the UNet and text encoder before quantization: `FILE[:SCALE]`
    /// (scale 1 by default; kohya `lora_unet_`/`lora_te_` or diffusers/PEFT layout).
    /// Repeatable.
    #[arg(long, value_name = "FILE[:SCALE]", conflicts_with = "onnx")]
    lora: Vec<String>,
    /// Write ONNX files of the model given with -m into this folder instead.
    #[arg(long, requires = "model", conflicts_with = "checkpoint")]
    onnx: Option<PathBuf>,
    /// The .ldm model to export as ONNX.
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// ONNX: batch of the UNet and text encoder graphs (2 = one classifier-free-guidance call).
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// ONNX: latent side; default: the model's image size / the VAE factor.
    #[arg(long)]
    latent_size: Option<usize>,
    /// ONNX: store weights as external data (`<name>.onnx.data`, 4 KiB-aligned offsets) even
    /// under protobuf's 2 GiB limit; models over it use external data regardless.
    #[arg(long, requires = "onnx")]
    external_data: bool,
    /// ONNX: export only these graphs (comma-separated; default: all three).
    #[arg(long, value_enum, value_delimiter = ',', requires = "onnx")]
    components: Vec<import::Component>,
}

fn export(a: ExportArgs) -> Result<()> {
    if let (Some(onnx), Some(model)) = (a.onnx, a.model) {
        return import::export_cmd(import::ExportArgs {
            model,
            onnx,
            batch: a.batch,
            latent_size: a.latent_size,
            external_data: a.external_data,
            components: a.components,
        });
    }
    let (Some(checkpoint), Some(output)) = (a.checkpoint, a.output) else {
        bail!("export needs a checkpoint and -o FILE.ldm, or --onnx DIR -m FILE.ldm");
    };
    train::cli::run_export(train::cli::ExportArgs {
        checkpoint,
        dtype: a.dtype,
        no_ema: a.no_ema,
        eval: a.eval,
        lora: a
            .lora
            .iter()
            .map(|s| ldm_edge::import::lora::parse_spec(s))
            .collect(),
        decoder: a.decoder,
        output,
    })
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
