//! Expansion of blocks, repeats and patterns, and lowering to the IR graph. Each node is
//! shape-checked as it is added; errors are collected, the failed value continues with an
//! unknown shape so later independent errors are still found.

use crate::diag::{did_you_mean, Diagnostic, Frame};
use crate::expr::{eval, parse_chain, render_template, Env, Expr, ExprKind, Step, Value};
use crate::ir::{Node, NodeId, Op, Param, Scope, ScopeOrigin};
use crate::ops::{self, Args};
use crate::spec::BlockDef;
use crate::span::Span;
use crate::yaml::{Kind, Node as Yaml};
use petgraph::graph::DiGraph;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

mod calls;
mod patterns;

/// Most iterations a single `repeat`/`dense` may have.
pub const MAX_REPEAT: i64 = 10_000;
/// Most nodes a graph may have.
pub const MAX_NODES: usize = 500_000;
/// Deepest block nesting (catches runaway recursion).
pub const MAX_DEPTH: usize = 64;

/// Keys that make a list item a pattern rather than a named layer.
pub const ITEM_KEYS: &[&str] = &["repeat", "dense", "as", "name", "do", "sees", "start", "residual", "skip", "post", "branches", "join", "if", "then", "else", "side", "from", "order"];

/// Names visible to `@ref` and `from:` inside one body: item names and outputs in order.
#[derive(Default)]
struct Locals {
    named: Vec<(String, NodeId)>,
    order: Vec<NodeId>,
}

/// Expansion state of one scope.
#[derive(Clone)]
struct Ctx {
    env: Env,
    scope: String,
    counter: Rc<RefCell<usize>>,
    trace: Vec<Frame>,
    locals: Rc<RefCell<Locals>>,
    inputs: Vec<NodeId>,
    depth: usize,
}

impl Ctx {
    fn child_scope(&self, name: &str) -> Ctx {
        Ctx {
            scope: join(&self.scope, name),
            counter: Rc::new(RefCell::new(0)),
            locals: Rc::new(RefCell::new(Locals::default())),
            ..self.clone()
        }
    }
    fn next_index(&self) -> String {
        let mut c = self.counter.borrow_mut();
        *c += 1;
        (*c - 1).to_string()
    }
    fn record(&self, name: Option<&str>, out: NodeId) {
        let mut l = self.locals.borrow_mut();
        if let Some(n) = name {
            l.named.push((n.to_string(), out));
        }
        l.order.push(out);
    }
}

fn join(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_string()
    } else {
        format!("{scope}.{name}")
    }
}

/// Builds the IR graph from a spec's graph body.
pub struct Lowerer {
    /// The graph being built.
    pub graph: DiGraph<Node, u32>,
    /// Named sub-graphs.
    pub scopes: Vec<Scope>,
    /// Collected diagnostics.
    pub diags: Vec<Diagnostic>,
    /// `order:` items: sub-modules of a scope that `state_dict` lists first (PyTorch
    /// registration order where it differs from use order).
    pub param_order: Vec<(String, Vec<String>)>,
    blocks: HashMap<String, BlockDef>,
    names: HashMap<String, NodeId>,
    params: HashMap<String, Span>,
    aborted: bool,
}

impl Lowerer {
    /// A lowerer over the given blocks (from the spec and its imports).
    pub fn new(blocks: Vec<BlockDef>) -> Lowerer {
        Lowerer {
            graph: DiGraph::new(),
            scopes: Vec::new(),
            diags: Vec::new(),
            param_order: Vec::new(),
            blocks: blocks.into_iter().map(|b| (b.name.clone(), b)).collect(),
            names: HashMap::new(),
            params: HashMap::new(),
            aborted: false,
        }
    }

    /// Lowers the whole graph body from an input of `shape`; returns the output node.
    pub fn lower_graph(&mut self, body: &Yaml, input_shape: Option<Vec<usize>>, env: Env, span: Span) -> NodeId {
        let input = self.graph.add_node(Node {
            name: "input".into(),
            op: Op::Input,
            inputs: vec![],
            shape: input_shape,
            params: vec![],
            macs: 0,
            span,
            trace: vec![],
        });
        self.names.insert("input".into(), input);
        let ctx = Ctx {
            env,
            scope: String::new(),
            counter: Rc::new(RefCell::new(0)),
            trace: vec![],
            locals: Rc::new(RefCell::new(Locals::default())),
            inputs: vec![input],
            depth: 0,
        };
        self.body(body, input, &ctx)
    }

