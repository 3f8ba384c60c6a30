//! End to end through the `ldm` binary on the shipped default model, and on tiny random
//! inpainting and super-resolution models for `ldm inpaint` and `ldm upscale`.
#[path = "support/scratch.rs"]
mod scratch;
#[path = "support/tiny.rs"]
mod tiny;

use ldm_edge::arch::Task;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROMPT: &str = "a red circle above a blue square";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tmp(name: &str) -> PathBuf {
    scratch::scratch("e2e").join(name)
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
    for s in [
        "ddim",
        "ddpm",
        "pndm",
        "euler",
        "euler_a",
        "heun",
        "dpmpp_2m",
        "dpmpp_2m_sde",
        "unipc",
    ] {
        let out = tmp(&format!("s-{s}.png"));
        ok(&generate(&out, &["--sampler", s, "--guidance", "3"]));
        assert!(image::open(&out).is_ok());
    }
}

#[test]
fn karras_sigmas_from_the_command_line() {
    let plain = tmp("k-plain.png");
    let karras = tmp("k-karras.png");
    ok(&generate(&plain, &["--sampler", "dpmpp_2m"]));
    ok(&generate(&karras, &["--sampler", "dpmpp_2m", "--karras"]));
    assert_ne!(
        std::fs::read(&plain).unwrap(),
        std::fs::read(&karras).unwrap(),
        "--karras has no effect"
    );
    // The default model's schedule is not Karras', so --no-karras changes nothing.
    let off = tmp("k-off.png");
    ok(&generate(&off, &["--sampler", "dpmpp_2m", "--no-karras"]));
    assert_eq!(std::fs::read(&plain).unwrap(), std::fs::read(&off).unwrap());
    fails_with(
        &generate(&tmp("k-ddim.png"), &["--sampler", "ddim", "--karras"]),
        "Karras",
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = tmp("bad.png");
    fails_with(
        &ldm(&["generate", "  ", "-o", out.to_str().unwrap()]),
        "prompt is empty",
    );
    fails_with(&generate(&out, &["--size", "30x32"]), "multiple of");
    fails_with(&generate(&out, &["--sampler", "kdpm2"]), "kdpm2");
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

/// `ldm info m.ldm | head -1`: output into a closed pipe ends the process quietly (as SIGPIPE
/// does for any shell tool), never with a panic message.
#[test]
fn output_into_a_closed_pipe_is_not_a_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ldm"))
        .current_dir(root())
        .args(["info", "models/shapes-32.ldm"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closing the read end before the child prints anything makes its first write fail.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
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

/// `--count N` prepares the model once and makes the images of seeds SEED..SEED+N: each is
/// bit-identical to the single run of its seed.
#[test]
fn count_makes_the_images_of_consecutive_seeds() {
    let out = tmp("many.png");
    ok(&generate(&out, &["--count", "3", "-s", "5"]));
    for i in 0..3 {
        let one = tmp(&format!("one-{i}.png"));
        ok(&generate(&one, &["-s", &(5 + i).to_string()]));
        let many = tmp(&format!("many-{i}.png"));
        assert_eq!(
            std::fs::read(&many).unwrap(),
            std::fs::read(&one).unwrap(),
            "image {i} of --count 3 differs from seed {}",
            5 + i
        );
    }
    fails_with(
        &generate(&tmp("x.png"), &["--count", "2", "--save-latents", "l.npy"]),
        "--count",
    );
    fails_with(&generate(&tmp("x.png"), &["--count", "0"]), "count");
}

/// The shipped student runs with the defaults it stores (lcm, 4 steps, one UNet call per
/// step), and `ldm bench --generate` times whole requests with them, with and without plans
/// kept between requests.
#[test]
fn distilled_student_runs_with_its_own_defaults() {
    let m = root().join("models/shapes-32-lcm.ldm");
    let o = ldm(&["bench", "--generate", "-m", s(&m), "--iters", "1", "--json"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sampler"], "lcm", "{v}");
    assert_eq!(v["steps"], 4, "{v}");
    assert_eq!(v["unet_evals"], 4, "{v}");
    assert!(v["ms_per_image"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    assert!(
        v["ms_per_image_reused"].as_f64().is_some_and(|x| x > 0.0),
        "{v}"
    );
    let out = tmp("student.png");
    ok(&ldm(&[
        "generate",
        "a red circle",
        "-m",
        s(&m),
        "-o",
        s(&out),
        "-q",
    ]));
    assert_eq!(png_size(&out), (32, 32));
}

/// `ldm bench --profile` on the CPU: every compact kernel kind the UNet uses shows up, and the
/// shares add up to the whole.
#[test]
fn cpu_bench_profiles_each_op() {
    let o = ldm(&[
        "bench",
        "--backend",
        "cpu",
        "--latent",
        "8",
        "--iters",
        "1",
        "--profile",
        "--json",
    ]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ops = v["unet_profile"]["ops"].as_array().expect("a CPU profile");
    let names: Vec<&str> = ops.iter().filter_map(|t| t["op"].as_str()).collect();
    for k in ["LdmConv", "LdmLinear", "LdmAttention", "LdmGroupNorm"] {
        assert!(names.contains(&k), "{k} missing from {names:?}");
    }
    let share: f64 = ops.iter().filter_map(|t| t["share"].as_f64()).sum();
    assert!((share - 1.0).abs() < 1e-6, "shares sum to {share}");
}

fn save_test_png(name: &str, h: usize, w: usize) -> PathBuf {
    let p = tmp(name);
    let rgb = ldm_edge::pipeline::image::to_rgb8(&tiny::test_image(h, w)).unwrap();
    ldm_edge::pipeline::image::save_png(&p, &rgb, w, h).unwrap();
    p
}

fn png_size(p: &Path) -> (u32, u32) {
    image::open(p).unwrap().to_rgb8().dimensions()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn generate_with_an_init_image() {
    let init = save_test_png("init.png", 32, 32);
    let a = tmp("i2i-a.png");
    ok(&generate(&a, &["--init-image", s(&init), "--seed", "5"]));
    assert_eq!(png_size(&a), (32, 32));
    // Strength 1 ignores the image: exactly the plain txt2img output for the seed.
    let b = tmp("i2i-b.png");
    let c = tmp("i2i-c.png");
    ok(&generate(
        &b,
        &["--init-image", s(&init), "--strength", "1", "--seed", "5"],
    ));
    ok(&generate(&c, &["--seed", "5"]));
    assert_eq!(std::fs::read(&b).unwrap(), std::fs::read(&c).unwrap());
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());

    let out = tmp("i2i-bad.png");
    fails_with(
        &generate(&out, &["--strength", "0.5"]),
        "--strength needs --init-image",
    );
    fails_with(
        &generate(&out, &["--init-image", s(&init), "--size", "64x64"]),
        "init image",
    );
    fails_with(
        &generate(&out, &["--init-image", s(&init), "--strength", "2"]),
        "strength",
    );
    let odd = save_test_png("init-odd.png", 30, 30);
    fails_with(&generate(&out, &["--init-image", s(&odd)]), "multiple of");
    let junk = tmp("junk.png");
    std::fs::write(&junk, b"not a png").unwrap();
    fails_with(&generate(&out, &["--init-image", s(&junk)]), "junk.png");
    fails_with(
        &generate(&out, &["--init-image", "no/such/image.png"]),
        "no/such/image.png",
    );
    assert!(!out.exists(), "a failed run left an image behind");
}

#[test]
fn inpaint_writes_the_image_with_the_kept_pixels_unchanged() {
    let dir = scratch::scratch("e2e");
    let model = tiny::write_tiny(Task::Inpaint, &dir);
    let img = save_test_png("inp-in.png", 32, 32);
    let mask: Vec<u8> = tiny::center_mask(32, 32)
        .iter()
        .map(|&m| if m > 0.0 { 255 } else { 0 })
        .collect();
    let mask_png = tmp("inp-mask.png");
    image::GrayImage::from_raw(32, 32, mask.clone())
        .unwrap()
        .save(&mask_png)
        .unwrap();
    let out = tmp("inp-out.png");
    let args = |out: &Path, model: &Path, mask: &Path| {
        vec![
            "inpaint".to_string(),
            "a blue star".into(),
            "--model".into(),
            s(model).into(),
            "--image".into(),
            s(&img).into(),
            "--mask".into(),
            s(mask).into(),
            "--steps".into(),
            "2".into(),
            "-q".into(),
            "-o".into(),
            s(out).into(),
        ]
    };
    let run = |a: Vec<String>| ldm(&a.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&run(args(&out, &model, &mask_png)));
    let got = image::open(&out).unwrap().to_rgb8();
    let want = image::open(&img).unwrap().to_rgb8();
    assert_eq!(got.dimensions(), (32, 32));
    for (i, m) in mask.iter().enumerate() {
        if *m == 0 {
            assert_eq!(
                got.as_raw()[i * 3..i * 3 + 3],
                want.as_raw()[i * 3..i * 3 + 3]
            );
        }
    }
    assert_ne!(got.as_raw(), want.as_raw(), "the hole was not regenerated");

    let bad = tmp("inp-bad.png");
    let small_mask = tmp("inp-mask-small.png");
    image::GrayImage::new(16, 16).save(&small_mask).unwrap();
    fails_with(&run(args(&bad, &model, &small_mask)), "is 16x16 but image");
    let txt2img = root().join("models/shapes-32.ldm");
    fails_with(&run(args(&bad, &txt2img, &mask_png)), "ldm generate");
    // The inpainting model under `generate`: named, with the right command.
    fails_with(
        &generate(&bad, &["--model", s(&model)]),
        "is a model for task inpaint, not txt2img: run it with `ldm inpaint`",
    );
    assert!(!bad.exists());
}

#[test]
fn upscale_writes_four_times_the_input() {
    let dir = scratch::scratch("e2e");
    let model = tiny::write_tiny(Task::Sr, &dir);
    for (h, w) in [(13, 21), (3, 5)] {
        let input = save_test_png(&format!("up-in-{h}x{w}.png"), h, w);
        let out = tmp(&format!("up-out-{h}x{w}.png"));
        ok(&ldm(&[
            "upscale",
            s(&input),
            "--model",
            s(&model),
            "--steps",
            "2",
            "--overlap",
            "3",
            "-q",
            "-o",
            s(&out),
        ]));
        assert_eq!(png_size(&out), (4 * w as u32, 4 * h as u32));
    }
    let input = save_test_png("up-in.png", 13, 21);
    let bad = tmp("up-bad.png");
    let up = |model: &Path, extra: &[&str]| {
        let mut a = vec![
            "upscale",
            s(&input),
            "--model",
            s(model),
            "-q",
            "-o",
            s(&bad),
        ];
        a.extend_from_slice(extra);
        ldm(&a)
    };
    fails_with(
        &up(&root().join("models/shapes-32.ldm"), &[]),
        "is a model for task txt2img, not sr: run it with `ldm generate`",
    );
    fails_with(&up(&model, &["--overlap", "8"]), "overlap");
    fails_with(&up(&model, &["--steps", "0"]), "steps");
    let junk = tmp("up-junk.png");
    std::fs::write(&junk, b"\x89PNG but not really").unwrap();
    let o = ldm(&["upscale", s(&junk), "--model", s(&model), "-o", s(&bad)]);
    fails_with(&o, "up-junk.png");
    assert!(!bad.exists(), "a failed run left an image behind");
}
