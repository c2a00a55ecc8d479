//! Pooling: max, average (PyTorch padding / ceil mode / count_include_pad), adaptive and global.

use super::conv::{padding, window2d};
use super::{fmt_shape, Args, ShapeError};
use crate::diag::Diagnostic;
use crate::ir::Op;

pub(super) fn build(name: &str, a: &mut Args) -> Result<Op, Diagnostic> {
    Ok(match name {
        "maxpool" | "avgpool" => {
            let kernel = a.pair(&["k", "kernel", "kernel_size"], None)?.ok_or_else(|| {
                Diagnostic::error("E0201", a.span, format!("missing argument `k` (kernel size) of `{name}`")).label("add k=...")
            })?;
            let stride = a.pair(&["s", "stride"], Some(kernel))?.unwrap();
            let padding = padding(a, &["p", "padding"])?;
            if name == "maxpool" {
                let dilation = a.pair(&["d", "dilation"], Some([1, 1]))?.unwrap();
                let ceil = a.flag(&["ceil", "ceil_mode"], false)?;
                Op::MaxPool { kernel, stride, padding, dilation, ceil }
            } else {
                let ceil = a.flag(&["ceil", "ceil_mode"], false)?;
                let count_include_pad = a.flag(&["count_include_pad"], true)?;
                Op::AvgPool { kernel, stride, padding, ceil, count_include_pad }
            }
        }
        "adaptive_avgpool" => Op::AdaptiveAvgPool { size: a.pair(&["size", "output_size"], Some([1, 1]))?.unwrap() },
        "global_avgpool" => Op::GlobalPool { max: false },
        _ => Op::GlobalPool { max: true },
    })
}

pub(super) fn infer(op: &Op, x: &[usize]) -> Result<Vec<usize>, ShapeError> {
    match *op {
        Op::MaxPool { kernel, stride, padding, dilation, ceil } => {
            check_pad(kernel, padding)?;
            let hw = window2d("maxpool", x, kernel, stride, padding, dilation, ceil)?;
            Ok(vec![x[0], hw[0], hw[1]])
        }
        Op::AvgPool { kernel, stride, padding, ceil, .. } => {
            check_pad(kernel, padding)?;
            let hw = window2d("avgpool", x, kernel, stride, padding, [1, 1], ceil)?;
            Ok(vec![x[0], hw[0], hw[1]])
        }
        Op::AdaptiveAvgPool { size } => {
            need_chw(x)?;
            Ok(vec![x[0], size[0], size[1]])
        }
        _ => {
            need_chw(x)?;
            Ok(vec![x[0], 1, 1])
        }
    }
}

fn need_chw(x: &[usize]) -> Result<(), ShapeError> {
    if x.len() != 3 {
        return Err(ShapeError::new(format!("pooling expects a [C, H, W] input, found {}", fmt_shape(x))));
    }
    Ok(())
}

/// PyTorch: "pad should be at most half of effective kernel size".
fn check_pad(k: [usize; 2], p: crate::ir::Padding) -> Result<(), ShapeError> {
    if let crate::ir::Padding::Fixed(p) = p {
        if p[0] > k[0] / 2 || p[1] > k[0] / 2 || p[2] > k[1] / 2 || p[3] > k[1] / 2 {
            return Err(ShapeError::new(format!("pooling padding {p:?} is more than half the kernel {}x{}", k[0], k[1]))
                .hint("PyTorch requires padding <= kernel/2; pad explicitly with `zeropad` if you need more"));
        }
    }
    Ok(())
}
