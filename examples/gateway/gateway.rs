//! The gateway: routes, endpoint records, the HTTP service, config reloads,
//! and the drain that makes it [`Drainable`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// While draining, how long a connection that has not sent a request yet
/// is given to send one before it is closed (it was accepted just before
/// the drain; its request may be on the wire).
const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(250);

use arc_swap::ArcSwap;
use handoff::registry::{
    Context, EndpointState, HandlerBuilder, HandlerRegistry, HandlerSource, LifecycleEvent,
    error_response,
};
use handoff::{DrainReport, Drainable, Fingerprint, SealInfo, SealProgress, Snapshot};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request as HyperRequest, Response as HyperResponse, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::config::{Change, Config, EndpointConfig, Route};
use crate::http::{self, Body};
use crate::prefixed::{Prefixed, Reuse, Tracked};

/// Locks a std mutex whatever a panicking holder left (each critical section
/// here leaves the data consistent).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where an endpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The config file.
    Config,
    /// The admin API.
    Admin,
}

/// What the gateway knows about one endpoint beyond the registry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointRecord {
    /// The lifecycle state.
    pub state: EndpointState,
    /// Where it came from.
    pub origin: Origin,
    /// Its route, once it has one.
    pub route: Option<Route>,
    /// Handler source put through the admin API.
    #[serde(skip)]
    pub source: Option<String>,
    /// The library built from `source`, not yet deployed.
    pub compiled: Option<PathBuf>,
    /// The last build or load error.
    pub last_error: Option<String>,
}

impl EndpointRecord {
    /// A record in state `Created`.
    pub fn new(origin: Origin) -> EndpointRecord {
        EndpointRecord {
            state: EndpointState::Created,
            origin,
            route: None,
            source: None,
            compiled: None,
            last_error: None,
        }
    }
}

/// A lifecycle event the endpoint's state does not take.
#[derive(Debug)]
pub struct Refused {
    /// The state.
    pub state: EndpointState,
    /// The event.
    pub event: LifecycleEvent,
}

impl EndpointRecord {
    /// Applies `event` to the state.
    pub fn apply(&mut self, event: LifecycleEvent) -> Result<(), Refused> {
        match self.state.on(event) {
            Some(next) => {
                self.state = next;
                Ok(())
            }
            None => Err(Refused {
                state: self.state,
                event,
            }),
        }
    }
}

/// The config file and what of it is applied.
struct ConfigState {
    path: PathBuf,
    applied: Config,
    applied_bytes: Vec<u8>,
}

/// State shared by the accept loop, connections, the admin API and the
/// drain.
pub struct Shared {
    pub registry: Arc<HandlerRegistry>,
    pub builder: HandlerBuilder,
    pub records: Mutex<BTreeMap<String, EndpointRecord>>,
    routes: ArcSwap<Vec<(String, Route)>>,
    config: Mutex<ConfigState>,
    /// Reload count, watched by admin long polls.
    pub reloads: watch::Sender<u64>,
    /// The public listener's accept loops, connections and requests.
    http: Door,
    /// The admin listener's: drained after the public one, so the admin
    /// API answers (status, stats) for as long as the drain allows.
    admin: Door,
    draining: AtomicBool,
    /// The drain under way hands idle connections over (I20) instead of
    /// closing them: responses then keep their connection open.
    handing_over: AtomicBool,
    /// The library's connection port, when supervised.
    port: OnceLock<handoff::ConnectionPort>,
    /// Rung when a door's `in_flight` or `connections` goes down.
    quieter: Notify,
    request_ids: AtomicU64,
}

/// One service's accept loops and what they let in. Every listener of the
/// gateway goes through a door, so a drain covers them all: a connection
/// accepted after the drain counted would be lost when this generation
/// exits, on the admin port as on the public one.
struct Door {
    /// Off while draining; the listeners stay open for a successor.
    accepting: watch::Sender<bool>,
    /// Accept loops started ([`Shared::serve_listener`]).
    loops: AtomicUsize,
    /// How many accept loops have seen `accepting` go false (and accept no
    /// more); each takes itself off when it accepts again.
    paused: watch::Sender<usize>,
    /// Set to close kept-alive connections at their request boundary.
    close_idle: watch::Sender<bool>,
    in_flight: AtomicUsize,
    connections: AtomicUsize,
}

