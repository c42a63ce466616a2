//! What the handoff machine takes from whom and when: the ids each peer
//! carries (I9), liveness and wakeups (I2), and the messages a phase
//! refuses.

use std::time::Duration;

use super::{
    ID, OLD_ID, Stage, Sup, at_stage, drained, every_message, has_commit, hello, killed,
    reap_and_roll_back, rolled_back, seal_info, secs, sent, sent_names, setups, to_incumbent,
};
use crate::protocol::{HandoffAction, HandoffInput, HandoffState, Side, Signal};
use crate::timeouts::Timeouts;
use crate::wire::{AbortReason, Message, Mode};

// ------------------------------------------------ handoff: ids (I9)

#[test]
fn successor_hello_must_carry_zero() {
    let mut sup = Sup::new(Mode::Exclusive, true);
    let actions = sup.frame(Side::Successor, ID, hello());
    assert!(!sent_names(&actions, Side::Successor).contains(&"HelloAck"));
    assert!(killed(&actions, Side::Successor));
    let (reason, _) = rolled_back(&sup.exited(Side::Successor));
    assert!(matches!(reason, AbortReason::SuccessorProtocol { .. }));
}

#[test]
fn successor_messages_after_hello_ack_must_carry_the_id() {
    for wrong in [0, OLD_ID, ID + 1] {
        let mut sup = at_stage(Mode::Exclusive, true, Stage::WarmingUp);
        let actions = sup.frame(Side::Successor, wrong, Message::Warm);
        assert!(sent(&actions, Side::Incumbent).is_empty(), "{actions:?}");
        assert!(killed(&actions, Side::Successor));
        assert_eq!(sup.state(), HandoffState::Aborting);
    }
    let mut sup = at_stage(Mode::Exclusive, true, Stage::WarmingUp);
    assert_eq!(sup.frame(Side::Successor, ID, Message::Heartbeat), []);
}

#[test]
fn incumbent_carries_an_older_id_until_prepare_then_the_id() {
    // Before Prepare: any older id is its own; ID or newer is a violation.
    for older in [0, OLD_ID, ID - 1] {
        let mut sup = at_stage(Mode::Exclusive, true, Stage::WarmingUp);
        assert_eq!(sup.frame(Side::Incumbent, older, Message::Heartbeat), []);
    }
    for not_older in [ID, ID + 1] {
        let mut sup = at_stage(Mode::Exclusive, true, Stage::WarmingUp);
        let actions = sup.frame(Side::Incumbent, not_older, Message::Heartbeat);
        assert!(killed(&actions, Side::Incumbent), "{actions:?}");
        assert!(!sup.machine.incumbent_alive());
        // The successor goes on; it begins once the incumbent is reaped.
        assert_eq!(sup.state(), HandoffState::WarmingUp);
    }
    // After Prepare: exactly the id.
    for wrong in [0, OLD_ID, ID + 1] {
        let mut sup = at_stage(Mode::Exclusive, true, Stage::Draining);
        let actions = sup.frame(Side::Incumbent, wrong, drained());
        assert!(killed(&actions, Side::Incumbent), "{actions:?}");
        assert!(sent(&actions, Side::Incumbent).is_empty());
        assert_eq!(sup.state(), HandoffState::AwaitIncumbentExit);
    }
    let mut sup = at_stage(Mode::Exclusive, true, Stage::Draining);
    assert_eq!(
        sup.frame(Side::Incumbent, ID, drained()),
        [to_incumbent(Message::Seal)]
    );
}

#[test]
fn late_drain_and_seal_reports_while_resuming_are_ignored() {
    for stage in [Stage::Draining, Stage::Sealing] {
        let mut sup = at_stage(Mode::Exclusive, true, stage);
        sup.feed(HandoffInput::Cancel);
        assert_eq!(
            sup.exited(Side::Successor),
            [to_incumbent(Message::ResumeAfterAbort)]
        );
        for late in [
            drained(),
            Message::SealProgress { done: 2, total: 2 },
            Message::SealComplete(seal_info()),
            Message::SealFailed {
                reason: "late".into(),
            },
        ] {
            assert_eq!(sup.incumbent_says(late), []);
            assert_eq!(sup.state(), HandoffState::Resuming);
        }
        let (reason, serving) = rolled_back(&sup.incumbent_says(Message::ResumeAck));
        assert_eq!(reason, AbortReason::Cancelled);
        assert!(serving);
    }
}

