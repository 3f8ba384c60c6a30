//! Samplers against diffusers' schedulers (fixtures from tests/parity/make_scheduler_fixtures.py;
//! no Python needed here):
//! - step by step: each case's scheduler config goes through the importer's mapping, and the
//!   sampler it names is stepped on diffusers' inputs (the stochastic ones with the same noise
//!   stream), every output compared;
//! - whole pipelines: the sd1 tiny fixture imported with each variant's scheduler_config.json
//!   (saved by diffusers) in place of its own, run with the sampler the import stored as the
//!   model's default, and compared with diffusers' image at >= 45 dB.
use ldm_edge::backend::Backend;
use ldm_edge::backend::{select, Tensor};
use ldm_edge::format::DType;
use ldm_edge::import::{read_scheduler_config, Import};
use ldm_edge::model::Model;
use ldm_edge::pipeline::{Cancel, Img2Img, Pipeline, Txt2Img};
use ldm_edge::sampler::{make_scheduler, NoiseGen, SamplerKind};
use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;
#[path = "support/scratch.rs"]
mod scratch;
use common::*;

#[derive(serde::Deserialize)]
struct Case {
    class: String,
    config: serde_json::Map<String, Value>,
    steps: usize,
    seed: u64,
    n: usize,
    init_noise_sigma: f32,
    timesteps: Vec<f32>,
    x_init: Vec<f32>,
    model_outputs: Vec<Vec<f32>>,
    prev_samples: Vec<Vec<f32>>,
}

#[derive(serde::Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[test]
fn samplers_step_like_diffusers_schedulers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/fixtures/schedulers.json");
    let f: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(f.cases.len(), 29);
    let mut seen = std::collections::HashSet::new();
    for c in &f.cases {
        let mut cfg_json = c.config.clone();
        cfg_json.insert("_class_name".into(), Value::String(c.class.clone()));
        let text = serde_json::to_string(&cfg_json).unwrap();
        let (cfg, kind) = read_scheduler_config(&text).unwrap();
        let label = format!("{} {:?} ({kind})", c.class, c.config);
        seen.insert(kind);
        let mut s = make_scheduler(kind, &cfg, c.steps, 0.0).unwrap();
        assert_eq!(s.timesteps().len(), c.timesteps.len(), "{label}: timesteps");
        for (a, b) in s.timesteps().iter().zip(&c.timesteps) {
            assert!(
                (a - b).abs() <= 1e-3,
                "{label}: timesteps {:?} vs {:?}",
                s.timesteps(),
                c.timesteps
            );
        }
        let sig = s.init_noise_sigma();
        assert!(
            (sig - c.init_noise_sigma).abs() <= 1e-5 * c.init_noise_sigma,
            "{label}: init_noise_sigma {sig} vs {}",
            c.init_noise_sigma
        );
        // Same stream as the fixture: the initial sample, then the samplers' noise.
        let mut noise = NoiseGen::new(c.seed);
        let mut x: Vec<f32> = noise
            .sample(c.n)
            .iter()
            .map(|v| v * c.init_noise_sigma)
            .collect();
        assert_eq!(x, c.x_init, "{label}: initial sample");
        let mut worst = 0.0f32;
        for i in 0..s.num_steps() {
            x = s.step(&c.model_outputs[i], i, &x, &mut noise);
            for (a, b) in x.iter().zip(&c.prev_samples[i]) {
                let e = (a - b).abs() / (1.0 + b.abs());
                worst = worst.max(e);
                assert!(e <= 2e-5, "{label}: step {i}: {a} vs {b}");
            }
        }
        eprintln!(
            "{label}: {} evaluations, max rel err {worst:.1e}",
            s.num_steps()
        );
    }
    assert_eq!(seen.len(), 8, "{seen:?}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn variant_dir(name: &str) -> PathBuf {
    fixture("schedulers").join(name)
}

