//! `tlc check SPEC --against CKPT`, file-driven: every spec in `tests/against/` that has a
//! `graph:` names on its second line the checkpoint it is compared with (`# against: FILE.keys`:
//! torchvision `state_dict` names and shapes, one `name [shape]` per line). The test writes that
//! checkpoint as a safetensors file of zeros, runs the `tlc` binary, and snapshots its output and
//! exit code: specs named `ok_*` must match (exit 0), all others must not (exit 1).
//!
//! Accept new snapshots with `INSTA_UPDATE=always cargo test --release --test against`.

mod common;

use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use tlc_compiler::span::SourceLoader;
use tlc_compiler::{against, compile, render, Options};

/// Reads files relative to the repository root, so diagnostics name `tests/against/x.yaml`.
struct RootLoader;

impl SourceLoader for RootLoader {
    fn load(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(common::root().join(path)).map_err(|e| e.kind().to_string())
    }
}

/// `(spec, keys file)` of every case, sorted.
fn cases() -> Vec<(String, String)> {
    let dir = common::root().join("tests/against");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("tests/against")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .filter_map(|n| {
            let text = std::fs::read_to_string(dir.join(&n)).unwrap();
            if !text.lines().any(|l| l.starts_with("graph:")) {
                return None;
            }
            let keys = text.lines().nth(1).and_then(|l| l.strip_prefix("# against: ")).unwrap_or_else(|| panic!("{n}: the second line must be `# against: FILE.keys`"));
            Some((format!("tests/against/{n}"), format!("tests/against/{}", keys.trim())))
        })
        .collect();
    out.sort();
    out
}

/// The `(name, shape)` lines of a keys file (`#` lines are comments).
fn keys(rel: &str) -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(common::root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, shape) = l.split_once(' ').unwrap_or_else(|| panic!("{rel}: bad line `{l}`"));
            let dims = shape.trim().trim_start_matches('[').trim_end_matches(']');
            let dims = dims.split(',').filter(|d| !d.trim().is_empty()).map(|d| d.trim().parse().unwrap()).collect();
            (name.to_string(), dims)
        })
        .collect()
}

/// Writes the keys as a safetensors checkpoint of zeros in the test's scratch folder.
fn checkpoint(keys_file: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("against");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(Path::new(keys_file).file_stem().unwrap()).with_extension("safetensors");
    let tensors: Vec<(String, Tensor)> = keys(keys_file).into_iter().map(|(n, s)| (n, Tensor::zeros(s, candle_core::DType::F32, &Device::Cpu).unwrap())).collect();
    tlc_runtime::weights::save_safetensors(&tensors, &path).unwrap();
    path
}

