//! Inference graph passes: a rewritten *view* of a graph for running only (parameter names,
//! `tlc params` and the original graph are untouched).
//!
//! [`optimize`] first rewrites channels-last blocks channels-first ([`channels_first`]:
//! ConvNeXt's permute/LayerNorm/linear chains become a channel LayerNorm and 1x1 convs, layer
//! scales folded), then applies, in one sweep over the topologically ordered nodes:
//! * **identity removal**: `Dropout` (including stochastic depth) and `Identity` nodes are
//!   bypassed (their readers read the node's input);
//! * **BatchNorm folding**: a `BatchNorm` whose input is a `Conv` (or a `Linear` with a 1-D
//!   per-sample output) read by nothing else is removed; the conv gets `bias: true` and a
//!   `<conv>.bias` parameter. The fold itself needs the weights: [`Optimized::folds`] lists
//!   `(conv, bn)` pairs so the runtime computes `w * gamma / sqrt(var + eps)` and
//!   `(b - mean) * gamma / sqrt(var + eps) + beta` from the loaded tensors;
//! * **activation fusion**: an `Act` whose input is a `Conv`, `Linear`, `BatchNorm` or `Add`
//!   read by nothing else is removed and recorded in [`Optimized::acts`] for that node;
//! * **dead-node elimination**: nodes no model output depends on are dropped (the outputs are
//!   the graph output and every darknet YOLO head; the input node always stays);
//! * **residual fusion**: an `Add` of two values, one of them a dense conv's (raw or after
//!   its folded BatchNorm, no activation) read by nothing else, becomes that conv moved to the
//!   `Add`'s place with the other operand as a second input ([`Optimized::residual`]); the
//!   `Add`'s activation becomes the conv's;
//! * **input fusion** into dense convs ([`ConvInputs`]): a channel `Concat` read only by the
//!   conv becomes the conv's input *parts* (never built: DenseNet's growing concatenations); an
//!   unfolded `BatchNorm` (with its fused activation) read only by the conv becomes the conv's
//!   *prologue*, applied to the input as it is read (DenseNet's pre-activation); a `Mul` by a
//!   per-channel `[C, 1, 1]` value read only by the conv becomes the conv's *gate*
//!   (squeeze-excitation);
//! * **buffer plan**: [`Optimized::last_use`] gives, per node of the new graph, the index of
//!   its last reader, so a runtime frees every intermediate right after it.

use crate::ir::{Activation, Graph, Node, NodeId, Op, Param, ParamKind};
use petgraph::graph::DiGraph;

pub mod channels_first;
pub mod split;
pub use channels_first::ScaleFold;
pub use split::{batch_split, BatchSplit};

/// One BatchNorm folded into the node before it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fold {
    /// The conv or linear node in the optimized graph.
    pub node: NodeId,
    /// Name of the removed BatchNorm node (its parameters are `<bn>.weight`, ...).
    pub bn: String,
    /// The BatchNorm's epsilon.
    pub eps: f64,
    /// Whether the conv had its own bias before the fold (`<conv>.bias` is then loaded).
    pub had_bias: bool,
}

/// A BatchNorm (and the activation fused into it) applied to a conv's input as it is read.
#[derive(Clone, Debug, PartialEq)]
pub struct Prologue {
    /// Name of the BatchNorm node (its parameters are `<bn>.weight`, ...).
    pub bn: String,
    /// The BatchNorm's epsilon.
    pub eps: f64,
    /// The activation after it.
    pub act: Option<Activation>,
}

/// How a dense conv of the optimized graph reads its inputs: `act(bn(concat(parts))) * gate`
/// (each piece optional), then the convolution, then the residual (last input, see
/// [`Optimized::residual`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ConvInputs {
    /// Inputs `0..parts` are concatenated along channels (1: a plain input).
    pub parts: usize,
    /// The BatchNorm (and activation) on the concatenated input.
    pub prologue: Option<Prologue>,
    /// Whether input `parts` is a per-channel gate (`[C, 1, 1]` per sample).
    pub gate: bool,
}

