//! The fan-out of the supervisor's events: a log line each, systemd's
//! `STATUS=` (and `READY=1` for the first start and restarts; an upgrade's
//! `RELOADING=1`/`READY=1` come from the thread that carries it out, see
//! `systemd.rs`), and the history record.

use std::sync::{Arc, mpsc};

use handoff::supervisor::{
    EventStream, Outcome, ProbationRollback, SupervisorEvent, SupervisorHandle,
};

use crate::admin::wire::{AutomaticRollback, BinaryRecord, HandoffReport};
use crate::admin::{AdminState, Control};
use crate::orphan::RecordWriter;
use crate::reexec::state::EventsCarried;

/// The handoff in flight, as its start announced it.
struct Started {
    generation: u64,
    successor_pid: u32,
    incumbent_pid: Option<u32>,
    started_unix_ms: u64,
    /// What the successor runs (opened while it surely runs its binary),
    /// hashed on a thread of its own.
    binary: Hashing,
}

/// A binary being hashed off the event thread: the record, systemd's
/// notifications and the status lines behind the handoff's start do not
/// wait for a fresh build's hash (on idle CPU time: up to
/// `HASH_IDLE_BOUND` and more); only its history entry does.
type Hashing = Option<std::thread::JoinHandle<Option<BinaryRecord>>>;

fn hash_in_background(state: &Arc<AdminState>, pid: u32, program: &std::path::Path) -> Hashing {
    let image = state.identities.started(pid, program)?;
    let state = Arc::clone(state);
    let spawned = std::thread::Builder::new()
        .name("binary-hash".into())
        .spawn(move || state.identities.of_image_in_background(image));
    spawned
        .inspect_err(|error| tracing::warn!(pid, %error, "not hashing the successor's binary"))
        .ok()
}

/// What the fan-out remembers between events.
struct FanOut<'a> {
    state: &'a Arc<AdminState>,
    handle: &'a SupervisorHandle,
    /// The generation record a supervisor started after a crash adopts by.
    record: RecordWriter,
    handoff: Option<Started>,
    /// systemd heard READY=1 (the first start served).
    ready: bool,
    /// The last generation to end ended cleanly (the exit code of a
    /// supervisor that stops with it, under `--restart never`).
    clean: bool,
}

/// Runs until the supervisor's event stream ends, then tells the main
/// thread whether the last generation ended cleanly.
pub fn event_loop(
    events: &EventStream,
    handle: &SupervisorHandle,
    state: &Arc<AdminState>,
    control: &mpsc::Sender<Control>,
    carried: EventsCarried,
    record: RecordWriter,
) {
    let mut fan_out = FanOut {
        state,
        handle,
        record,
        handoff: None,
        ready: carried.ready,
        clean: carried.clean,
    };
    // The stream was subscribed before generation 1 spawned, so its commit
    // arrives as an event; the status check only guards a slow start.
    if !fan_out.ready
        && let Ok(status) = handle.status()
        && let Some(pid) = status.child_pid
    {
        fan_out.serving(&format!(
            "serving: generation {}, pid {pid}",
            status.generation
        ));
    }
    fan_out.update_record();
    while let Some(event) = events.next() {
        fan_out.on_event(event);
        fan_out.update_record();
    }
    let _ = control.send(Control::Ended {
        clean: fan_out.clean,
    });
}

