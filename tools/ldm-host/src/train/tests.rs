//! The contract between training and the runtime: every parameter learns, training creates
//! exactly the parameters the runtime expects, and an exported model computes what burn did.
use super::burn_ops::{BurnOps, BT};
use super::checkpoint::Checkpoint;
use super::params::ParamStore;
use super::{device, gaussian};
use burn::tensor::Tensor;
use ldm_edge::arch::{text, unet, vae, ModelConfig, TEXT, UNET, VAE};
use ldm_edge::backend::{select, Tensor as HostTensor};
use ldm_edge::format::DType;
use std::collections::BTreeSet;

fn tokenizer() -> String {
    let tk =
        crate::tokenizer::train_wordpiece(&crate::tokenizer::shapes_vocabulary_captions(), 256)
            .expect("tokenizer trains");
    tk.to_string(false).expect("tokenizer serializes")
}

fn cfg() -> ModelConfig {
    let vocab = ldm_edge::tokenizer::TextTokenizer::from_json(&tokenizer(), 16)
        .expect("tokenizer loads")
        .vocab_size();
    ModelConfig::tiny(vocab)
}

struct Inputs {
    ids: Vec<f32>,
    x: Vec<f32>,
    t: Vec<f32>,
    img: Vec<f32>,
}

fn inputs(cfg: &ModelConfig) -> Inputs {
    let l = cfg.text_encoder.max_position_embeddings;
    let v = cfg.text_encoder.vocab_size as u64;
    Inputs {
        ids: (0..2 * l as u64)
            .map(|i| ((i * 7 + 3) % v) as f32)
            .collect(),
        x: gaussian(1, 2 * 4 * 8 * 8),
        t: vec![17.0, 640.0],
        img: gaussian(2, 2 * 3 * 32 * 32)
            .iter()
            .map(|v| v.clamp(-1.0, 1.0))
            .collect(),
    }
}

/// The text encoder, UNet, encoder and decoder outputs for `inp` through burn.
fn forward_all(store: &mut ParamStore, cfg: &ModelConfig, inp: &Inputs) -> Vec<BT> {
    let dev = store.device.clone();
    let l = cfg.text_encoder.max_position_embeddings;
    let ids = BT::from_vec(inp.ids.clone(), &[2, l], &dev);
    let x = BT::from_vec(inp.x.clone(), &[2, 4, 8, 8], &dev);
    let t = BT::from_vec(inp.t.clone(), &[2], &dev);
    let img = BT::from_vec(inp.img.clone(), &[2, 3, 32, 32], &dev);
    let mut o = BurnOps::new(store);
    let ctx = text::forward(&mut o, &cfg.text_encoder, TEXT, &ids).expect("text forward");
    let eps = unet::forward(&mut o, &cfg.unet, UNET, &x, &t, &ctx, None).expect("unet forward");
    let mom = vae::encode(&mut o, &cfg.vae, VAE, &img).expect("encode");
    let z = BT::from_vec(gaussian(3, 2 * 4 * 8 * 8), &[2, 4, 8, 8], &dev);
    let rec = vae::decode(&mut o, &cfg.vae, VAE, &z).expect("decode");
    vec![ctx, eps, mom, rec]
}

#[test]
fn every_parameter_gets_a_gradient() {
    let cfg = cfg();
    let mut store = ParamStore::new(device(true), true, 5);
    let outs = forward_all(&mut store, &cfg, &inputs(&cfg));
    // A random projection of every output, so no gradient cancels by symmetry (a plain sum
    // after a norm layer would give zero gradients to the layers before it).
    let mut loss: Option<Tensor<1>> = None;
    for (k, o) in outs.iter().skip(1).enumerate() {
        let n: usize = o.shape.iter().product();
        let r = BT::from_vec(gaussian(10 + k as u64, n), &o.shape, &store.device);
        let term = (o.t.clone() * r.t).sum();
        loss = Some(match loss {
            Some(l) => l + term,
            None => term,
        });
    }
    let grads = loss.expect("outputs").backward();
    let mut missing = Vec::new();
    for n in store.names() {
        let p = store.param(n).expect("param");
        let g = p.t.grad(&grads).map(|g| g.abs().sum().into_scalar::<f32>());
        if !matches!(g, Some(v) if v > 0.0 && v.is_finite()) {
            missing.push(format!("{n}: {g:?}"));
        }
    }
    assert!(
        missing.is_empty(),
        "parameters without gradient:\n{}",
        missing.join("\n")
    );
}

