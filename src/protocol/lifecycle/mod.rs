//! The supervisor's own lifecycle, sans-I/O: which generation serves, the
//! handoff in flight (its [`HandoffMachine`] or [`ForeignHandoffMachine`]),
//! the old generations being retired (a [`RetireMachine`] each), the
//! restart policy and its backoff, probations, and the stop sequence. The
//! driver (`supervisor/driver.rs`) owns processes, sockets and threads; it
//! feeds what happened to them here and performs what comes back.
//!
//! ```text
//!  Starting{due} --due / upgrade--> HandingOff{incumbent: Absent}
//!  Serving{live} --upgrade--> HandingOff{incumbent: Serving(live)}
//!  HandingOff --Committed--> Serving{successor}   (the old live generation retires)
//!  HandingOff --RolledBack, incumbent serves--> Serving{incumbent}
//!  HandingOff --RolledBack, nobody serves--> (after_loss)
//!  Serving --live exits--> (after_loss)
//!  (after_loss) --a generation in probation--> Starting{due: None} --Resumed--> Serving{it}
//!  (after_loss) --restart policy--> Starting{due: now + backoff} | Stopping
//!  any --Stop--> Stopping{kill: AfterHandoff | At(t) | Sent(t)} --all gone, or t--> Finished
//! ```
//!
//! Invariants kept here (ARCHITECTURE.md): only a reaped generation is
//! forgotten, and every old generation alive at a commit is retired (I8,
//! I16); the restart policy and its backoff are applied in one place
//! ([`LifecycleMachine::after_loss`]); a generation in probation is resumed
//! before any restart (I14); a successor's exit is stepped only after its
//! control connection's EOF, or `EXIT_AFTER_EOF` later (I11).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::outcome::{ExitStatus, Outcome, ProbationRollback, RestartPolicy, SupervisorEvent};
use super::{
    ForeignConfig, ForeignHandoffMachine, ForeignProbation, HandoffConfig, HandoffMachine,
    ReadySignal, RetireAction, RetireInput, RetireMachine, RetireState,
};
use crate::timeouts::{RESTART_STABLE, STOP_DRAIN, Timeouts};
use crate::wire::{Message, Mode};

/// A generation's number; every generation the supervisor starts gets the
/// next one.
pub type GenerationId = u64;

/// What a generation runs, and what a restart after its crash runs again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Build {
    /// The binary, by path (never a `/proc/self/fd/N` pin).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// The sha256 the file must have when it runs again, if pinned.
    pub sha256: Option<String>,
}

/// How the supervisor speaks to its generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonKind {
    /// The daemon links the library: a control connection.
    Library,
    /// Signals and systemd's conventions only.
    Foreign {
        /// How a successor says it is ready.
        ready: ReadySignal,
        /// Whether a quiesce/resume signal pair is configured (else an old
        /// generation in probation is a warm standby).
        quiesce: bool,
    },
}

/// What the lifecycle needs to know up front.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// Exclusive or overlap (a foreign daemon is always overlap).
    pub mode: Mode,
    /// Library or foreign.
    pub daemon: DaemonKind,
    /// When a generation that ended is started again.
    pub restart: RestartPolicy,
    /// Every duration.
    pub timeouts: Timeouts,
    /// Whether a health probe is configured.
    pub probe: bool,
    /// How many named fds a library successor receives.
    pub fd_count: u32,
    /// The configured build (what generation 1 runs).
    pub build: Build,
}

/// The right to spawn one generation for one handoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The handoff's id.
    pub handoff_id: u64,
    /// The generation to spawn.
    pub generation: GenerationId,
    /// Whether it is a restart (no operator waits for it).
    pub restart: bool,
}

/// Why a handoff cannot start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another handoff is in flight.
    Busy,
    /// The supervisor is stopping.
    Stopping,
}

/// A spawned successor, as the driver reports it.
#[derive(Debug, Clone)]
pub struct Spawned {
    /// The ticket it was spawned for.
    pub ticket: Ticket,
    /// Its pid.
    pub pid: u32,
    /// What it runs.
    pub build: Build,
    /// This handoff's durations (the configured ones with the request's
    /// drain timeout and deadline).
    pub timeouts: Timeouts,
    /// Exclusive mode: stop an incumbent that fails to drain or seal.
    pub force: bool,
    /// When the handoff was asked for: its total counts from here.
    pub requested: Instant,
    /// When the spawn began: the request phase ends, the spawn's begins.
    pub spawn_begun: Instant,
}

/// Why a probe ran, and so where its verdict goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbePurpose {
    /// The health gate of handoff N, before its commit (I12).
    Handoff(u64),
    /// A probation probe attempt on generation N failed; it is being
    /// confirmed (the probation is held open meanwhile).
    ProbationSuspect(GenerationId),
    /// The suspected failure of generation N was not confirmed.
    ProbationCleared(GenerationId),
    /// Generation N failed its probation probe (confirmed).
    ProbationFailed(GenerationId),
    /// Generation N, resumed by an automatic rollback, was checked.
    Resumed(GenerationId),
}

