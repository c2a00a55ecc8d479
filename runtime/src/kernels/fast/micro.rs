//! GEMM micro-kernels: `C[MR, NR] (= bias | +=) A[MR, kc] * B[kc, NR]` with A k-major
//! `[kc][MR]` (packed weights) and B rows found through [`Rows`]: packed micro-panels, or
//! rows read in place from a padded input (`Gather`, no packing at all).

use super::Isa;
use tlc_compiler::ir::Activation;

/// Where row `k` of a B micro-panel (`NR` floats) starts.
pub(super) trait Rows: Copy {
    /// # Safety
    /// `k` is below the `kc` the kernel was called with, and the row is valid for `NR` reads.
    unsafe fn row(self, k: usize) -> *const f32;

    /// Hints that row `k` of a later micro-panel will be read (rows read in place stream
    /// from memory on large maps); nothing for packed panels.
    #[inline(always)]
    unsafe fn prefetch(self, _k: usize) {
        // Packed micro-panels are in L1 or L2 already.
    }
}

/// A packed micro-panel: rows `.1` (= NR) floats apart.
#[derive(Clone, Copy)]
pub(super) struct Packed(pub *const f32, pub usize);

impl Rows for Packed {
    #[inline(always)]
    unsafe fn row(self, k: usize) -> *const f32 {
        self.0.add(k * self.1)
    }
}

/// Rows at `base + offs[k]`.
#[derive(Clone, Copy)]
pub(super) struct Gather(pub *const f32, pub *const usize);

impl Rows for Gather {
    #[inline(always)]
    unsafe fn row(self, k: usize) -> *const f32 {
        self.0.add(*self.1.add(k))
    }

    #[inline(always)]
    unsafe fn prefetch(self, k: usize) {
        #[cfg(target_arch = "x86_64")]
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(self.row(k).wrapping_add(GATHER_AHEAD) as *const i8);
    }
}

/// How far ahead of the row being read (in floats) [`Gather::prefetch`] reaches.
const GATHER_AHEAD: usize = 64;

/// A micro-kernel: `C[MR, NR] (+)= A[MR, kc] * B[kc, NR]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Micro {
    /// Plain loops, 4x8.
    Portable,
    /// AVX2+FMA 6x16 (12 accumulators, each A value broadcast once for two vectors).
    Avx2,
    /// AVX-512 16x16 (one B vector per k; the A broadcasts fold into the FMAs).
    Avx512Tall,
    /// AVX-512 8x32, for output channel counts that 16 would pad much (24, 40, ...).
    Avx512Wide,
}

impl Micro {
    /// The kernel for `co` output channels at level `isa`.
    pub(super) fn choose(isa: Isa, co: usize) -> Micro {
        match isa {
            Isa::Avx512 if co.is_multiple_of(16) || co >= 128 => Micro::Avx512Tall,
            Isa::Avx512 => Micro::Avx512Wide,
            Isa::Avx2 => Micro::Avx2,
            Isa::Portable => Micro::Portable,
        }
    }

    /// `(MR, NR)`: output channels and positions per micro-tile.
    pub(super) fn shape(self) -> (usize, usize) {
        match self {
            Micro::Portable => (4, 8),
            Micro::Avx2 => (6, 16),
            Micro::Avx512Tall => (16, 16),
            Micro::Avx512Wide => (8, 32),
        }
    }
}

/// Bounds `(lo, hi)` the stored values are clamped to (ReLU, ReLU6 on the last k-block), or
/// `None`.
pub(super) type Clamp = Option<(f32, f32)>;

/// What the stores of a micro-tile's last k-block apply: `+ res` (a residual laid out like
/// `c`, rows `ldc` apart), then `clamp`.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Finish {
    pub(super) res: Option<*const f32>,
    pub(super) clamp: Clamp,
}

impl Finish {
    /// Plain stores (every k-block but the last, and GEMMs whose epilogue runs elsewhere).
    pub(super) const NONE: Finish = Finish { res: None, clamp: None };
}

/// Splits a conv's activation into what the kernels' stores clamp (ReLU or ReLU6 without a
/// residual: no second pass over the output) and what is left for an epilogue.
pub(super) fn split_act(act: Option<Activation>, residual: bool) -> (Clamp, Option<Activation>) {
    match (crate::kernels::cpu::clamp_bounds(act), residual) {
        (Some(c), false) => (Some(c), None),
        _ => (None, act),
    }
}

