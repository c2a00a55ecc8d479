//! Channels-last blocks rewritten channels-first (ConvNeXt): `Permute[0, 2, 3, 1]` ->
//! `LayerNorm` (last dim) -> `Linear` -> [`Act`] -> `Linear` -> `Permute[0, 3, 1, 2]` on an
//! NCHW map, every intermediate read only by the next, is the same computation as a channel
//! `LayerNorm` and two 1x1 convolutions on the map itself: the permutes become identities,
//! the linears convs (their `[out, in]` weights are `[out, in, 1, 1]` ones), and a following
//! per-channel `Scale` (layer scale) is folded into the second conv. The node set and ids are
//! unchanged; only ops and shapes of the chain's nodes change.

use crate::ir::{Graph, NodeId, NormAxis, Op, Padding};

/// A per-channel `Scale` folded into the conv before it: the conv's weights and bias are
/// multiplied by the scale tensor (named after the `Scale` node) at load time.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleFold {
    /// The conv (a rewritten linear).
    pub conv: String,
    /// The scale tensor's name (the `Scale` node's).
    pub scale: String,
}

/// What [`rewrite`] did: the new graph, the scale folds and, per node, whether its value's
/// layout changed (so it no longer equals the reference's value).
pub struct ChannelsFirst {
    /// The rewritten graph (same nodes and ids).
    pub graph: Graph,
    /// Layer scales folded into the conv before them.
    pub folds: Vec<ScaleFold>,
    /// Per node: its value is now channels-first where the reference's is channels-last.
    pub relaid: Vec<bool>,
}

/// `g` as it is: no chain rewritten.
pub fn unchanged(g: &Graph) -> ChannelsFirst {
    ChannelsFirst { graph: g.clone(), folds: Vec::new(), relaid: vec![false; g.graph.node_count()] }
}

/// Rewrites every matching chain of `g` (see the module docs).
pub fn rewrite(g: &Graph) -> ChannelsFirst {
    let mut graph = g.clone();
    let n = g.graph.node_count();
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (id, node) in g.nodes() {
        for i in &node.inputs {
            readers[i.index()].push(id.index());
        }
    }
    readers[g.output.index()].push(usize::MAX);
    let mut folds = Vec::new();
    let mut relaid = vec![false; n];
    for (id, _) in g.nodes() {
        if let Some(chain) = chain_at(g, &readers, id.index()) {
            apply(&mut graph, &chain, &mut folds);
            for i in chain.nodes() {
                relaid[i] = true;
            }
        }
    }
    ChannelsFirst { graph, folds, relaid }
}

/// The nodes of one chain: permute, norm, first linear, optional activation, second linear,
/// permute back, optional scale; and the map's `[C, H, W]`.
struct Chain {
    p1: usize,
    ln: usize,
    l1: usize,
    act: Option<usize>,
    l2: usize,
    p2: usize,
    scale: Option<usize>,
    chw: [usize; 3],
    /// Width of the first linear, and whether each linear has a bias.
    hidden: usize,
    bias: [bool; 2],
}

impl Chain {
    fn nodes(&self) -> Vec<usize> {
        [Some(self.p1), Some(self.ln), Some(self.l1), self.act, Some(self.l2), Some(self.p2), self.scale].into_iter().flatten().collect()
    }
}

fn chain_at(g: &Graph, readers: &[Vec<usize>], p1: usize) -> Option<Chain> {
    let node = |i: usize| g.node(NodeId::new(i));
    let only = |i: usize| (readers[i].len() == 1 && readers[i][0] != usize::MAX).then(|| readers[i][0]);
    if !matches!(&node(p1).op, Op::Permute { perm } if perm[..] == [0, 2, 3, 1]) || node(p1).inputs.len() != 1 {
        return None;
    }
    let chw = node(node(p1).inputs[0].index()).shape.clone()?;
    let chw: [usize; 3] = chw.try_into().ok()?;
    let ln = only(p1)?;
    if !matches!(node(ln).op, Op::LayerNorm { axis: NormAxis::Last, .. }) {
        return None;
    }
    let l1 = only(ln)?;
    let Op::Linear { out: hidden, bias: b1 } = node(l1).op else { return None };
    let mut next = only(l1)?;
    let act = matches!(node(next).op, Op::Act(_)).then_some(next);
    if act.is_some() {
        next = only(next)?;
    }
    let l2 = next;
    let b2 = match node(l2).op {
        Op::Linear { out, bias } if out == chw[0] => bias,
        _ => return None,
    };
    let p2 = only(l2)?;
    if !matches!(&node(p2).op, Op::Permute { perm } if perm[..] == [0, 3, 1, 2]) {
        return None;
    }
    let scale = only(p2).filter(|&s| matches!(&node(s).op, Op::Scale { shape } if shape[..] == [chw[0], 1, 1]));
    Some(Chain { p1, ln, l1, act, l2, p2, scale, chw, hidden, bias: [b1, b2] })
}

fn apply(graph: &mut Graph, c: &Chain, folds: &mut Vec<ScaleFold>) {
    let [ch, h, w] = c.chw;
    let eps = match graph.graph[NodeId::new(c.ln)].op {
        Op::LayerNorm { eps, .. } => eps,
        _ => 1e-6,
    };
    let conv = |out: usize, bias: bool| Op::Conv { out, kernel: [1, 1], stride: [1, 1], padding: Padding::Fixed([0; 4]), dilation: [1, 1], groups: 1, bias };
    let edits = [
        (Some(c.p1), Some(Op::Identity), ch),
        (Some(c.ln), Some(Op::LayerNorm { eps, axis: NormAxis::Channels }), ch),
        (Some(c.l1), Some(conv(c.hidden, c.bias[0])), c.hidden),
        (c.act, None, c.hidden),
        (Some(c.l2), Some(conv(ch, c.bias[1])), ch),
        (Some(c.p2), Some(Op::Identity), ch),
    ];
    for (i, op, channels) in edits {
        let Some(i) = i else { continue };
        let node = &mut graph.graph[NodeId::new(i)];
        if let Some(op) = op {
            node.op = op;
        }
        node.shape = Some(vec![channels, h, w]);
        // Linear weights `[out, in]` are the conv's `[out, in, 1, 1]`.
        for p in node.params.iter_mut().filter(|p| p.shape.len() == 2) {
            p.shape = vec![p.shape[0], p.shape[1], 1, 1];
        }
    }
    if let Some(s) = c.scale {
        let conv = graph.graph[NodeId::new(c.l2)].name.clone();
        let node = &mut graph.graph[NodeId::new(s)];
        folds.push(ScaleFold { conv, scale: node.name.clone() });
        node.op = Op::Identity;
        node.params.clear();
    }
}
