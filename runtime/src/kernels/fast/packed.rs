//! Dense convolution as a blocked GEMM with weights packed once (at model build time):
//! `out[co, p] = sum_k w[co, k] * col[k, p]` per image, where `col` is the im2col matrix
//! (`k = (c, i, j)`, `p = oy * ow + ox`).
//!
//! * Weights `[co, k]` are packed into panels of `MR` output channels, k-major, per k-block of
//!   `kc` rows (`k0 * mpad + panel * MR * kcl`), zero-padded to a multiple of `MR`.
//! * The im2col matrix is never built whole: each task packs one tile of at most [`NB`] output
//!   positions for one k-block straight into `NR`-wide micro-panels (zero past the tile), which
//!   stay in L1/L2 while every weight panel passes over them. Packing is also where the input
//!   *prologue* happens ([`ConvInput`]): the input may be several channel parts (a
//!   concatenation that is never built), and each value may go through a per-channel affine map
//!   and activation (a BatchNorm before the conv) and a per-image, per-channel gate
//!   (squeeze-excitation) on its way into the panel; padding stays zero.
//! * Micro-kernels per level ([`Isa`]): AVX-512 8x32, AVX2+FMA 6x16, portable 4x8 loops.
//! * Tasks are (image, spatial tile, output-channel chunk) triples over the rayon pool, so a
//!   batch runs as one parallel loop and small late-stage maps split over channels (their
//!   tiles are then packed once, shared by the chunks).
//! * Epilogue: bias on the first k-block, then after the last one an optional residual (same
//!   shape as the output) and the activation, on the tile while it is still in cache.

use super::{threads, uninit_vec, Geo, Isa};
use crate::kernels::cpu;
use rayon::prelude::*;
use std::cell::RefCell;
use tlc_compiler::ir::Activation;

/// Output positions per task tile (a multiple of every `NR`).
const NB: usize = 64;
/// Largest k-block.
const KC_MAX: usize = 256;
/// Weight panels per m-block inside a task.
const MCP: usize = 16;

/// `(MR, NR)`: output channels and positions per micro-tile at a level.
fn tile_shape(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Avx512 => (8, 32),
        Isa::Avx2 => (6, 16),
        Isa::Portable => (4, 8),
    }
}

/// Conv weights `[co, c, kh, kw]` packed for one level's micro-kernel, with the bias
/// (zero-padded).
#[derive(Clone, Debug)]
pub struct PackedWeights {
    /// Output channels.
    pub co: usize,
    /// Reduction length `c * kh * kw`.
    pub k: usize,
    isa: Isa,
    mr: usize,
    kc: usize,
    mpad: usize,
    data: Vec<f32>,
    bias: Vec<f32>,
}

impl PackedWeights {
    /// Packs row-major `w` `[co, k]` and the optional bias for level `isa` (lowered to what
    /// this CPU has).
    pub fn new(w: &[f32], co: usize, k: usize, bias: Option<&[f32]>, isa: Isa) -> PackedWeights {
        assert!(w.len() == co * k && bias.is_none_or(|b| b.len() == co), "packed weights: bad lengths");
        let isa = isa.capped();
        let (mr, _) = tile_shape(isa);
        let mpad = co.div_ceil(mr) * mr;
        let kc = k.div_ceil(k.div_ceil(KC_MAX).max(1)).max(1);
        let mut data = vec![0f32; mpad * k];
        let mut k0 = 0;
        while k0 < k {
            let kcl = kc.min(k - k0);
            for mp in 0..mpad / mr {
                let base = k0 * mpad + mp * mr * kcl;
                for r in 0..mr.min(co - mp * mr) {
                    let m = mp * mr + r;
                    for kk in 0..kcl {
                        data[base + kk * mr + r] = w[m * k + k0 + kk];
                    }
                }
            }
            k0 += kcl;
        }
        let mut b = vec![0f32; mpad];
        if let Some(bias) = bias {
            b[..co].copy_from_slice(bias);
        }
        PackedWeights { co, k, isa, mr, kc, mpad, data, bias: b }
    }

    /// The level these weights were packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    #[inline(always)]
    fn panel(&self, k0: usize, kcl: usize, mp: usize) -> &[f32] {
        &self.data[k0 * self.mpad + mp * self.mr * kcl..][..self.mr * kcl]
    }
}