/// A heartbeat the incumbent sent just before it received Prepare carries
/// its old id; it crosses Prepare on the wire and must not count as a
/// protocol violation (I9). A decision-carrying message with the old id
/// still does.
#[test]
fn a_heartbeat_crossing_prepare_with_the_old_id_is_accepted() {
    let mut sup = at_stage(Mode::Exclusive, true, Stage::Draining);
    let actions = sup.frame(Side::Incumbent, OLD_ID, Message::Heartbeat);
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(sup.state(), HandoffState::Draining);
    let actions = sup.frame(
        Side::Incumbent,
        OLD_ID,
        Message::Drained {
            open_connections: 0,
            accept_closed: true,
        },
    );
    assert!(
        actions.contains(&HandoffAction::Kill {
            side: Side::Incumbent,
            signal: Signal::Kill
        }),
        "{actions:?}"
    );
}

/// Likewise a successor heartbeat with id 0 crossing HelloAck.
#[test]
fn a_successor_heartbeat_crossing_hello_ack_is_accepted() {
    let mut sup = at_stage(Mode::Exclusive, true, Stage::WarmingUp);
    let actions = sup.frame(Side::Successor, 0, Message::Heartbeat);
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(sup.state(), HandoffState::WarmingUp);
}

// ------------------------------------------------ handoff: timers (I2)

#[test]
fn heartbeats_refresh_liveness() {
    let mut sup = at_stage(Mode::Exclusive, true, Stage::WarmingUp);
    let base = sup.now;
    assert_eq!(sup.incumbent_says(Message::Heartbeat), []);
    sup.now = base + secs(9);
    assert_eq!(sup.successor_says(Message::Heartbeat), []);
    assert_eq!(sup.incumbent_says(Message::Heartbeat), []);
    assert_eq!(sup.machine.next_wakeup(), Some(base + secs(19)));
    sup.now = base + secs(15);
    assert_eq!(sup.tick(), []);
    assert_eq!(sup.state(), HandoffState::WarmingUp);
    sup.now = base + secs(19) - Duration::from_nanos(1);
    assert_eq!(sup.tick(), []);
    sup.now = base + secs(19);
    let actions = sup.tick();
    assert!(killed(&actions, Side::Successor));
    assert!(killed(&actions, Side::Incumbent));
    assert_eq!(sup.state(), HandoffState::Aborting);
}

#[test]
fn next_wakeup_is_the_earliest_of_deadline_and_liveness() {
    let timeouts = Timeouts {
        handoff_deadline: secs(15),
        drain_grace: secs(5),
        ..Timeouts::default()
    };
    let mut sup = Sup::with_timeouts(Mode::Exclusive, true, timeouts);
    let start = sup.now;
    assert_eq!(sup.machine.next_wakeup(), Some(start + secs(10)));
    sup.advance(secs(2));
    sup.successor_says(hello());
    // The incumbent, last heard at the start, expires first.
    assert_eq!(sup.machine.next_wakeup(), Some(start + secs(10)));
    sup.advance(secs(7));
    sup.incumbent_says(Message::Heartbeat);
    assert_eq!(sup.machine.next_wakeup(), Some(start + secs(12)));
    sup.successor_says(Message::Heartbeat);
    assert_eq!(sup.machine.next_wakeup(), Some(start + secs(15)));
    sup.now = start + secs(15);
    let actions = sup.tick();
    assert!(killed(&actions, Side::Successor));
    assert_eq!(sup.state(), HandoffState::Aborting);
    // The deadline cannot fire twice: the wakeup now tracks the peers only.
    let next = sup.machine.next_wakeup().expect("peers to watch");
    assert!(next > sup.now);
}

#[test]
fn next_wakeup_after_a_deadline_abort_is_not_in_the_past() {
    // Regression: after the deadline aborted a handoff, `next_wakeup` kept
    // returning the passed deadline while the rollback waited for the
    // successor's reap and the incumbent's ResumeAck: the supervisor loop
    // spun on a timer that was always due.
    let mut sup = at_stage(Mode::Exclusive, true, Stage::Sealing);
    let deadline = sup.deadline();
    sup.seal_until(deadline);
    sup.now = deadline;
    assert!(killed(&sup.tick(), Side::Successor));
    let next = sup.machine.next_wakeup().expect("the incumbent is watched");
    assert!(next > sup.now);
    sup.advance(secs(1));
    assert_eq!(
        sup.exited(Side::Successor),
        [to_incumbent(Message::ResumeAfterAbort)]
    );
    let next = sup.machine.next_wakeup().expect("the incumbent is watched");
    assert_eq!(next, sup.incumbent_heard + sup.timeouts.liveness);
    // A resuming incumbent that falls silent is still noticed.
    sup.now = next;
    let (reason, serving) = rolled_back(&sup.tick());
    assert!(matches!(reason, AbortReason::Deadline { .. }));
    assert!(!serving);
}

