//! The supervisor's handoff machine: the happy paths, a rollback from
//! every phase, an incumbent that dies, bounded outcomes (I7) and the
//! health gate (I12).

use std::time::{Duration, Instant};

use super::{
    FD_COUNT, GENERATION, ID, Stage, Sup, at_stage, begin, committed, drained, drive, finishes,
    has_commit, hello, killed, ready, reap_and_roll_back, rolled_back, seal_info, secs, sent,
    sent_names, setups, state_of, successor_failed, to_incumbent, unhealthy, verdict,
};
use crate::protocol::{
    GenerationMachine, HandoffAction, HandoffConfig, HandoffInput, HandoffMachine, HandoffState,
    Side, Signal, Verdict,
};
use crate::timeouts::{DRAIN_OVERRUN, Timeouts};
use crate::wire::{AbortReason, Health, Message, Mode, PROTOCOL_VERSIONS, VersionRange};

// ------------------------------------------------- handoff: happy paths

pub(super) fn exclusive_happy_path() -> Sup {
    let mut sup = Sup::new(Mode::Exclusive, true);
    sup.advance(secs(1));
    let actions = sup.successor_says(hello());
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(
        actions[0],
        HandoffAction::Send {
            to: Side::Successor,
            message: Message::HelloAck {
                version: PROTOCOL_VERSIONS.max,
                generation: GENERATION,
                mode: Mode::Exclusive,
                has_incumbent: true,
                fd_count: FD_COUNT,
            },
        }
    );
    assert_eq!(actions[1], HandoffAction::SendListeners);
    assert_eq!(sup.state(), HandoffState::WarmingUp);

    sup.advance(secs(1));
    let actions = sup.successor_says(Message::Warm);
    let left = Timeouts::default().handoff_deadline - secs(2);
    assert_eq!(
        actions,
        [to_incumbent(Message::Prepare {
            deadline_ms: left.as_millis() as u64,
            drain_grace_ms: Timeouts::default().drain_grace.as_millis() as u64,
        })]
    );
    assert_eq!(sup.state(), HandoffState::Draining);

    sup.advance(secs(1));
    assert_eq!(sup.incumbent_says(drained()), [to_incumbent(Message::Seal)]);
    assert_eq!(sup.state(), HandoffState::Sealing);

    sup.advance(secs(1));
    assert!(
        sup.incumbent_says(Message::SealProgress { done: 1, total: 2 })
            .is_empty()
    );
    assert_eq!(
        sup.incumbent_says(Message::SealComplete(seal_info())),
        [begin(Some(seal_info()))]
    );
    assert_eq!(sup.state(), HandoffState::Beginning);

    sup.advance(secs(1));
    let actions = sup.successor_says(ready(Health::Healthy));
    assert_eq!(actions.len(), 1);
    assert!(has_commit(&actions));
    assert_eq!(sup.state(), HandoffState::Committing);

    sup.advance(secs(1));
    let actions = sup.successor_says(Message::CommitAck);
    match actions.as_slice() {
        [
            HandoffAction::Finish(Verdict::Committed {
                phases,
                retire_incumbent: true,
                incumbent_stopped: None,
            }),
        ] => {
            assert_eq!(phases.hello, Some(secs(1)));
            assert_eq!(phases.warm_up, Some(secs(1)));
            assert_eq!(phases.drain, Some(secs(1)));
            assert_eq!(phases.seal, Some(secs(1)));
            assert_eq!(phases.begin, Some(secs(1)));
            assert_eq!(phases.commit, Some(secs(1)));
            assert_eq!(phases.abort, None);
            assert_eq!(phases.total, secs(6));
        }
        other => panic!("expected a commit, got {other:?}"),
    }
    assert!(sup.machine.is_done());
    assert_eq!(sup.machine.next_wakeup(), None);
    sup
}

#[test]
fn exclusive_handoff_drains_seals_begins_and_commits() {
    let mut sup = exclusive_happy_path();
    // Nothing after the verdict.
    assert!(sup.tick().is_empty());
    assert!(sup.successor_says(Message::CommitAck).is_empty());
    assert!(sup.exited(Side::Successor).is_empty());
}

#[test]
fn overlap_handoff_begins_without_prepare() {
    let mut sup = Sup::new(Mode::Overlap, true);
    let actions = sup.successor_says(hello());
    assert!(matches!(
        sent(&actions, Side::Successor)[..],
        [Message::HelloAck {
            mode: Mode::Overlap,
            has_incumbent: true,
            ..
        }]
    ));
    sup.advance(secs(1));
    let actions = sup.successor_says(Message::Warm);
    assert_eq!(actions, [begin(None)]);
    assert_eq!(sup.state(), HandoffState::Beginning);
    sup.advance(secs(1));
    assert!(has_commit(&sup.successor_says(ready(Health::Healthy))));
    assert!(committed(&sup.successor_says(Message::CommitAck)));
}

