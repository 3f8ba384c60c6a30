//! `ldm-host export`: an `ldm` checkpoint to a `.ldm` model file. The EMA weights are exported
//! where they exist (they sample better than the raw weights), the raw ones otherwise (the
//! frozen autoencoder). The recipe and training figures go into the provenance.
use super::autoencoder::{encoder_param_names, FIXED_SCALE};
use super::checkpoint::Checkpoint;
use crate::init::storage_dtype;
use anyhow::{bail, Context, Result};
use ldm_edge::arch::ModelConfig;
use ldm_edge::format::{DType, ModelWriter};
use ldm_edge::model::SamplerDefaults;
use ldm_edge::quant_report::QuantReport;
use serde_json::json;
use std::path::Path;

/// Puts the decoder of `ae` (a `train autoencoder --decoder-only` run) into the stage-2
/// checkpoint `ck`. Only safe when the latent space is unchanged, so the encoder tensors must
/// equal the ones `ck` was trained with bit for bit, and the latent scale too.
pub fn swap_decoder(ck: &mut Checkpoint, ae: &Checkpoint) -> Result<usize> {
    ae.require_kind("autoencoder", "--decoder")?;
    let cfg: ModelConfig =
        serde_json::from_str(ck.meta("config")?).context("checkpoint `config`")?;
    let vae: ldm_edge::arch::VaeConfig =
        serde_json::from_str(ae.meta("vae")?).context("--decoder checkpoint `vae`")?;
    // A decoder-only run carries its frozen encoder's scale from the first checkpoint on.
    let scale: f32 = ae
        .meta("latent_scale")
        .or_else(|_| ae.meta(FIXED_SCALE))
        .context("--decoder: the autoencoder run did not finish")?
        .parse()
        .context("--decoder: latent_scale is not a number")?;
    if vae != cfg.vae || scale != cfg.latent_scale {
        bail!(
            "--decoder has another architecture or latent scale ({scale} vs {}) than the model",
            cfg.latent_scale
        );
    }
    let new = ae.group("p");
    let encoder = encoder_param_names(&cfg.vae)?;
    let mut swapped = 0;
    for (path, _) in cfg.param_specs()? {
        if !path.starts_with(ldm_edge::arch::VAE) {
            continue;
        }
        let key = format!("p/{path}");
        let old = ck
            .tensors
            .get(&key)
            .with_context(|| format!("checkpoint has no tensor `{path}`"))?;
        let t = new
            .get(&path)
            .with_context(|| format!("--decoder has no tensor `{path}`"))?;
        if t.0 != old.0 {
            bail!(
                "--decoder tensor `{path}` is {:?}, the model's {:?}",
                t.0,
                old.0
            );
        }
        if encoder.contains(&path) {
            if t.1 != old.1 {
                bail!(
                    "--decoder's encoder differs from the one the model was trained on (`{path}`): \
                     only a decoder fine-tuned with `train autoencoder --decoder-only` from this \
                     model's autoencoder keeps its latent space"
                );
            }
        } else {
            ck.tensors.insert(key, t.clone());
            ck.tensors.remove(&format!("ema/{path}"));
            swapped += 1;
        }
    }
    let recipe = format!(
        "{}\ndecoder (fine-tuned, encoder frozen): {}",
        ck.meta("recipe").unwrap_or(""),
        ae.meta("recipe").unwrap_or("?")
    );
    ck.meta.insert("recipe".into(), recipe);
    if let Ok(p) = ae.meta("psnr") {
        ck.meta.insert("decoder_psnr".into(), p.to_string());
    }
    Ok(swapped)
}

/// Merges LoRA files (`ldm_edge::import::lora`: kohya or diffusers/PEFT layout) into the
/// checkpoint's UNet and text encoder weights, the EMA and the raw ones alike, so the export
/// writes (and quantizes) the merged model. Returns the layers adapted per file; the recipe
/// records the files.
pub fn merge_lora(ck: &mut Checkpoint, loras: &[(std::path::PathBuf, f32)]) -> Result<Vec<usize>> {
    if loras.is_empty() {
        return Ok(Vec::new());
    }
    let cfg: ModelConfig =
        serde_json::from_str(ck.meta("config")?).context("checkpoint `config`")?;
    let params: std::collections::BTreeMap<String, Vec<usize>> =
        cfg.param_specs()?.into_iter().collect();
    let mut merge = ldm_edge::import::lora::LoraMerge::new();
    let mut counts = Vec::new();
    for (file, scale) in loras {
        counts.push(
            merge
                .add(file, *scale, &params)
                .with_context(|| format!("LoRA {}", file.display()))?,
        );
    }
    for (key, (_, data)) in ck.tensors.iter_mut() {
        if let Some(path) = key.strip_prefix("ema/").or_else(|| key.strip_prefix("p/")) {
            merge.apply(path, data);
        }
    }
    let list: Vec<String> = loras
        .iter()
        .map(|(f, s)| format!("{}:{s}", f.display()))
        .collect();
    let recipe = format!(
        "{}\nLoRA merged: {}",
        ck.meta("recipe").unwrap_or(""),
        list.join(", ")
    );
    ck.meta.insert("recipe".into(), recipe);
    Ok(counts)
}

