//! Board profiles (`boards/*.toml`): every profile loads and cites its sources, malformed ones
//! are refused by name, and every board plans the shipped default model and an SD-1.5-shaped
//! q4 model within its budget or refuses it with the reason (`ldm plan`).
use ldm_edge::arch::ModelConfig;
use ldm_edge::backend;
use ldm_edge::board::Board;
use ldm_edge::format::{DType, ModelWriter};
use ldm_edge::model::Model;
use ldm_edge::pipeline::memory::MemoryRequest;
use ldm_edge::pipeline::Pipeline;
use ldm_edge::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[path = "support/scratch.rs"]
mod scratch;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tmp(name: &str) -> PathBuf {
    scratch::scratch("boards").join(name)
}

const BOARDS: [&str; 8] = [
    "android-adreno-740",
    "android-mali-g710",
    "jetson-agx-orin-32gb",
    "jetson-agx-orin-64gb",
    "jetson-orin-nano-8gb",
    "rpi5-4gb",
    "rpi5-8gb",
    "x86-64-ci",
];

fn load(name: &str) -> Board {
    Board::load(&root().join("boards").join(format!("{name}.toml"))).unwrap()
}

#[test]
fn every_profile_loads_and_cites_its_sources() {
    assert_eq!(Board::names(&root().join("boards")), BOARDS.to_vec());
    for name in BOARDS {
        let b = load(name);
        assert!(!b.sources.is_empty(), "{name}");
        assert!(b.budget_bytes().unwrap() > 0, "{name}");
    }
}

#[test]
fn malformed_profiles_are_refused_by_name() {
    let good = std::fs::read_to_string(root().join("boards/rpi5-8gb.toml")).unwrap();
    for (what, edit, needle) in [
        (
            "unknown key",
            good.replace("[cpu]", "[cpu]\nturbo = true"),
            "turbo",
        ),
        (
            "budget over total",
            good.replace("budget = \"6.5G\"", "budget = \"9G\""),
            "memory.budget",
        ),
        (
            "threads over cores",
            good.replace("threads = 4", "threads = 5"),
            "runtime.threads",
        ),
        (
            "no sources",
            good.replace("sources = [", "sources = [] \nold = [")
                .to_string(),
            "old",
        ),
        (
            "bad backend",
            good.replace("backend = \"cpu\"", "backend = \"npu\""),
            "npu",
        ),
        (
            "fb without device",
            good.replace("device = \"/dev/fb0\"", ""),
            "display.device",
        ),
        ("not toml", "name = ".to_string(), "board profile"),
    ] {
        let p = tmp(&format!("bad-{}.toml", what.replace(' ', "-")));
        std::fs::write(&p, edit).unwrap();
        let e = Board::load(&p)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"))
            .to_string();
        assert!(e.contains(needle), "{what}: {e}");
    }
    let e = Board::find("no-such-board").err().unwrap().to_string();
    assert!(e.contains("no board") || e.contains("known"), "{e}");
}

/// An SD-1.5-shaped model stored as q4 (zero weights: only shapes and bytes matter to the
/// planner), with the default model's tokenizer; written once per test run.
fn sd15_q4() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let base = Model::open(&root().join("models/shapes-32.ldm")).unwrap();
        let cfg = ModelConfig::sd15_shaped(base.tokenizer.vocab_size());
        let meta = serde_json::json!({
            "config": cfg,
            "sampler": {"schedule": base.sampler.schedule, "sampler": "ddim", "steps": 20, "guidance": 7.5},
            "tokenizer": base.file.meta()["tokenizer"],
            "provenance": {"kind": "boards test: SD-1.5 shapes, zero weights"},
        });
        let mut w = ModelWriter::new(meta).unwrap();
        for (path, shape) in cfg.param_specs().unwrap() {
            let n: usize = shape.iter().product();
            let dt = if shape.len() < 2 { DType::F32 } else { DType::Q4 };
            w.add(&path, &shape, &vec![0.0; n], dt).unwrap();
        }
        let p = tmp("sd15-q4.ldm");
        w.write(&p).unwrap();
        p
    })
}

