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
//! * Micro-kernels per level ([`Isa`]): AVX-512 16x16 (8x32 for channel counts that are not
//!   multiples of 16), AVX2+FMA 6x16, portable 4x8 loops.
//! * Tasks are (image, spatial tile, output-channel chunk) triples over the rayon pool, so a
//!   batch runs as one parallel loop and small late-stage maps split over channels (their
//!   tiles are then packed once, shared by the chunks).
//! * Epilogue: bias on the first k-block, then after the last one an optional residual (same
//!   shape as the output) and the activation, on the tile while it is still in cache.

use super::micro::{micro, Gather, Micro, Packed, Rows};
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

/// Conv weights `[co, c, kh, kw]` packed for one level's micro-kernel, with the bias
/// (zero-padded).
#[derive(Clone, Debug)]
pub struct PackedWeights {
    /// Output channels.
    pub co: usize,
    /// Reduction length `c * kh * kw`.
    pub k: usize,
    pub(super) isa: Isa,
    pub(super) micro: Micro,
    /// Panel width (MR of the kernel for convs; NR for linear layers).
    pub(super) mr: usize,
    nr: usize,
    pub(super) kc: usize,
    mpad: usize,
    data: Vec<f32>,
    pub(super) bias: Vec<f32>,
}

impl PackedWeights {
    /// Packs row-major `w` `[co, k]` and the optional bias for level `isa` (lowered to what
    /// this CPU has).
    pub fn new(w: &[f32], co: usize, k: usize, bias: Option<&[f32]>, isa: Isa) -> PackedWeights {
        let isa = isa.capped();
        let micro = Micro::choose(isa, co);
        let (mr, nr) = micro.shape();
        Self::pack(w, co, k, bias, isa, micro, mr, nr)
    }

    /// Packs a linear layer's `w` `[out, in]` as the B operand of [`super::linear`]: panels of
    /// the micro-kernel's NR output features (`mr` holds that width here).
    pub fn new_linear(w: &[f32], outf: usize, inf: usize, bias: Option<&[f32]>, isa: Isa) -> PackedWeights {
        let isa = isa.capped();
        // The wide AVX-512 kernel: fewer loads per FMA than 16x16 with the A panels packed
        // per call.
        let micro = Micro::choose(isa, 8);
        let (_, nr) = micro.shape();
        Self::pack(w, outf, inf, bias, isa, micro, nr, nr)
    }

    /// Panels of `mr` rows of `w` `[co, k]`, k-major within each k-block.
    #[allow(clippy::too_many_arguments)]
    fn pack(w: &[f32], co: usize, k: usize, bias: Option<&[f32]>, isa: Isa, micro: Micro, mr: usize, nr: usize) -> PackedWeights {
        assert!(w.len() == co * k && bias.is_none_or(|b| b.len() == co), "packed weights: bad lengths");
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
        PackedWeights { co, k, isa, micro, mr, nr, kc, mpad, data, bias: b }
    }

    /// The level these weights were packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Panel `mp` of the k-block `k0..k0+kcl`.
    #[inline(always)]
    pub(super) fn panel(&self, k0: usize, kcl: usize, mp: usize) -> &[f32] {
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
    /// No prologue: values are copied as they are.
    plain: bool,
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
        Source { input, chans, c, hw, isa, plain: input.affine.is_none() && input.gate.is_none() }
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
        if self.plain {
            return;
        }
        let (s, t, act) = match &self.input.affine {
            Some(a) => (a.scale[ch], a.shift[ch], a.act),
            None => (1.0, 0.0, None),
        };
        let m = self.input.gate.map_or(1.0, |gate| gate[b * self.c + ch]);
        cpu::affine_act(self.isa, seg, s, t, act, m);
    }

}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A stretch of a tile's columns that lies in one output row and one micro-panel.
#[derive(Clone, Copy, Default)]
struct Run {
    /// Micro-panel.
    jp: usize,
    /// First column within the micro-panel.
    off: usize,
    /// Output row and column of the first column.
    oy: usize,
    ox: usize,
    len: usize,
}

/// Most runs a tile can have: every column its own row, plus a split per micro-panel.
const MAX_RUNS: usize = NB + NB / 8;

