//! Super-resolution with a task-sr model: the low-res image is concatenated to the UNet input
//! at latent resolution, so the output is f (the autoencoder factor) times larger. Inputs of
//! any size run as overlapping tiles of the size the model was trained on, blended with
//! feathered weights ([`super::tiles`]).
use super::denoise::{Denoiser, Sampling, Start};
use super::progress::{Cancel, Progress, Steps};
use super::shared::{check_sampling, image_hw, Generated, Pipeline};
use super::tiles::{blend_weights, crop_replicate, tile_starts, Canvas};
use crate::arch::Task;
use crate::backend::{Backend, Executable, Tensor};
use crate::model::Model;
use crate::sampler::SamplerKind;
use crate::{Error, Result};

/// One upscale request. `Upscale::new` fills the model's defaults.
#[derive(Clone, Debug)]
pub struct Upscale {
    /// May be empty: SR models are trained with the unconditional (empty) context too.
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f32,
    pub seed: u64,
    pub sampler: SamplerKind,
    /// DDIM's eta (0 = deterministic).
    pub eta: f32,
    /// Overlap of neighbouring tiles in low-res pixels; None = a quarter tile (at least 1).
    pub overlap: Option<usize>,
    /// The low-res image [1, 3, h, w] in [-1, 1], any size from 1x1.
    pub image: Tensor,
}

impl Upscale {
    pub fn new(model: &Model, image: Tensor) -> Result<Self> {
        let d = &model.sampler;
        Ok(Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: d.steps,
            guidance: d.guidance,
            seed: 0,
            sampler: d.kind()?,
            eta: 0.0,
            overlap: None,
            image,
        })
    }
}

/// Tile `index`'s seed: the request's own for tile 0, so a one-tile input is exactly
/// [`Pipeline::super_resolve`] of it; the others spread by the golden-ratio increment, far from
/// the `seed + 1` that each tile's sampler noise uses.
pub fn tile_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The model's low-res tile side: the latent size of its native image.
pub fn tile_size(model: &Model) -> usize {
    model.config.image_size / model.config.vae.factor()
}

/// The tile layout of an upscale: origins along each axis of the edge-padded input.
#[derive(Clone, Debug, PartialEq)]
pub struct TileLayout {
    pub tile: usize,
    pub overlap: usize,
    pub ys: Vec<usize>,
    pub xs: Vec<usize>,
}

impl TileLayout {
    pub fn count(&self) -> usize {
        self.ys.len() * self.xs.len()
    }
}

/// Everything one run shares across tiles.
struct Run<'a> {
    den: Denoiser,
    decoder: Box<dyn Executable>,
    sampling: Sampling<'a>,
    steps: Steps<'a>,
}

