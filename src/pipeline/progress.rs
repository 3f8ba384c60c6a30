//! Progress reporting and cancellation shared by every pipeline.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What a pipeline reports after each denoising step.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// 1-based step just finished.
    pub step: usize,
    pub total: usize,
    pub elapsed: Duration,
}

/// A cancel flag checked before every step. Cloneable handles share one flag, so a Ctrl-C
/// handler or a UI thread can stop a run that is in progress.
#[derive(Clone, Default)]
pub struct Cancel(std::sync::Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
