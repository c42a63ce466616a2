//! A daemon generation's machine: successor then incumbent, aborts,
//! resumes, ids and the hooks it runs.

use super::{
    GENERATION, Gen, ID, drained, fds, generation_at, hello_ack, hook_drained, prepare, ready,
    ready_call, seal_info, secs, successor_failed,
};
use crate::protocol::{
    Ending, GenerationAction, GenerationInput, GenerationState, HookCall, HookOutcome, UserCall,
};
use crate::wire::{AbortReason, Fingerprint, Health, Message, Mode, PROTOCOL_VERSIONS, Snapshot};

fn generation_states_before_serving() -> [GenerationState; 6] {
    [
        GenerationState::AwaitHelloAck,
        GenerationState::ReceivingFds,
        GenerationState::WarmingUp,
        GenerationState::AwaitBegin,
        GenerationState::Begun,
        GenerationState::AwaitCommit,
    ]
}

// --------------------------------------------------- generation tests

pub(super) fn successor_happy_path() -> Gen {
    let mut g = Gen::new();
    assert_eq!(g.state(), GenerationState::AwaitHelloAck);
    assert_eq!(g.machine.handoff_id(), 0);
    assert_eq!(g.frame_with_id(ID, hello_ack(3)), []);
    assert_eq!(g.machine.handoff_id(), ID);
    assert_eq!(g.state(), GenerationState::ReceivingFds);
    assert_eq!(g.frame(fds(2)), [GenerationAction::KeepFds]);
    assert_eq!(g.state(), GenerationState::ReceivingFds);
    assert_eq!(
        g.frame(fds(1)),
        [
            GenerationAction::KeepFds,
            GenerationAction::FdsComplete {
                mode: Mode::Exclusive,
                has_incumbent: true,
                generation: GENERATION,
            },
        ]
    );
    assert_eq!(g.state(), GenerationState::WarmingUp);
    assert_eq!(
        g.user(UserCall::Warm),
        [GenerationAction::Send(Message::Warm)]
    );
    assert_eq!(g.state(), GenerationState::AwaitBegin);
    assert_eq!(
        g.frame(Message::Begin {
            seal: Some(seal_info())
        }),
        [GenerationAction::Began(Some(seal_info()))]
    );
    assert_eq!(g.state(), GenerationState::Begun);
    assert_eq!(
        g.user(ready_call(Some(seal_info().fingerprint))),
        [GenerationAction::Send(ready(Health::Healthy))]
    );
    assert_eq!(g.state(), GenerationState::AwaitCommit);
    // The ack waits until the process detached from the supervisor (I8).
    assert_eq!(g.frame(Message::Commit), [GenerationAction::Committed]);
    assert_eq!(g.state(), GenerationState::Committing);
    assert_eq!(
        g.user(UserCall::Detached),
        [GenerationAction::Send(Message::CommitAck)]
    );
    assert_eq!(g.state(), GenerationState::Serving);
    assert!(!g.state().is_successor());
    // An orphan-safe serving generation does not watch the supervisor.
    assert_eq!(g.machine.next_wakeup(), None);
    g
}

#[test]
fn generation_successor_then_incumbent_happy_path() {
    let mut g = successor_happy_path();
    // A later handoff: this generation is the incumbent now.
    let before = g.now;
    let actions = g.frame_with_id(ID + 1, prepare());
    assert_eq!(
        actions,
        [GenerationAction::RunHook(HookCall::Drain {
            deadline: before + secs(1) + secs(30),
        })]
    );
    assert_eq!(g.machine.handoff_id(), ID + 1);
    assert_eq!(g.state(), GenerationState::Draining);
    assert_eq!(
        g.machine.next_wakeup(),
        Some(g.now + g.timeouts.liveness),
        "the incumbent watches the supervisor during a handoff"
    );
    assert_eq!(g.hook(hook_drained()), [GenerationAction::Send(drained())]);
    assert_eq!(g.state(), GenerationState::Drained);
    assert_eq!(
        g.frame(Message::Seal),
        [GenerationAction::RunHook(HookCall::Seal)]
    );
    assert_eq!(g.state(), GenerationState::Sealing);
    // I4: the lock goes only after the seal returned Ok, and before the
    // supervisor can hear SealComplete and Begin the successor.
    assert_eq!(
        g.hook(HookOutcome::Sealed(seal_info())),
        [
            GenerationAction::ReleaseLock,
            GenerationAction::Send(Message::SealComplete(seal_info())),
        ]
    );
    assert_eq!(g.state(), GenerationState::Sealed);
    assert_eq!(
        g.frame(Message::Retire),
        [GenerationAction::End(Ending::Retired)]
    );
    assert_eq!(g.state(), GenerationState::Ended);
    assert_eq!(g.machine.next_wakeup(), None);
}

