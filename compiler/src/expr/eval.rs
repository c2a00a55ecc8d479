//! Evaluation of expressions to values, with Python-like arithmetic.

use super::{parse_expr, Expr, ExprKind};
use crate::diag::{did_you_mean, Diagnostic};
use crate::span::Span;
use std::collections::BTreeMap;

/// A value computed by an expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// String.
    Str(String),
    /// List.
    List(Vec<Value>),
    /// Absent value.
    None,
}

impl Value {
    /// Type name for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Bool(_) => "a boolean",
            Value::Str(_) => "a string",
            Value::List(_) => "a list",
            Value::None => "none",
        }
    }
    /// As a float, if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Bool(b) => Some(*b as i64 as f64),
            _ => None,
        }
    }
    /// Python truthiness.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Bool(b) => *b,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::None => false,
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => write!(f, "{s}"),
            Value::None => write!(f, "none"),
            Value::List(l) => {
                write!(f, "[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// Variables visible to an expression: spec parameters, block arguments, repeat indices.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, Value>,
}

impl Env {
    /// Binds a variable (shadowing an outer one).
    pub fn set(&mut self, name: &str, v: Value) {
        self.vars.insert(name.to_string(), v);
    }
    /// Looks a variable up.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.vars.get(name)
    }
    /// Names of all variables, for "did you mean".
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(|s| s.as_str())
    }
}

const BUILTINS: &[&str] = &["min", "max", "int", "round", "ceil", "floor", "make_divisible", "len", "abs", "sqrt", "float"];

fn err(span: Span, msg: impl Into<String>) -> Diagnostic {
    Diagnostic::error("E0103", span, msg)
}

fn num(v: &Value, span: Span) -> Result<f64, Diagnostic> {
    v.as_f64().ok_or_else(|| err(span, format!("expected a number, found {} `{v}`", v.type_name())).label("not a number"))
}

