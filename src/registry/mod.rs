//! The in-process handler registry: replace a request handler inside a
//! running process without dropping a request.
//!
//! A [`HandlerRegistry`] maps endpoint ids to the handler serving each one.
//! Replacing a handler loads the new one first, makes it current at once,
//! and lets the requests already running finish on the old one, which is
//! unloaded when it has drained. Handlers are in-process values
//! ([`Handler`]) or dynamic libraries built with `handoff_handler_sdk`
//! (the C ABI is defined there, once, for both sides).
//!
//! ```
//! use std::time::Duration;
//! use handoff::registry::{Context, HandlerRegistry, HandlerSource, Request, Response};
//!
//! let registry = HandlerRegistry::new();
//! registry.insert("greet", HandlerSource::from_fn(|_, _| Response::text(200, "v1")))?;
//! let ctx = Context::new("greet", 1);
//!
//! // A request in flight on v1 while v2 is deployed.
//! let in_flight = registry.acquire("greet")?;
//! let swap = registry.swap_graceful(
//!     "greet",
//!     HandlerSource::from_fn(|_, _| Response::text(200, "v2")),
//!     Duration::from_secs(30),
//! )?;
//! assert_eq!((swap.old_version, swap.new_version, swap.pending_on_old), (1, 2, 1));
//!
//! // New requests go to v2 at once; the old request finishes on v1.
//! assert_eq!(registry.execute("greet", &ctx, Request::new("GET", "/"))?.body, b"v2");
//! assert_eq!(in_flight.call(&ctx, Request::new("GET", "/"))?.body, b"v1");
//! drop(in_flight);
//! assert!(registry.wait_drained(Duration::from_secs(5)));
//! # Ok::<(), handoff::Error>(())
//! ```
//!
//! # Layout
//!
//! - `handler`: the [`Handler`] trait and where handlers come from.
//! - `instance`: one loaded handler version, its sharded request counter,
//!   and [`HandlerGuard`].
//! - `lookup`: the endpoint map's hasher and its per-thread cache.
//! - `monitor`: retired versions, the drain bell, the background monitor.
//! - `dylib`: dlopen and calls into libraries: the crate's only `unsafe`
//!   outside `sys/`, an exception written into the contract in
//!   `sys/mod.rs`, which lists the `sys` files that have some.
//! - `builder`: handler source → Cargo project → library.
//! - `lifecycle`: the endpoint state machine of built handlers.
//! - `stats`: outcomes and statistics.
//!
//! The invariants cited as `R<n>` are numbered in ARCHITECTURE.md,
//! "Handler registry".

mod builder;
mod dylib;
mod handler;
mod instance;
mod lifecycle;
mod lookup;
mod monitor;
mod stats;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

pub use builder::{BuiltLibrary, HandlerBuilder, validate_endpoint_id};
pub use handler::{Handler, HandlerSource, library_file_name};
pub use handoff_handler_sdk::{Context, HandlerError, Request, Response};
pub use instance::HandlerGuard;
pub use lifecycle::{EndpointState, LifecycleEvent};
pub use stats::{DrainingStats, EndpointStats, RegistryStats, RemoveOutcome, SwapOutcome};

use crate::drain::{DrainReport, Drainable, SealProgress};
use crate::error::{Error, Result};
use crate::timeouts::HANDLER_RETRY_AFTER;
use crate::wire::{Fingerprint, SealInfo, Snapshot};
use instance::Instance;
use lookup::{EndpointMap, MapStorage};
use monitor::{Monitor, Retired, Signals, lock};

/// One endpoint: the handler version currently serving it.
pub(crate) struct Endpoint {
    current: ArcSwap<Instance>,
}

/// What only writers touch, under one mutex the request path never takes
/// (R7).
#[derive(Default)]
struct Control {
    /// Last version handed out per id, kept across removal (R10).
    last_version: HashMap<String, u64>,
    /// Endpoints whose removal is waiting for their requests.
    removing: HashSet<String>,
    /// Drained for a process handoff ([`Drainable::drain`]).
    drained: bool,
    /// Successful loads, the registry's revision count.
    loads: u64,
}

impl Control {
    fn next_version(&mut self, id: &str) -> u64 {
        let version = self.last_version.entry(id.to_owned()).or_insert(0);
        *version += 1;
        self.loads += 1;
        *version
    }

