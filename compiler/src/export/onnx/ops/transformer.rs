//! Transformer pieces: layer scale (`Mul` by its parameter), class token (`Expand` to the
//! batch, `Concat`), position embedding (`Add`), and `nn.MultiheadAttention` self-attention as
//! plain `MatMul`/`Softmax` (PyTorch's packed `in_proj_weight` split by a reshape).

use super::{Builder, Ctx};
use crate::export::onnx::builder::attr_i;
use crate::ir::Op;

/// A transformer node (not Swin's; see `swin.rs`).
pub fn lower(b: &mut Builder, c: &Ctx) -> String {
    let x = c.ins[0].as_str();
    match c.node.op {
        Op::Scale { .. } => {
            let s = b.param(c.node, "");
            b.op("Mul", &[x, &s], vec![])
        }
        Op::PosEmbed => {
            let p = b.param(c.node, "");
            b.op("Add", &[x, &p], vec![])
        }
        Op::ClassToken => {
            let t = b.param(c.node, "");
            let n = b.batch_dim(x);
            let rest = b.ints(&[1, c.shapes[0][1] as i64]);
            let shape = b.op("Concat", &[&n, &rest], vec![attr_i("axis", 0)]);
            let tokens = b.op("Expand", &[&t, &shape], vec![]);
            b.op("Concat", &[&tokens, x], vec![attr_i("axis", 1)])
        }
        Op::SelfAttention { heads } => self_attention(b, c, heads),
        _ => unreachable!("transformer ops only"),
    }
}

fn self_attention(b: &mut Builder, c: &Ctx, heads: usize) -> String {
    let (l, d) = (c.shapes[0][0], c.shapes[0][1]);
    let qkv = b.linear(c.node, &c.ins[0], 3, "in_proj_weight", Some("in_proj_bias"));
    let qkv = b.reshape(&qkv, &[l, 3, heads, d / heads]);
    let qkv = b.transpose(&qkv, &[2, 0, 3, 1, 4]);
    let o = attention(b, &qkv, d / heads, 4, None);
    let o = b.transpose(&o, &[0, 2, 1, 3]);
    let o = b.reshape(&o, &[l, d]);
    b.linear(c.node, &o, 3, "out_proj.weight", Some("out_proj.bias"))
}

/// Scaled dot-product attention on `qkv` of shape `[3, ..., T, hd]` (`rank` dims after the
/// leading 3), with an optional additive bias broadcast to the scores `[..., T, T]`; returns
/// `[..., T, hd]`.
pub fn attention(b: &mut Builder, qkv: &str, head_dim: usize, rank: usize, bias: Option<&str>) -> String {
    let part = |b: &mut Builder, i: i64| {
        let idx = b.scalar_i64(i);
        b.op("Gather", &[qkv, &idx], vec![attr_i("axis", 0)])
    };
    let (q, k, v) = (part(b, 0), part(b, 1), part(b, 2));
    let scale = b.scalar_f32((head_dim as f32).powf(-0.5));
    let q = b.op("Mul", &[&q, &scale], vec![]);
    let mut perm: Vec<i64> = (0..rank as i64).collect();
    perm.swap(rank - 2, rank - 1);
    let kt = b.transpose(&k, &perm);
    let mut scores = b.op("MatMul", &[&q, &kt], vec![]);
    if let Some(bias) = bias {
        scores = b.op("Add", &[&scores, bias], vec![]);
    }
    let p = b.op("Softmax", &[&scores], vec![attr_i("axis", -1)]);
    b.op("MatMul", &[&p, &v], vec![])
}
