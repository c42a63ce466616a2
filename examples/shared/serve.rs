//! Shared by `kvd` and `echod`: an HTTP/1.1 server on tokio and hyper whose
//! connections drain at a request boundary, and the bridge from the
//! library's synchronous [`handoff::Drainable`] hooks to it.
//!
//! # Draining kept-alive connections with zero failures
//!
//! HTTP/1.1 gives a server no way to close an idle kept-alive connection
//! without racing a client that sends on it at that instant (the client
//! sees EOF or a reset for a request the server never read). So a drain
//! never closes an idle connection while another generation can take it:
//!
//! 1. [`Phase::Draining`] with a connection budget (the supervisor gave
//!    one, I20): stop accepting; each connection is handed over at its next
//!    request boundary (at once when it is idle; after its answer when its
//!    first request has begun to arrive, which hyper would otherwise serve
//!    and close): hyper stops between two requests and gives back the
//!    socket and the bytes it read and did not parse, and the library
//!    passes both on. The client notices nothing, and bytes it sends
//!    meanwhile wait in the kernel. A connection the library cannot take
//!    drains the old way (below).
//! 2. [`Phase::Draining`] without a budget (a stop by signal, a supervisor
//!    or successor that does not take connections): a request on an open
//!    connection is still served (the incumbent owns the state until its
//!    seal) but its response carries `Connection: close`, so hyper closes
//!    the connection after it and the client reconnects, to the shared
//!    listener. A connection idle for [`DRAIN_IDLE_GRACE`] is closed at that
//!    request boundary.
//! 3. [`Phase::Closed`] (after the seal, or past the drain deadline): every
//!    connection still open is shut down at its next request boundary, and
//!    a request that still arrives is answered `503` with `Retry-After` and
//!    `Connection: close`. This path is for stragglers only.
//!
//! Connections and requests are counted by RAII guards into a
//! [`tokio::sync::watch`] channel, so a drain waits for "no connection
//! left" without polling. Connections handed to this generation (by its
//! predecessor, or back after a rollback) are served as if accepted.
//!
//! # Bridging the sync hooks
//!
//! The library calls the `Drainable` hooks on a thread of its own, never on
//! a runtime worker, so the hooks block on the runtime with
//! [`tokio::runtime::Handle::block_on`]. Calling `block_on` from a worker
//! thread would panic; these helpers must only be called from hook threads
//! or `main`.
//!
//! # Hazard: the listener's blocking mode
//!
//! [`tokio::net::TcpListener::from_std`] needs the socket non-blocking and
//! the daemon sets `O_NONBLOCK` on the inherited listener. The flag belongs to
//! the socket, shared by every process holding it; that is fine because every
//! generation of these daemons does the same. A daemon that accepts with
//! blocking calls must not share a listener with one of these.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::prefixed::{Prefixed, Reuse, Tracked};

/// How long a kept-alive connection may stay idle during a drain before it
/// is closed. Longer than the request interval of any regular client, so
/// that a client sending regularly gets its `Connection: close` on a
/// response instead of racing a close.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(250);

/// The `Retry-After` value (seconds) of a 503 answered while sealed.
pub const RETRY_AFTER_SECONDS: &str = "1";

/// What the server does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepting and serving.
    Serving,
    /// Not accepting; requests on open connections are served with
    /// `Connection: close`; idle connections close after the grace.
    Draining,
    /// Not accepting; open connections close at their next request
    /// boundary; requests are answered 503.
    Closed,
}

/// A response body.
pub type Body = Full<Bytes>;

