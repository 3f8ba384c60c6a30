//! `ldm-host quantize`: store a model's matrices and kernels as q8, q4, or a per-unit mix of
//! f16/q8/q4 chosen from measured sensitivity, then measure the result against the
//! full-precision model at the same seeds and write that measurement into the file.
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ldm_edge::arch::Task;
use ldm_edge::format::DType;
use ldm_edge::model::SamplerDefaults;
use ldm_edge::quant_report::{
    round2, round4, CheckerChange, Measured, QuantReport, Sensitivity, UnitSensitivity,
};
use serde::Serialize;
use std::path::PathBuf;

pub mod reference;
pub mod search;
pub mod trial;

use reference::Reference;
use search::{UnitCost, UnitKind, LEVELS};
use trial::{GenPlan, Image, Prompts};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    F16,
    Q8,
    Q4,
    /// Per unit among f16, q8 and q4, to meet --budget-bytes or --min-psnr.
    Mixed,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::F16 => "f16",
            Target::Q8 => "q8",
            Target::Q4 => "q4",
            Target::Mixed => "mixed",
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct QuantizeArgs {
    /// A `train ldm` / `distill lcm` checkpoint (.safetensors) or a .ldm file; its weights
    /// (dequantized, for a q8/q4 file) are the full-precision reference.
    pub input: PathBuf,
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    #[arg(long, value_enum)]
    pub target: Target,
    /// Most bytes of tensor data (the file minus header and padding). Mixed: what the search
    /// meets; uniform targets: checked.
    #[arg(long, conflicts_with = "min_psnr")]
    pub budget_bytes: Option<u64>,
    /// Least mean same-seed image PSNR (8-bit) against the reference. Mixed: what the search
    /// meets; every target: checked on the measured images, and nothing is written below it.
    #[arg(long)]
    pub min_psnr: Option<f64>,
    /// Prompts, one per line; default: the shapes held-out captions (then the shapes checker
    /// also scores the images).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Prompts per sensitivity trial (mixed only).
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    /// Prompts for the final measurement (0: none; then no floor can be checked).
    #[arg(long, default_value_t = 50)]
    pub measure: usize,
    /// What the sensitivity analysis quantizes at a time.
    #[arg(long, value_enum, default_value = "tensor")]
    pub unit: UnitKind,
    /// Probe each unit at q4 only and estimate q8 from it (the q8 step is 7/127 of q4's:
    /// -25.2 dB of error power); halves the trials of a large model.
    #[arg(long)]
    pub q4_probe_only: bool,
    /// Sampling steps; default: the model's.
    #[arg(long)]
    pub steps: Option<usize>,
    /// CFG scale; default: the model's.
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Seed of prompt 0 (prompt i uses seed + i).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Square image side for the trials and the measurement; default: the model's.
    #[arg(long)]
    pub size: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// A sentence for the report's notes (what the reference is, why); repeatable.
    #[arg(long)]
    pub note: Vec<String>,
    /// Also write the report with the whole sensitivity table as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What `--json` writes: the header's report and every unit's measured sensitivity.
#[derive(Serialize)]
struct JsonOut<'a> {
    output: String,
    file_bytes: u64,
    report: &'a QuantReport,
    sensitivity: &'a [UnitSensitivity],
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// The measured figures of one variant.
struct Outcome {
    quality: trial::Quality,
    images: Vec<Image>,
}

pub fn run(a: &QuantizeArgs) -> Result<()> {
    if a.target == Target::Mixed && a.budget_bytes.is_none() && a.min_psnr.is_none() {
        bail!("--target mixed needs --budget-bytes N or --min-psnr DB");
    }
    if a.min_psnr.is_some() && a.measure == 0 {
        bail!("--min-psnr is checked on measured images: --measure must be at least 1");
    }
    let mut r = reference::load(&a.input)?;
    let txt2img = r.task() == Task::Txt2img;
    let measure = if txt2img { a.measure } else { 0 };
    if !txt2img && (a.target == Target::Mixed || a.min_psnr.is_some()) {
        bail!(
            "this is a {} model: the quantizer measures text-to-image models only, so it can \
             neither search a mix nor check a floor here (use --target q8 or q4)",
            r.task()
        );
    }
    let sampler: SamplerDefaults = serde_json::from_value(
        r.meta
            .get("sampler")
            .cloned()
            .context("the model header has no `sampler`")?,
    )
    .context("the model header's `sampler`")?;
    let size = a.size.unwrap_or(r.config.image_size);
    let plan = GenPlan {
        settings: crate::eval::generate::GenSettings {
            steps: a.steps.unwrap_or(sampler.steps),
            guidance: a.guidance.unwrap_or(sampler.guidance),
            seed: a.seed,
            size: Some(size),
        },
        size,
        sampler: sampler.sampler.clone(),
        backend: a.backend.clone(),
    };
    let samples = if a.target == Target::Mixed {
        a.samples.max(1)
    } else {
        0
    };
    let prompts = Prompts::load(a.prompts.as_deref(), samples.max(measure))?;
    let stored = r.stored_dtypes();
    let ref_images = if samples.max(measure) > 0 {
        log::info!("reference images: {} prompts", samples.max(measure));
        let m = r.model(&stored)?;
        trial::images(&m, &prompts.texts, &plan).context("generating the reference images")?
    } else {
        Vec::new()
    };
    let mut notes = Vec::new();
    if !txt2img {
        notes.push(format!(
            "image quality not measured: the model's task is {} (the quantizer measures \
             text-to-image models)",
            r.task()
        ));
    }
    let mut sens_table = Vec::new();
    let mut sens_summary = None;
    let (dtypes, outcome) = match a.target {
        Target::Mixed => {
            let (units, table) = sensitivity(&mut r, a, &plan, &prompts, &ref_images, samples)?;
            notes.extend(units.notes.iter().cloned());
            let mut worst = table.clone();
            worst.sort_by(|x, y| x.q4_db.total_cmp(&y.q4_db).then(x.unit.cmp(&y.unit)));
            worst.truncate(8);
            sens_summary = Some(Sensitivity {
                unit: a.unit.name().to_string(),
                units: table.len(),
                prompts: samples,
                steps: plan.settings.steps,
                image_size: size,
                q8: if a.q4_probe_only {
                    "estimated from q4".into()
                } else {
                    "measured".into()
                },
                most_sensitive: worst,
            });
            sens_table = table;
            choose_mixed(&mut r, a, &units, &plan, &prompts, &ref_images, measure)?
        }
        t => {
            let want = match t {
                Target::F16 => DType::F16,
                Target::Q8 => DType::Q8,
                _ => DType::Q4,
            };
            let dtypes: Vec<DType> = (0..r.tensors.len())
                .map(|i| r.default_dtype(i, want))
                .collect();
            let outcome = if measure > 0 {
                Some(measure_variant(
                    &mut r,
                    &dtypes,
                    &plan,
                    &prompts,
                    &ref_images,
                    measure,
                )?)
            } else {
                None
            };
            (dtypes, outcome)
        }
    };
    r.clear_cache();

    let mut meta = r.meta.clone();
    if let Some(serde_json::Value::Object(p)) = meta.get_mut("provenance") {
        let label = match a.target {
            Target::Mixed => "Mixed".to_string(),
            t => t.name().to_uppercase(),
        };
        p.insert("dtype".into(), label.into());
    }
    let mut w = r.writer(&dtypes, meta)?;
    let mut report = QuantReport::counts(
        concat!("ldm-host ", env!("CARGO_PKG_VERSION")),
        "quantize",
        a.target.name(),
        &r.description,
        &w,
    );
    report.budget_bytes = a.budget_bytes;
    report.min_psnr_db = a.min_psnr;
    report.sensitivity = sens_summary;
    if let Some(o) = &outcome {
        let q = &o.quality;
        report.measured = Some(Measured {
            prompt_set: prompts.source.clone(),
            prompts: measure,
            seed_first: a.seed,
            sampler: plan.sampler.clone(),
            steps: plan.settings.steps,
            guidance: plan.settings.guidance,
            image_size: size,
            backend: a.backend.clone(),
            psnr_db_mean: round2(q.psnr_mean),
            psnr_db_min: round2(q.psnr_min),
            ssim_mean: round4(q.ssim_mean),
            ssim_min: round4(q.ssim_min),
        });
        // The checker reads shapes images at their trained size; at another size (a large
        // model measured small) its verdicts would mean nothing.
        let shapes_size = size == r.config.image_size && size <= crate::dataset::shapes::MAX_SIZE;
        if shapes_size {
            report.checker = checker_change(&prompts, &ref_images[..measure], &o.images, size);
        }
    }
    if let Some(b) = a.budget_bytes {
        if report.tensor_bytes > b {
            bail!(
                "the {} model holds {} bytes of tensors, over the budget of {b}: nothing written",
                a.target.name(),
                report.tensor_bytes
            );
        }
    }
    if let (Some(floor), Some(m)) = (a.min_psnr, &report.measured) {
        if m.psnr_db_mean < floor {
            bail!(
                "the {} model measures {:.2} dB mean PSNR against the reference ({} prompts), \
                 below the floor of {floor} dB: nothing written",
                a.target.name(),
                m.psnr_db_mean,
                m.prompts
            );
        }
    }
    notes.extend(a.note.iter().cloned());
    report.notes = notes;
    report.insert_into(w.meta_mut())?;
    let written = w
        .write(&a.output)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    ldm_edge::model::Model::open(&a.output)
        .with_context(|| format!("{} does not load back", a.output.display()))?;
    eprint!(
        "wrote {} ({} bytes)\n{report}",
        a.output.display(),
        written.file_len
    );
    if let Some(path) = &a.json {
        let out = JsonOut {
            output: a.output.display().to_string(),
            file_bytes: written.file_len,
            report: &report,
            sensitivity: &sens_table,
        };
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn measure_variant(
    r: &mut Reference,
    dtypes: &[DType],
    plan: &GenPlan,
    prompts: &Prompts,
    ref_images: &[Image],
    n: usize,
) -> Result<Outcome> {
    let pb = bar(1, &format!("measuring on {n} prompts"));
    let m = r.model(dtypes)?;
    let images = trial::images(&m, prompts.first(n), plan)?;
    pb.finish_and_clear();
    Ok(Outcome {
        quality: trial::quality(&ref_images[..n], &images, plan.size),
        images,
    })
}

fn checker_change(
    prompts: &Prompts,
    reference: &[Image],
    quantized: &[Image],
    size: usize,
) -> Option<CheckerChange> {
    let before = trial::alignment(prompts, reference, size)?;
    let after = trial::alignment(prompts, quantized, size)?;
    let pct = |t: &crate::eval::score::Tally| round2(100.0 * t.rate());
    let attributes = before
        .attributes
        .iter()
        .map(|(k, t)| {
            let q = after.attributes.get(k).map(pct).unwrap_or(0.0);
            (k.clone(), [pct(t), q])
        })
        .collect();
    let (b, q) = (pct(&before.per_attribute), pct(&after.per_attribute));
    Some(CheckerChange {
        prompts: reference.len(),
        reference_per_attribute: b,
        quantized_per_attribute: q,
        change_points: round2(q - b),
        attributes,
    })
}

/// The units of a mixed search, with what the sensitivity analysis measured.
struct Units {
    /// Tensor indices per unit.
    members: Vec<Vec<usize>>,
    costs: Vec<UnitCost>,
    /// Tensor dtypes outside the search (vectors, extras, units kept back).
    fixed: Vec<DType>,
    notes: Vec<String>,
}

/// Tensors a text-to-image run never reads: the autoencoder's encoder (img2img and inpainting
/// use it). Trials cannot measure them, so they are kept at q8 rather than given q4 for free.
fn unmeasurable(name: &str) -> bool {
    name.starts_with("vae.encoder.") || name.starts_with("vae.quant_conv.")
}

fn sensitivity(
    r: &mut Reference,
    a: &QuantizeArgs,
    plan: &GenPlan,
    prompts: &Prompts,
    ref_images: &[Image],
    samples: usize,
) -> Result<(Units, Vec<UnitSensitivity>)> {
    let fixed: Vec<DType> = (0..r.tensors.len())
        .map(|i| r.default_dtype(i, DType::Q8))
        .collect();
    let mut names: Vec<String> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut kept_back = 0;
    for (i, t) in r.tensors.iter().enumerate() {
        if !t.candidate {
            continue;
        }
        if unmeasurable(&t.name) {
            kept_back += 1;
            continue;
        }
        let u = search::unit_of(&t.name, a.unit);
        match names.iter().position(|n| *n == u) {
            Some(k) => members[k].push(i),
            None => {
                names.push(u);
                members.push(vec![i]);
            }
        }
    }
    let mut notes = Vec::new();
    if kept_back > 0 {
        notes.push(format!(
            "{kept_back} autoencoder encoder tensors kept at q8: text-to-image never runs them, \
             so their sensitivity cannot be measured (img2img and inpainting do run them)"
        ));
    }
    let probes: &[usize] = if a.q4_probe_only { &[2] } else { &[1, 2] };
    let pb = bar(
        (members.len() * probes.len()) as u64,
        &format!("sensitivity ({} {}s)", members.len(), a.unit.name()),
    );
    let stored = r.stored_dtypes();
    let large = r.tensors.iter().map(|t| t.bytes.len()).sum::<usize>() > 256 << 20;
    let refs = &ref_images[..samples];
    let mut costs = Vec::with_capacity(members.len());
    let mut table = Vec::with_capacity(members.len());
    for (k, m) in members.iter().enumerate() {
        let mut damage = [0.0f64; 3];
        for &level in probes {
            let mut dtypes = stored.clone();
            for &i in m {
                dtypes[i] = LEVELS[level];
            }
            let model = r.model(&dtypes)?;
            let imgs = trial::images(&model, prompts.first(samples), plan)
                .with_context(|| format!("sensitivity trial of {}", names[k]))?;
            damage[level] = trial::mse(refs, &imgs);
            pb.inc(1);
        }
        if a.q4_probe_only {
            damage[1] = damage[2] * (7.0f64 / 127.0).powi(2);
        }
        let bytes = [0, 1, 2].map(|l| m.iter().map(|&i| r.bytes_as(i, LEVELS[l])).sum());
        log::info!(
            "{}: q8 {:.2} dB, q4 {:.2} dB",
            names[k],
            trial::mse_db(damage[1]),
            trial::mse_db(damage[2])
        );
        table.push(UnitSensitivity {
            unit: names[k].clone(),
            q8_db: round2(trial::mse_db(damage[1])),
            q4_db: round2(trial::mse_db(damage[2])),
        });
        costs.push(UnitCost { bytes, damage });
        // A large model's encodings of this unit are not needed again until the final build.
        if large {
            r.clear_cache();
        }
    }
    pb.finish_and_clear();
    Ok((
        Units {
            members,
            costs,
            fixed,
            notes,
        },
        table,
    ))
}

fn assign(units: &Units, levels: &[usize]) -> Vec<DType> {
    let mut dtypes = units.fixed.clone();
    for (m, &l) in units.members.iter().zip(levels) {
        for &i in m {
            dtypes[i] = LEVELS[l];
        }
    }
    dtypes
}

fn choose_mixed(
    r: &mut Reference,
    a: &QuantizeArgs,
    units: &Units,
    plan: &GenPlan,
    prompts: &Prompts,
    ref_images: &[Image],
    measure: usize,
) -> Result<(Vec<DType>, Option<Outcome>)> {
    let fixed_bytes: u64 = {
        let in_units: std::collections::HashSet<usize> =
            units.members.iter().flatten().copied().collect();
        (0..r.tensors.len())
            .filter(|i| !in_units.contains(i))
            .map(|i| r.bytes_as(i, units.fixed[i]))
            .sum()
    };
    let measure_it = |r: &mut Reference, d: &[DType]| -> Result<Option<Outcome>> {
        if measure == 0 {
            return Ok(None);
        }
        measure_variant(r, d, plan, prompts, ref_images, measure).map(Some)
    };
    if let Some(budget) = a.budget_bytes {
        let Some(levels) = search::for_budget(&units.costs, fixed_bytes, budget) else {
            bail!(
                "a budget of {budget} bytes cannot be met: with every searched unit at q4 the \
                 model holds {} bytes of tensors: nothing written",
                fixed_bytes + units.costs.iter().map(|c| c.bytes[2]).sum::<u64>()
            );
        };
        let dtypes = assign(units, &levels);
        let o = measure_it(r, &dtypes)?;
        return Ok((dtypes, o));
    }
    let floor = a.min_psnr.unwrap_or(100.0);
    // The damage estimates add up MSE; the real model can fall short of the sum's promise, so
    // a miss is retried with a smaller allowance, down to all f16.
    let mut last = None;
    for shrink in [1.0, 0.5, 0.25, 0.1, 0.0] {
        let levels = search::for_floor(&units.costs, 10f64.powf(-floor / 10.0) * shrink);
        let dtypes = assign(units, &levels);
        let o = measure_it(r, &dtypes)?;
        let psnr = o.as_ref().map_or(f64::INFINITY, |o| o.quality.psnr_mean);
        log::info!("floor {floor} dB, allowance x{shrink}: measured {psnr:.2} dB");
        if psnr >= floor {
            return Ok((dtypes, o));
        }
        last = Some((dtypes, o));
    }
    // The caller reports the miss with the measured figure and writes nothing.
    last.context("no mixed candidate was built")
}
