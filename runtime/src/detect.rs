//! Detection post-processing: decoding darknet YOLO heads and YOLOv8 outputs, confidence
//! threshold, NMS, and mapping boxes back to the original image.
//!
//! Each format follows its reference's post-processing:
//! - darknet heads (Yolo-Fastest): OpenCV's darknet importer and `cv2.dnn.NMSBoxes`, as in
//!   `assets/scripts/verify_yolofastest.py`: one candidate per box with its argmax class,
//!   score = objectness x class probability, kept when the score exceeds `conf`, then the
//!   script's **integer** rectangles in original-image pixels and **class-agnostic** NMS with
//!   OpenCV's integer-rectangle overlap ([`NmsMode::OpenCv`]; `NMSBoxes` sees no classes).
//!   Class-wise NMS does not reproduce the reference on `dog.jpg`: it keeps a "cat" 0.57 on the
//!   dog and a second "bicycle" 0.32 that the reference suppresses.
//! - YOLOv8: Ultralytics `non_max_suppression` defaults: best class per anchor, class-wise NMS
//!   ([`NmsMode::ClassWise`]), at most 300 detections (`max_det`), boxes clipped to the image
//!   (`scale_boxes`).

use crate::preprocess::Prepared;
use anyhow::{bail, Result};
use candle_core::Tensor;
use tlc_compiler::ir::{Graph, NodeId, Op};

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

/// Decodes one darknet `[yolo]` head (`[A*(5+C), H, W]` for one image): `x = (σ(tx)·α − (α−1)/2
/// + gx)/W` with α = `scale_x_y` (darknet's `forward_yolo_layer`; 1 for plain YOLOv3 heads),
/// `w = e^tw * anchor_w / net_w`, score = σ(obj) · σ(class) of the box's best class (as
/// OpenCV's darknet importer reports it); keeps boxes whose score exceeds `conf` (the
/// reference's `conf > 0.3`).
pub fn decode_darknet(head: &Tensor, anchors: &[[usize; 2]], mask: &[usize], classes: usize, scale_xy: f32, net_hw: (usize, usize), conf: f32) -> Result<Vec<Candidate>> {
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
                let centre = |t: f32| sigmoid(t) * scale_xy - (scale_xy - 1.0) / 2.0;
                let cx = (centre(at(base, y, x)) + x as f32) / w as f32;
                let cy = (centre(at(base + 1, y, x)) + y as f32) / h as f32;
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

/// An OpenCV `cv::Rect` (`Rect2i`): whole-pixel left, top, width and height.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    /// Left.
    pub x: i64,
    /// Top.
    pub y: i64,
    /// Width.
    pub width: i64,
    /// Height.
    pub height: i64,
}

impl Rect {
    /// `width * height` (OpenCV's `Rect::area`, no `+1`).
    pub fn area(&self) -> i64 {
        self.width * self.height
    }

    /// Area of `self & other`: OpenCV's `operator&=` gives an empty `Rect()` when the
    /// intersection has no positive width or height.
    pub fn intersection_area(&self, other: &Rect) -> i64 {
        let w = (self.x + self.width).min(other.x + other.width) - self.x.max(other.x);
        let h = (self.y + self.height).min(other.y + other.height) - self.y.max(other.y);
        if w <= 0 || h <= 0 {
            0
        } else {
            w * h
        }
    }

    /// `[x1, y1, x2, y2]` = `[x, y, x + width, y + height]`.
    pub fn xyxy(&self) -> [f32; 4] {
        [self.x as f32, self.y as f32, (self.x + self.width) as f32, (self.y + self.height) as f32]
    }
}

/// OpenCV's `rectOverlap` for `Rect` (modules/dnn/src/nms.cpp:
/// `1.f - static_cast<float>(jaccardDistance(a, b))`), with `jaccardDistance` from
/// core/include/opencv2/core/types.hpp: `0` when `Aa + Ab <= 0` (so two empty rectangles
/// overlap fully), else `1.0 - Aab / (Aa + Ab - Aab)` in double with integer areas.
pub fn rect_overlap(a: &Rect, b: &Rect) -> f32 {
    let (aa, ab) = (a.area(), b.area());
    if aa + ab <= 0 {
        return 1.0;
    }
    let aab = a.intersection_area(b) as f64;
    1.0 - (1.0 - aab / ((aa + ab) as f64 - aab)) as f32
}

