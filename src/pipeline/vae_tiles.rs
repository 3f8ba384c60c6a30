//! The autoencoder in overlapping tiles, so a large image's decode is not the memory peak.
//!
//! The decoder has a global part and a local one ([`vae::decode_global`],
//! [`vae::decode_local`]). The global part (the mid block, whose attention sees every
//! position) runs at latent resolution, where it is small, on the whole latent. The local part
//! (the upsampling blocks, the bulk of the memory and work) runs on one latent tile of its
//! features at a time, with GroupNorm statistics shared by all tiles ([`super::vae_norm`]), and
//! the image tiles are blended into the output with feathered weights ([`super::tiles`]). The
//! encoder is the mirror image: its local part in tiles, blended at latent resolution, then
//! its global part on the whole.
//!
//! Tiles agree with the whole run except near their borders, where their convolutions saw
//! padding instead of the neighbour's pixels, and except for the sampling error of the shared
//! statistics; `tests/vae_tiling.rs` measures it.
use super::shared::{check_finite, first, image_hw, latent_dims, Pipeline};
use super::tiles::{blend_weights_inset, crop_replicate, tile_starts, Canvas};
use super::vae_norm::{NormStats, SyncedGraphs};
use crate::arch::{vae, VAE};
use crate::backend::{Backend, Tensor};
use crate::graph::{Graph, NodeId, Tracer, ValueType};
use crate::{Error, Result};

/// Tile side and overlap of neighbouring tiles, both in latent pixels (the image tile is f
/// times larger). Build with [`VaeTiling::new`] to have it checked at once; a hand-built one
/// is checked when the autoencoder runs.
///
/// The cost: the tiled part runs twice (once to measure the shared GroupNorm statistics), and
/// overlapping tiles repeat work; larger tiles agree better with the whole run and waste less.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaeTiling {
    pub tile: usize,
    pub overlap: usize,
}

impl Default for VaeTiling {
    /// 32 latent pixels (256 px at f = 8) with a quarter-tile overlap.
    fn default() -> Self {
        Self {
            tile: 32,
            overlap: 8,
        }
    }
}

impl VaeTiling {
    /// Below this a tile is mostly border: the decoder's 3x3 convolutions see zero padding
    /// there that the whole decode never sees.
    pub const MIN_TILE: usize = 8;

    pub fn new(tile: usize, overlap: usize) -> Result<Self> {
        let t = Self { tile, overlap };
        t.validate()?;
        Ok(t)
    }

    /// A quarter-tile overlap, as the upscaler uses.
    pub fn with_default_overlap(tile: usize) -> Result<Self> {
        Self::new(tile, tile / 4)
    }

    pub fn validate(&self) -> Result<()> {
        if self.tile < Self::MIN_TILE {
            return Err(Error::Input(format!(
                "VAE tile must be at least {} latent pixels, got {}",
                Self::MIN_TILE,
                self.tile
            )));
        }
        if self.overlap >= self.tile {
            return Err(Error::Input(format!(
                "VAE tile overlap must be less than the tile ({} latent pixels), got {}",
                self.tile, self.overlap
            )));
        }
        Ok(())
    }

    /// Whether a latent of h x w takes more than one tile.
    pub fn splits(&self, h: usize, w: usize) -> bool {
        h > self.tile || w > self.tile
    }
}

/// Where the tiles of an h x w latent go. Along an axis shorter than the tile the one tile is
/// that axis, so every tile has the same size and one prepared graph runs them all.
struct Layout {
    th: usize,
    tw: usize,
    inset: usize,
    ys: Vec<usize>,
    xs: Vec<usize>,
    /// Tiles for measuring the GroupNorm statistics: as few as cover the latent, since their
    /// overlap would only be counted twice.
    stats: Vec<(usize, usize)>,
}