#[test]
fn generation_without_fds_is_warm_at_hello_ack() {
    let mut g = Gen::new();
    assert_eq!(
        g.frame_with_id(ID, hello_ack(0)),
        [GenerationAction::FdsComplete {
            mode: Mode::Exclusive,
            has_incumbent: true,
            generation: GENERATION,
        }]
    );
    assert_eq!(g.state(), GenerationState::WarmingUp);
}

#[test]
fn generation_refused_ends_aborted() {
    let mut g = Gen::new();
    let reason = AbortReason::VersionMismatch {
        ours: PROTOCOL_VERSIONS,
        theirs: PROTOCOL_VERSIONS,
    };
    assert_eq!(
        g.frame_with_id(
            ID,
            Message::Refused {
                versions: PROTOCOL_VERSIONS,
                reason: reason.clone(),
            }
        ),
        [GenerationAction::End(Ending::Aborted(reason))]
    );
}

#[test]
fn fingerprint_mismatch_or_missing_fails_before_ready() {
    for fingerprint in [Some(Fingerprint([9; 32])), None] {
        let mut g = generation_at(GenerationState::Begun);
        let reason = AbortReason::FingerprintMismatch {
            expected: seal_info().fingerprint,
            actual: fingerprint.unwrap_or(Fingerprint([0; 32])),
        };
        assert_eq!(
            g.user(ready_call(fingerprint)),
            [
                GenerationAction::Send(Message::Failed {
                    reason: reason.clone()
                }),
                GenerationAction::End(Ending::Gave(reason)),
            ]
        );
        assert_eq!(g.state(), GenerationState::Ended);
    }
    // Without a seal there is nothing to compare.
    let mut g = generation_at(GenerationState::AwaitBegin);
    g.frame(Message::Begin { seal: None });
    assert_eq!(
        g.user(ready_call(None)),
        [GenerationAction::Send(ready(Health::Healthy))]
    );
}

#[test]
fn too_many_fds_close_the_connection() {
    let mut g = Gen::new();
    g.frame_with_id(ID, hello_ack(1));
    let actions = g.frame(fds(2));
    assert!(
        matches!(
            actions.as_slice(),
            [
                GenerationAction::CloseConnection(_),
                GenerationAction::End(Ending::Violation(_))
            ]
        ),
        "{actions:?}"
    );
    assert!(!g.machine.supervisor_present());
}

#[test]
fn abort_before_serving_ends_the_generation() {
    for state in generation_states_before_serving() {
        let mut g = generation_at(state);
        let actions = g.frame(Message::Abort {
            reason: AbortReason::Cancelled,
        });
        // Before HelloAck the Abort brings the id, as HelloAck would.
        assert_eq!(
            actions,
            [GenerationAction::End(Ending::Aborted(
                AbortReason::Cancelled
            ))],
            "{state:?}"
        );
        assert_eq!(g.state(), GenerationState::Ended);
    }
}

#[test]
fn daemon_failure_before_ready_is_reported() {
    for state in [
        GenerationState::WarmingUp,
        GenerationState::AwaitBegin,
        GenerationState::Begun,
    ] {
        let mut g = generation_at(state);
        assert_eq!(
            g.user(UserCall::Fail(successor_failed())),
            [
                GenerationAction::Send(Message::Failed {
                    reason: successor_failed()
                }),
                GenerationAction::End(Ending::Gave(successor_failed())),
            ]
        );
    }
}

