//! The supervisor's one loop: it owns the processes, the reporting threads'
//! channels and the callers waiting for answers; it feeds what happens to
//! the lifecycle machine (`protocol::lifecycle`) and performs what the
//! machine decides. No decision is taken here.
//!
//! One thread, for two reasons (I11): children are spawned from it because
//! `PR_SET_PDEATHSIG` fires when the thread that forked a child exits, and
//! only it reaps, so a pid it signals cannot have been reused.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, select};

use super::config::{SupervisorConfig, UpgradeRequest};
use super::fdstore::Store;
use super::freeze::{self, Exporting, Frozen};
use super::images::Images;
use super::items::{Dropped, Items};
use super::probes::Probes;
use super::process::GenerationProcess;
use super::report::{RetireeStatus, Status, SupervisorState};
use super::spawn::{Event, Launch, Spawner};
use super::transit::Transit;
use crate::error::{Error, Result};
use crate::fault::{self, FaultRole};
use crate::protocol::{
    GenerationId, GenerationSignal, LifecycleAction, LifecycleInput, LifecycleMachine, Note,
    Outcome, Refusal, Spawned, SupervisorEvent, Ticket,
};
use crate::sys::Sig;
use crate::wire::{FdEntry, MAX_FDS_PER_FRAME, Message};

/// What a [`super::SupervisorHandle`] asks of the loop.
pub(crate) enum Command {
    Upgrade(UpgradeRequest, Sender<Result<Outcome>>),
    Status(Sender<Status>),
    Stop(Sender<()>),
    Subscribe(Sender<SupervisorEvent>),
    Freeze(Sender<Result<Frozen>>),
}

pub(crate) struct Driver {
    config: SupervisorConfig,
    machine: LifecycleMachine,
    processes: HashMap<GenerationId, GenerationProcess>,
    spawner: Spawner,
    events: Receiver<Event>,
    probes: Probes,
    /// The fd store (`FDSTORE=1`), shared by every generation.
    store: Store,
    /// Client connections between two generations (I20).
    transit: Transit,
    /// The item store (I21).
    items: Items,
    /// Gone generations' executables, closed later.
    images: Images<std::fs::File>,
    /// Callers waiting for a handoff's verdict, by handoff id.
    replies: HashMap<u64, Sender<Result<Outcome>>>,
    /// Callers waiting for the stop to end.
    stopped: Vec<Sender<()>>,
    subscribers: Vec<Sender<SupervisorEvent>>,
    started: Instant,
    /// What a thawed driver starts with its threads: the control
    /// connections' receivers and the actions the restored machine asked.
    thawed: Option<(
        HashMap<GenerationId, crate::channel::Receiver>,
        Vec<LifecycleAction>,
    )>,
}

impl Driver {
    pub(crate) fn new(
        config: SupervisorConfig,
        subscribers: Vec<Sender<SupervisorEvent>>,
    ) -> Result<Driver> {
        let now = Instant::now();
        let (events_tx, events) = crossbeam_channel::unbounded();
        let spawner = Spawner::new(events_tx, config.notify_home())?;
        let mut machine = LifecycleMachine::new(config.lifecycle(), now);
        machine.continue_handoff_ids(config.first_handoff_id);
        Ok(Driver {
            machine,
            probes: Probes::new(config.probe.clone(), config.timeouts),
            store: Store::new(config.protocol.fd_store_max()),
            transit: Transit::default(),
            items: Items::default(),
            images: Images::default(),
            config,
            processes: HashMap::new(),
            spawner,
            events,
            replies: HashMap::new(),
            stopped: Vec::new(),
            subscribers,
            started: now,
            thawed: None,
        })
    }

