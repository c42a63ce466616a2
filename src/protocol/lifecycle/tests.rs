//! The supervisor's lifecycle, unit by unit: the restart policy and its
//! backoff, the stop sequence, probations, which generation serves after
//! each verdict, and that every generation alive at a commit is retired to
//! its reap. No process, no clock: inputs and the time are fed in.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::*;
use crate::protocol::ResumeCheck;
use crate::wire::{AbortReason, Fingerprint, Health, PROTOCOL_VERSIONS, Role, SealInfo};

const SECOND: Duration = Duration::from_secs(1);

fn build(name: &str) -> Build {
    Build {
        program: PathBuf::from(format!("/usr/bin/{name}")),
        args: Vec::new(),
        sha256: None,
    }
}

fn config(mode: Mode, restart: RestartPolicy, probation: Duration) -> LifecycleConfig {
    LifecycleConfig {
        mode,
        daemon: DaemonKind::Library,
        restart,
        timeouts: Timeouts {
            probation,
            ..Timeouts::default()
        },
        probe: false,
        fd_count: 1,
        build: build("daemon-a"),
    }
}

/// The machine, the time, and every state the run went through.
struct Sim {
    machine: LifecycleMachine,
    now: Instant,
    visited: HashSet<LifecycleState>,
    next_pid: u32,
}

impl Sim {
    fn new(config: LifecycleConfig) -> Sim {
        let now = Instant::now();
        let machine = LifecycleMachine::new(config, now);
        let mut visited = HashSet::new();
        visited.insert(machine.state());
        Sim {
            machine,
            now,
            visited,
            next_pid: 100,
        }
    }

    fn library(mode: Mode) -> Sim {
        Sim::new(config(mode, RestartPolicy::OnFailure, Duration::ZERO))
    }

    /// A supervisor that adopted generation 7 (pid 4242, handoff id 9).
    fn adopted(mode: Mode) -> Sim {
        let mut sim = Sim::library(mode);
        let orphan = Orphaned {
            id: 7,
            pid: 4242,
            build: build("daemon-a"),
            handoff_id: 9,
            next_handoff_id: 10,
            next_generation: 0,
        };
        sim.machine = LifecycleMachine::adopt(sim.machine.config().clone(), orphan, sim.now);
        sim
    }

    fn step(&mut self, input: LifecycleInput) -> Vec<LifecycleAction> {
        let tick = matches!(input, LifecycleInput::Tick);
        let actions = self.machine.step(input, self.now);
        self.visited.insert(self.machine.state());
        // After a Tick nothing is left due (a busy loop otherwise); other
        // inputs leave timers to the Tick the driver feeds after each.
        if tick && let Some(at) = self.machine.next_wakeup() {
            assert!(
                at > self.now || self.due_now(&actions),
                "a wakeup in the past: {actions:?}"
            );
        }
        actions
    }

    /// A restart is handed out at once when due; nothing else may be.
    fn due_now(&self, actions: &[LifecycleAction]) -> bool {
        actions
            .iter()
            .any(|a| matches!(a, LifecycleAction::Restart { .. }))
    }

    fn advance(&mut self, by: Duration) -> Vec<LifecycleAction> {
        self.now += by;
        self.step(LifecycleInput::Tick)
    }

    /// Spawns the successor of `ticket` running `build`.
    fn spawned(&mut self, ticket: Ticket, build: Build) -> (u32, Vec<LifecycleAction>) {
        self.next_pid += 1;
        let pid = self.next_pid;
        let actions = self.step(LifecycleInput::Spawned(Box::new(Spawned {
            ticket,
            pid,
            build,
            timeouts: self.machine.config().timeouts,
            force: false,
            // Asked for 100 µs before the spawn, which took 900 µs.
            requested: self.now - Duration::from_millis(1),
            spawn_begun: self.now - Duration::from_micros(900),
        })));
        (pid, actions)
    }

    fn frame(
        &mut self,
        generation: GenerationId,
        handoff_id: u64,
        message: Message,
    ) -> Vec<LifecycleAction> {
        self.step(LifecycleInput::Frame {
            generation,
            handoff_id,
            message,
        })
    }

    fn exited(&mut self, generation: GenerationId, status: ExitStatus) -> Vec<LifecycleAction> {
        self.step(LifecycleInput::Exited { generation, status })
    }

    fn closed(&mut self, generation: GenerationId) -> Vec<LifecycleAction> {
        self.step(LifecycleInput::Closed { generation })
    }

    /// A whole handoff to `build` by a well-behaved library successor (and
    /// incumbent, in exclusive mode): its ticket's generation and the
    /// commit's actions.
    fn handoff(&mut self, build_name: &str) -> (Ticket, Vec<LifecycleAction>) {
        self.handoff_with(build_name, 0)
    }

    /// [`Sim::handoff`] by a successor announcing `capabilities`.
    fn handoff_with(
        &mut self,
        build_name: &str,
        capabilities: u64,
    ) -> (Ticket, Vec<LifecycleAction>) {
        let ticket = self.machine.begin_handoff().expect("a ticket");
        let (_, _) = self.spawned(ticket, build(build_name));
        let (id, generation) = (ticket.handoff_id, ticket.generation);
        let incumbent = self.machine.live().map(|live| live.id);
        self.frame(generation, 0, hello_with(capabilities));
        let mut actions = self.frame(generation, id, Message::Warm);
        if let Some(old) = incumbent
            && self.machine.config().mode == Mode::Exclusive
        {
            assert!(sent_to(&actions, old, "Prepare"), "{actions:?}");
            let sealing = self.frame(old, id, drained());
            assert!(sent_to(&sealing, old, "Seal"), "{sealing:?}");
            actions = self.frame(old, id, Message::SealComplete(seal()));
        }
        assert!(sent_to(&actions, generation, "Begin"), "{actions:?}");
        self.frame(generation, id, ready());
        let actions = self.frame(generation, id, Message::CommitAck);
        assert!(committed(&actions), "{actions:?}");
        (ticket, actions)
    }
}

fn hello() -> Message {
    hello_with(0)
}

fn hello_with(capabilities: u64) -> Message {
    Message::Hello {
        role: Role::Generation,
        pid: 1,
        build_id: "test".into(),
        versions: PROTOCOL_VERSIONS,
        capabilities,
    }
}

fn drained() -> Message {
    Message::Drained {
        open_connections: 0,
        accept_closed: true,
    }
}

fn seal() -> SealInfo {
    SealInfo {
        revisions: 1,
        fingerprint: Fingerprint::of_bytes(b"state"),
    }
}

fn ready() -> Message {
    Message::Ready {
        addresses: Vec::new(),
        health: Health::Healthy,
        revisions: 1,
    }
}

fn sent_to(actions: &[LifecycleAction], to: GenerationId, name: &str) -> bool {
    actions.iter().any(|a| {
        matches!(a, LifecycleAction::Send { to: t, message, .. } if *t == to && message.name() == name)
    })
}

fn signalled(actions: &[LifecycleAction], to: GenerationId, signal: GenerationSignal) -> bool {
    actions.iter().any(
        |a| matches!(a, LifecycleAction::Signal { to: t, signal: s } if *t == to && *s == signal),
    )
}

fn outcome(actions: &[LifecycleAction]) -> Option<&Outcome> {
    actions.iter().find_map(|a| match a {
        LifecycleAction::Finished(outcome) => Some(&**outcome),
        _ => None,
    })
}

fn committed(actions: &[LifecycleAction]) -> bool {
    outcome(actions).is_some_and(Outcome::is_committed)
}

fn forgot(actions: &[LifecycleAction], generation: GenerationId) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, LifecycleAction::Forget { generation: g } if *g == generation))
}

fn restart_of(actions: &[LifecycleAction]) -> Option<(Ticket, Build)> {
    actions.iter().find_map(|a| match a {
        LifecycleAction::Restart { ticket, build } => Some((*ticket, build.clone())),
        _ => None,
    })
}

fn noted(actions: &[LifecycleAction], wanted: impl Fn(&Note) -> bool) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, LifecycleAction::Note(note) if wanted(note)))
}

/// Generation 1 serving, started by a cold start.
fn serving(mode: Mode) -> Sim {
    let mut sim = Sim::library(mode);
    sim.handoff("daemon-a");
    assert_eq!(sim.machine.state(), LifecycleState::Serving);
    sim
}

// ------------------------------------------------------------ starting

