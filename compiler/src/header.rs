//! Evaluation of the spec header: variables and variants, input shape, preprocessing, labels,
//! task and head, into [`ModelMeta`].

use crate::checkpoint;
use crate::diag::{did_you_mean, Diagnostic};
use crate::expr::{eval, parse_expr, Env, Value};
use crate::ir::{Labels, ModelMeta, Task};
use crate::meta::{ChannelOrder, Interpolation, Preprocess, Resize};
use crate::spec::{map_entries, Spec};
use crate::yaml::{Kind, Node};

/// Evaluates a YAML scalar or list as an expression value.
pub fn value_of(n: &Node, env: &Env) -> Result<Value, Diagnostic> {
    match &n.kind {
        Kind::Int(i) => Ok(Value::Int(*i)),
        Kind::Float(f) => Ok(Value::Float(*f)),
        Kind::Bool(b) => Ok(Value::Bool(*b)),
        Kind::Null => Ok(Value::None),
        Kind::Str(s) => parse_expr(s, n.span).and_then(|e| eval(&e, env)),
        Kind::Seq(items) => Ok(Value::List(items.iter().map(|i| value_of(i, env)).collect::<Result<_, _>>()?)),
        Kind::Map(_) => Err(Diagnostic::error("E0202", n.span, "expected a value, found a mapping")),
    }
}

/// Builds the variable environment: `params:` in order, with the selected variant's overrides.
pub fn environment(spec: &Spec, variant: Option<&str>, diags: &mut Vec<Diagnostic>) -> (Env, Option<String>) {
    let mut env = Env::default();
    let chosen = variant.map(|v| v.to_string()).or_else(|| spec.default_variant.as_ref().map(|(v, _)| v.clone()));
    let mut overrides = Vec::new();
    if let Some(v) = &chosen {
        match spec.variants.iter().find(|(n, _, _)| n == v) {
            Some((_, _, o)) => overrides = o.clone(),
            None => {
                let names: Vec<&str> = spec.variants.iter().map(|(n, _, _)| n.as_str()).collect();
                let span = spec.default_variant.as_ref().filter(|_| variant.is_none()).map(|(_, s)| *s).unwrap_or(spec.span);
                diags.push(
                    Diagnostic::error("E0020", span, format!("unknown variant `{v}`"))
                        .maybe_hint(did_you_mean(v, names.iter().copied()))
                        .hint(if names.is_empty() { "this spec has no variants".to_string() } else { format!("variants: {}", names.join(", ")) }),
                );
            }
        }
    }
    for (name, _, node) in &overrides {
        if !spec.params.iter().any(|(p, _, _)| p == name) {
            let (_, span, _) = overrides.iter().find(|(n, _, _)| n == name).unwrap();
            let names: Vec<&str> = spec.params.iter().map(|(p, _, _)| p.as_str()).collect();
            diags.push(
                Diagnostic::error("E0021", *span, format!("variant sets `{name}`, which is not in `params:`"))
                    .maybe_hint(did_you_mean(name, names.iter().copied())),
            );
            let _ = node;
        }
    }
    env.set("variant", Value::Str(chosen.clone().unwrap_or_default()));
    for (name, _, node) in &spec.params {
        let node = overrides.iter().find(|(n, _, _)| n == name).map(|(_, _, v)| v).unwrap_or(node);
        match value_of(node, &env) {
            Ok(v) => env.set(name, v),
            Err(d) => diags.push(d),
        }
    }
    (env, chosen)
}

