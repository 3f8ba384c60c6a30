//! Stage 2, `ldm-host train ldm`: the UNet and the text encoder trained jointly with the
//! epsilon objective on latents of the frozen autoencoder; 10% empty captions so classifier-free
//! guidance works; AdamW with warmup and clipping; EMA; resumable checkpoints; sample grids.
use super::autoencoder::{encode_moments, posterior_sample};
use super::burn_ops::{BurnOps, BT};
use super::checkpoint::Checkpoint;
use super::data::{batch, TrainSet};
use super::optim::{AdamW, AdamWConfig, Ema};
use super::params::ParamStore;
use super::runner::{progress, stop_flag, CsvLog};
use super::{device, gaussian, step_seed, uniform_indices};
use anyhow::{bail, Context, Result};
use burn::tensor::Tensor;
use ldm_edge::arch::{task, text, unet, ModelConfig, Task, TEXT, UNET};
use ldm_edge::sampler::{NoiseSchedule, ScheduleConfig};
use ldm_edge::tokenizer::TextTokenizer;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub struct LdmArgs {
    /// The architecture: its `vae` part must match the autoencoder checkpoint.
    pub cfg: ModelConfig,
    /// txt2img, or a concatenation-conditioned task (see `ldm_edge::arch::task`).
    pub task: Task,
    /// Start the UNet and text encoder from this stage-2 checkpoint (see `init_from`).
    pub init_from: Option<PathBuf>,
    pub tokenizer_json: String,
    pub autoencoder: PathBuf,
    pub steps: u64,
    pub batch: usize,
    pub lr: f32,
    pub warmup: u64,
    pub decay_start: u64,
    pub ema_decay: f32,
    pub cond_dropout: f32,
    pub seed: u64,
    pub out: PathBuf,
    pub resume: bool,
    pub ckpt_every: u64,
    pub sample_every: u64,
    pub sample_dir: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub recipe: String,
    pub quiet: bool,
    pub max_seconds: Option<f64>,
}

/// The epsilon-prediction MSE for one batch. `cond` holds each element's conditioning
/// channels at latent resolution (empty for txt2img); they follow the noisy latent in the UNet
/// input exactly as the runtime pipelines place them (`task::concat_channels`).
#[allow(clippy::too_many_arguments)]
pub fn loss(
    store: &mut ParamStore,
    cfg: &ModelConfig,
    ids: &BT,
    x0: &[f32],
    lshape: &[usize],
    cond: &[f32],
    t: &[f32],
    noise: &[f32],
    sched: &NoiseSchedule,
) -> ldm_edge::Result<Tensor<1>> {
    let dev = store.device.clone();
    let per: usize = lshape[1..].iter().product();
    let b = t.len();
    let cper = cond.len() / b.max(1);
    let mut xin = Vec::with_capacity(x0.len() + cond.len());
    for (k, &tb) in t.iter().enumerate() {
        let a = sched.alphas_cumprod[tb as usize];
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        let xt: Vec<f32> = (k * per..(k + 1) * per)
            .map(|i| sa * x0[i] + sb * noise[i])
            .collect();
        xin.extend(task::concat_channels(&xt, &cond[k * cper..(k + 1) * cper]));
    }
    let hw = lshape[2] * lshape[3];
    let in_shape = [b, lshape[1] + cper / hw.max(1), lshape[2], lshape[3]];
    let xt = BT::from_vec(xin, &in_shape, &dev);
    let tt = BT::from_vec(t.to_vec(), &[t.len()], &dev);
    let eps = BT::from_vec(noise.to_vec(), lshape, &dev);
    let mut o = BurnOps::new(store);
    let ctx = text::forward(&mut o, &cfg.text_encoder, TEXT, ids)?;
    let pred = unet::forward(&mut o, &cfg.unet, UNET, &xt, &tt, &ctx, None)?;
    Ok((pred.t - eps.t).square().mean())
}

/// Posterior moments of every dataset image under the frozen autoencoder, computed once:
/// the encoder is frozen, so re-encoding every step would only cost time.
/// For SR, the low-resolution conditioning images are kept too (3 x h x w each).
pub(super) struct Latents {
    pub mean: Vec<f32>,
    pub logvar: Vec<f32>,
    pub per: usize,
    pub lowres: Vec<f32>,
}

