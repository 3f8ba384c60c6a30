//! `ldm-host train tiny-decoder`: distil the tiny decoder (`ldm_edge::arch::tiny_decoder`)
//! from a model file's own autoencoder.
//!
//! Each step encodes a batch of dataset images with the model's encoder (runtime CPU backend,
//! the weights as shipped), draws latents from the posterior (so the decoder sees the spread
//! that sampled latents have), decodes them with the model's full decoder, and trains the tiny
//! decoder to reproduce those images (L1). The held-out figure is the PSNR against the full
//! decoder on posterior means of images never trained on. `--write` stores the result in a
//! copy of the model file.
use super::autoencoder::{posterior_sample, restore};
use super::burn_ops::{BurnOps, BT};
use super::checkpoint::Checkpoint;
use super::data::{batch, TrainSet};
use super::optim::{AdamW, AdamWConfig};
use super::params::ParamStore;
use super::runner::{progress, stop_flag, CsvLog};
use super::{device, gaussian, step_seed, uniform_indices};
use crate::eval::psnr::psnr;
use anyhow::{bail, Context, Result};
use ldm_edge::arch::tiny_decoder::{self, TinyDecoderConfig};
use ldm_edge::backend::{Backend, Executable, Tensor};
use ldm_edge::format::{DType, ModelWriter};
use ldm_edge::model::Model;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub struct TinyArgs {
    pub model: PathBuf,
    pub channels: usize,
    pub blocks: usize,
    pub steps: u64,
    pub batch: usize,
    pub lr: f32,
    pub warmup: u64,
    pub decay_start: u64,
    pub seed: u64,
    /// The last `heldout` items of the dataset are never trained on; PSNR is measured there.
    pub heldout: usize,
    pub out: PathBuf,
    pub resume: bool,
    pub ckpt_every: u64,
    pub log: Option<PathBuf>,
    pub recipe: String,
    pub quiet: bool,
    pub max_seconds: Option<f64>,
    /// Write the model with the trained tiny decoder here.
    pub write: Option<PathBuf>,
}

/// The teacher: the model's encoder and full decoder, prepared once for a batch size.
struct Teacher<'m> {
    model: &'m Model,
    encoder: Box<dyn Executable>,
    decoder: Box<dyn Executable>,
    batch: usize,
    size: usize,
}

impl<'m> Teacher<'m> {
    fn new(model: &'m Model, batch: usize, size: usize) -> Result<Self> {
        let cfg = &model.config;
        let f = cfg.vae.factor();
        let cpu = ldm_edge::backend::cpu::CpuBackend;
        Ok(Self {
            model,
            encoder: cpu.prepare(&cfg.encoder_graph(batch, size, size)?, model)?,
            decoder: cpu.prepare(&cfg.decoder_graph(batch, size / f, size / f)?, model)?,
            batch,
            size,
        })
    }

    fn latent_shape(&self) -> Vec<usize> {
        let f = self.model.config.vae.factor();
        let z = self.model.config.vae.latent_channels;
        vec![self.batch, z, self.size / f, self.size / f]
    }

    /// Images -> decoder-input latents (posterior samples with `noise`, or means without)
    /// and the full decoder's images of them.
    fn pairs(&mut self, imgs: Vec<f32>, noise: Option<&[f32]>) -> Result<(Vec<f32>, Vec<f32>)> {
        let x = Tensor::new(vec![self.batch, 3, self.size, self.size], imgs)?;
        let mom = first(self.encoder.run(&[x])?)?;
        let shape = self.latent_shape();
        let (b, per) = (shape[0], shape[1..].iter().product::<usize>());
        let mut z = Vec::with_capacity(b * per);
        for i in 0..b {
            let m = &mom.data[i * 2 * per..i * 2 * per + per];
            let lv = &mom.data[i * 2 * per + per..(i + 1) * 2 * per];
            match noise {
                Some(e) => z.extend(
                    m.iter()
                        .zip(lv)
                        .zip(&e[i * per..(i + 1) * per])
                        .map(|((&m, &l), &e)| posterior_sample(m, l, e)),
                ),
                None => z.extend_from_slice(m),
            }
        }
        let target = first(self.decoder.run(&[Tensor::new(shape, z.clone())?])?)?;
        Ok((z, target.data))
    }
}

fn first(v: Vec<Tensor>) -> Result<Tensor> {
    v.into_iter().next().context("the graph gave no output")
}

