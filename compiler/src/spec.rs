//! The spec file's top level: header, variants, imports, blocks and graph, read from the
//! span-keeping YAML tree with a diagnostic for every unknown key or wrong type.

use crate::diag::{did_you_mean, Diagnostic};
use crate::expr::{parse_expr, Expr, ExprKind};
use crate::span::{FileId, Span};
use crate::yaml::{Kind, Node};

/// Top-level keys of a spec file.
pub const TOP_KEYS: &[&str] =
    &["name", "reference", "task", "input", "preprocess", "labels", "weights", "params", "variants", "default_variant", "import", "blocks", "graph", "head"];

/// A block definition: `name(a, b=default): body`.
#[derive(Clone, Debug)]
pub struct BlockDef {
    /// Block name.
    pub name: String,
    /// Parameters with optional default expressions.
    pub params: Vec<(String, Option<Expr>)>,
    /// Body (a chain string, a list of items or one item).
    pub body: Node,
    /// Span of the signature.
    pub span: Span,
}

/// A variant's overrides: parameter name, its span and the new value.
pub type Overrides = Vec<(String, Span, Node)>;

/// A parsed spec file (before expansion).
#[derive(Clone, Debug)]
pub struct Spec {
    /// File the spec came from.
    pub file: FileId,
    /// Whole-file span, for errors about missing keys.
    pub span: Span,
    /// `name:`.
    pub name: Option<(String, Span)>,
    /// Other header values by key.
    pub header: Vec<(String, Node)>,
    /// `params:` in order: spec-level variables.
    pub params: Vec<(String, Span, Node)>,
    /// `variants:`: name and overrides.
    pub variants: Vec<(String, Span, Overrides)>,
    /// `default_variant:`.
    pub default_variant: Option<(String, Span)>,
    /// `import:` file names.
    pub imports: Vec<(String, Span)>,
    /// `blocks:`.
    pub blocks: Vec<BlockDef>,
    /// `graph:`.
    pub graph: Option<Node>,
}

impl Spec {
    /// A header value by key.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.header.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

fn key_str(k: &Node, diags: &mut Vec<Diagnostic>) -> Option<String> {
    match k.scalar_text() {
        Some(s) => Some(s),
        None => {
            diags.push(Diagnostic::error("E0010", k.span, format!("expected a name as key, found {}", k.type_name())));
            None
        }
    }
}

/// Entries of a mapping node, or a diagnostic.
pub fn map_entries<'a>(n: &'a Node, what: &str, diags: &mut Vec<Diagnostic>) -> &'a [(Node, Node)] {
    match &n.kind {
        Kind::Map(m) => m,
        Kind::Null => &[],
        _ => {
            diags.push(Diagnostic::error("E0011", n.span, format!("`{what}` must be a mapping, found {}", n.type_name())).label("expected `key: value` lines"));
            &[]
        }
    }
}

/// Parses a block signature `name(a, b=1)`.
fn parse_signature(text: &str, span: Span, body: Node, diags: &mut Vec<Diagnostic>) -> Result<BlockDef, Diagnostic> {
    let e = parse_expr(text, span).map_err(|d| d.hint("a block signature looks like `name(param, other=default)` or just `name`"))?;
    let bad = |s: Span| Diagnostic::error("E0012", s, format!("invalid block signature `{text}`")).hint("write `name(param, other=default)` or just `name`");
    match e.kind {
        ExprKind::Var(name) => Ok(BlockDef { name, params: Vec::new(), body, span }),
        ExprKind::Call(c) => {
            let spans: Vec<Span> = c.args.iter().map(|a| a.span).chain(c.kwargs.iter().map(|(_, s, _)| *s)).collect();
            let mut params = Vec::new();
            for a in c.args {
                match a.kind {
                    ExprKind::Var(p) => params.push((p, None)),
                    _ => return Err(bad(a.span).label("expected a parameter name")),
                }
            }
            for (k, _, v) in c.kwargs {
                params.push((k, Some(v)));
            }
            for (i, (p, _)) in params.iter().enumerate() {
                if let Some(j) = params[..i].iter().position(|(q, _)| q == p) {
                    // Reported, but the block is still defined: no "unknown block" at its calls.
                    diags.push(Diagnostic::error("E0012", spans[i], format!("parameter `{p}` of block `{}` is declared twice", c.name))
                        .label("second declaration")
                        .with_label(spans[j], "first declaration")
                        .hint("give each parameter its own name"));
                }
            }
            Ok(BlockDef { name: c.name, params, body, span })
        }
        _ => Err(bad(span)),
    }
}

