//! A daemon generation's machine: a successor until its commit, the
//! incumbent after it.
//!
//! ```text
//! AwaitHelloAck -HelloAck-> ReceivingFds -Fds*-> WarmingUp -user begin-> AwaitBegin
//!   AwaitBegin -Begin-> Begun -user ready-> AwaitCommit -Commit-> Serving
//!   (any state before Serving) -Abort | supervisor lost-> Ended
//! Serving -Prepare-> Draining -hook-> Drained -Seal-> Sealing -hook-> Sealed
//!   Drained | Sealed -Retire-> Retired
//!   Drained -ResumeAfterAbort-> Resuming -hook-> Serving
//!   Sealed -ResumeAfterAbort | supervisor lost-> Relocking -> Resuming
//!   Draining | Sealing -ResumeAfterAbort | supervisor lost-> *Aborted -hook-> Resuming
//! ```
//!
//! Invariants (ARCHITECTURE.md): the lock is released only after `seal`
//! returned `Ok` (I4); a sealed incumbent re-takes the lock before resuming,
//! and gives up only after `relock` when a live holder kept it — the holder
//! then is a committed successor (I5); a successor that loses its supervisor
//! before Commit ends (I8); the state fingerprint is checked before Ready (I3).

use std::time::{Duration, Instant};

use crate::timeouts::Timeouts;
use crate::wire::{AbortReason, Health, Message, Mode, SealInfo, Snapshot};

/// A hook the driver must run on the hook thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookCall {
    /// `Drainable::drain` with this deadline.
    Drain {
        /// Monotonic deadline for the drain.
        deadline: Instant,
    },
    /// `Drainable::seal`.
    Seal,
    /// `Drainable::resume_after_abort` (the lock is held again).
    Resume,
    /// `Drainable::snapshot`.
    Snapshot,
}

/// How a hook (or a lock action) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Drain returned.
    Drained {
        /// Connections left open.
        open_connections: u32,
        /// Accepting stopped.
        accept_closed: bool,
    },
    /// Drain failed.
    DrainFailed(String),
    /// Seal succeeded.
    Sealed(SealInfo),
    /// Seal failed; the lock is still held.
    SealFailed(String),
    /// Resume succeeded.
    Resumed,
    /// Resume failed.
    ResumeFailed(String),
    /// The lock is held again.
    Relocked,
    /// The lock stayed held by someone else past the relock bound.
    RelockTimedOut,
    /// A snapshot.
    Snapshot(Snapshot),
}

/// What the daemon's code tells the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCall {
    /// Warm-up is done.
    Warm,
    /// State is open; report it.
    Ready {
        /// The fingerprint of the state opened, if the daemon has state.
        fingerprint: Option<crate::wire::Fingerprint>,
        /// Revision count of the state.
        revisions: u64,
        /// Its own verdict.
        health: Health,
        /// Addresses of the listeners it took.
        addresses: Vec<String>,
    },
    /// The daemon cannot go on.
    Fail(AbortReason),
    /// After Commit: the process no longer dies with its supervisor.
    Detached,
}

/// An event the driver feeds in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenerationInput {
    /// A frame from the supervisor.
    Frame {
        /// Its handoff id.
        handoff_id: u64,
        /// Its message.
        message: Message,
    },
    /// The supervisor's connection hit EOF or failed.
    Closed,
    /// A hook finished.
    Hook(HookOutcome),
    /// The daemon's code called in.
    User(UserCall),
    /// Time passed.
    Tick,
    /// A supervisor asks on the rendezvous connection to take this
    /// orphaned generation over (its `Adopt`).
    AdoptionOffered {
        /// The generation number its record gives.
        generation: u64,
    },
}