fn plan(model: &Model, board: &Board, size: usize) -> Result<u64, String> {
    let budget = board.budget_bytes().unwrap();
    // As `ldm plan` does: the host model, and the board's GPU where it runs Vulkan.
    let pipe = Pipeline::new(model, backend::select("cpu").unwrap())
        .with_memory_budget(Some(budget))
        .with_device_model(board.device_model());
    let r = MemoryRequest {
        width: size,
        height: size,
        cfg: true,
        encode: false,
    };
    match pipe.plan_memory(&r) {
        Ok(p) => {
            assert!(
                p.peak() <= budget,
                "{}: a plan over budget was accepted",
                board.name
            );
            if board.runtime.backend == "vulkan" {
                assert!(
                    p.device_peak() > 0,
                    "{}: no device memory planned",
                    board.name
                );
                // The SD decoder's 512-wide attention is past the Vulkan kernels (#17): that
                // stage is planned on the CPU, as `auto` runs it, and the plan says why.
                for s in p.stages.iter().filter(|s| s.on_host.is_some()) {
                    assert_eq!(s.device, 0, "{}: {s:?}", board.name);
                }
            }
            Ok(p.peak())
        }
        Err(Error::Memory(m)) => Err(m),
        Err(e) => panic!("{}: {e}", board.name),
    }
}

#[test]
fn every_board_plans_the_default_and_an_sd15_q4_model_or_says_why_not() {
    let default = Model::open(&root().join("models/shapes-32.ldm")).unwrap();
    let sd = Model::open(sd15_q4()).unwrap();
    for name in BOARDS {
        let b = load(name);
        let peak =
            plan(&default, &b, 32).unwrap_or_else(|m| panic!("{name}: default refused: {m}"));
        println!(
            "{name:<22} default 32 px: {:.1} MiB",
            peak as f64 / (1 << 20) as f64
        );
        for size in [512, 2048] {
            match plan(&sd, &b, size) {
                Ok(p) => println!(
                    "{name:<22} sd15 q4 {size} px: {:.1} MiB",
                    p as f64 / (1 << 20) as f64
                ),
                Err(m) => {
                    println!("{name:<22} sd15 q4 {size} px: refused: {m}");
                    assert!(
                        (m.contains("budget") && m.contains("needs about"))
                            || m.contains("largest storage binding"),
                        "{name}: {m}"
                    );
                }
            }
        }
    }
}

#[test]
fn ldm_plan_prints_the_plan_and_exits_3_when_refused() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ldm"))
            .current_dir(root())
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&["plan", "--board", "rpi5-4gb"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("Raspberry Pi 5 (4 GB)") && out.contains("unet") && out.contains("fits"),
        "{out}"
    );
    // A Vulkan board: the device's buffers per stage, from the Vulkan lowering.
    let o = run(&["plan", "--board", "jetson-orin-nano-8gb"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("device") && out.contains("device peak") && out.contains("unified"),
        "{out}"
    );

    // A board with too little memory for the default model.
    let good = std::fs::read_to_string(root().join("boards/rpi5-4gb.toml")).unwrap();
    let tiny = tmp("tiny-board.toml");
    std::fs::write(&tiny, good.replace("budget = \"2.8G\"", "budget = \"20M\"")).unwrap();
    let o = run(&["plan", "--board", tiny.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.contains("refused") && out.contains("budget"), "{out}");

    // `generate --board` applies the budget: refused before any work, no image written.
    let out_png = tmp("board-out.png");
    let o = run(&[
        "generate",
        "a red circle",
        "-q",
        "--board",
        tiny.to_str().unwrap(),
        "-o",
        out_png.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("budget"));
    assert!(!out_png.exists());
    let o = run(&[
        "generate",
        "a red circle",
        "-q",
        "--board",
        "rpi5-4gb",
        "-o",
        out_png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out_png.exists());

    let o = run(&["plan", "--board", "no-such-board"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no board"));
}
