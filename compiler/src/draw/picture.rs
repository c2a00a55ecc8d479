//! Geometry of a picture. Each expanded instance is laid out on its own (children first, so an
//! expanded child is one big item of known size with entry and exit ports on its border), then
//! the instances are placed inside each other. Coordinates are computed on the abstract axes of
//! [`layout`](super::layout) and turned to screen axes at the end.

use super::layout::{self, Item, Layout, Place, Slot, Spacing};
use super::model::{ItemKind, LocalGraph, Tree};
use super::style::{self, BoxText, Metrics};
use super::{Direction, DrawOptions};
use crate::emit::human;
use crate::ir::{Graph, NodeId};
use std::collections::BTreeSet;

/// A rectangle in picture coordinates (y down).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    /// Left.
    pub x: f64,
    /// Top.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

/// A tensor-shape label beside the start of a box's outgoing edges.
#[derive(Clone, Debug)]
pub struct LabelShape {
    /// Where the text sits.
    pub rect: Rect,
    /// The text.
    pub text: String,
}

/// A box: one IR node, or one collapsed block instance.
#[derive(Clone, Debug)]
pub struct BoxShape {
    /// `n<node index>` or `s<instance index>`.
    pub id: String,
    /// The box.
    pub rect: Rect,
    /// Its text and colour.
    pub text: BoxText,
    /// The shape label of its output, if shown.
    pub label: Option<LabelShape>,
    /// The IR nodes it stands for.
    pub nodes: Vec<NodeId>,
}

/// The frame of an expanded block instance.
#[derive(Clone, Debug)]
pub struct ClusterShape {
    /// Instance index.
    pub scope: usize,
    /// The frame.
    pub rect: Rect,
    /// Title text.
    pub title: String,
    /// Top-left corner of the title.
    pub title_at: (f64, f64),
    /// Nesting level (1 for top-level instances).
    pub level: usize,
}

/// One step of an edge path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Seg {
    /// Start point.
    Move(f64, f64),
    /// Straight line to a point.
    Line(f64, f64),
    /// Cubic curve: two control points, then the end point.
    Curve(f64, f64, f64, f64, f64, f64),
}

impl Seg {
    /// The point a segment ends at.
    pub fn end(&self) -> (f64, f64) {
        match *self {
            Seg::Move(x, y) | Seg::Line(x, y) | Seg::Curve(_, _, _, _, x, y) => (x, y),
        }
    }
}

/// What an edge end touches.
#[derive(Clone, Debug, PartialEq)]
pub enum Attach {
    /// A box, by id.
    Box(String),
    /// The frame of an expanded instance.
    Cluster(usize),
}

/// An edge drawn inside one instance.
#[derive(Clone, Debug)]
pub struct EdgeShape {
    /// Instance whose layout routed it.
    pub scope: usize,
    /// Path from source to target.
    pub path: Vec<Seg>,
    /// Where it starts.
    pub from: Attach,
    /// Where it ends.
    pub to: Attach,
    /// Ends in an arrowhead (edges ending at a frame continue inside it and have none).
    pub arrow: bool,
}

/// A whole picture.
#[derive(Clone, Debug)]
pub struct Picture {
    /// Width in pixels.
    pub width: f64,
    /// Height in pixels.
    pub height: f64,
    /// Model title and its top-left corner.
    pub title: (String, f64, f64),
    /// Frames, outer ones first.
    pub clusters: Vec<ClusterShape>,
    /// Edges.
    pub edges: Vec<EdgeShape>,
    /// Boxes.
    pub boxes: Vec<BoxShape>,
}

/// What an item of a placed instance looks like.
#[derive(Clone, Debug)]
pub enum Content {
    /// The instance title (text, width).
    Title(String, f64),
    /// A box and its shape label.
    Box(BoxText, Option<(String, f64)>),
    /// An expanded child instance.
    Cluster,
    /// An entry or exit port.
    Port,
}