/// Why a generation's session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The supervisor aborted the handoff before the commit.
    Aborted(AbortReason),
    /// The supervisor went away before the commit.
    SupervisorLost,
    /// The supervisor broke the protocol before the commit.
    Violation(String),
    /// Retired after a successor committed: exit.
    Retired,
    /// A hook failed where no recovery is possible: exit so that the
    /// supervisor starts a fresh generation.
    Failed(String),
    /// The daemon itself failed before Ready.
    Gave(AbortReason),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenerationAction {
    /// Send a message to the supervisor.
    Send(Message),
    /// Take the named fds that came with the Fds frame just fed.
    KeepFds,
    /// Give the daemon the connections that came with the Connections
    /// frame just fed.
    KeepConnections,
    /// Keep the items that came with the Items frame just fed (I21).
    KeepItems,
    /// The coming (or current) drain may hand over at most this many
    /// connections (I20).
    ConnectionBudget(u32),
    /// Every promised fd arrived: the daemon may take its listeners.
    FdsComplete {
        /// Exclusive or overlap.
        mode: Mode,
        /// Whether an incumbent exists (this process is a successor).
        has_incumbent: bool,
        /// Generation number.
        generation: u64,
    },
    /// Begin arrived.
    Began(Option<SealInfo>),
    /// Commit arrived and was acknowledged.
    Committed,
    /// Run a hook on the hook thread.
    RunHook(HookCall),
    /// Release the data-directory lock (after a successful seal).
    ReleaseLock,
    /// Re-take the data-directory lock, waiting at most `Timeouts::relock`.
    Relock,
    /// Close the connection to the supervisor (it broke the protocol).
    CloseConnection(String),
    /// The offered adoption is taken: the offered connection is the
    /// control connection now; answer `Adopted` on it with the listeners.
    AcceptAdoption,
    /// The offered adoption is refused (why): close that connection.
    RefuseAdoption(String),
    /// The session is over.
    End(Ending),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    AwaitHelloAck,
    ReceivingFds {
        expected: u32,
        received: u32,
        mode: Mode,
        has_incumbent: bool,
        generation: u64,
    },
    WarmingUp,
    AwaitBegin,
    Begun {
        seal: Option<SealInfo>,
    },
    AwaitCommit,
    /// Commit received; `ack` is false once the supervisor is gone.
    Committing {
        ack: bool,
    },
    Serving,
    Draining,
    DrainingAborted {
        ack: bool,
    },
    Drained,
    Sealing,
    SealingAborted {
        ack: bool,
    },
    Sealed,
    Relocking {
        ack: bool,
    },
    Resuming {
        ack: bool,
    },
    Ended,
}

super::names::state_names! {
    /// A generation's states, by name.
    pub enum GenerationState {
        /// Hello sent.
        AwaitHelloAck => "await_hello_ack",
        /// Receiving the named fds.
        ReceivingFds => "receiving_fds",
        /// The daemon warms up.
        WarmingUp => "warming_up",
        /// Warm sent; waiting for Begin.
        AwaitBegin => "await_begin",
        /// Begin received; the daemon opens its state.
        Begun => "begun",
        /// Ready sent; waiting for Commit.
        AwaitCommit => "await_commit",
        /// Commit received; detaching from the supervisor's lifetime before
        /// acknowledging it.
        Committing => "committing",
        /// Serving (the incumbent).
        Serving => "serving",
        /// The drain hook runs.
        Draining => "draining",
        /// The drain hook runs; a resume is pending.
        DrainingAborted => "draining_aborted",
        /// Drained; waiting for Seal, Retire or a resume.
        Drained => "drained",
        /// The seal hook runs.
        Sealing => "sealing",
        /// The seal hook runs; a resume is pending.
        SealingAborted => "sealing_aborted",
        /// Sealed; the lock is released.
        Sealed => "sealed",
        /// Re-taking the lock.
        Relocking => "relocking",
        /// The resume hook runs.
        Resuming => "resuming",
        /// The session is over.
        Ended => "ended",
    }
}

