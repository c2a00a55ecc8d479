//! Expansion of blocks, repeats and patterns, and lowering to the IR graph. Each node is
//! shape-checked as it is added; errors are collected, the failed value continues with an
//! unknown shape so later independent errors are still found.

use crate::diag::{did_you_mean, Diagnostic, Frame};
use crate::expr::{eval, parse_chain, render_template, Env, Expr, ExprKind, Step, Value};
use crate::ir::{Node, NodeId, Op, Param, Scope};
use crate::ops::{self, Args};
use crate::spec::BlockDef;
use crate::span::Span;
use crate::yaml::{Kind, Node as Yaml};
use petgraph::graph::DiGraph;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

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
            d.trace = ctx.trace.clone();
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
        let mut name_entry: Option<(&Yaml, &Yaml)> = None;
        for (k, v) in entries {
            let Some(key) = k.scalar_text() else {
                self.error(Diagnostic::error("E0010", k.span, "expected a name as key"), ctx);
                continue;
            };
            if !ITEM_KEYS.contains(&key.as_str()) {
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
                    return self.poison(cur, item.span, ctx);
                }
                name_entry = Some((k, v));
            }
        }
        // Explicit inputs.
        let inputs = match get("from") {
            Some(f) => match self.refs(f, ctx) {
                Some(v) => v,
                None => return self.poison(cur, f.span, ctx),
            },
            None => vec![cur],
        };
        let pattern = ["repeat", "dense", "residual", "branches", "if", "side"].into_iter().find(|k| get(k).is_some());
        let allowed: &[&str] = match pattern {
            Some("repeat") => &["repeat", "as", "name", "do", "from"],
            Some("dense") => &["dense", "as", "name", "do", "sees", "start", "from"],
            Some("residual") => &["residual", "skip", "post", "from"],
            Some("branches") => &["branches", "join", "post", "from"],
            Some("if") => &["if", "then", "else", "from"],
            Some("side") => &["side", "from"],
            _ => &["do", "from"],
        };
        if let (Some(p), Some((k, v))) = (pattern, name_entry) {
            let key = k.scalar_text().unwrap_or_default();
            let d = if matches!(v.kind, crate::yaml::Kind::Null) {
                // `- layer1:` followed by the pattern's keys at the same indentation.
                Diagnostic::error("E0303", k.span, format!("a `{p}` item cannot also be named `{key}`"))
                    .label("a name")
                    .hint(format!("indent the pattern under `{key}:` to make it a named scope, or give the pattern's `do:` a `name:` template"))
            } else {
                Diagnostic::error("E0304", k.span, format!("`{key}` is not a key of a `{p}` item"))
                    .label("unknown key")
                    .maybe_hint(did_you_mean(&key, allowed.iter().copied()))
                    .hint(format!("a `{p}` item takes: {}", allowed.join(", ")))
            };
            self.error(d, ctx);
            return self.poison(cur, item.span, ctx);
        }
        for (k, _) in entries {
            if let Some(key) = k.as_str() {
                if ITEM_KEYS.contains(&key) && !allowed.contains(&key) {
                    self.error(
                        Diagnostic::error("E0304", k.span, format!("`{key}` does not belong in this item"))
                            .label("unexpected key")
                            .hint(format!("this item takes: {}", allowed.join(", "))),
                        ctx,
                    );
                    return self.poison(cur, item.span, ctx);
                }
            }
        }
        let out = match pattern {
            Some("repeat") | Some("dense") => self.repeat(pattern.unwrap() == "dense", item, entries, inputs[0], ctx),
            Some("residual") => {
                let x = inputs[0];
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
            Some("branches") => self.branches(get("branches").unwrap(), get("join"), get("post"), inputs[0], ctx),
            Some("if") => {
                let c = get("if").unwrap();
                match self.eval_node(c, ctx) {
                    Some(v) => {
                        if v.truthy() {
                            get("then").map(|t| self.body(t, inputs[0], ctx)).unwrap_or(inputs[0])
                        } else {
                            get("else").map(|e| self.body(e, inputs[0], ctx)).unwrap_or(inputs[0])
                        }
                    }
                    None => self.poison(cur, c.span, ctx),
                }
            }
            Some("side") => {
                self.body(get("side").unwrap(), inputs[0], ctx);
                cur
            }
            _ => match name_entry {
                Some((k, v)) => {
                    let name = match render_template(&k.scalar_text().unwrap_or_default(), k.span, &ctx.env) {
                        Ok(n) => n,
                        Err(d) => {
                            self.error(d, ctx);
                            return self.poison(cur, k.span, ctx);
                        }
                    };
                    return self.named(&name, k.span, v, inputs, ctx);
                }
                None => match get("do") {
                    Some(d) => self.unnamed_with_inputs(d, inputs, ctx),
                    None => {
                        self.error(Diagnostic::error("E0305", item.span, "this item has no layer").hint("add `do: layer` or `name: layer`"), ctx);
                        cur
                    }
                },
            },
        };
        ctx.record(None, out);
        out
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

    /// `name: value`: a single layer named `name`, or a sub-scope for a chain or a body.
    fn named(&mut self, name: &str, name_span: Span, v: &Yaml, inputs: Vec<NodeId>, ctx: &Ctx) -> NodeId {
        ctx.next_index();
        let out = match &v.kind {
            Kind::Str(text) => match parse_chain(text, v.span) {
                Ok(steps) if steps.len() == 1 && steps[0].name.is_none() => self.step_named(&steps[0], name.to_string(), inputs, ctx),
                Ok(steps) => {
                    let sub = ctx.child_scope(name);
                    let mut ins = inputs;
                    let mut c = ins[0];
                    for s in &steps {
                        let n = s.name.as_ref().map(|(n, _)| n.clone());
                        c = self.step(s, n, std::mem::take(&mut ins), &sub);
                        ins = vec![c];
                    }
                    self.scopes.push(Scope { name: sub.scope.clone(), output: c, block: None });
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
                self.scopes.push(Scope { name: sub.scope.clone(), output: c, block: None });
                c
            }
        };
        ctx.record(Some(name), out);
        out
    }

    /// A chain step with an optional explicit name; unnamed steps take the next index.
    fn step(&mut self, s: &Step, name: Option<String>, inputs: Vec<NodeId>, ctx: &Ctx) -> NodeId {
        if let ExprKind::Ref(r) = &s.expr.kind {
            return self.resolve(r, s.expr.span, ctx).unwrap_or(inputs[0]);
        }
        let out = match name {
            Some(n) => {
                ctx.next_index();
                self.step_named(s, n, inputs, ctx)
            }
            None => {
                let n = ctx.next_index();
                self.step_named(s, n, inputs, ctx)
            }
        };
        ctx.record(s.name.as_ref().map(|(n, _)| n.as_str()), out);
        out
    }

    fn step_named(&mut self, s: &Step, name: String, inputs: Vec<NodeId>, ctx: &Ctx) -> NodeId {
        let (callee, callee_span, args, kwargs): (&str, Span, &[Expr], &[(String, Span, Expr)]) = match &s.expr.kind {
            ExprKind::Var(v) => (v, s.expr.span, &[], &[]),
            ExprKind::Call(c) => (&c.name, c.name_span, &c.args, &c.kwargs),
            ExprKind::Ref(r) => return self.resolve(r, s.expr.span, ctx).unwrap_or(inputs[0]),
            _ => {
                self.error(Diagnostic::error("E0302", s.expr.span, "expected a layer call such as `conv(64, k=3)`").label("not a layer"), ctx);
                return self.poison(inputs[0], s.expr.span, ctx);
            }
        };
        // Evaluate arguments; `@ref` arguments become extra inputs.
        let mut inputs = inputs;
        let mut pos = Vec::new();
        for a in args {
            if let ExprKind::Ref(r) = &a.kind {
                match self.resolve(r, a.span, ctx) {
                    Some(id) => inputs.push(id),
                    None => return self.poison(inputs[0], a.span, ctx),
                }
                continue;
            }
            match eval(a, &ctx.env) {
                Ok(v) => pos.push((v, a.span)),
                Err(d) => {
                    self.error(d, ctx);
                    return self.poison(inputs[0], a.span, ctx);
                }
            }
        }
        if let Some(b) = self.blocks.get(callee).cloned() {
            return self.instantiate(&b, callee_span, s.expr.span, pos, kwargs, name, inputs, ctx);
        }
        let mut kw = Vec::new();
        for (k, ks, e) in kwargs {
            match eval(e, &ctx.env) {
                Ok(v) => kw.push((k.clone(), *ks, v, e.span)),
                Err(d) => {
                    self.error(d, ctx);
                    return self.poison(inputs[0], e.span, ctx);
                }
            }
        }
        if !ops::is_op(callee) {
            let candidates: Vec<&str> = ops::OPS.iter().map(|(n, _)| *n).chain(self.blocks.keys().map(|k| k.as_str())).collect();
            self.error(
                Diagnostic::error("E0301", callee_span, format!("unknown layer or block `{callee}`"))
                    .label("not an op or a block of this spec")
                    .maybe_hint(did_you_mean(callee, candidates.iter().copied()))
                    .hint("define it under `blocks:` or import the file that defines it"),
                ctx,
            );
            return self.poison(inputs[0], s.expr.span, ctx);
        }
        let mut a = Args::new(s.expr.span, pos, kw);
        match ops::build(callee, &mut a) {
            Ok(op) => {
                let full = join(&ctx.scope, &name);
                self.add_op(full, op, inputs, s.expr.span, ctx)
            }
            Err(d) => {
                self.error(d, ctx);
                self.poison(inputs[0], s.expr.span, ctx)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn instantiate(
        &mut self,
        b: &BlockDef,
        callee_span: Span,
        call_span: Span,
        pos: Vec<(Value, Span)>,
        kwargs: &[(String, Span, Expr)],
        name: String,
        inputs: Vec<NodeId>,
        ctx: &Ctx,
    ) -> NodeId {
        if ctx.depth >= MAX_DEPTH {
            self.error(
                Diagnostic::error("E0402", call_span, format!("blocks nest deeper than {MAX_DEPTH} levels (is `{}` recursive?)", b.name))
                    .with_label(b.span, "block defined here"),
                ctx,
            );
            return self.poison(inputs[0], call_span, ctx);
        }
        let mut env = ctx.env.clone();
        // `in_channels`: channels of the block input (1 while unknown, so errors do not cascade).
        let c = self.graph[inputs[0]].shape.as_ref().and_then(|s| s.first().copied()).unwrap_or(1);
        env.set("in_channels", Value::Int(c as i64));
        if pos.len() > b.params.len() {
            self.error(
                Diagnostic::error("E0203", pos[b.params.len()].1, format!("block `{}` takes {} argument(s), found {}", b.name, b.params.len(), pos.len()))
                    .with_label(b.span, "defined here"),
                ctx,
            );
            return self.poison(inputs[0], call_span, ctx);
        }
        for (k, ks, _) in kwargs {
            if !b.params.iter().any(|(p, _)| p == k) {
                let names: Vec<&str> = b.params.iter().map(|(p, _)| p.as_str()).collect();
                self.error(
                    Diagnostic::error("E0204", *ks, format!("block `{}` has no parameter `{k}`", b.name))
                        .label("unknown parameter")
                        .with_label(b.span, "defined here")
                        .maybe_hint(did_you_mean(k, names.iter().copied())),
                    ctx,
                );
                return self.poison(inputs[0], call_span, ctx);
            }
        }
        for (i, (p, default)) in b.params.iter().enumerate() {
            let v = if let Some((v, _)) = pos.get(i) {
                Ok(v.clone())
            } else if let Some((_, _, e)) = kwargs.iter().find(|(k, _, _)| k == p) {
                eval(e, &ctx.env)
            } else if let Some(d) = default {
                eval(d, &env)
            } else {
                Err(Diagnostic::error("E0201", call_span, format!("missing argument `{p}` of block `{}`", b.name))
                    .label(format!("`{p}` is required"))
                    .with_label(b.span, "defined here"))
            };
            match v {
                Ok(v) => env.set(p, v),
                Err(d) => {
                    self.error(d, ctx);
                    return self.poison(inputs[0], call_span, ctx);
                }
            }
        }
        let path = join(&ctx.scope, &name);
        let mut trace = ctx.trace.clone();
        trace.push(Frame { block: b.name.clone(), path: path.clone(), span: callee_span });
        let sub = Ctx {
            env,
            scope: path.clone(),
            counter: Rc::new(RefCell::new(0)),
            trace,
            locals: Rc::new(RefCell::new(Locals::default())),
            inputs: inputs.clone(),
            depth: ctx.depth + 1,
        };
        let out = self.body(&b.body, inputs[0], &sub);
        self.scopes.push(Scope { name: path, output: out, block: Some(b.name.clone()) });
        out
    }

    /// Adds an op node: resolves, infers its shape, names its parameters.
    fn add_op(&mut self, full: String, mut op: Op, inputs: Vec<NodeId>, span: Span, ctx: &Ctx) -> NodeId {
        let shapes: Vec<Option<Vec<usize>>> = inputs.iter().map(|&i| self.graph[i].shape.clone()).collect();
        let known: Option<Vec<Vec<usize>>> = shapes.into_iter().collect();
        let (shape, params, macs) = match known {
            None => (None, vec![], 0),
            Some(ins) => {
                let refs: Vec<&[usize]> = ins.iter().map(|s| s.as_slice()).collect();
                if let Some(first) = refs.first() {
                    ops::conv::resolve(&mut op, first);
                }
                match ops::infer(&op, &refs) {
                    Ok(out) => {
                        let params = ops::params(&op, &refs);
                        let macs = ops::macs(&op, &refs, &out);
                        (Some(out), params, macs)
                    }
                    Err(e) => {
                        let mut d = Diagnostic::error("E0310", span, e.message).label(format!("input is {}", describe(&refs)));
                        if inputs.len() > 1 {
                            for (k, &i) in inputs.iter().enumerate() {
                                let n = &self.graph[i];
                                d = d.with_label(n.span, format!("input {} (`{}`) is {}", k + 1, n.name, ops::fmt_shape(&ins[k])));
                            }
                        }
                        if let Some(h) = e.hint {
                            d = d.hint(h);
                        }
                        self.error(d, ctx);
                        (None, vec![], 0)
                    }
                }
            }
        };
        let name = if params.is_empty() { self.unique(&full) } else { full.clone() };
        let mut plist = Vec::new();
        for (suffix, pshape, kind) in params {
            let pname = if suffix.is_empty() { name.clone() } else { format!("{name}.{suffix}") };
            if let Some(prev) = self.params.get(&pname) {
                let prev = *prev;
                self.error(
                    Diagnostic::error("E0320", span, format!("parameter `{pname}` is defined twice"))
                        .label("second definition")
                        .with_label(prev, "first definition")
                        .hint("give the layers different names"),
                    ctx,
                );
                continue;
            }
            self.params.insert(pname.clone(), span);
            plist.push(Param { name: pname, shape: pshape, kind });
        }
        let name = if self.names.contains_key(&name) { self.unique(&name) } else { name };
        self.push_node(Node { name, op, inputs, shape, params: plist, macs, span, trace: ctx.trace.clone() })
    }

    /// A functional node made by a pattern (add, concat): named after its op, no index.
    fn synth(&mut self, op: Op, inputs: Vec<NodeId>, base: &str, span: Span, ctx: &Ctx) -> NodeId {
        if inputs.len() == 1 && matches!(op, Op::Concat { .. } | Op::Add | Op::Mul) {
            return inputs[0];
        }
        let full = self.unique(&join(&ctx.scope, base));
        self.add_op(full, op, inputs, span, ctx)
    }

    fn repeat(&mut self, dense: bool, item: &Yaml, entries: &[(Yaml, Yaml)], cur: NodeId, ctx: &Ctx) -> NodeId {
        let get = |k: &str| entry(entries, k);
        let key = if dense { "dense" } else { "repeat" };
        let count_node = get(key).unwrap();
        let Some(n) = self.eval_node(count_node, ctx) else { return self.poison(cur, count_node.span, ctx) };
        let n = match n {
            Value::Int(n) if (0..=MAX_REPEAT).contains(&n) => n,
            Value::Int(n) => {
                self.error(
                    Diagnostic::error("E0403", count_node.span, format!("`{key}` count must be between 0 and {MAX_REPEAT}, found {n}")).label("out of range"),
                    ctx,
                );
                return self.poison(cur, count_node.span, ctx);
            }
            other => {
                self.error(Diagnostic::error("E0202", count_node.span, format!("`{key}` needs an integer count, found {} `{other}`", other.type_name())), ctx);
                return self.poison(cur, count_node.span, ctx);
            }
        };
        let var = get("as").and_then(|v| v.as_str()).unwrap_or("i").to_string();
        let Some(body) = get("do") else {
            self.error(Diagnostic::error("E0305", item.span, format!("`{key}` needs a `do:` body")).hint(format!("write `{key}: N` and `do: layer`")), ctx);
            return cur;
        };
        let last_only = get("sees").and_then(|s| s.as_str()) == Some("last");
        let mut feats = vec![cur];
        let mut c = cur;
        if let Some(start) = get("start") {
            c = self.body(start, cur, ctx);
        }
        for i in 0..n {
            let mut sub = ctx.clone();
            sub.env.set(&var, Value::Int(i));
            let input = if dense && !last_only {
                self.synth(Op::Concat { dim: 1 }, feats.clone(), "concat", item.span, ctx)
            } else {
                c
            };
            c = match get("name") {
                Some(t) => match render_template(&t.scalar_text().unwrap_or_default(), t.span, &sub.env) {
                    Ok(name) => self.named(&name, t.span, body, vec![input], &sub),
                    Err(d) => {
                        self.error(d, ctx);
                        return self.poison(cur, t.span, ctx);
                    }
                },
                None => self.body(body, input, &sub),
            };
            feats.push(c);
        }
        if dense {
            self.synth(Op::Concat { dim: 1 }, feats, "concat", item.span, ctx)
        } else {
            c
        }
    }

    fn branches(&mut self, list: &Yaml, join_node: Option<&Yaml>, post: Option<&Yaml>, x: NodeId, ctx: &Ctx) -> NodeId {
        let Kind::Seq(items) = &list.kind else {
            self.error(Diagnostic::error("E0306", list.span, format!("`branches` must be a list of branches, found {}", list.type_name())), ctx);
            return self.poison(x, list.span, ctx);
        };
        let outs: Vec<NodeId> = items.iter().map(|b| self.body(b, x, ctx)).collect();
        let join = join_node.and_then(|j| j.as_str()).unwrap_or("concat");
        let op = match join {
            "concat" => Op::Concat { dim: 1 },
            "add" => Op::Add,
            "mul" => Op::Mul,
            other => {
                let span = join_node.map(|j| j.span).unwrap_or(list.span);
                self.error(
                    Diagnostic::error("E0307", span, format!("unknown join `{other}`")).maybe_hint(did_you_mean(other, ["concat", "add", "mul"])).hint("join is concat, add or mul"),
                    ctx,
                );
                return self.poison(x, span, ctx);
            }
        };
        let joined = self.synth(op, outs, join, list.span, ctx);
        match post {
            Some(p) => self.body(p, joined, ctx),
            None => joined,
        }
    }

    fn eval_node(&mut self, n: &Yaml, ctx: &Ctx) -> Option<Value> {
        let r = match &n.kind {
            Kind::Int(i) => Ok(Value::Int(*i)),
            Kind::Bool(b) => Ok(Value::Bool(*b)),
            Kind::Float(f) => Ok(Value::Float(*f)),
            Kind::Str(s) => crate::expr::parse_expr(s, n.span).and_then(|e| eval(&e, &ctx.env)),
            _ => Err(Diagnostic::error("E0202", n.span, format!("expected an expression, found {}", n.type_name()))),
        };
        match r {
            Ok(v) => Some(v),
            Err(d) => {
                self.error(d, ctx);
                None
            }
        }
    }

    fn refs(&mut self, f: &Yaml, ctx: &Ctx) -> Option<Vec<NodeId>> {
        let items: Vec<&Yaml> = match &f.kind {
            Kind::Seq(s) => s.iter().collect(),
            _ => vec![f],
        };
        let mut out = Vec::new();
        for it in items {
            let Some(text) = it.scalar_text() else {
                self.error(Diagnostic::error("E0308", it.span, "`from` takes node names or relative indices such as -1"), ctx);
                return None;
            };
            out.push(self.resolve(text.trim_start_matches('@'), it.span, ctx)?);
        }
        if out.is_empty() {
            self.error(Diagnostic::error("E0308", f.span, "`from` needs at least one input"), ctx);
            return None;
        }
        Some(out)
    }

    /// Resolves a reference: `in`/`inK`, `-k` (k-th previous item), an item name of this
    /// body, or a full node or scope name.
    fn resolve(&mut self, r: &str, span: Span, ctx: &Ctx) -> Option<NodeId> {
        if r == "in" {
            return Some(ctx.inputs[0]);
        }
        if let Some(k) = r.strip_prefix("in").and_then(|k| k.parse::<usize>().ok()) {
            if let Some(&i) = ctx.inputs.get(k) {
                return Some(i);
            }
        }
        let locals = ctx.locals.borrow();
        if let Ok(k) = r.parse::<i64>() {
            if k < 0 {
                let idx = locals.order.len() as i64 + k;
                if idx >= 0 {
                    return Some(locals.order[idx as usize]);
                }
                if idx == -1 {
                    return Some(ctx.inputs[0]);
                }
            }
        }
        if let Some((_, id)) = locals.named.iter().rev().find(|(n, _)| n == r) {
            return Some(*id);
        }
        let full = join(&ctx.scope, r);
        if let Some(&id) = self.names.get(&full).or_else(|| self.names.get(r)) {
            return Some(id);
        }
        if let Some(s) = self.scopes.iter().rev().find(|s| s.name == full || s.name == r) {
            return Some(s.output);
        }
        let names: Vec<String> = locals.named.iter().map(|(n, _)| n.clone()).collect();
        drop(locals);
        self.error(
            Diagnostic::error("E0309", span, format!("unknown reference `{r}`"))
                .label("no earlier node has this name")
                .maybe_hint(did_you_mean(r, names.iter().map(|s| s.as_str())))
                .hint("references name an earlier item of the same body, `in`, or -1 for the previous item; a node cannot depend on a later one"),
            ctx,
        );
        None
    }
}

fn entry<'a>(entries: &'a [(Yaml, Yaml)], key: &str) -> Option<&'a Yaml> {
    entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

fn describe(ins: &[&[usize]]) -> String {
    ins.iter().map(|s| ops::fmt_shape(s)).collect::<Vec<_>>().join(" and ")
}
