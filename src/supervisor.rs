//! The supervisor as a library: holds the listeners, spawns generations, and
//! drives handoffs. `handoffctl` is a thin binary over this module.
//!
//! One thread (the loop) owns every piece of lifecycle state: the live
//! generation, the handoff in flight, the generations being retired, the
//! restart timer. It waits on one channel of events (frames and closes from
//! per-connection reader threads, exits from per-child waiter threads) and
//! one channel of commands (from [`SupervisorHandle`]s), steps the sans-I/O
//! machines, and performs their actions. Children are spawned from the loop
//! thread only, because PR_SET_PDEATHSIG fires when the *thread* that forked
//! a child exits (see `sys`); only the loop reaps, so a pid it signals cannot
//! have been reused (invariant I11).

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use crate::channel::{self, Received};
use crate::error::{Error, Peer, Result};
use crate::fault::{self, FaultRole};
use crate::probe::Probe;
use crate::protocol::{
    ForeignAction, ForeignConfig, ForeignHandoffMachine, ForeignInput, ForeignProbation,
    HandoffAction, HandoffConfig, HandoffInput, HandoffMachine, Phases, ReadySignal, RetireAction,
    RetireInput, RetireMachine, Side, Signal, Verdict,
};
use crate::successor::{ENV_HEARTBEAT_MS, ENV_SUPERVISOR_PID};
use crate::sys::{self, ListenAddr, Sig, SpawnSpec};
use crate::timeouts::{EXIT_AFTER_EOF, RESTART_STABLE, STOP_DRAIN, Timeouts};
use crate::wire::{AbortReason, FdEntry, FdKind, MAX_FDS_PER_FRAME, Message, Mode};

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
    },
}

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

/// An automatic rollback: the new generation failed during its probation
/// and the previous one serves again (I14).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbationRollback {
    /// The handoff whose commit was undone.
    pub handoff_id: u64,
    /// The resumed generation's number.
    pub generation: u64,
    /// Its pid.
    pub pid: u32,
    /// The generation that failed.
    pub failed_generation: u64,
    /// Its pid.
    pub failed_pid: u32,
    /// How it failed: its exit status, or the health probe's last answer.
    pub reason: String,
    /// Whether the resumed generation was seen serving again.
    #[serde(default)]
    pub resume_check: ResumeCheck,
}

/// After an automatic rollback, whether the resumed generation serves
/// again. A foreign daemon acknowledges nothing: it gets its resume signal
/// and may ignore it, stay alive and leave every connection waiting in the
/// backlog. With a health probe configured, the supervisor probes the
/// listeners (retried for `Timeouts::probe`, as for a successor); a
/// resumed generation that never answers is killed, and the restart
/// policy starts a fresh one of the same binary (I14).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum ResumeCheck {
    /// No health probe is configured: the resumption is trusted.
    #[default]
    Unchecked,
    /// The probe is running.
    Probing,
    /// The probe passed: someone accepts and answers again.
    Passed,
    /// The probe never passed (its last answer): the resumed generation
    /// was killed.
    Failed(String),
}

/// When a generation that exited outside a handoff is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit status.
    Always,
    /// Unless it exited with status 0.
    OnFailure,
    /// Never; the supervisor stops when its generation exits.
    Never,
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
    /// from the open file (`/proc/self/fd/N`), and other contents refuse
    /// the start ([`Error::BinaryMismatch`]).
    pub program_sha256: Option<String>,
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
}

/// What to run again if a generation crashes: the program by path (a
/// pinned `/proc/self/fd/N` dies with its pin), its arguments, and the
/// sha256 the file must still have when it was pinned.
#[derive(Debug, Clone)]
struct RestartTarget {
    program: PathBuf,
    args: Vec<OsString>,
    sha256: Option<String>,
}

impl RestartTarget {
    /// The request that runs this target again, and the pin that must live
    /// until the spawn is done (`None` when the target is not pinned).
    fn request(&self) -> Result<(UpgradeRequest, Option<crate::os::PinnedBinary>)> {
        let Some(expected) = &self.sha256 else {
            let request = UpgradeRequest {
                program: Some(self.program.clone()),
                args: Some(self.args.clone()),
                ..UpgradeRequest::default()
            };
            return Ok((request, None));
        };
        let pinned = crate::os::pin_binary(&self.program, expected)?;
        let request = UpgradeRequest {
            program: Some(pinned.exec_path()),
            args: Some(self.args.clone()),
            restart_program: Some(self.program.clone()),
            restart_sha256: Some(expected.clone()),
            ..UpgradeRequest::default()
        };
        Ok((request, Some(pinned)))
    }
}

/// How a handoff ended, with the per-phase timings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// The successor serves.
    Committed {
        /// The handoff's id.
        handoff_id: u64,
        /// The generation that was serving (absent on a cold start).
        old_pid: Option<u32>,
        /// The generation serving now.
        new_pid: u32,
        /// Its number.
        generation: u64,
        /// Where the time went.
        phases: Phases,
        /// Why the supervisor stopped the old generation before the commit,
        /// if it did (its drain overran the drain timeout, or `force` after
        /// it failed to drain or seal).
        #[serde(default)]
        incumbent_stopped: Option<String>,
    },
    /// The incumbent kept (or got back) the work.
    RolledBack {
        /// The handoff's id.
        handoff_id: u64,
        /// Why.
        reason: AbortReason,
        /// The generation serving now, if any.
        old_pid: Option<u32>,
        /// The successor that was killed, if it was spawned.
        failed_pid: Option<u32>,
        /// The serving generation's number (0 when none).
        generation: u64,
        /// Where the time went.
        phases: Phases,
    },
}

impl Outcome {
    /// The handoff id.
    pub fn handoff_id(&self) -> u64 {
        match self {
            Outcome::Committed { handoff_id, .. } | Outcome::RolledBack { handoff_id, .. } => {
                *handoff_id
            }
        }
    }

    /// Whether it committed.
    pub fn is_committed(&self) -> bool {
        matches!(self, Outcome::Committed { .. })
    }
}

/// What the supervisor is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupervisorState {
    /// No generation serves yet (first start or a restart).
    Starting,
    /// A generation serves.
    Serving,
    /// A handoff is in flight.
    HandingOff,
    /// Stopping.
    Stopping,
}

/// A report of the supervisor.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// What it does.
    pub state: SupervisorState,
    /// The serving generation's number (0 when none).
    pub generation: u64,
    /// The serving generation's pid.
    pub child_pid: Option<u32>,
    /// The serving generation's binary, by the path it was started from
    /// (not the `/proc/self/fd/N` a pinned binary is executed through).
    pub program: PathBuf,
    /// The mode.
    pub mode: Mode,
    /// `(name, address)` of each listener.
    pub listeners: Vec<(String, String)>,
    /// Time since the supervisor started.
    pub uptime: Duration,
    /// The last handoff (cold starts included).
    pub last_handoff: Option<Outcome>,
    /// Pids of old generations still being retired.
    pub retiring: Vec<u32>,
    /// The last automatic rollback during a probation, if any since the
    /// supervisor started.
    pub last_probation_rollback: Option<ProbationRollback>,
}

/// What the supervisor announces to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// A handoff (or a cold start) began.
    HandoffStarted {
        /// Its id.
        handoff_id: u64,
        /// Whether an incumbent takes part (false on a cold start).
        upgrade: bool,
        /// The successor's generation number.
        generation: u64,
        /// The successor's pid.
        successor_pid: u32,
        /// The incumbent's pid (absent on a cold start).
        incumbent_pid: Option<u32>,
    },
    /// A handoff ended.
    HandoffFinished(Box<Outcome>),
    /// A generation exited outside a handoff.
    GenerationExited {
        /// Its number.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: String,
    },
    /// A handoff entered a phase (the machine's state name).
    Phase {
        /// The handoff.
        handoff_id: u64,
        /// The phase entered.
        phase: &'static str,
    },
    /// An old generation exited after a commit.
    GenerationRetired {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: String,
    },
    /// The new generation failed during the probation after its commit
    /// and the previous one was resumed (an automatic rollback, I14).
    RolledBackInProbation(ProbationRollback),
    /// The supervisor is stopping.
    Stopping,
}

enum Command {
    Upgrade(UpgradeRequest, Sender<Result<Outcome>>),
    Status(Sender<Status>),
    Stop(Sender<()>),
    Subscribe(Sender<SupervisorEvent>),
}

enum Event {
    Frame {
        generation: u64,
        frame: crate::wire::Frame,
    },
    Closed {
        generation: u64,
        error: Option<String>,
    },
    Exited {
        generation: u64,
    },
}

/// The verdict of a health probe, and what it was for.
struct Probed {
    purpose: ProbeFor,
    result: std::result::Result<(), String>,
}

