//! The LDM / Stable Diffusion UNet (diffusers `UNet2DConditionModel`), written once over `Ops`.
use super::config::UNetConfig;
use super::nn::{self, Path};
use crate::ops::Ops;
use crate::{Error, Result};

const RESNET_EPS: f32 = 1e-5;
const TRANSFORMER_NORM_EPS: f32 = 1e-6;
const LAYER_NORM_EPS: f32 = 1e-5;

/// diffusers `BasicTransformerBlock`: self-attention, cross-attention to the context, GEGLU
/// feed-forward, each pre-LayerNorm with a residual.
fn transformer_block<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    ctx: &O::T,
    dim: usize,
    heads: usize,
    cdim: usize,
) -> Result<O::T> {
    let hd = dim / heads;
    let h = nn::layer_norm(o, &p.sub("norm1"), x, dim, LAYER_NORM_EPS)?;
    let h = nn::attention(o, &p.sub("attn1"), &h, None, dim, heads, hd, false)?;
    let x = o.add(x, &h)?;
    let h = nn::layer_norm(o, &p.sub("norm2"), &x, dim, LAYER_NORM_EPS)?;
    let h = nn::attention(
        o,
        &p.sub("attn2"),
        &h,
        Some((ctx, cdim)),
        dim,
        heads,
        hd,
        false,
    )?;
    let x = o.add(&x, &h)?;
    let h = nn::layer_norm(o, &p.sub("norm3"), &x, dim, LAYER_NORM_EPS)?;
    // GEGLU: one projection to 2*inner, split into value and gate.
    let inner = dim * 4;
    let ff = p.sub("ff").sub("net");
    let proj = nn::linear(o, &ff.sub(0).sub("proj"), &h, dim, inner * 2, true)?;
    let last = o.shape(&proj).len() - 1;
    let val = o.slice(&proj, last, 0, inner)?;
    let gate = o.slice(&proj, last, inner, inner * 2)?;
    let gate = o.gelu(&gate)?;
    let h = o.mul(&val, &gate)?;
    let h = nn::linear(o, &ff.sub(2), &h, inner, dim, true)?;
    o.add(&x, &h)
}

/// diffusers `Transformer2DModel` (the spatial transformer).
fn spatial_transformer<O: Ops>(
    o: &mut O,
    cfg: &UNetConfig,
    p: &Path,
    x: &O::T,
    ctx: &O::T,
    c: usize,
    heads: usize,
) -> Result<O::T> {
    let s = o.shape(x);
    let (hh, ww) = (s[2], s[3]);
    let h = nn::group_norm(
        o,
        &p.sub("norm"),
        x,
        c,
        cfg.norm_num_groups,
        TRANSFORMER_NORM_EPS,
    )?;
    let mut h = if cfg.use_linear_projection {
        let t = nn::to_tokens(o, &h)?;
        nn::linear(o, &p.sub("proj_in"), &t, c, c, true)?
    } else {
        let t = nn::conv(o, &p.sub("proj_in"), &h, c, c, 1, 1, 0)?;
        nn::to_tokens(o, &t)?
    };
    for d in 0..cfg.transformer_layers_per_block {
        h = transformer_block(
            o,
            &p.sub("transformer_blocks").sub(d),
            &h,
            ctx,
            c,
            heads,
            cfg.cross_attention_dim,
        )?;
    }
    let h = if cfg.use_linear_projection {
        let t = nn::linear(o, &p.sub("proj_out"), &h, c, c, true)?;
        nn::from_tokens(o, &t, hh, ww)?
    } else {
        let t = nn::from_tokens(o, &h, hh, ww)?;
        nn::conv(o, &p.sub("proj_out"), &t, c, c, 1, 1, 0)?
    };
    o.add(&h, x)
}

