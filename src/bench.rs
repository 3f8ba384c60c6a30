//! `ldm bench`: time the components of a model on a backend and report memory.
use crate::backend::profile::Profile;
use crate::backend::{Backend, Tensor};
use crate::model::Model;
use crate::Result;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub backend: String,
    pub file_bytes: u64,
    /// Open, map and validate the file (header, table, config-vs-tensor check).
    pub load_ms: f64,
    pub unet_prepare_ms: f64,
    pub latent: [usize; 2],
    /// UNet batch: 1, or 2 for one classifier-free-guidance call ([uncond, cond]).
    pub batch: usize,
    pub unet_ms_per_eval: f64,
    pub unet_gflop: f64,
    pub unet_gflops: f64,
    pub text_encoder_ms: f64,
    pub decoder_ms: f64,
    /// The tiny decoder at the same latent size, where the model has one.
    pub tiny_decoder_ms: Option<f64>,
    /// Multiply-adds of the full decoder and of the tiny one at this latent size.
    pub decoder_macs: u64,
    pub tiny_decoder_macs: Option<u64>,
    pub peak_rss_mb: f64,
    /// Device memory the UNet plan holds (weights + activation arena + transfer buffers), for
    /// backends with their own memory.
    pub unet_device_mb: Option<f64>,
    /// Per-op time breakdown and slowest steps of one UNet evaluation (`--profile`, where the
    /// backend measures one: GPU timestamps on Vulkan).
    pub unet_profile: Option<Profile>,
}

