//! The fast kernels against the portable candle-based ones, at every level this CPU has.

use super::packed::{Affine, PackedWeights};
use super::*;
use crate::kernels::testutil::*;
use candle_core::Device;

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn fast_conv_matches_portable() {
    // (x shape, w shape, stride, pad, dilation, groups)
    // (x shape, w shape, stride, pad, dilation, groups)
    type Case = ([usize; 4], [usize; 4], [usize; 2], [usize; 4], [usize; 2], usize);
    let cases: &[Case] = &[
        ([1, 8, 9, 9], [6, 8, 3, 3], [1, 1], [1; 4], [1, 1], 1),
        ([2, 8, 9, 10], [6, 8, 3, 3], [2, 2], [1; 4], [1, 1], 1),
        ([1, 8, 9, 9], [6, 8, 1, 1], [1, 1], [0; 4], [1, 1], 1),
        ([1, 8, 9, 9], [6, 8, 1, 1], [2, 2], [0; 4], [1, 1], 1),
        ([1, 3, 15, 15], [4, 3, 7, 7], [2, 2], [3; 4], [1, 1], 1),
        ([1, 4, 6, 6], [4, 2, 3, 3], [2, 3], [0, 1, 1, 2], [1, 1], 2),
        ([1, 2, 7, 7], [2, 2, 3, 3], [1, 1], [2, 2, 1, 1], [2, 1], 1),
        ([1, 2, 5, 6], [3, 2, 1, 7], [2, 1], [0, 0, 3, 3], [1, 1], 1),
        // Stride 1 on the padded grid: planes smaller than a tile, dilation, asymmetric padding.
        ([2, 8, 4, 4], [16, 8, 3, 3], [1, 1], [1; 4], [1, 1], 1),
        ([1, 3, 9, 11], [5, 3, 3, 3], [1, 1], [2; 4], [2, 2], 1),
        ([1, 4, 20, 17], [7, 4, 5, 3], [1, 1], [2, 1, 0, 2], [1, 1], 1),
        ([2, 5, 9, 9], [5, 1, 3, 3], [1, 1], [1; 4], [1, 1], 5),
        ([1, 5, 10, 9], [5, 1, 3, 3], [2, 2], [0, 1, 0, 1], [1, 1], 5),
        ([1, 5, 11, 11], [5, 1, 5, 5], [2, 2], [2; 4], [1, 1], 5),
        ([1, 3, 7, 7], [3, 1, 3, 3], [1, 1], [2; 4], [2, 2], 3),
        ([1, 4, 7, 7], [4, 1, 7, 7], [1, 1], [3; 4], [1, 1], 4),
        // Depthwise on small maps with channels in the lanes: whole and partial blocks of 16,
        // rows of more than 16 positions, stride 2, 7x7 kernels.
        ([2, 40, 7, 7], [40, 1, 3, 3], [1, 1], [1; 4], [1, 1], 40),
        ([1, 20, 27, 19], [20, 1, 5, 5], [2, 2], [2, 1, 2, 0], [1, 1], 20),
        ([1, 33, 14, 14], [33, 1, 7, 7], [1, 1], [3; 4], [1, 1], 33),
        // Depthwise in blocks of 16 channels (AVX-512, outputs at most 8 wide).
        ([2, 32, 7, 7], [32, 1, 3, 3], [1, 1], [1; 4], [1, 1], 32),
        ([1, 16, 14, 14], [16, 1, 5, 5], [2, 2], [1, 2, 1, 2], [1, 1], 16),
        // 1x1 convs whose last micro-panel has 1-4 columns, read in place (49 = 3 x 16 + 1,
        // 196 = 12 x 16 + 4), with several k-blocks of a length not a multiple of 4.
        ([1, 24, 7, 7], [32, 24, 1, 1], [1, 1], [0; 4], [1, 1], 1),
        ([2, 20, 14, 14], [16, 20, 1, 1], [1, 1], [0; 4], [1, 1], 1),
        ([1, 300, 7, 7], [32, 300, 1, 1], [1, 1], [0; 4], [1, 1], 1),
        // More output channels than positions: one tile, channel chunks only (a partial last
        // weight panel, several k-blocks, a batch, a padded-grid 3x3).
        ([1, 300, 7, 7], [200, 300, 1, 1], [1, 1], [0; 4], [1, 1], 1),
        ([2, 64, 5, 5], [72, 64, 1, 1], [1, 1], [0; 4], [1, 1], 1),
        ([2, 24, 3, 3], [80, 24, 3, 3], [1, 1], [1; 4], [1, 1], 1),
        // 3x3 convs on 7x7 and 8x8 maps with enough output channels for im2col panels
        // (`PACK_COST`) rather than the padded grid.
        ([2, 16, 7, 7], [160, 16, 3, 3], [1, 1], [1; 4], [1, 1], 1),
        ([1, 8, 8, 8], [200, 8, 3, 3], [1, 1], [1; 4], [1, 1], 1),
        // Several k-blocks (K = 360): a fused clamp applies on the last one only.
        ([1, 40, 6, 6], [16, 40, 3, 3], [1, 1], [1; 4], [1, 1], 1),
        // Few input channels and 16k outputs (the direct stem kernel with AVX-512): rows of
        // several 16-position units with a tail, a batch, "same" padding, stride 1, 8-wide
        // and non-square kernels.
        ([1, 3, 15, 15], [16, 3, 7, 7], [2, 2], [3; 4], [1, 1], 1),
        ([2, 3, 23, 37], [32, 3, 3, 3], [2, 2], [1; 4], [1, 1], 1),
        ([1, 3, 17, 17], [16, 3, 3, 3], [2, 2], [0, 1, 0, 1], [1, 1], 1),
        ([1, 3, 20, 45], [16, 3, 3, 3], [1, 1], [1; 4], [1, 1], 1),
        ([1, 1, 12, 40], [16, 1, 8, 8], [2, 2], [3; 4], [1, 1], 1),
        ([1, 2, 6, 50], [16, 2, 2, 4], [1, 1], [0, 1, 1, 2], [1, 1], 1),
        // 1 x k at stride 1 (run as k x 1 on transposed planes), asymmetric padding.
        ([2, 6, 17, 17], [16, 6, 1, 7], [1, 1], [0, 0, 3, 3], [1, 1], 1),
        ([1, 3, 6, 8], [5, 3, 1, 3], [1, 1], [1, 0, 2, 1], [1, 1], 1),
    ];
    for (xs, wsh, s, p, d, g) in cases {
        let x = sin_input(xs);
        let w = cos_input(wsh, 0.3);
        let b = cos_input(&[wsh[0]], 0.1);
        for act in [None, Some(Activation::Relu), Some(Activation::Relu6), Some(Activation::Silu)] {
            // Scaled so that ReLU6 clips at both ends.
            let want = (crate::kernels::conv2d(&x, &w, Some(&b), *s, *p, *d, *g).unwrap() * 8.0).unwrap();
            let want = match act {
                None => want,
                Some(Activation::Relu) => want.relu().unwrap(),
                Some(Activation::Relu6) => want.clamp(0f32, 6f32).unwrap(),
                _ => want.silu().unwrap(),
            };
            let w = (&w * 8.0).unwrap();
            let b = (&b * 8.0).unwrap();
            for isa in Isa::all_available() {
                let got = conv2d(&x, &w, Some(&b), *s, *p, *d, *g, act, isa).unwrap().expect("fast path applies");
                assert_eq!(got.dims(), want.dims(), "{xs:?} {wsh:?}");
                assert!(max_diff(&got, &want) < 1e-4, "{isa:?} {xs:?} {wsh:?} {s:?} {p:?} {d:?} {g}: {}", max_diff(&got, &want));
            }
        }
    }
}

