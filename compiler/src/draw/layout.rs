//! Layered layout of one local graph (Sugiyama style), on abstract axes: ranks follow the
//! *along* axis (down in `TB`, right in `LR`), items of a rank sit side by side on the *across*
//! axis. Steps: break cycles against execution order, longest-path ranks, bend points for edges
//! spanning several ranks (edges leaving the same point share them, as one trunk that the
//! edges leave at their target's rank), barycenter crossing reduction, and coordinates by repeated weighted
//! least-squares placement of each rank against its neighbours (pool-adjacent-violators).
//! Along-axis coordinates are left to the caller: they depend only on each rank's tallest item.

use std::collections::HashMap;

/// Where an item's rank must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Wherever its edges put it.
    Free,
    /// The first rank (entry ports, the title).
    First,
    /// A rank of its own after every other item (exit ports).
    Last,
}

/// An item to place.
#[derive(Clone, Debug)]
pub struct Item {
    /// Extent before the anchor on the across axis.
    pub before: f64,
    /// Extent after the anchor on the across axis.
    pub after: f64,
    /// Rank constraint.
    pub place: Place,
    /// Kept first in its rank (a title).
    pub pinned: bool,
    /// Execution-order key: edges against it are drawn reversed.
    pub order: usize,
}

/// An edge between items; ports are across-axis offsets of the attachment points from the
/// anchors.
#[derive(Clone, Debug)]
pub struct Edge {
    /// Source item.
    pub from: usize,
    /// Target item.
    pub to: usize,
    /// Offset of the attachment on the source.
    pub from_port: f64,
    /// Offset of the attachment on the target.
    pub to_port: f64,
}

/// Gaps on the across axis.
#[derive(Clone, Copy, Debug)]
pub struct Spacing {
    /// Between two items that have an extent.
    pub item_gap: f64,
    /// Whenever a bend point or an extent-less item (a port) is involved.
    pub point_gap: f64,
}

/// An entry of a rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// An item.
    Item(usize),
    /// Bend `k` (counted from the upper end) of trunk `t`.
    Bend(usize, usize),
}

/// The result: ranks, order and across-axis anchors.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Rank of each item.
    pub rank: Vec<usize>,
    /// Slots of each rank, in across-axis order.
    pub ranks: Vec<Vec<Slot>>,
    /// Anchor of each item.
    pub x: Vec<f64>,
    /// Per trunk, the anchors of its bend points from the upper end down.
    pub bends: Vec<Vec<f64>>,
    /// Per edge, its trunk and how many of the trunk's bends it runs through.
    pub trunk: Vec<(usize, usize)>,
    /// Per edge, whether it runs against the rank direction (drawn from lower to upper).
    pub reversed: Vec<bool>,
}

/// A vertex of the proper graph (items and bends), with its links to the neighbouring ranks.
#[derive(Clone, Debug, Default)]
struct Vertex {
    rank: usize,
    before: f64,
    after: f64,
    pinned: bool,
    solid: bool,
    /// (vertex, own port, other port, weight) in the rank above / below.
    up: Vec<(usize, f64, f64, f64)>,
    down: Vec<(usize, f64, f64, f64)>,
}

/// Lays out `items` and `edges`.
pub fn layout(items: &[Item], edges: &[Edge], sp: Spacing) -> Layout {
    let reversed: Vec<bool> = edges.iter().map(|e| (items[e.from].order, e.from) > (items[e.to].order, e.to)).collect();
    let ends: Vec<(usize, usize, f64, f64)> = edges
        .iter()
        .zip(&reversed)
        .map(|(e, &r)| if r { (e.to, e.from, e.to_port, e.from_port) } else { (e.from, e.to, e.from_port, e.to_port) })
        .collect();
    let rank = assign_ranks(items, &ends);
    let (verts, slots, bend_ids, trunk) = proper_graph(items, &ends, &rank);
    let nranks = verts.iter().map(|v| v.rank + 1).max().unwrap_or(0);
    let mut ranks: Vec<Vec<usize>> = vec![Vec::new(); nranks];
    for v in initial_order(&verts, items.len()) {
        ranks[verts[v].rank].push(v);
    }
    reduce_crossings(&verts, &mut ranks);
    let mut xs = coordinates(&verts, &ranks, sp);
    straighten(&verts, &ranks, &mut xs, &bend_ids, sp);
    Layout {
        x: (0..items.len()).map(|i| xs[i]).collect(),
        bends: bend_ids.iter().map(|ids| ids.iter().map(|&v| xs[v]).collect()).collect(),
        ranks: ranks.iter().map(|r| r.iter().map(|&v| slots[v]).collect()).collect(),
        rank,
        reversed,
        trunk,
    }
}

