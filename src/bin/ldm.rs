//! `ldm`: the device CLI. Generate images, inspect and verify model files, benchmark.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use ldm_edge::arch::Task;
use ldm_edge::backend;
use ldm_edge::backend::Tensor;
use ldm_edge::display::{Display, Status};
use ldm_edge::model::Model;
use ldm_edge::pipeline::image::{load_mask, load_rgb, save_png};
use ldm_edge::pipeline::memory::parse_bytes;
use ldm_edge::pipeline::{
    Cancel, Generated, Img2Img, Inpaint, Pipeline, Progress, Txt2Img, Upscale, VaeTiling,
    DEFAULT_STRENGTH,
};
use ldm_edge::preview::PreviewImage;
use ldm_edge::sampler::NoiseGen;
use ldm_edge::{npy, Error};
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

#[path = "ldm/install_cmd.rs"]
mod install_cmd;
#[path = "ldm/plan_cmd.rs"]
mod plan_cmd;

/// Large blocks come from their own mappings with a bounded reuse cache, so the memory planner's
/// prediction holds (see `ldm_edge::alloc`).
#[global_allocator]
static ALLOC: ldm_edge::alloc::CachingAlloc = ldm_edge::alloc::CachingAlloc;

const DEFAULT_MODEL: &str = "models/shapes-32.ldm";

#[derive(Parser)]
#[command(name = "ldm", version, about = "Latent diffusion on edge devices")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate an image from a text prompt (or from a prompt and an init image).
    Generate(GenerateArgs),
    /// Regenerate the masked part of an image with an inpainting model.
    Inpaint(InpaintArgs),
    /// Upscale an image 4x (the autoencoder factor) with a super-resolution model.
    Upscale(UpscaleArgs),
    /// Show a model file's config, tensors, dtypes and sizes.
    Info { file: PathBuf },
    /// Check a model file's digest and validate it against its architecture.
    Verify { file: PathBuf },
    /// Time the text encoder, one UNet evaluation and the decoder; report peak memory.
    Bench(BenchArgs),
    /// Plan a request for a board without running it: predicted peak memory per stage, the
    /// choices, and whether it fits (exit 3 when refused).
    Plan(plan_cmd::PlanArgs),
    /// List Vulkan devices with their capabilities and limits.
    Devices,
    /// Install a signed model bundle: verify, store, switch, health-check, commit or revert.
    Install(install_cmd::InstallArgs),
    /// Show the install root's active and previous models and check the active one.
    Status(install_cmd::StatusArgs),
    /// Make the previous model active again.
    Rollback(install_cmd::RootArg),
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// The prompt.
    prompt: String,
    #[arg(long, short = 'm', default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Use the active model of this install root (`ldm install`; devices use /var/lib/ldm)
    /// instead of --model.
    #[arg(long, conflicts_with = "model")]
    root: Option<PathBuf>,
    #[arg(long, short = 'n', default_value = "")]
    negative_prompt: String,
    /// Image size WxH, e.g. 64x64 [default: the model's native size].
    #[arg(long)]
    size: Option<String>,
    /// Start from this initial noise (.npy, float32, [1, z, h, w]) instead of the seed's.
    #[arg(long)]
    init_noise: Option<PathBuf>,
    /// Start from this image (img2img); the output size defaults to its size.
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// How much of the init image to noise away: 0 keeps it, 1 ignores it [default: 0.75].
    #[arg(long)]
    strength: Option<f32>,
    /// Save the initial noise and the final latents as .npy: FILE gets the final latents and
    /// FILE with `.init.npy` the initial noise.
    #[arg(long)]
    save_latents: Option<PathBuf>,
    /// Make N images from seeds SEED, SEED+1, ... in one run, preparing the model once;
    /// written as OUT-0.png, OUT-1.png, ... (text-to-image only).
    #[arg(long, default_value_t = 1, value_name = "N")]
    count: usize,
    #[command(flatten)]
    sample: SampleArgs,
}

