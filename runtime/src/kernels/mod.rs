//! Tensor ops that candle 0.11.1 lacks or implements differently from PyTorch.
//!
//! Every function takes and returns f32 [`Tensor`]s on any device (NCHW unless stated),
//! follows PyTorch semantics exactly, and reports bad input as an error, never a panic.
//! Padding arrays are `[top, bottom, left, right]`; 2-element arrays are `[h, w]`.

mod act;
mod conv;
pub mod cpu;
mod depthwise;
#[cfg(target_arch = "x86_64")]
pub(crate) mod depthwise_c16;
#[cfg(target_arch = "x86_64")]
pub(crate) mod depthwise_x86;
#[cfg(target_arch = "x86_64")]
pub(crate) mod logistic_x86;
mod grad;
mod norm;
mod pool;
pub mod fast;

pub use act::{gelu_erf, hard_sigmoid, hard_swish, leaky_relu, mish, relu6, sigmoid, silu};
pub use conv::conv2d;
/// TensorFlow "SAME" padding along one axis, `(before, after)`: the compiler's rule.
pub use tlc_compiler::ops::conv::same_pad as same_padding;
pub use norm::{attention, batch_norm_eval, layer_norm_channels, layer_norm_last, softmax_last};
pub use pool::{adaptive_avg_pool2d, avg_pool2d, max_pool2d, output_size, upsample_nearest};

use candle_core::{bail, Result, Tensor};

/// Constant padding of the last two dims (H, W) of `x` (rank >= 2) by
/// `[top, bottom, left, right]` with `value` (may be `-inf`, e.g. for max pooling).
pub fn pad2d(x: &Tensor, pad: [usize; 4], value: f32) -> Result<Tensor> {
    let rank = x.rank();
    if rank < 2 {
        bail!("pad2d: expected rank >= 2, got shape {:?}", x.dims())
    }
    let [t, b, l, r] = pad;
    let mut y = x.clone();
    for (dim, before, after) in [(rank - 2, t, b), (rank - 1, l, r)] {
        if before == 0 && after == 0 {
            continue;
        }
        if value == 0.0 && value.is_sign_positive() {
            y = y.pad_with_zeros(dim, before, after)?;
            continue;
        }
        let mut parts = Vec::with_capacity(3);
        let mut dims = y.dims().to_vec();
        if before > 0 {
            dims[dim] = before;
            parts.push(Tensor::full(value, dims.as_slice(), y.device())?.to_dtype(y.dtype())?);
        }
        parts.push(y.clone());
        if after > 0 {
            dims[dim] = after;
            parts.push(Tensor::full(value, dims.as_slice(), y.device())?.to_dtype(y.dtype())?);
        }
        y = Tensor::cat(&parts, dim)?;
    }
    Ok(y)
}

/// Every `step`-th index along `dim`, starting at `start`, `count` of them.
fn take_strided(x: &Tensor, dim: usize, start: usize, step: usize, count: usize) -> Result<Tensor> {
    if count == 0 {
        bail!("take_strided: empty selection along dim {dim}")
    }
    if step == 1 || count == 1 {
        return x.narrow(dim, start, count);
    }
    let span = (count - 1) * step + 1;
    let size = x.dim(dim)?;
    if start + span > size {
        bail!("take_strided: {start}+{span} exceeds size {size} of dim {dim}")
    }
    let ids: Vec<u32> = (0..count).map(|i| (start + i * step) as u32).collect();
    let ids = Tensor::new(ids.as_slice(), x.device())?;
    x.index_select(&ids, dim)
}

#[cfg(test)]
pub(crate) mod testutil {
    use candle_core::{Device, Tensor};

    /// `sin(0.37 * i + 0.1)` for i in 0..n, reshaped: the deterministic test input
    /// (the PyTorch reference uses the same expression in float64, cast to float32).
    pub fn sin_input(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (0.37 * i as f64 + 0.1).sin() as f32)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Like [`sin_input`] with a different frequency/phase, for weights.
    pub fn cos_input(shape: &[usize], scale: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (scale * (0.53 * i as f64 + 0.2).cos()) as f32)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Asserts `got` has shape `shape` and matches `want` (flattened) within 1e-5.
    pub fn assert_close(got: &Tensor, shape: &[usize], want: &[f32]) {
        assert_eq!(got.dims(), shape, "shape");
        let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(g.len(), want.len(), "len");
        for (i, (a, b)) in g.iter().zip(want).enumerate() {
            let tol = 1e-5 * (1.0 + b.abs());
            assert!(
                (a - b).abs() <= tol || (a == b),
                "index {i}: got {a}, want {b} (all: {g:?})"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn pad2d_constant_and_neg_inf() {
        let x = sin_input(&[1, 1, 2, 2]);
        let y = pad2d(&x, [1, 0, 0, 2], f32::NEG_INFINITY).unwrap();
        assert_eq!(y.dims(), &[1, 1, 3, 4]);
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v[..4].iter().all(|a| *a == f32::NEG_INFINITY));
        assert_eq!(v[4], (0.1f64).sin() as f32);
        assert_eq!(v[6], f32::NEG_INFINITY);
        let z = pad2d(&x, [0, 1, 1, 0], 0.0).unwrap();
        assert_eq!(z.dims(), &[1, 1, 3, 3]);
        assert!(pad2d(
            &Tensor::new(&[1f32], &candle_core::Device::Cpu).unwrap(),
            [1; 4],
            0.0
        )
        .is_err());
    }
}
