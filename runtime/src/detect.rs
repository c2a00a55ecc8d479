//! Detection post-processing: decoding darknet YOLO heads and YOLOv8 outputs, confidence
//! threshold, class-wise NMS, and mapping boxes back to the original image.

use anyhow::{bail, Result};
use candle_core::Tensor;

/// One detection in original-image pixels.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Detection {
    /// Class index.
    pub class: usize,
    /// Class name.
    pub label: String,
    /// Confidence (objectness x class probability for darknet; class score for v8).
    pub score: f32,
    /// `[x1, y1, x2, y2]` in original-image pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// A candidate box in network-input coordinates, normalised to 0..1: `cx, cy, w, h`.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Centre and size, 0..1 of the network input.
    pub cxcywh: [f32; 4],
    /// Class index.
    pub class: usize,
    /// Score.
    pub score: f32,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Decodes one darknet `[yolo]` head (`[A*(5+C), H, W]` for one image): `x = (σ(tx)+gx)/W`,
/// `w = e^tw * anchor_w / net_w`, score = σ(obj) · σ(class); keeps candidates above `conf`.
pub fn decode_darknet(head: &Tensor, anchors: &[[usize; 2]], mask: &[usize], classes: usize, net_hw: (usize, usize), conf: f32) -> Result<Vec<Candidate>> {
    let (c, h, w) = head.dims3()?;
    let na = mask.len();
    if c != na * (5 + classes) {
        bail!("a YOLO head with {na} anchors and {classes} classes needs {} channels, found {c}", na * (5 + classes));
    }
    let v: Vec<f32> = head.flatten_all()?.to_vec1()?;
    let at = |ch: usize, y: usize, x: usize| v[(ch * h + y) * w + x];
    let mut out = Vec::new();
    for y in 0..h {
        for x in 0..w {
            for (a, &m) in mask.iter().enumerate() {
                let base = a * (5 + classes);
                let obj = sigmoid(at(base + 4, y, x));
                let cx = (sigmoid(at(base, y, x)) + x as f32) / w as f32;
                let cy = (sigmoid(at(base + 1, y, x)) + y as f32) / h as f32;
                let bw = at(base + 2, y, x).exp() * anchors[m][0] as f32 / net_hw.1 as f32;
                let bh = at(base + 3, y, x).exp() * anchors[m][1] as f32 / net_hw.0 as f32;
                for k in 0..classes {
                    let s = obj * sigmoid(at(base + 5 + k, y, x));
                    if s >= conf {
                        out.push(Candidate { cxcywh: [cx, cy, bw, bh], class: k, score: s });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Decodes a YOLOv8 output `[4 + C, N]` (boxes in input pixels) for one image.
pub fn decode_v8(out: &Tensor, net_hw: (usize, usize), conf: f32) -> Result<Vec<Candidate>> {
    let (rows, n) = out.dims2()?;
    if rows < 5 {
        bail!("a YOLOv8 output needs 4 box rows and class rows, found {rows}");
    }
    let v: Vec<f32> = out.flatten_all()?.to_vec1()?;
    let mut res = Vec::new();
    for i in 0..n {
        let (mut best, mut cls) = (f32::MIN, 0);
        for k in 4..rows {
            if v[k * n + i] > best {
                best = v[k * n + i];
                cls = k - 4;
            }
        }
        if best >= conf {
            let g = |r: usize| v[r * n + i];
            res.push(Candidate {
                cxcywh: [g(0) / net_hw.1 as f32, g(1) / net_hw.0 as f32, g(2) / net_hw.1 as f32, g(3) / net_hw.0 as f32],
                class: cls,
                score: best,
            });
        }
    }
    Ok(res)
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let ix = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let iy = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ix * iy;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Class-wise non-maximum suppression on `[x1, y1, x2, y2]` boxes; returns kept indices, best first.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], classes: &[usize], iou_threshold: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap_or(std::cmp::Ordering::Equal));
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep.iter().all(|&k| classes[k] != classes[i] || iou(&boxes[k], &boxes[i]) <= iou_threshold) {
            keep.push(i);
        }
    }
    keep
}

/// Maps candidates to original-image pixels (undoing resize and letterbox padding), runs NMS.
/// `scale` and `pad` are the preprocessing's resize factors and letterbox offsets (y, x).
pub fn finish(cands: &[Candidate], net_hw: (usize, usize), scale: (f32, f32), pad: (f32, f32), iou_threshold: f32, labels: &[String]) -> Vec<Detection> {
    let boxes: Vec<[f32; 4]> = cands
        .iter()
        .map(|c| {
            let (cx, cy) = (c.cxcywh[0] * net_hw.1 as f32, c.cxcywh[1] * net_hw.0 as f32);
            let (w, h) = (c.cxcywh[2] * net_hw.1 as f32, c.cxcywh[3] * net_hw.0 as f32);
            [(cx - w / 2.0 - pad.1) / scale.1, (cy - h / 2.0 - pad.0) / scale.0, (cx + w / 2.0 - pad.1) / scale.1, (cy + h / 2.0 - pad.0) / scale.0]
        })
        .collect();
    let scores: Vec<f32> = cands.iter().map(|c| c.score).collect();
    let classes: Vec<usize> = cands.iter().map(|c| c.class).collect();
    nms(&boxes, &scores, &classes, iou_threshold)
        .into_iter()
        .map(|i| Detection { class: classes[i], label: labels.get(classes[i]).cloned().unwrap_or_else(|| classes[i].to_string()), score: scores[i], bbox: boxes[i] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nms_is_class_wise() {
        let b = [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]];
        let keep = nms(&b, &[0.9, 0.8, 0.7], &[0, 0, 1], 0.45);
        assert_eq!(keep, vec![0, 2]);
    }
}
