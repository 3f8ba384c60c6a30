//! Tiling for upscaling and for the autoencoder ([`super::VaeTiling`]): where tiles go along an
//! axis and how overlapping tiles are blended.
use crate::backend::Tensor;

/// Tile origins along an axis of `len` pixels for tiles of `tile` pixels that overlap by at
/// least `overlap` (1 <= overlap < tile when `len > tile`). The first tile starts at 0 and the
/// last ends at `len`; the ones between are spread evenly, so no tile hangs over the edge and
/// the overlaps are as equal as integer positions allow.
pub fn tile_starts(len: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if len <= tile || overlap >= tile {
        return vec![0];
    }
    let stride = tile - overlap;
    // n tiles with the full stride cover overlap + n * stride pixels.
    let n = (len - overlap).div_ceil(stride);
    (0..n).map(|i| i * (len - tile) / (n - 1)).collect()
}

/// Blend weights along one axis, one row of `tile` values per tile: a linear ramp across each
/// overlap with a neighbour (rising into the tile, falling out of it) and 1 elsewhere, divided
/// by their sum at each position so the tiles covering any pixel weigh 1 in total. Where a
/// single tile covers a pixel its weight is exactly 1, so its value passes through unchanged.
pub fn blend_weights(starts: &[usize], tile: usize) -> Vec<Vec<f32>> {
    blend_weights_inset(starts, tile, 0)
}

/// [`blend_weights`] with each ramp moved `inset` pixels in from the tile's edge: a tile's
/// `inset` pixels next to a neighbour get weight 0, so its own border, where its convolutions
/// saw padding instead of the neighbour's pixels, never reaches the output. The inset is capped
/// so each ramp keeps at least one pixel.
pub fn blend_weights_inset(starts: &[usize], tile: usize, inset: usize) -> Vec<Vec<f32>> {
    let n = starts.len();
    // The ramp across an overlap of l pixels, inset by m (< l / 2) on both sides.
    let ramp = |pos: f32, l: usize| {
        let m = inset.min(l.saturating_sub(1) / 2) as f32;
        ((pos - m) / (l as f32 - 2.0 * m)).clamp(0.0, 1.0)
    };
    let raw: Vec<Vec<f32>> = (0..n)
        .map(|i| {
            let s = starts[i];
            (0..tile)
                .map(|o| {
                    let mut w = 1.0f32;
                    if i > 0 && starts[i - 1] + tile > s {
                        w = w.min(ramp(o as f32 + 0.5, starts[i - 1] + tile - s));
                    }
                    if i + 1 < n && s + tile > starts[i + 1] {
                        w = w.min(ramp((tile - o) as f32 - 0.5, s + tile - starts[i + 1]));
                    }
                    w
                })
                .collect()
        })
        .collect();
    let len = starts.last().map_or(0, |s| s + tile);
    let mut sum = vec![0.0f32; len];
    for (i, r) in raw.iter().enumerate() {
        for (o, w) in r.iter().enumerate() {
            sum[starts[i] + o] += w;
        }
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.into_iter()
                .enumerate()
                .map(|(o, w)| w / sum[starts[i] + o])
                .collect()
        })
        .collect()
}

/// The [c, th, tw] window at (y, x) of a [c, h, w] image, reading past the bottom and right
/// edges by repeating the last row and column.
pub(crate) fn crop_replicate(
    img: &[f32],
    (c, h, w): (usize, usize, usize),
    (y, x): (usize, usize),
    (th, tw): (usize, usize),
) -> Vec<f32> {
    let mut out = Vec::with_capacity(c * th * tw);
    for ch in 0..c {
        for ty in 0..th {
            let sy = (y + ty).min(h - 1);
            for tx in 0..tw {
                let sx = (x + tx).min(w - 1);
                out.push(img[(ch * h + sy) * w + sx]);
            }
        }
    }
    out
}

/// Accumulates weighted tiles into a [c, h, w] canvas.
pub(crate) struct Canvas {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

impl Canvas {
    pub(crate) fn new(c: usize, h: usize, w: usize) -> Self {
        Self {
            c,
            h,
            w,
            data: vec![0.0; c * h * w],
        }
    }

    /// Adds `tile` [c, wy.len(), wx.len()] at (y, x), weighted by wy[row] * wx[col].
    pub(crate) fn add(&mut self, tile: &[f32], (y, x): (usize, usize), wy: &[f32], wx: &[f32]) {
        let (th, tw) = (wy.len(), wx.len());
        for ch in 0..self.c {
            for (ty, &a) in wy.iter().enumerate() {
                let row = (ch * self.h + y + ty) * self.w + x;
                let src = (ch * th + ty) * tw;
                for (tx, &b) in wx.iter().enumerate() {
                    self.data[row + tx] += a * b * tile[src + tx];
                }
            }
        }
    }