pub(super) fn encode_all(
    set: &dyn TrainSet,
    cfg: &ModelConfig,
    vae: &mut ParamStore,
) -> Result<Latents> {
    let size = set.image_size();
    let f = cfg.vae.factor();
    let (mut mean, mut logvar, mut lowres) = (Vec::new(), Vec::new(), Vec::new());
    let idx: Vec<usize> = (0..set.len()).collect();
    for c in idx.chunks(32) {
        let (imgs, _) = batch(set, c)?;
        if cfg.task == Task::Sr {
            for img in imgs.chunks(3 * size * size) {
                lowres.extend(task::downsample_box(img, 3, size, size, f)?);
            }
        }
        let (m, l) = encode_moments(vae, &cfg.vae, imgs, c.len(), size)?;
        mean.extend(m);
        logvar.extend(l);
    }
    let per = mean.len() / set.len().max(1);
    Ok(Latents {
        mean,
        logvar,
        per,
        lowres,
    })
}

/// Inpainting conditioning for one batch: a fresh random mask per image, the masked image
/// encoded by the frozen autoencoder (posterior mean x latent scale, as the runtime does), and
/// per image `[mask at latent size (1), masked latent (z)]`.
fn inpaint_cond(
    set: &dyn TrainSet,
    cfg: &ModelConfig,
    vae: &mut ParamStore,
    idx: &[usize],
    seed: u64,
) -> Result<Vec<f32>> {
    let size = set.image_size();
    let f = cfg.vae.factor();
    let (imgs, _) = batch(set, idx)?;
    let mut masks = Vec::with_capacity(idx.len());
    let mut masked = Vec::with_capacity(imgs.len());
    for (k, img) in imgs.chunks(3 * size * size).enumerate() {
        let m = super::masks::random_mask(step_seed(seed, k as u64, 9), size, img);
        masked.extend(task::masked_image(img, &m));
        masks.push(task::mask_to_latent(&m, size, size, f)?);
    }
    let (mean, _) = encode_moments(vae, &cfg.vae, masked, idx.len(), size)?;
    let per = mean.len() / idx.len().max(1);
    let mut out = Vec::with_capacity(mean.len() + masks.len() * masks[0].len());
    for (k, m) in masks.iter().enumerate() {
        out.extend_from_slice(m);
        out.extend(
            mean[k * per..(k + 1) * per]
                .iter()
                .map(|v| v * cfg.latent_scale),
        );
    }
    Ok(out)
}

pub(super) fn tokenize_all(
    set: &dyn TrainSet,
    tok: &TextTokenizer,
) -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
    let mut ids = Vec::with_capacity(set.len());
    for i in 0..set.len() {
        let cap = set.caption(i)?;
        ids.push(tok.encode(&cap)?.into_iter().map(|v| v as f32).collect());
    }
    let empty = tok.encode("")?.into_iter().map(|v| v as f32).collect();
    Ok((ids, empty))
}

pub struct Trainer {
    pub store: ParamStore,
    pub vae: ParamStore,
    pub opt: AdamW,
    pub ema: Ema,
}

impl Trainer {
    /// Everything a checkpoint or an export needs: EMA and raw weights, moments, the frozen VAE.
    pub fn checkpoint(&self, args: &LdmArgs, extra: &[(&str, String)]) -> Result<Checkpoint> {
        let mut ck = Checkpoint::default();
        for (n, s, d) in self.store.to_host()? {
            ck.put("p", &n, s, d);
        }
        for (n, s, d) in self.vae.to_host()? {
            ck.put("p", &n, s, d);
        }
        ck.put_state(
            &self.store,
            &[
                ("m", &self.opt.m),
                ("v", &self.opt.v),
                ("ema", &self.ema.weights),
            ],
        )?;
        ck.meta.insert("kind".into(), "ldm".into());
        ck.meta
            .insert("config".into(), serde_json::to_string(&args.cfg)?);
        ck.meta
            .insert("tokenizer".into(), args.tokenizer_json.clone());
        ck.meta.insert("step".into(), self.opt.step.to_string());
        ck.meta.insert("seed".into(), args.seed.to_string());
        ck.meta
            .insert("device".into(), super::device_name().to_string());
        ck.meta.insert("recipe".into(), args.recipe.clone());
        for (k, v) in extra {
            ck.meta.insert(k.to_string(), v.clone());
        }
        Ok(ck)
    }
}