impl Layout {
    fn new(t: &VaeTiling, h: usize, w: usize) -> Self {
        let (th, tw) = (t.tile.min(h), t.tile.min(w));
        let (sy, sx) = (tile_starts(h, th, 0), tile_starts(w, tw, 0));
        let stats = sy
            .iter()
            .flat_map(|&y| sx.iter().map(move |&x| (y, x)))
            .collect();
        Self {
            stats,
            th,
            tw,
            // Measured on the shipped model: ramps inset by a quarter of the overlap beat ramps
            // from the very edge, whose pixels saw the most padding.
            inset: t.overlap / 4,
            ys: tile_starts(h, th, t.overlap),
            xs: tile_starts(w, tw, t.overlap),
        }
    }

    /// Every tile's blend weights along each axis at ry, rx times the latent resolution.
    fn axis_weights(&self, ry: usize, rx: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let axis = |starts: &[usize], t: usize, r: usize| {
            let r = r.max(1);
            blend_weights_inset(&scaled(starts, r), t * r, self.inset * r)
        };
        (axis(&self.ys, self.th, ry), axis(&self.xs, self.tw, rx))
    }

    fn count(&self) -> usize {
        self.ys.len() * self.xs.len()
    }

    fn tiles(&self) -> impl Iterator<Item = ((usize, usize), (usize, usize))> + '_ {
        self.ys.iter().enumerate().flat_map(move |(iy, &y)| {
            self.xs
                .iter()
                .enumerate()
                .map(move |(ix, &x)| ((iy, ix), (y, x)))
        })
    }
}

fn scaled(v: &[usize], f: usize) -> Vec<usize> {
    v.iter().map(|x| x * f).collect()
}

/// One part of the autoencoder traced for an input of `shape`.
fn vae_graph(
    shape: [usize; 4],
    part: impl FnOnce(&mut Tracer, &NodeId) -> Result<NodeId>,
) -> Result<Graph> {
    let mut t = Tracer::new();
    let x = t.input("x", &shape, ValueType::F32);
    let y = part(&mut t, &x)?;
    Ok(t.finish(&[y]))
}

impl Pipeline<'_> {
    /// The two parts of a tiled decode of `[b, z, h, w]` latents in tiles of `th x tw`: the
    /// whole-latent part and the per-tile part. The decode and the memory planner both build
    /// them here.
    fn decoder_parts(
        &self,
        b: usize,
        (h, w): (usize, usize),
        (th, tw): (usize, usize),
    ) -> Result<(Graph, Graph)> {
        let vae = &self.model.config.vae;
        let global = vae_graph([b, vae.latent_channels, h, w], |t, z| {
            vae::decode_global(t, vae, VAE, z)
        })?;
        let fc = global.nodes[global.outputs[0]].shape[1];
        let local = vae_graph([b, fc, th, tw], |t, x| vae::decode_local(t, vae, VAE, x))?;
        Ok((global, local))
    }

    /// The two parts of a tiled encode of an `h x w` image in tiles of `th x tw` pixels: the
    /// per-tile part and the whole-latent part.
    fn encoder_parts(
        &self,
        (h, w): (usize, usize),
        (th, tw): (usize, usize),
    ) -> Result<(Graph, Graph)> {
        let vae = &self.model.config.vae;
        let f = vae.factor();
        let local = vae_graph([1, vae.in_channels, th, tw], |t, x| {
            vae::encode_local(t, vae, VAE, x)
        })?;
        let fc = vae.block_out_channels.last().copied().unwrap_or(0);
        let global = vae_graph([1, fc, h / f, w / f], |t, x| {
            vae::encode_global(t, vae, VAE, x)
        })?;
        Ok((local, global))
    }

    /// Every graph a tiled decode of a `[1, z, h, w]` latent runs, for the memory planner:
    /// the whole-latent part, then the per-tile stats pass and fixed-norm pass.
    pub(crate) fn tiled_decoder_graphs(
        &self,
        hw: (usize, usize),
        tile: (usize, usize),
    ) -> Result<Vec<Graph>> {
        let (global, local) = self.decoder_parts(1, hw, tile)?;
        let sg = SyncedGraphs::new(&local)?;
        Ok(vec![global, sg.stats, sg.fixed])
    }

    /// The same for a tiled encode of an `h x w` image in tiles of `th x tw` pixels.
    pub(crate) fn tiled_encoder_graphs(
        &self,
        hw: (usize, usize),
        tile: (usize, usize),
    ) -> Result<Vec<Graph>> {
        let (local, global) = self.encoder_parts(hw, tile)?;
        let sg = SyncedGraphs::new(&local)?;
        Ok(vec![sg.stats, sg.fixed, global])
    }
}

