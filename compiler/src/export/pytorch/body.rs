//! Spec bodies as Python build code. Each method mirrors the lowering rule of the same name in
//! `crate::lower` (items, chain steps, `name:` items and sub-scopes, patterns, references), so
//! the prelude's `Scope` names every module exactly as the IR names its node. Every method
//! leaves the body's value in the Python variable `out`.

use super::expr::{self, op_keyword, template, var};
use crate::expr::{parse_chain, parse_expr, ExprKind, Step};
use crate::lower::ITEM_KEYS;
use crate::yaml::{Kind, Node as Yaml};
use std::collections::{BTreeSet, HashMap};

/// What the emitter knows about a block: its Python class and the variables it reads from
/// the caller (tlc blocks see their caller's variables; the class takes them as keywords).
pub struct BlockInfo {
    /// Python class name.
    pub class: String,
    /// Free variables, passed by keyword at each call.
    pub free: BTreeSet<String>,
}

/// Python lines under construction.
pub struct Emitter<'a> {
    pub blocks: &'a HashMap<String, BlockInfo>,
    pub lines: Vec<String>,
    pub indent: usize,
    fresh: usize,
}

type R = Result<(), String>;

fn entry<'y>(entries: &'y [(Yaml, Yaml)], key: &str) -> Option<&'y Yaml> {
    entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

/// A YAML scalar used as an expression (`repeat:` counts, `if:` conditions).
fn scalar_expr(n: &Yaml) -> Result<String, String> {
    match &n.kind {
        Kind::Int(i) => Ok(i.to_string()),
        Kind::Bool(b) => Ok(if *b { "True" } else { "False" }.into()),
        Kind::Float(f) => Ok(format!("{f:?}")),
        Kind::Str(s) => expr::py(&parse_expr(s, n.span).map_err(|d| d.message)?),
        _ => Err(format!("expected an expression, found {}", n.type_name())),
    }
}