/// `C[MR, NR] (= bias | +=) A[MR, kc] * B[kc, NR]` with kernel `m`: `a` k-major `[kc][MR]`,
/// `b` `[kc][NR]`, `c` rows `ldc` apart; `bias: Some` starts from the bias, `None` adds to `c`;
/// the stored values finished by `fin` (residual added, then clamped).
///
/// # Safety
/// `a` and `b` hold `kc * MR` and `kc * NR` floats, `c` has MR rows of NR floats `ldc` apart
/// (all valid, not aliased), `bias` at least MR values, and the CPU supports the kernel's
/// level (`PackedWeights::new` chose it from a capped level); `fin.res` (when given) is valid
/// for the same rows and columns as `c`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn micro<R: Rows>(m: Micro, kc: usize, a: *const f32, b: R, c: *mut f32, ldc: usize, bias: Option<&[f32]>, fin: Finish) {
    match m {
        #[cfg(target_arch = "x86_64")]
        Micro::Avx512Tall => kernel_16x16(kc, a, b, c, ldc, bias, fin),
        #[cfg(target_arch = "x86_64")]
        Micro::Avx512Wide => kernel_8x32(kc, a, b, c, ldc, bias, fin),
        #[cfg(target_arch = "x86_64")]
        Micro::Avx2 => kernel_6x16(kc, a, b, c, ldc, bias, fin),
        _ => kernel_4x8(kc, a, b, c, ldc, bias, fin),
    }
}

/// Columns up to which [`narrow`] replaces the full kernel on a micro-panel's last columns.
pub(super) const NARROW_MAX: usize = 4;

/// `C[rows, ncols] (= bias | +=) A * B` for the few valid columns of a micro-panel (the last
/// positions of a 7x7 or 14x14 map, say): A's `MR` values of each k are one vector, each valid
/// column of B is broadcast, so the work is `ncols` FMAs per k instead of a full tile's.
/// Returns `false` (nothing done) where kernel `m` has no narrow form or `ncols` is too large.
///
/// # Safety
/// As [`micro`], with `c` valid for `nrows` rows of `ncols` floats, `bias` (when given) for MR.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn narrow<R: Rows>(m: Micro, kc: usize, a: *const f32, b: R, c: *mut f32, ldc: usize, bias: Option<&[f32]>, fin: Finish, nrows: usize, ncols: usize) -> bool {
    if ncols == 0 || ncols > NARROW_MAX {
        return false;
    }
    match m {
        #[cfg(target_arch = "x86_64")]
        Micro::Avx512Tall => narrow_16(kc, a, b, c, ldc, bias, fin, nrows, ncols),
        _ => return false,
    }
    true
}

/// [`narrow`] for the 16-row AVX-512 kernel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn narrow_16<R: Rows>(kc: usize, a: *const f32, b: R, c: *mut f32, ldc: usize, bias: Option<&[f32]>, fin: Finish, nrows: usize, ncols: usize) {
    match ncols {
        1 => narrow_16_n::<R, 1>(kc, a, b, c, ldc, bias, fin, nrows),
        2 => narrow_16_n::<R, 2>(kc, a, b, c, ldc, bias, fin, nrows),
        3 => narrow_16_n::<R, 3>(kc, a, b, c, ldc, bias, fin, nrows),
        _ => narrow_16_n::<R, NARROW_MAX>(kc, a, b, c, ldc, bias, fin, nrows),
    }
}

/// [`narrow_16`] for `N` columns: four k in flight, each with its own accumulators, so that
/// even one column keeps four FMA chains busy.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn narrow_16_n<R: Rows, const N: usize>(kc: usize, a: *const f32, b: R, c: *mut f32, ldc: usize, bias: Option<&[f32]>, fin: Finish, nrows: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); N]; 4];
    let mut kk = 0;
    while kk + 4 <= kc {
        for (u, set) in acc.iter_mut().enumerate() {
            let av = _mm512_loadu_ps(a.add((kk + u) * 16));
            let bp = b.row(kk + u);
            for (j, s) in set.iter_mut().enumerate() {
                *s = _mm512_fmadd_ps(av, _mm512_set1_ps(*bp.add(j)), *s);
            }
        }
        kk += 4;
    }
    for k in kk..kc {
        let av = _mm512_loadu_ps(a.add(k * 16));
        let bp = b.row(k);
        for (j, s) in acc[0].iter_mut().enumerate() {
            *s = _mm512_fmadd_ps(av, _mm512_set1_ps(*bp.add(j)), *s);
        }
    }
    let mut t = [0f32; 16];
    let [a0, a1, a2, a3] = acc;
    for (j, (((&s0, &s1), &s2), &s3)) in a0.iter().zip(&a1).zip(&a2).zip(&a3).enumerate() {
        let sum = _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
        _mm512_storeu_ps(t.as_mut_ptr(), sum);
        for (r, &v) in t.iter().enumerate().take(nrows) {
            let p = c.add(r * ldc + j);
            let v = match bias {
                Some(bv) => bv[r] + v,
                None => *p + v,
            } + fin.res.map_or(0.0, |rp| *rp.add(r * ldc + j));
            *p = fin.clamp.map_or(v, |(lo, hi)| v.max(lo).min(hi));
        }
    }
}