impl Pipeline<'_> {
    /// Prepares `graph` and runs it once on `x`.
    fn run_whole(&self, backend: &dyn Backend, graph: &Graph, x: Tensor) -> Result<Tensor> {
        let mut plan = self.prepare_on(backend, graph)?;
        let y = first(plan.run(&[x])?)?;
        check_finite(&y, "the autoencoder's whole-image part")?;
        Ok(y)
    }

    /// The tiling to use for a latent of h x w: None when tiling is off or one tile covers it.
    pub(crate) fn vae_tiles_for(&self, h: usize, w: usize) -> Result<Option<&VaeTiling>> {
        match &self.vae_tiling {
            Some(t) => {
                t.validate()?;
                Ok(t.splits(h, w).then_some(t))
            }
            None => Ok(None),
        }
    }

    /// Decodes latents [B, z, h, w] in tiles of `tiling`, whatever the pipeline's own setting
    /// and even when one tile covers them (then the result equals [`Pipeline::decode`] bit for
    /// bit).
    pub fn decode_tiled(&self, latents: &Tensor, tiling: &VaeTiling) -> Result<Tensor> {
        tiling.validate()?;
        self.decode_tiled_on(self.backend.as_ref(), latents, tiling)
    }

    /// Encodes an image [1, 3, H, W] in tiles of `tiling` (latent pixels), like
    /// [`Pipeline::encode`] otherwise.
    pub fn encode_tiled(&self, image: &Tensor, tiling: &VaeTiling) -> Result<Tensor> {
        tiling.validate()?;
        self.encode_tiled_on(self.backend.as_ref(), image, tiling)
    }

    pub(crate) fn decode_tiled_on(
        &self,
        backend: &dyn Backend,
        latents: &Tensor,
        tiling: &VaeTiling,
    ) -> Result<Tensor> {
        let vae = &self.model.config.vae;
        let (b, h, w) = latent_dims(latents, vae.latent_channels)?;
        let lay = Layout::new(tiling, h, w);
        if lay.count() == 1 {
            let mut plan = self.decoder_on(backend, b, h, w)?;
            return self.decode_with(plan.as_mut(), latents);
        }
        let f = vae.factor();
        let inv = 1.0 / self.model.config.latent_scale;
        let z = Tensor::new(
            latents.shape.clone(),
            latents.data.iter().map(|v| v * inv).collect(),
        )?;
        let (global, local) = self.decoder_parts(b, (h, w), (lay.th, lay.tw))?;
        let feats = self.run_whole(backend, &global, z)?;
        let fc = feats.shape.get(1).copied().unwrap_or(0);
        // Blending in image space ramps over overlap * f pixels, not overlap latent steps.
        let (wy, wx) = lay.axis_weights(f, f);
        let c = vae.out_channels;
        let want = vec![b, c, lay.th * f, lay.tw * f];
        // The batch rides along as extra channels: [B, C, h, w] is [B * C, h, w] in memory.
        let mut canvas = Canvas::new(b * c, h * f, w * f);
        let tiles: Vec<_> = lay.tiles().collect();
        let input = |(y, x): (usize, usize)| {
            let crop = crop_replicate(&feats.data, (b * fc, h, w), (y, x), (lay.th, lay.tw));
            Tensor::new(vec![b, fc, lay.th, lay.tw], crop)
        };
        self.run_tiles(backend, &local, &lay, input, |i, img| {
            let ((iy, ix), (y, x)) = tiles[i];
            if img.shape != want {
                return Err(Error::shape(
                    "decode",
                    format!("decoder tile gave {:?}, expected {want:?}", img.shape),
                ));
            }
            check_finite(&img, &format!("the decoded tile at latent ({y}, {x})"))?;
            canvas.add(&img.data, (y * f, x * f), &wy[iy], &wx[ix]);
            Ok(())
        })?;
        canvas.into_tensor(vec![b, c, h * f, w * f])
    }

    pub(crate) fn encode_tiled_on(
        &self,
        backend: &dyn Backend,
        image: &Tensor,
        tiling: &VaeTiling,
    ) -> Result<Tensor> {
        let vae = &self.model.config.vae;
        let (h, w) = image_hw(image, "image to encode")?;
        let (lh, lw) = self.latent_size(w, h)?;
        let f = vae.factor();
        // The image tiles follow the latent layout scaled by f, so each starts on a latent
        // pixel and its features land exactly on the latent grid.
        let lay = Layout::new(tiling, lh, lw);
        if lay.count() == 1 {
            let graph = self.model.config.encoder_graph(1, h, w)?;
            return self.posterior_mean(&self.run_whole(backend, &graph, image.clone())?);
        }
        let (th, tw) = (lay.th * f, lay.tw * f);
        let (local, global) = self.encoder_parts((h, w), (th, tw))?;
        let fc = global.nodes[global.inputs()[0]].shape[1];
        let want = vec![1, fc, lay.th, lay.tw];
        let (wy, wx) = lay.axis_weights(1, 1);
        let mut canvas = Canvas::new(fc, lh, lw);
        let tiles: Vec<_> = lay.tiles().collect();
        let input = |(y, x): (usize, usize)| {
            let crop = crop_replicate(&image.data, (3, h, w), (y * f, x * f), (th, tw));
            Tensor::new(vec![1, 3, th, tw], crop)
        };
        self.run_tiles(backend, &local, &lay, input, |i, feats| {
            let ((iy, ix), (y, x)) = tiles[i];
            if feats.shape != want {
                return Err(Error::shape(
                    "encode",
                    format!("encoder tile gave {:?}, expected {want:?}", feats.shape),
                ));
            }
            check_finite(&feats, &format!("the encoded tile at latent ({y}, {x})"))?;
            canvas.add(&feats.data, (y, x), &wy[iy], &wx[ix]);
            Ok(())
        })?;
        let feats = canvas.into_tensor(vec![1, fc, lh, lw])?;
        self.posterior_mean(&self.run_whole(backend, &global, feats)?)
    }

    /// Runs `graph` (one input, one output) on the tiles of `lay` in the two passes of
    /// [`super::vae_norm`]: `input` gives the input of the tile at a latent origin, `output`
    /// takes the result of tile i of [`Layout::tiles`]. Each pass prepares its graph once and
    /// drops it before the next, so one plan is alive at a time.
    fn run_tiles(
        &self,
        backend: &dyn Backend,
        graph: &Graph,
        lay: &Layout,
        input: impl Fn((usize, usize)) -> Result<Tensor>,
        mut output: impl FnMut(usize, Tensor) -> Result<()>,
    ) -> Result<()> {
        let sg = SyncedGraphs::new(graph)?;
        let mut stats = NormStats::new(&sg);
        {
            let mut plan = self.prepare_on(backend, &sg.stats)?;
            for &at in &lay.stats {
                stats.add(&sg, &plan.run(&[input(at)?])?)?;
            }
        }
        let norms = stats.norms(&sg, self.model)?;
        let mut plan = self.prepare_on(backend, &sg.fixed)?;
        for (i, (_, at)) in lay.tiles().enumerate() {
            output(i, first(plan.run(&sg.fixed_inputs(input(at)?, &norms)?)?)?)?;
        }
        Ok(())
    }
}
