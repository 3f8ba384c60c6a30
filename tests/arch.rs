//! The architectures agree with diffusers' parameter sets and run end to end on the reference.
use ldm_edge::arch::{init, ModelConfig, UNetConfig, VaeConfig, UNET, VAE};
use ldm_edge::backend::reference::ReferenceBackend;
use ldm_edge::backend::{check_weights, Backend, Tensor, WeightSource};
use std::collections::HashMap;

fn count(specs: &[(String, Vec<usize>)], prefix: &str) -> usize {
    specs
        .iter()
        .filter(|(p, _)| p.starts_with(prefix))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

fn weights(cfg: &ModelConfig, seed: u64) -> HashMap<String, Tensor> {
    cfg.param_specs()
        .unwrap()
        .into_iter()
        .map(|(p, s)| {
            let d = init::random_param(seed, &p, &s);
            (p, Tensor { shape: s, data: d })
        })
        .collect()
}

#[test]
fn sd15_parameter_counts_match_diffusers() {
    // diffusers reports 859,520,964 parameters for SD-1.5's UNet2DConditionModel and
    // 83,653,863 for its AutoencoderKL (`sum(p.numel() for p in m.parameters())`).
    let cfg = ModelConfig::sd15_shaped(30522);
    assert_eq!(cfg.unet, UNetConfig::sd15());
    assert_eq!(cfg.vae, VaeConfig::sd15());
    let specs = cfg.param_specs().unwrap();
    assert_eq!(count(&specs, UNET), 859_520_964);
    assert_eq!(count(&specs, VAE), 83_653_863);
    assert!(specs.iter().any(
        |(p, _)| p == "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    ));
}

#[test]
fn tiny_model_runs_on_reference() {
    let cfg = ModelConfig::tiny(64);
    cfg.validate().unwrap();
    let w = weights(&cfg, 1);
    let g = cfg.unet_graph(2, 8, 8).unwrap();
    let mut plan = ReferenceBackend.prepare(&g, &w).unwrap();
    let x = Tensor {
        shape: vec![2, 4, 8, 8],
        data: init::random_param(2, "x.weight.", &[2, 4 * 64]),
    };
    let t = Tensor {
        shape: vec![2],
        data: vec![999.0, 10.0],
    };
    let ctx = Tensor {
        shape: vec![2, 16, 32],
        data: init::random_param(3, "c", &[2 * 16 * 32]),
    };
    let y = plan.run(&[x, t, ctx]).unwrap();
    assert_eq!(y[0].shape, vec![2, 4, 8, 8]);
    assert!(y[0].data.iter().all(|v| v.is_finite()));
    assert!(y[0].data.iter().any(|v| v.abs() > 1e-3));

    let g = cfg.decoder_graph(1, 8, 8).unwrap();
    let mut plan = ReferenceBackend.prepare(&g, &w).unwrap();
    let z = Tensor::zeros(&[1, 4, 8, 8]);
    assert_eq!(plan.run(&[z]).unwrap()[0].shape, vec![1, 3, 32, 32]);

    let g = cfg.text_graph(1).unwrap();
    let mut plan = ReferenceBackend.prepare(&g, &w).unwrap();
    let ids = Tensor {
        shape: vec![1, 16],
        data: (0..16).map(|i| i as f32).collect(),
    };
    assert_eq!(plan.run(&[ids]).unwrap()[0].shape, vec![1, 16, 32]);
}

#[test]
fn weights_must_match_the_config() {
    let cfg = ModelConfig::tiny(64);
    let g = cfg.unet_graph(1, 8, 8).unwrap();
    let mut w = weights(&cfg, 1);
    check_weights(&g, &w).unwrap();
    w.remove("unet.conv_in.weight");
    let e = check_weights(&g, &w).unwrap_err();
    assert!(e.to_string().contains("unet.conv_in.weight"), "{e}");
    let mut w = weights(&cfg, 1);
    w.get_mut("unet.conv_out.bias").unwrap().shape = vec![5];
    assert!(matches!(
        check_weights(&g, &w),
        Err(ldm_edge::Error::WeightShape { .. })
    ));
    assert!(w.shape("nope").is_none());
}

#[test]
fn encoder_params_split_the_autoencoder_from_the_decoder() {
    // The decoder-only fine-tune freezes exactly what `vae::encode` reads; everything else of
    // the autoencoder is the decoder's, and nothing is both.
    for cfg in [ModelConfig::tiny(64), ModelConfig::sd15_shaped(30522)] {
        let enc = ldm_edge::arch::vae::encoder_params(&cfg.vae, VAE).unwrap();
        let dec = cfg.decoder_graph(1, 1, 1).unwrap().params();
        let all: Vec<_> = cfg
            .param_specs()
            .unwrap()
            .into_iter()
            .filter(|(p, _)| p.starts_with(VAE))
            .collect();
        assert!(enc
            .iter()
            .all(|(p, _)| p.starts_with("vae.encoder.") || p.starts_with("vae.quant_conv.")));
        assert!(enc.iter().all(|e| !dec.iter().any(|d| d.0 == e.0)));
        assert_eq!(enc.len() + dec.len(), all.len());
        assert_eq!(
            count(&enc, VAE) + count(&dec, VAE),
            count(&all, VAE),
            "encoder + decoder = the whole autoencoder"
        );
    }
}
