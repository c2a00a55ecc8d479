//! Detection heads: YOLOv8's anchor-free DFL decode and darknet's YOLO layer.

use super::{fmt_shape, Args, ShapeError};
use crate::diag::Diagnostic;
use crate::expr::Value;
use crate::ir::{Op, ParamKind};

pub(super) fn build(name: &str, a: &mut Args) -> Result<Op, Diagnostic> {
    if name == "detect_v8" {
        let classes = a.size(&["classes", "nc"], None)?;
        let reg_max = a.size(&["reg_max"], Some(16))?;
        let strides = a.ints(&["strides"], false)?;
        let strides = if strides.is_empty() { vec![8, 16, 32] } else { strides.into_iter().map(|s| s.max(1) as usize).collect() };
        return Ok(Op::DetectV8 { classes, reg_max, strides });
    }
    let classes = a.size(&["classes"], None)?;
    let anchors = match a.take(&["anchors"]) {
        Some((Value::List(l), s)) => {
            let flat: Vec<usize> = l.iter().map(|v| super::args::to_size(v, s)).collect::<Result<_, _>>()?;
            if !flat.len().is_multiple_of(2) {
                return Err(Diagnostic::error("E0202", s, "anchors must be pairs: [w0, h0, w1, h1, ...]"));
            }
            flat.chunks(2).map(|c| [c[0], c[1]]).collect()
        }
        _ => return Err(Diagnostic::error("E0201", a.span, "missing argument `anchors` of `yolo_head`")),
    };
    let mask = a.ints(&["mask"], false)?.into_iter().map(|m| m.max(0) as usize).collect();
    let scale_xy = a.float(&["scale_xy", "scale_x_y"], 1.0)?;
    if !(scale_xy.is_finite() && scale_xy > 0.0) {
        return Err(Diagnostic::error("E0202", a.span, format!("`scale_xy` must be a positive number, found {scale_xy}")));
    }
    Ok(Op::YoloHead { classes, anchors, mask, scale_xy })
}

pub(super) fn infer(op: &Op, ins: &[&[usize]]) -> Result<Vec<usize>, ShapeError> {
    match op {
        Op::DetectV8 { classes, reg_max, strides } => {
            if ins.len() != strides.len() {
                return Err(ShapeError::new(format!("`detect_v8` has {} strides but {} inputs", strides.len(), ins.len())));
            }
            let mut n = 0;
            for x in ins {
                if x.len() != 3 || x[0] != 4 * reg_max + classes {
                    return Err(ShapeError::new(format!(
                        "`detect_v8` inputs must be [4*reg_max + classes, H, W] = [{}, H, W], found {}",
                        4 * reg_max + classes,
                        fmt_shape(x)
                    )));
                }
                n += x[1] * x[2];
            }
            Ok(vec![4 + classes, n])
        }
        Op::YoloHead { classes, mask, anchors, .. } => {
            let x = ins[0];
            if mask.iter().any(|&m| m >= anchors.len()) {
                return Err(ShapeError::new(format!("anchor mask {mask:?} refers past the {} anchors", anchors.len())));
            }
            if x.len() != 3 || x[0] != mask.len() * (5 + classes) {
                return Err(ShapeError::new(format!(
                    "`yolo_head` input must be [{} anchors x (5 + {classes}), H, W] = [{}, H, W], found {}",
                    mask.len(),
                    mask.len() * (5 + classes),
                    fmt_shape(x)
                )));
            }
            Ok(x.to_vec())
        }
        _ => unreachable!(),
    }
}

pub(super) fn params(op: &Op) -> Vec<(String, Vec<usize>, ParamKind)> {
    match *op {
        Op::DetectV8 { reg_max, .. } => vec![("dfl.conv.weight".into(), vec![1, reg_max, 1, 1], ParamKind::Other)],
        _ => Vec::new(),
    }
}
