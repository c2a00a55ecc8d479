//! The ONNX back end, proven inside `cargo test` with tract-onnx (a pure-Rust ONNX runtime):
//! every parity fixture's spec is exported with the fixture's formula weights, run by tract on
//! `input.npy`, and must meet the candle path's tolerance, `max |out - expected| <= 1e-3 *
//! std(expected)`. The optimized export (BatchNorm folded, activations and residual adds after
//! their convs) is checked the same way on the smaller models. Small inline specs cover the op
//! forms the zoo does not use (ceil-mode and padded pooling, uneven adaptive pooling, Swin on
//! sizes that are not a multiple of the window...), against the candle runtime; and bad input
//! gets clear errors.
//!
//! tract runs every op tlc writes; `scripts/onnx_pytorch_check.py` additionally runs every
//! export in ONNX Runtime with `onnx.checker` (outside CI).

mod common;
use candle_core::{Device, Tensor};
use common::*;
use tlc_compiler::export::onnx::{self, Error, Options};
use tlc_compiler::span::MemoryLoader;
use tlc_runtime::export::onnx_model;
use tlc_runtime::Model;
use tract_onnx::prelude::{tvec, Datum, Framework, InferenceFact, InferenceModelExt, IntoTValue};
use tract_onnx::tract_core::model::IntoRunnable;

/// Runs ONNX `bytes` in tract on `input` (NCHW) and returns the first output's shape and data.
fn run_tract(bytes: &[u8], input: &Tensor) -> (Vec<usize>, Vec<f32>) {
    let shape = input.dims().to_vec();
    let data: Vec<f32> = input.flatten_all().unwrap().to_vec1().unwrap();
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("tract reads the model")
        .with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape.as_slice()))
        .unwrap()
        .into_optimized()
        .expect("tract optimizes the model")
        .into_runnable()
        .unwrap();
    let x = tract_onnx::prelude::Tensor::from_shape(&shape, &data).unwrap();
    let out = model.run(tvec!(x.into_tvalue())).expect("tract runs the model");
    let y = out[0].to_plain_array_view::<f32>().unwrap();
    (y.shape().to_vec(), y.iter().copied().collect())
}


/// `(max |a - b|, std(b))`.
fn error_ratio(a: &[f32], b: &[f32]) -> (f64, f64) {
    let mean = b.iter().map(|&v| v as f64).sum::<f64>() / b.len() as f64;
    let std = (b.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / b.len() as f64).sqrt();
    let max = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).fold(0.0, f64::max);
    (max, std)
}

fn export_bytes(model: &Model, optimized: bool) -> Vec<u8> {
    export_at(model, optimized, onnx::DEFAULT_OPSET)
}

fn export_at(model: &Model, optimized: bool, opset: i64) -> Vec<u8> {
    let proto = onnx_model(model, &Options { opset, ..Options::default() }, optimized).unwrap_or_else(|e| panic!("{}: export failed: {e:#}", model.graph.meta.name));
    onnx::encode(&proto).unwrap()
}

/// Exports the fixture's spec with formula weights and checks tract's output against the
/// reference output (and the optimized export too when `optimized`).
fn fixture_parity(fixture: &str, optimized: bool) {
    let (_, spec, variant) = FIXTURES.iter().find(|f| f.0 == fixture).expect("a listed fixture");
    let dir = shared().unwrap().join("parity").join(fixture);
    let model = Model::with_fixture_weights(compile_spec(spec, *variant), &Device::Cpu).unwrap();
    let input = Tensor::read_npy(dir.join("input.npy")).unwrap();
    let expected = Tensor::read_npy(dir.join("output.npy")).unwrap();
    let want: Vec<f32> = expected.flatten_all().unwrap().to_vec1().unwrap();
    let views: &[bool] = if optimized { &[false, true] } else { &[false] };
    for &opt in views {
        let bytes = export_bytes(&model, opt);
        let (shape, got) = run_tract(&bytes, &input);
        assert_eq!(shape, expected.dims(), "{fixture}: output shape");
        let (max, std) = error_ratio(&got, &want);
        let view = if opt { " (optimized)" } else { "" };
        eprintln!("{fixture}{view}: tract max |out - expected| = {max:.3e}, std = {std:.3e}, ratio = {:.3e}", max / std);
        assert!(max <= 1e-3 * std, "{fixture}{view}: tract max error {max:.4e} exceeds 1e-3 * std ({:.4e})", 1e-3 * std);
    }
}

