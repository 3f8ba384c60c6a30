//! Import error cases: each broken copy of the sd1 parity fixture must fail with an error that
//! names the tensor or config field at fault, and pickle checkpoints must be refused.
use ldm_edge::import::{safetensors::SafeTensors, Import};
use std::path::{Path, PathBuf};

#[path = "support/scratch.rs"]
mod scratch;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/fixtures/sd1")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// A fresh copy of the fixture for one case.
fn broken_copy(case: &str) -> PathBuf {
    let d = scratch::fresh(&format!("import-{case}"));
    copy_dir(&fixture(), &d);
    d
}

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn read_all(path: &Path) -> Tensors {
    let st = SafeTensors::open(path).unwrap();
    st.entries
        .iter()
        .map(|(n, e)| (n.clone(), e.shape.clone(), st.load_f32(n).unwrap()))
        .collect()
}

/// Writes f32 tensors in the safetensors layout.
fn write_all(path: &Path, tensors: &Tensors) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (n, shape, v) in tensors {
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
    std::fs::write(path, out).unwrap();
}

fn edit_unet(case: &str, f: impl FnOnce(&mut Tensors)) -> PathBuf {
    let d = broken_copy(case);
    let p = d.join("unet/diffusion_pytorch_model.safetensors");
    let mut t = read_all(&p);
    f(&mut t);
    write_all(&p, &t);
    d
}

fn import_err(dir: &Path) -> String {
    match Import::from_diffusers(dir) {
        Ok(_) => panic!("{} imported", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn intact_copy_imports() {
    // The rewrite itself must not break anything, or the cases below prove nothing.
    let d = edit_unet("intact", |_| {});
    Import::from_diffusers(&d).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let d = edit_unet("missing", |t| t.retain(|(n, _, _)| n != "conv_in.bias"));
    let e = import_err(&d);
    assert!(e.contains("unet.conv_in.bias"), "{e}");
}

#[test]
fn wrong_shape_is_named() {
    let d = edit_unet("shape", |t| {
        for (n, s, v) in t.iter_mut() {
            if n == "conv_in.bias" {
                *s = vec![s[0] - 1];
                v.pop();
            }
        }
    });
    let e = import_err(&d);
    assert!(e.contains("unet.conv_in.bias") && e.contains("[15]"), "{e}");
}

#[test]
fn extra_tensor_is_reported() {
    let d = edit_unet("extra", |t| {
        t.push(("extra_head.weight".into(), vec![2], vec![0.0, 1.0]))
    });
    let e = import_err(&d);
    assert!(e.contains("unet.extra_head.weight"), "{e}");
}

fn edit_config(case: &str, file: &str, key: &str, value: serde_json::Value) -> String {
    let d = broken_copy(case);
    let p = d.join(file);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(&p, v.to_string()).unwrap();
    import_err(&d)
}

#[test]
fn unsupported_config_fields_are_named() {
    let cases = [
        (
            "unet/config.json",
            "class_embed_type",
            serde_json::json!("timestep"),
        ),
        ("vae/config.json", "shift_factor", serde_json::json!(0.1)),
        (
            "text_encoder/config.json",
            "hidden_act",
            serde_json::json!("relu"),
        ),
        (
            "scheduler/scheduler_config.json",
            "thresholding",
            serde_json::json!(true),
        ),
    ];
    for (i, (file, key, value)) in cases.into_iter().enumerate() {
        let e = edit_config(&format!("field{i}"), file, key, value);
        assert!(e.contains(key), "{file} {key}: {e}");
    }
}

/// Keys this importer does not know (newer diffusers/transformers add them all the time) are
/// ignored with a debug log, and Python's non-finite number tokens parse, in every config.
#[test]
fn unknown_config_fields_and_python_infinity_are_accepted() {
    let d = broken_copy("future-keys");
    for file in [
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "scheduler/scheduler_config.json",
        "model_index.json",
    ] {
        let p = d.join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        let body = text.trim_end().strip_suffix('}').unwrap();
        // As Python's json.dumps writes them: bare Infinity / -Infinity / NaN.
        let edited = format!(
            "{body},\n  \"some_future_option\": 1,\n  \"future_inf\": -Infinity,\n  \
             \"future_nan\": NaN,\n  \"future_max\": Infinity\n}}\n"
        );
        std::fs::write(&p, edited).unwrap();
    }
    let imp = Import::from_diffusers(&d).unwrap();
    assert_eq!(imp.sampler.sampler, "ddim");
}

#[test]
fn pickle_checkpoints_are_refused() {
    let d = broken_copy("pickle");
    for name in ["model.ckpt", "model.pt", "disguised.safetensors"] {
        let p = d.join(name);
        // A pickle protocol-2 stream header.
        std::fs::write(&p, b"\x80\x02}q\x00.").unwrap();
        let e = match Import::from_checkpoint(&p, None) {
            Ok(_) => panic!("{name} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("arbitrary code"), "{name}: {e}");
    }
    // A diffusers folder whose UNet exists only as a pickle is refused for the same reason.
    std::fs::remove_file(d.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(d.join("unet/diffusion_pytorch_model.bin"), b"PK\x03\x04").unwrap();
    let e = import_err(&d);
    assert!(e.contains("arbitrary code"), "{e}");
}