/// Longest-path ranks in execution order; sources sink next to their first consumer, `First`
/// items stay at rank 0 and `Last` items get a rank after all others.
fn assign_ranks(items: &[Item], ends: &[(usize, usize, f64, f64)]) -> Vec<usize> {
    let n = items.len();
    let mut topo: Vec<usize> = (0..n).collect();
    topo.sort_by_key(|&i| (items[i].order, i));
    let mut outs: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut has_in = vec![false; n];
    for &(a, b, _, _) in ends {
        outs[a].push(b);
        has_in[b] = true;
    }
    let mut rank = vec![0usize; n];
    for &i in &topo {
        if items[i].place == Place::Last {
            continue;
        }
        for &j in &outs[i] {
            rank[j] = rank[j].max(rank[i] + 1);
        }
    }
    for &i in topo.iter().rev() {
        if items[i].place == Place::Free && !has_in[i] {
            if let Some(m) = outs[i].iter().filter(|&&j| items[j].place != Place::Last).map(|&j| rank[j]).min() {
                rank[i] = m.saturating_sub(1);
            }
        }
    }
    let last = (0..n).filter(|&i| items[i].place != Place::Last).map(|i| rank[i] + 1).max().unwrap_or(0);
    for i in 0..n {
        match items[i].place {
            Place::First => rank[i] = 0,
            Place::Last => rank[i] = last,
            Place::Free => {}
        }
    }
    rank
}

/// Items plus bend vertices: edges leaving the same item at the same port share one trunk of
/// bends down to the rank above their furthest target. Returns the vertices, what each stands
/// for, the bend vertices of every trunk and each edge's (trunk, bends used).
#[allow(clippy::type_complexity)]
fn proper_graph(items: &[Item], ends: &[(usize, usize, f64, f64)], rank: &[usize]) -> (Vec<Vertex>, Vec<Slot>, Vec<Vec<usize>>, Vec<(usize, usize)>) {
    let mut verts: Vec<Vertex> = items
        .iter()
        .enumerate()
        .map(|(i, it)| Vertex { rank: rank[i], before: it.before, after: it.after, pinned: it.pinned, solid: it.before + it.after > 0.0, ..Vertex::default() })
        .collect();
    let mut slots: Vec<Slot> = (0..items.len()).map(Slot::Item).collect();
    // Trunk of each edge, keyed by upper item and port.
    let mut keys: Vec<(usize, u64)> = Vec::new();
    let mut index: HashMap<(usize, u64), usize> = HashMap::new();
    let mut reach: Vec<usize> = Vec::new();
    let mut trunk_of = Vec::with_capacity(ends.len());
    for &(a, b, pa, _) in ends {
        let key = (a, pa.to_bits());
        let t = *index.entry(key).or_insert_with(|| {
            keys.push(key);
            reach.push(0);
            keys.len() - 1
        });
        reach[t] = reach[t].max(rank[b]);
        trunk_of.push(t);
    }
    let mut bend_ids: Vec<Vec<usize>> = Vec::with_capacity(keys.len());
    for (t, &(a, _)) in keys.iter().enumerate() {
        let mut ids = Vec::new();
        for r in rank[a] + 1..reach[t] {
            let v = verts.len();
            verts.push(Vertex { rank: r, ..Vertex::default() });
            slots.push(Slot::Bend(t, ids.len()));
            let prev = ids.last().map(|&u| (u, 0.0)).unwrap_or((a, f64::from_bits(keys[t].1)));
            link(&mut verts, prev, (v, 0.0));
            ids.push(v);
        }
        bend_ids.push(ids);
    }
    let mut trunk = Vec::with_capacity(ends.len());
    for (&(a, b, pa, pb), &t) in ends.iter().zip(&trunk_of) {
        let used = rank[b] - rank[a] - 1;
        let prev = if used == 0 { (a, pa) } else { (bend_ids[t][used - 1], 0.0) };
        link(&mut verts, prev, (b, pb));
        trunk.push((t, used));
    }
    (verts, slots, bend_ids, trunk)
}

