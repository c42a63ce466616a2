//! Codec properties: round trips through the decoder under any chunking,
//! resistance to garbage, the caps checked before allocation, and the rule
//! that fds are handed out only with the frame that declared them.
//!
//! Chunkings that carry fds follow the kernel's rule for `SCM_RIGHTS` on a
//! stream socket (unix(7), "Ancillary messages"): the fds of one `sendmsg`
//! arrive with the `recvmsg` that returns that send's first byte; the same
//! read may start with bytes of earlier sends, but stops at the end of the
//! fd-carrying send. The sender (`sys::send_frame`) sends each frame with one
//! `sendmsg`.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use proptest::collection::vec;
use proptest::prelude::*;

use super::{
    AbortReason, BlobInfo, ConnectionEntry, Decoder, Envelope, FdEntry, FdKind, Fingerprint, Frame,
    HEADER_LEN, Health, ItemEntry, MAGIC, MAX_FDS_PER_FRAME, MAX_PAYLOAD, Message, Mode, Role,
    Schema, SchemaRange, SealInfo, Snapshot, VersionRange, WIRE_VERSION, encode,
};
use crate::error::FrameError;

// ---------------------------------------------------------------- helpers

/// A fresh fd (on /dev/null), owned.
fn dev_null() -> OwnedFd {
    std::fs::File::open("/dev/null")
        .expect("open /dev/null")
        .into()
}

fn dev_nulls(count: usize) -> Vec<OwnedFd> {
    (0..count).map(|_| dev_null()).collect()
}

fn raw(fds: &[OwnedFd]) -> Vec<RawFd> {
    fds.iter().map(AsRawFd::as_raw_fd).collect()
}

fn envelope(handoff_id: u64, message: Message) -> Envelope {
    Envelope {
        handoff_id,
        message,
    }
}

fn frame_of(message: Message) -> Vec<u8> {
    encode(&envelope(7, message)).expect("encodes")
}

fn fds_message(count: usize) -> Message {
    Message::Fds {
        entries: (0..count)
            .map(|index| FdEntry {
                name: format!("listener{index}"),
                kind: FdKind::Tcp,
            })
            .collect(),
    }
}

/// A header with the given fields and the right magic.
fn header(version: u16, payload_len: u32, fd_count: u16) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&fd_count.to_le_bytes());
    out
}

/// Takes every frame the decoder holds, stopping at the first error.
fn drain_frames(decoder: &mut Decoder) -> Result<Vec<Frame>, FrameError> {
    let mut frames = Vec::new();
    while let Some(frame) = decoder.next_frame()? {
        frames.push(frame);
    }
    Ok(frames)
}

/// Splits `0..len` into consecutive ranges of the given sizes (cycled).
fn chunk_ranges(len: usize, sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut sizes = sizes.iter().copied().cycle();
    while start < len {
        let size = sizes.next().unwrap_or(1).max(1);
        let end = (start + size).min(len);
        out.push(start..end);
        start = end;
    }
    out
}

/// Frames sent back to back, chunked as a kernel would deliver them: the
/// sizes are arbitrary, but a read that returns the first byte of a frame
/// with fds gets that frame's fds and ends at the latest with that frame.
/// Returns the chunks with the number of fds each carries.
fn kernel_chunks(
    frames: &[Vec<u8>],
    fd_counts: &[usize],
    sizes: &[usize],
) -> Vec<(Vec<u8>, usize)> {
    let mut starts = Vec::new();
    let mut stream = Vec::new();
    for frame in frames {
        starts.push(stream.len());
        stream.extend_from_slice(frame);
    }
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut sizes = sizes.iter().copied().cycle();
    while start < stream.len() {
        let size = sizes.next().unwrap_or(1).max(1);
        let mut end = (start + size).min(stream.len());
        let mut fds = 0;
        if let Some(index) =
            (0..frames.len()).find(|&i| fd_counts[i] > 0 && (start..end).contains(&starts[i]))
        {
            end = end.min(starts[index] + frames[index].len());
            fds = fd_counts[index];
        }
        chunks.push((stream[start..end].to_vec(), fds));
        start = end;
    }
    chunks
}