/// The future of one request's response (boxed: hyper's connection must be
/// `Unpin` to stop between requests).
type Answer = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// The daemon's request handler.
pub type Handler = Arc<
    dyn Fn(Request<Tracked>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// A response with a plain-text or JSON body.
pub fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

/// The 503 of a server that cannot take this request now.
pub fn unavailable() -> Response<Body> {
    let mut response = respond(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The connection and request accounting of one server.
pub struct Server {
    phase: watch::Sender<Phase>,
    connections: watch::Sender<u32>,
    in_flight: AtomicU32,
    /// Accept loops running.
    accept_loops: AtomicU32,
    /// Accept loops that saw the phase leave [`Phase::Serving`] and accept
    /// no more: once every loop is counted here, every connection accepted
    /// before the drain is in `connections`.
    paused_loops: watch::Sender<u32>,
    /// The library's connection port, when the daemon takes part.
    port: OnceLock<handoff::ConnectionPort>,
    /// Whether the drain under way hands connections over (set before the
    /// phase changes, so every connection task sees it with the phase).
    handing_over: AtomicBool,
}

/// Counts one open connection while alive.
struct ConnectionGuard(Arc<Server>);

impl ConnectionGuard {
    fn new(server: &Arc<Server>) -> Self {
        server.connections.send_modify(|count| *count += 1);
        ConnectionGuard(Arc::clone(server))
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.send_modify(|count| *count -= 1);
    }
}

/// What a connection task needs to know to stop at a request boundary.
struct Activity {
    in_flight: AtomicU32,
    last: Mutex<Instant>,
    /// Woken when the last request in flight on the connection finished.
    idle: Notify,
    /// Whether the connection, stopped, may be handed over.
    reuse: Reuse,
    /// Whether any request was dispatched on the connection.
    served_any: AtomicBool,
    /// Whether any byte was read from it (shared with its [`Prefixed`]).
    read_any: Arc<AtomicBool>,
}

impl Activity {
    /// A first request begun and not dispatched yet: hyper, asked to stop
    /// now, would serve it and close (`Connection: close`, a reconnect);
    /// waited for, it ends at a boundary the connection can cross.
    fn first_request_begun(&self) -> bool {
        !self.served_any.load(Ordering::SeqCst) && self.read_any.load(Ordering::SeqCst)
    }
}

/// Counts one request in flight, on its connection and on the server.
struct RequestGuard {
    server: Arc<Server>,
    activity: Arc<Activity>,
}

impl RequestGuard {
    fn new(server: &Arc<Server>, activity: &Arc<Activity>) -> Self {
        activity.served_any.store(true, Ordering::SeqCst);
        server.in_flight.fetch_add(1, Ordering::SeqCst);
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        RequestGuard {
            server: Arc::clone(server),
            activity: Arc::clone(activity),
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        *self.activity.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        if self.activity.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.activity.idle.notify_one();
        }
        self.server.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a connection task ends its connection during a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Serving on.
    Open,
    /// hyper stops at the request boundary; the socket is handed over.
    HandOver,
    /// hyper stops at the request boundary; the socket is closed.
    Close,
}

/// The tag of the connections this server hands over.
const TAG: &str = "http";

impl Server {
    /// A server in [`Phase::Serving`].
    pub fn new() -> Arc<Server> {
        Arc::new(Server {
            phase: watch::Sender::new(Phase::Serving),
            connections: watch::Sender::new(0),
            in_flight: AtomicU32::new(0),
            accept_loops: AtomicU32::new(0),
            paused_loops: watch::Sender::new(0),
            port: OnceLock::new(),
            handing_over: AtomicBool::new(false),
        })
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Moves to `phase`; every connection task and the accept loop notice.
    pub fn set_phase(&self, phase: Phase) {
        if phase == Phase::Serving {
            self.handing_over.store(false, Ordering::SeqCst);
        }
        self.phase.send_replace(phase);
    }

    /// Open client connections.
    pub fn open_connections(&self) -> u32 {
        *self.connections.borrow()
    }

    /// Requests being served.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Accepts while the phase is [`Phase::Serving`] and serves each
    /// connection on its own task. Never returns; the listener stays open
    /// while not accepting, so a resumed server accepts again.
    ///
    /// A connection is counted the moment it is accepted, in the same poll
    /// of this task, and the loop confirms a pause only between accepts: a
    /// drain that waits for every loop's confirmation before it reads the
    /// count cannot miss a connection accepted as it started (one counted
    /// only once its own task ran would be shut down unanswered after the
    /// seal).
    pub async fn accept_loop(self: Arc<Self>, listener: TcpListener, handler: Handler) {
        self.accept_loops.fetch_add(1, Ordering::SeqCst);
        let mut phase = self.phase.subscribe();
        loop {
            if *phase.borrow_and_update() != Phase::Serving {
                self.paused_loops.send_modify(|paused| *paused += 1);
                let resumed = phase.wait_for(|p| *p == Phase::Serving).await.is_ok();
                self.paused_loops.send_modify(|paused| *paused -= 1);
                if !resumed {
                    return;
                }
                continue;
            }
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let counted = ConnectionGuard::new(&self);
                        let _ = stream.set_nodelay(true);
                        let io = Prefixed::accepted(stream);
                        self.spawn_connection(io, counted, &handler, true);
                    }
                    // EMFILE and the like: back off a moment rather than spin.
                    Err(_) => tokio::time::sleep(handoff::timeouts::POLL_SLICE).await,
                },
                _ = phase.changed() => {}
            }
        }
    }

    /// Serves the connections the library hands this generation (from its
    /// predecessor, or back after a rollback) as if accepted here, and
    /// hands this generation's own over in its drains. Call once, after
    /// `ready()` (exclusive mode: nothing is served before the commit).
    pub fn serve_arrivals(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        port: handoff::ConnectionPort,
        handler: Handler,
    ) {
        let arrivals = port.arrivals().clone();
        if self.port.set(port).is_err() {
            return;
        }
        let (server, runtime) = (Arc::clone(self), runtime.clone());
        std::thread::spawn(move || {
            for arrival in arrivals.iter() {
                let handoff::Connection { fd, unread, .. } = arrival.connection;
                let may_travel = arrival.origin == handoff::Origin::Transferred;
                let _context = runtime.enter();
                let Ok(io) = Prefixed::from_fd(fd, unread) else {
                    continue;
                };
                let counted = ConnectionGuard::new(&server);
                server.spawn_connection(io, counted, &handler, may_travel);
            }
        });
    }

    fn spawn_connection(
        self: &Arc<Self>,
        io: Prefixed,
        counted: ConnectionGuard,
        handler: &Handler,
        may_travel: bool,
    ) {
        let task: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(
            Arc::clone(self).serve_connection(io, counted, Arc::clone(handler), may_travel),
        );
        tokio::spawn(task);
    }

    /// The service of one connection: the handler, with the phase's
    /// `Connection: close` and 503.
    fn service(
        self: &Arc<Self>,
        activity: &Arc<Activity>,
        handler: Handler,
        may_travel: bool,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future = Answer,
    > + Unpin
    + use<> {
        let (server, activity) = (Arc::clone(self), Arc::clone(activity));
        hyper::service::service_fn(move |request| {
            let request = activity.reuse.request(request);
            let guard = RequestGuard::new(&server, &activity);
            let activity = Arc::clone(&activity);
            let server = Arc::clone(&server);
            let handler = Arc::clone(&handler);
            let future: Answer = Box::pin(async move {
                if server.phase() == Phase::Closed {
                    let mut response = unavailable();
                    activity.reuse.response(&mut response);
                    drop(guard);
                    return Ok::<_, Infallible>(response);
                }
                let mut response = handler(request).await;
                let travels = may_travel && server.handing_over.load(Ordering::SeqCst);
                if server.phase() != Phase::Serving && !travels {
                    // hyper closes the connection after a response
                    // carrying `Connection: close`.
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                activity.reuse.response(&mut response);
                drop(guard);
                Ok(response)
            });
            future
        })
    }

    async fn serve_connection(
        self: Arc<Self>,
        io: Prefixed,
        counted: ConnectionGuard,
        handler: Handler,
        may_travel: bool,
    ) {
        let activity = Arc::new(Activity {
            in_flight: AtomicU32::new(0),
            last: Mutex::new(Instant::now()),
            idle: Notify::new(),
            reuse: Reuse::default(),
            served_any: AtomicBool::new(false),
            read_any: Arc::clone(&io.read_any),
        });
        let service = self.service(&activity, Arc::clone(&handler), may_travel);
        let mut connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(io), service);
        let mut phase = self.phase.subscribe();
        let mut ending = Ending::Open;
        let result = loop {
            let wake = match *phase.borrow_and_update() {
                Phase::Serving => None,
                _ if ending != Ending::Open => None,
                Phase::Draining => {
                    let travels = may_travel && self.handing_over.load(Ordering::SeqCst);
                    let (next, wake) = boundary(&activity, travels);
                    if next != Ending::Open {
                        activity.reuse.stopping();
                        Pin::new(&mut connection).graceful_shutdown();
                        ending = next;
                    }
                    wake
                }
                Phase::Closed => {
                    activity.reuse.stopping();
                    Pin::new(&mut connection).graceful_shutdown();
                    ending = Ending::Close;
                    None
                }
            };
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                done = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => break done,
                changed = phase.changed() => if changed.is_err() { return },
                _ = activity.idle.notified() => {}
                _ = sleep => {}
            }
        };
        let parts = connection.into_parts();
        let io = parts.io.into_inner();
        // hyper stops at a request boundary also when an exchange ended the
        // connection: such a one is closed, never handed over.
        if result.is_err() || ending != Ending::HandOver || !activity.reuse.reusable() {
            let mut stream = io.stream;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            return;
        }
        let (stream, unread) = io.leftover(&parts.read_buf);
        self.hand_over(stream, unread, counted, &handler);
    }

    /// Passes a connection stopped at a request boundary to the library;
    /// one it cannot take is served on here, to drain the old way.
    fn hand_over(
        self: &Arc<Self>,
        stream: TcpStream,
        unread: Vec<u8>,
        counted: ConnectionGuard,
        handler: &Handler,
    ) {
        let Some(port) = self.port.get() else {
            return;
        };
        let Ok(std_stream) = stream.into_std() else {
            return;
        };
        let connection = handoff::Connection {
            fd: std_stream.into(),
            unread,
            tag: TAG.into(),
        };
        if let Err(refused) = port.hand_over(connection)
            && let Ok(io) = Prefixed::from_fd(refused.fd, refused.unread)
        {
            self.spawn_connection(io, counted, handler, false);
        }
    }

    /// Waits until every accept loop confirmed it accepts no more, or
    /// `deadline`; true if they all did.
    pub async fn wait_paused(&self, deadline: Instant) -> bool {
        let loops = self.accept_loops.load(Ordering::SeqCst);
        let mut paused = self.paused_loops.subscribe();
        tokio::time::timeout_at(deadline.into(), paused.wait_for(|p| *p >= loops))
            .await
            .is_ok()
    }

    /// Waits until no connection is open, or `deadline`; true if none is.
    pub async fn wait_closed(&self, deadline: Instant) -> bool {
        let mut connections = self.connections.subscribe();
        tokio::time::timeout_at(deadline.into(), connections.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }

    /// The drain, from a thread outside the runtime (the hook thread, or
    /// `main` on SIGTERM): stop accepting, hand idle connections over (when
    /// the supervisor gave a budget) or let them finish, and past
    /// `deadline` close what is left at its next request boundary.
    pub fn drain_blocking(
        &self,
        runtime: &tokio::runtime::Handle,
        deadline: Instant,
    ) -> handoff::DrainReport {
        let budget = self.port.get().map_or(0, |port| port.budget());
        self.handing_over.store(budget > 0, Ordering::SeqCst);
        self.set_phase(Phase::Draining);
        let quiet = runtime.block_on(async {
            self.wait_paused(deadline).await && self.wait_closed(deadline).await
        });
        if !quiet {
            self.set_phase(Phase::Closed);
        }
        handoff::DrainReport {
            open_connections: self.open_connections(),
            accept_closed: true,
        }
    }
}

/// During a drain: whether a connection stops at this request boundary
/// (handed over when `travels`, else closed after [`DRAIN_IDLE_GRACE`] of
/// idleness), and when to look again.
fn boundary(activity: &Activity, travels: bool) -> (Ending, Option<Instant>) {
    let idle = activity.in_flight.load(Ordering::SeqCst) == 0;
    if travels {
        // Busy, or a first request begun: the idle notification wakes the
        // task once it is answered.
        let at_boundary = idle && !activity.first_request_begun();
        return (
            if at_boundary {
                Ending::HandOver
            } else {
                Ending::Open
            },
            None,
        );
    }
    let last = *activity.last.lock().unwrap_or_else(|e| e.into_inner());
    let idle_until = last + DRAIN_IDLE_GRACE;
    let now = Instant::now();
    if idle && now >= idle_until {
        (Ending::Close, None)
    } else {
        (
            Ending::Open,
            Some(idle_until.max(now + DRAIN_IDLE_GRACE / 4)),
        )
    }
}

/// How a daemon's serving ended.
#[derive(Debug)]
pub enum Stop {
    /// The supervisor ended the session (a successor committed, or resuming
    /// failed).
    Session(handoff::Ending),
    /// SIGTERM or SIGINT.
    Signal(&'static str),
}

/// SIGTERM and SIGINT, caught from the start of `main`: a signal that
/// arrives while the daemon warms up or begins is kept, and acted on once it
/// serves, instead of killing it with the default action.
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers (needs the runtime's context).
    pub fn install(runtime: &tokio::runtime::Runtime) -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        let _context = runtime.enter();
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// Blocks until the session ends or a stop signal arrives. An orphan (its
/// supervisor gone) keeps serving until a signal.
pub fn wait_for_stop(
    runtime: &tokio::runtime::Runtime,
    live: handoff::Live,
    mut signals: StopSignals,
) -> Stop {
    let (ending_tx, mut ending_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let _ = ending_tx.send(live.wait());
        // Keep `live` for the process's life: an orphan keeps serving.
        loop {
            std::thread::park();
        }
    });
    runtime.block_on(async {
        let mut session_open = true;
        loop {
            tokio::select! {
                ending = ending_rx.recv(), if session_open => match ending {
                    Some(handoff::Ending::SupervisorLost) | None => session_open = false,
                    Some(ending) => return Stop::Session(ending),
                },
                _ = signals.term.recv() => return Stop::Signal("SIGTERM"),
                _ = signals.int.recv() => return Stop::Signal("SIGINT"),
            }
        }
    })
}

/// Parses `--flag value` pairs; `known` lists the flags taking a value.
/// `--help` (or `-h`) prints `usage` and exits 0.
pub fn parse_flags(
    program: &str,
    usage: &str,
    known: &[&str],
) -> std::collections::HashMap<String, String> {
    let mut values = std::collections::HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            print!("{usage}");
            std::process::exit(0);
        }
        if !known.contains(&flag.as_str()) {
            die(
                program,
                &format!("unknown flag {flag} (known: {})", known.join(" ")),
            );
        }
        let Some(value) = args.next() else {
            die(program, &format!("{flag} needs a value"));
        };
        values.insert(flag, value);
    }
    values
}

/// The default build label: the executable's file name (two builds of a
/// daemon installed side by side, `kvd-a` and `kvd-b`, tell themselves
/// apart in `/info`).
pub fn executable_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "dev".into())
}