/// Connects an upper and a lower vertex; segments between bends weigh most (straight long
/// edges), as in Graphviz.
fn link(verts: &mut [Vertex], (u, pu): (usize, f64), (l, pl): (usize, f64)) {
    let w = match (verts[u].solid, verts[l].solid) {
        (false, false) => 8.0,
        (true, true) => 1.0,
        _ => 2.0,
    };
    verts[u].down.push((l, pu, pl, w));
    verts[l].up.push((u, pl, pu, w));
}

/// Depth-first discovery order from the items in execution order: chains stay together.
fn initial_order(verts: &[Vertex], n_items: usize) -> Vec<usize> {
    let mut seen = vec![false; verts.len()];
    let mut out = Vec::with_capacity(verts.len());
    for start in 0..n_items {
        let mut stack = vec![start];
        while let Some(v) = stack.pop() {
            if seen[v] {
                continue;
            }
            seen[v] = true;
            out.push(v);
            stack.extend(verts[v].down.iter().rev().map(|d| d.0));
        }
    }
    out
}

/// Barycenter sweeps down and up, keeping the order with the fewest crossings.
fn reduce_crossings(verts: &[Vertex], ranks: &mut [Vec<usize>]) {
    let mut best = ranks.to_vec();
    let mut best_count = crossings(verts, ranks);
    for iter in 0..24 {
        if best_count == 0 {
            break;
        }
        let down = iter % 2 == 0;
        let order: Vec<usize> = if down { (1..ranks.len()).collect() } else { (0..ranks.len().saturating_sub(1)).rev().collect() };
        for r in order {
            let fixed = if down { r - 1 } else { r + 1 };
            let mut pos = vec![0.0; verts.len()];
            for (i, &v) in ranks[fixed].iter().enumerate() {
                pos[v] = i as f64;
            }
            let keys: Vec<(usize, f64)> = ranks[r]
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let nb = if down { &verts[v].up } else { &verts[v].down };
                    let key = if nb.is_empty() { i as f64 } else { nb.iter().map(|n| pos[n.0]).sum::<f64>() / nb.len() as f64 };
                    (v, if verts[v].pinned { f64::NEG_INFINITY } else { key })
                })
                .collect();
            let mut sorted = keys;
            sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
            ranks[r] = sorted.into_iter().map(|k| k.0).collect();
        }
        let c = crossings(verts, ranks);
        if c < best_count {
            best_count = c;
            best = ranks.to_vec();
        }
    }
    ranks.clone_from_slice(&best);
}

/// Number of edge crossings between all pairs of neighbouring ranks.
fn crossings(verts: &[Vertex], ranks: &[Vec<usize>]) -> usize {
    let mut pos = vec![0usize; verts.len()];
    for r in ranks {
        for (i, &v) in r.iter().enumerate() {
            pos[v] = i;
        }
    }
    let mut total = 0;
    for w in ranks.windows(2) {
        let mut segs: Vec<(usize, usize)> = w[0].iter().flat_map(|&u| verts[u].down.iter().map(move |d| (u, d.0))).map(|(u, l)| (pos[u], pos[l])).collect();
        segs.sort_unstable();
        // Inversions of the lower ends, counted with a Fenwick tree.
        let size = w[1].len() + 1;
        let mut tree = vec![0usize; size + 1];
        for (seen, &(_, l)) in segs.iter().enumerate() {
            let mut not_greater = 0;
            let mut i = l + 1;
            while i > 0 {
                not_greater += tree[i];
                i -= i & i.wrapping_neg();
            }
            total += seen - not_greater;
            let mut i = l + 1;
            while i <= size {
                tree[i] += 1;
                i += i & i.wrapping_neg();
            }
        }
    }
    total
}

