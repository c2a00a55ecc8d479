//! Transfer-learning surgery on spec text: cut a spec at its `head:` (Keras
//! `include_top=False`) and attach a new classifier head, producing the text of a new spec
//! (the original file with its classifier replaced, its labels set to the new classes, its
//! imports made absolute). The new spec is compiled like any other, so it is runnable by
//! `tlc run` and the head gets the compiler's shape checks and diagnostics.

use crate::ir::{Graph, NodeId};
use crate::yaml::{self, Kind, Node};

/// The first node of the classifier named by `head:` and the feature node that feeds it.
pub fn head_cut(g: &Graph) -> Result<(NodeId, NodeId), String> {
    let head = g.meta.head.as_deref().ok_or("the spec has no `head:` (the first node of its classifier), so it cannot be cut for transfer learning")?;
    let prefix = format!("{head}.");
    let first = g
        .nodes()
        .find(|(_, n)| n.name == head || n.name.starts_with(&prefix))
        .map(|(i, _)| i)
        .ok_or_else(|| format!("`head: {head}` names no node of the graph"))?;
    let feature = *g.node(first).inputs.first().ok_or_else(|| format!("`head: {head}` is the graph input"))?;
    Ok((first, feature))
}

/// The nodes of a graph's new head (named `<scope>.*`), and the feature node feeding it.
pub fn head_nodes(g: &Graph, scope: &str) -> Result<(Vec<NodeId>, NodeId), String> {
    let prefix = format!("{scope}.");
    let nodes: Vec<NodeId> = g.nodes().filter(|(_, n)| n.name == scope || n.name.starts_with(&prefix)).map(|(i, _)| i).collect();
    let first = *nodes.first().ok_or_else(|| format!("the graph has no node in `{scope}`"))?;
    let feature = *g.node(first).inputs.first().ok_or("the head has no input")?;
    Ok((nodes, feature))
}

/// The default head for a feature of rank `feature_rank` (per sample):
/// global average pooling and flatten for a map, then dropout 0.2 and a linear layer.
pub fn default_head(feature_rank: usize) -> String {
    if feature_rank >= 3 {
        "global_avgpool -> flatten -> dropout(0.2) -> linear(classes)".to_string()
    } else {
        "dropout(0.2) -> linear(classes)".to_string()
    }
}

/// Normalises a head chain: `classes` becomes the class count, a bare `avgpool` (`maxpool`)
/// means global average (max) pooling and flatten, as Keras `GlobalAveragePooling2D`, and pooling/flatten steps are dropped when the feature is already a vector.
pub fn normalise_head(chain: &str, classes: usize, feature_rank: usize) -> String {
    let steps: Vec<String> = chain
        .split("->")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .flat_map(|s| match s.as_str() {
            // Keras GlobalAveragePooling2D / GlobalMaxPooling2D: pooled and flattened.
            "avgpool" => vec!["global_avgpool".to_string(), "flatten".to_string()],
            "maxpool" => vec!["global_maxpool".to_string(), "flatten".to_string()],
            _ => vec![s],
        })
        .filter(|s| {
            if feature_rank >= 3 {
                return true;
            }
            let op = s.rsplit(':').next().unwrap_or(s).trim();
            let op = op.split('(').next().unwrap_or(op).trim();
            !matches!(op, "global_avgpool" | "global_maxpool" | "flatten" | "adaptive_avgpool")
        })
        .map(|s| replace_word(&s, "classes", &classes.to_string()))
        .collect();
    steps.join(" -> ")
}

