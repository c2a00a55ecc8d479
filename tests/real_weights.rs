//! End to end with real pretrained weights (EfficientNet-Lite0 ImageNet, from
//! `../shared/assets`): golden logits, and `tlc run` on real photos from both the
//! `.safetensors` and the original PyTorch `.pth`.

mod common;
use candle_core::{Device, Tensor};
use common::*;
use std::process::Command;
use tlc_runtime::weights::Weights;
use tlc_runtime::Model;

fn assets() -> Option<std::path::PathBuf> {
    shared_path("assets")
}

#[test]
fn lite0_golden_logits_match() {
    let Some(a) = assets() else { return };
    let graph = compile_spec("specs/efficientnet_lite.yaml", Some("lite0"));
    let w = Weights::load(&a.join("weights/efficientnet-lite0.safetensors")).unwrap();
    let model = Model::from_weights(graph, &w, false, &Device::Cpu).unwrap();
    let golden = candle_core::safetensors::load(a.join("weights/efficientnet-lite0.chelsea-golden.safetensors"), &Device::Cpu).unwrap();
    let out = model.forward(&golden["input"]).unwrap();
    let e: Vec<f32> = golden["logits"].flatten_all().unwrap().to_vec1().unwrap();
    let o: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    let mean = e.iter().sum::<f32>() / e.len() as f32;
    let std = (e.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / e.len() as f32).sqrt();
    let max = o.iter().zip(&e).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    eprintln!("lite0 golden: max diff {max:.3e}, std {std:.3e}");
    assert!(max <= 1e-3 * std, "max diff {max} > 1e-3 * std {std}");
    let _ = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu);
}

fn run_top(weights: &str, photo: &str) -> Vec<(String, f64)> {
    let a = assets().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tlc"))
        .current_dir(root())
        .args(["run", "specs/efficientnet_lite.yaml", "--weights"])
        .arg(a.join("weights").join(weights))
        .arg("--image")
        .arg(a.join("photos").join(photo))
        .args(["--top", "3", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "tlc run failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["top"].as_array().unwrap().iter().map(|t| (t["label"].as_str().unwrap().to_string(), t["score"].as_f64().unwrap())).collect()
}

fn assert_close(got: &[(String, f64)], want: &[(&str, f64)]) {
    for ((gl, gs), (wl, ws)) in got.iter().zip(want) {
        assert_eq!(gl, wl, "got {got:?}");
        assert!((gs - ws).abs() <= 0.03, "{gl}: {gs} vs {ws} (got {got:?})");
    }
}

#[test]
fn lite0_classifies_chelsea_from_safetensors_and_pth() {
    if assets().is_none() {
        return;
    }
    let want = [("tiger cat", 0.386), ("Egyptian cat", 0.356), ("tabby", 0.169)];
    assert_close(&run_top("efficientnet-lite0.safetensors", "chelsea.png"), &want);
    assert_close(&run_top("efficientnet-lite0-57934424.pth", "chelsea.png"), &want);
}

#[test]
fn lite0_classifies_coffee() {
    if assets().is_none() {
        return;
    }
    assert_close(&run_top("efficientnet-lite0.safetensors", "coffee.png")[..1], &[("espresso", 0.951)]);
}

#[test]
fn wrong_weights_are_listed_by_name() {
    let Some(a) = assets() else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_tlc"))
        .current_dir(root())
        .args(["run", "specs/resnet50.yaml", "--weights"])
        .arg(a.join("weights/efficientnet-lite0.safetensors"))
        .arg("--image")
        .arg(a.join("photos/chelsea.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("267 missing") && err.contains("conv1.weight [64, 3, 7, 7]") && err.contains("_blocks.0._bn1.bias [32]"), "{err}");
}

#[test]
fn unreadable_image_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_tlc"))
        .current_dir(root())
        // A variant without a published checkpoint: nothing to download before the image is read.
        .args(["run", "specs/efficientnet_lite.yaml", "--variant", "lite3", "--image", "Cargo.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Cargo.toml"));
}