/// Across-axis anchors: packed ranks, then sweeps placing each rank as close as possible
/// (weighted least squares) to its neighbours above, then below, then both.
fn coordinates(verts: &[Vertex], ranks: &[Vec<usize>], sp: Spacing) -> Vec<f64> {
    let mut x = vec![0.0; verts.len()];
    for r in ranks {
        let want = vec![0.0; r.len()];
        let placed = place_rank(verts, r, &want, &vec![1.0; r.len()], sp);
        for (i, &v) in r.iter().enumerate() {
            x[v] = placed[i];
        }
    }
    for iter in 0..12 {
        let last = iter == 11;
        for rank in ranks.iter().skip(1) {
            align(verts, rank, &mut x, sp, true, last);
        }
        for rank in ranks[..ranks.len().saturating_sub(1)].iter().rev() {
            align(verts, rank, &mut x, sp, false, last);
        }
    }
    hug_pinned(verts, ranks, &mut x, sp);
    let min = verts.iter().enumerate().map(|(v, vx)| x[v] - vx.before).fold(f64::INFINITY, f64::min);
    if min.is_finite() {
        for xv in &mut x {
            *xv -= min;
        }
    }
    x
}

/// Puts each trunk's bends on one line where its neighbours in every rank leave room for it
/// (at the room's point nearest the bends' median), removing the wiggles of long edges.
fn straighten(verts: &[Vertex], ranks: &[Vec<usize>], x: &mut [f64], trunks: &[Vec<usize>], sp: Spacing) {
    let mut pos = vec![0usize; verts.len()];
    for r in ranks {
        for (i, &v) in r.iter().enumerate() {
            pos[v] = i;
        }
    }
    let gap = |a: &Vertex, b: &Vertex| if a.solid && b.solid { sp.item_gap } else { sp.point_gap };
    for trunk in trunks.iter().filter(|t| t.len() > 1) {
        let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
        for &v in trunk {
            let rank = &ranks[verts[v].rank];
            if let Some(&l) = pos[v].checked_sub(1).map(|i| &rank[i]) {
                lo = lo.max(x[l] + verts[l].after + gap(&verts[l], &verts[v]));
            }
            if let Some(&r) = rank.get(pos[v] + 1) {
                hi = hi.min(x[r] - verts[r].before - gap(&verts[v], &verts[r]));
            }
        }
        if lo > hi {
            continue;
        }
        let mut xs: Vec<f64> = trunk.iter().map(|&v| x[v]).collect();
        xs.sort_by(f64::total_cmp);
        let line = xs[xs.len() / 2].clamp(lo, hi);
        for &v in trunk {
            x[v] = line;
        }
    }
}

/// Moves pinned items without edges (titles) right up to where the rest of the drawing starts,
/// still before the next item of their rank, so they leave no empty margin.
fn hug_pinned(verts: &[Vertex], ranks: &[Vec<usize>], x: &mut [f64], sp: Spacing) {
    for r in ranks {
        let Some(&v) = r.first() else { continue };
        if !verts[v].pinned || !verts[v].up.is_empty() || !verts[v].down.is_empty() {
            continue;
        }
        let left = (0..verts.len()).filter(|&u| u != v).map(|u| x[u] - verts[u].before).fold(f64::INFINITY, f64::min);
        let limit = r.get(1).map(|&n| x[n] - verts[n].before - sp.point_gap - verts[v].after).unwrap_or(f64::INFINITY);
        let target = left.min(limit) + verts[v].before;
        if target.is_finite() {
            x[v] = target;
        }
    }
}

/// Places one rank against its neighbours above (`up`) or below; with `both`, against both.
fn align(verts: &[Vertex], rank: &[usize], x: &mut [f64], sp: Spacing, up: bool, both: bool) {
    let mut want = Vec::with_capacity(rank.len());
    let mut weight = Vec::with_capacity(rank.len());
    for &v in rank {
        let mut nb: Vec<&(usize, f64, f64, f64)> = if up { verts[v].up.iter().collect() } else { verts[v].down.iter().collect() };
        if both {
            nb = verts[v].up.iter().chain(verts[v].down.iter()).collect();
        }
        let w: f64 = nb.iter().map(|n| n.3).sum();
        if w == 0.0 {
            want.push(x[v]);
            weight.push(0.05);
        } else {
            want.push(nb.iter().map(|n| n.3 * (x[n.0] + n.2 - n.1)).sum::<f64>() / w);
            weight.push(w);
        }
    }
    let placed = place_rank(verts, rank, &want, &weight, sp);
    for (i, &v) in rank.iter().enumerate() {
        x[v] = placed[i];
    }
}

/// Anchors of one rank closest to `want` keeping the gaps.
fn place_rank(verts: &[Vertex], rank: &[usize], want: &[f64], weight: &[f64], sp: Spacing) -> Vec<f64> {
    let sep: Vec<f64> = rank
        .windows(2)
        .map(|p| {
            let (a, b) = (&verts[p[0]], &verts[p[1]]);
            a.after + b.before + if a.solid && b.solid { sp.item_gap } else { sp.point_gap }
        })
        .collect();
    least_squares_spread(want, weight, &sep)
}

