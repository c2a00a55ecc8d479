//! Convolution kernel timings (criterion): the fast CPU path (im2col + gemm, direct
//! depthwise) against the portable candle-based kernels. `cargo bench --bench kernels`.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use tlc_runtime::kernels;

fn input(shape: &[usize], f: fn(f32) -> f32) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|i| f(i as f32 * 0.37)).collect::<Vec<f32>>(), shape, &Device::Cpu).unwrap()
}

fn bench(c: &mut Criterion) {
    // (in, out, size, kernel, stride, groups): ResNet, MobileNet and stem shapes.
    for (ci, co, hw, k, s, g) in [(64, 64, 56, 3, 1, 1), (256, 64, 56, 1, 1, 1), (3, 64, 224, 7, 2, 1), (144, 144, 56, 3, 1, 144), (96, 96, 112, 3, 2, 96)] {
        let x = input(&[1, ci, hw, hw], f32::sin);
        let w = input(&[co, ci / g, k, k], f32::cos);
        let p = k / 2;
        let name = format!("conv {ci}->{co} {hw}x{hw} k{k} s{s} g{g}");
        c.bench_function(&format!("{name} fast"), |b| b.iter(|| kernels::fast::conv2d(&x, &w, None, [s, s], [p; 4], [1, 1], g, None, kernels::fast::Isa::detect()).unwrap()));
        c.bench_function(&format!("{name} portable"), |b| b.iter(|| kernels::conv2d(&x, &w, None, [s, s], [p; 4], [1, 1], g).unwrap()));
        if g > 1 {
            c.bench_function(&format!("{name} candle grouped"), |b| b.iter(|| x.conv2d(&w, p, s, 1, g).unwrap()));
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