#[test]
fn a_cold_start_is_a_handoff_without_an_incumbent_and_ends_serving() {
    let mut sim = Sim::library(Mode::Exclusive);
    assert_eq!(sim.machine.state(), LifecycleState::Starting);
    let ticket = sim.machine.begin_handoff().expect("a ticket");
    assert_eq!((ticket.handoff_id, ticket.generation), (1, 1));
    // Past the ids a kept history holds, and never back.
    let mut again = Sim::library(Mode::Exclusive);
    again.machine.continue_handoff_ids(7);
    again.machine.continue_handoff_ids(3);
    let numbered = again.machine.begin_handoff().expect("a ticket");
    assert_eq!((numbered.handoff_id, numbered.generation), (7, 1));
    let (pid, actions) = sim.spawned(ticket, build("daemon-a"));
    assert_eq!(sim.machine.state(), LifecycleState::HandingOff);
    assert!(actions.iter().any(|a| matches!(
        a,
        LifecycleAction::Announce(SupervisorEvent::HandoffStarted {
            upgrade: false,
            incumbent_pid: None,
            ..
        })
    )));
    sim.frame(1, 0, hello());
    let actions = sim.frame(1, 1, Message::Warm);
    // No incumbent: Begin at once, without a seal.
    assert!(sent_to(&actions, 1, "Begin"), "{actions:?}");
    sim.frame(1, 1, ready());
    let actions = sim.frame(1, 1, Message::CommitAck);
    match outcome(&actions) {
        Some(Outcome::Committed {
            old_pid: None,
            new_pid,
            generation: 1,
            phases,
            ..
        }) => {
            assert_eq!(*new_pid, pid);
            // The phases, the request and the spawn included, add up to
            // the total, which counts from the request.
            let sum: Duration = phases.named().iter().filter_map(|(_, d)| *d).sum();
            assert_eq!(phases.total, sum, "{phases:?}");
            assert_eq!(phases.request, Some(Duration::from_micros(100)));
            assert_eq!(phases.spawn, Some(Duration::from_micros(900)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.machine.state(), LifecycleState::Serving);
    assert_eq!(sim.machine.live().map(|l| l.pid), Some(pid));
}

#[test]
fn a_refused_spawn_leaves_no_gap_in_the_numbers() {
    let mut sim = serving(Mode::Exclusive);
    let ticket = sim.machine.begin_handoff().expect("ticket");
    assert_eq!((ticket.handoff_id, ticket.generation), (2, 2));
    // The driver could not spawn it (a pinned binary changed, say).
    let actions = sim.step(LifecycleInput::SpawnFailed {
        ticket,
        reason: "sha256 mismatch".into(),
    });
    assert!(
        actions.is_empty(),
        "an upgrade's caller hears it: {actions:?}"
    );
    assert_eq!(sim.machine.state(), LifecycleState::Serving);
    let again = sim.machine.begin_handoff().expect("ticket");
    assert_eq!((again.handoff_id, again.generation), (2, 2));
}

#[test]
fn a_second_handoff_is_busy_and_nothing_starts_while_stopping() {
    let mut sim = serving(Mode::Exclusive);
    let ticket = sim.machine.begin_handoff().expect("ticket");
    sim.spawned(ticket, build("daemon-b"));
    assert_eq!(sim.machine.begin_handoff(), Err(Refusal::Busy));
    sim.step(LifecycleInput::Stop);
    assert_eq!(sim.machine.state(), LifecycleState::Stopping);
    assert_eq!(sim.machine.begin_handoff(), Err(Refusal::Stopping));
}

// ------------------------------------------------------ restart policy

#[test]
fn a_crash_restarts_the_last_committed_build_with_a_growing_backoff() {
    let mut sim = serving(Mode::Exclusive);
    sim.handoff("daemon-b");
    let live = sim.machine.live().expect("live").id;
    let backoff = sim.machine.config().timeouts.restart_backoff_initial;
    let actions = sim.exited(live, ExitStatus::Signal(9));
    assert!(forgot(&actions, live));
    assert!(noted(&actions, |n| *n
        == Note::RestartScheduled { delay: backoff }));
    assert_eq!(sim.machine.state(), LifecycleState::Starting);
    // What status names meanwhile: the build the restart runs.
    assert!(sim.machine.live().is_none());
    assert_eq!(sim.machine.last_committed(), &build("daemon-b"));
    let early = sim.advance(backoff - Duration::from_millis(1));
    assert!(
        restart_of(&early).is_none(),
        "not before the backoff: {early:?}"
    );
    let (ticket, restarted) =
        restart_of(&sim.advance(Duration::from_millis(1))).expect("a restart");
    assert!(ticket.restart);
    assert_eq!(restarted, build("daemon-b"), "what was last committed");
    // Its spawn fails: tried again after twice the delay.
    let actions = sim.step(LifecycleInput::SpawnFailed {
        ticket,
        reason: "gone".into(),
    });
    assert!(noted(&actions, |n| *n
        == Note::RestartScheduled { delay: backoff * 2 }));
    let (ticket, _) = restart_of(&sim.advance(backoff * 2)).expect("a restart");
    let (_, actions) = sim.spawned(ticket, build("daemon-b"));
    assert!(actions.iter().any(|a| matches!(
        a,
        LifecycleAction::Announce(SupervisorEvent::HandoffStarted { upgrade: false, .. })
    )));
    assert_eq!(sim.machine.state(), LifecycleState::HandingOff);
}

#[test]
fn a_generation_that_ran_long_enough_resets_the_backoff() {
    let mut sim = serving(Mode::Exclusive);
    let backoff = sim.machine.config().timeouts.restart_backoff_initial;
    sim.exited(1, ExitStatus::Code(1));
    let (ticket, _) = restart_of(&sim.advance(backoff)).expect("restart");
    sim.spawned(ticket, build("daemon-a"));
    let generation = ticket.generation;
    sim.frame(generation, 0, hello());
    sim.frame(generation, ticket.handoff_id, Message::Warm);
    sim.frame(generation, ticket.handoff_id, ready());
    sim.frame(generation, ticket.handoff_id, Message::CommitAck);
    // A quick second crash: the delay doubles.
    let actions = sim.exited(generation, ExitStatus::Code(1));
    assert!(noted(&actions, |n| *n
        == Note::RestartScheduled { delay: backoff * 2 }));
    let (ticket, _) = restart_of(&sim.advance(backoff * 2)).expect("restart");
    sim.spawned(ticket, build("daemon-a"));
    let generation = ticket.generation;
    sim.frame(generation, 0, hello());
    sim.frame(generation, ticket.handoff_id, Message::Warm);
    sim.frame(generation, ticket.handoff_id, ready());
    sim.frame(generation, ticket.handoff_id, Message::CommitAck);
    // This one serves past RESTART_STABLE: the next delay is the first.
    for _ in 0..RESTART_STABLE.as_secs() {
        sim.advance(SECOND);
        sim.frame(generation, ticket.handoff_id, Message::Heartbeat);
    }
    let actions = sim.exited(generation, ExitStatus::Code(1));
    assert!(
        noted(&actions, |n| *n
            == Note::RestartScheduled { delay: backoff }),
        "{actions:?}"
    );
}

#[test]
fn the_restart_policy_decides_after_every_kind_of_loss() {
    // (policy, clean exit) → restarts?
    let cases = [
        (RestartPolicy::Always, true, true),
        (RestartPolicy::Always, false, true),
        (RestartPolicy::OnFailure, true, false),
        (RestartPolicy::OnFailure, false, true),
        (RestartPolicy::Never, false, false),
    ];
    for (policy, clean, restarts) in cases {
        let mut sim = Sim::new(config(Mode::Exclusive, policy, Duration::ZERO));
        sim.handoff("daemon-a");
        let status = if clean {
            ExitStatus::Code(0)
        } else {
            ExitStatus::Code(3)
        };
        let actions = sim.exited(1, status);
        let stopping = sim.machine.state() == LifecycleState::Stopping
            || sim.machine.state() == LifecycleState::Finished;
        assert_eq!(!stopping, restarts, "{policy:?} clean={clean}: {actions:?}");
        if !restarts {
            assert!(noted(&actions, |n| *n == Note::NoRestart));
        }
    }
    // A cold start that fails is a loss too: under Never the supervisor
    // stops instead of serving nothing for ever.
    let mut sim = Sim::new(config(
        Mode::Exclusive,
        RestartPolicy::Never,
        Duration::ZERO,
    ));
    let ticket = sim.machine.begin_handoff().expect("ticket");
    sim.spawned(ticket, build("daemon-a"));
    sim.closed(1);
    let actions = sim.exited(1, ExitStatus::Code(3));
    assert!(
        matches!(
            outcome(&actions),
            Some(Outcome::RolledBack { old_pid: None, .. })
        ),
        "{actions:?}"
    );
    assert_eq!(sim.machine.state(), LifecycleState::Finished, "{actions:?}");
}

// ------------------------------------------------------------ the commit

#[test]
fn an_incumbent_whose_connection_closed_but_still_runs_at_the_commit_is_reaped() {
    // The suspected defect: the incumbent closes its control connection
    // after SealComplete and is still alive at the commit.
    let mut sim = serving(Mode::Exclusive);
    let ticket = sim.machine.begin_handoff().expect("ticket");
    sim.spawned(ticket, build("daemon-b"));
    let (id, new) = (ticket.handoff_id, ticket.generation);
    sim.frame(new, 0, hello());
    sim.frame(new, id, Message::Warm);
    sim.frame(1, id, drained());
    sim.frame(1, id, Message::SealComplete(seal()));
    let actions = sim.closed(1);
    assert!(
        signalled(&actions, 1, GenerationSignal::Kill),
        "killed at once: {actions:?}"
    );
    sim.frame(new, id, ready());
    let actions = sim.frame(new, id, Message::CommitAck);
    assert!(committed(&actions));
    // Not forgotten: it is a retiree until its reap.
    assert!(!forgot(&actions, 1), "{actions:?}");
    let old_pid = 101;
    assert_eq!(sim.machine.retiring(), vec![old_pid]);
    // SIGKILL again if it lingers (to its whole group, I16)...
    let actions = sim.advance(sim.machine.config().timeouts.kill_grace);
    assert!(
        signalled(&actions, 1, GenerationSignal::Kill),
        "{actions:?}"
    );
    // ...and its reap is what lets it go.
    let actions = sim.exited(1, ExitStatus::Signal(9));
    assert!(forgot(&actions, 1));
    assert!(sim.machine.retiring().is_empty());
}

#[test]
fn after_an_overlap_commit_the_old_generation_drains_then_retires() {
    let mut sim = serving(Mode::Overlap);
    let (ticket, actions) = sim.handoff("daemon-b");
    // Prepare with this handoff's id: the old one drains now.
    assert!(actions.iter().any(|a| matches!(
        a,
        LifecycleAction::Send { to: 1, handoff_id, message: Message::Prepare { .. } } if *handoff_id == ticket.handoff_id
    )), "{actions:?}");
    let actions = sim.frame(1, ticket.handoff_id, drained());
    assert!(sent_to(&actions, 1, "Retire"), "{actions:?}");
    let actions = sim.exited(1, ExitStatus::Code(0));
    assert!(forgot(&actions, 1));
    assert!(actions.iter().any(|a| matches!(
        a,
        LifecycleAction::Announce(SupervisorEvent::GenerationRetired { generation: 1, .. })
    )));
}

#[test]
fn a_successor_exit_waits_for_its_connections_eof() {
    // I11: a rollback keeps the successor's own reason (its Failed), sent
    // just before it died, rather than a bare exit status.
    let mut sim = serving(Mode::Exclusive);
    let ticket = sim.machine.begin_handoff().expect("ticket");
    sim.spawned(ticket, build("daemon-b"));
    let new = ticket.generation;
    sim.frame(new, 0, hello());
    let actions = sim.exited(new, ExitStatus::Code(3));
    assert!(outcome(&actions).is_none(), "held until EOF: {actions:?}");
    let actions = sim.frame(
        new,
        ticket.handoff_id,
        Message::Failed {
            reason: crate::wire::AbortReason::SuccessorFailed {
                reason: "no config".into(),
            },
        },
    );
    assert!(outcome(&actions).is_none(), "{actions:?}");
    let actions = sim.closed(new);
    match outcome(&actions) {
        Some(Outcome::RolledBack { reason, .. }) => {
            assert!(reason.to_string().contains("no config"), "{reason}")
        }
        other => panic!("{other:?} in {actions:?}"),
    }
    // Without an EOF, the exit goes on its own after EXIT_AFTER_EOF.
    let ticket = sim.machine.begin_handoff().expect("ticket");
    sim.spawned(ticket, build("daemon-b"));
    sim.exited(ticket.generation, ExitStatus::Code(3));
    assert!(outcome(&sim.advance(crate::timeouts::EXIT_AFTER_EOF)).is_some());
}

/// A successor that exits after its last frame but before its EOF has
/// its exit held; a verdict that comes meanwhile does not lose it: a
/// committed generation already dead is a loss the restart policy
/// handles, not a dead generation serving.
#[test]
fn an_exit_held_for_its_eof_outlives_the_verdict() {
    // Committed, then found dead: a restart, not a dead generation serving.
    let mut sim = serving(Mode::Overlap);
    let ticket = sim.machine.begin_handoff().expect("ticket");
    sim.spawned(ticket, build("daemon-b"));
    let (id, new) = (ticket.handoff_id, ticket.generation);
    sim.frame(new, 0, hello());
    sim.frame(new, id, Message::Warm);
    sim.frame(new, id, ready());
    sim.exited(new, ExitStatus::Code(0));
    let actions = sim.frame(new, id, Message::CommitAck);
    assert!(committed(&actions), "{actions:?}");
    assert!(
        actions.iter().any(|a| matches!(
            a,
            LifecycleAction::Announce(SupervisorEvent::GenerationExited { generation, .. })
                if *generation == new
        )),
        "the held exit is heard: {actions:?}"
    );
    assert_ne!(sim.machine.live().map(|live| live.id), Some(new));
}

// ------------------------------------------------------------- probation

fn in_probation() -> (Sim, Ticket) {
    let mut sim = Sim::new(config(Mode::Overlap, RestartPolicy::OnFailure, 30 * SECOND));
    sim.handoff("daemon-a");
    let (ticket, actions) = sim.handoff("daemon-b");
    assert!(
        actions.iter().any(|a| matches!(
            a,
            LifecycleAction::WatchProbation { generation, .. } if *generation == ticket.generation
        )),
        "{actions:?}"
    );
    let actions = sim.frame(1, ticket.handoff_id, drained());
    assert!(!sent_to(&actions, 1, "Retire"), "kept idle: {actions:?}");
    (sim, ticket)
}

#[test]
fn a_crash_in_probation_resumes_the_previous_generation_instead_of_a_restart() {
    let (mut sim, ticket) = in_probation();
    let actions = sim.exited(ticket.generation, ExitStatus::Signal(11));
    assert!(sent_to(&actions, 1, "ResumeAfterAbort"), "{actions:?}");
    assert!(restart_of(&actions).is_none());
    assert!(!noted(&actions, |n| matches!(
        n,
        Note::RestartScheduled { .. }
    )));
    let actions = sim.frame(1, ticket.handoff_id, Message::ResumeAck);
    let rollback = actions
        .iter()
        .find_map(|a| match a {
            LifecycleAction::Announce(SupervisorEvent::RolledBackInProbation(r)) => Some(r.clone()),
            _ => None,
        })
        .expect("a rollback");
    assert_eq!(
        (rollback.generation, rollback.failed_generation),
        (1, ticket.generation)
    );
    assert!(rollback.reason.contains("signal 11"), "{rollback:?}");
    assert_eq!(sim.machine.live().map(|l| l.id), Some(1));
    assert_eq!(sim.machine.last_probation_rollback(), Some(&rollback));
    // A restart runs what serves now, not the build that failed.
    let actions = sim.exited(1, ExitStatus::Code(1));
    let backoff = sim.machine.config().timeouts.restart_backoff_initial;
    assert!(noted(&actions, |n| matches!(
        n,
        Note::RestartScheduled { .. }
    )));
    let (_, restarted) = restart_of(&sim.advance(backoff)).expect("restart");
    assert_eq!(restarted, build("daemon-a"));
}

#[test]
fn a_failed_probation_probe_kills_the_new_generation_and_its_exit_resumes_the_old() {
    let (mut sim, ticket) = in_probation();
    let new = ticket.generation;
    let actions = sim.step(LifecycleInput::Probed {
        purpose: ProbePurpose::ProbationSuspect(new),
        result: Err("503".into()),
    });
    assert!(noted(&actions, |n| matches!(n, Note::ProbationHeld { .. })));
    let actions = sim.step(LifecycleInput::Probed {
        purpose: ProbePurpose::ProbationFailed(new),
        result: Err("503".into()),
    });
    assert!(
        signalled(&actions, new, GenerationSignal::Kill),
        "{actions:?}"
    );
    let actions = sim.exited(new, ExitStatus::Signal(9));
    assert!(sent_to(&actions, 1, "ResumeAfterAbort"));
    let actions = sim.frame(1, ticket.handoff_id, Message::ResumeAck);
    let reason = actions
        .iter()
        .find_map(|a| match a {
            LifecycleAction::Announce(SupervisorEvent::RolledBackInProbation(r)) => {
                Some(r.reason.clone())
            }
            _ => None,
        })
        .expect("rollback");
    assert!(reason.contains("health probe failed: 503"), "{reason}");
}

#[test]
fn a_probation_held_open_outlasts_its_period_until_the_verdict() {
    let (mut sim, ticket) = in_probation();
    let new = ticket.generation;
    // Late in the probation an attempt fails; the confirmation takes long.
    sim.now += 29 * SECOND;
    sim.step(LifecycleInput::Probed {
        purpose: ProbePurpose::ProbationSuspect(new),
        result: Err("timeout".into()),
    });
    let actions = sim.advance(2 * SECOND);
    assert!(!sent_to(&actions, 1, "Retire"), "still held: {actions:?}");
    let actions = sim.step(LifecycleInput::Probed {
        purpose: ProbePurpose::ProbationFailed(new),
        result: Err("timeout".into()),
    });
    assert!(signalled(&actions, new, GenerationSignal::Kill));
    let actions = sim.exited(new, ExitStatus::Signal(9));
    assert!(sent_to(&actions, 1, "ResumeAfterAbort"), "{actions:?}");
}

#[test]
fn a_crash_during_an_upgrade_in_probation_is_decided_by_the_verdict() {
    for commits in [true, false] {
        let (mut sim, first) = in_probation();
        let live = first.generation;
        let ticket = sim.machine.begin_handoff().expect("ticket");
        sim.spawned(ticket, build("daemon-c"));
        let (id, new) = (ticket.handoff_id, ticket.generation);
        sim.frame(new, 0, hello());
        let actions = sim.exited(live, ExitStatus::Signal(9));
        assert!(noted(&actions, |n| matches!(n, Note::LiveLost { .. })));
        assert!(
            !sent_to(&actions, 1, "ResumeAfterAbort"),
            "the verdict decides"
        );
        // The probation does not end before the verdict.
        for _ in 0..8 {
            let actions = sim.advance(5 * SECOND);
            assert!(!sent_to(&actions, 1, "Retire"), "{actions:?}");
            sim.frame(new, id, Message::Heartbeat);
        }
        if commits {
            sim.frame(new, id, Message::Warm);
            sim.frame(new, id, ready());
            let actions = sim.frame(new, id, Message::CommitAck);
            assert!(committed(&actions));
            assert!(noted(&actions, |n| *n == Note::RestartDropped));
            assert!(!sent_to(&actions, 1, "ResumeAfterAbort"));
            assert_eq!(sim.machine.live().map(|l| l.id), Some(new));
        } else {
            sim.closed(new);
            let actions = sim.exited(new, ExitStatus::Code(3));
            assert!(matches!(
                outcome(&actions),
                Some(Outcome::RolledBack { old_pid: None, .. })
            ));
            assert!(sent_to(&actions, 1, "ResumeAfterAbort"), "{actions:?}");
            sim.frame(1, first.handoff_id, Message::ResumeAck);
            assert_eq!(sim.machine.live().map(|l| l.id), Some(1));
        }
    }
}

#[test]
fn a_resume_acknowledged_after_another_commit_retires_the_late_generation() {
    let (mut sim, ticket) = in_probation();
    sim.exited(ticket.generation, ExitStatus::Signal(9));
    // Nobody serves while generation 1 takes its time: an upgrade runs.
    assert_eq!(sim.machine.state(), LifecycleState::Starting);
    let (_, _) = sim.handoff("daemon-c");
    let actions = sim.frame(1, ticket.handoff_id, Message::ResumeAck);
    assert!(noted(&actions, |n| matches!(
        n,
        Note::ResumedTooLate { generation: 1 }
    )));
    assert!(sim.machine.last_probation_rollback().is_none());
    assert_eq!(sim.machine.retiring(), vec![101]);
}

#[test]
fn a_resumed_generation_that_fails_its_check_is_killed_and_restarted() {
    let mut config = config(Mode::Overlap, RestartPolicy::OnFailure, 30 * SECOND);
    config.probe = true;
    let mut sim = Sim::new(config);
    // The health gate probes every successor before its commit.
    for name in ["daemon-a", "daemon-b"] {
        let ticket = sim.machine.begin_handoff().expect("ticket");
        sim.spawned(ticket, build(name));
        let (generation, id) = (ticket.generation, ticket.handoff_id);
        sim.frame(generation, 0, hello());
        sim.frame(generation, id, Message::Warm);
        sim.frame(generation, id, ready());
        sim.step(LifecycleInput::Probed {
            purpose: ProbePurpose::Handoff(id),
            result: Ok(()),
        });
        assert!(committed(&sim.frame(generation, id, Message::CommitAck)));
    }
    sim.frame(1, 2, drained());
    sim.exited(2, ExitStatus::Signal(9));
    let actions = sim.frame(1, 2, Message::ResumeAck);
    assert!(actions.iter().any(|a| matches!(
        a,
        LifecycleAction::StartProbe {
            purpose: ProbePurpose::Resumed(1),
            ..
        }
    )));
    let actions = sim.step(LifecycleInput::Probed {
        purpose: ProbePurpose::Resumed(1),
        result: Err("refused".into()),
    });
    assert!(signalled(&actions, 1, GenerationSignal::Kill));
    assert_eq!(
        sim.machine
            .last_probation_rollback()
            .map(|r| r.resume_check.clone()),
        Some(ResumeCheck::Failed("refused".into()))
    );
    let actions = sim.exited(1, ExitStatus::Signal(9));
    assert!(noted(&actions, |n| matches!(
        n,
        Note::RestartScheduled { .. }
    )));
}

#[test]
fn an_incumbent_that_could_not_resume_is_restarted_even_if_it_exits_zero() {
    let mut sim = serving(Mode::Exclusive);
    let ticket = sim.machine.begin_handoff().expect("a ticket");
    sim.spawned(ticket, build("daemon-b"));
    let (id, successor) = (ticket.handoff_id, ticket.generation);
    sim.frame(successor, 0, hello());
    sim.frame(successor, id, Message::Warm);
    sim.frame(1, id, drained());
    let begun = sim.frame(1, id, Message::SealComplete(seal()));
    assert!(sent_to(&begun, successor, "Begin"), "{begun:?}");
    // The successor dies before Ready; once it is reaped the incumbent is
    // asked to resume, and its resume hook fails (it panicked).
    let mut actions = sim.closed(successor);
    actions.extend(sim.exited(successor, ExitStatus::Code(3)));
    assert!(sent_to(&actions, 1, "ResumeAfterAbort"), "{actions:?}");
    // A failed resume shows as the incumbent's EOF (its session ended).
    let actions = sim.closed(1);
    assert!(
        signalled(&actions, 1, GenerationSignal::Kill),
        "{actions:?}"
    );
    // It exits on its own, status 0, before the SIGKILL lands: still a
    // failure (it was condemned), so the restart policy restarts it.
    let actions = sim.exited(1, ExitStatus::Code(0));
    assert!(
        noted(&actions, |n| matches!(n, Note::RestartScheduled { .. })),
        "{actions:?}"
    );
    assert!(!noted(&actions, |n| matches!(n, Note::NoRestart)));
}

// ------------------------------------------------------------------ stop

/// A generation whose exit never reaches the machine (lost on its way)
/// cannot hold a stop for ever: a kill grace after SIGKILL the stop ends,
/// naming it.
#[test]
fn a_stop_ends_a_kill_grace_after_sigkill_even_with_an_exit_unheard() {
    let (mut sim, ticket) = in_probation();
    let new = ticket.generation;
    sim.step(LifecycleInput::Stop);
    let grace = sim.machine.config().timeouts.kill_grace;
    let actions = sim.advance(STOP_DRAIN + grace);
    assert!(signalled(&actions, new, GenerationSignal::Kill));
    // Only the old generation's exit is heard.
    sim.exited(1, ExitStatus::Signal(9));
    assert!(!sim.machine.is_finished());
    assert!(sim.machine.next_wakeup().is_some(), "the stop's last bound");
    let actions = sim.advance(grace - Duration::from_millis(1));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, LifecycleAction::Stopped))
    );
    let actions = sim.advance(Duration::from_millis(1));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, LifecycleAction::Stopped))
    );
    assert!(actions.iter().any(|a| matches!(
        a,
        LifecycleAction::Note(Note::StopUnheard { generations }) if *generations == [new]
    )));
    assert!(sim.machine.is_finished());
}

