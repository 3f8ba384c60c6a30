//! Small displays: the preview while sampling, then the final image, scaled to fit, with a
//! progress bar and the prompt, drawn on any embedded-graphics [`DrawTarget`].
//!
//! Targets: a Linux framebuffer ([`framebuffer::Framebuffer`], the path a board with a panel
//! uses), and [`canvas::Canvas`], an in-memory RGB image written as PNG (tests, and boards
//! without a panel). `ldm generate --display SPEC` opens one from a spec string ([`open`]).
pub mod canvas;
pub mod framebuffer;
mod layout;

pub use canvas::Canvas;
pub use framebuffer::{FbLayout, Framebuffer, PixelFormat};
pub use layout::{draw, Status};

use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error("display {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a framebuffer device: {reason}")]
    NotFramebuffer { path: PathBuf, reason: String },
    #[error("unsupported framebuffer: {0}")]
    Unsupported(String),
    #[error("display spec: {0}")]
    Spec(String),
    #[error("cannot write {path}: {reason}")]
    Png { path: PathBuf, reason: String },
}

impl DisplayError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        DisplayError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An opened display: where frames go, and how they are made visible.
pub enum Display {
    Framebuffer(Framebuffer),
    /// Written to the file after every frame (atomically: temporary file, then rename).
    Png {
        canvas: Canvas,
        path: PathBuf,
    },
}

/// Default size of a PNG display: a common small panel.
pub const DEFAULT_PNG_SIZE: (usize, usize) = (320, 240);

/// Opens a display from a spec:
/// * `fb:/dev/fb0`: a framebuffer device, geometry from the kernel;
/// * `png:FILE` or `png:FILE:WxH`: a PNG of that size (default 320x240);
/// * `fbfile:FILE:WxH:STRIDE:FORMAT`: a regular file laid out like a framebuffer (STRIDE bytes
///   per line, FORMAT rgb565 or xrgb8888).
pub fn open(spec: &str) -> Result<Display, DisplayError> {
    let (kind, rest) = spec.split_once(':').ok_or_else(|| {
        DisplayError::Spec(format!(
            "`{spec}`: expected fb:/dev/fbN, png:FILE[:WxH] or fbfile:FILE:WxH:STRIDE:FORMAT"
        ))
    })?;
    match kind {
        "fb" => Ok(Display::Framebuffer(Framebuffer::open_device(Path::new(
            rest,
        ))?)),
        "png" => {
            let (path, (w, h)) = match rest.rsplit_once(':') {
                Some((p, size)) if parse_size(size).is_ok() => (p, parse_size(size)?),
                _ => (rest, DEFAULT_PNG_SIZE),
            };
            if path.is_empty() {
                return Err(DisplayError::Spec("png: needs a file name".into()));
            }
            Ok(Display::Png {
                canvas: Canvas::new(w, h)?,
                path: PathBuf::from(path),
            })
        }
        "fbfile" => {
            let parts: Vec<&str> = rest.rsplitn(4, ':').collect();
            let [format, stride, size, path] = parts[..] else {
                return Err(DisplayError::Spec(format!(
                    "`{spec}`: expected fbfile:FILE:WxH:STRIDE:FORMAT"
                )));
            };
            let (width, height) = parse_size(size)?;
            let stride = stride
                .parse()
                .map_err(|_| DisplayError::Spec(format!("bad stride `{stride}`")))?;
            let layout = FbLayout {
                width,
                height,
                stride,
                format: PixelFormat::parse(format)?,
                offset: 0,
            };
            Ok(Display::Framebuffer(Framebuffer::open_file(
                Path::new(path),
                layout,
            )?))
        }
        other => Err(DisplayError::Spec(format!(
            "unknown display `{other}` (fb, png or fbfile)"
        ))),
    }
}

fn parse_size(s: &str) -> Result<(usize, usize), DisplayError> {
    let bad = || DisplayError::Spec(format!("size `{s}` must look like 320x240"));
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (usize, usize) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if w == 0 || h == 0 || w > 8192 || h > 8192 {
        return Err(bad());
    }
    Ok((w, h))
}

impl Display {
    /// Draws one frame and makes it visible.
    pub fn show(&mut self, status: &Status) -> Result<(), DisplayError> {
        match self {
            // Both targets are in memory (or mapped): drawing itself cannot fail.
            Display::Framebuffer(fb) => {
                draw(fb, status).unwrap_or_else(|e| match e {});
                fb.flush()
            }
            Display::Png { canvas, path } => {
                draw(canvas, status).unwrap_or_else(|e| match e {});
                canvas.save_png(path)
            }
        }
    }

    pub fn size(&self) -> Size {
        match self {
            Display::Framebuffer(fb) => fb.size(),
            Display::Png { canvas, .. } => canvas.size(),
        }
    }
}

/// Background of the whole screen.
pub const BACKGROUND: Rgb888 = Rgb888::BLACK;
