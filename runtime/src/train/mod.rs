//! Transfer learning: data folders, a training-mode forward pass over IR nodes, optimizers,
//! metrics and the training loop. The command line (`tlc train`, `tlc eval`,
//! `tlc features`) only parses arguments and calls these.

pub mod checkpoint;
pub mod data;
pub mod fit;
pub mod forward;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod rng;
