//! Transfer learning end to end: `tlc train` on the real hymenoptera set with the real
//! EfficientNet-Lite0 weights (frozen base, cached features, new Linear(1280, 2)), `tlc eval`
//! and `tlc run` on the produced model.yaml; a tiny generated dataset with a corrupt file
//! (skipped with a warning), full training (`--freeze none`, augmentation) and checkpoints that
//! survive an interrupted run. Tests needing `../shared` fail without it unless
//! `TLC_SKIP_SHARED=1`.

mod common;

use common::{root, shared_path, Disk};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tlc_runtime::weights::{save_safetensors, Weights};

fn tlc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tlc")).current_dir(root()).args(args).output().expect("run tlc")
}

fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "tlc failed: {}\nstdout: {out}\nstderr: {}", o.status, String::from_utf8_lossy(&o.stderr));
    out
}

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("tlc-transfer-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn no_tmp_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.ends_with(".tmp"), "temporary file left: {n}");
    }
}

#[test]
fn efficientnet_lite0_frozen_on_hymenoptera() {
    let (Some(data), Some(weights)) = (shared_path("assets/datasets/hymenoptera_data"), shared_path("assets/weights/efficientnet-lite0.safetensors")) else { return };
    let out = tmp("lite0");
    let run = out.join("run");
    let t = std::time::Instant::now();
    let o = tlc(&["train", "specs/efficientnet_lite.yaml", "--weights", weights.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap(), "--epochs", "20", "--seed", "0"]);
    ok(&o);
    eprintln!("tlc train: {:.1}s\n{}", t.elapsed().as_secs_f64(), String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let best = summary["best_val_accuracy"].as_f64().unwrap();
    assert!(best >= 0.90, "val accuracy {best} < 0.90 (PyTorch reference 0.935)");
    assert_eq!(summary["classes"], serde_json::json!(["ants", "bees"]));
    assert_eq!(summary["val_samples"], 153);
    for f in ["model.yaml", "best.safetensors", "last.safetensors", "metrics.csv", "summary.json"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    no_tmp_files(&run);
    let w = Weights::load(&run.join("best.safetensors")).unwrap();
    assert_eq!(w.get("head.1.weight").unwrap().dims(), &[2, 1280]);
    assert!(w.get("_fc.weight").is_none());
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(csv.starts_with("epoch,phase,loss,accuracy,val_loss,val_accuracy,lr,seconds\n"));
    assert_eq!(csv.lines().count(), 21);

    // tlc eval on the produced spec reproduces the accuracy of best.safetensors.
    let spec = run.join("model.yaml");
    let o = tlc(&["eval", spec.to_str().unwrap(), "--weights", run.join("best.safetensors").to_str().unwrap(), "--data", data.join("val").to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(ok(&o).trim()).unwrap();
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((acc - best).abs() < 1e-9, "eval accuracy {acc} != training's best {best}");
    assert_eq!(v["confusion"].as_array().unwrap().len(), 2);
    assert!(v["auc"].as_f64().unwrap() > 0.9);

    // tlc run prints a class name.
    let bee = std::fs::read_dir(data.join("val/bees")).unwrap().next().unwrap().unwrap().path();
    let o = tlc(&["run", spec.to_str().unwrap(), "--weights", run.join("best.safetensors").to_str().unwrap(), "--image", bee.to_str().unwrap(), "--top", "1"]);
    let text = ok(&o);
    assert!(text.contains("ants") || text.contains("bees"), "{text}");
    let _ = std::fs::remove_dir_all(&out);
}

/// A 24-bit BMP of `w x h` pixels from an RGB function.
fn bmp(path: &Path, w: usize, h: usize, px: impl Fn(usize, usize) -> [u8; 3]) {
    let row = (w * 3).div_ceil(4) * 4;
    let size = 54 + row * h;
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&(size as u32).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&(w as i32).to_le_bytes());
    b.extend_from_slice(&(h as i32).to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0; 24]);
    for y in (0..h).rev() {
        let start = b.len();
        for x in 0..w {
            let [r, g, bl] = px(x, y);
            b.extend_from_slice(&[bl, g, r]);
        }
        b.resize(start + row, 0);
    }
    std::fs::write(path, b).unwrap();
}

const TINY: &str = "name: tiny
input: [3, 16, 16]
preprocess: {resize: [16, 16], interpolation: bilinear, antialias: false, scale: 1/255, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
labels: imagenet
head: fc
graph:
  - conv1: conv(8, k=3, p=1, bias=false)
  - bn1: bn
  - relu
  - global_avgpool
  - flatten
  - fc: linear(10)
";

/// A tiny spec with random "pretrained" weights and a two-class folder of generated images
/// (reddish vs bluish, noisy) plus one corrupt file.
fn tiny_setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let spec = dir.join("tiny.yaml");
    std::fs::write(&spec, TINY).unwrap();
    let c = tlc_compiler::compile(spec.to_str().unwrap(), &Disk, &tlc_compiler::Options::default());
    let model = tlc_runtime::Model::random(c.graph.unwrap(), 1, &candle_core::Device::Cpu).unwrap();
    let list: Vec<(String, candle_core::Tensor)> = model.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let weights = dir.join("tiny.safetensors");
    save_safetensors(&list, &weights).unwrap();
    let data = dir.join("data");
    let mut state = 12345u64;
    let mut noise = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 58) as u8
    };
    for split in ["train", "val"] {
        for (ci, class) in ["blue", "red"].iter().enumerate() {
            let d = data.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..if split == "train" { 12 } else { 6 } {
                let n: Vec<u8> = (0..20 * 20).map(|_| noise()).collect();
                bmp(&d.join(format!("img {i}.bmp")), 20, 20, |x, y| {
                    let v = n[y * 20 + x];
                    if ci == 1 { [180 + v, 60, 60 + v] } else { [60 + v, 60, 180 + v] }
                });
            }
        }
    }
    std::fs::write(data.join("train/red/broken.jpg"), b"\xff\xd8\xff\xe0 this is not a jpeg").unwrap();
    (spec, weights, data)
}

