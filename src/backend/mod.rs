//! Executors of the graph IR. `reference` is the oracle; every other backend is tested against it.
use crate::graph::Graph;
use crate::Result;
use std::collections::HashMap;

pub mod cpu;
pub mod fallback;
pub mod profile;
pub mod reference;
#[cfg(feature = "vulkan")]
pub mod vulkan;

/// A host tensor: f32 data in row-major order. Integer inputs (token ids) are carried as exact
/// integer-valued f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(crate::Error::Input(format!(
                "tensor of shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }
    pub fn zeros(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }
}

/// Where weights come from, addressed by diffusers-style path. Backends read each weight once
/// at prepare time, dequantized to f32 unless they handle the stored type themselves.
pub trait WeightSource {
    fn shape(&self, path: &str) -> Option<Vec<usize>>;
    fn load_f32(&self, path: &str) -> Result<Vec<f32>>;
    /// The stored dtype of a weight, when the source knows it. Lets a backend pick kernels that
    /// read f16/q8/q4 directly. Default: unknown (treated as f32).
    fn raw_dtype(&self, _path: &str) -> Option<crate::format::DType> {
        None
    }
    /// The stored bytes of a weight in its dtype's layout (`format::quant` for q8/q4), borrowed
    /// from the mapping where possible. Default: not available (use `load_f32`).
    fn load_raw(&self, _path: &str) -> Option<(crate::format::DType, std::borrow::Cow<'_, [u8]>)> {
        None
    }
    /// The stored bytes of a weight as a view that outlives `self` (the model file's mapping,
    /// reference-counted), for plans that keep reading weights in their stored dtype instead of
    /// holding a converted copy. Default: not available.
    fn load_shared(
        &self,
        _path: &str,
    ) -> Option<(crate::format::DType, crate::format::SharedBytes)> {
        None
    }
    /// The backend has copied `path` into memory of its own and will not read it again:
    /// a mapped source may drop its pages. Default: nothing.
    fn done_with(&self, _path: &str) {}
}

impl WeightSource for HashMap<String, Tensor> {
    fn shape(&self, path: &str) -> Option<Vec<usize>> {
        self.get(path).map(|t| t.shape.clone())
    }
    fn load_f32(&self, path: &str) -> Result<Vec<f32>> {
        self.get(path)
            .map(|t| t.data.clone())
            .ok_or_else(|| crate::Error::MissingWeight(path.to_string()))
    }
}

