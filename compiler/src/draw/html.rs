//! The interactive viewer: one HTML file with the data, the SVG markup of every box and frame
//! (at their origin) and a small script (`viewer.js`), no network.
//!
//! Every instance is laid out here, by [`Composer::place`], with its children as they are when
//! the page opens. The page keeps those ranks, orders and anchors; when a block opens or
//! closes, it only makes room: ranks take the extent of their tallest item and the items of a
//! rank keep their order and move as little as possible from their laid-out anchors to stop
//! overlapping (the same least-squares spread [`super::layout`] uses). Opening nothing thus
//! shows exactly the layout of `tlc draw` at the same depth.

use super::layout::Slot;
use super::model::ItemKind;
use super::picture::{Composer, Content, Foot, LabelShape, Rect};
use super::style::{self, FONT_FAMILY};
use super::svg::{self, esc, num, Styling};
use super::DrawOptions;
use crate::emit::{human, op_label};
use crate::ir::Graph;
use crate::span::{Sources, Span};
use serde_json::{json, Value};
use std::fmt::Write;

const SCRIPT: &str = include_str!("viewer.js");
const STYLE: &str = include_str!("viewer.css");

/// A footprint as `[before, after, along, exit, entry]`.
fn foot_json(f: &Foot) -> Value {
    json!([r(f.before), r(f.after), r(f.along), r(f.exit), r(f.entry)])
}

/// Rounds to 0.1 px (smaller files, stable output).
fn r(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Spec lines as a table (`[file:line, text]`), each stored once.
#[derive(Default)]
struct Lines {
    rows: Vec<(String, String)>,
    index: std::collections::HashMap<(usize, usize), usize>,
}

impl Lines {
    /// Index of the line a span starts on, or -1 without one.
    fn of(&mut self, sources: &Sources, span: Span) -> i64 {
        if span.file >= sources.len() {
            return -1;
        }
        let (line, _) = sources.line_col(span.file, span.start);
        let next = self.rows.len();
        let i = *self.index.entry((span.file, line)).or_insert(next);
        if i == next {
            let text = sources.text(span.file).lines().nth(line - 1).unwrap_or("").trim().to_string();
            self.rows.push((format!("{}:{line}", sources.name(span.file)), text));
        }
        i as i64
    }
}

/// The data of every node: what the details panel shows. Parameter names that extend the
/// node's name are stored from the dot on (`.weight`).
fn nodes_json(c: &Composer, sources: &Sources, lines: &mut Lines) -> Value {
    let nodes: Vec<Value> = c
        .g
        .nodes()
        .map(|(i, n)| {
            let prefix = format!("{}.", n.name);
            let params: Vec<Value> = n.params.iter().map(|p| json!([p.name.strip_prefix(&prefix).map(|x| format!(".{x}")).unwrap_or_else(|| p.name.clone()), p.shape])).collect();
            json!({
                "name": n.name, "op": op_label(&n.op), "attrs": serde_json::to_value(&n.op).unwrap_or(Value::Null),
                "shape": style::shape_label(&n.shape), "params": params, "macs": n.macs, "line": lines.of(sources, n.span),
                "scope": c.tree.scope_of[i.index()],
            })
        })
        .collect();
    Value::Array(nodes)
}

/// One instance: its items (kind, reference, footprint, anchor, rank), ranks of slots (item
/// index, or `-1 - i` for bend `i` of all trunks' bends in order), trunks' bend anchors and
/// edges (from, to, value node, reversed, trunk, bends used). Anchors are whole pixels.
fn scope_json(c: &Composer, s: usize, sources: &Sources, lines: &mut Lines) -> Value {
    let p = c.placed[s].as_ref().expect("every instance is placed");
    let sc = &c.tree.scopes[s];
    let local = &c.locals[s];
    let items: Vec<Value> = local
        .items
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let (kind, reference) = match *k {
                ItemKind::Title => ("t", 0),
                ItemKind::Node(n) => ("n", n.index()),
                ItemKind::Child(ch) => ("c", ch),
                ItemKind::InPort(n) => ("i", n.index()),
                ItemKind::OutPort(n) => ("o", n.index()),
            };
            json!([kind, reference, foot_json(&p.feet[i]), p.layout.x[i].round() as i64, p.layout.rank[i]])
        })
        .collect();
    let mut base = Vec::with_capacity(p.layout.bends.len());
    let mut total = 0;
    for b in &p.layout.bends {
        base.push(total);
        total += b.len();
    }
    let ranks: Vec<Vec<i64>> = p
        .layout
        .ranks
        .iter()
        .map(|rank| {
            rank.iter()
                .map(|slot| match *slot {
                    Slot::Item(i) => i as i64,
                    Slot::Bend(t, k) => -1 - (base[t] + k) as i64,
                })
                .collect()
        })
        .collect();
    let trunks: Vec<Vec<i64>> = p.layout.bends.iter().map(|b| b.iter().map(|x| x.round() as i64).collect()).collect();
    let edges: Vec<Value> = local
        .edges
        .iter()
        .enumerate()
        .map(|(e, le)| json!([le.from, le.to, le.value.index(), p.layout.reversed[e] as u8, p.layout.trunk[e].0, p.layout.trunk[e].1]))
        .collect();
    let line = sc.span.map(|sp| lines.of(sources, sp)).unwrap_or(-1);
    json!({
        "path": sc.path, "block": sc.block, "parent": sc.parent, "level": sc.level,
        "params": sc.params, "macs": sc.macs, "line": line,
        "items": items, "ranks": ranks, "trunks": trunks, "edges": edges, "inset": [r(p.inset.0), r(p.inset.1)],
        "titleW": r(style::text_width(&c.title(s), c.m.name_size)), "titleInset": c.title_in_inset(s),
    })
}

