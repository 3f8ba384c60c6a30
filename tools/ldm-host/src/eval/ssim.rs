//! SSIM (Wang et al. 2004) as usually reported: 11x11 Gaussian window (sigma 1.5), K1 0.01,
//! K2 0.03, peak 255, over the valid windows of each RGB channel, averaged.
const WIN: usize = 11;
const SIGMA: f64 = 1.5;

fn window() -> [f64; WIN] {
    let mut w = [0.0; WIN];
    let c = (WIN / 2) as f64;
    for (i, v) in w.iter_mut().enumerate() {
        *v = (-((i as f64 - c).powi(2)) / (2.0 * SIGMA * SIGMA)).exp();
    }
    let s: f64 = w.iter().sum();
    w.map(|v| v / s)
}

/// Mean SSIM of two interleaved RGB8 images of `w` x `h` (at least 11 x 11).
pub fn ssim_rgb8(a: &[u8], b: &[u8], w: usize, h: usize) -> f64 {
    let g = window();
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let (wo, ho) = (w.saturating_sub(WIN) + 1, h.saturating_sub(WIN) + 1);
    let mut total = 0.0;
    let mut n = 0usize;
    for ch in 0..3 {
        let px = |img: &[u8], x: usize, y: usize| img[(y * w + x) * 3 + ch] as f64;
        for oy in 0..ho {
            for ox in 0..wo {
                let (mut ma, mut mb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for dy in 0..WIN {
                    for dx in 0..WIN {
                        let k = g[dy] * g[dx];
                        let (va, vb) = (px(a, ox + dx, oy + dy), px(b, ox + dx, oy + dy));
                        ma += k * va;
                        mb += k * vb;
                        saa += k * va * va;
                        sbb += k * vb * vb;
                        sab += k * va * vb;
                    }
                }
                let (va, vb, cov) = (saa - ma * ma, sbb - mb * mb, sab - ma * mb);
                total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                    / ((ma * ma + mb * mb + c1) * (va + vb + c2));
                n += 1;
            }
        }
    }
    total / n.max(1) as f64
}

/// PSNR in dB of two RGB8 pixel sets (peak 255); 100 for identical ones.
pub fn psnr_rgb8(a: &[u8], b: &[u8]) -> f64 {
    let n = a.len().min(b.len()).max(1) as f64;
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / n;
    if mse <= 1e-10 {
        100.0
    } else {
        (10.0 * (255.0 * 255.0 / mse).log10()).min(100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssim_is_one_for_equal_images_and_falls_with_noise() {
        let (w, h) = (16, 16);
        let a: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37) % 251) as u8).collect();
        assert!((ssim_rgb8(&a, &a, w, h) - 1.0).abs() < 1e-9);
        let b: Vec<u8> = a
            .iter()
            .enumerate()
            .map(|(i, &v)| v.saturating_add((i % 7) as u8 * 6))
            .collect();
        let s = ssim_rgb8(&a, &b, w, h);
        assert!(s < 0.999 && s > 0.0, "{s}");
        // A constant offset of 10 on 255: MSE 100, PSNR 28.13 dB.
        let c: Vec<u8> = a.iter().map(|&v| v.saturating_sub(10).max(0)).collect();
        let d: Vec<u8> = c.iter().map(|&v| v + 10).collect();
        assert!((psnr_rgb8(&c, &d) - 28.1308).abs() < 1e-3);
    }
}
