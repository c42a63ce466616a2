//! Unit and property tests of the protocol machines, a file per machine:
//! `handoff.rs` and `handoff_rules.rs` (the supervisor's handoff),
//! `generation.rs`, `retire.rs`, and `props.rs` (the property tests and
//! the checks that every named state is reached). This file holds what
//! they share: the message builders and the two harnesses.
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

use super::{
    GenerationAction, GenerationInput, GenerationMachine, GenerationState, HandoffAction,
    HandoffConfig, HandoffInput, HandoffMachine, HandoffState, HookOutcome, Side, Signal, UserCall,
    Verdict,
};
use crate::timeouts::Timeouts;
use crate::wire::{
    AbortReason, FdEntry, FdKind, Fingerprint, Health, Message, Mode, PROTOCOL_VERSIONS, SealInfo,
    Snapshot,
};

mod generation;
mod handoff;
mod handoff_rules;
mod props;
mod retire;

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
    GenerationMachine::hello(4242, "test-build".into(), PROTOCOL_VERSIONS, 0)
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
pub(crate) fn every_message() -> Vec<Message> {
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
        Message::Connections {
            entries: Vec::new(),
        },
        Message::ConnectionBudget { connections: 3 },
        Message::Schemas {
            produces: Vec::new(),
            accepts: Vec::new(),
        },
        Message::Items {
            entries: Vec::new(),
        },
    ]
}

#[test]
fn every_message_lists_each_variant_once() {
    let names: HashSet<&str> = every_message().iter().map(Message::name).collect();
    assert_eq!(names.len(), every_message().len());
    assert_eq!(names.len(), 27, "a new message variant needs a row here");
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
            status: crate::protocol::ExitStatus::Signal(9),
        })
    }

    fn tick(&mut self) -> Vec<HandoffAction> {
        self.feed(HandoffInput::Tick)
    }

    /// Both peers heartbeat every 5 s until `until`; nothing may happen.
    fn idle_until(&mut self, until: Instant) {
        self.wait_until(until, Message::Heartbeat);
    }

    /// As `idle_until`, a sealing incumbent reporting its progress, which
    /// keeps its seal from being taken for stuck.
    fn seal_until(&mut self, until: Instant) {
        self.wait_until(until, Message::SealProgress { done: 0, total: 0 });
    }

    fn wait_until(&mut self, until: Instant, incumbent_sends: Message) {
        while self.now + secs(5) < until {
            self.advance(secs(5));
            let actions = self.successor_says(Message::Heartbeat);
            assert!(actions.is_empty(), "{actions:?}");
            let actions = self.incumbent_says(incumbent_sends.clone());
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
