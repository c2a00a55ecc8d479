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

/// The per-sample shape `reshape(dims)` gives an input of per-sample shape `x`, with ONNX
/// semantics: a 0 keeps the input's dim at the same position, one -1 takes what is left.
/// Shared by the shape checker and the runtime.
pub fn reshape_dims(dims: &[isize], x: &[usize]) -> Result<Vec<usize>, ShapeError> {
    let total: usize = x.iter().product();
    if dims.iter().filter(|&&d| d == -1).count() > 1 || dims.iter().any(|&d| d < -1) {
        return Err(ShapeError::new(format!("invalid reshape dims {dims:?}: use sizes, 0 (keep) and at most one -1"))
            .hint("-1 takes the size that is left; 0 keeps the input's dim at that position"));
    }
    let mut out = Vec::with_capacity(dims.len());
    for (i, &d) in dims.iter().enumerate() {
        out.push(match d {
            0 => *x.get(i).ok_or_else(|| {
                ShapeError::new(format!("reshape dim {i} is 0 (keep the input's dim {i}), but the input {} has only {} dims", fmt_shape(x), x.len()))
                    .hint("0 copies the input's dim at the same position; write the size here (`in_shape[k]` inside a block)")
            })?,
            -1 => 0,
            d => d as usize,
        });
    }
    if let Some(wild) = dims.iter().position(|&d| d == -1) {
        let known: usize = out.iter().filter(|&&d| d > 0).product();
        if known == 0 || !total.is_multiple_of(known) {
            return Err(ShapeError::new(format!("cannot reshape {} ({total} elements) to {dims:?}: {total} is not a multiple of {known}", fmt_shape(x))));
        }
        out[wild] = total / known;
    }
    if out.iter().product::<usize>() != total {
        return Err(ShapeError::new(format!("cannot reshape {} ({total} elements) to {dims:?} ({} elements)", fmt_shape(x), out.iter().product::<usize>())));
    }
    Ok(out)
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
        Op::Reshape { dims } => reshape_dims(dims, x),
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

#[cfg(test)]
mod tests {
    use super::reshape_dims;
    use crate::span::MemoryLoader;
    use crate::{compile, Options};

    fn compile_spec(body: &str) -> crate::Compiled {
        let text = format!("name: t\ninput: [8, 4, 6]\n{body}");
        let loader = MemoryLoader([("t.yaml".to_string(), text)].into_iter().collect());
        compile("t.yaml", &loader, &Options::default())
    }

    fn output_shape(body: &str) -> Vec<usize> {
        let c = compile_spec(body);
        let g = c.graph.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
        g.node(g.output).shape.clone().unwrap()
    }

    #[test]
    fn reshape_zero_keeps_the_input_dim_at_its_position() {
        assert_eq!(reshape_dims(&[0, -1], &[8, 4, 6]).unwrap(), [8, 24]);
        assert_eq!(reshape_dims(&[2, -1, 0], &[8, 4, 6]).unwrap(), [2, 16, 6]);
        assert_eq!(reshape_dims(&[0, 0, 0], &[8, 4, 6]).unwrap(), [8, 4, 6]);
        assert_eq!(reshape_dims(&[-1], &[8, 4, 6]).unwrap(), [192]);
        assert_eq!(output_shape("graph:\n  - reshape(0, -1)\n"), [8, 24]);
    }

    #[test]
    fn reshape_misuse_is_explained() {
        let e = reshape_dims(&[0, 0, 0, 0], &[8, 4, 6]).unwrap_err();
        assert!(e.message.contains("reshape dim 3 is 0") && e.message.contains("only 3 dims"), "{}", e.message);
        assert!(reshape_dims(&[-1, -1], &[8, 4, 6]).unwrap_err().message.contains("at most one -1"));
        assert!(reshape_dims(&[5, -1], &[8, 4, 6]).unwrap_err().message.contains("not a multiple of 5"));
        assert!(reshape_dims(&[0, 5], &[8, 4, 6]).unwrap_err().message.contains("(40 elements)"));
        let c = compile_spec("graph:\n  - reshape(0, 0, 0, 0)\n");
        assert_eq!(c.diagnostics[0].code, "E0310", "{:?}", c.diagnostics);
    }

    #[test]
    fn in_shape_is_the_block_input_shape() {
        let shuffle = "blocks:\n  shuffle(g=2): reshape(g, in_channels // g, in_shape[1], in_shape[2]) -> permute(0, 2, 1, 3, 4) -> reshape(in_shape)\n";
        assert_eq!(output_shape(&format!("{shuffle}graph:\n  - shuffle(2)\n")), [8, 4, 6]);
        let probe = "blocks:\n  probe(): conv(in_shape[0] + in_shape[1] + in_shape[2] + len(in_shape), k=1)\n";
        assert_eq!(output_shape(&format!("{probe}graph:\n  - maxpool(2)\n  - probe()\n")), [8 + 2 + 3 + 3, 2, 3]);
    }

    #[test]
    fn in_shape_misuse_is_explained() {
        let c = compile_spec("graph:\n  - conv(in_shape[0], k=1)\n");
        let d = &c.diagnostics[0];
        assert!(d.message.contains("unknown variable `in_shape`") && d.hints[0].contains("only inside a block"), "{d:?}");
        let c = compile_spec("blocks:\n  b(): conv(in_shape[3], k=1)\ngraph:\n  - b()\n");
        let d = &c.diagnostics[0];
        assert!(d.message.contains("index 3 is out of range for a list of 3") && d.hints[0].contains("[8, 4, 6]"), "{d:?}");
    }
}
