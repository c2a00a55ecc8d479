//! tlc runtime: lowers the tlc IR to candle, loads weights and preprocesses images.
pub mod detect;
pub mod draw;
pub mod exec;
pub mod export;
pub mod formula;
pub mod hub;
pub mod kernels;
pub mod labels;
pub mod memory;
pub mod model;
pub mod optimize;
pub mod preprocess;
pub mod pretrained;
pub mod rng;
pub mod train;
pub mod weights;

pub use model::Model;

/// `../shared/<rel>` beside the repository for the unit tests that need it: `Some` when it
/// exists; when it does not, a failure that says where to get it, or `None` (the test returns,
/// saying it skipped) when the run opted out with `TLC_SKIP_SHARED=1` (the same rule as the
/// integration tests' `tests/common` `shared_path`).
#[cfg(test)]
pub(crate) fn shared_asset(rel: &str) -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/")).join(rel);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("TLC_SKIP_SHARED").is_ok_and(|v| v == "1") {
        eprintln!("skipped (TLC_SKIP_SHARED=1): {} is missing", p.display());
        return None;
    }
    panic!(
        "this test needs {}: ../shared beside the repository holds the parity fixtures and real assets every \
         developer and CI run have (shared/README.md; fixtures regenerate with shared/parity/make_fixtures.py, \
         assets are listed with their sources in shared/assets/PROVENANCE.md). Put it there, or set TLC_SKIP_SHARED=1 \
         to skip the tests that need it.",
        p.display()
    )
}