fn loss(
    store: &mut ParamStore,
    cfg: &TinyDecoderConfig,
    z: Vec<f32>,
    zshape: &[usize],
    target: Vec<f32>,
) -> ldm_edge::Result<burn::tensor::Tensor<1>> {
    let dev = store.device.clone();
    let z = BT::from_vec(z, zshape, &dev);
    let y = tiny_decoder::decode(&mut BurnOps::new(store), cfg, tiny_decoder::PREFIX, &z)?;
    let t = BT::from_vec(target, &y.shape, &dev);
    Ok((y.t - t.t).abs().mean())
}

/// Held-out PSNR of the tiny decoder against the full one, on posterior means.
fn evaluate(
    store: &ParamStore,
    cfg: &TinyDecoderConfig,
    teacher: &mut Teacher,
    set: &dyn TrainSet,
    heldout: usize,
) -> Result<f64> {
    let mut frozen = store.frozen_copy(device(false))?;
    let n = set.len();
    let b = teacher.batch;
    let (mut sum, mut count) = (0f64, 0usize);
    let mut i = n - heldout;
    while i + b <= n {
        let idx: Vec<usize> = (i..i + b).collect();
        let (imgs, _) = batch(set, &idx)?;
        let (z, target) = teacher.pairs(imgs, None)?;
        let zt = BT::from_vec(z, &teacher.latent_shape(), &frozen.device.clone());
        let y = tiny_decoder::decode(
            &mut BurnOps::new(&mut frozen),
            cfg,
            tiny_decoder::PREFIX,
            &zt,
        )?
        .to_vec()?;
        sum += psnr(&target, &y) * b as f64;
        count += b;
        i += b;
    }
    if count == 0 {
        bail!("--heldout {heldout} is smaller than one batch of {b}");
    }
    Ok(sum / count as f64)
}

fn save(store: &ParamStore, opt: &AdamW, cfg: &TinyDecoderConfig, a: &TinyArgs) -> Result<()> {
    let mut ck = Checkpoint::default();
    for (n, s, d) in store.to_host()? {
        ck.put("p", &n, s, d);
    }
    ck.put_state(store, &[("m", &opt.m), ("v", &opt.v)])?;
    ck.meta.insert("kind".into(), "tiny_decoder".into());
    ck.meta
        .insert("tiny_decoder".into(), serde_json::to_string(cfg)?);
    ck.meta.insert("step".into(), opt.step.to_string());
    ck.meta.insert("recipe".into(), a.recipe.clone());
    ck.save(&a.out)
}

