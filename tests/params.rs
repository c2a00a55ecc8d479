//! For every parity fixture, the spec's parameter list equals the reference's `state_dict`
//! (names, shapes and order).

mod common;
use common::*;

#[test]
fn every_spec_matches_its_reference_parameter_list() {
    let Some(shared) = shared() else { return };
    let mut failures = Vec::new();
    for (fixture, spec, variant) in FIXTURES {
        if !root().join(spec).exists() {
            failures.push(format!("{spec}: missing"));
            continue;
        }
        failures.extend(difference(spec, *variant, &shared.join("parity").join(fixture)));
    }
    assert!(failures.is_empty(), "parameter lists differ:\n{}", failures.join("\n"));
}

/// The example ShuffleNetV2 spec lists torchvision's parameters (fixture in the repository).
#[test]
fn shufflenet_example_matches_torchvision_parameter_list() {
    let diff = difference("examples/shufflenet_v2.yaml", None, &root().join("tests/fixtures/shufflenet_v2_x1_0"));
    assert!(diff.is_none(), "{}", diff.unwrap());
}

/// How the spec's `(name, shape)` list differs from the fixture manifest's in `dir`, if it does.
fn difference(spec: &str, variant: Option<&str>, dir: &std::path::Path) -> Option<String> {
    let g = compile_spec(spec, variant);
    let ours: Vec<(String, Vec<usize>)> = g.params().map(|p| (p.name.clone(), p.shape.clone())).collect();
    let theirs = manifest_params(dir);
    if ours == theirs {
        return None;
    }
    let missing: Vec<_> = theirs.iter().filter(|p| !ours.contains(p)).take(5).collect();
    let extra: Vec<_> = ours.iter().filter(|p| !theirs.contains(p)).take(5).collect();
    Some(format!(
        "{spec} vs {}: {} ours vs {} reference; missing {missing:?}; unexpected {extra:?}{}",
        dir.display(),
        ours.len(),
        theirs.len(),
        if missing.is_empty() && extra.is_empty() { " (order differs)" } else { "" }
    ))
}

#[test]
fn a_missing_shared_folder_fails_with_where_to_get_it_unless_skipped() {
    let missing = root().join("../shared/no-such-fixture");
    let panic = std::panic::catch_unwind(|| require_shared(missing.clone(), false)).unwrap_err();
    let msg = panic.downcast_ref::<String>().unwrap();
    assert!(msg.contains("no-such-fixture") && msg.contains("make_fixtures.py") && msg.contains("TLC_SKIP_SHARED=1"), "{msg}");
    assert_eq!(require_shared(missing, true), None);
    assert_eq!(require_shared(root(), false), Some(root()));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `tlc dot SPEC | head -1`: the reader goes away after one line of 160 KB (more than a
    // pipe holds).
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_tlc"))
        .current_dir(root())
        .args(["dot", "specs/densenet201.yaml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("digraph"), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
}
