//! Deterministic random weights for tests, benchmarks and the placeholder default model.
//!
//! Each tensor's values depend only on (seed, path), not on the order tensors are made in, so a
//! benchmark file and a test fixture built from the same seed agree.
use crate::graph::shape::numel;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash(seed: u64, path: &str) -> u64 {
    // FNV-1a of the path, mixed with the seed.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in path.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Values for the parameter `path` of `shape`: uniform with variance 1/fan_in for matrices and
/// kernels (so activations keep their scale through depth), 1 +- 0.1 for norm scales, and
/// +-0.1 for biases and norm shifts (non-zero so tests exercise them).
pub fn random_param(seed: u64, path: &str, shape: &[usize]) -> Vec<f32> {
    let mut s = hash(seed, path);
    let n = numel(shape);
    let (center, half_width) = if shape.len() >= 2 {
        let fan_in: usize = shape[1..].iter().product();
        (0.0, (3.0 / fan_in.max(1) as f64).sqrt())
    } else if path.ends_with(".weight") {
        (1.0, 0.1)
    } else {
        (0.0, 0.1)
    };
    (0..n)
        .map(|_| {
            let u = (splitmix(&mut s) >> 11) as f64 / (1u64 << 53) as f64;
            (center + (2.0 * u - 1.0) * half_width) as f32
        })
        .collect()
}
