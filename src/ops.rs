//! The `Ops` trait: the primitive operations the architectures are written in.
//!
//! The UNet, autoencoder and text encoder are generic over `Ops` and are written once. Tracing
//! into the graph IR ([`crate::graph::Tracer`]) and training on autograd tensors are both just
//! implementations of this trait. Kernel choices (fusions, f16) never appear here: they are
//! rewrites of the traced graph inside a backend.
use crate::Result;

/// Padding of a 2-D convolution in pixels: top, left, bottom, right.
pub type Pads = [usize; 4];

pub trait Ops {
    /// A tensor handle. Cheap to clone.
    type T: Clone;

    /// The static shape of a tensor.
    fn shape(&self, t: &Self::T) -> Vec<usize>;

    /// A trainable parameter, addressed by its diffusers-style path
    /// (`down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight`). The architecture
    /// states the shape it needs; implementations check it against what they hold.
    fn param(&mut self, path: &str, shape: &[usize]) -> Result<Self::T>;

    /// 2-D convolution, NCHW input, weight [out, in, kh, kw], optional bias [out].
    fn conv2d(
        &mut self,
        x: &Self::T,
        w: &Self::T,
        b: Option<&Self::T>,
        stride: usize,
        pads: Pads,
    ) -> Result<Self::T>;
    /// `x @ w^T + b` over the last axis; weight [out, in] as in torch.nn.Linear.
    fn linear(&mut self, x: &Self::T, w: &Self::T, b: Option<&Self::T>) -> Result<Self::T>;
    /// Elementwise add with numpy broadcasting.
    fn add(&mut self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    /// Elementwise multiply with numpy broadcasting.
    fn mul(&mut self, a: &Self::T, b: &Self::T) -> Result<Self::T>;
    /// Multiply by a constant.
    fn scale(&mut self, x: &Self::T, s: f32) -> Result<Self::T>;
    /// GroupNorm over [N, C, ...] with per-channel affine gamma, beta [C].
    fn group_norm(
        &mut self,
        x: &Self::T,
        gamma: &Self::T,
        beta: &Self::T,
        groups: usize,
        eps: f32,
    ) -> Result<Self::T>;
    /// LayerNorm over the last axis with affine gamma, beta.
    fn layer_norm(
        &mut self,
        x: &Self::T,
        gamma: &Self::T,
        beta: &Self::T,
        eps: f32,
    ) -> Result<Self::T>;
    fn silu(&mut self, x: &Self::T) -> Result<Self::T>;
    /// Exact (erf) GELU.
    fn gelu(&mut self, x: &Self::T) -> Result<Self::T>;
    /// Multi-head attention softmax(Q K^T / sqrt(d)) V on [B, L, heads*d] inputs; heads are
    /// split and merged inside. `causal` masks keys after the query position.
    fn attention(
        &mut self,
        q: &Self::T,
        k: &Self::T,
        v: &Self::T,
        heads: usize,
        causal: bool,
    ) -> Result<Self::T>;
    fn reshape(&mut self, x: &Self::T, shape: &[usize]) -> Result<Self::T>;
    fn permute(&mut self, x: &Self::T, perm: &[usize]) -> Result<Self::T>;
    fn concat(&mut self, xs: &[&Self::T], axis: usize) -> Result<Self::T>;
    /// `x[.., start..end, ..]` along `axis`.
    fn slice(&mut self, x: &Self::T, axis: usize, start: usize, end: usize) -> Result<Self::T>;
    /// Nearest-neighbour 2x upsampling of the last two axes.
    fn upsample_nearest2x(&mut self, x: &Self::T) -> Result<Self::T>;
    /// Sinusoidal timestep embedding [B] -> [B, dim] (diffusers `get_timestep_embedding`).
    fn timestep_embedding(
        &mut self,
        t: &Self::T,
        dim: usize,
        flip_sin_to_cos: bool,
        downscale_freq_shift: f32,
    ) -> Result<Self::T>;
    /// Rows of `table` [V, D] picked by integer-valued `ids` [..] -> [.., D].
    fn embedding(&mut self, table: &Self::T, ids: &Self::T) -> Result<Self::T>;
}
