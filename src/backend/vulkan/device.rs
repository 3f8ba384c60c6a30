//! Instance, physical device and compute queue selection, and the allocators shared by every
//! plan made on that device.
use super::verr;
use crate::Result;
use std::sync::Arc;
use vulkano::command_buffer::allocator::StandardCommandBufferAllocator;
use vulkano::descriptor_set::allocator::StandardDescriptorSetAllocator;
use vulkano::device::physical::{PhysicalDevice, PhysicalDeviceType};
use vulkano::device::{
    Device, DeviceCreateInfo, DeviceFeatures, Queue, QueueCreateInfo, QueueFlags,
};
use vulkano::instance::{Instance, InstanceCreateFlags, InstanceCreateInfo, InstanceExtensions};
use vulkano::memory::allocator::StandardMemoryAllocator;
use vulkano::{Version, VulkanLibrary};

/// What one physical device offers, as listed by `ldm devices` and used to pick kernel variants.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub index: usize,
    pub name: String,
    pub kind: String,
    pub api_version: String,
    pub has_compute: bool,
    pub f16_arith: bool,
    pub storage_16bit: bool,
    pub subgroup_size: Option<u32>,
    pub max_workgroup_invocations: u32,
    pub max_storage_buffer_range: u32,
    pub max_push_constants: u32,
    pub device_local_bytes: u64,
    /// `VkPhysicalDeviceProperties::vendorID` and the driver, for the workaround table.
    pub driver: super::workarounds::DriverIdent,
    /// Packed 4x8-bit integer dot products (`OpSDot`) in shaders.
    pub int_dot: bool,
}

/// A device with its compute queue and allocators.
pub struct Gpu {
    pub device: Arc<Device>,
    pub queue: Arc<Queue>,
    pub mem: Arc<StandardMemoryAllocator>,
    pub cmd: Arc<StandardCommandBufferAllocator>,
    pub desc: Arc<StandardDescriptorSetAllocator>,
    pub info: DeviceInfo,
    /// Offsets of storage-buffer bindings must be multiples of this (bytes).
    pub offset_align: u64,
    pub max_groups_x: u32,
}

fn instance() -> Result<Arc<Instance>> {
    // A missing loader (libvulkan.so.1) is the common "no Vulkan here" case: an error, not a panic.
    let library = VulkanLibrary::new().map_err(verr("cannot load the Vulkan loader"))?;
    // Portability enumeration lets MoltenVK-style drivers show up; only ask where supported.
    let portability = library.supported_extensions().khr_portability_enumeration;
    let info = InstanceCreateInfo {
        flags: if portability {
            InstanceCreateFlags::ENUMERATE_PORTABILITY
        } else {
            InstanceCreateFlags::empty()
        },
        enabled_extensions: InstanceExtensions {
            khr_portability_enumeration: portability,
            ..InstanceExtensions::empty()
        },
        ..Default::default()
    };
    Instance::new(library, info).map_err(verr("cannot create a Vulkan instance"))
}

/// Lower is better: discrete GPUs first, then integrated, virtual, other, and CPU rasterizers.
fn type_rank(t: PhysicalDeviceType) -> u32 {
    match t {
        PhysicalDeviceType::DiscreteGpu => 0,
        PhysicalDeviceType::IntegratedGpu => 1,
        PhysicalDeviceType::VirtualGpu => 2,
        PhysicalDeviceType::Cpu => 4,
        _ => 3,
    }
}

/// A queue family with compute, preferring a compute-only one (async compute on desktop GPUs).
fn compute_family(p: &PhysicalDevice) -> Option<u32> {
    let fams = p.queue_family_properties();
    let with = |dedicated: bool| {
        fams.iter().position(|f| {
            f.queue_flags.intersects(QueueFlags::COMPUTE)
                && (!dedicated || !f.queue_flags.intersects(QueueFlags::GRAPHICS))
        })
    };
    with(true).or_else(|| with(false)).map(|i| i as u32)
}

fn describe(index: usize, p: &PhysicalDevice) -> DeviceInfo {
    let props = p.properties();
    let feats = p.supported_features();
    let heap = p
        .memory_properties()
        .memory_heaps
        .iter()
        .filter(|h| {
            h.flags
                .intersects(vulkano::memory::MemoryHeapFlags::DEVICE_LOCAL)
        })
        .map(|h| h.size)
        .max()
        .unwrap_or(0);
    DeviceInfo {
        index,
        name: props.device_name.clone(),
        kind: format!("{:?}", props.device_type),
        api_version: format!("{}", p.api_version()),
        has_compute: compute_family(p).is_some(),
        f16_arith: feats.shader_float16,
        storage_16bit: feats.storage_buffer16_bit_access,
        subgroup_size: props.subgroup_size,
        max_workgroup_invocations: props.max_compute_work_group_invocations,
        max_storage_buffer_range: props.max_storage_buffer_range,
        max_push_constants: props.max_push_constants_size,
        device_local_bytes: heap,
        driver: super::workarounds::DriverIdent {
            vendor_id: props.vendor_id,
            driver: props.driver_id.map(|d| format!("{d:?}")),
        },
        int_dot: p.api_version() >= Version::V1_3
            && feats.shader_integer_dot_product
            && feats.shader_int8,
    }
}

