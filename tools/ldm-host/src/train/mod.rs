//! Training: the `Ops` implementation over burn autodiff tensors, the two training stages,
//! checkpoints and export. The architectures themselves come from `ldm_edge::arch` unchanged.
pub mod autoencoder;
pub mod budget;
pub mod burn_ops;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod distill;
pub mod export;
pub mod ldm;
pub mod masks;
pub mod optim;
pub mod params;
pub mod presets;
pub mod runner;
pub mod sample;
#[cfg(test)]
mod tests;
pub mod tiny_decoder;

use burn::tensor::Device;

/// The training device. burn's `flex` CPU backend by default; a build with `--features vulkan`
/// (burn's wgpu backend pinned to Vulkan/SPIR-V) or `--features cuda` trains on the GPU, and
/// `LDM_TRAIN_DEVICE=cpu` forces the CPU in such a build. `autodiff` wraps it so operations
/// record a tape.
pub fn device(autodiff: bool) -> Device {
    let d = base_device();
    if autodiff {
        d.autodiff()
    } else {
        d
    }
}

fn cpu_forced() -> bool {
    std::env::var("LDM_TRAIN_DEVICE").is_ok_and(|v| v.eq_ignore_ascii_case("cpu"))
}

fn base_device() -> Device {
    if cpu_forced() {
        return Device::flex();
    }
    #[cfg(feature = "cuda")]
    return Device::cuda(0);
    #[cfg(all(feature = "vulkan", not(feature = "cuda")))]
    return Device::vulkan(burn::tensor::DeviceKind::DefaultDevice);
    #[allow(unreachable_code)]
    Device::flex()
}

/// What `device` trains on, for logs and the recipe.
pub fn device_name() -> &'static str {
    if cpu_forced() || !(cfg!(feature = "cuda") || cfg!(feature = "vulkan")) {
        "cpu (burn flex)"
    } else if cfg!(feature = "cuda") {
        "cuda (burn cubecl-cuda)"
    } else {
        "vulkan (burn wgpu/spir-v)"
    }
}

/// A deterministic per-step seed, so a resumed run draws the same batches and noise as an
/// uninterrupted one.
pub fn step_seed(seed: u64, step: u64, stream: u64) -> u64 {
    let mut z = seed
        .wrapping_add(step.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform integers in 0..n from a seed (batch indices, timesteps).
pub fn uniform_indices(seed: u64, count: usize, n: usize) -> Vec<usize> {
    (0..count)
        .map(|i| (step_seed(seed, i as u64, 7) % n.max(1) as u64) as usize)
        .collect()
}

/// Standard normal noise from a seed (the runtime's generator).
pub fn gaussian(seed: u64, n: usize) -> Vec<f32> {
    ldm_edge::sampler::NoiseGen::new(seed).sample(n)
}
