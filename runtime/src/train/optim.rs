//! Optimizers with PyTorch's update rules: SGD (momentum, Nesterov, weight decay), Adam,
//! AdamW and RMSprop. Only the variables handed in are updated and get state, so frozen
//! parameters (which are plain tensors, not variables) have neither gradient nor state.

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// Which optimizer.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// SGD with optional momentum and Nesterov momentum.
    Sgd { momentum: f64, nesterov: bool },
    /// Adam (L2 weight decay added to the gradient).
    Adam,
    /// AdamW (decoupled weight decay).
    AdamW,
    /// RMSprop (alpha 0.99).
    RmsProp,
}

impl Kind {
    /// Parses `adam`, `adamw`, `sgd`, `rmsprop`.
    pub fn parse(s: &str, momentum: f64, nesterov: bool) -> Result<Kind> {
        Ok(match s {
            "adam" => Kind::Adam,
            "adamw" => Kind::AdamW,
            "sgd" => Kind::Sgd { momentum, nesterov },
            "rmsprop" => Kind::RmsProp,
            other => bail!("unknown optimizer `{other}`: use adam, adamw, sgd or rmsprop"),
        })
    }

    /// The weight decay when none is given: 0.01 for AdamW (PyTorch's default), 0 otherwise.
    pub fn default_weight_decay(&self) -> f64 {
        if *self == Kind::AdamW {
            0.01
        } else {
            0.0
        }
    }
}

/// Per-variable optimizer state: first and second buffers (SGD keeps its momentum first).
pub type VarState = (Option<Tensor>, Option<Tensor>);

/// An optimizer over a set of variables.
pub struct Optimizer {
    kind: Kind,
    /// Learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    vars: Vec<Var>,
    state: Vec<VarState>,
    t: i32,
}

const B1: f64 = 0.9;
const B2: f64 = 0.999;
const EPS: f64 = 1e-8;
const ALPHA: f64 = 0.99;

impl Optimizer {
    /// An optimizer for `vars`.
    pub fn new(kind: Kind, vars: Vec<Var>, lr: f64, weight_decay: f64) -> Optimizer {
        let state = vars.iter().map(|_| (None, None)).collect();
        Optimizer { kind, lr, weight_decay, vars, state, t: 0 }
    }

    /// The variables.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Steps taken so far and the per-variable state (first and second moment buffers;
    /// SGD keeps its momentum buffer first), to save a run.
    pub fn export(&self) -> (i32, Vec<VarState>) {
        (self.t, self.state.clone())
    }

    /// Restores what [`Optimizer::export`] gave (same variables, same order).
    pub fn import(&mut self, t: i32, state: Vec<VarState>) -> Result<()> {
        if state.len() != self.vars.len() {
            bail!("optimizer state for {} variables, the run has {}", state.len(), self.vars.len());
        }
        self.t = t;
        self.state = state;
        Ok(())
    }

    /// One update from `grads` (variables without a gradient are left alone).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.t += 1;
        let (lr, wd, t) = (self.lr, self.weight_decay, self.t);
        for (v, st) in self.vars.iter().zip(self.state.iter_mut()) {
            let Some(g) = grads.get(v.as_tensor()) else { continue };
            let p = v.as_tensor().detach();
            let mut g = g.detach();
            if wd != 0.0 && self.kind != Kind::AdamW {
                g = (g + (&p * wd)?)?;
            }
            let new = match self.kind {
                Kind::Sgd { momentum, nesterov } => {
                    let d = if momentum != 0.0 {
                        let buf = match &st.0 {
                            Some(b) => ((b * momentum)? + &g)?,
                            None => g.clone(),
                        };
                        st.0 = Some(buf.clone());
                        if nesterov { (&g + (buf * momentum)?)? } else { buf }
                    } else {
                        g
                    };
                    (p - (d * lr)?)?
                }
                Kind::Adam | Kind::AdamW => {
                    let p = if self.kind == Kind::AdamW && wd != 0.0 { (&p * (1.0 - lr * wd))? } else { p };
                    let m = match &st.0 {
                        Some(m) => ((m * B1)? + (&g * (1.0 - B1))?)?,
                        None => (&g * (1.0 - B1))?,
                    };
                    let vv = match &st.1 {
                        Some(v) => ((v * B2)? + (g.sqr()? * (1.0 - B2))?)?,
                        None => (g.sqr()? * (1.0 - B2))?,
                    };
                    let bc1 = 1.0 - B1.powi(t);
                    let bc2 = 1.0 - B2.powi(t);
                    let denom = ((vv.sqrt()? / bc2.sqrt())? + EPS)?;
                    let upd = (m.div(&denom)? * (lr / bc1))?;
                    st.0 = Some(m);
                    st.1 = Some(vv);
                    (p - upd)?
                }
                Kind::RmsProp => {
                    let sq = match &st.1 {
                        Some(s) => ((s * ALPHA)? + (g.sqr()? * (1.0 - ALPHA))?)?,
                        None => (g.sqr()? * (1.0 - ALPHA))?,
                    };
                    let upd = (g.div(&(sq.sqrt()? + EPS)?)? * lr)?;
                    st.1 = Some(sq);
                    (p - upd)?
                }
            };
            v.set(&new)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn minimise(kind: Kind, lr: f64) -> f32 {
        // f(x) = sum((x - 3)^2) from x = 0.
        let x = Var::from_vec(vec![0f32, 1.0], 2, &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(kind, vec![x.clone()], lr, 0.0);
        for _ in 0..500 {
            let loss = (x.as_tensor() - 3.0).unwrap().sqr().unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            opt.step(&g).unwrap();
        }
        let v: Vec<f32> = x.as_tensor().to_vec1().unwrap();
        v.iter().map(|a| (a - 3.0).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn every_optimizer_converges() {
        assert!(minimise(Kind::Sgd { momentum: 0.0, nesterov: false }, 0.05) < 1e-3);
        assert!(minimise(Kind::Sgd { momentum: 0.9, nesterov: true }, 0.01) < 1e-3);
        assert!(minimise(Kind::Adam, 0.05) < 1e-2);
        assert!(minimise(Kind::AdamW, 0.05) < 1e-2);
        assert!(minimise(Kind::RmsProp, 0.01) < 2e-2);
    }

    #[test]
    fn adam_first_step_matches_pytorch() {
        // torch: p=1, g=2(p-3)=-4, Adam lr 0.1: first step moves by lr * sign = +0.1.
        let x = Var::from_vec(vec![1f32], 1, &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(Kind::Adam, vec![x.clone()], 0.1, 0.0);
        let loss = (x.as_tensor() - 3.0).unwrap().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let v: Vec<f32> = x.as_tensor().to_vec1().unwrap();
        assert!((v[0] - 1.1).abs() < 1e-5, "{v:?}");
    }
}
