//! Parity with diffusers: tiny random SD-1.x-like and SD-2.x-like pipelines made by
//! tests/parity/make_fixtures.py, imported through the same code as `ldm-host import`, run on the
//! CPU backend and compared with diffusers' recorded outputs. No Python is needed here.
use ldm_edge::backend::select;
use ldm_edge::format::DType;
use ldm_edge::import::Import;
use ldm_edge::model::Model;
use ldm_edge::pipeline::{Cancel, Pipeline, Txt2Img};
use ldm_edge::sampler::SamplerKind;
use serde_json::Value;

mod common;
#[path = "support/scratch.rs"]
mod scratch;
use common::*;

fn import(name: &str) -> Model {
    let out = tmp("parity", &format!("{name}.ldm"));
    let imp = Import::from_diffusers(&fixture(name)).unwrap();
    imp.write(DType::F32, &out, "tests/parity.rs").unwrap();
    Model::open(&out).unwrap()
}

fn components(name: &str) {
    check_components(&import(name), name, name);
}

/// Vulkan tests fail when no device exists under CI=true / LDM_REQUIRE_VULKAN=1 and skip loudly
/// elsewhere, like tests/vulkan_*.rs.
fn backend(name: &str) -> Option<Box<dyn ldm_edge::backend::Backend>> {
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

fn pipeline(name: &str, backend_name: &str, min_psnr: f64) {
    let Some(backend) = backend(backend_name) else {
        return;
    };
    let m = import(name);
    let args = &inputs(name)["pipe"];
    let mut req = Txt2Img::new(&m, args["prompt"].as_str().unwrap()).unwrap();
    req.steps = args["num_inference_steps"].as_u64().unwrap() as usize;
    req.guidance = args["guidance_scale"].as_f64().unwrap() as f32;
    req.sampler = match name {
        "lcm" => SamplerKind::Lcm,
        _ => SamplerKind::Ddim,
    };
    req.width = args["width"].as_u64().unwrap() as usize;
    req.height = args["height"].as_u64().unwrap() as usize;
    req.init_noise = Some(reference(name, "pipe_latents.npy"));
    let pipe = Pipeline::new(&m, backend);
    let out = pipe.txt2img(&req, &mut |_| {}, &Cancel::new()).unwrap();
    let e_lat = max_abs(&out.latents, &reference(name, "pipe_final_latents.npy"));
    // diffusers' output_type="np": (x / 2 + 0.5).clamp(0, 1), NHWC.
    let want = reference(name, "pipe_image.npy");
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
    let mse = se / (h * w * 3) as f64;
    let psnr = 10.0 * (1.0 / mse.max(1e-20)).log10();
    eprintln!("{name} on {backend_name}: pipeline final latents max abs {e_lat:.2e}, image PSNR {psnr:.1} dB");
    assert!(
        psnr >= min_psnr,
        "{name} on {backend_name}: pipeline PSNR {psnr} < {min_psnr}"
    );
}

fn tokens(name: &str) {
    let m = import(name);
    let p = fixture(name).join("ref/tokens.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let prompts: Vec<String> = serde_json::from_value(v["prompts"].clone()).unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(v["ids"].clone()).unwrap();
    assert_eq!(prompts.len(), 50);
    let mut bad = Vec::new();
    for (p, want) in prompts.iter().zip(&ids) {
        let got = m.tokenizer.encode(p).unwrap();
        if &got != want {
            bad.push(format!("{p:?}:\n  ours   {got:?}\n  theirs {want:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{name}: {} prompts differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn sd1_components_match_diffusers() {
    components("sd1");
}

#[test]
fn sd2_components_match_diffusers() {
    components("sd2");
}

#[test]
fn sd1_pipeline_matches_diffusers() {
    pipeline("sd1", "cpu", 45.0);
}

#[test]
fn sd1_pipeline_on_vulkan_matches_diffusers() {
    pipeline("sd1", "vulkan", 40.0);
}

#[test]
fn sd2_pipeline_on_vulkan_matches_diffusers() {
    pipeline("sd2", "vulkan", 40.0);
}

#[test]
fn sd2_pipeline_matches_diffusers() {
    pipeline("sd2", "cpu", 45.0);
}

#[test]
fn sd1_tokenizer_matches_transformers() {
    tokens("sd1");
}

#[test]
fn sd2_tokenizer_from_vocab_and_merges_matches_transformers() {
    tokens("sd2");
}

#[test]
fn lcm_components_match_diffusers() {
    // The guidance-distilled UNet: w enters through time_embedding.cond_proj.
    components("lcm");
}

#[test]
fn lcm_pipeline_matches_diffusers() {
    // diffusers' LatentConsistencyModelPipeline, 4 steps, with the same injected noise.
    pipeline("lcm", "cpu", 45.0);
}

#[test]
fn lcm_pipeline_on_vulkan_matches_diffusers() {
    pipeline("lcm", "vulkan", 40.0);
}
