//! The memory budget and the compact CPU weights, on the shipped default model:
//! - a budget too small is refused before any work, with an error that states the need;
//! - a budget that the whole decode misses but a tiled one meets gets tiling, and runs;
//! - `--max-memory` on the CLI refuses without writing an image;
//! - the compact CPU plan (weights read in their stored q8) makes the same image as the
//!   expanded one (weights widened to f32 inside tract).
use ldm_edge::backend::{self, Tensor};
use ldm_edge::model::Model;
use ldm_edge::pipeline::memory::MemoryRequest;
use ldm_edge::pipeline::{Cancel, Pipeline, Txt2Img};
use ldm_edge::Error;
use std::path::PathBuf;
use std::process::Command;

#[path = "support/scratch.rs"]
mod scratch;

fn model() -> Model {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shapes-32.ldm");
    Model::open(&p).unwrap()
}

fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    // Images in [-1, 1]: peak-to-peak 2.
    let mse = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.data.len() as f64;
    10.0 * (4.0 / mse.max(1e-20)).log10()
}

fn request(m: &Model, size: usize) -> Txt2Img {
    let mut r = Txt2Img::new(m, "a red circle above a blue square").unwrap();
    r.steps = 2;
    r.width = size;
    r.height = size;
    r
}

/// Runs a 32 px request that `pipe`'s budget must refuse: asserts a memory error before any
/// step, and returns its message.
fn refused_before_any_work(pipe: &Pipeline, m: &Model, accepted: &str) -> String {
    let mut steps = 0;
    let e = pipe
        .txt2img(&request(m, 32), &mut |_| steps += 1, &Cancel::new())
        .err()
        .expect(accepted);
    println!("{e}");
    assert!(matches!(e, Error::Memory(_)), "{e}");
    assert_eq!(steps, 0, "work started before the refusal");
    e.to_string()
}

#[test]
fn a_budget_too_small_is_refused_before_any_work() {
    let m = model();
    let pipe = Pipeline::new(&m, backend::select("cpu").unwrap()).with_memory_budget(Some(1 << 20));
    let msg = refused_before_any_work(&pipe, &m, "a 1 MiB budget was accepted");
    assert!(msg.contains("needs about") && msg.contains("MiB"), "{msg}");
}

#[test]
fn the_planner_tiles_the_decoder_to_fit() {
    let m = model();
    let size = 256; // latent 64x64 at f = 4
                    // Without guidance (UNet batch 1) the whole decode is well above the rest, so the budget
                    // chosen between them below has a margin of MiBs: the base is this process's RSS, which
                    // the tests running beside this one move by a few MiB (with CFG the margin was 2.4 MiB).
    let r = MemoryRequest {
        width: size,
        height: size,
        cfg: false,
        encode: false,
    };
    let open = Pipeline::new(&m, backend::select("cpu").unwrap())
        .with_memory_budget(None)
        .with_vae_tiling(None);
    let whole = open.plan_memory(&r).unwrap();
    assert!(whole.vae_tiling.is_none(), "--vae-tile 0 was not honoured");
    println!("{whole}");
    let dec = whole.stages.iter().find(|s| s.stage == "decoder").unwrap();
    let others = whole
        .stages
        .iter()
        .filter(|s| s.stage != "decoder")
        .map(|s| s.total())
        .max()
        .unwrap();
    assert!(
        dec.total() > others,
        "the whole decode should be the peak at {size} px"
    );
    // Left to itself (no budget, no tiling asked for), the planner tiles so that the decode
    // is not the peak.
    let auto = Pipeline::new(&m, backend::select("cpu").unwrap()).with_memory_budget(None);
    let plan = auto.plan_memory(&r).unwrap();
    println!("{plan}");
    let dec = plan.stages.iter().find(|s| s.stage == "decoder").unwrap();
    assert!(plan.vae_tiling.is_some() && dec.total() <= others, "{plan}");
    // A budget between the rest and the whole decode: tiling must be chosen.
    // (The base is the process's RSS when planning, which grows a little as the test runs.)
    let base = Pipeline::new(&m, backend::select("cpu").unwrap())
        .with_memory_budget(None)
        .with_vae_tiling(None)
        .plan_memory(&r)
        .unwrap()
        .base;
    let dec = whole.stages.iter().find(|s| s.stage == "decoder").unwrap();
    let budget = base + whole.code + others + (dec.total() - others) * 3 / 4;
    let pipe = Pipeline::new(&m, backend::select("cpu").unwrap()).with_memory_budget(Some(budget));
    let plan = pipe.plan_memory(&r).unwrap();
    println!("{plan}");
    assert!(plan.vae_tiling.is_some() && plan.peak() <= budget);
    let mut req = request(&m, size);
    req.guidance = 1.0;
    let out = pipe.txt2img(&req, &mut |_| {}, &Cancel::new()).unwrap();
    assert_eq!((out.width, out.height), (size, size));
}