/// The room an item takes in its rank, on the abstract axes.
#[derive(Clone, Debug)]
pub struct Foot {
    /// Across-axis extent before the anchor.
    pub before: f64,
    /// Across-axis extent after the anchor.
    pub after: f64,
    /// Along-axis extent.
    pub along: f64,
    /// Along-axis offset (from the rank's start) where outgoing edges leave.
    pub exit: f64,
    /// Along-axis offset where incoming edges end.
    pub entry: f64,
    /// What it is.
    pub content: Content,
}

/// One instance laid out with its children at their current sizes.
#[derive(Clone, Debug)]
pub struct Placed {
    /// Room of each item of the local graph.
    pub feet: Vec<Foot>,
    /// Across-axis port offsets of each local edge (source side, target side).
    pub ports: Vec<(f64, f64)>,
    /// Ranks, order and anchors.
    pub layout: Layout,
    /// Start and extent of each rank on the along axis, from the interior's start.
    pub bands: Vec<(f64, f64)>,
    /// Frame size: across, along.
    pub size: (f64, f64),
    /// Where the interior starts in the frame: across, along.
    pub inset: (f64, f64),
    /// Entry ports: value node and across offset from the frame's middle.
    pub in_ports: Vec<(NodeId, f64)>,
    /// Exit ports likewise.
    pub out_ports: Vec<(NodeId, f64)>,
}

/// Lays out the instances of one graph for one set of expanded instances.
pub struct Composer<'a> {
    /// The graph.
    pub g: &'a Graph,
    /// Its instance tree.
    pub tree: Tree,
    /// Local graph of each instance.
    pub locals: Vec<LocalGraph>,
    /// Sizes and gaps.
    pub m: Metrics,
    /// Left-to-right ranks.
    pub lr: bool,
    /// Shape labels on edges.
    pub shapes: bool,
    /// Which instances are expanded (the root always is).
    pub expanded: Vec<bool>,
    /// Placement of each instance, once computed.
    pub placed: Vec<Option<Placed>>,
}

