//! IR op to ONNX nodes: one small mapping per op family (mirroring `compiler/src/ops`), and
//! this dispatcher, the one place that lists them all.

mod act;
mod conv;
mod detect;
mod norm;
mod pool;
mod swin;
mod tensor;
mod transformer;

pub use act::activation;

use super::builder::Builder;
use crate::diag::Diagnostic;
use crate::ir::{Node, Op};

/// What a mapping sees of one IR node: the node, its ONNX input values and their per-sample
/// shapes.
pub struct Ctx<'n> {
    /// The IR node.
    pub node: &'n Node,
    /// ONNX value names of its inputs, in order.
    pub ins: Vec<String>,
    /// Per-sample shapes of its inputs.
    pub shapes: Vec<&'n [usize]>,
}

impl Ctx<'_> {
    /// The per-sample output shape.
    pub fn out_shape(&self) -> &[usize] {
        self.node.shape.as_deref().unwrap_or(&[])
    }
    /// Rank of the first input including the batch.
    pub fn rank(&self) -> usize {
        self.shapes[0].len() + 1
    }
}

/// Emits the nodes computing `c.node` and returns the value holding its result (an input's
/// value for ops that are identities at inference).
pub fn lower(b: &mut Builder, c: &Ctx) -> Result<String, Diagnostic> {
    let x = c.ins[0].clone();
    Ok(match &c.node.op {
        Op::Input => x,
        Op::Conv { .. } => conv::conv(b, c),
        Op::BatchNorm { .. } | Op::LayerNorm { .. } => norm::lower(b, c)?,
        Op::Act(a) => activation(b, c.node, *a, &x)?,
        Op::Softmax { axis } => b.op("Softmax", &[&x], vec![super::builder::attr_i("axis", *axis as i64)]),
        Op::Linear { bias, .. } => b.linear(c.node, &x, c.rank(), "weight", bias.then_some("bias")),
        Op::MaxPool { .. } | Op::AvgPool { .. } | Op::AdaptiveAvgPool { .. } | Op::GlobalPool { .. } => pool::lower(b, c),
        Op::Dropout { .. } | Op::Identity | Op::YoloHead { .. } => x,
        Op::Flatten { .. }
        | Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Select { .. }
        | Op::Add
        | Op::Mul
        | Op::Concat { .. }
        | Op::Chunk { .. }
        | Op::Upsample { .. }
        | Op::ZeroPad { .. }
        | Op::ChannelAffine { .. } => tensor::lower(b, c),
        Op::Scale { .. } | Op::ClassToken | Op::PosEmbed | Op::SelfAttention { .. } => transformer::lower(b, c),
        Op::WindowAttention { heads, window, shift } => swin::window_attention(b, c, *heads, *window, *shift),
        Op::PatchMerge => swin::patch_merge(b, c),
        Op::DetectV8 { classes, reg_max, strides } => detect::detect_v8(b, c, *classes, *reg_max, strides),
    })
}
