//! Random inpainting masks for training, after SD-inpainting's recipe: a quarter of the masks
//! hide everything (so the model keeps its text-to-image ability), the rest are rectangles or
//! thick brush strokes. 1 = hole (to generate), 0 = kept; [size * size] row-major.
use super::step_seed;

/// A mask for one training image, deterministic in `seed`.
pub fn random_mask(seed: u64, size: usize) -> Vec<f32> {
    let mut r = Rng(seed);
    let kind = r.unit();
    let mut m = vec![0.0f32; size * size];
    if kind < 0.25 {
        m.fill(1.0);
    } else if kind < 0.65 {
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

    #[test]
    fn masks_are_binary_deterministic_and_varied() {
        let size = 32;
        let mut full = 0;
        let mut partial = 0;
        for s in 0..200 {
            let m = random_mask(s, size);
            assert_eq!(m, random_mask(s, size));
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