impl GenerationState {
    /// Whether a process in this state is a successor (not yet committed).
    pub fn is_successor(self) -> bool {
        matches!(
            self,
            GenerationState::AwaitHelloAck
                | GenerationState::ReceivingFds
                | GenerationState::WarmingUp
                | GenerationState::AwaitBegin
                | GenerationState::Begun
                | GenerationState::AwaitCommit
                | GenerationState::Committing
        )
    }
}

impl State {
    fn state(&self) -> GenerationState {
        match self {
            State::AwaitHelloAck => GenerationState::AwaitHelloAck,
            State::ReceivingFds { .. } => GenerationState::ReceivingFds,
            State::WarmingUp => GenerationState::WarmingUp,
            State::AwaitBegin => GenerationState::AwaitBegin,
            State::Begun { .. } => GenerationState::Begun,
            State::AwaitCommit => GenerationState::AwaitCommit,
            State::Committing { .. } => GenerationState::Committing,
            State::Serving => GenerationState::Serving,
            State::Draining => GenerationState::Draining,
            State::DrainingAborted { .. } => GenerationState::DrainingAborted,
            State::Drained => GenerationState::Drained,
            State::Sealing => GenerationState::Sealing,
            State::SealingAborted { .. } => GenerationState::SealingAborted,
            State::Sealed => GenerationState::Sealed,
            State::Relocking { .. } => GenerationState::Relocking,
            State::Resuming { .. } => GenerationState::Resuming,
            State::Ended => GenerationState::Ended,
        }
    }

    fn name(&self) -> &'static str {
        self.state().as_str()
    }

    /// States in which the supervisor's silence means it is gone.
    fn watches_supervisor(&self) -> bool {
        !matches!(self, State::Serving | State::Ended)
    }
}

/// A generation's machine. It starts having sent Hello (the driver sends it
/// before the first step).
#[derive(Debug)]
pub struct GenerationMachine {
    state: State,
    handoff_id: u64,
    /// Learnt at HelloAck (0 before).
    generation: u64,
    supervisor_present: bool,
    last_heard: Instant,
    liveness: Duration,
    /// The `Schemas` message sent after a `HelloAck` of version 2 or later
    /// (`None`: this build declares no schema).
    schemas: Option<Message>,
    /// The protocol version `HelloAck` chose (0 before).
    version: u16,
}

impl GenerationMachine {
    /// A machine whose Hello was just sent at `now`.
    pub fn new(timeouts: &Timeouts, now: Instant) -> Self {
        GenerationMachine {
            state: State::AwaitHelloAck,
            handoff_id: 0,
            generation: 0,
            supervisor_present: true,
            last_heard: now,
            liveness: timeouts.liveness,
            schemas: None,
            version: 0,
        }
    }

    /// The protocol version the supervisor chose (0 before `HelloAck`).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Declares the blob schemas this build writes and reads (I21).
    pub fn with_schemas(
        mut self,
        produces: Vec<crate::wire::Schema>,
        accepts: Vec<crate::wire::SchemaRange>,
    ) -> Self {
        if !produces.is_empty() || !accepts.is_empty() {
            self.schemas = Some(Message::Schemas { produces, accepts });
        }
        self
    }

    /// The `Schemas` this side sent after its `HelloAck`, if the session
    /// speaks them: sent again, after its Hello, to a supervisor that
    /// adopts it.
    pub fn schemas_sent(&self) -> Option<Message> {
        self.schemas
            .clone()
            .filter(|_| self.version >= crate::wire::ITEMS_VERSION)
    }

    /// The Hello this side sends first.
    /// `capabilities` are `CAP_*` bits of `crate::wire`.
    pub fn hello(
        pid: u32,
        build_id: String,
        versions: crate::wire::VersionRange,
        capabilities: u64,
    ) -> Message {
        Message::Hello {
            role: crate::wire::Role::Generation,
            pid,
            build_id,
            versions,
            capabilities,
        }
    }

    /// The handoff id messages must carry now.
    pub fn handoff_id(&self) -> u64 {
        self.handoff_id
    }

