//! Golden bytes: the encoding of every message, pinned (invariant I10).
//!
//! A peer built from an older commit must read what this build writes, so a
//! change that alters the bytes of an existing message must fail here.
//!
//! # Adding a message
//!
//! 1. Append the variant at the end of [`Message`]; never insert, reorder or
//!    change the fields of an existing one (postcard encodes a variant as its
//!    index and fields in order, with no names).
//! 2. The build of this module breaks in [`kind_of`]: add a [`Kind`] variant
//!    at the end, append it to [`ALL`], and give it a [`sample`] with small
//!    but non-trivial field values.
//! 3. Print the bytes with
//!    `cargo test --lib wire::golden::print_goldens -- --ignored --nocapture`
//!    and paste the new line into [`golden`]. Check it by hand against the
//!    header layout in `frame.rs`.
//! 4. Never edit an existing golden. If one fails, the change broke the wire
//!    format: make it a new message instead.
//!
//! The same rules hold for the enums nested in messages ([`AbortReason`] and
//! the small enums): append only, pinned by [`NESTED`] and
//! `nested_enum_variant_order_is_pinned`.

use std::cell::Cell;

use serde::de::{self, DeserializeOwned, Visitor};

use super::{
    AbortReason, BlobInfo, ConnectionEntry, Envelope, FdEntry, FdKind, Fingerprint, HEADER_LEN,
    Health, ItemEntry, Message, Mode, Role, Schema, SchemaRange, SealInfo, Snapshot, VersionRange,
    encode,
};

/// The handoff id of every golden envelope (one varint byte: `07`).
const HANDOFF_ID: u64 = 7;

/// One name per [`Message`] variant, in declaration (= wire index) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hello,
    HelloAck,
    Refused,
    Fds,
    Warm,
    Prepare,
    Drained,
    Seal,
    SealProgress,
    SealComplete,
    SealFailed,
    Begin,
    Ready,
    Commit,
    CommitAck,
    Abort,
    ResumeAfterAbort,
    ResumeAck,
    Retire,
    Heartbeat,
    Failed,
    SnapshotRequest,
    SnapshotReport,
    Adopt,
    Adopted,
    Connections,
    ConnectionBudget,
    Schemas,
    Items,
    ItemsRemoved,
}

/// Every kind, in wire index order. `every_variant_has_a_golden` checks this
/// against the variant list serde derives from [`Message`] itself.
const ALL: [Kind; 30] = [
    Kind::Hello,
    Kind::HelloAck,
    Kind::Refused,
    Kind::Fds,
    Kind::Warm,
    Kind::Prepare,
    Kind::Drained,
    Kind::Seal,
    Kind::SealProgress,
    Kind::SealComplete,
    Kind::SealFailed,
    Kind::Begin,
    Kind::Ready,
    Kind::Commit,
    Kind::CommitAck,
    Kind::Abort,
    Kind::ResumeAfterAbort,
    Kind::ResumeAck,
    Kind::Retire,
    Kind::Heartbeat,
    Kind::Failed,
    Kind::SnapshotRequest,
    Kind::SnapshotReport,
    Kind::Adopt,
    Kind::Adopted,
    Kind::Connections,
    Kind::ConnectionBudget,
    Kind::Schemas,
    Kind::Items,
    Kind::ItemsRemoved,
];

