//! Pooling with PyTorch output-size and divisor rules, adaptive pooling, upsampling.

use super::{pad2d, take_strided};
use candle_core::{bail, Result, Tensor};

/// PyTorch pooling/convolution output size along one axis, with padding `pad_before` /
/// `pad_after`. In ceil mode the last window must start inside the input or the
/// before-padding (PyTorch's rule). Returns 0 when no window fits or `s`/`dilation`/`k` is 0.
pub fn output_size(
    in_size: usize,
    k: usize,
    s: usize,
    pad_before: usize,
    pad_after: usize,
    dilation: usize,
    ceil_mode: bool,
) -> usize {
    if s == 0 || k == 0 || dilation == 0 {
        return 0;
    }
    let extent = in_size + pad_before + pad_after;
    let eff = dilation * (k - 1) + 1;
    if extent < eff {
        return 0;
    }
    let num = extent - eff + if ceil_mode { s - 1 } else { 0 };
    let mut out = num / s + 1;
    if ceil_mode && (out - 1) * s >= in_size + pad_before {
        out -= 1;
    }
    out
}

/// Output sizes of a 2-D pooling window, or an error when the window does not fit.
#[allow(clippy::too_many_arguments)]
fn out_hw(
    op: &str,
    h: usize,
    w: usize,
    k: [usize; 2],
    s: [usize; 2],
    pad: [usize; 4],
    d: [usize; 2],
    ceil_mode: bool,
) -> Result<(usize, usize)> {
    let oh = output_size(h, k[0], s[0], pad[0], pad[1], d[0], ceil_mode);
    let ow = output_size(w, k[1], s[1], pad[2], pad[3], d[1], ceil_mode);
    if oh == 0 || ow == 0 {
        bail!("{op}: kernel {k:?} stride {s:?} pad {pad:?} dilation {d:?} gives an empty output for input {h}x{w}")
    }
    Ok((oh, ow))
}

/// Pads `x` by `pad` with `value`, plus any ceil-mode overhang on the bottom/right, then
/// crops to exactly the extent the `oh` x `ow` windows read.
fn pad_to_windows(x: &Tensor, pad: [usize; 4], value: f32, need: (usize, usize)) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let [t, b, l, r] = pad;
    let (have_h, have_w) = (h + t + b, w + l + r);
    let extra_h = need.0.saturating_sub(have_h);
    let extra_w = need.1.saturating_sub(have_w);
    let xp = pad2d(x, [t, b + extra_h, l, r + extra_w], value)?;
    xp.narrow(2, 0, need.0)?.narrow(3, 0, need.1)
}

/// PyTorch `F.max_pool2d` with per-axis kernel/stride/dilation, padding
/// `[top, bottom, left, right]` (filled with -inf) and `ceil_mode`.
pub fn max_pool2d(
    x: &Tensor,
    k: [usize; 2],
    s: [usize; 2],
    pad: [usize; 4],
    dilation: [usize; 2],
    ceil_mode: bool,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (oh, ow) = out_hw("max_pool2d", h, w, k, s, pad, dilation, ceil_mode)?;
    let need_h = (oh - 1) * s[0] + dilation[0] * (k[0] - 1) + 1;
    let need_w = (ow - 1) * s[1] + dilation[1] * (k[1] - 1) + 1;
    let xp = pad_to_windows(x, pad, f32::NEG_INFINITY, (need_h, need_w))?;
    // candle's max_pool2d backward scales by 1/(kh*kw) and fails when kernel != stride: a
    // tensor that tracks gradients takes the maximum over the k*k strided tap views instead
    // (`maximum`'s backward routes the gradient to the winning tap).
    if dilation == [1, 1] && !x.track_op() {
        return xp.max_pool2d_with_stride((k[0], k[1]), (s[0], s[1]));
    }
    reduce_taps(&xp, k, s, dilation, (oh, ow), |a, t| a.maximum(t))
}

