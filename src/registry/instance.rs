//! One loaded version of a handler, its request counter, and the guard that
//! counts one request.
//!
//! The request path touches only this file's atomics and arc-swap's
//! per-thread debt slots: no lock, and no write to a cache line shared with
//! another thread in the common case (R1, R5).

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use handoff_handler_sdk::{Context, Request, Response};

use super::handler::{CallOutcome, LoadedHandler};
use super::monitor::Signals;
use crate::error::{Error, Result};

/// Number of counter shards. Threads are spread over them round-robin, so
/// up to this many threads count requests without sharing a cache line.
const SHARDS: usize = 16;

/// One counter shard on a cache line of its own (128 bytes: x86 prefetches
/// lines in pairs, and some ARM cores have 128-byte lines).
#[repr(align(128))]
struct Shard(AtomicUsize);

/// The number of requests running on one handler version, split in shards.
///
/// A guard increments and decrements the *same* shard, so no shard ever
/// goes below zero and a sum read shard by shard never under-reports a
/// request that entered before the sum began (R5).
struct ActiveCounter {
    shards: [Shard; SHARDS],
}

impl ActiveCounter {
    fn new() -> ActiveCounter {
        ActiveCounter {
            shards: std::array::from_fn(|_| Shard(AtomicUsize::new(0))),
        }
    }

    #[inline]
    fn shard(&self, index: usize) -> &AtomicUsize {
        &self.shards[index % SHARDS].0
    }

    #[inline]
    fn enter(&self) -> usize {
        let index = thread_shard();
        self.shard(index).fetch_add(1, Ordering::SeqCst);
        index
    }

    #[inline]
    fn exit(&self, index: usize) {
        self.shard(index).fetch_sub(1, Ordering::SeqCst);
    }

    fn total(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.0.load(Ordering::SeqCst))
            .sum()
    }
}

/// This thread's shard, assigned round-robin on first use.
#[inline]
fn thread_shard() -> usize {
    const UNASSIGNED: usize = usize::MAX;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(UNASSIGNED) };
    }
    SHARD.with(|shard| {
        let mut index = shard.get();
        if index == UNASSIGNED {
            index = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            shard.set(index);
        }
        index
    })
}

/// One loaded version of an endpoint's handler.
pub(crate) struct Instance {
    pub(crate) endpoint: Arc<str>,
    pub(crate) version: u64,
    // Field order matters: the handler (and its library) is dropped before
    // the notice announces the unload.
    handler: LoadedHandler,
    active: ActiveCounter,
    draining: AtomicBool,
    signals: Arc<Signals>,
    /// `None` for a tombstone, which stands for no loaded handler.
    _unloaded: Option<UnloadNotice>,
}

impl Instance {
    pub(crate) fn new(
        endpoint: Arc<str>,
        version: u64,
        handler: LoadedHandler,
        signals: Arc<Signals>,
    ) -> Instance {
        Instance {
            endpoint,
            version,
            handler,
            active: ActiveCounter::new(),
            draining: AtomicBool::new(false),
            _unloaded: Some(UnloadNotice(Arc::clone(&signals))),
            signals,
        }
    }

    /// A draining placeholder that takes no request, put in place of a
    /// removed endpoint's last handler so that nothing still referring to
    /// the endpoint (a thread's cached endpoint map) keeps that handler
    /// loaded.
    pub(crate) fn tombstone(endpoint: Arc<str>, version: u64, signals: Arc<Signals>) -> Instance {
        let mut instance = Instance::new(
            endpoint,
            version,
            LoadedHandler::InProcess(Arc::new(Refuse)),
            signals,
        );
        instance._unloaded = None;
        instance.mark_draining();
        instance
    }

    /// Counts a request in, unless the instance is draining.
    ///
    /// Increment first, then read the flag; the drainer sets the flag first,
    /// then sums (R4). With both sides sequentially consistent, either this
    /// side sees the flag and backs out, or the drainer's sum sees the
    /// increment.
    #[inline]
    fn try_enter(&self) -> Option<usize> {
        let shard = self.active.enter();
        if self.draining.load(Ordering::SeqCst) {
            self.exit(shard);
            None
        } else {
            Some(shard)
        }
    }

