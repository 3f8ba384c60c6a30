//! `ldm-host defaults`: rewrite the sampling defaults a model file carries (sampler, steps,
//! guidance), so `ldm generate -m F PROMPT` runs what the fleet should run with no flags. The
//! tensors are copied as stored; the old defaults go into the provenance.
use anyhow::{bail, Context, Result};
use clap::Args;
use ldm_edge::format::ModelWriter;
use ldm_edge::model::Model;
use std::path::PathBuf;

#[derive(Args)]
pub struct DefaultsArgs {
    /// The model file to read.
    pub input: PathBuf,
    /// Where to write the model with its new defaults; may be the input (the file is written
    /// beside it and renamed over it, so a running `ldm` keeps the mapping it has).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Sampler name (`ldm generate --help` lists them).
    #[arg(long)]
    pub sampler: Option<String>,
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (for a guidance-distilled student: the scale it is given).
    #[arg(long)]
    pub guidance: Option<f32>,
}

pub fn run(a: &DefaultsArgs) -> Result<()> {
    if a.sampler.is_none() && a.steps.is_none() && a.guidance.is_none() {
        bail!("nothing to change: give --sampler, --steps or --guidance");
    }
    let model =
        Model::open(&a.input).with_context(|| format!("cannot open {}", a.input.display()))?;
    let old = model.sampler.clone();
    let mut new = old.clone();
    if let Some(s) = &a.sampler {
        s.parse::<ldm_edge::sampler::SamplerKind>()
            .map_err(|e| anyhow::anyhow!("--sampler {s}: {e}"))?;
        new.sampler = s.clone();
    }
    if let Some(n) = a.steps {
        new.steps = n;
    }
    if let Some(g) = a.guidance {
        new.guidance = g;
    }
    // The checks a request with these settings would meet, before anything is written.
    ldm_edge::pipeline::check_sampling(new.steps, new.guidance)
        .context("the new defaults would be refused by every request")?;
    let mut meta = model.file.meta().clone();
    let obj = meta
        .as_object_mut()
        .context("the model header is not a JSON object")?;
    obj.insert("sampler".into(), serde_json::to_value(&new)?);
    if let Some(p) = obj.get_mut("provenance").and_then(|p| p.as_object_mut()) {
        let history = p
            .entry("sampler_defaults_history")
            .or_insert_with(|| serde_json::json!([]));
        if let Some(h) = history.as_array_mut() {
            h.push(serde_json::json!({
                "sampler": old.sampler,
                "steps": old.steps,
                "guidance": old.guidance,
            }));
        }
    }
    let mut w = ModelWriter::new(meta)?;
    w.add_all_from(&model.file, |_| true)?;
    w.write(&a.output)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    Model::open(&a.output).with_context(|| format!("{} does not load back", a.output.display()))?;
    eprintln!(
        "wrote {}: {} {} steps, guidance {} (was {} {} steps, guidance {})",
        a.output.display(),
        new.sampler,
        new.steps,
        new.guidance,
        old.sampler,
        old.steps,
        old.guidance
    );
    Ok(())
}