#[test]
fn linear_of_few_rows_streams_the_weights() {
    // Rows up to GEMV_ROWS take the matrix-vector path: odd lengths, several row blocks.
    for rows in 1..=3 {
        let x = sin_input(&[rows, 37]);
        let w = cos_input(&[300, 37], 0.3);
        let b = cos_input(&[300], 0.1);
        let want = crate::exec::linear(&x, &w, Some(&b)).unwrap().relu().unwrap();
        for isa in Isa::all_available() {
            let got = linear(&x, &w, Some(&b), Some(Activation::Relu), isa).unwrap().unwrap();
            assert!(max_diff(&got, &want) < 1e-5, "{rows} rows, {isa:?}: {}", max_diff(&got, &want));
        }
        let got = linear(&x, &w, None, None, Isa::detect()).unwrap().unwrap();
        let want = crate::exec::linear(&x, &w, None).unwrap();
        assert!(max_diff(&got, &want) < 1e-5, "{rows} rows, no bias");
    }
}

#[test]
fn linear_and_layer_norm() {
    let x = sin_input(&[2, 5, 7]);
    let w = cos_input(&[6, 7], 0.3);
    let b = cos_input(&[6], 0.1);
    let want = crate::exec::linear(&x, &w, Some(&b)).unwrap().gelu_erf().unwrap();
    let got = linear(&x, &w, Some(&b), Some(Activation::Gelu), Isa::Avx2.capped()).unwrap().unwrap();
    assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
    let g = cos_input(&[7], 1.0);
    let want = crate::kernels::layer_norm_last(&x, &g, &b.narrow(0, 0, 6).unwrap().pad_with_zeros(0, 0, 1).unwrap(), 1e-6).unwrap();
    let got = layer_norm(&x, &g, &b.narrow(0, 0, 6).unwrap().pad_with_zeros(0, 0, 1).unwrap(), 1e-6, false, Isa::detect()).unwrap().unwrap();
    assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
    // Rows of 37: the 16-lane sums take two chunks and a remainder.
    let (x37, g37, b37) = (sin_input(&[3, 37]), cos_input(&[37], 1.0), cos_input(&[37], 0.1));
    let want = crate::kernels::layer_norm_last(&x37, &g37, &b37, 1e-6).unwrap();
    let got = layer_norm(&x37, &g37, &b37, 1e-6, false, Isa::detect()).unwrap().unwrap();
    assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
    let x = sin_input(&[2, 3, 4, 5]);
    let g = cos_input(&[3], 1.0);
    let bb = cos_input(&[3], 0.2);
    let want = crate::kernels::layer_norm_channels(&x, &g, &bb, 1e-6).unwrap();
    let got = layer_norm(&x, &g, &bb, 1e-6, true, Isa::detect()).unwrap().unwrap();
    assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
}

