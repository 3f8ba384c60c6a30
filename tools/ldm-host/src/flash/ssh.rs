//! Running commands on a device through the system's OpenSSH client. Using `ssh` (rather than
//! an SSH library) means the operator's own configuration applies unchanged: ~/.ssh/config,
//! known_hosts, agents, ProxyJump and ControlMaster, hardware keys; and no SSH or crypto code
//! is built into this tool.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result};

use super::fleet::Device;

/// Quotes one word for the remote POSIX shell.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `ssh` with the device's options, up to (not including) the destination.
fn base(d: &Device) -> Command {
    let mut c = Command::new("ssh");
    // BatchMode: never prompt (a fleet run is unattended); a device that would ask is a failure.
    c.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]);
    c.args([
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
    ]);
    c.arg("-p").arg(d.port.to_string());
    // One connection per device for all its commands (a handshake costs ~0.5 s on a small
    // board); the master goes away with `close`, or by itself a minute after the last use.
    if let Some(dir) = &d.control_dir {
        c.args(["-o", "ControlMaster=auto", "-o", "ControlPersist=60"]);
        c.arg("-o").arg(format!("ControlPath={}/%C", dir.display()));
    }
    if let Some(i) = &d.identity {
        c.arg("-i").arg(i);
    }
    c.args(&d.ssh_options);
    c
}

fn destination(d: &Device) -> String {
    match &d.user {
        Some(u) => format!("{u}@{}", d.host),
        None => d.host.clone(),
    }
}

/// `ssh ... DEST -- REMOTE`.
pub fn command(d: &Device, remote: &str) -> Command {
    let mut c = base(d);
    c.arg(destination(d)).arg("--").arg(remote);
    c.stdin(Stdio::null());
    c
}

/// Ends the device's shared connection, if any.
pub fn close(d: &Device) {
    if d.control_dir.is_some() {
        let mut c = base(d);
        c.args(["-O", "exit"]).arg(destination(d));
        let _ = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `remote` and collects its output.
pub fn run(d: &Device, remote: &str) -> Result<Output> {
    command(d, remote)
        .output()
        .context("cannot start the ssh client (is OpenSSH installed?)")
}

/// ssh exits 255 for its own errors (unreachable, refused, authentication).
pub fn is_ssh_failure(o: &Output) -> bool {
    o.status.code() == Some(255)
}

pub fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Streams `file` from byte `from` to its end into `remote` (which reads stdin), calling
/// `progress` per chunk.
pub fn send(
    d: &Device,
    remote: &str,
    file: &Path,
    from: u64,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    let mut src = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    src.seek(SeekFrom::Start(from))
        .with_context(|| format!("cannot seek in {}", file.display()))?;
    let mut child = command(d, remote)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the ssh client")?;
    let mut stdin = child.stdin.take().context("ssh has no stdin")?;
    let mut write_err = None;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", file.display()))?;
        if n == 0 {
            break;
        }
        if let Err(e) = stdin.write_all(&buf[..n]) {
            write_err = Some(e);
            break;
        }
        progress(n as u64);
    }
    drop(stdin);
    let out = child.wait_with_output().context("ssh did not finish")?;
    if !out.status.success() {
        anyhow::bail!(
            "transfer failed (ssh exit {:?}): {}",
            out.status.code(),
            last_line(&out.stderr)
        );
    }
    if let Some(e) = write_err {
        anyhow::bail!("transfer interrupted: {e}");
    }
    Ok(())
}
