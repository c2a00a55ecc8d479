//! Mutation fuzzing of the compiler front end: each case takes a spec from `specs/`, applies
//! one random edit (a character, a token, a line, or a number set to 0 / -1 / 10^9) and
//! compiles it. The compiler must never panic, must finish quickly, and every error must point
//! at a valid place (non-empty span, valid line/column) in a file it read.

mod common;

use proptest::prelude::*;
use proptest::sample::Index;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tlc_compiler::diag::Severity;
use tlc_compiler::span::MemoryLoader;
use tlc_compiler::{compile, render, Options};

/// What [`corpus`] returns.
type Corpus = (Vec<String>, Vec<(String, String)>);

/// Every file of `specs/` as (`specs/name.yaml`, text), sorted; the first list holds the
/// specs with a graph (the ones mutated).
fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut files: Vec<(String, String)> = std::fs::read_dir(common::root().join("specs"))
            .expect("specs/")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .map(|n| {
                let text = std::fs::read_to_string(common::root().join("specs").join(&n)).unwrap();
                (format!("specs/{n}"), text)
            })
            .collect();
        files.sort();
        let models = files.iter().filter(|(_, t)| t.lines().any(|l| l.starts_with("graph:"))).map(|(n, _)| n.clone()).collect();
        (models, files)
    })
}

/// Characters inserted or substituted: YAML and expression syntax, digits, letters.
const CHARS: &[char] = &['[', ']', '(', ')', '{', '}', ':', ',', '-', '#', '"', '\'', ' ', '\n', '\t', '=', '*', '/', '>', '@', '|', '&', '!', '0', '1', '9', 'a', 'k', 'x', '_', '.', 'é'];

/// Tokens inserted or substituted.
const TOKENS: &[&str] = &[
    "conv", "bn", "relu", "linear", "concat", "add", "repeat:", "dense:", "residual:", "branches:", "skip:", "post:", "do:", "from:",
    "name:", "graph:", "blocks:", "import:", "in", "in_channels", "i", "-1", "0", "1e308", "999999999999999999999", "->", "@x", "[",
    "]", "{", "}", "(", ")", "\n  - ", "\n", ": ", "k=", "s=0", "p=-1", "groups=7", "\"", "&a", "*a", "!!str", "? ", "{i}", "//0",
];

/// Byte offsets of character boundaries of `s` (including the end).
fn boundaries(s: &str) -> Vec<usize> {
    s.char_indices().map(|(i, _)| i).chain(std::iter::once(s.len())).collect()
}

/// Byte ranges of tokens: runs of identifier characters or digits, or one other non-space char.
fn tokens(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if c.is_whitespace() {
            continue;
        }
        let mut end = i + c.len_utf8();
        if c.is_alphanumeric() || c == '_' || c == '.' {
            while let Some(&(j, d)) = it.peek() {
                if d.is_alphanumeric() || d == '_' || d == '.' {
                    end = j + d.len_utf8();
                    it.next();
                } else {
                    break;
                }
            }
        }
        out.push((i, end));
    }
    out
}

/// Byte ranges of integer literals.
fn numbers(s: &str) -> Vec<(usize, usize)> {
    tokens(s).into_iter().filter(|&(a, b)| s[a..b].chars().all(|c| c.is_ascii_digit())).collect()
}