/// Sampling settings shared by `generate`, `inpaint` and `upscale`.
#[derive(clap::Args)]
struct SampleArgs {
    /// Denoising steps [default: the model's].
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; 1 disables the unconditional pass [default: the model's].
    #[arg(long, short = 'g')]
    guidance: Option<f32>,
    #[arg(long, short = 's', default_value_t = 0)]
    seed: u64,
    /// ddim, ddpm, pndm, euler, euler_a, heun, dpmpp_2m, dpmpp_2m_sde, unipc or lcm
    /// [default: the model's].
    #[arg(long)]
    sampler: Option<String>,
    /// Karras sigmas for euler, heun, dpmpp_2m, dpmpp_2m_sde and unipc ("DPM++ 2M Karras")
    /// [default: the model's schedule].
    #[arg(long, conflicts_with = "no_karras")]
    karras: bool,
    /// The plain sigma schedule even where the model's says Karras.
    #[arg(long)]
    no_karras: bool,
    /// DDIM eta (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f32,
    #[arg(long, short = 'o', default_value = "out.png")]
    output: PathBuf,
    /// auto, cpu, cpu-packed (faster, holds f32 copies of the conv weights), cpu-expanded,
    /// vulkan or reference.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Run the autoencoder in overlapping tiles of N latent pixels (N x f image pixels); 0 =
    /// whole image [default: tiles only where a whole decode would be the memory peak].
    #[arg(long, value_name = "N")]
    vae_tile: Option<usize>,
    /// Overlap of neighbouring VAE tiles in latent pixels [default: a quarter tile].
    #[arg(long, value_name = "M")]
    vae_overlap: Option<usize>,
    /// Host memory the request may use (2G, 1500M, ...): VAE tiling is chosen to fit, or the
    /// request is refused before any work, naming what it needs [default: the cgroup's
    /// memory.max when one is set, else no limit].
    #[arg(long, value_name = "SIZE")]
    max_memory: Option<String>,
    /// Preview every K-th step (and the last), made as --preview-method says: written to
    /// --preview-out and shown on --display.
    #[arg(long, value_name = "K")]
    preview_every: Option<usize>,
    /// How previews are made: linear (the stored latent-to-RGB map) or tiny (the model's
    /// tiny decoder).
    #[arg(
        long,
        value_name = "METHOD",
        default_value = "linear",
        requires = "preview_every"
    )]
    preview_method: String,
    /// The decoder of the final image: full, or tiny (the model's distilled tiny decoder).
    #[arg(long, value_name = "DECODER", default_value = "full")]
    decoder: String,
    /// Folder for the previews (step-NNNN.png).
    #[arg(long, value_name = "DIR", requires = "preview_every")]
    preview_out: Option<PathBuf>,
    /// A board profile (boards/NAME.toml): its memory budget, thread count and backend
    /// apply unless --max-memory or --backend say otherwise.
    #[arg(long, value_name = "BOARD")]
    board: Option<String>,
    /// Show progress, previews and the final image on a display: fb:/dev/fb0,
    /// png:FILE[:WxH], or fbfile:FILE:WxH:STRIDE:rgb565|xrgb8888 (a file laid out like a
    /// framebuffer).
    #[arg(long, value_name = "SPEC")]
    display: Option<String>,
}

impl SampleArgs {
    /// Overrides the model's sampling defaults with what was given on the command line.
    fn apply(&self, p: &mut Txt2Img) -> Result<()> {
        p.seed = self.seed;
        p.eta = self.eta;
        if let Some(n) = self.steps {
            p.steps = n;
        }
        if let Some(g) = self.guidance {
            p.guidance = g;
        }
        if let Some(name) = &self.sampler {
            p.sampler = name.parse()?;
        }
        if self.karras || self.no_karras {
            p.karras = Some(self.karras);
        }
        Ok(())
    }

    /// The autoencoder tiling asked for, checked before any work starts.
    /// None: the planner's choice; Some(None): whole.
    fn vae_tiling(&self) -> Result<Option<Option<VaeTiling>>> {
        match self.vae_tile {
            None | Some(0) if self.vae_overlap.is_some() => {
                anyhow::bail!("--vae-overlap needs --vae-tile N with N > 0")
            }
            None => Ok(None),
            Some(0) => Ok(Some(None)),
            Some(n) => {
                let overlap = self.vae_overlap.unwrap_or(n / 4);
                Ok(Some(Some(VaeTiling::new(n, overlap)?)))
            }
        }
    }

