//! The tlc IR: a directed acyclic graph (petgraph) of primitive ops. This file is the one
//! place that documents it.
//!
//! * Nodes are added in topological order: every input of a node has a smaller index, so
//!   `graph.node_indices()` is an execution order.
//! * Shapes are per sample, without the batch dimension: an image tensor is `[C, H, W]`, a
//!   token sequence `[L, D]`, a channels-last map `[H, W, C]`. `None` means unknown after an
//!   earlier error (only in graphs that also carry diagnostics).
//! * Every node has a unique dotted `name` following the reference module tree
//!   (`layer1.0.conv1`); its parameters are named `<name>.<suffix>` exactly as the
//!   reference's `state_dict` keys (a few ops own a parameter named by the node itself, such as
//!   `class_token`).
//! * Each node keeps the span of the spec text it came from and the trace of block
//!   expansions that produced it.
//! * Edges carry the input slot; `Node::inputs` holds the same list in order.

use crate::diag::Frame;
use crate::meta::Preprocess;
use crate::span::Span;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

/// Index of a node.
pub type NodeId = NodeIndex;

/// Padding of a 2-D window op: `[top, bottom, left, right]`.
pub type Pad4 = [usize; 4];

/// How a 2-D op pads its input.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Padding {
    /// Explicit `[top, bottom, left, right]`.
    Fixed(Pad4),
    /// TensorFlow "SAME": computed from the input size, extra pixel at the bottom/right.
    Same,
}

/// Axis of a normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum NormAxis {
    /// The last dimension (transformers, channels-last maps).
    Last,
    /// The channel dimension of a `[C, H, W]` map (ConvNeXt's LayerNorm2d).
    Channels,
}

/// Element-wise activation functions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Activation {
    /// max(x, 0)
    Relu,
    /// min(max(x, 0), 6)
    Relu6,
    /// x if x > 0 else slope * x
    LeakyRelu(f64),
    /// x * sigmoid(x)
    Silu,
    /// exact (erf) GELU
    Gelu,
    /// x * relu6(x + 3) / 6
    HardSwish,
    /// relu6(x + 3) / 6
    HardSigmoid,
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// tanh
    Tanh,
    /// x * tanh(softplus(x)) (darknet's mish)
    Mish,
}

/// A primitive operation with its attributes. Shape rules live in `ops/`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Op {
    /// The network input.
    Input,
    /// 2-D convolution (PyTorch `Conv2d`): weight `[out, in/groups, kh, kw]`, optional bias.
    Conv { out: usize, kernel: [usize; 2], stride: [usize; 2], padding: Padding, dilation: [usize; 2], groups: usize, bias: bool },
    /// Batch normalisation over channels (dim 0 of the sample), eval mode uses running stats.
    BatchNorm { eps: f64 },
    /// Layer normalisation with affine weight and bias.
    LayerNorm { eps: f64, axis: NormAxis },
    /// Element-wise activation.
    Act(Activation),
    /// Softmax over an axis (PyTorch numbering, batch = 0).
    Softmax { axis: isize },
    /// Fully connected layer on the last dimension: weight `[out, in]`.
    Linear { out: usize, bias: bool },
    /// Max pooling (PyTorch `MaxPool2d`).
    MaxPool { kernel: [usize; 2], stride: [usize; 2], padding: Padding, dilation: [usize; 2], ceil: bool },
    /// Average pooling (PyTorch `AvgPool2d`).
    AvgPool { kernel: [usize; 2], stride: [usize; 2], padding: Padding, ceil: bool, count_include_pad: bool },
    /// Adaptive average pooling to a fixed output size.
    AdaptiveAvgPool { size: [usize; 2] },
    /// Global average (`max == false`) or max pooling, keeping `[C, 1, 1]`.
    GlobalPool { max: bool },
    /// Flatten dims `start..` (PyTorch numbering, batch = 0).
    Flatten { start: usize },
    /// Reshape the sample to these dims (one may be -1).
    Reshape { dims: Vec<isize> },
    /// Permute dims (PyTorch numbering including the batch, which must stay first).
    Permute { perm: Vec<usize> },
    /// Take `index` along `dim` (PyTorch numbering), removing the dim.
    Select { dim: usize, index: usize },
    /// Identity at inference: dropout (`p`) or stochastic depth.
    Dropout { p: f64, stochastic_depth: bool },
    /// No-op.
    Identity,
    /// Element-wise sum of all inputs (broadcast must match exactly).
    Add,
    /// Element-wise product of all inputs, with broadcasting of size-1 dims (SE gating).
    Mul,
    /// Concatenate all inputs along `dim` (PyTorch numbering).
    Concat { dim: usize },
    /// Split `dim` into `chunks` equal parts and take part `index`.
    Chunk { chunks: usize, index: usize, dim: usize },
    /// Nearest-neighbour upsampling by an integer factor.
    Upsample { scale: usize },
    /// Constant zero padding of a `[C, H, W]` map.
    ZeroPad { pad: Pad4 },
    /// Fixed per-channel affine map `x * scale[c] + shift[c]` over the first sample dim
    /// (PyTorch dim 1), without parameters (torchvision Inception-v3's `transform_input`).
    ChannelAffine { scale: Vec<f64>, shift: Vec<f64> },
    /// Multiplies by a learnable tensor named after the node (layer scale), of this shape.
    Scale { shape: Vec<usize> },
    /// Prepends a learnable class token (named after the node, `[1, 1, D]`) to a `[L, D]` sequence.
    ClassToken,
    /// Adds a learnable position embedding (named after the node, `[1, L, D]`).
    PosEmbed,
    /// Multi-head self-attention (PyTorch `nn.MultiheadAttention`, batch first) on `[L, D]`.
    SelfAttention { heads: usize },
    /// Swin shifted-window attention on a channels-last `[H, W, C]` map (torchvision
    /// `ShiftedWindowAttention`, relative position bias).
    WindowAttention { heads: usize, window: usize, shift: usize },
    /// Swin patch merging: `[H, W, C]` to `[H/2, W/2, 4C]` (pad to even, 2x2 neighbours).
    PatchMerge,
    /// YOLOv8 detection decode: per level `[4*reg_max + classes, H, W]` inputs, to `[4 + classes, N]`.
    DetectV8 { classes: usize, reg_max: usize, strides: Vec<usize> },
    /// Darknet YOLO layer: raw `[A*(5+classes), H, W]` head, kept raw (decode happens in `tlc run`);
    /// `scale_xy` is darknet's `scale_x_y` (box centres `σ(t)·scale_xy − (scale_xy − 1)/2`).
    YoloHead { classes: usize, anchors: Vec<[usize; 2]>, mask: Vec<usize>, scale_xy: f64 },
}

