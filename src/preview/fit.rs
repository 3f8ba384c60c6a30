//! Fitting the latent-to-RGB preview map of a model from its own encoder.
//!
//! Procedural images (flat backgrounds, gradients, rectangles and discs in random colours) are
//! encoded; each latent pixel is paired with the mean colour of the f x f image block it covers,
//! and the affine map is solved by least squares. Encoding real-looking pictures puts the fit
//! on the latents the decoder actually sees (random latents decode to texture that no linear
//! map follows), and it needs no dataset and no download, so export and import of any model
//! can do it.
use super::LatentRgb;
use crate::arch::ModelConfig;
use crate::backend::{Backend, Tensor, WeightSource};
use crate::sampler::NoiseGen;
use crate::{Error, Result};

/// What the fit used and how well the map reproduces its own targets.
#[derive(Clone, Debug)]
pub struct FitReport {
    pub images: usize,
    pub size: usize,
    /// PSNR of the map's output against the block means, on the fit images, in [-1, 1] scale.
    pub psnr_db: f64,
}

/// Image side for the fit: the model's size, at most 256 px (the map is per pixel, so more
/// pixels add nothing but encoder time), a multiple of the autoencoder's factor.
fn fit_size(cfg: &ModelConfig) -> usize {
    let f = cfg.vae.factor();
    let s = cfg.image_size.min(256);
    (s / f).max(1) * f
}

/// Images and seed of the map that export, import and `ldm-host preview fit` store.
pub const DEFAULT_IMAGES: usize = 32;
pub const DEFAULT_SEED: u64 = 0x9e37_79b9;

/// Fits the stored map from the encoder's f32 weights, read through `load` (a checkpoint, an
/// import source or a model file), on the CPU backend.
pub fn fit_from(
    cfg: &ModelConfig,
    load: &dyn Fn(&str) -> Result<Vec<f32>>,
) -> Result<(LatentRgb, FitReport)> {
    let mut weights = std::collections::HashMap::new();
    for (path, shape) in crate::arch::vae::encoder_params(&cfg.vae, crate::arch::VAE)? {
        let data = load(&path)?;
        weights.insert(path, Tensor::new(shape, data)?);
    }
    fit(
        cfg,
        &weights,
        &crate::backend::cpu::CpuBackend,
        DEFAULT_IMAGES,
        DEFAULT_SEED,
    )
}

/// Fits the map on `images` procedural images (seeded, so the same model gives the same map).
pub fn fit(
    cfg: &ModelConfig,
    weights: &dyn WeightSource,
    backend: &dyn Backend,
    images: usize,
    seed: u64,
) -> Result<(LatentRgb, FitReport)> {
    if images == 0 {
        return Err(Error::Input(
            "the preview fit needs at least one image".into(),
        ));
    }
    let size = fit_size(cfg);
    let f = cfg.vae.factor();
    let z = cfg.vae.latent_channels;
    let graph = cfg.encoder_graph(1, size, size)?;
    let mut plan = backend.prepare(&graph, weights)?;
    let mut rng = NoiseGen::new(seed);
    let mut normal = Normal::new(z + 1);
    let mut pairs = Vec::new();
    for _ in 0..images {
        let img = scene(&mut rng, size);
        let moments = plan
            .run(&[Tensor::new(vec![1, 3, size, size], img.clone())?])?
            .into_iter()
            .next()
            .ok_or_else(|| Error::shape("preview fit", "the encoder gave no output"))?;
        let h = size / f;
        let n = h * h;
        if moments.data.len() < z * n {
            return Err(Error::shape(
                "preview fit",
                format!("encoder gave {:?}", moments.shape),
            ));
        }
        let target = block_means(&img, size, f);
        for p in 0..n {
            let mut x: Vec<f64> = (0..z)
                .map(|k| (moments.data[k * n + p] * cfg.latent_scale) as f64)
                .collect();
            x.push(1.0);
            let y = [target[p], target[n + p], target[2 * n + p]];
            normal.add(&x, &y);
            pairs.push((x, y));
        }
    }
    let sol = normal.solve()?;
    let mut weight = vec![0f32; 3 * z];
    let mut bias = [0f32; 3];
    for c in 0..3 {
        for k in 0..z {
            weight[c * z + k] = sol[c][k] as f32;
        }
        bias[c] = sol[c][z] as f32;
    }
    let mut se = 0f64;
    for (x, y) in &pairs {
        for c in 0..3 {
            let p: f64 = x.iter().zip(&sol[c]).map(|(a, b)| a * b).sum();
            se += (p.clamp(-1.0, 1.0) - y[c]).powi(2);
        }
    }
    let mse = se / (3 * pairs.len()) as f64;
    // Peak-to-peak 2 in [-1, 1].
    let psnr_db = 10.0 * (4.0 / mse.max(1e-12)).log10();
    Ok((
        LatentRgb { weight, bias },
        FitReport {
            images,
            size,
            psnr_db,
        },
    ))
}

