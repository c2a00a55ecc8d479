//! Winograd F(4x4, 3x3) for dense 3x3 stride-1 convolutions (Lavin & Gray, 2016): each 4x4
//! block of outputs (a *tile*) comes from the 6x6 input patch `d` around it as
//! `Y = Aᵀ [U ⊙ V] A`, with `U = G g Gᵀ` per (output, input) channel pair, transformed once
//! with the weights, and `V = Bᵀ d B` per tile and input channel. Summed over input channels,
//! the 36 element-wise products are 36 GEMMs `M[xi] = U[xi] (co x c) * V[xi] (c x tiles)`
//! through the packed conv's micro-kernels: 36 multiplies per tile and channel pair instead
//! of 144.
//!
//! Tiles of all images are numbered in a row (`(image, tile row, tile column)`) and are the
//! GEMMs' columns. Tasks are (block of tiles, output-channel chunk): a task transforms its
//! block's input straight into micro-panels (the GEMMs' B operand, sized to stay in L2), then
//! per group of output-channel panels runs the 36 GEMMs into a buffer and transforms that back
//! into the output with bias, residual and activation. The transforms run 16 tiles side by
//! side (auto-vectorised at the CPU's level).

use super::cols::{ConvInput, Source};
use super::micro::{split_act, Clamp, Finish, Packed};
use super::packed::{run_kblock, PackedWeights};
use super::{threads, uninit_vec, Geo, Isa, OutPtr};
use crate::kernels::cpu::{self, dispatch};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::OnceLock;
use tlc_compiler::ir::Activation;

/// Tiles the transforms process side by side.
const L: usize = 16;
type Lanes = [f32; L];
/// Floats of transformed input a task aims to keep (its block's `V`, in L2).
const V_BUDGET: usize = 160 * 1024;
/// Floats of GEMM output per group of output-channel panels.
const M_BUDGET: usize = 96 * 1024;
/// Tasks per thread the plan aims at.
const TASKS_PER_THREAD: usize = 8;

/// How a Winograd conv (this one or [`super::winograd1d`]) splits `mpanels` output-channel
/// panels over its `blocks` blocks of tiles: `(panels per chunk, chunks per block)`, so that
/// the `blocks * chunks` tasks give every thread several.
pub(super) fn channel_chunks(blocks: usize, mpanels: usize) -> (usize, usize) {
    let want = TASKS_PER_THREAD * threads();
    let split = if blocks >= want { 1 } else { want.div_ceil(blocks).min(mpanels).max(1) };
    let per_chunk = mpanels.div_ceil(split);
    (per_chunk, mpanels.div_ceil(per_chunk))
}

/// `(channels per piece, pieces)` for transforming the input of `blocks` blocks once, in
/// parallel over blocks and pieces of the `c` input channels.
pub(super) fn input_pieces(c: usize, blocks: usize) -> (usize, usize) {
    let per = c.div_ceil(TASKS_PER_THREAD * threads() / blocks.max(1) + 1).max(1);
    (per, c.div_ceil(per))
}

/// `G` of F(4x4, 3x3): `U = G g Gᵀ`.
const G: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Whether Winograd runs a conv with this kernel, stride and dilation (3x3, 1, 1).
pub fn fits(kernel: [usize; 2], stride: [usize; 2], dilation: [usize; 2]) -> bool {
    kernel == [3, 3] && stride == [1, 1] && dilation == [1, 1]
}

/// Whether Winograd beats the direct packed GEMM on a conv of `c` to `co` channels at level
/// `isa` once a call has enough tiles ([`pays`]): only the AVX-512 transforms are fast
/// enough, and a handful of channels leaves the transforms unpaid.
pub fn suits(isa: Isa, c: usize, co: usize) -> bool {
    isa.capped() >= Isa::Avx512 && c >= 16 && co >= 16
}

/// Whether `n` images of `[oh, ow]` outputs bring enough 4x4 tiles to fill micro-panels.
pub fn pays(n: usize, oh: usize, ow: usize) -> bool {
    n * oh.div_ceil(4) * ow.div_ceil(4) >= 16
}