/// `cv2.dnn.NMSBoxes(rects, scores, score_threshold, nms_threshold)` with `eta = 1`,
/// `top_k = 0` (`NMSFast_` in modules/dnn/src/nms.inl.hpp): `std::stable_sort` by descending
/// score, then a box is kept when [`rect_overlap`] with every kept box is `<= nms_threshold`.
/// Scores are expected above the score threshold already (the caller's `conf`).
pub fn nms_boxes(rects: &[Rect], scores: &[f32], nms_threshold: f32) -> Vec<usize> {
    greedy(scores, |kept, i| rect_overlap(&rects[i], &rects[kept]) <= nms_threshold)
}

/// Greedy NMS: candidates by descending score (stable: ties keep input order), each kept when
/// `compatible(kept, candidate)` holds for every already kept box.
fn greedy(scores: &[f32], compatible: impl Fn(usize, usize) -> bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap_or(std::cmp::Ordering::Equal));
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep.iter().all(|&k| compatible(k, i)) {
            keep.push(i);
        }
    }
    keep
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
    /// Only boxes of the same class (Ultralytics' default, darknet's `do_nms_sort`), float IoU.
    ClassWise,
    /// Any boxes, whatever their classes, float IoU.
    Agnostic,
    /// `verify_yolofastest.py`'s `cv2.dnn.NMSBoxes`: class-agnostic, on the script's integer
    /// rectangles in original pixels, with OpenCV's [`rect_overlap`]; detections report those
    /// rectangles.
    OpenCv,
}

impl NmsMode {
    /// The reference's mode for a head format: OpenCV's `NMSBoxes` for darknet heads,
    /// class-wise for YOLOv8 (Ultralytics).
    pub fn reference(darknet: bool) -> NmsMode {
        if darknet {
            NmsMode::OpenCv
        } else {
            NmsMode::ClassWise
        }
    }
}

