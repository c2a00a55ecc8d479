//! Element-wise activations and softmax.

use super::{Args, ShapeError};
use crate::diag::Diagnostic;
use crate::ir::{Activation, Op};

/// Names of the activation ops.
pub const NAMES: &[&str] = &["relu", "relu6", "leaky_relu", "silu", "gelu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "mish", "softmax"];

pub(super) fn build(name: &str, a: &mut Args) -> Result<Op, Diagnostic> {
    Ok(Op::Act(match name {
        "relu" => Activation::Relu,
        "relu6" => Activation::Relu6,
        "leaky_relu" => Activation::LeakyRelu(a.float(&["slope", "negative_slope"], 0.01)?),
        "silu" => Activation::Silu,
        "gelu" => Activation::Gelu,
        "hardswish" => Activation::HardSwish,
        "hardsigmoid" => Activation::HardSigmoid,
        "sigmoid" => Activation::Sigmoid,
        "tanh" => Activation::Tanh,
        "mish" => Activation::Mish,
        _ => {
            let (v, s) = a.take(&["dim", "axis"]).unwrap_or((crate::expr::Value::Int(-1), a.span));
            let crate::expr::Value::Int(axis) = v else {
                return Err(Diagnostic::error("E0202", s, format!("expected an integer dim, found `{v}`")));
            };
            return Ok(Op::Softmax { axis: axis as isize });
        }
    }))
}

pub(super) fn infer(op: &Op, x: &[usize]) -> Result<Vec<usize>, ShapeError> {
    if let Op::Softmax { axis } = *op {
        let rank = x.len() as isize + 1;
        if axis == 0 || axis >= rank || axis < -(rank - 1) {
            return Err(ShapeError::new(format!("softmax dim {axis} is out of range for a tensor of rank {rank} (batch included)")));
        }
    }
    Ok(x.to_vec())
}
