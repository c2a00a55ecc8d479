//! The ONNX back end: the IR (or its optimized view) as an ONNX `ModelProto`.
//!
//! * One input `input` `[N, C, H, W]` float32, the batch dynamic (`batch`) unless fixed.
//! * Initializers are the `state_dict` tensors under their own names (folded ones in the
//!   optimized view); every other constant is a `Constant` node.
//! * The node computing an IR node's value is named after it, and so is the value; helper
//!   nodes are `<ir node>/<Op>_<k>`. Identities at inference (dropout) emit nothing.
//! * Outputs: `output`, or for darknet YOLO specs each raw head under its node name.
//! * `metadata_props`: name, variant, reference, task, preprocessing and labels (JSON), and
//!   how to read detection outputs.
//!
//! Nodes the outputs do not depend on (Inception's auxiliary head) are left out.

pub mod builder;
pub mod ops;
pub mod proto;

use crate::diag::Diagnostic;
use crate::export::{input_shapes, outputs, Weights};
use crate::ir::{Activation, Graph, Op, Task};
use crate::passes::Optimized;
use builder::{i64s, Builder};
use proto::{tensor_shape_proto, type_proto, ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorShapeProto, TypeProto, ValueInfoProto};

/// The opset written unless another is asked for (LayerNormalization needs 17).
pub const DEFAULT_OPSET: i64 = 17;
/// The opsets tlc writes.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;
/// Largest model protobuf can hold (2 GiB); bigger ones need ONNX external data.
pub const MAX_BYTES: usize = (1 << 31) - 1;

/// Export settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Operator set version.
    pub opset: i64,
    /// Fixed batch size, or `None` for a dynamic batch dimension.
    pub batch: Option<usize>,
    /// Class names for the metadata (the runtime resolves built-in label sets).
    pub labels: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options { opset: DEFAULT_OPSET, batch: None, labels: Vec::new() }
    }
}

/// Why an export failed.
#[derive(Debug)]
pub enum Error {
    /// A node has no ONNX form in the chosen opset (points at its spec line).
    Node(Box<Diagnostic>),
    /// Parameters the weights lack or give with the wrong size: `(name, problem)`.
    Weights(Vec<(String, String)>),
    /// Invalid options or a model too large for one protobuf.
    Invalid(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Node(d) => write!(f, "{}", d.message),
            Error::Weights(list) => {
                write!(f, "the weights do not fit the model ({} tensors):", list.len())?;
                for (name, problem) in list {
                    write!(f, "\n  {name}: {problem}")?;
                }
                Ok(())
            }
            Error::Invalid(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Fusions of the optimized view, per node.
struct Fusions<'a> {
    acts: &'a [Option<Activation>],
    residual: &'a [bool],
}

/// The graph as an ONNX model; `weights` gives every parameter.
pub fn export(graph: &Graph, weights: Weights, options: &Options) -> Result<ModelProto, Error> {
    build(graph, None, weights, options)
}

/// The optimized view (BatchNorm folded, identities and dead nodes removed) as an ONNX model;
/// `weights` gives its parameters (the folded ones under the conv's names). Fused activations
/// and residual adds follow their conv as ONNX nodes (standard ONNX has no fused conv).
pub fn export_optimized(plan: &Optimized, weights: Weights, options: &Options) -> Result<ModelProto, Error> {
    build(&plan.graph, Some(Fusions { acts: &plan.acts, residual: &plan.residual }), weights, options)
}

/// The model as protobuf bytes.
pub fn encode(model: &ModelProto) -> Result<Vec<u8>, Error> {
    use prost::Message;
    let len = model.encoded_len();
    if len > MAX_BYTES {
        return Err(Error::Invalid(format!("the model is {len} bytes; one ONNX protobuf holds at most 2 GiB (external data is not supported)")));
    }
    Ok(model.encode_to_vec())
}

/// Checks the options before any work (a supported opset, a batch of at least 1).
pub fn check_options(o: &Options) -> Result<(), Error> {
    if !OPSETS.contains(&o.opset) {
        return Err(Error::Invalid(format!("opset {} is not supported: tlc writes opsets {} to {}", o.opset, OPSETS.start(), OPSETS.end())));
    }
    if o.batch == Some(0) {
        return Err(Error::Invalid("the batch size must be at least 1".into()));
    }
    Ok(())
}

/// Nodes the outputs depend on.
fn live(g: &Graph, outs: &[crate::ir::NodeId]) -> Vec<bool> {
    let mut live = vec![false; g.graph.node_count()];
    for o in outs {
        live[o.index()] = true;
    }
    for (id, node) in g.nodes().collect::<Vec<_>>().into_iter().rev() {
        if live[id.index()] {
            for i in &node.inputs {
                live[i.index()] = true;
            }
        }
    }
    live
}

fn build(g: &Graph, fusions: Option<Fusions>, weights: Weights, options: &Options) -> Result<ModelProto, Error> {
    check_options(options)?;
    let mut b = Builder::new(options.opset, options.batch, weights);
    let outs = outputs(g);
    let out_name = |id: crate::ir::NodeId| if outs.len() == 1 { "output".to_string() } else { g.node(id).name.clone() };
    let live = live(g, &outs);
    let mut values = vec![String::new(); g.graph.node_count()];
    for (id, node) in g.nodes() {
        if !live[id.index()] {
            continue;
        }
        if matches!(node.op, Op::Input) {
            values[id.index()] = "input".into();
            continue;
        }
        b.enter(&node.name);
        let start = b.nodes.len();
        let mut ins: Vec<String> = node.inputs.iter().map(|i| values[i.index()].clone()).collect();
        let residual = fusions.as_ref().is_some_and(|f| f.residual[id.index()]);
        let extra = if residual { ins.pop() } else { None };
        let shapes = input_shapes(g, node);
        let ctx = ops::Ctx { node, ins, shapes };
        let mut v = ops::lower(&mut b, &ctx).map_err(|d| Error::Node(Box::new(d)))?;
        if let Some(r) = extra {
            v = b.op("Add", &[&v, &r], vec![]);
        }
        if let Some(a) = fusions.as_ref().and_then(|f| f.acts[id.index()]) {
            v = ops::activation(&mut b, node, a, &v).map_err(|d| Error::Node(Box::new(d)))?;
        }
        let is_out = outs.contains(&id);
        // A node owning a parameter named like itself (class token, layer scale) leaves that
        // name to the initializer.
        let own = if node.params.iter().any(|p| p.name == node.name) { format!("{}/out", node.name) } else { node.name.clone() };
        let target = if is_out { out_name(id) } else { own };
        if b.nodes.len() > start && b.rename_last(&v, &target, &node.name) {
            values[id.index()] = target;
        } else if is_out {
            b.op_as("Identity", &[&v], vec![], &target, &node.name);
            values[id.index()] = target;
        } else {
            values[id.index()] = v;
        }
    }
    if !b.missing.is_empty() {
        return Err(Error::Weights(std::mem::take(&mut b.missing)));
    }
    let batch_dim = options.batch;
    let inputs = vec![value_info("input", batch_dim, &g.meta.input)];
    let outputs = outs.iter().map(|&o| value_info(&out_name(o), batch_dim, g.node(o).shape.as_deref().unwrap_or(&[]))).collect();
    let graph = proto::GraphProto {
        name: Some(g.meta.name.clone()),
        node: b.nodes,
        initializer: b.inits,
        input: inputs,
        output: outputs,
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: Some(ir_version(options.opset)),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(options.opset) }],
        producer_name: Some("tlc".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!("{} exported by tlc", g.meta.name)),
        graph: Some(graph),
        metadata_props: metadata(g, &outs, options),
        ..Default::default()
    })
}