/// What happened, as the driver saw it.
#[derive(Debug, Clone)]
pub enum LifecycleInput {
    /// A successor was spawned for a ticket.
    Spawned(Box<Spawned>),
    /// The spawn for a ticket failed (or its build was refused).
    SpawnFailed {
        /// The ticket.
        ticket: Ticket,
        /// Why.
        reason: String,
    },
    /// A decoded frame from a generation.
    Frame {
        /// From whom.
        generation: GenerationId,
        /// The handoff id it carried.
        handoff_id: u64,
        /// The message.
        message: Message,
    },
    /// A generation's control connection hit EOF or failed.
    Closed {
        /// Whose.
        generation: GenerationId,
    },
    /// A generation's process was reaped.
    Exited {
        /// Whose.
        generation: GenerationId,
        /// How it ended.
        status: ExitStatus,
    },
    /// A datagram on a foreign generation's notification socket.
    Notified {
        /// Whose socket.
        generation: GenerationId,
        /// The sender's pid (`SCM_CREDENTIALS`).
        pid: Option<u32>,
        /// The datagram.
        text: String,
    },
    /// A probe's verdict.
    Probed {
        /// What it was for.
        purpose: ProbePurpose,
        /// Passed, or the last attempt's answer.
        result: Result<(), String>,
    },
    /// An armed fault point fired with `error` on a transition of this
    /// generation's machine.
    FaultInjected {
        /// The generation whose machine entered the point.
        generation: GenerationId,
    },
    /// A generation handed client connections over (I20); the driver holds
    /// their fds as `batch`.
    Connections {
        /// From whom.
        generation: GenerationId,
        /// The driver's name for them.
        batch: u64,
        /// How many.
        count: u32,
    },
    /// A generation put items in the store (I21); the driver holds their
    /// fds as `batch`.
    Items {
        /// From whom.
        generation: GenerationId,
        /// The driver's name for them.
        batch: u64,
    },
    /// Stop everything gracefully.
    Stop,
    /// Time passed.
    Tick,
}

/// A signal, as the configuration maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationSignal {
    /// The stop signal (SIGTERM, or a foreign daemon's configured one).
    Stop,
    /// SIGKILL, to the whole process group (I16).
    Kill,
    /// A foreign generation's quiesce signal (probation).
    Quiesce,
    /// A foreign generation's resume signal (probation rollback).
    Resume,
}

/// Something worth a log line, with its facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The live generation sent a message outside a handoff.
    UnexpectedMessage {
        /// Who.
        generation: GenerationId,
        /// What.
        message: &'static str,
    },
    /// The live generation closed its control connection: it is stopped.
    ControlClosed {
        /// Who.
        generation: GenerationId,
    },
    /// A start is due after this delay (the restart backoff).
    RestartScheduled {
        /// The delay.
        delay: Duration,
    },
    /// The restart policy says no restart: the supervisor stops.
    NoRestart,
    /// A stop ended a kill grace after SIGKILL without hearing these
    /// generations exit.
    StopUnheard {
        /// Whose exits were not heard.
        generations: Vec<GenerationId>,
    },
    /// The live generation died while a handoff ran: the verdict decides.
    LiveLost {
        /// Who.
        generation: GenerationId,
    },
    /// A handoff committed after the live generation died during it: the
    /// committed generation serves, no restart follows.
    RestartDropped,
    /// A generation in probation resumes after the live one failed.
    ResumingProbation {
        /// The one resuming.
        generation: GenerationId,
        /// The one that failed, and how.
        failed: GenerationId,
        /// How.
        reason: String,
    },
    /// The supervisor stopped the old generation before the commit.
    IncumbentStopped {
        /// Why.
        why: String,
    },
    /// A probation probe attempt failed; the probation is held open while
    /// the failure is confirmed.
    ProbationHeld {
        /// The generation probed.
        generation: GenerationId,
        /// The attempt's answer.
        detail: String,
    },
    /// The probation probe passes again.
    ProbationCleared {
        /// The generation probed.
        generation: GenerationId,
    },
    /// The new generation failed its probation probe: it is killed.
    ProbationFailed {
        /// Who.
        generation: GenerationId,
        /// The probe's last answer.
        detail: String,
    },
    /// A probe verdict came when nothing could act on it.
    ProbeIgnored {
        /// Whose.
        generation: GenerationId,
        /// The answer.
        detail: String,
    },
    /// A resumed generation was checked.
    ResumeChecked {
        /// Who.
        generation: GenerationId,
        /// Passed, or the answer (the generation is killed if it still
        /// serves alone).
        result: Result<(), String>,
        /// Whether it was killed.
        killed: bool,
    },
    /// A generation resumed from probation found another one serving: it
    /// retires after all.
    ResumedTooLate {
        /// Who.
        generation: GenerationId,
    },
    /// A notification from a pid other than the successor's.
    ForeignSender {
        /// The successor's generation.
        generation: GenerationId,
        /// The sender.
        sender: Option<u32>,
        /// The successor's pid.
        expected: u32,
    },
    /// An injected fault: the old generation is killed.
    FaultKill {
        /// Who.
        generation: GenerationId,
    },
}

