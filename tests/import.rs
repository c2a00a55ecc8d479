//! `tlc import darknet`: the Yolo-Fastest cfgs import to specs/yolo.yaml's parameters and
//! detections (through the `tlc` binary, real weights from `../shared`); upstream yolov3-tiny
//! and yolov4-tiny give darknet's own parameter and BFLOPs counts; a cfg using every
//! translated layer kind matches OpenCV's darknet importer layer by layer; bad cfgs are
//! diagnostics on their line; mutated cfgs never panic and every accepted one compiles.
//!
//! Accept new snapshots with `INSTA_UPDATE=always cargo test --release --test import`.

mod common;
use candle_core::{Device, Tensor};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use tlc_compiler::ir::Graph;
use tlc_compiler::span::{MemoryLoader, Sources};
use tlc_compiler::{compile, import::darknet, render, Options};
use tlc_runtime::weights::Weights;
use tlc_runtime::Model;

fn data(name: &str) -> PathBuf {
    root().join("tests/data/darknet").join(name)
}

fn weights_dir() -> PathBuf {
    shared().unwrap().join("assets/weights")
}

/// Imports cfg text (named `name`) with optional names text: the spec, or the rendered
/// diagnostics.
fn import_text(name: &str, cfg: &str, names: Option<&str>) -> Result<String, String> {
    let mut sources = Sources::default();
    let cfg = sources.add(name, cfg.to_string());
    let names = names.map(|t| sources.add("coco.names", t.to_string()));
    darknet::import(&sources, cfg, names).map_err(|d| render::render_plain(&d, &sources))
}

fn import_file(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy();
    import_text(&name, &text, None).unwrap_or_else(|e| panic!("{name} does not import:\n{e}"))
}

fn compile_text(name: &str, spec: &str) -> Graph {
    let c = compile(name, &MemoryLoader([(name.to_string(), spec.to_string())].into()), &Options::default());
    c.graph.unwrap_or_else(|| panic!("the spec imported as {name} does not compile:\n{}\n{spec}", render::render_plain(&c.diagnostics, &c.sources)))
}

fn param_list(g: &Graph) -> Vec<(String, Vec<usize>)> {
    g.params().map(|p| (p.name.clone(), p.shape.clone())).collect()
}

fn count(g: &Graph) -> usize {
    g.params().map(|p| p.shape.iter().product::<usize>()).sum()
}

fn tlc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tlc")).current_dir(root()).args(args).output().unwrap()
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tlc-import-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `(label, score, [x1, y1, x2, y2])` of `tlc run --json`.
fn detections(out: &std::process::Output) -> Vec<(String, f64, Vec<f64>)> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["label"].as_str().unwrap().to_string(), d["score"].as_f64().unwrap(), d["box"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()))
        .collect()
}

