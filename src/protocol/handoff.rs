//! The supervisor's machine for one handoff: from the successor's Hello to a
//! verdict (committed or rolled back).
//!
//! ```text
//!            exclusive                          overlap / no incumbent
//! AwaitHello -Hello-> WarmingUp -Warm-> Draining    WarmingUp -Warm-> Beginning
//!   Draining -Drained-> Sealing -SealComplete-> Beginning
//!   Beginning -Ready(healthy)-> Committing -CommitAck-> Done(Committed)
//!   (health gate) Beginning -Ready(healthy)-> Probing -ProbePassed-> Committing
//!                                             Probing -ProbeFailed-> Aborting
//!   any phase before Done --failure--> Aborting -successor reaped->
//!       Resuming -ResumeAck-> Done(RolledBack)   (or Done at once if the
//!                                                incumbent was never asked)
//!   incumbent dies before sealing: ... -> AwaitIncumbentExit -reaped->
//!       Beginning with no seal (the successor starts as on a cold start)
//!   the incumbent's drain overruns its grace (its hook is stuck), or with
//!   `force` it fails to drain or seal: it is stopped -> AwaitIncumbentExit
//! ```
//!
//! Every phase is bounded: the deadline until the verdict could still be a
//! commit; then `kill_grace` for the successor's reap (Aborting), and
//! `Timeouts::resume` for the incumbent's ResumeAck (Resuming), past which
//! the incumbent is killed and the rollback ends with nobody serving.
//!
//! Invariants enforced here (numbers from ARCHITECTURE.md): Begin with a seal
//! only after SealComplete (I3); Commit only after a healthy Ready, proven by
//! a [`ReadySeen`] token (I6); ResumeAfterAbort only after the successor was
//! reaped, so the lock it may hold is free (I5); a silent peer is dead after
//! the liveness timeout, EOF at once (I2); the overall deadline aborts (I7).

use std::time::{Duration, Instant};

use super::{ExitStatus, Side, Signal};
use crate::timeouts::{DRAIN_OVERRUN, SEAL_SILENCE_MIN, SEAL_SILENCE_SHARE, Timeouts};
use crate::wire::{AbortReason, Health, Message, Mode, PROTOCOL_VERSIONS, SealInfo, VersionRange};

/// Proof that a healthy Ready arrived; only this module makes one, and the
/// driver cannot send Commit without it (invariant I6).
#[derive(Debug, PartialEq, Eq)]
pub struct ReadySeen(());

/// What a handoff needs to know up front.
#[derive(Debug, Clone)]
pub struct HandoffConfig {
    /// The handoff's id; every message carries it.
    pub handoff_id: u64,
    /// The generation number the successor will have.
    pub generation: u64,
    /// Exclusive or overlap.
    pub mode: Mode,
    /// Whether a live incumbent takes part.
    pub has_incumbent: bool,
    /// How many named fds the successor receives.
    pub fd_count: u32,
    /// The durations in force.
    pub timeouts: Timeouts,
    /// The versions this supervisor speaks.
    pub versions: VersionRange,
    /// Whether the supervisor probes the successor's health itself between
    /// a healthy Ready and Commit (the health gate).
    pub probe: bool,
    /// Exclusive mode: an incumbent that fails to drain or seal is stopped
    /// (its stop signal, SIGKILL after `kill_grace`) and the successor takes
    /// over as after the incumbent's death, instead of a rollback.
    pub force: bool,
}

impl HandoffConfig {
    /// A config with this build's versions.
    pub fn new(handoff_id: u64, generation: u64, mode: Mode, has_incumbent: bool) -> Self {
        HandoffConfig {
            handoff_id,
            generation,
            mode,
            has_incumbent,
            fd_count: 0,
            timeouts: Timeouts::default(),
            versions: PROTOCOL_VERSIONS,
            probe: false,
            force: false,
        }
    }
}

/// An event the driver feeds in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoffInput {
    /// A decoded frame from one side.
    Frame {
        /// Who sent it.
        from: Side,
        /// The handoff id it carried.
        handoff_id: u64,
        /// The message.
        message: Message,
    },
    /// A side's control connection hit EOF or failed.
    Closed {
        /// Which side.
        side: Side,
    },
    /// A side's process was reaped.
    Exited {
        /// Which side.
        side: Side,
        /// How it ended, for the record.
        status: ExitStatus,
    },
    /// Time passed; deadlines are checked on every input.
    Tick,
    /// An operator or a shutdown wants the handoff off.
    Cancel,
    /// The health probe the driver ran after [`HandoffAction::StartProbe`]
    /// passed.
    ProbePassed,
    /// The health probe did not pass before its deadline.
    ProbeFailed {
        /// What the last attempt saw.
        detail: String,
    },
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum HandoffAction {
    /// Send a message (the driver wraps it with the handoff id).
    Send {
        /// To whom.
        to: Side,
        /// What.
        message: Message,
    },
    /// Send HelloAck's promised named fds to the successor.
    SendListeners,
    /// Send Commit to the successor.
    Commit(ReadySeen),
    /// Probe the successor's health, retrying until one attempt passes or
    /// `until` is reached; report [`HandoffInput::ProbePassed`] or
    /// [`HandoffInput::ProbeFailed`].
    StartProbe {
        /// When to give up (the probe timeout, or the handoff deadline if
        /// sooner).
        until: Instant,
    },
    /// Signal a side's process.
    Kill {
        /// Whom.
        side: Side,
        /// How.
        signal: Signal,
    },
    /// The handoff is over.
    Finish(Verdict),
}

