//! The reference and the tract CPU backend agree on whole tiny models with random weights.
use ldm_edge::arch::{init::random_param, ModelConfig};
use ldm_edge::backend::cpu::CpuBackend;
use ldm_edge::backend::reference::ReferenceBackend;
use ldm_edge::backend::{Backend, Tensor};
use ldm_edge::graph::Graph;
use std::collections::HashMap;

fn weights(cfg: &ModelConfig) -> HashMap<String, Tensor> {
    cfg.param_specs()
        .unwrap()
        .into_iter()
        .map(|(p, s)| {
            let d = random_param(7, &p, &s);
            (p, Tensor { shape: s, data: d })
        })
        .collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn agree(name: &str, g: &Graph, w: &HashMap<String, Tensor>, inputs: &[Tensor]) {
    let r = ReferenceBackend.prepare(g, w).unwrap().run(inputs).unwrap();
    let c = CpuBackend.prepare(g, w).unwrap().run(inputs).unwrap();
    assert_eq!(r[0].shape, c[0].shape);
    let e = rel_err(&c[0].data, &r[0].data);
    println!("{name}: max relative error {e:.2e}");
    assert!(e <= 1e-4, "{name}: max relative error {e} > 1e-4");
}

fn noise(seed: u64, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor {
        shape: shape.to_vec(),
        data: random_param(seed, "input.bias", &[n])
            .iter()
            .map(|v| v * 10.0)
            .collect(),
    }
}

#[test]
fn unet_agrees() {
    let cfg = ModelConfig::tiny(64);
    let w = weights(&cfg);
    let g = cfg.unet_graph(2, 8, 6).unwrap();
    let ctx = noise(
        3,
        &[
            2,
            cfg.text_encoder.max_position_embeddings,
            cfg.unet.cross_attention_dim,
        ],
    );
    let t = Tensor {
        shape: vec![2],
        data: vec![981.0, 1.0],
    };
    agree("unet", &g, &w, &[noise(1, &[2, 4, 8, 6]), t, ctx]);
}

#[test]
fn autoencoder_agrees() {
    let cfg = ModelConfig::tiny(64);
    let w = weights(&cfg);
    agree(
        "decoder",
        &cfg.decoder_graph(1, 5, 7).unwrap(),
        &w,
        &[noise(4, &[1, 4, 5, 7])],
    );
    agree(
        "encoder",
        &cfg.encoder_graph(1, 20, 12).unwrap(),
        &w,
        &[noise(5, &[1, 3, 20, 12])],
    );
}

#[test]
fn text_encoder_agrees() {
    let cfg = ModelConfig::tiny(64);
    let w = weights(&cfg);
    let l = cfg.text_encoder.max_position_embeddings;
    let ids = Tensor {
        shape: vec![2, l],
        data: (0..2 * l).map(|i| ((i * 7) % 64) as f32).collect(),
    };
    agree("text_encoder", &cfg.text_graph(2).unwrap(), &w, &[ids]);
}
