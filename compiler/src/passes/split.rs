//! **Batch splitting**: where a batched pass should run image by image.
//!
//! The first layers of a CNN have large maps and small weights: at batch 8 their activations
//! (MobileNetV2's 96x112x112 expansion: 38 MB) no longer fit in the cache, so every layer
//! writes its output to memory and the next reads it back, where one image's would have stayed
//! in cache. Later layers have small maps and large weights, which a batch reuses. So a pass
//! at batch > 1 runs its *head* (nodes up to [`BatchSplit::end`]) once per image and the rest
//! on the whole batch, joining the one value the head leaves live ([`BatchSplit::carry`]).
//!
//! The head ends at the first point after the last *heavy* node (whose input and output for
//! the whole batch exceed the budget) where one value alone is live, and stops before the
//! first node whose weights outweigh one image's input and output and do not stay in cache
//! anyway (VGG's 512-channel convs, a ViT's patch projection): those stay batched, and so does
//! everything after them. Only a memory-bound head is split (under [`MAX_INTENSITY`]
//! multiply-adds per byte of activations): a compute-bound one gains nothing from the cache.

use crate::ir::{Graph, NodeId};

/// Weight bytes that stay in cache however often a head reads them (a squeeze-excitation's
/// layers, whose 1x1 maps are smaller still).
const SMALL_WEIGHTS: usize = 256 << 10;

/// Multiply-adds per byte of activations (input and output, summed over the head) up to which
/// a head is memory-bound enough to run image by image. At batch 8 the heads of MobileNetV2
/// and EfficientNet-B0 (pointwise and depthwise convs, about 2) ran 5-8 % faster split; those
/// of ConvNeXt-Tiny (13), ResNet-50 (18), DenseNet-121 (28), Inception-v3 (33) and VGG16 (62)
/// from 3 % faster to 4 % slower.
const MAX_INTENSITY: f64 = 8.0;

/// The head of a pass that runs image by image ([`batch_split`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSplit {
    /// Index (in execution order) of the head's last node.
    pub end: usize,
    /// The one value of the head still read after it (joined along the batch).
    pub carry: NodeId,
}

/// The head of `graph` to run image by image at `batch` (`None`: run it all batched):
/// `last_use` as [`Graph::last_use`], `budget` the bytes of activations one node may touch
/// for the whole batch before it counts as heavy, `weights(node)` the bytes of weights its
/// kernel streams per pass (a runtime's packed or transformed ones); `keep(carry)` may refuse
/// a split point whose value the runtime cannot carry.
pub fn batch_split(graph: &Graph, last_use: &[usize], batch: usize, budget: usize, weights: impl Fn(NodeId) -> usize, keep: impl Fn(NodeId) -> bool) -> Option<BatchSplit> {
    if batch < 2 {
        return None;
    }
    let bytes = |id: NodeId| graph.node(id).shape.as_ref().map(|s| 4 * s.iter().product::<usize>());
    let mut live: Vec<NodeId> = Vec::new();
    let mut split = None;
    // Multiply-adds and activation bytes (one image) of the nodes so far, and at the split.
    let (mut macs, mut bytes_so_far, mut at_split) = (0u64, 0usize, (0u64, 0usize));
    // A heavy node ran since the split point last taken.
    let mut pending = false;
    for (id, node) in graph.nodes() {
        let i = id.index();
        live.retain(|v| last_use[v.index()] > i);
        if last_use[i] > i {
            live.push(id);
        }
        if node.inputs.is_empty() {
            continue;
        }
        let Some(act) = node.inputs.iter().map(|&u| bytes(u)).chain([bytes(id)]).sum::<Option<usize>>() else { break };
        if weights(id) > act.max(SMALL_WEIGHTS) {
            break;
        }
        pending |= batch * act > budget;
        macs += node.macs;
        bytes_so_far += act;
        if let ([carry], true) = (&live[..], pending) {
            if keep(*carry) {
                split = Some(BatchSplit { end: i, carry: *carry });
                (pending, at_split) = (false, (macs, bytes_so_far));
            }
        }
    }
    // A head that computes much per byte it moves (VGG's 3x3 convs on 64-256 channels) gains
    // nothing from the cache and loses the batch's larger tasks.
    split.filter(|_| (at_split.0 as f64) < MAX_INTENSITY * at_split.1 as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::MemoryLoader;

    const MIB: usize = 1 << 20;

    /// A 64x64 pointwise stem, a residual depthwise block, a strided pointwise conv and a
    /// classifier: 0.5 MiB per image for the stem's output, 1 MiB for the classifier's
    /// weights (the convs' stay in cache); under one multiply-add per byte.
    fn graph(depthwise: bool) -> Graph {
        let (k, groups) = if depthwise { (3, 32) } else { (5, 1) };
        let spec = format!("name: t\ninput: [3, 64, 64]\ngraph:\n  - conv(32, k=1)\n  - relu\n  - branches:\n      - []\n      - \"conv(32, k={k}, p={p}, groups={groups}) -> relu\"\n    join: add\n  - conv(64, k=1, s=2)\n  - global_avgpool\n  - flatten\n  - linear(4096)\n", p = k / 2);
        let loader = MemoryLoader([("t.yaml".to_string(), spec)].into_iter().collect());
        crate::compile("t.yaml", &loader, &crate::Options::default()).graph.unwrap()
    }

    /// The op name of the head's last node, for each budget in MiB (`None`: no head).
    fn ends(g: &Graph, batch: usize, budget: usize, keep: impl Fn(NodeId) -> bool) -> Option<String> {
        let params = |id: NodeId| g.node(id).params.iter().map(|p| 4 * p.numel()).sum();
        let s = batch_split(g, &g.last_use(), batch, budget, params, keep)?;
        assert_eq!(s.carry.index(), s.end, "the carried value is the head's last node here");
        Some(format!("{:?}", g.node(s.carry).op).split([' ', '{', '(']).next().unwrap().to_string())
    }

    #[test]
    fn the_head_ends_where_one_value_is_live_after_the_last_heavy_node() {
        let g = graph(true);
        let add = g.nodes().find(|(_, n)| matches!(n.op, crate::ir::Op::Add)).unwrap().0;
        // At batch 8 (in + out per node): stem relu, block and add 8-12 MiB, strided conv
        // 6 MiB, pool 2 MiB, flatten and classifier KiBs.
        assert_eq!(ends(&g, 8, 2 * MIB, |_| true).as_deref(), Some("GlobalPool"));
        assert_eq!(ends(&g, 8, 4 * MIB, |_| true).as_deref(), Some("Conv"));
        // Inside the block two values are live (its input is kept for the add): never there.
        assert_eq!(ends(&g, 8, 7 * MIB, |_| true).as_deref(), Some("Add"));
        // A refused point moves the end to the next one.
        assert_eq!(ends(&g, 8, 7 * MIB, |c| c != add).as_deref(), Some("Conv"));
        // Whatever the budget, the classifier (weights 1 MiB, activations 16 KiB) stays batched.
        assert_eq!(ends(&g, 8, 1, |_| true).as_deref(), Some("Flatten"));
        // Nothing at batch 1, nor when no node is heavy.
        assert_eq!(ends(&g, 1, 2 * MIB, |_| true), None);
        assert_eq!(ends(&g, 8, 64 * MIB, |_| true), None);
        // A dense 5x5 block makes the head compute-bound (about 17 multiply-adds per byte).
        assert_eq!(ends(&graph(false), 8, 2 * MIB, |_| true), None);
    }
}
