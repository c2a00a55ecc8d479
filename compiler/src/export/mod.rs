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

/// The op name a spec writes for `op` (for messages).
pub fn op_name(op: &Op) -> &'static str {
    use crate::ir::{Activation as A, NormAxis};
    match op {
        Op::Input => "input",
        Op::Conv { .. } => "conv",
        Op::BatchNorm { .. } => "bn",
        Op::LayerNorm { axis: NormAxis::Last, .. } => "layernorm",
        Op::LayerNorm { axis: NormAxis::Channels, .. } => "layernorm2d",
        Op::Act(a) => match a {
            A::Relu => "relu",
            A::Relu6 => "relu6",
            A::LeakyRelu(_) => "leaky_relu",
            A::Silu => "silu",
            A::Gelu => "gelu",
            A::HardSwish => "hardswish",
            A::HardSigmoid => "hardsigmoid",
            A::Sigmoid => "sigmoid",
            A::Tanh => "tanh",
        },
        Op::Softmax { .. } => "softmax",
        Op::Linear { .. } => "linear",
        Op::MaxPool { .. } => "maxpool",
        Op::AvgPool { .. } => "avgpool",
        Op::AdaptiveAvgPool { .. } => "adaptive_avgpool",
        Op::GlobalPool { max: false } => "global_avgpool",
        Op::GlobalPool { max: true } => "global_maxpool",
        Op::Flatten { .. } => "flatten",
        Op::Reshape { .. } => "reshape",
        Op::Permute { .. } => "permute",
        Op::Select { .. } => "select",
        Op::Dropout { stochastic_depth: false, .. } => "dropout",
        Op::Dropout { stochastic_depth: true, .. } => "stochastic_depth",
        Op::Identity => "identity",
        Op::Add => "add",
        Op::Mul => "mul",
        Op::Concat { .. } => "concat",
        Op::Chunk { .. } => "chunk",
        Op::Upsample { .. } => "upsample",
        Op::ZeroPad { .. } => "zeropad",
        Op::ChannelAffine { .. } => "channel_affine",
        Op::Scale { .. } => "scale",
        Op::ClassToken => "class_token",
        Op::PosEmbed => "pos_embed",
        Op::SelfAttention { .. } => "self_attention",
        Op::WindowAttention { .. } => "window_attention",
        Op::PatchMerge => "patch_merge",
        Op::DetectV8 { .. } => "detect_v8",
        Op::YoloHead { .. } => "yolo_head",
    }
}

/// An error about one node: the message names the node and its op, the label points at the
/// spec line it came from.
pub fn node_error(code: &'static str, node: &Node, message: impl Into<String>) -> Diagnostic {
    let mut d = Diagnostic::error(code, node.span, format!("`{}` ({}): {}", node.name, op_name(&node.op), message.into()));
    d.labels[0].message = format!("`{}` comes from here", op_name(&node.op));
    d.trace = node.trace.clone();
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
