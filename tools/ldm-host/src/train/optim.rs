//! AdamW with decoupled weight decay, global grad-norm clipping and an EMA of the weights.
//! Written here (not burn's optimizer) because its state must live in our safetensors
//! checkpoints keyed by the same diffusers paths as the parameters.
use super::burn_ops::R;
use super::params::ParamStore;
use burn::tensor::{Gradients, Tensor};
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Linear warmup of the learning rate over this many steps.
    pub warmup: u64,
    /// Clip the global gradient L2 norm to this (0 = off).
    pub clip: f32,
    /// From this step on the rate falls linearly to 10% at `total` (0 = constant rate): the
    /// last stretch at a low rate buys most of the final reconstruction quality.
    pub decay_start: u64,
    pub total: u64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup: 0,
            clip: 1.0,
            decay_start: 0,
            total: 0,
        }
    }
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Completed optimizer steps.
    pub step: u64,
    pub m: HashMap<String, Tensor<R>>,
    pub v: HashMap<String, Tensor<R>>,
}

/// What one step did, for the log.
pub struct StepStats {
    pub grad_norm: f32,
    pub lr: f32,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig) -> Self {
        Self {
            cfg,
            step: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }

    pub fn lr_at(&self, step: u64) -> f32 {
        let c = &self.cfg;
        if c.warmup > 0 && step < c.warmup {
            c.lr * (step + 1) as f32 / c.warmup as f32
        } else if c.decay_start > 0 && step >= c.decay_start && c.total > c.decay_start {
            let f = ((step - c.decay_start) as f32 / (c.total - c.decay_start) as f32).min(1.0);
            c.lr * (1.0 - 0.9 * f)
        } else {
            c.lr
        }
    }

    /// Applies one update to every trainable parameter of `store` from `grads`.
    pub fn step(&mut self, store: &mut ParamStore, grads: &Gradients) -> StepStats {
        let names: Vec<String> = store.names().to_vec();
        let mut gs: Vec<(String, Tensor<R>, Tensor<R>, usize)> = Vec::new();
        let mut sq: Option<Tensor<1>> = None;
        for n in names {
            let Some(p) = store.param(&n) else { continue };
            let Some(g) = p.t.grad(grads) else { continue };
            let s = g.clone().square().sum();
            sq = Some(match sq {
                Some(a) => a + s,
                None => s,
            });
            gs.push((n, p.t.clone().inner(), g, p.shape.len()));
        }
        let norm = sq.map_or(0.0, |s| s.into_scalar::<f32>().sqrt());
        let clip = if self.cfg.clip > 0.0 && norm > self.cfg.clip {
            self.cfg.clip / norm
        } else {
            1.0
        };
        let lr = self.lr_at(self.step);
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        for (n, w, g, rank) in gs {
            let g = if clip < 1.0 { g.mul_scalar(clip) } else { g };
            let m = match self.m.remove(&n) {
                Some(m) => m.mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1),
                None => g.clone().mul_scalar(1.0 - b1),
            };
            let v = match self.v.remove(&n) {
                Some(v) => v.mul_scalar(b2) + g.square().mul_scalar(1.0 - b2),
                None => g.square().mul_scalar(1.0 - b2),
            };
            let upd = m.clone().div_scalar(bc1)
                / v.clone().div_scalar(bc2).sqrt().add_scalar(self.cfg.eps);
            // Decay only matrices and kernels: decaying norms and biases hurts and buys nothing.
            let w = if rank >= 2 && self.cfg.weight_decay > 0.0 {
                w.clone() - w.mul_scalar(lr * self.cfg.weight_decay) - upd.mul_scalar(lr)
            } else {
                w - upd.mul_scalar(lr)
            };
            store.set(&n, Tensor::from_inner(w));
            self.m.insert(n.clone(), m);
            self.v.insert(n, v);
        }
        StepStats {
            grad_norm: norm,
            lr,
        }
    }
}

/// Exponential moving average of the parameters, with the usual warmup of the decay so early
/// averages are not dominated by the random init.
pub struct Ema {
    pub decay: f32,
    pub weights: HashMap<String, Tensor<R>>,
}

impl Ema {
    pub fn new(decay: f32) -> Self {
        Self {
            decay,
            weights: HashMap::new(),
        }
    }

    pub fn update(&mut self, store: &ParamStore, step: u64) {
        let d = self.decay.min((1.0 + step as f32) / (10.0 + step as f32));
        for n in store.names() {
            let Some(p) = store.param(n) else { continue };
            let w = p.t.clone().inner();
            let e = match self.weights.remove(n) {
                Some(e) => e.mul_scalar(d) + w.mul_scalar(1.0 - d),
                None => w,
            };
            self.weights.insert(n.clone(), e);
        }
    }
}
