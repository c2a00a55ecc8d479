//! Patterns (`repeat`, `dense`, `branches`) and references (`from:`, `@name`).

use super::*;

impl Lowerer {
    pub(super) fn repeat(&mut self, dense: bool, item: &Yaml, entries: &[(Yaml, Yaml)], cur: NodeId, ctx: &Ctx) -> NodeId {
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
                    Ok(name) => self.named(&name, t.span, body, vec![input], &sub, true),
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

    pub(super) fn branches(&mut self, list: &Yaml, join_node: Option<&Yaml>, post: Option<&Yaml>, x: NodeId, ctx: &Ctx) -> NodeId {
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

    pub(super) fn eval_node(&mut self, n: &Yaml, ctx: &Ctx) -> Option<Value> {
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

    pub(super) fn refs(&mut self, f: &Yaml, ctx: &Ctx) -> Option<Vec<NodeId>> {
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
    pub(super) fn resolve(&mut self, r: &str, span: Span, ctx: &Ctx) -> Option<NodeId> {
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
    }}
