//! Plans kept between requests ([`super::Pipeline::with_plan_reuse`]).
//!
//! Preparing a plan is a fixed cost per request: tract types, declutters and optimizes the
//! graph (15-18 ms for the shapes UNet here, more than four of its evaluations), and a Vulkan
//! plan uploads its weights. An app that makes one image after another with the same model
//! and size prepares the same graphs each time. With reuse on, a pipeline lends each prepared
//! plan out for the request and takes it back afterwards, keyed by the backend and the graph
//! itself, so the second request of a size prepares nothing.
use crate::backend::{profile::Profile, Backend, Executable, Tensor, WeightSource};
use crate::graph::Graph;
use crate::Result;
use std::cell::RefCell;
use std::rc::Rc;

struct Kept {
    backend: &'static str,
    graph: Graph,
    plan: Box<dyn Executable>,
}

struct Shelf {
    kept: Vec<Kept>,
    /// Whether returned plans are kept (see [`PlanStore::set_keeping`]).
    keeping: bool,
}

/// The plans a pipeline keeps. Cloning shares the store (a lent plan holds a clone to
/// return itself to).
#[derive(Clone)]
pub(crate) struct PlanStore(Rc<RefCell<Shelf>>);

impl Default for PlanStore {
    fn default() -> Self {
        Self(Rc::new(RefCell::new(Shelf {
            kept: Vec::new(),
            keeping: true,
        })))
    }
}

impl PlanStore {
    /// A plan for `graph` on `backend`: a kept one if there is one, else a new one. Either way
    /// it comes back to the store when the caller drops it, unless a run failed.
    pub fn lend(
        &self,
        backend: &dyn Backend,
        graph: &Graph,
        weights: &dyn WeightSource,
    ) -> Result<Box<dyn Executable>> {
        let name = backend.name();
        let found = {
            let kept = &mut self.0.borrow_mut().kept;
            kept.iter()
                .position(|k| k.backend == name && k.graph == *graph)
                .map(|i| kept.swap_remove(i))
        };
        let (graph, plan) = match found {
            Some(k) => {
                log::debug!("plans: reusing a {name} plan ({} nodes)", graph.nodes.len());
                (k.graph, k.plan)
            }
            None => (graph.clone(), backend.prepare(graph, weights)?),
        };
        Ok(Box::new(Lent {
            home: self.clone(),
            backend: name,
            graph: Some(graph),
            plan: Some(plan),
            failed: false,
        }))
    }

    /// Drops every kept plan (their memory with them).
    pub fn clear(&self) {
        self.0.borrow_mut().kept.clear();
    }

    /// Whether returned plans are being kept.
    pub fn keeping(&self) -> bool {
        self.0.borrow().keeping
    }

    /// Whether returned plans are kept (the memory planner turns this off for a request
    /// whose budget has no room for them); turning it off drops the kept ones.
    pub fn set_keeping(&self, on: bool) {
        let mut shelf = self.0.borrow_mut();
        shelf.keeping = on;
        if !on {
            shelf.kept.clear();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.borrow().kept.len()
    }
}

/// A plan on loan from a [`PlanStore`].
struct Lent {
    home: PlanStore,
    backend: &'static str,
    graph: Option<Graph>,
    plan: Option<Box<dyn Executable>>,
    /// A run returned an error: the plan may be unusable (a lost device), so it is dropped
    /// instead of kept.
    failed: bool,
}

impl Lent {
    fn plan(&mut self) -> &mut dyn Executable {
        // Only Drop takes it out.
        match self.plan.as_mut() {
            Some(p) => p.as_mut(),
            None => unreachable!("a lent plan is only taken back when dropped"),
        }
    }
}

impl Executable for Lent {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let r = self.plan().run(inputs);
        self.failed |= r.is_err();
        r
    }

    fn profile(&mut self, inputs: &[Tensor]) -> Result<Option<Profile>> {
        let r = self.plan().profile(inputs);
        self.failed |= r.is_err();
        r
    }

    fn device_bytes(&self) -> Option<u64> {
        self.plan.as_ref().and_then(|p| p.device_bytes())
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if self.failed {
            return;
        }
        if let (Some(graph), Some(plan)) = (self.graph.take(), self.plan.take()) {
            // The shelf is never borrowed while a plan is returned; were it, the plan would
            // be dropped rather than panic.
            if let Ok(mut shelf) = self.home.0.try_borrow_mut() {
                if !shelf.keeping {
                    return;
                }
                shelf.kept.push(Kept {
                    backend: self.backend,
                    graph,
                    plan,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::reference::ReferenceBackend;
    use crate::graph::{Graph, Tracer, ValueType};
    use crate::ops::Ops;
    use std::cell::Cell;
    use std::collections::HashMap;

    /// Counts the plans it prepares.
    struct Counting<'c>(&'c Cell<usize>);

    impl Backend for Counting<'_> {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn prepare(&self, g: &Graph, w: &dyn WeightSource) -> Result<Box<dyn Executable>> {
            self.0.set(self.0.get() + 1);
            ReferenceBackend.prepare(g, w)
        }
    }

    /// An empty store, a backend counting into `n`, no weights.
    fn setup(n: &Cell<usize>) -> (PlanStore, Counting<'_>, HashMap<String, Tensor>) {
        (PlanStore::default(), Counting(n), HashMap::new())
    }

    fn doubling(n: usize) -> Graph {
        let mut t = Tracer::new();
        let x = t.input("x", &[n], ValueType::F32);
        let y = t.add(&x, &x).unwrap();
        t.finish(&[y])
    }

    #[test]
    fn a_returned_plan_is_lent_again_and_another_graph_gets_its_own() {
        let n = Cell::new(0);
        let (store, b, w) = setup(&n);
        let x = Tensor::new(vec![3], vec![1.0, 2.0, 3.0]).unwrap();
        for _ in 0..3 {
            let mut p = store.lend(&b, &doubling(3), &w).unwrap();
            assert_eq!(
                p.run(std::slice::from_ref(&x)).unwrap()[0].data,
                [2.0, 4.0, 6.0]
            );
        }
        assert_eq!((n.get(), store.len()), (1, 1));
        let _other = store.lend(&b, &doubling(4), &w).unwrap();
        assert_eq!(n.get(), 2);
        // Lent out, the first plan is not in the store: a second borrower prepares its own.
        let _a = store.lend(&b, &doubling(3), &w).unwrap();
        let _b = store.lend(&b, &doubling(3), &w).unwrap();
        assert_eq!(n.get(), 3);
    }

    #[test]
    fn a_plan_whose_run_failed_is_not_kept() {
        let n = Cell::new(0);
        let (store, b, w) = setup(&n);
        {
            let mut p = store.lend(&b, &doubling(3), &w).unwrap();
            let wrong = Tensor::new(vec![2], vec![1.0, 2.0]).unwrap();
            assert!(p.run(&[wrong]).is_err());
        }
        assert_eq!(store.len(), 0);
        store.lend(&b, &doubling(3), &w).unwrap();
        assert_eq!(n.get(), 2);
    }

    #[test]
    fn a_store_that_stops_keeping_drops_its_plans_and_later_returns() {
        let n = Cell::new(0);
        let (store, b, w) = setup(&n);
        drop(store.lend(&b, &doubling(3), &w).unwrap());
        assert_eq!(store.len(), 1);
        store.set_keeping(false);
        assert_eq!(store.len(), 0);
        drop(store.lend(&b, &doubling(3), &w).unwrap());
        assert_eq!((store.len(), n.get()), (0, 2));
    }
}
