//! The supervisor's machine for an old generation after a commit: drain it
//! (overlap mode), tell it to retire, and make sure it exits.
//!
//! ```text
//! Draining -Drained-> Retiring -exit-> Gone          (overlap: starts at Draining)
//! Retiring -kill_grace-> Terminated (SIGTERM) -kill_grace-> Killed (SIGKILL) -exit-> Gone
//! (probation) Draining -Drained-> Probation -probation over-> Retiring
//!             Draining | Probation -Resume-> ResumingOld -ResumeAck-> Resumed (serves again)
//!             ResumingOld -kill_grace-> Terminated
//! (foreign)   Terminated (stop signal) -drain_grace-> Killed
//! (foreign probation, quiesce signal) Probation -Resume-> Resumed (resume signal)
//! (foreign probation, no quiesce signal) Standby -Resume-> Resumed
//! (any probation) Probation | Standby -HoldProbation(t)-> same state, ending no earlier than t
//!             (a hold while still Draining applies to the Probation that follows)
//!             Probation | Standby -probation over-> Terminated (stop signal)
//! ```
//!
//! A foreign daemon (`--protocol systemd`) cannot acknowledge anything: a
//! quiesced one is told to stop accepting by its quiesce signal and to
//! accept again by its resume signal, and the machine trusts the signal
//! (the process being alive is all the supervisor can know). Without a
//! quiesce signal the old foreign generation stays a warm standby: it keeps
//! serving beside the new one until the probation ends (I14).
//! The old generation never lingers (invariant I8): every state has a timer
//! that ends in SIGKILL, and EOF or silence skip straight to the signals.

use std::time::Instant;

use super::Signal;
use crate::timeouts::Timeouts;
use crate::wire::Message;

super::names::state_names! {
    /// The retire machine's states, by name.
    pub enum RetireState {
        /// Overlap mode: the old generation drains.
        Draining => "retire_draining",
        /// Retire sent.
        Retiring => "retiring",
        /// SIGTERM sent.
        Terminated => "terminated",
        /// SIGKILL sent.
        Killed => "killed",
        /// Exited and reaped.
        Gone => "gone",
        /// Drained and idle, kept for the probation period (I14).
        Probation => "retire_probation",
        /// ResumeAfterAbort sent: the new generation failed in probation.
        ResumingOld => "retire_resuming",
        /// It acknowledged: it serves again (the driver makes it live).
        Resumed => "retire_resumed",
        /// A foreign generation without a quiesce signal, kept serving
        /// beside the new one for the probation period (a warm standby).
        Standby => "retire_standby",
    }
}

/// An event for the retire machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetireInput {
    /// A message from the old generation.
    Frame(Message),
    /// Its connection closed.
    Closed,
    /// Its process was reaped.
    Exited,
    /// Time passed.
    Tick,
    /// The new generation failed during probation: take this one back.
    Resume,
    /// The new generation's probe failed an attempt and the failure is
    /// being confirmed: the probation does not end before this instant
    /// (it is never shortened). Ignored outside a probation.
    HoldProbation(Instant),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetireAction {
    /// Send a message to the old generation.
    Send(Message),
    /// Signal it.
    Signal(Signal),
    /// It is gone.
    Gone,
    /// It acknowledged its resumption and serves again.
    Resumed,
    /// Send a foreign generation its quiesce signal (stop accepting, finish
    /// the requests in flight, stay alive).
    SignalQuiesce,
    /// Send a quiesced foreign generation its resume signal (accept again).
    SignalResume,
}

/// How an old foreign generation spends its probation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignProbation {
    /// It gets the quiesce signal at the commit and the resume signal on a
    /// rollback.
    Quiesce,
    /// No quiesce signal is configured: it keeps serving beside the new
    /// generation (a warm standby) and needs no signal to take over.
    WarmStandby,
}