    /// The current state's name (logs, fault points).
    pub fn state_name(&self) -> &'static str {
        self.state.name()
    }

    /// The current state.
    pub fn state(&self) -> GenerationState {
        self.state.state()
    }

    /// Whether the supervisor is still connected.
    pub fn supervisor_present(&self) -> bool {
        self.supervisor_present
    }

    /// Whether this generation serves without a supervisor: one may adopt
    /// it.
    pub fn is_orphaned(&self) -> bool {
        !self.supervisor_present && self.state == State::Serving
    }

    /// When a `Tick` is due at the latest.
    pub fn next_wakeup(&self) -> Option<Instant> {
        (self.supervisor_present && self.state.watches_supervisor())
            .then(|| self.last_heard + self.liveness)
    }

    /// Feeds one input observed at `now`.
    pub fn step(&mut self, input: GenerationInput, now: Instant) -> Vec<GenerationAction> {
        let mut out = Vec::new();
        match input {
            GenerationInput::Frame {
                handoff_id,
                message,
            } => {
                if self.supervisor_present {
                    self.last_heard = now;
                    self.on_frame(handoff_id, message, now, &mut out);
                }
            }
            GenerationInput::Closed => self.supervisor_lost(&mut out),
            GenerationInput::Hook(outcome) => self.on_hook(outcome, &mut out),
            GenerationInput::User(call) => self.on_user(call, &mut out),
            GenerationInput::Tick => {}
            GenerationInput::AdoptionOffered { generation } => {
                self.on_adoption(generation, now, &mut out)
            }
        }
        if self.supervisor_present
            && self.state.watches_supervisor()
            && now.saturating_duration_since(self.last_heard) >= self.liveness
        {
            self.supervisor_lost(&mut out);
        }
        out
    }

    /// Only an orphan that serves is adopted, and only by a supervisor
    /// whose record names this generation.
    fn on_adoption(&mut self, generation: u64, now: Instant, out: &mut Vec<GenerationAction>) {
        let refusal = if self.supervisor_present {
            Some("a supervisor is connected".to_owned())
        } else if self.state != State::Serving {
            Some(format!("not serving ({})", self.state.name()))
        } else if generation != self.generation {
            Some(format!(
                "this is generation {}, not {generation}",
                self.generation
            ))
        } else {
            None
        };
        match refusal {
            Some(why) => out.push(GenerationAction::RefuseAdoption(why)),
            None => {
                self.supervisor_present = true;
                self.last_heard = now;
                out.push(GenerationAction::AcceptAdoption);
            }
        }
    }

    fn send(&self, message: Message, out: &mut Vec<GenerationAction>) {
        if self.supervisor_present {
            out.push(GenerationAction::Send(message));
        }
    }

    fn on_frame(
        &mut self,
        handoff_id: u64,
        message: Message,
        now: Instant,
        out: &mut Vec<GenerationAction>,
    ) {
        // The first answer to Hello (HelloAck, Refused, or an Abort that
        // overtook them) brings the handoff id.
        let adopts_id = matches!(
            (&self.state, &message),
            (
                State::AwaitHelloAck,
                Message::HelloAck { .. } | Message::Refused { .. } | Message::Abort { .. }
            ) | (State::Serving, Message::Prepare { .. })
        );
        if adopts_id {
            if matches!(message, Message::Prepare { .. }) && handoff_id <= self.handoff_id {
                let detail = format!(
                    "Prepare carried handoff id {handoff_id}, not newer than {}",
                    self.handoff_id
                );
                self.violation(detail, out);
                return;
            }
            self.handoff_id = handoff_id;
        } else if handoff_id != self.handoff_id {
            let detail = format!(
                "{} carried handoff id {handoff_id}, expected {}",
                message.name(),
                self.handoff_id
            );
            self.violation(detail, out);
            return;
        }
        match (&mut self.state, message) {
            (_, Message::Heartbeat) => {}
            (_, Message::SnapshotRequest) => {
                out.push(GenerationAction::RunHook(HookCall::Snapshot))
            }
            (
                State::AwaitHelloAck,
                Message::HelloAck {
                    version,
                    mode,
                    has_incumbent,
                    fd_count,
                    generation,
                },
            ) => {
                self.generation = generation;
                self.version = version;
                // Before Warm, so that a successor that cannot read the
                // incumbent's state is refused before the drain (I21).
                if version >= crate::wire::ITEMS_VERSION
                    && let Some(schemas) = self.schemas.clone()
                {
                    out.push(GenerationAction::Send(schemas));
                }
                self.state = State::ReceivingFds {
                    expected: fd_count,
                    received: 0,
                    mode,
                    has_incumbent,
                    generation,
                };
                self.fds_maybe_complete(out);
            }
            (State::AwaitHelloAck, Message::Refused { reason, .. }) => {
                self.end(Ending::Aborted(reason), out)
            }
            (
                State::ReceivingFds {
                    expected, received, ..
                },
                Message::Fds { entries },
            ) => {
                let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
                match received.checked_add(count) {
                    Some(total) if total <= *expected => {
                        *received = total;
                        out.push(GenerationAction::KeepFds);
                        self.fds_maybe_complete(out);
                    }
                    _ => {
                        let detail = format!(
                            "{count} more fds than the {expected} HelloAck announced ({received} already)"
                        );
                        self.violation(detail, out);
                    }
                }
            }
            (State::AwaitBegin, Message::Begin { seal }) => {
                self.state = State::Begun { seal };
                out.push(GenerationAction::Began(seal));
            }
            (State::AwaitCommit, Message::Commit) => {
                // CommitAck waits for Detached: until then this process still
                // dies with the supervisor, and a supervisor that saw the ack
                // may retire the incumbent (I8).
                self.state = State::Committing { ack: true };
                out.push(GenerationAction::Committed);
            }
            (
                State::AwaitHelloAck
                | State::ReceivingFds { .. }
                | State::WarmingUp
                | State::AwaitBegin
                | State::Begun { .. }
                | State::AwaitCommit
                | State::Committing { .. },
                Message::Abort { reason },
            ) => self.end(Ending::Aborted(reason), out),
            (State::Serving, Message::Prepare { drain_grace_ms, .. }) => {
                self.state = State::Draining;
                let deadline = now + Duration::from_millis(drain_grace_ms);
                out.push(GenerationAction::RunHook(HookCall::Drain { deadline }));
            }
            (State::Drained, Message::Seal) => {
                self.state = State::Sealing;
                out.push(GenerationAction::RunHook(HookCall::Seal));
            }
            (State::Drained | State::Sealed, Message::Retire) => self.end(Ending::Retired, out),
            (State::Drained, Message::ResumeAfterAbort) => {
                self.state = State::Resuming { ack: true };
                out.push(GenerationAction::RunHook(HookCall::Resume));
            }
            (State::Draining, Message::ResumeAfterAbort) => {
                self.state = State::DrainingAborted { ack: true };
            }
            (State::Sealing, Message::ResumeAfterAbort) => {
                self.state = State::SealingAborted { ack: true };
            }
            (State::Sealed, Message::ResumeAfterAbort) => {
                self.state = State::Relocking { ack: true };
                out.push(GenerationAction::Relock);
            }
            // Connections are the daemon's in any state: never dropped here.
            (_, Message::Connections { .. }) => out.push(GenerationAction::KeepConnections),
            (_, Message::Items { .. }) => out.push(GenerationAction::KeepItems),
            // Sent just before Prepare (so it is in place when the drain
            // hook starts), or during the drain.
            (State::Serving | State::Draining, Message::ConnectionBudget { connections }) => {
                out.push(GenerationAction::ConnectionBudget(connections))
            }
            // A budget that arrives after its drain ended grants nothing.
            (_, Message::ConnectionBudget { .. }) => {}
            (state, message) => {
                let detail = format!("got {} in state {}", message.name(), state.name());
                self.violation(detail, out);
            }
        }
    }

    fn fds_maybe_complete(&mut self, out: &mut Vec<GenerationAction>) {
        if let State::ReceivingFds {
            expected,
            received,
            mode,
            has_incumbent,
            generation,
        } = self.state
            && received == expected
        {
            self.state = State::WarmingUp;
            out.push(GenerationAction::FdsComplete {
                mode,
                has_incumbent,
                generation,
            });
        }
    }

    fn on_hook(&mut self, outcome: HookOutcome, out: &mut Vec<GenerationAction>) {
        match (&self.state, outcome) {
            (_, HookOutcome::Snapshot(snapshot)) => {
                self.send(Message::SnapshotReport(snapshot), out)
            }
            (
                State::Draining,
                HookOutcome::Drained {
                    open_connections,
                    accept_closed,
                },
            ) => {
                self.state = State::Drained;
                self.send(
                    Message::Drained {
                        open_connections,
                        accept_closed,
                    },
                    out,
                );
            }
            (State::Draining, HookOutcome::DrainFailed(reason)) => {
                self.state = State::Drained;
                self.send(
                    Message::Failed {
                        reason: AbortReason::IncumbentFailed {
                            detail: format!("drain failed: {reason}"),
                        },
                    },
                    out,
                );
            }
            (
                State::DrainingAborted { ack },
                HookOutcome::Drained { .. } | HookOutcome::DrainFailed(_),
            ) => {
                self.state = State::Resuming { ack: *ack };
                out.push(GenerationAction::RunHook(HookCall::Resume));
            }
            (State::Sealing, HookOutcome::Sealed(info)) => {
                self.state = State::Sealed;
                out.push(GenerationAction::ReleaseLock);
                self.send(Message::SealComplete(info), out);
            }
            (State::Sealing, HookOutcome::SealFailed(reason)) => {
                self.state = State::Drained;
                self.send(Message::SealFailed { reason }, out);
            }
            (
                State::SealingAborted { ack },
                HookOutcome::Sealed(_) | HookOutcome::SealFailed(_),
            ) => {
                // The lock was never released: resume directly.
                self.state = State::Resuming { ack: *ack };
                out.push(GenerationAction::RunHook(HookCall::Resume));
            }
            (State::Relocking { ack }, HookOutcome::Relocked) => {
                self.state = State::Resuming { ack: *ack };
                out.push(GenerationAction::RunHook(HookCall::Resume));
            }
            (State::Relocking { .. }, HookOutcome::RelockTimedOut) => {
                // A live process kept the lock past the bound: it is a
                // committed successor (I5). Serving is its job now.
                self.send(
                    Message::Failed {
                        reason: AbortReason::IncumbentFailed {
                            detail: "data-directory lock held by another live process".into(),
                        },
                    },
                    out,
                );
                self.end(Ending::Retired, out);
            }
            (State::Resuming { ack }, HookOutcome::Resumed) => {
                let ack = *ack;
                self.state = State::Serving;
                if ack {
                    self.send(Message::ResumeAck, out);
                }
            }
            (State::Resuming { .. }, HookOutcome::ResumeFailed(reason)) => {
                self.send(
                    Message::Failed {
                        reason: AbortReason::IncumbentFailed {
                            detail: format!("resume failed: {reason}"),
                        },
                    },
                    out,
                );
                self.end(Ending::Failed(reason), out);
            }
            (state, outcome) => {
                // A hook result the state did not ask for is a driver bug;
                // fail closed rather than guess.
                let detail = format!("hook outcome {outcome:?} in state {}", state.name());
                self.end(Ending::Failed(detail), out);
            }
        }
    }

    fn on_user(&mut self, call: UserCall, out: &mut Vec<GenerationAction>) {
        match (&self.state, call) {
            (State::WarmingUp, UserCall::Warm) => {
                self.state = State::AwaitBegin;
                self.send(Message::Warm, out);
            }
            (
                State::Begun { seal },
                UserCall::Ready {
                    fingerprint,
                    revisions,
                    health,
                    addresses,
                },
            ) => {
                if let Some(seal) = seal
                    && fingerprint != Some(seal.fingerprint)
                {
                    let reason = AbortReason::FingerprintMismatch {
                        expected: seal.fingerprint,
                        actual: fingerprint.unwrap_or(crate::wire::Fingerprint([0; 32])),
                    };
                    self.send(
                        Message::Failed {
                            reason: reason.clone(),
                        },
                        out,
                    );
                    self.end(Ending::Gave(reason), out);
                    return;
                }
                self.state = State::AwaitCommit;
                self.send(
                    Message::Ready {
                        addresses,
                        health,
                        revisions,
                    },
                    out,
                );
            }
            (
                State::ReceivingFds { .. }
                | State::WarmingUp
                | State::AwaitBegin
                | State::Begun { .. },
                UserCall::Fail(reason),
            ) => {
                self.send(
                    Message::Failed {
                        reason: reason.clone(),
                    },
                    out,
                );
                self.end(Ending::Gave(reason), out);
            }
            (State::Committing { ack }, UserCall::Detached) => {
                let ack = *ack;
                self.state = State::Serving;
                if ack {
                    self.send(Message::CommitAck, out);
                }
            }
            (State::Ended, _) => {}
            (state, call) => {
                let detail = format!("daemon call {call:?} in state {}", state.name());
                self.end(Ending::Failed(detail), out);
            }
        }
    }

    fn violation(&mut self, detail: String, out: &mut Vec<GenerationAction>) {
        out.push(GenerationAction::CloseConnection(detail.clone()));
        match self.state {
            State::Ended => {}
            State::AwaitHelloAck
            | State::ReceivingFds { .. }
            | State::WarmingUp
            | State::AwaitBegin
            | State::Begun { .. }
            | State::AwaitCommit => {
                self.supervisor_present = false;
                self.end(Ending::Violation(detail), out);
            }
            State::Committing { .. } => self.supervisor_lost(out),
            _ => self.supervisor_lost(out),
        }
    }

    fn supervisor_lost(&mut self, out: &mut Vec<GenerationAction>) {
        if !self.supervisor_present {
            return;
        }
        self.supervisor_present = false;
        match self.state {
            State::AwaitHelloAck
            | State::ReceivingFds { .. }
            | State::WarmingUp
            | State::AwaitBegin
            | State::Begun { .. }
            | State::AwaitCommit => self.end(Ending::SupervisorLost, out),
            // Committed: serve once detached; a sealed incumbent gives up
            // after `relock` while we hold the lock (I5).
            State::Committing { .. } => self.state = State::Committing { ack: false },
            // Orphaned but serving: keep serving (the listeners are ours too).
            State::Serving | State::Ended => {}
            State::Draining => self.state = State::DrainingAborted { ack: false },
            State::Sealing => self.state = State::SealingAborted { ack: false },
            State::DrainingAborted { .. } => self.state = State::DrainingAborted { ack: false },
            State::SealingAborted { .. } => self.state = State::SealingAborted { ack: false },
            State::Drained => {
                self.state = State::Resuming { ack: false };
                out.push(GenerationAction::RunHook(HookCall::Resume));
            }
            State::Sealed => {
                self.state = State::Relocking { ack: false };
                out.push(GenerationAction::Relock);
            }
            State::Relocking { .. } => self.state = State::Relocking { ack: false },
            State::Resuming { .. } => self.state = State::Resuming { ack: false },
        }
    }

    fn end(&mut self, ending: Ending, out: &mut Vec<GenerationAction>) {
        self.state = State::Ended;
        out.push(GenerationAction::End(ending));
    }
}
