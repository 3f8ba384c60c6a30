//! The memory planner: before a request does any work, predict the peak host memory of each
//! stage (text encoder, UNet, decoder, encoder) from the graphs the request will run and the
//! plan's own buffers, choose VAE tiling to fit a budget, or refuse with what it would need.
//!
//! The model of memory (measured against peak RSS in the README):
//! - **base**: the process as it is when planning (binary, libraries, model header, tokenizer),
//!   read from `/proc/self/statm`;
//! - **weights**: the stage's tensors as the backend holds them. The compact CPU plan reads
//!   them from the mapping in their stored dtype, and the pipeline drops a stage's mapped
//!   pages when the stage ends ([`crate::format::ModelFile::release_pages`]), so only one stage's
//!   weights are resident at a time. The packed CPU plan adds f32 copies of the conv weights
//!   it prepares and of the other f16/q8/q4 linear and conv weights ([`packed_bytes`]). The
//!   expanded CPU plan holds f32 copies and peaks at about 2.3x them while tract packs;
//! - **activations**: [`crate::graph::memory::activation_peak`] of the stage's graph with the CPU
//!   kernels' scratch ([`transient_bytes`]).
use super::shared::Pipeline;
use super::vae_tiles::VaeTiling;
use crate::backend::cpu::compact::kernels::{packed_bytes, scratch_bytes, transient_bytes};
use crate::graph::{memory, Graph};
use crate::{Error, Result};
use std::fmt;

/// What is alive during one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageMemory {
    pub stage: &'static str,
    pub weights: u64,
    /// The packed CPU plan's f32 copies (part of `weights`): what `--backend cpu` would not
    /// hold.
    pub prepared: u64,
    pub activations: u64,
    /// The CPU kernels' scratch (part of `activations`): one process-wide set, freed between
    /// stages unless plans are kept.
    pub scratch: u64,
    /// Bytes of the stage's values big enough for the caching allocator to keep once freed
    /// ([`crate::alloc::BIG`]): what its cache can hold from this stage, at most.
    pub cacheable: u64,
    /// Device memory the stage's plans hold (0 on a backend without its own memory).
    pub device: u64,
    /// The device memory is the host's (unified memory), so it counts in the total.
    pub device_in_host: bool,
    /// The largest buffer one kernel binds on the device.
    pub largest_binding: u64,
    /// Why the stage is planned on the host backend although a device is planned: the
    /// device's lowering refused it, and `auto` runs such a stage on the CPU.
    pub on_host: Option<String>,
}

impl StageMemory {
    /// Host memory of the stage, with the device's where the two are one.
    pub fn total(&self) -> u64 {
        self.weights + self.activations + if self.device_in_host { self.device } else { 0 }
    }
}

/// The predicted memory of one request and the choices made for it.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub base: u64,
    pub stages: Vec<StageMemory>,
    /// The decoder (and encoder) tiling the plan uses; `None` = whole.
    pub vae_tiling: Option<VaeTiling>,
    pub budget: Option<u64>,
    /// Freed activations the allocator may keep for reuse ([`crate::alloc`]): what the plan
    /// sets as its cache limit, 0 where that allocator is not installed.
    pub alloc_cache: u64,
    /// The device's largest storage binding, where a device is planned and its limit known.
    pub max_binding: Option<u64>,
    /// The runtime's own code that the stages' kernels page in ([`KERNEL_CODE`]).
    pub code: u64,
    /// Plans are kept between requests ([`Pipeline::with_plan_reuse`]): what the other
    /// stages' kept plans add to the peak. None: each stage's plan is dropped when it ends.
    pub kept: Option<u64>,
}

/// Pages of the binary's code that running the stages faults in, beyond what planning
/// touched: a property of the build, not of the request. Measured on x86-64 (RssFile of
/// `ldm generate` at 32 px, where the weights are 5 MiB: 12.9 MiB at planning, 19.4 after a
/// text encoder with 0.1 MiB of weights, 24.2 after the UNet's 4.3 MiB). Without it the
/// default model at 32 px was under-predicted by 15%; at 512 px it is under 1% of the peak.
pub const KERNEL_CODE: u64 = 7 << 20;

