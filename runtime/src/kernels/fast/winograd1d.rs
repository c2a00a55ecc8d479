//! Winograd F(m, r) along the height for `r x 1` stride-1 convolutions (Inception's 7x1 and
//! 3x1; its 1x7 and 1x3 run as these on transposed planes): each tile of `m` output rows in
//! one column comes from the `alpha = m + r - 1` input rows from its first as
//! `y = Aᵀ [U ⊙ V]`, with `U = G g` per (output, input) channel pair, transformed once with
//! the weights, and `V = Bᵀ d` per tile and input channel. Summed over input channels, that
//! is `alpha` GEMMs `U[ξ] (co x c) * V[ξ] (c x tiles)` on the packed conv's micro-kernels:
//! `alpha / m` multiplies per output instead of `r` (F(3, 7): 3 instead of 7; F(4, 3): 1.5
//! instead of 3).
//!
//! The matrices come from the Cook-Toom construction: the interpolation points 0, ±1, ±2,
//! ±1/2 (3 as well for F(3, 7)) and infinity give `Aᵀ` and `G` in closed form, and `Bᵀ` is
//! solved (in f64) from the requirement that the product equal the correlation.
//!
//! Tiles (image, tile row, column) are numbered in a row and are the GEMMs' columns, 16 to a
//! micro-panel. Tasks are (block of tiles, output-channel chunk); a block's input is
//! transformed once (shared by its chunks) straight into the micro-panels, and the output
//! transform adds bias, residual and activation. The transforms run 16 tiles side by side.

use super::cols::{ConvInput, Source};
use super::micro::{Finish, Packed};
use super::packed::{run_kblock, PackedWeights};
use super::winograd::{channel_chunks, input_pieces};
use super::{uninit_vec, Geo, Isa, OutPtr};
use crate::kernels::cpu::{act_slice, dispatch, mad};
use rayon::prelude::*;
use std::cell::RefCell;
use tlc_compiler::ir::Activation;

/// Tiles per micro-panel (the AVX-512 16x16 kernel's NR).
const L: usize = 16;
/// Largest `alpha` and `m` of the transforms below.
const MAX_ALPHA: usize = 9;
const MAX_M: usize = 4;
/// Floats of transformed input a block aims at (its `V`, in L2).
const V_BUDGET: usize = 160 * 1024;
/// Floats of GEMM output per group of output-channel panels.
const M_BUDGET: usize = 96 * 1024;

/// Whether a conv with this kernel, stride, dilation and padding `[t, b, l, r]` runs here
/// (`r x 1`, r = 3 or 7, stride 1, no dilation, no horizontal padding).
pub fn fits(kernel: [usize; 2], stride: [usize; 2], dilation: [usize; 2], pad: [usize; 4]) -> bool {
    matches!(kernel, [3, 1] | [7, 1]) && stride == [1, 1] && dilation == [1, 1] && pad[2] == 0 && pad[3] == 0
}

/// [`fits`] for the conv itself or (a `1 x r` kernel) for the `r x 1` conv of its transposed
/// planes, which is how `conv2d_packed` runs `1 x r` kernels.
pub fn fits_either(kernel: [usize; 2], stride: [usize; 2], dilation: [usize; 2], pad: [usize; 4]) -> bool {
    let [t, b, l, r] = pad;
    fits(kernel, stride, dilation, pad) || fits([kernel[1], kernel[0]], [stride[1], stride[0]], [dilation[1], dilation[0]], [l, r, t, b])
}

/// Whether it beats the packed GEMM for `c` to `co` channels at level `isa`: at AVX-512 (the
/// level it was measured at), with output channels in whole 16-channel panels.
pub fn suits(isa: Isa, c: usize, co: usize) -> bool {
    isa.capped() >= Isa::Avx512 && c >= 16 && co >= 16 && co.is_multiple_of(16)
}

/// The F(m, r) matrices: `at` `[m][alpha]`, `g` `[alpha][r]`, `bt` `[alpha][alpha]`.
#[derive(Clone, Debug)]
struct Transform {
    m: usize,
    r: usize,
    alpha: usize,
    at: Vec<f32>,
    g: Vec<f64>,
    bt: Vec<f32>,
}

