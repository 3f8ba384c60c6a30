//! What `--backend auto` returns when it picks a GPU: the GPU backend with the CPU behind it.
//!
//! A fault of the GPU backend (device lost, out of memory, any driver error: an
//! `Error::Backend` naming it) is answered in two places:
//! - at prepare time here: the graph is prepared on the fallback instead, and every later
//!   prepare goes there directly, since a lost device stays lost;
//! - at run time by the pipeline, which asks [`Backend::fallback`] and reruns the whole request
//!   on it. A run cannot be redone here: the weights are only borrowed during `prepare`, and
//!   keeping a CPU copy prepared "just in case" would double the memory of every plan.
use super::{Backend, Executable, WeightSource};
use crate::graph::Graph;
use crate::{Error, Result};
use std::cell::Cell;

pub struct FallbackBackend {
    primary: Box<dyn Backend>,
    secondary: Box<dyn Backend>,
    failed: Cell<bool>,
}

impl FallbackBackend {
    pub fn new(primary: Box<dyn Backend>, secondary: Box<dyn Backend>) -> Self {
        Self {
            primary,
            secondary,
            failed: Cell::new(false),
        }
    }
}

/// True for the errors a fallback answers: faults of `backend` itself, not bad inputs, bad
/// files or numerical failures, which the other backend would meet just the same.
pub fn is_fault_of(e: &Error, backend: &str) -> bool {
    matches!(e, Error::Backend { backend: b, .. } if *b == backend)
}

impl Backend for FallbackBackend {
    fn name(&self) -> &'static str {
        if self.failed.get() {
            self.secondary.name()
        } else {
            self.primary.name()
        }
    }

    fn prepare(&self, graph: &Graph, weights: &dyn WeightSource) -> Result<Box<dyn Executable>> {
        if !self.failed.get() {
            match self.primary.prepare(graph, weights) {
                Err(e) if is_fault_of(&e, self.primary.name()) => {
                    log::warn!(
                        "backend auto: {e}; preparing on `{}` instead from now on",
                        self.secondary.name()
                    );
                    self.failed.set(true);
                }
                other => return other,
            }
        }
        self.secondary.prepare(graph, weights)
    }

    fn fallback(&self) -> Option<(&'static str, &dyn Backend)> {
        Some((self.primary.name(), self.secondary.as_ref()))
    }

    fn device_memory_model(&self) -> Option<Box<dyn crate::backend::DeviceMemoryModel>> {
        if self.failed.get() {
            self.secondary.device_memory_model()
        } else {
            self.primary.device_memory_model()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::reference::ReferenceBackend;

    /// A backend whose every prepare fails with a device fault.
    struct Broken;
    impl Backend for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn prepare(&self, _: &Graph, _: &dyn WeightSource) -> Result<Box<dyn Executable>> {
            Err(Error::Backend {
                backend: "broken",
                msg: "device lost".into(),
            })
        }
    }

    #[test]
    fn a_prepare_fault_moves_to_the_fallback_for_good() {
        let b = FallbackBackend::new(Box::new(Broken), Box::new(ReferenceBackend));
        assert_eq!(b.name(), "broken");
        let g = Graph::default();
        let weights = std::collections::HashMap::new();
        assert!(b.prepare(&g, &weights).is_ok());
        assert_eq!(b.name(), "reference");
        assert!(b.fallback().is_some_and(|(from, _)| from == "broken"));
    }

    #[test]
    fn only_faults_of_the_primary_count() {
        let fault = Error::Backend {
            backend: "vulkan",
            msg: "x".into(),
        };
        assert!(is_fault_of(&fault, "vulkan"));
        assert!(!is_fault_of(&fault, "cpu"));
        assert!(!is_fault_of(&Error::Input("bad".into()), "vulkan"));
    }
}
