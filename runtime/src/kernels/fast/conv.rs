//! Convolution entry points on tensors: dense convs through [`packed`] (weights packed per
//! call, or once by the caller with [`conv2d_packed`]), depthwise through
//! [`crate::kernels::depthwise`], other grouped convs as im2col + one GEMM per group.

use super::gemm::{gemm, Mat};
use super::packed::{self, Affine, ConvInput, PackedWeights};
use super::winograd::{self, LazyWinograd, WinogradWeights};
use super::winograd1d::{self, Winograd1dWeights};
use super::{threads, uninit_vec, with_f32, Geo, Isa};
use crate::kernels::cpu;
use crate::kernels::depthwise::{self, Layout, Plane};
use candle_core::{CpuStorage, Device, Result, Storage, Tensor};
use rayon::prelude::*;
use tlc_compiler::ir::Activation;

/// Convolution (PyTorch `F.conv2d` semantics, padding `[top, bottom, left, right]`) with
/// fused bias and activation. `Ok(None)` when the fast path does not apply.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: [usize; 2], pad: [usize; 4], dilation: [usize; 2], groups: usize, act: Option<Activation>, isa: Isa) -> Result<Option<Tensor>> {
    conv2d_residual(x, w, bias, stride, pad, dilation, groups, None, act, isa)
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
    isa: Isa,
) -> Result<Option<Tensor>> {
    let (n, c, h, wd) = x.dims4()?;
    let (co, cig, kh, kw) = w.dims4()?;
    if groups == 0 || c % groups != 0 || co % groups != 0 || cig * groups != c {
        return Ok(None);
    }
    let Some(g) = Geo::new(c, h, wd, [kh, kw], stride, pad, dilation) else { return Ok(None) };
    let Some(bias_v) = bias_vec(bias, co) else { return Ok(None) };
    let (oh, ow) = g.out_hw();
    if residual.is_some_and(|r| r.dims() != [n, co, oh, ow]) {
        return Ok(None);
    }
    if groups == c && co == c && groups > 1 && residual.is_none() {
        let out = with_f32(x, |xs| with_f32(w, |ws| depthwise(xs, ws, bias_v.as_deref(), n, &g, act, None, isa)));
        return wrap(out.flatten(), (n, co, oh, ow));
    }
    if groups == 1 {
        let Some(ws) = with_f32(w, |v| v.to_vec()) else { return Ok(None) };
        let pw = DenseWeights::Gemm(PackedWeights::new(&ws, co, cig * kh * kw, bias_v.as_deref(), isa));
        return conv2d_packed(&[x], &pw, &ConvArgs { kernel: [kh, kw], stride, pad, dilation }, None, None, residual, act);
    }
    let res_v: Option<Vec<f32>> = match residual {
        Some(r) => match with_f32(r, |v| v.to_vec()) {
            Some(v) => Some(v),
            None => return Ok(None),
        },
        None => None,
    };
    let out = with_f32(x, |xs| with_f32(w, |ws| grouped_conv(xs, ws, bias_v.as_deref(), n, co, groups, &g, res_v.as_deref(), act, isa)));
    wrap(out.flatten(), (n, co, oh, ow))
}

/// A depthwise conv (`groups == c == co`, [`conv2d`] otherwise) that also returns the mean of
/// every output plane, `[n, c, 1, 1]`: a squeeze-excitation pool summed as the planes are
/// written, instead of read again. `Ok(None)` when the fast path does not apply.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_pooled(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: [usize; 2], pad: [usize; 4], dilation: [usize; 2], act: Option<Activation>, isa: Isa) -> Result<Option<(Tensor, Tensor)>> {
    let (n, c, h, wd) = x.dims4()?;
    let (co, cig, kh, kw) = w.dims4()?;
    if co != c || cig != 1 || c < 2 {
        return Ok(None);
    }
    let Some(g) = Geo::new(c, h, wd, [kh, kw], stride, pad, dilation) else { return Ok(None) };
    let Some(bias_v) = bias_vec(bias, co) else { return Ok(None) };
    let mut mean = vec![0f32; n * c];
    let out = with_f32(x, |xs| with_f32(w, |ws| depthwise(xs, ws, bias_v.as_deref(), n, &g, act, Some(&mut mean), isa)));
    let Some(Some(out)) = out else { return Ok(None) };
    let (oh, ow) = g.out_hw();
    Ok(Some((Tensor::from_vec(out, (n, co, oh, ow), &Device::Cpu)?, Tensor::from_vec(mean, (n, c, 1, 1), &Device::Cpu)?)))
}

