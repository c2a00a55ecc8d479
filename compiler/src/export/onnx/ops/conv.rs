//! Convolution: `Conv` with explicit `[top, left, bottom, right]` pads (TensorFlow SAME is
//! resolved from the known input size, so it needs no `auto_pad`).

use super::{Builder, Ctx};
use crate::export::onnx::builder::{attr_i, attr_ints, i64s};
use crate::ir::Op;
use crate::ops::conv::resolve_padding;

/// `Conv(x, weight[, bias])`.
pub fn conv(b: &mut Builder, c: &Ctx) -> String {
    let Op::Conv { kernel, stride, padding, dilation, groups, bias, .. } = c.node.op else { unreachable!("conv only") };
    let s = c.shapes[0];
    let p = resolve_padding(padding, [s[1], s[2]], kernel, stride, dilation);
    let w = b.param(c.node, "weight");
    let mut ins = vec![c.ins[0].clone(), w];
    if bias {
        ins.push(b.param(c.node, "bias"));
    }
    let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
    let attrs = vec![
        attr_ints("kernel_shape", &i64s(&kernel)),
        attr_ints("strides", &i64s(&stride)),
        attr_ints("pads", &i64s(&[p[0], p[2], p[1], p[3]])),
        attr_ints("dilations", &i64s(&dilation)),
        attr_i("group", groups as i64),
    ];
    b.op("Conv", &ins, attrs)
}
