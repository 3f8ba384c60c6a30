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
    buf.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| Error::Io {
            path: tmp.display().to_string(),
            source: std::io::Error::other(e),
        })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
