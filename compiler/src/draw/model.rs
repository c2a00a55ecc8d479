//! What a picture shows, before any geometry: the tree of block instances (from the nodes'
//! expansion traces, as `tlc dot --depth` collapses them) and, per instance, its local graph of
//! items (its own nodes, its child instances, ports where values cross its border).

use crate::ir::{Graph, NodeId};
use crate::span::Span;
use std::collections::{HashMap, HashSet};

/// One block instance (or the whole graph, the root at index 0).
#[derive(Clone, Debug)]
pub struct Scope {
    /// Dotted instance path (`layer1.0`); empty for the root.
    pub path: String,
    /// Block name (`bottleneck`); the model name for the root.
    pub block: String,
    /// Enclosing instance (`None` for the root).
    pub parent: Option<usize>,
    /// 0 for the root, 1 for top-level block instances, and so on.
    pub level: usize,
    /// Child instances, in order of their first node.
    pub children: Vec<usize>,
    /// Nodes directly inside (not inside a child instance).
    pub nodes: Vec<NodeId>,
    /// Smallest node index in the subtree (the instance's place in execution order).
    pub first: usize,
    /// The block call in the spec (`None` for the root).
    pub span: Option<Span>,
    /// Every node of the subtree, in execution order.
    pub members: Vec<NodeId>,
    /// Parameter elements of the subtree.
    pub params: usize,
    /// MACs of the subtree.
    pub macs: u64,
}

/// The instance tree of a graph.
#[derive(Clone, Debug)]
pub struct Tree {
    /// All instances; index 0 is the root.
    pub scopes: Vec<Scope>,
    /// Innermost instance of each node (by node index).
    pub scope_of: Vec<usize>,
}

/// What an item of a local graph stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ItemKind {
    /// The instance's title (pinned first in the first rank).
    Title,
    /// An IR node directly inside the instance.
    Node(NodeId),
    /// A child instance: one box when collapsed, a cluster when expanded.
    Child(usize),
    /// Where the value of an outside node enters (top border).
    InPort(NodeId),
    /// Where the value of an inside node leaves (bottom border).
    OutPort(NodeId),
}

/// An edge between two items of one local graph, carrying the value of IR node `value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LocalEdge {
    /// Source item.
    pub from: usize,
    /// Target item.
    pub to: usize,
    /// The IR node whose output the edge carries.
    pub value: NodeId,
}

/// The items and edges of one instance, independent of which children are expanded.
#[derive(Clone, Debug)]
pub struct LocalGraph {
    /// Items; the title first.
    pub items: Vec<ItemKind>,
    /// Deduplicated edges.
    pub edges: Vec<LocalEdge>,
}

impl Tree {
    /// Builds the instance tree from the nodes' traces.
    pub fn new(g: &Graph) -> Tree {
        let root = Scope { path: String::new(), block: g.meta.name.clone(), parent: None, level: 0, children: vec![], nodes: vec![], first: 0, span: None, members: vec![], params: 0, macs: 0 };
        let mut scopes = vec![root];
        let mut index: HashMap<(usize, String), usize> = HashMap::new();
        let mut scope_of = Vec::with_capacity(g.graph.node_count());
        for (id, n) in g.nodes() {
            let mut cur = 0;
            for f in &n.trace {
                let key = (cur, f.path.clone());
                cur = match index.get(&key) {
                    Some(&s) => s,
                    None => {
                        let s = scopes.len();
                        let level = scopes[cur].level + 1;
                        scopes.push(Scope { path: f.path.clone(), block: f.block.clone(), parent: Some(cur), level, children: vec![], nodes: vec![], first: id.index(), span: Some(f.span), members: vec![], params: 0, macs: 0 });
                        scopes[cur].children.push(s);
                        index.insert(key, s);
                        s
                    }
                };
            }
            scopes[cur].nodes.push(id);
            scope_of.push(cur);
            let params: usize = n.params.iter().map(|p| p.numel()).sum();
            let mut up = Some(cur);
            while let Some(s) = up {
                let sc = &mut scopes[s];
                sc.members.push(id);
                sc.params += params;
                sc.macs += n.macs;
                up = sc.parent;
            }
        }
        Tree { scopes, scope_of }
    }

