//! Spec expressions as Python: literals, operators (tlc's semantics are Python's: `//` floors,
//! `/` divides, `round` rounds half to even), builtins, variable names made safe, name
//! templates as f-strings, op keyword aliases, and the variables an expression reads.

use crate::expr::{Expr, ExprKind};
use std::collections::BTreeSet;

/// Names a spec variable cannot take in the generated file (Python keywords and the names the
/// file itself defines or calls); such variables get a trailing `_`.
const RESERVED: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del", "elif", "else",
    "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise",
    "return", "try", "while", "with", "yield", "match", "case", "self", "x", "math", "torch", "nn", "F", "ceil",
    "floor", "sqrt", "make_divisible", "min", "max", "int", "float", "round", "abs", "len", "range", "list", "tuple", "str",
    "super", "V", "Op", "At", "Fn", "Scope", "Block", "BlockCall", "Network", "Model",
];

/// A spec variable as a Python identifier.
pub fn var(name: &str) -> String {
    if name == "in_channels" {
        return name.to_string();
    }
    if RESERVED.contains(&name) || crate::ops::is_op(name) || name.starts_with('_') {
        format!("{name}_")
    } else {
        name.to_string()
    }
}

/// A Python string literal.
pub fn string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn float(f: f64) -> String {
    let s = format!("{f:?}");
    if s.contains(['.', 'e', 'E']) || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

/// Python source of an expression (fully parenthesised where operators nest).
pub fn py(e: &Expr) -> Result<String, String> {
    Ok(match &e.kind {
        ExprKind::Int(i) => i.to_string(),
        ExprKind::Float(f) => float(*f),
        ExprKind::Str(s) => string(s),
        ExprKind::Bool(b) => if *b { "True" } else { "False" }.into(),
        ExprKind::None => "None".into(),
        ExprKind::List(items) => format!("[{}]", items.iter().map(py).collect::<Result<Vec<_>, _>>()?.join(", ")),
        ExprKind::Var(v) => var(v),
        ExprKind::Ref(r) => return Err(format!("`@{r}` refers to a node and is no value")),
        ExprKind::Unary(op, a) => match *op {
            "not" => format!("(not {})", py(a)?),
            _ => format!("(-{})", py(a)?),
        },
        ExprKind::Binary(op, a, b) => format!("({} {op} {})", py(a)?, py(b)?),
        ExprKind::Cond(c, t, f) => format!("({} if {} else {})", py(t)?, py(c)?, py(f)?),
        ExprKind::Index(a, i) => format!("{}[{}]", py(a)?, py(i)?),
        ExprKind::Call(c) => {
            let mut args: Vec<String> = c.args.iter().map(py).collect::<Result<_, _>>()?;
            for (k, _, v) in &c.kwargs {
                args.push(format!("{k}={}", py(v)?));
            }
            format!("{}({})", c.name, args.join(", "))
        }
    })
}

/// A name template (`denselayer{i+1}`) as a Python string or f-string.
pub fn template(text: &str) -> Result<String, String> {
    if !text.contains('{') {
        return Ok(string(text));
    }
    let mut out = String::from("f\"");
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&escape_fstring(&rest[..open]));
        let close = rest[open..].find('}').ok_or_else(|| format!("unclosed `{{` in `{text}`"))?;
        let e = crate::expr::parse_expr(&rest[open + 1..open + close], crate::span::Span::default()).map_err(|d| d.message)?;
        out.push_str(&format!("{{{}}}", py(&e)?));
        rest = &rest[open + close + 1..];
    }
    out.push_str(&escape_fstring(rest));
    out.push('"');
    Ok(out)
}

fn escape_fstring(s: &str) -> String {
    let quoted = string(s);
    quoted[1..quoted.len() - 1].replace('{', "{{").replace('}', "}}")
}

/// The canonical keyword of an op argument (the prelude's factories take these).
pub fn op_keyword(op: &str, k: &str) -> String {
    let canonical = match (op, k) {
        (_, "out_channels" | "out_features") => "out",
        (_, "kernel" | "kernel_size") => "k",
        (_, "stride") => "s",
        ("zeropad", "padding") | (_, "padding") => "p",
        (_, "dilation") => "d",
        (_, "g") => "groups",
        (_, "ceil_mode") => "ceil",
        (_, "output_size") => "size",
        (_, "negative_slope") => "slope",
        ("softmax", "axis") => "dim",
        (_, "start_dim") => "start",
        ("chunk", "n") => "chunks",
        (_, "scale_factor") => "scale",
        (_, "num_heads") => "heads",
        (_, "window_size") => "window",
        (_, "shift_size") => "shift",
        ("detect_v8", "nc") => "classes",
        _ => k,
    };
    canonical.to_string()
}

/// Variables an expression reads (calls' names are functions, not variables).
pub fn vars(e: &Expr, out: &mut BTreeSet<String>) {
    match &e.kind {
        ExprKind::Var(v) => {
            out.insert(v.clone());
        }
        ExprKind::List(items) => items.iter().for_each(|i| vars(i, out)),
        ExprKind::Unary(_, a) => vars(a, out),
        ExprKind::Binary(_, a, b) | ExprKind::Index(a, b) => {
            vars(a, out);
            vars(b, out);
        }
        ExprKind::Cond(c, t, f) => {
            vars(c, out);
            vars(t, out);
            vars(f, out);
        }
        ExprKind::Call(c) => {
            c.args.iter().for_each(|a| vars(a, out));
            c.kwargs.iter().for_each(|(_, _, v)| vars(v, out));
        }
        _ => {}
    }
}

/// True when the expression reads no variable (a Python default value can be written as is).
pub fn is_constant(e: &Expr) -> bool {
    let mut v = BTreeSet::new();
    vars(e, &mut v);
    v.is_empty()
}
