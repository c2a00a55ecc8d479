//! What a training run is asked to do: the hyper-parameters ([`Config`]) and the files
//! ([`Request`]). The request is saved as `RUN/config.json`; `tlc train --resume RUN` reads it
//! back, so a resumed run continues with exactly the settings it started with.

use super::callbacks::ReduceLROnPlateau;
use super::optim::Kind;
use crate::weights::write_atomic;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the first phase trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Freeze {
    /// Only the new head (base features computed once and cached).
    Base,
    /// Everything.
    None,
    /// Every node up to and including the node (or scope) named, trains the rest.
    Until(String),
}

impl Freeze {
    /// Parses `base`, `none` or `until:NODE`.
    pub fn parse(s: &str) -> Result<Freeze> {
        Ok(match s {
            "base" => Freeze::Base,
            "none" => Freeze::None,
            _ => match s.strip_prefix("until:") {
                Some(n) if !n.is_empty() => Freeze::Until(n.to_string()),
                _ => bail!("--freeze {s}: use base, none or until:NODE"),
            },
        })
    }
}

/// What fine-tuning unfreezes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unfreeze {
    /// The last K parameterised nodes of the base (a conv, a BatchNorm, a linear layer each).
    Last(usize),
    /// The node (or scope) named and every node after it.
    From(String),
}

impl Unfreeze {
    /// Parses `last:K` or `from:NODE`.
    pub fn parse(s: &str) -> Result<Unfreeze> {
        if let Some(k) = s.strip_prefix("last:") {
            let k: usize = k.parse().map_err(|_| anyhow!("--unfreeze {s}: K must be a positive integer"))?;
            if k == 0 {
                bail!("--unfreeze last:0 unfreezes nothing");
            }
            return Ok(Unfreeze::Last(k));
        }
        match s.strip_prefix("from:") {
            Some(n) if !n.is_empty() => Ok(Unfreeze::From(n.to_string())),
            _ => bail!("--unfreeze {s}: use last:K or from:NODE"),
        }
    }
}

/// The fine-tuning phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FineTune {
    /// Epochs.
    pub epochs: usize,
    /// What to unfreeze.
    pub unfreeze: Unfreeze,
    /// Its learning rate.
    pub lr: f64,
}

/// Learning-rate schedule within a phase (per epoch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Constant.
    Constant,
    /// Multiplied by `gamma` every `every` epochs (PyTorch `StepLR`).
    Step { every: usize, gamma: f64 },
    /// Cosine annealing to 0 over the phase (PyTorch `CosineAnnealingLR`, `T_max` = epochs).
    Cosine,
}

impl Schedule {
    /// Parses `constant`, `step:EPOCHS:GAMMA` or `cosine`.
    pub fn parse(s: &str) -> Result<Schedule> {
        if s == "constant" || s == "none" {
            return Ok(Schedule::Constant);
        }
        if s == "cosine" {
            return Ok(Schedule::Cosine);
        }
        if let Some(rest) = s.strip_prefix("step:") {
            let mut it = rest.split(':');
            let every = it.next().and_then(|v| v.parse::<usize>().ok()).filter(|&v| v > 0);
            let gamma = it.next().and_then(|v| v.parse::<f64>().ok()).filter(|g| g.is_finite() && *g > 0.0);
            if let (Some(every), Some(gamma), None) = (every, gamma, it.next()) {
                return Ok(Schedule::Step { every, gamma });
            }
        }
        bail!("--schedule {s}: use step:EPOCHS:GAMMA (e.g. step:5:0.1), cosine or constant")
    }

    /// The factor of the phase's learning rate in its epoch `e` (0-based) of `epochs`.
    pub fn factor(&self, e: usize, epochs: usize) -> f64 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Step { every, gamma } => gamma.powi((e / every) as i32),
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * e as f64 / epochs.max(1) as f64).cos()),
        }
    }
}

/// Hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Epochs of the first phase.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch: usize,
    /// Learning rate of the first phase.
    pub lr: f64,
    /// Optimizer.
    pub optimizer: Kind,
    /// Weight decay.
    pub weight_decay: f64,
    /// Seed of the head initialisation, split, shuffles, dropout and augmentation.
    pub seed: u64,
    /// Stop a phase after this many epochs without a lower validation loss, restoring the
    /// best weights (those of `best.safetensors`).
    pub early_stopping: Option<usize>,
    /// What the first phase trains.
    pub freeze: Freeze,
    /// Augment training images (random resized crop, flip) in phases that train part of the
    /// base; never with a frozen base (its features are cached).
    pub augment: bool,
    /// Fine-tuning after the first phase.
    pub fine_tune: Option<FineTune>,
    /// BatchNorm layers with frozen parameters use batch statistics and update their running
    /// statistics (otherwise they run in inference mode).
    pub train_bn: bool,
    /// Learning-rate schedule of each phase.
    pub schedule: Schedule,
    /// Lower the learning rate when the validation loss stops improving (PyTorch
    /// `ReduceLROnPlateau` semantics and defaults).
    pub reduce_lr_on_plateau: Option<ReduceLROnPlateau>,
    /// Stop (as if interrupted) after this many epochs of this invocation; `--resume`
    /// continues. Not saved: it belongs to one invocation.
    #[serde(skip)]
    pub stop_after: Option<usize>,
}