/// `v` clamped to `clamp` (AVX2).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn clamp_256(v: std::arch::x86_64::__m256, clamp: Clamp) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    match clamp {
        Some((l, h)) => _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(l)), _mm256_set1_ps(h)),
        None => v,
    }
}

/// `v` clamped to `clamp` (AVX-512).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn clamp_512(v: std::arch::x86_64::__m512, clamp: Clamp) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    match clamp {
        Some((l, h)) => _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(l)), _mm512_set1_ps(h)),
        None => v,
    }
}

/// The portable micro-kernel (plain loops).
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_4x8<R: Rows>(kc: usize, a: *const f32, b: R, c: *mut f32, ldc: usize, bias: Option<&[f32]>, fin: Finish) {
    let mut acc = [[0f32; 8]; 4];
    for kk in 0..kc {
        let (ar, br) = (a.add(kk * 4), b.row(kk));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = *ar.add(r);
            for (j, v) in row.iter_mut().enumerate() {
                *v += av * *br.add(j);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        let p = c.add(r * ldc);
        for (j, v) in row.iter().enumerate() {
            let base = match bias {
                Some(bv) => bv[r],
                None => *p.add(j),
            };
            let v = base + v + fin.res.map_or(0.0, |rp| *rp.add(r * ldc + j));
            *p.add(j) = fin.clamp.map_or(v, |(lo, hi)| v.max(lo).min(hi));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_6x16<R: Rows>(kc: usize, a: *const f32, b: R, c: *mut f32, ldc: usize, bias: Option<&[f32]>, fin: Finish) {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_ps();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
    let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
    let mut ap = a;
    for kk in 0..kc {
        let bp = b.row(kk);
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
        ap = ap.add(6);
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
        let (base0, base1) = match fin.res {
            Some(rp) => {
                let q = rp.add(r * ldc);
                (_mm256_add_ps(base0, _mm256_loadu_ps(q)), _mm256_add_ps(base1, _mm256_loadu_ps(q.add(8))))
            }
            None => (base0, base1),
        };
        _mm256_storeu_ps(p, clamp_256(_mm256_add_ps(base0, lo), fin.clamp));
        _mm256_storeu_ps(p.add(8), clamp_256(_mm256_add_ps(base1, hi), fin.clamp));
    }
}

/// AVX-512 16x16: one vector of B per k and every A value used once, so the broadcast folds
/// into the FMA's memory operand (no separate broadcast instruction).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_16x16<R: Rows>(kc: usize, a: *const f32, b: R, c: *mut f32, ldc: usize, bias: Option<&[f32]>, fin: Finish) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 16];
    let mut ap = a;
    for kk in 0..kc {
        // The weights stream from memory in a model's late layers: fetch 4 KiB (64 k) ahead
        // (1 KiB was too short for memory latency: EfficientNet-B0 b1 1x1s 6.1 -> 5.4 ms).
        _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add(16 * 64) as *const i8);
        b.prefetch(kk);
        let bv = _mm512_loadu_ps(b.row(kk));
        acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(*ap), bv, acc[0]);
        acc[1] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(1)), bv, acc[1]);
        acc[2] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(2)), bv, acc[2]);
        acc[3] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(3)), bv, acc[3]);
        acc[4] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(4)), bv, acc[4]);
        acc[5] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(5)), bv, acc[5]);
        acc[6] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(6)), bv, acc[6]);
        acc[7] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(7)), bv, acc[7]);
        acc[8] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(8)), bv, acc[8]);
        acc[9] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(9)), bv, acc[9]);
        acc[10] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(10)), bv, acc[10]);
        acc[11] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(11)), bv, acc[11]);
        acc[12] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(12)), bv, acc[12]);
        acc[13] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(13)), bv, acc[13]);
        acc[14] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(14)), bv, acc[14]);
        acc[15] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(15)), bv, acc[15]);
        ap = ap.add(16);
    }
    for (r, v) in acc.into_iter().enumerate() {
        let p = c.add(r * ldc);
        let base = match bias {
            Some(bv) => _mm512_set1_ps(bv[r]),
            None => _mm512_loadu_ps(p),
        };
        let base = match fin.res {
            Some(rp) => _mm512_add_ps(base, _mm512_loadu_ps(rp.add(r * ldc))),
            None => base,
        };
        _mm512_storeu_ps(p, clamp_512(_mm512_add_ps(base, v), fin.clamp));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_8x32<R: Rows>(kc: usize, a: *const f32, b: R, c: *mut f32, ldc: usize, bias: Option<&[f32]>, fin: Finish) {
    use std::arch::x86_64::*;
    let z = _mm512_setzero_ps();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21, mut c30, mut c31) = (z, z, z, z, z, z, z, z);
    let (mut c40, mut c41, mut c50, mut c51, mut c60, mut c61, mut c70, mut c71) = (z, z, z, z, z, z, z, z);
    let mut ap = a;
    for kk in 0..kc {
        // 1 KiB (32 k) ahead: here A is mostly the packed rows of a linear layer, read from
        // L2 while the weights stream through L1 (4 KiB ahead: ViT-B/16 linears 5 % slower).
        _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add(8 * 32) as *const i8);
        b.prefetch(kk);
        let bp = b.row(kk);
        let b0 = _mm512_loadu_ps(bp);
        let b1 = _mm512_loadu_ps(bp.add(16));
        let a0 = _mm512_set1_ps(*ap);
        c00 = _mm512_fmadd_ps(a0, b0, c00);
        c01 = _mm512_fmadd_ps(a0, b1, c01);
        let a1 = _mm512_set1_ps(*ap.add(1));
        c10 = _mm512_fmadd_ps(a1, b0, c10);
        c11 = _mm512_fmadd_ps(a1, b1, c11);
        let a2 = _mm512_set1_ps(*ap.add(2));
        c20 = _mm512_fmadd_ps(a2, b0, c20);
        c21 = _mm512_fmadd_ps(a2, b1, c21);
        let a3 = _mm512_set1_ps(*ap.add(3));
        c30 = _mm512_fmadd_ps(a3, b0, c30);
        c31 = _mm512_fmadd_ps(a3, b1, c31);
        let a4 = _mm512_set1_ps(*ap.add(4));
        c40 = _mm512_fmadd_ps(a4, b0, c40);
        c41 = _mm512_fmadd_ps(a4, b1, c41);
        let a5 = _mm512_set1_ps(*ap.add(5));
        c50 = _mm512_fmadd_ps(a5, b0, c50);
        c51 = _mm512_fmadd_ps(a5, b1, c51);
        let a6 = _mm512_set1_ps(*ap.add(6));
        c60 = _mm512_fmadd_ps(a6, b0, c60);
        c61 = _mm512_fmadd_ps(a6, b1, c61);
        let a7 = _mm512_set1_ps(*ap.add(7));
        c70 = _mm512_fmadd_ps(a7, b0, c70);
        c71 = _mm512_fmadd_ps(a7, b1, c71);
        ap = ap.add(8);
    }
    let rows = [(c00, c01), (c10, c11), (c20, c21), (c30, c31), (c40, c41), (c50, c51), (c60, c61), (c70, c71)];
    for (r, (lo, hi)) in rows.into_iter().enumerate() {
        let p = c.add(r * ldc);
        let (base0, base1) = match bias {
            Some(bv) => {
                let v = _mm512_set1_ps(bv[r]);
                (v, v)
            }
            None => (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))),
        };
        let (base0, base1) = match fin.res {
            Some(rp) => {
                let q = rp.add(r * ldc);
                (_mm512_add_ps(base0, _mm512_loadu_ps(q)), _mm512_add_ps(base1, _mm512_loadu_ps(q.add(16))))
            }
            None => (base0, base1),
        };
        _mm512_storeu_ps(p, clamp_512(_mm512_add_ps(base0, lo), fin.clamp));
        _mm512_storeu_ps(p.add(16), clamp_512(_mm512_add_ps(base1, hi), fin.clamp));
    }
}

