//! Convolution: `conv(out, k, s, p, d, groups, bias)` and the depthwise shorthand `dwconv`.

use super::{fmt_shape, Args, ShapeError};
use crate::diag::Diagnostic;
use crate::expr::Value;
use crate::ir::{Op, Padding, ParamKind};

/// Parses a padding argument: int, `[h, w]`, `[t, b, l, r]` or `"same"`.
pub fn padding(args: &mut Args, names: &[&'static str]) -> Result<Padding, Diagnostic> {
    match args.take(names) {
        None => Ok(Padding::Fixed([0; 4])),
        Some((Value::Str(s), _)) if s == "same" => Ok(Padding::Same),
        Some((Value::Int(p), _)) if p >= 0 => Ok(Padding::Fixed([p as usize; 4])),
        Some((Value::List(l), s)) if l.len() == 2 || l.len() == 4 => {
            let mut v = Vec::new();
            for x in &l {
                match x {
                    Value::Int(i) if *i >= 0 => v.push(*i as usize),
                    other => return Err(Diagnostic::error("E0202", s, format!("padding entries must be non-negative integers, found `{other}`"))),
                }
            }
            Ok(Padding::Fixed(if v.len() == 2 { [v[0], v[0], v[1], v[1]] } else { [v[0], v[1], v[2], v[3]] }))
        }
        Some((v, s)) => Err(Diagnostic::error("E0202", s, format!("expected a padding (an integer, [h, w], [top, bottom, left, right] or \"same\"), found `{v}`"))
            .label("invalid padding")),
    }
}

pub(super) fn build(name: &str, a: &mut Args) -> Result<Op, Diagnostic> {
    let depthwise = name == "dwconv";
    let out = if depthwise { 0 } else { a.size(&["out", "out_channels"], None)? };
    let kernel = a.pair(&["k", "kernel", "kernel_size"], Some([if depthwise { 3 } else { 1 }; 2]))?.unwrap();
    let stride = a.pair(&["s", "stride"], Some([1, 1]))?.unwrap();
    let padding = padding(a, &["p", "padding"])?;
    let dilation = a.pair(&["d", "dilation"], Some([1, 1]))?.unwrap();
    let groups = if depthwise { 0 } else { a.size(&["groups", "g"], Some(1))? };
    let bias = a.flag(&["bias"], true)?;
    Ok(Op::Conv { out, kernel, stride, padding, dilation, groups, bias })
}

/// Fills in the depthwise shorthand (`out`/`groups` = input channels) once the input is known.
pub fn resolve(op: &mut Op, input: &[usize]) {
    if let Op::Conv { out, groups, .. } = op {
        if *groups == 0 {
            let c = input.first().copied().unwrap_or(1);
            *out = c;
            *groups = c;
        }
    }
}

/// Output size of a sliding window along one axis (PyTorch floor or ceil mode).
pub fn window_out(input: usize, k: usize, s: usize, before: usize, after: usize, d: usize, ceil: bool) -> Option<usize> {
    let span = d * (k - 1) + 1;
    let padded = input + before + after;
    if padded < span {
        return None;
    }
    let num = padded - span;
    let mut out = if ceil { num.div_ceil(s) } else { num / s } + 1;
    // PyTorch: in ceil mode the last window must start inside the input or the left padding.
    if ceil && (out - 1) * s >= input + before {
        out -= 1;
    }
    Some(out)
}

/// TensorFlow "SAME" padding along one axis: `(before, after)`.
pub fn same_pad(input: usize, k: usize, s: usize, d: usize) -> (usize, usize) {
    let out = input.div_ceil(s);
    let need = ((out - 1) * s + (k - 1) * d + 1).saturating_sub(input);
    (need / 2, need - need / 2)
}

/// Concrete `[top, bottom, left, right]` padding for an input of `[h, w]`.
pub fn resolve_padding(p: Padding, hw: [usize; 2], k: [usize; 2], s: [usize; 2], d: [usize; 2]) -> [usize; 4] {
    match p {
        Padding::Fixed(p) => p,
        Padding::Same => {
            let (t, b) = same_pad(hw[0], k[0], s[0], d[0]);
            let (l, r) = same_pad(hw[1], k[1], s[1], d[1]);
            [t, b, l, r]
        }
    }
}

/// Output `[h, w]` of a 2-D window op, or an error naming the offending axis.
pub fn window2d(op: &str, input: &[usize], k: [usize; 2], s: [usize; 2], p: Padding, d: [usize; 2], ceil: bool) -> Result<[usize; 2], ShapeError> {
    if input.len() != 3 {
        return Err(ShapeError::new(format!("`{op}` expects a [C, H, W] input, found {}", fmt_shape(input)))
            .hint("use permute/reshape to bring the tensor back to channels-first"));
    }
    let hw = [input[1], input[2]];
    let pad = resolve_padding(p, hw, k, s, d);
    let mut out = [0; 2];
    for ax in 0..2 {
        let (b, a) = (pad[ax * 2], pad[ax * 2 + 1]);
        match window_out(hw[ax], k[ax], s[ax], b, a, d[ax], ceil) {
            Some(o) => out[ax] = o,
            None => {
                return Err(ShapeError::new(format!(
                    "`{op}` kernel {}x{} (dilation {}) is larger than its padded input {}x{}",
                    k[0], k[1], d[ax], hw[0] + pad[0] + pad[1], hw[1] + pad[2] + pad[3]
                ))
                .hint("use a smaller kernel, more padding, or a larger input size"))
            }
        }
    }
    Ok(out)
}

pub(super) fn infer(op: &Op, input: &[usize]) -> Result<Vec<usize>, ShapeError> {
    let Op::Conv { out, kernel, stride, padding, dilation, groups, .. } = *op else { unreachable!() };
    let hw = window2d("conv", input, kernel, stride, padding, dilation, false)?;
    let cin = input[0];
    if !cin.is_multiple_of(groups) || out % groups != 0 {
        return Err(ShapeError::new(format!(
            "groups={groups} must divide both the input channels ({cin}) and the output channels ({out})"
        ))
        .hint(format!("for a depthwise conv write `dwconv` or groups={cin} with out a multiple of {cin}")));
    }
    Ok(vec![out, hw[0], hw[1]])
}

pub(super) fn params(op: &Op, input: &[usize]) -> Vec<(String, Vec<usize>, ParamKind)> {
    let Op::Conv { out, kernel, groups, bias, .. } = *op else { unreachable!() };
    let cin = input.first().copied().unwrap_or(0);
    let mut p = vec![("weight".into(), vec![out, cin / groups.max(1), kernel[0], kernel[1]], ParamKind::Weight)];
    if bias {
        p.push(("bias".into(), vec![out], ParamKind::Bias));
    }
    p
}
