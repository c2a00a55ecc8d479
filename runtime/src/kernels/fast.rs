//! Fast CPU kernels for inference (f32, contiguous NCHW, no autograd): convolution lowered to
//! one GEMM per image and group (`gemm` crate, runtime SIMD dispatch) on a `[C*kh*kw, OH*OW]`
//! im2col matrix (no copy at all for 1x1 stride-1 convs), so the product is already NCHW;
//! a direct depthwise convolution; bias and activation fused into the output pass; a
//! per-channel affine (unfolded BatchNorm) with activation; element-wise add with activation.
//!
//! Every entry point returns `Ok(None)` when it does not apply (not on the CPU, not f32, a
//! tensor that tracks gradients), and the caller falls back to the portable candle path.

use candle_core::{CpuStorage, Device, Result, Storage, Tensor};
use rayon::prelude::*;
use tlc_compiler::ir::Activation;

#[path = "packed.rs"]
pub mod packed;

/// Runs `f` on the contiguous f32 CPU data of `t`, or returns `None`.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if t.track_op() || !t.device().is_cpu() {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Some(f(&v[start..end])),
        _ => None,
    }
}

/// Whether the activation is applied by [`apply_act`] (the others go through candle).
pub fn act_supported(_a: Activation) -> bool {
    true
}

#[inline(always)]
fn act_slice_impl(a: Activation, v: &mut [f32]) {
    match a {
        Activation::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
        Activation::Relu6 => v.iter_mut().for_each(|x| *x = x.clamp(0.0, 6.0)),
        Activation::LeakyRelu(s) => {
            let s = s as f32;
            v.iter_mut().for_each(|x| {
                if *x < 0.0 {
                    *x *= s
                }
            })
        }
        Activation::Silu => v.iter_mut().for_each(|x| *x /= 1.0 + (-*x).exp()),
        Activation::HardSwish => v.iter_mut().for_each(|x| *x = *x * (*x + 3.0).clamp(0.0, 6.0) / 6.0),
        Activation::HardSigmoid => v.iter_mut().for_each(|x| *x = (*x + 3.0).clamp(0.0, 6.0) / 6.0),
        Activation::Sigmoid => v.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp())),
        Activation::Tanh => v.iter_mut().for_each(|x| *x = x.tanh()),
        Activation::Mish => v.iter_mut().for_each(|x| *x *= (x.max(0.0) + (-x.abs()).exp().ln_1p()).tanh()),
        Activation::Gelu => v.iter_mut().for_each(|x| *x = 0.5 * *x * (1.0 + erf_f32(*x * std::f32::consts::FRAC_1_SQRT_2))),
    }
}

/// `erf` as a rational function on [-4, 4] (Eigen's/XLA's single-precision approximation,
/// within a few ulp; branch-free so it vectorizes).
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_6e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

/// Applies `a` in place.
pub fn apply_act(a: Option<Activation>, v: &mut [f32]) {
    if let Some(a) = a {
        simd(|| act_slice_impl(a, v))
    }
}

/// Runs `f` compiled for AVX2+FMA when the CPU has them (auto-vectorised loops), else as is.
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return unsafe { avx2(f) };
        }
    }
    f()
}

fn threads() -> usize {
    rayon::current_num_threads()
}

/// Conv geometry.
#[derive(Clone, Copy)]
pub struct Geo {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: [usize; 2],
    pad: [usize; 4],
    dil: [usize; 2],
}

