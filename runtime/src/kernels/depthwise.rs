//! Direct depthwise convolution, one plane (image, channel) at a time.
//!
//! The plane is first copied into a zero-padded scratch whose columns are split into
//! `stride` phases (phase `q` holds padded columns `q, q + s, q + 2s, ...`), so that for every
//! tap the inputs of `V` neighbouring outputs are one contiguous vector load, whatever the
//! stride, and no output needs a bounds check. Output *units* (one row, `V` columns) then
//! accumulate all `kh * kw` taps in registers, four units at a time for independent FMA
//! chains (small 7x7 planes get their parallelism from four rows). Bias, activation and the
//! plane's sum (a squeeze-excitation pool) are fused. `V` is 16 with AVX-512 (for rows of at
//! least 16 outputs), 8 otherwise, with AVX2 and in the portable loops, which compute the same sums in the same order.
//!
//! With AVX-512, the common shapes (square 3x3/5x5/7x7, stride 1 or 2) skip the scratch and
//! read the plane in place with masked loads ([`super::depthwise_x86`]).

use super::cpu::{act_sum, dispatch, Isa};
use std::cell::RefCell;
use tlc_compiler::ir::Activation;

/// Geometry of one depthwise plane.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plane {
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: [usize; 2],
    /// `[top, bottom, left, right]`.
    pub pad: [usize; 4],
    pub dil: [usize; 2],
}

/// The padded, phase-split scratch of one plane and the tap offsets into it.
pub(crate) struct Layout {
    g: Plane,
    /// Lanes per unit.
    v: usize,
    /// Width of one phase.
    wq: usize,
    /// Floats per padded row (`stride * wq`).
    rs: usize,
    /// Padded rows.
    rows: usize,
    /// Per tap `(i, j)`: its offset from a unit's first input.
    offs: Vec<usize>,
    /// Per unit (row `u / chunks`, columns from `(u % chunks) * v`): the index of its first
    /// input in the scratch, of its first output, and its output count (found once per conv,
    /// not with two divisions per unit and plane).
    units: Vec<Unit>,
}

/// One output unit of a [`Layout`].
#[derive(Clone, Copy, Debug)]
struct Unit {
    base: usize,
    at: usize,
    n: usize,
}

impl Layout {
    /// The layout for `g` at level `isa`.
    pub fn new(g: Plane, isa: Isa) -> Layout {
        // Rows narrower than 16 (7x7 and 14x14 maps) waste no more lanes with 8-lane units,
        // whose loads are cheaper: measured faster there even where AVX-512 is available.
        let v = if isa >= Isa::Avx512 && g.ow >= 16 { 16 } else { 8 };
        let (s, d) = (g.stride[1], g.dil[1]);
        let chunks = g.ow.div_ceil(v);
        let wq = chunks * v + (g.kw - 1) * d / s;
        let rs = s * wq;
        let rows = (g.oh - 1) * g.stride[0] + (g.kh - 1) * g.dil[0] + 1;
        let offs = (0..g.kh * g.kw)
            .map(|t| {
                let (i, j) = (t / g.kw, t % g.kw);
                i * g.dil[0] * rs + (j * d % s) * wq + j * d / s
            })
            .collect();
        let units = (0..g.oh * chunks)
            .map(|u| {
                let (oy, c) = (u / chunks, u % chunks);
                Unit { base: oy * g.stride[0] * rs + c * v, at: oy * g.ow + c * v, n: v.min(g.ow - c * v) }
            })
            .collect();
        Layout { g, v, wq, rs, rows, offs, units }
    }

    fn len(&self) -> usize {
        self.rows * self.rs
    }