#[test]
fn supervisor_lost_before_serving_ends_the_generation() {
    for state in generation_states_before_serving() {
        for by_silence in [false, true] {
            let mut g = generation_at(state);
            let actions = if by_silence { g.silence() } else { g.closed() };
            assert_eq!(
                actions,
                [GenerationAction::End(Ending::SupervisorLost)],
                "{state:?} silence={by_silence}"
            );
            assert!(!g.machine.supervisor_present());
        }
    }
}

#[test]
fn supervisor_lost_while_serving_changes_nothing() {
    let mut g = generation_at(GenerationState::Serving);
    g.now += secs(3600);
    assert_eq!(g.feed(GenerationInput::Tick), []);
    assert!(g.machine.supervisor_present());
    assert_eq!(g.closed(), []);
    assert_eq!(g.state(), GenerationState::Serving);
    assert!(!g.machine.supervisor_present());
}

#[test]
fn supervisor_lost_mid_handoff_resumes_the_incumbent() {
    for by_silence in [false, true] {
        let lose = |g: &mut Gen| if by_silence { g.silence() } else { g.closed() };

        // Draining: the drain finishes, then the daemon resumes.
        let mut g = generation_at(GenerationState::Draining);
        assert_eq!(lose(&mut g), []);
        assert_eq!(g.state(), GenerationState::DrainingAborted);
        assert_eq!(
            g.hook(hook_drained()),
            [GenerationAction::RunHook(HookCall::Resume)]
        );
        assert_eq!(g.hook(HookOutcome::Resumed), [], "no ResumeAck to send");
        assert_eq!(g.state(), GenerationState::Serving);

        // Drained: resume at once (the lock never left).
        let mut g = generation_at(GenerationState::Drained);
        assert_eq!(lose(&mut g), [GenerationAction::RunHook(HookCall::Resume)]);
        assert_eq!(g.state(), GenerationState::Resuming);
        assert_eq!(g.hook(HookOutcome::Resumed), []);
        assert_eq!(g.state(), GenerationState::Serving);

        // Sealing: the seal finishes but the lock is kept.
        let mut g = generation_at(GenerationState::Sealing);
        assert_eq!(lose(&mut g), []);
        assert_eq!(g.state(), GenerationState::SealingAborted);
        assert_eq!(
            g.hook(HookOutcome::Sealed(seal_info())),
            [GenerationAction::RunHook(HookCall::Resume)]
        );
        assert_eq!(g.hook(HookOutcome::Resumed), []);
        assert_eq!(g.state(), GenerationState::Serving);

        // Sealed: re-take the lock first (I5).
        let mut g = generation_at(GenerationState::Sealed);
        assert_eq!(lose(&mut g), [GenerationAction::Relock]);
        assert_eq!(g.state(), GenerationState::Relocking);
        assert_eq!(
            g.hook(HookOutcome::Relocked),
            [GenerationAction::RunHook(HookCall::Resume)]
        );
        assert_eq!(g.hook(HookOutcome::Resumed), []);
        assert_eq!(g.state(), GenerationState::Serving);

        // Sealed, and a committed successor keeps the lock: retire.
        let mut g = generation_at(GenerationState::Sealed);
        assert_eq!(lose(&mut g), [GenerationAction::Relock]);
        assert_eq!(
            g.hook(HookOutcome::RelockTimedOut),
            [GenerationAction::End(Ending::Retired)]
        );
    }
}

