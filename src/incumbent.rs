//! The daemon side's threads: the agent that drives a generation's machine,
//! and the hook thread that runs the [`Drainable`] hooks.
//!
//! ```text
//!   reader thread --frames--> agent <--calls-- successor API (user thread)
//!                              |  ^
//!                         jobs v  | results
//!                           hook thread (owns the Drainable)
//! ```
//! The agent never blocks on a hook, so heartbeats keep flowing while a
//! drain or a seal takes its time (invariant I2). It owns the data-directory
//! lock and releases it only on the machine's `ReleaseLock` (I4).

use std::ops::ControlFlow;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use crate::channel::{self, Received};
use crate::connections::{self, Arrival, Connection, ConnectionPort, Origin};
use crate::drain::{DrainReport, Drainable, SealProgress};
use crate::error::{Error, Result};
use crate::fault;
use crate::protocol::{
    Ending, GenerationAction, GenerationInput, GenerationMachine, GenerationState, HookCall,
    HookOutcome, UserCall,
};
use crate::rendezvous::{self, Offer};
use crate::sys::DataDirLock;
use crate::timeouts::Timeouts;
use crate::wire::{
    CAP_CONNECTIONS, CAP_ITEMS, ConnectionEntry, FdEntry, ItemEntry, MAX_FDS_PER_FRAME,
    MAX_PAYLOAD, Message, Mode, Schema, SchemaRange, SealInfo, Snapshot,
};

/// Exit code of a successor whose handoff ended before its commit.
pub const EXIT_ABORTED: i32 = 75;

/// What the user-facing API hears from the agent.
#[derive(Debug)]
pub(crate) enum AgentEvent {
    FdsComplete {
        mode: Mode,
        has_incumbent: bool,
        generation: u64,
        fds: Vec<(FdEntry, OwnedFd)>,
    },
    Began(Option<SealInfo>),
    Committed,
    End(Ending),
}

/// What the agent hears.
pub(crate) enum AgentInput {
    Received(Received),
    /// The daemon hands a connection over (its port took it from the
    /// budget).
    HandOver(Connection),
    /// The daemon keeps an item for the next generations (I21).
    PutItem(ItemEntry, OwnedFd),
    /// `ItemStore::remove`: no longer kept (I21).
    RemoveItem(String),
    /// A supervisor offers to adopt this orphaned generation.
    Offer(Offer),
    User(UserCall),
    Job(JobResult),
    Progress(u64, u64),
    Daemon(Box<dyn ErasedDrainable>),
    Lock(DataDirLock, PathBuf),
}

pub(crate) enum Job {
    Hook(HookCall),
    Relock(PathBuf, Duration),
}

pub(crate) enum JobResult {
    Hook(HookOutcome),
    Relocked(Option<DataDirLock>),
}

/// The hooks with the daemon's error type erased to its text (it crosses a
/// process boundary as text anyway; the full chain is logged here).
pub(crate) trait ErasedDrainable: Send {
    fn drain(&mut self, deadline: Instant) -> std::result::Result<DrainReport, String>;
    fn seal(&mut self, progress: &mut SealProgress) -> std::result::Result<SealInfo, String>;
    fn resume(&mut self) -> std::result::Result<(), String>;
    fn snapshot(&self) -> Snapshot;
}

/// A hook's error as the text that crosses to the supervisor, logged here
/// with its whole chain.
fn hook_failure(
    hook: &'static str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> String {
    let error = Error::Hook {
        hook,
        source: Box::new(error),
    };
    let text = crate::error::chain(&error);
    tracing::warn!(hook, error = %text, "hook failed");
    text
}

impl<D: Drainable> ErasedDrainable for D {
    fn drain(&mut self, deadline: Instant) -> std::result::Result<DrainReport, String> {
        Drainable::drain(self, deadline).map_err(|e| hook_failure("drain", e))
    }
    fn seal(&mut self, progress: &mut SealProgress) -> std::result::Result<SealInfo, String> {
        Drainable::seal(self, progress).map_err(|e| hook_failure("seal", e))
    }
    fn resume(&mut self) -> std::result::Result<(), String> {
        Drainable::resume_after_abort(self).map_err(|e| hook_failure("resume_after_abort", e))
    }
    fn snapshot(&self) -> Snapshot {
        Drainable::snapshot(self)
    }
}

