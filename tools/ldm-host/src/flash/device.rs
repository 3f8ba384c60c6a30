//! Flashing one device: probe its state, send the bundle (resuming a partial one), install it,
//! and turn what happened into a report entry.
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::Value;

use super::fleet::Device;
use super::ssh::{self, quote};

/// What the host knows about the bundle it sends.
pub struct BundleInfo {
    pub path: std::path::PathBuf,
    pub len: u64,
    /// BLAKE3 of the whole bundle: the staging file's name, so a resumed transfer only ever
    /// continues the same bundle.
    pub id: String,
    pub version: u64,
    pub model_digest: String,
    pub model_len: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Installed,
    Current,
    Refused,
    Failed,
    RolledBack,
    /// `--dry-run`: what would be done.
    WouldInstall,
}

#[derive(Debug, Serialize)]
pub struct DeviceReport {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub status: Status,
    pub reason: Option<String>,
    /// Versions active before and after.
    pub version_before: Option<u64>,
    pub version_after: Option<u64>,
    pub bytes_sent: u64,
    /// Bytes already on the device from an interrupted transfer.
    pub resumed_from: u64,
    pub seconds: f64,
    /// `ldm install --json`'s outcome, verbatim.
    pub install: Option<Value>,
}

struct Ctx<'a> {
    d: &'a Device,
    b: &'a BundleInfo,
    bar: &'a ProgressBar,
    dry_run: bool,
}

/// Space an install needs beside the model (must match the device's margin, and then some).
const SPACE_MARGIN: u64 = 4 << 20;

pub fn flash(d: &Device, b: &BundleInfo, bar: &ProgressBar, dry_run: bool) -> DeviceReport {
    let start = Instant::now();
    let mut r = DeviceReport {
        name: d.name.clone(),
        host: d.host.clone(),
        port: d.port,
        status: Status::Failed,
        reason: None,
        version_before: None,
        version_after: None,
        bytes_sent: 0,
        resumed_from: 0,
        seconds: 0.0,
        install: None,
    };
    let c = Ctx { d, b, bar, dry_run };
    if let Err(e) = run(&c, &mut r) {
        r.status = Status::Failed;
        r.reason = Some(format!("{e:#}"));
    }
    ssh::close(d);
    r.seconds = start.elapsed().as_secs_f64();
    bar.finish_with_message(format!(
        "{:?}{}",
        r.status,
        r.reason
            .as_deref()
            .map_or(String::new(), |s| format!(": {s}"))
    ));
    r
}

fn ldm(c: &Ctx) -> String {
    quote(&c.d.ldm)
}