/// A BatchNorm (and activation) applied to the conv's input: `act(x * scale[c] + shift[c])`.
#[derive(Clone, Copy)]
pub struct Affine<'a> {
    /// Per input channel.
    pub scale: &'a [f32],
    /// Per input channel.
    pub shift: &'a [f32],
    /// Applied after the affine map.
    pub act: Option<Activation>,
}

/// What a packed conv reads: the channels of `parts` in order (each `[n, c_i, h, w]`), each
/// value mapped by `affine` then multiplied by `gate[b * c + ch]` (`[n, c]`) when given.
pub struct ConvInput<'a> {
    /// `(data, channels)` per part.
    pub parts: Vec<(&'a [f32], usize)>,
    /// Per-channel affine map and activation.
    pub affine: Option<Affine<'a>>,
    /// Per-image, per-channel multiplier.
    pub gate: Option<&'a [f32]>,
}

impl<'a> ConvInput<'a> {
    /// One plain `[n, c, h, w]` input.
    pub fn plain(x: &'a [f32], c: usize) -> ConvInput<'a> {
        ConvInput { parts: vec![(x, c)], affine: None, gate: None }
    }

    fn channels(&self) -> usize {
        self.parts.iter().map(|p| p.1).sum()
    }
}

/// A [`ConvInput`] resolved per input channel.
struct Source<'a> {
    input: &'a ConvInput<'a>,
    /// Per input channel: (part, channel within the part).
    chans: Vec<(usize, usize)>,
    c: usize,
    hw: usize,
    isa: Isa,
}

