//! `ldm-host defaults`: a model's stored sampling defaults are rewritten, its tensors are not,
//! `ldm generate` follows the new defaults, and bad values write nothing.
use ldm_edge::format::ModelFile;
use ldm_edge::model::Model;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../../tests/support/scratch.rs"]
mod scratch_dir;

fn ldm_host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ldm-host"))
        .args(args)
        .output()
        .expect("ldm-host runs")
}

fn lcm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes-32-lcm.ldm")
}

#[test]
fn new_defaults_are_stored_and_the_tensors_are_copied_as_they_were() {
    let dir = scratch_dir::fresh("host-defaults");
    let out = dir.join("lcm-3.ldm");
    let (src, dst) = (lcm(), out.to_str().unwrap().to_string());
    let o = ldm_host(&[
        "defaults",
        src.to_str().unwrap(),
        "--steps",
        "3",
        "--guidance",
        "4",
        "-o",
        &dst,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (Model::open(&src).unwrap(), Model::open(&out).unwrap());
    assert_eq!((b.sampler.steps, b.sampler.guidance), (3, 4.0));
    assert_eq!(b.sampler.sampler, a.sampler.sampler);
    assert_eq!(b.sampler.schedule, a.sampler.schedule);
    let (fa, fb) = (
        ModelFile::open(&src).unwrap(),
        ModelFile::open(&out).unwrap(),
    );
    assert_eq!(fa.tensors().len(), fb.tensors().len());
    for info in fa.tensors() {
        let (t, u) = (
            fa.tensor(&info.name).unwrap(),
            fb.tensor(&info.name).unwrap(),
        );
        assert_eq!(
            (t.dtype(), t.shape(), t.bytes),
            (u.dtype(), u.shape(), u.bytes),
            "{}",
            info.name
        );
    }
    // The old defaults are kept in the provenance.
    let hist = &fb.meta()["provenance"]["sampler_defaults_history"];
    assert_eq!(hist[0]["steps"], a.sampler.steps);
}

#[test]
fn bad_defaults_write_nothing() {
    let dir = scratch_dir::fresh("host-defaults-bad");
    let out = dir.join("bad.ldm");
    let (src, dst) = (lcm(), out.to_str().unwrap().to_string());
    let src = src.to_str().unwrap();
    for (args, needle) in [
        (vec!["--steps", "0"], "steps must be in 1..=1000"),
        (vec!["--guidance", "NaN"], "guidance must be finite"),
        (vec!["--sampler", "euler_b"], "--sampler euler_b"),
        (vec![], "nothing to change"),
    ] {
        let mut all = vec!["defaults", src, "-o", &dst];
        all.extend(args);
        let o = ldm_host(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(needle),
            "{all:?}: {err}"
        );
        assert!(!out.exists(), "{all:?} wrote a file");
    }
}

/// Rewriting a file in place is a rename over it: a model opened before keeps reading its
/// mapping, and the file then holds the new defaults.
#[test]
fn a_file_rewritten_in_place_keeps_an_open_mapping_valid() {
    let dir = scratch_dir::fresh("host-defaults-in-place");
    let f = dir.join("lcm.ldm");
    std::fs::copy(lcm(), &f).unwrap();
    let before = Model::open(&f).unwrap();
    let name = before.file.tensors()[0].name.clone();
    let bytes = before.file.tensor(&name).unwrap().bytes.to_vec();
    let p = f.to_str().unwrap();
    let o = ldm_host(&["defaults", p, "--steps", "3", "-o", p]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(before.file.tensor(&name).unwrap().bytes, &bytes[..]);
    assert_eq!(Model::open(&f).unwrap().sampler.steps, 3);
}