/// Counts of what the passes did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// BatchNorms folded into a conv or linear.
    pub folded: usize,
    /// Activations fused into the node before them.
    pub fused: usize,
    /// Identity nodes removed.
    pub identities: usize,
    /// Nodes the output does not depend on.
    pub dead: usize,
    /// Residual adds fused into the conv before them.
    pub residual: usize,
    /// Concats, BatchNorms and gates fused into the conv after them.
    pub inputs: usize,
}

/// An optimized view of a graph.
#[derive(Clone, Debug)]
pub struct Optimized {
    /// The rewritten graph (same invariants as any IR graph).
    pub graph: Graph,
    /// BatchNorms to fold, with the conv/linear node (new ids) they fold into.
    pub folds: Vec<Fold>,
    /// Per node of the new graph, the activation applied to its output (fused).
    pub acts: Vec<Option<Activation>>,
    /// Per node of the original graph, the node of the new graph that holds the same value
    /// (`None` when that value no longer exists, e.g. a conv whose BatchNorm was folded).
    pub map: Vec<Option<NodeId>>,
    /// Per node of the new graph, the index of its last reader (`usize::MAX` for the output).
    pub last_use: Vec<usize>,
    /// Per node of the new graph: a conv whose second input is a residual added to its
    /// output before its activation (a conv, possibly with a folded BatchNorm, read only by
    /// an `Add`, moved to the `Add`'s place and taking the `Add`'s activation).
    pub residual: Vec<bool>,
    /// Per node of the new graph: for a dense conv whose inputs were fused, how it reads them.
    pub conv_inputs: Vec<Option<ConvInputs>>,
    /// Layer scales to fold into the conv before them (see [`channels_first`]).
    pub scale_folds: Vec<ScaleFold>,
    /// What was done.
    pub stats: Stats,
}

fn fusable_act(op: &Op) -> bool {
    matches!(op, Op::Conv { .. } | Op::Linear { .. } | Op::BatchNorm { .. } | Op::Add)
}

/// Where a node's value stands within the node that now computes it (its representative).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    /// The representative's own output.
    Raw,
    /// After the BatchNorm folded into the representative.
    Folded,
    /// After the activation fused into the representative.
    Activated,
    /// An identity: the stage of its input (known once the folds and fusions are decided).
    Inherited,
}

/// The passes' decisions about one node of the original graph.
#[derive(Clone, Debug)]
struct Slot {
    /// The original node whose rewritten output carries this node's value.
    rep: usize,
    /// `rep` right after identity removal (before folds and fusions).
    base: usize,
    stage: Stage,
    /// A conv or linear: the BatchNorm folded into it, with its epsilon.
    folded: Option<(usize, f64)>,
    /// The activation fused into this node.
    act: Option<Activation>,
    /// Readers of this node's value (the caller counts as the output's reader).
    readers: usize,
    live: bool,
    /// An `Add` replaced by its conv operand: `(conv, other operand)`.
    residual: Option<(usize, usize)>,
    /// A conv moved to the place of the `Add` it feeds.
    moved: bool,
    /// A dense conv reading fused inputs: how, and the representatives it reads.
    fused_inputs: Option<(ConvInputs, Vec<usize>)>,
    /// A Concat, BatchNorm or gate `Mul` absorbed into the conv that reads it.
    absorbed: bool,
}

/// The passes over one graph, one method per pass.
struct Passes<'g> {
    g: &'g Graph,
    nodes: Vec<&'g Node>,
    slots: Vec<Slot>,
    output_rep: usize,
    stats: Stats,
}

/// Which passes beyond the standard ones (identities, BatchNorm folding, activation and
/// residual fusion, dead nodes) run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    /// The channels-first rewrite of ConvNeXt-style blocks ([`channels_first`]).
    pub channels_first: bool,
    /// Input fusion into dense convs ([`ConvInputs`]).
    pub fuse_inputs: bool,
}