/// What the driver must do.
#[derive(Debug, Clone)]
pub enum LifecycleAction {
    /// Send a message on a generation's control connection.
    Send {
        /// To whom.
        to: GenerationId,
        /// The handoff id it carries (the generation's current one).
        handoff_id: u64,
        /// What.
        message: Message,
    },
    /// Send a successor the named fds HelloAck promised.
    SendListeners {
        /// To whom.
        to: GenerationId,
        /// The handoff id.
        handoff_id: u64,
    },
    /// Signal a generation (never one already reaped: the driver checks).
    Signal {
        /// Whom.
        to: GenerationId,
        /// What.
        signal: GenerationSignal,
    },
    /// Run the health probe until `until` and report its verdict.
    StartProbe {
        /// Where the verdict goes.
        purpose: ProbePurpose,
        /// When to give up.
        until: Instant,
    },
    /// Probe the live generation during its probation, until `until`.
    WatchProbation {
        /// The generation in probation's successor (the live one).
        generation: GenerationId,
        /// The probation's end.
        until: Instant,
    },
    /// Start this build again (a restart): spawn it for the ticket and
    /// report `Spawned` or `SpawnFailed`.
    Restart {
        /// The ticket.
        ticket: Ticket,
        /// What to run.
        build: Build,
    },
    /// A machine of this generation entered a state (a fault point).
    Entered {
        /// Whose machine.
        generation: GenerationId,
        /// The state's name.
        state: &'static str,
    },
    /// A handoff ended: answer whoever asked for it.
    Finished(Box<Outcome>),
    /// Tell subscribers.
    Announce(SupervisorEvent),
    /// Log it.
    Note(Note),
    /// The generation is reaped and has no role left: drop its handles.
    Forget {
        /// Who.
        generation: GenerationId,
    },
    /// Tell a generation, before its Prepare, how many connections it may
    /// hand over: as many as the supervisor and `receiver` (the generation
    /// that will serve them) can hold (I20).
    OfferConnections {
        /// The generation about to drain.
        to: GenerationId,
        /// The handoff id it carries now.
        handoff_id: u64,
        /// Who will serve what it hands over.
        receiver: GenerationId,
    },
    /// Give a batch of connections to a generation.
    SendConnections {
        /// The batch.
        batch: u64,
        /// To whom.
        to: GenerationId,
        /// The handoff id it carries now.
        handoff_id: u64,
    },
    /// Close a batch of connections: nobody is left to serve them.
    DropConnections {
        /// The batch.
        batch: u64,
        /// Why.
        why: &'static str,
    },
    /// Put a batch of items in the store, replacing those of the same
    /// names (I21).
    KeepItems {
        /// The batch.
        batch: u64,
        /// The generation that put it (a newer one's put is not undone).
        writer: GenerationId,
    },
    /// Put a retiring generation's batch in the store, as `KeepItems`,
    /// and give what was kept of it to the newer generations already
    /// begun: the live one, a successor (I21).
    KeepAndPassItems {
        /// The batch.
        batch: u64,
        /// The generation that put it.
        writer: GenerationId,
        /// Each generation to give it to, with the handoff id it carries
        /// now.
        to: Vec<(GenerationId, u64)>,
    },
    /// Close a batch of items: its sender may not keep items.
    DropItems {
        /// The batch.
        batch: u64,
        /// Why.
        why: &'static str,
    },
    /// Give a generation every item in the store, before its `Begin`.
    SendItems {
        /// To whom.
        to: GenerationId,
        /// The handoff id it carries now.
        handoff_id: u64,
    },
    /// Everything stopped: the supervisor ends.
    Stopped,
}

super::names::state_names! {
    /// The supervisor's states, by name (`status`, fault points).
    pub enum LifecycleState {
        /// Nobody serves: a start is due or a generation in probation resumes.
        Starting => "starting",
        /// A generation serves.
        Serving => "serving",
        /// A handoff is in flight.
        HandingOff => "handing_off",
        /// Stopping.
        Stopping => "stopping",
        /// Stopped.
        Finished => "finished",
    }
}

/// A generation the supervisor started.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Generation {
    /// Its number.
    pub id: GenerationId,
    /// Its pid.
    pub pid: u32,
    /// What it runs.
    pub build: Build,
    /// When it was spawned.
    #[serde(with = "super::mono")]
    pub started: Instant,
    /// Since when it is the serving generation (its commit, or its
    /// resumption by an automatic rollback); `None` before.
    #[serde(with = "super::mono::option")]
    pub serving_since: Option<Instant>,
    /// The handoff id its messages carry now (I9).
    handoff_id: u64,
    /// Its Hello announced `CAP_CONNECTIONS` (I20).
    #[serde(default)]
    takes_connections: bool,
    /// Its Hello announced `CAP_ITEMS` (I21).
    #[serde(default)]
    takes_items: bool,
    /// The blob schemas it writes (its `Schemas`, I21).
    #[serde(default)]
    produces: Vec<crate::wire::Schema>,
    /// It was sent `Begin` (and the item store before it). A generation
    /// carried across a re-exec from an image without this field was (a
    /// freeze waits for a handoff's end).
    #[serde(default = "carried_begun")]
    begun: bool,
}

