//! img2img, inpainting and upscaling on Vulkan against the CPU, on the tiny random task models:
//! PSNR over the image in [-1, 1] as in `vulkan_pipeline.rs` (>= 40 dB, f32 weights), and the
//! CPU rerun under `auto` after an injected device fault, which must equal a plain CPU run.
//!
//! Without a Vulkan device the tests print a loud SKIP and pass, unless `CI=true` or
//! `LDM_REQUIRE_VULKAN=1`, where a missing device fails them.
#![cfg(feature = "vulkan")]

#[path = "support/vk.rs"]
mod vk;

#[path = "support/scratch.rs"]
mod scratch;
#[path = "support/tiny.rs"]
mod tiny;

use ldm_edge::arch::Task;
use ldm_edge::backend::vulkan::{Fault, VulkanOptions};
use ldm_edge::backend::{select, select_auto, AutoOptions, Backend};
use ldm_edge::model::Model;
use ldm_edge::pipeline::{Cancel, Generated, Img2Img, Inpaint, Pipeline, Upscale};
use scratch::scratch;
use tiny::{center_mask, test_image, write_tiny};

fn vulkan() -> Option<Box<dyn Backend>> {
    vk::vulkan_or_skip(VulkanOptions::default(), "task pipelines")
}

/// `auto` with a software device allowed and `fault` injected into its Vulkan backend.
fn auto_with(fault: Fault) -> Option<Box<dyn Backend>> {
    vulkan()?;
    let b = select_auto(&AutoOptions {
        allow_software: true,
        fault: Some(fault),
    });
    assert_eq!(b.name(), "vulkan", "auto must take the Vulkan device here");
    Some(b)
}

fn model(task: Task) -> Model {
    Model::open(&write_tiny(task, &scratch("vulkan-tasks"))).expect("tiny model opens")
}

/// Runs `f` on the CPU and on `vk`, and checks the images agree to `min_db`.
fn agree(label: &str, vk: Box<dyn Backend>, m: &Model, f: &dyn Fn(&Pipeline) -> Generated) {
    let cpu = f(&Pipeline::new(m, select("cpu").expect("cpu")));
    let gpu = f(&Pipeline::new(m, vk));
    assert_eq!(cpu.image.shape, gpu.image.shape, "{label}");
    let mean = cpu.image.data.iter().map(|v| *v as f64).sum::<f64>() / cpu.image.data.len() as f64;
    let std = (cpu
        .image
        .data
        .iter()
        .map(|v| (*v as f64 - mean).powi(2))
        .sum::<f64>()
        / cpu.image.data.len() as f64)
        .sqrt();
    assert!(std > 0.01, "{label}: flat CPU image (std {std})");
    let db = vk::psnr(&gpu.image.data, &cpu.image.data);
    println!("{label}: vulkan vs cpu {db:.1} dB (need >= 40)");
    assert!(db >= 40.0, "{label}: PSNR {db:.2} dB < 40 dB");
}

fn img2img(p: &Pipeline) -> Generated {
    let mut r = Img2Img::new(p.model, "a red circle", test_image(32, 32)).expect("request");
    r.params.steps = 4;
    r.params.seed = 3;
    r.strength = 0.5;
    p.img2img(&r, &mut |_| {}, &Cancel::new()).expect("img2img")
}

fn inpaint(p: &Pipeline) -> Generated {
    let mut r = Inpaint::new(
        p.model,
        "a blue star",
        test_image(32, 32),
        center_mask(32, 32),
    )
    .expect("request");
    r.params.steps = 3;
    r.params.seed = 3;
    p.inpaint(&r, &mut |_| {}, &Cancel::new()).expect("inpaint")
}

fn upscale(p: &Pipeline) -> Generated {
    // Two tiles with an overlap, so the blend runs on device results too.
    let mut r = Upscale::new(p.model, test_image(8, 14)).expect("request");
    r.steps = 2;
    r.seed = 3;
    p.upscale(&r, &mut |_| {}, &Cancel::new()).expect("upscale")
}

#[test]
fn img2img_agrees_with_cpu() {
    let Some(vk) = vulkan() else { return };
    agree("img2img", vk, &model(Task::Txt2img), &img2img);
}

#[test]
fn inpaint_agrees_with_cpu() {
    let Some(vk) = vulkan() else { return };
    agree("inpaint", vk, &model(Task::Inpaint), &inpaint);
}

#[test]
fn upscale_agrees_with_cpu() {
    let Some(vk) = vulkan() else { return };
    agree("upscale", vk, &model(Task::Sr), &upscale);
}

/// A device fault at run time under `auto` reruns each task on the CPU with exactly the CPU's
/// result, as txt2img does.
#[test]
fn auto_reruns_every_task_on_the_cpu_after_a_fault() {
    type Run = fn(&Pipeline) -> Generated;
    let cases: [(&str, Task, Run); 3] = [
        ("img2img", Task::Txt2img, img2img),
        ("inpaint", Task::Inpaint, inpaint),
        ("upscale", Task::Sr, upscale),
    ];
    for (label, task, f) in cases {
        let m = model(task);
        let Some(auto) = auto_with(Fault::Run) else {
            return;
        };
        let want = f(&Pipeline::new(&m, select("cpu").expect("cpu")));
        let got = f(&Pipeline::new(&m, auto));
        assert_eq!(
            got.image, want.image,
            "{label}: fallback differs from the CPU run"
        );
        assert_eq!(got.rgb, want.rgb, "{label}");
        println!("{label}: auto fell back to the CPU after a run fault, identical result");
    }
}
