//! Safetensors files with metadata (file names of extracted features), written atomically.

use crate::weights::write_atomic;
use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Writes `tensors` (as f32) and string `metadata` to `path` via a temporary file and a rename.
pub fn save_with_metadata(tensors: &[(String, Tensor)], metadata: HashMap<String, String>, path: &Path) -> Result<()> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v: Vec<f32> = t.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).with_context(|| format!("tensor {name}"))?;
        owned.push((name.clone(), t.dims().to_vec(), v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (name, shape, bytes) in &owned {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).map_err(|e| anyhow!("tensor {name}: {e}"))?;
        views.push((name.as_str(), view));
    }
    let data = safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| anyhow!("serialising safetensors: {e}"))?;
    write_atomic(path, &data)
}

/// Reads the metadata of a safetensors file.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}
