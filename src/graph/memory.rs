//! Memory a graph needs to run, computed from the graph itself: the peak of the values alive
//! at once when nodes run in order and each value is freed after its last reader, plus the
//! largest working buffer one op holds while it runs (which a backend states, since it depends
//! on its kernels). Weights are not counted here: they are the model file's, mapped.
use super::{Graph, Node, Op};

/// Bytes of one f32 (or i64-carried-as-f32) value.
pub fn value_bytes(n: &Node) -> u64 {
    4 * n.shape.iter().map(|&d| d as u64).product::<u64>()
}

/// Peak activation bytes of `graph` run in node order. `transient(node)` is the extra working
/// memory the executing backend holds while that node runs (scratch, decomposition
/// temporaries), counted on top of the values alive at that moment.
pub fn activation_peak(graph: &Graph, transient: impl Fn(&Graph, &Node) -> u64) -> u64 {
    let last = graph.last_use();
    // Values whose last reader is node i are freed after node i runs.
    let mut frees: Vec<Vec<usize>> = vec![Vec::new(); graph.nodes.len()];
    for (v, &l) in last.iter().enumerate() {
        if l != usize::MAX && l < graph.nodes.len() && l > v {
            frees[l].push(v);
        }
    }
    let (mut live, mut peak) = (0u64, 0u64);
    for (i, n) in graph.nodes.iter().enumerate() {
        if matches!(n.op, Op::Param { .. }) {
            continue;
        }
        live += value_bytes(n);
        peak = peak.max(live + transient(graph, n));
        for &v in &frees[i] {
            if !matches!(graph.nodes[v].op, Op::Param { .. }) {
                live -= value_bytes(&graph.nodes[v]);
            }
        }
        // A value nobody reads (and that is no output) dies at once.
        if last[i] == 0 || (last[i] != usize::MAX && last[i] < i) {
            live -= value_bytes(n);
        }
    }
    peak
}

/// Bytes of the values of `graph` of at least `min` bytes each, each counted once: what an
/// allocator that keeps freed blocks of that size for reuse ([`crate::alloc`]) can hold after
/// a run of the graph, at most.
pub fn big_value_bytes(graph: &Graph, min: u64) -> u64 {
    graph
        .nodes
        .iter()
        .filter(|n| !matches!(n.op, Op::Param { .. }))
        .map(value_bytes)
        .filter(|&b| b >= min)
        .sum()
}

/// Bytes of the weights `graph` reads, as `stored_bytes(path)` reports them.
pub fn weight_bytes(graph: &Graph, stored_bytes: impl Fn(&str) -> u64) -> u64 {
    let mut paths: Vec<String> = graph.params().into_iter().map(|(p, _)| p).collect();
    paths.sort();
    paths.dedup();
    paths.iter().map(|p| stored_bytes(p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Tracer, ValueType};
    use crate::ops::Ops;

    #[test]
    fn chain_frees_what_is_dead() {
        // x -> a -> b -> c: at most two [1000] values are alive at once.
        let mut t = Tracer::new();
        let x = t.input("x", &[1000], ValueType::F32);
        let a = t.silu(&x).unwrap();
        let b = t.silu(&a).unwrap();
        let c = t.silu(&b).unwrap();
        let g = t.finish(&[c]);
        assert_eq!(activation_peak(&g, |_, _| 0), 8000);
        assert_eq!(activation_peak(&g, |_, _| 100), 8100);
    }

    #[test]
    fn big_values_are_counted_once_each() {
        let mut t = Tracer::new();
        let x = t.input("x", &[1000], ValueType::F32);
        let small = t.input("s", &[10], ValueType::F32);
        let a = t.silu(&x).unwrap();
        let g = t.finish(&[a, small]);
        assert_eq!(big_value_bytes(&g, 4000), 8000);
        assert_eq!(big_value_bytes(&g, 4001), 0);
    }

    #[test]
    fn a_value_read_later_stays_alive() {
        // x is read by the final add, so it lives through the whole chain.
        let mut t = Tracer::new();
        let x = t.input("x", &[1000], ValueType::F32);
        let a = t.silu(&x).unwrap();
        let b = t.silu(&a).unwrap();
        let c = t.add(&x, &b).unwrap();
        let g = t.finish(&[c]);
        assert_eq!(activation_peak(&g, |_, _| 0), 12000);
    }
}
