//! `ldm_edge::ops::Ops` over burn autodiff tensors: the training executor of the one
//! architecture. Every op is composed from burn primitives that have a backward (matmul, conv,
//! elementwise, reductions, reshape/permute/cat/narrow, select), never from a fused kernel.
//!
//! burn tensors carry their rank in the type while `Ops` shapes are dynamic, so every tensor is
//! held at rank [`R`] with leading 1s (numpy broadcasting aligns on the right, so broadcasting
//! is unchanged) and converted to a concrete rank where an op needs one (conv: 4, linear: 2).
use super::params::ParamStore;
use burn::tensor::{activation, module, ops::ConvOptions, Device, Int, Tensor, TensorData};
use ldm_edge::ops::{Ops, Pads};
use ldm_edge::{Error, Result};

/// The fixed storage rank; the architectures use at most 5 (attention splits heads at 4).
pub const R: usize = 6;

/// A tensor at rank [`R`] plus its logical shape.
#[derive(Clone)]
pub struct BT {
    pub t: Tensor<R>,
    pub shape: Vec<usize>,
}

fn padded(shape: &[usize]) -> [usize; R] {
    let mut out = [1; R];
    out[R - shape.len()..].copy_from_slice(shape);
    out
}

fn fixed<const D: usize>(shape: &[usize]) -> [usize; D] {
    let mut out = [1; D];
    out.copy_from_slice(shape);
    out
}

impl BT {
    pub fn new(t: Tensor<R>, shape: Vec<usize>) -> Self {
        Self { t, shape }
    }

    pub fn from_vec(data: Vec<f32>, shape: &[usize], device: &Device) -> Self {
        let t = Tensor::<R>::from_data(TensorData::new(data, padded(shape)), device);
        Self::new(t, shape.to_vec())
    }

    /// The logical-rank tensor, for ops that need a concrete rank.
    pub fn at<const D: usize>(&self) -> Tensor<D> {
        self.t.clone().reshape(fixed::<D>(&self.shape))
    }

    pub fn lift<const D: usize>(t: Tensor<D>) -> Self {
        let shape = t.dims().to_vec();
        Self::new(t.reshape(padded(&shape)), shape)
    }

    pub fn to_vec(&self) -> Result<Vec<f32>> {
        let data = self.t.clone().into_data();
        data.as_slice::<f32>()
            .map(|s| s.to_vec())
            .map_err(|e| Error::Input(format!("tensor is not f32: {e:?}")))
    }
}

fn shape_err(op: &'static str, msg: String) -> Error {
    Error::Shape { op, msg }
}

/// Numpy broadcast of two shapes (right-aligned).
fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let pa = padded(a);
    let pb = padded(b);
    let mut out = Vec::with_capacity(n);
    for d in R - n..R {
        match (pa[d], pb[d]) {
            (x, y) if x == y => out.push(x),
            (1, y) => out.push(y),
            (x, 1) => out.push(x),
            _ => {
                return Err(shape_err(
                    "broadcast",
                    format!("{a:?} and {b:?} do not broadcast"),
                ))
            }
        }
    }
    Ok(out)
}

/// The training executor: a parameter store plus the device tensors are made on.
pub struct BurnOps<'a> {
    pub store: &'a mut ParamStore,
}

impl<'a> BurnOps<'a> {
    pub fn new(store: &'a mut ParamStore) -> Self {
        Self { store }
    }
    fn device(&self) -> Device {
        self.store.device.clone()
    }
}

