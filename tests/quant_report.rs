//! The quantization report in the header: it round-trips, `ldm info` prints it readably, and
//! every shipped model carries one.
use ldm_edge::format::{DType, ModelFile, ModelWriter};
use ldm_edge::quant_report::{CheckerChange, Measured, QuantReport, KEY};
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "support/scratch.rs"]
mod scratch;

fn ldm_info(path: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ldm"))
        .arg("info")
        .arg(path)
        .output()
        .expect("ldm runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn report_round_trips_and_info_prints_it() {
    let mut w = ModelWriter::new(serde_json::json!({"provenance": {"kind": "test"}})).unwrap();
    w.add("unet.a.weight", &[4, 32], &[0.5; 128], DType::Q4)
        .unwrap();
    w.add("unet.a.bias", &[4], &[0.1; 4], DType::F32).unwrap();
    w.add("vae.b.weight", &[2, 32], &[0.25; 64], DType::Q8)
        .unwrap();
    let mut r = QuantReport::counts("ldm-host test", "quantize", "mixed", "f32 test", &w);
    r.budget_bytes = Some(200);
    r.measured = Some(Measured {
        prompt_set: "shapes held-out captions".into(),
        prompts: 50,
        seed_first: 0,
        sampler: "lcm".into(),
        steps: 4,
        guidance: 5.0,
        image_size: 32,
        backend: "cpu".into(),
        psnr_db_mean: 41.25,
        psnr_db_min: 35.5,
        ssim_mean: 0.9951,
        ssim_min: 0.98,
    });
    r.checker = Some(CheckerChange {
        prompts: 50,
        reference_per_attribute: 90.0,
        quantized_per_attribute: 89.5,
        change_points: -0.5,
        attributes: [("color".to_string(), [95.0, 94.0])].into_iter().collect(),
    });
    assert_eq!(r.components["unet"]["q4"].tensors, 1);
    assert_eq!(r.components["unet"]["f32"].bytes, 16);
    assert_eq!(r.tensor_bytes, 18 * 4 + 16 + 34 * 2);
    r.insert_into(w.meta_mut()).unwrap();
    let dir = scratch::scratch("quant-report");
    let path = dir.join("r.ldm");
    w.write(&path).unwrap();

    let f = ModelFile::open(&path).unwrap();
    assert_eq!(f.meta()["provenance"]["kind"], "test");
    assert_eq!(QuantReport::from_meta(f.meta()).unwrap(), Some(r));

    let text = ldm_info(&path);
    assert!(
        text.contains("quantization: target mixed (by quantize"),
        "{text}"
    );
    assert!(text.contains("PSNR 41.25 dB mean"), "{text}");
    assert!(text.contains("seeds 0..=49"), "{text}");
    assert!(text.contains("90.0% -> 89.5% (-0.5 points"), "{text}");
    // Printed once, readably, not again inside the provenance JSON.
    assert!(!text.contains(&format!("\"{KEY}\"")), "{text}");
}

#[test]
fn every_shipped_model_carries_a_report() {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut seen = 0;
    for e in std::fs::read_dir(&models).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "ldm") {
            let f = ModelFile::open(&p).unwrap();
            let r = QuantReport::from_meta(f.meta())
                .unwrap()
                .unwrap_or_else(|| panic!("{} has no quantization report", p.display()));
            assert_eq!(r.by, "quantize", "{}", p.display());
            assert!(ldm_info(&p).contains("quantization: target"));
            seen += 1;
        }
    }
    assert!(seen >= 4);
}
