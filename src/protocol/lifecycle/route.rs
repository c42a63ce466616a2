//! Where an event goes: the handoff in flight (its successor, and a
//! library incumbent, which takes part), the live generation outside a
//! handoff, or an old generation being retired.

use std::time::Instant;

use super::{
    GenerationId, GenerationSignal, HandoffKind, Incumbent, LifecycleAction, LifecycleMachine,
    Note, Out, ProbePurpose, State, SuccessorExit, failure_of,
};
use crate::protocol::outcome::{ExitStatus, ResumeCheck, SupervisorEvent};
use crate::protocol::{ForeignAction, ForeignInput, HandoffAction, HandoffInput, Side, Signal};
use crate::timeouts::{EXIT_AFTER_EOF, PROBE_ATTEMPT};
use crate::wire::{CAP_CONNECTIONS, CAP_ITEMS, Message};

/// A generation's part in the supervisor's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// The successor of the handoff in flight.
    Successor,
    /// The incumbent of a library handoff in flight (a protocol peer).
    Incumbent,
    /// The live generation, outside any handoff it takes part in.
    Live,
    /// An old generation being retired.
    Retiree(usize),
    /// None (gone already).
    Unknown,
}

impl LifecycleMachine {
    pub(super) fn role(&self, generation: GenerationId) -> Role {
        if let Some(handoff) = self.handoff() {
            if handoff.successor.id == generation {
                return Role::Successor;
            }
            if self.takes_part(generation) {
                return Role::Incumbent;
            }
        }
        if self.live().is_some_and(|live| live.id == generation) {
            return Role::Live;
        }
        self.retirees
            .iter()
            .position(|r| r.generation.id == generation)
            .map_or(Role::Unknown, Role::Retiree)
    }

    /// Whether `generation` is the incumbent of a library handoff in
    /// flight (a protocol peer of it), during a stop too.
    fn takes_part(&self, generation: GenerationId) -> bool {
        let Some(handoff) = self.handoff() else {
            return false;
        };
        matches!(handoff.machine, HandoffKind::Library(_))
            && self.live().is_some_and(|live| {
                live.id == generation && handoff.incumbent_pid == Some(live.pid)
            })
    }

    pub(super) fn on_frame(
        &mut self,
        generation: GenerationId,
        handoff_id: u64,
        message: Message,
        now: Instant,
        out: &mut Out,
    ) {
        if let Message::Schemas { produces, accepts } = message {
            return self.on_schemas(generation, handoff_id, (produces, &accepts), now, out);
        }
        // The live generation's Hello is an adopted one announcing itself
        // again (I20, I21), even once a handoff made it an incumbent: never
        // a step of that handoff.
        if let Message::Hello { capabilities, .. } = message
            && self.live().is_some_and(|live| live.id == generation)
        {
            return self.announced(generation, capabilities);
        }
        match self.role(generation) {
            Role::Successor | Role::Incumbent => {
                if let (Message::Hello { capabilities, .. }, Some(handoff)) =
                    (&message, self.handoff_mut())
                    && handoff.successor.id == generation
                {
                    handoff.successor.takes_connections = capabilities & CAP_CONNECTIONS != 0;
                    handoff.successor.takes_items = capabilities & CAP_ITEMS != 0;
                }
                let from = if self.role(generation) == Role::Successor {
                    Side::Successor
                } else {
                    Side::Incumbent
                };
                let input = HandoffInput::Frame {
                    from,
                    handoff_id,
                    message,
                };
                self.step_handoff(input, now, out);
            }
            Role::Live => match message {
                Message::Heartbeat | Message::SnapshotReport(_) => {}
                other => out.note(Note::UnexpectedMessage {
                    generation,
                    message: other.name(),
                }),
            },
            Role::Retiree(index) => self.step_retiree(
                index,
                crate::protocol::RetireInput::Frame(message),
                now,
                out,
            ),
            Role::Unknown => {}
        }
    }

    /// What the serving generation `generation` takes part in, from the
    /// Hello it sent again once adopted.
    fn announced(&mut self, generation: GenerationId, capabilities: u64) {
        if let Some(live) = self.live_mut().filter(|live| live.id == generation) {
            live.takes_connections = capabilities & CAP_CONNECTIONS != 0;
            live.takes_items = capabilities & CAP_ITEMS != 0;
        }
    }

