//! Inpainting evaluation on held-out one-object shapes scenes: the object is hidden under a
//! box mask (its bounding box plus a margin), the prompt is the scene's caption, so it
//! describes what is hidden. The shapes checker then reads the composited image: a case is a
//! hit when it finds the prompted object (color, shape, size, position, and nothing else).
//! Also reported: the masked-region PSNR against the original render, and that every pixel
//! outside the mask equals the input.
use super::checker::judge;
use super::ssim::psnr_rgb8;
use crate::dataset::shapes::{held_out_scene, render, Scene};
use anyhow::{bail, Context, Result};
use ldm_edge::pipeline::image::{from_rgb8, to_rgb8};
use ldm_edge::pipeline::inpaint::composite;
use ldm_edge::pipeline::{Cancel, Inpaint, Pipeline};
use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct InpaintReport {
    pub cases: usize,
    pub steps: usize,
    pub guidance: f32,
    /// The checker found the prompted object (every attribute, no extra object).
    pub object_found: usize,
    pub object_found_rate: f64,
    pub color_ok: usize,
    pub shape_ok: usize,
    pub size_ok: usize,
    pub position_ok: usize,
    /// Mean PSNR (dB) over the masked pixels against the original render.
    pub masked_psnr_db: f64,
    /// Pixels outside the masks that differ from the input (must be 0).
    pub outside_changed_pixels: usize,
    pub mean_mask_fraction: f64,
    /// The same checks on the original's autoencoder round trip pasted into the hole: what a
    /// perfect inpainter could score through this autoencoder, so a shortfall can be told
    /// apart from the autoencoder's and the checker's own limits.
    pub ceiling_found: usize,
    pub ceiling_shape_ok: usize,
}

/// The box mask hiding the scene's first object: its extent plus 2 px, clipped.
pub fn object_mask(scene: &Scene, size: usize) -> Vec<f32> {
    let o = &scene.objects[0];
    let (cx, cy) = o.center();
    let r = o.size.radius() * size as f32 + 2.0;
    let (cx, cy) = (cx * size as f32, cy * size as f32);
    let mut m = vec![0.0f32; size * size];
    for y in 0..size {
        for x in 0..size {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            if (px - cx).abs() <= r && (py - cy).abs() <= r {
                m[y * size + x] = 1.0;
            }
        }
    }
    m
}

pub fn evaluate(
    pipe: &Pipeline,
    n: usize,
    steps: Option<usize>,
    guidance: Option<f32>,
    seed: u64,
) -> Result<InpaintReport> {
    if n == 0 {
        bail!("the inpainting evaluation needs at least one case");
    }
    let size = pipe.model.config.image_size;
    let mut r = InpaintReport {
        cases: n,
        ..Default::default()
    };
    let cancel = Cancel::new();
    let mut psnr_sum = 0.0;
    // Even held-out indices are the one-object scenes.
    for k in 0..n {
        let scene = held_out_scene(2 * k as u64);
        let truth = render(&scene, size);
        let mask = object_mask(&scene, size);
        // The full render goes in: the pipeline itself hides the masked pixels from the model.
        let input = from_rgb8(&truth, size, size)?;
        let mut req = Inpaint::new(pipe.model, &scene.caption(), input, mask.clone())?;
        req.params.seed = seed.wrapping_add(k as u64);
        if let Some(s) = steps {
            req.params.steps = s;
        }
        if let Some(g) = guidance {
            req.params.guidance = g;
        }
        r.steps = req.params.steps;
        r.guidance = req.params.guidance;
        let out = pipe
            .inpaint(&req, &mut |_| {}, &cancel)
            .with_context(|| format!("inpainting held-out scene {}", 2 * k))?;
        let (mut hole_out, mut hole_truth) = (Vec::new(), Vec::new());
        for (i, &m) in mask.iter().enumerate() {
            let (a, b) = (&out.rgb[i * 3..i * 3 + 3], &truth[i * 3..i * 3 + 3]);
            if m >= 0.5 {
                hole_out.extend_from_slice(a);
                hole_truth.extend_from_slice(b);
            } else if a != b {
                r.outside_changed_pixels += 1;
            }
        }
        psnr_sum += psnr_rgb8(&hole_out, &hole_truth);
        r.mean_mask_fraction += mask.iter().sum::<f32>() as f64 / mask.len() as f64;
        let round_trip = pipe.decode(&pipe.encode(&req.image)?)?;
        let pasted = to_rgb8(&composite(&round_trip, &req.image, &mask)?)?;
        let c = judge(&scene, &pasted, size);
        r.ceiling_found += c.whole() as usize;
        r.ceiling_shape_ok += c.shape.first().copied().unwrap_or(false) as usize;
        let j = judge(&scene, &out.rgb, size);
        r.object_found += j.whole() as usize;
        r.color_ok += j.color.first().copied().unwrap_or(false) as usize;
        r.shape_ok += j.shape.first().copied().unwrap_or(false) as usize;
        r.size_ok += j.size.first().copied().unwrap_or(false) as usize;
        r.position_ok += j.position.unwrap_or(false) as usize;
        if (k + 1) % 50 == 0 {
            eprintln!("  inpaint: {}/{n}", k + 1);
        }
    }
    r.object_found_rate = r.object_found as f64 / n as f64;
    r.masked_psnr_db = psnr_sum / n as f64;
    r.mean_mask_fraction /= n as f64;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldm_edge::model::Model;

    /// The shipped inpainting model on 16 cases: the kept pixels are the input's exactly,
    /// and the decoder's round trip of the hidden object reads right (a blurry decoder, the
    /// limit this ceiling exposed, would fail here).
    #[test]
    fn evaluates_the_shipped_inpainting_model() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/shapes-inpaint-32.ldm");
        let model = Model::open(&path).unwrap();
        let pipe = Pipeline::new(&model, ldm_edge::backend::select("cpu").unwrap());
        let r = evaluate(&pipe, 16, Some(3), None, 0).unwrap();
        assert_eq!((r.cases, r.steps), (16, 3));
        assert_eq!(r.outside_changed_pixels, 0);
        assert!(r.ceiling_found >= 15, "ceiling {}/16", r.ceiling_found);
        assert!(r.ceiling_shape_ok >= r.ceiling_found);
        assert!(r.object_found <= r.shape_ok.min(r.color_ok));
        assert!(r.masked_psnr_db.is_finite() && r.masked_psnr_db > 0.0);
        assert!(r.mean_mask_fraction > 0.0 && r.mean_mask_fraction < 1.0);
        assert!(evaluate(&pipe, 0, None, None, 0).is_err());
    }
}