fn carried_begun() -> bool {
    true
}

/// A generation that failed: who, and how.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Failure {
    generation: GenerationId,
    pid: u32,
    reason: String,
}

#[derive(Debug)]
enum HandoffKind {
    Library(HandoffMachine),
    Foreign(ForeignHandoffMachine),
}

/// A successor's exit is held back until its connection's EOF (I11).
#[derive(Debug, Clone, Copy)]
enum SuccessorExit {
    Running,
    /// EOF seen: an exit is stepped at once.
    Closed,
    /// Exited before its EOF: stepped at EOF, or at `until`.
    Held {
        status: ExitStatus,
        until: Instant,
    },
    /// Its exit was stepped.
    Reaped,
}

#[derive(Debug)]
struct Handoff {
    id: u64,
    machine: HandoffKind,
    successor: Generation,
    exit: SuccessorExit,
    /// The serving generation's pid when it started (the report's old pid).
    incumbent_pid: Option<u32>,
    requested: Instant,
    spawn_begun: Instant,
    /// When the handoff's machine started: the spawn phase ends.
    machine_started: Instant,
    /// Connections the incumbent handed over, held until the verdict (I20).
    held: Vec<Parcel>,
    /// Items the successor put, kept only if it commits (I21).
    items: Vec<u64>,
}

impl Handoff {
    /// The phases before the machine's first step, and the total from the
    /// request: the request, the spawn and the machine's phases follow each
    /// other with no gap, so they add up to the total.
    fn time(&self, phases: &mut super::Phases, now: Instant) {
        phases.request = Some(self.spawn_begun.saturating_duration_since(self.requested));
        phases.spawn = Some(
            self.machine_started
                .saturating_duration_since(self.spawn_begun),
        );
        phases.total = now.saturating_duration_since(self.requested);
    }
}

/// The generation a handoff replaces.
#[derive(Debug)]
enum Incumbent {
    /// None (a cold start, a restart, an upgrade while nobody served).
    Absent,
    /// It serves (and takes part in a library handoff).
    Serving(Generation),
    /// It died during the handoff: the verdict decides what follows.
    Lost(Failure),
    /// A generation resumed from probation after the incumbent was lost;
    /// not part of the handoff.
    Resumed(Generation),
}

/// When a stop escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillTimer {
    /// A handoff is being cancelled first; the stop signal follows it.
    AfterHandoff,
    /// The stop signal went out; SIGKILL at this instant.
    At(Instant),
    /// SIGKILL went out; the stop ends at this instant, every exit heard
    /// or not (a generation whose exit never reaches the machine must not
    /// hold the stop for ever).
    Sent(Instant),
}

#[derive(Debug)]
enum State {
    /// Nobody serves. A start is due at `due`; `None`: a restart is being
    /// spawned, or a generation in probation resumes.
    Starting {
        due: Option<Instant>,
    },
    /// `live` serves; `condemned` says why the supervisor is killing it, if
    /// it is (its exit then reports that reason).
    Serving {
        live: Generation,
        condemned: Option<String>,
    },
    HandingOff {
        incumbent: Incumbent,
        handoff: Box<Handoff>,
    },
    Stopping {
        live: Option<Generation>,
        handoff: Option<Box<Handoff>>,
        kill: KillTimer,
    },
    Finished,
}

/// An old generation after a commit.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Retiree {
    generation: Generation,
    machine: RetireMachine,
    /// Its exit status, once reaped.
    status: Option<ExitStatus>,
    /// Set while it is being resumed: the generation whose failure it
    /// makes up for.
    resumed_for: Option<Failure>,
}

/// The supervisor's lifecycle machine.
#[derive(Debug)]
pub struct LifecycleMachine {
    config: LifecycleConfig,
    state: State,
    retirees: Vec<Retiree>,
    /// Consecutive failures, for the restart backoff.
    failures: u32,
    /// What a restart runs: the build last committed (or resumed).
    last_committed: Build,
    next_generation: GenerationId,
    next_handoff_id: u64,
    next_heartbeat: Instant,
    last_handoff: Option<Outcome>,
    last_probation_rollback: Option<ProbationRollback>,
}

mod route;
mod snapshot;
#[cfg(test)]
mod tests;
mod transit;
mod verdict;

pub use snapshot::{LifecycleSnapshot, Orphaned};
use transit::Parcel;

impl LifecycleMachine {
    /// A supervisor that has started nothing yet.
    pub fn new(config: LifecycleConfig, now: Instant) -> Self {
        LifecycleMachine {
            next_heartbeat: now + config.timeouts.heartbeat_interval,
            last_committed: config.build.clone(),
            config,
            state: State::Starting { due: None },
            retirees: Vec::new(),
            failures: 0,
            next_generation: 1,
            next_handoff_id: 1,
            last_handoff: None,
            last_probation_rollback: None,
        }
    }

    /// Numbers handoffs from `first` on (never back): past the ids an
    /// earlier supervisor used, as its history shows.
    pub fn continue_handoff_ids(&mut self, first: u64) {
        self.next_handoff_id = self.next_handoff_id.max(first);
    }