/// Greedy non-maximum suppression on `[x1, y1, x2, y2]` boxes: a box is dropped when its IoU
/// with a better kept box exceeds `iou_threshold` (and, for [`NmsMode::ClassWise`], that box
/// has its class). Returns kept indices, best first (ties keep input order, like a stable sort).
/// [`NmsMode::OpenCv`] is treated as [`NmsMode::Agnostic`] here (its rectangles are
/// [`nms_boxes`]'s).
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], classes: &[usize], iou_threshold: f32, mode: NmsMode) -> Vec<usize> {
    greedy(scores, |k, i| (mode == NmsMode::ClassWise && classes[k] != classes[i]) || iou(&boxes[k], &boxes[i]) <= iou_threshold)
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

/// A candidate's `[x1, y1, x2, y2]` in original-image pixels (undoing resize and letterbox).
fn float_box(c: &Candidate, p: &Post) -> [f32; 4] {
    let (net_hw, scale, pad) = (p.net_hw, p.scale, p.pad);
    let (cx, cy) = (c.cxcywh[0] * net_hw.1 as f32, c.cxcywh[1] * net_hw.0 as f32);
    let (w, h) = (c.cxcywh[2] * net_hw.1 as f32, c.cxcywh[3] * net_hw.0 as f32);
    [(cx - w / 2.0 - pad.1) / scale.1, (cy - h / 2.0 - pad.0) / scale.0, (cx + w / 2.0 - pad.1) / scale.1, (cy + h / 2.0 - pad.0) / scale.0]
}

/// Original pixels per unit of normalised input coordinate, `net / scale`: for a plain resize
/// the image's width or height, rounded to whole pixels to undo the f32 rounding of `scale`.
fn extent(net: usize, scale: f32) -> f64 {
    let e = net as f64 / scale as f64;
    if (e - e.round()).abs() < 1e-3 {
        e.round()
    } else {
        e
    }
}

/// `verify_yolofastest.py`'s box of a candidate: `cx, cy, w, h = r[0]*W, r[1]*H, r[2]*W,
/// r[3]*H` and `[int(cx - w/2), int(cy - h/2), int(w), int(h)]`, evaluated in f64 (NumPy 1.x
/// promotes a float32 scalar times a Python int to float64) with `int()` truncating towards
/// zero. Letterbox padding, which the script never has, is undone first.
fn script_rect(c: &Candidate, p: &Post) -> Rect {
    let (ex, ey) = (extent(p.net_hw.1, p.scale.1), extent(p.net_hw.0, p.scale.0));
    let cx = c.cxcywh[0] as f64 * ex - p.pad.1 as f64 / p.scale.1 as f64;
    let cy = c.cxcywh[1] as f64 * ey - p.pad.0 as f64 / p.scale.0 as f64;
    let (w, h) = (c.cxcywh[2] as f64 * ex, c.cxcywh[3] as f64 * ey);
    Rect { x: (cx - w / 2.0).trunc() as i64, y: (cy - h / 2.0).trunc() as i64, width: w.trunc() as i64, height: h.trunc() as i64 }
}

/// Maps candidates to original-image pixels (undoing resize and letterbox padding; whole-pixel
/// rectangles for [`NmsMode::OpenCv`]), runs NMS, optionally clips. Detections come best first.
pub fn finish(cands: &[Candidate], p: &Post, labels: &[String]) -> Vec<Detection> {
    let scores: Vec<f32> = cands.iter().map(|c| c.score).collect();
    let classes: Vec<usize> = cands.iter().map(|c| c.class).collect();
    let (kept, boxes) = if p.mode == NmsMode::OpenCv {
        let rects: Vec<Rect> = cands.iter().map(|c| script_rect(c, p)).collect();
        (nms_boxes(&rects, &scores, p.iou), rects.iter().map(Rect::xyxy).collect::<Vec<_>>())
    } else {
        let boxes: Vec<[f32; 4]> = cands.iter().map(|c| float_box(c, p)).collect();
        (nms(&boxes, &scores, &classes, p.iou, p.mode), boxes)
    };
    let clip = |b: [f32; 4]| match p.clip {
        Some((h, w)) => [b[0].clamp(0.0, w as f32), b[1].clamp(0.0, h as f32), b[2].clamp(0.0, w as f32), b[3].clamp(0.0, h as f32)],
        None => b,
    };
    kept.into_iter()
        .take(p.max_det.unwrap_or(usize::MAX))
        .map(|i| Detection { class: classes[i], label: labels.get(classes[i]).cloned().unwrap_or_else(|| classes[i].to_string()), score: scores[i], bbox: clip(boxes[i]) })
        .collect()
}

/// How detections are post-processed (`tlc run --conf --iou --nms`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectOptions {
    /// Confidence threshold; `None`: the head format's reference (0.3 for darknet heads as
    /// `verify_yolofastest.py`, 0.25 for YOLOv8 as Ultralytics).
    pub conf: Option<f32>,
    /// NMS IoU threshold.
    pub iou: f32,
    /// NMS mode; `None`: the reference's for the head format ([`NmsMode::reference`]).
    pub nms: Option<NmsMode>,
}

/// A darknet `[yolo]` head of a graph.
struct DarknetHead {
    node: NodeId,
    classes: usize,
    anchors: Vec<[usize; 2]>,
    mask: Vec<usize>,
    scale_xy: f32,
}

/// Ultralytics' `max_det`.
const V8_MAX_DET: usize = 300;

/// The detection policy of a detection graph (`task: detect`): which values to decode (the
/// darknet `YoloHead` nodes, else the YOLOv8 output), thresholds, NMS mode, clipping and
/// `max_det` as each format's reference does them.
pub struct Detector {
    /// Darknet heads (none for YOLOv8).
    heads: Vec<DarknetHead>,
    net_hw: (usize, usize),
    options: DetectOptions,
    labels: Vec<String>,
}

