//! What travels between generations: client connections (I20) and items
//! (I21). The driver holds the fds; this machine decides.
//!
//! A batch of connections the incumbent of a handoff hands over is held
//! until the verdict: the generation serving after it gets it (the
//! successor at a commit, the incumbent again after a rollback). A retiring
//! generation's batch goes to the live one at once. Anything else goes
//! back to its sender; only a batch nobody alive can serve is closed.
//!
//! Items go to the store from the live generation (an incumbent, a
//! retiree); a successor's are held until its verdict (kept if it
//! commits), and the whole store goes to every generation before its
//! `Begin`. What a retiree puts (in its drain) and the store keeps also
//! goes at once to the newer generations already begun. A successor whose
//! `Schemas` cannot read a blob schema the incumbent writes fails before
//! the incumbent is asked to drain.

use std::time::Instant;

use super::route::Role;
use super::{Generation, GenerationId, HandoffKind, LifecycleAction, LifecycleMachine, Out};
use crate::protocol::{HandoffInput, Side};
use crate::wire::{AbortReason, Message, Schema, SchemaRange};

/// A batch the driver holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Parcel {
    pub(super) batch: u64,
    /// How many connections (for tests and logs).
    #[allow(dead_code, reason = "read by the tests")]
    pub(super) count: u32,
}

/// Before `old` is told to drain: how many connections it may hand over,
/// when both it and `receiver` take them.
pub(super) fn offer_connections(
    old: &Generation,
    handoff_id: u64,
    receiver: &Generation,
    out: &mut Out,
) {
    if old.takes_connections && receiver.takes_connections {
        out.push(LifecycleAction::OfferConnections {
            to: old.id,
            handoff_id,
            receiver: receiver.id,
        });
    }
}

impl LifecycleMachine {
    pub(super) fn on_connections(&mut self, from: GenerationId, parcel: Parcel, out: &mut Out) {
        match self.role(from) {
            Role::Incumbent => match self.handoff_mut() {
                Some(handoff) => handoff.held.push(parcel),
                None => send_or_drop(parcel, None, out),
            },
            Role::Retiree(_) => {
                let to = self
                    .live()
                    .filter(|live| live.takes_connections && live.id != from)
                    .or_else(|| self.generation(from));
                send_or_drop(parcel, to, out);
            }
            Role::Live | Role::Successor => {
                // It was not told to drain: its own connections come back.
                let to = self.generation(from);
                send_or_drop(parcel, to, out);
            }
            Role::Unknown => send_or_drop(parcel, None, out),
        }
    }

    pub(super) fn on_items(&mut self, from: GenerationId, batch: u64, out: &mut Out) {
        match self.role(from) {
            Role::Live | Role::Incumbent => out.push(LifecycleAction::KeepItems {
                batch,
                writer: from,
            }),
            // Put in its drain: newer generations began before it.
            Role::Retiree(_) => {
                let to = self.begun_after(from);
                out.push(if to.is_empty() {
                    LifecycleAction::KeepItems {
                        batch,
                        writer: from,
                    }
                } else {
                    LifecycleAction::KeepAndPassItems {
                        batch,
                        writer: from,
                        to,
                    }
                });
            }
            Role::Successor => match self.handoff_mut() {
                Some(handoff) => handoff.items.push(batch),
                None => out.push(LifecycleAction::DropItems {
                    batch,
                    why: "their generation is gone",
                }),
            },
            Role::Unknown => out.push(LifecycleAction::DropItems {
                batch,
                why: "their generation is gone",
            }),
        }
    }

    /// A generation's `Schemas`: what it writes is kept; a successor that
    /// cannot read what the incumbent writes fails now, before the drain.
    pub(super) fn on_schemas(
        &mut self,
        from: GenerationId,
        handoff_id: u64,
        (produces, accepts): (Vec<Schema>, &[SchemaRange]),
        now: Instant,
        out: &mut Out,
    ) {
        let Some(handoff) = self.handoff_mut().filter(|h| h.successor.id == from) else {
            // The live generation's, sent again once adopted.
            if let Some(live) = self.live_mut().filter(|live| live.id == from) {
                live.produces = produces;
            }
            return;
        };
        handoff.successor.produces = produces;
        let library = matches!(handoff.machine, HandoffKind::Library(_));
        let written = self
            .live()
            .map(|live| live.produces.clone())
            .unwrap_or_default();
        let Some(detail) = unreadable(&written, accepts).filter(|_| library) else {
            return;
        };
        let message = Message::Failed {
            reason: AbortReason::SchemaRefused { detail },
        };
        let input = HandoffInput::Frame {
            from: Side::Successor,
            handoff_id,
            message,
        };
        self.step_handoff(input, now, out);
    }

    /// The generations newer than `from` that take items and were sent
    /// their `Begin` (the store) already: the live one, a successor.
    fn begun_after(&self, from: GenerationId) -> Vec<(GenerationId, u64)> {
        let successor = self.handoff().map(|handoff| &handoff.successor);
        self.live()
            .into_iter()
            .chain(successor)
            .filter(|g| g.takes_items && g.begun && g.id > from)
            .map(|g| (g.id, g.handoff_id))
            .collect()
    }

    /// A generation alive in any role, by id.
    fn generation(&self, id: GenerationId) -> Option<&Generation> {
        if let Some(live) = self.live().filter(|live| live.id == id) {
            return Some(live);
        }
        if let Some(handoff) = self.handoff().filter(|h| h.successor.id == id) {
            return Some(&handoff.successor);
        }
        self.retirees
            .iter()
            .map(|retiree| &retiree.generation)
            .find(|generation| generation.id == id)
    }
}

/// At a verdict: what the incumbent handed over goes to whoever serves
/// now, or is closed when nobody does.
pub(super) fn deliver_held(held: Vec<Parcel>, to: Option<&Generation>, out: &mut Out) {
    for parcel in held {
        send_or_drop(parcel, to, out);
    }
}

fn send_or_drop(parcel: Parcel, to: Option<&Generation>, out: &mut Out) {
    match to {
        Some(generation) => out.push(LifecycleAction::SendConnections {
            batch: parcel.batch,
            to: generation.id,
            handoff_id: generation.handoff_id,
        }),
        None => out.push(LifecycleAction::DropConnections {
            batch: parcel.batch,
            why: "no generation is left to serve them",
        }),
    }
}

/// The first schema in `written` that `accepts` names without its version.
/// A schema it does not name at all is not read by it: no refusal.
fn unreadable(written: &[Schema], accepts: &[SchemaRange]) -> Option<String> {
    written.iter().find_map(|schema| {
        let range = accepts.iter().find(|range| range.name == schema.name)?;
        (!range.accepts(schema)).then(|| {
            format!(
                "the incumbent writes {} version {}, the successor reads {}..={}",
                schema.name, schema.version, range.min, range.max
            )
        })
    })
}

/// At a verdict: what the successor put is kept if it committed.
pub(super) fn settle_items(
    batches: Vec<u64>,
    successor: GenerationId,
    committed: bool,
    out: &mut Out,
) {
    for batch in batches {
        out.push(if committed {
            LifecycleAction::KeepItems {
                batch,
                writer: successor,
            }
        } else {
            LifecycleAction::DropItems {
                batch,
                why: "their generation was rolled back",
            }
        });
    }
}
