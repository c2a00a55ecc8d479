//! Diagnostics for tensors no mapping explains: mis-shaped (same name, other shape), in the
//! spec only, in the checkpoint only. Tensors from the same spec line make one diagnostic.

use super::mapping::{relative, under};
use super::{last, list, parent, Report};
use crate::diag::Diagnostic;
use crate::span::Span;

/// Mis-shaped, then spec-only, then checkpoint-only diagnostics.
pub(super) fn diagnostics(r: &Report) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (span, pairs) in by_span(r.mis_shaped.iter().map(|&(i, j)| (owner_span(r, r.spec[i].0), (i, j)))) {
        out.push(mis_shaped(r, span, &pairs));
    }
    for (span, idx) in by_span(r.unexpected.iter().map(|&i| (owner_span(r, r.spec[i].0), i))) {
        out.push(unexpected(r, span, &idx));
    }
    for (span, idx) in by_span(r.missing.iter().map(|&j| (r.constructs.span_of(&nearest_spec_path(r, r.ckpt[j].0)), j))) {
        out.push(missing(r, span, &idx));
    }
    out
}

/// Items grouped by span, groups in order of first appearance.
fn by_span<T>(items: impl Iterator<Item = (Span, T)>) -> Vec<(Span, Vec<T>)> {
    let mut groups: Vec<(Span, Vec<T>)> = Vec::new();
    for (span, item) in items {
        match groups.iter_mut().find(|(s, _)| *s == span) {
            Some((_, g)) => g.push(item),
            None => groups.push((span, vec![item])),
        }
    }
    groups
}

/// The span of the node owning spec parameter `name`.
fn owner_span(r: &Report, name: &str) -> Span {
    r.constructs.owners.get(name).map(|n| n.span).unwrap_or_else(|| r.constructs.span_of(name))
}

/// The longest prefix of checkpoint name `name` that the spec has a module for ("" if none).
fn nearest_spec_path(r: &Report, name: &str) -> String {
    r.constructs.nearest(parent(name)).map(|(p, _)| p.to_string()).unwrap_or_default()
}

/// The module of a tensor name: the name without its last segment.
fn module(name: &str) -> &str {
    parent(name)
}

/// Explains which dims differ, naming a conv weight's dims.
fn shape_hint(name: &str, ours: &[usize], theirs: &[usize]) -> Option<String> {
    if ours.len() != theirs.len() {
        return Some(format!("the spec's tensor has {} dims, the checkpoint's {}", ours.len(), theirs.len()));
    }
    let conv = ours.len() == 4 && last(name) == "weight";
    let dims: Vec<String> = (0..ours.len())
        .filter(|&k| ours[k] != theirs[k])
        .map(|k| {
            let what = match (conv, k) {
                (true, 0) => "output channels".to_string(),
                (true, 1) => "input channels per group".to_string(),
                (true, _) => "kernel size".to_string(),
                _ => format!("dim {k}"),
            };
            format!("{what} {} here, {} in the checkpoint", ours[k], theirs[k])
        })
        .collect();
    (!dims.is_empty()).then(|| dims.join("; "))
}

fn mis_shaped(r: &Report, span: Span, pairs: &[(usize, usize)]) -> Diagnostic {
    let (i, j) = pairs[0];
    let (name, ours) = r.spec[i];
    let theirs = r.ckpt[j].1;
    let mut d = Diagnostic::error("E0504", span, format!("`{name}` has shape {ours:?} in the spec but {theirs:?} in the checkpoint"))
        .label(format!("this layer makes `{}`", module(name)))
        .maybe_hint(shape_hint(name, ours, theirs));
    if pairs.len() > 1 {
        let others: Vec<String> = pairs[1..].iter().map(|&(i, j)| format!("{} {:?} vs {:?}", r.spec[i].0, r.spec[i].1, r.ckpt[j].1)).collect();
        d = d.note(format!("also mis-shaped from this line: {}", others.iter().take(4).cloned().collect::<Vec<_>>().join(", ")));
        if others.len() > 4 {
            d = d.note(format!("... and {} more", others.len() - 4));
        }
    }
    d
}

fn unexpected(r: &Report, span: Span, idx: &[usize]) -> Diagnostic {
    let names: Vec<String> = idx.iter().map(|&i| r.spec[i].0.to_string()).collect();
    let first = &names[0];
    let up = parent(module(first));
    let mut d = Diagnostic::error("E0505", span, format!("the checkpoint has no `{first}` ({} spec tensors from this line are not in it)", names.len()))
        .label(format!("this layer makes `{}`", module(first)));
    if names.len() > 1 {
        d = d.note(format!("not in the checkpoint: {}", list(&names, 6)));
    }
    // Modules the checkpoint has beside this one that the spec does not make.
    let mut theirs: Vec<String> = Vec::new();
    for &j in &r.missing {
        let m = module(r.ckpt[j].0);
        if parent(m) == up && r.constructs.get(m).is_none() && !theirs.iter().any(|t| t == m) {
            theirs.push(m.to_string());
        }
    }
    let place = if up.is_empty() { "at the top level".to_string() } else { format!("in `{up}`") };
    if theirs.is_empty() {
        d.hint(format!("{place} the checkpoint has no module that the spec lacks: if the reference has no such layer here, remove it"))
    } else {
        d.hint(format!("{place} the checkpoint has {} instead", list(&theirs, 4)))
    }
}

fn missing(r: &Report, span: Span, idx: &[usize]) -> Diagnostic {
    let names: Vec<String> = idx.iter().map(|&j| format!("{} {:?}", r.ckpt[j].0, r.ckpt[j].1)).collect();
    let first = r.ckpt[idx[0]].0;
    let near = nearest_spec_path(r, first);
    let n = idx.len();
    let count = format!("({n} checkpoint tensor{} missing here)", if n == 1 { "" } else { "s" });
    let mut d = if near == module(first) {
        // The layer is there; one of its tensors is not (a bias, for instance).
        let what = last(first);
        let d = Diagnostic::error("E0506", span, format!("the spec's `{near}` has no `{what}` {count}")).label(format!("this layer makes no `{what}`"));
        match what {
            "bias" => d.hint("the reference's layer has a bias: drop `bias=false`"),
            _ => d,
        }
    } else if near.is_empty() {
        Diagnostic::error("E0506", span, format!("the spec has no `{}` from the checkpoint {count}", module(first))).label("the spec ends here")
    } else {
        let rel = relative(module(first), &near);
        Diagnostic::error("E0506", span, format!("the spec has no `{}` from the checkpoint {count}", module(first))).label(format!("`{near}` has no `{rel}`"))
    };
    d = d.note(format!("missing: {}", names.iter().take(6).cloned().collect::<Vec<_>>().join(", ")));
    if n > 6 {
        d = d.note(format!("... and {} more", n - 6));
    }
    let ours: Vec<String> = r.unexpected.iter().map(|&i| module(r.spec[i].0).to_string()).filter(|m| under(m, &near) || near.is_empty()).fold(Vec::new(), |mut v, m| {
        if !v.contains(&m) {
            v.push(m);
        }
        v
    });
    if !ours.is_empty() && !near.is_empty() {
        d = d.hint(format!("the spec makes {} there instead", list(&ours, 4)));
    }
    d
}
