//! CI: a micro model trains a few steps on generated data, the loss falls, the checkpoint
//! exports, and the runtime generates an image from it that decodes as a PNG.
use std::path::Path;
use std::process::Command;

fn ldm_host(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_ldm-host"))
        .args(args)
        .output()
        .expect("ldm-host runs");
    assert!(
        out.status.success(),
        "ldm-host {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Mean loss (column 1) of the first and last `k` rows of a training CSV.
fn loss_ends(csv: &Path, k: usize) -> (f64, f64) {
    let text = std::fs::read_to_string(csv).expect("log exists");
    let losses: Vec<f64> = text
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .nth(1)
                .expect("loss column")
                .parse()
                .expect("number")
        })
        .collect();
    assert!(losses.len() >= 2 * k, "only {} log rows", losses.len());
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    (mean(&losses[..k]), mean(&losses[losses.len() - k..]))
}

#[test]
fn micro_model_trains_exports_and_generates() {
    let dir = std::env::temp_dir().join(format!("ldm-host-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let p = |n: &str| dir.join(n).display().to_string();
    let data = [
        "--dataset",
        "shapes",
        "--dataset-len",
        "96",
        "--image-size",
        "32",
    ];
    let mut ae = vec!["train", "autoencoder", "--preset", "micro", "--steps", "40"];
    ae.extend(["--batch", "4", "--heldout", "8", "--quiet", "--lr", "2e-3"]);
    let (ae_ck, ae_log) = (p("ae.safetensors"), p("ae.csv"));
    ae.extend(["-o", &ae_ck, "--log", &ae_log]);
    ae.extend(data);
    ldm_host(&ae);
    let (a0, a1) = loss_ends(Path::new(&ae_log), 8);
    assert!(a1 < a0, "autoencoder loss did not fall: {a0} -> {a1}");

    let mut ldm = vec![
        "train", "ldm", "--preset", "micro", "--steps", "40", "--batch", "4",
    ];
    ldm.extend(["--warmup", "5", "--lr", "2e-3", "--quiet"]);
    let (ck, log) = (p("ldm.safetensors"), p("ldm.csv"));
    ldm.extend(["--autoencoder", &ae_ck, "-o", &ck, "--log", &log]);
    ldm.extend(data);
    ldm_host(&ldm);
    let (l0, l1) = loss_ends(Path::new(&log), 8);
    assert!(l1 < l0, "ldm loss did not fall: {l0} -> {l1}");

    let model_path = p("micro.ldm");
    ldm_host(&["export", &ck, "--dtype", "q8", "-o", &model_path]);
    let model = ldm_edge::model::Model::open(Path::new(&model_path)).expect("exported model opens");
    let pipe = ldm_edge::pipeline::Pipeline::new(
        &model,
        ldm_edge::backend::select("cpu").expect("cpu backend"),
    );
    let mut req = ldm_edge::pipeline::Txt2Img::new(&model, "a red circle").expect("request");
    req.steps = 4;
    let g = pipe
        .txt2img(&req, &mut |_| {}, &ldm_edge::pipeline::Cancel::new())
        .expect("generation runs");
    let png = dir.join("out.png");
    ldm_edge::pipeline::image::save_png(&png, &g.rgb, g.width, g.height).expect("png written");
    let img = image::open(&png).expect("png decodes").to_rgb8();
    assert_eq!((img.width() as usize, img.height() as usize), (32, 32));
    let _ = std::fs::remove_dir_all(&dir);
}
