//! Darknet layers from cfg sections, as darknet's `parser.c` reads them (defaults included),
//! with their output shapes; every cfg the importer cannot translate exactly is refused with
//! a diagnostic on the offending line.

use super::cfg::Section;
use crate::diag::Diagnostic;
use crate::span::Span;

/// The network input of layer 0 (no darknet index).
pub(super) const INPUT: usize = usize::MAX;
/// Most layers a cfg may have.
const MAX_LAYERS: usize = 5000;
/// Largest feature map side.
const MAX_SIDE: usize = 1 << 20;

/// A darknet activation the ops support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Act {
    Linear,
    Leaky,
    Relu,
    Relu6,
    Logistic,
    Tanh,
    Swish,
    Mish,
}

impl Act {
    /// Its name in a cfg.
    pub fn darknet_name(self) -> &'static str {
        match self {
            Act::Linear => "linear",
            Act::Leaky => "leaky",
            Act::Relu => "relu",
            Act::Relu6 => "relu6",
            Act::Logistic => "logistic",
            Act::Tanh => "tanh",
            Act::Swish => "swish",
            Act::Mish => "mish",
        }
    }

    /// The tlc op applying it (`None` for linear).
    pub fn op(self) -> Option<&'static str> {
        Some(match self {
            Act::Linear => return None,
            Act::Leaky => "leaky_relu(0.1)",
            Act::Relu => "relu",
            Act::Relu6 => "relu6",
            Act::Logistic => "sigmoid",
            Act::Tanh => "tanh",
            Act::Swish => "silu",
            Act::Mish => "mish",
        })
    }
}

/// What a layer computes.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Kind {
    /// `[convolutional]`; `pad` is the padding on each side.
    Conv { filters: usize, size: usize, stride: usize, pad: usize, groups: usize, bn: bool, act: Act },
    /// `[maxpool]`: darknet pads `padding` (default `size - 1`) in total, `padding / 2` before.
    MaxPool { size: usize, stride: usize, pad: [usize; 2] },
    /// `[avgpool]`: global average.
    AvgPool,
    /// `[route]`: concatenation of `inputs`, or part `group_id` of `groups` channel chunks.
    Route { groups: usize, group_id: usize, text: String },
    /// `[shortcut]`: sum of the previous layer and `from`, then the activation.
    Shortcut { act: Act },
    /// `[upsample]`: nearest, by `stride`.
    Upsample { stride: usize },
    /// `[dropout]`: identity at inference.
    Dropout { p: f64 },
    /// `[yolo]`: a raw detection head.
    Yolo { classes: usize, anchors: Vec<usize>, mask: Vec<usize>, scale_xy: f64 },
}

/// One darknet layer: what it computes, its inputs (darknet indices), the shape of the
/// layer before it (its input unless it is a route) and its output `[c, h, w]`.
pub(super) struct Layer {
    pub kind: Kind,
    pub inputs: Vec<usize>,
    pub input: [usize; 3],
    pub shape: [usize; 3],
    pub span: Span,
}

/// The `[net]` section: the input size.
pub(super) struct Net {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
}

/// Reads `[net]` and every layer after it.
pub(super) fn read(sections: &[Section], end: Span) -> Result<(Net, Vec<Layer>), Diagnostic> {
    let Some(first) = sections.first() else {
        return Err(Diagnostic::error("E0503", end, "the cfg has no sections").hint("a darknet cfg starts with `[net]`, then its layers"));
    };
    if first.kind != "net" && first.kind != "network" {
        return Err(Diagnostic::error("E0503", first.span, format!("the cfg starts with `[{}]`, not `[net]`", first.kind)).hint("darknet reads the input size from the first section, `[net]`"));
    }
    for key in ["width", "height", "channels"] {
        if first.get(key).is_none() {
            return Err(Diagnostic::error("E0503", first.span, format!("`[{}]` has no `{key}=`", first.kind)).hint("the input size is `width=`, `height=` and `channels=` of `[net]`"));
        }
    }
    let net = Net { width: first.size("width", 0, 1)?, height: first.size("height", 0, 1)?, channels: first.size("channels", 0, 1)? };
    if sections.len() > MAX_LAYERS + 1 {
        return Err(Diagnostic::error("E0503", sections[MAX_LAYERS + 1].span, format!("the cfg has more than {MAX_LAYERS} layers")));
    }
    if sections.len() == 1 {
        return Err(Diagnostic::error("E0503", first.span, "the cfg has no layers after `[net]`"));
    }
    let mut layers: Vec<Layer> = Vec::new();
    for (index, s) in sections[1..].iter().enumerate() {
        let input = layers.last().map_or([net.channels, net.height, net.width], |l| l.shape);
        let prev = if index == 0 { INPUT } else { index - 1 };
        let (kind, inputs, shape) = layer(s, index, prev, input, &layers)?;
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none_or(|n| n > crate::ops::MAX_NUMEL) {
            return Err(Diagnostic::error("E0506", s.span, format!("this layer's output {shape:?} is absurdly large")).label("too large"));
        }
        layers.push(Layer { kind, inputs, input, shape, span: s.span });
    }
    Ok((net, layers))
}

