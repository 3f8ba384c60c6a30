//! The diffusion architectures, written once over [`crate::ops::Ops`]: the UNet, the KL
//! autoencoder and the text encoder. Tracing, training and every backend run this code.
pub mod config;
pub mod init;
pub mod nn;
pub mod task;
pub mod text;
pub mod tiny_decoder;
pub mod unet;
pub mod vae;

pub use config::{HiddenAct, TextEncoderConfig, TextEncoderKind, UNetConfig, VaeConfig};
pub use task::Task;

use crate::graph::{Graph, Tracer, ValueType};
use crate::Result;
use serde::{Deserialize, Serialize};

pub const UNET: &str = "unet.";
pub const VAE: &str = "vae.";
pub const TEXT: &str = "text_encoder.";

/// Every component of a text-to-image model, as stored in the model file's header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub text_encoder: TextEncoderConfig,
    /// Latents are multiplied by this after encoding and divided by it before decoding
    /// (1/std of the training latents; 0.18215 for SD).
    pub latent_scale: f32,
    /// The native image size in pixels (the output size for every task).
    pub image_size: usize,
    /// What the model does; decides the UNet's extra input channels (see [`task`]).
    #[serde(default)]
    pub task: Task,
}

impl ModelConfig {
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            unet: UNetConfig::tiny(),
            vae: VaeConfig::tiny(),
            text_encoder: TextEncoderConfig::tiny(vocab_size),
            latent_scale: 1.0,
            image_size: 32,
            task: Task::Txt2img,
        }
    }

    /// The tiny config for another task: the UNet gains the task's conditioning channels.
    pub fn tiny_for(vocab_size: usize, task: Task) -> Self {
        let mut c = Self::tiny(vocab_size);
        c.set_task(task);
        c
    }

    /// Switches the task and sizes the UNet's input for it.
    pub fn set_task(&mut self, task: Task) {
        self.task = task;
        self.unet.in_channels = task.unet_in_channels(self.vae.latent_channels);
    }

    /// SD-1.5's UNet and VAE with a BERT-base-sized text encoder, for benchmarks.
    pub fn sd15_shaped(vocab_size: usize) -> Self {
        Self {
            unet: UNetConfig::sd15(),
            vae: VaeConfig::sd15(),
            text_encoder: TextEncoderConfig::sd15_shaped(vocab_size),
            latent_scale: 0.18215,
            image_size: 512,
            task: Task::Txt2img,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.unet.validate()?;
        self.vae.validate()?;
        self.text_encoder.validate()?;
        let err = |m: String| Err(crate::Error::Config(m));
        if self.unet.cross_attention_dim != self.text_encoder.d_model {
            return err(format!(
                "unet.cross_attention_dim {} != text_encoder.d_model {}",
                self.unet.cross_attention_dim, self.text_encoder.d_model
            ));
        }
        if self.unet.out_channels != self.vae.latent_channels {
            return err(format!(
                "unet.out_channels {} != vae.latent_channels {}",
                self.unet.out_channels, self.vae.latent_channels
            ));
        }
        let want = self.task.unet_in_channels(self.vae.latent_channels);
        if self.unet.in_channels != want {
            return err(format!(
                "unet.in_channels {} does not fit task {} with {} latent channels (expected {want})",
                self.unet.in_channels, self.task, self.vae.latent_channels
            ));
        }
        if !(self.latent_scale.is_finite() && self.latent_scale > 0.0) {
            return err(format!(
                "latent_scale {} must be finite and > 0",
                self.latent_scale
            ));
        }
        let f = self.vae.factor() << (self.unet.block_out_channels.len() - 1);
        if self.image_size == 0 || self.image_size % f != 0 {
            return err(format!(
                "image_size {} must be a multiple of {f}",
                self.image_size
            ));
        }
        Ok(())
    }

    /// Latent spatial multiple: a latent side must divide by 2^(unet levels - 1).
    pub fn latent_multiple(&self) -> usize {
        1 << (self.unet.block_out_channels.len() - 1)
    }

    /// The UNet graph for a batch at latent size h x w. Inputs: `sample`, `timestep`, `context`,
    /// and for a guidance-distilled UNet `guidance` ([batch], the scale minus one).
    pub fn unet_graph(&self, batch: usize, h: usize, w: usize) -> Result<Graph> {
        let c = &self.unet;
        let mut t = Tracer::new();
        let x = t.input("sample", &[batch, c.in_channels, h, w], ValueType::F32);
        let ts = t.input("timestep", &[batch], ValueType::F32);
        let l = self.text_encoder.max_position_embeddings;
        let ctx = t.input(
            "context",
            &[batch, l, c.cross_attention_dim],
            ValueType::F32,
        );
        let g = c
            .time_cond_proj_dim
            .map(|_| t.input("guidance", &[batch], ValueType::F32));
        let y = unet::forward(&mut t, c, UNET, &x, &ts, &ctx, g.as_ref())?;
        Ok(t.finish(&[y]))
    }

    /// The decoder graph: `latent` [batch, z, h, w] (already divided by latent_scale) -> image.
    pub fn decoder_graph(&self, batch: usize, h: usize, w: usize) -> Result<Graph> {
        let mut t = Tracer::new();
        let z = t.input(
            "latent",
            &[batch, self.vae.latent_channels, h, w],
            ValueType::F32,
        );
        let y = vae::decode(&mut t, &self.vae, VAE, &z)?;
        Ok(t.finish(&[y]))
    }

    /// The encoder graph: `image` [batch, 3, H, W] -> moments [batch, 2z, H/f, W/f].
    pub fn encoder_graph(&self, batch: usize, h: usize, w: usize) -> Result<Graph> {
        vae::encoder_graph(&self.vae, VAE, batch, h, w)
    }

    /// The text encoder graph: `input_ids` [batch, max_position_embeddings] -> hidden states.
    pub fn text_graph(&self, batch: usize) -> Result<Graph> {
        let mut t = Tracer::new();
        let l = self.text_encoder.max_position_embeddings;
        let ids = t.input("input_ids", &[batch, l], ValueType::I64);
        let y = text::forward(&mut t, &self.text_encoder, TEXT, &ids)?;
        Ok(t.finish(&[y]))
    }

    /// Every parameter the architecture reads, with its shape, in a stable order. This is the
    /// contract between training, export and the runtime.
    pub fn param_specs(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let m = self.latent_multiple();
        let mut out = self.text_graph(1)?.params();
        out.extend(self.unet_graph(1, m, m)?.params());
        out.extend(vae::encoder_params(&self.vae, VAE)?);
        out.extend(self.decoder_graph(1, 1, 1)?.params());
        let mut seen = std::collections::HashSet::new();
        out.retain(|(p, _)| seen.insert(p.clone()));
        Ok(out)
    }
}
