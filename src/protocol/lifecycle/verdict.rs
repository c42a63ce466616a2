//! What a handoff's verdict changes, and the old generations after it:
//! who serves, who retires and how (the retire plan), probations, and
//! resumptions (I14).

use std::time::{Duration, Instant};

use super::{
    Failure, Generation, GenerationSignal, Handoff, Incumbent, KillTimer, LifecycleAction,
    LifecycleMachine, Note, Out, ProbePurpose, Retiree, State, SuccessorExit, retire_plan,
    transit::offer_connections,
};
use crate::protocol::outcome::{Outcome, ProbationRollback, ResumeCheck, SupervisorEvent};
use crate::protocol::{Phases, RetireAction, RetireInput, RetireMachine, Verdict};
use crate::wire::{AbortReason, Message};

/// A commit's verdict, as the handoff machine gave it.
struct Committed {
    phases: Phases,
    retire_incumbent: bool,
    incumbent_stopped: Option<String>,
}

/// A rollback's verdict, as the handoff machine gave it.
struct RolledBack {
    reason: AbortReason,
    phases: Phases,
    incumbent_serving: bool,
}

impl LifecycleMachine {
    /// The handoff in flight ended with `verdict`.
    pub(super) fn apply_verdict(&mut self, verdict: Verdict, now: Instant, out: &mut Out) {
        let (incumbent, mut handoff, stopping) =
            match std::mem::replace(&mut self.state, State::Finished) {
                State::HandingOff { incumbent, handoff } => (incumbent, handoff, false),
                State::Stopping {
                    live,
                    handoff: Some(handoff),
                    ..
                } => (
                    live.map_or(Incumbent::Absent, Incumbent::Serving),
                    handoff,
                    true,
                ),
                other => {
                    self.state = other;
                    return;
                }
            };
        let held = std::mem::take(&mut handoff.held);
        // An exit the handoff held back for the successor's EOF: the
        // verdict came first, so it goes to the successor's new role
        // (live, or a retiree owed its reap) once the verdict is applied,
        // never lost with the handoff.
        let held_exit = match handoff.exit {
            SuccessorExit::Held { status, .. } => Some((handoff.successor.id, status)),
            _ => None,
        };
        let committed = matches!(verdict, Verdict::Committed { .. });
        let items = std::mem::take(&mut handoff.items);
        super::transit::settle_items(items, handoff.successor.id, committed, out);
        let (outcome, serving) = match verdict {
            Verdict::Committed {
                phases,
                retire_incumbent,
                incumbent_stopped,
            } => {
                let committed = Committed {
                    phases,
                    retire_incumbent,
                    incumbent_stopped,
                };
                self.committed(committed, incumbent, *handoff, now, out)
            }
            Verdict::RolledBack {
                reason,
                phases,
                incumbent_serving,
            } => {
                let rollback = RolledBack {
                    reason,
                    phases,
                    incumbent_serving,
                };
                self.rolled_back(rollback, incumbent, *handoff, stopping, now, out)
            }
        };
        // What the incumbent handed over goes to whoever serves now (I20).
        super::transit::deliver_held(held, serving.as_ref(), out);
        self.settle_after_verdict(serving, stopping, now, out);
        self.last_handoff = Some(outcome.clone());
        out.announce(SupervisorEvent::HandoffFinished(Box::new(outcome.clone())));
        out.push(LifecycleAction::Finished(Box::new(outcome)));
        if let Some((successor, status)) = held_exit {
            self.on_exited(successor, status, now, out);
        }
    }

    /// A commit: the successor serves; every old generation still alive
    /// retires, to its reap (I8, I16).
    fn committed(
        &mut self,
        verdict: Committed,
        incumbent: Incumbent,
        handoff: Handoff,
        now: Instant,
        out: &mut Out,
    ) -> (Outcome, Option<Generation>) {
        let Committed {
            mut phases,
            retire_incumbent,
            incumbent_stopped,
        } = verdict;
        handoff.time(&mut phases, now);
        if let Some(why) = &incumbent_stopped {
            out.note(Note::IncumbentStopped { why: why.clone() });
        }
        let mut live = handoff.successor;
        live.handoff_id = handoff.id;
        live.serving_since = Some(now);
        self.last_committed = live.build.clone();
        let outcome = Outcome::Committed {
            handoff_id: handoff.id,
            old_pid: handoff.incumbent_pid,
            new_pid: live.pid,
            generation: live.id,
            phases,
            incumbent_stopped,
        };
        // Every old generation still alive retires, to its reap
        // (I8, I16): gracefully, or after the kill the handoff sent
        // when its connection broke.
        match incumbent {
            Incumbent::Serving(old) => {
                self.retire(old, handoff.id, retire_incumbent, Some(&live), now, out)
            }
            Incumbent::Resumed(old) => self.retire(old, handoff.id, true, Some(&live), now, out),
            Incumbent::Lost(_) => out.note(Note::RestartDropped),
            Incumbent::Absent => {}
        }
        (outcome, Some(live))
    }