/// One UNet evaluation: `x [B, in, h, w]`, `t [B]` timesteps, `ctx [B, L, cross_attention_dim]`
/// -> [B, out, h, w]. Parameters live under `prefix` (normally `unet.`). A guidance-distilled
/// UNet (`time_cond_proj_dim`) also takes `w [B]`, the guidance scale minus one as diffusers'
/// LCM pipeline passes it; others take none.
pub fn forward<O: Ops>(
    o: &mut O,
    cfg: &UNetConfig,
    prefix: &str,
    x: &O::T,
    t: &O::T,
    ctx: &O::T,
    w: Option<&O::T>,
) -> Result<O::T> {
    cfg.validate()?;
    let p = Path::root(prefix);
    let boc = &cfg.block_out_channels;
    let n = boc.len();
    let g = cfg.norm_num_groups;
    let tdim = boc[0] * 4;

    let temb = o.timestep_embedding(t, boc[0], cfg.flip_sin_to_cos, cfg.freq_shift)?;
    let te = p.sub("time_embedding");
    let temb =
        match (cfg.time_cond_proj_dim, w) {
            (None, None) => temb,
            (Some(d), Some(w)) => {
                // diffusers `get_guidance_scale_embedding`: the timestep embedding of 1000 w with
                // sines first and frequencies exp(-ln(10000) i / (d/2 - 1)).
                let w = o.scale(w, 1000.0)?;
                let wemb = o.timestep_embedding(&w, d, false, 1.0)?;
                let c = nn::linear(o, &te.sub("cond_proj"), &wemb, d, boc[0], false)?;
                o.add(&temb, &c)?
            }
            (Some(_), None) => return Err(Error::Config(
                "this UNet is guidance-distilled (time_cond_proj_dim) and needs a guidance input"
                    .into(),
            )),
            (None, Some(_)) => {
                return Err(Error::Config(
                    "a guidance input was given to a UNet without time_cond_proj_dim".into(),
                ))
            }
        };
    let temb = nn::linear(o, &te.sub("linear_1"), &temb, boc[0], tdim, true)?;
    let temb = o.silu(&temb)?;
    let temb = nn::linear(o, &te.sub("linear_2"), &temb, tdim, tdim, true)?;

    let mut h = nn::conv(o, &p.sub("conv_in"), x, cfg.in_channels, boc[0], 3, 1, 1)?;
    let mut skips = vec![(h.clone(), boc[0])];
    let mut c = boc[0];
    for (lvl, &cout) in boc.iter().enumerate() {
        let bp = p.sub("down_blocks").sub(lvl);
        for j in 0..cfg.layers_per_block {
            h = nn::resnet(
                o,
                &bp.sub("resnets").sub(j),
                &h,
                Some((&temb, tdim)),
                c,
                cout,
                g,
                RESNET_EPS,
            )?;
            c = cout;
            if cfg.attention_levels[lvl] {
                let heads = cfg.heads_at(lvl, c);
                h = spatial_transformer(o, cfg, &bp.sub("attentions").sub(j), &h, ctx, c, heads)?;
            }
            skips.push((h.clone(), c));
        }
        if lvl + 1 < n {
            h = nn::conv(
                o,
                &bp.sub("downsamplers").sub(0).sub("conv"),
                &h,
                c,
                c,
                3,
                2,
                1,
            )?;
            skips.push((h.clone(), c));
        }
    }

    let mp = p.sub("mid_block");
    let top = n - 1;
    h = nn::resnet(
        o,
        &mp.sub("resnets").sub(0),
        &h,
        Some((&temb, tdim)),
        c,
        c,
        g,
        RESNET_EPS,
    )?;
    h = spatial_transformer(
        o,
        cfg,
        &mp.sub("attentions").sub(0),
        &h,
        ctx,
        c,
        cfg.heads_at(top, c),
    )?;
    h = nn::resnet(
        o,
        &mp.sub("resnets").sub(1),
        &h,
        Some((&temb, tdim)),
        c,
        c,
        g,
        RESNET_EPS,
    )?;

    for i in 0..n {
        let lvl = n - 1 - i;
        let cout = boc[lvl];
        let bp = p.sub("up_blocks").sub(i);
        for j in 0..=cfg.layers_per_block {
            let (skip, cs) = skips
                .pop()
                .ok_or_else(|| crate::Error::Config("unet skip stack underflow".into()))?;
            h = o.concat(&[&h, &skip], 1)?;
            h = nn::resnet(
                o,
                &bp.sub("resnets").sub(j),
                &h,
                Some((&temb, tdim)),
                c + cs,
                cout,
                g,
                RESNET_EPS,
            )?;
            c = cout;
            if cfg.attention_levels[lvl] {
                let heads = cfg.heads_at(lvl, c);
                h = spatial_transformer(o, cfg, &bp.sub("attentions").sub(j), &h, ctx, c, heads)?;
            }
        }
        if i + 1 < n {
            h = nn::upsample(o, &bp, &h, c)?;
        }
    }

    let h = nn::group_norm(o, &p.sub("conv_norm_out"), &h, c, g, RESNET_EPS)?;
    let h = o.silu(&h)?;
    nn::conv(o, &p.sub("conv_out"), &h, c, cfg.out_channels, 3, 1, 1)
}