/// What the agent is started with.
pub(crate) struct AgentOptions {
    pub(crate) build_id: String,
    pub(crate) versions: crate::wire::VersionRange,
    pub(crate) timeouts: Timeouts,
    /// The Hello announces `CAP_CONNECTIONS`; the daemon gets the port.
    pub(crate) connections: bool,
    /// Written and read (the `Schemas` message).
    pub(crate) schemas: (Vec<Schema>, Vec<SchemaRange>),
    /// Where items kept for this generation go.
    pub(crate) items: crate::items::Received,
}

/// Starts the agent for a connected control socket. Sends Hello first.
pub(crate) fn start_agent(
    control: OwnedFd,
    options: AgentOptions,
) -> Result<(
    Sender<AgentInput>,
    Receiver<AgentEvent>,
    Option<ConnectionPort>,
)> {
    let AgentOptions {
        build_id,
        versions,
        timeouts,
        connections,
        schemas,
        items,
    } = options;
    let (sender, receiver) = channel::split(
        control,
        crate::error::Peer::Supervisor,
        timeouts.socket_write,
    )?;
    let (input_tx, input_rx) = crossbeam_channel::unbounded::<AgentInput>();
    let (event_tx, event_rx) = crossbeam_channel::unbounded::<AgentEvent>();
    let port = connections.then(|| ConnectionPort::new(input_tx.clone()));
    let capabilities = CAP_ITEMS | if connections { CAP_CONNECTIONS } else { 0 };
    let hello = GenerationMachine::hello(std::process::id(), build_id, versions, capabilities);
    sender.send(0, hello.clone(), &[])?;
    let now = Instant::now();
    let machine = GenerationMachine::new(&timeouts, now).with_schemas(schemas.0, schemas.1);
    let reader_tx = input_tx.clone();
    channel::spawn_reader("handoff-reader".into(), receiver, None, move |received| {
        reader_tx.send(AgentInput::Received(received)).is_ok()
    })?;
    let agent = Agent {
        machine,
        sender,
        timeouts,
        events: event_tx,
        inputs: input_tx.clone(),
        pending_fds: Vec::new(),
        kept_fds: Vec::new(),
        lock: None,
        data_dir: None,
        hooks: None,
        next_heartbeat: now + timeouts.heartbeat_interval,
        generation: 0,
        listener_copies: Vec::new(),
        rendezvous: std::env::var_os(rendezvous::ENV_RENDEZVOUS).map(PathBuf::from),
        rendezvous_open: false,
        offer: None,
        hello,
        transit: port.as_ref().map(Transit::new),
        items,
        pending_items: Vec::new(),
        store_copy: crate::items::StoreCopy::default(),
    };
    // The first point: Hello sent, nothing received yet.
    if crate::fault::reached(
        crate::fault::FaultRole::Successor,
        agent.machine.state_name(),
        0,
    )
    .is_err()
    {
        agent.sender.shutdown();
    }
    std::thread::Builder::new()
        .name("handoff-agent".into())
        .spawn(move || agent.run(input_rx))
        .map_err(|source| Error::io("starting the agent thread", source))?;
    Ok((input_tx, event_rx, port))
}