    pub(super) fn on_closed(&mut self, generation: GenerationId, now: Instant, out: &mut Out) {
        match self.role(generation) {
            Role::Successor => {
                let input = HandoffInput::Closed {
                    side: Side::Successor,
                };
                self.step_handoff(input, now, out);
                self.successor_closed(now, out);
            }
            Role::Incumbent => {
                let input = HandoffInput::Closed {
                    side: Side::Incumbent,
                };
                self.step_handoff(input, now, out);
            }
            Role::Live => {
                // It cannot be handed off any more: stop it; its exit
                // follows the restart policy.
                if !matches!(self.state, State::Stopping { .. }) {
                    out.note(Note::ControlClosed { generation });
                    out.signal(generation, GenerationSignal::Stop);
                }
            }
            Role::Retiree(index) => {
                self.step_retiree(index, crate::protocol::RetireInput::Closed, now, out)
            }
            Role::Unknown => {}
        }
    }

    pub(super) fn on_exited(
        &mut self,
        generation: GenerationId,
        status: ExitStatus,
        now: Instant,
        out: &mut Out,
    ) {
        match self.role(generation) {
            Role::Successor => self.successor_exited(status, now, out),
            Role::Incumbent | Role::Live => self.live_gone(status, now, out),
            Role::Retiree(index) => {
                self.retirees[index].status = Some(status);
                self.step_retiree(index, crate::protocol::RetireInput::Exited, now, out);
            }
            Role::Unknown => {}
        }
    }

    /// The successor was reaped: a foreign machine hears it at once; a
    /// library one after the connection's EOF (I11).
    fn successor_exited(&mut self, status: ExitStatus, now: Instant, out: &mut Out) {
        let Some(handoff) = self.handoff_mut() else {
            return;
        };
        match (&handoff.machine, handoff.exit) {
            (HandoffKind::Foreign(_), _) => {
                handoff.exit = SuccessorExit::Reaped;
                let input = ForeignInput::Exited { status };
                self.step_foreign(input, now, out);
            }
            (HandoffKind::Library(_), SuccessorExit::Closed) => {
                handoff.exit = SuccessorExit::Reaped;
                let input = HandoffInput::Exited {
                    side: Side::Successor,
                    status,
                };
                self.step_handoff(input, now, out);
            }
            (HandoffKind::Library(_), _) => {
                // Its last frames may still be on their way.
                handoff.exit = SuccessorExit::Held {
                    status,
                    until: now + EXIT_AFTER_EOF,
                };
            }
        }
    }

    /// The successor's connection ended: an exit held back goes now.
    fn successor_closed(&mut self, now: Instant, out: &mut Out) {
        let Some(handoff) = self.handoff_mut() else {
            return;
        };
        match handoff.exit {
            SuccessorExit::Held { status, .. } => {
                handoff.exit = SuccessorExit::Reaped;
                let input = HandoffInput::Exited {
                    side: Side::Successor,
                    status,
                };
                self.step_handoff(input, now, out);
            }
            SuccessorExit::Running => handoff.exit = SuccessorExit::Closed,
            SuccessorExit::Closed | SuccessorExit::Reaped => {}
        }
    }

    /// The live generation (or the incumbent of the handoff in flight)
    /// was reaped.
    fn live_gone(&mut self, status: ExitStatus, now: Instant, out: &mut Out) {
        let part_of_it = self.live().is_some_and(|live| self.takes_part(live.id));
        self.live_left(status, now, out);
        if part_of_it {
            let input = HandoffInput::Exited {
                side: Side::Incumbent,
                status,
            };
            self.step_handoff(input, now, out);
        }
    }

