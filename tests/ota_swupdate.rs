//! SWUpdate (Debian's `swupdate`) delivers a bundle end to end: a signed `.swu` carries the
//! `.ldmb` as a file and a shellscript whose post-install step is `ldm install`. A good model is
//! installed and SWUpdate reports success; an unhealthy one is rolled back by `ldm install`,
//! SWUpdate reports the failure, and the device keeps its model.
//!
//! Needs `swupdate`, `openssl` (CMS signing of sw-description) and `sha256sum`; skips loudly
//! without them, except with CI=true (or LDM_REQUIRE_SWUPDATE=1), where it fails.
#[path = "support/bundles.rs"]
mod bundles;
#[path = "support/scratch.rs"]
mod scratch;

use std::path::{Path, PathBuf};
use std::process::Command;

use bundles::{key, rewrite_model, shapes_model};
use ldm_edge::bundle;

fn has(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

fn tools_present() -> bool {
    let missing: Vec<&str> = ["swupdate", "openssl", "sha256sum"]
        .into_iter()
        .filter(|c| !has(c))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let required = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("LDM_REQUIRE_SWUPDATE").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "CI=true but {missing:?} missing: apt-get install swupdate openssl"
    );
    eprintln!("SKIPPED: {missing:?} not found (apt-get install swupdate openssl)");
    false
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(c: &mut Command) -> std::process::Output {
    let o = c.output().expect("runs");
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn sha256(p: &Path) -> String {
    let o = run(Command::new("sha256sum").arg(p));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A `newc` cpio archive with CRC ("070702"), SWUpdate's container format.
fn cpio(out: &Path, files: &[(&str, PathBuf)]) {
    fn entry(buf: &mut Vec<u8>, name: &str, data: &[u8], mode: u32, ino: u32) {
        let check = data.iter().fold(0u32, |a, &b| a.wrapping_add(b as u32));
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            check,
        ];
        buf.extend_from_slice(b"070702");
        for f in fields {
            buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        buf.extend_from_slice(name.as_bytes());
        buf.push(0);
        while buf.len() % 4 != 0 {
            buf.push(0);
        }
        buf.extend_from_slice(data);
        while buf.len() % 4 != 0 {
            buf.push(0);
        }
    }
    let mut buf = Vec::new();
    for (i, (name, path)) in files.iter().enumerate() {
        entry(
            &mut buf,
            name,
            &std::fs::read(path).unwrap(),
            0o100644,
            i as u32 + 1,
        );
    }
    entry(&mut buf, "TRAILER!!!", &[], 0, 0);
    std::fs::write(out, buf).unwrap();
}

/// Builds and signs a `.swu` that installs `bundle` into `root` with `ldm install`.
fn swu(dir: &Path, tag: &str, bundle: &Path, root: &Path, cert: &Path, key: &Path) -> PathBuf {
    let d = dir.join(tag);
    std::fs::create_dir_all(&d).unwrap();
    let staged = root.join("incoming/model.ldmb");
    let script = d.join("install-model.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# SWUpdate calls shellscripts with preinst, then postinst.\n\
             [ \"$1\" = postinst ] || exit 0\n\
             {ldm} install {staged} --root {root}\nrc=$?\nrm -f {staged}\nexit $rc\n",
            ldm = env!("CARGO_BIN_EXE_ldm"),
            staged = s(&staged),
            root = s(root),
        ),
    )
    .unwrap();
    let desc = d.join("sw-description");
    std::fs::write(
        &desc,
        format!(
            "software =\n{{\n\tversion = \"1.0.0\";\n\tdescription = \"ldm model bundle\";\n\
             \thardware-compatibility: [ \"1.0\" ];\n\
             \tfiles: (\n\t\t{{\n\t\t\tfilename = \"model.ldmb\";\n\t\t\tpath = \"{}\";\n\
             \t\t\tsha256 = \"{}\";\n\t\t}}\n\t);\n\
             \tscripts: (\n\t\t{{\n\t\t\tfilename = \"install-model.sh\";\n\
             \t\t\ttype = \"shellscript\";\n\t\t\tsha256 = \"{}\";\n\t\t}}\n\t);\n}}\n",
            s(&staged),
            sha256(bundle),
            sha256(&script)
        ),
    )
    .unwrap();
    let sig = d.join("sw-description.sig");
    run(Command::new("openssl").args([
        "cms",
        "-sign",
        "-in",
        s(&desc),
        "-out",
        s(&sig),
        "-signer",
        s(cert),
        "-inkey",
        s(key),
        "-outform",
        "DER",
        "-nosmimecap",
        "-binary",
    ]));
    let out = d.join("model.swu");
    cpio(
        &out,
        &[
            ("sw-description", desc),
            ("sw-description.sig", sig),
            ("model.ldmb", bundle.to_path_buf()),
            ("install-model.sh", script),
        ],
    );
    out
}

fn status(root: &Path) -> serde_json::Value {
    let o =
        run(Command::new(env!("CARGO_BIN_EXE_ldm")).args(["status", "--json", "--root", s(root)]));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn swupdate_delivers_a_bundle_with_ldm_install_as_its_hook() {
    if !tools_present() {
        return;
    }
    let dir = scratch::fresh("swupdate");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("keys")).unwrap();
    std::fs::create_dir_all(root.join("incoming")).unwrap();
    std::fs::write(
        root.join("keys/fleet.pub"),
        bundle::public_key_text(&key(1).verifying_key()),
    )
    .unwrap();
    // The OTA engine's own signing key (X.509, CMS), independent of the fleet's bundle key.
    let (cert, pkey) = (dir.join("ota-cert.pem"), dir.join("ota-key.pem"));
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        s(&pkey),
        "-out",
        s(&cert),
        "-subj",
        "/CN=ldm-ota",
        "-days",
        "2",
    ]));
    let make = |tag: &str, model: &Path, version: u64| {
        let b = dir.join(format!("{tag}.ldmb"));
        let bytes = std::fs::read(model).unwrap();
        bundle::write_bundle(
            &bundles::manifest(&bytes, &key(1), version),
            &key(1),
            model,
            &b,
        )
        .unwrap();
        swu(&dir, tag, &b, &root, &cert, &pkey)
    };
    let swupdate = |image: &Path| {
        Command::new("swupdate")
            .args(["-v", "-k", s(&cert), "-H", "rpi4:1.0", "-i", s(image)])
            .output()
            .expect("swupdate runs")
    };

    let good = make("good", &shapes_model(), 1);
    let o = swupdate(&good);
    let log = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "swupdate failed:\n{log}");
    assert!(log.contains("installed"), "{log}");
    let st = status(&root);
    assert_eq!(st["active"]["version"].as_u64(), Some(1), "{st}");
    assert_eq!(st["active"]["verified"], serde_json::Value::Bool(true));

    // A model whose decoder outputs a constant image: ldm install rolls it back and exits 4,
    // and SWUpdate reports the update as failed.
    let bad_model = dir.join("constant.ldm");
    rewrite_model(&shapes_model(), &bad_model, 2, |name, _, bytes| {
        if name.starts_with("vae.decoder.conv_out.") {
            bytes.fill(0);
        }
    });
    let bad = make("bad", &bad_model, 2);
    let o = swupdate(&bad);
    let log = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "swupdate should fail:\n{log}");
    assert!(
        log.contains("rolled back") && log.contains("constant"),
        "{log}"
    );
    let st = status(&root);
    assert_eq!(st["active"]["version"].as_u64(), Some(1), "{st}");
    assert_eq!(st["active"]["verified"], serde_json::Value::Bool(true));
    eprintln!("swupdate: version 1 installed through the engine; the constant model rolled back");
}
