//! `ldm install` and `ldm rollback`, step by step. Each write, fsync and rename is preceded by a
//! fault point (see `fault.rs`); SPEC.md explains why every crash point leaves a usable root.
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter};
use std::path::Path;

use serde::Serialize;

use super::fsutil::{device_memory, free_bytes, fsync_dir, io, make_read_only};
use super::health::{self, HealthOptions, HealthReport};
use super::root::{exists, now, Entry, Fallback, Root, State};
use super::{fault, InstallError};
use crate::bundle::{BundleError, BundleHeader, Manifest, RuntimeVersion};

/// Space kept free beyond the model itself (the pointer, logs, the file system's own needs).
const SPACE_MARGIN: u64 = 4 << 20;

#[derive(Clone, Debug, Default)]
pub struct InstallOptions {
    /// Overrides the root's `board` file.
    pub board: Option<String>,
    pub health: HealthOptions,
}

/// How an install ended. Everything but `Installed` leaves the pointer as it was.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Installed {
        name: String,
        version: u64,
        digest: String,
        previous: Option<Entry>,
        health: HealthReport,
    },
    /// The same model at the same version is already active.
    Current { version: u64, digest: String },
    /// Checked and turned down before anything changed.
    Refused { reason: String },
    /// Stored and activated, then failed its health check and reverted.
    RolledBack { version: u64, reason: String },
}

fn refused(reason: impl std::fmt::Display) -> Outcome {
    Outcome::Refused {
        reason: reason.to_string(),
    }
}

/// Installs the bundle at `bundle` into `root`. Errors are failures of the device (I/O, a held
/// lock); everything about the bundle itself is an [`Outcome`].
pub fn install(root: &Root, bundle: &Path, opts: &InstallOptions) -> Result<Outcome, InstallError> {
    let lock = root.lock()?;
    for line in root.recover(&lock)? {
        log::warn!("recovery: {line}");
    }
    let state = root.state()?;
    let keys = root.trusted_keys()?;
    if keys.is_empty() {
        return Ok(refused(format!(
            "no trusted keys in {}",
            root.keys_dir().display()
        )));
    }
    let file = File::open(bundle).map_err(|e| io(bundle, e))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let header = match BundleHeader::read(&mut r) {
        Ok(h) => h,
        Err(BundleError::Io(e)) => return Err(io(bundle, e)),
        Err(e) => return Ok(refused(e)),
    };
    let verified = match header.verify(&keys) {
        Ok(v) => v,
        Err(e) => return Ok(refused(e)),
    };
    let m = &verified.manifest;
    let digest = m.model_hex();
    if let Some(reason) = policy(root, &state, m, opts)? {
        return Ok(reason);
    }
    let created = root.create_dirs()?;
    let target = root.model_path(&digest);

    // 1. Stream the model into tmp/ while hashing; fsync.
    let tmp = root.tmp_dir().join(format!("{digest}.part"));
    fault::point("tmp-create");
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let half = m.model_len / 2;
    let mut written = 0u64;
    let copied = verified.copy_model(&mut r, &mut w, |n| {
        written += n;
        if written >= half && written - n < half.max(1) {
            fault::point("tmp-write");
        }
    });
    let flushed = match copied {
        Ok(()) => w
            .into_inner()
            .map_err(|e| io(&tmp, e.into_error()))
            .and_then(|f| {
                fault::point("tmp-fsync");
                f.sync_all().map_err(|e| io(&tmp, e))
            }),
        Err(e) => {
            drop(w);
            let _ = fs::remove_file(&tmp);
            // A refusal leaves the root as it found it.
            for d in created.iter().rev() {
                let _ = fs::remove_dir(d);
            }
            return match e {
                BundleError::Io(e) => Err(io(bundle, e)),
                e => Ok(refused(e)),
            };
        }
    };
    if let Err(e) = flushed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }

    // 2. Name it by its digest in the store. A file already there has the same bytes (it was
    //    verified when it came in) and may be mapped: it is kept, never replaced.
    if exists(&target) {
        fs::remove_file(&tmp).map_err(|e| io(&tmp, e))?;
    } else {
        make_read_only(&tmp)?;
        fault::point("store-rename");
        fs::rename(&tmp, &target).map_err(|e| io(&target, e))?;
        fault::point("store-fsync-dir");
        fsync_dir(&root.store_dir())?;
    }

    // 3. Switch the pointer, marked pending with what to go back to.
    let entry = Entry {
        digest: digest.clone(),
        version: m.version,
        name: m.name.clone(),
        installed: now(),
    };
    let pending = State {
        active: Some(entry.clone()),
        previous: state.active.clone(),
        pending: Some(Fallback {
            active: state.active.clone(),
            previous: state.previous.clone(),
        }),
    };
    root.set_state(&pending, "pending")?;

    // 4. Health check, then commit or revert.
    fault::point("health");
    match health::check(&target, &opts.health) {
        Ok(report) => {
            let committed = State {
                pending: None,
                ..pending
            };
            root.set_state(&committed, "commit")?;
            fault::point("prune");
            // N-1 stays; anything older goes.
            for line in root.prune(&committed)? {
                log::info!("prune: {line}");
            }
            Ok(Outcome::Installed {
                name: m.name.clone(),
                version: m.version,
                digest,
                previous: state.active,
                health: report,
            })
        }
        Err(reason) => {
            root.set_state(&state, "revert")?;
            fault::point("revert-prune");
            for line in root.prune(&state)? {
                log::info!("prune: {line}");
            }
            Ok(Outcome::RolledBack {
                version: m.version,
                reason: format!("health check failed: {reason}"),
            })
        }
    }
}