/// Folds the `k[0] * k[1]` strided tap views (`oh` x `ow` each) of the padded `xp` with `f`.
fn reduce_taps(
    xp: &Tensor,
    k: [usize; 2],
    s: [usize; 2],
    dilation: [usize; 2],
    (oh, ow): (usize, usize),
    f: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for i in 0..k[0] {
        let rows = take_strided(xp, 2, i * dilation[0], s[0], oh)?;
        for j in 0..k[1] {
            let tap = take_strided(&rows, 3, j * dilation[1], s[1], ow)?;
            acc = Some(match acc {
                None => tap.contiguous()?,
                Some(a) => f(&a, &tap)?,
            });
        }
    }
    acc.ok_or_else(|| candle_core::Error::Msg("pool2d: empty kernel".into()))
}

/// PyTorch `F.avg_pool2d` with padding `[top, bottom, left, right]`, `ceil_mode` and
/// `count_include_pad`. The divisor counts padded zeros only with `count_include_pad`, and
/// never the ceil-mode overhang past the padding; without it, only real pixels.
pub fn avg_pool2d(
    x: &Tensor,
    k: [usize; 2],
    s: [usize; 2],
    pad: [usize; 4],
    ceil_mode: bool,
    count_include_pad: bool,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (oh, ow) = out_hw("avg_pool2d", h, w, k, s, pad, [1, 1], ceil_mode)?;
    let need_h = (oh - 1) * s[0] + k[0];
    let need_w = (ow - 1) * s[1] + k[1];
    let xp = pad_to_windows(x, pad, 0.0, (need_h, need_w))?;
    // candle's avg_pool2d has a backward only when kernel == stride: a tensor that tracks
    // gradients otherwise sums the k*k strided tap views (then divides like the fast path).
    let tracked = x.track_op() && k != s;
    let y = if tracked {
        (reduce_taps(&xp, k, s, [1, 1], (oh, ow), |a, t| a + t)? / (k[0] * k[1]) as f64)?
    } else {
        xp.avg_pool2d_with_stride((k[0], k[1]), (s[0], s[1]))?
    };
    // candle divides by kh*kw; rescale each window to PyTorch's divisor.
    let div_h = divisors(h, k[0], s[0], pad[0], pad[1], oh, count_include_pad);
    let div_w = divisors(w, k[1], s[1], pad[2], pad[3], ow, count_include_pad);
    let full = (k[0] * k[1]) as f64;
    let mut factors = Vec::with_capacity(oh * ow);
    for dh in &div_h {
        for dw in &div_w {
            let d = dh * dw;
            if d == 0 {
                bail!(
                    "avg_pool2d: a window of kernel {k:?} pad {pad:?} lies entirely in the padding"
                )
            }
            factors.push((full / d as f64) as f32);
        }
    }
    if factors.iter().all(|&f| f == 1.0) {
        return Ok(y);
    }
    let factors = Tensor::from_vec(factors, (1, 1, oh, ow), x.device())?.to_dtype(x.dtype())?;
    y.broadcast_mul(&factors)
}

/// Per-window divisor along one axis, PyTorch's rule generalised to asymmetric padding.
fn divisors(
    size: usize,
    k: usize,
    s: usize,
    before: usize,
    after: usize,
    out: usize,
    count_include_pad: bool,
) -> Vec<usize> {
    (0..out)
        .map(|o| {
            let start = (o * s) as i64 - before as i64;
            let end = (start + k as i64).min((size + after) as i64);
            if count_include_pad {
                (end - start) as usize
            } else {
                (end.min(size as i64) - start.max(0)).max(0) as usize
            }
        })
        .collect()
}

/// PyTorch `F.adaptive_avg_pool2d` to `[oh, ow]`: window i spans
/// `floor(i * in / out) .. ceil((i + 1) * in / out)`.
pub fn adaptive_avg_pool2d(x: &Tensor, out: [usize; 2]) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let [oh, ow] = out;
    if oh == 0 || ow == 0 || h == 0 || w == 0 {
        bail!("adaptive_avg_pool2d: output {out:?} / input {h}x{w} must be non-empty")
    }
    if h.is_multiple_of(oh) && w.is_multiple_of(ow) {
        let (kh, kw) = (h / oh, w / ow);
        return x.avg_pool2d_with_stride((kh, kw), (kh, kw));
    }
    // Rectangular windows are separable: average rows, then columns.
    let y = adaptive_mean_dim(x, 2, h, oh)?;
    adaptive_mean_dim(&y, 3, w, ow)
}

