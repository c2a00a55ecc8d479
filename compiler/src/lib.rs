//! tlc compiler: spec text in, checked IR graph and diagnostics out.
pub mod meta;
