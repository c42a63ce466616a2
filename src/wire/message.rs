//! The messages of the control protocol and their payload types.
//!
//! Encoding: postcard. An enum's variant is encoded as its index, so new
//! variants are only ever appended (never inserted or reordered) and new
//! fields are only ever added as new messages: this keeps every existing
//! encoding byte-for-byte stable, which `golden.rs` pins (invariant I10).

use serde::{Deserialize, Serialize};

/// The protocol versions this build speaks. Version 2 adds the items of
/// a handoff: a generation sends [`Message::Schemas`] only to a supervisor
/// that answered version 2 or later. Version 3 adds the removal of items
/// ([`Message::ItemsRemoved`]).
pub const PROTOCOL_VERSIONS: VersionRange = VersionRange { min: 1, max: 3 };

/// The first version with [`Message::Schemas`] and [`Message::Items`].
pub const ITEMS_VERSION: u16 = 2;

/// The first version with [`Message::ItemsRemoved`].
pub const ITEMS_REMOVED_VERSION: u16 = 3;

/// An inclusive range of protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    /// Oldest version spoken.
    pub min: u16,
    /// Newest version spoken.
    pub max: u16,
}

impl VersionRange {
    /// The newest version both ranges contain, if any.
    ///
    /// ```
    /// use handoff::wire::VersionRange;
    /// let ours = VersionRange { min: 1, max: 3 };
    /// assert_eq!(ours.negotiate(VersionRange { min: 2, max: 5 }), Some(3));
    /// assert_eq!(ours.negotiate(VersionRange { min: 4, max: 5 }), None);
    /// ```
    pub fn negotiate(self, theirs: VersionRange) -> Option<u16> {
        let low = self.min.max(theirs.min);
        let high = self.max.min(theirs.max);
        (low <= high && self.min <= self.max && theirs.min <= theirs.max).then_some(high)
    }
}

impl std::fmt::Display for VersionRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

/// A sha256 fingerprint of sealed state.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The sha256 of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Fingerprint {
        use sha2::Digest;
        Fingerprint(sha2::Sha256::digest(bytes).into())
    }

    /// An incremental hasher, for state too large to hold in memory.
    pub fn hasher() -> FingerprintHasher {
        FingerprintHasher(<sha2::Sha256 as sha2::Digest>::new())
    }
}

/// Incremental computation of a [`Fingerprint`].
pub struct FingerprintHasher(sha2::Sha256);

impl FingerprintHasher {
    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.0, bytes);
    }

    /// The fingerprint of everything fed.
    pub fn finish(self) -> Fingerprint {
        Fingerprint(sha2::Digest::finalize(self.0).into())
    }
}

impl std::io::Write for FingerprintHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Which part a process plays on a control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The supervisor.
    Supervisor,
    /// A daemon generation (successor first, incumbent after its commit).
    Generation,
}

/// How the successor and the incumbent overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Stateful: drain, seal, then the successor begins. One writer at a time.
    Exclusive,
    /// Stateless: the successor serves first, then the incumbent drains.
    Overlap,
}

/// What kind of fd travels under a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A listening TCP socket.
    Tcp,
    /// A listening Unix stream socket.
    Unix,
    /// A bound UDP socket.
    Udp,
    /// Any other fd a daemon hands on (a memfd with state, say).
    Other,
}

/// One named fd in a [`Message::Fds`] frame; the fd itself travels in the
/// frame's control data at the same index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdEntry {
    /// The name daemons ask for ("http").
    pub name: String,
    /// What it is.
    pub kind: FdKind,
}

/// Capability bit of [`Message::Hello`]: the generation takes client
/// connections from another generation ([`Message::Connections`]) and may
/// hand its own over when given a [`Message::ConnectionBudget`]. A
/// supervisor sends neither message to a generation without it.
pub const CAP_CONNECTIONS: u64 = 1;

/// Capability bit of [`Message::Hello`]: the generation takes the items a
/// supervisor keeps for it ([`Message::Items`]).
pub const CAP_ITEMS: u64 = 2;

/// A state blob's format: a name and a version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Schema {
    /// The format's name ("kvd-index").
    pub name: String,
    /// Its version.
    pub version: u32,
}

/// The versions of one schema a generation can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaRange {
    /// The schema's name.
    pub name: String,
    /// Oldest version read.
    pub min: u32,
    /// Newest version read.
    pub max: u32,
}

impl SchemaRange {
    /// Whether `schema` is one of these versions.
    pub fn accepts(&self, schema: &Schema) -> bool {
        self.name == schema.name && (self.min..=self.max).contains(&schema.version)
    }
}