    /// A driver from a frozen state (see `freeze`), its threads not started
    /// yet ([`Driver::start_thawed`]).
    pub(crate) fn thaw(
        config: SupervisorConfig,
        subscribers: Vec<Sender<SupervisorEvent>>,
        state: &[u8],
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<Driver> {
        // Made first: once imported, nothing may fail and drop the
        // processes (their drop kills them).
        let mut driver = Driver::new(config, subscribers)?;
        let imported = freeze::import(state, fds, driver.config.timeouts.socket_write)?;
        let (machine, actions) =
            LifecycleMachine::restore(driver.config.lifecycle(), imported.machine, Instant::now());
        driver.machine = machine;
        driver.started = imported.started;
        driver.spawner.notify_dir = imported.notify_dir;
        driver.store = Store::restore(driver.config.protocol.fd_store_max(), imported.stored);
        driver.items = Items::restore(imported.items);
        let mut receivers = HashMap::new();
        for (process, receiver) in imported.processes {
            if let Some(receiver) = receiver {
                receivers.insert(process.id, receiver);
            }
            driver.processes.insert(process.id, process);
        }
        driver.thawed = Some((receivers, actions));
        Ok(driver)
    }

    /// A driver that adopted an orphaned generation, its threads not
    /// started yet ([`Driver::start_thawed`]).
    pub(crate) fn adopt(
        config: SupervisorConfig,
        subscribers: Vec<Sender<SupervisorEvent>>,
        adoption: super::adopt::Adoption,
    ) -> Result<Driver> {
        let mut driver = Driver::new(config, subscribers)?;
        let parts = adoption.orphan.into_parts()?;
        let orphaned = crate::protocol::Orphaned {
            id: adoption.generation,
            pid: parts.pid,
            build: adoption.build,
            handoff_id: parts.handoff_id,
            next_handoff_id: adoption.next_handoff_id,
            next_generation: adoption.next_generation,
        };
        let (pid, pidfd, control) = (parts.pid, parts.pidfd, parts.control);
        driver.machine =
            LifecycleMachine::adopt(driver.config.lifecycle(), orphaned, Instant::now());
        driver
            .machine
            .continue_handoff_ids(driver.config.first_handoff_id);
        let (sender, receiver) = match control {
            Some((sender, receiver)) => (Some(sender), Some(receiver)),
            None => (None, None),
        };
        let mut process =
            GenerationProcess::orphan(adoption.generation, pid, pidfd, sender).holding_image();
        if process.sender.is_none() {
            process.notify = driver.rebind_notify_socket(adoption.generation);
        }
        let receivers = receiver
            .map(|receiver| HashMap::from([(adoption.generation, receiver)]))
            .unwrap_or_default();
        driver.processes.insert(adoption.generation, process);
        driver.thawed = Some((receivers, Vec::new()));
        Ok(driver)
    }

    /// An adopted foreign generation's notification socket, bound again
    /// where its dead supervisor bound it (the orphan's `NOTIFY_SOCKET`, in
    /// the fixed notification directory both compute), so that its
    /// notifications reach this supervisor. Without that directory there
    /// is nothing to bind; a failure is said and leaves the generation
    /// without notifications.
    fn rebind_notify_socket(&mut self, id: GenerationId) -> Option<crate::sys::NotifySocket> {
        if !self.spawner.has_notify_home() {
            return None;
        }
        self.spawner
            .notify_socket(id)
            .inspect_err(|error| {
                tracing::warn!(generation = id, %error, "the adopted generation cannot notify");
            })
            .ok()
    }

    /// The generations a thawed driver holds: id and pid.
    pub(crate) fn generations(&self) -> Vec<(GenerationId, u32)> {
        let mut generations: Vec<_> = self.processes.values().map(|p| (p.id, p.pid)).collect();
        generations.sort_unstable();
        generations
    }

    /// Starts a thawed driver's threads (readers, waiters) and performs
    /// what the restored machine asked (probes).
    pub(crate) fn start_thawed(&mut self) -> Result<()> {
        let started = self.start_threads();
        if started.is_err() {
            // The generations serve on without this supervisor (an adopting
            // one, or the old image, takes them): their handles must not
            // kill them, nor the notification directory go, nor the fd
            // store's fds close (the old image takes them back by number).
            std::mem::forget(std::mem::take(&mut self.processes));
            std::mem::forget(self.spawner.notify_dir.take());
            std::mem::forget(std::mem::replace(&mut self.store, Store::new(0)));
        }
        started
    }

    fn start_threads(&mut self) -> Result<()> {
        let Some((receivers, actions)) = self.thawed.take() else {
            return Ok(());
        };
        self.spawner
            .resume_readers(receivers, self.processes.values())?;
        for process in self.processes.values() {
            if process.exit.is_none() {
                self.spawner.watch(process)?;
            }
        }
        let mut queue = VecDeque::new();
        for action in actions {
            self.perform(action, &mut queue);
        }
        while let Some(input) = queue.pop_front() {
            self.feed(input);
        }
        Ok(())
    }

    /// Starts generation 1 (a handoff with no incumbent); the error if it
    /// cannot even be spawned.
    pub(crate) fn start(&mut self) -> Result<()> {
        self.upgrade(UpgradeRequest::default()).map(drop)
    }

    /// Runs until everything stopped.
    pub(crate) fn run(mut self, commands: &Receiver<Command>) -> Result<()> {
        let events = self.events.clone();
        let verdicts = self.probes.receiver.clone();
        while !self.machine.is_finished() {
            let wakeup = [self.machine.next_wakeup(), self.images.wakeup(self.quiet())];
            let timer = match wakeup.into_iter().flatten().min() {
                Some(at) => crossbeam_channel::at(at.max(Instant::now())),
                None => crossbeam_channel::never(),
            };
            select! {
                recv(commands) -> command => match command {
                    Ok(Command::Freeze(reply)) => self.freeze(&reply, commands),
                    Ok(command) => self.on_command(command),
                    // Every handle dropped: nobody can reach us any more.
                    Err(_) => self.feed(LifecycleInput::Stop),
                },
                recv(events) -> event => {
                    if let Ok(event) = event {
                        self.on_event(event);
                    }
                },
                recv(verdicts) -> verdict => {
                    if let Ok(verdict) = verdict {
                        self.feed(LifecycleInput::Probed {
                            purpose: verdict.purpose,
                            result: verdict.result,
                        });
                    }
                },
                recv(timer) -> _ => {},
            }
            self.feed(LifecycleInput::Tick);
            self.release_images();
        }
        Ok(())
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Upgrade(request, reply) => match self.upgrade(request) {
                Ok(handoff_id) => {
                    self.replies.insert(handoff_id, reply);
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Command::Status(reply) => {
                self.store.sweep();
                let _ = reply.send(self.status());
            }
            Command::Stop(reply) => {
                self.stopped.push(reply);
                if self.machine.is_finished() {
                    self.answer_stopped();
                } else {
                    self.feed(LifecycleInput::Stop);
                }
            }
            Command::Subscribe(subscriber) => self.subscribers.push(subscriber),
            // Taken by the loop, which hands `freeze` the commands.
            Command::Freeze(reply) => {
                let _ = reply.send(Err(Error::Busy));
            }
        }
    }

    /// Pauses the readers, takes in what they delivered, and hands out the
    /// state; then waits, doing nothing, until the caller's exec replaced
    /// this process or it dropped the [`Frozen`] (then goes on).
    fn freeze(&mut self, reply: &Sender<Result<Frozen>>, commands: &Receiver<Command>) {
        let receivers = match self.spawner.pause_readers() {
            Ok(receivers) => receivers,
            Err(error) => {
                let _ = reply.send(Err(error));
                return;
            }
        };
        while let Ok(event) = self.events.try_recv() {
            self.on_event(event);
        }
        self.store.sweep();
        let (resume, resumed) = crossbeam_channel::bounded::<()>(0);
        let frozen = freeze::export(
            Exporting {
                machine: &self.machine,
                processes: &self.processes,
                receivers: &receivers,
                stored: &self.store,
                items: &self.items,
                notify_dir: self
                    .spawner
                    .notify_dir
                    .as_ref()
                    .map(|d| d.path().to_owned()),
                started: self.started,
            },
            resume,
        );
        let handed = frozen.is_ok();
        if handed {
            self.announce(SupervisorEvent::Frozen);
        }
        if reply.send(frozen).is_ok() && handed {
            tracing::info!("frozen: the supervisor's state is handed out");
            let waiting = self.frozen_until(&resumed, commands);
            tracing::info!("thawed in place: the supervisor goes on");
            for command in waiting {
                self.on_command(command);
            }
        }
        if let Err(error) = self
            .spawner
            .resume_readers(receivers, self.processes.values())
        {
            tracing::error!(error = %crate::error::chain(&error), "restarting the readers failed");
        }
    }

    /// Frozen until `resumed` ends (the caller dropped its `Frozen`; or
    /// never: the process was replaced). Status is answered meanwhile, from
    /// the frozen state (the event thread asks it after each event and
    /// must reach the freeze's own event); every other command waits and
    /// is returned in order.
    fn frozen_until(&self, resumed: &Receiver<()>, commands: &Receiver<Command>) -> Vec<Command> {
        let mut waiting = Vec::new();
        loop {
            select! {
                recv(resumed) -> _ => return waiting,
                recv(commands) -> command => match command {
                    Ok(Command::Status(reply)) => {
                        let _ = reply.send(self.status());
                    }
                    Ok(command) => waiting.push(command),
                    Err(_) => {
                        let _ = resumed.recv();
                        return waiting;
                    }
                },
            }
        }
    }

    /// Starts a handoff to what `request` asks for; its id.
    fn upgrade(&mut self, request: UpgradeRequest) -> Result<u64> {
        let requested = request.requested.unwrap_or_else(Instant::now);
        let ticket = self
            .machine
            .begin_handoff()
            .map_err(|refusal| match refusal {
                Refusal::Busy => Error::Busy,
                Refusal::Stopping => Error::SessionOver,
            })?;
        let launch = Launch::upgrade(&self.config, request)?;
        let spawned = self.launch(ticket, &launch, requested)?;
        self.feed(LifecycleInput::Spawned(Box::new(spawned)));
        Ok(ticket.handoff_id)
    }

    fn launch(&mut self, ticket: Ticket, launch: &Launch, requested: Instant) -> Result<Spawned> {
        // What a generation gets is never an fd whose peer is gone.
        self.store.sweep();
        let spawn_begun = Instant::now();
        let stored = self.store.handed_out();
        let process = self
            .spawner
            .spawn(&self.config, ticket.generation, launch, &stored)?;
        let pid = process.pid;
        self.processes.insert(ticket.generation, process);
        Ok(Spawned {
            ticket,
            pid,
            build: launch.build.clone(),
            timeouts: launch.timeouts,
            force: launch.force,
            requested,
            spawn_begun,
        })
    }

    fn on_event(&mut self, event: Event) {
        let input = match event {
            Event::Frame { generation, frame } => match frame.envelope.message {
                // The fds stay here; the machine decides where they go.
                Message::Connections { entries } => {
                    let (batch, count) = self.transit.hold(generation, entries, frame.fds);
                    LifecycleInput::Connections {
                        generation,
                        batch,
                        count,
                    }
                }
                Message::Items { entries } => LifecycleInput::Items {
                    generation,
                    batch: self.items.hold(entries, frame.fds),
                },
                Message::ItemsRemoved { names } => LifecycleInput::Items {
                    generation,
                    batch: self.items.hold_removal(names),
                },
                message => LifecycleInput::Frame {
                    generation,
                    handoff_id: frame.envelope.handoff_id,
                    message,
                },
            },
            Event::Closed { generation, error } => {
                if let Some(error) = error {
                    tracing::warn!(generation, %error, "control connection failed");
                }
                LifecycleInput::Closed { generation }
            }
            Event::Exited { generation } => {
                // Reaped first, so that every decision sees the exit.
                let Some(process) = self.processes.get_mut(&generation) else {
                    return;
                };
                let status = process.reap();
                LifecycleInput::Exited { generation, status }
            }
            Event::Notified {
                generation,
                pid,
                mut note,
            } => {
                // The fds first (the store's), then the text (the lifecycle's).
                self.store.notified(generation, pid, &mut note);
                LifecycleInput::Notified {
                    generation,
                    pid: note.pid,
                    text: note.text,
                }
            }
        };
        self.feed(input);
    }

    /// Steps the machine with `input` and performs its actions, and those
    /// of the inputs they give rise to (a failed send, an injected fault, a
    /// restart's spawn), in order.
    fn feed(&mut self, input: LifecycleInput) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            for action in self.machine.step(input, Instant::now()) {
                self.perform(action, &mut queue);
            }
        }
    }

