//! The parameter store behind `BurnOps::param`: tensors keyed by diffusers-style path, created
//! on first use (from `random_param`, or from values loaded out of a checkpoint) and then shared
//! by every later forward.
use super::burn_ops::{BT, R};
use burn::tensor::{Device, Tensor, TensorData};
use ldm_edge::arch::init::random_param;
use ldm_edge::{Error, Result};
use std::collections::{BTreeMap, HashMap};

pub struct ParamStore {
    pub device: Device,
    /// Whether parameters take part in autodiff (false for a frozen component).
    pub trainable: bool,
    pub seed: u64,
    /// Values to start from instead of the random init (a checkpoint or a frozen stage).
    pub initial: HashMap<String, (Vec<usize>, Vec<f32>)>,
    /// Set when `initial` came from a checkpoint: a parameter missing there is then an error,
    /// not a silent random init.
    pub strict: bool,
    /// Created parameters in creation order (stable across runs of the same forward).
    order: Vec<String>,
    params: BTreeMap<String, BT>,
}

fn padded(shape: &[usize]) -> [usize; R] {
    let mut out = [1; R];
    out[R - shape.len()..].copy_from_slice(shape);
    out
}

impl ParamStore {
    pub fn new(device: Device, trainable: bool, seed: u64) -> Self {
        Self {
            device,
            trainable,
            seed,
            initial: HashMap::new(),
            strict: false,
            order: Vec::new(),
            params: BTreeMap::new(),
        }
    }

    /// A parameter; created on first request with the architecture's shape.
    pub fn get(&mut self, path: &str, shape: &[usize]) -> Result<BT> {
        if let Some(p) = self.params.get(path) {
            if p.shape != shape {
                return Err(Error::WeightShape {
                    path: path.to_string(),
                    expected: shape.to_vec(),
                    found: p.shape.clone(),
                });
            }
            return Ok(p.clone());
        }
        let data = match self.initial.remove(path) {
            Some((s, _)) if s != shape => {
                return Err(Error::WeightShape {
                    path: path.to_string(),
                    expected: shape.to_vec(),
                    found: s,
                })
            }
            Some((_, d)) => d,
            None if self.strict => {
                return Err(Error::Config(format!(
                    "the checkpoint has no parameter `{path}` (a different architecture?)"
                )))
            }
            None => random_param(self.seed, path, shape),
        };
        let t = Tensor::<R>::from_data(TensorData::new(data, padded(shape)), &self.device);
        let t = if self.trainable { t.require_grad() } else { t };
        let p = BT::new(t, shape.to_vec());
        self.order.push(path.to_string());
        self.params.insert(path.to_string(), p.clone());
        Ok(p)
    }

    /// Shapes of created and of loaded-but-unused parameters.
    pub fn shapes(&self) -> HashMap<String, Vec<usize>> {
        let mut out: HashMap<String, Vec<usize>> = self
            .initial
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        out.extend(
            self.params
                .iter()
                .map(|(k, p)| (k.clone(), p.shape.clone())),
        );
        out
    }

    pub fn names(&self) -> &[String] {
        &self.order
    }

    pub fn param(&self, path: &str) -> Option<&BT> {
        self.params.get(path)
    }

    /// Replaces a parameter's values (after an optimizer step), keeping it a fresh leaf.
    pub fn set(&mut self, path: &str, t: Tensor<R>) {
        if let Some(p) = self.params.get_mut(path) {
            let t = if self.trainable { t.require_grad() } else { t };
            p.t = t;
        }
    }

    /// Every parameter as host f32 values, in creation order, then loaded values no forward
    /// has asked for yet (a frozen decoder during stage 2 still belongs in the checkpoint).
    pub fn to_host(&self) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
        let mut out: Vec<_> = self
            .order
            .iter()
            .filter_map(|n| self.params.get(n).map(|p| (n, p)))
            .map(|(n, p)| Ok((n.clone(), p.shape.clone(), p.to_vec()?)))
            .collect::<Result<_>>()?;
        let mut rest: Vec<_> = self.initial.iter().collect();
        rest.sort_by(|a, b| a.0.cmp(b.0));
        out.extend(
            rest.into_iter()
                .map(|(n, (s, d))| (n.clone(), s.clone(), d.clone())),
        );
        Ok(out)
    }
}

impl ParamStore {
    /// A copy of the current values on `device` without autodiff, for evaluation and frozen use.
    pub fn frozen_copy(&self, device: Device) -> Result<ParamStore> {
        let mut out = ParamStore::new(device, false, self.seed);
        for (n, s, d) in self.to_host()? {
            out.initial.insert(n, (s, d));
        }
        Ok(out)
    }
}
