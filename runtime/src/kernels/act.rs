//! Element-wise activations with PyTorch semantics.

use candle_core::{Result, Tensor};

/// `min(max(x, 0), 6)` (PyTorch `F.relu6`).
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// `x` for `x >= 0`, `slope * x` otherwise (PyTorch `F.leaky_relu`, any slope).
pub fn leaky_relu(x: &Tensor, slope: f32) -> Result<Tensor> {
    // relu(x) - slope * relu(-x): exact (sign flips are exact) and valid for any slope.
    x.relu()? + x.neg()?.relu()?.affine(-(slope as f64), 0.0)?
}

/// `relu6(x + 3) / 6` (PyTorch `F.hardsigmoid`).
pub fn hard_sigmoid(x: &Tensor) -> Result<Tensor> {
    (x + 3.0)?.clamp(0f32, 6f32)? / 6.0
}

/// `x * relu6(x + 3) / 6` (PyTorch `F.hardswish`).
pub fn hard_swish(x: &Tensor) -> Result<Tensor> {
    x.mul(&(x + 3.0)?.clamp(0f32, 6f32)?)? / 6.0
}

/// `x * sigmoid(x)` (PyTorch `F.silu`, a.k.a. swish).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
}

/// Exact GELU `0.5 * x * (1 + erf(x / sqrt(2)))` (PyTorch `F.gelu`, approximate="none").
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// `1 / (1 + exp(-x))` (PyTorch `torch.sigmoid`).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::sigmoid(x)
}