impl MemoryPlan {
    /// Predicted peak: the base, the largest stage and the allocator's cache.
    pub fn peak(&self) -> u64 {
        self.peak_without_cache() + self.alloc_cache
    }

    fn peak_without_cache(&self) -> u64 {
        self.base
            + self.code
            + self.kept.unwrap_or(0)
            + self
                .stages
                .iter()
                .map(StageMemory::total)
                .max()
                .unwrap_or(0)
    }

    fn worst(&self) -> Option<&StageMemory> {
        self.stages.iter().max_by_key(|s| s.total())
    }

    /// Peak device memory: the largest stage's (plans are dropped between stages), or every
    /// stage's where plans are kept.
    pub fn device_peak(&self) -> u64 {
        let d = self.stages.iter().map(|s| s.device);
        match self.kept {
            Some(_) => d.sum(),
            None => d.max().unwrap_or(0),
        }
    }

    /// What kept plans add to the peak: at each stage, every other stage's plan is alive, and
    /// the kernels' scratch is at its largest over all stages (with plans kept, neither the
    /// weights' mapped pages nor the scratch are released between stages). A plan is counted
    /// at its stage's weights (and device memory, where that is the host's).
    fn kept_cost(&self) -> u64 {
        let held = |s: &StageMemory| s.weights + if s.device_in_host { s.device } else { 0 };
        let all: u64 = self.stages.iter().map(held).sum();
        let scratch = self.stages.iter().map(|s| s.scratch).max().unwrap_or(0);
        let worst = self
            .stages
            .iter()
            .map(StageMemory::total)
            .max()
            .unwrap_or(0);
        let with = self
            .stages
            .iter()
            .map(|s| s.total() + all - held(s) + scratch - s.scratch)
            .max()
            .unwrap_or(0);
        with - worst
    }

    /// A stage whose largest device buffer is over the device's binding limit.
    pub fn over_binding(&self) -> Option<&StageMemory> {
        let max = self.max_binding?;
        self.stages.iter().find(|s| s.largest_binding > max)
    }

    pub fn fits(&self) -> bool {
        self.budget.is_none_or(|b| self.peak() <= b) && self.over_binding().is_none()
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let device = self.device_peak() > 0;
        let dev_col = |v: &str| {
            if device {
                format!(" {v:>10}")
            } else {
                String::new()
            }
        };
        writeln!(
            f,
            "{:<14} {:>10} {:>12}{} {:>10}",
            "stage",
            "weights",
            "activations",
            dev_col("device"),
            "total"
        )?;
        writeln!(
            f,
            "{:<14} {:>10} {:>12}{} {:>10}",
            "(process)",
            "",
            "",
            dev_col(""),
            mib(self.base)
        )?;
        writeln!(
            f,
            "{:<14} {:>10} {:>12}{} {:>10}",
            "(kernel code)",
            "",
            "",
            dev_col(""),
            mib(self.code)
        )?;
        for s in &self.stages {
            writeln!(
                f,
                "{:<14} {:>10} {:>12}{} {:>10}",
                s.stage,
                mib(s.weights),
                mib(s.activations),
                dev_col(&mib(s.device)),
                mib(s.total())
            )?;
        }
        if let Some(k) = self.kept {
            writeln!(
                f,
                "{:<14} {:>10} {:>12}{} {:>10}",
                "(kept plans)",
                "",
                "",
                dev_col(""),
                mib(k)
            )?;
        }
        if self.alloc_cache > 0 {
            writeln!(
                f,
                "{:<14} {:>10} {:>12}{} {:>10}",
                "(alloc cache)",
                "",
                "",
                dev_col(""),
                mib(self.alloc_cache)
            )?;
        }
        let tiling = match self.vae_tiling {
            Some(t) => format!("tiles of {} latent px, overlap {}", t.tile, t.overlap),
            None => "whole".into(),
        };
        for s in &self.stages {
            if let Some(why) = &s.on_host {
                writeln!(
                    f,
                    "{:<14} on the CPU: the device cannot run it ({why})",
                    s.stage
                )?;
            }
        }
        write!(f, "predicted peak {}; VAE {tiling}", mib(self.peak()))?;
        if device {
            let shared = self.stages.iter().any(|s| s.device_in_host);
            write!(
                f,
                "; device peak {}{}",
                mib(self.device_peak()),
                if shared {
                    " (unified: in the total)"
                } else {
                    ""
                }
            )?;
        }
        if let Some(b) = self.budget {
            write!(f, "; budget {}", mib(b))?;
        }
        Ok(())
    }
}

