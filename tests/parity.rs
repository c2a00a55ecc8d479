//! Numerical parity with the references: every fixture of `../shared/parity` is rebuilt from
//! its spec with the formula weights, run on `input.npy` (plain and optimized), and must satisfy
//! `max |out - expected| <= 1e-3 * std(expected)`. On failure the per-module statistics of the
//! manifest locate the first diverging module.

mod common;
use candle_core::{Device, Tensor};
use common::*;
use std::path::Path;
use tlc_runtime::kernels::cpu::Isa;
use tlc_runtime::Model;

fn first_divergence(model: &Model, input: &Tensor, manifest: &serde_json::Value) -> String {
    let mut report = String::new();
    let mut taps = Vec::new();
    let mut names = Vec::new();
    for m in manifest["modules"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        if m["call"].as_u64() != Some(0) {
            continue;
        }
        if let Some(id) = model.graph.find(name) {
            taps.push(id);
            names.push(m.clone());
        }
    }
    let Ok((_, outs)) = model.forward_with(input, &taps) else { return "forward failed".into() };
    for (m, t) in names.iter().zip(outs) {
        let flat: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let mean = flat.iter().map(|&v| v as f64).sum::<f64>() / flat.len() as f64;
        let std = m["std"].as_f64().unwrap();
        let first8: Vec<f64> = m["first8"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let diff = flat.iter().zip(&first8).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
        let shape_ok = t.dims()[1..] == m["shape"].as_array().unwrap()[1..].iter().map(|v| v.as_u64().unwrap() as usize).collect::<Vec<_>>()[..];
        if !shape_ok || diff > 1e-3 * std.max(1e-6) * 10.0 || (mean - m["mean"].as_f64().unwrap()).abs() > 1e-3 * std.max(1e-6) * 10.0 {
            report = format!(
                "first diverging module `{}`: shape {:?} vs {}, mean {mean:.6} vs {:.6}, first8 max diff {diff:.3e}",
                m["name"].as_str().unwrap(),
                t.dims(),
                m["shape"],
                m["mean"].as_f64().unwrap()
            );
            break;
        }
    }
    if report.is_empty() {
        "no listed module diverges (check the final layers)".into()
    } else {
        report
    }
}

/// `max |out - expected|` and `std(expected)`.
fn error_ratio(out: &Tensor, expected: &Tensor) -> (f64, f64) {
    let e: Vec<f32> = expected.flatten_all().unwrap().to_vec1().unwrap();
    let o: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    let mean = e.iter().map(|&v| v as f64).sum::<f64>() / e.len() as f64;
    let std = (e.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / e.len() as f64).sqrt();
    let max = o.iter().zip(&e).map(|(&a, &b)| (a as f64 - b as f64).abs()).fold(0.0, f64::max);
    (max, std)
}

/// Runs one fixture of `../shared/parity` (see [`parity_in`]).
fn parity(fixture: &str, spec: &str, variant: Option<&str>, expected_file: &str) {
    let Some(shared) = shared() else { return };
    parity_in(&shared.join("parity").join(fixture), fixture, spec, variant, expected_file);
}

/// Runs the fixture in `dir` through the plain model and through the optimized inference view
/// (BatchNorm folded, activations fused, fast kernels at every level this CPU has); all must
/// meet the tolerance.
fn parity_in(dir: &Path, fixture: &str, spec: &str, variant: Option<&str>, expected_file: &str) {
    let graph = compile_spec(spec, variant);
    let model = Model::with_fixture_weights(graph, &Device::Cpu).unwrap();
    let input = Tensor::read_npy(dir.join("input.npy")).unwrap();
    let expected = Tensor::read_npy(dir.join(expected_file)).unwrap();
    let out = model.forward(&input).unwrap();
    assert_eq!(out.dims(), expected.dims(), "{fixture}: output shape");
    let (max, std) = error_ratio(&out, &expected);
    eprintln!("{fixture}: max |out - expected| = {max:.3e}, std = {std:.3e}, ratio = {:.3e}", max / std);
    if max > 1e-3 * std {
        let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
        panic!("{fixture}: max error {max:.4e} exceeds 1e-3 * std ({:.4e}); {}", 1e-3 * std, first_divergence(&model, &input, &manifest));
    }
    // Every kernel level this CPU has (AVX-512, AVX2, portable) must meet the tolerance.
    for isa in Isa::all_available() {
        let optimized = model.optimized_with(isa).unwrap().forward(&input).unwrap();
        let (max, std) = error_ratio(&optimized, &expected);
        eprintln!("{fixture} (optimized, {isa:?}): max |out - expected| = {max:.3e}, ratio = {:.3e}", max / std);
        assert!(max <= 1e-3 * std, "{fixture} (optimized, {isa:?}): max error {max:.4e} exceeds 1e-3 * std ({:.4e})", 1e-3 * std);
    }
}

fn exists(spec: &str) -> bool {
    let ok = Path::new(env!("CARGO_MANIFEST_DIR")).join(spec).exists();
    if !ok {
        eprintln!("skipped: {spec} does not exist yet");
    }
    ok
}

macro_rules! parity_test {
    ($name:ident, $fixture:literal, $spec:literal, $variant:expr) => {
        #[test]
        fn $name() {
            assert!(exists($spec), "{} is missing", $spec);
            parity($fixture, $spec, $variant, "output.npy");
        }
    };
}

parity_test!(alexnet, "alexnet", "specs/alexnet.yaml", None);
parity_test!(vgg16, "vgg16", "specs/vgg16.yaml", None);
parity_test!(vgg19, "vgg19", "specs/vgg19.yaml", None);
parity_test!(resnet50, "resnet50", "specs/resnet50.yaml", None);
parity_test!(densenet121, "densenet121", "specs/densenet121.yaml", None);
parity_test!(densenet201, "densenet201", "specs/densenet201.yaml", None);
parity_test!(mobilenet_v1, "mobilenetv1_100", "specs/mobilenet.yaml", None);
parity_test!(mobilenet_v2, "mobilenet_v2", "specs/mobilenet_v2.yaml", None);
parity_test!(inception_v3, "inception_v3", "specs/inception_v3.yaml", Some("no_aux_raw"));
parity_test!(xception, "legacy_xception", "specs/xception.yaml", None);
parity_test!(efficientnet_b0, "efficientnet_b0", "specs/efficientnet_b0.yaml", None);
parity_test!(efficientnet_b4, "efficientnet_b4", "specs/efficientnet_b4.yaml", None);
parity_test!(convnext_tiny, "convnext_tiny", "specs/convnext_tiny.yaml", None);
parity_test!(convnext_base, "convnext_base", "specs/convnext_base.yaml", None);
parity_test!(vit_b_16, "vit_b_16", "specs/vit_b_16.yaml", None);
parity_test!(swin_t, "swin_t", "specs/swin_t.yaml", None);
parity_test!(yolov8n, "yolov8n", "specs/yolov8.yaml", Some("n"));

/// ShuffleNetV2's fixture is in the repository (`tests/fixtures`: input, output and manifest,
/// no weights), so this test needs no `../shared`.
#[test]
fn shufflenet_v2_x1_0() {
    parity_in(&root().join("tests/fixtures/shufflenet_v2_x1_0"), "shufflenet_v2_x1_0", "examples/shufflenet_v2.yaml", None, "output.npy");
}