#[test]
fn corrupt_files_are_skipped_and_full_training_learns() {
    let dir = tmp("tiny");
    let (spec, weights, data) = tiny_setup(&dir);
    let run = dir.join("run");
    let o = tlc(&[
        "train", spec.to_str().unwrap(), "--weights", weights.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap(),
        "--freeze", "none", "--epochs", "15", "--batch", "8", "--lr", "0.01", "--optimizer", "sgd", "--nesterov",
    ]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning: skipping") && err.contains("broken.jpg"), "{err}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["train_samples"], 24);
    assert_eq!(summary["skipped"].as_array().unwrap().len(), 1);
    let epochs = summary["epochs"].as_array().unwrap();
    let first = epochs[0]["loss"].as_f64().unwrap();
    let last = epochs.last().unwrap()["loss"].as_f64().unwrap();
    assert!(last < first, "loss did not go down: {first} -> {last}");
    assert!(summary["best_val_accuracy"].as_f64().unwrap() >= 0.9, "{summary}");
    // BatchNorm trained in train mode: its running statistics moved.
    let w0 = Weights::load(&weights).unwrap();
    let w1 = Weights::load(&run.join("last.safetensors")).unwrap();
    let d = (w0.get("bn1.running_mean").unwrap() - w1.get("bn1.running_mean").unwrap()).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d > 0.0);
    no_tmp_files(&run);
    // Frozen base: the base tensors of best.safetensors are the pretrained ones.
    let run2 = dir.join("run2");
    ok(&tlc(&["train", spec.to_str().unwrap(), "--weights", weights.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", run2.to_str().unwrap(), "--epochs", "3", "--optimizer", "rmsprop", "--head", "avgpool -> dropout(0.2) -> linear(16) -> relu -> linear(classes)"]));
    let w2 = Weights::load(&run2.join("best.safetensors")).unwrap();
    assert_eq!(w2.get("head.1.weight").unwrap().dims(), &[16, 8]);
    assert_eq!(w2.get("head.3.weight").unwrap().dims(), &[2, 16]);
    for name in ["conv1.weight", "bn1.weight", "bn1.running_mean", "bn1.running_var"] {
        let d = (w0.get(name).unwrap() - w2.get(name).unwrap()).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{name} changed with a frozen base");
    }
    // eval and features on the result.
    let o = tlc(&["eval", run.join("model.yaml").to_str().unwrap(), "--weights", run.join("best.safetensors").to_str().unwrap(), "--data", data.to_str().unwrap()]);
    let text = ok(&o);
    assert!(text.contains("accuracy") && text.contains("ROC AUC") && text.contains("confusion"), "{text}");
    let feats = dir.join("f.safetensors");
    ok(&tlc(&["features", spec.to_str().unwrap(), "--weights", weights.to_str().unwrap(), "--images", data.join("val").to_str().unwrap(), "--layers", "2,bn1", "--out", feats.to_str().unwrap()]));
    let meta = tlc_runtime::train::checkpoint::read_metadata(&feats).unwrap();
    let files: Vec<String> = serde_json::from_str(&meta["files"]).unwrap();
    assert_eq!(files.len(), 12);
    assert!(files[0].ends_with("img 0.bmp"));
    let f = Weights::load(&feats).unwrap();
    assert_eq!(f.get("bn1").unwrap().dims(), &[12, 8, 16, 16]);
    let _ = std::fs::remove_dir_all(&dir);
}

fn args<'a>(spec: &'a Path, weights: &'a Path, data: &'a Path, run: &'a Path, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train", spec.to_str().unwrap(), "--weights", weights.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap()];
    v.extend_from_slice(rest);
    v
}

/// metrics.csv without the seconds column.
fn metrics(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.csv")).unwrap().lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect()
}

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

fn max_diff(a: &Weights, b: &Weights, name: &str) -> f32 {
    (a.get(name).unwrap() - b.get(name).unwrap()).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Both files hold exactly the same tensors.
fn same_tensors(a: &Path, b: &Path) {
    let (wa, wb) = (Weights::load(a).unwrap(), Weights::load(b).unwrap());
    assert_eq!(wa.names().collect::<Vec<_>>(), wb.names().collect::<Vec<_>>());
    for n in wa.names() {
        assert_eq!(max_diff(&wa, &wb, n), 0.0, "{n} differs between {} and {}", a.display(), b.display());
    }
}

#[test]
fn an_interrupted_run_leaves_loadable_checkpoints_and_resumes_exactly() {
    let dir = tmp("interrupt");
    let (spec, weights, data) = tiny_setup(&dir);
    let run = dir.join("run");
    let rest = ["--freeze", "none", "--epochs", "40", "--batch", "4", "--reduce-lr-on-plateau=2"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_tlc")).current_dir(root()).args(args(&spec, &weights, &data, &run, &rest)).stderr(std::process::Stdio::null()).stdout(std::process::Stdio::null()).spawn().unwrap();
    let t = std::time::Instant::now();
    let epochs_done = || std::fs::read_to_string(run.join("metrics.csv")).map(|s| s.lines().count().saturating_sub(1)).unwrap_or(0);
    while epochs_done() < 2 && t.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = epochs_done();
    // Whatever moment the kill hit, the checkpoints under their final names are complete.
    for f in ["best.safetensors", "last.safetensors", "resume.safetensors"] {
        Weights::load(&run.join(f)).unwrap_or_else(|e| panic!("{f}: {e:#}"));
    }
    assert_eq!(Weights::load(&run.join("last.safetensors")).unwrap().get("head.1.weight").unwrap().dims(), &[2, 8]);
    let c = tlc_compiler::compile(run.join("model.yaml").to_str().unwrap(), &Disk, &tlc_compiler::Options::default());
    assert!(c.graph.is_some(), "model.yaml does not compile");
    assert!(at_kill < 40, "the run finished before it could be interrupted");
    // Resuming finishes the run exactly as an uninterrupted one.
    let o = tlc(&["train", "--resume", run.to_str().unwrap()]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming"));
    let full = dir.join("full");
    ok(&tlc(&args(&spec, &weights, &data, &full, &rest)));
    assert_eq!(metrics(&run), metrics(&full), "killed after {at_kill} epochs");
    same_tensors(&run.join("best.safetensors"), &full.join("best.safetensors"));
    same_tensors(&run.join("last.safetensors"), &full.join("last.safetensors"));
    assert_eq!(summary(&run)["resumed"], true);
    // A temporary file the kill left behind is overwritten and renamed by the resumed run.
    no_tmp_files(&run);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_across_phases_reproduces_the_uninterrupted_run() {
    let dir = tmp("resume");
    let (spec, weights, data) = tiny_setup(&dir);
    // Frozen head (cached features), then fine-tuning the last 2 parameterised nodes with
    // augmentation, a cosine schedule and reduce-on-plateau; dropout in the head.
    let rest = ["--epochs", "3", "--batch", "8", "--lr", "0.05", "--fine-tune", "3", "--unfreeze", "last:2", "--fine-tune-lr", "0.01", "--schedule", "cosine", "--reduce-lr-on-plateau=2", "--seed", "3"];
    let full = dir.join("full");
    ok(&tlc(&args(&spec, &weights, &data, &full, &rest)));
    let run = dir.join("run");
    let mut first = args(&spec, &weights, &data, &run, &rest);
    first.extend(["--stop-after", "2"]);
    let o = tlc(&first);
    assert!(ok(&o).contains("--resume"));
    assert!(!run.join("summary.json").exists());
    assert_eq!(metrics(&run).len(), 3);
    // Interrupted again inside the fine-tuning phase (after epoch 4), then to the end.
    ok(&tlc(&["train", "--resume", run.to_str().unwrap(), "--stop-after", "2"]));
    assert_eq!(metrics(&run).len(), 5);
    ok(&tlc(&["train", "--resume", run.to_str().unwrap()]));
    assert_eq!(metrics(&run), metrics(&full));
    for f in ["best.safetensors", "last.safetensors"] {
        same_tensors(&run.join(f), &full.join(f));
    }
    let (a, b) = (summary(&run), summary(&full));
    assert_eq!(a["best_val_accuracy"], b["best_val_accuracy"]);
    assert_eq!(a["best_epoch"], b["best_epoch"]);
    assert_eq!(a["confusion"], b["confusion"]);
    // The saved configuration is what the resumed invocations used.
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["config"]["reduce_lr_on_plateau"]["patience"], 2);
    assert_eq!(config["config"]["fine_tune"]["unfreeze"]["last"], 2);
    // A finished run is not resumed.
    let o = tlc(&["train", "--resume", run.to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("complete"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fine_tuning_unfreezes_the_last_nodes_with_its_schedule_and_draws_plots() {
    let dir = tmp("finetune");
    let (spec, weights, data) = tiny_setup(&dir);
    let run = dir.join("run");
    let o = tlc(&args(&spec, &weights, &data, &run, &["--epochs", "2", "--batch", "8", "--fine-tune", "3", "--unfreeze", "last:1", "--fine-tune-lr", "0.004", "--schedule", "step:1:0.5", "--no-augment"]));
    let text = ok(&o);
    assert!(text.contains("fine-tune 3 epochs"), "{text}");
    let m = metrics(&run);
    assert_eq!(m.len(), 6);
    let phases: Vec<&str> = m[1..].iter().map(|l| l.split(',').nth(1).unwrap()).collect();
    assert_eq!(phases, ["frozen", "frozen", "fine-tune", "fine-tune", "fine-tune"]);
    let lrs: Vec<f64> = m[1..].iter().map(|l| l.rsplit(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(lrs, [1e-3, 5e-4, 0.004, 0.002, 0.001]);
    let s = summary(&run);
    assert_eq!(s["phases"][1]["first_trainable"], "bn1");
    assert_eq!(s["phases"][1]["trainable_parameters"], 16 + 18);
    // last:1 is bn1: it trained (in train mode: its statistics moved); conv1 stayed frozen.
    let (w0, w1) = (Weights::load(&weights).unwrap(), Weights::load(&run.join("last.safetensors")).unwrap());
    assert_eq!(max_diff(&w0, &w1, "conv1.weight"), 0.0);
    assert!(max_diff(&w0, &w1, "bn1.weight") > 0.0 && max_diff(&w0, &w1, "bn1.running_mean") > 0.0);
    // Plots: written and decodable.
    for f in ["curves.png", "confusion.png"] {
        let img = tlc_runtime::preprocess::load_image(&run.join(f)).unwrap_or_else(|e| panic!("{f}: {e:#}"));
        assert!(img.width() >= 200 && img.height() >= 100, "{f}");
    }
    assert_eq!(s["confusion"].as_array().unwrap().len(), 2);
    // --freeze until:conv1 trains bn1 and the head from the start; conv1 stays.
    let run2 = dir.join("until");
    ok(&tlc(&args(&spec, &weights, &data, &run2, &["--freeze", "until:conv1", "--epochs", "2", "--batch", "8"])));
    let w2 = Weights::load(&run2.join("last.safetensors")).unwrap();
    assert_eq!(max_diff(&w0, &w2, "conv1.weight"), 0.0);
    assert!(max_diff(&w0, &w2, "bn1.bias") > 0.0);
    // Bad node names and flag combinations are clear errors.
    for (rest, msg) in [
        (vec!["--freeze", "until:nope"], "names no node"),
        (vec!["--fine-tune", "2"], "--unfreeze"),
        (vec!["--fine-tune", "2", "--unfreeze", "from:nope"], "names no node"),
        (vec!["--schedule", "linear"], "step:EPOCHS:GAMMA"),
    ] {
        let o = tlc(&args(&spec, &weights, &data, &dir.join("bad"), &rest));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(msg), "{rest:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn early_stopping_restores_the_best_weights() {
    let dir = tmp("early");
    let (spec, weights, data) = tiny_setup(&dir);
    let run = dir.join("run");
    // A learning rate far too high for SGD on the head: val_loss soon stops going down.
    ok(&tlc(&args(&spec, &weights, &data, &run, &["--epochs", "60", "--batch", "4", "--optimizer", "sgd", "--lr", "3", "--early-stopping", "2"])));
    let s = summary(&run);
    assert_eq!(s["phases"][0]["early_stopped"], true, "{s}");
    let run_epochs = s["epochs"].as_array().unwrap().len();
    let best = s["best_epoch"].as_u64().unwrap() as usize;
    assert!(run_epochs < 60 && best < run_epochs, "{s}");
    // The final weights are the restored best ones.
    same_tensors(&run.join("last.safetensors"), &run.join("best.safetensors"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reduce_on_plateau_lowers_the_learning_rate() {
    let dir = tmp("plateau");
    let (spec, weights, data) = tiny_setup(&dir);
    let run = dir.join("run");
    // SGD at a rate far too high for the head: val_loss stalls, and each stall of more than
    // one epoch halves the rate.
    let o = tlc(&args(&spec, &weights, &data, &run, &["--epochs", "12", "--batch", "4", "--optimizer", "sgd", "--lr", "3", "--reduce-lr-on-plateau=1:0.5"]));
    ok(&o);
    let lrs: Vec<f64> = metrics(&run)[1..].iter().map(|l| l.rsplit(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(lrs[0], 3.0);
    assert!(lrs.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] * 0.5), "{lrs:?}");
    assert!(*lrs.last().unwrap() < 3.0, "the rate never went down: {lrs:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("learning rate x 0.5"));
    // Bad values are clear errors; the flag alone takes PyTorch's defaults.
    let o = tlc(&args(&spec, &weights, &data, &dir.join("bad"), &["--reduce-lr-on-plateau=3:2"]));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("PATIENCE[:FACTOR]"));
    let plain = dir.join("plain");
    ok(&tlc(&args(&spec, &weights, &data, &plain, &["--epochs", "1", "--reduce-lr-on-plateau"])));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(plain.join("config.json")).unwrap()).unwrap();
    let p = &config["config"]["reduce_lr_on_plateau"];
    assert_eq!((p["patience"].as_u64(), p["factor"].as_f64(), p["threshold"].as_f64()), (Some(10), Some(0.1), Some(1e-4)), "{config}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_without_plateau_or_early_stopping_resumes() {
    // Nothing in its state is infinite once saved (a JSON null would not read back).
    let dir = tmp("plain-resume");
    let (spec, weights, data) = tiny_setup(&dir);
    let run = dir.join("run");
    let mut first = args(&spec, &weights, &data, &run, &["--epochs", "2", "--batch", "8"]);
    first.extend(["--stop-after", "1"]);
    assert!(ok(&tlc(&first)).contains("--resume"));
    ok(&tlc(&["train", "--resume", run.to_str().unwrap()]));
    assert_eq!(metrics(&run).len(), 3);
    assert_eq!(summary(&run)["complete"], true);
    let _ = std::fs::remove_dir_all(&dir);
}
