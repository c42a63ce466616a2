//! Property tests of the handoff and generation machines against a model
//! of the data-directory lock (I1, I3–I6), and the checks that the tests
//! and the random runs reach every named state.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::generation::successor_happy_path;
use super::handoff::{exclusive_happy_path, gated, incumbent_dies_while_draining};
use super::{
    FD_COUNT, GENERATION, ID, OLD_ID, Stage, at_stage, drained, every_message, fds, generation_at,
    hello, hook_drained, prepare, ready, ready_call, seal_info, secs, successor_failed, unhealthy,
};
use crate::protocol::{
    GenerationAction, GenerationInput, GenerationMachine, GenerationState, HandoffAction,
    HandoffConfig, HandoffInput, HandoffMachine, HandoffState, HookCall, HookOutcome, RetireState,
    Side, Signal, UserCall, Verdict,
};
use crate::timeouts::Timeouts;
use crate::wire::{Health, Message, Mode, PROTOCOL_VERSIONS, SealInfo, Snapshot, VersionRange};

// ---------------------------------------------------- state name lists

#[test]
fn state_names_are_unique() {
    fn unique<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str) {
        let names: HashSet<&str> = all.iter().map(|&state| name(state)).collect();
        assert_eq!(names.len(), all.len());
    }
    unique(HandoffState::ALL, HandoffState::as_str);
    unique(GenerationState::ALL, GenerationState::as_str);
    unique(RetireState::ALL, RetireState::as_str);
}

#[test]
fn the_tests_reach_every_handoff_state() {
    let mut reached: HashSet<HandoffState> = HashSet::new();
    reached.extend(exclusive_happy_path().visited);
    reached.extend(incumbent_dies_while_draining().visited);
    let mut rollback = at_stage(Mode::Exclusive, true, Stage::Sealing);
    rollback.feed(HandoffInput::Cancel);
    rollback.exited(Side::Successor);
    rollback.incumbent_says(Message::ResumeAck);
    reached.extend(rollback.visited);
    let mut gate = gated(Mode::Overlap, true);
    gate.successor_says(ready(Health::Healthy));
    reached.extend(gate.visited);
    // No exceptions: every named phase is reachable.
    let missing: Vec<_> = HandoffState::ALL
        .iter()
        .filter(|state| !reached.contains(state))
        .collect();
    assert!(missing.is_empty(), "never reached: {missing:?}");
}

#[test]
fn the_tests_reach_every_generation_state() {
    let mut reached: HashSet<GenerationState> = HashSet::new();
    let mut g = successor_happy_path();
    reached.extend(g.visited.drain(..));
    for state in [GenerationState::Draining, GenerationState::Sealing] {
        let mut g = generation_at(state);
        g.frame(Message::ResumeAfterAbort);
        reached.extend(g.visited);
    }
    let mut g = generation_at(GenerationState::Sealed);
    g.frame(Message::ResumeAfterAbort);
    g.hook(HookOutcome::Relocked);
    g.hook(HookOutcome::Resumed);
    g.frame(Message::Heartbeat);
    reached.extend(g.visited);
    let mut g = generation_at(GenerationState::Drained);
    g.frame(Message::Retire);
    reached.extend(g.visited);
    let missing: Vec<_> = GenerationState::ALL
        .iter()
        .filter(|state| !reached.contains(state))
        .collect();
    assert!(missing.is_empty(), "never reached: {missing:?}");
}

// ------------------------------------------------------ property tests

/// One random step: whether to take the next legal input, which one, which
/// message variant otherwise, which id, and how much time passes first.
#[derive(Debug, Clone)]
struct Choice {
    legal: bool,
    pick: u16,
    variant: u16,
    id: u8,
    advance: Duration,
}

fn choices(max_len: usize) -> impl Strategy<Value = Vec<Choice>> {
    let choice = (
        0u8..100,
        any::<u16>(),
        any::<u16>(),
        0u8..6,
        prop_oneof![8 => 0u64..2_000, 2 => 0u64..15_000],
    )
        .prop_map(|(bias, pick, variant, id, millis)| Choice {
            legal: bias < 70,
            pick,
            variant,
            id,
            advance: Duration::from_millis(millis),
        });
    proptest::collection::vec(choice, 1..max_len)
}

