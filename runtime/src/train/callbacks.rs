//! The training loop's callbacks, as Keras has them: after each epoch every callback sees
//! the epoch's numbers and says what the loop should do next ([`Control`]: scale the learning
//! rate, stop the phase, restore the best weights). Their state is plain data, saved in the
//! resume point so that an interrupted run continues exactly.

use super::report::Epoch;
use super::plot::curves_png;
use crate::weights::{save_safetensors, write_atomic};
use anyhow::{bail, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Tensors by parameter name.
pub type Params = HashMap<String, Tensor>;

/// What the callbacks ask of the loop after an epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Control {
    /// Multiply the learning rate of the rest of the phase by this (1: unchanged).
    pub lr_scale: f64,
    /// End the phase now.
    pub stop: bool,
    /// Go on from the best weights so far (those of `best.safetensors`).
    pub restore_best: bool,
}

impl Default for Control {
    fn default() -> Control {
        Control { lr_scale: 1.0, stop: false, restore_best: false }
    }
}

impl Control {
    /// Both requests: the scales multiplied, either stop or restore.
    pub fn and(self, other: Control) -> Control {
        Control { lr_scale: self.lr_scale * other.lr_scale, stop: self.stop || other.stop, restore_best: self.restore_best || other.restore_best }
    }
}

/// What a callback sees at the end of an epoch.
pub struct EpochEnd<'a> {
    /// The epoch's numbers (its learning rate, losses and accuracies).
    pub epoch: &'a Epoch,
    /// Every epoch of the run so far, this one last.
    pub history: &'a [Epoch],
    /// The weights after the epoch.
    pub params: &'a Params,
}

/// A callback of the training loop.
pub trait Callback {
    /// A phase starts afresh (not when a run resumes inside it).
    fn phase_begin(&mut self) {}
    /// An epoch ended; `log` takes progress lines.
    fn epoch_end(&mut self, end: &EpochEnd, log: &mut dyn FnMut(&str)) -> Result<Control>;
}

/// Ends a phase after `patience` epochs without a lower validation loss and asks for the
/// best weights back (Keras `EarlyStopping(restore_best_weights=True)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Epochs without a lower validation loss before the phase stops.
    pub patience: usize,
    /// Lowest validation loss of the phase.
    best: Option<f64>,
    /// Epochs since it.
    wait: usize,
}

impl EarlyStopping {
    /// Stops after `patience` epochs without improvement.
    pub fn new(patience: usize) -> EarlyStopping {
        EarlyStopping { patience, best: None, wait: 0 }
    }

    /// Epochs since the lowest validation loss of the phase.
    pub fn wait(&self) -> usize {
        self.wait
    }
}

impl Callback for EarlyStopping {
    fn phase_begin(&mut self) {
        self.best = None;
        self.wait = 0;
    }

    fn epoch_end(&mut self, end: &EpochEnd, _log: &mut dyn FnMut(&str)) -> Result<Control> {
        let loss = end.epoch.val_loss;
        if loss < self.best.unwrap_or(f64::INFINITY) {
            self.best = Some(loss);
            self.wait = 0;
            return Ok(Control::default());
        }
        self.wait += 1;
        let stop = self.wait >= self.patience;
        Ok(Control { stop, restore_best: stop, ..Control::default() })
    }
}

/// Lowers the learning rate when the validation loss has stopped improving: PyTorch
/// `ReduceLROnPlateau(mode="min", threshold_mode="rel")`, its semantics and defaults. An epoch
/// improves when its loss is below `best * (1 - threshold)`; after more than `patience` epochs
/// without improvement the rate is multiplied by `factor` (not below `min_lr`, and only when
/// it changes by more than 1e-8), then `cooldown` epochs pass before bad epochs count again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReduceLROnPlateau {
    /// Epochs without improvement that are tolerated.
    pub patience: usize,
    /// Factor of each reduction.
    pub factor: f64,
    /// Relative improvement that counts.
    pub threshold: f64,
    /// Epochs after a reduction during which bad epochs are not counted.
    pub cooldown: usize,
    /// Lowest learning rate.
    pub min_lr: f64,
    #[serde(default, skip_serializing_if = "PlateauState::is_fresh")]
    state: PlateauState,
}