    /// The pipeline for these flags: backend, VAE tiling and memory budget.
    fn pipeline<'m>(&self, model: &'m Model) -> Result<Pipeline<'m>> {
        let board = self
            .board
            .as_deref()
            .map(ldm_edge::board::Board::find)
            .transpose()?;
        let backend_name = match &board {
            // `auto` already prefers a real GPU; a CPU board pins its CPU plan.
            Some(b) if self.backend == "auto" && b.runtime.backend.starts_with("cpu") => {
                b.runtime.backend.as_str()
            }
            _ => self.backend.as_str(),
        };
        if let Some(b) = &board {
            plan_cmd::apply_threads(b);
        }
        let mut pipe = Pipeline::new(model, backend::select(backend_name)?);
        if let (Some(b), None) = (&board, &self.max_memory) {
            pipe = pipe.with_memory_budget(Some(b.budget_bytes()?));
        }
        if let Some(t) = self.vae_tiling()? {
            pipe = pipe.with_vae_tiling(t);
        }
        if let Some(m) = &self.max_memory {
            pipe = pipe.with_memory_budget(Some(parse_bytes(m)?));
        }
        Ok(pipe
            .with_decoder(self.decoder.parse()?)?
            .with_preview_method(self.preview_method.parse()?)?
            .with_preview(self.preview_every)?)
    }
}

#[derive(clap::Args)]
struct InpaintArgs {
    /// What to put in the hole.
    prompt: String,
    /// An inpainting model (task inpaint).
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// The image to edit; the output has its size.
    #[arg(long)]
    image: PathBuf,
    /// Grayscale mask of the image's size: >= 128 is regenerated, the rest kept exactly.
    #[arg(long)]
    mask: PathBuf,
    #[arg(long, short = 'n', default_value = "")]
    negative_prompt: String,
    #[command(flatten)]
    sample: SampleArgs,
}