impl<'a> Emitter<'a> {
    /// An emitter at indentation level `indent`.
    pub fn new(blocks: &'a HashMap<String, BlockInfo>, indent: usize) -> Emitter<'a> {
        Emitter { blocks, lines: Vec::new(), indent, fresh: 0 }
    }

    /// Adds a line at the current indentation.
    pub fn line(&mut self, s: impl AsRef<str>) {
        self.lines.push(format!("{}{}", "    ".repeat(self.indent), s.as_ref()));
    }

    fn var(&mut self, prefix: &str) -> String {
        self.fresh += 1;
        format!("{prefix}{}", self.fresh)
    }

    fn assign(&mut self, out: &str, value: &str) {
        if out != value {
            self.line(format!("{out} = {value}"));
        }
    }

    /// A body: a chain string, a list of items, one item, or nothing.
    pub fn body(&mut self, b: &Yaml, cur: &str, out: &str, sc: &str) -> R {
        match &b.kind {
            Kind::Null => self.assign(out, cur),
            Kind::Seq(items) => {
                let mut c = cur.to_string();
                for it in items {
                    self.item(it, &c, out, sc)?;
                    c = out.to_string();
                }
                self.assign(out, &c);
            }
            _ => self.item(b, cur, out, sc)?,
        }
        Ok(())
    }

    fn item(&mut self, it: &Yaml, cur: &str, out: &str, sc: &str) -> R {
        match &it.kind {
            Kind::Str(text) => self.chain(text, it, vec![cur.to_string()], out, sc),
            Kind::Seq(_) => self.body(it, cur, out, sc),
            Kind::Map(entries) => self.map_item(entries, cur, out, sc),
            _ => Err(format!("expected a layer, found {}", it.type_name())),
        }
    }

    /// A chain: the first step takes `ins`, each later step the previous value.
    fn chain(&mut self, text: &str, node: &Yaml, ins: Vec<String>, out: &str, sc: &str) -> R {
        let steps = parse_chain(text, node.span).map_err(|d| d.message)?;
        let mut ins = ins;
        for s in &steps {
            let name = s.name.as_ref().map(|(n, _)| n.as_str());
            self.step(s, name, &ins, out, sc)?;
            ins = vec![out.to_string()];
        }
        Ok(())
    }

    /// One chain step: `out = sc.step(what, ins..., name=...)`.
    fn step(&mut self, s: &Step, name: Option<&str>, ins: &[String], out: &str, sc: &str) -> R {
        if let ExprKind::Ref(r) = &s.expr.kind {
            self.line(format!("{out} = {sc}.ref({})", expr::string(r)));
            return Ok(());
        }
        let (what, extra) = self.what(s, sc)?;
        let mut args = vec![what];
        args.extend(ins.iter().cloned());
        args.extend(extra);
        if let Some(n) = name {
            args.push(format!("name={}", expr::string(n)));
        }
        self.line(format!("{out} = {sc}.step({})", args.join(", ")));
        Ok(())
    }

    /// The layer of a step as Python (an op factory call or `Block.of(...)`), and the `@ref`
    /// arguments that become extra inputs.
    fn what(&self, s: &Step, sc: &str) -> Result<(String, Vec<String>), String> {
        let (callee, args, kwargs) = match &s.expr.kind {
            ExprKind::Var(v) => (v.as_str(), &[][..], &[][..]),
            ExprKind::Call(c) => (c.name.as_str(), &c.args[..], &c.kwargs[..]),
            _ => return Err("expected a layer call such as `conv(64, k=3)`".into()),
        };
        let mut refs = Vec::new();
        let mut py_args = Vec::new();
        for a in args {
            match &a.kind {
                ExprKind::Ref(r) => refs.push(format!("{sc}.ref({})", expr::string(r))),
                _ => py_args.push(expr::py(a)?),
            }
        }
        if let Some(b) = self.blocks.get(callee) {
            for (k, _, v) in kwargs {
                py_args.push(format!("{}={}", var(k), expr::py(v)?));
            }
            for f in &b.free {
                py_args.push(format!("{}={}", var(f), var(f)));
            }
            return Ok((format!("{}.of({})", b.class, py_args.join(", ")), refs));
        }
        if !crate::ops::is_op(callee) {
            return Err(format!("unknown layer or block `{callee}`"));
        }
        for (k, _, v) in kwargs {
            py_args.push(format!("{}={}", op_keyword(callee, k), expr::py(v)?));
        }
        Ok((format!("{callee}({})", py_args.join(", ")), refs))
    }

    fn map_item(&mut self, entries: &[(Yaml, Yaml)], cur: &str, out: &str, sc: &str) -> R {
        let get = |k: &str| entry(entries, k);
        if let (Some(o), 1) = (get("order"), entries.len()) {
            let names: Vec<String> = match &o.kind {
                Kind::Seq(s) => s.iter().filter_map(|n| n.scalar_text()).collect(),
                _ => vec![o.scalar_text().unwrap_or_default()],
            };
            let list: Vec<String> = names.iter().map(|n| expr::string(n)).collect();
            self.line(format!("{sc}.order_first([{}])", list.join(", ")));
            self.assign(out, cur);
            return Ok(());
        }
        let name_entry = entries.iter().find(|(k, _)| k.scalar_text().is_some_and(|k| !ITEM_KEYS.contains(&k.as_str())));
        let inputs = match get("from") {
            Some(f) => {
                let items: Vec<&Yaml> = match &f.kind {
                    Kind::Seq(s) => s.iter().collect(),
                    _ => vec![f],
                };
                items.iter().map(|it| format!("{sc}.ref({})", expr::string(it.scalar_text().unwrap_or_default().trim_start_matches('@')))).collect()
            }
            None => vec![cur.to_string()],
        };
        let pattern = ["repeat", "dense", "residual", "branches", "if", "side"].into_iter().find(|k| get(k).is_some());
        if pattern.is_none() {
            if let Some((k, v)) = name_entry {
                let name = template(&k.scalar_text().unwrap_or_default())?;
                return self.named(&name, v, inputs, out, sc);
            }
        }
        // A pattern or `do:` reads its first input once.
        let x = if inputs.len() == 1 && get("from").is_none() {
            inputs[0].clone()
        } else {
            let v = self.var("_v");
            self.line(format!("{v} = {}", inputs[0]));
            v
        };
        match pattern {
            Some(p @ ("repeat" | "dense")) => self.repeat(p == "dense", entries, &x, out, sc)?,
            Some("residual") => {
                let a = self.var("_v");
                self.body(get("residual").unwrap(), &x, &a, sc)?;
                let b = match get("skip") {
                    Some(s) => {
                        let b = self.var("_v");
                        self.body(s, &x, &b, sc)?;
                        b
                    }
                    None => x.clone(),
                };
                self.line(format!("{out} = {sc}.join_values(\"add\", {a}, {b})"));
                if let Some(p) = get("post") {
                    self.body(p, out, out, sc)?;
                }
            }
            Some("branches") => self.branches(get("branches").unwrap(), get("join"), get("post"), &x, out, sc)?,
            Some("if") => {
                self.line(format!("if {}:", scalar_expr(get("if").unwrap())?));
                self.branch_body(get("then"), &x, out, sc)?;
                self.line("else:");
                self.branch_body(get("else"), &x, out, sc)?;
            }
            Some("side") => {
                let v = self.var("_v");
                self.body(get("side").unwrap(), &x, &v, sc)?;
                self.assign(out, cur);
            }
            _ => match get("do") {
                Some(d) => self.unnamed_with_inputs(d, inputs, &x, out, sc)?,
                None => return Err("this item has no layer".into()),
            },
        }
        self.line(format!("{sc}.record({out})"));
        Ok(())
    }

    fn branch_body(&mut self, b: Option<&Yaml>, x: &str, out: &str, sc: &str) -> R {
        self.indent += 1;
        let before = self.lines.len();
        match b {
            Some(b) => self.body(b, x, out, sc)?,
            None => self.assign(out, x),
        }
        if self.lines.len() == before {
            self.line("pass");
        }
        self.indent -= 1;
        Ok(())
    }

    fn unnamed_with_inputs(&mut self, d: &Yaml, inputs: Vec<String>, x: &str, out: &str, sc: &str) -> R {
        match &d.kind {
            Kind::Str(text) => {
                let mut ins = inputs;
                ins[0] = x.to_string();
                self.chain(text, d, ins, out, sc)
            }
            _ => self.body(d, x, out, sc),
        }
    }

    /// `name: value`: one layer named `name`, or a child scope for a chain or a body.
    fn named(&mut self, name: &str, v: &Yaml, inputs: Vec<String>, out: &str, sc: &str) -> R {
        match &v.kind {
            Kind::Str(text) => {
                let steps = parse_chain(text, v.span).map_err(|d| d.message)?;
                if let [s] = &steps[..] {
                    if s.name.is_none() && !matches!(s.expr.kind, ExprKind::Ref(_)) {
                        let (what, extra) = self.what(s, sc)?;
                        let mut args = vec![name.to_string(), what];
                        args.extend(inputs);
                        args.extend(extra);
                        self.line(format!("{out} = {sc}.named({})", args.join(", ")));
                        return Ok(());
                    }
                }
                let sub = self.var("_s");
                self.line(format!("{sub} = {sc}.sub({name})"));
                self.chain(text, v, inputs, out, &sub)?;
                self.line(format!("{out} = {sc}.close({sub}, {out})"));
            }
            Kind::Null => return Err(format!("{name} has no layer")),
            _ => {
                let sub = self.var("_s");
                let first = if inputs.len() == 1 { inputs[0].clone() } else { self.var("_v") };
                if inputs.len() > 1 {
                    self.line(format!("{first} = {}", inputs[0]));
                }
                let mut args = vec![name.to_string(), first.clone()];
                args.extend(inputs.into_iter().skip(1));
                self.line(format!("{sub} = {sc}.sub({})", args.join(", ")));
                self.body(v, &first, out, &sub)?;
                self.line(format!("{out} = {sc}.close({sub}, {out})"));
            }
        }
        Ok(())
    }

    fn repeat(&mut self, dense: bool, entries: &[(Yaml, Yaml)], x: &str, out: &str, sc: &str) -> R {
        let get = |k: &str| entry(entries, k);
        let count = scalar_expr(get(if dense { "dense" } else { "repeat" }).unwrap())?;
        let loop_var = var(get("as").and_then(|v| v.as_str()).unwrap_or("i"));
        let body = get("do").ok_or("a repeat needs a `do:` body")?;
        let sees_all = dense && get("sees").and_then(|s| s.as_str()) != Some("last");
        let feats = self.var("_feats");
        if dense {
            self.line(format!("{feats} = [{x}]"));
        }
        match get("start") {
            Some(start) => self.body(start, x, out, sc)?,
            None => self.assign(out, x),
        }
        self.line(format!("for {loop_var} in range({count}):"));
        self.indent += 1;
        let input = if sees_all {
            self.line(format!("{out} = {sc}.join_values(\"concat\", *{feats})"));
            out.to_string()
        } else {
            out.to_string()
        };
        match get("name") {
            Some(t) => {
                let name = template(&t.scalar_text().unwrap_or_default())?;
                self.named(&name, body, vec![input], out, sc)?;
            }
            None => self.body(body, &input, out, sc)?,
        }
        if dense {
            self.line(format!("{feats}.append({out})"));
        }
        self.indent -= 1;
        if dense {
            self.line(format!("{out} = {sc}.join_values(\"concat\", *{feats})"));
        }
        Ok(())
    }

    fn branches(&mut self, list: &Yaml, join: Option<&Yaml>, post: Option<&Yaml>, x: &str, out: &str, sc: &str) -> R {
        let Kind::Seq(items) = &list.kind else { return Err("`branches` must be a list".into()) };
        let mut outs = Vec::new();
        for b in items {
            let v = self.var("_v");
            self.body(b, x, &v, sc)?;
            outs.push(v);
        }
        let how = join.and_then(|j| j.as_str()).unwrap_or("concat");
        self.line(format!("{out} = {sc}.join_values({}, {})", expr::string(how), outs.join(", ")));
        if let Some(p) = post {
            self.body(p, out, out, sc)?;
        }
        Ok(())
    }
}