    /// Refuses changes to `id` while it or the whole registry drains.
    fn check_writable(&self, id: &str) -> Result<()> {
        if self.drained {
            return Err(Error::RegistryDrained);
        }
        if self.removing.contains(id) {
            return Err(Error::EndpointDraining { id: id.to_owned() });
        }
        Ok(())
    }
}

/// Endpoint ids mapped to their handlers, with graceful replacement.
///
/// Share it between threads with an `Arc`; every method takes `&self`.
/// See the [module documentation](self) for an example.
pub struct HandlerRegistry {
    /// Read on every request without a lock, through a per-thread cache
    /// (`lookup`); replaced whole (copy on write) when an endpoint is
    /// added or removed (R1).
    endpoints: MapStorage,
    control: Mutex<Control>,
    retired: Arc<Retired>,
    signals: Arc<Signals>,
    monitor: OnceLock<Monitor>,
}

/// Why an acquire failed, before it becomes an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Unknown,
    Draining,
}

impl Refusal {
    #[cold]
    fn into_error(self, id: &str) -> Error {
        let id = id.to_owned();
        match self {
            Refusal::Unknown => Error::UnknownEndpoint { id },
            Refusal::Draining => Error::EndpointDraining { id },
        }
    }
}

/// An endpoint whose removal has begun ([`HandlerRegistry::begin_remove`]):
/// it answers 503 until [`HandlerRegistry::finish_remove`] drops it.
#[must_use = "the endpoint stays draining until finish_remove is called"]
#[derive(Debug)]
pub struct Removal {
    id: String,
    instance: Arc<Instance>,
    started: Instant,
}

impl Removal {
    /// The endpoint.
    pub fn endpoint(&self) -> &str {
        &self.id
    }

    /// Requests still running on it.
    pub fn active_requests(&self) -> usize {
        self.instance.active()
    }
}

impl Default for HandlerRegistry {
    fn default() -> Self {
        HandlerRegistry::new()
    }
}

impl std::fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerRegistry")
            .field("stats", &self.stats())
            .finish()
    }
}

impl HandlerRegistry {
    /// An empty registry. The drain monitor thread starts with the first
    /// [`swap_graceful`](Self::swap_graceful).
    pub fn new() -> HandlerRegistry {
        HandlerRegistry {
            endpoints: Arc::new(ArcSwap::from_pointee(EndpointMap::default())),
            control: Mutex::new(Control::default()),
            retired: Arc::new(Retired::default()),
            signals: Arc::new(Signals::default()),
            monitor: OnceLock::new(),
        }
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        lock(&self.control)
    }

    /// Replaces the endpoint map; callers hold the control lock, so there
    /// is one writer at a time.
    fn update_map(&self, _control: &Control, change: impl FnOnce(&mut EndpointMap)) {
        let mut map = EndpointMap::clone(&self.endpoints.load());
        change(&mut map);
        self.endpoints.store(Arc::new(map));
    }

