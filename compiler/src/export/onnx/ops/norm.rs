//! Normalisation: `BatchNormalization` with the running statistics, `LayerNormalization`
//! (opset 17) over the last dim, and ConvNeXt's channel LayerNorm as transpose, LayerNorm,
//! transpose back.

use super::{Builder, Ctx};
use crate::diag::Diagnostic;
use crate::export::node_error;
use crate::export::onnx::builder::{attr_f, attr_i};
use crate::ir::{NormAxis, Op};

/// A `BatchNorm` or `LayerNorm` node.
pub fn lower(b: &mut Builder, c: &Ctx) -> Result<String, Diagnostic> {
    let x = c.ins[0].as_str();
    match c.node.op {
        Op::BatchNorm { eps } => {
            let ins: Vec<String> = ["weight", "bias", "running_mean", "running_var"].iter().map(|s| b.param(c.node, s)).collect();
            Ok(b.op("BatchNormalization", &[x, &ins[0], &ins[1], &ins[2], &ins[3]], vec![attr_f("epsilon", eps as f32)]))
        }
        Op::LayerNorm { eps, axis } => {
            if b.opset < 17 {
                return Err(node_error("E0901", c.node, format!("has no ONNX form in opset {}: LayerNormalization arrived in opset 17", b.opset))
                    .hint("export with --opset 17 or later (the default)"));
            }
            let (w, bias) = (b.param(c.node, "weight"), b.param(c.node, "bias"));
            let attrs = vec![attr_i("axis", -1), attr_f("epsilon", eps as f32)];
            Ok(match axis {
                NormAxis::Last => b.op("LayerNormalization", &[x, &w, &bias], attrs),
                NormAxis::Channels => {
                    let t = b.transpose(x, &[0, 2, 3, 1]);
                    let y = b.op("LayerNormalization", &[&t, &w, &bias], attrs);
                    b.transpose(&y, &[0, 3, 1, 2])
                }
            })
        }
        _ => unreachable!("norms only"),
    }
}