    fn perform(&mut self, action: LifecycleAction, queue: &mut VecDeque<LifecycleInput>) {
        match action {
            LifecycleAction::Send {
                to,
                handoff_id,
                message,
            } => {
                let sent = self.process(to).map(|p| p.send(handoff_id, message));
                if let Some(Err(error)) = sent {
                    tracing::warn!(generation = to, %error, "send failed; the generation is taken for gone");
                    queue.push_back(LifecycleInput::Closed { generation: to });
                }
            }
            LifecycleAction::SendListeners { to, handoff_id } => {
                if let Err(error) = self.send_listeners(to, handoff_id) {
                    tracing::warn!(generation = to, %error, "sending the listeners failed");
                    queue.push_back(LifecycleInput::Closed { generation: to });
                }
            }
            LifecycleAction::Signal { to, signal } => self.signal(to, signal),
            LifecycleAction::StartProbe { purpose, until } => self.probes.run(purpose, until),
            LifecycleAction::WatchProbation { generation, until } => {
                self.probes.watch_probation(generation, until)
            }
            LifecycleAction::Restart { ticket, build } => {
                let requested = Instant::now();
                let spawned = Launch::restart(&self.config, build)
                    .and_then(|launch| self.launch(ticket, &launch, requested));
                queue.push_back(match spawned {
                    Ok(spawned) => LifecycleInput::Spawned(Box::new(spawned)),
                    Err(error) => {
                        let reason = crate::error::chain(&error);
                        tracing::error!(error = %reason, "restart refused or failed");
                        LifecycleInput::SpawnFailed { ticket, reason }
                    }
                });
            }
            LifecycleAction::Entered { generation, state } => {
                tracing::debug!(generation, state, "entered");
                if fault::reached(FaultRole::Supervisor, state, generation).is_err() {
                    queue.push_back(LifecycleInput::FaultInjected { generation });
                }
            }
            LifecycleAction::Finished(outcome) => {
                log_outcome(&outcome);
                if let Some(reply) = self.replies.remove(&outcome.handoff_id()) {
                    let _ = reply.send(Ok(*outcome));
                }
            }
            LifecycleAction::Announce(event) => {
                if let SupervisorEvent::GenerationRetired {
                    generation,
                    pid,
                    status,
                } = &event
                {
                    tracing::info!(generation, pid, %status, "old generation gone");
                }
                self.announce(event);
            }
            LifecycleAction::Note(note) => log_note(&note),
            LifecycleAction::Forget { generation } => {
                let image = self
                    .processes
                    .remove(&generation)
                    .and_then(|mut p| p.image.take());
                if let Some(image) = image {
                    self.images.retire(image, Instant::now());
                }
            }
            LifecycleAction::Stopped => self.answer_stopped(),
            transit @ (LifecycleAction::OfferConnections { .. }
            | LifecycleAction::SendConnections { .. }
            | LifecycleAction::DropConnections { .. }
            | LifecycleAction::KeepItems { .. }
            | LifecycleAction::KeepAndPassItems { .. }
            | LifecycleAction::DropItems { .. }
            | LifecycleAction::SendItems { .. }) => self.perform_transit(transit, queue),
        }
    }

