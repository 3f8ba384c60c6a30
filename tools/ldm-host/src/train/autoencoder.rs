//! Stage 1, `ldm-host train autoencoder`: the KL autoencoder (f = 4) with an L1 reconstruction
//! loss and a 1e-6 KL term, AdamW. Reports held-out PSNR and the latent scale (1 / std).
//!
//! `--decoder-only` fine-tunes just the decoder of a finished autoencoder, as Stability's
//! sd-vae-ft-mse did for SD: the encoder stays frozen, so the latent space (and its scale) is
//! unchanged and every UNet trained on it keeps working with the sharper decoder.
use super::burn_ops::{BurnOps, BT};
use super::checkpoint::Checkpoint;
use super::data::{batch, TrainSet};
use super::optim::{AdamW, AdamWConfig};
use super::params::ParamStore;
use super::runner::{progress, stop_flag, CsvLog};
use super::{device, gaussian, step_seed, uniform_indices};
use crate::eval::psnr::psnr;
use anyhow::{bail, Context, Result};
use burn::tensor::Tensor;
use ldm_edge::arch::{vae, VaeConfig, VAE};
use ldm_edge::ops::Ops;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub struct AeArgs {
    pub vae: VaeConfig,
    pub steps: u64,
    pub batch: usize,
    pub lr: f32,
    pub kl_weight: f32,
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
    /// Start from this finished autoencoder checkpoint (fresh optimizer, step 0).
    pub init_from: Option<PathBuf>,
    /// Train the decoder side only (needs `init_from` or a resumed decoder-only run).
    pub decoder_only: bool,
}

