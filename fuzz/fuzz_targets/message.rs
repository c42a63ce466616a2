//! Arbitrary payloads postcard-decoded as `handoff::wire::Envelope`.
//!
//! Checked, beyond "never panics" (nor allocates without bound): an
//! envelope that decodes re-encodes to bytes that decode to the same value,
//! and those bytes are a fixed point (encoding is canonical from there on).
//! The seed corpus is the payload of every golden frame.

#![no_main]

use handoff::wire::{Envelope, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = postcard::from_bytes::<Envelope>(data) else {
        return;
    };
    // The decoded value is usable: names, reasons and fingerprints render.
    let _ = envelope.message.name();
    let _ = envelope.message.fd_count();
    let _ = format!("{envelope:?}");
    if let Message::Refused { reason, .. }
    | Message::Abort { reason }
    | Message::Failed { reason } = &envelope.message
    {
        let _ = reason.to_string();
    }
    let bytes = postcard::to_stdvec(&envelope).expect("a decoded envelope encodes");
    let again: Envelope = postcard::from_bytes(&bytes).expect("its encoding decodes");
    assert_eq!(again, envelope);
    assert_eq!(postcard::to_stdvec(&again).expect("encodes"), bytes);
});
