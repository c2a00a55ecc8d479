//! Direct depthwise convolution of one plane (one image and channel): every output element
//! accumulates all its taps in a register before it is stored once. The interior columns
//! (every tap inside the row) run 8 outputs per AVX2+FMA vector, 32 per step with four
//! independent accumulators, for stride 1 and 2 (stride 2 reads 16 inputs and keeps the even
//! lanes); the border columns, other strides and CPUs without AVX2 take the scalar path,
//! which has the same structure and the same results up to summation order.

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

impl Plane {
    /// Output columns `[lo, hi)` whose taps all lie inside the row.
    fn interior(&self) -> (usize, usize) {
        let (s, p, ext) = (self.stride[1], self.pad[2], (self.kw - 1) * self.dil[1]);
        let lo = p.div_ceil(s).min(self.ow);
        // ox * s - p + ext <= w - 1
        let hi = if self.w + p > ext { ((self.w - 1 + p - ext) / s + 1).min(self.ow) } else { 0 };
        (lo, hi.max(lo))
    }
}

/// `o[oy, ox] = b0 + sum_{i,j} wc[i, j] * x[oy*s + i*d - p, ox*s + j*d - p]` for one plane.
pub(crate) fn plane(x: &[f32], wc: &[f32], b0: f32, g: &Plane, o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if (g.stride[1] == 1 || g.stride[1] == 2) && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            unsafe { plane_avx2(x, wc, b0, g, o) };
            return;
        }
    }
    plane_scalar(x, wc, b0, g, o)
}

/// Valid kernel rows `[ilo, ihi)` of output row `oy` and the input row of kernel row 0
/// (may be negative).
#[inline(always)]
fn rows(g: &Plane, oy: usize) -> (usize, usize, isize) {
    let y0 = (oy * g.stride[0]) as isize - g.pad[0] as isize;
    let d = g.dil[0] as isize;
    let mut ilo = 0;
    while ilo < g.kh && y0 + ilo as isize * d < 0 {
        ilo += 1;
    }
    let mut ihi = g.kh;
    while ihi > ilo && y0 + (ihi - 1) as isize * d >= g.h as isize {
        ihi -= 1;
    }
    (ilo, ihi, y0)
}

/// One output element with per-tap bounds checks (borders).
#[inline(always)]
fn edge(x: &[f32], wc: &[f32], b0: f32, g: &Plane, ilo: usize, ihi: usize, y0: isize, ox: usize) -> f32 {
    let x0 = (ox * g.stride[1]) as isize - g.pad[2] as isize;
    let mut acc = b0;
    for i in ilo..ihi {
        let row = &x[(y0 + (i * g.dil[0]) as isize) as usize * g.w..][..g.w];
        for j in 0..g.kw {
            let ix = x0 + (j * g.dil[1]) as isize;
            if ix >= 0 && (ix as usize) < g.w {
                acc += wc[i * g.kw + j] * row[ix as usize];
            }
        }
    }
    acc
}

