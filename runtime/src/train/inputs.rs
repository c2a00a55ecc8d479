//! The inputs of a phase's trained nodes. The images of a run are loaded once ([`Images`]);
//! per phase, the frozen prefix ([`Prefix`]) runs without gradients on the inference path and
//! its values at the boundary are cached where the images are not augmented (always for
//! validation), so a frozen base costs one forward pass in all ([`PhaseInputs`]).

use super::callbacks::Params;
use super::data::{augment, batch, load_decoded, load_prepared, Skipped, Split};
use crate::preprocess::preprocess;
use crate::rng::Rng;
use crate::weights::Weights;
use crate::Model;
use anyhow::Result;
use candle_core::{Device, Tensor};
use image::DynamicImage;
use rayon::prelude::*;
use tlc_compiler::ir::{Graph, NodeId};
use tlc_compiler::meta::Preprocess;

/// The images of a run, decoded once.
pub(super) struct Images {
    /// Decoded training images (when a phase augments).
    pub train_decoded: Vec<DynamicImage>,
    /// Prepared training images (when a phase does not augment).
    pub train_prepared: Vec<Vec<f32>>,
    pub train_labels: Vec<usize>,
    /// Prepared validation images.
    pub val: Vec<Vec<f32>>,
    pub val_labels: Vec<usize>,
    /// Files that could not be decoded.
    pub skipped: Vec<Skipped>,
}

impl Images {
    /// Loads `split`: training images decoded when a phase augments (`augments`, per phase),
    /// prepared when a phase does not.
    pub fn load(split: &Split, pre: &Preprocess, augments: &[bool]) -> Result<Images> {
        let mut skipped = Vec::new();
        let (val_ok, bad) = load_prepared(&split.val, pre);
        skipped.extend(bad);
        let val_labels = val_ok.iter().map(|(s, _)| s.label).collect();
        let val = val_ok.into_iter().map(|(_, d)| d).collect();
        let (train_decoded, train_prepared, train_labels) = if augments.iter().any(|a| *a) {
            let (ok, bad) = load_decoded(&split.train);
            skipped.extend(bad);
            let labels = ok.iter().map(|(s, _)| s.label).collect();
            let decoded: Vec<DynamicImage> = ok.into_iter().map(|(_, d)| d).collect();
            let prepared = if augments.iter().any(|a| !*a) {
                decoded.par_iter().map(|i| preprocess(i, pre).map(|p| p.data)).collect::<Result<Vec<_>>>()?
            } else {
                Vec::new()
            };
            (decoded, prepared, labels)
        } else {
            let (ok, bad) = load_prepared(&split.train, pre);
            skipped.extend(bad);
            let labels = ok.iter().map(|(s, _)| s.label).collect();
            (Vec::new(), ok.into_iter().map(|(_, d)| d).collect(), labels)
        };
        Ok(Images { train_decoded, train_prepared, train_labels, val, val_labels, skipped })
    }
}

/// The frozen prefix of a phase: the model with the current weights, run without gradients
/// on the inference path, giving the values of the boundary nodes.
pub(super) struct Prefix {
    model: Model,
    taps: Vec<NodeId>,
    input: NodeId,
}

impl Prefix {
    pub fn new(g: &Graph, params: &Params, taps: Vec<NodeId>, dev: &Device) -> Result<Prefix> {
        let input = g.nodes().next().expect("a graph has an input node").0;
        let frozen = Weights::from_tensors(params.iter().map(|(k, v)| (k.clone(), v.detach())))?;
        let model = Model::from_weights(g.clone(), &frozen, false, dev)?;
        Ok(Prefix { model, taps, input })
    }

    /// Boundary values of one batch of prepared images.
    pub fn run(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let inner: Vec<NodeId> = self.taps.iter().copied().filter(|t| *t != self.input).collect();
        if inner.is_empty() {
            return Ok(self.taps.iter().map(|_| x.clone()).collect());
        }
        let (_, values) = self.model.infer(x, &inner)?;
        let mut it = values.into_iter();
        Ok(self.taps.iter().map(|t| if *t == self.input { x.clone() } else { it.next().expect("one value per tap").detach() }).collect())
    }

    /// Boundary values of many prepared images, concatenated per tap.
    fn run_all(&self, data: &[Vec<f32>]) -> Result<Vec<Tensor>> {
        let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); self.taps.len()];
        for chunk in data.chunks(16) {
            let items: Vec<&[f32]> = chunk.iter().map(|v| v.as_slice()).collect();
            for (k, v) in self.run(&batch(&items, &self.model.graph.meta.input, &self.model.device)?)?.into_iter().enumerate() {
                parts[k].push(v);
            }
        }
        parts.into_iter().map(|p| Ok(Tensor::cat(&p, 0)?)).collect()
    }
}