/// `[lo, hi)` of output positions whose input index `o * s + off - p` lies in `0..n`.
#[inline(always)]
fn valid_range(out: usize, s: usize, off: usize, p: usize, n: usize) -> (usize, usize) {
    // o * s + off >= p  and  o * s + off < p + n
    let lo = if off >= p { 0 } else { (p - off).div_ceil(s) };
    let hi = if p + n > off { (p + n - off).div_ceil(s) } else { 0 };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

/// Fills the im2col matrix rows for channels `c0..c0+cg` of one image: row `(c, i, j)`,
/// column `oy * ow + ox`.
fn im2col(x: &[f32], g: &Geo, c0: usize, cg: usize, col: &mut [f32]) {
    let p = g.oh * g.ow;
    let rows_per_c = g.kh * g.kw;
    let chunk = (cg * rows_per_c).div_ceil(threads() * 4).max(1);
    col.par_chunks_mut(p * chunk).enumerate().for_each(|(ci, block)| {
        simd(|| {
            for (ri, row) in block.chunks_mut(p).enumerate() {
                let r = ci * chunk + ri;
                let (c, t) = (c0 + r / rows_per_c, r % rows_per_c);
                let (i, j) = (t / g.kw, t % g.kw);
                let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
                let (ylo, yhi) = valid_range(g.oh, g.stride[0], i * g.dil[0], g.pad[0], g.h);
                let (xlo, xhi) = valid_range(g.ow, g.stride[1], j * g.dil[1], g.pad[2], g.w);
                row[..ylo * g.ow].fill(0.0);
                row[yhi * g.ow..].fill(0.0);
                for oy in ylo..yhi {
                    let iy = oy * g.stride[0] + i * g.dil[0] - g.pad[0];
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    let dst = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    dst[..xlo].fill(0.0);
                    dst[xhi..].fill(0.0);
                    if xhi > xlo {
                        let x0 = xlo * g.stride[1] + j * g.dil[1] - g.pad[2];
                        if g.stride[1] == 1 {
                            dst[xlo..xhi].copy_from_slice(&src[x0..x0 + (xhi - xlo)]);
                        } else {
                            for (k, d) in dst[xlo..xhi].iter_mut().enumerate() {
                                *d = src[x0 + k * g.stride[1]];
                            }
                        }
                    }
                }
            }
        })
    });
}

/// `dst[m, n] (+)= lhs[m, k] * rhs[k, n]`, all row-major contiguous.
fn matmul(m: usize, n: usize, k: usize, dst: &mut [f32], read_dst: bool, lhs: &[f32], rhs: &[f32]) {
    let t = threads();
    let par = if t > 1 && m * n * k > 64 * 64 * 64 { gemm::Parallelism::Rayon(t) } else { gemm::Parallelism::None };
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

/// Convolution (PyTorch `F.conv2d` semantics, padding `[top, bottom, left, right]`) with
/// fused bias and activation. `Ok(None)` when the fast path does not apply.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: [usize; 2],
    pad: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
    act: Option<Activation>,
) -> Result<Option<Tensor>> {
    conv2d_residual(x, w, bias, stride, pad, dilation, groups, None, act)
}

/// [`conv2d`] with `act(conv + residual)` (`residual` of the output's shape).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_residual(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: [usize; 2],
    pad: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
    residual: Option<&Tensor>,
    act: Option<Activation>,
) -> Result<Option<Tensor>> {
    if act.is_some_and(|a| !act_supported(a)) {
        return Ok(None);
    }
    let (n, c, h, wd) = x.dims4()?;
    let (co, cig, kh, kw) = w.dims4()?;
    if groups == 0 || c % groups != 0 || co % groups != 0 || cig * groups != c || stride.contains(&0) || dilation.contains(&0) {
        return Ok(None);
    }
    let (eh, ew) = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1);
    if h + pad[0] + pad[1] < eh || wd + pad[2] + pad[3] < ew {
        return Ok(None);
    }
    let oh = (h + pad[0] + pad[1] - eh) / stride[0] + 1;
    let ow = (wd + pad[2] + pad[3] - ew) / stride[1] + 1;
    let g = Geo { c, h, w: wd, kh, kw, oh, ow, stride, pad, dil: dilation };
    let bias_v: Option<Vec<f32>> = match bias {
        Some(b) => match with_f32(b, |v| v.to_vec()) {
            Some(v) if v.len() == co => Some(v),
            _ => return Ok(None),
        },
        None => None,
    };
    if residual.is_some_and(|r| r.dims() != [n, co, oh, ow]) {
        return Ok(None);
    }
    let res_v: Option<Vec<f32>> = match residual {
        Some(r) => match with_f32(r, |v| v.to_vec()) {
            Some(v) => Some(v),
            None => return Ok(None),
        },
        None => None,
    };
    let out = with_f32(x, |xs| {
        with_f32(w, |ws| {
            if groups == c && co == c && groups > 1 && res_v.is_none() {
                depthwise(xs, ws, bias_v.as_deref(), n, &g, act)
            } else if groups == 1 && use_packed() {
                let pw = packed::PackedWeights::new(ws, co, cig * kh * kw, bias_v.as_deref());
                packed::conv(xs, &pw, n, &g, res_v.as_deref(), act)
            } else {
                gemm_conv(xs, ws, bias_v.as_deref(), n, co, groups, &g, res_v.as_deref(), act)
            }
        })
    });
    match out.flatten() {
        Some(v) => Ok(Some(Tensor::from_vec(v, (n, co, oh, ow), &Device::Cpu)?)),
        None => Ok(None),
    }
}

