//! The retire machine: a superseded generation drained, asked to retire,
//! then terminated and killed if it does not go.

use std::time::{Duration, Instant};

use super::{drained, secs};
use crate::protocol::{RetireAction, RetireInput, RetireMachine, RetireState, Signal};
use crate::timeouts::Timeouts;
use crate::wire::Message;

fn retire_timeouts() -> Timeouts {
    Timeouts::default()
}

fn retire_states(machine: &RetireMachine) -> RetireState {
    let state = machine.state();
    assert!(RetireState::ALL.contains(&state));
    assert_eq!(machine.state_name(), state.as_str());
    state
}

#[test]
fn retire_overlap_drains_then_retires() {
    let timeouts = retire_timeouts();
    let now = Instant::now();
    let (mut machine, actions) = RetireMachine::start(true, timeouts, now);
    assert!(matches!(
        actions.as_slice(),
        [RetireAction::Send(Message::Prepare { .. })]
    ));
    assert_eq!(retire_states(&machine), RetireState::Draining);
    assert_eq!(
        machine.next_wakeup(),
        Some(now + timeouts.drain_grace + timeouts.kill_grace)
    );
    assert_eq!(machine.step(RetireInput::Tick, now + secs(1)), []);
    assert_eq!(
        machine.step(RetireInput::Frame(drained()), now + secs(2)),
        [RetireAction::Send(Message::Retire)]
    );
    assert_eq!(retire_states(&machine), RetireState::Retiring);
    assert_eq!(
        machine.step(RetireInput::Exited, now + secs(3)),
        [RetireAction::Gone]
    );
    assert_eq!(retire_states(&machine), RetireState::Gone);
    assert!(machine.is_gone());
    assert_eq!(machine.next_wakeup(), None);
    assert_eq!(machine.step(RetireInput::Exited, now + secs(4)), []);
}

#[test]
fn retire_exclusive_escalates_term_then_kill() {
    let timeouts = retire_timeouts();
    let grace = timeouts.kill_grace;
    let now = Instant::now();
    let (mut machine, actions) = RetireMachine::start(false, timeouts, now);
    assert_eq!(actions, [RetireAction::Send(Message::Retire)]);
    assert_eq!(retire_states(&machine), RetireState::Retiring);
    assert_eq!(machine.next_wakeup(), Some(now + grace));
    assert_eq!(
        machine.step(RetireInput::Tick, now + grace - Duration::from_millis(1)),
        []
    );
    assert_eq!(
        machine.step(RetireInput::Tick, now + grace),
        [RetireAction::Signal(Signal::Term)]
    );
    assert_eq!(retire_states(&machine), RetireState::Terminated);
    assert_eq!(machine.next_wakeup(), Some(now + grace * 2));
    assert_eq!(
        machine.step(RetireInput::Tick, now + grace * 2),
        [RetireAction::Signal(Signal::Kill)]
    );
    assert_eq!(retire_states(&machine), RetireState::Killed);
    assert_eq!(machine.next_wakeup(), None);
    assert_eq!(
        machine.step(RetireInput::Exited, now + grace * 3),
        [RetireAction::Gone]
    );
    assert_eq!(retire_states(&machine), RetireState::Gone);
}

#[test]
fn retire_closed_terminates_at_once() {
    for drain_first in [true, false] {
        let timeouts = retire_timeouts();
        let now = Instant::now();
        let (mut machine, _) = RetireMachine::start(drain_first, timeouts, now);
        assert_eq!(
            machine.step(RetireInput::Closed, now + secs(1)),
            [RetireAction::Signal(Signal::Term)]
        );
        assert_eq!(retire_states(&machine), RetireState::Terminated);
        assert_eq!(
            machine.step(RetireInput::Tick, now + secs(1) + timeouts.kill_grace),
            [RetireAction::Signal(Signal::Kill)]
        );
    }
}

#[test]
fn retire_draining_too_long_is_terminated() {
    let timeouts = retire_timeouts();
    let now = Instant::now();
    let (mut machine, _) = RetireMachine::start(true, timeouts, now);
    let until = now + timeouts.drain_grace + timeouts.kill_grace;
    assert_eq!(
        machine.step(RetireInput::Tick, until),
        [RetireAction::Signal(Signal::Term)]
    );
}

#[test]
fn retire_exit_at_any_point_is_gone() {
    let timeouts = retire_timeouts();
    let grace = timeouts.kill_grace;
    let now = Instant::now();
    // (drain first, time to let pass before the exit)
    for (drain_first, wait) in [
        (true, Duration::ZERO),
        (false, Duration::ZERO),
        (false, grace),
        (false, grace * 2),
    ] {
        let (mut machine, _) = RetireMachine::start(drain_first, timeouts, now);
        machine.step(RetireInput::Tick, now + wait);
        assert_eq!(
            machine.step(RetireInput::Exited, now + wait),
            [RetireAction::Gone]
        );
        assert!(machine.is_gone());
        assert_eq!(machine.step(RetireInput::Tick, now + wait + grace * 4), []);
    }
}
