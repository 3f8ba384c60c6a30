//! Turning decoded images into pixels and files.
use crate::backend::Tensor;
use crate::{Error, Result};
use std::path::Path;

/// [1, 3, H, W] in [-1, 1] -> interleaved RGB8, rounding to nearest.
pub fn to_rgb8(img: &Tensor) -> Result<Vec<u8>> {
    let s = &img.shape;
    if s.len() != 4 || s[0] != 1 || s[1] != 3 {
        return Err(Error::Input(format!(
            "expected an image of shape [1, 3, H, W], got {s:?}"
        )));
    }
    let plane = s[2] * s[3];
    let mut out = vec![0u8; plane * 3];
    for c in 0..3 {
        for i in 0..plane {
            let v = (img.data[c * plane + i] + 1.0) * 127.5;
            out[i * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    Ok(out)
}

/// Writes a PNG through a temporary file and a rename, so an existing file is never left
/// half-written.
pub fn save_png(path: &Path, rgb: &[u8], width: usize, height: usize) -> Result<()> {
    let buf =
        image::RgbImage::from_raw(width as u32, height as u32, rgb.to_vec()).ok_or_else(|| {
            Error::Input(format!(
                "{} bytes is not a {width}x{height} RGB image",
                rgb.len()
            ))
        })?;
    let tmp = path.with_extension("png.tmp");
    let saved = buf
        .save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| Error::Io {
            path: tmp.display().to_string(),
            source: std::io::Error::other(e),
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if saved.is_err() {
        // A failed write (disk full) must not leave its partial file beside the output.
        let _ = std::fs::remove_file(&tmp);
    }
    saved
}

/// Interleaved RGB8 -> [1, 3, H, W] in [-1, 1]: the inverse of [`to_rgb8`], exact on the way
/// back (v / 127.5 - 1 lands within 1e-5 of a pixel centre, far inside rounding's 0.5).
pub fn from_rgb8(rgb: &[u8], width: usize, height: usize) -> Result<Tensor> {
    let plane = width * height;
    if rgb.len() != plane * 3 {
        return Err(Error::Input(format!(
            "{} bytes is not a {width}x{height} RGB image",
            rgb.len()
        )));
    }
    let mut data = vec![0.0f32; plane * 3];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * plane + i] = px[c] as f32 / 127.5 - 1.0;
        }
    }
    Tensor::new(vec![1, 3, height, width], data)
}

fn open_image(path: &Path) -> Result<image::DynamicImage> {
    image::open(path).map_err(|e| match e {
        image::ImageError::IoError(e) => Error::io(path, e),
        e => Error::Input(format!("{} is not a readable image: {e}", path.display())),
    })
}

/// Reads an image file as [1, 3, H, W] in [-1, 1] (any colour type, alpha dropped).
pub fn load_rgb(path: &Path) -> Result<Tensor> {
    let img = open_image(path)?.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    from_rgb8(img.as_raw(), w, h)
}

/// Reads an inpainting mask: converted to grayscale, >= 128 is the hole (1), the rest is
/// kept (0). Returns the mask [H * W] with its width and height.
pub fn load_mask(path: &Path) -> Result<(Vec<f32>, usize, usize)> {
    let img = open_image(path)?.to_luma8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mask = img
        .as_raw()
        .iter()
        .map(|&v| if v >= 128 { 1.0 } else { 0.0 })
        .collect();
    Ok((mask, w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb8_round_trips_exactly() {
        let rgb: Vec<u8> = (0..=255u8).flat_map(|v| [v, 255 - v, v / 2]).collect();
        let t = from_rgb8(&rgb, 16, 16).unwrap();
        assert_eq!(to_rgb8(&t).unwrap(), rgb);
        assert!(from_rgb8(&rgb, 16, 15).is_err());
    }
}