macro_rules! onnx_parity {
    ($name:ident, $fixture:literal, $optimized:expr) => {
        #[test]
        fn $name() {
            fixture_parity($fixture, $optimized);
        }
    };
}

onnx_parity!(alexnet, "alexnet", true);
onnx_parity!(vgg16, "vgg16", false);
onnx_parity!(vgg19, "vgg19", false);
onnx_parity!(resnet50, "resnet50", true);
onnx_parity!(densenet121, "densenet121", true);
onnx_parity!(densenet201, "densenet201", false);
onnx_parity!(mobilenet_v1, "mobilenetv1_100", true);
onnx_parity!(mobilenet_v2, "mobilenet_v2", true);
onnx_parity!(inception_v3, "inception_v3", true);
onnx_parity!(xception, "legacy_xception", true);
onnx_parity!(efficientnet_b0, "efficientnet_b0", true);
onnx_parity!(efficientnet_b4, "efficientnet_b4", false);
onnx_parity!(convnext_tiny, "convnext_tiny", true);
onnx_parity!(convnext_base, "convnext_base", false);
onnx_parity!(vit_b_16, "vit_b_16", true);
onnx_parity!(swin_t, "swin_t", true);
onnx_parity!(yolov8n, "yolov8n", true);

#[test]
fn every_fixture_has_an_onnx_parity_test() {
    let src = std::fs::read_to_string(root().join("tests/onnx.rs")).unwrap();
    for (fixture, _, _) in FIXTURES {
        assert!(src.contains(&format!("\"{fixture}\", ")), "tests/onnx.rs has no onnx_parity! for fixture {fixture}");
    }
}

/// Compiles an inline spec.
fn inline(spec: &str) -> tlc_compiler::ir::Graph {
    let loader = MemoryLoader([("t.yaml".to_string(), spec.to_string())].into_iter().collect());
    let c = tlc_compiler::compile("t.yaml", &loader, &tlc_compiler::Options::default());
    c.graph.unwrap_or_else(|| panic!("{}", tlc_compiler::render::render_plain(&c.diagnostics, &c.sources)))
}

/// Runs an inline spec (formula weights, formula input of batch 2) in candle and, exported
/// plain and optimized, in tract; the outputs must agree to 1e-5 relative to their spread.
fn agrees_with_candle(spec: &str) {
    agrees_with_candle_at(spec, onnx::DEFAULT_OPSET);
}

fn agrees_with_candle_at(spec: &str, opset: i64) {
    let graph = inline(spec);
    let mut shape = vec![2];
    shape.extend(&graph.meta.input);
    let input = Tensor::from_vec(tlc_runtime::formula::fixture_input(&shape), shape.as_slice(), &Device::Cpu).unwrap();
    let model = Model::with_fixture_weights(graph, &Device::Cpu).unwrap();
    let want: Vec<f32> = model.forward(&input).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    for opt in [false, true] {
        let (_, got) = run_tract(&export_at(&model, opt, opset), &input);
        assert_eq!(got.len(), want.len(), "{spec}");
        let (max, std) = error_ratio(&got, &want);
        assert!(max <= 1e-5 * std.max(1e-3), "opset {opset}, optimized={opt}: max diff {max:.3e} (std {std:.3e}) for\n{spec}");
    }
}

#[test]
fn pooling_forms_agree_with_candle() {
    agrees_with_candle("name: t\ninput: [3, 11, 10]\ngraph:\n  - maxpool(3, s=2, ceil=true)\n  - avgpool(3, s=2, p=1, ceil=true)\n  - avgpool(2, s=1, p=1, count_include_pad=false)\n");
    agrees_with_candle("name: t\ninput: [3, 13, 9]\ngraph:\n  - avgpool(3, s=2, p=[1, 0, 0, 1], ceil=true)\n  - maxpool(2, s=1, p=\"same\")\n  - adaptive_avgpool([4, 3])\n");
    agrees_with_candle("name: t\ninput: [4, 9, 7]\ngraph:\n  - avgpool(3, s=2, ceil=true, count_include_pad=false)\n  - global_maxpool\n  - flatten\n  - softmax\n");
}

