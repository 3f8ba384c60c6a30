//! The SPIR-V built from `shaders/` and a cache of compute pipelines by kernel name, so each
//! kernel variant is compiled by the driver once per device.
use super::{backend_error, verr};
use crate::Result;
use std::collections::HashMap;
use std::sync::Arc;
use vulkano::device::Device;
use vulkano::pipeline::compute::ComputePipelineCreateInfo;
use vulkano::pipeline::layout::PipelineDescriptorSetLayoutCreateInfo;
use vulkano::pipeline::{ComputePipeline, Pipeline, PipelineLayout, PipelineShaderStageCreateInfo};
use vulkano::shader::{ShaderModule, ShaderModuleCreateInfo};

include!(concat!(env!("OUT_DIR"), "/shaders.rs"));

/// SPIR-V words of a kernel (`linear_q8`, `silu`, ...), if it was built.
pub fn spirv(name: &str) -> Option<&'static [u32]> {
    SHADERS.iter().find(|(n, _)| *n == name).map(|(_, w)| *w)
}

/// A pipeline with the size of its push-constant block.
pub struct Kernel {
    pub pipeline: Arc<ComputePipeline>,
    pub push_bytes: u32,
}

impl Kernel {
    pub fn layout(&self) -> &Arc<PipelineLayout> {
        self.pipeline.layout()
    }
}

#[derive(Default)]
pub struct PipelineCache {
    kernels: HashMap<String, Arc<Kernel>>,
}

impl PipelineCache {
    pub fn get(&mut self, device: &Arc<Device>, name: &str) -> Result<Arc<Kernel>> {
        if let Some(k) = self.kernels.get(name) {
            return Ok(k.clone());
        }
        let words =
            spirv(name).ok_or_else(|| backend_error(format!("no shader named `{name}`")))?;
        // Safety: the words are naga's validated output for this very module (build.rs).
        let module =
            unsafe { ShaderModule::new(device.clone(), ShaderModuleCreateInfo::new(words)) }
                .map_err(|e| match e {
                    // The validation error's own text names the missing feature or extension.
                    vulkano::Validated::ValidationError(v) => {
                        backend_error(format!("shader module `{name}`: {v}"))
                    }
                    vulkano::Validated::Error(e) => verr(&format!("shader module `{name}`"))(e),
                })?;
        let entry = module
            .entry_point("main")
            .ok_or_else(|| backend_error(format!("shader `{name}` has no `main`")))?;
        let stage = PipelineShaderStageCreateInfo::new(entry);
        let layout_info = PipelineDescriptorSetLayoutCreateInfo::from_stages([&stage])
            .into_pipeline_layout_create_info(device.clone())
            .map_err(|e| backend_error(format!("layout of `{name}`: {e:?}")))?;
        let layout = PipelineLayout::new(device.clone(), layout_info)
            .map_err(verr(&format!("layout of `{name}`")))?;
        let push_bytes = layout
            .push_constant_ranges()
            .iter()
            .map(|r| r.offset + r.size)
            .max()
            .unwrap_or(0);
        let pipeline = ComputePipeline::new(
            device.clone(),
            None,
            ComputePipelineCreateInfo::stage_layout(stage, layout),
        )
        .map_err(verr(&format!("pipeline `{name}`")))?;
        let k = Arc::new(Kernel {
            pipeline,
            push_bytes,
        });
        self.kernels.insert(name.to_string(), k.clone());
        Ok(k)
    }
}