/// Evaluates an expression. Calls of layers and `@` references are not values: they are
/// rejected here and handled by the expander.
pub fn eval(e: &Expr, env: &Env) -> Result<Value, Diagnostic> {
    let span = e.span;
    Ok(match &e.kind {
        ExprKind::Int(i) => Value::Int(*i),
        ExprKind::Float(f) => Value::Float(*f),
        ExprKind::Str(s) => Value::Str(s.clone()),
        ExprKind::Bool(b) => Value::Bool(*b),
        ExprKind::None => Value::None,
        ExprKind::List(items) => Value::List(items.iter().map(|i| eval(i, env)).collect::<Result<_, _>>()?),
        ExprKind::Var(name) => match env.get(name) {
            Some(v) => v.clone(),
            None => {
                let block_only = matches!(name.as_str(), "in_shape" | "in_channels")
                    .then(|| format!("`{name}` exists only inside a block: it describes the block's input"));
                return Err(err(span, format!("unknown variable `{name}`"))
                    .label("not defined here")
                    .maybe_hint(block_only)
                    .maybe_hint(did_you_mean(name, env.names())));
            }
        },
        ExprKind::Ref(name) => return Err(err(span, format!("`@{name}` refers to a node and cannot be used as a number"))),
        ExprKind::Unary(op, a) => {
            let v = eval(a, env)?;
            match *op {
                "not" => Value::Bool(!v.truthy()),
                _ => match v {
                    Value::Int(i) => Value::Int(i.checked_neg().ok_or_else(|| err(span, "integer overflow"))?),
                    other => Value::Float(-num(&other, a.span)?),
                },
            }
        }
        ExprKind::Binary(op, a, b) => {
            if *op == "and" {
                let l = eval(a, env)?;
                return if l.truthy() { eval(b, env) } else { Ok(l) };
            }
            if *op == "or" {
                let l = eval(a, env)?;
                return if l.truthy() { Ok(l) } else { eval(b, env) };
            }
            binary(op, eval(a, env)?, eval(b, env)?, a.span, b.span, span)?
        }
        ExprKind::Cond(c, t, f) => {
            if eval(c, env)?.truthy() {
                eval(t, env)?
            } else {
                eval(f, env)?
            }
        }
        ExprKind::Index(a, i) => {
            let list = eval(a, env)?;
            let idx = eval(i, env)?;
            match (&list, &idx) {
                (Value::List(l), Value::Int(k)) => {
                    let n = l.len() as i64;
                    let k2 = if *k < 0 { n + k } else { *k };
                    if k2 < 0 || k2 >= n {
                        let shape_hint = matches!(&a.kind, ExprKind::Var(v) if v == "in_shape")
                            .then(|| format!("`in_shape` is the block input's shape per sample, here {list}: `in_shape[0]` is its first dim (channels of a [C, H, W] map)"));
                        return Err(err(i.span, format!("index {k} is out of range for a list of {n}")).maybe_hint(shape_hint));
                    }
                    l[k2 as usize].clone()
                }
                _ => return Err(err(span, format!("cannot index {} with {}", list.type_name(), idx.type_name()))),
            }
        }
        ExprKind::Call(c) => {
            let args: Vec<Value> = c.args.iter().map(|a| eval(a, env)).collect::<Result<_, _>>()?;
            let kw = |k: &str| c.kwargs.iter().find(|(n, _, _)| n == k).map(|(_, _, e)| eval(e, env)).transpose();
            let arg_n = |i: usize| -> Result<f64, Diagnostic> {
                match args.get(i) {
                    Some(v) => num(v, c.args[i].span),
                    None => Err(err(span, format!("`{}` needs {} argument(s)", c.name, i + 1))),
                }
            };
            match c.name.as_str() {
                "min" | "max" => {
                    let items: Vec<Value> = match args.as_slice() {
                        [Value::List(l)] => l.clone(),
                        _ => args.clone(),
                    };
                    if items.is_empty() {
                        return Err(err(span, format!("`{}` needs at least one argument", c.name)));
                    }
                    let mut best = items[0].clone();
                    for v in &items[1..] {
                        let (x, y) = (num(v, span)?, num(&best, span)?);
                        if (c.name == "min" && x < y) || (c.name == "max" && x > y) {
                            best = v.clone();
                        }
                    }
                    best
                }
                "int" => Value::Int(arg_n(0)?.trunc() as i64),
                "float" => Value::Float(arg_n(0)?),
                "round" => Value::Int(round_half_even(arg_n(0)?) as i64),
                "ceil" => Value::Int(arg_n(0)?.ceil() as i64),
                "floor" => Value::Int(arg_n(0)?.floor() as i64),
                "abs" => match args.first() {
                    Some(Value::Int(i)) => Value::Int(i.abs()),
                    _ => Value::Float(arg_n(0)?.abs()),
                },
                "sqrt" => Value::Float(arg_n(0)?.sqrt()),
                "len" => match args.first() {
                    Some(Value::List(l)) => Value::Int(l.len() as i64),
                    Some(Value::Str(s)) => Value::Int(s.len() as i64),
                    _ => return Err(err(span, "`len` takes a list")),
                },
                "make_divisible" => {
                    // torchvision/timm `_make_divisible(v, divisor=8, min_value=None)`.
                    let v = arg_n(0)?;
                    let d = match args.get(1).cloned().or(kw("divisor")?) {
                        Some(x) => num(&x, span)?,
                        None => 8.0,
                    };
                    let min_v = match args.get(2).cloned().or(kw("min_value")?) {
                        Some(x) if x != Value::None => num(&x, span)?,
                        _ => d,
                    };
                    let mut nv = min_v.max(((v + d / 2.0) / d).floor() * d);
                    if nv < 0.9 * v {
                        nv += d;
                    }
                    Value::Int(nv as i64)
                }
                other => {
                    return Err(err(c.name_span, format!("`{other}` is not a function usable inside an expression"))
                        .label("unknown function")
                        .maybe_hint(did_you_mean(other, BUILTINS.iter().copied()))
                        .hint(format!("functions: {}", BUILTINS.join(", "))))
                }
            }
        }
    })
}

fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

