//! Random inpainting masks for training. After SD-inpainting's recipe, a quarter of the masks
//! hide everything (so the model keeps its text-to-image ability) and others are rectangles or
//! thick brush strokes. Random masks mostly hide background, though, which teaches a model to
//! fill any hole with background; so a third hide one whole object: the box around a connected
//! foreground region (pixels far from the border's color), the way object masks from a
//! segmenter are used. 1 = hole (to generate), 0 = kept; [size * size] row-major.
use super::step_seed;
use crate::eval::checker::{border_background, components};

/// A mask for one training image ([3, size, size] in [-1, 1]), deterministic in `seed`.
pub fn random_mask(seed: u64, size: usize, image: &[f32]) -> Vec<f32> {
    let mut r = Rng(seed);
    let kind = r.unit();
    let mut m = vec![0.0f32; size * size];
    if kind < 0.25 {
        m.fill(1.0);
    } else if kind < 0.6 && object_box(&mut r, image, size, &mut m) {
        // `object_box` drew it.
    } else if kind < 0.8 {
        // A rectangle a quarter to three quarters of the side in each direction.
        let w = r.range(size / 4, size * 3 / 4);
        let h = r.range(size / 4, size * 3 / 4);
        let x0 = r.range(0, size - w);
        let y0 = r.range(0, size - h);
        rect(&mut m, size, x0, y0, w, h);
    } else {
        // One to three strokes: random walks of discs with a radius of 1/16 to 1/8 of the side.
        let strokes = 1 + (r.unit() * 3.0) as usize;
        for _ in 0..strokes {
            let rad = (size as f32 / 16.0) * (1.0 + r.unit());
            let (mut x, mut y) = (r.unit() * size as f32, r.unit() * size as f32);
            let mut angle = r.unit() * std::f32::consts::TAU;
            let segments = 4 + (r.unit() * 8.0) as usize;
            for _ in 0..segments {
                angle += (r.unit() - 0.5) * 2.0;
                let len = size as f32 / 8.0 * (0.5 + r.unit());
                let n = (len.ceil() as usize).max(1);
                for _ in 0..n {
                    disc(&mut m, size, x, y, rad);
                    x = (x + angle.cos()).clamp(0.0, size as f32 - 1.0);
                    y = (y + angle.sin()).clamp(0.0, size as f32 - 1.0);
                }
            }
        }
    }
    m
}

/// Foreground: farther than this from the background color (in [-1, 1] units, summed over RGB).
const FG: f32 = 0.3;

/// Marks the box (plus 2 px) around the connected foreground region of a random foreground
/// pixel, found as the shapes checker finds objects (border-median background, connected
/// components). False when the image has no foreground.
fn object_box(r: &mut Rng, img: &[f32], size: usize, m: &mut [f32]) -> bool {
    let plane = size * size;
    if img.len() != 3 * plane || size < 2 {
        return false;
    }
    let px: Vec<[f32; 3]> = (0..plane)
        .map(|i| [img[i], img[plane + i], img[2 * plane + i]])
        .collect();
    let bg = border_background(&px, size);
    let fg: Vec<bool> = px
        .iter()
        .map(|p| p.iter().zip(&bg).map(|(a, b)| (a - b).abs()).sum::<f32>() > FG)
        .collect();
    let n_fg = fg.iter().filter(|&&f| f).count();
    if n_fg == 0 {
        return false;
    }
    let pick = ((r.unit() * n_fg as f32) as usize).min(n_fg - 1);
    let Some(start) = (0..plane).filter(|&i| fg[i]).nth(pick) else {
        return false;
    };
    let Some(comp) = components(&fg, size)
        .into_iter()
        .find(|c| c.contains(&start))
    else {
        return false;
    };
    let (mut x0, mut y0, mut x1, mut y1) = (size, size, 0, 0);
    for &i in &comp {
        let (x, y) = (i % size, i / size);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let (x0, y0) = (x0.saturating_sub(2), y0.saturating_sub(2));
    rect(m, size, x0, y0, x1 + 3 - x0, y1 + 3 - y0);
    true
}

/// Sets a w x h rectangle at (x0, y0) to 1 (clipped to the image).
pub fn rect(m: &mut [f32], size: usize, x0: usize, y0: usize, w: usize, h: usize) {
    for y in y0..(y0 + h).min(size) {
        for x in x0..(x0 + w).min(size) {
            m[y * size + x] = 1.0;
        }
    }
}

fn disc(m: &mut [f32], size: usize, cx: f32, cy: f32, r: f32) {
    let (lo_y, hi_y) = ((cy - r).floor().max(0.0) as usize, (cy + r).ceil() as usize);
    let (lo_x, hi_x) = ((cx - r).floor().max(0.0) as usize, (cx + r).ceil() as usize);
    for y in lo_y..hi_y.min(size) {
        for x in lo_x..hi_x.min(size) {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            if dx * dx + dy * dy <= r * r {
                m[y * size + x] = 1.0;
            }
        }
    }
}

struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f32 {
        self.0 = step_seed(self.0, 1, 11);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in lo..=hi (lo when the range is empty).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        if hi <= lo {
            return lo;
        }
        lo + ((self.unit() * (hi - lo + 1) as f32) as usize).min(hi - lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gray image with one red 6x4 block at (10, 20).
    fn scene(size: usize) -> Vec<f32> {
        let mut img = vec![0.0f32; 3 * size * size];
        for y in 20..24 {
            for x in 10..16 {
                img[y * size + x] = 1.0;
                img[size * size + y * size + x] = -1.0;
            }
        }
        img
    }

    #[test]
    fn object_masks_cover_the_object_with_a_margin() {
        let size = 32;
        let img = scene(size);
        let mut m = vec![0.0; size * size];
        assert!(object_box(&mut Rng(3), &img, size, &mut m));
        let on = |x: usize, y: usize| m[y * size + x] == 1.0;
        assert!(on(8, 18) && on(17, 25) && on(12, 22));
        assert!(!on(7, 18) && !on(18, 25) && !on(12, 17) && !on(12, 26));
        // Nothing in front of the background: no object mask.
        let flat = vec![0.3f32; 3 * size * size];
        assert!(!object_box(&mut Rng(3), &flat, size, &mut m));
    }

    #[test]
    fn masks_are_binary_deterministic_and_varied() {
        let size = 32;
        let img = scene(size);
        let mut full = 0;
        let mut partial = 0;
        for s in 0..200 {
            let m = random_mask(s, size, &img);
            assert_eq!(m, random_mask(s, size, &img));
            assert!(m.iter().all(|&v| v == 0.0 || v == 1.0));
            let frac = m.iter().sum::<f32>() / m.len() as f32;
            if frac == 1.0 {
                full += 1;
            } else if frac > 0.0 {
                partial += 1;
            }
        }
        // About a quarter full, nearly all of the rest partial.
        assert!((30..=70).contains(&full), "{full} full masks of 200");
        assert!(partial >= 120, "{partial} partial masks of 200");
    }
}
