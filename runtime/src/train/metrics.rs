//! Classification metrics: accuracy, confusion matrix, per-class and macro precision, recall
//! and F1, and ROC AUC (two classes).

use serde::Serialize;

/// Metrics of a set of predictions.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// Macro precision.
    pub precision: f64,
    /// Macro recall.
    pub recall: f64,
    /// Macro F1.
    pub f1: f64,
    /// ROC AUC of class 1 against class 0 (two classes only).
    pub auc: Option<f64>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    /// Per class: precision.
    pub per_class_precision: Vec<f64>,
    /// Per class: recall.
    pub per_class_recall: Vec<f64>,
    /// Per class: F1.
    pub per_class_f1: Vec<f64>,
    /// Per class: number of true samples.
    pub support: Vec<usize>,
}

/// Computes the report from per-sample class probabilities (or logits; only the ranking of
/// class 1's score matters for the AUC) and true labels.
pub fn report(scores: &[Vec<f32>], labels: &[usize], classes: usize) -> Report {
    let mut confusion = vec![vec![0usize; classes]; classes];
    let mut correct = 0;
    for (s, &l) in scores.iter().zip(labels) {
        let p = argmax(s);
        if p == l {
            correct += 1;
        }
        if l < classes && p < classes {
            confusion[l][p] += 1;
        }
    }
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let mut pc = Vec::new();
    let mut rc = Vec::new();
    let mut fc = Vec::new();
    let mut support = Vec::new();
    for (c, row) in confusion.iter().enumerate().take(classes) {
        let tp = row[c] as f64;
        let pred: f64 = confusion.iter().take(classes).map(|r| r[c] as f64).sum();
        let truth: f64 = row.iter().sum::<usize>() as f64;
        let p = div(tp, pred);
        let r = div(tp, truth);
        pc.push(p);
        rc.push(r);
        fc.push(div(2.0 * p * r, p + r));
        support.push(truth as usize);
    }
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    let auc = (classes == 2).then(|| {
        let s: Vec<f64> = scores.iter().map(|s| s[1] as f64 - s[0] as f64).collect();
        roc_auc(&s, &labels.iter().map(|&l| l == 1).collect::<Vec<_>>())
    });
    Report {
        accuracy: div(correct as f64, labels.len() as f64),
        precision: mean(&pc),
        recall: mean(&rc),
        f1: mean(&fc),
        auc,
        confusion,
        per_class_precision: pc,
        per_class_recall: rc,
        per_class_f1: fc,
        support,
    }
}

/// Index of the largest value.
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// ROC AUC by the Mann-Whitney statistic (ties count one half).
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].partial_cmp(&scores[b]).unwrap_or(std::cmp::Ordering::Equal));
    // Average ranks with ties.
    let mut ranks = vec![0f64; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[idx[k]] = r;
        }
        i = j + 1;
    }
    let np = positive.iter().filter(|&&p| p).count() as f64;
    let nn = positive.len() as f64 - np;
    if np == 0.0 || nn == 0.0 {
        return f64::NAN;
    }
    let sum: f64 = ranks.iter().zip(positive).filter(|(_, &p)| p).map(|(r, _)| r).sum();
    (sum - np * (np + 1.0) / 2.0) / (np * nn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_a_small_case() {
        let scores = vec![vec![0.9, 0.1], vec![0.2, 0.8], vec![0.6, 0.4], vec![0.3, 0.7]];
        let labels = vec![0, 1, 1, 0];
        let r = report(&scores, &labels, 2);
        assert_eq!(r.confusion, vec![vec![1, 1], vec![1, 1]]);
        assert!((r.accuracy - 0.5).abs() < 1e-12);
        assert!((r.f1 - 0.5).abs() < 1e-12);
        // positives scores (s1 - s0): 0.6, -0.2; negatives: -0.8, 0.4 -> pairs won: (0.6>-0.8),(0.6>0.4),(-0.2>-0.8) = 3/4
        assert!((r.auc.unwrap() - 0.75).abs() < 1e-12);
    }
}
