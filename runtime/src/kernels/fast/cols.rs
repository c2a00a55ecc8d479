//! The B operand of the packed conv: where the GEMM's columns come from. The input is
//! resolved per channel ([`Source`]: channel parts, BatchNorm + activation prologue, gate),
//! then either packed as im2col micro-panels per tile, read in place (plain 1x1 convs), or
//! copied once into a zero-padded, stride-phase grid whose every im2col row is contiguous.

use super::micro::NARROW_MAX;
use super::{Geo, Isa, NB};
use crate::kernels::cpu::{self, dispatch};
use rayon::prelude::*;
use tlc_compiler::ir::Activation;

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
pub(super) struct Source<'a> {
    pub(super) input: &'a ConvInput<'a>,
    /// Per input channel: (part, channel within the part).
    chans: Vec<(usize, usize)>,
    c: usize,
    hw: usize,
    pub(super) isa: Isa,
    /// No prologue: values are copied as they are.
    pub(super) plain: bool,
}

impl<'a> Source<'a> {
    pub(super) fn new(input: &'a ConvInput<'a>, n: usize, g: &Geo, isa: Isa) -> Source<'a> {
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
    pub(super) fn plane(&self, b: usize, ch: usize) -> &[f32] {
        let (pi, cc) = self.chans[ch];
        let (data, ci) = self.input.parts[pi];
        &data[(b * ci + cc) * self.hw..][..self.hw]
    }

    /// Floats from channel `ch`'s plane of one image to the next image's.
    #[inline(always)]
    pub(super) fn image_stride(&self, ch: usize) -> usize {
        self.input.parts[self.chans[ch].0].1 * self.hw
    }

    /// Maps values of channel `ch` of image `b` copied into `seg` (affine, activation, gate).
    #[inline(always)]
    pub(super) fn transform(&self, b: usize, ch: usize, seg: &mut [f32]) {
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
    if pointwise && !src.plain {
        pack_pointwise(src.isa, src, b, k0, kcl, n0, nb, nr, dst);
        return;
    }
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
            } else {
                pack_run(src, b, c, plane, g, yoff, xoff, run, d);
            }
        }
    }
}

dispatch! {
    /// [`pack_b`] of a 1x1 conv with a prologue: each row is copied into the micro-panels
    /// with the affine map, activation and gate applied on the way (ReLU, ReLU6 or none as
    /// a clamp in the same pass; other activations on the copy), columns past `nb` zero.
    fn pack_pointwise(src: &Source, b: usize, k0: usize, kcl: usize, n0: usize, nb: usize, nr: usize, dst: &mut [f32]) {
        let act = src.input.affine.and_then(|a| a.act);
        let clamp = if act.is_none() { Some((f32::NEG_INFINITY, f32::INFINITY)) } else { cpu::clamp_bounds(act) };
        for kk in 0..kcl {
            let c = k0 + kk;
            let x = &src.plane(b, c)[n0..n0 + nb];
            let (s, t) = src.input.affine.map_or((1.0, 0.0), |a| (a.scale[c], a.shift[c]));
            let m = src.input.gate.map_or(1.0, |gate| gate[b * src.c + c]);
            for (jp, xs) in x.chunks(nr).enumerate() {
                let d = &mut dst[(jp * kcl + kk) * nr..][..nr];
                let (d, rest) = d.split_at_mut(xs.len());
                rest.fill(0.0);
                match (clamp, act) {
                    (Some((lo, hi)), _) => d.iter_mut().zip(xs).for_each(|(d, &v)| *d = cpu::mad::<FMA>(v, s, t).max(lo).min(hi) * m),
                    (None, Some(a)) => {
                        d.iter_mut().zip(xs).for_each(|(d, &v)| *d = cpu::mad::<FMA>(v, s, t));
                        cpu::act_slice::<FMA, W512>(a, d);
                        d.iter_mut().for_each(|v| *v *= m);
                    }
                    (None, None) => unreachable!("no activation clamps to the whole line"),
                }
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

/// Where the columns of the GEMM come from.
pub(super) enum Cols<'a> {
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

/// Wasted grid columns, times output channels, per output column above which packing im2col
/// panels (once per call, shared by the channel chunks) costs less than computing the padded
/// grid: 3x3 convs 384->384 at 8x8 (80 columns for 64 outputs) 1.09 -> 0.91 ms, 512->512 at
/// 7x7 b8 10.9 -> 10.0; 256->256 at 14x14 breaks even (~36); 128->32 at 7x7 (~10) and
/// 128->128 at 28x28 (~10) stay faster on the grid.
const PACK_COST: usize = 48;

impl<'a> Cols<'a> {
    /// The phase grid for convs where it wastes little (strides and padding only widen its
    /// rows by a few columns: less than a third more columns at stride 1, a quarter at
    /// larger strides, and fewer than [`PACK_COST`] per output for `co` output channels),
    /// else im2col (1x1 stride-1 convs read their planes directly). `narrow`: the kernel
    /// computes a micro-panel's last few columns narrowly (see [`super::micro::narrow`]), so
    /// only wider tails cost a whole micro-panel.
    pub(super) fn new(src: &'a Source<'a>, n: usize, g: &Geo, co: usize, narrow: bool) -> Cols<'a> {
        let [sy, sx] = g.stride;
        let (wp, hp) = (g.w + g.pad[2] + g.pad[3], g.h + g.pad[0] + g.pad[1]);
        let (hq, wq) = (hp.div_ceil(sy), wp.div_ceil(sx));
        let grid = (g.oh - 1) * wq + g.ow;
        let pointwise = g.kh * g.kw == 1 && g.stride == [1, 1] && g.pad == [0; 4];
        if pointwise && src.plain && src.input.parts.len() == 1 {
            let hw = g.h * g.w;
            return Cols::Direct { src, data: src.input.parts[0].0, img: g.c * hw, offs: (0..g.c).map(|c| c * hw).collect() };
        }
        // Compared in columns computed by micro-panels of 16: a small map rounds up either way.
        let computed = |cols: usize| match cols % 16 {
            0 => cols,
            r if narrow && r <= NARROW_MAX => cols,
            r => cols - r + 16,
        };
        // At stride 1, packing im2col panels costs more than a third more columns computed in
        // place (measured on 7x7 maps: 3x3 convs compute 64 grid columns for 49 outputs); at
        // stride 2 a quarter more already costs more (512->512 at 14x14 -> 7x7, batch 8).
        let (num, den) = if g.stride == [1, 1] { (3, 4) } else { (4, 5) };
        let (grid_cols, out_cols) = (computed(grid), computed(g.oh * g.ow));
        if pointwise || grid_cols * num >= out_cols * den || co * (grid_cols - out_cols) >= PACK_COST * out_cols {
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
    pub(super) fn positions(&self, g: &Geo) -> usize {
        match self {
            Cols::Im2col(_) | Cols::Direct { .. } => g.oh * g.ow,
            Cols::Padded { wq, .. } => (g.oh - 1) * wq + g.ow,
        }
    }

    /// Packs rows `k0..k0+kcl`, columns `n0..n0+nb` of image `b` as micro-panels `[jp][kk][nr]`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pack(&self, b: usize, g: &Geo, k0: usize, kcl: usize, n0: usize, nb: usize, nr: usize, dst: &mut [f32]) {
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