    fn error(&mut self, d: Diagnostic, ctx: &Ctx) {
        let mut d = d;
        if d.trace.is_empty() {
            d.trace = ctx.trace.clone().into_boxed_slice();
        }
        if self.diags.len() < 200 {
            self.diags.push(d);
        }
    }

    /// A node of unknown shape standing for a failed value.
    fn poison(&mut self, cur: NodeId, span: Span, ctx: &Ctx) -> NodeId {
        let name = self.unique(&join(&ctx.scope, "error"));
        self.push_node(Node { name, op: Op::Identity, inputs: vec![cur], shape: None, params: vec![], macs: 0, span, trace: ctx.trace.clone() })
    }

    fn unique(&self, name: &str) -> String {
        if !self.names.contains_key(name) {
            return name.to_string();
        }
        (1..).map(|i| format!("{name}:{i}")).find(|n| !self.names.contains_key(n)).unwrap()
    }

    fn push_node(&mut self, node: Node) -> NodeId {
        let inputs = node.inputs.clone();
        let name = node.name.clone();
        let id = self.graph.add_node(node);
        for (slot, i) in inputs.into_iter().enumerate() {
            self.graph.add_edge(i, id, slot as u32);
        }
        self.names.insert(name, id);
        if self.graph.node_count() > MAX_NODES && !self.aborted {
            self.aborted = true;
            self.diags.push(Diagnostic::error("E0401", self.graph[id].span, format!("the graph has more than {MAX_NODES} nodes; refusing to expand further"))
                .hint("check repeat counts and recursive blocks"));
        }
        id
    }

    /// Lowers a body: a chain string, a list of items, one item, or nothing (identity).
    fn body(&mut self, body: &Yaml, cur: NodeId, ctx: &Ctx) -> NodeId {
        if self.aborted {
            return cur;
        }
        match &body.kind {
            Kind::Null => cur,
            Kind::Seq(items) => items.iter().fold(cur, |c, it| self.item(it, c, ctx)),
            _ => self.item(body, cur, ctx),
        }
    }

    fn item(&mut self, item: &Yaml, cur: NodeId, ctx: &Ctx) -> NodeId {
        if self.aborted {
            return cur;
        }
        match &item.kind {
            Kind::Str(text) => match parse_chain(text, item.span) {
                Ok(steps) => {
                    let mut c = cur;
                    for s in &steps {
                        let name = s.name.as_ref().map(|(n, _)| n.clone());
                        c = self.step(s, name, vec![c], ctx);
                    }
                    c
                }
                Err(d) => {
                    self.error(d, ctx);
                    self.poison(cur, item.span, ctx)
                }
            },
            Kind::Seq(_) => self.body(item, cur, ctx),
            Kind::Map(entries) => self.map_item(item, entries, cur, ctx),
            _ => {
                self.error(
                    Diagnostic::error("E0302", item.span, format!("expected a layer, found {}", item.type_name()))
                        .label("not a layer")
                        .hint("write a layer call such as `conv(64, k=3)`, a `name: layer` pair, or a pattern such as `residual:`"),
                    ctx,
                );
                cur
            }
        }
    }

    fn map_item(&mut self, item: &Yaml, entries: &[(Yaml, Yaml)], cur: NodeId, ctx: &Ctx) -> NodeId {
        let get = |k: &str| entry(entries, k);
        if let (Some(o), 1) = (get("order"), entries.len()) {
            // `- order: [reduction, norm]`: no node, only the state_dict order of this scope.
            let names = match &o.kind {
                Kind::Seq(s) => s.iter().filter_map(|n| n.scalar_text()).collect(),
                _ => vec![o.scalar_text().unwrap_or_default()],
            };
            self.param_order.push((ctx.scope.clone(), names));
            return cur;
        }
        let Some(name_entry) = self.item_name(entries, ctx) else { return self.poison(cur, item.span, ctx) };
        // Explicit inputs.
        let inputs = match get("from") {
            Some(f) => match self.refs(f, ctx) {
                Some(v) => v,
                None => return self.poison(cur, f.span, ctx),
            },
            None => vec![cur],
        };
        let pattern = ["repeat", "dense", "residual", "branches", "if", "side"].into_iter().find(|k| get(k).is_some());
        if let Err(d) = check_item_keys(pattern, name_entry, entries) {
            self.error(d, ctx);
            return self.poison(cur, item.span, ctx);
        }
        let out = match (pattern, name_entry) {
            (Some(p), _) => self.pattern(p, item, entries, inputs, cur, ctx),
            (None, Some((k, v))) => {
                return match render_template(&k.scalar_text().unwrap_or_default(), k.span, &ctx.env) {
                    Ok(name) => self.named(&name, k.span, v, inputs, ctx, false),
                    Err(d) => {
                        self.error(d, ctx);
                        self.poison(cur, k.span, ctx)
                    }
                };
            }
            (None, None) => match get("do") {
                Some(d) => self.unnamed_with_inputs(d, inputs, ctx),
                None => {
                    self.error(Diagnostic::error("E0305", item.span, "this item has no layer").hint("add `do: layer` or `name: layer`"), ctx);
                    cur
                }
            },
        };
        ctx.record(None, out);
        out
    }