impl Door {
    fn new() -> Door {
        Door {
            accepting: watch::Sender::new(true),
            loops: AtomicUsize::new(0),
            paused: watch::Sender::new(0),
            close_idle: watch::Sender::new(false),
            in_flight: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        }
    }

    fn reopen(&self) {
        self.close_idle.send_replace(false);
        self.accepting.send_replace(true);
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The routed endpoints.
    Http,
    /// The admin API (loopback peers only).
    Admin,
}

impl Service {
    /// The tag its connections travel with.
    fn tag(self) -> &'static str {
        match self {
            Service::Http => "http",
            Service::Admin => "admin",
        }
    }

    fn of_tag(tag: &str) -> Service {
        if tag == "admin" {
            Service::Admin
        } else {
            Service::Http
        }
    }
}

/// The future of one request's answer.
type Answer =
    Pin<Box<dyn std::future::Future<Output = Result<HyperResponse<Body>, Infallible>> + Send>>;

/// The gateway daemon.
pub struct Gateway {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
}

impl Gateway {
    /// A gateway with nothing loaded yet; call [`Shared::reload`] to apply
    /// the config.
    pub fn new(
        runtime: tokio::runtime::Handle,
        config_path: PathBuf,
        builder: HandlerBuilder,
    ) -> Gateway {
        let shared = Shared {
            registry: Arc::new(HandlerRegistry::new()),
            builder,
            records: Mutex::new(BTreeMap::new()),
            routes: ArcSwap::from_pointee(Vec::new()),
            config: Mutex::new(ConfigState {
                path: config_path,
                applied: Config::default(),
                applied_bytes: Vec::new(),
            }),
            reloads: watch::Sender::new(0),
            http: Door::new(),
            admin: Door::new(),
            draining: AtomicBool::new(false),
            handing_over: AtomicBool::new(false),
            port: OnceLock::new(),
            quieter: Notify::new(),
            request_ids: AtomicU64::new(0),
        };
        Gateway {
            shared: Arc::new(shared),
            runtime,
        }
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// Decrements a counter and rings `quieter` when dropped.
struct Counted<'a> {
    counter: &'a AtomicUsize,
    quieter: &'a Notify,
}

impl<'a> Counted<'a> {
    fn new(counter: &'a AtomicUsize, quieter: &'a Notify) -> Counted<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        Counted { counter, quieter }
    }

    /// Takes over a count already added (by the accept loop, so that a
    /// connection counts from the moment it is accepted, not from the
    /// moment its task first runs: a drain must not miss it).
    fn adopt(counter: &'a AtomicUsize, quieter: &'a Notify) -> Counted<'a> {
        Counted { counter, quieter }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
        self.quieter.notify_waiters();
    }
}

impl Shared {
    /// Rebuilds the route table from the records.
    pub fn publish_routes(&self, records: &BTreeMap<String, EndpointRecord>) {
        let mut routes: Vec<(String, Route)> = records
            .iter()
            .filter_map(|(id, record)| Some((id.clone(), record.route.clone()?)))
            .collect();
        // Longest prefix first; a host-specific route before a host-less one.
        routes.sort_by(|(_, left), (_, right)| {
            right
                .path_prefix
                .len()
                .cmp(&left.path_prefix.len())
                .then(right.host.is_some().cmp(&left.host.is_some()))
        });
        self.routes.store(Arc::new(routes));
    }

