//! File-driven diagnostic tests: every spec in `tests/invalid/` must be rejected with
//! friendly diagnostics (primary span inside the file, no panic), snapshotted with insta.
//!
//! Each invalid spec starts with a `# comment` saying what is wrong with it. Accept new
//! snapshots with `INSTA_UPDATE=always cargo test --release --test diagnostics`.

mod common;

use std::time::{Duration, Instant};
use tlc_compiler::span::SourceLoader;
use tlc_compiler::{compile, render, Options};

/// Reads files relative to the repository root, so diagnostics name `tests/invalid/x.yaml`
/// whatever the machine.
struct RootLoader;

impl SourceLoader for RootLoader {
    fn load(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(common::root().join(path)).map_err(|e| e.kind().to_string())
    }
}

fn invalid_specs() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(common::root().join("tests/invalid"))
        .expect("tests/invalid")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

#[test]
fn invalid_specs_are_rejected_with_friendly_diagnostics() {
    let names = invalid_specs();
    assert!(names.len() >= 40, "expected at least 40 invalid specs, found {}", names.len());
    let mut problems: Vec<String> = Vec::new();
    let mut snapshots: Vec<(String, String, String)> = Vec::new();
    for file in &names {
        let rel = format!("tests/invalid/{file}");
        let text = std::fs::read_to_string(common::root().join(&rel)).unwrap();
        let first = text.lines().next().unwrap_or("");
        assert!(first.starts_with('#'), "{rel}: the first line must be a `# comment` saying what is wrong");
        macro_rules! check {
            ($cond:expr, $($fmt:tt)*) => {
                if !$cond {
                    problems.push(format!($($fmt)*));
                }
            };
        }
        let start = Instant::now();
        let c = std::panic::catch_unwind(|| compile(&rel, &RootLoader, &Options::default()))
            .unwrap_or_else(|_| panic!("{rel}: the compiler panicked"));
        let took = start.elapsed();
        check!(took < Duration::from_secs(2), "{rel}: compiling took {took:?}");
        check!(c.graph.is_none(), "{rel}: compiled although it is invalid");
        let errors = c.diagnostics.iter().filter(|d| d.severity == tlc_compiler::diag::Severity::Error).count();
        check!(errors > 0, "{rel}: no error reported");
        for d in &c.diagnostics {
            check!(!d.message.trim().is_empty(), "{rel}: empty message ({})", d.code);
            let span = d.span();
            check!(span.file < c.sources.len(), "{rel}: {} `{}` points at no file", d.code, d.message);
            let src = c.sources.text(span.file);
            check!(
                span.start < span.end && span.end as usize <= src.len(),
                "{rel}: {} `{}` has an empty or out-of-file primary span {:?} (file is {} bytes)",
                d.code,
                d.message,
                span,
                src.len()
            );
            check!(src.is_char_boundary(span.start as usize) && src.is_char_boundary(span.end as usize), "{rel}: span splits a character");
            let (line, col) = c.sources.line_col(span.file, span.start);
            let lines = src.lines().count().max(1);
            check!(line >= 1 && line <= lines && col >= 1, "{rel}: {} at {line}:{col} is outside the file", d.code);
            for f in &d.trace {
                check!(f.span.file < c.sources.len() && f.span.end as usize <= c.sources.text(f.span.file).len(), "{rel}: trace frame outside its file");
            }
        }
        let rendered = render::render_plain(&c.diagnostics, &c.sources);
        check!(!rendered.contains("Unable to"), "{rel}: codespan could not render a diagnostic:\n{rendered}");
        if std::env::var_os("TLC_DIAG_DUMP").is_some() {
            println!("==== {rel}\n{text}\n---- ({took:?})\n{rendered}");
        }
        let name = file.trim_end_matches(".yaml").to_string();
        snapshots.push((name, first.trim_start_matches('#').trim().to_string(), rendered));
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
    for (name, description, rendered) in snapshots {
        let mut settings = insta::Settings::clone_current();
        settings.set_description(description);
        settings.set_omit_expression(true);
        settings.set_prepend_module_to_snapshot(false);
        settings.bind(|| insta::assert_snapshot!(format!("invalid__{name}"), rendered));
    }
}

/// Two independent errors in one file are both reported.
#[test]
fn independent_errors_are_all_reported() {
    let rel = "tests/invalid/two_errors.yaml";
    let c = compile(rel, &RootLoader, &Options::default());
    let errors: Vec<_> = c.diagnostics.iter().filter(|d| d.severity == tlc_compiler::diag::Severity::Error).collect();
    assert!(errors.len() >= 2, "expected both errors, got:\n{}", render::render_plain(&c.diagnostics, &c.sources));
}

/// An error inside a block instance carries the expansion trace.
#[test]
fn errors_in_blocks_carry_a_trace() {
    let rel = "tests/invalid/error_in_block.yaml";
    let c = compile(rel, &RootLoader, &Options::default());
    assert!(c.diagnostics.iter().any(|d| !d.trace.is_empty()), "{}", render::render_plain(&c.diagnostics, &c.sources));
    let text = render::render_plain(&c.diagnostics, &c.sources);
    assert!(text.contains("in block `stage` (layer1)"), "{text}");
}

#[test]
fn colour_only_on_a_terminal_or_when_asked() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlc")).current_dir(common::root()).args(args).env("TERM", "xterm-256color").envs(env.iter().copied()).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("E0029"), "{err}");
        err.contains('\x1b')
    };
    let spec = "tests/invalid/weights_bad_hash.yaml";
    assert!(!run(&["check", spec], &[]), "a pipe gets no escape codes");
    assert!(run(&["check", spec, "--color", "always"], &[]));
    assert!(!run(&["check", spec, "--color", "never"], &[]));
    assert!(!run(&["check", spec, "--color", "auto"], &[("NO_COLOR", "1")]));
}
