//! Shape plumbing and element-wise combinations: flatten, reshape, permute, select, dropout,
//! identity, add, mul, concat, chunk, upsample, zero padding. Dims use PyTorch numbering with
//! the batch as dim 0.

use super::{fmt_shape, Args, ShapeError};
use crate::diag::Diagnostic;
use crate::expr::Value;
use crate::ir::Op;

pub(super) fn build(name: &str, a: &mut Args) -> Result<Op, Diagnostic> {
    Ok(match name {
        "flatten" => Op::Flatten { start: a.size(&["start", "start_dim"], Some(1))? },
        "reshape" => Op::Reshape { dims: a.ints(&["shape"], true)?.into_iter().map(|d| d as isize).collect() },
        "permute" => {
            let perm = a.ints(&["dims"], true)?;
            Op::Permute { perm: perm.into_iter().map(|d| d.max(0) as usize).collect() }
        }
        "select" => Op::Select { dim: a.size(&["dim"], None)?, index: a.count(&["index"], None)? },
        "dropout" => Op::Dropout { p: a.float(&["p"], 0.5)?, stochastic_depth: false },
        "stochastic_depth" => Op::Dropout { p: a.float(&["p"], 0.0)?, stochastic_depth: true },
        "identity" => Op::Identity,
        "add" => Op::Add,
        "mul" => Op::Mul,
        "concat" => Op::Concat { dim: a.size(&["dim"], Some(1))? },
        "chunk" => Op::Chunk { chunks: a.size(&["chunks", "n"], None)?, index: a.count(&["index"], None)?, dim: a.size(&["dim"], Some(1))? },
        "upsample" => Op::Upsample { scale: a.size(&["scale", "scale_factor"], Some(2))? },
        "zeropad" => {
            let p = match a.take(&["p", "padding"]) {
                Some((Value::Int(p), _)) if p >= 0 => [p as usize; 4],
                Some((Value::List(l), s)) if l.len() == 4 => {
                    let mut v = [0; 4];
                    for (i, x) in l.iter().enumerate() {
                        match x {
                            Value::Int(n) if *n >= 0 => v[i] = *n as usize,
                            _ => return Err(Diagnostic::error("E0202", s, "zeropad takes non-negative integers [top, bottom, left, right]")),
                        }
                    }
                    v
                }
                Some((v, s)) => return Err(Diagnostic::error("E0202", s, format!("expected an integer or [top, bottom, left, right], found `{v}`"))),
                None => return Err(Diagnostic::error("E0201", a.span, "missing argument `p` of `zeropad`")),
            };
            Op::ZeroPad { pad: p }
        }
        other => {
            return Err(Diagnostic::error("E0301", a.span, format!("unknown op `{other}`")));
        }
    })
}

/// Converts a PyTorch dim (batch = 0) to a sample dim.
fn sample_dim(dim: usize, rank: usize, what: &str) -> Result<usize, ShapeError> {
    if dim == 0 || dim > rank {
        return Err(ShapeError::new(format!("{what} dim {dim} is out of range for a tensor of rank {} (batch is dim 0)", rank + 1))
            .hint("dims count the batch as 0; the first channel/token dim is 1"));
    }
    Ok(dim - 1)
}

