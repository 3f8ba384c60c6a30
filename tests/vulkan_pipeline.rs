//! Whole-pipeline agreement: the same seed through text encoder, sampler loop, UNet and decoder
//! on Vulkan and on the CPU gives the same final image, measured as PSNR over the image in
//! [-1, 1] (peak-to-peak 2). Issue 4's acceptance: >= 40 dB with f32 weights, >= 35 dB with f16
//! weight storage (both the f16 file dtype and the device-side f16 option on an f32 file);
//! issue 17's: >= 30 dB with f16 arithmetic.
//!
//! Without a Vulkan device the tests print a loud SKIP and pass, unless `CI=true` or
//! `LDM_REQUIRE_VULKAN=1`, where a missing device fails them.
#![cfg(feature = "vulkan")]

#[path = "support/scratch.rs"]
mod scratch;
#[path = "support/vk.rs"]
mod vk;

use ldm_edge::arch::init::random_param;
use ldm_edge::backend::vulkan::{Fault, VariantUse, VulkanBackend, VulkanOptions};
use ldm_edge::backend::{select, select_auto, AutoOptions, Backend};
use ldm_edge::format::{DType, ModelWriter};
use ldm_edge::model::Model;
use ldm_edge::pipeline::{Cancel, Decoder, Pipeline, Txt2Img};
use ldm_edge::Error;
use std::path::{Path, PathBuf};

fn vulkan(opts: VulkanOptions) -> Option<Box<dyn Backend>> {
    vk::vulkan_or_skip(opts, "pipeline agreement")
}

fn default_model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/shapes-32.ldm")
}

/// A copy of the default model's architecture, tokenizer and sampler with fresh random weights
/// stored as `dtype` (all tensors, biases included, so "f32 weights" means exactly that).
fn write_model(dtype: DType, dir: &Path) -> PathBuf {
    write_model_with(dtype, dir, None)
}

/// As `write_model`, with `poison` (a weight path) set to NaN.
fn write_model_with(dtype: DType, dir: &Path, poison: Option<&str>) -> PathBuf {
    let base = Model::open(&default_model_path()).expect("the shipped default model opens");
    let meta = base.file.meta();
    let header = serde_json::json!({
        "config": meta["config"],
        "sampler": meta["sampler"],
        "tokenizer": meta["tokenizer"],
        "provenance": {"kind": "vulkan_pipeline test model", "dtype": format!("{dtype:?}")},
    });
    let mut w = ModelWriter::new(header).expect("header is an object");
    for (path, shape) in base.config.param_specs().expect("valid config") {
        let mut data = random_param(11, &path, &shape);
        if poison == Some(path.as_str()) {
            data.fill(f32::NAN);
        }
        w.add(&path, &shape, &data, dtype)
            .expect("random weights are representable");
    }
    let out = dir.join(format!(
        "tiny-{dtype:?}{}.ldm",
        if poison.is_some() { "-nan" } else { "" }
    ));
    w.write(&out).expect("temp dir is writable");
    out
}

fn request(model: &Model) -> Txt2Img {
    let mut req = Txt2Img::new(model, "a red circle on a blue square").expect("request");
    req.steps = 4;
    req.seed = 42;
    req
}

/// A short but complete run: CFG on (batch 2 UNet), a few DDIM steps, the model's native size.
fn generate(model: &Model, backend: Box<dyn Backend>) -> Vec<f32> {
    Pipeline::new(model, backend)
        .txt2img(&request(model), &mut |_| {}, &Cancel::new())
        .expect("txt2img")
        .image
        .data
}

