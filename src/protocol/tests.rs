//! Unit and property tests of the protocol machines.
//!
//! Every machine is driven from a fixed `Instant` advanced by `Duration`s:
//! no clock reads, no sleeps. The harnesses below play the peers the way the
//! real ones behave (the handoff id each side carries, invariant I9) and
//! check, after every step, that the state reached has a name in its
//! machine's `ALL` list (the fault points are generated from those lists).
//!
//! The property tests feed random input sequences, biased toward the next
//! legal message, against a model of the data-directory lock (I1, I3–I6).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{
    Ending, GenerationAction, GenerationInput, GenerationMachine, GenerationState, HandoffAction,
    HandoffConfig, HandoffInput, HandoffMachine, HandoffState, HookCall, HookOutcome, RetireAction,
    RetireInput, RetireMachine, RetireState, Side, Signal, UserCall, Verdict,
};
use crate::timeouts::{DRAIN_OVERRUN, Timeouts};
use crate::wire::{
    AbortReason, FdEntry, FdKind, Fingerprint, Health, Message, Mode, PROTOCOL_VERSIONS, SealInfo,
    Snapshot, VersionRange,
};

// ---------------------------------------------------------------- messages

/// The handoff under test.
const ID: u64 = 7;
/// The id the incumbent carries before it is sent Prepare.
const OLD_ID: u64 = 5;
/// The successor's generation number.
const GENERATION: u64 = 3;
/// Named fds the supervisor promises in HelloAck.
const FD_COUNT: u32 = 2;

fn secs(count: u64) -> Duration {
    Duration::from_secs(count)
}

fn seal_info() -> SealInfo {
    SealInfo {
        revisions: 42,
        fingerprint: Fingerprint([7; 32]),
    }
}

fn hello() -> Message {
    GenerationMachine::hello(4242, "test-build".into(), PROTOCOL_VERSIONS)
}

fn drained() -> Message {
    Message::Drained {
        open_connections: 0,
        accept_closed: true,
    }
}

fn unhealthy() -> Health {
    Health::Unhealthy {
        reason: "probe failed".into(),
    }
}

fn ready(health: Health) -> Message {
    Message::Ready {
        addresses: vec!["127.0.0.1:8080".into()],
        health,
        revisions: 42,
    }
}

fn successor_failed() -> AbortReason {
    AbortReason::SuccessorFailed {
        reason: "lock held".into(),
    }
}

fn fds(count: usize) -> Message {
    Message::Fds {
        entries: (0..count)
            .map(|index| FdEntry {
                name: format!("listener{index}"),
                kind: FdKind::Tcp,
            })
            .collect(),
    }
}

/// One message of every variant, in declaration (wire tag) order.
fn every_message() -> Vec<Message> {
    vec![
        hello(),
        Message::HelloAck {
            version: 1,
            generation: GENERATION,
            mode: Mode::Exclusive,
            has_incumbent: true,
            fd_count: 0,
        },
        Message::Refused {
            versions: PROTOCOL_VERSIONS,
            reason: AbortReason::Cancelled,
        },
        fds(1),
        Message::Warm,
        Message::Prepare {
            deadline_ms: 1_000,
            drain_grace_ms: 500,
        },
        drained(),
        Message::Seal,
        Message::SealProgress { done: 1, total: 2 },
        Message::SealComplete(seal_info()),
        Message::SealFailed {
            reason: "disk full".into(),
        },
        Message::Begin {
            seal: Some(seal_info()),
        },
        ready(Health::Healthy),
        Message::Commit,
        Message::CommitAck,
        Message::Abort {
            reason: AbortReason::Cancelled,
        },
        Message::ResumeAfterAbort,
        Message::ResumeAck,
        Message::Retire,
        Message::Heartbeat,
        Message::Failed {
            reason: successor_failed(),
        },
        Message::SnapshotRequest,
        Message::SnapshotReport(Snapshot::default()),
    ]
}

#[test]
fn every_message_lists_each_variant_once() {
    let names: HashSet<&str> = every_message().iter().map(Message::name).collect();
    assert_eq!(names.len(), every_message().len());
    assert_eq!(names.len(), 23, "a new message variant needs a row here");
}