/// What a sealed blob's memfd must hold, checked by whoever reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// Its format.
    pub schema: Schema,
    /// Its length in bytes.
    pub len: u64,
    /// The sha256 of its bytes.
    pub sha256: [u8; 32],
}

/// One named item in a [`Message::Items`] frame; the fd travels in the
/// frame's control data at the same index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemEntry {
    /// The daemon's name for it.
    pub name: String,
    /// A sealed memfd holding a blob, or `None` for an fd of any kind.
    pub blob: Option<BlobInfo>,
}

impl ItemEntry {
    /// An upper bound of its share of a frame's payload (to split a store
    /// into frames under the payload bound).
    pub fn encoded_size(&self) -> usize {
        let schema = self.blob.as_ref().map_or(0, |blob| blob.schema.name.len());
        self.name.len() + schema + 64
    }
}

/// One client connection in a [`Message::Connections`] frame; the socket
/// itself travels in the frame's control data at the same index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionEntry {
    /// The daemon's own label (the listener it came from, a protocol).
    pub tag: String,
    /// Bytes the server read from the socket and had not parsed yet; the
    /// receiver serves them before anything it reads itself.
    pub unread: Vec<u8>,
}

/// The health a successor reports with [`Message::Ready`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    /// Ready to serve.
    Healthy,
    /// Not fit to serve; the supervisor must not commit (rolls back).
    Unhealthy {
        /// Why.
        reason: String,
    },
}

/// What the incumbent sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealInfo {
    /// The daemon's revision counter at seal (writes applied).
    pub revisions: u64,
    /// sha256 of the sealed state; the successor must compute the same.
    pub fingerprint: Fingerprint,
}

/// A daemon's report of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Client connections open.
    pub open_connections: u32,
    /// Requests being served.
    pub in_flight: u32,
    /// Revision counter of the daemon's state.
    pub revisions: u64,
    /// Whether the daemon is accepting.
    pub accepting: bool,
}

/// Why a handoff did not commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortReason {
    /// The successor exited or was killed before Ready.
    SuccessorExited {
        /// Exit description ("exit status 3", "signal 9").
        status: String,
    },
    /// The successor closed its control connection.
    SuccessorClosed,
    /// The successor sent nothing for the liveness timeout.
    SuccessorSilent,
    /// The successor broke the protocol.
    SuccessorProtocol {
        /// The error, as text (it crossed a process boundary).
        detail: String,
    },
    /// The successor reported itself unhealthy.
    Unhealthy {
        /// Its reason.
        reason: String,
    },
    /// The successor could not start (lock held, state did not open...).
    SuccessorFailed {
        /// Its reason.
        reason: String,
    },
    /// The successor's state fingerprint differs from the sealed one.
    FingerprintMismatch {
        /// Sealed by the incumbent.
        expected: Fingerprint,
        /// Computed by the successor.
        actual: Fingerprint,
    },
    /// No common protocol version.
    VersionMismatch {
        /// The supervisor's range.
        ours: VersionRange,
        /// The successor's range.
        theirs: VersionRange,
    },
    /// The incumbent could not seal.
    SealFailed {
        /// Its reason.
        reason: String,
    },
    /// The incumbent broke the protocol or died in a phase that cannot go on.
    IncumbentFailed {
        /// What happened.
        detail: String,
    },
    /// The overall handoff deadline passed.
    Deadline {
        /// The phase that was running.
        phase: String,
    },
    /// An operator or a shutdown cancelled the handoff.
    Cancelled,
    /// The health probe did not pass between a healthy Ready and the
    /// commit (the health gate, I12).
    ProbeFailed {
        /// What the probe saw.
        detail: String,
    },
    /// The successor cannot read a state blob the incumbent writes
    /// (I21); the incumbent was not asked to drain.
    SchemaRefused {
        /// Which schema, written and accepted.
        detail: String,
    },
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AbortReason::SuccessorExited { status } => {
                write!(f, "successor exited before ready ({status})")
            }
            AbortReason::SuccessorClosed => f.write_str("successor closed its control connection"),
            AbortReason::SuccessorSilent => {
                f.write_str("successor silent past the liveness timeout")
            }
            AbortReason::SuccessorProtocol { detail } => {
                write!(f, "successor broke the protocol: {detail}")
            }
            AbortReason::Unhealthy { reason } => {
                write!(f, "successor reported unhealthy: {reason}")
            }
            AbortReason::SuccessorFailed { reason } => write!(f, "successor failed: {reason}"),
            AbortReason::FingerprintMismatch { expected, actual } => {
                write!(
                    f,
                    "state fingerprint mismatch: sealed {expected}, opened {actual}"
                )
            }
            AbortReason::VersionMismatch { ours, theirs } => {
                write!(
                    f,
                    "no common protocol version: supervisor {ours}, successor {theirs}"
                )
            }
            AbortReason::SealFailed { reason } => write!(f, "incumbent could not seal: {reason}"),
            AbortReason::IncumbentFailed { detail } => write!(f, "incumbent failed: {detail}"),
            AbortReason::Deadline { phase } => write!(f, "handoff deadline passed during {phase}"),
            AbortReason::Cancelled => f.write_str("handoff cancelled"),
            AbortReason::ProbeFailed { detail } => write!(f, "health probe failed: {detail}"),
            AbortReason::SchemaRefused { detail } => {
                write!(
                    f,
                    "the successor cannot read the incumbent's state: {detail}"
                )
            }
        }
    }
}