/// Exhaustive on purpose (no wildcard arm): a new [`Message`] variant breaks
/// the build here until it has a [`Kind`], a sample and a golden.
fn kind_of(message: &Message) -> Kind {
    match message {
        Message::Hello { .. } => Kind::Hello,
        Message::HelloAck { .. } => Kind::HelloAck,
        Message::Refused { .. } => Kind::Refused,
        Message::Fds { .. } => Kind::Fds,
        Message::Warm => Kind::Warm,
        Message::Prepare { .. } => Kind::Prepare,
        Message::Drained { .. } => Kind::Drained,
        Message::Seal => Kind::Seal,
        Message::SealProgress { .. } => Kind::SealProgress,
        Message::SealComplete(_) => Kind::SealComplete,
        Message::SealFailed { .. } => Kind::SealFailed,
        Message::Begin { .. } => Kind::Begin,
        Message::Ready { .. } => Kind::Ready,
        Message::Commit => Kind::Commit,
        Message::CommitAck => Kind::CommitAck,
        Message::Abort { .. } => Kind::Abort,
        Message::ResumeAfterAbort => Kind::ResumeAfterAbort,
        Message::ResumeAck => Kind::ResumeAck,
        Message::Retire => Kind::Retire,
        Message::Heartbeat => Kind::Heartbeat,
        Message::Failed { .. } => Kind::Failed,
        Message::SnapshotRequest => Kind::SnapshotRequest,
        Message::SnapshotReport(_) => Kind::SnapshotReport,
        Message::Adopt { .. } => Kind::Adopt,
        Message::Adopted { .. } => Kind::Adopted,
        Message::Connections { .. } => Kind::Connections,
        Message::ConnectionBudget { .. } => Kind::ConnectionBudget,
        Message::Schemas { .. } => Kind::Schemas,
        Message::Items { .. } => Kind::Items,
        Message::ItemsRemoved { .. } => Kind::ItemsRemoved,
    }
}

/// A fingerprint whose bytes are 0, 1, ..., 31, easy to spot in hex.
fn counting_fingerprint() -> Fingerprint {
    Fingerprint(std::array::from_fn(|index| index as u8))
}

fn seal_info() -> SealInfo {
    SealInfo {
        revisions: 1_000_001,
        fingerprint: counting_fingerprint(),
    }
}

/// The representative message of each kind.
fn sample(kind: Kind) -> Message {
    match kind {
        Kind::Hello => Message::Hello {
            role: Role::Generation,
            pid: 4242,
            build_id: "app 1.4.2".into(),
            versions: VersionRange { min: 1, max: 3 },
            capabilities: 0b101,
        },
        Kind::HelloAck => Message::HelloAck {
            version: 1,
            generation: 12,
            mode: Mode::Overlap,
            has_incumbent: true,
            fd_count: 3,
        },
        Kind::Refused => Message::Refused {
            versions: VersionRange { min: 1, max: 1 },
            reason: AbortReason::VersionMismatch {
                ours: VersionRange { min: 1, max: 1 },
                theirs: VersionRange { min: 2, max: 4 },
            },
        },
        Kind::Fds => Message::Fds {
            entries: vec![
                FdEntry {
                    name: "http".into(),
                    kind: FdKind::Tcp,
                },
                FdEntry {
                    name: "admin".into(),
                    kind: FdKind::Unix,
                },
                FdEntry {
                    name: "dns".into(),
                    kind: FdKind::Udp,
                },
                FdEntry {
                    name: "state".into(),
                    kind: FdKind::Other,
                },
            ],
        },
        Kind::Warm => Message::Warm,
        Kind::Prepare => Message::Prepare {
            deadline_ms: 299_500,
            drain_grace_ms: 60_000,
        },
        Kind::Drained => Message::Drained {
            open_connections: 2,
            accept_closed: true,
        },
        Kind::Seal => Message::Seal,
        Kind::SealProgress => Message::SealProgress {
            done: 640,
            total: 1024,
        },
        Kind::SealComplete => Message::SealComplete(seal_info()),
        Kind::SealFailed => Message::SealFailed {
            reason: "disk full".into(),
        },
        Kind::Begin => Message::Begin {
            seal: Some(seal_info()),
        },
        Kind::Ready => Message::Ready {
            addresses: vec!["127.0.0.1:8080".into(), "/run/app.sock".into()],
            health: Health::Healthy,
            revisions: 1_000_001,
        },
        Kind::Commit => Message::Commit,
        Kind::CommitAck => Message::CommitAck,
        Kind::Abort => Message::Abort {
            reason: AbortReason::Deadline {
                phase: "sealing".into(),
            },
        },
        Kind::ResumeAfterAbort => Message::ResumeAfterAbort,
        Kind::ResumeAck => Message::ResumeAck,
        Kind::Retire => Message::Retire,
        Kind::Heartbeat => Message::Heartbeat,
        Kind::Failed => Message::Failed {
            reason: AbortReason::SuccessorFailed {
                reason: "locked".into(),
            },
        },
        Kind::SnapshotRequest => Message::SnapshotRequest,
        Kind::SnapshotReport => Message::SnapshotReport(Snapshot {
            open_connections: 17,
            in_flight: 3,
            revisions: 300,
            accepting: true,
        }),
        Kind::Adopt => Message::Adopt { generation: 12 },
        Kind::Adopted => Message::Adopted {
            pid: 4242,
            handoff_id: 7,
            entries: vec![
                FdEntry {
                    name: "http".into(),
                    kind: FdKind::Tcp,
                },
                FdEntry {
                    name: "admin".into(),
                    kind: FdKind::Unix,
                },
            ],
        },
        Kind::Connections => Message::Connections {
            entries: vec![
                ConnectionEntry {
                    tag: "http".into(),
                    unread: Vec::new(),
                },
                ConnectionEntry {
                    tag: "http".into(),
                    unread: b"GET /".to_vec(),
                },
            ],
        },
        Kind::ConnectionBudget => Message::ConnectionBudget { connections: 300 },
        Kind::Schemas => Message::Schemas {
            produces: vec![Schema {
                name: "kv".into(),
                version: 3,
            }],
            accepts: vec![SchemaRange {
                name: "kv".into(),
                min: 2,
                max: 3,
            }],
        },
        Kind::ItemsRemoved => Message::ItemsRemoved {
            names: vec!["cache".into(), "state".into()],
        },
        Kind::Items => Message::Items {
            entries: vec![
                ItemEntry {
                    name: "cache".into(),
                    blob: None,
                },
                ItemEntry {
                    name: "state".into(),
                    blob: Some(BlobInfo {
                        schema: Schema {
                            name: "kv".into(),
                            version: 3,
                        },
                        len: 300,
                        sha256: counting_fingerprint().0,
                    }),
                },
            ],
        },
    }
}