// ------------------------------------------------------ handoff harness

/// A supervisor's handoff machine plus the peers' view of it.
struct Sup {
    machine: HandoffMachine,
    start: Instant,
    now: Instant,
    timeouts: Timeouts,
    /// The id the successor's messages carry: 0 until HelloAck (I9).
    successor_id: u64,
    /// The id the incumbent's messages carry: its old one until Prepare.
    incumbent_id: u64,
    /// When each side's last frame was fed.
    successor_heard: Instant,
    incumbent_heard: Instant,
    visited: Vec<HandoffState>,
    mode: Mode,
    has_incumbent: bool,
}

impl Sup {
    fn new(mode: Mode, has_incumbent: bool) -> Sup {
        Sup::with_timeouts(mode, has_incumbent, Timeouts::default())
    }

    fn with_timeouts(mode: Mode, has_incumbent: bool, timeouts: Timeouts) -> Sup {
        Sup::with_config(mode, has_incumbent, timeouts, false)
    }

    /// An exclusive handoff with an incumbent and `force` on.
    fn forced() -> Sup {
        Sup::with_config(Mode::Exclusive, true, Timeouts::default(), true)
    }

    fn with_config(mode: Mode, has_incumbent: bool, timeouts: Timeouts, force: bool) -> Sup {
        timeouts.validate().expect("valid timeouts");
        let start = Instant::now();
        let mut config = HandoffConfig::new(ID, GENERATION, mode, has_incumbent);
        config.fd_count = FD_COUNT;
        config.timeouts = timeouts;
        config.force = force;
        let machine = HandoffMachine::new(config, start);
        let visited = vec![machine.state()];
        Sup {
            machine,
            start,
            now: start,
            timeouts,
            successor_id: 0,
            incumbent_id: OLD_ID,
            successor_heard: start,
            incumbent_heard: start,
            visited,
            mode,
            has_incumbent,
        }
    }

    fn machine_mode(&self) -> Mode {
        self.mode
    }

    fn deadline(&self) -> Instant {
        self.start + self.timeouts.handoff_deadline
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    fn state(&self) -> HandoffState {
        self.machine.state()
    }

    fn feed(&mut self, input: HandoffInput) -> Vec<HandoffAction> {
        let was_done = self.machine.is_done();
        let actions = self.machine.step(input, self.now);
        if was_done {
            assert!(actions.is_empty(), "acted after Finish: {actions:?}");
        }
        assert!(finishes(&actions) <= 1, "two verdicts: {actions:?}");
        for action in &actions {
            match action {
                HandoffAction::Send {
                    to: Side::Successor,
                    message: Message::HelloAck { .. },
                } => self.successor_id = ID,
                HandoffAction::Send {
                    to: Side::Incumbent,
                    message: Message::Prepare { .. },
                } => self.incumbent_id = ID,
                _ => {}
            }
        }
        let state = self.machine.state();
        assert!(HandoffState::ALL.contains(&state), "{state:?} not in ALL");
        assert_eq!(self.machine.state_name(), state.as_str());
        let entered = self.machine.take_entered();
        if let Some(last) = entered.last() {
            assert_eq!(*last, state, "the last state entered is the state");
        }
        self.visited.extend(entered);
        if let Some(at) = self.machine.next_wakeup() {
            let rolling_back = matches!(state, HandoffState::Aborting | HandoffState::Resuming);
            assert!(
                rolling_back || at <= self.deadline(),
                "wakeup after the deadline"
            );
            assert!(at > self.now, "wakeup in the past: a busy loop");
        }
        actions
    }

    fn frame(&mut self, from: Side, handoff_id: u64, message: Message) -> Vec<HandoffAction> {
        match from {
            Side::Successor => self.successor_heard = self.now,
            Side::Incumbent => self.incumbent_heard = self.now,
        }
        self.feed(HandoffInput::Frame {
            from,
            handoff_id,
            message,
        })
    }

    fn successor_says(&mut self, message: Message) -> Vec<HandoffAction> {
        let id = self.successor_id;
        self.frame(Side::Successor, id, message)
    }

    fn incumbent_says(&mut self, message: Message) -> Vec<HandoffAction> {
        let id = self.incumbent_id;
        self.frame(Side::Incumbent, id, message)
    }

    fn closed(&mut self, side: Side) -> Vec<HandoffAction> {
        self.feed(HandoffInput::Closed { side })
    }

    fn exited(&mut self, side: Side) -> Vec<HandoffAction> {
        self.feed(HandoffInput::Exited {
            side,
            status: "signal 9".into(),
        })
    }

    fn tick(&mut self) -> Vec<HandoffAction> {
        self.feed(HandoffInput::Tick)
    }

    /// Both peers heartbeat every 5 s until `until`; nothing may happen.
    fn idle_until(&mut self, until: Instant) {
        while self.now + secs(5) < until {
            self.advance(secs(5));
            let actions = self.successor_says(Message::Heartbeat);
            assert!(actions.is_empty(), "{actions:?}");
            let actions = self.incumbent_says(Message::Heartbeat);
            assert!(actions.is_empty(), "{actions:?}");
        }
    }
}

fn sent(actions: &[HandoffAction], to: Side) -> Vec<&Message> {
    actions
        .iter()
        .filter_map(|action| match action {
            HandoffAction::Send { to: side, message } if *side == to => Some(message),
            _ => None,
        })
        .collect()
}

fn sent_names(actions: &[HandoffAction], to: Side) -> Vec<&'static str> {
    sent(actions, to).into_iter().map(Message::name).collect()
}

