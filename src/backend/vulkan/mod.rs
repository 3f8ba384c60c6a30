//! The Vulkan compute backend: the IR lowered to WGSL kernels (compiled to SPIR-V by build.rs),
//! run through vulkano.
//!
//! One job per file: [`device`] picks the device and queue, [`pipelines`] caches pipelines,
//! [`arena`] plans activation memory by liveness, [`upload`] moves weights through bounded
//! staging, [`lower`] turns the graph into dispatches, [`plan`] records and replays them.
pub mod arena;
pub mod device;
pub mod fault;
pub mod lower;
pub mod pipelines;
pub mod plan;
pub mod profile;
pub mod record;
pub mod upload;
pub mod variants;
pub mod workarounds;

pub use device::{list_devices, DeviceInfo};
pub use fault::Fault;
pub use plan::VulkanPlan;

use super::{Backend, Executable, WeightSource};
use crate::graph::Graph;
use crate::{Error, Result};
use std::cell::RefCell;
use std::fmt::Display;
use std::sync::Arc;

pub(crate) fn backend_error(msg: impl Into<String>) -> Error {
    Error::Backend {
        backend: "vulkan",
        msg: msg.into(),
    }
}

/// Maps any vulkano error to `Error::Backend`, keeping its text and adding a remedy for device
/// loss and out-of-memory.
pub(crate) fn verr<E: Display>(what: &str) -> impl Fn(E) -> Error + '_ {
    move |e| backend_error(fault::explain(what, &e.to_string()))
}

/// Storage choices for matrix weights (Linear and Conv2d).
#[derive(Clone, Debug)]
pub struct VulkanOptions {
    /// Keep f32 weights as f16 on the device (halves their memory; ~1e-3 relative error).
    pub f16_weights: bool,
    /// Use q8/q4/f16 weights as the source stores them, dequantized inside the kernels.
    pub quantized: bool,
    /// Reduce with subgroupAdd where the device has subgroup arithmetic (off: the portable
    /// workgroup-memory tree everywhere; lets tests cover both variants on one device).
    pub subgroup_reduce: bool,
    /// Attention through the query-blocked flash kernel (off: one workgroup per query row).
    pub flash_attention: bool,
    /// conv/linear with f16 tiles and products, f32 sums (needs `shaderFloat16`). `Auto` uses
    /// it on GPUs, not on CPU devices such as llvmpipe, where f16 has no rate to gain.
    pub f16_math: VariantUse,
    /// q8 linear through int8 dot products (needs `shaderIntegerDotProduct`). `Auto` uses it
    /// where the driver reports packed 4x8-bit signed dot products as accelerated.
    pub int8_dot: VariantUse,
}

/// Whether a kernel variant runs: `Auto` where it pays on this device, `On` wherever the device
/// can run it (tests use this to cover it on llvmpipe), `Off` never.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VariantUse {
    Auto,
    On,
    Off,
}

impl Default for VulkanOptions {
    fn default() -> Self {
        VulkanOptions {
            f16_weights: false,
            quantized: true,
            subgroup_reduce: true,
            flash_attention: true,
            f16_math: VariantUse::Auto,
            int8_dot: VariantUse::Auto,
        }
    }
}

pub struct VulkanBackend {
    gpu: Arc<device::Gpu>,
    cache: RefCell<pipelines::PipelineCache>,
    opts: VulkanOptions,
    fault: Option<Fault>,
}

impl VulkanBackend {
    /// Opens the best Vulkan device. Fails with a clear error (never a panic) when there is no
    /// loader, no device, or no compute queue.
    pub fn new() -> Result<Self> {
        Self::with_options(VulkanOptions::default())
    }