/// The progress of a [`ReduceLROnPlateau`] within a phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct PlateauState {
    best: Option<f64>,
    bad_epochs: usize,
    cooldown_left: usize,
}

impl PlateauState {
    fn is_fresh(&self) -> bool {
        *self == PlateauState::default()
    }
}

impl Default for ReduceLROnPlateau {
    /// PyTorch's defaults: patience 10, factor 0.1, threshold 1e-4, no cooldown, no minimum.
    fn default() -> ReduceLROnPlateau {
        ReduceLROnPlateau { patience: 10, factor: 0.1, threshold: 1e-4, cooldown: 0, min_lr: 0.0, state: PlateauState::default() }
    }
}

impl ReduceLROnPlateau {
    /// Parses `PATIENCE[:FACTOR]` (the other settings keep PyTorch's defaults).
    pub fn parse(s: &str) -> Result<ReduceLROnPlateau> {
        let (p, f) = match s.split_once(':') {
            Some((p, f)) => (p, Some(f)),
            None => (s, None),
        };
        let patience = p.parse::<usize>().ok();
        let factor = f.map(|f| f.parse::<f64>().ok().filter(|f| *f > 0.0 && *f < 1.0));
        match (patience, factor) {
            (Some(patience), None) => Ok(ReduceLROnPlateau { patience, ..Default::default() }),
            (Some(patience), Some(Some(factor))) => Ok(ReduceLROnPlateau { patience, factor, ..Default::default() }),
            _ => bail!("--reduce-lr-on-plateau={s}: use PATIENCE[:FACTOR] (e.g. 10 or 5:0.5; FACTOR in (0, 1))"),
        }
    }

    /// The learning-rate factor for the next epochs after an epoch at `lr` with `loss`.
    fn step(&mut self, loss: f64, lr: f64) -> f64 {
        let s = &mut self.state;
        if loss < s.best.map_or(f64::INFINITY, |b| b * (1.0 - self.threshold)) {
            s.best = Some(loss);
            s.bad_epochs = 0;
        } else {
            s.bad_epochs += 1;
        }
        if s.cooldown_left > 0 {
            s.cooldown_left -= 1;
            s.bad_epochs = 0;
        }
        if s.bad_epochs <= self.patience {
            return 1.0;
        }
        s.bad_epochs = 0;
        s.cooldown_left = self.cooldown;
        let reduced = lr * self.factor;
        let new_lr = reduced.max(self.min_lr);
        if lr - new_lr <= 1e-8 {
            1.0
        } else if new_lr == reduced {
            self.factor
        } else {
            new_lr / lr
        }
    }
}

impl Callback for ReduceLROnPlateau {
    fn phase_begin(&mut self) {
        self.state = PlateauState::default();
    }

    fn epoch_end(&mut self, end: &EpochEnd, _log: &mut dyn FnMut(&str)) -> Result<Control> {
        Ok(Control { lr_scale: self.step(end.epoch.val_loss, end.epoch.lr), ..Control::default() })
    }
}

/// The best epoch so far: highest validation accuracy, ties to the lower validation loss.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// Validation accuracy.
    pub accuracy: f64,
    /// Validation loss.
    pub loss: f64,
    /// 1-based epoch.
    pub epoch: usize,
}

/// Keeps the best weights of the run (across phases) and writes them to `best.safetensors`
/// (Keras `ModelCheckpoint(save_best_only=True)` on validation accuracy).
pub struct ModelCheckpoint {
    /// Where to write the best weights (`None`: keep them in memory only).
    path: Option<PathBuf>,
    /// Parameter names in the file's order.
    names: Vec<String>,
    best: Option<Best>,
    /// Deep copies of the best weights.
    params: Params,
}

