//! The rendezvous of an orphaned generation and the supervisor that adopts
//! it.
//!
//! A library generation is spawned with [`ENV_RENDEZVOUS`], a socket path
//! beside its supervisor's admin socket. When its supervisor's connection
//! ends while it serves, it binds that path (mode 0600, a stale file of a
//! dead process replaced) and waits. A supervisor started later with the
//! same configuration connects, checks by `SO_PEERCRED` that the process
//! there is the generation its record names, and sends `Adopt`; the
//! generation checks the peer's uid (ours or root) and that it serves
//! without a supervisor under that generation number, answers `Adopted`
//! with its copies of the named listeners, sends its Hello, Schemas and
//! item store again (what the adopter cannot know), and from then on takes
//! that connection as its control connection. One connection at a time; a
//! peer that sends nothing is dropped after [`RENDEZVOUS_FRAME`].

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::timeouts::{RENDEZVOUS_FRAME, RENDEZVOUS_WAIT};

use crate::channel::{self, Receiver, Sender};
use crate::error::{Error, Peer, Result};
use crate::sys;
use crate::wire::{FdEntry, Message};

/// The environment variable that gives a library generation its rendezvous
/// path.
pub const ENV_RENDEZVOUS: &str = "HANDOFF_RENDEZVOUS";

/// An adoption offered to the generation's agent: the connection and the
/// generation number asked for; the agent answers on `verdict`.
pub(crate) struct Offer {
    pub(crate) generation: u64,
    pub(crate) sender: Sender,
    pub(crate) receiver: Receiver,
    pub(crate) verdict: crossbeam_channel::Sender<bool>,
}

/// Binds `path` and offers each admitted connection to `offer` until one is
/// accepted (whoever accepts removes the socket file: the same path may be
/// bound again at once). On a thread of its own.
pub(crate) fn open(
    path: PathBuf,
    write_timeout: Duration,
    offer: impl Fn(Offer) -> bool + Send + 'static,
) -> Result<()> {
    let listener = sys::bind_admin_socket(&path)
        .map_err(|source| Error::path("binding the rendezvous socket", &path, source))?;
    tracing::info!(path = %path.display(), "orphaned: waiting for a supervisor to adopt this generation");
    std::thread::Builder::new()
        .name("handoff-rendezvous".into())
        .spawn(move || {
            loop {
                let Ok(stream) = sys::accept_unix(listener.as_fd()) else {
                    // Out of fds, typically: back off rather than spin.
                    std::thread::sleep(crate::timeouts::POLL_SLICE);
                    continue;
                };
                match offered(stream, write_timeout) {
                    Ok((generation, sender, receiver)) => {
                        let (verdict, taken) = crossbeam_channel::bounded(1);
                        let handed = offer(Offer {
                            generation,
                            sender,
                            receiver,
                            verdict,
                        });
                        if !handed || taken.recv().unwrap_or(false) {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %crate::error::chain(&error), "rendezvous connection refused")
                    }
                }
            }
        })
        .map(drop)
        .map_err(|source| Error::io("starting the rendezvous thread", source))
}

/// Checks a rendezvous peer and reads its `Adopt`.
fn offered(socket: OwnedFd, write_timeout: Duration) -> Result<(u64, Sender, Receiver)> {
    let peer = sys::peer_credentials(&socket)
        .map_err(|source| Error::io("reading a rendezvous peer's credentials", source))?;
    if peer.uid != 0 && peer.uid != sys::effective_uid() {
        return Err(Error::Restore {
            reason: format!("uid {} may not adopt this generation", peer.uid),
        });
    }
    sys::set_read_timeout(socket.as_fd(), Some(RENDEZVOUS_FRAME))
        .map_err(|source| Error::io("bounding a rendezvous read", source))?;
    let (sender, mut receiver) = channel::split(socket, Peer::Supervisor, write_timeout)?;
    let frame = receiver.recv()?.ok_or(Error::SessionOver)?;
    let Message::Adopt { generation } = frame.envelope.message else {
        return Err(Error::Restore {
            reason: format!(
                "the first frame was {}, not Adopt",
                frame.envelope.message.name()
            ),
        });
    };
    sys::set_read_timeout(receiver.socket(), None)
        .map_err(|source| Error::io("unbounding the control connection", source))?;
    Ok((generation, sender, receiver))
}