impl Ops for BurnOps<'_> {
    type T = BT;

    fn shape(&self, t: &BT) -> Vec<usize> {
        t.shape.clone()
    }

    fn param(&mut self, path: &str, shape: &[usize]) -> Result<BT> {
        self.store.get(path, shape)
    }

    fn conv2d(&mut self, x: &BT, w: &BT, b: Option<&BT>, stride: usize, pads: Pads) -> Result<BT> {
        if x.shape.len() != 4 || w.shape.len() != 4 || x.shape[1] != w.shape[1] {
            return Err(shape_err(
                "conv2d",
                format!("input {:?} weight {:?}", x.shape, w.shape),
            ));
        }
        // Pads are [top, left, bottom, right]; burn takes (begin, end) per spatial axis.
        let opts = ConvOptions::new_with_padding(
            [stride, stride],
            [(pads[0], pads[2]), (pads[1], pads[3])],
            [1, 1],
            1,
        );
        let y = module::conv2d(x.at::<4>(), w.at::<4>(), b.map(|b| b.at::<1>()), opts);
        Ok(BT::lift(y))
    }

    fn linear(&mut self, x: &BT, w: &BT, b: Option<&BT>) -> Result<BT> {
        let (out, inp) = (w.shape[0], w.shape[1]);
        let last = *x.shape.last().unwrap_or(&0);
        if w.shape.len() != 2 || last != inp {
            return Err(shape_err(
                "linear",
                format!("input {:?} weight {:?}", x.shape, w.shape),
            ));
        }
        let rows = x.shape.iter().product::<usize>() / inp.max(1);
        let x2: Tensor<2> = x.t.clone().reshape([rows, inp]);
        let mut y = x2.matmul(w.at::<2>().transpose());
        if let Some(b) = b {
            y = y + b.t.clone().reshape([1, out]);
        }
        let mut shape = x.shape.clone();
        if let Some(l) = shape.last_mut() {
            *l = out;
        }
        Ok(BT::new(y.reshape(padded(&shape)), shape))
    }

    fn add(&mut self, a: &BT, b: &BT) -> Result<BT> {
        let shape = broadcast(&a.shape, &b.shape)?;
        Ok(BT::new(a.t.clone() + b.t.clone(), shape))
    }

    fn mul(&mut self, a: &BT, b: &BT) -> Result<BT> {
        let shape = broadcast(&a.shape, &b.shape)?;
        Ok(BT::new(a.t.clone() * b.t.clone(), shape))
    }

    fn scale(&mut self, x: &BT, s: f32) -> Result<BT> {
        Ok(BT::new(x.t.clone().mul_scalar(s), x.shape.clone()))
    }

    fn group_norm(&mut self, x: &BT, gamma: &BT, beta: &BT, groups: usize, eps: f32) -> Result<BT> {
        let (n, c) = (x.shape[0], x.shape[1]);
        if groups == 0 || c % groups != 0 {
            return Err(shape_err(
                "group_norm",
                format!("{c} channels in {groups} groups"),
            ));
        }
        let rest: usize = x.shape[2..].iter().product();
        let g: Tensor<3> = x.t.clone().reshape([n, groups, (c / groups) * rest]);
        let mean = g.clone().mean_dim(2);
        let centered = g - mean;
        let var = centered.clone().square().mean_dim(2);
        let normed = centered * (var.add_scalar(eps)).sqrt().recip();
        let mut cshape = vec![1; x.shape.len()];
        cshape[1] = c;
        let y = normed.reshape(padded(&x.shape)) * gamma.t.clone().reshape(padded(&cshape))
            + beta.t.clone().reshape(padded(&cshape));
        Ok(BT::new(y, x.shape.clone()))
    }

    fn layer_norm(&mut self, x: &BT, gamma: &BT, beta: &BT, eps: f32) -> Result<BT> {
        let mean = x.t.clone().mean_dim(R - 1);
        let centered = x.t.clone() - mean;
        let var = centered.clone().square().mean_dim(R - 1);
        let y = centered * var.add_scalar(eps).sqrt().recip() * gamma.t.clone() + beta.t.clone();
        Ok(BT::new(y, x.shape.clone()))
    }

    fn silu(&mut self, x: &BT) -> Result<BT> {
        Ok(BT::new(
            x.t.clone() * activation::sigmoid(x.t.clone()),
            x.shape.clone(),
        ))
    }

    fn gelu(&mut self, x: &BT) -> Result<BT> {
        // Exact GELU from erf, as the reference kernel computes it.
        let e =
            x.t.clone()
                .mul_scalar(std::f32::consts::FRAC_1_SQRT_2)
                .erf();
        Ok(BT::new(
            x.t.clone() * e.add_scalar(1.0).mul_scalar(0.5),
            x.shape.clone(),
        ))
    }

    fn attention(&mut self, q: &BT, k: &BT, v: &BT, heads: usize, causal: bool) -> Result<BT> {
        let (b, lq, c) = (q.shape[0], q.shape[1], q.shape[2]);
        let (lk, cv) = (k.shape[1], v.shape[2]);
        if heads == 0 || c % heads != 0 || cv % heads != 0 || k.shape[2] != c {
            return Err(shape_err(
                "attention",
                format!(
                    "q {:?} k {:?} v {:?} heads {heads}",
                    q.shape, k.shape, v.shape
                ),
            ));
        }
        let (d, dv) = (c / heads, cv / heads);
        let split = |t: &BT, l: usize, d: usize| -> Tensor<4> {
            t.t.clone().reshape([b, l, heads, d]).swap_dims(1, 2)
        };
        let qh = split(q, lq, d);
        let kh = split(k, lk, d);
        let vh = split(v, lk, dv);
        let mut s = qh
            .matmul(kh.swap_dims(2, 3))
            .mul_scalar(1.0 / (d as f32).sqrt());
        if causal {
            let mut mask = vec![0f32; lq * lk];
            for i in 0..lq {
                for j in i + 1..lk {
                    mask[i * lk + j] = -1e30;
                }
            }
            let m = Tensor::<4>::from_data(TensorData::new(mask, [1, 1, lq, lk]), &self.device());
            s = s + m;
        }
        let p = activation::softmax(s, 3);
        let o = p.matmul(vh).swap_dims(1, 2).reshape([b, lq, cv]);
        Ok(BT::lift(o))
    }

    fn reshape(&mut self, x: &BT, shape: &[usize]) -> Result<BT> {
        if shape.iter().product::<usize>() != x.shape.iter().product::<usize>() || shape.len() > R {
            return Err(shape_err("reshape", format!("{:?} -> {shape:?}", x.shape)));
        }
        Ok(BT::new(x.t.clone().reshape(padded(shape)), shape.to_vec()))
    }

    fn permute(&mut self, x: &BT, perm: &[usize]) -> Result<BT> {
        let n = x.shape.len();
        if perm.len() != n {
            return Err(shape_err("permute", format!("{perm:?} on rank {n}")));
        }
        let off = R - n;
        let mut full = [0usize; R];
        for (i, f) in full.iter_mut().enumerate().take(off) {
            *f = i;
        }
        for (i, &p) in perm.iter().enumerate() {
            full[off + i] = off + p;
        }
        let shape = perm.iter().map(|&p| x.shape[p]).collect();
        Ok(BT::new(x.t.clone().permute(full), shape))
    }

    fn concat(&mut self, xs: &[&BT], axis: usize) -> Result<BT> {
        let first = xs
            .first()
            .ok_or_else(|| shape_err("concat", "no inputs".into()))?;
        let n = first.shape.len();
        let mut shape = first.shape.clone();
        shape[axis] = xs.iter().map(|x| x.shape[axis]).sum();
        let ts = xs.iter().map(|x| x.t.clone()).collect();
        Ok(BT::new(Tensor::cat(ts, R - n + axis), shape))
    }

    fn slice(&mut self, x: &BT, axis: usize, start: usize, end: usize) -> Result<BT> {
        let n = x.shape.len();
        if axis >= n || start > end || end > x.shape[axis] {
            return Err(shape_err(
                "slice",
                format!("{start}..{end} of axis {axis} in {:?}", x.shape),
            ));
        }
        let mut shape = x.shape.clone();
        shape[axis] = end - start;
        Ok(BT::new(
            x.t.clone().narrow(R - n + axis, start, end - start),
            shape,
        ))
    }

    fn upsample_nearest2x(&mut self, x: &BT) -> Result<BT> {
        let n = x.shape.len();
        let (h, w) = (x.shape[n - 2], x.shape[n - 1]);
        let planes: usize = x.shape[..n - 2].iter().product();
        let t: Tensor<5> = x.t.clone().reshape([planes, h, 1, w, 1]);
        let t = t.repeat_dim(2, 2).repeat_dim(4, 2);
        let mut shape = x.shape.clone();
        shape[n - 2] = 2 * h;
        shape[n - 1] = 2 * w;
        Ok(BT::new(t.reshape(padded(&shape)), shape))
    }

    fn timestep_embedding(&mut self, t: &BT, dim: usize, flip: bool, shift: f32) -> Result<BT> {
        // Frequencies from the runtime's own table so training and inference agree bit for bit.
        let freqs = ldm_edge::backend::reference::kernels::timestep_freqs(dim, shift);
        let half = freqs.len();
        let b = t.shape[0];
        let f = Tensor::<2>::from_data(TensorData::new(freqs, [1, half]), &self.device());
        let arg = t.t.clone().reshape([b, 1]) * f;
        let (s, c) = (arg.clone().sin(), arg.cos());
        let y = if flip {
            Tensor::cat(vec![c, s], 1)
        } else {
            Tensor::cat(vec![s, c], 1)
        };
        Ok(BT::lift(y))
    }

    fn embedding(&mut self, table: &BT, ids: &BT) -> Result<BT> {
        let (v, d) = (table.shape[0], table.shape[1]);
        let vals = ids.to_vec()?;
        let mut idx = Vec::with_capacity(vals.len());
        for id in vals {
            if !(id >= 0.0 && (id as usize) < v && id.fract() == 0.0) {
                return Err(Error::Input(format!(
                    "token id {id} outside the vocabulary of {v}"
                )));
            }
            idx.push(id as i64);
        }
        let n = idx.len();
        let it = Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &self.device());
        let rows = table.at::<2>().select(0, it);
        let mut shape = ids.shape.clone();
        shape.push(d);
        Ok(BT::new(rows.reshape(padded(&shape)), shape))
    }
}
