//! Fully connected layer on the last dimension.

use super::{Args, ShapeError};
use crate::diag::Diagnostic;
use crate::ir::{Op, ParamKind};

pub(super) fn build(a: &mut Args) -> Result<Op, Diagnostic> {
    let out = a.size(&["out", "out_features"], None)?;
    let bias = a.flag(&["bias"], true)?;
    Ok(Op::Linear { out, bias })
}

pub(super) fn infer(op: &Op, x: &[usize]) -> Result<Vec<usize>, ShapeError> {
    let Op::Linear { out, .. } = *op else { unreachable!() };
    if x.is_empty() {
        return Err(ShapeError::new("`linear` needs an input with at least one dimension"));
    }
    let mut s = x.to_vec();
    *s.last_mut().unwrap() = out;
    Ok(s)
}

pub(super) fn params(op: &Op, x: &[usize]) -> Vec<(String, Vec<usize>, ParamKind)> {
    let Op::Linear { out, bias } = *op else { unreachable!() };
    let cin = x.last().copied().unwrap_or(0);
    let mut p = vec![("weight".into(), vec![out, cin], ParamKind::Weight)];
    if bias {
        p.push(("bias".into(), vec![out], ParamKind::Bias));
    }
    p
}
