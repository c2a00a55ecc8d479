//! tlc runtime: lowers the tlc IR to candle, loads weights and preprocesses images.
pub mod formula;
pub mod kernels;
pub mod preprocess;
pub mod weights;
