//! `ldm-host distill lcm`: latent consistency distillation (Luo et al. 2023, algorithm 1) of a
//! stage-2 checkpoint into a student that takes the guidance scale as an input
//! (`time_cond_proj_dim`, as LCM-SD) and samples in 1-8 steps with the LCM sampler.
//!
//! Each step, for a batch of dataset latents `x0`, captions and scales `w ~ U[w_min, w_max]`
//! (`w` is diffusers' LCM input, the CFG scale minus one):
//! 1. a timestep pair of the distillation schedule, `t` and `s = t - k` (k = 1000 / 50);
//!    `x_t = sqrt(a_t) x0 + sqrt(1 - a_t) z`;
//! 2. the frozen teacher with classifier-free guidance at scale `w + 1` and one DDIM step gives
//!    `x_s`;
//! 3. the target network (an EMA of the student) maps `x_s` to `f_target = c_skip(s) x_s +
//!    c_out(s) x0(x_s)`, the student maps `x_t` to `f_student` the same way, with the boundary
//!    scalings of the runtime's LCM sampler;
//! 4. the loss is the pseudo-Huber distance `sqrt((f_student - f_target)^2 + c^2) - c`.
//!
//! The student starts as the teacher: its UNet copies the teacher's and `cond_proj` starts at
//! zero, so the w-embedding adds nothing until training moves it. The text encoder and the
//! autoencoder stay frozen (the teacher's), as in LCM.
use super::burn_ops::{BurnOps, BT};
use super::checkpoint::Checkpoint;
use super::data::TrainSet;
use super::ldm::{encode_all, tokenize_all};
use super::optim::{AdamW, AdamWConfig, Ema};
use super::params::ParamStore;
use super::runner::{progress, stop_flag, CsvLog};
use super::{device, gaussian, step_seed, uniform_indices};
use anyhow::{bail, Context, Result};
use ldm_edge::arch::{text, unet, ModelConfig, Task, TEXT, UNET};
use ldm_edge::sampler::lcm::ORIGINAL_STEPS;
use ldm_edge::sampler::{NoiseSchedule, ScheduleConfig};
use ldm_edge::tokenizer::TextTokenizer;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub struct LcmArgs {
    pub teacher: PathBuf,
    /// Width of the w-embedding (diffusers `time_cond_proj_dim`; LCM-SD uses 256).
    pub cond_dim: usize,
    pub w_min: f32,
    pub w_max: f32,
    /// The pseudo-Huber constant (LCM: 0.001).
    pub huber_c: f32,
    /// The target network's EMA decay (LCM: 0.95).
    pub target_decay: f32,
    /// The guidance scale the exported model uses by default.
    pub guidance: f32,
    pub steps: u64,
    pub batch: usize,
    pub lr: f32,
    pub warmup: u64,
    pub decay_start: u64,
    pub seed: u64,
    pub out: PathBuf,
    pub resume: bool,
    pub ckpt_every: u64,
    pub log: Option<PathBuf>,
    pub recipe: String,
    pub quiet: bool,
    pub max_seconds: Option<f64>,
}

/// `(c_skip, c_out)` of the runtime's LCM sampler at training timestep `t`.
fn boundary(t: usize) -> (f32, f32) {
    let st = t as f64 * 10.0;
    let d = st * st + 0.25;
    ((0.25 / d) as f32, (st / d.sqrt()) as f32)
}

