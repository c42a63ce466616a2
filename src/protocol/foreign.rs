//! The supervisor's machine for one handoff to a daemon that does not link
//! the library (`--protocol systemd`). The generation is not a protocol
//! peer: it gets its listeners by socket activation, says `READY=1` on its
//! own `NOTIFY_SOCKET` (or is found ready by a probe), and is stopped by a
//! signal. Always overlap: the successor serves before the incumbent is
//! told to stop.
//!
//! ```text
//! starting --READY=1 from the successor's pid (notify)--> committed      (no probe)
//! starting --READY=1 (notify, probe configured) | spawned (probe readiness)--> probing
//! probing --ProbePassed--> committed     (the driver then stops the incumbent: stop signal,
//!                                         drain_grace, SIGKILL; RetireMachine::signal_first)
//! starting | probing --ProbeFailed | deadline | Cancel--> stopping_successor (stop signal)
//! stopping_successor --exit--> rolled back   --kill_grace--> SIGKILL
//! starting | probing --successor exited--> rolled back
//! ```
//!
//! The incumbent is never touched before the commit (I13).

use std::time::Instant;

use super::{ExitStatus, Phases, Signal, Verdict};
use crate::timeouts::Timeouts;
use crate::wire::AbortReason;

/// How a foreign generation says it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadySignal {
    /// `READY=1` on `NOTIFY_SOCKET`, from the generation's own pid.
    Notify,
    /// The health probe passes (for daemons that send nothing).
    Probe,
}

/// What a foreign handoff needs to know up front.
#[derive(Debug, Clone)]
pub struct ForeignConfig {
    /// The handoff's id.
    pub handoff_id: u64,
    /// The successor's pid: only its notifications count.
    pub successor_pid: u32,
    /// How readiness is signalled.
    pub ready: ReadySignal,
    /// Whether a probe is configured (gates the commit after `READY=1`;
    /// required for [`ReadySignal::Probe`]).
    pub probe: bool,
    /// The durations in force.
    pub timeouts: Timeouts,
}

/// An event the driver feeds in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForeignInput {
    /// A datagram on the successor's notification socket.
    Notified {
        /// The sender's pid from `SCM_CREDENTIALS` (`None`: no credentials).
        pid: Option<u32>,
        /// The datagram (`KEY=VALUE` lines).
        text: String,
    },
    /// The probe passed.
    ProbePassed,
    /// The probe did not pass before its deadline.
    ProbeFailed {
        /// What the last attempt saw.
        detail: String,
    },
    /// The successor was reaped.
    Exited {
        /// How it ended.
        status: ExitStatus,
    },
    /// Time passed.
    Tick,
    /// An operator or a shutdown wants the handoff off.
    Cancel,
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a handful of actions per handoff; the verdict is moved once, boxing buys nothing"
)]
pub enum ForeignAction {
    /// Probe the successor until `until`; report the verdict.
    StartProbe {
        /// When to give up.
        until: Instant,
    },
    /// Signal the successor (`Term` is the configured stop signal).
    Signal(Signal),
    /// The handoff is over. On a commit the driver makes the successor the
    /// live generation and stops the incumbent (stop signal, drain grace,
    /// SIGKILL).
    Finish(Verdict),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Starting,
    Probing,
    StoppingSuccessor {
        reason: AbortReason,
        kill_at: Option<Instant>,
    },
    Done,
}

super::names::state_names! {
    /// The foreign handoff's phases, by name.
    pub enum ForeignState {
        /// Spawned; waiting for `READY=1` (or the first probe).
        Starting => "foreign_starting",
        /// Ready; the supervisor probes the successor.
        Probing => "foreign_probing",
        /// Rolling back: the successor was told to stop.
        StoppingSuccessor => "foreign_stopping_successor",
        /// Verdict given.
        Done => "foreign_done",
    }
}

/// The supervisor's machine for one foreign handoff.
#[derive(Debug)]
pub struct ForeignHandoffMachine {
    config: ForeignConfig,
    state: State,
    started: Instant,
    deadline: Instant,
    phase_started: Instant,
    phases: Phases,
}