/// Applies mutation `kind` to `text`, choosing positions and replacements with `a` and `b`.
fn mutate(text: &str, kind: u8, a: Index, b: Index) -> (String, String) {
    let mut s = text.to_string();
    let desc;
    match kind {
        0 => {
            let bs = boundaries(text);
            let i = a.index(bs.len() - 1);
            s.replace_range(bs[i]..bs[i + 1], "");
            desc = format!("delete char at byte {}", bs[i]);
        }
        1 => {
            let bs = boundaries(text);
            let at = bs[a.index(bs.len())];
            let c = CHARS[b.index(CHARS.len())];
            s.insert(at, c);
            desc = format!("insert {c:?} at byte {at}");
        }
        2 => {
            let bs = boundaries(text);
            let i = a.index(bs.len() - 1);
            let c = CHARS[b.index(CHARS.len())];
            s.replace_range(bs[i]..bs[i + 1], &c.to_string());
            desc = format!("replace char at byte {} with {c:?}", bs[i]);
        }
        3..=5 => {
            let ts = tokens(text);
            let (x, y) = ts[a.index(ts.len())];
            let t = TOKENS[b.index(TOKENS.len())];
            match kind {
                3 => {
                    s.replace_range(x..y, "");
                    desc = format!("delete token {:?} at byte {x}", &text[x..y]);
                }
                4 => {
                    s.insert_str(x, t);
                    desc = format!("insert token {t:?} at byte {x}");
                }
                _ => {
                    s.replace_range(x..y, t);
                    desc = format!("replace token {:?} at byte {x} with {t:?}", &text[x..y]);
                }
            }
        }
        6 | 7 => {
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            let i = a.index(lines.len());
            let mut out: Vec<&str> = lines.clone();
            if kind == 6 {
                out.insert(i, lines[i]);
                desc = format!("duplicate line {}", i + 1);
            } else {
                out.remove(i);
                desc = format!("delete line {}", i + 1);
            }
            s = out.concat();
        }
        _ => {
            let ns = numbers(text);
            if ns.is_empty() {
                return (s, "no number to change".into());
            }
            let (x, y) = ns[a.index(ns.len())];
            let v = ["0", "-1", "1000000000"][b.index(3)];
            s.replace_range(x..y, v);
            desc = format!("number {:?} at byte {x} -> {v}", &text[x..y]);
        }
    }
    (s, desc)
}

/// Compiles `text` as `path` beside the untouched spec files; checks the invariants.
fn check(path: &str, text: &str, desc: &str) -> Result<(), TestCaseError> {
    let (_, files) = corpus();
    let mut loader = MemoryLoader::default();
    for (n, t) in files {
        loader.0.insert(n.clone(), t.clone());
    }
    loader.0.insert(path.to_string(), text.to_string());
    let start = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| compile(path, &loader, &Options::default())));
    let took = start.elapsed();
    let c = match result {
        Ok(c) => c,
        Err(_) => return Err(TestCaseError::fail(format!("{path}: compile() panicked after `{desc}`\n---\n{text}"))),
    };
    prop_assert!(took < Duration::from_secs(3), "{}: compiling took {:?} after `{}`", path, took, desc);
    let rendered = catch_unwind(AssertUnwindSafe(|| render::render_plain(&c.diagnostics, &c.sources)));
    prop_assert!(rendered.is_ok(), "{}: rendering the diagnostics panicked after `{}`", path, desc);
    let errors = c.diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    prop_assert_eq!(c.graph.is_some(), errors == 0, "{}: graph presence disagrees with the errors after `{}`", path, desc);
    for d in &c.diagnostics {
        let span = d.span();
        prop_assert!(span.file < c.sources.len(), "{}: {} points at no file after `{}`", path, d.code, desc);
        let src = c.sources.text(span.file);
        let ok = span.start < span.end
            && span.end as usize <= src.len()
            && src.is_char_boundary(span.start as usize)
            && src.is_char_boundary(span.end as usize);
        prop_assert!(
            ok,
            "{}: {} `{}` has a bad primary span {:?} ({} bytes) after `{}`\n{}",
            path,
            d.code,
            d.message,
            span,
            src.len(),
            desc,
            rendered.as_ref().unwrap()
        );
        let (line, col) = c.sources.line_col(span.file, span.start);
        prop_assert!(line >= 1 && line <= src.lines().count().max(1) && col >= 1, "{}: {} at {}:{} is outside the file after `{}`", path, d.code, line, col, desc);
    }
    Ok(())
}

proptest! {
    // 300 cases by default (about a second in release); `PROPTEST_CASES=20000` for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300),
        failure_persistence: None,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn one_edit_mutations_never_panic(spec in any::<Index>(), kind in 0u8..9, a in any::<Index>(), b in any::<Index>()) {
        let (models, files) = corpus();
        let path = &models[spec.index(models.len())];
        let text = &files.iter().find(|(n, _)| n == path).unwrap().1;
        let (mutated, desc) = mutate(text, kind, a, b);
        check(path, &mutated, &desc)?;
    }
}

/// The unmutated corpus passes the same checks (sanity of the harness).
#[test]
fn unmutated_specs_pass_the_checks() {
    let (models, files) = corpus();
    for path in models {
        let text = &files.iter().find(|(n, _)| n == path).unwrap().1;
        check(path, text, "no edit").unwrap();
    }
}