#[test]
fn a_stop_signals_every_generation_then_kills_after_the_stop_drain() {
    let (mut sim, ticket) = in_probation();
    let new = ticket.generation;
    let actions = sim.step(LifecycleInput::Stop);
    assert!(signalled(&actions, new, GenerationSignal::Stop));
    assert!(signalled(&actions, 1, GenerationSignal::Stop));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, LifecycleAction::Announce(SupervisorEvent::Stopping)))
    );
    let kill_after = STOP_DRAIN + sim.machine.config().timeouts.kill_grace;
    let actions = sim.advance(kill_after - Duration::from_millis(1));
    assert!(!signalled(&actions, new, GenerationSignal::Kill));
    let actions = sim.advance(Duration::from_millis(1));
    assert!(signalled(&actions, new, GenerationSignal::Kill));
    assert!(signalled(&actions, 1, GenerationSignal::Kill));
    let actions = sim.exited(new, ExitStatus::Signal(9));
    assert!(actions.iter().any(|a| matches!(
        a,
        LifecycleAction::Announce(SupervisorEvent::GenerationExited { expected: true, .. })
    )));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, LifecycleAction::Stopped))
    );
    let actions = sim.exited(1, ExitStatus::Signal(9));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, LifecycleAction::Stopped))
    );
    assert!(sim.machine.is_finished());
    assert_eq!(sim.machine.next_wakeup(), None);
}