/// Time spent in each phase; `None` for phases the handoff did not reach.
/// The phases follow each other with no gap, so they add up to `total`
/// (a phase a failure interrupted counts up to the failure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Phases {
    /// The request to the spawn: the one-handoff-at-a-time lock, the
    /// binary's checks, a pin's hash (filled in by the driver).
    #[serde(default)]
    pub request: Option<Duration>,
    /// The spawn to the handoff's first step (filled in by the driver).
    pub spawn: Option<Duration>,
    /// Spawned to Hello.
    pub hello: Option<Duration>,
    /// HelloAck to Warm (the successor's warm-up, listeners included).
    pub warm_up: Option<Duration>,
    /// Prepare to Drained (or, when the incumbent died, to its reap).
    pub drain: Option<Duration>,
    /// Seal to SealComplete.
    pub seal: Option<Duration>,
    /// Begin to Ready (a foreign successor: spawned to `READY=1`).
    pub begin: Option<Duration>,
    /// Ready to the health probe's verdict (health gate only).
    pub probe: Option<Duration>,
    /// Commit to CommitAck.
    pub commit: Option<Duration>,
    /// First failure to the rollback's end.
    pub abort: Option<Duration>,
    /// Whole handoff: the request to the verdict.
    pub total: Duration,
}

impl Phases {
    /// Every phase with its name, in the order a handoff goes through them
    /// (`total` excluded): the one list that reports, logs and benchmarks
    /// use.
    pub fn named(&self) -> [(&'static str, Option<Duration>); 10] {
        [
            ("request", self.request),
            ("spawn", self.spawn),
            ("hello", self.hello),
            ("warm_up", self.warm_up),
            ("drain", self.drain),
            ("seal", self.seal),
            ("begin", self.begin),
            ("probe", self.probe),
            ("commit", self.commit),
            ("abort", self.abort),
        ]
    }
}

/// How a handoff ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The successor is the live generation.
    Committed {
        /// Where the time went.
        phases: Phases,
        /// Whether an incumbent is left to retire.
        retire_incumbent: bool,
        /// Why the supervisor stopped the incumbent before the commit, if it
        /// did (its drain overran the grace, its seal was silent too long, or
        /// `force` after it failed).
        incumbent_stopped: Option<String>,
    },
    /// The incumbent kept (or got back) the work.
    RolledBack {
        /// Why.
        reason: AbortReason,
        /// Where the time went.
        phases: Phases,
        /// Whether the incumbent acknowledged its resumption (false when it
        /// died: the driver then starts a fresh generation).
        incumbent_serving: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Open,
    Closed,
    Reaped,
}

/// The handoff id a side's messages must carry (invariant I9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdRule {
    /// Exactly this id.
    Exactly(u64),
    /// An older id: the incumbent's own, until it is sent Prepare.
    Older,
}

#[derive(Debug, Clone, Copy)]
struct Track {
    link: Link,
    last_heard: Instant,
    id: IdRule,
}