// ------------------------------------------------------------- strategies

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,12}", "[a-z0-9 ._:/-]{0,40}"]
}

fn version_range() -> impl Strategy<Value = VersionRange> {
    (any::<u16>(), any::<u16>()).prop_map(|(min, max)| VersionRange { min, max })
}

fn fingerprint() -> impl Strategy<Value = Fingerprint> {
    any::<[u8; 32]>().prop_map(Fingerprint)
}

fn seal_info() -> impl Strategy<Value = SealInfo> {
    (any::<u64>(), fingerprint()).prop_map(|(revisions, fingerprint)| SealInfo {
        revisions,
        fingerprint,
    })
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Exclusive), Just(Mode::Overlap)]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Supervisor), Just(Role::Generation)]
}

fn fd_kind() -> impl Strategy<Value = FdKind> {
    prop_oneof![
        Just(FdKind::Tcp),
        Just(FdKind::Unix),
        Just(FdKind::Udp),
        Just(FdKind::Other)
    ]
}

fn health() -> impl Strategy<Value = Health> {
    prop_oneof![
        Just(Health::Healthy),
        text().prop_map(|reason| Health::Unhealthy { reason }),
    ]
}

/// Every [`AbortReason`], with arbitrary contents.
pub(crate) fn abort_reason() -> impl Strategy<Value = AbortReason> {
    prop_oneof![
        text().prop_map(|status| AbortReason::SuccessorExited { status }),
        Just(AbortReason::SuccessorClosed),
        Just(AbortReason::SuccessorSilent),
        text().prop_map(|detail| AbortReason::SuccessorProtocol { detail }),
        text().prop_map(|reason| AbortReason::Unhealthy { reason }),
        text().prop_map(|reason| AbortReason::SuccessorFailed { reason }),
        (fingerprint(), fingerprint())
            .prop_map(|(expected, actual)| AbortReason::FingerprintMismatch { expected, actual }),
        (version_range(), version_range())
            .prop_map(|(ours, theirs)| AbortReason::VersionMismatch { ours, theirs }),
        text().prop_map(|reason| AbortReason::SealFailed { reason }),
        text().prop_map(|detail| AbortReason::IncumbentFailed { detail }),
        text().prop_map(|phase| AbortReason::Deadline { phase }),
        Just(AbortReason::Cancelled),
        text().prop_map(|detail| AbortReason::ProbeFailed { detail }),
        text().prop_map(|detail| AbortReason::SchemaRefused { detail }),
    ]
}

