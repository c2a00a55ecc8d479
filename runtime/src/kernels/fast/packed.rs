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

use super::cols::{Cols, Source};
pub use super::cols::{Affine, ConvInput};
use super::micro::{micro, narrow, split_act, Clamp, Finish, Gather, Micro, Packed, Rows, NARROW_MAX};
use super::{threads, uninit_vec, Geo, Isa, OutPtr, NB};
use crate::kernels::cpu;
use rayon::prelude::*;
use std::cell::RefCell;
use tlc_compiler::ir::Activation;

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
    pub(super) nr: usize,
    pub(super) kc: usize,
    mpad: usize,
    data: Vec<f32>,
    pub(super) bias: Vec<f32>,
}

impl PackedWeights {
    /// Bytes of the packed panels.
    pub fn bytes(&self) -> usize {
        4 * self.data.len()
    }

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

    /// These weights with input channel `k` scaled by `gate[k]` (a 1x1 conv's squeeze-excitation
    /// gate folded in: `w (g * x) = (w g) x`).
    fn gated(&self, gate: &[f32]) -> PackedWeights {
        let mut data = Vec::with_capacity(self.data.len());
        let mut k0 = 0;
        while k0 < self.k {
            let kcl = self.kc.min(self.k - k0);
            let block = &self.data[k0 * self.mpad..(k0 + kcl) * self.mpad];
            for panel in block.chunks_exact(self.mr * kcl) {
                for (row, g) in panel.chunks_exact(self.mr).zip(&gate[k0..k0 + kcl]) {
                    data.extend(row.iter().map(|w| w * g));
                }
            }
            k0 += kcl;
        }
        PackedWeights { data, bias: self.bias.clone(), ..*self }
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

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// How `conv` splits its work: tasks are `(image, tile, channel chunk)`. Tiles are runs of
/// whole micro-panels (at most [`NB`] columns), as even as the micro-panel count allows; small
/// maps get more, narrower tiles and then channel chunks, so that every thread has several
/// tasks of similar size (rayon balances them; a thin last tile no longer idles a thread),
/// unless the weights outweigh the inputs (then channel chunks only).
struct Plan {
    n: usize,
    /// Columns per image (output positions, or padded-grid positions).
    p: usize,
    /// Micro-panels of `nr` columns per image.
    panels: usize,
    nr: usize,
    tiles: usize,
    mpanels: usize,
    msplit: usize,
    per_chunk: usize,
}

/// Tasks per thread the plan aims at.
const TASKS_PER_THREAD: usize = 8;

impl Plan {
    fn new(n: usize, p: usize, pw: &PackedWeights) -> Plan {
        let t = threads();
        let panels = p.div_ceil(pw.nr);
        let fewest = panels.div_ceil(NB / pw.nr);
        // Where the weights outweigh the inputs (more output channels than positions: a late
        // layer at batch 1), as few tiles as possible and channel chunks for the threads, so
        // that every weight streams from memory once: split by tile as well, each thread read
        // all of them, once per tile (1x1 convs at 7x7: 10-20 % faster).
        let tiles = match pw.co > n * p {
            true => fewest,
            false => (TASKS_PER_THREAD * t / 2).div_ceil(n).clamp(fewest, panels.max(1)),
        };
        let mpanels = pw.mpad / pw.mr;
        let units = n * tiles;
        let msplit = if units >= TASKS_PER_THREAD * t { 1 } else { (TASKS_PER_THREAD * t).div_ceil(units).min(mpanels).max(1) };
        let per_chunk = mpanels.div_ceil(msplit);
        Plan { n, p, panels, nr: pw.nr, tiles, mpanels, msplit: mpanels.div_ceil(per_chunk), per_chunk }
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

    /// Columns `(n0, nb)` of a tile: micro-panels `tile * panels / tiles` up to the next
    /// tile's first.
    fn cols(&self, tile: usize) -> (usize, usize) {
        let first = |t: usize| (t * self.panels / self.tiles * self.nr).min(self.p);
        (first(tile), first(tile + 1) - first(tile))
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
    /// Per image, the weights with its gate folded in ([`fold_gate`]), read instead of `pw`.
    gated: Option<&'a [PackedWeights]>,
    residual: Option<&'a [f32]>,
    /// The micro-kernels add the residual as they store the last k-block (outputs written in
    /// place, and no activation other than a clamp after it).
    fuse_res: bool,
    /// The activation left for the epilogue (`None` when `clamp` does it in the kernels).
    act: Option<Activation>,
    /// ReLU or ReLU6 applied by the micro-kernels as they store the last k-block (after the
    /// residual when `fuse_res`): no second pass over the output.
    clamp: Clamp,
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
                let at = (b * pw.co + mlo * pw.mr) * p + n0;
                let fin = Finish { res: self.residual.filter(|_| self.fuse_res).map(|res| res[at..].as_ptr()), clamp: self.clamp };
                // SAFETY: this task owns rows mlo*MR..min(mhi*MR, co), columns n0..n0+nb of
                // image b (tasks cover disjoint rectangles of `out`, and the residual has the
                // output's layout); edge tiles go through a buffer, so nothing outside is written.
                unsafe { self.kblocks(b, tile, mlo, mhi, self.out.at(at), p, true, fin) };
                let res = self.residual.filter(|_| !self.fuse_res);
                if res.is_some() || self.act.is_some() {
                    for r in mlo * pw.mr..(mhi * pw.mr).min(pw.co) {
                        let at = (b * pw.co + r) * p + n0;
                        // SAFETY: this task's own row segment, fully written just above.
                        let row = unsafe { std::slice::from_raw_parts_mut(self.out.at(at), nb) };
                        cpu::add_act_inplace(pw.isa, row, res.map_or(&[], |res| &res[at..at + nb]), self.act);
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
                unsafe { self.kblocks(b, tile, mlo, mhi, ct.as_mut_ptr(), NB, false, Finish { res: None, clamp: self.clamp }) };
                self.compact(b, n0, nb, mlo, &ct[..rows * NB], *wq);
            }),
        }
    }

    /// Accumulates every k-block of the task into `c` (row `mlo * MR`, column `n0` of the task's
    /// rectangle; rows `ldc` apart), the last one finished by `fin`.
    ///
    /// # Safety
    /// As [`run_kblock`]; with `exact == false`, `c` must hold full micro-tiles.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kblocks(&self, b: usize, tile: usize, mlo: usize, mhi: usize, c: *mut f32, ldc: usize, exact: bool, fin: Finish) {
        let pw = self.pw;
        let (n0, nb) = self.plan.cols(tile);
        let nr = pw.nr;
        let np = nb.div_ceil(nr);
        let in_place = match self.cols {
            // `Cols::Padded` keeps a tile of slack after every image, so the last micro-panel's
            // full rows stay inside.
            Cols::Padded { data, img, offs, .. } => Some((&data[b * img + n0..], offs)),
            // A last micro-panel of at most NARROW_MAX columns reads only those (`narrow`).
            Cols::Direct { data, img, offs, .. } if n0 + np * nr <= self.plan.p || (pw.micro == Micro::Avx512Tall && nb % nr <= NARROW_MAX) => {
                Some((&data[b * img + n0..], offs))
            }
            _ => None,
        };
        if let Some((start, offs)) = in_place {
            // No packing: the kernels read B rows in place.
            let base = start.as_ptr();
            let mut k0 = 0;
            while k0 < pw.k {
                let kcl = pw.kc.min(pw.k - k0);
                let ko = offs[k0..k0 + kcl].as_ptr();
                run_kblock(self.weights(b), k0, kcl, |jp| Gather(base.add(jp * nr), ko), c, ldc, nb, mlo, mhi, exact, fin);
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
                run_kblock(self.weights(b), k0, kcl, |jp| Packed(bsrc[jp * kcl * nr..][..kcl * nr].as_ptr(), nr), c, ldc, nb, mlo, mhi, exact, fin);
                k0 += kcl;
            }
        });
    }

