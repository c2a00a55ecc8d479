//! Image folders as datasets (Keras `image_dataset_from_directory`): `DIR/train/<class>/*` and
//! `DIR/val/<class>/*`, or one folder of class subfolders split with `--val-split`. Images are
//! decoded in parallel (rayon's pool); files that cannot be decoded are skipped with a warning naming them.

use crate::rng::Rng;
use crate::preprocess::{load_image, preprocess};
use anyhow::{bail, Context, Result};
use image::DynamicImage;
use std::path::{Path, PathBuf};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use tlc_compiler::meta::{Preprocess, Resize};

/// One labelled file.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The image file.
    pub path: PathBuf,
    /// Class index.
    pub label: usize,
}

/// Training and validation samples with the class names.
#[derive(Clone, Debug)]
pub struct Split {
    /// Class names (sorted folder names).
    pub classes: Vec<String>,
    /// Training samples.
    pub train: Vec<Sample>,
    /// Validation samples.
    pub val: Vec<Sample>,
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

/// Class folders of `dir` (sorted names) and their files. With `classes` given, folder names
/// are mapped to those classes (an unknown folder is an error).
pub fn scan(dir: &Path, classes: Option<&[String]>) -> Result<(Vec<String>, Vec<Sample>)> {
    let folders: Vec<PathBuf> = sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()).collect();
    if folders.is_empty() {
        bail!("{} has no class folders (expected {}/<class>/<images>)", dir.display(), dir.display());
    }
    let names: Vec<String> = folders.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let classes: Vec<String> = classes.map(|c| c.to_vec()).unwrap_or_else(|| names.clone());
    let mut samples = Vec::new();
    for (folder, name) in folders.iter().zip(&names) {
        let Some(label) = classes.iter().position(|c| c == name) else {
            bail!("{}: folder `{name}` is not one of the classes {:?}", dir.display(), classes);
        };
        for f in sorted_entries(folder)? {
            if f.is_file() && !f.file_name().map(|n| n.to_string_lossy().starts_with('.')).unwrap_or(false) {
                samples.push(Sample { path: f, label });
            }
        }
    }
    Ok((classes, samples))
}

/// Reads `dir`: `train/` and `val/` subfolders when present (or `val_split` of each class of
/// `train/`, or of `dir` itself when it holds the class folders), shuffled with `seed`.
pub fn load_split(dir: &Path, val_split: Option<f64>, seed: u64) -> Result<Split> {
    let train_dir = dir.join("train");
    let val_dir = val_folder(dir);
    let (base, has_train) = if train_dir.is_dir() { (train_dir, true) } else { (dir.to_path_buf(), false) };
    let (classes, all) = scan(&base, None)?;
    if let (true, Some(vd), None) = (has_train, &val_dir, val_split) {
        let (_, val) = scan(vd, Some(&classes))?;
        return Ok(Split { classes, train: all, val });
    }
    let f = match val_split {
        Some(f) if (0.0..1.0).contains(&f) => f,
        Some(f) => bail!("--val-split must be in [0, 1), got {f}"),
        None => bail!("{} has no val/ folder: give --val-split F (e.g. 0.2)", dir.display()),
    };
    let mut rng = Rng::new(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for c in 0..classes.len() {
        let mut of: Vec<Sample> = all.iter().filter(|s| s.label == c).cloned().collect();
        rng.shuffle(&mut of);
        let nv = (of.len() as f64 * f).round() as usize;
        val.extend(of.drain(..nv));
        train.extend(of);
    }
    Ok(Split { classes, train, val })
}

/// Stacks prepared `[3, H, W]` images (the model's `input` shape) into one NCHW batch.
pub fn batch(items: &[&[f32]], input: &[usize], dev: &Device) -> Result<Tensor> {
    let mut data = Vec::with_capacity(items.iter().map(|v| v.len()).sum());
    for v in items {
        data.extend_from_slice(v);
    }
    Ok(Tensor::from_vec(data, (items.len(), input[0], input[1], input[2]), dev)?)
}

/// The validation folder of a dataset root (`val/` or `validation/`), if it has one.
pub fn val_folder(dir: &Path) -> Option<PathBuf> {
    ["val", "validation"].iter().map(|v| dir.join(v)).find(|p| p.is_dir())
}

/// Every file under `dir` (recursively, sorted, hidden files left out), or `dir` itself when
/// it is a file.
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut out = Vec::new();
    for p in sorted_entries(dir)? {
        if p.is_dir() {
            out.extend(list_files(&p)?);
        } else if p.is_file() && !p.file_name().map(|n| n.to_string_lossy().starts_with('.')).unwrap_or(false) {
            out.push(p);
        }
    }
    Ok(out)
}