#[test]
fn cold_start_begins_without_an_incumbent() {
    for mode in [Mode::Exclusive, Mode::Overlap] {
        let mut sup = Sup::new(mode, false);
        let actions = sup.successor_says(hello());
        assert!(matches!(
            sent(&actions, Side::Successor)[..],
            [Message::HelloAck {
                has_incumbent: false,
                ..
            }]
        ));
        assert_eq!(sup.successor_says(Message::Warm), [begin(None)]);
        assert!(has_commit(&sup.successor_says(ready(Health::Healthy))));
        assert!(!committed(&sup.successor_says(Message::CommitAck)));
        // Incumbent events about a handoff without one are ignored.
        assert!(sup.exited(Side::Incumbent).is_empty());
    }
}

// ---------------------------------------------- handoff: abort matrix

/// Ways a successor can make a handoff fail (plus the operator's and the
/// clock's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Closed,
    Exited,
    Silent,
    Failed,
    Violation,
    WrongId,
    Cancel,
    Deadline,
}

fn inflict(sup: &mut Sup, failure: Failure) -> Vec<HandoffAction> {
    match failure {
        Failure::Closed => sup.closed(Side::Successor),
        Failure::Exited => sup.exited(Side::Successor),
        Failure::Silent => {
            // The incumbent keeps talking; the successor does not.
            sup.now = sup.successor_heard + secs(9);
            let actions = sup.incumbent_says(Message::Heartbeat);
            assert!(actions.is_empty(), "{actions:?}");
            sup.now = sup.successor_heard + sup.timeouts.liveness;
            sup.tick()
        }
        Failure::Failed => sup.successor_says(Message::Failed {
            reason: successor_failed(),
        }),
        // A supervisor-to-generation message never comes from a successor.
        Failure::Violation => sup.successor_says(Message::Commit),
        Failure::WrongId => {
            let id = sup.successor_id + 1;
            sup.frame(Side::Successor, id, Message::Heartbeat)
        }
        Failure::Cancel => sup.feed(HandoffInput::Cancel),
        Failure::Deadline => {
            let deadline = sup.deadline();
            if sup.state() == HandoffState::Sealing {
                sup.seal_until(deadline);
            } else {
                sup.idle_until(deadline);
            }
            sup.now = deadline;
            sup.tick()
        }
    }
}

fn reason_fits(failure: Failure, stage: Stage, reason: &AbortReason) -> bool {
    match failure {
        // EOF first, then the reap: the exit status is the better reason.
        Failure::Closed => matches!(reason, AbortReason::SuccessorExited { .. }),
        Failure::Exited => matches!(reason, AbortReason::SuccessorExited { .. }),
        Failure::Silent => *reason == AbortReason::SuccessorSilent,
        Failure::Failed => *reason == successor_failed(),
        Failure::Violation | Failure::WrongId => {
            matches!(reason, AbortReason::SuccessorProtocol { .. })
        }
        Failure::Cancel => *reason == AbortReason::Cancelled,
        Failure::Deadline => {
            *reason
                == AbortReason::Deadline {
                    phase: state_of(stage).as_str().into(),
                }
        }
    }
}

/// Drives a handoff to `stage`, fails it, and checks the rollback: the
/// successor is told and killed, the incumbent is resumed only if it was
/// asked to drain and only after the successor was reaped (I5).
fn check_abort(mode: Mode, has_incumbent: bool, stage: Stage, failure: Failure) {
    let context = format!("{mode:?} incumbent={has_incumbent} {stage:?} {failure:?}");
    // For the deadline to come while draining, the drain must be allowed
    // to last as long (else its overrun stops the incumbent first).
    let timeouts = Timeouts {
        drain_grace: Timeouts::default().handoff_deadline,
        ..Timeouts::default()
    };
    let mut sup = match failure {
        Failure::Deadline => drive(Sup::with_timeouts(mode, has_incumbent, timeouts), stage),
        _ => at_stage(mode, has_incumbent, stage),
    };
    let resume = mode == Mode::Exclusive
        && has_incumbent
        && matches!(
            stage,
            Stage::Draining | Stage::Sealing | Stage::Beginning | Stage::Committing
        );
    let mut actions = inflict(&mut sup, failure);
    assert!(!has_commit(&actions), "{context}: {actions:?}");
    if failure != Failure::Exited {
        assert!(killed(&actions, Side::Successor), "{context}: {actions:?}");
        let told = sent(&actions, Side::Successor)
            .iter()
            .any(|message| matches!(message, Message::Abort { .. }));
        // No Abort down a connection known to be dead.
        let link_dead = matches!(failure, Failure::Closed | Failure::Silent);
        assert_eq!(told, !link_dead, "{context}: {actions:?}");
        assert!(sent(&actions, Side::Incumbent).is_empty(), "{context}");
        assert_eq!(finishes(&actions), 0, "{context}: {actions:?}");
        assert_eq!(sup.state(), HandoffState::Aborting, "{context}");
        // Time passes; the successor is not yet reaped: nothing happens.
        sup.advance(secs(1));
        if has_incumbent {
            let heartbeat = sup.incumbent_says(Message::Heartbeat);
            assert!(heartbeat.is_empty(), "{context}: {heartbeat:?}");
        }
        actions = sup.exited(Side::Successor);
    } else {
        assert!(
            sent(&actions, Side::Successor).is_empty(),
            "{context}: {actions:?}"
        );
    }
    if resume {
        assert_eq!(
            actions,
            [to_incumbent(Message::ResumeAfterAbort)],
            "{context}"
        );
        assert_eq!(sup.state(), HandoffState::Resuming, "{context}");
        sup.advance(secs(1));
        actions = sup.incumbent_says(Message::ResumeAck);
    } else {
        assert!(sent(&actions, Side::Incumbent).is_empty(), "{context}");
    }
    let (reason, serving) = rolled_back(&actions);
    assert!(
        reason_fits(failure, stage, &reason),
        "{context}: reason {reason:?}"
    );
    assert_eq!(serving, has_incumbent, "{context}");
    assert!(sup.machine.is_done());
    let Some(Verdict::RolledBack { phases, .. }) = verdict(&actions) else {
        unreachable!("checked above")
    };
    assert!(phases.abort.is_some(), "{context}");
    // The phase the failure interrupted counts up to the failure: the
    // phases still add up to the total.
    let sum: Duration = phases.named().iter().filter_map(|(_, d)| *d).sum();
    assert_eq!(sum, phases.total, "{context}: {phases:?}");
}

