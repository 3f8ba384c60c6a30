//! Tiny random models for each task, written by the tests themselves (no trained SR or
//! inpainting model ships): `ModelConfig::tiny_for` with the shipped model's tokenizer.
#![allow(dead_code)]

use ldm_edge::arch::init::random_param;
use ldm_edge::arch::{ModelConfig, Task};
use ldm_edge::format::{DType, ModelWriter};
use ldm_edge::model::{Model, SamplerDefaults};
use std::path::{Path, PathBuf};

pub fn default_model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/shapes-32.ldm")
}

/// Writes (once per path) a tiny model for `task` with random weights and returns its path.
/// 32 px images, autoencoder factor 4: latents and SR low-res tiles are 8x8.
pub fn write_tiny(task: Task, dir: &Path) -> PathBuf {
    let out = dir.join(format!("tiny-{task}.ldm"));
    if out.exists() {
        return out;
    }
    let base = Model::open(&default_model_path()).expect("the shipped default model opens");
    let tokenizer = base.file.meta()["tokenizer"].clone();
    let cfg = ModelConfig::tiny_for(base.config.text_encoder.vocab_size, task);
    let header = serde_json::json!({
        "config": cfg,
        "sampler": SamplerDefaults { steps: 3, ..SamplerDefaults::default() },
        "tokenizer": tokenizer,
        "provenance": {"kind": "tiny random test model", "task": task.to_string()},
    });
    let mut w = ModelWriter::new(header).expect("header is an object");
    for (path, shape) in cfg.param_specs().expect("valid config") {
        w.add(&path, &shape, &random_param(5, &path, &shape), DType::F32)
            .expect("random weights are representable");
    }
    // Written under a temporary name and renamed, so parallel tests never read half a file.
    let tmp = out
        .with_extension(format!("{:?}.tmp", std::thread::current().id()).replace(['(', ')'], ""));
    w.write(&tmp).expect("temp dir is writable");
    std::fs::rename(&tmp, &out).expect("rename");
    out
}

/// A deterministic test image [1, 3, h, w] in [-1, 1] with structure in both directions,
/// quantised to 8-bit levels so it round-trips through a PNG exactly.
pub fn test_image(h: usize, w: usize) -> ldm_edge::backend::Tensor {
    let mut rgb = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            rgb.push(((x * 255) / w.max(1)) as u8);
            rgb.push(((y * 255) / h.max(1)) as u8);
            rgb.push((((x / 4 + y / 4) % 2) * 200 + 20) as u8);
        }
    }
    ldm_edge::pipeline::image::from_rgb8(&rgb, w, h).expect("sizes match")
}

/// A square hole in the middle: 1 inside, 0 outside.
pub fn center_mask(h: usize, w: usize) -> Vec<f32> {
    (0..h * w)
        .map(|i| {
            let (y, x) = (i / w, i % w);
            let inside = y >= h / 4 && y < 3 * h / 4 && x >= w / 4 && x < 3 * w / 4;
            if inside {
                1.0
            } else {
                0.0
            }
        })
        .collect()
}