/// Why a probe ran.
#[derive(Debug, Clone, Copy)]
enum ProbeFor {
    /// The successor of handoff N, before its commit (I12).
    Handoff(u64),
    /// Generation N during its probation: an attempt failed and the
    /// failure is being confirmed (the probation is held open meanwhile).
    ProbationSuspect(u64),
    /// Generation N during its probation: a suspected failure was not
    /// confirmed (the hold ends).
    ProbationCleared(u64),
    /// Generation N during its probation: a confirmed failure.
    Probation(u64),
    /// Generation N, resumed after an automatic rollback.
    Resumed(u64),
}

/// A running supervisor; dropping it does not stop it (use
/// [`SupervisorHandle::stop`] and [`Supervisor::join`]).
#[derive(Debug)]
pub struct Supervisor {
    handle: SupervisorHandle,
    thread: std::thread::JoinHandle<Result<()>>,
}

/// A cloneable handle to a running supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorHandle {
    commands: Sender<Command>,
}

impl Supervisor {
    /// Starts the loop thread and the first generation. Fails if the first
    /// generation cannot even be spawned.
    pub fn start(config: SupervisorConfig) -> Result<Supervisor> {
        Supervisor::start_with_events(config).map(|(supervisor, _)| supervisor)
    }

    /// Like [`Supervisor::start`], with an event stream subscribed before
    /// the first generation is spawned, so that it sees every event.
    pub fn start_with_events(config: SupervisorConfig) -> Result<(Supervisor, EventStream)> {
        config.timeouts.validate()?;
        let (subscriber, events) = crossbeam_channel::unbounded();
        let (commands_tx, commands_rx) = crossbeam_channel::unbounded();
        let (started_tx, started_rx) = crossbeam_channel::bounded::<Result<()>>(1);
        let thread = std::thread::Builder::new()
            .name("handoff-supervisor".into())
            .spawn(move || {
                let (events_tx, events_rx) = crossbeam_channel::unbounded();
                let mut state = Loop::new(config, events_tx, vec![subscriber]);
                let first = state.start_handoff(UpgradeRequest::default(), None);
                let failed = first.is_err();
                let _ = started_tx.send(first);
                if failed {
                    return Ok(());
                }
                state.run(&commands_rx, &events_rx)
            })
            .map_err(|source| Error::io("spawn the supervisor thread", source))?;
        match started_rx.recv() {
            Ok(Ok(())) => Ok((
                Supervisor {
                    handle: SupervisorHandle {
                        commands: commands_tx,
                    },
                    thread,
                },
                EventStream { events },
            )),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => Err(Error::SessionOver),
        }
    }

    /// A handle for commands.
    pub fn handle(&self) -> SupervisorHandle {
        self.handle.clone()
    }

    /// Waits for the loop to end (after a stop, or when the generation
    /// exited under `RestartPolicy::Never`).
    pub fn join(self) -> Result<()> {
        self.thread.join().unwrap_or(Err(Error::SessionOver))
    }
}

impl SupervisorHandle {
    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.commands
            .send(make(tx))
            .map_err(|_| Error::SessionOver)?;
        rx.recv().map_err(|_| Error::SessionOver)
    }

    /// Runs one handoff to its end. `Err(Error::Busy)` while another is in
    /// flight.
    pub fn upgrade(&self, request: UpgradeRequest) -> Result<Outcome> {
        self.ask(|tx| Command::Upgrade(request, tx))?
    }

    /// Reports the supervisor.
    pub fn status(&self) -> Result<Status> {
        self.ask(Command::Status)
    }

    /// Stops gracefully: cancels a handoff in flight, sends SIGTERM to every
    /// generation and waits for them (SIGKILL after the stop drain). Returns
    /// when everything exited.
    pub fn stop(&self) -> Result<()> {
        self.ask(Command::Stop)
    }

    /// Subscribes to events from now on.
    pub fn subscribe(&self) -> Result<EventStream> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.commands
            .send(Command::Subscribe(tx))
            .map_err(|_| Error::SessionOver)?;
        Ok(EventStream { events: rx })
    }
}

/// A stream of [`SupervisorEvent`]s.
#[derive(Debug)]
pub struct EventStream {
    events: Receiver<SupervisorEvent>,
}

impl EventStream {
    /// The next event, waiting at most `timeout`; `None` on timeout or when
    /// the supervisor is gone.
    pub fn next_timeout(&self, timeout: Duration) -> Option<SupervisorEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// The next event; `None` when the supervisor is gone.
    pub fn next(&self) -> Option<SupervisorEvent> {
        self.events.recv().ok()
    }
}

struct Child {
    generation: u64,
    pid: u32,
    process: std::process::Child,
    /// The control connection (`None` for a foreign daemon).
    sender: Option<channel::Sender>,
    /// A foreign daemon's notification socket.
    notify: Option<sys::NotifySocket>,
    /// The handoff id messages to this child carry now.
    handoff_id: u64,
    /// What to run again if this generation crashes (its path is also the
    /// binary that status reports).
    restart: RestartTarget,
    started: Instant,
    reaped: Option<String>,
}

impl Child {
    fn send(&self, message: Message) -> Result<()> {
        match &self.sender {
            Some(sender) => sender.send(self.handoff_id, message, &[]),
            // A foreign daemon is spoken to with signals only.
            None => Ok(()),
        }
    }

    fn signal(&self, signal: Sig) {
        if self.reaped.is_none() {
            // The loop is the only reaper: the pid (and the group it leads)
            // cannot be reused (I11). SIGKILL goes to the whole group, so
            // nothing the generation forked outlives it; polite signals go
            // to the process, which owns its children.
            let sent = match signal {
                Sig::Kill => {
                    sys::signal_group(self.pid, signal).or_else(|_| sys::signal(self.pid, signal))
                }
                _ => sys::signal(self.pid, signal),
            };
            if let Err(error) = sent {
                tracing::debug!(pid = self.pid, error = %error, "signal failed");
            }
        }
    }

    /// Reaps after the waiter reported the exit. First SIGKILLs what is
    /// left of the generation's process group (I16): the exited leader is
    /// still a zombie, so the group it leads cannot have been reused (I11).
    fn reap(&mut self) -> String {
        if let Some(status) = &self.reaped {
            return status.clone();
        }
        if sys::signal_group(self.pid, Sig::Kill).is_ok() {
            tracing::debug!(
                generation = self.generation,
                pid = self.pid,
                "SIGKILL to its process group before the reap"
            );
        }
        let status = match self.process.wait() {
            Ok(status) => describe_status(status),
            Err(error) => format!("wait failed: {error}"),
        };
        // The control socket is left alone: the dead peer's end is closed,
        // so the reader reads every frame the child sent before it died,
        // then EOF. It is shut down when the Child is dropped.
        if let Some(notify) = &self.notify {
            notify.shutdown();
        }
        self.reaped = Some(status.clone());
        status
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Wakes the reader thread even if some other process still holds
        // the generation's end of the socket.
        if let Some(sender) = &self.sender {
            sender.shutdown();
        }
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "unknown status".into(),
    }
}

fn sig(signal: Signal) -> Sig {
    match signal {
        Signal::Term => Sig::Term,
        Signal::Kill => Sig::Kill,
    }
}

/// A foreign daemon's quiesce and resume signals, if configured.
fn quiesce_signals(protocol: DaemonProtocol) -> Option<QuiesceSignals> {
    match protocol {
        DaemonProtocol::Systemd { quiesce, .. } => quiesce,
        DaemonProtocol::Library => None,
    }
}

/// The machine of the handoff in flight.
enum Machine {
    Library(HandoffMachine),
    Foreign(ForeignHandoffMachine),
}

impl Machine {
    fn handoff_id(&self) -> u64 {
        match self {
            Machine::Library(machine) => machine.handoff_id(),
            Machine::Foreign(machine) => machine.handoff_id(),
        }
    }

    fn state_name(&self) -> &'static str {
        match self {
            Machine::Library(machine) => machine.state_name(),
            Machine::Foreign(machine) => machine.state_name(),
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        match self {
            Machine::Library(machine) => machine.next_wakeup(),
            Machine::Foreign(machine) => machine.next_wakeup(),
        }
    }
}

struct InFlight {
    machine: Machine,
    successor: Child,
    reply: Option<Sender<Result<Outcome>>>,
    old_pid: Option<u32>,
    spawn_time: Duration,
    /// When the handoff was asked for: its total counts from here.
    requested: Instant,
    /// The successor's exit, held back until its connection's EOF so that
    /// every frame it sent before dying is stepped first (its `Failed`
    /// reason, say); released at the latest at the instant given.
    pending_exit: Option<(String, Instant)>,
    /// Its connection reported EOF (or an error).
    successor_closed: bool,
}