    /// The whole canvas as a tensor of `shape` (which must hold c * h * w values), moved rather
    /// than copied: at 512 px and more the canvas is the largest buffer of a tiled decode.
    pub(crate) fn into_tensor(self, shape: Vec<usize>) -> crate::Result<Tensor> {
        Tensor::new(shape, self.data)
    }

    /// The top-left h x w of the canvas as a [1, c, h, w] tensor.
    pub(crate) fn crop(&self, h: usize, w: usize) -> crate::Result<Tensor> {
        let mut out = Vec::with_capacity(self.c * h * w);
        for ch in 0..self.c {
            for y in 0..h {
                let row = (ch * self.h + y) * self.w;
                out.extend_from_slice(&self.data[row..row + w]);
            }
        }
        Tensor::new(vec![1, self.c, h, w], out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_cover_the_axis_with_at_least_the_overlap() {
        assert_eq!(tile_starts(8, 8, 2), vec![0]);
        assert_eq!(tile_starts(3, 8, 2), vec![0]);
        assert_eq!(tile_starts(14, 8, 2), vec![0, 6]);
        for len in 9..60 {
            for ov in 1..8 {
                let s = tile_starts(len, 8, ov);
                assert_eq!(s[0], 0);
                assert_eq!(s.last().unwrap() + 8, len, "len {len} ov {ov}");
                for p in s.windows(2) {
                    assert!(p[1] > p[0] && p[0] + 8 >= p[1] + ov, "{s:?} ov {ov}");
                }
                // Minimal: one tile fewer could not keep the overlap.
                if s.len() > 2 {
                    assert!(len > (s.len() - 2) * (8 - ov) + 8);
                }
            }
        }
    }

    #[test]
    fn weights_sum_to_one_and_ramp_across_overlaps() {
        for len in [8, 14, 21, 33, 50] {
            for ov in 1..8 {
                let starts = tile_starts(len, 8, ov);
                let w = blend_weights(&starts, 8);
                let mut sum = vec![0.0f32; len];
                for (i, row) in w.iter().enumerate() {
                    for (o, v) in row.iter().enumerate() {
                        assert!(*v > 0.0 && *v <= 1.0);
                        sum[starts[i] + o] += v;
                    }
                }
                for (p, s) in sum.iter().enumerate() {
                    assert!((s - 1.0).abs() < 1e-6, "len {len} ov {ov} pos {p}: {s}");
                }
            }
        }
        // Two tiles overlapping by 4: a linear cross-fade, 1 outside the overlap exactly.
        let w = blend_weights(&[0, 4], 8);
        assert_eq!(&w[0][..4], &[1.0; 4]);
        assert_eq!(w[0][4..], [0.875, 0.625, 0.375, 0.125]);
        assert_eq!(w[1][..4], [0.125, 0.375, 0.625, 0.875]);
        assert_eq!(&w[1][4..], &[1.0; 4]);
    }

    #[test]
    fn inset_ramps_skip_the_tile_borders_and_still_sum_to_one() {
        for len in 9..60 {
            for ov in 0..8 {
                for inset in 0..5 {
                    let starts = tile_starts(len, 8, ov);
                    let mut sum = vec![0.0f32; len];
                    for (i, row) in blend_weights_inset(&starts, 8, inset).iter().enumerate() {
                        for (o, v) in row.iter().enumerate() {
                            assert!((0.0..=1.0).contains(v));
                            sum[starts[i] + o] += v;
                        }
                    }
                    let bad = sum.iter().position(|s| (s - 1.0).abs() > 1e-6);
                    assert!(bad.is_none(), "len {len} ov {ov} inset {inset}: {sum:?}");
                }
            }
        }
        // Two tiles overlapping by 8 with an inset of 2: 2 pixels of each border are unused,
        // the ramp crosses the middle 4.
        let w = blend_weights_inset(&[0, 8], 16, 2);
        assert_eq!(&w[1][..2], &[0.0; 2]);
        assert_eq!(w[1][2..6], [0.125, 0.375, 0.625, 0.875]);
        assert_eq!(&w[0][14..], &[0.0; 2]);
        // Inset 0 is blend_weights; an inset too large for the overlap is capped so the ramp
        // keeps at least a pixel (here 2 of the overlap's 4).
        assert_eq!(
            blend_weights_inset(&[0, 4], 8, 0),
            blend_weights(&[0, 4], 8)
        );
        let w = blend_weights_inset(&[0, 4], 8, 9);
        assert_eq!(w[1][..4], [0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn replicate_pads_past_the_edge() {
        let img: Vec<f32> = (0..6).map(|v| v as f32).collect(); // 1 x 2 x 3
        let t = crop_replicate(&img, (1, 2, 3), (0, 1), (3, 3));
        assert_eq!(t, vec![1.0, 2.0, 2.0, 4.0, 5.0, 5.0, 4.0, 5.0, 5.0]);
    }
}