#[test]
fn a_stop_during_a_handoff_rolls_it_back_first_and_its_drain_counts_from_the_stop_signal() {
    let mut sim = serving(Mode::Exclusive);
    let ticket = sim.machine.begin_handoff().expect("ticket");
    sim.spawned(ticket, build("daemon-b"));
    let (id, new) = (ticket.handoff_id, ticket.generation);
    sim.frame(new, 0, hello());
    sim.frame(new, id, Message::Warm);
    sim.frame(1, id, drained());
    let actions = sim.step(LifecycleInput::Stop);
    assert!(
        signalled(&actions, new, GenerationSignal::Kill),
        "the successor goes: {actions:?}"
    );
    assert!(
        !signalled(&actions, 1, GenerationSignal::Stop),
        "not before the rollback"
    );
    sim.closed(new);
    let actions = sim.exited(new, ExitStatus::Signal(9));
    assert!(sent_to(&actions, 1, "ResumeAfterAbort"));
    // The resume takes 20 s; the stop signal follows the rollback.
    sim.now += 20 * SECOND;
    let actions = sim.frame(1, id, Message::ResumeAck);
    assert!(matches!(
        outcome(&actions),
        Some(Outcome::RolledBack { .. })
    ));
    assert!(signalled(&actions, 1, GenerationSignal::Stop));
    let actions = sim.advance(STOP_DRAIN);
    assert!(
        !signalled(&actions, 1, GenerationSignal::Kill),
        "the drain counts from the signal"
    );
    let actions = sim.exited(1, ExitStatus::Code(0));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, LifecycleAction::Stopped))
    );
}

