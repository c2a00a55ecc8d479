//! tlc compiler: spec text in, checked IR graph and diagnostics out.
//!
//! The pipeline: [`yaml`] reads the file keeping spans, [`spec`] reads its top level,
//! [`header`] evaluates variables and metadata, [`lower`] expands blocks and patterns into
//! the [`ir`] graph while [`ops`] checks shapes; [`emit`] prints DOT, summaries and
//! parameter lists. Files are read only through the [`span::SourceLoader`] handed in.

pub mod against;
pub mod checkpoint;
pub mod diag;
pub mod draw;
pub mod emit;
pub mod export;
pub mod expr;
pub mod header;
pub mod import;
pub mod ir;
pub mod lower;
pub mod meta;
pub mod ops;
pub mod passes;
pub mod render;
pub mod span;
pub mod spec;
pub mod surgery;
pub mod yaml;

use diag::Diagnostic;
use span::{SourceLoader, Sources, Span};

/// Result of a compilation: the graph when there were no errors, and all diagnostics.
pub struct Compiled {
    /// The checked graph (absent when any error was reported).
    pub graph: Option<ir::Graph>,
    /// Errors and warnings.
    pub diagnostics: Vec<Diagnostic>,
    /// Every file read, for rendering diagnostics.
    pub sources: Sources,
}

/// Options of a compilation.
#[derive(Default, Clone)]
pub struct Options {
    /// Variant to build (`--variant`); the spec's default otherwise.
    pub variant: Option<String>,
}

fn resolve_path(base: &str, rel: &str) -> String {
    if rel.starts_with('/') {
        return rel.to_string();
    }
    match base.rfind('/') {
        Some(i) => format!("{}/{}", &base[..i], rel),
        None => rel.to_string(),
    }
}

/// Reads a spec file and its imports; returns the main spec and all blocks.
pub(crate) fn read_all(path: &str, loader: &dyn SourceLoader, sources: &mut Sources, diags: &mut Vec<Diagnostic>) -> Option<(spec::Spec, Vec<spec::BlockDef>)> {
    let text = match loader.load(path) {
        Ok(t) => t,
        Err(e) => {
            diags.push(Diagnostic::error("E0003", Span::default(), format!("cannot read `{path}`: {e}")));
            return None;
        }
    };
    let file = sources.add(path, text);
    let root = match yaml::parse(file, sources.text(file)) {
        Ok(r) => r,
        Err(d) => {
            diags.push(d);
            return None;
        }
    };
    let main = spec::read(file, &root, diags);
    let mut blocks = Vec::new();
    let mut queue: Vec<(String, Span)> = main.imports.iter().map(|(p, s)| (resolve_path(path, p), *s)).collect();
    let mut seen = vec![path.to_string()];
    while let Some((p, span)) = queue.pop() {
        if seen.contains(&p) {
            continue;
        }
        seen.push(p.clone());
        let text = match loader.load(&p) {
            Ok(t) => t,
            Err(e) => {
                diags.push(Diagnostic::error("E0004", span, format!("cannot import `{p}`: {e}")).label("imported here"));
                continue;
            }
        };
        let f = sources.add(&p, text);
        match yaml::parse(f, sources.text(f)) {
            Ok(r) => {
                let s = spec::read(f, &r, diags);
                queue.extend(s.imports.iter().map(|(q, sp)| (resolve_path(&p, q), *sp)));
                for b in s.blocks {
                    if !main.blocks.iter().any(|m| m.name == b.name) && !blocks.iter().any(|x: &spec::BlockDef| x.name == b.name) {
                        blocks.push(b);
                    }
                }
            }
            Err(d) => diags.push(d),
        }
    }
    let mut all = main.blocks.clone();
    all.extend(blocks);
    Some((main, all))
}

/// Makes every label span of `d` a non-empty range of whole characters inside its file (a
/// last line of defence: an expression offset inside an escaped YAML string can land in the
/// middle of a character or past the scalar).
fn fit_spans(d: &mut Diagnostic, sources: &Sources) {
    for l in &mut d.labels {
        if l.span.file >= sources.len() {
            continue;
        }
        let text = sources.text(l.span.file);
        let mut start = (l.span.start as usize).min(text.len());
        let mut end = (l.span.end as usize).clamp(start, text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        while !text.is_char_boundary(end) {
            end += 1;
        }
        if start == end {
            if let Some(c) = text[end..].chars().next().filter(|c| *c != '\n') {
                end += c.len_utf8();
            } else if let Some(c) = text[..start].chars().next_back() {
                start -= c.len_utf8();
            }
        }
        l.span = Span::new(l.span.file, start, end);
    }
}

/// Compiles the spec at `path` (read through `loader`).
pub fn compile(path: &str, loader: &dyn SourceLoader, options: &Options) -> Compiled {
    let mut c = compile_inner(path, loader, options);
    for d in &mut c.diagnostics {
        fit_spans(d, &c.sources);
    }
    c
}

fn compile_inner(path: &str, loader: &dyn SourceLoader, options: &Options) -> Compiled {
    let mut sources = Sources::default();
    let mut diags = Vec::new();
    let Some((spec, blocks)) = read_all(path, loader, &mut sources, &mut diags) else {
        return Compiled { graph: None, diagnostics: diags, sources };
    };
    let (env, variant) = header::environment(&spec, options.variant.as_deref(), &mut diags);
    let meta = header::meta(&spec, &env, variant, &mut diags);
    let Some(body) = &spec.graph else {
        diags.push(Diagnostic::error("E0026", spec.span, "the spec has no `graph:`").label("this spec has no `graph:`").hint("add `graph:` with the list of layers"));
        return Compiled { graph: None, diagnostics: diags, sources };
    };
    let mut lowerer = lower::Lowerer::new(blocks);
    let input_span = spec.get("input").map(|n| n.span).unwrap_or(spec.span);
    let output = lowerer.lower_graph(body, Some(meta.input.clone()), env, input_span);
    diags.extend(lowerer.diags);
    if let Some(head) = &meta.head {
        if !lowerer.scopes.iter().any(|s| &s.name == head) && !lowerer.graph.node_weights().any(|n| &n.name == head) {
            let span = spec.get("head").map(|n| n.span).unwrap_or(spec.span);
            diags.push(Diagnostic::error("E0028", span, format!("`head: {head}` names no node or item of the graph")).hint("name the first layer of the classifier, e.g. `fc` or `classifier`"));
        }
    }
    let has_error = diags.iter().any(|d| d.severity == diag::Severity::Error);
    let graph = (!has_error).then_some(ir::Graph { meta, graph: lowerer.graph, output, scopes: lowerer.scopes, param_order: lowerer.param_order });
    Compiled { graph, diagnostics: diags, sources }
}

/// The variant names a spec declares, in order (empty when it has none or cannot be read).
pub fn variants(path: &str, loader: &dyn SourceLoader) -> Vec<String> {
    let mut sources = Sources::default();
    let mut diags = Vec::new();
    let Ok(text) = loader.load(path) else { return vec![] };
    let file = sources.add(path, text);
    match yaml::parse(file, sources.text(file)) {
        Ok(root) => spec::read(file, &root, &mut diags).variants.into_iter().map(|(name, _, _)| name).collect(),
        Err(_) => vec![],
    }
}