/// `variants:`: per variant, its overrides.
fn read_variants(spec: &mut Spec, v: &Node, diags: &mut Vec<Diagnostic>) {
    for (vk, vv) in map_entries(v, "variants", diags) {
        let Some(vname) = key_str(vk, diags) else { continue };
        let mut overrides = Vec::new();
        for (ok, ov) in map_entries(vv, "a variant", diags) {
            if let Some(o) = key_str(ok, diags) {
                overrides.push((o, ok.span, ov.clone()));
            }
        }
        spec.variants.push((vname, vk.span, overrides));
    }
}

/// `blocks:`: each signature parsed, no name defined twice.
fn read_blocks(spec: &mut Spec, v: &Node, diags: &mut Vec<Diagnostic>) {
    for (bk, bv) in map_entries(v, "blocks", diags) {
        let Some(sig) = key_str(bk, diags) else { continue };
        match parse_signature(&sig, bk.span, bv.clone(), diags) {
            Ok(b) => match spec.blocks.iter().find(|x| x.name == b.name) {
                Some(prev) => diags.push(Diagnostic::error("E0014", b.span, format!("block `{}` is defined twice", b.name)).with_label(prev.span, "first defined here")),
                None => spec.blocks.push(b),
            },
            Err(d) => diags.push(d),
        }
    }
}

/// Reads the top level of a spec file.
pub fn read(file: FileId, root: &Node, diags: &mut Vec<Diagnostic>) -> Spec {
    let mut spec = Spec {
        file,
        span: Span::new(file, 0, 0),
        name: None,
        header: Vec::new(),
        params: Vec::new(),
        variants: Vec::new(),
        default_variant: None,
        imports: Vec::new(),
        blocks: Vec::new(),
        graph: None,
    };
    // Errors about a missing key point at the start of the spec: its first key.
    spec.span = match &root.kind {
        Kind::Map(entries) if !entries.is_empty() => entries[0].0.span,
        _ => root.span,
    };
    let Kind::Map(entries) = &root.kind else {
        diags.push(Diagnostic::error("E0011", root.span, format!("a spec must be a mapping of keys (name, input, graph, ...), found {}", root.type_name())));
        return spec;
    };
    for (k, v) in entries {
        let Some(key) = key_str(k, diags) else { continue };
        match key.as_str() {
            "name" => match v.scalar_text() {
                Some(s) => spec.name = Some((s, v.span)),
                None => {
                    diags.push(Diagnostic::error("E0013", v.span, format!("`name` must be a string, found {}", v.type_name())).hint("write `name: my_model`"));
                    // Present, though wrong: no second "the spec has no `name:`" error.
                    spec.header.push((key.clone(), v.clone()));
                }
            },
            "params" => {
                for (pk, pv) in map_entries(v, "params", diags) {
                    if let Some(name) = key_str(pk, diags) {
                        spec.params.push((name, pk.span, pv.clone()));
                    }
                }
            }
            "variants" => read_variants(&mut spec, v, diags),
            "default_variant" => match v.scalar_text() {
                Some(s) => spec.default_variant = Some((s, v.span)),
                None => diags.push(Diagnostic::error("E0013", v.span, "`default_variant` must be a variant name")),
            },
            "import" => {
                let items: Vec<&Node> = match &v.kind {
                    Kind::Seq(s) => s.iter().collect(),
                    _ => vec![v],
                };
                for it in items {
                    match it.as_str() {
                        Some(s) => spec.imports.push((s.to_string(), it.span)),
                        None => diags.push(Diagnostic::error("E0013", it.span, "`import` takes file names")),
                    }
                }
            }
            "blocks" => read_blocks(&mut spec, v, diags),
            "graph" => spec.graph = Some(v.clone()),
            k if TOP_KEYS.contains(&k) => spec.header.push((key, v.clone())),
            other => diags.push(
                Diagnostic::error("E0015", k.span, format!("unknown top-level key `{other}`"))
                    .label("not a spec key")
                    .maybe_hint(did_you_mean(other, TOP_KEYS.iter().copied()))
                    .hint(format!("spec keys: {}", TOP_KEYS.join(", "))),
            ),
        }
    }
    spec
}
