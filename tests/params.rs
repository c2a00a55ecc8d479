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
        let g = compile_spec(spec, *variant);
        let ours: Vec<(String, Vec<usize>)> = g.params().map(|p| (p.name.clone(), p.shape.clone())).collect();
        let theirs = manifest_params(&shared.join("parity").join(fixture));
        if ours != theirs {
            let missing: Vec<_> = theirs.iter().filter(|p| !ours.contains(p)).take(5).collect();
            let extra: Vec<_> = ours.iter().filter(|p| !theirs.contains(p)).take(5).collect();
            failures.push(format!(
                "{spec} vs {fixture}: {} ours vs {} reference; missing {missing:?}; unexpected {extra:?}{}",
                ours.len(),
                theirs.len(),
                if missing.is_empty() && extra.is_empty() { " (order differs)" } else { "" }
            ));
        }
    }
    assert!(failures.is_empty(), "parameter lists differ:\n{}", failures.join("\n"));
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