impl<'a> Source<'a> {
    fn new(input: &'a ConvInput<'a>, n: usize, g: &Geo, isa: Isa) -> Source<'a> {
        let hw = g.h * g.w;
        let c = input.channels();
        assert_eq!(c, g.c, "packed conv: input channels");
        assert!(input.parts.iter().all(|(d, ci)| d.len() >= n * ci * hw), "packed conv: a part is too short");
        assert!(input.affine.is_none_or(|a| a.scale.len() == c && a.shift.len() == c), "packed conv: affine length");
        assert!(input.gate.is_none_or(|gt| gt.len() == n * c), "packed conv: gate length");
        let chans = input.parts.iter().enumerate().flat_map(|(pi, (_, ci))| (0..*ci).map(move |ch| (pi, ch))).collect();
        Source { input, chans, c, hw, isa }
    }

    /// Plane `ch` of image `b`.
    #[inline(always)]
    fn plane(&self, b: usize, ch: usize) -> &[f32] {
        let (pi, cc) = self.chans[ch];
        let (data, ci) = self.input.parts[pi];
        &data[(b * ci + cc) * self.hw..][..self.hw]
    }

    /// Maps values of channel `ch` of image `b` copied into `seg` (affine, activation, gate).
    #[inline(always)]
    fn transform(&self, b: usize, ch: usize, seg: &mut [f32]) {
        let (s, t, act) = match &self.input.affine {
            Some(a) => (a.scale[ch], a.shift[ch], a.act),
            None => (1.0, 0.0, None),
        };
        let m = self.input.gate.map_or(1.0, |gate| gate[b * self.c + ch]);
        cpu::affine_act(self.isa, seg, s, t, act, m);
    }

    fn plain(&self) -> bool {
        self.input.affine.is_none() && self.input.gate.is_none()
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Packs rows `k0..k0+kcl` of the im2col matrix of image `b`, columns `n0..n0+nb`, as
/// micro-panels `[jp][kk][nr]` (columns past `nb` are zero).
#[allow(clippy::too_many_arguments)]
fn pack_b(src: &Source, b: usize, g: &Geo, k0: usize, kcl: usize, n0: usize, nb: usize, nr: usize, dst: &mut [f32]) {
    let taps = g.kh * g.kw;
    let np = nb.div_ceil(nr);
    let plain = src.plain();
    // A 1x1, stride-1, unpadded conv reads the planes as they are.
    let pointwise = taps == 1 && g.stride == [1, 1] && g.pad == [0; 4];
    for kk in 0..kcl {
        let r = k0 + kk;
        let (c, t) = (r / taps, r % taps);
        let (i, j) = (t / g.kw, t % g.kw);
        let plane = src.plane(b, c);
        let yoff = (i * g.dil[0]) as isize - g.pad[0] as isize;
        let xoff = (j * g.dil[1]) as isize - g.pad[2] as isize;
        for jp in 0..np {
            let d = &mut dst[(jp * kcl + kk) * nr..][..nr];
            let lo = n0 + jp * nr;
            let hi = (lo + nr).min(n0 + nb);
            if hi < lo + nr {
                d[hi - lo..].fill(0.0);
            }
            if pointwise {
                d[..hi - lo].copy_from_slice(&plane[lo..hi]);
                if !plain {
                    src.transform(b, c, &mut d[..hi - lo]);
                }
                continue;
            }
            pack_segment(plane, g, yoff, xoff, lo, &mut d[..hi - lo]);
            if !plain {
                transform_segment(src, b, c, g, yoff, xoff, lo, &mut d[..hi - lo]);
            }
        }
    }
}

/// Fills `d` with im2col row `(yoff, xoff)` of `plane`, columns `lo..lo + d.len()` (zero
/// where the tap falls in the padding).
#[inline(always)]
fn pack_segment(plane: &[f32], g: &Geo, yoff: isize, xoff: isize, lo: usize, d: &mut [f32]) {
    let (h, w, ow) = (g.h as isize, g.w as isize, g.ow);
    let (s0, s1) = (g.stride[0] as isize, g.stride[1] as isize);
    let mut col = lo;
    let hi = lo + d.len();
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

/// Applies the input prologue to the values [`pack_segment`] copied into `d` (padding stays 0).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn transform_segment(src: &Source, b: usize, c: usize, g: &Geo, yoff: isize, xoff: isize, lo: usize, d: &mut [f32]) {
    let (h, w, ow) = (g.h as isize, g.w as isize, g.ow);
    let (s0, s1) = (g.stride[0] as isize, g.stride[1] as isize);
    let mut col = lo;
    let hi = lo + d.len();
    while col < hi {
        let (oy, ox) = (col / ow, col % ow);
        let run = (ow - ox).min(hi - col);
        let seg = &mut d[col - lo..col - lo + run];
        let iy = oy as isize * s0 + yoff;
        if iy >= 0 && iy < h {
            // Output columns whose tap lies inside the row: ix0 + q * s1 in [0, w).
            let ix0 = ox as isize * s1 + xoff;
            let qlo = if ix0 >= 0 { 0 } else { ((-ix0) as usize).div_ceil(s1 as usize) };
            let qhi = if w > ix0 { ((w - ix0) as usize).div_ceil(s1 as usize).min(run) } else { 0 };
            if qhi > qlo {
                src.transform(b, c, &mut seg[qlo..qhi]);
            }
        }
        col += run;
    }
}

/// `C[MR, NR] (= bias | +=) A[MR, kc] * B[kc, NR]` at level `isa`: `a` k-major `[kc][MR]`,
/// `b` `[kc][NR]`, `c` rows `ldc` apart; `bias: Some` starts from the bias, `None` adds to `c`.
///
/// # Safety
/// `a` and `b` hold `kc * MR` and `kc * NR` floats, `c` has MR rows of NR floats `ldc` apart
/// (all valid, not aliased), `bias` at least MR values, and the CPU supports `isa`.
#[inline(always)]
unsafe fn micro(isa: Isa, kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, bias: Option<&[f32]>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => kernel_8x32(kc, a, b, c, ldc, bias),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => kernel_6x16(kc, a, b, c, ldc, bias),
        _ => kernel_4x8(kc, a, b, c, ldc, bias),
    }
}

