//! Pooling with PyTorch's rules in plain ONNX: ceil mode becomes extra end padding (a max
//! ignores padding; an average without `count_include_pad` divides by the real pixels), and
//! where tlc's divisor differs from what ONNX divides by, the result is rescaled by a constant
//! per-window factor. Adaptive pooling is an `AveragePool` when the bins are uniform, else a
//! `ReduceMean` per bin (rows, then columns).

use super::{Builder, Ctx};
use crate::export::onnx::builder::{attr_i, attr_ints, i64s};
use crate::ir::Op;
use crate::ops::conv::{resolve_padding, window_out};

/// A pooling node.
pub fn lower(b: &mut Builder, c: &Ctx) -> String {
    let x = c.ins[0].as_str();
    let s = c.shapes[0];
    let hw = [s[1], s[2]];
    match c.node.op {
        Op::MaxPool { kernel, stride, padding, dilation, ceil } => {
            let p = resolve_padding(padding, hw, kernel, stride, dilation);
            let pads = window_pads(hw, kernel, stride, p, dilation, ceil);
            let mut attrs = window_attrs(kernel, stride, pads);
            attrs.push(attr_ints("dilations", &i64s(&dilation)));
            b.op("MaxPool", &[x], attrs)
        }
        Op::AvgPool { kernel, stride, padding, ceil, count_include_pad } => {
            let p = resolve_padding(padding, hw, kernel, stride, [1, 1]);
            avg_pool(b, x, hw, kernel, stride, p, ceil, count_include_pad)
        }
        Op::AdaptiveAvgPool { size } => adaptive(b, x, hw, size),
        Op::GlobalPool { max } => b.op(if max { "GlobalMaxPool" } else { "GlobalAveragePool" }, &[x], vec![]),
        _ => unreachable!("pools only"),
    }
}

/// ONNX pads `[top, left, bottom, right]` giving tlc's output size in floor mode: ceil mode's
/// partial last window becomes extra bottom/right padding.
fn window_pads(hw: [usize; 2], k: [usize; 2], s: [usize; 2], p: [usize; 4], d: [usize; 2], ceil: bool) -> [usize; 4] {
    let mut extra = [0; 2];
    for ax in 0..2 {
        let (before, after) = (p[ax * 2], p[ax * 2 + 1]);
        let out = window_out(hw[ax], k[ax], s[ax], before, after, d[ax], ceil).unwrap_or(1);
        let need = (out - 1) * s[ax] + d[ax] * (k[ax] - 1) + 1;
        extra[ax] = need.saturating_sub(hw[ax] + before + after);
    }
    [p[0], p[2], p[1] + extra[0], p[3] + extra[1]]
}

fn window_attrs(k: [usize; 2], s: [usize; 2], pads: [usize; 4]) -> Vec<crate::export::onnx::proto::AttributeProto> {
    vec![attr_ints("kernel_shape", &i64s(&k)), attr_ints("strides", &i64s(&s)), attr_ints("pads", &i64s(&pads))]
}

/// Per window along one axis: tlc's divisor (PyTorch's rule, padding counted up to the
/// declared padding when `include_pad`) and the number of real pixels.
fn divisors(size: usize, k: usize, s: usize, before: usize, after: usize, out: usize, include_pad: bool) -> Vec<(usize, usize)> {
    (0..out)
        .map(|o| {
            let start = (o * s) as i64 - before as i64;
            let end = (start + k as i64).min((size + after) as i64);
            let real = (end.min(size as i64) - start.max(0)).max(1) as usize;
            (if include_pad { (end - start) as usize } else { real }, real)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn avg_pool(b: &mut Builder, x: &str, hw: [usize; 2], k: [usize; 2], s: [usize; 2], p: [usize; 4], ceil: bool, include_pad: bool) -> String {
    let pads = window_pads(hw, k, s, p, [1, 1], ceil);
    let out: Vec<usize> = (0..2).map(|ax| window_out(hw[ax], k[ax], s[ax], p[ax * 2], p[ax * 2 + 1], 1, ceil).unwrap_or(1)).collect();
    let dh = divisors(hw[0], k[0], s[0], p[0], p[1], out[0], include_pad);
    let dw = divisors(hw[1], k[1], s[1], p[2], p[3], out[1], include_pad);
    let full = k[0] * k[1];
    let want_full = dh.iter().all(|d| d.0 == k[0]) && dw.iter().all(|d| d.0 == k[1]) && pads[2] == p[1] && pads[3] == p[3];
    let mut attrs = window_attrs(k, s, pads);
    if want_full && full > 0 {
        attrs.push(attr_i("count_include_pad", 1));
        return b.op("AveragePool", &[x], attrs);
    }
    // ONNX divides by the real pixels; rescale windows whose tlc divisor differs.
    attrs.push(attr_i("count_include_pad", 0));
    let y = b.op("AveragePool", &[x], attrs);
    let factors: Vec<f32> = dh.iter().flat_map(|h| dw.iter().map(move |w| ((h.1 * w.1) as f64 / (h.0 * w.0) as f64) as f32)).collect();
    if factors.iter().all(|&f| f == 1.0) {
        return y;
    }
    let f = b.floats(&[1, out[0], out[1]], &factors);
    b.op("Mul", &[&y, &f], vec![])
}

fn adaptive(b: &mut Builder, x: &str, hw: [usize; 2], size: [usize; 2]) -> String {
    if size == [1, 1] {
        return b.op("GlobalAveragePool", &[x], vec![]);
    }
    if hw[0].is_multiple_of(size[0]) && hw[1].is_multiple_of(size[1]) {
        let k = [hw[0] / size[0], hw[1] / size[1]];
        if k == [1, 1] {
            return b.op("Identity", &[x], vec![]);
        }
        return b.op("AveragePool", &[x], window_attrs(k, k, [0; 4]));
    }
    let rows = adaptive_axis(b, x, 2, hw[0], size[0]);
    adaptive_axis(b, &rows, 3, hw[1], size[1])
}

/// PyTorch's adaptive bins along `axis`: bin i averages `floor(i*n/out) .. ceil((i+1)*n/out)`.
fn adaptive_axis(b: &mut Builder, x: &str, axis: i64, n: usize, out: usize) -> String {
    if n == out {
        return x.to_string();
    }
    let parts: Vec<String> = (0..out)
        .map(|i| {
            let (start, end) = (i * n / out, ((i + 1) * n).div_ceil(out));
            let part = b.slice(x, axis, start as i64, end as i64, 1);
            b.reduce("ReduceMean", &part, &[axis], true)
        })
        .collect();
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    b.op("Concat", &refs, vec![attr_i("axis", axis)])
}