/// A message of variant `variant % 23`, its fields varied by `pick`.
fn message_from(variant: u16, pick: u16) -> Message {
    let mut messages = every_message();
    let index = usize::from(variant) % messages.len();
    let message = messages.swap_remove(index);
    match message {
        Message::Ready { .. } if pick.is_multiple_of(3) => ready(unhealthy()),
        Message::Hello { .. } if pick.is_multiple_of(5) => GenerationMachine::hello(
            1,
            "future".into(),
            VersionRange {
                min: PROTOCOL_VERSIONS.max + 1,
                max: PROTOCOL_VERSIONS.max + 1,
            },
            0,
        ),
        Message::Begin { .. } if pick.is_multiple_of(2) => Message::Begin { seal: None },
        other => other,
    }
}

/// What the peers and their data-directory lock look like to a property
/// test of the supervisor's machine.
#[derive(Debug)]
struct LockModel {
    exclusive: bool,
    has_incumbent: bool,
    successor_id: u64,
    incumbent_id: u64,
    incumbent_holds: bool,
    incumbent_reaped: bool,
    successor_holds: bool,
    successor_reaped: bool,
    seal_sent: bool,
    seal_answered: bool,
    begin_sent: bool,
    healthy_ready: bool,
    finished: bool,
    /// When the machine SIGKILLed the successor, if it did.
    successor_killed_at: Option<Instant>,
    kill_grace: Duration,
}

impl LockModel {
    fn new(mode: Mode, has_incumbent: bool) -> LockModel {
        LockModel {
            exclusive: mode == Mode::Exclusive,
            has_incumbent,
            successor_id: 0,
            incumbent_id: OLD_ID,
            incumbent_holds: has_incumbent,
            incumbent_reaped: false,
            successor_holds: false,
            successor_reaped: false,
            seal_sent: false,
            seal_answered: false,
            begin_sent: false,
            healthy_ready: false,
            finished: false,
            successor_killed_at: None,
            kill_grace: Timeouts::default().kill_grace,
        }
    }

    /// The next input a well-behaved pair of peers would produce.
    fn legal_input(&self, state: HandoffState, pick: u16) -> HandoffInput {
        let frame = |from: Side, message: Message| HandoffInput::Frame {
            from,
            handoff_id: match from {
                Side::Successor => self.successor_id,
                Side::Incumbent => self.incumbent_id,
            },
            message,
        };
        let exited = |side: Side| HandoffInput::Exited {
            side,
            status: crate::protocol::ExitStatus::Code(0),
        };
        let mut options = match state {
            HandoffState::AwaitHello => vec![frame(Side::Successor, hello())],
            HandoffState::WarmingUp => vec![frame(Side::Successor, Message::Warm)],
            HandoffState::Draining => vec![frame(Side::Incumbent, drained())],
            HandoffState::Sealing => vec![
                frame(Side::Incumbent, Message::SealComplete(seal_info())),
                frame(Side::Incumbent, Message::SealProgress { done: 1, total: 2 }),
            ],
            HandoffState::AwaitIncumbentExit => vec![exited(Side::Incumbent)],
            HandoffState::Beginning => vec![frame(Side::Successor, ready(Health::Healthy))],
            HandoffState::Probing => vec![
                HandoffInput::ProbePassed,
                HandoffInput::ProbeFailed {
                    detail: "status 503".into(),
                },
            ],
            HandoffState::Committing => vec![frame(Side::Successor, Message::CommitAck)],
            HandoffState::Aborting => vec![exited(Side::Successor)],
            HandoffState::Resuming => vec![frame(Side::Incumbent, Message::ResumeAck)],
            HandoffState::Done => vec![HandoffInput::Tick],
        };
        options.push(frame(Side::Successor, Message::Heartbeat));
        if self.has_incumbent {
            options.push(frame(Side::Incumbent, Message::Heartbeat));
        }
        let index = usize::from(pick) % options.len();
        options.swap_remove(index)
    }

