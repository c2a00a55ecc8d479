//! Darknet layers as spec items ("steps"): each layer's call with the numbers that folding may
//! turn into block parameters, its inputs, and the BatchNorm conv blocks the calls use.

use super::layers::{Act, Kind, Layer, INPUT};

/// What a number in a call means; block parameters are named after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Role {
    Channels,
    Kernel,
    Stride,
    Groups,
    Count,
}

/// A number in a call: written as `lead` + value, and left out when it equals `default`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Num {
    pub lead: &'static str,
    pub role: Role,
    pub value: i64,
    pub default: Option<i64>,
}

/// A piece of a call: fixed text or a number.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    Text(String),
    Num(Num),
}

/// One spec item: darknet layer `layer`, its call, its inputs (darknet indices, after
/// skipping pass-through routes) and a comment (the skipped route just before it).
#[derive(Clone, Debug)]
pub(super) struct Step {
    pub layer: usize,
    pub call: Vec<Tok>,
    pub inputs: Vec<usize>,
    pub note: Option<String>,
}

/// A block for `[convolutional] batch_normalize=1`: conv, BN, then `act` (unless `linear=true`).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct BnBlock {
    pub name: &'static str,
    pub act: Act,
    /// Has a `linear=false` parameter (some of its convs are linear).
    pub linear_flag: bool,
    /// Has a `p=k // 2` parameter (some of its convs pad otherwise).
    pub pad_param: bool,
}

/// Header values shared by every `[yolo]` layer, written as spec `params:`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct YoloParams {
    pub classes: usize,
    pub anchors: Vec<usize>,
}

/// The steps of a network and what they need in the spec header.
pub(super) struct Plan {
    pub steps: Vec<Step>,
    pub bn_blocks: Vec<BnBlock>,
    pub yolo: Option<YoloParams>,
}

fn num(lead: &'static str, role: Role, value: usize, default: Option<i64>) -> Tok {
    Tok::Num(Num { lead, role, value: value as i64, default })
}

fn text(s: impl Into<String>) -> Tok {
    Tok::Text(s.into())
}

/// Plans the steps of `layers`.
pub(super) fn plan(layers: &[Layer]) -> Plan {
    let bn_blocks = bn_blocks(layers);
    let yolo = shared_yolo(layers);
    let mut alias: Vec<usize> = (0..layers.len()).collect();
    let mut steps: Vec<Step> = Vec::new();
    let mut note: Option<String> = None;
    for (i, l) in layers.iter().enumerate() {
        let inputs: Vec<usize> = l.inputs.iter().map(|&j| if j == INPUT { INPUT } else { alias[j] }).collect();
        if let Kind::Route { groups: 1, text: t, .. } = &l.kind {
            if inputs.len() == 1 && i + 1 < layers.len() {
                alias[i] = inputs[0];
                note = Some(format!("route {t}"));
                continue;
            }
        }
        let call = match &l.kind {
            Kind::Conv { .. } => conv_call(l, &bn_blocks, layers.get(i + 1), i, yolo.is_some()),
            Kind::MaxPool { size, stride, pad } => maxpool_call(*size, *stride, *pad, l.input),
            Kind::AvgPool => vec![text("global_avgpool")],
            Kind::Route { groups: 1, .. } if inputs.len() == 1 => vec![text("identity")],
            Kind::Route { groups: 1, .. } => vec![text("concat")],
            Kind::Route { groups, group_id, .. } => vec![text(format!("chunk({groups}, {group_id})"))],
            Kind::Shortcut { act } => vec![text(with_act("add", *act))],
            Kind::Upsample { stride } => vec![text(format!("upsample({stride})"))],
            Kind::Dropout { p } => vec![text(format!("dropout({p})"))],
            Kind::Yolo { classes, anchors, mask, scale_xy } => vec![text(yolo_call(*classes, anchors, mask, *scale_xy, yolo.as_ref()))],
        };
        let note = if i > 0 && alias[i - 1] != i - 1 { note.take() } else { None };
        steps.push(Step { layer: i, call, inputs, note });
    }
    Plan { steps, bn_blocks, yolo }
}

fn with_act(op: &str, act: Act) -> String {
    match act.op() {
        Some(a) => format!("{op} -> {a}"),
        None => op.to_string(),
    }
}