/// The portable micro-kernel (plain loops).
unsafe fn kernel_4x8(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, bias: Option<&[f32]>) {
    let mut acc = [[0f32; 8]; 4];
    for kk in 0..kc {
        let (ar, br) = (a.add(kk * 4), b.add(kk * 8));
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
            *p.add(j) = base + v;
        }
    }
}

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
        ap = ap.add(6);
        bp = bp.add(16);
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn kernel_8x32(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, bias: Option<&[f32]>) {
    use std::arch::x86_64::*;
    let z = _mm512_setzero_ps();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21, mut c30, mut c31) = (z, z, z, z, z, z, z, z);
    let (mut c40, mut c41, mut c50, mut c51, mut c60, mut c61, mut c70, mut c71) = (z, z, z, z, z, z, z, z);
    let mut ap = a;
    let mut bp = b;
    for _ in 0..kc {
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
        bp = bp.add(32);
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
        _mm512_storeu_ps(p, _mm512_add_ps(base0, lo));
        _mm512_storeu_ps(p.add(16), _mm512_add_ps(base1, hi));
    }
}

/// The output buffer, written by tasks through disjoint rectangles.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint regions only (see `conv`), and the buffer outlives them.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `i` floats in (callers keep within the buffer).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// How `conv` splits its work: tasks are `(image, tile, channel chunk)`.
struct Plan {
    n: usize,
    p: usize,
    tiles: usize,
    mpanels: usize,
    msplit: usize,
    per_chunk: usize,
}

impl Plan {
    fn new(n: usize, p: usize, pw: &PackedWeights) -> Plan {
        let tiles = p.div_ceil(NB);
        let mpanels = pw.mpad / pw.mr;
        let t = threads();
        let msplit = if n * tiles >= 2 * t { 1 } else { (4 * t).div_ceil(n * tiles).min(mpanels).max(1) };
        let per_chunk = mpanels.div_ceil(msplit);
        Plan { n, p, tiles, mpanels, msplit: mpanels.div_ceil(per_chunk), per_chunk }
    }

    fn tasks(&self) -> usize {
        self.n * self.tiles * self.msplit
    }

    /// `(image, tile, first panel, end panel)` of a task.
    fn task(&self, t: usize) -> (usize, usize, usize, usize) {
        let (b, rest) = (t / (self.tiles * self.msplit), t % (self.tiles * self.msplit));
        let (tile, mc) = (rest / self.msplit, rest % self.msplit);
        (b, tile, mc * self.per_chunk, ((mc + 1) * self.per_chunk).min(self.mpanels))
    }

    /// Output positions `(n0, nb)` of a tile.
    fn cols(&self, tile: usize) -> (usize, usize) {
        (tile * NB, NB.min(self.p - tile * NB))
    }
}

/// Convolution of `n` images with packed weights: returns `[n, co, oh, ow]` with bias, then
/// `+ residual` (same shape as the output) and the activation.
pub fn conv(input: &ConvInput, pw: &PackedWeights, n: usize, g: &Geo, residual: Option<&[f32]>, act: Option<Activation>) -> Vec<f32> {
    assert_eq!(pw.k, g.c * g.kh * g.kw, "packed conv: weights do not match the geometry");
    let src = Source::new(input, n, g, pw.isa);
    let p = g.oh * g.ow;
    let total = n * pw.co * p;
    assert!(residual.is_none_or(|r| r.len() == total), "packed conv: residual length");
    let plan = Plan::new(n, p, pw);
    // Every element is written by the first k-block of the task that owns it.
    let mut out = uninit_vec(total);
    let shared = (plan.msplit > 1).then(|| pack_all(&src, g, pw, &plan));
    let optr = OutPtr(out.as_mut_ptr());
    (0..plan.tasks()).into_par_iter().for_each(|t| {
        let (b, tile, mlo, mhi) = plan.task(t);
        let kblock = |k0: usize, kcl: usize, bpack: &mut [f32]| {
            let (n0, nb) = plan.cols(tile);
            let (_, nr) = tile_shape(pw.isa);
            let np = nb.div_ceil(nr);
            let bsrc: &[f32] = match &shared {
                Some(v) => &v[(b * plan.tiles + tile) * pw.k * NB + k0 * np * nr..][..kcl * np * nr],
                None => {
                    pack_b(&src, b, g, k0, kcl, n0, nb, nr, bpack);
                    bpack
                }
            };
            // SAFETY: `run_kblock` writes rows mlo*MR..min(mhi*MR, co) and columns
            // n0..n0+nb of image b only; tasks own disjoint (image, tile, chunk) rectangles.
            unsafe { run_kblock(pw, k0, kcl, bsrc, optr.at(b * pw.co * p), p, n0, nb, mlo, mhi) };
        };
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let need = if shared.is_some() { 0 } else { pw.kc * NB };
            if s.len() < need {
                s.resize(need, 0.0);
            }
            let mut k0 = 0;
            while k0 < pw.k {
                let kcl = pw.kc.min(pw.k - k0);
                kblock(k0, kcl, &mut s[..need]);
                k0 += kcl;
            }
        });
        if residual.is_some() || act.is_some() {
            let (n0, nb) = plan.cols(tile);
            for r in mlo * pw.mr..(mhi * pw.mr).min(pw.co) {
                // SAFETY: this task's own rectangle, fully written by the k-blocks above.
                let row = unsafe { std::slice::from_raw_parts_mut(optr.at((b * pw.co + r) * p + n0), nb) };
                cpu::add_act_inplace(pw.isa, row, residual.map_or(&[], |res| &res[(b * pw.co + r) * p + n0..][..nb]), act);
            }
        }
    });
    out
}