    /// A rollback: the incumbent serves again, or it is lost (the restart
    /// policy, or a generation in probation, decides), or it could not
    /// resume and is being killed.
    fn rolled_back(
        &mut self,
        verdict: RolledBack,
        incumbent: Incumbent,
        handoff: Handoff,
        stopping: bool,
        now: Instant,
        out: &mut Out,
    ) -> (Outcome, Option<Generation>) {
        let RolledBack {
            reason,
            mut phases,
            incumbent_serving,
        } = verdict;
        handoff.time(&mut phases, now);
        let successor = handoff.successor;
        if matches!(handoff.exit, SuccessorExit::Reaped) {
            out.push(LifecycleAction::Forget {
                generation: successor.id,
            });
        } else {
            // Killed but not reaped yet (the abort gave up waiting):
            // its reap is still owed.
            self.retire(successor.clone(), handoff.id, false, None, now, out);
        }
        let (serving, lost) = match incumbent {
            Incumbent::Serving(live) if incumbent_serving => (Some(live), None),
            Incumbent::Resumed(live) => (Some(live), None),
            Incumbent::Serving(live) => {
                // It could not resume (or broke the protocol): it
                // is being killed, and its exit is a loss.
                out.signal(live.id, GenerationSignal::Kill);
                self.state = State::Serving {
                    condemned: Some(format!("could not resume: {reason}")),
                    live,
                };
                (None, None)
            }
            Incumbent::Lost(failure) => (None, Some(failure)),
            Incumbent::Absent => (
                None,
                Some(Failure {
                    generation: successor.id,
                    pid: successor.pid,
                    reason: format!("did not start: {reason}"),
                }),
            ),
        };
        let outcome = Outcome::RolledBack {
            handoff_id: handoff.id,
            reason,
            old_pid: serving.as_ref().map(|live| live.pid),
            failed_pid: Some(successor.pid),
            generation: serving.as_ref().map_or(0, |live| live.id),
            phases,
        };
        if let Some(failure) = lost {
            self.state = State::Starting { due: None };
            if !stopping {
                self.after_loss(failure, false, None, now, out);
            }
        }
        (outcome, serving)
    }

    /// Who serves after a verdict; a stop that waited for it goes on.
    fn settle_after_verdict(
        &mut self,
        serving: Option<Generation>,
        stopping: bool,
        now: Instant,
        out: &mut Out,
    ) {
        if stopping {
            let live = match std::mem::replace(&mut self.state, State::Finished) {
                State::Serving { live, .. } => Some(live),
                _ => serving,
            };
            self.state = State::Stopping {
                live,
                handoff: None,
                kill: KillTimer::AfterHandoff,
            };
            self.terminate_all(now, out);
        } else if let Some(live) = serving {
            self.state = State::Serving {
                live,
                condemned: None,
            };
        } else if matches!(self.state, State::Finished) {
            // Nothing decided above (not expected): nobody serves.
            self.state = State::Starting { due: None };
        }
    }

    /// Makes `old` a retiree: `graceful`, by the plan for this daemon and
    /// mode (with a probation when configured); otherwise it was killed
    /// already and only its reap (and SIGKILL again) remains. `live` is the
    /// generation that serves now, watched during a probation and given
    /// the connections the old one hands over (I20).
    fn retire(
        &mut self,
        mut old: Generation,
        handoff_id: u64,
        graceful: bool,
        live: Option<&Generation>,
        now: Instant,
        out: &mut Out,
    ) {
        let previous_id = old.handoff_id;
        // Overlap: the old one drains now (Prepare carries this id).
        old.handoff_id = handoff_id;
        let probation = self.config.timeouts.probation;
        let (machine, actions) = if graceful {
            retire_plan(&self.config, probation, now)
        } else {
            (
                RetireMachine::after_kill(self.config.timeouts, now),
                Vec::new(),
            )
        };
        out.push(LifecycleAction::Entered {
            generation: old.id,
            state: machine.state_name(),
        });
        let in_probation = machine.in_probation();
        let drains = actions
            .iter()
            .any(|action| matches!(action, RetireAction::Send(Message::Prepare { .. })));
        if drains && let Some(live) = live {
            offer_connections(&old, previous_id, live, out);
        }
        self.retirees.push(Retiree {
            generation: old,
            machine,
            status: None,
            resumed_for: None,
        });
        let index = self.retirees.len() - 1;
        self.perform_retire(index, actions, now, out);
        if in_probation {
            out.push(LifecycleAction::WatchProbation {
                generation: live.map_or(0, |live| live.id),
                until: now + probation,
            });
        }
    }