impl FanOut<'_> {
    fn update_record(&mut self) {
        if let Ok(status) = self.handle.status() {
            self.record.update(&status);
        }
    }

    fn on_event(&mut self, event: SupervisorEvent) {
        self.state.metrics.event(&event);
        match event {
            SupervisorEvent::HandoffStarted {
                handoff_id,
                upgrade,
                generation,
                successor_pid,
                incumbent_pid,
                program,
            } => {
                tracing::info!(
                    handoff_id,
                    generation,
                    successor_pid,
                    incumbent_pid,
                    upgrade,
                    "handoff started"
                );
                self.record.in_flight(Some((generation, successor_pid)));
                self.update_record();
                self.handoff = Some(Started {
                    generation,
                    successor_pid,
                    incumbent_pid,
                    started_unix_ms: unix_ms(),
                    binary: hash_in_background(self.state, successor_pid, &program),
                });
            }
            SupervisorEvent::Phase { handoff_id, phase } => match &self.handoff {
                Some(started) => tracing::info!(
                    handoff_id,
                    generation = started.generation,
                    successor_pid = started.successor_pid,
                    incumbent_pid = started.incumbent_pid,
                    phase,
                    "handoff phase"
                ),
                None => tracing::info!(handoff_id, phase, "handoff phase"),
            },
            SupervisorEvent::HandoffFinished(outcome) => self.finished(&outcome),
            SupervisorEvent::GenerationExited {
                generation,
                pid,
                status,
                expected,
            } => {
                self.clean = status.is_clean();
                if expected {
                    tracing::info!(generation, pid, %status, "generation stopped");
                } else {
                    tracing::warn!(generation, pid, %status, "generation exited outside a handoff");
                    let line = format!("generation {generation} (pid {pid}) exited ({status})");
                    self.state.notify.status(&line);
                }
            }
            SupervisorEvent::GenerationRetired { pid, status, .. } => {
                tracing::info!(pid, %status, "old generation retired");
            }
            SupervisorEvent::RolledBackInProbation(rollback) => self.rolled_back(&rollback),
            SupervisorEvent::ResumeChecked { generation, check } => {
                tracing::info!(generation, ?check, "resumed generation checked");
            }
            SupervisorEvent::RestartFailed { reason } => {
                self.state
                    .notify
                    .status(&format!("restart failed, retrying: {reason}"));
            }
            SupervisorEvent::Stopping => tracing::info!("supervisor stopping"),
            SupervisorEvent::Frozen => self.frozen(),
        }
    }

    /// Every event before the freeze is recorded: the re-exec may carry
    /// the history and this memory now.
    fn frozen(&self) {
        let waiting = self
            .state
            .frozen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(waiting) = waiting {
            let _ = waiting.send(EventsCarried {
                ready: self.ready,
                clean: self.clean,
            });
        }
    }

    fn finished(&mut self, outcome: &Outcome) {
        let report = HandoffReport::from_outcome(outcome);
        // The record first: until it names the committed generation, a
        // supervisor crash leaves an adopter guessing.
        self.record.in_flight(None);
        self.update_record();
        let started = self.handoff.take();
        let upgrade = started.as_ref().is_some_and(|s| s.incumbent_pid.is_some());
        log_outcome(&report);
        // Under --restart never, a start that left nobody serving is how
        // the supervisor ends: not a clean exit.
        self.clean = report.serving;
        // An upgrade's RELOADING=1 and READY=1 are sent by the thread that
        // carried it out; here the first start and restarts, before the
        // history waits for the hash.
        if !upgrade {
            if report.serving && !self.ready {
                self.serving(&report.status_line());
            } else {
                self.state.notify.status(&report.status_line());
            }
        }
        let (started_unix_ms, hashing) =
            started.map_or((0, None), |s| (s.started_unix_ms, s.binary));
        let binary = hashing.and_then(|hashing| hashing.join().ok().flatten());
        self.state
            .recorder
            .record(report, started_unix_ms, upgrade, binary);
    }

    /// The first time a generation serves.
    fn serving(&mut self, status: &str) {
        self.state.notify.ready(status);
        tracing::info!("{status}");
        self.ready = true;
    }

    fn rolled_back(&mut self, rollback: &ProbationRollback) {
        tracing::warn!(
            handoff_id = rollback.handoff_id,
            generation = rollback.generation,
            pid = rollback.pid,
            failed_pid = rollback.failed_pid,
            reason = %rollback.reason,
            "automatic rollback: the new generation failed during probation; the previous one serves again"
        );
        let recorded = self.state.recorder.undo(
            rollback.failed_generation,
            rollback.handoff_id,
            AutomaticRollback {
                at_unix_ms: unix_ms(),
                resumed_generation: rollback.generation,
                resumed_pid: rollback.pid,
                failed_generation: rollback.failed_generation,
                failed_pid: rollback.failed_pid,
                reason: rollback.reason.clone(),
            },
        );
        if !recorded {
            tracing::warn!(
                generation = rollback.failed_generation,
                "no history entry for the commit that was rolled back"
            );
        }
        self.state.notify.status(&format!(
            "serving: generation {}, pid {} (automatic rollback in probation)",
            rollback.generation, rollback.pid
        ));
    }
}

/// The log line of a finished handoff.
fn log_outcome(report: &HandoffReport) {
    if report.committed {
        tracing::info!(
            handoff_id = report.handoff_id,
            generation = report.generation,
            old_pid = report.old_pid,
            new_pid = report.new_pid,
            total_ms = report.total_ms,
            "handoff committed"
        );
    } else {
        tracing::warn!(
            handoff_id = report.handoff_id,
            generation = report.generation,
            old_pid = report.old_pid,
            failed_pid = report.new_pid,
            reason = report.abort_reason.as_deref().unwrap_or(""),
            "handoff rolled back"
        );
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}
