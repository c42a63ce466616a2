//! The daemon's API: one code path for a cold start, a successor and a
//! process running without a supervisor (house style habit 12).
//!
//! ```no_run
//! # fn main() -> handoff::Result<()> {
//! # struct Daemon;
//! # impl handoff::Drainable for Daemon {
//! #     type Error = std::io::Error;
//! #     fn drain(&mut self, _: std::time::Instant) -> Result<handoff::DrainReport, Self::Error> { unimplemented!() }
//! #     fn seal(&mut self, _: &mut handoff::SealProgress) -> Result<handoff::SealInfo, Self::Error> { unimplemented!() }
//! #     fn resume_after_abort(&mut self) -> Result<(), Self::Error> { unimplemented!() }
//! #     fn snapshot(&self) -> handoff::Snapshot { unimplemented!() }
//! # }
//! # fn open_state(_: &std::path::Path) -> (u64, handoff::Fingerprint) { unimplemented!() }
//! let mut generation = handoff::start(handoff::StartOptions::new("mydaemon 1.2.0"))?;
//! // Inherited from the supervisor, or bound here when running alone.
//! let http = generation.tcp_listener("http", "127.0.0.1:8080")?;
//! // ... warm up: config, caches, runtime; nothing that needs the data dir ...
//! let begun = generation.begin(Some(std::path::Path::new("/var/lib/mydaemon")))?;
//! let (revisions, fingerprint) = open_state(begun.data_dir().unwrap());
//! let live = begun.ready(handoff::ReadyReport::stateful(revisions, fingerprint), Daemon)?;
//! // ... serve on `http` ...
//! let ending = live.wait();
//! # let _ = (http, ending); Ok(()) }
//! ```
//!
//! The typestates make the order a compile-time fact: listeners are taken
//! while `Warming`, the data directory is locked by [`Generation::begin`]
//! (for a successor: only after the supervisor's Begin, invariant I3), and
//! [`Generation<Begun>::ready`] is the only way to a [`Live`] generation.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::connections::ConnectionPort;
use crate::drain::Drainable;
use crate::error::{Error, ListenerProblem, Result};
use crate::incumbent::{AgentEvent, AgentInput};
use crate::items::ItemStore;
use crate::protocol::{Ending, UserCall};
use crate::sys::{self, DataDirLock, ListenAddr};
use crate::timeouts::Timeouts;
use crate::wire::{AbortReason, FdKind, Fingerprint, Health, Mode, SealInfo};

/// Environment variable naming the inherited control fd.
pub const ENV_CONTROL_FD: &str = "HANDOFF_CONTROL_FD";
/// Environment variable naming the supervisor's pid; a process whose parent
/// is not that pid (a daemon's own child) is not supervised.
pub const ENV_SUPERVISOR_PID: &str = "HANDOFF_SUPERVISOR_PID";
/// Environment variable naming the data directory the supervisor assigns
/// (`handoffctl run --data-dir`); [`Generation::begin`] takes it when it is
/// given none, in exclusive mode.
pub const ENV_DATA_DIR: &str = "HANDOFF_DATA_DIR";
/// Environment variable with the supervisor's heartbeat interval in
/// milliseconds: a generation heartbeats at the supervisor's pace, so a
/// supervisor with a short liveness timeout does not take it for dead (I2).
pub const ENV_HEARTBEAT_MS: &str = "HANDOFF_HEARTBEAT_MS";

/// How a daemon starts.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Build identity sent in Hello (version string, commit).
    pub build_id: String,
    /// Durations on the daemon's side (heartbeats, liveness, relock).
    pub timeouts: Timeouts,
    /// Protocol versions announced in Hello. Leave the default; tests of
    /// version skew set others.
    pub versions: crate::wire::VersionRange,
    /// Whether the daemon hands idle client connections over and serves
    /// those handed to it ([`Generation::connections`]).
    pub connections: bool,
    /// The blob schemas this build writes, and the versions it reads
    /// ([`crate::ItemStore`]); a successor that cannot read what the
    /// incumbent writes is refused before the drain (I21).
    pub schemas: (Vec<crate::wire::Schema>, Vec<crate::wire::SchemaRange>),
}

