//! `tlc import darknet`: a darknet `.cfg` (and optionally its `.names`) becomes a readable spec.
//!
//! The spec follows specs/yolo.yaml (the hand-written Yolo-Fastest): darknet layer `i` is
//! named `layers.<i>`, so darknet `.weights` load in layer order; `[convolutional]
//! batch_normalize=1` is a `cbl`-style block (conv, BN, activation); `[yolo]` is `yolo_head`
//! with the anchors and classes as spec parameters; pass-through routes become `from:`
//! references. Repeated structure is folded ([`fold`]): identical runs into `repeat:`, recurring
//! windows into parameterised blocks. The input is stretched to width x height, bilinear
//! without antialias, scaled by 1/255, as darknet feeds images.
//!
//! Every cfg the importer cannot translate exactly is refused with a diagnostic on its line.

mod cfg;
mod fold;
mod layers;
mod steps;
mod write;

use crate::diag::Diagnostic;
use crate::ir::{Graph, Op};
use crate::span::{FileId, Sources, Span};
use layers::Net;
use std::collections::BTreeMap;
use steps::{BnBlock, Plan};

/// Translates the darknet cfg `cfg` (with class names from the `.names` file `names`), both
/// loaded in `sources`, into spec text.
pub fn import(sources: &Sources, cfg: FileId, names: Option<FileId>) -> Result<String, Vec<Diagnostic>> {
    let text = sources.text(cfg);
    let sections = cfg::parse(cfg, text).map_err(|d| vec![d])?;
    let end = Span::new(cfg, text.len(), text.len());
    let (net, layers) = layers::read(&sections, end).map_err(|d| vec![d])?;
    let plan = steps::plan(&layers);
    let labels = labels(sources, names, &layers).map_err(|d| vec![d])?;
    let (items, blocks) = fold::fold(&plan.steps);
    let mut out = header(sources.name(cfg), &net, &plan, labels);
    let defs: Vec<String> = plan.bn_blocks.iter().map(bn_block).chain(blocks.iter().map(|b| b.lines.iter().map(|l| format!("{l}\n")).collect())).collect();
    if !defs.is_empty() {
        out.push_str("\nblocks:\n");
        out.push_str(&defs.join("\n"));
    }
    out.push_str("\ngraph:\n");
    let mut w = write::Writer::new(&plan.steps, None, write::Nums::Values);
    w.items(&items, "  ");
    for line in w.lines {
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// Darknet's count of billions of floating-point operations, as its `Total BFLOPS` line sums
/// them: `2 * weights * out_h * out_w` per convolution (`convolutional_layer.c`), `size² * c *
/// out_h * out_w` per max-pool (`maxpool_layer.c`) and `out_h * out_w * out_c * n` per
/// shortcut of `n` added layers (`shortcut_layer.c`); other layers count nothing.
pub fn bflops(graph: &Graph) -> f64 {
    bflops_by_layer(graph).values().sum()
}

/// [`bflops`] per darknet layer (the index of the `layers.<i>` nodes), as darknet prints them.
pub fn bflops_by_layer(graph: &Graph) -> BTreeMap<usize, f64> {
    let mut out = BTreeMap::new();
    for (_, n) in graph.nodes() {
        let Some(layer) = n.name.strip_prefix("layers.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok()) else { continue };
        let numel = n.shape.as_ref().map_or(0, |s| s.iter().product::<usize>() as u64);
        let flops = match &n.op {
            Op::Conv { .. } => 2 * n.macs,
            Op::MaxPool { kernel, .. } => (kernel[0] * kernel[1]) as u64 * numel,
            Op::Add => numel * n.inputs.len().saturating_sub(1) as u64,
            _ => 0,
        };
        *out.entry(layer).or_insert(0.0) += flops as f64 / 1e9;
    }
    out
}

/// The `labels:` value: the `.names` file's lines, COCO for 80 classes, else none.
fn labels(sources: &Sources, names: Option<FileId>, layers: &[layers::Layer]) -> Result<Option<String>, Diagnostic> {
    let classes = layers.iter().find_map(|l| match &l.kind {
        layers::Kind::Yolo { classes, .. } => Some((*classes, l.span)),
        _ => None,
    });
    let Some(file) = names else {
        return Ok((classes.map(|c| c.0) == Some(80)).then(|| "coco".to_string()));
    };
    let text = sources.text(file);
    let list: Vec<&str> = text.trim_end_matches(['\n', '\r']).split('\n').map(|l| l.trim_end_matches('\r')).collect();
    if let Some(i) = list.iter().position(|n| n.trim().is_empty()) {
        let at = text.split('\n').take(i).map(|l| l.len() + 1).sum::<usize>();
        return Err(Diagnostic::error("E0508", Span::new(file, at, at), format!("line {} of the names file is empty", i + 1)).hint("a .names file has one class name per line"));
    }
    if let Some((c, span)) = classes {
        if c != list.len() {
            let first = text.find('\n').unwrap_or(text.len());
            return Err(Diagnostic::error("E0508", Span::new(file, 0, first), format!("the names file has {} names but the cfg says classes={c}", list.len()))
                .with_label(span, format!("classes={c}")));
        }
    }
    let quoted: Vec<String> = list.iter().map(|n| format!("\"{}\"", n.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    let mut out = String::from("[");
    let mut width = "labels: [".len();
    for (i, q) in quoted.iter().enumerate() {
        let piece = if i + 1 < quoted.len() { format!("{q}, ") } else { q.clone() };
        if width + piece.len() > 100 {
            out = out.trim_end().to_string() + "\n  ";
            width = 2;
        }
        width += piece.len();
        out += &piece;
    }
    Ok(Some(out + "]"))
}

/// Name, reference, input, preprocessing, labels and parameters.
fn header(cfg_path: &str, net: &Net, plan: &Plan, labels: Option<String>) -> String {
    let file = cfg_path.rsplit(['/', '\\']).next().unwrap_or(cfg_path);
    let stem = file.strip_suffix(".cfg").unwrap_or(file);
    let name: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect();
    let size = if net.width == net.height { net.width.to_string() } else { format!("[{}, {}]", net.height, net.width) };
    let mut out = format!(
        "# Imported from {file} by `tlc import darknet`. Layer i is `layers.<i>` (darknet's\n\
         # layer index), so darknet .weights load in layer order. Darknet stretches the image to\n\
         # the input size (bilinear, no antialias) and divides by 255.\n\
         name: {}\nreference: {}\n",
        write::quote(&name, false),
        write::quote(&format!("darknet {file}"), false)
    );
    if plan.steps.iter().any(|s| matches!(s.call.first(), Some(steps::Tok::Text(t)) if t.starts_with("yolo_head"))) {
        out += "task: detect\n";
    }
    out += &format!("input: [{}, {}, {}]\n", net.channels, net.height, net.width);
    out += &format!("preprocess: {{stretch: {size}, interpolation: bilinear, antialias: false, scale: 1/255}}\n");
    if let Some(l) = labels {
        out += &format!("labels: {l}\n");
    }
    if let Some(y) = &plan.yolo {
        let anchors: Vec<String> = y.anchors.iter().map(|a| a.to_string()).collect();
        out += &format!("params:\n  classes: {}\n  anchors: [{}]\n", y.classes, anchors.join(", "));
    }
    out
}

/// The block of `[convolutional] batch_normalize=1` layers with activation `b.act`.
fn bn_block(b: &BnBlock) -> String {
    let mut sig = String::from("c, k=1, s=1, g=1");
    if b.pad_param {
        sig += ", p=k // 2";
    }
    if b.linear_flag {
        sig += ", linear=false";
    }
    let pad = if b.pad_param { "p" } else { "k // 2" };
    let head = format!("  {}({sig}):", b.name);
    let mut out = format!(
        "{head:<39} # [convolutional] batch_normalize=1: conv, BN, {}\n    - conv: conv(c, k=k, s=s, p={pad}, groups=g, bias=false)\n    - bn: bn(eps=1e-6)\n",
        b.act.darknet_name()
    );
    match (b.act.op(), b.linear_flag) {
        (Some(a), true) => out += &format!("    - if: not linear\n      then: {a}\n"),
        (Some(a), false) => out += &format!("    - {a}\n"),
        (None, _) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::MemoryLoader;

    fn import_and_compile(cfg: &str) -> (String, Graph) {
        let mut sources = Sources::default();
        let file = sources.add("net.cfg", cfg.to_string());
        let spec = import(&sources, file, None).unwrap_or_else(|d| panic!("{}", crate::render::render_plain(&d, &sources)));
        let c = crate::compile("net.yaml", &MemoryLoader([("net.yaml".to_string(), spec.clone())].into()), &crate::Options::default());
        let g = c.graph.unwrap_or_else(|| panic!("{}\n{spec}", crate::render::render_plain(&c.diagnostics, &c.sources)));
        (spec, g)
    }

    /// The darknet layer a node belongs to (`layers.<i>` or `layers.<i>.*`).
    fn layer_of(name: &str) -> usize {
        name.strip_prefix("layers.").and_then(|r| r.split('.').next()).and_then(|i| i.parse().ok()).unwrap_or_else(|| panic!("{name}"))
    }

    /// Every shortcut adds the layer before it and the one three back, whatever folded it.
    fn assert_shortcuts_read_three_back(cfg: &str, expect: &[&str]) {
        let (spec, g) = import_and_compile(cfg);
        for e in expect {
            assert!(spec.contains(e), "no `{e}` in\n{spec}");
        }
        let adds: Vec<_> = g.nodes().filter(|(_, n)| matches!(n.op, Op::Add)).collect();
        assert!(adds.len() >= 5, "{spec}");
        for (_, n) in adds {
            let i = layer_of(&n.name);
            let from: Vec<usize> = n.inputs.iter().map(|&x| layer_of(&g.node(x).name)).collect();
            assert_eq!(from, [i - 1, i - 3], "{}: {spec}", n.name);
        }
    }

    #[test]
    fn folded_references_reach_the_darknet_layers() {
        // Residual units whose shortcut reads three layers back: the block's downsampling conv
        // in the first unit (darknet-53), or the block input itself when the block is the
        // repeat alone (after a conv or a max-pool).
        let conv = |f: usize, k: usize, s: usize| format!("[convolutional]\nbatch_normalize=1\nfilters={f}\nsize={k}\nstride={s}\npad=1\nactivation=leaky\n");
        let unit = |c: usize| format!("{}{}[shortcut]\nfrom=-3\nactivation=linear\n", conv(c / 2, 1, 1), conv(c, 3, 1));
        let net = "[net]\nwidth=64\nheight=64\nchannels=3\n";
        let mut cfg = net.to_string() + &conv(8, 3, 1);
        for (c, n) in [(16, 1), (32, 2), (64, 3)] {
            cfg += &conv(c, 3, 2);
            cfg += &unit(c).repeat(n);
        }
        assert_shortcuts_read_three_back(&cfg, &["  stage(b, c, n):", "- layers: stage(12, 64, n=3)", "from: [-1, -3]"]);
        let cfg = net.to_string() + &conv(16, 3, 2) + &unit(16).repeat(2) + "[maxpool]\nsize=2\nstride=2\n" + &unit(16).repeat(3);
        assert_shortcuts_read_three_back(&cfg, &["  stage(b, n):", "    - repeat: n", "- layers: stage(8, n=3)"]);
    }
}
