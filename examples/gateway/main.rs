//! An HTTP gateway whose request handlers are replaced while it runs.
//!
//! It routes requests by host and path prefix to endpoints listed in a TOML
//! config file (see `config.rs`) and served by a
//! [`handoff::registry::HandlerRegistry`]. It watches the file: an added
//! endpoint is loaded, a changed one is swapped gracefully, a removed one
//! answers 503 (with `Retry-After` and a JSON body) until its running
//! requests finish, then is dropped. An admin API on a loopback address
//! takes handler source, compiles it, deploys it, and reports states and
//! statistics (see `admin.rs`). SIGTERM drains everything and exits.
//!
//! ```text
//! gateway --config gateway.toml --listen 127.0.0.1:8080 --admin 127.0.0.1:8081 \
//!         --build-dir /var/lib/gateway/build
//! ```
//!
//! On start it prints one line, `gateway listening http=ADDR admin=ADDR`.
//!
//! `Gateway` implements [`handoff::Drainable`], so the gateway binary itself
//! can be upgraded by `handoffctl` (overlap mode: it keeps no data
//! directory). Under a supervisor it takes the listeners named `http` and
//! `admin` from it; alone it binds `--listen` and `--admin`:
//!
//! ```text
//! handoffctl run --mode overlap --listen http=127.0.0.1:8080 --listen admin=127.0.0.1:8081 \
//!     -- target/release/examples/gateway --config gateway.toml --build-dir /var/lib/gateway/build
//! ```

mod admin;
mod config;
mod gateway;
mod http;
#[path = "../shared/prefixed.rs"]
mod prefixed;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use handoff::registry::HandlerBuilder;
use handoff::timeouts::{STOP_DRAIN, parse_duration};

use crate::gateway::{Gateway, Service, Shared};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "An HTTP gateway with replaceable request handlers")]
struct Args {
    /// The TOML config file (watched).
    #[arg(long)]
    config: PathBuf,
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Loopback address of the admin API.
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin: SocketAddr,
    /// Working directory of the handler builder (projects, libraries).
    #[arg(long)]
    build_dir: PathBuf,
    /// Cargo target directory of handler builds (default: in build-dir).
    #[arg(long)]
    build_target_dir: Option<PathBuf>,
    /// Seed lockfile for handler projects.
    #[arg(long)]
    build_lockfile: Option<PathBuf>,
    /// The handoff-handler-sdk crate handler projects depend on.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/handler-sdk"))]
    sdk: PathBuf,
    /// Drain time on SIGTERM, e.g. `30s`.
    #[arg(long, value_parser = parse_duration)]
    stop_drain: Option<Duration>,
}

/// The listener `name`: inherited from the supervisor, or bound to
/// `address` when running alone. tokio needs it non-blocking; every
/// generation of the gateway sets that on the shared socket, so they agree.
fn listener(
    generation: &mut handoff::Generation<handoff::Warming>,
    name: &str,
    address: SocketAddr,
) -> Result<std::net::TcpListener, Box<dyn std::error::Error>> {
    let listener = generation.tcp_listener(name, &address.to_string())?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The admin listener, refusing any address but loopback.
fn admin_listener(
    generation: &mut handoff::Generation<handoff::Warming>,
    address: SocketAddr,
) -> Result<std::net::TcpListener, Box<dyn std::error::Error>> {
    let listener = listener(generation, "admin", address)?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        return Err(format!("the admin API serves loopback only, not {bound}").into());
    }
    Ok(listener)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HANDOFF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "gateway failed");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Inherit-or-bind: the same lines for a cold start, a successor and a
    // gateway running alone.
    let mut generation = handoff::start(
        handoff::StartOptions::new(concat!("gateway ", env!("CARGO_PKG_VERSION")))
            .with_connections(),
    )?;
    let http_listener = listener(&mut generation, "http", args.listen)?;
    let admin_listener = admin_listener(&mut generation, args.admin)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gateway")
        .enable_all()
        .build()?;

    let gateway = Gateway::new(
        runtime.handle().clone(),
        args.config.clone(),
        handler_builder(&args),
    );
    let shared = Arc::clone(gateway.shared());
    match shared.reload() {
        Ok(changes) => tracing::info!(?changes, "config applied"),
        Err(error) => return Err(format!("config {}: {error}", args.config.display()).into()),
    }
    // Warm: handlers are loaded. No data directory to lock.
    let begun = generation.begin(None)?;

    let stop_drain = args.stop_drain.unwrap_or(STOP_DRAIN);
    let terminate = runtime.block_on(async {
        // Catch SIGTERM before anything is served: its default action would
        // kill the gateway without a drain.
        let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let http_listener = tokio::net::TcpListener::from_std(http_listener)?;
        let admin_listener = tokio::net::TcpListener::from_std(admin_listener)?;
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "gateway listening http={} admin={}",
            http_listener.local_addr()?,
            admin_listener.local_addr()?
        )?;
        stdout.flush()?;
        drop(stdout);
        // Overlap mode: serve before Ready, so someone accepts at every
        // moment of a handoff; connections handed over arrive from then on.
        if let Some(port) = begun.connections() {
            shared.serve_arrivals(&tokio::runtime::Handle::current(), port);
        }
        shared.serve_listener(http_listener, Service::Http);
        shared.serve_listener(admin_listener, Service::Admin);
        tokio::spawn(Arc::clone(&shared).watch_config());
        Ok::<_, Box<dyn std::error::Error>>(terminate)
    })?;
    // Returns once committed (at once when running alone); from then on the
    // hooks run on the library's thread and drain this same `shared`.
    let live = begun.ready(handoff::ReadyReport::stateless(), gateway)?;
    serve_until_stop(&runtime, shared, live, terminate, stop_drain)?;
    // Blocking tasks still running (handler calls past their timeout) are
    // not waited for.
    runtime.shutdown_background();
    Ok(())
}

/// The handler builder the flags describe.
fn handler_builder(args: &Args) -> HandlerBuilder {
    let mut builder = HandlerBuilder::new(&args.build_dir, &args.sdk);
    if let Some(target_dir) = &args.build_target_dir {
        builder = builder.with_target_dir(target_dir);
    }
    if let Some(lockfile) = &args.build_lockfile {
        builder = builder.with_lockfile(lockfile);
    }
    builder
}

/// Serves until SIGTERM (then drains for `stop_drain`) or until the
/// supervisor retires this generation.
fn serve_until_stop(
    runtime: &tokio::runtime::Runtime,
    shared: Arc<Shared>,
    live: handoff::Live,
    mut terminate: tokio::signal::unix::Signal,
    stop_drain: Duration,
) -> std::io::Result<()> {
    let (retired_tx, retired_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("gateway-live".into())
        .spawn(move || {
            let _ = retired_tx.send(live.wait());
        })?;
    runtime.block_on(async move {
        tokio::select! {
            _ = terminate.recv() => {
                tracing::info!(drain = ?stop_drain, "SIGTERM: draining");
                let report = shared.drain(Instant::now() + stop_drain).await;
                tracing::info!(
                    open_connections = report.open_connections,
                    "drained; exiting"
                );
            }
            ending = retired_rx => {
                // The supervisor drained this generation (Prepare) before
                // retiring it: nothing is left to finish.
                tracing::info!(?ending, "retired by the supervisor; exiting");
            }
        }
    });
    Ok(())
}
