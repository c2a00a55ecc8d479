//! 1x1 convs on 1x1 maps (squeeze-excitation's two layers): per image, a matrix-vector
//! product over the packed weight panels. The packed GEMM pads the single column to a whole
//! micro-panel and packs it once per channel chunk: EfficientNet-B0's 672->28 took 31 µs
//! there, 20 times its arithmetic.

use super::cols::ConvInput;
use super::packed::PackedWeights;
use super::{uninit_vec, Geo, Isa};
use crate::kernels::cpu::{self, dispatch, mad};
use rayon::prelude::*;
use tlc_compiler::ir::Activation;

/// Multiply-adds above which the panels are split over the threads (below, a parallel loop's
/// start and join cost more than it saves).
const PARALLEL_MADS: usize = 1 << 15;

/// Whether [`conv`] runs this geometry: a 1x1 kernel, unpadded, on a 1x1 map.
pub(super) fn fits(g: &Geo) -> bool {
    (g.h, g.w, g.kh, g.kw) == (1, 1, 1, 1) && g.pad == [0; 4]
}

/// `act(W x + bias + residual)` for each of the `n` images of `input` (`[n, c, 1, 1]` in
/// parts, with its prologue and gate); returns `[n, co]`.
pub(super) fn conv(input: &ConvInput, pw: &PackedWeights, n: usize, residual: Option<&[f32]>, act: Option<Activation>) -> Vec<f32> {
    let (c, isa) = (pw.k, pw.isa);
    let xs = gather(input, n, c, isa);
    let mut out = uninit_vec(n * pw.co);
    let mpanels = pw.co.div_ceil(pw.mr);
    // Chunks of whole panels (every output row is written by the chunk holding its panel).
    let chunk_panels = match n * mpanels * pw.mr * c >= PARALLEL_MADS {
        true => mpanels.div_ceil(rayon::current_num_threads() * 2).max(1),
        false => mpanels,
    };
    let rows_per_chunk = chunk_panels * pw.mr;
    // Output rows of each image form one `[co]` vector; a chunk owns rows `m0..m1` of every
    // image, so it writes through a raw pointer (disjoint rows).
    let out_ptr = super::OutPtr(out.as_mut_ptr());
    let run = |ci: usize| {
        let (mlo, mhi) = (ci * chunk_panels, ((ci + 1) * chunk_panels).min(mpanels));
        products(isa, pw, &xs, n, mlo, mhi, out_ptr);
    };
    let chunks = pw.co.div_ceil(rows_per_chunk);
    if chunks > 1 {
        (0..chunks).into_par_iter().with_max_len(1).for_each(run);
    } else {
        run(0);
    }
    match residual {
        Some(r) => cpu::add_act_inplace(isa, &mut out, r, act),
        None => {
            if let Some(a) = act {
                cpu::act(isa, a, &mut out);
            }
        }
    }
    out
}

/// Every image's input vector (`[n, c]`) with the prologue applied: parts in order, then
/// `act(x * scale + shift)`, then the gate.
fn gather(input: &ConvInput, n: usize, c: usize, isa: Isa) -> Vec<f32> {
    let mut xs = Vec::with_capacity(n * c);
    for b in 0..n {
        for (data, ci) in &input.parts {
            xs.extend_from_slice(&data[b * ci..(b + 1) * ci]);
        }
    }
    if let Some(a) = input.affine {
        for x in xs.chunks_exact_mut(c) {
            x.iter_mut().zip(a.scale.iter().zip(a.shift)).for_each(|(v, (s, t))| *v = *v * s + t);
            if let Some(act) = a.act {
                cpu::act(isa, act, x);
            }
        }
    }
    if let Some(gate) = input.gate {
        xs.iter_mut().zip(gate).for_each(|(v, g)| *v *= g);
    }
    xs
}

dispatch! {
    /// Output rows of panels `mlo..mhi` for every image: `out[b * co + m] = bias[m] + w[m] · x_b`.
    fn products(pw: &PackedWeights, xs: &[f32], n: usize, mlo: usize, mhi: usize, out: super::OutPtr) {
        match pw.mr {
            16 => panels::<16, FMA>(pw, xs, n, mlo, mhi, out),
            8 => panels::<8, FMA>(pw, xs, n, mlo, mhi, out),
            6 => panels::<6, FMA>(pw, xs, n, mlo, mhi, out),
            4 => panels::<4, FMA>(pw, xs, n, mlo, mhi, out),
            mr => unreachable!("matvec: no conv micro-kernel has {mr} rows"),
        }
    }
}

