//! What the Vulkan test suites share: the required-or-skip policy for a missing device, and the
//! image agreement measure.
#![allow(dead_code)]
use ldm_edge::backend::vulkan::{VulkanBackend, VulkanOptions};
use ldm_edge::backend::Backend;

/// Under `CI=true` or `LDM_REQUIRE_VULKAN=1` a missing Vulkan device fails the tests; on a
/// developer's machine they skip loudly.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("LDM_REQUIRE_VULKAN").is_ok_and(|v| v == "1")
}

/// A Vulkan backend, or None after a loud SKIP naming `what` is not tested.
pub fn vulkan_or_skip(opts: VulkanOptions, what: &str) -> Option<Box<dyn Backend>> {
    match VulkanBackend::with_options(opts) {
        Ok(b) => Some(Box::new(b)),
        Err(e) if required() => {
            panic!("Vulkan is required here (CI / LDM_REQUIRE_VULKAN) but unavailable: {e}")
        }
        Err(e) => {
            eprintln!("\n*** SKIP: no usable Vulkan device ({e}); {what} NOT tested ***\n");
            None
        }
    }
}

/// PSNR in dB of `a` against `b`, both images in [-1, 1] (clamped as the PNG would be).
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x.clamp(-1.0, 1.0) - y.clamp(-1.0, 1.0)) as f64;
            d * d
        })
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (4.0 / mse.max(1e-20)).log10()
}