/// `x * tanh(softplus(x))` (PyTorch `F.mish`, darknet's `mish`), with the overflow-free
/// `softplus(x) = max(x, 0) + ln(1 + e^-|x|)`.
pub fn mish(x: &Tensor) -> Result<Tensor> {
    let softplus = (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    x.mul(&softplus.tanh()?)
}

#[cfg(test)]
#[rustfmt::skip]
#[allow(clippy::excessive_precision)]
mod tests {
    use super::*;
    use crate::kernels::testutil::*;
    // Expected values computed with PyTorch 2.x (F.relu6, F.leaky_relu, F.hardsigmoid, F.hardswish, F.silu, F.gelu, torch.sigmoid, F.mish).
// act_x: shape [29]
const ACT_X: &[f32] = &[-5.0, -4.5, -4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, -10.0, -3.0000999, -2.5, -0.00100000005, 0.00100000005, 0.707106769, 2.9999001, 10.0];
// relu6: shape [29]
const RELU6: &[f32] = &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 0.0, 0.0, 0.0, 0.0, 0.00100000005, 0.707106769, 2.9999001, 6.0];
// leaky01: shape [29]
const LEAKY01: &[f32] = &[-0.5, -0.450000018, -0.400000006, -0.349999994, -0.300000012, -0.25, -0.200000003, -0.150000006, -0.100000001, -0.0500000007, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, -1.0, -0.300009996, -0.25, -0.000100000005, 0.00100000005, 0.707106769, 2.9999001, 10.0];
// leaky15: shape [29]
const LEAKY15: &[f32] = &[-7.5, -6.75, -6.0, -5.25, -4.5, -3.75, -3.0, -2.25, -1.5, -0.75, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, -15.0, -4.50014973, -3.75, -0.00150000001, 0.00100000005, 0.707106769, 2.9999001, 10.0];
// hsig: shape [29]
const HSIG: &[f32] = &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0833333358, 0.166666672, 0.25, 0.333333343, 0.416666657, 0.5, 0.583333313, 0.666666687, 0.75, 0.833333313, 0.916666687, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0833333358, 0.499833345, 0.500166655, 0.617851138, 0.999983311, 1.0];
// hswish: shape [29]
const HSWISH: &[f32] = &[-0.0, -0.0, -0.0, -0.0, -0.0, -0.208333328, -0.333333343, -0.375, -0.333333343, -0.208333328, 0.0, 0.291666657, 0.666666687, 1.125, 1.66666663, 2.29166675, 3.0, 3.5, 4.0, 4.5, 5.0, -0.0, -0.0, -0.208333328, -0.000499833375, 0.000500166672, 0.436886698, 2.99985003, 10.0];
// silu: shape [29]
const SILU: &[f32] = &[-0.0334642529, -0.0494412445, -0.0719448403, -0.102592811, -0.142277613, -0.189645454, -0.238405839, -0.273638278, -0.268941432, -0.188770339, 0.0, 0.311229676, 0.731058598, 1.22636163, 1.76159406, 2.31035447, 2.85772252, 3.39740729, 3.92805505, 4.45055866, 4.96653557, -0.000453978719, -0.142268822, -0.189645454, -0.000499750022, 0.000500250026, 0.473592937, 2.85761356, 9.99954605];
// gelu: shape [29]
const GELU: &[f32] = &[-1.49011612e-06, -1.52885914e-05, -0.000126719475, -0.000814333558, -0.00404986739, -0.0155241787, -0.0455000997, -0.10021086, -0.158655286, -0.154268786, 0.0, 0.345731199, 0.841344714, 1.39978909, 1.95449996, 2.48447585, 2.99595022, 3.49918556, 3.99987316, 4.49998474, 4.99999857, 0.0, -0.00404875074, -0.0155241787, -0.000499601127, 0.000500398921, 0.537577987, 2.99584913, 10.0];
// sigmoid: shape [29]
const SIGMOID: &[f32] = &[0.00669285096, 0.0109869428, 0.0179862101, 0.0293122306, 0.0474258736, 0.0758581758, 0.119202919, 0.182425529, 0.268941432, 0.377540678, 0.5, 0.622459352, 0.731058598, 0.817574441, 0.880797029, 0.924141824, 0.952574134, 0.970687747, 0.982013762, 0.989013076, 0.993307173, 4.53978719e-05, 0.0474213623, 0.0758581758, 0.499750018, 0.500249982, 0.669761539, 0.952569604, 0.999954581];
// mish: shape [29] (PyTorch 2.15 F.mish)
const MISH: &[f32] = &[-0.033576235, -0.049712833, -0.07259175, -0.10409575, -0.14564747, -0.19681619, -0.25250146, -0.29809976, -0.30340144, -0.22074376, 0., 0.37524524, 0.86509836, 1.4033782, 1.943959, 2.4713924, 2.986535, 3.493991, 3.997413, 4.498914, 4.9995522, -0.00045398902, -0.14563812, -0.19681619, -0.00059968, 0.00060032005, 0.5680423, 2.986433, 10.];

    #[test]
    fn activations() {
        let x = Tensor::new(ACT_X, &candle_core::Device::Cpu).unwrap();
        let n = [ACT_X.len()];
        assert_close(&relu6(&x).unwrap(), &n, RELU6);
        assert_close(&leaky_relu(&x, 0.1).unwrap(), &n, LEAKY01);
        assert_close(&leaky_relu(&x, 1.5).unwrap(), &n, LEAKY15);
        assert_close(&hard_sigmoid(&x).unwrap(), &n, HSIG);
        assert_close(&hard_swish(&x).unwrap(), &n, HSWISH);
        assert_close(&silu(&x).unwrap(), &n, SILU);
        assert_close(&sigmoid(&x).unwrap(), &n, SIGMOID);
        assert_close(&mish(&x).unwrap(), &n, MISH);
    }

    #[test]
    fn gelu_is_exact_erf() {
        let x = Tensor::new(ACT_X, &candle_core::Device::Cpu).unwrap();
        assert_close(&gelu_erf(&x).unwrap(), &[ACT_X.len()], GELU);
        // The tanh approximation differs by more than the tolerance at x = -3 ... 3.
        let tanh: Vec<f32> = x.gelu().unwrap().to_vec1().unwrap();
        assert!(tanh.iter().zip(GELU).any(|(a, b)| (a - b).abs() > 1e-5));
    }
}