struct Retiring {
    machine: RetireMachine,
    child: Child,
    /// Set when it is being resumed: the generation that failed in its
    /// probation, and how.
    resumed_for: Option<Failed>,
}

/// A generation that failed during probation.
struct Failed {
    generation: u64,
    pid: u32,
    reason: String,
}

struct Stopping {
    replies: Vec<Sender<()>>,
    kill_at: Instant,
    killed: bool,
}

struct Loop {
    config: SupervisorConfig,
    events_tx: Sender<Event>,
    started: Instant,
    live: Option<Child>,
    in_flight: Option<InFlight>,
    retiring: Vec<Retiring>,
    stopping: Option<Stopping>,
    restart_at: Option<Instant>,
    failures: u32,
    next_generation: u64,
    next_handoff_id: u64,
    next_heartbeat: Instant,
    last_handoff: Option<Outcome>,
    last_probation_rollback: Option<ProbationRollback>,
    /// The live generation that the probation probe condemned, and why
    /// (its SIGKILL exit then reports this reason).
    probation_probe_failure: Option<(u64, String)>,
    /// The live generation that exited while a handoff was in flight and
    /// an older generation was in probation: the handoff's verdict decides
    /// (its successor if it commits, else the one in probation resumes).
    failed_in_flight: Option<Failed>,
    /// What the live generation was started with, for restarts.
    last_committed: Option<RestartTarget>,
    subscribers: Vec<Sender<SupervisorEvent>>,
    finished: bool,
    probes_tx: Sender<Probed>,
    probes_rx: Receiver<Probed>,
    /// Notifications from foreign generations: (generation, datagram).
    notes_tx: Sender<(u64, sys::Notification)>,
    notes_rx: Receiver<(u64, sys::Notification)>,
    /// Where foreign generations' notification sockets live (made on the
    /// first foreign spawn).
    notify_dir: Option<sys::PrivateDir>,
}

impl Loop {
    fn new(
        config: SupervisorConfig,
        events_tx: Sender<Event>,
        subscribers: Vec<Sender<SupervisorEvent>>,
    ) -> Self {
        let now = Instant::now();
        let (probes_tx, probes_rx) = crossbeam_channel::unbounded();
        let (notes_tx, notes_rx) = crossbeam_channel::unbounded();
        Loop {
            probes_tx,
            probes_rx,
            notes_tx,
            notes_rx,
            notify_dir: None,
            next_heartbeat: now + config.timeouts.heartbeat_interval,
            config,
            events_tx,
            started: now,
            live: None,
            in_flight: None,
            retiring: Vec::new(),
            stopping: None,
            restart_at: None,
            failures: 0,
            next_generation: 1,
            next_handoff_id: 1,
            last_handoff: None,
            last_probation_rollback: None,
            probation_probe_failure: None,
            failed_in_flight: None,
            last_committed: None,
            subscribers,
            finished: false,
        }
    }

    fn schedule_restart(&mut self, now: Instant) {
        let delay = self.config.timeouts.restart_backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        tracing::info!(
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "restarting the generation"
        );
        self.restart_at = Some(now + delay);
    }

    fn announce(&mut self, event: SupervisorEvent) {
        self.subscribers
            .retain(|subscriber| subscriber.send(event.clone()).is_ok());
    }

    fn run(&mut self, commands: &Receiver<Command>, events: &Receiver<Event>) -> Result<()> {
        let probes = self.probes_rx.clone();
        let notes = self.notes_rx.clone();
        while !self.finished {
            let wake = self.next_wakeup();
            let timer = crossbeam_channel::at(wake.max(Instant::now()));
            select! {
                recv(commands) -> command => match command {
                    Ok(command) => self.on_command(command),
                    // Every handle dropped: keep supervising until stopped by
                    // a signal in the binary (it keeps a handle) — or here,
                    // nobody can reach us any more, so stop.
                    Err(_) => self.begin_stop(None),
                },
                recv(events) -> event => {
                    if let Ok(event) = event {
                        self.on_event(event);
                    }
                },
                recv(probes) -> verdict => {
                    if let Ok(verdict) = verdict {
                        self.on_probed(verdict);
                    }
                },
                recv(notes) -> note => {
                    if let Ok((generation, note)) = note {
                        self.on_note(generation, note);
                    }
                },
                recv(timer) -> _ => {},
            }
            self.on_time(Instant::now());
        }
        Ok(())
    }

    fn next_wakeup(&self) -> Instant {
        let mut next = self.next_heartbeat;
        if let Some(in_flight) = &self.in_flight
            && let Some(at) = in_flight.machine.next_wakeup()
        {
            next = next.min(at);
        }
        if let Some(InFlight {
            pending_exit: Some((_, at)),
            ..
        }) = &self.in_flight
        {
            next = next.min(*at);
        }
        for retiring in &self.retiring {
            if let Some(at) = retiring.machine.next_wakeup() {
                next = next.min(at);
            }
        }
        if let Some(at) = self.restart_at {
            next = next.min(at);
        }
        if let Some(stopping) = &self.stopping
            && !stopping.killed
        {
            next = next.min(stopping.kill_at);
        }
        next
    }

    fn spawn(
        &mut self,
        program: PathBuf,
        args: Vec<OsString>,
        extra_env: Vec<(OsString, OsString)>,
        restart: RestartTarget,
    ) -> Result<(Child, Duration)> {
        let begun = Instant::now();
        let (ours, theirs) = sys::control_pair()
            .map_err(|source| Error::io("socketpair for a generation", source))?;
        let mut env = self.config.env.clone();
        env.extend(extra_env);
        env.push((
            ENV_SUPERVISOR_PID.into(),
            std::process::id().to_string().into(),
        ));
        env.push((
            ENV_HEARTBEAT_MS.into(),
            self.config
                .timeouts
                .heartbeat_interval
                .as_millis()
                .to_string()
                .into(),
        ));
        let process = sys::spawn(SpawnSpec {
            program: program.clone(),
            args,
            env,
            control: Some(theirs),
            die_with_parent: true,
        })
        .map_err(|source| Error::Spawn {
            binary: program.clone(),
            source,
        })?;
        let pid = process.id();
        let generation = self.next_generation;
        self.next_generation += 1;
        let (sender, receiver) =
            channel::split(ours, Peer::Successor, self.config.timeouts.socket_write)?;
        let events = self.events_tx.clone();
        channel::spawn_reader(
            format!("handoff-gen{generation}"),
            receiver,
            move |received| {
                let event = match received {
                    Received::Frame(frame) => Event::Frame { generation, frame },
                    Received::Closed(error) => Event::Closed {
                        generation,
                        error: error.map(|e| e.to_string()),
                    },
                };
                events.send(event).is_ok()
            },
        )?;
        self.spawn_waiter(generation, pid)?;
        tracing::info!(generation, pid, program = %program.display(), "generation spawned");
        Ok((
            Child {
                generation,
                pid,
                process,
                sender: Some(sender),
                notify: None,
                handoff_id: 0,
                restart,
                started: Instant::now(),
                reaped: None,
            },
            begun.elapsed(),
        ))
    }

    /// A thread that reports the child's exit without reaping it (I11).
    fn spawn_waiter(&self, generation: u64, pid: u32) -> Result<()> {
        let events = self.events_tx.clone();
        std::thread::Builder::new()
            .name(format!("handoff-wait{generation}"))
            .spawn(move || {
                if let Err(error) = sys::wait_exit_nowait(pid) {
                    tracing::error!(pid, error = %error, "waiting for a generation failed");
                }
                let _ = events.send(Event::Exited { generation });
            })
            .map(drop)
            .map_err(|source| Error::io("spawn a waiter thread", source))
    }