#[test]
fn resume_after_abort_in_each_incumbent_state() {
    // Drained.
    let mut g = generation_at(GenerationState::Drained);
    assert_eq!(
        g.frame(Message::ResumeAfterAbort),
        [GenerationAction::RunHook(HookCall::Resume)]
    );
    assert_eq!(
        g.hook(HookOutcome::Resumed),
        [GenerationAction::Send(Message::ResumeAck)]
    );
    assert_eq!(g.state(), GenerationState::Serving);

    // Draining: the drain hook finishes first; its result is not reported.
    for outcome in [hook_drained(), HookOutcome::DrainFailed("stuck".into())] {
        let mut g = generation_at(GenerationState::Draining);
        assert_eq!(g.frame(Message::ResumeAfterAbort), []);
        assert_eq!(g.state(), GenerationState::DrainingAborted);
        assert_eq!(
            g.hook(outcome),
            [GenerationAction::RunHook(HookCall::Resume)]
        );
        assert_eq!(
            g.hook(HookOutcome::Resumed),
            [GenerationAction::Send(Message::ResumeAck)]
        );
    }

    // Sealing: whatever the seal did, the lock was kept.
    for outcome in [
        HookOutcome::Sealed(seal_info()),
        HookOutcome::SealFailed("disk full".into()),
    ] {
        let mut g = generation_at(GenerationState::Sealing);
        assert_eq!(g.frame(Message::ResumeAfterAbort), []);
        assert_eq!(g.state(), GenerationState::SealingAborted);
        assert_eq!(
            g.hook(outcome),
            [GenerationAction::RunHook(HookCall::Resume)]
        );
        assert_eq!(
            g.hook(HookOutcome::Resumed),
            [GenerationAction::Send(Message::ResumeAck)]
        );
        assert_eq!(g.state(), GenerationState::Serving);
    }

    // Sealed: relock, then resume.
    let mut g = generation_at(GenerationState::Sealed);
    assert_eq!(
        g.frame(Message::ResumeAfterAbort),
        [GenerationAction::Relock]
    );
    assert_eq!(
        g.hook(HookOutcome::Relocked),
        [GenerationAction::RunHook(HookCall::Resume)]
    );
    assert_eq!(
        g.hook(HookOutcome::Resumed),
        [GenerationAction::Send(Message::ResumeAck)]
    );

    // Relock timed out: a committed successor holds the lock.
    let mut g = generation_at(GenerationState::Sealed);
    g.frame(Message::ResumeAfterAbort);
    let actions = g.hook(HookOutcome::RelockTimedOut);
    assert!(
        matches!(
            actions.as_slice(),
            [
                GenerationAction::Send(Message::Failed { .. }),
                GenerationAction::End(Ending::Retired)
            ]
        ),
        "{actions:?}"
    );

    // A failed resume ends the process so the supervisor starts afresh.
    let mut g = generation_at(GenerationState::Drained);
    g.frame(Message::ResumeAfterAbort);
    let actions = g.hook(HookOutcome::ResumeFailed("corrupt".into()));
    assert!(
        matches!(
            actions.as_slice(),
            [
                GenerationAction::Send(Message::Failed { .. }),
                GenerationAction::End(Ending::Failed(_))
            ]
        ),
        "{actions:?}"
    );
}

#[test]
fn drain_and_seal_failures_are_reported_and_keep_the_lock() {
    let mut g = generation_at(GenerationState::Draining);
    let actions = g.hook(HookOutcome::DrainFailed("stuck".into()));
    assert!(
        matches!(
            actions.as_slice(),
            [GenerationAction::Send(Message::Failed { .. })]
        ),
        "{actions:?}"
    );
    assert_eq!(g.state(), GenerationState::Drained);

    let mut g = generation_at(GenerationState::Sealing);
    assert_eq!(
        g.hook(HookOutcome::SealFailed("disk full".into())),
        [GenerationAction::Send(Message::SealFailed {
            reason: "disk full".into()
        })]
    );
    assert_eq!(g.state(), GenerationState::Drained);
    assert_eq!(
        g.frame(Message::ResumeAfterAbort),
        [GenerationAction::RunHook(HookCall::Resume)]
    );
}

#[test]
fn retire_after_drain_ends_the_generation() {
    let mut g = generation_at(GenerationState::Drained);
    assert_eq!(
        g.frame(Message::Retire),
        [GenerationAction::End(Ending::Retired)]
    );
}

#[test]
fn prepare_must_carry_a_newer_id() {
    for id in [ID, ID - 1, 0] {
        let mut g = generation_at(GenerationState::Serving);
        let actions = g.frame_with_id(id, prepare());
        assert!(
            matches!(actions.as_slice(), [GenerationAction::CloseConnection(_)]),
            "{id}: {actions:?}"
        );
        assert_eq!(g.state(), GenerationState::Serving);
        assert_eq!(g.machine.handoff_id(), ID);
        assert!(!g.machine.supervisor_present());
    }
}