    fn endpoint(&self, id: &str) -> Result<Arc<Endpoint>> {
        self.endpoints
            .load()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::UnknownEndpoint { id: id.to_owned() })
    }

    fn new_instance(
        &self,
        id: &str,
        version: u64,
        handler: handler::LoadedHandler,
    ) -> Arc<Instance> {
        Arc::new(Instance::new(
            Arc::from(id),
            version,
            handler,
            Arc::clone(&self.signals),
        ))
    }

    /// Adds endpoint `id`, loading its handler; returns its version.
    ///
    /// Fails with [`Error::EndpointExists`] if `id` is taken (use
    /// [`swap_graceful`](Self::swap_graceful) to replace), and with the load
    /// error if the handler does not load.
    pub fn insert(&self, id: &str, source: HandlerSource) -> Result<u64> {
        let handler = source.load()?;
        let mut control = self.control();
        control.check_writable(id)?;
        if self.endpoints.load().contains_key(id) {
            return Err(Error::EndpointExists { id: id.to_owned() });
        }
        let version = control.next_version(id);
        let endpoint = Arc::new(Endpoint {
            current: ArcSwap::new(self.new_instance(id, version, handler)),
        });
        self.update_map(&control, |map| {
            map.insert(Arc::from(id), endpoint);
        });
        tracing::info!(endpoint = id, version, "handler loaded");
        Ok(version)
    }

    /// Replaces `id`'s handler at once and lets go of the old one without a
    /// drain deadline: requests already running on it finish, and the last
    /// one to return unloads it (R6). Returns immediately.
    pub fn swap(&self, id: &str, source: HandlerSource) -> Result<SwapOutcome> {
        self.replace(id, source, None)
    }

    /// Replaces `id`'s handler at once; the old one drains in the
    /// background.
    ///
    /// The new handler is loaded first: a load failure leaves the old one
    /// serving (R3). Then the new one becomes current, the old one is marked
    /// draining, and this returns with the number of requests still running
    /// on the old one. The drain monitor drops (unloads) the old handler
    /// when they have finished; at `drain_timeout` it stops waiting, logs a
    /// warning, counts it in [`RegistryStats::drain_timeouts`], and the old
    /// handler is unloaded when its last request returns, never during a
    /// call (R6).
    pub fn swap_graceful(
        &self,
        id: &str,
        source: HandlerSource,
        drain_timeout: Duration,
    ) -> Result<SwapOutcome> {
        self.monitor()?;
        self.replace(id, source, Some(drain_timeout))
    }

    fn monitor(&self) -> Result<&Monitor> {
        if let Some(monitor) = self.monitor.get() {
            return Ok(monitor);
        }
        let started = Monitor::start(Arc::clone(&self.retired), Arc::clone(&self.signals))?;
        // A concurrent caller may have won the race; its monitor is kept and
        // this one stops when dropped.
        Ok(self.monitor.get_or_init(|| started))
    }

    fn replace(
        &self,
        id: &str,
        source: HandlerSource,
        drain_timeout: Option<Duration>,
    ) -> Result<SwapOutcome> {
        let handler = source.load()?;
        let (old, new_version) = {
            let mut control = self.control();
            control.check_writable(id)?;
            let endpoint = self.endpoint(id)?;
            let version = control.next_version(id);
            let new = self.new_instance(id, version, handler);
            // R3: current first, then draining, so an acquirer that sees the
            // old one draining finds the new one on its retry.
            let old = endpoint.current.swap(new);
            old.mark_draining();
            (old, version)
        };
        let pending = old.active();
        let outcome = SwapOutcome {
            endpoint: id.to_owned(),
            new_version,
            old_version: old.version,
            pending_on_old: pending,
            draining: pending > 0,
        };
        if pending > 0 {
            match drain_timeout {
                Some(timeout) => {
                    self.retired.watch(old, Instant::now().checked_add(timeout));
                    // The monitor may be asleep until a later deadline.
                    self.signals.bell.ring();
                }
                None => self.retired.release(&old, Instant::now()),
            }
        }
        tracing::info!(
            endpoint = id,
            old_version = outcome.old_version,
            new_version,
            pending_on_old = pending,
            "handler swapped"
        );
        Ok(outcome)
    }

    /// Removes endpoint `id`: new requests get [`Error::EndpointDraining`]
    /// (503) at once; this waits until the running ones finish or
    /// `drain_timeout` passes, then drops the endpoint (later requests get
    /// [`Error::UnknownEndpoint`]). Past the timeout the handler is unloaded
    /// when its last request returns (R6). Blocks the caller; see
    /// [`begin_remove`](Self::begin_remove) to wait elsewhere.
    pub fn remove(&self, id: &str, drain_timeout: Duration) -> Result<RemoveOutcome> {
        let removal = self.begin_remove(id)?;
        Ok(self.finish_remove(removal, drain_timeout))
    }

    /// The first half of [`remove`](Self::remove): marks `id` draining, so
    /// that requests get 503 from the moment this returns, and returns at
    /// once. Changes to `id` are refused until
    /// [`finish_remove`](Self::finish_remove) is called with the result.
    pub fn begin_remove(&self, id: &str) -> Result<Removal> {
        let mut control = self.control();
        if control.removing.contains(id) {
            return Err(Error::EndpointDraining { id: id.to_owned() });
        }
        let endpoint = self.endpoint(id)?;
        control.removing.insert(id.to_owned());
        let instance = endpoint.current.load_full();
        instance.mark_draining();
        Ok(Removal {
            id: id.to_owned(),
            instance,
            started: Instant::now(),
        })
    }

    /// The second half of [`remove`](Self::remove): waits until the
    /// endpoint's requests finish or `drain_timeout` (counted from
    /// [`begin_remove`](Self::begin_remove)) passes, then drops it.
    pub fn finish_remove(&self, removal: Removal, drain_timeout: Duration) -> RemoveOutcome {
        let Removal {
            id,
            instance,
            started,
        } = removal;
        let drained = match started.checked_add(drain_timeout) {
            Some(deadline) => self
                .signals
                .bell
                .wait_until(deadline, || instance.active() == 0),
            None => self.wait_forever(|| instance.active() == 0),
        };
        {
            let mut control = self.control();
            let ours = self
                .endpoints
                .load()
                .get(id.as_str())
                .is_some_and(|endpoint| Arc::ptr_eq(&endpoint.current.load(), &instance));
            if ours {
                let removed = self.endpoint(&id).ok();
                self.update_map(&control, |map| {
                    map.remove(id.as_str());
                });
                control.removing.remove(&id);
                if let Some(endpoint) = removed {
                    self.bury(&endpoint, &instance);
                }
            }
        }
        let still_active = instance.active();
        if still_active > 0 {
            self.signals
                .drain_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tracing::warn!(
                endpoint = id,
                version = instance.version,
                still_active,
                "drain timeout on removal: the handler is unloaded when its last request returns"
            );
            self.retired.release(&instance, started);
        }
        tracing::info!(
            endpoint = id,
            version = instance.version,
            drained,
            "endpoint removed"
        );
        RemoveOutcome {
            version: instance.version,
            endpoint: id,
            drained: still_active == 0,
            still_active,
        }
    }

    /// Replaces a removed endpoint's handler with a tombstone (R11).
    fn bury(&self, endpoint: &Endpoint, last: &Instance) {
        endpoint.current.store(Arc::new(Instance::tombstone(
            Arc::clone(&last.endpoint),
            last.version,
            Arc::clone(&self.signals),
        )));
    }

    fn wait_forever(&self, mut done: impl FnMut() -> bool) -> bool {
        loop {
            let seen = self.signals.bell.rings();
            if done() {
                return true;
            }
            self.signals.bell.wait(seen, None);
        }
    }

    /// Counts a request in on `id`'s current handler and returns its guard.
    ///
    /// Takes no lock: two atomic loads of shared pointers, a hash lookup,
    /// and an increment of a per-thread counter shard (R1, R5). Fails with
    /// [`Error::UnknownEndpoint`] (answer 404) or, when the endpoint is
    /// being removed or the registry is drained, [`Error::EndpointDraining`]
    /// (answer 503). A swap racing with this call never makes it fail (R3).
    #[inline]
    pub fn acquire(&self, id: &str) -> Result<HandlerGuard> {
        self.try_acquire(id)
            .map_err(|refusal| refusal.into_error(id))
    }

    /// [`acquire`](Self::acquire) with a one-byte error, so that the fast
    /// path moves no large `Result` around.
    #[inline]
    fn try_acquire(&self, id: &str) -> std::result::Result<HandlerGuard, Refusal> {
        lookup::with_cached_map(&self.endpoints, |endpoints| {
            HandlerRegistry::acquire_in(endpoints, id)
        })
        // This thread's locals are being destroyed, or the cache is busy.
        .unwrap_or_else(|| HandlerRegistry::acquire_in(&self.endpoints.load(), id))
    }

    #[inline]
    fn acquire_in(endpoints: &EndpointMap, id: &str) -> std::result::Result<HandlerGuard, Refusal> {
        let endpoint = endpoints.get(id).ok_or(Refusal::Unknown)?;
        HandlerRegistry::enter(endpoint, endpoint.current.load())
    }

    /// Enters `candidate`, or, if it turned out to be draining because a
    /// swap replaced it meanwhile, the endpoint's current handler (R3).
    #[inline]
    fn enter(
        endpoint: &Endpoint,
        mut candidate: arc_swap::Guard<Arc<Instance>>,
    ) -> std::result::Result<HandlerGuard, Refusal> {
        loop {
            match HandlerGuard::enter(candidate) {
                Ok(guard) => return Ok(guard),
                Err(draining) => {
                    let current = endpoint.current.load();
                    if Arc::ptr_eq(&*current, &*draining) {
                        return Err(Refusal::Draining);
                    }
                    candidate = current;
                }
            }
        }
    }

    /// Runs `request` on `id`'s current handler, on the calling thread.
    ///
    /// Errors map to statuses with [`error_response`]: unknown endpoint
    /// 404, draining 503, [`Error::HandlerPanicked`] 500. A panic affects
    /// this request only (R8).
    #[inline]
    pub fn execute(&self, id: &str, ctx: &Context, request: Request) -> Result<Response> {
        match self.try_acquire(id) {
            Ok(guard) => guard.call(ctx, request),
            Err(refusal) => Err(refusal.into_error(id)),
        }
    }

    /// Like [`execute`](Self::execute), with a limit: past `timeout` the
    /// caller gets [`Error::HandlerTimeout`] (answer 504).
    ///
    /// The handler runs on a thread of its own so that the caller can stop
    /// waiting; a handler cannot be interrupted, so an overrunning call goes
    /// on in the background, holding its guard: its handler stays loaded
    /// until it returns (R2). Costs a thread spawn per call.
    pub fn execute_with_timeout(
        &self,
        id: &str,
        ctx: &Context,
        request: Request,
        timeout: Duration,
    ) -> Result<Response> {
        let guard = self.acquire(id)?;
        let (id, version) = (guard.endpoint().to_owned(), guard.version());
        let (sender, receiver) = crossbeam_channel::bounded(1);
        let ctx = ctx.clone();
        std::thread::Builder::new()
            .name("handoff-handler".to_owned())
            .spawn(move || {
                // The receiver may have given up; the result is then dropped.
                let _ = sender.send(guard.call(&ctx, request));
            })
            .map_err(|source| Error::io("starting a handler thread", source))?;
        match receiver.recv_timeout(timeout) {
            Ok(result) => result,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(Error::HandlerTimeout {
                id,
                version,
                timeout,
            }),
            // The thread catches panics and always sends; a disconnect means
            // it died some other way.
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(Error::HandlerPanicked {
                id,
                version,
                message: "the handler thread ended without an answer".to_owned(),
            }),
        }
    }

    /// Whether endpoint `id` exists (draining or not).
    pub fn contains(&self, id: &str) -> bool {
        self.endpoints.load().contains_key(id)
    }

    /// A snapshot of the registry's endpoints, retired handlers and
    /// counters.
    pub fn stats(&self) -> RegistryStats {
        let now = Instant::now();
        let mut endpoints: Vec<EndpointStats> = {
            let control = self.control();
            self.endpoints
                .load()
                .iter()
                .map(|(id, endpoint)| {
                    let instance = endpoint.current.load();
                    let draining = instance.is_draining() || control.removing.contains(&**id);
                    EndpointStats {
                        id: id.to_string(),
                        state: if draining {
                            EndpointState::Draining
                        } else {
                            EndpointState::Loaded
                        },
                        version: instance.version,
                        active_requests: instance.active(),
                        origin: instance.handler().origin(),
                    }
                })
                .collect()
        };
        endpoints.sort_by(|left, right| left.id.cmp(&right.id));
        let retired = self.retired.stats(now);
        let (serving, draining): (Vec<&EndpointStats>, Vec<&EndpointStats>) = endpoints
            .iter()
            .partition(|endpoint| endpoint.state == EndpointState::Loaded);
        RegistryStats {
            loaded: serving.len(),
            draining: draining.len() + retired.len(),
            active_requests: serving.iter().map(|e| e.active_requests).sum(),
            draining_requests: draining.iter().map(|e| e.active_requests).sum::<usize>()
                + retired.iter().map(|r| r.active_requests).sum::<usize>(),
            drain_timeouts: self
                .signals
                .drain_timeouts
                .load(std::sync::atomic::Ordering::SeqCst),
            unloaded: self
                .signals
                .unloaded
                .load(std::sync::atomic::Ordering::SeqCst),
            endpoints,
            retired,
        }
    }

    /// Drops every retired handler whose requests have all finished (the
    /// monitor does the same in the background), forgets released ones that
    /// are gone, and returns how many it dropped.
    pub fn cleanup_drained(&self) -> usize {
        self.retired.sweep(&self.signals, Instant::now()).0
    }

    /// Waits until no retired handler is loaded any more, or `timeout`;
    /// returns whether none is.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let done = || {
            self.cleanup_drained();
            self.retired.is_empty()
        };
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.signals.bell.wait_until(deadline, done),
            None => self.wait_forever(done),
        }
    }

    /// Drains every handler for a process handoff: requests get 503 from
    /// now on, and this waits until the running ones (on current and
    /// retired handlers) finish or `deadline`. Changes are refused with
    /// [`Error::RegistryDrained`] until [`resume`](Self::resume).
    pub fn drain_all(&self, deadline: Instant) -> DrainReport {
        {
            let mut control = self.control();
            control.drained = true;
            for endpoint in self.endpoints.load().values() {
                endpoint.current.load().mark_draining();
            }
        }
        self.signals
            .bell
            .wait_until(deadline, || self.total_active() == 0);
        DrainReport {
            open_connections: u32::try_from(self.total_active()).unwrap_or(u32::MAX),
            accept_closed: true,
        }
    }

    /// Takes requests again after [`drain_all`](Self::drain_all) (an
    /// aborted handoff). Endpoints being removed stay draining.
    pub fn resume(&self) {
        let mut control = self.control();
        control.drained = false;
        for (id, endpoint) in self.endpoints.load().iter() {
            if !control.removing.contains(&**id) {
                endpoint.current.load().resume();
            }
        }
    }

    fn total_active(&self) -> usize {
        let current: usize = self
            .endpoints
            .load()
            .values()
            .map(|endpoint| endpoint.current.load().active())
            .sum();
        current + self.retired.active()
    }

    /// The registry's state in a form a successor can compare: the number
    /// of loads so far, and a fingerprint of each endpoint's id, version
    /// and origin. Nothing in the registry is durable, so sealing writes
    /// nothing.
    pub fn seal_info(&self) -> SealInfo {
        let control = self.control();
        let mut described: Vec<String> = self
            .endpoints
            .load()
            .iter()
            .map(|(id, endpoint)| {
                let instance = endpoint.current.load();
                format!(
                    "{id}\t{}\t{}\n",
                    instance.version,
                    instance.handler().origin()
                )
            })
            .collect();
        described.sort();
        SealInfo {
            revisions: control.loads,
            fingerprint: Fingerprint::of_bytes(described.concat().as_bytes()),
        }
    }
}

