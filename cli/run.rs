//! `tlc run`: classify images or detect objects in them (or run a raw `.npy` input) with a
//! spec and weights; save outputs, intermediate features and annotated images.

use crate::compile::with_graph;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use std::path::{Path, PathBuf};
use tlc_compiler::ir::{NodeId, Task};
use tlc_runtime::detect::{DetectOptions, Detection, Detector, NmsMode};
use tlc_runtime::labels::{names, top_k};
use tlc_runtime::preprocess::{load_image, preprocess};
use tlc_runtime::pretrained::pretrained_model;
use tlc_runtime::weights::save_safetensors;
use tlc_runtime::Model;

/// Arguments of `tlc run`.
#[derive(Args)]
pub struct RunArgs {
    /// Spec file.
    pub spec: String,
    /// Variant to build.
    #[arg(long)]
    pub variant: Option<String>,
    /// Weights file (.safetensors, PyTorch .pth, Ultralytics .pt, darknet .weights); default: the
    /// spec's checkpoint, from TLC_WEIGHTS or the cache, downloaded on first use.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub hub: crate::weights::HubArgs,
    /// Accept weight files that lack some tensors (they keep their initialisation).
    #[arg(long)]
    pub allow_missing: bool,
    /// Images or folders of images.
    #[arg(long, num_args = 1..)]
    pub image: Vec<PathBuf>,
    /// Raw NCHW float32 input (.npy) instead of images.
    #[arg(long, conflicts_with = "image")]
    pub input: Option<PathBuf>,
    /// Save the final output as .npy.
    #[arg(long)]
    pub save_output: Option<PathBuf>,
    /// Number of classes to print.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Comma-separated node or item names whose outputs to save (e.g. `layer3,features.8`).
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// Where to save `--features` (safetensors).
    #[arg(long)]
    pub save_features: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Detection confidence threshold (default 0.3 for darknet heads, 0.25 for YOLOv8).
    #[arg(long)]
    pub conf: Option<f32>,
    /// Detection NMS IoU threshold.
    #[arg(long, default_value_t = 0.45)]
    pub iou: f32,
    /// Detection NMS mode: `reference` (class-agnostic for darknet heads as OpenCV's
    /// `NMSBoxes`, class-wise for YOLOv8 as Ultralytics), `class` or `agnostic`.
    #[arg(long, default_value = "reference", value_parser = ["reference", "class", "agnostic"])]
    pub nms: String,
    /// Detection: write the image with labelled boxes drawn (.jpg, .png or .bmp); with several
    /// images (or a path that is a folder or has no extension) a folder of annotated images.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// `cpu` or `cuda[:N]` (needs the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Parses `--device`.
pub fn device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s.starts_with("cuda") => {
            let n = s.strip_prefix("cuda:").map(|n| n.parse::<usize>()).transpose().map_err(|_| anyhow!("bad device `{s}`: use cuda or cuda:N"))?.unwrap_or(0);
            Device::new_cuda(n).map_err(|e| anyhow!("cannot open {s}: {e} (was tlc built with --features cuda?)"))
        }
        other => bail!("unknown device `{other}`: use cpu or cuda[:N]"),
    }
}

/// File extensions taken from a folder given to `--image` (files named explicitly are read
/// whatever their extension: the format is recognised by content).
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "webp"];

fn collect_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot read folder {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file())
                .filter(|f| f.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())))
                .collect();
            if files.is_empty() {
                bail!("folder {} holds no images ({})", p.display(), IMAGE_EXTENSIONS.join(", "));
            }
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// `tlc run`.
pub fn run(a: RunArgs) -> u8 {
    with_graph(&a.spec, a.variant.as_deref(), |g| run_graph(g, &a))
}

/// `TLC_PROFILE` set: time per op kind of each optimized forward pass on stderr.
pub fn profile_from_env() -> bool {
    std::env::var_os("TLC_PROFILE").is_some()
}

/// What a run produced: per input its name, output and detections; per `--features` tap its
/// values batch by batch.
#[derive(Default)]
struct Results {
    outputs: Vec<(String, Tensor)>,
    detections: Vec<(String, Vec<Detection>)>,
    features: Vec<Vec<Tensor>>,
}

