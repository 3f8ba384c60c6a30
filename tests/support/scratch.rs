//! Scratch space for tests that is gone once the test process exits.
//!
//! `scratch(tag)` is `<temp>/ldm-test-<pid>/<tag>`; the whole `ldm-test-<pid>` is removed by an
//! `atexit` handler. A per-test `TempDir` would not do: several tests share files written once
//! per process (a tiny model behind a `OnceLock`, "write once per path" helpers), so no single
//! test owns them. libtest leaves through `std::process::exit` when a test failed and by
//! returning from `main` otherwise; both run `atexit` handlers. Only a process killed by a
//! signal leaves its directory behind.
//!
//! Every crate of the workspace includes this one file (`#[path] mod scratch;`) at the root of
//! each test binary that needs it; support files reach it as `crate::scratch`. A second copy in
//! one binary would only register a second, idempotent, removal.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

/// The root and the pid that owns it, fixed at the first call so the exit handler needs
/// neither the environment nor an allocation to find it.
static ROOT: OnceLock<(PathBuf, u32)> = OnceLock::new();

extern "C" {
    // In every C runtime std already links; declared here so no test needs the libc crate.
    fn atexit(f: extern "C" fn()) -> std::os::raw::c_int;
}

extern "C" fn remove_root() {
    // Unwinding out of an `extern "C"` fn aborts, so nothing here may panic; a failed removal
    // at exit has no one left to report to.
    if let Some((root, pid)) = ROOT.get() {
        // A forked child that exits must not take its parent's files with it.
        if std::process::id() == *pid {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// The process's scratch root, registered for removal at exit on first use.
pub fn root() -> PathBuf {
    ROOT.get_or_init(|| {
        let pid = std::process::id();
        let root = std::env::temp_dir().join(format!("ldm-test-{pid}"));
        // SAFETY: registers a plain function with no captured state; should the process exit
        // before `ROOT` is set, the handler finds nothing and does nothing.
        let registered = unsafe { atexit(remove_root) } == 0;
        assert!(registered, "atexit refused the scratch cleanup handler");
        (root, pid)
    })
    .0
    .clone()
}

/// A directory `tag` under the process's scratch root, created if missing. Tests that call it
/// with the same tag share it (and its files) for the life of the process.
pub fn scratch(tag: &str) -> PathBuf {
    let d = root().join(tag);
    std::fs::create_dir_all(&d)
        .unwrap_or_else(|e| panic!("cannot create scratch dir {}: {e}", d.display()));
    d
}

/// Like [`scratch`], but emptied first: for a test that must not see an earlier test's files.
pub fn fresh(tag: &str) -> PathBuf {
    let d = root().join(tag);
    let _ = std::fs::remove_dir_all(&d);
    scratch(tag)
}