    pub(super) fn step_retiree(
        &mut self,
        index: usize,
        input: RetireInput,
        now: Instant,
        out: &mut Out,
    ) {
        let retiree = &mut self.retirees[index];
        let before = retiree.machine.state();
        let actions = retiree.machine.step(input, now);
        let after = retiree.machine.state();
        if before != after {
            out.push(LifecycleAction::Entered {
                generation: retiree.generation.id,
                state: after.as_str(),
            });
        }
        self.perform_retire(index, actions, now, out);
    }

    fn perform_retire(
        &mut self,
        index: usize,
        actions: Vec<RetireAction>,
        now: Instant,
        out: &mut Out,
    ) {
        for action in actions {
            let generation = &self.retirees[index].generation;
            let to = generation.id;
            match action {
                RetireAction::Send(message) => out.push(LifecycleAction::Send {
                    to,
                    handoff_id: generation.handoff_id,
                    message,
                }),
                RetireAction::Signal(signal) => out.signal(to, super::route::signal_of(signal)),
                RetireAction::SignalQuiesce => out.signal(to, GenerationSignal::Quiesce),
                RetireAction::SignalResume => out.signal(to, GenerationSignal::Resume),
                RetireAction::Resumed => {
                    let retiree = self.retirees.remove(index);
                    self.resumed(retiree, now, out);
                    return;
                }
                RetireAction::Gone => {
                    let retiree = self.retirees.remove(index);
                    self.retiree_gone(retiree, now, out);
                    return;
                }
            }
        }
    }

    /// A generation in probation serves again (I14): it is the live one if
    /// nobody serves; if another serves already (a commit or a restart won
    /// the race), there is no rollback after all and it retires.
    fn resumed(&mut self, retiree: Retiree, now: Instant, out: &mut Out) {
        let nobody = match &self.state {
            State::Starting { .. } => true,
            State::HandingOff { incumbent, .. } => {
                matches!(incumbent, Incumbent::Absent | Incumbent::Lost(_))
            }
            _ => false,
        };
        if !nobody {
            out.note(Note::ResumedTooLate {
                generation: retiree.generation.id,
            });
            let handoff_id = retiree.generation.handoff_id;
            self.retire_again(retiree.generation, handoff_id, now, out);
            return;
        }
        let mut generation = retiree.generation;
        generation.serving_since = Some(now);
        let failed = retiree.resumed_for.unwrap_or(Failure {
            generation: 0,
            pid: 0,
            reason: "the live generation failed".into(),
        });
        self.last_committed = generation.build.clone();
        let rollback = ProbationRollback {
            handoff_id: generation.handoff_id,
            generation: generation.id,
            pid: generation.pid,
            failed_generation: failed.generation,
            failed_pid: failed.pid,
            reason: failed.reason,
            resume_check: if self.config.probe {
                ResumeCheck::Probing
            } else {
                ResumeCheck::Unchecked
            },
        };
        self.last_probation_rollback = Some(rollback.clone());
        out.announce(SupervisorEvent::RolledBackInProbation(rollback));
        if self.config.probe {
            out.push(LifecycleAction::StartProbe {
                purpose: ProbePurpose::Resumed(generation.id),
                until: now + self.config.timeouts.probe,
            });
        }
        match &mut self.state {
            State::HandingOff { incumbent, .. } => *incumbent = Incumbent::Resumed(generation),
            _ => {
                self.state = State::Serving {
                    live: generation,
                    condemned: None,
                }
            }
        }
    }

    /// A retiree that resumed too late retires again, without a probation.
    fn retire_again(&mut self, old: Generation, handoff_id: u64, now: Instant, out: &mut Out) {
        let (machine, actions) = retire_plan(&self.config, Duration::ZERO, now);
        out.push(LifecycleAction::Entered {
            generation: old.id,
            state: machine.state_name(),
        });
        let mut old = old;
        old.handoff_id = handoff_id;
        self.retirees.push(Retiree {
            generation: old,
            machine,
            status: None,
            resumed_for: None,
        });
        let index = self.retirees.len() - 1;
        self.perform_retire(index, actions, now, out);
    }

    /// A retiree was reaped. If it was being resumed because nobody
    /// served, the loss stands: the next generation in probation, or the
    /// restart policy.
    fn retiree_gone(&mut self, retiree: Retiree, now: Instant, out: &mut Out) {
        let generation = retiree.generation;
        out.announce(SupervisorEvent::GenerationRetired {
            generation: generation.id,
            pid: generation.pid,
            status: retiree
                .status
                .unwrap_or(crate::protocol::outcome::ExitStatus::Unknown),
        });
        out.push(LifecycleAction::Forget {
            generation: generation.id,
        });
        if let Some(failure) = retiree.resumed_for
            && matches!(self.state, State::Starting { due: None })
        {
            self.after_loss(failure, false, None, now, out);
        }
    }
}