    /// Anything at all, with the right id or a wrong one.
    fn random_input(&self, choice: &Choice) -> HandoffInput {
        let side = if choice.pick.is_multiple_of(2) {
            Side::Successor
        } else {
            Side::Incumbent
        };
        let right = match side {
            Side::Successor => self.successor_id,
            Side::Incumbent => self.incumbent_id,
        };
        let handoff_id = match choice.id {
            0..=2 => right,
            3 => 0,
            4 => OLD_ID,
            _ => ID + 1,
        };
        match choice.variant % 30 {
            variant @ 0..23 => HandoffInput::Frame {
                from: side,
                handoff_id,
                message: message_from(variant, choice.pick / 2),
            },
            23 | 24 => HandoffInput::Closed { side },
            25 | 26 => HandoffInput::Exited {
                side,
                status: crate::protocol::ExitStatus::Signal(9),
            },
            27 | 28 => HandoffInput::Tick,
            _ => HandoffInput::Cancel,
        }
    }

    /// The peers act before the supervisor hears of it.
    fn before(&mut self, input: &HandoffInput, machine: &HandoffMachine) {
        match input {
            HandoffInput::Frame {
                from: Side::Incumbent,
                message: Message::SealComplete(_),
                ..
            } if self.seal_sent && !self.incumbent_reaped => {
                // The incumbent released the lock, then said so.
                self.incumbent_holds = false;
                self.seal_answered = true;
            }
            HandoffInput::Frame {
                from: Side::Successor,
                handoff_id,
                message:
                    Message::Ready {
                        health: Health::Healthy,
                        ..
                    },
            } if self.begin_sent
                && *handoff_id == self.successor_id
                && machine.state() == HandoffState::Beginning =>
            {
                self.healthy_ready = true;
            }
            HandoffInput::Exited {
                side: Side::Incumbent,
                ..
            } if self.has_incumbent => {
                self.incumbent_holds = false;
                self.incumbent_reaped = true;
            }
            HandoffInput::Exited {
                side: Side::Successor,
                ..
            } => {
                self.successor_holds = false;
                self.successor_reaped = true;
            }
            _ => {}
        }
    }

    /// Checks the machine's actions against the model, then applies them.
    fn after(&mut self, actions: &[HandoffAction], now: Instant) -> Result<(), TestCaseError> {
        if self.finished {
            prop_assert!(actions.is_empty(), "acted after Finish: {:?}", actions);
        }
        for (index, action) in actions.iter().enumerate() {
            match action {
                HandoffAction::Send {
                    to: Side::Successor,
                    message: Message::HelloAck { .. },
                } => self.successor_id = ID,
                HandoffAction::Send {
                    to: Side::Incumbent,
                    message: Message::Prepare { .. },
                } => self.incumbent_id = ID,
                HandoffAction::Send {
                    to: Side::Incumbent,
                    message: Message::Seal,
                } => self.seal_sent = true,
                HandoffAction::Send {
                    to: Side::Successor,
                    message: Message::Begin { seal },
                } => {
                    prop_assert!(!self.begin_sent, "Begin twice");
                    if seal.is_some() {
                        // I3: a seal only after the incumbent answered Seal.
                        prop_assert!(self.seal_answered, "Begin{{Some}} before SealComplete");
                    } else if self.exclusive {
                        prop_assert!(
                            !self.has_incumbent || self.incumbent_reaped,
                            "Begin{{None}} while the incumbent lives"
                        );
                    }
                    if self.exclusive {
                        // I1: the successor takes the lock now.
                        prop_assert!(!self.incumbent_holds, "two lock holders at Begin");
                        self.successor_holds = !self.successor_reaped;
                    }
                    self.begin_sent = true;
                }
                HandoffAction::Kill {
                    side: Side::Successor,
                    signal: Signal::Kill,
                } => {
                    self.successor_killed_at.get_or_insert(now);
                }
                HandoffAction::Send {
                    to: Side::Incumbent,
                    message: Message::ResumeAfterAbort,
                } => {
                    prop_assert!(!self.incumbent_reaped, "resuming a dead incumbent");
                    if self.successor_reaped {
                        // I5: once the successor was reaped its lock is free.
                        prop_assert!(!self.successor_holds);
                        self.incumbent_holds = true;
                    } else {
                        // Given up on a reap that does not come: only after
                        // the kill grace, and the incumbent's relock then
                        // waits for the lock (a flock), so it holds it only
                        // if nobody else does.
                        let gave_up = self
                            .successor_killed_at
                            .is_some_and(|at| now >= at + self.kill_grace);
                        prop_assert!(gave_up, "resume before the reap");
                        self.incumbent_holds = !self.successor_holds;
                    }
                }
                HandoffAction::Commit(_) => {
                    // I6.
                    prop_assert!(self.healthy_ready, "Commit without a healthy Ready");
                }
                HandoffAction::Finish(verdict) => {
                    prop_assert!(!self.finished, "two verdicts");
                    phases_add_up(verdict)?;
                    prop_assert_eq!(index + 1, actions.len(), "acted after Finish");
                    self.finished = true;
                }
                _ => {}
            }
            prop_assert!(
                !(self.incumbent_holds && self.successor_holds),
                "two lock holders"
            );
        }
        Ok(())
    }
}

