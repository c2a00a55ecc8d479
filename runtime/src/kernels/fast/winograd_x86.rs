//! AVX-512 forms of the Winograd transforms ([`super::winograd`]): 16 tiles per vector, the
//! input patches loaded row by row with per-lane masks (padding reads as zero) and transposed
//! in registers, the outputs of 16 tiles
//! side by side in one tile row interleaved back into whole output rows.

use super::cols::Source;
use super::micro::Clamp;
use super::winograd::{TileIn, TileOut, Tiles, VLayout};
use super::{Geo, OutPtr};
use std::arch::x86_64::*;

/// `Bᵀ d` along one axis.
#[inline(always)]
unsafe fn bt(d: [__m512; 6]) -> [__m512; 6] {
    let [d0, d1, d2, d3, d4, d5] = d;
    let (four, five, two) = (_mm512_set1_ps(4.0), _mm512_set1_ps(5.0), _mm512_set1_ps(2.0));
    [
        _mm512_fmadd_ps(four, d0, _mm512_fnmadd_ps(five, d2, d4)),
        _mm512_fnmadd_ps(four, _mm512_add_ps(d1, d2), _mm512_add_ps(d3, d4)),
        _mm512_fmadd_ps(four, _mm512_sub_ps(d1, d2), _mm512_sub_ps(d4, d3)),
        _mm512_fmadd_ps(two, _mm512_sub_ps(d3, d1), _mm512_sub_ps(d4, d2)),
        _mm512_fmadd_ps(two, _mm512_sub_ps(d1, d3), _mm512_sub_ps(d4, d2)),
        _mm512_fmadd_ps(four, d1, _mm512_fnmadd_ps(five, d3, d5)),
    ]
}

/// `Aᵀ m` along one axis.
#[inline(always)]
unsafe fn at(m: [__m512; 6]) -> [__m512; 4] {
    let [m0, m1, m2, m3, m4, m5] = m;
    let (s12, d12, s34, d34) = (_mm512_add_ps(m1, m2), _mm512_sub_ps(m1, m2), _mm512_add_ps(m3, m4), _mm512_sub_ps(m3, m4));
    [
        _mm512_add_ps(_mm512_add_ps(m0, s12), s34),
        _mm512_fmadd_ps(_mm512_set1_ps(2.0), d34, d12),
        _mm512_fmadd_ps(_mm512_set1_ps(4.0), s34, s12),
        _mm512_fmadd_ps(_mm512_set1_ps(8.0), d34, _mm512_add_ps(d12, m5)),
    ]
}

/// Whether [`transform_input`] applies: no prologue, micro-panels a multiple of 16 columns
/// wide, and every gather offset within `i32`.
pub(super) fn input_fits(src: &Source, g: &Geo, n: usize, lay: &VLayout) -> bool {
    let span = (0..g.c).map(|ch| src.image_stride(ch)).max().unwrap_or(0) * n + g.h * g.w;
    src.plain && lay.nr.is_multiple_of(16) && span < i32::MAX as usize
}

