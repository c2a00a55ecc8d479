//! Normalisation: batch norm (eval mode: running statistics) and layer norm.

use super::{fmt_shape, Args, ShapeError};
use crate::diag::Diagnostic;
use crate::ir::{NormAxis, Op, ParamKind};

pub(super) fn build(name: &str, a: &mut Args) -> Result<Op, Diagnostic> {
    Ok(match name {
        "bn" => Op::BatchNorm { eps: a.float(&["eps"], 1e-5)? },
        "layernorm" => Op::LayerNorm { eps: a.float(&["eps"], 1e-5)?, axis: NormAxis::Last },
        _ => Op::LayerNorm { eps: a.float(&["eps"], 1e-6)?, axis: NormAxis::Channels },
    })
}

/// Number of normalised features.
pub fn features(op: &Op, x: &[usize]) -> usize {
    match op {
        Op::LayerNorm { axis: NormAxis::Last, .. } => x.last().copied().unwrap_or(0),
        _ => x.first().copied().unwrap_or(0),
    }
}

pub(super) fn infer(op: &Op, x: &[usize]) -> Result<Vec<usize>, ShapeError> {
    if x.is_empty() {
        return Err(ShapeError::new("normalisation needs at least one dimension"));
    }
    if matches!(op, Op::LayerNorm { axis: NormAxis::Channels, .. }) && x.len() != 3 {
        return Err(ShapeError::new(format!("`layernorm2d` expects a [C, H, W] input, found {}", fmt_shape(x)))
            .hint("use `layernorm` for [L, D] tokens or channels-last maps"));
    }
    Ok(x.to_vec())
}

pub(super) fn params(op: &Op, x: &[usize]) -> Vec<(String, Vec<usize>, ParamKind)> {
    let c = features(op, x);
    let mut p = vec![("weight".into(), vec![c], ParamKind::Weight), ("bias".into(), vec![c], ParamKind::Bias)];
    if matches!(op, Op::BatchNorm { .. }) {
        p.push(("running_mean".into(), vec![c], ParamKind::RunningMean));
        p.push(("running_var".into(), vec![c], ParamKind::RunningVar));
    }
    p
}
