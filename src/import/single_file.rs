//! Single-file original Stable Diffusion checkpoints (CompVis/Stability layout:
//! `model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`).
//!
//! The names are translated onto ours (which follow diffusers) with the same rules as diffusers'
//! single-file loader (`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`,
//! `convert_ldm_clip_checkpoint` in diffusers/loaders/single_file_utils.py). The tensors
//! themselves are used as stored: the only layout difference, the VAE attention's 1x1
//! convolutions standing for linear layers, is the same numbers in row-major order and is
//! accepted by the shape check in `Import::matched`.
//!
//! A single file does not say which architecture it is, so the numbers this mapping needs
//! (`layers_per_block`, the number of VAE levels) come from the config folder the caller passes.
//! Each key is parsed exactly; a key that fits no rule is reported, never guessed at.
//!
//! SD-2.x files hold the text encoder in OpenCLIP form (`cond_stage_model.model.*`, as
//! `convert_open_clip_checkpoint` reads it): q/k/v are stacked in one `in_proj` tensor, which is
//! imported as three parts along its first axis, and the file has one more transformer layer
//! than the diffusers config (SD-2 conditions on the penultimate layer's output), which is
//! skipped. SDXL files (`conditioner.*`) are refused with an error that says so.
use crate::arch::{ModelConfig, TEXT, UNET, VAE};
use crate::{Error, Result};
use std::collections::BTreeMap;

const UNET_PREFIX: &str = "model.diffusion_model.";
const VAE_PREFIX: &str = "first_stage_model.";
const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
const OPENCLIP_PREFIX: &str = "cond_stage_model.model.";

/// LatentDiffusion's noise-schedule buffers (and its `logvar` parameter): training state, not
/// weights. The schedule used for sampling comes from the config folder's scheduler instead.
const SCHEDULE_BUFFERS: [&str; 15] = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "lvlb_weights",
    "scale_factor",
];

/// What one key of the file becomes.
enum Mapped {
    Ours(String),
    /// The i-th of n equal parts along the first axis becomes entry i.
    Parts(Vec<String>),
    /// Known and not a weight: skipped with this reason in the log.
    Skip(&'static str),
    /// Fits no rule.
    Unknown,
}

/// Where one of our parameters comes from: the file's tensor name and, for a fused tensor,
/// which of how many parts along its first axis.
pub type Origin = (String, Option<(usize, usize)>);

/// Our name for every weight in the file. Keys that fit no rule are an error listing them;
/// known non-weights are skipped with a log line.
pub fn map_names<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    config: &ModelConfig,
) -> Result<BTreeMap<String, Origin>> {
    let keys: Vec<&String> = keys.into_iter().collect();
    let layers = config.text_encoder.encoder_layers;
    // The one OpenCLIP layer past the config's count is the unused last layer only when it is
    // exactly the file's last one; any other surplus means the config does not fit the file.
    let openclip_layers = keys
        .iter()
        .filter_map(|k| {
            let r = k.strip_prefix(OPENCLIP_PREFIX)?;
            index(r.strip_prefix("transformer.resblocks.")?).map(|(i, _)| i + 1)
        })
        .max();
    let skip_layer = (openclip_layers == Some(layers + 1)).then_some(layers);
    if let Some(k) = keys.iter().find(|k| k.starts_with("conditioner.")) {
        return Err(Error::Input(format!(
            "`{k}`: this looks like an SDXL single file (conditioner.*), which is not supported"
        )));
    }
    let mut names = BTreeMap::new();
    let mut unknown = Vec::new();
    let mut skipped: BTreeMap<&'static str, usize> = BTreeMap::new();
    for k in keys {
        let parts = match map_key(k, config, skip_layer) {
            Mapped::Ours(ours) => vec![(ours, None)],
            Mapped::Parts(ours) => {
                let n = ours.len();
                ours.into_iter()
                    .enumerate()
                    .map(|(i, o)| (o, Some((i, n))))
                    .collect()
            }
            Mapped::Skip(why) => {
                *skipped.entry(why).or_default() += 1;
                continue;
            }
            Mapped::Unknown => {
                unknown.push(k.as_str());
                continue;
            }
        };
        for (ours, chunk) in parts {
            if let Some((prev, _)) = names.insert(ours.clone(), (k.clone(), chunk)) {
                return Err(Error::Config(format!(
                    "`{prev}` and `{k}` both map to `{ours}`"
                )));
            }
        }
    }
    for (why, n) in skipped {
        log::info!("import: skipping {n} tensor(s): {why}");
    }
    if !unknown.is_empty() {
        return Err(Error::Config(format!(
            "{} tensor(s) in the single file fit no SD-1.x/SD-2.x name rule: {}{}",
            unknown.len(),
            unknown
                .iter()
                .take(8)
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if unknown.len() > 8 { ", ..." } else { "" }
        )));
    }
    Ok(names)
}

