//! Inference graph passes: a rewritten *view* of a graph for running only (parameter names,
//! `tlc params` and the original graph are untouched).
//!
//! [`optimize`] applies, in one sweep over the topologically ordered nodes:
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
//! * **buffer plan**: [`Optimized::last_use`] gives, per node of the new graph, the index of
//!   its last reader, so a runtime frees every intermediate right after it.

use crate::ir::{Activation, Graph, Node, NodeId, Op, Param, ParamKind};
use petgraph::graph::DiGraph;

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
    /// What was done.
    pub stats: Stats,
}

fn fusable_act(op: &Op) -> bool {
    matches!(op, Op::Conv { .. } | Op::Linear { .. } | Op::BatchNorm { .. } | Op::Add)
}

/// Runs every inference pass on `g`.
pub fn optimize(g: &Graph) -> Optimized {
    let n = g.graph.node_count();
    let nodes: Vec<&Node> = g.graph.node_weights().collect();
    // rep[i]: the original node whose (rewritten) output carries node i's value.
    let mut rep: Vec<usize> = (0..n).collect();
    // Stage of node i's value within its representative: 0 raw, 1 after a folded BatchNorm,
    // 2 after a fused activation.
    let mut stage: Vec<u8> = vec![0; n];
    let mut folded_into: Vec<Option<(usize, f64)>> = vec![None; n]; // conv -> (bn, eps)
    let mut act: Vec<Option<Activation>> = vec![None; n];
    let mut stats = Stats::default();
    // Readers of each node, after bypassing identities (computed as we go: identities are
    // resolved before their readers are visited since inputs come first).
    let mut readers: Vec<usize> = vec![0; n];
    let out_rep = |rep: &[usize]| rep[g.output.index()];
    // First pass: identities, so that reader counts are on resolved inputs.
    for (i, node) in nodes.iter().enumerate() {
        if matches!(node.op, Op::Dropout { .. } | Op::Identity) && node.inputs.len() == 1 {
            rep[i] = rep[node.inputs[0].index()];
            stats.identities += 1;
            stage[i] = u8::MAX; // resolved below

        }
    }
    let base = rep.clone();
    for (i, node) in nodes.iter().enumerate() {
        if rep[i] != i {
            continue;
        }
        for inp in &node.inputs {
            readers[rep[inp.index()]] += 1;
        }
    }
    let output_rep = out_rep(&rep);
    readers[output_rep] += 1; // the caller reads the output
    for (i, node) in nodes.iter().enumerate() {
        if rep[i] != i || node.inputs.len() != 1 {
            continue;
        }
        let p = base[node.inputs[0].index()];
        match &node.op {
            Op::BatchNorm { eps } => {
                let foldable = match &nodes[p].op {
                    Op::Conv { out, .. } => node.shape.as_ref().is_some_and(|s| s.first() == Some(out)),
                    Op::Linear { out, .. } => node.shape.as_ref().is_some_and(|s| s.len() == 1 && s[0] == *out),
                    _ => false,
                };
                if foldable && rep[p] == p && readers[p] == 1 && folded_into[p].is_none() && act[p].is_none() && p != output_rep {
                    folded_into[p] = Some((i, *eps));
                    rep[i] = p;
                    stage[i] = 1;
                    stats.folded += 1;
                }
            }
            Op::Act(a) => {
                let target = rep[p];
                if fusable_act(&nodes[target].op) && act[target].is_none() && readers[p] == 1 && p != output_rep {
                    act[target] = Some(*a);
                    rep[i] = target;
                    stage[i] = 2;
                    stats.fused += 1;
                }
            }
            _ => {}
        }
    }
    for i in 0..n {
        if stage[i] == u8::MAX {
            stage[i] = stage[nodes[i].inputs[0].index()];
        }
    }
    // Resolve chains (a BatchNorm folded into a conv whose activation was fused, ...).
    for i in 0..n {
        let mut r = rep[i];
        while rep[r] != r {
            r = rep[r];
        }
        rep[i] = r;
    }
    // Liveness from the outputs (the graph output and darknet YOLO heads; the input node
    // always stays).
    let mut live = vec![false; n];
    for o in crate::export::outputs(g) {
        live[rep[o.index()]] = true;
    }
    for i in (0..n).rev() {
        if live[i] && rep[i] == i {
            for inp in &nodes[i].inputs {
                live[rep[inp.index()]] = true;
            }
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        if node.inputs.is_empty() {
            live[i] = true;
        }
    }
    stats.dead = (0..n).filter(|&i| rep[i] == i && !live[i]).count();
    // Residual fusion: `Add(a, b)` (two resolved inputs) where `a`'s value is a conv's (raw or
    // after its folded BatchNorm, no activation) read only by this Add: the conv moves to the
    // Add's place with `b` as a second input. add_conv[j] = (conv, other).
    let mut add_conv: Vec<Option<(usize, usize)>> = vec![None; n];
    let mut moved = vec![false; n];
    for (j, node) in nodes.iter().enumerate() {
        if rep[j] != j || !live[j] || !matches!(node.op, Op::Add) || node.inputs.len() != 2 {
            continue;
        }
        let (a, b) = (node.inputs[0].index(), node.inputs[1].index());
        let cands = [(a, b), (b, a)];
        for (x, y) in cands {
            let c = rep[x];
            // `x` (after identities) is the conv itself or its folded BatchNorm.
            let xb = base[x];
            let only_reader = readers[xb] == 1 && (xb == c || (folded_into[c].is_some_and(|(bn, _)| bn == xb) && readers[c] == 1));
            if matches!(nodes[c].op, Op::Conv { groups: 1, .. })
                && act[c].is_none()
                && only_reader
                && !moved[c]
                && c != rep[y]
                && nodes[c].inputs.len() == 1
                && nodes[c].shape == node.shape
                && node.shape.is_some()
            {
                add_conv[j] = Some((c, rep[y]));
                moved[c] = true;
                stats.residual += 1;
                break;
            }
        }
    }
    // Build the new graph.
    let mut new_id: Vec<Option<NodeId>> = vec![None; n];
    let mut graph: DiGraph<Node, u32> = DiGraph::new();
    let mut folds = Vec::new();
    let mut acts = Vec::new();
    let mut residual = Vec::new();
    for i in 0..n {
        if rep[i] != i || !live[i] || moved[i] {
            continue;
        }
        // A fused residual add emits its conv here (the conv's id stays `None`).
        let (src, extra) = match add_conv[i] {
            Some((c, other)) => (c, Some(other)),
            None => (i, None),
        };
        let node = nodes[src];
        let mut nn = node.clone();
        nn.inputs = node.inputs.iter().map(|x| new_id[rep[x.index()]].expect("inputs come first")).collect();
        if let Some(other) = extra {
            nn.inputs.push(new_id[other].expect("inputs come first"));
        }
        if let Some((bn, eps)) = folded_into[src] {
            let (had_bias, out) = match &mut nn.op {
                Op::Conv { bias, out, .. } | Op::Linear { bias, out } => (std::mem::replace(bias, true), *out),
                _ => unreachable!("only convs and linears fold"),
            };
            if !had_bias {
                nn.params.push(Param { name: format!("{}.bias", nn.name), shape: vec![out], kind: ParamKind::Bias });
            }
            nn.shape = nodes[bn].shape.clone();
            folds.push(Fold { node: NodeId::new(graph.node_count()), bn: nodes[bn].name.clone(), eps, had_bias });
        }
        let inputs = nn.inputs.clone();
        let id = graph.add_node(nn);
        for (slot, x) in inputs.iter().enumerate() {
            graph.add_edge(*x, id, slot as u32);
        }
        acts.push(act[i]);
        residual.push(extra.is_some());
        new_id[i] = Some(id);
    }
    let final_stage = |r: usize| if act[r].is_some() { 2 } else if folded_into[r].is_some() { 1 } else { 0 };
    let map: Vec<Option<NodeId>> = (0..n).map(|i| new_id[rep[i]].filter(|_| stage[i] == final_stage(rep[i]))).collect();
    let output = new_id[rep[g.output.index()]].expect("the output is live");
    let mut last_use = vec![0usize; graph.node_count()];
    for id in graph.node_indices() {
        last_use[id.index()] = id.index();
        for inp in graph[id].inputs.clone() {
            last_use[inp.index()] = last_use[inp.index()].max(id.index());
        }
    }
    last_use[output.index()] = usize::MAX;
    let scopes = g
        .scopes
        .iter()
        .filter_map(|s| map[s.output.index()].map(|o| crate::ir::Scope { name: s.name.clone(), output: o, block: s.block.clone() }))
        .collect();
    let graph = Graph { meta: g.meta.clone(), graph, output, scopes, param_order: g.param_order.clone() };
    Optimized { graph, folds, acts, map, last_use, residual, stats }
}

/// A one-line account of what [`optimize`] did, and the fused chains, for `tlc summary --optimized`.
pub fn describe(o: &Optimized) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let st = o.stats;
    let _ = writeln!(
        s,
        "optimized: {} BatchNorm folded, {} activations fused, {} residual adds fused, {} identities removed, {} dead nodes removed; {} nodes",
        st.folded,
        st.fused,
        st.residual,
        st.identities,
        st.dead,
        o.graph.graph.node_count()
    );
    for (id, n) in o.graph.nodes() {
        let fold = o.folds.iter().find(|f| f.node == id);
        let a = o.acts[id.index()];
        let res = o.residual[id.index()];
        if fold.is_none() && a.is_none() && !res {
            continue;
        }
        let mut line = n.name.clone();
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