    /// The configuration.
    pub fn config(&self) -> &LifecycleConfig {
        &self.config
    }

    /// A ticket for a handoff to start now (an upgrade, or the first
    /// start); refused while one runs or while stopping. A restart that was
    /// due is dropped: this handoff replaces it.
    pub fn begin_handoff(&self) -> Result<Ticket, Refusal> {
        match &self.state {
            State::HandingOff { .. } => Err(Refusal::Busy),
            State::Stopping { .. } | State::Finished => Err(Refusal::Stopping),
            State::Starting { .. } | State::Serving { .. } => Ok(self.ticket(false)),
        }
    }

    /// The next ids; they are used up only once a successor is spawned
    /// for them, so a refused spawn leaves no gap in the numbers.
    fn ticket(&self, restart: bool) -> Ticket {
        Ticket {
            handoff_id: self.next_handoff_id,
            generation: self.next_generation,
            restart,
        }
    }

    /// Feeds one input observed at `now`.
    pub fn step(&mut self, input: LifecycleInput, now: Instant) -> Vec<LifecycleAction> {
        let mut out = Out::default();
        let before = self.state();
        match input {
            LifecycleInput::Spawned(spawned) => self.on_spawned(*spawned, now, &mut out),
            LifecycleInput::SpawnFailed { ticket, reason } => {
                self.on_spawn_failed(ticket, reason, now, &mut out)
            }
            LifecycleInput::Frame {
                generation,
                handoff_id,
                message,
            } => self.on_frame(generation, handoff_id, message, now, &mut out),
            LifecycleInput::Closed { generation } => self.on_closed(generation, now, &mut out),
            LifecycleInput::Connections {
                generation,
                batch,
                count,
            } => self.on_connections(generation, Parcel { batch, count }, &mut out),
            LifecycleInput::Items { generation, batch } => {
                self.on_items(generation, batch, &mut out)
            }
            LifecycleInput::Exited { generation, status } => {
                self.on_exited(generation, status, now, &mut out)
            }
            LifecycleInput::Notified {
                generation,
                pid,
                text,
            } => self.on_notified(generation, pid, text, now, &mut out),
            LifecycleInput::Probed { purpose, result } => {
                self.on_probed(purpose, result, now, &mut out)
            }
            LifecycleInput::FaultInjected { generation } => {
                self.on_fault(generation, now, &mut out)
            }
            LifecycleInput::Stop => self.begin_stop(now, &mut out),
            LifecycleInput::Tick => self.on_tick(now, &mut out),
        }
        self.check_finished(&mut out);
        let after = self.state();
        if before != after {
            let generation = self.live().map_or(0, |live| live.id);
            out.push(LifecycleAction::Entered {
                generation,
                state: after.as_str(),
            });
        }
        out.actions
    }

    /// The state's name.
    pub fn state(&self) -> LifecycleState {
        match &self.state {
            State::Starting { .. } => LifecycleState::Starting,
            State::Serving { .. } => LifecycleState::Serving,
            State::HandingOff { .. } => LifecycleState::HandingOff,
            State::Stopping { .. } => LifecycleState::Stopping,
            State::Finished => LifecycleState::Finished,
        }
    }

