//! Training-path micro-benchmark: forward and backward (candle autograd) of an
//! EfficientNet-Lite0 last block at batch 32 through `kernels::conv2d`, per op kind.
//! `RAYON_NUM_THREADS=2 cargo run --release -p tlc-runtime --example trainbench`
use candle_core::{Device, Tensor, Var};
use std::time::Instant;
use tlc_runtime::kernels;

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (32, 192, 7, 7), &dev)?;
    let cases: Vec<(&str, Vec<usize>, usize, [usize; 4])> = vec![
        ("1x1 192->1152", vec![1152, 192, 1, 1], 1, [0; 4]),
        ("dw 3x3 1152", vec![1152, 1, 3, 3], 1152, [1; 4]),
        ("1x1 1152->320", vec![320, 1152, 1, 1], 1, [0; 4]),
        ("1x1 320->1280", vec![1280, 320, 1, 1], 1, [0; 4]),
    ];
    let mut h = x;
    for (name, wshape, groups, pad) in cases {
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.05, wshape.as_slice(), &dev)?)?;
        let xin = Var::from_tensor(&h)?;
        let mut best = (f64::MAX, f64::MAX);
        let mut out = None;
        for _ in 0..5 {
            let t = Instant::now();
            let y = kernels::conv2d(xin.as_tensor(), w.as_tensor(), None, [1, 1], pad, [1, 1], groups)?;
            let f = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let g = y.sqr()?.sum_all()?.backward()?;
            let b = t.elapsed().as_secs_f64();
            assert!(g.get(w.as_tensor()).is_some() && g.get(xin.as_tensor()).is_some());
            best = (best.0.min(f), best.1.min(b));
            out = Some(y.detach());
        }
        println!("{name:16}: forward {:7.2} ms, backward {:7.2} ms", best.0 * 1e3, best.1 * 1e3);
        h = out.unwrap();
    }
    Ok(())
}
