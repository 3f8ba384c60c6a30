//! Inpainting with a task-inpaint model: the mask and the masked image's latent are
//! concatenated to the UNet input (conventions in [`crate::arch::task`]); afterwards the kept
//! pixels are pasted back, so only the hole changes.
use super::denoise::Start;
use super::progress::{Cancel, Progress, Steps};
use super::shared::{image_hw, Generated, Pipeline};
use super::txt2img::Txt2Img;
use crate::arch::task::{mask_to_latent, masked_image};
use crate::arch::Task;
use crate::backend::Tensor;
use crate::{Error, Result};

/// One inpainting request: txt2img's settings (its width and height must be the image's), the
/// image [1, 3, H, W] in [-1, 1] and the mask [H * W], where >= 0.5 marks the hole to generate.
#[derive(Clone, Debug)]
pub struct Inpaint {
    pub params: Txt2Img,
    pub image: Tensor,
    pub mask: Vec<f32>,
}

impl Inpaint {
    /// txt2img's defaults at the image's size.
    pub fn new(
        model: &crate::model::Model,
        prompt: &str,
        image: Tensor,
        mask: Vec<f32>,
    ) -> Result<Self> {
        let mut params = Txt2Img::new(model, prompt)?;
        let (h, w) = image_hw(&image, "image")?;
        (params.width, params.height) = (w, h);
        Ok(Self {
            params,
            image,
            mask,
        })
    }
}

impl Pipeline<'_> {
    /// Runs an inpainting request (CPU rerun on a GPU fault, as txt2img).
    pub fn inpaint(
        &self,
        req: &Inpaint,
        on_step: &mut dyn FnMut(Progress),
        cancel: &Cancel,
    ) -> Result<Generated> {
        self.require_task(Task::Inpaint)?;
        let p = &req.params;
        let (h, w) = image_hw(&req.image, "image")?;
        if (w, h) != (p.width, p.height) {
            return Err(Error::Input(format!(
                "the image is {w}x{h} but the request is for {}x{}",
                p.width, p.height
            )));
        }
        if req.mask.len() != h * w {
            return Err(Error::Input(format!(
                "the mask has {} pixels but the image is {w}x{h} ({})",
                req.mask.len(),
                h * w
            )));
        }
        super::shared::check_prompt(&p.prompt)?;
        super::shared::check_sampling(p.steps, p.guidance)?;
        self.latent_size(w, h)?;
        // Training saw a binary mask; a soft one would put the model off its distribution.
        let mask: Vec<f32> = req
            .mask
            .iter()
            .map(|&m| if m >= 0.5 { 1.0 } else { 0.0 })
            .collect();
        let f = self.model.config.vae.factor();
        let mask_lat = mask_to_latent(&mask, h, w, f)?;
        let masked = Tensor::new(
            req.image.shape.clone(),
            masked_image(&req.image.data, &mask),
        )?;
        self.with_fallback(|b| {
            let masked_lat = self.encode_on(b, &masked)?;
            let mut cond = mask_lat.clone();
            cond.extend_from_slice(&masked_lat.data);
            let mut steps = Steps::new(&mut *on_step, p.steps)
                .with_preview(self.preview_plan(b, p.width, p.height)?);
            let out = self.sample_on(b, p, Start::Noise, &cond, &mut steps, cancel)?;
            let image = composite(&out.image, &req.image, &mask)?;
            Generated::from_image(image, out.latents)
        })
    }
}

/// The generated image inside the hole (`mask` > 0, binary as the pipeline makes it), the
/// input outside it: how every inpainted output is assembled, and so how evaluations paste.
pub fn composite(generated: &Tensor, input: &Tensor, mask: &[f32]) -> Result<Tensor> {
    if generated.shape != input.shape {
        return Err(Error::shape(
            "inpaint",
            format!(
                "decoded {:?} differs from the input {:?}",
                generated.shape, input.shape
            ),
        ));
    }
    let hw = mask.len();
    if hw == 0 || hw * input.shape[..2].iter().product::<usize>() != input.data.len() {
        return Err(Error::Input(format!(
            "a mask of {hw} pixels does not fit an image of shape {:?}",
            input.shape
        )));
    }
    let data = generated
        .data
        .iter()
        .zip(&input.data)
        .enumerate()
        .map(|(i, (&g, &x))| if mask[i % hw] > 0.0 { g } else { x })
        .collect();
    Tensor::new(input.shape.clone(), data)
}
