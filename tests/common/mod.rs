//! Helpers shared by the parity tests: fixtures recorded by tests/parity/make_fixtures.py and
//! the component check (text encoder, one UNet call, decoder) against diffusers' outputs.
#![allow(dead_code)]
use ldm_edge::backend::{select, Tensor};
use ldm_edge::model::Model;
use ldm_edge::npy;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const TOL: f32 = 1e-4;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/parity/fixtures")
        .join(name)
}

/// `name` in the scratch dir `tag` (needs the binary's `mod scratch`, tests/support/scratch.rs).
pub fn tmp(tag: &str, name: &str) -> PathBuf {
    crate::scratch::scratch(tag).join(name)
}

pub fn reference(name: &str, file: &str) -> Tensor {
    npy::read_f32(&fixture(name).join("ref").join(file)).unwrap()
}

pub fn inputs(name: &str) -> Value {
    let p = fixture(name).join("ref/inputs.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape, b.shape);
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn run(model: &Model, graph: ldm_edge::graph::Graph, ins: Vec<Tensor>) -> Tensor {
    let mut plan = select("cpu").unwrap().prepare(&graph, model).unwrap();
    plan.run(&ins).unwrap().swap_remove(0)
}

/// Text encoder, one UNet call and the decoder of `m` against fixture `name`'s references.
pub fn check_components(m: &Model, name: &str, label: &str) {
    let inp = inputs(name);
    let ids: Vec<Vec<f32>> = serde_json::from_value(inp["text_ids"].clone()).unwrap();
    let (b, l) = (ids.len(), ids[0].len());
    let ids = Tensor::new(vec![b, l], ids.concat()).unwrap();
    let hidden = run(m, m.config.text_graph(b).unwrap(), vec![ids]);
    let e_text = max_abs(&hidden, &reference(name, "text_hidden.npy"));

    let sample = reference(name, "unet_sample.npy");
    let ts: Vec<f32> = serde_json::from_value(inp["unet_timesteps"].clone()).unwrap();
    let s = sample.shape.clone();
    let g = m.config.unet_graph(s[0], s[2], s[3]).unwrap();
    let ts = Tensor::new(vec![ts.len()], ts).unwrap();
    let mut ins = vec![sample, ts, reference(name, "unet_context.npy")];
    // A guidance-distilled UNet's scale input (LCM fixture).
    if let Some(w) = inp.get("unet_w") {
        let w: Vec<f32> = serde_json::from_value(w.clone()).unwrap();
        ins.push(Tensor::new(vec![w.len()], w).unwrap());
    }
    let out = run(m, g, ins);
    let e_unet = max_abs(&out, &reference(name, "unet_out.npy"));

    let z = reference(name, "vae_latent.npy");
    let g = m.config.decoder_graph(1, z.shape[2], z.shape[3]).unwrap();
    let img = run(m, g, vec![z]);
    let e_vae = max_abs(&img, &reference(name, "vae_out.npy"));
    eprintln!("{label}: max abs error text {e_text:.2e} unet {e_unet:.2e} decoder {e_vae:.2e}");
    assert!(e_text <= TOL, "{label} text encoder: {e_text}");
    assert!(e_unet <= TOL, "{label} unet: {e_unet}");
    assert!(e_vae <= TOL, "{label} decoder: {e_vae}");
}