/// The device's rules, checked after the signature and before any byte is written:
/// runtime version, expiry, board, monotonic version, memory and free space.
fn policy(
    root: &Root,
    state: &State,
    m: &Manifest,
    opts: &InstallOptions,
) -> Result<Option<Outcome>, InstallError> {
    let runtime = RuntimeVersion::current();
    if m.min_runtime > runtime {
        return Ok(Some(refused(format!(
            "needs runtime {} or newer, this is {runtime}",
            m.min_runtime
        ))));
    }
    let t = now();
    if t >= m.expires {
        return Ok(Some(refused(format!(
            "bundle expired at {} (now {t})",
            m.expires
        ))));
    }
    if !m.boards.is_empty() {
        match root.board(opts.board.as_deref())? {
            Some(b) if m.boards.contains(&b) => {}
            Some(b) => {
                return Ok(Some(refused(format!(
                    "board {b} is not among the bundle's boards {:?}",
                    m.boards
                ))))
            }
            None => {
                return Ok(Some(refused(format!(
                    "the bundle is for boards {:?} and this device has no board name \
                     (write it to {}/board)",
                    m.boards,
                    root.dir.display()
                ))))
            }
        }
    }
    if let Some(a) = &state.active {
        if a.version == m.version && a.digest == m.model_hex() {
            return Ok(Some(Outcome::Current {
                version: a.version,
                digest: a.digest.clone(),
            }));
        }
        if m.version <= a.version {
            return Ok(Some(refused(format!(
                "version {} is not newer than the active version {}",
                m.version, a.version
            ))));
        }
    }
    if let (Some(need), Some(have)) = (m.memory_bytes, device_memory()) {
        if need > have {
            return Ok(Some(refused(format!(
                "the model needs {} MiB of memory, this device has {} MiB",
                need >> 20,
                have >> 20
            ))));
        }
    }
    if !exists(&root.model_path(&m.model_hex())) {
        let need = m.model_len.saturating_add(SPACE_MARGIN);
        let free = free_bytes(&root.dir)?;
        if need > free {
            return Ok(Some(refused(format!(
                "not enough space: needs {need} bytes, {free} free in {}",
                root.dir.display()
            ))));
        }
    }
    Ok(None)
}

/// Makes the previous model active again (after checking it still opens and matches its
/// digest); the model it replaces becomes the previous one, so a second rollback undoes it.
pub fn rollback(root: &Root) -> Result<Entry, InstallError> {
    let lock = root.lock()?;
    for line in root.recover(&lock)? {
        log::warn!("recovery: {line}");
    }
    let s = root.state()?;
    let prev = s.previous.clone().ok_or(InstallError::NoPrevious)?;
    let path = root.model_path(&prev.digest);
    let model = crate::format::ModelFile::open(&path)
        .map_err(|e| InstallError::PreviousUnfit(e.to_string()))?;
    model
        .verify_digest()
        .map_err(|e| InstallError::PreviousUnfit(e.to_string()))?;
    let d = crate::bundle::hash_file(&path).map_err(|e| io(&path, e))?;
    if crate::bundle::keys::hex(&d) != prev.digest {
        return Err(InstallError::PreviousUnfit(
            "store file does not hash to its name".into(),
        ));
    }
    let next = State {
        active: Some(prev.clone()),
        previous: s.active,
        pending: None,
    };
    root.set_state(&next, "rollback")?;
    Ok(prev)
}
