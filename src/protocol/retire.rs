//! The supervisor's machine for an old generation after a commit: drain it
//! (overlap mode), tell it to retire, and make sure it exits.
//!
//! ```text
//! Draining -Drained-> Retiring -exit-> Gone          (overlap: starts at Draining)
//! Retiring -kill_grace-> Terminated (SIGTERM) -kill_grace-> Killed (SIGKILL) -exit-> Gone
//! ```
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Draining { until: Instant },
    Retiring { until: Instant },
    Terminated { until: Instant },
    Killed,
    Gone,
}

/// Retires one old generation.
#[derive(Debug)]
pub struct RetireMachine {
    state: State,
    timeouts: Timeouts,
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
                },
                vec![RetireAction::Send(Message::Retire)],
            )
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
            },
            vec![RetireAction::Signal(Signal::Term)],
        )
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
        }
    }

    /// When a Tick is due.
    pub fn next_wakeup(&self) -> Option<Instant> {
        match self.state {
            State::Draining { until } | State::Retiring { until } | State::Terminated { until } => {
                Some(until)
            }
            State::Killed | State::Gone => None,
        }
    }

    /// Feeds one input.
    pub fn step(&mut self, input: RetireInput, now: Instant) -> Vec<RetireAction> {
        let mut out = Vec::new();
        match (self.state, input) {
            (State::Gone, _) => {}
            (_, RetireInput::Exited) => {
                self.state = State::Gone;
                out.push(RetireAction::Gone);
            }
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
            State::Draining { until } | State::Retiring { until } if now >= until => {
                self.terminate(now, &mut out)
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
