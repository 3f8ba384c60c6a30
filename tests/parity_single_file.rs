//! Single-file import: tests/parity/fixtures/{sd1,sd2}/single_file.safetensors are the parity
//! pipelines in the original layout (sd2 with the OpenCLIP text encoder), written by
//! tests/parity/make_single_file.py and checked there by diffusers' own `from_single_file`.
//! Imported here with the fixture folder as the config, each must give the diffusers-folder
//! import's tensors bit for bit and diffusers' reference outputs; broken copies must fail with
//! errors that name the tensor.
use ldm_edge::format::DType;
use ldm_edge::import::{safetensors::SafeTensors, Import};
use ldm_edge::model::Model;

mod common;
#[path = "support/scratch.rs"]
mod scratch;
use common::check_components;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/parity/fixtures")
        .join(name)
}

fn sd1() -> PathBuf {
    fixture("sd1")
}

fn single_of(name: &str) -> PathBuf {
    fixture(name).join("single_file.safetensors")
}

fn single() -> PathBuf {
    single_of("sd1")
}

fn tmp(name: &str) -> PathBuf {
    scratch::scratch("single").join(name)
}

fn equals_diffusers_folder(name: &str) {
    let a = Import::from_checkpoint(&single_of(name), Some(&fixture(name))).unwrap();
    let b = Import::from_diffusers(&fixture(name)).unwrap();
    assert_eq!(a.config, b.config);
    let pa: Vec<_> = a.params().collect();
    let pb: Vec<_> = b.params().collect();
    assert_eq!(pa, pb);
    for (path, _) in pa {
        let (x, y) = (a.load(path).unwrap(), b.load(path).unwrap());
        let same = x.len() == y.len() && x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{name}: {path} differs");
    }
    assert_eq!(a.tokenizer_json, b.tokenizer_json);
}

#[test]
fn sd1_single_file_equals_diffusers_folder_bit_for_bit() {
    equals_diffusers_folder("sd1");
}

#[test]
fn sd2_single_file_equals_diffusers_folder_bit_for_bit() {
    equals_diffusers_folder("sd2");
}

fn components(name: &str) {
    let out = tmp(&format!("{name}-single.ldm"));
    let imp = Import::from_checkpoint(&single_of(name), Some(&fixture(name))).unwrap();
    imp.write(DType::F32, &out, "tests/parity_single_file.rs")
        .unwrap();
    let m = Model::open(&out).unwrap();
    check_components(&m, name, &format!("{name} single file"));
}

#[test]
fn sd1_single_file_components_match_diffusers() {
    components("sd1");
}

#[test]
fn sd2_single_file_components_match_diffusers() {
    components("sd2");
}

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// A copy of the sd1 single file with `f` applied, written as f32 safetensors.
fn edited(case: &str, f: impl FnOnce(&mut Tensors)) -> PathBuf {
    edited_of("sd1", case, f)
}

fn edited_of(name: &str, case: &str, f: impl FnOnce(&mut Tensors)) -> PathBuf {
    let st = SafeTensors::open(&single_of(name)).unwrap();
    let mut t: Tensors = st
        .entries
        .iter()
        // Integer buffers (position_ids, model_ema.num_updates) have no f32 form; they are
        // dropped, which the importer must not mind either.
        .filter_map(|(n, e)| Some((n.clone(), e.shape.clone(), st.load_f32(n).ok()?)))
        .collect();
    f(&mut t);
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (n, shape, v) in &t {
        let begin = data.len();
        data.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        header.insert(
            n.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    let p = tmp(&format!("{name}-{case}.safetensors"));
    std::fs::write(&p, out).unwrap();
    p
}

fn import_err(p: &Path) -> String {
    match Import::from_checkpoint(p, Some(&sd1())) {
        Ok(_) => panic!("{} imported", p.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn rewritten_copy_imports() {
    // The edit helper keeps every weight (it drops only integer buffers).
    let p = edited("intact", |_| {});
    Import::from_checkpoint(&p, Some(&sd1())).unwrap();
}

#[test]
fn missing_key_is_named() {
    let p = edited("missing", |t| {
        t.retain(|(n, _, _)| n != "model.diffusion_model.input_blocks.1.0.in_layers.2.weight")
    });
    let e = import_err(&p);
    assert!(
        e.contains("unet.down_blocks.0.resnets.0.conv1.weight"),
        "{e}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let key = "first_stage_model.decoder.mid.attn_1.q.weight";
    let p = edited("shape", |t| {
        let e = t.iter_mut().find(|(n, _, _)| n == key).unwrap();
        let n = e.2.len();
        e.1 = vec![n];
    });
    let e = import_err(&p);
    assert!(
        e.contains(key) && e.contains("vae.decoder.mid_block.attentions.0.to_q.weight"),
        "{e}"
    );
}

#[test]
fn unknown_extra_keys_are_listed() {
    // One that fits no name rule, one that maps to a name the architecture does not have.
    for key in [
        "model.diffusion_model.label_emb.0.0.weight",
        "first_stage_model.loss.logvar",
        "model.diffusion_model.input_blocks.1.0.in_layers.2.scale",
    ] {
        let p = edited("extra", |t| {
            t.push((key.to_string(), vec![2], vec![0.0; 2]))
        });
        let e = import_err(&p);
        assert!(e.contains(key), "{key}: {e}");
    }
}

fn import_err_of(name: &str, p: &Path) -> String {
    match Import::from_checkpoint(p, Some(&fixture(name))) {
        Ok(_) => panic!("{} imported", p.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn sd2_surplus_layers_are_not_skipped_silently() {
    // Only exactly one layer past the config's count is SD-2's unused last layer; with two, the
    // config does not fit the file and the layers are reported.
    let key = "cond_stage_model.model.transformer.resblocks.3.ln_1.weight";
    let p = edited_of("sd2", "surplus", |t| {
        t.push((key.to_string(), vec![32], vec![0.0; 32]))
    });
    let e = import_err_of("sd2", &p);
    assert!(e.contains("resblocks.2."), "{e}");
}

#[test]
fn sd2_fused_in_proj_of_wrong_shape_is_named() {
    let key = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight";
    let p = edited_of("sd2", "in_proj", |t| {
        let e = t.iter_mut().find(|(n, _, _)| n == key).unwrap();
        e.1 = vec![32, 96];
    });
    let e = import_err_of("sd2", &p);
    assert!(e.contains(key), "{e}");
}

#[test]
fn sdxl_single_files_are_refused_clearly() {
    let key = "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight";
    let p = edited("sdxl", |t| t.push((key.to_string(), vec![2], vec![0.0; 2])));
    let e = import_err(&p);
    assert!(e.contains("SDXL") && e.contains(key), "{e}");
}

#[test]
fn config_folder_is_required() {
    let e = match Import::from_checkpoint(&single(), None) {
        Ok(_) => panic!("imported without a config"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("config folder"), "{e}");
}