    /// Counts a request out; the last one out of a draining instance rings
    /// the bell so that waiters (monitor, `remove`, `drain`) look again.
    #[inline]
    fn exit(&self, shard: usize) {
        self.active.exit(shard);
        if self.draining.load(Ordering::SeqCst) && self.active.total() == 0 {
            self.signals.bell.ring();
        }
    }

    pub(crate) fn mark_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub(crate) fn resume(&self) {
        self.draining.store(false, Ordering::SeqCst);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub(crate) fn active(&self) -> usize {
        self.active.total()
    }

    pub(crate) fn handler(&self) -> &LoadedHandler {
        &self.handler
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("endpoint", &self.endpoint)
            .field("version", &self.version)
            .field("active", &self.active())
            .field("draining", &self.is_draining())
            .finish()
    }
}

/// The handler of a tombstone; never called, since a tombstone is draining.
struct Refuse;

impl super::handler::Handler for Refuse {
    fn handle(&self, _ctx: &Context, _request: Request) -> Response {
        Response::new(503)
    }
}

/// Counts and announces an instance's unload once its handler is gone.
struct UnloadNotice(Arc<Signals>);

impl Drop for UnloadNotice {
    fn drop(&mut self) {
        self.0.unloaded.fetch_add(1, Ordering::SeqCst);
        self.0.bell.ring();
    }
}

/// A counted request on one handler version: the handler stays loaded at
/// least as long as this guard lives (R2), and the request stops counting
/// as active when the guard drops, also when a panic unwinds through it.
///
/// ```
/// use handoff::registry::{Context, HandlerRegistry, HandlerSource, Request, Response};
///
/// let registry = HandlerRegistry::new();
/// registry.insert("hello", HandlerSource::from_fn(|_ctx, _req| Response::text(200, "hi")))?;
/// let guard = registry.acquire("hello")?;
/// assert_eq!(registry.stats().active_requests, 1);
/// let response = guard.call(&Context::new("hello", 1), Request::new("GET", "/"))?;
/// assert_eq!(response.status, 200);
/// drop(guard);
/// assert_eq!(registry.stats().active_requests, 0);
/// # Ok::<(), handoff::Error>(())
/// ```
#[must_use = "the request counts as active only while the guard lives"]
pub struct HandlerGuard {
    instance: arc_swap::Guard<Arc<Instance>>,
    shard: usize,
}

impl HandlerGuard {
    /// Enters `instance` if it is not draining.
    #[inline]
    pub(crate) fn enter(
        instance: arc_swap::Guard<Arc<Instance>>,
    ) -> std::result::Result<HandlerGuard, arc_swap::Guard<Arc<Instance>>> {
        match instance.try_enter() {
            Some(shard) => Ok(HandlerGuard { instance, shard }),
            None => Err(instance),
        }
    }

    /// The endpoint id.
    pub fn endpoint(&self) -> &str {
        &self.instance.endpoint
    }

    /// The handler version this request runs on.
    pub fn version(&self) -> u64 {
        self.instance.version
    }

    /// Runs the handler. A panic gives [`Error::HandlerPanicked`] (answer
    /// 500); other handlers and requests are unaffected (R8).
    #[inline]
    pub fn call(&self, ctx: &Context, request: Request) -> Result<Response> {
        match self.instance.handler().call(ctx, request) {
            CallOutcome::Answered(response) => Ok(response),
            failed => Err(self.failure(failed)),
        }
    }

    #[cold]
    fn failure(&self, outcome: CallOutcome) -> Error {
        let (id, version) = (self.endpoint().to_owned(), self.version());
        match outcome {
            CallOutcome::Panicked(message) => Error::HandlerPanicked {
                id,
                version,
                message,
            },
            CallOutcome::Answered(_) | CallOutcome::NoResponse => {
                Error::HandlerBadResponse { id, version }
            }
        }
    }
}

impl Drop for HandlerGuard {
    #[inline]
    fn drop(&mut self) {
        self.instance.exit(self.shard);
    }
}

impl std::fmt::Debug for HandlerGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerGuard")
            .field("endpoint", &self.endpoint())
            .field("version", &self.version())
            .finish()
    }
}