struct Agent {
    machine: GenerationMachine,
    sender: channel::Sender,
    timeouts: Timeouts,
    events: Sender<AgentEvent>,
    inputs: Sender<AgentInput>,
    /// Fds of the last Fds frame, until the machine says KeepFds.
    pending_fds: Vec<(FdEntry, OwnedFd)>,
    /// Fds kept so far, handed to the daemon at FdsComplete.
    kept_fds: Vec<(FdEntry, OwnedFd)>,
    lock: Option<DataDirLock>,
    data_dir: Option<PathBuf>,
    hooks: Option<Sender<Job>>,
    next_heartbeat: Instant,
    /// Learnt at HelloAck (0 before); targets fault points.
    generation: u64,
    /// Copies of the named fds, for a supervisor that adopts this
    /// generation once orphaned.
    listener_copies: Vec<(FdEntry, OwnedFd)>,
    /// Where to wait for that supervisor (`HANDOFF_RENDEZVOUS`).
    rendezvous: Option<PathBuf>,
    rendezvous_open: bool,
    /// The adoption being decided.
    offer: Option<Offer>,
    /// The Hello sent first, sent again to a supervisor that adopts it.
    hello: Message,
    /// Connections on their way in and out, when the daemon takes them.
    transit: Option<Transit>,
    /// Items kept for this generation, shared with its `ItemStore`.
    items: crate::items::Received,
    /// Fds of the last Items frame, until the machine says KeepItems.
    pending_items: Vec<(ItemEntry, OwnedFd)>,
    /// The supervisor's store as this generation knows it, for a
    /// supervisor that adopts it.
    store_copy: crate::items::StoreCopy,
}

/// The agent's side of the daemon's [`ConnectionPort`] (I20).
struct Transit {
    budget: Arc<AtomicU32>,
    arrivals: Sender<Arrival>,
    /// Taken from the daemon, not sent yet (batched per frame).
    outgoing: Vec<(ConnectionEntry, OwnedFd)>,
    outgoing_bytes: usize,
    /// Fds of the last Connections frame, until the machine says
    /// KeepConnections.
    incoming: Vec<(ConnectionEntry, OwnedFd)>,
}

impl Transit {
    fn new(port: &ConnectionPort) -> Transit {
        let (budget, arrivals) = port.agent_side();
        Transit {
            budget,
            arrivals,
            outgoing: Vec::new(),
            outgoing_bytes: 0,
            incoming: Vec::new(),
        }
    }

    /// Whether the batch should leave now rather than wait for more.
    fn batch_full(&self) -> bool {
        self.outgoing.len() >= usize::from(MAX_FDS_PER_FRAME)
            || self.outgoing_bytes >= MAX_PAYLOAD / 2
    }
}

impl Agent {
    fn run(mut self, inputs: Receiver<AgentInput>) {
        loop {
            let now = Instant::now();
            let heartbeat = self
                .machine
                .supervisor_present()
                .then_some(self.next_heartbeat);
            let wake = [heartbeat, self.machine.next_wakeup()]
                .into_iter()
                .flatten()
                .min();
            let timeout = wake.map(|at| crossbeam_channel::at(at.max(now)));
            let input = match timeout {
                Some(timer) => select! {
                    recv(inputs) -> input => input.ok(),
                    recv(timer) -> _ => None,
                },
                None => match inputs.recv() {
                    Ok(input) => Some(input),
                    Err(_) => return,
                },
            };
            let now = Instant::now();
            let machine_input = match input {
                None => GenerationInput::Tick,
                Some(input) => match self.absorb(input) {
                    Some(machine_input) => machine_input,
                    None => {
                        if inputs.is_empty() {
                            self.send_connections();
                        }
                        continue;
                    }
                },
            };
            // Connections taken before this input leave before anything it
            // makes the machine send (Drained comes after them, I20).
            self.send_connections();
            let before = self.machine.state();
            let actions = self.machine.step(machine_input, now);
            if self.perform(actions).is_break() {
                return self.wind_down(&inputs);
            }
            self.close_budget_after_drain();
            self.await_adoption();
            let after = self.machine.state();
            if before != after
                && fault::reached(
                    fault::generation_role(after),
                    after.as_str(),
                    self.generation,
                )
                .is_err()
            {
                tracing::warn!("injected error: dropping the control connection");
                self.sender.shutdown();
            }
            if self.machine.supervisor_present() && Instant::now() >= self.next_heartbeat {
                self.next_heartbeat = Instant::now() + self.timeouts.heartbeat_interval;
                let id = self.machine.handoff_id();
                if self.sender.send(id, Message::Heartbeat, &[]).is_err() {
                    let actions = self.machine.step(GenerationInput::Closed, Instant::now());
                    if self.perform(actions).is_break() {
                        return self.wind_down(&inputs);
                    }
                }
            }
        }
    }

