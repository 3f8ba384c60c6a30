//! Architecture configs and presets. Field names follow diffusers' config.json where one exists.
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// A UNet2DConditionModel of the LDM / Stable Diffusion family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    /// Which levels carry spatial transformers (CrossAttnDownBlock2D / CrossAttnUpBlock2D).
    pub attention_levels: Vec<bool>,
    /// Heads per level (one value applies to all). diffusers' SD-1.x `attention_head_dim: 8`
    /// actually means 8 heads; it goes here.
    pub num_heads: Vec<usize>,
    /// When set, heads = channels / head_dim instead (SD-2.x style).
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub transformer_layers_per_block: usize,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
    pub norm_num_groups: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    /// Width of the guidance-scale embedding of a guidance-distilled UNet (LCM, Meng et al.),
    /// diffusers' `time_cond_proj_dim`: the scale w enters as `get_guidance_scale_embedding(w)`
    /// through `time_embedding.cond_proj` (a bias-free linear) added to the timestep embedding
    /// (diffusers `TimestepEmbedding(cond_proj_dim=...)`). None for ordinary UNets, whose
    /// headers do not carry the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_cond_proj_dim: Option<usize>,
}

/// An AutoencoderKL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
}

/// Which text transformer a [`TextEncoderConfig`] describes. Both are pre-LayerNorm
/// transformers with learned positions; they differ in parameter names, masking and activation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextEncoderKind {
    /// diffusers `LDMBertModel` (the LDM paper's text-to-image model): bidirectional attention,
    /// no q/k/v biases, GELU. The default, so headers written before `kind` existed still load.
    #[default]
    LdmBert,
    /// transformers `CLIPTextModel` (Stable Diffusion 1.x/2.x): causal attention with q/k/v
    /// biases, `hidden_act`, and `final_layer_norm`; parameters under `text_model.`.
    Clip,
}

/// The feed-forward activation, named as in transformers' `hidden_act`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// Exact (erf) GELU: LDMBert, and OpenCLIP's text tower in SD 2.x.
    #[default]
    Gelu,
    /// `x * sigmoid(1.702 x)`: OpenAI CLIP in SD 1.x.
    QuickGelu,
}

/// A text encoder: an LDMBert or a CLIP text transformer (see [`TextEncoderKind`]). The size
/// fields keep LDMBert's names; for CLIP, `d_model` is `hidden_size`, `encoder_layers` is
/// `num_hidden_layers` and `encoder_ffn_dim` is `intermediate_size`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextEncoderConfig {
    #[serde(default)]
    pub kind: TextEncoderKind,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub head_dim: usize,
    pub encoder_ffn_dim: usize,
    #[serde(default)]
    pub hidden_act: HiddenAct,
}

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Config(msg()))
    }
}