/// The runs of output columns `n0..n0+nb` with micro-panels `nr` wide; returns their count.
fn tile_runs(ow: usize, n0: usize, nb: usize, nr: usize, runs: &mut [Run; MAX_RUNS]) -> usize {
    let mut count = 0;
    let mut col = n0;
    while col < n0 + nb {
        let (oy, ox) = (col / ow, col % ow);
        let (jp, off) = ((col - n0) / nr, (col - n0) % nr);
        let len = (ow - ox).min(nr - off).min(n0 + nb - col);
        runs[count] = Run { jp, off, oy, ox, len };
        count += 1;
        col += len;
    }
    count
}

/// Packs rows `k0..k0+kcl` of the im2col matrix of image `b`, columns `n0..n0+nb`, as
/// micro-panels `[jp][kk][nr]` (columns past `nb` are zero). The tile's runs of columns
/// within one output row are found once; each k-row then copies them from its plane.
#[allow(clippy::too_many_arguments)]
fn pack_b(src: &Source, b: usize, g: &Geo, k0: usize, kcl: usize, n0: usize, nb: usize, nr: usize, dst: &mut [f32]) {
    let taps = g.kh * g.kw;
    let np = nb.div_ceil(nr);
    let tail = np * nr - nb;
    let mut runs = [Run::default(); MAX_RUNS];
    // A 1x1, stride-1, unpadded conv reads the planes as they are: one run per micro-panel.
    let pointwise = taps == 1 && g.stride == [1, 1] && g.pad == [0; 4];
    let count = if pointwise {
        (0..np).for_each(|jp| runs[jp] = Run { jp, off: 0, oy: 0, ox: n0 + jp * nr, len: nr.min(nb - jp * nr) });
        np
    } else {
        tile_runs(g.ow, n0, nb, nr, &mut runs)
    };
    let runs = &runs[..count];
    for kk in 0..kcl {
        let r = k0 + kk;
        let (c, t) = (r / taps, r % taps);
        let (i, j) = (t / g.kw, t % g.kw);
        let plane = src.plane(b, c);
        let yoff = (i * g.dil[0]) as isize - g.pad[0] as isize;
        let xoff = (j * g.dil[1]) as isize - g.pad[2] as isize;
        if tail > 0 {
            dst[((np - 1) * kcl + kk) * nr + nr - tail..][..tail].fill(0.0);
        }
        for run in runs {
            let d = &mut dst[(run.jp * kcl + kk) * nr + run.off..][..run.len];
            if pointwise {
                copy_short(d, &plane[run.ox..run.ox + run.len]);
                src.transform(b, c, d);
            } else {
                pack_run(src, b, c, plane, g, yoff, xoff, run, d);
            }
        }
    }
}

/// One run of one im2col row: the tap `(yoff, xoff)` of outputs `run` read from `plane`
/// (zero in the padding), then the input prologue on the values read.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pack_run(src: &Source, b: usize, c: usize, plane: &[f32], g: &Geo, yoff: isize, xoff: isize, run: &Run, d: &mut [f32]) {
    let (h, w) = (g.h as isize, g.w as isize);
    let (s0, s1) = (g.stride[0] as isize, g.stride[1] as isize);
    let iy = run.oy as isize * s0 + yoff;
    if iy < 0 || iy >= h {
        d.fill(0.0);
        return;
    }
    let row = &plane[iy as usize * g.w..][..g.w];
    let ix0 = run.ox as isize * s1 + xoff;
    let len = run.len as isize;
    if s1 == 1 && ix0 >= 0 && ix0 + len <= w {
        copy_short(d, &row[ix0 as usize..(ix0 + len) as usize]);
        src.transform(b, c, d);
        return;
    }
    // Columns whose tap lies inside the row: ix0 + q * s1 in [0, w).
    let qlo = if ix0 >= 0 { 0 } else { ((-ix0) as usize).div_ceil(s1 as usize) }.min(run.len);
    let qhi = if w > ix0 { ((w - ix0) as usize).div_ceil(s1 as usize).min(run.len) } else { 0 }.max(qlo);
    d[..qlo].fill(0.0);
    d[qhi..].fill(0.0);
    for (q, v) in d[qlo..qhi].iter_mut().enumerate() {
        *v = row[(ix0 + (qlo + q) as isize * s1) as usize];
    }
    src.transform(b, c, &mut d[qlo..qhi]);
}

