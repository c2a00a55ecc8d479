//! The resume point, `RUN/resume.safetensors`: one atomic file with the loop's state (JSON
//! metadata `state`: position, random generator, callbacks, history), the parameters that
//! changed (current and best) and the optimizer's buffers. Written last after each epoch, so
//! a kill at any moment leaves a consistent point to continue from.

use super::callbacks::{Best, EarlyStopping, Params, ReduceLROnPlateau};
use super::checkpoint::{read_metadata, save_with_metadata};
use super::config::Config;
use super::optim::VarState;
use super::report::{Epoch, PhaseInfo};
use crate::rng::Rng;
use crate::weights::Weights;
use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

/// The state of the training loop between epochs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct State {
    /// Phase in progress (index), and epochs it has completed.
    pub phase: usize,
    pub phase_epoch: usize,
    /// The phase has ended (all epochs, or early stopping).
    pub phase_done: bool,
    /// Epochs completed in all.
    pub epoch: usize,
    /// The random generator.
    pub rng: u64,
    /// Optimizer steps of the phase.
    pub opt_t: i32,
    /// Factor of the phase's learning rate from the callbacks (reduce on plateau).
    pub lr_scale: f64,
    /// The best epoch so far ([`super::callbacks::ModelCheckpoint`]).
    pub best: Option<Best>,
    /// Callbacks with their progress.
    pub plateau: Option<ReduceLROnPlateau>,
    pub early_stopping: Option<EarlyStopping>,
    pub epochs: Vec<Epoch>,
    pub phases: Vec<PhaseInfo>,
    pub train_seconds: f64,
    /// Parameters that differ from their initial values (saved in the file).
    pub changed: Vec<String>,
    /// Trainable variables of the phase (order of the optimizer state).
    pub vars: Vec<String>,
}

impl State {
    /// The state before the first epoch.
    pub fn new(cfg: &Config) -> State {
        State {
            phase: 0,
            phase_epoch: 0,
            phase_done: false,
            epoch: 0,
            rng: Rng::new(cfg.seed).state(),
            opt_t: 0,
            lr_scale: 1.0,
            best: None,
            plateau: cfg.reduce_lr_on_plateau.clone(),
            early_stopping: cfg.early_stopping.map(EarlyStopping::new),
            epochs: Vec::new(),
            phases: Vec::new(),
            train_seconds: 0.0,
            changed: Vec::new(),
            vars: Vec::new(),
        }
    }
}

/// A run read back from its resume point.
pub(super) struct Resumed {
    pub state: State,
    /// Current and best values of the changed parameters.
    pub params: Params,
    pub best: Params,
    /// Optimizer steps and buffers (`m/<var>`, `v/<var>`) of the phase in progress.
    pub opt: (i32, HashMap<String, Tensor>),
}

/// The resume point of a run folder.
pub(super) struct ResumePoint {
    /// The file.
    pub path: PathBuf,
}

impl ResumePoint {
    /// Writes the state, the changed parameters (current and `best`) and the optimizer's
    /// buffers of `vars`, in one atomic file.
    pub fn save(&self, st: &State, params: &Params, best: &Params, vars: &[String], opt: &[VarState]) -> Result<()> {
        let mut list: Vec<(String, Tensor)> = Vec::new();
        for name in &st.changed {
            list.push((format!("param/{name}"), params[name].detach()));
            list.push((format!("best/{name}"), best[name].detach()));
        }
        for (name, (m, v)) in vars.iter().zip(opt) {
            if let Some(m) = m {
                list.push((format!("m/{name}"), m.detach()));
            }
            if let Some(v) = v {
                list.push((format!("v/{name}"), v.detach()));
            }
        }
        let meta: HashMap<String, String> = [("state".to_string(), serde_json::to_string(st)?)].into_iter().collect();
        save_with_metadata(&list, meta, &self.path)
    }

