//! The `Drainable` contract: what a daemon implements to be replaced.
//!
//! The library calls these hooks on a thread of its own (the incumbent's hook
//! thread) while a library thread keeps heartbeats flowing, so a hook may
//! block for as long as its deadline allows. Hooks are called in protocol
//! order only: `drain`, then `seal` (exclusive mode), then either nothing
//! more (the process is retired after the commit) or `resume_after_abort`.

use std::time::Instant;

pub use crate::wire::{SealInfo, Snapshot};

/// What [`Drainable::drain`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Client connections still open when the hook returned.
    pub open_connections: u32,
    /// Whether the daemon stopped accepting.
    pub accept_closed: bool,
}

/// Handle given to [`Drainable::seal`] to report progress on a long seal;
/// each report goes to the supervisor as a `SealProgress` frame. A seal
/// that says nothing for half the time the handoff's deadline left it
/// (`SEAL_SILENCE_SHARE`; at least `SEAL_SILENCE_MIN`, else the deadline) is
/// taken for stuck (the incumbent is killed, the successor takes over from
/// the disk): each report starts that silence again.
pub struct SealProgress {
    pub(crate) report: Box<dyn FnMut(u64, u64) + Send>,
}

impl SealProgress {
    /// Reports `done` units out of `total` (0 when unknown).
    pub fn report(&mut self, done: u64, total: u64) {
        (self.report)(done, total);
    }

    /// A handle that reports nowhere (for a daemon sealing on its own, as in
    /// a graceful stop).
    pub fn discard() -> SealProgress {
        SealProgress {
            report: Box::new(|_, _| {}),
        }
    }
}

/// A daemon that can hand its work over to a successor.
///
/// The data-directory lock is not the daemon's to release: the library holds
/// it (taken by [`crate::Generation::begin`]) and releases it only after `seal` returned
/// `Ok` (invariant I4), and re-takes it before `resume_after_abort`.
///
/// ```
/// use std::time::Instant;
/// use handoff::{DrainReport, Drainable, SealInfo, SealProgress, Snapshot, Fingerprint};
///
/// struct Counter { value: u64, accepting: bool }
///
/// impl Drainable for Counter {
///     type Error = std::io::Error;
///     fn drain(&mut self, _deadline: Instant) -> Result<DrainReport, Self::Error> {
///         self.accepting = false;
///         Ok(DrainReport { open_connections: 0, accept_closed: true })
///     }
///     fn seal(&mut self, _progress: &mut SealProgress) -> Result<SealInfo, Self::Error> {
///         let bytes = self.value.to_le_bytes();
///         Ok(SealInfo { revisions: self.value, fingerprint: Fingerprint::of_bytes(&bytes) })
///     }
///     fn resume_after_abort(&mut self) -> Result<(), Self::Error> {
///         self.accepting = true;
///         Ok(())
///     }
///     fn snapshot(&self) -> Snapshot {
///         Snapshot { revisions: self.value, accepting: self.accepting, ..Snapshot::default() }
///     }
/// }
/// ```
pub trait Drainable: Send + 'static {
    /// The daemon's own error; it reaches the supervisor as text.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Stop accepting, finish requests in flight, close idle connections at
    /// a request boundary; return by `deadline` (monotonic), whatever is
    /// still open. Keep the state writable: the handoff may still abort.
    ///
    /// Count open connections only once the accept loop has *confirmed* it
    /// stopped: an accept already under way (on another thread, or blocked
    /// on the shared listener while another generation took the connection
    /// it was woken for) can still return a connection after the flag was
    /// cleared, and a process that exits with it resets it.
    fn drain(&mut self, deadline: Instant) -> Result<DrainReport, Self::Error>;

    /// Persist and fsync the state, then return its revision count and
    /// fingerprint. After `Ok` the daemon must not write its state again
    /// unless `resume_after_abort` is called. On `Err` the library keeps the
    /// lock and the handoff rolls back. A long seal reports its progress
    /// (see [`SealProgress`]).
    fn seal(&mut self, progress: &mut SealProgress) -> Result<SealInfo, Self::Error>;

    /// The handoff was aborted: the lock is held again; reopen what seal
    /// closed and accept again.
    ///
    /// Reload the state from the data directory rather than from memory: a
    /// successor that received Commit may have acknowledged writes before it
    /// died and the supervisor rolled back (invariant I6).
    fn resume_after_abort(&mut self) -> Result<(), Self::Error>;

    /// A cheap report of the daemon's state.
    fn snapshot(&self) -> Snapshot;
}
