//! Client connections in transit between generations (I20): where a batch
//! a generation handed over goes. The driver holds the fds; this machine
//! decides. A batch the incumbent of a handoff hands over is held until
//! the verdict: the generation serving after it gets it (the successor at
//! a commit, the incumbent again after a rollback). A retiring generation's
//! batch goes to the live one at once. Anything else goes back to its
//! sender; only a batch nobody alive can serve is closed.

use super::route::Role;
use super::{Generation, GenerationId, LifecycleAction, LifecycleMachine, Out};

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