#[test]
fn a_stop_with_nothing_alive_is_finished_at_once() {
    let mut sim = Sim::library(Mode::Exclusive);
    let actions = sim.step(LifecycleInput::Stop);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, LifecycleAction::Stopped))
    );
    assert!(sim.machine.is_finished());
}

// ------------------------------------------------- re-exec and adoption

/// Through JSON and back, as a re-exec carries it (the anchor converting
/// instants as the driver's does).
fn carried(machine: &LifecycleMachine, now: Instant) -> (LifecycleMachine, Vec<LifecycleAction>) {
    let anchor = (now, 1_000_000_000_000);
    let snapshot = machine.snapshot().expect("between handoffs");
    let json = crate::protocol::mono::with_anchor(anchor, || serde_json::to_vec(&snapshot))
        .expect("serialize");
    let back: LifecycleSnapshot =
        crate::protocol::mono::with_anchor(anchor, || serde_json::from_slice(&json))
            .expect("deserialize");
    LifecycleMachine::restore(machine.config().clone(), back, now)
}

#[test]
fn a_snapshot_carries_the_generations_counters_and_probation_deadlines() {
    let (sim, ticket) = in_probation();
    let until = sim
        .machine
        .retirees
        .iter()
        .find_map(|r| r.machine.probation_until())
        .expect("a probation deadline");
    let (restored, actions) = carried(&sim.machine, sim.now);
    assert_eq!(restored.state(), LifecycleState::Serving);
    assert_eq!(restored.live().map(|l| l.id), Some(ticket.generation));
    assert_eq!(restored.retirees().count(), 1);
    // The probation's watch starts again, with its deadline unchanged.
    assert!(
        actions.iter().any(|a| matches!(
            a,
            LifecycleAction::WatchProbation { generation, until: at }
                if *generation == ticket.generation && *at == until
        )),
        "{actions:?}"
    );
    // The counters go on where they were.
    let next = restored.begin_handoff().expect("a ticket");
    assert_eq!(next.generation, ticket.generation + 1);
    assert_eq!(next.handoff_id, ticket.handoff_id + 1);
}

#[test]
fn a_snapshot_is_refused_during_a_handoff() {
    let mut sim = serving(Mode::Exclusive);
    let ticket = sim.machine.begin_handoff().expect("ticket");
    sim.spawned(ticket, build("daemon-b"));
    assert_eq!(sim.machine.snapshot().err(), Some(Refusal::Busy));
}

#[test]
fn an_adopted_orphan_serves_and_the_counters_go_on_from_the_record() {
    let config = config(Mode::Exclusive, RestartPolicy::OnFailure, Duration::ZERO);
    let now = Instant::now();
    let machine = LifecycleMachine::adopt(
        config,
        Orphaned {
            id: 7,
            pid: 4242,
            build: build("daemon-b"),
            handoff_id: 9,
            next_handoff_id: 10,
            next_generation: 0,
        },
        now,
    );
    assert_eq!(machine.state(), LifecycleState::Serving);
    let live = machine.live().expect("live");
    assert_eq!((live.id, live.pid), (7, 4242));
    let ticket = machine.begin_handoff().expect("a ticket");
    assert_eq!((ticket.generation, ticket.handoff_id), (8, 10));
}

#[test]
fn an_adopted_orphan_never_reuses_the_number_of_a_generation_the_record_names() {
    let config = config(Mode::Exclusive, RestartPolicy::OnFailure, Duration::ZERO);
    // Generation 8 was its dead supervisor's successor, never committed.
    let orphan = Orphaned {
        id: 7,
        pid: 4242,
        build: build("daemon-b"),
        handoff_id: 9,
        next_handoff_id: 10,
        next_generation: 9,
    };
    let machine = LifecycleMachine::adopt(config, orphan, Instant::now());
    let ticket = machine.begin_handoff().expect("a ticket");
    assert_eq!(ticket.generation, 9);
}

// ---------------------------------------------------------- every state

#[test]
fn the_tests_reach_every_lifecycle_state() {
    let mut reached = HashSet::new();
    let (mut sim, _) = in_probation();
    sim.step(LifecycleInput::Stop);
    sim.advance(STOP_DRAIN + sim.machine.config().timeouts.kill_grace);
    sim.exited(2, ExitStatus::Signal(9));
    sim.exited(1, ExitStatus::Signal(9));
    assert!(sim.machine.is_finished());
    reached.extend(sim.visited);
    for state in LifecycleState::ALL {
        assert!(reached.contains(state), "{state} never reached");
    }
}

// ------------------------------------------- connections in transit (I20)

const CAP: u64 = crate::wire::CAP_CONNECTIONS;

fn position(actions: &[LifecycleAction], wanted: impl Fn(&LifecycleAction) -> bool) -> usize {
    actions
        .iter()
        .position(wanted)
        .unwrap_or_else(|| panic!("not in {actions:?}"))
}