    /// Also fails on a malformed `LDM_VULKAN_DISABLE`, before any work.
    pub fn with_options(opts: VulkanOptions) -> Result<Self> {
        let gpu = Arc::new(device::Gpu::open()?);
        let choice = variants::KernelChoice::new(&gpu, &opts)?;
        for (v, why) in workarounds::known_bugs(&gpu.info.driver) {
            log::warn!("vulkan: `{v}` kernels disabled on this driver: {why}");
        }
        log::info!("vulkan: kernel variants {choice:?}");
        Ok(VulkanBackend {
            gpu,
            cache: RefCell::default(),
            opts,
            fault: None,
        })
    }

    /// Makes prepare or run fail as a device fault would (tests and `LDM_VULKAN_FAULT`).
    pub fn with_fault(mut self, fault: Option<Fault>) -> Self {
        self.fault = fault;
        self
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.gpu.info
    }

    /// The kernel variants this backend runs on its device.
    pub fn kernel_choice(&self) -> Result<variants::KernelChoice> {
        variants::KernelChoice::new(&self.gpu, &self.opts)
    }

    /// This device's memory model: its options, offset alignment and binding limit.
    pub fn memory_model(&self) -> DeviceModel {
        DeviceModel {
            opts: self.opts.clone(),
            offset_align: self.gpu.offset_align,
            unified: self.gpu.info.kind != "DiscreteGpu",
            max_binding: Some(self.gpu.info.max_storage_buffer_range as u64),
        }
    }

    /// Like `Backend::prepare`, keeping the concrete plan (for `peak_device_bytes`).
    pub fn prepare_plan(&self, graph: &Graph, weights: &dyn WeightSource) -> Result<VulkanPlan> {
        if self.fault == Some(Fault::Prepare) {
            return Err(Fault::Prepare.error());
        }
        let mut cache = self.cache.borrow_mut();
        let plan = VulkanPlan::new(self.gpu.clone(), &mut cache, &self.opts, graph, weights)?;
        Ok(plan.with_fault_on_run(self.fault == Some(Fault::Run)))
    }
}

/// The device memory this backend's plans hold, predicted from the lowering alone (the same
/// lowering `VulkanPlan::new` allocates from), for a device that need not be present.
#[derive(Clone, Debug)]
pub struct DeviceModel {
    pub opts: VulkanOptions,
    /// `minStorageBufferOffsetAlignment` in bytes; 256 (the most the spec allows) plans for
    /// any device.
    pub offset_align: u64,
    pub unified: bool,
    pub max_binding: Option<u64>,
}

impl DeviceModel {
    /// A device known only by a board profile: default options, the worst-case alignment.
    pub fn for_board(unified: bool, max_binding: Option<u64>) -> Self {
        DeviceModel {
            opts: VulkanOptions::default(),
            offset_align: 256,
            unified,
            max_binding,
        }
    }
}

impl crate::backend::DeviceMemoryModel for DeviceModel {
    fn predict(
        &self,
        graph: &Graph,
        weights: &dyn WeightSource,
    ) -> Result<crate::backend::DeviceMemory> {
        let align = (self.offset_align / 4).max(1);
        let fmt = |p: &str| plan::choose_fmt(weights, &self.opts, p);
        // The device's variants are unknown here; none of them changes the memory a plan holds.
        let opts = lower::LowerOpts {
            split_k: plan::split_k_enabled(),
            flash_attention: self.opts.flash_attention,
            int8_dot: false,
        };
        let low = lower::lower_with(graph, &fmt, align, opts)?;
        Ok(low.device_memory(graph))
    }
    fn unified(&self) -> bool {
        self.unified
    }
    fn max_binding(&self) -> Option<u64> {
        self.max_binding
    }
    fn upload_overhead(&self) -> u64 {
        upload::STAGING_BYTES
    }
}

impl Backend for VulkanBackend {
    fn name(&self) -> &'static str {
        "vulkan"
    }
    fn device_memory_model(&self) -> Option<Box<dyn crate::backend::DeviceMemoryModel>> {
        Some(Box::new(self.memory_model()))
    }
    fn prepare(&self, graph: &Graph, weights: &dyn WeightSource) -> Result<Box<dyn Executable>> {
        Ok(Box::new(self.prepare_plan(graph, weights)?))
    }
}