impl Detector {
    /// The detector of `graph` with `options`; class names from the spec's labels.
    pub fn new(graph: &Graph, options: DetectOptions) -> Detector {
        let heads = graph
            .nodes()
            .filter_map(|(id, n)| match &n.op {
                Op::YoloHead { classes, anchors, mask, scale_xy } => Some(DarknetHead { node: id, classes: *classes, anchors: anchors.clone(), mask: mask.clone(), scale_xy: *scale_xy as f32 }),
                _ => None,
            })
            .collect();
        let input = &graph.meta.input;
        Detector { heads, net_hw: (input[1], input[2]), options, labels: crate::labels::names(&graph.meta.labels) }
    }

    /// Nodes whose values [`Detector::detect`] needs besides the output (the darknet heads).
    pub fn taps(&self) -> Vec<NodeId> {
        self.heads.iter().map(|h| h.node).collect()
    }

    fn darknet(&self) -> bool {
        !self.heads.is_empty()
    }

    /// Detections of image `i` of a batch in its original pixels: `output` is the model's
    /// output, `head_values` the values of [`Detector::taps`], `image` the image's preprocessing.
    pub fn detect(&self, output: &Tensor, head_values: &[Tensor], i: usize, image: &Prepared) -> Result<Vec<Detection>> {
        let darknet = self.darknet();
        let mut cands = Vec::new();
        if darknet {
            let conf = self.options.conf.unwrap_or(0.3);
            for (h, t) in self.heads.iter().zip(head_values) {
                cands.extend(decode_darknet(&t.get(i)?, &h.anchors, &h.mask, h.classes, h.scale_xy, self.net_hw, conf)?);
            }
        } else {
            cands = decode_v8(&output.get(i)?, self.net_hw, self.options.conf.unwrap_or(0.25))?;
        }
        let post = Post {
            net_hw: self.net_hw,
            scale: image.scale,
            pad: image.pad,
            iou: self.options.iou,
            mode: self.options.nms.unwrap_or(NmsMode::reference(darknet)),
            // OpenCV reports darknet boxes unclipped (they may cross the border); Ultralytics clips.
            clip: (!darknet).then_some(image.original),
            max_det: (!darknet).then_some(V8_MAX_DET),
        };
        Ok(finish(&cands, &post, &self.labels))
    }
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
    fn darknet_scale_x_y_stretches_box_centres() {
        // One cell of a 2x2 grid, one anchor, one class: σ(ln 3) = 0.75, so the centre offset
        // is 0.75 with scale_x_y 1 and 0.75·2 − 0.5 = 1.0 with scale_x_y 2 (darknet's
        // `scal_add_cpu(…, scale_x_y, -0.5*(scale_x_y - 1), …)`).
        let mut v = vec![-20.0f32; 6 * 4];
        for (ch, val) in [(0, 3f32.ln()), (1, 3f32.ln()), (2, 0.0), (3, 0.0), (4, 20.0), (5, 20.0)] {
            v[ch * 4] = val; // cell (0, 0)
        }
        let head = Tensor::from_vec(v, (6, 2, 2), &candle_core::Device::Cpu).unwrap();
        for (scale, want) in [(1.0, 0.75 / 2.0), (2.0, 1.0 / 2.0)] {
            let c = decode_darknet(&head, &[[4, 4]], &[0], 1, scale, (8, 8), 0.5).unwrap();
            assert_eq!(c.len(), 1);
            assert!((c[0].cxcywh[0] - want).abs() < 1e-6 && (c[0].cxcywh[1] - want).abs() < 1e-6, "{:?}", c[0].cxcywh);
            assert_eq!(c[0].cxcywh[2], 0.5);
        }
    }

    /// A candidate in a 256x256 image run at 256x256, from pixel left, top, width, height.
    fn px(left: f64, top: f64, w: f64, h: f64, score: f32) -> Candidate {
        let n = |v: f64| (v / 256.0) as f32;
        Candidate { cxcywh: [n(left + w / 2.0), n(top + h / 2.0), n(w), n(h)], class: 0, score }
    }