/// One block per non-linear activation of the BatchNorm convs; linear ones use the most
/// common activation's block with `linear=true` (Yolo-Fastest's `cbl`).
fn bn_blocks(layers: &[Layer]) -> Vec<BnBlock> {
    let mut counts: Vec<(Act, usize, bool)> = Vec::new();
    for l in layers {
        if let Kind::Conv { bn: true, act, pad, size, .. } = l.kind {
            match counts.iter_mut().find(|(a, _, _)| *a == act) {
                Some(c) => {
                    c.1 += 1;
                    c.2 |= pad != size / 2;
                }
                None => counts.push((act, 1, pad != size / 2)),
            }
        }
    }
    let linear = counts.iter().position(|c| c.0 == Act::Linear).map(|i| counts.remove(i));
    let main = counts.iter().enumerate().max_by_key(|(i, c)| (c.1, usize::MAX - i)).map(|(i, _)| i);
    let mut blocks: Vec<BnBlock> = counts
        .iter()
        .enumerate()
        .map(|(i, &(act, _, odd_pad))| BnBlock {
            name: block_name(act),
            act,
            linear_flag: Some(i) == main && linear.is_some(),
            pad_param: odd_pad || (Some(i) == main && linear.is_some_and(|l| l.2)),
        })
        .collect();
    if let (Some(l), None) = (linear, main) {
        blocks.push(BnBlock { name: "cb", act: Act::Linear, linear_flag: false, pad_param: l.2 });
    }
    blocks
}

fn block_name(act: Act) -> &'static str {
    match act {
        Act::Linear => "cb",
        Act::Leaky => "cbl",
        Act::Relu => "cbr",
        Act::Relu6 => "cbr6",
        Act::Logistic => "cbsig",
        Act::Tanh => "cbt",
        Act::Swish => "cbs",
        Act::Mish => "cbm",
    }
}

fn shared_yolo(layers: &[Layer]) -> Option<YoloParams> {
    let mut heads = layers.iter().filter_map(|l| match &l.kind {
        Kind::Yolo { classes, anchors, .. } => Some(YoloParams { classes: *classes, anchors: anchors.clone() }),
        _ => None,
    });
    let first = heads.next()?;
    heads.all(|h| h == first).then_some(first)
}

fn conv_call(l: &Layer, blocks: &[BnBlock], next: Option<&Layer>, i: usize, shared: bool) -> Vec<Tok> {
    let Kind::Conv { filters, size, stride, pad, groups, bn, act } = l.kind else { unreachable!() };
    if !bn {
        let out = match next.map(|n| (&n.kind, &n.inputs)) {
            Some((Kind::Yolo { mask, .. }, inputs)) if shared && inputs[..] == [i] => text(format!("{} * (5 + classes)", mask.len())),
            _ => num("", Role::Channels, filters, None),
        };
        let mut call = vec![text("conv: conv("), out, num(", k=", Role::Kernel, size, None), num(", s=", Role::Stride, stride, Some(1))];
        if pad != 0 {
            call.push(text(format!(", p={pad}")));
        }
        call.push(num(", groups=", Role::Groups, groups, Some(1)));
        call.push(text(with_act(")", act)));
        return call;
    }
    let block = blocks.iter().find(|b| b.act == act).or_else(|| blocks.iter().find(|b| b.linear_flag)).expect("a block for every BN conv");
    let mut call = vec![
        text(format!("{}(", block.name)),
        num("", Role::Channels, filters, None),
        num(", ", Role::Kernel, size, Some(1)),
        num(", s=", Role::Stride, stride, Some(1)),
        num(", g=", Role::Groups, groups, Some(1)),
    ];
    if pad != size / 2 {
        call.push(text(format!(", p={pad}")));
    }
    if act == Act::Linear && block.act != Act::Linear {
        call.push(text(", linear=true"));
    }
    call.push(text(")"));
    call
}

/// `maxpool(k, s=s, p=...)` with darknet's padding, left out where it never reaches a window.
fn maxpool_call(size: usize, stride: usize, pad: [usize; 2], x: [usize; 3]) -> Vec<Tok> {
    // With nothing padded before, the padding after is never read when the output is as long
    // without it (the last window ends inside the input).
    let unused = |n: usize| pad[0] == 0 && n >= size && (n + pad[1] - size) / stride == (n - size) / stride;
    let pad = if unused(x[1]) && unused(x[2]) { [0, 0] } else { pad };
    let p = match pad {
        [0, 0] => String::new(),
        [a, b] if a == b => format!(", p={a}"),
        [a, b] => format!(", p=[{a}, {b}, {a}, {b}]"),
    };
    vec![text("maxpool("), num("", Role::Kernel, size, None), num(", s=", Role::Stride, stride, None), text(format!("{p})"))]
}

fn yolo_call(classes: usize, anchors: &[usize], mask: &[usize], scale_xy: f64, shared: Option<&YoloParams>) -> String {
    let list = |v: &[usize]| format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "));
    let (c, a) = match shared {
        Some(_) => ("classes".to_string(), "anchors".to_string()),
        None => (classes.to_string(), list(anchors)),
    };
    let scale = if scale_xy == 1.0 { String::new() } else { format!(", scale_xy={scale_xy}") };
    format!("yolo_head({c}, {a}, mask={}{scale})", list(mask))
}