fn killed(actions: &[HandoffAction], side: Side) -> bool {
    actions.contains(&HandoffAction::Kill {
        side,
        signal: Signal::Kill,
    })
}

fn has_commit(actions: &[HandoffAction]) -> bool {
    actions
        .iter()
        .any(|action| matches!(action, HandoffAction::Commit(_)))
}

fn finishes(actions: &[HandoffAction]) -> usize {
    actions
        .iter()
        .filter(|action| matches!(action, HandoffAction::Finish(_)))
        .count()
}

fn verdict(actions: &[HandoffAction]) -> Option<&Verdict> {
    actions.iter().find_map(|action| match action {
        HandoffAction::Finish(verdict) => Some(verdict),
        _ => None,
    })
}

/// The reason and `incumbent_serving` of a rollback among `actions`.
fn rolled_back(actions: &[HandoffAction]) -> (AbortReason, bool) {
    match verdict(actions) {
        Some(Verdict::RolledBack {
            reason,
            incumbent_serving,
            ..
        }) => (reason.clone(), *incumbent_serving),
        other => panic!("expected a rollback, got {other:?} in {actions:?}"),
    }
}

/// The rollback once the successor is reaped, acknowledging a resume the
/// machine asked of the incumbent.
fn reap_and_roll_back(sup: &mut Sup) -> (AbortReason, bool) {
    let mut actions = sup.exited(Side::Successor);
    if sent(&actions, Side::Incumbent).contains(&&Message::ResumeAfterAbort) {
        actions = sup.incumbent_says(Message::ResumeAck);
    }
    rolled_back(&actions)
}

/// `retire_incumbent` of a commit among `actions`.
fn committed(actions: &[HandoffAction]) -> bool {
    match verdict(actions) {
        Some(Verdict::Committed {
            retire_incumbent, ..
        }) => *retire_incumbent,
        other => panic!("expected a commit, got {other:?} in {actions:?}"),
    }
}

fn begin(seal: Option<SealInfo>) -> HandoffAction {
    HandoffAction::Send {
        to: Side::Successor,
        message: Message::Begin { seal },
    }
}

fn to_incumbent(message: Message) -> HandoffAction {
    HandoffAction::Send {
        to: Side::Incumbent,
        message,
    }
}

/// Phases a handoff can be driven to along its happy path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    AwaitHello,
    WarmingUp,
    Draining,
    Sealing,
    Beginning,
    Committing,
}

