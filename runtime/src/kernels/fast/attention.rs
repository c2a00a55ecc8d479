//! Linear layers and multi-head self-attention (transformers' building blocks).

use super::gemm::{gemm, Mat};
use super::{threads, with_f32, Isa};
use crate::kernels::cpu::{self, dispatch, exp_f32, map_all, max_slice, sum_slice};
use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;
use tlc_compiler::ir::Activation;

/// `act(x @ w^T + b)` on the last dim of `x`, `w` `[out, in]` (PyTorch `nn.Linear`).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Option<Activation>, isa: Isa) -> Result<Option<Tensor>> {
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
            if rows <= GEMV_ROWS {
                gemv(&mut out, xs, ws, rows, inf, outf, isa);
            } else {
                // out[rows, out] (+)= x[rows, in] * w^T.
                gemm(&mut out, outf, bias_v.is_some(), Mat::rows(xs, rows, inf), Mat::rows(ws, outf, inf).t(), 1.0, threads());
            }
            if let Some(a) = act {
                let chunk = out.len().div_ceil(threads() * 4).max(1024);
                out.par_chunks_mut(chunk).for_each(|v| cpu::act(isa, a, v));
            }
            out
        })
    });
    let mut shape = dims;
    if let Some(last) = shape.last_mut() {
        *last = outf;
    }
    match out.flatten() {
        Some(v) => Ok(Some(Tensor::from_vec(v, shape, &Device::Cpu)?)),
        None => Ok(None),
    }
}

/// Rows up to which [`linear`] streams the weights itself ([`gemv`]) instead of calling a GEMM.
const GEMV_ROWS: usize = 4;

/// `out[r, o] += x[r] . w[o]` for a few rows: the weights (a classifier's hundreds of
/// megabytes) read once, in row blocks spread over the threads, each weight row dotted with
/// every input row while it is in cache.
fn gemv(out: &mut [f32], xs: &[f32], ws: &[f32], rows: usize, inf: usize, outf: usize, isa: Isa) {
    let block = outf.div_ceil(threads() * 8).clamp(1, 256);
    let mut sums = vec![0f32; outf * rows];
    sums.par_chunks_mut(block * rows).enumerate().for_each(|(bi, chunk)| {
        for (k, s) in chunk.iter_mut().enumerate() {
            let (o, r) = (bi * block + k / rows, k % rows);
            *s = cpu::dot(isa, &ws[o * inf..][..inf], &xs[r * inf..][..inf]);
        }
    });
    for (o, sr) in sums.chunks_exact(rows).enumerate() {
        for (r, &v) in sr.iter().enumerate() {
            out[r * outf + o] += v;
        }
    }
}

/// Multi-head self-attention core on the packed projection `qkv` `[N, L, 3D]` (q, k, v side by
/// side, `heads` heads of `D / heads` each, PyTorch `nn.MultiheadAttention` layout):
/// `softmax(q k^T / sqrt(hd)) v` per (image, head), reading q, k and v in place with strides,
/// one task per (image, head) writing its own `[L, hd]` block; the blocks are then
/// interleaved into `[N, L, D]`, ready for the output projection.
pub fn attention_qkv(qkv: &Tensor, heads: usize, isa: Isa) -> Result<Option<Tensor>> {
    let (n, l, d3) = qkv.dims3()?;
    if heads == 0 || d3 % (3 * heads) != 0 || l == 0 {
        return Ok(None);
    }
    let d = d3 / 3;
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let out = with_f32(qkv, |v| {
        let mut per_head = vec![0f32; n * heads * l * hd];
        per_head.par_chunks_mut(l * hd).enumerate().for_each(|(t, dst)| {
            let (b, h) = (t / heads, t % heads);
            let base = b * l * d3 + h * hd;
            // Rows of q, k, v are 3d apart; a head's columns are hd wide.
            let view = |off: usize| Mat { data: &v[base + off..], rows: l, cols: hd, row_stride: d3, col_stride: 1 };
            let mut sc = vec![0f32; l * l];
            gemm(&mut sc, l, false, view(0), view(d).t(), scale, 1);
            softmax_rows(isa, &mut sc, l);
            gemm(dst, hd, false, Mat::rows(&sc, l, l), view(2 * d), 1.0, 1);
        });
        let mut out = vec![0f32; n * l * d];
        out.par_chunks_mut(l * d).enumerate().for_each(|(b, ob)| {
            for (i, orow) in ob.chunks_mut(d).enumerate() {
                for (h, oh) in orow.chunks_mut(hd).enumerate() {
                    oh.copy_from_slice(&per_head[((b * heads + h) * l + i) * hd..][..hd]);
                }
            }
        });
        out
    });
    match out {
        Some(v) => Ok(Some(Tensor::from_vec(v, (n, l, d), &Device::Cpu)?)),
        None => Ok(None),
    }
}

dispatch! {
    /// Softmax of every row (`l` wide) of `sc`, in place.
    fn softmax_rows(sc: &mut [f32], l: usize) {
        for row in sc.chunks_mut(l) {
            let m = max_slice(row);
            map_all(row, |x| exp_f32::<FMA>(x - m));
            let inv = 1.0 / sum_slice(row);
            map_all(row, |x| x * inv);
        }
    }
}