/// A training run as asked: the files and the hyper-parameters (`RUN/config.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Spec of the pretrained network (cut at its `head:`).
    pub spec: PathBuf,
    /// Its variant.
    pub variant: Option<String>,
    /// Pretrained weights (`None`: the spec's checkpoint through the hub).
    pub weights: Option<PathBuf>,
    /// Dataset root.
    pub data: PathBuf,
    /// Output folder.
    pub out: PathBuf,
    /// The new head as a chain (`None`: the default head).
    pub head: Option<String>,
    /// Fraction of each class held out for validation when the data has no `val/` folder.
    pub val_split: Option<f64>,
    /// `cpu` or `cuda[:N]`.
    pub device: String,
    /// Hyper-parameters.
    pub config: Config,
}

/// The file of a run folder that holds its [`Request`].
pub const CONFIG_FILE: &str = "config.json";

impl Request {
    /// The request with absolute paths (resolved against the working folder), so that the
    /// saved request works from anywhere.
    pub fn absolute(mut self) -> Request {
        self.spec = absolute(&self.spec);
        self.weights = self.weights.as_deref().map(absolute);
        self.data = absolute(&self.data);
        self
    }

    /// Writes `config.json` into the output folder (atomically).
    pub fn save(&self) -> Result<()> {
        std::fs::create_dir_all(&self.out).with_context(|| format!("cannot create {}", self.out.display()))?;
        write_atomic(&self.out.join(CONFIG_FILE), serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// The request of the run in `run` (its `config.json`), writing into `run` from now on.
    pub fn load(run: &Path) -> Result<Request> {
        let path = run.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot resume {}: no readable {}", run.display(), path.display()))?;
        let mut r: Request = serde_json::from_str(&text).with_context(|| format!("{} is not a training configuration", path.display()))?;
        r.out = run.to_path_buf();
        Ok(r)
    }
}

/// `p` made absolute (canonical when it exists).
fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_and_phase_flags_parse() {
        assert_eq!(Schedule::parse("step:2:0.5").unwrap(), Schedule::Step { every: 2, gamma: 0.5 });
        let s = Schedule::Step { every: 2, gamma: 0.5 };
        assert_eq!((0..5).map(|e| s.factor(e, 5)).collect::<Vec<_>>(), vec![1.0, 1.0, 0.5, 0.5, 0.25]);
        let c = Schedule::parse("cosine").unwrap();
        assert!((c.factor(0, 4) - 1.0).abs() < 1e-12 && (c.factor(2, 4) - 0.5).abs() < 1e-12);
        assert!(Schedule::parse("step:0:0.1").is_err() && Schedule::parse("linear").is_err());
        assert_eq!(Unfreeze::parse("last:3").unwrap(), Unfreeze::Last(3));
        assert_eq!(Unfreeze::parse("from:_blocks.15").unwrap(), Unfreeze::From("_blocks.15".into()));
        assert_eq!(Freeze::parse("until:_blocks.3").unwrap(), Freeze::Until("_blocks.3".into()));
        assert!(Freeze::parse("until:").is_err() && Unfreeze::parse("last:0").is_err());
    }

    fn request(out: &Path) -> Request {
        Request {
            spec: "/specs/efficientnet_lite.yaml".into(),
            variant: Some("lite0".into()),
            weights: None,
            data: "/data/hymenoptera".into(),
            out: out.to_path_buf(),
            head: Some("avgpool -> linear(classes)".into()),
            val_split: Some(0.2),
            device: "cpu".into(),
            config: Config {
                epochs: 20,
                batch: 32,
                lr: 1e-3,
                optimizer: Kind::Sgd { momentum: 0.9, nesterov: true },
                weight_decay: 0.0,
                seed: 7,
                early_stopping: Some(3),
                freeze: Freeze::Until("_blocks.12".into()),
                augment: true,
                fine_tune: Some(FineTune { epochs: 5, unfreeze: Unfreeze::Last(8), lr: 1e-4 }),
                train_bn: false,
                schedule: Schedule::Step { every: 5, gamma: 0.1 },
                reduce_lr_on_plateau: Some(ReduceLROnPlateau::parse("4:0.5").unwrap()),
                stop_after: Some(2),
            },
        }
    }

    #[test]
    fn the_saved_request_is_what_resume_reads() {
        let dir = std::env::temp_dir().join(format!("tlc-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let r = request(&dir.join("run"));
        r.save().unwrap();
        // Resuming from a moved run folder writes into the folder given.
        std::fs::rename(dir.join("run"), dir.join("moved")).unwrap();
        let back = Request::load(&dir.join("moved")).unwrap();
        let want = Request { out: dir.join("moved"), config: Config { stop_after: None, ..r.config.clone() }, ..r };
        assert_eq!(back, want);
        let text = std::fs::read_to_string(dir.join("moved").join(CONFIG_FILE)).unwrap();
        assert!(text.contains("\"until\": \"_blocks.12\"") && !text.contains("stop_after"), "{text}");
        std::fs::write(dir.join("moved").join(CONFIG_FILE), "{\"spec\": 1}").unwrap();
        assert!(format!("{:#}", Request::load(&dir.join("moved")).unwrap_err()).contains("not a training configuration"));
        assert!(format!("{:#}", Request::load(&dir.join("none")).unwrap_err()).contains("cannot resume"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
