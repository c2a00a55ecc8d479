//! Numerical parity of the optimized inference view (`Model::optimized`: BatchNorm folded,
//! activations fused, fast CPU kernels) against the same fixtures and tolerance as
//! `parity.rs`: `max |out - expected| <= 1e-3 * std(expected)`.

mod common;
use candle_core::{Device, Tensor};
use common::*;
use tlc_runtime::Model;

fn parity_optimized(fixture: &str, spec: &str, variant: Option<&str>) {
    let Some(shared) = shared() else {
        eprintln!("skipped: ../shared is not beside the repository");
        return;
    };
    let dir = shared.join("parity").join(fixture);
    let graph = compile_spec(spec, variant);
    let model = Model::with_fixture_weights(graph, &Device::Cpu).unwrap();
    let opt = model.optimized().unwrap();
    let input = Tensor::read_npy(dir.join("input.npy")).unwrap();
    let expected = Tensor::read_npy(dir.join("output.npy")).unwrap();
    let out = opt.forward(&input).unwrap();
    assert_eq!(out.dims(), expected.dims(), "{fixture}: output shape");
    let e: Vec<f32> = expected.flatten_all().unwrap().to_vec1().unwrap();
    let o: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    let mean = e.iter().map(|&v| v as f64).sum::<f64>() / e.len() as f64;
    let std = (e.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / e.len() as f64).sqrt();
    let max = o.iter().zip(&e).map(|(&a, &b)| (a as f64 - b as f64).abs()).fold(0.0, f64::max);
    eprintln!("{fixture} (optimized): max |out - expected| = {max:.3e}, std = {std:.3e}, ratio = {:.3e}", max / std);
    assert!(max <= 1e-3 * std, "{fixture} (optimized): max error {max:.4e} exceeds 1e-3 * std ({:.4e})", 1e-3 * std);
}

macro_rules! parity_test {
    ($name:ident, $fixture:literal, $spec:literal, $variant:expr) => {
        #[test]
        fn $name() {
            parity_optimized($fixture, $spec, $variant);
        }
    };
}

parity_test!(resnet50, "resnet50", "specs/resnet50.yaml", None);
parity_test!(mobilenet_v2, "mobilenet_v2", "specs/mobilenet_v2.yaml", None);
parity_test!(efficientnet_b0, "efficientnet_b0", "specs/efficientnet_b0.yaml", None);
parity_test!(densenet121, "densenet121", "specs/densenet121.yaml", None);
parity_test!(convnext_tiny, "convnext_tiny", "specs/convnext_tiny.yaml", None);
parity_test!(vit_b_16, "vit_b_16", "specs/vit_b_16.yaml", None);
parity_test!(inception_v3, "inception_v3", "specs/inception_v3.yaml", Some("no_aux"));
parity_test!(xception, "legacy_xception", "specs/xception.yaml", None);
parity_test!(mobilenet_v1, "mobilenetv1_100", "specs/mobilenet.yaml", None);
parity_test!(yolov8n, "yolov8n", "specs/yolov8.yaml", Some("n"));