/// sd1 with the variant's scheduler config, imported; checks the stored default sampler.
fn import_variant(name: &str, want_sampler: &str, karras: bool) -> Model {
    // Tests run in parallel and may import the same variant: one folder and file per call.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = scratch::fresh(&format!("sched-{name}-{call}"));
    copy_dir(&fixture("sd1"), &d);
    std::fs::copy(
        variant_dir(name).join("scheduler_config.json"),
        d.join("scheduler/scheduler_config.json"),
    )
    .unwrap();
    let imp = Import::from_diffusers(&d).unwrap();
    assert_eq!(imp.sampler.sampler, want_sampler, "{name}");
    assert_eq!(imp.sampler.schedule.use_karras_sigmas, karras, "{name}");
    let out = tmp("sched", &format!("{name}-{call}.ldm"));
    imp.write(DType::F32, &out, "tests/sampler_parity.rs")
        .unwrap();
    let _ = std::fs::remove_dir_all(&d);
    Model::open(&out).unwrap()
}

/// Vulkan tests fail when no device exists under CI=true / LDM_REQUIRE_VULKAN=1 and skip loudly
/// elsewhere, like tests/parity.rs.
fn backend(name: &str) -> Option<Box<dyn Backend>> {
    match select(name) {
        Ok(b) => Some(b),
        Err(e) => {
            let required = std::env::var("CI").is_ok_and(|v| v == "true")
                || std::env::var("LDM_REQUIRE_VULKAN").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "backend {name} is required here but unavailable: {e}"
            );
            eprintln!(
                "SKIP: backend {name} unavailable ({e}); set LDM_REQUIRE_VULKAN=1 to fail instead"
            );
            None
        }
    }
}

fn pipeline(name: &str, want_sampler: &str, karras: bool) {
    pipeline_on(name, want_sampler, karras, "cpu", 45.0);
}

fn pipeline_on(name: &str, want_sampler: &str, karras: bool, backend_name: &str, min_psnr: f64) {
    let Some(be) = backend(backend_name) else {
        return;
    };
    let m = import_variant(name, want_sampler, karras);
    let inp: Value = serde_json::from_str(
        &std::fs::read_to_string(variant_dir(name).join("ref/inputs.json")).unwrap(),
    )
    .unwrap();
    let args = &inp["pipe"];
    // The model's defaults, sampler included, then the fixture's arguments.
    let mut req = Txt2Img::new(&m, args["prompt"].as_str().unwrap()).unwrap();
    assert_eq!(req.sampler.name(), want_sampler);
    req.steps = args["num_inference_steps"].as_u64().unwrap() as usize;
    req.guidance = args["guidance_scale"].as_f64().unwrap() as f32;
    req.width = args["width"].as_u64().unwrap() as usize;
    req.height = args["height"].as_u64().unwrap() as usize;
    // The sampler's noise stream is NoiseGen(seed + 1), which the fixture injected.
    assert_eq!(inp["pipe_noise_seed"], 1);
    req.seed = 0;
    req.init_noise = Some(reference("sd1", "pipe_latents.npy"));
    let pipe = Pipeline::new(&m, be);
    let mut ticks = 0;
    let out = pipe
        .txt2img(&req, &mut |_| ticks += 1, &Cancel::new())
        .unwrap();
    assert_eq!(ticks, req.steps, "{name}: one progress report per step");
    let read = |f: &str| ldm_edge::npy::read_f32(&variant_dir(name).join("ref").join(f)).unwrap();
    let e_lat = max_abs(&out.latents, &read("pipe_final_latents.npy"));
    let want = read("pipe_image.npy");
    let (h, w) = (out.height, out.width);
    let mut se = 0.0f64;
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let ours = (out.image.data[(c * h + y) * w + x] / 2.0 + 0.5).clamp(0.0, 1.0);
                let theirs = want.data[(y * w + x) * 3 + c];
                se += ((ours - theirs) as f64).powi(2);
            }
        }
    }
    let psnr = 10.0 * (1.0 / (se / (h * w * 3) as f64).max(1e-20)).log10();
    eprintln!(
        "{name} ({want_sampler}) on {backend_name}: final latents max abs {e_lat:.2e}, image PSNR \
         {psnr:.1} dB"
    );
    assert!(
        psnr >= min_psnr,
        "{name} on {backend_name}: PSNR {psnr} < {min_psnr}"
    );
}

