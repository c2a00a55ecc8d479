//! Binding of a call's arguments to an op's attributes, with friendly errors for wrong types,
//! missing and unknown arguments.

use crate::diag::{did_you_mean, Diagnostic};
use crate::expr::Value;
use crate::span::Span;

/// Evaluated arguments of one call.
pub struct Args {
    /// Span of the whole call.
    pub span: Span,
    /// Positional arguments.
    pub pos: Vec<(Value, Span)>,
    /// Keyword arguments: name, name span, value, value span.
    pub kw: Vec<(String, Span, Value, Span)>,
    used_pos: usize,
    used_kw: Vec<bool>,
    known: Vec<&'static str>,
}

fn type_err(span: Span, what: &str, v: &Value) -> Diagnostic {
    Diagnostic::error("E0202", span, format!("expected {what}, found {} `{v}`", v.type_name())).label(format!("expected {what}"))
}

impl Args {
    /// Wraps evaluated arguments.
    pub fn new(span: Span, pos: Vec<(Value, Span)>, kw: Vec<(String, Span, Value, Span)>) -> Args {
        let n = kw.len();
        Args { span, pos, kw, used_pos: 0, used_kw: vec![false; n], known: Vec::new() }
    }

    /// Takes the next positional argument, or else the first keyword among `names`.
    pub fn take(&mut self, names: &[&'static str]) -> Option<(Value, Span)> {
        self.known.extend_from_slice(names);
        for (i, (k, _, v, s)) in self.kw.iter().enumerate() {
            if names.contains(&k.as_str()) {
                self.used_kw[i] = true;
                return Some((v.clone(), *s));
            }
        }
        if self.used_pos < self.pos.len() {
            self.used_pos += 1;
            return Some(self.pos[self.used_pos - 1].clone());
        }
        None
    }

    /// Takes a keyword-only argument.
    pub fn take_kw(&mut self, names: &[&'static str]) -> Option<(Value, Span)> {
        self.known.extend_from_slice(names);
        for (i, (k, _, v, s)) in self.kw.iter().enumerate() {
            if names.contains(&k.as_str()) {
                self.used_kw[i] = true;
                return Some((v.clone(), *s));
            }
        }
        None
    }

    fn missing(&self, name: &str, what: &str) -> Diagnostic {
        Diagnostic::error("E0201", self.span, format!("missing argument `{name}` ({what})")).label(format!("`{name}` is required here"))
    }

    /// A positive integer.
    pub fn size(&mut self, names: &[&'static str], default: Option<usize>) -> Result<usize, Diagnostic> {
        match self.take(names) {
            None => default.ok_or_else(|| self.missing(names[0], "a positive integer")),
            Some((v, s)) => to_size(&v, s),
        }
    }

    /// A non-negative integer.
    pub fn count(&mut self, names: &[&'static str], default: Option<usize>) -> Result<usize, Diagnostic> {
        match self.take(names) {
            None => default.ok_or_else(|| self.missing(names[0], "an integer")),
            Some((Value::Int(i), _)) if i >= 0 => Ok(i as usize),
            Some((v, s)) => Err(type_err(s, "a non-negative integer", &v)),
        }
    }

    /// A positive integer or a pair `[h, w]`.
    pub fn pair(&mut self, names: &[&'static str], default: Option<[usize; 2]>) -> Result<Option<[usize; 2]>, Diagnostic> {
        match self.take(names) {
            None => Ok(default),
            Some((Value::List(l), s)) if l.len() == 2 => Ok(Some([to_size(&l[0], s)?, to_size(&l[1], s)?])),
            Some((v, s)) => {
                let n = to_size(&v, s)?;
                Ok(Some([n, n]))
            }
        }
    }

    /// A number.
    pub fn float(&mut self, names: &[&'static str], default: f64) -> Result<f64, Diagnostic> {
        match self.take(names) {
            None => Ok(default),
            Some((v, s)) => v.as_f64().ok_or_else(|| type_err(s, "a number", &v)),
        }
    }

    /// A boolean (keyword only).
    pub fn flag(&mut self, names: &[&'static str], default: bool) -> Result<bool, Diagnostic> {
        match self.take_kw(names) {
            None => Ok(default),
            Some((Value::Bool(b), _)) => Ok(b),
            Some((v, s)) => Err(type_err(s, "true or false", &v)),
        }
    }

    /// A list of integers (all remaining positionals when `rest`, else one list argument).
    pub fn ints(&mut self, names: &[&'static str], rest: bool) -> Result<Vec<i64>, Diagnostic> {
        let vals: Vec<(Value, Span)> = if rest && self.kw.iter().all(|k| !names.contains(&k.0.as_str())) {
            self.known.extend_from_slice(names);
            let v = self.pos[self.used_pos..].to_vec();
            self.used_pos = self.pos.len();
            if let [(Value::List(l), s)] = v.as_slice() {
                l.iter().map(|x| (x.clone(), *s)).collect()
            } else {
                v
            }
        } else {
            match self.take(names) {
                Some((Value::List(l), s)) => l.into_iter().map(|x| (x, s)).collect(),
                Some((v, s)) => vec![(v, s)],
                None => Vec::new(),
            }
        };
        vals.into_iter()
            .map(|(v, s)| match v {
                Value::Int(i) => Ok(i),
                other => Err(type_err(s, "an integer", &other)),
            })
            .collect()
    }

    /// A required list of finite numbers (one list argument).
    pub fn floats(&mut self, names: &[&'static str]) -> Result<Vec<f64>, Diagnostic> {
        match self.take(names) {
            None => Err(self.missing(names[0], "a list of numbers")),
            Some((Value::List(l), s)) => l
                .iter()
                .map(|v| match v {
                    Value::Int(i) => Ok(*i as f64),
                    Value::Float(f) if f.is_finite() => Ok(*f),
                    other => Err(type_err(s, "a finite number", other)),
                })
                .collect(),
            Some((v, s)) => Err(type_err(s, "a list of numbers", &v)),
        }
    }

    /// Errors for unused positional or unknown keyword arguments.
    pub fn finish(&self, op: &str) -> Result<(), Diagnostic> {
        if self.used_pos < self.pos.len() {
            let s = self.pos[self.used_pos].1;
            return Err(Diagnostic::error("E0203", s, format!("`{op}` takes {} positional argument(s), found {}", self.used_pos, self.pos.len()))
                .label("unexpected argument"));
        }
        for (i, (k, ks, _, _)) in self.kw.iter().enumerate() {
            if !self.used_kw[i] {
                let known: Vec<&str> = self.known.to_vec();
                return Err(Diagnostic::error("E0204", *ks, format!("`{op}` has no argument `{k}`"))
                    .label("unknown argument")
                    .maybe_hint(did_you_mean(k, known.iter().copied()))
                    .hint(format!("`{op}` takes: {}", dedup(&known).join(", "))));
            }
        }
        Ok(())
    }
}

fn dedup(v: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in v {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    out
}

/// A positive integer value; floats with an integral value are accepted.
pub fn to_size(v: &Value, s: Span) -> Result<usize, Diagnostic> {
    match v {
        Value::Int(i) if *i > 0 => Ok(*i as usize),
        Value::Float(f) if *f > 0.0 && f.fract() == 0.0 && *f < 1e15 => Ok(*f as usize),
        Value::Int(i) => Err(Diagnostic::error("E0205", s, format!("expected a positive size, found {i}")).label("must be at least 1")),
        other => Err(type_err(s, "a positive integer", other)),
    }
}
