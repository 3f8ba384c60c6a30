//! LoRA merging against diffusers' `load_lora_weights` + `fuse_lora` on the sd1 tiny fixture
//! (fixtures from tests/parity/make_lora_fixture.py): the merged model's text encoder and UNet
//! outputs for sd1's recorded inputs, for a kohya file and a diffusers/PEFT file; and the errors
//! for a LoRA of another base model and for keys that match no layer.
use ldm_edge::backend::Tensor;
use ldm_edge::format::DType;
use ldm_edge::import::Import;
use ldm_edge::model::Model;
use std::path::{Path, PathBuf};

mod common;
#[path = "support/scratch.rs"]
mod scratch;
use common::*;

fn lora_file(rel: &str) -> PathBuf {
    fixture("lora").join(rel)
}

fn lora_ref(file: &str) -> Tensor {
    ldm_edge::npy::read_f32(&lora_file("ref").join(file)).unwrap()
}

fn scale(layout: &str) -> f32 {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lora_file("ref/inputs.json")).unwrap())
            .unwrap();
    v["scales"][layout].as_f64().unwrap() as f32
}

/// (text encoder output, UNet output) of `m` on sd1's recorded component inputs.
fn outputs(m: &Model) -> (Tensor, Tensor) {
    let inp = inputs("sd1");
    let ids: Vec<Vec<f32>> = serde_json::from_value(inp["text_ids"].clone()).unwrap();
    let (b, l) = (ids.len(), ids[0].len());
    let ids = Tensor::new(vec![b, l], ids.concat()).unwrap();
    let hidden = run(m, m.config.text_graph(b).unwrap(), vec![ids]);
    let sample = reference("sd1", "unet_sample.npy");
    let ts: Vec<f32> = serde_json::from_value(inp["unet_timesteps"].clone()).unwrap();
    let s = sample.shape.clone();
    let g = m.config.unet_graph(s[0], s[2], s[3]).unwrap();
    let ts = Tensor::new(vec![ts.len()], ts).unwrap();
    let out = run(m, g, vec![sample, ts, reference("sd1", "unet_context.npy")]);
    (hidden, out)
}

fn merged(layout: &str, file: &Path) -> Model {
    let mut imp = Import::from_diffusers(&fixture("sd1")).unwrap();
    let n = imp.add_lora(file, scale(layout)).unwrap();
    assert!(n > 20, "{layout}: only {n} layers adapted");
    let out = tmp("lora", &format!("{layout}.ldm"));
    imp.write(DType::F32, &out, "tests/lora_parity.rs").unwrap();
    Model::open(&out).unwrap()
}

fn parity(layout: &str, file: &Path) {
    let m = merged(layout, file);
    let (text, unet) = outputs(&m);
    let e_text = max_abs(&text, &lora_ref(&format!("{layout}_text_hidden.npy")));
    let e_unet = max_abs(&unet, &lora_ref(&format!("{layout}_unet_out.npy")));
    // The LoRA must move both outputs well beyond the tolerance, or the check proves nothing.
    let d_text = max_abs(&text, &reference("sd1", "text_hidden.npy"));
    let d_unet = max_abs(&unet, &reference("sd1", "unet_out.npy"));
    eprintln!(
        "{layout}: max abs error text {e_text:.2e} unet {e_unet:.2e} (the LoRA moves them by \
         {d_text:.2e} and {d_unet:.2e})"
    );
    assert!(
        d_text > 1e-2 && d_unet > 1e-2,
        "{layout}: LoRA had no effect"
    );
    assert!(e_text <= 1e-5, "{layout} text encoder: {e_text}");
    assert!(e_unet <= 1e-5, "{layout} unet: {e_unet}");
}

#[test]
fn kohya_lora_merges_like_diffusers_fuse_lora() {
    parity("kohya", &lora_file("kohya.safetensors"));
}

#[test]
fn peft_lora_merges_like_diffusers_fuse_lora() {
    parity("peft", &lora_file("peft/pytorch_lora_weights.safetensors"));
}

fn add_err(file: &Path) -> String {
    let mut imp = Import::from_diffusers(&fixture("sd1")).unwrap();
    match imp.add_lora(file, 1.0) {
        Ok(n) => panic!("{} merged ({n} layers)", file.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_lora_for_another_base_model_is_a_clear_error() {
    let e = add_err(&lora_file("other_base.safetensors"));
    assert!(e.contains("another base model"), "{e}");
    assert!(
        e.contains("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"),
        "{e}"
    );
}

/// Writes f32 tensors as safetensors.
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (n, shape, v) in tensors {
        let begin = data.len();
        data.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        header.insert(
            n.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

#[test]
fn unmatched_lora_keys_are_listed() {
    let p = tmp("lora", "unmatched.safetensors");
    let q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    write_safetensors(
        &p,
        &[
            (&format!("{q}.lora_down.weight"), vec![1, 16], vec![0.1; 16]),
            (&format!("{q}.lora_up.weight"), vec![16, 1], vec![0.1; 16]),
            (
                "lora_unet_no_such_layer.lora_down.weight",
                vec![1, 4],
                vec![0.0; 4],
            ),
            (
                "lora_unet_no_such_layer.lora_up.weight",
                vec![4, 1],
                vec![0.0; 4],
            ),
            (
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha",
                vec![],
                vec![1.0],
            ),
            ("something_else", vec![1], vec![0.0]),
        ],
    );
    let e = add_err(&p);
    for k in [
        "lora_unet_no_such_layer.lora_down.weight",
        "lora_unet_no_such_layer.lora_up.weight",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha",
        "something_else",
    ] {
        assert!(e.contains(k), "{k} not listed: {e}");
    }
    assert!(e.contains("4 LoRA tensor(s)"), "{e}");
    // The matching layer alone merges.
    write_safetensors(
        &p,
        &[
            (&format!("{q}.lora_down.weight"), vec![1, 16], vec![0.1; 16]),
            (&format!("{q}.lora_up.weight"), vec![16, 1], vec![0.1; 16]),
        ],
    );
    let mut imp = Import::from_diffusers(&fixture("sd1")).unwrap();
    assert_eq!(imp.add_lora(&p, 1.0).unwrap(), 1);
}
