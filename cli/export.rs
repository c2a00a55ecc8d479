//! `tlc export`: the model for other systems: ONNX (serving engines), one PyTorch source file
//! (training), or a Triton Inference Server model repository.

use crate::compile::{load_with_sources, DiskLoader};
use anyhow::{anyhow, bail, Result};
use candle_core::Device;
use clap::Args;
use std::path::PathBuf;
use tlc_compiler::export::{onnx, pytorch, triton};
use tlc_compiler::ir::Graph;
use tlc_compiler::render;
use tlc_compiler::span::Sources;
use tlc_runtime::export::{check_writable, onnx_model, write_files};
use tlc_runtime::labels::names;
use tlc_runtime::pretrained::pretrained_model;
use tlc_runtime::weights::write_atomic;

/// Arguments of `tlc export`.
#[derive(Args)]
pub struct ExportArgs {
    /// Spec file.
    pub spec: String,
    /// Variant to build.
    #[arg(long)]
    pub variant: Option<String>,
    /// `onnx` (one .onnx file), `pytorch` (one .py file) or `triton` (a model repository folder).
    #[arg(long, value_parser = ["onnx", "pytorch", "triton"])]
    pub format: String,
    /// Output file (onnx, pytorch) or repository folder (triton).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Weights for onnx/triton (.safetensors, .pth, Ultralytics .pt, darknet .weights); default:
    /// the spec's checkpoint, from TLC_WEIGHTS or the cache, downloaded on first use.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub hub: crate::weights::HubArgs,
    /// ONNX operator set (13 to 21; LayerNormalization needs 17).
    #[arg(long, default_value_t = onnx::DEFAULT_OPSET)]
    pub opset: i64,
    /// Batch dimension of the ONNX input: `dynamic` or a fixed size.
    #[arg(long, default_value = "dynamic")]
    pub batch: String,
    /// Export the optimized view: BatchNorm folded into convs, dropout and dead nodes removed.
    #[arg(long)]
    pub optimize: bool,
    /// Triton: `max_batch_size` of a dynamic-batch model.
    #[arg(long, default_value_t = triton::DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
}

/// `tlc export`.
pub fn export(a: ExportArgs) -> u8 {
    let (graph, sources) = match load_with_sources(&a.spec, a.variant.as_deref()) {
        Ok(g) => g,
        Err(f) => return f.code(),
    };
    match run(graph, &sources, &a) {
        Ok(()) => 0,
        Err(e) => {
            if let Some(onnx::Error::Node(d)) = e.downcast_ref::<onnx::Error>() {
                render::emit_stderr(std::slice::from_ref(d), &sources, crate::compile::color());
                return 1;
            }
            eprintln!("error: {e:#}");
            2
        }
    }
}

fn run(graph: Graph, sources: &Sources, a: &ExportArgs) -> Result<()> {
    let batch = match a.batch.as_str() {
        "dynamic" => None,
        n => Some(n.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| anyhow!("--batch takes `dynamic` or a positive size, not `{n}`"))?),
    };
    let options = onnx::Options { opset: a.opset, batch, labels: names(&graph.meta.labels) };
    if a.format != "pytorch" {
        onnx::check_options(&options)?;
    }
    match a.format.as_str() {
        "pytorch" => {
            if a.weights.is_some() || a.optimize {
                bail!("--format pytorch writes source code only: load weights with `Model().load_state_dict(...)` (no --weights or --optimize)");
            }
            check_writable(&a.output)?;
            let code = pytorch::export(&a.spec, &DiskLoader, &graph).map_err(|d| {
                render::emit_stderr(std::slice::from_ref(&d), sources, crate::compile::color());
                anyhow!("cannot write {} as PyTorch", a.spec)
            })?;
            write_atomic(&a.output, code.as_bytes())?;
            eprintln!("wrote {} (PyTorch, class Model)", a.output.display());
        }
        "onnx" => {
            check_writable(&a.output)?;
            let (_, _, bytes) = onnx_bytes(graph, a, &options)?;
            write_atomic(&a.output, &bytes)?;
            eprintln!("wrote {} (ONNX opset {}, {} bytes)", a.output.display(), a.opset, bytes.len());
        }
        _ => {
            let name = triton::model_name(&graph);
            check_writable(&a.output.join(&name).join("1").join("model.onnx"))?;
            let labels = options.labels.clone();
            let (g, proto, bytes) = onnx_bytes(graph, a, &options)?;
            let files = triton::repository(&g, &proto, bytes, &labels, a.max_batch);
            write_files(&a.output, &files)?;
            eprintln!("wrote Triton model `{name}` to {}", a.output.display());
        }
    }
    Ok(())
}

/// Loads the weights (as `tlc run` does) and exports the ONNX model: the graph, the model and
/// its bytes.
fn onnx_bytes(graph: Graph, a: &ExportArgs, options: &onnx::Options) -> Result<(Graph, onnx::proto::ModelProto, Vec<u8>)> {
    let model = pretrained_model(graph, &a.hub.hub(), a.weights.as_deref(), false, &Device::Cpu)?;
    let proto = onnx_model(&model, options, a.optimize)?;
    let bytes = onnx::encode(&proto)?;
    Ok((model.graph, proto, bytes))
}