/// Cache the prefix's values of a split up to this size (per split).
const CACHE_LIMIT: usize = 3 << 29; // 1.5 GiB

/// The inputs of a phase's trained nodes, batch by batch: the boundary values of the frozen
/// prefix, from caches or computed from (augmented) images.
pub(super) struct PhaseInputs<'a> {
    prefix: Prefix,
    boundary: Vec<NodeId>,
    train_cache: Option<Vec<Tensor>>,
    val_cache: Option<Vec<Tensor>>,
    augment: bool,
    images: &'a Images,
    pre: Preprocess,
    dev: Device,
}

impl<'a> PhaseInputs<'a> {
    /// The inputs of nodes reading `boundary`, with the prefix at `params`; training images
    /// augmented when `augment`. Computes the caches.
    pub fn new(g: &Graph, params: &Params, boundary: &[NodeId], augment: bool, images: &'a Images, dev: &Device) -> Result<PhaseInputs<'a>> {
        let prefix = Prefix::new(g, params, boundary.to_vec(), dev)?;
        let per_sample: usize = boundary.iter().map(|b| g.node(*b).shape.as_ref().map(|s| s.iter().product::<usize>()).unwrap_or(0)).sum::<usize>() * 4;
        let fits = |n: usize| per_sample * n <= CACHE_LIMIT;
        let val_cache = if fits(images.val_labels.len()) { Some(prefix.run_all(&images.val)?) } else { None };
        let train_cache = if !augment && fits(images.train_labels.len()) { Some(prefix.run_all(&images.train_prepared)?) } else { None };
        Ok(PhaseInputs { prefix, boundary: boundary.to_vec(), train_cache, val_cache, augment, images, pre: g.meta.preprocess.clone(), dev: dev.clone() })
    }

    /// Whether the training and the validation values are cached.
    pub fn cached(&self) -> (bool, bool) {
        (self.train_cache.is_some(), self.val_cache.is_some())
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Labels of the training images.
    pub fn train_labels(&self) -> &[usize] {
        &self.images.train_labels
    }

    /// Labels of the validation images.
    pub fn val_labels(&self) -> &[usize] {
        &self.images.val_labels
    }

    /// Boundary values of the training images `idx` (augmented with `rng` when the phase
    /// augments and they are not cached).
    pub fn train(&self, idx: &[usize], rng: &mut Rng) -> Result<Vec<(NodeId, Tensor)>> {
        if let Some(c) = &self.train_cache {
            return self.gather(c, idx);
        }
        let items: Vec<Vec<f32>> = if self.augment {
            let input = &self.prefix.model.graph.meta.input;
            let jobs: Vec<(usize, Rng)> = idx.iter().map(|&i| (i, rng.fork())).collect();
            jobs.par_iter().map(|(i, r)| augment(&self.images.train_decoded[*i], &self.pre, input, &mut r.clone())).collect::<Result<_>>()?
        } else {
            idx.iter().map(|&i| self.images.train_prepared[i].clone()).collect()
        };
        let items: Vec<&[f32]> = items.iter().map(|v| v.as_slice()).collect();
        self.compute(&items)
    }

    /// Boundary values of the validation images `idx`.
    pub fn val(&self, idx: &[usize]) -> Result<Vec<(NodeId, Tensor)>> {
        match &self.val_cache {
            Some(c) => self.gather(c, idx),
            None => self.compute(&idx.iter().map(|&i| self.images.val[i].as_slice()).collect::<Vec<_>>()),
        }
    }

    fn compute(&self, items: &[&[f32]]) -> Result<Vec<(NodeId, Tensor)>> {
        let x = batch(items, &self.prefix.model.graph.meta.input, &self.dev)?;
        Ok(self.boundary.iter().copied().zip(self.prefix.run(&x)?).collect())
    }

    fn gather(&self, cache: &[Tensor], idx: &[usize]) -> Result<Vec<(NodeId, Tensor)>> {
        let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), &self.dev)?;
        let values = cache.iter().map(|c| Ok(c.index_select(&ids, 0)?)).collect::<Result<Vec<_>>>()?;
        Ok(self.boundary.iter().copied().zip(values).collect())
    }
}