/// A generation taken over at its rendezvous: who it is, its handoff id,
/// its listeners, and the control connection to it.
pub struct Claimed {
    /// Its pid (checked by the socket's credentials).
    pub pid: u32,
    /// The handoff id its messages carry.
    pub handoff_id: u64,
    /// Its copies of the named listeners.
    pub listeners: Vec<(FdEntry, OwnedFd)>,
    pub(crate) pidfd: OwnedFd,
    pub(crate) sender: Sender,
    pub(crate) receiver: Receiver,
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed")
            .field("pid", &self.pid)
            .field("handoff_id", &self.handoff_id)
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

/// The supervisor's side: names process `pid` (which must have started at
/// `start_time`, clock ticks since boot) by a pidfd first, so that a reused
/// pid cannot be taken for it later; connects to `path` (retrying while
/// nobody listens there yet, for
/// [`RENDEZVOUS_WAIT`]); checks that
/// process is there; sends `Adopt { generation }` and takes the answer. The
/// control connection's writes are then bounded by `write_timeout`.
pub fn claim(
    path: &Path,
    generation: u64,
    (pid, start_time): (u32, u64),
    write_timeout: Duration,
) -> Result<Claimed> {
    let refused = |reason: String| Error::Restore { reason };
    let pidfd =
        sys::pidfd::open(pid).map_err(|source| Error::io("opening the orphan's pidfd", source))?;
    let started = sys::pidfd::start_time(pid)
        .map_err(|source| Error::io("reading the orphan's start time", source))?;
    if started != start_time {
        return Err(refused(format!(
            "pid {pid} is another process than generation {generation} (its start time differs)"
        )));
    }
    let socket = connect(path, RENDEZVOUS_WAIT)?;
    let peer = sys::peer_credentials(&socket)
        .map_err(|source| Error::io("reading the rendezvous peer's credentials", source))?;
    if u32::try_from(peer.pid).ok() != Some(pid) {
        return Err(refused(format!(
            "pid {} listens at {}, not generation {generation}'s pid {pid}",
            peer.pid,
            path.display()
        )));
    }
    sys::set_read_timeout(socket.as_fd(), Some(RENDEZVOUS_FRAME))
        .map_err(|source| Error::io("bounding a rendezvous read", source))?;
    let (sender, mut receiver) = channel::split(socket, Peer::Incumbent, write_timeout)?;
    sender.send(0, Message::Adopt { generation }, &[])?;
    let frame = receiver.recv()?.ok_or_else(|| {
        refused(format!(
            "generation {generation} closed the rendezvous without an answer"
        ))
    })?;
    let Message::Adopted {
        pid: said,
        handoff_id,
        entries,
    } = frame.envelope.message
    else {
        return Err(refused(format!(
            "generation {generation} answered {}, not Adopted",
            frame.envelope.message.name()
        )));
    };
    if said != pid || entries.len() != frame.fds.len() {
        return Err(refused(format!(
            "generation {generation} answered for pid {said} with {} fds for {} names",
            frame.fds.len(),
            entries.len()
        )));
    }
    sys::set_read_timeout(receiver.socket(), None)
        .map_err(|source| Error::io("unbounding the control connection", source))?;
    Ok(Claimed {
        pid,
        handoff_id,
        listeners: entries.into_iter().zip(frame.fds).collect(),
        pidfd,
        sender,
        receiver,
    })
}

/// Connects to `path`, retrying while it does not exist or nobody listens,
/// until `within`.
fn connect(path: &Path, within: Duration) -> Result<OwnedFd> {
    let deadline = Instant::now() + within;
    loop {
        match sys::connect_unix(path) {
            Ok(socket) => return Ok(socket),
            Err(error)
                if Instant::now() < deadline
                    && matches!(
                        error.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
            {
                // The orphan binds as soon as it sees its supervisor's
                // connection end; a supervisor restarted at once may come
                // first. Polled, bounded by `within`.
                std::thread::sleep(crate::timeouts::POLL_SLICE);
            }
            Err(source) => {
                return Err(Error::path(
                    "connecting to a rendezvous socket",
                    path,
                    source,
                ));
            }
        }
    }
}