/// The samplers run the same loop on every backend: the two with the most state on Vulkan.
/// (Not in a build without the Vulkan backend, e.g. the aarch64 CPU run under qemu.)
#[cfg(feature = "vulkan")]
#[test]
fn heun_and_dpmpp_2m_sde_pipelines_on_vulkan_match_diffusers() {
    pipeline_on("heun", "heun", false, "vulkan", 40.0);
    pipeline_on("dpmpp_2m_sde", "dpmpp_2m_sde", true, "vulkan", 40.0);
}

/// img2img starts every sampler (those that evaluate some steps twice included) at the right
/// evaluation and reports one progress step per step it runs.
#[test]
fn img2img_runs_every_sampler_with_one_report_per_step() {
    let image = Tensor::new(
        vec![1, 3, 16, 16],
        (0..768).map(|i| ((i as f32) * 0.37).sin() * 0.8).collect(),
    )
    .unwrap();
    // PLMS from pndm's config; the Runge-Kutta warm-up from pndm_prk's.
    for (variant, kinds) in [
        ("pndm", SamplerKind::ALL.to_vec()),
        ("pndm_prk", vec![SamplerKind::Pndm]),
    ] {
        let m = import_variant(variant, "pndm", false);
        for &kind in &kinds {
            let mut req = Img2Img::new(&m, "a red cat", image.clone()).unwrap();
            req.params.sampler = kind;
            req.params.steps = 6;
            req.strength = 0.5;
            let want = req.steps_to_run();
            let pipe = Pipeline::new(&m, select("cpu").unwrap());
            let mut ticks = 0;
            let out = pipe
                .img2img(&req, &mut |_| ticks += 1, &Cancel::new())
                .unwrap_or_else(|e| panic!("{variant} {kind}: {e}"));
            assert!(out.latents.data.iter().all(|v| v.is_finite()), "{kind}");
            // The Runge-Kutta warm-up restarts at a late start (diffusers' call counter), so
            // its evaluations do not map onto steps one to one.
            if variant == "pndm" {
                assert_eq!(ticks, want, "{kind}: progress reports");
            }
        }
    }
}

#[test]
fn euler_pipeline_matches_diffusers() {
    pipeline("euler", "euler", false);
}

#[test]
fn euler_karras_pipeline_matches_diffusers() {
    pipeline("euler_karras", "euler", true);
}

#[test]
fn dpmpp_2m_karras_pipeline_matches_diffusers() {
    // Its scheduler_config.json holds `"lambda_min_clipped": -Infinity`, as diffusers writes it.
    let text =
        std::fs::read_to_string(variant_dir("dpmpp_2m_karras").join("scheduler_config.json"))
            .unwrap();
    assert!(text.contains("-Infinity"));
    pipeline("dpmpp_2m_karras", "dpmpp_2m", true);
}

#[test]
fn heun_pipeline_matches_diffusers() {
    pipeline("heun", "heun", false);
}

#[test]
fn pndm_pipeline_matches_diffusers() {
    pipeline("pndm", "pndm", false);
}

#[test]
fn pndm_with_runge_kutta_warm_up_pipeline_matches_diffusers() {
    // PNDMScheduler's own default, skip_prk_steps false: 12 Runge-Kutta evaluations first.
    pipeline("pndm_prk", "pndm", false);
}

#[test]
fn unipc_pipeline_matches_diffusers() {
    pipeline("unipc", "unipc", false);
}

#[test]
fn euler_ancestral_pipeline_matches_diffusers() {
    // Stochastic: diffusers drew its noise from our generator's stream.
    pipeline("euler_a", "euler_a", false);
}

#[test]
fn ddpm_pipeline_matches_diffusers() {
    // Stochastic: diffusers drew its noise from our generator's stream.
    pipeline("ddpm", "ddpm", false);
}

#[test]
fn dpmpp_2m_sde_pipeline_matches_diffusers() {
    // Stochastic: diffusers drew its noise from our generator's stream.
    pipeline("dpmpp_2m_sde", "dpmpp_2m_sde", true);
}
