//! `echod`: a stateless HTTP/1.1 daemon for overlap mode.
//!
//! ```text
//! echod [--listen 127.0.0.1:8080] [--build LABEL (default: the executable's file name)] [--drain-timeout SECONDS]
//! ```
//!
//! `GET /healthz` answers 200; `GET /info` answers JSON with `pid`,
//! `version`, `build` and `generation`; any other request answers 200 with
//! its own body (or its path, for a request without a body). With no state
//! there is nothing to seal: in overlap mode the successor accepts first and
//! this generation drains after the commit, its kept-alive connections
//! handed to the successor at a request boundary as in `kvd`.

#[path = "../shared/prefixed.rs"]
mod prefixed;
#[path = "../shared/serve.rs"]
#[allow(dead_code, reason = "shared by kvd and echod; each uses a subset")]
mod serve;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use handoff::{DrainReport, Drainable, Fingerprint, ReadyReport, SealInfo, SealProgress, Snapshot};
use http_body_util::BodyExt;
use hyper::{Method, Request, Response, StatusCode};

use prefixed::Tracked;
use serve::{Body, Phase, Server, Stop, respond};

const PROGRAM: &str = "echod";

const USAGE: &str = "\
usage: echod [--listen ADDR] [--build LABEL] [--drain-timeout SECONDS]
A stateless HTTP daemon for overlap mode: /healthz, /info, and an echo of anything else.
  --listen ADDR            the address bound when run alone [default: 127.0.0.1:8080]
  --build LABEL            the build /info reports [default: the executable's file name]
  --drain-timeout SECONDS  how long a stop by signal drains [default: 30]
";
/// The largest body echoed.
const MAX_BODY: usize = 1 << 20;

struct Daemon {
    runtime: tokio::runtime::Handle,
    server: Arc<Server>,
}

impl Drainable for Daemon {
    type Error = std::io::Error;

    fn drain(&mut self, deadline: Instant) -> std::io::Result<DrainReport> {
        Ok(self.server.drain_blocking(&self.runtime, deadline))
    }

    fn seal(&mut self, _progress: &mut SealProgress) -> std::io::Result<SealInfo> {
        self.server.set_phase(Phase::Closed);
        Ok(SealInfo {
            revisions: 0,
            fingerprint: Fingerprint::of_bytes(b""),
        })
    }

    fn resume_after_abort(&mut self) -> std::io::Result<()> {
        self.server.set_phase(Phase::Serving);
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            open_connections: self.server.open_connections(),
            in_flight: self.server.in_flight(),
            revisions: 0,
            accepting: self.server.phase() == Phase::Serving,
        }
    }
}

async fn route(info: Arc<String>, request: Request<Tracked>) -> Response<Body> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "ok\n"),
        (&Method::GET, "/info") => respond(StatusCode::OK, info.as_bytes().to_vec()),
        _ => {
            let path = request.uri().path().to_owned();
            let body = http_body_util::Limited::new(request.into_body(), MAX_BODY);
            match body.collect().await {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    if bytes.is_empty() {
                        respond(StatusCode::OK, Bytes::from(path))
                    } else {
                        respond(StatusCode::OK, bytes)
                    }
                }
                Err(_) => respond(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
            }
        }
    }
}

fn main() {
    let flags = serve::parse_flags(PROGRAM, USAGE, &["--listen", "--build", "--drain-timeout"]);
    let common = serve::CommonFlags::from(PROGRAM, &flags);
    let (build, drain_timeout) = (common.build.clone(), common.drain_timeout);
    let fail = |what: &str, error: &dyn std::fmt::Display| -> ! {
        serve::die(PROGRAM, &format!("{what}: {error}"))
    };

    let (runtime, signals, generation, listener) = serve::warm_up(PROGRAM, &common);
    let info = Arc::new(format!(
        "{}\n",
        serde_json::json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "build": build,
            "generation": generation.generation(),
        })
    ));
    let begun = generation.begin(None).unwrap_or_else(|e| fail("begin", &e));
    let server = Server::new();
    let daemon = Daemon {
        runtime: runtime.handle().clone(),
        server: Arc::clone(&server),
    };
    let live = begun
        .ready(ReadyReport::stateless(), daemon)
        .unwrap_or_else(|e| fail("ready", &e));

    let handler: serve::Handler =
        Arc::new(move |request| Box::pin(route(Arc::clone(&info), request)));
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

    match serve::wait_for_stop(&runtime, live, signals) {
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
            server.drain_blocking(runtime.handle(), Instant::now() + drain_timeout);
        }
    }
    runtime.shutdown_background();
}
