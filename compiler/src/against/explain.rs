//! Diagnostics for modules the checkpoint has under another path: an extra or a missing
//! scope level, renumbered items (a shift, or blocks grouped per stage), a renamed item.
//! Mappings with the same cause (the same spec line, or the items of the same scope) make
//! one diagnostic.

use super::mapping::{is_index, segments, under, Edit, Mapping};
use super::{last, list, parent, Construct, Report};
use crate::diag::Diagnostic;
use crate::ir::ScopeOrigin;

/// What one mapping says about the spec.
#[derive(Clone, Debug)]
enum Fact {
    /// The level ending at spec path `path` is not in the checkpoint.
    Extra { path: String },
    /// The checkpoint has a level `seg` right below spec path `at`.
    Missing { at: String, seg: String },
    /// The item at spec path `path` is named `to` in the checkpoint.
    Rename { path: String, to: String },
    /// Items of spec scope `scope` carry other indices in the checkpoint.
    Renumber { scope: String },
}

/// The facts of one mapping.
fn facts(m: &Mapping) -> Vec<Fact> {
    let t = segments(&m.spec);
    let prefix = |i: usize| t[..i].join(".");
    if let [Edit::Replace(i, to)] = m.edits.as_slice() {
        if !(is_index(t[*i]) && is_index(to)) {
            return vec![Fact::Rename { path: prefix(i + 1), to: to.clone() }];
        }
    }
    let first_replace = m.edits.iter().filter_map(|e| if let Edit::Replace(i, _) = e { Some(*i) } else { None }).min();
    if let Some(i) = first_replace {
        return vec![Fact::Renumber { scope: prefix(i) }];
    }
    m.edits
        .iter()
        .map(|e| match e {
            Edit::Extra(i) => Fact::Extra { path: prefix(i + 1) },
            Edit::Missing(i, seg) => Fact::Missing { at: prefix(*i), seg: seg.clone() },
            Edit::Replace(..) => unreachable!("handled above"),
        })
        .collect()
}

/// A group of mappings with one cause.
struct Group {
    key: String,
    fact: Fact,
    mappings: Vec<usize>,
}

/// Diagnostics for all mappings of the report, in spec order.
pub(super) fn diagnostics(r: &Report) -> Vec<Diagnostic> {
    let mut all: Vec<Vec<Fact>> = r.mappings.iter().map(facts).collect();
    // A block that is one index too shallow among renumbered siblings is part of the renumbering.
    let renumbered: Vec<String> = all.iter().flatten().filter_map(|f| if let Fact::Renumber { scope } = f { Some(scope_key(r, scope)) } else { None }).collect();
    for fs in &mut all {
        if let [Fact::Missing { at, .. }] = fs.as_slice() {
            if is_index(last(at)) && renumbered.contains(&scope_key(r, parent(at))) {
                *fs = vec![Fact::Renumber { scope: parent(at).to_string() }];
            }
        }
    }
    let mut groups: Vec<Group> = Vec::new();
    for (m, fs) in all.into_iter().enumerate() {
        for fact in fs {
            let key = match &fact {
                Fact::Extra { path } => format!("extra {:?}", r.constructs.span_of(path)),
                Fact::Missing { at, seg } => format!("missing {:?} {seg}", r.constructs.span_of(at)),
                Fact::Rename { path, to } => format!("rename {:?} {to}", r.constructs.span_of(path)),
                Fact::Renumber { scope } => format!("renumber {}", scope_key(r, scope)),
            };
            match groups.iter_mut().find(|g| g.key == key) {
                Some(g) => g.mappings.push(m),
                None => groups.push(Group { key, fact, mappings: vec![m] }),
            }
        }
    }
    groups.iter().map(|g| diagnostic(r, g)).collect()
}

/// Items of instances of one block share a key (the block), other scopes key by path.
fn scope_key(r: &Report, scope: &str) -> String {
    match r.constructs.scopes.get(scope).and_then(|s| s.block.as_deref()) {
        Some(b) => format!("block {b}"),
        None => format!("scope {scope}"),
    }
}

