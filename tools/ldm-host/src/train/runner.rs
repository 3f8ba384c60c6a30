//! What both training loops share: the Ctrl-C flag, the progress bar, the CSV log.
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// A flag set by Ctrl-C (SIGINT/SIGTERM), so the loop can save a checkpoint and exit cleanly.
pub fn stop_flag() -> Arc<AtomicBool> {
    STOP.get_or_init(|| {
        let f = Arc::new(AtomicBool::new(false));
        let g = f.clone();
        if let Err(e) = ctrlc::set_handler(move || g.store(true, Ordering::SeqCst)) {
            log::warn!("cannot install the Ctrl-C handler: {e}");
        }
        f
    })
    .clone()
}

pub fn progress(total: u64, start: u64) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_position(start);
    pb
}

/// An append-only CSV log; the header is written once when the file is new.
pub struct CsvLog(std::fs::File);

impl CsvLog {
    pub fn open(path: &Path, header: &str) -> Result<Self> {
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let fresh = !path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log {}", path.display()))?;
        if fresh {
            writeln!(f, "{header}")?;
        }
        Ok(Self(f))
    }
    pub fn row(&mut self, line: &str) -> Result<()> {
        writeln!(self.0, "{line}")?;
        Ok(())
    }
}