/// Every [`Message`] variant, with arbitrary contents. `Fds` carries at most
/// `max_fds` entries (each needs a real fd alongside).
pub(crate) fn message(max_fds: usize) -> BoxedStrategy<Message> {
    prop_oneof![
        (role(), any::<u32>(), text(), version_range(), any::<u64>()).prop_map(
            |(role, pid, build_id, versions, capabilities)| Message::Hello {
                role,
                pid,
                build_id,
                versions,
                capabilities,
            }
        ),
        (
            any::<u16>(),
            any::<u64>(),
            mode(),
            any::<bool>(),
            any::<u32>()
        )
            .prop_map(|(version, generation, mode, has_incumbent, fd_count)| {
                Message::HelloAck {
                    version,
                    generation,
                    mode,
                    has_incumbent,
                    fd_count,
                }
            }),
        (version_range(), abort_reason())
            .prop_map(|(versions, reason)| Message::Refused { versions, reason }),
        vec(
            (text(), fd_kind()).prop_map(|(name, kind)| FdEntry { name, kind }),
            0..=max_fds
        )
        .prop_map(|entries| Message::Fds { entries }),
        Just(Message::Warm),
        (any::<u64>(), any::<u64>()).prop_map(|(deadline_ms, drain_grace_ms)| {
            Message::Prepare {
                deadline_ms,
                drain_grace_ms,
            }
        }),
        (any::<u32>(), any::<bool>()).prop_map(|(open_connections, accept_closed)| {
            Message::Drained {
                open_connections,
                accept_closed,
            }
        }),
        Just(Message::Seal),
        (any::<u64>(), any::<u64>())
            .prop_map(|(done, total)| Message::SealProgress { done, total }),
        seal_info().prop_map(Message::SealComplete),
        text().prop_map(|reason| Message::SealFailed { reason }),
        proptest::option::of(seal_info()).prop_map(|seal| Message::Begin { seal }),
        (vec(text(), 0..3), health(), any::<u64>()).prop_map(|(addresses, health, revisions)| {
            Message::Ready {
                addresses,
                health,
                revisions,
            }
        }),
        Just(Message::Commit),
        Just(Message::CommitAck),
        abort_reason().prop_map(|reason| Message::Abort { reason }),
        Just(Message::ResumeAfterAbort),
        Just(Message::ResumeAck),
        Just(Message::Retire),
        Just(Message::Heartbeat),
        abort_reason().prop_map(|reason| Message::Failed { reason }),
        Just(Message::SnapshotRequest),
        (any::<u32>(), any::<u32>(), any::<u64>(), any::<bool>()).prop_map(
            |(open_connections, in_flight, revisions, accepting)| {
                Message::SnapshotReport(Snapshot {
                    open_connections,
                    in_flight,
                    revisions,
                    accepting,
                })
            }
        ),
        any::<u64>().prop_map(|generation| Message::Adopt { generation }),
        (
            any::<u32>(),
            any::<u64>(),
            vec(
                (text(), fd_kind()).prop_map(|(name, kind)| FdEntry { name, kind }),
                0..=max_fds
            )
        )
            .prop_map(|(pid, handoff_id, entries)| Message::Adopted {
                pid,
                handoff_id,
                entries
            }),
        vec(
            (text(), vec(any::<u8>(), 0..64))
                .prop_map(|(tag, unread)| ConnectionEntry { tag, unread }),
            0..=max_fds
        )
        .prop_map(|entries| Message::Connections { entries }),
        any::<u32>().prop_map(|connections| Message::ConnectionBudget { connections }),
        (
            vec(schema(), 0..3),
            vec(
                (text(), any::<u32>(), any::<u32>()).prop_map(|(name, min, max)| SchemaRange {
                    name,
                    min,
                    max
                }),
                0..3
            )
        )
            .prop_map(|(produces, accepts)| Message::Schemas { produces, accepts }),
        vec(
            (
                text(),
                proptest::option::of((schema(), any::<u64>(), any::<[u8; 32]>()).prop_map(
                    |(schema, len, sha256)| BlobInfo {
                        schema,
                        len,
                        sha256
                    }
                ))
            )
                .prop_map(|(name, blob)| ItemEntry { name, blob }),
            0..=max_fds
        )
        .prop_map(|entries| Message::Items { entries }),
        proptest::collection::vec(text(), 0..4).prop_map(|names| Message::ItemsRemoved { names }),
    ]
    .boxed()
}

fn schema() -> impl Strategy<Value = Schema> {
    (text(), any::<u32>()).prop_map(|(name, version)| Schema { name, version })
}

fn any_envelope(max_fds: usize) -> impl Strategy<Value = Envelope> {
    (any::<u64>(), message(max_fds)).prop_map(|(handoff_id, message)| envelope(handoff_id, message))
}

/// Chunk sizes: mostly small, sometimes whole frames at once.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    vec(prop_oneof![4 => 1usize..16, 1 => 16usize..512], 1..12)
}