/// A 3x3 conv's weights transformed (`U`, one packed `[co, c]` matrix per position of the
/// 6x6 tile) and its bias.
#[derive(Clone, Debug)]
pub struct WinogradWeights {
    /// Output channels.
    pub co: usize,
    /// Input channels.
    pub c: usize,
    u: Vec<PackedWeights>,
    bias: Vec<f32>,
}

impl WinogradWeights {
    /// The transformed matrices, packed.
    pub(super) fn panels(&self) -> &[PackedWeights] {
        &self.u
    }

    /// Transforms row-major `w` `[co, c, 3, 3]` (in f64) and packs it for level `isa`.
    pub fn new(w: &[f32], co: usize, c: usize, bias: Option<&[f32]>, isa: Isa) -> WinogradWeights {
        assert!(w.len() == co * c * 9 && bias.is_none_or(|b| b.len() == co), "winograd weights: bad lengths");
        // U per (output, input) channel pair, then one [co, c] matrix per tile position.
        let pairs: Vec<[f32; 36]> = w.par_chunks_exact(9).map(transform_kernel).collect();
        let u: Vec<PackedWeights> = (0..36)
            .into_par_iter()
            .map(|xi| {
                let m: Vec<f32> = pairs.iter().map(|p| p[xi]).collect();
                PackedWeights::new(&m, co, c, None, isa)
            })
            .collect();
        WinogradWeights { co, c, u, bias: bias.map_or_else(|| vec![0.0; co], <[f32]>::to_vec) }
    }

    /// The level these weights were packed for.
    pub fn isa(&self) -> Isa {
        self.u[0].isa()
    }
}

/// `G g Gᵀ` of one 3x3 kernel `g` (row-major), computed in f64.
fn transform_kernel(g: &[f32]) -> [f32; 36] {
    let mut gg = [[0f64; 3]; 6];
    for (a, row) in gg.iter_mut().enumerate() {
        for (b, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| G[a][k] * g[k * 3 + b] as f64).sum();
        }
    }
    std::array::from_fn(|xi| (0..3).map(|k| gg[xi / 6][k] * G[xi % 6][k]).sum::<f64>() as f32)
}

/// Winograd weights transformed on first use: for convs on small maps that only a batch
/// brings enough tiles for, so that batch-1 use never holds the (four times larger)
/// transformed copy.
#[derive(Debug)]
pub struct LazyWinograd {
    w: Vec<f32>,
    co: usize,
    c: usize,
    bias: Option<Vec<f32>>,
    isa: Isa,
    built: OnceLock<WinogradWeights>,
}

impl LazyWinograd {
    /// Keeps `w` `[co, c, 3, 3]` and the bias for [`WinogradWeights::new`] at level `isa`.
    pub fn new(w: &[f32], co: usize, c: usize, bias: Option<&[f32]>, isa: Isa) -> LazyWinograd {
        LazyWinograd { w: w.to_vec(), co, c, bias: bias.map(<[f32]>::to_vec), isa, built: OnceLock::new() }
    }

    /// The transformed weights (built by the first caller).
    pub fn get(&self) -> &WinogradWeights {
        self.built.get_or_init(|| WinogradWeights::new(&self.w, self.co, self.c, self.bias.as_deref(), self.isa))
    }
}

/// The tiles of a conv's output: `n` images of `th x tw` tiles.
pub(super) struct Tiles {
    th: usize,
    tw: usize,
    co: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}

/// A run of tiles in one tile row: image `b`, tile row `ty`, tile columns `tx..tx + nt`.
#[derive(Clone, Copy)]
struct Seg {
    b: usize,
    ty: usize,
    tx: usize,
    nt: usize,
}

/// Where a tile's 6x6 input patch starts in image `b` (negative or past the map in the
/// padding); `inside` when the whole patch lies in the map.
#[derive(Clone, Copy)]
pub(super) struct TileIn {
    pub(super) b: usize,
    pub(super) y: isize,
    pub(super) x: isize,
    inside: bool,
}