/// How a generation in `Probation` is brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum ResumeBy {
    /// `ResumeAfterAbort`, acknowledged by `ResumeAck` (a library daemon).
    Message,
    /// The resume signal, unacknowledged (a foreign daemon).
    Signal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum State {
    Draining {
        #[serde(with = "super::mono")]
        until: Instant,
    },
    Retiring {
        #[serde(with = "super::mono")]
        until: Instant,
    },
    Terminated {
        #[serde(with = "super::mono")]
        until: Instant,
    },
    Killed,
    Gone,
    Probation {
        #[serde(with = "super::mono")]
        until: Instant,
        resume: ResumeBy,
    },
    ResumingOld {
        #[serde(with = "super::mono")]
        until: Instant,
    },
    Resumed,
    Standby {
        #[serde(with = "super::mono")]
        until: Instant,
    },
}

/// Retires one old generation. Serializable (its deadlines through
/// [`super::mono`]), so that a supervisor's re-exec keeps it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RetireMachine {
    state: State,
    timeouts: Timeouts,
    /// Kept idle this long after its drain (zero: retired at once).
    probation: std::time::Duration,
    /// A hold asked for while it still drained: its probation, once it
    /// begins, ends no earlier.
    #[serde(default, with = "super::mono::option")]
    held: Option<Instant>,
}

impl RetireMachine {
    /// Starts retiring. With `drain_first` (overlap mode) the old generation
    /// is asked to drain (Prepare) before it is told to retire; returns the
    /// machine and the first actions.
    pub fn start(drain_first: bool, timeouts: Timeouts, now: Instant) -> (Self, Vec<RetireAction>) {
        if drain_first {
            let until = now + timeouts.drain_grace + timeouts.kill_grace;
            let message = Message::Prepare {
                deadline_ms: millis(timeouts.drain_grace + timeouts.kill_grace),
                drain_grace_ms: millis(timeouts.drain_grace),
            };
            (
                RetireMachine {
                    state: State::Draining { until },
                    timeouts,
                    probation: std::time::Duration::ZERO,
                    held: None,
                },
                vec![RetireAction::Send(message)],
            )
        } else {
            (
                RetireMachine {
                    state: State::Retiring {
                        until: now + timeouts.kill_grace,
                    },
                    timeouts,
                    probation: std::time::Duration::ZERO,
                    held: None,
                },
                vec![RetireAction::Send(Message::Retire)],
            )
        }
    }

    /// An old generation the supervisor killed already (its control
    /// connection broke during the handoff): only its reap remains, with
    /// SIGKILL again if it has not exited after `kill_grace`.
    pub fn after_kill(timeouts: Timeouts, now: Instant) -> Self {
        RetireMachine {
            state: State::Terminated {
                until: now + timeouts.kill_grace,
            },
            timeouts,
            probation: std::time::Duration::ZERO,
            held: None,
        }
    }

    /// A machine for an old foreign generation (`--protocol systemd`): the
    /// stop signal at once (the driver maps `Signal::Term` to it), SIGKILL
    /// after `drain_grace`.
    pub fn signal_first(timeouts: Timeouts, now: Instant) -> (Self, Vec<RetireAction>) {
        (
            RetireMachine {
                state: State::Terminated {
                    until: now + timeouts.drain_grace,
                },
                timeouts,
                probation: std::time::Duration::ZERO,
                held: None,
            },
            vec![RetireAction::Signal(Signal::Term)],
        )
    }

    /// A machine for an old foreign generation with a probation: quiesced
    /// (or left serving, `WarmStandby`) until `probation` is over, then the
    /// stop signal and SIGKILL after `drain_grace`, as `signal_first`.
    pub fn foreign_with_probation(
        probation: std::time::Duration,
        style: ForeignProbation,
        timeouts: Timeouts,
        now: Instant,
    ) -> (Self, Vec<RetireAction>) {
        let until = now + probation;
        let (state, actions) = match style {
            ForeignProbation::Quiesce => (
                State::Probation {
                    until,
                    resume: ResumeBy::Signal,
                },
                vec![RetireAction::SignalQuiesce],
            ),
            ForeignProbation::WarmStandby => (State::Standby { until }, Vec::new()),
        };
        (
            RetireMachine {
                state,
                timeouts,
                probation,
                held: None,
            },
            actions,
        )
    }

