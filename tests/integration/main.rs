//! The one integration-test binary of the library: real processes, real
//! sockets, real files. One module per scenario family.

mod common;
mod handoff;
mod zero_loss;