pub(super) fn infer(op: &Op, ins: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
    let x = ins[0];
    match op {
        Op::Flatten { start } => {
            let s = sample_dim(*start, x.len(), "flatten")?;
            let mut out = x[..s].to_vec();
            out.push(x[s..].iter().product());
            Ok(out)
        }
        Op::Reshape { dims } => {
            let total: usize = x.iter().product();
            let known: usize = dims.iter().filter(|&&d| d > 0).map(|&d| d as usize).product();
            let wild = dims.iter().filter(|&&d| d == -1).count();
            if dims.iter().any(|&d| d == 0 || d < -1) || wild > 1 {
                return Err(ShapeError::new(format!("invalid reshape dims {dims:?}: use positive sizes and at most one -1")));
            }
            let out: Vec<usize> = dims.iter().map(|&d| if d == -1 { if known == 0 { 0 } else { total / known } } else { d as usize }).collect();
            if out.iter().product::<usize>() != total {
                return Err(ShapeError::new(format!("cannot reshape {} ({} elements) to {dims:?}", fmt_shape(x), total)));
            }
            Ok(out)
        }
        Op::Permute { perm } => {
            let mut sorted = perm.clone();
            sorted.sort();
            if perm.first() != Some(&0) || sorted != (0..=x.len()).collect::<Vec<_>>() {
                return Err(ShapeError::new(format!("permute {perm:?} is not a permutation of 0..{} keeping the batch dim 0 first", x.len()))
                    .hint(format!("the input {} has {} dims with the batch", fmt_shape(x), x.len() + 1)));
            }
            Ok(perm[1..].iter().map(|&d| x[d - 1]).collect())
        }
        Op::Select { dim, index } => {
            let d = sample_dim(*dim, x.len(), "select")?;
            if *index >= x[d] {
                return Err(ShapeError::new(format!("select index {index} is out of range for dim {dim} of size {}", x[d])));
            }
            let mut out = x.to_vec();
            out.remove(d);
            Ok(out)
        }
        Op::Dropout { .. } | Op::Identity => Ok(x.to_vec()),
        Op::Add => {
            for (i, y) in ins.iter().enumerate().skip(1) {
                if *y != x {
                    return Err(ShapeError::new(format!("`add` needs equal shapes: input 1 is {}, input {} is {}", fmt_shape(x), i + 1, fmt_shape(y)))
                        .hint(if x.first() != y.first() {
                            "the channel counts differ: add a 1x1 projection conv on the skip path"
                        } else {
                            "the spatial sizes differ: give the skip path the same stride"
                        }));
                }
            }
            Ok(x.to_vec())
        }
        Op::Mul => {
            let mut out = x.to_vec();
            for (i, y) in ins.iter().enumerate().skip(1) {
                if y.len() != out.len() || y.iter().zip(&out).any(|(&a, &b)| a != b && a != 1 && b != 1) {
                    return Err(ShapeError::new(format!("`mul` cannot broadcast {} with input {} of {}", fmt_shape(&out), i + 1, fmt_shape(y))));
                }
                out = out.iter().zip(y.iter()).map(|(&a, &b)| a.max(b)).collect();
            }
            Ok(out)
        }
        Op::Concat { dim } => {
            let d = sample_dim(*dim, x.len(), "concat")?;
            let mut out = x.to_vec();
            for (i, y) in ins.iter().enumerate().skip(1) {
                let same_rank = y.len() == x.len();
                if !same_rank || y.iter().enumerate().any(|(k, &v)| k != d && v != x[k]) {
                    return Err(ShapeError::new(format!(
                        "`concat` along dim {dim} needs the other dims equal: input 1 is {}, input {} is {}",
                        fmt_shape(x), i + 1, fmt_shape(y)
                    ))
                    .hint("make the spatial sizes match (same strides / pooling on every branch)"));
                }
                out[d] += y[d];
            }
            Ok(out)
        }
        Op::Chunk { chunks, index, dim } => {
            let d = sample_dim(*dim, x.len(), "chunk")?;
            if !x[d].is_multiple_of(*chunks) || index >= chunks {
                return Err(ShapeError::new(format!("cannot take chunk {index} of {chunks} equal parts of dim {dim} (size {})", x[d])));
            }
            let mut out = x.to_vec();
            out[d] /= chunks;
            Ok(out)
        }
        Op::Upsample { scale } => {
            if x.len() != 3 {
                return Err(ShapeError::new(format!("`upsample` expects [C, H, W], found {}", fmt_shape(x))));
            }
            Ok(vec![x[0], x[1] * scale, x[2] * scale])
        }
        Op::ZeroPad { pad } => {
            if x.len() != 3 {
                return Err(ShapeError::new(format!("`zeropad` expects [C, H, W], found {}", fmt_shape(x))));
            }
            Ok(vec![x[0], x[1] + pad[0] + pad[1], x[2] + pad[2] + pad[3]])
        }
        _ => unreachable!("not a tensor op"),
    }
}