    /// What travels between generations: connections (I20), items (I21).
    fn perform_transit(&mut self, action: LifecycleAction, queue: &mut VecDeque<LifecycleInput>) {
        match action {
            LifecycleAction::OfferConnections {
                to,
                handoff_id,
                receiver,
            } => self.offer_connections(to, handoff_id, receiver),
            LifecycleAction::SendConnections {
                batch,
                to,
                handoff_id,
            } => self.send_connections(batch, to, handoff_id, queue),
            LifecycleAction::DropConnections { batch, why } => self.drop_connections(batch, why),
            LifecycleAction::KeepItems { batch, writer } => {
                self.items.keep(batch, writer);
            }
            LifecycleAction::KeepAndPassItems { batch, writer, to } => {
                let kept = self.items.keep(batch, writer);
                for (to, handoff_id) in to {
                    self.pass_items(&kept, to, handoff_id, queue);
                }
            }
            LifecycleAction::DropItems { batch, why } => match self.items.close(batch) {
                Dropped::Puts(count) => tracing::warn!(count, why, "items refused and closed"),
                Dropped::Removals(count) => tracing::warn!(count, why, "item removals ignored"),
            },
            LifecycleAction::SendItems { to, handoff_id } => self.send_items(to, handoff_id, queue),
            other => tracing::error!(?other, "not a transit action"),
        }
    }