fn sizes(n: &Node, env: &Env, what: &str, diags: &mut Vec<Diagnostic>) -> Option<Vec<usize>> {
    if let Kind::Map(_) = n.kind {
        let hint = if what == "input" { "write `input: [3, 224, 224]` ([channels, height, width])" } else { "write a size such as 224 or [height, width]" };
        diags.push(Diagnostic::error("E0022", n.span, format!("`{what}` must be a size or a list of sizes, found a mapping")).label("expected a list").hint(hint));
        return None;
    }
    let v = value_of(n, env).map_err(|d| diags.push(d)).ok()?;
    let list = match v {
        Value::List(l) => l,
        Value::Int(_) => vec![v],
        other => {
            diags.push(Diagnostic::error("E0022", n.span, format!("`{what}` must be a size or a list of sizes, found `{other}`")));
            return None;
        }
    };
    let mut out = Vec::new();
    for x in list {
        match x {
            Value::Int(i) if i > 0 && i < 1 << 20 => out.push(i as usize),
            other => {
                diags.push(Diagnostic::error("E0022", n.span, format!("`{what}` sizes must be positive integers below 2^20, found `{other}`")).label("invalid size"));
                return None;
            }
        }
    }
    Some(out)
}

fn triple(n: &Node, env: &Env, what: &str, diags: &mut Vec<Diagnostic>) -> Option<[f32; 3]> {
    match value_of(n, env) {
        Ok(Value::List(l)) if l.len() == 3 && l.iter().all(|x| x.as_f64().is_some()) => {
            Some([l[0].as_f64()? as f32, l[1].as_f64()? as f32, l[2].as_f64()? as f32])
        }
        Ok(v) if v.as_f64().is_some() => Some([v.as_f64()? as f32; 3]),
        Ok(v) => {
            diags.push(Diagnostic::error("E0023", n.span, format!("`{what}` must be a number or three numbers, found `{v}`")));
            None
        }
        Err(d) => {
            diags.push(d);
            None
        }
    }
}

const PRE_KEYS: &[&str] = &["resize", "letterbox", "stretch", "crop", "interpolation", "antialias", "scale", "mean", "std", "channels"];

fn preprocess(n: &Node, env: &Env, diags: &mut Vec<Diagnostic>) -> Preprocess {
    let mut p = Preprocess::default();
    for (k, v) in map_entries(n, "preprocess", diags) {
        let key = k.scalar_text().unwrap_or_default();
        let pair = |v: &Node, diags: &mut Vec<Diagnostic>| -> Option<(usize, usize)> {
            let s = sizes(v, env, &key, diags)?;
            match s.as_slice() {
                [a] => Some((*a, *a)),
                [h, w] => Some((*h, *w)),
                _ => {
                    diags.push(Diagnostic::error("E0022", v.span, format!("`{key}` takes a size or [height, width]")));
                    None
                }
            }
        };
        match key.as_str() {
            "resize" => {
                if let Some(s) = sizes(v, env, "resize", diags) {
                    p.resize = match s.as_slice() {
                        [a] => Resize::ShorterSide(*a),
                        [h, w] => Resize::Exact(*h, *w),
                        _ => {
                            diags.push(Diagnostic::error("E0022", v.span, "`resize` takes the shorter side or [height, width]"));
                            Resize::None
                        }
                    }
                }
            }
            "stretch" => {
                if let Some((h, w)) = pair(v, diags) {
                    p.resize = Resize::Exact(h, w)
                }
            }
            "letterbox" => {
                if let Some((h, w)) = pair(v, diags) {
                    p.resize = Resize::Letterbox(h, w)
                }
            }
            "crop" => p.crop = pair(v, diags),
            "interpolation" => {
                p.interpolation = match v.as_str() {
                    Some("nearest") => Interpolation::Nearest,
                    Some("bilinear") => Interpolation::Bilinear,
                    Some("bicubic") => Interpolation::Bicubic,
                    _ => {
                        diags.push(Diagnostic::error("E0024", v.span, "`interpolation` is nearest, bilinear or bicubic"));
                        Interpolation::Bilinear
                    }
                }
            }
            "antialias" => match v.kind {
                Kind::Bool(b) => p.antialias = b,
                _ => diags.push(Diagnostic::error("E0024", v.span, "`antialias` is true or false")),
            },
            "scale" => match value_of(v, env).ok().and_then(|x| x.as_f64()) {
                Some(s) => p.scale = s as f32,
                None => diags.push(Diagnostic::error("E0023", v.span, "`scale` must be a number, e.g. 1/255")),
            },
            "mean" => p.mean = triple(v, env, "mean", diags).unwrap_or(p.mean),
            "std" => p.std = triple(v, env, "std", diags).unwrap_or(p.std),
            "channels" => {
                p.channels = match v.as_str() {
                    Some("RGB") | Some("rgb") => ChannelOrder::Rgb,
                    Some("BGR") | Some("bgr") => ChannelOrder::Bgr,
                    _ => {
                        diags.push(Diagnostic::error("E0024", v.span, "`channels` is RGB or BGR"));
                        ChannelOrder::Rgb
                    }
                }
            }
            other => diags.push(
                Diagnostic::error("E0025", k.span, format!("unknown preprocessing key `{other}`"))
                    .maybe_hint(did_you_mean(other, PRE_KEYS.iter().copied()))
                    .hint(format!("keys: {}", PRE_KEYS.join(", "))),
            ),
        }
    }
    if p.std.contains(&0.0) {
        diags.push(Diagnostic::error("E0023", n.span, "`std` must not be zero"));
    }
    p
}