/// Every physical device the loader reports, in enumeration order.
pub fn list_devices() -> Result<Vec<DeviceInfo>> {
    let inst = instance()?;
    let devs = inst
        .enumerate_physical_devices()
        .map_err(verr("cannot enumerate devices"))?;
    Ok(devs.enumerate().map(|(i, p)| describe(i, &p)).collect())
}

impl Gpu {
    /// Opens the best device with a compute queue, or the one `LDM_VULKAN_DEVICE=<index>` names.
    pub fn open() -> Result<Gpu> {
        let inst = instance()?;
        let devs: Vec<_> = inst
            .enumerate_physical_devices()
            .map_err(verr("cannot enumerate devices"))?
            .collect();
        let wanted = std::env::var("LDM_VULKAN_DEVICE")
            .ok()
            .and_then(|v| v.parse::<usize>().ok());
        let mut candidates: Vec<(usize, Arc<PhysicalDevice>, u32)> = devs
            .into_iter()
            .enumerate()
            .filter(|(i, _)| wanted.is_none_or(|w| w == *i))
            // Our SPIR-V targets Vulkan 1.1 semantics (storage buffer class, 16-bit reads).
            .filter(|(_, p)| p.api_version() >= Version::V1_1)
            .filter_map(|(i, p)| compute_family(&p).map(|q| (i, p, q)))
            .collect();
        candidates.sort_by_key(|(i, p, _)| (type_rank(p.properties().device_type), *i));
        let Some((index, physical, family)) = candidates.into_iter().next() else {
            return Err(super::backend_error(
                "no Vulkan 1.1 device with a compute queue (install a driver, e.g. mesa-vulkan-drivers)",
            ));
        };
        let sup = physical.supported_features();
        // Enable 16-bit features where present (Vulkan 1.2 has them in core); the kernels read
        // f16 through u32 words, so nothing breaks without them.
        let core12 = physical.api_version() >= Version::V1_2;
        let features = DeviceFeatures {
            shader_float16: core12 && sup.shader_float16,
            storage_buffer16_bit_access: core12 && sup.storage_buffer16_bit_access,
            uniform_and_storage_buffer16_bit_access: core12
                && sup.uniform_and_storage_buffer16_bit_access,
            // Core in Vulkan 1.3; the int8-dot kernels are only chosen where both are on (naga
            // declares the Int8 capability beside DotProduct).
            shader_integer_dot_product: physical.api_version() >= Version::V1_3
                && sup.shader_integer_dot_product
                && sup.shader_int8,
            shader_int8: physical.api_version() >= Version::V1_3
                && sup.shader_integer_dot_product
                && sup.shader_int8,
            ..DeviceFeatures::empty()
        };
        let info = describe(index, &physical);
        let props = physical.properties();
        let offset_align = props
            .min_storage_buffer_offset_alignment
            .as_devicesize()
            .max(4);
        let max_groups_x = props.max_compute_work_group_count[0].max(1);
        let (device, mut queues) = Device::new(
            physical.clone(),
            DeviceCreateInfo {
                queue_create_infos: vec![QueueCreateInfo {
                    queue_family_index: family,
                    ..Default::default()
                }],
                enabled_features: features,
                ..Default::default()
            },
        )
        .map_err(verr("cannot create the logical device"))?;
        let queue = queues
            .next()
            .ok_or_else(|| super::backend_error("the device returned no queue"))?;
        log::info!(
            "vulkan: using device {index} `{}` ({}, Vulkan {}, subgroup {:?})",
            info.name,
            info.kind,
            info.api_version,
            info.subgroup_size
        );
        Ok(Gpu {
            mem: Arc::new(StandardMemoryAllocator::new_default(device.clone())),
            cmd: Arc::new(StandardCommandBufferAllocator::new(
                device.clone(),
                Default::default(),
            )),
            desc: Arc::new(StandardDescriptorSetAllocator::new(
                device.clone(),
                Default::default(),
            )),
            device,
            queue,
            info,
            offset_align,
            max_groups_x,
        })
    }

    /// Workgroup grid for `groups` workgroups of a 1-D kernel: x capped at the device limit
    /// (and 65535, the portable minimum), the rest in y. Kernels bound-check the linear index.
    pub fn grid(&self, groups: u64) -> [u32; 3] {
        let cap = self.max_groups_x.min(65535) as u64;
        let groups = groups.max(1);
        let x = groups.min(cap);
        [x as u32, groups.div_ceil(x) as u32, 1]
    }
}