    /// Gives `to` every stored item; if it cannot take them, it is taken
    /// for gone.
    fn send_items(
        &mut self,
        to: GenerationId,
        handoff_id: u64,
        queue: &mut VecDeque<LifecycleInput>,
    ) {
        let Some(sender) = self.processes.get(&to).and_then(|p| p.sender.as_ref()) else {
            return;
        };
        if let Err(error) = self.items.send_all(sender, handoff_id) {
            tracing::warn!(generation = to, %error, "sending the items failed; the generation is taken for gone");
            queue.push_back(LifecycleInput::Closed { generation: to });
        }
    }

    /// Gives `to` the stored items named `names`; if it cannot take them,
    /// it is taken for gone.
    fn pass_items(
        &mut self,
        names: &[String],
        to: GenerationId,
        handoff_id: u64,
        queue: &mut VecDeque<LifecycleInput>,
    ) {
        let Some(sender) = self.processes.get(&to).and_then(|p| p.sender.as_ref()) else {
            return;
        };
        match self.items.send_named(names, sender, handoff_id) {
            Ok(0) => {}
            Ok(count) => tracing::debug!(generation = to, count, "items passed on"),
            Err(error) => {
                tracing::warn!(generation = to, %error, "passing items on failed; the generation is taken for gone");
                queue.push_back(LifecycleInput::Closed { generation: to });
            }
        }
    }

