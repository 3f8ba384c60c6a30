//! A device's install root: trusted keys, the content-addressed model store, and the one
//! pointer (`state.json`) that says which model is active. Layout in `src/bundle/SPEC.md`.
use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::fsutil::{io, write_atomic};
use super::InstallError;

/// Where a device keeps its models unless told otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/ldm";
/// Largest state file read (it holds two short entries).
const MAX_STATE_LEN: u64 = 64 << 10;

/// One installed model, as the pointer records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// BLAKE3 of the model file, hex: its name in the store.
    pub digest: String,
    pub version: u64,
    pub name: String,
    /// Unix seconds.
    pub installed: u64,
}

/// The pointer. `pending` is set while a new model's health check runs: an install that dies
/// before it commits is reverted to `pending`'s entries by the next `ldm` that takes the lock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub active: Option<Entry>,
    pub previous: Option<Entry>,
    pub pending: Option<Fallback>,
}

/// What to go back to if a pending install does not commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    pub active: Option<Entry>,
    pub previous: Option<Entry>,
}

impl State {
    /// Digests the store must keep: everything the pointer or its fallback names.
    pub fn referenced(&self) -> Vec<&str> {
        let mut v: Vec<&str> = [&self.active, &self.previous]
            .into_iter()
            .flatten()
            .map(|e| e.digest.as_str())
            .collect();
        if let Some(f) = &self.pending {
            v.extend(
                [&f.active, &f.previous]
                    .into_iter()
                    .flatten()
                    .map(|e| e.digest.as_str()),
            );
        }
        v
    }
}

/// An install root on disk.
#[derive(Clone, Debug)]
pub struct Root {
    pub dir: PathBuf,
}

/// An exclusive lock on the root directory itself (flock on its descriptor, so taking it writes
/// nothing), held by installs, rollbacks and recoveries; released when dropped or when the
/// process dies.
pub struct RootLock {
    _file: File,
}

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Root { dir: dir.into() }
    }
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn model_path(&self, digest: &str) -> PathBuf {
        self.store_dir().join(format!("{digest}.ldm"))
    }

    /// Creates the directories an install writes into; returns those it created, so a refusal
    /// can take them away again.
    pub fn create_dirs(&self) -> Result<Vec<PathBuf>, InstallError> {
        let mut created = Vec::new();
        for d in [self.store_dir(), self.tmp_dir()] {
            if !exists(&d) {
                fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
                created.push(d);
            }
        }
        Ok(created)
    }

    /// Takes the root's lock; fails at once if another process holds it.
    pub fn lock(&self) -> Result<RootLock, InstallError> {
        fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let file = File::open(&self.dir).map_err(|e| io(&self.dir, e))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(InstallError::Busy(self.dir.display().to_string()));
        }
        Ok(RootLock { _file: file })
    }

    /// Reads the pointer; a root without one has no model yet.
    pub fn state(&self) -> Result<State, InstallError> {
        let path = self.state_path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(io(&path, e)),
        };
        let len = file.metadata().map_err(|e| io(&path, e))?.len();
        if len > MAX_STATE_LEN {
            return Err(InstallError::BadState(format!("{len} bytes")));
        }
        let text = fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| InstallError::BadState(e.to_string()))
    }

    /// Replaces the pointer atomically (`<fault>-write/-fsync/-rename/-fsync-dir` points).
    pub(crate) fn set_state(&self, s: &State, fault: &str) -> Result<(), InstallError> {
        let bytes =
            serde_json::to_vec_pretty(s).map_err(|e| InstallError::BadState(e.to_string()))?;
        write_atomic(&self.state_path(), &bytes, fault)
    }

    /// The active model's file, if any.
    pub fn active_model(&self) -> Result<PathBuf, InstallError> {
        let s = self.state()?;
        let e = s
            .active
            .ok_or_else(|| InstallError::NoModel(self.dir.display().to_string()))?;
        Ok(self.model_path(&e.digest))
    }

    /// Trusted public keys: every `keys/*.pub`.
    pub fn trusted_keys(&self) -> Result<Vec<VerifyingKey>, InstallError> {
        let dir = self.keys_dir();
        let mut keys = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
            Err(e) => return Err(io(&dir, e)),
        };
        for ent in rd {
            let p = ent.map_err(|e| io(&dir, e))?.path();
            if p.extension().is_some_and(|x| x == "pub") {
                let text = fs::read_to_string(&p).map_err(|e| io(&p, e))?;
                let k = crate::bundle::parse_public_key(&text).map_err(|e| {
                    InstallError::BadKeyFile {
                        path: p.display().to_string(),
                        reason: e.to_string(),
                    }
                })?;
                keys.push(k);
            }
        }
        Ok(keys)
    }

    /// This device's board name: `--board`, else the root's `board` file, else none.
    pub fn board(&self, flag: Option<&str>) -> Result<Option<String>, InstallError> {
        if let Some(b) = flag {
            return Ok(Some(b.to_string()));
        }
        let p = self.dir.join("board");
        match fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p, e)),
        }
    }

    /// Finishes or undoes what a dead install left: a pending pointer goes back to its
    /// fallback (the new model never passed its health check), temporary files go, and store
    /// files nothing names are removed. Needs the lock. Returns what it did, for the log.
    pub fn recover(&self, _lock: &RootLock) -> Result<Vec<String>, InstallError> {
        let mut did = Vec::new();
        let mut s = self.state()?;
        if let Some(f) = s.pending.take() {
            let from = s.active.as_ref().map(|e| e.digest.clone());
            s = State {
                active: f.active,
                previous: f.previous,
                pending: None,
            };
            self.set_state(&s, "recover")?;
            did.push(format!(
                "reverted an uncommitted install of {}",
                from.unwrap_or_default()
            ));
        }
        let stale = self.dir.join(".state.json.tmp");
        if stale.exists() {
            fs::remove_file(&stale).map_err(|e| io(&stale, e))?;
            did.push("removed a half-written pointer".into());
        }
        for dir in [self.tmp_dir()] {
            if let Ok(rd) = fs::read_dir(&dir) {
                for ent in rd.flatten() {
                    let p = ent.path();
                    fs::remove_file(&p).map_err(|e| io(&p, e))?;
                    did.push(format!("removed {}", p.display()));
                }
            }
        }
        did.extend(self.prune(&s)?);
        Ok(did)
    }

    /// Removes store files the pointer does not name. Unlinking never disturbs a process that
    /// still has one mapped: it keeps the inode until it unmaps.
    pub(crate) fn prune(&self, s: &State) -> Result<Vec<String>, InstallError> {
        let keep = s.referenced();
        let mut did = Vec::new();
        let dir = self.store_dir();
        if let Ok(rd) = fs::read_dir(&dir) {
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                let digest = name.strip_suffix(".ldm").unwrap_or("");
                if !keep.contains(&digest) {
                    let p = ent.path();
                    fs::remove_file(&p).map_err(|e| io(&p, e))?;
                    did.push(format!("removed {}", p.display()));
                }
            }
        }
        Ok(did)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}