impl StartOptions {
    /// Options with default timeouts.
    pub fn new(build_id: impl Into<String>) -> Self {
        StartOptions {
            build_id: build_id.into(),
            timeouts: Timeouts::default(),
            versions: crate::wire::PROTOCOL_VERSIONS,
            connections: false,
            schemas: (Vec::new(), Vec::new()),
        }
    }

    /// Declares the blob schemas this build `produces` and `accepts`.
    pub fn with_schemas(
        mut self,
        produces: Vec<crate::wire::Schema>,
        accepts: Vec<crate::wire::SchemaRange>,
    ) -> Self {
        self.schemas = (produces, accepts);
        self
    }

    /// The daemon takes part in connection handoff: see
    /// [`crate::ConnectionPort`].
    pub fn with_connections(mut self) -> Self {
        self.connections = true;
        self
    }
}

/// Typestate: taking listeners and warming up.
#[derive(Debug)]
pub struct Warming(());

/// Typestate: Begin received (or cold start); the data directory is ours.
#[derive(Debug)]
pub struct Begun {
    seal: Option<SealInfo>,
    data_dir: Option<PathBuf>,
    /// Standalone only: the lock stays with the process.
    own_lock: Option<DataDirLock>,
}

struct Session {
    to_agent: Sender<AgentInput>,
    from_agent: Receiver<AgentEvent>,
    mode: Mode,
    has_incumbent: bool,
    generation: u64,
    port: Option<ConnectionPort>,
}

/// A daemon generation on its way to serving.
pub struct Generation<S> {
    session: Option<Session>,
    items: ItemStore,
    fds: HashMap<String, (FdKind, OwnedFd)>,
    addresses: Vec<String>,
    state: S,
}

impl<S> std::fmt::Debug for Generation<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("supervised", &self.session.is_some())
            .field("fds", &self.fds.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Connects to the supervisor if this process was started by one
/// (`HANDOFF_CONTROL_FD`), receives the named fds, and returns the
/// generation ready to warm up. Without a supervisor, returns a standalone
/// generation that binds its own listeners.
pub fn start(options: StartOptions) -> Result<Generation<Warming>> {
    options.timeouts.validate()?;
    let Some(control) = inherited_control()? else {
        return Ok(Generation {
            items: ItemStore::new(Default::default(), None),
            session: None,
            fds: HashMap::new(),
            addresses: Vec::new(),
            state: Warming(()),
        });
    };
    let mut timeouts = options.timeouts;
    if let Some(interval) = std::env::var(ENV_HEARTBEAT_MS)
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
    {
        timeouts.heartbeat_interval = std::time::Duration::from_millis(interval);
    }
    if options.connections
        && let Err(error) = sys::raise_open_files()
    {
        // Fewer connections can come in; the supervisor's budget sees it.
        tracing::warn!(%error, "raising the open-file limit failed");
    }
    let received = crate::items::Received::default();
    let (to_agent, from_agent, port) = crate::incumbent::start_agent(
        control,
        crate::incumbent::AgentOptions {
            build_id: options.build_id,
            versions: options.versions,
            timeouts,
            connections: options.connections,
            schemas: options.schemas,
            items: std::sync::Arc::clone(&received),
        },
    )?;
    match from_agent.recv() {
        Ok(AgentEvent::FdsComplete {
            mode,
            has_incumbent,
            generation,
            fds,
        }) => Ok(Generation {
            items: ItemStore::new(received, Some(to_agent.clone())),
            session: Some(Session {
                to_agent,
                from_agent,
                mode,
                has_incumbent,
                generation,
                port,
            }),
            fds: fds
                .into_iter()
                .map(|(entry, fd)| (entry.name, (entry.kind, fd)))
                .collect(),
            addresses: Vec::new(),
            state: Warming(()),
        }),
        Ok(AgentEvent::End(ending)) => Err(ending_error(ending)),
        Ok(other) => Err(Error::UnexpectedMessage {
            peer: crate::error::Peer::Supervisor,
            state: "await_fds",
            expected: "HelloAck and Fds",
            got: agent_event_name(&other),
        }),
        Err(_) => Err(Error::SessionOver),
    }
}

fn inherited_control() -> Result<Option<OwnedFd>> {
    let Some(raw) = std::env::var_os(ENV_CONTROL_FD) else {
        return Ok(None);
    };
    let supervisor: Option<u32> = std::env::var(ENV_SUPERVISOR_PID)
        .ok()
        .and_then(|pid| pid.parse().ok());
    if supervisor.is_some_and(|pid| pid != sys::parent_pid()) {
        // Inherited by a daemon's own child: not ours.
        return Ok(None);
    }
    let fd: i32 = raw
        .to_str()
        .and_then(|text| text.parse().ok())
        .ok_or(Error::BadEnvironment {
            var: ENV_CONTROL_FD,
            problem: "not a file descriptor number",
        })?;
    sys::adopt_inherited_fd(fd)
        .map(Some)
        .map_err(|source| Error::io("adopting the inherited control fd", source))
}

fn ending_error(ending: Ending) -> Error {
    match ending {
        Ending::Aborted(reason) | Ending::Gave(reason) => Error::Aborted { reason },
        Ending::SupervisorLost => Error::PeerClosed {
            peer: crate::error::Peer::Supervisor,
        },
        Ending::Violation(detail) | Ending::Failed(detail) => Error::Aborted {
            reason: AbortReason::SuccessorProtocol { detail },
        },
        Ending::Retired => Error::SessionOver,
    }
}

fn agent_event_name(event: &AgentEvent) -> &'static str {
    match event {
        AgentEvent::FdsComplete { .. } => "FdsComplete",
        AgentEvent::Began(_) => "Begin",
        AgentEvent::Committed => "Commit",
        AgentEvent::End(_) => "End",
    }
}