/// The full frame of `Envelope { handoff_id: 7, message: sample(kind) }`:
/// magic, wire version, payload length, fd count, then the payload
/// (handoff id, variant index, fields). Spaces are for reading only.
fn golden(kind: Kind) -> &'static str {
    match kind {
        Kind::Hello => "484e4446 0100 12000000 0000 07000192210961707020312e342e32010305",
        Kind::HelloAck => "484e4446 0100 07000000 0000 0701010c010103",
        Kind::Refused => "484e4446 0100 09000000 0000 070201010701010204",
        Kind::Fds => concat!(
            "484e4446 0100 1c000000 0400 0703 04",
            " 0468747470 00 0561646d696e 01 03646e73 02 057374617465 03"
        ),
        Kind::Warm => "484e4446 0100 02000000 0000 0704",
        Kind::Prepare => "484e4446 0100 08000000 0000 0705eca312e0d403",
        Kind::Drained => "484e4446 0100 04000000 0000 07060201",
        Kind::Seal => "484e4446 0100 02000000 0000 0707",
        Kind::SealProgress => "484e4446 0100 06000000 0000 070880058008",
        Kind::SealComplete => concat!(
            "484e4446 0100 25000000 0000 0709 c1843d",
            " 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        ),
        Kind::SealFailed => "484e4446 0100 0c000000 0000 070a096469736b2066756c6c",
        Kind::Begin => concat!(
            "484e4446 0100 26000000 0000 070b 01 c1843d",
            " 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        ),
        Kind::Ready => concat!(
            "484e4446 0100 24000000 0000 070c 02",
            " 0e3132372e302e302e313a38303830 0d2f72756e2f6170702e736f636b 00 c1843d"
        ),
        Kind::Commit => "484e4446 0100 02000000 0000 070d",
        Kind::CommitAck => "484e4446 0100 02000000 0000 070e",
        Kind::Abort => "484e4446 0100 0b000000 0000 070f0a077365616c696e67",
        Kind::ResumeAfterAbort => "484e4446 0100 02000000 0000 0710",
        Kind::ResumeAck => "484e4446 0100 02000000 0000 0711",
        Kind::Retire => "484e4446 0100 02000000 0000 0712",
        Kind::Heartbeat => "484e4446 0100 02000000 0000 0713",
        Kind::Failed => "484e4446 0100 0a000000 0000 071405066c6f636b6564",
        Kind::SnapshotRequest => "484e4446 0100 02000000 0000 0715",
        Kind::SnapshotReport => "484e4446 0100 07000000 0000 07161103ac0201",
        Kind::Adopt => "484e4446 0100 03000000 0000 07170c",
        Kind::Adopted => concat!(
            "484e4446 0100 13000000 0200 0718 922107 02",
            " 0468747470 00 0561646d696e 01"
        ),
        Kind::Connections => concat!(
            "484e4446 0100 14000000 0200 0719 02",
            " 0468747470 00 0468747470 05474554202f"
        ),
        Kind::ConnectionBudget => "484e4446 0100 04000000 0000 071aac02",
        Kind::Schemas => "484e4446 0100 0d000000 0000 071b 01 026b7603 01 026b760203",
        Kind::Items => concat!(
            "484e4446 0100 37000000 0200 071c 02",
            " 056361636865 00",
            " 057374617465 01 026b7603 ac02",
            " 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        ),
        Kind::ItemsRemoved => "484e4446 0100 0f000000 0000 071d 02 056361636865 057374617465",
    }
}

/// Exhaustive on purpose: a new [`AbortReason`] breaks the build here until
/// it has an entry in [`NESTED`]. Returns the variant's wire index.
fn reason_index(reason: &AbortReason) -> u8 {
    match reason {
        AbortReason::SuccessorExited { .. } => 0,
        AbortReason::SuccessorClosed => 1,
        AbortReason::SuccessorSilent => 2,
        AbortReason::SuccessorProtocol { .. } => 3,
        AbortReason::Unhealthy { .. } => 4,
        AbortReason::SuccessorFailed { .. } => 5,
        AbortReason::FingerprintMismatch { .. } => 6,
        AbortReason::VersionMismatch { .. } => 7,
        AbortReason::SealFailed { .. } => 8,
        AbortReason::IncumbentFailed { .. } => 9,
        AbortReason::Deadline { .. } => 10,
        AbortReason::Cancelled => 11,
        AbortReason::ProbeFailed { .. } => 12,
        AbortReason::SchemaRefused { .. } => 13,
    }
}

/// Messages that cover the variants of the nested enums the samples above
/// leave out: every [`AbortReason`] (in an `Abort`), then the other variant
/// of [`Health`], [`Role`], [`Mode`] and of `Begin`'s option.
fn nested_samples() -> Vec<Message> {
    let abort = |reason| Message::Abort { reason };
    vec![
        abort(AbortReason::SuccessorExited {
            status: "signal 9".into(),
        }),
        abort(AbortReason::SuccessorClosed),
        abort(AbortReason::SuccessorSilent),
        abort(AbortReason::SuccessorProtocol {
            detail: "bad".into(),
        }),
        abort(AbortReason::Unhealthy {
            reason: "cold".into(),
        }),
        abort(AbortReason::SuccessorFailed {
            reason: "locked".into(),
        }),
        abort(AbortReason::FingerprintMismatch {
            expected: counting_fingerprint(),
            actual: Fingerprint([0xee; 32]),
        }),
        abort(AbortReason::VersionMismatch {
            ours: VersionRange { min: 1, max: 2 },
            theirs: VersionRange { min: 3, max: 4 },
        }),
        abort(AbortReason::SealFailed {
            reason: "io".into(),
        }),
        abort(AbortReason::IncumbentFailed {
            detail: "died".into(),
        }),
        abort(AbortReason::Deadline {
            phase: "drain".into(),
        }),
        abort(AbortReason::Cancelled),
        abort(AbortReason::ProbeFailed {
            detail: "503".into(),
        }),
        abort(AbortReason::SchemaRefused {
            detail: "kv 3".into(),
        }),
        Message::Ready {
            addresses: vec![],
            health: Health::Unhealthy {
                reason: "cold".into(),
            },
            revisions: 0,
        },
        Message::Hello {
            role: Role::Supervisor,
            pid: 1,
            build_id: String::new(),
            versions: VersionRange { min: 1, max: 1 },
            capabilities: 0,
        },
        Message::HelloAck {
            version: 1,
            generation: 1,
            mode: Mode::Exclusive,
            has_incumbent: false,
            fd_count: 0,
        },
        Message::Begin { seal: None },
    ]
}

/// The goldens of [`nested_samples`], in the same order.
const NESTED: [&str; 18] = [
    "484e4446 0100 0c000000 0000 070f00087369676e616c2039",
    "484e4446 0100 03000000 0000 070f01",
    "484e4446 0100 03000000 0000 070f02",
    "484e4446 0100 07000000 0000 070f0303626164",
    "484e4446 0100 08000000 0000 070f0404636f6c64",
    "484e4446 0100 0a000000 0000 070f05066c6f636b6564",
    concat!(
        "484e4446 0100 43000000 0000 070f06",
        " 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        " eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
    ),
    "484e4446 0100 07000000 0000 070f0701020304",
    "484e4446 0100 06000000 0000 070f0802696f",
    "484e4446 0100 08000000 0000 070f090464696564",
    "484e4446 0100 09000000 0000 070f0a05647261696e",
    "484e4446 0100 03000000 0000 070f0b",
    "484e4446 0100 07000000 0000 070f0c03353033",
    "484e4446 0100 08000000 0000 070f0d046b762033",
    "484e4446 0100 0a000000 0000 070c000104636f6c6400",
    "484e4446 0100 08000000 0000 0700000100010100",
    "484e4446 0100 07000000 0000 07010101000000",
    "484e4446 0100 03000000 0000 070b00",
];

/// Lowercase hex of a frame, with spaces between the header fields and
/// before the payload.
fn frame_hex(frame: &[u8]) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!(
        "{} {} {} {} {}",
        hex(&frame[0..4]),
        hex(&frame[4..6]),
        hex(&frame[6..10]),
        hex(&frame[10..12]),
        hex(&frame[12..])
    )
}

fn parse_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd number of hex digits in {text:?}"
    );
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("hex digits are ASCII");
            u8::from_str_radix(pair, 16).expect("golden is hex")
        })
        .collect()
}

