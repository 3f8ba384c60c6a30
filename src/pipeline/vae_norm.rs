//! GroupNorm statistics shared by all VAE tiles. A tile normalised by its own statistics is
//! shifted and scaled differently from the whole image at every GroupNorm, and a trained
//! decoder amplifies that: on the shipped model, a 512 px decode in 256 px tiles agrees with
//! the whole decode to 35 dB with per-tile norms and to 48.6 dB with shared ones. So the tiled
//! part runs in two passes:
//! 1. tiles that cover the input with as little overlap as possible, each with its own
//!    GroupNorms, also returning each GroupNorm input's per-channel mean and mean square; their
//!    plain average over the tiles estimates the whole input's statistics;
//! 2. the output tiles, with every GroupNorm replaced by the affine map those statistics give,
//!    `x * scale + shift` per channel, so every tile is normalised alike.
//!
//! The average is the plain one on purpose: pass 1 normalises each tile by its own plain
//! statistics, and their plain average is the one whose deviations cancel to first order.
//! Measured worse on the shipped model: weighting by the blend weights (trusting tile centres),
//! and further passes that re-measure under fixed norms (each fixes one more GroupNorm exactly
//! but puts the later ones off).
//!
//! The IR has no reduction op, so a mean over positions is an attention whose keys are all
//! zero: equal scores give a uniform softmax, and the output is the mean of the values.
use crate::backend::{Tensor, WeightSource};
use crate::graph::{Graph, Node, NodeId, Op, Tracer, ValueType};
use crate::ops::Ops;
use crate::{Error, Result};

/// What one input of a rewritten graph is bound to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bind {
    /// The tile itself.
    X,
    Scale(usize),
    Shift(usize),
}

impl Bind {
    fn name(&self) -> String {
        match self {
            Bind::X => "x".into(),
            Bind::Scale(k) => format!("norm{k}_scale"),
            Bind::Shift(k) => format!("norm{k}_shift"),
        }
    }
}

/// One GroupNorm of the graph, in order of appearance.
struct NormSite {
    gamma: String,
    beta: String,
    groups: usize,
    eps: f32,
    /// Batch and channels of the normalised input.
    bc: (usize, usize),
}

/// The two graphs of a synced tiled run, and the GroupNorms they share.
pub(crate) struct SyncedGraphs {
    /// Per-tile norms; a mean and a mean square [B, 1, C] of each GroupNorm's input, then the
    /// graph's own outputs.
    pub stats: Graph,
    /// Fixed norms: each GroupNorm is `x * scale + shift`, both inputs [B, C, 1, 1].
    pub fixed: Graph,
    fixed_binds: Vec<Bind>,
    sites: Vec<NormSite>,
    /// Outputs of the original graph (the stats graph's moments follow them).
    outputs: usize,
}

impl SyncedGraphs {
    /// For a graph of one input.
    pub fn new(g: &Graph) -> Result<Self> {
        let (stats, _, sites) = rewrite(g, false)?;
        let (fixed, fixed_binds, _) = rewrite(g, true)?;
        Ok(Self {
            stats,
            fixed,
            fixed_binds,
            sites,
            outputs: g.outputs.len(),
        })
    }

    /// The fixed graph's inputs for one tile, with `norms` from [`NormStats::norms`].
    pub fn fixed_inputs(&self, x: Tensor, norms: &[(Tensor, Tensor)]) -> Result<Vec<Tensor>> {
        let mut x = Some(x);
        self.fixed_binds
            .iter()
            .map(|bind| {
                let t = match *bind {
                    Bind::X => x.take(),
                    Bind::Scale(k) => norms.get(k).map(|n| n.0.clone()),
                    Bind::Shift(k) => norms.get(k).map(|n| n.1.clone()),
                };
                t.ok_or_else(|| Error::shape("vae_norm", format!("nothing for input {bind:?}")))
            })
            .collect()
    }
}