impl FitReport {
    /// What the file's `provenance.preview` records.
    pub fn provenance(&self) -> serde_json::Value {
        serde_json::json!({
            "method": "latent_rgb",
            "fit": format!("least squares on {} procedural {}x{} images through the encoder", self.images, self.size, self.size),
            "fit_psnr_db": (self.psnr_db * 100.0).round() / 100.0,
        })
    }
}

/// Normal equations of a least-squares fit with three outputs.
struct Normal {
    n: usize,
    xtx: Vec<f64>,
    xty: Vec<[f64; 3]>,
}

impl Normal {
    fn new(n: usize) -> Self {
        Self {
            n,
            xtx: vec![0.0; n * n],
            xty: vec![[0.0; 3]; n],
        }
    }

    fn add(&mut self, x: &[f64], y: &[f64; 3]) {
        for i in 0..self.n {
            for j in 0..self.n {
                self.xtx[i * self.n + j] += x[i] * x[j];
            }
            for c in 0..3 {
                self.xty[i][c] += x[i] * y[c];
            }
        }
    }

    /// Solves (XtX + ridge) b = XtY for each output by Gaussian elimination with partial
    /// pivoting. The small ridge keeps a latent channel the encoder never uses from making
    /// the system singular.
    fn solve(&self) -> Result<[Vec<f64>; 3]> {
        let n = self.n;
        let trace: f64 = (0..n).map(|i| self.xtx[i * n + i]).sum();
        let ridge = 1e-9 * trace.max(1.0);
        let mut a = self.xtx.clone();
        for i in 0..n {
            a[i * n + i] += ridge;
        }
        let mut b: Vec<[f64; 3]> = self.xty.clone();
        for col in 0..n {
            let piv = (col..n)
                .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
                .unwrap_or(col);
            if a[piv * n + col].abs() < 1e-300 {
                return Err(Error::Backend {
                    backend: "preview fit",
                    msg: "the encoder's latents are degenerate: no map fits".into(),
                });
            }
            if piv != col {
                for k in 0..n {
                    a.swap(col * n + k, piv * n + k);
                }
                b.swap(col, piv);
            }
            for r in 0..n {
                if r == col {
                    continue;
                }
                let m = a[r * n + col] / a[col * n + col];
                if m == 0.0 {
                    continue;
                }
                for k in col..n {
                    a[r * n + k] -= m * a[col * n + k];
                }
                for c in 0..3 {
                    b[r][c] -= m * b[col][c];
                }
            }
        }
        let mut out = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
        for i in 0..n {
            for c in 0..3 {
                out[c][i] = b[i][c] / a[i * n + i];
            }
        }
        if out.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::Backend {
                backend: "preview fit",
                msg: "the least-squares solution is not finite".into(),
            });
        }
        Ok(out)
    }
}