// ------------------------------------- handoff: what a phase refuses

/// Whether `message` from the successor is legal in `state` (taken,
/// ignored, or a reported failure that aborts with its own reason).
fn successor_may_send(state: HandoffState, message: &Message) -> bool {
    matches!(
        (state, message),
        (_, Message::Heartbeat | Message::Failed { .. })
            // ARCHITECTURE.md: SnapshotReport is taken in any state.
            | (_, Message::SnapshotReport(_))
            | (HandoffState::AwaitHello, Message::Hello { .. })
            | (HandoffState::WarmingUp, Message::Warm)
            | (HandoffState::Beginning, Message::Ready { .. })
            | (HandoffState::Committing, Message::CommitAck)
    )
}

fn incumbent_may_send(state: HandoffState, message: &Message) -> bool {
    matches!(
        (state, message),
        (_, Message::Heartbeat | Message::SnapshotReport(_))
            | (
                HandoffState::Draining,
                Message::Drained { .. } | Message::Failed { .. }
            )
            | (
                HandoffState::Sealing,
                Message::SealProgress { .. }
                    | Message::SealComplete(_)
                    | Message::SealFailed { .. }
                    | Message::Failed { .. }
            )
    )
}

#[test]
fn a_message_a_phase_does_not_take_aborts_or_kills_never_commits() {
    let mut cases = Vec::new();
    for (mode, has_incumbent, stages) in setups() {
        for &stage in stages {
            cases.push((mode, has_incumbent, Some(stage)));
        }
    }
    // AwaitIncumbentExit (the incumbent's link is down: only the successor).
    cases.push((Mode::Exclusive, true, None));
    for (mode, has_incumbent, stage) in cases {
        let fresh = || match stage {
            Some(stage) => at_stage(mode, has_incumbent, stage),
            None => {
                let mut sup = at_stage(mode, has_incumbent, Stage::Draining);
                sup.closed(Side::Incumbent);
                assert_eq!(sup.state(), HandoffState::AwaitIncumbentExit);
                sup
            }
        };
        for message in every_message() {
            let context = format!("{mode:?} {stage:?} {}", message.name());
            let mut sup = fresh();
            let state = sup.state();
            let actions = sup.successor_says(message.clone());
            if let Message::Failed { reason } = &message {
                // A reported failure aborts with its own reason.
                assert!(!has_commit(&actions), "{context}: {actions:?}");
                assert_eq!(sup.state(), HandoffState::Aborting, "{context}");
                assert_eq!(reap_and_roll_back(&mut sup).0, *reason);
            } else if successor_may_send(state, &message) {
                assert!(!killed(&actions, Side::Successor), "{context}: {actions:?}");
                assert_ne!(sup.state(), HandoffState::Aborting, "{context}");
            } else {
                assert!(!has_commit(&actions), "{context}: {actions:?}");
                assert!(killed(&actions, Side::Successor), "{context}: {actions:?}");
                assert_eq!(sup.state(), HandoffState::Aborting, "{context}");
                let (reason, _) = reap_and_roll_back(&mut sup);
                assert!(
                    matches!(reason, AbortReason::SuccessorProtocol { .. }),
                    "{context}: {reason:?}"
                );
            }

            if !(has_incumbent && stage.is_some()) {
                continue;
            }
            let mut sup = fresh();
            let state = sup.state();
            let actions = sup.incumbent_says(message.clone());
            assert!(!has_commit(&actions), "{context}: {actions:?}");
            if incumbent_may_send(state, &message) {
                assert!(!killed(&actions, Side::Incumbent), "{context}: {actions:?}");
            } else {
                assert!(killed(&actions, Side::Incumbent), "{context}: {actions:?}");
                assert!(!sup.machine.incumbent_alive(), "{context}");
            }
        }
    }
}
