//! AVX-512 depthwise convolution over blocks of 16 channels, for small output planes (7x7).
//!
//! The per-plane kernels ([`super::depthwise`]) put one row's outputs in a vector's lanes, so a
//! 7-wide row fills 7 of 16 lanes and every plane pays its own set-up. Here the 16 planes of
//! one image and channel block are gathered into a zero-padded, channel-last scratch
//! `[y][x][16]`: each tap of each output position is then one full vector load and one FMA
//! with the 16 channels' weights (eight positions at a time, eight FMA chains), whatever the
//! plane's size, kernel, stride, dilation or padding. The results, in a channel-last tile,
//! get the activation, give the squeeze-excitation sums as whole vectors, and are gathered
//! back into the 16 planes.

use super::cpu::{act_sum, Isa};
use super::depthwise::Plane;
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;
use tlc_compiler::ir::Activation;

/// Channels per block (one AVX-512 vector).
const LANES: usize = 16;
/// Output positions per FMA group.
const GROUP: usize = 8;

/// Whether the blocked kernel computes `c` channels of planes `g` at level `isa`: whole
/// channel blocks, and output rows of at most half a vector (measured against the per-plane
/// kernels, `convbench` one thread: 7x7 outputs 10-35 % faster (960 k3 0.038 against 0.050
/// ms, 576 14 -> 7 s2 0.037 against 0.042); 14x14 ones at stride 1 slower since the per-plane
/// kernel keeps its registers (576 k3 0.053 against 0.075, 672 k5 0.112 against 0.164), and
/// 28 -> 14 at stride 2 and 28x28 outputs slower: the whole larger input is transposed).
pub(crate) fn suits(g: &Plane, c: usize, isa: Isa) -> bool {
    let narrow = g.ow <= LANES / 2;
    isa >= Isa::Avx512 && Isa::Avx512.available() && narrow && c.is_multiple_of(LANES)
}

/// The scratch geometry of one plane: every input position an output reads, with padding.
struct Grid {
    /// Scratch rows and columns.
    hs: usize,
    ws: usize,
    /// Per output position (padded to a multiple of [`GROUP`] with position 0), the offset
    /// of its first tap's vector in the scratch.
    base: Vec<usize>,
    /// Per tap, its offset from a position's first tap.
    taps: Vec<usize>,
}

impl Grid {
    fn new(g: &Plane) -> Grid {
        let hs = (g.oh - 1) * g.stride[0] + (g.kh - 1) * g.dil[0] + 1;
        let ws = (g.ow - 1) * g.stride[1] + (g.kw - 1) * g.dil[1] + 1;
        let ohw = g.oh * g.ow;
        let base = (0..ohw.next_multiple_of(GROUP))
            .map(|p| if p < ohw { ((p / g.ow) * g.stride[0] * ws + (p % g.ow) * g.stride[1]) * LANES } else { 0 })
            .collect();
        let taps = (0..g.kh * g.kw).map(|t| ((t / g.kw) * g.dil[0] * ws + (t % g.kw) * g.dil[1]) * LANES).collect();
        Grid { hs, ws, base, taps }
    }
}

