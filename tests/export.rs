//! `tlc export` beyond the ONNX numbers (those are in `tests/onnx.rs`): the PyTorch source of
//! every zoo spec and variant (one class per block, loops for repeats, the variant's values),
//! the Triton repository, and the command line's errors (unwritable output, mismatched
//! weights listed by name, an op with no ONNX form pointing at its spec line).
//!
//! The PyTorch files are run (strict state_dict load, parity) by `scripts/export_check.py`,
//! outside CI: CI has no torch.

mod common;
use candle_core::Device;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tlc_compiler::export::{onnx, pytorch, triton};
use tlc_runtime::Model;

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tlc-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tlc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tlc")).current_dir(root()).args(args).env("TLC_OFFLINE", "1").env_remove("TLC_WEIGHTS").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every spec with a graph, with each variant (`None`: no `--variant`).
fn zoo() -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut files: Vec<String> = std::fs::read_dir(root().join("specs")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    for f in files {
        let rel = format!("specs/{f}");
        let text = std::fs::read_to_string(root().join(&rel)).unwrap();
        if !text.lines().any(|l| l.starts_with("graph:")) {
            continue;
        }
        let path = root().join(&rel);
        let variants = tlc_compiler::variants(path.to_str().unwrap(), &Disk);
        if !text.lines().any(|l| l.starts_with("default_variant:")) {
            out.push((rel.clone(), None));
        }
        out.extend(variants.into_iter().map(|v| (rel.clone(), Some(v))));
    }
    out
}

#[test]
fn every_zoo_spec_and_variant_exports_to_pytorch() {
    let zoo = zoo();
    assert!(zoo.len() >= 25, "{} specs and variants", zoo.len());
    for (spec, variant) in &zoo {
        let graph = compile_spec(spec, variant.as_deref());
        let path = root().join(spec);
        let code = pytorch::export(path.to_str().unwrap(), &Disk, &graph).unwrap_or_else(|d| panic!("{spec} {variant:?}: {}", d.message));
        assert!(code.contains("class Model(Network):\n") && code.contains("    def build(self, x):\n"), "{spec}");
        assert!(code.contains(&format!("    input_shape = ({}, {}, {},)", graph.meta.input[0], graph.meta.input[1], graph.meta.input[2])), "{spec}");
        if let Some(v) = variant {
            assert!(code.contains(&format!("variant = \"{v}\"")), "{spec}: the chosen variant's values");
        }
        assert!(!code.contains("\t"), "{spec}: spaces only");
    }
}

#[test]
fn pytorch_source_has_a_class_per_block_and_loops_for_repeats() {
    let graph = compile_spec("specs/resnet50.yaml", None);
    let code = pytorch::export(root().join("specs/resnet50.yaml").to_str().unwrap(), &Disk, &graph).unwrap();
    assert!(code.contains("class Bottleneck(Block):\n    \"\"\"`bottleneck(c, s=1, project=false)`\"\"\"\n\n    def build(self, x, c, s=1, project=False):"), "{code}");
    assert!(code.contains("class Stage(Block):"));
    assert!(code.contains("for i in range(n - 1):"), "the stage's repeat is a loop");
    assert!(code.contains("_v1 = self.named(\"conv1\", conv(c, k=1, bias=False), x)"));
    assert!(code.contains("x = self.named(\"layer1\", Stage.of(64, 3, 1), x)"));
    // Blocks read their caller's variables as keyword arguments, passed at each call.
    let graph = compile_spec("specs/yolov8.yaml", Some("s"));
    let code = pytorch::export(root().join("specs/yolov8.yaml").to_str().unwrap(), &Disk, &graph).unwrap();
    assert!(code.contains("width = 0.5") && code.contains("variant = \"s\""), "variant s values");
    assert!(code.contains("def build(self, x, c=0, k=1, s=1, c2=None, *, max_ch, width):"), "{code}");
    assert!(code.contains("if c2 is None:\n            c2 = make_divisible(min(c, max_ch) * width)"));
}

/// A spec file with a small model and its formula weights as safetensors, in `dir`.
fn small_model(dir: &Path) -> (PathBuf, PathBuf) {
    let spec = dir.join("small.yaml");
    std::fs::write(&spec, "name: small\ninput: [3, 16, 16]\nlabels: [cat, dog]\ngraph:\n  - c1: conv(8, k=3, p=1, bias=false)\n  - b1: bn\n  - relu\n  - global_avgpool\n  - flatten\n  - fc: linear(2)\n").unwrap();
    let graph = tlc_compiler::compile(spec.to_str().unwrap(), &Disk, &Default::default()).graph.unwrap();
    let model = Model::with_fixture_weights(graph, &Device::Cpu).unwrap();
    let tensors: Vec<_> = model.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let weights = dir.join("small.safetensors");
    tlc_runtime::weights::save_safetensors(&tensors, &weights).unwrap();
    (spec, weights)
}

