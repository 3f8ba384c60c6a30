//! Fault injection for crash-safety tests: `LDM_FAULT_AT=<point>` makes the process abort
//! (no destructors, no flushes: what a power cut or `kill -9` leaves) when `ldm install`
//! reaches that point. Every write, fsync and rename of the protocol has one.

/// Every fault point of a successful `ldm install`, in the order the protocol reaches them.
pub const POINTS: &[&str] = &[
    "tmp-create",
    "tmp-write",
    "tmp-fsync",
    "store-rename",
    "store-fsync-dir",
    "pending-write",
    "pending-fsync",
    "pending-rename",
    "pending-fsync-dir",
    "health",
    "commit-write",
    "commit-fsync",
    "commit-rename",
    "commit-fsync-dir",
    "prune",
];

/// The points of an install whose health check fails, after `health`: the pointer goes back.
pub const REVERT_POINTS: &[&str] = &[
    "revert-write",
    "revert-fsync",
    "revert-rename",
    "revert-fsync-dir",
    "revert-prune",
];

/// The points of the recovery that the next `ldm install`, `status` or `rollback` runs after
/// an install died with the pointer pending.
pub const RECOVER_POINTS: &[&str] = &[
    "recover-write",
    "recover-fsync",
    "recover-rename",
    "recover-fsync-dir",
];

/// Aborts the process if `LDM_FAULT_AT` names `point`. Called just before the operation.
pub fn point(point: &str) {
    if std::env::var_os("LDM_FAULT_AT").is_some_and(|v| v == point) {
        eprintln!("LDM_FAULT_AT={point}: aborting");
        std::process::abort();
    }
}