/// The packed plan's f32 copies are counted, and a budget that only the compact plan fits is
/// refused before any work with a message that names it.
#[test]
fn the_packed_plan_counts_its_copies_and_names_the_compact_plan() {
    let m = model();
    let r = MemoryRequest {
        width: 32,
        height: 32,
        cfg: true,
        encode: false,
    };
    let plan = |b: &str| {
        Pipeline::new(&m, backend::select(b).unwrap())
            .with_memory_budget(None)
            .plan_memory(&r)
            .unwrap()
    };
    let (compact, packed) = (plan("cpu"), plan("cpu-packed"));
    println!("{compact}\n{packed}");
    for (c, p) in compact.stages.iter().zip(&packed.stages) {
        assert_eq!(c.prepared, 0, "{}", c.stage);
        assert_eq!(p.weights, c.weights + p.prepared, "{}", p.stage);
    }
    // The shipped model is q8: every linear and conv weight gets an f32 copy.
    let unet = packed.stages.iter().find(|s| s.stage == "unet").unwrap();
    assert!(unet.prepared > 2 * unet.weights / 3, "{packed}");
    // A budget halfway between the two peaks (MiBs apart; the base moves less as tests run).
    let budget = (compact.peak() + packed.peak()) / 2;
    let pipe =
        Pipeline::new(&m, backend::select("cpu-packed").unwrap()).with_memory_budget(Some(budget));
    let msg = refused_before_any_work(
        &pipe,
        &m,
        "the packed plan was accepted in a budget only the compact plan fits",
    );
    assert!(msg.contains("--backend cpu "), "{msg}");
}

#[test]
fn max_memory_on_the_cli_refuses_and_writes_nothing() {
    let out = scratch::scratch("budget").join("refused.png");
    let o = Command::new(env!("CARGO_BIN_EXE_ldm"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["generate", "a red circle", "-q", "--max-memory", "1M", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{err}");
    assert!(!o.status.success());
    assert!(err.contains("out of memory budget"), "{err}");
    assert!(!out.exists(), "an image was written");
    let o = Command::new(env!("CARGO_BIN_EXE_ldm"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "generate",
            "a red circle",
            "-q",
            "--max-memory",
            "lots",
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a memory size"));
}

/// The shipped model is q8: the compact plan reads those bytes directly, the packed plan also
/// holds its 64+-channel 3x3 conv weights prepared in f32, the expanded plan widens every
/// weight to f32 first. Same seed, same image (issue #11: within 40 dB).
#[test]
fn compact_weights_make_the_same_image_as_expanded() {
    let m = model();
    let mut images = Vec::new();
    for b in ["cpu", "cpu-expanded", "cpu-packed"] {
        let pipe = Pipeline::new(&m, backend::select(b).unwrap());
        let mut r = request(&m, 32);
        r.steps = 8;
        let out = pipe.txt2img(&r, &mut |_| {}, &Cancel::new()).unwrap();
        images.push(out.image);
    }
    for (i, what) in [(1, "expanded"), (2, "packed")] {
        let p = psnr(&images[0], &images[i]);
        println!("compact vs {what}: PSNR {p:.1} dB");
        assert!(p >= 40.0, "compact vs {what}: PSNR {p:.1} dB");
    }
}