    /// Keeps the fds a frame brought until the machine says what they are
    /// for (listeners, items, connections); others are dropped (closed).
    fn stash_fds(&mut self, message: &Message, fds: Vec<OwnedFd>) {
        match message {
            Message::Fds { entries } => {
                self.pending_fds = entries.iter().cloned().zip(fds).collect();
            }
            Message::Items { entries } => {
                self.pending_items = entries.iter().cloned().zip(fds).collect();
            }
            Message::Connections { entries } => match &mut self.transit {
                Some(transit) => {
                    transit.incoming = entries.iter().cloned().zip(fds).collect();
                }
                None => tracing::error!(
                    count = entries.len(),
                    "connections sent to a generation that does not take them; closed"
                ),
            },
            _ => {}
        }
    }

    /// Turns an agent input into a machine input, handling the ones that are
    /// the driver's own business.
    fn absorb(&mut self, input: AgentInput) -> Option<GenerationInput> {
        match input {
            AgentInput::Received(Received::Frame(mut frame)) => {
                self.stash_fds(&frame.envelope.message, std::mem::take(&mut frame.fds));
                Some(GenerationInput::Frame {
                    handoff_id: frame.envelope.handoff_id,
                    message: frame.envelope.message,
                })
            }
            AgentInput::Received(Received::Closed(error)) => {
                if let Some(error) = error {
                    tracing::warn!(error = %error, "control connection to the supervisor failed");
                }
                Some(GenerationInput::Closed)
            }
            AgentInput::Offer(offer) => {
                let generation = offer.generation;
                self.offer = Some(offer);
                Some(GenerationInput::AdoptionOffered { generation })
            }
            AgentInput::HandOver(connection) => {
                self.take_over(connection);
                None
            }
            AgentInput::PutItem(entry, fd) => {
                self.put_item(entry, fd);
                None
            }
            AgentInput::RemoveItem(name) => {
                self.remove_item(name);
                None
            }
            AgentInput::User(call) => Some(GenerationInput::User(call)),
            AgentInput::Job(JobResult::Hook(outcome)) => Some(GenerationInput::Hook(outcome)),
            AgentInput::Job(JobResult::Relocked(lock)) => match lock {
                Some(lock) => {
                    self.lock = Some(lock);
                    Some(GenerationInput::Hook(HookOutcome::Relocked))
                }
                None => Some(GenerationInput::Hook(HookOutcome::RelockTimedOut)),
            },
            AgentInput::Progress(done, total) => {
                let id = self.machine.handoff_id();
                if self.machine.supervisor_present() {
                    let _ = self
                        .sender
                        .send(id, Message::SealProgress { done, total }, &[]);
                }
                None
            }
            AgentInput::Daemon(daemon) => {
                match spawn_hook_thread(daemon, self.inputs.clone()) {
                    Ok(jobs) => self.hooks = Some(jobs),
                    Err(error) => tracing::error!(error = %error, "cannot start the hook thread"),
                }
                None
            }
            AgentInput::Lock(lock, dir) => {
                self.lock = Some(lock);
                self.data_dir = Some(dir);
                None
            }
        }
    }