/// Dense convolution with weights packed once ([`packed::PackedWeights`], bias included),
/// kernel `[kh, kw]`, then `+ residual` (a tensor of the output's shape) and `act`.
/// `Ok(None)` when it does not apply.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_packed(
    x: &Tensor,
    pw: &packed::PackedWeights,
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 4],
    dilation: [usize; 2],
    residual: Option<&Tensor>,
    act: Option<Activation>,
) -> Result<Option<Tensor>> {
    let (n, c, h, wd) = x.dims4()?;
    let [kh, kw] = kernel;
    if !packed::available() || pw.k != c * kh * kw || stride.contains(&0) || dilation.contains(&0) || kh == 0 || kw == 0 {
        return Ok(None);
    }
    let (eh, ew) = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1);
    if h + pad[0] + pad[1] < eh || wd + pad[2] + pad[3] < ew {
        return Ok(None);
    }
    let oh = (h + pad[0] + pad[1] - eh) / stride[0] + 1;
    let ow = (wd + pad[2] + pad[3] - ew) / stride[1] + 1;
    let co = pw.co;
    if residual.is_some_and(|r| r.dims() != [n, co, oh, ow]) {
        return Ok(None);
    }
    let g = Geo { c, h, w: wd, kh, kw, oh, ow, stride, pad, dil: dilation };
    let out = with_f32(x, |xs| match residual {
        Some(r) => with_f32(r, |rs| packed::conv(xs, pw, n, &g, Some(rs), act)),
        None => Some(packed::conv(xs, pw, n, &g, None, act)),
    });
    match out.flatten() {
        Some(v) => Ok(Some(Tensor::from_vec(v, (n, co, oh, ow), &Device::Cpu)?)),
        None => Ok(None),
    }
}

/// Whether dense convs use the packed 6x16 kernel ([`packed`], the default on AVX2+FMA CPUs)
/// rather than im2col + the `gemm` crate (`TLC_CONV=gemm`, kept for comparison).
pub fn use_packed() -> bool {
    static P: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *P.get_or_init(|| packed::available() && std::env::var("TLC_CONV").map_or(true, |v| v != "gemm"))
}

#[allow(clippy::too_many_arguments)]
fn gemm_conv(x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, co: usize, groups: usize, g: &Geo, residual: Option<&[f32]>, act: Option<Activation>) -> Vec<f32> {
    let p = g.oh * g.ow;
    let cg = g.c / groups;
    let cog = co / groups;
    let k = cg * g.kh * g.kw;
    let direct = g.kh == 1 && g.kw == 1 && g.stride == [1, 1] && g.pad == [0; 4];
    let mut out = vec![0f32; n * co * p];
    let mut col = if direct { Vec::new() } else { vec![0f32; k * p] };
    for b in 0..n {
        let xb = &x[b * g.c * g.h * g.w..(b + 1) * g.c * g.h * g.w];
        let ob = &mut out[b * co * p..(b + 1) * co * p];
        // The GEMM accumulates onto bias (+ residual) already in place.
        match (bias, residual) {
            (Some(bias), None) => ob.par_chunks_mut(p).zip(bias.par_iter()).for_each(|(row, &v)| row.fill(v)),
            (_, Some(r)) => {
                let rb = &r[b * co * p..(b + 1) * co * p];
                ob.par_chunks_mut(p).zip(rb.par_chunks(p)).enumerate().for_each(|(ch, (row, src))| {
                    let v = bias.map_or(0.0, |bv| bv[ch]);
                    simd(|| row.iter_mut().zip(src).for_each(|(d, s)| *d = s + v));
                })
            }
            (None, None) => {}
        }
        for gi in 0..groups {
            let rhs: &[f32] = if direct {
                &xb[gi * cg * p..(gi + 1) * cg * p]
            } else {
                im2col(xb, g, gi * cg, cg, &mut col);
                &col
            };
            let lhs = &w[gi * cog * k..(gi + 1) * cog * k];
            matmul(cog, p, k, &mut ob[gi * cog * p..(gi + 1) * cog * p], bias.is_some() || residual.is_some(), lhs, rhs);
        }
        if act.is_some() {
            let chunk = (co * p).div_ceil(threads() * 4).max(1024);
            ob.par_chunks_mut(chunk).for_each(|v| apply_act(act, v));
        }
    }
    out
}

/// Direct depthwise convolution ([`super::depthwise`]): one output plane per (image, channel)
/// in parallel, every output accumulated over its taps in registers, activation fused.
fn depthwise(x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, g: &Geo, act: Option<Activation>) -> Vec<f32> {
    let (oh, ow) = (g.oh, g.ow);
    let taps = g.kh * g.kw;
    let plane = super::depthwise::Plane { h: g.h, w: g.w, kh: g.kh, kw: g.kw, oh, ow, stride: g.stride, pad: g.pad, dil: g.dil };
    let mut out = vec![0f32; n * g.c * oh * ow];
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane_idx, o)| {
        let c = plane_idx % g.c;
        let xi = &x[plane_idx * g.h * g.w..(plane_idx + 1) * g.h * g.w];
        let wc = &w[c * taps..(c + 1) * taps];
        super::depthwise::plane(xi, wc, bias.map_or(0.0, |b| b[c]), &plane, o);
        if act.is_some() {
            apply_act(act, o);
        }
    });
    out
}

