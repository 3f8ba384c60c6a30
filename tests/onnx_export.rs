//! ONNX export with external data (`ldm-host export --onnx --external-data`): the layout is
//! checked byte by byte against the inline export of the same graph, the external export is
//! loaded back by tract and must compute exactly what the inline one does, and where Python has
//! onnxruntime, onnxruntime runs it against diffusers' recorded outputs
//! (tests/parity/check_onnx.py).
#[path = "support/scratch.rs"]
mod scratch;
#[path = "support/tiny.rs"]
mod tiny;

use ldm_edge::arch::Task;
use ldm_edge::backend::cpu::to_onnx;
use ldm_edge::graph::{Graph, Op};
use ldm_edge::model::Model;
use prost::Message;
use std::path::{Path, PathBuf};
use tract_onnx::pb::{tensor_proto, ModelProto, TensorProto};
use tract_onnx::prelude::*;

/// Page alignment promised to onnxruntime, and the inline/external size threshold.
const ALIGN: u64 = 4096;
const MIN_BYTES: usize = 4096;

fn tiny_model(dir: &Path) -> Model {
    Model::open(&tiny::write_tiny(Task::Txt2img, dir)).unwrap()
}

fn read_proto(p: &Path) -> ModelProto {
    ModelProto::decode(std::fs::read(p).unwrap().as_slice()).unwrap()
}

fn ext_entry<'a>(t: &'a TensorProto, key: &str) -> &'a str {
    t.external_data
        .iter()
        .find(|e| e.key == key)
        .map(|e| e.value.as_str())
        .unwrap_or_else(|| panic!("{}: no external_data `{key}`", t.name))
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Deterministic, non-trivial inputs of the graph's shapes (all the UNet's inputs are f32).
fn inputs_of(g: &Graph) -> TVec<TValue> {
    g.inputs()
        .into_iter()
        .map(|i| {
            assert!(matches!(g.nodes[i].op, Op::Input { .. }));
            let shape = &g.nodes[i].shape;
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|k| ((k * 37 % 101) as f32 / 50.0) - 1.0)
                .collect();
            tract_ndarray::ArrayD::from_shape_vec(shape.clone(), data)
                .unwrap()
                .into_tensor()
                .into_tvalue()
        })
        .collect()
}