/// Bytes as MiB with one decimal, the unit every memory figure is printed in.
pub fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// Parses a memory size: a byte count, or a number with K, M, G or T (powers of 1024; `KiB`,
/// `MB`, `g` and the like are accepted too).
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        Error::Input(format!(
            "`{s}` is not a memory size (try 2G, 1500M or 512MiB)"
        ))
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let bytes = n * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// The memory limit of this process's cgroup, when one is set (v2 `memory.max`, or v1
/// `memory.limit_in_bytes` where the memory controller is still on v1): under such a limit the
/// kernel kills a process that goes over, so the planner refuses up front instead. The tightest
/// limit on the way up the hierarchy counts.
pub fn cgroup_limit() -> Option<u64> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut limit: Option<u64> = None;
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, rel) = (parts.next()?, parts.next()?, parts.next()?);
        let (root, file) = match controllers {
            "" => ("/sys/fs/cgroup", "memory.max"),
            c if c.split(',').any(|c| c == "memory") => {
                ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
            }
            _ => continue,
        };
        let root = std::path::Path::new(root);
        let mut dir = root.join(rel.trim_start_matches('/'));
        loop {
            let v = std::fs::read_to_string(dir.join(file)).ok();
            // v1 spells "no limit" as a huge number (PAGE_COUNTER_MAX pages), v2 as `max`.
            if let Some(n) = v
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|&n| n < 1 << 60)
            {
                limit = Some(limit.map_or(n, |l| l.min(n)));
            }
            if dir == root || !dir.pop() {
                break;
            }
        }
    }
    limit
}

/// A `kB` field of `/proc/self/status` (`VmHWM`, `RssAnon`, ...), in bytes; None where /proc
/// or the field is missing.
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident bytes of this process now (Linux; 0 elsewhere).
pub fn current_rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// One request's shape, as far as memory is concerned.
#[derive(Clone, Copy, Debug)]
pub struct MemoryRequest {
    pub width: usize,
    pub height: usize,
    /// Classifier-free guidance on: the UNet runs a batch of two.
    pub cfg: bool,
    /// The request encodes an image first (img2img, inpainting).
    pub encode: bool,
}

/// Tile sizes tried, largest first, when the whole decode does not fit.
const TILES: [usize; 6] = [64, 48, 32, 24, 16, 8];
/// Tile sizes tried when the planner tiles only to keep the autoencoder below the peak.
const AUTO_TILES: [usize; 4] = [32, 24, 16, 8];

/// Whether a CPU backend of this name reads weights in their stored dtype (the compact plan,
/// packed or not).
fn compact_cpu(backend: &str) -> bool {
    matches!(backend, "cpu" | "cpu-packed")
}