impl Drop for HandlerRegistry {
    fn drop(&mut self) {
        // Other threads' cached maps may outlive the registry: leave them
        // tombstones only (R11).
        for endpoint in self.endpoints.load().values() {
            let last = endpoint.current.load_full();
            self.bury(endpoint, &last);
        }
        // Stop the monitor before the retired list goes; then the list's
        // last strong references drop with `self.retired`.
        drop(self.monitor.take());
    }
}

/// The registry drains its handlers as part of a daemon's process handoff:
/// `drain` is [`HandlerRegistry::drain_all`], `seal` reports
/// [`HandlerRegistry::seal_info`] (nothing to persist), and
/// `resume_after_abort` is [`HandlerRegistry::resume`].
impl Drainable for HandlerRegistry {
    type Error = Error;

    fn drain(&mut self, deadline: Instant) -> Result<DrainReport> {
        Ok(self.drain_all(deadline))
    }

    fn seal(&mut self, _progress: &mut SealProgress) -> Result<SealInfo> {
        Ok(self.seal_info())
    }

    fn resume_after_abort(&mut self) -> Result<()> {
        self.resume();
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        let (accepting, revisions) = {
            let control = self.control();
            (!control.drained, control.loads)
        };
        Snapshot {
            open_connections: 0,
            in_flight: u32::try_from(self.total_active()).unwrap_or(u32::MAX),
            revisions,
            accepting,
        }
    }
}

