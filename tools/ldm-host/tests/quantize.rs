//! `ldm-host quantize` on a tiny random model: the mix meets the budget it was given, a floor
//! that cannot be met writes nothing and says so, the same run writes the same bytes, and the
//! report round-trips through the header.
use ldm_edge::format::ModelFile;
use ldm_edge::quant_report::QuantReport;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

#[path = "../../../tests/support/scratch.rs"]
mod scratch_dir;

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| scratch_dir::fresh("host-quantize"))
}

fn ldm_host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ldm-host"))
        .args(args)
        .output()
        .expect("ldm-host runs")
}

fn ok(args: &[&str]) -> Output {
    let out = ldm_host(args);
    assert!(
        out.status.success(),
        "ldm-host {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The tiny preset with random f32 weights, made once per test process.
fn tiny() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let p = scratch().join("tiny-f32.ldm");
        let s = p.to_str().expect("utf-8 temp path").to_string();
        ok(&["init", "--preset", "tiny", "--seed", "3", "-o", &s]);
        s
    })
}

fn out(name: &str) -> String {
    scratch().join(name).to_str().expect("utf-8").to_string()
}

/// Few, short trials: what is tested is the bookkeeping, not the figures.
const FAST: [&str; 8] = [
    "--samples",
    "1",
    "--measure",
    "2",
    "--steps",
    "2",
    "--unit",
    "block",
];

fn report(path: &str) -> (QuantReport, u64) {
    let f = ModelFile::open(path).expect("output opens");
    let data: u64 = f.tensors().iter().map(|t| t.len).sum();
    let r = QuantReport::from_meta(f.meta())
        .expect("report parses")
        .expect("report present");
    (r, data)
}

#[test]
fn mixed_meets_its_budget() {
    let q8 = out("q8.ldm");
    ok(&[
        &["quantize", tiny(), "--target", "q8", "-o", &q8][..],
        &FAST,
    ]
    .concat());
    let (r8, _) = report(&q8);
    // Between all-q4 and all-q8: the search must mix.
    let budget = (r8.f16_bytes as f64 * 0.4) as u64;
    let mixed = out("mixed.ldm");
    let b = budget.to_string();
    ok(&[
        &[
            "quantize",
            tiny(),
            "--target",
            "mixed",
            "--budget-bytes",
            &b,
            "-o",
            &mixed,
        ][..],
        &FAST,
    ]
    .concat());
    let (r, data) = report(&mixed);
    assert!(
        data <= budget,
        "{data} bytes of tensors over the budget {budget}"
    );
    assert_eq!(r.tensor_bytes, data);
    assert_eq!(r.budget_bytes, Some(budget));
    assert_eq!(r.target, "mixed");
    let m = r.measured.as_ref().expect("measured");
    assert_eq!((m.prompts, m.seed_first, m.steps), (2, 0, 2));
    assert!(m.psnr_db_mean.is_finite() && m.psnr_db_mean > 0.0);
    let s = r.sensitivity.as_ref().expect("sensitivity summary");
    assert_eq!(s.unit, "block");
    assert!(s.units > 3 && !s.most_sensitive.is_empty());
    let unet = &r.components["unet"];
    assert!(
        unet.contains_key("q4") && (unet.contains_key("q8") || unet.contains_key("f16")),
        "{unet:?}"
    );

    // A budget under all-q4 cannot be met: nothing is written.
    let none = out("impossible.ldm");
    let o = ldm_host(
        &[
            &[
                "quantize",
                tiny(),
                "--target",
                "mixed",
                "--budget-bytes",
                "1000",
                "-o",
                &none,
            ][..],
            &FAST,
        ]
        .concat(),
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be met"));
    assert!(!Path::new(&none).exists());
}

#[test]
fn unmeetable_floor_writes_nothing() {
    let path = out("floor.ldm");
    let o = ldm_host(
        &[
            &[
                "quantize",
                tiny(),
                "--target",
                "q4",
                "--min-psnr",
                "99",
                "-o",
                &path,
            ][..],
            &FAST,
        ]
        .concat(),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("below the floor of 99 dB") && err.contains("nothing written"),
        "{err}"
    );
    assert!(!Path::new(&path).exists());
    // The same for a mix that cannot reach it even at f16.
    let o = ldm_host(
        &[
            &[
                "quantize",
                tiny(),
                "--target",
                "mixed",
                "--min-psnr",
                "101",
                "-o",
                &path,
            ][..],
            &FAST,
        ]
        .concat(),
    );
    assert!(!o.status.success());
    assert!(!Path::new(&path).exists());
}

#[test]
fn quantizing_twice_gives_identical_bytes() {
    let (a, b) = (out("twice-a.ldm"), out("twice-b.ldm"));
    for p in [&a, &b] {
        ok(&[
            &[
                "quantize",
                tiny(),
                "--target",
                "mixed",
                "--min-psnr",
                "30",
                "-o",
                p,
            ][..],
            &FAST,
        ]
        .concat());
    }
    let (x, y) = (std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"));
    assert!(x == y, "two runs wrote different files");
}

#[test]
fn report_round_trips_and_uniform_targets_keep_vectors_f32() {
    let q4 = out("q4.ldm");
    ok(&[
        &["quantize", tiny(), "--target", "q4", "-o", &q4][..],
        &FAST,
    ]
    .concat());
    let f = ModelFile::open(&q4).expect("opens");
    let r = QuantReport::from_meta(f.meta()).unwrap().unwrap();
    // Serialized again, the report is the header's JSON exactly.
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        f.meta()["provenance"]["quantization"]
    );
    for t in f.tensors() {
        let want = if t.shape.len() >= 2 { "q4" } else { "f32" };
        assert_eq!(t.dtype.name(), want, "{}", t.name);
    }
    let counted: usize = r
        .components
        .values()
        .flat_map(|m| m.values())
        .map(|t| t.tensors)
        .sum();
    assert_eq!(counted, f.tensors().len());
    assert!(r.reference.starts_with("f32 model"), "{}", r.reference);
    // The output opens as a model and generates.
    ldm_edge::model::Model::open(Path::new(&q4)).expect("a valid model");
}