    /// Closes the gone generations' executables that are due, when no
    /// handoff and no drain is under way (see `images`).
    fn release_images(&mut self) {
        let released = self.images.take_due(Instant::now(), self.quiet());
        if !released.is_empty() {
            tracing::debug!(
                count = released.len(),
                held = self.images.len(),
                "released gone generations' executables"
            );
        }
    }

    /// No handoff, drain or retirement under way: old generations only
    /// kept for a probation (or as a warm standby) do not count, nor does
    /// a restart's wait (a crash loop must not pile images up).
    fn quiet(&self) -> bool {
        let retirees = self.machine.retirees().map(|(_, state, _)| state);
        super::images::quiet(self.machine.state(), retirees)
    }

    fn drop_connections(&mut self, batch: u64, why: &'static str) {
        let count = self.transit.close(batch);
        tracing::warn!(count, why, "client connections closed");
    }

    /// Tells `to` how many connections it may hand over to `receiver`.
    fn offer_connections(&mut self, to: GenerationId, handoff_id: u64, receiver: GenerationId) {
        let Some(receiver) = self.process(receiver).map(|p| p.pid) else {
            return;
        };
        let connections = self.transit.budget(to, receiver);
        let message = Message::ConnectionBudget { connections };
        if let Some(Err(error)) = self.process(to).map(|p| p.send(handoff_id, message)) {
            tracing::warn!(generation = to, %error, "sending the connection budget failed");
        }
    }

