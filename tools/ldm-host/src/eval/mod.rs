//! `ldm-host eval`: text-alignment accuracy of a shapes model on the held-out prompt set (at
//! its guidance and at guidance 1.0, to show what CFG contributes), and the autoencoder's
//! reconstruction PSNR on held-out renders. Everything runs through the runtime pipeline.
use crate::dataset::shapes::{held_out_prompts, Scene};
use anyhow::{bail, Context, Result};
use clap::Args;
use ldm_edge::model::Model;
use ldm_edge::pipeline::Pipeline;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

pub mod checker;
pub mod generate;
pub mod inpaint;
pub mod psnr;
pub mod score;
pub mod sr;
pub mod ssim;

use generate::{generate, GenSettings};
use score::Alignment;

#[derive(Args, Clone, Debug)]
pub struct EvalArgs {
    /// The .ldm model to evaluate.
    #[arg(long)]
    pub model: PathBuf,
    /// Number of held-out prompts (alternating one-object and two-object-with-relation; a third
    /// use color+shape pairs held out of training). Acceptance uses >= 300. For an sr model:
    /// held-out images to upscale; for an inpaint model: one-object scenes to inpaint.
    #[arg(long, default_value_t = 300)]
    pub prompts: usize,
    /// Sampling steps; default: the model's.
    #[arg(long)]
    pub steps: Option<usize>,
    /// CFG scale; default: the model's. Guidance 1.0 is always measured as well.
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Seed of prompt 0 (prompt i uses seed + i).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Held-out renders for the autoencoder PSNR (0 skips it).
    #[arg(long, default_value_t = 100)]
    pub psnr_images: usize,
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Also write the images generated at the main guidance as a PNG grid (prompts in a .txt
    /// beside it).
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// Print the report as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
    /// The decoder of the generated images: full, or tiny (the model's tiny decoder).
    #[arg(long, default_value = "full")]
    pub decoder: String,
}

/// Accuracy at one guidance scale.
#[derive(Debug, Serialize)]
pub struct AtGuidance {
    pub guidance: f32,
    pub alignment: Alignment,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub backend: String,
    pub prompts: usize,
    pub steps: usize,
    pub seed: u64,
    pub image_size: usize,
    /// The requested guidance first, then 1.0 (no CFG) unless it was 1.0 already.
    pub runs: Vec<AtGuidance>,
    /// Mean per-image PSNR (dB) on held-out renders; null when skipped.
    pub autoencoder_psnr_db: Option<f64>,
    pub psnr_images: usize,
    /// The decoder the images were made with (full or tiny).
    pub decoder: String,
}

fn alignment_pass(
    pipe: &Pipeline,
    scenes: &[Scene],
    settings: GenSettings,
    quiet: bool,
) -> Result<(Alignment, Vec<Vec<u8>>, f64)> {
    let prompts: Vec<String> = scenes.iter().map(Scene::caption).collect();
    let t0 = Instant::now();
    let step = (prompts.len() / 10).max(1);
    let images = generate(pipe, &prompts, settings, &mut |done| {
        if !quiet && (done % step == 0 || done == prompts.len()) {
            eprintln!(
                "  guidance {}: {done}/{} images ({:.1}s)",
                settings.guidance,
                prompts.len(),
                t0.elapsed().as_secs_f64()
            );
        }
    })?;
    let size = pipe.model.config.image_size;
    let mut a = Alignment::default();
    for (scene, rgb) in scenes.iter().zip(&images) {
        a.add(scene, &checker::judge(scene, rgb, size));
    }
    Ok((a, images, t0.elapsed().as_secs_f64()))
}

pub fn evaluate(args: &EvalArgs) -> Result<Report> {
    if args.prompts == 0 {
        bail!("--prompts must be at least 1");
    }
    let model = Model::open(&args.model)
        .with_context(|| format!("cannot open model {}", args.model.display()))?;
    let size = model.config.image_size;
    if size < crate::dataset::shapes::MIN_SIZE {
        bail!(
            "the checker reads shapes images of at least {} px; this model makes {size} px",
            crate::dataset::shapes::MIN_SIZE
        );
    }
    // Hundreds of requests of one size: every plan is prepared once.
    let pipe = Pipeline::new(&model, ldm_edge::backend::select(&args.backend)?)
        .with_decoder(args.decoder.parse()?)?
        .with_plan_reuse(true);
    let steps = args.steps.unwrap_or(model.sampler.steps);
    let guidance = args.guidance.unwrap_or(model.sampler.guidance);
    let scenes = held_out_prompts(args.prompts);
    let mut scales = vec![guidance];
    if guidance != 1.0 {
        scales.push(1.0);
    }
    let mut runs = Vec::new();
    for (k, &g) in scales.iter().enumerate() {
        let settings = GenSettings {
            steps,
            guidance: g,
            seed: args.seed,
            size: None,
        };
        let (alignment, images, seconds) = alignment_pass(&pipe, &scenes, settings, false)?;
        if k == 0 {
            if let Some(path) = &args.grid {
                crate::dataset::grid::save_grid(path, &images, size)?;
                let caps: Vec<String> = scenes.iter().map(Scene::caption).collect();
                let txt = path.with_extension("txt");
                std::fs::write(&txt, caps.join("\n") + "\n")
                    .with_context(|| format!("cannot write {}", txt.display()))?;
            }
        }
        runs.push(AtGuidance {
            guidance: g,
            alignment,
            seconds,
        });
    }
    let autoencoder_psnr_db = match args.psnr_images {
        0 => None,
        n => Some(psnr::autoencoder_psnr(&pipe, n)?),
    };
    Ok(Report {
        model: args.model.display().to_string(),
        backend: pipe.backend.name().to_string(),
        prompts: args.prompts,
        steps,
        seed: args.seed,
        image_size: size,
        runs,
        autoencoder_psnr_db,
        psnr_images: args.psnr_images,
        decoder: args.decoder.clone(),
    })
}

/// SR and inpainting models have their own measures (see `sr` and `inpaint`).
fn run_task(args: &EvalArgs) -> Result<bool> {
    let model = Model::open(&args.model)
        .with_context(|| format!("cannot open model {}", args.model.display()))?;
    let task = model.config.task;
    if task == ldm_edge::arch::Task::Txt2img {
        return Ok(false);
    }
    let pipe = Pipeline::new(&model, ldm_edge::backend::select(&args.backend)?)
        .with_decoder(args.decoder.parse()?)?;
    let t0 = Instant::now();
    let report = match task {
        ldm_edge::arch::Task::Sr => {
            serde_json::to_value(sr::evaluate(&pipe, args.prompts, args.steps, args.seed)?)?
        }
        _ => serde_json::to_value(inpaint::evaluate(
            &pipe,
            args.prompts,
            args.steps,
            args.guidance,
            args.seed,
        )?)?,
    };
    let autoencoder_psnr_db = match args.psnr_images {
        0 => None,
        n => Some(psnr::autoencoder_psnr(&pipe, n)?),
    };
    let mut out = serde_json::json!({
        "model": args.model.display().to_string(),
        "task": task.to_string(),
        "backend": pipe.backend.name(),
        "seconds": t0.elapsed().as_secs_f64(),
        "autoencoder_psnr_db": autoencoder_psnr_db,
        "psnr_images": args.psnr_images,
    });
    if let (Some(o), Some(r)) = (out.as_object_mut(), report.as_object()) {
        o.extend(r.clone());
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(true)
}

pub fn run(args: &EvalArgs) -> Result<()> {
    if run_task(args)? {
        return Ok(());
    }
    let report = evaluate(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{}: {} held-out prompts, {} steps, {} px, backend {}",
        report.model, report.prompts, report.steps, report.image_size, report.backend
    );
    for r in &report.runs {
        println!("guidance {} ({:.1}s):", r.guidance, r.seconds);
        print!("{}", r.alignment.table());
    }
    if let Some(p) = report.autoencoder_psnr_db {
        println!(
            "autoencoder PSNR: {p:.2} dB (mean of {} held-out renders)",
            report.psnr_images
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the whole evaluation on the shipped model with a few prompts and steps: too few
    /// for accuracy figures, but every stage (generation, checker, PSNR, JSON) must work.
    #[test]
    fn evaluates_the_shipped_model() {
        let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes-32.ldm");
        let args = EvalArgs {
            model,
            prompts: 4,
            steps: Some(2),
            guidance: Some(3.0),
            seed: 0,
            psnr_images: 2,
            backend: "cpu".into(),
            grid: None,
            json: true,
            decoder: "full".into(),
        };
        let r = evaluate(&args).unwrap();
        assert_eq!(r.runs.len(), 2);
        assert_eq!(r.runs[1].guidance, 1.0);
        for run in &r.runs {
            let a = &run.alignment;
            assert_eq!(a.whole_one_object.total, 2);
            assert_eq!(a.whole_two_object.total, 2);
            assert_eq!(a.attributes["relation"].total, 2);
            assert_eq!(a.attributes["position"].total, 2);
        }
        let p = r.autoencoder_psnr_db.unwrap();
        assert!(p.is_finite() && p > 0.0, "{p}");
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["runs"][0]["alignment"]["per_attribute"]["total"].as_u64() == Some(13 * 2));
    }

    #[test]
    fn missing_model_is_a_clear_error() {
        let args = EvalArgs {
            model: PathBuf::from("/nonexistent/model.ldm"),
            prompts: 1,
            steps: None,
            guidance: None,
            seed: 0,
            psnr_images: 0,
            backend: "cpu".into(),
            grid: None,
            json: false,
            decoder: "full".into(),
        };
        let e = format!("{:#}", evaluate(&args).err().unwrap());
        assert!(e.contains("cannot open model"), "{e}");
    }
}