fn check_abort_everywhere(failure: Failure) {
    for (mode, has_incumbent, stages) in setups() {
        for &stage in stages {
            check_abort(mode, has_incumbent, stage, failure);
        }
    }
}

#[test]
fn successor_closed_aborts_at_every_phase() {
    check_abort_everywhere(Failure::Closed);
}

#[test]
fn successor_exited_aborts_at_every_phase() {
    check_abort_everywhere(Failure::Exited);
}

#[test]
fn successor_silent_past_liveness_aborts_at_every_phase() {
    check_abort_everywhere(Failure::Silent);
}

#[test]
fn successor_failed_aborts_at_every_phase() {
    check_abort_everywhere(Failure::Failed);
}

#[test]
fn successor_protocol_violation_aborts_at_every_phase() {
    check_abort_everywhere(Failure::Violation);
}

#[test]
fn successor_wrong_handoff_id_aborts_at_every_phase() {
    check_abort_everywhere(Failure::WrongId);
}

#[test]
fn cancel_aborts_at_every_phase() {
    check_abort_everywhere(Failure::Cancel);
}

#[test]
fn deadline_aborts_at_every_phase() {
    check_abort_everywhere(Failure::Deadline);
}

#[test]
fn unhealthy_ready_rolls_back_without_commit() {
    for (mode, has_incumbent, _) in setups() {
        let mut sup = at_stage(mode, has_incumbent, Stage::Beginning);
        let actions = sup.successor_says(ready(unhealthy()));
        assert!(!has_commit(&actions));
        assert!(killed(&actions, Side::Successor));
        assert_eq!(sup.state(), HandoffState::Aborting);
        let mut actions = sup.exited(Side::Successor);
        if mode == Mode::Exclusive && has_incumbent {
            assert_eq!(actions, [to_incumbent(Message::ResumeAfterAbort)]);
            actions = sup.incumbent_says(Message::ResumeAck);
        }
        let (reason, serving) = rolled_back(&actions);
        assert_eq!(
            reason,
            AbortReason::Unhealthy {
                reason: "probe failed".into()
            }
        );
        assert_eq!(serving, has_incumbent);
    }
}

#[test]
fn disjoint_versions_are_refused() {
    let mut sup = Sup::new(Mode::Exclusive, true);
    let theirs = VersionRange {
        min: PROTOCOL_VERSIONS.max + 1,
        max: PROTOCOL_VERSIONS.max + 3,
    };
    let expected = AbortReason::VersionMismatch {
        ours: PROTOCOL_VERSIONS,
        theirs,
    };
    let actions = sup.successor_says(GenerationMachine::hello(1, "future".into(), theirs, 0));
    assert_eq!(
        sent(&actions, Side::Successor),
        [
            &Message::Refused {
                versions: PROTOCOL_VERSIONS,
                reason: expected.clone(),
            },
            &Message::Abort {
                reason: expected.clone()
            },
        ]
    );
    assert!(!actions.contains(&HandoffAction::SendListeners));
    assert!(killed(&actions, Side::Successor));
    assert!(sent(&actions, Side::Incumbent).is_empty());
    let (reason, serving) = rolled_back(&sup.exited(Side::Successor));
    assert_eq!(reason, expected);
    assert!(serving);
}

