//! The supervisor as a library: holds the listeners, spawns generations,
//! and drives handoffs. `handoffctl` is a thin binary over this module.
//!
//! ```text
//!  SupervisorHandle --commands--> driver (one thread) --steps--> protocol::LifecycleMachine
//!                                   ^  performs actions            (handoff, retire machines)
//!           reader / waiter / notification / probe threads --events--'
//! ```
//!
//! The layers, one file each: `config` (what a supervisor is given),
//! `report` (what it reports), `driver` (the loop: routes events to the
//! lifecycle machine and performs its actions, no policy), `process` (a
//! generation's process handle), `spawn` (starting generations and their
//! reporting threads), `probes` (the health probe's threads), `fdstore`
//! (a foreign daemon's fd store: its fds and their I/O). Every decision
//! lives in [`crate::protocol::LifecycleMachine`] and, for the fd store,
//! [`crate::protocol::FdStore`]; the invariants cited are in
//! ARCHITECTURE.md.

mod adopt;
mod config;
mod driver;
mod fdstore;
mod freeze;
mod images;
mod items;
mod probes;
mod process;
mod report;
mod spawn;
mod transit;

use std::os::fd::OwnedFd;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

pub use self::config::{
    DEFAULT_FD_STORE_MAX, DaemonProtocol, NamedListener, QuiesceSignals, SupervisorConfig,
    UpgradeRequest, notify_home,
};
pub use self::report::{BlobReport, ItemReport, RetireeStatus, Status, SupervisorState};
pub use crate::protocol::{
    ExitStatus, Outcome, ProbationRollback, RestartPolicy, ResumeCheck, StoredGroup, StoredKind,
    SupervisorEvent,
};

pub use self::adopt::{Adoption, ForeignOrphan, Orphan, claim_foreign, start_time};
pub use self::freeze::{FROZEN_VERSION, Frozen};

use self::driver::{Command, Driver};
use crate::error::{Error, Result};

/// A running supervisor; dropping it does not stop it (use
/// [`SupervisorHandle::stop`] and [`Supervisor::join`]).
#[derive(Debug)]
pub struct Supervisor {
    handle: SupervisorHandle,
    thread: std::thread::JoinHandle<Result<()>>,
}

/// A cloneable handle to a running supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorHandle {
    commands: Sender<Command>,
}

impl Supervisor {
    /// Starts the loop thread and the first generation. Fails if the first
    /// generation cannot even be spawned.
    pub fn start(config: SupervisorConfig) -> Result<Supervisor> {
        Supervisor::start_with_events(config).map(|(supervisor, _)| supervisor)
    }

    /// Like [`Supervisor::start`], with an event stream subscribed before
    /// the first generation is spawned, so that it sees every event.
    pub fn start_with_events(config: SupervisorConfig) -> Result<(Supervisor, EventStream)> {
        config.timeouts.validate()?;
        let (subscriber, events) = crossbeam_channel::unbounded();
        let driver = Driver::new(config, vec![subscriber])?;
        let supervisor = Supervisor::launch(driver, Driver::start)?;
        Ok((supervisor, EventStream { events }))
    }

    /// Takes back a supervisor frozen by [`SupervisorHandle::freeze`] in an
    /// earlier image of this process: its state and its fds (in the order
    /// [`Frozen::fds`] gave them; they are taken, and closed if this
    /// fails), with the same configuration (its listeners the same
    /// sockets). Every generation must still be a child of this process.
    /// Nothing runs until [`Thawed::start`]; a failure touches nothing the
    /// generations see.
    pub fn thaw(config: SupervisorConfig, state: &[u8], fds: Vec<OwnedFd>) -> Result<Thawed> {
        config.timeouts.validate()?;
        let (subscriber, events) = crossbeam_channel::unbounded();
        let driver = Driver::thaw(config, vec![subscriber], state, fds)?;
        Ok(Thawed { driver, events })
    }

    /// Takes over an orphaned generation claimed with
    /// [`crate::rendezvous::claim`] or [`claim_foreign`]: the supervisor
    /// serves it as its live generation (the counters going on from the
    /// record), watching it through a pidfd. `config.listeners` must be
    /// the orphan's listeners ([`Orphan::take_listeners`]).
    pub fn adopt(
        config: SupervisorConfig,
        adoption: Adoption,
    ) -> Result<(Supervisor, EventStream)> {
        config.timeouts.validate()?;
        let (subscriber, events) = crossbeam_channel::unbounded();
        let driver = Driver::adopt(config, vec![subscriber], adoption)?;
        let supervisor = Supervisor::launch(driver, Driver::start_thawed)?;
        Ok((supervisor, EventStream { events }))
    }