fn connections_sent(actions: &[LifecycleAction]) -> Vec<(u64, GenerationId, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            LifecycleAction::SendConnections {
                batch,
                to,
                handoff_id,
            } => Some((*batch, *to, *handoff_id)),
            _ => None,
        })
        .collect()
}

fn handed_over(sim: &mut Sim, from: GenerationId, batch: u64) -> Vec<LifecycleAction> {
    sim.step(LifecycleInput::Connections {
        generation: from,
        batch,
        count: 3,
    })
}

/// An exclusive handoff between two generations that take connections, up
/// to the incumbent's drain: (old, its id before Prepare, new, handoff id).
fn exclusive_until_drain(sim: &mut Sim) -> (GenerationId, u64, GenerationId, u64) {
    let (first, _) = sim.handoff_with("daemon-a", CAP);
    let ticket = sim.machine.begin_handoff().expect("a ticket");
    sim.spawned(ticket, build("daemon-b"));
    let (old, new, id) = (first.generation, ticket.generation, ticket.handoff_id);
    sim.frame(new, 0, hello_with(CAP));
    let actions = sim.frame(new, id, Message::Warm);
    // The budget goes first, with the id the incumbent carries until its
    // Prepare: it is in place when the drain hook starts.
    let offer = position(&actions, |a| {
        matches!(a, LifecycleAction::OfferConnections { to, handoff_id, receiver }
            if *to == old && *handoff_id == first.handoff_id && *receiver == new)
    });
    let prepare = position(
        &actions,
        |a| matches!(a, LifecycleAction::Send { to, message: Message::Prepare { .. }, .. } if *to == old),
    );
    assert!(offer < prepare, "{actions:?}");
    (old, first.handoff_id, new, id)
}

#[test]
fn connections_an_incumbent_hands_over_are_held_until_the_commit_then_go_to_the_successor() {
    let mut sim = Sim::library(Mode::Exclusive);
    let (old, _, new, id) = exclusive_until_drain(&mut sim);
    let held = handed_over(&mut sim, old, 1);
    assert!(connections_sent(&held).is_empty(), "{held:?}");
    sim.frame(old, id, drained());
    let begin = sim.frame(old, id, Message::SealComplete(seal()));
    assert!(sent_to(&begin, new, "Begin"), "{begin:?}");
    let more = handed_over(&mut sim, old, 2);
    assert!(connections_sent(&more).is_empty(), "{more:?}");
    let commit = sim.frame(new, id, ready());
    assert!(
        connections_sent(&commit).is_empty(),
        "not before the commit: {commit:?}"
    );
    let actions = sim.frame(new, id, Message::CommitAck);
    assert!(committed(&actions), "{actions:?}");
    assert_eq!(connections_sent(&actions), [(1, new, id), (2, new, id)]);
}

#[test]
fn connections_held_when_a_handoff_rolls_back_go_back_to_the_incumbent_once_it_serves_again() {
    let mut sim = Sim::library(Mode::Exclusive);
    let (old, _, new, id) = exclusive_until_drain(&mut sim);
    handed_over(&mut sim, old, 5);
    sim.frame(old, id, drained());
    let failed = Message::Failed {
        reason: AbortReason::SuccessorFailed {
            reason: "no".into(),
        },
    };
    let mut actions = sim.frame(new, id, failed);
    actions.extend(sim.closed(new));
    actions.extend(sim.exited(new, ExitStatus::Code(1)));
    assert!(sent_to(&actions, old, "ResumeAfterAbort"), "{actions:?}");
    assert!(connections_sent(&actions).is_empty(), "{actions:?}");
    let actions = sim.frame(old, id, Message::ResumeAck);
    assert!(
        matches!(outcome(&actions), Some(Outcome::RolledBack { .. })),
        "{actions:?}"
    );
    assert_eq!(connections_sent(&actions), [(5, old, id)]);
}

#[test]
fn held_connections_close_when_nobody_serves_after_the_verdict() {
    let mut sim = Sim::library(Mode::Exclusive);
    let (old, _, new, id) = exclusive_until_drain(&mut sim);
    handed_over(&mut sim, old, 4);
    // The incumbent dies, then the successor fails: nobody serves.
    let mut actions = sim.closed(old);
    actions.extend(sim.exited(old, ExitStatus::Signal(9)));
    actions.extend(sim.frame(
        new,
        id,
        Message::Failed {
            reason: AbortReason::SuccessorFailed {
                reason: "no".into(),
            },
        },
    ));
    actions.extend(sim.closed(new));
    actions.extend(sim.exited(new, ExitStatus::Code(1)));
    assert!(connections_sent(&actions).is_empty(), "{actions:?}");
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, LifecycleAction::DropConnections { batch: 4, .. })),
        "{actions:?}"
    );
}

#[test]
fn an_overlap_retiree_is_offered_a_budget_before_its_prepare_and_its_connections_go_to_the_live_one()
 {
    let mut sim = Sim::library(Mode::Overlap);
    let (first, _) = sim.handoff_with("daemon-a", CAP);
    let old_id = first.handoff_id;
    let (second, actions) = sim.handoff_with("daemon-b", CAP);
    let (old, new) = (first.generation, second.generation);
    let offer = position(&actions, |a| {
        matches!(a, LifecycleAction::OfferConnections { to, handoff_id, receiver }
            if *to == old && *handoff_id == old_id && *receiver == new)
    });
    let prepare = position(
        &actions,
        |a| matches!(a, LifecycleAction::Send { to, message: Message::Prepare { .. }, .. } if *to == old),
    );
    assert!(offer < prepare, "{actions:?}");
    let actions = handed_over(&mut sim, old, 9);
    assert_eq!(connections_sent(&actions), [(9, new, second.handoff_id)]);
}

#[test]
fn what_an_overlap_retiree_puts_in_its_drain_is_kept_and_passed_to_the_live_one() {
    const ITEMS: u64 = crate::wire::CAP_ITEMS;
    for (capabilities, passed) in [(ITEMS, true), (CAP, false)] {
        let mut sim = Sim::library(Mode::Overlap);
        let (first, _) = sim.handoff_with("daemon-a", ITEMS);
        let (second, _) = sim.handoff_with("daemon-b", capabilities);
        let (old, new, id) = (first.generation, second.generation, second.handoff_id);
        let actions = put_items(&mut sim, old, 3);
        let expected = if passed { vec![(new, id)] } else { vec![] };
        assert_eq!(kept_and_passed(&actions, old, 3), expected, "{actions:?}");
        // The live generation's own puts are only kept.
        let actions = put_items(&mut sim, new, 4);
        assert!(
            matches!(actions[..], [LifecycleAction::KeepItems { batch: 4, writer }] if writer == new),
            "{actions:?}"
        );
    }
}

#[test]
fn a_retirees_put_also_reaches_a_successor_begun_in_the_next_handoff() {
    const ITEMS: u64 = crate::wire::CAP_ITEMS;
    let mut sim = Sim::library(Mode::Overlap);
    let (first, _) = sim.handoff_with("daemon-a", ITEMS);
    let (second, _) = sim.handoff_with("daemon-b", ITEMS);
    // The next handoff, its successor warmed but not yet sent Begin.
    let third = sim.machine.begin_handoff().expect("a ticket");
    sim.spawned(third, build("daemon-c"));
    let (id, successor) = (third.handoff_id, third.generation);
    sim.frame(successor, 0, hello_with(ITEMS));
    let old = first.generation;
    let live = (second.generation, second.handoff_id);
    let actions = put_items(&mut sim, old, 5);
    assert_eq!(kept_and_passed(&actions, old, 5), [live], "{actions:?}");
    let actions = sim.frame(successor, id, Message::Warm);
    assert!(sent_to(&actions, successor, "Begin"), "{actions:?}");
    let actions = put_items(&mut sim, old, 6);
    let expected = [live, (successor, id)];
    assert_eq!(kept_and_passed(&actions, old, 6), expected, "{actions:?}");
}

fn put_items(sim: &mut Sim, generation: GenerationId, batch: u64) -> Vec<LifecycleAction> {
    sim.step(LifecycleInput::Items { generation, batch })
}

/// To whom `actions` pass batch `batch` of `writer` (empty: only kept).
fn kept_and_passed(
    actions: &[LifecycleAction],
    writer: GenerationId,
    batch: u64,
) -> Vec<(GenerationId, u64)> {
    match actions {
        [
            LifecycleAction::KeepAndPassItems {
                batch: b,
                writer: w,
                to,
            },
        ] if *b == batch && *w == writer => to.clone(),
        [
            LifecycleAction::KeepItems {
                batch: b,
                writer: w,
            },
        ] if *b == batch && *w == writer => Vec::new(),
        other => panic!("neither kept nor passed: {other:?}"),
    }
}

