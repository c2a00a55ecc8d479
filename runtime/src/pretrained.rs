//! A model with its pretrained weights: the one place that decides which file a command loads
//! (`--weights`, else the spec's checkpoint through the [`Hub`]) and how (format by content or
//! extension, the spec's key renames and drops, strict name and shape checks).

use crate::hub::Hub;
use crate::model::expected_params;
use crate::weights::Weights;
use crate::Model;
use anyhow::{Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};
use tlc_compiler::ir::Graph;

/// The weights file for `graph`: `explicit` if given, else the spec's checkpoint, found or
/// downloaded by `hub`; `None` when the spec names no checkpoint (for this variant).
pub fn weights_path(graph: &Graph, hub: &Hub, explicit: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(p) = explicit {
        return Ok(Some(p.to_path_buf()));
    }
    match &graph.meta.weights {
        Some(ck) => hub.resolve(ck).map(Some),
        None => Ok(None),
    }
}

/// Loads a checkpoint file for `graph`: darknet `.weights` in the order of the spec's layers,
/// everything else by content; then the spec's `rename:` and `drop:` are applied to the keys.
pub fn load_for_graph(path: &Path, graph: &Graph) -> Result<Weights> {
    let expected = expected_params(graph);
    let w = Weights::load_for(path, &expected)?;
    let Some(ck) = &graph.meta.weights else { return Ok(w) };
    if ck.rename.is_empty() && ck.drop.is_empty() {
        return Ok(w);
    }
    let kept = w.iter().filter(|(name, _)| !ck.drop.iter().any(|d| name.starts_with(d.as_str()))).map(|(name, t)| {
        let renamed = ck.rename.iter().fold(name.to_string(), |n, (from, to)| n.replace(from.as_str(), to));
        (renamed, t.clone())
    });
    Weights::from_tensors(kept.collect::<Vec<_>>())
}

/// Builds the model with its pretrained weights (see [`weights_path`]), or with random weights
/// and a warning when neither `--weights` nor the spec names a checkpoint.
pub fn pretrained_model(graph: Graph, hub: &Hub, explicit: Option<&Path>, allow_missing: bool, dev: &Device) -> Result<Model> {
    match weights_path(&graph, hub, explicit)? {
        Some(p) => {
            let w = load_for_graph(&p, &graph)?;
            Model::from_weights(graph, &w, allow_missing, dev).with_context(|| format!("loading {}", p.display()))
        }
        None => {
            let which = graph.meta.variant.as_deref().map(|v| format!(" for variant `{v}`")).unwrap_or_default();
            eprintln!("warning: no --weights given and the spec names no checkpoint{which}: the model is RANDOMLY INITIALISED and its outputs mean nothing");
            Model::random(graph, 0, dev)
        }
    }
}
