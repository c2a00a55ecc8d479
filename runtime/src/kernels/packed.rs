//! Dense convolution as a blocked GEMM with an AVX2+FMA 6x16 micro-kernel and weights packed
//! once (at model build time): `out[co, p] = sum_k w[co, k] * col[k, p]` per image, where `col`
//! is the im2col matrix (`k = (c, i, j)`, `p = oy * ow + ox`).
//!
//! * Weights `[co, k]` are packed into panels of [`MR`] output channels, k-major, per k-block of
//!   `kc` rows (`k0 * mpad + panel * MR * kcl`), zero-padded to a multiple of [`MR`].
//! * The im2col matrix is never built whole: each task packs one tile of at most [`NB`] output
//!   positions for one k-block straight into [`NR`]-wide micro-panels (zero past the tile),
//!   which stay in L1/L2 while every weight panel passes over them.
//! * Tasks are (image, spatial tile, output-channel chunk) triples spread over the rayon pool,
//!   so a batch runs as one parallel loop and small late-stage maps split over channels.
//! * Epilogue: bias on the first k-block, then after the last one an optional residual (same
//!   shape as the output) and the activation, on the tile while it is still in cache.

use super::{act_slice_impl, simd, threads, Geo};
use rayon::prelude::*;
use std::cell::RefCell;
use tlc_compiler::ir::Activation;

/// Output channels per micro-tile.
pub const MR: usize = 6;
/// Output positions per micro-tile.
pub const NR: usize = 16;
/// Largest k-block.
const KC_MAX: usize = 256;
/// Output positions per task tile (multiple of NR).
const NB: usize = 64;
/// Weight panels per m-block inside a task (MC = 16 * 6 = 96 rows).
const MCP: usize = 16;

/// Whether this CPU runs the packed kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Conv weights `[co, c, kh, kw]` packed for the micro-kernel, with the bias (zero-padded).
#[derive(Clone, Debug)]
pub struct PackedWeights {
    /// Output channels.
    pub co: usize,
    /// Reduction length `c * kh * kw`.
    pub k: usize,
    kc: usize,
    mpad: usize,
    data: Vec<f32>,
    bias: Vec<f32>,
}

impl PackedWeights {
    /// Packs row-major `w` `[co, k]` and the optional bias.
    pub fn new(w: &[f32], co: usize, k: usize, bias: Option<&[f32]>) -> PackedWeights {
        assert_eq!(w.len(), co * k);
        let mpad = co.div_ceil(MR) * MR;
        let kc = k.div_ceil(k.div_ceil(KC_MAX).max(1)).max(1);
        let mut data = vec![0f32; mpad * k];
        let mut k0 = 0;
        while k0 < k {
            let kcl = kc.min(k - k0);
            for mp in 0..mpad / MR {
                let base = k0 * mpad + mp * MR * kcl;
                for r in 0..MR {
                    let m = mp * MR + r;
                    if m < co {
                        for kk in 0..kcl {
                            data[base + kk * MR + r] = w[m * k + k0 + kk];
                        }
                    }
                }
            }
            k0 += kcl;
        }
        let mut b = vec![0f32; mpad];
        if let Some(bias) = bias {
            b[..co].copy_from_slice(bias);
        }
        PackedWeights { co, k, kc, mpad, data, bias: b }
    }

