//! Back ends over the IR that write the model for other systems: [`onnx`] (an ONNX model for
//! serving engines), [`pytorch`] (a standalone PyTorch source file for training) and
//! [`triton`] (a Triton Inference Server model repository around the ONNX file).
//!
//! Like the rest of the compiler they never touch files or candle: they take the graph and,
//! where tensors are needed, a [`Weights`] lookup returning plain `f32` data by `state_dict`
//! name (the runtime provides it, from loaded or folded tensors), and return bytes or text.

pub mod onnx;
pub mod pytorch;
pub mod triton;

use crate::diag::Diagnostic;
use crate::ir::{Graph, Node, Op};

/// Tensors by full `state_dict` name, row-major `f32` (the shapes are the graph's).
pub type Weights<'a> = &'a dyn Fn(&str) -> Option<Vec<f32>>;

/// An error about one node: the message names the node and its op, the label points at the
/// spec line it came from.
pub fn node_error(code: &'static str, node: &Node, message: impl Into<String>) -> Diagnostic {
    let op = crate::emit::op_label(&node.op);
    let mut d = Diagnostic::error(code, node.span, format!("`{}` ({op}): {}", node.name, message.into()));
    d.labels[0].message = format!("`{op}` comes from here");
    d.trace = node.trace.clone().into();
    d
}

/// The per-sample shapes of a node's inputs (every shape is known in a compiled graph).
pub fn input_shapes<'g>(g: &'g Graph, node: &Node) -> Vec<&'g [usize]> {
    node.inputs.iter().map(|&i| g.node(i).shape.as_deref().unwrap_or(&[])).collect()
}

/// The nodes whose values a model returns: every darknet YOLO head (raw, in graph order)
/// when there are any, else the graph output.
pub fn outputs(g: &Graph) -> Vec<crate::ir::NodeId> {
    let heads: Vec<_> = g.nodes().filter(|(_, n)| matches!(n.op, Op::YoloHead { .. })).map(|(i, _)| i).collect();
    if heads.is_empty() {
        vec![g.output]
    } else {
        heads
    }
}
