//! From a [`Request`] to a [`Setup`]: the data split, the spec cut at its `head:` with the new
//! head attached (`compiler/src/surgery.rs`) and compiled as `RUN/model.yaml`, the check that
//! the head outputs one score per class, and the pretrained weights of the base.

use super::config::Request;
use super::data::load_split;
use super::fit::Setup;
use crate::hub::Hub;
use crate::pretrained::{load_for_graph, weights_path};
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use tlc_compiler::ir::Graph;
use tlc_compiler::span::SourceLoader;
use tlc_compiler::surgery::{default_head, head_cut, normalise_head, transfer_spec, TransferSpec};
use tlc_compiler::{compile, render, Options};

/// Serves one generated spec from memory and every other file (its imports) from disk.
struct Overlay<'a> {
    path: &'a str,
    text: &'a str,
}

impl SourceLoader for Overlay<'_> {
    fn load(&self, path: &str) -> Result<String, String> {
        if path == self.path {
            Ok(self.text.to_string())
        } else {
            std::fs::read_to_string(path).map_err(|e| e.to_string())
        }
    }
}

/// Compiles spec `text` as if it were the file `path`; diagnostics that do not stop it go to
/// `log`, those that do are the error.
fn compile_generated(path: &Path, text: &str, log: &mut dyn FnMut(&str)) -> Result<Graph> {
    let path = path.display().to_string();
    let c = compile(&path, &Overlay { path: &path, text }, &Options::default());
    let rendered = render::render_plain(&c.diagnostics, &c.sources);
    match c.graph {
        Some(g) => {
            if !c.diagnostics.is_empty() {
                log(rendered.trim_end());
            }
            Ok(g)
        }
        None => bail!("the generated transfer spec does not compile:\n{rendered}"),
    }
}

/// Prepares `request` on `base` (its spec compiled as given): reads the data split, cuts the
/// spec and attaches the new head, compiles it, checks the head's output and loads the base's
/// pretrained weights (`--weights`, else the spec's checkpoint through `hub`). The setup's
/// command line is empty and it starts afresh; the caller sets both.
pub fn prepare(request: Request, base: &Graph, hub: &Hub, log: &mut dyn FnMut(&str)) -> Result<Setup> {
    let request = request.absolute();
    let (_, feature) = head_cut(base).map_err(|e| anyhow!(e))?;
    let feature = base.node(feature);
    let rank = feature.shape.as_ref().map(|s| s.len()).unwrap_or(1);
    let split = load_split(&request.data, request.val_split, request.config.seed)?;
    if split.classes.len() < 2 {
        bail!("{} has {} class folder(s); at least 2 are needed", request.data.display(), split.classes.len());
    }
    log(&format!("data: {} classes {:?}, {} training and {} validation files", split.classes.len(), split.classes, split.train.len(), split.val.len()));
    let chain = normalise_head(request.head.as_deref().unwrap_or(&default_head(rank)), split.classes.len(), rank);
    let spec = &request.spec;
    let spec_dir = spec.parent().map(Path::to_path_buf).unwrap_or_default();
    let text = std::fs::read_to_string(spec).with_context(|| format!("cannot read {}", spec.display()))?;
    let import_path = |p: &str| -> String { if p.starts_with('/') { p.to_string() } else { spec_dir.join(p).display().to_string() } };
    let cut = TransferSpec { labels: &split.classes, head_chain: &chain, variant: base.meta.variant.as_deref(), import_path: &import_path };
    let (yaml, scope) = transfer_spec(&text, &cut).map_err(|e| anyhow!("cannot cut {}: {e}", spec.display()))?;
    std::fs::create_dir_all(&request.out).with_context(|| format!("cannot create {}", request.out.display()))?;
    let model_path = std::fs::canonicalize(&request.out)?.join("model.yaml");
    let graph = compile_generated(&model_path, &yaml, log)?;
    let out_shape = graph.node(graph.output).shape.clone().unwrap_or_default();
    if out_shape != [split.classes.len()] {
        bail!("the new head outputs {:?} per image; it must output [{}] (end it with linear(classes), after pooling/flatten)", out_shape, split.classes.len());
    }
    log(&format!("head `{scope}`: {chain}  (feature: `{}` {:?})", feature.name, feature.shape.clone().unwrap_or_default()));
    let Some(wpath) = weights_path(base, hub, request.weights.as_deref())? else {
        bail!("give --weights PRETRAINED (the spec names no checkpoint)");
    };
    let weights = load_for_graph(&wpath, base)?;
    Ok(Setup { request, graph, head_scope: scope, weights, split, model_yaml: yaml, command_line: String::new(), resume: false })
}
