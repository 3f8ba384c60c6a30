//! A prepared graph: weights on the device, one activation arena, and ONE command buffer for
//! the whole graph, recorded at prepare time and replayed by every `run` (inputs are copied in
//! at its start and outputs copied out at its end).
use super::device::Gpu;
use super::lower::{lower_with, Groups, Step, Storage, WeightData, WeightFmt};
use super::pipelines::PipelineCache;
use super::profile::Profiler;
use super::record::{Dispatch, Recording};
use super::upload::{device_buffer, host_buffer, Uploader};
use super::variants::KernelChoice;
use super::{backend_error, verr, VulkanOptions};
use crate::backend::profile::Profile;
use crate::backend::{check_inputs, check_weights, DeviceMemory, Executable, Tensor, WeightSource};
use crate::format::DType;
use crate::graph::Graph;
use crate::Result;
use std::sync::Arc;
use vulkano::buffer::{BufferUsage, Subbuffer};
use vulkano::command_buffer::PrimaryAutoCommandBuffer;
use vulkano::descriptor_set::{DescriptorSet, WriteDescriptorSet};
use vulkano::sync::GpuFuture;

pub struct VulkanPlan {
    gpu: Arc<Gpu>,
    graph: Graph,
    cb: Arc<PrimaryAutoCommandBuffer>,
    inputs: Vec<Subbuffer<[f32]>>,
    outputs: Vec<(Subbuffer<[f32]>, Vec<usize>)>,
    id_checks: Vec<(usize, usize)>,
    /// Sizes of the buffers this plan allocated, as the device reports them.
    device: DeviceMemory,
    dispatches: usize,
    fault_on_run: bool,
    /// Kept to record the timestamped variant on the first `profile`.
    recording: Recording,
    profiler: Option<Profiler>,
}

impl VulkanPlan {
    /// Device memory this plan holds: weights + activation arena + input/output buffers.
    pub fn peak_device_bytes(&self) -> u64 {
        self.device.total()
    }
    /// The same, by kind of buffer (read from the allocated buffers, not from the lowering).
    pub fn device_memory(&self) -> DeviceMemory {
        self.device
    }
    /// Every run fails as a lost device would (see `fault`).
    pub fn with_fault_on_run(mut self, on: bool) -> Self {
        self.fault_on_run = on;
        self
    }
    /// Kernel dispatches per run (after fusion).
    pub fn dispatches(&self) -> usize {
        self.dispatches
    }
}

/// The op kind a dispatch is counted under in the time breakdown: the graph op, marked when a
/// GroupNorm carries its fused SiLU (push word 5 is the lowering's fusion flag).
fn op_label(graph: &Graph, st: &Step) -> String {
    let kind = graph.nodes[st.node].op.kind();
    if st.kernel == "group_norm" && st.push.get(5) == Some(&1) {
        format!("{kind}+silu")
    } else {
        kind.to_string()
    }
}

/// Split-K on, unless `LDM_VULKAN_SPLIT_K=0` (an A/B switch to time the plain product on a
/// GPU).
pub(super) fn split_k_enabled() -> bool {
    std::env::var("LDM_VULKAN_SPLIT_K").map_or(true, |v| v != "0")
}