fn map_key(k: &str, config: &ModelConfig, skip_layer: Option<usize>) -> Mapped {
    if let Some(rest) = k.strip_prefix(UNET_PREFIX) {
        return unet_name(rest, config.unet.layers_per_block)
            .map_or(Mapped::Unknown, |n| Mapped::Ours(format!("{UNET}{n}")));
    }
    if let Some(rest) = k.strip_prefix(VAE_PREFIX) {
        return vae_name(rest, config.vae.block_out_channels.len())
            .map_or(Mapped::Unknown, |n| Mapped::Ours(format!("{VAE}{n}")));
    }
    if let Some(rest) = k.strip_prefix(OPENCLIP_PREFIX) {
        return openclip(rest, skip_layer);
    }
    if let Some(rest) = k.strip_prefix(CLIP_PREFIX) {
        if rest.ends_with(".position_ids") {
            return Mapped::Skip("CLIP position_ids buffers (positions are 0..n)");
        }
        // Most files keep transformers' `text_model.` level; some converters drop it.
        let rest = rest.strip_prefix("text_model.").unwrap_or(rest);
        return Mapped::Ours(format!("{TEXT}text_model.{rest}"));
    }
    if k.starts_with("model_ema.") {
        // diffusers also takes the non-EMA weights unless asked for the EMA ones.
        return Mapped::Skip("model_ema.* (EMA copy of the UNet; the non-EMA weights are used)");
    }
    if SCHEDULE_BUFFERS.contains(&k) {
        return Mapped::Skip("noise-schedule buffers (the config folder's scheduler is used)");
    }
    Mapped::Unknown
}

/// `rest` is the key without `cond_stage_model.model.`; OpenCLIP's text tower -> transformers'
/// CLIPTextModel names (diffusers' DIFFUSERS_TO_LDM_MAPPING["openclip"]).
fn openclip(rest: &str, skip_layer: Option<usize>) -> Mapped {
    let tm = |n: &str| Mapped::Ours(format!("{TEXT}text_model.{n}"));
    match rest {
        "token_embedding.weight" => return tm("embeddings.token_embedding.weight"),
        "positional_embedding" => return tm("embeddings.position_embedding.weight"),
        "ln_final.weight" => return tm("final_layer_norm.weight"),
        "ln_final.bias" => return tm("final_layer_norm.bias"),
        // CLIPTextModel (what SD-2's diffusers config names) has no projection head, and
        // logit_scale belongs to the contrastive loss.
        "text_projection" | "logit_scale" => {
            return Mapped::Skip("OpenCLIP text_projection/logit_scale (not used by SD-2)")
        }
        _ => {}
    }
    let Some((i, r)) = rest.strip_prefix("transformer.resblocks.").and_then(index) else {
        return Mapped::Unknown;
    };
    if Some(i) == skip_layer {
        return Mapped::Skip("the last OpenCLIP layer (SD-2 uses the penultimate layer's output)");
    }
    let layer = format!("{TEXT}text_model.encoder.layers.{i}.");
    if let Some(leaf) = r.strip_prefix("attn.in_proj_") {
        return Mapped::Parts(
            ["q", "k", "v"]
                .iter()
                .map(|p| format!("{layer}self_attn.{p}_proj.{leaf}"))
                .collect(),
        );
    }
    for (old, new) in [
        ("attn.out_proj.", "self_attn.out_proj."),
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ] {
        if let Some(leaf) = r.strip_prefix(old) {
            return Mapped::Ours(format!("{layer}{new}{leaf}"));
        }
    }
    Mapped::Unknown
}

