//! Model sizes for training. `micro` is for CI (seconds per step on 2 cores); `shapes` is what
//! the shipped 32 px model is trained with.
use ldm_edge::arch::{ModelConfig, TextEncoderConfig, UNetConfig, VaeConfig};

pub fn config(preset: &str, vocab: usize) -> anyhow::Result<ModelConfig> {
    let mut cfg = ModelConfig::tiny(vocab);
    match preset {
        "micro" => {}
        "shapes" => {
            cfg.vae = VaeConfig {
                block_out_channels: vec![32, 64, 64],
                ..VaeConfig::tiny()
            };
            cfg.unet = UNetConfig {
                block_out_channels: vec![64, 128],
                num_heads: vec![4],
                cross_attention_dim: 64,
                ..UNetConfig::tiny()
            };
            cfg.text_encoder = TextEncoderConfig {
                d_model: 64,
                encoder_attention_heads: 4,
                head_dim: 16,
                encoder_ffn_dim: 128,
                // Shapes captions reach 14 words + [CLS]/[SEP]; room for word pieces.
                max_position_embeddings: 20,
                ..TextEncoderConfig::tiny(vocab)
            };
        }
        // Wider UNet and a deeper, wider text encoder for attribute binding (positions and
        // relations were the weak attributes of `shapes`). Sized for GPU training, where width
        // costs little; q8 stays under the 25 MB budget of a shipped model.
        "shapes-m" => {
            cfg.vae = VaeConfig {
                block_out_channels: vec![32, 64, 64],
                ..VaeConfig::tiny()
            };
            cfg.unet = UNetConfig {
                block_out_channels: vec![96, 192],
                num_heads: vec![4],
                cross_attention_dim: 96,
                ..UNetConfig::tiny()
            };
            cfg.text_encoder = TextEncoderConfig {
                d_model: 96,
                encoder_layers: 3,
                encoder_attention_heads: 4,
                head_dim: 24,
                encoder_ffn_dim: 192,
                max_position_embeddings: 20,
                ..TextEncoderConfig::tiny(vocab)
            };
        }
        other => anyhow::bail!("unknown preset `{other}` (micro, shapes, shapes-m)"),
    }
    cfg.validate()?;
    Ok(cfg)
}
