//! What a supervisor is given: its listeners, the daemon and how to speak
//! to it, durations and policies; and what one upgrade asks for.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::probe::Probe;
use crate::protocol::{Build, DaemonKind, LifecycleConfig, ReadySignal, RestartPolicy};
use crate::sys::{self, ListenAddr, Sig};
use crate::timeouts::Timeouts;
use crate::wire::{FdKind, Mode};

/// A listening socket (or any fd) the supervisor holds and passes on by name.
#[derive(Debug)]
pub struct NamedListener {
    /// The name daemons ask for.
    pub name: String,
    /// What it is.
    pub kind: FdKind,
    /// The socket; the supervisor keeps it open for its whole life.
    pub fd: OwnedFd,
    /// Its address, for status.
    pub address: String,
}

impl NamedListener {
    /// Binds `addr` (`HOST:PORT`, `unix:PATH`, `udp:HOST:PORT`).
    pub fn bind(name: impl Into<String>, addr: &ListenAddr) -> Result<Self> {
        let fd = sys::bind(addr).map_err(|source| Error::io("binding a listener", source))?;
        let kind = match addr {
            ListenAddr::Tcp(_) => FdKind::Tcp,
            ListenAddr::Unix(_) => FdKind::Unix,
            ListenAddr::Udp(_) => FdKind::Udp,
        };
        let address = sys::inspect(fd.as_fd())
            .ok()
            .and_then(|info| info.local)
            .map_or_else(|| addr.to_string(), |local| local.to_string());
        Ok(NamedListener {
            name: name.into(),
            kind,
            fd,
            address,
        })
    }

    /// Adopts an fd received from elsewhere (systemd socket activation).
    pub fn adopt(name: impl Into<String>, fd: OwnedFd) -> Result<Self> {
        let info = sys::inspect(fd.as_fd())
            .map_err(|source| Error::io("inspecting an adopted fd", source))?;
        Ok(NamedListener {
            name: name.into(),
            kind: info.kind.unwrap_or(FdKind::Other),
            address: info
                .local
                .map_or_else(|| "-".into(), |local| local.to_string()),
            fd,
        })
    }
}

/// How the supervisor talks to its generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonProtocol {
    /// The daemon links this library: control socket, drain, seal, commit.
    Library,
    /// A daemon that does not link the library, supervised with systemd's
    /// conventions: listeners by socket activation (fds 3.., `LISTEN_FDS`,
    /// `LISTEN_FDNAMES`, `LISTEN_PID`), readiness by `READY=1` on a
    /// per-generation `NOTIFY_SOCKET` or by the probe, stop by a signal.
    /// Always overlap: the successor serves before the incumbent is told
    /// to stop (`mode` is ignored).
    Systemd {
        /// How readiness is signalled (`Probe` needs `SupervisorConfig::probe`).
        ready: ReadySignal,
        /// What stops a generation gracefully (SIGTERM; SIGQUIT for
        /// nginx-style servers); SIGKILL follows after the drain grace.
        stop_signal: Sig,
        /// With a probation (`Timeouts::probation`): how the old generation
        /// is made idle and brought back. `None`: it stays a warm standby,
        /// serving beside the new one until the probation ends (I14).
        quiesce: Option<QuiesceSignals>,
        /// The most fds the daemon may keep in the supervisor's fd store
        /// (`FDSTORE=1`, systemd's `FileDescriptorStoreMax=`; 0: off).
        /// Every later generation gets them after the listeners. See
        /// [`DEFAULT_FD_STORE_MAX`] and `protocol::FdStore`.
        fd_store_max: usize,
    },
}

/// The fd store's default bound for a foreign daemon: 16, the
/// `FileDescriptorStoreMax=` of the shipped unit. Not systemd's 0: a daemon
/// that stores nothing pays nothing, and one written for systemd's store
/// keeps its state across upgrades and crashes without a setting; 16 fds
/// held in the supervisor are cheap.
pub const DEFAULT_FD_STORE_MAX: usize = 16;