impl Track {
    fn new(now: Instant, id: IdRule) -> Self {
        Track {
            link: Link::Open,
            last_heard: now,
            id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    WarmingUp,
    /// Drained is due by `overrun_at` (the grace it was given, plus
    /// [`DRAIN_OVERRUN`]); later, its hook is taken for stuck.
    Draining {
        overrun_at: Instant,
    },
    /// SealComplete (or a SealProgress) is due by the `silence` bound's
    /// instant: a seal may stay silent for its duration, the time left when
    /// it began divided by `SEAL_SILENCE_SHARE`, counted again at each
    /// SealProgress; a seal silent longer is taken for stuck, and the
    /// incumbent is killed as a drain that overran is. No bound (that share
    /// was under `SEAL_SILENCE_MIN`): the deadline alone.
    Sealing {
        silence: Option<(Instant, Duration)>,
    },
    /// The incumbent died (or was stopped) before it sealed and the
    /// successor is warm: Begin (without a seal) waits for the incumbent's
    /// reap, which frees the lock. A stopped incumbent is SIGKILLed at
    /// `kill_at` if it has not exited by then.
    AwaitIncumbentExit {
        kill_at: Option<Instant>,
    },
    Beginning {
        sealed: bool,
    },
    Probing {
        sealed: bool,
    },
    Committing,
    /// The successor is being killed; its reap is awaited until
    /// `give_up_at` (`kill_grace`), then taken for granted (a process stuck
    /// in the kernel; the incumbent's relock is bounded anyway, I5).
    Aborting {
        reason: AbortReason,
        resume_incumbent: bool,
        give_up_at: Instant,
    },
    /// ResumeAfterAbort sent; ResumeAck is due by `give_up_at`
    /// (`Timeouts::resume`), else the incumbent is killed.
    Resuming {
        reason: AbortReason,
        give_up_at: Instant,
    },
    Done,
}

super::names::state_names! {
    /// The supervisor's handoff phases, by name.
    pub enum HandoffState {
        /// Waiting for the successor's Hello.
        AwaitHello => "await_hello",
        /// The successor warms up.
        WarmingUp => "warming_up",
        /// The incumbent drains.
        Draining => "draining",
        /// The incumbent seals.
        Sealing => "sealing",
        /// Waiting to reap an incumbent that died.
        AwaitIncumbentExit => "await_incumbent_exit",
        /// Begin sent; waiting for Ready.
        Beginning => "beginning",
        /// A healthy Ready arrived; the supervisor probes the successor.
        Probing => "probing",
        /// Commit sent; waiting for CommitAck.
        Committing => "committing",
        /// Killing the successor.
        Aborting => "aborting",
        /// ResumeAfterAbort sent; waiting for ResumeAck.
        Resuming => "resuming",
        /// Verdict given.
        Done => "done",
    }
}

impl Phase {
    fn state(&self) -> HandoffState {
        match self {
            Phase::AwaitHello => HandoffState::AwaitHello,
            Phase::WarmingUp => HandoffState::WarmingUp,
            Phase::Draining { .. } => HandoffState::Draining,
            Phase::Sealing { .. } => HandoffState::Sealing,
            Phase::AwaitIncumbentExit { .. } => HandoffState::AwaitIncumbentExit,
            Phase::Beginning { .. } => HandoffState::Beginning,
            Phase::Probing { .. } => HandoffState::Probing,
            Phase::Committing => HandoffState::Committing,
            Phase::Aborting { .. } => HandoffState::Aborting,
            Phase::Resuming { .. } => HandoffState::Resuming,
            Phase::Done => HandoffState::Done,
        }
    }

    fn name(&self) -> &'static str {
        self.state().as_str()
    }

    /// Where time spent in this phase is counted (none once done).
    fn slot<'a>(&self, phases: &'a mut Phases) -> Option<&'a mut Option<Duration>> {
        match self {
            Phase::AwaitHello => Some(&mut phases.hello),
            Phase::WarmingUp => Some(&mut phases.warm_up),
            // A dead incumbent's exit is waited for where its drain was.
            Phase::Draining { .. } | Phase::AwaitIncumbentExit { .. } => Some(&mut phases.drain),
            Phase::Sealing { .. } => Some(&mut phases.seal),
            Phase::Beginning { .. } => Some(&mut phases.begin),
            Phase::Probing { .. } => Some(&mut phases.probe),
            Phase::Committing => Some(&mut phases.commit),
            Phase::Aborting { .. } | Phase::Resuming { .. } => Some(&mut phases.abort),
            Phase::Done => None,
        }
    }
}

/// The supervisor's machine for one handoff.
#[derive(Debug)]
pub struct HandoffMachine {
    config: HandoffConfig,
    phase: Phase,
    started: Instant,
    deadline: Instant,
    phase_started: Instant,
    phases: Phases,
    successor: Track,
    incumbent: Option<Track>,
    /// The states entered since the driver last took them.
    entered: Vec<HandoffState>,
    /// Why the supervisor stopped the incumbent, if it did.
    incumbent_stopped: Option<String>,
}

impl HandoffMachine {
    /// A machine for a handoff whose successor was just spawned at `now`.
    pub fn new(config: HandoffConfig, now: Instant) -> Self {
        let incumbent = config.has_incumbent.then(|| Track::new(now, IdRule::Older));
        HandoffMachine {
            deadline: now + config.timeouts.handoff_deadline,
            config,
            phase: Phase::AwaitHello,
            entered: Vec::new(),
            started: now,
            phase_started: now,
            phases: Phases::default(),
            // The successor learns the id from HelloAck: its Hello carries 0.
            successor: Track::new(now, IdRule::Exactly(0)),
            incumbent,
            incumbent_stopped: None,
        }
    }