// -------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Shrunk failures are printed; no regression files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_envelope_round_trips_under_any_chunking(
        sent in any_envelope(4),
        sizes in chunk_sizes(),
    ) {
        let bytes = encode(&sent).expect("encodes");
        let fd_count = sent.message.fd_count();
        let mut fds = Some(dev_nulls(fd_count));
        let sent_fds = raw(fds.as_deref().unwrap_or_default());
        let ranges = chunk_ranges(bytes.len(), &sizes);
        let mut decoder = Decoder::new();
        let mut received = Vec::new();
        for (index, range) in ranges.iter().enumerate() {
            // The fds travel with the frame's first byte, i.e. the first chunk.
            decoder
                .push(&bytes[range.clone()], fds.take().unwrap_or_default())
                .expect("push");
            let frames = drain_frames(&mut decoder).expect("no error");
            if index + 1 < ranges.len() {
                prop_assert!(frames.is_empty(), "a frame came out before its last byte");
            }
            received.extend(frames);
        }
        prop_assert_eq!(received.len(), 1);
        let frame = received.pop().expect("one frame");
        prop_assert_eq!(&frame.envelope, &sent);
        prop_assert_eq!(raw(&frame.fds), sent_fds);
        prop_assert_eq!(decoder.buffered(), 0);
        prop_assert!(decoder.next_frame().expect("no error").is_none());
        decoder.push_eof().expect("clean end");
        prop_assert!(decoder.is_finished());
    }

    #[test]
    fn frames_back_to_back_come_out_in_order(
        sent in vec(any_envelope(3), 1..8),
        sizes in chunk_sizes(),
    ) {
        let frames: Vec<Vec<u8>> = sent.iter().map(|e| encode(e).expect("encodes")).collect();
        let fd_counts: Vec<usize> = sent.iter().map(|e| e.message.fd_count()).collect();
        let mut decoder = Decoder::new();
        let mut sent_fds = Vec::new();
        let mut received = Vec::new();
        for (bytes, fd_count) in kernel_chunks(&frames, &fd_counts, &sizes) {
            let fds = dev_nulls(fd_count);
            sent_fds.push(raw(&fds));
            decoder.push(&bytes, fds).expect("push");
            received.extend(drain_frames(&mut decoder).expect("no error"));
        }
        let envelopes: Vec<&Envelope> = received.iter().map(|f| &f.envelope).collect();
        prop_assert_eq!(envelopes, sent.iter().collect::<Vec<_>>());
        // Each frame got exactly the fds of its own send, in order.
        let got: Vec<RawFd> = received.iter().flat_map(|f| raw(&f.fds)).collect();
        let want: Vec<RawFd> = sent_fds.into_iter().flatten().collect();
        prop_assert_eq!(got, want);
        for (frame, fd_count) in received.iter().zip(&fd_counts) {
            prop_assert_eq!(frame.fds.len(), *fd_count);
        }
        decoder.push_eof().expect("clean end");
    }

    #[test]
    fn garbage_never_panics_and_errors_stick(
        input in prop_oneof![
            vec(any::<u8>(), 0..4096),
            // A valid stream with bytes overwritten: gets past the magic.
            (
                vec(any_envelope(2), 1..4),
                vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            )
                .prop_map(|(envelopes, flips)| {
                    let mut bytes: Vec<u8> = envelopes
                        .iter()
                        .flat_map(|e| encode(e).expect("encodes"))
                        .collect();
                    for (index, value) in flips {
                        let at = index.index(bytes.len());
                        bytes[at] = value;
                    }
                    bytes
                }),
        ],
        sizes in chunk_sizes(),
        fd_chunks in vec(0usize..3, 0..4),
    ) {
        let mut decoder = Decoder::new();
        let mut errored = false;
        for (index, range) in chunk_ranges(input.len(), &sizes).into_iter().enumerate() {
            let fds = dev_nulls(fd_chunks.get(index).copied().unwrap_or(0));
            // Push refuses only after EOF, which this test never sends first.
            decoder.push(&input[range], fds).expect("push before EOF");
            loop {
                match decoder.next_frame() {
                    Ok(Some(_)) => prop_assert!(!errored, "a frame after an error"),
                    Ok(None) => {
                        prop_assert!(!errored, "Ok(None) after an error");
                        break;
                    }
                    Err(_) => {
                        errored = true;
                        break;
                    }
                }
            }
        }
        let _ = decoder.push_eof();
        if errored {
            prop_assert!(decoder.next_frame().is_err());
        }
    }

    #[test]
    fn negotiate_is_symmetric_and_inside_both(ours in version_range(), theirs in version_range()) {
        let result = ours.negotiate(theirs);
        prop_assert_eq!(result, theirs.negotiate(ours));
        let valid = |range: VersionRange| range.min <= range.max;
        let overlap = ours.min.max(theirs.min) <= ours.max.min(theirs.max);
        prop_assert_eq!(result.is_none(), !valid(ours) || !valid(theirs) || !overlap);
        if let Some(version) = result {
            for range in [ours, theirs] {
                prop_assert!((range.min..=range.max).contains(&version));
            }
            // The newest common version.
            prop_assert_eq!(version, ours.max.min(theirs.max));
        }
    }

    #[test]
    fn negotiate_with_itself_gives_its_newest(min in any::<u16>(), extra in 0u16..100) {
        let range = VersionRange { min, max: min.saturating_add(extra) };
        prop_assert_eq!(range.negotiate(range), Some(range.max));
    }
}

