//! Primitive ops: one small file per family, each owning its call syntax, shape inference,
//! parameters and MAC count. The dispatch tables here are the only place listing them all.

mod act;
mod affine;
mod args;
pub mod conv;
mod detect;
mod linear;
mod norm;
mod pool;
mod tensor;
mod transformer;

pub use args::Args;
pub use tensor::reshape_dims;
pub use transformer::{relative_position_index, shift_mask, window_shifts};

use crate::diag::Diagnostic;
use crate::ir::{Op, ParamKind};

/// Every op name accepted in a spec, with a one-line description (for `did you mean` and docs).
pub const OPS: &[(&str, &str)] = &[
    ("conv", "conv(out, k=1, s=1, p=0|\"same\"|[h,w]|[t,b,l,r], d=1, groups=1, bias=true)"),
    ("dwconv", "depthwise conv: dwconv(k=3, s=1, p=0, bias=true), out = groups = in channels"),
    ("bn", "batch norm: bn(eps=1e-5)"),
    ("layernorm", "layer norm over the last dim: layernorm(eps=1e-5)"),
    ("layernorm2d", "layer norm over the channels of a [C,H,W] map: layernorm2d(eps=1e-6)"),
    ("relu", "ReLU"),
    ("relu6", "ReLU6"),
    ("leaky_relu", "leaky_relu(slope=0.01)"),
    ("silu", "SiLU / swish"),
    ("gelu", "GELU (exact, erf)"),
    ("hardswish", "hard swish"),
    ("hardsigmoid", "hard sigmoid"),
    ("sigmoid", "sigmoid"),
    ("tanh", "tanh"),
    ("mish", "mish: x * tanh(softplus(x))"),
    ("softmax", "softmax(dim=-1)"),
    ("linear", "linear(out, bias=true) on the last dim"),
    ("maxpool", "maxpool(k, s=k, p=0|\"same\", d=1, ceil=false)"),
    ("avgpool", "avgpool(k, s=k, p=0|\"same\", ceil=false, count_include_pad=true)"),
    ("adaptive_avgpool", "adaptive_avgpool(size) to size x size (or [h, w])"),
    ("global_avgpool", "global average pool to [C,1,1]"),
    ("global_maxpool", "global max pool to [C,1,1]"),
    ("flatten", "flatten(start=1)"),
    ("reshape", "reshape(d0, d1, ...) per sample (batch kept): one dim may be -1, 0 keeps the input's dim there"),
    ("permute", "permute(0, ...) with PyTorch dims, batch first"),
    ("select", "select(dim, index): take one index and drop the dim"),
    ("dropout", "dropout(p=0.5): identity at inference"),
    ("stochastic_depth", "stochastic_depth(p): identity at inference"),
    ("identity", "no-op"),
    ("add", "sum of the inputs"),
    ("mul", "product of the inputs (size-1 dims broadcast)"),
    ("concat", "concat(dim=1) of the inputs"),
    ("chunk", "chunk(n, index, dim=1): part `index` of n equal parts"),
    ("upsample", "upsample(scale=2), nearest"),
    ("zeropad", "zeropad(p) or zeropad([t,b,l,r])"),
    ("channel_affine", "channel_affine(scale=[...], shift=[...]): x * scale[c] + shift[c] per channel, no parameters"),
    ("scale", "multiply by a learnable tensor named after the node: scale([C,1,1])"),
    ("class_token", "prepend a learnable class token named after the node"),
    ("pos_embed", "add a learnable position embedding named after the node"),
    ("self_attention", "self_attention(heads): nn.MultiheadAttention on [L, D]"),
    ("window_attention", "window_attention(heads, window=7, shift=0): Swin attention on [H, W, C]"),
    ("patch_merge", "Swin patch merging [H,W,C] -> [H/2,W/2,4C]"),
    ("detect_v8", "detect_v8(classes, reg_max=16, strides=[8,16,32]): YOLOv8 decode"),
    ("yolo_head", "yolo_head(classes, anchors, mask, scale_xy=1): darknet YOLO output layer"),
];

/// True if `name` is a primitive op.
pub fn is_op(name: &str) -> bool {
    OPS.iter().any(|(n, _)| *n == name)
}

/// Builds an op from a call's evaluated arguments.
pub fn build(name: &str, args: &mut Args) -> Result<Op, Diagnostic> {
    let op = match name {
        "conv" | "dwconv" => conv::build(name, args)?,
        "bn" | "layernorm" | "layernorm2d" => norm::build(name, args)?,
        "linear" => linear::build(args)?,
        "maxpool" | "avgpool" | "adaptive_avgpool" | "global_avgpool" | "global_maxpool" => pool::build(name, args)?,
        "self_attention" | "window_attention" | "patch_merge" | "scale" | "class_token" | "pos_embed" => {
            transformer::build(name, args)?
        }
        "detect_v8" | "yolo_head" => detect::build(name, args)?,
        "channel_affine" => affine::build(args)?,
        n if act::NAMES.contains(&n) => act::build(n, args)?,
        _ => tensor::build(name, args)?,
    };
    args.finish(name)?;
    Ok(op)
}

