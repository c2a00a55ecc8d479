//! Dense convs over few input channels (a network's RGB stem: 3->32 3x3 stride 2, 3->64 7x7
//! stride 2) computed straight from the input rows, without im2col.
//!
//! With `c * kh * kw` of only 27-147, the packed GEMM spends most of its time building B
//! panels (strided gathers) for a short reduction. Here every input row is loaded as 16-lane
//! vectors of output positions (masked at the borders, split into even and odd columns at
//! stride 2, exactly as the AVX-512 depthwise convs do), each tap is one lane shift of them,
//! and that one tap vector feeds 16 FMAs: one per output channel of a 16-channel panel, whose
//! weights are the packed GEMM panel's k-major rows, broadcast. AVX-512 only.

use super::micro::{split_act, Clamp};
use super::packed::{ConvInput, PackedWeights};
use super::{uninit_vec, Geo, Isa, OutPtr};
use crate::kernels::cpu;
use crate::kernels::depthwise_x86::{deinterleave, lanes, shifted};
use rayon::prelude::*;
use std::arch::x86_64::*;
use tlc_compiler::ir::Activation;

/// Whether [`conv`] runs this conv: AVX-512 16-channel panels in one k-block, at most four
/// input channels, kernels up to 8x8 at stride 1 or 2 without dilation, one plain input.
pub(super) fn fits(input: &ConvInput, pw: &PackedWeights, g: &Geo, residual: bool) -> bool {
    pw.isa == Isa::Avx512
        && pw.mr == 16
        && pw.co.is_multiple_of(16)
        && pw.kc == pw.k
        && g.c <= 4
        && g.kw <= 8
        && g.pad[0] < g.kh
        && g.pad[2] < 16
        && g.dil == [1, 1]
        && matches!(g.stride, [1, 1] | [2, 2])
        && input.parts.len() == 1
        && input.affine.is_none()
        && input.gate.is_none()
        && !residual
        && Isa::Avx512.available()
}

/// The conv of `n` images `x` (`[n, c, h, w]`) with bias and activation ([`fits`] holds).
pub(super) fn conv(x: &[f32], pw: &PackedWeights, n: usize, g: &Geo, act: Option<Activation>) -> Vec<f32> {
    let (p, img) = (g.oh * g.ow, g.c * g.h * g.w);
    assert!(x.len() >= n * img && pw.k == g.c * g.kh * g.kw, "stem conv: bad lengths");
    let (clamp, act) = split_act(act, false);
    // Every output row of every channel is written by the task of its (image, row).
    let mut out = uninit_vec(n * pw.co * p);
    let optr = OutPtr(out.as_mut_ptr());
    (0..n * g.oh).into_par_iter().for_each(|t| {
        let (b, oy) = (t / g.oh, t % g.oh);
        for mp in 0..pw.co / 16 {
            let base = optr.at((b * pw.co + mp * 16) * p + oy * g.ow);
            // SAFETY: the CPU has AVX-512 (`fits`); `x` holds the image, the panel `16 k`
            // floats; this task alone writes row `oy` of channels `16 mp..16 mp + 16` of image
            // `b`, `p` floats apart from `base`.
            unsafe { row(&x[b * img..][..img], pw.panel(0, pw.k, mp), &pw.bias[mp * 16..][..16], g, oy, clamp, base, p) };
            if let Some(a) = act {
                for r in 0..16 {
                    // SAFETY: the row just written, owned by this task.
                    cpu::act(pw.isa, a, unsafe { std::slice::from_raw_parts_mut(base.add(r * p), g.ow) });
                }
            }
        }
    });
    out
}