/// Peak resident set size of this process (VmHWM), in MiB; 0 where /proc is unavailable.
pub fn peak_rss_mb() -> f64 {
    crate::pipeline::memory::proc_status_bytes("VmHWM").map_or(0.0, |b| b as f64 / (1 << 20) as f64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median of `iters` timed runs of `f` after one warm-up run.
fn time<F: FnMut() -> Result<()>>(iters: usize, mut f: F) -> Result<Duration> {
    f()?;
    let mut v = Vec::new();
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    v.sort();
    Ok(v[v.len() / 2])
}

pub fn run(
    path: &Path,
    backend: Box<dyn Backend>,
    latent: usize,
    batch: usize,
    iters: usize,
    skip_decoder: bool,
    profile: bool,
) -> Result<BenchReport> {
    let t0 = Instant::now();
    let model = Model::open(path)?;
    let load = t0.elapsed();
    let cfg = &model.config;
    let m = cfg.latent_multiple();
    if latent == 0 || latent % m != 0 {
        return Err(crate::Error::Input(format!(
            "latent size {latent} must be a positive multiple of {m}"
        )));
    }
    if batch == 0 {
        return Err(crate::Error::Input("batch must be at least 1".into()));
    }

    let tg = cfg.text_graph(1)?;
    let mut text = backend.prepare(&tg, &model)?;
    let ids = Tensor::new(
        vec![1, cfg.text_encoder.max_position_embeddings],
        vec![0.0; cfg.text_encoder.max_position_embeddings],
    )?;
    let text_t = time(iters, || text.run(std::slice::from_ref(&ids)).map(drop))?;
    drop(text);

    let ug = cfg.unet_graph(batch, latent, latent)?;
    let t1 = Instant::now();
    let mut unet = backend.prepare(&ug, &model)?;
    let prep = t1.elapsed();
    let x = Tensor::zeros(&[batch, cfg.unet.in_channels, latent, latent]);
    let t = Tensor::new(vec![batch], vec![500.0; batch])?;
    let ctx = Tensor::zeros(&[
        batch,
        cfg.text_encoder.max_position_embeddings,
        cfg.unet.cross_attention_dim,
    ]);
    let mut inputs = vec![x, t, ctx];
    if cfg.unet.time_cond_proj_dim.is_some() {
        inputs.push(Tensor::new(
            vec![batch],
            vec![model.sampler.guidance - 1.0; batch],
        )?);
    }
    let unet_t = time(iters, || unet.run(&inputs).map(drop))?;
    // After the timed runs, so the profiled command buffer never affects the plain timing.
    let unet_profile = if profile {
        let t = unet.profile(&inputs)?;
        if t.is_none() {
            log::warn!(
                "bench: backend `{}` gives no per-op breakdown",
                backend.name()
            );
        }
        t
    } else {
        None
    };
    let device_mb = unet.device_bytes().map(|b| b as f64 / (1 << 20) as f64);
    drop(unet);

    let dec_t = if skip_decoder {
        Duration::ZERO
    } else {
        let dg = cfg.decoder_graph(1, latent, latent)?;
        let mut dec = backend.prepare(&dg, &model)?;
        let z = Tensor::zeros(&[1, cfg.vae.latent_channels, latent, latent]);
        time(iters, || dec.run(std::slice::from_ref(&z)).map(drop))?
    };
    let decoder_macs = cfg.decoder_graph(1, latent, latent)?.macs();
    let tiny_decoder_macs = match &model.tiny_decoder {
        Some(t) => Some(t.graph(1, latent, latent)?.macs()),
        None => None,
    };
    let tiny_t = match (&model.tiny_decoder, skip_decoder) {
        (Some(t), false) => {
            let mut dec = backend.prepare(&t.graph(1, latent, latent)?, &model)?;
            let z = Tensor::zeros(&[1, cfg.vae.latent_channels, latent, latent]);
            Some(ms(time(iters, || {
                dec.run(std::slice::from_ref(&z)).map(drop)
            })?))
        }
        _ => None,
    };
    let gflop = 2.0 * ug.macs() as f64 / 1e9;
    Ok(BenchReport {
        model: path.display().to_string(),
        backend: backend.name().to_string(),
        file_bytes: model.file.file_len(),
        load_ms: ms(load),
        unet_prepare_ms: ms(prep),
        latent: [latent, latent],
        batch,
        unet_ms_per_eval: ms(unet_t),
        unet_gflop: gflop,
        unet_gflops: gflop / unet_t.as_secs_f64(),
        text_encoder_ms: ms(text_t),
        decoder_ms: ms(dec_t),
        tiny_decoder_ms: tiny_t,
        decoder_macs,
        tiny_decoder_macs,
        peak_rss_mb: peak_rss_mb(),
        unet_device_mb: device_mb,
        unet_profile,
    })
}

/// `ldm bench --generate`: the time of whole text-to-image requests with the model's own
/// defaults (sampler, steps, guidance, native size), as `ldm generate` runs them: plan
/// preparation, text encoding, every UNet evaluation and the decode. This is the figure a
/// board user waits for, and the one that compares a distilled student with its teacher.
#[derive(Debug, Serialize)]
pub struct GenerateReport {
    pub model: String,
    pub backend: String,
    pub sampler: String,
    pub steps: usize,
    pub guidance: f32,
    pub size: [usize; 2],
    /// UNet evaluations per image (two per step under classifier-free guidance, which runs
    /// as one batch-2 call; one for guidance-embedded and unguided models).
    pub unet_evals: usize,
    /// Median over `iters` requests after one warm-up, divided by the images per request.
    /// Each request prepares its own plans, as `ldm generate` does.
    pub ms_per_image: f64,
    /// The same with plans kept between requests ([`crate::pipeline::Pipeline::with_plan_reuse`]):
    /// an app that has the model open and makes one image after another. Timed alternately
    /// with `ms_per_image`, so both see the same machine.
    pub ms_per_image_reused: f64,
    /// Images per request (`--count`): plans are prepared once per request.
    pub images_per_request: usize,
    pub peak_rss_mb: f64,
    /// Previews made per image (`--preview-every`).
    pub previews_per_image: usize,
    /// One preview (map, upsample to the image size), timed alone.
    pub preview_ms: Option<f64>,
}

pub fn run_generate(
    path: &Path,
    backend: &str,
    iters: usize,
    steps: Option<usize>,
    preview_every: Option<usize>,
    count: usize,
) -> Result<GenerateReport> {
    use crate::pipeline::{Cancel, Pipeline, Txt2Img};
    let model = Model::open(path)?;
    let pipe =
        Pipeline::new(&model, crate::backend::select(backend)?).with_preview(preview_every)?;
    let backend_name = pipe.backend.name().to_string();
    let kept = Pipeline::new(&model, crate::backend::select(backend)?)
        .with_preview(preview_every)?
        .with_plan_reuse(true);
    let mut req = Txt2Img::new(&model, "a red circle")?;
    if let Some(s) = steps {
        req.steps = s;
    }
    let cancel = Cancel::new();
    // A preview's consumer takes its pixels (as a display or a file writer would).
    let mut previews = 0usize;
    let mut sink = |p: crate::pipeline::Progress| {
        if let Some(img) = p.preview {
            previews += std::hint::black_box(img.rgb.clone()).len().min(1);
        }
    };
    let mut run = |p: &Pipeline| p.txt2img_many(&req, count, &mut sink, &cancel).map(drop);
    // One warm-up each (the reusing pipeline's prepares what the others reuse), then the two
    // alternate.
    run(&pipe)?;
    run(&kept)?;
    let (mut fresh, mut reused) = (Vec::new(), Vec::new());
    for _ in 0..iters.max(1) {
        for (p, v) in [(&pipe, &mut fresh), (&kept, &mut reused)] {
            let t = Instant::now();
            run(p)?;
            v.push(t.elapsed());
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    // The preview itself, timed alone: under load the whole-request medians move by more
    // than the few previews cost, so their share is computed from this.
    let preview_ms = match (&model.latent_rgb, preview_every) {
        (Some(map), Some(_)) => {
            let (h, w) = pipe.latent_size(req.width, req.height)?;
            let z = model.config.vae.latent_channels;
            let latent = crate::sampler::NoiseGen::new(1).sample(z * h * w);
            let f = model.config.vae.factor();
            let reps = 200;
            let t0 = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(map.preview(&latent, h, w, f, 1)?);
            }
            Some(ms(t0.elapsed()) / reps as f64)
        }
        _ => None,
    };
    let guided = model.config.unet.time_cond_proj_dim.is_none() && req.guidance != 1.0;
    Ok(GenerateReport {
        model: path.display().to_string(),
        backend: backend_name,
        sampler: req.sampler.name().to_string(),
        steps: req.steps,
        guidance: req.guidance,
        size: [req.width, req.height],
        unet_evals: req.steps * if guided { 2 } else { 1 },
        ms_per_image: ms(median(&mut fresh)) / count.max(1) as f64,
        ms_per_image_reused: ms(median(&mut reused)) / count.max(1) as f64,
        images_per_request: count,
        peak_rss_mb: peak_rss_mb(),
        previews_per_image: previews / (2 * (iters.max(1) + 1) * count.max(1)),
        preview_ms,
    })
}
