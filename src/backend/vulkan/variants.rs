//! Kernel variants picked from the device's features at start-up. The lowering names kernels by
//! op (`group_norm`); this maps them to the built variant (`group_norm_sg`), so the lowering
//! stays independent of the device and each variant is reachable from the conformance tests
//! through `VulkanOptions`. A variant runs only where the device has the feature, the options
//! ask for it, no workaround rule disables it, and `LDM_VULKAN_DISABLE` does not name it.
use super::device::Gpu;
use super::lower::LowerOpts;
use super::workarounds::{known_bugs, parse_disable, Variant};
use super::{backend_error, VariantUse, VulkanOptions};
use crate::Result;
use vulkano::device::physical::PhysicalDeviceType;
use vulkano::device::physical::SubgroupFeatures;
use vulkano::shader::ShaderStages;

/// Kernels with a reduction variant (`_wg` workgroup tree, `_sg` subgroupAdd).
const REDUCING: [&str; 2] = ["group_norm", "layer_norm"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelChoice {
    /// Reductions with subgroupAdd: the device has subgroup arithmetic in compute shaders.
    pub subgroup_reduce: bool,
    /// Attention through the query-blocked flash kernel.
    pub flash_attention: bool,
    /// conv/linear with f16 tiles and products (f32 sums): the device has `shaderFloat16`.
    pub f16_math: bool,
    /// q8 linear through int8 dot products: the device has `shaderIntegerDotProduct`.
    pub int8_dot: bool,
}

impl KernelChoice {
    /// Fails only on a malformed `LDM_VULKAN_DISABLE`.
    pub fn new(gpu: &Gpu, opts: &VulkanOptions) -> Result<Self> {
        let props = gpu.device.physical_device().properties();
        let enabled = gpu.device.enabled_features();
        let arith = props
            .subgroup_supported_operations
            .is_some_and(|o| o.contains(SubgroupFeatures::ARITHMETIC));
        let compute = props
            .subgroup_supported_stages
            .is_some_and(|s| s.contains(ShaderStages::COMPUTE));
        let mut off = match std::env::var("LDM_VULKAN_DISABLE") {
            Ok(spec) => parse_disable(&spec).map_err(backend_error)?,
            Err(_) => Vec::new(),
        };
        off.extend(known_bugs(&gpu.info.driver).into_iter().map(|(v, _)| v));
        let on = |v: Variant| !off.contains(&v);
        let pick = |u: VariantUse, supported: bool, pays: bool| match u {
            VariantUse::Auto => supported && pays,
            VariantUse::On => supported,
            VariantUse::Off => false,
        };
        let gpu_rate = props.device_type != PhysicalDeviceType::Cpu;
        let dot_fast = props
            .integer_dot_product4x8_bit_packed_signed_accelerated
            .unwrap_or(false);
        Ok(KernelChoice {
            subgroup_reduce: opts.subgroup_reduce && arith && compute && on(Variant::Subgroup),
            flash_attention: opts.flash_attention && on(Variant::Flash),
            f16_math: pick(opts.f16_math, enabled.shader_float16, gpu_rate) && on(Variant::F16Math),
            int8_dot: pick(opts.int8_dot, enabled.shader_integer_dot_product, dot_fast)
                && on(Variant::Int8Dot),
        })
    }

    /// The choices the lowering makes (they change dispatches, not only kernel names).
    pub fn lower_opts(&self, split_k: bool) -> LowerOpts {
        LowerOpts {
            split_k,
            flash_attention: self.flash_attention,
            int8_dot: self.int8_dot,
        }
    }

    /// The built kernel that runs `base` on this device.
    pub fn kernel(&self, base: &str) -> String {
        if REDUCING.contains(&base) {
            let v = if self.subgroup_reduce { "sg" } else { "wg" };
            format!("{base}_{v}")
        } else if self.f16_math && F16_MATH.contains(&base) {
            format!("{base}_f16")
        } else {
            base.to_string()
        }
    }
}

/// conv/linear kernels built with f16 tiles and products too (`linear_q8` -> `linear_q8_f16`).
const F16_MATH: [&str; 8] = [
    "linear_f32",
    "linear_f16",
    "linear_q8",
    "linear_q4",
    "conv2d_f32",
    "conv2d_f16",
    "conv2d_q8",
    "conv2d_q4",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reducing_kernels_have_variants() {
        let sg = KernelChoice {
            subgroup_reduce: true,
            flash_attention: true,
            f16_math: false,
            int8_dot: false,
        };
        let wg = KernelChoice {
            subgroup_reduce: false,
            ..sg
        };
        assert_eq!(sg.kernel("group_norm"), "group_norm_sg");
        assert_eq!(wg.kernel("layer_norm"), "layer_norm_wg");
        assert_eq!(sg.kernel("linear_q8"), "linear_q8");
        for k in [
            "group_norm_sg",
            "group_norm_wg",
            "layer_norm_sg",
            "layer_norm_wg",
            "attention_8",
            "attention_16",
        ] {
            assert!(
                super::super::pipelines::spirv(k).is_some(),
                "{k} is not built"
            );
        }
    }
}