const PALETTE: [[f32; 3]; 12] = [
    [0.0, 0.0, 0.0],
    [1.0, 1.0, 1.0],
    [0.5, 0.5, 0.5],
    [0.8, 0.8, 0.8],
    [0.9, 0.1, 0.1],
    [0.1, 0.7, 0.2],
    [0.1, 0.2, 0.9],
    [0.95, 0.9, 0.1],
    [1.0, 0.55, 0.0],
    [0.6, 0.1, 0.7],
    [0.1, 0.8, 0.9],
    [0.9, 0.2, 0.8],
];

/// A procedural scene, planar [3, s, s] in [-1, 1]: a flat or graded background and a few
/// rectangles and discs, so the fit sees flat colour, edges and gradients.
fn scene(rng: &mut NoiseGen, s: usize) -> Vec<f32> {
    let mut u = || rng.next_uniform() as f32;
    // Half the colours from a palette of greys and saturated hues (what pictures and
    // illustrations are made of), half anywhere in the cube.
    let colour = |u: &mut dyn FnMut() -> f32| {
        if u() < 0.5 {
            let p = PALETTE[((u() * PALETTE.len() as f32) as usize).min(PALETTE.len() - 1)];
            p.map(|v| v * 2.0 - 1.0)
        } else {
            [u() * 2.0 - 1.0, u() * 2.0 - 1.0, u() * 2.0 - 1.0]
        }
    };
    let n = s * s;
    let mut img = vec![0f32; 3 * n];
    let (c0, c1) = (colour(&mut u), colour(&mut u));
    let graded = u() < 0.5;
    for y in 0..s {
        for x in 0..s {
            let t = if graded {
                (x + y) as f32 / (2 * s).max(1) as f32
            } else {
                0.0
            };
            for c in 0..3 {
                img[c * n + y * s + x] = c0[c] * (1.0 - t) + c1[c] * t;
            }
        }
    }
    let shapes = 2 + (u() * 5.0) as usize;
    for _ in 0..shapes {
        let col = colour(&mut u);
        let (cx, cy) = (u() * s as f32, u() * s as f32);
        let r = (0.05 + u() * 0.3) * s as f32;
        let disc = u() < 0.5;
        for y in 0..s {
            for x in 0..s {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let inside = if disc {
                    dx * dx + dy * dy <= r * r
                } else {
                    dx.abs() <= r && dy.abs() <= r * 0.7
                };
                if inside {
                    for c in 0..3 {
                        img[c * n + y * s + x] = col[c];
                    }
                }
            }
        }
    }
    img
}

/// Planar [3, s, s] -> the mean of each f x f block, planar [3, s/f, s/f].
fn block_means(img: &[f32], s: usize, f: usize) -> Vec<f64> {
    let h = s / f;
    let (n, m) = (s * s, h * h);
    let mut out = vec![0f64; 3 * m];
    for c in 0..3 {
        for y in 0..s {
            for x in 0..s {
                out[c * m + (y / f) * h + x / f] += img[c * n + y * s + x] as f64;
            }
        }
    }
    let k = (f * f) as f64;
    out.iter_mut().for_each(|v| *v /= k);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_equations_recover_an_exact_affine_map() {
        let mut ne = Normal::new(3);
        let mut rng = NoiseGen::new(1);
        for _ in 0..50 {
            let (a, b) = (rng.next_normal() as f64, rng.next_normal() as f64);
            let x = [a, b, 1.0];
            ne.add(&x, &[2.0 * a - b + 0.5, a, -b - 0.25]);
        }
        let s = ne.solve().unwrap();
        let want = [[2.0, -1.0, 0.5], [1.0, 0.0, 0.0], [0.0, -1.0, -0.25]];
        for c in 0..3 {
            for k in 0..3 {
                assert!((s[c][k] - want[c][k]).abs() < 1e-6, "{s:?}");
            }
        }
    }

    #[test]
    fn block_means_average_each_block() {
        // 2x2 image, f = 2: one block per channel.
        let img = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0];
        assert_eq!(block_means(&img, 2, 2), vec![0.5, 1.0, 0.0]);
    }
}
