//! Progress reporting and cancellation shared by every pipeline.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::backend::{Executable, Tensor};
use crate::preview::{LatentRgb, PreviewImage};
use crate::Result;

/// What a pipeline reports after each denoising step.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// 1-based step just finished.
    pub step: usize,
    pub total: usize,
    pub elapsed: Duration,
    /// A preview of the sampler's current estimate of the final image, on the steps
    /// [`super::Pipeline::with_preview`] asks for (every k-th and the last).
    pub preview: Option<&'a PreviewImage>,
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

/// Where a request's previews come from.
pub(crate) enum PreviewSource<'m> {
    /// The latent-to-RGB map, upsampled by the autoencoder's factor.
    Linear { map: &'m LatentRgb, factor: usize },
    /// A decoder (tiny or full) prepared for the request's latent size.
    Decoder {
        plan: Box<dyn Executable>,
        inv_scale: f32,
    },
}

/// Previews for one request: the source and every how many steps.
pub(crate) struct PreviewPlan<'m> {
    pub source: PreviewSource<'m>,
    pub every: usize,
}

/// Counts steps across one request, which may run several chains (the tiles of an upscale),
/// and reports each to the caller's callback.
pub(crate) struct Steps<'a> {
    on_step: &'a mut dyn FnMut(Progress),
    done: usize,
    total: usize,
    start: std::time::Instant,
    preview: Option<PreviewPlan<'a>>,
}

impl<'a> Steps<'a> {
    pub(crate) fn new(on_step: &'a mut dyn FnMut(Progress), total: usize) -> Self {
        Self {
            on_step,
            done: 0,
            total,
            start: std::time::Instant::now(),
            preview: None,
        }
    }

    pub(crate) fn with_preview(mut self, preview: Option<PreviewPlan<'a>>) -> Self {
        self.preview = preview;
        self
    }

    /// Whether the step about to finish gets a preview; the caller then passes its latent.
    pub(crate) fn wants_preview(&self) -> bool {
        let step = self.done + 1;
        self.preview
            .as_ref()
            .is_some_and(|p| step % p.every == 0 || step == self.total)
    }

    pub(crate) fn tick(&mut self) {
        self.report(None);
    }

    /// Ends a step with the sampler's estimate of the clean latent [z, h, w] to preview.
    pub(crate) fn tick_with_latent(&mut self, latent: &[f32], h: usize, w: usize) -> Result<()> {
        let step = self.done + 1;
        let image = match &mut self.preview {
            Some(PreviewPlan {
                source: PreviewSource::Linear { map, factor },
                ..
            }) => Some(map.preview(latent, h, w, *factor, step)?),
            Some(PreviewPlan {
                source: PreviewSource::Decoder { plan, inv_scale },
                ..
            }) => {
                let z = latent.len() / (h * w).max(1);
                let x = Tensor::new(
                    vec![1, z, h, w],
                    latent.iter().map(|v| v * *inv_scale).collect(),
                )?;
                let img = super::shared::first(plan.run(&[x])?)?;
                let rgb = super::image::to_rgb8(&img)?;
                Some(PreviewImage {
                    width: img.shape[3],
                    height: img.shape[2],
                    rgb,
                    step,
                })
            }
            None => None,
        };
        self.report(image.as_ref());
        Ok(())
    }

    fn report(&mut self, preview: Option<&PreviewImage>) {
        self.done += 1;
        (self.on_step)(Progress {
            step: self.done,
            total: self.total,
            elapsed: self.start.elapsed(),
            preview,
        });
    }
}