impl Pipeline<'_> {
    /// Where the tiles of `req` go, or why they cannot.
    pub fn tile_layout(&self, req: &Upscale) -> Result<TileLayout> {
        let (h, w) = image_hw(&req.image, "low-res image")?;
        let f = self.model.config.vae.factor();
        if h == 0 || w == 0 || h * f > 4096 || w * f > 4096 {
            return Err(Error::Input(format!(
                "cannot upscale a {w}x{h} image: the {}x{} output must be between 1x1 and \
                 4096x4096",
                w * f,
                h * f
            )));
        }
        let tile = tile_size(self.model);
        let overlap = req.overlap.unwrap_or((tile / 4).max(1));
        if (h > tile || w > tile) && !(1..tile).contains(&overlap) {
            return Err(Error::Input(format!(
                "tile overlap must be between 1 and {} low-res pixels, got {overlap}",
                tile.saturating_sub(1)
            )));
        }
        Ok(TileLayout {
            tile,
            overlap,
            ys: tile_starts(h.max(tile), tile, overlap),
            xs: tile_starts(w.max(tile), tile, overlap),
        })
    }

    /// Upscales a low-res image of any size by the autoencoder factor, in overlapping tiles
    /// (CPU rerun on a GPU fault, as txt2img). Progress counts tiles x steps; the latents
    /// returned are the tiles', [tiles, z, t, t] in row-major tile order.
    pub fn upscale(
        &self,
        req: &Upscale,
        on_step: &mut dyn FnMut(Progress),
        cancel: &Cancel,
    ) -> Result<Generated> {
        self.require_task(Task::Sr)?;
        check_sampling(req.steps, req.guidance)?;
        let layout = self.tile_layout(req)?;
        let (h, w) = image_hw(&req.image, "low-res image")?;
        let f = self.model.config.vae.factor();
        let t = layout.tile;
        let (ph, pw) = (h.max(t), w.max(t));
        let wy = blend_weights(&scaled(&layout.ys, f), t * f);
        let wx = blend_weights(&scaled(&layout.xs, f), t * f);
        self.with_fallback(|b| {
            let steps = Steps::new(&mut *on_step, layout.count() * req.steps);
            let mut run = self.prepare_run(b, req, (t, t), steps)?;
            let mut canvas = Canvas::new(3, ph * f, pw * f);
            let mut latents = Vec::new();
            for (iy, &y) in layout.ys.iter().enumerate() {
                for (ix, &x) in layout.xs.iter().enumerate() {
                    let lowres = crop_replicate(&req.image.data, (3, h, w), (y, x), (t, t));
                    run.sampling.seed = tile_seed(req.seed, iy * layout.xs.len() + ix);
                    let (img, lat) = self.sr_tile(&mut run, &lowres, cancel)?;
                    canvas.add(&img.data, (y * f, x * f), &wy[iy], &wx[ix]);
                    latents.extend(lat.data);
                }
            }
            let image = canvas.crop(h * f, w * f)?;
            let z = self.model.config.vae.latent_channels;
            let latents = Tensor::new(vec![layout.count(), z, t, t], latents)?;
            Generated::from_image(image, latents)
        })
    }

    /// Runs the SR model once on the whole low-res image, without tiling: its size must be a
    /// valid latent size for the model. `upscale` of an input that is exactly one tile gives
    /// the same result.
    pub fn super_resolve(
        &self,
        req: &Upscale,
        on_step: &mut dyn FnMut(Progress),
        cancel: &Cancel,
    ) -> Result<Generated> {
        self.require_task(Task::Sr)?;
        check_sampling(req.steps, req.guidance)?;
        let (h, w) = image_hw(&req.image, "low-res image")?;
        let f = self.model.config.vae.factor();
        self.latent_size(w * f, h * f)?;
        self.with_fallback(|b| {
            let steps = Steps::new(&mut *on_step, req.steps);
            let mut run = self.prepare_run(b, req, (h, w), steps)?;
            let (image, latents) = self.sr_tile(&mut run, &req.image.data, cancel)?;
            Generated::from_image(image, latents)
        })
    }

    fn prepare_run<'a>(
        &self,
        backend: &dyn Backend,
        req: &'a Upscale,
        (h, w): (usize, usize),
        steps: Steps<'a>,
    ) -> Result<Run<'a>> {
        // With the same text on both sides guidance cannot change the output, only double the
        // UNet's work.
        let g = if req.prompt == req.negative_prompt {
            1.0
        } else {
            req.guidance
        };
        let den = self.denoiser(backend, &req.prompt, &req.negative_prompt, g, (h, w))?;
        let decoder = self.decoder_on(backend, 1, h, w)?;
        Ok(Run {
            den,
            decoder,
            sampling: Sampling {
                steps: req.steps,
                sampler: req.sampler,
                eta: req.eta,
                karras: None,
                seed: req.seed,
                init_noise: None,
            },
            steps,
        })
    }

    /// One chain from pure noise with `lowres` [3, h, w] as the conditioning, decoded.
    fn sr_tile(&self, run: &mut Run, lowres: &[f32], cancel: &Cancel) -> Result<(Tensor, Tensor)> {
        let latents = run.den.run(
            &run.sampling,
            &self.model.sampler.schedule,
            Start::Noise,
            lowres,
            &mut run.steps,
            cancel,
        )?;
        let image = self.decode_with(run.decoder.as_mut(), &latents)?;
        Ok((image, latents))
    }
}

fn scaled(v: &[usize], f: usize) -> Vec<usize> {
    v.iter().map(|x| x * f).collect()
}
