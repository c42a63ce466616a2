//! Sans-I/O wire format: frames and messages. Nothing here touches a socket.
//!
//! See ARCHITECTURE.md, "Wire format", for the header layout and the table of
//! messages; `golden` pins every message's bytes (invariant I10).

mod frame;
mod message;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;

pub(crate) use frame::per_frame;
pub use frame::{
    Decoder, Frame, HEADER_LEN, MAGIC, MAX_FDS_PER_FRAME, MAX_PAYLOAD, WIRE_VERSION, encode,
};
pub use message::{
    AbortReason, BlobInfo, CAP_CONNECTIONS, CAP_ITEMS, ConnectionEntry, Envelope, FdEntry, FdKind,
    Fingerprint, FingerprintHasher, Health, ITEMS_REMOVED_VERSION, ITEMS_VERSION, ItemEntry,
    Message, Mode, PROTOCOL_VERSIONS, Role, Schema, SchemaRange, SealInfo, Snapshot, VersionRange,
};