fn binary(op: &str, a: Value, b: Value, sa: Span, sb: Span, span: Span) -> Result<Value, Diagnostic> {
    use Value::*;
    if matches!(op, "==" | "!=") {
        let eq = match (&a, &b) {
            (Int(_) | Float(_), Int(_) | Float(_)) => a.as_f64() == b.as_f64(),
            _ => a == b,
        };
        return Ok(Bool(if op == "==" { eq } else { !eq }));
    }
    if op == "+" {
        if let (Str(x), Str(y)) = (&a, &b) {
            return Ok(Str(format!("{x}{y}")));
        }
        if let (List(x), List(y)) = (&a, &b) {
            return Ok(List(x.iter().chain(y).cloned().collect()));
        }
    }
    if let (Int(x), Int(y)) = (&a, &b) {
        let (x, y) = (*x, *y);
        let over = || err(span, "integer overflow");
        let zero = || err(sb, "division by zero").label("this is zero");
        return Ok(match op {
            "+" => Int(x.checked_add(y).ok_or_else(over)?),
            "-" => Int(x.checked_sub(y).ok_or_else(over)?),
            "*" => Int(x.checked_mul(y).ok_or_else(over)?),
            "/" => {
                if y == 0 {
                    return Err(zero());
                }
                Float(x as f64 / y as f64)
            }
            "//" => {
                if y == 0 {
                    return Err(zero());
                }
                Int(x.div_euclid(y) - if y < 0 && x.rem_euclid(y) != 0 { 1 } else { 0 })
            }
            "%" => {
                if y == 0 {
                    return Err(zero());
                }
                Int(((x % y) + y) % y)
            }
            "**" => {
                if !(0..=62).contains(&y) {
                    Float((x as f64).powf(y as f64))
                } else {
                    Int(x.checked_pow(y as u32).ok_or_else(over)?)
                }
            }
            "<" => Bool(x < y),
            "<=" => Bool(x <= y),
            ">" => Bool(x > y),
            ">=" => Bool(x >= y),
            _ => return Err(err(span, format!("unknown operator `{op}`"))),
        });
    }
    let x = num(&a, sa)?;
    let y = num(&b, sb)?;
    Ok(match op {
        "+" => Float(x + y),
        "-" => Float(x - y),
        "*" => Float(x * y),
        "/" | "//" | "%" if y == 0.0 => return Err(err(sb, "division by zero").label("this is zero")),
        "/" => Float(x / y),
        "//" => Float((x / y).floor()),
        "%" => Float(x - y * (x / y).floor()),
        "**" => Float(x.powf(y)),
        "<" => Bool(x < y),
        "<=" => Bool(x <= y),
        ">" => Bool(x > y),
        ">=" => Bool(x >= y),
        _ => return Err(err(span, format!("unknown operator `{op}`"))),
    })
}

/// Renders a name template such as `denselayer{i+1}`; `span` is the template's span.
pub fn render_template(text: &str, span: Span, env: &Env) -> Result<String, Diagnostic> {
    let mut out = String::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            return Err(err(span.sub(offset + open, 1), "unclosed `{` in name template").hint("write `name{i}`"));
        };
        let inner = &rest[open + 1..open + close];
        let e = parse_expr(inner, span.sub(offset + open + 1, inner.len()))?;
        let v = eval(&e, env)?;
        out.push_str(&v.to_string());
        offset += open + close + 1;
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &str) -> Value {
        let mut env = Env::default();
        env.set("c", Value::Int(64));
        eval(&parse_expr(s, Span::new(0, 0, s.len())).unwrap(), &env).unwrap()
    }

    #[test]
    fn arithmetic_is_pythonic() {
        assert_eq!(ev("4*c"), Value::Int(256));
        assert_eq!(ev("-7 // 2"), Value::Int(-4));
        assert_eq!(ev("-7 % 3"), Value::Int(2));
        assert_eq!(ev("c / 2"), Value::Float(32.0));
        assert_eq!(ev("1 if c > 32 else 2"), Value::Int(1));
        assert_eq!(ev("make_divisible(32 * 0.75)"), Value::Int(24));
        assert_eq!(ev("max(1, 2, 3)"), Value::Int(3));
        assert_eq!(ev("[1, 2, 3][-1]"), Value::Int(3));
    }

    #[test]
    fn templates() {
        let mut env = Env::default();
        env.set("i", Value::Int(0));
        assert_eq!(render_template("denselayer{i+1}", Span::default(), &env).unwrap(), "denselayer1");
    }
}