/// Positions minimising `sum w[i] (x[i] - want[i])^2` subject to `x[i+1] - x[i] >= sep[i]`:
/// shifted by the cumulative gaps this is isotonic regression, solved by pool-adjacent-violators.
pub fn least_squares_spread(want: &[f64], weight: &[f64], sep: &[f64]) -> Vec<f64> {
    let n = want.len();
    let mut offset = vec![0.0; n];
    for i in 1..n {
        offset[i] = offset[i - 1] + sep[i - 1];
    }
    // Blocks of (total weight, weighted sum, count) with non-decreasing means.
    let mut blocks: Vec<(f64, f64, usize)> = Vec::new();
    for i in 0..n {
        blocks.push((weight[i], weight[i] * (want[i] - offset[i]), 1));
        while blocks.len() > 1 {
            let (w2, s2, c2) = blocks[blocks.len() - 1];
            let (w1, s1, c1) = blocks[blocks.len() - 2];
            if s1 / w1 <= s2 / w2 {
                break;
            }
            blocks.pop();
            *blocks.last_mut().expect("two blocks") = (w1 + w2, s1 + s2, c1 + c2);
        }
    }
    let mut out = Vec::with_capacity(n);
    for (w, s, c) in blocks {
        for _ in 0..c {
            out.push(s / w + offset[out.len()]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(order: usize) -> Item {
        Item { before: 20.0, after: 20.0, place: Place::Free, pinned: false, order }
    }

    fn edge(from: usize, to: usize) -> Edge {
        Edge { from, to, from_port: 0.0, to_port: 0.0 }
    }

    #[test]
    fn spread_keeps_gaps_and_fits_free_points() {
        assert_eq!(least_squares_spread(&[0.0, 100.0], &[1.0, 1.0], &[10.0]), vec![0.0, 100.0]);
        assert_eq!(least_squares_spread(&[0.0, 0.0], &[1.0, 1.0], &[10.0]), vec![-5.0, 5.0]);
    }

    #[test]
    fn diamond_is_symmetric_and_skip_edge_bends() {
        // 0 -> 1 -> 2 -> 3 and 0 -> 3: the long edge gets two bends beside the chain.
        let items: Vec<Item> = (0..4).map(item).collect();
        let l = layout(&items, &[edge(0, 1), edge(1, 2), edge(2, 3), edge(0, 3)], Spacing { item_gap: 10.0, point_gap: 5.0 });
        assert_eq!(l.rank, vec![0, 1, 2, 3]);
        assert_eq!(l.trunk[3], (0, 2), "the skip edge leaves item 0 with the edge to 1");
        assert_eq!(l.bends[0].len(), 2);
        assert!((l.x[0] - l.x[3]).abs() < 1e-6, "ends of the skip edge line up: {:?}", l.x);
        for (r, slots) in l.ranks.iter().enumerate() {
            assert!(slots.len() <= 2, "rank {r}: {slots:?}");
        }
    }

    #[test]
    fn edges_from_one_point_share_a_trunk() {
        // 0 feeds 1..4 in a chain 1 -> 2 -> 3: the edges to 2 and 3 share bends.
        let items: Vec<Item> = (0..4).map(item).collect();
        let l = layout(&items, &[edge(0, 1), edge(1, 2), edge(2, 3), edge(0, 2), edge(0, 3)], Spacing { item_gap: 10.0, point_gap: 5.0 });
        assert_eq!(l.trunk[3].0, l.trunk[4].0);
        assert_eq!((l.trunk[3].1, l.trunk[4].1), (1, 2));
        assert_eq!(l.bends[l.trunk[4].0].len(), 2);
    }

    #[test]
    fn cycles_are_reversed_and_ports_ranked() {
        let mut items: Vec<Item> = (0..3).map(item).collect();
        items[2].place = Place::Last;
        let l = layout(&items, &[edge(1, 0), edge(0, 1), edge(1, 2)], Spacing { item_gap: 10.0, point_gap: 5.0 });
        assert_eq!(l.reversed, vec![true, false, false]);
        assert_eq!(l.rank, vec![0, 1, 2]);
    }
}