    /// Copies plane `x` (`[h, w]`) into `dst` (`len()` floats): zero padding, phase split.
    #[inline(always)]
    fn fill(&self, x: &[f32], dst: &mut [f32]) {
        let g = &self.g;
        let s = g.stride[1];
        let (pt, pl) = (g.pad[0], g.pad[2]);
        for (pr, drow) in dst.chunks_exact_mut(self.rs).enumerate() {
            if pr < pt || pr - pt >= g.h {
                drow.fill(0.0);
                continue;
            }
            let src = &x[(pr - pt) * g.w..][..g.w];
            if s == 2 {
                self.fill_row_s2(src, drow);
                continue;
            }
            for (q, ph) in drow.chunks_exact_mut(self.wq).enumerate() {
                // Phase column t holds input column t * s + q - pl.
                let lo = if pl > q { (pl - q).div_ceil(s) } else { 0 }.min(self.wq);
                let hi = ((pl + g.w).saturating_sub(q)).div_ceil(s).clamp(lo, self.wq);
                ph[..lo].fill(0.0);
                ph[hi..].fill(0.0);
                if hi == lo {
                    continue;
                }
                let first = lo * s + q - pl;
                if s == 1 {
                    ph[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
                } else {
                    for (t, d) in ph[lo..hi].iter_mut().enumerate() {
                        *d = src[first + t * s];
                    }
                }
            }
        }
    }
}

impl Layout {
    /// [`Layout::fill`] of one row at stride 2: input pairs go to the two phases in one pass
    /// (a loop the compiler vectorises, unlike two strided gathers).
    #[inline(always)]
    fn fill_row_s2(&self, src: &[f32], drow: &mut [f32]) {
        let (pl, w, wq) = (self.g.pad[2], self.g.w, self.wq);
        drow.fill(0.0);
        let (ph0, ph1) = drow.split_at_mut(wq);
        // Input column ic sits at padded column ic + pl: phase (ic + pl) % 2, index (ic + pl) / 2.
        // Pairs (src[2u], src[2u + 1]) go to (first, second) starting at `off`.
        let (first, second, off_a, off_b) = if pl % 2 == 0 { (ph0, ph1, pl / 2, pl / 2) } else { (ph1, ph0, pl / 2, pl / 2 + 1) };
        let pairs = (w / 2).min(wq.saturating_sub(off_a)).min(wq.saturating_sub(off_b));
        let (a, b) = (&mut first[off_a..off_a + pairs], &mut second[off_b..off_b + pairs]);
        for ((da, db), pair) in a.iter_mut().zip(b.iter_mut()).zip(src.chunks_exact(2)) {
            *da = pair[0];
            *db = pair[1];
        }
        // An odd width leaves one column, and a narrow scratch may not hold every pair.
        for (ic, &v) in src.iter().enumerate().skip(2 * pairs) {
            let pc = ic + pl;
            if pc / 2 < wq {
                drow[(pc % 2) * wq + pc / 2] = v;
            }
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `o[oy, ox] = act(b0 + sum_{i,j} wc[i, j] * x[oy*s + i*d - p, ox*s + j*d - p])` for one
/// plane (`o`: `oh * ow` floats); returns the sum of `o` when `want_sum`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plane(x: &[f32], wc: &[f32], b0: f32, l: &Layout, act: Option<Activation>, want_sum: bool, isa: Isa, o: &mut [f32]) -> f32 {
    let g = &l.g;
    assert!(x.len() >= g.h * g.w && wc.len() == g.kh * g.kw && o.len() == g.oh * g.ow, "depthwise plane: bad slice lengths");
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 && super::depthwise_x86::supports(g) && Isa::Avx512.available() {
        // ReLU and ReLU6 clamp the stores when no sum is wanted: no second pass.
        let clamp = if want_sum { None } else { super::cpu::clamp_bounds(act) };
        // SAFETY: the CPU has AVX-512 (checked just above) and the slice lengths were checked.
        unsafe { super::depthwise_x86::plane(x, wc, b0, clamp, g, o) };
        return if clamp.is_some() { 0.0 } else { act_sum(isa, act, o, want_sum) };
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < l.len() {
            s.resize(l.len(), 0.0);
        }
        let scr = &mut s[..l.len()];
        fill(isa, l, x, scr);
        compute(scr, wc, b0, l, isa, o);
    });
    act_sum(isa, act, o, want_sum)
}

dispatch! {
    fn fill(l: &Layout, x: &[f32], dst: &mut [f32]) {
        l.fill(x, dst)
    }
}

/// `scr`: the filled scratch.
fn compute(scr: &[f32], wc: &[f32], b0: f32, l: &Layout, isa: Isa, o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx512 && l.v == 16 && Isa::Avx512.available() {
            // SAFETY: the CPU has AVX-512 (checked just above); `Layout` bounds every read
            // to `scr` (`rows * rs` floats: the last unit's last tap ends at its end); a full
            // vector is stored only where the unit has all its lanes in `o`, tails go
            // through a stack buffer.
            unsafe { units_avx512(scr, wc, b0, l, o) };
            return;
        }
        if isa >= Isa::Avx2 && l.v == 8 && Isa::Avx2.available() {
            // SAFETY: as above, with AVX2 and FMA.
            unsafe { units_avx2(scr, wc, b0, l, o) };
            return;
        }
    }
    units_portable(scr, wc, b0, l, o)
}


fn units_portable(scr: &[f32], wc: &[f32], b0: f32, l: &Layout, o: &mut [f32]) {
    let mut acc = [0f32; 8];
    for unit in &l.units {
        let b = unit.base;
        acc.fill(b0);
        for (t, &off) in l.offs.iter().enumerate() {
            let src = &scr[b + off..][..8];
            for (a, &x) in acc.iter_mut().zip(src) {
                *a += wc[t] * x;
            }
        }
        o[unit.at..unit.at + unit.n].copy_from_slice(&acc[..unit.n]);
    }
}

/// The vector loop for one level: four units at a time, then one at a time.
macro_rules! units_simd {
    ($name:ident, $feat:literal, $lanes:literal, $vec:ty, $set1:ident, $load:ident, $fma:ident, $store:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        unsafe fn $name(scr: &[f32], wc: &[f32], b0: f32, l: &Layout, o: &mut [f32]) {
            use std::arch::x86_64::*;
            let units = l.units.len();
            let end = l.len();
            let sp = scr.as_ptr();
            let bias = $set1(b0);
            let mut tmp = [[0f32; $lanes]; 4];
            let mut u = 0;
            while u + 4 <= units {
                let us = [l.units[u], l.units[u + 1], l.units[u + 2], l.units[u + 3]];
                let bs = [us[0].base, us[1].base, us[2].base, us[3].base];
                debug_assert!(bs[3] + l.offs[l.offs.len() - 1] + $lanes <= end);
                let (mut a0, mut a1, mut a2, mut a3): ($vec, $vec, $vec, $vec) = (bias, bias, bias, bias);
                for (t, &off) in l.offs.iter().enumerate() {
                    let w = $set1(*wc.get_unchecked(t));
                    a0 = $fma(w, $load(sp.add(bs[0] + off)), a0);
                    a1 = $fma(w, $load(sp.add(bs[1] + off)), a1);
                    a2 = $fma(w, $load(sp.add(bs[2] + off)), a2);
                    a3 = $fma(w, $load(sp.add(bs[3] + off)), a3);
                }
                for (k, a) in [a0, a1, a2, a3].into_iter().enumerate() {
                    let Unit { at, n, .. } = us[k];
                    if n == $lanes {
                        $store(o.as_mut_ptr().add(at), a);
                    } else {
                        $store(tmp[k].as_mut_ptr(), a);
                        o[at..at + n].iter_mut().zip(&tmp[k]).for_each(|(d, &v)| *d = v);
                    }
                }
                u += 4;
            }
            while u < units {
                let Unit { base: b, at, n } = l.units[u];
                debug_assert!(b + l.offs[l.offs.len() - 1] + $lanes <= end);
                let mut a0: $vec = bias;
                for (t, &off) in l.offs.iter().enumerate() {
                    a0 = $fma($set1(*wc.get_unchecked(t)), $load(sp.add(b + off)), a0);
                }
                $store(tmp[0].as_mut_ptr(), a0);
                o[at..at + n].iter_mut().zip(&tmp[0]).for_each(|(d, &v)| *d = v);
                u += 1;
            }
            let _ = end;
        }
    };
}

units_simd!(units_avx2, "avx2,fma", 8, __m256, _mm256_set1_ps, _mm256_loadu_ps, _mm256_fmadd_ps, _mm256_storeu_ps);
units_simd!(units_avx512, "avx512f,avx2,fma", 16, __m512, _mm512_set1_ps, _mm512_loadu_ps, _mm512_fmadd_ps, _mm512_storeu_ps);

#[cfg(test)]
mod tests {
    use super::*;