/// Checks that a weight source holds exactly the weights a graph reads, at the shapes it reads
/// them. This is how "the config must agree with the tensors" is enforced.
pub fn check_weights(graph: &Graph, weights: &dyn WeightSource) -> Result<()> {
    for (path, expected) in graph.params() {
        match weights.shape(&path) {
            None => return Err(crate::Error::MissingWeight(path)),
            Some(found) if found != expected => {
                return Err(crate::Error::WeightShape {
                    path,
                    expected,
                    found,
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Device memory one prepared graph holds on a backend with memory of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Weights in the device's formats.
    pub weights: u64,
    /// The activation arena.
    pub activations: u64,
    /// Host-visible input and output buffers.
    pub transfer: u64,
    /// The largest buffer one kernel binds: devices cap it (`maxStorageBufferRange`).
    pub largest_binding: u64,
}

impl DeviceMemory {
    pub fn total(&self) -> u64 {
        self.weights + self.activations + self.transfer
    }
}

/// Predicts, from a graph and its weights' stored dtypes and without a device, the device
/// memory a backend's plan of that graph will hold: what the memory planner needs to plan a
/// board it does not run on.
pub trait DeviceMemoryModel {
    fn predict(&self, graph: &Graph, weights: &dyn WeightSource) -> Result<DeviceMemory>;
    /// Whether device memory is the host's (integrated GPUs, software rasterisers), so it
    /// counts against the host's budget.
    fn unified(&self) -> bool;
    /// The largest storage binding the device allows, where known.
    fn max_binding(&self) -> Option<u64>;
    /// Host bytes a stage holds while its weights go to the device, besides the mapped
    /// weights themselves (staging buffers).
    fn upload_overhead(&self) -> u64;
}

/// An executor of graphs.
pub trait Backend {
    fn name(&self) -> &'static str;
    /// Compiles `graph` with its weights into something that can run repeatedly.
    fn prepare(&self, graph: &Graph, weights: &dyn WeightSource) -> Result<Box<dyn Executable>>;
    /// For `auto`: the name of the backend whose faults are answered, and the backend that
    /// reruns a request that failed with one (see [`fallback`]). Default: none.
    fn fallback(&self) -> Option<(&'static str, &dyn Backend)> {
        None
    }
    /// How this backend's plans use device memory; None where plans live in host memory
    /// (the host planner models those).
    fn device_memory_model(&self) -> Option<Box<dyn DeviceMemoryModel>> {
        None
    }
}

/// A prepared graph. `inputs` are given in the order of `Graph::inputs()`.
pub trait Executable {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>>;
    /// One run with a per-op time breakdown, for backends that can measure one (the Vulkan
    /// backend, with GPU timestamps). Default: not available; nothing is run.
    fn profile(&mut self, _inputs: &[Tensor]) -> Result<Option<profile::Profile>> {
        Ok(None)
    }
    /// Device memory the plan holds (weights, activations, transfer buffers), for backends
    /// with their own memory. Default: none (the host's RSS says it).
    fn device_bytes(&self) -> Option<u64> {
        None
    }
}

/// Checks inputs against the graph's input nodes; shared by every backend so errors read alike.
pub fn check_inputs(graph: &Graph, inputs: &[Tensor]) -> Result<()> {
    let ids = graph.inputs();
    if ids.len() != inputs.len() {
        return Err(crate::Error::Input(format!(
            "graph takes {} inputs, got {}",
            ids.len(),
            inputs.len()
        )));
    }
    for (&id, t) in ids.iter().zip(inputs) {
        let node = &graph.nodes[id];
        if node.shape != t.shape || t.data.len() != t.shape.iter().product::<usize>() {
            let name = match &node.op {
                crate::graph::Op::Input { name, .. } => name.as_str(),
                _ => "?",
            };
            return Err(crate::Error::Input(format!(
                "input `{name}` must have shape {:?}, got {:?}",
                node.shape, t.shape
            )));
        }
    }
    Ok(())
}

/// Backend selection by name. `auto` prefers a GPU backend when one is built and usable and
/// otherwise uses the CPU, saying why in the log; an explicit unavailable backend is an error.
pub fn select(name: &str) -> Result<Box<dyn Backend>> {
    match name {
        "cpu" => Ok(Box::new(cpu::CpuBackend)),
        "cpu-packed" => Ok(Box::new(cpu::CpuPackedBackend)),
        "cpu-expanded" => Ok(Box::new(cpu::CpuExpandedBackend)),
        "reference" => Ok(Box::new(reference::ReferenceBackend)),
        "auto" => Ok(select_auto(&AutoOptions::from_env())),
        #[cfg(feature = "vulkan")]
        "vulkan" => Ok(Box::new(
            vulkan::VulkanBackend::new()?.with_fault(vulkan::Fault::from_env()),
        )),
        #[cfg(not(feature = "vulkan"))]
        "vulkan" => Err(crate::Error::Backend {
            backend: "vulkan",
            msg: "this build has no Vulkan backend (built without the `vulkan` feature)".into(),
        }),
        other => Err(crate::Error::Input(format!(
            "unknown backend `{other}` (expected auto, cpu, cpu-packed, cpu-expanded, vulkan or reference)"
        ))),
    }
}

/// How `auto` chooses. `from_env` is what the CLI uses; tests build their own.
#[derive(Clone, Debug, Default)]
pub struct AutoOptions {
    /// Also take a software Vulkan device (llvmpipe): `LDM_AUTO_SOFTWARE_VULKAN=1`. For tests
    /// of the auto path on machines without a GPU; slower than the CPU backend otherwise.
    pub allow_software: bool,
    /// A fault to inject into the Vulkan backend (`LDM_VULKAN_FAULT=prepare|run`).
    #[cfg(feature = "vulkan")]
    pub fault: Option<vulkan::Fault>,
}

impl AutoOptions {
    pub fn from_env() -> Self {
        AutoOptions {
            allow_software: std::env::var("LDM_AUTO_SOFTWARE_VULKAN").is_ok_and(|v| v == "1"),
            #[cfg(feature = "vulkan")]
            fault: vulkan::Fault::from_env(),
        }
    }
}

/// `auto`: Vulkan (with the CPU behind it for faults) when a suitable device exists, otherwise
/// the CPU, saying why in the log. Never fails: the CPU is always there.
pub fn select_auto(opts: &AutoOptions) -> Box<dyn Backend> {
    #[cfg(feature = "vulkan")]
    match vulkan::VulkanBackend::new() {
        // A software rasteriser (llvmpipe, SwiftShader) is slower than tract on the same
        // cores, so auto only takes a real GPU unless told otherwise; `--backend vulkan`
        // still uses one.
        Ok(v) if v.device().kind == "Cpu" && !opts.allow_software => log::info!(
            "backend auto: `{}` is a software Vulkan device, using the CPU (tract)",
            v.device().name
        ),
        Ok(v) => {
            log::info!(
                "backend auto: using Vulkan on `{}`, with the CPU (tract) as fallback",
                v.device().name
            );
            let v = v.with_fault(opts.fault);
            return Box::new(fallback::FallbackBackend::new(
                Box::new(v),
                Box::new(cpu::CpuBackend),
            ));
        }
        Err(e) => log::info!("backend auto: Vulkan unavailable ({e}), using the CPU (tract)"),
    }
    #[cfg(not(feature = "vulkan"))]
    {
        let _ = opts; // nothing to choose between without a GPU backend
        log::info!("backend auto: built without the `vulkan` feature, using the CPU (tract)");
    }
    Box::new(cpu::CpuBackend)
}