/// The signal pair that idles and resumes a foreign generation during
/// probation, the nginx way (binary upgrade: SIGWINCH makes the old
/// master's workers finish and stop while the master stays, SIGHUP starts
/// them again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuiesceSignals {
    /// Sent to the old generation at the commit instead of the stop signal:
    /// stop accepting, finish the requests in flight, stay alive.
    pub quiesce: Sig,
    /// Sent to it when the new generation fails during probation: accept
    /// again.
    pub resume: Sig,
}

/// Everything the supervisor needs.
#[derive(Debug)]
pub struct SupervisorConfig {
    /// The daemon binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment for every generation.
    pub env: Vec<(OsString, OsString)>,
    /// Exclusive (stateful) or overlap (stateless).
    pub mode: Mode,
    /// Durations.
    pub timeouts: Timeouts,
    /// Restart policy outside handoffs.
    pub restart: RestartPolicy,
    /// The listeners, bound or adopted by the caller.
    pub listeners: Vec<NamedListener>,
    /// How generations are started and spoken to.
    pub protocol: DaemonProtocol,
    /// The health gate: when set, a successor's healthy Ready is followed
    /// by this probe (retried until `timeouts.probe`) before Commit, and a
    /// probe that never passes rolls the handoff back (I12). Cold starts
    /// and restarts are gated too.
    pub probe: Option<Probe>,
    /// The sha256 (lowercase hex) that `program` must have whenever it is
    /// started as configured (generation 1, an upgrade that names no
    /// program, and their restarts): the file is opened, hashed and run
    /// from the open file (`/proc/self/fd/N`; a `#!` script by its path,
    /// checked just before), and other contents refuse the start
    /// ([`Error::BinaryMismatch`]).
    pub program_sha256: Option<String>,
    /// Where a generation is found again when this supervisor dies while it
    /// serves: library generation N binds `{rendezvous}.gen{N}`
    /// ([`crate::rendezvous`]); a foreign generation's notification socket
    /// is `{rendezvous}.notify/gen{N}.sock`, bound again by the supervisor
    /// that adopts it (when that path fits a socket address; else a private
    /// directory under the temporary directory, lost with its supervisor).
    /// One supervisor at a time per rendezvous (`handoffctl` holds a lock
    /// per admin socket). `None`: an orphan cannot be adopted.
    pub rendezvous: Option<PathBuf>,
    /// The first handoff's id (generation 1's start is handoff 1): 1, or
    /// past the ids a kept history already holds, so that a supervisor
    /// started again does not number its handoffs as an earlier one did.
    pub first_handoff_id: u64,
}

/// What one upgrade asks for; `None` fields take the configured value.
#[derive(Debug, Clone, Default)]
pub struct UpgradeRequest {
    /// Binary of the successor.
    pub program: Option<PathBuf>,
    /// Arguments of the successor.
    pub args: Option<Vec<OsString>>,
    /// Drain grace for this handoff.
    pub drain_grace: Option<Duration>,
    /// Overall deadline for this handoff.
    pub deadline: Option<Duration>,
    /// Extra environment for this successor only (after the configured one).
    pub env: Vec<(OsString, OsString)>,
    /// What to execute if this generation, once committed, crashes and must
    /// be restarted (defaults to `program`). Set it when `program` is valid
    /// only now, as a pinned `/proc/self/fd/N` is.
    pub restart_program: Option<PathBuf>,
    /// The sha256 (lowercase hex) that `restart_program` must still have
    /// when a restart runs it. Each restart then hashes the file and runs
    /// it from the open, hashed file; other contents refuse the restart
    /// ([`Error::BinaryMismatch`], logged), which is tried again after the
    /// restart backoff, so an operator can put the binary back or upgrade.
    pub restart_sha256: Option<String>,
    /// Exclusive mode: if the incumbent fails to drain or seal, stop it
    /// (its stop signal, SIGKILL after `kill_grace`) and let the successor
    /// take over as after its crash, instead of rolling back. The way out
    /// of a build whose seal always fails; it costs a wait in the backlog
    /// and loses nothing a daemon fsynced before acknowledging.
    pub force: bool,
    /// When the caller received the request (an admin client's, say): the
    /// handoff's total counts from here, checks and hashing included.
    /// Default: when the supervisor receives it.
    pub requested: Option<std::time::Instant>,
}

