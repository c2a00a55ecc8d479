//! Pooling kernels on NCHW: max/average pooling with PyTorch's padding and ceil-mode
//! semantics, global average/max pooling.

use super::{uninit_vec, with_f32, Isa};
use crate::kernels::cpu::{self, dispatch};
use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;

/// Max pooling (`count_include_pad == None`) or average pooling (`Some(count_include_pad)`)
/// on NCHW `x`, PyTorch semantics: padding `[top, bottom, left, right]` (never read: -inf for
/// max, and for average counted in the divisor only with `count_include_pad`, never the
/// ceil-mode overhang past it), `ceil` output sizes, dilation (max only). Reads the input
/// one plane per task, separably (see [`Separable`]). `Ok(None)` when it does not apply.
#[allow(clippy::too_many_arguments)]
pub fn pool2d(x: &Tensor, k: [usize; 2], s: [usize; 2], pad: [usize; 4], dil: [usize; 2], ceil: bool, avg: Option<bool>, isa: Isa) -> Result<Option<Tensor>> {
    let (n, c, h, w) = x.dims4()?;
    if avg.is_some() && dil != [1, 1] {
        return Ok(None);
    }
    let oh = crate::kernels::output_size(h, k[0], s[0], pad[0], pad[1], dil[0], ceil);
    let ow = crate::kernels::output_size(w, k[1], s[1], pad[2], pad[3], dil[1], ceil);
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
    let plan = Separable::new([h, w], k, s, pad, dil, [oh, ow], avg.is_some());
    // Averages: the sums times 1 / divisor (within an ulp of PyTorch's division).
    let inv: Vec<f32> = ys.iter().flat_map(|y| xs.iter().map(move |x| 1.0 / (y.3 * x.3) as f32)).collect();
    let out = with_f32(x, |v| {
        // Every element is written by its plane's task.
        let mut out = uninit_vec(n * c * oh * ow);
        out.par_chunks_mut(oh * ow).zip(v.par_chunks(h * w)).for_each(|(o, p)| {
            SCRATCH.with(|sc| pool_plane(isa, &plan, p, o, &mut sc.borrow_mut()));
            if avg.is_some() {
                o.iter_mut().zip(&inv).for_each(|(v, &r)| *v *= r);
            }
        });
        out
    });
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, (n, c, oh, ow), &Device::Cpu)?)),
        None => Ok(None),
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Max (NaN-propagating, as PyTorch) of two values.
#[inline(always)]
fn max_nan(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() {
        b
    } else {
        a
    }
}

/// One plane's pooling in two passes per output row: the window's input rows reduced into one
/// row of the padded width (vectorised; padding and ceil-mode overhang hold the reduction's
/// neutral value, `-inf` for max and `0` for sums, so they never count), then that row reduced
/// along x (`ow` outputs). Sums come out undivided.
struct Separable {
    h: usize,
    w: usize,
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
    top: usize,
    left: usize,
    /// Padded row width read (padding and ceil-mode overhang included).
    gw: usize,
    ow: usize,
    sum: bool,
    /// Stride 1, dilation 1, output as large as the input (Inception's 3x3 average pools):
    /// per position its column, for [`Separable::flat`].
    cols: Option<Vec<u32>>,
}

impl Separable {
    fn new(hw: [usize; 2], k: [usize; 2], s: [usize; 2], pad: [usize; 4], d: [usize; 2], out: [usize; 2], sum: bool) -> Separable {
        let gw = ((out[1] - 1) * s[1] + (k[1] - 1) * d[1] + 1).max(pad[2] + hw[1]);
        let same = s == [1, 1] && d == [1, 1] && out == hw && pad[0] < k[0] && pad[2] < k[1];
        let cols = same.then(|| (0..hw[0] * hw[1]).map(|i| (i % hw[1]) as u32).collect());
        Separable { h: hw[0], w: hw[1], k, s, d, top: pad[0], left: pad[2], gw, ow: out[1], sum, cols }
    }

