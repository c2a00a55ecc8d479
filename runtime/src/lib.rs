//! tlc runtime: lowers the tlc IR to candle, loads weights and preprocesses images.
pub mod detect;
pub mod draw;
pub mod exec;
pub mod formula;
pub mod kernels;
pub mod labels;
pub mod model;
pub mod optimize;
pub mod preprocess;
pub mod train;
pub mod weights;

pub use model::Model;