    /// An overlap retire that keeps the drained generation idle for
    /// `probation` before Retire, so that it can be resumed if the new
    /// generation fails meanwhile (I14).
    pub fn with_probation(
        probation: std::time::Duration,
        timeouts: Timeouts,
        now: Instant,
    ) -> (Self, Vec<RetireAction>) {
        let (mut machine, actions) = RetireMachine::start(true, timeouts, now);
        machine.probation = probation;
        (machine, actions)
    }

    /// Whether the generation is kept for a resumption now.
    pub fn in_probation(&self) -> bool {
        matches!(
            self.state,
            State::Draining { .. } | State::Probation { .. } | State::Standby { .. }
        ) && !self.probation.is_zero()
    }

    /// When its probation ends, if it is in one.
    pub fn probation_until(&self) -> Option<Instant> {
        match self.state {
            State::Probation { until, .. } | State::Standby { until } => Some(until),
            State::Draining { until } if !self.probation.is_zero() => {
                let after_drain = until + self.probation;
                Some(self.held.map_or(after_drain, |held| held.max(after_drain)))
            }
            _ => None,
        }
    }

    /// Whether the old generation is gone.
    pub fn is_gone(&self) -> bool {
        self.state == State::Gone
    }

    /// The state's name.
    pub fn state_name(&self) -> &'static str {
        self.state().as_str()
    }

    /// The current state.
    pub fn state(&self) -> RetireState {
        match self.state {
            State::Draining { .. } => RetireState::Draining,
            State::Retiring { .. } => RetireState::Retiring,
            State::Terminated { .. } => RetireState::Terminated,
            State::Killed => RetireState::Killed,
            State::Gone => RetireState::Gone,
            State::Probation { .. } => RetireState::Probation,
            State::ResumingOld { .. } => RetireState::ResumingOld,
            State::Resumed => RetireState::Resumed,
            State::Standby { .. } => RetireState::Standby,
        }
    }

    /// When a Tick is due.
    pub fn next_wakeup(&self) -> Option<Instant> {
        match self.state {
            State::Draining { until }
            | State::Retiring { until }
            | State::Terminated { until }
            | State::Probation { until, .. }
            | State::ResumingOld { until }
            | State::Standby { until } => Some(until),
            State::Killed | State::Gone | State::Resumed => None,
        }
    }

    /// Feeds one input.
    pub fn step(&mut self, input: RetireInput, now: Instant) -> Vec<RetireAction> {
        let mut out = Vec::new();
        match (self.state, input) {
            (State::Gone | State::Resumed, _) => {}
            (_, RetireInput::Exited) => {
                self.state = State::Gone;
                out.push(RetireAction::Gone);
            }
            (State::Draining { .. }, RetireInput::Frame(Message::Drained { .. }))
                if !self.probation.is_zero() =>
            {
                let until = now + self.probation;
                self.state = State::Probation {
                    until: self.held.take().map_or(until, |held| until.max(held)),
                    resume: ResumeBy::Message,
                };
            }
            (
                State::Probation {
                    resume: ResumeBy::Signal,
                    ..
                },
                RetireInput::Resume,
            ) => {
                self.state = State::Resumed;
                out.extend([RetireAction::SignalResume, RetireAction::Resumed]);
            }
            (State::Standby { .. }, RetireInput::Resume) => {
                // It never stopped serving.
                self.state = State::Resumed;
                out.push(RetireAction::Resumed);
            }
            (State::Draining { .. } | State::Probation { .. }, RetireInput::Resume)
                if !self.probation.is_zero() =>
            {
                self.state = State::ResumingOld {
                    until: now + self.timeouts.kill_grace,
                };
                out.push(RetireAction::Send(Message::ResumeAfterAbort));
            }
            (State::ResumingOld { .. }, RetireInput::Frame(Message::ResumeAck)) => {
                self.state = State::Resumed;
                out.push(RetireAction::Resumed);
            }
            (State::Probation { .. } | State::ResumingOld { .. }, RetireInput::Closed) => {
                self.terminate(now, &mut out)
            }
            (_, RetireInput::Resume) => {}
            (State::Probation { until, resume }, RetireInput::HoldProbation(held)) => {
                self.state = State::Probation {
                    until: until.max(held),
                    resume,
                };
            }
            (State::Standby { until }, RetireInput::HoldProbation(held)) => {
                self.state = State::Standby {
                    until: until.max(held),
                };
            }
            (State::Draining { .. }, RetireInput::HoldProbation(held))
                if !self.probation.is_zero() =>
            {
                self.held = Some(self.held.map_or(held, |before| before.max(held)));
            }
            (_, RetireInput::HoldProbation(_)) => {}
            (State::Draining { .. }, RetireInput::Frame(Message::Drained { .. })) => {
                self.state = State::Retiring {
                    until: now + self.timeouts.kill_grace,
                };
                out.push(RetireAction::Send(Message::Retire));
            }
            (State::Draining { .. } | State::Retiring { .. }, RetireInput::Closed) => {
                self.terminate(now, &mut out)
            }
            (_, RetireInput::Frame(_) | RetireInput::Closed | RetireInput::Tick) => {}
        }
        match self.state {
            State::Draining { until }
            | State::Retiring { until }
            | State::ResumingOld { until }
                if now >= until =>
            {
                self.terminate(now, &mut out)
            }
            State::Probation {
                until,
                resume: ResumeBy::Message,
            } if now >= until => {
                self.state = State::Retiring {
                    until: now + self.timeouts.kill_grace,
                };
                out.push(RetireAction::Send(Message::Retire));
            }
            State::Probation {
                until,
                resume: ResumeBy::Signal,
            }
            | State::Standby { until }
                if now >= until =>
            {
                // A foreign generation: the stop signal, SIGKILL after the
                // drain grace (as `signal_first`).
                self.state = State::Terminated {
                    until: now + self.timeouts.drain_grace,
                };
                out.push(RetireAction::Signal(Signal::Term));
            }
            State::Terminated { until } if now >= until => {
                self.state = State::Killed;
                out.push(RetireAction::Signal(Signal::Kill));
            }
            _ => {}
        }
        out
    }

    fn terminate(&mut self, now: Instant, out: &mut Vec<RetireAction>) {
        self.state = State::Terminated {
            until: now + self.timeouts.kill_grace,
        };
        out.push(RetireAction::Signal(Signal::Term));
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod probation_tests {
    use std::time::Duration;

    use super::*;

    fn drained() -> RetireInput {
        RetireInput::Frame(Message::Drained {
            open_connections: 0,
            accept_closed: true,
        })
    }

    #[test]
    fn a_held_probation_outlasts_its_period_and_frames_do_not_end_it() {
        let now = Instant::now();
        let probation = Duration::from_secs(1);
        let held = now + Duration::from_secs(4);
        let (mut m, _) = RetireMachine::with_probation(probation, Timeouts::default(), now);
        m.step(drained(), now);
        assert!(m.step(RetireInput::HoldProbation(held), now).is_empty());
        assert_eq!(m.next_wakeup(), Some(held));
        // A heartbeat after the original period (inputs check the timer).
        let later = now + Duration::from_secs(2);
        assert!(
            m.step(RetireInput::Frame(Message::Heartbeat), later)
                .is_empty()
        );
        assert_eq!(m.state(), RetireState::Probation);
        // A shorter hold never shortens it.
        m.step(RetireInput::HoldProbation(later), later);
        assert_eq!(m.next_wakeup(), Some(held));
        // Still resumable inside the hold; retired at its end otherwise.
        let mut resumable = m.clone();
        assert_eq!(
            resumable.step(RetireInput::Resume, later),
            [RetireAction::Send(Message::ResumeAfterAbort)]
        );
        assert_eq!(
            m.step(RetireInput::Tick, held),
            [RetireAction::Send(Message::Retire)]
        );
        // Outside a probation a hold is ignored.
        assert!(
            m.step(RetireInput::HoldProbation(held + probation), held)
                .is_empty()
        );
        assert_eq!(m.state(), RetireState::Retiring);
    }

    #[test]
    fn a_hold_that_comes_while_it_still_drains_holds_the_probation_after() {
        let now = Instant::now();
        let probation = Duration::from_secs(1);
        let held = now + Duration::from_secs(3);
        let (mut m, _) = RetireMachine::with_probation(probation, Timeouts::default(), now);
        // The new generation's first probe fails before this one drained.
        assert!(m.step(RetireInput::HoldProbation(held), now).is_empty());
        assert_eq!(m.state(), RetireState::Draining);
        assert!(m.probation_until().is_some_and(|until| until >= held));
        let drained_at = now + Duration::from_millis(10);
        m.step(drained(), drained_at);
        assert_eq!(m.state(), RetireState::Probation);
        assert_eq!(m.next_wakeup(), Some(held), "not drained_at + 1 s");
        let past_its_period = drained_at + probation + Duration::from_millis(1);
        assert!(m.step(RetireInput::Tick, past_its_period).is_empty());
        assert_eq!(m.state(), RetireState::Probation);
        assert_eq!(
            m.step(RetireInput::Tick, held),
            [RetireAction::Send(Message::Retire)]
        );
    }

    #[test]
    fn a_drained_generation_waits_out_its_probation_then_retires() {
        let now = Instant::now();
        let probation = Duration::from_secs(30);
        let (mut m, actions) = RetireMachine::with_probation(probation, Timeouts::default(), now);
        assert!(matches!(
            actions[..],
            [RetireAction::Send(Message::Prepare { .. })]
        ));
        assert!(
            m.step(drained(), now).is_empty(),
            "no Retire during probation"
        );
        assert_eq!(m.state(), RetireState::Probation);
        assert!(m.in_probation());
        assert_eq!(m.next_wakeup(), Some(now + probation));
        assert_eq!(
            m.step(RetireInput::Tick, now + probation),
            [RetireAction::Send(Message::Retire)]
        );
        assert_eq!(m.state(), RetireState::Retiring);
        assert!(!m.in_probation());
        assert!(
            m.step(RetireInput::Resume, now + probation).is_empty(),
            "too late"
        );
    }

    #[test]
    fn a_resumed_generation_serves_again() {
        let now = Instant::now();
        let (mut m, _) =
            RetireMachine::with_probation(Duration::from_secs(30), Timeouts::default(), now);
        m.step(drained(), now);
        assert_eq!(
            m.step(RetireInput::Resume, now),
            [RetireAction::Send(Message::ResumeAfterAbort)]
        );
        assert_eq!(m.state(), RetireState::ResumingOld);
        assert_eq!(
            m.step(RetireInput::Frame(Message::ResumeAck), now),
            [RetireAction::Resumed]
        );
        assert_eq!(m.state(), RetireState::Resumed);
        assert_eq!(m.next_wakeup(), None);
    }

    #[test]
    fn a_resume_without_ack_ends_in_signals_and_without_probation_nothing_changes() {
        let now = Instant::now();
        let grace = Timeouts::default().kill_grace;
        let (mut m, _) =
            RetireMachine::with_probation(Duration::from_secs(30), Timeouts::default(), now);
        m.step(RetireInput::Resume, now);
        assert_eq!(
            m.step(RetireInput::Tick, now + grace),
            [RetireAction::Signal(Signal::Term)]
        );
        let (mut m, _) = RetireMachine::start(true, Timeouts::default(), now);
        assert!(!m.in_probation());
        assert!(m.step(RetireInput::Resume, now).is_empty());
        assert_eq!(
            m.step(drained(), now),
            [RetireAction::Send(Message::Retire)]
        );
    }

    #[test]
    fn a_quiesced_foreign_generation_is_resumed_by_its_signal() {
        let now = Instant::now();
        let probation = Duration::from_secs(30);
        let (mut m, actions) = RetireMachine::foreign_with_probation(
            probation,
            ForeignProbation::Quiesce,
            Timeouts::default(),
            now,
        );
        assert_eq!(actions, [RetireAction::SignalQuiesce]);
        assert_eq!(m.state(), RetireState::Probation);
        assert!(m.in_probation());
        assert_eq!(m.next_wakeup(), Some(now + probation));
        // Nothing a foreign daemon could send changes it.
        assert!(m.step(RetireInput::Tick, now).is_empty());
        assert!(m.step(drained(), now).is_empty());
        assert_eq!(m.state(), RetireState::Probation);
        assert_eq!(
            m.step(RetireInput::Resume, now),
            [RetireAction::SignalResume, RetireAction::Resumed]
        );
        assert_eq!(m.state(), RetireState::Resumed);
        assert_eq!(m.next_wakeup(), None);
        assert!(m.step(RetireInput::Exited, now).is_empty(), "not ours now");
    }

    #[test]
    fn a_foreign_probation_ends_in_the_stop_signal_then_sigkill() {
        let now = Instant::now();
        let probation = Duration::from_secs(30);
        let timeouts = Timeouts::default();
        for style in [ForeignProbation::Quiesce, ForeignProbation::WarmStandby] {
            let (mut m, _) = RetireMachine::foreign_with_probation(probation, style, timeouts, now);
            let over = now + probation;
            for early in [now, now + probation / 2, over - Duration::from_millis(1)] {
                assert!(m.step(RetireInput::Tick, early).is_empty(), "{style:?}");
            }
            assert_eq!(
                m.step(RetireInput::Tick, over),
                [RetireAction::Signal(Signal::Term)],
                "{style:?}"
            );
            assert_eq!(m.state(), RetireState::Terminated);
            assert!(!m.in_probation());
            assert!(m.step(RetireInput::Resume, over).is_empty(), "too late");
            assert_eq!(m.next_wakeup(), Some(over + timeouts.drain_grace));
            assert_eq!(
                m.step(RetireInput::Tick, over + timeouts.drain_grace),
                [RetireAction::Signal(Signal::Kill)]
            );
            assert_eq!(m.step(RetireInput::Exited, over), [RetireAction::Gone]);
        }
    }

    #[test]
    fn a_warm_standby_is_resumed_without_a_signal_and_may_die_first() {
        let now = Instant::now();
        let (mut m, actions) = RetireMachine::foreign_with_probation(
            Duration::from_secs(30),
            ForeignProbation::WarmStandby,
            Timeouts::default(),
            now,
        );
        assert!(actions.is_empty(), "it keeps serving: no signal");
        assert_eq!(m.state(), RetireState::Standby);
        assert!(m.in_probation());
        assert_eq!(m.step(RetireInput::Resume, now), [RetireAction::Resumed]);
        assert_eq!(m.state(), RetireState::Resumed);

        let (mut m, _) = RetireMachine::foreign_with_probation(
            Duration::from_secs(30),
            ForeignProbation::Quiesce,
            Timeouts::default(),
            now,
        );
        assert_eq!(m.step(RetireInput::Exited, now), [RetireAction::Gone]);
        assert!(!m.in_probation());
        assert!(m.step(RetireInput::Resume, now).is_empty());
    }
}
