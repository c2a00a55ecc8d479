//! Every spec in `specs/` (and each of its variants) compiles, satisfies the graph invariants,
//! and has its summary and collapsed DOT graph snapshotted with insta.
//!
//! Files without `graph:` (shared `*_common.yaml` block libraries) are skipped. Accept new
//! snapshots with `INSTA_UPDATE=always cargo test --release --test specs`.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use tlc_compiler::emit::{self, DotOptions};
use tlc_compiler::ir::{Graph, Op};
use tlc_compiler::span::SourceLoader;
use tlc_compiler::{compile, render, yaml, Options};

/// Reads files relative to the repository root (machine-independent names).
struct RootLoader;

impl SourceLoader for RootLoader {
    fn load(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(common::root().join(path)).map_err(|e| e.kind().to_string())
    }
}

/// `specs/*.yaml` that define a graph, sorted.
fn model_specs() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(common::root().join("specs"))
        .expect("specs/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .filter(|n| {
            let text = std::fs::read_to_string(common::root().join("specs").join(n)).unwrap_or_default();
            text.lines().any(|l| l.starts_with("graph:"))
        })
        .map(|n| format!("specs/{n}"))
        .collect();
    out.sort();
    out
}

/// Names listed under `variants:` of a spec.
fn variants(rel: &str) -> Vec<String> {
    let text = std::fs::read_to_string(common::root().join(rel)).unwrap();
    let Ok(root) = yaml::parse(0, &text) else { return Vec::new() };
    let mut diags = Vec::new();
    tlc_compiler::spec::read(0, &root, &mut diags).variants.into_iter().map(|(name, _, _)| name).collect()
}

/// Graph invariants; returns the problems found.
fn invariants(g: &Graph) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names = HashSet::new();
    for (i, n) in g.nodes() {
        if !names.insert(n.name.as_str()) {
            problems.push(format!("node name `{}` is used twice", n.name));
        }
        for inp in &n.inputs {
            if inp.index() >= i.index() {
                problems.push(format!("node `{}` reads `{}`, which comes after it", n.name, g.node(*inp).name));
            }
        }
        if n.inputs.is_empty() && !matches!(n.op, Op::Input) {
            problems.push(format!("node `{}` has no inputs", n.name));
        }
        if n.shape.is_none() {
            problems.push(format!("node `{}` has no known shape", n.name));
        }
    }
    match g.nodes().next() {
        Some((_, n)) if matches!(n.op, Op::Input) => {}
        _ => problems.push("the first node is not the input".into()),
    }
    let mut params = HashSet::new();
    for p in g.params() {
        if !params.insert(p.name.as_str()) {
            problems.push(format!("parameter `{}` is defined twice", p.name));
        }
        if p.shape.contains(&0) {
            problems.push(format!("parameter `{}` has an empty shape {:?}", p.name, p.shape));
        }
    }
    match &g.node(g.output).shape {
        Some(s) if !s.is_empty() && s.iter().all(|&d| d > 0) => {}
        other => problems.push(format!("output shape is {other:?}")),
    }
    if g.param_count() == 0 {
        problems.push("the model has no parameters".into());
    }
    problems
}

/// Whether `dot` (graphviz) can be run.
fn have_graphviz() -> bool {
    Command::new("dot").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
}

/// Validates DOT text: with graphviz through `dot -Tsvg`, otherwise by balanced braces/quotes.
fn check_dot(what: &str, text: &str, graphviz: bool) {
    assert!(text.starts_with("digraph "), "{what}: DOT does not start with `digraph`");
    let mut depth = 0i64;
    let mut in_str = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                assert!(depth >= 0, "{what}: unbalanced `}}` in DOT");
            }
            _ => {}
        }
    }
    assert!(!in_str, "{what}: unterminated string in DOT");
    assert_eq!(depth, 0, "{what}: unbalanced braces in DOT");
    if graphviz {
        let mut child = Command::new("dot").arg("-Tsvg").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("dot");
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{what}: `dot -Tsvg` failed:\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"), "{what}: `dot -Tsvg` wrote no SVG");
    }
}

#[test]
fn every_spec_and_variant_compiles_and_is_snapshotted() {
    let specs = model_specs();
    assert!(!specs.is_empty(), "no specs found");
    let graphviz = have_graphviz();
    if !graphviz {
        eprintln!("graphviz `dot` not found: checking DOT syntax by brace balance only");
    }
    for rel in &specs {
        let stem = rel.trim_start_matches("specs/").trim_end_matches(".yaml");
        let mut runs: Vec<Option<String>> = vec![None];
        runs.extend(variants(rel).into_iter().map(Some));
        for variant in runs {
            let what = match &variant {
                Some(v) => format!("{rel} --variant {v}"),
                None => rel.clone(),
            };
            let c = compile(rel, &RootLoader, &Options { variant: variant.clone() });
            let g = match c.graph {
                Some(g) => g,
                None => panic!("{what} does not compile:\n{}", render::render_plain(&c.diagnostics, &c.sources)),
            };
            let problems = invariants(&g);
            assert!(problems.is_empty(), "{what}: {}", problems.join("\n"));
            let dot = emit::dot(&g, &DotOptions { depth: Some(1), ..DotOptions::default() });
            check_dot(&what, &dot, graphviz);
            let name = match &variant {
                Some(v) => format!("{stem}@{v}"),
                None => stem.to_string(),
            };
            let mut settings = insta::Settings::clone_current();
            settings.set_description(what.clone());
            settings.set_omit_expression(true);
            settings.set_prepend_module_to_snapshot(false);
            settings.bind(|| {
                insta::assert_snapshot!(format!("summary__{name}"), emit::summary(&g));
                insta::assert_snapshot!(format!("dot__{name}"), dot);
            });
        }
    }
}