fn envelope(message: Message) -> Envelope {
    Envelope {
        handoff_id: HANDOFF_ID,
        message,
    }
}

fn encoded(message: Message) -> Vec<u8> {
    encode(&envelope(message)).expect("a sample encodes")
}

/// Checks one golden both ways: this build writes exactly those bytes, and
/// reads them back as the same message.
fn check_golden(label: &str, message: Message, golden: &str) {
    let expected = parse_hex(golden);
    let actual = encoded(message.clone());
    assert_eq!(
        frame_hex(&actual),
        frame_hex(&expected),
        "the encoding of {label} changed: the wire format is append only (see the module docs)"
    );
    // The frame declares `fd_count` fds; any open fd will do for decoding.
    let fds = (0..message.fd_count())
        .map(|_| {
            std::fs::File::open("/dev/null")
                .expect("open /dev/null")
                .into()
        })
        .collect();
    let mut decoder = super::Decoder::new();
    decoder
        .push(&expected, fds)
        .expect("push to a fresh decoder");
    let frame = decoder
        .next_frame()
        .expect("a golden decodes")
        .expect("a golden is a whole frame");
    assert_eq!(frame.envelope, envelope(message), "{label} decodes back");
    assert!(decoder.next_frame().expect("no error").is_none());
}

/// Prints the goldens of the current encoder, for pasting when a message is
/// added. Never paste over an existing golden.
#[test]
#[ignore = "a tool for adding goldens, not a check"]
fn print_goldens() {
    for kind in ALL {
        println!(
            "Kind::{kind:?} => \"{}\",",
            frame_hex(&encoded(sample(kind)))
        );
    }
    for message in nested_samples() {
        println!("\"{}\",", frame_hex(&encoded(message)));
    }
}