impl<S> Generation<S> {
    /// Whether a supervisor started this process.
    pub fn is_supervised(&self) -> bool {
        self.session.is_some()
    }

    /// Whether this process replaces a live incumbent (false on a cold start
    /// and when running alone).
    pub fn is_successor(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.has_incumbent)
    }

    /// The generation number the supervisor assigned (0 when alone).
    pub fn generation(&self) -> u64 {
        self.session.as_ref().map_or(0, |s| s.generation)
    }

    /// The handoff mode, if supervised.
    pub fn mode(&self) -> Option<Mode> {
        self.session.as_ref().map(|s| s.mode)
    }

    /// The connection port, when supervised and started
    /// [`StartOptions::with_connections`]. Take it while warming up: a
    /// successor's predecessor may hand connections over from its commit
    /// on (exclusive mode) or at once (overlap).
    pub fn connections(&self) -> Option<ConnectionPort> {
        self.session.as_ref().and_then(|s| s.port.clone())
    }

    /// The items kept for this generation (by its predecessors, for a
    /// restart too), and where it keeps its own for the next ones
    /// (I21). Without a supervisor nothing is kept.
    pub fn items(&self) -> ItemStore {
        self.items.clone()
    }
}

impl Generation<Warming> {
    fn take_checked(&mut self, name: &str, kind: FdKind) -> Result<Option<OwnedFd>> {
        let Some((got_kind, fd)) = self.fds.remove(name) else {
            return match self.session {
                Some(_) => Err(Error::Listener {
                    name: name.into(),
                    problem: ListenerProblem::Missing,
                }),
                None => Ok(None),
            };
        };
        let info = sys::inspect(fd.as_fd())
            .map_err(|source| Error::io("inspecting an inherited listener", source))?;
        let problem = match info.kind {
            None => Some(ListenerProblem::NotASocket),
            Some(actual) if actual != kind || got_kind != kind => {
                Some(ListenerProblem::WrongKind {
                    expected: format!("{kind:?}"),
                    got: format!("{actual:?}"),
                })
            }
            Some(FdKind::Tcp | FdKind::Unix) if !info.listening => {
                Some(ListenerProblem::NotListening)
            }
            Some(_) => None,
        };
        if let Some(problem) = problem {
            return Err(Error::Listener {
                name: name.into(),
                problem,
            });
        }
        if let Some(local) = info.local {
            self.addresses.push(format!("{name}={local}"));
        }
        Ok(Some(fd))
    }