impl Transform {
    /// F(4, 3) or F(3, 7).
    fn new(r: usize) -> Transform {
        let (m, pts): (usize, &[f64]) = match r {
            3 => (4, &[0.0, 1.0, -1.0, 2.0, -2.0]),
            _ => (3, &[0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0]),
        };
        let alpha = m + r - 1;
        let (mut at, mut g) = (vec![0f64; m * alpha], vec![0f64; alpha * r]);
        for (j, &p) in pts.iter().enumerate() {
            let norm: f64 = pts.iter().enumerate().filter(|&(l, _)| l != j).map(|(_, &q)| p - q).product();
            for i in 0..m {
                at[i * alpha + j] = p.powi(i as i32);
            }
            for k in 0..r {
                g[j * r + k] = p.powi(k as i32) / norm;
            }
        }
        at[(m - 1) * alpha + alpha - 1] = 1.0;
        g[(alpha - 1) * r + r - 1] = 1.0;
        let bt = solve_bt(&at, &g, m, r, alpha);
        Transform { m, r, alpha, at: at.iter().map(|&v| v as f32).collect(), g, bt: bt.iter().map(|&v| v as f32).collect() }
    }
}

/// `Bᵀ` such that `Σ_ξ Aᵀ[i][ξ] G[ξ][k] Bᵀ[ξ][s] = [s == i + k]` (the correlation), column by
/// column, by least squares on the normal equations (the system is exactly solvable).
fn solve_bt(at: &[f64], g: &[f64], m: usize, r: usize, alpha: usize) -> Vec<f64> {
    // Rows (i, k) of the system, columns ξ.
    let rows: Vec<Vec<f64>> = (0..m * r).map(|ik| (0..alpha).map(|xi| at[(ik / r) * alpha + xi] * g[xi * r + ik % r]).collect()).collect();
    let mut bt = vec![0f64; alpha * alpha];
    for s in 0..alpha {
        // Normal equations [MᵀM | Mᵀ rhs], Gaussian elimination with partial pivoting.
        let mut a = vec![vec![0f64; alpha + 1]; alpha];
        for (ik, row) in rows.iter().enumerate() {
            let rhs = if ik / r + ik % r == s { 1.0 } else { 0.0 };
            for p in 0..alpha {
                for q in 0..alpha {
                    a[p][q] += row[p] * row[q];
                }
                a[p][alpha] += row[p] * rhs;
            }
        }
        for col in 0..alpha {
            let piv = (col..alpha).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs())).unwrap_or(col);
            a.swap(col, piv);
            let pivot = a[col].clone();
            for (row, ar) in a.iter_mut().enumerate() {
                if row != col {
                    let f = ar[col] / pivot[col];
                    ar[col..].iter_mut().zip(&pivot[col..]).for_each(|(v, p)| *v -= f * p);
                }
            }
        }
        for xi in 0..alpha {
            bt[xi * alpha + s] = a[xi][alpha] / a[xi][xi];
        }
    }
    bt
}

/// An `r x 1` conv's weights transformed (`U`, one packed `[co, c]` matrix per point) and its
/// bias.
#[derive(Clone, Debug)]
pub struct Winograd1dWeights {
    /// Output channels.
    pub co: usize,
    /// Input channels.
    pub c: usize,
    t: Transform,
    u: Vec<PackedWeights>,
    bias: Vec<f32>,
}

impl Winograd1dWeights {
    /// The transformed matrices, packed.
    pub(super) fn panels(&self) -> &[PackedWeights] {
        &self.u
    }

    /// Transforms row-major `w` `[co, c, r]` (an `r x 1` or `1 x r` kernel; r = 3 or 7) in f64
    /// and packs it for level `isa`.
    pub fn new(w: &[f32], co: usize, c: usize, r: usize, bias: Option<&[f32]>, isa: Isa) -> Winograd1dWeights {
        assert!(matches!(r, 3 | 7) && w.len() == co * c * r && bias.is_none_or(|b| b.len() == co), "winograd1d weights: bad lengths");
        let t = Transform::new(r);
        let pairs: Vec<Vec<f32>> = w
            .par_chunks_exact(r)
            .map(|gk| (0..t.alpha).map(|xi| (0..r).map(|k| t.g[xi * r + k] * gk[k] as f64).sum::<f64>() as f32).collect())
            .collect();
        let u = (0..t.alpha)
            .into_par_iter()
            .map(|xi| {
                let m: Vec<f32> = pairs.iter().map(|p| p[xi]).collect();
                PackedWeights::new(&m, co, c, None, isa)
            })
            .collect();
        Winograd1dWeights { co, c, t, u, bias: bias.map_or_else(|| vec![0.0; co], <[f32]>::to_vec) }
    }

