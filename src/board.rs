//! Board profiles (`boards/*.toml`): what a target board gives the runtime (memory budget,
//! cores, GPU features, preferred backend, display), each figure with its source. The memory
//! planner plans a request against a board's budget (`ldm plan --board`), and `ldm generate
//! --board` applies the board's choices.
use crate::pipeline::memory::parse_bytes;
use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Largest profile file read (a profile is a few hundred bytes).
const MAX_PROFILE_BYTES: u64 = 64 << 10;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub name: String,
    /// Where the figures come from (data sheets, driver reports, measurements).
    pub sources: Vec<String>,
    pub memory: BoardMemory,
    pub cpu: BoardCpu,
    pub gpu: Option<BoardGpu>,
    pub runtime: BoardRuntime,
    pub display: BoardDisplay,
    /// The file it was read from (set by [`Board::load`]).
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardMemory {
    /// Physical memory, e.g. "8G".
    pub total: String,
    /// What the runtime may use: the planner's budget, e.g. "5.5G".
    pub budget: String,
    /// CPU and GPU share the same memory (every target board does).
    pub unified: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardCpu {
    pub arch: String,
    pub cores: usize,
    /// ISA features the CPU kernels can use (neon, fp16, dotprod, i8mm, avx2, avx512f, ...).
    pub features: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardGpu {
    /// Vulkan version the board's driver reports.
    pub vulkan: String,
    /// Substring of the Vulkan device name that identifies the board's GPU.
    pub device_pattern: String,
    pub f16_storage: bool,
    pub f16_arithmetic: bool,
    pub int8_dot: bool,
    pub subgroup_size: u32,
    pub max_workgroup_memory: u64,
    pub max_buffer_binding: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardRuntime {
    /// `cpu` or `vulkan`.
    pub backend: String,
    pub threads: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardDisplay {
    /// `fb`, `png` or `none`.
    pub kind: String,
    pub device: Option<String>,
}

impl Board {
    /// The board's GPU as the memory planner sees it, where its runtime prefers Vulkan: the
    /// Vulkan lowering's buffers, counted against the host budget on unified memory. None on
    /// CPU boards and in builds without Vulkan.
    pub fn device_model(&self) -> Option<Box<dyn crate::backend::DeviceMemoryModel>> {
        if self.runtime.backend != "vulkan" {
            return None;
        }
        #[cfg(feature = "vulkan")]
        {
            let max_binding = self.gpu.as_ref().map(|g| g.max_buffer_binding);
            Some(Box::new(crate::backend::vulkan::DeviceModel::for_board(
                self.memory.unified,
                max_binding,
            )))
        }
        #[cfg(not(feature = "vulkan"))]
        None
    }

    /// Reads and checks a profile.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |m: String| Error::Config(format!("board profile {}: {m}", path.display()));
        let len = std::fs::metadata(path)
            .map_err(|e| bad(e.to_string()))?
            .len();
        if len > MAX_PROFILE_BYTES {
            return Err(bad(format!("{len} bytes, more than {MAX_PROFILE_BYTES}")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut b: Board = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        b.path = path.to_path_buf();
        b.check().map_err(bad)?;
        Ok(b)
    }

    /// A profile by name (`rpi5-8gb`: `boards/rpi5-8gb.toml` under `$LDM_BOARDS` or the
    /// current directory) or by path (anything ending in `.toml`).
    pub fn find(name: &str) -> Result<Self> {
        if name.ends_with(".toml") {
            return Self::load(Path::new(name));
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::Input(format!("`{name}` is not a board name")));
        }
        let dir = std::env::var_os("LDM_BOARDS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("boards"));
        let path = dir.join(format!("{name}.toml"));
        if !path.exists() {
            let known = Self::names(&dir).join(", ");
            return Err(Error::Input(format!(
                "no board `{name}` in {} (known: {known})",
                dir.display()
            )));
        }
        Self::load(&path)
    }

    /// The profile names in a folder, sorted.
    pub fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(String::from))?
            })
            .collect();
        v.sort();
        v
    }

    /// The runtime's memory budget in bytes.
    pub fn budget_bytes(&self) -> Result<u64> {
        parse_bytes(&self.memory.budget)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("`name` is empty".into());
        }
        if self.sources.is_empty() || self.sources.iter().any(|s| s.trim().is_empty()) {
            return Err("every profile cites its sources (`sources` is empty)".into());
        }
        let total = parse_bytes(&self.memory.total).map_err(|e| format!("memory.total: {e}"))?;
        let budget = parse_bytes(&self.memory.budget).map_err(|e| format!("memory.budget: {e}"))?;
        if budget == 0 || budget > total {
            return Err(format!(
                "memory.budget {} must be above zero and at most memory.total {}",
                self.memory.budget, self.memory.total
            ));
        }
        if !(1..=1024).contains(&self.cpu.cores) {
            return Err(format!("cpu.cores {} is out of range", self.cpu.cores));
        }
        if !(1..=self.cpu.cores).contains(&self.runtime.threads) {
            return Err(format!(
                "runtime.threads {} must be in 1..={} (cpu.cores)",
                self.runtime.threads, self.cpu.cores
            ));
        }
        match self.runtime.backend.as_str() {
            "cpu" | "cpu-packed" => {}
            "vulkan" if self.gpu.is_some() => {}
            "vulkan" => return Err("runtime.backend is vulkan but the profile has no [gpu]".into()),
            other => {
                return Err(format!(
                    "runtime.backend `{other}` (cpu, cpu-packed or vulkan)"
                ))
            }
        }
        match (self.display.kind.as_str(), &self.display.device) {
            ("none", _) => {}
            ("fb" | "png", Some(d)) if !d.is_empty() => {}
            ("fb" | "png", _) => return Err("display.device is needed for fb and png".into()),
            (other, _) => return Err(format!("display.kind `{other}` (fb, png or none)")),
        }
        Ok(())
    }
}