/// How the source stores a matrix weight, and how we keep it on the device.
pub(super) fn choose_fmt(
    weights: &dyn WeightSource,
    opts: &VulkanOptions,
    path: &str,
) -> WeightFmt {
    match weights.raw_dtype(path) {
        Some(DType::Q8) if opts.quantized => WeightFmt::Q8,
        Some(DType::Q4) if opts.quantized => WeightFmt::Q4,
        Some(DType::F16) if opts.f16_weights || opts.quantized => WeightFmt::F16,
        _ if opts.f16_weights => WeightFmt::F16,
        _ => WeightFmt::F32,
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Bytes of one weight in the device format.
fn weight_bytes(weights: &dyn WeightSource, w: &WeightData) -> Result<Vec<u8>> {
    match w {
        WeightData::Const(v) => Ok(f32_bytes(v)),
        WeightData::Param {
            path,
            fmt: WeightFmt::F32,
            ..
        } => Ok(f32_bytes(&weights.load_f32(path)?)),
        WeightData::Param { path, fmt, numel } => {
            let want = fmt.dtype();
            if let Some((dt, bytes)) = weights.load_raw(path) {
                if dt == want {
                    if want.byte_len(*numel as u64) != Some(bytes.len() as u64) {
                        return Err(backend_error(format!(
                            "weight `{path}` has {} bytes",
                            bytes.len()
                        )));
                    }
                    return Ok(bytes.into_owned());
                }
            }
            if *fmt == WeightFmt::F16 {
                let v = weights.load_f32(path)?;
                return Ok(v
                    .iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect());
            }
            Err(backend_error(format!(
                "weight `{path}` is not stored as {want:?}"
            )))
        }
    }
}

impl VulkanPlan {
    pub fn new(
        gpu: Arc<Gpu>,
        cache: &mut PipelineCache,
        opts: &VulkanOptions,
        graph: &Graph,
        weights: &dyn WeightSource,
    ) -> Result<Self> {
        check_weights(graph, weights)?;
        let align = (gpu.offset_align / 4).max(1);
        let choice = KernelChoice::new(&gpu, opts)?;
        let low = lower_with(
            graph,
            &|p| choose_fmt(weights, opts, p),
            align,
            choice.lower_opts(split_k_enabled()),
        )?;

        // Weights: one tensor in host memory at a time, through the bounded staging buffer.
        let mut up = Uploader::new(&gpu)?;
        let mut wbufs = Vec::with_capacity(low.weights.len());
        let mut device = DeviceMemory::default();
        for w in &low.weights {
            let bytes = weight_bytes(weights, w)?;
            // On unified memory the mapped copy would otherwise stay resident beside the
            // device's for the whole stage (the planner counts one tensor at a time).
            if let WeightData::Param { path, .. } = w {
                weights.done_with(path);
            }
            let buf = up.upload(&bytes)?;
            device.weights += buf.size();
            wbufs.push(buf);
        }
        up.finish()?;

        let arena = device_buffer(
            &gpu,
            low.arena_elems * 4,
            BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_SRC | BufferUsage::TRANSFER_DST,
        )?;
        device.activations = arena.size();
        let view = |s: &Storage| -> Subbuffer<[u8]> {
            match *s {
                Storage::Arena { off, len } => arena.clone().slice(off * 4..(off + len.max(1)) * 4),
                Storage::Weight(k) => wbufs[k].clone(),
            }
        };

        let mut rec = Recording::default();
        let mut inputs = Vec::new();
        for (s, &id) in low.inputs.iter().zip(&graph.inputs()) {
            let n = graph.nodes[id].shape.iter().product::<usize>() as u64;
            let hb = host_buffer(&gpu, n, BufferUsage::TRANSFER_SRC, false)?;
            device.transfer += hb.size();
            rec.input_copies.push((hb.clone(), view(s)));
            inputs.push(hb);
        }

        // Drivers cap one binding (llvmpipe: 128 MiB); say so instead of a validation error.
        let max_range = gpu.info.max_storage_buffer_range as u64;
        for st in &low.steps {
            let big = st.bufs.iter().map(|s| view(s).size()).max().unwrap_or(0);
            device.largest_binding = device.largest_binding.max(big);
            if big > max_range {
                return Err(backend_error(format!(
                    "`{}` (node {}) needs a buffer of {big} bytes ({:.1} MiB), more than this \
                     device's largest storage binding of {max_range} bytes; use a smaller image \
                     or another backend",
                    st.kernel,
                    st.node,
                    big as f64 / (1 << 20) as f64,
                )));
            }
            let variant = choice.kernel(&st.kernel);
            let kernel = cache.get(&gpu.device, &variant)?;
            let set_layout = kernel
                .layout()
                .set_layouts()
                .first()
                .cloned()
                .ok_or_else(|| {
                    backend_error(format!("kernel `{}` has no descriptor set", st.kernel))
                })?;
            let writes = st
                .bufs
                .iter()
                .enumerate()
                .map(|(i, s)| WriteDescriptorSet::buffer(i as u32, view(s)));
            let set =
                DescriptorSet::new(gpu.desc.clone(), set_layout, writes, []).map_err(verr(
                    &format!("descriptor set of `{}` (node {})", st.kernel, st.node),
                ))?;
            let groups = match st.groups {
                Groups::Linear(n) => gpu.grid(n),
                Groups::Grid(g) => g,
            };
            rec.dispatches.push(Dispatch {
                kernel,
                set,
                push: st.push.clone(),
                groups,
                detail: format!(
                    "{variant} node {} -> {:?} grid {groups:?}",
                    st.node, graph.nodes[st.node].shape
                ),
                name: st.kernel.clone(),
                node: st.node,
                label: op_label(graph, st),
            });
        }

        let mut outputs = Vec::new();
        for (s, shape) in &low.outputs {
            let n = shape.iter().product::<usize>() as u64;
            let hb = host_buffer(&gpu, n, BufferUsage::TRANSFER_DST, true)?;
            device.transfer += hb.size();
            rec.output_copies.push((view(s), hb.clone()));
            outputs.push((hb, shape.clone()));
        }
        let cb = rec.record(&gpu, None)?;
        log::info!(
            "vulkan: prepared {} dispatches; device memory {:.1} MiB (activations {:.1} MiB)",
            low.steps.len(),
            device.total() as f64 / (1 << 20) as f64,
            (low.arena_elems * 4) as f64 / (1 << 20) as f64
        );
        Ok(VulkanPlan {
            gpu,
            graph: graph.clone(),
            cb,
            inputs,
            outputs,
            id_checks: low.id_checks,
            device,
            dispatches: low.steps.len(),
            fault_on_run: false,
            recording: rec,
            profiler: None,
        })
    }
}

impl Executable for VulkanPlan {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.check(inputs)?;
        let cb = self.cb.clone();
        self.execute(inputs, cb)
    }

    fn profile(&mut self, inputs: &[Tensor]) -> Result<Option<Profile>> {
        self.check(inputs)?;
        if self.profiler.is_none() {
            self.profiler = Profiler::new(&self.gpu, &self.recording)?;
        }
        let Some(cb) = self.profiler.as_ref().map(|p| p.cb.clone()) else {
            return Ok(None);
        };
        self.execute(inputs, cb)?;
        self.profiler
            .as_ref()
            .map(|p| p.read(&self.recording))
            .transpose()
    }

    fn device_bytes(&self) -> Option<u64> {
        Some(self.device.total())
    }
}

impl VulkanPlan {
    /// Input shapes, the injected fault and token ids, before anything reaches the device.
    fn check(&self, inputs: &[Tensor]) -> Result<()> {
        check_inputs(&self.graph, inputs)?;
        if self.fault_on_run {
            return Err(super::Fault::Run.error());
        }
        for &(k, vocab) in &self.id_checks {
            if let Some(bad) = inputs[k]
                .data
                .iter()
                .find(|&&id| !(id >= 0.0 && (id as usize) < vocab && id.fract() == 0.0))
            {
                return Err(crate::Error::Input(format!(
                    "token id {bad} outside the vocabulary of {vocab}"
                )));
            }
        }
        Ok(())
    }

    /// Writes the inputs, replays `cb` and reads the outputs.
    fn execute(
        &mut self,
        inputs: &[Tensor],
        cb: Arc<PrimaryAutoCommandBuffer>,
    ) -> Result<Vec<Tensor>> {
        for (hb, t) in self.inputs.iter().zip(inputs) {
            hb.write()
                .map_err(verr("input buffer"))?
                .copy_from_slice(&t.data);
        }
        vulkano::sync::now(self.gpu.device.clone())
            .then_execute(self.gpu.queue.clone(), cb)
            .map_err(verr("submit"))?
            .then_signal_fence_and_flush()
            .map_err(verr("submit"))?
            .wait(None)
            .map_err(verr("run"))?;
        self.outputs
            .iter()
            .map(|(hb, shape)| {
                let data = hb.read().map_err(verr("output buffer"))?.to_vec();
                Tensor::new(shape.clone(), data)
            })
            .collect()
    }
}