    /// The kernel height `r`.
    pub fn r(&self) -> usize {
        self.t.r
    }

    /// The level these weights were packed for.
    pub fn isa(&self) -> Isa {
        self.u[0].isa()
    }
}

/// A run of a micro-panel's lanes `l0..l0 + len` whose tiles lie in one tile row: image `b`,
/// tile row `ty`, columns from `x0`.
#[derive(Clone, Copy, Debug)]
struct Seg {
    gi: usize,
    l0: usize,
    len: usize,
    b: usize,
    ty: usize,
    x0: usize,
}

/// The runs of tiles `t0..t1` (`t0` a multiple of 16), micro-panel `gi` counted from `t0`.
fn segments(t0: usize, t1: usize, th: usize, ow: usize) -> Vec<Seg> {
    let mut segs = Vec::new();
    let mut t = t0;
    while t < t1 {
        let (b, rest) = (t / (th * ow), t % (th * ow));
        let (ty, x0) = (rest / ow, rest % ow);
        let (gi, l0) = ((t - t0) / L, (t - t0) % L);
        let len = (ow - x0).min(L - l0).min(t1 - t);
        segs.push(Seg { gi, l0, len, b, ty, x0 });
        t += len;
    }
    segs
}

dispatch! {
    /// `V = Bᵀ d` of the tiles in `segs` for channels `c0..c1` into `v` (`[ξ][gi][c][16]`, `np`
    /// micro-panels; lanes without a tile are zero).
    fn input(src: &Source, g: &Geo, t: &Transform, segs: &[Seg], np: usize, chans: (usize, usize), v: OutPtr) {
        let (m, alpha, c) = (t.m, t.alpha, g.c);
        let (c0, c1) = chans;
        for gi in 0..np {
            let group: Vec<&Seg> = segs.iter().filter(|s| s.gi == gi).collect();
            for ci in c0..c1 {
                let mut d = [[0f32; L]; MAX_ALPHA];
                for s in &group {
                    let plane = src.plane(s.b, ci);
                    for (j, dj) in d.iter_mut().enumerate().take(alpha) {
                        let iy = (s.ty * m + j) as isize - g.pad[0] as isize;
                        if iy >= 0 && (iy as usize) < g.h {
                            let seg = &mut dj[s.l0..s.l0 + s.len];
                            seg.copy_from_slice(&plane[iy as usize * g.w + s.x0..][..s.len]);
                            src.transform(s.b, ci, seg);
                        }
                    }
                }
                for xi in 0..alpha {
                    let mut acc = [0f32; L];
                    for (j, dj) in d.iter().enumerate().take(alpha) {
                        let b = t.bt[xi * alpha + j];
                        if b != 0.0 {
                            acc.iter_mut().zip(dj).for_each(|(a, &x)| *a = mad::<FMA>(b, x, *a));
                        }
                    }
                    // SAFETY: lanes (ξ, gi, ci) of this block's buffer, written by this call only.
                    unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), v.at(((xi * np + gi) * c + ci) * L), L) };
                }
            }
        }
    }
}

/// Where the output transform writes: the output, its shape and the fused epilogue.
struct Sink<'a> {
    out: OutPtr,
    co: usize,
    oh: usize,
    ow: usize,
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
    act: Option<Activation>,
}

dispatch! {
    /// `y = Aᵀ M + bias` for output channels `r0..r1` of the tiles in `segs` (`m`: `[ξ][row][ldc]`
    /// from channel `row0`, `msz` floats per ξ), then residual and activation, into the output.
    fn output(t: &Transform, m: &[f32], msz: usize, ldc: usize, row0: usize, rows: (usize, usize), segs: &[Seg], sink: &Sink) {
        let (mm, alpha) = (t.m, t.alpha);
        let (r0, r1) = rows;
        for s in segs {
            for r in r0..r1 {
                let mut y = [[sink.bias[r]; L]; MAX_M];
                for (i, yi) in y.iter_mut().enumerate().take(mm) {
                    for xi in 0..alpha {
                        let a = t.at[i * alpha + xi];
                        if a != 0.0 {
                            let mv = &m[xi * msz + (r - row0) * ldc + s.gi * L..][..L];
                            yi.iter_mut().zip(mv).for_each(|(o, &v)| *o = mad::<FMA>(a, v, *o));
                        }
                    }
                }
                for (i, yi) in y.iter().enumerate().take(mm) {
                    let oy = s.ty * mm + i;
                    if oy >= sink.oh {
                        break;
                    }
                    let at = ((s.b * sink.co + r) * sink.oh + oy) * sink.ow + s.x0;
                    // SAFETY: outputs of this task's tiles and channels, written by it alone.
                    let dst = unsafe { std::slice::from_raw_parts_mut(sink.out.at(at), s.len) };
                    dst.copy_from_slice(&yi[s.l0..s.l0 + s.len]);
                    if let Some(res) = sink.residual {
                        dst.iter_mut().zip(&res[at..at + s.len]).for_each(|(d, &v)| *d += v);
                    }
                    if let Some(a) = sink.act {
                        act_slice::<FMA, W512>(a, dst);
                    }
                }
            }
        }
    }
}