/// `bias` as `co` floats (`Some(None)` without one), or `None` when it is not contiguous f32
/// CPU data of that length.
fn bias_vec(bias: Option<&Tensor>, co: usize) -> Option<Option<Vec<f32>>> {
    match bias {
        Some(b) => match with_f32(b, |v| v.to_vec()) {
            Some(v) if v.len() == co => Some(Some(v)),
            _ => None,
        },
        None => Some(None),
    }
}

fn wrap(v: Option<Vec<f32>>, shape: (usize, usize, usize, usize)) -> Result<Option<Tensor>> {
    match v {
        Some(v) => Ok(Some(Tensor::from_vec(v, shape, &Device::Cpu)?)),
        None => Ok(None),
    }
}

/// Kernel size, stride, padding `[top, bottom, left, right]` and dilation of a conv.
#[derive(Clone, Copy, Debug)]
pub struct ConvArgs {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[top, bottom, left, right]`.
    pub pad: [usize; 4],
    /// `[dh, dw]`.
    pub dilation: [usize; 2],
}

/// A dense conv's weights, prepared once for one of the two kernels.
#[derive(Debug)]
pub enum DenseWeights {
    /// The packed GEMM ([`packed`]): any kernel, stride and dilation.
    Gemm(PackedWeights),
    /// Winograd F(4x4, 3x3) ([`winograd`]): 3x3 kernels at stride 1 without dilation.
    Winograd(WinogradWeights),
    /// Both, for a small map: Winograd (transformed on first use) once the batch brings
    /// enough tiles ([`winograd::pays`]), else the packed GEMM.
    Either(PackedWeights, LazyWinograd),
    /// Winograd F(m, r) along the height ([`winograd1d`]): `r x 1` kernels (r = 3, 7) at stride 1
    /// without horizontal padding, and `1 x r` ones on transposed planes.
    Winograd1d(Winograd1dWeights),
}

impl DenseWeights {
    /// Output channels.
    pub fn co(&self) -> usize {
        match self {
            DenseWeights::Gemm(pw) | DenseWeights::Either(pw, _) => pw.co,
            DenseWeights::Winograd(ww) => ww.co,
            DenseWeights::Winograd1d(ww) => ww.co,
        }
    }

    /// Reduction length `c * kh * kw`.
    pub fn k(&self) -> usize {
        match self {
            DenseWeights::Gemm(pw) | DenseWeights::Either(pw, _) => pw.k,
            DenseWeights::Winograd(ww) => ww.c * 9,
            DenseWeights::Winograd1d(ww) => ww.c * ww.r(),
        }
    }

    /// Bytes a pass streams: the packed panels (Winograd's transformed matrices are four or
    /// more times the kernel's; a small map's lazy ones are not used image by image).
    pub fn bytes(&self) -> usize {
        let panels = |u: &[PackedWeights]| u.iter().map(PackedWeights::bytes).sum();
        match self {
            DenseWeights::Gemm(pw) | DenseWeights::Either(pw, _) => pw.bytes(),
            DenseWeights::Winograd(ww) => panels(ww.panels()),
            DenseWeights::Winograd1d(ww) => panels(ww.panels()),
        }
    }

    /// Whether these weights run a conv with `args`.
    fn fits(&self, args: &ConvArgs) -> bool {
        match self {
            DenseWeights::Gemm(_) | DenseWeights::Either(..) => true,
            DenseWeights::Winograd(_) => winograd::fits(args.kernel, args.stride, args.dilation),
            DenseWeights::Winograd1d(ww) => winograd1d::fits(args.kernel, args.stride, args.dilation, args.pad) && args.kernel[0] == ww.r(),
        }
    }
}

/// Runs `f` on the contiguous f32 CPU data of every tensor in `ts`, or returns `None`.
fn with_f32_all<R>(ts: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> Option<R> {
    if ts.iter().any(|t| t.track_op() || !t.device().is_cpu()) {
        return None;
    }
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut views = Vec::with_capacity(ts.len());
    for (storage, layout) in &guards {
        let (start, end) = layout.contiguous_offsets()?;
        match &**storage {
            Storage::Cpu(CpuStorage::F32(v)) => views.push(&v[start..end]),
            _ => return None,
        }
    }
    Some(f(&views))
}

/// Dense convolution with weights prepared once ([`DenseWeights`], bias included) over the
/// channels of `parts` in order (a concatenation along dim 1 that is never built), each input
/// value mapped by `affine` and multiplied by `gate` (`[n, c]` or `[n, c, 1, 1]`) on its way
/// in; then `+ residual` (a tensor of the output's shape) and `act`.
/// `Ok(None)` when it does not apply.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_packed(
    parts: &[&Tensor],
    weights: &DenseWeights,
    args: &ConvArgs,
    affine: Option<Affine>,
    gate: Option<&Tensor>,
    residual: Option<&Tensor>,
    act: Option<Activation>,
) -> Result<Option<Tensor>> {
    let Some(first) = parts.first() else { return Ok(None) };
    if args.kernel == [1, 1] && args.stride != [1, 1] && args.pad == [0; 4] && parts.len() == 1 && affine.is_none() && gate.is_none() {
        // A strided 1x1 conv reads one input in `sy * sx`: subsampled once, the plain 1x1
        // conv then reads its planes in place and writes its outputs directly.
        if let Some(x) = subsample(first, args.stride)? {
            return conv2d_packed(&[&x], weights, &ConvArgs { stride: [1, 1], ..*args }, None, None, residual, act);
        }
    }
    if let Some(out) = conv_1xk_as_kx1(parts, weights, args, affine, gate, residual, act)? {
        return Ok(Some(out));
    }
    let (n, _, h, wd) = first.dims4()?;
    let mut chans = Vec::with_capacity(parts.len());
    for t in parts {
        let (pn, pc, ph, pwd) = t.dims4()?;
        if (pn, ph, pwd) != (n, h, wd) {
            return Ok(None);
        }
        chans.push(pc);
    }
    let c: usize = chans.iter().sum();
    let Some(g) = Geo::new(c, h, wd, args.kernel, args.stride, args.pad, args.dilation) else { return Ok(None) };
    let (oh, ow) = g.out_hw();
    let co = weights.co();
    if !weights.fits(args)
        || weights.k() != c * args.kernel[0] * args.kernel[1]
        || residual.is_some_and(|r| r.dims() != [n, co, oh, ow])
        || gate.is_some_and(|t| t.elem_count() != n * c)
        || affine.is_some_and(|a| a.scale.len() != c || a.shift.len() != c)
    {
        return Ok(None);
    }
    let mut all: Vec<&Tensor> = parts.to_vec();
    all.extend(gate);
    all.extend(residual);
    let out = with_f32_all(&all, |views| {
        let input = ConvInput {
            parts: views[..parts.len()].iter().zip(&chans).map(|(v, &ci)| (*v, ci)).collect(),
            affine,
            gate: gate.map(|_| views[parts.len()]),
        };
        let res = residual.map(|_| views[views.len() - 1]);
        match weights {
            DenseWeights::Gemm(pw) => dense(&input, pw, n, &g, res, act),
            DenseWeights::Winograd(ww) => winograd::conv(&input, ww, n, &g, res, act),
            DenseWeights::Winograd1d(ww) => winograd1d::conv(&input, ww, n, &g, res, act),
            DenseWeights::Either(pw, ww) => match winograd::fits(args.kernel, args.stride, args.dilation) && winograd::pays(n, oh, ow) {
                true => winograd::conv(&input, ww.get(), n, &g, res, act),
                false => dense(&input, pw, n, &g, res, act),
            },
        }
    });
    wrap(out, (n, co, oh, ow))
}

/// A `1 x k` stride-1 conv (Inception's 1x7 and 1x3) run as the `k x 1` conv of the
/// transposed planes: its padding is then rows, which the packed GEMM's padded grid reads in
/// place, where horizontal padding would widen every grid row (17 -> 23 columns computed per
/// row at 1x7) or need im2col packing, and Winograd F(m, r) runs along the height. Both have
/// the same weights (`k = (c, tap)`).
/// `Ok(None)` where it does not apply.
#[allow(clippy::too_many_arguments)]
fn conv_1xk_as_kx1(
    parts: &[&Tensor],
    weights: &DenseWeights,
    args: &ConvArgs,
    affine: Option<Affine>,
    gate: Option<&Tensor>,
    residual: Option<&Tensor>,
    act: Option<Activation>,
) -> Result<Option<Tensor>> {
    let [kh, kw] = args.kernel;
    if kh != 1 || kw == 1 || args.stride != [1, 1] || args.dilation != [1, 1] || residual.is_some() || !matches!(weights, DenseWeights::Gemm(_) | DenseWeights::Winograd1d(_)) {
        return Ok(None);
    }
    let mut transposed = Vec::with_capacity(parts.len());
    for t in parts {
        match transpose_planes(t)? {
            Some(t) => transposed.push(t),
            None => return Ok(None),
        }
    }
    let refs: Vec<&Tensor> = transposed.iter().collect();
    let [pt, pb, pl, pr] = args.pad;
    let args_t = ConvArgs { kernel: [kw, kh], pad: [pl, pr, pt, pb], ..*args };
    match conv2d_packed(&refs, weights, &args_t, affine, gate, None, act)? {
        Some(out) => transpose_planes(&out),
        None => Ok(None),
    }
}

/// NCHW `x` with every plane transposed (`[n, c, w, h]`), or `None` when the fast path does
/// not apply.
fn transpose_planes(x: &Tensor) -> Result<Option<Tensor>> {
    let (n, c, h, w) = x.dims4()?;
    let out = with_f32(x, |xs| {
        // Every plane is written whole below.
        let mut out = uninit_vec(n * c * h * w);
        out.par_chunks_mut((h * w).max(1)).zip(xs.par_chunks((h * w).max(1))).for_each(|(o, p)| {
            for (y, row) in p.chunks_exact(w).enumerate() {
                for (x, &v) in row.iter().enumerate() {
                    o[x * h + y] = v;
                }
            }
        });
        out
    });
    wrap(out, (n, c, w, h))
}

/// The packed GEMM, or where they apply the direct kernel for few input channels
/// ([`super::stem`]) and the matrix-vector product for 1x1 maps ([`super::matvec`]).
fn dense(input: &ConvInput, pw: &PackedWeights, n: usize, g: &Geo, res: Option<&[f32]>, act: Option<Activation>) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if super::stem::fits(input, pw, g, res.is_some()) {
        return super::stem::conv(input.parts[0].0, pw, n, g, act);
    }
    if super::matvec::fits(g) {
        return super::matvec::conv(input, pw, n, res, act);
    }
    packed::conv(input, pw, n, g, res, act)
}

/// Every `stride`-th row and column of NCHW `x` (`x[.., ::sy, ::sx]`), or `None` when the
/// fast path does not apply.
fn subsample(x: &Tensor, stride: [usize; 2]) -> Result<Option<Tensor>> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = (h.div_ceil(stride[0]), w.div_ceil(stride[1]));
    let out = with_f32(x, |xs| {
        // Every plane is written whole below.
        let mut out = uninit_vec(n * c * oh * ow);
        out.par_chunks_mut((oh * ow).max(1)).zip(xs.par_chunks(h * w)).for_each(|(o, p)| {
            for (oy, orow) in o.chunks_exact_mut(ow).enumerate() {
                let row = &p[oy * stride[0] * w..][..w];
                for (ox, v) in orow.iter_mut().enumerate() {
                    *v = row[ox * stride[1]];
                }
            }
        });
        out
    });
    wrap(out, (n, c, oh, ow))
}

/// Grouped (not depthwise) convolution: im2col and one GEMM per image and group.
#[allow(clippy::too_many_arguments)]
fn grouped_conv(x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, co: usize, groups: usize, g: &Geo, residual: Option<&[f32]>, act: Option<Activation>, isa: Isa) -> Vec<f32> {
    let p = g.oh * g.ow;
    let (cg, cog) = (g.c / groups, co / groups);
    let k = cg * g.kh * g.kw;
    let mut out = vec![0f32; n * co * p];
    let mut col = vec![0f32; k * p];
    for b in 0..n {
        let xb = &x[b * g.c * g.h * g.w..(b + 1) * g.c * g.h * g.w];
        let ob = &mut out[b * co * p..(b + 1) * co * p];
        // The GEMM accumulates onto bias (+ residual) already in place.
        ob.par_chunks_mut(p).enumerate().for_each(|(ch, row)| {
            let v = bias.map_or(0.0, |bv| bv[ch]);
            match residual {
                Some(r) => row.iter_mut().zip(&r[(b * co + ch) * p..][..p]).for_each(|(d, s)| *d = s + v),
                None => row.fill(v),
            }
        });
        for gi in 0..groups {
            im2col(xb, g, gi * cg, cg, &mut col);
            let lhs = Mat::rows(&w[gi * cog * k..(gi + 1) * cog * k], cog, k);
            gemm(&mut ob[gi * cog * p..(gi + 1) * cog * p], p, true, lhs, Mat::rows(&col, k, p), 1.0, threads());
        }
        if let Some(a) = act {
            let chunk = (co * p).div_ceil(threads() * 4).max(1024);
            ob.par_chunks_mut(chunk).for_each(|v| cpu::act(isa, a, v));
        }
    }
    out
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
                    for (k, d) in dst[xlo..xhi].iter_mut().enumerate() {
                        *d = src[x0 + k * g.stride[1]];
                    }
                }
            }
        }
    });
}

/// Direct depthwise convolution ([`depthwise`]): planes (image, channel) in parallel, bias
/// and activation fused; with `pooled`, each plane's mean (after the activation) is written
/// to `pooled[plane]` (a squeeze-excitation pool for free).
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise(x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, g: &Geo, act: Option<Activation>, mut pooled: Option<&mut [f32]>, isa: Isa) -> Vec<f32> {
    let (oh, ow) = (g.oh, g.ow);
    let taps = g.kh * g.kw;
    let plane = Plane { h: g.h, w: g.w, kh: g.kh, kw: g.kw, oh, ow, stride: g.stride, pad: g.pad, dil: g.dil };
    // Every plane is written whole by `depthwise::plane` or the blocked kernel.
    let mut out = uninit_vec(n * g.c * oh * ow);
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::depthwise_c16::suits(&plane, g.c, isa) {
        let inv = 1.0 / (oh * ow) as f32;
        crate::kernels::depthwise_c16::depthwise(x, w, bias, n, g.c, &plane, act, pooled.as_deref_mut(), &mut out);
        pooled.into_iter().flatten().for_each(|m| *m *= inv);
        return out;
    }
    let layout = Layout::new(plane, isa);
    let want = pooled.is_some();
    let sums: Vec<f32> = out
        .par_chunks_mut(oh * ow)
        .enumerate()
        .map(|(pi, o)| {
            let c = pi % g.c;
            let xi = &x[pi * g.h * g.w..(pi + 1) * g.h * g.w];
            depthwise::plane(xi, &w[c * taps..(c + 1) * taps], bias.map_or(0.0, |b| b[c]), &layout, act, want, isa, o)
        })
        .collect();
    if let Some(p) = pooled {
        let inv = 1.0 / (oh * ow) as f32;
        p.iter_mut().zip(&sums).for_each(|(d, s)| *d = s * inv);
    }
    out
}