#[test]
fn yolo_fastest_imports_to_the_hand_written_spec() {
    let dir = scratch("yolo-fastest");
    let spec = dir.join("yolo-fastest-1.1.yaml");
    let cfg = weights_dir().join("yolo-fastest-1.1.cfg");
    let out = tlc(&["import", "darknet", cfg.to_str().unwrap(), "-o", spec.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("346062 parameters") && err.contains("0.252 BFLOPs"), "{err}");
    let imported = compile_text("imported.yaml", &std::fs::read_to_string(&spec).unwrap());
    assert_eq!(param_list(&imported), param_list(&compile_spec("specs/yolo.yaml", None)));
    // The real darknet weights, read in layer order, and the reference's detections on dog.jpg.
    let weights = weights_dir().join("yolo-fastest-1.1.weights");
    let dog = shared().unwrap().join("assets/photos/dog.jpg");
    let got = detections(&tlc(&["run", spec.to_str().unwrap(), "--weights", weights.to_str().unwrap(), "--image", dog.to_str().unwrap(), "--json"]));
    let hand = detections(&tlc(&["run", "specs/yolo.yaml", "--weights", weights.to_str().unwrap(), "--image", dog.to_str().unwrap(), "--json"]));
    assert_eq!(got, hand);
    let labels: Vec<(&str, f64)> = got.iter().map(|(l, s, _)| (l.as_str(), (s * 100.0).round() / 100.0)).collect();
    eprintln!("imported yolo-fastest-1.1 on dog.jpg: {labels:?}");
    let want = [("car", 0.90), ("dog", 0.65), ("bicycle", 0.53), ("car", 0.44), ("person", 0.31)];
    assert_eq!(labels.len(), want.len(), "{labels:?}");
    for ((l, s), (wl, ws)) in labels.iter().zip(want) {
        assert!(*l == wl && (s - ws).abs() <= 0.011, "{labels:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn yolo_fastest_xl_has_the_xl_weights_float_count() {
    let spec = import_file(&weights_dir().join("yolo-fastest-1.1-xl.cfg"));
    let g = compile_text("xl.yaml", &spec);
    assert_eq!(count(&g), 923_486);
    assert_eq!(param_list(&g), param_list(&compile_spec("specs/yolo.yaml", Some("xl"))));
    assert_eq!(format!("{:.3}", darknet::bflops(&g)), "0.725");
}

/// Darknet's per-layer BFLOPs printout of yolov3-tiny at 416x416 (layers 0-15; `darknet
/// detector test cfg/yolov3-tiny.cfg ...`, AlexeyAB/darknet).
const YOLOV3_TINY_LAYER_BF: [f64; 16] = [0.150, 0.003, 0.399, 0.001, 0.399, 0.001, 0.399, 0.000, 0.399, 0.000, 0.399, 0.000, 1.595, 0.089, 0.399, 0.044];

#[test]
fn upstream_tiny_cfgs_give_darknets_parameter_and_bflops_counts() {
    // Parameters: (weights file bytes - 20-byte header) / 4 of yolov3-tiny.weights
    // (35,434,956 bytes) and yolov4-tiny.weights (24,251,276 bytes). BFLOPs: darknet's
    // "Total BFLOPS" line at 416x416 (README: 5.6 and 6.9).
    for (cfg, params, bflops) in [("yolov3-tiny.cfg", 8_858_734, "5.571"), ("yolov4-tiny.cfg", 6_062_814, "6.910")] {
        let g = compile_text(cfg, &import_file(&data(cfg)));
        eprintln!("{cfg}: {} parameters, {:.3} BFLOPs", count(&g), darknet::bflops(&g));
        assert_eq!(count(&g), params, "{cfg}");
        assert_eq!(format!("{:.3}", darknet::bflops(&g)), bflops, "{cfg}");
    }
    // Layer by layer, as darknet prints them.
    let g = compile_text("yolov3-tiny.cfg", &import_file(&data("yolov3-tiny.cfg")));
    let layers = darknet::bflops_by_layer(&g);
    for (i, want) in YOLOV3_TINY_LAYER_BF.iter().enumerate() {
        assert_eq!(format!("{:.3}", layers[&i]), format!("{want:.3}"), "layer {i}");
    }
}

#[test]
fn every_layer_kind_matches_opencv_darknet_layer_by_layer() {
    // features.cfg: strided and stride-1 max-pools with darknet's padding on an odd input,
    // grouped convs, route groups, shortcut with activation, upsample, dropout, pass-through
    // route, global average pool, leaky / mish / swish / logistic / relu / linear.
    // make_features.py wrote random weights and OpenCV 4.10's per-layer outputs.
    let g = compile_text("features.yaml", &import_file(&data("features.cfg")));
    let w = Weights::load_for(&data("features.weights"), &tlc_runtime::model::expected_params(&g)).unwrap();
    let model = Model::from_weights(g, &w, false, &Device::Cpu).unwrap();
    let fixture = Tensor::read_npz(data("features.npz")).unwrap();
    let input = &fixture.iter().find(|(k, _)| k == "input").unwrap().1;
    // Layer 15, a pass-through route, is no node: `from: layers.12` reads layer 12 instead.
    let layers: Vec<&(String, Tensor)> = fixture.iter().filter(|(k, _)| k != "input" && k != "layers.15").collect();
    assert!(model.graph.find("layers.15").is_none() && layers.len() == 16, "{} layers in the fixture", layers.len());
    let ids: Vec<_> = layers.iter().map(|(k, _)| model.graph.find(k).unwrap_or_else(|| panic!("no node {k}"))).collect();
    let (_, outs) = model.forward_with(input, &ids).unwrap();
    for ((name, want), got) in layers.iter().zip(&outs) {
        let diff = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        eprintln!("{name}: {:?} max |diff| {diff:.2e} (max |value| {scale:.2})", got.dims());
        assert_eq!(got.dims(), want.dims(), "{name}");
        assert!(diff <= 1e-4 * scale.max(1.0), "{name}: max |diff| {diff}");
    }
}

#[test]
fn yolo_fastest_spec_text() {
    for cfg in ["yolo-fastest-1.1.cfg", "yolo-fastest-1.1-xl.cfg"] {
        let spec = import_file(&weights_dir().join(cfg));
        eprintln!("{cfg}: {} lines", spec.lines().count());
        insta::assert_snapshot!(format!("import_{}", cfg.trim_end_matches(".cfg")), spec);
    }
}

#[test]
fn upstream_tiny_spec_text() {
    for cfg in ["yolov3-tiny.cfg", "yolov4-tiny.cfg"] {
        insta::assert_snapshot!(format!("import_{}", cfg.trim_end_matches(".cfg")), import_file(&data(cfg)));
    }
}

#[test]
fn names_file_gives_the_labels() {
    let cfg = std::fs::read_to_string(data("yolov4-tiny.cfg")).unwrap();
    let names: String = (0..80).map(|i| format!("class \"{i}\"\n")).collect();
    let spec = import_text("yolov4-tiny.cfg", &cfg, Some(&names)).unwrap();
    let g = compile_text("named.yaml", &spec);
    let tlc_compiler::ir::Labels::List(labels) = &g.meta.labels else { panic!("{:?}", g.meta.labels) };
    assert_eq!(labels.len(), 80);
    assert_eq!(labels[79], "class \"79\"");
    // Without a names file, 80 classes are COCO's.
    let g = compile_text("coco.yaml", &import_text("yolov4-tiny.cfg", &cfg, None).unwrap());
    assert_eq!(g.meta.labels, tlc_compiler::ir::Labels::Builtin("coco".into()));
}

/// Bad cfgs: one diagnostic each, on the offending line.
#[test]
fn bad_cfgs_are_diagnostics_on_their_line() {
    let net = "[net]\nwidth=64\nheight=64\nchannels=3\n";
    let conv = "[convolutional]\nfilters=16\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky\n";
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("empty", String::new(), None),
        ("no net", conv.to_string(), None),
        ("no width", "[net]\nheight=64\nchannels=3\n".to_string() + conv, None),
        ("no layers", net.to_string(), None),
        ("option without =", format!("{net}{conv}stride\n"), None),
        ("option before a section", "width=3\n".to_string() + net, None),
        ("unclosed header", format!("{net}[convolutional\n"), None),
        ("not an integer", format!("{net}[convolutional]\nfilters=sixteen\n"), None),
        ("negative size", format!("{net}[convolutional]\nfilters=16\nsize=-3\n"), None),
        ("unknown layer", format!("{net}{conv}[flatten]\n"), None),
        ("unsupported layer", format!("{net}{conv}[reorg]\nstride=2\n"), None),
        ("unsupported activation", format!("{net}[convolutional]\nfilters=4\nactivation=hardtan\n"), None),
        ("xnor", format!("{net}[convolutional]\nfilters=4\nxnor=1\n"), None),
        ("groups", format!("{net}[convolutional]\nfilters=16\ngroups=5\n"), None),
        ("kernel too large", format!("{net}[convolutional]\nfilters=4\nsize=99\n"), None),
        ("route out of range", format!("{net}{conv}[route]\nlayers=-4\n"), None),
        ("route forward", format!("{net}{conv}[route]\nlayers=3\n"), None),
        ("route sizes", format!("{net}{conv}[maxpool]\nsize=2\nstride=2\n[route]\nlayers=-1,-2\n"), None),
        ("route group_id", format!("{net}{conv}[route]\nlayers=-1\ngroups=2\ngroup_id=2\n"), None),
        ("shortcut shapes", format!("{net}{conv}[convolutional]\nfilters=8\n[shortcut]\nfrom=-2\n"), None),
        ("maxpool padding", format!("{net}{conv}[maxpool]\nsize=2\nstride=1\npadding=5\n"), None),
        ("yolo channels", format!("{net}{conv}[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nclasses=80\nnum=3\n"), None),
        ("yolo mask", format!("{net}[convolutional]\nfilters=18\n[yolo]\nmask=0,1,7\nanchors=1,2,3,4,5,6\nclasses=1\nnum=3\n"), None),
        ("yolo anchors", format!("{net}[convolutional]\nfilters=18\n[yolo]\nmask=0,1,2\nanchors=1,2,3\nclasses=1\nnum=3\n"), None),
        ("new_coords", format!("{net}[convolutional]\nfilters=18\n[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nclasses=1\nnum=3\nnew_coords=1\n"), None),
        ("names count", format!("{net}[convolutional]\nfilters=18\n[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nclasses=1\nnum=3\n"), Some("cat\ndog\n")),
        ("names empty line", format!("{net}[convolutional]\nfilters=21\n[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nclasses=2\nnum=3\n"), Some("cat\n\ndog\n")),
    ];
    let mut all = String::new();
    for (what, cfg, names) in &cases {
        let err = import_text("bad.cfg", cfg, *names).expect_err(what);
        assert_eq!(err.matches("error[").count(), 1, "{what}: {err}");
        assert!(err.contains("bad.cfg") || err.contains("coco.names"), "{what}: {err}");
        all += &format!("=== {what}\n{err}\n");
    }
    insta::assert_snapshot!("import_bad_cfgs", all);
}

/// One-edit mutations of the upstream cfgs (a line dropped, duplicated or changed, a number
/// replaced): the importer never panics, and every spec it accepts compiles.
#[test]
fn mutated_cfgs_never_panic_and_accepted_ones_compile() {
    let numbers = ["0", "-1", "1", "2", "3", "7", "100000", "99999999999", "1.5", "x", ""];
    let mut accepted = 0;
    let mut cases = 0;
    for cfg in ["yolov3-tiny.cfg", "yolov4-tiny.cfg", "features.cfg"] {
        let text = std::fs::read_to_string(data(cfg)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let mut variants: Vec<Vec<String>> = Vec::new();
            let others = |f: &dyn Fn(&mut Vec<String>)| {
                let mut v: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                f(&mut v);
                v
            };
            variants.push(others(&|v| {
                v.remove(i);
            }));
            variants.push(others(&|v| v.insert(i, v[i].clone())));
            if let Some((key, _)) = line.split_once('=') {
                for n in numbers.iter().step_by(1 + i % 3) {
                    variants.push(others(&|v| v[i] = format!("{key}={n}")));
                }
            }
            for v in variants {
                cases += 1;
                let mutated = v.join("\n");
                match std::panic::catch_unwind(|| import_text(cfg, &mutated, None)) {
                    Err(_) => panic!("the importer panicked on {cfg} with line {} edited:\n{mutated}", i + 1),
                    Ok(Ok(spec)) => {
                        accepted += 1;
                        compile_text(cfg, &spec);
                    }
                    Ok(Err(_)) => {}
                }
            }
        }
    }
    eprintln!("{cases} mutated cfgs, {accepted} accepted");
    assert!(accepted > 100 && accepted < cases);
}

#[test]
fn cli_writes_to_stdout_and_exits_1_for_bad_cfgs_and_2_for_missing_files() {
    let out = tlc(&["import", "darknet", "tests/data/darknet/yolov3-tiny.cfg"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), import_file(&data("yolov3-tiny.cfg")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("8858734 parameters") && err.contains("5.571 BFLOPs"), "{err}");
    let dir = scratch("cli");
    let bad = dir.join("bad.cfg");
    std::fs::write(&bad, "[net]\nwidth=8\nheight=8\nchannels=3\n[reorg]\n").unwrap();
    let out = tlc(&["import", "darknet", bad.to_str().unwrap(), "-o", dir.join("bad.yaml").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("error[E0504]") && err.contains("bad.cfg:5:1") && !dir.join("bad.yaml").exists(), "{err}");
    let out = tlc(&["import", "darknet", dir.join("missing.cfg").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.cfg"));
    let _ = std::fs::remove_dir_all(&dir);
}