impl Pipeline<'_> {
    /// A stage that runs several graphs one after another (a tiled autoencoder): the weights
    /// any of them reads, the activations of the largest.
    fn stage_of(&self, stage: &'static str, graphs: &[Graph], extra: u64) -> Result<StageMemory> {
        let mut paths: Vec<String> = graphs
            .iter()
            .flat_map(|g| g.params().into_iter().map(|(p, _)| p))
            .collect();
        paths.sort();
        paths.dedup();
        if let Some(m) = &self.device_model {
            match self.device_stage(m.as_ref(), stage, graphs, &paths, extra) {
                Ok(s) => return Ok(s),
                // Explicit `--backend vulkan` has nothing to fall back to: refused up front.
                Err(e)
                    if self.backend.fallback().is_none() && !compact_cpu(self.backend.name()) =>
                {
                    return Err(e)
                }
                Err(Error::Backend { msg, .. }) => {
                    let mut s = self.host_stage(stage, graphs, &paths, extra, "cpu");
                    s.on_host = Some(msg);
                    return Ok(s);
                }
                Err(e) => return Err(e),
            }
        }
        let name = self
            .backend
            .fallback()
            .map_or(self.backend.name(), |(_, b)| b.name());
        Ok(self.host_stage(stage, graphs, &paths, extra, name))
    }

    /// A stage run by a backend with device memory: its weights go to the device one tensor
    /// at a time (mapped, copied, then through the staging buffer, and the tensor's mapped
    /// pages dropped, all but the two it may share with its neighbours); the outputs are read
    /// back into host values; the activations live on the device.
    fn device_stage(
        &self,
        m: &dyn crate::backend::DeviceMemoryModel,
        stage: &'static str,
        graphs: &[Graph],
        paths: &[String],
        extra: u64,
    ) -> Result<StageMemory> {
        let big = crate::alloc::BIG as u64;
        let stored: Vec<u64> = paths.iter().map(|p| self.stored_bytes(p)).collect();
        let outputs: Vec<u64> = graphs
            .iter()
            .flat_map(|g| g.outputs.iter().map(|&o| memory::value_bytes(&g.nodes[o])))
            .collect();
        let mut device = 0u64;
        let mut largest_binding = 0u64;
        for g in graphs {
            let d = m.predict(g, self.model)?;
            device += d.total();
            largest_binding = largest_binding.max(d.largest_binding);
        }
        let largest = stored.iter().copied().max().unwrap_or(0);
        Ok(StageMemory {
            stage,
            weights: largest + 2 * 4096 * stored.len() as u64,
            prepared: 0,
            activations: m.upload_overhead() + largest + outputs.iter().sum::<u64>() + extra,
            scratch: 0,
            cacheable: stored.iter().chain(&outputs).filter(|&&b| b >= big).sum(),
            device,
            device_in_host: m.unified(),
            largest_binding,
            on_host: None,
        })
    }

    /// A stage run by the CPU backend `backend` (its plans live in host memory).
    fn host_stage(
        &self,
        stage: &'static str,
        graphs: &[Graph],
        paths: &[String],
        extra: u64,
        backend: &str,
    ) -> StageMemory {
        let is_packed = backend == "cpu-packed";
        let scratch = scratch_bytes(graphs, is_packed);
        let packed = match is_packed {
            true => packed_bytes(graphs, &|p| {
                self.model
                    .file
                    .tensor(p)
                    .is_none_or(|t| t.info.dtype == crate::format::DType::F32)
            }),
            false => 0,
        };
        StageMemory {
            stage,
            weights: paths
                .iter()
                .map(|p| self.held_bytes(p, backend))
                .sum::<u64>()
                + packed,
            prepared: packed,
            activations: graphs
                .iter()
                .map(|g| memory::activation_peak(g, transient_bytes))
                .max()
                .unwrap_or(0)
                + scratch
                + extra,
            scratch,
            cacheable: graphs
                .iter()
                .map(|g| memory::big_value_bytes(g, crate::alloc::BIG as u64))
                .sum(),
            device: 0,
            device_in_host: false,
            largest_binding: 0,
            on_host: None,
        }
    }

    fn stage(&self, stage: &'static str, graph: &Graph, extra: u64) -> Result<StageMemory> {
        self.stage_of(stage, std::slice::from_ref(graph), extra)
    }

    fn stored_bytes(&self, path: &str) -> u64 {
        self.model
            .file
            .tensor(path)
            .map_or(0, |t| t.bytes.len() as u64)
    }

    /// Bytes the backend holds for one weight tensor while its stage runs.
    fn held_bytes(&self, path: &str, backend: &str) -> u64 {
        self.model.file.tensor(path).map_or(0, |t| {
            if !compact_cpu(backend) {
                // f32 copies, packed by tract while it prepares (2.3x measured).
                (t.numel() as u64 * 4) * 23 / 10
            } else {
                self.stored_bytes(path)
            }
        })
    }

    fn plan_with(&self, r: &MemoryRequest, tiling: Option<VaeTiling>) -> Result<MemoryPlan> {
        let (h, w) = self.latent_size(r.width, r.height)?;
        let cfg = &self.model.config;
        let batch = if r.cfg { 2 } else { 1 };
        let f = cfg.vae.factor();
        let image = 4 * 3 * (r.width * r.height) as u64;
        let mut stages = vec![self.stage("text encoder", &cfg.text_graph(batch)?, 0)?];
        let (th, tw) = match tiling {
            Some(t) if t.splits(h, w) => (t.tile.min(h), t.tile.min(w)),
            _ => (h, w),
        };
        let tiled = (th, tw) != (h, w);
        if r.encode {
            // The input image, and while tiled the blended features beside each tile.
            stages.push(if tiled {
                let g = self.tiled_encoder_graphs((h * f, w * f), (th * f, tw * f))?;
                self.stage_of("encoder", &g, 2 * image)?
            } else {
                self.stage("encoder", &cfg.encoder_graph(1, h * f, w * f)?, image)?
            });
        }
        stages.push(self.stage("unet", &cfg.unet_graph(batch, h, w)?, 0)?);
        stages.push(if tiled {
            // The whole-latent features, the output image and its blending weights live
            // beside each tile; the two passes and the whole-latent part are planned as run.
            let g = self.tiled_decoder_graphs((h, w), (th, tw))?;
            self.stage_of("decoder", &g, 2 * image)?
        } else {
            self.stage("decoder", &cfg.decoder_graph(1, th, tw)?, 0)?
        });
        let mut plan = MemoryPlan {
            base: current_rss(),
            stages,
            vae_tiling: tiling.filter(|t| t.splits(h, w)),
            budget: self.memory_budget,
            alloc_cache: 0,
            max_binding: self.device_model.as_ref().and_then(|m| m.max_binding()),
            code: KERNEL_CODE,
            kept: None,
        };
        // The allocator keeps freed activations up to this limit, which buys speed. SD-1.5 f32,
        // 64x64 UNet step against glibc's malloc, back to back: 26-28% slower with no cache,
        // 2-5% with 32 MiB, 1-2% with 64, 2-4% faster with 128. As much as the budget leaves,
        // up to the default (64 MiB), and no more than the stages' big values: blocks below
        // BIG go to malloc, so a small image leaves the cache nearly empty (counting the full
        // limit there over-predicted the default model at 32 px 2.8x).
        if crate::alloc::installed() {
            let room = self
                .memory_budget
                .map_or(u64::MAX, |b| b.saturating_sub(plan.peak_without_cache()));
            let cacheable: u64 = plan.stages.iter().map(|s| s.cacheable).sum();
            plan.alloc_cache = room
                .min(crate::alloc::DEFAULT_CACHE_LIMIT as u64)
                .min(cacheable);
        }
        Ok(plan)
    }

    /// Plans a request's memory: with no budget, the pipeline's own tiling; with one, that
    /// tiling if it fits, else the largest tile that fits, else an [`Error::Memory`] that
    /// states the need and the smallest change that would fit. With plan reuse on, the kept
    /// plans are counted where they fit beside that, and reuse is off for the request where
    /// they do not. Runs no model.
    pub fn plan_memory(&self, r: &MemoryRequest) -> Result<MemoryPlan> {
        let mut plan = self.plan_stages(r)?;
        if self.plans.is_some() {
            // Reuse is a speed-up, never a reason to tile or refuse: it goes where it does not
            // fit beside the plan chosen without it.
            let cost = plan.kept_cost();
            let with = MemoryPlan {
                kept: Some(cost),
                ..plan.clone()
            };
            if with.fits() {
                plan = with;
            } else {
                log::info!(
                    "memory: plans are not kept after this request (they would add {} to the \
                     peak, over the budget)",
                    mib(cost)
                );
            }
        }
        Ok(plan)
    }

    fn plan_stages(&self, r: &MemoryRequest) -> Result<MemoryPlan> {
        let mut plan = self.plan_with(r, self.vae_tiling)?;
        if self.vae_tiling.is_none() && self.vae_auto {
            plan = self.vae_below_peak(r, plan)?;
        }
        if plan.fits() {
            return Ok(plan);
        }
        if self.vae_tiling.is_none() {
            for t in TILES {
                let tiling = VaeTiling::with_default_overlap(t)?;
                let p = self.plan_with(r, Some(tiling))?;
                if p.fits() {
                    log::info!("memory: VAE tiles of {t} latent px to fit the plan");
                    return Ok(p);
                }
            }
        }
        let smallest = self.plan_with(r, Some(VaeTiling::with_default_overlap(8)?))?;
        if let (Some(s), Some(max)) = (smallest.over_binding(), smallest.max_binding) {
            // The text encoder's buffers (the token embedding, mostly) do not shrink with the
            // image.
            let fix = if s.stage == "text encoder" {
                "use the CPU backend (`--backend cpu`)"
            } else {
                "use a smaller image or the CPU backend"
            };
            return Err(Error::Memory(format!(
                "{}x{}: the {} stage binds a device buffer of {}, more than the device's \
                 largest storage binding of {}; {fix}",
                r.width,
                r.height,
                s.stage,
                mib(s.largest_binding),
                mib(max)
            )));
        }
        let Some(budget) = self.memory_budget else {
            return Ok(plan);
        };
        let worst = smallest.worst().cloned();
        let mut msg = format!(
            "{}x{} needs about {} but the budget is {}",
            r.width,
            r.height,
            mib(smallest.peak()),
            mib(budget)
        );
        if let Some(w) = worst {
            msg += &format!(
                " (the {} stage: {} of weights + {} of activations, on top of {} for the process)",
                w.stage,
                mib(w.weights),
                mib(w.activations),
                mib(smallest.base)
            );
        }
        msg += &self.what_would_fit(r, budget)?;
        Err(Error::Memory(msg))
    }

    /// Where a whole decode (or encode) would set the request's peak, the largest VAE tile
    /// that brings it down to the rest of the request (the UNet, usually), or the smallest tile
    /// if none does: a 512 px decode holds 134 MB per activation at its top level, more than a
    /// q4 SD-1.5 UNet step needs.
    fn vae_below_peak(&self, r: &MemoryRequest, whole: MemoryPlan) -> Result<MemoryPlan> {
        let vae = |p: &MemoryPlan| {
            let is_vae = |s: &&StageMemory| s.stage == "decoder" || s.stage == "encoder";
            let top = p.stages.iter().filter(is_vae).map(StageMemory::total).max();
            let rest = p
                .stages
                .iter()
                .filter(|s| !is_vae(s))
                .map(StageMemory::total)
                .max();
            (top.unwrap_or(0), rest.unwrap_or(0))
        };
        let (top, rest) = vae(&whole);
        if top <= rest {
            return Ok(whole);
        }
        let mut best = whole;
        // From 256 px tiles down: at 512 px, 3x3 tiles of 256 px cost the same decoder work as
        // 2x2 of 384 px, at half the activations.
        for t in AUTO_TILES {
            let p = self.plan_with(r, Some(VaeTiling::with_default_overlap(t)?))?;
            if p.vae_tiling.is_none() || p.peak() >= best.peak() {
                continue;
            }
            let below = vae(&p).0 <= rest;
            best = p;
            if below {
                log::info!("memory: VAE tiles of {t} latent px so the decode is not the peak");
                break;
            }
        }
        Ok(best)
    }

    /// The smallest changes that would fit: a smaller image, or 4-bit weights.
    fn what_would_fit(&self, r: &MemoryRequest, budget: u64) -> Result<String> {
        let tiles = Some(VaeTiling::with_default_overlap(8)?);
        let m = self.model.config.vae.factor() * self.model.config.latent_multiple();
        let mut hints = Vec::new();
        let (mut w, mut h) = (r.width, r.height);
        while w > m && h > m {
            (w, h) = (w - m, h - m);
            let p = self.plan_with(
                &MemoryRequest {
                    width: w,
                    height: h,
                    ..*r
                },
                tiles,
            )?;
            if p.fits() {
                hints.push(format!("--size {w}x{h}"));
                break;
            }
        }
        let p = self.plan_with(r, tiles)?;
        let peak =
            |f: &dyn Fn(&StageMemory) -> u64| p.base + p.stages.iter().map(f).max().unwrap_or(0);
        // The packed plan's f32 copies are what the default CPU plan does without.
        if self.backend.name() == "cpu-packed" && peak(&|s| s.total() - s.prepared) <= budget {
            hints.push("--backend cpu (weights kept in their stored dtype, no f32 copies)".into());
        }
        // q4 stores 18 bytes per 32 weights where q8 stores 34.
        if self.backend.name() == "cpu" && peak(&|s| s.activations + s.weights * 18 / 34) <= budget
        {
            hints.push("a q4 model (`ldm-host quantize`/`import --dtype q4`)".into());
        }
        if !r.cfg {
            // nothing smaller to drop
        } else {
            let p1 = self.plan_with(&MemoryRequest { cfg: false, ..*r }, tiles)?;
            if p1.fits() {
                hints.push("--guidance 1 (no unconditional batch)".into());
            }
        }
        Ok(if hints.is_empty() {
            "; nothing smaller fits: raise --max-memory".into()
        } else {
            format!("; would fit with {}", hints.join(", or "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("2G").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1500M").unwrap(), 1500 << 20);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        for bad in ["", "G", "2X", "-1G", "0", "1e999G", "two"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    fn stage(stage: &'static str, weights: u64, activations: u64) -> StageMemory {
        StageMemory {
            stage,
            weights,
            prepared: 0,
            activations,
            scratch: 0,
            cacheable: 0,
            device: 0,
            device_in_host: false,
            largest_binding: 0,
            on_host: None,
        }
    }

    #[test]
    fn kept_plans_add_the_other_stages_weights_at_the_worst_stage() {
        let mut p = MemoryPlan {
            base: 100,
            stages: vec![
                stage("text encoder", 5, 1),
                stage("unet", 40, 20),
                stage("decoder", 10, 70),
            ],
            vae_tiling: None,
            budget: Some(300),
            alloc_cache: 0,
            max_binding: None,
            code: 0,
            kept: None,
        };
        // Without kept plans the decoder (80) is the peak; with them, the UNet stage holds the
        // others' 15 (75) and the decoder the others' 45 (125): 45 more than 80.
        assert_eq!(p.peak(), 180);
        assert_eq!(p.kept_cost(), 45);
        p.kept = Some(p.kept_cost());
        assert_eq!(p.peak(), 225);
        assert!(p.fits());
        p.budget = Some(200);
        assert!(!p.fits());
        // Scratch stays at its largest: the UNet's 15 sits in the decoder stage too.
        p.stages[1].scratch = 15;
        p.stages[2].scratch = 5;
        assert_eq!(p.kept_cost(), 55);
    }
}
