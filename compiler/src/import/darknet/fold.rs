//! Folding repeated structure: runs of identical steps become `repeat:` items, and item
//! windows that recur with the same structure (differing only in numbers) become blocks
//! whose parameters are the numbers that differ, like specs/yolo.yaml's `stage`.

use super::layers::INPUT;
use super::steps::{Role, Step, Tok};
use super::write::{BlockCtx, Bound, Item, Nums, Writer};
use std::collections::HashMap;

/// Longest repeat period and block window, in items.
const MAX_SPAN: usize = 64;
/// Most blocks discovered.
const MAX_BLOCKS: usize = 8;
/// Fewest lines a block must save.
const MIN_SAVED: i64 = 2;

/// A discovered block: its name and definition lines (header included).
pub(super) struct Block {
    pub name: String,
    pub lines: Vec<String>,
}

/// The top-level items and the blocks they call.
pub(super) fn fold(steps: &[Step]) -> (Vec<Item>, Vec<Block>) {
    let mut items = repeats(steps);
    wrap_single_units(steps, &mut items);
    let mut blocks: Vec<Block> = Vec::new();
    while blocks.len() < MAX_BLOCKS {
        let Some(best) = best_window(steps, &items) else { break };
        let block = make_block(steps, &items, &best, &blocks);
        let mut out = Vec::new();
        let mut i = 0;
        let mut calls = block.1.into_iter();
        for &start in &best.starts {
            out.extend(items[i..start].iter().cloned());
            out.push(calls.next().expect("one call per instance"));
            i = start + best.len;
        }
        out.extend(items[i..].iter().cloned());
        items = out;
        blocks.push(block.0);
    }
    let items = items
        .into_iter()
        .flat_map(|it| match it {
            Item::Repeat { first, period, count: 1 } => (first..first + period).map(Item::Step).collect(),
            other => vec![other],
        })
        .collect();
    (items, blocks)
}

/// The layer period of `period` steps from `s`: its darknet layers, skipped routes included.
fn layer_span(steps: &[Step], s: usize, period: usize) -> usize {
    steps[s + period - 1].layer + 1 - steps[s].layer
}

/// Whether iteration `j` of the `period` steps from `s` repeats iteration 0: same calls and
/// notes, layers shifted by `j` periods, references inside the run shifted, others equal.
fn same_iteration(steps: &[Step], s: usize, period: usize, j: usize) -> bool {
    let span = layer_span(steps, s, period);
    let prev = if s == 0 { INPUT } else { steps[s - 1].layer };
    (0..period).all(|q| {
        let (a, b) = (&steps[s + q], &steps[s + j * period + q]);
        let shifted = |x: usize, y: usize| {
            if x != INPUT && (x == prev || x >= steps[s].layer) {
                y == x + j * span
            } else {
                y == x
            }
        };
        a.call == b.call
            && a.note == b.note
            && b.layer == a.layer + j * span
            && a.inputs.len() == b.inputs.len()
            && a.inputs.iter().zip(&b.inputs).all(|(&x, &y)| shifted(x, y))
    })
}

/// No later step takes an output of the run's earlier iterations (one in the last iteration
/// is fine: its name is that of the last `i`). Keeps Yolo-Fastest's first stage, whose
/// shortcut reads the end of the first of two equal triples, from folding as a repeat.
fn closed(steps: &[Step], s: usize, end: usize, period: usize) -> bool {
    let (lo, hi) = (steps[s].layer, steps[end - period].layer);
    steps[end..].iter().all(|t| t.inputs.iter().all(|&x| x == INPUT || x < lo || x >= hi))
}

/// Greedy left to right: at each step the run of identical iterations covering most steps,
/// when it saves lines (a repeat costs two lines more than its body).
fn repeats(steps: &[Step]) -> Vec<Item> {
    let mut items = Vec::new();
    let mut s = 0;
    while s < steps.len() {
        let mut best: Option<(usize, usize)> = None;
        for period in 1..=((steps.len() - s) / 2).min(MAX_SPAN) {
            let mut count = 1;
            while s + (count + 1) * period <= steps.len() && same_iteration(steps, s, period, count) {
                count += 1;
            }
            let saves = period * (count - 1) > 2;
            if count >= 2 && saves && closed(steps, s, s + period * count, period) && best.is_none_or(|(p, c)| period * count > p * c) {
                best = Some((period, count));
            }
        }
        match best {
            Some((period, count)) => {
                items.push(Item::Repeat { first: s, period, count });
                s += period * count;
            }
            None => {
                items.push(Item::Step(s));
                s += 1;
            }
        }
    }
    items
}

/// The structure of a window of items written as a block body (`None` when it cannot be one),
/// with its numbers.
fn skeleton(steps: &[Step], window: &[Item]) -> Option<(String, Vec<(i64, Role)>)> {
    let first = match window.first()? {
        Item::Step(s) | Item::Repeat { first: s, .. } => *s,
        Item::Call { .. } => return None,
    };
    if window.iter().any(|it| matches!(it, Item::Call { .. })) || steps[first].inputs.len() != 1 {
        return None;
    }
    let ctx = BlockCtx { first_layer: steps[first].layer, input: steps[first].inputs[0] };
    let mut w = Writer::new(steps, Some(ctx), Nums::Holes);
    w.items(window, "");
    w.ok.then(|| (w.lines.join("\n"), w.holes))
}