#[test]
fn training_creates_exactly_the_runtime_parameters() {
    let cfg = cfg();
    let mut store = ParamStore::new(device(false), false, 5);
    forward_all(&mut store, &cfg, &inputs(&cfg));
    let made: BTreeSet<(String, Vec<usize>)> = store
        .names()
        .iter()
        .map(|n| (n.clone(), store.param(n).expect("param").shape.clone()))
        .collect();
    let want: BTreeSet<(String, Vec<usize>)> =
        cfg.param_specs().expect("specs").into_iter().collect();
    let extra: Vec<_> = made.difference(&want).collect();
    let lacking: Vec<_> = want.difference(&made).collect();
    assert!(
        extra.is_empty() && lacking.is_empty(),
        "training-only: {extra:?}\nruntime-only: {lacking:?}"
    );
}

fn rel_close(name: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{name}: lengths");
    let scale = b.iter().map(|v| v.abs()).fold(0f32, f32::max).max(1e-6);
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst / scale <= 1e-4,
        "{name}: max |diff| {worst} vs max |ref| {scale} ({:e} relative)",
        worst / scale
    );
}

#[test]
fn export_then_runtime_forward_matches_burn() {
    let mut cfg = cfg();
    cfg.latent_scale = 0.5;
    let inp = inputs(&cfg);
    let mut store = ParamStore::new(device(false), false, 9);
    let outs = forward_all(&mut store, &cfg, &inp);
    let mut ck = Checkpoint::default();
    for (n, s, d) in store.to_host().expect("host") {
        ck.put("p", &n, s, d);
    }
    ck.meta.insert("kind".into(), "ldm".into());
    ck.meta
        .insert("config".into(), serde_json::to_string(&cfg).expect("json"));
    ck.meta.insert("tokenizer".into(), tokenizer());
    let dir = crate::scratch::scratch("host-export");
    let path = dir.join("m.ldm");
    super::export::to_ldm(&ck, DType::F32, &path, true, serde_json::json!({})).expect("export");
    let model = ldm_edge::model::Model::open(&path).expect("model opens");
    let be = select("cpu").expect("cpu backend");
    let l = cfg.text_encoder.max_position_embeddings;
    let run = |g: ldm_edge::graph::Graph, ins: Vec<HostTensor>| {
        let mut plan = be.prepare(&g, &model).expect("prepare");
        plan.run(&ins).expect("run").swap_remove(0).data
    };
    let h = |s: &[usize], d: &[f32]| HostTensor::new(s.to_vec(), d.to_vec()).expect("tensor");
    let ctx = outs[0].to_vec().expect("ctx");
    let got_ctx = run(cfg.text_graph(2).expect("g"), vec![h(&[2, l], &inp.ids)]);
    rel_close("text encoder", &got_ctx, &ctx);
    let got_eps = run(
        cfg.unet_graph(2, 8, 8).expect("g"),
        vec![
            h(&[2, 4, 8, 8], &inp.x),
            h(&[2], &inp.t),
            h(&[2, l, 32], &ctx),
        ],
    );
    rel_close("unet", &got_eps, &outs[1].to_vec().expect("eps"));
    let got_mom = run(
        cfg.encoder_graph(2, 32, 32).expect("g"),
        vec![h(&[2, 3, 32, 32], &inp.img)],
    );
    rel_close("encoder", &got_mom, &outs[2].to_vec().expect("mom"));
    let got_rec = run(
        cfg.decoder_graph(2, 8, 8).expect("g"),
        vec![h(&[2, 4, 8, 8], &gaussian(3, 2 * 4 * 8 * 8))],
    );
    rel_close("decoder", &got_rec, &outs[3].to_vec().expect("rec"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A guidance-embedded UNet (what `distill lcm` trains): the runtime computes what burn did
/// with the w input, and `cond_proj` gets a gradient.
#[test]
fn guidance_embedded_unet_matches_burn_and_learns_its_embedding() {
    let mut cfg = cfg();
    cfg.latent_scale = 0.5;
    cfg.unet.time_cond_proj_dim = Some(8);
    let inp = inputs(&cfg);
    let l = cfg.text_encoder.max_position_embeddings;
    let w = [4.0f32, 0.5];
    let ctx_host = gaussian(4, 2 * l * 32);
    let run_burn = |store: &mut ParamStore| {
        let dev = store.device.clone();
        let x = BT::from_vec(inp.x.clone(), &[2, 4, 8, 8], &dev);
        let t = BT::from_vec(inp.t.clone(), &[2], &dev);
        let ctx = BT::from_vec(ctx_host.clone(), &[2, l, 32], &dev);
        let wt = BT::from_vec(w.to_vec(), &[2], &dev);
        let mut o = BurnOps::new(store);
        unet::forward(&mut o, &cfg.unet, UNET, &x, &t, &ctx, Some(&wt)).expect("unet forward")
    };
    let mut trained = ParamStore::new(device(true), true, 3);
    let eps = run_burn(&mut trained);
    let n: usize = eps.shape.iter().product();
    let r = BT::from_vec(gaussian(11, n), &eps.shape, &trained.device);
    let grads = (eps.t * r.t).sum().backward();
    let proj = trained
        .param(&format!("{UNET}time_embedding.cond_proj.weight"))
        .expect("cond_proj is a parameter");
    let g = proj
        .t
        .grad(&grads)
        .map(|g| g.abs().sum().into_scalar::<f32>());
    assert!(
        matches!(g, Some(v) if v > 0.0 && v.is_finite()),
        "cond_proj grad {g:?}"
    );

    let mut store = ParamStore::new(device(false), false, 9);
    let eps = run_burn(&mut store).to_vec().expect("eps");
    // The rest of the model (text encoder, autoencoder), so the export is whole.
    let mut plain = cfg.clone();
    plain.unet.time_cond_proj_dim = None;
    forward_all(&mut store, &plain, &inp);
    let mut ck = Checkpoint::default();
    for (n, s, d) in store.to_host().expect("host") {
        ck.put("p", &n, s, d);
    }
    ck.meta.insert("kind".into(), "ldm".into());
    ck.meta
        .insert("config".into(), serde_json::to_string(&cfg).expect("json"));
    ck.meta.insert("tokenizer".into(), tokenizer());
    ck.meta.insert("lcm_guidance".into(), "6.5".into());
    let dir = crate::scratch::scratch("host-w");
    let path = dir.join("m.ldm");
    super::export::to_ldm(&ck, DType::F32, &path, true, serde_json::json!({})).expect("export");
    let model = ldm_edge::model::Model::open(&path).expect("model opens");
    assert_eq!(model.sampler.sampler, "lcm");
    assert_eq!((model.sampler.steps, model.sampler.guidance), (4, 6.5));
    let be = select("cpu").expect("cpu backend");
    let h = |s: &[usize], d: &[f32]| HostTensor::new(s.to_vec(), d.to_vec()).expect("tensor");
    let mut plan = be
        .prepare(&cfg.unet_graph(2, 8, 8).expect("g"), &model)
        .expect("prepare");
    let got = plan
        .run(&[
            h(&[2, 4, 8, 8], &inp.x),
            h(&[2], &inp.t),
            h(&[2, l, 32], &ctx_host),
            h(&[2], &w),
        ])
        .expect("run")
        .swap_remove(0)
        .data;
    rel_close("guidance-embedded unet", &got, &eps);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_checkpoint_is_a_clear_error() {
    let dir = crate::scratch::scratch("host-ck");
    let p = dir.join("bad.safetensors");
    let mut ck = Checkpoint::default();
    ck.put("p", "a", vec![2, 2], vec![1.0; 4]);
    ck.meta.insert("kind".into(), "ldm".into());
    ck.save(&p).expect("save");
    let loaded = Checkpoint::load(&p).expect("load");
    assert_eq!(loaded.group("p")["a"].1, vec![1.0; 4]);
    let bytes = std::fs::read(&p).expect("read");
    std::fs::write(&p, &bytes[..bytes.len() - 5]).expect("truncate");
    let e = Checkpoint::load(&p)
        .err()
        .expect("truncated file must fail");
    assert!(format!("{e:#}").contains("not a valid checkpoint"), "{e:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The tiny decoder is written once: what burn trains is what every runtime backend runs.
#[test]
fn tiny_decoder_matches_burn_on_every_backend() {
    use ldm_edge::arch::tiny_decoder::{self, TinyDecoderConfig};
    let cfg = TinyDecoderConfig {
        latent_channels: 4,
        out_channels: 3,
        channels: 8,
        blocks: 2,
        factor: 4,
    };
    let z = gaussian(21, 2 * 4 * 5 * 6);
    let mut store = ParamStore::new(device(false), false, 17);
    let dev = store.device.clone();
    let zt = BT::from_vec(z.clone(), &[2, 4, 5, 6], &dev);
    let want = tiny_decoder::decode(
        &mut BurnOps::new(&mut store),
        &cfg,
        tiny_decoder::PREFIX,
        &zt,
    )
    .expect("burn forward");
    assert_eq!(want.shape, vec![2, 3, 20, 24]);
    let want = want.to_vec().expect("values");
    let weights: std::collections::HashMap<String, HostTensor> = store
        .to_host()
        .expect("host")
        .into_iter()
        .map(|(n, s, d)| (n, HostTensor::new(s, d).expect("tensor")))
        .collect();
    assert_eq!(weights.len(), cfg.param_specs().expect("specs").len());
    let graph = cfg.graph(2, 5, 6).expect("graph");
    for be in ["reference", "cpu", "cpu-expanded"] {
        let mut plan = select(be)
            .expect("backend")
            .prepare(&graph, &weights)
            .expect("prepare");
        let got = plan
            .run(&[HostTensor::new(vec![2, 4, 5, 6], z.clone()).expect("z")])
            .expect("run")
            .swap_remove(0)
            .data;
        rel_close(&format!("tiny decoder on {be}"), &got, &want);
    }
}

/// `export --lora`: a diffusers/PEFT-layout LoRA on one UNet and one text encoder layer is
/// merged into the EMA and raw weights of a checkpoint (W += scale * B A, alpha = rank without
/// metadata), nothing else moves, and a key for no layer is refused.
#[test]
fn export_merges_a_lora_into_the_checkpoint() {
    use safetensors::tensor::{Dtype, TensorView};
    let cfg = cfg();
    let specs = cfg.param_specs().expect("specs");
    let pick = |prefix: &str| {
        specs
            .iter()
            .find(|(p, s)| p.starts_with(prefix) && p.ends_with(".weight") && s.len() == 2)
            .cloned()
            .expect("a linear layer")
    };
    let layers = [pick(UNET), pick(TEXT)];
    let mut ck = Checkpoint::default();
    for (p, s) in &specs {
        let n: usize = s.iter().product();
        ck.put("p", p, s.clone(), vec![0.5; n]);
        ck.put("ema", p, s.clone(), vec![0.25; n]);
    }
    ck.meta
        .insert("config".into(), serde_json::to_string(&cfg).expect("json"));
    let dir = crate::scratch::scratch("host-lora");
    let write = |name: &str, extra: bool| {
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (path, shape) in &layers {
            let module = path.strip_suffix(".weight").expect("weight");
            let (out, fan_in) = (shape[0], shape[1]);
            let a: Vec<f32> = (0..2 * fan_in).map(|i| (i % 7) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..out * 2).map(|i| (i % 5) as f32 * 0.1 - 0.2).collect();
            let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            tensors.push((
                format!("{module}.lora_A.weight"),
                vec![2, fan_in],
                bytes(&a),
            ));
            tensors.push((format!("{module}.lora_B.weight"), vec![out, 2], bytes(&b)));
        }
        if extra {
            tensors.push(("unet.nowhere.lora_A.weight".into(), vec![1], vec![0; 4]));
        }
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), b).expect("view"),
                )
            })
            .collect();
        let p = dir.join(name);
        std::fs::write(&p, safetensors::serialize(views, None).expect("serialize")).expect("write");
        p
    };
    let bad = write("bad.safetensors", true);
    let e = format!(
        "{:#}",
        super::export::merge_lora(&mut ck.clone(), &[(bad, 1.0)]).unwrap_err()
    );
    assert!(e.contains("unet.nowhere.lora_A.weight"), "{e}");
    let good = write("good.safetensors", false);
    let before = ck.clone();
    let n = super::export::merge_lora(&mut ck, &[(good, 0.5)]).expect("merge");
    assert_eq!(n, [2]);
    for (key, (_, data)) in &ck.tensors {
        let old = &before.tensors[key].1;
        let path = key.split_once('/').expect("group").1;
        match layers.iter().find(|(p, _)| p == path) {
            None => assert_eq!(data, old, "{key} moved"),
            Some((_, shape)) => {
                let fan_in = shape[1];
                // Element (0, 1): 0.5 * sum_k B[0, k] A[k, 1] with B[0, :] = [-0.2, -0.1],
                // A[:, 1] = [0.1, (fan_in + 1) % 7 * 0.1].
                let a1 = ((fan_in + 1) % 7) as f32 * 0.1;
                let want = old[1] + 0.5 * (-0.2 * 0.1 + -0.1 * a1);
                assert!(
                    (data[1] - want).abs() < 1e-6,
                    "{key}: {} vs {want}",
                    data[1]
                );
            }
        }
    }
    assert!(ck.meta["recipe"].contains("LoRA merged"));
}