    fn live_left(&mut self, status: ExitStatus, now: Instant, out: &mut Out) {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::HandingOff { incumbent, handoff } => {
                let (Incumbent::Serving(live) | Incumbent::Resumed(live)) = incumbent else {
                    self.state = State::HandingOff { incumbent, handoff };
                    return;
                };
                out.announce(SupervisorEvent::GenerationExited {
                    generation: live.id,
                    pid: live.pid,
                    status,
                    expected: false,
                });
                out.push(LifecycleAction::Forget {
                    generation: live.id,
                });
                out.note(Note::LiveLost {
                    generation: live.id,
                });
                let failure = failure_of(&live, format!("exited ({status})"));
                self.state = State::HandingOff {
                    incumbent: Incumbent::Lost(failure),
                    handoff,
                };
                // The verdict decides: the successor serves if it commits,
                // else a generation in probation resumes (kept resumable
                // until then) or the restart policy applies.
                let until = now + self.config.timeouts.handoff_deadline;
                self.hold_probations(until, now, out);
            }
            State::Stopping {
                live: Some(live),
                handoff,
                kill,
            } => {
                out.announce(SupervisorEvent::GenerationExited {
                    generation: live.id,
                    pid: live.pid,
                    status,
                    expected: true,
                });
                out.push(LifecycleAction::Forget {
                    generation: live.id,
                });
                self.state = State::Stopping {
                    live: None,
                    handoff,
                    kill,
                };
            }
            serving @ State::Serving { .. } => {
                self.state = serving;
                self.live_exited(status, now, out);
            }
            other => self.state = other,
        }
    }

    pub(super) fn on_notified(
        &mut self,
        generation: GenerationId,
        pid: Option<u32>,
        text: String,
        now: Instant,
        out: &mut Out,
    ) {
        let Some(handoff) = self.handoff() else {
            return;
        };
        if !matches!(handoff.machine, HandoffKind::Foreign(_)) || handoff.successor.id != generation
        {
            return;
        }
        let expected = handoff.successor.pid;
        if pid != Some(expected) {
            out.note(Note::ForeignSender {
                generation,
                sender: pid,
                expected,
            });
        }
        self.step_foreign(ForeignInput::Notified { pid, text }, now, out);
    }

    pub(super) fn on_fault(&mut self, generation: GenerationId, now: Instant, out: &mut Out) {
        match self.role(generation) {
            Role::Successor => self.cancel_handoff(now, out),
            Role::Retiree(_) => {
                // An injected error while retiring can only hurry it out.
                out.note(Note::FaultKill { generation });
                out.signal(generation, GenerationSignal::Kill);
            }
            Role::Incumbent | Role::Live | Role::Unknown => {}
        }
    }

    pub(super) fn on_probed(
        &mut self,
        purpose: ProbePurpose,
        result: Result<(), String>,
        now: Instant,
        out: &mut Out,
    ) {
        let serving = |machine: &Self, generation: GenerationId| matches!(&machine.state, State::Serving { live, .. } if live.id == generation);
        match (purpose, result) {
            (ProbePurpose::Handoff(id), result) => {
                let Some(handoff) = self.handoff() else {
                    return;
                };
                if handoff.id != id {
                    return; // stale: that handoff ended
                }
                match (&handoff.machine, result) {
                    (HandoffKind::Library(_), Ok(())) => {
                        self.step_handoff(HandoffInput::ProbePassed, now, out)
                    }
                    (HandoffKind::Library(_), Err(detail)) => {
                        self.step_handoff(HandoffInput::ProbeFailed { detail }, now, out)
                    }
                    (HandoffKind::Foreign(_), Ok(())) => {
                        self.step_foreign(ForeignInput::ProbePassed, now, out)
                    }
                    (HandoffKind::Foreign(_), Err(detail)) => {
                        self.step_foreign(ForeignInput::ProbeFailed { detail }, now, out)
                    }
                }
            }
            (ProbePurpose::ProbationSuspect(generation), result) => {
                if serving(self, generation) {
                    let detail = result.err().unwrap_or_default();
                    out.note(Note::ProbationHeld { generation, detail });
                    // The confirmation ends by then (each attempt is bounded).
                    let until = now + self.config.timeouts.probe + PROBE_ATTEMPT;
                    self.hold_probations(until, now, out);
                }
            }
            (ProbePurpose::ProbationCleared(generation), _) => {
                out.note(Note::ProbationCleared { generation })
            }
            (ProbePurpose::ProbationFailed(generation), Err(detail))
                if serving(self, generation) && self.any_in_probation() =>
            {
                self.condemn(generation, detail, now, out)
            }
            (ProbePurpose::ProbationFailed(generation), result) => {
                let detail = result.err().unwrap_or_default();
                out.note(Note::ProbeIgnored { generation, detail });
            }
            (ProbePurpose::Resumed(generation), result) => {
                self.resume_checked(generation, result, out)
            }
        }
    }

    /// The live generation failed its probation probe: SIGKILL (an
    /// unhealthy process may never exit on its own); its exit resumes the
    /// generation in probation (I14), held until then.
    fn condemn(&mut self, generation: GenerationId, detail: String, now: Instant, out: &mut Out) {
        if let State::Serving { condemned, .. } = &mut self.state {
            *condemned = Some(format!("health probe failed: {detail}"));
        }
        out.note(Note::ProbationFailed { generation, detail });
        out.signal(generation, GenerationSignal::Kill);
        let until = now + self.config.timeouts.kill_grace;
        self.hold_probations(until, now, out);
    }

    /// The check of a generation resumed by an automatic rollback (I14).
    fn resume_checked(
        &mut self,
        generation: GenerationId,
        result: Result<(), String>,
        out: &mut Out,
    ) {
        let check = match &result {
            Ok(()) => ResumeCheck::Passed,
            Err(detail) => ResumeCheck::Failed(detail.clone()),
        };
        if let Some(rollback) = &mut self.last_probation_rollback
            && rollback.generation == generation
        {
            rollback.resume_check = check.clone();
        }
        out.announce(SupervisorEvent::ResumeChecked { generation, check });
        // A failure kills it if it still serves alone; its exit goes the
        // way of any crash (the restart policy).
        let alone = matches!(&self.state, State::Serving { live, .. } if live.id == generation);
        let killed = result.is_err() && alone;
        if killed {
            out.signal(generation, GenerationSignal::Kill);
        }
        out.note(Note::ResumeChecked {
            generation,
            result,
            killed,
        });
    }

    // ------------------------------------------------- the handoff

    pub(super) fn tick_handoff(&mut self, now: Instant, out: &mut Out) {
        let Some(handoff) = self.handoff_mut() else {
            return;
        };
        if let SuccessorExit::Held { status, until } = handoff.exit
            && until <= now
        {
            // No EOF in time (another process holds the successor's end of
            // the socket): the exit goes on its own.
            handoff.exit = SuccessorExit::Reaped;
            let input = HandoffInput::Exited {
                side: Side::Successor,
                status,
            };
            self.step_handoff(input, now, out);
        }
        let Some(handoff) = self.handoff() else {
            return;
        };
        let due = |at: Option<Instant>| at.is_some_and(|at| at <= now);
        match &handoff.machine {
            HandoffKind::Library(machine) if due(machine.next_wakeup()) => {
                self.step_handoff(HandoffInput::Tick, now, out)
            }
            HandoffKind::Foreign(machine) if due(machine.next_wakeup()) => {
                self.step_foreign(ForeignInput::Tick, now, out)
            }
            _ => {}
        }
    }

    pub(super) fn cancel_handoff(&mut self, now: Instant, out: &mut Out) {
        match self
            .handoff()
            .map(|h| matches!(h.machine, HandoffKind::Library(_)))
        {
            Some(true) => self.step_handoff(HandoffInput::Cancel, now, out),
            Some(false) => self.step_foreign(ForeignInput::Cancel, now, out),
            None => {}
        }
    }

    pub(super) fn step_handoff(&mut self, input: HandoffInput, now: Instant, out: &mut Out) {
        let Some(handoff) = self.handoff_mut() else {
            return;
        };
        let HandoffKind::Library(machine) = &mut handoff.machine else {
            return;
        };
        let actions = machine.step(input, now);
        // Every state the step went through, not only the last one: a
        // fault point must not be skipped because two transitions shared a
        // step.
        let entered = machine.take_entered();
        let (id, successor) = (handoff.id, handoff.successor.id);
        self.perform_handoff(actions, now, out);
        for state in entered {
            out.announce(SupervisorEvent::Phase {
                handoff_id: id,
                phase: state.as_str(),
            });
            out.push(LifecycleAction::Entered {
                generation: successor,
                state: state.as_str(),
            });
        }
    }

    fn perform_handoff(&mut self, actions: Vec<HandoffAction>, now: Instant, out: &mut Out) {
        for action in actions {
            let Some(handoff) = self.handoff() else {
                return;
            };
            let (id, successor) = (handoff.id, handoff.successor.id);
            match action {
                HandoffAction::Send { to, message } => self.send_to_side(to, message, out),
                HandoffAction::SendListeners => out.push(LifecycleAction::SendListeners {
                    to: successor,
                    handoff_id: id,
                }),
                HandoffAction::Commit(_proof) => {
                    self.send_to_side(Side::Successor, Message::Commit, out)
                }
                HandoffAction::Kill { side, signal } => {
                    if let Some(to) = self.side_generation(side) {
                        out.signal(to, signal_of(signal));
                    }
                }
                HandoffAction::StartProbe { until } => out.push(LifecycleAction::StartProbe {
                    purpose: ProbePurpose::Handoff(id),
                    until,
                }),
                HandoffAction::Finish(verdict) => self.apply_verdict(verdict, now, out),
            }
        }
    }

    /// Sends on one side's connection, tagged with the id it carries now
    /// (HelloAck and Prepare make it adopt the handoff's, I9).
    fn send_to_side(&mut self, side: Side, message: Message, out: &mut Out) {
        let handoff_id = self.handoff().map_or(0, |h| h.id);
        // Who will serve what an incumbent told to drain hands over.
        let receiver = matches!(message, Message::Prepare { .. })
            .then(|| self.handoff().map(|h| h.successor.clone()))
            .flatten();
        let adopts = matches!(
            (&message, side),
            (Message::HelloAck { .. }, Side::Successor)
                | (Message::Prepare { .. }, Side::Incumbent)
        );
        let generation = match (side, &mut self.state) {
            (Side::Successor, State::HandingOff { handoff, .. })
            | (
                Side::Successor,
                State::Stopping {
                    handoff: Some(handoff),
                    ..
                },
            ) => &mut handoff.successor,
            (
                Side::Incumbent,
                State::HandingOff {
                    incumbent: Incumbent::Serving(live),
                    ..
                },
            )
            | (
                Side::Incumbent,
                State::Stopping {
                    live: Some(live), ..
                },
            ) => live,
            _ => return,
        };
        if matches!(message, Message::Begin { .. }) {
            generation.begun = true;
            if generation.takes_items {
                // The store first: the successor reads it once begun (I21).
                out.push(LifecycleAction::SendItems {
                    to: generation.id,
                    handoff_id: generation.handoff_id,
                });
            }
        }
        if adopts {
            if let Some(receiver) = &receiver {
                // Before Prepare, with the id the incumbent carries now.
                super::transit::offer_connections(generation, generation.handoff_id, receiver, out);
            }
            generation.handoff_id = handoff_id;
        }
        out.push(LifecycleAction::Send {
            to: generation.id,
            handoff_id: generation.handoff_id,
            message,
        });
    }

    fn side_generation(&self, side: Side) -> Option<GenerationId> {
        match side {
            Side::Successor => self.handoff().map(|h| h.successor.id),
            Side::Incumbent => match &self.state {
                State::HandingOff {
                    incumbent: Incumbent::Serving(live),
                    ..
                } => Some(live.id),
                State::Stopping { live, .. } => live.as_ref().map(|live| live.id),
                _ => None,
            },
        }
    }

    pub(super) fn step_foreign(&mut self, input: ForeignInput, now: Instant, out: &mut Out) {
        let Some(handoff) = self.handoff_mut() else {
            return;
        };
        let HandoffKind::Foreign(machine) = &mut handoff.machine else {
            return;
        };
        let before = machine.state();
        let actions = machine.step(input, now);
        let after = machine.state();
        let (id, successor) = (handoff.id, handoff.successor.id);
        self.perform_foreign(actions, now, out);
        if before != after {
            out.announce(SupervisorEvent::Phase {
                handoff_id: id,
                phase: after.as_str(),
            });
            out.push(LifecycleAction::Entered {
                generation: successor,
                state: after.as_str(),
            });
        }
    }

    pub(super) fn perform_foreign(
        &mut self,
        actions: Vec<ForeignAction>,
        now: Instant,
        out: &mut Out,
    ) {
        for action in actions {
            let Some(handoff) = self.handoff() else {
                return;
            };
            let (id, successor) = (handoff.id, handoff.successor.id);
            match action {
                ForeignAction::StartProbe { until } => out.push(LifecycleAction::StartProbe {
                    purpose: ProbePurpose::Handoff(id),
                    until,
                }),
                ForeignAction::Signal(signal) => out.signal(successor, signal_of(signal)),
                ForeignAction::Finish(verdict) => self.apply_verdict(verdict, now, out),
            }
        }
    }
}

/// A machine's signal, as the configuration maps it.
pub(super) fn signal_of(signal: Signal) -> GenerationSignal {
    match signal {
        Signal::Term => GenerationSignal::Stop,
        Signal::Kill => GenerationSignal::Kill,
    }
}