fn check(label: &str, model: &Model, vk: Box<dyn Backend>, min_db: f64) {
    let cpu = generate(model, select("cpu").expect("cpu backend"));
    let gpu = generate(model, vk);
    let db = vk::psnr(&gpu, &cpu);
    // A saturated or flat image would make any PSNR meaningless: check the CPU image has content.
    let mean = cpu.iter().map(|v| *v as f64).sum::<f64>() / cpu.len() as f64;
    let std =
        (cpu.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / cpu.len() as f64).sqrt();
    let clipped = cpu.iter().filter(|v| v.abs() >= 1.0).count() as f64 / cpu.len() as f64;
    println!("  cpu image: std {std:.3}, {:.1}% clipped", clipped * 100.0);
    assert!(
        std > 0.01 && clipped < 0.5,
        "{label}: degenerate image (std {std}, clipped {clipped})"
    );
    println!("pipeline PSNR vulkan vs cpu, {label}: {db:.1} dB (need >= {min_db})");
    assert!(db >= min_db, "{label}: PSNR {db:.2} dB < {min_db} dB");
}

#[test]
fn f32_weights_agree_with_cpu() {
    let Some(vk) = vulkan(VulkanOptions::default()) else {
        return;
    };
    let dir = scratch::scratch("vulkan-pipeline");
    let m = Model::open(&write_model(DType::F32, &dir)).expect("f32 model");
    check("f32 file", &m, vk, 40.0);
}

#[test]
fn f16_storage_agrees_with_cpu() {
    // The f16 file dtype: both backends read the same f16 values.
    let Some(vk) = vulkan(VulkanOptions::default()) else {
        return;
    };
    let dir = scratch::scratch("vulkan-pipeline");
    let m16 = Model::open(&write_model(DType::F16, &dir)).expect("f16 model");
    check("f16 file", &m16, vk, 35.0);

    // The device option: an f32 file kept as f16 on the GPU, against the CPU's f32 weights.
    let Some(vk) = vulkan(VulkanOptions {
        f16_weights: true,
        ..VulkanOptions::default()
    }) else {
        return;
    };
    let m32 = Model::open(&write_model(DType::F32, &dir)).expect("f32 model");
    check("f32 file, f16 on device", &m32, vk, 35.0);
}

/// The arithmetic variants on a whole pipeline: f16 math (issue 17: >= 30 dB), and int8 dot
/// products on the shipped q8 model (held to the same 30 dB). `On` runs each wherever the
/// device can (llvmpipe can both); `Auto` would keep them off on a CPU device.
#[test]
fn arithmetic_variants_agree_with_cpu() {
    let f16 = VulkanOptions {
        f16_math: VariantUse::On,
        ..VulkanOptions::default()
    };
    let dot = VulkanOptions {
        int8_dot: VariantUse::On,
        ..VulkanOptions::default()
    };
    let Some(vk) = vulkan(f16.clone()) else {
        return;
    };
    // The variant must really run, or this would compare the f32 kernels again. llvmpipe (CI)
    // has both features; another device without one skips that half loudly.
    let runs = |o: VulkanOptions,
                f: fn(&ldm_edge::backend::vulkan::variants::KernelChoice) -> bool| {
        let c = VulkanBackend::with_options(o)
            .and_then(|b| b.kernel_choice())
            .expect("the device opened a moment ago");
        f(&c) || {
            assert!(
                !vk::required(),
                "CI's llvmpipe must run every variant: {c:?}"
            );
            eprintln!("*** SKIP: this device lacks the feature: {c:?} ***");
            false
        }
    };
    let dir = scratch::scratch("vulkan-pipeline");
    if runs(f16, |c| c.f16_math) {
        let m = Model::open(&write_model(DType::F32, &dir)).expect("f32 model");
        check("f32 file, f16 math", &m, vk, 30.0);
    }
    if runs(dot.clone(), |c| c.int8_dot) {
        let Some(vk) = vulkan(dot) else {
            return;
        };
        let m = Model::open(&default_model_path()).expect("default model");
        check("default q8 model, int8 dot", &m, vk, 30.0);
    }
}