#[test]
fn pooling_matches_portable() {
    // (x shape, kernel, stride, pad, dilation, ceil, count_include_pad)
    type Case = ([usize; 4], [usize; 2], [usize; 2], [usize; 4], [usize; 2], bool, bool);
    let cases: &[Case] = &[
        ([1, 3, 12, 12], [3, 3], [2, 2], [1; 4], [1, 1], false, true),
        ([2, 2, 11, 13], [3, 3], [2, 2], [0; 4], [1, 1], true, true),
        ([1, 2, 9, 9], [3, 3], [1, 1], [1; 4], [1, 1], false, true),
        ([1, 2, 9, 9], [3, 3], [1, 1], [1; 4], [1, 1], false, false),
        ([1, 2, 8, 8], [2, 2], [2, 2], [0; 4], [1, 1], false, true),
        ([1, 2, 10, 7], [3, 2], [2, 1], [1, 0, 0, 1], [1, 1], true, false),
        ([1, 2, 10, 10], [3, 3], [1, 1], [2; 4], [2, 2], false, true),
        // Stride 2 along x (even/odd split): odd widths, ceil mode, kernels 2, 3 and 5.
        ([1, 2, 13, 15], [3, 3], [2, 2], [1; 4], [1, 1], true, false),
        ([1, 2, 9, 11], [2, 2], [2, 2], [0; 4], [1, 1], true, true),
        ([1, 1, 12, 17], [5, 5], [2, 2], [2; 4], [1, 1], false, true),
        ([1, 2, 35, 35], [3, 3], [2, 2], [0; 4], [1, 1], false, true),
        // Same-size stride 1 on whole planes: kernels 3 and 5, asymmetric padding.
        ([1, 2, 7, 17], [5, 5], [1, 1], [2; 4], [1, 1], false, false),
        ([1, 2, 6, 5], [2, 3], [1, 1], [1, 0, 2, 0], [1, 1], false, true),
    ];
    for (xs, k, s, p, d, ceil, cip) in cases {
        let x = sin_input(xs);
        for isa in Isa::all_available() {
            let want = crate::kernels::max_pool2d(&x, *k, *s, *p, *d, *ceil).unwrap();
            let got = pool2d(&x, *k, *s, *p, *d, *ceil, None, isa).unwrap().unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(max_diff(&got, &want) < 1e-6, "max {xs:?} {k:?} {isa:?}");
            if *d == [1, 1] {
                let want = crate::kernels::avg_pool2d(&x, *k, *s, *p, *ceil, *cip).unwrap();
                let got = pool2d(&x, *k, *s, *p, *d, *ceil, Some(*cip), isa).unwrap().unwrap();
                assert_eq!(got.dims(), want.dims());
                assert!(max_diff(&got, &want) < 1e-5, "avg {xs:?} {k:?} {cip} {isa:?}");
            }
        }
    }
    let x = sin_input(&[2, 3, 5, 7]);
    let got = global_pool(&x, false, Isa::detect()).unwrap().unwrap();
    assert!(max_diff(&got, &x.mean_keepdim(3).unwrap().mean_keepdim(2).unwrap()) < 1e-6);
    let got = global_pool(&x, true, Isa::detect()).unwrap().unwrap();
    assert!(max_diff(&got, &x.max_keepdim(3).unwrap().max_keepdim(2).unwrap()) < 1e-6);
}

