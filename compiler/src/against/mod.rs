//! Comparing a spec's parameters with a checkpoint's `(name, shape)` list without running
//! anything (`tlc check --against`). Every difference becomes a [`Diagnostic`] at the spec
//! text that produced the name, with a hint when the names differ by a scope level, an index
//! shift or a renamed item.
//!
//! Tensors with equal names and shapes match. The others are explained by mappings
//! (`mapping.rs`): a spec module whose whole subtree is a checkpoint module's subtree under
//! another path; the difference of the two paths says what to change in the spec
//! (`explain.rs`). What is left is reported as mis-shaped, not in the checkpoint, or missing
//! from the spec (`report.rs`). Pure: the caller reads the checkpoint file.

mod explain;
mod mapping;
mod report;

use crate::diag::Diagnostic;
use crate::ir::{Graph, Node, Scope};
use crate::span::Span;
use mapping::{under, Mapping, Tensor};
use std::collections::HashMap;

/// Most diagnostics one comparison reports; the rest are counted in [`Comparison::omitted`].
pub const MAX_DIAGNOSTICS: usize = 12;

/// Names ending like this are bookkeeping, not weights: skipped on both sides.
const IGNORED_SUFFIX: &str = "num_batches_tracked";

/// The outcome of [`compare`]: diagnostics (errors) and counts of tensors.
#[derive(Debug)]
pub struct Comparison {
    /// One error per explained difference, in spec order, at most [`MAX_DIAGNOSTICS`].
    pub diagnostics: Vec<Diagnostic>,
    /// Diagnostics left out beyond [`MAX_DIAGNOSTICS`].
    pub omitted: usize,
    /// Tensors the spec defines (`num_batches_tracked` excluded, as below).
    pub spec_tensors: usize,
    /// Tensors the checkpoint holds.
    pub checkpoint_tensors: usize,
    /// Spec tensors with the same name and shape in the checkpoint.
    pub matched: usize,
    /// Spec tensors found in the checkpoint under another name.
    pub moved: usize,
    /// Spec tensors whose name the checkpoint has with another shape.
    pub mis_shaped: usize,
    /// Spec tensors the checkpoint does not have.
    pub unexpected: usize,
    /// Checkpoint tensors the spec does not define.
    pub missing: usize,
}

impl Comparison {
    /// Whether every tensor matches on both sides.
    pub fn ok(&self) -> bool {
        self.matched == self.spec_tensors && self.matched == self.checkpoint_tensors
    }