    /// Reads the resume point onto `dev`.
    pub fn load(&self, dev: &Device) -> Result<Resumed> {
        let path = &self.path;
        let folder = path.parent().map(|p| p.display().to_string()).unwrap_or_default();
        let meta = read_metadata(path).with_context(|| format!("nothing to resume in {folder}"))?;
        let state: State = serde_json::from_str(meta.get("state").ok_or_else(|| anyhow!("{}: no training state", path.display()))?)
            .with_context(|| format!("{}: the training state is unreadable (written by another version of tlc?)", path.display()))?;
        let w = Weights::load(path)?;
        let get = |k: &str| -> Result<Tensor> { Ok(w.get(k).ok_or_else(|| anyhow!("{}: `{k}` missing", path.display()))?.to_device(dev)?) };
        let (mut params, mut best) = (Params::new(), Params::new());
        for name in &state.changed {
            params.insert(name.clone(), get(&format!("param/{name}"))?);
            best.insert(name.clone(), get(&format!("best/{name}"))?);
        }
        let mut opt = HashMap::new();
        for name in &state.vars {
            for k in ["m", "v"] {
                if let Some(t) = w.get(&format!("{k}/{name}")) {
                    opt.insert(format!("{k}/{name}"), t.to_device(dev)?);
                }
            }
        }
        let opt = (state.opt_t, opt);
        Ok(Resumed { state, params, best, opt })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::callbacks::{Callback, EpochEnd};
    use crate::train::config::{Freeze, Schedule};
    use crate::train::optim::Kind;

    fn config() -> Config {
        Config {
            epochs: 3,
            batch: 4,
            lr: 0.1,
            optimizer: Kind::Adam,
            weight_decay: 0.0,
            seed: 5,
            early_stopping: Some(2),
            freeze: Freeze::None,
            augment: true,
            fine_tune: None,
            train_bn: false,
            schedule: Schedule::Constant,
            reduce_lr_on_plateau: Some(ReduceLROnPlateau::parse("1:0.5").unwrap()),
            stop_after: None,
        }
    }

    #[test]
    fn the_resume_point_gives_back_state_parameters_and_optimizer_buffers() {
        let dir = std::env::temp_dir().join(format!("tlc-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let point = ResumePoint { path: dir.join("resume.safetensors") };
        let mut st = State::new(&config());
        let e = Epoch { epoch: 1, phase: "train".into(), loss: 0.7, accuracy: 0.5, val_loss: 0.6, val_accuracy: 0.75, lr: 0.1, seconds: 1.0 };
        let none = Params::new();
        let end = EpochEnd { epoch: &e, history: std::slice::from_ref(&e), params: &none };
        st.plateau.as_mut().unwrap().epoch_end(&end, &mut |_| {}).unwrap();
        st.early_stopping.as_mut().unwrap().epoch_end(&end, &mut |_| {}).unwrap();
        (st.epoch, st.phase_epoch, st.best, st.epochs) = (1, 1, Some(Best { accuracy: 0.75, loss: 0.6, epoch: 1 }), vec![e]);
        st.changed = vec!["fc.weight".into()];
        st.vars = vec!["fc.weight".into()];
        let t = |v: f32| Tensor::new(&[v, v], &Device::Cpu).unwrap();
        let params: Params = [("fc.weight".to_string(), t(1.0))].into_iter().collect();
        let best: Params = [("fc.weight".to_string(), t(2.0))].into_iter().collect();
        point.save(&st, &params, &best, &st.vars, &[(Some(t(3.0)), None)]).unwrap();
        let r = point.load(&Device::Cpu).unwrap();
        assert_eq!(serde_json::to_string(&r.state).unwrap(), serde_json::to_string(&st).unwrap());
        assert_eq!(r.params["fc.weight"].to_vec1::<f32>().unwrap(), [1.0, 1.0]);
        assert_eq!(r.best["fc.weight"].to_vec1::<f32>().unwrap(), [2.0, 2.0]);
        assert_eq!(r.opt.1["m/fc.weight"].to_vec1::<f32>().unwrap(), [3.0, 3.0]);
        assert!(!r.opt.1.contains_key("v/fc.weight"));
        // A state without a best epoch or a plateau best (infinite losses) reads back too.
        let fresh = State::new(&config());
        point.save(&fresh, &Params::new(), &Params::new(), &[], &[]).unwrap();
        assert!(point.load(&Device::Cpu).unwrap().state.best.is_none());
        std::fs::remove_file(&point.path).unwrap();
        assert!(format!("{:#}", point.load(&Device::Cpu).err().unwrap()).contains("nothing to resume"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
