//! Making the same-seed images of one model variant and comparing them with the reference's.
use crate::dataset::shapes::{held_out_prompts, Scene, MIN_SIZE};
use crate::eval::checker;
use crate::eval::generate::{generate_full, GenSettings};
use crate::eval::score::Alignment;
use crate::eval::ssim::{psnr_rgb8, ssim_rgb8};
use anyhow::{Context, Result};
use ldm_edge::model::Model;
use ldm_edge::pipeline::Pipeline;
use std::path::Path;

/// The prompts both models are run on: the shapes held-out captions (which the checker can
/// read back), or the lines of a file.
pub struct Prompts {
    pub texts: Vec<String>,
    pub scenes: Option<Vec<Scene>>,
    pub source: String,
}

impl Prompts {
    pub fn load(file: Option<&Path>, n: usize) -> Result<Prompts> {
        match file {
            None => {
                let scenes = held_out_prompts(n);
                Ok(Prompts {
                    texts: scenes.iter().map(Scene::caption).collect(),
                    scenes: Some(scenes),
                    source: "shapes held-out captions".into(),
                })
            }
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                let all: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect();
                if all.is_empty() {
                    anyhow::bail!("{} holds no prompts", p.display());
                }
                // Cycled when the file is shorter than asked; the seeds still differ.
                let texts = (0..n).map(|i| all[i % all.len()].clone()).collect();
                Ok(Prompts {
                    texts,
                    scenes: None,
                    source: format!("{}", p.display()),
                })
            }
        }
    }

    pub fn first(&self, n: usize) -> &[String] {
        &self.texts[..n.min(self.texts.len())]
    }
}

/// How every image of a run is made.
#[derive(Clone, Debug)]
pub struct GenPlan {
    pub settings: GenSettings,
    pub size: usize,
    pub sampler: String,
    pub backend: String,
}

/// One image of a run: floats in [-1, 1] and its pixels.
pub struct Image {
    pub data: Vec<f32>,
    pub rgb: Vec<u8>,
}

pub fn images(model: &Model, prompts: &[String], plan: &GenPlan) -> Result<Vec<Image>> {
    let pipe = Pipeline::new(model, ldm_edge::backend::select(&plan.backend)?);
    let out = generate_full(&pipe, prompts, plan.settings, &mut |_| {})?;
    Ok(out
        .into_iter()
        .map(|g| Image {
            data: g.image.data,
            rgb: g.rgb,
        })
        .collect())
}

/// Mean squared error against the reference on the float images (peak-to-peak 1), averaged
/// over the images: the damage the mixed-precision search adds up. Floats, not pixels, so a
/// change below half an 8-bit level still counts. Both images are clamped to [-1, 1] as their
/// pixels would be (`eval::psnr` clamps only its second image, which would give two equal
/// images with overshoot a constant error).
pub fn mse(reference: &[Image], other: &[Image]) -> f64 {
    let n = reference.len().max(1) as f64;
    reference
        .iter()
        .zip(other)
        .map(|(a, b)| {
            let k = a.data.len().min(b.data.len()).max(1) as f64;
            a.data
                .iter()
                .zip(&b.data)
                .map(|(x, y)| {
                    let d = (x.clamp(-1.0, 1.0) - y.clamp(-1.0, 1.0)) as f64 * 0.5;
                    d * d
                })
                .sum::<f64>()
                / k
        })
        .sum::<f64>()
        / n
}

/// MSE (as [`mse`]) to dB.
pub fn mse_db(mse: f64) -> f64 {
    if mse <= 1e-10 {
        100.0
    } else {
        (-10.0 * mse.log10()).min(100.0)
    }
}

/// What the report quotes: 8-bit PSNR and SSIM per image, as a PNG of each would show.
pub struct Quality {
    pub psnr_mean: f64,
    pub psnr_min: f64,
    pub ssim_mean: f64,
    pub ssim_min: f64,
}

pub fn quality(reference: &[Image], other: &[Image], size: usize) -> Quality {
    let mut q = Quality {
        psnr_mean: 0.0,
        psnr_min: f64::INFINITY,
        ssim_mean: 0.0,
        ssim_min: f64::INFINITY,
    };
    let n = reference.len().max(1) as f64;
    for (a, b) in reference.iter().zip(other) {
        let p = psnr_rgb8(&a.rgb, &b.rgb);
        // SSIM's 11x11 window needs an image at least that large.
        let s = if size >= 11 {
            ssim_rgb8(&a.rgb, &b.rgb, size, size)
        } else {
            f64::NAN
        };
        q.psnr_mean += p / n;
        q.psnr_min = q.psnr_min.min(p);
        q.ssim_mean += s / n;
        q.ssim_min = q.ssim_min.min(s);
    }
    q
}

/// The shapes checker's verdicts on a run's images, when the prompts are shapes scenes at a
/// size it reads.
pub fn alignment(prompts: &Prompts, imgs: &[Image], size: usize) -> Option<Alignment> {
    let scenes = prompts.scenes.as_ref()?;
    if size < MIN_SIZE {
        return None;
    }
    let mut a = Alignment::default();
    for (scene, img) in scenes.iter().zip(imgs) {
        a.add(scene, &checker::judge(scene, &img.rgb, size));
    }
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(data: Vec<f32>) -> Image {
        Image {
            data,
            rgb: Vec::new(),
        }
    }

    #[test]
    fn equal_images_cost_nothing_even_past_the_pixel_range() {
        let a = vec![img(vec![-1.3, 0.2, 1.2, 0.9])];
        let b = vec![img(vec![-1.3, 0.2, 1.2, 0.9])];
        assert_eq!(mse(&a, &b), 0.0);
        assert_eq!(mse_db(0.0), 100.0);
        // One value off by 0.2 of the 2-wide range: (0.1)^2 / 4 values.
        let c = vec![img(vec![-1.3, 0.4, 1.2, 0.9])];
        assert!((mse(&a, &c) - 0.0025).abs() < 1e-9);
        assert!((mse_db(0.0025) - 26.0206).abs() < 1e-3);
    }
}
