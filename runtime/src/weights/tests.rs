use super::*;
use std::path::PathBuf;

/// A network's `(name, shape)` parameter list.
type Expected = Vec<(String, Vec<usize>)>;

fn shared(rel: &str) -> Option<PathBuf> {
    crate::shared_asset(rel)
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tlc-weights-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn weights_real_efficientnet_pth_and_safetensors_identical() {
    let (Some(pth), Some(st)) = (
        shared("assets/weights/efficientnet-lite0-57934424.pth"),
        shared("assets/weights/efficientnet-lite0.safetensors"),
    ) else {
        return;
    };
    let a = Weights::load(&pth).unwrap();
    let b = Weights::load(&st).unwrap();
    for w in [&a, &b] {
        let n = w.names().filter(|n| !n.ends_with(IGNORED_SUFFIX)).count();
        assert_eq!(n, 247);
        assert_eq!(w.num_parameters(), 4_694_024);
        assert_eq!(w.get("_conv_stem.weight").unwrap().dims(), &[32, 3, 3, 3]);
        assert_eq!(w.get("_fc.weight").unwrap().dims(), &[1000, 1280]);
        assert_eq!(w.get("_conv_head.weight").unwrap().dims(), &[1280, 320, 1, 1]);
        assert_eq!(w.get("_fc.weight").unwrap().dtype(), DType::F32);
    }
    for (name, tb) in b.iter() {
        let ta = a.get(name).unwrap_or_else(|| panic!("{name} missing from the .pth"));
        assert_eq!(ta.dims(), tb.dims(), "{name}");
        assert_eq!(values(ta), values(tb), "{name}");
    }
    // The .pth against the .safetensors parameter list: exact match.
    let expected: Vec<(String, Vec<usize>)> = b.iter().map(|(n, t)| (n.to_string(), t.dims().to_vec())).collect();
    a.check(&expected, false).unwrap();
}

#[test]
fn weights_parity_mobilenet_v2_loads_and_checks() {
    let (Some(st), Some(man)) = (shared("parity/mobilenet_v2/weights.safetensors"), shared("parity/mobilenet_v2/manifest.json"))
    else {
        return;
    };
    let w = Weights::load(&st).unwrap();
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(man).unwrap()).unwrap();
    let expected: Vec<(String, Vec<usize>)> = serde_json::from_value(m["params"].clone()).unwrap();
    w.check(&expected, false).unwrap();
    let total: usize = expected.iter().filter(|(n, _)| !n.ends_with(IGNORED_SUFFIX)).map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(w.num_parameters(), total);
}

fn small() -> Weights {
    let dev = Device::Cpu;
    Weights::from_tensors([
        ("a.weight", Tensor::zeros((4, 3), DType::F32, &dev).unwrap()),
        ("a.bias", Tensor::zeros(4, DType::F64, &dev).unwrap()),
        ("extra", Tensor::zeros(2, DType::F32, &dev).unwrap()),
        ("bn.num_batches_tracked", Tensor::zeros((), DType::I64, &dev).unwrap()),
    ])
    .unwrap()
}

#[test]
fn weights_check_reports_everything() {
    let w = small();
    assert_eq!(w.len(), 4);
    assert_eq!(w.get("a.bias").unwrap().dtype(), DType::F32);
    let exp = vec![
        ("a.weight".to_string(), vec![4, 5]),
        ("a.bias".to_string(), vec![4]),
        ("b.weight".to_string(), vec![7]),
        ("other.num_batches_tracked".to_string(), vec![]),
    ];
    let e = w.check(&exp, false).unwrap_err();
    assert_eq!(e.missing, vec![("b.weight".to_string(), vec![7])]);
    assert_eq!(e.unexpected, vec![("extra".to_string(), vec![2])]);
    assert_eq!(e.mis_shaped, vec![("a.weight".to_string(), vec![4, 5], vec![4, 3])]);
    let msg = e.to_string();
    println!("{msg}");
    assert!(msg.contains("1 missing, 1 unexpected, 1 mis-shaped"), "{msg}");
    assert!(msg.contains("b.weight [7]"));
    assert!(msg.contains("extra [2]"));
    assert!(msg.contains("a.weight: expected [4, 5], found [4, 3]"));
    assert!(!msg.contains("num_batches_tracked"));
    let boxed: Box<dyn std::error::Error> = Box::new(e);
    assert!(boxed.to_string().starts_with("weights do not match"));

    // allow_missing tolerates the missing key only.
    let e = w.check(&exp, true).unwrap_err();
    assert!(e.missing.is_empty() && e.unexpected.len() == 1 && e.mis_shaped.len() == 1);
    let ok = vec![("a.weight".to_string(), vec![4, 3]), ("a.bias".to_string(), vec![4]), ("extra".to_string(), vec![2])];
    w.check(&ok, false).unwrap();
    w.check(&ok[..2], false).unwrap_err();
}

