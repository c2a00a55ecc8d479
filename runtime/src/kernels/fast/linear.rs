//! Linear layers (`x @ w^T + b` on the last dim) on the GEMM micro-kernels: the weights are
//! packed once as the B operand (panels of NR output features, [`PackedWeights::new_linear`]),
//! rows of `x` are packed once per call into MR-row panels (the A operand, shared by every
//! output chunk), and each C micro-tile is a block of the row-major output, so no transpose is
//! needed. Tasks are (row block, output chunk) pairs; a task walks the k-blocks outermost,
//! accumulating its tiles in a contiguous buffer, so that one k-block of its rows, of its
//! weights and the buffer stay in L2 however long `in` is, then takes bias and activation.

use super::micro::{micro, Finish, Packed};
use super::packed::PackedWeights;
use super::{threads, uninit_vec, with_f32, OutPtr};
use candle_core::{Device, Result, Tensor};
use crate::kernels::cpu;
use rayon::prelude::*;
use tlc_compiler::ir::Activation;

/// Floats of one k-block of packed `x` rows a task aims to keep (in L2): every row block
/// streams all the weights once more, so blocks are as tall as this allows (ViT-B/16's 197
/// tokens: one block at batch 1).
const A_BUDGET: usize = 192 * 1024;
/// Most weight panels (NR features each) per task: its k-block of weights and its
/// accumulators stay in L2 beside the rows.
const PANELS_MAX: usize = 4;

/// `act(x @ w^T + b)` for `rows` rows of `x` (`[rows, in]` row-major) and weights packed with
/// [`PackedWeights::new_linear`]; returns `[rows, out]`.
pub fn linear(x: &[f32], rows: usize, pw: &PackedWeights, act: Option<Activation>) -> Vec<f32> {
    let (inf, outf) = (pw.k, pw.co);
    assert!(x.len() >= rows * inf, "linear: input too short");
    let (mr, nr) = pw.micro.shape();
    let npanels = outf.div_ceil(nr);
    let rblocks = rows.div_ceil((A_BUDGET / pw.kc.min(inf).max(1)).max(mr));
    let rb_rows = rows.div_ceil(rblocks.max(1)).next_multiple_of(mr);
    let rblocks = rows.div_ceil(rb_rows);
    let nsplit = (4 * threads()).div_ceil(rblocks).clamp(npanels.div_ceil(PANELS_MAX), npanels.max(1));
    let per = npanels.div_ceil(nsplit);
    let nsplit = npanels.div_ceil(per);
    let apack = pack_all_rows(x, rows, rb_rows, pw);
    // Every element is written by the task that owns it.
    let mut out = uninit_vec(rows * outf);
    let optr = OutPtr(out.as_mut_ptr());
    (0..rblocks * nsplit).into_par_iter().with_max_len(1).for_each(|t| {
        let (rb, chunk) = (t / nsplit, t % nsplit);
        let (r0, r1) = (rb * rb_rows, ((rb + 1) * rb_rows).min(rows));
        let (p0, p1) = (chunk * per, ((chunk + 1) * per).min(npanels));
        let panels = (r1 - r0).div_ceil(mr);
        let a = &apack[rb * rb_rows * inf..][..panels * mr * inf];
        let acc = accumulate(pw, a, panels, p0..p1);
        for (i, tile) in acc.chunks_exact(mr * nr).enumerate() {
            let (np, pi) = (p0 + i / panels, i % panels);
            let (row, col) = (r0 + pi * mr, np * nr);
            let (nrows, ncols) = (mr.min(r1 - row), nr.min(outf - col));
            // SAFETY: rows row..row+nrows, columns col..col+ncols belong to this task.
            unsafe { finish_tile(pw, tile, np, optr.at(row * outf + col), outf, nrows, ncols, act) };
        }
    });
    out
}

/// The products of a row block's packed panels (`a`, `panels` of them) with weight panels
/// `nps`, k-block by k-block: tile `(np, pi)` at `((np - nps.start) * panels + pi) * MR * NR`,
/// rows NR apart (contiguous, where the output's rows, often a multiple of 4 KiB apart, would
/// put a tile's rows in one cache set).
fn accumulate(pw: &PackedWeights, a: &[f32], panels: usize, nps: std::ops::Range<usize>) -> Vec<f32> {
    let (mr, nr) = pw.micro.shape();
    // Every tile's first k-block starts it from zero.
    let mut acc = uninit_vec(nps.len() * panels * mr * nr);
    let zero = [0f32; 32];
    let mut k0 = 0;
    while k0 < pw.k {
        let kcl = pw.kc.min(pw.k - k0);
        let init = (k0 == 0).then_some(&zero[..]);
        for (j, np) in nps.clone().enumerate() {
            let bp = Packed(pw.panel(k0, kcl, np).as_ptr(), nr);
            for pi in 0..panels {
                let ap = a[k0 * panels * mr + pi * kcl * mr..][..kcl * mr].as_ptr();
                let c = acc[(j * panels + pi) * mr * nr..][..mr * nr].as_mut_ptr();
                // SAFETY: `ap` holds kcl x MR floats, the panel kcl x NR, `c` MR x NR; the
                // weights were packed for this CPU's level.
                unsafe { micro(pw.micro, kcl, ap, bp, c, nr, init, Finish::NONE) };
            }
        }
        k0 += kcl;
    }
    acc
}