    /// Whether everything stopped.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished)
    }

    /// When the driver must feed a `Tick` at the latest.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.is_finished() {
            return None;
        }
        let mut next = self.next_heartbeat;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = next.min(at);
            }
        };
        if let Some(handoff) = self.handoff() {
            consider(handoff.next_wakeup());
        }
        for retiree in &self.retirees {
            consider(retiree.machine.next_wakeup());
        }
        match &self.state {
            State::Starting { due } => consider(*due),
            State::Stopping {
                kill: KillTimer::At(at) | KillTimer::Sent(at),
                ..
            } => consider(Some(*at)),
            _ => {}
        }
        Some(next)
    }

    fn handoff(&self) -> Option<&Handoff> {
        match &self.state {
            State::HandingOff { handoff, .. }
            | State::Stopping {
                handoff: Some(handoff),
                ..
            } => Some(handoff),
            _ => None,
        }
    }

    fn handoff_mut(&mut self) -> Option<&mut Handoff> {
        match &mut self.state {
            State::HandingOff { handoff, .. }
            | State::Stopping {
                handoff: Some(handoff),
                ..
            } => Some(handoff),
            _ => None,
        }
    }

    /// What a restart runs: the build of the last commit (the configured
    /// one before any).
    pub fn last_committed(&self) -> &Build {
        &self.last_committed
    }

    /// The generation that serves (or, during a handoff, served when it
    /// started and has not died).
    pub fn live(&self) -> Option<&Generation> {
        match &self.state {
            State::Serving { live, .. } => Some(live),
            State::HandingOff {
                incumbent: Incumbent::Serving(live) | Incumbent::Resumed(live),
                ..
            } => Some(live),
            State::Stopping { live, .. } => live.as_ref(),
            State::Starting { .. } | State::HandingOff { .. } | State::Finished => None,
        }
    }

    /// [`LifecycleMachine::live`], to change what it announced.
    pub(super) fn live_mut(&mut self) -> Option<&mut Generation> {
        match &mut self.state {
            State::Serving { live, .. } => Some(live),
            State::HandingOff {
                incumbent: Incumbent::Serving(live) | Incumbent::Resumed(live),
                ..
            } => Some(live),
            State::Stopping { live, .. } => live.as_mut(),
            State::Starting { .. } | State::HandingOff { .. } | State::Finished => None,
        }
    }

    /// Pids of the old generations being retired.
    pub fn retiring(&self) -> Vec<u32> {
        self.retirees.iter().map(|r| r.generation.pid).collect()
    }

    /// The old generations being retired: each, the state of its
    /// retirement, and whether it is kept for a resumption (a probation).
    pub fn retirees(&self) -> impl Iterator<Item = (&Generation, RetireState, bool)> {
        self.retirees
            .iter()
            .map(|r| (&r.generation, r.machine.state(), r.machine.in_probation()))
    }

    /// The last handoff (cold starts included).
    pub fn last_handoff(&self) -> Option<&Outcome> {
        self.last_handoff.as_ref()
    }

    /// The last automatic rollback in probation.
    pub fn last_probation_rollback(&self) -> Option<&ProbationRollback> {
        self.last_probation_rollback.as_ref()
    }

    // ------------------------------------------------------------ spawn

    fn on_spawned(&mut self, spawned: Spawned, now: Instant, out: &mut Out) {
        let Spawned {
            ticket,
            pid,
            build,
            timeouts,
            force,
            requested,
            spawn_begun,
        } = spawned;
        self.next_handoff_id = self.next_handoff_id.max(ticket.handoff_id + 1);
        self.next_generation = self.next_generation.max(ticket.generation + 1);
        let successor = Generation {
            id: ticket.generation,
            pid,
            build,
            started: now,
            serving_since: None,
            handoff_id: 0,
            takes_connections: false,
            takes_items: false,
            produces: Vec::new(),
            begun: false,
        };
        let incumbent = match std::mem::replace(&mut self.state, State::Finished) {
            State::Serving { live, .. } => Incumbent::Serving(live),
            State::Starting { .. } => Incumbent::Absent,
            other => {
                // A ticket is only given outside a handoff and a stop.
                self.state = other;
                return;
            }
        };
        let incumbent_pid = match &incumbent {
            Incumbent::Serving(live) => Some(live.pid),
            _ => None,
        };
        let facts = SpawnFacts {
            ticket,
            pid,
            timeouts,
            force,
        };
        let (machine, first) = self.handoff_machine(&facts, incumbent_pid, now);
        let state_name = match &machine {
            HandoffKind::Library(machine) => machine.state_name(),
            HandoffKind::Foreign(machine) => machine.state_name(),
        };
        out.announce(SupervisorEvent::HandoffStarted {
            handoff_id: ticket.handoff_id,
            upgrade: incumbent_pid.is_some(),
            generation: ticket.generation,
            successor_pid: pid,
            incumbent_pid,
            program: successor.build.program.clone(),
        });
        out.push(LifecycleAction::Entered {
            generation: ticket.generation,
            state: state_name,
        });
        self.state = State::HandingOff {
            incumbent,
            handoff: Box::new(Handoff {
                id: ticket.handoff_id,
                machine,
                successor,
                exit: SuccessorExit::Running,
                incumbent_pid,
                requested,
                spawn_begun,
                machine_started: now,
                held: Vec::new(),
                items: Vec::new(),
            }),
        };
        self.perform_foreign(first, now, out);
    }

    /// The machine that drives this handoff, and its first actions.
    fn handoff_machine(
        &self,
        spawn: &SpawnFacts,
        incumbent_pid: Option<u32>,
        now: Instant,
    ) -> (HandoffKind, Vec<super::ForeignAction>) {
        match self.config.daemon {
            DaemonKind::Library => {
                let config = HandoffConfig {
                    fd_count: self.config.fd_count,
                    timeouts: spawn.timeouts,
                    probe: self.config.probe,
                    force: spawn.force,
                    ..HandoffConfig::new(
                        spawn.ticket.handoff_id,
                        spawn.ticket.generation,
                        self.config.mode,
                        incumbent_pid.is_some(),
                    )
                };
                let machine = HandoffKind::Library(HandoffMachine::new(config, now));
                (machine, Vec::new())
            }
            DaemonKind::Foreign { ready, .. } => {
                let config = ForeignConfig {
                    handoff_id: spawn.ticket.handoff_id,
                    successor_pid: spawn.pid,
                    ready,
                    probe: self.config.probe,
                    timeouts: spawn.timeouts,
                };
                let (machine, actions) = ForeignHandoffMachine::start(config, now);
                (HandoffKind::Foreign(machine), actions)
            }
        }
    }

    fn on_spawn_failed(&mut self, ticket: Ticket, reason: String, now: Instant, out: &mut Out) {
        if !ticket.restart {
            // The caller hears the error; nothing changed.
            return;
        }
        out.announce(SupervisorEvent::RestartFailed { reason });
        if let State::Starting { due } = &mut self.state {
            let delay = self.config.timeouts.restart_backoff(self.failures);
            self.failures = self.failures.saturating_add(1);
            *due = Some(now + delay);
            out.note(Note::RestartScheduled { delay });
        }
    }

    // ------------------------------------------------------- the losses

    /// Nobody serves any more because `failure` happened: a generation in
    /// probation takes over (I14), or the restart policy decides. The one
    /// place the policy and its backoff are applied.
    fn after_loss(
        &mut self,
        failure: Failure,
        clean: bool,
        uptime: Option<Duration>,
        now: Instant,
        out: &mut Out,
    ) {
        if matches!(self.state, State::Stopping { .. } | State::Finished) {
            return;
        }
        if let Some(index) = self.retirees.iter().rposition(|r| r.machine.in_probation()) {
            out.note(Note::ResumingProbation {
                generation: self.retirees[index].generation.id,
                failed: failure.generation,
                reason: failure.reason.clone(),
            });
            self.state = State::Starting { due: None };
            self.retirees[index].resumed_for = Some(failure);
            self.step_retiree(index, RetireInput::Resume, now, out);
            return;
        }
        let restart = match self.config.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !clean,
            RestartPolicy::Never => false,
        };
        if !restart {
            out.note(Note::NoRestart);
            self.state = State::Starting { due: None };
            self.begin_stop(now, out);
            return;
        }
        if uptime.is_some_and(|uptime| uptime >= RESTART_STABLE) {
            self.failures = 0;
        }
        let delay = self.config.timeouts.restart_backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        out.note(Note::RestartScheduled { delay });
        self.state = State::Starting {
            due: Some(now + delay),
        };
    }

    /// The live generation outside a handoff exited.
    fn live_exited(&mut self, status: ExitStatus, now: Instant, out: &mut Out) {
        let (live, condemned) = match std::mem::replace(&mut self.state, State::Finished) {
            State::Serving { live, condemned } => (live, condemned),
            other => {
                self.state = other;
                return;
            }
        };
        out.announce(SupervisorEvent::GenerationExited {
            generation: live.id,
            pid: live.pid,
            status,
            expected: false,
        });
        out.push(LifecycleAction::Forget {
            generation: live.id,
        });
        // A generation the supervisor condemned failed, whatever its status
        // (it may exit 0 on its own before the SIGKILL lands).
        let clean = condemned.is_none() && status.is_clean();
        let failure = Failure {
            generation: live.id,
            pid: live.pid,
            reason: condemned.unwrap_or_else(|| format!("exited ({status})")),
        };
        self.state = State::Starting { due: None };
        let uptime = now.saturating_duration_since(live.started);
        self.after_loss(failure, clean, Some(uptime), now, out);
    }

    // -------------------------------------------------------- probation

    /// Feeds `HoldProbation(until)` to every old generation in probation.
    fn hold_probations(&mut self, until: Instant, now: Instant, out: &mut Out) {
        for index in (0..self.retirees.len()).rev() {
            if self.retirees[index].machine.in_probation() {
                self.step_retiree(index, RetireInput::HoldProbation(until), now, out);
            }
        }
    }

    fn any_in_probation(&self) -> bool {
        self.retirees.iter().any(|r| r.machine.in_probation())
    }

    // ------------------------------------------------------------- stop

    fn begin_stop(&mut self, now: Instant, out: &mut Out) {
        let (live, handoff) = match std::mem::replace(&mut self.state, State::Finished) {
            stopping @ (State::Stopping { .. } | State::Finished) => {
                self.state = stopping;
                return;
            }
            State::Starting { .. } => (None, None),
            State::Serving { live, .. } => (Some(live), None),
            State::HandingOff { incumbent, handoff } => match incumbent {
                Incumbent::Serving(live) | Incumbent::Resumed(live) => (Some(live), Some(handoff)),
                Incumbent::Absent | Incumbent::Lost(_) => (None, Some(handoff)),
            },
        };
        out.announce(SupervisorEvent::Stopping);
        let cancelling = handoff.is_some();
        self.state = State::Stopping {
            live,
            handoff,
            kill: KillTimer::AfterHandoff,
        };
        if cancelling {
            // Rolled back first; the stop signal follows the verdict.
            self.cancel_handoff(now, out);
        } else {
            self.terminate_all(now, out);
        }
    }

    /// The stop signal to every generation; SIGKILL after the stop drain.
    fn terminate_all(&mut self, now: Instant, out: &mut Out) {
        if let State::Stopping { live, kill, .. } = &mut self.state {
            *kill = KillTimer::At(now + STOP_DRAIN + self.config.timeouts.kill_grace);
            if let Some(live) = live {
                out.signal(live.id, GenerationSignal::Stop);
            }
        }
        for retiree in &self.retirees {
            out.signal(retiree.generation.id, GenerationSignal::Stop);
        }
    }

    /// A kill grace after SIGKILL some exits were still not heard: the
    /// stop ends anyway, naming them (the driver's handles kill their
    /// process groups as it ends).
    fn end_stop_unheard(&mut self, out: &mut Out) {
        let mut unheard: Vec<GenerationId> =
            self.retirees.drain(..).map(|r| r.generation.id).collect();
        if let State::Stopping { live, handoff, .. } = &mut self.state {
            unheard.extend(live.take().map(|live| live.id));
            unheard.extend(handoff.take().map(|handoff| handoff.successor.id));
        }
        out.note(Note::StopUnheard {
            generations: unheard,
        });
    }

    fn check_finished(&mut self, out: &mut Out) {
        if let State::Stopping {
            live: None,
            handoff: None,
            ..
        } = &self.state
            && self.retirees.is_empty()
        {
            self.state = State::Finished;
            out.push(LifecycleAction::Stopped);
        }
    }

    // ------------------------------------------------------------- time

    fn on_tick(&mut self, now: Instant, out: &mut Out) {
        self.tick_handoff(now, out);
        let due: Vec<usize> = (0..self.retirees.len())
            .filter(|&i| {
                self.retirees[i]
                    .machine
                    .next_wakeup()
                    .is_some_and(|at| at <= now)
            })
            .collect();
        for index in due.into_iter().rev() {
            self.step_retiree(index, RetireInput::Tick, now, out);
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.config.timeouts.heartbeat_interval;
            self.heartbeat(out);
        }
        match &mut self.state {
            State::Starting { due: Some(at) } if *at <= now => {
                let ticket = self.ticket(true);
                self.state = State::Starting { due: None };
                out.push(LifecycleAction::Restart {
                    ticket,
                    build: self.last_committed.clone(),
                });
            }
            State::Stopping { live, kill, .. } => match kill {
                KillTimer::At(at) if *at <= now => {
                    *kill = KillTimer::Sent(now + self.config.timeouts.kill_grace);
                    if let Some(live) = live {
                        out.signal(live.id, GenerationSignal::Kill);
                    }
                    for retiree in &self.retirees {
                        out.signal(retiree.generation.id, GenerationSignal::Kill);
                    }
                }
                KillTimer::Sent(at) if *at <= now => self.end_stop_unheard(out),
                _ => {}
            },
            _ => {}
        }
    }

    /// A heartbeat to every generation with a control connection.
    fn heartbeat(&self, out: &mut Out) {
        if self.config.daemon != DaemonKind::Library {
            return;
        }
        let generations = self
            .live()
            .into_iter()
            .chain(self.handoff().map(|h| &h.successor))
            .chain(self.retirees.iter().map(|r| &r.generation));
        for generation in generations {
            out.push(LifecycleAction::Send {
                to: generation.id,
                handoff_id: generation.handoff_id,
                message: Message::Heartbeat,
            });
        }
    }
}

