//! The expression language inside spec strings, parsed with pest (`grammar.pest`).
//!
//! Expressions compute layer arguments from block parameters (`4*c`, `k//2`,
//! `64 if first else 32`); a *chain* `conv(64, k=3) -> bn -> relu` is a sequence of layer
//! calls, each optionally named (`fc1: conv(8, k=1)`); `@name` refers to an earlier node.

mod eval;

pub use eval::{eval, render_template, Env, Value};

use crate::diag::Diagnostic;
use crate::span::Span;
use pest::iterators::Pair;
use pest::Parser;

#[derive(pest_derive::Parser)]
#[grammar = "expr/grammar.pest"]
struct ExprParser;

/// An expression with its span in the spec file.
#[derive(Clone, Debug)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it is.
    pub span: Span,
}

/// Expression forms.
#[derive(Clone, Debug)]
pub enum ExprKind {
    /// Integer literal.
    Int(i64),
    /// Float literal.
    Float(f64),
    /// String literal.
    Str(String),
    /// `true` / `false`.
    Bool(bool),
    /// `none`.
    None,
    /// `[a, b]`.
    List(Vec<Expr>),
    /// A parameter or variable.
    Var(String),
    /// `@name`: an earlier node.
    Ref(String),
    /// `f(a, k=b)`.
    Call(Call),
    /// `-a`, `not a`.
    Unary(&'static str, Box<Expr>),
    /// `a + b`, `a == b`, `a and b` ...
    Binary(&'static str, Box<Expr>, Box<Expr>),
    /// `a if c else b`.
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `a[i]`.
    Index(Box<Expr>, Box<Expr>),
}

/// A call: layer, block or builtin function.
#[derive(Clone, Debug)]
pub struct Call {
    /// Callee name.
    pub name: String,
    /// Span of the name.
    pub name_span: Span,
    /// Positional arguments.
    pub args: Vec<Expr>,
    /// Keyword arguments with the span of each keyword.
    pub kwargs: Vec<(String, Span, Expr)>,
}

/// One step of a chain: an optional name and a layer expression.
#[derive(Clone, Debug)]
pub struct Step {
    /// `name:` prefix, with its span.
    pub name: Option<(String, Span)>,
    /// The layer: usually a call or bare identifier.
    pub expr: Expr,
}

fn syntax_error(base: Span, text: &str, e: pest::error::Error<Rule>, what: &str) -> Diagnostic {
    let (start, end) = match e.location {
        // One character, not one byte: `é` is two.
        pest::error::InputLocation::Pos(p) => (p, p + text.get(p..).and_then(|t| t.chars().next()).map_or(1, char::len_utf8)),
        pest::error::InputLocation::Span((a, b)) => (a, b.max(a + 1)),
    };
    let expected = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().map(rule_name).filter(|s| !s.is_empty()).collect();
            names.sort();
            names.dedup();
            if names.is_empty() {
                String::new()
            } else {
                format!("; expected {}", names.join(" or "))
            }
        }
        pest::error::ErrorVariant::CustomError { message } => format!(": {message}"),
    };
    let mut span = base.sub(start, end - start);
    if span.start == span.end && base.start < base.end {
        // At the end of the text: underline its last character.
        span = Span::new(base.file, span.start.saturating_sub(1).max(base.start) as usize, span.start.max(base.start + 1) as usize);
    }
    let d = Diagnostic::error("E0101", span, format!("cannot parse {what}{expected}"))
        .label("syntax error here")
        .hint("expressions look like `conv(64, k=3, s=2) -> bn -> relu`, `4*c`, `a if cond else b`");
    // `[conv(c, k=1)]` in YAML is a flow list of `conv(c` and `k=1)`: unbalanced pieces that
    // hold no comma.
    if text.contains(',') || text.matches('(').count() == text.matches(')').count() {
        return d;
    }
    d.hint("in a YAML flow list `[...]` every comma starts a new item, so `[conv(c, k=1)]` is the two items `conv(c` and `k=1)`: write the list one `- item` per line, or quote the item")
}

fn rule_name(r: &Rule) -> &'static str {
    match r {
        Rule::expr | Rule::or_expr | Rule::and_expr | Rule::not_expr | Rule::cmp_expr | Rule::sum | Rule::product
        | Rule::unary | Rule::power | Rule::postfix => "an expression",
        Rule::step => "a layer",
        Rule::ident | Rule::ident_raw | Rule::call => "a name",
        Rule::int | Rule::float => "a number",
        Rule::EOI => "the end of the expression",
        Rule::arg => "an argument",
        Rule::cmp_op | Rule::add_op | Rule::mul_op => "an operator",
        _ => "",
    }
}