    /// One line: `NAME: ok: ...` when everything matches, else the counts of each kind of
    /// difference (`spec` names the spec, `checkpoint` the file).
    pub fn summary(&self, spec: &str, checkpoint: &str) -> String {
        if self.ok() {
            return format!("{spec}: ok: all {} tensors match {checkpoint} (names and shapes)", self.matched);
        }
        let mut parts = vec![format!("{} of {} spec tensors match by name and shape", self.matched, self.spec_tensors)];
        let counts = [
            (self.moved, "under another name"),
            (self.mis_shaped, "mis-shaped"),
            (self.unexpected, "not in the checkpoint"),
        ];
        parts.extend(counts.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")));
        if self.missing > 0 {
            parts.push(format!("{} of {} checkpoint tensors not in the spec", self.missing, self.checkpoint_tensors));
        }
        if self.matched == 0 && self.moved == 0 {
            parts.push("nothing in common: is it another model's checkpoint?".into());
        }
        let omitted = if self.omitted > 0 { format!(" ({} more diagnostics not shown)", self.omitted) } else { String::new() };
        format!("`{spec}` does not match {checkpoint}: {}{omitted}", parts.join(", "))
    }
}

/// Compares the parameters of `graph` with a checkpoint's `(name, shape)` list.
pub fn compare(graph: &Graph, checkpoint: &[(String, Vec<usize>)]) -> Comparison {
    let kept = |name: &str| !name.ends_with(IGNORED_SUFFIX);
    let spec: Vec<Tensor> = graph.params().filter(|p| kept(&p.name)).map(|p| (p.name.as_str(), p.shape.as_slice())).collect();
    let mut ckpt: Vec<Tensor> = checkpoint.iter().filter(|(n, _)| kept(n)).map(|(n, s)| (n.as_str(), s.as_slice())).collect();
    ckpt.sort_by(|a, b| mapping::natural_cmp(a.0, b.0));
    let ckpt_index: HashMap<&str, usize> = ckpt.iter().enumerate().map(|(j, (n, _))| (*n, j)).collect();
    let spec_names: HashMap<&str, usize> = spec.iter().enumerate().map(|(i, (n, _))| (*n, i)).collect();
    let clean = |(n, s): &Tensor, other: &[Tensor], index: &HashMap<&str, usize>| index.get(n).is_some_and(|&k| other[k].1 == *s);
    let spec_dirty: Vec<bool> = spec.iter().map(|t| !clean(t, &ckpt, &ckpt_index)).collect();
    let ckpt_dirty: Vec<bool> = ckpt.iter().map(|t| !clean(t, &spec, &spec_names)).collect();
    let mappings = mapping::find(&spec, &spec_dirty, &ckpt, &ckpt_dirty);
    let in_spec_mapping = |n: &str| mappings.iter().any(|m| under(n, &m.spec));
    let in_ckpt_mapping = |n: &str| mappings.iter().any(|m| under(n, &m.ckpt));
    let mut r = Report { constructs: Constructs::new(graph), spec: spec.clone(), ckpt: ckpt.clone(), mappings: mappings.clone(), ..Report::default() };
    let (mut matched, mut moved) = (0, 0);
    let mut paired = vec![false; ckpt.len()];
    for (i, (name, shape)) in spec.iter().enumerate() {
        if in_spec_mapping(name) {
            moved += 1;
            continue;
        }
        match ckpt_index.get(name).filter(|&&j| !in_ckpt_mapping(ckpt[j].0)) {
            Some(&j) if ckpt[j].1 == *shape => {
                matched += 1;
                paired[j] = true;
            }
            Some(&j) => {
                r.mis_shaped.push((i, j));
                paired[j] = true;
            }
            None => r.unexpected.push(i),
        }
    }
    r.missing = (0..ckpt.len()).filter(|&j| !paired[j] && !in_ckpt_mapping(ckpt[j].0)).collect();
    let mut diagnostics = explain::diagnostics(&r);
    diagnostics.extend(report::diagnostics(&r));
    let omitted = diagnostics.len().saturating_sub(MAX_DIAGNOSTICS);
    diagnostics.truncate(MAX_DIAGNOSTICS);
    Comparison {
        diagnostics,
        omitted,
        spec_tensors: spec.len(),
        checkpoint_tensors: ckpt.len(),
        matched,
        moved,
        mis_shaped: r.mis_shaped.len(),
        unexpected: r.unexpected.len(),
        missing: r.missing.len(),
    }
}

/// Everything the explanations need: both tensor lists and how they pair up.
#[derive(Default)]
struct Report<'a> {
    constructs: Constructs<'a>,
    spec: Vec<Tensor<'a>>,
    ckpt: Vec<Tensor<'a>>,
    mappings: Vec<Mapping>,
    /// `(spec index, checkpoint index)` of equal names with other shapes.
    mis_shaped: Vec<(usize, usize)>,
    /// Spec tensors without a counterpart.
    unexpected: Vec<usize>,
    /// Checkpoint tensors without a counterpart.
    missing: Vec<usize>,
}

/// The spec construct behind a path: a scope (block call, named item) or a node (a layer).
#[derive(Clone, Copy)]
enum Construct<'a> {
    Scope(&'a Scope),
    Node(&'a Node),
}

impl Construct<'_> {
    fn span(&self) -> Span {
        match self {
            Construct::Scope(s) => s.span,
            Construct::Node(n) => n.span,
        }
    }
}

/// Scopes and nodes by path, and the node owning each parameter.
#[derive(Default)]
struct Constructs<'a> {
    scopes: HashMap<&'a str, &'a Scope>,
    nodes: HashMap<&'a str, &'a Node>,
    owners: HashMap<&'a str, &'a Node>,
    /// The spec's last node: where a checkpoint module with no spec counterpart points.
    last: Option<&'a Node>,
}

