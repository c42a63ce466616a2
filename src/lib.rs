//! `handoff`: replace the binary of a running daemon with nothing lost.
//!
//! A supervisor holds the listening sockets and drives a framed control
//! protocol with the running daemon (the *incumbent*) and its replacement
//! (the *successor*). See README.md for the guarantees and ARCHITECTURE.md for
//! the design; the invariants cited as `I<n>` in comments are numbered there.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod error;
pub mod registry;
pub mod timeouts;
pub mod wire;

mod connections;
mod drain;
mod gate;
mod items;

pub use connections::{Arrival, Connection, ConnectionPort, MAX_UNREAD, Origin};
pub use drain::{DrainReport, Drainable, SealProgress};
pub use error::{Error, Result};
pub use gate::{AcceptGate, Admitted, Listener};
pub use items::{Blob, ITEM_NAME_MAX, ITEMS_MAX, ItemStore};
pub use registry::{HandlerGuard, HandlerRegistry, HandlerSource};
pub use timeouts::Timeouts;
pub use wire::{Fingerprint, Health, Mode, SealInfo, Snapshot};
pub(crate) mod channel;
pub(crate) mod incumbent;
pub mod protocol;
mod successor;
pub(crate) mod sys;

pub use incumbent::EXIT_ABORTED;
pub use protocol::Ending;
pub use successor::{
    Begun, ENV_CONTROL_FD, ENV_DATA_DIR, ENV_HEARTBEAT_MS, ENV_SUPERVISOR_PID, Generation, Live,
    ReadyReport, StartOptions, Warming, start,
};
pub use sys::ListenAddr;
pub mod fault;
pub mod os;
pub mod probe;
pub mod rendezvous;
pub mod supervisor;
