//! Back ends that print a checked graph: Graphviz DOT, a Keras-like summary table, the
//! parameter manifest and a one-line check summary.

use crate::ir::{Graph, Node, Op};
use std::fmt::Write;

/// Short op label for tables and DOT: `conv 3x3/2`, `bn`, `relu`...
pub fn op_label(op: &Op) -> String {
    match op {
        Op::Input => "input".into(),
        Op::Conv { kernel, stride, groups, .. } => {
            let mut s = format!("conv {}x{}", kernel[0], kernel[1]);
            if stride != &[1, 1] {
                let _ = write!(s, "/{}", stride[0]);
            }
            if *groups > 1 {
                let _ = write!(s, " g{groups}");
            }
            s
        }
        Op::BatchNorm { .. } => "bn".into(),
        Op::LayerNorm { .. } => "layernorm".into(),
        Op::Act(a) => format!("{a:?}").to_lowercase(),
        Op::Softmax { .. } => "softmax".into(),
        Op::Linear { .. } => "linear".into(),
        Op::MaxPool { kernel, stride, .. } => format!("maxpool {}x{}/{}", kernel[0], kernel[1], stride[0]),
        Op::AvgPool { kernel, stride, .. } => format!("avgpool {}x{}/{}", kernel[0], kernel[1], stride[0]),
        Op::AdaptiveAvgPool { size } => format!("adaptive_avgpool {}x{}", size[0], size[1]),
        Op::GlobalPool { max } => if *max { "global_maxpool" } else { "global_avgpool" }.into(),
        Op::Flatten { .. } => "flatten".into(),
        Op::Reshape { .. } => "reshape".into(),
        Op::Permute { perm } => format!("permute {perm:?}"),
        Op::Select { .. } => "select".into(),
        Op::Dropout { stochastic_depth, .. } => if *stochastic_depth { "stochastic_depth" } else { "dropout" }.into(),
        Op::Identity => "identity".into(),
        Op::Add => "add".into(),
        Op::Mul => "mul".into(),
        Op::Concat { .. } => "concat".into(),
        Op::Chunk { .. } => "chunk".into(),
        Op::Upsample { scale } => format!("upsample x{scale}"),
        Op::ZeroPad { .. } => "zeropad".into(),
        Op::ChannelAffine { .. } => "channel_affine".into(),
        Op::Scale { .. } => "scale".into(),
        Op::ClassToken => "class_token".into(),
        Op::PosEmbed => "pos_embed".into(),
        Op::SelfAttention { heads } => format!("self_attention h{heads}"),
        Op::WindowAttention { heads, window, shift } => format!("window_attention h{heads} w{window} s{shift}"),
        Op::PatchMerge => "patch_merge".into(),
        Op::DetectV8 { .. } => "detect_v8".into(),
        Op::YoloHead { .. } => "yolo_head".into(),
    }
}

fn shape_str(n: &Node) -> String {
    match &n.shape {
        Some(s) => format!("{s:?}"),
        None => "?".into(),
    }
}

/// A count with a K/M/G suffix: `9.4K`, `25.61M`.
pub fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// One-line summary printed by `tlc check`.
pub fn check_line(g: &Graph) -> String {
    let out = g.node(g.output).shape.clone().unwrap_or_default();
    format!(
        "{}{}: ok: {} nodes, {} parameters ({} trainable), {} MACs, output {:?}",
        g.meta.name,
        g.meta.variant.as_ref().map(|v| format!(" [{v}]")).unwrap_or_default(),
        g.graph.node_count(),
        g.param_count(),
        g.trainable_count(),
        human(g.macs()),
        out
    )
}

/// A table like Keras `model.summary()`: node, op, output shape, parameters, MACs.
pub fn summary(g: &Graph) -> String {
    let mut rows = vec![["node".to_string(), "op".into(), "output".into(), "params".into(), "MACs".into(), "trainable".into()]];
    for (_, n) in g.nodes() {
        let p: usize = n.params.iter().map(|p| p.numel()).sum();
        let t = n.params.iter().any(|p| p.trainable());
        rows.push([n.name.clone(), op_label(&n.op), shape_str(n), p.to_string(), n.macs.to_string(), if p == 0 { "-".into() } else if t { "yes".into() } else { "no".into() }]);
    }
    let widths: Vec<usize> = (0..6).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut s = String::new();
    let total_w: usize = widths.iter().sum::<usize>() + 10;
    for (i, r) in rows.iter().enumerate() {
        for c in 0..6 {
            if c >= 3 {
                let _ = write!(s, "{:>w$}", r[c], w = widths[c]);
            } else {
                let _ = write!(s, "{:<w$}", r[c], w = widths[c]);
            }
            if c < 5 {
                s.push_str("  ");
            }
        }
        s.push('\n');
        if i == 0 {
            s.push_str(&"-".repeat(total_w));
            s.push('\n');
        }
    }
    s.push_str(&"=".repeat(total_w));
    s.push('\n');
    let _ = writeln!(s, "model: {}{}", g.meta.name, g.meta.variant.as_ref().map(|v| format!(" (variant {v})")).unwrap_or_default());
    let _ = writeln!(s, "input: {:?}", g.meta.input);
    let _ = writeln!(s, "output: {}", shape_str(g.node(g.output)));
    let _ = writeln!(s, "parameters: {} ({} trainable, {} non-trainable)", g.param_count(), g.trainable_count(), g.param_count() - g.trainable_count());
    let _ = writeln!(s, "MACs: {} ({})", g.macs(), human(g.macs()));
    s
}

