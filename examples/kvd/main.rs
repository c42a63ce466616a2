//! `kvd`: a stateful HTTP/1.1 key-value daemon, the reference way to
//! implement [`handoff::Drainable`] on an async stack (tokio + hyper).
//!
//! ```text
//! kvd --data-dir DIR [--listen 127.0.0.1:8080] [--build LABEL (default: the executable's file name)] [--drain-timeout SECONDS]
//! ```
//!
//! | request | answer |
//! |---|---|
//! | `PUT /kv/{key}` | `200` with the revision, once the write is appended to `DIR/kvd.log` and fsynced |
//! | `GET /kv/{key}` | `200` with the value, or `404` |
//! | `GET /healthz` | `200` |
//! | `GET /info` | `200`, JSON: `pid`, `version`, `build`, `generation`, `revisions` |
//!
//! Under a supervisor it takes its listener `http` from it; run alone it
//! binds `--listen`. Without `--data-dir` it takes `HANDOFF_DATA_DIR` (set
//! by `handoffctl run --data-dir`). A handoff drains (see `examples/shared/serve.rs` for
//! how kept-alive connections close without failures), seals (fsync, the
//! fingerprint written to `DIR/kvd.seal`; the library then releases the
//! data-directory lock) and, if aborted, reopens and accepts again.
//! SIGTERM or SIGINT outside a handoff: stop accepting, drain, fsync, exit;
//! after the drain timeout (30 s by default) exit even if connections hang.

#[path = "../shared/prefixed.rs"]
mod prefixed;
#[path = "../shared/serve.rs"]
#[allow(dead_code, reason = "shared by kvd and echod; each uses a subset")]
mod serve;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use handoff::{DrainReport, Drainable, ReadyReport, SealInfo, SealProgress, Snapshot};
use http_body_util::BodyExt;
use hyper::{Method, Request, Response, StatusCode};

use prefixed::Tracked;
use serve::{Body, Phase, Server, Stop, respond};
use store::Store;

const PROGRAM: &str = "kvd";

const USAGE: &str = "\
usage: kvd [--data-dir DIR] [--listen ADDR] [--build LABEL] [--drain-timeout SECONDS]
A stateful HTTP key-value daemon (PUT/GET /kv/KEY, /healthz, /info).
  --data-dir DIR           where the fsynced log lives [default: $HANDOFF_DATA_DIR]
  --listen ADDR            the address bound when run alone [default: 127.0.0.1:8080]
  --build LABEL            the build /info reports [default: the executable's file name]
  --drain-timeout SECONDS  how long a stop by signal drains [default: 30]
";

/// What `/info` reports besides the pid.
struct Identity {
    build: String,
    generation: u64,
}

/// The `Drainable` side: handles onto the runtime, the server and the
/// store; every hook blocks on them from the library's hook thread.
struct Daemon {
    runtime: tokio::runtime::Handle,
    server: Arc<Server>,
    store: Arc<Store>,
}

impl Drainable for Daemon {
    type Error = std::io::Error;

    fn drain(&mut self, deadline: Instant) -> std::io::Result<DrainReport> {
        Ok(self.server.drain_blocking(&self.runtime, deadline))
    }

    fn seal(&mut self, progress: &mut SealProgress) -> std::io::Result<SealInfo> {
        // Stragglers past this point get 503 (the store refuses writes).
        self.server.set_phase(Phase::Closed);
        let info = self.store.seal_blocking()?;
        progress.report(1, 1);
        Ok(info)
    }

    fn resume_after_abort(&mut self) -> std::io::Result<()> {
        self.store.reopen_blocking()?;
        self.server.set_phase(Phase::Serving);
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            open_connections: self.server.open_connections(),
            in_flight: self.server.in_flight(),
            revisions: self.store.revisions(),
            accepting: self.server.phase() == Phase::Serving,
        }
    }
}

async fn route(
    store: Arc<Store>,
    identity: Arc<Identity>,
    request: Request<Tracked>,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let key = path.strip_prefix("/kv/").filter(|k| !k.is_empty());
    match (request.method(), path.as_str(), key) {
        (&Method::PUT, _, Some(key)) if key.len() <= store::MAX_KEY => {
            let key = key.to_owned();
            let body = http_body_util::Limited::new(request.into_body(), store::MAX_VALUE);
            let value: Bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return respond(StatusCode::PAYLOAD_TOO_LARGE, "value too large\n"),
            };
            match store.put(key, value).await {
                Ok(revision) => respond(StatusCode::OK, format!("{revision}\n")),
                Err(_) => serve::unavailable(),
            }
        }
        (&Method::GET, _, Some(key)) => match store.get(key) {
            Some(value) => respond(StatusCode::OK, value),
            None => respond(StatusCode::NOT_FOUND, "not found\n"),
        },
        (&Method::GET, "/healthz", None) => respond(StatusCode::OK, "ok\n"),
        (&Method::GET, "/info", None) => {
            let info = serde_json::json!({
                "pid": std::process::id(),
                "version": env!("CARGO_PKG_VERSION"),
                "build": identity.build,
                "generation": identity.generation,
                "revisions": store.revisions(),
            });
            respond(StatusCode::OK, format!("{info}\n"))
        }
        (_, _, Some(_)) => respond(StatusCode::METHOD_NOT_ALLOWED, "GET or PUT\n"),
        _ => respond(StatusCode::NOT_FOUND, "no such route\n"),
    }
}