type Parsed = (Kind, Vec<usize>, [usize; 3]);

fn layer(s: &Section, index: usize, prev: usize, x: [usize; 3], layers: &[Layer]) -> Result<Parsed, Diagnostic> {
    match s.kind.as_str() {
        "convolutional" | "conv" => conv(s, x).map(|(k, y)| (k, vec![prev], y)),
        "maxpool" | "max" => maxpool(s, x).map(|(k, y)| (k, vec![prev], y)),
        "avgpool" | "avg" => Ok((Kind::AvgPool, vec![prev], [x[0], 1, 1])),
        "route" => route(s, index, layers),
        "shortcut" => shortcut(s, index, prev, x, layers),
        "upsample" => upsample(s, x).map(|(k, y)| (k, vec![prev], y)),
        "dropout" => Ok((Kind::Dropout { p: s.float("probability", 0.2)? }, vec![prev], x)),
        "yolo" => yolo(s, x).map(|k| (k, vec![prev], x)),
        other => Err(unsupported_layer(s, other)),
    }
}

fn unsupported_layer(s: &Section, kind: &str) -> Diagnostic {
    const KNOWN: &[&str] = &[
        "local", "activation", "crnn", "gru", "lstm", "conv_lstm", "history", "rnn", "conn", "connected", "local_avg", "local_avgpool", "reorg3d",
        "reorg", "lrn", "normalization", "batchnorm", "soft", "softmax", "contrastive", "region", "detection", "Gaussian_yolo", "crop", "cost",
        "scale_channels", "sam", "empty", "silence", "implicit_add", "implicit_mul",
    ];
    let what = if KNOWN.contains(&kind) { format!("`[{kind}]` layers are not supported by the importer") } else { format!("unknown layer type `[{kind}]`") };
    Diagnostic::error("E0504", s.span, what)
        .label("cannot translate this layer")
        .hint("supported: [convolutional], [maxpool], [avgpool], [route], [shortcut], [upsample], [dropout], [yolo]")
}

/// Refuses an option that changes what a layer computes in a way tlc does not reproduce.
fn refuse(s: &Section, key: &str, is_default: impl Fn(&str) -> bool, why: &str) -> Result<(), Diagnostic> {
    match s.get(key) {
        Some(o) if !is_default(&o.value) => Err(Diagnostic::error("E0505", o.value_span, format!("`{key}={}` is not supported by the importer", o.value)).label(why.to_string())),
        _ => Ok(()),
    }
}

fn activation(s: &Section, default: &str) -> Result<Act, Diagnostic> {
    Ok(match s.text("activation", default) {
        "linear" => Act::Linear,
        "leaky" => Act::Leaky,
        "relu" => Act::Relu,
        "relu6" => Act::Relu6,
        "logistic" => Act::Logistic,
        "tanh" => Act::Tanh,
        "swish" | "silu" => Act::Swish,
        "mish" => Act::Mish,
        other => {
            return Err(Diagnostic::error("E0505", s.blame("activation"), format!("activation `{other}` is not supported by the importer"))
                .hint("supported: linear, leaky, relu, relu6, logistic, tanh, swish, mish"))
        }
    })
}

