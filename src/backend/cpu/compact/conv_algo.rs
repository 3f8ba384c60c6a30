//! Which algorithm a convolution runs on the compact CPU plan: im2col + GEMM, Winograd
//! F(2x2)/F(4x4) ([`super::winograd`]) or the AVX-512 direct kernel ([`super::direct`]),
//! chosen per layer from its shape. The kernels, the planner's scratch count and the
//! benchmarks all go through [`choose`] and [`resolve`], so they agree on what runs.
use super::direct;
use super::kernels::ConvShape;
use super::winograd::{Variant, F2, F4};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    Im2col,
    F2,
    F4,
    /// The AVX-512 direct kernel.
    Direct,
}

impl Algo {
    /// The Winograd variant, for F2 and F4.
    pub fn variant(self) -> Option<&'static Variant> {
        match self {
            Algo::Im2col | Algo::Direct => None,
            Algo::F2 => Some(&F2),
            Algo::F4 => Some(&F4),
        }
    }
}

/// `LDM_CPU_CONV=im2col|f2|f4|direct|auto` overrides the choice (for measuring one against
/// another, and as a way out should a variant misbehave on some CPU); read once.
fn forced() -> Option<Algo> {
    static FORCED: std::sync::OnceLock<Option<Algo>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| match std::env::var("LDM_CPU_CONV").ok()?.as_str() {
        "im2col" => Some(Algo::Im2col),
        "f2" => Some(Algo::F2),
        "f4" => Some(Algo::F4),
        "direct" => Some(Algo::Direct),
        _ => None,
    })
}

/// `algo` if it can run this layer on this CPU, otherwise im2col (which runs every layer):
/// Winograd needs a stride-1 3x3 kernel, the direct kernel stride 1 and AVX-512.
pub fn resolve(algo: Algo, g: &ConvShape) -> Algo {
    let runs = match algo {
        Algo::Im2col => true,
        Algo::F2 | Algo::F4 => g.kh == 3 && g.kw == 3 && g.stride == 1,
        Algo::Direct => direct::available() && direct::fits(g),
    };
    if runs {
        algo
    } else {
        Algo::Im2col
    }
}

/// The algorithm for a layer (always one [`resolve`] keeps): Winograd for stride-1 3x3
/// kernels with enough tiles and channels for its GEMMs to be wide, F(4x4) from 64x64
/// outputs, F(2x2) from 32x32; below that the AVX-512 direct kernel from 512 output pixels
/// per call (both halves of a guided call at 16x16), im2col under it.
///
/// Measured on SD-1.5's layer shapes (`cargo run --release --example conv_algos`, 2 cores,
/// AVX-512, f32 weights, median of 5, onnxruntime's own conv timed in the same session):
/// against im2col, F(4x4) is 2.0-2.5x faster at 64x64 and about 2x on the decoder's 128-512 px
/// layers; at 32x32 F(2x2) is 1.4-1.7x (the direct kernel 1.2-1.6x) and F(4x4) no better at
/// 15x the rounding error. At 16x16 both Winograd variants are slower (0.5-0.95x: the weight
/// transform, redone every call, costs more than 64 tiles save); the direct kernel is
/// 1.05-1.4x faster for two images, but for one (256 pixels) 0.9-1.2x, as repacking the
/// weight costs twice as much per pixel. At 8x8 and 4x4 repacking a 30-120 MB weight for 128
/// or 32 pixels costs more than the product: im2col there (direct 0.4-0.9x). Layers with
/// under 64 input or 32 output channels (the shipped model's 32-channel decoder top, any
/// conv_out) are faster on im2col.
/// Whether the packed plan (`--backend cpu-packed`) packs this layer's weight at preparation:
/// the 3x3 stride-1 layers that [`choose`] does not give to Winograd, with at least 64 input
/// and 32 output channels, on a CPU that runs the direct kernel. With the weight packed the
/// direct kernel beats im2col on every such SD-1.5 layer (`conv_algos`, f32, median of 5,
/// im2col time over packed time): one image at 16x16 1.13-1.76x, 8x8 1.03-1.15x, 4x4
/// 1.25-1.76x. `LDM_CPU_CONV` forcing another algorithm turns packing off.
pub fn packs(g: &ConvShape) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.c >= 64
        && g.o >= 32
        && forced().is_none_or(|a| a == Algo::Direct)
        && matches!(choose(g), Algo::Im2col | Algo::Direct)
        && direct::available()
}

pub fn choose(g: &ConvShape) -> Algo {
    if g.kh != 3 || g.kw != 3 || g.stride != 1 {
        return Algo::Im2col;
    }
    if let Some(a) = forced() {
        return resolve(a, g);
    }
    let (ho, wo) = g.out_hw();
    let tiles = |m: usize| ho.div_ceil(m) * wo.div_ceil(m);
    let pick = if g.c < 64 || g.o < 32 {
        Algo::Im2col
    } else if tiles(4) >= 256 {
        Algo::F4
    } else if tiles(2) >= 256 {
        Algo::F2
    } else if g.batch * ho * wo >= 512 {
        Algo::Direct
    } else {
        Algo::Im2col
    };
    resolve(pick, g)
}