/// The names of the parameters that produce the latent (traced from the architecture's
/// encoder): frozen by `--decoder-only`. Every other `vae.` parameter is the decoder side.
pub fn encoder_param_names(cfg: &VaeConfig) -> ldm_edge::Result<HashSet<String>> {
    Ok(vae::encoder_params(cfg, VAE)?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// One draw from the posterior N(mean, exp(logvar)), logvar clamped as in the LDM code so
/// exp() stays finite.
pub fn posterior_sample(mean: f32, logvar: f32, eps: f32) -> f32 {
    mean + (0.5 * logvar.clamp(-30.0, 20.0)).exp() * eps
}

/// Meta key of a decoder-only run: the latent scale of the frozen encoder, carried unchanged.
pub const FIXED_SCALE: &str = "fixed_latent_scale";

/// The training loss for one batch: (L1 + kl_weight * KL, L1).
pub fn loss(
    store: &mut ParamStore,
    cfg: &VaeConfig,
    x: &BT,
    noise: &[f32],
    kl_weight: f32,
) -> ldm_edge::Result<(Tensor<1>, Tensor<1>)> {
    let dev = store.device.clone();
    let mut o = BurnOps::new(store);
    let mom = vae::encode(&mut o, cfg, VAE, x)?;
    let zc = cfg.latent_channels;
    let mean = o.slice(&mom, 1, 0, zc)?;
    let logvar = o.slice(&mom, 1, zc, 2 * zc)?;
    // Clamped as in the LDM code so exp() stays finite early in training.
    let lv = logvar.t.clamp(-30.0, 20.0);
    let eps = BT::from_vec(noise.to_vec(), &mean.shape, &dev);
    let z = BT::new(
        mean.t.clone() + lv.clone().mul_scalar(0.5).exp() * eps.t,
        mean.shape.clone(),
    );
    let rec = vae::decode(&mut o, cfg, VAE, &z)?;
    let l1 = (rec.t - x.t.clone()).abs().mean();
    let b = x.shape[0] as f32;
    let kl = (mean.t.square() + lv.clone().exp() - lv)
        .sub_scalar(1.0)
        .sum()
        .mul_scalar(0.5 / b);
    Ok((l1.clone() + kl.mul_scalar(kl_weight), l1))
}

/// The decoder-only loss: latents sampled from the frozen encoder's posterior (as in full
/// training, so the decoder sees the spread a UNet's samples have), decoded by the trainable
/// decoder; L1 only, since the KL term does not depend on the decoder.
fn decoder_loss(
    store: &mut ParamStore,
    encoder: &mut ParamStore,
    cfg: &VaeConfig,
    imgs: Vec<f32>,
    (b, size): (usize, usize),
    noise: &[f32],
) -> ldm_edge::Result<Tensor<1>> {
    let x = BT::from_vec(
        imgs.clone(),
        &[b, cfg.in_channels, size, size],
        &store.device,
    );
    let (mean, lv) = encode_moments(encoder, cfg, imgs, b, size)?;
    let z: Vec<f32> = mean
        .iter()
        .zip(&lv)
        .zip(noise)
        .map(|((&m, &l), &e)| posterior_sample(m, l, e))
        .collect();
    let z = BT::from_vec(z, &latent_shape(cfg, b, size), &store.device);
    let rec = vae::decode(&mut BurnOps::new(store), cfg, VAE, &z)?;
    Ok((rec.t - x.t).abs().mean())
}

fn latent_shape(cfg: &VaeConfig, b: usize, size: usize) -> Vec<usize> {
    let f = cfg.factor();
    vec![b, cfg.latent_channels, size / f, size / f]
}

/// Encodes images to posterior means and log-variances with frozen weights.
pub fn encode_moments(
    store: &mut ParamStore,
    cfg: &VaeConfig,
    imgs: Vec<f32>,
    b: usize,
    size: usize,
) -> ldm_edge::Result<(Vec<f32>, Vec<f32>)> {
    let dev = store.device.clone();
    let x = BT::from_vec(imgs, &[b, cfg.in_channels, size, size], &dev);
    let mut o = BurnOps::new(store);
    let mom = vae::encode(&mut o, cfg, VAE, &x)?;
    let zc = cfg.latent_channels;
    let mean = o.slice(&mom, 1, 0, zc)?.to_vec()?;
    let lv = o.slice(&mom, 1, zc, 2 * zc)?.to_vec()?;
    Ok((mean, lv))
}

/// Held-out PSNR (reconstruction from the posterior mean) and the latent scale 1/std over
/// sampled training latents.
pub fn evaluate(
    store: &ParamStore,
    cfg: &VaeConfig,
    set: &dyn TrainSet,
    heldout: usize,
    seed: u64,
) -> Result<(f64, f32)> {
    let mut frozen = store.frozen_copy(device(false))?;
    let n = set.len();
    let size = set.image_size();
    let mut psnrs = Vec::new();
    let chunk = 16;
    let mut i = n - heldout;
    while i < n {
        let idx: Vec<usize> = (i..(i + chunk).min(n)).collect();
        let (imgs, _) = batch(set, &idx)?;
        let (mean, _) = encode_moments(&mut frozen, cfg, imgs.clone(), idx.len(), size)?;
        let shape = latent_shape(cfg, idx.len(), size);
        let dev = frozen.device.clone();
        let z = BT::from_vec(mean, &shape, &dev);
        let rec = vae::decode(&mut BurnOps::new(&mut frozen), cfg, VAE, &z)?.to_vec()?;
        psnrs.push((psnr(&imgs, &rec), idx.len()));
        i += chunk;
    }
    let total: usize = psnrs.iter().map(|p| p.1).sum();
    let mean_psnr = psnrs.iter().map(|(p, k)| p * *k as f64).sum::<f64>() / total.max(1) as f64;
    // Latent scale over up to 256 training images, from sampled latents as in the LDM code.
    let train_n = (n - heldout).min(256);
    let idx: Vec<usize> = (0..train_n).collect();
    let mut zs = Vec::new();
    for c in idx.chunks(chunk) {
        let (imgs, _) = batch(set, c)?;
        let (mean, lv) = encode_moments(&mut frozen, cfg, imgs, c.len(), size)?;
        let eps = gaussian(step_seed(seed, zs.len() as u64, 3), mean.len());
        zs.extend(
            mean.iter()
                .zip(&lv)
                .zip(&eps)
                .map(|((&m, &l), &e)| posterior_sample(m, l, e)),
        );
    }
    let mu = zs.iter().map(|&v| v as f64).sum::<f64>() / zs.len().max(1) as f64;
    let var = zs.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / zs.len().max(1) as f64;
    Ok((mean_psnr, (1.0 / var.sqrt().max(1e-6)) as f32))
}

fn save(store: &ParamStore, opt: &AdamW, args: &AeArgs, extra: &[(&str, String)]) -> Result<()> {
    let mut ck = Checkpoint::default();
    for (n, s, d) in store.to_host()? {
        ck.put("p", &n, s, d);
    }
    ck.put_state(store, &[("m", &opt.m), ("v", &opt.v)])?;
    ck.meta.insert("kind".into(), "autoencoder".into());
    ck.meta
        .insert("vae".into(), serde_json::to_string(&args.vae)?);
    ck.meta.insert("step".into(), opt.step.to_string());
    ck.meta.insert("seed".into(), args.seed.to_string());
    ck.meta.insert("recipe".into(), args.recipe.clone());
    for (k, v) in extra {
        ck.meta.insert(k.to_string(), v.clone());
    }
    ck.save(&args.out)
}

/// Loads a checkpoint's parameters and optimizer state into `store` and `opt`; returns it.
pub fn restore(
    path: &std::path::Path,
    store: &mut ParamStore,
    opt: &mut AdamW,
) -> Result<Checkpoint> {
    let ck = Checkpoint::load(path)?;
    store.initial = ck.group("p");
    store.strict = true;
    opt.step = ck
        .meta("step")?
        .parse()
        .context("checkpoint `step` is not a number")?;
    let dev = store.device.clone();
    for (g, map) in [("m", &mut opt.m), ("v", &mut opt.v)] {
        for (n, (s, d)) in ck.group(g) {
            let t = BT::from_vec(d, &s, &dev).t.inner();
            map.insert(n, t);
        }
    }
    Ok(ck)
}

pub fn train(set: &dyn TrainSet, args: &AeArgs) -> Result<(f64, f32)> {
    let n = set.len();
    if args.heldout == 0 || args.heldout >= n {
        bail!(
            "--heldout {} must be in 1..{n} (dataset size)",
            args.heldout
        );
    }
    let size = set.image_size();
    if size % args.vae.factor() != 0 {
        bail!(
            "image size {size} is not a multiple of f = {}",
            args.vae.factor()
        );
    }
    let mut store = ParamStore::new(device(true), true, args.seed);
    let mut opt = AdamW::new(AdamWConfig {
        lr: args.lr,
        warmup: args.warmup,
        decay_start: args.decay_start,
        total: args.steps,
        ..Default::default()
    });
    let mut fixed_scale = None;
    if args.resume && args.out.exists() {
        let ck = restore(&args.out, &mut store, &mut opt)?;
        ck.require_kind("autoencoder", &args.out.display().to_string())?;
        eprintln!("resuming {} at step {}", args.out.display(), opt.step);
        fixed_scale = ck.meta.get(FIXED_SCALE).cloned();
        if fixed_scale.is_some() && !args.decoder_only {
            bail!(
                "{} is a --decoder-only run: resume it with --decoder-only",
                args.out.display()
            );
        }
    } else if let Some(src) = &args.init_from {
        let ck = Checkpoint::load(src)?;
        ck.require_kind("autoencoder", &format!("--init-from {}", src.display()))?;
        let vae: VaeConfig =
            serde_json::from_str(ck.meta("vae")?).context("--init-from checkpoint `vae`")?;
        if vae != args.vae {
            bail!(
                "--init-from {} has another autoencoder architecture than --preset",
                src.display()
            );
        }
        store.initial = ck.group("p");
        store.strict = true;
        if args.decoder_only {
            fixed_scale = Some(
                ck.meta("latent_scale")
                    .context("--init-from: the autoencoder run did not finish (no latent scale)")?
                    .to_string(),
            );
        }
    }
    if args.decoder_only && fixed_scale.is_none() {
        bail!(
            "--decoder-only needs --init-from a finished autoencoder (or --resume of such a run)"
        );
    }
    // The frozen encoder: the checkpoint's own values, never updated.
    let mut encoder = ParamStore::new(device(false), false, args.seed);
    if args.decoder_only {
        let names = encoder_param_names(&args.vae)?;
        encoder.initial = store
            .initial
            .iter()
            .filter(|(k, _)| names.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        encoder.strict = true;
    }
    let fixed: Vec<(&str, String)> = fixed_scale
        .iter()
        .map(|s| (FIXED_SCALE, s.clone()))
        .collect();
    let mut log = match &args.log {
        Some(p) => Some(CsvLog::open(
            p,
            "step,loss,l1,grad_norm,lr,img_per_s,elapsed_s",
        )?),
        None => None,
    };
    let stop = stop_flag();
    let pb = progress(args.steps, opt.step);
    if args.quiet {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let start = Instant::now();
    let first = opt.step;
    let dev = store.device.clone();
    let mut budget = args
        .max_seconds
        .map(|s| super::budget::TimeBudget::new(s, first, &opt.cfg));
    while opt.step < opt.cfg.total {
        let step = opt.step;
        let idx = uniform_indices(step_seed(args.seed, step, 1), args.batch, n - args.heldout);
        let (imgs, _) = batch(set, &idx)?;
        let nz = latent_shape(&args.vae, args.batch, size).iter().product();
        let noise = gaussian(step_seed(args.seed, step, 2), nz);
        let (loss, l1) = if args.decoder_only {
            let l1 = decoder_loss(
                &mut store,
                &mut encoder,
                &args.vae,
                imgs,
                (args.batch, size),
                &noise,
            )?;
            (l1.clone(), l1)
        } else {
            let x = BT::from_vec(imgs, &[args.batch, 3, size, size], &dev);
            loss(&mut store, &args.vae, &x, &noise, args.kl_weight)?
        };
        let grads = loss.backward();
        let st = opt.step(&mut store, &grads);
        if let Some(b) = budget.as_mut() {
            b.update(&mut opt.cfg, opt.step);
            pb.set_length(opt.cfg.total);
        }
        let (lv, l1v) = (loss.into_scalar::<f32>(), l1.into_scalar::<f32>());
        if !lv.is_finite() {
            bail!("loss became {lv} at step {step}; lower --lr");
        }
        let secs = start.elapsed().as_secs_f64();
        let ips = (opt.step - first) as f64 * args.batch as f64 / secs.max(1e-9);
        pb.set_position(opt.step);
        pb.set_message(format!("loss {lv:.4} l1 {l1v:.4} {ips:.1} img/s"));
        if let Some(l) = log.as_mut() {
            l.row(&format!(
                "{},{lv},{l1v},{},{},{ips:.2},{secs:.1}",
                opt.step, st.grad_norm, st.lr
            ))?;
        }
        let stopping = stop.load(Ordering::SeqCst);
        if opt.step % args.ckpt_every == 0 || stopping {
            save(&store, &opt, args, &fixed)?;
        }
        if stopping {
            pb.abandon_with_message(format!("interrupted: saved {}", args.out.display()));
            bail!("interrupted at step {}; resume with --resume", opt.step);
        }
    }
    pb.finish();
    let (p, measured) = evaluate(&store, &args.vae, set, args.heldout, args.seed)?;
    // With a frozen encoder the latent space is the one UNets were trained on: its scale is
    // carried bit for bit, not re-estimated (a fresh estimate differs in the last digits).
    let scale_text = fixed_scale.unwrap_or_else(|| measured.to_string());
    let scale: f32 = scale_text.parse().context("latent scale is not a number")?;
    eprintln!("held-out PSNR {p:.2} dB, latent scale {scale:.5}");
    let mut meta = vec![("psnr", format!("{p:.3}")), ("latent_scale", scale_text)];
    meta.extend(fixed);
    save(&store, &opt, args, &meta)?;
    Ok((p, scale))
}