    /// Instances from `s` up to the root, `s` first.
    pub fn chain(&self, mut s: usize) -> Vec<usize> {
        let mut out = vec![s];
        while let Some(p) = self.scopes[s].parent {
            out.push(p);
            s = p;
        }
        out
    }

    /// The child of `s` whose subtree holds scope `inner` (`Some(s)` itself when equal), or
    /// `None` when `inner` is outside `s`.
    fn step_towards(&self, s: usize, inner: usize) -> Option<usize> {
        let mut cur = inner;
        loop {
            let parent = self.scopes[cur].parent;
            if cur == s {
                return Some(s);
            }
            if parent == Some(s) {
                return Some(cur);
            }
            cur = parent?;
        }
    }

    /// The item kind standing for node `n` inside instance `s`, or `None` when `n` is outside.
    pub fn item_for(&self, s: usize, n: NodeId) -> Option<ItemKind> {
        let inner = self.scope_of[n.index()];
        match self.step_towards(s, inner)? {
            c if c == s => Some(ItemKind::Node(n)),
            c => Some(ItemKind::Child(c)),
        }
    }

    /// Whether instance `inner` is `s` or inside it.
    pub fn contains(&self, s: usize, inner: usize) -> bool {
        self.step_towards(s, inner).is_some()
    }

    /// The local graph of instance `s`: its nodes and children in execution order, ports for
    /// values crossing its border, and the edges between them.
    pub fn local(&self, g: &Graph, s: usize) -> LocalGraph {
        let mut items = vec![ItemKind::Title];
        let mut members: Vec<(usize, ItemKind)> = self.scopes[s].nodes.iter().map(|&n| (n.index(), ItemKind::Node(n))).collect();
        members.extend(self.scopes[s].children.iter().map(|&c| (self.scopes[c].first, ItemKind::Child(c))));
        members.sort_by_key(|m| m.0);
        items.extend(members.into_iter().map(|m| m.1));
        let mut slot: HashMap<ItemKind, usize> = items.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        let mut edges: Vec<LocalEdge> = Vec::new();
        let mut seen: HashSet<LocalEdge> = HashSet::new();
        // Edges touching the subtree, in the order of their consumers and input slots.
        let mut pairs: Vec<(NodeId, usize, NodeId)> = Vec::new();
        for &v in &self.scopes[s].members {
            pairs.extend(g.node(v).inputs.iter().enumerate().map(|(slot, &u)| (v, slot, u)));
            for w in g.graph.neighbors_directed(v, petgraph::Direction::Outgoing) {
                if !self.contains(s, self.scope_of[w.index()]) {
                    pairs.extend(g.node(w).inputs.iter().enumerate().filter(|(_, &u)| u == v).map(|(slot, &u)| (w, slot, u)));
                }
            }
        }
        pairs.sort_by_key(|&(v, slot, _)| (v.index(), slot));
        pairs.dedup();
        for (v, _, u) in pairs {
            {
                let (a, b) = match (self.item_for(s, u), self.item_for(s, v)) {
                    (None, None) => continue,
                    (Some(a), Some(b)) => (a, b),
                    (None, Some(b)) => (ItemKind::InPort(u), b),
                    (Some(a), None) => (a, ItemKind::OutPort(u)),
                };
                if a == b {
                    continue;
                }
                let from = *slot.entry(a).or_insert_with(|| {
                    items.push(a);
                    items.len() - 1
                });
                let to = *slot.entry(b).or_insert_with(|| {
                    items.push(b);
                    items.len() - 1
                });
                let e = LocalEdge { from, to, value: u };
                if seen.insert(e) {
                    edges.push(e);
                }
            }
        }
        LocalGraph { items, edges }
    }
}