fn plane_scalar(x: &[f32], wc: &[f32], b0: f32, g: &Plane, o: &mut [f32]) {
    let (xlo, xhi) = g.interior();
    for oy in 0..g.oh {
        let (ilo, ihi, y0) = rows(g, oy);
        let orow = &mut o[oy * g.ow..(oy + 1) * g.ow];
        for ox in (0..xlo).chain(xhi..g.ow) {
            orow[ox] = edge(x, wc, b0, g, ilo, ihi, y0, ox);
        }
        for ox in xlo..xhi {
            let x0 = ox * g.stride[1] - g.pad[2];
            let mut acc = b0;
            for i in ilo..ihi {
                let row = &x[(y0 + (i * g.dil[0]) as isize) as usize * g.w..][..g.w];
                for j in 0..g.kw {
                    acc += wc[i * g.kw + j] * row[x0 + j * g.dil[1]];
                }
            }
            orow[ox] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2(x: &[f32], wc: &[f32], b0: f32, g: &Plane, o: &mut [f32]) {
    use std::arch::x86_64::*;
    let (xlo, xhi) = g.interior();
    let s = g.stride[1];
    // Vector loads must stay inside the row: stride 1 reads 8 inputs from the first tap of
    // `ox`, stride 2 reads 16.
    // A chunk of 8 outputs starting at `ox` is vectorised when all 8 are interior and its
    // widest load stays inside the row: `ox*s - p + span + 8*s <= w`. `vlim`: chunk starts
    // below it qualify.
    let span = (g.kw - 1) * g.dil[1];
    let vlim = if g.w + g.pad[2] >= span + 8 * s && xhi >= 8 { ((g.w + g.pad[2] - span - 8 * s) / s + 1).min(xhi - 7) } else { 0 };
    let bias = _mm256_set1_ps(b0);
    let wp = wc.as_ptr();
    let xp = x.as_ptr();
    // Loads 8 outputs' worth of inputs starting at input column `ix` of row `r`.
    #[inline(always)]
    unsafe fn load(r: *const f32, ix: usize, s: usize) -> __m256 {
        if s == 1 {
            _mm256_loadu_ps(r.add(ix))
        } else {
            let a = _mm256_loadu_ps(r.add(ix));
            let b = _mm256_loadu_ps(r.add(ix + 8));
            // [a0 a2 b0 b2 | a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6]
            let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e)))
        }
    }
    for oy in 0..g.oh {
        let (ilo, ihi, y0) = rows(g, oy);
        let orow = o.as_mut_ptr().add(oy * g.ow);
        for ox in (0..xlo).chain(xhi.max(xlo)..g.ow) {
            *orow.add(ox) = edge(x, wc, b0, g, ilo, ihi, y0, ox);
        }
        let mut ox = xlo;
        while ox + 24 < vlim {
            let (mut a0, mut a1, mut a2, mut a3) = (bias, bias, bias, bias);
            let x0 = ox * s - g.pad[2];
            for i in ilo..ihi {
                let r = xp.add((y0 + (i * g.dil[0]) as isize) as usize * g.w);
                for j in 0..g.kw {
                    let wv = _mm256_set1_ps(*wp.add(i * g.kw + j));
                    let ix = x0 + j * g.dil[1];
                    a0 = _mm256_fmadd_ps(wv, load(r, ix, s), a0);
                    a1 = _mm256_fmadd_ps(wv, load(r, ix + 8 * s, s), a1);
                    a2 = _mm256_fmadd_ps(wv, load(r, ix + 16 * s, s), a2);
                    a3 = _mm256_fmadd_ps(wv, load(r, ix + 24 * s, s), a3);
                }
            }
            _mm256_storeu_ps(orow.add(ox), a0);
            _mm256_storeu_ps(orow.add(ox + 8), a1);
            _mm256_storeu_ps(orow.add(ox + 16), a2);
            _mm256_storeu_ps(orow.add(ox + 24), a3);
            ox += 32;
        }
        while ox < vlim {
            let mut a0 = bias;
            let x0 = ox * s - g.pad[2];
            for i in ilo..ihi {
                let r = xp.add((y0 + (i * g.dil[0]) as isize) as usize * g.w);
                for j in 0..g.kw {
                    let wv = _mm256_set1_ps(*wp.add(i * g.kw + j));
                    a0 = _mm256_fmadd_ps(wv, load(r, x0 + j * g.dil[1], s), a0);
                }
            }
            _mm256_storeu_ps(orow.add(ox), a0);
            ox += 8;
        }
        while ox < xhi {
            let x0 = ox * s - g.pad[2];
            let mut acc = b0;
            for i in ilo..ihi {
                let r = xp.add((y0 + (i * g.dil[0]) as isize) as usize * g.w);
                for j in 0..g.kw {
                    acc += *wp.add(i * g.kw + j) * *r.add(x0 + j * g.dil[1]);
                }
            }
            *orow.add(ox) = acc;
            ox += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn planes_match_naive() {
        // (h, w, k, stride, pad, dil)
        for &(h, w, k, s, p, d) in &[
            (56, 56, 3, 1, 1, 1),
            (112, 112, 3, 2, 1, 1),
            (57, 71, 3, 2, 0, 1),
            (28, 28, 5, 1, 2, 1),
            (29, 45, 5, 2, 2, 1),
            (56, 56, 7, 1, 3, 1),
            (14, 90, 7, 1, 3, 1),
            (40, 40, 3, 1, 2, 2),
            (40, 77, 3, 2, 2, 2),
            (7, 7, 3, 1, 1, 1),
            (9, 100, 3, 3, 1, 1),
            (3, 5, 7, 1, 3, 1),
        ] {
            let oh = (h + 2 * p - d * (k - 1) - 1) / s + 1;
            let ow = (w + 2 * p - d * (k - 1) - 1) / s + 1;
            let g = Plane { h, w, kh: k, kw: k, oh, ow, stride: [s, s], pad: [p; 4], dil: [d, d] };
            let x: Vec<f32> = (0..h * w).map(|i| (0.37 * i as f32 + 0.1).sin()).collect();
            let wc: Vec<f32> = (0..k * k).map(|i| (0.53 * i as f32).cos()).collect();
            let want = naive(&x, &wc, 0.25, &g);
            let mut got = vec![f32::NAN; oh * ow];
            plane(&x, &wc, 0.25, &g, &mut got);
            let mut got_s = vec![f32::NAN; oh * ow];
            plane_scalar(&x, &wc, 0.25, &g, &mut got_s);
            for (a, b) in [(&got, &want), (&got_s, &want)] {
                let worst = a.iter().zip(b.iter()).map(|(a, b)| (a - b).abs()).fold(0f32, |m, v| if v.is_nan() { f32::INFINITY } else { m.max(v) });
                assert!(worst < 1e-4, "{h}x{w} k{k} s{s} p{p} d{d}: {worst}");
            }
        }
    }
}
