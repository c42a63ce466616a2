//! The one integration-test binary of the library: real processes, real
//! sockets, real files. One module per scenario family.

mod common;
#[cfg(feature = "fault-injection")]
mod faults;
mod handoff;
mod hostile;
mod kvd;
mod locks;
mod processes;
mod registry;
mod zero_loss;