    /// The same-size stride-1 case on whole planes: the window's rows are the plane shifted by
    /// whole rows (contiguous slices), its columns the result shifted by single positions with
    /// the positions whose tap falls off the row left out; long vectorised loops even for 17x17.
    #[inline(always)]
    fn flat(&self, cols: &[u32], p: &[f32], o: &mut [f32], buf: &mut Vec<f32>) {
        let (hw, w) = (self.h * self.w, self.w);
        let sum = self.sum;
        let op = move |v: f32, a: f32| if sum { v + a } else { max_nan(v, a) };
        buf.resize(hw, 0.0);
        let v = &mut buf[..hw];
        v.copy_from_slice(&p[..hw]);
        for i in 0..self.k[0] {
            // Output row y reads input row y + i - top.
            let d = i.abs_diff(self.top) * w;
            if i == self.top || d >= hw {
                continue;
            }
            if i < self.top {
                v[d..].iter_mut().zip(&p[..hw - d]).for_each(|(x, &a)| *x = op(*x, a));
            } else {
                v[..hw - d].iter_mut().zip(&p[d..hw]).for_each(|(x, &a)| *x = op(*x, a));
            }
        }
        o.copy_from_slice(v);
        for j in 0..self.k[1] {
            // Output column x reads column x + j - left, inside the row.
            let d = j.abs_diff(self.left);
            if j == self.left || d >= hw {
                continue;
            }
            if j < self.left {
                let ok = &cols[d..];
                o[d..].iter_mut().zip(&v[..hw - d]).zip(ok).for_each(|((x, &a), &c)| *x = if c as usize >= d { op(*x, a) } else { *x });
            } else {
                let ok = &cols[..hw - d];
                o[..hw - d].iter_mut().zip(&v[d..]).zip(ok).for_each(|((x, &a), &c)| *x = if (c as usize) + d < w { op(*x, a) } else { *x });
            }
        }
    }

    #[inline(always)]
    fn plane(&self, p: &[f32], o: &mut [f32], buf: &mut Vec<f32>) {
        if let Some(cols) = &self.cols {
            return self.flat(cols, p, o, buf);
        }
        let neutral = if self.sum { 0.0 } else { f32::NEG_INFINITY };
        let ([kh, kw], [sy, sx], [dy, dx]) = (self.k, self.s, self.d);
        // The padded row, then (stride 2) its even and odd columns.
        let half = self.gw.div_ceil(2);
        buf.resize(self.gw + 2 * half, neutral);
        let (row, phases) = buf.split_at_mut(self.gw);
        for (oy, out) in o.chunks_exact_mut(self.ow).enumerate() {
            row.fill(neutral);
            let inner = &mut row[self.left..self.left + self.w];
            for i in 0..kh {
                let Some(y) = (oy * sy + i * dy).checked_sub(self.top).filter(|&y| y < self.h) else { continue };
                let src = &p[y * self.w..][..self.w];
                if self.sum {
                    inner.iter_mut().zip(src).for_each(|(v, &a)| *v += a);
                } else {
                    inner.iter_mut().zip(src).for_each(|(v, &a)| *v = max_nan(*v, a));
                }
            }
            if sx == 2 && dx == 1 {
                self.reduce_s2(row, phases, half, out);
                continue;
            }
            out.iter_mut().enumerate().for_each(|(ox, v)| *v = row[ox * sx]);
            for j in 1..kw {
                let r = &row[j * dx..];
                if self.sum {
                    out.iter_mut().enumerate().for_each(|(ox, v)| *v += r[ox * sx]);
                } else {
                    out.iter_mut().enumerate().for_each(|(ox, v)| *v = max_nan(*v, r[ox * sx]));
                }
            }
        }
    }
}

impl Separable {
    /// The x reduction at stride 2 (dilation 1): the row split once into its even and odd
    /// columns, so that every tap reads one of them contiguously.
    #[inline(always)]
    fn reduce_s2(&self, row: &[f32], phases: &mut [f32], half: usize, out: &mut [f32]) {
        let (even, odd) = phases.split_at_mut(half);
        for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(row.chunks_exact(2)) {
            *e = pair[0];
            *o = pair[1];
        }
        if row.len() % 2 == 1 {
            even[half - 1] = row[row.len() - 1];
        }
        let n = out.len();
        out.copy_from_slice(&even[..n]);
        for j in 1..self.k[1] {
            let src = if j % 2 == 0 { &even[j / 2..j / 2 + n] } else { &odd[j / 2..j / 2 + n] };
            if self.sum {
                out.iter_mut().zip(src).for_each(|(v, &a)| *v += a);
            } else {
                out.iter_mut().zip(src).for_each(|(v, &a)| *v = max_nan(*v, a));
            }
        }
    }
}

dispatch! {
    /// [`Separable::plane`] at level `isa`.
    fn pool_plane(plan: &Separable, p: &[f32], o: &mut [f32], buf: &mut Vec<f32>) {
        plan.plane(p, o, buf)
    }
}

/// Global average or max pooling of NCHW `x` to `[N, C, 1, 1]`.
pub fn global_pool(x: &Tensor, max: bool, isa: Isa) -> Result<Option<Tensor>> {
    let (n, c, h, w) = x.dims4()?;
    if h * w == 0 {
        return Ok(None);
    }
    let out = with_f32(x, |v| {
        v.par_chunks(h * w)
            .map(|p| {
                if max {
                    p.iter().copied().fold(f32::NEG_INFINITY, |m, v| if v > m || v.is_nan() { v } else { m })
                } else {
                    cpu::sum(isa, p) / (h * w) as f32
                }
            })
            .collect::<Vec<f32>>()
    });
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, (n, c, 1, 1), &Device::Cpu)?)),
        None => Ok(None),
    }
}
