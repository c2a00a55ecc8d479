//! The ONNX graph under construction: nodes, initializers (the `state_dict` tensors, by their
//! names), constants, and value names derived from the IR node being lowered.

use super::proto::{attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, NodeProto, TensorProto};
use crate::export::Weights;
use crate::ir::Node;
use std::collections::HashSet;

/// Builds the node list and initializers of one ONNX graph.
pub struct Builder<'a> {
    /// Operator set version the nodes are written for.
    pub opset: i64,
    /// Fixed batch size, or `None` for a dynamic batch.
    pub batch: Option<usize>,
    /// Nodes in topological order.
    pub nodes: Vec<NodeProto>,
    /// Initializers (the model's parameters).
    pub inits: Vec<TensorProto>,
    /// Parameters the weights lookup lacked or gave with the wrong size: `(name, problem)`.
    pub missing: Vec<(String, String)>,
    weights: Weights<'a>,
    done: HashSet<String>,
    scope: String,
    count: usize,
}

/// An integer attribute.
pub fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Int as i32), i: Some(v), ..Default::default() }
}

/// A float attribute.
pub fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Float as i32), f: Some(v), ..Default::default() }
}

/// A list-of-integers attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Ints as i32), ints: v.to_vec(), ..Default::default() }
}

/// A string attribute.
pub fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::String as i32), s: Some(v.as_bytes().to_vec()), ..Default::default() }
}

