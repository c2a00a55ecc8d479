//! YOLO end to end (issue 4): Yolo-Fastest 1.1 raw heads against the OpenCV golden, real
//! detections through the `tlc` binary against the reference (`verify_yolofastest.py`:
//! OpenCV's darknet importer), YOLOv8 decoding, variants' parameter counts, `--save`.
//! Tests needing `../shared` fail without it unless `TLC_SKIP_SHARED=1`.

mod common;
use candle_core::Device;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use tlc_runtime::weights::Weights;
use tlc_runtime::Model;

fn assets() -> Option<PathBuf> {
    shared_path("assets")
}

fn max_diff_and_std(got: &candle_core::Tensor, want: &candle_core::Tensor) -> (f32, f32) {
    assert_eq!(got.dims(), want.dims());
    let o: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let e: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    let mean = e.iter().sum::<f32>() / e.len() as f32;
    let std = (e.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / e.len() as f32).sqrt();
    let max = o.iter().zip(&e).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    (max, std)
}

#[test]
fn yolo_fastest_heads_match_golden() {
    let Some(a) = assets() else { return };
    let graph = compile_spec("specs/yolo.yaml", None);
    let ids = ["head_10x10", "head_20x20"].map(|n| graph.find(n).unwrap_or_else(|| panic!("no node {n}")));
    let w = Weights::load(&a.join("weights/yolo-fastest-1.1.safetensors")).unwrap();
    let model = Model::from_weights(graph, &w, false, &Device::Cpu).unwrap();
    let golden = candle_core::safetensors::load(a.join("weights/yolo-fastest-1.1.dog-golden.safetensors"), &Device::Cpu).unwrap();
    let (_, heads) = model.forward_with(&golden["input"], &ids).unwrap();
    for (name, got) in ["head_10x10", "head_20x20"].iter().zip(&heads) {
        let (max, std) = max_diff_and_std(got, &golden[*name]);
        eprintln!("{name}: max |diff| {max:.3e}, std {std:.3e}, ratio {:.3e}", max / std);
        assert!(max <= 1e-3 * std, "{name}: max diff {max} > 1e-3 * std {std}");
    }
}

/// Runs the `tlc` binary from the repository root with `$TLC_WEIGHTS` at the shared weights.
fn tlc(args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tlc"));
    c.current_dir(root()).args(args);
    if let Some(a) = assets() {
        c.env("TLC_WEIGHTS", a.join("weights"));
    }
    c.output().unwrap()
}

fn photo(name: &str) -> String {
    assets().unwrap().join("photos").join(name).display().to_string()
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tlc-yolo-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[derive(Clone, Debug)]
struct Det {
    label: String,
    score: f64,
    /// x1, y1, x2, y2 in original pixels.
    xyxy: [f64; 4],
}

fn dets_of(v: &serde_json::Value) -> Vec<Det> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let b: Vec<f64> = d["box"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            Det { label: d["label"].as_str().unwrap().into(), score: d["score"].as_f64().unwrap(), xyxy: [b[0], b[1], b[2], b[3]] }
        })
        .collect()
}

fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let ix = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let iy = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ix * iy;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

fn xywh(x: f64, y: f64, w: f64, h: f64) -> [f64; 4] {
    [x, y, x + w, y + h]
}

/// Requires `got` and `want` to be the same set: a one-to-one pairing with equal labels,
/// scores within `tol` and IoU >= `min_iou`; no detection left over on either side.
fn assert_same_set(what: &str, got: &[Det], want: &[Det], tol: f64, min_iou: f64) {
    let mut used = vec![false; got.len()];
    for w in want {
        let hit = got.iter().enumerate().find(|(i, g)| !used[*i] && g.label == w.label && (g.score - w.score).abs() <= tol && iou(&g.xyxy, &w.xyxy) >= min_iou);
        let Some((i, g)) = hit else { panic!("{what}: no detection matches {w:?}; got {got:#?}") };
        eprintln!("{what}: {:<8} {:.2} (ref {:.2})  box [{:.0}, {:.0}, {:.0}, {:.0}]  IoU {:.3}", g.label, g.score, w.score, g.xyxy[0], g.xyxy[1], g.xyxy[2] - g.xyxy[0], g.xyxy[3] - g.xyxy[1], iou(&g.xyxy, &w.xyxy));
        used[i] = true;
    }
    let extra: Vec<_> = got.iter().zip(&used).filter(|(_, u)| !**u).map(|(g, _)| g).collect();
    assert!(extra.is_empty(), "{what}: detections beyond the reference: {extra:#?}");
}