    #[inline(always)]
    fn panel(&self, k0: usize, kcl: usize, mp: usize) -> &[f32] {
        &self.data[k0 * self.mpad + mp * MR * kcl..][..MR * kcl]
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Packs rows `k0..k0+kcl` of the im2col matrix of one image `x` (`[c, h, w]`), columns
/// `n0..n0+nb`, as micro-panels `[jp][kk][NR]` (columns past `nb` are zero).
fn pack_b(x: &[f32], g: &Geo, k0: usize, kcl: usize, n0: usize, nb: usize, dst: &mut [f32]) {
    let taps = g.kh * g.kw;
    let np = nb.div_ceil(NR);
    let (h, w, ow) = (g.h as isize, g.w as isize, g.ow);
    for kk in 0..kcl {
        let r = k0 + kk;
        let (c, t) = (r / taps, r % taps);
        let (i, j) = (t / g.kw, t % g.kw);
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        let yoff = (i * g.dil[0]) as isize - g.pad[0] as isize;
        let xoff = (j * g.dil[1]) as isize - g.pad[2] as isize;
        let (s0, s1) = (g.stride[0] as isize, g.stride[1] as isize);
        for jp in 0..np {
            let d = &mut dst[(jp * kcl + kk) * NR..][..NR];
            let lo = n0 + jp * NR;
            let hi = (lo + NR).min(n0 + nb);
            if hi < lo + NR {
                d[hi - lo..].fill(0.0);
            }
            // Fast path: the whole micro-panel lies in one output row and inside the input row.
            if hi == lo + NR && lo % ow + NR <= ow && s1 == 1 {
                let (oy, ox) = (lo / ow, lo % ow);
                let iy = oy as isize * s0 + yoff;
                let ix0 = ox as isize + xoff;
                if iy >= 0 && iy < h && ix0 >= 0 && ix0 + NR as isize <= w {
                    let src = &plane[iy as usize * g.w + ix0 as usize..][..NR];
                    let d: &mut [f32; NR] = d.try_into().unwrap();
                    d.copy_from_slice(src);
                    continue;
                }
            }
            let mut col = lo;
            while col < hi {
                let (oy, ox) = (col / ow, col % ow);
                let run = (ow - ox).min(hi - col);
                let seg = &mut d[col - lo..col - lo + run];
                let iy = oy as isize * s0 + yoff;
                if iy < 0 || iy >= h {
                    seg.fill(0.0);
                } else {
                    let row = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let ix0 = ox as isize * s1 + xoff;
                    if s1 == 1 && ix0 >= 0 && ix0 + run as isize <= w {
                        seg.copy_from_slice(&row[ix0 as usize..ix0 as usize + run]);
                    } else {
                        for (q, v) in seg.iter_mut().enumerate() {
                            let ix = ix0 + q as isize * s1;
                            *v = if ix >= 0 && ix < w { row[ix as usize] } else { 0.0 };
                        }
                    }
                }
                col += run;
            }
        }
    }
}

/// `C[6, 16] (= bias | +=) A[6, kc] * B[kc, 16]`; `a` k-major `[kc][6]`, `b` `[kc][16]`,
/// `c` rows `ldc` apart. `bias: Some` starts from the bias, `None` adds to `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_6x16(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, bias: Option<&[f32]>) {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_ps();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
    let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
    let mut ap = a;
    let mut bp = b;
    for _ in 0..kc {
        let b0 = _mm256_loadu_ps(bp);
        let b1 = _mm256_loadu_ps(bp.add(8));
        let a0 = _mm256_broadcast_ss(&*ap);
        c00 = _mm256_fmadd_ps(a0, b0, c00);
        c01 = _mm256_fmadd_ps(a0, b1, c01);
        let a1 = _mm256_broadcast_ss(&*ap.add(1));
        c10 = _mm256_fmadd_ps(a1, b0, c10);
        c11 = _mm256_fmadd_ps(a1, b1, c11);
        let a2 = _mm256_broadcast_ss(&*ap.add(2));
        c20 = _mm256_fmadd_ps(a2, b0, c20);
        c21 = _mm256_fmadd_ps(a2, b1, c21);
        let a3 = _mm256_broadcast_ss(&*ap.add(3));
        c30 = _mm256_fmadd_ps(a3, b0, c30);
        c31 = _mm256_fmadd_ps(a3, b1, c31);
        let a4 = _mm256_broadcast_ss(&*ap.add(4));
        c40 = _mm256_fmadd_ps(a4, b0, c40);
        c41 = _mm256_fmadd_ps(a4, b1, c41);
        let a5 = _mm256_broadcast_ss(&*ap.add(5));
        c50 = _mm256_fmadd_ps(a5, b0, c50);
        c51 = _mm256_fmadd_ps(a5, b1, c51);
        ap = ap.add(MR);
        bp = bp.add(NR);
    }
    let rows = [(c00, c01), (c10, c11), (c20, c21), (c30, c31), (c40, c41), (c50, c51)];
    for (r, (lo, hi)) in rows.into_iter().enumerate() {
        let p = c.add(r * ldc);
        let (base0, base1) = match bias {
            Some(bv) => {
                let v = _mm256_set1_ps(bv[r]);
                (v, v)
            }
            None => (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))),
        };
        _mm256_storeu_ps(p, _mm256_add_ps(base0, lo));
        _mm256_storeu_ps(p.add(8), _mm256_add_ps(base1, hi));
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_6x16(_: usize, _: *const f32, _: *const f32, _: *mut f32, _: usize, _: Option<&[f32]>) {
    unreachable!("the packed kernel is only used where `available()`")
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Convolution of `n` images `x` (`[n, c, h, w]`) with packed weights: returns `[n, co, oh, ow]`
/// with bias, then `+ residual` (same shape as the output) and the activation.
/// Callers check [`available`] and that `pw.k == c * kh * kw`.
pub fn conv(x: &[f32], pw: &PackedWeights, n: usize, g: &Geo, residual: Option<&[f32]>, act: Option<Activation>) -> Vec<f32> {
    let p = g.oh * g.ow;
    let co = pw.co;
    let img = g.c * g.h * g.w;
    assert_eq!(pw.k, g.c * g.kh * g.kw);
    assert!(x.len() >= n * img && residual.is_none_or(|r| r.len() == n * co * p));
    let total = n * co * p;
    let mut out: Vec<f32> = Vec::with_capacity(total);
    let tiles = p.div_ceil(NB);
    let mpanels = pw.mpad / MR;
    let t = threads();
    let msplit = if n * tiles >= 2 * t { 1 } else { (4 * t).div_ceil(n * tiles).min(mpanels).max(1) };
    let per_chunk = mpanels.div_ceil(msplit);
    let msplit = mpanels.div_ceil(per_chunk);
    let optr = OutPtr(out.as_mut_ptr());
    let kc = pw.kc;
    // Several channel chunks per tile: pack each tile's im2col once, shared by its chunks
    // (tile stride `k * NB`, k-block `k0` at `k0 * np * NR`, layout `[jp][kk][NR]`).
    let shared: Option<Vec<f32>> = (msplit > 1).then(|| {
        let kblocks = pw.k.div_ceil(kc);
        let mut v = vec![0f32; n * tiles * pw.k * NB];
        let vp = OutPtr(v.as_mut_ptr());
        (0..n * tiles * kblocks).into_par_iter().for_each(|t| {
            let vp = vp;
            let (bt, kb) = (t / kblocks, t % kblocks);
            let (b, tile) = (bt / tiles, bt % tiles);
            let (n0, k0) = (tile * NB, kb * kc);
            let nb = NB.min(p - n0);
            let np = nb.div_ceil(NR);
            let kcl = kc.min(pw.k - k0);
            // SAFETY: each task writes its own (tile, k-block) region.
            let dst = unsafe { std::slice::from_raw_parts_mut(vp.0.add(bt * pw.k * NB + k0 * np * NR), kcl * np * NR) };
            pack_b(&x[b * img..(b + 1) * img], g, k0, kcl, n0, nb, dst);
        });
        v
    });
    (0..n * tiles * msplit).into_par_iter().for_each(|task| {
        let optr = optr;
        let (b, rest) = (task / (tiles * msplit), task % (tiles * msplit));
        let (tile, mc) = (rest / msplit, rest % msplit);
        let n0 = tile * NB;
        let nb = NB.min(p - n0);
        let np = nb.div_ceil(NR);
        let (mlo, mhi) = (mc * per_chunk, ((mc + 1) * per_chunk).min(mpanels));
        let xb = &x[b * img..(b + 1) * img];
        // SAFETY: every task writes rows mlo*MR..min(mhi*MR, co) and columns n0..n0+nb of image
        // b only; tasks cover disjoint rectangles, and every element of `out` is written by
        // the first k-block before it is read.
        let cb = unsafe { optr.0.add(b * co * p) };
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if shared.is_none() && s.len() < kc * np * NR {
                s.resize(kc * np * NR, 0.0);
            }
            let bpack = &mut s[..];
            let mut tmp = [0f32; MR * NR];
            let mut k0 = 0;
            while k0 < pw.k {
                let kcl = kc.min(pw.k - k0);
                let bsrc: &[f32] = match &shared {
                    Some(v) => &v[(b * tiles + tile) * pw.k * NB + k0 * np * NR..][..kcl * np * NR],
                    None => {
                        pack_b(xb, g, k0, kcl, n0, nb, bpack);
                        bpack
                    }
                };
                let first = k0 == 0;
                let mut mb = mlo;
                while mb < mhi {
                    let me = (mb + MCP).min(mhi);
                    for jp in 0..np {
                        let bp = bsrc[jp * kcl * NR..].as_ptr();
                        let col = n0 + jp * NR;
                        let ncols = NR.min(n0 + nb - col);
                        for mp in mb..me {
                            let ap = pw.panel(k0, kcl, mp).as_ptr();
                            let row = mp * MR;
                            let nrows = MR.min(co - row);
                            let bias = first.then(|| &pw.bias[row..row + MR]);
                            unsafe {
                                if nrows == MR && ncols == NR {
                                    kernel_6x16(kcl, ap, bp, cb.add(row * p + col), p, bias);
                                } else {
                                    if !first {
                                        for r in 0..nrows {
                                            std::ptr::copy_nonoverlapping(cb.add((row + r) * p + col), tmp.as_mut_ptr().add(r * NR), ncols);
                                        }
                                    }
                                    kernel_6x16(kcl, ap, bp, tmp.as_mut_ptr(), NR, bias);
                                    for r in 0..nrows {
                                        std::ptr::copy_nonoverlapping(tmp.as_ptr().add(r * NR), cb.add((row + r) * p + col), ncols);
                                    }
                                }
                            }
                        }
                    }
                    mb = me;
                }
                k0 += kcl;
            }
        });
        if residual.is_some() || act.is_some() {
            let (rlo, rhi) = (mlo * MR, (mhi * MR).min(co));
            simd(|| {
                for r in rlo..rhi {
                    // SAFETY: this task's own rectangle (see above).
                    let row = unsafe { std::slice::from_raw_parts_mut(cb.add(r * p + n0), nb) };
                    if let Some(res) = residual {
                        let rr = &res[b * co * p + r * p + n0..][..nb];
                        for (o, v) in row.iter_mut().zip(rr) {
                            *o += v;
                        }
                    }
                    if let Some(a) = act {
                        act_slice_impl(a, row);
                    }
                }
            });
        }
    });
    // SAFETY: the tasks above wrote all n * co * p elements.
    unsafe { out.set_len(total) };
    out
}
