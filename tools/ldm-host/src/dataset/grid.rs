//! Image grids: dataset previews, and sample grids written during training and evaluation.
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Gap between cells, in pixels, filled with mid gray so cells with black or white
/// backgrounds stay distinguishable.
const GAP: usize = 2;
const GAP_RGB: [u8; 3] = [96, 96, 96];

/// Lays out square RGB8 images of side `size` in rows of `cols`.
pub fn grid(images: &[Vec<u8>], size: usize, cols: usize) -> Result<image::RgbImage> {
    if images.is_empty() || cols == 0 {
        bail!("a grid needs at least one image and one column");
    }
    if let Some(i) = images.iter().position(|im| im.len() != size * size * 3) {
        bail!("grid image {i} is not {size}x{size} RGB");
    }
    let cols = cols.min(images.len());
    let rows = images.len().div_ceil(cols);
    let w = cols * size + (cols + 1) * GAP;
    let h = rows * size + (rows + 1) * GAP;
    let mut out = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb(GAP_RGB));
    for (k, im) in images.iter().enumerate() {
        let (ox, oy) = (
            GAP + (k % cols) * (size + GAP),
            GAP + (k / cols) * (size + GAP),
        );
        for y in 0..size {
            for x in 0..size {
                let p = (y * size + x) * 3;
                let px = image::Rgb([im[p], im[p + 1], im[p + 2]]);
                out.put_pixel((ox + x) as u32, (oy + y) as u32, px);
            }
        }
    }
    Ok(out)
}

/// A near-square grid (columns = ceil(sqrt(n))) written as PNG.
pub fn save_grid(path: &Path, images: &[Vec<u8>], size: usize) -> Result<()> {
    let cols = (images.len() as f64).sqrt().ceil() as usize;
    grid(images, size, cols)?
        .save_with_format(path, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lays_out_cells_with_gaps() {
        let a = vec![255u8; 4 * 4 * 3];
        let b = vec![0u8; 4 * 4 * 3];
        let g = grid(&[a.clone(), b.clone(), a], 4, 2).unwrap();
        assert_eq!(
            g.dimensions(),
            (2 * 4 + 3 * GAP as u32, 2 * 4 + 3 * GAP as u32)
        );
        assert_eq!(g.get_pixel(GAP as u32, GAP as u32).0, [255; 3]);
        assert_eq!(g.get_pixel(2 * GAP as u32 + 4, GAP as u32).0, [0; 3]);
        assert_eq!(g.get_pixel(0, 0).0, GAP_RGB);
        assert!(grid(&[b], 5, 1).is_err());
    }
}
