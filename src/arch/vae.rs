//! The KL autoencoder (diffusers `AutoencoderKL`), written once over `Ops`.
use super::config::VaeConfig;
use super::nn::{self, Path};
use crate::graph::{Graph, Tracer, ValueType};
use crate::ops::Ops;
use crate::Result;

const EPS: f32 = 1e-6;

/// The mid-block self-attention: one head over all pixels, with a residual.
fn mid_attention<O: Ops>(o: &mut O, p: &Path, x: &O::T, c: usize, groups: usize) -> Result<O::T> {
    let s = o.shape(x);
    let h = nn::group_norm(o, &p.sub("group_norm"), x, c, groups, EPS)?;
    let t = nn::to_tokens(o, &h)?;
    let a = nn::attention(o, p, &t, None, c, 1, c, true)?;
    let a = nn::from_tokens(o, &a, s[2], s[3])?;
    o.add(&a, x)
}

fn mid_block<O: Ops>(o: &mut O, p: &Path, x: &O::T, c: usize, g: usize) -> Result<O::T> {
    let h = nn::resnet(o, &p.sub("resnets").sub(0), x, None, c, c, g, EPS)?;
    let h = mid_attention(o, &p.sub("attentions").sub(0), &h, c, g)?;
    nn::resnet(o, &p.sub("resnets").sub(1), &h, None, c, c, g, EPS)
}

/// Image [B, in, H, W] in [-1, 1] -> posterior moments [B, 2z, H/f, W/f] (mean, then logvar),
/// after `quant_conv`. Parameters under `prefix` (normally `vae.`).
pub fn encode<O: Ops>(o: &mut O, cfg: &VaeConfig, prefix: &str, x: &O::T) -> Result<O::T> {
    let h = encode_local(o, cfg, prefix, x)?;
    encode_global(o, cfg, prefix, &h)
}

/// The encoder up to its mid block: each output pixel sees a bounded neighbourhood (apart from
/// GroupNorm statistics), so a tiled encode runs it in tiles. -> [B, C, H/f, W/f].
pub fn encode_local<O: Ops>(o: &mut O, cfg: &VaeConfig, prefix: &str, x: &O::T) -> Result<O::T> {
    cfg.validate()?;
    let p = Path::root(prefix).sub("encoder");
    let boc = &cfg.block_out_channels;
    let g = cfg.norm_num_groups;
    let mut h = nn::conv(o, &p.sub("conv_in"), x, cfg.in_channels, boc[0], 3, 1, 1)?;
    let mut c = boc[0];
    for (lvl, &cout) in boc.iter().enumerate() {
        let bp = p.sub("down_blocks").sub(lvl);
        for j in 0..cfg.layers_per_block {
            h = nn::resnet(o, &bp.sub("resnets").sub(j), &h, None, c, cout, g, EPS)?;
            c = cout;
        }
        if lvl + 1 < boc.len() {
            // The autoencoder pads right and bottom only, then convolves with stride 2.
            h = nn::conv_padded(
                o,
                &bp.sub("downsamplers").sub(0).sub("conv"),
                &h,
                c,
                c,
                3,
                2,
                [0, 0, 1, 1],
            )?;
        }
    }
    Ok(h)
}

/// The rest of the encoder, at latent resolution: the mid block, whose attention sees every
/// position, and the output convolutions. `encode` is `encode_local` then this.
pub fn encode_global<O: Ops>(o: &mut O, cfg: &VaeConfig, prefix: &str, h: &O::T) -> Result<O::T> {
    let root = Path::root(prefix);
    let p = root.sub("encoder");
    let g = cfg.norm_num_groups;
    let c = *cfg.block_out_channels.last().unwrap_or(&0);
    let h = mid_block(o, &p.sub("mid_block"), h, c, g)?;
    let h = nn::group_norm(o, &p.sub("conv_norm_out"), &h, c, g, EPS)?;
    let h = o.silu(&h)?;
    let z2 = 2 * cfg.latent_channels;
    let h = nn::conv(o, &p.sub("conv_out"), &h, c, z2, 3, 1, 1)?;
    nn::conv(o, &root.sub("quant_conv"), &h, z2, z2, 1, 1, 0)
}

/// The encoder traced to a graph: `image` [batch, in, h, w] -> moments [batch, 2z, h/f, w/f].
pub fn encoder_graph(
    cfg: &VaeConfig,
    prefix: &str,
    batch: usize,
    h: usize,
    w: usize,
) -> Result<Graph> {
    let mut t = Tracer::new();
    let x = t.input("image", &[batch, cfg.in_channels, h, w], ValueType::F32);
    let y = encode(&mut t, cfg, prefix, &x)?;
    Ok(t.finish(&[y]))
}

/// The parameters `encode` reads, traced from it so no hand-kept list can drift from the code:
/// what a decoder-only fine-tune must leave untouched to keep the latent space.
pub fn encoder_params(cfg: &VaeConfig, prefix: &str) -> Result<Vec<(String, Vec<usize>)>> {
    let f = cfg.factor();
    Ok(encoder_graph(cfg, prefix, 1, f, f)?.params())
}

/// Latent [B, z, h, w] (already divided by the latent scale factor) -> image [B, out, h*f, w*f].
pub fn decode<O: Ops>(o: &mut O, cfg: &VaeConfig, prefix: &str, z: &O::T) -> Result<O::T> {
    let h = decode_global(o, cfg, prefix, z)?;
    decode_local(o, cfg, prefix, &h)
}

/// The decoder up to and with its mid block, at latent resolution: the mid block's attention
/// sees every position. -> [B, C, h, w]. `decode` is this then `decode_local`.
pub fn decode_global<O: Ops>(o: &mut O, cfg: &VaeConfig, prefix: &str, z: &O::T) -> Result<O::T> {
    cfg.validate()?;
    let root = Path::root(prefix);
    let p = root.sub("decoder");
    let zc = cfg.latent_channels;
    let c = *cfg.block_out_channels.last().unwrap_or(&0);
    let z = nn::conv(o, &root.sub("post_quant_conv"), z, zc, zc, 1, 1, 0)?;
    let h = nn::conv(o, &p.sub("conv_in"), &z, zc, c, 3, 1, 1)?;
    mid_block(o, &p.sub("mid_block"), &h, c, cfg.norm_num_groups)
}

/// The rest of the decoder, the upsampling blocks: each output pixel sees a bounded
/// neighbourhood (apart from GroupNorm statistics), so a tiled decode runs it in tiles.
/// [B, C, h, w] -> [B, out, h*f, w*f].
pub fn decode_local<O: Ops>(o: &mut O, cfg: &VaeConfig, prefix: &str, h: &O::T) -> Result<O::T> {
    cfg.validate()?;
    let p = Path::root(prefix).sub("decoder");
    let g = cfg.norm_num_groups;
    let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
    let mut c = rev[0];
    let mut h = h.clone();
    for (i, &cout) in rev.iter().enumerate() {
        let bp = p.sub("up_blocks").sub(i);
        for j in 0..=cfg.layers_per_block {
            h = nn::resnet(o, &bp.sub("resnets").sub(j), &h, None, c, cout, g, EPS)?;
            c = cout;
        }
        if i + 1 < rev.len() {
            h = nn::upsample(o, &bp, &h, c)?;
        }
    }
    let h = nn::group_norm(o, &p.sub("conv_norm_out"), &h, c, g, EPS)?;
    let h = o.silu(&h)?;
    nn::conv(o, &p.sub("conv_out"), &h, c, cfg.out_channels, 3, 1, 1)
}