fn run_handoff(
    mode: Mode,
    has_incumbent: bool,
    steps: &[Choice],
    reached: &mut HashSet<HandoffState>,
) -> Result<(), TestCaseError> {
    // A short deadline so that random runs reach it.
    let timeouts = Timeouts {
        handoff_deadline: secs(60),
        drain_grace: secs(30),
        ..Timeouts::default()
    };
    let start = Instant::now();
    let mut config = HandoffConfig::new(ID, GENERATION, mode, has_incumbent);
    config.timeouts = timeouts;
    config.fd_count = FD_COUNT;
    // Half the runs put the health gate between Ready and Commit.
    config.probe = steps.first().is_some_and(|c| c.pick.is_multiple_of(2));
    let mut machine = HandoffMachine::new(config, start);
    let mut model = LockModel::new(mode, has_incumbent);
    let mut now = start;
    for choice in steps {
        let input = if choice.legal {
            model.legal_input(machine.state(), choice.pick)
        } else {
            model.random_input(choice)
        };
        let wakeup = machine.next_wakeup();
        now += choice.advance;
        model.before(&input, &machine);
        let is_tick = input == HandoffInput::Tick;
        let actions = machine.step(input, now);
        if is_tick && wakeup.is_some_and(|at| now < at) {
            // Nothing can be due before the wakeup the machine asked for.
            prop_assert!(actions.is_empty(), "due before next_wakeup: {:?}", actions);
        }
        if let Some(at) = machine.next_wakeup() {
            prop_assert!(at > now, "wakeup in the past");
        }
        prop_assert!(HandoffState::ALL.contains(&machine.state()));
        reached.insert(machine.state());
        model.after(&actions, now)?;
    }
    Ok(())
}

/// What a generation's lock looks like to a property test.
#[derive(Debug, Default)]
struct GenerationModel {
    /// ReleaseLock came and no Relocked since.
    released: bool,
    /// The seal of the last Began.
    began: Option<SealInfo>,
}