/// `act(x * scale[c] + shift[c])` on NCHW (or `(N, C)`) `x`: an unfolded BatchNorm.
pub fn channel_affine(x: &Tensor, scale: &[f32], shift: &[f32], act: Option<Activation>) -> Result<Option<Tensor>> {
    if act.is_some_and(|a| !act_supported(a)) {
        return Ok(None);
    }
    let dims = x.dims().to_vec();
    if dims.len() < 2 || dims[1] != scale.len() {
        return Ok(None);
    }
    let c = dims[1];
    let inner: usize = dims[2..].iter().product();
    let out = with_f32(x, |xs| {
        let mut out = vec![0f32; xs.len()];
        let rows = inner.max(1);
        let per = (xs.len() / rows).div_ceil(threads() * 4).max(1);
        out.par_chunks_mut(rows * per).zip(xs.par_chunks(rows * per)).enumerate().for_each(|(bi, (o, s))| {
            simd(|| {
                for (ri, (orow, srow)) in o.chunks_mut(rows).zip(s.chunks(rows)).enumerate() {
                    let ch = (bi * per + ri) % c;
                    let (a, b) = (scale[ch], shift[ch]);
                    for (d, v) in orow.iter_mut().zip(srow) {
                        *d = v * a + b;
                    }
                    if let Some(f) = act {
                        act_slice_impl(f, orow);
                    }
                }
            })
        });
        out
    });
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, dims, &Device::Cpu)?)),
        None => Ok(None),
    }
}

/// `act(a + b)` for same-shape tensors.
pub fn add_act(a: &Tensor, b: &Tensor, act: Option<Activation>) -> Result<Option<Tensor>> {
    if a.dims() != b.dims() || act.is_some_and(|f| !act_supported(f)) {
        return Ok(None);
    }
    let out = with_f32(a, |xa| {
        with_f32(b, |xb| {
            let mut out = vec![0f32; xa.len()];
            let per = xa.len().div_ceil(threads() * 4).max(4096);
            out.par_chunks_mut(per).zip(xa.par_chunks(per).zip(xb.par_chunks(per))).for_each(|(o, (p, q))| {
                simd(|| {
                    for ((d, u), v) in o.iter_mut().zip(p).zip(q) {
                        *d = u + v;
                    }
                    if let Some(f) = act {
                        act_slice_impl(f, o);
                    }
                })
            });
            out
        })
    });
    match out.flatten() {
        Some(v) => Ok(Some(Tensor::from_vec(v, a.dims(), &Device::Cpu)?)),
        None => Ok(None),
    }
}

/// `act(x @ w^T + b)` on the last dim of `x`, `w` `[out, in]` (PyTorch `nn.Linear`).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Option<Activation>) -> Result<Option<Tensor>> {
    let dims = x.dims().to_vec();
    let Some(&inf) = dims.last() else { return Ok(None) };
    let (outf, winf) = w.dims2()?;
    if winf != inf {
        return Ok(None);
    }
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let bias_v: Option<Vec<f32>> = match b {
        Some(b) => match with_f32(b, |v| v.to_vec()) {
            Some(v) if v.len() == outf => Some(v),
            _ => return Ok(None),
        },
        None => None,
    };
    let out = with_f32(x, |xs| {
        with_f32(w, |ws| {
            let mut out = vec![0f32; rows * outf];
            if let Some(bv) = &bias_v {
                out.par_chunks_mut(outf).for_each(|r| r.copy_from_slice(bv));
            }
            let t = threads();
            let par = if t > 1 && rows * outf * inf > 64 * 64 * 64 { gemm::Parallelism::Rayon(t) } else { gemm::Parallelism::None };
            // dst[rows, out] = x[rows, in] * w^T (w^T read with column stride `in`).
            unsafe {
                gemm::gemm(rows, outf, inf, out.as_mut_ptr(), 1, outf as isize, bias_v.is_some(), xs.as_ptr(), 1, inf as isize, ws.as_ptr(), inf as isize, 1, 1.0f32, 1.0f32, false, false, false, par)
            }
            if act.is_some() {
                let chunk = out.len().div_ceil(threads() * 4).max(1024);
                out.par_chunks_mut(chunk).for_each(|v| apply_act(act, v));
            }
            out
        })
    });
    let mut shape = dims;
    *shape.last_mut().unwrap() = outf;
    match out.flatten() {
        Some(v) => Ok(Some(Tensor::from_vec(v, shape, &Device::Cpu)?)),
        None => Ok(None),
    }
}