/// The IR version that goes with an opset (ONNX's versioning table).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// A float32 tensor value `[batch, dims...]`.
fn value_info(name: &str, batch: Option<usize>, dims: &[usize]) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value as Dim, Dimension};
    let mut shape = vec![Dimension { value: Some(match batch {
        Some(n) => Dim::DimValue(n as i64),
        None => Dim::DimParam("batch".into()),
    }), ..Default::default() }];
    shape.extend(i64s(dims).into_iter().map(|d| Dimension { value: Some(Dim::DimValue(d)), ..Default::default() }));
    let tensor = type_proto::Tensor { elem_type: Some(proto::tensor_proto::DataType::Float as i32), shape: Some(TensorShapeProto { dim: shape }) };
    ValueInfoProto { name: Some(name.into()), r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }), ..Default::default() }
}

fn metadata(g: &Graph, outs: &[crate::ir::NodeId], options: &Options) -> Vec<StringStringEntryProto> {
    let m = &g.meta;
    let mut props = vec![("name", m.name.clone())];
    if let Some(v) = &m.variant {
        props.push(("variant", v.clone()));
    }
    if let Some(r) = &m.reference {
        props.push(("reference", r.clone()));
    }
    props.push(("task", if m.task == Task::Detect { "detect" } else { "classify" }.into()));
    props.push(("input", format!("NCHW float32 [N, {}, {}, {}], values after `preprocess`", m.input[0], m.input[1], m.input[2])));
    props.push(("preprocess", serde_json::to_string(&m.preprocess).unwrap_or_default()));
    props.push(("labels", serde_json::to_string(&options.labels).unwrap_or_default()));
    if let Some(detect) = detection_note(g, outs) {
        props.push(("outputs", detect));
    }
    props.into_iter().map(|(k, v)| StringStringEntryProto { key: Some(k.into()), value: Some(v) }).collect()
}

/// How to read a detection model's outputs, as JSON.
fn detection_note(g: &Graph, outs: &[crate::ir::NodeId]) -> Option<String> {
    let mut heads = Vec::new();
    for &o in outs {
        let n = g.node(o);
        match &n.op {
            Op::YoloHead { classes, anchors, mask, scale_xy } => heads.push(serde_json::json!({
                "output": n.name, "layout": "raw darknet YOLO [N, A*(5+classes), H, W]; decoding (sigmoid x, y (times scale_xy, minus (scale_xy - 1) / 2), objectness and classes, exp(w, h) times the anchors, in input pixels) is left to the caller",
                "classes": classes, "anchors": mask.iter().map(|&i| anchors[i]).collect::<Vec<_>>(), "mask": mask, "scale_xy": scale_xy,
            })),
            Op::DetectV8 { classes, .. } => heads.push(serde_json::json!({
                "output": "output", "layout": "[N, 4 + classes, anchors]: box centre x, y, width, height in input pixels, then class probabilities (no NMS)",
                "classes": classes,
            })),
            _ => {}
        }
    }
    (!heads.is_empty()).then(|| serde_json::Value::Array(heads).to_string())
}