    /// Runs `driver` on the loop thread, `first` before the loop.
    fn launch(driver: Driver, first: fn(&mut Driver) -> Result<()>) -> Result<Supervisor> {
        let (commands_tx, commands_rx) = crossbeam_channel::unbounded();
        let (started_tx, started_rx) = crossbeam_channel::bounded::<Result<()>>(1);
        let thread = std::thread::Builder::new()
            .name("handoff-supervisor".into())
            .spawn(move || {
                let mut driver = driver;
                let begun = first(&mut driver);
                let failed = begun.is_err();
                let _ = started_tx.send(begun);
                if failed {
                    return Ok(());
                }
                driver.run(&commands_rx)
            })
            .map_err(|source| Error::io("starting the supervisor thread", source))?;
        match started_rx.recv() {
            Ok(Ok(())) => Ok(Supervisor {
                handle: SupervisorHandle {
                    commands: commands_tx,
                },
                thread,
            }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => Err(Error::SessionOver),
        }
    }

    /// A handle for commands.
    pub fn handle(&self) -> SupervisorHandle {
        self.handle.clone()
    }

    /// Waits for the loop to end (after a stop, or when the generation
    /// exited under `RestartPolicy::Never`).
    pub fn join(self) -> Result<()> {
        self.thread.join().unwrap_or(Err(Error::SessionOver))
    }
}

impl SupervisorHandle {
    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.commands
            .send(make(tx))
            .map_err(|_| Error::SessionOver)?;
        rx.recv().map_err(|_| Error::SessionOver)
    }

    /// Runs one handoff to its end. `Err(Error::Busy)` while another is in
    /// flight.
    pub fn upgrade(&self, request: UpgradeRequest) -> Result<Outcome> {
        self.ask(|tx| Command::Upgrade(request, tx))?
    }

    /// Reports the supervisor.
    pub fn status(&self) -> Result<Status> {
        self.ask(Command::Status)
    }

    /// Stops gracefully: cancels a handoff in flight, sends SIGTERM to every
    /// generation and waits for them (SIGKILL after the stop drain). Returns
    /// when every exit was heard, or a kill grace after the SIGKILL without
    /// some (I7); [`Supervisor::join`] then waits for the loop, whose
    /// handles kill what is left.
    pub fn stop(&self) -> Result<()> {
        self.ask(Command::Stop)
    }

    /// Freezes the supervisor between handoffs, for an exec of this
    /// process that keeps [`Frozen::fds`] and gives them, with
    /// [`Frozen::state`], to [`Supervisor::thaw`] in the new image.
    /// `Err(Error::Busy)` while a handoff runs. Until the `Frozen` is
    /// dropped the supervisor does nothing: no frame is read, no timer
    /// fires, no command is answered (keep that short: generations count
    /// heartbeats). Dropped, it goes on.
    pub fn freeze(&self) -> Result<Frozen> {
        self.ask(Command::Freeze)?
    }

    /// Subscribes to events from now on.
    pub fn subscribe(&self) -> Result<EventStream> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.commands
            .send(Command::Subscribe(tx))
            .map_err(|_| Error::SessionOver)?;
        Ok(EventStream { events: rx })
    }
}

/// A thawed supervisor not started yet: see [`Supervisor::thaw`].
pub struct Thawed {
    driver: Driver,
    events: Receiver<SupervisorEvent>,
}

impl std::fmt::Debug for Thawed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Thawed")
            .field("generations", &self.generations())
            .finish_non_exhaustive()
    }
}

impl Thawed {
    /// The generations taken back: id and pid.
    pub fn generations(&self) -> Vec<(u64, u32)> {
        self.driver.generations()
    }

    /// Starts the loop and the generations' reporting threads, with an
    /// event stream that sees every event from here.
    pub fn start(self) -> Result<(Supervisor, EventStream)> {
        let supervisor = Supervisor::launch(self.driver, Driver::start_thawed)?;
        Ok((
            supervisor,
            EventStream {
                events: self.events,
            },
        ))
    }

    /// Gives up on this image: nothing taken back acts on its drop (no
    /// generation is killed, no socket shut down, no file removed), for an
    /// exec back to the image that froze the state, which holds the same
    /// sockets.
    pub fn abandon(self) {
        std::mem::forget(self);
    }
}

/// A stream of [`SupervisorEvent`]s.
#[derive(Debug)]
pub struct EventStream {
    events: Receiver<SupervisorEvent>,
}

impl EventStream {
    /// The next event, waiting at most `timeout`; `None` on timeout or when
    /// the supervisor is gone.
    pub fn next_timeout(&self, timeout: Duration) -> Option<SupervisorEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// The next event; `None` when the supervisor is gone.
    pub fn next(&self) -> Option<SupervisorEvent> {
        self.events.recv().ok()
    }
}
