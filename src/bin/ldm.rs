//! `ldm`: the device CLI. Generate images, inspect and verify model files, benchmark.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use ldm_edge::backend;
use ldm_edge::model::Model;
use ldm_edge::pipeline::{image::save_png, Cancel, Pipeline, Txt2Img};
use ldm_edge::{npy, Error};
use std::path::PathBuf;
use std::process::ExitCode;

const DEFAULT_MODEL: &str = "models/shapes-32.ldm";

#[derive(Parser)]
#[command(name = "ldm", version, about = "Latent diffusion on edge devices")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate an image from a text prompt.
    Generate(GenerateArgs),
    /// Show a model file's config, tensors, dtypes and sizes.
    Info { file: PathBuf },
    /// Check a model file's digest and validate it against its architecture.
    Verify { file: PathBuf },
    /// Time the text encoder, one UNet evaluation and the decoder; report peak memory.
    Bench(BenchArgs),
    /// List Vulkan devices with their capabilities and limits.
    Devices,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// The prompt.
    prompt: String,
    #[arg(long, short = 'm', default_value = DEFAULT_MODEL)]
    model: PathBuf,
    #[arg(long, short = 'n', default_value = "")]
    negative_prompt: String,
    /// Denoising steps [default: the model's].
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; 1 disables the unconditional pass [default: the model's].
    #[arg(long, short = 'g')]
    guidance: Option<f32>,
    #[arg(long, short = 's', default_value_t = 0)]
    seed: u64,
    /// ddim, ddpm, euler_a or dpmpp_2m [default: the model's].
    #[arg(long)]
    sampler: Option<String>,
    /// DDIM eta (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f32,
    /// Image size WxH, e.g. 64x64 [default: the model's native size].
    #[arg(long)]
    size: Option<String>,
    #[arg(long, short = 'o', default_value = "out.png")]
    output: PathBuf,
    /// auto, cpu, vulkan or reference.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Start from this initial noise (.npy, float32, [1, z, h, w]) instead of the seed's.
    #[arg(long)]
    init_noise: Option<PathBuf>,
    /// Save the initial noise and the final latents as .npy: FILE gets the final latents and
    /// FILE with `.init.npy` the initial noise.
    #[arg(long)]
    save_latents: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long, short = 'm', default_value = DEFAULT_MODEL)]
    model: PathBuf,
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Latent side length (32 = 256 px images at f = 8).
    #[arg(long, default_value_t = 32)]
    latent: usize,
    /// Timed UNet evaluations (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    iters: usize,
    #[arg(long)]
    skip_decoder: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also time each op of one UNet evaluation (GPU timestamps on Vulkan).
    #[arg(long)]
    profile: bool,
}

fn parse_size(s: &str) -> Result<(usize, usize)> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("size `{s}` must look like 64x64"))?;
    Ok((
        w.trim().parse().context("bad width")?,
        h.trim().parse().context("bad height")?,
    ))
}

