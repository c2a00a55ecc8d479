use super::*;

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

#[test]
fn weights_find_weights() {
    let d = temp_dir("find");
    let a = d.join("a");
    let b = d.join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("net.safetensors"), b"x").unwrap();
    let path = format!("{}:{}", a.display(), b.display());
    assert_eq!(find_weights_in("net.safetensors", Some(path.clone())).unwrap(), b.join("net.safetensors"));
    let direct = b.join("net.safetensors");
    assert_eq!(find_weights_in(direct.to_str().unwrap(), None).unwrap(), direct);
    let msg = find_weights_in("other.pth", Some(path)).unwrap_err().to_string();
    assert!(msg.contains(&a.join("other.pth").display().to_string()), "{msg}");
    assert!(msg.contains(&b.join("other.pth").display().to_string()), "{msg}");
    assert!(msg.contains("TLC_WEIGHTS"));
    let msg = find_weights_in("other.pth", None).unwrap_err().to_string();
    assert!(msg.contains("TLC_WEIGHTS is not set") && msg.contains("export TLC_WEIGHTS="), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}
