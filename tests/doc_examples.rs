//! The examples of docs/spec-language.md, section "How names nest": each `yaml` block, compiled
//! as the body of a spec with `name: example` and `input: [3, 8, 8]`, must list exactly the
//! parameters of the `text` block after it, as `tlc params` prints them. The docs cannot drift
//! from the compiler.

mod common;

use tlc_compiler::span::MemoryLoader;
use tlc_compiler::{compile, render, Options};

/// `(yaml, expected)` pairs of the fenced blocks in `section`.
fn examples(section: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in section.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(lang)) => current = Some((lang.to_string(), String::new())),
            (Some(_), Some("")) => blocks.push(current.take().unwrap()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    let mut out = Vec::new();
    for pair in blocks.windows(2) {
        if pair[0].0 == "yaml" {
            assert_eq!(pair[1].0, "text", "every yaml example is followed by a text block with its parameters:\n{}", pair[0].1);
            out.push((pair[0].1.clone(), pair[1].1.clone()));
        }
    }
    out
}

#[test]
fn name_nesting_examples_list_their_parameters() {
    let doc = std::fs::read_to_string(common::root().join("docs/spec-language.md")).unwrap();
    let start = doc.find("\n## How names nest").expect("docs/spec-language.md has a section `How names nest`");
    let rest = &doc[start + 1..];
    let section = &rest[..rest[3..].find("\n## ").map(|i| i + 3).unwrap_or(rest.len())];
    let examples = examples(section);
    assert!(examples.len() >= 5, "expected at least 5 examples, found {}", examples.len());
    for (yaml, expected) in examples {
        let text = format!("name: example\ninput: [3, 8, 8]\n{yaml}");
        let loader = MemoryLoader([("example.yaml".to_string(), text)].into_iter().collect());
        let c = compile("example.yaml", &loader, &Options::default());
        let g = c.graph.unwrap_or_else(|| panic!("a docs example does not compile:\n{yaml}\n{}", render::render_plain(&c.diagnostics, &c.sources)));
        let listed: String = g.params().map(|p| format!("{} {:?}\n", p.name, p.shape)).collect();
        assert_eq!(listed, expected, "the docs list other names for:\n{yaml}");
    }
}