/// `[[name, [shape...]], ...]` in state_dict order, as `tlc params --json` prints it.
pub fn params_json(g: &Graph) -> String {
    let list: Vec<(String, Vec<usize>)> = g.params().map(|p| (p.name.clone(), p.shape.clone())).collect();
    serde_json::to_string(&list).unwrap_or_default()
}

/// Options of the DOT back end.
#[derive(Clone, Debug)]
pub struct DotOptions {
    /// Collapse block instances nested deeper than this (`None`: show all).
    pub depth: Option<usize>,
    /// `LR` or `TB`.
    pub rankdir: String,
}

impl Default for DotOptions {
    fn default() -> Self {
        DotOptions { depth: None, rankdir: "TB".into() }
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Graphviz DOT: one cluster per block instance, output shapes on edges, op and parameter
/// count in each node; with `depth`, deeper block instances collapse into one node.
pub fn dot(g: &Graph, opts: &DotOptions) -> String {
    // Visible unit of each node: itself, or the collapsed block instance it belongs to.
    let unit = |n: &Node| -> Option<(String, String)> {
        let d = opts.depth?;
        n.trace.get(d).map(|f| (f.path.clone(), f.block.clone()))
    };
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", esc(&g.meta.name));
    let _ = writeln!(s, "  rankdir={};", if opts.rankdir == "LR" { "LR" } else { "TB" });
    let _ = writeln!(s, "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", fontname=\"Helvetica\", fontsize=10];");
    let _ = writeln!(s, "  edge [fontname=\"Helvetica\", fontsize=8];");
    // Group nodes by their (visible) trace for clusters.
    let mut emitted_units: Vec<String> = Vec::new();
    let mut id_of: Vec<String> = Vec::new();
    let mut tree: Vec<(Vec<(String, String)>, String)> = Vec::new();
    for (i, n) in g.nodes() {
        let (id, label) = match unit(n) {
            Some((path, block)) => {
                let id = format!("u_{}", path.replace(['.', ':', '-'], "_"));
                let params: usize = g.nodes().filter(|(_, m)| unit(m).map(|u| u.0 == path).unwrap_or(false)).flat_map(|(_, m)| m.params.iter()).map(|p| p.numel()).sum();
                (id, format!("{path}\\n{block}\\nparams {}", human(params as u64)))
            }
            None => {
                let p: usize = n.params.iter().map(|p| p.numel()).sum();
                let mut label = format!("{}\\n{}", esc(&n.name), esc(&op_label(&n.op)));
                if p > 0 {
                    let _ = write!(label, "\\nparams {}", human(p as u64));
                }
                (format!("n{}", i.index()), label)
            }
        };
        id_of.push(id.clone());
        if emitted_units.contains(&id) {
            continue;
        }
        emitted_units.push(id.clone());
        let depth = opts.depth.unwrap_or(usize::MAX);
        let frames: Vec<(String, String)> = n.trace.iter().take(depth).map(|f| (f.path.clone(), f.block.clone())).collect();
        tree.push((frames, format!("{id} [label=\"{label}\"];")));
    }
    // Emit clusters: nodes sharing trace prefixes nest in subgraphs.
    let mut open: Vec<(String, String)> = Vec::new();
    for (frames, line) in &tree {
        let common = open.iter().zip(frames.iter()).take_while(|(a, b)| a == b).count();
        while open.len() > common {
            open.pop();
            let _ = writeln!(s, "{}}}", "  ".repeat(open.len() + 1));
        }
        for f in &frames[common..] {
            let indent = "  ".repeat(open.len() + 1);
            let _ = writeln!(s, "{indent}subgraph \"cluster_{}\" {{", esc(&f.0));
            let _ = writeln!(s, "{indent}  label=\"{} ({})\"; style=dashed; color=\"#8899aa\";", esc(&f.0), esc(&f.1));
            open.push(f.clone());
        }
        let _ = writeln!(s, "{}{}", "  ".repeat(open.len() + 1), line);
    }
    while !open.is_empty() {
        open.pop();
        let _ = writeln!(s, "{}}}", "  ".repeat(open.len() + 1));
    }
    let mut seen_edges: Vec<(String, String)> = Vec::new();
    for (i, n) in g.nodes() {
        for &inp in &n.inputs {
            let (a, b) = (&id_of[inp.index()], &id_of[i.index()]);
            if a == b || seen_edges.contains(&(a.clone(), b.clone())) {
                continue;
            }
            seen_edges.push((a.clone(), b.clone()));
            let _ = writeln!(s, "  {a} -> {b} [label=\"{}\"];", shape_str(g.node(inp)));
        }
    }
    s.push_str("}\n");
    s
}
