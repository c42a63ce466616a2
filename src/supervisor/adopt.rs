//! Taking over a generation whose supervisor died (an orphan): the
//! supervisor started again with the same configuration claims it, gets
//! its listeners back without closing them, and supervises it from then on
//! as a process that is not its child (watched and signalled through a
//! pidfd, never reaped here).
//!
//! Two ways to claim one, by protocol:
//! - a library daemon waits at its rendezvous socket
//!   ([`crate::rendezvous`]) and hands over its copies of the listeners and
//!   a new control connection;
//! - a foreign daemon links nothing: its listeners are copied out of it
//!   with `pidfd_getfd` from the fds it was given (3 and up, in the order
//!   of the names), each checked to be the socket the record names.
//!
//! Who may claim is decided by the caller (`handoffctl` holds a lock per
//! admin socket, so that two supervisors never both claim one orphan);
//! which process is the orphan by its record, checked here: the pid and
//! its start time (a reused pid has another one).

use std::os::fd::{AsFd, OwnedFd};

use crate::error::{Error, Result};
use crate::protocol::Build;
use crate::rendezvous::Claimed;
use crate::sys;

/// An orphaned generation to take over.
#[derive(Debug)]
pub struct Adoption {
    /// Its number in the dead supervisor's record (the counter goes on).
    pub generation: u64,
    /// What it runs (a restart runs it again).
    pub build: Build,
    /// The next handoff id the dead supervisor would have used.
    pub next_handoff_id: u64,
    /// Past every generation number the dead supervisor's record names.
    pub next_generation: u64,
    /// The claimed process.
    pub orphan: Orphan,
}

/// A claimed orphan.
#[derive(Debug)]
pub enum Orphan {
    /// A library daemon, claimed at its rendezvous
    /// ([`crate::rendezvous::claim`]).
    Library(Claimed),
    /// A foreign daemon ([`claim_foreign`]).
    Foreign(ForeignOrphan),
}

/// A foreign daemon claimed by [`claim_foreign`].
#[derive(Debug)]
pub struct ForeignOrphan {
    /// Its pid.
    pub pid: u32,
    pidfd: OwnedFd,
    /// Its listeners, copied out of it, by name.
    pub listeners: Vec<(String, OwnedFd)>,
}

impl Orphan {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        match self {
            Orphan::Library(claimed) => claimed.pid,
            Orphan::Foreign(foreign) => foreign.pid,
        }
    }

    /// Takes its listeners (by name) for the supervisor's configuration.
    pub fn take_listeners(&mut self) -> Vec<(String, OwnedFd)> {
        match self {
            Orphan::Library(claimed) => std::mem::take(&mut claimed.listeners)
                .into_iter()
                .map(|(entry, fd)| (entry.name, fd))
                .collect(),
            Orphan::Foreign(foreign) => std::mem::take(&mut foreign.listeners),
        }
    }

    /// Its pid and pidfd, the handoff id its messages carry, and the
    /// control connection's halves (a library daemon).
    pub(crate) fn into_parts(self) -> Result<OrphanParts> {
        match self {
            Orphan::Library(claimed) => Ok(OrphanParts {
                pid: claimed.pid,
                pidfd: claimed.pidfd,
                handoff_id: claimed.handoff_id,
                control: Some((claimed.sender, claimed.receiver)),
            }),
            Orphan::Foreign(foreign) => Ok(OrphanParts {
                pid: foreign.pid,
                pidfd: foreign.pidfd,
                handoff_id: 0,
                control: None,
            }),
        }
    }
}

/// What the driver takes of an orphan.
pub(crate) struct OrphanParts {
    pub(crate) pid: u32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) handoff_id: u64,
    pub(crate) control: Option<(crate::channel::Sender, crate::channel::Receiver)>,
}

/// When process `pid` started (clock ticks since boot): with its pid, it
/// names one process even across pid reuse. For the record an adopting
/// supervisor checks.
pub fn start_time(pid: u32) -> Result<u64> {
    sys::pidfd::start_time(pid)
        .map_err(|source| Error::io("reading a process's start time", source))
}

/// Claims foreign generation `pid`, which must have started at
/// `start_time`: copies its listeners out of its fds 3 and up, in the
/// order of `listeners` (name and address, as the record gives them),
/// each checked to be a socket bound there (and listening, for a stream).
pub fn claim_foreign(
    pid: u32,
    started: u64,
    listeners: &[(String, String)],
) -> Result<ForeignOrphan> {
    let refused = |reason: String| Error::Restore { reason };
    let pidfd =
        sys::pidfd::open(pid).map_err(|source| Error::io("opening the orphan's pidfd", source))?;
    // Checked after the pidfd exists: if the start time matches now, the
    // pidfd names that process, whatever happens to the pid later.
    if start_time(pid)? != started {
        return Err(refused(format!(
            "pid {pid} is another process than the recorded generation (its start time differs)"
        )));
    }
    let mut copied = Vec::new();
    for (index, (name, address)) in listeners.iter().enumerate() {
        let first = sys::LISTEN_FDS_START;
        let number = first + i32::try_from(index).unwrap_or(i32::MAX - first);
        let fd = sys::pidfd::get_fd(pidfd.as_fd(), number).map_err(|source| {
            Error::io("copying a listener out of the orphan (pidfd_getfd)", source)
        })?;
        let info = sys::inspect(fd.as_fd())
            .map_err(|source| Error::io("inspecting a copied listener", source))?;
        let local = info.local.map(|local| local.to_string());
        let stream = matches!(
            info.kind,
            Some(crate::wire::FdKind::Tcp | crate::wire::FdKind::Unix)
        );
        if local.as_deref() != Some(address.as_str()) || (stream && !info.listening) {
            return Err(refused(format!(
                "fd {number} of pid {pid} is not listener {name} ({address}): it is {}",
                local.unwrap_or_else(|| "not a bound socket".into())
            )));
        }
        copied.push((name.clone(), fd));
    }
    Ok(ForeignOrphan {
        pid,
        pidfd,
        listeners: copied,
    })
}