/// The actions of one step.
#[derive(Debug, Default)]
struct Out {
    actions: Vec<LifecycleAction>,
}

impl Out {
    fn push(&mut self, action: LifecycleAction) {
        self.actions.push(action);
    }

    fn note(&mut self, note: Note) {
        self.push(LifecycleAction::Note(note));
    }

    fn announce(&mut self, event: SupervisorEvent) {
        self.push(LifecycleAction::Announce(event));
    }

    fn signal(&mut self, to: GenerationId, signal: GenerationSignal) {
        self.push(LifecycleAction::Signal { to, signal });
    }
}

/// What a handoff machine is made from.
struct SpawnFacts {
    ticket: Ticket,
    pid: u32,
    timeouts: Timeouts,
    force: bool,
}

/// A retiree's plan, by daemon kind, mode and probation: the one place a
/// [`RetireMachine`] is chosen.
fn retire_plan(
    config: &LifecycleConfig,
    probation: Duration,
    now: Instant,
) -> (RetireMachine, Vec<RetireAction>) {
    let timeouts = config.timeouts;
    let overlap = config.mode == Mode::Overlap;
    match config.daemon {
        DaemonKind::Library if overlap && !probation.is_zero() => {
            RetireMachine::with_probation(probation, timeouts, now)
        }
        DaemonKind::Library => RetireMachine::start(overlap, timeouts, now),
        DaemonKind::Foreign { quiesce, .. } if !probation.is_zero() => {
            let style = if quiesce {
                ForeignProbation::Quiesce
            } else {
                ForeignProbation::WarmStandby
            };
            RetireMachine::foreign_with_probation(probation, style, timeouts, now)
        }
        DaemonKind::Foreign { .. } => RetireMachine::signal_first(timeouts, now),
    }
}

impl Handoff {
    fn next_wakeup(&self) -> Option<Instant> {
        let machine = match &self.machine {
            HandoffKind::Library(machine) => machine.next_wakeup(),
            HandoffKind::Foreign(machine) => machine.next_wakeup(),
        };
        match self.exit {
            SuccessorExit::Held { until, .. } => Some(machine.map_or(until, |at| at.min(until))),
            SuccessorExit::Running | SuccessorExit::Closed | SuccessorExit::Reaped => machine,
        }
    }
}

fn failure_of(generation: &Generation, reason: String) -> Failure {
    Failure {
        generation: generation.id,
        pid: generation.pid,
        reason,
    }
}