/// The HTTP-style response for a registry error: 404 for an unknown
/// endpoint, 503 with `Retry-After` while draining, 500 for a panic, 504
/// for a timeout, 502 for a library that answered nothing usable, 500
/// otherwise. The body is JSON: `{"error": ..., "endpoint": ...}`.
///
/// ```
/// let error = handoff::Error::EndpointDraining { id: "users".into() };
/// let response = handoff::registry::error_response(&error);
/// assert_eq!(response.status, 503);
/// assert_eq!(response.header("retry-after"), Some("1"));
/// ```
pub fn error_response(error: &Error) -> Response {
    use handoff_handler_sdk::serde_json::json;
    let (status, endpoint) = match error {
        Error::UnknownEndpoint { id } => (404, Some(id)),
        Error::EndpointDraining { id } => (503, Some(id)),
        Error::RegistryDrained => (503, None),
        Error::HandlerPanicked { id, .. } => (500, Some(id)),
        Error::HandlerTimeout { id, .. } => (504, Some(id)),
        Error::HandlerBadResponse { id, .. } => (502, Some(id)),
        _ => (500, None),
    };
    let message = match error {
        // The panic text is for the log, not for the client.
        Error::HandlerPanicked { .. } => "handler failed".to_owned(),
        other => other.to_string(),
    };
    let response = Response::json(status, &json!({ "error": message, "endpoint": endpoint }));
    if status == 503 {
        response.with_header("retry-after", HANDLER_RETRY_AFTER.as_secs().to_string())
    } else {
        response
    }
}
