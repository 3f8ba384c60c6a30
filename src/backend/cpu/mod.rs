// Placeholder until the tract backend lands (merge takes the cpu branch's version).
use super::{Backend, Executable, WeightSource};
use crate::graph::Graph;
pub struct CpuBackend;
impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}
impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn prepare(&self, g: &Graph, w: &dyn WeightSource) -> crate::Result<Box<dyn Executable>> {
        super::reference::ReferenceBackend.prepare(g, w)
    }
}