/// Output row `oy` of 16 channels: `o[r * ldo + ox]` for channel `r` of the panel `w`
/// (`[k][16]`, `k = (ci, i, j)`).
///
/// # Safety
/// The CPU supports AVX-512F; `x` is one `[c, h, w]` image; `o` is valid for 16 rows of `ow`
/// floats, `ldo` apart.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn row(x: &[f32], w: &[f32], bias: &[f32], g: &Geo, oy: usize, clamp: Clamp, o: *mut f32, ldo: usize) {
    match (g.stride[1], g.kw) {
        (1, 1) => units::<1, 1>(x, w, bias, g, oy, clamp, o, ldo),
        (1, 2) => units::<1, 2>(x, w, bias, g, oy, clamp, o, ldo),
        (1, 3) => units::<1, 3>(x, w, bias, g, oy, clamp, o, ldo),
        (1, 4) => units::<1, 4>(x, w, bias, g, oy, clamp, o, ldo),
        (1, 5) => units::<1, 5>(x, w, bias, g, oy, clamp, o, ldo),
        (1, 6) => units::<1, 6>(x, w, bias, g, oy, clamp, o, ldo),
        (1, 7) => units::<1, 7>(x, w, bias, g, oy, clamp, o, ldo),
        (1, _) => units::<1, 8>(x, w, bias, g, oy, clamp, o, ldo),
        (_, 1) => units::<2, 1>(x, w, bias, g, oy, clamp, o, ldo),
        (_, 2) => units::<2, 2>(x, w, bias, g, oy, clamp, o, ldo),
        (_, 3) => units::<2, 3>(x, w, bias, g, oy, clamp, o, ldo),
        (_, 4) => units::<2, 4>(x, w, bias, g, oy, clamp, o, ldo),
        (_, 5) => units::<2, 5>(x, w, bias, g, oy, clamp, o, ldo),
        (_, 6) => units::<2, 6>(x, w, bias, g, oy, clamp, o, ldo),
        (_, 7) => units::<2, 7>(x, w, bias, g, oy, clamp, o, ldo),
        _ => units::<2, 8>(x, w, bias, g, oy, clamp, o, ldo),
    }
}

/// [`row`] for stride `S` and kernel width `KW`, 16 output positions at a time.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn units<const S: usize, const KW: usize>(x: &[f32], w: &[f32], bias: &[f32], g: &Geo, oy: usize, clamp: Clamp, o: *mut f32, ldo: usize) {
    let (pt, pl) = (g.pad[0] as isize, g.pad[2] as isize);
    for x0 in (0..g.ow).step_by(16) {
        let mut acc: [__m512; 16] = std::array::from_fn(|r| _mm512_set1_ps(bias[r]));
        // The unit's vectors start at input columns S x0 - pl + 16 q.
        let mut cols = [(0isize, 0 as __mmask16); 4];
        for (q, cq) in cols.iter_mut().enumerate().take(2 * S) {
            let col = (S * x0 + 16 * q) as isize - pl;
            *cq = (col, lanes(col, g.w));
        }
        for ci in 0..g.c {
            for i in 0..g.kh {
                let iy = (oy * g.stride[0] + i) as isize - pt;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let rp = x.as_ptr().wrapping_offset((ci * g.h) as isize * g.w as isize + iy * g.w as isize);
                let mut v = [[_mm512_setzero_ps(); 2]; 3];
                for (q, &(col, mask)) in cols.iter().enumerate().take(2 * S) {
                    // Masked lanes are not accessed, so the address may lie outside `x`.
                    v[q / S][q % S] = _mm512_maskz_loadu_ps(mask, rp.wrapping_offset(col));
                }
                let ph = if S == 1 { v } else { deinterleave(v) };
                let wrow = w.as_ptr().add((ci * g.kh + i) * KW * 16);
                for j in 0..KW {
                    let (p, t) = if S == 1 { (0, j) } else { (j % 2, j / 2) };
                    let tap = shifted(ph[1][p], ph[0][p], t);
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*wrow.add(j * 16 + r)), tap, *a);
                    }
                }
            }
        }
        let mask = lanes(x0 as isize, g.ow);
        for (r, a) in acc.into_iter().enumerate() {
            let a = match clamp {
                Some((lo, hi)) => _mm512_min_ps(_mm512_max_ps(a, _mm512_set1_ps(lo)), _mm512_set1_ps(hi)),
                None => a,
            };
            _mm512_mask_storeu_ps(o.add(r * ldo + x0), mask, a);
        }
    }
}