pub fn train(set: &dyn TrainSet, args: &LdmArgs) -> Result<f32> {
    let ae = Checkpoint::load(&args.autoencoder)?;
    ae.require_kind("autoencoder", &args.autoencoder.display().to_string())?;
    let mut cfg = args.cfg.clone();
    cfg.vae = serde_json::from_str(ae.meta("vae")?).context("autoencoder `vae` config")?;
    cfg.latent_scale = ae
        .meta("latent_scale")
        .context("the autoencoder run did not finish (no latent scale)")?
        .parse()
        .context("latent_scale is not a number")?;
    cfg.image_size = set.image_size();
    cfg.set_task(args.task);
    cfg.validate()?;
    if args.task == Task::Sr && cfg.vae.factor() != 4 {
        bail!(
            "super-resolution is 4x: the autoencoder's factor must be 4, not {}",
            cfg.vae.factor()
        );
    }
    let args = &LdmArgs {
        cfg: cfg.clone(),
        recipe: format!(
            "{}\nautoencoder: {}",
            args.recipe,
            ae.meta("recipe").unwrap_or("?")
        ),
        tokenizer_json: args.tokenizer_json.clone(),
        autoencoder: args.autoencoder.clone(),
        sample_dir: args.sample_dir.clone(),
        log: args.log.clone(),
        out: args.out.clone(),
        init_from: args.init_from.clone(),
        ..*args
    };
    let tok = TextTokenizer::from_json(
        &args.tokenizer_json,
        cfg.text_encoder.max_position_embeddings,
    )?;
    if tok.vocab_size() > cfg.text_encoder.vocab_size {
        bail!(
            "tokenizer has {} tokens, the text encoder {}",
            tok.vocab_size(),
            cfg.text_encoder.vocab_size
        );
    }
    let mut vae = ParamStore::new(device(false), false, args.seed);
    vae.initial = ae.group("p");
    vae.strict = true;
    eprintln!(
        "encoding {} images with the frozen autoencoder...",
        set.len()
    );
    let lat = encode_all(set, &cfg, &mut vae)?;
    let (ids, empty) = tokenize_all(set, &tok)?;
    let sched = NoiseSchedule::new(&ScheduleConfig::default())
        .map_err(|e| anyhow::anyhow!("noise schedule: {e}"))?;
    let mut tr = Trainer {
        store: ParamStore::new(device(true), true, args.seed),
        vae,
        opt: AdamW::new(AdamWConfig {
            lr: args.lr,
            warmup: args.warmup,
            decay_start: args.decay_start,
            total: args.steps,
            ..Default::default()
        }),
        ema: Ema::new(args.ema_decay),
    };
    if args.resume && args.out.exists() {
        let ck = super::autoencoder::restore(&args.out, &mut tr.store, &mut tr.opt)?;
        ck.require_kind("ldm", &args.out.display().to_string())?;
        tr.store
            .initial
            .retain(|k, _| !k.starts_with(ldm_edge::arch::VAE));
        let dev = tr.store.device.clone();
        for (n, (s, d)) in ck.group("ema") {
            tr.ema
                .weights
                .insert(n, BT::from_vec(d, &s, &dev).t.inner());
        }
        eprintln!("resuming {} at step {}", args.out.display(), tr.opt.step);
    } else if let Some(src) = &args.init_from {
        let n = init_from(&mut tr, src, &cfg, &args.tokenizer_json)?;
        eprintln!("started {n} parameters from {}", src.display());
    }
    let mut log = match &args.log {
        Some(p) => Some(CsvLog::open(
            p,
            "step,loss,loss_avg,grad_norm,lr,img_per_s,elapsed_s",
        )?),
        None => None,
    };
    let stop = stop_flag();
    let pb = progress(args.steps, tr.opt.step);
    if args.quiet {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let l = cfg.text_encoder.max_position_embeddings;
    let f = cfg.vae.factor();
    let hw = set.image_size() / f;
    let lshape = vec![args.batch, cfg.vae.latent_channels, hw, hw];
    let dev = tr.store.device.clone();
    let start = Instant::now();
    let first = tr.opt.step;
    let mut avg: Option<f32> = None;
    let mut last = f32::NAN;
    let mut budget = args
        .max_seconds
        .map(|s| super::budget::TimeBudget::new(s, first, &tr.opt.cfg));
    while tr.opt.step < tr.opt.cfg.total {
        let step = tr.opt.step;
        let idx = uniform_indices(step_seed(args.seed, step, 1), args.batch, set.len());
        let drop = gaussian(step_seed(args.seed, step, 4), args.batch);
        let mut id_batch = Vec::with_capacity(args.batch * l);
        let mut x0 = Vec::with_capacity(args.batch * lat.per);
        let eps_z = gaussian(step_seed(args.seed, step, 5), args.batch * lat.per);
        for (k, &i) in idx.iter().enumerate() {
            // A standard normal below the 10th percentile (-1.2816) drops the caption.
            let u = drop[k];
            let dropped = u < normal_quantile(args.cond_dropout);
            id_batch.extend_from_slice(if dropped { &empty } else { &ids[i] });
            for j in 0..lat.per {
                let q = i * lat.per + j;
                let z = posterior_sample(lat.mean[q], lat.logvar[q], eps_z[k * lat.per + j]);
                x0.push(z * cfg.latent_scale);
            }
        }
        let ts: Vec<f32> = uniform_indices(
            step_seed(args.seed, step, 6),
            args.batch,
            sched.alphas_cumprod.len(),
        )
        .into_iter()
        .map(|t| t as f32)
        .collect();
        let noise = gaussian(step_seed(args.seed, step, 2), x0.len());
        let cond = match cfg.task {
            Task::Txt2img => Vec::new(),
            Task::Sr => {
                let per = 3 * hw * hw;
                idx.iter()
                    .flat_map(|&i| lat.lowres[i * per..(i + 1) * per].iter().copied())
                    .collect()
            }
            Task::Inpaint => {
                inpaint_cond(set, &cfg, &mut tr.vae, &idx, step_seed(args.seed, step, 8))?
            }
        };
        let idt = BT::from_vec(id_batch, &[args.batch, l], &dev);
        let loss = loss(
            &mut tr.store,
            &cfg,
            &idt,
            &x0,
            &lshape,
            &cond,
            &ts,
            &noise,
            &sched,
        )?;
        let grads = loss.backward();
        let st = tr.opt.step(&mut tr.store, &grads);
        tr.ema.update(&tr.store, tr.opt.step);
        if let Some(b) = budget.as_mut() {
            b.update(&mut tr.opt.cfg, tr.opt.step);
            pb.set_length(tr.opt.cfg.total);
        }
        let lv = loss.into_scalar::<f32>();
        if !lv.is_finite() {
            bail!("loss became {lv} at step {step}; lower --lr");
        }
        last = lv;
        let a = avg.map_or(lv, |a| 0.98 * a + 0.02 * lv);
        avg = Some(a);
        let secs = start.elapsed().as_secs_f64();
        let ips = (tr.opt.step - first) as f64 * args.batch as f64 / secs.max(1e-9);
        pb.set_position(tr.opt.step);
        pb.set_message(format!("loss {a:.4} {ips:.1} img/s"));
        if let Some(l) = log.as_mut() {
            l.row(&format!(
                "{},{lv},{a},{},{},{ips:.2},{secs:.1}",
                tr.opt.step, st.grad_norm, st.lr
            ))?;
        }
        let stopping = stop.load(Ordering::SeqCst);
        let end = tr.opt.step >= tr.opt.cfg.total;
        if tr.opt.step % args.ckpt_every == 0 || stopping || end {
            tr.checkpoint(args, &[("loss_avg", a.to_string())])?
                .save(&args.out)?;
        }
        // The grid renders prompts through txt2img; task models are judged by `ldm-host eval`.
        let grid_ok = cfg.task == Task::Txt2img;
        if let (Some(dir), true) = (&args.sample_dir, args.sample_every > 0 && grid_ok) {
            if tr.opt.step % args.sample_every == 0 || end {
                let ck = tr.checkpoint(args, &[])?;
                let png = dir.join(format!("step{:06}.png", tr.opt.step));
                if let Err(e) = super::sample::grid(&ck, &png) {
                    log::warn!("sample grid failed: {e:#}");
                }
            }
        }
        if stopping {
            pb.abandon_with_message(format!("interrupted: saved {}", args.out.display()));
            bail!("interrupted at step {}; resume with --resume", tr.opt.step);
        }
    }
    pb.finish();
    Ok(avg.unwrap_or(last))
}

/// Starts the UNet and text encoder from another stage-2 checkpoint's EMA weights, as
/// SD-inpainting starts from SD's text-to-image weights. Where this task's UNet input
/// convolution is wider, the source's kernels keep the latent channels and the new
/// conditioning channels start at zero, so training begins from the source model exactly.
fn init_from(
    tr: &mut Trainer,
    path: &std::path::Path,
    cfg: &ModelConfig,
    tok: &str,
) -> Result<usize> {
    let ck = Checkpoint::load(path)?;
    ck.require_kind("ldm", &format!("--init-from {}", path.display()))?;
    let src: ModelConfig =
        serde_json::from_str(ck.meta("config")?).context("--init-from checkpoint `config`")?;
    if src.vae != cfg.vae || src.latent_scale != cfg.latent_scale {
        bail!(
            "--init-from {} was trained on another autoencoder (latent scale {} vs {}): pass the \
             same --autoencoder",
            path.display(),
            src.latent_scale,
            cfg.latent_scale
        );
    }
    if ck.meta("tokenizer")? != tok {
        bail!("--init-from {} used another tokenizer", path.display());
    }
    let (ema, raw) = (ck.group("ema"), ck.group("p"));
    let conv_in = format!("{UNET}conv_in.weight");
    let mut n = 0;
    for (name, shape) in cfg.param_specs()? {
        if name.starts_with(ldm_edge::arch::VAE) {
            continue;
        }
        let (s, d) = ema
            .get(&name)
            .or_else(|| raw.get(&name))
            .with_context(|| format!("--init-from {} has no `{name}`", path.display()))?;
        let data = if *s == shape {
            d.clone()
        } else if name == conv_in
            && s.len() == 4
            && s[0] == shape[0]
            && s[1] < shape[1]
            && s[2..] == shape[2..]
        {
            widen_input_channels(d, s, &shape)
        } else {
            bail!("`{name}` is {s:?} in {}, {shape:?} here", path.display());
        };
        tr.store.initial.insert(name, (shape, data));
        n += 1;
    }
    Ok(n)
}

/// A conv kernel [out, in, kh, kw] widened to [out, in', kh, kw] with zeros in the new inputs.
fn widen_input_channels(d: &[f32], from: &[usize], to: &[usize]) -> Vec<f32> {
    let k = from[2] * from[3];
    let mut out = vec![0.0; to.iter().product()];
    for o in 0..from[0] {
        let src = &d[o * from[1] * k..(o + 1) * from[1] * k];
        out[o * to[1] * k..o * to[1] * k + src.len()].copy_from_slice(src);
    }
    out
}

/// The standard normal quantile for small probabilities (caption dropout threshold), by
/// bisection on erf; exact enough for a rate.
fn normal_quantile(p: f32) -> f32 {
    if p <= 0.0 {
        return f32::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f32::INFINITY;
    }
    let cdf = |x: f64| 0.5 * (1.0 + libm_erf(x / std::f64::consts::SQRT_2));
    let (mut lo, mut hi) = (-10.0f64, 10.0f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if cdf(mid) < p as f64 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (0.5 * (lo + hi)) as f32
}

fn libm_erf(x: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7): enough to place a dropout threshold.
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
            + 0.254829592)
            * t
            * (-x * x).exp();
    if x >= 0.0 {
        y
    } else {
        -y
    }
}

#[cfg(test)]
mod tests {
    use super::widen_input_channels;

    #[test]
    fn widened_kernels_keep_the_old_inputs_and_zero_the_new() {
        // 2 outputs, 1 -> 3 inputs, 1x2 kernels.
        let d = [1.0, 2.0, 3.0, 4.0];
        let w = widen_input_channels(&d, &[2, 1, 1, 2], &[2, 3, 1, 2]);
        assert_eq!(
            w,
            vec![1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]
        );
    }
}