impl ModelCheckpoint {
    /// A checkpoint starting from `best` with its weights `params` (the initial weights when
    /// nothing has been trained yet).
    pub fn new(path: Option<PathBuf>, names: Vec<String>, best: Option<Best>, params: Params) -> ModelCheckpoint {
        ModelCheckpoint { path, names, best, params }
    }

    /// The best epoch so far.
    pub fn best(&self) -> Option<Best> {
        self.best
    }

    /// The best weights so far.
    pub fn params(&self) -> &Params {
        &self.params
    }

    fn improves(&self, e: &Epoch) -> bool {
        match self.best {
            None => true,
            Some(b) => e.val_accuracy > b.accuracy || (e.val_accuracy == b.accuracy && e.val_loss < b.loss),
        }
    }
}

impl Callback for ModelCheckpoint {
    fn epoch_end(&mut self, end: &EpochEnd, _log: &mut dyn FnMut(&str)) -> Result<Control> {
        let e = end.epoch;
        if self.improves(e) {
            self.best = Some(Best { accuracy: e.val_accuracy, loss: e.val_loss, epoch: e.epoch });
            self.params = snapshot(end.params)?;
            if let Some(path) = &self.path {
                save_params(&self.names, &self.params, path)?;
            }
        }
        Ok(Control::default())
    }
}

/// Writes every epoch's numbers to `metrics.csv` after each epoch (Keras `CSVLogger`).
pub struct CsvLogger {
    /// The file.
    pub path: PathBuf,
}

/// The header of `metrics.csv`.
pub const CSV_HEADER: &str = "epoch,phase,loss,accuracy,val_loss,val_accuracy,lr,seconds\n";

impl CsvLogger {
    /// The CSV text of `epochs`.
    pub fn csv(epochs: &[Epoch]) -> String {
        let mut csv = String::from(CSV_HEADER);
        for e in epochs {
            csv.push_str(&format!("{},{},{:.6},{:.6},{:.6},{:.6},{:e},{:.3}\n", e.epoch, e.phase, e.loss, e.accuracy, e.val_loss, e.val_accuracy, e.lr, e.seconds));
        }
        csv
    }
}

impl Callback for CsvLogger {
    fn epoch_end(&mut self, end: &EpochEnd, _log: &mut dyn FnMut(&str)) -> Result<Control> {
        write_atomic(&self.path, Self::csv(end.history).as_bytes())?;
        Ok(Control::default())
    }
}

/// Draws the loss and accuracy curves (`curves.png`) after each epoch; a drawing failure is a
/// warning, not an error.
pub struct Plots {
    /// The curves' file.
    pub curves: PathBuf,
}

impl Callback for Plots {
    fn epoch_end(&mut self, end: &EpochEnd, log: &mut dyn FnMut(&str)) -> Result<Control> {
        if let Err(e) = curves_png(end.history, &self.curves) {
            log(&format!("warning: {}: {e:#}", self.curves.file_name().unwrap_or_default().to_string_lossy()));
        }
        Ok(Control::default())
    }
}

/// Deep copies of `params` (a variable's tensor shares its storage with the variable, which
/// the optimizer overwrites in place).
pub fn snapshot(params: &Params) -> Result<Params> {
    params.iter().map(|(k, v)| Ok((k.clone(), v.detach().copy()?))).collect()
}

