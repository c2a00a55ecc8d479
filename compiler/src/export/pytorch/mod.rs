//! The PyTorch back end: a spec as one standalone Python file (torch only).
//!
//! The file is the spec transcribed: one `Block` class per spec block whose `build` method adds
//! the block's layers (with loops for `repeat`, `if` for conditions, the spec's expressions as
//! Python), and `class Model(Network)` for the graph, built with no arguments for the chosen
//! variant (the spec's variables are its first lines). A short prelude (`prelude.py`) holds
//! the ops and the lowering rules — the same ones as `crate::lower` — so every module gets the
//! IR's name, which is the reference's `state_dict` key; while building, the model records its
//! dataflow, and `forward` runs it. Blocks read their caller's variables in tlc; a class takes
//! those as keyword arguments, passed explicitly at every call.

mod body;
mod expr;

use crate::diag::Diagnostic;
use crate::expr::{parse_chain, parse_expr, ExprKind};
use crate::ir::Graph;
use crate::lower::ITEM_KEYS;
use crate::span::{SourceLoader, Sources, Span};
use crate::spec::BlockDef;
use crate::yaml::{Kind, Node as Yaml};
use body::{BlockInfo, Emitter};
use std::collections::{BTreeSet, HashMap};

const PRELUDE: &str = include_str!("prelude.py");

/// Python classes of the prelude that block classes must not shadow.
const PRELUDE_CLASSES: &[&str] = &["PadConv2d", "LayerNorm2d", "SelfAttention", "WindowAttention", "DFL", "V", "Op", "At", "Fn", "Scope", "Block", "BlockCall", "Network", "Model"];

/// The spec at `path` (already compiled to `graph`, for its header) as Python source.
pub fn export(path: &str, loader: &dyn SourceLoader, graph: &Graph) -> Result<String, Diagnostic> {
    let mut sources = Sources::default();
    let mut diags = Vec::new();
    let fail = |msg: String| Diagnostic::error("E0902", Span::default(), msg);
    let (spec, blocks) = crate::read_all(path, loader, &mut sources, &mut diags).ok_or_else(|| fail(format!("cannot read `{path}`")))?;
    let (env, _) = crate::header::environment(&spec, graph.meta.variant.as_deref(), &mut diags);
    if let Some(d) = diags.into_iter().find(|d| d.severity == crate::diag::Severity::Error) {
        return Err(d);
    }
    let infos = block_infos(&blocks);
    let mut out = header(graph, path);
    out.push_str(PRELUDE);
    out.push_str("\n\n# ---------------------------------------------------------------------------------------\n# The spec's blocks.\n");
    for b in &blocks {
        let signature = sources.text(b.span.file).get(b.span.range()).unwrap_or(&b.name).to_string();
        let code = block_class(b, &signature, &infos).map_err(|m| Diagnostic::error("E0902", b.span, format!("cannot write block `{}` as PyTorch: {m}", b.name)))?;
        out.push_str(&code);
    }
    let body = spec.graph.as_ref().ok_or_else(|| fail("the spec has no `graph:`".into()))?;
    let mut e = Emitter::new(&infos, 2);
    e.line(format!("variant = {}", expr::string(env.get("variant").map(|v| v.to_string()).unwrap_or_default().as_str())));
    for (name, _, _) in &spec.params {
        if let Some(v) = env.get(name) {
            e.line(format!("{} = {}", expr::var(name), literal(v)));
        }
    }
    e.body(body, "x", "x", "self").map_err(|m| Diagnostic::error("E0902", body.span, format!("cannot write the graph as PyTorch: {m}")))?;
    e.line("return x");
    let m = &graph.meta;
    let shape: Vec<String> = m.input.iter().map(|d| d.to_string()).collect();
    out.push_str(&format!(
        "\n\nclass Model(Network):\n    \"\"\"{}{}: the spec's `graph:`, built with no arguments.\"\"\"\n\n    input_shape = ({},)\n\n    def build(self, x):\n{}\n",
        m.name,
        m.variant.as_deref().map(|v| format!(" (variant {v})")).unwrap_or_default(),
        shape.join(", "),
        e.lines.join("\n")
    ));
    Ok(out)
}

