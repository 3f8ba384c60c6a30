//! A Linux framebuffer (`/dev/fbN`) as an embedded-graphics draw target, or any file laid out
//! like one (tests, and boards whose panel driver reads a file).
//!
//! The device's geometry and pixel layout come from the kernel (`FBIOGET_VSCREENINFO`,
//! `FBIOGET_FSCREENINFO`); pixels are packed from the channel offsets and lengths it reports,
//! so RGB565, BGR565, XRGB8888, XBGR8888 and RGB888 all take the same path.
use super::DisplayError;
use embedded_graphics::pixelcolor::{Rgb888, RgbColor};
use embedded_graphics::prelude::*;
use memmap2::MmapMut;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

/// Where each colour channel sits in a little-endian pixel word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelFormat {
    pub bytes_per_pixel: usize,
    /// (bit offset, bit length) of red, green and blue.
    pub red: (u32, u32),
    pub green: (u32, u32),
    pub blue: (u32, u32),
}

impl PixelFormat {
    pub const RGB565: Self = Self {
        bytes_per_pixel: 2,
        red: (11, 5),
        green: (5, 6),
        blue: (0, 5),
    };
    pub const XRGB8888: Self = Self {
        bytes_per_pixel: 4,
        red: (16, 8),
        green: (8, 8),
        blue: (0, 8),
    };

    pub fn parse(name: &str) -> Result<Self, DisplayError> {
        match name.to_ascii_lowercase().as_str() {
            "rgb565" => Ok(Self::RGB565),
            "xrgb8888" => Ok(Self::XRGB8888),
            other => Err(DisplayError::Spec(format!(
                "unknown pixel format `{other}` (rgb565 or xrgb8888)"
            ))),
        }
    }

    fn check(&self) -> Result<(), DisplayError> {
        let bits = 8 * self.bytes_per_pixel as u32;
        let ok = (1..=4).contains(&self.bytes_per_pixel)
            && [self.red, self.green, self.blue]
                .iter()
                .all(|&(off, len)| (1..=8).contains(&len) && off + len <= bits);
        if ok {
            Ok(())
        } else {
            Err(DisplayError::Unsupported(format!(
                "pixel layout {self:?} (channels of 1-8 bits inside 1-4 byte pixels only)"
            )))
        }
    }

    /// The pixel word of a colour, little-endian in `bytes_per_pixel` bytes.
    pub fn pack(&self, c: Rgb888) -> u32 {
        let ch = |v: u8, (off, len): (u32, u32)| ((v as u32) >> (8 - len)) << off;
        ch(c.r(), self.red) | ch(c.g(), self.green) | ch(c.b(), self.blue)
    }

    /// The colour a pixel word shows (low bits filled by repeating the high ones, as panels do).
    pub fn unpack(&self, word: u32) -> Rgb888 {
        let ch = |(off, len): (u32, u32)| {
            let v = (word >> off) & ((1 << len) - 1);
            let v8 = v << (8 - len);
            (v8 | (v8 >> len)) as u8
        };
        Rgb888::new(ch(self.red), ch(self.green), ch(self.blue))
    }
}

/// Geometry of a framebuffer: visible size, bytes per line (may exceed the width's bytes),
/// pixel layout, and the visible area's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FbLayout {
    pub width: usize,
    pub height: usize,
    pub stride: usize,
    pub format: PixelFormat,
    pub offset: usize,
}

impl FbLayout {
    fn check(&self) -> Result<usize, DisplayError> {
        self.format.check()?;
        if self.width == 0 || self.height == 0 {
            return Err(DisplayError::Spec("framebuffer size is zero".into()));
        }
        let row = self
            .width
            .checked_mul(self.format.bytes_per_pixel)
            .filter(|&r| r <= self.stride)
            .ok_or_else(|| {
                DisplayError::Spec(format!(
                    "stride {} is shorter than a row of {} pixels",
                    self.stride, self.width
                ))
            })?;
        let _ = row;
        self.stride
            .checked_mul(self.height)
            .and_then(|b| b.checked_add(self.offset))
            .ok_or_else(|| DisplayError::Spec("framebuffer size overflows".into()))
    }
}

/// A mapped framebuffer.
pub struct Framebuffer {
    map: MmapMut,
    layout: FbLayout,
    path: PathBuf,
}

impl Framebuffer {
    /// Opens a framebuffer device, reading its geometry from the kernel.
    pub fn open_device(path: &Path) -> Result<Self, DisplayError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| DisplayError::io(path, e))?;
        let layout = ioctl::layout(&file).map_err(|e| match e {
            DisplayError::Io { source, .. } => DisplayError::NotFramebuffer {
                path: path.to_path_buf(),
                reason: source.to_string(),
            },
            other => other,
        })?;
        let need = layout.check()?;
        // SAFETY: the mapping is of a device (or file) we opened read-write; the kernel keeps
        // it valid for the mapping's life. Another process drawing on the same panel can change
        // the bytes, which only changes what is shown.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| DisplayError::io(path, e))?;
        if map.len() < need {
            return Err(DisplayError::Spec(format!(
                "{} maps {} bytes, the reported geometry needs {need}",
                path.display(),
                map.len()
            )));
        }
        Ok(Self {
            map,
            layout,
            path: path.to_path_buf(),
        })
    }

    /// Opens (creating or resizing) a regular file laid out as `layout` describes.
    pub fn open_file(path: &Path, layout: FbLayout) -> Result<Self, DisplayError> {
        let need = layout.check()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| DisplayError::io(path, e))?;
        file.set_len(need as u64)
            .map_err(|e| DisplayError::io(path, e))?;
        // SAFETY: as in `open_device`; the file is ours and sized above.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| DisplayError::io(path, e))?;
        Ok(Self {
            map,
            layout,
            path: path.to_path_buf(),
        })
    }

    pub fn layout(&self) -> FbLayout {
        self.layout
    }

    /// Writes mapped pages back (a file target; a device shows its pixels at once).
    pub fn flush(&self) -> Result<(), DisplayError> {
        self.map
            .flush()
            .map_err(|e| DisplayError::io(&self.path, e))
    }

    fn put(&mut self, x: usize, y: usize, c: Rgb888) {
        let l = &self.layout;
        let bpp = l.format.bytes_per_pixel;
        let at = l.offset + y * l.stride + x * bpp;
        let word = l.format.pack(c).to_le_bytes();
        self.map[at..at + bpp].copy_from_slice(&word[..bpp]);
    }
}

