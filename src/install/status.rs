//! `ldm status`: what the root has active and whether it is intact. Like a boot-time check, it
//! first reverts an install that died before committing (when no install is running).
use serde::Serialize;

use super::fsutil::{device_memory, free_bytes, io};
use super::root::{Entry, Root};
use super::InstallError;
use crate::bundle::keys::{hex, key_id};

#[derive(Debug, Serialize)]
pub struct ActiveStatus {
    #[serde(flatten)]
    pub entry: Entry,
    /// The store file hashes to its name and passes the model file's own validation and
    /// digest (`None` when not checked).
    pub verified: Option<bool>,
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub root: String,
    pub runtime: String,
    pub board: Option<String>,
    pub active: Option<ActiveStatus>,
    pub previous: Option<Entry>,
    /// An install is in progress (another process holds the lock).
    pub busy: bool,
    pub pending: bool,
    pub recovered: Vec<String>,
    pub free_bytes: u64,
    pub memory_bytes: Option<u64>,
    pub trusted_keys: Vec<String>,
}

fn check_file(root: &Root, e: &Entry) -> Result<(), String> {
    let path = root.model_path(&e.digest);
    let d = crate::bundle::hash_file(&path).map_err(|err| io(&path, err).to_string())?;
    if hex(&d) != e.digest {
        return Err("store file does not hash to its name".into());
    }
    let m = crate::model::Model::open(&path).map_err(|err| err.to_string())?;
    m.file.verify_digest().map_err(|err| err.to_string())
}

/// Reports the root's state; `verify` hashes and validates the active model.
pub fn status(root: &Root, verify: bool) -> Result<StatusReport, InstallError> {
    // No root: nothing to recover, and a status query must not create one.
    let (busy, recovered) = if !root.dir.is_dir() {
        (false, Vec::new())
    } else {
        match root.lock() {
            Ok(lock) => (false, root.recover(&lock)?),
            Err(InstallError::Busy(_)) => (true, Vec::new()),
            Err(e) => return Err(e),
        }
    };
    let s = root.state()?;
    let active = s.active.clone().map(|entry| {
        let (verified, problem) = if verify {
            match check_file(root, &entry) {
                Ok(()) => (Some(true), None),
                Err(p) => (Some(false), Some(p)),
            }
        } else {
            (None, None)
        };
        ActiveStatus {
            entry,
            verified,
            problem,
        }
    });
    let keys = root.trusted_keys()?;
    Ok(StatusReport {
        root: root.dir.display().to_string(),
        runtime: crate::bundle::RuntimeVersion::current().to_string(),
        board: root.board(None)?,
        active,
        previous: s.previous,
        busy,
        pending: s.pending.is_some(),
        recovered,
        free_bytes: if root.dir.exists() {
            free_bytes(&root.dir)?
        } else {
            0
        },
        memory_bytes: device_memory(),
        trusted_keys: keys.iter().map(key_id).collect(),
    })
}
