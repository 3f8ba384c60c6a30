//! End to end through the `ldm` binary on the shipped default model.
use std::path::{Path, PathBuf};
use std::process::Command;

const PROMPT: &str = "a red circle above a blue square";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ldm-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn ldm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ldm"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap()
}

fn generate(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "generate",
        PROMPT,
        "--steps",
        "4",
        "-q",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ldm(&args)
}

fn ok(o: &std::process::Output) {
    assert!(
        o.status.success(),
        "ldm failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A failed command exits non-zero with one line that starts with `error:` and names `needle`.
fn fails_with(o: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, got success");
    let line = err
        .lines()
        .rfind(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in {err}"));
    assert!(
        line.contains(needle),
        "error line `{line}` does not mention `{needle}`"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn generate_writes_a_png_and_is_deterministic() {
    let a = tmp("a.png");
    let b = tmp("b.png");
    ok(&generate(&a, &["--seed", "7"]));
    ok(&generate(&b, &["--seed", "7"]));
    let img = image::open(&a).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (32, 32));
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same seed, different bytes"
    );
    let c = tmp("c.png");
    ok(&generate(&c, &["--seed", "8"]));
    assert_ne!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&c).unwrap(),
        "seed has no effect"
    );
}

#[test]
fn init_noise_round_trips_with_save_latents() {
    let a = tmp("rt-a.png");
    let lat = tmp("rt.npy");
    ok(&generate(
        &a,
        &["--seed", "3", "--save-latents", lat.to_str().unwrap()],
    ));
    let init = lat.with_extension("init.npy");
    let b = tmp("rt-b.png");
    let lat2 = tmp("rt2.npy");
    // A different seed: the image must come from the given noise alone.
    ok(&generate(
        &b,
        &[
            "--seed",
            "99",
            "--init-noise",
            init.to_str().unwrap(),
            "--save-latents",
            lat2.to_str().unwrap(),
        ],
    ));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(std::fs::read(&lat).unwrap(), std::fs::read(&lat2).unwrap());
    assert_eq!(
        std::fs::read(&init).unwrap(),
        std::fs::read(lat2.with_extension("init.npy")).unwrap()
    );
}

#[test]
fn every_sampler_runs() {
    for s in ["ddim", "ddpm", "euler_a", "dpmpp_2m"] {
        let out = tmp(&format!("s-{s}.png"));
        ok(&generate(&out, &["--sampler", s, "--guidance", "3"]));
        assert!(image::open(&out).is_ok());
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = tmp("bad.png");
    fails_with(
        &ldm(&["generate", "  ", "-o", out.to_str().unwrap()]),
        "prompt is empty",
    );
    fails_with(&generate(&out, &["--size", "30x32"]), "multiple of");
    fails_with(&generate(&out, &["--sampler", "heun"]), "heun");
    fails_with(&generate(&out, &["--steps", "0"]), "steps");
    fails_with(&generate(&out, &["--backend", "tpu"]), "unknown backend");
    fails_with(
        &generate(&out, &["--model", "does/not/exist.ldm"]),
        "exist.ldm",
    );
    let bad_npy = tmp("bad.npy");
    std::fs::write(&bad_npy, b"not numpy").unwrap();
    fails_with(
        &generate(&out, &["--init-noise", bad_npy.to_str().unwrap()]),
        "npy",
    );
    // A truncated copy of the model: never a panic or an image.
    let bytes = std::fs::read(root().join("models/shapes-32.ldm")).unwrap();
    let trunc = tmp("trunc.ldm");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &generate(&out, &["--model", trunc.to_str().unwrap()]),
        "trunc.ldm",
    );
    assert!(!out.exists(), "a failed run left an image behind");
}

#[test]
fn info_and_verify() {
    let o = ldm(&["info", "models/shapes-32.ldm"]);
    ok(&o);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("unet.conv_in.weight") && s.contains("tensors:"),
        "{s}"
    );
    ok(&ldm(&["verify", "models/shapes-32.ldm"]));
    // Flip one byte of tensor data: verify must fail on the digest.
    let path = root().join("models/shapes-32.ldm");
    let f = ldm_edge::format::ModelFile::open(&path).unwrap();
    let t = f
        .tensors()
        .iter()
        .find(|t| t.name == "unet.conv_in.weight")
        .unwrap();
    let at = (f.data_offset() + t.offset + 5) as usize;
    drop(f);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at] ^= 0x55;
    let bad = tmp("flipped.ldm");
    std::fs::write(&bad, &bytes).unwrap();
    fails_with(&ldm(&["verify", bad.to_str().unwrap()]), "digest");
}

#[test]
fn bench_reports_json() {
    let o = ldm(&["bench", "--latent", "8", "--iters", "1", "--json"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in [
        "unet_ms_per_eval",
        "text_encoder_ms",
        "decoder_ms",
        "peak_rss_mb",
        "load_ms",
        "file_bytes",
    ] {
        assert!(
            v[k].as_f64().is_some_and(|x| x > 0.0),
            "{k} missing or zero in {v}"
        );
    }
}