/// The input transform of [`super::winograd`] for channels `chans` of tiles `ins` into `v`.
/// Each patch row of each of 16 tiles is one masked 8-float load (padding reads as zero), and
/// the 16 loads of a row are transposed in registers into 6 vectors of 16 tiles (gathers cost
/// 4-5 times as much on this path).
///
/// # Safety
/// The CPU has AVX-512F, VL and DQ; [`input_fits`] holds; `v` holds the block's 36 operands
/// laid out by `lay` and no one else writes rows `chans` of them.
#[target_feature(enable = "avx512f,avx512vl,avx512dq")]
pub(super) unsafe fn transform_input(src: &Source, g: &Geo, ins: &[TileIn], lay: &VLayout, chans: (usize, usize), v: OutPtr) {
    let (vsz, cols, w) = (lay.size(), lay.cols(), g.w as isize);
    let mut col0 = 0;
    while col0 < cols {
        // Per lane: image, first input offset in its plane, and per patch row the columns that
        // lie inside the map (bit j); lanes past the tiles load nothing.
        let (mut img, mut pos, mut masks) = ([0usize; 16], [0isize; 16], [[0u8; 16]; 6]);
        for (l, t) in ins.iter().skip(col0).take(16).enumerate() {
            img[l] = t.b;
            pos[l] = t.y * w + t.x;
            let inside_cols = (0..6).filter(|&j| (0..w).contains(&(t.x + j))).fold(0u8, |m, j| m | 1 << j);
            for (i, m) in masks.iter_mut().enumerate() {
                if (0..g.h as isize).contains(&(t.y + i as isize)) {
                    m[l] = inside_cols;
                }
            }
        }
        for ci in chans.0..chans.1 {
            let (base, stride) = (src.plane(0, ci).as_ptr(), src.image_stride(ci));
            // Masked loads touch only the columns inside the map, so these may point before
            // the plane (padding) without being read there.
            let mut starts = [base; 16];
            for (st, (&b, &p)) in starts.iter_mut().zip(img.iter().zip(&pos)) {
                *st = base.wrapping_offset((b * stride) as isize + p);
            }
            // Written row by row before it is read (a zero-initialised array here was a 2.3 KiB
            // memset per channel).
            let mut h = std::mem::MaybeUninit::<[[__m512; 6]; 6]>::uninit();
            let hp = h.as_mut_ptr().cast::<[__m512; 6]>();
            for i in 0..6 {
                hp.add(i).write(bt(columns(&starts, &masks, i, i as isize * w)));
            }
            // SAFETY: all six rows were written just above.
            let h = h.assume_init();
            let dst = lay.pos(ci, col0);
            for j in 0..6 {
                let col = bt(h.map(|hi| hi[j]));
                for (i, c) in col.iter().enumerate() {
                    _mm512_storeu_ps(v.at((i * 6 + j) * vsz + dst), *c);
                }
            }
        }
        col0 += 16;
    }
}

/// The first 6 columns of patch row `i` of 16 tiles (row `l` of the 16 x 8 matrix: 8 floats
/// from `starts[l] + off`, masked by `masks[i][l]`), as vectors of 16: tiles `p` and `p + 8`
/// share a register, and the 8 x 8 transpose runs in both halves at once.
#[target_feature(enable = "avx512f,avx512vl,avx512dq")]
#[inline]
unsafe fn columns(starts: &[*const f32; 16], masks: &[[u8; 16]; 6], i: usize, off: isize) -> [__m512; 6] {
    let m = &masks[i];
    let mut z = [_mm512_setzero_ps(); 8];
    for (p, zp) in z.iter_mut().enumerate() {
        let (a, b) = (_mm256_maskz_loadu_ps(m[p], starts[p].wrapping_offset(off)), _mm256_maskz_loadu_ps(m[p + 8], starts[p + 8].wrapping_offset(off)));
        *zp = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(a), b);
    }
    let t = [
        _mm512_unpacklo_ps(z[0], z[1]),
        _mm512_unpackhi_ps(z[0], z[1]),
        _mm512_unpacklo_ps(z[2], z[3]),
        _mm512_unpackhi_ps(z[2], z[3]),
        _mm512_unpacklo_ps(z[4], z[5]),
        _mm512_unpackhi_ps(z[4], z[5]),
        _mm512_unpacklo_ps(z[6], z[7]),
        _mm512_unpackhi_ps(z[6], z[7]),
    ];
    // In each 128-bit lane k of half h: s[q] holds tiles 4 * (q / 4) + 8 * h.. of column
    // (q % 4) + 4 * k.
    let s = [
        _mm512_shuffle_ps::<0x44>(t[0], t[2]),
        _mm512_shuffle_ps::<0xee>(t[0], t[2]),
        _mm512_shuffle_ps::<0x44>(t[1], t[3]),
        _mm512_shuffle_ps::<0xee>(t[1], t[3]),
        _mm512_shuffle_ps::<0x44>(t[4], t[6]),
        _mm512_shuffle_ps::<0xee>(t[4], t[6]),
        _mm512_shuffle_ps::<0x44>(t[5], t[7]),
        _mm512_shuffle_ps::<0xee>(t[5], t[7]),
    ];
    let lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
    let hi = _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    [
        _mm512_permutex2var_ps(s[0], lo, s[4]),
        _mm512_permutex2var_ps(s[1], lo, s[5]),
        _mm512_permutex2var_ps(s[2], lo, s[6]),
        _mm512_permutex2var_ps(s[3], lo, s[7]),
        _mm512_permutex2var_ps(s[0], hi, s[4]),
        _mm512_permutex2var_ps(s[1], hi, s[5]),
    ]
}