#[test]
fn every_opset_written_runs() {
    // Reductions take their axes as an input from opset 18 (ReduceSum from 13).
    let spec = "name: t\ninput: [3, 13, 9]\ngraph:\n  - conv(6, k=3, p=1) -> bn -> relu6\n  - adaptive_avgpool([4, 3])\n  - upsample(2) -> zeropad(1) -> hardsigmoid\n  - flatten -> softmax\n";
    for opset in [*onnx::OPSETS.start(), 17, 18, *onnx::OPSETS.end()] {
        agrees_with_candle_at(spec, opset);
    }
}

#[test]
fn conv_and_activation_forms_agree_with_candle() {
    agrees_with_candle(
        "name: t\ninput: [4, 9, 8]\ngraph:\n  - conv(8, k=3, s=2, p=\"same\", bias=false) -> bn -> hardswish\n  - conv(8, k=[1, 3], p=[0, 1], groups=2) -> hardsigmoid\n  - dwconv(k=3, d=2, p=2) -> leaky_relu(0.2) -> tanh\n  - zeropad([1, 0, 2, 1]) -> relu6 -> sigmoid\n  - conv(6, k=1) -> gelu -> silu\n",
    );
}

#[test]
fn tensor_forms_agree_with_candle() {
    let spec = "name: t\ninput: [4, 6, 6]\ngraph:\n  - a: conv(8, k=1)\n  - b: chunk(2, 1)\n  - {c: \"chunk(2, 0)\", from: a}\n  - {do: mul, from: [b, c]}\n  - upsample(2)\n  - channel_affine(scale=[1, 2, 3, 4], shift=[0.5, 0, -1, 2])\n  - reshape(4, -1) -> permute(0, 2, 1)\n  - select(2, 1)\n  - linear(5)\n";
    agrees_with_candle(spec);
}

#[test]
fn swin_on_uneven_sizes_agrees_with_candle() {
    // 10x9 is no multiple of the 4-wide window (padding, then cropping); the shift is active.
    let spec = "name: t\ninput: [3, 10, 9]\ngraph:\n  - conv(8, k=1) -> permute(0, 2, 3, 1)\n  - window_attention(2, window=4, shift=2)\n  - window_attention(2, window=4)\n  - patch_merge -> layernorm -> linear(8)\n  - window_attention(4, window=8, shift=4)\n  - scale([8])\n";
    agrees_with_candle(spec);
}

#[test]
fn vit_pieces_agree_with_candle() {
    let spec = "name: t\ninput: [3, 8, 8]\ngraph:\n  - conv(12, k=4, s=4) -> reshape(12, -1) -> permute(0, 2, 1)\n  - t: class_token\n  - pos: pos_embed\n  - self_attention(3) -> layernorm\n  - select(1, 0)\n";
    agrees_with_candle(spec);
}

#[test]
fn darknet_heads_are_raw_outputs_named_after_their_nodes() {
    let graph = compile_spec("specs/yolo.yaml", None);
    let model = Model::with_fixture_weights(graph, &Device::Cpu).unwrap();
    let x = Tensor::from_vec(tlc_runtime::formula::fixture_input(&[1, 3, 320, 320]), (1, 3, 320, 320), &Device::Cpu).unwrap();
    let taps: Vec<_> = ["head_10x10", "head_20x20"].iter().map(|n| model.graph.find(n).unwrap()).collect();
    let (_, want) = model.forward_with(&x, &taps).unwrap();
    let data: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    for optimized in [false, true] {
        let proto = onnx_model(&model, &Options { batch: Some(1), ..Options::default() }, optimized).unwrap();
        let g = proto.graph.as_ref().unwrap();
        let outs: Vec<&str> = g.output.iter().map(|o| o.name.as_deref().unwrap()).collect();
        assert_eq!(outs, ["head_10x10", "head_20x20"], "optimized={optimized}: both heads are outputs");
        let note = &proto.metadata_props.iter().find(|p| p.key.as_deref() == Some("outputs")).expect("a note on the outputs").value;
        let note = note.as_deref().unwrap();
        assert!(note.contains("left to the caller") && note.contains("[115,73]"), "{note}");
        // Both heads match the candle model's values of those nodes.
        let bytes = onnx::encode(&proto).unwrap();
        let plan = tract_onnx::onnx().model_for_read(&mut &bytes[..]).unwrap().into_optimized().unwrap().into_runnable().unwrap();
        let out = plan.run(tvec!(tract_onnx::prelude::Tensor::from_shape(&[1, 3, 320, 320], &data).unwrap().into_tvalue())).unwrap();
        for (o, w) in out.iter().zip(&want) {
            let got: Vec<f32> = o.to_plain_array_view::<f32>().unwrap().iter().copied().collect();
            let w: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
            let (max, std) = error_ratio(&got, &w);
            assert!(max <= 1e-4 * std, "optimized={optimized}: max {max:e} std {std:e}");
        }
    }
}

