//! `ldm install`, `status` and `rollback` through the binary: refusals leave the root
//! byte-identical, an unhealthy model is rolled back, a crash at every fault point leaves a
//! verified active model and nothing a later install trips on, while `ldm generate --root`
//! runs in a loop and never fails.
#[path = "support/bundles.rs"]
mod bundles;
#[path = "support/scratch.rs"]
mod scratch;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bundles::{key, rewrite_model, shapes_model, tree_hash};
use ldm_edge::bundle::{self, Manifest};
use ldm_edge::format::DType;
use serde_json::Value;

fn ldm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ldm"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("ldm runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A device root trusting key 1, board rpi4.
fn new_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("keys")).unwrap();
    std::fs::write(
        root.join("keys/fleet.pub"),
        bundle::public_key_text(&key(1).verifying_key()),
    )
    .unwrap();
    std::fs::write(root.join("board"), "rpi4\n").unwrap();
    root
}

/// A bundle of the model at `model` signed by key 1; `edit` may change the manifest.
fn make_bundle(model: &Path, version: u64, out: &Path, edit: impl FnOnce(&mut Manifest)) {
    let bytes = std::fs::read(model).unwrap();
    let mut m = bundles::manifest(&bytes, &key(1), version);
    m.boards = vec!["rpi4".into(), "jetson".into()];
    edit(&mut m);
    bundle::write_bundle(&m, &key(1), model, out).unwrap();
}

/// A copy of the shapes model with its own digest.
fn variant(dir: &Path, tag: u64) -> PathBuf {
    let p = dir.join(format!("model-{tag}.ldm"));
    rewrite_model(&shapes_model(), &p, tag, |_, _, _| {});
    p
}

fn install(root: &Path, b: &Path, env: &[(&str, &str)]) -> (Option<i32>, Value, String) {
    let o = ldm(&["install", s(b), "--root", s(root), "--json"], env);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code(), v, stderr)
}

