//! `ldm-host flash`: push a signed bundle to every device of a fleet over SSH, install it with
//! `ldm install`, and report per device.
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

mod device;
mod fleet;
mod ssh;

use device::{DeviceReport, Status};

#[derive(clap::Args)]
pub struct FlashArgs {
    /// The signed bundle (.ldmb).
    pub bundle: PathBuf,
    /// The fleet file (see `tools/ldm-host/src/flash/fleet.rs` or README).
    #[arg(long)]
    pub fleet: PathBuf,
    /// Devices flashed at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Probe every device and report what would happen; send nothing, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "flash-report.json")]
    pub report: PathBuf,
    /// No progress bars.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Serialize)]
struct Report {
    bundle: String,
    version: u64,
    model_digest: String,
    bundle_bytes: u64,
    dry_run: bool,
    seconds: f64,
    devices: Vec<DeviceReport>,
}

/// The run's ControlPath directory, removed however `flash` returns: an error after it was made
/// (bundle unreadable, a worker panicked) would otherwise leave one in the temp dir per run.
struct ControlDir(PathBuf);

impl Drop for ControlDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn flash(a: FlashArgs) -> Result<bool> {
    let mut devices = fleet::load(&a.fleet)?;
    // Shared connections live in a private directory of this run (sockets must not be
    // reachable by other users; ssh also checks).
    let path = std::env::temp_dir().join(format!("ldm-flash-{}", std::process::id()));
    std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let control = ControlDir(path);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&control.0, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot protect {}", control.0.display()))?;
    }
    for d in &mut devices {
        if !d.ssh_options.iter().any(|o| o.contains("ControlPath")) {
            d.control_dir = Some(control.0.clone());
        }
    }
    let info = device::bundle_info(&a.bundle)?;
    let start = Instant::now();
    let multi = MultiProgress::with_draw_target(if a.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bars: Vec<ProgressBar> = devices
        .iter()
        .map(|d| {
            let bar = multi.add(ProgressBar::new(info.len));
            bar.set_style(style.clone());
            bar.set_prefix(d.name.clone());
            bar.set_message("waiting");
            bar
        })
        .collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<DeviceReport>>> =
        Mutex::new((0..devices.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..a.parallel.clamp(1, devices.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(d) = devices.get(i) else { break };
                let r = device::flash(d, &info, &bars[i], a.dry_run);
                if let Ok(mut v) = results.lock() {
                    v[i] = Some(r);
                }
            });
        }
    });
    let reports: Vec<DeviceReport> = results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a flash worker panicked"))?
        .into_iter()
        .flatten()
        .collect();
    let report = Report {
        bundle: a.bundle.display().to_string(),
        version: info.version,
        model_digest: info.model_digest.clone(),
        bundle_bytes: info.len,
        dry_run: a.dry_run,
        seconds: start.elapsed().as_secs_f64(),
        devices: reports,
    };
    // Every device closed its master connection; nothing uses the sockets any more.
    drop(control);
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&a.report, &json)
        .with_context(|| format!("cannot write the report {}", a.report.display()))?;
    println!(
        "{:<14} {:<24} {:<13} {:>7} {:>12} {:>8}  reason",
        "device", "address", "status", "version", "sent", "seconds"
    );
    for r in &report.devices {
        println!(
            "{:<14} {:<24} {:<13} {:>7} {:>12} {:>8.2}  {}",
            r.name,
            format!("{}:{}", r.host, r.port),
            serde_json::to_value(r.status)?.as_str().unwrap_or("?"),
            r.version_after.map_or("-".into(), |v| v.to_string()),
            r.bytes_sent,
            r.seconds,
            r.reason.as_deref().unwrap_or("")
        );
    }
    let sent: u64 = report.devices.iter().map(|r| r.bytes_sent).sum();
    println!(
        "{} devices in {:.2} s, {sent} bytes sent ({:.1} MB/s); report: {}",
        report.devices.len(),
        report.seconds,
        sent as f64 / 1e6 / report.seconds.max(1e-9),
        a.report.display()
    );
    Ok(report.devices.iter().all(|r| {
        matches!(
            r.status,
            Status::Installed | Status::Current | Status::WouldInstall
        )
    }))
}
