//! The lifecycle as data, for a supervisor that replaces its own image:
//! everything but a handoff in flight (a re-exec waits for none to run),
//! its deadlines as absolute monotonic times ([`crate::protocol::mono`]);
//! and the machine of a supervisor that adopts an orphaned generation.

use std::time::Instant;

use super::{
    Build, Generation, GenerationId, LifecycleAction, LifecycleConfig, LifecycleMachine, Out,
    ProbePurpose, Refusal, Retiree, State,
};
use crate::protocol::outcome::{Outcome, ProbationRollback, ResumeCheck};

/// The state of a supervisor between handoffs.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct LifecycleSnapshot {
    state: StateSnapshot,
    retirees: Vec<Retiree>,
    failures: u32,
    last_committed: Build,
    next_generation: u64,
    next_handoff_id: u64,
    #[serde(with = "crate::protocol::mono")]
    next_heartbeat: Instant,
    last_handoff: Option<Outcome>,
    last_probation_rollback: Option<ProbationRollback>,
}

/// The states a snapshot can hold.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum StateSnapshot {
    Starting {
        #[serde(with = "crate::protocol::mono::option")]
        due: Option<Instant>,
    },
    Serving {
        live: Generation,
        condemned: Option<String>,
    },
}

impl LifecycleSnapshot {
    /// The generations it holds: the live one, then the retirees.
    pub fn generations(&self) -> impl Iterator<Item = &Generation> {
        let live = match &self.state {
            StateSnapshot::Serving { live, .. } => Some(live),
            StateSnapshot::Starting { .. } => None,
        };
        live.into_iter()
            .chain(self.retirees.iter().map(|r| &r.generation))
    }
}

impl LifecycleMachine {
    /// The machine as data. Refused while a handoff runs (`Busy`) and while
    /// stopping: neither can be carried over.
    pub fn snapshot(&self) -> Result<LifecycleSnapshot, Refusal> {
        let state = match &self.state {
            State::Starting { due } => StateSnapshot::Starting { due: *due },
            State::Serving { live, condemned } => StateSnapshot::Serving {
                live: live.clone(),
                condemned: condemned.clone(),
            },
            State::HandingOff { .. } => return Err(Refusal::Busy),
            State::Stopping { .. } | State::Finished => return Err(Refusal::Stopping),
        };
        let retirees = self
            .retirees
            .iter()
            .map(|r| Retiree {
                generation: r.generation.clone(),
                machine: r.machine.clone(),
                status: r.status,
                resumed_for: r.resumed_for.clone(),
            })
            .collect();
        Ok(LifecycleSnapshot {
            state,
            retirees,
            failures: self.failures,
            last_committed: self.last_committed.clone(),
            next_generation: self.next_generation,
            next_handoff_id: self.next_handoff_id,
            next_heartbeat: self.next_heartbeat,
            last_handoff: self.last_handoff.clone(),
            last_probation_rollback: self.last_probation_rollback.clone(),
        })
    }

    /// A machine from its snapshot, and the actions that restart what was
    /// running around it: the probation probe, a resumed generation's
    /// check.
    pub fn restore(
        config: LifecycleConfig,
        snapshot: LifecycleSnapshot,
        now: Instant,
    ) -> (LifecycleMachine, Vec<LifecycleAction>) {
        let state = match snapshot.state {
            StateSnapshot::Starting { due } => State::Starting { due },
            StateSnapshot::Serving { live, condemned } => State::Serving { live, condemned },
        };
        let machine = LifecycleMachine {
            config,
            state,
            retirees: snapshot.retirees,
            failures: snapshot.failures,
            last_committed: snapshot.last_committed,
            next_generation: snapshot.next_generation,
            next_handoff_id: snapshot.next_handoff_id,
            next_heartbeat: snapshot.next_heartbeat,
            last_handoff: snapshot.last_handoff,
            last_probation_rollback: snapshot.last_probation_rollback,
        };
        let mut out = Out::default();
        if let Some(live) = machine.live() {
            if let Some(until) = machine
                .retirees
                .iter()
                .filter_map(|r| r.machine.probation_until())
                .max()
                .filter(|until| *until > now)
            {
                out.push(LifecycleAction::WatchProbation {
                    generation: live.id,
                    until,
                });
            }
            let checking = machine
                .last_probation_rollback
                .as_ref()
                .is_some_and(|r| r.generation == live.id && r.resume_check == ResumeCheck::Probing);
            if checking {
                out.push(LifecycleAction::StartProbe {
                    purpose: ProbePurpose::Resumed(live.id),
                    until: now + machine.config.timeouts.probe,
                });
            }
        }
        (machine, out.actions)
    }
}

/// What a supervisor learns of an orphaned generation it adopts.
#[derive(Debug, Clone)]
pub struct Orphaned {
    /// Its number (the counter goes on from it).
    pub id: GenerationId,
    /// Its pid.
    pub pid: u32,
    /// What it runs (a restart runs it again).
    pub build: Build,
    /// The handoff id its messages carry.
    pub handoff_id: u64,
    /// The next handoff id the dead supervisor would have used.
    pub next_handoff_id: u64,
    /// The lowest number the next generation may take: past every
    /// generation the dead supervisor had started (a successor that died
    /// uncommitted, an old one it was retiring), so none is reused.
    pub next_generation: GenerationId,
}

impl LifecycleMachine {
    /// The machine of a supervisor that adopted `orphan`: serving it, the
    /// generation and handoff counters going on from the dead supervisor's.
    pub fn adopt(config: LifecycleConfig, orphan: Orphaned, now: Instant) -> LifecycleMachine {
        let mut machine = LifecycleMachine::new(config, now);
        machine.next_generation = orphan.next_generation.max(orphan.id + 1);
        machine.next_handoff_id = orphan.next_handoff_id.max(orphan.handoff_id + 1);
        machine.last_committed = orphan.build.clone();
        machine.state = State::Serving {
            live: Generation {
                id: orphan.id,
                pid: orphan.pid,
                build: orphan.build,
                started: now,
                serving_since: Some(now),
                handoff_id: orphan.handoff_id,
                // Until it sends its Hello again (an older build does
                // not: it then takes part in neither).
                takes_connections: false,
                takes_items: false,
                produces: Vec::new(),
                begun: true,
            },
            condemned: None,
        };
        machine
    }
}