    fn perform(&mut self, actions: Vec<GenerationAction>) -> ControlFlow<()> {
        for action in actions {
            match action {
                GenerationAction::Send(message) => {
                    let id = self.machine.handoff_id();
                    if let Err(error) = self.sender.send(id, message, &[]) {
                        tracing::warn!(error = %error, "send to the supervisor failed");
                        let more = self.machine.step(GenerationInput::Closed, Instant::now());
                        self.perform(more)?;
                    }
                }
                GenerationAction::KeepFds => self.kept_fds.append(&mut self.pending_fds),
                GenerationAction::KeepConnections => self.connections_arrived(),
                GenerationAction::KeepItems => {
                    let items = std::mem::take(&mut self.pending_items);
                    self.items.deliver(self.store_copy.receive(items));
                }
                GenerationAction::ConnectionBudget(connections) => {
                    if let Some(transit) = &self.transit {
                        transit.budget.store(connections, Ordering::SeqCst);
                    }
                }
                GenerationAction::FdsComplete {
                    mode,
                    has_incumbent,
                    generation,
                } => {
                    self.generation = generation;
                    let fds = std::mem::take(&mut self.kept_fds);
                    self.listener_copies = fds
                        .iter()
                        .filter_map(|(entry, fd)| Some((entry.clone(), fd.try_clone().ok()?)))
                        .collect();
                    let _ = self.events.send(AgentEvent::FdsComplete {
                        mode,
                        has_incumbent,
                        generation,
                        fds,
                    });
                }
                GenerationAction::Began(seal) => {
                    let _ = self.events.send(AgentEvent::Began(seal));
                }
                GenerationAction::Committed => {
                    let _ = self.events.send(AgentEvent::Committed);
                }
                GenerationAction::RunHook(call) => self.run_hook(call),
                GenerationAction::ReleaseLock => {
                    // I4: only after seal returned Ok (the machine's order).
                    if let Some(lock) = self.lock.take()
                        && let Err(error) = lock.release()
                    {
                        tracing::error!(error = %error, "releasing the data-directory lock failed");
                    }
                }
                GenerationAction::Relock => self.relock(),
                GenerationAction::CloseConnection(reason) => {
                    tracing::error!(%reason, "the supervisor broke the protocol; closing");
                    self.sender.shutdown();
                }
                GenerationAction::AcceptAdoption => self.adopted(),
                GenerationAction::RefuseAdoption(why) => {
                    tracing::warn!(%why, "adoption refused");
                    if let Some(offer) = self.offer.take() {
                        let _ = offer.verdict.send(false);
                    }
                }
                GenerationAction::End(ending) => return self.end(ending),
            }
        }
        ControlFlow::Continue(())
    }

    /// A connection the daemon's port took from the budget: it leaves with
    /// the next batch, unless no drain is in progress any more (then it
    /// goes back to the daemon).
    fn take_over(&mut self, connection: Connection) {
        let Some(transit) = &mut self.transit else {
            return;
        };
        let draining = matches!(
            self.machine.state(),
            GenerationState::Draining | GenerationState::DrainingAborted
        );
        if !draining || !self.machine.supervisor_present() {
            connections::give_back(&transit.arrivals, connection);
            return;
        }
        let Connection { fd, unread, tag } = connection;
        transit.outgoing_bytes += unread.len() + tag.len() + 8;
        transit.outgoing.push((ConnectionEntry { tag, unread }, fd));
        if transit.batch_full() {
            self.send_connections();
        }
    }