#[derive(clap::Args)]
struct UpscaleArgs {
    /// The low-resolution image, any size.
    input: PathBuf,
    /// A super-resolution model (task sr).
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Optional text guidance; SR models also run unconditionally.
    #[arg(long, short = 'p', default_value = "")]
    prompt: String,
    #[arg(long, short = 'n', default_value = "")]
    negative_prompt: String,
    /// Overlap of neighbouring tiles in low-res pixels [default: a quarter tile].
    #[arg(long)]
    overlap: Option<usize>,
    #[command(flatten)]
    sample: SampleArgs,
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
    /// UNet batch (2 = one classifier-free-guidance call, [uncond, cond]).
    #[arg(long, default_value_t = 1)]
    batch: usize,
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
    /// Time whole text-to-image requests with the model's defaults instead (plan
    /// preparation, text encoder, every step, decoder): the time a user waits per image.
    #[arg(long)]
    generate: bool,
    /// With --generate: this many steps instead of the model's.
    #[arg(long, requires = "generate")]
    steps: Option<usize>,
    /// With --generate: a linear preview every K steps (to measure what previews cost).
    #[arg(long, requires = "generate", value_name = "K")]
    preview_every: Option<usize>,
    /// With --generate: images per request (`ldm generate --count`), plans prepared once.
    #[arg(long, requires = "generate", default_value_t = 1, value_name = "N")]
    count: usize,
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

fn open_model(path: &Path, task: Task) -> Result<Model> {
    let model =
        Model::open(path).with_context(|| format!("cannot load model {}", path.display()))?;
    let have = model.config.task;
    if have != task {
        anyhow::bail!(
            "{} is a model for task {have}, not {task}: run it with `{}`",
            path.display(),
            have.command()
        );
    }
    Ok(model)
}

/// The root's active model. An install may prune the file between reading the pointer and
/// opening it (only N-2, so only after two installs); reading the pointer again then finds the
/// current one.
fn open_active(root: &Path) -> Result<Model> {
    let root = ldm_edge::install::Root::new(root);
    let mut tries = 0;
    loop {
        let path = root.active_model()?;
        match open_model(&path, Task::Txt2img) {
            Err(e) if tries < 3 && !path.exists() => {
                tries += 1;
                log::info!("active model moved while opening ({e:#}); reading the pointer again");
            }
            other => return other,
        }
    }
}

fn read_image(path: &Path) -> Result<Tensor> {
    load_rgb(path).with_context(|| format!("cannot read image {}", path.display()))
}

/// Ctrl-C cancels the run in progress between steps.
fn cancel_on_ctrl_c() -> Cancel {
    let cancel = Cancel::new();
    let c2 = cancel.clone();
    // A failure to install the handler only loses graceful Ctrl-C; the run itself is fine.
    if let Err(e) = ctrlc::set_handler(move || c2.cancel()) {
        log::warn!("Ctrl-C handler not installed: {e}");
    }
    cancel
}

/// Runs `f` under a progress bar of `total` steps (hidden with --quiet).
/// Everything that watches a run: the progress bar, the preview folder and the display.
struct Watch {
    bar: ProgressBar,
    preview_dir: Option<PathBuf>,
    display: Option<Display>,
    prompt: String,
    last: Option<PreviewImage>,
    /// The first failure to write a preview or draw a frame; reported after the run, which
    /// it does not stop (the image the user asked for matters more).
    error: Option<anyhow::Error>,
}

impl Watch {
    /// Opens the display and the preview folder before any work, so a bad spec fails fast.
    fn new(s: &SampleArgs, prompt: &str, total: usize) -> Result<Self> {
        let bar = if s.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(total as u64)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        if let Some(d) = &s.preview_out {
            std::fs::create_dir_all(d)
                .with_context(|| format!("cannot create preview folder {}", d.display()))?;
        }
        let mut display = s
            .display
            .as_deref()
            .map(ldm_edge::display::open)
            .transpose()?;
        if let Some(d) = &mut display {
            d.show(&Status {
                image: None,
                step: 0,
                total,
                prompt,
            })?;
        }
        Ok(Self {
            bar,
            preview_dir: s.preview_out.clone(),
            display,
            prompt: prompt.to_string(),
            last: None,
            error: None,
        })
    }

    fn step(&mut self, p: Progress) {
        self.bar.set_length(p.total as u64);
        self.bar.set_position(p.step as u64);
        if let Some(img) = p.preview {
            if let Some(dir) = &self.preview_dir {
                let path = dir.join(format!("step-{:04}.png", img.step));
                if let Err(e) = save_png(&path, &img.rgb, img.width, img.height) {
                    self.error.get_or_insert(
                        anyhow::Error::new(e).context(format!("cannot write {}", path.display())),
                    );
                }
            }
            self.last = Some(img.clone());
        }
        if let Some(d) = &mut self.display {
            let image = self.last.as_ref().map(|i| (&i.rgb[..], i.width, i.height));
            let st = Status {
                image,
                step: p.step,
                total: p.total,
                prompt: &self.prompt,
            };
            if let Err(e) = d.show(&st) {
                self.error.get_or_insert(e.into());
            }
        }
    }

