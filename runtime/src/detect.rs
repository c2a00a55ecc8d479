//! Detection post-processing: decoding darknet YOLO heads and YOLOv8 outputs, confidence
//! threshold, NMS, and mapping boxes back to the original image.
//!
//! Each format follows its reference's post-processing:
//! - darknet heads (Yolo-Fastest): OpenCV's darknet importer and `cv2.dnn.NMSBoxes`, as in
//!   `assets/scripts/verify_yolofastest.py`: one candidate per box with its argmax class,
//!   score = objectness x class probability, kept when the score exceeds `conf`, then
//!   **class-agnostic** NMS ([`NmsMode::Agnostic`]; `NMSBoxes` sees no classes). Class-wise NMS
//!   does not reproduce the reference on `dog.jpg`: it keeps a "cat" 0.57 on the dog and a
//!   second "bicycle" 0.32 that the reference suppresses.
//! - YOLOv8: Ultralytics `non_max_suppression` defaults: best class per anchor, class-wise NMS
//!   ([`NmsMode::ClassWise`]), at most 300 detections (`max_det`), boxes clipped to the image
//!   (`scale_boxes`).

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
/// `w = e^tw * anchor_w / net_w`, score = σ(obj) · σ(class) of the box's best class (as
/// OpenCV's darknet importer reports it); keeps boxes whose score exceeds `conf` (the
/// reference's `conf > 0.3`).
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
                let (mut best, mut class) = (f32::MIN, 0);
                for k in 0..classes {
                    let logit = at(base + 5 + k, y, x);
                    if logit > best {
                        best = logit;
                        class = k;
                    }
                }
                let s = obj * sigmoid(best);
                if s > conf {
                    out.push(Candidate { cxcywh: [cx, cy, bw, bh], class, score: s });
                }
            }
        }
    }
    Ok(out)
}

/// Decodes a YOLOv8 output `[4 + C, N]` (boxes in input pixels) for one image; keeps anchors
/// whose best class score exceeds `conf` (Ultralytics' `> conf_thres`).
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
        if best > conf {
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

/// Which boxes may suppress each other in NMS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NmsMode {
    /// Only boxes of the same class (Ultralytics' default, darknet's `do_nms_sort`).
    ClassWise,
    /// Any boxes, whatever their classes (OpenCV's `cv2.dnn.NMSBoxes`).
    Agnostic,
}

impl NmsMode {
    /// The reference's mode for a head format: agnostic for darknet heads (OpenCV
    /// `NMSBoxes`), class-wise for YOLOv8 (Ultralytics).
    pub fn reference(darknet: bool) -> NmsMode {
        if darknet {
            NmsMode::Agnostic
        } else {
            NmsMode::ClassWise
        }
    }
}

/// Greedy non-maximum suppression on `[x1, y1, x2, y2]` boxes: a box is dropped when its IoU
/// with a better kept box exceeds `iou_threshold` (and, for [`NmsMode::ClassWise`], that box
/// has its class). Returns kept indices, best first (ties keep input order, like a stable sort).
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], classes: &[usize], iou_threshold: f32, mode: NmsMode) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap_or(std::cmp::Ordering::Equal));
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep.iter().all(|&k| (mode == NmsMode::ClassWise && classes[k] != classes[i]) || iou(&boxes[k], &boxes[i]) <= iou_threshold) {
            keep.push(i);
        }
    }
    keep
}

/// How [`finish`] maps and filters candidates.
#[derive(Clone, Copy, Debug)]
pub struct Post {
    /// Network input size `(h, w)`.
    pub net_hw: (usize, usize),
    /// The preprocessing's resize factors `(y, x)` (resized / original).
    pub scale: (f32, f32),
    /// The preprocessing's letterbox offsets `(top, left)` in input pixels.
    pub pad: (f32, f32),
    /// NMS IoU threshold.
    pub iou: f32,
    /// NMS mode.
    pub mode: NmsMode,
    /// Clip boxes to this original image size `(h, w)` (Ultralytics does; OpenCV does not).
    pub clip: Option<(usize, usize)>,
    /// Keep at most this many detections, best first (Ultralytics' `max_det`, 300).
    pub max_det: Option<usize>,
}

/// Maps candidates to original-image pixels (undoing resize and letterbox padding), runs NMS,
/// optionally clips. Detections come best first.
pub fn finish(cands: &[Candidate], p: &Post, labels: &[String]) -> Vec<Detection> {
    let (net_hw, scale, pad) = (p.net_hw, p.scale, p.pad);
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
    let clip = |b: [f32; 4]| match p.clip {
        Some((h, w)) => [b[0].clamp(0.0, w as f32), b[1].clamp(0.0, h as f32), b[2].clamp(0.0, w as f32), b[3].clamp(0.0, h as f32)],
        None => b,
    };
    nms(&boxes, &scores, &classes, p.iou, p.mode)
        .into_iter()
        .take(p.max_det.unwrap_or(usize::MAX))
        .map(|i| Detection { class: classes[i], label: labels.get(classes[i]).cloned().unwrap_or_else(|| classes[i].to_string()), score: scores[i], bbox: clip(boxes[i]) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nms_class_wise_and_agnostic() {
        let b = [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]];
        let (s, c) = ([0.9, 0.8, 0.7, 0.5], [0, 0, 1, 0]);
        assert_eq!(nms(&b, &s, &c, 0.45, NmsMode::ClassWise), vec![0, 2, 3]);
        assert_eq!(nms(&b, &s, &c, 0.45, NmsMode::Agnostic), vec![0, 3]);
    }

    #[test]
    fn finish_maps_letterbox_and_clips() {
        // A 100x50 (w x h) image letterboxed to 64x64: gain 0.64, 16 px of padding on top.
        let c = Candidate { cxcywh: [0.5, 0.5, 1.0, 0.5], class: 2, score: 0.9 };
        let mut p = Post { net_hw: (64, 64), scale: (0.64, 0.64), pad: (16.0, 0.0), iou: 0.45, mode: NmsMode::ClassWise, clip: None, max_det: None };
        let d = finish(std::slice::from_ref(&c), &p, &["a".into(), "b".into(), "c".into()]);
        assert_eq!(d[0].label, "c");
        assert!(d[0].bbox.iter().zip([0.0, 0.0, 100.0, 50.0]).all(|(a, b)| (a - b).abs() < 1e-4), "{:?}", d[0].bbox);
        p.pad = (20.0, 0.0);
        p.clip = Some((50, 100));
        let d = finish(std::slice::from_ref(&c), &p, &[]);
        assert_eq!((d[0].label.as_str(), d[0].bbox[1]), ("2", 0.0));
        let far = Candidate { cxcywh: [0.1, 0.1, 0.01, 0.01], class: 2, score: 0.95 };
        p.max_det = Some(1);
        let d = finish(&[c, far], &p, &[]);
        assert_eq!((d.len(), d[0].score), (1, 0.95));
    }
}