#[test]
fn no_budget_is_offered_unless_both_generations_take_connections() {
    for (first_caps, second_caps) in [(0, CAP), (CAP, 0), (0, 0)] {
        let mut sim = Sim::library(Mode::Overlap);
        sim.handoff_with("daemon-a", first_caps);
        let (_, actions) = sim.handoff_with("daemon-b", second_caps);
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, LifecycleAction::OfferConnections { .. })),
            "{first_caps} {second_caps}: {actions:?}"
        );
    }
}

#[test]
fn connections_from_a_generation_not_draining_go_back_to_it_and_from_nobody_are_closed() {
    let mut sim = Sim::library(Mode::Exclusive);
    let (first, _) = sim.handoff_with("daemon-a", CAP);
    let live = first.generation;
    let actions = handed_over(&mut sim, live, 3);
    assert_eq!(connections_sent(&actions), [(3, live, first.handoff_id)]);
    let actions = handed_over(&mut sim, live + 40, 4);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, LifecycleAction::DropConnections { batch: 4, .. })),
        "{actions:?}"
    );
}

#[test]
fn an_adopted_generation_takes_part_in_what_its_hello_sent_again_announces() {
    for (announced, offered) in [(Some(CAP), true), (Some(0), false), (None, false)] {
        let mut sim = Sim::adopted(Mode::Overlap);
        if let Some(capabilities) = announced {
            let actions = sim.frame(7, 9, hello_with(capabilities));
            assert!(
                !noted(&actions, |n| matches!(n, Note::UnexpectedMessage { .. })),
                "{actions:?}"
            );
        }
        let (next, actions) = sim.handoff_with("daemon-b", CAP);
        let offers = actions.iter().any(|a| {
            matches!(a, LifecycleAction::OfferConnections { to: 7, receiver, .. }
                if *receiver == next.generation)
        });
        assert_eq!(offers, offered, "{announced:?}: {actions:?}");
    }
}

#[test]
fn an_adopted_generations_hello_that_arrives_once_it_is_an_incumbent_is_no_protocol_error() {
    let mut sim = Sim::adopted(Mode::Exclusive);
    let ticket = sim.machine.begin_handoff().expect("a ticket");
    sim.spawned(ticket, build("daemon-b"));
    let (new, id) = (ticket.generation, ticket.handoff_id);
    sim.frame(new, 0, hello_with(CAP));
    let prepare = sim.frame(new, id, Message::Warm);
    assert!(sent_to(&prepare, 7, "Prepare"), "{prepare:?}");
    let late = sim.frame(7, 9, hello_with(CAP));
    assert!(
        !late.iter().any(|a| matches!(
            a,
            LifecycleAction::Signal { .. } | LifecycleAction::Finished(_)
        )),
        "{late:?}"
    );
    let sealing = sim.frame(7, id, drained());
    assert!(
        sent_to(&sealing, 7, "Seal"),
        "the handoff goes on: {sealing:?}"
    );
    assert!(
        sim.machine
            .live()
            .is_some_and(|live| live.takes_connections)
    );
}

// ---------------------------------------------------------- items (I21)

fn schemas(produces: &[(&str, u32)], accepts: &[(&str, u32, u32)]) -> Message {
    Message::Schemas {
        produces: produces
            .iter()
            .map(|(name, version)| crate::wire::Schema {
                name: (*name).into(),
                version: *version,
            })
            .collect(),
        accepts: accepts
            .iter()
            .map(|(name, min, max)| crate::wire::SchemaRange {
                name: (*name).into(),
                min: *min,
                max: *max,
            })
            .collect(),
    }
}

const ITEMS: u64 = crate::wire::CAP_ITEMS;

/// Generation 1 serving, its `Schemas` saying it writes kv version 3; the
/// next handoff spawned and its successor's Hello seen: (old, new, id).
fn incumbent_writing_kv3(sim: &mut Sim) -> (GenerationId, GenerationId, u64) {
    let ticket = sim.machine.begin_handoff().expect("a ticket");
    sim.spawned(ticket, build("daemon-a"));
    let (id, first) = (ticket.handoff_id, ticket.generation);
    sim.frame(first, 0, hello_with(ITEMS));
    sim.frame(first, id, schemas(&[("kv", 3)], &[("kv", 3, 3)]));
    sim.frame(first, id, Message::Warm);
    sim.frame(first, id, ready());
    assert!(committed(&sim.frame(first, id, Message::CommitAck)));
    let ticket = sim.machine.begin_handoff().expect("a ticket");
    sim.spawned(ticket, build("daemon-b"));
    sim.frame(ticket.generation, 0, hello_with(ITEMS));
    (first, ticket.generation, ticket.handoff_id)
}

#[test]
fn a_successor_that_cannot_read_the_incumbents_blob_fails_before_the_drain() {
    let mut sim = Sim::library(Mode::Exclusive);
    let (old, new, id) = incumbent_writing_kv3(&mut sim);
    let actions = sim.frame(new, id, schemas(&[], &[("kv", 1, 2)]));
    assert!(!sent_to(&actions, old, "Prepare"), "{actions:?}");
    assert!(sent_to(&actions, new, "Abort"), "{actions:?}");
    let mut after = sim.closed(new);
    after.extend(sim.exited(new, ExitStatus::Code(75)));
    let all: Vec<_> = actions.iter().chain(&after).collect();
    let rolled = all.iter().find_map(|a| match a {
        LifecycleAction::Finished(outcome) => Some(outcome.as_ref().clone()),
        _ => None,
    });
    assert!(
        matches!(
            &rolled,
            Some(Outcome::RolledBack {
                reason: AbortReason::SchemaRefused { detail },
                ..
            }) if detail.contains("kv version 3") && detail.contains("1..=2")
        ),
        "{rolled:?}"
    );
    assert_eq!(sim.machine.live().map(|live| live.id), Some(old));
}

#[test]
fn an_adopted_generations_schemas_sent_again_are_checked_at_the_next_handoff() {
    let mut sim = Sim::adopted(Mode::Exclusive);
    sim.frame(7, 9, hello_with(ITEMS));
    sim.frame(7, 9, schemas(&[("kv", 3)], &[("kv", 3, 3)]));
    let ticket = sim.machine.begin_handoff().expect("a ticket");
    sim.spawned(ticket, build("daemon-b"));
    let (new, id) = (ticket.generation, ticket.handoff_id);
    sim.frame(new, 0, hello_with(ITEMS));
    let actions = sim.frame(new, id, schemas(&[], &[("kv", 1, 2)]));
    assert!(sent_to(&actions, new, "Abort"), "{actions:?}");
    assert!(!sent_to(&actions, 7, "Prepare"), "{actions:?}");
}

#[test]
fn a_successor_that_reads_the_incumbents_blob_or_does_not_name_it_goes_on() {
    for accepts in [&[("kv", 2, 3)][..], &[("other", 1, 1)][..], &[][..]] {
        let mut sim = Sim::library(Mode::Exclusive);
        let (old, new, id) = incumbent_writing_kv3(&mut sim);
        let actions = sim.frame(new, id, schemas(&[], accepts));
        assert!(!sent_to(&actions, new, "Abort"), "{accepts:?}: {actions:?}");
        let actions = sim.frame(new, id, Message::Warm);
        assert!(
            sent_to(&actions, old, "Prepare"),
            "{accepts:?}: {actions:?}"
        );
    }
}

#[test]
fn the_store_goes_to_a_successor_before_its_begin_and_only_the_live_one_puts_items() {
    let mut sim = Sim::library(Mode::Exclusive);
    let (old, new, id) = incumbent_writing_kv3(&mut sim);
    let put =
        |sim: &mut Sim, generation, batch| sim.step(LifecycleInput::Items { generation, batch });
    assert!(matches!(
        put(&mut sim, old, 1)[..],
        [LifecycleAction::KeepItems {
            batch: 1,
            writer
        }] if writer == old
    ));
    // The successor's wait for its commit.
    assert!(put(&mut sim, new, 2).is_empty());
    sim.frame(new, id, Message::Warm);
    sim.frame(old, id, drained());
    let actions = sim.frame(old, id, Message::SealComplete(seal()));
    let items = position(
        &actions,
        |a| matches!(a, LifecycleAction::SendItems { to, handoff_id } if *to == new && *handoff_id == id),
    );
    let begin = position(
        &actions,
        |a| matches!(a, LifecycleAction::Send { to, message: Message::Begin { .. }, .. } if *to == new),
    );
    assert!(items < begin, "{actions:?}");
    sim.frame(new, id, ready());
    let actions = sim.frame(new, id, Message::CommitAck);
    assert!(committed(&actions), "{actions:?}");
    assert!(
        actions.iter().any(
            |a| matches!(a, LifecycleAction::KeepItems { batch: 2, writer } if *writer == new)
        ),
        "kept at the commit: {actions:?}"
    );
}