fn run_tract(p: &Path, g: &Graph) -> Vec<f32> {
    let plan = tract_onnx::onnx()
        .model_for_path(p)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let out = plan.run(inputs_of(g)).unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

#[test]
fn external_data_layout_matches_inline_export() {
    let dir = scratch::scratch("onnx-ext-layout");
    let m = tiny_model(&dir);
    let g = m.config.unet_graph(2, 8, 8).unwrap();
    let (in_dir, ext_dir) = (dir.join("inline"), dir.join("external"));
    std::fs::create_dir_all(&in_dir).unwrap();
    std::fs::create_dir_all(&ext_dir).unwrap();

    let inline = to_onnx(&g, &m)
        .unwrap()
        .write(&in_dir.join("unet.onnx"), false)
        .unwrap();
    assert!(inline.data.is_none(), "a tiny model fits inline");
    assert_eq!(files_in(&in_dir), ["unet.onnx"]);
    let ext = to_onnx(&g, &m)
        .unwrap()
        .write(&ext_dir.join("unet.onnx"), true)
        .unwrap();
    let data = ext
        .data
        .clone()
        .expect("--external-data writes a data file");
    // Temporary files are renamed away: exactly the two files remain.
    assert_eq!(files_in(&ext_dir), ["unet.onnx", "unet.onnx.data"]);
    let bytes = std::fs::read(&data.path).unwrap();
    assert_eq!(
        bytes.len() as u64,
        data.bytes,
        "reported size is the file's"
    );

    let a = read_proto(&inline.path);
    let b = read_proto(&ext.path);
    let (ga, gb) = (a.graph.as_ref().unwrap(), b.graph.as_ref().unwrap());
    assert_eq!(ga.initializer.len(), gb.initializer.len());
    let mut end = 0u64;
    let mut external = 0;
    for (ta, tb) in ga.initializer.iter().zip(&gb.initializer) {
        assert_eq!(ta.name, tb.name);
        assert_eq!(ta.dims, tb.dims);
        assert_eq!(ta.data_type, tb.data_type);
        let big = ta.data_type == tensor_proto::DataType::Float as i32
            && ta.float_data.len() * 4 >= MIN_BYTES;
        if !big {
            assert_eq!(ta, tb, "{}: small initializers stay inline", ta.name);
            continue;
        }
        external += 1;
        assert_eq!(
            tb.data_location,
            Some(tensor_proto::DataLocation::External as i32)
        );
        assert!(tb.float_data.is_empty() && tb.raw_data.is_empty());
        assert_eq!(ext_entry(tb, "location"), "unet.onnx.data");
        let offset: u64 = ext_entry(tb, "offset").parse().unwrap();
        let length: u64 = ext_entry(tb, "length").parse().unwrap();
        assert_eq!(offset % ALIGN, 0, "{}: offset {offset} unaligned", ta.name);
        // In file order, packed: no overlap, and no more padding than alignment needs.
        assert!(
            offset >= end && offset - end < ALIGN,
            "{}: offset {offset} after {end}",
            ta.name
        );
        assert_eq!(length, ta.float_data.len() as u64 * 4);
        let want: Vec<u8> = ta.float_data.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(
            bytes[offset as usize..(offset + length) as usize] == want[..],
            "{}: external bytes differ from the inline values",
            ta.name
        );
        end = offset + length;
    }
    assert!(external > 10, "only {external} external tensors");
    assert_eq!(external, data.tensors);
    assert_eq!(
        end,
        bytes.len() as u64,
        "no trailing bytes after the last tensor"
    );

    // Everything but the initializers' storage is the same model.
    let strip = |p: &ModelProto| {
        let mut p = p.clone();
        p.graph.as_mut().unwrap().initializer.clear();
        p
    };
    assert_eq!(strip(&a), strip(&b));
    assert!(ext.onnx_bytes < inline.onnx_bytes / 10);

    // tract reads the external data back and computes bit for bit what the inline file does.
    assert_eq!(run_tract(&ext.path, &g), run_tract(&inline.path, &g));
}

#[test]
fn inline_export_replaces_an_external_one() {
    let dir = scratch::scratch("onnx-ext-replace");
    let m = tiny_model(&dir);
    let g = m.config.unet_graph(1, 8, 8).unwrap();
    let out = dir.join("onnx");
    std::fs::create_dir_all(&out).unwrap();
    let p = out.join("unet.onnx");
    to_onnx(&g, &m).unwrap().write(&p, true).unwrap();
    assert_eq!(files_in(&out), ["unet.onnx", "unet.onnx.data"]);
    // Without the flag a small model is inline, and the stale data file is removed with it.
    let w = to_onnx(&g, &m).unwrap().write(&p, false).unwrap();
    assert!(w.data.is_none());
    assert_eq!(files_in(&out), ["unet.onnx"]);
    let bytes = to_onnx(&g, &m).unwrap().into_bytes().unwrap();
    assert_eq!(
        std::fs::read(&p).unwrap(),
        bytes,
        "the file is the inline bytes"
    );
}

fn python_with_onnxruntime() -> Option<PathBuf> {
    let py = PathBuf::from(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    let ok = std::process::Command::new(&py)
        .args(["-c", "import onnxruntime, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

/// The sd1 parity fixture exported with external data runs in onnxruntime, matches diffusers'
/// recorded outputs to 1e-4 and the inline export exactly. Needs `pip install onnxruntime
/// numpy`; skips loudly without them unless LDM_REQUIRE_ORT=1.
#[test]
fn external_data_export_runs_in_onnxruntime() {
    let Some(py) = python_with_onnxruntime() else {
        assert!(
            !std::env::var("LDM_REQUIRE_ORT").is_ok_and(|v| v == "1"),
            "LDM_REQUIRE_ORT=1 but python3 cannot import onnxruntime"
        );
        eprintln!("SKIP: python3 cannot import onnxruntime (pip install onnxruntime numpy)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = scratch::scratch("onnx-ext-ort");
    let model = dir.join("sd1.ldm");
    let imp =
        ldm_edge::import::Import::from_diffusers(&root.join("tests/parity/fixtures/sd1")).unwrap();
    imp.write(ldm_edge::format::DType::F32, &model, "tests/onnx_export.rs")
        .unwrap();
    let m = Model::open(&model).unwrap();
    let c = &m.config;
    // The shapes of the recorded inputs, as `ldm-host import --onnx` exports them.
    let side = c.image_size / c.vae.factor();
    for (sub, external) in [("inline", false), ("external", true)] {
        let out = dir.join(sub);
        std::fs::create_dir_all(&out).unwrap();
        for (name, g) in [
            ("text_encoder", c.text_graph(2).unwrap()),
            ("unet", c.unet_graph(2, side, side).unwrap()),
            ("decoder", c.decoder_graph(1, side, side).unwrap()),
        ] {
            let w = to_onnx(&g, &m)
                .unwrap()
                .write(&out.join(format!("{name}.onnx")), external)
                .unwrap();
            assert_eq!(w.data.is_some(), external, "{sub} {name}");
            if let Some(d) = w.data {
                assert!(d.tensors > 0, "{name}: nothing went external");
            }
        }
    }
    let status = std::process::Command::new(py)
        .arg(root.join("tests/parity/check_onnx.py"))
        .arg(dir.join("external"))
        .arg("sd1")
        .arg("--same-as")
        .arg(dir.join("inline"))
        .status()
        .unwrap();
    assert!(status.success(), "check_onnx.py failed: {status}");
}