fn param_path(g: &Graph, id: NodeId) -> Result<String> {
    match &g.nodes[id].op {
        Op::Param { path } => Ok(path.clone()),
        op => Err(Error::shape(
            "vae_norm",
            format!("GroupNorm gamma/beta must be weights, got {}", op.kind()),
        )),
    }
}

fn site(g: &Graph, n: &Node, groups: usize, eps: f32) -> Result<NormSite> {
    let shape = &g.nodes[n.inputs[0]].shape;
    if shape.len() != 4 {
        return Err(Error::shape(
            "vae_norm",
            format!("GroupNorm input {shape:?} is not [B, C, h, w]"),
        ));
    }
    Ok(NormSite {
        gamma: param_path(g, n.inputs[1])?,
        beta: param_path(g, n.inputs[2])?,
        groups,
        eps,
        bc: (shape[0], shape[1]),
    })
}

/// Copies `g` with each GroupNorm either measured (extra outputs) or, with `fixed`, replaced
/// by `x * scale + shift`. Weights are created where first used, so the fixed graph does not
/// hold the gammas and betas it no longer reads. Returns what each input of the copy is.
fn rewrite(g: &Graph, fixed: bool) -> Result<(Graph, Vec<Bind>, Vec<NormSite>)> {
    let mut t = Tracer::new();
    let mut binds = Vec::new();
    let mut map: Vec<Option<NodeId>> = vec![None; g.nodes.len()];
    let mut sites = Vec::new();
    let mut extra = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        match n.op {
            Op::Param { .. } => continue,
            Op::Input { ty, .. } => {
                if binds.contains(&Bind::X) {
                    return Err(Error::shape(
                        "vae_norm",
                        "the graph has more than one input",
                    ));
                }
                map[i] = Some(t.input(&Bind::X.name(), &n.shape, ty));
                binds.push(Bind::X);
                continue;
            }
            _ => {}
        }
        // A fixed GroupNorm reads only its input, not its gamma and beta.
        let used = match n.op {
            Op::GroupNorm { .. } if fixed => &n.inputs[..1],
            _ => &n.inputs[..],
        };
        let args = used
            .iter()
            .map(|&j| node(&mut t, g, &mut map, j))
            .collect::<Result<Vec<_>>>()?;
        let Op::GroupNorm { groups, eps } = n.op else {
            map[i] = Some(t.push(n.op.clone(), &args)?);
            continue;
        };
        let s = site(g, n, groups, eps)?;
        map[i] = Some(if fixed {
            let k = sites.len();
            let shape = [s.bc.0, s.bc.1, 1, 1];
            let scale = t.input(&Bind::Scale(k).name(), &shape, ValueType::F32);
            let shift = t.input(&Bind::Shift(k).name(), &shape, ValueType::F32);
            binds.extend([Bind::Scale(k), Bind::Shift(k)]);
            let y = t.push(Op::Mul, &[args[0], scale])?;
            t.push(Op::Add, &[y, shift])?
        } else {
            extra.extend(channel_moments(&mut t, args[0], groups)?);
            t.push(n.op.clone(), &args)?
        });
        sites.push(s);
    }
    // The moments come first: an executor that orders the graph by a walk from its outputs
    // (tract does) then computes each as soon as its GroupNorm input exists. Listed after the
    // image, they held every GroupNorm input to the end: 900 MB instead of 440 MB of peak RSS
    // for the stats pass of an SD 1.5 decode in 256 px tiles.
    let own = g
        .outputs
        .iter()
        .map(|&o| node(&mut t, g, &mut map, o))
        .collect::<Result<Vec<_>>>()?;
    extra.extend(own);
    Ok((t.finish(&extra), binds, sites))
}

/// The new id of old node `j`, creating a weight on first use.
fn node(t: &mut Tracer, g: &Graph, map: &mut [Option<NodeId>], j: NodeId) -> Result<NodeId> {
    if let Some(id) = map[j] {
        return Ok(id);
    }
    match &g.nodes[j].op {
        Op::Param { path } => {
            let id = t.param(path, &g.nodes[j].shape)?;
            map[j] = Some(id);
            Ok(id)
        }
        op => Err(Error::shape(
            "vae_norm",
            format!("node {j} ({}) is used before it is defined", op.kind()),
        )),
    }
}