#[test]
fn every_message_matches_its_golden() {
    for kind in ALL {
        check_golden(&format!("{kind:?}"), sample(kind), golden(kind));
    }
}

#[test]
fn every_nested_enum_variant_matches_its_golden() {
    let samples = nested_samples();
    assert_eq!(samples.len(), NESTED.len());
    for (message, golden) in samples.into_iter().zip(NESTED) {
        check_golden(&format!("{message:?}"), message, golden);
    }
}

#[test]
fn samples_are_of_their_kind() {
    for kind in ALL {
        assert_eq!(kind_of(&sample(kind)), kind);
        assert_eq!(sample(kind).name(), format!("{kind:?}"));
    }
}

/// The variant index is the byte after the handoff id (both are varints
/// below 128, so one byte each): it must equal the position in [`ALL`].
#[test]
fn variant_indices_are_append_only() {
    let index_of = |kind| encoded(sample(kind))[HEADER_LEN + 1];
    for (position, kind) in ALL.into_iter().enumerate() {
        assert_eq!(usize::from(index_of(kind)), position, "{kind:?}");
    }
    // The two ends, spelled out.
    assert_eq!(index_of(Kind::Hello), 0);
    assert_eq!(index_of(Kind::Fds), 3);
    assert_eq!(index_of(Kind::Heartbeat), 19);
    assert_eq!(index_of(Kind::SnapshotReport), 22);
}