fn main() {
    let flags = serve::parse_flags(
        PROGRAM,
        USAGE,
        &["--data-dir", "--listen", "--build", "--drain-timeout"],
    );
    let data_dir: PathBuf = flags
        .get("--data-dir")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os(handoff::ENV_DATA_DIR).map(PathBuf::from))
        .unwrap_or_else(|| serve::die(PROGRAM, "--data-dir DIR (or HANDOFF_DATA_DIR) is required"));
    let common = serve::CommonFlags::from(PROGRAM, &flags);
    let (build, drain_timeout) = (common.build.clone(), common.drain_timeout);
    let fail = |what: &str, error: &dyn std::fmt::Display| -> ! {
        serve::die(PROGRAM, &format!("{what}: {error}"))
    };

    // Warm-up: everything that does not need the data directory.
    let (runtime, signals, generation, listener) = serve::warm_up(PROGRAM, &common);
    let identity = Arc::new(Identity {
        build,
        generation: generation.generation(),
    });

    // Begin: the incumbent has sealed; the data directory is ours.
    let begun = generation
        .begin(Some(&data_dir))
        .unwrap_or_else(|e| fail("begin", &e));
    let store = match Store::open(&data_dir) {
        Ok(store) => Arc::new(store),
        Err(error) => {
            let error = begun.fail(format!("opening the state: {error}"));
            fail("open", &error)
        }
    };
    let server = Server::new();
    let report = ReadyReport::stateful(store.revisions(), store.fingerprint_at_open());
    let daemon = Daemon {
        runtime: runtime.handle().clone(),
        server: Arc::clone(&server),
        store: Arc::clone(&store),
    };
    // Exclusive mode: returns after the commit, so nothing is acknowledged
    // by a generation that could still be rolled back (I6).
    let live = begun
        .ready(report, daemon)
        .unwrap_or_else(|e| fail("ready", &e));

    let handler: serve::Handler = {
        let store = Arc::clone(&store);
        Arc::new(move |request| Box::pin(route(Arc::clone(&store), Arc::clone(&identity), request)))
    };
    let listener = {
        let _context = runtime.enter();
        // Sets O_NONBLOCK on the shared socket: see the hazard in serve.rs.
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .unwrap_or_else(|e| fail("listener", &e))
    };
    if let Some(port) = live.connections() {
        server.serve_arrivals(runtime.handle(), port, Arc::clone(&handler));
    }
    runtime.spawn(Arc::clone(&server).accept_loop(listener, handler));

    serve_until_stopped(&runtime, live, signals, &server, &store, drain_timeout);
    // Connections still hanging are not waited for.
    runtime.shutdown_background();
}

/// Serves until the session ends or a stop signal comes; on a signal,
/// drains and fsyncs as a retired generation's hooks would.
fn serve_until_stopped(
    runtime: &tokio::runtime::Runtime,
    live: handoff::Live,
    signals: serve::StopSignals,
    server: &Arc<Server>,
    store: &Store,
    drain_timeout: std::time::Duration,
) {
    match serve::wait_for_stop(runtime, live, signals) {
        // Drained and sealed by the hooks already; let stragglers finish.
        Stop::Session(handoff::Ending::Retired) => {
            runtime.block_on(server.wait_closed(Instant::now() + drain_timeout));
        }
        Stop::Session(ending) => {
            eprintln!("{PROGRAM}: session ended: {ending:?}");
            std::process::exit(1);
        }
        Stop::Signal(signal) => {
            // Draining before the line: whoever reads it sees a draining daemon.
            server.set_phase(Phase::Draining);
            eprintln!("{PROGRAM}: {signal}: draining");
            let report = server.drain_blocking(runtime.handle(), Instant::now() + drain_timeout);
            server.set_phase(Phase::Closed);
            if let Err(error) = store.seal_blocking() {
                serve::die(PROGRAM, &format!("fsync at stop: {error}"));
            }
            if report.open_connections > 0 {
                eprintln!(
                    "{PROGRAM}: exiting with {} connections open after the drain timeout",
                    report.open_connections
                );
            }
        }
    }
}