/// Sizes as ONNX integers.
pub fn i64s(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// A float tensor with raw little-endian data.
pub fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn i64_tensor(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Int64 as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

impl<'a> Builder<'a> {
    /// An empty graph for `opset` that reads parameters from `weights`.
    pub fn new(opset: i64, batch: Option<usize>, weights: Weights<'a>) -> Builder<'a> {
        Builder { opset, batch, nodes: Vec::new(), inits: Vec::new(), missing: Vec::new(), weights, done: HashSet::new(), scope: String::new(), count: 0 }
    }

    /// Names helper values after the IR node `name` from now on.
    pub fn enter(&mut self, name: &str) {
        self.scope = name.to_string();
        self.count = 0;
    }

    /// Adds a node with one output and returns the output's name (`<ir node>/<Op>_<k>`).
    pub fn op(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = format!("{}/{}_{}", self.scope, op_type, self.count);
        self.count += 1;
        self.nodes.push(NodeProto {
            name: Some(out.clone()),
            op_type: Some(op_type.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// Adds a node with a chosen output name and node name.
    pub fn op_as(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<AttributeProto>, output: &str, name: &str) {
        self.nodes.push(NodeProto {
            name: Some(name.into()),
            op_type: Some(op_type.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Renames the value `from` to `to` if the last node produced it (the final node of an
    /// IR node's mapping takes the IR node's name); returns whether it did.
    pub fn rename_last(&mut self, from: &str, to: &str, node_name: &str) -> bool {
        match self.nodes.last_mut() {
            Some(n) if n.output.first().map(String::as_str) == Some(from) => {
                n.output[0] = to.to_string();
                n.name = Some(node_name.to_string());
                true
            }
            _ => false,
        }
    }

    /// The parameter `<node>.<suffix>` (`<node>` for an empty suffix) as an initializer,
    /// read once from the weights; returns its name.
    pub fn param(&mut self, node: &Node, suffix: &str) -> String {
        let name = if suffix.is_empty() { node.name.clone() } else { format!("{}.{suffix}", node.name) };
        if self.done.insert(name.clone()) {
            let shape = node.params.iter().find(|p| p.name == name).map(|p| p.shape.clone());
            match (shape, (self.weights)(&name)) {
                (None, _) => self.missing.push((name.clone(), "the graph does not declare it".into())),
                (Some(_), None) => self.missing.push((name.clone(), "missing".into())),
                (Some(s), Some(v)) if v.len() != s.iter().product::<usize>() => {
                    self.missing.push((name.clone(), format!("{} values for shape {s:?}", v.len())))
                }
                (Some(s), Some(v)) => self.inits.push(f32_tensor(&name, &i64s(&s), &v)),
            }
        }
        name
    }

    /// A constant 1-D int64 tensor.
    pub fn ints(&mut self, values: &[i64]) -> String {
        self.constant(i64_tensor("", &[values.len() as i64], values))
    }

    /// A constant 0-D int64 tensor.
    pub fn scalar_i64(&mut self, value: i64) -> String {
        self.constant(i64_tensor("", &[], &[value]))
    }

    /// A constant float tensor of shape `dims`.
    pub fn floats(&mut self, dims: &[usize], values: &[f32]) -> String {
        self.constant(f32_tensor("", &i64s(dims), values))
    }

    /// A constant 0-D float.
    pub fn scalar_f32(&mut self, value: f32) -> String {
        self.constant(f32_tensor("", &[], &[value]))
    }

    fn constant(&mut self, t: TensorProto) -> String {
        let attr = AttributeProto { name: Some("value".into()), r#type: Some(AttributeType::Tensor as i32), t: Some(t), ..Default::default() };
        self.op("Constant", &[], vec![attr])
    }

    /// `Reshape` to `[batch, dims...]` (the batch as -1, every other dim known).
    pub fn reshape(&mut self, x: &str, dims: &[usize]) -> String {
        let mut shape = vec![-1];
        shape.extend(i64s(dims));
        let s = self.ints(&shape);
        self.op("Reshape", &[x, &s], vec![])
    }

    /// `Transpose` with a full permutation (batch included).
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op("Transpose", &[x], vec![attr_ints("perm", perm)])
    }

    /// `Slice` of `[start, end)` with `step` along `axis`.
    pub fn slice(&mut self, x: &str, axis: i64, start: i64, end: i64, step: i64) -> String {
        let (s, e, a, st) = (self.ints(&[start]), self.ints(&[end]), self.ints(&[axis]), self.ints(&[step]));
        self.op("Slice", &[x, &s, &e, &a, &st], vec![])
    }

    /// A reduction over `axes` (axes as an input from opset 18, or 13 for ReduceSum).
    pub fn reduce(&mut self, op_type: &str, x: &str, axes: &[i64], keepdims: bool) -> String {
        let as_input = self.opset >= 18 || (op_type == "ReduceSum" && self.opset >= 13);
        let keep = attr_i("keepdims", keepdims as i64);
        if as_input {
            let a = self.ints(axes);
            self.op(op_type, &[x, &a], vec![keep])
        } else {
            self.op(op_type, &[x], vec![attr_ints("axes", axes), keep])
        }
    }

    /// `Pad` with constant zeros; `pads` in ONNX order (all begins, then all ends).
    pub fn pad(&mut self, x: &str, pads: &[i64]) -> String {
        let p = self.ints(pads);
        self.op("Pad", &[x, &p], vec![attr_s("mode", "constant")])
    }

    /// `x @ w^T + b` on the last dim, with `w` and `b` the parameters `<node>.<w>` and
    /// `<node>.<b>` in PyTorch layout (`Gemm` for a 2-D input, else `MatMul` + `Add`).
    pub fn linear(&mut self, node: &Node, x: &str, rank: usize, w: &str, b: Option<&str>) -> String {
        let w = self.param(node, w);
        let b = b.map(|b| self.param(node, b));
        if rank == 2 {
            let mut ins = vec![x, w.as_str()];
            if let Some(b) = &b {
                ins.push(b);
            }
            return self.op("Gemm", &ins, vec![attr_i("transB", 1)]);
        }
        let wt = self.transpose(&w, &[1, 0]);
        let y = self.op("MatMul", &[x, &wt], vec![]);
        match b {
            Some(b) => self.op("Add", &[&y, &b], vec![]),
            None => y,
        }
    }

    /// The batch size as a 1-D int64 tensor of one element (a constant for a fixed batch).
    pub fn batch_dim(&mut self, x: &str) -> String {
        match self.batch {
            Some(n) => self.ints(&[n as i64]),
            None => {
                let s = self.op("Shape", &[x], vec![]);
                self.slice(&s, 0, 0, 1, 1)
            }
        }
    }
}