fn r(label: &str, score: f64, b: [f64; 4]) -> Det {
    Det { label: label.into(), score, xyxy: xywh(b[0], b[1], b[2], b[3]) }
}

/// The reference detections of the issue (x, y, w, h as OpenCV's darknet importer gives them).
fn issue_reference(image: &str) -> Vec<Det> {
    match image {
        "dog.jpg" => vec![r("car", 0.90, [454., 76., 230., 103.]), r("dog", 0.65, [122., 220., 242., 294.]), r("bicycle", 0.53, [243., 187., 346., 234.])],
        "giraffe.jpg" => vec![r("giraffe", 0.95, [161., -11., 253., 453.]), r("zebra", 0.93, [310., 212., 101., 225.])],
        "eagle.jpg" => vec![r("bird", 0.88, [223., 87., 364., 356.])],
        "astronaut.png" => vec![r("person", 0.84, [18., 67., 346., 435.])],
        _ => unreachable!(),
    }
}

/// Low-scoring detections that `verify_yolofastest.py` itself reports beside the issue's list:
/// the OpenCV golden of dog.jpg holds both dog.jpg ones (see
/// `dog_matches_the_reference_script_on_the_opencv_golden`), and the heads match that golden to
/// ~1e-5 of their std, so OpenCV gives the giraffe.jpg one too. No NMS mode or threshold removes
/// them without removing the issue's bicycle 0.53: none overlaps another detection.
fn reference_extras(image: &str) -> Vec<Det> {
    match image {
        "dog.jpg" => vec![r("car", 0.44, [690., 116., 38., 37.]), r("person", 0.31, [63., 72., 49., 44.])],
        "giraffe.jpg" => vec![r("zebra", 0.56, [255., 288., 55., 141.])],
        _ => vec![],
    }
}