#[test]
fn a_wrong_id_closes_the_connection() {
    // A successor ends.
    let mut g = generation_at(GenerationState::AwaitBegin);
    let actions = g.frame_with_id(ID + 1, Message::Begin { seal: None });
    assert!(
        matches!(
            actions.as_slice(),
            [
                GenerationAction::CloseConnection(_),
                GenerationAction::End(Ending::Violation(_))
            ]
        ),
        "{actions:?}"
    );
    // An incumbent treats the supervisor as lost: it resumes.
    let mut g = generation_at(GenerationState::Drained);
    let actions = g.frame_with_id(ID, Message::Seal);
    assert!(
        matches!(
            actions.as_slice(),
            [
                GenerationAction::CloseConnection(_),
                GenerationAction::RunHook(HookCall::Resume)
            ]
        ),
        "{actions:?}"
    );
    // Frames after the connection was dropped are not read.
    assert_eq!(g.frame_with_id(ID + 1, Message::Seal), []);
}

#[test]
fn snapshots_are_served_in_any_state() {
    for state in [
        GenerationState::WarmingUp,
        GenerationState::Serving,
        GenerationState::Sealed,
    ] {
        let mut g = generation_at(state);
        assert_eq!(
            g.frame(Message::SnapshotRequest),
            [GenerationAction::RunHook(HookCall::Snapshot)]
        );
        assert_eq!(
            g.hook(HookOutcome::Snapshot(Snapshot::default())),
            [GenerationAction::Send(Message::SnapshotReport(
                Snapshot::default()
            ))]
        );
        assert_eq!(g.state(), state);
    }
}

#[test]
fn an_unasked_hook_outcome_fails_closed() {
    let mut g = generation_at(GenerationState::Serving);
    let actions = g.hook(HookOutcome::Sealed(seal_info()));
    assert!(
        matches!(
            actions.as_slice(),
            [GenerationAction::End(Ending::Failed(_))]
        ),
        "{actions:?}"
    );
}

#[test]
fn an_orphan_that_serves_is_adopted_once_and_only_under_its_number() {
    let mut g = successor_happy_path();
    let offer = |generation| GenerationInput::AdoptionOffered { generation };
    // A supervisor is connected: nobody else may take the generation.
    assert!(matches!(
        g.feed(offer(GENERATION)).as_slice(),
        [GenerationAction::RefuseAdoption(why)] if why.contains("connected")
    ));
    // Its supervisor dies: it keeps serving, an orphan.
    assert_eq!(g.feed(GenerationInput::Closed), []);
    assert_eq!(g.state(), GenerationState::Serving);
    assert!(g.machine.is_orphaned());
    // A record naming another generation is refused.
    assert!(matches!(
        g.feed(offer(GENERATION + 1)).as_slice(),
        [GenerationAction::RefuseAdoption(why)] if why.contains(&GENERATION.to_string())
    ));
    assert!(g.machine.is_orphaned());
    assert_eq!(
        g.feed(offer(GENERATION)),
        [GenerationAction::AcceptAdoption]
    );
    assert!(g.machine.supervisor_present());
    assert!(!g.machine.is_orphaned());
    // The new supervisor drives handoffs as the old one did.
    let actions = g.frame_with_id(ID + 1, prepare());
    assert!(matches!(
        actions.as_slice(),
        [GenerationAction::RunHook(HookCall::Drain { .. })]
    ));
}

#[test]
fn a_generation_that_is_not_serving_is_never_adopted() {
    let mut g = Gen::new();
    assert_eq!(
        g.feed(GenerationInput::Closed),
        [GenerationAction::End(Ending::SupervisorLost)]
    );
    assert!(!g.machine.is_orphaned());
    assert!(matches!(
        g.feed(GenerationInput::AdoptionOffered { generation: 0 }).as_slice(),
        [GenerationAction::RefuseAdoption(why)] if why.contains("not serving")
    ));
}

