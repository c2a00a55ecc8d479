//! tlc runtime: lowers the tlc IR to candle, loads weights and preprocesses images.
pub mod detect;
pub mod draw;
pub mod exec;
pub mod export;
pub mod formula;
pub mod hub;
pub mod kernels;
pub mod labels;
pub mod model;
pub mod optimize;
pub mod preprocess;
pub mod pretrained;
pub mod train;
pub mod weights;

pub use model::Model;

/// `../shared/<rel>` beside the repository for tests, or `None` (with a note) when absent.
#[cfg(test)]
pub(crate) fn shared_asset(rel: &str) -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/")).join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: shared asset {} not found", p.display());
        None
    }
}