fn conv(s: &Section, x: [usize; 3]) -> Result<(Kind, [usize; 3]), Diagnostic> {
    let zero = |v: &str| v == "0";
    for key in ["binary", "xnor", "antialiasing", "sway", "rotate", "stretch", "stretch_sway", "assisted_excitation"] {
        refuse(s, key, zero, "darknet-only convolution variant")?;
    }
    refuse(s, "share_index", |_| false, "weights shared with another layer")?;
    let filters = s.size("filters", 1, 1)?;
    let size = s.size("size", 1, 1)?;
    let stride = s.size("stride", 1, 1)?;
    for key in ["stride_x", "stride_y"] {
        refuse(s, key, |v| v.parse() == Ok(stride), "different strides along x and y")?;
    }
    if size > 1 {
        refuse(s, "dilation", |v| v == "1", "dilated convolution (darknet sizes its output without the dilation)")?;
    }
    let pad = if s.int("pad", 0)? != 0 { size / 2 } else { s.size("padding", 0, 0)? };
    let groups = s.size("groups", 1, 1)?;
    let bn = s.int("batch_normalize", 0)? != 0;
    let act = activation(s, "logistic")?;
    if !x[0].is_multiple_of(groups) || !filters.is_multiple_of(groups) {
        return Err(Diagnostic::error("E0506", s.blame("groups"), format!("groups={groups} must divide the input channels ({}) and filters={filters}", x[0])));
    }
    let out = |n: usize| (n + 2 * pad).checked_sub(size).map(|d| d / stride + 1);
    let (Some(h), Some(w)) = (out(x[1]), out(x[2])) else {
        return Err(too_small(s, "size", size, x));
    };
    Ok((Kind::Conv { filters, size, stride, pad, groups, bn, act }, [filters, h, w]))
}

fn too_small(s: &Section, key: &str, size: usize, x: [usize; 3]) -> Diagnostic {
    Diagnostic::error("E0506", s.blame(key), format!("a {size}x{size} window does not fit its {}x{} input", x[1], x[2])).label("larger than the padded input")
}

fn maxpool(s: &Section, x: [usize; 3]) -> Result<(Kind, [usize; 3]), Diagnostic> {
    refuse(s, "maxpool_depth", |v| v == "0", "max over channels")?;
    refuse(s, "antialiasing", |v| v == "0", "darknet-only pooling variant")?;
    let stride = s.size("stride", 1, 1)?;
    for key in ["stride_x", "stride_y"] {
        refuse(s, key, |v| v.parse() == Ok(stride), "different strides along x and y")?;
    }
    let size = s.size("size", stride, 1)?;
    let padding = s.size("padding", size - 1, 0)?;
    let pad = [padding / 2, padding - padding / 2];
    if pad[1] > size / 2 {
        return Err(Diagnostic::error("E0505", s.blame("padding"), format!("`padding={padding}` is more than a {size}x{size} max-pool can pad"))
            .label(format!("at most {}", 2 * (size / 2))));
    }
    let out = |n: usize| (n + padding).checked_sub(size).map(|d| d / stride + 1);
    let (Some(h), Some(w)) = (out(x[1]), out(x[2])) else {
        return Err(too_small(s, "size", size, x));
    };
    Ok((Kind::MaxPool { size, stride, pad }, [x[0], h, w]))
}

/// A `layers=`/`from=` list as darknet indices: negative entries count back from `index`.
fn sources(s: &Section, key: &str, index: usize) -> Result<Vec<usize>, Diagnostic> {
    let Some(list) = s.ints(key)? else {
        return Err(Diagnostic::error("E0507", s.span, format!("`[{}]` needs `{key}=`", s.kind)).label(format!("no `{key}`")));
    };
    list.iter()
        .map(|&v| {
            let at = if v < 0 { index as i64 + v } else { v };
            usize::try_from(at).ok().filter(|&a| a < index).ok_or_else(|| {
                Diagnostic::error("E0507", s.blame(key), format!("`{key}` entry {v} refers to layer {at}, not to an earlier layer (this is layer {index})"))
                    .label("out of range")
            })
        })
        .collect()
}

fn route(s: &Section, index: usize, layers: &[Layer]) -> Result<Parsed, Diagnostic> {
    let inputs = sources(s, "layers", index)?;
    let groups = s.size("groups", 1, 1)?;
    let group_id = s.size("group_id", 0, 0)?;
    if group_id >= groups {
        return Err(Diagnostic::error("E0506", s.blame("group_id"), format!("group_id={group_id} must be below groups={groups}")));
    }
    if groups > 1 && inputs.len() > 1 {
        return Err(Diagnostic::error("E0505", s.blame("groups"), "`groups` on a route of several layers is not supported by the importer").label("one input layer only"));
    }
    let first = layers[inputs[0]].shape;
    let mut c = 0;
    for &i in &inputs {
        let y = layers[i].shape;
        if y[1..] != first[1..] {
            return Err(Diagnostic::error("E0506", s.blame("layers"), format!("layer {i} is {}x{} but layer {} is {}x{}: a route joins maps of one size", y[1], y[2], inputs[0], first[1], first[2])));
        }
        c += y[0];
    }
    if !c.is_multiple_of(groups) {
        return Err(Diagnostic::error("E0506", s.blame("groups"), format!("groups={groups} must divide the {c} channels")));
    }
    let text = s.text("layers", "").to_string();
    Ok((Kind::Route { groups, group_id, text }, inputs, [c / groups, first[1], first[2]]))
}

