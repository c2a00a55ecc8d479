//! Tensor plumbing: reshapes (every per-sample shape is known, so `Reshape` to
//! `[-1, dims...]`), `Transpose`, `Gather` for select, n-ary add and mul, `Concat`, `Slice` for
//! chunk, nearest `Resize` for upsample, `Pad`, and the fixed channel affine map as constant
//! `Mul` and `Add`.

use super::{Builder, Ctx};
use crate::export::onnx::builder::{attr_i, attr_s, i64s};
use crate::ir::Op;

/// A tensor op node.
pub fn lower(b: &mut Builder, c: &Ctx) -> String {
    let x = c.ins[0].as_str();
    match &c.node.op {
        Op::Flatten { .. } | Op::Reshape { .. } => b.reshape(x, c.out_shape()),
        Op::Permute { perm } => b.transpose(x, &i64s(perm)),
        Op::Select { dim, index } => {
            let i = b.scalar_i64(*index as i64);
            b.op("Gather", &[x, &i], vec![attr_i("axis", *dim as i64)])
        }
        Op::Add => {
            let ins: Vec<&str> = c.ins.iter().map(String::as_str).collect();
            if ins.len() == 2 {
                b.op("Add", &ins, vec![])
            } else {
                b.op("Sum", &ins, vec![])
            }
        }
        Op::Mul => {
            let mut acc = x.to_string();
            for y in &c.ins[1..] {
                acc = b.op("Mul", &[&acc, y], vec![]);
            }
            acc
        }
        Op::Concat { dim } => {
            let ins: Vec<&str> = c.ins.iter().map(String::as_str).collect();
            b.op("Concat", &ins, vec![attr_i("axis", *dim as i64)])
        }
        Op::Chunk { chunks, index, dim } => {
            let size = (c.shapes[0][dim - 1] / chunks) as i64;
            b.slice(x, *dim as i64, *index as i64 * size, (*index as i64 + 1) * size, 1)
        }
        Op::Upsample { scale } => {
            let s = *scale as f32;
            let scales = b.floats(&[4], &[1.0, 1.0, s, s]);
            let attrs = vec![attr_s("mode", "nearest"), attr_s("coordinate_transformation_mode", "asymmetric"), attr_s("nearest_mode", "floor")];
            b.op("Resize", &[x, "", &scales], attrs)
        }
        Op::ZeroPad { pad } => b.pad(x, &i64s(&[0, 0, pad[0], pad[2], 0, 0, pad[1], pad[3]])),
        Op::ChannelAffine { scale, shift } => {
            let mut dims = vec![1; c.shapes[0].len()];
            dims[0] = scale.len();
            let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let (s, t) = (b.floats(&dims, &f32s(scale)), b.floats(&dims, &f32s(shift)));
            let y = b.op("Mul", &[x, &s], vec![]);
            b.op("Add", &[&y, &t], vec![])
        }
        _ => unreachable!("tensor ops only"),
    }
}