    fn post(mode: NmsMode) -> Post {
        Post { net_hw: (256, 256), scale: (1.0, 1.0), pad: (0.0, 0.0), iou: 0.45, mode, clip: None, max_det: None }
    }

    #[test]
    fn opencv_nms_uses_the_scripts_integer_rectangles() {
        // `a` is exactly (40, 40, 20, 20). `b` (47.5, 40, 20.9, 20): float IoU 250/568 = 0.440
        // keeps it, its int rect (47, 40, 20, 20) overlaps 260/540 = 0.481. `c` (32.9, 40,
        // 19.9, 20): float IoU 256/542 = 0.472 suppresses it, (32, 40, 19, 20) overlaps
        // 220/560 = 0.393.
        let cands = [px(40.0, 40.0, 20.0, 20.0, 0.9), px(47.5, 40.0, 20.9, 20.0, 0.8), px(32.9, 40.0, 19.9, 20.0, 0.7)];
        let scores = |d: &[Detection]| d.iter().map(|d| d.score).collect::<Vec<_>>();
        assert_eq!(scores(&finish(&cands, &post(NmsMode::Agnostic), &[])), [0.9, 0.8]);
        let d = finish(&cands, &post(NmsMode::OpenCv), &[]);
        assert_eq!(scores(&d), [0.9, 0.7]);
        assert_eq!((d[0].bbox, d[1].bbox), ([40.0, 40.0, 60.0, 60.0], [32.0, 40.0, 51.0, 60.0]));
        assert_eq!(NmsMode::reference(true), NmsMode::OpenCv);
        assert_eq!(NmsMode::reference(false), NmsMode::ClassWise);
    }

    #[test]
    fn script_rect_truncates_towards_zero_in_the_original_pixels() {
        // left = 6.3 - 10 = -3.7 and top = -0.5: Python's int() gives -3 and 0.
        let d = finish(&[px(-3.7, -0.5, 20.0, 10.6, 0.5)], &post(NmsMode::OpenCv), &[]);
        assert_eq!(d[0].bbox, [-3.0, 0.0, 17.0, 10.0]);
        // dog.jpg: 768x576 resized to 320x320; the f32 scale still gives whole-pixel extents.
        assert_eq!((extent(320, (320.0 / 768.0) as f32), extent(320, (320.0 / 576.0) as f32)), (768.0, 576.0));
        let p = Post { net_hw: (320, 320), scale: ((320.0 / 576.0) as f32, (320.0 / 768.0) as f32), ..post(NmsMode::OpenCv) };
        let c = Candidate { cxcywh: [0.5, 0.5, 0.25, 0.125], class: 0, score: 0.5 };
        assert_eq!(finish(&[c], &p, &[])[0].bbox, [288.0, 252.0, 480.0, 324.0]);
    }

    #[test]
    fn rect_overlap_follows_opencv() {
        let r = |x, y, width, height| Rect { x, y, width, height };
        // IoU exactly 18/40 = 0.45: `1.f - (float)(1.0 - 0.45)` equals 0.45f, and `<=` keeps it.
        let (a, b) = (r(0, 0, 29, 1), r(11, 0, 29, 1));
        assert_eq!(rect_overlap(&a, &b), 0.45f32);
        assert_eq!(nms_boxes(&[a, b], &[0.9, 0.8], 0.45), [0, 1]);
        // Two empty rectangles overlap fully (jaccardDistance 0); an empty one overlaps nothing.
        assert_eq!(rect_overlap(&r(5, 5, 0, 3), &r(100, 100, 0, 0)), 1.0);
        assert_eq!(rect_overlap(&r(5, 5, 0, 3), &r(0, 0, 10, 10)), 0.0);
        // Touching edges do not intersect; equal scores keep input order (std::stable_sort).
        assert_eq!(r(0, 0, 10, 10).intersection_area(&r(10, 0, 10, 10)), 0);
        assert_eq!(nms_boxes(&[r(0, 0, 9, 9), r(50, 0, 9, 9), r(1, 0, 9, 9)], &[0.5, 0.5, 0.5], 0.45), [0, 1]);
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
