//! Front ends: other frameworks' network descriptions translated into tlc spec text, which
//! then compiles like any hand-written spec.

pub mod darknet;