/// [`ALL`] is checked against serde's own list of [`Message`]'s variants, so
/// a variant appended to the enum without a golden fails here even if the
/// exhaustive matches above were given a wildcard.
#[test]
fn every_variant_has_a_golden() {
    let names: Vec<String> = ALL.iter().map(|kind| format!("{kind:?}")).collect();
    assert_eq!(names, variants_of::<Message>());
}

#[test]
fn nested_enum_variant_order_is_pinned() {
    let reasons = variants_of::<AbortReason>();
    assert_eq!(
        reasons,
        [
            "SuccessorExited",
            "SuccessorClosed",
            "SuccessorSilent",
            "SuccessorProtocol",
            "Unhealthy",
            "SuccessorFailed",
            "FingerprintMismatch",
            "VersionMismatch",
            "SealFailed",
            "IncumbentFailed",
            "Deadline",
            "Cancelled",
            "ProbeFailed",
            "SchemaRefused",
        ]
    );
    // Each reason's sample sits at its wire index in `nested_samples`.
    let samples = nested_samples();
    for (index, message) in samples.iter().take(reasons.len()).enumerate() {
        let Message::Abort { reason } = message else {
            panic!("the first nested samples are aborts");
        };
        assert_eq!(usize::from(reason_index(reason)), index);
    }
    assert_eq!(variants_of::<Health>(), ["Healthy", "Unhealthy"]);
    assert_eq!(variants_of::<Role>(), ["Supervisor", "Generation"]);
    assert_eq!(variants_of::<Mode>(), ["Exclusive", "Overlap"]);
    assert_eq!(variants_of::<FdKind>(), ["Tcp", "Unix", "Udp", "Other"]);
}

/// The variant names serde's derive gives an enum, in declaration order.
fn variants_of<T: DeserializeOwned>() -> Vec<String> {
    let captured = Cell::new(&[][..]);
    let result = T::deserialize(CaptureVariants(&captured));
    assert!(result.is_err(), "the capturing deserializer never succeeds");
    captured
        .get()
        .iter()
        .map(|name| (*name).to_owned())
        .collect()
}