#[test]
fn seal_failure_resumes_the_incumbent_after_the_successor_is_reaped() {
    let mut sup = at_stage(Mode::Exclusive, true, Stage::Sealing);
    let actions = sup.incumbent_says(Message::SealFailed {
        reason: "disk full".into(),
    });
    assert!(killed(&actions, Side::Successor));
    assert!(sent(&actions, Side::Incumbent).is_empty());
    assert_eq!(
        sup.exited(Side::Successor),
        [to_incumbent(Message::ResumeAfterAbort)]
    );
    let (reason, serving) = rolled_back(&sup.incumbent_says(Message::ResumeAck));
    assert_eq!(
        reason,
        AbortReason::SealFailed {
            reason: "disk full".into()
        }
    );
    assert!(serving);
}

#[test]
fn incumbent_failure_while_draining_or_sealing_resumes_it() {
    for stage in [Stage::Draining, Stage::Sealing] {
        let mut sup = at_stage(Mode::Exclusive, true, stage);
        let actions = sup.incumbent_says(Message::Failed {
            reason: AbortReason::IncumbentFailed {
                detail: "drain failed".into(),
            },
        });
        // The incumbent is not killed: it still holds its state.
        assert!(!killed(&actions, Side::Incumbent), "{actions:?}");
        assert!(killed(&actions, Side::Successor));
        assert_eq!(
            sup.exited(Side::Successor),
            [to_incumbent(Message::ResumeAfterAbort)]
        );
        let (reason, serving) = rolled_back(&sup.incumbent_says(Message::ResumeAck));
        assert!(matches!(reason, AbortReason::IncumbentFailed { .. }));
        assert!(serving);
    }
}

/// An abort whose successor is already reaped goes through Aborting to
/// Resuming in one step. Both are entered and reported (the driver turns
/// each into a phase event and a fault point), so `supervisor:aborting` is
/// reached whichever of the successor's EOF and its reap comes first.
#[test]
fn an_abort_after_the_reap_enters_aborting_then_resuming_in_one_step() {
    let mut sup = at_stage(Mode::Exclusive, true, Stage::Beginning);
    let before = sup.visited.len();
    let actions = sup.exited(Side::Successor);
    assert_eq!(sent_names(&actions, Side::Incumbent), ["ResumeAfterAbort"]);
    assert_eq!(
        sup.visited[before..],
        [HandoffState::Aborting, HandoffState::Resuming]
    );
}

// ------------------------------------------- handoff: incumbent death

#[test]
fn incumbent_closed_before_warm_begins_unsealed_only_after_its_exit() {
    for stage in [Stage::AwaitHello, Stage::WarmingUp] {
        let mut sup = at_stage(Mode::Exclusive, true, stage);
        assert_eq!(
            sup.closed(Side::Incumbent),
            [HandoffAction::Kill {
                side: Side::Incumbent,
                signal: Signal::Kill,
            }]
        );
        if stage == Stage::AwaitHello {
            let actions = sup.successor_says(hello());
            assert!(matches!(
                sent(&actions, Side::Successor)[..],
                [Message::HelloAck {
                    has_incumbent: false,
                    ..
                }]
            ));
        }
        // Warm: the incumbent may still hold the lock until it is reaped.
        let actions = sup.successor_says(Message::Warm);
        assert!(actions.is_empty(), "{stage:?}: {actions:?}");
        assert_eq!(sup.state(), HandoffState::AwaitIncumbentExit);
        sup.advance(secs(1));
        assert!(sup.successor_says(Message::Heartbeat).is_empty());
        assert_eq!(sup.exited(Side::Incumbent), [begin(None)]);
        assert!(has_commit(&sup.successor_says(ready(Health::Healthy))));
        assert!(!committed(&sup.successor_says(Message::CommitAck)));
    }
}

#[test]
fn incumbent_exited_before_warm_begins_unsealed_at_warm() {
    for stage in [Stage::AwaitHello, Stage::WarmingUp] {
        let mut sup = at_stage(Mode::Exclusive, true, stage);
        assert!(sup.exited(Side::Incumbent).is_empty());
        if stage == Stage::AwaitHello {
            sup.successor_says(hello());
        }
        assert_eq!(sup.successor_says(Message::Warm), [begin(None)]);
        assert!(has_commit(&sup.successor_says(ready(Health::Healthy))));
        assert!(!committed(&sup.successor_says(Message::CommitAck)));
    }
}

pub(super) fn incumbent_dies_while_draining() -> Sup {
    let mut sup = at_stage(Mode::Exclusive, true, Stage::Draining);
    let actions = sup.closed(Side::Incumbent);
    assert!(killed(&actions, Side::Incumbent));
    assert!(sent(&actions, Side::Successor).is_empty());
    assert_eq!(sup.state(), HandoffState::AwaitIncumbentExit);
    assert_eq!(sup.exited(Side::Incumbent), [begin(None)]);
    assert_eq!(sup.state(), HandoffState::Beginning);
    sup
}

