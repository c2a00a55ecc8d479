//! Activations: the ONNX op where there is one (Relu, LeakyRelu, Sigmoid, Tanh, HardSigmoid,
//! HardSwish from opset 14), `Clip` for ReLU6, `x * Sigmoid(x)` for SiLU and the exact GELU
//! `0.5 * x * (1 + Erf(x / sqrt(2)))`.

use super::Builder;
use crate::diag::Diagnostic;
use crate::export::node_error;
use crate::export::onnx::builder::attr_f;
use crate::ir::{Activation, Node};

/// Applies `a` to `x` (for an `Act` node or an activation fused into `node`).
pub fn activation(b: &mut Builder, node: &Node, a: Activation, x: &str) -> Result<String, Diagnostic> {
    Ok(match a {
        Activation::Relu => b.op("Relu", &[x], vec![]),
        Activation::Relu6 => {
            let (lo, hi) = (b.scalar_f32(0.0), b.scalar_f32(6.0));
            b.op("Clip", &[x, &lo, &hi], vec![])
        }
        Activation::LeakyRelu(s) => b.op("LeakyRelu", &[x], vec![attr_f("alpha", s as f32)]),
        // Mish `x * tanh(softplus(x))` (the `Mish` op needs opset 18).
        Activation::Mish => {
            let sp = b.op("Softplus", &[x], vec![]);
            let t = b.op("Tanh", &[&sp], vec![]);
            b.op("Mul", &[x, &t], vec![])
        }
        Activation::Silu => {
            let s = b.op("Sigmoid", &[x], vec![]);
            b.op("Mul", &[x, &s], vec![])
        }
        Activation::Gelu => {
            let r = b.scalar_f32(std::f32::consts::SQRT_2);
            let d = b.op("Div", &[x, &r], vec![]);
            let e = b.op("Erf", &[&d], vec![]);
            let one = b.scalar_f32(1.0);
            let p = b.op("Add", &[&e, &one], vec![]);
            let m = b.op("Mul", &[x, &p], vec![]);
            let half = b.scalar_f32(0.5);
            b.op("Mul", &[&m, &half], vec![])
        }
        Activation::HardSwish => {
            if b.opset < 14 {
                return Err(node_error("E0901", node, format!("has no ONNX form in opset {}: HardSwish arrived in opset 14", b.opset))
                    .hint("export with --opset 14 or later (the default is 17)"));
            }
            b.op("HardSwish", &[x], vec![])
        }
        Activation::HardSigmoid => b.op("HardSigmoid", &[x], vec![attr_f("alpha", 1.0 / 6.0), attr_f("beta", 0.5)]),
        Activation::Sigmoid => b.op("Sigmoid", &[x], vec![]),
        Activation::Tanh => b.op("Tanh", &[x], vec![]),
    })
}