impl<'a> Composer<'a> {
    /// Prepares a graph: instances at a level below `opts.depth` are expanded.
    pub fn new(g: &'a Graph, opts: &DrawOptions) -> Composer<'a> {
        let tree = Tree::new(g);
        let locals = (0..tree.scopes.len()).map(|s| tree.local(g, s)).collect();
        let expanded = tree.scopes.iter().map(|s| s.level < opts.depth.max(1)).collect();
        let lr = opts.direction == Direction::LeftRight;
        let placed = vec![None; tree.scopes.len()];
        Composer { g, tree, locals, m: style::metrics(lr), lr, shapes: opts.shapes, expanded, placed }
    }

    /// Places the expanded instances (every instance with `all`), innermost first.
    pub fn place_scopes(&mut self, all: bool) {
        for s in (0..self.tree.scopes.len()).rev() {
            if all || self.expanded[s] {
                let p = self.place(s);
                self.placed[s] = Some(p);
            }
        }
    }

    fn child_placed(&self, c: usize) -> Option<&Placed> {
        if self.expanded[c] {
            self.placed[c].as_ref()
        } else {
            None
        }
    }

    /// Whether the title of instance `s` sits in the frame's margin (left-to-right pictures,
    /// and the model title) rather than first in the first rank (frames top to bottom, where
    /// entry edges come through the top margin).
    pub fn title_in_inset(&self, s: usize) -> bool {
        self.lr || s == 0
    }

    /// Title of an instance: the model line for the root, `path · block` otherwise.
    pub fn title(&self, s: usize) -> String {
        let sc = &self.tree.scopes[s];
        match sc.parent {
            None => format!("{} · {} params · {} MACs", sc.block, human(self.g.param_count() as u64), human(self.g.macs())),
            Some(p) => format!("{} · {}", style::relative(&sc.path, &self.tree.scopes[p].path), sc.block),
        }
    }

    /// Text of the shape label of each item of instance `s` (the distinct shapes it sends).
    pub fn label_texts(&self, s: usize) -> Vec<Option<String>> {
        let local = &self.locals[s];
        let mut shapes: Vec<BTreeSet<String>> = vec![BTreeSet::new(); local.items.len()];
        if self.shapes {
            for e in &local.edges {
                shapes[e.from].insert(style::shape_label(&self.g.node(e.value).shape));
            }
        }
        shapes.into_iter().map(|set| (!set.is_empty()).then(|| set.into_iter().collect::<Vec<_>>().join(" | "))).collect()
    }

    /// The footprint of a box with an optional label.
    fn box_foot(&self, b: BoxText, label: Option<String>) -> Foot {
        let m = &self.m;
        let lh = (m.label_size * 1.25).ceil();
        let label = label.map(|t| {
            let w = style::text_width(&t, m.label_size);
            (t, w)
        });
        let lw = label.as_ref().map(|l| l.1);
        let (before, after, along, exit) = match (self.lr, lw) {
            (false, None) => (b.w / 2.0, b.w / 2.0, b.h, b.h),
            (false, Some(lw)) => (b.w / 2.0, (b.w / 2.0).max(4.0 + lw), b.h + m.label_gap + lh, b.h),
            (true, None) => (b.h / 2.0, b.h / 2.0, b.w, b.w),
            (true, Some(lw)) => ((b.h / 2.0).max(lh + 3.0), b.h / 2.0, b.w + m.label_gap + lw + 2.0, b.w),
        };
        Foot { before, after, along, exit, entry: 0.0, content: Content::Box(b, label) }
    }

    /// The footprint of each item of instance `s`.
    fn feet(&self, s: usize) -> Vec<Foot> {
        let m = &self.m;
        let parent = self.tree.scopes[s].path.as_str();
        let point = |content| Foot { before: 0.0, after: 0.0, along: 0.0, exit: 0.0, entry: 0.0, content };
        let mut labels = self.label_texts(s);
        let items = &self.locals[s].items;
        items
            .iter()
            .enumerate()
            .map(|(i, kind)| match *kind {
                ItemKind::Title => {
                    let t = self.title(s);
                    let w = style::text_width(&t, m.name_size);
                    match self.title_in_inset(s) {
                        false => Foot { before: 0.0, after: w, along: (m.name_size * 1.3).ceil(), exit: 0.0, entry: 0.0, content: Content::Title(t, w) },
                        true => point(Content::Title(t, w)),
                    }
                }
                ItemKind::Node(n) => self.box_foot(style::node_box(self.g.node(n), parent, m), labels[i].take()),
                ItemKind::Child(c) => match self.child_placed(c) {
                    Some(p) => Foot { before: p.size.0 / 2.0, after: p.size.0 / 2.0, along: p.size.1, exit: p.size.1, entry: 0.0, content: Content::Cluster },
                    None => self.collapsed_foot(s, c, labels[i].take()),
                },
                ItemKind::InPort(_) | ItemKind::OutPort(_) => point(Content::Port),
            })
            .collect()
    }

    /// The footprint of child `c` of instance `s` drawn as one box with shape label `label`.
    pub fn collapsed_foot(&self, s: usize, c: usize, label: Option<String>) -> Foot {
        let sc = &self.tree.scopes[c];
        let b = style::block_box(&sc.path, &self.tree.scopes[s].path, &sc.block, sc.params, &self.m);
        self.box_foot(b, label)
    }

    /// Lays out instance `s` (its expanded children must be placed already).
    pub fn place(&self, s: usize) -> Placed {
        let m = self.m;
        let local = &self.locals[s];
        let mut feet = self.feet(s);
        let port_of = |kind: ItemKind, value: NodeId, exit: bool| match kind {
            ItemKind::Child(c) => self.child_placed(c).map(|p| if exit { &p.out_ports } else { &p.in_ports }).and_then(|l| l.iter().find(|q| q.0 == value)).map(|q| q.1).unwrap_or(0.0),
            _ => 0.0,
        };
        let ports: Vec<(f64, f64)> = local.edges.iter().map(|e| (port_of(local.items[e.from], e.value, true), port_of(local.items[e.to], e.value, false))).collect();
        let items: Vec<Item> = local
            .items
            .iter()
            .zip(&feet)
            .map(|(kind, f)| {
                let (place, order) = match *kind {
                    ItemKind::Title | ItemKind::InPort(_) => (Place::First, 0),
                    ItemKind::OutPort(_) => (Place::Last, usize::MAX),
                    ItemKind::Node(n) => (Place::Free, n.index() + 1),
                    ItemKind::Child(c) => (Place::Free, self.tree.scopes[c].first + 1),
                };
                Item { before: f.before, after: f.after, place, pinned: *kind == ItemKind::Title, order }
            })
            .collect();
        let edges: Vec<layout::Edge> = local.edges.iter().zip(&ports).map(|(e, p)| layout::Edge { from: e.from, to: e.to, from_port: p.0, to_port: p.1 }).collect();
        let lay = layout::layout(&items, &edges, Spacing { item_gap: m.item_gap, point_gap: m.point_gap });
        let extents: Vec<f64> = lay.ranks.iter().map(|r| r.iter().map(|slot| if let Slot::Item(i) = slot { feet[*i].along } else { 0.0 }).fold(0.0, f64::max)).collect();
        let bands = bands(&extents, m.rank_gap);
        let across_extent = span(&lay, &feet);
        let title_h = (m.name_size * 1.3).ceil();
        let inset = match (self.title_in_inset(s), self.lr) {
            (false, _) => (m.cluster_pad, m.cluster_pad),
            (true, true) => (m.cluster_pad + title_h + 2.0, m.cluster_pad),
            (true, false) => (m.cluster_pad, m.cluster_pad + title_h + 6.0),
        };
        let interior_along = bands.last().map(|b| b.0 + b.1).unwrap_or(0.0);
        let mut size = (across_extent + inset.0 + m.cluster_pad, interior_along + inset.1 + m.cluster_pad);
        if let (true, Some(Content::Title(_, w))) = (self.title_in_inset(s), feet.first().map(|f| &f.content)) {
            if self.lr {
                size.1 = size.1.max(w + 2.0 * m.cluster_pad);
            } else {
                size.0 = size.0.max(w + 2.0 * m.cluster_pad);
            }
        }
        let mut in_ports = Vec::new();
        let mut out_ports = Vec::new();
        for (i, kind) in local.items.iter().enumerate() {
            let offset = inset.0 + lay.x[i] - size.0 / 2.0;
            match *kind {
                ItemKind::InPort(v) => {
                    in_ports.push((v, offset));
                    feet[i].exit = -inset.1;
                }
                ItemKind::OutPort(v) => {
                    out_ports.push((v, offset));
                    feet[i].entry = size.1 - inset.1 - bands[lay.rank[i]].0;
                }
                _ => {}
            }
        }
        Placed { feet, ports, layout: lay, bands, size, inset, in_ports, out_ports }
    }

    /// Maps abstract (across, along) to picture (x, y).
    pub fn pt(&self, a: f64, l: f64) -> (f64, f64) {
        if self.lr {
            (l, a)
        } else {
            (a, l)
        }
    }

    /// Maps an abstract rectangle (corner and extents) to a picture rectangle.
    pub fn rect(&self, a: f64, l: f64, da: f64, dl: f64) -> Rect {
        let (x, y) = self.pt(a, l);
        let (w, h) = self.pt(da, dl);
        Rect { x, y, w, h }
    }

    /// The whole picture: places the expanded instances and draws them inside each other.
    pub fn picture(&mut self) -> Picture {
        self.place_scopes(false);
        let root = self.placed[0].as_ref().expect("the root is always expanded");
        let (width, height) = self.pt(root.size.0, root.size.1);
        let (tx, ty) = self.title_corner(0, (0.0, 0.0));
        let mut pic = Picture { width: width.ceil(), height: height.ceil(), title: (self.title(0), tx, ty), clusters: vec![], edges: vec![], boxes: vec![] };
        self.draw(0, (0.0, 0.0), &mut pic);
        pic
    }

    /// Top-left corner of the title of instance `s` whose frame starts at `origin`.
    pub fn title_corner(&self, s: usize, origin: (f64, f64)) -> (f64, f64) {
        let p = self.placed[s].as_ref().expect("placed");
        if self.title_in_inset(s) {
            return self.pt(origin.0 + self.m.cluster_pad, origin.1 + self.m.cluster_pad);
        }
        let (a, l) = self.anchor(p, 0, origin);
        self.pt(a, l)
    }

    /// Abstract anchor and rank start of item `i` of a placed instance whose frame starts at `origin`.
    pub fn anchor(&self, p: &Placed, i: usize, origin: (f64, f64)) -> (f64, f64) {
        (origin.0 + p.inset.0 + p.layout.x[i], origin.1 + p.inset.1 + p.bands[p.layout.rank[i]].0)
    }

    /// Draws instance `s` (placed, expanded) with its frame starting at `origin`.
    fn draw(&self, s: usize, origin: (f64, f64), pic: &mut Picture) {
        let p = self.placed[s].as_ref().expect("placed");
        let local = &self.locals[s];
        for (i, kind) in local.items.iter().enumerate() {
            let (a, l) = self.anchor(p, i, origin);
            let foot = &p.feet[i];
            match (&foot.content, *kind) {
                (Content::Cluster, ItemKind::Child(c)) => {
                    let child = self.placed[c].as_ref().expect("placed child");
                    let corner = (a - child.size.0 / 2.0, l);
                    let title_at = self.title_corner(c, corner);
                    let rect = self.rect(corner.0, corner.1, child.size.0, child.size.1);
                    pic.clusters.push(ClusterShape { scope: c, rect, title: self.title(c), title_at, level: self.tree.scopes[c].level });
                    self.draw(c, corner, pic);
                }
                (Content::Box(text, label), _) => {
                    let (id, nodes) = match *kind {
                        ItemKind::Node(n) => (format!("n{}", n.index()), vec![n]),
                        ItemKind::Child(c) => (format!("s{c}"), self.tree.scopes[c].members.clone()),
                        _ => continue,
                    };
                    let (bw, bl) = if self.lr { (text.h, text.w) } else { (text.w, text.h) };
                    let rect = self.rect(a - bw / 2.0, l, bw, bl);
                    let label = label.as_ref().map(|(t, w)| LabelShape { rect: self.label_rect(rect, *w), text: t.clone() });
                    pic.boxes.push(BoxShape { id, rect, text: text.clone(), label, nodes });
                }
                _ => {}
            }
        }
        for (e, le) in local.edges.iter().enumerate() {
            let path = self.route(s, p, e, origin);
            let attach = |i: usize| match local.items[i] {
                ItemKind::Node(n) => Attach::Box(format!("n{}", n.index())),
                ItemKind::Child(c) if self.expanded[c] => Attach::Cluster(c),
                ItemKind::Child(c) => Attach::Box(format!("s{c}")),
                _ => Attach::Cluster(s),
            };
            let (from, to) = (attach(le.from), attach(le.to));
            let arrow = matches!(to, Attach::Box(_));
            pic.edges.push(EdgeShape { scope: s, path, from, to, arrow });
        }
    }

    /// Where the shape label of a box sits (beside the start of its outgoing edges).
    pub fn label_rect(&self, b: Rect, text_w: f64) -> Rect {
        let m = &self.m;
        let lh = (m.label_size * 1.25).ceil();
        if self.lr {
            Rect { x: b.x + b.w + m.label_gap, y: b.y + b.h / 2.0 - 2.0 - lh, w: text_w, h: lh }
        } else {
            Rect { x: b.x + b.w / 2.0 + 4.0, y: b.y + b.h + m.label_gap, w: text_w, h: lh }
        }
    }

    /// The path of local edge `e` of placed instance `p` whose frame starts at `origin`: out of
    /// the upper end, down its rank, through the gaps and bend points, into the lower end.
    fn route(&self, s: usize, p: &Placed, e: usize, origin: (f64, f64)) -> Vec<Seg> {
        let le = self.locals[s].edges[e];
        let lay = &p.layout;
        let (pf, pt) = p.ports[e];
        let (up, low, pu, pl) = if lay.reversed[e] { (le.to, le.from, pt, pf) } else { (le.from, le.to, pf, pt) };
        let band = |r: usize| (origin.1 + p.inset.1 + p.bands[r].0, origin.1 + p.inset.1 + p.bands[r].0 + p.bands[r].1);
        let across = |x: f64| origin.0 + p.inset.0 + x;
        let mut pts: Vec<(f64, f64, bool)> = Vec::new(); // (across, along, reached by a curve)
        let x0 = across(lay.x[up] + pu);
        let (top, bottom) = band(lay.rank[up]);
        pts.push((x0, top + p.feet[up].exit, false));
        if bottom > top + p.feet[up].exit {
            pts.push((x0, bottom, false));
        }
        let (trunk, used) = lay.trunk[e];
        for (k, &bx) in lay.bends[trunk][..used].iter().enumerate() {
            let (t, b) = band(lay.rank[up] + 1 + k);
            pts.push((across(bx), t, true));
            pts.push((across(bx), b, false));
        }
        let xl = across(lay.x[low] + pl);
        let (t, _) = band(lay.rank[low]);
        pts.push((xl, t, true));
        if p.feet[low].entry > 0.0 {
            pts.push((xl, t + p.feet[low].entry, false));
        }
        if lay.reversed[e] {
            pts.reverse();
            // A curve is drawn between the same two points in either direction.
            let flags: Vec<bool> = pts.iter().map(|q| q.2).collect();
            for (i, q) in pts.iter_mut().enumerate() {
                q.2 = i > 0 && flags[i - 1];
            }
        }
        self.segments(&pts)
    }

    /// Turns abstract points into path segments, with curves where the flag is set.
    fn segments(&self, pts: &[(f64, f64, bool)]) -> Vec<Seg> {
        let mut out = Vec::with_capacity(pts.len());
        for (i, &(a, l, curve)) in pts.iter().enumerate() {
            let (x, y) = self.pt(a, l);
            if i == 0 {
                out.push(Seg::Move(x, y));
            } else if curve {
                let (pa, pl, _) = pts[i - 1];
                let mid = (pl + l) / 2.0;
                let (c1x, c1y) = self.pt(pa, mid);
                let (c2x, c2y) = self.pt(a, mid);
                out.push(Seg::Curve(c1x, c1y, c2x, c2y, x, y));
            } else {
                out.push(Seg::Line(x, y));
            }
        }
        out
    }
}

/// Start and extent of each rank, `gap` apart.
pub fn bands(extents: &[f64], gap: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(extents.len());
    let mut at = 0.0;
    for &e in extents {
        out.push((at, e));
        at += e + gap;
    }
    out
}

/// Across-axis extent of a layout: from 0 (layouts start there) to the furthest item or bend.
fn span(lay: &Layout, feet: &[Foot]) -> f64 {
    let items = lay.x.iter().zip(feet).map(|(x, f)| x + f.after).fold(0.0, f64::max);
    lay.bends.iter().flatten().copied().fold(items, f64::max)
}