/// One control message. The doc of each variant names its direction
/// (S = supervisor, G = a generation) and the states that take it; the tables
/// in ARCHITECTURE.md are the reference.
///
/// Never reorder or insert variants: append only (invariant I10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// G→S, first frame of a connection.
    Hello {
        /// The sender's role.
        role: Role,
        /// The sender's pid.
        pid: u32,
        /// Free-form build identity (version string, commit).
        build_id: String,
        /// Protocol versions the sender speaks.
        versions: VersionRange,
        /// Capability bits (none defined yet; unknown bits are ignored).
        capabilities: u64,
    },
    /// S→G, the answer to Hello.
    HelloAck {
        /// The version both speak.
        version: u16,
        /// The generation number assigned to the sender.
        generation: u64,
        /// Successor or cold start; how the handoff overlaps.
        mode: Mode,
        /// Whether an incumbent exists (false on a cold start or restart).
        has_incumbent: bool,
        /// How many named fds follow in [`Message::Fds`] frames.
        fd_count: u32,
    },
    /// S→G, the refusal of a Hello; the connection closes after it.
    Refused {
        /// The supervisor's versions.
        versions: VersionRange,
        /// Why.
        reason: AbortReason,
    },
    /// S→G: named fds; the frame carries `entries.len()` fds.
    Fds {
        /// Names and kinds, in the order of the fds.
        entries: Vec<FdEntry>,
    },
    /// G→S, successor: warm-up done, waiting for Begin.
    Warm,
    /// S→G, incumbent: a handoff has started; drain now.
    Prepare {
        /// Milliseconds left of the overall deadline.
        deadline_ms: u64,
        /// Milliseconds the drain may take.
        drain_grace_ms: u64,
    },
    /// G→S, incumbent: drain finished.
    Drained {
        /// Connections still open at the drain deadline.
        open_connections: u32,
        /// Whether accepting has stopped.
        accept_closed: bool,
    },
    /// S→G, incumbent: persist, fsync, release the data-directory lock.
    Seal,
    /// G→S, incumbent: sealing goes on (keeps a long seal visibly alive).
    SealProgress {
        /// Units done.
        done: u64,
        /// Units in all, if known.
        total: u64,
    },
    /// G→S, incumbent: state sealed, lock released.
    SealComplete(SealInfo),
    /// G→S, incumbent: could not seal; still holds the lock and its state.
    SealFailed {
        /// Why.
        reason: String,
    },
    /// S→G, successor: take the lock (exclusive) or start serving (overlap).
    Begin {
        /// What the incumbent sealed; `None` on a cold start, in overlap mode
        /// or when the incumbent died before sealing.
        seal: Option<SealInfo>,
    },
    /// G→S, successor: serving is possible.
    Ready {
        /// The addresses of the listeners it took.
        addresses: Vec<String>,
        /// Its own verdict.
        health: Health,
        /// Revision counter of the state it opened.
        revisions: u64,
    },
    /// S→G, successor: you are the live generation now.
    Commit,
    /// G→S: acknowledges Commit.
    CommitAck,
    /// S→G: the handoff is off (successor: exit; incumbent: see ResumeAfterAbort).
    Abort {
        /// Why.
        reason: AbortReason,
    },
    /// S→G, incumbent: re-take the lock and accept again.
    ResumeAfterAbort,
    /// G→S: acknowledges ResumeAfterAbort; serving again.
    ResumeAck,
    /// S→G, old incumbent after a commit: finish and exit.
    Retire,
    /// Either way: still alive.
    Heartbeat,
    /// G→S: the successor cannot go on (lock held, fingerprint mismatch...).
    Failed {
        /// Why.
        reason: AbortReason,
    },
    /// S→G: report yourself.
    SnapshotRequest,
    /// G→S: the answer to SnapshotRequest.
    SnapshotReport(Snapshot),
    /// S→G, first frame on a rendezvous connection: a supervisor started
    /// after this generation's supervisor died takes it over.
    Adopt {
        /// The generation number the supervisor's record gives it.
        generation: u64,
    },
    /// G→S: the answer to Adopt, carrying the generation's copies of the
    /// named listeners (one fd per entry); the connection is the control
    /// connection from now on.
    Adopted {
        /// The generation's pid.
        pid: u32,
        /// The handoff id its messages carry.
        handoff_id: u64,
        /// The listeners, in the order of the fds.
        entries: Vec<FdEntry>,
    },
    /// Client connections idle at a request boundary, one fd per entry.
    /// G→S from a draining generation (within its budget); S→G to the
    /// generation that serves them next, or back to the one that handed
    /// them over when its handoff rolled back (I20).
    Connections {
        /// The connections, in the order of the fds.
        entries: Vec<ConnectionEntry>,
    },
    /// S→G, to a draining generation that announced [`CAP_CONNECTIONS`]:
    /// how many connections it may hand over in this drain.
    ConnectionBudget {
        /// At most this many, in all.
        connections: u32,
    },
    /// G→S, after a `HelloAck` of version 2 or later, before `Warm`: the
    /// blob schemas this generation writes and the versions it reads. A
    /// successor that cannot read what the incumbent writes is refused
    /// before the incumbent drains (I21).
    Schemas {
        /// Written by this build.
        produces: Vec<Schema>,
        /// Read by this build.
        accepts: Vec<SchemaRange>,
    },
    /// Named items, one fd per entry. G→S: the live generation (or one
    /// draining) puts them in the supervisor's item store, replacing those
    /// of the same name; S→G: the store, to a generation before its
    /// `Begin` (I21).
    Items {
        /// The items, in the order of the fds.
        entries: Vec<ItemEntry>,
    },
    /// G→S, protocol version 3 and later: the items of these names are no
    /// longer kept for the next generations (a successor's removal counts
    /// once it committed, as its puts do; I21).
    ItemsRemoved {
        /// The names.
        names: Vec<String>,
    },
}