/// Where a tile's outputs go: channel 0's first output, and how many of its rows and columns
/// lie inside the map; `line` numbers its image's tile row among all images'.
#[derive(Clone, Copy)]
pub(super) struct TileOut {
    pub(super) line: usize,
    pub(super) base: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

impl Tiles {
    /// Image, tile row and tile column of tile `t`.
    fn at(&self, t: usize) -> (usize, usize, usize) {
        (t / (self.th * self.tw), t / self.tw % self.th, t % self.tw)
    }

    /// The segments of tiles `t0..t1`.
    fn segments(&self, t0: usize, t1: usize) -> Vec<Seg> {
        let mut segs = Vec::new();
        let mut t = t0;
        while t < t1 {
            let (b, ty, tx) = self.at(t);
            let nt = (self.tw - tx).min(t1 - t);
            segs.push(Seg { b, ty, tx, nt });
            t += nt;
        }
        segs
    }

    fn ins(&self, t0: usize, t1: usize, g: &Geo) -> Vec<TileIn> {
        (t0..t1)
            .map(|t| {
                let (b, ty, tx) = self.at(t);
                let (y, x) = ((4 * ty) as isize - g.pad[0] as isize, (4 * tx) as isize - g.pad[2] as isize);
                TileIn { b, y, x, inside: y >= 0 && x >= 0 && y as usize + 6 <= g.h && x as usize + 6 <= g.w }
            })
            .collect()
    }

    fn outs(&self, t0: usize, t1: usize) -> Vec<TileOut> {
        let hw = self.oh * self.ow;
        (t0..t1)
            .map(|t| {
                let (b, ty, tx) = self.at(t);
                let (y, x) = (4 * ty, 4 * tx);
                TileOut { line: b * self.th + ty, base: b * self.co * hw + y * self.ow + x, rows: (self.oh - y).min(4), cols: (self.ow - x).min(4) }
            })
            .collect()
    }
}

/// Where the transformed input of one block lives: per tile position `xi`, the GEMM's B
/// operand (`c` rows, the block's columns) as the micro-kernels' micro-panels per k-block.
pub(super) struct VLayout {
    c: usize,
    kc: usize,
    np: usize,
    pub(super) nr: usize,
}

impl VLayout {
    /// Floats per tile position.
    pub(super) fn size(&self) -> usize {
        self.c * self.np * self.nr
    }

    /// Columns (whole micro-panels).
    pub(super) fn cols(&self) -> usize {
        self.np * self.nr
    }