#[test]
fn a_rolled_back_successors_items_are_dropped() {
    let mut sim = Sim::library(Mode::Exclusive);
    let (_, new, id) = incumbent_writing_kv3(&mut sim);
    assert!(
        sim.step(LifecycleInput::Items {
            generation: new,
            batch: 7
        })
        .is_empty()
    );
    let failed = Message::Failed {
        reason: AbortReason::SuccessorFailed {
            reason: "no".into(),
        },
    };
    let mut actions = sim.frame(new, id, failed);
    actions.extend(sim.closed(new));
    actions.extend(sim.exited(new, ExitStatus::Code(1)));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, LifecycleAction::DropItems { batch: 7, .. })),
        "{actions:?}"
    );
}

// ------------------------------------------ every input in every state

/// A machine in each state: (the state, the harness, the generations it
/// knows: the live one and, while handing off, the successor).
fn in_every_state() -> Vec<(LifecycleState, Sim, Vec<GenerationId>)> {
    let starting = Sim::library(Mode::Exclusive);
    let live = serving(Mode::Exclusive);
    let mut handing_off = serving(Mode::Exclusive);
    let ticket = handing_off.machine.begin_handoff().expect("a ticket");
    handing_off.spawned(ticket, build("daemon-b"));
    let mut stopping = serving(Mode::Exclusive);
    stopping.step(LifecycleInput::Stop);
    let mut finished = Sim::library(Mode::Exclusive);
    finished.step(LifecycleInput::Stop);
    vec![
        (LifecycleState::Starting, starting, vec![]),
        (LifecycleState::Serving, live, vec![1]),
        (
            LifecycleState::HandingOff,
            handing_off,
            vec![1, ticket.generation],
        ),
        (LifecycleState::Stopping, stopping, vec![1]),
        (LifecycleState::Finished, finished, vec![]),
    ]
}

/// One input of every kind (and every message a generation may send),
/// from or about generation `at`.
fn every_input(at: GenerationId, now: Instant) -> Vec<LifecycleInput> {
    let mut inputs = vec![
        LifecycleInput::Spawned(Box::new(Spawned {
            ticket: Ticket {
                handoff_id: 50,
                generation: at,
                restart: false,
            },
            pid: 5000,
            build: build("daemon-z"),
            timeouts: Timeouts::default(),
            force: false,
            requested: now,
            spawn_begun: now,
        })),
        LifecycleInput::SpawnFailed {
            ticket: Ticket {
                handoff_id: 50,
                generation: at,
                restart: true,
            },
            reason: "refused".into(),
        },
        LifecycleInput::Closed { generation: at },
        LifecycleInput::Exited {
            generation: at,
            status: ExitStatus::Signal(9),
        },
        LifecycleInput::Notified {
            generation: at,
            pid: Some(5000),
            text: "READY=1".into(),
        },
        LifecycleInput::FaultInjected { generation: at },
        LifecycleInput::Connections {
            generation: at,
            batch: 1,
            count: 2,
        },
        LifecycleInput::Items {
            generation: at,
            batch: 2,
        },
        LifecycleInput::Stop,
        LifecycleInput::Tick,
    ];
    for purpose in [
        ProbePurpose::Handoff(2),
        ProbePurpose::ProbationSuspect(at),
        ProbePurpose::ProbationCleared(at),
        ProbePurpose::ProbationFailed(at),
        ProbePurpose::Resumed(at),
    ] {
        for result in [Ok(()), Err("503".to_owned())] {
            inputs.push(LifecycleInput::Probed { purpose, result });
        }
    }
    for message in crate::protocol::tests::every_message() {
        for handoff_id in [0, 1, 2] {
            inputs.push(LifecycleInput::Frame {
                generation: at,
                handoff_id,
                message: message.clone(),
            });
        }
    }
    inputs
}

/// Where the supervisor may go from `from` on one input: anywhere while
/// it runs (a verdict, a loss, a resumption, the restart policy, a stop),
/// never back once it stops.
fn may_follow(from: LifecycleState, to: LifecycleState) -> bool {
    use LifecycleState::*;
    match from {
        Starting | Serving | HandingOff => true,
        Stopping => matches!(to, Stopping | Finished),
        Finished => to == Finished,
    }
}

/// Whether `input` is news from or about generation `at` (not one of the
/// machine's own tickets, a stop or the time).
fn about(input: &LifecycleInput, at: GenerationId) -> bool {
    match input {
        LifecycleInput::Frame { generation, .. }
        | LifecycleInput::Closed { generation }
        | LifecycleInput::Exited { generation, .. }
        | LifecycleInput::Notified { generation, .. }
        | LifecycleInput::FaultInjected { generation }
        | LifecycleInput::Connections { generation, .. }
        | LifecycleInput::Items { generation, .. } => *generation == at,
        LifecycleInput::Probed { purpose, .. } => match purpose {
            ProbePurpose::Handoff(_) => false,
            ProbePurpose::ProbationSuspect(g)
            | ProbePurpose::ProbationCleared(g)
            | ProbePurpose::ProbationFailed(g)
            | ProbePurpose::Resumed(g) => *g == at,
        },
        LifecycleInput::Spawned(_)
        | LifecycleInput::SpawnFailed { .. }
        | LifecycleInput::Stop
        | LifecycleInput::Tick => false,
    }
}

/// Whether `action` touches a process or the world outside the machine.
fn acts(action: &LifecycleAction) -> bool {
    matches!(
        action,
        LifecycleAction::Send { .. }
            | LifecycleAction::SendListeners { .. }
            | LifecycleAction::Signal { .. }
            | LifecycleAction::StartProbe { .. }
            | LifecycleAction::Restart { .. }
            | LifecycleAction::SendConnections { .. }
            | LifecycleAction::SendItems { .. }
            | LifecycleAction::KeepAndPassItems { .. }
    )
}

#[test]
fn every_input_in_every_state_keeps_the_lifecycle_rules() {
    // A generation the machine never heard of.
    const STRANGER: GenerationId = 99;
    let mut cases = 0;
    for (state, sim, known) in in_every_state() {
        assert_eq!(sim.machine.state(), state);
        for at in known.iter().copied().chain([STRANGER]) {
            for (index, input) in every_input(at, sim.now).into_iter().enumerate() {
                let (_, mut fresh, _) = in_every_state()
                    .into_iter()
                    .find(|(s, _, _)| *s == state)
                    .expect("the state");
                let what = format!("{state} / generation {at} / input {index}: {input:?}");
                let stop = matches!(input, LifecycleInput::Stop);
                let stranger = at == STRANGER && about(&input, at);
                let actions = fresh.step(input);
                // A Tick after every input, as the driver feeds one: no
                // wakeup left in the past (checked by the harness).
                let actions: Vec<_> = actions
                    .into_iter()
                    .chain(fresh.step(LifecycleInput::Tick))
                    .collect();
                let now = fresh.machine.state();
                assert!(may_follow(state, now), "{what}: {state} -> {now}");
                if stop {
                    assert!(
                        matches!(now, LifecycleState::Stopping | LifecycleState::Finished),
                        "{what}: {now} after Stop"
                    );
                }
                if matches!(state, LifecycleState::Stopping | LifecycleState::Finished) {
                    assert!(
                        restart_of(&actions).is_none(),
                        "{what}: a restart while stopping"
                    );
                }
                if state == LifecycleState::Finished {
                    assert!(
                        !actions.iter().any(acts),
                        "{what}: acted when finished: {actions:?}"
                    );
                }
                if stranger {
                    assert_eq!(now, state, "{what}: a stranger moved the supervisor");
                    assert!(
                        !actions.iter().any(acts),
                        "{what}: acted for a stranger: {actions:?}"
                    );
                }
                cases += 1;
            }
        }
    }
    assert!(cases > 800, "only {cases} inputs stepped");
}