// ------------------------------------------------------ decoder edge cases

#[test]
fn one_byte_at_a_time() {
    let sent = envelope(
        3,
        Message::Ready {
            addresses: vec!["[::1]:80".into()],
            health: Health::Healthy,
            revisions: 9,
        },
    );
    let bytes = encode(&sent).expect("encodes");
    let mut decoder = Decoder::new();
    for (index, byte) in bytes.iter().enumerate() {
        decoder.push(&[*byte], Vec::new()).expect("push");
        let frame = decoder.next_frame().expect("no error");
        if index + 1 < bytes.len() {
            assert!(frame.is_none(), "frame out after {} bytes", index + 1);
            assert_eq!(decoder.buffered(), index + 1);
        } else {
            assert_eq!(frame.expect("whole frame").envelope, sent);
        }
    }
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn bad_magic_is_caught_on_the_first_byte() {
    let mut decoder = Decoder::new();
    decoder.push(b"X", Vec::new()).expect("push");
    match decoder.next_frame() {
        Err(FrameError::BadMagic { expected, got }) => {
            assert_eq!(expected, MAGIC);
            assert_eq!(got, [b'X', 0, 0, 0]);
        }
        other => panic!("expected BadMagic, got {other:?}"),
    }
    // Poisoned for good.
    assert!(decoder.next_frame().is_err());
    decoder
        .push(&frame_of(Message::Heartbeat), Vec::new())
        .expect("push");
    assert!(decoder.next_frame().is_err());
}

#[test]
fn bad_magic_is_caught_as_soon_as_a_byte_differs() {
    // "HNDX": the first three bytes are fine, the fourth is not.
    let mut decoder = Decoder::new();
    decoder.push(b"HND", Vec::new()).expect("push");
    assert!(decoder.next_frame().expect("a good prefix").is_none());
    decoder.push(b"X", Vec::new()).expect("push");
    assert!(matches!(
        decoder.next_frame(),
        Err(FrameError::BadMagic { got, .. }) if got == *b"HNDX"
    ));
}

#[test]
fn unsupported_wire_version() {
    let mut bytes = frame_of(Message::Heartbeat);
    bytes[4..6].copy_from_slice(&(WIRE_VERSION + 1).to_le_bytes());
    let mut decoder = Decoder::new();
    decoder.push(&bytes, Vec::new()).expect("push");
    assert!(matches!(
        decoder.next_frame(),
        Err(FrameError::UnsupportedWireVersion { got, supported })
            if got == WIRE_VERSION + 1 && supported == WIRE_VERSION
    ));
}

#[test]
fn oversized_payload_is_refused_from_the_header_alone() {
    for declared in [MAX_PAYLOAD as u32 + 1, u32::MAX] {
        let mut decoder = Decoder::new();
        let head = header(WIRE_VERSION, declared, 0);
        // Eleven bytes: not yet a header, nothing to refuse.
        decoder
            .push(&head[..HEADER_LEN - 1], Vec::new())
            .expect("push");
        assert!(decoder.next_frame().expect("partial header").is_none());
        decoder
            .push(&head[HEADER_LEN - 1..], Vec::new())
            .expect("push");
        match decoder.next_frame() {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, u64::from(declared));
                assert_eq!(max, MAX_PAYLOAD as u64);
            }
            other => panic!("expected TooLarge for {declared}, got {other:?}"),
        }
        // Nothing beyond the header was buffered or reserved for the payload.
        assert_eq!(decoder.buffered(), HEADER_LEN);
    }
}