fn literal(v: &crate::expr::Value) -> String {
    use crate::expr::Value;
    match v {
        Value::Int(i) => i.to_string(),
        Value::Float(f) => {
            let s = format!("{f:?}");
            if s.contains(['.', 'e', 'E']) { s } else { format!("{s}.0") }
        }
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Str(s) => expr::string(s),
        Value::None => "None".into(),
        Value::List(l) => format!("[{}]", l.iter().map(literal).collect::<Vec<_>>().join(", ")),
    }
}

fn header(g: &Graph, path: &str) -> String {
    let m = &g.meta;
    let file = path.rsplit('/').next().unwrap_or(path);
    let variant = m.variant.as_deref().map(|v| format!(" --variant {v}")).unwrap_or_default();
    let reference = m.reference.as_deref().map(|r| format!(" (those of {r})")).unwrap_or_default();
    let preprocess = serde_json::to_string(&m.preprocess).unwrap_or_default();
    format!(
        r#""""{name}{v} as a standalone PyTorch module, written by `tlc export {file}{variant} --format pytorch`.

Needs only torch. `Model()` builds the network; its state_dict keys and shapes are the spec's{reference},
plus the buffers PyTorch modules keep beside them (BatchNorm's num_batches_tracked, Swin's
relative_position_index), so the reference checkpoint loads with
`Model().load_state_dict(torch.load(path), strict=True)`.

Input: float32 [N, {c}, {h}, {w}], preprocessed as {preprocess}.

Each spec block is a class whose `build` adds its layers under the spec's names (loops for
`repeat`, the spec's expressions as Python) and records the dataflow; `Network.forward` runs it.
"""
"#,
        name = m.name,
        v = m.variant.as_deref().map(|v| format!(" ({v})")).unwrap_or_default(),
        c = m.input[0],
        h = m.input[1],
        w = m.input[2],
    )
}

/// CamelCase class names (unique, clear of the prelude's) and free variables of every block.
fn block_infos(blocks: &[BlockDef]) -> HashMap<String, BlockInfo> {
    let mut infos: HashMap<String, BlockInfo> = HashMap::new();
    let mut taken: Vec<String> = PRELUDE_CLASSES.iter().map(|s| s.to_string()).collect();
    let mut direct = HashMap::new();
    for b in blocks {
        let mut class: String = b.name.split('_').filter(|p| !p.is_empty()).map(|p| p[..1].to_uppercase() + &p[1..]).collect();
        if class.is_empty() || !class.starts_with(|c: char| c.is_ascii_alphabetic()) {
            class = format!("Block{class}");
        }
        while taken.contains(&class) {
            class.push_str("Block");
        }
        taken.push(class.clone());
        let mut scan = Scan::default();
        scan.body(&b.body);
        for (_, d) in &b.params {
            if let Some(d) = d {
                expr::vars(d, &mut scan.vars);
            }
        }
        direct.insert(b.name.clone(), scan);
        infos.insert(b.name.clone(), BlockInfo { class, free: BTreeSet::new() });
    }
    // Free variables, to a fixed point over calls: read here or by a callee, not bound here.
    loop {
        let mut changed = false;
        for b in blocks {
            let scan = &direct[&b.name];
            let mut free: BTreeSet<String> = scan.vars.clone();
            for c in &scan.calls {
                if let Some(i) = infos.get(c) {
                    free.extend(i.free.iter().cloned());
                }
            }
            free.retain(|v| v != "in_channels" && !scan.bound.contains(v) && !b.params.iter().any(|(p, _)| p == v));
            let info = infos.get_mut(&b.name).unwrap();
            if info.free != free {
                info.free = free;
                changed = true;
            }
        }
        if !changed {
            return infos;
        }
    }
}

/// Variables read, layers called and loop variables bound in a body.
#[derive(Default)]
struct Scan {
    vars: BTreeSet<String>,
    calls: BTreeSet<String>,
    bound: BTreeSet<String>,
}

impl Scan {
    fn chain(&mut self, text: &str) {
        for s in parse_chain(text, Span::default()).unwrap_or_default() {
            match &s.expr.kind {
                ExprKind::Var(v) => {
                    self.calls.insert(v.clone());
                }
                ExprKind::Call(c) => {
                    self.calls.insert(c.name.clone());
                    c.args.iter().for_each(|a| expr::vars(a, &mut self.vars));
                    c.kwargs.iter().for_each(|(_, _, v)| expr::vars(v, &mut self.vars));
                }
                _ => {}
            }
        }
    }

    fn expr(&mut self, n: &Yaml) {
        if let Some(s) = n.as_str() {
            if let Ok(e) = parse_expr(s, Span::default()) {
                expr::vars(&e, &mut self.vars);
            }
        }
    }

    fn template(&mut self, text: &str) {
        let mut rest = text;
        while let (Some(a), Some(b)) = (rest.find('{'), rest.find('}')) {
            if b > a {
                if let Ok(e) = parse_expr(&rest[a + 1..b], Span::default()) {
                    expr::vars(&e, &mut self.vars);
                }
            }
            rest = &rest[b.max(a) + 1..];
        }
    }

    fn body(&mut self, n: &Yaml) {
        match &n.kind {
            Kind::Str(s) => self.chain(s),
            Kind::Seq(items) => items.iter().for_each(|i| self.body(i)),
            Kind::Map(entries) => {
                for (k, v) in entries {
                    let key = k.scalar_text().unwrap_or_default();
                    match key.as_str() {
                        "repeat" | "dense" | "if" => self.expr(v),
                        "as" => {
                            self.bound.insert(v.scalar_text().unwrap_or_default());
                        }
                        "name" => self.template(&v.scalar_text().unwrap_or_default()),
                        "branches" | "do" | "residual" | "skip" | "post" | "then" | "else" | "side" | "start" => self.body(v),
                        _ if ITEM_KEYS.contains(&key.as_str()) => {}
                        _ => {
                            self.template(&key);
                            self.body(v);
                        }
                    }
                }
                if entries.iter().any(|(k, _)| matches!(k.as_str(), Some("repeat" | "dense"))) && !entries.iter().any(|(k, _)| k.as_str() == Some("as")) {
                    self.bound.insert("i".into());
                }
            }
            _ => {}
        }
    }
}

/// One spec block as a Python class.
fn block_class(b: &BlockDef, signature: &str, infos: &HashMap<String, BlockInfo>) -> Result<String, String> {
    let info = &infos[&b.name];
    let mut sig = vec!["self".to_string(), "x".to_string()];
    let mut late = Vec::new();
    for (p, default) in &b.params {
        match default {
            Some(d) if expr::is_constant(d) => sig.push(format!("{}={}", expr::var(p), expr::py(d)?)),
            Some(d) => {
                sig.push(format!("{}=None", expr::var(p)));
                late.push((expr::var(p), expr::py(d)?));
            }
            None if sig.iter().any(|s| s.contains('=')) => {
                sig.push(format!("{}=None", expr::var(p)));
            }
            None => sig.push(expr::var(p)),
        }
    }
    if !info.free.is_empty() {
        sig.push("*".into());
        sig.extend(info.free.iter().map(|f| expr::var(f)));
    }
    let mut e = Emitter::new(infos, 2);
    let mut uses = Scan::default();
    uses.body(&b.body);
    for (_, d) in &b.params {
        if let Some(d) = d {
            expr::vars(d, &mut uses.vars);
        }
    }
    if uses.vars.contains("in_channels") {
        e.line("in_channels = x.shape[0]");
    }
    for (p, value) in &late {
        e.line(format!("if {p} is None:"));
        e.line(format!("    {p} = {value}"));
    }
    e.body(&b.body, "x", "x", "self")?;
    e.line("return x");
    Ok(format!(
        "\n\nclass {}(Block):\n    \"\"\"`{}`{}\"\"\"\n\n    def build({}):\n{}\n",
        info.class,
        signature.trim(),
        if info.free.is_empty() { String::new() } else { format!("; reads {} from its caller", info.free.iter().cloned().collect::<Vec<_>>().join(", ")) },
        sig.join(", "),
        e.lines.join("\n")
    ))
}