#[test]
fn attention_matches_portable() {
    // 37 tokens: the softmax rows take two 16-lane chunks and a remainder.
    let (n, l, heads, hd) = (2, 37, 3, 4);
    let d = heads * hd;
    let qkv = sin_input(&[n, l, 3 * d]);
    let split = |i: usize| qkv.narrow(2, i * d, d).unwrap().reshape((n, l, heads, hd)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
    let want = crate::kernels::attention(&split(0), &split(1), &split(2), None).unwrap().transpose(1, 2).unwrap().reshape((n, l, d)).unwrap();
    let got = attention_qkv(&qkv, heads, Isa::detect()).unwrap().unwrap();
    assert!(max_diff(&got, &want) < 1e-5, "{}", max_diff(&got, &want));
}

#[test]
fn affine_and_add() {
    let x = sin_input(&[2, 3, 4, 5]);
    let y = cos_input(&[2, 3, 4, 5], 1.0);
    let got = channel_affine(&x, &[1.0, 2.0, -1.0], &[0.5, 0.0, 1.0], Some(Activation::Relu6), Isa::detect()).unwrap().unwrap();
    let s = Tensor::new(&[1f32, 2.0, -1.0], &Device::Cpu).unwrap().reshape((1, 3, 1, 1)).unwrap();
    let t = Tensor::new(&[0.5f32, 0.0, 1.0], &Device::Cpu).unwrap().reshape((1, 3, 1, 1)).unwrap();
    let want = x.broadcast_mul(&s).unwrap().broadcast_add(&t).unwrap().clamp(0f32, 6f32).unwrap();
    assert!(max_diff(&got, &want) < 1e-6);
    let got = add_act(&x, &y, Some(Activation::Relu), Isa::detect()).unwrap().unwrap();
    assert!(max_diff(&got, &(&x + &y).unwrap().relu().unwrap()) < 1e-6);
}

#[test]
fn channel_gate_matches_broadcast_mul() {
    let x = sin_input(&[2, 3, 4, 5]);
    let g = cos_input(&[2, 3, 1, 1], 1.0);
    for isa in Isa::all_available() {
        let got = channel_gate(&x, &g, isa).unwrap().unwrap();
        assert!(max_diff(&got, &x.broadcast_mul(&g).unwrap()) < 1e-6, "{isa:?}");
    }
}

/// A packed conv over two channel parts with a BatchNorm + activation prologue and a gate
/// equals the portable conv of `act(x * s + t) * gate` on the concatenation (a 3x3 conv, a 1x7
/// one, which runs on transposed planes, and a 1x1 one, whose prologue is applied as each
/// row is packed; ReLU clamps in that pass, SiLU does not).
#[test]
fn packed_prologue_parts_and_gate() {
    let (n, h, w) = (2, 9, 10);
    let a = sin_input(&[n, 3, h, w]);
    let b = cos_input(&[n, 2, h, w], 1.5);
    let scale = [0.5f32, -1.0, 2.0, 0.25, 1.5];
    let shift = [0.1f32, 0.2, -0.3, 0.0, 0.05];
    let gate = cos_input(&[n, 5, 1, 1], 1.0);
    let cat = Tensor::cat(&[&a, &b], 1).unwrap();
    let st = Tensor::new(&scale, &Device::Cpu).unwrap().reshape((1, 5, 1, 1)).unwrap();
    let tt = Tensor::new(&shift, &Device::Cpu).unwrap().reshape((1, 5, 1, 1)).unwrap();
    let cases = [
        ConvArgs { kernel: [3, 3], stride: [2, 1], pad: [1, 0, 1, 1], dilation: [1, 1] },
        ConvArgs { kernel: [1, 7], stride: [1, 1], pad: [0, 1, 3, 2], dilation: [1, 1] },
        ConvArgs { kernel: [1, 1], stride: [1, 1], pad: [0; 4], dilation: [1, 1] },
    ];
    for act in [Activation::Relu, Activation::Silu] {
        let affine_out = cat.broadcast_mul(&st).unwrap().broadcast_add(&tt).unwrap();
        let activated = if act == Activation::Relu { affine_out.relu() } else { affine_out.silu() }.unwrap();
        let pre = activated.broadcast_mul(&gate).unwrap();
        for args in &cases {
            let [kh, kw] = args.kernel;
            let wt = cos_input(&[7, 5, kh, kw], 0.3);
            let bias = cos_input(&[7], 0.1);
            let want = crate::kernels::conv2d(&pre, &wt, Some(&bias), args.stride, args.pad, args.dilation, 1).unwrap();
            let wv: Vec<f32> = wt.flatten_all().unwrap().to_vec1().unwrap();
            let bv: Vec<f32> = bias.to_vec1().unwrap();
            for isa in Isa::all_available() {
                let pw = PackedWeights::new(&wv, 7, 5 * kh * kw, Some(&bv), isa);
                let affine = Affine { scale: &scale, shift: &shift, act: Some(act) };
                let got = conv2d_packed(&[&a, &b], &DenseWeights::Gemm(pw), args, Some(affine), Some(&gate), None, None).unwrap().unwrap();
                assert_eq!(got.dims(), want.dims());
                assert!(max_diff(&got, &want) < 1e-4, "{isa:?} {act:?} {args:?}: {}", max_diff(&got, &want));
            }
        }
    }
}

/// A gated 1x1 conv (squeeze-excitation's projection) with a residual: folded into per-image
/// weights where the map has at least as many positions as output channels, packed gated
/// otherwise; several k-blocks, 8x32 and 16x16 panels, batches.
#[test]
fn packed_gate_on_plain_input() {
    // (n, c, hw, co)
    for &(n, c, hw, co) in &[(2, 300, 9, 24), (1, 144, 14, 40), (3, 40, 5, 48), (2, 600, 3, 20)] {
        let x = sin_input(&[n, c, hw, hw]);
        let gate = cos_input(&[n, c, 1, 1], 1.0);
        let wt = cos_input(&[co, c, 1, 1], 0.3);
        let bias = cos_input(&[co], 0.1);
        let args = ConvArgs { kernel: [1, 1], stride: [1, 1], pad: [0; 4], dilation: [1, 1] };
        let plain = crate::kernels::conv2d(&x.broadcast_mul(&gate).unwrap(), &wt, Some(&bias), args.stride, args.pad, args.dilation, 1).unwrap();
        let res = cos_input(plain.dims(), 0.7);
        let want = (&plain + &res).unwrap();
        let wv: Vec<f32> = wt.flatten_all().unwrap().to_vec1().unwrap();
        let bv: Vec<f32> = bias.to_vec1().unwrap();
        for isa in Isa::all_available() {
            let pw = PackedWeights::new(&wv, co, c, Some(&bv), isa);
            let got = conv2d_packed(&[&x], &DenseWeights::Gemm(pw), &args, None, Some(&gate), Some(&res), None).unwrap().unwrap();
            let tol = 1e-4 * (c as f32).sqrt();
            assert!(max_diff(&got, &want) < tol, "{isa:?} n{n} c{c} {hw}x{hw} co{co}: {}", max_diff(&got, &want));
        }
    }
}

/// The packed GEMM with a residual against the portable conv plus the residual, then the
/// activation: 1x1 convs written in place (a narrow last column, edge tiles through the
/// buffer with 16 and 8x32 panels, several k-blocks) and a strided 3x3, at every level.
#[test]
fn packed_residual_matches_portable() {
    // (x shape, output channels, kernel, stride, pad)
    type Case = ([usize; 4], usize, usize, usize, usize);
    let cases: &[Case] = &[([2, 24, 7, 7], 32, 1, 1, 0), ([1, 20, 9, 9], 20, 1, 1, 0), ([1, 16, 6, 10], 48, 1, 1, 0), ([1, 300, 7, 7], 32, 1, 1, 0), ([1, 8, 15, 15], 16, 3, 2, 1)];
    for &(xs, co, k, st, pd) in cases {
        let x = sin_input(&xs);
        let wt = cos_input(&[co, xs[1], k, k], 0.3);
        let bias = cos_input(&[co], 0.1);
        let plain = crate::kernels::conv2d(&x, &wt, Some(&bias), [st, st], [pd; 4], [1, 1], 1).unwrap();
        let res = cos_input(plain.dims(), 0.7);
        let sum = (&plain + &res).unwrap();
        let wv: Vec<f32> = wt.flatten_all().unwrap().to_vec1().unwrap();
        let bv: Vec<f32> = bias.to_vec1().unwrap();
        let args = ConvArgs { kernel: [k, k], stride: [st, st], pad: [pd; 4], dilation: [1, 1] };
        for act in [None, Some(Activation::Relu), Some(Activation::Relu6), Some(Activation::Silu)] {
            let want = match act {
                None => sum.clone(),
                Some(Activation::Relu) => sum.relu().unwrap(),
                Some(Activation::Relu6) => sum.clamp(0f32, 6f32).unwrap(),
                _ => sum.silu().unwrap(),
            };
            for isa in Isa::all_available() {
                let pw = PackedWeights::new(&wv, co, xs[1] * k * k, Some(&bv), isa);
                let got = conv2d_packed(&[&x], &DenseWeights::Gemm(pw), &args, None, None, Some(&res), act).unwrap().unwrap();
                assert!(max_diff(&got, &want) < 1e-4, "{isa:?} {xs:?} co{co} k{k} s{st} {act:?}: {}", max_diff(&got, &want));
            }
        }
    }
}

/// Winograd F(4x4, 3x3) against the portable conv: maps not a multiple of the tile, every
/// padding, several k-blocks, output channels that are not a multiple of the panel, blocks
/// that split tile rows and span images, a prologue, gate, residual and activations.
#[test]
fn winograd_matches_portable() {
    use super::winograd::WinogradWeights;
    // (n, c, h, w, co, pad)
    type Case = (usize, usize, usize, usize, usize, [usize; 4]);
    let cases: &[Case] = &[
        (1, 16, 16, 16, 16, [1; 4]),
        (1, 16, 7, 7, 16, [1; 4]),
        (5, 16, 7, 7, 16, [1; 4]),
        (2, 20, 13, 11, 24, [1; 4]),
        (1, 8, 9, 30, 40, [0; 4]),
        (3, 300, 6, 7, 17, [2, 0, 1, 2]),
        (1, 33, 37, 29, 64, [1; 4]),
        // Tile rows of more than 16 tiles: whole rows of outputs stored at once.
        (2, 16, 9, 133, 20, [1; 4]),
        (1, 24, 20, 68, 32, [0, 1, 1, 0]),
    ];
    for &(n, c, h, w, co, pad) in cases {
        let x = sin_input(&[n, c, h, w]);
        let wt = cos_input(&[co, c, 3, 3], 0.3);
        let bias = cos_input(&[co], 0.1);
        let args = ConvArgs { kernel: [3, 3], stride: [1, 1], pad, dilation: [1, 1] };
        let plain = crate::kernels::conv2d(&x, &wt, Some(&bias), args.stride, pad, args.dilation, 1).unwrap();
        let res = cos_input(plain.dims(), 0.7);
        let wv: Vec<f32> = wt.flatten_all().unwrap().to_vec1().unwrap();
        let bv: Vec<f32> = bias.to_vec1().unwrap();
        let tol = 1e-4 * (c as f32).sqrt();
        for isa in Isa::all_available() {
            let wino = DenseWeights::Winograd(WinogradWeights::new(&wv, co, c, Some(&bv), isa));
            // Both kernels' weights: the call picks by its tile count.
            let either = DenseWeights::Either(PackedWeights::new(&wv, co, c * 9, Some(&bv), isa), super::winograd::LazyWinograd::new(&wv, co, c, Some(&bv), isa));
            for ((act, residual), ww) in [(None, false), (Some(Activation::Relu), false), (Some(Activation::Relu6), true), (Some(Activation::Silu), true)].into_iter().zip([&wino, &either, &wino, &either]) {
                let want = if residual { (&plain + &res).unwrap() } else { plain.clone() };
                let want = match act {
                    None => want,
                    Some(Activation::Relu) => want.relu().unwrap(),
                    Some(Activation::Relu6) => want.clamp(0f32, 6f32).unwrap(),
                    _ => want.silu().unwrap(),
                };
                let got = conv2d_packed(&[&x], ww, &args, None, None, residual.then_some(&res), act).unwrap().expect("winograd applies");
                assert_eq!(got.dims(), want.dims());
                let d = max_diff(&got, &want);
                assert!(d < tol, "{isa:?} n{n} c{c} {h}x{w} co{co} {pad:?} {act:?} {residual}: {d}");
            }
        }
    }
    // Fused inputs: two parts, BatchNorm + ReLU prologue, a gate; stride 2 does not fit.
    let (n, h, w) = (2, 11, 10);
    let a = sin_input(&[n, 12, h, w]);
    let b = cos_input(&[n, 8, h, w], 1.5);
    let scale: Vec<f32> = (0..20).map(|i| 0.5 + 0.1 * i as f32).collect();
    let shift: Vec<f32> = (0..20).map(|i| 0.05 * i as f32 - 0.4).collect();
    let gate = cos_input(&[n, 20, 1, 1], 1.0);
    let wt = cos_input(&[18, 20, 3, 3], 0.3);
    let st = Tensor::new(scale.as_slice(), &Device::Cpu).unwrap().reshape((1, 20, 1, 1)).unwrap();
    let tt = Tensor::new(shift.as_slice(), &Device::Cpu).unwrap().reshape((1, 20, 1, 1)).unwrap();
    let cat = Tensor::cat(&[&a, &b], 1).unwrap();
    let pre = cat.broadcast_mul(&st).unwrap().broadcast_add(&tt).unwrap().relu().unwrap().broadcast_mul(&gate).unwrap();
    let args = ConvArgs { kernel: [3, 3], stride: [1, 1], pad: [1; 4], dilation: [1, 1] };
    let want = crate::kernels::conv2d(&pre, &wt, None, args.stride, args.pad, args.dilation, 1).unwrap();
    let wv: Vec<f32> = wt.flatten_all().unwrap().to_vec1().unwrap();
    for isa in Isa::all_available() {
        let ww = DenseWeights::Winograd(WinogradWeights::new(&wv, 18, 20, None, isa));
        let affine = Affine { scale: &scale, shift: &shift, act: Some(Activation::Relu) };
        let got = conv2d_packed(&[&a, &b], &ww, &args, Some(affine), Some(&gate), None, None).unwrap().unwrap();
        assert!(max_diff(&got, &want) < 1e-3, "{isa:?}: {}", max_diff(&got, &want));
        let s2 = ConvArgs { stride: [2, 2], ..args };
        assert!(conv2d_packed(&[&a, &b], &ww, &s2, Some(affine), Some(&gate), None, None).unwrap().is_none());
    }
}

/// Winograd F(m, r) along the height against the portable conv: 7x1 and 3x1 kernels, maps
/// whose height is not a multiple of `m`, blocks that span images, several k-blocks, every
/// vertical padding, residual and activations, and 1x7 kernels (transposed planes) with a
/// fused input (two parts, BatchNorm + ReLU prologue, gate).
#[test]
fn winograd1d_matches_portable() {
    use super::winograd1d::Winograd1dWeights;
    // (n, c, h, w, co, kernel, pad)
    type Case = (usize, usize, usize, usize, usize, [usize; 2], [usize; 4]);
    let cases: &[Case] = &[
        (2, 20, 17, 17, 32, [7, 1], [3, 3, 0, 0]),
        (1, 24, 8, 8, 16, [3, 1], [1, 1, 0, 0]),
        (3, 16, 5, 7, 16, [3, 1], [2, 0, 0, 0]),
        (1, 300, 10, 13, 48, [7, 1], [2, 4, 0, 0]),
        (2, 20, 17, 17, 32, [1, 7], [0, 0, 3, 3]),
        (1, 18, 6, 9, 16, [1, 3], [0, 0, 1, 1]),
    ];
    for &(n, c, h, w, co, kernel, pad) in cases {
        let x = sin_input(&[n, c, h, w]);
        let wt = cos_input(&[co, c, kernel[0], kernel[1]], 0.3);
        let bias = cos_input(&[co], 0.1);
        let args = ConvArgs { kernel, stride: [1, 1], pad, dilation: [1, 1] };
        let plain = crate::kernels::conv2d(&x, &wt, Some(&bias), args.stride, pad, args.dilation, 1).unwrap();
        let res = cos_input(plain.dims(), 0.7);
        let wv: Vec<f32> = wt.flatten_all().unwrap().to_vec1().unwrap();
        let bv: Vec<f32> = bias.to_vec1().unwrap();
        let tol = 1e-4 * (c as f32).sqrt();
        // Levels with 16-wide B panels (the AVX2 and AVX-512 kernels).
        for isa in Isa::all_available().into_iter().filter(|&i| i >= Isa::Avx2) {
            let ww = DenseWeights::Winograd1d(Winograd1dWeights::new(&wv, co, c, kernel[0].max(kernel[1]), Some(&bv), isa));
            for (act, residual) in [(None, false), (Some(Activation::Relu), true), (Some(Activation::Silu), false)] {
                let want = if residual { (&plain + &res).unwrap() } else { plain.clone() };
                let want = match act {
                    None => want,
                    Some(Activation::Relu) => want.relu().unwrap(),
                    _ => want.silu().unwrap(),
                };
                // A residual keeps 1 x r kernels off the transposed path: no fast path there.
                let Some(got) = conv2d_packed(&[&x], &ww, &args, None, None, residual.then_some(&res), act).unwrap() else {
                    assert!(residual && kernel[0] == 1, "winograd1d applies: {kernel:?} {residual}");
                    continue;
                };
                let d = max_diff(&got, &want);
                assert!(d < tol, "{isa:?} n{n} c{c} {h}x{w} co{co} {kernel:?} {pad:?} {act:?} {residual}: {d}");
            }
        }
    }
    let (n, h, w) = (2, 17, 12);
    let a = sin_input(&[n, 12, h, w]);
    let b = cos_input(&[n, 8, h, w], 1.5);
    let scale: Vec<f32> = (0..20).map(|i| 0.5 + 0.1 * i as f32).collect();
    let shift: Vec<f32> = (0..20).map(|i| 0.05 * i as f32 - 0.4).collect();
    let gate = cos_input(&[n, 20, 1, 1], 1.0);
    let wt = cos_input(&[16, 20, 1, 7], 0.3);
    let st = Tensor::new(scale.as_slice(), &Device::Cpu).unwrap().reshape((1, 20, 1, 1)).unwrap();
    let tt = Tensor::new(shift.as_slice(), &Device::Cpu).unwrap().reshape((1, 20, 1, 1)).unwrap();
    let cat = Tensor::cat(&[&a, &b], 1).unwrap();
    let pre = cat.broadcast_mul(&st).unwrap().broadcast_add(&tt).unwrap().relu().unwrap().broadcast_mul(&gate).unwrap();
    let args = ConvArgs { kernel: [1, 7], stride: [1, 1], pad: [0, 0, 3, 3], dilation: [1, 1] };
    let want = crate::kernels::conv2d(&pre, &wt, None, args.stride, args.pad, args.dilation, 1).unwrap();
    let wv: Vec<f32> = wt.flatten_all().unwrap().to_vec1().unwrap();
    for isa in Isa::all_available().into_iter().filter(|&i| i >= Isa::Avx2) {
        let ww = DenseWeights::Winograd1d(Winograd1dWeights::new(&wv, 16, 20, 7, None, isa));
        let affine = Affine { scale: &scale, shift: &shift, act: Some(Activation::Relu) };
        let got = conv2d_packed(&[&a, &b], &ww, &args, Some(affine), Some(&gate), None, None).unwrap().unwrap();
        assert!(max_diff(&got, &want) < 1e-3, "{isa:?}: {}", max_diff(&got, &want));
        let padded = ConvArgs { pad: [1, 0, 3, 3], ..args };
        assert!(conv2d_packed(&[&a, &b], &ww, &padded, Some(affine), Some(&gate), None, None).unwrap().is_none());
    }
    // An empty map is declined, not transposed.
    let empty = Tensor::zeros((1, 20, 5, 0), candle_core::DType::F32, &Device::Cpu).unwrap();
    let pw = DenseWeights::Gemm(PackedWeights::new(&wv, 16, 140, None, Isa::Portable));
    assert!(conv2d_packed(&[&empty], &pw, &args, None, None, None, None).unwrap().is_none());
}