type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// The teacher's config, tokenizer and f32 weights, from a stage-2 checkpoint (EMA weights
/// where it has them, as its export would use) or from a model file (any dtype, decoded), so
/// shipped and imported models can be distilled too.
fn load_teacher(path: &std::path::Path) -> Result<(ModelConfig, String, Weights)> {
    if path.extension().is_some_and(|e| e == "ldm") {
        let m = ldm_edge::model::Model::open(path)
            .with_context(|| format!("cannot open the teacher model {}", path.display()))?;
        let tok = m
            .file
            .meta()
            .get("tokenizer")
            .context("the teacher model has no tokenizer")?
            .to_string();
        let mut w = Weights::new();
        for (name, _) in m.config.param_specs()? {
            let t = m
                .file
                .tensor(&name)
                .with_context(|| format!("the teacher model has no tensor `{name}`"))?;
            w.insert(name.clone(), (t.shape().to_vec(), t.to_f32()));
        }
        return Ok((m.config.clone(), tok, w));
    }
    let ck = Checkpoint::load(path)
        .with_context(|| format!("cannot read the teacher {}", path.display()))?;
    ck.require_kind("ldm", &path.display().to_string())?;
    let cfg: ModelConfig = serde_json::from_str(ck.meta("config")?).context("teacher `config`")?;
    let mut w = ck.group("p");
    w.extend(ck.group("ema"));
    Ok((cfg, ck.meta("tokenizer")?.to_string(), w))
}

/// A UNet forward pass on a frozen store, to the host.
#[allow(clippy::too_many_arguments)]
fn frozen_unet(
    store: &mut ParamStore,
    cfg: &ModelConfig,
    x: Vec<f32>,
    xshape: &[usize],
    t: Vec<f32>,
    ctx: &BT,
    w: Option<Vec<f32>>,
) -> Result<Vec<f32>> {
    let dev = store.device.clone();
    let b = t.len();
    let x = BT::from_vec(x, xshape, &dev);
    let t = BT::from_vec(t, &[b], &dev);
    let w = w.map(|w| BT::from_vec(w, &[b], &dev));
    let mut o = BurnOps::new(store);
    Ok(unet::forward(&mut o, &cfg.unet, UNET, &x, &t, ctx, w.as_ref())?.to_vec()?)
}