impl GenerationModel {
    fn legal_input(&self, machine: &GenerationMachine, pick: u16) -> GenerationInput {
        let id = machine.handoff_id();
        let frame = |message: Message| GenerationInput::Frame {
            handoff_id: id,
            message,
        };
        let hook = GenerationInput::Hook;
        let mut options = match machine.state() {
            GenerationState::AwaitHelloAck => vec![GenerationInput::Frame {
                handoff_id: ID,
                message: Message::HelloAck {
                    version: 1,
                    generation: GENERATION,
                    mode: if pick.is_multiple_of(2) {
                        Mode::Exclusive
                    } else {
                        Mode::Overlap
                    },
                    has_incumbent: pick.is_multiple_of(3),
                    fd_count: u32::from(pick % 3),
                },
            }],
            GenerationState::ReceivingFds => vec![frame(fds(1))],
            GenerationState::WarmingUp => vec![GenerationInput::User(UserCall::Warm)],
            GenerationState::AwaitBegin => vec![
                frame(Message::Begin {
                    seal: Some(seal_info()),
                }),
                frame(Message::Begin { seal: None }),
            ],
            GenerationState::Begun => vec![GenerationInput::User(ready_call(
                self.began.map(|seal| seal.fingerprint),
            ))],
            GenerationState::AwaitCommit => vec![frame(Message::Commit)],
            GenerationState::Committing => vec![GenerationInput::User(UserCall::Detached)],
            GenerationState::Serving => vec![GenerationInput::Frame {
                handoff_id: id + 1,
                message: prepare(),
            }],
            GenerationState::Draining => {
                vec![hook(hook_drained()), frame(Message::ResumeAfterAbort)]
            }
            GenerationState::DrainingAborted => vec![hook(hook_drained())],
            GenerationState::Drained => vec![
                frame(Message::Seal),
                frame(Message::ResumeAfterAbort),
                frame(Message::Retire),
            ],
            GenerationState::Sealing => vec![
                hook(HookOutcome::Sealed(seal_info())),
                hook(HookOutcome::SealFailed("disk full".into())),
                frame(Message::ResumeAfterAbort),
                GenerationInput::Closed,
            ],
            GenerationState::SealingAborted => vec![
                hook(HookOutcome::Sealed(seal_info())),
                hook(HookOutcome::SealFailed("disk full".into())),
            ],
            GenerationState::Sealed => vec![
                frame(Message::Retire),
                frame(Message::ResumeAfterAbort),
                GenerationInput::Closed,
            ],
            GenerationState::Relocking => vec![
                hook(HookOutcome::Relocked),
                hook(HookOutcome::RelockTimedOut),
            ],
            GenerationState::Resuming => vec![hook(HookOutcome::Resumed)],
            GenerationState::Ended => vec![GenerationInput::Tick],
        };
        options.push(frame(Message::Heartbeat));
        let index = usize::from(pick) % options.len();
        options.swap_remove(index)
    }

    fn random_input(machine: &GenerationMachine, choice: &Choice) -> GenerationInput {
        let right = machine.handoff_id();
        let handoff_id = match choice.id {
            0..=2 => right,
            3 => right + 1,
            4 => 0,
            _ => right.saturating_sub(1),
        };
        let hooks = [
            hook_drained(),
            HookOutcome::DrainFailed("stuck".into()),
            HookOutcome::Sealed(seal_info()),
            HookOutcome::SealFailed("disk full".into()),
            HookOutcome::Resumed,
            HookOutcome::ResumeFailed("corrupt".into()),
            HookOutcome::Relocked,
            HookOutcome::RelockTimedOut,
            HookOutcome::Snapshot(Snapshot::default()),
        ];
        let calls = [
            UserCall::Warm,
            ready_call(Some(seal_info().fingerprint)),
            ready_call(None),
            UserCall::Fail(successor_failed()),
            UserCall::Detached,
        ];
        let pick = usize::from(choice.pick);
        match choice.variant % 40 {
            variant @ 0..23 => GenerationInput::Frame {
                handoff_id,
                message: message_from(variant, choice.pick),
            },
            23..30 => GenerationInput::Hook(hooks[pick % hooks.len()].clone()),
            30..35 => GenerationInput::User(calls[pick % calls.len()].clone()),
            35 | 36 => GenerationInput::Closed,
            _ => GenerationInput::Tick,
        }
    }
}