#[test]
fn incumbent_dying_while_draining_or_sealing_hands_over_unsealed_after_its_exit() {
    let mut sup = incumbent_dies_while_draining();
    assert!(has_commit(&sup.successor_says(ready(Health::Healthy))));
    assert!(!committed(&sup.successor_says(Message::CommitAck)));

    for stage in [Stage::Draining, Stage::Sealing] {
        // EOF first, then the reap.
        let mut sup = at_stage(Mode::Exclusive, true, stage);
        let actions = sup.closed(Side::Incumbent);
        assert!(killed(&actions, Side::Incumbent));
        assert!(sent(&actions, Side::Successor).is_empty());
        assert_eq!(sup.exited(Side::Incumbent), [begin(None)]);

        // Reaped at once.
        let mut sup = at_stage(Mode::Exclusive, true, stage);
        assert_eq!(sup.exited(Side::Incumbent), [begin(None)]);

        // Silent: the successor keeps talking.
        let mut sup = at_stage(Mode::Exclusive, true, stage);
        sup.now = sup.incumbent_heard + secs(9);
        assert!(sup.successor_says(Message::Heartbeat).is_empty());
        sup.now = sup.incumbent_heard + sup.timeouts.liveness;
        let actions = sup.tick();
        assert!(killed(&actions, Side::Incumbent), "{stage:?}: {actions:?}");
        assert!(sent(&actions, Side::Successor).is_empty());
        assert_eq!(sup.state(), HandoffState::AwaitIncumbentExit);
        assert_eq!(sup.exited(Side::Incumbent), [begin(None)]);

        // A protocol violation makes it as good as dead.
        let mut sup = at_stage(Mode::Exclusive, true, stage);
        let actions = sup.incumbent_says(Message::CommitAck);
        assert!(killed(&actions, Side::Incumbent));
        assert!(sent(&actions, Side::Successor).is_empty());
        assert_eq!(sup.exited(Side::Incumbent), [begin(None)]);
    }
}

#[test]
fn incumbent_dying_after_the_seal_does_not_stop_the_commit() {
    for stage in [Stage::Beginning, Stage::Committing] {
        for closed_first in [true, false] {
            let mut sup = at_stage(Mode::Exclusive, true, stage);
            if closed_first {
                let actions = sup.closed(Side::Incumbent);
                assert!(killed(&actions, Side::Incumbent));
                assert!(sent(&actions, Side::Successor).is_empty());
            }
            assert!(sup.exited(Side::Incumbent).is_empty());
            assert_eq!(sup.state(), state_of(stage));
            if stage == Stage::Beginning {
                assert!(has_commit(&sup.successor_says(ready(Health::Healthy))));
            }
            assert!(!committed(&sup.successor_says(Message::CommitAck)));
        }
    }
}

#[test]
fn incumbent_dying_while_resuming_rolls_back_without_it() {
    for closed_first in [true, false] {
        let mut sup = at_stage(Mode::Exclusive, true, Stage::Sealing);
        sup.feed(HandoffInput::Cancel);
        assert_eq!(
            sup.exited(Side::Successor),
            [to_incumbent(Message::ResumeAfterAbort)]
        );
        let actions = if closed_first {
            let actions = sup.closed(Side::Incumbent);
            assert!(killed(&actions, Side::Incumbent));
            actions
        } else {
            sup.exited(Side::Incumbent)
        };
        let (reason, serving) = rolled_back(&actions);
        assert_eq!(reason, AbortReason::Cancelled);
        assert!(!serving);
    }
}

#[test]
fn incumbent_dying_while_aborting_is_not_resumed() {
    let mut sup = at_stage(Mode::Exclusive, true, Stage::Beginning);
    sup.feed(HandoffInput::Cancel);
    assert!(sup.exited(Side::Incumbent).is_empty());
    let actions = sup.exited(Side::Successor);
    assert!(sent(&actions, Side::Incumbent).is_empty(), "{actions:?}");
    let (reason, serving) = rolled_back(&actions);
    assert_eq!(reason, AbortReason::Cancelled);
    assert!(!serving);
}

// ------------------------------------- handoff: bounded outcomes (I7)

fn stopped_why(actions: &[HandoffAction]) -> Option<String> {
    match verdict(actions) {
        Some(Verdict::Committed {
            incumbent_stopped, ..
        }) => incumbent_stopped.clone(),
        other => panic!("expected a commit, got {other:?} in {actions:?}"),
    }
}

#[test]
fn a_drain_that_overruns_its_grace_stops_the_incumbent_and_the_successor_proceeds() {
    let mut sup = at_stage(Mode::Exclusive, true, Stage::Draining);
    // Prepare went out at 2 s with the default grace (60 s).
    let overrun_at = sup.start + secs(2) + sup.timeouts.drain_grace + DRAIN_OVERRUN;
    sup.idle_until(overrun_at);
    assert!(sup.machine.next_wakeup() <= Some(overrun_at));
    sup.now = overrun_at - Duration::from_millis(1);
    assert!(sup.tick().is_empty(), "not before the bound");
    sup.now = overrun_at;
    let actions = sup.tick();
    assert!(killed(&actions, Side::Incumbent), "{actions:?}");
    assert!(!killed(&actions, Side::Successor), "{actions:?}");
    assert_eq!(sup.state(), HandoffState::AwaitIncumbentExit);
    // A Drained that comes after is too late: the incumbent no longer counts.
    assert!(sup.incumbent_says(drained()).is_empty());
    assert_eq!(sup.exited(Side::Incumbent), [begin(None)]);
    assert!(has_commit(&sup.successor_says(ready(Health::Healthy))));
    let why = stopped_why(&sup.successor_says(Message::CommitAck)).expect("a reason");
    assert!(why.contains("drain overran"), "{why}");
}