    /// Gives a batch of connections to `to`; if it cannot take them, they
    /// close (the generation is taken for gone).
    fn send_connections(
        &mut self,
        batch: u64,
        to: GenerationId,
        handoff_id: u64,
        queue: &mut VecDeque<LifecycleInput>,
    ) {
        let process = self.processes.get(&to);
        let Some((sender, pid)) = process.and_then(|p| Some((p.sender.as_ref()?, p.pid))) else {
            return self.drop_connections(batch, "their generation is gone");
        };
        match self.transit.send(batch, (sender, pid), handoff_id) {
            Ok(count) => tracing::info!(generation = to, count, "client connections handed over"),
            Err(error) => {
                tracing::warn!(generation = to, %error, "handing client connections over failed; the generation is taken for gone");
                queue.push_back(LifecycleInput::Closed { generation: to });
            }
        }
    }

    fn announce(&mut self, event: SupervisorEvent) {
        self.subscribers
            .retain(|subscriber| subscriber.send(event.clone()).is_ok());
    }

    fn process(&self, generation: GenerationId) -> Option<&GenerationProcess> {
        self.processes.get(&generation)
    }

    fn signal(&self, to: GenerationId, signal: GenerationSignal) {
        let Some(process) = self.process(to) else {
            return;
        };
        let quiesce = self.config.protocol.quiesce_signals();
        let sig = match signal {
            GenerationSignal::Stop => Some(self.config.protocol.stop_signal()),
            GenerationSignal::Kill => Some(Sig::Kill),
            GenerationSignal::Quiesce => quiesce.map(|pair| pair.quiesce),
            GenerationSignal::Resume => quiesce.map(|pair| pair.resume),
        };
        if let Some(sig) = sig {
            process.signal(sig);
        }
    }

    /// The named fds HelloAck promised, at most 253 per frame.
    fn send_listeners(&self, to: GenerationId, handoff_id: u64) -> Result<()> {
        let Some(sender) = self.process(to).and_then(|p| p.sender.as_ref()) else {
            return Ok(());
        };
        for chunk in self.config.listeners.chunks(usize::from(MAX_FDS_PER_FRAME)) {
            let entries = chunk
                .iter()
                .map(|l| FdEntry {
                    name: l.name.clone(),
                    kind: l.kind,
                })
                .collect();
            let fds: Vec<_> = chunk.iter().map(|l| l.fd.as_fd()).collect();
            sender.send(handoff_id, Message::Fds { entries }, &fds)?;
        }
        Ok(())
    }

    fn answer_stopped(&mut self) {
        for reply in self.stopped.drain(..) {
            let _ = reply.send(());
        }
    }

    fn status(&self) -> Status {
        let live = self.machine.live();
        Status {
            supervisor_pid: std::process::id(),
            state: SupervisorState::of(self.machine.state(), live.is_some()),
            generation: live.map_or(0, |live| live.id),
            child_pid: live.map(|live| live.pid),
            // By path: a pinned generation runs `/proc/self/fd/N`, which
            // names nothing outside the supervisor. With nobody serving,
            // what the restart runs.
            program: live.map_or_else(
                || self.machine.last_committed().program.clone(),
                |live| live.build.program.clone(),
            ),
            mode: self.config.mode,
            listeners: self
                .config
                .listeners
                .iter()
                .map(|l| (l.name.clone(), l.address.clone()))
                .collect(),
            uptime: self.started.elapsed(),
            last_handoff: self.machine.last_handoff().cloned(),
            retiring: self.machine.retiring(),
            retirees: self
                .machine
                .retirees()
                .map(|(generation, state, in_probation)| RetireeStatus {
                    generation: generation.id,
                    pid: generation.pid,
                    state: state.as_str().to_owned(),
                    in_probation,
                })
                .collect(),
            serving_for: live
                .and_then(|live| live.serving_since)
                .map(|since| since.elapsed()),
            last_probation_rollback: self.machine.last_probation_rollback().cloned(),
            fd_store_max: self.store.max(),
            fd_store: self.store.groups(),
            items: self.items.report(),
        }
    }
}