    fn start_handoff(
        &mut self,
        request: UpgradeRequest,
        reply: Option<Sender<Result<Outcome>>>,
    ) -> Result<()> {
        let requested = Instant::now();
        let mut timeouts = self.config.timeouts;
        if let Some(grace) = request.drain_grace {
            timeouts.drain_grace = grace;
        }
        if let Some(deadline) = request.deadline {
            timeouts.handoff_deadline = deadline;
            if request.drain_grace.is_none() {
                // An unset drain grace follows a shorter deadline down.
                timeouts.drain_grace = timeouts.drain_grace.min(deadline);
            }
        }
        timeouts.validate()?;
        // The configured program runs pinned when the config pins it; the
        // pin lives until this function returns, after the fork (the child
        // has its own copy of the fd until its exec).
        let (program, restart_program, restart_sha256, _pin) =
            match (request.program, &self.config.program_sha256) {
                (Some(program), _) => (
                    program,
                    request.restart_program,
                    request.restart_sha256,
                    None,
                ),
                (None, Some(expected)) => {
                    let pin = crate::os::pin_binary(&self.config.program, expected)?;
                    (
                        pin.exec_path(),
                        Some(self.config.program.clone()),
                        Some(expected.clone()),
                        Some(pin),
                    )
                }
                (None, None) => (
                    self.config.program.clone(),
                    request.restart_program,
                    request.restart_sha256,
                    None,
                ),
            };
        let args = request.args.unwrap_or_else(|| self.config.args.clone());
        let restart = RestartTarget {
            program: restart_program.unwrap_or_else(|| program.clone()),
            args: args.clone(),
            sha256: restart_sha256,
        };
        let (successor, spawn_time) = match self.config.protocol {
            DaemonProtocol::Library => self.spawn(program, args, request.env, restart)?,
            DaemonProtocol::Systemd { .. } => {
                self.spawn_foreign(program, args, request.env, restart)?
            }
        };
        let handoff_id = self.next_handoff_id;
        self.next_handoff_id += 1;
        let has_incumbent = self.live.as_ref().is_some_and(|live| live.reaped.is_none());
        let config = HandoffConfig {
            fd_count: u32::try_from(self.config.listeners.len()).unwrap_or(u32::MAX),
            timeouts,
            probe: self.config.probe.is_some(),
            force: request.force,
            ..HandoffConfig::new(
                handoff_id,
                successor.generation,
                self.config.mode,
                has_incumbent,
            )
        };
        tracing::info!(
            handoff_id,
            generation = successor.generation,
            successor_pid = successor.pid,
            incumbent_pid = ?self.live.as_ref().map(|l| l.pid),
            "handoff started"
        );
        self.announce(SupervisorEvent::HandoffStarted {
            handoff_id,
            upgrade: has_incumbent,
            generation: successor.generation,
            successor_pid: successor.pid,
            incumbent_pid: self.live.as_ref().map(|live| live.pid),
        });
        let now = Instant::now();
        let (machine, foreign_actions) = match self.config.protocol {
            DaemonProtocol::Library => (Machine::Library(HandoffMachine::new(config, now)), None),
            DaemonProtocol::Systemd { ready, .. } => {
                let (machine, actions) = ForeignHandoffMachine::start(
                    ForeignConfig {
                        handoff_id,
                        successor_pid: successor.pid,
                        ready,
                        probe: self.config.probe.is_some(),
                        timeouts,
                    },
                    now,
                );
                (Machine::Foreign(machine), Some(actions))
            }
        };
        if fault::reached(
            FaultRole::Supervisor,
            machine.state_name(),
            successor.generation,
        )
        .is_err()
        {
            tracing::warn!("injected error at the handoff's start: continuing");
        }
        self.in_flight = Some(InFlight {
            machine,
            successor,
            reply,
            old_pid: self.live.as_ref().map(|live| live.pid),
            spawn_time,
            requested,
            pending_exit: None,
            successor_closed: false,
        });
        if let Some(actions) = foreign_actions {
            self.perform_foreign(actions, now);
        }
        Ok(())
    }