#[test]
fn a_seal_silent_for_half_the_time_left_stops_the_incumbent_and_the_successor_proceeds() {
    let mut sup = at_stage(Mode::Exclusive, true, Stage::Sealing);
    let deadline = sup.start + sup.timeouts.handoff_deadline;
    // The seal may stay silent for a share of the time left when it began,
    // counted again from each SealProgress.
    let silence = (deadline - sup.now) / 2;
    sup.advance(secs(1));
    let progress = Message::SealProgress { done: 1, total: 2 };
    assert!(sup.incumbent_says(progress).is_empty());
    let silent_at = sup.now + silence;
    sup.idle_until(silent_at);
    assert!(sup.machine.next_wakeup() <= Some(silent_at));
    sup.now = silent_at - Duration::from_millis(1);
    assert!(sup.tick().is_empty(), "not before the bound");
    sup.now = silent_at;
    let actions = sup.tick();
    assert!(killed(&actions, Side::Incumbent), "{actions:?}");
    assert!(!killed(&actions, Side::Successor), "{actions:?}");
    assert_eq!(sup.state(), HandoffState::AwaitIncumbentExit);
    // A SealComplete that comes after is too late: the successor begins
    // without a seal, once the incumbent is reaped (I5).
    assert!(
        sup.incumbent_says(Message::SealComplete(seal_info()))
            .is_empty()
    );
    assert_eq!(sup.exited(Side::Incumbent), [begin(None)]);
    assert!(has_commit(&sup.successor_says(ready(Health::Healthy))));
    let why = stopped_why(&sup.successor_says(Message::CommitAck)).expect("a reason");
    assert!(why.contains("seal sent no word"), "{why}");
    assert!(sup.now < deadline, "committed before the deadline");
}

#[test]
fn a_seal_with_progress_or_with_little_time_left_is_bounded_by_the_deadline_alone() {
    // Progress keeps a seal going, but never past the deadline: there the
    // handoff rolls back as before.
    let mut sup = at_stage(Mode::Exclusive, true, Stage::Sealing);
    let deadline = sup.start + sup.timeouts.handoff_deadline;
    sup.seal_until(deadline);
    assert_eq!(sup.machine.next_wakeup(), Some(deadline));
    sup.now = deadline;
    let actions = sup.tick();
    assert!(killed(&actions, Side::Successor), "{actions:?}");
    assert!(!killed(&actions, Side::Incumbent), "{actions:?}");
    // A drain that used the deadline up leaves a silence allowance under
    // SEAL_SILENCE_MIN: no silence bound, the deadline alone.
    let timeouts = Timeouts {
        drain_grace: Timeouts::default().handoff_deadline,
        ..Timeouts::default()
    };
    let mut sup = drive(
        Sup::with_timeouts(Mode::Exclusive, true, timeouts),
        Stage::Draining,
    );
    let deadline = sup.deadline();
    sup.idle_until(deadline - Duration::from_millis(1500));
    sup.now = deadline - Duration::from_millis(1500);
    assert_eq!(sup.incumbent_says(drained()), [to_incumbent(Message::Seal)]);
    assert_eq!(
        sup.machine.next_wakeup().map(|at| at >= deadline),
        Some(true)
    );
    sup.now = deadline - Duration::from_millis(1);
    assert!(
        sup.tick().is_empty(),
        "the seal runs on, silent, to the deadline"
    );
    sup.now = deadline;
    let actions = sup.tick();
    assert!(killed(&actions, Side::Successor), "{actions:?}");
    assert!(!killed(&actions, Side::Incumbent), "{actions:?}");
}

#[test]
fn a_successor_never_reaped_after_its_kill_is_given_up_after_the_kill_grace() {
    let mut sup = at_stage(Mode::Exclusive, true, Stage::Sealing);
    let actions = sup.feed(HandoffInput::Cancel);
    assert!(killed(&actions, Side::Successor));
    assert_eq!(sup.state(), HandoffState::Aborting);
    let give_up_at = sup.now + sup.timeouts.kill_grace;
    assert_eq!(sup.machine.next_wakeup(), Some(give_up_at));
    sup.now = give_up_at;
    // The incumbent is asked to resume; its relock waits for the lock (I5).
    assert_eq!(sup.tick(), [to_incumbent(Message::ResumeAfterAbort)]);
    let (reason, serving) = rolled_back(&sup.incumbent_says(Message::ResumeAck));
    assert_eq!(reason, AbortReason::Cancelled);
    assert!(serving);
    // Its exit, reported late, changes nothing.
    assert!(sup.exited(Side::Successor).is_empty());
}