fn replace_word(s: &str, word: &str, by: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    let is_id = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < s.len() {
        if s[i..].starts_with(word) && (i == 0 || !is_id(b[i - 1])) && (i + word.len() == s.len() || !is_id(b[i + word.len()])) {
            out.push_str(by);
            i += word.len();
        } else {
            let c = s[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// What to change in the spec.
pub struct TransferSpec<'a> {
    /// The class names (the new `labels:`).
    pub labels: &'a [String],
    /// The normalised head chain (see [`normalise_head`]).
    pub head_chain: &'a str,
    /// Variant the model was built with (becomes `default_variant:`).
    pub variant: Option<&'a str>,
    /// Maps an `import:` entry of the original to the path the new spec should use.
    pub import_path: &'a dyn Fn(&str) -> String,
}

/// Extends a scalar's span over its surrounding quotes, if any.
fn with_quotes(text: &str, start: usize, end: usize) -> (usize, usize) {
    let b = text.as_bytes();
    if start > 0 && end < b.len() && (b[start - 1] == b'"' || b[start - 1] == b'\'') && b[end] == b[start - 1] {
        (start - 1, end + 1)
    } else {
        (start, end)
    }
}

fn line_start(text: &str, pos: usize) -> usize {
    text[..pos].rfind('\n').map(|i| i + 1).unwrap_or(0)
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A replacement of `text[start..end]`.
type Edit = (usize, usize, String);

/// The top-level entries of a spec's YAML.
type Top = [(Node, Node)];

fn top_get<'a>(top: &'a Top, key: &str) -> Option<&'a (Node, Node)> {
    top.iter().find(|(k, _)| k.as_str() == Some(key))
}

/// The text of the transfer spec and the name of its new head scope.
pub fn transfer_spec(text: &str, t: &TransferSpec) -> Result<(String, String), String> {
    let root = yaml::parse(0, text).map_err(|d| d.message)?;
    let Kind::Map(top) = &root.kind else { return Err("the spec is not a mapping".into()) };
    let get = |k: &str| top_get(top, k);
    let head = get("head").and_then(|(_, v)| v.scalar_text()).ok_or("the spec has no `head:` (the first node of its classifier), so it cannot be cut for transfer learning")?;
    let (_, graph) = get("graph").ok_or("the spec has no `graph:`")?;
    let Kind::Seq(items) = &graph.kind else { return Err("the spec's `graph:` is not a list".into()) };
    let item_name = |n: &Node| -> Option<String> {
        match &n.kind {
            Kind::Map(m) if m.len() == 1 => m[0].0.scalar_text(),
            _ => None,
        }
    };
    let idx = items
        .iter()
        .position(|n| item_name(n).as_deref() == Some(head.as_str()))
        .ok_or_else(|| format!("`head: {head}` is not a top-level item of `graph:` (only a top-level classifier can be cut)"))?;
    let kept: Vec<String> = items[..idx].iter().filter_map(item_name).collect();
    let scope = if kept.iter().any(|k| k == "head") { "new_head" } else { "head" }.to_string();
    let labels = format!("[{}]", t.labels.iter().map(|l| yaml_str(l)).collect::<Vec<_>>().join(", "));
    let mut edits = vec![cut_graph(text, &items[idx], &scope, t.head_chain)?];
    edits.extend(header_edits(text, top, t, &scope, &labels));
    let mut out = apply(text, edits)?;
    if !out.ends_with('\n') {
        out.push('\n');
    }
    if get("labels").is_none() {
        out.push_str(&format!("labels: {labels}\n"));
    }
    if let (Some(v), None) = (t.variant, get("default_variant")) {
        if get("variants").is_some() {
            out.push_str(&format!("default_variant: {}\n", yaml_str(v)));
        }
    }
    Ok((out, scope))
}

/// Replaces the `graph:` list from the head item to its end by the new head item.
fn cut_graph(text: &str, item: &Node, scope: &str, chain: &str) -> Result<Edit, String> {
    let ls = line_start(text, item.span.start as usize);
    let dash = text[ls..].find('-').map(|i| ls + i).filter(|&d| d < item.span.start as usize).ok_or("the spec's `graph:` must be a block list (`- item` lines) to be cut")?;
    let indent = &text[ls..dash];
    // The graph block ends at the next top-level key (a line starting at column 0 that is
    // neither a list item nor a comment) or at the end of the file.
    let mut end = text.len();
    let mut pos = ls;
    while let Some(nl) = text[pos..].find('\n') {
        pos += nl + 1;
        match text[pos..].chars().next() {
            Some(c) if !c.is_whitespace() && c != '-' && c != '#' => {
                end = pos;
                break;
            }
            _ => {}
        }
    }
    // Keep the line break before the next key.
    let end = if end < text.len() { end - 1 } else { end };
    Ok((ls, end, format!("{indent}- {scope}: {}", yaml_str(chain))))
}

/// New values of the header keys: labels, head, weights (none), name, imports, default variant.
fn header_edits(text: &str, top: &Top, t: &TransferSpec, scope: &str, labels: &str) -> Vec<Edit> {
    let get = |k: &str| top_get(top, k);
    let mut edits = Vec::new();
    let mut set = |key: &str, value: String| {
        match get(key) {
            Some((_, v)) if !matches!(v.kind, Kind::Map(_) | Kind::Seq(_)) || key == "labels" || key == "import" => {
                let (s, e) = with_quotes(text, v.span.start as usize, v.span.end as usize);
                let e = if matches!(v.kind, Kind::Seq(_)) { seq_end(text, s, e) } else { e };
                edits.push((s, e, value));
            }
            _ => {}
        }
    };
    if get("labels").is_some() {
        set("labels", labels.to_string());
    }
    set("head", scope.to_string());
    if get("weights").is_some() {
        set("weights", "null".into());
    }
    if let Some(n) = get("name").and_then(|(_, v)| v.scalar_text()) {
        set("name", yaml_str(&format!("{n}_transfer")));
    }
    if let Some((_, imp)) = get("import") {
        let list: Vec<String> = match &imp.kind {
            Kind::Seq(xs) => xs.iter().filter_map(|x| x.scalar_text()).collect(),
            Kind::Str(s) => vec![s.clone()],
            _ => vec![],
        };
        set("import", format!("[{}]", list.iter().map(|p| yaml_str(&(t.import_path)(p))).collect::<Vec<_>>().join(", ")));
    }
    if let (Some(v), Some(_)) = (t.variant, get("default_variant")) {
        set("default_variant", yaml_str(v));
    }
    edits
}

/// `text` with non-overlapping `edits` applied.
fn apply(text: &str, mut edits: Vec<Edit>) -> Result<String, String> {
    edits.sort_by_key(|e| e.0);
    for w in edits.windows(2) {
        if w[0].1 > w[1].0 {
            return Err("overlapping edits of the spec (unusual layout)".into());
        }
    }
    let mut out = text.to_string();
    for (s, e, v) in edits.into_iter().rev() {
        out.replace_range(s..e, &v);
    }
    Ok(out)
}

/// End of a flow sequence `[...]` starting at `s` (spans of sequences may stop early).
fn seq_end(text: &str, s: usize, e: usize) -> usize {
    if text.as_bytes().get(s) == Some(&b'[') {
        if let Some(i) = text[s..].find(']') {
            return s + i + 1;
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_a_graph_followed_by_keys() {
        let text = "name: t\ninput: [3, 8, 8]\nhead: fc\ngraph:\n- conv(4, k=3)\n- fc: linear(10)\n- relu\n\n# tail\nlabels: imagenet\n";
        let labels = vec!["a".to_string(), "b".to_string()];
        let (out, _) = transfer_spec(text, &TransferSpec { labels: &labels, head_chain: "linear(2)", variant: None, import_path: &|p| p.to_string() }).unwrap();
        assert_eq!(out, "name: \"t_transfer\"\ninput: [3, 8, 8]\nhead: head\ngraph:\n- conv(4, k=3)\n- head: \"linear(2)\"\nlabels: [\"a\", \"b\"]\n");
    }

    #[test]
    fn head_chain_normalisation() {
        assert_eq!(normalise_head("avgpool -> dropout(0.2) -> linear(256) -> relu -> linear(classes)", 2, 3), "global_avgpool -> flatten -> dropout(0.2) -> linear(256) -> relu -> linear(2)");
        assert_eq!(normalise_head("avgpool -> flatten -> fc: linear(classes)", 5, 1), "fc: linear(5)");
    }

    #[test]
    fn cuts_a_top_level_head() {
        let text = "name: t\ninput: [3, 8, 8]\nlabels: imagenet\nhead: fc\ngraph:\n  - conv(4, k=3)\n  - global_avgpool\n  - flatten\n  - fc: linear(10)\n  - softmax(1)\n";
        let labels = vec!["a".to_string(), "b".to_string()];
        let (out, scope) = transfer_spec(text, &TransferSpec { labels: &labels, head_chain: "linear(2)", variant: None, import_path: &|p| p.to_string() }).unwrap();
        assert_eq!(scope, "head");
        assert_eq!(out, "name: \"t_transfer\"\ninput: [3, 8, 8]\nlabels: [\"a\", \"b\"]\nhead: head\ngraph:\n  - conv(4, k=3)\n  - global_avgpool\n  - flatten\n  - head: \"linear(2)\"\n");
    }
}
