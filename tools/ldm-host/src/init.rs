//! `ldm-host init`: a model file with deterministic random weights for a preset. Used for the
//! placeholder default model, tests and benchmarks until trained models exist.
use anyhow::{Context, Result};
use ldm_edge::arch::{init::random_param, ModelConfig};
use ldm_edge::format::{DType, ModelWriter};
use ldm_edge::model::SamplerDefaults;
use serde_json::json;
use std::path::Path;

/// Which tensors keep full precision when quantizing: biases and norm parameters are tiny and
/// sensitive, so only matrices and kernels are stored as q8/q4.
pub fn storage_dtype(shape: &[usize], want: DType) -> DType {
    match want {
        DType::Q8 | DType::Q4 if shape.len() < 2 => DType::F32,
        d => d,
    }
}

pub fn write_random_model(
    cfg: &ModelConfig,
    tokenizer_json: &str,
    seed: u64,
    dtype: DType,
    recipe: &str,
    out: &Path,
) -> Result<u64> {
    cfg.validate()?;
    let tokenizer: serde_json::Value =
        serde_json::from_str(tokenizer_json).context("tokenizer.json is not JSON")?;
    let meta = json!({
        "config": cfg,
        "sampler": SamplerDefaults::default(),
        "tokenizer": tokenizer,
        "provenance": {
            "kind": "random weights (untrained placeholder)",
            "seed": seed,
            "dtype": format!("{dtype:?}"),
            "recipe": recipe,
            "tool": concat!("ldm-host ", env!("CARGO_PKG_VERSION")),
        },
    });
    let mut w = ModelWriter::new(meta)?;
    for (path, shape) in cfg.param_specs()? {
        let data = random_param(seed, &path, &shape);
        w.add(&path, &shape, &data, storage_dtype(&shape, dtype))?;
    }
    let report = ldm_edge::quant_report::QuantReport::counts(
        concat!("ldm-host ", env!("CARGO_PKG_VERSION")),
        "init",
        dtype.name(),
        "random f32 weights (not measured)",
        &w,
    );
    report.insert_into(w.meta_mut())?;
    w.write(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(std::fs::metadata(out).map(|m| m.len()).unwrap_or(0))
}