#[test]
fn yolo_fastest_detects_the_reference_objects() {
    if assets().is_none() {
        return;
    }
    for image in ["dog.jpg", "giraffe.jpg", "eagle.jpg", "astronaut.png"] {
        let out = tlc(&["run", "specs/yolo.yaml", "--image", &photo(image), "--json"]);
        assert!(out.status.success(), "{image}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let got = dets_of(&v["detections"]);
        let mut want = issue_reference(image);
        want.extend(reference_extras(image));
        assert_same_set(image, &got, &want, 0.0051, 0.85);
        // JPEG decoding (libjpeg-turbo's) and OpenCV's resize are bit-exact: the issue's
        // integer boxes are reproduced exactly.
        for w in issue_reference(image) {
            assert!(got.iter().any(|g| g.label == w.label && g.xyxy == w.xyxy), "{image}: no exact box for {w:?} in {got:?}");
        }
    }
}

/// OpenCV's `rectOverlap` on integer `[x1, y1, x2, y2]` rectangles: integer areas,
/// `1.f - (float)(1.0 - Aab / (Aa + Ab - Aab))`, 1 when both areas are 0.
fn opencv_overlap(a: &[f64; 4], b: &[f64; 4]) -> f32 {
    let area = |r: &[f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let (ix, iy) = (a[2].min(b[2]) - a[0].max(b[0]), a[3].min(b[3]) - a[1].max(b[1]));
    let inter = if ix <= 0.0 || iy <= 0.0 { 0.0 } else { ix * iy };
    if area(a) + area(b) <= 0.0 {
        return 1.0;
    }
    1.0 - (1.0 - inter / (area(a) + area(b) - inter)) as f32
}

/// `verify_yolofastest.py` on OpenCV's own decoded rows (the golden's `decoded_*`): argmax
/// class, `conf > 0.3`, integer boxes, class-agnostic `cv2.dnn.NMSBoxes(…, 0.3, 0.45)`.
fn reference_script_on_golden(golden: &std::collections::HashMap<String, candle_core::Tensor>, (w, h): (f64, f64)) -> Vec<Det> {
    let names = tlc_runtime::labels::names(&tlc_compiler::ir::Labels::Builtin("coco".into()));
    let mut cands = Vec::new();
    for k in ["decoded_10x10", "decoded_20x20"] {
        let rows: Vec<Vec<f32>> = golden[k].get(0).unwrap().to_vec2().unwrap();
        for row in rows {
            let (c, s) = row[5..].iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
            if s > 0.3 {
                let (cx, cy, bw, bh) = (row[0] as f64 * w, row[1] as f64 * h, row[2] as f64 * w, row[3] as f64 * h);
                // Python's int() truncates towards zero.
                let b = [(cx - bw / 2.0).trunc(), (cy - bh / 2.0).trunc(), bw.trunc(), bh.trunc()];
                cands.push(Det { label: names[c].clone(), score: s as f64, xyxy: xywh(b[0], b[1], b[2], b[3]) });
            }
        }
    }
    cands.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap());
    let mut keep: Vec<Det> = Vec::new();
    for c in cands {
        if keep.iter().all(|k| opencv_overlap(&k.xyxy, &c.xyxy) <= 0.45f32) {
            keep.push(c);
        }
    }
    keep
}

#[test]
fn dog_matches_the_reference_script_on_the_opencv_golden() {
    let Some(a) = assets() else { return };
    let golden = candle_core::safetensors::load(a.join("weights/yolo-fastest-1.1.dog-golden.safetensors"), &Device::Cpu).unwrap();
    let want = reference_script_on_golden(&golden, (768.0, 576.0));
    let out = tlc(&["run", "specs/yolo.yaml", "--image", &photo("dog.jpg"), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = dets_of(&serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["detections"]);
    assert_same_set("dog.jpg vs OpenCV", &got, &want, 0.01, 0.9);
    // The same set as the issue's list plus the documented extras.
    let mut listed = issue_reference("dog.jpg");
    listed.extend(reference_extras("dog.jpg"));
    assert_same_set("dog.jpg reference script vs issue", &want, &listed, 0.01, 0.8);
}

/// tlc's decoding and reference NMS on the heads it computes from the golden's input (OpenCV's
/// blob of dog.jpg, 768x576 resized to 320x320): what `tlc run` does after preprocessing.
fn tlc_on_golden_input(golden: &std::collections::HashMap<String, candle_core::Tensor>, assets: &std::path::Path) -> Vec<Det> {
    use tlc_runtime::detect::{decode_darknet, finish, NmsMode, Post};
    let graph = compile_spec("specs/yolo.yaml", None);
    let heads: Vec<_> = graph.nodes().filter(|(_, n)| matches!(n.op, tlc_compiler::ir::Op::YoloHead { .. })).map(|(i, _)| i).collect();
    let w = Weights::load(&assets.join("weights/yolo-fastest-1.1.safetensors")).unwrap();
    let model = Model::from_weights(graph, &w, false, &Device::Cpu).unwrap();
    let (_, outs) = model.forward_with(&golden["input"], &heads).unwrap();
    let mut cands = Vec::new();
    for (id, t) in heads.iter().zip(&outs) {
        let tlc_compiler::ir::Op::YoloHead { classes, anchors, mask, scale_xy } = &model.graph.node(*id).op else { unreachable!() };
        cands.extend(decode_darknet(&t.get(0).unwrap(), anchors, mask, *classes, *scale_xy as f32, (320, 320), 0.3).unwrap());
    }
    let p = Post { net_hw: (320, 320), scale: ((320.0 / 576.0) as f32, (320.0 / 768.0) as f32), pad: (0.0, 0.0), iou: 0.45, mode: NmsMode::reference(true), clip: None, max_det: None };
    let names = tlc_runtime::labels::names(&tlc_compiler::ir::Labels::Builtin("coco".into()));
    let dets = finish(&cands, &p, &names);
    dets.iter().map(|d| Det { label: d.label.clone(), score: d.score as f64, xyxy: d.bbox.map(|v| v as f64) }).collect()
}

#[test]
fn reference_nms_reproduces_the_script_boxes_exactly_on_the_golden_input() {
    let Some(a) = assets() else { return };
    let golden = candle_core::safetensors::load(a.join("weights/yolo-fastest-1.1.dog-golden.safetensors"), &Device::Cpu).unwrap();
    let want = reference_script_on_golden(&golden, (768.0, 576.0));
    let got = tlc_on_golden_input(&golden, &a);
    assert_eq!(got.len(), want.len(), "{got:#?} vs {want:#?}");
    for (g, w) in got.iter().zip(&want) {
        eprintln!("{:<8} {:.4} (script {:.4})  {:?} (script {:?})", g.label, g.score, w.score, g.xyxy, w.xyxy);
        assert!(g.label == w.label && (g.score - w.score).abs() < 1e-4 && g.xyxy == w.xyxy, "{g:?} vs the script's {w:?}");
    }
}

#[test]
fn class_wise_nms_keeps_boxes_the_reference_suppresses() {
    if assets().is_none() {
        return;
    }
    let out = tlc(&["run", "specs/yolo.yaml", "--image", &photo("dog.jpg"), "--json", "--nms", "class"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = dets_of(&serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["detections"]);
    assert!(got.iter().any(|d| d.label == "cat"), "{got:#?}");
    assert_eq!(got.len(), 7, "{got:#?}");
}

#[test]
fn yolov8n_fixture_output_decodes_to_boxes_inside_the_image() {
    use tlc_runtime::detect::{decode_v8, finish, NmsMode, Post};
    let Some(s) = shared() else { return };
    let y = candle_core::Tensor::read_npy(s.join("parity/yolov8n/output.npy")).unwrap().to_dtype(candle_core::DType::F32).unwrap();
    assert_eq!(y.dims(), &[1, 84, 8400]);
    let cands = decode_v8(&y.get(0).unwrap(), (640, 640), 0.25).unwrap();
    // The fixture's formula weights give arbitrary boxes; the input image is the 640x640 tensor.
    let p = Post { net_hw: (640, 640), scale: (1.0, 1.0), pad: (0.0, 0.0), iou: 0.45, mode: NmsMode::ClassWise, clip: Some((640, 640)), max_det: Some(300) };
    let dets = finish(&cands, &p, &tlc_runtime::labels::names(&tlc_compiler::ir::Labels::Builtin("coco".into())));
    eprintln!("yolov8n fixture: {} candidates above 0.25, {} after NMS", cands.len(), dets.len());
    assert!(!dets.is_empty() && dets.len() <= cands.len().min(300));
    for d in &dets {
        let [x1, y1, x2, y2] = d.bbox;
        assert!(d.bbox.iter().all(|v| v.is_finite() && (0.0..=640.0).contains(v)), "{d:?}");
        assert!(x1 <= x2 && y1 <= y2, "{d:?}");
        assert!(d.score > 0.25 && d.class < 80 && !d.label.is_empty(), "{d:?}");
    }
    for w in dets.windows(2) {
        assert!(w[0].score >= w[1].score);
    }
}

#[test]
fn yolov8_variants_check_with_ultralytics_parameter_counts() {
    for (v, millions) in [("n", 3.2), ("s", 11.2), ("m", 25.9), ("l", 43.7), ("x", 68.2)] {
        let out = tlc(&["check", "specs/yolov8.yaml", "--variant", v]);
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{v}: {line}{}", String::from_utf8_lossy(&out.stderr));
        // "... N parameters (T trainable) ..."
        let t: f64 = line.split(" trainable)").next().unwrap().rsplit('(').next().unwrap().trim().parse().unwrap_or_else(|_| panic!("{line}"));
        eprintln!("yolov8{v}: {:.3}M trainable (Ultralytics {millions}M)", t / 1e6);
        assert!((t / 1e6 - millions).abs() <= 0.05, "yolov8{v}: {t} trainable vs {millions}M");
    }
}

#[test]
fn save_writes_an_annotated_image() {
    if assets().is_none() {
        return;
    }
    let d = scratch("save");
    let out_path = d.join("dog-annotated.jpg");
    let out = tlc(&["run", "specs/yolo.yaml", "--image", &photo("dog.jpg"), "--save", out_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let src = tlc_runtime::preprocess::load_image(std::path::Path::new(&photo("dog.jpg"))).unwrap().into_rgb8();
    let img = tlc_runtime::preprocess::load_image(&out_path).unwrap().into_rgb8();
    assert_eq!(img.dimensions(), src.dimensions());
    // The car's box (453, 76)-(683, 179) is drawn 2 px wide: its top edge is now the class colour.
    let c = tlc_runtime::draw::class_color(2);
    let px = img.get_pixel(560, 77);
    assert!((0..3).all(|k| (px[k] as i32 - c[k] as i32).abs() < 40), "{px:?} vs {c:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn folder_in_batches_gives_a_list_and_saves_a_folder() {
    if assets().is_none() {
        return;
    }
    let d = scratch("folder");
    let input = d.join("in");
    std::fs::create_dir_all(&input).unwrap();
    for f in ["dog.jpg", "eagle.jpg", "giraffe.jpg"] {
        std::fs::copy(photo(f), input.join(f)).unwrap();
    }
    std::fs::write(input.join("notes.txt"), "not an image").unwrap();
    let saved = d.join("annotated");
    let out = tlc(&["run", "specs/yolo.yaml", "--image", input.to_str().unwrap(), "--batch", "2", "--json", "--save", saved.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v.as_array().expect("several images give a list");
    assert_eq!(list.len(), 3);
    for (entry, f) in list.iter().zip(["dog.jpg", "eagle.jpg", "giraffe.jpg"]) {
        assert!(entry["file"].as_str().unwrap().ends_with(f), "{entry}");
        let mut want = issue_reference(f);
        want.extend(reference_extras(f));
        // Batching does not change the results.
        assert_same_set(f, &dets_of(&entry["detections"]), &want, 0.05, 0.8);
        let img = tlc_runtime::preprocess::load_image(&saved.join(f)).unwrap();
        assert!(img.width() > 0);
    }
    assert_eq!(std::fs::read_dir(&saved).unwrap().count(), 3);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn unreadable_images_are_clear_errors() {
    let d = scratch("bad");
    let truncated = d.join("truncated.jpg");
    let missing = d.join("missing.jpg");
    let mut cases = vec![("Cargo.toml".to_string(), "Cargo.toml".to_string()), (missing.display().to_string(), "missing.jpg".into())];
    if let Some(a) = assets() {
        let bytes = std::fs::read(a.join("photos/dog.jpg")).unwrap();
        std::fs::write(&truncated, &bytes[..2000]).unwrap();
        cases.push((truncated.display().to_string(), "truncated.jpg".into()));
    }
    // Without ../shared there are no Yolo-Fastest weights: YOLOv8 runs randomly initialised.
    let spec = if assets().is_some() { "specs/yolo.yaml" } else { "specs/yolov8.yaml" };
    for (path, name) in cases {
        let out = tlc(&["run", spec, "--image", &path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path}: {err}");
        assert!(err.contains(&name) && err.contains("error:") && !err.contains("panicked"), "{path}: {err}");
    }
    let _ = std::fs::remove_dir_all(&d);
}


/// `tlc run --input X.npy --save-output Y.npy` on a detection spec saves the raw head output
/// (issue 12): YOLOv8n's `[1, 84, 8400]` on the parity fixture's input and formula weights.
#[test]
fn raw_detection_outputs_from_a_tensor_input() {
    let fx = shared().unwrap().join("parity/yolov8n");
    let out_path = scratch("raw").join("y.npy");
    let (weights, input) = (fx.join("weights.safetensors"), fx.join("input.npy"));
    let args = ["run", "specs/yolov8.yaml", "--variant", "n", "--weights", weights.to_str().unwrap(), "--input", input.to_str().unwrap(), "--save-output", out_path.to_str().unwrap()];
    let out = tlc(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = candle_core::Tensor::read_npy(&out_path).unwrap();
    let want = candle_core::Tensor::read_npy(fx.join("output.npy")).unwrap();
    let (max, std) = max_diff_and_std(&got, &want);
    assert!(max <= 1e-3 * std, "max |diff| {max} vs std {std}");
    // Without --save-output there is nothing to do with a raw detection output: a clear error.
    let out = tlc(&args[..args.len() - 2]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--save-output"));
}
