//! Kernel variants picked from the device's features at start-up. The lowering names kernels by
//! op (`group_norm`); this maps them to the built variant (`group_norm_sg`), so the lowering
//! stays independent of the device and each variant is reachable from the conformance tests
//! through `VulkanOptions`.
use super::device::Gpu;
use super::VulkanOptions;
use vulkano::device::physical::SubgroupFeatures;
use vulkano::shader::ShaderStages;

/// Kernels with a reduction variant (`_wg` workgroup tree, `_sg` subgroupAdd).
const REDUCING: [&str; 2] = ["group_norm", "layer_norm"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelChoice {
    /// Reductions with subgroupAdd: the device has subgroup arithmetic in compute shaders.
    pub subgroup_reduce: bool,
}

impl KernelChoice {
    pub fn new(gpu: &Gpu, opts: &VulkanOptions) -> Self {
        let props = gpu.device.physical_device().properties();
        let arith = props
            .subgroup_supported_operations
            .is_some_and(|o| o.contains(SubgroupFeatures::ARITHMETIC));
        let compute = props
            .subgroup_supported_stages
            .is_some_and(|s| s.contains(ShaderStages::COMPUTE));
        KernelChoice {
            subgroup_reduce: opts.subgroup_reduce && arith && compute,
        }
    }

    /// The built kernel that runs `base` on this device.
    pub fn kernel(&self, base: &str) -> String {
        if REDUCING.contains(&base) {
            let v = if self.subgroup_reduce { "sg" } else { "wg" };
            format!("{base}_{v}")
        } else {
            base.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reducing_kernels_have_variants() {
        let sg = KernelChoice {
            subgroup_reduce: true,
        };
        let wg = KernelChoice {
            subgroup_reduce: false,
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
