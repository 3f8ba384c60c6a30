//! The quantization report a model file carries under `provenance.quantization`: what each
//! component is stored as, and, when the quantizer measured it, what that costs in image quality
//! against the full-precision model. Every map is a `BTreeMap` and every figure is rounded, so
//! the same run writes the same header bytes.
use crate::format::{DType, ModelWriter};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// The key under `provenance`.
pub const KEY: &str = "quantization";

/// Tensors of one dtype in one component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub tensors: usize,
    pub bytes: u64,
}

/// Same-seed image quality of the stored model against the full-precision reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Where the prompts came from (the shapes held-out captions, or a file).
    pub prompt_set: String,
    pub prompts: usize,
    /// Prompt i is generated with seed `seed_first + i`, by both models.
    pub seed_first: u64,
    pub sampler: String,
    pub steps: usize,
    pub guidance: f32,
    pub image_size: usize,
    pub backend: String,
    pub psnr_db_mean: f64,
    pub psnr_db_min: f64,
    pub ssim_mean: f64,
    pub ssim_min: f64,
}

/// The shapes checker's accuracy (percent) on the same images: reference, then quantized.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckerChange {
    pub prompts: usize,
    pub reference_per_attribute: f64,
    pub quantized_per_attribute: f64,
    /// quantized - reference, in percentage points.
    pub change_points: f64,
    /// Per attribute: [reference, quantized] percent.
    pub attributes: BTreeMap<String, [f64; 2]>,
}

/// One unit's measured sensitivity: the image PSNR against the reference when only it is
/// stored in q8 (or q4) and everything else stays full precision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitSensitivity {
    pub unit: String,
    pub q8_db: f64,
    pub q4_db: f64,
}