fn adaptive_mean_dim(x: &Tensor, dim: usize, size: usize, out: usize) -> Result<Tensor> {
    if size == out {
        return Ok(x.clone());
    }
    let parts = (0..out)
        .map(|i| {
            let start = i * size / out;
            let end = ((i + 1) * size).div_ceil(out);
            x.narrow(dim, start, end - start)?.mean_keepdim(dim)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, dim)
}

/// Nearest-neighbour upsampling of NCHW `x` by an integer `scale` on both axes
/// (PyTorch `nn.Upsample(scale_factor=scale, mode="nearest")`).
pub fn upsample_nearest(x: &Tensor, scale: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if scale == 0 {
        bail!("upsample_nearest: scale must be positive")
    }
    if x.track_op() && scale > 1 {
        // candle's upsample_nearest2d backward overwrites the input's accumulated gradient
        // (wrong when the input also feeds another branch, as in an FPN): broadcast instead,
        // whose backward is a sum.
        let (n, c, _, _) = x.dims4()?;
        return x
            .reshape((n, c, h, 1, w, 1))?
            .broadcast_as((n, c, h, scale, w, scale))?
            .reshape((n, c, h * scale, w * scale));
    }
    x.upsample_nearest2d(h * scale, w * scale)
}

#[cfg(test)]
#[rustfmt::skip]
#[allow(clippy::excessive_precision)]
mod tests {
    use super::*;
    use crate::kernels::testutil::*;
    // Expected values computed with PyTorch 2.x (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.interpolate).
// max_ceil_p1: shape [1, 2, 4, 4]
const MAX_CEIL_P1: &[f32] = &[0.732231438, 0.935616016, 0.999957621, 0.928959727, 0.749174356, 0.999871731, 0.999871731, 0.727573276, 0.749174356, 0.999871731, 0.999871731, 0.727573276, -0.83950448, -0.253571451, 0.464995384, 0.464995384, 0.9403404, 0.999739349, 0.923828244, 0.424095839, 0.999560535, 0.999560535, 0.758132219, 0.758132219, 0.999560535, 0.999560535, 0.944890082, 0.944890082, -0.240364388, 0.477018088, 0.944890082, 0.944890082];
const MAX_CEIL_P1_SHAPE: &[usize] = &[1, 2, 4, 4];
// max_ceil_overhang: shape [1, 1, 4, 4]
const MAX_CEIL_OVERHANG: &[f32] = &[0.744643092, 0.999957621, 0.999957621, 0.926415503, 0.458951473, 0.937999964, 0.999871731, 0.999739349, 0.722881377, 0.753670812, 0.999739349, 0.999739349, 0.92119813, 0.471017659, 0.942637146, 0.999560535];
const MAX_CEIL_OVERHANG_SHAPE: &[usize] = &[1, 1, 4, 4];
// max_ceil_drop: shape [1, 1, 3, 3]
const MAX_CEIL_DROP: &[f32] = &[0.099833414, 0.744643092, 0.999957621, 0.928959727, 0.732231438, 0.0815021545, 0.937999964, 0.999871731, 0.749174356];
const MAX_CEIL_DROP_SHAPE: &[usize] = &[1, 1, 3, 3];
// max_dil2: shape [1, 1, 5, 5]
const MAX_DIL2: &[f32] = &[0.926415503, 0.999871731, 0.926415503, 0.727573276, 0.430257469, 0.935616016, 0.999957621, 0.935616016, 0.999957621, 0.935616016, 0.999739349, 0.999871731, 0.999739349, 0.9403404, 0.999739349, 0.106611691, 0.458951473, 0.749174356, 0.937999964, 0.749174356, 0.999739349, 0.999871731, 0.999739349, 0.9403404, 0.999739349];
const MAX_DIL2_SHAPE: &[usize] = &[1, 1, 5, 5];
// avg_ceil_p1_incl: shape [1, 2, 4, 4]
const AVG_CEIL_P1_INCL: &[f32] = &[0.191261142, 0.262957871, 0.123530202, 0.0120802922, 0.0456711315, 0.0561199971, 0.017315276, -0.00371550513, -0.0117322868, 0.0193648934, 0.0572373532, 0.034374129, -0.303113699, -0.279880673, 0.0541348271, 0.116248846, 0.162717417, 0.120047539, -0.0842026249, -0.0922792926, 0.03290971, 0.0164378211, -0.0313494876, -0.0264214817, 0.0216507763, 0.0576949529, 0.0649808571, 0.0289965663, -0.135912761, 0.0605948754, 0.364077777, 0.23622252];
const AVG_CEIL_P1_INCL_SHAPE: &[usize] = &[1, 2, 4, 4];
// avg_ceil_p1_excl: shape [1, 2, 4, 4]
const AVG_CEIL_P1_EXCL: &[f32] = &[0.430337578, 0.394436806, 0.185295299, 0.0362408757, 0.0685066953, 0.0561199971, 0.017315276, -0.00743101025, -0.0175984297, 0.0193648934, 0.0572373532, 0.0687482581, -0.909341097, -0.559761345, 0.108269654, 0.464995384, 0.366114199, 0.180071309, -0.126303941, -0.276837885, 0.0493645668, 0.0164378211, -0.0313494876, -0.0528429635, 0.0324761644, 0.0576949529, 0.0649808571, 0.0579931326, -0.407738268, 0.121189751, 0.728155553, 0.944890082];
const AVG_CEIL_P1_EXCL_SHAPE: &[usize] = &[1, 2, 4, 4];
// avg_p1_excl: shape [1, 1, 5, 5]
const AVG_P1_EXCL: &[f32] = &[0.553477705, 0.565825522, 0.563879669, 0.485615373, 0.43316251, 0.124262489, 0.104604378, 0.0623426437, 0.0116431518, -0.0151793463, -0.10983628, -0.122353859, -0.140739515, -0.140076742, -0.136420652, -0.0637228861, -0.0371653177, 0.0152302254, 0.0655644313, 0.0903717279, 0.271499664, 0.353170961, 0.493211031, 0.566497266, 0.591489136];
const AVG_P1_EXCL_SHAPE: &[usize] = &[1, 1, 5, 5];
// avg_p1_incl: shape [1, 1, 5, 5]
const AVG_P1_INCL: &[f32] = &[0.245990098, 0.377216995, 0.375919759, 0.323743582, 0.19251667, 0.0828416646, 0.104604378, 0.0623426437, 0.0116431518, -0.0101195639, -0.0732241869, -0.122353859, -0.140739515, -0.140076742, -0.090947099, -0.0424819253, -0.0371653177, 0.0152302254, 0.0655644313, 0.0602478199, 0.120666519, 0.235447302, 0.328807354, 0.377664864, 0.262884051];
const AVG_P1_INCL_SHAPE: &[usize] = &[1, 1, 5, 5];
// avg_same_s2_excl: shape [1, 1, 3, 3]
const AVG_SAME_S2_EXCL: &[f32] = &[-0.02904539, 0.0189304985, 0.0511726253, -0.0498627424, -0.0665483847, -0.0576427653, -0.36514616, -0.415759414, -0.316979825];
const AVG_SAME_S2_EXCL_SHAPE: &[usize] = &[1, 1, 3, 3];
// avg_ceil_k2: shape [1, 1, 4, 4]
const AVG_CEIL_K2: &[f32] = &[0.267655253, 0.19599387, 0.0218154192, -0.124153465, 0.122845963, 0.251071244, 0.247970462, 0.160383046, -0.156908363, 0.0303493887, 0.201732486, 0.268740416, -0.114777192, -0.743007302, -0.982597828, -0.83578223];
const AVG_CEIL_K2_SHAPE: &[usize] = &[1, 1, 4, 4];
// adaptive_7x5_to_3x2: shape [1, 2, 3, 2]
const ADAPTIVE_7X5_TO_3X2: &[f32] = &[0.104604371, 0.0116431518, -0.0371653177, 0.0655644313, -0.0415645577, -0.122853518, 0.0605850667, -0.0424950309, 0.0171647072, 0.108304493, -0.0896998271, -0.141211063];
const ADAPTIVE_7X5_TO_3X2_SHAPE: &[usize] = &[1, 2, 3, 2];
// adaptive_6_to_3x2: shape [1, 1, 3, 2]
const ADAPTIVE_6_TO_3X2: &[f32] = &[0.424582571, 0.185295299, -0.110463023, 0.318099856, -0.36514616, -0.356454104];
const ADAPTIVE_6_TO_3X2_SHAPE: &[usize] = &[1, 1, 3, 2];
// adaptive_up_2x3_to_3x5: shape [1, 1, 3, 5]
const ADAPTIVE_UP_2X3_TO_3X5: &[f32] = &[0.099833414, 0.276359856, 0.452886283, 0.598764658, 0.744643092, 0.517724693, 0.622073352, 0.726421952, 0.781611681, 0.83680141, 0.935616016, 0.967786789, 0.999957621, 0.964458704, 0.928959727];
const ADAPTIVE_UP_2X3_TO_3X5_SHAPE: &[usize] = &[1, 1, 3, 5];
// upsample2: shape [1, 2, 4, 6]
const UPSAMPLE2: &[f32] = &[0.099833414, 0.099833414, 0.452886283, 0.452886283, 0.744643092, 0.744643092, 0.099833414, 0.099833414, 0.452886283, 0.452886283, 0.744643092, 0.744643092, 0.935616016, 0.935616016, 0.999957621, 0.999957621, 0.928959727, 0.928959727, 0.935616016, 0.935616016, 0.999957621, 0.999957621, 0.928959727, 0.928959727, 0.732231438, 0.732231438, 0.436399072, 0.436399072, 0.0815021545, 0.0815021545, 0.732231438, 0.732231438, 0.436399072, 0.436399072, 0.0815021545, 0.0815021545, -0.284425706, -0.284425706, -0.611857891, -0.611857891, -0.856477976, -0.856477976, -0.284425706, -0.284425706, -0.611857891, -0.611857891, -0.856477976, -0.856477976];
const UPSAMPLE2_SHAPE: &[usize] = &[1, 2, 4, 6];

    #[test]
    fn output_size_rules() {
        assert_eq!(output_size(6, 3, 2, 1, 1, 1, true), 4);
        assert_eq!(output_size(6, 3, 2, 1, 1, 1, false), 3);
        assert_eq!(output_size(5, 2, 2, 1, 1, 1, true), 3); // last window would start in the right padding
        assert_eq!(output_size(112, 3, 2, 1, 1, 1, false), 56);
        assert_eq!(output_size(55, 3, 2, 0, 0, 1, true), 27);
        assert_eq!(output_size(2, 3, 1, 0, 0, 1, false), 0);
        assert_eq!(output_size(7, 3, 0, 0, 0, 1, false), 0);
        assert_eq!(output_size(7, 3, 1, 2, 2, 2, false), 7);
    }

    #[test]
    fn max_pool_ceil_and_padding() {
        let y = max_pool2d(&sin_input(&[1, 2, 6, 6]), [3, 3], [2, 2], [1; 4], [1, 1], true).unwrap();
        assert_close(&y, MAX_CEIL_P1_SHAPE, MAX_CEIL_P1);
        let y = max_pool2d(&sin_input(&[1, 1, 8, 8]), [3, 3], [2, 2], [0; 4], [1, 1], true).unwrap();
        assert_close(&y, MAX_CEIL_OVERHANG_SHAPE, MAX_CEIL_OVERHANG);
        let y = max_pool2d(&sin_input(&[1, 1, 5, 5]), [2, 2], [2, 2], [1; 4], [1, 1], true).unwrap();
        assert_close(&y, MAX_CEIL_DROP_SHAPE, MAX_CEIL_DROP);
    }

    #[test]
    fn max_pool_dilation() {
        let y = max_pool2d(&sin_input(&[1, 1, 7, 7]), [3, 3], [1, 1], [1; 4], [2, 2], false).unwrap();
        assert_close(&y, MAX_DIL2_SHAPE, MAX_DIL2);
    }

    #[test]
    fn avg_pool_divisors() {
        let x = sin_input(&[1, 2, 6, 6]);
        let y = avg_pool2d(&x, [3, 3], [2, 2], [1; 4], true, true).unwrap();
        assert_close(&y, AVG_CEIL_P1_INCL_SHAPE, AVG_CEIL_P1_INCL);
        let y = avg_pool2d(&x, [3, 3], [2, 2], [1; 4], true, false).unwrap();
        assert_close(&y, AVG_CEIL_P1_EXCL_SHAPE, AVG_CEIL_P1_EXCL);
        let x = sin_input(&[1, 1, 5, 5]);
        let y = avg_pool2d(&x, [3, 3], [1, 1], [1; 4], false, false).unwrap();
        assert_close(&y, AVG_P1_EXCL_SHAPE, AVG_P1_EXCL);
        let y = avg_pool2d(&x, [3, 3], [1, 1], [1; 4], false, true).unwrap();
        assert_close(&y, AVG_P1_INCL_SHAPE, AVG_P1_INCL);
        let y = avg_pool2d(&sin_input(&[1, 1, 6, 6]), [3, 3], [2, 2], [0, 1, 0, 1], false, false).unwrap();
        assert_close(&y, AVG_SAME_S2_EXCL_SHAPE, AVG_SAME_S2_EXCL);
        let y = avg_pool2d(&sin_input(&[1, 1, 7, 7]), [2, 2], [2, 2], [0; 4], true, true).unwrap();
        assert_close(&y, AVG_CEIL_K2_SHAPE, AVG_CEIL_K2);
    }

    #[test]
    fn adaptive_avg_pool() {
        let y = adaptive_avg_pool2d(&sin_input(&[1, 2, 7, 5]), [3, 2]).unwrap();
        assert_close(&y, ADAPTIVE_7X5_TO_3X2_SHAPE, ADAPTIVE_7X5_TO_3X2);
        let y = adaptive_avg_pool2d(&sin_input(&[1, 1, 6, 6]), [3, 2]).unwrap();
        assert_close(&y, ADAPTIVE_6_TO_3X2_SHAPE, ADAPTIVE_6_TO_3X2);
        let y = adaptive_avg_pool2d(&sin_input(&[1, 1, 2, 3]), [3, 5]).unwrap();
        assert_close(&y, ADAPTIVE_UP_2X3_TO_3X5_SHAPE, ADAPTIVE_UP_2X3_TO_3X5);
        assert!(adaptive_avg_pool2d(&sin_input(&[1, 1, 2, 3]), [0, 5]).is_err());
    }

    #[test]
    fn upsample() {
        let y = upsample_nearest(&sin_input(&[1, 2, 2, 3]), 2).unwrap();
        assert_close(&y, UPSAMPLE2_SHAPE, UPSAMPLE2);
    }

    #[test]
    fn pool_bad_input_is_error() {
        let x = sin_input(&[1, 1, 2, 2]);
        assert!(max_pool2d(&x, [3, 3], [1, 1], [0; 4], [1, 1], false).is_err());
        assert!(max_pool2d(&x, [1, 1], [0, 1], [0; 4], [1, 1], false).is_err());
        assert!(avg_pool2d(&x, [3, 3], [1, 1], [0; 4], false, true).is_err());
        assert!(avg_pool2d(&sin_input(&[2, 2]), [1, 1], [1, 1], [0; 4], false, true).is_err());
        assert!(upsample_nearest(&x, 0).is_err());
    }
}