/// Kind of a parameter, for initialisation and training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ParamKind {
    /// Learnable weight.
    Weight,
    /// Learnable bias.
    Bias,
    /// BatchNorm running mean (not learnable).
    RunningMean,
    /// BatchNorm running variance (not learnable).
    RunningVar,
    /// Learnable tensor without a conventional role (tokens, embeddings, tables, scales).
    Other,
}

/// A named tensor a node owns.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Param {
    /// Full `state_dict` key.
    pub name: String,
    /// PyTorch shape.
    pub shape: Vec<usize>,
    /// Role.
    pub kind: ParamKind,
}

impl Param {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Learnable by gradient descent (running statistics are not).
    pub fn trainable(&self) -> bool {
        !matches!(self.kind, ParamKind::RunningMean | ParamKind::RunningVar)
    }
}

/// One IR node.
#[derive(Clone, Debug, Serialize)]
pub struct Node {
    /// Unique dotted name following the reference's module tree.
    pub name: String,
    /// Operation.
    pub op: Op,
    /// Input nodes, in argument order.
    #[serde(skip)]
    pub inputs: Vec<NodeId>,
    /// Output shape per sample (no batch dim); `None` after an upstream error.
    pub shape: Option<Vec<usize>>,
    /// Parameters and buffers owned by this node.
    pub params: Vec<Param>,
    /// Multiply-accumulates for one sample.
    pub macs: u64,
    /// Spec text the node came from.
    #[serde(skip)]
    pub span: Span,
    /// Block expansions that produced it, outermost first.
    #[serde(skip)]
    pub trace: Vec<Frame>,
}

/// A named sub-graph (an item or block instance of the spec), for `--features` and DOT clusters.
#[derive(Clone, Debug, Serialize)]
pub struct Scope {
    /// Dotted path, e.g. `layer3` or `layer3.2`.
    pub name: String,
    /// Node holding the scope's output.
    #[serde(skip)]
    pub output: NodeId,
    /// Block that was expanded, if any.
    pub block: Option<String>,
    /// What opened the scope.
    pub origin: ScopeOrigin,
    /// The spec text that opened it: the block call or the item's name.
    #[serde(skip)]
    pub span: Span,
}

/// The spec construct that opened a [`Scope`] (for explaining names, see `against`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ScopeOrigin {
    /// A block called without a name: the scope is the next index of the enclosing one.
    UnnamedCall,
    /// A block called with a name (`layer1: stage(...)`).
    NamedCall,
    /// A named item holding a list or a chain (`features: [...]`).
    NamedItem,
    /// One iteration of a `repeat`/`dense` with `name:`.
    RepeatName,
}

/// What a model is for: decides what `tlc run` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Task {
    /// Image classification: logits over the label set.
    Classify,
    /// Object detection (YOLO decode in `tlc run`).
    Detect,
}