thread_local! {
    static V: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static M: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One conv call's plan and shared state.
struct Job<'a> {
    src: &'a Source<'a>,
    g: &'a Geo,
    ww: &'a Winograd1dWeights,
    /// Tile rows per image.
    th: usize,
    total: usize,
    /// Tiles per block (a multiple of 16) and blocks.
    cb: usize,
    blocks: usize,
    /// Output-channel panels per chunk, chunks per block.
    per_chunk: usize,
    chunks: usize,
    sink: Sink<'a>,
}

impl Job<'_> {
    /// Tiles `t0..t1` of block `bi`.
    fn block(&self, bi: usize) -> (usize, usize) {
        (bi * self.cb, ((bi + 1) * self.cb).min(self.total))
    }

    /// Floats of one block's transformed input.
    fn vsize(&self) -> usize {
        self.ww.t.alpha * (self.cb / L) * self.ww.c * L
    }

    /// Transforms every block's input once, in parallel over blocks and channel pieces.
    fn transform_all(&self) -> Vec<f32> {
        let bsz = self.vsize();
        // Every lane of every block's panels is written (zero past the block's tiles).
        let mut v = uninit_vec(self.blocks * bsz);
        let vp = OutPtr(v.as_mut_ptr());
        let c = self.ww.c;
        let (per, pieces) = input_pieces(c, self.blocks);
        (0..self.blocks * pieces).into_par_iter().with_max_len(1).for_each(|t| {
            let (bi, pc) = (t / pieces, t % pieces);
            let (t0, t1) = self.block(bi);
            let segs = segments(t0, t1, self.th, self.g.ow);
            input(self.ww.isa(), self.src, self.g, &self.ww.t, &segs, self.cb / L, (pc * per, ((pc + 1) * per).min(c)), OutPtr(vp.at(bi * bsz)));
        });
        v
    }

    /// Task `task`: one block for one chunk of output-channel panels.
    fn run(&self, task: usize, shared: Option<&[f32]>) {
        let (bi, mc) = (task / self.chunks, task % self.chunks);
        let bsz = self.vsize();
        match shared {
            Some(v) => self.gemms(bi, mc, &v[bi * bsz..][..bsz]),
            None => V.with(|v| {
                let mut v = v.borrow_mut();
                if v.len() < bsz {
                    // Written whole by the transform just below.
                    *v = uninit_vec(bsz);
                }
                let (t0, t1) = self.block(bi);
                let segs = segments(t0, t1, self.th, self.g.ow);
                input(self.ww.isa(), self.src, self.g, &self.ww.t, &segs, self.cb / L, (0, self.ww.c), OutPtr(v.as_mut_ptr()));
                self.gemms(bi, mc, &v[..bsz]);
            }),
        }
    }

    /// The `alpha` GEMMs of block `bi` (operands `v`) and output-channel chunk `mc`, per group
    /// of panels, each followed by the output transform.
    fn gemms(&self, bi: usize, mc: usize, v: &[f32]) {
        let (ww, t) = (self.ww, &self.ww.t);
        let (t0, t1) = self.block(bi);
        let np = self.cb / L;
        let (ldc, mr, c) = (np * L, ww.u[0].mr, ww.c);
        let (mlo, mhi) = (mc * self.per_chunk, ((mc + 1) * self.per_chunk).min(ww.co.div_ceil(mr)));
        let group = (M_BUDGET / (t.alpha * mr * ldc)).max(1);
        let segs = segments(t0, t1, self.th, self.g.ow);
        M.with(|m| {
            let mut m = m.borrow_mut();
            let msz = group.min(mhi - mlo) * mr * ldc;
            if m.len() < t.alpha * msz {
                // The GEMMs write every micro-tile the output transform reads.
                *m = uninit_vec(t.alpha * msz);
            }
            let mut gl = mlo;
            while gl < mhi {
                let gh = (gl + group).min(mhi);
                for (xi, pw) in ww.u.iter().enumerate() {
                    let mut k0 = 0;
                    while k0 < c {
                        let kcl = pw.kc.min(c - k0);
                        let rows = |jp: usize| Packed(v[((xi * np + jp) * c + k0) * L..].as_ptr(), L);
                        // SAFETY: the buffer holds (gh - gl) full panels of `ldc = np * 16`
                        // columns for point ξ; `rows` gives kcl rows of 16 floats of this
                        // block's operand; the weights were packed (16x16) for a level this CPU has.
                        unsafe { run_kblock(pw, k0, kcl, rows, m[xi * msz..].as_mut_ptr(), ldc, t1 - t0, gl, gh, false, Finish::NONE) };
                        k0 += kcl;
                    }
                }
                let rows = (gl * mr, (gh * mr).min(ww.co));
                output(ww.isa(), t, &m, msz, ldc, gl * mr, rows, &segs, &self.sink);
                gl = gh;
            }
        });
    }
}