/// LayerNorm over the last dim (`channels == false`) or over dim 1 of NCHW (`true`).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, channels: bool) -> Result<Option<Tensor>> {
    let dims = x.dims().to_vec();
    if dims.is_empty() || (channels && dims.len() != 4) {
        return Ok(None);
    }
    let (Some(wv), Some(bv)) = (with_f32(w, |v| v.to_vec()), with_f32(b, |v| v.to_vec())) else { return Ok(None) };
    let eps = eps as f32;
    let out = with_f32(x, |xs| {
        let mut out = vec![0f32; xs.len()];
        if !channels {
            let d = *dims.last().unwrap();
            if wv.len() != d || bv.len() != d || d == 0 {
                return None;
            }
            let per = (xs.len() / d).div_ceil(threads() * 4).max(1);
            out.par_chunks_mut(d * per).zip(xs.par_chunks(d * per)).for_each(|(o, s)| {
                simd(|| {
                    for (orow, srow) in o.chunks_mut(d).zip(s.chunks(d)) {
                        let mean = srow.iter().sum::<f32>() / d as f32;
                        let var = srow.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                        let r = 1.0 / (var + eps).sqrt();
                        for (((o, v), g), bb) in orow.iter_mut().zip(srow).zip(&wv).zip(&bv) {
                            *o = (v - mean) * r * g + bb;
                        }
                    }
                })
            });
        } else {
            let (c, hw) = (dims[1], dims[2] * dims[3]);
            if wv.len() != c || bv.len() != c || c == 0 {
                return None;
            }
            out.par_chunks_mut(c * hw).zip(xs.par_chunks(c * hw)).for_each(|(o, s)| {
                simd(|| {
                    let mut mean = vec![0f32; hw];
                    let mut var = vec![0f32; hw];
                    for ch in s.chunks(hw) {
                        for (m, v) in mean.iter_mut().zip(ch) {
                            *m += v;
                        }
                    }
                    mean.iter_mut().for_each(|m| *m /= c as f32);
                    for ch in s.chunks(hw) {
                        for ((q, v), m) in var.iter_mut().zip(ch).zip(&mean) {
                            *q += (v - m) * (v - m);
                        }
                    }
                    var.iter_mut().for_each(|q| *q = 1.0 / (*q / c as f32 + eps).sqrt());
                    for (k, (och, sch)) in o.chunks_mut(hw).zip(s.chunks(hw)).enumerate() {
                        let (g, bb) = (wv[k], bv[k]);
                        for (((o, v), m), r) in och.iter_mut().zip(sch).zip(&mean).zip(&var) {
                            *o = (v - m) * r * g + bb;
                        }
                    }
                })
            });
        }
        Some(out)
    });
    match out.flatten() {
        Some(v) => Ok(Some(Tensor::from_vec(v, dims, &Device::Cpu)?)),
        None => Ok(None),
    }
}

/// `exp` for f32, branch-free so loops over it vectorise: `2^n * p(r)` with `n = round(x /
/// ln 2)`, `r = x - n ln 2` (ln 2 split in two), a degree-6 polynomial (Cephes `expf`);
/// within 2 ulp of libm on the range where the result is normal, 0 below about -87.3.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Multi-head self-attention core on the packed projection `qkv` `[N, L, 3D]` (q, k, v
/// side by side, `heads` heads of `D / heads` each, PyTorch `nn.MultiheadAttention` layout):
/// `softmax(q k^T / sqrt(hd)) v` per (image, head), read in place with strides (no
/// transposes), written as `[N, L, D]` ready for the output projection. One task per
/// (image, head).
pub fn attention_qkv(qkv: &Tensor, heads: usize) -> Result<Option<Tensor>> {
    let (n, l, d3) = qkv.dims3()?;
    if heads == 0 || d3 % (3 * heads) != 0 || l == 0 {
        return Ok(None);
    }
    let d = d3 / 3;
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let out = with_f32(qkv, |v| {
        let mut out = vec![0f32; n * l * d];
        let optr = out.as_mut_ptr() as usize;
        (0..n * heads).into_par_iter().for_each(|t| {
            let (b, h) = (t / heads, t % heads);
            let base = b * l * d3 + h * hd;
            let (q, k, vv) = (&v[base..], &v[base + d..], &v[base + 2 * d..]);
            let mut sc = vec![0f32; l * l];
            // SAFETY: every index read is < l * d3 from `base` (rows of length 3d, columns
            // within the head); each task writes its own head's columns of `out`.
            unsafe {
                gemm::gemm(l, l, hd, sc.as_mut_ptr(), 1, l as isize, false, q.as_ptr(), 1, d3 as isize, k.as_ptr(), d3 as isize, 1, 0.0f32, scale, false, false, false, gemm::Parallelism::None);
            }
            simd(|| {
                for row in sc.chunks_mut(l) {
                    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    row.iter_mut().for_each(|x| *x = exp_f32(*x - m));
                    let inv = 1.0 / row.iter().sum::<f32>();
                    row.iter_mut().for_each(|x| *x *= inv);
                }
            });
            unsafe {
                let dst = (optr as *mut f32).add(b * l * d + h * hd);
                gemm::gemm(l, hd, l, dst, 1, d as isize, false, sc.as_ptr(), 1, l as isize, vv.as_ptr(), 1, d3 as isize, 0.0f32, 1.0f32, false, false, false, gemm::Parallelism::None);
            }
        });
        out
    });
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, (n, l, d), &Device::Cpu)?)),
        None => Ok(None),
    }
}

