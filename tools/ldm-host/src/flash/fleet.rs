//! `fleet.toml`: the devices to flash and how to reach them.
//!
//! ```toml
//! [defaults]                      # every field optional; each device may override any
//! user = "ldm"
//! root = "/var/lib/ldm"           # the device's install root
//! ldm = "ldm"                     # the device binary (a name on PATH or a path)
//! identity = "~/.ssh/fleet_ed25519"
//! ssh_options = ["-o", "StrictHostKeyChecking=accept-new"]
//! install_args = ["--health-steps", "4"]
//!
//! [[device]]
//! name = "cam-01"
//! host = "10.0.0.5"
//! port = 22
//! ```
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub root: Option<String>,
    pub ldm: Option<String>,
    pub identity: Option<String>,
    pub ssh_options: Option<Vec<String>>,
    pub install_args: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    pub name: String,
    pub host: String,
    #[serde(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    #[serde(default)]
    defaults: Settings,
    #[serde(default)]
    device: Vec<DeviceEntry>,
}

/// One device with its defaults applied.
#[derive(Clone, Debug)]
pub struct Device {
    pub name: String,
    pub host: String,
    pub user: Option<String>,
    pub port: u16,
    pub root: String,
    pub ldm: String,
    pub identity: Option<String>,
    pub ssh_options: Vec<String>,
    pub install_args: Vec<String>,
    /// Where `flash` keeps this run's shared SSH connections (ControlPath); none: one
    /// connection per command.
    pub control_dir: Option<std::path::PathBuf>,
}

pub fn load(path: &Path) -> Result<Vec<Device>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let f: FleetFile =
        toml::from_str(&text).with_context(|| format!("{} is not a fleet file", path.display()))?;
    if f.device.is_empty() {
        bail!("{} lists no [[device]]", path.display());
    }
    let d = f.defaults;
    let mut out: Vec<Device> = Vec::new();
    for e in f.device {
        if out.iter().any(|o| o.name == e.name) {
            bail!(
                "device name `{}` appears twice in {}",
                e.name,
                path.display()
            );
        }
        let s = e.settings;
        out.push(Device {
            name: e.name,
            host: e.host,
            user: s.user.or_else(|| d.user.clone()),
            port: s.port.or(d.port).unwrap_or(22),
            root: s
                .root
                .or_else(|| d.root.clone())
                .unwrap_or_else(|| ldm_edge::install::DEFAULT_ROOT.to_string()),
            ldm: s
                .ldm
                .or_else(|| d.ldm.clone())
                .unwrap_or_else(|| "ldm".into()),
            identity: s.identity.or_else(|| d.identity.clone()),
            ssh_options: s
                .ssh_options
                .or_else(|| d.ssh_options.clone())
                .unwrap_or_default(),
            install_args: s
                .install_args
                .or_else(|| d.install_args.clone())
                .unwrap_or_default(),
            control_dir: None,
        });
    }
    Ok(out)
}