thread_local! {
    /// The padded channel-last input and the channel-last output tile.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Every block's weights and bias channel-last, once per call (not once per image): block
/// `blk` at `blk * (taps + 1) * 16`, `[tap][16]` then `[16]`.
fn weights_channel_last(w: &[f32], bias: Option<&[f32]>, c: usize, taps: usize) -> Vec<f32> {
    let mut wts = vec![0f32; c / LANES * (taps + 1) * LANES];
    for (blk, wt) in wts.chunks_exact_mut((taps + 1) * LANES).enumerate() {
        for (lane, wc) in w[blk * LANES * taps..][..LANES * taps].chunks_exact(taps).enumerate() {
            for (t, &v) in wc.iter().enumerate() {
                wt[t * LANES + lane] = v;
            }
            wt[taps * LANES + lane] = bias.map_or(0.0, |b| b[blk * LANES + lane]);
        }
    }
    wts
}

/// Depthwise conv of `x` (`n` images of `c` planes `g.h x g.w`) with weights `w`
/// (`[c, kh * kw]`) and `bias`, then `act`, into `out` (`n * c` planes `g.oh x g.ow`); with
/// `sums`, each output plane's sum goes to `sums[plane]`. [`suits`] holds.
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise(x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, c: usize, g: &Plane, act: Option<Activation>, sums: Option<&mut [f32]>, out: &mut [f32]) {
    let (hw, ohw, taps) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
    assert!(suits(g, c, Isa::Avx512) && x.len() == n * c * hw && w.len() == c * taps && out.len() == n * c * ohw, "depthwise_c16: bad lengths");
    assert!(bias.is_none_or(|b| b.len() == c) && sums.as_ref().is_none_or(|s| s.len() == n * c), "depthwise_c16: bad lengths");
    let grid = Grid::new(g);
    let blocks = c / LANES;
    let wts = weights_channel_last(w, bias, c, taps);
    let task = |i: usize, o: &mut [f32], s: Option<&mut [f32]>| {
        let (img, blk) = (i / blocks, i % blocks);
        let xb = &x[(img * c + blk * LANES) * hw..][..LANES * hw];
        SCRATCH.with(|scr| {
            let (sp, tp) = &mut *scr.borrow_mut();
            sp.resize(grid.hs * grid.ws * LANES, 0.0);
            tp.resize(grid.base.len().next_multiple_of(LANES) * LANES, 0.0);
            let wt = &wts[blk * (taps + 1) * LANES..][..(taps + 1) * LANES];
            // SAFETY: `suits` checked AVX-512; `sp`, `tp` and `wt` were sized for `grid` and
            // `taps` just above, `xb` holds the block's 16 planes, `o` its 16 output planes.
            unsafe {
                fill(xb, g, &grid, sp);
                compute(sp, wt, &grid, tp);
            }
            let tile = &mut tp[..ohw * LANES];
            act_sum(Isa::Avx512, act, tile, false);
            // SAFETY: as above.
            unsafe { scatter_planes(tile, ohw, o, s) };
        });
    };
    let chunks = out.par_chunks_mut(LANES * ohw).enumerate();
    match sums {
        Some(sums) => chunks.zip(sums.par_chunks_mut(LANES)).for_each(|((i, o), s)| task(i, o, Some(s))),
        None => chunks.for_each(|(i, o)| task(i, o, None)),
    }
}

/// Copies the 16 planes `xb` into the scratch `sp` (`[hs][ws][16]`), zero where the grid
/// reads padding: 16 positions of the 16 planes at a time, transposed in registers.
///
/// # Safety
/// The CPU has AVX-512F; `xb` holds 16 planes of `g.h * g.w`, `sp` `hs * ws * 16` floats.
#[target_feature(enable = "avx512f")]
unsafe fn fill(xb: &[f32], g: &Plane, grid: &Grid, sp: &mut [f32]) {
    let hw = g.h * g.w;
    let zero = _mm512_setzero_ps();
    let (pt, pl) = (g.pad[0], g.pad[2]);
    // Zero only the cells no input lands in: rows above and below the plane, columns left
    // and right of it.
    let (rows_in, cols_in) = ((pt + g.h).min(grid.hs), (pl + g.w).min(grid.ws));
    for y in 0..grid.hs {
        let row = sp.as_mut_ptr().add(y * grid.ws * LANES);
        let (x0, x1) = if y < pt || y >= rows_in { (0, 0) } else { (pl, cols_in) };
        for x in (0..x0).chain(x1.max(x0)..grid.ws) {
            _mm512_storeu_ps(row.add(x * LANES), zero);
        }
    }
    let mut p = 0;
    while p < hw {
        let n = (hw - p).min(LANES);
        let m: __mmask16 = if n == LANES { 0xffff } else { (1u16 << n) - 1 };
        let r = load_transposed(xb.as_ptr().add(p), hw, m);
        // Position p + j sits at (iy, ix) of the plane, stepped without dividing.
        let (mut iy, mut ix) = (p / g.w, p % g.w);
        for v in r.iter().take(n) {
            // Input rows and columns past the grid (read by no output) are dropped.
            if iy + pt < grid.hs && ix + pl < grid.ws {
                _mm512_storeu_ps(sp.as_mut_ptr().add(((iy + pt) * grid.ws + ix + pl) * LANES), *v);
            }
            ix += 1;
            if ix == g.w {
                (iy, ix) = (iy + 1, 0);
            }
        }
        p += n;
    }
}

/// The 16 rows `base + i * stride` (the lanes of `m` loaded, the rest zero), transposed.
///
/// # Safety
/// The CPU has AVX-512F; the masked lanes of every row are valid to read.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_transposed(base: *const f32, stride: usize, m: __mmask16) -> [__m512; LANES] {
    // Every register is loaded before it is read (a zero-initialised array here compiled to a
    // memset).
    let mut r = std::mem::MaybeUninit::<[__m512; LANES]>::uninit();
    let rp = r.as_mut_ptr().cast::<__m512>();
    for i in 0..LANES {
        rp.add(i).write(_mm512_maskz_loadu_ps(m, base.add(i * stride)));
    }
    // SAFETY: all 16 registers were written just above.
    let mut r = r.assume_init();
    transpose(&mut r);
    r
}