    fn bind_fallback(&mut self, name: &str, addr: ListenAddr) -> Result<OwnedFd> {
        let fd = sys::bind(&addr).map_err(|source| Error::io("binding a listener", source))?;
        self.addresses.push(format!("{name}={addr}"));
        Ok(fd)
    }

    /// The TCP listener `name`: inherited from the supervisor, or bound to
    /// `fallback` (`HOST:PORT`) when running alone. The socket's blocking mode
    /// is left as it is: it is shared with every process holding it.
    pub fn tcp_listener(&mut self, name: &str, fallback: &str) -> Result<std::net::TcpListener> {
        let fd = match self.take_checked(name, FdKind::Tcp)? {
            Some(fd) => fd,
            None => {
                let addr: ListenAddr = fallback.parse()?;
                if !matches!(addr, ListenAddr::Tcp(_)) {
                    return Err(Error::BadAddress {
                        input: fallback.into(),
                        reason: "expected HOST:PORT for a TCP listener",
                    });
                }
                self.bind_fallback(name, addr)?
            }
        };
        Ok(std::net::TcpListener::from(fd))
    }

    /// The Unix stream listener `name`, inherited or bound at `fallback`.
    pub fn unix_listener(
        &mut self,
        name: &str,
        fallback: &Path,
    ) -> Result<std::os::unix::net::UnixListener> {
        let fd = match self.take_checked(name, FdKind::Unix)? {
            Some(fd) => fd,
            None => self.bind_fallback(name, ListenAddr::Unix(fallback.to_path_buf()))?,
        };
        Ok(std::os::unix::net::UnixListener::from(fd))
    }

    /// The UDP socket `name`, inherited or bound to `fallback` (`HOST:PORT`).
    pub fn udp_socket(&mut self, name: &str, fallback: &str) -> Result<std::net::UdpSocket> {
        let fd = match self.take_checked(name, FdKind::Udp)? {
            Some(fd) => fd,
            None => {
                let addr: ListenAddr = format!("udp:{fallback}").parse()?;
                self.bind_fallback(name, addr)?
            }
        };
        Ok(std::net::UdpSocket::from(fd))
    }

    /// Any other named fd the supervisor passed on (`None` when absent).
    pub fn take_fd(&mut self, name: &str) -> Option<OwnedFd> {
        self.fds.remove(name).map(|(_, fd)| fd)
    }

    /// Warm-up is done. A successor now waits for the supervisor's Begin
    /// (the incumbent drains and seals meanwhile); then, if a data
    /// directory is given, the data-directory lock is taken — never broken
    /// (invariant I1).
    ///
    /// With `None`, the directory is [`ENV_DATA_DIR`] when it is set and the
    /// handoff is exclusive (or the daemon runs alone): what `handoffctl run
    /// --data-dir` assigns. In overlap mode two generations run at once and
    /// cannot share an exclusive lock, so the variable is left alone there.
    pub fn begin(mut self, data_dir: Option<&Path>) -> Result<Generation<Begun>> {
        let assigned = match (data_dir, self.mode()) {
            (None, Some(Mode::Exclusive) | None) => std::env::var_os(ENV_DATA_DIR)
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from),
            _ => None,
        };
        let data_dir = data_dir.or(assigned.as_deref());
        let seal = match &self.session {
            None => None,
            Some(session) => {
                send(session, AgentInput::User(UserCall::Warm))?;
                match session.from_agent.recv() {
                    Ok(AgentEvent::Began(seal)) => seal,
                    Ok(AgentEvent::End(ending)) => return Err(ending_error(ending)),
                    Ok(other) => {
                        return Err(Error::UnexpectedMessage {
                            peer: crate::error::Peer::Supervisor,
                            state: "await_begin",
                            expected: "Begin",
                            got: agent_event_name(&other),
                        });
                    }
                    Err(_) => return Err(Error::SessionOver),
                }
            }
        };
        let mut own_lock = None;
        if let Some(dir) = data_dir {
            let lock = match DataDirLock::try_acquire(dir) {
                Ok(Some(lock)) => lock,
                Ok(None) => {
                    let error = Error::DataDirLocked {
                        path: dir.join(sys::LOCK_FILE_NAME),
                    };
                    self.fail(AbortReason::SuccessorFailed {
                        reason: error.to_string(),
                    });
                    return Err(error);
                }
                Err(source) => {
                    let error = Error::path("locking the data directory", dir, source);
                    self.fail(AbortReason::SuccessorFailed {
                        reason: format!(
                            "{error}: {}",
                            std::error::Error::source(&error)
                                .map(ToString::to_string)
                                .unwrap_or_default()
                        ),
                    });
                    return Err(error);
                }
            };
            match &self.session {
                Some(session) => send(session, AgentInput::Lock(lock, dir.to_path_buf()))?,
                None => own_lock = Some(lock),
            }
        }
        Ok(Generation {
            session: self.session.take(),
            items: self.items.clone(),
            fds: std::mem::take(&mut self.fds),
            addresses: std::mem::take(&mut self.addresses),
            state: Begun {
                seal,
                data_dir: data_dir.map(Path::to_path_buf),
                own_lock,
            },
        })
    }

    fn fail(&self, reason: AbortReason) {
        if let Some(session) = &self.session {
            let _ = session
                .to_agent
                .send(AgentInput::User(UserCall::Fail(reason)));
            wait_ending(session);
        }
    }
}

