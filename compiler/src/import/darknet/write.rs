//! Writing items as spec text: names after the darknet layer index (`layers.<i>`, or
//! `"{b+k}"` inside a block and `"{...+P*i}"` inside a repeat), references (`-k`, `in`,
//! `layers.<i>`), and numbers as values, holes (`#`, to compare structures) or bound
//! block parameters.

use super::layers::INPUT;
use super::steps::{Role, Step, Tok};

/// A top-level or block-body item over a range of steps.
#[derive(Clone, Debug)]
pub(super) enum Item {
    /// One step.
    Step(usize),
    /// `count` copies of the `period` steps from `first`.
    Repeat { first: usize, period: usize, count: usize },
    /// A block instance covering steps `first..end`, written as `call`.
    Call { first: usize, end: usize, call: String },
}

/// How a block parameter slot is written.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Bound {
    /// A constant (left out when it is the argument's default).
    Literal(i64),
    /// A parameter name or an expression of one.
    Expr(String),
}

/// How numbers are written.
pub(super) enum Nums<'a> {
    /// Their values, defaults left out.
    Values,
    /// `#`, collecting values and roles (a skeleton to compare).
    Holes,
    /// Slot `k` as `bound[k]`.
    Bound(&'a [Bound]),
}

/// The block being written: its first darknet layer and its input layer.
#[derive(Clone, Copy)]
pub(super) struct BlockCtx {
    pub first_layer: usize,
    pub input: usize,
}

/// The repeat being written: layers per iteration, and from which position of the recorded
/// outputs its references are relative.
#[derive(Clone, Copy)]
struct RepCtx {
    period: usize,
    rel_from: usize,
}

/// Writes items as lines, simulating the compiler's per-body order of recorded outputs
/// (`from: -k` counts back in it; a repeat records its output once more after its body).
pub(super) struct Writer<'a> {
    steps: &'a [Step],
    block: Option<BlockCtx>,
    nums: Nums<'a>,
    slot: usize,
    order: Vec<usize>,
    /// Values and roles of the holes written (with [`Nums::Holes`]).
    pub holes: Vec<(i64, Role)>,
    /// The lines written.
    pub lines: Vec<String>,
    /// False when a block body referred to a layer outside the block.
    pub ok: bool,
}