#[test]
fn payload_at_the_cap_is_waited_for() {
    let mut decoder = Decoder::new();
    decoder
        .push(&header(WIRE_VERSION, MAX_PAYLOAD as u32, 0), Vec::new())
        .expect("push");
    assert!(decoder.next_frame().expect("legal size").is_none());
    assert_eq!(decoder.buffered(), HEADER_LEN);
}

#[test]
fn too_many_fds_in_a_header() {
    let mut decoder = Decoder::new();
    decoder
        .push(&header(WIRE_VERSION, 2, MAX_FDS_PER_FRAME + 1), Vec::new())
        .expect("push");
    assert!(matches!(
        decoder.next_frame(),
        Err(FrameError::TooManyFds { declared, max })
            if declared == MAX_FDS_PER_FRAME + 1 && max == MAX_FDS_PER_FRAME
    ));
}

#[test]
fn encode_refuses_what_decode_would_refuse() {
    let too_many = fds_message(usize::from(MAX_FDS_PER_FRAME) + 1);
    assert!(matches!(
        encode(&envelope(1, too_many)),
        Err(FrameError::TooManyFds { declared, .. }) if declared == MAX_FDS_PER_FRAME + 1
    ));
    let at_cap = fds_message(usize::from(MAX_FDS_PER_FRAME));
    let bytes = encode(&envelope(1, at_cap)).expect("253 fds are allowed");
    assert_eq!(bytes[10..12], MAX_FDS_PER_FRAME.to_le_bytes());

    let huge = Message::SealFailed {
        reason: "x".repeat(MAX_PAYLOAD),
    };
    assert!(matches!(
        encode(&envelope(1, huge)),
        Err(FrameError::TooLarge { max, .. }) if max == MAX_PAYLOAD as u64
    ));
}

#[test]
fn unknown_message_kind_is_a_payload_error() {
    // Handoff id 7, then variant index 200 (varint c8 01).
    let payload = [0x07, 0xc8, 0x01];
    let mut bytes = header(WIRE_VERSION, payload.len() as u32, 0);
    bytes.extend_from_slice(&payload);
    let mut decoder = Decoder::new();
    decoder.push(&bytes, Vec::new()).expect("push");
    assert!(matches!(
        decoder.next_frame(),
        Err(FrameError::Payload { len: 3, .. })
    ));
    assert!(decoder.next_frame().is_err());
}

#[test]
fn trailing_bytes_inside_a_payload_are_not_a_second_message() {
    // A Heartbeat payload declared one byte longer than it is: postcard
    // ignores the trailing byte; the frame still ends where the header said,
    // so the stream stays in step.
    let mut bytes = header(WIRE_VERSION, 3, 0);
    bytes.extend_from_slice(&[0x07, 19, 0xff]);
    bytes.extend_from_slice(&frame_of(Message::Warm));
    let mut decoder = Decoder::new();
    decoder.push(&bytes, Vec::new()).expect("push");
    let frames = drain_frames(&mut decoder).expect("no error");
    let messages: Vec<_> = frames.into_iter().map(|f| f.envelope.message).collect();
    assert_eq!(messages, [Message::Heartbeat, Message::Warm]);
}

#[test]
fn truncated_frame_at_eof() {
    let bytes = frame_of(Message::Seal);
    let mut decoder = Decoder::new();
    decoder.push(&bytes[..5], Vec::new()).expect("push");
    assert!(decoder.next_frame().expect("partial").is_none());
    assert!(matches!(
        decoder.push_eof(),
        Err(FrameError::TruncatedAtEof { buffered: 5 })
    ));
    assert!(!decoder.is_finished());
    assert!(decoder.next_frame().is_err());
}

#[test]
fn fds_left_over_at_eof_are_an_error() {
    let mut decoder = Decoder::new();
    decoder
        .push(&frame_of(fds_message(1)), vec![dev_null(), dev_null()])
        .expect("push");
    assert!(decoder.next_frame().is_err(), "one fd too many");
    let mut decoder = Decoder::new();
    let bytes = frame_of(fds_message(2));
    decoder.push(&bytes[..3], dev_nulls(2)).expect("push");
    assert!(matches!(
        decoder.push_eof(),
        Err(FrameError::TruncatedAtEof { buffered: 3 })
    ));
}