impl OriginDimensions for Framebuffer {
    fn size(&self) -> Size {
        Size::new(self.layout.width as u32, self.layout.height as u32)
    }
}

impl DrawTarget for Framebuffer {
    type Color = Rgb888;
    type Error = core::convert::Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        let (w, h) = (self.layout.width as i32, self.layout.height as i32);
        for Pixel(p, c) in pixels {
            if (0..w).contains(&p.x) && (0..h).contains(&p.y) {
                self.put(p.x as usize, p.y as usize, c);
            }
        }
        Ok(())
    }
}

/// Reads a framebuffer file's pixel at (x, y) back as a colour (tests and `ldm` checks).
pub fn read_pixel(bytes: &[u8], layout: &FbLayout, x: usize, y: usize) -> Option<Rgb888> {
    let bpp = layout.format.bytes_per_pixel;
    let at = layout.offset + y * layout.stride + x * bpp;
    let b = bytes.get(at..at + bpp)?;
    let mut word = [0u8; 4];
    word[..bpp].copy_from_slice(b);
    Some(layout.format.unpack(u32::from_le_bytes(word)))
}

mod ioctl {
    //! The two framebuffer ioctls, with the kernel's structs (`linux/fb.h`).
    use super::{DisplayError, FbLayout, PixelFormat};
    use std::os::fd::AsRawFd;

    const FBIOGET_VSCREENINFO: libc::c_ulong = 0x4600;
    const FBIOGET_FSCREENINFO: libc::c_ulong = 0x4602;

    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Bitfield {
        offset: u32,
        length: u32,
        msb_right: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    struct VarScreenInfo {
        xres: u32,
        yres: u32,
        xres_virtual: u32,
        yres_virtual: u32,
        xoffset: u32,
        yoffset: u32,
        bits_per_pixel: u32,
        grayscale: u32,
        red: Bitfield,
        green: Bitfield,
        blue: Bitfield,
        transp: Bitfield,
        rest: [u32; 20],
    }

    #[repr(C)]
    #[derive(Default)]
    struct FixScreenInfo {
        id: [u8; 16],
        smem_start: libc::c_ulong,
        smem_len: u32,
        type_: u32,
        type_aux: u32,
        visual: u32,
        xpanstep: u16,
        ypanstep: u16,
        ywrapstep: u16,
        line_length: u32,
        mmio_start: libc::c_ulong,
        mmio_len: u32,
        accel: u32,
        capabilities: u16,
        reserved: [u16; 2],
    }

    pub(super) fn layout(file: &std::fs::File) -> Result<FbLayout, DisplayError> {
        let fd = file.as_raw_fd();
        let mut var = VarScreenInfo::default();
        let mut fix = FixScreenInfo::default();
        // SAFETY: both structs are the kernel's layouts (linux/fb.h) and outlive the calls.
        let r1 = unsafe { libc::ioctl(fd, FBIOGET_VSCREENINFO as _, &mut var) };
        let r2 = unsafe { libc::ioctl(fd, FBIOGET_FSCREENINFO as _, &mut fix) };
        if r1 != 0 || r2 != 0 {
            return Err(DisplayError::Io {
                path: std::path::PathBuf::new(),
                source: std::io::Error::last_os_error(),
            });
        }
        if var.bits_per_pixel % 8 != 0 || var.grayscale != 0 {
            return Err(DisplayError::Unsupported(format!(
                "{} bits per pixel{}",
                var.bits_per_pixel,
                if var.grayscale != 0 {
                    ", grayscale"
                } else {
                    ""
                }
            )));
        }
        let bpp = var.bits_per_pixel as usize / 8;
        Ok(FbLayout {
            width: var.xres as usize,
            height: var.yres as usize,
            stride: fix.line_length as usize,
            format: PixelFormat {
                bytes_per_pixel: bpp,
                red: (var.red.offset, var.red.length),
                green: (var.green.offset, var.green.length),
                blue: (var.blue.offset, var.blue.length),
            },
            offset: var.yoffset as usize * fix.line_length as usize + var.xoffset as usize * bpp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb565_and_xrgb8888_pack_the_kernel_layouts() {
        let c = Rgb888::new(0xff, 0x80, 0x08);
        assert_eq!(
            PixelFormat::RGB565.pack(c),
            (0x1f << 11) | (0x20 << 5) | 0x01
        );
        assert_eq!(PixelFormat::XRGB8888.pack(c), 0x00ff_8008);
        assert_eq!(PixelFormat::XRGB8888.unpack(0x00ff_8008), c);
        // 565 keeps the high bits; unpacking repeats them into the low ones.
        assert_eq!(
            PixelFormat::RGB565.unpack(PixelFormat::RGB565.pack(Rgb888::WHITE)),
            Rgb888::WHITE
        );
    }

    #[test]
    fn a_stride_shorter_than_a_row_is_refused() {
        let l = FbLayout {
            width: 10,
            height: 2,
            stride: 19,
            format: PixelFormat::RGB565,
            offset: 0,
        };
        assert!(l.check().is_err());
    }
}
