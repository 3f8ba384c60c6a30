//! Weight upload through one bounded staging buffer: tensors are copied into it piece by piece
//! and flushed to device-local buffers with one submission per full staging buffer, so host
//! memory holds at most one tensor plus the staging buffer, never the whole model.
use super::device::Gpu;
use super::{backend_error, verr};
use crate::Result;
use vulkano::buffer::{Buffer, BufferCreateInfo, BufferUsage, Subbuffer};
use vulkano::command_buffer::{
    AutoCommandBufferBuilder, BufferCopy, CommandBufferUsage, CopyBufferInfoTyped,
};
use vulkano::memory::allocator::{AllocationCreateInfo, MemoryTypeFilter};
use vulkano::sync::GpuFuture;

/// Staging size: big enough to amortise submissions, small next to any model.
pub const STAGING_BYTES: u64 = 16 << 20;

pub fn device_buffer(gpu: &Gpu, bytes: u64, usage: BufferUsage) -> Result<Subbuffer<[u8]>> {
    Buffer::new_slice::<u8>(
        gpu.mem.clone(),
        BufferCreateInfo {
            usage,
            ..Default::default()
        },
        AllocationCreateInfo {
            memory_type_filter: MemoryTypeFilter::PREFER_DEVICE,
            ..Default::default()
        },
        bytes.max(4),
    )
    .map_err(verr(&format!(
        "cannot allocate {bytes} bytes of device memory"
    )))
}

pub fn host_buffer(
    gpu: &Gpu,
    elems: u64,
    usage: BufferUsage,
    readback: bool,
) -> Result<Subbuffer<[f32]>> {
    let filter = if readback {
        MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_RANDOM_ACCESS
    } else {
        MemoryTypeFilter::PREFER_HOST | MemoryTypeFilter::HOST_SEQUENTIAL_WRITE
    };
    Buffer::new_slice::<f32>(
        gpu.mem.clone(),
        BufferCreateInfo {
            usage,
            ..Default::default()
        },
        AllocationCreateInfo {
            memory_type_filter: filter,
            ..Default::default()
        },
        elems.max(1),
    )
    .map_err(verr(&format!(
        "cannot allocate {elems} floats of host-visible memory"
    )))
}

pub struct Uploader<'a> {
    gpu: &'a Gpu,
    staging: Subbuffer<[u8]>,
    used: u64,
    /// (staging offset, destination, destination offset, bytes)
    pending: Vec<(u64, Subbuffer<[u8]>, u64, u64)>,
}

impl<'a> Uploader<'a> {
    pub fn new(gpu: &'a Gpu) -> Result<Self> {
        let staging = Buffer::new_slice::<u8>(
            gpu.mem.clone(),
            BufferCreateInfo {
                usage: BufferUsage::TRANSFER_SRC,
                ..Default::default()
            },
            AllocationCreateInfo {
                memory_type_filter: MemoryTypeFilter::PREFER_HOST
                    | MemoryTypeFilter::HOST_SEQUENTIAL_WRITE,
                ..Default::default()
            },
            STAGING_BYTES,
        )
        .map_err(verr("cannot allocate the staging buffer"))?;
        Ok(Uploader {
            gpu,
            staging,
            used: 0,
            pending: Vec::new(),
        })
    }

    /// Creates a device buffer holding `bytes` (padded to whole u32 words) and queues its upload.
    pub fn upload(&mut self, bytes: &[u8]) -> Result<Subbuffer<[u8]>> {
        let size = (bytes.len() as u64).div_ceil(4) * 4;
        let dst = device_buffer(
            self.gpu,
            size,
            BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_DST,
        )?;
        let mut done = 0u64;
        while done < bytes.len() as u64 {
            if self.used == STAGING_BYTES {
                self.flush()?;
            }
            let n = (bytes.len() as u64 - done).min(STAGING_BYTES - self.used);
            {
                let mut guard = self.staging.write().map_err(verr("staging buffer"))?;
                guard[self.used as usize..(self.used + n) as usize]
                    .copy_from_slice(&bytes[done as usize..(done + n) as usize]);
            }
            self.pending.push((self.used, dst.clone(), done, n));
            // Keep copies 4-byte aligned so every region offset stays valid.
            self.used = ((self.used + n).div_ceil(4) * 4).min(STAGING_BYTES);
            done += n;
        }
        Ok(dst)
    }

    /// Submits the queued copies and waits for them.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut b = AutoCommandBufferBuilder::primary(
            self.gpu.cmd.clone(),
            self.gpu.queue.queue_family_index(),
            CommandBufferUsage::OneTimeSubmit,
        )
        .map_err(verr("command buffer"))?;
        for (src_off, dst, dst_off, n) in self.pending.drain(..) {
            let mut info = CopyBufferInfoTyped::buffers(self.staging.clone(), dst);
            info.regions = [BufferCopy {
                src_offset: src_off,
                dst_offset: dst_off,
                size: n,
                ..Default::default()
            }]
            .into();
            b.copy_buffer(info).map_err(verr("weight copy"))?;
        }
        let cb = b.build().map_err(verr("command buffer"))?;
        vulkano::sync::now(self.gpu.device.clone())
            .then_execute(self.gpu.queue.clone(), cb)
            .map_err(verr("weight upload"))?
            .then_signal_fence_and_flush()
            .map_err(verr("weight upload"))?
            .wait(None)
            .map_err(verr("weight upload"))?;
        self.used = 0;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        if !self.pending.is_empty() {
            return Err(backend_error("weight upload left copies behind"));
        }
        Ok(())
    }
}