impl Message {
    /// The variant's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::HelloAck { .. } => "HelloAck",
            Message::Refused { .. } => "Refused",
            Message::Fds { .. } => "Fds",
            Message::Warm => "Warm",
            Message::Prepare { .. } => "Prepare",
            Message::Drained { .. } => "Drained",
            Message::Seal => "Seal",
            Message::SealProgress { .. } => "SealProgress",
            Message::SealComplete(_) => "SealComplete",
            Message::SealFailed { .. } => "SealFailed",
            Message::Begin { .. } => "Begin",
            Message::Ready { .. } => "Ready",
            Message::Commit => "Commit",
            Message::CommitAck => "CommitAck",
            Message::Abort { .. } => "Abort",
            Message::ResumeAfterAbort => "ResumeAfterAbort",
            Message::ResumeAck => "ResumeAck",
            Message::Retire => "Retire",
            Message::Heartbeat => "Heartbeat",
            Message::Failed { .. } => "Failed",
            Message::SnapshotRequest => "SnapshotRequest",
            Message::SnapshotReport(_) => "SnapshotReport",
            Message::Adopt { .. } => "Adopt",
            Message::Adopted { .. } => "Adopted",
            Message::Connections { .. } => "Connections",
            Message::ConnectionBudget { .. } => "ConnectionBudget",
            Message::Schemas { .. } => "Schemas",
            Message::Items { .. } => "Items",
            Message::ItemsRemoved { .. } => "ItemsRemoved",
        }
    }

    /// How many fds must travel with this message.
    pub fn fd_count(&self) -> usize {
        match self {
            Message::Fds { entries } | Message::Adopted { entries, .. } => entries.len(),
            Message::Connections { entries } => entries.len(),
            Message::Items { entries } => entries.len(),
            _ => 0,
        }
    }
}

/// What travels in a frame's payload: the message and the handoff it belongs
/// to. Every message after the hello exchange is checked against the
/// receiver's current handoff id (invariant I9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The handoff this message belongs to (0 before any is assigned).
    pub handoff_id: u64,
    /// The message.
    pub message: Message,
}
