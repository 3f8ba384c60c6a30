//! Recording a prepared plan into a command buffer: input copies, every dispatch, output copies.
//! Kept apart from planning so the same plan can be recorded twice: plainly (what `run`
//! replays) and with a timestamp after each dispatch (what `profile` replays).
use super::device::Gpu;
use super::pipelines::Kernel;
use super::verr;
use crate::Result;
use std::sync::Arc;
use vulkano::buffer::Subbuffer;
use vulkano::command_buffer::{
    AutoCommandBufferBuilder, CommandBufferUsage, CopyBufferInfo, PrimaryAutoCommandBuffer,
};
use vulkano::descriptor_set::DescriptorSet;
use vulkano::pipeline::PipelineBindPoint;
use vulkano::query::QueryPool;
use vulkano::sync::PipelineStage;

/// One kernel dispatch with everything bound.
pub struct Dispatch {
    pub kernel: Arc<Kernel>,
    pub set: Arc<DescriptorSet>,
    pub push: Vec<u32>,
    pub groups: [u32; 3],
    /// Kernel name and graph node, for error messages.
    pub name: String,
    pub node: usize,
    /// Op kind for the time breakdown (`conv2d`, `group_norm+silu`, ...).
    pub label: String,
    /// Kernel variant, node, output shape and grid, for the list of slowest steps.
    pub detail: String,
}

/// What one run executes, in order.
#[derive(Default)]
pub struct Recording {
    pub input_copies: Vec<(Subbuffer<[f32]>, Subbuffer<[u8]>)>,
    pub dispatches: Vec<Dispatch>,
    pub output_copies: Vec<(Subbuffer<[u8]>, Subbuffer<[f32]>)>,
}

impl Recording {
    /// Records the whole run. With `timestamps` (a pool of `dispatches.len() + 1` timestamp
    /// queries), query 0 is written before the first dispatch and query i+1 after dispatch i.
    pub fn record(
        &self,
        gpu: &Gpu,
        timestamps: Option<&Arc<QueryPool>>,
    ) -> Result<Arc<PrimaryAutoCommandBuffer>> {
        let mut b = AutoCommandBufferBuilder::primary(
            gpu.cmd.clone(),
            gpu.queue.queue_family_index(),
            CommandBufferUsage::MultipleSubmit,
        )
        .map_err(verr("command buffer"))?;
        for (src, dst) in &self.input_copies {
            b.copy_buffer(CopyBufferInfo::buffers(src.clone(), dst.clone()))
                .map_err(verr("input copy"))?;
        }
        let stamp = |b: &mut AutoCommandBufferBuilder<_>, q: u32| -> Result<()> {
            if let Some(pool) = timestamps {
                // Safety: the pool is reset at the start of this very command buffer and each
                // query is written once per submission.
                unsafe { b.write_timestamp(pool.clone(), q, PipelineStage::ComputeShader) }
                    .map_err(verr("timestamp"))?;
            }
            Ok(())
        };
        if let Some(pool) = timestamps {
            // Safety: no other command buffer uses this pool (one profiler per plan).
            unsafe { b.reset_query_pool(pool.clone(), 0..self.dispatches.len() as u32 + 1) }
                .map_err(verr("reset timestamps"))?;
        }
        stamp(&mut b, 0)?;
        for (i, d) in self.dispatches.iter().enumerate() {
            dispatch(&mut b, d)?;
            stamp(&mut b, i as u32 + 1)?;
        }
        for (src, dst) in &self.output_copies {
            b.copy_buffer(CopyBufferInfo::buffers(src.clone(), dst.clone()))
                .map_err(verr("output copy"))?;
        }
        b.build().map_err(verr("command buffer"))
    }
}

fn dispatch(
    b: &mut AutoCommandBufferBuilder<PrimaryAutoCommandBuffer>,
    d: &Dispatch,
) -> Result<()> {
    let k = &d.kernel;
    let layout = k.layout().clone();
    b.bind_pipeline_compute(k.pipeline.clone())
        .map_err(verr("bind pipeline"))?
        .bind_descriptor_sets(PipelineBindPoint::Compute, layout.clone(), 0, d.set.clone())
        .map_err(verr("bind descriptor set"))?;
    // Push constants in 16-byte pieces, zero padded to the kernel's block size; a block that is
    // not a multiple of 16 bytes gets its tail word by word.
    let words = (k.push_bytes / 4) as usize;
    let mut push = d.push.clone();
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
            .map_err(verr("push constants"))?;
        } else {
            let tail = ((k.push_bytes - off) / 4) as usize;
            for (e, &w) in chunk.iter().enumerate().take(tail) {
                b.push_constants(layout.clone(), off + 4 * e as u32, w)
                    .map_err(verr("push constants"))?;
            }
        }
    }
    // Safety: every kernel bound-checks its indices against the sizes pushed above, and every
    // binding covers exactly the tensor the lowering sized it for.
    unsafe { b.dispatch(d.groups) }
        .map_err(verr(&format!("dispatch `{}` (node {})", d.name, d.node)))?;
    Ok(())
}