/// Prints `program: message` and exits with status 2.
pub fn die(program: &str, message: &str) -> ! {
    eprintln!("{program}: {message}");
    std::process::exit(2)
}

/// The flags every example daemon takes besides its own.
pub struct CommonFlags {
    /// `--listen`: the address bound when running without a supervisor.
    pub listen: String,
    /// `--build`: the build name reported by `/info`.
    pub build: String,
    /// `--drain-timeout SECONDS`: the drain of a stop by signal.
    pub drain_timeout: Duration,
}

impl CommonFlags {
    /// Reads `--listen`, `--build` and `--drain-timeout` from parsed flags.
    pub fn from(program: &str, flags: &std::collections::HashMap<String, String>) -> CommonFlags {
        let drain_timeout = match flags.get("--drain-timeout") {
            Some(seconds) => Duration::from_secs(
                seconds
                    .parse()
                    .unwrap_or_else(|_| die(program, "--drain-timeout SECONDS")),
            ),
            None => handoff::timeouts::STOP_DRAIN,
        };
        CommonFlags {
            listen: flags
                .get("--listen")
                .cloned()
                .unwrap_or_else(|| "127.0.0.1:8080".into()),
            build: flags
                .get("--build")
                .cloned()
                .unwrap_or_else(executable_name),
            drain_timeout,
        }
    }
}

/// The warm-up every example daemon starts with: the runtime, the stop
/// signals (caught before anything is served), the handoff generation and
/// its listener "http" (inherited, or bound to `--listen` when alone).
pub fn warm_up(
    program: &str,
    flags: &CommonFlags,
) -> (
    tokio::runtime::Runtime,
    StopSignals,
    handoff::Generation<handoff::Warming>,
    std::net::TcpListener,
) {
    let fail = |what: &str, error: &dyn std::fmt::Display| -> ! {
        die(program, &format!("{what}: {error}"))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("runtime", &e));
    let signals = StopSignals::install(&runtime).unwrap_or_else(|e| fail("signals", &e));
    let options = handoff::StartOptions::new(format!(
        "{program} {} ({})",
        env!("CARGO_PKG_VERSION"),
        flags.build
    ))
    .with_connections();
    let mut generation = handoff::start(options).unwrap_or_else(|e| fail("start", &e));
    let listener = generation
        .tcp_listener("http", &flags.listen)
        .unwrap_or_else(|e| fail("listener", &e));
    (runtime, signals, generation, listener)
}
