//! The few file-system operations the installer needs, with the durability each one promises.
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::InstallError;

pub(crate) fn io(path: &Path, source: std::io::Error) -> InstallError {
    InstallError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Makes a directory's entries (a rename, a new file) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), InstallError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// Writes `bytes` to `path` atomically: temporary file beside it, fsync, rename, fsync the
/// directory. `fault` names the four fault points (`<fault>-write`, ...).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], fault: &str) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp"));
    super::fault::point(&format!("{fault}-write"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
    super::fault::point(&format!("{fault}-fsync"));
    f.sync_all().map_err(|e| io(&tmp, e))?;
    drop(f);
    super::fault::point(&format!("{fault}-rename"));
    fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    super::fault::point(&format!("{fault}-fsync-dir"));
    fsync_dir(dir)
}

/// Read-only for everyone: store files are never written again once named by their digest.
pub(crate) fn make_read_only(path: &Path) -> Result<(), InstallError> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o444)).map_err(|e| io(path, e))
}

/// Bytes an unprivileged writer may still use on the file system holding `dir` (statvfs).
/// `LDM_TEST_FREE_BYTES` can lower the figure (never raise it), so a test can play a full disk.
pub fn free_bytes(dir: &Path) -> Result<u64, InstallError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io(dir, std::io::Error::other("path contains a NUL byte")))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid C string and `st` is a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io(dir, std::io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between libc targets
    let real = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    let cap = std::env::var("LDM_TEST_FREE_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    Ok(real.min(cap))
}

/// Physical memory this process may use: the smaller of MemTotal and the cgroup limit.
pub fn device_memory() -> Option<u64> {
    let total = fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb.saturating_mul(1024))
    });
    match (total, crate::pipeline::memory::cgroup_limit()) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}