fn run_graph(graph: tlc_compiler::ir::Graph, a: &RunArgs) -> Result<()> {
    if a.image.is_empty() && a.input.is_none() {
        bail!("give --image PATH... or --input X.npy");
    }
    let taps: Vec<NodeId> = a
        .features
        .iter()
        .map(|f| graph.find(f).ok_or_else(|| anyhow!("--features: no node or item named `{f}` (see `tlc summary {}`)", a.spec)))
        .collect::<Result<_>>()?;
    if !taps.is_empty() && a.save_features.is_none() {
        bail!("--features needs --save-features FILE.safetensors");
    }
    // Refuse unreadable images before fetching weights or running anything.
    for f in collect_images(&a.image)? {
        tlc_runtime::preprocess::check_image(&f)?;
    }
    let dev = device(&a.device)?;
    let mut model = pretrained_model(graph, &a.hub.hub(), a.weights.as_deref(), a.allow_missing, &dev)?;
    model.profile = profile_from_env();
    let detect = model.graph.meta.task == Task::Detect;
    if a.save.is_some() && !detect {
        bail!("--save draws detections: {} is not a detection spec (use --save-output for raw outputs)", a.spec);
    }
    let nms = match a.nms.as_str() {
        "class" => Some(NmsMode::ClassWise),
        "agnostic" => Some(NmsMode::Agnostic),
        _ => None,
    };
    let detector = detect.then(|| Detector::new(&model.graph, DetectOptions { conf: a.conf, iou: a.iou, nms }));
    let mut results = Results { features: vec![Vec::new(); taps.len()], ..Default::default() };
    match &a.input {
        Some(npy) => {
            if detect && a.save_output.is_none() && a.save_features.is_none() {
                bail!("with --input a detection spec's raw output can only be saved (--save-output Y.npy); decoding boxes needs --image (the box mapping depends on the original image)");
            }
            let x = Tensor::read_npy(npy).map_err(|e| anyhow!("cannot read {}: {e}", npy.display()))?.to_dtype(candle_core::DType::F32)?.to_device(&dev)?;
            let (y, f) = model.infer(&x, &taps)?;
            for (k, t) in f.into_iter().enumerate() {
                results.features[k].push(t);
            }
            results.outputs.push((npy.display().to_string(), y));
        }
        None => run_images(&model, &taps, detector.as_ref(), a, &mut results)?,
    }
    save_results(&results, a)?;
    match (detect, &a.input) {
        (true, Some(_)) => Ok(()), // raw outputs saved above
        (true, None) => print_detections(&results.detections, a),
        (false, _) => print_results(&results.outputs, &names(&model.graph.meta.labels), a),
    }
}

/// Runs the `--image` files in batches: outputs, features, detections and `--save` images.
fn run_images(model: &Model, taps: &[NodeId], detector: Option<&Detector>, a: &RunArgs, results: &mut Results) -> Result<()> {
    let files = collect_images(&a.image)?;
    let mut all_taps = taps.to_vec();
    all_taps.extend(detector.map(|d| d.taps()).unwrap_or_default());
    let mut saver = a.save.as_deref().map(|p| Saver::new(p, files.len())).transpose()?;
    let mut progress = Progress::new(files.len(), a.batch, a.json);
    for chunk in files.chunks(a.batch.max(1)) {
        let mut xs = Vec::new();
        let mut images = Vec::new();
        for f in chunk {
            let img = load_image(f)?;
            let p = preprocess(&img, &model.graph.meta.preprocess).with_context(|| format!("cannot preprocess image {}", f.display()))?;
            xs.push(p.to_tensor(&model.device)?);
            images.push((f, p, saver.as_ref().map(|_| img.into_rgb8())));
        }
        let (y, f) = model.infer(&Tensor::cat(&xs, 0)?, &all_taps)?;
        let (f, head_values) = f.split_at(taps.len());
        for (k, t) in f.iter().enumerate() {
            results.features[k].push(t.clone());
        }
        for (i, (file, prepared, keep)) in images.into_iter().enumerate() {
            let name = file.display().to_string();
            if let Some(d) = detector {
                let dets = d.detect(&y, head_values, i, &prepared)?;
                if let (Some(s), Some(mut img)) = (saver.as_mut(), keep) {
                    tlc_runtime::draw::draw_detections(&mut img, &dets);
                    s.save(file, &img)?;
                }
                results.detections.push((name.clone(), dets));
            }
            results.outputs.push((name, y.narrow(0, i, 1)?));
        }
        progress.advance(chunk.len());
    }
    progress.finish();
    Ok(())
}