/// Number of spec tensors under a mapping and its first one with the checkpoint's name.
fn example(r: &Report, m: &Mapping) -> (usize, String, String) {
    let under_spec: Vec<&str> = r.spec.iter().map(|t| t.0).filter(|n| under(n, &m.spec)).collect();
    let first = under_spec.first().copied().unwrap_or_default();
    let rel = super::mapping::relative(first, &m.spec);
    let theirs = if m.ckpt.is_empty() { rel.to_string() } else { format!("{}.{rel}", m.ckpt) };
    (under_spec.len(), first.to_string(), theirs)
}

fn diagnostic(r: &Report, g: &Group) -> Diagnostic {
    let maps: Vec<&Mapping> = g.mappings.iter().map(|&i| &r.mappings[i]).collect();
    let tensors: usize = maps.iter().map(|m| example(r, m).0).sum();
    let d = match &g.fact {
        Fact::Extra { path } => extra(r, path, tensors),
        Fact::Missing { at, seg } => missing(r, at, seg, tensors),
        Fact::Rename { path, to } => rename(r, path, to, tensors),
        Fact::Renumber { scope } => renumber(r, scope, &maps, tensors),
    };
    let mut d = d;
    for m in maps.iter().take(3) {
        let (_, ours, theirs) = example(r, m);
        d = d.note(format!("the spec's `{ours}` is `{theirs}` in the checkpoint"));
    }
    if maps.len() > 3 {
        d = d.note(format!("... and {} more modules like these", maps.len() - 3));
    }
    d
}

/// The block a scope instantiates, as `name(...)`.
fn call(c: Option<Construct>) -> String {
    match c {
        Some(Construct::Scope(s)) => s.block.as_deref().map(|b| format!("`{b}(...)`")).unwrap_or_else(|| "this item".into()),
        _ => "this layer".into(),
    }
}

/// Distinct child segments the spec has below `path`.
fn children<'a>(r: &'a Report, path: &str) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for (n, _) in &r.spec {
        if under(n, path) {
            let child = super::mapping::relative(n, path).split('.').next().unwrap_or_default();
            if !out.contains(&child) {
                out.push(child);
            }
        }
    }
    out
}

/// A name as a YAML key: indices quoted (`"1":`), so that they stay strings.
fn key(name: &str) -> String {
    if is_index(name) {
        format!("\"{name}\"")
    } else {
        name.to_string()
    }
}

const NO_SCOPE: &str = "lists, `if` and `repeat` without `name:` open no scope of their own";

fn extra(r: &Report, path: &str, tensors: usize) -> Diagnostic {
    let c = r.constructs.get(path);
    let (up, lvl) = (parent(path), last(path));
    let span = r.constructs.span_of(path);
    let d = Diagnostic::error("E0501", span, format!("the spec has a level `{lvl}` at `{path}` that the checkpoint does not have ({tensors} tensors)"));
    let origin = match c {
        Some(Construct::Scope(s)) => Some(s.origin),
        _ => None,
    };
    let parent_is_named_list = matches!(r.constructs.get(up), Some(Construct::Scope(s)) if s.block.is_none() && s.origin == ScopeOrigin::NamedItem);
    match origin {
        Some(ScopeOrigin::UnnamedCall) if parent_is_named_list && children(r, up).len() == 1 => d
            .label(format!("{} without a name opens `{path}`", call(c)))
            .hint(format!(
                "name the block call: write `{}: {}` instead of a list holding the call; a named call makes `{up}` the block's own scope, so its layers land directly in `{up}` (an unnamed call takes the next index of its enclosing scope; {NO_SCOPE})",
                key(last(up)),
                call(c).trim_matches('`')
            )),
        Some(ScopeOrigin::UnnamedCall) => d.label(format!("{} without a name opens `{path}`", call(c))).hint(format!(
            "an unnamed block call opens a scope named by the next index of its enclosing scope ({NO_SCOPE}); the checkpoint has the block's layers directly in `{up}`: write them here instead of calling the block"
        )),
        Some(ScopeOrigin::RepeatName) => d
            .label(format!("this `name:` opens `{path}`"))
            .hint(format!("drop the repeat's `name:`: then each iteration's layers take the next indices of `{up}`")),
        Some(_) => d.label(format!("this opens `{path}`")).hint(format!(
            "the checkpoint has these layers directly in `{up}`: list them there without this name (every block call and every named list opens a scope)"
        )),
        None => d.label(format!("this layer is `{path}`")).hint(format!(
            "the checkpoint has this layer's tensors directly at `{up}`: make the layer itself `{}` (a single step, not a chain or a list)",
            key(last(up))
        )),
    }
}