pub fn distill(set: &dyn TrainSet, a: &LcmArgs) -> Result<f32> {
    if !(a.w_min >= 0.0 && a.w_max >= a.w_min && a.w_max.is_finite()) {
        bail!(
            "--w-min {} / --w-max {} must satisfy 0 <= min <= max",
            a.w_min,
            a.w_max
        );
    }
    if a.cond_dim < 2 {
        bail!("--cond-dim must be at least 2");
    }
    let (tcfg, tokenizer_json, tw) = load_teacher(&a.teacher)?;
    if tcfg.task != Task::Txt2img {
        bail!(
            "only text-to-image teachers can be distilled (this one is {:?})",
            tcfg.task
        );
    }
    if tcfg.unet.time_cond_proj_dim.is_some() {
        bail!("the teacher is already guidance-distilled");
    }
    let mut scfg = tcfg.clone();
    scfg.unet.time_cond_proj_dim = Some(a.cond_dim);
    scfg.validate()?;
    let tok = TextTokenizer::from_json(&tokenizer_json, tcfg.text_encoder.max_position_embeddings)?;

    // The frozen teacher (text encoder, UNet, autoencoder) on the plain device.
    let mut frozen = ParamStore::new(device(false), false, a.seed);
    frozen.initial = tw.clone();
    frozen.strict = true;
    eprintln!(
        "encoding {} images with the teacher's autoencoder...",
        set.len()
    );
    let lat = encode_all(set, &tcfg, &mut frozen)?;
    let (ids, empty) = tokenize_all(set, &tok)?;
    let sched = NoiseSchedule::new(&ScheduleConfig::default())
        .map_err(|e| anyhow::anyhow!("noise schedule: {e}"))?;

    // The student: the teacher's UNet, cond_proj at zero.
    let cond_proj = format!("{UNET}time_embedding.cond_proj.weight");
    let proj_shape = vec![scfg.unet.block_out_channels[0], a.cond_dim];
    let mut student_init: HashMap<_, _> = tw
        .iter()
        .filter(|(k, _)| k.starts_with(UNET))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    student_init.insert(
        cond_proj.clone(),
        (proj_shape.clone(), vec![0.0; proj_shape.iter().product()]),
    );
    let mut store = ParamStore::new(device(true), true, a.seed);
    let mut opt = AdamW::new(AdamWConfig {
        lr: a.lr,
        warmup: a.warmup,
        decay_start: a.decay_start,
        total: a.steps,
        ..Default::default()
    });
    let mut ema = Ema::new(a.target_decay);
    // The target network: the student's EMA (the student itself until the first update).
    let mut target = ParamStore::new(device(false), false, a.seed);
    target.strict = true;
    if a.resume && a.out.exists() {
        let ck = super::autoencoder::restore(&a.out, &mut store, &mut opt)?;
        ck.require_kind("ldm", &a.out.display().to_string())?;
        store.initial.retain(|k, _| k.starts_with(UNET));
        target.initial = store.initial.clone();
        let dev = store.device.clone();
        for (n, (s, d)) in ck.group("ema") {
            if n.starts_with(UNET) {
                target.initial.insert(n.clone(), (s.clone(), d.clone()));
                ema.weights.insert(n, BT::from_vec(d, &s, &dev).t.inner());
            }
        }
        eprintln!("resuming {} at step {}", a.out.display(), opt.step);
    } else {
        store.initial = student_init.clone();
        store.strict = true;
        target.initial = student_init;
    }

    let mut log = match &a.log {
        Some(p) => Some(CsvLog::open(
            p,
            "step,loss,loss_avg,grad_norm,lr,img_per_s,elapsed_s",
        )?),
        None => None,
    };
    let stop = stop_flag();
    let pb = progress(a.steps, opt.step);
    if a.quiet {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let l = tcfg.text_encoder.max_position_embeddings;
    let hw = set.image_size() / tcfg.vae.factor();
    let z = tcfg.vae.latent_channels;
    let b = a.batch;
    let lshape = [b, z, hw, hw];
    let per = z * hw * hw;
    let k = sched.alphas_cumprod.len() / ORIGINAL_STEPS;
    let start = Instant::now();
    let first = opt.step;
    let (mut avg, mut last) = (None::<f32>, f32::NAN);
    let mut budget = a
        .max_seconds
        .map(|s| super::budget::TimeBudget::new(s, first, &opt.cfg));
    let fdev = frozen.device.clone();
    let sdev = store.device.clone();
    while opt.step < opt.cfg.total {
        let step = opt.step;
        let idx = uniform_indices(step_seed(a.seed, step, 1), b, set.len());
        let eps_z = gaussian(step_seed(a.seed, step, 5), b * per);
        let mut x0 = Vec::with_capacity(b * per);
        let mut id_batch = Vec::with_capacity(2 * b * l);
        for (j, &i) in idx.iter().enumerate() {
            for q in 0..per {
                let m = i * per + q;
                let zq = super::autoencoder::posterior_sample(
                    lat.mean[m],
                    lat.logvar[m],
                    eps_z[j * per + q],
                );
                x0.push(zq * tcfg.latent_scale);
            }
        }
        // [uncond; cond] for the teacher's guided pass.
        for _ in 0..b {
            id_batch.extend_from_slice(&empty);
        }
        for &i in &idx {
            id_batch.extend_from_slice(&ids[i]);
        }
        // Schedule points t = n k - 1 with n in 2..=50, so s = t - k >= k - 1.
        let ns = uniform_indices(step_seed(a.seed, step, 6), b, ORIGINAL_STEPS - 1);
        let t_hi: Vec<usize> = ns.iter().map(|&n| (n + 2) * k - 1).collect();
        let t_lo: Vec<usize> = t_hi.iter().map(|&t| t - k).collect();
        let u = uniform_indices(step_seed(a.seed, step, 7), b, 1 << 20);
        let w: Vec<f32> = u
            .iter()
            .map(|&v| a.w_min + (a.w_max - a.w_min) * v as f32 / (1 << 20) as f32)
            .collect();
        let noise = gaussian(step_seed(a.seed, step, 2), b * per);
        let ac = &sched.alphas_cumprod;
        let mut x_hi = Vec::with_capacity(b * per);
        for j in 0..b {
            let at = ac[t_hi[j]];
            for q in 0..per {
                x_hi.push(at.sqrt() * x0[j * per + q] + (1.0 - at).sqrt() * noise[j * per + q]);
            }
        }
        // Frozen text context, [uncond; cond].
        let ctx2 = {
            let idt = BT::from_vec(id_batch, &[2 * b, l], &fdev);
            let mut o = BurnOps::new(&mut frozen);
            text::forward(&mut o, &tcfg.text_encoder, TEXT, &idt)?
        };
        let ctx_host = ctx2.to_vec()?;
        let d = ctx2.shape[2];
        let ctx_c = BT::from_vec(ctx_host[b * l * d..].to_vec(), &[b, l, d], &fdev);
        // 2. The guided teacher and one DDIM step from t to s.
        let eps2 = frozen_unet(
            &mut frozen,
            &tcfg,
            [x_hi.clone(), x_hi.clone()].concat(),
            &[2 * b, z, hw, hw],
            [t_hi.clone(), t_hi.clone()]
                .concat()
                .iter()
                .map(|&t| t as f32)
                .collect(),
            &ctx2,
            None,
        )?;
        let mut x_lo = Vec::with_capacity(b * per);
        for j in 0..b {
            let (at, as_) = (ac[t_hi[j]], ac[t_lo[j]]);
            for q in 0..per {
                let i = j * per + q;
                let (eu, ec) = (eps2[i], eps2[b * per + i]);
                let e = eu + (w[j] + 1.0) * (ec - eu);
                let x0h = (x_hi[i] - (1.0 - at).sqrt() * e) / at.sqrt();
                x_lo.push(as_.sqrt() * x0h + (1.0 - as_).sqrt() * e);
            }
        }
        // 3. The target at s.
        let eps_t = frozen_unet(
            &mut target,
            &scfg,
            x_lo.clone(),
            &lshape,
            t_lo.iter().map(|&t| t as f32).collect(),
            &ctx_c,
            Some(w.clone()),
        )?;
        let mut f_target = Vec::with_capacity(b * per);
        let (mut ca, mut ce) = (Vec::with_capacity(b * per), Vec::with_capacity(b * per));
        for j in 0..b {
            let (asl, ath) = (ac[t_lo[j]], ac[t_hi[j]]);
            let (ks, ko) = boundary(t_lo[j]);
            let (hs, ho) = boundary(t_hi[j]);
            for q in 0..per {
                let i = j * per + q;
                let x0t = (x_lo[i] - (1.0 - asl).sqrt() * eps_t[i]) / asl.sqrt();
                f_target.push(ks * x_lo[i] + ko * x0t);
                // f_student = c_skip x + c_out (x - sqrt(1-a) eps) / sqrt(a) = ca x + ce eps.
                ca.push(hs + ho / ath.sqrt());
                ce.push(-ho * (1.0 - ath).sqrt() / ath.sqrt());
            }
        }
        // 4. The student at t, and the pseudo-Huber loss.
        let xs = BT::from_vec(x_hi.clone(), &lshape, &sdev);
        let ts = BT::from_vec(t_hi.iter().map(|&t| t as f32).collect(), &[b], &sdev);
        let ws = BT::from_vec(w.clone(), &[b], &sdev);
        let cs = BT::from_vec(ctx_host[b * l * d..].to_vec(), &[b, l, d], &sdev);
        let eps_s = {
            let mut o = BurnOps::new(&mut store);
            unet::forward(&mut o, &scfg.unet, UNET, &xs, &ts, &cs, Some(&ws))?
        };
        let ca = BT::from_vec(ca, &lshape, &sdev);
        let ce = BT::from_vec(ce, &lshape, &sdev);
        let ft = BT::from_vec(f_target, &lshape, &sdev);
        let fs = ca.t * xs.t + ce.t * eps_s.t;
        let c2 = a.huber_c * a.huber_c;
        let loss = ((fs - ft.t)
            .square()
            .add_scalar(c2)
            .sqrt()
            .sub_scalar(a.huber_c))
        .mean();
        let grads = loss.backward();
        let st = opt.step(&mut store, &grads);
        ema.update(&store, opt.step);
        for (n, t) in &ema.weights {
            if target.param(n).is_some() {
                target.set(n, t.clone());
            } else if let Some(e) = target.initial.get_mut(n) {
                e.1 = BT::new(t.clone(), e.0.clone()).to_vec()?;
            }
        }
        if let Some(bu) = budget.as_mut() {
            bu.update(&mut opt.cfg, opt.step);
            pb.set_length(opt.cfg.total);
        }
        let lv = loss.into_scalar::<f32>();
        if !lv.is_finite() {
            bail!("loss became {lv} at step {step}; lower --lr");
        }
        last = lv;
        let av = avg.map_or(lv, |x| 0.98 * x + 0.02 * lv);
        avg = Some(av);
        let secs = start.elapsed().as_secs_f64();
        let ips = (opt.step - first) as f64 * b as f64 / secs.max(1e-9);
        pb.set_position(opt.step);
        pb.set_message(format!("loss {av:.5} {ips:.1} img/s"));
        if let Some(lg) = log.as_mut() {
            lg.row(&format!(
                "{},{lv},{av},{},{},{ips:.2},{secs:.1}",
                opt.step, st.grad_norm, st.lr
            ))?;
        }
        let stopping = stop.load(Ordering::SeqCst);
        let end = opt.step >= opt.cfg.total;
        if opt.step % a.ckpt_every == 0 || stopping || end {
            checkpoint(a, &scfg, &tokenizer_json, &tw, &store, &opt, &ema, av)?.save(&a.out)?;
        }
        if stopping {
            pb.abandon_with_message(format!("interrupted: saved {}", a.out.display()));
            bail!("interrupted at step {}; resume with --resume", opt.step);
        }
    }
    pb.finish();
    Ok(avg.unwrap_or(last))
}

/// A stage-2 checkpoint of the student that `ldm-host export` turns into a model file: the
/// student's UNet (raw and EMA), the teacher's frozen text encoder and autoencoder, and the
/// sampler the student is meant for.
#[allow(clippy::too_many_arguments)]
fn checkpoint(
    a: &LcmArgs,
    cfg: &ModelConfig,
    tokenizer_json: &str,
    teacher: &Weights,
    store: &ParamStore,
    opt: &AdamW,
    ema: &Ema,
    loss_avg: f32,
) -> Result<Checkpoint> {
    let mut ck = Checkpoint::default();
    for (n, (s, d)) in teacher.iter().filter(|(n, _)| !n.starts_with(UNET)) {
        ck.put("p", n, s.clone(), d.clone());
    }
    for (n, s, d) in store.to_host()? {
        ck.put("p", &n, s, d);
    }
    ck.put_state(
        store,
        &[("m", &opt.m), ("v", &opt.v), ("ema", &ema.weights)],
    )?;
    for (k, v) in [
        ("kind", "ldm".to_string()),
        ("config", serde_json::to_string(cfg)?),
        ("tokenizer", tokenizer_json.to_string()),
        ("step", opt.step.to_string()),
        ("seed", a.seed.to_string()),
        ("device", super::device_name().to_string()),
        ("recipe", a.recipe.clone()),
        ("loss_avg", loss_avg.to_string()),
        ("distilled_from", a.teacher.display().to_string()),
        ("lcm_guidance", a.guidance.to_string()),
    ] {
        ck.meta.insert(k.into(), v);
    }
    Ok(ck)
}
