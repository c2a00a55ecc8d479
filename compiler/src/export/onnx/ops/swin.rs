//! Swin (torchvision `shifted_window_attention` and `_patch_merging_pad`) on a channels-last
//! `[N, H, W, C]` map: padding to whole windows, the cyclic shift as `Slice` + `Concat`, window
//! partition by reshape/transpose, attention with the relative position bias gathered from its
//! table (and the shift mask, a constant), and the way back.

use super::transformer::attention;
use super::{Builder, Ctx};
use crate::export::onnx::builder::{attr_i, i64s};
use crate::ops::{relative_position_index, shift_mask, window_shifts};

/// `torch.roll(x, shift, axis)` over an axis of size `n`.
fn roll(b: &mut Builder, x: &str, axis: i64, n: usize, shift: isize) -> String {
    let s = shift.rem_euclid(n as isize) as i64;
    if s == 0 {
        return x.to_string();
    }
    let n = n as i64;
    let tail = b.slice(x, axis, n - s, n, 1);
    let head = b.slice(x, axis, 0, n - s, 1);
    b.op("Concat", &[&tail, &head], vec![attr_i("axis", axis)])
}

/// A window attention node.
pub fn window_attention(b: &mut Builder, c: &Ctx, heads: usize, ws: usize, shift: usize) -> String {
    let [h, w, ch] = [c.shapes[0][0], c.shapes[0][1], c.shapes[0][2]];
    let (pad_b, pad_r) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
    let mut x = c.ins[0].clone();
    if pad_b + pad_r > 0 {
        x = b.pad(&x, &[0, 0, 0, 0, 0, pad_b as i64, pad_r as i64, 0]);
    }
    let (ph, pw) = (h + pad_b, w + pad_r);
    let (s0, s1) = window_shifts(ph, pw, ws, shift);
    x = roll(b, &x, 1, ph, -(s0 as isize));
    x = roll(b, &x, 2, pw, -(s1 as isize));
    let (nh, nw, t, hd) = (ph / ws, pw / ws, ws * ws, ch / heads);
    let nwin = nh * nw;
    // Windows: [N, nh, ws, nw, ws, C] -> [N, nwin, t, C].
    let xw = b.reshape(&x, &[nh, ws, nw, ws, ch]);
    let xw = b.transpose(&xw, &[0, 1, 3, 2, 4, 5]);
    let xw = b.reshape(&xw, &[nwin, t, ch]);
    let qkv = b.linear(c.node, &xw, 4, "qkv.weight", Some("qkv.bias"));
    let qkv = b.reshape(&qkv, &[nwin, t, 3, heads, hd]);
    let qkv = b.transpose(&qkv, &[3, 0, 1, 4, 2, 5]);
    // Bias [heads, t, t] from the table, plus the shift mask [nwin, 1, t, t].
    let table = b.param(c.node, "relative_position_bias_table");
    let idx: Vec<i64> = relative_position_index(ws).into_iter().map(i64::from).collect();
    let idx = b.ints(&idx);
    let bias = b.op("Gather", &[&table, &idx], vec![attr_i("axis", 0)]);
    let shape = b.ints(&i64s(&[t, t, heads]));
    let bias = b.op("Reshape", &[&bias, &shape], vec![]);
    let mut bias = b.transpose(&bias, &[2, 0, 1]);
    if s0 + s1 > 0 {
        let mask = b.floats(&[nwin, 1, t, t], &shift_mask(ph, pw, ws, s0, s1));
        bias = b.op("Add", &[&bias, &mask], vec![]);
    }
    let o = attention(b, &qkv, hd, 5, Some(&bias));
    let o = b.transpose(&o, &[0, 1, 3, 2, 4]);
    let o = b.reshape(&o, &[nwin, t, ch]);
    let o = b.linear(c.node, &o, 4, "proj.weight", Some("proj.bias"));
    // Back to [N, ph, pw, C], unshift, crop the padding.
    let y = b.reshape(&o, &[nh, nw, ws, ws, ch]);
    let y = b.transpose(&y, &[0, 1, 3, 2, 4, 5]);
    let mut y = b.reshape(&y, &[ph, pw, ch]);
    y = roll(b, &y, 1, ph, s0 as isize);
    y = roll(b, &y, 2, pw, s1 as isize);
    if pad_b > 0 {
        y = b.slice(&y, 1, 0, h as i64, 1);
    }
    if pad_r > 0 {
        y = b.slice(&y, 2, 0, w as i64, 1);
    }
    y
}

/// Patch merging: pad H and W to even, then concat `x[0::2, 0::2]`, `x[1::2, 0::2]`,
/// `x[0::2, 1::2]`, `x[1::2, 1::2]` on the channels.
pub fn patch_merge(b: &mut Builder, c: &Ctx) -> String {
    let [h, w] = [c.shapes[0][0], c.shapes[0][1]];
    let mut x = c.ins[0].clone();
    if h % 2 == 1 || w % 2 == 1 {
        x = b.pad(&x, &[0, 0, 0, 0, 0, (h % 2) as i64, (w % 2) as i64, 0]);
    }
    let (hp, wp) = (h + h % 2, w + w % 2);
    let parts: Vec<String> = [(0, 0), (1, 0), (0, 1), (1, 1)]
        .into_iter()
        .map(|(dy, dx)| {
            let r = b.slice(&x, 1, dy, hp as i64, 2);
            b.slice(&r, 2, dx, wp as i64, 2)
        })
        .collect();
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    b.op("Concat", &refs, vec![attr_i("axis", 3)])
}