fn missing(r: &Report, at: &str, seg: &str, tensors: usize) -> Diagnostic {
    if at.is_empty() {
        let first = r.spec.first().map(|t| t.0).unwrap_or_default();
        let span = r.constructs.owners.get(first).map(|n| n.span).unwrap_or_else(|| r.constructs.span_of(first));
        return Diagnostic::error("E0501", span, format!("the checkpoint keeps every name under `{seg}.` ({tensors} tensors)"))
            .label(format!("the spec's first tensor, `{first}`, comes from here"))
            .hint(format!("add `rename: {{\"{seg}.\": \"\"}}` to the spec's `weights:` (a checkpoint saved from a wrapper module), or put the graph in an item `{seg}:`"));
    }
    let c = r.constructs.get(at);
    let span = r.constructs.span_of(at);
    let d = Diagnostic::error("E0501", span, format!("the checkpoint has a level `{seg}` below `{at}` that the spec does not have ({tensors} tensors)"));
    let name = last(at);
    match c {
        Some(Construct::Scope(s)) if s.origin == ScopeOrigin::NamedCall => {
            let inner = if is_index(seg) { format!("the unnamed call in it takes index {seg}") } else { format!("name the call `{seg}` in it") };
            d.label(format!("a named call makes `{at}` the block's own scope")).hint(format!(
                "put the call in a list under the name: `{}:` then `- {}` on the next line; the list opens `{at}` and {inner}",
                key(name),
                call(c).trim_matches('`')
            ))
        }
        Some(Construct::Scope(s)) if s.origin == ScopeOrigin::UnnamedCall => d.label(format!("{} is `{at}` itself", call(c))).hint(format!(
            "an unnamed block call takes the next index of its enclosing scope and holds the block's layers directly ({NO_SCOPE}); the checkpoint has a container at `{at}` holding the block at `{at}.{seg}`: call it from a block of its own (a stage block whose body calls it) or from a list under a name"
        )),
        Some(Construct::Scope(_)) => d.label(format!("this opens `{at}`")).hint(if is_index(seg) {
            format!("the checkpoint nests the layers of `{at}` one level deeper: group them in a block and call it here without a name (it takes index {seg})")
        } else {
            format!("the checkpoint nests the layers of `{at}` one level deeper: wrap them in an item `{seg}:`")
        }),
        _ if is_index(seg) => d.label(format!("this layer is `{at}`")).hint(format!(
            "the checkpoint's `{at}` is a sequence holding this layer at index {seg}: write `{}:` as a chain in which this layer is step {seg} (parameter-free steps such as dropout count)",
            key(name)
        )),
        _ => d.label(format!("this layer is `{at}`")).hint(format!("the checkpoint calls this layer `{at}.{seg}`: name it `{seg}` inside an item `{}:`", key(name))),
    }
}