impl UNetConfig {
    /// The tiny config used by tests (diffusers' own UNet tests use the same scale).
    pub fn tiny() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![32, 64],
            layers_per_block: 1,
            attention_levels: vec![true, true],
            num_heads: vec![2],
            head_dim: None,
            transformer_layers_per_block: 1,
            cross_attention_dim: 32,
            use_linear_projection: false,
            norm_num_groups: 32,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            time_cond_proj_dim: None,
        }
    }

    /// Stable Diffusion 1.5's UNet (runwayml/stable-diffusion-v1-5 unet/config.json):
    /// block_out_channels [320, 640, 1280, 1280], layers_per_block 2, attention_head_dim 8,
    /// cross_attention_dim 768, CrossAttn on the first three levels.
    pub fn sd15() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            attention_levels: vec![true, true, true, false],
            num_heads: vec![8],
            head_dim: None,
            transformer_layers_per_block: 1,
            cross_attention_dim: 768,
            use_linear_projection: false,
            norm_num_groups: 32,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            time_cond_proj_dim: None,
        }
    }

    pub fn heads_at(&self, level: usize, channels: usize) -> usize {
        match self.head_dim {
            Some(d) if d > 0 => channels / d,
            _ => *self
                .num_heads
                .get(level)
                .or(self.num_heads.last())
                .unwrap_or(&1),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        check(n >= 1, || "unet.block_out_channels is empty".into())?;
        check(self.attention_levels.len() == n, || {
            format!(
                "unet.attention_levels has {} entries for {n} levels",
                self.attention_levels.len()
            )
        })?;
        check(self.in_channels > 0 && self.out_channels > 0, || {
            "unet channels must be > 0".into()
        })?;
        check(self.layers_per_block > 0, || {
            "unet.layers_per_block must be > 0".into()
        })?;
        check(
            !self.num_heads.is_empty() || self.head_dim.is_some(),
            || "unet needs num_heads or head_dim".into(),
        )?;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            check(c > 0 && c % self.norm_num_groups.max(1) == 0, || {
                format!(
                    "unet level {i}: {c} channels not divisible by {} groups",
                    self.norm_num_groups
                )
            })?;
            let h = self.heads_at(i, c);
            check(h > 0 && c % h == 0, || {
                format!("unet level {i}: {c} channels not divisible into {h} heads")
            })?;
        }
        check(self.block_out_channels[0] % 2 == 0, || {
            "unet.block_out_channels[0] must be even".into()
        })
    }
}

impl VaeConfig {
    pub fn tiny() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![32, 32, 64],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 32,
        }
    }

    /// Stable Diffusion's AutoencoderKL (runwayml/stable-diffusion-v1-5 vae/config.json), f = 8.
    pub fn sd15() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
        }
    }

    /// Spatial downsampling factor f = 2^(levels-1).
    pub fn factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    pub fn validate(&self) -> Result<()> {
        check(!self.block_out_channels.is_empty(), || {
            "vae.block_out_channels is empty".into()
        })?;
        check(
            self.layers_per_block > 0 && self.latent_channels > 0,
            || "vae sizes must be > 0".into(),
        )?;
        for &c in &self.block_out_channels {
            check(c > 0 && c % self.norm_num_groups.max(1) == 0, || {
                format!(
                    "vae: {c} channels not divisible by {} groups",
                    self.norm_num_groups
                )
            })?;
        }
        Ok(())
    }
}

impl TextEncoderConfig {
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            kind: TextEncoderKind::LdmBert,
            hidden_act: HiddenAct::Gelu,
            vocab_size,
            max_position_embeddings: 16,
            d_model: 32,
            encoder_layers: 2,
            encoder_attention_heads: 2,
            head_dim: 16,
            encoder_ffn_dim: 64,
        }
    }

    /// A BERT-base-sized encoder whose width (768) matches SD-1.5's cross_attention_dim, for
    /// benchmarks: 12 layers, 12 heads of 64, FFN 3072, 77 positions (CLIP ViT-L/14's sizes).
    pub fn sd15_shaped(vocab_size: usize) -> Self {
        Self {
            kind: TextEncoderKind::LdmBert,
            hidden_act: HiddenAct::Gelu,
            vocab_size,
            max_position_embeddings: 77,
            d_model: 768,
            encoder_layers: 12,
            encoder_attention_heads: 12,
            head_dim: 64,
            encoder_ffn_dim: 3072,
        }
    }

    pub fn validate(&self) -> Result<()> {
        check(
            self.vocab_size > 0 && self.max_position_embeddings > 0,
            || "text encoder sizes must be > 0".into(),
        )?;
        check(
            self.d_model > 0 && self.encoder_attention_heads > 0 && self.head_dim > 0,
            || "text encoder widths must be > 0".into(),
        )?;
        check(
            self.kind != TextEncoderKind::LdmBert || self.hidden_act == HiddenAct::Gelu,
            || "text encoder: ldm_bert supports only hidden_act gelu".into(),
        )
    }
}