/// The output transform of [`super::winograd`] (channels `r0..r1`, `m` as there).
///
/// # Safety
/// The CPU has AVX-512F; `m` holds 36 buffers of `msz` floats with rows `ldc` (a multiple of
/// 16) apart; this task alone writes the outputs of `tiles` in channels `r0..r1`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn transform_output(m: &[f32], msz: usize, ldc: usize, r0: usize, r1: usize, bias: &[f32], tiles: &[TileOut], t: &Tiles, clamp: Clamp, out: OutPtr) {
    let hw = t.oh * t.ow;
    let (lo, hi) = clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
    let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let pair_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let pair_hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let quad_lo = _mm512_setr_epi32(0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
    let quad_hi = _mm512_setr_epi32(8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31);
    for (r, &bias_r) in bias.iter().enumerate().take(r1).skip(r0) {
        let b = _mm512_set1_ps(bias_r);
        let mut col = 0;
        while col < tiles.len() {
            let mp = m.as_ptr().add((r - r0) * ldc + col);
            // Columns first: `cols[j]` is Aᵀ of position column j; then the rows of the result.
            let cols: [[__m512; 4]; 6] = std::array::from_fn(|j| at(std::array::from_fn(|i| _mm512_loadu_ps(mp.add((i * 6 + j) * msz)))));
            let tt: [[__m512; 6]; 4] = std::array::from_fn(|i| cols.map(|c| c[i]));
            let run = &tiles[col..tiles.len().min(col + 16)];
            let whole = run.len() == 16 && run[0].line == run[15].line && run[0].rows == 4 && run[15].cols == 4;
            for (i, ti) in tt.iter().enumerate() {
                let y = at(*ti).map(|v| _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, b), lo), hi));
                if whole {
                    // Tiles side by side: output row 4ty + i holds y0[l], y1[l], y2[l], y3[l]
                    // for l = 0..16.
                    let (p01l, p01h) = (_mm512_permutex2var_ps(y[0], pair_lo, y[1]), _mm512_permutex2var_ps(y[0], pair_hi, y[1]));
                    let (p23l, p23h) = (_mm512_permutex2var_ps(y[2], pair_lo, y[3]), _mm512_permutex2var_ps(y[2], pair_hi, y[3]));
                    let dst = out.at(run[0].base + r * hw + i * t.ow);
                    _mm512_storeu_ps(dst, _mm512_permutex2var_ps(p01l, quad_lo, p23l));
                    _mm512_storeu_ps(dst.add(16), _mm512_permutex2var_ps(p01l, quad_hi, p23l));
                    _mm512_storeu_ps(dst.add(32), _mm512_permutex2var_ps(p01h, quad_lo, p23h));
                    _mm512_storeu_ps(dst.add(48), _mm512_permutex2var_ps(p01h, quad_hi, p23h));
                    continue;
                }
                let mut buf = [[0f32; 16]; 4];
                for (bj, yj) in buf.iter_mut().zip(&y) {
                    _mm512_storeu_ps(bj.as_mut_ptr(), *yj);
                }
                for (l, to) in run.iter().enumerate() {
                    if i < to.rows {
                        let dst = out.at(to.base + r * hw + i * t.ow);
                        for (j, bj) in buf.iter().enumerate().take(to.cols) {
                            *dst.add(j) = bj[l];
                        }
                    }
                }
            }
            col += 16;
        }
    }
}