const EXCLUSIVE_STAGES: [Stage; 6] = [
    Stage::AwaitHello,
    Stage::WarmingUp,
    Stage::Draining,
    Stage::Sealing,
    Stage::Beginning,
    Stage::Committing,
];

const DIRECT_STAGES: [Stage; 4] = [
    Stage::AwaitHello,
    Stage::WarmingUp,
    Stage::Beginning,
    Stage::Committing,
];

/// (mode, has_incumbent, the stages that setup goes through).
fn setups() -> [(Mode, bool, &'static [Stage]); 3] {
    [
        (Mode::Exclusive, true, &EXCLUSIVE_STAGES),
        (Mode::Overlap, true, &DIRECT_STAGES),
        (Mode::Exclusive, false, &DIRECT_STAGES),
    ]
}

/// A handoff driven along the happy path to `stage`, one second a step.
fn at_stage(mode: Mode, has_incumbent: bool, stage: Stage) -> Sup {
    drive(Sup::new(mode, has_incumbent), stage)
}

/// `sup`, driven along the happy path to `stage`, one second a step.
fn drive(mut sup: Sup, stage: Stage) -> Sup {
    let mode = sup.machine_mode();
    let has_incumbent = sup.has_incumbent;
    if stage == Stage::AwaitHello {
        return sup;
    }
    sup.advance(secs(1));
    assert_eq!(
        sent_names(&sup.successor_says(hello()), Side::Successor),
        ["HelloAck"]
    );
    if stage == Stage::WarmingUp {
        return sup;
    }
    sup.advance(secs(1));
    sup.successor_says(Message::Warm);
    if mode == Mode::Exclusive && has_incumbent {
        assert_eq!(sup.state(), HandoffState::Draining);
        if stage == Stage::Draining {
            return sup;
        }
        sup.advance(secs(1));
        assert_eq!(sup.incumbent_says(drained()), [to_incumbent(Message::Seal)]);
        if stage == Stage::Sealing {
            return sup;
        }
        sup.advance(secs(1));
        sup.incumbent_says(Message::SealComplete(seal_info()));
    } else {
        assert!(!matches!(stage, Stage::Draining | Stage::Sealing));
    }
    assert_eq!(sup.state(), HandoffState::Beginning);
    if stage == Stage::Beginning {
        return sup;
    }
    sup.advance(secs(1));
    assert!(has_commit(&sup.successor_says(ready(Health::Healthy))));
    assert_eq!(sup.state(), HandoffState::Committing);
    sup
}

fn state_of(stage: Stage) -> HandoffState {
    match stage {
        Stage::AwaitHello => HandoffState::AwaitHello,
        Stage::WarmingUp => HandoffState::WarmingUp,
        Stage::Draining => HandoffState::Draining,
        Stage::Sealing => HandoffState::Sealing,
        Stage::Beginning => HandoffState::Beginning,
        Stage::Committing => HandoffState::Committing,
    }
}

// ------------------------------------------------- handoff: happy paths

fn exclusive_happy_path() -> Sup {
    let mut sup = Sup::new(Mode::Exclusive, true);
    sup.advance(secs(1));
    let actions = sup.successor_says(hello());
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(
        actions[0],
        HandoffAction::Send {
            to: Side::Successor,
            message: Message::HelloAck {
                version: 1,
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
            sup.idle_until(deadline);
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
    assert!(phases.commit.is_none(), "{context}");
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
    let actions = sup.successor_says(GenerationMachine::hello(1, "future".into(), theirs));
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

fn incumbent_dies_while_draining() -> Sup {
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
    sup.idle_until(deadline);
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

// -------------------------------------------------- generation harness

/// A daemon generation's machine, driven one second a step.
struct Gen {
    machine: GenerationMachine,
    now: Instant,
    timeouts: Timeouts,
    visited: Vec<GenerationState>,
}

impl Gen {
    fn new() -> Gen {
        let timeouts = Timeouts::default();
        let now = Instant::now();
        let machine = GenerationMachine::new(&timeouts, now);
        let visited = vec![machine.state()];
        Gen {
            machine,
            now,
            timeouts,
            visited,
        }
    }

    fn state(&self) -> GenerationState {
        self.machine.state()
    }

    fn feed(&mut self, input: GenerationInput) -> Vec<GenerationAction> {
        self.now += secs(1);
        let actions = self.machine.step(input, self.now);
        let state = self.machine.state();
        assert!(
            GenerationState::ALL.contains(&state),
            "{state:?} not in ALL"
        );
        assert_eq!(self.machine.state_name(), state.as_str());
        self.visited.push(state);
        actions
    }

    /// A frame carrying the id the machine expects.
    fn frame(&mut self, message: Message) -> Vec<GenerationAction> {
        let id = self.machine.handoff_id();
        self.frame_with_id(id, message)
    }

    fn frame_with_id(&mut self, handoff_id: u64, message: Message) -> Vec<GenerationAction> {
        self.feed(GenerationInput::Frame {
            handoff_id,
            message,
        })
    }

    fn hook(&mut self, outcome: HookOutcome) -> Vec<GenerationAction> {
        self.feed(GenerationInput::Hook(outcome))
    }

    fn user(&mut self, call: UserCall) -> Vec<GenerationAction> {
        self.feed(GenerationInput::User(call))
    }

    fn closed(&mut self) -> Vec<GenerationAction> {
        self.feed(GenerationInput::Closed)
    }

    /// Silence until just past the liveness timeout, then a Tick.
    fn silence(&mut self) -> Vec<GenerationAction> {
        self.now += self.timeouts.liveness;
        self.feed(GenerationInput::Tick)
    }
}

fn hello_ack(fd_count: u32) -> Message {
    Message::HelloAck {
        version: 1,
        generation: GENERATION,
        mode: Mode::Exclusive,
        has_incumbent: true,
        fd_count,
    }
}

fn ready_call(fingerprint: Option<Fingerprint>) -> UserCall {
    UserCall::Ready {
        fingerprint,
        revisions: 42,
        health: Health::Healthy,
        addresses: vec!["127.0.0.1:8080".into()],
    }
}

fn hook_drained() -> HookOutcome {
    HookOutcome::Drained {
        open_connections: 0,
        accept_closed: true,
    }
}

fn prepare() -> Message {
    Message::Prepare {
        deadline_ms: 60_000,
        drain_grace_ms: 30_000,
    }
}

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

type GenStep = Box<dyn Fn(&mut Gen) -> Vec<GenerationAction>>;

/// A generation driven along the happy path (a successor, then an
/// incumbent in a new handoff) until it reaches `target`.
fn generation_at(target: GenerationState) -> Gen {
    let mut generation = Gen::new();
    let steps: Vec<GenStep> = vec![
        Box::new(|g| g.frame_with_id(ID, hello_ack(3))),
        Box::new(|g| g.frame(fds(3))),
        Box::new(|g| g.user(UserCall::Warm)),
        Box::new(|g| {
            g.frame(Message::Begin {
                seal: Some(seal_info()),
            })
        }),
        Box::new(|g| g.user(ready_call(Some(seal_info().fingerprint)))),
        Box::new(|g| g.frame(Message::Commit)),
        Box::new(|g| g.user(UserCall::Detached)),
        Box::new(|g| g.frame_with_id(ID + 1, prepare())),
        Box::new(|g| g.hook(hook_drained())),
        Box::new(|g| g.frame(Message::Seal)),
        Box::new(|g| g.hook(HookOutcome::Sealed(seal_info()))),
    ];
    for step in steps {
        if generation.state() == target {
            return generation;
        }
        step(&mut generation);
    }
    assert_eq!(generation.state(), target, "not on the happy path");
    generation
}

// --------------------------------------------------- generation tests

fn successor_happy_path() -> Gen {
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

// ------------------------------------------------------ retire machine

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
            status: "exit status 0".into(),
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
                status: "signal 9".into(),
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
                HandoffAction::Finish(_) => {
                    prop_assert!(!self.finished, "two verdicts");
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

// ------------------------------------------------------ health gate (I12)

/// A handoff with the health gate on, at Beginning.
fn gated(mode: Mode, has_incumbent: bool) -> Sup {
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