/// Per-channel mean and mean square of x [B, C, h, w] over its positions, each [B, 1, C].
fn channel_moments(t: &mut Tracer, x: NodeId, groups: usize) -> Result<[NodeId; 2]> {
    let s = t.shape(&x);
    let r = t.push(
        Op::Reshape {
            shape: vec![s[0], s[1], s[2] * s[3]],
        },
        &[x],
    )?;
    let tokens = t.push(
        Op::Permute {
            perm: vec![0, 2, 1],
        },
        &[r],
    )?;
    // Zero keys of one channel per head: any query scores 0 against them, and they cost a
    // channel per head rather than a copy of the activation. One head per group keeps the
    // value channels per head small (Vulkan's per-row fallback kernel takes heads up to 512).
    let slice = t.push(
        Op::Slice {
            axis: 2,
            start: 0,
            end: groups,
        },
        &[tokens],
    )?;
    let zero = t.push(Op::Scale { s: 0.0 }, &[slice])?;
    let q = t.push(
        Op::Slice {
            axis: 1,
            start: 0,
            end: 1,
        },
        &[zero],
    )?;
    let att = Op::Attention {
        heads: groups,
        causal: false,
    };
    let mean = t.push(att.clone(), &[q, zero, tokens])?;
    let sq = t.push(Op::Mul, &[tokens, tokens])?;
    let msq = t.push(att, &[q, zero, sq])?;
    Ok([mean, msq])
}

/// The moments of a stats pass summed over its tiles, turned into fixed norms.
pub(crate) struct NormStats {
    /// Per site: the sums over tiles of (mean, mean square), per [B * C].
    sums: Vec<(Vec<f64>, Vec<f64>)>,
    tiles: usize,
}

impl NormStats {
    pub fn new(g: &SyncedGraphs) -> Self {
        let sums = g
            .sites
            .iter()
            .map(|s| (vec![0.0; s.bc.0 * s.bc.1], vec![0.0; s.bc.0 * s.bc.1]))
            .collect();
        Self { sums, tiles: 0 }
    }

    /// Adds one tile's outputs of the stats graph.
    pub fn add(&mut self, g: &SyncedGraphs, outputs: &[Tensor]) -> Result<()> {
        let moments = outputs
            .get(..outputs.len().saturating_sub(g.outputs))
            .unwrap_or_default();
        if moments.len() != 2 * self.sums.len() {
            return Err(Error::shape(
                "vae_norm",
                format!(
                    "the stats pass gave {} moment tensors, expected {}",
                    moments.len(),
                    2 * self.sums.len()
                ),
            ));
        }
        for (k, (m, q)) in self.sums.iter_mut().enumerate() {
            for (acc, t) in [(m, &moments[2 * k]), (q, &moments[2 * k + 1])] {
                if t.data.len() != acc.len() {
                    return Err(Error::shape(
                        "vae_norm",
                        format!("moments {:?} for {} channels", t.shape, acc.len()),
                    ));
                }
                for (a, v) in acc.iter_mut().zip(&t.data) {
                    *a += *v as f64;
                }
            }
        }
        self.tiles += 1;
        Ok(())
    }

