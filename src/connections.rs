//! Client connections that travel between generations (I20).
//!
//! A draining generation hands each kept-alive connection that is idle at
//! a request boundary to its [`ConnectionPort`], with the bytes it read and
//! did not parse; the supervisor holds them until the handoff's verdict and
//! gives them to the generation that serves next, or back to this one when
//! the handoff rolls back. Every connection a port accepts comes out of
//! some port's [`ConnectionPort::arrivals`] again, or is closed only when
//! the process it was given to is gone: a connection is never dropped
//! because it could not travel.
//!
//! ```no_run
//! # fn serve(_: handoff::Connection) {}
//! let options = handoff::StartOptions::new("mydaemon 1.2.0").with_connections();
//! let generation = handoff::start(options)?;
//! if let Some(port) = generation.connections() {
//!     std::thread::spawn(move || {
//!         // From the predecessor, given back after a rollback, or not taken.
//!         for arrival in port.arrivals().iter() {
//!             serve(arrival.connection);
//!         }
//!     });
//! }
//! # Ok::<(), handoff::Error>(())
//! ```

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crossbeam_channel::{Receiver, Sender};

use crate::incumbent::AgentInput;

/// Unread bytes a connection may carry; one with more is not taken (it
/// drains where it is).
pub const MAX_UNREAD: usize = 64 * 1024;

/// One client connection between two requests.
#[derive(Debug)]
pub struct Connection {
    /// The connected socket.
    pub fd: OwnedFd,
    /// Bytes read from it and not parsed yet: the start of the next request.
    pub unread: Vec<u8>,
    /// The daemon's own label (which listener, which protocol).
    pub tag: String,
}

/// Why a connection arrived at this generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Handed over by another generation: serve it as if accepted here.
    Transferred,
    /// This generation handed it over and it could not leave after all
    /// (the supervisor went away, or nobody else serves and it came back
    /// during the drain): finish it here, the old way.
    NotTaken,
}

/// A connection this generation is to serve.
#[derive(Debug)]
pub struct Arrival {
    /// The connection.
    pub connection: Connection,
    /// Where it comes from.
    pub origin: Origin,
}

/// A generation's port for connections: hand over, and receive. Cheap to
/// clone; every clone is the same port.
#[derive(Debug, Clone)]
pub struct ConnectionPort {
    to_agent: Sender<AgentInput>,
    /// How many more the supervisor takes in this drain; set by the agent.
    budget: Arc<AtomicU32>,
    arrivals_tx: Sender<Arrival>,
    arrivals: Receiver<Arrival>,
}

impl ConnectionPort {
    pub(crate) fn new(to_agent: Sender<AgentInput>) -> ConnectionPort {
        let (arrivals_tx, arrivals) = crossbeam_channel::unbounded();
        ConnectionPort {
            to_agent,
            budget: Arc::new(AtomicU32::new(0)),
            arrivals_tx,
            arrivals,
        }
    }

    /// The agent's side: the budget it sets, and where it returns what
    /// could not travel.
    pub(crate) fn agent_side(&self) -> (Arc<AtomicU32>, Sender<Arrival>) {
        (Arc::clone(&self.budget), self.arrivals_tx.clone())
    }

    /// Hands `connection` to whichever generation serves next. Never
    /// blocks. Only a connection stopped at a request boundary that leaves
    /// it open may go: not one whose last exchange ended it (the client
    /// asked to close, the response said so), whose client waits for the
    /// end and would wait on the receiver for ever, nor one whose request
    /// body was not read to its end. `Err` gives it back at once when it
    /// cannot travel now (no drain with a budget in progress, the budget
    /// spent, more than [`MAX_UNREAD`] unread bytes): finish it here, the
    /// old way. After `Ok`, a connection that still failed to leave (the
    /// supervisor went away meanwhile) comes back through
    /// [`ConnectionPort::arrivals`] as [`Origin::NotTaken`].
    pub fn hand_over(&self, connection: Connection) -> Result<(), Connection> {
        if connection.unread.len() > MAX_UNREAD {
            return Err(connection);
        }
        let taken = self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            });
        if taken.is_err() {
            return Err(connection);
        }
        if let Err(refused) = self.to_agent.send(AgentInput::HandOver(connection))
            && let AgentInput::HandOver(connection) = refused.0
        {
            return Err(connection);
        }
        Ok(())
    }

    /// How many more connections the drain under way (or about to start)
    /// may hand over; 0 outside a drain the supervisor gave a budget to.
    pub fn budget(&self) -> u32 {
        self.budget.load(Ordering::SeqCst)
    }

    /// Connections this generation is to serve, in the order they came.
    pub fn arrivals(&self) -> &Receiver<Arrival> {
        &self.arrivals
    }
}

/// Returns a connection that could not travel to its daemon.
pub(crate) fn give_back(arrivals: &Sender<Arrival>, connection: Connection) {
    let _ = arrivals.send(Arrival {
        connection,
        origin: Origin::NotTaken,
    });
}