/// Waits until the agent reports the session's end (it has sent Failed by
/// then), so the daemon's exit cannot overtake the reason.
fn wait_ending(session: &Session) {
    while let Ok(event) = session.from_agent.recv() {
        if let AgentEvent::End(_) = event {
            return;
        }
    }
}

fn send(session: &Session, input: AgentInput) -> Result<()> {
    session.to_agent.send(input).map_err(|_| Error::SessionOver)
}

/// What a successor reports once its state is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyReport {
    /// Fingerprint of the state opened; must equal the sealed one (I3).
    pub fingerprint: Option<Fingerprint>,
    /// Revision count of the state opened.
    pub revisions: u64,
    /// The daemon's own verdict; `Unhealthy` rolls the handoff back.
    pub health: Health,
}

impl ReadyReport {
    /// A healthy daemon with no state.
    pub fn stateless() -> Self {
        ReadyReport {
            fingerprint: None,
            revisions: 0,
            health: Health::Healthy,
        }
    }

    /// A healthy daemon whose state has this fingerprint.
    pub fn stateful(revisions: u64, fingerprint: Fingerprint) -> Self {
        ReadyReport {
            fingerprint: Some(fingerprint),
            revisions,
            health: Health::Healthy,
        }
    }
}

impl Generation<Begun> {
    /// What the incumbent sealed (`None` on a cold start, in overlap mode,
    /// or when the incumbent died before sealing).
    pub fn expected_seal(&self) -> Option<SealInfo> {
        self.state.seal
    }

    /// The locked data directory, if one was given to `begin`.
    pub fn data_dir(&self) -> Option<&Path> {
        self.state.data_dir.as_deref()
    }

    /// The daemon cannot serve (its state would not open, say): tells the
    /// supervisor, which rolls back; the process should then exit.
    pub fn fail(self, reason: impl Into<String>) -> Error {
        let reason = AbortReason::SuccessorFailed {
            reason: reason.into(),
        };
        if let Some(session) = &self.session {
            let _ = session
                .to_agent
                .send(AgentInput::User(UserCall::Fail(reason.clone())));
            wait_ending(session);
        }
        Error::Aborted { reason }
    }