    /// The weights image `b` is multiplied by.
    fn weights(&self, b: usize) -> &PackedWeights {
        self.gated.map_or(self.pw, |ws| &ws[b])
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
    let gated = fold_gate(input, pw, n, g);
    let ungated;
    let input = match gated {
        Some(_) => {
            ungated = ConvInput { parts: input.parts.clone(), affine: None, gate: None };
            &ungated
        }
        None => input,
    };
    let src = Source::new(input, n, g, pw.isa);
    let total = n * pw.co * g.oh * g.ow;
    assert!(residual.is_none_or(|r| r.len() == total), "packed conv: residual length");
    let cols = Cols::new(&src, n, g, pw.co, pw.micro == Micro::Avx512Tall);
    let plan = Plan::new(n, cols.positions(g), pw);
    // Every element is written by the task that owns it.
    let mut out = uninit_vec(total);
    let shared = (plan.msplit > 1 && matches!(cols, Cols::Im2col(_))).then(|| pack_all(&cols, g, pw, &plan));
    // The kernels add the residual where they write the output in place and only a clamp
    // (or nothing) follows it; otherwise the epilogue (or `compact`) adds it.
    let fuse_res = residual.is_some() && !matches!(cols, Cols::Padded { .. }) && split_act(act, false).1.is_none();
    let (clamp, act) = split_act(act, residual.is_some() && !fuse_res);
    let job = Job { cols: &cols, g, pw, plan: &plan, shared: shared.as_deref(), gated: gated.as_deref(), residual, fuse_res, act, clamp, out: OutPtr(out.as_mut_ptr()) };
    (0..plan.tasks()).into_par_iter().with_max_len(1).for_each(|t| job.run(t));
    out
}

/// A plain 1x1 conv's gate folded into per-image copies of the weights, where scaling the
/// weights costs less than packing the gated input (`co <= positions`; the ungated input is
/// then read in place): EfficientNet's projection convs.
fn fold_gate(input: &ConvInput, pw: &PackedWeights, n: usize, g: &Geo) -> Option<Vec<PackedWeights>> {
    let gate = input.gate?;
    let pointwise = g.kh * g.kw == 1 && g.stride == [1, 1] && g.pad == [0; 4];
    if !pointwise || input.affine.is_some() || input.parts.len() != 1 || pw.co > g.oh * g.ow {
        return None;
    }
    Some((0..n).into_par_iter().map(|b| pw.gated(&gate[b * pw.k..(b + 1) * pw.k])).collect())
}

/// Packs every tile of every image once (shared by the channel chunks of a tile): tile
/// stride `k * NB`, k-block `k0` at `k0 * np * NR`, layout `[jp][kk][NR]`; in parallel over
/// (image, tile, k-block) (per tile, one thread packed the single tile of a small map while
/// the other waited).
fn pack_all(cols: &Cols, g: &Geo, pw: &PackedWeights, plan: &Plan) -> Vec<f32> {
    let kblocks = pw.k.div_ceil(pw.kc);
    let nr = pw.nr;
    // Each tile's `k * np * NR` packed floats (zeros past its columns included) are written
    // below; the rest of its `k * NB` stride is never read.
    let mut v = uninit_vec(plan.n * plan.tiles * pw.k * NB);
    let vp = OutPtr(v.as_mut_ptr());
    (0..plan.n * plan.tiles * kblocks).into_par_iter().with_max_len(1).for_each(|t| {
        let (bt, kb) = (t / kblocks, t % kblocks);
        let (b, tile) = (bt / plan.tiles, bt % plan.tiles);
        let (n0, nb) = plan.cols(tile);
        let np = nb.div_ceil(nr);
        let (k0, kcl) = (kb * pw.kc, pw.kc.min(pw.k - kb * pw.kc));
        // SAFETY: k-block kb of tile bt, `kcl * np * nr` floats inside the tile's stride
        // (`np * nr <= NB`), written by this task alone.
        let dst = unsafe { std::slice::from_raw_parts_mut(vp.at(bt * pw.k * NB + k0 * np * nr), kcl * np * nr) };
        cols.pack(b, g, k0, kcl, n0, nb, nr, dst);
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
/// `rows(jp)` gives `kcl` valid rows of NR floats; the CPU supports `pw.isa`; `fin.res` (when
/// given) is laid out like `c` and valid wherever `c` is written (`exact == true` with it).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn run_kblock<R: Rows>(pw: &PackedWeights, k0: usize, kcl: usize, rows: impl Fn(usize) -> R, c: *mut f32, ldc: usize, nb: usize, mlo: usize, mhi: usize, exact: bool, fin: Finish) {
    let fin = if k0 + kcl == pw.k { fin } else { Finish::NONE };
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
                let off = (row - mlo * mr) * ldc + col;
                let (cp, tfin) = (c.add(off), Finish { res: fin.res.map(|rp| rp.add(off)), clamp: fin.clamp });
                if ncols <= NARROW_MAX && ncols < nr && narrow(pw.micro, kcl, ap, bp, cp, ldc, bias, tfin, nrows, ncols) {
                    continue;
                }
                if !exact || (nrows == mr && ncols == nr) {
                    micro(pw.micro, kcl, ap, bp, cp, ldc, bias, tfin);
                } else {
                    // An edge tile: through a full-size buffer; the residual (rows `ldc` apart)
                    // is added, then clamped, on the way out.
                    if !first {
                        for r in 0..nrows {
                            std::ptr::copy_nonoverlapping(cp.add(r * ldc), tmp.as_mut_ptr().add(r * nr), ncols);
                        }
                    }
                    let inner = if tfin.res.is_some() { Finish::NONE } else { tfin };
                    micro(pw.micro, kcl, ap, bp, tmp.as_mut_ptr(), nr, bias, inner);
                    for r in 0..nrows {
                        let t = &tmp[r * nr..r * nr + ncols];
                        match tfin.res {
                            Some(rp) => {
                                for (j, &v) in t.iter().enumerate() {
                                    let v = v + *rp.add(r * ldc + j);
                                    *cp.add(r * ldc + j) = tfin.clamp.map_or(v, |(lo, hi)| v.max(lo).min(hi));
                                }
                            }
                            None => std::ptr::copy_nonoverlapping(t.as_ptr(), cp.add(r * ldc), ncols),
                        }
                    }
                }
            }
        }
        mb = me;
    }
}
