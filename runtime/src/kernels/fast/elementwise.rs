//! Element-wise kernels: per-channel affine (an unfolded BatchNorm), squeeze-excitation
//! gating, addition, layer norms; activation fused where it applies.

use super::{threads, uninit_vec, with_f32, Isa};
use crate::kernels::cpu::{self, dispatch, sum_map, sum_slice};
use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;
use tlc_compiler::ir::Activation;

/// `act(x * scale[c] + shift[c])` on NCHW (or `(N, C)`) `x`: an unfolded BatchNorm.
pub fn channel_affine(x: &Tensor, scale: &[f32], shift: &[f32], act: Option<Activation>, isa: Isa) -> Result<Option<Tensor>> {
    let dims = x.dims().to_vec();
    if dims.len() < 2 || dims[1] != scale.len() || shift.len() != scale.len() {
        return Ok(None);
    }
    let c = dims[1];
    let rows = dims[2..].iter().product::<usize>().max(1);
    let out = with_f32(x, |xs| {
        // Every row (one image and channel) is written whole.
        let mut out = uninit_vec(xs.len());
        let per = (xs.len() / rows).div_ceil(threads() * 4).max(1);
        out.par_chunks_mut(rows * per).zip(xs.par_chunks(rows * per)).enumerate().for_each(|(bi, (o, s))| {
            for (ri, (orow, srow)) in o.chunks_mut(rows).zip(s.chunks(rows)).enumerate() {
                let ch = (bi * per + ri) % c;
                cpu::affine_act_into(isa, orow, srow, scale[ch], shift[ch], act);
            }
        });
        out
    });
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, dims, &Device::Cpu)?)),
        None => Ok(None),
    }
}

/// `act(a + b)` for same-shape tensors.
pub fn add_act(a: &Tensor, b: &Tensor, act: Option<Activation>, isa: Isa) -> Result<Option<Tensor>> {
    if a.dims() != b.dims() {
        return Ok(None);
    }
    let out = with_f32(a, |xa| {
        with_f32(b, |xb| {
            // Every chunk is written whole.
            let mut out = uninit_vec(xa.len());
            let per = xa.len().div_ceil(threads() * 4).max(4096);
            out.par_chunks_mut(per).zip(xa.par_chunks(per).zip(xb.par_chunks(per))).for_each(|(o, (p, q))| cpu::add_act_into(isa, o, p, q, act));
            out
        })
    });
    match out.flatten() {
        Some(v) => Ok(Some(Tensor::from_vec(v, a.dims(), &Device::Cpu)?)),
        None => Ok(None),
    }
}

/// `x * gate` for NCHW `x` and a per-image, per-channel `gate` (`[N, C, 1, 1]`): the
/// squeeze-excitation product.
pub fn channel_gate(x: &Tensor, gate: &Tensor, isa: Isa) -> Result<Option<Tensor>> {
    let (n, c, h, w) = x.dims4()?;
    if gate.dims() != [n, c, 1, 1] || h * w == 0 {
        return Ok(None);
    }
    let out = with_f32(x, |xs| {
        with_f32(gate, |gs| {
            let hw = h * w;
            // Every plane is written whole.
            let mut out = uninit_vec(xs.len());
            out.par_chunks_mut(hw).zip(xs.par_chunks(hw)).zip(gs.par_iter()).for_each(|((o, s), &m)| cpu::affine_act_into(isa, o, s, m, 0.0, None));
            out
        })
    });
    match out.flatten() {
        Some(v) => Ok(Some(Tensor::from_vec(v, (n, c, h, w), &Device::Cpu)?)),
        None => Ok(None),
    }
}

/// LayerNorm over the last dim (`channels == false`) or over dim 1 of NCHW (`true`).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, channels: bool, isa: Isa) -> Result<Option<Tensor>> {
    let dims = x.dims().to_vec();
    if dims.is_empty() || (channels && dims.len() != 4) {
        return Ok(None);
    }
    let (Some(wv), Some(bv)) = (with_f32(w, |v| v.to_vec()), with_f32(b, |v| v.to_vec())) else { return Ok(None) };
    let eps = eps as f32;
    let (d, inner) = if channels { (dims[1], dims[2] * dims[3]) } else { (dims[dims.len() - 1], 1) };
    if wv.len() != d || bv.len() != d || d == 0 {
        return Ok(None);
    }
    let out = with_f32(x, |xs| {
        // Every group of `d * inner` values is written whole.
        let mut out = uninit_vec(xs.len());
        let group = d * inner;
        let per = (xs.len() / group).div_ceil(threads() * 4).max(1);
        out.par_chunks_mut(group * per).zip(xs.par_chunks(group * per)).for_each(|(o, s)| {
            for (og, sg) in o.chunks_mut(group).zip(s.chunks(group)) {
                if channels {
                    ln_channels(isa, og, sg, &wv, &bv, eps);
                } else {
                    ln_row(isa, og, sg, &wv, &bv, eps);
                }
            }
        });
        out
    });
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, dims, &Device::Cpu)?)),
        None => Ok(None),
    }
}

dispatch! {
    /// LayerNorm of one row `s` into `o`.
    fn ln_row(o: &mut [f32], s: &[f32], g: &[f32], b: &[f32], eps: f32) {
        // Both sums in 16 lanes (serial sums were most of ViT-B/16's LayerNorm time).
        let d = s.len() as f32;
        let mean = sum_slice(s) / d;
        let var = sum_map(s, |v| (v - mean) * (v - mean)) / d;
        let r = 1.0 / (var + eps).sqrt();
        for (((o, v), g), bb) in o.iter_mut().zip(s).zip(g).zip(b) {
            *o = (v - mean) * r * g + bb;
        }
    }
}

dispatch! {
    /// LayerNorm over the channels of one `[c, hw]` image `s` into `o`.
    fn ln_channels(o: &mut [f32], s: &[f32], g: &[f32], b: &[f32], eps: f32) {
        let c = g.len();
        let hw = s.len() / c;
        let mut mean = vec![0f32; hw];
        let mut var = vec![0f32; hw];
        for ch in s.chunks(hw) {
            mean.iter_mut().zip(ch).for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= c as f32);
        for ch in s.chunks(hw) {
            var.iter_mut().zip(ch).zip(&mean).for_each(|((q, v), m)| *q += (v - m) * (v - m));
        }
        var.iter_mut().for_each(|q| *q = 1.0 / (*q / c as f32 + eps).sqrt());
        for (k, (och, sch)) in o.chunks_mut(hw).zip(s.chunks(hw)).enumerate() {
            let (gk, bk) = (g[k], b[k]);
            for (((o, v), m), r) in och.iter_mut().zip(sch).zip(&mean).zip(&var) {
                *o = (v - m) * r * gk + bk;
            }
        }
    }
}