fn rename(r: &Report, path: &str, to: &str, tensors: usize) -> Diagnostic {
    let c = r.constructs.get(path);
    let d = Diagnostic::error("E0503", r.constructs.span_of(path), format!("the spec's `{path}` is called `{}` in the checkpoint ({tensors} tensors)", join(parent(path), to)));
    let hint = match c {
        Some(Construct::Scope(s)) if s.origin == ScopeOrigin::RepeatName => format!("change the repeat's `name:` so that it gives `{to}`"),
        Some(Construct::Scope(s)) if s.origin == ScopeOrigin::UnnamedCall => format!(
            "name the block call: `{}: {}` (without a name it takes the next index of its scope, here {})",
            key(to),
            call(c).trim_matches('`'),
            last(path)
        ),
        _ if is_index(last(path)) => format!("give it the name: `{}: ...`", key(to)),
        _ => format!("rename `{}:` to `{}:`", key(last(path)), key(to)),
    };
    d.label(format!("this is `{path}`")).hint(hint)
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}.{b}")
    }
}

/// A consistent index shift: every mapping replaces one index at the same depth by the same amount.
fn shift(maps: &[&Mapping]) -> Option<(usize, i64)> {
    let mut found: Option<(usize, i64)> = None;
    for m in maps {
        let [Edit::Replace(i, to)] = m.edits.as_slice() else { return None };
        let from: i64 = segments(&m.spec)[*i].parse().ok()?;
        let d = to.parse::<i64>().ok()? - from;
        if found.is_some_and(|f| f != (*i, d)) {
            return None;
        }
        found = Some((*i, d));
    }
    found
}

fn renumber(r: &Report, scope: &str, maps: &[&Mapping], tensors: usize) -> Diagnostic {
    let depth = segments(scope).len();
    let first = maps.iter().min_by_key(|m| segments(&m.spec).get(depth).and_then(|s| s.parse::<usize>().ok())).unwrap();
    let segs = segments(&first.spec);
    let item = segs[..(depth + 1).min(segs.len())].join(".");
    let span = r.constructs.span_of(&item);
    let within = match r.constructs.scopes.get(scope).and_then(|s| s.block.as_deref()) {
        Some(b) => format!("block `{b}` (`{scope}`)"),
        None if scope.is_empty() => "the graph".to_string(),
        None => format!("`{scope}`"),
    };
    if let Some((_, d)) = shift(maps) {
        let n = d.unsigned_abs();
        let (more, s) = (if d < 0 { "more" } else { "fewer" }, if n == 1 { "" } else { "s" });
        return Diagnostic::error("E0502", span, format!("the items of {within} are numbered {n} {} than in the checkpoint from `{item}` on ({tensors} tensors)", if d < 0 { "higher" } else { "lower" }))
            .label(format!("the checkpoint has this at index {}", last(&item).parse::<i64>().unwrap_or(0) + d))
            .hint(format!(
                "every item of a scope takes the next index, named or not and with parameters or not (like nn.Sequential): before this item the spec has {n} item{s} {more} than the reference"
            ));
    }
    let d = Diagnostic::error("E0502", span, format!("the checkpoint numbers {} modules of {within} differently ({tensors} tensors)", maps.len()))
        .label("numbered from here");
    // Blocks the spec numbers one after another that the checkpoint groups: several modules
    // share an index of the checkpoint's path at this depth.
    let heads: Vec<&str> = maps.iter().filter_map(|m| segments(&m.ckpt).get(depth).copied()).collect();
    let grouped = heads.iter().any(|h| heads.iter().filter(|x| *x == h).count() > 1);
    if grouped {
        let theirs: Vec<String> = maps.iter().map(|m| m.ckpt.clone()).collect();
        return d.hint(format!(
            "the checkpoint groups them per stage ({}) where the spec gives each its own index of `{scope}`: each unnamed block call takes the next index of its enclosing scope ({NO_SCOPE}); call a stage block once per stage whose body repeats the block (or give the repeat over the stages a `name:`), so that each stage takes one index and its blocks 0, 1, ...",
            list(&theirs, 4)
        ));
    }
    d.hint("compare the items of this scope with the reference's modules: every item takes the next index of its scope, parameter-free ones included")
}
