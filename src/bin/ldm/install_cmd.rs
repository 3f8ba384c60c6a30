//! `ldm install`, `ldm status` and `ldm rollback`: the device side of flashing.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ldm_edge::install::{self, HealthOptions, InstallOptions, Outcome, Root};

/// Exit codes `ldm-host flash` reads (besides 0 for installed or current).
pub const EXIT_REFUSED: u8 = 3;
pub const EXIT_ROLLED_BACK: u8 = 4;

#[derive(clap::Args)]
pub struct RootArg {
    /// The install root (trusted keys, model store, active pointer).
    #[arg(long, default_value = install::DEFAULT_ROOT)]
    pub root: PathBuf,
}

#[derive(clap::Args)]
pub struct InstallArgs {
    /// A signed bundle (.ldmb) made by `ldm-host bundle create`.
    pub bundle: PathBuf,
    #[command(flatten)]
    pub root: RootArg,
    /// This device's board name [default: the root's `board` file].
    #[arg(long)]
    pub board: Option<String>,
    /// Backend of the health check's generation (as `generate --backend`).
    #[arg(long, default_value = "auto")]
    pub health_backend: String,
    /// Denoising steps of the health check [default: the model's].
    #[arg(long)]
    pub health_steps: Option<usize>,
    /// Print the outcome as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub root: RootArg,
    /// Skip hashing and validating the active model.
    #[arg(long)]
    pub no_verify: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn install(a: InstallArgs) -> Result<ExitCode> {
    let root = Root::new(&a.root.root);
    let opts = InstallOptions {
        board: a.board,
        health: HealthOptions {
            backend: a.health_backend,
            steps: a.health_steps,
        },
    };
    let out = install::install(&root, &a.bundle, &opts)
        .with_context(|| format!("install of {} failed", a.bundle.display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        match &out {
            Outcome::Installed {
                name,
                version,
                digest,
                health,
                ..
            } => println!(
                "installed {name} version {version} ({digest}); health check: {}x{} in {} steps, {:.1} s",
                health.width, health.height, health.steps, health.seconds
            ),
            Outcome::Current { version, .. } => {
                println!("already current: version {version} is active")
            }
            Outcome::Refused { reason } => println!("refused: {reason}"),
            Outcome::RolledBack { version, reason } => {
                println!("rolled back: version {version} {reason}")
            }
        }
    }
    Ok(match out {
        Outcome::Installed { .. } | Outcome::Current { .. } => ExitCode::SUCCESS,
        Outcome::Refused { .. } => ExitCode::from(EXIT_REFUSED),
        Outcome::RolledBack { .. } => ExitCode::from(EXIT_ROLLED_BACK),
    })
}

pub fn status(a: StatusArgs) -> Result<ExitCode> {
    let root = Root::new(&a.root.root);
    let s = install::status(&root, !a.no_verify)
        .with_context(|| format!("cannot read the install root {}", root.dir.display()))?;
    let healthy = s.active.as_ref().is_some_and(|x| x.verified != Some(false));
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        for line in &s.recovered {
            println!("recovered: {line}");
        }
        println!("root:     {}", s.root);
        println!("runtime:  {}", s.runtime);
        println!("board:    {}", s.board.as_deref().unwrap_or("(none)"));
        match &s.active {
            Some(x) => println!(
                "active:   {} version {} ({}){}",
                x.entry.name,
                x.entry.version,
                x.entry.digest,
                match (x.verified, &x.problem) {
                    (Some(true), _) => " verified".to_string(),
                    (Some(false), p) => format!(" BROKEN: {}", p.as_deref().unwrap_or("?")),
                    (None, _) => String::new(),
                }
            ),
            None => println!("active:   none"),
        }
        match &s.previous {
            Some(e) => println!("previous: {} version {} ({})", e.name, e.version, e.digest),
            None => println!("previous: none"),
        }
        if s.busy {
            println!("an install is in progress");
        }
        println!("free:     {} bytes", s.free_bytes);
        println!("keys:     {}", s.trusted_keys.join(" "));
    }
    Ok(if healthy || s.active.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn rollback(a: RootArg) -> Result<ExitCode> {
    let root = Root::new(&a.root);
    let e = install::rollback(&root)
        .with_context(|| format!("cannot roll back {}", root.dir.display()))?;
    println!(
        "rolled back: {} version {} ({}) is active",
        e.name, e.version, e.digest
    );
    Ok(ExitCode::SUCCESS)
}