/// `d = s` for short slices, in blocks of 8 (no call to `memcpy`).
#[inline(always)]
fn copy_short(d: &mut [f32], s: &[f32]) {
    let mut dc = d.chunks_exact_mut(8);
    let mut sc = s.chunks_exact(8);
    for (a, b) in (&mut dc).zip(&mut sc) {
        a.copy_from_slice(b);
    }
    for (a, b) in dc.into_remainder().iter_mut().zip(sc.remainder()) {
        *a = *b;
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
    /// Columns per image (output positions, or padded-grid positions).
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

    /// Columns `(n0, nb)` of a tile.
    fn cols(&self, tile: usize) -> (usize, usize) {
        (tile * NB, NB.min(self.p - tile * NB))
    }
}

/// Where the columns of the GEMM come from.
enum Cols<'a> {
    /// im2col rows packed from the input (any geometry); column = output position.
    Im2col(&'a Source<'a>),
    /// A plain 1x1, stride-1, unpadded conv: B row `c` is plane `c` itself, read in place
    /// (`offs[c]` floats into an image, images `img` apart); tiles whose last micro-panel
    /// would read past the planes are packed from the source instead.
    Direct { src: &'a Source<'a>, data: &'a [f32], img: usize, offs: Vec<usize> },
    /// A zero-padded copy of the input (prologue applied once), each channel split into
    /// `sy * sx` stride phases (phase `(py, px)` holds padded rows `py, py + sy, ..` and columns
    /// `px, px + sx, ..`, `hq x wq` each): the columns are positions `q = oy * wq + ox` of the
    /// phase grid (`ox < ow` kept), and im2col row `(c, i, j)` of column `q` is
    /// `data[offs[(c, i, j)] + q]`, so every micro-panel row is one contiguous copy.
    Padded {
        data: Vec<f32>,
        /// Width of a phase.
        wq: usize,
        /// Floats per image (every channel's phases and a tile of slack).
        img: usize,
        /// Per im2col row: its offset in an image.
        offs: Vec<usize>,
        /// Level of the copies.
        isa: Isa,
    },
}

impl<'a> Cols<'a> {
    /// The phase grid for convs where it wastes little (strides and padding only widen its
    /// rows by a few columns), else im2col (1x1 stride-1 convs read their planes directly).
    fn new(src: &'a Source<'a>, n: usize, g: &Geo) -> Cols<'a> {
        let [sy, sx] = g.stride;
        let (wp, hp) = (g.w + g.pad[2] + g.pad[3], g.h + g.pad[0] + g.pad[1]);
        let (hq, wq) = (hp.div_ceil(sy), wp.div_ceil(sx));
        let grid = (g.oh - 1) * wq + g.ow;
        let pointwise = g.kh * g.kw == 1 && g.stride == [1, 1] && g.pad == [0; 4];
        if pointwise && src.plain && src.input.parts.len() == 1 {
            let hw = g.h * g.w;
            return Cols::Direct { src, data: src.input.parts[0].0, img: g.c * hw, offs: (0..g.c).map(|c| c * hw).collect() };
        }
        // Compared in micro-panels of 16 columns: a small map rounds up either way.
        if pointwise || grid.div_ceil(16) * 4 > (g.oh * g.ow).div_ceil(16) * 5 {
            return Cols::Im2col(src);
        }
        let phase = hq * wq;
        let cblock = sy * sx * phase;
        let img = g.c * cblock + NB;
        let taps = g.kh * g.kw;
        // Phases some tap reads (a 1x1 stride-2 conv reads one of four).
        let mut used = vec![false; sy * sx];
        for t in 0..taps {
            used[((t / g.kw) * g.dil[0] % sy) * sx + (t % g.kw) * g.dil[1] % sx] = true;
        }
        let mut data = vec![0f32; n * img];
        data.par_chunks_mut(img).enumerate().for_each(|(b, dimg)| {
            for (c, dc) in dimg[..g.c * cblock].chunks_exact_mut(cblock).enumerate() {
                fill_phases(src, b, c, g, hq, wq, &used, dc);
            }
        });
        let offs = (0..g.c * taps)
            .map(|r| {
                let (c, t) = (r / taps, r % taps);
                let (y, x) = ((t / g.kw) * g.dil[0], (t % g.kw) * g.dil[1]);
                c * cblock + ((y % sy) * sx + x % sx) * phase + (y / sy) * wq + x / sx
            })
            .collect();
        Cols::Padded { data, wq, img, offs, isa: src.isa }
    }

    /// Columns per image.
    fn positions(&self, g: &Geo) -> usize {
        match self {
            Cols::Im2col(_) | Cols::Direct { .. } => g.oh * g.ow,
            Cols::Padded { wq, .. } => (g.oh - 1) * wq + g.ow,
        }
    }

    /// Packs rows `k0..k0+kcl`, columns `n0..n0+nb` of image `b` as micro-panels `[jp][kk][nr]`.
    #[allow(clippy::too_many_arguments)]
    fn pack(&self, b: usize, g: &Geo, k0: usize, kcl: usize, n0: usize, nb: usize, nr: usize, dst: &mut [f32]) {
        match self {
            Cols::Im2col(src) | Cols::Direct { src, .. } => pack_b(src, b, g, k0, kcl, n0, nb, nr, dst),
            Cols::Padded { data, img, offs, isa, .. } => pack_padded(*isa, &data[b * img + n0..], &offs[k0..k0 + kcl], nb, nr, dst),
        }
    }
}