/// Max pooling (`count_include_pad == None`) or average pooling (`Some(count_include_pad)`)
/// on NCHW `x`, PyTorch semantics: padding `[top, bottom, left, right]` (never read: -inf for
/// max, and for average counted in the divisor only with `count_include_pad`, never the
/// ceil-mode overhang past it), `ceil` output sizes, dilation (max only). Reads the input
/// slices directly, one plane per task. `Ok(None)` when it does not apply.
pub fn pool2d(x: &Tensor, k: [usize; 2], s: [usize; 2], pad: [usize; 4], dil: [usize; 2], ceil: bool, avg: Option<bool>) -> Result<Option<Tensor>> {
    let (n, c, h, w) = x.dims4()?;
    if avg.is_some() && dil != [1, 1] {
        return Ok(None);
    }
    let oh = super::output_size(h, k[0], s[0], pad[0], pad[1], dil[0], ceil);
    let ow = super::output_size(w, k[1], s[1], pad[2], pad[3], dil[1], ceil);
    if oh == 0 || ow == 0 || h == 0 || w == 0 {
        return Ok(None);
    }
    // Per output index along one axis: the valid taps `[lo, hi)`, the first input index
    // (of tap 0, may be negative) and the PyTorch divisor along that axis.
    let axis = |size: usize, k: usize, s: usize, before: usize, after: usize, d: usize, out: usize| -> Vec<(usize, usize, isize, usize)> {
        (0..out)
            .map(|o| {
                let start = (o * s) as isize - before as isize;
                let lo = (0..k).find(|&t| start + (t * d) as isize >= 0).unwrap_or(k);
                let hi = (lo..k).take_while(|&t| start + ((t * d) as isize) < size as isize).last().map_or(lo, |t| t + 1);
                let end = (start + k as isize).min((size + after) as isize);
                let div = match avg {
                    Some(true) => (end - start).max(0) as usize,
                    _ => hi - lo,
                };
                (lo, hi, start, div)
            })
            .collect()
    };
    let ys = axis(h, k[0], s[0], pad[0], pad[1], dil[0], oh);
    let xs = axis(w, k[1], s[1], pad[2], pad[3], dil[1], ow);
    if avg.is_some() && (ys.iter().any(|r| r.3 == 0) || xs.iter().any(|r| r.3 == 0)) {
        return Ok(None);
    }
    let out = with_f32(x, |v| {
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow).zip(v.par_chunks(h * w)).for_each(|(o, p)| {
            simd(|| {
                for (oy, &(ilo, ihi, y0, dy)) in ys.iter().enumerate() {
                    let orow = &mut o[oy * ow..(oy + 1) * ow];
                    for (d, &(jlo, jhi, x0, dx)) in orow.iter_mut().zip(&xs) {
                        if avg.is_some() {
                            let mut acc = 0f32;
                            for i in ilo..ihi {
                                let row = &p[(y0 + i as isize) as usize * w..][..w];
                                for j in jlo..jhi {
                                    acc += row[(x0 + j as isize) as usize];
                                }
                            }
                            *d = acc / (dy * dx) as f32;
                        } else {
                            let mut acc = f32::NEG_INFINITY;
                            for i in ilo..ihi {
                                let row = &p[(y0 + (i * dil[0]) as isize) as usize * w..][..w];
                                for j in jlo..jhi {
                                    let v = row[(x0 + (j * dil[1]) as isize) as usize];
                                    // NaN propagates as in PyTorch.
                                    if v > acc || v.is_nan() {
                                        acc = v;
                                    }
                                }
                            }
                            *d = acc;
                        }
                    }
                }
            })
        });
        out
    });
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, (n, c, oh, ow), &Device::Cpu)?)),
        None => Ok(None),
    }
}

