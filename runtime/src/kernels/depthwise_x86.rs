//! AVX-512 depthwise convolution that reads the plane in place (no padded scratch).
//!
//! Every input row is loaded as 16-lane vectors whose lanes outside the plane are masked to
//! zero (masked loads never touch those addresses), so padding costs nothing and nothing is
//! copied. At stride 1 a tap's inputs are two neighbouring vectors joined by a lane shift
//! (`valignd`); at stride 2 the vectors are first split into even and odd columns
//! (`vpermt2ps`), after which every tap is again one shift. A block of up to four output rows
//! by up to two 16-wide units keeps eight independent FMA chains, loads each input row once
//! and shifts it once per tap for all the output rows it feeds.
//!
//! Square 3x3, 5x5 and 7x7 kernels, stride 1 or 2 in both directions, no dilation, left
//! padding below 16; other shapes keep the scratch path of [`super::depthwise`].

use super::depthwise::Plane;
use std::arch::x86_64::*;

/// Whether [`plane`] computes `g`.
pub(crate) fn supports(g: &Plane) -> bool {
    matches!(g.kw, 3 | 5 | 7) && g.kh == g.kw && g.dil == [1, 1] && matches!(g.stride, [1, 1] | [2, 2]) && g.pad[2] < 16 && g.pad[0] < g.kh
}

/// `o = b0 + conv(x, wc)` for one plane with geometry `g` ([`supports`] holds), clamped to
/// `clamp` as it is stored (ReLU, ReLU6).
///
/// # Safety
/// The CPU supports AVX-512F; `x` holds `g.h * g.w` floats, `wc` `g.kh * g.kw`, `o` `g.oh * g.ow`.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn plane(x: &[f32], wc: &[f32], b0: f32, clamp: Option<(f32, f32)>, g: &Plane, o: &mut [f32]) {
    debug_assert!(supports(g) && x.len() >= g.h * g.w && wc.len() == g.kh * g.kw && o.len() >= g.oh * g.ow);
    let chunks = g.ow.div_ceil(16);
    let mut oy = 0;
    while oy < g.oh {
        let rows = (g.oh - oy).min(4);
        let mut c0 = 0;
        while c0 < chunks {
            let n = (chunks - c0).min(2);
            match (g.kw, g.stride[1]) {
                (3, 1) => group::<3, 1>(x, wc, b0, clamp, g, oy, rows, c0, n, o),
                (5, 1) => group::<5, 1>(x, wc, b0, clamp, g, oy, rows, c0, n, o),
                (7, 1) => group::<7, 1>(x, wc, b0, clamp, g, oy, rows, c0, n, o),
                (3, _) => group::<3, 2>(x, wc, b0, clamp, g, oy, rows, c0, n, o),
                (5, _) => group::<5, 2>(x, wc, b0, clamp, g, oy, rows, c0, n, o),
                _ => group::<7, 2>(x, wc, b0, clamp, g, oy, rows, c0, n, o),
            }
            c0 += n;
        }
        oy += rows;
    }
}

/// Picks the const-sized block for `rows` (1-4) output rows by `n` (1-2) units. Never
/// inlined: each kernel size and stride is its own function, whose blocks get registers
/// allocated alone (all inlined into [`plane`], they spilled accumulators; with this and the
/// 3x3 weights broadcast once per block, `convbench` 1 thread: 192 planes 28x28 k3
/// 0.074 -> 0.048 ms, 144 56x56 k3 0.175 -> 0.134, 240 28x28 k5 0.169 -> 0.144).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline(never)]
unsafe fn group<const K: usize, const S: usize>(x: &[f32], wc: &[f32], b0: f32, clamp: Option<(f32, f32)>, g: &Plane, oy: usize, rows: usize, c0: usize, n: usize, o: &mut [f32]) {
    match (rows, n) {
        (4, 2) => block::<K, S, 4, 2>(x, wc, b0, clamp, g, oy, c0, o),
        (3, 2) => block::<K, S, 3, 2>(x, wc, b0, clamp, g, oy, c0, o),
        (2, 2) => block::<K, S, 2, 2>(x, wc, b0, clamp, g, oy, c0, o),
        (1, 2) => block::<K, S, 1, 2>(x, wc, b0, clamp, g, oy, c0, o),
        (4, _) => block::<K, S, 4, 1>(x, wc, b0, clamp, g, oy, c0, o),
        (3, _) => block::<K, S, 3, 1>(x, wc, b0, clamp, g, oy, c0, o),
        (2, _) => block::<K, S, 2, 1>(x, wc, b0, clamp, g, oy, c0, o),
        _ => block::<K, S, 1, 1>(x, wc, b0, clamp, g, oy, c0, o),
    }
}

