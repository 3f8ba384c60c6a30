//! `ldm plan`: a request planned against a board's budget, without running it.
use anyhow::{Context, Result};
use ldm_edge::board::Board;
use ldm_edge::model::Model;
use ldm_edge::pipeline::memory::{mib, MemoryRequest};
use ldm_edge::pipeline::Pipeline;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct PlanArgs {
    #[arg(long, short = 'm', default_value = super::DEFAULT_MODEL)]
    pub model: PathBuf,
    /// A board profile: a name in boards/ (or $LDM_BOARDS), or a .toml path.
    #[arg(long)]
    pub board: String,
    /// Image size WxH [default: the model's native size].
    #[arg(long)]
    pub size: Option<String>,
    /// Classifier-free guidance scale [default: the model's]; 1 plans without the
    /// unconditional batch.
    #[arg(long, short = 'g')]
    pub guidance: Option<f32>,
}

/// The process-wide thread count a board asks for (the CPU kernels' and tract's pool). Only
/// the first call takes effect; later ones keep the pool that exists.
pub fn apply_threads(board: &Board) {
    if rayon::ThreadPoolBuilder::new()
        .num_threads(board.runtime.threads)
        .build_global()
        .is_err()
    {
        log::debug!("thread pool already built; keeping it");
    }
}

/// Prints the plan; exit 0 when it fits, 3 when the planner refuses it.
pub fn plan(a: PlanArgs) -> Result<ExitCode> {
    let board = Board::find(&a.board)?;
    let model = Model::open(&a.model)
        .with_context(|| format!("cannot load model {}", a.model.display()))?;
    let (width, height) = match &a.size {
        Some(s) => super::parse_size(s)?,
        None => (model.config.image_size, model.config.image_size),
    };
    let guidance = a.guidance.unwrap_or(model.sampler.guidance);
    let distilled = model.config.unet.time_cond_proj_dim.is_some();
    let budget = board.budget_bytes()?;
    // Planned on the CPU backend's host model; on a board whose runtime prefers Vulkan, the
    // device's buffers are predicted from the Vulkan lowering of the same graphs (no device
    // needed), and on unified memory they count against the same budget.
    let device = board.device_model();
    let vulkan_planned = device.is_some();
    let pipe = Pipeline::new(&model, ldm_edge::backend::select("cpu")?)
        .with_memory_budget(Some(budget))
        .with_device_model(device);
    pipe.latent_size(width, height)?;
    println!("board    {} ({})", board.name, board.path.display());
    println!(
        "memory   budget {} for the runtime, of {} ({})",
        mib(budget),
        board.memory.total,
        if board.memory.unified {
            "unified with the GPU"
        } else {
            "host only"
        }
    );
    println!(
        "choices  backend {}, {} threads{}",
        board.runtime.backend,
        board.runtime.threads,
        match (board.runtime.backend.as_str(), vulkan_planned) {
            ("vulkan", true) => "; device buffers from the Vulkan lowering",
            ("vulkan", false) =>
                "; this build has no Vulkan backend, so the host figures are the CPU path's",
            _ => "",
        }
    );
    println!(
        "request  {} {width}x{height}, {} steps of {}, guidance {guidance}{}",
        a.model.display(),
        model.sampler.steps,
        model.sampler.sampler,
        if guidance != 1.0 && !distilled {
            " (CFG: UNet batch 2)"
        } else {
            ""
        }
    );
    let req = MemoryRequest {
        width,
        height,
        cfg: guidance != 1.0 && !distilled,
        encode: false,
    };
    match pipe.plan_memory(&req) {
        Ok(p) => {
            println!("{p}");
            println!(
                "fits     {} of {} ({:.0}%)",
                mib(p.peak()),
                mib(budget),
                100.0 * p.peak() as f64 / budget as f64
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(ldm_edge::Error::Memory(msg)) => {
            println!("refused  {msg}");
            Ok(ExitCode::from(3))
        }
        Err(e) => Err(e.into()),
    }
}