fn generate(a: GenerateArgs) -> Result<()> {
    let model = Model::open(&a.model)
        .with_context(|| format!("cannot load model {}", a.model.display()))?;
    let mut req = Txt2Img::new(&model, &a.prompt)?;
    req.negative_prompt = a.negative_prompt;
    req.seed = a.seed;
    req.eta = a.eta;
    if let Some(s) = a.steps {
        req.steps = s;
    }
    if let Some(g) = a.guidance {
        req.guidance = g;
    }
    if let Some(s) = &a.sampler {
        req.sampler = s.parse()?;
    }
    if let Some(s) = &a.size {
        (req.width, req.height) = parse_size(s)?;
    }
    let pipe = Pipeline::new(&model, backend::select(&a.backend)?);
    let (h, w) = pipe.latent_size(req.width, req.height)?;
    let shape = vec![1, model.config.unet.in_channels, h, w];
    let init = match &a.init_noise {
        Some(p) => npy::read_f32(p)?,
        None => ldm_edge::backend::Tensor::new(
            shape,
            ldm_edge::sampler::NoiseGen::new(req.seed)
                .sample(h * w * model.config.unet.in_channels),
        )?,
    };
    req.init_noise = Some(init.clone());

    let cancel = Cancel::new();
    let c2 = cancel.clone();
    // A failure to install the handler only loses graceful Ctrl-C; the run itself is fine.
    if let Err(e) = ctrlc::set_handler(move || c2.cancel()) {
        log::warn!("Ctrl-C handler not installed: {e}");
    }
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(req.steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let out = pipe.txt2img(&req, &mut |p| bar.set_position(p.step as u64), &cancel);
    bar.finish_and_clear();
    let out = out?;
    save_png(&a.output, &out.rgb, out.width, out.height)?;
    if let Some(p) = &a.save_latents {
        npy::write_f32(p, &out.latents)?;
        npy::write_f32(&p.with_extension("init.npy"), &init)?;
    }
    eprintln!(
        "wrote {} ({}x{}, {} steps of {}, guidance {}, seed {})",
        a.output.display(),
        out.width,
        out.height,
        req.steps,
        req.sampler,
        req.guidance,
        req.seed
    );
    Ok(())
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn info(file: PathBuf) -> Result<()> {
    let f = ldm_edge::format::ModelFile::open(&file)
        .with_context(|| format!("cannot open {}", file.display()))?;
    println!("file: {} ({})", file.display(), human(f.file_len()));
    let meta = f.meta();
    for key in [
        "config",
        "sampler",
        "provenance",
        "latent_scale",
        "image_size",
    ] {
        if let Some(v) = meta.get(key) {
            println!("{key}: {}", serde_json::to_string_pretty(v)?);
        }
    }
    let mut by_dtype = std::collections::BTreeMap::<String, (usize, u64, u64)>::new();
    println!("tensors: {}", f.tensors().len());
    for t in f.tensors() {
        let n: u64 = t.shape.iter().map(|&d| d as u64).product();
        let e = by_dtype.entry(format!("{:?}", t.dtype)).or_default();
        *e = (e.0 + 1, e.1 + n, e.2 + t.len);
        println!(
            "  {:<72} {:>4?} {:?} {}",
            t.name,
            t.dtype,
            t.shape,
            human(t.len)
        );
    }
    for (d, (count, n, bytes)) in by_dtype {
        println!("{d}: {count} tensors, {n} values, {}", human(bytes));
    }
    Ok(())
}

fn verify(file: PathBuf) -> Result<()> {
    let model =
        Model::open(&file).with_context(|| format!("{} is not a valid model", file.display()))?;
    model
        .file
        .verify_digest()
        .with_context(|| format!("{} failed its digest check", file.display()))?;
    println!(
        "{}: OK (digest matches, {} tensors agree with the architecture)",
        file.display(),
        model.file.tensors().len()
    );
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let r = ldm_edge::bench::run(
        &a.model,
        backend::select(&a.backend)?,
        a.latent,
        a.iters,
        a.skip_decoder,
        a.profile,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("model            {}", r.model);
    println!("backend          {}", r.backend);
    println!("file size        {}", human(r.file_bytes));
    println!("load (map+check) {:.2} ms", r.load_ms);
    println!("unet prepare     {:.0} ms", r.unet_prepare_ms);
    println!(
        "unet eval        {:.1} ms at {}x{} latents, batch 1 ({:.1} GFLOP, {:.1} GFLOP/s)",
        r.unet_ms_per_eval, r.latent[0], r.latent[1], r.unet_gflop, r.unet_gflops
    );
    println!("text encoder     {:.1} ms", r.text_encoder_ms);
    println!("decoder          {:.1} ms", r.decoder_ms);
    println!("peak RSS         {:.0} MiB", r.peak_rss_mb);
    if let Some(mb) = r.unet_device_mb {
        println!("unet device mem  {mb:.1} MiB");
    }
    match &r.unet_profile {
        Some(t) => print!(
            "unet per-op breakdown (one eval):\n{}",
            ldm_edge::backend::profile::table(t)
        ),
        None if a.profile => println!("unet per-op breakdown: not available on this backend"),
        None => {}
    }
    Ok(())
}

#[cfg(feature = "vulkan")]
fn devices() -> anyhow::Result<()> {
    let list = ldm_edge::backend::vulkan::list_devices()?;
    if list.is_empty() {
        println!("the Vulkan loader reports no devices");
    }
    for d in list {
        println!(
            "[{}] {} ({}, Vulkan {})",
            d.index, d.name, d.kind, d.api_version
        );
        println!(
            "    compute queue: {}  f16 arithmetic: {}  16-bit storage: {}  subgroup size: {}",
            if d.has_compute { "yes" } else { "no" },
            if d.f16_arith { "yes" } else { "no" },
            if d.storage_16bit { "yes" } else { "no" },
            d.subgroup_size.map_or("?".to_string(), |s| s.to_string())
        );
        println!(
            "    device-local memory: {} MiB  max storage buffer range: {} MiB  max workgroup invocations: {}  push constants: {} B",
            d.device_local_bytes >> 20,
            d.max_storage_buffer_range >> 20,
            d.max_workgroup_invocations,
            d.max_push_constants
        );
    }
    Ok(())
}

#[cfg(not(feature = "vulkan"))]
fn devices() -> anyhow::Result<()> {
    anyhow::bail!("this build has no Vulkan backend (built without the `vulkan` feature)")
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Generate(a) => generate(a),
        Cmd::Info { file } => info(file),
        Cmd::Verify { file } => verify(file),
        Cmd::Bench(a) => bench(a),
        Cmd::Devices => devices(),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let cancelled = e
                .chain()
                .any(|c| matches!(c.downcast_ref::<Error>(), Some(Error::Cancelled)));
            eprintln!("error: {e:#}");
            if cancelled {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
