//! Layer calls: chain steps, block instantiation, op nodes with shape checks and parameter names.

use super::*;

impl Lowerer {
    /// A chain step with an optional explicit name; unnamed steps take the next index.
    pub(super) fn step(&mut self, s: &Step, name: Option<String>, inputs: Vec<NodeId>, ctx: &Ctx) -> NodeId {
        if let ExprKind::Ref(r) = &s.expr.kind {
            return self.resolve(r, s.expr.span, ctx).unwrap_or(inputs[0]);
        }
        let out = match name {
            Some(n) => {
                ctx.next_index();
                self.step_named(s, n, inputs, ctx, ScopeOrigin::NamedCall)
            }
            None => {
                let n = ctx.next_index();
                self.step_named(s, n, inputs, ctx, ScopeOrigin::UnnamedCall)
            }
        };
        ctx.record(s.name.as_ref().map(|(n, _)| n.as_str()), out);
        out
    }

    /// A chain step named `name`; a block call opens a scope of that name (`origin` says how
    /// the name came about).
    pub(super) fn step_named(&mut self, s: &Step, name: String, inputs: Vec<NodeId>, ctx: &Ctx, origin: ScopeOrigin) -> NodeId {
        type Callee<'a> = (&'a str, Span, &'a [Expr], &'a [(String, Span, Expr)]);
        let (callee, callee_span, args, kwargs): Callee = match &s.expr.kind {
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
            return self.instantiate(&b, callee_span, s.expr.span, pos, kwargs, name, origin, inputs, ctx);
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

    /// Expands block `b` as the scope `name` (opened as `origin` says).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn instantiate(
        &mut self,
        b: &BlockDef,
        callee_span: Span,
        call_span: Span,
        pos: Vec<(Value, Span)>,
        kwargs: &[(String, Span, Expr)],
        name: String,
        origin: ScopeOrigin,
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
        // `in_channels` and `in_shape`: the block input's channels and per-sample shape (1 and
        // [1, 1, 1] while unknown, so errors do not cascade).
        let shape = self.graph[inputs[0]].shape.clone().unwrap_or_else(|| vec![1, 1, 1]);
        env.set("in_channels", Value::Int(shape.first().copied().unwrap_or(1) as i64));
        env.set("in_shape", Value::List(shape.iter().map(|&d| Value::Int(d as i64)).collect()));
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
        self.scopes.push(Scope { name: path, output: out, block: Some(b.name.clone()), origin, span: call_span });
        out
    }

    /// Adds an op node: resolves, infers its shape, names its parameters.
    pub(super) fn add_op(&mut self, full: String, mut op: Op, inputs: Vec<NodeId>, span: Span, ctx: &Ctx) -> NodeId {
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
    pub(super) fn synth(&mut self, op: Op, inputs: Vec<NodeId>, base: &str, span: Span, ctx: &Ctx) -> NodeId {
        if inputs.len() == 1 && matches!(op, Op::Concat { .. } | Op::Add | Op::Mul) {
            return inputs[0];
        }
        let full = self.unique(&join(&ctx.scope, base));
        self.add_op(full, op, inputs, span, ctx)
    }
}
