//! The one error type of the library.
//!
//! Variants say what was expected and what arrived. No third-party error type
//! appears in a public variant: OS errors become [`std::io::Error`], codec and
//! hook errors travel as boxed `source`s.

use std::path::PathBuf;
use std::time::Duration;

use crate::wire::{Fingerprint, VersionRange};

/// A boxed error from user code or a dependency, kept as a `source`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who is at the other end of a control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The supervisor (seen from a daemon).
    Supervisor,
    /// The generation currently serving.
    Incumbent,
    /// The generation being started.
    Successor,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Peer::Supervisor => "supervisor",
            Peer::Incumbent => "incumbent",
            Peer::Successor => "successor",
        })
    }
}

/// A malformed or unacceptable frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header does not start with the magic bytes.
    #[error("bad frame magic: expected {expected:02x?}, got {got:02x?}")]
    BadMagic {
        /// The magic this build speaks.
        expected: [u8; 4],
        /// What arrived.
        got: [u8; 4],
    },
    /// The header's wire-format version is not one this build decodes.
    #[error("unsupported wire format version {got} (this build decodes {supported})")]
    UnsupportedWireVersion {
        /// What arrived.
        got: u16,
        /// What this build decodes.
        supported: u16,
    },
    /// The payload length exceeds the cap; rejected before any allocation.
    #[error("frame payload of {len} bytes exceeds the cap of {max} bytes")]
    TooLarge {
        /// Declared payload length.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// The header declares more fds than a frame may carry.
    #[error("frame declares {declared} fds, at most {max} may travel with one frame")]
    TooManyFds {
        /// Declared count.
        declared: u16,
        /// The cap.
        max: u16,
    },
    /// The fds that arrived do not match the count the header declared.
    #[error("frame declared {declared} fds but {received} arrived")]
    FdCountMismatch {
        /// Declared in the header.
        declared: usize,
        /// Received with the bytes.
        received: usize,
    },
    /// The kernel truncated the control data (MSG_CTRUNC): fds were dropped.
    #[error("control data truncated by the kernel (MSG_CTRUNC): passed fds were lost")]
    ControlTruncated,
    /// The payload did not decode as a message.
    #[error("payload of {len} bytes does not decode as a message")]
    Payload {
        /// Payload length.
        len: usize,
        /// The decoder's complaint.
        #[source]
        source: BoxError,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed with {buffered} bytes of an incomplete frame buffered")]
    TruncatedAtEof {
        /// Bytes of the partial frame.
        buffered: usize,
    },
    /// Bytes or fds arrived after the peer said it was done.
    #[error("data arrived after end of stream")]
    AfterEof,
}

/// What went wrong with a named listener.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerProblem {
    /// The fd is not a socket.
    NotASocket,
    /// A stream socket that is not listening.
    NotListening,
    /// The supervisor passed no fd under this name.
    Missing,
    /// The socket family or type differs from what was asked.
    WrongKind {
        /// What the caller asked for.
        expected: String,
        /// What the fd is.
        got: String,
    },
    /// The bound address differs from what was asked.
    WrongAddress {
        /// What the caller asked for.
        expected: String,
        /// What the fd is bound to.
        got: String,
    },
}

impl std::fmt::Display for ListenerProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenerProblem::NotASocket => f.write_str("not a socket"),
            ListenerProblem::NotListening => f.write_str("stream socket is not listening"),
            ListenerProblem::Missing => f.write_str("the supervisor passed no fd under this name"),
            ListenerProblem::WrongKind { expected, got } => {
                write!(f, "expected a {expected} socket, got {got}")
            }
            ListenerProblem::WrongAddress { expected, got } => {
                write!(f, "expected address {expected}, got {got}")
            }
        }
    }
}

