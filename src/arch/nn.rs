//! Building blocks shared by the UNet, autoencoder and text encoder, named as in diffusers.
use crate::ops::Ops;
use crate::Result;

/// A parameter path prefix such as `unet.down_blocks.1.`.
#[derive(Clone, Debug)]
pub struct Path(String);

impl Path {
    pub fn root(prefix: &str) -> Self {
        Path(prefix.to_string())
    }
    pub fn sub(&self, name: impl std::fmt::Display) -> Path {
        Path(format!("{}{}.", self.0, name))
    }
    pub fn name(&self, leaf: &str) -> String {
        format!("{}{}", self.0, leaf)
    }
}

pub fn linear<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    i: usize,
    out: usize,
    bias: bool,
) -> Result<O::T> {
    let w = o.param(&p.name("weight"), &[out, i])?;
    let b = if bias {
        Some(o.param(&p.name("bias"), &[out])?)
    } else {
        None
    };
    o.linear(x, &w, b.as_ref())
}

/// Conv with a square kernel `k`, stride and symmetric padding `pad`.
pub fn conv<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    i: usize,
    out: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> Result<O::T> {
    conv_padded(o, p, x, i, out, k, stride, [pad; 4])
}

#[allow(clippy::too_many_arguments)]
pub fn conv_padded<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    i: usize,
    out: usize,
    k: usize,
    stride: usize,
    pads: [usize; 4],
) -> Result<O::T> {
    let w = o.param(&p.name("weight"), &[out, i, k, k])?;
    let b = o.param(&p.name("bias"), &[out])?;
    o.conv2d(x, &w, Some(&b), stride, pads)
}

pub fn group_norm<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    c: usize,
    groups: usize,
    eps: f32,
) -> Result<O::T> {
    let g = o.param(&p.name("weight"), &[c])?;
    let b = o.param(&p.name("bias"), &[c])?;
    o.group_norm(x, &g, &b, groups, eps)
}

pub fn layer_norm<O: Ops>(o: &mut O, p: &Path, x: &O::T, c: usize, eps: f32) -> Result<O::T> {
    let g = o.param(&p.name("weight"), &[c])?;
    let b = o.param(&p.name("bias"), &[c])?;
    o.layer_norm(x, &g, &b, eps)
}

/// diffusers `ResnetBlock2D`: GroupNorm, SiLU, conv, (+ time embedding), GroupNorm, SiLU, conv,
/// with a 1x1 `conv_shortcut` when the channel count changes.
#[allow(clippy::too_many_arguments)]
pub fn resnet<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    temb: Option<(&O::T, usize)>,
    cin: usize,
    cout: usize,
    groups: usize,
    eps: f32,
) -> Result<O::T> {
    let h = group_norm(o, &p.sub("norm1"), x, cin, groups, eps)?;
    let h = o.silu(&h)?;
    let mut h = conv(o, &p.sub("conv1"), &h, cin, cout, 3, 1, 1)?;
    if let Some((t, tdim)) = temb {
        let t = o.silu(t)?;
        let t = linear(o, &p.sub("time_emb_proj"), &t, tdim, cout, true)?;
        let b = o.shape(&t)[0];
        let t = o.reshape(&t, &[b, cout, 1, 1])?;
        h = o.add(&h, &t)?;
    }
    let h = group_norm(o, &p.sub("norm2"), &h, cout, groups, eps)?;
    let h = o.silu(&h)?;
    let h = conv(o, &p.sub("conv2"), &h, cout, cout, 3, 1, 1)?;
    let skip = if cin != cout {
        conv(o, &p.sub("conv_shortcut"), x, cin, cout, 1, 1, 0)?
    } else {
        x.clone()
    };
    o.add(&skip, &h)
}

/// diffusers `Attention` on [B, L, C] with `to_q`, `to_k`, `to_v`, `to_out.0`. `ctx` is the
/// key/value source (cross-attention) or None for self-attention.
#[allow(clippy::too_many_arguments)]
pub fn attention<O: Ops>(
    o: &mut O,
    p: &Path,
    x: &O::T,
    ctx: Option<(&O::T, usize)>,
    dim: usize,
    heads: usize,
    head_dim: usize,
    qkv_bias: bool,
) -> Result<O::T> {
    let inner = heads * head_dim;
    let (c, cdim) = ctx.unwrap_or((x, dim));
    let q = linear(o, &p.sub("to_q"), x, dim, inner, qkv_bias)?;
    let k = linear(o, &p.sub("to_k"), c, cdim, inner, qkv_bias)?;
    let v = linear(o, &p.sub("to_v"), c, cdim, inner, qkv_bias)?;
    let a = o.attention(&q, &k, &v, heads, false)?;
    linear(o, &p.sub("to_out").sub(0), &a, inner, dim, true)
}

/// [B, C, H, W] -> [B, H*W, C]
pub fn to_tokens<O: Ops>(o: &mut O, x: &O::T) -> Result<O::T> {
    let s = o.shape(x);
    let t = o.reshape(x, &[s[0], s[1], s[2] * s[3]])?;
    o.permute(&t, &[0, 2, 1])
}

/// [B, H*W, C] -> [B, C, H, W]
pub fn from_tokens<O: Ops>(o: &mut O, x: &O::T, h: usize, w: usize) -> Result<O::T> {
    let s = o.shape(x);
    let t = o.permute(x, &[0, 2, 1])?;
    o.reshape(&t, &[s[0], s[2], h, w])
}

/// Nearest 2x upsampling followed by a 3x3 conv (`upsamplers.0.conv`).
pub fn upsample<O: Ops>(o: &mut O, p: &Path, x: &O::T, c: usize) -> Result<O::T> {
    let u = o.upsample_nearest2x(x)?;
    conv(
        o,
        &p.sub("upsamplers").sub(0).sub("conv"),
        &u,
        c,
        c,
        3,
        1,
        1,
    )
}