#[test]
fn weights_check_message_truncates_long_lists() {
    let w = Weights::default();
    let exp: Vec<(String, Vec<usize>)> = (0..45).map(|i| (format!("layer{i}.weight"), vec![i])).collect();
    let msg = w.check(&exp, false).unwrap_err().to_string();
    assert!(msg.contains("45 missing"));
    assert!(msg.contains("layer19.weight"));
    assert!(!msg.contains("layer20.weight"));
    assert!(msg.contains("... and 25 more"), "{msg}");
}

#[test]
fn weights_save_atomic_roundtrip() {
    let d = temp_dir("save");
    let p = d.join("w.safetensors");
    let dev = Device::Cpu;
    let t = Tensor::arange(0f32, 12., &dev).unwrap().reshape((3, 4)).unwrap();
    let h = Tensor::new(&[1.5f32, -2.0], &dev).unwrap().to_dtype(DType::F16).unwrap();
    // A stale temp file from an interrupted earlier write does not matter.
    std::fs::write(d.join("w.safetensors.tmp"), b"garbage").unwrap();
    save_safetensors(&[("t".into(), t.t().unwrap()), ("h".into(), h)], &p).unwrap();
    assert!(!d.join("w.safetensors.tmp").exists());
    let w = Weights::load(&p).unwrap();
    assert_eq!(w.get("t").unwrap().dims(), &[4, 3]);
    assert_eq!(values(w.get("t").unwrap()), vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
    assert_eq!(values(w.get("h").unwrap()), vec![1.5, -2.0]);
    // Overwriting replaces the file in one step.
    save_safetensors(&[("x".into(), Tensor::ones(2, DType::F32, &dev).unwrap())], &p).unwrap();
    let w = Weights::load(&p).unwrap();
    assert_eq!(w.names().collect::<Vec<_>>(), vec!["x"]);
    // Saving into a missing folder fails cleanly and leaves nothing behind.
    assert!(save_safetensors(&[], &d.join("nope/w.safetensors")).is_err());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn weights_corrupt_files_give_errors_naming_the_file() {
    let d = temp_dir("corrupt");
    let mut cases: Vec<PathBuf> = Vec::new();
    let empty = d.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    cases.push(empty);
    let text = d.join("notes.safetensors");
    std::fs::write(&text, "these are not weights\n".repeat(10)).unwrap();
    cases.push(text);
    let text_pth = d.join("notes.pth");
    std::fs::write(&text_pth, "PK\u{3}\u{4} not really a zip").unwrap();
    cases.push(text_pth);
    // A tiny header claiming a huge JSON length.
    let lying = d.join("lying.safetensors");
    let mut b = (1u64 << 40).to_le_bytes().to_vec();
    b.extend_from_slice(b"{\"a\":1}");
    std::fs::write(&lying, b).unwrap();
    cases.push(lying);
    for (rel, ext) in [
        ("assets/weights/efficientnet-lite0-57934424.pth", "pth"),
        ("assets/weights/efficientnet-lite0.safetensors", "safetensors"),
        ("assets/weights/yolo-fastest-1.1.safetensors", "safetensors"),
    ] {
        let Some(src) = shared(rel) else { continue };
        let bytes = std::fs::read(src).unwrap();
        let n = bytes.len();
        for (i, len) in [1, 2, 8, 9, 50, 100, 200, 1000, 5000, n / 3, n / 2, n - 1000, n - 9, n - 1].into_iter().enumerate() {
            let p = d.join(format!("trunc{i}-{}.{ext}", n - len));
            std::fs::write(&p, &bytes[..len]).unwrap();
            cases.push(p);
        }
    }
    for p in &cases {
        let e = Weights::load(p).expect_err(&format!("{} should not load", p.display()));
        let msg = format!("{e:#}");
        assert!(msg.contains(&p.display().to_string()), "{msg}");
    }
    let missing = d.join("missing.pth");
    let msg = format!("{:#}", Weights::load(&missing).unwrap_err());
    assert!(msg.contains("missing.pth"), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}

// ---- hand-written zip-format checkpoints (what torch.save writes since 1.6) ----

fn pk_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn pk_int(out: &mut Vec<u8>, v: usize) {
    out.push(b'J');
    out.extend_from_slice(&(v as i32).to_le_bytes());
}

fn pk_tuple(out: &mut Vec<u8>, v: &[usize]) {
    out.push(b'(');
    for &x in v {
        pk_int(out, x);
    }
    out.push(b't');
}

fn pk_tensor(out: &mut Vec<u8>, key: &str, storage_class: &str, numel: usize, size: &[usize], stride: &[usize]) {
    out.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    out.push(b'(');
    pk_str(out, "storage");
    out.extend_from_slice(format!("ctorch\n{storage_class}\n").as_bytes());
    pk_str(out, key);
    pk_str(out, "cpu");
    pk_int(out, numel);
    out.extend_from_slice(b"tQ");
    pk_int(out, 0);
    pk_tuple(out, size);
    pk_tuple(out, stride);
    out.push(0x89);
    out.extend_from_slice(b"ccollections\nOrderedDict\n)R");
    out.extend_from_slice(b"tR");
}

/// `{outer: OrderedDict(w = 2x3 f32 stored transposed, h = f16 [2]), "epoch": 3}` or the bare dict.
fn zip_checkpoint(path: &Path, outer: Option<&str>) {
    let mut p = vec![0x80, 2];
    if let Some(k) = outer {
        p.push(b'}');
        pk_str(&mut p, "epoch");
        pk_int(&mut p, 3);
        p.push(b's');
        pk_str(&mut p, k);
    }
    p.extend_from_slice(b"ccollections\nOrderedDict\n)R");
    pk_str(&mut p, "w");
    pk_tensor(&mut p, "0", "FloatStorage", 6, &[2, 3], &[1, 2]);
    p.push(b's');
    pk_str(&mut p, "h");
    pk_tensor(&mut p, "1", "HalfStorage", 2, &[2], &[1]);
    p.push(b's');
    if outer.is_some() {
        p.push(b's');
    }
    p.push(b'.');
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", o).unwrap();
    z.write_all(&p).unwrap();
    z.start_file("archive/data/0", o).unwrap();
    for v in [0f32, 1., 2., 3., 4., 5.] {
        z.write_all(&v.to_le_bytes()).unwrap();
    }
    z.start_file("archive/data/1", o).unwrap();
    for v in [0.5f32, -3.0] {
        z.write_all(&half::f16::from_f32(v).to_le_bytes()).unwrap();
    }
    z.start_file("archive/version", o).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap();
}

#[test]
fn weights_zip_checkpoints_flat_and_nested() {
    let d = temp_dir("zip");
    for outer in [None, Some("state_dict"), Some("model"), Some("model_state_dict")] {
        let p = d.join(format!("{}.pt", outer.unwrap_or("flat")));
        zip_checkpoint(&p, outer);
        let w = Weights::load(&p).unwrap_or_else(|e| panic!("{outer:?}: {e:#}"));
        assert_eq!(w.len(), 2);
        // stride [1, 2] over 0..6 = the transpose of [[0,1],[2,3],[4,5]].
        assert_eq!(w.get("w").unwrap().dims(), &[2, 3]);
        assert_eq!(values(w.get("w").unwrap()), vec![0., 2., 4., 1., 3., 5.]);
        assert_eq!(values(w.get("h").unwrap()), vec![0.5, -3.0]);
    }
    // A nested dict under an unknown key is reported, not guessed.
    let p = d.join("odd.pt");
    zip_checkpoint(&p, Some("something_else"));
    let msg = format!("{:#}", Weights::load(&p).unwrap_err());
    assert!(msg.contains("no state dict found") && msg.contains("odd.pt"), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}

// ---- darknet `.weights` ----

/// Reads spec files from disk.
struct Disk;

impl tlc_compiler::span::SourceLoader for Disk {
    fn load(&self, path: &str) -> std::result::Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| e.to_string())
    }
}

/// The expected parameter list of a spec (path relative to the repository root).
fn spec_params(rel: &str) -> Vec<(String, Vec<usize>)> {
    spec_variant_params(rel, None)
}

fn spec_variant_params(rel: &str, variant: Option<&str>) -> Vec<(String, Vec<usize>)> {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(rel);
    let options = tlc_compiler::Options { variant: variant.map(str::to_string) };
    let c = tlc_compiler::compile(path.to_str().unwrap(), &Disk, &options);
    let g = c.graph.unwrap_or_else(|| panic!("{rel} does not compile: {:?}", c.diagnostics));
    crate::model::expected_params(&g)
}

/// Yolo-Fastest's darknet file (from `../shared`) and its spec's parameter list.
fn yolo_fastest() -> Option<(PathBuf, Expected)> {
    Some((shared("assets/weights/yolo-fastest-1.1.weights")?, spec_params("specs/yolo.yaml")))
}

#[test]
fn weights_darknet_yolo_fastest_equals_converted_safetensors() {
    let Some((dw, expected)) = yolo_fastest() else { return };
    let a = Weights::load_for(&dw, &expected).unwrap();
    let Some(converted) = shared("assets/weights/yolo-fastest-1.1.safetensors") else { return };
    let b = Weights::load(&converted).unwrap();
    let ka: Vec<&str> = a.names().collect();
    let kb: Vec<&str> = b.names().collect();
    assert_eq!(ka, kb);
    for (name, tb) in b.iter() {
        let ta = a.get(name).unwrap();
        assert_eq!(ta.dims(), tb.dims(), "{name}");
        let (va, vb) = (values(ta), values(tb));
        assert!(va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} differs");
    }
    a.check(&expected, false).unwrap();
    // Other extensions go to content sniffing: the safetensors loads through load_for too.
    let st = Weights::load_for(&converted, &expected).unwrap();
    assert_eq!(st.len(), b.len());
}

/// Writes `bytes` to a temporary `.weights` file and loads it for yolo-fastest's parameters.
fn load_darknet_bytes(tag: &str, bytes: &[u8], expected: &[(String, Vec<usize>)]) -> String {
    let d = temp_dir(tag);
    let p = d.join("net.weights");
    std::fs::write(&p, bytes).unwrap();
    let err = Weights::load_for(&p, expected).map(|_| ()).unwrap_err().to_string();
    let _ = std::fs::remove_dir_all(&d);
    assert!(!err.contains('\n'), "error spans several lines: {err}");
    assert!(err.contains("net.weights"), "error does not name the file: {err}");
    err
}

#[test]
fn weights_darknet_truncated_file() {
    let Some((dw, expected)) = yolo_fastest() else { return };
    let bytes = std::fs::read(dw).unwrap();
    let err = load_darknet_bytes("dn-trunc", &bytes[..bytes.len() - 100], &expected);
    // The last layer is the 255-channel output conv of the second head (layer 138): bias, then
    // weights [255, 96, 1, 1] = 97 920 bytes of which 100 are gone.
    let last = expected.iter().map(|(n, _)| n.split('.').nth(1).unwrap().parse::<usize>().unwrap()).max().unwrap();
    assert!(err.contains(&format!("layer {last} (layers.{last}.conv.weight")), "{err}");
    let w = &expected.iter().find(|(n, _)| *n == format!("layers.{last}.conv.weight")).unwrap().1;
    let need = w.iter().product::<usize>() * 4;
    assert!(err.contains(&format!("needs {need} bytes, {} left", need - 100)), "{err}");
    let err = load_darknet_bytes("dn-trunc2", &bytes[..5000], &expected);
    assert!(err.contains("file too short: layer "), "{err}");
}

#[test]
fn weights_darknet_trailing_bytes() {
    let Some((dw, expected)) = yolo_fastest() else { return };
    let mut bytes = std::fs::read(dw).unwrap();
    let body = bytes.len() - 20; // yolo-fastest's header is version 0.2.5 + 8-byte `seen`
    bytes.extend_from_slice(&[0u8; 12]);
    let err = load_darknet_bytes("dn-trail", &bytes, &expected);
    assert!(err.contains("12 trailing bytes after layer "), "{err}");
    assert!(err.contains(&format!("expects {body} bytes")), "{err}");
}

#[test]
fn weights_darknet_bad_header() {
    let Some((_, expected)) = yolo_fastest() else { return };
    let err = load_darknet_bytes("dn-short", &[0, 0, 0, 0, 2, 0], &expected);
    assert!(err.contains("bad header: the file has 6 bytes"), "{err}");
    let mut neg = (-1i32).to_le_bytes().to_vec();
    neg.extend_from_slice(&[0u8; 200]);
    let err = load_darknet_bytes("dn-neg", &neg, &expected);
    assert!(err.contains("bad header: version -1.0.0"), "{err}");
    let mut short_seen = [0i32, 2, 0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    short_seen.extend_from_slice(&[0u8; 4]);
    let err = load_darknet_bytes("dn-seen", &short_seen, &expected);
    assert!(err.contains("needs a 20-byte header, the file has 16 bytes"), "{err}");
    let err = load_darknet_bytes("dn-empty", &[], &expected);
    assert!(err.contains("bad header"), "{err}");
}

#[test]
fn weights_darknet_needs_darknet_names() {
    let Some((dw, _)) = yolo_fastest() else { return };
    let expected = spec_params("specs/mobilenet_v2.yaml");
    let err = Weights::load_for(&dw, &expected).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("yolo-fastest-1.1.weights") && err.contains("is not of the form layers.<i>.conv"), "{err}");
}

// ---- pickled nn.Module trees: Ultralytics release checkpoints, torch.save(model) ----

/// `tests/data/<name>` (made by scripts/make_ultralytics_pt.py).
fn test_data(name: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data")).join(name);
    assert!(p.exists(), "{} is missing: regenerate it with scripts/make_ultralytics_pt.py", p.display());
    p
}

#[test]
fn weights_ultralytics_release_pt_equals_fixture_in_fp16() {
    let w = Weights::load(&test_data("yolov8n-formula.pt")).unwrap();
    let Some(fixture) = shared("parity/yolov8n/weights.safetensors") else { return };
    let fx = Weights::load(&fixture).unwrap();
    let keys: Vec<&str> = w.names().filter(|n| !n.ends_with(IGNORED_SUFFIX)).collect();
    assert_eq!(keys, fx.names().collect::<Vec<_>>());
    assert_eq!(w.names().filter(|n| n.ends_with(IGNORED_SUFFIX)).count(), 57);
    for (name, t) in fx.iter() {
        let a = w.get(name).unwrap();
        assert_eq!(a.dims(), t.dims(), "{name}");
        assert_eq!(a.dtype(), DType::F32, "{name}");
        let rounded: Vec<u32> = values(t).iter().map(|&x| half::f16::from_f32(x).to_f32().to_bits()).collect();
        let got: Vec<u32> = values(a).iter().map(|x| x.to_bits()).collect();
        assert!(got == rounded, "{name}: not the fp16-rounded fixture values");
    }
    assert_eq!(values(w.get("model.22.dfl.conv.weight").unwrap()).len(), 16);
    w.check(&spec_variant_params("specs/yolov8.yaml", Some("n")), false).unwrap();
}

/// The state_dict keys of scripts/make_ultralytics_pt.py's `Tiny` module.
const TINY_KEYS: [&str; 13] = [
    "p_buf",
    "conv.weight",
    "conv.bias",
    "bn.weight",
    "bn.bias",
    "bn.running_mean",
    "bn.running_var",
    "bn.num_batches_tracked",
    "a.weight",
    "a.bias",
    "b.weight",
    "b.bias",
    "seq.1.weight",
];

#[test]
fn weights_pickled_module_tree_zip_protocol4_legacy_and_ema() {
    // tiny-ema-ckpt.pt: {"model": zeros, "ema": the module}, read as Ultralytics does (ema first).
    for file in ["tiny-module.pt", "tiny-module-p4.pt", "tiny-module-legacy.pt", "tiny-ema-ckpt.pt"] {
        let w = Weights::load(&test_data(file)).unwrap_or_else(|e| panic!("{file}: {e:#}"));
        let mut want: Vec<&str> = TINY_KEYS.to_vec();
        want.sort();
        assert_eq!(w.names().collect::<Vec<_>>(), want, "{file}");
        assert_eq!(w.get("p_buf").unwrap().dims(), &[3, 2], "{file}");
        assert_eq!(w.get("a.weight").unwrap().dims(), &[2, 3], "{file}");
        for (name, t) in w.iter() {
            let v = values(t);
            let n = v.len() as f32;
            let expect: Vec<f32> = if name.ends_with(IGNORED_SUFFIX) {
                vec![7.0]
            } else {
                (0..v.len()).map(|k| k as f32 / 4.0 + n).collect()
            };
            assert_eq!(v, expect, "{file}: {name}");
        }
    }
}