impl<'a> Constructs<'a> {
    fn new(g: &'a Graph) -> Constructs<'a> {
        let mut c = Constructs::default();
        for s in &g.scopes {
            c.scopes.entry(s.name.as_str()).or_insert(s);
        }
        for n in g.graph.node_weights() {
            c.nodes.insert(n.name.as_str(), n);
            for p in &n.params {
                c.owners.insert(p.name.as_str(), n);
            }
        }
        c.last = Some(g.node(g.output));
        c
    }

    /// The scope or node named `path`.
    fn get(&self, path: &str) -> Option<Construct<'a>> {
        self.scopes.get(path).map(|s| Construct::Scope(s)).or_else(|| self.nodes.get(path).map(|n| Construct::Node(n)))
    }

    /// The construct of `path` or of its nearest ancestor that has one, with that path.
    fn nearest<'p>(&self, path: &'p str) -> Option<(&'p str, Construct<'a>)> {
        let mut p = path;
        loop {
            if let Some(c) = self.get(p) {
                return Some((p, c));
            }
            p = &p[..p.rfind('.')?];
        }
    }

    /// Where to point for `path`: its nearest construct, else the spec's last node.
    fn span_of(&self, path: &str) -> Span {
        match self.nearest(path) {
            Some((_, c)) => c.span(),
            None => self.last.map(|n| n.span).unwrap_or_default(),
        }
    }
}

/// The last segment of a dotted path.
fn last(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// The path without its last segment ("" at the top).
fn parent(path: &str) -> &str {
    path.rfind('.').map(|i| &path[..i]).unwrap_or("")
}

/// `a`, `b`, `c` and N more.
fn list(items: &[String], limit: usize) -> String {
    let mut s: Vec<String> = items.iter().take(limit).map(|i| format!("`{i}`")).collect();
    if items.len() > limit {
        s.push(format!("{} more", items.len() - limit));
    }
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::MemoryLoader;
    use crate::{compile, Options};

    fn graph(body: &str) -> Graph {
        let text = format!("name: t\ninput: [3, 8, 8]\ngraph:\n{body}");
        let loader = MemoryLoader([("t.yaml".to_string(), text)].into_iter().collect());
        compile("t.yaml", &loader, &Options::default()).graph.expect("compiles")
    }

    fn keys(list: &[(&str, &[usize])]) -> Vec<(String, Vec<usize>)> {
        list.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect()
    }

    #[test]
    fn equal_lists_match_and_batch_counters_are_ignored() {
        let g = graph("  - conv(4, k=1) -> bn\n");
        let ck = keys(&[("0.weight", &[4, 3, 1, 1]), ("0.bias", &[4]), ("1.weight", &[4]), ("1.bias", &[4]), ("1.running_mean", &[4]), ("1.running_var", &[4]), ("1.num_batches_tracked", &[])]);
        let c = compare(&g, &ck);
        assert!(c.ok() && c.diagnostics.is_empty(), "{c:?}");
        assert_eq!(c.summary("t", "x.pth"), "t: ok: all 6 tensors match x.pth (names and shapes)");
    }

    #[test]
    fn differences_are_counted_and_explained() {
        let g = graph("  - conv(4, k=1)\n  - extra: conv(4, k=1)\n");
        let ck = keys(&[("0.weight", &[8, 3, 1, 1]), ("0.bias", &[8]), ("fc.weight", &[10, 4])]);
        let c = compare(&g, &ck);
        assert_eq!((c.matched, c.mis_shaped, c.unexpected, c.missing), (0, 2, 2, 1), "{c:?}");
        let codes: Vec<&str> = c.diagnostics.iter().map(|d| d.code).collect();
        assert_eq!(codes, ["E0504", "E0505", "E0506"]);
        assert!(c.diagnostics[0].hints[0].contains("output channels 4 here, 8 in the checkpoint"), "{:?}", c.diagnostics[0]);
        assert!(c.summary("t.yaml", "x.pth").starts_with("`t.yaml` does not match x.pth: 0 of 4 spec tensors match"), "{}", c.summary("t.yaml", "x.pth"));
    }

    #[test]
    fn a_layer_one_level_too_shallow_is_a_missing_level() {
        let g = graph("  - global_avgpool -> flatten\n  - classifier: linear(10)\n");
        let ck = keys(&[("classifier.1.weight", &[10, 3]), ("classifier.1.bias", &[10])]);
        let c = compare(&g, &ck);
        assert_eq!((c.moved, c.diagnostics.len()), (2, 1), "{c:?}");
        let d = &c.diagnostics[0];
        assert_eq!(d.code, "E0501");
        assert!(d.hints[0].contains("sequence holding this layer at index 1"), "{d:?}");
    }
}
