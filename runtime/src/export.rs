//! Exports a loaded [`Model`] through the compiler's back ends (`tlc_compiler::export`): the
//! runtime's part is handing over its tensors (plain or BatchNorm-folded) as `f32` data.

use crate::labels::names;
use crate::optimize::folded_params;
use crate::weights::write_atomic;
use crate::Model;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::Path;
use tlc_compiler::export::onnx::{self, proto::ModelProto};
use tlc_compiler::passes;

fn f32_data(params: &HashMap<String, Tensor>, name: &str) -> Option<Vec<f32>> {
    params.get(name)?.flatten_all().ok()?.to_dtype(DType::F32).ok()?.to_vec1().ok()
}

/// The model as ONNX; `optimized` exports the optimized view with folded weights. The label
/// names of the spec's label set go into the metadata.
pub fn onnx_model(model: &Model, options: &onnx::Options, optimized: bool) -> Result<ModelProto> {
    let mut options = options.clone();
    if options.labels.is_empty() {
        options.labels = names(&model.graph.meta.labels);
    }
    let proto = if optimized {
        // ONNX has no fused conv inputs: only the standard rewrites.
        let plan = passes::optimize_with(&model.graph, passes::Options::STANDARD);
        let params = folded_params(&plan, &model.params, &model.device)?;
        onnx::export_optimized(&plan, &|name| f32_data(&params, name), &options)?
    } else {
        onnx::export(&model.graph, &|name| f32_data(&model.params, name), &options)?
    };
    Ok(proto)
}

/// Fails early, with the reason, when `path` cannot be written: its folder is created if
/// missing, and a file beside it must be creatable (and `path` must not be a folder).
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("cannot write {}: it is a folder", path.display());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the folder {}", dir.display()))?;
    let probe = dir.join(format!(".{}.tlc-probe", path.file_name().and_then(|n| n.to_str()).unwrap_or("out")));
    std::fs::File::create(&probe).with_context(|| format!("cannot write to {}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Writes `files` (paths relative to `root`), each atomically, creating folders.
pub fn write_files(root: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    for (rel, data) in files {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create the folder {}", dir.display()))?;
        }
        write_atomic(&path, data)?;
    }
    Ok(())
}