/// The rows of `x` packed once for every output chunk: row block `rb` (`rb_rows` rows) at
/// `rb * rb_rows * in`, its k-block `k0` at `k0 * panels * MR` within, as [`pack_rows`] lays
/// it out; in parallel over (row block, k-block). (Packing them per task packed them once per
/// output chunk: 10 % of ViT-B/16's time.)
fn pack_all_rows(x: &[f32], rows: usize, rb_rows: usize, pw: &PackedWeights) -> Vec<f32> {
    let (inf, mr) = (pw.k, pw.micro.shape().0);
    let kblocks: Vec<(usize, usize)> = (0..inf).step_by(pw.kc.max(1)).map(|k0| (k0, pw.kc.min(inf - k0))).collect();
    // Each row block's packed panels (zero rows past its end included) are written below; the
    // rest of its stride is never read.
    let mut apack = uninit_vec(rows.div_ceil(rb_rows) * rb_rows * inf);
    let aptr = OutPtr(apack.as_mut_ptr());
    (0..rows.div_ceil(rb_rows) * kblocks.len()).into_par_iter().with_max_len(1).for_each(|t| {
        let (rb, (k0, kcl)) = (t / kblocks.len(), kblocks[t % kblocks.len()]);
        let (r0, r1) = (rb * rb_rows, ((rb + 1) * rb_rows).min(rows));
        let panels = (r1 - r0).div_ceil(mr);
        // SAFETY: k-block k0 of row block rb: `kcl * panels * mr` floats inside the block's
        // stride (`panels * mr <= rb_rows`), written by this task alone.
        let dst = unsafe { std::slice::from_raw_parts_mut(aptr.at(rb * rb_rows * inf + k0 * panels * mr), kcl * panels * mr) };
        pack_rows(pw.isa, x, inf, r0, r1, k0, kcl, mr, dst);
    });
    apack
}

/// One accumulated tile (`MR x NR`, rows NR apart): bias, activation and the copy out.
///
/// # Safety
/// `c` addresses `nrows` rows of `ncols` floats, `ldc` apart, that this caller alone writes.
#[allow(clippy::too_many_arguments)]
unsafe fn finish_tile(pw: &PackedWeights, tile: &[f32], np: usize, c: *mut f32, ldc: usize, nrows: usize, ncols: usize, act: Option<Activation>) {
    let nr = pw.micro.shape().1;
    let bias = &pw.bias[np * nr..][..nr];
    let mut buf = [0f32; 16 * 32];
    let buf = &mut buf[..nrows * nr];
    for (dst, src) in buf.chunks_exact_mut(nr).zip(tile.chunks_exact(nr)) {
        dst.iter_mut().zip(src).zip(bias).for_each(|((d, s), b)| *d = s + b);
    }
    // One call for the whole tile (per row, the call and its remainder loop cost more than
    // GELU's arithmetic); columns past `ncols` are computed and dropped.
    if let Some(f) = act {
        cpu::act(pw.isa, f, buf);
    }
    for (r, row) in buf.chunks_exact(nr).enumerate() {
        std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(r * ldc), ncols);
    }
}

/// [`linear`] on a tensor (`[.., in]`, contiguous f32 on the CPU): `Ok(None)` when it does
/// not apply.
pub fn linear_tensor(x: &Tensor, pw: &PackedWeights, act: Option<Activation>) -> Result<Option<Tensor>> {
    let dims = x.dims().to_vec();
    if dims.last() != Some(&pw.k) {
        return Ok(None);
    }
    let rows = x.elem_count() / pw.k.max(1);
    let Some(out) = with_f32(x, |v| linear(v, rows, pw, act)) else { return Ok(None) };
    let mut shape = dims;
    if let Some(last) = shape.last_mut() {
        *last = pw.co;
    }
    Ok(Some(Tensor::from_vec(out, shape, &Device::Cpu)?))
}

cpu::dispatch! {
    /// Rows `r0..r1`, columns `k0..k0+kcl` of `x` (`inf` wide) as panels `[kk][mr]` of `mr`
    /// rows each (rows past `r1` zero).
    fn pack_rows(x: &[f32], inf: usize, r0: usize, r1: usize, k0: usize, kcl: usize, mr: usize, dst: &mut [f32]) {
        for (pi, panel) in dst.chunks_exact_mut(kcl * mr).enumerate() {
            for r in 0..mr {
                let row = r0 + pi * mr + r;
                if row < r1 {
                    let src = &x[row * inf + k0..][..kcl];
                    for (kk, &v) in src.iter().enumerate() {
                        panel[kk * mr + r] = v;
                    }
                } else {
                    for kk in 0..kcl {
                        panel[kk * mr + r] = 0.0;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Isa;
    use super::*;

    #[test]
    fn matches_a_naive_product_at_every_level() {
        // (130, 3072, 24): twelve k-blocks; (1000, 600, 200): two row blocks (504 and 496 rows),
        // k-blocks of 200, several output chunks.
        for &(rows, inf, outf) in &[(1, 5, 3), (197, 40, 70), (70, 300, 33), (16, 16, 16), (130, 3072, 24), (1000, 600, 200)] {
            let x: Vec<f32> = (0..rows * inf).map(|i| (0.37 * i as f32 + 0.1).sin()).collect();
            let w: Vec<f32> = (0..outf * inf).map(|i| (0.53 * i as f32 + 0.2).cos() * 0.3).collect();
            let b: Vec<f32> = (0..outf).map(|i| i as f32 * 0.01 - 0.2).collect();
            let want: Vec<f32> = (0..rows * outf)
                .map(|i| {
                    let (r, o) = (i / outf, i % outf);
                    let s: f64 = (0..inf).map(|k| x[r * inf + k] as f64 * w[o * inf + k] as f64).sum();
                    ((s + b[o] as f64).max(0.0)) as f32
                })
                .collect();
            for isa in Isa::all_available() {
                let pw = PackedWeights::new_linear(&w, outf, inf, Some(&b), isa);
                let got = linear(&x, rows, &pw, Some(Activation::Relu));
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-4, "{isa:?} {rows}x{inf}x{outf}: {worst}");
            }
        }
    }
}