/// The collapsed-box footprint of each instance (in its parent's context) and its markup.
fn block_boxes(c: &Composer, out: &mut String) -> Vec<Value> {
    let labels: Vec<Vec<Option<String>>> = (0..c.tree.scopes.len()).map(|s| c.label_texts(s)).collect();
    let mut feet = vec![Value::Null];
    for s in 1..c.tree.scopes.len() {
        let parent = c.tree.scopes[s].parent.expect("non-root instances have a parent");
        let i = c.locals[parent].items.iter().position(|k| *k == ItemKind::Child(s)).expect("a child is an item of its parent");
        let f = c.collapsed_foot(parent, s, labels[parent][i].clone());
        box_markup(c, &format!("s{s}"), "box block", &f, out);
        feet.push(foot_json(&f));
    }
    feet
}

/// A box group at the origin, hidden until the script places it.
fn box_markup(c: &Composer, id: &str, class: &str, f: &Foot, out: &mut String) {
    if let Content::Box(text, label) = &f.content {
        let (bw, bl) = if c.lr { (text.h, text.w) } else { (text.w, text.h) };
        let b = c.rect(0.0, 0.0, bw, bl);
        let label = label.as_ref().map(|(t, w)| LabelShape { rect: c.label_rect(Rect { x: 0.0, y: 0.0, ..b }, *w), text: t.clone() });
        let _ = writeln!(out, "<g id=\"{id}\" class=\"{class}\" data-w=\"{}\" data-h=\"{}\" style=\"display:none\">{}</g>", num(b.w), num(b.h), svg::box_content(text, label.as_ref(), &c.m, Styling::Classes));
    }
}

/// The viewer page.
pub fn page(g: &Graph, sources: &Sources, opts: &DrawOptions) -> String {
    let mut c = Composer::new(g, &DrawOptions { shapes: true, ..opts.clone() });
    c.place_scopes(true);
    let mut boxes = String::new();
    for s in 0..c.tree.scopes.len() {
        let p = c.placed[s].as_ref().expect("placed");
        for (i, k) in c.locals[s].items.iter().enumerate() {
            if let ItemKind::Node(n) = k {
                box_markup(&c, &format!("n{}", n.index()), "box node", &p.feet[i], &mut boxes);
            }
        }
    }
    let block_feet = block_boxes(&c, &mut boxes);
    let mut frames = String::new();
    for s in 1..c.tree.scopes.len() {
        let _ = writeln!(
            frames,
            "<g id=\"c{s}\" class=\"cluster\" style=\"display:none\"><rect rx=\"6\" fill=\"{}\" stroke=\"#8a9bb0\" stroke-dasharray=\"5 3\"/><text class=\"ctitle\" font-size=\"{}\" font-weight=\"bold\" fill=\"#4a5a6e\">{}</text></g>",
            svg::cluster_fill(c.tree.scopes[s].level),
            num(c.m.name_size),
            esc(&c.title(s))
        );
    }
    let mut lines = Lines::default();
    let nodes = nodes_json(&c, sources, &mut lines);
    let scopes: Vec<Value> = (0..c.tree.scopes.len()).map(|s| scope_json(&c, s, sources, &mut lines)).collect();
    let data = json!({
        "model": g.meta.name, "variant": g.meta.variant, "lr": c.lr, "depth": opts.depth.max(1), "m": c.m,
        "params": g.param_count(), "paramsH": human(g.param_count() as u64), "macsH": human(g.macs()),
        "nodes": nodes, "scopes": scopes, "blockFeet": block_feet, "lines": lines.rows,
    });
    let data = data.to_string().replace("</", "<\\/");
    let title = esc(&c.title(0));
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>{STYLE}{}</style></head>\n<body>\n\
<header><b>{title}</b><input id=\"search\" type=\"search\" placeholder=\"search nodes and blocks\" autocomplete=\"off\"><span id=\"hits\"></span>\
<button id=\"fit\">fit</button><button id=\"more\">open a level</button><button id=\"less\">close a level</button></header>\n\
<main><svg id=\"canvas\" xmlns=\"http://www.w3.org/2000/svg\" font-family=\"{FONT_FAMILY}\">{}<g id=\"viewport\">\
<text id=\"title\" font-size=\"{}\" font-weight=\"bold\" fill=\"#1b2430\">{title}</text>\n<g id=\"frames\">\n{frames}</g><g id=\"edges\"></g><g id=\"boxes\">\n{boxes}</g></g></svg>\n\
<aside id=\"details\"><p class=\"hint\">Click a box for its details; click a block (heavy border) to open it and a frame's title to close it. Drag to pan, wheel to zoom.</p></aside></main>\n\
<script type=\"application/json\" id=\"tlc-data\">{data}</script>\n<script>{SCRIPT}</script>\n</body></html>\n",
        svg::class_styles(&c.m),
        svg::defs(),
        num(c.m.name_size),
    )
}
