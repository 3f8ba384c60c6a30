//! Vulkan faults as clear errors, and an injection hook so the CPU fallback of `--backend auto`
//! can be tested on any device (a real device loss cannot be provoked on demand).
use super::backend_error;
use crate::Error;

/// Where an injected fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `Backend::prepare` fails, as if the device ran out of memory while uploading weights.
    Prepare,
    /// `Executable::run` fails, as if the device was lost while the command buffer ran.
    Run,
}

impl Fault {
    /// `LDM_VULKAN_FAULT=prepare|run` injects a fault from the command line (for demonstrating
    /// the fallback with the real binary); anything else injects none.
    pub fn from_env() -> Option<Fault> {
        match std::env::var("LDM_VULKAN_FAULT").ok()?.as_str() {
            "prepare" => Some(Fault::Prepare),
            "run" => Some(Fault::Run),
            _ => None,
        }
    }

    /// The error an injected fault produces: worded like the real fault it stands for.
    pub fn error(self) -> Error {
        match self {
            Fault::Prepare => backend_error(
                "weight upload: out of device memory (injected by LDM_VULKAN_FAULT=prepare)",
            ),
            Fault::Run => {
                backend_error("run: the device was lost (injected by LDM_VULKAN_FAULT=run)")
            }
        }
    }
}

/// Adds what the user can do to the driver's text of the faults that have a known remedy.
pub fn explain(what: &str, text: &str) -> String {
    let hint = if text.contains("device has been lost") || text.contains("DEVICE_LOST") {
        " (the GPU was lost: a driver reset, a hang or a kernel timeout; `--backend cpu` or \
         `--backend auto` runs on the CPU)"
    } else if text.contains("device memory allocation has failed")
        || text.contains("OUT_OF_DEVICE_MEMORY")
    {
        " (out of GPU memory: try a smaller image, q8/q4 weights or `--backend cpu`)"
    } else if text.contains("host memory allocation has failed")
        || text.contains("OUT_OF_HOST_MEMORY")
    {
        " (out of host memory in the driver)"
    } else {
        ""
    };
    format!("{what}: {text}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_faults_get_a_remedy() {
        assert!(
            explain("run", "the logical or physical device has been lost")
                .contains("--backend cpu")
        );
        assert!(
            explain("upload", "a device memory allocation has failed").contains("smaller image")
        );
        assert_eq!(explain("x", "other"), "x: other");
    }

    #[test]
    fn injected_faults_are_vulkan_backend_errors() {
        for f in [Fault::Prepare, Fault::Run] {
            assert!(matches!(
                f.error(),
                Error::Backend {
                    backend: "vulkan",
                    ..
                }
            ));
        }
    }
}