impl DaemonProtocol {
    /// The signal a generation's graceful stop is.
    pub(crate) fn stop_signal(self) -> Sig {
        match self {
            DaemonProtocol::Library => Sig::Term,
            DaemonProtocol::Systemd { stop_signal, .. } => stop_signal,
        }
    }

    /// The fd store's bound (0, off, for a library daemon).
    pub(crate) fn fd_store_max(self) -> usize {
        match self {
            DaemonProtocol::Systemd { fd_store_max, .. } => fd_store_max,
            DaemonProtocol::Library => 0,
        }
    }

    /// A foreign daemon's quiesce and resume signals, if configured.
    pub(crate) fn quiesce_signals(self) -> Option<QuiesceSignals> {
        match self {
            DaemonProtocol::Systemd { quiesce, .. } => quiesce,
            DaemonProtocol::Library => None,
        }
    }

    fn kind(self) -> DaemonKind {
        match self {
            DaemonProtocol::Library => DaemonKind::Library,
            DaemonProtocol::Systemd { ready, quiesce, .. } => DaemonKind::Foreign {
                ready,
                quiesce: quiesce.is_some(),
            },
        }
    }
}

/// Where foreign generations' notification sockets live for a supervisor
/// whose rendezvous prefix is `rendezvous` (see
/// [`SupervisorConfig::rendezvous`]): `{rendezvous}.notify`, if it is
/// absolute (a generation's `NOTIFY_SOCKET` must be) and its longest socket
/// path fits a socket address; else `None` (a private directory under the
/// temporary directory is used, which an adopter does not find).
pub fn notify_home(rendezvous: &Path) -> Option<PathBuf> {
    if !rendezvous.is_absolute() {
        return None;
    }
    let mut home = rendezvous.as_os_str().to_owned();
    home.push(".notify");
    let home = PathBuf::from(home);
    crate::os::fits_unix_socket(&home.join(format!("gen{}.sock", u64::MAX))).then_some(home)
}

impl SupervisorConfig {
    /// A library daemon `program args` in `mode` on `listeners`, with the
    /// defaults: no extra environment, the default timeouts, restarts on
    /// failure, no health gate, no pin, no rendezvous (orphans are not
    /// adopted), handoff ids from 1. Change a field with struct update
    /// syntax: `SupervisorConfig { timeouts, ..SupervisorConfig::new(..) }`.
    pub fn new(
        program: impl Into<PathBuf>,
        args: Vec<OsString>,
        mode: Mode,
        listeners: Vec<NamedListener>,
    ) -> SupervisorConfig {
        SupervisorConfig {
            program: program.into(),
            args,
            env: Vec::new(),
            mode,
            timeouts: Timeouts::default(),
            restart: RestartPolicy::OnFailure,
            listeners,
            protocol: DaemonProtocol::Library,
            probe: None,
            program_sha256: None,
            rendezvous: None,
            first_handoff_id: 1,
        }
    }

    /// Generation `id`'s rendezvous path, if orphans can be adopted.
    pub fn rendezvous_of(&self, id: u64) -> Option<PathBuf> {
        self.rendezvous.as_ref().map(|prefix| {
            let mut path = prefix.clone().into_os_string();
            path.push(format!(".gen{id}"));
            PathBuf::from(path)
        })
    }

    /// The fixed directory of foreign generations' notification sockets
    /// (see [`SupervisorConfig::rendezvous`]), if its longest socket path
    /// fits.
    pub(crate) fn notify_home(&self) -> Option<PathBuf> {
        notify_home(self.rendezvous.as_ref()?)
    }

    /// What the lifecycle machine needs of this configuration.
    pub(crate) fn lifecycle(&self) -> LifecycleConfig {
        LifecycleConfig {
            mode: match self.protocol {
                // A foreign daemon is always handed over in overlap.
                DaemonProtocol::Systemd { .. } => Mode::Overlap,
                DaemonProtocol::Library => self.mode,
            },
            daemon: self.protocol.kind(),
            restart: self.restart,
            timeouts: self.timeouts,
            probe: self.probe.is_some(),
            fd_count: u32::try_from(self.listeners.len()).unwrap_or(u32::MAX),
            build: Build {
                program: self.program.clone(),
                args: self.args.clone(),
                sha256: self.program_sha256.clone(),
            },
        }
    }
}
