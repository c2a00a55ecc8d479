//! Convolutions as candle custom ops with their own backward pass, for the training path
//! (`kernels::conv2d` on the CPU): depthwise convs (forward with the fast plane kernel;
//! input gradient as a depthwise conv of the output gradient with the flipped kernel at stride
//! 1, a scatter otherwise; weight gradient as per-tap correlations) and 1x1 stride-1 dense
//! convs (three GEMMs per image). candle's own path builds the depthwise conv from nine
//! shifted views and runs 1x1 convs through im2col, whose backward passes are far slower.

use super::cpu::Isa;
use super::depthwise::{self, Plane};
use super::fast::gemm::{gemm, Mat};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Contiguous f32 data of a custom op's operand, or an error.
fn data<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("expected f32 data") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("expected contiguous data") };
    Ok(&v[a..b])
}

/// Depthwise conv `[n, c, h, w] x [c, 1, kh, kw]` (no bias).
pub(crate) struct Depthwise {
    pub n: usize,
    pub g: Plane,
    pub c: usize,
}

impl Depthwise {
    fn taps(&self) -> usize {
        self.g.kh * self.g.kw
    }
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "tlc-depthwise"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (data(s1, l1)?, data(s2, l2)?);
        let g = &self.g;
        let isa = Isa::detect();
        let layout = depthwise::Layout::new(*g, isa);
        let (hw, ohw, taps) = (g.h * g.w, g.oh * g.ow, self.taps());
        let mut out = vec![0f32; self.n * self.c * ohw];
        out.par_chunks_mut(ohw).enumerate().for_each(|(pi, o)| {
            let ch = pi % self.c;
            depthwise::plane(&x[pi * hw..][..hw], &w[ch * taps..][..taps], 0.0, &layout, None, false, isa, o);
        });
        Ok((CpuStorage::F32(out), Shape::from((self.n, self.c, g.oh, g.ow))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let (xv, wv, gv) = (x.flatten_all()?.to_vec1::<f32>()?, w.flatten_all()?.to_vec1::<f32>()?, grad.flatten_all()?.to_vec1::<f32>()?);
        let gx = self.grad_input(&gv, &wv);
        let gw = self.grad_weight(&gv, &xv);
        let dev = x.device();
        Ok((Some(Tensor::from_vec(gx, x.dims(), dev)?), Some(Tensor::from_vec(gw, w.dims(), dev)?)))
    }
}

impl Depthwise {
    /// `dL/dx`: every output gradient spread back over the inputs its taps read. At stride 1
    /// that is a depthwise conv of the output gradient with the flipped kernel.
    fn grad_input(&self, gy: &[f32], w: &[f32]) -> Vec<f32> {
        let g = &self.g;
        let (hw, ohw, taps) = (g.h * g.w, g.oh * g.ow, self.taps());
        let mut gx = vec![0f32; self.n * self.c * hw];
        let (ekh, ekw) = ((g.kh - 1) * g.dil[0], (g.kw - 1) * g.dil[1]);
        let flip = g.stride == [1, 1] && g.pad[0] <= ekh && g.pad[1] <= ekh && g.pad[2] <= ekw && g.pad[3] <= ekw;
        if flip {
            // y[o] = sum_t w[t] x[o + t*d - p]  =>  gx[i] = sum_t w[t] gy[i - t*d + p]: a conv of
            // gy with the flipped kernel and padding (k - 1) * d - p (the far side whatever
            // makes the output h x w).
            let pad = [ekh - g.pad[0], ekh - g.pad[1], ekw - g.pad[2], ekw - g.pad[3]];
            let back = Plane { h: g.oh, w: g.ow, kh: g.kh, kw: g.kw, oh: g.h, ow: g.w, stride: [1, 1], pad, dil: g.dil };
            let isa = Isa::detect();
            let layout = depthwise::Layout::new(back, isa);
            gx.par_chunks_mut(hw).enumerate().for_each(|(pi, o)| {
                let ch = pi % self.c;
                let flipped: Vec<f32> = w[ch * taps..][..taps].iter().rev().copied().collect();
                depthwise::plane(&gy[pi * ohw..][..ohw], &flipped, 0.0, &layout, None, false, isa, o);
            });
            return gx;
        }
        gx.par_chunks_mut(hw).enumerate().for_each(|(pi, o)| {
            let ch = pi % self.c;
            let (gp, wc) = (&gy[pi * ohw..][..ohw], &w[ch * taps..][..taps]);
            for (t, &wt) in wc.iter().enumerate() {
                let (dy, dx) = ((t / g.kw) * g.dil[0], (t % g.kw) * g.dil[1]);
                for oy in 0..g.oh {
                    let Some(iy) = (oy * g.stride[0] + dy).checked_sub(g.pad[0]).filter(|&y| y < g.h) else { continue };
                    for ox in 0..g.ow {
                        if let Some(ix) = (ox * g.stride[1] + dx).checked_sub(g.pad[2]).filter(|&x| x < g.w) {
                            o[iy * g.w + ix] += wt * gp[oy * g.ow + ox];
                        }
                    }
                }
            }
        });
        gx
    }

