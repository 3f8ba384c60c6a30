//! Fitting user images of any size to the square training size.
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};

/// Scales the shorter side to `size` and crops the center, so nothing is stretched.
/// Transparent pixels are composited on white: many PNG cut-outs are drawn for light pages, and
/// dropping alpha would show arbitrary colors hidden under it.
pub fn fit_square(img: &DynamicImage, size: usize) -> RgbImage {
    let rgba = img.to_rgba8();
    let flat = RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3] as u32;
        let mix = |c: u8| ((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([mix(p[0]), mix(p[1]), mix(p[2])])
    });
    let s = size as u32;
    if flat.width() == s && flat.height() == s {
        return flat;
    }
    // CatmullRom: sharp enough for small targets, and the filter widens with the scale factor,
    // so large downscales average rather than alias.
    DynamicImage::ImageRgb8(flat)
        .resize_to_fill(s, s, FilterType::CatmullRom)
        .to_rgb8()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_the_center_of_wide_images() {
        // 60x20: red left third, green middle third, blue right third. The center crop of the
        // 30x10-scaled image is the green middle.
        let img = RgbImage::from_fn(60, 20, |x, _| match x / 20 {
            0 => image::Rgb([255, 0, 0]),
            1 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        });
        let out = fit_square(&DynamicImage::ImageRgb8(img), 8);
        assert_eq!((out.width(), out.height()), (8, 8));
        let c = out.get_pixel(4, 4).0;
        assert!(c[1] > 200 && c[0] < 40 && c[2] < 40, "{c:?}");
    }

    #[test]
    fn transparent_pixels_become_white() {
        let img = image::RgbaImage::from_pixel(4, 4, image::Rgba([0, 0, 0, 0]));
        let out = fit_square(&DynamicImage::ImageRgba8(img), 4);
        assert_eq!(out.get_pixel(0, 0).0, [255, 255, 255]);
    }
}