/// The one error type of the library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    #[error("{op} failed")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A system call on a path failed.
    #[error("{op} {path:?} failed")]
    Path {
        /// What was attempted.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A frame could not be decoded or was unacceptable.
    #[error("malformed frame from the {peer}")]
    Frame {
        /// Who sent it.
        peer: Peer,
        /// What was wrong.
        #[source]
        source: FrameError,
    },
    /// A well-formed message arrived in a state that does not take it.
    #[error("protocol violation by the {peer}: in state {state}, expected {expected}, got {got}")]
    UnexpectedMessage {
        /// Who sent it.
        peer: Peer,
        /// The receiving state machine's state.
        state: &'static str,
        /// What the state accepts.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// A message carried the id of another handoff.
    #[error("handoff id mismatch from the {peer}: expected {expected}, got {got}")]
    HandoffIdMismatch {
        /// Who sent it.
        peer: Peer,
        /// The current handoff.
        expected: u64,
        /// What the message carried.
        got: u64,
    },
    /// The two sides share no protocol version.
    #[error("no common protocol version: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// What this side speaks.
        ours: VersionRange,
        /// What the peer announced.
        theirs: VersionRange,
    },
    /// The peer closed the control connection.
    #[error("the {peer} closed the control connection")]
    PeerClosed {
        /// Who.
        peer: Peer,
    },
    /// The peer sent nothing, not even a heartbeat, for too long.
    #[error("the {peer} was silent for {silent_for:?}")]
    PeerSilent {
        /// Who.
        peer: Peer,
        /// For how long.
        silent_for: Duration,
    },
    /// A handoff was requested while another one is in flight.
    #[error("another handoff is in flight")]
    Busy,
    /// The handoff was aborted; the incumbent keeps serving.
    #[error("handoff aborted: {reason}")]
    Aborted {
        /// Why.
        reason: crate::wire::AbortReason,
    },
    /// Another live process holds the data-directory lock.
    #[error("data directory {path:?} is locked by another live process")]
    DataDirLocked {
        /// The lock file.
        path: PathBuf,
    },
    /// The successor's state does not match the incumbent's sealed state.
    #[error("state fingerprint mismatch: sealed {expected}, opened {actual}")]
    FingerprintMismatch {
        /// What the incumbent sealed.
        expected: Fingerprint,
        /// What the successor computed.
        actual: Fingerprint,
    },
    /// An item kept for this generation cannot be used as asked (I21).
    #[error("item {name:?} refused: {reason}")]
    ItemRefused {
        /// The item's name.
        name: String,
        /// Why: a schema out of range, a memfd not sealed, resized or with
        /// other bytes, a blob asked for as an fd or the other way round.
        reason: String,
    },
    /// A named listener is unusable.
    #[error("listener {name:?}: {problem}")]
    Listener {
        /// The listener's name.
        name: String,
        /// What is wrong.
        problem: ListenerProblem,
    },
    /// An address string did not parse.
    #[error("cannot parse listener address {input:?}: {reason}")]
    BadAddress {
        /// What was given.
        input: String,
        /// Why it does not parse.
        reason: &'static str,
    },
    /// A health probe specification did not parse.
    #[error(
        "cannot parse health probe {input:?}: {reason} (expected http://HOST:PORT/PATH or tcp:HOST:PORT)"
    )]
    BadProbe {
        /// What was given.
        input: String,
        /// Why it does not parse.
        reason: &'static str,
    },
    /// A timeout setting is unusable.
    #[error("invalid timeout {field}: {problem}")]
    InvalidTimeout {
        /// Which setting.
        field: &'static str,
        /// Why.
        problem: &'static str,
    },
    /// An environment variable the library reads is malformed.
    #[error("environment variable {var} is malformed: {problem}")]
    BadEnvironment {
        /// The variable.
        var: &'static str,
        /// Why.
        problem: &'static str,
    },
    /// A daemon hook returned an error.
    #[error("the {hook} hook failed")]
    Hook {
        /// Which hook.
        hook: &'static str,
        /// The daemon's own error.
        #[source]
        source: BoxError,
    },
    /// A binary pinned by its sha256 has other contents now.
    #[error("binary {path:?} has sha256 {actual}, expected {expected}")]
    BinaryMismatch {
        /// The binary.
        path: PathBuf,
        /// The sha256 it was pinned to.
        expected: String,
        /// The sha256 of its contents now.
        actual: String,
    },
    /// Spawning a generation failed.
    #[error("cannot start {binary:?}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor is gone or the handoff it drove is over.
    #[error("the control session is over")]
    SessionOver,

    /// A frozen supervisor's state could not be taken back (the image that
    /// froze it stays in charge, or takes over again).
    #[error("restoring the supervisor's state failed: {reason}")]
    Restore {
        /// What was wrong.
        reason: String,
    },

    /// `ready()` was called off the main thread: a supervised generation
    /// dies with its supervisor until it commits, a setting that belongs to
    /// the thread that was spawned (the main thread), so no other thread
    /// can make it outlive the supervisor (I8). The handoff is failed
    /// instead of committing a generation that would die with it.
    #[error(
        "ready() must be called from the main thread (it was called from {thread}); \
         call it where `main` runs"
    )]
    NotMainThread {
        /// The calling thread's name, or `unnamed`.
        thread: String,
    },
    /// A handler library could not be loaded (missing file, not a library,
    /// missing symbol); whatever was serving before keeps serving.
    #[error("cannot load handler library {path:?}")]
    HandlerLoad {
        /// The library.
        path: PathBuf,
        /// The loader's complaint.
        #[source]
        source: BoxError,
    },
    /// A handler library was built against another ABI version.
    #[error("handler library {path:?} speaks ABI version {got}, this host speaks {expected}")]
    AbiMismatch {
        /// The library.
        path: PathBuf,
        /// The version this host speaks.
        expected: u32,
        /// The version the library reported.
        got: u32,
    },
    /// The endpoint's handler is draining (removed, or the registry is
    /// draining): answer 503.
    #[error("endpoint {id:?} is draining")]
    EndpointDraining {
        /// The endpoint.
        id: String,
    },
    /// No handler is registered under this id.
    #[error("no endpoint {id:?}")]
    UnknownEndpoint {
        /// The endpoint.
        id: String,
    },
    /// A handler is already registered under this id.
    #[error("endpoint {id:?} already exists")]
    EndpointExists {
        /// The endpoint.
        id: String,
    },
    /// The registry is drained for a process handoff and takes no new
    /// handlers until it resumes.
    #[error("the handler registry is drained")]
    RegistryDrained,
    /// A handler panicked; the request gets a 500, other requests are
    /// unaffected.
    #[error("handler {id:?} version {version} panicked: {message}")]
    HandlerPanicked {
        /// The endpoint.
        id: String,
        /// The handler version.
        version: u64,
        /// The panic message.
        message: String,
    },
    /// A handler did not answer in time; the request gets a 504. The call
    /// goes on in the background and its handler stays loaded until it
    /// returns.
    #[error("handler {id:?} version {version} did not answer within {timeout:?}")]
    HandlerTimeout {
        /// The endpoint.
        id: String,
        /// The handler version.
        version: u64,
        /// The limit.
        timeout: Duration,
    },
    /// A handler library returned no usable response.
    #[error("handler {id:?} version {version} returned no usable response")]
    HandlerBadResponse {
        /// The endpoint.
        id: String,
        /// The handler version.
        version: u64,
    },
    /// An endpoint id is unusable as a library name.
    #[error("endpoint id {id:?} is not usable: {problem}")]
    BadEndpointId {
        /// The id.
        id: String,
        /// Why.
        problem: &'static str,
    },
    /// Compiling a handler failed; the endpoint keeps its previous library.
    #[error("building the handler of endpoint {endpoint:?} failed:\n{compiler_output}")]
    Build {
        /// The endpoint.
        endpoint: String,
        /// What the compiler said.
        compiler_output: String,
    },
    /// Compiling a handler took too long; the compiler was killed.
    #[error("building the handler of endpoint {endpoint:?} took longer than {timeout:?}")]
    BuildTimedOut {
        /// The endpoint.
        endpoint: String,
        /// The limit.
        timeout: Duration,
    },
}

impl Error {
    /// Wraps an OS error with the operation that failed.
    pub(crate) fn io(op: &'static str, source: impl Into<std::io::Error>) -> Error {
        Error::Io {
            op,
            source: source.into(),
        }
    }

    /// Wraps an OS error on a path.
    pub(crate) fn path(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<std::io::Error>,
    ) -> Error {
        Error::Path {
            op,
            path: path.into(),
            source: source.into(),
        }
    }
}

/// `error` and its sources on one line, joined by `: ` (a source whose
/// text the line already ends with is not repeated): the one way the
/// library and `handoffctl` print an error chain, in logs and on the
/// command line alike.
///
/// ```
/// let error = handoff::Error::Io {
///     op: "binding a listener",
///     source: std::io::Error::other("address in use"),
/// };
/// assert_eq!(handoff::error::chain(&error), "binding a listener failed: address in use");
/// ```
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}