/// A shape error: what is wrong, which input is at fault and how to fix it.
#[derive(Debug)]
pub struct ShapeError {
    /// What was expected and what was found.
    pub message: String,
    /// Fix suggestion.
    pub hint: Option<String>,
}

impl ShapeError {
    /// An error without a hint.
    pub fn new(message: impl Into<String>) -> ShapeError {
        ShapeError { message: message.into(), hint: None }
    }
    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> ShapeError {
        self.hint = Some(hint.into());
        self
    }
}

/// Shape of a list of dims for messages: `[64, 56, 56]`.
pub fn fmt_shape(s: &[usize]) -> String {
    format!("{s:?}")
}

/// Infers the output shape per sample from the input shapes.
pub fn infer(op: &Op, ins: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
    let want = match op {
        Op::Input => 0,
        Op::Add | Op::Mul | Op::Concat { .. } | Op::DetectV8 { .. } => usize::MAX,
        _ => 1,
    };
    if want == 1 && ins.len() != 1 {
        return Err(ShapeError::new(format!("this op takes one input, found {}", ins.len())));
    }
    if want == usize::MAX && ins.is_empty() {
        return Err(ShapeError::new("this op needs at least one input"));
    }
    let out = match op {
        Op::Input => return Err(ShapeError::new("the input node has no inputs")),
        Op::Conv { .. } => conv::infer(op, ins[0])?,
        Op::BatchNorm { .. } | Op::LayerNorm { .. } => norm::infer(op, ins[0])?,
        Op::Linear { .. } => linear::infer(op, ins[0])?,
        Op::MaxPool { .. } | Op::AvgPool { .. } | Op::AdaptiveAvgPool { .. } | Op::GlobalPool { .. } => pool::infer(op, ins[0])?,
        Op::Act(_) | Op::Softmax { .. } => act::infer(op, ins[0])?,
        Op::SelfAttention { .. } | Op::WindowAttention { .. } | Op::PatchMerge | Op::Scale { .. } | Op::ClassToken | Op::PosEmbed => {
            transformer::infer(op, ins[0])?
        }
        Op::DetectV8 { .. } | Op::YoloHead { .. } => detect::infer(op, ins)?,
        Op::ChannelAffine { .. } => affine::infer(op, ins[0])?,
        _ => tensor::infer(op, ins)?,
    };
    if out.contains(&0) {
        return Err(ShapeError::new(format!("the output would be empty: {}", fmt_shape(&out)))
            .hint("the input is too small for this op; check kernel sizes, strides and the input size"));
    }
    let numel = out.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if numel.is_none_or(|n| n > MAX_NUMEL) {
        return Err(ShapeError::new(format!("the output {} is absurdly large", fmt_shape(&out))));
    }
    Ok(out)
}

/// Largest tensor (elements per sample) the checker accepts.
pub const MAX_NUMEL: usize = 1 << 34;

/// Parameters of an op: `(suffix, shape, kind)`; an empty suffix names the parameter after
/// the node itself.
pub fn params(op: &Op, ins: &[&[usize]]) -> Vec<(String, Vec<usize>, ParamKind)> {
    let first = ins.first().copied().unwrap_or(&[]);
    match op {
        Op::Conv { .. } => conv::params(op, first),
        Op::BatchNorm { .. } | Op::LayerNorm { .. } => norm::params(op, first),
        Op::Linear { .. } => linear::params(op, first),
        Op::SelfAttention { .. } | Op::WindowAttention { .. } | Op::Scale { .. } | Op::ClassToken | Op::PosEmbed => {
            transformer::params(op, first)
        }
        Op::DetectV8 { .. } => detect::params(op),
        _ => Vec::new(),
    }
}

/// Multiply-accumulates per sample (torchvision convention: convolutions, linear layers and
/// attention matmuls).
pub fn macs(op: &Op, ins: &[&[usize]], out: &[usize]) -> u64 {
    let first = ins.first().copied().unwrap_or(&[]);
    let numel = |s: &[usize]| s.iter().map(|&d| d as u64).product::<u64>();
    match *op {
        Op::Conv { kernel, groups, .. } => {
            let cin = first.first().copied().unwrap_or(0) as u64;
            numel(out) * (cin / groups.max(1) as u64) * (kernel[0] * kernel[1]) as u64
        }
        Op::Linear { .. } => numel(out) * first.last().copied().unwrap_or(0) as u64,
        Op::SelfAttention { .. } => {
            let (l, d) = (first[0] as u64, first[1] as u64);
            4 * l * d * d + 2 * l * l * d
        }
        Op::WindowAttention { window, .. } => {
            let (h, w, c) = (first[0] as u64, first[1] as u64, first[2] as u64);
            let ws = window as u64;
            let hp = h.div_ceil(ws) * ws;
            let wp = w.div_ceil(ws) * ws;
            let tokens = hp * wp;
            4 * tokens * c * c + 2 * tokens * (ws * ws).min(hp * wp) * c
        }
        _ => 0,
    }
}