fn status(root: &Path) -> Value {
    let o = ldm(&["status", "--root", s(root), "--json"], &[]);
    assert!(
        o.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The active model is there, verified, at `version`; nothing is left over.
fn assert_clean(root: &Path, version: u64) {
    let st = status(root);
    assert_eq!(st["active"]["verified"], Value::Bool(true), "{st}");
    assert_eq!(st["active"]["version"].as_u64(), Some(version), "{st}");
    assert_eq!(st["pending"], Value::Bool(false));
    let tmp: Vec<_> = std::fs::read_dir(root.join("tmp")).map_or(vec![], |r| r.flatten().collect());
    assert!(tmp.is_empty(), "leftovers in tmp/: {tmp:?}");
    assert!(!root.join(".state.json.tmp").exists());
    let mut want: Vec<String> = [&st["active"]["digest"], &st["previous"]["digest"]]
        .iter()
        .filter_map(|v| v.as_str().map(|d| format!("{d}.ldm")))
        .collect();
    want.sort();
    let mut have: Vec<String> = std::fs::read_dir(root.join("store"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    have.sort();
    assert_eq!(
        have, want,
        "store holds exactly the active and previous models"
    );
}

#[test]
fn install_status_current_rollback_and_n_minus_1() {
    let dir = scratch::fresh("install-basic");
    let root = new_root(&dir);
    let mut digests = vec![];
    for v in 1..=3 {
        let m = variant(&dir, v);
        let b = dir.join(format!("v{v}.ldmb"));
        make_bundle(&m, v, &b, |_| {});
        let (code, out, err) = install(&root, &b, &[]);
        assert_eq!(code, Some(0), "{out} {err}");
        assert_eq!(out["status"], "installed", "{out}");
        digests.push(out["digest"].as_str().unwrap().to_string());
        assert_clean(&root, v);
        // Installing the same bundle again is a no-op.
        let before = tree_hash(&root);
        let (code, out, _) = install(&root, &b, &[]);
        assert_eq!((code, out["status"].as_str()), (Some(0), Some("current")));
        assert_eq!(tree_hash(&root), before);
    }
    // N-1 kept, N-2 pruned.
    assert!(!root.join(format!("store/{}.ldm", digests[0])).exists());
    let o = ldm(&["rollback", "--root", s(&root)], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_clean(&root, 2);
    // A second rollback goes forward again (the replaced model became the previous one).
    assert!(ldm(&["rollback", "--root", s(&root)], &[]).status.success());
    assert_clean(&root, 3);
    // generate --root uses the active model.
    let png = dir.join("out.png");
    let o = ldm(
        &[
            "generate",
            "a red circle",
            "--root",
            s(&root),
            "-o",
            s(&png),
            "-q",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(png.exists());
}

#[test]
fn a_running_generate_keeps_its_mapped_model_through_installs_and_pruning() {
    let dir = scratch::fresh("install-mapped");
    let root = new_root(&dir);
    let b1 = dir.join("v1.ldmb");
    make_bundle(&variant(&dir, 1), 1, &b1, |_| {});
    assert_eq!(install(&root, &b1, &[]).0, Some(0));
    let png = dir.join("long.png");
    // A long generation maps version 1, then two installs make it N-2 and prune its file.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ldm"))
        .args([
            "generate",
            "a red circle",
            "--root",
            s(&root),
            "-o",
            s(&png),
            "-q",
        ])
        .args(["--steps", "400"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    let v1_file = root.join(format!(
        "store/{}.ldm",
        status(&root)["active"]["digest"].as_str().unwrap()
    ));
    for v in 2..=3 {
        let b = dir.join(format!("v{v}.ldmb"));
        make_bundle(&variant(&dir, v), v, &b, |_| {});
        assert_eq!(install(&root, &b, &[]).0, Some(0));
    }
    assert!(!v1_file.exists(), "version 1 should have been pruned");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the generation ended before the pruning: make it longer"
    );
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the generation that had version 1 mapped failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(png.exists());
}

#[test]
fn refusals_leave_the_root_byte_identical() {
    let dir = scratch::fresh("install-refuse");
    let root = new_root(&dir);
    let (m1, m2, m3) = (variant(&dir, 1), variant(&dir, 2), variant(&dir, 3));
    for (v, m) in [(1, &m1), (2, &m2)] {
        let b = dir.join(format!("v{v}.ldmb"));
        make_bundle(m, v, &b, |_| {});
        assert_eq!(install(&root, &b, &[]).0, Some(0));
    }
    let good = dir.join("v3.ldmb");
    make_bundle(&m3, 3, &good, |_| {});
    let good_bytes = std::fs::read(&good).unwrap();
    let mlen = u32::from_le_bytes(good_bytes[16..20].try_into().unwrap()) as usize;
    let manifest_at = bundle::PREAMBLE_LEN;

    let mut cases: Vec<(&str, Vec<u8>, &str, Vec<(&str, &str)>)> = vec![];
    let flip = |name: &'static str, at: usize, why: &'static str| {
        let mut b = good_bytes.clone();
        b[at] ^= 0x01;
        (name, b, why, vec![])
    };
    cases.push(flip(
        "flipped byte in manifest",
        manifest_at + mlen / 2,
        "signature",
    ));
    cases.push(flip("flipped byte in signature", 40, "signature"));
    cases.push(flip(
        "flipped byte in model",
        good_bytes.len() - 1000,
        "digest mismatch",
    ));
    let mut unsigned = good_bytes.clone();
    unsigned[32..96].fill(0);
    cases.push(("unsigned", unsigned, "unsigned", vec![]));
    cases.push((
        "truncated",
        good_bytes[..good_bytes.len() - 4096].to_vec(),
        "ends",
        vec![],
    ));
    let mut oversize = good_bytes.clone();
    oversize[16..20].copy_from_slice(&(bundle::MAX_MANIFEST_LEN + 1).to_le_bytes());
    cases.push(("oversize header", oversize, "exceeds the cap", vec![]));
    let with = |version: u64, model: &Path, tag: &str, edit: &dyn Fn(&mut Manifest)| {
        let p = dir.join(format!("{tag}.ldmb"));
        make_bundle(model, version, &p, |m| edit(m));
        std::fs::read(&p).unwrap()
    };
    // Signed with another key, which names itself and is not trusted.
    let other = {
        let bytes = std::fs::read(&m3).unwrap();
        let m = bundles::manifest(&bytes, &key(2), 3);
        bundles::signed(&m, &key(2), &bytes)
    };
    cases.push(("wrong key", other, "not among the", vec![]));
    cases.push((
        "older version",
        with(1, &m1, "old", &|_| {}),
        "not newer",
        vec![],
    ));
    cases.push((
        "equal version, other model",
        with(2, &m3, "eq", &|_| {}),
        "not newer",
        vec![],
    ));
    cases.push((
        "expired",
        with(3, &m3, "exp", &|m| {
            m.created = bundles::now() - 100;
            m.expires = bundles::now() - 10;
        }),
        "expired",
        vec![],
    ));
    cases.push((
        "incompatible board",
        with(3, &m3, "board", &|m| m.boards = vec!["jetson".into()]),
        "not among the bundle's boards",
        vec![],
    ));
    cases.push((
        "runtime too old",
        with(3, &m3, "rt", &|m| {
            m.min_runtime = bundle::RuntimeVersion(99, 0, 0)
        }),
        "needs runtime",
        vec![],
    ));
    cases.push((
        "too little memory",
        with(3, &m3, "mem", &|m| m.memory_bytes = Some(1 << 50)),
        "memory",
        vec![],
    ));
    cases.push((
        "too little disk",
        good_bytes.clone(),
        "not enough space",
        vec![("LDM_TEST_FREE_BYTES", "1000000")],
    ));

    let before = tree_hash(&root);
    for (name, bytes, why, env) in &cases {
        let p = dir.join("case.ldmb");
        std::fs::write(&p, bytes).unwrap();
        let (code, out, err) = install(&root, &p, env);
        assert_eq!(code, Some(3), "{name}: expected a refusal, got {out} {err}");
        assert_eq!(out["status"], "refused", "{name}: {out}");
        let reason = out["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains(why),
            "{name}: reason `{reason}` lacks `{why}`"
        );
        assert_eq!(tree_hash(&root), before, "{name}: the root changed");
        eprintln!("refused as it should ({name}): {reason}");
    }
    // A fresh root (keys and board only) is left byte-identical too, even by a refusal that
    // comes only after the model has streamed to disk.
    let fresh = new_root(&dir.join("fresh"));
    let before = tree_hash(&fresh);
    // (The version cases are valid bundles on a root with no model.)
    for (name, bytes, _, env) in cases.iter().filter(|c| !c.0.contains("version")) {
        let p = dir.join("case.ldmb");
        std::fs::write(&p, bytes).unwrap();
        let (code, out, _) = install(&fresh, &p, env);
        assert_eq!(code, Some(3), "{name} on a fresh root: {out}");
        assert_eq!(tree_hash(&fresh), before, "{name}: the fresh root changed");
    }
    // And the genuine bundle still installs afterwards.
    let (code, out, err) = install(&root, &good, &[]);
    assert_eq!(code, Some(0), "{out} {err}");
    assert_clean(&root, 3);
}

/// The shapes model with its decoder's last convolution edited.
fn broken(dir: &Path, tag: u64, nan: bool) -> PathBuf {
    let p = dir.join(format!("broken-{tag}.ldm"));
    rewrite_model(&shapes_model(), &p, tag, |name, dtype, bytes| {
        if name == "vae.decoder.conv_out.weight" {
            assert_eq!(dtype, DType::Q8);
            if nan {
                // One block's f16 scale set to NaN: that block decodes to NaN.
                let blocks = bytes.len() / 34;
                bytes[blocks * 32..blocks * 32 + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
            } else {
                bytes.fill(0);
            }
        }
        if name == "vae.decoder.conv_out.bias" && !nan {
            bytes.fill(0);
        }
    });
    p
}

#[test]
fn unhealthy_models_are_rolled_back() {
    let dir = scratch::fresh("install-health");
    let root = new_root(&dir);
    let b1 = dir.join("v1.ldmb");
    make_bundle(&variant(&dir, 1), 1, &b1, |_| {});
    assert_eq!(install(&root, &b1, &[]).0, Some(0));
    let before = tree_hash(&root);
    for (tag, nan, why) in [(2, false, "constant"), (3, true, "NaN")] {
        let b = dir.join(format!("bad{tag}.ldmb"));
        make_bundle(&broken(&dir, tag, nan), tag, &b, |_| {});
        let (code, out, err) = install(&root, &b, &[]);
        assert_eq!(code, Some(4), "{out} {err}");
        assert_eq!(out["status"], "rolled_back");
        let reason = out["reason"].as_str().unwrap();
        assert!(
            reason.contains("health check failed") && reason.contains(why),
            "{reason}"
        );
        eprintln!("rolled back as it should: {reason}");
        assert_clean(&root, 1);
        assert_eq!(
            tree_hash(&root),
            before,
            "a rolled-back install leaves the root as it was"
        );
    }
    // On an empty root, a failed first install leaves no model.
    let empty = new_root(&dir.join("fresh"));
    let b = dir.join("bad2.ldmb");
    let (code, out, _) = install(&empty, &b, &[]);
    assert_eq!(
        (code, out["status"].as_str()),
        (Some(4), Some("rolled_back"))
    );
    assert!(status(&empty)["active"].is_null());
}

#[test]
fn crash_at_every_fault_point_leaves_a_verified_model() {
    let dir = scratch::fresh("install-crash");
    let root = new_root(&dir);
    let b1 = dir.join("v1.ldmb");
    make_bundle(&variant(&dir, 1), 1, &b1, |_| {});
    assert_eq!(install(&root, &b1, &[]).0, Some(0));

    // `ldm generate --root` in a loop for the whole test: it must never fail, whatever the
    // installer is doing or has just died doing.
    let stop = AtomicBool::new(false);
    let (runs, failures) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let points = ldm_edge::install::fault::POINTS;
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let png = dir.join("loop.png");
            while !stop.load(Ordering::SeqCst) {
                let o = ldm(
                    &[
                        "generate",
                        "a red circle",
                        "--root",
                        s(&root),
                        "-o",
                        s(&png),
                        "-q",
                        "--steps",
                        "4",
                    ],
                    &[],
                );
                runs.fetch_add(1, Ordering::SeqCst);
                if !o.status.success() {
                    failures.fetch_add(1, Ordering::SeqCst);
                    eprintln!("generate failed: {}", String::from_utf8_lossy(&o.stderr));
                }
            }
        });
        let mut active = 1u64;
        for (i, point) in points.iter().enumerate() {
            let v = i as u64 + 2;
            let b = dir.join(format!("v{v}.ldmb"));
            make_bundle(&variant(&dir, v), v, &b, |_| {});
            let (code, out, err) = install(&root, &b, &[("LDM_FAULT_AT", point)]);
            assert_eq!(
                code, None,
                "{point}: expected an abort, got {code:?} {out} {err}"
            );
            assert!(err.contains(point), "{point}: {err}");
            // Before the commit's rename the new model never became committed: the old one is
            // active again; from that rename on, the new one.
            let committed = points.iter().position(|p| *p == "commit-rename").unwrap();
            let expect = if i > committed { v } else { active };
            assert_clean(&root, expect);
            eprintln!("crash at {point}: status shows version {expect}, verified, no leftovers");
            // A later install works.
            let (code, out, err) = install(&root, &b, &[]);
            assert_eq!(
                code,
                Some(0),
                "{point}: the next install failed: {out} {err}"
            );
            assert_clean(&root, v);
            active = v;
        }
        stop.store(true, Ordering::SeqCst);
    });
    let (runs, failures) = (runs.into_inner(), failures.into_inner());
    eprintln!(
        "generate loop: {runs} runs, {failures} failures during {} crashes",
        points.len()
    );
    assert!(runs >= 3, "the generate loop hardly ran ({runs})");
    assert_eq!(failures, 0);
}

#[test]
fn crash_while_reverting_or_recovering_leaves_a_verified_model() {
    use ldm_edge::install::fault::{RECOVER_POINTS, REVERT_POINTS};
    let dir = scratch::fresh("install-crash-revert");
    let root = new_root(&dir);
    let b1 = dir.join("v1.ldmb");
    make_bundle(&variant(&dir, 1), 1, &b1, |_| {});
    assert_eq!(install(&root, &b1, &[]).0, Some(0));
    // An unhealthy model: its install reverts, and dies at each point of the revert.
    let bad = dir.join("bad.ldmb");
    make_bundle(&broken(&dir, 2, false), 2, &bad, |_| {});
    for point in REVERT_POINTS {
        let (code, out, err) = install(&root, &bad, &[("LDM_FAULT_AT", point)]);
        assert_eq!(code, None, "{point}: expected an abort, got {out} {err}");
        assert_clean(&root, 1);
        eprintln!("crash at {point}: status shows version 1, verified, no leftovers");
    }
    // An install that died pending; the recovery that `status` runs dies at each of its points.
    let b2 = dir.join("v2.ldmb");
    make_bundle(&variant(&dir, 2), 2, &b2, |_| {});
    for point in RECOVER_POINTS {
        let (code, ..) = install(&root, &b2, &[("LDM_FAULT_AT", "health")]);
        assert_eq!(code, None);
        let o = ldm(
            &["status", "--root", s(&root), "--json"],
            &[("LDM_FAULT_AT", point)],
        );
        assert_eq!(
            o.status.code(),
            None,
            "{point}: recovery should have aborted"
        );
        assert_clean(&root, 1);
        eprintln!("crash in recovery at {point}: status shows version 1, verified, no leftovers");
    }
    let (code, out, err) = install(&root, &b2, &[]);
    assert_eq!(code, Some(0), "{out} {err}");
    assert_clean(&root, 2);
}