    /// Reports the state opened, hands the hooks to the library, and
    /// returns once the supervisor committed this generation.
    ///
    /// The fingerprint is checked against the sealed one first; a mismatch
    /// fails the handoff (I3). In exclusive mode start serving only after
    /// this returns: no write is then acknowledged by a successor that may
    /// still be rolled back (I6). In overlap mode start accepting *before*
    /// calling this, so that the successor serves before the incumbent
    /// drains.
    ///
    /// Call it from the main thread: a generation is spawned to die with its
    /// supervisor until it commits (`PR_SET_PDEATHSIG`), and that setting
    /// belongs to the main thread, so only the main thread can clear it (I8).
    pub fn ready<D: Drainable>(self, report: ReadyReport, daemon: D) -> Result<Live> {
        if self.session.is_some() && !sys::is_main_thread() {
            let thread = std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .to_owned();
            let error = Error::NotMainThread { thread };
            // The supervisor rolls back rather than commit a generation
            // that would die with it.
            let _ = self.fail(error.to_string());
            return Err(error);
        }
        let Generation {
            session,
            items,
            addresses,
            state,
            ..
        } = self;
        let Some(session) = session else {
            return Ok(Live {
                session: None,
                items,
                _own_lock: state.own_lock,
            });
        };
        if let (Some(seal), Some(actual)) = (state.seal, report.fingerprint)
            && seal.fingerprint != actual
        {
            // The machine sends Failed; wait until it went out, so that the
            // supervisor learns why before it sees this process exit.
            send(&session, AgentInput::User(ready_call(&report, addresses)))?;
            wait_ending(&session);
            return Err(Error::FingerprintMismatch {
                expected: seal.fingerprint,
                actual,
            });
        }
        send(&session, AgentInput::Daemon(Box::new(daemon)))?;
        send(&session, AgentInput::User(ready_call(&report, addresses)))?;
        loop {
            match session.from_agent.recv() {
                Ok(AgentEvent::Committed) => break,
                Ok(AgentEvent::End(ending)) => return Err(ending_error(ending)),
                Ok(_) => continue,
                Err(_) => return Err(Error::SessionOver),
            }
        }
        // Committed: this generation must outlive its supervisor now, and
        // says so (CommitAck) only once it does (I8). On the main thread:
        // checked above.
        sys::clear_die_with_parent()
            .map_err(|source| Error::io("clearing the parent-death signal", source))?;
        send(&session, AgentInput::User(UserCall::Detached))?;
        Ok(Live {
            session: Some(session),
            items,
            _own_lock: None,
        })
    }
}

fn ready_call(report: &ReadyReport, addresses: Vec<String>) -> UserCall {
    UserCall::Ready {
        fingerprint: report.fingerprint,
        revisions: report.revisions,
        health: report.health.clone(),
        addresses,
    }
}

/// A generation that serves. Keep it alive for as long as the process
/// serves; [`Live::wait`] tells when the supervisor retired it.
pub struct Live {
    session: Option<Session>,
    items: ItemStore,
    _own_lock: Option<DataDirLock>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("supervised", &self.session.is_some())
            .finish()
    }
}

impl Live {
    /// Whether a supervisor runs this generation.
    pub fn is_supervised(&self) -> bool {
        self.session.is_some()
    }

    /// The connection port, as [`Generation::connections`].
    pub fn connections(&self) -> Option<ConnectionPort> {
        self.session.as_ref().and_then(|s| s.port.clone())
    }

    /// The item store, as [`Generation::items`].
    pub fn items(&self) -> ItemStore {
        self.items.clone()
    }

    /// Blocks until the session ends: `Retired` after a successor committed
    /// (finish and exit), `Failed` when resuming failed. Without a supervisor
    /// this never returns; such a daemon stops on its own signals.
    pub fn wait(&self) -> Ending {
        loop {
            if let Some(ending) = self.wait_timeout(Duration::MAX) {
                return ending;
            }
        }
    }

    /// Like [`Live::wait`], bounded.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Ending> {
        let Some(session) = &self.session else {
            std::thread::park_timeout(timeout);
            return None;
        };
        let deadline = crossbeam_channel::at(
            std::time::Instant::now()
                .checked_add(timeout)
                .unwrap_or_else(|| {
                    std::time::Instant::now() + Duration::from_secs(u32::MAX.into())
                }),
        );
        loop {
            crossbeam_channel::select! {
                recv(session.from_agent) -> event => match event {
                    Ok(AgentEvent::End(ending)) => return Some(ending),
                    Ok(_) => continue,
                    Err(_) => return Some(Ending::SupervisorLost),
                },
                recv(deadline) -> _ => return None,
            }
        }
    }
}