#[test]
fn bytes_after_eof() {
    let mut decoder = Decoder::new();
    decoder
        .push(&frame_of(Message::Heartbeat), Vec::new())
        .expect("push");
    assert_eq!(
        drain_frames(&mut decoder).expect("no error")[0]
            .envelope
            .message,
        Message::Heartbeat
    );
    decoder.push_eof().expect("clean end");
    assert!(decoder.is_finished());
    assert!(matches!(
        decoder.push(&frame_of(Message::Warm), Vec::new()),
        Err(FrameError::AfterEof)
    ));
    assert!(decoder.next_frame().is_err());
    // Fds alone after EOF are refused too.
    let mut decoder = Decoder::new();
    decoder.push_eof().expect("clean end");
    assert!(matches!(
        decoder.push(&[], vec![dev_null()]),
        Err(FrameError::AfterEof)
    ));
    // An empty push after EOF is not data.
    let mut decoder = Decoder::new();
    decoder.push_eof().expect("clean end");
    decoder.push(&[], Vec::new()).expect("nothing arrived");
    assert!(decoder.next_frame().expect("no error").is_none());
}

// ------------------------------------------------------------------- fds

#[test]
fn fds_travel_with_the_frame_that_declares_them() {
    let bytes = frame_of(fds_message(2));
    let fds = dev_nulls(2);
    let sent = raw(&fds);
    let mut decoder = Decoder::new();
    // First chunk carries the fds; the rest follows in two more reads.
    decoder.push(&bytes[..7], fds).expect("push");
    assert!(decoder.next_frame().expect("partial").is_none());
    decoder.push(&bytes[7..20], Vec::new()).expect("push");
    assert!(decoder.next_frame().expect("partial").is_none());
    decoder.push(&bytes[20..], Vec::new()).expect("push");
    let frame = decoder
        .next_frame()
        .expect("no error")
        .expect("whole frame");
    assert_eq!(frame.envelope.message, fds_message(2));
    assert_eq!(raw(&frame.fds), sent);
}

#[test]
fn fewer_fds_than_declared() {
    let mut decoder = Decoder::new();
    decoder
        .push(&frame_of(fds_message(2)), vec![dev_null()])
        .expect("push");
    assert!(matches!(
        decoder.next_frame(),
        Err(FrameError::FdCountMismatch {
            declared: 2,
            received: 1
        })
    ));
}

#[test]
fn more_fds_than_declared() {
    let mut decoder = Decoder::new();
    decoder
        .push(&frame_of(fds_message(1)), dev_nulls(2))
        .expect("push");
    assert!(matches!(
        decoder.next_frame(),
        Err(FrameError::FdCountMismatch {
            declared: 1,
            received: 2
        })
    ));
}

#[test]
fn fds_on_a_frame_that_declares_none() {
    let mut decoder = Decoder::new();
    decoder
        .push(&frame_of(Message::Heartbeat), vec![dev_null()])
        .expect("push");
    assert!(matches!(
        decoder.next_frame(),
        Err(FrameError::FdCountMismatch {
            declared: 0,
            received: 1
        })
    ));
}

#[test]
fn header_and_message_must_agree_on_the_fd_count() {
    // An Fds message with two entries in a frame whose header declares one.
    let mut bytes = frame_of(fds_message(2));
    bytes[10..12].copy_from_slice(&1u16.to_le_bytes());
    let mut decoder = Decoder::new();
    decoder.push(&bytes, vec![dev_null()]).expect("push");
    assert!(matches!(
        decoder.next_frame(),
        Err(FrameError::FdCountMismatch {
            declared: 2,
            received: 1
        })
    ));
}

#[test]
fn fds_of_the_next_frame_wait_for_it() {
    // Whole frames in separate reads.
    let heartbeat = frame_of(Message::Heartbeat);
    let fds_frame = frame_of(fds_message(2));
    let mut decoder = Decoder::new();
    decoder.push(&heartbeat, Vec::new()).expect("push");
    let fds = dev_nulls(2);
    let sent = raw(&fds);
    decoder.push(&fds_frame, fds).expect("push");
    let frames = drain_frames(&mut decoder).expect("no error");
    assert_eq!(frames.len(), 2);
    assert!(frames[0].fds.is_empty());
    assert_eq!(raw(&frames[1].fds), sent);
}