/// [`products`] for panels of `MR` rows: each panel's k-blocks are walked once per image while
/// they sit in L1, with four partial sums (k modulo 4) to hide the FMA latency.
#[inline(always)]
fn panels<const MR: usize, const FMA: bool>(pw: &PackedWeights, xs: &[f32], n: usize, mlo: usize, mhi: usize, out: super::OutPtr) {
    let (k, co) = (pw.k, pw.co);
    for mp in mlo..mhi {
        for b in 0..n {
            let x = &xs[b * k..(b + 1) * k];
            let (mut a0, mut a1, mut a2, mut a3) = ([0f32; MR], [0f32; MR], [0f32; MR], [0f32; MR]);
            let mut k0 = 0;
            while k0 < k {
                let kcl = pw.kc.min(k - k0);
                let (panel, xk) = (pw.panel(k0, kcl, mp), &x[k0..k0 + kcl]);
                let (w4, x4) = (panel.chunks_exact(4 * MR), xk.chunks_exact(4));
                let (wt, xt) = (w4.remainder(), x4.remainder());
                for (w, x) in w4.zip(x4) {
                    for r in 0..MR {
                        a0[r] = mad::<FMA>(w[r], x[0], a0[r]);
                        a1[r] = mad::<FMA>(w[MR + r], x[1], a1[r]);
                        a2[r] = mad::<FMA>(w[2 * MR + r], x[2], a2[r]);
                        a3[r] = mad::<FMA>(w[3 * MR + r], x[3], a3[r]);
                    }
                }
                for (w, &x) in wt.chunks_exact(MR).zip(xt) {
                    for r in 0..MR {
                        a0[r] = mad::<FMA>(w[r], x, a0[r]);
                    }
                }
                k0 += kcl;
            }
            let row = mp * MR;
            for r in 0..MR.min(co - row) {
                let v = pw.bias[row + r] + (a0[r] + a1[r]) + (a2[r] + a3[r]);
                // SAFETY: row `row + r < co` of image `b`, inside the `[n, co]` output; panel
                // `mp` belongs to this call's chunk alone.
                unsafe { *out.at(b * co + row + r) = v };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::fast::cols::Affine;

    #[test]
    fn matches_a_naive_product_at_every_level_with_prologue_and_residual() {
        // (n, c in two parts, co): every panel height's tails, k-blocks of 256 and a remainder
        // of k modulo 4, and one call above PARALLEL_MADS.
        for &(n, c1, c2, co) in &[(1, 672, 0, 28), (1, 28, 0, 672), (8, 40, 7, 20), (3, 5, 0, 3), (2, 1024, 300, 300)] {
            let c = c1 + c2;
            let x1: Vec<f32> = (0..n * c1).map(|i| (0.37 * i as f32 + 0.1).sin()).collect();
            let x2: Vec<f32> = (0..n * c2).map(|i| (0.29 * i as f32 + 0.4).cos()).collect();
            let w: Vec<f32> = (0..co * c).map(|i| (0.53 * i as f32 + 0.2).cos() * 0.1).collect();
            let bias: Vec<f32> = (0..co).map(|i| i as f32 * 0.01 - 0.2).collect();
            let (scale, shift): (Vec<f32>, Vec<f32>) = (0..c).map(|i| (1.0 + 0.01 * i as f32, 0.05 - 0.001 * i as f32)).unzip();
            let gate: Vec<f32> = (0..n * c).map(|i| 0.5 + (0.11 * i as f32).sin() * 0.4).collect();
            let res: Vec<f32> = (0..n * co).map(|i| (0.07 * i as f32).cos()).collect();
            let want: Vec<f32> = (0..n * co)
                .map(|i| {
                    let (b, m) = (i / co, i % co);
                    let s: f64 = (0..c)
                        .map(|ch| {
                            let v = if ch < c1 { x1[b * c1 + ch] } else { x2[b * c2 + ch - c1] };
                            let v = (v * scale[ch] + shift[ch]).max(0.0) * gate[b * c + ch];
                            v as f64 * w[m * c + ch] as f64
                        })
                        .sum();
                    (s + bias[m] as f64 + res[i] as f64).max(0.0) as f32
                })
                .collect();
            let affine = Some(Affine { scale: &scale, shift: &shift, act: Some(Activation::Relu) });
            let input = ConvInput { parts: vec![(&x1[..], c1), (&x2[..], c2)], affine, gate: Some(&gate) };
            for isa in Isa::all_available() {
                let pw = PackedWeights::new(&w, co, c, Some(&bias), isa);
                let got = conv(&input, &pw, n, Some(&res), Some(Activation::Relu));
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-4, "{isa:?} n{n} {c}->{co}: {worst}");
            }
        }
    }
}
