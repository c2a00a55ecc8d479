//! Micro-benchmark of the fast conv kernels:
//! `RAYON_NUM_THREADS=1 cargo run --release -p tlc-runtime --example convbench [avx512|avx2|portable]`
//! (default: the best level this CPU has). Prints the minimum of 30 runs per case, which a
//! loaded machine disturbs much less than the mean. `CONVBENCH_COLD=1` flushes the caches
//! before every run (weights from memory, as in a model).
use candle_core::{Device, Tensor};
use std::time::Instant;
use tlc_compiler::ir::Activation;
use tlc_runtime::kernels::fast::{self, packed::PackedWeights, winograd::WinogradWeights, winograd1d::{self, Winograd1dWeights}, ConvArgs, DenseWeights, Isa};

/// The fastest of `reps` runs; with `CONVBENCH_COLD` set, the caches are flushed before each
/// (64 MiB written by every thread), so weights come from memory as in a model's pass.
fn min_ms(run: &dyn Fn() -> Tensor, reps: usize) -> f64 {
    let cold = std::env::var_os("CONVBENCH_COLD").is_some();
    let mut junk = if cold { vec![0u8; 64 << 20] } else { Vec::new() };
    run();
    (0..reps)
        .map(|r| {
            if cold {
                use rayon::prelude::*;
                junk.par_chunks_mut(1 << 20).for_each(|c| c.fill(r as u8));
            }
            let t = Instant::now();
            let _y = run();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    // On a worker of rayon's pool, as `tlc` runs a model: each kernel's parallel loop starts
    // on this thread instead of waking the pool from outside (tens of microseconds per call).
    rayon::join(run_all, || ());
}

fn run_all() {
    let args: Vec<String> = std::env::args().collect();
    let isa = args.get(1).and_then(|s| Isa::parse(s)).unwrap_or_else(Isa::detect).capped();
    // Optional: repetitions (30) and a substring of the case names to run only those (for
    // instruction counts under callgrind: `convbench avx2 1 "128->  32"`; a whole case name
    // followed by ` gemm` or ` winograd` picks one kernel).
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let only = args.get(3).cloned().unwrap_or_default();
    println!("kernel level {isa:?}");
    dense(isa, reps, &only);
    linear(isa, reps, &only);
    attention(isa, reps, &only);
    activations(isa, reps, &only);
    depthwise(isa, reps, &only);
}

/// (batch, cin, hw, cout, [kh, kw], stride).
type Dense = (usize, usize, usize, usize, [usize; 2], usize);

/// The dense conv cases.
const DENSE: &[Dense] = &[
    // (batch, cin, hw, cout, [kh, kw], stride)
    (1, 64, 56, 64, [3, 3], 1),
    (1, 128, 28, 128, [3, 3], 1),
    (1, 256, 14, 256, [3, 3], 1),
    (1, 512, 7, 512, [3, 3], 1),
    (1, 3, 224, 64, [7, 7], 2),
    (1, 3, 224, 32, [3, 3], 2),
    (1, 3, 299, 32, [3, 3], 2),
    (1, 3, 224, 64, [3, 3], 1),
    (8, 3, 224, 64, [7, 7], 2),
    (1, 64, 56, 256, [1, 1], 1),
    (1, 256, 56, 64, [1, 1], 1),
    (1, 1024, 14, 256, [1, 1], 1),
    (1, 16, 112, 96, [1, 1], 1),
    (1, 24, 56, 144, [1, 1], 1),
    (8, 24, 56, 144, [1, 1], 1),
    (1, 32, 28, 192, [1, 1], 1),
    (1, 96, 14, 576, [1, 1], 1),
    (1, 160, 7, 960, [1, 1], 1),
    (8, 160, 7, 960, [1, 1], 1),
    (1, 32, 112, 16, [1, 1], 1),
    (8, 32, 112, 16, [1, 1], 1),
    (8, 16, 112, 96, [1, 1], 1),
    (1, 96, 56, 24, [1, 1], 1),
    (1, 1152, 7, 320, [1, 1], 1),
    (1, 768, 7, 3072, [1, 1], 1),
    (1, 3072, 7, 768, [1, 1], 1),
    (1, 384, 14, 1536, [1, 1], 1),
    (1, 128, 56, 32, [3, 3], 1),
    (1, 128, 14, 32, [3, 3], 1),
    (1, 512, 28, 128, [1, 1], 1),
    (8, 64, 56, 64, [3, 3], 1),
    (1, 32, 147, 32, [3, 3], 1),
    (1, 32, 147, 64, [3, 3], 1),
    (1, 80, 71, 192, [3, 3], 1),
    (1, 64, 35, 96, [3, 3], 1),
    (1, 512, 28, 512, [3, 3], 1),
    (1, 64, 224, 64, [3, 3], 1),
    (8, 512, 7, 512, [3, 3], 1),
    (1, 256, 56, 512, [1, 1], 2),
    (1, 1024, 14, 2048, [1, 1], 2),
    (1, 128, 7, 32, [3, 3], 1),
    (1, 384, 8, 384, [3, 3], 1),
    (1, 448, 8, 384, [3, 3], 1),
    (8, 128, 7, 32, [3, 3], 1),
    (8, 384, 8, 384, [3, 3], 1),
    (1, 2048, 7, 512, [1, 1], 1),
    (1, 512, 7, 2048, [1, 1], 1),
    (1, 960, 8, 320, [1, 1], 1),
    (1, 768, 14, 3072, [1, 1], 1),
    (1, 3072, 14, 768, [1, 1], 1),
    (1, 320, 7, 1280, [1, 1], 1),
    (1, 960, 7, 160, [1, 1], 1),
    (1, 576, 14, 96, [1, 1], 1),
    (1, 960, 7, 320, [1, 1], 1),
    (1, 256, 14, 1024, [1, 1], 1),
    (8, 2048, 7, 512, [1, 1], 1),
    (1, 192, 17, 192, [1, 7], 1),
    (1, 192, 17, 192, [7, 1], 1),
    (1, 160, 17, 160, [1, 7], 1),
    (8, 192, 17, 192, [1, 7], 1),
    (8, 192, 17, 192, [7, 1], 1),
    (1, 384, 8, 384, [1, 3], 1),
    (1, 384, 8, 384, [3, 1], 1),
    (8, 384, 8, 384, [3, 1], 1),
    // Squeeze-excitation's two 1x1 convs on a 1x1 map (EfficientNet-B0's stage 5).
    (1, 672, 1, 28, [1, 1], 1),
    (1, 28, 1, 672, [1, 1], 1),
    (8, 672, 1, 28, [1, 1], 1),
];

/// Dense convs through the packed GEMM, and 3x3 stride-1 ones through Winograd as well.
fn dense(isa: Isa, reps: usize, only: &str) {
    for &(n, ci, hw, co, [kh, kw], s) in DENSE {
        let (ph, pw) = (kh / 2, kw / 2);
        let k = if kh == kw { format!("{kh}") } else { format!("{kh}x{kw}") };
        let name = format!("n{n} {ci:4}->{co:4} {hw:3}x{hw:<3} k{k} s{s}");
        if !name.contains(only) && !only.contains(&name) {
            continue;
        }
        // Drawn only for the cases that run (a filtered run no longer waits for the rest).
        let x = Tensor::randn(0f32, 1.0, (n, ci, hw, hw), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 0.1, (co, ci, kh, kw), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 0.1, co, &Device::Cpu).unwrap();
        let (wv, bv) = (w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        let mut kernels = vec![("gemm", DenseWeights::Gemm(PackedWeights::new(&wv, co, ci * kh * kw, Some(&bv), isa)))];
        if winograd1d::fits_either([kh, kw], [s, s], [1, 1], [ph, ph, pw, pw]) {
            kernels.push(("winograd1d", DenseWeights::Winograd1d(Winograd1dWeights::new(&wv, co, ci, kh.max(kw), Some(&bv), isa))));
        }
        if [kh, kw] == [3, 3] && s == 1 {
            kernels.push(("winograd", DenseWeights::Winograd(WinogradWeights::new(&wv, co, ci, Some(&bv), isa))));
        }
        let args = ConvArgs { kernel: [kh, kw], stride: [s, s], pad: [ph, ph, pw, pw], dilation: [1, 1] };
        let act = Activation::Relu;
        for (kname, dw) in &kernels {
            if !format!("{name} {kname}").contains(only) {
                continue;
            }
            let run = || fast::conv2d_packed(&[&x], dw, &args, None, None, None, Some(act)).unwrap().unwrap();
            let (_, _, oh, ow) = run().dims4().unwrap();
            let t = min_ms(&run, reps);
            let flops = 2.0 * (n * co * oh * ow * ci * kh * kw) as f64;
            println!("{name} {act:?} {kname}: {t:7.3} ms  {:6.1} GFLOP/s (direct-equivalent)", flops / t / 1e6);
        }
    }
}

/// Linear layers over token rows.
fn linear(isa: Isa, reps: usize, only: &str) {
    // (rows, in, out): ViT-B/16's MLP and attention projections at batch 1, its MLP at 8.
    for &(rows, inf, outf) in &[(197, 768, 3072), (197, 3072, 768), (197, 768, 2304), (197, 768, 768), (1576, 768, 3072), (1576, 3072, 768)] {
        let name = format!("linear {rows}x{inf} -> {outf}");
        if !name.contains(only) {
            continue;
        }
        let x = Tensor::randn(0f32, 1.0, (rows, inf), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 0.1, (outf, inf), &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = Tensor::randn(0f32, 0.1, outf, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        let pw = PackedWeights::new_linear(&w, outf, inf, Some(&b), isa);
        for act in [None, Some(Activation::Gelu)] {
            let run = || fast::linear_packed(&x, &pw, act).unwrap().unwrap();
            let t = min_ms(&run, reps);
            println!("{name} {act:?}: {t:7.3} ms  {:6.1} GFLOP/s", 2.0 * (rows * inf * outf) as f64 / t / 1e6);
        }
    }
}

/// The self-attention core on a packed q/k/v projection: ViT-B/16's 197 tokens, 12 heads of 64.
fn attention(isa: Isa, reps: usize, only: &str) {
    for n in [1, 8] {
        let name = format!("attention n{n} 197 tokens 12x64");
        if !name.contains(only) {
            continue;
        }
        let qkv = Tensor::randn(0f32, 1.0, (n, 197, 3 * 768), &Device::Cpu).unwrap();
        let run = || fast::attention_qkv(&qkv, 12, isa).unwrap().unwrap();
        let t = min_ms(&run, reps);
        // q k^T and the probabilities times v: 2 * 197 * 197 * 64 multiply-adds per head each.
        println!("{name}: {t:7.3} ms  {:6.1} GFLOP/s", (n * 12 * 4 * 197 * 197 * 64) as f64 / t / 1e6);
    }
}

/// Activations in place.
fn activations(isa: Isa, reps: usize, only: &str) {
    for a in [Activation::Relu, Activation::Silu, Activation::Gelu, Activation::Sigmoid].into_iter().filter(|a| format!("{a:?}").contains(only)) {
        let mut v: Vec<f32> = (0..96 * 112 * 112).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
        let t = (0..reps.min(10))
            .map(|_| {
                let t = Instant::now();
                fast::apply_act(Some(a), &mut v, isa);
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min);
        println!("{a:?} on {} floats: {t:.3} ms", v.len());
    }
}

/// Depthwise convs with SiLU.
fn depthwise(isa: Isa, reps: usize, only: &str) {
    // SiLU (EfficientNet's; it costs as much as the conv), or ReLU6 (MobileNetV2's, clamped as
    // it is stored) with `CONVBENCH_RELU6` set.
    let act = if std::env::var_os("CONVBENCH_RELU6").is_some() { Activation::Relu6 } else { Activation::Silu };
    // (batch, channels, hw, k, stride)
    for &(n, c, hw, k, s) in &[(1, 96, 112, 3, 2), (1, 144, 56, 3, 1), (1, 240, 28, 5, 1), (1, 672, 14, 5, 1), (1, 1152, 7, 5, 1), (1, 96, 56, 7, 1), (8, 144, 56, 3, 1), (1, 960, 7, 3, 1), (1, 576, 14, 3, 1), (1, 576, 14, 3, 2), (1, 144, 56, 3, 2), (1, 768, 7, 7, 1), (1, 192, 28, 3, 1), (8, 960, 7, 3, 1), (8, 576, 14, 3, 1), (8, 576, 14, 3, 2), (8, 1152, 7, 5, 1), (1, 384, 14, 7, 1), (1, 192, 28, 3, 2), (1, 240, 28, 3, 2)] {
        let name = format!("n{n} depthwise {c:4} {hw:3}x{hw:<3} k{k} s{s}");
        if !name.contains(only) {
            continue;
        }
        let x = Tensor::randn(0f32, 1.0, (n, c, hw, hw), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 0.1, (c, 1, k, k), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 0.1, c, &Device::Cpu).unwrap();
        let run = || fast::conv2d(&x, &w, Some(&b), [s, s], [k / 2; 4], [1, 1], c, Some(act), isa).unwrap().unwrap();
        let (_, _, oh, ow) = run().dims4().unwrap();
        let t = min_ms(&run, reps);
        let gb = 4.0 * (n * c * (hw * hw + oh * ow)) as f64 / 1e9;
        println!("{name}: {t:7.3} ms  {:6.1} GB/s in+out", gb / (t / 1e3));
    }
}