cpu::dispatch! {
    /// Micro-panels `[jp][kk][nr]` of the padded grid: row `kk` starts at `data[offs[kk]]`.
    fn pack_padded(data: &[f32], offs: &[usize], nb: usize, nr: usize, dst: &mut [f32]) {
        let np = nb.div_ceil(nr);
        let kcl = offs.len();
        for (kk, &off) in offs.iter().enumerate() {
            let row = &data[off..][..np * nr];
            for (jp, seg) in row.chunks_exact(nr).enumerate() {
                dst[(jp * kcl + kk) * nr..][..nr].copy_from_slice(seg);
            }
        }
    }
}

/// Writes channel `c` of image `b` (prologue applied) into its zeroed stride phases `dc`
/// (`sy * sx` planes of `hq x wq`; padded position `(y, x)` goes to phase `(y % sy, x % sx)`,
/// at `(y / sy, x / sx)`), skipping phases no tap reads.
#[allow(clippy::too_many_arguments)]
fn fill_phases(src: &Source, b: usize, c: usize, g: &Geo, hq: usize, wq: usize, used: &[bool], dc: &mut [f32]) {
    let [sy, sx] = g.stride;
    let (pt, pl) = (g.pad[0], g.pad[2]);
    for (y, srow) in src.plane(b, c).chunks_exact(g.w).enumerate() {
        let yp = y + pt;
        for px in (0..sx).filter(|px| used[(yp % sy) * sx + px]) {
            // Input columns x with (x + pl) % sx == px, at phase columns (x + pl) / sx.
            let x0 = (px + sx - pl % sx) % sx;
            if x0 >= g.w {
                continue;
            }
            let count = (g.w - x0).div_ceil(sx);
            let at = (((yp % sy) * sx + px) * hq + yp / sy) * wq + (x0 + pl) / sx;
            let d = &mut dc[at..at + count];
            if sx == 1 {
                copy_short(d, srow);
            } else {
                d.iter_mut().zip(srow[x0..].iter().step_by(sx)).for_each(|(o, v)| *o = *v);
            }
            src.transform(b, c, d);
        }
    }
}

/// One conv call's shared state, read by every task.
struct Job<'a> {
    cols: &'a Cols<'a>,
    g: &'a Geo,
    pw: &'a PackedWeights,
    plan: &'a Plan,
    /// Every tile packed once, when several channel chunks share each tile.
    shared: Option<&'a [f32]>,
    residual: Option<&'a [f32]>,
    act: Option<Activation>,
    out: OutPtr,
}