    /// Reads the config file and applies what changed (blocking: loads
    /// libraries). Removals drain in the background. Returns the changes.
    pub fn reload(self: &Arc<Self>) -> Result<Vec<String>, String> {
        let mut config = lock(&self.config);
        let bytes = std::fs::read(&config.path)
            .map_err(|error| format!("cannot read {}: {error}", config.path.display()))?;
        if bytes == config.applied_bytes {
            return Ok(Vec::new());
        }
        if bytes.is_empty() {
            // Most likely a writer that truncated the file and has not
            // written it yet; applying it would drop every endpoint. Write
            // configs atomically (to a temporary file, then rename).
            return Err("the config file is empty; keeping the applied config".to_owned());
        }
        let text =
            String::from_utf8(bytes.clone()).map_err(|_| "the config is not UTF-8".to_owned())?;
        let base = config.path.parent().map(Path::to_owned).unwrap_or_default();
        let next = Config::parse(&text, &base)?;
        let changes = config.applied.changes_to(&next);
        let mut applied = Vec::new();
        for change in changes {
            applied.push(self.apply(change, next.drain_timeout));
        }
        config.applied = next;
        config.applied_bytes = bytes;
        drop(config);
        self.reloads.send_modify(|count| *count += 1);
        Ok(applied)
    }

    fn apply(self: &Arc<Self>, change: Change, drain_timeout: Duration) -> String {
        match change {
            Change::Added(endpoint) | Change::Changed(endpoint) => {
                self.load_configured(endpoint, drain_timeout)
            }
            Change::Removed(id) => {
                self.start_removal(&id, drain_timeout);
                format!("{id}: draining")
            }
        }
    }

    fn load_configured(&self, endpoint: EndpointConfig, drain_timeout: Duration) -> String {
        let id = endpoint.id.clone();
        let source = HandlerSource::library(&endpoint.library);
        let outcome = self.deploy(
            &id,
            source,
            drain_timeout,
            Origin::Config,
            Some(endpoint.route),
        );
        match outcome {
            Ok(description) => format!("{id}: {description}"),
            Err(error) => format!("{id}: {error}"),
        }
    }

    /// Loads or swaps `id`'s handler and records the outcome; on failure
    /// whatever served before keeps serving.
    pub fn deploy(
        &self,
        id: &str,
        source: HandlerSource,
        drain_timeout: Duration,
        origin: Origin,
        route: Option<Route>,
    ) -> Result<serde_json::Value, handoff::Error> {
        let result = if self.registry.contains(id) {
            self.registry
                .swap_graceful(id, source, drain_timeout)
                .map(|outcome| serde_json::to_value(outcome).unwrap_or_default())
        } else {
            self.registry
                .insert(id, source)
                .map(|version| serde_json::json!({ "endpoint": id, "new_version": version }))
        };
        let mut records = lock(&self.records);
        let record = records
            .entry(id.to_owned())
            .or_insert_with(|| EndpointRecord::new(origin));
        let event = match &result {
            Ok(_) => {
                record.last_error = None;
                record.compiled = None;
                if let Some(route) = route {
                    record.route = Some(route);
                }
                LifecycleEvent::LoadSucceeded
            }
            Err(error) => {
                tracing::warn!(endpoint = id, %error, "load failed; the previous handler keeps serving");
                record.last_error = Some(error.to_string());
                LifecycleEvent::LoadFailed
            }
        };
        if let Err(refused) = record.apply(event) {
            tracing::warn!(endpoint = id, state = %refused.state, event = ?refused.event, "lifecycle event ignored");
        }
        self.publish_routes(&records);
        result
    }

    /// Marks `id` draining and removes it in the background: requests get
    /// 503 until its running requests finish, then 404.
    pub fn start_removal(self: &Arc<Self>, id: &str, drain_timeout: Duration) {
        {
            let mut records = lock(&self.records);
            let Some(record) = records.get_mut(id) else {
                return;
            };
            if record.apply(LifecycleEvent::RemoveStarted).is_err() {
                // Never loaded (or already draining): nothing to drain.
                if record.state != EndpointState::Draining {
                    records.remove(id);
                    self.publish_routes(&records);
                }
                return;
            }
        }
        // Marked draining before this returns: from now on requests get the
        // registry's 503. The wait for running requests happens off the
        // runtime's workers; the route stays until then.
        let removal = match self.registry.begin_remove(id) {
            Ok(removal) => removal,
            Err(error) => {
                // Not in the registry (or already being removed there):
                // nothing to wait for; forget the record.
                tracing::warn!(endpoint = id, %error, "removal refused by the registry");
                let mut records = lock(&self.records);
                records.remove(id);
                self.publish_routes(&records);
                return;
            }
        };
        let shared = Arc::clone(self);
        let id = id.to_owned();
        std::thread::spawn(move || {
            let outcome = shared.registry.finish_remove(removal, drain_timeout);
            tracing::info!(endpoint = %id, drained = outcome.drained, "endpoint removed");
            let mut records = lock(&shared.records);
            records.remove(&id);
            shared.publish_routes(&records);
        });
    }

