//! Compiles `tests/c/main.c` against `include/ldm.h` and the cdylib with the system C compiler
//! and runs it on the shipped default model and a truncated copy: generation with progress and
//! previews, cancel, and the error paths, all from C.
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../../../tests/support/scratch.rs"]
mod scratch;

/// The folder holding libldm.so: next to the test executable (deps/) or one level up.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps folder").to_path_buf();
    for d in [
        deps.clone(),
        deps.parent().expect("profile folder").to_path_buf(),
    ] {
        if d.join("libldm.so").exists() {
            return d;
        }
    }
    panic!("libldm.so not found next to {}", exe.display());
}

#[test]
fn a_c_program_generates_cancels_and_gets_error_strings() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here.join("../..");
    let tmp = scratch::scratch("capi");
    let model = root.join("models/shapes-32.ldm");
    let bytes = std::fs::read(&model).expect("default model");
    let corrupt = tmp.join("truncated.ldm");
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).expect("corrupt copy");

    let lib = lib_dir();
    let exe = tmp.join("capi_test");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(here.join("include"))
        .arg(here.join("tests/c/main.c"))
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lldm", "-o"])
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(
        out.status.success(),
        "C compile failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe)
        .arg(&model)
        .arg(&corrupt)
        .env("LD_LIBRARY_PATH", &lib)
        .output()
        .expect("the C program runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "C program failed ({:?}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("ok"), "{stdout}");
    let _ = std::fs::remove_dir_all(&tmp);
}