/// A single occurrence of a repeat's body (same structure, other numbers) becomes a repeat
/// of one, so that blocks can match it (Yolo-Fastest's first stage has one residual unit).
/// Only bodies with a branch (a `from:`) count: a plain chain of convs is too common a shape.
fn wrap_single_units(steps: &[Step], items: &mut Vec<Item>) {
    let bodies: Vec<(usize, String)> = items
        .iter()
        .filter_map(|it| match *it {
            Item::Repeat { first, period, .. } => skeleton(steps, &[Item::Repeat { first, period, count: 1 }]).map(|(k, _)| (period, k)),
            _ => None,
        })
        .filter(|(_, key)| key.contains("from: "))
        .collect();
    let mut i = 0;
    while i < items.len() {
        let hit = bodies.iter().find(|(period, key)| {
            let Some(window) = items.get(i..i + period) else { return false };
            let Some(Item::Step(first)) = window.first() else { return false };
            let contiguous = window.iter().enumerate().all(|(q, it)| matches!(it, Item::Step(s) if *s == first + q));
            let unit = Item::Repeat { first: *first, period: *period, count: 1 };
            contiguous && skeleton(steps, &[unit]).is_some_and(|(k, _)| &k == key)
        });
        match hit {
            Some(&(period, _)) => {
                let Item::Step(first) = items[i] else { unreachable!() };
                items.splice(i..i + period, [Item::Repeat { first, period, count: 1 }]);
            }
            None => i += 1,
        }
    }
}

/// A window length and the starts of its non-overlapping instances.
struct Window {
    len: usize,
    starts: Vec<usize>,
}

/// The window whose instances, written once as a block, save the most lines.
fn best_window(steps: &[Step], items: &[Item]) -> Option<Window> {
    let mut best: Option<(i64, Window)> = None;
    for len in 1..=(items.len() / 2).min(MAX_SPAN) {
        let mut groups: HashMap<String, (usize, Vec<usize>)> = HashMap::new();
        for start in 0..=items.len() - len {
            if let Some((key, _)) = skeleton(steps, &items[start..start + len]) {
                let lines = key.lines().count();
                let g = groups.entry(key).or_insert((lines, Vec::new()));
                if g.1.last().is_none_or(|&last| start >= last + len) {
                    g.1.push(start);
                }
            }
        }
        for (_, (lines, starts)) in groups {
            let m = starts.len() as i64;
            let saved = m * lines as i64 - (lines as i64 + 1 + m);
            let better = match &best {
                None => saved >= MIN_SAVED,
                Some((b, w)) => saved > *b || (saved == *b && starts[0] < w.starts[0]),
            };
            if m >= 2 && better {
                best = Some((saved, Window { len, starts }));
            }
        }
    }
    best.map(|(_, w)| w)
}

/// A parameter: its role, its values per instance, and its name once known.
struct Param {
    role: Role,
    values: Vec<i64>,
    name: String,
}