/// Writes the tensors `names` of `params` to a safetensors file, in that order.
pub fn save_params(names: &[String], params: &Params, path: &Path) -> Result<()> {
    let list: Vec<(String, Tensor)> = names.iter().map(|n| (n.clone(), params[n].detach())).collect();
    save_safetensors(&list, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn epoch(n: usize, val_loss: f64, val_accuracy: f64, lr: f64) -> Epoch {
        Epoch { epoch: n, phase: "frozen".into(), loss: 1.0 / n as f64, accuracy: 0.5, val_loss, val_accuracy, lr, seconds: 0.25 }
    }

    /// Feeds epochs with `losses` (and `lr`) to `cb`; returns each epoch's control.
    fn feed(cb: &mut dyn Callback, losses: &[f64], lr: f64) -> Vec<Control> {
        let params = Params::new();
        let mut history = Vec::new();
        let mut out = Vec::new();
        for (k, &l) in losses.iter().enumerate() {
            history.push(epoch(k + 1, l, 0.5, lr));
            let end = EpochEnd { epoch: history.last().unwrap(), history: &history, params: &params };
            out.push(cb.epoch_end(&end, &mut |_| {}).unwrap());
        }
        out
    }

    #[test]
    fn early_stopping_stops_after_patience_epochs_without_a_lower_loss() {
        let mut es = EarlyStopping::new(2);
        let c = feed(&mut es, &[1.0, 0.9, 0.95, 0.9, 0.8, 0.85], 0.1);
        assert_eq!(c.iter().map(|c| c.stop).collect::<Vec<_>>(), [false, false, false, true, false, false]);
        assert!(c[3].restore_best && c[3].lr_scale == 1.0 && !c[2].restore_best);
        assert_eq!(es.wait(), 1);
        // A new phase forgets the old losses: a higher loss is the new phase's best.
        es.phase_begin();
        let c = feed(&mut es, &[5.0, 5.0, 5.0], 0.1);
        assert_eq!(c.iter().map(|c| c.stop).collect::<Vec<_>>(), [false, false, true]);
        // A NaN-turned-infinite loss never counts as an improvement.
        let mut es = EarlyStopping::new(1);
        assert!(feed(&mut es, &[f64::INFINITY], 0.1)[0].stop);
    }

    #[test]
    fn plateau_lowers_the_rate_after_more_than_patience_bad_epochs() {
        // PyTorch's defaults: patience 10, factor 0.1.
        let mut p = ReduceLROnPlateau::default();
        let c = feed(&mut p, &[1.0; 13], 1e-3);
        let scales: Vec<f64> = c.iter().map(|c| c.lr_scale).collect();
        assert_eq!(scales[..11], [1.0; 11]);
        assert_eq!(scales[11], 0.1);
        assert_eq!(scales[12], 1.0);
        assert!(c.iter().all(|c| !c.stop && !c.restore_best));
        // patience 2, factor 0.5: improvements below the relative threshold 1e-4 are bad epochs.
        let mut p = ReduceLROnPlateau::parse("2:0.5").unwrap();
        let c = feed(&mut p, &[1.0, 0.99995, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8], 1e-2);
        let scales: Vec<f64> = c.iter().map(|c| c.lr_scale).collect();
        assert_eq!(scales, [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.5]);
    }

    #[test]
    fn plateau_cooldown_min_lr_and_tiny_rates() {
        let mut p = ReduceLROnPlateau { patience: 0, cooldown: 2, ..Default::default() };
        let c = feed(&mut p, &[1.0, 1.0, 1.0, 1.0, 1.0], 1.0);
        assert_eq!(c.iter().map(|c| c.lr_scale).collect::<Vec<_>>(), [1.0, 0.1, 1.0, 1.0, 0.1]);
        let mut p = ReduceLROnPlateau { patience: 0, min_lr: 5e-4, ..Default::default() };
        let c = feed(&mut p, &[1.0, 1.0], 1e-3);
        assert!((c[1].lr_scale - 0.5).abs() < 1e-12, "{c:?}");
        // PyTorch leaves the rate alone when it would change by less than 1e-8.
        let mut p = ReduceLROnPlateau { patience: 0, ..Default::default() };
        assert_eq!(feed(&mut p, &[1.0, 1.0], 1e-8)[1].lr_scale, 1.0);
        // A new phase starts counting afresh.
        let mut p = ReduceLROnPlateau::parse("1").unwrap();
        feed(&mut p, &[1.0, 1.0], 1.0);
        p.phase_begin();
        assert_eq!(feed(&mut p, &[2.0, 2.0], 1.0).iter().map(|c| c.lr_scale).collect::<Vec<_>>(), [1.0, 1.0]);
    }

    #[test]
    fn plateau_parses_patience_and_factor() {
        assert_eq!(ReduceLROnPlateau::parse("10").unwrap(), ReduceLROnPlateau::default());
        let p = ReduceLROnPlateau::parse("3:0.5").unwrap();
        assert_eq!((p.patience, p.factor, p.threshold, p.cooldown, p.min_lr), (3, 0.5, 1e-4, 0, 0.0));
        for bad in ["", "x", "3:", "3:1", "3:0", "3:-0.5", "3:0.5:1"] {
            assert!(ReduceLROnPlateau::parse(bad).is_err(), "{bad}");
        }
        // Its progress is saved with the resume point, and absent from a fresh configuration.
        let mut p = ReduceLROnPlateau::parse("1").unwrap();
        assert!(!serde_json::to_string(&p).unwrap().contains("state"));
        feed(&mut p, &[1.0, 1.0], 1.0);
        let back: ReduceLROnPlateau = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    fn params(v: f32) -> Params {
        [("w".to_string(), Tensor::new(&[v, v + 1.0], &Device::Cpu).unwrap())].into_iter().collect()
    }

    #[test]
    fn model_checkpoint_keeps_the_most_accurate_epoch_ties_to_the_lower_loss() {
        let dir = std::env::temp_dir().join(format!("tlc-callbacks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("best.safetensors");
        let mut ck = ModelCheckpoint::new(Some(path.clone()), vec!["w".into()], None, params(0.0));
        let seq = [(0.7, 0.9), (0.8, 0.8), (0.8, 0.85), (0.8, 0.7), (0.6, 0.1)];
        let mut history = Vec::new();
        for (k, &(acc, loss)) in seq.iter().enumerate() {
            history.push(epoch(k + 1, loss, acc, 0.1));
            let p = params(k as f32);
            let c = ck.epoch_end(&EpochEnd { epoch: history.last().unwrap(), history: &history, params: &p }, &mut |_| {}).unwrap();
            assert_eq!(c, Control::default());
        }
        assert_eq!(ck.best(), Some(Best { accuracy: 0.8, loss: 0.7, epoch: 4 }));
        let want = [3.0f32, 4.0];
        assert_eq!(ck.params()["w"].to_vec1::<f32>().unwrap(), want);
        let saved = crate::weights::Weights::load(&path).unwrap();
        assert_eq!(saved.get("w").unwrap().to_vec1::<f32>().unwrap(), want);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn csv_logger_and_plots_write_every_epoch() {
        let dir = std::env::temp_dir().join(format!("tlc-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut csv = CsvLogger { path: dir.join("metrics.csv") };
        let mut plots = Plots { curves: dir.join("curves.png") };
        feed(&mut csv, &[0.5, 0.25], 1e-3);
        feed(&mut plots, &[0.5, 0.25], 1e-3);
        let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert_eq!(text, format!("{CSV_HEADER}1,frozen,1.000000,0.500000,0.500000,0.500000,1e-3,0.250\n2,frozen,0.500000,0.500000,0.250000,0.500000,1e-3,0.250\n"));
        let img = crate::preprocess::load_image(&dir.join("curves.png")).unwrap();
        assert!(img.width() >= 200);
        // A file that cannot be written is a warning from the plots, an error from the CSV.
        let mut warned = Vec::new();
        let mut bad = Plots { curves: dir.join("missing/curves.png") };
        let params = Params::new();
        let h = [epoch(1, 0.5, 0.5, 0.1)];
        bad.epoch_end(&EpochEnd { epoch: &h[0], history: &h, params: &params }, &mut |l| warned.push(l.to_string())).unwrap();
        assert!(warned[0].starts_with("warning: curves.png"), "{warned:?}");
        let mut bad = CsvLogger { path: dir.join("missing/metrics.csv") };
        assert!(bad.epoch_end(&EpochEnd { epoch: &h[0], history: &h, params: &params }, &mut |_| {}).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn controls_combine() {
        let a = Control { lr_scale: 0.5, stop: false, restore_best: false };
        let b = Control { lr_scale: 0.1, stop: true, restore_best: true };
        assert_eq!(a.and(b), Control { lr_scale: 0.05, stop: true, restore_best: true });
        assert_eq!(Control::default().and(a), a);
    }
}
