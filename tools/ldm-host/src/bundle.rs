//! `ldm-host keygen` and `ldm-host bundle create`: the fleet key and signed model bundles.
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;
use ldm_edge::bundle::{self, Manifest, RuntimeVersion};
use ldm_edge::model::Model;
use ldm_edge::pipeline::memory::MemoryRequest;
use ldm_edge::pipeline::Pipeline;

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Writes PREFIX.key (secret, mode 0600) and PREFIX.pub (copy it into each device's
    /// `<root>/keys/`).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
}

#[derive(clap::Subcommand)]
pub enum BundleCmd {
    /// Sign a model into a bundle for `ldm install` / `ldm-host flash`.
    Create(CreateArgs),
    /// Show a bundle's manifest and check its signature against a public key.
    Inspect {
        bundle: PathBuf,
        /// A public key file to verify against.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The model file (.ldm).
    pub model: PathBuf,
    /// The secret key file from `ldm-host keygen`.
    #[arg(long)]
    pub key: PathBuf,
    /// Monotonic version: devices refuse anything not newer than what they run.
    #[arg(long)]
    pub version: u64,
    /// Boards the bundle may be installed on (comma-separated) [default: any].
    #[arg(long, value_delimiter = ',')]
    pub boards: Vec<String>,
    /// Days until the bundle expires.
    #[arg(long, default_value_t = 365)]
    pub expires_in_days: u64,
    /// Expiry as Unix seconds (overrides --expires-in-days).
    #[arg(long)]
    pub expires_at: Option<u64>,
    /// Oldest runtime that may install it [default: this tool's version].
    #[arg(long)]
    pub min_runtime: Option<String>,
    /// Name shown on devices [default: the model's file stem].
    #[arg(long)]
    pub name: Option<String>,
    /// Skip the memory planner (memory_bytes = null).
    #[arg(long)]
    pub no_memory_plan: bool,
    #[arg(long, short = 'o')]
    pub output: PathBuf,
}

fn with_ext(p: &Path, ext: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

pub fn keygen(a: KeygenArgs) -> Result<()> {
    let (sec, public) = (with_ext(&a.output, ".key"), with_ext(&a.output, ".pub"));
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&sec)
        .with_context(|| format!("cannot create {} (it must not exist)", sec.display()))?;
    f.write_all(bundle::secret_key_text(&key).as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", sec.display()))?;
    fs::write(&public, bundle::public_key_text(&key.verifying_key()))
        .with_context(|| format!("cannot write {}", public.display()))?;
    eprintln!(
        "wrote {} and {} (key id {})",
        sec.display(),
        public.display(),
        bundle::key_id(&key.verifying_key())
    );
    Ok(())
}

/// The planner's peak for one generation at the model's native size (CPU backend, with the
/// runtime allocator's reuse cache), measured from the model alone: no weight is run.
fn memory_need(model: &Model) -> Result<u64> {
    let pipe = Pipeline::new(model, ldm_edge::backend::select("cpu")?);
    let size = model.config.image_size;
    let plan = pipe.plan_memory(&MemoryRequest {
        width: size,
        height: size,
        cfg: model.sampler.guidance != 1.0,
        encode: model.config.task != ldm_edge::arch::Task::Txt2img,
    })?;
    Ok(plan.peak() - plan.base + ldm_edge::alloc::DEFAULT_CACHE_LIMIT as u64)
}

pub fn create(a: CreateArgs) -> Result<()> {
    let key_text =
        fs::read_to_string(&a.key).with_context(|| format!("cannot read {}", a.key.display()))?;
    let key = bundle::parse_secret_key(&key_text)
        .with_context(|| format!("{} is not a secret key file", a.key.display()))?;
    let model = Model::open(&a.model)
        .with_context(|| format!("{} is not a valid model", a.model.display()))?;
    model
        .file
        .verify_digest()
        .with_context(|| format!("{} failed its digest check", a.model.display()))?;
    let memory_bytes = if a.no_memory_plan {
        None
    } else {
        Some(memory_need(&model).context("memory planner")?)
    };
    let model_len = model.file.file_len();
    drop(model);
    let model_blake3 = bundle::hash_file(&a.model)
        .with_context(|| format!("cannot read {}", a.model.display()))?;
    let created = ldm_edge::install::root::now();
    let expires = match a.expires_at {
        Some(t) => t,
        None => created
            .checked_add(
                a.expires_in_days
                    .checked_mul(86_400)
                    .context("expiry overflows")?,
            )
            .context("expiry overflows")?,
    };
    let min_runtime = match &a.min_runtime {
        Some(s) => RuntimeVersion::parse(s).with_context(|| format!("bad --min-runtime {s}"))?,
        None => RuntimeVersion::current(),
    };
    let name = match a.name {
        Some(n) => n,
        None => a
            .model
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_string(),
    };
    if let Some(b) = a.boards.iter().find(|b| !bundle::manifest::valid_board(b)) {
        bail!("board name `{b}` must be 1..=64 characters of [A-Za-z0-9._-]");
    }
    let manifest = Manifest {
        name,
        version: a.version,
        model_len,
        model_blake3,
        min_runtime,
        boards: a.boards,
        memory_bytes,
        created,
        expires,
    };
    let len = bundle::write_bundle(&manifest, &key, &a.model, &a.output)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    eprintln!(
        "wrote {} ({len} bytes): {} version {}, model {}, key {}, memory {}, expires {}",
        a.output.display(),
        manifest.name,
        manifest.version,
        manifest.model_hex(),
        bundle::key_id(&key.verifying_key()),
        manifest
            .memory_bytes
            .map_or("n/a".into(), |m| format!("{} MiB", m >> 20)),
        manifest.expires
    );
    Ok(())
}

pub fn inspect(path: &Path, key: Option<&Path>) -> Result<()> {
    let f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let h = bundle::BundleHeader::read(&mut std::io::BufReader::new(f))
        .with_context(|| format!("{} is not a valid bundle", path.display()))?;
    println!("key id: {}", h.key_id());
    println!(
        "{}",
        String::from_utf8_lossy(&h.manifest_unverified()?.to_bytes())
    );
    match key {
        Some(k) => {
            let text =
                fs::read_to_string(k).with_context(|| format!("cannot read {}", k.display()))?;
            let vk = bundle::parse_public_key(&text)?;
            h.verify(std::slice::from_ref(&vk))?;
            println!("signature: OK (key {})", bundle::key_id(&vk));
        }
        None => println!("signature: not checked (give --key KEY.pub)"),
    }
    Ok(())
}