#[test]
fn default_q8_model_agrees_with_cpu() {
    // `select("vulkan")` is what `ldm generate --backend vulkan` uses.
    let vk = match select("vulkan") {
        Ok(b) => b,
        Err(e) if !vk::required() => {
            eprintln!(
                "\n*** SKIP: no usable Vulkan device ({e}); pipeline agreement NOT tested ***\n"
            );
            return;
        }
        Err(e) => panic!("Vulkan is required here (CI / LDM_REQUIRE_VULKAN) but unavailable: {e}"),
    };
    let m = Model::open(&default_model_path()).expect("default model");
    check("default q8 model", &m, vk, 40.0);
}

/// `auto` with a software device allowed, so the Vulkan path is taken on llvmpipe too.
/// The shipped model's tiny decoder (final image and previews) on Vulkan against the CPU.
#[test]
fn tiny_decoder_agrees_with_cpu() {
    let Some(vk) = vulkan(VulkanOptions::default()) else {
        return;
    };
    let m = Model::open(&default_model_path()).expect("default model");
    assert!(
        m.tiny_decoder.is_some(),
        "the shipped model carries a tiny decoder"
    );
    let run = |b: Box<dyn Backend>| {
        let pipe = Pipeline::new(&m, b)
            .with_decoder(Decoder::Tiny)
            .expect("tiny decoder")
            .with_preview_method(Decoder::Tiny)
            .expect("tiny previews")
            .with_preview(Some(2))
            .expect("previews");
        let mut last = Vec::new();
        let img = pipe
            .txt2img(
                &request(&m),
                &mut |p| {
                    if let Some(i) = p.preview {
                        last = i.rgb.clone();
                    }
                },
                &Cancel::new(),
            )
            .expect("txt2img");
        (img.image.data, last)
    };
    let (cpu, cpu_prev) = run(select("cpu").expect("cpu"));
    let (gpu, gpu_prev) = run(vk);
    let db = vk::psnr(&gpu, &cpu);
    println!("tiny decoder, vulkan vs cpu: {db:.1} dB");
    assert!(db >= 40.0, "tiny decoder: {db:.2} dB < 40 dB");
    assert_eq!(cpu_prev.len(), gpu_prev.len());
    let off = cpu_prev
        .iter()
        .zip(&gpu_prev)
        .filter(|(a, b)| a.abs_diff(**b) > 2)
        .count();
    assert!(
        off * 100 < cpu_prev.len(),
        "{off} preview bytes differ by more than 2"
    );
}

fn auto_on_any_device(fault: Option<Fault>) -> Option<Box<dyn Backend>> {
    // Probe first so a machine without Vulkan skips (or fails under CI) like the other tests.
    vulkan(VulkanOptions::default())?;
    let b = select_auto(&AutoOptions {
        allow_software: true,
        fault,
    });
    assert_eq!(b.name(), "vulkan", "auto must take the Vulkan device here");
    Some(b)
}

