//! Micro-benchmark of the fast conv path: `cargo run --release -p tlc-runtime --example convbench`
//! (RAYON_NUM_THREADS=2; TLC_CONV=gemm for the im2col + gemm crate path). Prints the minimum of 30 runs per case.
use candle_core::{Device, Tensor};
use std::time::Instant;
use tlc_runtime::kernels::fast;

fn main() {
    let cases: &[(usize, usize, usize, usize, usize, usize)] = &[
        // (batch, cin, hw, cout, k, stride)
        (1, 64, 56, 64, 3, 1),
        (1, 128, 28, 128, 3, 1),
        (1, 256, 14, 256, 3, 1),
        (1, 512, 7, 512, 3, 1),
        (1, 3, 224, 64, 7, 2),
        (1, 64, 56, 256, 1, 1),
        (1, 256, 56, 64, 1, 1),
        (1, 1024, 14, 256, 1, 1),
        (8, 64, 56, 64, 3, 1),
    ];
    let dev = Device::Cpu;
    for &(n, ci, hw, co, k, s) in cases {
        let x = Tensor::randn(0f32, 1.0, (n, ci, hw, hw), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.1, (co, ci, k, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, co, &dev).unwrap();
        let p = k / 2;
        let pw = fast::packed::PackedWeights::new(&w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), co, ci * k * k, Some(&b.to_vec1::<f32>().unwrap()));
        let old = std::env::var("TLC_CONV").is_ok_and(|v| v == "gemm");
        let run = || if !old { fast::conv2d_packed(&x, &pw, [k, k], [s, s], [p; 4], [1, 1], None, Some(tlc_compiler::ir::Activation::Relu)).unwrap().unwrap() } else { fast::conv2d(&x, &w, Some(&b), [s, s], [p; 4], [1, 1], 1, Some(tlc_compiler::ir::Activation::Relu)).unwrap().unwrap() };
        let y = run();
        let (_, _, oh, ow) = y.dims4().unwrap();
        let mut ts: Vec<f64> = (0..30)
            .map(|_| {
                let t = Instant::now();
                let _y = run();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ts.sort_by(f64::total_cmp);
        let flops = 2.0 * (n * co * oh * ow * ci * k * k) as f64;
        println!("n{n} {ci:4}->{co:4} {hw:3}x{hw:<3} k{k} s{s}: {:7.3} ms  {:6.1} GFLOP/s", ts[0], flops / ts[0] / 1e6);
    }
}