#[test]
fn an_incumbent_that_does_not_resume_in_time_is_killed_and_nobody_serves() {
    for stage in [Stage::Draining, Stage::Sealing, Stage::Beginning] {
        let mut sup = at_stage(Mode::Exclusive, true, stage);
        sup.feed(HandoffInput::Cancel);
        assert_eq!(
            sup.exited(Side::Successor),
            [to_incumbent(Message::ResumeAfterAbort)],
            "{stage:?}"
        );
        assert_eq!(sup.state(), HandoffState::Resuming);
        let give_up_at = sup.now + sup.timeouts.resume;
        // Heartbeats (the agent thread lives on) do not extend the bound.
        sup.idle_until(give_up_at);
        assert!(sup.machine.next_wakeup() <= Some(give_up_at), "{stage:?}");
        sup.now = give_up_at - Duration::from_millis(1);
        assert!(sup.tick().is_empty(), "{stage:?}: not before the bound");
        sup.now = give_up_at;
        let actions = sup.tick();
        assert!(killed(&actions, Side::Incumbent), "{stage:?}: {actions:?}");
        let (reason, serving) = rolled_back(&actions);
        assert_eq!(reason, AbortReason::Cancelled);
        assert!(!serving, "{stage:?}: the killed incumbent does not serve");
        assert!(sup.machine.is_done());
        assert_eq!(sup.machine.next_wakeup(), None);
    }
}

#[test]
fn every_phase_before_the_verdict_has_a_wakeup() {
    // Bounded outcomes: whatever the peers do not say, a Tick comes.
    for (mode, has_incumbent, stages) in setups() {
        for &stage in stages {
            let mut sup = at_stage(mode, has_incumbent, stage);
            assert!(sup.machine.next_wakeup().is_some(), "{stage:?}");
            sup.feed(HandoffInput::Cancel);
            assert!(sup.machine.next_wakeup().is_some(), "{stage:?} aborting");
            let actions = sup.exited(Side::Successor);
            if sup.state() == HandoffState::Resuming {
                assert!(sup.machine.next_wakeup().is_some(), "{stage:?} resuming");
            } else {
                assert!(verdict(&actions).is_some(), "{stage:?}: {actions:?}");
            }
        }
    }
}

#[test]
fn with_force_a_failed_seal_stops_the_incumbent_and_the_successor_takes_over() {
    let failures = [
        Message::SealFailed {
            reason: "panicked".into(),
        },
        Message::Failed {
            reason: AbortReason::IncumbentFailed {
                detail: "drain failed".into(),
            },
        },
    ];
    for failure in failures {
        let stage = match failure {
            Message::SealFailed { .. } => Stage::Sealing,
            _ => Stage::Draining,
        };
        let mut sup = drive(Sup::forced(), stage);
        let actions = sup.incumbent_says(failure.clone());
        assert_eq!(
            actions,
            [HandoffAction::Kill {
                side: Side::Incumbent,
                signal: Signal::Term,
            }],
            "politely first"
        );
        assert!(!killed(&actions, Side::Successor));
        assert_eq!(sup.state(), HandoffState::AwaitIncumbentExit);
        let kill_at = sup.now + sup.timeouts.kill_grace;
        assert_eq!(sup.machine.next_wakeup(), Some(kill_at));
        sup.now = kill_at;
        let actions = sup.tick();
        assert_eq!(
            actions,
            [HandoffAction::Kill {
                side: Side::Incumbent,
                signal: Signal::Kill,
            }]
        );
        assert_eq!(sup.exited(Side::Incumbent), [begin(None)]);
        assert!(has_commit(&sup.successor_says(ready(Health::Healthy))));
        let why = stopped_why(&sup.successor_says(Message::CommitAck)).expect("a reason");
        assert!(why.contains("--force"), "{why}");
    }
    // Without force the same failure rolls back (see the abort matrix).
    let mut sup = at_stage(Mode::Exclusive, true, Stage::Sealing);
    let actions = sup.incumbent_says(Message::SealFailed {
        reason: "panicked".into(),
    });
    assert!(killed(&actions, Side::Successor));
}

// ------------------------------------------------------ health gate (I12)

/// A handoff with the health gate on, at Beginning.
pub(super) fn gated(mode: Mode, has_incumbent: bool) -> Sup {
    let timeouts = Timeouts::default();
    let mut sup = Sup::with_timeouts(mode, has_incumbent, timeouts);
    let mut config = HandoffConfig::new(ID, GENERATION, mode, has_incumbent);
    config.fd_count = FD_COUNT;
    config.timeouts = timeouts;
    config.probe = true;
    sup.machine = HandoffMachine::new(config, sup.start);
    sup.successor_says(hello());
    sup.successor_says(Message::Warm);
    if mode == Mode::Exclusive && has_incumbent {
        sup.incumbent_says(drained());
        sup.incumbent_says(Message::SealComplete(seal_info()));
    }
    assert_eq!(sup.state(), HandoffState::Beginning);
    sup
}

