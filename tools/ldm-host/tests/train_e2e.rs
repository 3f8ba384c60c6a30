//! CI: a micro model trains a few steps on generated data, the loss falls, the checkpoint
//! exports, and the runtime generates an image from it that decodes as a PNG.
use std::path::Path;
use std::process::Command;

#[path = "../../../tests/support/scratch.rs"]
mod scratch;

fn ldm_host(args: &[&str]) {
    ldm_host_env(args, &[]);
}

fn ldm_host_env(args: &[&str], env: &[(&str, &str)]) {
    let out = Command::new(env!("CARGO_BIN_EXE_ldm-host"))
        .args(args)
        .envs(env.iter().copied())
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
    let dir = scratch::fresh("host-e2e");
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
    ae.extend([
        "--batch",
        "4",
        "--heldout",
        "8",
        "--quiet",
        "--lr",
        "2e-3",
        "--warmup",
        "4",
    ]);
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

    // A consistency-distilled student of that model: its loss falls, it exports with the LCM
    // sampler as its default, and it generates in 4 steps.
    let mut d = vec!["distill", "lcm", "--preset", "micro", "--steps", "150"];
    d.extend(["--batch", "8", "--warmup", "10", "--lr", "1e-4", "--quiet"]);
    let (st, st_log) = (p("student.safetensors"), p("distill.csv"));
    d.extend(["--teacher", &ck, "-o", &st, "--log", &st_log]);
    d.extend(data);
    ldm_host(&d);
    let (d0, d1) = loss_ends(Path::new(&st_log), 25);
    assert!(d1 < d0, "distillation loss did not fall: {d0} -> {d1}");
    let student_path = p("student.ldm");
    ldm_host(&["export", &st, "--dtype", "q8", "-o", &student_path]);
    let student =
        ldm_edge::model::Model::open(Path::new(&student_path)).expect("the student opens");
    assert_eq!(
        (student.sampler.sampler.as_str(), student.sampler.steps),
        ("lcm", 4)
    );
    let req = ldm_edge::pipeline::Txt2Img::new(&student, "a red circle").expect("request");
    let g = ldm_edge::pipeline::Pipeline::new(
        &student,
        ldm_edge::backend::select("cpu").expect("cpu backend"),
    )
    .txt2img(&req, &mut |_| {}, &ldm_edge::pipeline::Cancel::new())
    .expect("the student generates with its own defaults");
    assert_eq!((g.width, g.height), (32, 32));

    let model_path = p("micro.ldm");
    ldm_host(&["export", &ck, "--dtype", "q8", "-o", &model_path]);
    // A model file can be the teacher too (its q8 weights decoded).
    let from_file = p("from-file.safetensors");
    let mut d = vec!["distill", "lcm", "--preset", "micro", "--steps", "3"];
    d.extend([
        "--batch",
        "2",
        "--quiet",
        "--teacher",
        &model_path,
        "-o",
        &from_file,
    ]);
    d.extend(data);
    ldm_host(&d);
    assert!(
        Path::new(&from_file).exists(),
        "no checkpoint from a .ldm teacher"
    );
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

/// Rows (step, loss) of a training CSV.
fn losses(csv: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(csv)
        .expect("log exists")
        .lines()
        .skip(1)
        .map(|l| {
            let mut c = l.split(',');
            let step = c.next().expect("step").parse().expect("number");
            (step, c.next().expect("loss").parse().expect("number"))
        })
        .collect()
}

#[test]
fn resumed_run_continues_the_same_loss_curve() {
    let dir = scratch::fresh("host-resume");
    let p = |n: &str| dir.join(n).display().to_string();
    let data = ["--dataset", "random", "--dataset-len", "32", "--quiet"];
    let ae = p("ae.safetensors");
    let mut a = vec!["train", "autoencoder", "--preset", "micro", "--steps", "2"];
    a.extend(["--batch", "2", "--heldout", "4", "-o", &ae]);
    a.extend(data);
    ldm_host(&a);
    let run = |out: &str, log: &str, steps: &str, resume: bool| {
        let mut l = vec![
            "train", "ldm", "--preset", "micro", "--batch", "2", "--warmup", "2",
        ];
        l.extend([
            "--autoencoder",
            &ae,
            "-o",
            out,
            "--log",
            log,
            "--steps",
            steps,
        ]);
        l.extend(["--ckpt-every", "100"]);
        if resume {
            l.push("--resume");
        }
        l.extend(data);
        // One thread: multithreaded reductions change the summation order from run to run,
        // which would hide a resume bug in noise.
        ldm_host_env(&l, &[("RAYON_NUM_THREADS", "1")]);
    };
    let (full, full_log) = (p("full.safetensors"), p("full.csv"));
    run(&full, &full_log, "6", false);
    let (cut, cut_log) = (p("cut.safetensors"), p("cut.csv"));
    // Stopping at step 3 stands in for a kill: a checkpoint is written when a run ends.
    run(&cut, &cut_log, "3", false);
    run(&cut, &cut_log, "6", true);
    let (f, c) = (losses(Path::new(&full_log)), losses(Path::new(&cut_log)));
    assert_eq!(f.len(), 6);
    assert_eq!(
        c.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    // Within noise: burn's backward sums gradients in an order that varies between runs, and
    // Adam's first steps (update ~ sign of the gradient) amplify that to ~0.2% by step 3
    // even between two uninterrupted runs. A lost optimizer state or a replayed batch is larger.
    for (x, y) in f.iter().zip(&c) {
        assert!(
            (x.1 - y.1).abs() <= 1e-2 * x.1.abs().max(1e-3),
            "step {}: uninterrupted loss {} vs resumed {}",
            x.0,
            x.1,
            y.1
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `distill lcm --resume` continues the same loss curve: the student, its optimizer and the
/// target network (the student's EMA) all come back from the checkpoint.
#[test]
fn resumed_distillation_continues_the_same_loss_curve() {
    let dir = scratch::fresh("host-distill-resume");
    let p = |n: &str| dir.join(n).display().to_string();
    let data = ["--dataset", "random", "--dataset-len", "32", "--quiet"];
    let (ae, teacher) = (p("ae.safetensors"), p("teacher.safetensors"));
    let mut a = vec!["train", "autoencoder", "--preset", "micro", "--steps", "2"];
    a.extend(["--batch", "2", "--heldout", "4", "-o", &ae]);
    a.extend(data);
    ldm_host(&a);
    let mut t = vec!["train", "ldm", "--preset", "micro", "--steps", "2"];
    t.extend(["--batch", "2", "--autoencoder", &ae, "-o", &teacher]);
    t.extend(data);
    ldm_host(&t);
    let run = |out: &str, log: &str, steps: &str, resume: bool| {
        let mut l = vec!["distill", "lcm", "--preset", "micro", "--batch", "2"];
        l.extend(["--warmup", "2", "--teacher", &teacher, "-o", out]);
        l.extend(["--log", log, "--steps", steps, "--ckpt-every", "100"]);
        if resume {
            l.push("--resume");
        }
        l.extend(data);
        ldm_host_env(&l, &[("RAYON_NUM_THREADS", "1")]);
    };
    let (full, full_log) = (p("full.safetensors"), p("full.csv"));
    run(&full, &full_log, "6", false);
    let (cut, cut_log) = (p("cut.safetensors"), p("cut.csv"));
    run(&cut, &cut_log, "3", false);
    run(&cut, &cut_log, "6", true);
    let (f, c) = (losses(Path::new(&full_log)), losses(Path::new(&cut_log)));
    assert_eq!(
        c.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    for (x, y) in f.iter().zip(&c) {
        assert!(
            (x.1 - y.1).abs() <= 1e-2 * x.1.abs().max(1e-3),
            "step {}: uninterrupted loss {} vs resumed {}",
            x.0,
            x.1,
            y.1
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 6: the concatenation-conditioned tasks train with the same command, their loss falls,
/// and the exported files run through `ldm`'s upscale and inpaint pipelines.
#[test]
fn sr_and_inpaint_micro_models_train_export_and_run() {
    let dir = scratch::fresh("host-tasks");
    let p = |n: &str| dir.join(n).display().to_string();
    let data = [
        "--dataset",
        "shapes",
        "--dataset-len",
        "96",
        "--image-size",
        "32",
        "--quiet",
    ];
    let ae = p("ae.safetensors");
    let mut a = vec!["train", "autoencoder", "--preset", "micro", "--steps", "10"];
    a.extend(["--batch", "4", "--heldout", "8", "--lr", "2e-3", "-o", &ae]);
    a.extend(data);
    ldm_host(&a);
    let cancel = ldm_edge::pipeline::Cancel::new();
    for task in ["sr", "inpaint"] {
        let (ck, log) = (p(&format!("{task}.st")), p(&format!("{task}.csv")));
        let mut l = vec![
            "train", "ldm", "--task", task, "--preset", "micro", "--steps", "40",
        ];
        l.extend(["--batch", "4", "--warmup", "5", "--lr", "2e-3"]);
        l.extend(["--autoencoder", &ae, "-o", &ck, "--log", &log]);
        l.extend(data);
        ldm_host(&l);
        let (l0, l1) = loss_ends(Path::new(&log), 8);
        assert!(l1 < l0, "{task} loss did not fall: {l0} -> {l1}");
        let file = p(&format!("{task}.ldm"));
        ldm_host(&["export", &ck, "--dtype", "q8", "-o", &file]);
        let model = ldm_edge::model::Model::open(Path::new(&file)).expect("exported model opens");
        assert_eq!(model.config.task.to_string(), task);
        let pipe = ldm_edge::pipeline::Pipeline::new(
            &model,
            ldm_edge::backend::select("cpu").expect("cpu backend"),
        );
        let g = if task == "sr" {
            let lr = ldm_edge::pipeline::image::from_rgb8(&[128u8; 3 * 5 * 3], 5, 3)
                .expect("low-res image");
            let mut req = ldm_edge::pipeline::Upscale::new(&model, lr).expect("request");
            req.steps = 3;
            pipe.upscale(&req, &mut |_| {}, &cancel)
                .expect("upscale runs")
        } else {
            let img =
                ldm_edge::pipeline::image::from_rgb8(&[200u8; 3 * 32 * 32], 32, 32).expect("image");
            let mask: Vec<f32> = (0..32 * 32).map(|i| ((i % 32) < 16) as u8 as f32).collect();
            let mut req = ldm_edge::pipeline::Inpaint::new(&model, "a red circle", img, mask)
                .expect("request");
            req.params.steps = 3;
            let g = pipe
                .inpaint(&req, &mut |_| {}, &cancel)
                .expect("inpaint runs");
            // Kept half: exactly the input's pixels.
            for y in 0..32 {
                for x in 16..32 {
                    assert_eq!(&g.rgb[(y * 32 + x) * 3..][..3], &[200, 200, 200]);
                }
            }
            g
        };
        let want = if task == "sr" { (20, 12) } else { (32, 32) };
        assert_eq!((g.width, g.height), want, "{task} output size");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tensors of a checkpoint (name -> f32 values) and its metadata.
fn read_ck(
    path: &str,
) -> (
    std::collections::BTreeMap<String, Vec<f32>>,
    std::collections::HashMap<String, String>,
) {
    let buf = std::fs::read(path).expect("checkpoint reads");
    let (_, header) = safetensors::SafeTensors::read_metadata(&buf).expect("header");
    let st = safetensors::SafeTensors::deserialize(&buf).expect("safetensors");
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let d = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n, d)
        })
        .collect();
    (tensors, header.metadata().clone().unwrap_or_default())
}

fn ldm_host_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ldm-host"))
        .args(args)
        .output()
        .expect("ldm-host runs");
    assert!(
        !out.status.success(),
        "ldm-host {args:?} should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn decoder_only_finetune_keeps_the_latent_space_and_swaps_into_a_model() {
    let dir = scratch::fresh("host-dec");
    let p = |n: &str| dir.join(n).display().to_string();
    let data = [
        "--dataset",
        "shapes",
        "--dataset-len",
        "64",
        "--image-size",
        "32",
        "--quiet",
        "--batch",
        "4",
        "--heldout",
        "8",
    ];
    let ae = p("ae.safetensors");
    let mut a = vec!["train", "autoencoder", "--preset", "micro", "--steps", "8"];
    a.extend(["--lr", "2e-3", "-o", &ae]);
    a.extend(data);
    ldm_host(&a);
    let dec = p("dec.safetensors");
    let mut d = vec!["train", "autoencoder", "--preset", "micro", "--steps", "8"];
    d.extend(["--lr", "2e-3", "--seed", "9", "--decoder-only", "-o", &dec]);
    let no_init = ldm_host_fails(&[&d[..], &data[..]].concat());
    assert!(
        no_init.contains("--decoder-only needs --init-from"),
        "{no_init}"
    );
    d.extend(["--init-from", &ae]);
    d.extend(data);
    ldm_host(&d);
    // Resuming it as a full run would move the encoder under a carried-over latent scale.
    let mut r = vec!["train", "autoencoder", "--preset", "micro", "--steps", "10"];
    r.extend(["--resume", "-o", &dec]);
    let err = ldm_host_fails(&[&r[..], &data[..]].concat());
    assert!(err.contains("is a --decoder-only run"), "{err}");

    let ((t0, m0), (t1, m1)) = (read_ck(&ae), read_ck(&dec));
    assert_eq!(
        m0["latent_scale"], m1["latent_scale"],
        "latent scale carried unchanged"
    );
    let (mut enc, mut changed) = (0, 0);
    for (name, v) in t0.iter().filter(|(n, _)| n.starts_with("p/vae.")) {
        let path = name.trim_start_matches("p/");
        if path.starts_with("vae.encoder.") || path.starts_with("vae.quant_conv.") {
            assert_eq!(v, &t1[name], "{path} is frozen");
            enc += 1;
        } else {
            changed += (v != &t1[name]) as usize;
        }
    }
    assert!(
        enc > 0 && changed > 0,
        "{enc} encoder tensors, {changed} decoder tensors changed"
    );

    let ck = p("ldm.safetensors");
    let mut l = vec![
        "train", "ldm", "--preset", "micro", "--steps", "4", "--warmup", "1",
    ];
    l.extend(["--autoencoder", &ae, "-o", &ck]);
    l.extend(&data[..7]);
    ldm_host(&l);
    let model = p("swapped.ldm");
    ldm_host(&[
        "export",
        &ck,
        "--dtype",
        "f32",
        "--decoder",
        &dec,
        "-o",
        &model,
    ]);
    let m = ldm_edge::model::Model::open(Path::new(&model)).expect("model opens");
    let name = t1
        .keys()
        .find(|n| n.starts_with("p/vae.decoder.") && n.ends_with(".weight"))
        .expect("a decoder weight");
    let path = name.trim_start_matches("p/");
    let shipped = m
        .file
        .tensor(path)
        .expect("decoder tensor in the model")
        .to_f32();
    assert_eq!(
        shipped, t1[name],
        "the model carries the fine-tuned decoder"
    );

    // A decoder whose encoder differs (one value changed) would decode another latent space.
    let mut tensors = read_ck(&dec).0;
    let enc_name = t1
        .keys()
        .find(|n| n.starts_with("p/vae.encoder."))
        .expect("an encoder tensor")
        .clone();
    tensors.get_mut(&enc_name).expect("tensor")[0] += 0.5;
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = {
        let buf = std::fs::read(&dec).expect("reads");
        let st = safetensors::SafeTensors::deserialize(&buf).expect("safetensors");
        st.tensors()
            .into_iter()
            .map(|(n, v)| {
                let b = tensors[&n].iter().flat_map(|x| x.to_le_bytes()).collect();
                (n, b, v.shape().to_vec())
            })
            .collect()
    };
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, b, s)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .expect("view");
            (n.clone(), v)
        })
        .collect();
    let bad = p("bad-dec.safetensors");
    std::fs::write(
        &bad,
        safetensors::serialize(views, Some(m1)).expect("serializes"),
    )
    .expect("writes");
    let err = ldm_host_fails(&["export", &ck, "--decoder", &bad, "-o", &p("bad.ldm")]);
    assert!(err.contains("encoder differs"), "{err}");
    assert!(!dir.join("bad.ldm").exists());
    // Checkpoints of the wrong stage are named as such.
    let err = ldm_host_fails(&["export", &ck, "--decoder", &ck, "-o", &p("bad.ldm")]);
    assert!(
        err.contains("--decoder is a `train ldm` checkpoint, not a `train autoencoder` one"),
        "{err}"
    );
    let err = ldm_host_fails(&["export", &dec, "-o", &p("bad.ldm")]);
    assert!(
        err.contains("is a `train autoencoder` checkpoint, not a `train ldm` one"),
        "{err}"
    );
    assert!(!dir.join("bad.ldm").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `train tiny-decoder` on the shipped model: the L1 loss falls, `--write` gives a model that
/// loads with the component, and the runtime decodes with it (final image and previews).
#[test]
fn tiny_decoder_trains_and_writes_a_model_that_uses_it() {
    use ldm_edge::pipeline::{Cancel, Decoder, Pipeline, Txt2Img};
    let dir = scratch::fresh("host-tiny");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes-32.ldm");
    let (csv, ck, out) = (
        dir.join("t.csv"),
        dir.join("t.safetensors"),
        dir.join("t.ldm"),
    );
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    ldm_host(&[
        "train",
        "tiny-decoder",
        "-m",
        &s(&model),
        "--dataset",
        "shapes",
        "--dataset-len",
        "400",
        "--image-size",
        "32",
        "--steps",
        "120",
        "--batch",
        "8",
        "--heldout",
        "32",
        "--quiet",
        "--log",
        &s(&csv),
        "-o",
        &s(&ck),
        "--write",
        &s(&out),
    ]);
    let (first, last) = loss_ends(&csv, 20);
    assert!(last < 0.8 * first, "L1 {first:.4} -> {last:.4}");
    let m = ldm_edge::model::Model::open(&out).expect("written model opens");
    assert!(m.tiny_decoder.is_some());
    let prov = &m.file.meta()["provenance"]["tiny_decoder"];
    assert!(prov["heldout_psnr_vs_full_db"].as_f64().is_some(), "{prov}");
    let pipe = Pipeline::new(&m, ldm_edge::backend::select("cpu").expect("cpu"))
        .with_decoder(Decoder::Tiny)
        .expect("tiny decoder")
        .with_preview_method(Decoder::Tiny)
        .expect("tiny previews")
        .with_preview(Some(2))
        .expect("previews");
    let mut req = Txt2Img::new(&m, "a red circle").expect("request");
    req.steps = 4;
    let mut previews = 0;
    let img = pipe
        .txt2img(
            &req,
            &mut |p| previews += p.preview.is_some() as usize,
            &Cancel::new(),
        )
        .expect("generates with the tiny decoder");
    assert_eq!((img.width, img.height, previews), (32, 32, 2));
    // The input model is untouched and has no tiny decoder to offer.
    let orig = ldm_edge::model::Model::open(&model).expect("model");
    if orig.tiny_decoder.is_none() {
        let e = Pipeline::new(&orig, ldm_edge::backend::select("cpu").expect("cpu"))
            .with_decoder(Decoder::Tiny)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("train tiny-decoder"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