#[test]
fn cli_writes_onnx_pytorch_and_a_triton_repository() {
    let dir = temp("formats");
    let (spec, weights) = small_model(&dir);
    let (spec, weights) = (spec.to_str().unwrap(), weights.to_str().unwrap());
    let model = dir.join("out/small.onnx");
    let o = tlc(&["export", spec, "--weights", weights, "--format", "onnx", "-o", model.to_str().unwrap(), "--optimize", "--batch", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&model).unwrap();
    let proto: onnx::proto::ModelProto = prost::Message::decode(&bytes[..]).unwrap();
    let g = proto.graph.unwrap();
    assert!(g.node.iter().all(|n| n.op_type.as_deref() != Some("BatchNormalization")), "--optimize folds the BatchNorm");
    assert!(format!("{:?}", g.input[0].r#type).contains("DimValue(4)"), "--batch 4");
    let py = dir.join("small.py");
    let o = tlc(&["export", spec, "--format", "pytorch", "-o", py.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&py).unwrap().contains("class Model(Network):"));
    let repo = dir.join("repo");
    let o = tlc(&["export", spec, "--weights", weights, "--format", "triton", "-o", repo.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let config = std::fs::read_to_string(repo.join("small/config.pbtxt")).unwrap();
    for want in ["name: \"small\"", "backend: \"onnxruntime\"", "max_batch_size: 8", "name: \"input\"", "dims: [ 3, 16, 16 ]", "name: \"output\"", "dims: [ 2 ]", "label_filename: \"labels.txt\"", "dynamic_batching { }"] {
        assert!(config.contains(want), "config.pbtxt lacks `{want}`:\n{config}");
    }
    assert_eq!(std::fs::read_to_string(repo.join("small/labels.txt")).unwrap(), "cat\ndog\n");
    assert!(repo.join("small/1/model.onnx").is_file());
}

#[test]
fn triton_config_of_a_fixed_batch_and_of_two_outputs() {
    let graph = compile_spec("specs/yolo.yaml", None);
    let model = Model::with_fixture_weights(graph, &Device::Cpu).unwrap();
    let proto = tlc_runtime::export::onnx_model(&model, &onnx::Options { batch: Some(1), ..Default::default() }, false).unwrap();
    let config = triton::config(&model.graph, &proto, 8, true);
    assert!(config.contains("max_batch_size: 0") && !config.contains("dynamic_batching"), "{config}");
    assert!(config.contains("dims: [ 1, 3, 320, 320 ]") && config.contains("name: \"head_10x10\"") && config.contains("name: \"head_20x20\""), "{config}");
    assert!(!config.contains("label_filename"), "labels only for classifiers");
}

#[test]
fn cli_errors_are_clear() {
    let dir = temp("errors");
    let (spec, weights) = small_model(&dir);
    let (spec_s, weights_s) = (spec.to_str().unwrap(), weights.to_str().unwrap());
    // An output under a regular file cannot be written.
    let blocker = dir.join("file");
    std::fs::write(&blocker, "x").unwrap();
    let o = tlc(&["export", spec_s, "--weights", weights_s, "--format", "onnx", "-o", blocker.join("m.onnx").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot create the folder"), "{}", stderr(&o));
    let o = tlc(&["export", spec_s, "--format", "pytorch", "-o", dir.to_str().unwrap()]);
    assert!(stderr(&o).contains("it is a folder"), "{}", stderr(&o));
    // Weights of another model: every mismatch by name.
    let other = dir.join("other.yaml");
    std::fs::write(&other, "name: other\ninput: [3, 16, 16]\ngraph:\n  - c1: conv(4, k=3, p=1, bias=false)\n  - b2: bn\n  - fc: linear(2)\n").unwrap();
    let o = tlc(&["export", other.to_str().unwrap(), "--weights", weights_s, "--format", "onnx", "-o", dir.join("o.onnx").to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("c1.weight") && err.contains("b2.weight") && err.contains("b1.weight"), "{err}");
    assert!(!dir.join("o.onnx").exists());
    // An op with no ONNX form in the chosen opset: the diagnostic shows the spec line.
    let ln = dir.join("ln.yaml");
    std::fs::write(&ln, "name: ln\ninput: [3, 8, 8]\ngraph:\n  - c: conv(4, k=1)\n  - norm: layernorm2d\n").unwrap();
    let o = tlc(&["export", ln.to_str().unwrap(), "--format", "onnx", "--opset", "16", "-o", dir.join("ln.onnx").to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("`norm` (layernorm)") && err.contains("opset 17") && err.contains("ln.yaml:5"), "{err}");
    let o = tlc(&["export", spec_s, "--format", "onnx", "--batch", "zero", "-o", dir.join("z.onnx").to_str().unwrap()]);
    assert!(stderr(&o).contains("--batch takes `dynamic` or a positive size"), "{}", stderr(&o));
}
