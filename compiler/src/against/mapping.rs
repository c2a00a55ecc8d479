//! Finding spec modules that sit under another path in the checkpoint: a spec module path
//! whose whole subtree (names relative to it and shapes) equals a checkpoint module path's
//! subtree is taken to be that module. Paths are compared segment by segment (`align`).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

/// One tensor: full name and shape.
pub(super) type Tensor<'a> = (&'a str, &'a [usize]);

/// Most segment edits between a spec path and a checkpoint path for them to be paired.
const MAX_EDITS: usize = 2;

/// How a spec path differs from a checkpoint path, by positions in the spec path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Edit {
    /// Segment `i` of the spec path is not in the checkpoint path.
    Extra(usize),
    /// The checkpoint path has `seg` before segment `i` of the spec path (`i` = its length: at the end).
    Missing(usize, String),
    /// Segment `i` of the spec path is `seg` in the checkpoint path.
    Replace(usize, String),
}

/// A spec module (`spec` path) that is the checkpoint module `ckpt`.
#[derive(Clone, Debug)]
pub(super) struct Mapping {
    /// Spec module path ("" for the whole network).
    pub spec: String,
    /// Checkpoint module path.
    pub ckpt: String,
    /// What turns `spec` into `ckpt`.
    pub edits: Vec<Edit>,
}

/// The segments of a dotted path (none for "").
pub(super) fn segments(path: &str) -> Vec<&str> {
    if path.is_empty() {
        Vec::new()
    } else {
        path.split('.').collect()
    }
}

/// Whether a path segment is an index.
pub(super) fn is_index(seg: &str) -> bool {
    !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `name` lies under the module `path` ("" holds everything).
pub(super) fn under(name: &str, path: &str) -> bool {
    path.is_empty() || (name.len() > path.len() && name.starts_with(path) && name.as_bytes()[path.len()] == b'.')
}

/// The part of `name` below the module `path` ("" when `name` is not under it).
pub(super) fn relative<'a>(name: &'a str, path: &str) -> &'a str {
    if path.is_empty() {
        name
    } else if under(name, path) {
        &name[path.len() + 1..]
    } else {
        ""
    }
}

/// Orders dotted paths as PyTorch lists modules: segment by segment, indices numerically.
pub(super) fn natural_cmp(a: &str, b: &str) -> Ordering {
    for (x, y) in a.split('.').zip(b.split('.')) {
        let o = match (is_index(x), is_index(y)) {
            (true, true) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.split('.').count().cmp(&b.split('.').count())
}

/// The module paths (every proper prefix, "" included) of the tensors marked `dirty`, each
/// with the signature of its whole subtree: sorted `relative name:shape` entries.
fn dirty_modules<'a>(tensors: &[Tensor<'a>], dirty: &[bool]) -> Vec<(String, String)> {
    let mut wanted: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for (i, (name, _)) in tensors.iter().enumerate() {
        if !dirty[i] {
            continue;
        }
        let segs = segments(name);
        for k in 0..segs.len() {
            let p = segs[..k].join(".");
            if seen.insert(p.clone()) {
                wanted.push(p);
            }
        }
    }
    let mut entries: HashMap<&str, Vec<String>> = wanted.iter().map(|p| (p.as_str(), Vec::new())).collect();
    for (name, shape) in tensors {
        let segs = segments(name);
        for k in 0..segs.len() {
            let p = segs[..k].join(".");
            if let Some(list) = entries.get_mut(p.as_str()) {
                list.push(format!("{}:{shape:?}", segs[k..].join(".")));
            }
        }
    }
    wanted
        .iter()
        .map(|p| {
            let mut e = entries.remove(p.as_str()).unwrap_or_default();
            e.sort();
            (p.clone(), e.join(";"))
        })
        .collect()
}

/// Pairs spec modules with checkpoint modules of the same subtree under other paths.
///
/// Only modules holding a tensor without an exact counterpart (`*_dirty`) take part. Spec
/// modules go outermost first, in spec order; each takes the first free checkpoint module (in
/// PyTorch order) with its signature whose path is at most [`MAX_EDITS`] segment edits away and
/// that does not overlap a module already taken.
pub(super) fn find(spec: &[Tensor], spec_dirty: &[bool], ckpt: &[Tensor], ckpt_dirty: &[bool]) -> Vec<Mapping> {
    let mut by_signature: HashMap<String, Vec<String>> = HashMap::new();
    for (path, sig) in dirty_modules(ckpt, ckpt_dirty) {
        by_signature.entry(sig).or_default().push(path);
    }
    for paths in by_signature.values_mut() {
        paths.sort_by(|a, b| natural_cmp(a, b));
    }
    let mut modules = dirty_modules(spec, spec_dirty);
    // Stable: within a depth, spec order.
    modules.sort_by_key(|(p, _)| segments(p).len());
    let mut mappings: Vec<Mapping> = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    for (path, sig) in modules {
        if mappings.iter().any(|m| under(&path, &m.spec) || m.spec == path) {
            continue;
        }
        let Some(candidates) = by_signature.get(&sig) else { continue };
        let free = |c: &String| !taken.iter().any(|t| t == c || under(c, t) || under(t, c));
        let found = candidates.iter().filter(|c| free(c) && **c != path).find_map(|c| {
            let edits = align(&segments(&path), &segments(c));
            (edits.len() <= MAX_EDITS).then(|| (c.clone(), edits))
        });
        if let Some((ckpt, edits)) = found {
            taken.push(ckpt.clone());
            mappings.push(Mapping { spec: path, ckpt, edits });
        }
    }
    mappings
}

