//! Autoencoder reconstruction PSNR through the runtime's own encoder and decoder graphs, on
//! held-out shapes renders: the figure issue 3 asks to be >= 32 dB.
use crate::dataset::rgb8_to_chw;
use crate::dataset::shapes::{held_out_scene, render};
use anyhow::{bail, Result};
use ldm_edge::backend::Tensor;
use ldm_edge::pipeline::Pipeline;

/// PSNR in dB of `y` against `x`, both in [-1, 1], measured on [0, 1] (peak 1). `y` is clamped
/// first, as it would be when written as pixels. Identical images give 100 dB rather than inf,
/// so averages and JSON stay finite.
pub fn psnr(x: &[f32], y: &[f32]) -> f64 {
    let n = x.len().min(y.len()).max(1) as f64;
    let mse: f64 = x
        .iter()
        .zip(y)
        .map(|(a, b)| {
            let d = (*a as f64 - (b.clamp(-1.0, 1.0)) as f64) * 0.5;
            d * d
        })
        .sum::<f64>()
        / n;
    if mse <= 1e-10 {
        100.0
    } else {
        (10.0 * (1.0 / mse).log10()).min(100.0)
    }
}

/// Mean per-image PSNR over the first `n` held-out scenes at the model's image size. Each image
/// is encoded, its posterior mean (the first half of the moments) taken and multiplied by the
/// latent scale as sampling produces latents, then decoded by the pipeline (which divides the
/// scale back out), exactly as generated latents are.
pub fn autoencoder_psnr(pipe: &Pipeline, n: usize) -> Result<f64> {
    if n == 0 {
        bail!("PSNR needs at least one image");
    }
    let cfg = &pipe.model.config;
    let size = cfg.image_size;
    let graph = cfg.encoder_graph(1, size, size)?;
    let mut enc = pipe.backend.prepare(&graph, pipe.model)?;
    let z = cfg.vae.latent_channels;
    let mut total = 0.0;
    for i in 0..n {
        let x = rgb8_to_chw(&render(&held_out_scene(i as u64), size), size);
        let input = Tensor::new(vec![1, 3, size, size], x.clone())?;
        let moments = enc
            .run(&[input])?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the encoder graph produced no output"))?;
        let s = &moments.shape;
        if s.len() != 4 || s[1] != 2 * z {
            bail!(
                "encoder moments have shape {s:?}, expected [1, {}, h, w]",
                2 * z
            );
        }
        let plane = s[2] * s[3];
        let mean: Vec<f32> = moments.data[..z * plane]
            .iter()
            .map(|v| v * cfg.latent_scale)
            .collect();
        let latents = Tensor::new(vec![1, z, s[2], s[3]], mean)?;
        let y = pipe.decode(&latents)?;
        if y.data.len() != x.len() {
            bail!(
                "decoder output {:?} does not match the input image",
                y.shape
            );
        }
        total += psnr(&x, &y.data);
    }
    Ok(total / n as f64)
}

#[cfg(test)]
mod tests {
    use super::psnr;

    #[test]
    fn psnr_of_known_errors() {
        assert_eq!(psnr(&[0.5, -0.5], &[0.5, -0.5]), 100.0);
        // An error of 0.2 in [-1, 1] is 0.1 on [0, 1]: MSE 0.01, 20 dB.
        assert!((psnr(&[0.0; 4], &[0.2; 4]) - 20.0).abs() < 1e-5);
        // Values beyond the range are clamped before comparing.
        assert_eq!(psnr(&[1.0], &[3.0]), 100.0);
    }
}
