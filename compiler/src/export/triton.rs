//! The Triton back end: a Triton Inference Server model repository around the ONNX export,
//! `REPO/<name>/1/model.onnx` and `REPO/<name>/config.pbtxt` (ONNX Runtime backend, the
//! model's input and output names, dims and float32 type, dynamic batching), plus
//! `labels.txt` for classifiers (Triton's classification extension reads it). Returned as
//! files for the caller to write.

use super::onnx::proto::{tensor_shape_proto::dimension::Value as Dim, type_proto, ModelProto, ValueInfoProto};
use crate::ir::{Graph, Task};
use std::fmt::Write;

/// Default `max_batch_size` of a dynamic-batch model.
pub const DEFAULT_MAX_BATCH: usize = 8;

/// One file of the repository: path relative to the repository root, and contents.
pub type File = (String, Vec<u8>);

/// The model's name in the repository: the spec name (and variant), in characters Triton and
/// file systems accept.
pub fn model_name(g: &Graph) -> String {
    let raw = match &g.meta.variant {
        Some(v) => format!("{}_{v}", g.meta.name),
        None => g.meta.name.clone(),
    };
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// Dims of a value: `None` for a symbolic (batch) dim.
fn dims(v: &ValueInfoProto) -> Vec<Option<i64>> {
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else { return vec![] };
    t.shape.iter().flat_map(|s| s.dim.iter()).map(|d| match d.value {
        Some(Dim::DimValue(n)) => Some(n),
        _ => None,
    }).collect()
}

fn tensor_block(out: &mut String, v: &ValueInfoProto, batched: bool, label_file: bool) {
    let d = dims(v);
    let shown: Vec<String> = d.iter().skip(batched as usize).map(|x| x.unwrap_or(-1).to_string()).collect();
    let _ = writeln!(out, "  {{\n    name: \"{}\"\n    data_type: TYPE_FP32\n    dims: [ {} ]", v.name.as_deref().unwrap_or(""), shown.join(", "));
    if label_file {
        out.push_str("    label_filename: \"labels.txt\"\n");
    }
    out.push_str("  }");
}

/// `config.pbtxt` for `model` (the ONNX export of `g`): a dynamic batch dimension becomes
/// `max_batch_size` with dynamic batching; a fixed batch is part of the dims.
pub fn config(g: &Graph, model: &ModelProto, max_batch: usize, labels: bool) -> String {
    let graph = model.graph.as_ref();
    let inputs: Vec<&ValueInfoProto> = graph.map(|g| g.input.iter().collect()).unwrap_or_default();
    let outputs: Vec<&ValueInfoProto> = graph.map(|g| g.output.iter().collect()).unwrap_or_default();
    let batched = inputs.first().is_some_and(|i| dims(i).first() == Some(&None));
    let mut s = String::new();
    let _ = writeln!(s, "# {} exported by tlc: ONNX Runtime backend{}.", g.meta.name, if batched { ", dynamic batching" } else { ", fixed batch" });
    let _ = writeln!(s, "name: \"{}\"\nbackend: \"onnxruntime\"\nmax_batch_size: {}", model_name(g), if batched { max_batch } else { 0 });
    for (key, list, with_labels) in [("input", &inputs, false), ("output", &outputs, labels && g.meta.task == Task::Classify)] {
        let _ = writeln!(s, "{key} [");
        for (i, v) in list.iter().enumerate() {
            tensor_block(&mut s, v, batched, with_labels);
            s.push_str(if i + 1 < list.len() { ",\n" } else { "\n" });
        }
        s.push_str("]\n");
    }
    if batched {
        s.push_str("dynamic_batching { }\n");
    }
    s
}

/// The repository's files: `<name>/config.pbtxt`, `<name>/1/model.onnx` (the given bytes) and,
/// for a classifier with label names, `<name>/labels.txt`.
pub fn repository(g: &Graph, model: &ModelProto, onnx_bytes: Vec<u8>, labels: &[String], max_batch: usize) -> Vec<File> {
    let name = model_name(g);
    let with_labels = !labels.is_empty() && g.meta.task == Task::Classify;
    let mut files = vec![
        (format!("{name}/config.pbtxt"), config(g, model, max_batch, with_labels).into_bytes()),
        (format!("{name}/1/model.onnx"), onnx_bytes),
    ];
    if with_labels {
        files.push((format!("{name}/labels.txt"), labels.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes()));
    }
    files
}
