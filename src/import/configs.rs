//! diffusers/transformers component configs -> our architecture configs. Each function reads
//! every field (see [`Fields`]): mapped, pinned to the value we implement, or ignored because it
//! cannot change an f32 result.
use super::fields::Fields;
use crate::arch::{HiddenAct, TextEncoderConfig, TextEncoderKind, UNetConfig, VaeConfig};
use crate::Result;
use serde_json::json;

/// An int or a per-level list, as diffusers allows for `attention_head_dim` and friends.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum IntOrList {
    One(usize),
    Many(Vec<usize>),
}

impl IntOrList {
    fn into_vec(self) -> Vec<usize> {
        match self {
            IntOrList::One(n) => vec![n],
            IntOrList::Many(v) => v,
        }
    }
}

/// `UNet2DConditionModel` config -> (our config, sample_size in latent pixels).
pub fn unet(mut f: Fields) -> Result<(UNetConfig, usize)> {
    let down: Vec<String> = f.req("down_block_types")?;
    let up: Vec<String> = f.req("up_block_types")?;
    let mut attention_levels = Vec::new();
    for t in &down {
        attention_levels.push(match t.as_str() {
            "CrossAttnDownBlock2D" => true,
            "DownBlock2D" => false,
            _ => return Err(f.err("down_block_types", format!("block type {t} is unsupported"))),
        });
    }
    // Our UNet mirrors the down path on the way up, as every SD 1.x/2.x config does.
    let mirrored: Vec<&str> = attention_levels
        .iter()
        .rev()
        .map(|&a| if a { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    if up != mirrored {
        return Err(f.err(
            "up_block_types",
            format!("{up:?} does not mirror down_block_types (expected {mirrored:?})"),
        ));
    }
    // diffusers' historical naming: without num_attention_heads, `attention_head_dim` is the
    // number of heads (an int for SD 1.x, a per-level list for SD 2.x).
    let heads: Option<IntOrList> = f.opt("num_attention_heads")?;
    let heads = match heads {
        Some(h) => h,
        None => f.req::<IntOrList>("attention_head_dim")?,
    }
    .into_vec();
    f.raw("attention_head_dim");
    let tlpb = f
        .or("transformer_layers_per_block", IntOrList::One(1))?
        .into_vec();
    let transformer_layers_per_block = match tlpb.as_slice() {
        [n, rest @ ..] if rest.iter().all(|m| m == n) => *n,
        _ => {
            return Err(f.err(
                "transformer_layers_per_block",
                format!("{tlpb:?}: only one depth for all levels is supported"),
            ))
        }
    };
    let block_out_channels: Vec<usize> = f.req("block_out_channels")?;
    if heads.len() != 1 && heads.len() != block_out_channels.len() {
        return Err(f.err("attention_head_dim", "needs one entry per level"));
    }
    let cfg = UNetConfig {
        in_channels: f.req("in_channels")?,
        out_channels: f.req("out_channels")?,
        block_out_channels,
        layers_per_block: f.req("layers_per_block")?,
        attention_levels,
        num_heads: heads,
        head_dim: None,
        transformer_layers_per_block,
        cross_attention_dim: f.req("cross_attention_dim")?,
        use_linear_projection: f.or("use_linear_projection", false)?,
        norm_num_groups: f.or("norm_num_groups", 32)?,
        flip_sin_to_cos: f.or("flip_sin_to_cos", true)?,
        freq_shift: f.or("freq_shift", 0.0)?,
        // LCM-distilled UNets (diffusers `time_cond_proj_dim`); null elsewhere.
        time_cond_proj_dim: f.opt("time_cond_proj_dim")?,
    };
    let sample_size: usize = f.or("sample_size", 64)?;
    for (k, v) in [
        ("act_fn", json!("silu")),
        ("attention_type", json!("default")),
        ("center_input_sample", json!(false)),
        ("class_embeddings_concat", json!(false)),
        ("conv_in_kernel", json!(3)),
        ("conv_out_kernel", json!(3)),
        ("downsample_padding", json!(1)),
        ("dual_cross_attention", json!(false)),
        ("mid_block_scale_factor", json!(1)),
        ("mid_block_type", json!("UNetMidBlock2DCrossAttn")),
        ("norm_eps", json!(1e-5)),
        ("only_cross_attention", json!(false)),
        ("resnet_out_scale_factor", json!(1)),
        ("resnet_skip_time_act", json!(false)),
        ("resnet_time_scale_shift", json!("default")),
        ("time_embedding_type", json!("positional")),
    ] {
        f.expect(k, v)?;
    }
    for k in [
        "addition_embed_type",
        "addition_time_embed_dim",
        "class_embed_type",
        "cross_attention_norm",
        "encoder_hid_dim",
        "encoder_hid_dim_type",
        "mid_block_only_cross_attention",
        "num_class_embeds",
        "projection_class_embeddings_input_dim",
        "reverse_transformer_layers_per_block",
        "time_embedding_act_fn",
        "time_embedding_dim",
        "timestep_post_act",
    ] {
        f.expect_null(k)?;
    }
    // dropout: inference. upcast_attention: computes attention in f32, which we always do.
    // addition_embed_type_num_heads: only read when addition_embed_type is set (checked null).
    f.ignore(&[
        "dropout",
        "upcast_attention",
        "addition_embed_type_num_heads",
    ]);
    f.finish()?;
    cfg.validate()?;
    Ok((cfg, sample_size))
}

/// `AutoencoderKL` config -> (our config, scaling_factor, sample_size in image pixels).
pub fn vae(mut f: Fields) -> Result<(VaeConfig, f32, usize)> {
    let boc: Vec<usize> = f.req("block_out_channels")?;
    for (k, want) in [
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ] {
        let types: Vec<String> = f.req(k)?;
        if types.len() != boc.len() || types.iter().any(|t| t != want) {
            return Err(f.err(
                k,
                format!("{types:?}: only {want} at every level is supported"),
            ));
        }
    }
    let cfg = VaeConfig {
        in_channels: f.or("in_channels", 3)?,
        out_channels: f.or("out_channels", 3)?,
        block_out_channels: boc,
        layers_per_block: f.or("layers_per_block", 1)?,
        latent_channels: f.or("latent_channels", 4)?,
        norm_num_groups: f.or("norm_num_groups", 32)?,
    };
    let scale: f32 = f.or("scaling_factor", 0.18215)?;
    let sample_size: usize = f.or("sample_size", 512)?;
    f.expect("act_fn", json!("silu"))?;
    f.expect("mid_block_add_attention", json!(true))?;
    f.expect("use_quant_conv", json!(true))?;
    f.expect("use_post_quant_conv", json!(true))?;
    for k in ["latents_mean", "latents_std", "shift_factor"] {
        f.expect_null(k)?;
    }
    // force_upcast: runs the VAE in f32 under fp16 pipelines; we are f32 already.
    f.ignore(&["force_upcast"]);
    f.finish()?;
    cfg.validate()?;
    Ok((cfg, scale, sample_size))
}

/// transformers `CLIPTextModel` config -> our text encoder config.
pub fn clip_text(mut f: Fields) -> Result<TextEncoderConfig> {
    let hidden_act = match f.or("hidden_act", "quick_gelu".to_string())?.as_str() {
        "quick_gelu" => HiddenAct::QuickGelu,
        "gelu" => HiddenAct::Gelu,
        a => {
            return Err(f.err(
                "hidden_act",
                format!("{a} is unsupported (quick_gelu, gelu)"),
            ))
        }
    };
    let d: usize = f.req("hidden_size")?;
    let heads: usize = f.req("num_attention_heads")?;
    if heads == 0 || d % heads != 0 {
        return Err(f.err(
            "num_attention_heads",
            format!("{heads} does not divide {d}"),
        ));
    }
    let cfg = TextEncoderConfig {
        kind: TextEncoderKind::Clip,
        vocab_size: f.req("vocab_size")?,
        max_position_embeddings: f.req("max_position_embeddings")?,
        d_model: d,
        encoder_layers: f.req("num_hidden_layers")?,
        encoder_attention_heads: heads,
        head_dim: d / heads,
        encoder_ffn_dim: f.req("intermediate_size")?,
        hidden_act,
    };
    f.expect("layer_norm_eps", json!(1e-5))?;
    if let Some(t) = f.opt::<String>("model_type")? {
        if t != "clip_text_model" {
            return Err(f.err(
                "model_type",
                format!("{t}: only clip_text_model is supported"),
            ));
        }
    }
    f.ignore(&[
        "architectures",
        "attention_dropout",
        "dropout",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "dtype",
        "torch_dtype",
        "transformers_version",
        "initializer_factor",
        "initializer_range",
        // Only CLIPTextModelWithProjection has the projection; SD reads the hidden states.
        "projection_dim",
    ]);
    f.finish()?;
    cfg.validate()?;
    Ok(cfg)
}