    /// Shows the final image and reports a preview or display failure.
    fn finish(mut self, out: &Generated, total: usize) -> Result<()> {
        self.bar.finish_and_clear();
        if let Some(d) = &mut self.display {
            d.show(&Status {
                image: Some((&out.rgb, out.width, out.height)),
                step: total,
                total,
                prompt: &self.prompt,
            })?;
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// `ldm generate --count N`: N text-to-image results of consecutive seeds, one preparation.
fn generate_many(a: &GenerateArgs, pipe: &Pipeline, req: &Txt2Img) -> Result<()> {
    if a.init_image.is_some() || a.init_noise.is_some() || a.save_latents.is_some() {
        anyhow::bail!(
            "--count makes text-to-image results from consecutive seeds; it does not combine \
             with --init-image, --init-noise or --save-latents"
        );
    }
    let s = &a.sample;
    let cancel = cancel_on_ctrl_c();
    let mut w = Watch::new(s, &req.prompt, req.steps * a.count)?;
    let outs = match pipe.txt2img_many(req, a.count, &mut |p| w.step(p), &cancel) {
        Ok(o) => o,
        Err(e) => {
            w.bar.finish_and_clear();
            return Err(e.into());
        }
    };
    match outs.last() {
        Some(last) => w.finish(last, req.steps * a.count)?,
        None => anyhow::bail!("no image was made"),
    }
    let stem = s.output.file_stem().unwrap_or_default().to_string_lossy();
    let ext = s
        .output
        .extension()
        .map_or("png".into(), |e| e.to_string_lossy());
    for (i, out) in outs.iter().enumerate() {
        let path = s.output.with_file_name(format!("{stem}-{i}.{ext}"));
        save(&path, out)?;
    }
    eprintln!(
        "wrote {} images {}-0.{ext} .. {}-{}.{ext} ({}x{}, {} steps of {}, guidance {}, seeds {}..={}; peak RSS {:.0} MiB)",
        outs.len(),
        stem,
        stem,
        outs.len() - 1,
        req.width,
        req.height,
        req.steps,
        req.sampler,
        req.guidance,
        req.seed,
        req.seed.wrapping_add(outs.len() as u64 - 1),
        ldm_edge::bench::peak_rss_mb()
    );
    Ok(())
}

/// Runs `f` with a progress callback that drives the bar, the previews and the display.
fn with_progress(
    s: &SampleArgs,
    prompt: &str,
    total: usize,
    f: impl FnOnce(&mut dyn FnMut(Progress)) -> ldm_edge::Result<Generated>,
) -> Result<Generated> {
    let mut w = Watch::new(s, prompt, total)?;
    let out = f(&mut |p| w.step(p));
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            w.bar.finish_and_clear();
            return Err(e.into());
        }
    };
    w.finish(&out, total)?;
    Ok(out)
}

fn save(path: &Path, out: &Generated) -> Result<()> {
    save_png(path, &out.rgb, out.width, out.height)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn generate(a: GenerateArgs) -> Result<()> {
    if a.strength.is_some() && a.init_image.is_none() {
        anyhow::bail!("--strength needs --init-image");
    }
    let model = match &a.root {
        Some(root) => open_active(root)?,
        None => open_model(&a.model, Task::Txt2img)?,
    };
    let s = &a.sample;
    let mut req = Txt2Img::new(&model, &a.prompt)?;
    req.negative_prompt = a.negative_prompt.clone();
    s.apply(&mut req)?;
    let init_image = a.init_image.as_deref().map(read_image).transpose()?;
    if let Some(s) = &a.size {
        (req.width, req.height) = parse_size(s)?;
    }
    if let (Some(img), Some(path)) = (&init_image, &a.init_image) {
        let (h, w) = (img.shape[2], img.shape[3]);
        if a.size.is_none() {
            (req.width, req.height) = (w, h);
        } else if (w, h) != (req.width, req.height) {
            anyhow::bail!(
                "init image {} is {w}x{h} but --size asks for {}x{}",
                path.display(),
                req.width,
                req.height
            );
        }
    }
    let pipe = s.pipeline(&model)?;
    if a.count != 1 {
        return generate_many(&a, &pipe, &req);
    }
    let (h, w) = pipe.latent_size(req.width, req.height)?;
    let z = model.config.vae.latent_channels;
    let init = match &a.init_noise {
        Some(p) => npy::read_f32(p)?,
        None => Tensor::new(vec![1, z, h, w], NoiseGen::new(req.seed).sample(z * h * w))?,
    };
    req.init_noise = Some(init.clone());

    let cancel = cancel_on_ctrl_c();
    let out = match init_image {
        None => with_progress(s, &req.prompt, req.steps, |p| {
            pipe.txt2img(&req, p, &cancel)
        })?,
        Some(image) => {
            let r = Img2Img {
                params: req.clone(),
                image,
                strength: a.strength.unwrap_or(DEFAULT_STRENGTH),
            };
            with_progress(s, &req.prompt, r.steps_to_run(), |p| {
                pipe.img2img(&r, p, &cancel)
            })?
        }
    };
    save(&s.output, &out)?;
    if let Some(p) = &a.save_latents {
        npy::write_f32(p, &out.latents)?;
        npy::write_f32(&p.with_extension("init.npy"), &init)?;
    }
    eprintln!(
        "wrote {} ({}x{}, {} steps of {}, guidance {}, seed {}; peak RSS {:.0} MiB)",
        s.output.display(),
        out.width,
        out.height,
        req.steps,
        req.sampler,
        req.guidance,
        req.seed,
        ldm_edge::bench::peak_rss_mb()
    );
    Ok(())
}

fn inpaint(a: InpaintArgs) -> Result<()> {
    let model = open_model(&a.model, Task::Inpaint)?;
    let image = read_image(&a.image)?;
    let (mask, mw, mh) =
        load_mask(&a.mask).with_context(|| format!("cannot read mask {}", a.mask.display()))?;
    let (h, w) = (image.shape[2], image.shape[3]);
    if (mw, mh) != (w, h) {
        anyhow::bail!(
            "mask {} is {mw}x{mh} but image {} is {w}x{h}",
            a.mask.display(),
            a.image.display()
        );
    }
    let s = &a.sample;
    let mut req = Inpaint::new(&model, &a.prompt, image, mask)?;
    req.params.negative_prompt = a.negative_prompt;
    s.apply(&mut req.params)?;
    let pipe = s.pipeline(&model)?;
    let cancel = cancel_on_ctrl_c();
    let out = with_progress(s, &req.params.prompt, req.params.steps, |pr| {
        pipe.inpaint(&req, pr, &cancel)
    })?;
    save(&s.output, &out)?;
    eprintln!(
        "wrote {} ({}x{}, {} steps of {}, guidance {}, seed {})",
        s.output.display(),
        out.width,
        out.height,
        req.params.steps,
        req.params.sampler,
        req.params.guidance,
        req.params.seed
    );
    Ok(())
}

fn upscale(a: UpscaleArgs) -> Result<()> {
    let model = open_model(&a.model, Task::Sr)?;
    let image = read_image(&a.input)?;
    let s = &a.sample;
    if s.vae_tile.is_some_and(|n| n != 0) || s.vae_overlap.is_some() {
        // Each upscale tile is decoded on its own already, at the model's native size.
        anyhow::bail!("--vae-tile does not apply to upscale: it decodes tile by tile already");
    }
    if s.preview_every.is_some() {
        // Each tile samples on its own; a preview of one tile is not the image.
        anyhow::bail!("--preview-every does not apply to upscale (it samples tile by tile)");
    }
    let mut req = Upscale::new(&model, image)?;
    req.prompt = a.prompt;
    req.negative_prompt = a.negative_prompt;
    req.overlap = a.overlap;
    if s.karras || s.no_karras {
        anyhow::bail!("--karras/--no-karras do not apply to upscale (its models sample with ddim)");
    }
    req.seed = s.seed;
    req.eta = s.eta;
    if let Some(n) = s.steps {
        req.steps = n;
    }
    if let Some(g) = s.guidance {
        req.guidance = g;
    }
    if let Some(name) = &s.sampler {
        req.sampler = name.parse()?;
    }
    let pipe = s.pipeline(&model)?;
    let tiles = pipe.tile_layout(&req)?.count();
    let cancel = cancel_on_ctrl_c();
    let out = with_progress(s, &req.prompt, tiles * req.steps, |pr| {
        pipe.upscale(&req, pr, &cancel)
    })?;
    save(&s.output, &out)?;
    eprintln!(
        "wrote {} ({}x{} from {}x{}, {tiles} tile(s) of {} steps of {}, seed {})",
        s.output.display(),
        out.width,
        out.height,
        req.image.shape[3],
        req.image.shape[2],
        req.steps,
        req.sampler,
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
            // The quantization report gets its own readable section below.
            let mut v = v.clone();
            if let Some(p) = v.as_object_mut() {
                p.remove(ldm_edge::quant_report::KEY);
            }
            println!("{key}: {}", serde_json::to_string_pretty(&v)?);
        }
    }
    match ldm_edge::quant_report::QuantReport::from_meta(meta)? {
        Some(r) => print!("quantization: {r}"),
        None => println!("quantization: no report (made before `ldm-host quantize`)"),
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
    if a.generate {
        let r = ldm_edge::bench::run_generate(
            &a.model,
            &a.backend,
            a.iters,
            a.steps,
            a.preview_every,
            a.count,
        )?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!(
                "{}: {:.1} ms per {}x{} image on {}, {:.1} ms with plans kept between requests ({} per request; {} steps of {}, guidance {}, {} UNet evaluations; peak RSS {:.0} MiB)",
                r.model, r.ms_per_image, r.size[0], r.size[1], r.backend, r.ms_per_image_reused,
                r.images_per_request, r.steps, r.sampler, r.guidance, r.unet_evals, r.peak_rss_mb
            );
            if let Some(p) = r.preview_ms {
                let share = 100.0 * p * r.previews_per_image as f64 / r.ms_per_image_reused;
                println!(
                    "previews: {} per image, {p:.3} ms each = {share:.2}% of the image's time (plans kept)",
                    r.previews_per_image
                );
            }
        }
        return Ok(());
    }
    let r = ldm_edge::bench::run(
        &a.model,
        backend::select(&a.backend)?,
        a.latent,
        a.batch,
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
        "unet eval        {:.1} ms at {}x{} latents, batch {} ({:.1} GFLOP, {:.1} GFLOP/s)",
        r.unet_ms_per_eval, r.latent[0], r.latent[1], r.batch, r.unet_gflop, r.unet_gflops
    );
    println!("text encoder     {:.1} ms", r.text_encoder_ms);
    println!("decoder          {:.2} ms", r.decoder_ms);
    if let Some(t) = r.tiny_decoder_ms {
        println!(
            "tiny decoder     {t:.3} ms ({:.1}x faster; {:.1}% of the full decoder's {:.1} M multiply-adds)",
            r.decoder_ms / t.max(1e-9),
            100.0 * r.tiny_decoder_macs.unwrap_or(0) as f64 / r.decoder_macs.max(1) as f64,
            r.decoder_macs as f64 / 1e6
        );
    }
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
        println!(
            "    int8 dot products: {}  driver: {} (vendor {:#06x})",
            if d.int_dot { "yes" } else { "no" },
            d.driver.driver.as_deref().unwrap_or("unknown"),
            d.driver.vendor_id
        );
        for (v, why) in ldm_edge::backend::vulkan::workarounds::known_bugs(&d.driver) {
            println!("    workaround: `{v}` kernels disabled: {why}");
        }
    }
    Ok(())
}

#[cfg(not(feature = "vulkan"))]
fn devices() -> anyhow::Result<()> {
    anyhow::bail!("this build has no Vulkan backend (built without the `vulkan` feature)")
}

/// Commands with their own exit codes (install: refused, rolled back).
fn exit(r: Result<ExitCode>) -> ExitCode {
    r.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn exit_code(r: Result<ExitCode>) -> ExitCode {
    r.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`ldm info m.ldm | head -1`) would
    // panic; a command-line tool should just stop, as the shell expects.
    #[cfg(unix)]
    // SAFETY: called first thing, before any thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Install(a) => return exit(install_cmd::install(a)),
        Cmd::Status(a) => return exit(install_cmd::status(a)),
        Cmd::Rollback(a) => return exit(install_cmd::rollback(a)),
        Cmd::Generate(a) => generate(a),
        Cmd::Inpaint(a) => inpaint(a),
        Cmd::Upscale(a) => upscale(a),
        Cmd::Info { file } => info(file),
        Cmd::Verify { file } => verify(file),
        Cmd::Bench(a) => bench(a),
        Cmd::Plan(a) => return exit_code(plan_cmd::plan(a)),
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