/// Trains; returns the held-out PSNR against the full decoder.
pub fn train(set: &dyn TrainSet, a: &TinyArgs) -> Result<f64> {
    let model =
        Model::open(&a.model).with_context(|| format!("cannot open {}", a.model.display()))?;
    let size = set.image_size();
    let f = model.config.vae.factor();
    if size % f != 0 {
        bail!("image size {size} is not a multiple of the autoencoder's factor {f}");
    }
    let n = set.len();
    if a.heldout < a.batch || a.heldout >= n {
        bail!(
            "--heldout {} must be at least --batch {} and below the dataset size {n}",
            a.heldout,
            a.batch
        );
    }
    let cfg = TinyDecoderConfig {
        channels: a.channels,
        blocks: a.blocks,
        ..TinyDecoderConfig::for_vae(&model.config.vae)
    };
    cfg.validate()?;
    let mut store = ParamStore::new(device(true), true, a.seed);
    let mut opt = AdamW::new(AdamWConfig {
        lr: a.lr,
        warmup: a.warmup,
        decay_start: a.decay_start,
        total: a.steps,
        ..Default::default()
    });
    if a.resume && a.out.exists() {
        let ck = restore(&a.out, &mut store, &mut opt)?;
        ck.require_kind("tiny_decoder", &a.out.display().to_string())?;
        let saved: TinyDecoderConfig = serde_json::from_str(ck.meta("tiny_decoder")?)?;
        if saved != cfg {
            bail!(
                "{} has another tiny decoder ({saved:?}) than asked",
                a.out.display()
            );
        }
        eprintln!("resuming {} at step {}", a.out.display(), opt.step);
    }
    let mut teacher = Teacher::new(&model, a.batch, size)?;
    let mut log = match &a.log {
        Some(p) => Some(CsvLog::open(
            p,
            "step,loss,grad_norm,lr,img_per_s,elapsed_s",
        )?),
        None => None,
    };
    let stop = stop_flag();
    let pb = progress(a.steps, opt.step);
    if a.quiet {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let start = Instant::now();
    let first_step = opt.step;
    let mut budget = a
        .max_seconds
        .map(|s| super::budget::TimeBudget::new(s, first_step, &opt.cfg));
    let zshape = teacher.latent_shape();
    while opt.step < opt.cfg.total {
        let step = opt.step;
        let idx = uniform_indices(step_seed(a.seed, step, 1), a.batch, n - a.heldout);
        let (imgs, _) = batch(set, &idx)?;
        let noise = gaussian(step_seed(a.seed, step, 2), zshape.iter().product());
        let (z, target) = teacher.pairs(imgs, Some(&noise))?;
        let l = loss(&mut store, &cfg, z, &zshape, target)?;
        let grads = l.backward();
        let st = opt.step(&mut store, &grads);
        if let Some(b) = budget.as_mut() {
            b.update(&mut opt.cfg, opt.step);
            pb.set_length(opt.cfg.total);
        }
        let lv = l.into_scalar::<f32>();
        if !lv.is_finite() {
            bail!("loss became {lv} at step {step}; lower --lr");
        }
        let secs = start.elapsed().as_secs_f64();
        let ips = (opt.step - first_step) as f64 * a.batch as f64 / secs.max(1e-9);
        pb.set_position(opt.step);
        pb.set_message(format!("l1 {lv:.4} {ips:.1} img/s"));
        if let Some(l) = log.as_mut() {
            l.row(&format!(
                "{},{lv},{},{},{ips:.2},{secs:.1}",
                opt.step, st.grad_norm, st.lr
            ))?;
        }
        let stopping = stop.load(Ordering::SeqCst);
        if opt.step % a.ckpt_every == 0 || stopping {
            save(&store, &opt, &cfg, a)?;
        }
        if stopping {
            pb.abandon_with_message(format!("interrupted: saved {}", a.out.display()));
            bail!("interrupted at step {}; resume with --resume", opt.step);
        }
    }
    pb.finish();
    save(&store, &opt, &cfg, a)?;
    let p = evaluate(&store, &cfg, &mut teacher, set, a.heldout)?;
    eprintln!("tiny decoder: held-out PSNR against the full decoder {p:.2} dB");
    if let Some(out) = &a.write {
        write_model(&model, &store, &cfg, a, opt.step, p, out)?;
    }
    Ok(p)
}

/// Writes a copy of the model with the tiny decoder (replacing one it had).
fn write_model(
    model: &Model,
    store: &ParamStore,
    cfg: &TinyDecoderConfig,
    a: &TinyArgs,
    steps: u64,
    psnr_db: f64,
    out: &std::path::Path,
) -> Result<()> {
    let mut meta = model.file.meta().clone();
    let obj = meta
        .as_object_mut()
        .context("model header is not an object")?;
    obj.insert(tiny_decoder::HEADER_KEY.into(), serde_json::to_value(cfg)?);
    if let Some(p) = obj.get_mut("provenance").and_then(|p| p.as_object_mut()) {
        p.insert(
            "tiny_decoder".into(),
            serde_json::json!({
                "trained": "ldm-host train tiny-decoder (L1 against the model's own decoder)",
                "steps": steps,
                "heldout_psnr_vs_full_db": (psnr_db * 100.0).round() / 100.0,
                "heldout": a.heldout,
                "recipe": a.recipe,
            }),
        );
    }
    let mut w = ModelWriter::new(meta)?;
    w.add_all_from(&model.file, |n| !n.starts_with(tiny_decoder::PREFIX))?;
    let host: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> = store
        .to_host()?
        .into_iter()
        .map(|(n, s, d)| (n, (s, d)))
        .collect();
    for (path, shape) in cfg.param_specs()? {
        let (s, d) = host
            .get(&path)
            .with_context(|| format!("trained tiny decoder has no `{path}`"))?;
        if *s != shape {
            bail!("tiny decoder `{path}` is {s:?}, expected {shape:?}");
        }
        w.add(&path, &shape, d, DType::F32)?;
    }
    let r = w
        .write(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    // Proves the file loads with its new component before anyone ships it.
    Model::open(out).with_context(|| format!("{} does not load back", out.display()))?;
    eprintln!(
        "wrote {} ({} bytes) with the tiny decoder",
        out.display(),
        r.file_len
    );
    Ok(())
}
