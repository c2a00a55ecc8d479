//! tlc compiler: spec text in, checked IR graph and diagnostics out.
pub mod meta;
pub mod diag;
pub mod expr;
pub mod render;
pub mod span;
pub mod yaml;
pub mod ir;
pub mod ops;
