//! Arbitrary bytes, cut into arbitrary chunks (with fds attached to some),
//! into the one frame decoder, `handoff::wire::Decoder`.
//!
//! Input layout: byte 0 is the chunking plan, the rest is the stream. The
//! plan's low 5 bits cut the stream: 0 pushes it in one chunk, `n` in chunks
//! of 1 to `n + 1` bytes drawn by a xorshift seeded with the plan. Its high
//! 3 bits are a number of `/dev/null` fds that travel with a chunk (as if
//! `recvmsg` had returned them with it): with the one chunk, or with about
//! half of the cut chunks. The seed corpus is golden frames behind a plan
//! that delivers them whole with their declared fds.
//!
//! Checked, beyond "never panics":
//! - after an error the decoder stays errored (every later `next_frame`);
//! - with frames taken after every push, it never buffers more than
//!   `HEADER_LEN + MAX_PAYLOAD` plus the chunk just pushed;
//! - a frame carries exactly the fds its message declares, and its
//!   envelope re-encodes to a frame that decodes to the same envelope;
//! - a clean end of stream leaves the decoder finished.

#![no_main]

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::OnceLock;

use handoff::wire::{Decoder, HEADER_LEN, MAX_PAYLOAD, encode};
use libfuzzer_sys::fuzz_target;

/// One `/dev/null` kept open; each attached fd is a dup of it.
fn dev_null() -> OwnedFd {
    static DEV_NULL: OnceLock<File> = OnceLock::new();
    let file = DEV_NULL.get_or_init(|| File::open("/dev/null").expect("open /dev/null"));
    OwnedFd::from(file.try_clone().expect("dup /dev/null"))
}

/// The chunks of `stream` under `plan`, each with its fd count.
fn chunks(plan: u8, stream: &[u8]) -> Vec<(&[u8], usize)> {
    let fds = usize::from(plan >> 5);
    let max = usize::from(plan & 0x1f) + 1;
    if max == 1 {
        return vec![(stream, fds)];
    }
    let mut state = u32::from(plan) | 0x9e37_7900;
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (state as usize % max + 1).min(rest.len());
        let (head, tail) = rest.split_at(len);
        out.push((head, if state & 0x100 != 0 { fds } else { 0 }));
        rest = tail;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&plan, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::new();
    let mut errored = false;
    for (chunk, fd_count) in chunks(plan, stream) {
        let fds = (0..fd_count).map(|_| dev_null()).collect();
        if decoder.push(chunk, fds).is_err() {
            errored = true;
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(!errored, "a frame came out after an error");
                    assert_eq!(frame.fds.len(), frame.envelope.message.fd_count());
                    let bytes = encode(&frame.envelope).expect("a decoded envelope re-encodes");
                    let mut again = Decoder::new();
                    let fds = (0..frame.fds.len()).map(|_| dev_null()).collect();
                    again.push(&bytes, fds).expect("push a re-encoded frame");
                    let second = again
                        .next_frame()
                        .expect("a re-encoded frame decodes")
                        .expect("a re-encoded frame is whole");
                    assert_eq!(second.envelope, frame.envelope);
                }
                Ok(None) => {
                    assert!(!errored, "the decoder recovered from an error");
                    break;
                }
                Err(_) => {
                    errored = true;
                    break;
                }
            }
        }
        assert!(
            decoder.buffered() <= HEADER_LEN + MAX_PAYLOAD + chunk.len(),
            "buffered {} after a chunk of {}",
            decoder.buffered(),
            chunk.len()
        );
    }
    if decoder.push_eof().is_err() {
        errored = true;
    }
    if errored {
        assert!(decoder.next_frame().is_err(), "an error did not stick");
    } else {
        assert!(decoder.is_finished(), "a clean end of stream left bytes");
    }
});