fn log_outcome(outcome: &Outcome) {
    match outcome {
        Outcome::Committed {
            handoff_id,
            new_pid,
            generation,
            phases,
            ..
        } => tracing::info!(
            handoff_id,
            new_pid,
            generation,
            total_ms = u64::try_from(phases.total.as_millis()).unwrap_or(u64::MAX),
            "handoff committed"
        ),
        Outcome::RolledBack {
            handoff_id, reason, ..
        } => tracing::warn!(handoff_id, %reason, "handoff rolled back"),
    }
}

/// One log line per note, at the level its news deserves.
fn log_note(note: &Note) {
    match note {
        Note::UnexpectedMessage {
            generation,
            message,
        } => tracing::warn!(
            generation,
            message,
            "the live generation sent a message outside a handoff; ignored"
        ),
        Note::ControlClosed { generation } => {
            tracing::warn!(
                generation,
                "the live generation closed its control connection"
            )
        }
        Note::RestartScheduled { delay } => tracing::info!(
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "restarting the generation"
        ),
        Note::NoRestart => tracing::info!("restart policy says no restart; stopping"),
        Note::StopUnheard { generations } => tracing::error!(
            ?generations,
            "the stop ends without hearing these generations exit, a kill grace after SIGKILL \
             (their process groups are killed as the supervisor ends)"
        ),
        Note::LiveLost { generation } => tracing::warn!(
            generation,
            "the live generation exited during a handoff: the successor serves if it commits, \
             else a generation in probation resumes or the restart policy decides"
        ),
        Note::RestartDropped => tracing::info!(
            "a restart was pending (the incumbent exited during the handoff): the committed \
             generation serves instead"
        ),
        Note::ResumingProbation {
            generation,
            failed,
            reason,
        } => tracing::warn!(
            generation,
            failed,
            %reason,
            "the live generation failed while the previous one was in probation: resuming it"
        ),
        Note::IncumbentStopped { why } => {
            tracing::warn!(%why, "the old generation was stopped before the commit")
        }
        Note::ForeignSender {
            generation,
            sender,
            expected,
        } => tracing::warn!(
            generation,
            ?sender,
            expected,
            "notification from another process ignored"
        ),
        Note::FaultKill { generation } => tracing::warn!(
            generation,
            "injected error while retiring: killing the old generation"
        ),
        Note::ProbationHeld { .. }
        | Note::ProbationCleared { .. }
        | Note::ProbationFailed { .. }
        | Note::ProbeIgnored { .. }
        | Note::ResumeChecked { .. }
        | Note::ResumedTooLate { .. } => log_probation_note(note),
    }
}

/// The notes of probations and their probes, which [`log_note`] (whose
/// match is the exhaustive one) routes here.
fn log_probation_note(note: &Note) {
    match note {
        Note::ProbationHeld { generation, detail } => tracing::info!(
            generation,
            %detail,
            "a probation probe attempt failed: the probation is held open while it is confirmed"
        ),
        Note::ProbationCleared { generation } => {
            tracing::info!(generation, "the probation probe passes again")
        }
        Note::ProbationFailed { generation, detail } => tracing::warn!(
            generation,
            %detail,
            "the new generation failed its health probe during probation"
        ),
        Note::ProbeIgnored { generation, detail } => tracing::warn!(
            generation,
            %detail,
            "a probation probe failure came when nothing could be rolled back: ignored"
        ),
        Note::ResumeChecked {
            generation,
            result: Ok(()),
            ..
        } => tracing::info!(
            generation,
            "the resumed generation answers its health probe"
        ),
        Note::ResumeChecked {
            generation,
            result: Err(detail),
            killed: true,
        } => tracing::error!(
            generation,
            %detail,
            "the resumed generation does not answer its health probe: killing it"
        ),
        Note::ResumeChecked {
            generation,
            result: Err(detail),
            killed: false,
        } => tracing::warn!(
            generation,
            %detail,
            "the resumed generation failed its health probe, but no longer serves alone"
        ),
        Note::ResumedTooLate { generation } => tracing::warn!(
            generation,
            "the resumed generation found another one serving: it retires"
        ),
        _ => {}
    }
}