/// `r x 1` stride-1 convolution of `n` images through Winograd F(m, r) along the height:
/// returns `[n, co, oh, ow]` with bias, then `+ residual` (same shape as the output) and `act`.
pub fn conv(input: &ConvInput, ww: &Winograd1dWeights, n: usize, g: &Geo, residual: Option<&[f32]>, act: Option<Activation>) -> Vec<f32> {
    assert!(fits([g.kh, g.kw], g.stride, g.dil, g.pad) && g.kh == ww.r() && g.c == ww.c && ww.u[0].nr == L, "winograd1d conv: geometry");
    let src = Source::new(input, n, g, ww.isa());
    let total_out = n * ww.co * g.oh * g.ow;
    assert!(residual.is_none_or(|r| r.len() == total_out), "winograd1d conv: residual length");
    // Every output belongs to one tile and is written by the tasks of that tile's block.
    let mut out = uninit_vec(total_out);
    let th = g.oh.div_ceil(ww.t.m);
    let total = n * th * g.ow;
    let cb_max = (V_BUDGET / (ww.t.alpha * ww.c.max(1)) / L * L).clamp(L, 64);
    let cb = total.div_ceil(total.div_ceil(cb_max).max(1)).next_multiple_of(L);
    let blocks = total.div_ceil(cb);
    let (per_chunk, chunks) = channel_chunks(blocks, ww.co.div_ceil(ww.u[0].mr));
    let sink = Sink { out: OutPtr(out.as_mut_ptr()), co: ww.co, oh: g.oh, ow: g.ow, bias: &ww.bias, residual, act };
    let job = Job { src: &src, g, ww, th, total, cb, blocks, per_chunk, chunks, sink };
    let shared = (job.chunks > 1).then(|| job.transform_all());
    (0..job.blocks * job.chunks).into_par_iter().with_max_len(1).for_each(|t| job.run(t, shared.as_deref()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transforms compute the correlation exactly (up to rounding in f64).
    #[test]
    fn transforms_compute_the_correlation() {
        for r in [3, 7] {
            let t = Transform::new(r);
            let d: Vec<f64> = (0..t.alpha).map(|i| (0.7 * i as f64 + 0.3).sin()).collect();
            let gk: Vec<f64> = (0..r).map(|k| (1.3 * k as f64).cos()).collect();
            let u: Vec<f64> = (0..t.alpha).map(|xi| (0..r).map(|k| t.g[xi * r + k] * gk[k]).sum()).collect();
            let v: Vec<f64> = (0..t.alpha).map(|xi| (0..t.alpha).map(|j| t.bt[xi * t.alpha + j] as f64 * d[j]).sum()).collect();
            for i in 0..t.m {
                let y: f64 = (0..t.alpha).map(|xi| t.at[i * t.alpha + xi] as f64 * u[xi] * v[xi]).sum();
                let want: f64 = (0..r).map(|k| gk[k] * d[i + k]).sum();
                assert!((y - want).abs() < 1e-5, "F({}, {r}) output {i}: {y} vs {want}", t.m);
            }
        }
    }
}
