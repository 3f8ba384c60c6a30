//! ONNX export: the very lowering the CPU backend hands to tract, serialized to `.onnx` bytes,
//! so an exported file computes exactly what `--backend cpu` runs.
use super::lower;
use crate::backend::{check_weights, WeightSource};
use crate::graph::{Graph, Op};
use crate::{Error, Result};
use prost::Message;
use std::collections::HashMap;

/// protobuf's hard limit on one message; beyond it weights would need ONNX external data.
const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

/// The ONNX model of `graph` with every weight inlined. Inputs keep the graph's names
/// (`input_ids`, `sample`, `timestep`, `context`, `latent`); outputs are `output`, `output1`, ...
pub fn to_onnx(graph: &Graph, weights: &dyn WeightSource) -> Result<Vec<u8>> {
    check_weights(graph, weights)?;
    let mut proto = lower::lower(graph, weights)?;
    let names: Vec<String> = graph
        .inputs()
        .into_iter()
        .filter_map(|i| match &graph.nodes[i].op {
            Op::Input { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    if let Some(g) = proto.graph.as_mut() {
        // The lowering names values v0, v1, ... in node order, so its inputs come in the same
        // order as `graph.inputs()`.
        let mut rename = HashMap::new();
        for (vi, n) in g.input.iter_mut().zip(names) {
            rename.insert(std::mem::replace(&mut vi.name, n.clone()), n);
        }
        for (i, vo) in g.output.iter_mut().enumerate() {
            let n = if i == 0 {
                "output".to_string()
            } else {
                format!("output{i}")
            };
            rename.insert(std::mem::replace(&mut vo.name, n.clone()), n);
        }
        for node in g.node.iter_mut() {
            for x in node.input.iter_mut().chain(node.output.iter_mut()) {
                if let Some(n) = rename.get(x.as_str()) {
                    *x = n.clone();
                }
            }
        }
    }
    let len = proto.encoded_len();
    if len > PROTOBUF_LIMIT {
        return Err(Error::Backend {
            backend: "onnx",
            msg: format!(
                "the model is {len} bytes, over protobuf's 2 GiB limit; export at f16 is not \
                 available and ONNX external data is not implemented"
            ),
        });
    }
    Ok(proto.encode_to_vec())
}