impl Options {
    /// Every pass: the view tlc's own kernels run.
    pub const ALL: Options = Options { channels_first: true, fuse_inputs: true };
    /// Only rewrites whose result standard operator sets (ONNX) express as they are.
    pub const STANDARD: Options = Options { channels_first: false, fuse_inputs: false };
}

/// Runs every inference pass on `g`.
pub fn optimize(g: &Graph) -> Optimized {
    optimize_with(g, Options::ALL)
}

/// Runs the passes `options` selects on `g`.
pub fn optimize_with(g: &Graph, options: Options) -> Optimized {
    let cf = if options.channels_first { channels_first::rewrite(g) } else { channels_first::unchanged(g) };
    let mut p = Passes::new(&cf.graph);
    p.bypass_identities();
    p.count_readers();
    p.fold_and_fuse();
    p.resolve();
    p.mark_live();
    p.fuse_residuals();
    if options.fuse_inputs {
        p.fuse_inputs();
    }
    let mut o = p.build(&cf.relaid);
    o.scale_folds = cf.folds;
    o
}

impl<'g> Passes<'g> {
    fn new(g: &'g Graph) -> Passes<'g> {
        let nodes: Vec<&Node> = g.graph.node_weights().collect();
        let slots = (0..nodes.len())
            .map(|i| Slot { rep: i, base: i, stage: Stage::Raw, folded: None, act: None, readers: 0, live: false, residual: None, moved: false, fused_inputs: None, absorbed: false })
            .collect();
        Passes { g, nodes, slots, output_rep: g.output.index(), stats: Stats::default() }
    }

    fn rep(&self, i: usize) -> usize {
        self.slots[i].rep
    }

    /// `Dropout` and `Identity` nodes: their readers read the node's input.
    fn bypass_identities(&mut self) {
        for (i, node) in self.nodes.iter().enumerate() {
            if matches!(node.op, Op::Dropout { .. } | Op::Identity) && node.inputs.len() == 1 {
                self.slots[i].rep = self.slots[node.inputs[0].index()].rep;
                self.slots[i].stage = Stage::Inherited;
                self.stats.identities += 1;
            }
        }
        for s in &mut self.slots {
            s.base = s.rep;
        }
    }

    /// Readers of each value after identity removal; the caller reads the output.
    fn count_readers(&mut self) {
        for (i, node) in self.nodes.iter().enumerate() {
            if self.rep(i) == i {
                for inp in &node.inputs {
                    let r = self.rep(inp.index());
                    self.slots[r].readers += 1;
                }
            }
        }
        self.output_rep = self.rep(self.g.output.index());
        self.slots[self.output_rep].readers += 1;
    }

    /// BatchNorm folding and activation fusion into the node before them.
    fn fold_and_fuse(&mut self) {
        for (i, node) in self.nodes.iter().enumerate() {
            if self.rep(i) != i || node.inputs.len() != 1 {
                continue;
            }
            let p = self.slots[node.inputs[0].index()].base;
            let single = self.slots[p].readers == 1 && p != self.output_rep;
            match &node.op {
                Op::BatchNorm { eps } => {
                    let foldable = match &self.nodes[p].op {
                        Op::Conv { out, .. } => node.shape.as_ref().is_some_and(|s| s.first() == Some(out)),
                        Op::Linear { out, .. } => node.shape.as_ref().is_some_and(|s| s.len() == 1 && s[0] == *out),
                        _ => false,
                    };
                    let free = self.rep(p) == p && self.slots[p].folded.is_none() && self.slots[p].act.is_none();
                    if foldable && free && single {
                        self.slots[p].folded = Some((i, *eps));
                        self.slots[i].rep = p;
                        self.slots[i].stage = Stage::Folded;
                        self.stats.folded += 1;
                    }
                }
                Op::Act(a) => {
                    let target = self.rep(p);
                    if fusable_act(&self.nodes[target].op) && self.slots[target].act.is_none() && single {
                        self.slots[target].act = Some(*a);
                        self.slots[i].rep = target;
                        self.slots[i].stage = Stage::Activated;
                        self.stats.fused += 1;
                    }
                }
                _ => {}
            }
        }
    }

    /// Identities take their input's stage; representatives are followed to the end of their
    /// chains (a BatchNorm folded into a conv whose activation was fused, ...).
    fn resolve(&mut self) {
        for i in 0..self.nodes.len() {
            if self.slots[i].stage == Stage::Inherited {
                self.slots[i].stage = self.slots[self.nodes[i].inputs[0].index()].stage;
            }
        }
        for i in 0..self.nodes.len() {
            let mut r = self.rep(i);
            while self.rep(r) != r {
                r = self.rep(r);
            }
            self.slots[i].rep = r;
        }
    }

    /// Liveness from the outputs (the graph output and darknet YOLO heads; the input node
    /// always stays).
    fn mark_live(&mut self) {
        for o in crate::export::outputs(self.g) {
            let r = self.rep(o.index());
            self.slots[r].live = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if self.slots[i].live && self.rep(i) == i {
                for inp in &self.nodes[i].inputs {
                    let r = self.rep(inp.index());
                    self.slots[r].live = true;
                }
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.inputs.is_empty() {
                self.slots[i].live = true;
            }
        }
        self.stats.dead = self.slots.iter().enumerate().filter(|(i, s)| s.rep == *i && !s.live).count();
    }

    /// `Add(a, b)` where `a`'s value is a dense conv's (raw or after its folded BatchNorm, no
    /// activation) read only by this Add: the conv moves to the Add's place with `b` as a
    /// second input.
    fn fuse_residuals(&mut self) {
        for (j, node) in self.nodes.iter().enumerate() {
            if self.rep(j) != j || !self.slots[j].live || !matches!(node.op, Op::Add) || node.inputs.len() != 2 {
                continue;
            }
            let (a, b) = (node.inputs[0].index(), node.inputs[1].index());
            for (x, y) in [(a, b), (b, a)] {
                let c = self.rep(x);
                if self.residual_conv(x, c) && c != self.rep(y) && self.nodes[c].shape == node.shape && node.shape.is_some() {
                    self.slots[j].residual = Some((c, self.rep(y)));
                    self.slots[c].moved = true;
                    self.stats.residual += 1;
                    break;
                }
            }
        }
    }

    /// Whether operand `x` of an Add, computed by `c`, is a dense conv's value that only this
    /// Add reads (`x`, after identities, is the conv itself or its folded BatchNorm).
    fn residual_conv(&self, x: usize, c: usize) -> bool {
        let xb = self.slots[x].base;
        let conv = &self.slots[c];
        let only_reader = self.slots[xb].readers == 1 && (xb == c || (conv.folded.is_some_and(|(bn, _)| bn == xb) && conv.readers == 1));
        matches!(self.nodes[c].op, Op::Conv { groups: 1, .. }) && conv.act.is_none() && only_reader && !conv.moved && self.nodes[c].inputs.len() == 1
    }

    /// Input fusions into dense convs (see [`ConvInputs`]), on the reader counts after every
    /// other rewrite (the caller reads the output).
    fn fuse_inputs(&mut self) {
        let n = self.nodes.len();
        let mut readers = vec![0usize; n];
        for (i, node) in self.nodes.iter().enumerate() {
            if self.rep(i) == i && self.slots[i].live {
                node.inputs.iter().for_each(|x| readers[self.rep(x.index())] += 1);
            }
        }
        readers[self.output_rep] += 2;
        for c in 0..n {
            let node = self.nodes[c];
            if self.rep(c) != c || !self.slots[c].live || node.inputs.len() != 1 || !matches!(node.op, Op::Conv { groups: 1, .. }) {
                continue;
            }
            let x = self.rep(node.inputs[0].index());
            if let Some(fused) = self.conv_input_fusion(x, &readers) {
                self.slots[c].fused_inputs = Some(fused);
            }
        }
        self.stats.inputs = self.slots.iter().filter(|s| s.absorbed).count();
    }

    /// How a conv reading `x` can read it fused: a gate or a BatchNorm prologue on `x`, then a
    /// concat below it. Marks the absorbed nodes.
    fn conv_input_fusion(&mut self, x: usize, readers: &[usize]) -> Option<(ConvInputs, Vec<usize>)> {
        let only = |v: usize| readers[v] == 1;
        let nodes = &self.nodes;
        let mut ci = ConvInputs { parts: 1, prologue: None, gate: false };
        let (mut src, mut gate) = (x, None);
        if only(x) && matches!(nodes[x].op, Op::Mul) && nodes[x].inputs.len() == 2 {
            let (a, b) = (nodes[x].inputs[0].index(), nodes[x].inputs[1].index());
            let per_channel = |v: usize| nodes[v].shape.as_ref().is_some_and(|s| s.len() == 3 && s[1] == 1 && s[2] == 1);
            let whole = |v: usize| nodes[v].shape.is_some() && nodes[v].shape == nodes[x].shape;
            let pair = if per_channel(b) && whole(a) { Some((a, b)) } else if per_channel(a) && whole(b) { Some((b, a)) } else { None };
            let same_channels = |(d, gt): &(usize, usize)| nodes[*gt].shape.as_ref().map(|s| s[0]) == nodes[*d].shape.as_ref().map(|s| s[0]);
            if let Some((data, gt)) = pair.filter(same_channels) {
                self.slots[x].absorbed = true;
                src = self.rep(data);
                gate = Some(self.rep(gt));
                ci.gate = true;
            }
        } else if let Op::BatchNorm { eps } = nodes[x].op {
            if only(x) && nodes[x].inputs.len() == 1 {
                self.slots[x].absorbed = true;
                ci.prologue = Some(Prologue { bn: nodes[x].name.clone(), eps, act: self.slots[x].act });
                src = self.rep(nodes[x].inputs[0].index());
            }
        }
        let mut ins = vec![src];
        if only(src) && matches!(nodes[src].op, Op::Concat { dim: 1 }) && nodes[src].inputs.len() > 1 {
            self.slots[src].absorbed = true;
            ins = nodes[src].inputs.iter().map(|v| self.rep(v.index())).collect();
            ci.parts = ins.len();
        }
        if ci.parts == 1 && ci.prologue.is_none() && !ci.gate {
            return None;
        }
        ins.extend(gate);
        Some((ci, ins))
    }

    /// The new graph, its folds, fused activations, residual flags and fused inputs, and the
    /// node map (values `relaid` by the channels-first rewrite are not offered).
    fn build(self, relaid: &[bool]) -> Optimized {
        let n = self.nodes.len();
        let mut new_id: Vec<Option<NodeId>> = vec![None; n];
        let mut graph: DiGraph<Node, u32> = DiGraph::new();
        let (mut folds, mut acts, mut residual, mut conv_inputs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let s = &self.slots[i];
            if s.rep != i || !s.live || s.moved || s.absorbed {
                continue;
            }
            // A fused residual add emits its conv here (the conv's id stays `None`).
            let (src, extra) = match s.residual {
                Some((c, other)) => (c, Some(other)),
                None => (i, None),
            };
            let mut nn = self.nodes[src].clone();
            let fused = self.slots[src].fused_inputs.as_ref();
            nn.inputs = match fused {
                Some((_, ins)) => ins.iter().map(|&x| new_id[x].expect("inputs come first")).collect(),
                None => nn.inputs.iter().map(|x| new_id[self.rep(x.index())].expect("inputs come first")).collect(),
            };
            if let Some(other) = extra {
                nn.inputs.push(new_id[other].expect("inputs come first"));
            }
            if let Some((bn, eps)) = self.slots[src].folded {
                let had_bias = fold_into(&mut nn, self.nodes[bn]);
                folds.push(Fold { node: NodeId::new(graph.node_count()), bn: self.nodes[bn].name.clone(), eps, had_bias });
            }
            let inputs = nn.inputs.clone();
            let id = graph.add_node(nn);
            for (slot, x) in inputs.iter().enumerate() {
                graph.add_edge(*x, id, slot as u32);
            }
            acts.push(s.act);
            residual.push(extra.is_some());
            conv_inputs.push(fused.map(|(ci, _)| ci.clone()));
            new_id[i] = Some(id);
        }
        let final_stage = |r: &Slot| if r.act.is_some() { Stage::Activated } else if r.folded.is_some() { Stage::Folded } else { Stage::Raw };
        let offered = |(i, s): (usize, &Slot)| new_id[s.rep].filter(|_| s.stage == final_stage(&self.slots[s.rep]) && !relaid[i]);
        let map: Vec<Option<NodeId>> = self.slots.iter().enumerate().map(offered).collect();
        let output = new_id[self.rep(self.g.output.index())].expect("the output is live");
        let g = self.g;
        let scopes = g
            .scopes
            .iter()
            .filter_map(|s| map[s.output.index()].map(|o| crate::ir::Scope { output: o, ..s.clone() }))
            .collect();
        let graph = Graph { meta: g.meta.clone(), graph, output, scopes, param_order: g.param_order.clone() };
        let last_use = graph.last_use();
        Optimized { graph, folds, acts, map, last_use, residual, conv_inputs, scale_folds: Vec::new(), stats: self.stats }
    }
}

/// Makes `nn` (a conv or linear) carry the folded BatchNorm `bn`: a bias (added when it had
/// none) and the BatchNorm's output shape. Returns whether it had its own bias.
fn fold_into(nn: &mut Node, bn: &Node) -> bool {
    let (had_bias, out) = match &mut nn.op {
        Op::Conv { bias, out, .. } | Op::Linear { bias, out } => (std::mem::replace(bias, true), *out),
        _ => unreachable!("only convs and linears fold"),
    };
    if !had_bias {
        nn.params.push(Param { name: format!("{}.bias", nn.name), shape: vec![out], kind: ParamKind::Bias });
    }
    nn.shape = bn.shape.clone();
    had_bias
}

/// A one-line account of what [`optimize`] did, and the fused chains, for `tlc summary --optimized`.
pub fn describe(o: &Optimized) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let st = o.stats;
    let _ = writeln!(
        s,
        "optimized: {} BatchNorm folded, {} activations fused, {} residual adds fused, {} conv inputs fused, {} identities removed, {} dead nodes removed; {} nodes",
        st.folded,
        st.fused,
        st.residual,
        st.inputs,
        st.identities,
        st.dead,
        o.graph.graph.node_count()
    );
    for (id, n) in o.graph.nodes() {
        let fold = o.folds.iter().find(|f| f.node == id);
        let a = o.acts[id.index()];
        let res = o.residual[id.index()];
        let ci = o.conv_inputs[id.index()].as_ref();
        if fold.is_none() && a.is_none() && !res && ci.is_none() {
            continue;
        }
        let mut line = n.name.clone();
        if let Some(ci) = ci {
            if ci.parts > 1 {
                let _ = write!(line, " <- concat of {} parts", ci.parts);
            }
            if let Some(p) = &ci.prologue {
                let _ = write!(line, " <- {}{}", p.bn, p.act.map_or(String::new(), |a| format!(" + {a:?}")));
            }
            if ci.gate {
                let _ = write!(line, " <- gate");
            }
        }
        if let Some(f) = fold {
            let _ = write!(line, " + {} (folded)", f.bn);
        }
        if res {
            let _ = write!(line, " + residual");
        }
        if let Some(a) = a {
            let _ = write!(line, " + {a:?}");
        }
        let _ = writeln!(s, "  {line}");
    }
    s
}