/// Writes `--save-output` and `--save-features`.
fn save_results(results: &Results, a: &RunArgs) -> Result<()> {
    if let Some(path) = &a.save_output {
        let all = Tensor::cat(&results.outputs.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>(), 0)?;
        all.write_npy(path).map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &a.save_features {
        let mut list = Vec::new();
        for (name, parts) in a.features.iter().zip(&results.features) {
            list.push((name.clone(), Tensor::cat(parts, 0)?.to_device(&Device::Cpu)?));
        }
        save_safetensors(&list, path)?;
    }
    Ok(())
}

/// Where `--save` writes annotated images: one file, or a folder of them named after the inputs.
struct Saver {
    target: PathBuf,
    folder: bool,
    used: std::collections::HashSet<PathBuf>,
}

impl Saver {
    fn new(path: &Path, images: usize) -> Result<Saver> {
        let folder = images > 1 || path.is_dir() || path.extension().is_none();
        if folder {
            std::fs::create_dir_all(path).with_context(|| format!("--save: cannot create folder {}", path.display()))?;
        } else {
            tlc_runtime::draw::check_format(path)?;
        }
        Ok(Saver { target: path.to_path_buf(), folder, used: Default::default() })
    }

    /// Saves the annotated image of `input`: in a folder as its file name (PNG when its own
    /// format cannot be written; `-2`, `-3`... when two inputs share a name).
    fn save(&mut self, input: &Path, img: &tlc_runtime::draw::RgbImage) -> Result<()> {
        let path = if self.folder {
            let stem = input.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
            let ext = input.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).filter(|e| ["jpg", "jpeg", "png", "bmp"].contains(&e.as_str())).unwrap_or_else(|| "png".into());
            let mut p = self.target.join(format!("{stem}.{ext}"));
            let mut k = 2;
            while self.used.contains(&p) {
                p = self.target.join(format!("{stem}-{k}.{ext}"));
                k += 1;
            }
            p
        } else {
            self.target.clone()
        };
        tlc_runtime::draw::save_image(img, &path)?;
        self.used.insert(path);
        Ok(())
    }
}

/// Progress over image batches on stderr: a bar redrawn in place on a terminal, a line per
/// batch otherwise; silent for a single batch and with `--json`.
struct Progress {
    total: usize,
    done: usize,
    on: bool,
    tty: bool,
}

impl Progress {
    fn new(total: usize, batch: usize, json: bool) -> Progress {
        use std::io::IsTerminal;
        Progress { total, done: 0, on: total > batch.max(1) && !json, tty: std::io::stderr().is_terminal() }
    }

    fn advance(&mut self, n: usize) {
        self.done = (self.done + n).min(self.total);
        if !self.on {
            return;
        }
        if self.tty {
            let width = 30;
            let filled = width * self.done / self.total.max(1);
            eprint!("\r[{}{}] {}/{} images", "#".repeat(filled), "-".repeat(width - filled), self.done, self.total);
        } else {
            eprintln!("[{}/{}] images", self.done, self.total);
        }
    }

    fn finish(&self) {
        if self.on && self.tty {
            eprintln!();
        }
    }
}

/// Writes `text` to stdout; a reader that went away (`tlc run ... | head`) is not an error.
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow!("cannot write to stdout: {e}")),
        _ => Ok(()),
    }
}

fn print_detections(all: &[(String, Vec<Detection>)], a: &RunArgs) -> Result<()> {
    use std::fmt::Write;
    if a.json {
        let v: Vec<serde_json::Value> = all.iter().map(|(f, d)| serde_json::json!({"file": f, "detections": d})).collect();
        let v = if v.len() == 1 { serde_json::json!({"detections": v[0]["detections"]}) } else { serde_json::Value::Array(v) };
        return emit(&format!("{}\n", serde_json::to_string(&v)?));
    }
    let mut s = String::new();
    for (f, dets) in all {
        if all.len() > 1 {
            writeln!(s, "{f}:")?;
        }
        for d in dets {
            writeln!(s, "  {:<16} {:.2}  [{:.0}, {:.0}, {:.0}, {:.0}]", d.label, d.score, d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3])?;
        }
    }
    emit(&s)
}

fn print_results(outputs: &[(String, Tensor)], labels: &[String], a: &RunArgs) -> Result<()> {
    use std::fmt::Write;
    let mut out = String::new();
    let mut json = Vec::new();
    for (name, y) in outputs {
        let flat: Vec<f32> = y.flatten_all()?.to_vec1()?;
        if y.dims().len() != 2 {
            if !a.json {
                writeln!(out, "{name}: output {:?} (not a classifier output; use --save-output)", y.dims())?;
            }
            continue;
        }
        let top = top_k(&flat, a.top, labels);
        if a.json {
            json.push(serde_json::json!({"file": name, "top": top}));
        } else {
            if outputs.len() > 1 {
                writeln!(out, "{name}:")?;
            }
            for s in &top {
                writeln!(out, "  {:>5}  {:<30} {:.3}", s.class, s.label, s.score)?;
            }
        }
    }
    if a.json {
        let v = if json.len() == 1 { serde_json::json!({"top": json[0]["top"]}) } else { serde_json::Value::Array(json) };
        writeln!(out, "{}", serde_json::to_string(&v)?)?;
    }
    emit(&out)
}