fn run(c: &Ctx, r: &mut DeviceReport) -> Result<()> {
    let (d, b) = (c.d, c.b);
    let root = quote(&d.root);
    c.bar.set_message("probing");
    let o = ssh::run(
        d,
        &format!("{} status --root {root} --json --no-verify", ldm(c)),
    )?;
    if ssh::is_ssh_failure(&o) {
        anyhow::bail!("unreachable: {}", ssh::last_line(&o.stderr));
    }
    if !o.status.success() {
        anyhow::bail!("ldm status failed: {}", ssh::last_line(&o.stderr));
    }
    let st: Value = serde_json::from_slice(&o.stdout).context("ldm status printed no JSON")?;
    let active = &st["active"];
    r.version_before = active["version"].as_u64();
    r.version_after = r.version_before;
    if active["digest"].as_str() == Some(b.model_digest.as_str())
        && r.version_before == Some(b.version)
    {
        r.status = Status::Current;
        return Ok(());
    }
    if let Some(v) = r.version_before.filter(|&v| v >= b.version) {
        r.status = Status::Refused;
        r.reason = Some(format!(
            "version {} is not newer than the active version {v} (checked before sending)",
            b.version
        ));
        return Ok(());
    }
    let free = st["free_bytes"].as_u64().unwrap_or(0);
    let need = b.len + b.model_len + SPACE_MARGIN;
    // What an earlier, interrupted transfer left on the device.
    let dir = format!("{}/incoming", d.root.trim_end_matches('/'));
    let part = quote(&format!("{dir}/{}.ldmb.part", b.id));
    let whole = quote(&format!("{dir}/{}.ldmb", b.id));
    let o = ssh::run(
        d,
        &format!(
            "if [ -f {whole} ]; then echo whole; elif [ -f {part} ]; then wc -c < {part}; else echo 0; fi"
        ),
    )?;
    if !o.status.success() {
        anyhow::bail!("cannot look at {dir}: {}", ssh::last_line(&o.stderr));
    }
    let have = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let mut resumed = match have.as_str() {
        "whole" => b.len,
        n => n.parse::<u64>().unwrap_or(0),
    };
    if free.saturating_add(resumed) < need {
        r.status = Status::Refused;
        r.reason = Some(format!(
            "not enough space: the bundle and its install need {need} bytes, {free} free \
             (checked before sending)"
        ));
        return Ok(());
    }
    if c.dry_run {
        r.status = Status::WouldInstall;
        r.resumed_from = resumed;
        return Ok(());
    }
    // Two attempts: a refused install after a resumed transfer may be a bad prefix left by
    // something else; the second one sends everything again.
    for attempt in 0..2 {
        if resumed > b.len {
            resumed = 0;
        }
        r.resumed_from = r.resumed_from.max(resumed);
        if resumed < b.len {
            c.bar.set_message(if resumed > 0 {
                format!("resuming at {resumed}")
            } else {
                "sending".into()
            });
            c.bar.set_length(b.len);
            c.bar.set_position(resumed);
            // Partial transfers of other bundles are dead weight on a small disk.
            let qdir = quote(&dir);
            let cmd = format!(
                "mkdir -p {qdir} && for f in {qdir}/*.ldmb.part; do [ \"$f\" = {part} ] || \
                 rm -f \"$f\"; done && {} >> {part}",
                if resumed == 0 {
                    format!("rm -f {part} && cat")
                } else {
                    "cat".into()
                }
            );
            let bar = c.bar.clone();
            ssh::send(d, &cmd, &b.path, resumed, |n| {
                r.bytes_sent += n;
                bar.inc(n);
            })?;
            let o = ssh::run(d, &format!("mv {part} {whole}"))?;
            if !o.status.success() {
                anyhow::bail!("cannot finish the transfer: {}", ssh::last_line(&o.stderr));
            }
        }
        c.bar.set_message("installing");
        let extra: Vec<String> = d.install_args.iter().map(|a| quote(a)).collect();
        let o = ssh::run(
            d,
            &format!(
                "{} install {whole} --root {root} --json {}; rc=$?; rm -f {whole}; exit $rc",
                ldm(c),
                extra.join(" ")
            ),
        )?;
        if ssh::is_ssh_failure(&o) {
            anyhow::bail!(
                "connection lost during install: {}",
                ssh::last_line(&o.stderr)
            );
        }
        let out: Option<Value> = serde_json::from_slice(&o.stdout).ok();
        let Some(out) = out else {
            anyhow::bail!(
                "ldm install failed (exit {:?}): {}",
                o.status.code(),
                ssh::last_line(&o.stderr)
            );
        };
        let kind = out["status"].as_str().unwrap_or("").to_string();
        r.reason = out["reason"].as_str().map(String::from);
        r.install = Some(out.clone());
        r.status = match kind.as_str() {
            "installed" => {
                r.version_after = out["version"].as_u64();
                Status::Installed
            }
            "current" => Status::Current,
            "rolled_back" => Status::RolledBack,
            "refused" if resumed > 0 && attempt == 0 => {
                resumed = 0;
                continue;
            }
            "refused" => Status::Refused,
            _ => anyhow::bail!("ldm install printed an unknown outcome: {out}"),
        };
        return Ok(());
    }
    Ok(())
}

/// Reads what the host needs to know about a bundle (and checks it parses).
pub fn bundle_info(path: &Path) -> Result<BundleInfo> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata()?.len();
    let h = ldm_edge::bundle::BundleHeader::read(&mut std::io::BufReader::new(f))
        .with_context(|| format!("{} is not a valid bundle", path.display()))?;
    let m = h
        .manifest_unverified()
        .with_context(|| format!("{} has a bad manifest", path.display()))?;
    let id = ldm_edge::bundle::hash_file(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(BundleInfo {
        path: path.to_path_buf(),
        len,
        id: ldm_edge::bundle::keys::hex(&id[..16]),
        version: m.version,
        model_digest: m.model_hex(),
        model_len: m.model_len,
    })
}