#[test]
fn the_binary_explains_every_difference_with_the_checkpoint() {
    let cases = cases();
    assert!(cases.len() >= 6, "expected at least 6 cases, found {}", cases.len());
    for (spec, keys_file) in cases {
        let ckpt = checkpoint(&keys_file);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlc"))
            .current_dir(common::root())
            .args(["check", &spec, "--against"])
            .arg(&ckpt)
            .output()
            .unwrap();
        let code = out.status.code();
        let want = if spec.contains("/ok_") { 0 } else { 1 };
        let text = format!("exit {code:?}\n--- stdout\n{}--- stderr\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
            .replace(&ckpt.display().to_string(), "CKPT");
        assert_eq!(code, Some(want), "{spec}:\n{text}");
        let name = Path::new(&spec).file_stem().unwrap().to_string_lossy().into_owned();
        let description = std::fs::read_to_string(common::root().join(&spec)).unwrap().lines().next().unwrap().trim_start_matches('#').trim().to_string();
        let mut settings = insta::Settings::clone_current();
        settings.set_description(description);
        settings.set_omit_expression(true);
        settings.set_prepend_module_to_snapshot(false);
        settings.bind(|| insta::assert_snapshot!(format!("against__{name}"), text));
    }
}

/// Compiles a case and compares it with its keys in-process: the rendered diagnostics.
fn compared(spec: &str, keys_file: &str) -> (against::Comparison, String) {
    let c = compile(spec, &RootLoader, &Options::default());
    let g = c.graph.unwrap_or_else(|| panic!("{spec}:\n{}", render::render_plain(&c.diagnostics, &c.sources)));
    let cmp = against::compare(&g, &keys(keys_file));
    for d in &cmp.diagnostics {
        let span = d.span();
        let src = c.sources.text(span.file);
        assert!(span.start < span.end && span.end as usize <= src.len(), "{spec}: {} `{}` has no primary span in the file", d.code, d.message);
        let explained = ["E0501", "E0502", "E0503"].contains(&d.code);
        assert!(!explained || !d.hints.is_empty(), "{spec}: {} `{}` has no hint", d.code, d.message);
    }
    let text = render::render_plain(&cmp.diagnostics, &c.sources);
    (cmp, text)
}

/// The two naming mistakes users made get hints that say what to change, at the line to change.
#[test]
fn scope_level_mistakes_say_what_to_change() {
    let (cmp, text) = compared("tests/against/unnamed_block_in_named_item.yaml", "tests/against/efficientnet_b0_features_0_1.keys");
    assert_eq!((cmp.diagnostics.len(), cmp.moved, cmp.unexpected, cmp.missing), (2, 14, 0, 0), "{text}");
    assert!(text.contains("the spec's `features.1.block.0.0.0.weight` is `features.1.0.block.0.0.weight` in the checkpoint"), "{text}");
    assert!(text.contains("name the block call: write `block: mbconv_layers(...)`"), "{text}");
    assert!(text.contains("put the call in a list under the name: `\"1\":` then `- mbconv(...)`"), "{text}");
    assert!(text.contains("31 │       - \"1\": mbconv(16, k=3)") && text.contains("27 │         - mbconv_layers(c, k)"), "{text}");

    let (cmp, text) = compared("tests/against/flat_stages.yaml", "tests/against/mnasnet1_0_layers_0_9.keys");
    assert_eq!((cmp.diagnostics.len(), cmp.moved, cmp.matched), (1, 90, 15), "{text}");
    assert!(text.contains("the spec's `layers.9.layers.0.weight` is `layers.8.1.layers.0.weight` in the checkpoint"), "{text}");
    assert!(text.contains("the checkpoint groups them per stage") && text.contains("call a stage block once per stage"), "{text}");
}

#[test]
fn every_case_points_into_the_spec() {
    for (spec, keys_file) in cases() {
        let (cmp, text) = compared(&spec, &keys_file);
        assert_eq!(cmp.ok(), spec.contains("/ok_"), "{spec}:\n{text}");
        assert_eq!(cmp.ok(), cmp.diagnostics.is_empty(), "{spec}:\n{text}");
    }
}

/// A checkpoint that is not one is an I/O error (exit 2) naming the file, not a mismatch.
#[test]
fn an_unreadable_checkpoint_exits_2() {
    let bad = Path::new(env!("CARGO_TARGET_TMPDIR")).join("not_a_checkpoint.pth");
    std::fs::write(&bad, b"hello").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlc"))
        .current_dir(common::root())
        .args(["check", "tests/against/ok_squeezenet.yaml", "--against"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not_a_checkpoint.pth"), "{err}");
}

/// Every zoo spec matches its own parameter list; the usual ways a list goes wrong (a tensor
/// dropped, a wrapper prefix, a renamed or renumbered segment, another shape) are reported and
/// never panic.
#[test]
fn zoo_specs_match_themselves_and_mutations_are_reported() {
    let mut specs: Vec<String> = std::fs::read_dir(common::root().join("specs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| format!("specs/{}", e.file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".yaml") && std::fs::read_to_string(common::root().join(n)).unwrap().lines().any(|l| l.starts_with("graph:")))
        .collect();
    specs.push("examples/shufflenet_v2.yaml".into());
    for spec in specs {
        let g = common::compile_spec(&spec, None);
        let own: Vec<(String, Vec<usize>)> = g.params().map(|p| (p.name.clone(), p.shape.clone())).collect();
        assert!(against::compare(&g, &own).ok(), "{spec} does not match its own parameter list");
        let mid = own.len() / 2;
        let renumber = |n: &str| n.split('.').map(|s| s.parse::<usize>().map(|i| (i + 1).to_string()).unwrap_or(s.to_string())).collect::<Vec<_>>().join(".");
        type Mutation<'a> = (&'a str, Vec<(String, Vec<usize>)>);
        let mutations: Vec<Mutation> = vec![
            ("dropped", own.iter().enumerate().filter(|(i, _)| *i != mid).map(|(_, p)| p.clone()).collect()),
            ("prefixed", own.iter().map(|(n, s)| (format!("model.{n}"), s.clone())).collect()),
            ("renamed", own.iter().map(|(n, s)| (n.replacen('.', "_x.", 1), s.clone())).collect()),
            ("renumbered", own.iter().map(|(n, s)| (renumber(n), s.clone())).collect()),
            ("reshaped", own.iter().enumerate().map(|(i, (n, s))| (n.clone(), if i == mid { vec![s.iter().product::<usize>() + 1] } else { s.clone() })).collect()),
        ];
        for (what, list) in mutations.into_iter().filter(|(_, list)| *list != own) {
            let c = against::compare(&g, &list);
            assert!(!c.ok() && !c.diagnostics.is_empty(), "{spec}: the {what} list was accepted");
            assert_eq!(c.matched + c.moved + c.mis_shaped + c.unexpected, c.spec_tensors, "{spec}: {what}: every spec tensor is counted once");
        }
    }
}