/// Transposes the 16x16 matrix whose rows are `r` (four rounds of lane shuffles).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose(r: &mut [__m512; LANES]) {
    // Pairs of rows interleaved by 32 bits, then by 64: in each 128-bit lane k, u[4 * i + c]
    // holds rows 4i..4i+3 of column 4k + c.
    let mut u = [_mm512_setzero_ps(); LANES];
    for i in 0..4 {
        let (a, b, c, d) = (r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]);
        let (ab_lo, ab_hi) = (_mm512_castps_pd(_mm512_unpacklo_ps(a, b)), _mm512_castps_pd(_mm512_unpackhi_ps(a, b)));
        let (cd_lo, cd_hi) = (_mm512_castps_pd(_mm512_unpacklo_ps(c, d)), _mm512_castps_pd(_mm512_unpackhi_ps(c, d)));
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(ab_lo, cd_lo));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(ab_lo, cd_lo));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(ab_hi, cd_hi));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(ab_hi, cd_hi));
    }
    // 128-bit lanes: [group 2q, column c | c+8 | group 2q+1, c | c+8] (lo) and the same for
    // columns c+4, c+12 (hi), then the two halves of the rows joined.
    for c in 0..4 {
        let lo01 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let hi01 = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
        let lo23 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let hi23 = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
        r[c] = _mm512_shuffle_f32x4::<0x88>(lo01, lo23);
        r[c + 8] = _mm512_shuffle_f32x4::<0xdd>(lo01, lo23);
        r[c + 4] = _mm512_shuffle_f32x4::<0x88>(hi01, hi23);
        r[c + 12] = _mm512_shuffle_f32x4::<0xdd>(hi01, hi23);
    }
}

/// The channel-last output tile `tp` (`base.len()` positions of 16) from the scratch `sp`:
/// bias plus every tap, eight positions at a time.
///
/// # Safety
/// The CPU has AVX-512F; `sp` is the filled scratch of `grid`, `wt` holds `taps * 16`
/// weights then 16 biases, `tp` `base.len() * 16` floats.
#[target_feature(enable = "avx512f,fma")]
unsafe fn compute(sp: &[f32], wt: &[f32], grid: &Grid, tp: &mut [f32]) {
    let bias = _mm512_loadu_ps(wt.as_ptr().add(grid.taps.len() * LANES));
    let s = sp.as_ptr();
    for (q, bases) in grid.base.chunks_exact(GROUP).enumerate() {
        let mut acc = [bias; GROUP];
        for (t, &off) in grid.taps.iter().enumerate() {
            let wv = _mm512_loadu_ps(wt.as_ptr().add(t * LANES));
            for (a, &b) in acc.iter_mut().zip(bases) {
                *a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(s.add(b + off)), *a);
            }
        }
        for (k, a) in acc.into_iter().enumerate() {
            _mm512_storeu_ps(tp.as_mut_ptr().add((q * GROUP + k) * LANES), a);
        }
    }
}

/// Writes the channel-last `tile` (`ohw` positions of 16, rounded up to a multiple of 16
/// in memory) to the 16 planes `o`, and each plane's sum to `sums`.
///
/// # Safety
/// The CPU has AVX-512F; `tile` holds `ohw.next_multiple_of(16) * 16` floats, `o` `16 * ohw`,
/// `sums` (when given) 16.
#[target_feature(enable = "avx512f")]
unsafe fn scatter_planes(tile: &[f32], ohw: usize, o: &mut [f32], sums: Option<&mut [f32]>) {
    if let Some(s) = sums {
        let mut acc = _mm512_setzero_ps();
        for p in 0..ohw {
            acc = _mm512_add_ps(acc, _mm512_loadu_ps(tile.as_ptr().add(p * LANES)));
        }
        _mm512_storeu_ps(s.as_mut_ptr(), acc);
    }
    let mut p = 0;
    while p < ohw {
        let n = (ohw - p).min(LANES);
        let m: __mmask16 = if n == LANES { 0xffff } else { (1u16 << n) - 1 };
        // Rows past `ohw` lie in the tile's slack: loaded, never stored.
        let r = load_transposed(tile.as_ptr().add(p * LANES), LANES, 0xffff);
        for (ch, v) in r.iter().enumerate() {
            _mm512_mask_storeu_ps(o.as_mut_ptr().add(ch * ohw + p), m, *v);
        }
        p += n;
    }
}
