//! An in-memory RGB draw target, written as PNG: the display of boards without a panel, and
//! the simulator the tests compare framebuffers with.
use super::DisplayError;
use embedded_graphics::pixelcolor::{Rgb888, RgbColor};
use embedded_graphics::prelude::*;
use std::path::Path;

pub struct Canvas {
    width: usize,
    height: usize,
    /// Row-major RGB, 3 bytes per pixel.
    rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Result<Self, DisplayError> {
        let n = width
            .checked_mul(height)
            .and_then(|n| n.checked_mul(3))
            .filter(|_| width > 0 && height > 0)
            .ok_or_else(|| DisplayError::Spec(format!("canvas size {width}x{height}")))?;
        Ok(Self {
            width,
            height,
            rgb: vec![0; n],
        })
    }

    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    pub fn pixel(&self, x: usize, y: usize) -> Option<Rgb888> {
        let i = (y.checked_mul(self.width)?.checked_add(x)?) * 3;
        let p = self.rgb.get(i..i + 3).filter(|_| x < self.width)?;
        Some(Rgb888::new(p[0], p[1], p[2]))
    }

    /// Writes the canvas as a PNG, atomically (a temporary file beside it, then a rename), so
    /// a viewer polling the file never reads half a frame.
    pub fn save_png(&self, path: &Path) -> Result<(), DisplayError> {
        let err = |reason: String| DisplayError::Png {
            path: path.to_path_buf(),
            reason,
        };
        let name = path
            .file_name()
            .ok_or_else(|| err("no file name".into()))?
            .to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let saved = image::save_buffer_with_format(
            &tmp,
            &self.rgb,
            self.width as u32,
            self.height as u32,
            image::ExtendedColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .map_err(|e| err(e.to_string()))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| err(e.to_string())));
        if saved.is_err() {
            // A failed write (disk full) must not leave its partial file beside the output.
            let _ = std::fs::remove_file(&tmp);
        }
        saved
    }
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.width as u32, self.height as u32)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = core::convert::Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        let (w, h) = (self.width as i32, self.height as i32);
        for Pixel(p, c) in pixels {
            if (0..w).contains(&p.x) && (0..h).contains(&p.y) {
                let i = (p.y as usize * self.width + p.x as usize) * 3;
                self.rgb[i..i + 3].copy_from_slice(&[c.r(), c.g(), c.b()]);
            }
        }
        Ok(())
    }
}