thread_local! {
    static CTILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Job<'_> {
    /// Task `t`: every k-block of its tile and channel chunk, then the epilogue.
    fn run(&self, t: usize) {
        let (b, tile, mlo, mhi) = self.plan.task(t);
        let (n0, nb) = self.plan.cols(tile);
        let (pw, p) = (self.pw, self.g.oh * self.g.ow);
        let rows = (mhi - mlo) * pw.mr;
        match self.cols {
            Cols::Im2col(_) | Cols::Direct { .. } => {
                // SAFETY: this task owns rows mlo*MR..min(mhi*MR, co), columns n0..n0+nb of
                // image b (tasks cover disjoint rectangles of `out`); edge tiles go through a
                // buffer, so nothing outside is written.
                unsafe { self.kblocks(b, tile, mlo, mhi, self.out.at((b * pw.co + mlo * pw.mr) * p + n0), p, true) };
                if self.residual.is_some() || self.act.is_some() {
                    for r in mlo * pw.mr..(mhi * pw.mr).min(pw.co) {
                        let at = (b * pw.co + r) * p + n0;
                        // SAFETY: this task's own row segment, fully written just above.
                        let row = unsafe { std::slice::from_raw_parts_mut(self.out.at(at), nb) };
                        cpu::add_act_inplace(pw.isa, row, self.residual.map_or(&[], |res| &res[at..at + nb]), self.act);
                    }
                }
            }
            Cols::Padded { wq, .. } => CTILE.with(|ct| {
                let mut ct = ct.borrow_mut();
                if ct.len() < rows * NB {
                    ct.resize(rows * NB, 0.0);
                }
                // SAFETY: the tile buffer holds `rows` full rows of NB columns, every micro-tile
                // of the task included.
                unsafe { self.kblocks(b, tile, mlo, mhi, ct.as_mut_ptr(), NB, false) };
                self.compact(b, n0, nb, mlo, &ct[..rows * NB], *wq);
            }),
        }
    }

    /// Accumulates every k-block of the task into `c` (row `mlo * MR`, column `n0` of the task's
    /// rectangle; rows `ldc` apart).
    ///
    /// # Safety
    /// As [`run_kblock`]; with `exact == false`, `c` must hold full micro-tiles.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kblocks(&self, b: usize, tile: usize, mlo: usize, mhi: usize, c: *mut f32, ldc: usize, exact: bool) {
        let pw = self.pw;
        let (n0, nb) = self.plan.cols(tile);
        let nr = pw.nr;
        let np = nb.div_ceil(nr);
        let in_place = match self.cols {
            // `Cols::Padded` keeps a tile of slack after every image, so the last micro-panel's
            // full rows stay inside.
            Cols::Padded { data, img, offs, .. } => Some((&data[b * img + n0..], offs)),
            Cols::Direct { data, img, offs, .. } if n0 + np * nr <= self.plan.p => Some((&data[b * img + n0..], offs)),
            _ => None,
        };
        if let Some((start, offs)) = in_place {
            // No packing: the kernels read B rows in place.
            let base = start.as_ptr();
            let mut k0 = 0;
            while k0 < pw.k {
                let kcl = pw.kc.min(pw.k - k0);
                let ko = offs[k0..k0 + kcl].as_ptr();
                run_kblock(pw, k0, kcl, |jp| Gather(base.add(jp * nr), ko), c, ldc, nb, mlo, mhi, exact);
                k0 += kcl;
            }
            return;
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let need = if self.shared.is_some() { 0 } else { pw.kc * np * nr };
            if s.len() < need {
                s.resize(need, 0.0);
            }
            let mut k0 = 0;
            while k0 < pw.k {
                let kcl = pw.kc.min(pw.k - k0);
                let bsrc: &[f32] = match self.shared {
                    Some(v) => &v[(b * self.plan.tiles + tile) * pw.k * NB + k0 * np * nr..][..kcl * np * nr],
                    None => {
                        self.cols.pack(b, self.g, k0, kcl, n0, nb, nr, &mut s[..need]);
                        &s[..need]
                    }
                };
                run_kblock(pw, k0, kcl, |jp| Packed(bsrc[jp * kcl * nr..][..kcl * nr].as_ptr(), nr), c, ldc, nb, mlo, mhi, exact);
                k0 += kcl;
            }
        });
    }

    /// Copies the padded-grid tile `ct` (columns `n0..n0+nb`) to the output positions it
    /// holds, with residual and activation.
    fn compact(&self, b: usize, n0: usize, nb: usize, mlo: usize, ct: &[f32], wp: usize) {
        let (pw, g) = (self.pw, self.g);
        let p = g.oh * g.ow;
        let mut q = n0;
        while q < n0 + nb {
            let (oy, ox) = (q / wp, q % wp);
            let len = (n0 + nb - q).min(wp - ox);
            let keep = len.min(g.ow.saturating_sub(ox));
            if keep > 0 {
                for r in mlo * pw.mr..(mlo * pw.mr + ct.len() / NB).min(pw.co) {
                    let at = (b * pw.co + r) * p + oy * g.ow + ox;
                    let src = &ct[(r - mlo * pw.mr) * NB + q - n0..][..keep];
                    // SAFETY: row r of this task's rectangle; output rows of different
                    // tasks or tiles never overlap (each position belongs to one tile).
                    let dst = unsafe { std::slice::from_raw_parts_mut(self.out.at(at), keep) };
                    match self.residual {
                        Some(res) => cpu::add_act_into(pw.isa, dst, src, &res[at..at + keep], self.act),
                        None => cpu::affine_act_into(pw.isa, dst, src, 1.0, 0.0, self.act),
                    }
                }
            }
            q += len;
        }
    }
}