/// Weight of keeping a segment: names count more than indices, so that `features.1.block.0`
/// vs `features.1.0.block` keeps `block` and moves an index.
fn keep_weight(seg: &str) -> u32 {
    if is_index(seg) {
        1
    } else {
        2
    }
}

/// The edits that turn spec path `t` into checkpoint path `u`: a weighted longest common
/// subsequence of segments; in each gap, deleted and inserted segments pair up as replacements.
pub(super) fn align(t: &[&str], u: &[&str]) -> Vec<Edit> {
    let (n, m) = (t.len(), u.len());
    let mut best = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            let keep = if t[i] == u[j] { keep_weight(t[i]) + best[i + 1][j + 1] } else { 0 };
            best[i][j] = keep.max(best[i + 1][j]).max(best[i][j + 1]);
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut edits = Vec::new();
    let (mut dels, mut ins): (Vec<usize>, Vec<&str>) = (Vec::new(), Vec::new());
    let mut gap_start = 0;
    let flush = |dels: &mut Vec<usize>, ins: &mut Vec<&str>, at: usize, edits: &mut Vec<Edit>| {
        let pairs = dels.len().min(ins.len());
        for k in 0..pairs {
            edits.push(Edit::Replace(dels[k], ins[k].to_string()));
        }
        edits.extend(dels[pairs..].iter().map(|&d| Edit::Extra(d)));
        // Inserted segments left over come after the gap's replaced ones.
        edits.extend(ins[pairs..].iter().map(|s| Edit::Missing(at + pairs, s.to_string())));
        dels.clear();
        ins.clear();
    };
    while i < n || j < m {
        if i < n && j < m && t[i] == u[j] && best[i][j] == keep_weight(t[i]) + best[i + 1][j + 1] {
            flush(&mut dels, &mut ins, gap_start, &mut edits);
            i += 1;
            j += 1;
            gap_start = i;
        } else if i < n && (j == m || best[i + 1][j] >= best[i][j + 1]) {
            dels.push(i);
            i += 1;
        } else {
            ins.push(u[j]);
            j += 1;
        }
    }
    flush(&mut dels, &mut ins, gap_start, &mut edits);
    edits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits(a: &str, b: &str) -> Vec<Edit> {
        align(&segments(a), &segments(b))
    }

    #[test]
    fn aligns_scope_levels_and_indices() {
        assert_eq!(edits("a.b", "a.b"), vec![]);
        assert_eq!(edits("features.1.block.0", "features.1.0.block"), vec![Edit::Missing(2, "0".into()), Edit::Extra(3)]);
        assert_eq!(edits("layers.8", "layers.8.0"), vec![Edit::Missing(2, "0".into())]);
        assert_eq!(edits("fc.1", "fc"), vec![Edit::Extra(1)]);
        assert_eq!(edits("features.3", "features.2"), vec![Edit::Replace(1, "2".into())]);
        assert_eq!(edits("layers.9", "layers.8.1"), vec![Edit::Replace(1, "8".into()), Edit::Missing(2, "1".into())]);
        assert_eq!(edits("", "module"), vec![Edit::Missing(0, "module".into())]);
        assert_eq!(edits("shortcut", "downsample"), vec![Edit::Replace(0, "downsample".into())]);
    }

    #[test]
    fn natural_order_compares_indices_as_numbers() {
        let mut v = vec!["layers.10", "layers.9.1", "layers.9", "layers.8.0"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["layers.8.0", "layers.9", "layers.9.1", "layers.10"]);
    }

    #[test]
    fn maps_whole_subtrees_outermost_first() {
        let s = [4usize];
        let spec: Vec<Tensor> = vec![("a.0.x.weight", &s), ("a.0.y.weight", &s), ("a.1.x.weight", &s), ("a.1.y.weight", &s)];
        let ckpt: Vec<Tensor> = vec![("a.0.0.x.weight", &s), ("a.0.0.y.weight", &s), ("a.0.1.x.weight", &s), ("a.0.1.y.weight", &s)];
        let m = find(&spec, &[true; 4], &ckpt, &[true; 4]);
        let pairs: Vec<(&str, &str)> = m.iter().map(|m| (m.spec.as_str(), m.ckpt.as_str())).collect();
        assert_eq!(pairs, [("a", "a.0")]);
    }
}
