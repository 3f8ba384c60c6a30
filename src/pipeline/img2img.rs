//! Image-to-image (SDEdit): the init image's latent is noised to a level set by `strength`
//! and denoised from there, so low strengths keep the layout and high ones keep little.
use super::denoise::Start;
use super::progress::{Cancel, Progress, Steps};
use super::shared::{image_hw, Generated, Pipeline};
use super::txt2img::Txt2Img;
use crate::arch::Task;
use crate::backend::Tensor;
use crate::{Error, Result};

/// The strength `ldm generate --init-image` uses when none is given.
pub const DEFAULT_STRENGTH: f32 = 0.75;

/// One img2img request: txt2img's settings (its width and height must be the image's) plus the
/// init image [1, 3, H, W] in [-1, 1] and the strength in [0, 1].
#[derive(Clone, Debug)]
pub struct Img2Img {
    pub params: Txt2Img,
    pub image: Tensor,
    /// 0 = the autoencoder's reconstruction of the image, 1 = txt2img (the image is ignored).
    pub strength: f32,
}

impl Img2Img {
    /// txt2img's defaults at the image's size, with [`DEFAULT_STRENGTH`].
    pub fn new(model: &crate::model::Model, prompt: &str, image: Tensor) -> Result<Self> {
        let mut params = Txt2Img::new(model, prompt)?;
        let (h, w) = image_hw(&image, "init image")?;
        (params.width, params.height) = (w, h);
        Ok(Self {
            params,
            image,
            strength: DEFAULT_STRENGTH,
        })
    }

    /// How many of the schedule's steps run: the last round(steps * strength).
    pub fn steps_to_run(&self) -> usize {
        (self.params.steps as f32 * self.strength).round() as usize
    }
}

impl Pipeline<'_> {
    /// Runs an img2img request on a txt2img model (CPU rerun on a GPU fault, as txt2img).
    pub fn img2img(
        &self,
        req: &Img2Img,
        on_step: &mut dyn FnMut(Progress),
        cancel: &Cancel,
    ) -> Result<Generated> {
        self.require_task(Task::Txt2img)?;
        let p = &req.params;
        if !(0.0..=1.0).contains(&req.strength) {
            return Err(Error::Input(format!(
                "strength must be in [0, 1], got {}",
                req.strength
            )));
        }
        let (h, w) = image_hw(&req.image, "init image")?;
        if (w, h) != (p.width, p.height) {
            return Err(Error::Input(format!(
                "the init image is {w}x{h} but the request is for {}x{}",
                p.width, p.height
            )));
        }
        super::shared::check_prompt(&p.prompt)?;
        super::shared::check_sampling(p.steps, p.guidance)?;
        self.latent_size(w, h)?;
        let k = req.steps_to_run();
        self.with_fallback(|b| {
            let mut steps = Steps::new(&mut *on_step, k).with_preview(self.preview_plan(b, w, h)?);
            if k == p.steps {
                // The image is fully noised away: exactly txt2img, same seed, same result.
                return self.sample_on(b, p, Start::Noise, &[], &mut steps, cancel);
            }
            let z0 = self.encode_on(b, &req.image)?;
            if k == 0 {
                // No step to run: what remains is the autoencoder's reconstruction.
                let image = self.decode_on(b, &z0)?;
                return Generated::from_image(image, z0);
            }
            let start = Start::Latent {
                z0: &z0.data,
                first: p.steps - k,
            };
            self.sample_on(b, p, start, &[], &mut steps, cancel)
        })
    }
}