/// Convolution of `n` images with packed weights: returns `[n, co, oh, ow]` with bias, then
/// `+ residual` (same shape as the output) and the activation.
pub fn conv(input: &ConvInput, pw: &PackedWeights, n: usize, g: &Geo, residual: Option<&[f32]>, act: Option<Activation>) -> Vec<f32> {
    assert_eq!(pw.k, g.c * g.kh * g.kw, "packed conv: weights do not match the geometry");
    let src = Source::new(input, n, g, pw.isa);
    let total = n * pw.co * g.oh * g.ow;
    assert!(residual.is_none_or(|r| r.len() == total), "packed conv: residual length");
    let cols = Cols::new(&src, n, g);
    let plan = Plan::new(n, cols.positions(g), pw);
    // Every element is written by the task that owns it.
    let mut out = uninit_vec(total);
    let shared = (plan.msplit > 1 && matches!(cols, Cols::Im2col(_))).then(|| pack_all(&cols, g, pw, &plan));
    let job = Job { cols: &cols, g, pw, plan: &plan, shared: shared.as_deref(), residual, act, out: OutPtr(out.as_mut_ptr()) };
    (0..plan.tasks()).into_par_iter().for_each(|t| job.run(t));
    out
}

/// Packs every tile of every image once (shared by the channel chunks of a tile): tile
/// stride `k * NB`, k-block `k0` at `k0 * np * NR`, layout `[jp][kk][NR]`.
fn pack_all(cols: &Cols, g: &Geo, pw: &PackedWeights, plan: &Plan) -> Vec<f32> {
    let kblocks = pw.k.div_ceil(pw.kc);
    let nr = pw.nr;
    let mut v = vec![0f32; plan.n * plan.tiles * pw.k * NB];
    v.par_chunks_mut(pw.k * NB).enumerate().for_each(|(bt, chunk)| {
        let (b, tile) = (bt / plan.tiles, bt % plan.tiles);
        let (n0, nb) = plan.cols(tile);
        let np = nb.div_ceil(nr);
        for kb in 0..kblocks {
            let k0 = kb * pw.kc;
            let kcl = pw.kc.min(pw.k - k0);
            cols.pack(b, g, k0, kcl, n0, nb, nr, &mut chunk[k0 * np * nr..][..kcl * np * nr]);
        }
    });
    v
}

/// One k-block of one task: every (weight panel, micro-panel) pair of panels `mlo..mhi` and
/// the tile's micro-panels (rows of micro-panel `jp` from `rows(jp)`), accumulated into `c`
/// (the task's rectangle: row `mlo * MR`, its first column; rows `ldc` apart).
///
/// # Safety
/// `c` addresses rows `mlo*MR..min(mhi*MR, co)` (all `mhi*MR` with `exact == false`) and
/// columns `0..nb` (`0..np*NR` with `exact == false`) of memory this caller alone writes;
/// `rows(jp)` gives `kcl` valid rows of NR floats; the CPU supports `pw.isa`.
#[allow(clippy::too_many_arguments)]
unsafe fn run_kblock<R: Rows>(pw: &PackedWeights, k0: usize, kcl: usize, rows: impl Fn(usize) -> R, c: *mut f32, ldc: usize, nb: usize, mlo: usize, mhi: usize, exact: bool) {
    let (mr, nr) = (pw.mr, pw.nr);
    let np = nb.div_ceil(nr);
    let first = k0 == 0;
    let mut tmp = [0f32; 16 * 32];
    let mut mb = mlo;
    while mb < mhi {
        let me = (mb + MCP).min(mhi);
        for jp in 0..np {
            let bp = rows(jp);
            let col = jp * nr;
            let ncols = nr.min(nb - col);
            for mp in mb..me {
                let ap = pw.panel(k0, kcl, mp).as_ptr();
                let row = mp * mr;
                let nrows = mr.min(pw.co - row);
                let bias = first.then(|| &pw.bias[row..row + mr]);
                let cp = c.add((row - mlo * mr) * ldc + col);
                if !exact || (nrows == mr && ncols == nr) {
                    micro(pw.micro, kcl, ap, bp, cp, ldc, bias);
                } else {
                    // An edge tile: through a full-size buffer.
                    if !first {
                        for r in 0..nrows {
                            std::ptr::copy_nonoverlapping(cp.add(r * ldc), tmp.as_mut_ptr().add(r * nr), ncols);
                        }
                    }
                    micro(pw.micro, kcl, ap, bp, tmp.as_mut_ptr(), nr, bias);
                    for r in 0..nrows {
                        std::ptr::copy_nonoverlapping(tmp.as_ptr().add(r * nr), cp.add(r * ldc), ncols);
                    }
                }
            }
        }
        mb = me;
    }
}
