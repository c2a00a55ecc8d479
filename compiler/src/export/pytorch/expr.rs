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

/// Python source of an expression, parenthesised only where Python's precedence needs it.
pub fn py(e: &Expr) -> Result<String, String> {
    Ok(prec(e)?.0)
}

/// Python binding strength of a binary operator (higher binds tighter).
fn binary_prec(op: &str) -> u8 {
    match op {
        "or" => 2,
        "and" => 3,
        "==" | "!=" | "<" | "<=" | ">" | ">=" => 5,
        "+" | "-" => 6,
        "**" => 9,
        _ => 7,
    }
}

/// The source and its precedence: 1 conditional, 2 or, 3 and, 4 not, 5 comparison, 6 sum,
/// 7 product, 8 unary minus, 9 power, 10 atoms.
fn prec(e: &Expr) -> Result<(String, u8), String> {
    let wrap = |(s, p): (String, u8), min: u8| if p < min { format!("({s})") } else { s };
    Ok(match &e.kind {
        ExprKind::Int(i) => (i.to_string(), 10),
        ExprKind::Float(f) => (float(*f), 10),
        ExprKind::Str(s) => (string(s), 10),
        ExprKind::Bool(b) => (if *b { "True" } else { "False" }.into(), 10),
        ExprKind::None => ("None".into(), 10),
        ExprKind::List(items) => (format!("[{}]", items.iter().map(py).collect::<Result<Vec<_>, _>>()?.join(", ")), 10),
        ExprKind::Var(v) => (var(v), 10),
        ExprKind::Ref(r) => return Err(format!("`@{r}` refers to a node and is no value")),
        ExprKind::Unary(op, a) => match *op {
            "not" => (format!("not {}", wrap(prec(a)?, 4)), 4),
            _ => (format!("-{}", wrap(prec(a)?, 8)), 8),
        },
        ExprKind::Binary(op, a, b) => {
            let p = binary_prec(op);
            // Left-associative (power: right-associative); comparisons do not chain.
            let (left_min, right_min) = match p {
                9 => (10, 8),
                5 => (6, 6),
                _ => (p, p + 1),
            };
            (format!("{} {op} {}", wrap(prec(a)?, left_min), wrap(prec(b)?, right_min)), p)
        }
        ExprKind::Cond(c, t, f) => (format!("{} if {} else {}", wrap(prec(t)?, 2), wrap(prec(c)?, 2), wrap(prec(f)?, 1)), 1),
        ExprKind::Index(a, i) => (format!("{}[{}]", wrap(prec(a)?, 10), py(i)?), 10),
        ExprKind::Call(c) => {
            let mut args: Vec<String> = c.args.iter().map(py).collect::<Result<_, _>>()?;
            for (k, _, v) in &c.kwargs {
                args.push(format!("{k}={}", py(v)?));
            }
            (format!("{}({})", c.name, args.join(", ")), 10)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Span;

    fn p(s: &str) -> String {
        py(&crate::expr::parse_expr(s, Span::default()).unwrap()).unwrap()
    }

    #[test]
    fn expressions_keep_tlc_semantics_in_python() {
        assert_eq!(p("4*c"), "4 * c");
        assert_eq!(p("c // 2 + 1"), "c // 2 + 1");
        assert_eq!(p("(a + b) * c - (d - e)"), "(a + b) * c - (d - e)");
        assert_eq!(p("a - (b + c)"), "a - (b + c)");
        assert_eq!(p("s if i == 0 else 1"), "s if i == 0 else 1");
        assert_eq!(p("(s if a else 1) * 2"), "(s if a else 1) * 2");
        assert_eq!(p("not linear and t != 1"), "not linear_ and t != 1");
        assert_eq!(p("not (a and b)"), "not (a and b)");
        assert_eq!(p("make_divisible(c * width, 8)"), "make_divisible(c * width, 8)");
        assert_eq!(p("[1, 2.5, true, none, 'a']"), "[1, 2.5, True, None, \"a\"]");
        assert_eq!(p("stages[j][2] ** 2"), "stages[j][2] ** 2");
        assert_eq!(p("2 ** 3 ** 2"), "2 ** 3 ** 2");
        assert_eq!(p("(2 ** 3) ** 2"), "(2 ** 3) ** 2");
        assert_eq!(p("-x ** 2"), "-x_ ** 2");
        assert_eq!(p("(-x) ** 2"), "(-x_) ** 2");
        assert_eq!(p("-(a + b)"), "-(a + b)");
        assert_eq!(p("1e-3"), "0.001");
    }

    #[test]
    fn templates_become_f_strings_and_names_stay_safe() {
        assert_eq!(template("denselayer{i+1}").unwrap(), "f\"denselayer{i + 1}\"");
        assert_eq!(template("cv2.{l}").unwrap(), "f\"cv2.{l}\"");
        assert_eq!(template("layer1").unwrap(), "\"layer1\"");
        assert_eq!(var("in"), "in_");
        assert_eq!(var("conv"), "conv_");
        assert_eq!(var("_x"), "_x_");
        assert_eq!(var("in_channels"), "in_channels");
        assert_eq!(op_keyword("conv", "kernel_size"), "k");
        assert_eq!(op_keyword("chunk", "n"), "chunks");
    }
}