/// Lanes of the 16-wide vector starting at plane column `col` that lie inside `0..w`.
#[inline(always)]
pub(crate) fn lanes(col: isize, w: usize) -> __mmask16 {
    let lo = (-col).clamp(0, 16) as u32;
    let hi = (w as isize - col).clamp(0, 16) as u32;
    if hi <= lo {
        0
    } else {
        (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16
    }
}

/// `R` output rows from `oy` by `G` units from unit `c0`, kernel `K x K`, stride `S`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn block<const K: usize, const S: usize, const R: usize, const G: usize>(x: &[f32], wc: &[f32], b0: f32, clamp: Option<(f32, f32)>, g: &Plane, oy: usize, c0: usize, o: &mut [f32]) {
    let (pt, pl) = (g.pad[0] as isize, g.pad[2] as isize);
    let mut acc = [[_mm512_set1_ps(b0); G]; R];
    // A 3x3 kernel's nine weights broadcast once per block (5x5 and 7x7 ones per use: their
    // 25 or 49 registers would spill).
    let mut w3 = [_mm512_setzero_ps(); 9];
    if K == 3 {
        for (t, v) in w3.iter_mut().enumerate() {
            *v = _mm512_set1_ps(*wc.get_unchecked(t));
        }
    }
    // Vector (m, q) of a row starts at plane column 16 ((c0 + m) S + q) - pl.
    let mut cols = [[(0isize, 0 as __mmask16); 2]; 3];
    for (m, cm) in cols.iter_mut().enumerate().take(G + 1) {
        for (q, cq) in cm.iter_mut().enumerate().take(S) {
            let col = (16 * ((c0 + m) * S + q)) as isize - pl;
            *cq = (col, lanes(col, g.w));
        }
    }
    // Input rows oy*S - pt .. (oy + R - 1)*S + K - pt; input row ii feeds output row r with tap row ii - r*S.
    for ii in 0..(R - 1) * S + K {
        let iy = ((oy * S) as isize) + ii as isize - pt;
        if iy < 0 || iy >= g.h as isize {
            continue;
        }
        let row = x.as_ptr().wrapping_offset(iy * g.w as isize);
        let mut v = [[_mm512_setzero_ps(); 2]; 3];
        for (vm, cm) in v.iter_mut().zip(&cols).take(G + 1) {
            for (vq, &(col, mask)) in vm.iter_mut().zip(cm).take(S) {
                // SAFETY (of the caller's contract): lanes outside the row are masked, and a
                // masked AVX-512 load does not access them, so the pointer may lie outside `x`.
                *vq = _mm512_maskz_loadu_ps(mask, row.wrapping_offset(col));
            }
        }
        let phases: [[__m512; 2]; 3] = if S == 1 { v } else { deinterleave(v) };
        for j in 0..K {
            // Stride 1: tap j is lane shift j of the vectors; stride 2: phase j % 2, shift j / 2.
            let (p, t) = if S == 1 { (0, j) } else { (j % 2, j / 2) };
            let mut tap = [_mm512_setzero_ps(); G];
            for (m, tm) in tap.iter_mut().enumerate() {
                *tm = shifted(phases[m + 1][p], phases[m][p], t);
            }
            // The shifted vectors serve every output row this input row reaches.
            for (r, accs) in acc.iter_mut().enumerate() {
                let i = ii as isize - (r * S) as isize;
                if i < 0 || i >= K as isize {
                    continue;
                }
                let t = i as usize * K + j;
                let w = if K == 3 { w3[t] } else { _mm512_set1_ps(*wc.get_unchecked(t)) };
                for (a, &tm) in accs.iter_mut().zip(&tap) {
                    *a = _mm512_fmadd_ps(w, tm, *a);
                }
            }
        }
    }
    for (r, accs) in acc.iter().enumerate() {
        for (m, &a) in accs.iter().enumerate() {
            let x0 = (c0 + m) * 16;
            let n = 16.min(g.ow - x0);
            let at = o.as_mut_ptr().add((oy + r) * g.ow + x0);
            let a = match clamp {
                Some((lo, hi)) => _mm512_min_ps(_mm512_max_ps(a, _mm512_set1_ps(lo)), _mm512_set1_ps(hi)),
                None => a,
            };
            _mm512_mask_storeu_ps(at, ((1u32 << n) - 1) as __mmask16, a);
        }
    }
}

/// Stride-2 phases: `v[m] = [cols 32m.., cols 32m+16..]` becomes `[even cols, odd cols]`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn deinterleave(v: [[__m512; 2]; 3]) -> [[__m512; 2]; 3] {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    v.map(|[a, b]| [_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b)])
}

/// Lanes `j..16` of `lo` followed by lanes `0..j` of `hi` (`j < 8`).
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn shifted(hi: __m512, lo: __m512, j: usize) -> __m512 {
    let (a, b) = (_mm512_castps_si512(hi), _mm512_castps_si512(lo));
    _mm512_castsi512_ps(match j {
        0 => b,
        1 => _mm512_alignr_epi32::<1>(a, b),
        2 => _mm512_alignr_epi32::<2>(a, b),
        3 => _mm512_alignr_epi32::<3>(a, b),
        4 => _mm512_alignr_epi32::<4>(a, b),
        5 => _mm512_alignr_epi32::<5>(a, b),
        6 => _mm512_alignr_epi32::<6>(a, b),
        _ => _mm512_alignr_epi32::<7>(a, b),
    })
}