/// Model header from the spec.
#[derive(Clone, Debug, Serialize)]
pub struct ModelMeta {
    /// Model name.
    pub name: String,
    /// Reference implementation whose `state_dict` names the spec follows.
    pub reference: Option<String>,
    /// Selected variant, if the spec has variants.
    pub variant: Option<String>,
    /// Input shape per sample, `[C, H, W]`.
    pub input: Vec<usize>,
    /// Image preprocessing.
    pub preprocess: Preprocess,
    /// Label set: a built-in name (`imagenet`, `coco`) or a list.
    pub labels: Labels,
    /// The pretrained checkpoint the spec names for this variant (`weights:`).
    pub weights: Option<crate::checkpoint::Checkpoint>,
    /// Task.
    pub task: Task,
    /// Node or scope where the classifier starts (cut point for transfer learning): the
    /// feature output is that node's input.
    pub head: Option<String>,
}

/// A label set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Labels {
    /// None given.
    None,
    /// Built-in list by name (`imagenet`, `coco`).
    Builtin(String),
    /// Explicit list.
    List(Vec<String>),
}

/// A compiled model.
#[derive(Clone, Debug)]
pub struct Graph {
    /// Header.
    pub meta: ModelMeta,
    /// Nodes in topological order; edges carry the input slot.
    pub graph: DiGraph<Node, u32>,
    /// The final output node.
    pub output: NodeId,
    /// Named sub-graphs, in creation order.
    pub scopes: Vec<Scope>,
    /// Per scope, sub-modules that `state_dict` lists first (the spec's `order:` items).
    pub param_order: Vec<(String, Vec<String>)>,
}

impl Graph {
    /// Nodes in execution order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.graph.node_indices().map(move |i| (i, &self.graph[i]))
    }
    /// A node by id.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.graph[id]
    }
    /// All parameters in PyTorch `state_dict` order: each module's own tensors first, then its
    /// sub-modules in order of first use (so a class token or layer scale used late still
    /// comes before its siblings' sub-modules, and interleaved branches are grouped).
    pub fn params(&self) -> impl Iterator<Item = &Param> {
        let all: Vec<&Param> = self.graph.node_weights().flat_map(|n| n.params.iter()).collect();
        let parts: Vec<Vec<&str>> = all.iter().map(|p| p.name.split('.').collect()).collect();
        let mut order = Vec::with_capacity(all.len());
        state_dict_order(&parts, (0..all.len()).collect(), 0, &self.param_order, &mut order);
        order.into_iter().map(move |i| all[i])
    }
    /// Total number of parameter elements (including BatchNorm running statistics).
    pub fn param_count(&self) -> usize {
        self.params().map(|p| p.numel()).sum()
    }
    /// Learnable parameter elements (as PyTorch `sum(p.numel() for p in model.parameters())`).
    pub fn trainable_count(&self) -> usize {
        self.params().filter(|p| p.trainable()).map(|p| p.numel()).sum()
    }
    /// Total multiply-accumulates per sample.
    pub fn macs(&self) -> u64 {
        self.graph.node_weights().map(|n| n.macs).sum()
    }
    /// Liveness for a forward pass that frees values early: per node, the index of its last
    /// reader (itself when nothing reads it; `usize::MAX` for the output, which the caller reads).
    pub fn last_use(&self) -> Vec<usize> {
        let mut last = vec![0usize; self.graph.node_count()];
        for (id, node) in self.nodes() {
            last[id.index()] = id.index();
            for inp in &node.inputs {
                last[inp.index()] = last[inp.index()].max(id.index());
            }
        }
        last[self.output.index()] = usize::MAX;
        last
    }
    /// Finds a node by exact name, or else a scope by name (its output node).
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes().find(|(_, n)| n.name == name).map(|(i, _)| i)
            .or_else(|| self.scopes.iter().rev().find(|s| s.name == name).map(|s| s.output))
    }
}

/// Orders parameter indices (names split at dots) as `state_dict`: tensors owned directly by
/// the module at `depth` first, then each sub-module's group: those named by an `order:` of the
/// module first, in that order, the others in order of first appearance.
fn state_dict_order(parts: &[Vec<&str>], idx: Vec<usize>, depth: usize, declared: &[(String, Vec<String>)], out: &mut Vec<usize>) {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for i in idx {
        if parts[i].len() <= depth + 1 {
            out.push(i);
        } else {
            let key = parts[i][depth];
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, g)) => g.push(i),
                None => groups.push((key, vec![i])),
            }
        }
    }
    if let Some(&first) = groups.first().and_then(|(_, g)| g.first()) {
        let scope = parts[first][..depth].join(".");
        if let Some((_, names)) = declared.iter().rev().find(|(s, _)| *s == scope) {
            let rank = |k: &str| names.iter().position(|n| n == k).unwrap_or(names.len());
            groups.sort_by_key(|(k, _)| rank(k));
        }
    }
    for (_, g) in groups {
        state_dict_order(parts, g, depth + 1, declared, out);
    }
}