impl ForeignHandoffMachine {
    /// A machine for a successor just spawned at `now`, and its first
    /// actions (a probe, when readiness is the probe).
    pub fn start(config: ForeignConfig, now: Instant) -> (Self, Vec<ForeignAction>) {
        let mut machine = ForeignHandoffMachine {
            deadline: now + config.timeouts.handoff_deadline,
            config,
            state: State::Starting,
            started: now,
            phase_started: now,
            phases: Phases::default(),
        };
        let mut actions = Vec::new();
        if machine.config.ready == ReadySignal::Probe {
            // Readiness is the probe: the whole start is `probe`, and
            // `begin` (spawned to READY=1) is never reached.
            machine.state = State::Probing;
            machine.start_probe(now, &mut actions);
        }
        (machine, actions)
    }

    /// The handoff id.
    pub fn handoff_id(&self) -> u64 {
        self.config.handoff_id
    }

    /// The current phase.
    pub fn state(&self) -> ForeignState {
        match self.state {
            State::Starting => ForeignState::Starting,
            State::Probing => ForeignState::Probing,
            State::StoppingSuccessor { .. } => ForeignState::StoppingSuccessor,
            State::Done => ForeignState::Done,
        }
    }

    /// The current phase's name.
    pub fn state_name(&self) -> &'static str {
        self.state().as_str()
    }

    /// When the driver must feed a `Tick` at the latest.
    pub fn next_wakeup(&self) -> Option<Instant> {
        match &self.state {
            State::Starting | State::Probing => Some(self.deadline),
            State::StoppingSuccessor { kill_at, .. } => *kill_at,
            State::Done => None,
        }
    }

    /// Feeds one input observed at `now`.
    pub fn step(&mut self, input: ForeignInput, now: Instant) -> Vec<ForeignAction> {
        let mut actions = Vec::new();
        match (&self.state, input) {
            (State::Done, _) => return actions,
            (State::Starting, ForeignInput::Notified { pid, text })
                if self.config.ready == ReadySignal::Notify
                    && pid == Some(self.config.successor_pid)
                    && text.lines().any(|line| line == "READY=1") =>
            {
                if self.config.probe {
                    self.probe(now, &mut actions);
                } else {
                    self.commit(now, &mut actions);
                }
            }
            // Another sender, another message, or readiness by probe: no
            // decision (the driver logs foreign senders).
            (_, ForeignInput::Notified { .. }) => {}
            (State::Probing, ForeignInput::ProbePassed) => {
                self.commit(now, &mut actions);
            }
            (State::Probing, ForeignInput::ProbeFailed { detail }) => {
                self.stop_successor(AbortReason::ProbeFailed { detail }, now, &mut actions);
            }
            (_, ForeignInput::ProbePassed | ForeignInput::ProbeFailed { .. }) => {}
            (State::Starting | State::Probing, ForeignInput::Exited { status }) => {
                self.finish_rollback(
                    AbortReason::SuccessorExited {
                        status: status.to_string(),
                    },
                    now,
                    &mut actions,
                );
            }
            (State::StoppingSuccessor { reason, .. }, ForeignInput::Exited { .. }) => {
                let reason = reason.clone();
                self.finish_rollback(reason, now, &mut actions);
            }
            (State::Starting | State::Probing, ForeignInput::Cancel) => {
                self.stop_successor(AbortReason::Cancelled, now, &mut actions)
            }
            (State::StoppingSuccessor { .. }, ForeignInput::Cancel) => {}
            (_, ForeignInput::Tick) => {}
        }
        self.check_time(now, &mut actions);
        actions
    }

    /// Moves to `state`, the time spent in the one it leaves counted in
    /// that phase's slot, so that the phases add up to the total.
    fn enter(&mut self, state: State, now: Instant) {
        let spent = now.saturating_duration_since(self.phase_started);
        let slot = match self.state {
            State::Starting => Some(&mut self.phases.begin),
            State::Probing => Some(&mut self.phases.probe),
            State::StoppingSuccessor { .. } => Some(&mut self.phases.abort),
            State::Done => None,
        };
        if let Some(slot) = slot {
            *slot = Some(slot.unwrap_or_default() + spent);
        }
        self.state = state;
        self.phase_started = now;
    }

    fn probe(&mut self, now: Instant, actions: &mut Vec<ForeignAction>) {
        self.enter(State::Probing, now);
        self.start_probe(now, actions);
    }

    fn start_probe(&self, now: Instant, actions: &mut Vec<ForeignAction>) {
        let until = self.deadline.min(now + self.config.timeouts.probe);
        actions.push(ForeignAction::StartProbe { until });
    }

    fn commit(&mut self, now: Instant, actions: &mut Vec<ForeignAction>) {
        self.enter(State::Done, now);
        self.phases.total = now.saturating_duration_since(self.started);
        actions.push(ForeignAction::Finish(Verdict::Committed {
            phases: self.phases,
            retire_incumbent: true,
            incumbent_stopped: None,
        }));
    }

    /// The stop signal first, so that what the successor accepted is
    /// answered; SIGKILL after `kill_grace`.
    fn stop_successor(
        &mut self,
        reason: AbortReason,
        now: Instant,
        actions: &mut Vec<ForeignAction>,
    ) {
        self.enter(
            State::StoppingSuccessor {
                reason,
                kill_at: Some(now + self.config.timeouts.kill_grace),
            },
            now,
        );
        actions.push(ForeignAction::Signal(Signal::Term));
    }

    fn finish_rollback(
        &mut self,
        reason: AbortReason,
        now: Instant,
        actions: &mut Vec<ForeignAction>,
    ) {
        self.enter(State::Done, now);
        self.phases.total = now.saturating_duration_since(self.started);
        actions.push(ForeignAction::Finish(Verdict::RolledBack {
            reason,
            phases: self.phases,
            // The incumbent was never asked anything (I13); the driver
            // corrects this if it died meanwhile.
            incumbent_serving: true,
        }));
    }

    fn check_time(&mut self, now: Instant, actions: &mut Vec<ForeignAction>) {
        match &mut self.state {
            State::Starting | State::Probing if now >= self.deadline => {
                let phase = self.state_name().to_owned();
                self.stop_successor(AbortReason::Deadline { phase }, now, actions);
            }
            State::StoppingSuccessor { kill_at, .. } if kill_at.is_some_and(|at| now >= at) => {
                *kill_at = None;
                actions.push(ForeignAction::Signal(Signal::Kill));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const PID: u32 = 4242;

    fn machine(
        ready: ReadySignal,
        probe: bool,
    ) -> (ForeignHandoffMachine, Vec<ForeignAction>, Instant) {
        let now = Instant::now();
        let config = ForeignConfig {
            handoff_id: 7,
            successor_pid: PID,
            ready,
            probe,
            timeouts: Timeouts::default(),
        };
        let (machine, actions) = ForeignHandoffMachine::start(config, now);
        (machine, actions, now)
    }

    fn ready_from(pid: u32) -> ForeignInput {
        ForeignInput::Notified {
            pid: Some(pid),
            text: "STATUS=up\nREADY=1".into(),
        }
    }

    /// The verdict's phases, checked to add up to its total.
    fn phases(actions: &[ForeignAction]) -> Option<Phases> {
        let phases = actions.iter().find_map(|a| match a {
            ForeignAction::Finish(
                Verdict::Committed { phases, .. } | Verdict::RolledBack { phases, .. },
            ) => Some(*phases),
            _ => None,
        })?;
        let sum: Duration = phases.named().iter().filter_map(|(_, d)| *d).sum();
        assert_eq!(sum, phases.total, "{phases:?}");
        Some(phases)
    }

    fn committed(actions: &[ForeignAction]) -> bool {
        phases(actions).is_some()
            && actions
                .iter()
                .any(|a| matches!(a, ForeignAction::Finish(Verdict::Committed { .. })))
    }

    fn rolled_back(actions: &[ForeignAction]) -> Option<AbortReason> {
        phases(actions)?;
        actions.iter().find_map(|a| match a {
            ForeignAction::Finish(Verdict::RolledBack { reason, .. }) => Some(reason.clone()),
            _ => None,
        })
    }

    #[test]
    fn ready_from_the_successor_commits() {
        let (mut m, actions, now) = machine(ReadySignal::Notify, false);
        assert!(actions.is_empty());
        assert_eq!(m.state(), ForeignState::Starting);
        let actions = m.step(ready_from(PID), now + Duration::from_millis(5));
        assert!(committed(&actions), "{actions:?}");
        assert_eq!(m.state(), ForeignState::Done);
        assert_eq!(m.next_wakeup(), None);
    }

    #[test]
    fn ready_from_anyone_else_or_without_credentials_is_ignored() {
        let (mut m, _, now) = machine(ReadySignal::Notify, false);
        assert!(m.step(ready_from(PID + 1), now).is_empty());
        let anonymous = ForeignInput::Notified {
            pid: None,
            text: "READY=1".into(),
        };
        assert!(m.step(anonymous, now).is_empty());
        let not_ready = ForeignInput::Notified {
            pid: Some(PID),
            text: "STATUS=READY=1 soon".into(),
        };
        assert!(m.step(not_ready, now).is_empty());
        assert_eq!(m.state(), ForeignState::Starting);
    }

    #[test]
    fn a_probe_gates_ready_and_a_failed_probe_stops_the_successor_gracefully() {
        let (mut m, _, start) = machine(ReadySignal::Notify, true);
        let ms = Duration::from_millis;
        let actions = m.step(ready_from(PID), start + ms(5));
        let now = start + ms(7);
        assert!(
            matches!(actions[..], [ForeignAction::StartProbe { .. }]),
            "{actions:?}"
        );
        assert_eq!(m.state(), ForeignState::Probing);
        let actions = m.step(
            ForeignInput::ProbeFailed {
                detail: "status 503".into(),
            },
            now,
        );
        assert_eq!(actions, [ForeignAction::Signal(Signal::Term)]);
        assert_eq!(m.state(), ForeignState::StoppingSuccessor);
        let grace = Timeouts::default().kill_grace;
        assert_eq!(m.next_wakeup(), Some(now + grace));
        assert_eq!(
            m.step(ForeignInput::Tick, now + grace),
            [ForeignAction::Signal(Signal::Kill)]
        );
        assert_eq!(m.next_wakeup(), None);
        let actions = m.step(
            ForeignInput::Exited {
                status: ExitStatus::Signal(9),
            },
            now + grace + ms(1),
        );
        assert_eq!(
            rolled_back(&actions),
            Some(AbortReason::ProbeFailed {
                detail: "status 503".into()
            })
        );
        // Spawned to READY=1, READY=1 to the probe's failure, then the stop.
        let phases = phases(&actions).expect("a verdict");
        assert_eq!(phases.begin, Some(ms(5)));
        assert_eq!(phases.probe, Some(ms(2)));
        assert_eq!(phases.abort, Some(grace + ms(1)));
    }

    #[test]
    fn probe_readiness_starts_probing_at_once() {
        let (mut m, actions, now) = machine(ReadySignal::Probe, true);
        assert!(matches!(actions[..], [ForeignAction::StartProbe { .. }]));
        assert!(
            m.step(ready_from(PID), now).is_empty(),
            "READY=1 is not the signal here"
        );
        let passed = m.step(ForeignInput::ProbePassed, now + Duration::from_millis(4));
        assert!(committed(&passed));
        let phases = phases(&passed).expect("a verdict");
        assert_eq!(
            (phases.begin, phases.probe),
            (None, Some(Duration::from_millis(4)))
        );
    }

    #[test]
    fn an_early_exit_rolls_back_and_the_deadline_stops_the_successor() {
        let (mut m, _, now) = machine(ReadySignal::Notify, false);
        let actions = m.step(
            ForeignInput::Exited {
                status: ExitStatus::Code(1),
            },
            now,
        );
        assert!(matches!(
            rolled_back(&actions),
            Some(AbortReason::SuccessorExited { .. })
        ));

        let (mut m, _, now) = machine(ReadySignal::Notify, false);
        let deadline = m.next_wakeup().expect("deadline");
        assert!(m.step(ForeignInput::Tick, now).is_empty());
        assert_eq!(
            m.step(ForeignInput::Tick, deadline),
            [ForeignAction::Signal(Signal::Term)]
        );
        let actions = m.step(
            ForeignInput::Exited {
                status: ExitStatus::Code(0),
            },
            deadline,
        );
        assert_eq!(
            rolled_back(&actions),
            Some(AbortReason::Deadline {
                phase: "foreign_starting".into()
            })
        );
    }

    #[test]
    fn cancel_stops_the_successor_once_and_every_state_is_reached() {
        let mut reached = std::collections::HashSet::new();
        let (mut m, _, now) = machine(ReadySignal::Notify, true);
        reached.insert(m.state());
        m.step(ready_from(PID), now);
        reached.insert(m.state());
        assert_eq!(
            m.step(ForeignInput::Cancel, now),
            [ForeignAction::Signal(Signal::Term)]
        );
        reached.insert(m.state());
        assert!(m.step(ForeignInput::Cancel, now).is_empty());
        m.step(
            ForeignInput::Exited {
                status: ExitStatus::Code(0),
            },
            now,
        );
        reached.insert(m.state());
        assert!(m.step(ForeignInput::Cancel, now).is_empty());
        assert_eq!(reached.len(), ForeignState::ALL.len());
    }
}