#[test]
fn model_carries_names_metadata_and_a_dynamic_batch() {
    let graph = compile_spec("specs/resnet50.yaml", None);
    let model = Model::with_fixture_weights(graph, &Device::Cpu).unwrap();
    let proto = onnx_model(&model, &Options::default(), false).unwrap();
    let g = proto.graph.as_ref().unwrap();
    let inits: Vec<&str> = g.initializer.iter().map(|t| t.name.as_deref().unwrap()).collect();
    let params: Vec<String> = model.graph.params().map(|p| p.name.clone()).collect();
    assert_eq!(inits.len(), params.len());
    assert!(params.iter().all(|p| inits.contains(&p.as_str())), "initializers are the state_dict keys");
    assert!(g.node.iter().any(|n| n.name.as_deref() == Some("layer1.0.conv1") && n.op_type.as_deref() == Some("Conv")));
    let dims = |v: &onnx::proto::ValueInfoProto| format!("{:?}", v.r#type);
    assert!(dims(&g.input[0]).contains("DimParam(\"batch\")") && dims(&g.output[0]).contains("DimParam(\"batch\")"));
    let keys: Vec<&str> = proto.metadata_props.iter().map(|p| p.key.as_deref().unwrap()).collect();
    for k in ["name", "task", "preprocess", "labels"] {
        assert!(keys.contains(&k), "metadata key {k}");
    }
    let labels = &proto.metadata_props.iter().find(|p| p.key.as_deref() == Some("labels")).unwrap().value;
    assert!(labels.as_deref().unwrap().contains("tench"), "ImageNet label names");
    // A dynamic batch really runs at batch 3.
    let small = inline("name: t\ninput: [3, 8, 8]\ngraph:\n  - conv(4, k=3) -> bn -> relu\n  - global_avgpool -> flatten -> linear(2)\n");
    let m = Model::with_fixture_weights(small, &Device::Cpu).unwrap();
    let x = Tensor::from_vec(tlc_runtime::formula::fixture_input(&[3, 3, 8, 8]), (3, 3, 8, 8), &Device::Cpu).unwrap();
    let (shape, _) = run_tract(&export_bytes(&m, false), &x);
    assert_eq!(shape, [3, 2]);
}

#[test]
fn ops_without_an_onnx_form_name_the_op_and_the_spec_line() {
    let graph = inline("name: t\ninput: [3, 8, 8]\ngraph:\n  - conv(4, k=1)\n  - ln: layernorm2d\n");
    let model = Model::with_fixture_weights(graph, &Device::Cpu).unwrap();
    let err = onnx::export(&model.graph, &|_| None, &Options { opset: 13, ..Options::default() }).unwrap_err();
    let Error::Node(d) = err else { panic!("expected a node error, got {err}") };
    assert!(d.message.contains("`ln` (layernorm)") && d.message.contains("opset 17"), "{}", d.message);
    let line = &"name: t\ninput: [3, 8, 8]\ngraph:\n  - conv(4, k=1)\n  - ln: layernorm2d\n"[d.labels[0].span.range()];
    assert_eq!(line, "layernorm2d");
    let hs = inline("name: t\ninput: [3, 8, 8]\ngraph:\n  - hardswish\n");
    let err = onnx::export(&hs, &|_| None, &Options { opset: 13, ..Options::default() }).unwrap_err();
    assert!(err.to_string().contains("(hardswish)") && err.to_string().contains("opset 14"), "{err}");
}

#[test]
fn bad_weights_and_options_are_listed() {
    let graph = inline("name: t\ninput: [3, 8, 8]\ngraph:\n  - c: conv(4, k=1)\n  - n: bn\n");
    let err = onnx::export(&graph, &|name| (name == "c.weight").then(|| vec![0.0; 5]), &Options::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("c.weight: 5 values for shape [4, 3, 1, 1]") && text.contains("c.bias: missing") && text.contains("n.running_var: missing"), "{text}");
    for (opts, want) in [(Options { opset: 12, ..Options::default() }, "opset 12 is not supported"), (Options { batch: Some(0), ..Options::default() }, "at least 1")] {
        let err = onnx::export(&graph, &|_| None, &opts).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
}