/// Builds the block for `w`'s instances: parameters for the numbers that differ (shared
/// where equal, `2 * c` / `c // 2` where a channel count doubles or halves another), the
/// definition, and one call per instance.
fn make_block(steps: &[Step], items: &[Item], w: &Window, earlier: &[Block]) -> (Block, Vec<Item>) {
    let holes: Vec<Vec<(i64, Role)>> = w.starts.iter().map(|&s| skeleton(steps, &items[s..s + w.len]).expect("a valid window").1).collect();
    let mut params: Vec<Param> = Vec::new();
    let mut binds: Vec<Result<i64, (usize, &'static str)>> = Vec::new();
    for k in 0..holes[0].len() {
        let role = holes[0][k].1;
        let values: Vec<i64> = holes.iter().map(|h| h[k].0).collect();
        if values.iter().all(|&v| v == values[0]) {
            binds.push(Ok(values[0]));
        } else if let Some(i) = params.iter().position(|p| p.values == values) {
            binds.push(Err((i, "")));
        } else if let Some((i, op)) = related(&params, role, &values) {
            binds.push(Err((i, op)));
        } else {
            params.push(Param { role, values, name: String::new() });
            binds.push(Err((params.len() - 1, "")));
        }
    }
    name_params(&mut params);
    let mut order: Vec<usize> = (0..params.len()).collect();
    order.sort_by_key(|&i| params[i].role);
    let bound: Vec<Bound> = binds
        .iter()
        .map(|b| match *b {
            Ok(v) => Bound::Literal(v),
            Err((i, "2*")) => Bound::Expr(format!("2 * {}", params[i].name)),
            Err((i, "/2")) => Bound::Expr(format!("{} // 2", params[i].name)),
            Err((i, _)) => Bound::Expr(params[i].name.clone()),
        })
        .collect();
    let window = &items[w.starts[0]..w.starts[0] + w.len];
    let name = block_name(steps, window, earlier);
    let lines = definition(steps, window, &name, &order.iter().map(|&i| &params[i]).collect::<Vec<_>>(), &bound, w);
    let calls = w
        .starts
        .iter()
        .enumerate()
        .map(|(j, &s)| {
            let (first, end) = (first_step(&items[s]), last_step(&items[s + w.len - 1]));
            let args: Vec<String> = std::iter::once(steps[first].layer.to_string())
                .chain(order.iter().map(|&i| &params[i]).map(|p| if p.role == Role::Channels { p.values[j].to_string() } else { format!("{}={}", p.name, p.values[j]) }))
                .collect();
            Item::Call { first, end, call: format!("{name}({})", args.join(", ")) }
        })
        .collect();
    (Block { name, lines }, calls)
}

/// `detect` for a block with a YOLO output conv, `stage` for one with a repeat, else
/// `block`; numbered from the second of a kind.
fn block_name(steps: &[Step], window: &[Item], earlier: &[Block]) -> String {
    let yolo_conv = |s: &Step| s.call.iter().any(|t| matches!(t, Tok::Text(x) if x.contains("classes")));
    let base = if window.iter().any(|it| (first_step(it)..last_step(it)).any(|s| yolo_conv(&steps[s]))) {
        "detect"
    } else if window.iter().any(|it| matches!(it, Item::Repeat { .. })) {
        "stage"
    } else {
        "block"
    };
    let taken = |n: &str| earlier.iter().any(|b| b.name == n);
    (1..).map(|k| if k == 1 { base.to_string() } else { format!("{base}{k}") }).find(|n| !taken(n)).expect("a free name")
}

/// `2 * c` or `c // 2` of an earlier channel parameter, if `values` is one.
fn related(params: &[Param], role: Role, values: &[i64]) -> Option<(usize, &'static str)> {
    if role != Role::Channels {
        return None;
    }
    params.iter().enumerate().filter(|(_, p)| p.role == Role::Channels).find_map(|(i, p)| {
        if p.values.iter().zip(values).all(|(a, b)| 2 * a == *b) {
            Some((i, "2*"))
        } else if p.values.iter().zip(values).all(|(a, b)| *a == 2 * b) {
            Some((i, "/2"))
        } else {
            None
        }
    })
}

/// `c`, `k`, `s`, `g`, `n` after the role, numbered when a role has several parameters.
fn name_params(params: &mut [Param]) {
    let letter = |r: Role| match r {
        Role::Channels => "c",
        Role::Kernel => "k",
        Role::Stride => "s",
        Role::Groups => "g",
        Role::Count => "n",
    };
    let mut seen: HashMap<Role, usize> = HashMap::new();
    let totals: HashMap<Role, usize> = params.iter().fold(HashMap::new(), |mut m, p| {
        *m.entry(p.role).or_default() += 1;
        m
    });
    for p in params.iter_mut() {
        let k = seen.entry(p.role).or_default();
        *k += 1;
        p.name = if totals[&p.role] == 1 { letter(p.role).to_string() } else { format!("{}{k}", letter(p.role)) };
    }
}

fn first_step(it: &Item) -> usize {
    match *it {
        Item::Step(s) | Item::Repeat { first: s, .. } | Item::Call { first: s, .. } => s,
    }
}

fn last_step(it: &Item) -> usize {
    match *it {
        Item::Step(s) => s + 1,
        Item::Repeat { first, period, count } => first + period * count,
        Item::Call { end, .. } => end,
    }
}

/// The block's lines: `name(b, params):   # layers b .. b+K`, then the body.
fn definition(steps: &[Step], window: &[Item], name: &str, params: &[&Param], bound: &[Bound], w: &Window) -> Vec<String> {
    let first = first_step(&window[0]);
    let ctx = BlockCtx { first_layer: steps[first].layer, input: steps[first].inputs[0] };
    let mut body = Writer::new(steps, Some(ctx), Nums::Bound(bound));
    body.items(window, "    ");
    let signature: Vec<&str> = std::iter::once("b").chain(params.iter().map(|p| p.name.as_str())).collect();
    let last = last_step(&window[window.len() - 1]) - 1;
    let extent = match window.last() {
        Some(Item::Repeat { first: r, period, .. }) if params.iter().any(|p| p.role == Role::Count) => {
            let before = steps[*r].layer - steps[first].layer;
            let n = params.iter().find(|p| p.role == Role::Count).map_or("n", |p| p.name.as_str());
            let per = layer_span(steps, *r, *period);
            match before {
                0 => format!("b+{per}{n}-1"),
                1 => format!("b+{per}{n}"),
                _ => format!("b+{}+{per}{n}", before - 1),
            }
        }
        _ => format!("b+{}", steps[last].layer - steps[first].layer),
    };
    let head = format!("  {name}({}):", signature.join(", "));
    let mut lines = vec![format!("{head:<39} # layers b .. {extent}, {} times", w.starts.len())];
    lines.extend(body.lines);
    lines
}