    /// The handoff id.
    pub fn handoff_id(&self) -> u64 {
        self.config.handoff_id
    }

    /// The current phase's name (for logs, status and fault points).
    pub fn state_name(&self) -> &'static str {
        self.phase.name()
    }

    /// The current phase.
    pub fn state(&self) -> HandoffState {
        self.phase.state()
    }

    /// The states entered since the last call, in order. One step can pass
    /// through more than one (an abort whose successor was already reaped
    /// goes through Aborting to Resuming or Done at once), and the driver
    /// reports each as a phase and a fault point, so none is skipped.
    pub fn take_entered(&mut self) -> Vec<HandoffState> {
        std::mem::take(&mut self.entered)
    }

    /// Whether the verdict was given.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether the incumbent is part of this handoff and has not died.
    pub fn incumbent_alive(&self) -> bool {
        self.incumbent.is_some_and(|t| t.link == Link::Open)
    }

    /// When the driver must feed a `Tick` at the latest.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        let liveness = self.config.timeouts.liveness;
        // The deadline bounds the phases before a rollback (I7); the
        // rollback's own phases have bounds of their own.
        let mut next = Some(match &self.phase {
            Phase::Aborting { give_up_at, .. } | Phase::Resuming { give_up_at, .. } => *give_up_at,
            Phase::Draining { overrun_at } => self.deadline.min(*overrun_at),
            Phase::Sealing {
                silence: Some((due, _)),
            } => self.deadline.min(*due),
            Phase::AwaitIncumbentExit {
                kill_at: Some(kill_at),
            } => self.deadline.min(*kill_at),
            _ => self.deadline,
        });
        for track in [Some(self.successor), self.incumbent].into_iter().flatten() {
            if track.link == Link::Open {
                let expiry = track.last_heard + liveness;
                next = Some(next.map_or(expiry, |next| next.min(expiry)));
            }
        }
        next
    }

    /// Feeds one input observed at `now`.
    pub fn step(&mut self, input: HandoffInput, now: Instant) -> Vec<HandoffAction> {
        let mut actions = Vec::new();
        if self.phase == Phase::Done {
            return actions;
        }
        match input {
            HandoffInput::Frame {
                from,
                handoff_id,
                message,
            } => self.on_frame(from, handoff_id, message, now, &mut actions),
            HandoffInput::Closed { side } => self.on_closed(side, now, &mut actions),
            HandoffInput::Exited { side, status } => {
                self.on_exited(side, status, now, &mut actions)
            }
            HandoffInput::Tick => {}
            HandoffInput::Cancel => self.abort(AbortReason::Cancelled, now, &mut actions),
            HandoffInput::ProbePassed => {
                if let Phase::Probing { .. } = self.phase {
                    self.enter(Phase::Committing, now);
                    actions.push(HandoffAction::Commit(ReadySeen(())));
                }
            }
            HandoffInput::ProbeFailed { detail } => {
                if let Phase::Probing { .. } = self.phase {
                    self.abort(AbortReason::ProbeFailed { detail }, now, &mut actions);
                }
            }
        }
        self.check_time(now, &mut actions);
        actions
    }

    fn track_mut(&mut self, side: Side) -> Option<&mut Track> {
        match side {
            Side::Successor => Some(&mut self.successor),
            Side::Incumbent => self.incumbent.as_mut(),
        }
    }

    /// Moves to `phase`, the time spent in the one it leaves counted in
    /// that phase's slot: every instant from `started` is in one slot, so
    /// the phases add up to the machine's total.
    fn enter(&mut self, phase: Phase, now: Instant) {
        let spent = now.saturating_duration_since(self.phase_started);
        if let Some(slot) = self.phase.slot(&mut self.phases) {
            *slot = Some(slot.unwrap_or_default() + spent);
        }
        if phase.state() != self.phase.state() {
            self.entered.push(phase.state());
        }
        self.phase = phase;
        self.phase_started = now;
    }

    fn on_frame(
        &mut self,
        from: Side,
        handoff_id: u64,
        message: Message,
        now: Instant,
        actions: &mut Vec<HandoffAction>,
    ) {
        let current = self.config.handoff_id;
        let Some(track) = self.track_mut(from) else {
            return;
        };
        if track.link != Link::Open {
            return;
        }
        track.last_heard = now;
        // A heartbeat (or snapshot) sent just before the side learnt the new
        // id can cross HelloAck or Prepare on the wire: it carries no
        // handoff decision, so an older id is fine for it (I9).
        let stateless = matches!(message, Message::Heartbeat | Message::SnapshotReport(_));
        let id_ok = match track.id {
            IdRule::Exactly(expected) => {
                handoff_id == expected || (stateless && handoff_id < expected)
            }
            IdRule::Older => handoff_id < current,
        };
        if !id_ok {
            let detail = format!(
                "{} carried handoff id {handoff_id}, expected {:?} (handoff {current})",
                message.name(),
                track.id
            );
            self.protocol_violation(from, detail, now, actions);
            return;
        }
        if message == Message::Heartbeat {
            return;
        }
        match (from, message) {
            (Side::Successor, message) => self.on_successor(message, now, actions),
            (Side::Incumbent, message) => self.on_incumbent(message, now, actions),
        }
    }

    /// The successor's Hello: a common protocol version, or a refusal.
    fn on_hello(&mut self, versions: VersionRange, now: Instant, actions: &mut Vec<HandoffAction>) {
        match self.config.versions.negotiate(versions) {
            Some(version) => {
                self.enter(Phase::WarmingUp, now);
                self.successor.id = IdRule::Exactly(self.config.handoff_id);
                actions.push(HandoffAction::Send {
                    to: Side::Successor,
                    message: Message::HelloAck {
                        version,
                        generation: self.config.generation,
                        mode: self.config.mode,
                        has_incumbent: self.incumbent_alive(),
                        fd_count: self.config.fd_count,
                    },
                });
                actions.push(HandoffAction::SendListeners);
            }
            None => {
                let reason = AbortReason::VersionMismatch {
                    ours: self.config.versions,
                    theirs: versions,
                };
                actions.push(HandoffAction::Send {
                    to: Side::Successor,
                    message: Message::Refused {
                        versions: self.config.versions,
                        reason: reason.clone(),
                    },
                });
                self.abort(reason, now, actions);
            }
        }
    }

    fn on_successor(&mut self, message: Message, now: Instant, actions: &mut Vec<HandoffAction>) {
        match (&self.phase, message) {
            (Phase::AwaitHello, Message::Hello { versions, .. }) => {
                self.on_hello(versions, now, actions)
            }
            (Phase::WarmingUp, Message::Warm) => {
                match (self.config.mode, self.incumbent.map(|t| t.link)) {
                    (Mode::Exclusive, Some(Link::Open)) => {
                        let left = self.deadline.saturating_duration_since(now);
                        let grace = self.config.timeouts.drain_grace.min(left);
                        let overrun_at = now + grace + DRAIN_OVERRUN;
                        self.enter(Phase::Draining { overrun_at }, now);
                        if let Some(track) = self.incumbent.as_mut() {
                            track.id = IdRule::Exactly(self.config.handoff_id);
                        }
                        actions.push(HandoffAction::Send {
                            to: Side::Incumbent,
                            message: Message::Prepare {
                                deadline_ms: millis(left),
                                drain_grace_ms: millis(grace),
                            },
                        });
                    }
                    (_, Some(Link::Closed)) => {
                        self.enter(Phase::AwaitIncumbentExit { kill_at: None }, now);
                    }
                    _ => self.begin(None, now, actions),
                }
            }
            (Phase::Beginning { sealed }, Message::Ready { health, .. }) => match health {
                Health::Healthy if self.config.probe => {
                    let sealed = *sealed;
                    self.enter(Phase::Probing { sealed }, now);
                    let until = self.deadline.min(now + self.config.timeouts.probe);
                    actions.push(HandoffAction::StartProbe { until });
                }
                Health::Healthy => {
                    self.enter(Phase::Committing, now);
                    actions.push(HandoffAction::Commit(ReadySeen(())));
                }
                Health::Unhealthy { reason } => {
                    self.abort(AbortReason::Unhealthy { reason }, now, actions)
                }
            },
            (Phase::Committing, Message::CommitAck) => {
                self.enter(Phase::Done, now);
                self.phases.total = now.saturating_duration_since(self.started);
                actions.push(HandoffAction::Finish(Verdict::Committed {
                    phases: self.phases,
                    retire_incumbent: self.incumbent_alive(),
                    incumbent_stopped: self.incumbent_stopped.take(),
                }));
            }
            (
                Phase::AwaitHello
                | Phase::WarmingUp
                | Phase::Draining { .. }
                | Phase::Sealing { .. }
                | Phase::AwaitIncumbentExit { .. }
                | Phase::Beginning { .. }
                | Phase::Probing { .. }
                | Phase::Committing,
                Message::Failed { reason },
            ) => self.abort(reason, now, actions),
            (Phase::Aborting { .. } | Phase::Resuming { .. } | Phase::Done, _) => {}
            // Taken in any state (ARCHITECTURE.md, message 22), as from the
            // incumbent: a generation answers SnapshotRequest in every state.
            (_, Message::SnapshotReport(_)) => {}
            (_, message) => {
                let detail = format!(
                    "successor sent {} while the handoff was {}",
                    message.name(),
                    self.phase.name()
                );
                self.protocol_violation(Side::Successor, detail, now, actions);
            }
        }
    }

    fn on_incumbent(&mut self, message: Message, now: Instant, actions: &mut Vec<HandoffAction>) {
        match (&self.phase, message) {
            (Phase::Draining { .. }, Message::Drained { .. }) => {
                // The successor keeps the rest to take over as after the
                // incumbent's death; with too little left, the deadline
                // alone bounds the seal.
                let allowed = self.deadline.saturating_duration_since(now) / SEAL_SILENCE_SHARE;
                let silence = (allowed >= SEAL_SILENCE_MIN).then(|| (now + allowed, allowed));
                self.enter(Phase::Sealing { silence }, now);
                actions.push(HandoffAction::Send {
                    to: Side::Incumbent,
                    message: Message::Seal,
                });
            }
            (Phase::Sealing { .. }, Message::SealProgress { .. }) => {
                let deadline = self.deadline;
                if let Phase::Sealing {
                    silence: Some((due, allowed)),
                } = &mut self.phase
                {
                    *due = (now + *allowed).min(deadline);
                }
            }
            (Phase::Sealing { .. }, Message::SealComplete(seal)) => {
                self.begin(Some(seal), now, actions);
            }
            (Phase::Sealing { .. }, Message::SealFailed { reason }) => {
                self.incumbent_failed(AbortReason::SealFailed { reason }, now, actions)
            }
            (Phase::Draining { .. } | Phase::Sealing { .. }, Message::Failed { reason }) => self
                .incumbent_failed(
                    AbortReason::IncumbentFailed {
                        detail: reason.to_string(),
                    },
                    now,
                    actions,
                ),
            (Phase::Resuming { reason, .. }, Message::ResumeAck) => {
                let reason = reason.clone();
                self.finish_rollback(reason, true, now, actions);
            }
            // The hook that ran when the abort came may still report; a
            // failed resume shows up as the incumbent's exit.
            (
                Phase::Resuming { .. },
                Message::Drained { .. }
                | Message::SealProgress { .. }
                | Message::SealComplete(_)
                | Message::SealFailed { .. }
                | Message::Failed { .. },
            ) => {}
            (_, Message::SnapshotReport(_)) => {}
            // After sealing, or when the incumbent never took part, its
            // messages cannot change the outcome; ignore benign leftovers.
            (Phase::Aborting { .. } | Phase::Done, _) => {}
            (_, message) => {
                let detail = format!(
                    "incumbent sent {} while the handoff was {}",
                    message.name(),
                    self.phase.name()
                );
                self.protocol_violation(Side::Incumbent, detail, now, actions);
            }
        }
    }

    fn begin(&mut self, seal: Option<SealInfo>, now: Instant, actions: &mut Vec<HandoffAction>) {
        self.enter(
            Phase::Beginning {
                sealed: seal.is_some(),
            },
            now,
        );
        actions.push(HandoffAction::Send {
            to: Side::Successor,
            message: Message::Begin { seal },
        });
    }

    fn protocol_violation(
        &mut self,
        side: Side,
        detail: String,
        now: Instant,
        actions: &mut Vec<HandoffAction>,
    ) {
        match side {
            Side::Successor => self.abort(AbortReason::SuccessorProtocol { detail }, now, actions),
            Side::Incumbent => {
                // An incumbent that breaks the protocol cannot be trusted to
                // resume: it is killed and treated as dead.
                actions.push(HandoffAction::Kill {
                    side: Side::Incumbent,
                    signal: Signal::Kill,
                });
                self.on_closed(Side::Incumbent, now, actions);
            }
        }
    }

    fn on_closed(&mut self, side: Side, now: Instant, actions: &mut Vec<HandoffAction>) {
        let Some(track) = self.track_mut(side) else {
            return;
        };
        if track.link != Link::Open {
            return;
        }
        track.link = Link::Closed;
        // A closed connection with a live process behind it is a broken peer.
        actions.push(HandoffAction::Kill {
            side,
            signal: Signal::Kill,
        });
        match side {
            Side::Successor => self.abort(AbortReason::SuccessorClosed, now, actions),
            Side::Incumbent => self.incumbent_lost(now, actions),
        }
    }

    /// The incumbent died (or was killed) during the handoff.
    fn incumbent_lost(&mut self, now: Instant, actions: &mut Vec<HandoffAction>) {
        match &self.phase {
            Phase::AwaitHello | Phase::WarmingUp => {
                // Wait for Warm; then begin once the incumbent is reaped.
            }
            Phase::Draining { .. } | Phase::Sealing { .. } => {
                self.enter(Phase::AwaitIncumbentExit { kill_at: None }, now);
                self.try_begin_after_incumbent(now, actions);
            }
            Phase::Resuming { reason, .. } => {
                let reason = reason.clone();
                self.finish_rollback(reason, false, now, actions);
            }
            Phase::AwaitIncumbentExit { .. }
            | Phase::Beginning { .. }
            | Phase::Probing { .. }
            | Phase::Committing
            | Phase::Aborting { .. }
            | Phase::Done => {}
        }
    }

    fn try_begin_after_incumbent(&mut self, now: Instant, actions: &mut Vec<HandoffAction>) {
        if matches!(self.phase, Phase::AwaitIncumbentExit { .. })
            && self.incumbent.is_none_or(|t| t.link == Link::Reaped)
        {
            self.begin(None, now, actions);
        }
    }

    fn on_exited(
        &mut self,
        side: Side,
        status: ExitStatus,
        now: Instant,
        actions: &mut Vec<HandoffAction>,
    ) {
        let Some(track) = self.track_mut(side) else {
            return;
        };
        let was_open = track.link == Link::Open;
        track.link = Link::Reaped;
        match side {
            Side::Successor => {
                if let Phase::Aborting {
                    reason,
                    resume_incumbent,
                    ..
                } = &self.phase
                {
                    let (mut reason, resume) = (reason.clone(), *resume_incumbent);
                    // Its EOF came first; its exit status says more.
                    if reason == AbortReason::SuccessorClosed {
                        reason = AbortReason::SuccessorExited {
                            status: status.to_string(),
                        };
                    }
                    self.after_successor_reaped(reason, resume, now, actions);
                } else {
                    self.abort(
                        AbortReason::SuccessorExited {
                            status: status.to_string(),
                        },
                        now,
                        actions,
                    );
                }
            }
            Side::Incumbent => {
                if was_open {
                    self.incumbent_lost(now, actions);
                }
                if matches!(self.phase, Phase::AwaitHello | Phase::WarmingUp) {
                    // Begin as soon as the successor is warm (Warm handler).
                    self.incumbent = None;
                }
                self.try_begin_after_incumbent(now, actions);
                if let Phase::Aborting {
                    resume_incumbent, ..
                } = &mut self.phase
                {
                    // Nobody left to resume.
                    *resume_incumbent = false;
                }
            }
        }
    }

    fn abort(&mut self, reason: AbortReason, now: Instant, actions: &mut Vec<HandoffAction>) {
        if matches!(
            self.phase,
            Phase::Aborting { .. } | Phase::Resuming { .. } | Phase::Done
        ) {
            return;
        }
        // The incumbent needs ResumeAfterAbort if it was asked to drain.
        let resume_incumbent = self.incumbent_alive()
            && matches!(
                self.phase,
                Phase::Draining { .. }
                    | Phase::Sealing { .. }
                    | Phase::Beginning { sealed: true }
                    | Phase::Probing { sealed: true }
                    | Phase::Committing
            )
            && self.config.mode == Mode::Exclusive;
        let give_up_at = now + self.config.timeouts.kill_grace;
        if self.successor.link == Link::Open {
            actions.push(HandoffAction::Send {
                to: Side::Successor,
                message: Message::Abort {
                    reason: reason.clone(),
                },
            });
        }
        if self.successor.link == Link::Reaped {
            self.enter(
                Phase::Aborting {
                    reason: reason.clone(),
                    resume_incumbent,
                    give_up_at,
                },
                now,
            );
            // Already reaped: move on at once.
            self.after_successor_reaped(reason, resume_incumbent, now, actions);
            return;
        }
        actions.push(HandoffAction::Kill {
            side: Side::Successor,
            signal: Signal::Kill,
        });
        self.enter(
            Phase::Aborting {
                reason,
                resume_incumbent,
                give_up_at,
            },
            now,
        );
    }

    /// The incumbent failed to drain or seal: a rollback, or with `force`
    /// it is stopped and the successor takes over as after its death.
    fn incumbent_failed(
        &mut self,
        reason: AbortReason,
        now: Instant,
        actions: &mut Vec<HandoffAction>,
    ) {
        if !self.config.force {
            self.abort(reason, now, actions);
            return;
        }
        let kill_at = now + self.config.timeouts.kill_grace;
        self.stop_incumbent(
            format!("--force after it failed: {reason}"),
            Signal::Term,
            Some(kill_at),
            now,
            actions,
        );
    }

    /// The supervisor gives up on the incumbent before the commit: it is
    /// signalled, its connection no longer counts, and Begin (without a
    /// seal) waits for its reap.
    fn stop_incumbent(
        &mut self,
        why: String,
        signal: Signal,
        kill_at: Option<Instant>,
        now: Instant,
        actions: &mut Vec<HandoffAction>,
    ) {
        if let Some(track) = self.incumbent.as_mut()
            && track.link == Link::Open
        {
            track.link = Link::Closed;
        }
        self.incumbent_stopped = Some(why);
        actions.push(HandoffAction::Kill {
            side: Side::Incumbent,
            signal,
        });
        self.enter(Phase::AwaitIncumbentExit { kill_at }, now);
        self.try_begin_after_incumbent(now, actions);
    }

    /// The successor is reaped, so the lock it may have held is free (I5):
    /// resume the incumbent if it was asked to drain, else the rollback ends.
    fn after_successor_reaped(
        &mut self,
        reason: AbortReason,
        resume_incumbent: bool,
        now: Instant,
        actions: &mut Vec<HandoffAction>,
    ) {
        if resume_incumbent && self.incumbent_alive() {
            self.enter(
                Phase::Resuming {
                    reason: reason.clone(),
                    give_up_at: now + self.config.timeouts.resume,
                },
                now,
            );
            actions.push(HandoffAction::Send {
                to: Side::Incumbent,
                message: Message::ResumeAfterAbort,
            });
        } else {
            let serving = self.incumbent_alive();
            self.finish_rollback(reason, serving, now, actions);
        }
    }

    fn finish_rollback(
        &mut self,
        reason: AbortReason,
        incumbent_serving: bool,
        now: Instant,
        actions: &mut Vec<HandoffAction>,
    ) {
        self.enter(Phase::Done, now);
        self.phases.total = now.saturating_duration_since(self.started);
        actions.push(HandoffAction::Finish(Verdict::RolledBack {
            reason,
            phases: self.phases,
            incumbent_serving,
        }));
    }

    fn check_time(&mut self, now: Instant, actions: &mut Vec<HandoffAction>) {
        if self.phase == Phase::Done {
            return;
        }
        let liveness = self.config.timeouts.liveness;
        if self.successor.link == Link::Open
            && now.saturating_duration_since(self.successor.last_heard) >= liveness
        {
            self.successor.link = Link::Closed;
            actions.push(HandoffAction::Kill {
                side: Side::Successor,
                signal: Signal::Kill,
            });
            self.abort(AbortReason::SuccessorSilent, now, actions);
        }
        if let Some(track) = self.incumbent
            && track.link == Link::Open
            && now.saturating_duration_since(track.last_heard) >= liveness
        {
            self.on_closed(Side::Incumbent, now, actions);
        }
        self.check_bounds(now, actions);
    }

    /// The bound of the phase the machine is in: the deadline before a
    /// verdict could be a commit (I7), then the rollback's own bounds.
    fn check_bounds(&mut self, now: Instant, actions: &mut Vec<HandoffAction>) {
        match &self.phase {
            Phase::Done => {}
            Phase::Aborting {
                reason,
                resume_incumbent,
                give_up_at,
            } if now >= *give_up_at => {
                // SIGKILLed and still not reaped (stuck in the kernel): go
                // on; a sealed incumbent's relock waits for the lock (I5).
                let (reason, resume) = (reason.clone(), *resume_incumbent);
                self.after_successor_reaped(reason, resume, now, actions);
            }
            Phase::Resuming { reason, give_up_at } if now >= *give_up_at => {
                // Its resume hook is stuck (or its hook thread is gone):
                // treated as crashed, and nobody serves.
                let reason = reason.clone();
                if let Some(track) = self.incumbent.as_mut() {
                    track.link = Link::Closed;
                }
                actions.push(HandoffAction::Kill {
                    side: Side::Incumbent,
                    signal: Signal::Kill,
                });
                self.finish_rollback(reason, false, now, actions);
            }
            Phase::Aborting { .. } | Phase::Resuming { .. } => {}
            _ if now >= self.deadline => {
                let phase = self.phase.name().to_owned();
                self.abort(AbortReason::Deadline { phase }, now, actions);
            }
            Phase::Draining { overrun_at } if now >= *overrun_at => {
                let why = format!(
                    "its drain overran the drain timeout by {}",
                    crate::timeouts::format_duration(DRAIN_OVERRUN)
                );
                self.stop_incumbent(why, Signal::Kill, None, now, actions);
            }
            Phase::Sealing {
                silence: Some((due, allowed)),
            } if now >= *due => {
                let why = format!(
                    "its seal sent no word for {} (1/{SEAL_SILENCE_SHARE} of the time the \
                     deadline left it)",
                    crate::timeouts::format_duration(*allowed)
                );
                self.stop_incumbent(why, Signal::Kill, None, now, actions);
            }
            Phase::AwaitIncumbentExit {
                kill_at: Some(kill_at),
            } if now >= *kill_at => {
                actions.push(HandoffAction::Kill {
                    side: Side::Incumbent,
                    signal: Signal::Kill,
                });
                self.phase = Phase::AwaitIncumbentExit { kill_at: None };
            }
            _ => {}
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