    /// Sends the connections taken so far in one frame; on a failed send
    /// they go back to the daemon (the supervisor is going away).
    fn send_connections(&mut self) {
        let Some(transit) = &mut self.transit else {
            return;
        };
        if transit.outgoing.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut transit.outgoing);
        transit.outgoing_bytes = 0;
        let entries = batch.iter().map(|(entry, _)| entry.clone()).collect();
        let fds: Vec<_> = batch.iter().map(|(_, fd)| fd.as_fd()).collect();
        let id = self.machine.handoff_id();
        if let Err(error) = self.sender.send(id, Message::Connections { entries }, &fds) {
            tracing::warn!(error = %error, count = batch.len(), "handing connections over failed; serving them here");
            for (entry, fd) in batch {
                let connection = Connection {
                    fd,
                    unread: entry.unread,
                    tag: entry.tag,
                };
                connections::give_back(&transit.arrivals, connection);
            }
        }
    }

    /// Sends an item to the supervisor's store; it leaves before anything
    /// the hook running now answers (I21).
    fn put_item(&mut self, entry: ItemEntry, fd: OwnedFd) {
        let name = entry.name.clone();
        if !self.machine.supervisor_present() {
            tracing::warn!(name, "no supervisor: the item is not kept");
            return;
        }
        if self.machine.version() < crate::wire::ITEMS_VERSION {
            tracing::warn!(
                name,
                "the supervisor speaks protocol version 1 and keeps no item"
            );
            return;
        }
        let id = self.machine.handoff_id();
        let items = Message::Items {
            entries: vec![entry.clone()],
        };
        match self.sender.send(id, items, &[fd.as_fd()]) {
            Ok(()) => self.store_copy.put(&entry, &fd),
            Err(error) => tracing::warn!(name, error = %error, "keeping an item failed"),
        }
    }

    /// Asks the supervisor to keep nothing more under `name`.
    fn remove_item(&mut self, name: String) {
        if !self.machine.supervisor_present() {
            tracing::warn!(name, "no supervisor: nothing to remove");
            return;
        }
        let version = self.machine.version();
        if version < crate::wire::ITEMS_REMOVED_VERSION {
            tracing::warn!(
                name,
                version,
                "the supervisor's protocol version cannot remove items: kept until replaced"
            );
            return;
        }
        let removed = Message::ItemsRemoved {
            names: vec![name.clone()],
        };
        match self.sender.send(self.machine.handoff_id(), removed, &[]) {
            Ok(()) => self.store_copy.forget(&name),
            Err(error) => tracing::warn!(name, error = %error, "removing an item failed"),
        }
    }

    /// A drain's budget ends with the drain.
    fn close_budget_after_drain(&mut self) {
        if let Some(transit) = &self.transit
            && !matches!(
                self.machine.state(),
                GenerationState::Serving
                    | GenerationState::Draining
                    | GenerationState::DrainingAborted
            )
        {
            transit.budget.store(0, Ordering::SeqCst);
        }
    }

    /// The daemon serves the connections of the frame just fed. A
    /// generation draining (its batch came back: nobody else serves) must
    /// not hand them over again: they arrive as not taken.
    fn connections_arrived(&mut self) {
        let draining = !matches!(
            self.machine.state(),
            GenerationState::Serving | GenerationState::Committing
        );
        let Some(transit) = &mut self.transit else {
            return;
        };
        let origin = if draining {
            Origin::NotTaken
        } else {
            Origin::Transferred
        };
        for (entry, fd) in transit.incoming.drain(..) {
            let connection = Connection {
                fd,
                unread: entry.unread,
                tag: entry.tag,
            };
            let _ = transit.arrivals.send(Arrival { connection, origin });
        }
    }

    /// The session is over: connections taken and not sent, and those the
    /// daemon handed over since, go back to it.
    fn wind_down(&mut self, inputs: &Receiver<AgentInput>) {
        let Some(transit) = &mut self.transit else {
            return;
        };
        let pending = inputs.try_iter().filter_map(|input| match input {
            AgentInput::HandOver(connection) => Some(connection),
            _ => None,
        });
        let outgoing = transit.outgoing.drain(..).map(|(entry, fd)| Connection {
            fd,
            unread: entry.unread,
            tag: entry.tag,
        });
        for connection in outgoing.chain(pending) {
            connections::give_back(&transit.arrivals, connection);
        }
    }

    /// Orphaned: opens the rendezvous once, if this generation has one.
    fn await_adoption(&mut self) {
        if self.rendezvous_open || !self.machine.is_orphaned() {
            return;
        }
        let Some(path) = self.rendezvous.clone() else {
            return;
        };
        let inputs = self.inputs.clone();
        match rendezvous::open(path, self.timeouts.socket_write, move |offer| {
            inputs.send(AgentInput::Offer(offer)).is_ok()
        }) {
            Ok(()) => self.rendezvous_open = true,
            Err(error) => {
                tracing::error!(error = %crate::error::chain(&error), "no rendezvous: this orphan cannot be adopted");
                self.rendezvous = None;
            }
        }
    }

    /// The offered connection is the control connection now: answer
    /// `Adopted` with the listeners, read it from here on.
    fn adopted(&mut self) {
        let Some(offer) = self.offer.take() else {
            return;
        };
        let entries = self
            .listener_copies
            .iter()
            .map(|(e, _)| e.clone())
            .collect();
        let fds: Vec<_> = self
            .listener_copies
            .iter()
            .map(|(_, fd)| fd.as_fd())
            .collect();
        let adopted = Message::Adopted {
            pid: std::process::id(),
            handoff_id: self.machine.handoff_id(),
            entries,
        };
        let id = self.machine.handoff_id();
        let sent = offer
            .sender
            .send(id, adopted, &fds)
            .and_then(|()| self.announce(&offer.sender));
        let reader_tx = self.inputs.clone();
        let reading = channel::spawn_reader("handoff-reader".into(), offer.receiver, None, {
            move |received| reader_tx.send(AgentInput::Received(received)).is_ok()
        });
        // Removed before anything else can happen on this thread: if this
        // supervisor dies too, the next rendezvous binds the same path.
        if let Some(path) = &self.rendezvous {
            let _ = std::fs::remove_file(path);
        }
        let _ = offer.verdict.send(true);
        self.rendezvous_open = false;
        self.sender = offer.sender;
        self.next_heartbeat = Instant::now();
        match sent.and(reading.map(drop)) {
            Ok(()) => tracing::info!(generation = self.generation, "adopted by a new supervisor"),
            Err(error) => {
                tracing::warn!(error = %error, "the adopting supervisor is gone");
                let actions = self.machine.step(GenerationInput::Closed, Instant::now());
                let _ = self.perform(actions);
            }
        }
    }

    /// What an adopting supervisor learns after `Adopted`: this
    /// generation's Hello and Schemas again (what it takes part in; a
    /// supervisor that does not know them notes them and goes on), then
    /// the item store as this generation knows it (its own died with the
    /// supervisor that kept it).
    fn announce(&self, sender: &channel::Sender) -> Result<()> {
        let id = self.machine.handoff_id();
        sender.send(id, self.hello.clone(), &[])?;
        if let Some(schemas) = self.machine.schemas_sent() {
            sender.send(id, schemas, &[])?;
        }
        if self.machine.version() >= crate::wire::ITEMS_VERSION {
            for (items, fds) in self.store_copy.messages() {
                sender.send(id, items, &fds)?;
            }
        }
        Ok(())
    }

    fn run_hook(&mut self, call: HookCall) {
        match &self.hooks {
            Some(jobs) => {
                if jobs.send(Job::Hook(call)).is_err() {
                    tracing::error!("the hook thread is gone");
                }
            }
            // No daemon registered yet: only a snapshot can be asked for.
            None => {
                let outcome = match call {
                    HookCall::Snapshot => HookOutcome::Snapshot(Snapshot::default()),
                    HookCall::Drain { .. } => {
                        HookOutcome::DrainFailed("no daemon registered".into())
                    }
                    HookCall::Seal => HookOutcome::SealFailed("no daemon registered".into()),
                    HookCall::Resume => HookOutcome::ResumeFailed("no daemon registered".into()),
                };
                let _ = self.inputs.send(AgentInput::Job(JobResult::Hook(outcome)));
            }
        }
    }

    fn relock(&mut self) {
        let result = match (&self.data_dir, &self.hooks) {
            (Some(dir), Some(jobs)) => jobs
                .send(Job::Relock(dir.clone(), self.timeouts.relock))
                .map_err(|_| ()),
            // A stateless daemon has no lock to take back.
            _ => Err(()),
        };
        if result.is_err() {
            let outcome = if self.data_dir.is_none() {
                HookOutcome::Relocked
            } else {
                HookOutcome::RelockTimedOut
            };
            let _ = self.inputs.send(AgentInput::Job(JobResult::Hook(outcome)));
        }
    }

    fn end(&mut self, ending: Ending) -> ControlFlow<()> {
        let before_commit = matches!(
            ending,
            Ending::Aborted(_) | Ending::SupervisorLost | Ending::Violation(_)
        );
        let _ = self.events.send(AgentEvent::End(ending.clone()));
        if before_commit {
            // I8: a successor whose handoff ended before its commit exits;
            // it never serves on its own.
            tracing::warn!(?ending, "handoff ended before the commit; exiting");
            std::process::exit(EXIT_ABORTED);
        }
        tracing::info!(?ending, "generation session ended");
        ControlFlow::Break(())
    }
}