    /// Each GroupNorm's (scale, shift) [B, C, 1, 1]: gamma / sqrt(var + eps) and
    /// beta - mean * scale, from its groups' statistics averaged over the tiles.
    pub fn norms(&self, g: &SyncedGraphs, w: &dyn WeightSource) -> Result<Vec<(Tensor, Tensor)>> {
        let mut out = Vec::with_capacity(g.sites.len());
        for (s, (m, q)) in g.sites.iter().zip(&self.sums) {
            let (b, c) = s.bc;
            let gamma = w.load_f32(&s.gamma)?;
            let beta = w.load_f32(&s.beta)?;
            if gamma.len() != c || beta.len() != c || self.tiles == 0 || c % s.groups != 0 {
                return Err(Error::shape(
                    "vae_norm",
                    format!("no statistics for GroupNorm {} of {c} channels", s.gamma),
                ));
            }
            let per = c / s.groups;
            let n = (self.tiles * per) as f64;
            let (mut scale, mut shift) = (vec![0.0f32; b * c], vec![0.0f32; b * c]);
            // A group is `per` consecutive channels of one batch item.
            for g0 in (0..b * c).step_by(per) {
                let group = g0..g0 + per;
                let mean = m[group.clone()].iter().sum::<f64>() / n;
                let msq = q[group.clone()].iter().sum::<f64>() / n;
                // E[x^2] - E[x]^2 can round below zero for a near-constant group.
                let inv = 1.0 / ((msq - mean * mean).max(0.0) + s.eps as f64).sqrt();
                for i in group {
                    let a = gamma[i % c] as f64 * inv;
                    scale[i] = a as f32;
                    shift[i] = (beta[i % c] as f64 - mean * a) as f32;
                }
            }
            let shape = vec![b, c, 1, 1];
            out.push((
                Tensor::new(shape.clone(), scale)?,
                Tensor::new(shape, shift)?,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::reference::ReferenceBackend;
    use crate::backend::Backend;
    use std::collections::HashMap;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut g = crate::sampler::NoiseGen::new(seed);
        (0..n).map(|_| g.next_normal()).collect()
    }

    /// x [1, 8, 6, 5] -> GroupNorm(2) -> SiLU -> GroupNorm(4): two sites, 4 and 2 channels a
    /// group.
    fn graph() -> (Graph, HashMap<String, Tensor>) {
        let mut t = Tracer::new();
        let x = t.input("x", &[1, 8, 6, 5], ValueType::F32);
        let mut w = HashMap::new();
        let mut h = x;
        for (k, groups) in [(0, 2), (1, 4)] {
            let (gp, bp) = (format!("n{k}.weight"), format!("n{k}.bias"));
            let g = t.param(&gp, &[8]).unwrap();
            let b = t.param(&bp, &[8]).unwrap();
            w.insert(gp, Tensor::new(vec![8], values(8, 10 + k)).unwrap());
            w.insert(bp, Tensor::new(vec![8], values(8, 20 + k)).unwrap());
            h = t
                .push(Op::GroupNorm { groups, eps: 1e-6 }, &[h, g, b])
                .unwrap();
            if k == 0 {
                h = t.silu(&h).unwrap();
            }
        }
        (t.finish(&[h]), w)
    }

    #[test]
    fn fixed_norms_from_the_whole_input_reproduce_the_graph() {
        let (g, w) = graph();
        let x = Tensor::new(vec![1, 8, 6, 5], values(240, 1)).unwrap();
        let run = |g: &Graph, ins: &[Tensor]| {
            let mut plan = ReferenceBackend.prepare(g, &w).unwrap();
            plan.run(ins).unwrap()
        };
        let want = run(&g, std::slice::from_ref(&x)).remove(0);
        let sg = SyncedGraphs::new(&g).unwrap();
        // Two sites: their moments first, then the graph's own output, unchanged.
        let outs = run(&sg.stats, std::slice::from_ref(&x));
        assert_eq!(outs.len(), 5);
        assert_eq!(outs[4], want);
        let mean: f32 = x.data[..30].iter().sum::<f32>() / 30.0;
        assert!(
            (outs[0].data[0] - mean).abs() < 1e-5,
            "{:?} vs {mean}",
            outs[0]
        );
        // One tile that is the whole input: its statistics are exact, so the affine norms
        // give the graph's output.
        let mut stats = NormStats::new(&sg);
        stats.add(&sg, &outs).unwrap();
        let norms = stats.norms(&sg, &w).unwrap();
        let got = run(&sg.fixed, &sg.fixed_inputs(x, &norms).unwrap()).remove(0);
        let err = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-4, "fixed norms differ by {err}");
        // The fixed graph no longer reads gamma and beta.
        assert!(sg.fixed.params().is_empty());
    }
}