/// What the sensitivity analysis measured; the full table is in the quantizer's JSON output,
/// the header keeps the most sensitive units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sensitivity {
    /// `tensor`, `block` or `stage`: how tensors were grouped into units.
    pub unit: String,
    pub units: usize,
    pub prompts: usize,
    pub steps: usize,
    pub image_size: usize,
    /// How the q8 figure was obtained: `measured`, or `estimated from q4` (-25.2 dB of error
    /// power: the q8 step is 7/127 of the q4 step).
    pub q8: String,
    pub most_sensitive: Vec<UnitSensitivity>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantReport {
    /// The program and version that wrote it.
    pub tool: String,
    /// `quantize`, `export` or `import`.
    pub by: String,
    /// `f32`, `f16`, `q8`, `q4` or `mixed`.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_psnr_db: Option<f64>,
    /// What "full precision" was for the measurements.
    pub reference: String,
    /// Per component (`text_encoder`, `unet`, `vae`, `tiny_decoder`, `preview`), per dtype.
    pub components: BTreeMap<String, BTreeMap<String, Tally>>,
    /// Bytes of tensor data (the file minus header and alignment padding).
    pub tensor_bytes: u64,
    /// The same tensors all in f16: what `--budget-bytes` is usually quoted against.
    pub f16_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<Measured>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checker: Option<CheckerChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<Sensitivity>,
    /// Anything a reader should know (tensors kept back from the search, and why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Rounds a figure for the header: two decimals are far below the run-to-run meaning of any of
/// them, and keep the JSON short.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Rounds to four decimals (SSIM).
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// The component a tensor belongs to: its first path segment.
pub fn component(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

impl QuantReport {
    /// A report of dtype counts and bytes only (no measurement), from the tensors added to `w`.
    pub fn counts(tool: &str, by: &str, target: &str, reference: &str, w: &ModelWriter) -> Self {
        let mut components: BTreeMap<String, BTreeMap<String, Tally>> = BTreeMap::new();
        let (mut tensor_bytes, mut f16_bytes) = (0u64, 0u64);
        for (name, dtype, shape, bytes) in w.tensor_list() {
            let t = components
                .entry(component(name).to_string())
                .or_default()
                .entry(dtype.name().to_string())
                .or_default();
            t.tensors += 1;
            t.bytes += bytes;
            tensor_bytes += bytes;
            let numel = shape.iter().product::<u64>();
            f16_bytes += DType::F16.byte_len(numel).unwrap_or(u64::MAX);
        }
        Self {
            tool: tool.to_string(),
            by: by.to_string(),
            target: target.to_string(),
            budget_bytes: None,
            min_psnr_db: None,
            reference: reference.to_string(),
            components,
            tensor_bytes,
            f16_bytes,
            measured: None,
            checker: None,
            sensitivity: None,
            notes: Vec::new(),
        }
    }

    /// Tools that add or replace tensors of a quantized file (preview maps, the tiny decoder)
    /// keep its report true: the counts are redone from `w`, the measurement (of the model's
    /// own images, which those tensors do not touch) is kept. No report, nothing to do.
    pub fn recount_in(w: &mut ModelWriter) -> crate::Result<()> {
        let prov = w.meta_mut().get("provenance").cloned();
        let Some(mut r) = prov
            .map(|p| Self::from_meta(&serde_json::json!({ "provenance": p })))
            .transpose()?
            .flatten()
        else {
            return Ok(());
        };
        let fresh = Self::counts(&r.tool, &r.by, &r.target, &r.reference, w);
        r.components = fresh.components;
        r.tensor_bytes = fresh.tensor_bytes;
        r.f16_bytes = fresh.f16_bytes;
        r.insert_into(w.meta_mut())
    }

    /// Stores the report under `provenance.quantization` of a header being written (creating
    /// `provenance` when missing; replacing an older report).
    pub fn insert_into(&self, meta: &mut Map<String, Value>) -> crate::Result<()> {
        let v = serde_json::to_value(self)
            .map_err(|e| crate::Error::Config(format!("quantization report: {e}")))?;
        let prov = meta
            .entry("provenance")
            .or_insert_with(|| Value::Object(Map::new()));
        match prov {
            Value::Object(p) => {
                p.insert(KEY.to_string(), v);
                Ok(())
            }
            _ => Err(crate::Error::Config(
                "the header's `provenance` is not an object".into(),
            )),
        }
    }

    /// The report stored in a header, if any.
    pub fn from_meta(meta: &Value) -> crate::Result<Option<Self>> {
        match meta.get("provenance").and_then(|p| p.get(KEY)) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| crate::Error::Config(format!("provenance.{KEY}: {e}"))),
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64)
}

impl fmt::Display for QuantReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "target {} (by {}, {})", self.target, self.by, self.tool)?;
        if let Some(b) = self.budget_bytes {
            write!(f, ", budget {} ({b} bytes)", mib(b))?;
        }
        if let Some(p) = self.min_psnr_db {
            write!(f, ", floor {p} dB")?;
        }
        writeln!(f)?;
        writeln!(f, "  reference: {}", self.reference)?;
        writeln!(
            f,
            "  tensor data {} = {:.3}x the all-f16 {}",
            mib(self.tensor_bytes),
            self.tensor_bytes as f64 / self.f16_bytes.max(1) as f64,
            mib(self.f16_bytes)
        )?;
        for (comp, by) in &self.components {
            let parts: Vec<String> = by
                .iter()
                .map(|(d, t)| format!("{d} {} ({})", t.tensors, mib(t.bytes)))
                .collect();
            writeln!(f, "  {comp:<13} {}", parts.join(", "))?;
        }
        match &self.measured {
            None => writeln!(f, "  image quality: not measured")?,
            Some(m) => writeln!(
                f,
                "  vs reference: PSNR {:.2} dB mean / {:.2} min, SSIM {:.4} mean / {:.4} min \
                 ({} prompts of {}, seeds {}..={}, {} {} steps, guidance {}, {} px, {})",
                m.psnr_db_mean,
                m.psnr_db_min,
                m.ssim_mean,
                m.ssim_min,
                m.prompts,
                m.prompt_set,
                m.seed_first,
                m.seed_first + m.prompts.saturating_sub(1) as u64,
                m.sampler,
                m.steps,
                m.guidance,
                m.image_size,
                m.backend
            )?,
        }
        if let Some(c) = &self.checker {
            writeln!(
                f,
                "  checker per-attribute accuracy: {:.1}% -> {:.1}% ({:+.1} points, {} prompts)",
                c.reference_per_attribute, c.quantized_per_attribute, c.change_points, c.prompts
            )?;
        }
        if let Some(s) = &self.sensitivity {
            let worst: Vec<String> = s
                .most_sensitive
                .iter()
                .map(|u| format!("{} (q8 {:.1} / q4 {:.1} dB)", u.unit, u.q8_db, u.q4_db))
                .collect();
            writeln!(
                f,
                "  sensitivity: {} {}s, {} prompts, {} steps at {} px (q8 {}); most sensitive: {}",
                s.units,
                s.unit,
                s.prompts,
                s.steps,
                s.image_size,
                s.q8,
                worst.join(", ")
            )?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}