impl<'a> Writer<'a> {
    /// A writer for the top level (`block: None`) or a block body.
    pub fn new(steps: &'a [Step], block: Option<BlockCtx>, nums: Nums<'a>) -> Writer<'a> {
        Writer { steps, block, nums, slot: 0, order: Vec::new(), holes: Vec::new(), lines: Vec::new(), ok: true }
    }

    /// Writes `items` with `indent`.
    pub fn items(&mut self, items: &[Item], indent: &str) {
        for it in items {
            match it {
                Item::Step(s) => self.step(*s, indent, None),
                Item::Repeat { first, period, count } => self.repeat(*first, *period, *count, indent),
                Item::Call { first, end, call } => self.call(*first, *end, call, indent),
            }
        }
    }

    /// The layer whose output an item without `from:` takes.
    fn prev(&self) -> usize {
        match (self.order.last(), self.block) {
            (Some(&l), _) => l,
            (None, Some(b)) => b.input,
            (None, None) => INPUT,
        }
    }

    fn step(&mut self, s: usize, indent: &str, rep: Option<RepCtx>) {
        let step = &self.steps[s];
        let name = self.name(step.layer, rep);
        let value = self.value(&step.call);
        let refs = self.refs(&step.inputs, rep);
        let mut line = match refs {
            None => format!("{indent}- {name}: {}", quote(&value, false)),
            Some(r) => format!("{indent}- {{{name}: {}, from: {r}}}", quote(&value, true)),
        };
        if let Some(n) = &step.note {
            match (rep, self.block) {
                (None, None) => line += &format!("   # {}: {n}", step.layer - 1),
                _ => line += &format!("   # {n}"),
            }
        }
        self.lines.push(line);
        self.order.push(step.layer);
    }

    fn repeat(&mut self, first: usize, period: usize, count: usize, indent: &str) {
        let count_text = self.number("", Role::Count, count as i64, None).unwrap_or_default();
        self.lines.push(format!("{indent}- repeat: {count_text}"));
        self.lines.push(format!("{indent}  do:"));
        let first_layer = self.steps[first].layer;
        let span = self.steps[first + period - 1].layer + 1 - first_layer;
        let rep = RepCtx { period: span, rel_from: self.order.len().saturating_sub(1) };
        let body = format!("{indent}    ");
        for q in 0..period {
            self.step(first + q, &body, Some(rep));
        }
        for s in first + period..first + period * count {
            self.order.push(self.steps[s].layer);
        }
        self.order.push(self.steps[first + period * count - 1].layer);
    }

    fn call(&mut self, first: usize, end: usize, call: &str, indent: &str) {
        let input = self.steps[first].inputs[0];
        if input == self.prev() {
            self.lines.push(format!("{indent}- layers: {}", quote(call, false)));
        } else {
            self.lines.push(format!("{indent}- {{layers: {}, from: {}}}", quote(call, true), layer_name(input)));
        }
        self.order.push(self.steps[end - 1].layer);
    }

    fn name(&self, layer: usize, rep: Option<RepCtx>) -> String {
        let (base, off) = match self.block {
            None => ("", layer),
            Some(b) => ("b", layer - b.first_layer),
        };
        let mut terms: Vec<String> = Vec::new();
        if !base.is_empty() {
            terms.push(base.into());
        }
        if off != 0 || terms.is_empty() {
            terms.push(off.to_string());
        }
        if let Some(r) = rep {
            if terms == ["0"] {
                terms.clear();
            }
            terms.push(format!("{}*i", r.period));
        }
        match (self.block, rep) {
            (None, None) => layer_name(layer),
            (None, Some(_)) => format!("\"layers.{{{}}}\"", terms.join("+")),
            (Some(_), _) => format!("\"{{{}}}\"", terms.join("+")),
        }
    }

    /// A number as written now, or `None` when it is left out.
    fn number(&mut self, lead: &str, role: Role, value: i64, default: Option<i64>) -> Option<String> {
        let k = self.slot;
        self.slot += 1;
        match &self.nums {
            Nums::Values if Some(value) == default => None,
            Nums::Values => Some(format!("{lead}{value}")),
            Nums::Holes => {
                self.holes.push((value, role));
                Some(format!("{lead}#"))
            }
            Nums::Bound(b) => match b.get(k) {
                Some(Bound::Literal(v)) if Some(*v) == default => None,
                Some(Bound::Literal(v)) => Some(format!("{lead}{v}")),
                Some(Bound::Expr(e)) => Some(format!("{lead}{e}")),
                None => Some(format!("{lead}{value}")),
            },
        }
    }

    fn value(&mut self, call: &[Tok]) -> String {
        let mut out = String::new();
        for t in call {
            match t {
                Tok::Text(s) => out += s,
                Tok::Num(n) => out += &self.number(n.lead, n.role, n.value, n.default).unwrap_or_default(),
            }
        }
        out
    }

    /// The `from:` of an item, `None` when it takes the previous output.
    fn refs(&mut self, inputs: &[usize], rep: Option<RepCtx>) -> Option<String> {
        if inputs.len() == 1 && inputs[0] == self.prev() {
            return None;
        }
        let refs: Vec<String> = inputs.iter().map(|&x| self.reference(x, rep)).collect();
        Some(if refs.len() == 1 { refs[0].clone() } else { format!("[{}]", refs.join(", ")) })
    }

    fn reference(&mut self, x: usize, rep: Option<RepCtx>) -> String {
        let len = self.order.len();
        let pos = self.order.iter().rposition(|&l| l == x);
        match (self.block, pos) {
            (Some(_), Some(p)) => format!("-{}", len - p),
            // The block input sits just before the body's first output (`-k` reaching one past
            // the start is the input); inside a repeat only a relative reference moves on with
            // the iterations.
            (Some(b), None) if x == b.input && rep.is_some() => format!("-{}", len + 1),
            (Some(b), None) if x == b.input => "in".into(),
            (Some(_), None) => {
                self.ok = false;
                layer_name(x)
            }
            (None, Some(p)) if p + 1 == len || rep.is_some_and(|r| p >= r.rel_from) => format!("-{}", len - p),
            (None, _) => layer_name(x),
        }
    }
}

/// `layers.<i>`, or `input` for the network input.
pub(super) fn layer_name(layer: usize) -> String {
    if layer == INPUT {
        "input".into()
    } else {
        format!("layers.{layer}")
    }
}

/// Quotes a value that YAML would otherwise misread (`a: b`, comments, flow punctuation).
pub(super) fn quote(value: &str, flow: bool) -> String {
    let special = value.contains(": ") || value.contains('#') || value.starts_with(['[', '{', '"', '\'', '-', '*', '&', '!', '|', '>', '%', '@']);
    if special || (flow && value.contains([',', '[', ']', '{', '}'])) {
        format!("\"{value}\"")
    } else {
        value.to_string()
    }
}