/// Global average or max pooling of NCHW `x` to `[N, C, 1, 1]`.
pub fn global_pool(x: &Tensor, max: bool) -> Result<Option<Tensor>> {
    let (n, c, h, w) = x.dims4()?;
    if h * w == 0 {
        return Ok(None);
    }
    let out = with_f32(x, |v| {
        v.par_chunks(h * w)
            .map(|p| {
                simd(|| {
                    if max {
                        p.iter().copied().fold(f32::NEG_INFINITY, |m, v| if v > m || v.is_nan() { v } else { m })
                    } else {
                        p.iter().sum::<f32>() / (h * w) as f32
                    }
                })
            })
            .collect::<Vec<f32>>()
    });
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, (n, c, 1, 1), &Device::Cpu)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn fast_conv_matches_portable() {
        // (x shape, w shape, stride, pad, dilation, groups)
        let cases: &[([usize; 4], [usize; 4], [usize; 2], [usize; 4], [usize; 2], usize)] = &[
            ([1, 8, 9, 9], [6, 8, 3, 3], [1, 1], [1; 4], [1, 1], 1),
            ([2, 8, 9, 10], [6, 8, 3, 3], [2, 2], [1; 4], [1, 1], 1),
            ([1, 8, 9, 9], [6, 8, 1, 1], [1, 1], [0; 4], [1, 1], 1),
            ([1, 8, 9, 9], [6, 8, 1, 1], [2, 2], [0; 4], [1, 1], 1),
            ([1, 3, 15, 15], [4, 3, 7, 7], [2, 2], [3; 4], [1, 1], 1),
            ([1, 4, 6, 6], [4, 2, 3, 3], [2, 3], [0, 1, 1, 2], [1, 1], 2),
            ([1, 2, 7, 7], [2, 2, 3, 3], [1, 1], [2, 2, 1, 1], [2, 1], 1),
            ([1, 2, 5, 6], [3, 2, 1, 7], [2, 1], [0, 0, 3, 3], [1, 1], 1),
            ([2, 5, 9, 9], [5, 1, 3, 3], [1, 1], [1; 4], [1, 1], 5),
            ([1, 5, 10, 9], [5, 1, 3, 3], [2, 2], [0, 1, 0, 1], [1, 1], 5),
            ([1, 5, 11, 11], [5, 1, 5, 5], [2, 2], [2; 4], [1, 1], 5),
            ([1, 3, 7, 7], [3, 1, 3, 3], [1, 1], [2; 4], [2, 2], 3),
            ([1, 4, 7, 7], [4, 1, 7, 7], [1, 1], [3; 4], [1, 1], 4),
        ];
        for (xs, wsh, s, p, d, g) in cases {
            let x = sin_input(xs);
            let w = cos_input(wsh, 0.3);
            let b = cos_input(&[wsh[0]], 0.1);
            for act in [None, Some(Activation::Relu), Some(Activation::Silu)] {
                let want = crate::kernels::conv2d(&x, &w, Some(&b), *s, *p, *d, *g).unwrap();
                let want = match act {
                    None => want,
                    Some(Activation::Relu) => want.relu().unwrap(),
                    _ => want.silu().unwrap(),
                };
                let got = conv2d(&x, &w, Some(&b), *s, *p, *d, *g, act).unwrap().expect("fast path applies");
                assert_eq!(got.dims(), want.dims(), "{xs:?} {wsh:?}");
                assert!(max_diff(&got, &want) < 1e-4, "{xs:?} {wsh:?} {s:?} {p:?} {d:?} {g}: {}", max_diff(&got, &want));
            }
        }
    }

    #[test]
    fn linear_and_layer_norm() {
        let x = sin_input(&[2, 5, 7]);
        let w = cos_input(&[6, 7], 0.3);
        let b = cos_input(&[6], 0.1);
        let want = crate::exec::linear(&x, &w, Some(&b)).unwrap().gelu_erf().unwrap();
        let got = linear(&x, &w, Some(&b), Some(Activation::Gelu)).unwrap().unwrap();
        assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
        let g = cos_input(&[7], 1.0);
        let want = crate::kernels::layer_norm_last(&x, &g, &b.narrow(0, 0, 6).unwrap().pad_with_zeros(0, 0, 1).unwrap(), 1e-6).unwrap();
        let got = layer_norm(&x, &g, &b.narrow(0, 0, 6).unwrap().pad_with_zeros(0, 0, 1).unwrap(), 1e-6, false).unwrap().unwrap();
        assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
        let x = sin_input(&[2, 3, 4, 5]);
        let g = cos_input(&[3], 1.0);
        let bb = cos_input(&[3], 0.2);
        let want = crate::kernels::layer_norm_channels(&x, &g, &bb, 1e-6).unwrap();
        let got = layer_norm(&x, &g, &bb, 1e-6, true).unwrap().unwrap();
        assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
    }

    #[test]
    fn pooling_matches_portable() {
        // (x shape, kernel, stride, pad, dilation, ceil, count_include_pad)
        let cases: &[([usize; 4], [usize; 2], [usize; 2], [usize; 4], [usize; 2], bool, bool)] = &[
            ([1, 3, 12, 12], [3, 3], [2, 2], [1; 4], [1, 1], false, true),
            ([2, 2, 11, 13], [3, 3], [2, 2], [0; 4], [1, 1], true, true),
            ([1, 2, 9, 9], [3, 3], [1, 1], [1; 4], [1, 1], false, true),
            ([1, 2, 9, 9], [3, 3], [1, 1], [1; 4], [1, 1], false, false),
            ([1, 2, 8, 8], [2, 2], [2, 2], [0; 4], [1, 1], false, true),
            ([1, 2, 10, 7], [3, 2], [2, 1], [1, 0, 0, 1], [1, 1], true, false),
            ([1, 2, 10, 10], [3, 3], [1, 1], [2; 4], [2, 2], false, true),
        ];
        for (xs, k, s, p, d, ceil, cip) in cases {
            let x = sin_input(xs);
            let want = crate::kernels::max_pool2d(&x, *k, *s, *p, *d, *ceil).unwrap();
            let got = pool2d(&x, *k, *s, *p, *d, *ceil, None).unwrap().unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(max_diff(&got, &want) < 1e-6, "max {xs:?} {k:?}");
            if *d == [1, 1] {
                let want = crate::kernels::avg_pool2d(&x, *k, *s, *p, *ceil, *cip).unwrap();
                let got = pool2d(&x, *k, *s, *p, *d, *ceil, Some(*cip)).unwrap().unwrap();
                assert_eq!(got.dims(), want.dims());
                assert!(max_diff(&got, &want) < 1e-5, "avg {xs:?} {k:?} {cip}");
            }
        }
        let x = sin_input(&[2, 3, 5, 7]);
        let got = global_pool(&x, false).unwrap().unwrap();
        assert!(max_diff(&got, &x.mean_keepdim(3).unwrap().mean_keepdim(2).unwrap()) < 1e-6);
        let got = global_pool(&x, true).unwrap().unwrap();
        assert!(max_diff(&got, &x.max_keepdim(3).unwrap().max_keepdim(2).unwrap()) < 1e-6);
    }

    #[test]
    fn attention_matches_portable() {
        let (n, l, heads, hd) = (2, 13, 3, 4);
        let d = heads * hd;
        let qkv = sin_input(&[n, l, 3 * d]);
        let split = |i: usize| qkv.narrow(2, i * d, d).unwrap().reshape((n, l, heads, hd)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let want = crate::kernels::attention(&split(0), &split(1), &split(2), None).unwrap().transpose(1, 2).unwrap().reshape((n, l, d)).unwrap();
        let got = attention_qkv(&qkv, heads).unwrap().unwrap();
        assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
        let worst = (-870..880).map(|i| i as f32 * 0.1).map(|x| ((exp_f32(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-6, "exp {worst}");
    }

    #[test]
    fn fused_mish_matches_portable() {
        let x = sin_input(&[1, 2, 3, 7]).affine(12.0, 0.0).unwrap();
        let mut v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        apply_act(Some(Activation::Mish), &mut v);
        let want: Vec<f32> = crate::kernels::mish(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let worst = v.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-5, "{worst}");
    }

    #[test]
    fn erf_close_to_libm() {
        let worst = (-6000..6000).map(|i| i as f32 * 1e-3).map(|x| (erf_f32(x) as f64 - libm::erf(x as f64)).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-6, "{worst}");
    }

    #[test]
    fn affine_and_add() {
        let x = sin_input(&[2, 3, 4, 5]);
        let y = cos_input(&[2, 3, 4, 5], 1.0);
        let got = channel_affine(&x, &[1.0, 2.0, -1.0], &[0.5, 0.0, 1.0], Some(Activation::Relu6)).unwrap().unwrap();
        let s = Tensor::new(&[1f32, 2.0, -1.0], &Device::Cpu).unwrap().reshape((1, 3, 1, 1)).unwrap();
        let t = Tensor::new(&[0.5f32, 0.0, 1.0], &Device::Cpu).unwrap().reshape((1, 3, 1, 1)).unwrap();
        let want = x.broadcast_mul(&s).unwrap().broadcast_add(&t).unwrap().clamp(0f32, 6f32).unwrap();
        assert!(max_diff(&got, &want) < 1e-6);
        let got = add_act(&x, &y, Some(Activation::Relu)).unwrap().unwrap();
        assert!(max_diff(&got, &(&x + &y).unwrap().relu().unwrap()) < 1e-6);
    }
}
