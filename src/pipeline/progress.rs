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

/// Counts steps across one request, which may run several chains (the tiles of an upscale),
/// and reports each to the caller's callback.
pub(crate) struct Steps<'a> {
    on_step: &'a mut dyn FnMut(Progress),
    done: usize,
    total: usize,
    start: std::time::Instant,
}

impl<'a> Steps<'a> {
    pub(crate) fn new(on_step: &'a mut dyn FnMut(Progress), total: usize) -> Self {
        Self {
            on_step,
            done: 0,
            total,
            start: std::time::Instant::now(),
        }
    }

    pub(crate) fn tick(&mut self) {
        self.done += 1;
        (self.on_step)(Progress {
            step: self.done,
            total: self.total,
            elapsed: self.start.elapsed(),
        });
    }
}
