//! Which algorithm a convolution runs on the compact CPU plan: im2col + GEMM, Winograd
//! F(2x2)/F(4x4) ([`super::winograd`]) or the AVX-512 direct kernel ([`super::direct`]),
//! chosen per layer from its shape. The kernels, the planner's scratch count and the
//! benchmarks all go through [`choose`] and [`resolve`], so they agree on what runs. The
//! packed plan's weights, prepared once per layer for its algorithm, are [`prepares`] and
//! [`Prepared`].
use super::direct;
use super::kernels::ConvShape;
use super::weight::CompactWeight;
use super::winograd::{self, Variant, F2, F4};
use crate::Result;

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

/// What the packed plan (`--backend cpu-packed`) prepares for a layer at plan preparation,
/// as the algorithm that will read it. Winograd's transformed weight where [`choose`] picks
/// Winograd; for the other 3x3 stride-1 layers with at least 64 input and 32 output channels,
/// F(2x2) down to 16x16 outputs and the direct kernel's packed weight below (on a CPU that
/// runs it; im2col otherwise). `LDM_CPU_CONV` forcing an algorithm prepares only that one.
///
/// Once its weight transform is paid at preparation, Winograd wins down to 16x16, and the
/// direct kernel, once its packing is, wins at 8x8 and 4x4 (`conv_algos` with and without
/// `LDM_CPU_CONV=f2`, f32, median of 5, ms, prepared weights): F(2x2) against direct at 16x16
/// 16.2 vs 16.9 (one image, 1280 channels), 27.9 vs 32.6 (two images); at 8x8 14.0 vs 9.3.
/// Against what the compact plan runs: 32x32 F(2x2) 1.25x faster, 64x64 F(4x4) 1.16-1.18x,
/// 8x8 1.12-1.23x, 4x4 1.03-1.76x.
pub fn prepares(g: &ConvShape) -> Option<Algo> {
    let chosen = choose(g);
    if matches!(chosen, Algo::F2 | Algo::F4) {
        return Some(chosen);
    }
    if forced().is_some() {
        return (chosen == Algo::Direct).then_some(Algo::Direct);
    }
    if g.kh != 3 || g.kw != 3 || g.stride != 1 || g.c < 64 || g.o < 32 {
        return None;
    }
    let (ho, wo) = g.out_hw();
    if ho.div_ceil(2) * wo.div_ceil(2) >= 64 {
        Some(Algo::F2)
    } else {
        direct::available().then_some(Algo::Direct)
    }
}

/// A conv weight prepared once for the algorithm its layer runs ([`prepares`]).
pub enum Prepared {
    Direct(direct::Packed),
    Winograd(&'static Variant, winograd::Transformed),
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prepared::Direct(p) => p.fmt(f),
            Prepared::Winograd(_, t) => t.fmt(f),
        }
    }
}

impl Prepared {
    /// `w` prepared for layer `g`, if [`prepares`] names an algorithm for it.
    pub fn new(g: &ConvShape, w: &CompactWeight) -> Result<Option<Prepared>> {
        Ok(match prepares(g) {
            Some(Algo::Direct) => Some(Prepared::Direct(direct::Packed::new(w)?)),
            Some(a) => match a.variant() {
                Some(v) => Some(Prepared::Winograd(v, winograd::Transformed::new(v, w)?)),
                None => None,
            },
            None => None,
        })
    }

    /// Bytes [`Prepared::new`] holds for layer `g`. For the memory planner.
    pub fn bytes_for(g: &ConvShape) -> u64 {
        4 * match prepares(g) {
            Some(Algo::Direct) => direct::Packed::values(&[g.o, g.c, g.kh, g.kw]),
            Some(a) => a
                .variant()
                .map_or(0, |v| winograd::Transformed::values(v, g.o, g.c)),
            None => 0,
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            Prepared::Direct(p) => p.bytes(),
            Prepared::Winograd(_, t) => t.bytes(),
        }
    }

    /// Whether this is `g`'s weight, prepared for the algorithm `g` runs.
    pub fn fits(&self, g: &ConvShape) -> bool {
        match self {
            Prepared::Direct(p) => p.fits(g) && direct::fits(g) && direct::available(),
            Prepared::Winograd(v, t) => t.fits(v, g) && g.stride == 1,
        }
    }
}
