//! Detection heads. YOLOv8's decode (Ultralytics `Detect` at inference) is written out in ONNX
//! ops: the levels flattened and concatenated, the DFL softmax over the `reg_max` bins times
//! the `dfl.conv.weight` projection, distances to boxes around constant anchor points, times
//! the constant strides, and sigmoid class scores. Darknet YOLO heads stay raw (see the
//! dispatcher): each is a model output and the caller decodes it.

use super::{Builder, Ctx};
use crate::export::onnx::builder::{attr_i, i64s};

/// `detect_v8`: per-level `[4*reg_max + classes, H, W]` inputs to `[4 + classes, anchors]`
/// (cx, cy, w, h in input pixels, then class probabilities).
pub fn detect_v8(b: &mut Builder, c: &Ctx, classes: usize, reg_max: usize, strides: &[usize]) -> String {
    let no = 4 * reg_max + classes;
    let mut flat = Vec::new();
    let (mut ax, mut ay, mut st) = (Vec::new(), Vec::new(), Vec::new());
    for (k, (x, s)) in c.ins.iter().zip(c.shapes.iter()).enumerate() {
        let (h, w) = (s[1], s[2]);
        flat.push(b.reshape(x, &[no, h * w]));
        for yy in 0..h {
            for xx in 0..w {
                ax.push(xx as f32 + 0.5);
                ay.push(yy as f32 + 0.5);
                st.push(strides[k] as f32);
            }
        }
    }
    let a = ax.len();
    let refs: Vec<&str> = flat.iter().map(String::as_str).collect();
    let x = b.op("Concat", &refs, vec![attr_i("axis", 2)]);
    let boxes = b.slice(&x, 1, 0, 4 * reg_max as i64, 1);
    let cls = b.slice(&x, 1, 4 * reg_max as i64, no as i64, 1);
    let boxes = b.reshape(&boxes, &[4, reg_max, a]);
    let prob = b.op("Softmax", &[&boxes], vec![attr_i("axis", 2)]);
    let proj = b.param(c.node, "dfl.conv.weight");
    let shape = b.ints(&i64s(&[reg_max, 1]));
    let proj = b.op("Reshape", &[&proj, &shape], vec![]);
    let weighted = b.op("Mul", &[&prob, &proj], vec![]);
    let dist = b.reduce("ReduceSum", &weighted, &[2], false);
    let lt = b.slice(&dist, 1, 0, 2, 1);
    let rb = b.slice(&dist, 1, 2, 4, 1);
    let anchors = b.floats(&[2, a], &[ax, ay].concat());
    let x1y1 = b.op("Sub", &[&anchors, &lt], vec![]);
    let x2y2 = b.op("Add", &[&anchors, &rb], vec![]);
    let sum = b.op("Add", &[&x1y1, &x2y2], vec![]);
    let half = b.scalar_f32(0.5);
    let centre = b.op("Mul", &[&sum, &half], vec![]);
    let size = b.op("Sub", &[&x2y2, &x1y1], vec![]);
    let xywh = b.op("Concat", &[&centre, &size], vec![attr_i("axis", 1)]);
    let strides = b.floats(&[1, a], &st);
    let dbox = b.op("Mul", &[&xywh, &strides], vec![]);
    let scores = b.op("Sigmoid", &[&cls], vec![]);
    b.op("Concat", &[&dbox, &scores], vec![attr_i("axis", 1)])
}