    /// Spawns a foreign generation (`DaemonProtocol::Systemd`): socket
    /// activation, a notification socket of its own, a reader thread for it
    /// and a waiter thread.
    fn spawn_foreign(
        &mut self,
        program: PathBuf,
        args: Vec<OsString>,
        extra_env: Vec<(OsString, OsString)>,
        restart: RestartTarget,
    ) -> Result<(Child, Duration)> {
        let begun = Instant::now();
        let generation = self.next_generation;
        if self.notify_dir.is_none() {
            self.notify_dir = Some(
                sys::PrivateDir::create()
                    .map_err(|source| Error::io("creating the notification directory", source))?,
            );
        }
        let dir = self
            .notify_dir
            .as_ref()
            .map(|d| d.path().to_owned())
            .unwrap_or_default();
        let notify = sys::NotifySocket::bind(&dir.join(format!("gen{generation}.sock")))
            .map_err(|source| Error::io("binding a notification socket", source))?;
        let mut env = self.config.env.clone();
        env.extend(extra_env);
        let process = sys::spawn_foreign(sys::ForeignSpec {
            program: program.clone(),
            args,
            env,
            listeners: self
                .config
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.fd.as_fd()))
                .collect(),
            notify_socket: Some(notify.path().to_owned()),
            die_with_parent: true,
        })
        .map_err(|source| Error::Spawn {
            binary: program.clone(),
            source,
        })?;
        let pid = process.id();
        self.next_generation += 1;
        let reader = notify
            .try_clone()
            .map_err(|source| Error::io("cloning a notification socket", source))?;
        let notes = self.notes_tx.clone();
        std::thread::Builder::new()
            .name(format!("handoff-notify{generation}"))
            .spawn(move || {
                // Ends when the socket is shut down at the reap.
                while let Ok(Some(note)) = sys::receive_notification(&reader) {
                    if notes.send((generation, note)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|source| Error::io("spawn a notification reader", source))?;
        self.spawn_waiter(generation, pid)?;
        tracing::info!(generation, pid, program = %program.display(), "foreign generation spawned");
        Ok((
            Child {
                generation,
                pid,
                process,
                sender: None,
                notify: Some(notify),
                handoff_id: 0,
                restart,
                started: Instant::now(),
                reaped: None,
            },
            begun.elapsed(),
        ))
    }

    /// A notification from a foreign generation: only the successor's
    /// matter, and only while its handoff runs.
    fn on_note(&mut self, generation: u64, note: sys::Notification) {
        let Some(in_flight) = &self.in_flight else {
            return;
        };
        if in_flight.successor.generation != generation {
            return;
        }
        if note.pid != Some(in_flight.successor.pid) {
            tracing::warn!(
                generation,
                sender = ?note.pid,
                expected = in_flight.successor.pid,
                "notification from another process ignored"
            );
        }
        self.step_foreign(
            ForeignInput::Notified {
                pid: note.pid,
                text: note.text,
            },
            Instant::now(),
        );
    }

    fn step_foreign(&mut self, input: ForeignInput, now: Instant) {
        let Some(InFlight {
            machine: Machine::Foreign(machine),
            successor,
            ..
        }) = &mut self.in_flight
        else {
            return;
        };
        let before = machine.state_name();
        let actions = machine.step(input, now);
        let after = machine.state_name();
        let handoff_id = machine.handoff_id();
        let generation = successor.generation;
        self.perform_foreign(actions, now);
        if before != after {
            tracing::debug!(handoff_id, from = before, to = after, "handoff phase");
            self.announce(SupervisorEvent::Phase {
                handoff_id,
                phase: after,
            });
            if fault::reached(FaultRole::Supervisor, after, generation).is_err() {
                self.step_foreign(ForeignInput::Cancel, now);
            }
        }
    }

    fn perform_foreign(&mut self, actions: Vec<ForeignAction>, now: Instant) {
        for action in actions {
            match action {
                ForeignAction::StartProbe { until } => self.start_probe(until),
                ForeignAction::Signal(signal) => {
                    let signal = self.sig(signal);
                    if let Some(in_flight) = &self.in_flight {
                        in_flight.successor.signal(signal);
                    }
                }
                ForeignAction::Finish(verdict) => self.finish(verdict, now),
            }
        }
    }

    /// The signal a machine's `Signal` means here: `Term` is the configured
    /// stop signal of a foreign daemon.
    fn sig(&self, signal: Signal) -> Sig {
        match (signal, self.config.protocol) {
            (Signal::Term, DaemonProtocol::Systemd { stop_signal, .. }) => stop_signal,
            (signal, _) => sig(signal),
        }
    }

    /// Feeds `Cancel` to whichever machine runs the handoff in flight.
    fn cancel_handoff(&mut self, now: Instant) {
        match &self.in_flight {
            Some(InFlight {
                machine: Machine::Foreign(_),
                ..
            }) => self.step_foreign(ForeignInput::Cancel, now),
            Some(_) => self.step_handoff(HandoffInput::Cancel, now),
            None => {}
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Upgrade(request, reply) => {
                if self.in_flight.is_some() {
                    let _ = reply.send(Err(Error::Busy));
                } else if self.stopping.is_some() {
                    let _ = reply.send(Err(Error::SessionOver));
                } else {
                    self.restart_at = None;
                    if let Err(error) = self.start_handoff(request, None) {
                        let _ = reply.send(Err(error));
                    } else if let Some(in_flight) = &mut self.in_flight {
                        in_flight.reply = Some(reply);
                    }
                }
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Stop(reply) => self.begin_stop(Some(reply)),
            Command::Subscribe(subscriber) => self.subscribers.push(subscriber),
        }
    }

    fn status(&self) -> Status {
        let state = if self.stopping.is_some() {
            SupervisorState::Stopping
        } else if self.in_flight.is_some() && self.live.is_some() {
            SupervisorState::HandingOff
        } else if self.live.is_some() {
            SupervisorState::Serving
        } else {
            SupervisorState::Starting
        };
        Status {
            supervisor_pid: std::process::id(),
            state,
            generation: self.live.as_ref().map_or(0, |live| live.generation),
            child_pid: self.live.as_ref().map(|live| live.pid),
            program: self
                .live
                .as_ref()
                // By path: a pinned generation runs `/proc/self/fd/N`, which
                // names nothing outside the supervisor.
                .map_or_else(
                    || self.config.program.clone(),
                    |live| live.restart.program.clone(),
                ),
            mode: self.config.mode,
            listeners: self
                .config
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.address.clone()))
                .collect(),
            uptime: self.started.elapsed(),
            last_handoff: self.last_handoff.clone(),
            retiring: self.retiring.iter().map(|r| r.child.pid).collect(),
            last_probation_rollback: self.last_probation_rollback.clone(),
        }
    }

    fn on_event(&mut self, event: Event) {
        let now = Instant::now();
        let generation = match &event {
            Event::Frame { generation, .. }
            | Event::Closed { generation, .. }
            | Event::Exited { generation } => *generation,
        };
        // Reap first so that every later decision sees the exit.
        let status = if let Event::Exited { .. } = event {
            self.child_mut(generation).map(Child::reap)
        } else {
            None
        };
        let successor_generation = self.in_flight.as_ref().map(|f| f.successor.generation);
        let live_generation = self.live.as_ref().map(|l| l.generation);
        let foreign = matches!(
            self.in_flight,
            Some(InFlight {
                machine: Machine::Foreign(_),
                ..
            })
        );
        if foreign && Some(generation) == successor_generation {
            // A foreign successor has no control connection: only its exit.
            if let Event::Exited { .. } = event {
                let status = status.unwrap_or_default();
                self.step_foreign(ForeignInput::Exited { status }, now);
            }
        } else if foreign && Some(generation) == live_generation {
            // The incumbent takes no part in a foreign handoff (I13).
            self.on_live_event(event, status.unwrap_or_default(), now);
        } else if Some(generation) == successor_generation {
            let input = match event {
                Event::Frame { frame, .. } => HandoffInput::Frame {
                    from: Side::Successor,
                    handoff_id: frame.envelope.handoff_id,
                    message: frame.envelope.message,
                },
                Event::Closed { error, .. } => {
                    if let Some(error) = error {
                        tracing::warn!(generation, %error, "successor connection failed");
                    }
                    HandoffInput::Closed {
                        side: Side::Successor,
                    }
                }
                Event::Exited { .. } => {
                    let status = status.unwrap_or_default();
                    if let Some(in_flight) = &mut self.in_flight
                        && !in_flight.successor_closed
                    {
                        // Its last frames may still be on their way.
                        in_flight.pending_exit = Some((status, now + EXIT_AFTER_EOF));
                        return;
                    }
                    HandoffInput::Exited {
                        side: Side::Successor,
                        status,
                    }
                }
            };
            let closed = matches!(input, HandoffInput::Closed { .. });
            self.step_handoff(input, now);
            if closed {
                self.release_pending_exit(now);
            }
        } else if Some(generation) == live_generation {
            if self.in_flight.is_some() {
                let input = match event {
                    Event::Frame { frame, .. } => HandoffInput::Frame {
                        from: Side::Incumbent,
                        handoff_id: frame.envelope.handoff_id,
                        message: frame.envelope.message,
                    },
                    Event::Closed { .. } => HandoffInput::Closed {
                        side: Side::Incumbent,
                    },
                    Event::Exited { .. } => HandoffInput::Exited {
                        side: Side::Incumbent,
                        status: status.unwrap_or_default(),
                    },
                };
                self.step_handoff(input, now);
            } else {
                self.on_live_event(event, status.unwrap_or_default(), now);
            }
        } else if let Some(index) = self
            .retiring
            .iter()
            .position(|r| r.child.generation == generation)
        {
            let input = match event {
                Event::Frame { frame, .. } => RetireInput::Frame(frame.envelope.message),
                Event::Closed { .. } => RetireInput::Closed,
                Event::Exited { .. } => RetireInput::Exited,
            };
            self.step_retire(index, input, now);
        }
    }

    fn on_probed(&mut self, Probed { purpose, result }: Probed) {
        let handoff_id = match purpose {
            ProbeFor::Handoff(handoff_id) => handoff_id,
            ProbeFor::Probation(generation) => {
                self.on_probation_probed(generation, result);
                return;
            }
            ProbeFor::ProbationSuspect(generation) => {
                self.hold_probation(generation, result);
                return;
            }
            ProbeFor::ProbationCleared(generation) => {
                tracing::info!(generation, "the probation probe passes again");
                return;
            }
            ProbeFor::Resumed(generation) => {
                self.on_resume_probed(generation, result);
                return;
            }
        };
        // A verdict for a handoff that already ended is stale.
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.machine.handoff_id() == handoff_id)
        {
            self.probe_verdict(result, Instant::now());
        }
    }

    /// An attempt of the probation probe of generation N failed and is
    /// being confirmed: the previous generation's probation is held open
    /// until the verdict (bounded), so that a failure that starts late in
    /// the probation is not lost to its end (I14).
    fn hold_probation(&mut self, generation: u64, result: std::result::Result<(), String>) {
        let Some(live) = &self.live else { return };
        if live.generation != generation || self.in_flight.is_some() {
            return;
        }
        let detail = result.err().unwrap_or_default();
        let now = Instant::now();
        // The confirmation ends by then (each attempt is bounded too).
        let until = now + self.config.timeouts.probe + crate::timeouts::PROBE_ATTEMPT;
        tracing::info!(
            generation,
            %detail,
            "a probation probe attempt failed: the probation is held open while it is confirmed"
        );
        self.hold_probations(until, now);
    }

    /// Feeds `HoldProbation(until)` to every old generation in probation.
    fn hold_probations(&mut self, until: Instant, now: Instant) {
        for index in (0..self.retiring.len()).rev() {
            if self.retiring[index].machine.in_probation() {
                self.step_retire(index, RetireInput::HoldProbation(until), now);
            }
        }
    }

    /// A failure of the probe that watches generation N in its probation.
    fn on_probation_probed(&mut self, generation: u64, result: std::result::Result<(), String>) {
        let now = Instant::now();
        if let (Err(detail), Some(live)) = (&result, &self.live)
            && live.generation == generation
            && self.in_flight.is_none()
            && self.retiring.iter().any(|r| r.machine.in_probation())
        {
            // I14: the exit of the live generation resumes the previous
            // one. SIGKILL, not the stop signal: an unhealthy process may
            // never exit on its own.
            tracing::warn!(
                generation,
                pid = live.pid,
                %detail,
                "the new generation failed its health probe during probation"
            );
            live.signal(Sig::Kill);
            self.probation_probe_failure =
                Some((generation, format!("health probe failed: {detail}")));
            // Held until the killed generation's exit resumes the previous
            // one (its exit is reported within milliseconds of SIGKILL).
            self.hold_probations(now + self.config.timeouts.kill_grace, now);
        } else if let Err(detail) = result {
            tracing::warn!(
                generation,
                %detail,
                "a probation probe failure came when nothing could be rolled back (the probation was over, or a handoff runs): ignored"
            );
        }
    }

    /// The check of a generation resumed by an automatic rollback (I14):
    /// recorded in `last_probation_rollback`; a failure kills it if it is
    /// still the live generation and no handoff runs (a handoff's own
    /// probe judges its successor), and its exit goes the way of any crash
    /// (the restart policy).
    fn on_resume_probed(&mut self, generation: u64, result: std::result::Result<(), String>) {
        let check = match &result {
            Ok(()) => ResumeCheck::Passed,
            Err(detail) => ResumeCheck::Failed(detail.clone()),
        };
        if let Some(rollback) = &mut self.last_probation_rollback
            && rollback.generation == generation
        {
            rollback.resume_check = check;
        }
        match (result, &self.live) {
            (Ok(()), _) => {
                tracing::info!(
                    generation,
                    "the resumed generation answers its health probe"
                );
            }
            (Err(detail), Some(live))
                if live.generation == generation && self.in_flight.is_none() =>
            {
                tracing::error!(
                    generation,
                    pid = live.pid,
                    %detail,
                    "the resumed generation does not answer its health probe: killing it"
                );
                live.signal(Sig::Kill);
            }
            (Err(detail), _) => {
                tracing::warn!(
                    generation,
                    %detail,
                    "the resumed generation failed its health probe, but no longer serves alone"
                );
            }
        }
    }

    /// Probes the generation just resumed (I14) on a helper thread,
    /// retried for `Timeouts::probe`; no-op without a probe.
    fn check_resumed(&mut self, generation: u64) {
        if self.config.probe.is_none() {
            return;
        }
        let until = Instant::now() + self.config.timeouts.probe;
        let name = format!("handoff-resumed{generation}");
        if let Err(detail) = self.spawn_probe(name, ProbeFor::Resumed(generation), until) {
            self.on_resume_probed(generation, Err(detail));
        }
    }

    fn child_mut(&mut self, generation: u64) -> Option<&mut Child> {
        if let Some(in_flight) = &mut self.in_flight
            && in_flight.successor.generation == generation
        {
            return Some(&mut in_flight.successor);
        }
        if let Some(live) = &mut self.live
            && live.generation == generation
        {
            return Some(live);
        }
        self.retiring
            .iter_mut()
            .map(|r| &mut r.child)
            .find(|c| c.generation == generation)
    }

    /// How the live generation that exited with `status` failed: the
    /// probation probe's verdict if that is what killed it, else its exit.
    fn failure_of(&mut self, live: &Child, status: &str) -> Failed {
        let reason = match self.probation_probe_failure.take() {
            Some((generation, reason)) if generation == live.generation => reason,
            _ => format!("exited ({status})"),
        };
        Failed {
            generation: live.generation,
            pid: live.pid,
            reason,
        }
    }

    /// The newest old generation still in probation takes over after
    /// `failed` (I14): it is sent its resume (message or signal), and its
    /// `Resumed` makes it live. False if none is in probation.
    fn resume_probation(&mut self, failed: Failed, now: Instant) -> bool {
        let Some(index) = self.retiring.iter().rposition(|r| r.machine.in_probation()) else {
            return false;
        };
        tracing::warn!(
            pid = self.retiring[index].child.pid,
            failed_pid = failed.pid,
            reason = %failed.reason,
            "the live generation failed while the previous one was in probation: resuming it"
        );
        self.restart_at = None;
        self.retiring[index].resumed_for = Some(failed);
        self.step_retire(index, RetireInput::Resume, now);
        true
    }

    /// An event from the live generation outside a handoff.
    fn on_live_event(&mut self, event: Event, status: String, now: Instant) {
        match event {
            Event::Frame { frame, .. } => match frame.envelope.message {
                Message::Heartbeat | Message::SnapshotReport(_) => {}
                other => tracing::warn!(
                    message = other.name(),
                    "the live generation sent a message outside a handoff; ignored"
                ),
            },
            Event::Closed { .. } => {
                // A generation whose control connection closed cannot be
                // handed off any more: ask it to stop; the exit restarts it.
                if let Some(live) = &self.live
                    && live.reaped.is_none()
                    && self.stopping.is_none()
                {
                    tracing::warn!(
                        pid = live.pid,
                        "the live generation closed its control connection"
                    );
                    live.signal(Sig::Term);
                }
            }
            Event::Exited { .. } => {
                let Some(live) = self.live.take() else { return };
                if self.stopping.is_some() {
                    tracing::info!(generation = live.generation, pid = live.pid, %status, "generation stopped");
                } else {
                    tracing::warn!(generation = live.generation, pid = live.pid, %status, "generation exited");
                }
                self.announce(SupervisorEvent::GenerationExited {
                    generation: live.generation,
                    pid: live.pid,
                    status: status.clone(),
                });
                if self.stopping.is_some() {
                    return;
                }
                // In probation (I14): the previous generation takes over at
                // once instead of a restart of the one that just failed; if
                // a handoff runs, its verdict decides (`finish`).
                let in_probation = self.retiring.iter().rposition(|r| r.machine.in_probation());
                if self.in_flight.is_some() && in_probation.is_some() {
                    tracing::warn!(
                        "the live generation exited during a handoff: the successor serves if it commits, else the generation in probation resumes"
                    );
                    self.failed_in_flight = Some(self.failure_of(&live, &status));
                    // Kept resumable until the verdict (bounded by the
                    // configured handoff deadline).
                    self.hold_probations(now + self.config.timeouts.handoff_deadline, now);
                    return;
                }
                if self.in_flight.is_none() && in_probation.is_some() {
                    let failed = self.failure_of(&live, &status);
                    self.resume_probation(failed, now);
                    return;
                }
                let clean = status == "exit status 0";
                let restart = match self.config.restart {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => !clean,
                    RestartPolicy::Never => false,
                };
                if !restart {
                    tracing::info!("restart policy says no restart; stopping");
                    self.begin_stop(None);
                    return;
                }
                if now.saturating_duration_since(live.started) >= RESTART_STABLE {
                    self.failures = 0;
                }
                let delay = self.config.timeouts.restart_backoff(self.failures);
                self.failures = self.failures.saturating_add(1);
                tracing::info!(
                    delay_ms = delay.as_millis() as u64,
                    "restarting the generation"
                );
                self.restart_at = Some(now + delay);
            }
        }
    }

    fn step_handoff(&mut self, input: HandoffInput, now: Instant) {
        let Some(InFlight {
            machine: Machine::Library(machine),
            successor,
            ..
        }) = &mut self.in_flight
        else {
            return;
        };
        let mut from = machine.state_name();
        let actions = machine.step(input, now);
        // Every state the step went through, not only the last one: a fault
        // point must not be skipped because two transitions shared a step.
        let entered = machine.take_entered();
        let handoff_id = machine.handoff_id();
        let generation = successor.generation;
        self.perform(actions, now);
        for state in entered {
            let to = state.as_str();
            tracing::debug!(handoff_id, from, to, "handoff phase");
            self.announce(SupervisorEvent::Phase {
                handoff_id,
                phase: to,
            });
            if fault::reached(FaultRole::Supervisor, to, generation).is_err() {
                self.step_handoff(HandoffInput::Cancel, now);
                return;
            }
            from = to;
        }
    }

    /// After the successor's EOF (or once the grace ran out): step the exit
    /// that was held back.
    fn release_pending_exit(&mut self, now: Instant) {
        let Some(in_flight) = &mut self.in_flight else {
            return;
        };
        in_flight.successor_closed = true;
        if let Some((status, _)) = in_flight.pending_exit.take() {
            self.step_handoff(
                HandoffInput::Exited {
                    side: Side::Successor,
                    status,
                },
                now,
            );
        }
    }

    fn side(&self, side: Side) -> Option<&Child> {
        match side {
            Side::Successor => self.in_flight.as_ref().map(|f| &f.successor),
            Side::Incumbent => self.live.as_ref(),
        }
    }

    fn perform(&mut self, actions: Vec<HandoffAction>, now: Instant) {
        for action in actions {
            let failed_send = match action {
                HandoffAction::Send { to, message } => {
                    let id = self
                        .in_flight
                        .as_ref()
                        .map_or(0, |f| f.machine.handoff_id());
                    let adopts = matches!(
                        (&message, to),
                        (Message::HelloAck { .. }, Side::Successor)
                            | (Message::Prepare { .. }, Side::Incumbent)
                    );
                    let child = match to {
                        Side::Successor => self.in_flight.as_mut().map(|f| &mut f.successor),
                        Side::Incumbent => self.live.as_mut(),
                    };
                    match child {
                        Some(child) => {
                            if adopts {
                                child.handoff_id = id;
                            }
                            child.send(message).err().map(|error| (to, error))
                        }
                        None => None,
                    }
                }
                HandoffAction::SendListeners => self
                    .send_listeners()
                    .err()
                    .map(|error| (Side::Successor, error)),
                HandoffAction::Commit(_proof) => self
                    .side(Side::Successor)
                    .and_then(|child| child.send(Message::Commit).err())
                    .map(|error| (Side::Successor, error)),
                HandoffAction::Kill { side, signal } => {
                    if let Some(child) = self.side(side) {
                        child.signal(sig(signal));
                    }
                    None
                }
                HandoffAction::StartProbe { until } => {
                    self.start_probe(until);
                    None
                }
                HandoffAction::Finish(verdict) => {
                    self.finish(verdict, now);
                    None
                }
            };
            if let Some((side, error)) = failed_send {
                tracing::warn!(?side, %error, "send failed; treating the peer as gone");
                self.step_handoff(HandoffInput::Closed { side }, now);
            }
        }
    }

    /// Runs the configured probe on a helper thread (it only does network
    /// I/O, never spawns); its verdict comes back as an event.
    fn start_probe(&mut self, until: Instant) {
        let Some(handoff_id) = self.in_flight.as_ref().map(|f| f.machine.handoff_id()) else {
            return;
        };
        let name = format!("handoff-probe{handoff_id}");
        if let Err(detail) = self.spawn_probe(name, ProbeFor::Handoff(handoff_id), until) {
            self.probe_verdict(Err(detail), Instant::now());
        }
    }

    /// Runs the configured probe until `until` on a helper thread (network
    /// I/O only, it never spawns: I11) and sends its one verdict to the
    /// loop, tagged with `purpose`.
    fn spawn_probe(
        &self,
        name: String,
        purpose: ProbeFor,
        until: Instant,
    ) -> std::result::Result<(), String> {
        let Some(probe) = self.config.probe.clone() else {
            return Err("no probe configured".to_owned());
        };
        let verdicts = self.probes_tx.clone();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let result = probe.run_until(until);
                let _ = verdicts.send(Probed { purpose, result });
            })
            .map(drop)
            .map_err(|error| format!("cannot start the probe thread: {error}"))
    }

    /// During a probation (I14), probes the live generation until `until`:
    /// an attempt every `PROBATION_PROBE_INTERVAL`; a failed attempt is
    /// retried for `Timeouts::probe` before it counts. Runs on a helper
    /// thread (network I/O only); only a failure is reported.
    fn watch_probation(&mut self, until: Instant) {
        let (Some(probe), Some(live)) = (self.config.probe.clone(), &self.live) else {
            return;
        };
        let generation = live.generation;
        let confirm = self.config.timeouts.probe;
        let verdicts = self.probes_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("handoff-probation{generation}"))
            .spawn(move || {
                while Instant::now() < until {
                    if let Err(first) = probe.attempt() {
                        let _ = verdicts.send(Probed {
                            purpose: ProbeFor::ProbationSuspect(generation),
                            result: Err(first),
                        });
                        let verdict = probe.run_until(Instant::now() + confirm);
                        let failed = verdict.is_err();
                        let _ = verdicts.send(Probed {
                            purpose: if failed {
                                ProbeFor::Probation(generation)
                            } else {
                                ProbeFor::ProbationCleared(generation)
                            },
                            result: verdict,
                        });
                        if failed {
                            return;
                        }
                    }
                    std::thread::sleep(
                        crate::timeouts::PROBATION_PROBE_INTERVAL
                            .min(until.saturating_duration_since(Instant::now())),
                    );
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the probation probe");
        }
    }

    fn probe_verdict(&mut self, result: std::result::Result<(), String>, now: Instant) {
        match (&self.in_flight, result) {
            (
                Some(InFlight {
                    machine: Machine::Foreign(_),
                    ..
                }),
                result,
            ) => self.step_foreign(
                match result {
                    Ok(()) => ForeignInput::ProbePassed,
                    Err(detail) => ForeignInput::ProbeFailed { detail },
                },
                now,
            ),
            (_, Ok(())) => self.step_handoff(HandoffInput::ProbePassed, now),
            (_, Err(detail)) => self.step_handoff(HandoffInput::ProbeFailed { detail }, now),
        }
    }

    fn send_listeners(&self) -> Result<()> {
        let Some(in_flight) = &self.in_flight else {
            return Ok(());
        };
        for chunk in self.config.listeners.chunks(usize::from(MAX_FDS_PER_FRAME)) {
            let entries = chunk
                .iter()
                .map(|l| FdEntry {
                    name: l.name.clone(),
                    kind: l.kind,
                })
                .collect();
            let fds: Vec<_> = chunk.iter().map(|l| l.fd.as_fd()).collect();
            if let Some(sender) = &in_flight.successor.sender {
                sender.send(
                    in_flight.successor.handoff_id,
                    Message::Fds { entries },
                    &fds,
                )?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, verdict: Verdict, now: Instant) {
        let Some(in_flight) = self.in_flight.take() else {
            return;
        };
        let handoff_id = in_flight.machine.handoff_id();
        let outcome = match verdict {
            Verdict::Committed {
                mut phases,
                retire_incumbent,
                incumbent_stopped,
            } => {
                phases.spawn = Some(in_flight.spawn_time);
                phases.total = now.saturating_duration_since(in_flight.requested);
                let successor = in_flight.successor;
                self.last_committed = Some(successor.restart.clone());
                if let Some(why) = &incumbent_stopped {
                    tracing::warn!(why = %why, "the old generation was stopped before the commit");
                }
                let outcome = Outcome::Committed {
                    handoff_id,
                    old_pid: in_flight.old_pid,
                    new_pid: successor.pid,
                    generation: successor.generation,
                    phases,
                    incumbent_stopped,
                };
                // Someone serves: a restart scheduled when the incumbent
                // died during this handoff is moot, and so is a resume.
                if self.restart_at.take().is_some() {
                    tracing::info!(
                        "a restart was pending (the incumbent exited during the handoff): the committed generation serves instead"
                    );
                }
                self.failed_in_flight = None;
                if let Some(mut old) = self.live.replace(successor)
                    && retire_incumbent
                    && old.reaped.is_none()
                {
                    {
                        // Overlap: the old one drains now (Prepare carries this id).
                        old.handoff_id = handoff_id;
                        let drain_first = self.config.mode == Mode::Overlap;
                        let probation = self.config.timeouts.probation;
                        let (machine, actions) = match self.config.protocol {
                            DaemonProtocol::Library if drain_first && !probation.is_zero() => {
                                RetireMachine::with_probation(probation, self.config.timeouts, now)
                            }
                            DaemonProtocol::Library => {
                                RetireMachine::start(drain_first, self.config.timeouts, now)
                            }
                            // Probation by signal (quiesce, resume), or a
                            // warm standby without a quiesce signal (I14).
                            DaemonProtocol::Systemd { quiesce, .. } if !probation.is_zero() => {
                                RetireMachine::foreign_with_probation(
                                    probation,
                                    match quiesce {
                                        Some(_) => ForeignProbation::Quiesce,
                                        None => ForeignProbation::WarmStandby,
                                    },
                                    self.config.timeouts,
                                    now,
                                )
                            }
                            // Overlap by signal: the stop signal, then the
                            // drain grace before SIGKILL.
                            DaemonProtocol::Systemd { .. } => {
                                RetireMachine::signal_first(self.config.timeouts, now)
                            }
                        };
                        if fault::reached(
                            FaultRole::Supervisor,
                            machine.state_name(),
                            old.generation,
                        )
                        .is_err()
                        {
                            old.signal(Sig::Kill);
                        }
                        self.retiring.push(Retiring {
                            machine,
                            child: old,
                            resumed_for: None,
                        });
                        let index = self.retiring.len() - 1;
                        self.perform_retire(index, actions, now);
                        if self
                            .retiring
                            .get(index)
                            .is_some_and(|r| r.machine.in_probation())
                        {
                            self.watch_probation(now + probation);
                        }
                    }
                }
                outcome
            }
            Verdict::RolledBack {
                reason,
                mut phases,
                incumbent_serving,
            } => {
                phases.spawn = Some(in_flight.spawn_time);
                phases.total = now.saturating_duration_since(in_flight.requested);
                // A foreign incumbent takes no part in the handoff: it
                // serves if it is still alive.
                let incumbent_serving = incumbent_serving
                    && self.live.as_ref().is_some_and(|live| live.reaped.is_none());
                if !incumbent_serving {
                    match &self.live {
                        Some(live) if live.reaped.is_none() => live.signal(Sig::Kill),
                        // Nobody serves: a generation in probation takes
                        // over (I14); otherwise start a fresh generation, if
                        // the policy allows (a failed cold start is a
                        // failure).
                        _ => {
                            self.live = None;
                            let failed = self.failed_in_flight.take().unwrap_or(Failed {
                                generation: 0,
                                pid: 0,
                                reason: "exited during a handoff".into(),
                            });
                            if self.stopping.is_some() || self.resume_probation(failed, now) {
                                // Stopping, or the generation in probation
                                // takes over.
                            } else {
                                if self.config.restart == RestartPolicy::Never {
                                    self.begin_stop(None);
                                } else {
                                    self.schedule_restart(now);
                                }
                            }
                        }
                    }
                }
                // Only a generation that serves is named: one being killed
                // (it could not resume) is not.
                let serving = self.live.as_ref().filter(|_| incumbent_serving);
                Outcome::RolledBack {
                    handoff_id,
                    reason,
                    old_pid: serving.map(|l| l.pid),
                    failed_pid: Some(in_flight.successor.pid),
                    generation: serving.map_or(0, |l| l.generation),
                    phases,
                }
            }
        };
        match &outcome {
            Outcome::Committed {
                new_pid,
                generation,
                phases,
                ..
            } => tracing::info!(
                handoff_id,
                new_pid,
                generation,
                total_ms = phases.total.as_millis() as u64,
                "handoff committed"
            ),
            Outcome::RolledBack { reason, .. } => {
                tracing::warn!(handoff_id, %reason, "handoff rolled back")
            }
        }
        self.last_handoff = Some(outcome.clone());
        self.announce(SupervisorEvent::HandoffFinished(Box::new(outcome.clone())));
        if let Some(reply) = in_flight.reply {
            let _ = reply.send(Ok(outcome));
        }
        if self.stopping.is_some() {
            self.terminate_all(now);
        }
    }

    fn step_retire(&mut self, index: usize, input: RetireInput, now: Instant) {
        let before = self.retiring[index].machine.state_name();
        let actions = self.retiring[index].machine.step(input, now);
        let after = self.retiring[index].machine.state_name();
        let generation = self.retiring[index].child.generation;
        if before != after && fault::reached(FaultRole::Supervisor, after, generation).is_err() {
            // An injected error here can only hurry the old generation out.
            tracing::warn!("injected error while retiring: killing the old generation");
            self.retiring[index].child.signal(Sig::Kill);
        }
        self.perform_retire(index, actions, now);
    }

    fn perform_retire(&mut self, index: usize, actions: Vec<RetireAction>, now: Instant) {
        for action in actions {
            let retiring = &mut self.retiring[index];
            match action {
                RetireAction::Send(message) => {
                    if retiring.child.send(message).is_err() {
                        self.step_retire(index, RetireInput::Closed, now);
                        return;
                    }
                }
                RetireAction::Signal(signal) => {
                    let signal = match (signal, self.config.protocol) {
                        (Signal::Term, DaemonProtocol::Systemd { stop_signal, .. }) => stop_signal,
                        (signal, _) => sig(signal),
                    };
                    self.retiring[index].child.signal(signal);
                }
                // Only a foreign machine with a quiesce pair emits these.
                RetireAction::SignalQuiesce => {
                    if let Some(signals) = quiesce_signals(self.config.protocol) {
                        retiring.child.signal(signals.quiesce);
                    }
                }
                RetireAction::SignalResume => {
                    if let Some(signals) = quiesce_signals(self.config.protocol) {
                        retiring.child.signal(signals.resume);
                    }
                }
                RetireAction::Resumed => {
                    // Probation rollback (I14): the old generation serves
                    // again and is the live one.
                    let resumed = self.retiring.remove(index);
                    let child = resumed.child;
                    let failed = resumed.resumed_for.unwrap_or(Failed {
                        generation: 0,
                        pid: 0,
                        reason: "unknown".into(),
                    });
                    if self.live.is_none() {
                        tracing::warn!(
                            generation = child.generation,
                            pid = child.pid,
                            failed_pid = failed.pid,
                            reason = %failed.reason,
                            "automatic rollback: the previous generation serves again"
                        );
                        self.last_committed = Some(child.restart.clone());
                        let rollback = ProbationRollback {
                            handoff_id: child.handoff_id,
                            generation: child.generation,
                            pid: child.pid,
                            failed_generation: failed.generation,
                            failed_pid: failed.pid,
                            reason: failed.reason,
                            resume_check: if self.config.probe.is_some() {
                                ResumeCheck::Probing
                            } else {
                                ResumeCheck::Unchecked
                            },
                        };
                        self.last_probation_rollback = Some(rollback.clone());
                        self.announce(SupervisorEvent::RolledBackInProbation(rollback));
                        self.restart_at = None;
                        let generation = child.generation;
                        self.live = Some(child);
                        self.check_resumed(generation);
                    } else {
                        // Someone else serves already (a commit or a restart
                        // won the race): no rollback after all, and this one
                        // retires like any old generation, to its reap.
                        tracing::warn!(
                            generation = child.generation,
                            pid = child.pid,
                            "the resumed generation found another one serving: it retires"
                        );
                        let (machine, actions) = match self.config.protocol {
                            DaemonProtocol::Library => RetireMachine::start(
                                self.config.mode == Mode::Overlap,
                                self.config.timeouts,
                                now,
                            ),
                            DaemonProtocol::Systemd { .. } => {
                                RetireMachine::signal_first(self.config.timeouts, now)
                            }
                        };
                        self.retiring.push(Retiring {
                            machine,
                            child,
                            resumed_for: None,
                        });
                        let index = self.retiring.len() - 1;
                        self.perform_retire(index, actions, now);
                    }
                    return;
                }
                RetireAction::Gone => {
                    let retired = self.retiring.remove(index);
                    if self.live.is_none()
                        && self.in_flight.is_none()
                        && self.stopping.is_none()
                        && self.restart_at.is_none()
                    {
                        // It died while being resumed: nobody serves.
                        self.schedule_restart(now);
                    }
                    self.announce(SupervisorEvent::GenerationRetired {
                        pid: retired.child.pid,
                        status: retired.child.reaped.clone().unwrap_or_default(),
                    });
                    tracing::info!(
                        generation = retired.child.generation,
                        pid = retired.child.pid,
                        status = retired.child.reaped.as_deref().unwrap_or("?"),
                        "old generation gone"
                    );
                    return;
                }
            }
        }
    }

    fn on_time(&mut self, now: Instant) {
        if let Some(InFlight {
            pending_exit: Some((_, at)),
            ..
        }) = &self.in_flight
            && *at <= now
        {
            // No EOF within the grace (another process holds the
            // successor's end of the socket): the exit goes on its own.
            self.release_pending_exit(now);
        }
        match &self.in_flight {
            Some(InFlight {
                machine: Machine::Library(machine),
                ..
            }) if machine.next_wakeup().is_some_and(|at| at <= now) => {
                self.step_handoff(HandoffInput::Tick, now)
            }
            Some(InFlight {
                machine: Machine::Foreign(machine),
                ..
            }) if machine.next_wakeup().is_some_and(|at| at <= now) => {
                self.step_foreign(ForeignInput::Tick, now)
            }
            _ => {}
        }
        let due: Vec<usize> = (0..self.retiring.len())
            .filter(|&i| {
                self.retiring[i]
                    .machine
                    .next_wakeup()
                    .is_some_and(|at| at <= now)
            })
            .collect();
        for index in due.into_iter().rev() {
            self.step_retire(index, RetireInput::Tick, now);
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.config.timeouts.heartbeat_interval;
            self.heartbeat();
        }
        if self.restart_at.is_some_and(|at| at <= now) && self.in_flight.is_none() {
            self.restart_at = None;
            // Restart what was last committed, not what was first configured,
            // and, if it was pinned, only if its file still has that content.
            let prepared = match &self.last_committed {
                Some(target) => target.request(),
                None => Ok((UpgradeRequest::default(), None)),
            };
            let started = prepared.and_then(|(request, pinned)| {
                let started = self.start_handoff(request, None);
                // The pinned file stays open until the spawn has exec'd it.
                drop(pinned);
                started
            });
            if let Err(error) = started {
                tracing::error!(error = %crate::error::chain(&error), "restart refused or failed");
                self.schedule_restart(now);
            }
        }
        if let Some(stopping) = &mut self.stopping {
            if !stopping.killed && now >= stopping.kill_at {
                stopping.killed = true;
                for child in self
                    .live
                    .iter()
                    .chain(self.retiring.iter().map(|r| &r.child))
                {
                    child.signal(Sig::Kill);
                }
            }
            let everyone_gone = self.in_flight.is_none()
                && self.live.as_ref().is_none_or(|l| l.reaped.is_some())
                && self.retiring.is_empty();
            if everyone_gone {
                for reply in stopping.replies.drain(..) {
                    let _ = reply.send(());
                }
                self.finished = true;
            }
        }
    }

    fn heartbeat(&self) {
        let children = self
            .live
            .iter()
            .chain(self.in_flight.iter().map(|f| &f.successor))
            .chain(self.retiring.iter().map(|r| &r.child));
        for child in children {
            if child.reaped.is_none() {
                // A failed heartbeat shows up as EOF on the reader.
                let _ = child.send(Message::Heartbeat);
            }
        }
    }

    fn begin_stop(&mut self, reply: Option<Sender<()>>) {
        let now = Instant::now();
        match &mut self.stopping {
            Some(stopping) => stopping.replies.extend(reply),
            None => {
                tracing::info!("stopping");
                self.announce(SupervisorEvent::Stopping);
                self.stopping = Some(Stopping {
                    replies: reply.into_iter().collect(),
                    kill_at: now + STOP_DRAIN + self.config.timeouts.kill_grace,
                    killed: false,
                });
                self.restart_at = None;
                if self.in_flight.is_some() {
                    // Roll back first; terminate_all runs when it finished.
                    self.cancel_handoff(now);
                } else {
                    self.terminate_all(now);
                }
            }
        }
    }

    fn terminate_all(&mut self, now: Instant) {
        // The drain a stop allows counts from the stop signal: a handoff
        // rolled back first (bounded) does not eat into it.
        if let Some(stopping) = &mut self.stopping {
            stopping.kill_at = now + STOP_DRAIN + self.config.timeouts.kill_grace;
        }
        let stop = self.sig(Signal::Term);
        for child in self
            .live
            .iter()
            .chain(self.retiring.iter().map(|r| &r.child))
        {
            child.signal(stop);
        }
    }
}