fn run_generation(
    steps: &[Choice],
    reached: &mut HashSet<GenerationState>,
) -> Result<(), TestCaseError> {
    let timeouts = Timeouts::default();
    let mut now = Instant::now();
    let mut machine = GenerationMachine::new(&timeouts, now);
    let mut model = GenerationModel::default();
    for choice in steps {
        let orphaned = machine.state() == GenerationState::Serving && !machine.supervisor_present();
        if machine.state() == GenerationState::Ended || orphaned {
            // The process exits (or serves on as an orphan, which no input
            // changes any more); the next one starts afresh.
            machine = GenerationMachine::new(&timeouts, now);
            model = GenerationModel::default();
        }
        let input = if choice.legal {
            model.legal_input(&machine, choice.pick)
        } else {
            GenerationModel::random_input(&machine, choice)
        };
        now += choice.advance;
        let before = machine.state();
        let sealed_hook = matches!(input, GenerationInput::Hook(HookOutcome::Sealed(_)));
        if before == GenerationState::Relocking
            && input == GenerationInput::Hook(HookOutcome::Relocked)
        {
            model.released = false;
        }
        let actions = machine.step(input, now);
        for action in &actions {
            match action {
                GenerationAction::ReleaseLock => {
                    // I4: only for a seal that returned Ok, while sealing.
                    prop_assert!(
                        before == GenerationState::Sealing && sealed_hook,
                        "ReleaseLock in {:?}",
                        before
                    );
                    prop_assert!(!model.released, "released twice");
                    model.released = true;
                }
                GenerationAction::RunHook(HookCall::Resume) => {
                    // I5: resume only with the lock held.
                    prop_assert!(!model.released, "resume without the lock");
                }
                GenerationAction::Relock => {
                    prop_assert!(model.released, "relock of a lock never released");
                }
                GenerationAction::Began(seal) => model.began = *seal,
                _ => {}
            }
        }
        prop_assert!(GenerationState::ALL.contains(&machine.state()));
        reached.insert(machine.state());
        if let Some(at) = machine.next_wakeup() {
            prop_assert!(at > now, "wakeup in the past");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Shrunk failures are printed; no regression files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn exclusive_handoff_keeps_one_lock_holder(
        has_incumbent in proptest::bool::weighted(0.85),
        steps in choices(80),
    ) {
        run_handoff(Mode::Exclusive, has_incumbent, &steps, &mut HashSet::new())?;
    }

    #[test]
    fn overlap_handoff_keeps_its_promises(
        has_incumbent in proptest::bool::weighted(0.85),
        steps in choices(80),
    ) {
        run_handoff(Mode::Overlap, has_incumbent, &steps, &mut HashSet::new())?;
    }

    #[test]
    fn generation_releases_the_lock_only_after_a_seal(steps in choices(200)) {
        run_generation(&steps, &mut HashSet::new())?;
    }
}

/// The random runs are not vacuous: with the bias toward legal inputs they
/// reach every state of both machines (deterministic seed).
#[test]
fn random_runs_reach_every_state() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut handoff = HashSet::new();
    let mut generation = HashSet::new();
    for case in 0..256u32 {
        let steps = choices(80)
            .new_tree(&mut runner)
            .expect("a value")
            .current();
        let mode = if case.is_multiple_of(2) {
            Mode::Exclusive
        } else {
            Mode::Overlap
        };
        run_handoff(mode, case % 7 != 0, &steps, &mut handoff).expect("holds");
    }
    // A generation's deep states (sealed, relocking) sit a dozen legal
    // steps in: give its walk more runs.
    for _ in 0..1024u32 {
        let steps = choices(300)
            .new_tree(&mut runner)
            .expect("a value")
            .current();
        run_generation(&steps, &mut generation).expect("holds");
    }
    let missing: Vec<_> = HandoffState::ALL
        .iter()
        .filter(|state| !handoff.contains(state))
        .collect();
    assert!(missing.is_empty(), "handoff never reached {missing:?}");
    let missing: Vec<_> = GenerationState::ALL
        .iter()
        .filter(|state| !generation.contains(state))
        .collect();
    assert!(missing.is_empty(), "generation never reached {missing:?}");
}

/// A verdict's phases follow each other with no gap: they add up to its
/// total.
fn phases_add_up(verdict: &Verdict) -> Result<(), TestCaseError> {
    let phases = match verdict {
        Verdict::Committed { phases, .. } | Verdict::RolledBack { phases, .. } => phases,
    };
    let sum: Duration = phases.named().iter().filter_map(|(_, d)| *d).sum();
    prop_assert_eq!(sum, phases.total, "the phases do not add up to the total");
    Ok(())
}