/// A warning about a file that was skipped.
#[derive(Clone, Debug)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Decodes and preprocesses `samples` in parallel (no augmentation). Returns the kept
/// samples with their `[3, H, W]` data, and the files that were skipped.
pub fn load_prepared(samples: &[Sample], pre: &Preprocess) -> (Vec<(Sample, Vec<f32>)>, Vec<Skipped>) {
    let res: Vec<Result<Vec<f32>>> = samples.par_iter().map(|s| load_image(&s.path).and_then(|img| preprocess(&img, pre)).map(|p| p.data)).collect();
    split_results(samples, res)
}

/// Decodes `samples` in parallel (for augmentation each epoch).
pub fn load_decoded(samples: &[Sample]) -> (Vec<(Sample, DynamicImage)>, Vec<Skipped>) {
    let res: Vec<Result<DynamicImage>> = samples.par_iter().map(|s| load_image(&s.path)).collect();
    split_results(samples, res)
}

fn split_results<T>(samples: &[Sample], res: Vec<Result<T>>) -> (Vec<(Sample, T)>, Vec<Skipped>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (s, r) in samples.iter().zip(res) {
        match r {
            Ok(v) => ok.push((s.clone(), v)),
            Err(e) => bad.push(Skipped { path: s.path.clone(), reason: format!("{:#}", e) }),
        }
    }
    (ok, bad)
}

/// The network's input size `(h, w)` after `pre` (the crop, or the resize, or `input`).
fn out_size(pre: &Preprocess, input: &[usize]) -> (usize, usize) {
    if let Some(c) = pre.crop {
        return c;
    }
    match pre.resize {
        Resize::Exact(h, w) | Resize::Letterbox(h, w) => (h, w),
        _ => (input[1], input[2]),
    }
}

/// Training augmentation: torchvision `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`
/// then a horizontal flip with probability 1/2, then the spec's normalisation.
pub fn augment(img: &DynamicImage, pre: &Preprocess, input: &[usize], rng: &mut Rng) -> Result<Vec<f32>> {
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as f64, rgb.height() as f64);
    let area = w * h;
    let (mut cw, mut ch, mut x0, mut y0) = (w, h, 0.0, 0.0);
    let mut found = false;
    for _ in 0..10 {
        let target = area * rng.range(0.08, 1.0);
        let logr = rng.range((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
        let ar = logr.exp();
        let tw = (target * ar).sqrt().round();
        let th = (target / ar).sqrt().round();
        if tw > 0.0 && th > 0.0 && tw <= w && th <= h {
            cw = tw;
            ch = th;
            x0 = rng.below((w - tw) as usize + 1) as f64;
            y0 = rng.below((h - th) as usize + 1) as f64;
            found = true;
            break;
        }
    }
    if !found {
        // Central crop at the clamped ratio.
        let r = w / h;
        if r < 3.0 / 4.0 {
            ch = (w / (3.0 / 4.0)).round();
        } else if r > 4.0 / 3.0 {
            cw = (h * 4.0 / 3.0).round();
        }
        x0 = ((w - cw) / 2.0).floor();
        y0 = ((h - ch) / 2.0).floor();
    }
    let mut crop = image::imageops::crop_imm(&rgb, x0 as u32, y0 as u32, cw.max(1.0) as u32, ch.max(1.0) as u32).to_image();
    if rng.uniform() < 0.5 {
        crop = image::imageops::flip_horizontal(&crop);
    }
    let (oh, ow) = out_size(pre, input);
    let p = Preprocess { resize: Resize::Exact(oh, ow), crop: None, ..pre.clone() };
    Ok(preprocess(&DynamicImage::ImageRgb8(crop), &p)?.data)
}