fn shortcut(s: &Section, index: usize, prev: usize, x: [usize; 3], layers: &[Layer]) -> Result<Parsed, Diagnostic> {
    refuse(s, "weights_type", |v| v == "none", "weighted shortcut")?;
    let from = sources(s, "from", index)?;
    let act = activation(s, "linear")?;
    if prev == INPUT {
        return Err(Diagnostic::error("E0507", s.span, "a shortcut cannot be the first layer"));
    }
    for &i in &from {
        if layers[i].shape != x {
            let y = layers[i].shape;
            return Err(Diagnostic::error("E0506", s.blame("from"), format!("layer {i} is {y:?} but the previous layer is {x:?}: a shortcut adds maps of one shape ([c, h, w])")));
        }
    }
    let mut inputs = vec![prev];
    inputs.extend(from);
    Ok((Kind::Shortcut { act }, inputs, x))
}

fn upsample(s: &Section, x: [usize; 3]) -> Result<(Kind, [usize; 3]), Diagnostic> {
    refuse(s, "scale", |v| v.parse() == Ok(1.0), "scaled upsampling")?;
    if s.int("stride", 2)? < 0 {
        return Err(Diagnostic::error("E0505", s.blame("stride"), "a negative upsample stride (downsampling) is not supported by the importer"));
    }
    let stride = s.size("stride", 2, 1)?;
    let (h, w) = (x[1].saturating_mul(stride), x[2].saturating_mul(stride));
    if h.max(w) > MAX_SIDE {
        return Err(Diagnostic::error("E0506", s.blame("stride"), format!("upsampling {}x{} by {stride} makes an absurdly large map", x[1], x[2])));
    }
    Ok((Kind::Upsample { stride }, [x[0], h, w]))
}

fn yolo(s: &Section, x: [usize; 3]) -> Result<Kind, Diagnostic> {
    refuse(s, "new_coords", |v| v == "0", "the scaled-YOLOv4 box decoding")?;
    let classes = s.size("classes", 20, 1)?;
    let num = s.size("num", 1, 1)?;
    let mask: Vec<usize> = match s.ints("mask")? {
        None => (0..num).collect(),
        Some(m) => m.into_iter().map(|v| usize::try_from(v).unwrap_or(usize::MAX)).collect(),
    };
    if let Some(bad) = mask.iter().find(|&&m| m >= num) {
        return Err(Diagnostic::error("E0506", s.blame("mask"), format!("mask entry {bad} refers past the num={num} anchors")));
    }
    let anchors = anchors(s, num)?;
    let scale_xy = s.float("scale_x_y", 1.0)?;
    if scale_xy <= 0.0 {
        return Err(Diagnostic::error("E0502", s.blame("scale_x_y"), "`scale_x_y` must be positive"));
    }
    let want = mask.len() * (5 + classes);
    if x[0] != want {
        return Err(Diagnostic::error("E0506", s.span, format!("this [yolo] layer needs {want} input channels ({} anchors x (5 + {classes} classes)), the layer before gives {}", mask.len(), x[0]))
            .hint(format!("set filters={want} in the [convolutional] layer before it")));
    }
    Ok(Kind::Yolo { classes, anchors, mask, scale_xy })
}

/// The `anchors=` of a `[yolo]` layer: `2 * num` whole pixel sizes.
fn anchors(s: &Section, num: usize) -> Result<Vec<usize>, Diagnostic> {
    let Some(o) = s.get("anchors") else {
        return Err(Diagnostic::error("E0507", s.span, "`[yolo]` needs `anchors=`"));
    };
    let parsed: Option<Vec<usize>> = o.value.split(',').filter(|v| !v.is_empty()).map(|v| v.parse::<f64>().ok().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e6).map(|f| f as usize)).collect();
    match parsed {
        Some(a) if a.len() == 2 * num => Ok(a),
        Some(a) => Err(Diagnostic::error("E0506", o.value_span, format!("num={num} anchors need {} values, found {}", 2 * num, a.len()))),
        None => Err(Diagnostic::error("E0502", o.value_span, "anchors must be whole pixel sizes: `anchors=w0,h0, w1,h1, ...`")),
    }
}