/// Packs every tile of every image once (shared by the channel chunks of a tile): tile
/// stride `k * NB`, k-block `k0` at `k0 * np * NR`, layout `[jp][kk][NR]`.
fn pack_all(src: &Source, g: &Geo, pw: &PackedWeights, plan: &Plan) -> Vec<f32> {
    let kblocks = pw.k.div_ceil(pw.kc);
    let (_, nr) = tile_shape(pw.isa);
    let mut v = vec![0f32; plan.n * plan.tiles * pw.k * NB];
    v.par_chunks_mut(pw.k * NB).enumerate().for_each(|(bt, chunk)| {
        let (b, tile) = (bt / plan.tiles, bt % plan.tiles);
        let (n0, nb) = plan.cols(tile);
        let np = nb.div_ceil(nr);
        for kb in 0..kblocks {
            let k0 = kb * pw.kc;
            let kcl = pw.kc.min(pw.k - k0);
            pack_b(src, b, g, k0, kcl, n0, nb, nr, &mut chunk[k0 * np * nr..][..kcl * np * nr]);
        }
    });
    v
}

/// One k-block of one task: every (weight panel, micro-panel) pair of panels `mlo..mhi` and
/// the tile's micro-panels `bsrc`, accumulated into image output `cb` (`co` rows of `p`).
///
/// # Safety
/// `cb` points at an image's `co * p` outputs; rows `mlo*MR..` and columns `n0..n0+nb` are
/// this caller's alone; the CPU supports `pw.isa`.
#[allow(clippy::too_many_arguments)]
unsafe fn run_kblock(pw: &PackedWeights, k0: usize, kcl: usize, bsrc: &[f32], cb: *mut f32, p: usize, n0: usize, nb: usize, mlo: usize, mhi: usize) {
    let (mr, nr) = tile_shape(pw.isa);
    let np = nb.div_ceil(nr);
    let first = k0 == 0;
    let mut tmp = [0f32; 8 * 32];
    let mut mb = mlo;
    while mb < mhi {
        let me = (mb + MCP).min(mhi);
        for jp in 0..np {
            let bp = bsrc[jp * kcl * nr..][..kcl * nr].as_ptr();
            let col = n0 + jp * nr;
            let ncols = nr.min(n0 + nb - col);
            for mp in mb..me {
                let ap = pw.panel(k0, kcl, mp).as_ptr();
                let row = mp * mr;
                let nrows = mr.min(pw.co - row);
                let bias = first.then(|| &pw.bias[row..row + mr]);
                if nrows == mr && ncols == nr {
                    micro(pw.isa, kcl, ap, bp, cb.add(row * p + col), p, bias);
                } else {
                    // An edge tile: through a full-size buffer.
                    if !first {
                        for r in 0..nrows {
                            std::ptr::copy_nonoverlapping(cb.add((row + r) * p + col), tmp.as_mut_ptr().add(r * nr), ncols);
                        }
                    }
                    micro(pw.isa, kcl, ap, bp, tmp.as_mut_ptr(), nr, bias);
                    for r in 0..nrows {
                        std::ptr::copy_nonoverlapping(tmp.as_ptr().add(r * nr), cb.add((row + r) * p + col), ncols);
                    }
                }
            }
        }
        mb = me;
    }
}
