//! Shape inference: the one place that states what each op accepts and produces.
use super::ir::Op;
use crate::{Error, Result};

pub fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// numpy broadcasting of two shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

fn want(op: &'static str, ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::shape(op, msg()))
    }
}

/// Output shape of `op` applied to inputs of the given shapes.
pub fn infer(op: &Op, ins: &[&[usize]]) -> Result<Vec<usize>> {
    let k = op.kind();
    let arity = match op {
        Op::Input { .. } | Op::Param { .. } => 0,
        Op::Conv2d { .. } | Op::Linear => ins.len().clamp(2, 3),
        Op::Add | Op::Mul | Op::Embedding => 2,
        Op::GroupNorm { .. } | Op::LayerNorm { .. } | Op::Attention { .. } => 3,
        Op::Concat { .. } => ins.len().max(1),
        _ => 1,
    };
    want(k, ins.len() == arity, || {
        format!("expected {arity} inputs, got {}", ins.len())
    })?;
    match op {
        Op::Input { .. } | Op::Param { .. } => Err(Error::shape(k, "leaf nodes have no inputs")),
        Op::Conv2d { stride, pads } => {
            let (x, w) = (ins[0], ins[1]);
            want(k, x.len() == 4 && w.len() == 4, || {
                format!("x {x:?} and w {w:?} must be 4-D")
            })?;
            want(k, x[1] == w[1], || {
                format!("x has {} channels, weight wants {}", x[1], w[1])
            })?;
            if let Some(b) = ins.get(2) {
                want(k, *b == [w[0]], || {
                    format!("bias {b:?} for {} outputs", w[0])
                })?;
            }
            want(k, *stride >= 1, || "stride 0".into())?;
            let h = x[2] + pads[0] + pads[2];
            let wd = x[3] + pads[1] + pads[3];
            want(k, h >= w[2] && wd >= w[3], || {
                format!("kernel {w:?} larger than input {x:?}")
            })?;
            Ok(vec![
                x[0],
                w[0],
                (h - w[2]) / stride + 1,
                (wd - w[3]) / stride + 1,
            ])
        }
        Op::Linear => {
            let (x, w) = (ins[0], ins[1]);
            want(k, w.len() == 2 && !x.is_empty(), || {
                format!("x {x:?}, w {w:?}")
            })?;
            want(k, x[x.len() - 1] == w[1], || {
                format!("x {x:?} does not match weight {w:?}")
            })?;
            if let Some(b) = ins.get(2) {
                want(k, *b == [w[0]], || {
                    format!("bias {b:?} for {} outputs", w[0])
                })?;
            }
            let mut o = x.to_vec();
            *o.last_mut().unwrap_or(&mut 0) = w[0];
            Ok(o)
        }
        Op::Add | Op::Mul => broadcast(ins[0], ins[1]).ok_or_else(|| {
            Error::shape(
                k,
                format!("cannot broadcast {:?} with {:?}", ins[0], ins[1]),
            )
        }),
        Op::GroupNorm { groups, .. } => {
            let x = ins[0];
            want(k, x.len() >= 2, || format!("x {x:?} must be [N, C, ...]"))?;
            want(k, *groups > 0 && x[1] % groups == 0, || {
                format!("{} channels not divisible into {groups} groups", x[1])
            })?;
            want(k, ins[1] == [x[1]] && ins[2] == [x[1]], || {
                "gamma/beta must be [C]".into()
            })?;
            Ok(x.to_vec())
        }
        Op::LayerNorm { .. } => {
            let x = ins[0];
            let c = *x.last().ok_or_else(|| Error::shape(k, "scalar input"))?;
            want(k, ins[1] == [c] && ins[2] == [c], || {
                "gamma/beta must match the last axis".into()
            })?;
            Ok(x.to_vec())
        }
        Op::Scale { .. } | Op::Silu | Op::Gelu => Ok(ins[0].to_vec()),
        Op::Attention { heads, .. } => {
            let (q, kk, v) = (ins[0], ins[1], ins[2]);
            want(k, q.len() == 3 && kk.len() == 3 && v.len() == 3, || {
                "q, k, v must be [B, L, C]".into()
            })?;
            want(
                k,
                q[0] == kk[0] && kk[0] == v[0] && kk[1] == v[1] && q[2] == kk[2],
                || format!("q {q:?}, k {kk:?}, v {v:?} disagree"),
            )?;
            want(
                k,
                *heads > 0 && q[2] % heads == 0 && v[2] % heads == 0,
                || format!("{} channels not divisible into {heads} heads", q[2]),
            )?;
            Ok(vec![q[0], q[1], v[2]])
        }
        Op::Reshape { shape } => {
            want(k, numel(shape) == numel(ins[0]), || {
                format!("{:?} -> {shape:?}", ins[0])
            })?;
            Ok(shape.clone())
        }
        Op::Permute { perm } => {
            let x = ins[0];
            let mut seen = vec![false; x.len()];
            let ok = perm.len() == x.len()
                && perm
                    .iter()
                    .all(|&p| p < x.len() && !std::mem::replace(&mut seen[p], true));
            want(k, ok, || {
                format!("{perm:?} is not a permutation of {} axes", x.len())
            })?;
            Ok(perm.iter().map(|&p| x[p]).collect())
        }
        Op::Concat { axis } => {
            let first = ins[0];
            want(k, *axis < first.len(), || {
                format!("axis {axis} of {first:?}")
            })?;
            let mut o = first.to_vec();
            o[*axis] = 0;
            for s in ins {
                let same = s.len() == first.len()
                    && s.iter()
                        .zip(first)
                        .enumerate()
                        .all(|(i, (a, b))| i == *axis || a == b);
                want(k, same, || {
                    format!("{s:?} does not match {first:?} off axis {axis}")
                })?;
                o[*axis] += s[*axis];
            }
            Ok(o)
        }
        Op::Slice { axis, start, end } => {
            let x = ins[0];
            want(
                k,
                *axis < x.len() && start < end && *end <= x[*axis],
                || format!("{start}..{end} on axis {axis} of {x:?}"),
            )?;
            let mut o = x.to_vec();
            o[*axis] = end - start;
            Ok(o)
        }
        Op::Upsample2x => {
            let x = ins[0];
            want(k, x.len() >= 2, || format!("{x:?} needs two spatial axes"))?;
            let mut o = x.to_vec();
            let n = o.len();
            o[n - 1] *= 2;
            o[n - 2] *= 2;
            Ok(o)
        }
        Op::TimestepEmbedding { dim, .. } => {
            want(k, ins[0].len() == 1 && *dim >= 2 && dim % 2 == 0, || {
                format!("t must be [B] and dim even, got {:?} and {dim}", ins[0])
            })?;
            Ok(vec![ins[0][0], *dim])
        }
        Op::Embedding => {
            want(k, ins[0].len() == 2, || {
                format!("table {:?} must be [V, D]", ins[0])
            })?;
            let mut o = ins[1].to_vec();
            o.push(ins[0][1]);
            Ok(o)
        }
    }
}