/// A device fault at prepare or run time under `auto` reruns on the CPU, and the result is
/// exactly a plain CPU run's (same seed, same backend doing all the work).
#[test]
fn auto_falls_back_to_the_cpu_on_a_vulkan_fault() {
    let m = Model::open(&default_model_path()).expect("default model");
    let cpu = Pipeline::new(&m, select("cpu").expect("cpu"))
        .txt2img(&request(&m), &mut |_| {}, &Cancel::new())
        .expect("cpu run");
    for fault in [Fault::Prepare, Fault::Run] {
        let Some(auto) = auto_on_any_device(Some(fault)) else {
            return;
        };
        let mut steps = 0;
        let got = Pipeline::new(&m, auto)
            .txt2img(&request(&m), &mut |p| steps = p.step, &Cancel::new())
            .expect("auto falls back instead of failing");
        println!(
            "fault {fault:?}: auto fell back to the CPU, image identical: {}",
            got.image == cpu.image
        );
        assert_eq!(
            got.image, cpu.image,
            "{fault:?}: fallback differs from the CPU run"
        );
        assert_eq!(got.rgb, cpu.rgb);
        assert_eq!(steps, 4);
    }
    // Without auto, the same fault is a clear Vulkan error, not a silent CPU run.
    let vk = VulkanBackend::new()
        .expect("probed above")
        .with_fault(Some(Fault::Run));
    let err = Pipeline::new(&m, Box::new(vk))
        .txt2img(&request(&m), &mut |_| {}, &Cancel::new())
        .err()
        .expect("an explicit Vulkan backend reports its fault");
    println!("explicit vulkan with a fault: {err}");
    assert!(
        matches!(
            err,
            Error::Backend {
                backend: "vulkan",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("device was lost"), "{err}");
}

/// Without a fault, auto on the device really runs there and agrees with the CPU.
#[test]
fn auto_without_fault_runs_on_vulkan() {
    let Some(auto) = auto_on_any_device(None) else {
        return;
    };
    let m = Model::open(&default_model_path()).expect("default model");
    check("auto (vulkan + cpu fallback)", &m, auto, 40.0);
}

/// NaN weights give a NaN image: an error on Vulkan too, never pixels.
#[test]
fn non_finite_image_is_an_error_on_vulkan() {
    let Some(vk) = vulkan(VulkanOptions::default()) else {
        return;
    };
    let dir = scratch::scratch("vulkan-pipeline");
    let m = Model::open(&write_model_with(
        DType::F32,
        &dir,
        Some("vae.decoder.conv_out.bias"),
    ))
    .expect("f32 model with a NaN bias");
    let r = Pipeline::new(&m, vk).txt2img(&request(&m), &mut |_| {}, &Cancel::new());
    assert!(matches!(r, Err(Error::NonFinite(_))), "{:?}", r.err());
}

/// A real device limit, not an injected fault: a tensor one element past the device's largest
/// storage binding (llvmpipe: 128 MiB) is a clear Vulkan error at prepare time, and `auto`
/// prepares and runs it on the CPU instead, with exactly the CPU's result.
#[test]
fn a_tensor_past_the_binding_limit_falls_back_to_the_cpu() {
    use ldm_edge::backend::Tensor;
    use ldm_edge::graph::{Graph, Node, Op, ValueType};
    let Some(_) = vulkan(VulkanOptions::default()) else {
        return;
    };
    let vk = VulkanBackend::new().expect("probed above");
    let limit = vk.device().max_storage_buffer_range as usize;
    if limit > 512 << 20 {
        eprintln!("*** SKIP: binding limit {limit} B is too large to exceed in a test ***");
        return;
    }
    let n = limit / 4 + 1;
    let node = |op, inputs| Node {
        op,
        inputs,
        shape: vec![n],
        ty: ValueType::F32,
    };
    let g = Graph {
        nodes: vec![
            node(
                Op::Input {
                    name: "x".into(),
                    ty: ValueType::F32,
                },
                vec![],
            ),
            node(Op::Silu, vec![0]),
        ],
        outputs: vec![1],
    };
    let weights = std::collections::HashMap::new();
    let x = [Tensor::new(
        vec![n],
        (0..n).map(|i| (i % 1000) as f32 / 100.0 - 5.0).collect(),
    )
    .expect("input")];

    let err = vk
        .prepare(&g, &weights)
        .err()
        .expect("too large for the device");
    println!("explicit vulkan: {err}");
    assert!(err.to_string().contains("largest storage binding"), "{err}");

    let auto = auto_on_any_device(None).expect("probed above");
    let mut got = auto
        .prepare(&g, &weights)
        .expect("auto prepares on the CPU");
    assert_eq!(auto.name(), "cpu", "auto moved to the CPU after the fault");
    let mut want = select("cpu")
        .expect("cpu")
        .prepare(&g, &weights)
        .expect("cpu");
    assert_eq!(got.run(&x).expect("run"), want.run(&x).expect("run"));
    println!(
        "auto: {} MiB tensor ran on the CPU, identical to a plain CPU run",
        (n * 4) >> 20
    );
}

/// Issue 17: an SD-1.5-shaped model (random weights stored as q8, 1.1 GB) generates a 512x512
/// image end to end on Vulkan, decoder included (the planner tiles it to the device's binding
/// limit), and agrees with the CPU. One step without guidance keeps it to minutes on llvmpipe;
/// too slow for every CI run, so ignored: `cargo test --release --test vulkan_pipeline --
/// --ignored sd15 --nocapture`.
#[test]
#[ignore]
fn sd15_shaped_512px_runs_on_vulkan_end_to_end() {
    let Some(vk) = vulkan(VulkanOptions::default()) else {
        return;
    };
    let base = Model::open(&default_model_path()).expect("the shipped default model opens");
    let meta = base.file.meta();
    let cfg = ldm_edge::arch::ModelConfig::sd15_shaped(base.tokenizer.vocab_size());
    let header = serde_json::json!({
        "config": serde_json::to_value(&cfg).expect("config serializes"),
        "sampler": meta["sampler"],
        "tokenizer": meta["tokenizer"],
        "provenance": {"kind": "vulkan_pipeline SD-1.5-shaped test model"},
    });
    let mut w = ModelWriter::new(header).expect("header is an object");
    for (path, shape) in cfg.param_specs().expect("valid config") {
        w.add(&path, &shape, &random_param(5, &path, &shape), DType::Q8)
            .expect("random weights are representable");
    }
    let dir = scratch::scratch("vulkan-sd15");
    let file = dir.join("sd15-q8.ldm");
    w.write(&file).expect("temp dir is writable");
    let m = Model::open(&file).expect("SD-1.5-shaped model");
    let run = |b: Box<dyn Backend>| {
        let mut req = Txt2Img::new(&m, "a red circle above a blue square").expect("request");
        req.width = 512;
        req.height = 512;
        req.steps = 1;
        req.guidance = 1.0;
        req.seed = 1;
        let t = std::time::Instant::now();
        let img = Pipeline::new(&m, b)
            .txt2img(&req, &mut |_| {}, &Cancel::new())
            .expect("txt2img at 512x512")
            .image;
        assert_eq!(img.shape, vec![1, 3, 512, 512]);
        assert!(img.data.iter().all(|v| v.is_finite()));
        (img.data, t.elapsed().as_secs_f64())
    };
    let (gpu, gpu_s) = run(vk);
    let (cpu, cpu_s) = run(select("cpu").expect("cpu backend"));
    let db = vk::psnr(&gpu, &cpu);
    println!(
        "SD-1.5-shaped q8, 512x512, 1 step: vulkan {gpu_s:.0} s, cpu {cpu_s:.0} s, {db:.1} dB"
    );
    assert!(db >= 40.0, "PSNR {db:.2} dB < 40 dB");
}

/// `LDM_VULKAN_DISABLE` turns variants off by name; a typo is an error that names it and lists
/// the known names, before any work, never a variant silently left on.
#[test]
fn disabling_variants_by_environment() {
    if vulkan(VulkanOptions::default()).is_none() {
        return;
    }
    let dir = scratch::scratch("vulkan-pipeline");
    let run = |spec: &str, out: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ldm"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("LDM_VULKAN_DISABLE", spec)
            .args([
                "generate",
                "a red circle",
                "--backend",
                "vulkan",
                "--steps",
                "2",
                "-q",
            ])
            .arg("-o")
            .arg(out)
            .output()
            .expect("ldm runs")
    };
    let typo = dir.join("typo.png");
    let o = run("flsh", &typo);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a typo must fail: {err}");
    assert!(err.contains("`flsh`") && err.contains("flash"), "{err}");
    assert!(!err.contains("panicked") && !typo.exists(), "{err}");
    let off = dir.join("off.png");
    let o = run("flash,f16,dot,sg", &off);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(off.exists());
}