    /// The item's name entry (its one key that is not a pattern key), `Some(None)` when it has
    /// none, `None` (reported) when it has two.
    fn item_name<'y>(&mut self, entries: &'y [(Yaml, Yaml)], ctx: &Ctx) -> Option<Option<(&'y Yaml, &'y Yaml)>> {
        let mut name_entry: Option<(&Yaml, &Yaml)> = None;
        for (k, v) in entries {
            let Some(key) = k.scalar_text() else {
                self.error(Diagnostic::error("E0010", k.span, "expected a name as key"), ctx);
                continue;
            };
            if ITEM_KEYS.contains(&key.as_str()) {
                continue;
            }
            if let Some((prev, _)) = name_entry {
                let hint = did_you_mean(&key, ITEM_KEYS.iter().copied());
                self.error(
                    Diagnostic::error("E0303", k.span, format!("an item has one name, found a second key `{key}`"))
                        .label("second name")
                        .with_label(prev.span, "first name")
                        .maybe_hint(hint)
                        .hint("write each layer as its own list item (`- name: layer`)"),
                    ctx,
                );
                return None;
            }
            name_entry = Some((k, v));
        }
        Some(name_entry)
    }

    /// Expands a pattern item (`repeat`, `dense`, `residual`, `branches`, `if`, `side`) on
    /// its first input.
    fn pattern(&mut self, pattern: &str, item: &Yaml, entries: &[(Yaml, Yaml)], inputs: Vec<NodeId>, cur: NodeId, ctx: &Ctx) -> NodeId {
        let get = |k: &str| entry(entries, k);
        let x = inputs[0];
        match pattern {
            "repeat" | "dense" => self.repeat(pattern == "dense", item, entries, x, ctx),
            "residual" => {
                let a = self.body(get("residual").unwrap(), x, ctx);
                let b = match get("skip") {
                    Some(s) => self.body(s, x, ctx),
                    None => x,
                };
                let s = self.synth(Op::Add, vec![a, b], "add", item.span, ctx);
                match get("post") {
                    Some(p) => self.body(p, s, ctx),
                    None => s,
                }
            }
            "branches" => self.branches(get("branches").unwrap(), get("join"), get("post"), x, ctx),
            "if" => {
                let c = get("if").unwrap();
                match self.eval_node(c, ctx) {
                    Some(v) => match get(if v.truthy() { "then" } else { "else" }) {
                        Some(body) => self.body(body, x, ctx),
                        None => x,
                    },
                    None => self.poison(cur, c.span, ctx),
                }
            }
            _ => {
                self.body(get("side").unwrap(), x, ctx);
                cur
            }
        }
    }

    fn unnamed_with_inputs(&mut self, d: &Yaml, inputs: Vec<NodeId>, ctx: &Ctx) -> NodeId {
        match &d.kind {
            Kind::Str(text) => match parse_chain(text, d.span) {
                Ok(steps) => {
                    let mut ins = inputs;
                    let mut c = ins[0];
                    for s in &steps {
                        let name = s.name.as_ref().map(|(n, _)| n.clone());
                        c = self.step(s, name, std::mem::take(&mut ins), ctx);
                        ins = vec![c];
                    }
                    c
                }
                Err(e) => {
                    self.error(e, ctx);
                    self.poison(inputs[0], d.span, ctx)
                }
            },
            _ => self.body(d, inputs[0], ctx),
        }
    }

    /// `name: value`: a single layer named `name`, or a sub-scope for a chain or a body;
    /// `repeat_name` when the name is a `repeat`'s `name:` template.
    fn named(&mut self, name: &str, name_span: Span, v: &Yaml, inputs: Vec<NodeId>, ctx: &Ctx, repeat_name: bool) -> NodeId {
        ctx.next_index();
        let (call_origin, origin) = if repeat_name {
            (ScopeOrigin::RepeatName, ScopeOrigin::RepeatName)
        } else {
            (ScopeOrigin::NamedCall, ScopeOrigin::NamedItem)
        };
        let out = match &v.kind {
            Kind::Str(text) => match parse_chain(text, v.span) {
                Ok(steps) if steps.len() == 1 && steps[0].name.is_none() => self.step_named(&steps[0], name.to_string(), inputs, ctx, call_origin),
                Ok(steps) => {
                    let sub = ctx.child_scope(name);
                    let mut ins = inputs;
                    let mut c = ins[0];
                    for s in &steps {
                        let n = s.name.as_ref().map(|(n, _)| n.clone());
                        c = self.step(s, n, std::mem::take(&mut ins), &sub);
                        ins = vec![c];
                    }
                    self.scopes.push(Scope { name: sub.scope.clone(), output: c, block: None, origin, span: name_span });
                    c
                }
                Err(d) => {
                    self.error(d, ctx);
                    self.poison(inputs[0], v.span, ctx)
                }
            },
            Kind::Null => {
                self.error(Diagnostic::error("E0305", name_span, format!("`{name}` has no layer")).hint(format!("write `{name}: conv(...)` or a list of layers")), ctx);
                inputs[0]
            }
            _ => {
                let sub = ctx.child_scope(name);
                let mut sub = sub;
                sub.inputs = inputs.clone();
                let c = self.body(v, inputs[0], &sub);
                self.scopes.push(Scope { name: sub.scope.clone(), output: c, block: None, origin, span: name_span });
                c
            }
        };
        ctx.record(Some(name), out);
        out
    }

}

