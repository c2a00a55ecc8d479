//! Transfer learning: data folders, a training-mode forward pass over IR nodes, optimizers,
//! metrics, callbacks and the training loop. The command line (`tlc train`, `tlc eval`,
//! `tlc features`) only parses arguments, calls these and prints.

pub mod callbacks;
pub mod checkpoint;
pub mod config;
pub mod data;
mod epoch;
pub mod evaluate;
pub mod fit;
pub mod forward;
mod inputs;
pub mod metrics;
pub mod optim;
mod phase;
pub mod plot;
pub mod prepare;
pub mod report;
mod resume;
