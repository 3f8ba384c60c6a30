//! What a frame shows: the image (the latest preview, then the final image) scaled to fit
//! above a footer with the prompt, the step count and a progress bar.
use super::BACKGROUND;
use embedded_graphics::mono_font::ascii::FONT_6X10;
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::{Rgb888, RgbColor};
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};

/// One frame's content.
#[derive(Clone, Copy, Debug)]
pub struct Status<'a> {
    /// Row-major 8-bit RGB and its size, or None before the first preview.
    pub image: Option<(&'a [u8], usize, usize)>,
    pub step: usize,
    pub total: usize,
    pub prompt: &'a str,
}

const BAR: Rgb888 = Rgb888::new(0x30, 0xc0, 0x60);
const FRAME: Rgb888 = Rgb888::new(0xa0, 0xa0, 0xa0);
/// Panels shorter than this get only the bar, no text line.
const TEXT_MIN_HEIGHT: u32 = 48;

/// Footer height for a screen height: text line (10 px) and bar (6 px) with margins.
fn footer(h: u32) -> u32 {
    if h >= TEXT_MIN_HEIGHT {
        22
    } else {
        6
    }
}

/// Where an image of `iw x ih` goes in an area, scaled to fit (aspect kept), centred.
pub(crate) fn fit(iw: usize, ih: usize, area: Rectangle) -> Rectangle {
    let (aw, ah) = (area.size.width as usize, area.size.height as usize);
    if iw == 0 || ih == 0 || aw == 0 || ah == 0 {
        return Rectangle::new(area.top_left, Size::zero());
    }
    // Largest size with w/h = iw/ih inside the area, in integers (no float rounding drift).
    let (w, h) = if aw * ih <= ah * iw {
        (aw, (aw * ih / iw).max(1))
    } else {
        ((ah * iw / ih).max(1), ah)
    };
    let x = area.top_left.x + ((aw - w) / 2) as i32;
    let y = area.top_left.y + ((ah - h) / 2) as i32;
    Rectangle::new(Point::new(x, y), Size::new(w as u32, h as u32))
}

/// Draws a frame on any target (a display driver's own target too).
pub fn draw<D: DrawTarget<Color = Rgb888>>(t: &mut D, s: &Status) -> Result<(), D::Error> {
    let size = t.bounding_box().size;
    t.clear(BACKGROUND)?;
    let fh = footer(size.height).min(size.height);
    let area = Rectangle::new(Point::zero(), Size::new(size.width, size.height - fh));
    if let Some((rgb, iw, ih)) = s.image {
        if rgb.len() == iw * ih * 3 {
            let dst = fit(iw, ih, area);
            let (dw, dh) = (dst.size.width as usize, dst.size.height as usize);
            // Nearest neighbour: small generations stay crisp when enlarged.
            let colours = (0..dh).flat_map(|y| {
                let sy = y * ih / dh;
                (0..dw).map(move |x| {
                    let i = (sy * iw + x * iw / dw) * 3;
                    Rgb888::new(rgb[i], rgb[i + 1], rgb[i + 2])
                })
            });
            t.fill_contiguous(&dst, colours)?;
        }
    }
    // Progress bar: an outline, filled in proportion to the steps done.
    let bar_h = 6u32.min(fh);
    let bar_y = (size.height - bar_h) as i32;
    let bar = Rectangle::new(
        Point::new(1, bar_y),
        Size::new(size.width.saturating_sub(2), bar_h.saturating_sub(1)),
    );
    bar.into_styled(PrimitiveStyle::with_stroke(FRAME, 1))
        .draw(t)?;
    let inner_w = bar.size.width.saturating_sub(2) as usize;
    let done = if s.total == 0 {
        0
    } else {
        inner_w * s.step.min(s.total) / s.total
    };
    if done > 0 && bar.size.height > 2 {
        Rectangle::new(
            Point::new(2, bar_y + 1),
            Size::new(done as u32, bar.size.height - 2),
        )
        .into_styled(PrimitiveStyle::with_fill(BAR))
        .draw(t)?;
    }
    if size.height >= TEXT_MIN_HEIGHT {
        let counter = format!(" {}/{}", s.step, s.total);
        let max_chars = (size.width as usize / 6).saturating_sub(1);
        let room = max_chars.saturating_sub(counter.len());
        let mut prompt: String = s
            .prompt
            .chars()
            .filter(|c| c.is_ascii() && !c.is_control())
            .collect();
        if prompt.chars().count() > room {
            prompt = prompt
                .chars()
                .take(room.saturating_sub(1))
                .collect::<String>()
                + "~";
        }
        let line = format!("{prompt}{counter}");
        let style = MonoTextStyle::new(&FONT_6X10, Rgb888::WHITE);
        Text::with_baseline(
            &line,
            Point::new(2, (size.height - fh + 2) as i32),
            style,
            Baseline::Top,
        )
        .draw(t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_the_aspect_and_centres() {
        let area = Rectangle::new(Point::zero(), Size::new(320, 218));
        let r = fit(32, 32, area);
        assert_eq!(r.size, Size::new(218, 218));
        assert_eq!(r.top_left, Point::new(51, 0));
        let r = fit(64, 16, area);
        assert_eq!(r.size, Size::new(320, 80));
        assert_eq!(r.top_left, Point::new(0, 69));
    }
}