fn probe_started(actions: &[HandoffAction]) -> Option<Instant> {
    actions.iter().find_map(|action| match action {
        HandoffAction::StartProbe { until } => Some(*until),
        _ => None,
    })
}

#[test]
fn a_gated_ready_is_probed_before_commit() {
    for (mode, has_incumbent, _) in setups() {
        let mut sup = gated(mode, has_incumbent);
        sup.advance(secs(1));
        let actions = sup.successor_says(ready(Health::Healthy));
        assert!(
            !has_commit(&actions),
            "Commit before the probe: {actions:?}"
        );
        assert_eq!(probe_started(&actions), Some(sup.now + sup.timeouts.probe));
        assert_eq!(sup.state(), HandoffState::Probing);
        // Heartbeats keep the successor alive while the probe runs.
        sup.advance(secs(5));
        assert!(sup.successor_says(Message::Heartbeat).is_empty());
        let actions = sup.feed(HandoffInput::ProbePassed);
        assert!(has_commit(&actions), "{actions:?}");
        assert_eq!(sup.state(), HandoffState::Committing);
        let actions = sup.successor_says(Message::CommitAck);
        match verdict(&actions) {
            Some(Verdict::Committed { phases, .. }) => assert_eq!(phases.probe, Some(secs(5))),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_failed_probe_rolls_back_and_resumes_the_incumbent() {
    for (mode, has_incumbent, _) in setups() {
        let mut sup = gated(mode, has_incumbent);
        sup.successor_says(ready(Health::Healthy));
        let actions = sup.feed(HandoffInput::ProbeFailed {
            detail: "status 503".into(),
        });
        assert!(!has_commit(&actions));
        assert!(killed(&actions, Side::Successor));
        assert_eq!(sup.state(), HandoffState::Aborting);
        let (reason, serving) = reap_and_roll_back(&mut sup);
        assert_eq!(
            reason,
            AbortReason::ProbeFailed {
                detail: "status 503".into()
            }
        );
        assert_eq!(serving, has_incumbent, "{mode:?}");
    }
}

#[test]
fn an_unhealthy_ready_is_not_probed() {
    let mut sup = gated(Mode::Overlap, true);
    let actions = sup.successor_says(ready(unhealthy()));
    assert_eq!(probe_started(&actions), None);
    assert_eq!(sup.state(), HandoffState::Aborting);
}

#[test]
fn a_successor_dying_while_probed_rolls_back_and_late_verdicts_are_ignored() {
    let mut sup = gated(Mode::Exclusive, true);
    sup.successor_says(ready(Health::Healthy));
    let actions = sup.exited(Side::Successor);
    assert!(!has_commit(&actions));
    assert_eq!(sup.state(), HandoffState::Resuming);
    assert!(sup.feed(HandoffInput::ProbePassed).is_empty());
    assert_eq!(sup.state(), HandoffState::Resuming);
    let (reason, serving) = rolled_back(&sup.incumbent_says(Message::ResumeAck));
    assert!(
        matches!(reason, AbortReason::SuccessorExited { .. }),
        "{reason:?}"
    );
    assert!(serving);
}

#[test]
fn the_probe_is_bounded_by_the_handoff_deadline() {
    let timeouts = Timeouts {
        handoff_deadline: secs(20),
        drain_grace: secs(5),
        probe: secs(60),
        ..Timeouts::default()
    };
    let mut sup = Sup::with_timeouts(Mode::Overlap, true, timeouts);
    let mut config = HandoffConfig::new(ID, GENERATION, Mode::Overlap, true);
    config.timeouts = timeouts;
    config.probe = true;
    sup.machine = HandoffMachine::new(config, sup.start);
    sup.successor_says(hello());
    sup.successor_says(Message::Warm);
    sup.advance(secs(1));
    let actions = sup.successor_says(ready(Health::Healthy));
    assert_eq!(probe_started(&actions), Some(sup.deadline()));
    sup.advance(secs(4));
    sup.successor_says(Message::Heartbeat);
    sup.incumbent_says(Message::Heartbeat);
    sup.advance(secs(8));
    sup.successor_says(Message::Heartbeat);
    sup.incumbent_says(Message::Heartbeat);
    sup.advance(secs(8));
    let actions = sup.tick();
    assert!(killed(&actions, Side::Successor), "{actions:?}");
    let (reason, _) = reap_and_roll_back(&mut sup);
    assert_eq!(
        reason,
        AbortReason::Deadline {
            phase: "probing".into()
        }
    );
}

#[test]
fn a_probe_verdict_outside_probing_changes_nothing() {
    let mut sup = at_stage(Mode::Overlap, true, Stage::Beginning);
    assert!(sup.feed(HandoffInput::ProbePassed).is_empty());
    assert!(
        sup.feed(HandoffInput::ProbeFailed {
            detail: "late".into()
        })
        .is_empty()
    );
    assert_eq!(sup.state(), HandoffState::Beginning);
}