fn spawn_hook_thread(
    mut daemon: Box<dyn ErasedDrainable>,
    results: Sender<AgentInput>,
) -> Result<Sender<Job>> {
    let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<Job>();
    std::thread::Builder::new()
        .name("handoff-hooks".into())
        .spawn(move || {
            for job in jobs_rx {
                let result = match job {
                    Job::Hook(call) => JobResult::Hook(run_call(daemon.as_mut(), call, &results)),
                    Job::Relock(dir, within) => {
                        JobResult::Relocked(match DataDirLock::acquire_within(&dir, within) {
                            Ok(lock) => lock,
                            Err(error) => {
                                tracing::error!(error = %error, "re-taking the data-directory lock failed");
                                None
                            }
                        })
                    }
                };
                if results.send(AgentInput::Job(result)).is_err() {
                    return;
                }
            }
        })
        .map_err(|source| Error::io("starting the hook thread", source))?;
    Ok(jobs_tx)
}

/// Runs one hook. A hook that panics is a hook that failed: the panic is
/// caught here, on the hook thread, so the generation's other threads keep
/// serving and the supervisor hears a failure instead of nothing (a hook
/// thread gone silent would wedge the handoff until its bounds).
fn run_call(
    daemon: &mut dyn ErasedDrainable,
    call: HookCall,
    results: &Sender<AgentInput>,
) -> HookOutcome {
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        call_hook(daemon, call, results)
    }));
    caught.unwrap_or_else(|panic| {
        let message = panic_message(panic.as_ref());
        let hook = match call {
            HookCall::Drain { .. } => "drain",
            HookCall::Seal => "seal",
            HookCall::Resume => "resume_after_abort",
            HookCall::Snapshot => "snapshot",
        };
        tracing::error!(hook, panic = %message, "hook panicked");
        let reason = format!("the {hook} hook panicked: {message}");
        match call {
            HookCall::Drain { .. } => HookOutcome::DrainFailed(reason),
            HookCall::Seal => HookOutcome::SealFailed(reason),
            HookCall::Resume => HookOutcome::ResumeFailed(reason),
            HookCall::Snapshot => HookOutcome::Snapshot(Snapshot::default()),
        }
    })
}

/// The text a panic carried (`panic!("...")` or a formatted message).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

fn call_hook(
    daemon: &mut dyn ErasedDrainable,
    call: HookCall,
    results: &Sender<AgentInput>,
) -> HookOutcome {
    match call {
        HookCall::Drain { deadline } => match daemon.drain(deadline) {
            Ok(report) => HookOutcome::Drained {
                open_connections: report.open_connections,
                accept_closed: report.accept_closed,
            },
            Err(reason) => HookOutcome::DrainFailed(reason),
        },
        HookCall::Seal => {
            let progress_tx = results.clone();
            let mut progress = SealProgress {
                report: Box::new(move |done, total| {
                    let _ = progress_tx.send(AgentInput::Progress(done, total));
                }),
            };
            match daemon.seal(&mut progress) {
                Ok(info) => HookOutcome::Sealed(info),
                Err(reason) => HookOutcome::SealFailed(reason),
            }
        }
        HookCall::Resume => match daemon.resume() {
            Ok(()) => HookOutcome::Resumed,
            Err(reason) => HookOutcome::ResumeFailed(reason),
        },
        HookCall::Snapshot => HookOutcome::Snapshot(daemon.snapshot()),
    }
}