    fn route(&self, host: Option<&str>, path: &str) -> Option<(String, Duration)> {
        self.routes
            .load()
            .iter()
            .find(|(_, route)| route.matches(host, path))
            .map(|(id, route)| (id.clone(), route.timeout))
    }

    /// Serves one request of either service.
    async fn serve(
        self: Arc<Self>,
        service: Service,
        request: HyperRequest<Tracked>,
    ) -> Result<HyperResponse<Body>, Infallible> {
        let _in_flight = Counted::new(&self.door(service).in_flight, &self.quieter);
        // While draining, a request on a connection this generation already
        // accepted is still served (failing it would lose a request that a
        // successor could not see); its connection closes after the
        // response, so the client's next request goes to the listener.
        let mut response = match service {
            Service::Http => self.route_request(request).await,
            Service::Admin => crate::admin::handle(Arc::clone(&self), request).await,
        };
        if self.draining.load(Ordering::SeqCst) && !self.handing_over.load(Ordering::SeqCst) {
            // Close kept-alive connections at this request boundary.
            http::close_after(&mut response);
        }
        Ok(response)
    }

    /// Routes one public request to its endpoint.
    async fn route_request(&self, request: HyperRequest<Tracked>) -> HyperResponse<Body> {
        let host = http::host(&request);
        match self.route(host.as_deref(), request.uri().path()) {
            Some((id, timeout)) => self.call_handler(id, timeout, request).await,
            None => http::json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": "no route", "path": request.uri().path() }),
            ),
        }
    }

    /// Reads the request, then runs it on the endpoint's current handler.
    async fn call_handler(
        &self,
        id: String,
        timeout: Duration,
        request: HyperRequest<Tracked>,
    ) -> HyperResponse<Body> {
        let request = match http::read_request(request).await {
            Ok(request) => request,
            Err(response) => return response,
        };
        // Acquired only once the body is in: a slow client does not hold a
        // handler version (nor delay its drain).
        let guard = match self.registry.acquire(&id) {
            Ok(guard) => guard,
            Err(error) => return http::to_hyper(error_response(&error)),
        };
        let ctx = Context::new(id.clone(), self.request_ids.fetch_add(1, Ordering::Relaxed));
        // The guard moves into the blocking task: past the timeout the call
        // goes on there, and its library stays loaded until it returns.
        let call = tokio::task::spawn_blocking(move || guard.call(&ctx, request));
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(Ok(response))) => http::to_hyper(response),
            Ok(Ok(Err(error))) => {
                tracing::warn!(endpoint = %id, %error, "handler failed");
                http::to_hyper(error_response(&error))
            }
            Ok(Err(join_error)) => http::json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({ "error": "handler task failed", "detail": join_error.to_string() }),
            ),
            Err(_) => http::json(
                StatusCode::GATEWAY_TIMEOUT,
                &serde_json::json!({ "error": "handler timed out", "endpoint": id }),
            ),
        }
    }

    /// Serves `service` on `listener` from now on: accepts connections
    /// while accepting is on, and pauses for a drain (the listener stays
    /// open while paused: a successor inherits it). Every listener of the
    /// gateway goes through here, so a drain covers them all: an admin
    /// connection accepted after the drain counted would be lost when this
    /// generation exits just as a public one would.
    pub fn serve_listener(self: &Arc<Self>, listener: TcpListener, service: Service) {
        // Counted before the task exists, so a drain that starts before the
        // task first runs still waits for it to pause.
        self.door(service).loops.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(Arc::clone(self).accept_loop(listener, service));
    }

    fn door(&self, service: Service) -> &Door {
        match service {
            Service::Http => &self.http,
            Service::Admin => &self.admin,
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, service: Service) {
        let door = self.door(service);
        let mut accepting = door.accepting.subscribe();
        let mut paused = false;
        loop {
            if !*accepting.borrow_and_update() {
                // Paused: tell the drain, which counts connections only
                // once no accept can race with its count.
                if !paused {
                    paused = true;
                    door.paused.send_modify(|count| *count += 1);
                }
                if accepting.changed().await.is_err() {
                    return;
                }
                continue;
            }
            if paused {
                paused = false;
                door.paused.send_modify(|count| *count -= 1);
            }
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if service == Service::Admin && !peer.ip().is_loopback() {
                            tracing::warn!(%peer, "admin connection from a non-loopback peer refused");
                            continue;
                        }
                        // Counted now; the task adopts the count.
                        door.connections.fetch_add(1, Ordering::SeqCst);
                        let io = Prefixed::accepted(stream);
                        tokio::spawn(Arc::clone(&self).connection(io, service, true));
                    }
                    Err(error) => tracing::warn!(%error, ?service, "accept failed"),
                },
                changed = accepting.changed() => if changed.is_err() { return },
            }
        }
    }

    async fn connection(self: Arc<Self>, io: Prefixed, service: Service, may_travel: bool) {
        let shared = Arc::clone(&self);
        let counted = Counted::adopt(&shared.door(service).connections, &shared.quieter);
        let served = Arc::new(AtomicBool::new(false));
        let read_any = Arc::clone(&io.read_any);
        // This connection's requests in flight, and a bell when it is idle.
        let busy = Arc::new((AtomicUsize::new(0), Notify::new()));
        let reuse = Arc::new(Reuse::default());
        let hyper_service = {
            let (served, busy, reuse) =
                (Arc::clone(&served), Arc::clone(&busy), Arc::clone(&reuse));
            service_fn(move |request| {
                served.store(true, Ordering::SeqCst);
                let request = reuse.request(request);
                busy.0.fetch_add(1, Ordering::SeqCst);
                let (shared, busy, reuse) =
                    (Arc::clone(&self), Arc::clone(&busy), Arc::clone(&reuse));
                // Boxed: hyper's connection must be `Unpin` to stop between
                // requests and give the socket back.
                let answer: Answer = Box::pin(async move {
                    let mut response = shared.serve(service, request).await;
                    if let Ok(response) = &mut response {
                        reuse.response(response);
                    }
                    if busy.0.fetch_sub(1, Ordering::SeqCst) == 1 {
                        busy.1.notify_one();
                    }
                    response
                });
                answer
            })
        };
        let mut connection =
            http1::Builder::new().serve_connection(TokioIo::new(io), hyper_service);
        let mut close_idle = shared.door(service).close_idle.subscribe();
        tokio::select! {
            result = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => {
                return shared.end(connection, result, counted).await;
            }
            _ = async { close_idle.wait_for(|close| *close).await.is_ok() } => {}
        }
        // Hand it over at its next request boundary when the supervisor
        // takes it: responses keep connections open while handing over, so
        // a request may have come in since the door's count was zero. A
        // first request begun and not dispatched yet is waited for too:
        // stopped now, hyper would serve it and close the connection.
        let travels = may_travel && shared.handing_over.load(Ordering::SeqCst);
        let first_begun = || !served.load(Ordering::SeqCst) && read_any.load(Ordering::SeqCst);
        while travels && (busy.0.load(Ordering::SeqCst) > 0 || first_begun()) {
            tokio::select! {
                result = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => {
                    return shared.end(connection, result, counted).await;
                }
                _ = busy.1.notified() => {}
            }
        }
        // A connection accepted just before the drain may not have sent its
        // first request yet: closing it now would fail a request nobody else
        // can serve. Give it the idle grace to arrive (it is then served,
        // with `Connection: close`).
        if !travels && !served.load(Ordering::SeqCst) {
            let first = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx));
            if let Ok(result) = tokio::time::timeout(DRAIN_IDLE_GRACE, first).await {
                return shared.end(connection, result, counted).await;
            }
        }
        reuse.stopping();
        Pin::new(&mut connection).graceful_shutdown();
        let result = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)).await;
        // hyper stops at a request boundary also when an exchange ended the
        // connection: such a one is closed, never handed over.
        if travels && result.is_ok() && reuse.reusable() {
            let parts = connection.into_parts();
            let (stream, unread) = parts.io.into_inner().leftover(&parts.read_buf);
            return shared.hand_over(stream, unread, service, counted);
        }
        shared.end(connection, result, counted).await;
    }

    /// A connection that stopped: closed (its socket shut down).
    async fn end(
        &self,
        connection: http1::Connection<
            TokioIo<Prefixed>,
            impl hyper::service::Service<
                HyperRequest<Incoming>,
                Response = HyperResponse<Body>,
                Error = Infallible,
                Future = Answer,
            >,
        >,
        result: hyper::Result<()>,
        _counted: Counted<'_>,
    ) {
        if let Err(error) = result {
            tracing::debug!(%error, "connection ended with an error");
        }
        let mut stream = connection.into_parts().io.into_inner().stream;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
    }

    /// Passes a connection stopped at a request boundary to the library;
    /// one it cannot take is served on here, to close the old way.
    fn hand_over(
        self: &Arc<Self>,
        stream: tokio::net::TcpStream,
        unread: Vec<u8>,
        service: Service,
        counted: Counted<'_>,
    ) {
        let (Some(port), Ok(stream)) = (self.port.get(), stream.into_std()) else {
            return;
        };
        let connection = handoff::Connection {
            fd: stream.into(),
            unread,
            tag: service.tag().into(),
        };
        if let Err(refused) = port.hand_over(connection)
            && let Ok(io) = Prefixed::from_fd(refused.fd, refused.unread)
        {
            // The count goes with it to its new task.
            std::mem::forget(counted);
            tokio::spawn(Arc::clone(self).connection(io, service, false));
        }
    }

    /// Serves the connections the library hands this generation (from its
    /// predecessor) as if accepted here. Call once, before serving.
    pub fn serve_arrivals(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        port: handoff::ConnectionPort,
    ) {
        let arrivals = port.arrivals().clone();
        if self.port.set(port).is_err() {
            return;
        }
        let (shared, runtime) = (Arc::clone(self), runtime.clone());
        std::thread::spawn(move || {
            for arrival in arrivals.iter() {
                let handoff::Connection { fd, unread, tag } = arrival.connection;
                let service = Service::of_tag(&tag);
                let may_travel = arrival.origin == handoff::Origin::Transferred;
                let _context = runtime.enter();
                let Ok(io) = Prefixed::from_fd(fd, unread) else {
                    continue;
                };
                // Counted now; the task adopts the count.
                shared
                    .door(service)
                    .connections
                    .fetch_add(1, Ordering::SeqCst);
                runtime.spawn(Arc::clone(&shared).connection(io, service, may_travel));
            }
        });
    }

    /// Closes `door` and waits (until `deadline`) for its connections to
    /// end; how many are still open.
    async fn drain_door(&self, door: &Door, deadline: tokio::time::Instant) -> usize {
        door.accepting.send_replace(false);
        // Wait until every accept loop has seen it: a connection accepted
        // in between must be counted before the counts below are read.
        let loops = door.loops.load(Ordering::SeqCst);
        let mut paused = door.paused.subscribe();
        let _ = tokio::time::timeout_at(deadline, paused.wait_for(|paused| *paused >= loops)).await;
        self.wait_quiet(&door.in_flight, deadline).await;
        door.close_idle.send_replace(true);
        self.wait_quiet(&door.connections, deadline).await
    }

    async fn wait_quiet(&self, counter: &AtomicUsize, deadline: tokio::time::Instant) -> usize {
        loop {
            let quieter = self.quieter.notified();
            let count = counter.load(Ordering::SeqCst);
            if count == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, quieter).await.is_err() {
                return counter.load(Ordering::SeqCst);
            }
        }
    }

    /// The drain: stop accepting; serve requests on connections already
    /// accepted with `Connection: close`; let requests in flight finish
    /// (their responses close their connections); then close the idle
    /// kept-alive connections at their request boundary; finally drain the
    /// handlers. The public door first, then the admin one, so the admin API
    /// reports on the drain while it runs.
    pub async fn drain(&self, deadline: Instant) -> DrainReport {
        let tokio_deadline = tokio::time::Instant::from_std(deadline);
        // Draining before not accepting: whoever sees the gateway not
        // accepting also sees it draining.
        let budget = self.port.get().map_or(0, |port| port.budget());
        self.handing_over.store(budget > 0, Ordering::SeqCst);
        self.draining.store(true, Ordering::SeqCst);
        let open = self.drain_door(&self.http, tokio_deadline).await
            + self.drain_door(&self.admin, tokio_deadline).await;
        let registry = Arc::clone(&self.registry);
        let handlers = tokio::task::spawn_blocking(move || registry.drain_all(deadline)).await;
        let handlers_open = handlers.map_or(0, |report| report.open_connections);
        tracing::info!(
            open_connections = open,
            handler_requests = handlers_open,
            "gateway drained"
        );
        DrainReport {
            open_connections: u32::try_from(open).unwrap_or(u32::MAX),
            accept_closed: true,
        }
    }

    /// Undoes [`Shared::drain`] after an aborted handoff.
    pub fn resume(&self) {
        self.registry.resume();
        self.draining.store(false, Ordering::SeqCst);
        self.handing_over.store(false, Ordering::SeqCst);
        self.admin.reopen();
        self.http.reopen();
    }

    /// The drain timeout of replaced and removed endpoints (from the
    /// config).
    pub fn drain_timeout(&self) -> Duration {
        lock(&self.config).applied.drain_timeout
    }

    /// Nothing durable: the seal is the fingerprint of the applied config.
    pub fn seal_info(&self) -> SealInfo {
        let config = lock(&self.config);
        SealInfo {
            revisions: *self.reloads.borrow(),
            fingerprint: Fingerprint::of_bytes(&config.applied_bytes),
        }
    }

    /// Watches the config file: reads it every [`crate::config::CONFIG_POLL`]
    /// and reloads when its bytes changed.
    pub async fn watch_config(self: Arc<Self>) {
        let mut interval = tokio::time::interval(crate::config::CONFIG_POLL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let shared = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || shared.reload()).await {
                Ok(Ok(changes)) if !changes.is_empty() => {
                    tracing::info!(?changes, "config reloaded")
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "config not applied"),
                Err(error) => tracing::warn!(%error, "config reload task failed"),
            }
        }
    }

    /// Connections and requests now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            open_connections: u32::try_from(
                self.http.connections.load(Ordering::SeqCst)
                    + self.admin.connections.load(Ordering::SeqCst),
            )
            .unwrap_or(u32::MAX),
            in_flight: u32::try_from(
                self.http.in_flight.load(Ordering::SeqCst)
                    + self.admin.in_flight.load(Ordering::SeqCst),
            )
            .unwrap_or(u32::MAX),
            revisions: *self.reloads.borrow(),
            accepting: *self.http.accepting.borrow(),
        }
    }
}

/// The gateway as a daemon `handoffctl` can upgrade: its hooks run on the
/// library's hook thread and drive the async drain on the gateway's runtime.
impl Drainable for Gateway {
    type Error = std::io::Error;

    fn drain(&mut self, deadline: Instant) -> Result<DrainReport, Self::Error> {
        Ok(self.runtime.block_on(self.shared.drain(deadline)))
    }

    fn seal(&mut self, _progress: &mut SealProgress) -> Result<SealInfo, Self::Error> {
        Ok(self.shared.seal_info())
    }

    fn resume_after_abort(&mut self) -> Result<(), Self::Error> {
        self.shared.resume();
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        self.shared.snapshot()
    }
}
