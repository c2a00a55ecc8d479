//! Pooling kernels on NCHW: max/average pooling with PyTorch's padding and ceil-mode
//! semantics, global average/max pooling.

use super::{with_f32, Isa};
use crate::kernels::cpu;
use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;


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
    let out = with_f32(x, |v| {
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow).zip(v.par_chunks(h * w)).for_each(|(o, p)| {
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
        });
        out
    });
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, (n, c, oh, ow), &Device::Cpu)?)),
        None => Ok(None),
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