/// Evaluates the header into model metadata.
pub fn meta(spec: &Spec, env: &Env, variant: Option<String>, diags: &mut Vec<Diagnostic>) -> ModelMeta {
    let name = match &spec.name {
        Some((n, _)) => n.clone(),
        None if spec.get("name").is_some() => String::new(),
        None => {
            diags.push(Diagnostic::error("E0026", spec.span, "the spec has no `name:`").label("this spec has no `name:`").hint("add `name: my_model` at the top"));
            String::new()
        }
    };
    let text = |k: &str, diags: &mut Vec<Diagnostic>| -> Option<String> {
        let n = spec.get(k)?;
        match n.scalar_text() {
            Some(s) => Some(s),
            None => {
                diags.push(Diagnostic::error("E0013", n.span, format!("`{k}` must be a string")));
                None
            }
        }
    };
    let input = match spec.get("input") {
        Some(n) => match sizes(n, env, "input", diags) {
            Some(s) if s.len() == 3 => s,
            Some(s) => {
                diags.push(Diagnostic::error("E0022", n.span, format!("`input` must be [channels, height, width], found {} values", s.len())));
                vec![3, 224, 224]
            }
            None => vec![3, 224, 224],
        },
        None => {
            diags.push(Diagnostic::error("E0026", spec.span, "the spec has no `input:` shape").label("this spec has no `input:`").hint("add `input: [3, 224, 224]`"));
            vec![3, 224, 224]
        }
    };
    let preprocess = spec.get("preprocess").map(|n| preprocess(n, env, diags)).unwrap_or_default();
    let labels = match spec.get("labels") {
        None => Labels::None,
        Some(n) => match &n.kind {
            Kind::Str(s) => Labels::Builtin(s.clone()),
            Kind::Seq(items) => Labels::List(items.iter().filter_map(|i| i.scalar_text()).collect()),
            _ => {
                diags.push(Diagnostic::error("E0013", n.span, "`labels` is a built-in name (imagenet, coco) or a list of names"));
                Labels::None
            }
        },
    };
    let task = match text("task", diags).as_deref() {
        None | Some("classify") => Task::Classify,
        Some("detect") => Task::Detect,
        Some(other) => {
            diags.push(Diagnostic::error("E0027", spec.get("task").unwrap().span, format!("unknown task `{other}`")).hint("task is classify or detect"));
            Task::Classify
        }
    };
    let weights = spec.get("weights").and_then(|n| checkpoint::read(n, spec, variant.as_deref(), diags));
    ModelMeta {
        name,
        reference: text("reference", diags),
        variant,
        input,
        preprocess,
        labels,
        weights,
        task,
        head: text("head", diags),
    }
}
