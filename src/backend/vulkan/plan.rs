//! A prepared graph: weights on the device, one activation arena, and ONE command buffer for
//! the whole graph, recorded at prepare time and replayed by every `run` (inputs are copied in
//! at its start and outputs copied out at its end).
use super::device::Gpu;
use super::lower::{lower, Groups, Storage, WeightData, WeightFmt};
use super::pipelines::PipelineCache;
use super::upload::{device_buffer, host_buffer, Uploader};
use super::{backend_error, verr, VulkanOptions};
use crate::backend::{check_inputs, check_weights, Executable, Tensor, WeightSource};
use crate::format::DType;
use crate::graph::Graph;
use crate::Result;
use std::sync::Arc;
use vulkano::buffer::{BufferUsage, Subbuffer};
use vulkano::command_buffer::{
    AutoCommandBufferBuilder, CommandBufferUsage, CopyBufferInfo, PrimaryAutoCommandBuffer,
};
use vulkano::descriptor_set::{DescriptorSet, WriteDescriptorSet};
use vulkano::pipeline::PipelineBindPoint;
use vulkano::sync::GpuFuture;

pub struct VulkanPlan {
    gpu: Arc<Gpu>,
    graph: Graph,
    cb: Arc<PrimaryAutoCommandBuffer>,
    inputs: Vec<Subbuffer<[f32]>>,
    outputs: Vec<(Subbuffer<[f32]>, Vec<usize>)>,
    id_checks: Vec<(usize, usize)>,
    device_bytes: u64,
    dispatches: usize,
}

impl VulkanPlan {
    /// Device memory this plan holds: weights + activation arena + input/output buffers.
    pub fn peak_device_bytes(&self) -> u64 {
        self.device_bytes
    }
    /// Kernel dispatches per run (after fusion).
    pub fn dispatches(&self) -> usize {
        self.dispatches
    }
}

/// How the source stores a matrix weight, and how we keep it on the device.
fn choose_fmt(weights: &dyn WeightSource, opts: &VulkanOptions, path: &str) -> WeightFmt {
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
            let want = match fmt {
                WeightFmt::F16 => DType::F16,
                WeightFmt::Q8 => DType::Q8,
                _ => DType::Q4,
            };
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
        let low = lower(graph, &|p| choose_fmt(weights, opts, p), align)?;

        // Weights: one tensor in host memory at a time, through the bounded staging buffer.
        let mut up = Uploader::new(&gpu)?;
        let mut wbufs = Vec::with_capacity(low.weights.len());
        let mut device_bytes = 0u64;
        for w in &low.weights {
            let bytes = weight_bytes(weights, w)?;
            device_bytes += (bytes.len() as u64).div_ceil(4) * 4;
            wbufs.push(up.upload(&bytes)?);
        }
        up.finish()?;

        let arena = device_buffer(
            &gpu,
            low.arena_elems * 4,
            BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_SRC | BufferUsage::TRANSFER_DST,
        )?;
        device_bytes += low.arena_elems.max(1) * 4;
        let view = |s: &Storage| -> Subbuffer<[u8]> {
            match *s {
                Storage::Arena { off, len } => arena.clone().slice(off * 4..(off + len.max(1)) * 4),
                Storage::Weight(k) => wbufs[k].clone(),
            }
        };

        let mut b = AutoCommandBufferBuilder::primary(
            gpu.cmd.clone(),
            gpu.queue.queue_family_index(),
            CommandBufferUsage::MultipleSubmit,
        )
        .map_err(verr("command buffer"))?;

        let mut inputs = Vec::new();
        for (s, &id) in low.inputs.iter().zip(&graph.inputs()) {
            let n = graph.nodes[id].shape.iter().product::<usize>() as u64;
            let hb = host_buffer(&gpu, n, BufferUsage::TRANSFER_SRC, false)?;
            device_bytes += n.max(1) * 4;
            b.copy_buffer(CopyBufferInfo::buffers(hb.clone(), view(s)))
                .map_err(verr("input copy"))?;
            inputs.push(hb);
        }

        for st in &low.steps {
            let k = cache.get(&gpu.device, &st.kernel)?;
            let layout = k.layout().clone();
            let set_layout = layout.set_layouts().first().cloned().ok_or_else(|| {
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
            b.bind_pipeline_compute(k.pipeline.clone())
                .map_err(verr("bind pipeline"))?
                .bind_descriptor_sets(PipelineBindPoint::Compute, layout.clone(), 0, set)
                .map_err(verr("bind descriptor set"))?;
            // Push constants in 16-byte pieces, zero padded to the kernel's block size.
            let words = (k.push_bytes / 4) as usize;
            let mut push = st.push.clone();
            push.resize(words.div_ceil(4) * 4, 0);
            for (c, chunk) in push.chunks(4).enumerate() {
                let off = c as u32 * 16;
                if off >= k.push_bytes {
                    break;
                }
                if off + 16 <= k.push_bytes {
                    b.push_constants(
                        layout.clone(),
                        off,
                        [chunk[0], chunk[1], chunk[2], chunk[3]],
                    )
                } else {
                    let mut r = Ok(&mut b);
                    for (e, &w) in chunk
                        .iter()
                        .enumerate()
                        .take(((k.push_bytes - off) / 4) as usize)
                    {
                        r = b.push_constants(layout.clone(), off + 4 * e as u32, w);
                        if r.is_err() {
                            break;
                        }
                    }
                    r
                }
                .map_err(verr("push constants"))?;
            }
            let groups = match st.groups {
                Groups::Linear(n) => gpu.grid(n),
                Groups::Grid(g) => g,
            };
            // Safety: every kernel bound-checks its indices against the sizes pushed above, and
            // every binding covers exactly the tensor the lowering sized it for.
            unsafe { b.dispatch(groups) }.map_err(verr(&format!(
                "dispatch `{}` (node {})",
                st.kernel, st.node
            )))?;
        }

        let mut outputs = Vec::new();
        for (s, shape) in &low.outputs {
            let n = shape.iter().product::<usize>() as u64;
            let hb = host_buffer(&gpu, n, BufferUsage::TRANSFER_DST, true)?;
            device_bytes += n.max(1) * 4;
            b.copy_buffer(CopyBufferInfo::buffers(view(s), hb.clone()))
                .map_err(verr("output copy"))?;
            outputs.push((hb, shape.clone()));
        }
        let cb = b.build().map_err(verr("command buffer"))?;
        log::info!(
            "vulkan: prepared {} dispatches; device memory {:.1} MiB (activations {:.1} MiB)",
            low.steps.len(),
            device_bytes as f64 / (1 << 20) as f64,
            (low.arena_elems * 4) as f64 / (1 << 20) as f64
        );
        Ok(VulkanPlan {
            gpu,
            graph: graph.clone(),
            cb,
            inputs,
            outputs,
            id_checks: low.id_checks,
            device_bytes,
            dispatches: low.steps.len(),
        })
    }
}

impl Executable for VulkanPlan {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        check_inputs(&self.graph, inputs)?;
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
        for (hb, t) in self.inputs.iter().zip(inputs) {
            hb.write()
                .map_err(verr("input buffer"))?
                .copy_from_slice(&t.data);
        }
        vulkano::sync::now(self.gpu.device.clone())
            .then_execute(self.gpu.queue.clone(), self.cb.clone())
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