    /// `dL/dw[c, t]`: the sum over images and outputs of the output gradient times the input
    /// tap `t` read, one task per channel.
    fn grad_weight(&self, gy: &[f32], x: &[f32]) -> Vec<f32> {
        let g = &self.g;
        let (hw, ohw, taps) = (g.h * g.w, g.oh * g.ow, self.taps());
        let mut gw = vec![0f32; self.c * taps];
        gw.par_chunks_mut(taps).enumerate().for_each(|(ch, wt)| {
            for b in 0..self.n {
                let pi = b * self.c + ch;
                let (gp, xp) = (&gy[pi * ohw..][..ohw], &x[pi * hw..][..hw]);
                for (t, acc) in wt.iter_mut().enumerate() {
                    let (dy, dx) = ((t / g.kw) * g.dil[0], (t % g.kw) * g.dil[1]);
                    let mut s = 0f32;
                    for oy in 0..g.oh {
                        let Some(iy) = (oy * g.stride[0] + dy).checked_sub(g.pad[0]).filter(|&y| y < g.h) else { continue };
                        let (grow, xrow) = (&gp[oy * g.ow..][..g.ow], &xp[iy * g.w..][..g.w]);
                        for (ox, gv) in grow.iter().enumerate() {
                            if let Some(ix) = (ox * g.stride[1] + dx).checked_sub(g.pad[2]).filter(|&x| x < g.w) {
                                s += gv * xrow[ix];
                            }
                        }
                    }
                    *acc += s;
                }
            }
        });
        gw
    }
}

/// 1x1 stride-1 unpadded dense conv `[n, ci, h, w] x [co, ci, 1, 1]` (no bias): per image
/// `y = W x` with `x` as `[ci, hw]`.
pub(crate) struct Pointwise {
    pub n: usize,
    pub ci: usize,
    pub co: usize,
    pub h: usize,
    pub w: usize,
}

impl CustomOp2 for Pointwise {
    fn name(&self) -> &'static str {
        "tlc-pointwise"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (data(s1, l1)?, data(s2, l2)?);
        let (ci, co, hw) = (self.ci, self.co, self.h * self.w);
        let mut out = vec![0f32; self.n * co * hw];
        out.par_chunks_mut(co * hw).zip(x.par_chunks(ci * hw)).for_each(|(o, xb)| {
            gemm(o, hw, false, Mat::rows(w, co, ci), Mat::rows(xb, ci, hw), 1.0, 1);
        });
        Ok((CpuStorage::F32(out), Shape::from((self.n, co, self.h, self.w))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let (xv, wv, gv) = (x.flatten_all()?.to_vec1::<f32>()?, w.flatten_all()?.to_vec1::<f32>()?, grad.flatten_all()?.to_vec1::<f32>()?);
        let (ci, co, hw) = (self.ci, self.co, self.h * self.w);
        // dL/dx = W^T dL/dy per image.
        let mut gx = vec![0f32; self.n * ci * hw];
        gx.par_chunks_mut(ci * hw).zip(gv.par_chunks(co * hw)).for_each(|(o, gb)| {
            gemm(o, hw, false, Mat::rows(&wv, co, ci).t(), Mat::rows(gb, co, hw), 1.0, 1);
        });
        // dL/dW = sum over images of dL/dy x^T.
        let mut gw = vec![0f32; co * ci];
        for (gb, xb) in gv.chunks(co * hw).zip(xv.chunks(ci * hw)) {
            gemm(&mut gw, ci, true, Mat::rows(gb, co, hw), Mat::rows(xb, ci, hw).t(), 1.0, rayon::current_num_threads());
        }
        let _ = res;
        let dev = x.device();
        Ok((Some(Tensor::from_vec(gx, x.dims(), dev)?), Some(Tensor::from_vec(gw, w.dims(), dev)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn var(shape: &[usize], a: f64) -> Var {
        let n: usize = shape.iter().product();
        Var::from_vec((0..n).map(|i| (a * i as f64 + 0.3).sin() as f32).collect::<Vec<f32>>(), shape, &Device::Cpu).unwrap()
    }

    /// Gradients of `sum(y * probe)` through our op and through candle's conv2d.
    fn compare(x: &Var, w: &Var, ours: &Tensor, theirs: &Tensor) {
        let probe = var(ours.dims(), 0.71);
        let loss = |y: &Tensor| y.mul(probe.as_tensor()).unwrap().sum_all().unwrap();
        let (ga, gb) = (loss(ours).backward().unwrap(), loss(theirs).backward().unwrap());
        assert!((ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-4);
        for v in [x, w] {
            let (a, b) = (ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-3, "gradient differs by {d}");
        }
    }

    #[test]
    fn pointwise_gradients_match_candle() {
        let (x, w) = (var(&[3, 5, 4, 6], 0.37), var(&[7, 5, 1, 1], 0.53));
        let ours = x.as_tensor().apply_op2(w.as_tensor(), Pointwise { n: 3, ci: 5, co: 7, h: 4, w: 6 }).unwrap();
        let theirs = x.as_tensor().conv2d(w.as_tensor(), 0, 1, 1, 1).unwrap();
        compare(&x, &w, &ours, &theirs);
    }

    #[test]
    fn depthwise_gradients_match_candle() {
        // (size, kernel, stride, pad, dilation): the flipped-conv path and the scatter path.
        for &(hw, k, s, p, d) in &[(9, 3, 1, 1, 1), (9, 3, 2, 1, 1), (10, 5, 2, 2, 1), (11, 3, 1, 2, 2), (8, 3, 1, 0, 1)] {
            let (x, w) = (var(&[2, 3, hw, hw], 0.37), var(&[3, 1, k, k], 0.53));
            let o = (hw + 2 * p - d * (k - 1) - 1) / s + 1;
            let g = Plane { h: hw, w: hw, kh: k, kw: k, oh: o, ow: o, stride: [s, s], pad: [p; 4], dil: [d, d] };
            let ours = x.as_tensor().apply_op2(w.as_tensor(), Depthwise { n: 2, g, c: 3 }).unwrap();
            let theirs = x.as_tensor().conv2d(w.as_tensor(), p, s, d, 3).unwrap();
            compare(&x, &w, &ours, &theirs);
        }
    }
}
