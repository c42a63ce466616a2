//! `handoffctl`: thin glue over the `handoff` library (see issue 3).
fn main() {}