#[test]
fn connections_reach_the_daemon_in_any_state_and_a_budget_only_around_a_drain() {
    let connections = Message::Connections {
        entries: vec![crate::wire::ConnectionEntry {
            tag: "http".into(),
            unread: b"GET".to_vec(),
        }],
    };
    let budget = |connections| Message::ConnectionBudget { connections };
    let mut g = successor_happy_path();
    assert_eq!(g.state(), GenerationState::Serving);
    assert_eq!(
        g.frame(connections.clone()),
        [GenerationAction::KeepConnections]
    );
    // Before Prepare (where the supervisor sends it) and during the drain.
    assert_eq!(g.frame(budget(5)), [GenerationAction::ConnectionBudget(5)]);
    g.frame_with_id(ID + 1, prepare());
    assert_eq!(g.frame(budget(7)), [GenerationAction::ConnectionBudget(7)]);
    assert_eq!(
        g.frame(connections.clone()),
        [GenerationAction::KeepConnections]
    );
    g.hook(hook_drained());
    // After the drain it grants nothing, and breaks nothing.
    assert_eq!(g.frame(budget(9)), []);
    assert_eq!(g.state(), GenerationState::Drained);
    assert_eq!(g.frame(connections), [GenerationAction::KeepConnections]);
}

#[test]
fn the_hello_announces_the_capabilities_it_is_given() {
    let hello = crate::protocol::GenerationMachine::hello(
        1,
        "b".into(),
        PROTOCOL_VERSIONS,
        crate::wire::CAP_CONNECTIONS,
    );
    assert!(matches!(
        hello,
        Message::Hello {
            capabilities: crate::wire::CAP_CONNECTIONS,
            ..
        }
    ));
}

#[test]
fn schemas_go_out_after_a_hello_ack_of_version_2_only_when_declared_and_again_on_adoption() {
    use crate::wire::{Schema, SchemaRange};
    let schemas = Message::Schemas {
        produces: vec![Schema {
            name: "kv".into(),
            version: 3,
        }],
        accepts: vec![SchemaRange {
            name: "kv".into(),
            min: 2,
            max: 3,
        }],
    };
    let Message::Schemas { produces, accepts } = schemas.clone() else {
        unreachable!()
    };
    let ack = |version| Message::HelloAck {
        version,
        generation: GENERATION,
        mode: Mode::Exclusive,
        has_incumbent: true,
        fd_count: 0,
    };
    let declared = || {
        let mut g = Gen::new();
        g.machine = std::mem::replace(
            &mut g.machine,
            crate::protocol::GenerationMachine::new(&g.timeouts, g.now),
        )
        .with_schemas(produces.clone(), accepts.clone());
        g
    };
    let mut g = declared();
    assert_eq!(
        g.machine.schemas_sent(),
        None,
        "nothing sent before the ack"
    );
    let actions = g.frame_with_id(ID, ack(2));
    assert_eq!(actions[0], GenerationAction::Send(schemas.clone()));
    // What an adopting supervisor is sent again.
    assert_eq!(g.machine.schemas_sent(), Some(schemas));
    // A version-1 supervisor would not know the message.
    let mut g = declared();
    let actions = g.frame_with_id(ID, ack(1));
    assert_eq!(g.machine.schemas_sent(), None);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, GenerationAction::Send(Message::Schemas { .. }))),
        "{actions:?}"
    );
    // Nothing declared: nothing sent.
    let actions = Gen::new().frame_with_id(ID, ack(2));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, GenerationAction::Send(Message::Schemas { .. }))),
        "{actions:?}"
    );
}

#[test]
fn items_reach_the_daemon_in_any_state() {
    let items = Message::Items {
        entries: Vec::new(),
    };
    let mut g = Gen::new();
    g.frame_with_id(ID, hello_ack(0));
    assert_eq!(g.frame(items.clone()), [GenerationAction::KeepItems]);
    let mut g = successor_happy_path();
    assert_eq!(g.frame(items), [GenerationAction::KeepItems]);
}
