//! Transformer pieces: class token, position embedding, layer scale, multi-head
//! self-attention (ViT), shifted-window attention and patch merging (Swin).

use super::{fmt_shape, Args, ShapeError};
use crate::diag::Diagnostic;
use crate::expr::Value;
use crate::ir::{Op, ParamKind};

pub(super) fn build(name: &str, a: &mut Args) -> Result<Op, Diagnostic> {
    Ok(match name {
        "self_attention" => Op::SelfAttention { heads: a.size(&["heads", "num_heads"], None)? },
        "window_attention" => Op::WindowAttention {
            heads: a.size(&["heads", "num_heads"], None)?,
            window: a.size(&["window", "window_size"], Some(7))?,
            shift: a.count(&["shift", "shift_size"], Some(0))?,
        },
        "patch_merge" => Op::PatchMerge,
        "class_token" => Op::ClassToken,
        "pos_embed" => Op::PosEmbed,
        _ => {
            let shape = match a.take(&["shape"]) {
                Some((Value::List(l), s)) => l.iter().map(|v| super::args::to_size(v, s)).collect::<Result<Vec<_>, _>>()?,
                Some((v, s)) => vec![super::args::to_size(&v, s)?],
                None => return Err(Diagnostic::error("E0201", a.span, "missing argument `shape` of `scale`")),
            };
            Op::Scale { shape }
        }
    })
}

pub(super) fn infer(op: &Op, x: &[usize]) -> Result<Vec<usize>, ShapeError> {
    match *op {
        Op::SelfAttention { heads } => {
            if x.len() != 2 {
                return Err(ShapeError::new(format!("`self_attention` expects tokens [L, D], found {}", fmt_shape(x))));
            }
            if !x[1].is_multiple_of(heads) {
                return Err(ShapeError::new(format!("embedding dim {} is not divisible by {heads} heads", x[1])));
            }
            Ok(x.to_vec())
        }
        Op::WindowAttention { heads, .. } => {
            if x.len() != 3 {
                return Err(ShapeError::new(format!("`window_attention` expects a channels-last [H, W, C] map, found {}", fmt_shape(x)))
                    .hint("permute(0, 2, 3, 1) turns [C, H, W] into [H, W, C]"));
            }
            if !x[2].is_multiple_of(heads) {
                return Err(ShapeError::new(format!("channels {} are not divisible by {heads} heads", x[2])));
            }
            Ok(x.to_vec())
        }
        Op::PatchMerge => {
            if x.len() != 3 {
                return Err(ShapeError::new(format!("`patch_merge` expects [H, W, C], found {}", fmt_shape(x))));
            }
            Ok(vec![x[0].div_ceil(2), x[1].div_ceil(2), 4 * x[2]])
        }
        Op::ClassToken => {
            if x.len() != 2 {
                return Err(ShapeError::new(format!("`class_token` expects tokens [L, D], found {}", fmt_shape(x))));
            }
            Ok(vec![x[0] + 1, x[1]])
        }
        Op::PosEmbed => Ok(x.to_vec()),
        Op::Scale { ref shape } => {
            let ok = shape.len() <= x.len() && shape.iter().rev().zip(x.iter().rev()).all(|(&a, &b)| a == b || a == 1);
            if !ok {
                return Err(ShapeError::new(format!("scale of shape {} does not broadcast to {}", fmt_shape(shape), fmt_shape(x))));
            }
            Ok(x.to_vec())
        }
        _ => unreachable!(),
    }
}

pub(super) fn params(op: &Op, x: &[usize]) -> Vec<(String, Vec<usize>, ParamKind)> {
    match *op {
        Op::SelfAttention { .. } => {
            let d = x[1];
            vec![
                ("in_proj_weight".into(), vec![3 * d, d], ParamKind::Weight),
                ("in_proj_bias".into(), vec![3 * d], ParamKind::Bias),
                ("out_proj.weight".into(), vec![d, d], ParamKind::Weight),
                ("out_proj.bias".into(), vec![d], ParamKind::Bias),
            ]
        }
        Op::WindowAttention { heads, window, .. } => {
            let c = x[2];
            vec![
                ("qkv.weight".into(), vec![3 * c, c], ParamKind::Weight),
                ("qkv.bias".into(), vec![3 * c], ParamKind::Bias),
                ("proj.weight".into(), vec![c, c], ParamKind::Weight),
                ("proj.bias".into(), vec![c], ParamKind::Bias),
                ("relative_position_bias_table".into(), vec![(2 * window - 1) * (2 * window - 1), heads], ParamKind::Other),
            ]
        }
        Op::ClassToken => vec![(String::new(), vec![1, 1, x[1]], ParamKind::Other)],
        Op::PosEmbed => {
            let mut s = vec![1];
            s.extend_from_slice(x);
            vec![(String::new(), s, ParamKind::Other)]
        }
        Op::Scale { ref shape } => vec![(String::new(), shape.clone(), ParamKind::Other)],
        _ => Vec::new(),
    }
}

/// torchvision's relative position index for a `w x w` window, flattened (`w^2 * w^2`
/// indices into the `(2w-1)^2` rows of `relative_position_bias_table`).
pub fn relative_position_index(w: usize) -> Vec<u32> {
    let n = w * w;
    let mut idx = Vec::with_capacity(n * n);
    for a in 0..n {
        for b in 0..n {
            let (ha, wa) = (a / w, a % w);
            let (hb, wb) = (b / w, b % w);
            let dh = ha as isize - hb as isize + w as isize - 1;
            let dw = wa as isize - wb as isize + w as isize - 1;
            idx.push((dh * (2 * w as isize - 1) + dw) as u32);
        }
    }
    idx
}

/// The effective shifts of a Swin window attention on a padded `ph x pw` map: no shift along
/// an axis the window already covers (torchvision).
pub fn window_shifts(ph: usize, pw: usize, window: usize, shift: usize) -> (usize, usize) {
    (if window >= ph { 0 } else { shift }, if window >= pw { 0 } else { shift })
}

/// Swin's attention mask for shifted windows on a padded `ph x pw` map rolled by `(s0, s1)`:
/// `(num_windows, t, t)` values, 0 within a region and -100 across regions (t = window^2).
pub fn shift_mask(ph: usize, pw: usize, ws: usize, s0: usize, s1: usize) -> Vec<f32> {
    let region = |i: usize, n: usize, s: usize| -> usize {
        if i < n - ws {
            0
        } else if i < n - s {
            1
        } else {
            2
        }
    };
    let mut img = vec![0usize; ph * pw];
    for y in 0..ph {
        for x in 0..pw {
            img[y * pw + x] = region(y, ph, s0) * 3 + region(x, pw, s1);
        }
    }
    let (nh, nw) = (ph / ws, pw / ws);
    let t = ws * ws;
    let mut out = vec![0f32; nh * nw * t * t];
    for wy in 0..nh {
        for wx in 0..nw {
            let win = wy * nw + wx;
            let ids: Vec<usize> = (0..t).map(|k| img[(wy * ws + k / ws) * pw + wx * ws + k % ws]).collect();
            for a in 0..t {
                for b in 0..t {
                    out[win * t * t + a * t + b] = if ids[a] != ids[b] { -100.0 } else { 0.0 };
                }
            }
        }
    }
    out
}
