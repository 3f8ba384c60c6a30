//! Graph IR, shape inference and the tracer that records architectures into the IR.
pub mod ir;
pub mod memory;
pub mod shape;
pub mod tracer;

pub use ir::{Graph, Node, NodeId, Op, ValueType};
pub use tracer::Tracer;