/// The keys a pattern item takes (`None`: a named or `do:` item).
fn pattern_keys(pattern: Option<&str>) -> &'static [&'static str] {
    match pattern {
        Some("repeat") => &["repeat", "as", "name", "do", "from"],
        Some("dense") => &["dense", "as", "name", "do", "sees", "start", "from"],
        Some("residual") => &["residual", "skip", "post", "from"],
        Some("branches") => &["branches", "join", "post", "from"],
        Some("if") => &["if", "then", "else", "from"],
        Some("side") => &["side", "from"],
        _ => &["do", "from"],
    }
}

/// A pattern item cannot also be named, and no item takes another kind's keys.
fn check_item_keys(pattern: Option<&str>, name_entry: Option<(&Yaml, &Yaml)>, entries: &[(Yaml, Yaml)]) -> Result<(), Diagnostic> {
    let allowed = pattern_keys(pattern);
    if let (Some(p), Some((k, v))) = (pattern, name_entry) {
        let key = k.scalar_text().unwrap_or_default();
        return Err(if matches!(v.kind, Kind::Null) {
            // `- layer1:` followed by the pattern's keys at the same indentation.
            Diagnostic::error("E0303", k.span, format!("a `{p}` item cannot also be named `{key}`"))
                .label("a name")
                .hint(format!("indent the pattern under `{key}:` to make it a named scope, or give the pattern's `do:` a `name:` template"))
        } else {
            Diagnostic::error("E0304", k.span, format!("`{key}` is not a key of a `{p}` item"))
                .label("unknown key")
                .maybe_hint(did_you_mean(&key, allowed.iter().copied()))
                .hint(format!("a `{p}` item takes: {}", allowed.join(", ")))
        });
    }
    for (k, _) in entries {
        if let Some(key) = k.as_str() {
            if ITEM_KEYS.contains(&key) && !allowed.contains(&key) {
                return Err(Diagnostic::error("E0304", k.span, format!("`{key}` does not belong in this item"))
                    .label("unexpected key")
                    .hint(format!("this item takes: {}", allowed.join(", "))));
            }
        }
    }
    Ok(())
}

fn entry<'a>(entries: &'a [(Yaml, Yaml)], key: &str) -> Option<&'a Yaml> {
    entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

fn describe(ins: &[&[usize]]) -> String {
    ins.iter().map(|s| ops::fmt_shape(s)).collect::<Vec<_>>().join(" and ")
}
