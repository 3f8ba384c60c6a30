//! GPU timestamps around each dispatch, for `ldm bench --profile`. A separate command buffer,
//! recorded on first use, so plain runs replay the unprofiled one and pay nothing.
use super::device::Gpu;
use super::record::Recording;
use super::{backend_error, verr};
use crate::backend::profile::Profile;
use crate::Result;
use std::sync::Arc;
use vulkano::command_buffer::PrimaryAutoCommandBuffer;
use vulkano::query::{QueryPool, QueryPoolCreateInfo, QueryResultFlags, QueryType};

pub struct Profiler {
    pub cb: Arc<PrimaryAutoCommandBuffer>,
    pool: Arc<QueryPool>,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
    /// Timestamps carry only `timestamp_valid_bits` bits; differences wrap at that width.
    mask: u64,
}

impl Profiler {
    /// `None` when the compute queue cannot write timestamps (timestamp_valid_bits = 0).
    pub fn new(gpu: &Gpu, rec: &Recording) -> Result<Option<Profiler>> {
        let physical = gpu.device.physical_device();
        let family = gpu.queue.queue_family_index() as usize;
        let bits = physical
            .queue_family_properties()
            .get(family)
            .and_then(|f| f.timestamp_valid_bits)
            .unwrap_or(0);
        let period_ns = physical.properties().timestamp_period as f64;
        if bits == 0 || period_ns <= 0.0 {
            log::warn!("vulkan: this queue has no timestamps; no per-op breakdown");
            return Ok(None);
        }
        let count = u32::try_from(rec.dispatches.len() + 1)
            .map_err(|_| backend_error("too many dispatches to time"))?;
        let pool = QueryPool::new(
            gpu.device.clone(),
            QueryPoolCreateInfo {
                query_count: count,
                ..QueryPoolCreateInfo::query_type(QueryType::Timestamp)
            },
        )
        .map_err(verr("timestamp pool"))?;
        let cb = rec.record(gpu, Some(&pool))?;
        let mask = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        Ok(Some(Profiler {
            cb,
            pool,
            period_ns,
            mask,
        }))
    }

    /// Per-op times of the run just executed with `cb`. Dispatches that the driver overlaps
    /// are charged to whichever finishes the interval, so shares are approximate for tiny ops.
    pub fn read(&self, rec: &Recording) -> Result<Profile> {
        let n = rec.dispatches.len();
        let mut ticks = vec![0u64; n + 1];
        self.pool
            .get_results(0..n as u32 + 1, &mut ticks, QueryResultFlags::WAIT)
            .map_err(verr("timestamp results"))?;
        let ms = |i: usize| {
            let d = ticks[i + 1].wrapping_sub(ticks[i]) & self.mask;
            d as f64 * self.period_ns / 1e6
        };
        let steps: Vec<(&str, String, f64)> = rec
            .dispatches
            .iter()
            .enumerate()
            .map(|(i, d)| (d.label.as_str(), d.detail.clone(), ms(i)))
            .collect();
        Ok(Profile::from_steps(&steps))
    }
}