#[test]
fn fds_read_together_with_the_tail_of_the_previous_frame() {
    // unix(7): "sendmsg of four bytes with no ancillary data, then sendmsg of
    // one byte with ancillary data: the first recvmsg receives five bytes,
    // along with the ancillary data". So one read may return the end of a
    // frame without fds followed by the frame whose fds came with it.
    let heartbeat = frame_of(Message::Heartbeat);
    let fds_frame = frame_of(fds_message(2));
    let mut decoder = Decoder::new();
    decoder.push(&heartbeat[..5], Vec::new()).expect("push");
    assert!(decoder.next_frame().expect("partial").is_none());
    let mut rest = heartbeat[5..].to_vec();
    rest.extend_from_slice(&fds_frame);
    let fds = dev_nulls(2);
    let sent = raw(&fds);
    decoder.push(&rest, fds).expect("push");
    let frames = drain_frames(&mut decoder).expect("the fds belong to the second frame");
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].envelope.message, Message::Heartbeat);
    assert!(frames[0].fds.is_empty());
    assert_eq!(frames[1].envelope.message, fds_message(2));
    assert_eq!(raw(&frames[1].fds), sent);
}

#[test]
fn two_fd_frames_in_a_row() {
    // The fd barrier ends the first read at the end of the first frame.
    let first = frame_of(fds_message(1));
    let second = frame_of(fds_message(2));
    let mut decoder = Decoder::new();
    let (a, b) = (dev_nulls(1), dev_nulls(2));
    let (sent_a, sent_b) = (raw(&a), raw(&b));
    decoder.push(&first, a).expect("push");
    decoder.push(&second[..1], b).expect("push");
    decoder.push(&second[1..], Vec::new()).expect("push");
    let frames = drain_frames(&mut decoder).expect("no error");
    assert_eq!(raw(&frames[0].fds), sent_a);
    assert_eq!(raw(&frames[1].fds), sent_b);
}

#[test]
fn fds_with_no_bytes_poison_the_stream() {
    // Documented on `push`: on a stream socket fds only travel with bytes,
    // so fds without bytes mean the stream lost track of them.
    let mut decoder = Decoder::new();
    assert!(decoder.push(&[], vec![dev_null()]).is_err());
    decoder
        .push(&frame_of(Message::Heartbeat), Vec::new())
        .expect("push");
    assert!(decoder.next_frame().is_err());
}

/// A reader handing its stream over (a supervisor replacing its image)
/// carries the undecoded residue: a decoder made from it goes on exactly
/// where the first stopped, fds included.
#[test]
fn a_decoder_goes_on_from_another_decoders_residue() {
    let first = frame_of(Message::Heartbeat);
    let second = frame_of(fds_message(2));
    let split = second.len() / 2;
    let mut decoder = Decoder::new();
    let mut chunk = first.clone();
    chunk.extend_from_slice(&second[..split]);
    decoder.push(&chunk, dev_nulls(2)).expect("push");
    let taken = decoder
        .next_frame()
        .expect("no error")
        .expect("first frame");
    assert_eq!(taken.envelope.message, Message::Heartbeat);
    assert!(decoder.next_frame().expect("no error").is_none());
    let (bytes, fds) = decoder.residual();
    let fds: Vec<(usize, OwnedFd)> = fds
        .map(|(offset, fd)| (offset, fd.try_clone_to_owned().expect("dup")))
        .collect();
    assert_eq!(bytes, &second[..split]);
    assert_eq!(fds.len(), 2);
    let mut next = Decoder::from_residual(bytes.to_vec(), fds);
    next.push(&second[split..], Vec::new())
        .expect("push the rest");
    let frame = next.next_frame().expect("no error").expect("second frame");
    assert_eq!(frame.envelope.message, fds_message(2));
    assert_eq!(frame.fds.len(), 2);
    assert_eq!(next.buffered(), 0);
}