pub fn to_ldm(
    ck: &Checkpoint,
    dtype: DType,
    out: &Path,
    prefer_ema: bool,
    extra: serde_json::Value,
) -> Result<u64> {
    let mut w = build(ck, dtype, prefer_ema, extra)?;
    let report = QuantReport::counts(
        concat!("ldm-host ", env!("CARGO_PKG_VERSION")),
        "export",
        dtype.name(),
        "the checkpoint's f32 weights (not measured: `ldm-host quantize` measures)",
        &w,
    );
    report.insert_into(w.meta_mut())?;
    w.write(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(std::fs::metadata(out).map(|m| m.len()).unwrap_or(0))
}

/// The model file of a checkpoint, in memory: header, preview map and every parameter
/// (matrices and kernels in `dtype`). `ldm-host quantize` starts from it at f32.
pub fn build(
    ck: &Checkpoint,
    dtype: DType,
    prefer_ema: bool,
    extra: serde_json::Value,
) -> Result<ModelWriter> {
    // Only a stage-2 checkpoint holds a whole model (an autoencoder run has no UNet).
    ck.require_kind("ldm", "the checkpoint to export")?;
    let cfg: ModelConfig =
        serde_json::from_str(ck.meta("config")?).context("checkpoint `config`")?;
    cfg.validate()?;
    let tokenizer: serde_json::Value =
        serde_json::from_str(ck.meta("tokenizer")?).context("checkpoint `tokenizer`")?;
    let figures: serde_json::Map<String, serde_json::Value> = ck
        .meta
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "config" | "tokenizer" | "recipe" | "kind"))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    // SR is conditioned by its low-res input and run without a prompt, so guidance is off by
    // default; text-conditioned tasks keep the guided default.
    let sampler = match cfg.task {
        ldm_edge::arch::Task::Sr => SamplerDefaults {
            guidance: 1.0,
            ..Default::default()
        },
        // A consistency-distilled student: the LCM sampler, 4 steps, the scale it was
        // distilled for.
        _ if cfg.unet.time_cond_proj_dim.is_some() => SamplerDefaults {
            sampler: "lcm".into(),
            steps: 4,
            guidance: ck
                .meta("lcm_guidance")
                .ok()
                .and_then(|g| g.parse().ok())
                .unwrap_or(5.0),
            ..Default::default()
        },
        _ => SamplerDefaults::default(),
    };
    let ema = ck.group("ema");
    let raw = ck.group("p");
    let load = |path: &str| -> ldm_edge::Result<Vec<f32>> {
        let t = if prefer_ema { ema.get(path) } else { None };
        t.or_else(|| raw.get(path))
            .map(|(_, d)| d.to_vec())
            .ok_or_else(|| ldm_edge::Error::MissingWeight(path.to_string()))
    };
    let (map, fit) = ldm_edge::preview::fit::fit_from(&cfg, &load)
        .context("fitting the latent-to-RGB preview map")?;
    let meta = json!({
        "config": cfg,
        "sampler": sampler,
        "tokenizer": tokenizer,
        "provenance": {
            "kind": "trained by ldm-host (burn)",
            "dtype": format!("{dtype:?}"),
            "weights": if prefer_ema { "ema" } else { "raw" },
            "recipe": ck.meta("recipe").unwrap_or(""),
            "training": figures,
            "eval": extra,
            "tool": concat!("ldm-host ", env!("CARGO_PKG_VERSION")),
            "preview": fit.provenance(),
        },
    });
    let mut w = ModelWriter::new(meta)?;
    map.add_to(&mut w)?;
    for (path, shape) in cfg.param_specs()? {
        let t = if prefer_ema { ema.get(&path) } else { None };
        let (s, d) = t
            .or_else(|| raw.get(&path))
            .with_context(|| format!("checkpoint has no tensor `{path}`"))?;
        if *s != shape {
            bail!("checkpoint tensor `{path}` is {s:?}, the architecture needs {shape:?}");
        }
        w.add(&path, &shape, d, storage_dtype(&shape, dtype))?;
    }
    Ok(w)
}