    /// Offset of row `ci`, column `col` within one position's operand.
    #[inline(always)]
    pub(super) fn pos(&self, ci: usize, col: usize) -> usize {
        let k0 = ci / self.kc * self.kc;
        let kcl = self.kc.min(self.c - k0);
        k0 * self.cols() + col / self.nr * kcl * self.nr + (ci - k0) * self.nr + col % self.nr
    }
}

/// `Bᵀ d` along one axis, 16 tiles at a time.
#[inline(always)]
fn bt(d: &[Lanes; 6]) -> [Lanes; 6] {
    let mut v = [[0f32; L]; 6];
    for l in 0..L {
        let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        v[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        v[1][l] = -4.0 * (d1 + d2) + d3 + d4;
        v[2][l] = 4.0 * (d1 - d2) - d3 + d4;
        v[3][l] = 2.0 * (d3 - d1) - d2 + d4;
        v[4][l] = 2.0 * (d1 - d3) - d2 + d4;
        v[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    v
}

/// `Aᵀ m` along one axis, 16 tiles at a time.
#[inline(always)]
fn at(m: &[Lanes; 6]) -> [Lanes; 4] {
    let mut y = [[0f32; L]; 4];
    for l in 0..L {
        let [m0, m1, m2, m3, m4, m5] = [m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]];
        let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        y[0][l] = m0 + s12 + s34;
        y[1][l] = d12 + 2.0 * d34;
        y[2][l] = s12 + 4.0 * s34;
        y[3][l] = d12 + 8.0 * d34 + m5;
    }
    y
}

dispatch! {
    /// Transforms channels `chans` of the input patches of a block's tiles `ins` into `v`
    /// (36 operands laid out by `lay`; columns past the tiles zero).
    fn transform_input(src: &Source, g: &Geo, ins: &[TileIn], lay: &VLayout, chans: (usize, usize), v: OutPtr) {
        let (vsz, cols) = (lay.size(), lay.cols());
        for ci in chans.0..chans.1 {
            let mut col0 = 0;
            while col0 < cols {
                let mut d = [[[0f32; L]; 6]; 6];
                for (l, t) in ins.iter().enumerate().skip(col0).take(L) {
                    patch(src, g, t, ci, l - col0, &mut d);
                }
                let mut e = [[[0f32; L]; 6]; 6];
                for j in 0..6 {
                    let col = bt(&[d[0][j], d[1][j], d[2][j], d[3][j], d[4][j], d[5][j]]);
                    for (i, c) in col.iter().enumerate() {
                        e[i][j] = *c;
                    }
                }
                let vt = e.map(|ei| bt(&ei));
                if lay.nr.is_multiple_of(L) {
                    // The chunk lies in one micro-panel.
                    let dst = lay.pos(ci, col0);
                    for (xi, lanes) in vt.iter().flatten().enumerate() {
                        // SAFETY: row ci, columns col0..col0+L of operand xi of this block:
                        // within `v` (36 operands of `vsz`), written by this call alone.
                        unsafe { (v.at(xi * vsz + dst) as *mut Lanes).write_unaligned(*lanes) };
                    }
                    col0 += L;
                    continue;
                }
                // Runs of the chunk's columns within one micro-panel.
                let end = (col0 + L).min(cols);
                let mut c = col0;
                while c < end {
                    let run = (lay.nr - c % lay.nr).min(end - c);
                    let dst = lay.pos(ci, c);
                    for (xi, lanes) in vt.iter().flatten().enumerate() {
                        // SAFETY: row ci, columns c..c+run of operand xi of this block: within
                        // `v` (36 operands of `vsz`), written by this call alone.
                        unsafe { std::ptr::copy_nonoverlapping(lanes.as_ptr().add(c - col0), v.at(xi * vsz + dst), run) };
                    }
                    c += run;
                }
                col0 += L;
            }
        }
    }
}

/// The 6x6 patch of tile `t`, channel `ci`, into lane `l` of `d` (zero outside the map, the
/// prologue applied inside).
#[inline(always)]
fn patch(src: &Source, g: &Geo, t: &TileIn, ci: usize, l: usize, d: &mut [[Lanes; 6]; 6]) {
    let plane = src.plane(t.b, ci);
    if t.inside && src.plain {
        let base = t.y as usize * g.w + t.x as usize;
        for (i, di) in d.iter_mut().enumerate() {
            let row = &plane[base + i * g.w..][..6];
            for (dij, v) in di.iter_mut().zip(row) {
                dij[l] = *v;
            }
        }
        return;
    }
    for (i, di) in d.iter_mut().enumerate() {
        let y = t.y + i as isize;
        if y < 0 || y >= g.h as isize {
            continue;
        }
        for (j, dij) in di.iter_mut().enumerate() {
            let x = t.x + j as isize;
            if x >= 0 && x < g.w as isize {
                let mut v = plane[y as usize * g.w + x as usize];
                src.transform(t.b, ci, std::slice::from_mut(&mut v));
                dij[l] = v;
            }
        }
    }
}

dispatch! {
    /// Output channels `r0..r1` of a block from the GEMM outputs `m` (36 buffers of `msz`
    /// floats, row `r - r0`, rows `ldc` apart): `Aᵀ M A + bias`, clamped, into `out`.
    fn transform_output(m: &[f32], msz: usize, ldc: usize, r0: usize, r1: usize, bias: &[f32], tiles: &[TileOut], t: &Tiles, clamp: Clamp, out: OutPtr) {
        let hw = t.oh * t.ow;
        let (lo, hi) = clamp.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        for r in r0..r1 {
            let mut col = 0;
            while col < tiles.len() {
                let mut mm = [[[0f32; L]; 6]; 6];
                for (xi, v) in mm.iter_mut().flatten().enumerate() {
                    v.copy_from_slice(&m[xi * msz + (r - r0) * ldc + col..][..L]);
                }
                let mut tt = [[[0f32; L]; 6]; 4];
                for j in 0..6 {
                    let y = at(&[mm[0][j], mm[1][j], mm[2][j], mm[3][j], mm[4][j], mm[5][j]]);
                    for (i, v) in y.iter().enumerate() {
                        tt[i][j] = *v;
                    }
                }
                let mut y = [[[0f32; L]; 4]; 4];
                for (yi, ti) in y.iter_mut().zip(&tt) {
                    *yi = at(ti);
                    for v in yi.iter_mut().flatten() {
                        *v = (*v + bias[r]).max(lo).min(hi);
                    }
                }
                for (l, to) in tiles[col..tiles.len().min(col + L)].iter().enumerate() {
                    let base = to.base + r * hw;
                    for (i, yi) in y.iter().enumerate().take(to.rows) {
                        for (j, yij) in yi.iter().enumerate().take(to.cols) {
                            // SAFETY: output (r, 4ty + i, 4tx + j) of this task's tile and
                            // channel (tasks write disjoint tiles x channels).
                            unsafe { *out.at(base + i * t.ow + j) = yij[l] };
                        }
                    }
                }
                col += L;
            }
        }
    }
}

/// [`transform_input`] in its AVX-512 form where the CPU and the input allow (`fast`).
#[allow(clippy::too_many_arguments)]
fn input(isa: Isa, fast: bool, src: &Source, g: &Geo, ins: &[TileIn], lay: &VLayout, chans: (usize, usize), v: OutPtr) {
    #[cfg(target_arch = "x86_64")]
    if fast && isa >= Isa::Avx512 && Isa::Avx512.available() {
        // SAFETY: AVX-512 (F, VL, DQ) checked just above, `fast` is `input_fits`; the caller owns rows
        // `chans` of the block's operands in `v`.
        unsafe { super::winograd_x86::transform_input(src, g, ins, lay, chans, v) };
        return;
    }
    let _ = fast;
    transform_input(isa, src, g, ins, lay, chans, v)
}

/// [`transform_output`] in its AVX-512 form where the CPU allows.
#[allow(clippy::too_many_arguments)]
fn output(isa: Isa, m: &[f32], msz: usize, ldc: usize, r0: usize, r1: usize, bias: &[f32], tiles: &[TileOut], t: &Tiles, clamp: Clamp, out: OutPtr) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 && Isa::Avx512.available() {
        // SAFETY: AVX-512F checked just above; `ldc` is a multiple of 16 and the caller owns
        // the outputs of `tiles` in channels r0..r1.
        unsafe { super::winograd_x86::transform_output(m, msz, ldc, r0, r1, bias, tiles, t, clamp, out) };
        return;
    }
    transform_output(isa, m, msz, ldc, r0, r1, bias, tiles, t, clamp, out)
}

thread_local! {
    static V: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static M: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One conv call's shared state, read by every task.
struct Job<'a> {
    src: &'a Source<'a>,
    g: &'a Geo,
    ww: &'a WinogradWeights,
    tiles: Tiles,
    /// Tiles (GEMM columns) in all.
    total: usize,
    /// Tiles per block (the last may have fewer), blocks.
    cb: usize,
    blocks: usize,
    /// Every block's operands: `36 * lay.size()` floats each, in block order.
    lay: VLayout,
    /// Whether the AVX-512 input transform applies ([`super::winograd_x86::input_fits`]).
    fast_input: bool,
    /// Output-channel panels per chunk, chunks per block.
    per_chunk: usize,
    chunks: usize,
    residual: Option<&'a [f32]>,
    act: Option<Activation>,
    clamp: Clamp,
    out: OutPtr,
}

impl<'a> Job<'a> {
    fn new(src: &'a Source<'a>, g: &'a Geo, ww: &'a WinogradWeights, n: usize, residual: Option<&'a [f32]>, act: Option<Activation>, out: OutPtr) -> Job<'a> {
        let tiles = Tiles { th: g.oh.div_ceil(4), tw: g.ow.div_ceil(4), co: ww.co, oh: g.oh, ow: g.ow };
        let total = n * tiles.th * tiles.tw;
        let (mr, nr, kc) = (ww.u[0].mr, ww.u[0].nr, ww.u[0].kc);
        let cb_max = (V_BUDGET / (36 * ww.c.max(1)) / nr * nr).clamp(nr, 64);
        let blocks = total.div_ceil(cb_max).max(1);
        let cb = total.div_ceil(blocks);
        let lay = VLayout { c: ww.c, kc, np: cb.div_ceil(nr), nr };
        let (per_chunk, chunks) = channel_chunks(blocks, ww.co.div_ceil(mr));
        let (clamp, act) = split_act(act, residual.is_some());
        #[cfg(target_arch = "x86_64")]
        let fast_input = super::winograd_x86::input_fits(src, g, n, &lay);
        #[cfg(not(target_arch = "x86_64"))]
        let fast_input = false;
        Job { src, g, ww, tiles, total, cb, blocks, lay, fast_input, per_chunk, chunks, residual, act, clamp, out }
    }

    /// Tiles `t0..t1` of block `bi`.
    fn block(&self, bi: usize) -> (usize, usize) {
        (bi * self.cb, ((bi + 1) * self.cb).min(self.total))
    }

    /// Transforms the input of every block once, in parallel over blocks and channel chunks
    /// (for the output-channel chunks of a block to share).
    fn transform_all(&self) -> Vec<f32> {
        let bsz = 36 * self.lay.size();
        // Every column of every block's operands is written (zero past the block's tiles).
        let mut v = uninit_vec(self.blocks * bsz);
        let vp = OutPtr(v.as_mut_ptr());
        let (per, pieces) = input_pieces(self.ww.c, self.blocks);
        (0..self.blocks * pieces).into_par_iter().with_max_len(1).for_each(|t| {
            let (bi, pc) = (t / pieces, t % pieces);
            let (t0, t1) = self.block(bi);
            let ins = self.tiles.ins(t0, t1, self.g);
            let chans = (pc * per, ((pc + 1) * per).min(self.ww.c));
            input(self.ww.isa(), self.fast_input, self.src, self.g, &ins, &self.lay, chans, OutPtr(vp.at(bi * bsz)));
        });
        v
    }

    /// Task `task`: one block of tiles for one chunk of output-channel panels, reading the
    /// block's operands from `shared` or transforming them here.
    fn run(&self, task: usize, shared: Option<&[f32]>) {
        let (bi, mc) = (task / self.chunks, task % self.chunks);
        let (t0, t1) = self.block(bi);
        let bsz = 36 * self.lay.size();
        match shared {
            Some(v) => self.gemms(t0, t1, mc, &v[bi * bsz..][..bsz]),
            None => V.with(|v| {
                let mut v = v.borrow_mut();
                if v.len() < bsz {
                    // Written whole by the transform just below.
                    *v = uninit_vec(bsz);
                }
                let ins = self.tiles.ins(t0, t1, self.g);
                input(self.ww.isa(), self.fast_input, self.src, self.g, &ins, &self.lay, (0, self.ww.c), OutPtr(v.as_mut_ptr()));
                self.gemms(t0, t1, mc, &v[..bsz]);
            }),
        }
    }

    /// The 36 GEMMs of tiles `t0..t1` (operands `v`) and output-channel chunk `mc`, per group
    /// of panels, each followed by the output transform.
    fn gemms(&self, t0: usize, t1: usize, mc: usize, v: &[f32]) {
        let (ww, lay) = (self.ww, &self.lay);
        let (mr, nr) = (ww.u[0].mr, lay.nr);
        let nb = t1 - t0;
        let ldc = lay.cols().next_multiple_of(L);
        let (mlo, mhi) = (mc * self.per_chunk, ((mc + 1) * self.per_chunk).min(ww.co.div_ceil(mr)));
        let group = (M_BUDGET / (36 * mr * ldc)).max(1);
        let outs = self.tiles.outs(t0, t1);
        let vsz = lay.size();
        M.with(|m| {
            let mut m = m.borrow_mut();
            let msz = group.min(mhi - mlo) * mr * ldc;
            if m.len() < 36 * msz {
                // The GEMMs write every micro-tile the output transform reads.
                *m = uninit_vec(36 * msz);
            }
            let mut gl = mlo;
            while gl < mhi {
                let gh = (gl + group).min(mhi);
                for (xi, pw) in ww.u.iter().enumerate() {
                    let vx = &v[xi * vsz..][..vsz];
                    let mut k0 = 0;
                    while k0 < ww.c {
                        let kcl = pw.kc.min(ww.c - k0);
                        let rows = |jp: usize| Packed(vx[k0 * lay.cols() + jp * kcl * nr..].as_ptr(), nr);
                        // SAFETY: the buffer holds (gh - gl) full panels of `ldc >= np * NR`
                        // columns for position xi; `rows` gives kcl rows of NR floats of this
                        // block's packed operand; the weights were packed for a level this CPU has.
                        unsafe { run_kblock(pw, k0, kcl, rows, m[xi * msz..].as_mut_ptr(), ldc, nb, gl, gh, false, Finish::NONE) };
                        k0 += kcl;
                    }
                }
                let (r0, r1) = (gl * mr, (gh * mr).min(ww.co));
                output(ww.isa(), &m, msz, ldc, r0, r1, &ww.bias, &outs, &self.tiles, self.clamp, self.out);
                self.epilogue(t0, t1, r0, r1);
                gl = gh;
            }
        });
    }

    /// Residual and activation over the outputs of tiles `t0..t1`, channels `r0..r1`.
    fn epilogue(&self, t0: usize, t1: usize, r0: usize, r1: usize) {
        if self.residual.is_none() && self.act.is_none() {
            return;
        }
        let t = &self.tiles;
        for s in t.segments(t0, t1) {
            let x = 4 * s.tx;
            let len = (4 * s.nt).min(t.ow - x);
            for r in r0..r1 {
                for y in 4 * s.ty..(4 * s.ty + 4).min(t.oh) {
                    let at = ((s.b * t.co + r) * t.oh + y) * t.ow + x;
                    // SAFETY: outputs of this task's tiles and channels, written just before.
                    let row = unsafe { std::slice::from_raw_parts_mut(self.out.at(at), len) };
                    cpu::add_act_inplace(self.ww.isa(), row, self.residual.map_or(&[], |res| &res[at..at + len]), self.act);
                }
            }
        }
    }
}

/// 3x3 stride-1 convolution of `n` images through Winograd F(4x4, 3x3): returns
/// `[n, co, oh, ow]` with bias, then `+ residual` (same shape as the output) and `act`.
pub fn conv(input: &ConvInput, ww: &WinogradWeights, n: usize, g: &Geo, residual: Option<&[f32]>, act: Option<Activation>) -> Vec<f32> {
    assert!(g.kh == 3 && g.kw == 3 && g.stride == [1, 1] && g.dil == [1, 1] && g.c == ww.c, "winograd conv: geometry");
    let src = Source::new(input, n, g, ww.isa());
    let total = n * ww.co * g.oh * g.ow;
    assert!(residual.is_none_or(|r| r.len() == total), "winograd conv: residual length");
    // Every output belongs to one tile and is written by the tasks of that tile's block.
    let mut out = uninit_vec(total);
    let job = Job::new(&src, g, ww, n, residual, act, OutPtr(out.as_mut_ptr()));
    let shared = (job.chunks > 1).then(|| job.transform_all());
    let tasks = job.blocks * job.chunks;
    (0..tasks).into_par_iter().with_max_len(1).for_each(|t| job.run(t, shared.as_deref()));
    out
}