/// Splits `N.rest` into (N, rest).
fn index(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// ldm `ResBlock` children -> diffusers `ResnetBlock2D` ones.
fn unet_resnet(rest: &str) -> Option<String> {
    for (old, new) in [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."),
        ("skip_connection.", "conv_shortcut."),
    ] {
        if let Some(leaf) = rest.strip_prefix(old) {
            return Some(format!("{new}{leaf}"));
        }
    }
    None
}

/// `rest` is the key without `model.diffusion_model.`. The ldm UNet numbers its blocks
/// sequentially: `input_blocks.0` is conv_in, then per level `layers_per_block` (resnet,
/// attention?) blocks and, except at the last level, one downsampler block; `output_blocks` hold
/// `layers_per_block + 1` (resnet, attention?, upsampler?) blocks per level. Attention sits at
/// child 1; an upsampler at child 1 without attention and 2 with it.
fn unet_name(rest: &str, lpb: usize) -> Option<String> {
    for (old, new) in [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ] {
        if let Some(leaf) = rest.strip_prefix(old) {
            return Some(format!("{new}{leaf}"));
        }
    }
    let per = lpb + 1;
    if let Some(r) = rest.strip_prefix("input_blocks.") {
        let (i, r) = index(r)?;
        let (child, r) = index(r)?;
        if i == 0 {
            return None;
        }
        let (b, j) = ((i - 1) / per, (i - 1) % per);
        return match child {
            0 if j == lpb => Some(format!(
                "down_blocks.{b}.downsamplers.0.conv.{}",
                r.strip_prefix("op.")?
            )),
            0 => Some(format!("down_blocks.{b}.resnets.{j}.{}", unet_resnet(r)?)),
            1 if j < lpb => Some(format!("down_blocks.{b}.attentions.{j}.{r}")),
            _ => None,
        };
    }
    if let Some(r) = rest.strip_prefix("middle_block.") {
        let (i, r) = index(r)?;
        return match i {
            0 | 2 => Some(format!("mid_block.resnets.{}.{}", i / 2, unet_resnet(r)?)),
            1 => Some(format!("mid_block.attentions.0.{r}")),
            _ => None,
        };
    }
    if let Some(r) = rest.strip_prefix("output_blocks.") {
        let (i, r) = index(r)?;
        let (child, r) = index(r)?;
        let (b, j) = (i / per, i % per);
        let up = |leaf: &str| format!("up_blocks.{b}.upsamplers.0.conv.{leaf}");
        return match (child, r.strip_prefix("conv.")) {
            (0, _) => Some(format!("up_blocks.{b}.resnets.{j}.{}", unet_resnet(r)?)),
            // A transformer has no `conv` child, so `1.conv.*` is an upsampler.
            (1, Some(leaf)) if j == lpb => Some(up(leaf)),
            (1, None) => Some(format!("up_blocks.{b}.attentions.{j}.{r}")),
            (2, Some(leaf)) if j == lpb => Some(up(leaf)),
            _ => None,
        };
    }
    None
}

/// ldm VAE `ResnetBlock` children -> diffusers ones (only the shortcut is renamed).
fn vae_resnet(r: &str) -> Option<String> {
    let (child, leaf) = r.split_once('.')?;
    let child = match child {
        "norm1" | "conv1" | "norm2" | "conv2" => child,
        "nin_shortcut" => "conv_shortcut",
        _ => return None,
    };
    Some(format!("{child}.{leaf}"))
}

/// `rest` is the key without `first_stage_model.`. The ldm decoder numbers its `up` levels from
/// the lowest resolution's end (`up.{n-1}` runs first), diffusers' `up_blocks` in run order.
fn vae_name(rest: &str, levels: usize) -> Option<String> {
    for fixed in ["quant_conv.", "post_quant_conv."] {
        if rest.starts_with(fixed) {
            return Some(rest.to_string());
        }
    }
    let (side, r) = rest.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let inner = |r: &str| -> Option<String> {
        if r.starts_with("conv_in.") || r.starts_with("conv_out.") {
            return Some(r.to_string());
        }
        if let Some(leaf) = r.strip_prefix("norm_out.") {
            return Some(format!("conv_norm_out.{leaf}"));
        }
        if let Some(m) = r.strip_prefix("mid.") {
            let (child, leaf) = m.split_once('.')?;
            return match child {
                "block_1" => Some(format!("mid_block.resnets.0.{}", vae_resnet(leaf)?)),
                "block_2" => Some(format!("mid_block.resnets.1.{}", vae_resnet(leaf)?)),
                "attn_1" => {
                    let (p, leaf) = leaf.split_once('.')?;
                    let p = match p {
                        "norm" => "group_norm",
                        "q" => "to_q",
                        "k" => "to_k",
                        "v" => "to_v",
                        "proj_out" => "to_out.0",
                        _ => return None,
                    };
                    Some(format!("mid_block.attentions.0.{p}.{leaf}"))
                }
                _ => None,
            };
        }
        let (kind, r) = r.split_once('.')?;
        let (lvl, r) = index(r)?;
        if lvl >= levels {
            return None;
        }
        let (blocks, lvl, sampler) = match (side, kind) {
            ("encoder", "down") => ("down_blocks", lvl, "downsample."),
            ("decoder", "up") => ("up_blocks", levels - 1 - lvl, "upsample."),
            _ => return None,
        };
        if let Some(b) = r.strip_prefix("block.") {
            let (j, leaf) = index(b)?;
            return Some(format!("{blocks}.{lvl}.resnets.{j}.{}", vae_resnet(leaf)?));
        }
        let leaf = r.strip_prefix(sampler)?.strip_prefix("conv.")?;
        let s = if side == "encoder" {
            "downsamplers"
        } else {
            "upsamplers"
        };
        Some(format!("{blocks}.{lvl}.{s}.0.conv.{leaf}"))
    };
    Some(format!("{side}.{}", inner(r)?))
}