    /// The plane geometry of a test case (PyTorch's output sizes).
    fn case(h: usize, w: usize, kh: usize, kw: usize, s: [usize; 2], p: [usize; 4], d: usize) -> Plane {
        let oh = (h + p[0] + p[1] - d * (kh - 1) - 1) / s[0] + 1;
        let ow = (w + p[2] + p[3] - d * (kw - 1) - 1) / s[1] + 1;
        Plane { h, w, kh, kw, oh, ow, stride: s, pad: p, dil: [d, d] }
    }

    fn naive(x: &[f32], wc: &[f32], b0: f32, g: &Plane) -> Vec<f32> {
        let mut o = vec![0f32; g.oh * g.ow];
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut acc = b0 as f64;
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let iy = (oy * g.stride[0] + i * g.dil[0]) as isize - g.pad[0] as isize;
                        let ix = (ox * g.stride[1] + j * g.dil[1]) as isize - g.pad[2] as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                            acc += wc[i * g.kw + j] as f64 * x[iy as usize * g.w + ix as usize] as f64;
                        }
                    }
                }
                o[oy * g.ow + ox] = acc as f32;
            }
        }
        o
    }

    #[test]
    fn planes_match_naive_at_every_level() {
        // (h, w, kh, kw, stride, pad [t, b, l, r], dil)
        for &(h, w, kh, kw, s, p, d) in &[
            (56, 56, 3, 3, [1, 1], [1; 4], 1),
            (112, 112, 3, 3, [2, 2], [1; 4], 1),
            (57, 71, 3, 3, [2, 2], [0; 4], 1),
            (28, 28, 5, 5, [1, 1], [2; 4], 1),
            (29, 45, 5, 5, [2, 2], [2; 4], 1),
            (56, 56, 7, 7, [1, 1], [3; 4], 1),
            (14, 90, 7, 7, [1, 1], [3; 4], 1),
            (40, 40, 3, 3, [1, 1], [2; 4], 2),
            (40, 77, 3, 3, [2, 2], [2; 4], 2),
            (7, 7, 3, 3, [1, 1], [1; 4], 1),
            (7, 7, 5, 5, [1, 1], [2; 4], 1),
            (9, 100, 3, 3, [3, 3], [1; 4], 1),
            (3, 5, 7, 7, [1, 1], [3; 4], 1),
            (10, 9, 3, 3, [2, 2], [0, 1, 0, 1], 1),
            (12, 13, 2, 4, [1, 3], [1, 0, 2, 1], 1),
            // In place with AVX-512: row groups of 1-4 units, 2-4 rows of narrow planes,
            // asymmetric ("same") padding, no padding, rows ending mid-vector.
            (14, 14, 3, 3, [2, 2], [0, 1, 0, 1], 1),
            (7, 7, 7, 7, [1, 1], [3; 4], 1),
            (16, 64, 3, 3, [1, 1], [1; 4], 1),
            (33, 97, 5, 5, [2, 2], [1, 2, 1, 2], 1),
            (30, 112, 7, 7, [2, 2], [3; 4], 1),
            (6, 20, 5, 5, [1, 1], [2; 4], 1),
            (6, 6, 3, 3, [2, 2], [1; 4], 1),
            (9, 81, 3, 3, [1, 1], [0; 4], 1),
            (11, 5, 5, 5, [2, 2], [2; 4], 1),
            // 14x14 maps at stride 1 (MobileNetV2's, EfficientNet-B0's): per plane.
            (14, 14, 3, 3, [1, 1], [1; 4], 1),
            (14, 14, 5, 5, [1, 1], [2; 4], 1),
        ] {
            let g = case(h, w, kh, kw, s, p, d);
            let (oh, ow) = (g.oh, g.ow);
            let x: Vec<f32> = (0..h * w).map(|i| (0.37 * i as f32 + 0.1).sin()).collect();
            let wc: Vec<f32> = (0..kh * kw).map(|i| (0.53 * i as f32).cos()).collect();
            let want = naive(&x, &wc, 0.25, &g);
            for isa in Isa::all_available() {
                let l = Layout::new(g, isa);
                let mut got = vec![f32::NAN; oh * ow];
                let sum = plane(&x, &wc, 0.25, &l, None, true, isa, &mut got);
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, |m, v| if v.is_nan() { f32::INFINITY } else { m.max(v) });
                assert!(worst < 1e-4, "{isa:?} {h}x{w} k{kh}x{kw} s{s:?} p{p:?} d{d}: {worst}");
                let want_sum: f32 = want.iter().sum();
                assert!((sum - want_sum).abs() < 1e-3 * (1.0 + want_sum.abs()), "{isa:?}: sum {sum} vs {want_sum}");
            }
        }
    }

    /// The channel-blocked AVX-512 kernel against the naive sums: two images of 32 channels
    /// (two blocks), bias, activations, plane sums; planes with and without padding, rows and
    /// columns no output reads, kernels wider than the plane, dilation, unequal strides.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn channel_blocks_match_naive() {
        use crate::kernels::depthwise_c16;
        if !Isa::Avx512.available() {
            eprintln!("no AVX-512 on this CPU: the blocked kernel is never chosen here");
            return;
        }
        let (n, c) = (2, 32);
        for &(h, w, kh, kw, s, p, d) in &[
            (7, 7, 3, 3, [1, 1], [1; 4], 1),
            (7, 7, 5, 5, [1, 1], [2; 4], 1),
            (7, 7, 7, 7, [1, 1], [3; 4], 1),
            (14, 14, 3, 3, [2, 2], [0, 1, 0, 1], 1),
            (14, 14, 5, 5, [2, 2], [2; 4], 1),
            (9, 5, 3, 3, [2, 2], [0; 4], 1),
            (10, 9, 3, 3, [2, 2], [0; 4], 1),
            (3, 3, 7, 7, [1, 1], [3; 4], 1),
            (8, 8, 3, 3, [1, 1], [2; 4], 2),
            (6, 13, 2, 4, [1, 3], [1, 0, 2, 1], 1),
        ] {
            let g = case(h, w, kh, kw, s, p, d);
            let (oh, ow) = (g.oh, g.ow);
            assert!(depthwise_c16::suits(&g, c, Isa::Avx512), "{h}x{w}: not a blocked case");
            let x: Vec<f32> = (0..n * c * h * w).map(|i| (0.37 * i as f32 + 0.1).sin()).collect();
            let wt: Vec<f32> = (0..c * kh * kw).map(|i| (0.53 * i as f32).cos()).collect();
            let bias: Vec<f32> = (0..c).map(|i| 0.1 * i as f32 - 1.0).collect();
            for act in [None, Some(Activation::Relu6), Some(Activation::Silu)] {
                let mut got = vec![f32::NAN; n * c * oh * ow];
                let mut sums = vec![f32::NAN; n * c];
                depthwise_c16::depthwise(&x, &wt, Some(&bias), n, c, &g, act, Some(&mut sums), &mut got);
                for pi in 0..n * c {
                    let ch = pi % c;
                    let mut want = naive(&x[pi * h * w..][..h * w], &wt[ch * kh * kw..][..kh * kw], bias[ch], &g);
                    let want_sum = act_sum(Isa::Portable, act, &mut want, true);
                    let plane = &got[pi * oh * ow..][..oh * ow];
                    let worst = plane.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, |m, v| if v.is_nan() { f32::INFINITY } else { m.max(v) });
                    assert!(worst < 1e-4, "{h}x{w} k{kh}x{kw} s{s:?} p{p:?} d{d} {act:?} plane {pi}: {worst}");
                    assert!((sums[pi] - want_sum).abs() < 1e-3 * (1.0 + want_sum.abs()), "{h}x{w} {act:?} plane {pi}: sum {} vs {want_sum}", sums[pi]);
                }
            }
        }
    }
}