/// Longest expression text accepted (bytes).
const MAX_EXPR_LEN: usize = 4096;
/// Deepest nesting of parentheses/brackets accepted.
const MAX_NESTING: usize = 64;

fn guard(text: &str, base: Span) -> Result<(), Diagnostic> {
    if text.len() > MAX_EXPR_LEN {
        return Err(Diagnostic::error("E0102", base, format!("expression is {} bytes long; the limit is {MAX_EXPR_LEN}", text.len())));
    }
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > MAX_NESTING {
            return Err(Diagnostic::error("E0102", base, format!("expression nests deeper than {MAX_NESTING} levels")));
        }
    }
    Ok(())
}

/// Parses a single expression; `base` is the span of `text` in its file.
pub fn parse_expr(text: &str, base: Span) -> Result<Expr, Diagnostic> {
    guard(text, base)?;
    let mut pairs = ExprParser::parse(Rule::expr_input, text).map_err(|e| syntax_error(base, text, e, "expression"))?;
    let top = pairs.next().unwrap();
    let expr = top.into_inner().next().unwrap();
    Ok(build_expr(expr, base))
}

/// Parses a chain `a -> b -> name: c`; `base` is the span of `text` in its file.
pub fn parse_chain(text: &str, base: Span) -> Result<Vec<Step>, Diagnostic> {
    guard(text, base)?;
    let mut pairs = ExprParser::parse(Rule::chain_input, text).map_err(|e| syntax_error(base, text, e, "layer chain"))?;
    let top = pairs.next().unwrap();
    let mut steps = Vec::new();
    for step in top.into_inner() {
        if step.as_rule() != Rule::step {
            continue;
        }
        let mut name = None;
        let mut expr = None;
        for p in step.into_inner() {
            match p.as_rule() {
                Rule::step_name => name = Some((p.as_str().to_string(), span_of(&p, base))),
                Rule::expr => expr = Some(build_expr(p, base)),
                _ => {}
            }
        }
        steps.push(Step { name, expr: expr.unwrap() });
    }
    Ok(steps)
}

fn span_of(p: &Pair<Rule>, base: Span) -> Span {
    let s = p.as_span();
    base.sub(s.start(), s.end() - s.start())
}