/// A deserializer that records the variant list `deserialize_enum` is given
/// and then fails.
struct CaptureVariants<'a>(&'a Cell<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for CaptureVariants<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not an enum"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.set(variants);
        Err(de::Error::custom("variants captured"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

// The fuzz seed corpus (README, "Fuzzing") is made from these goldens, so
// the fuzzer starts from every message there is. A new golden fails
// `fuzz_corpus_holds_every_golden` until the corpus is rewritten with
// `cargo test --lib wire::golden::write_fuzz_corpus -- --ignored`.

/// The `decoder` target reads a chunking plan byte before the stream; this
/// plan delivers the stream in one chunk with `fds` fds.
fn whole_with_fds(fds: usize) -> u8 {
    u8::try_from(fds << 5).expect("at most 7 fds in a plan")
}

/// Every seed: (target, file name, bytes).
fn fuzz_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let frame_of = |kind| parse_hex(golden(kind));
    for kind in ALL {
        let frame = frame_of(kind);
        let fds = sample(kind).fd_count();
        let mut decoder_input = vec![whole_with_fds(fds)];
        decoder_input.extend_from_slice(&frame);
        seeds.push(("decoder", format!("golden-{kind:?}"), decoder_input));
        seeds.push((
            "message",
            format!("golden-{kind:?}"),
            frame[HEADER_LEN..].to_vec(),
        ));
    }
    let header = |version: u16, len: u32, fds: u16| {
        let mut bytes = vec![0];
        bytes.extend_from_slice(b"HNDF");
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&fds.to_le_bytes());
        bytes
    };
    let with = |mut head: Vec<u8>, tail: &[u8]| {
        head.extend_from_slice(tail);
        head
    };
    let hello = frame_of(Kind::Hello);
    let fds_frame = frame_of(Kind::Fds);
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        (
            "bad-magic",
            with(vec![0], b"HNDX\x01\x00\x02\x00\x00\x00\x00\x00\x07\x04"),
        ),
        ("bad-version", with(header(2, 2, 0), &[7, 4])),
        ("too-large", header(1, u32::MAX, 0)),
        ("too-many-fds", with(header(1, 2, 254), &[7, 4])),
        ("unknown-variant", with(header(1, 2, 0), &[7, 99])),
        ("truncated", with(vec![0], &hello[..hello.len() / 2])),
        ("fds-missing", with(vec![0], &fds_frame)),
        (
            "two-frames-in-small-chunks",
            [vec![0x03], frame_of(Kind::Warm), frame_of(Kind::Seal)].concat(),
        ),
        (
            "fds-in-small-chunks",
            [vec![0x85], fds_frame.clone(), frame_of(Kind::Heartbeat)].concat(),
        ),
    ];
    for (name, bytes) in malformed {
        seeds.push(("decoder", name.to_owned(), bytes));
    }
    seeds.push(("message", "unknown-variant".to_owned(), vec![7, 99]));
    seeds.push((
        "message",
        "truncated".to_owned(),
        hello[HEADER_LEN..20].to_vec(),
    ));
    seeds
}

fn fuzz_corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

#[test]
fn fuzz_corpus_holds_every_golden() {
    for (target, name, bytes) in fuzz_seeds() {
        let path = fuzz_corpus_dir().join(target).join(&name);
        let stored = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; rewrite the corpus (see the comment above `fuzz_seeds`)",
                path.display()
            )
        });
        assert_eq!(stored, bytes, "{} is stale", path.display());
    }
}

/// Writes the seeds into `fuzz/corpus/<target>/` (inputs the fuzzer found
/// and that were added by hand stay).
#[test]
#[ignore = "a tool for refreshing the fuzz corpus, not a check"]
fn write_fuzz_corpus() {
    for (target, name, bytes) in fuzz_seeds() {
        let dir = fuzz_corpus_dir().join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    }
}
