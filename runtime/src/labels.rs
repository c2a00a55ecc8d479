//! Label sets: the built-in ImageNet (torchvision order) and COCO (darknet order) lists, or a
//! spec's own list.

use tlc_compiler::ir::Labels;

const IMAGENET: &str = include_str!("../labels/imagenet_classes.txt");
const COCO: &str = include_str!("../labels/coco.names");

/// The class names of a spec's label set (empty when it has none).
pub fn names(labels: &Labels) -> Vec<String> {
    match labels {
        Labels::None => Vec::new(),
        Labels::List(l) => l.clone(),
        Labels::Builtin(name) => match name.as_str() {
            "imagenet" => IMAGENET.lines().map(|s| s.to_string()).collect(),
            "coco" => COCO.lines().map(|s| s.to_string()).collect(),
            _ => Vec::new(),
        },
    }
}

/// One class with its probability.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Scored {
    /// Class index.
    pub class: usize,
    /// Class name (or the index as text when the model has no labels).
    pub label: String,
    /// Softmax probability.
    pub score: f32,
}

/// Softmax of `logits` and the `k` best classes, best first.
pub fn top_k(logits: &[f32], k: usize, names: &[String]) -> Vec<Scored> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&v| ((v - max) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| exps[b].partial_cmp(&exps[a]).unwrap_or(std::cmp::Ordering::Equal));
    idx.into_iter()
        .take(k)
        .map(|i| Scored { class: i, label: names.get(i).cloned().unwrap_or_else(|| i.to_string()), score: (exps[i] / sum) as f32 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_lists() {
        let n = names(&Labels::Builtin("imagenet".into()));
        assert_eq!(n.len(), 1000);
        assert_eq!(n[282], "tiger cat");
        assert_eq!(names(&Labels::Builtin("coco".into())).len(), 80);
    }

    #[test]
    fn softmax_top_k() {
        let t = top_k(&[1.0, 3.0, 2.0], 2, &[]);
        assert_eq!(t[0].class, 1);
        assert!((t.iter().map(|s| s.score).sum::<f32>() - 0.9100).abs() < 1e-3);
    }
}