fn build_expr(p: Pair<Rule>, base: Span) -> Expr {
    let span = span_of(&p, base);
    let mk = |kind| Expr { kind, span };
    match p.as_rule() {
        Rule::expr => {
            let mut it = p.into_inner().filter(|p| !matches!(p.as_rule(), Rule::kw_if | Rule::kw_else));
            let then = build_expr(it.next().unwrap(), base);
            match (it.next(), it.next()) {
                (Some(c), Some(e)) => mk(ExprKind::Cond(Box::new(build_expr(c, base)), Box::new(then), Box::new(build_expr(e, base)))),
                _ => then,
            }
        }
        Rule::or_expr | Rule::and_expr => {
            let op = if p.as_rule() == Rule::or_expr { "or" } else { "and" };
            let mut it = p.into_inner().filter(|p| !matches!(p.as_rule(), Rule::kw_and | Rule::kw_or));
            let mut acc = build_expr(it.next().unwrap(), base);
            for rhs in it {
                let rhs = build_expr(rhs, base);
                let span = Span::new(span.file, acc.span.start as usize, rhs.span.end as usize);
                acc = Expr { kind: ExprKind::Binary(op, Box::new(acc), Box::new(rhs)), span };
            }
            acc
        }
        Rule::not_expr => {
            let inner: Vec<_> = p.into_inner().collect();
            let (nots, rest) = inner.split_at(inner.len() - 1);
            let mut e = build_expr(rest[0].clone(), base);
            for _ in nots {
                e = mk(ExprKind::Unary("not", Box::new(e)));
            }
            e
        }
        Rule::cmp_expr | Rule::sum | Rule::product => {
            let mut it = p.into_inner();
            let mut acc = build_expr(it.next().unwrap(), base);
            while let Some(op) = it.next() {
                let rhs = build_expr(it.next().unwrap(), base);
                let op: &'static str = match op.as_str() {
                    "==" => "==",
                    "!=" => "!=",
                    "<=" => "<=",
                    ">=" => ">=",
                    "<" => "<",
                    ">" => ">",
                    "+" => "+",
                    "-" => "-",
                    "*" => "*",
                    "/" => "/",
                    "//" => "//",
                    _ => "%",
                };
                let span = Span::new(span.file, acc.span.start as usize, rhs.span.end as usize);
                acc = Expr { kind: ExprKind::Binary(op, Box::new(acc), Box::new(rhs)), span };
            }
            acc
        }
        Rule::unary => {
            let inner: Vec<_> = p.into_inner().collect();
            let (negs, rest) = inner.split_at(inner.len() - 1);
            let mut e = build_expr(rest[0].clone(), base);
            for _ in negs {
                e = mk(ExprKind::Unary("-", Box::new(e)));
            }
            e
        }
        Rule::power => {
            let mut it = p.into_inner();
            let b = build_expr(it.next().unwrap(), base);
            match it.next() {
                Some(e) => mk(ExprKind::Binary("**", Box::new(b), Box::new(build_expr(e, base)))),
                None => b,
            }
        }
        Rule::postfix => {
            let mut it = p.into_inner();
            let mut acc = build_expr(it.next().unwrap(), base);
            for idx in it {
                let i = build_expr(idx.into_inner().next().unwrap(), base);
                acc = mk(ExprKind::Index(Box::new(acc), Box::new(i)));
            }
            acc
        }
        Rule::int => match p.as_str().parse::<i64>() {
            Ok(i) => mk(ExprKind::Int(i)),
            Err(_) => mk(ExprKind::Float(p.as_str().parse::<f64>().unwrap_or(f64::INFINITY))),
        },
        Rule::float => mk(ExprKind::Float(p.as_str().parse().unwrap_or(f64::NAN))),
        Rule::string => {
            let s = p.as_str();
            mk(ExprKind::Str(s[1..s.len() - 1].to_string()))
        }
        Rule::kw_true => mk(ExprKind::Bool(true)),
        Rule::kw_false => mk(ExprKind::Bool(false)),
        Rule::kw_none => mk(ExprKind::None),
        Rule::list => mk(ExprKind::List(p.into_inner().map(|e| build_expr(e, base)).collect())),
        Rule::ident => mk(ExprKind::Var(p.as_str().to_string())),
        Rule::reference => mk(ExprKind::Ref(p.as_str()[1..].to_string())),
        Rule::call => {
            let mut it = p.into_inner();
            let name_pair = it.next().unwrap();
            let mut call = Call {
                name: name_pair.as_str().to_string(),
                name_span: span_of(&name_pair, base),
                args: Vec::new(),
                kwargs: Vec::new(),
            };
            for arg in it {
                let mut parts = arg.into_inner();
                let first = parts.next().unwrap();
                if first.as_rule() == Rule::arg_name {
                    let value = build_expr(parts.next().unwrap(), base);
                    call.kwargs.push((first.as_str().to_string(), span_of(&first, base), value));
                } else {
                    call.args.push(build_expr(first, base));
                }
            }
            mk(ExprKind::Call(call))
        }
        _ => {
            // Wrapper rules with a single child.
            let mut it = p.into_inner();
            match it.next() {
                Some(c) => build_expr(c, base),
                None => mk(ExprKind::None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> Span {
        Span::new(0, 0, 1000)
    }

    #[test]
    fn parses_chain_with_names() {
        let steps = parse_chain("conv(64, k=3, s=2) -> bn -> fc1: conv(8, k=1)", s()).unwrap();
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[2].name.as_ref().unwrap().0, "fc1");
        let ExprKind::Call(c) = &steps[0].expr.kind else { panic!() };
        assert_eq!(c.name, "conv");
        assert_eq!(c.kwargs.len(), 2);
    }

    #[test]
    fn precedence() {
        let e = parse_expr("1 + 2 * 3 if not a and b > 2 else 4 // 3", s()).unwrap();
        assert!(matches!(e.kind, ExprKind::Cond(..)));
    }

    #[test]
    fn errors_point_inside() {
        let d = parse_expr("conv(64,, k=3)", Span::new(0, 10, 24)).unwrap_err();
        assert!(d.span().start >= 17);
    }
}
