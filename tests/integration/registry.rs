//! Handler registry scenarios with real handler libraries (built in the
//! test by `HandlerBuilder`) and real processes (the gateway example).
//!
//! Every wait is bounded; every spawned gateway is killed and reaped and its
//! directory removed when its handle drops, also when a test fails. A slow
//! handler's workload is a handshake with the test over TCP (it reports that
//! it started, then waits for the test's go), so no test sleeps to
//! synchronise.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use handoff::Error;
use handoff::registry::{
    Context, Handler, HandlerBuilder, HandlerRegistry, HandlerSource, Request, Response,
    error_response,
};
use handoff_handler_sdk::abi::ABI_VERSION;
use serde_json::Value;
use testkit::{TempDir, eventually_within, example};

/// Bound on anything that should take well under it.
const PATIENCE: Duration = Duration::from_secs(60);
/// Bound on a handler build (a cold one compiles the SDK's dependencies).
const BUILD_PATIENCE: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------
// Fixtures: handler libraries built once per test run.

/// A handler answering `{"version": N, ...}`; `/panic` panics; `/slow`
/// connects to the address in `x-handshake`, writes `started\n`, and waits
/// for one byte before answering.
fn handler_source(version: u32) -> String {
    format!(
        r#"
use std::io::{{Read, Write}};
use handoff_handler_sdk::serde_json::json;
use handoff_handler_sdk::{{Context, HandlerError, Request, Response, export_handler}};

fn handle(ctx: &Context, request: Request) -> Result<Response, HandlerError> {{
    if request.path.contains("/panic") {{
        panic!("asked to panic");
    }}
    if request.path.contains("/slow") {{
        let address = request
            .header("x-handshake")
            .ok_or_else(|| HandlerError::bad_request("x-handshake missing"))?;
        let fail = |error: std::io::Error| HandlerError::internal(error.to_string());
        let mut stream = std::net::TcpStream::connect(address).map_err(fail)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(120))).map_err(fail)?;
        stream.write_all(b"started\n").map_err(fail)?;
        let mut go = [0u8; 1];
        stream.read_exact(&mut go).map_err(fail)?;
    }}
    Ok(Response::ok(json!({{ "version": {version}, "endpoint": ctx.endpoint(), "path": request.path }})))
}}

export_handler!(handle);
"#
    )
}

/// Exports the two symbols by hand, claiming ABI version 999.
const WRONG_ABI_SOURCE: &str = r#"
#[unsafe(no_mangle)]
pub extern "C" fn handoff_handler_abi_version() -> u32 {
    999
}

#[unsafe(no_mangle)]
pub extern "C" fn handler_entry() -> i32 {
    0
}
"#;

const BROKEN_SOURCE: &str = r#"
use handoff_handler_sdk::{Context, Request, Response, export_handler};

fn handle(_: &Context, _: Request) -> Response {
    this_function_does_not_exist()
}

export_handler!(handle);
"#;

fn workspace_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `<target>/debug`, from this binary's path `<target>/debug/deps/integration-*`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

/// Where handler builds of the tests go; one Cargo target directory shared
/// by every builder, so the SDK's dependencies compile once.
fn handler_builds() -> PathBuf {
    profile_dir().parent().unwrap().join("handler-builds")
}

fn builder(work_dir: &Path) -> HandlerBuilder {
    HandlerBuilder::new(work_dir, workspace_dir().join("handler-sdk"))
        .with_target_dir(handler_builds().join("target"))
        .with_lockfile(workspace_dir().join("Cargo.lock"))
        .with_timeout(BUILD_PATIENCE)
}

struct Fixtures {
    v1: PathBuf,
    v2: PathBuf,
    wrong_abi: PathBuf,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        // nextest runs every test in a process of its own: the OnceLock
        // serialises threads, this file lock serialises the processes that
        // build into the same directories.
        std::fs::create_dir_all(handler_builds()).unwrap();
        let lock = std::fs::File::create(handler_builds().join("fixtures.lock")).unwrap();
        lock.lock().unwrap();
        let build = |name: &str, source: &str| {
            let work_dir = handler_builds().join("fixtures").join(name);
            match builder(&work_dir).build("greet", source) {
                Ok(built) => built.path,
                Err(error) => panic!("building fixture {name}: {error}"),
            }
        };
        let fixtures = Fixtures {
            v1: build("v1", &handler_source(1)),
            v2: build("v2", &handler_source(2)),
            wrong_abi: build("wrong_abi", WRONG_ABI_SOURCE),
        };
        drop(lock);
        fixtures
    })
}

/// A copy of `library` under a name unique to the calling test, so that
/// `/proc/self/maps` tells its mappings apart from other tests' in this
/// process.
fn unique_copy(dir: &TempDir, library: &Path, name: &str) -> PathBuf {
    let copy = dir.path().join(format!("libhandler_{name}.so"));
    std::fs::copy(library, &copy).unwrap();
    copy
}

/// Distinct mapped files of process `pid` whose path contains `needle`.
fn mapped(pid: &str, needle: &str) -> BTreeSet<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.contains(needle))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------
// The slow-request handshake.

/// The test's end of a slow handler's handshake.
struct Handshake {
    listener: TcpListener,
}

impl Handshake {
    fn new() -> Handshake {
        Handshake {
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    fn address(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }

    /// Waits (bounded) until the handler reports it started; returns the
    /// stream to send its go on.
    fn started(&self) -> TcpStream {
        self.listener.set_nonblocking(false).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let listener = self.listener.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = tx.send(listener.accept().map(|(stream, _)| stream));
        });
        let mut stream = rx
            .recv_timeout(PATIENCE)
            .expect("the slow handler never connected")
            .unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut line = String::new();
        BufReader::new(&mut stream).read_line(&mut line).unwrap();
        assert_eq!(line, "started\n");
        stream
    }
}

fn go(mut stream: TcpStream) {
    stream.write_all(b"g").unwrap();
}

// ---------------------------------------------------------------------------
// The registry in this process, with library handlers.

fn ctx() -> Context {
    Context::new("greet", 1)
}

fn version_of(response: &Response) -> u64 {
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    body["version"].as_u64().unwrap()
}

#[test]
fn a_library_is_swapped_while_a_slow_request_finishes_on_the_old_one_then_unloaded() {
    let fixtures = fixtures();
    let dir = TempDir::new("swap");
    let v1 = unique_copy(&dir, &fixtures.v1, "inproc_swap_v1");
    let v2 = unique_copy(&dir, &fixtures.v2, "inproc_swap_v2");
    let registry = Arc::new(HandlerRegistry::new());
    registry
        .insert("greet", HandlerSource::library(&v1))
        .unwrap();
    assert_eq!(mapped("self", "inproc_swap_v1").len(), 1);

    let handshake = Handshake::new();
    let slow = std::thread::spawn({
        let registry = Arc::clone(&registry);
        let request = Request::new("GET", "/slow").with_header("x-handshake", handshake.address());
        move || registry.execute("greet", &ctx(), request)
    });
    let waiting = handshake.started();

    let swap = registry
        .swap_graceful("greet", HandlerSource::library(&v2), PATIENCE)
        .unwrap();
    assert_eq!(
        (swap.old_version, swap.new_version, swap.pending_on_old),
        (1, 2, 1)
    );
    assert!(swap.draining);
    let fresh = registry
        .execute("greet", &ctx(), Request::new("GET", "/x"))
        .unwrap();
    assert_eq!(version_of(&fresh), 2);
    let stats = registry.stats();
    assert_eq!((stats.retired.len(), stats.draining_requests), (1, 1));
    assert_eq!(
        mapped("self", "inproc_swap_v1").len(),
        1,
        "v1 stays mapped under its call"
    );
    assert_eq!(mapped("self", "inproc_swap_v2").len(), 1);

    go(waiting);
    let old = slow.join().unwrap().unwrap();
    assert_eq!(version_of(&old), 1);
    assert!(registry.wait_drained(PATIENCE));
    assert!(
        mapped("self", "inproc_swap_v1").is_empty(),
        "v1 unmapped after draining"
    );
    assert_eq!(mapped("self", "inproc_swap_v2").len(), 1);
    assert_eq!(registry.stats().unloaded, 1);
}

#[test]
fn a_library_built_for_another_abi_version_is_refused_at_load() {
    let fixtures = fixtures();
    let registry = HandlerRegistry::new();
    let error = registry
        .insert("greet", HandlerSource::library(&fixtures.wrong_abi))
        .unwrap_err();
    match error {
        Error::AbiMismatch { expected, got, .. } => assert_eq!((expected, got), (ABI_VERSION, 999)),
        other => panic!("expected an ABI mismatch, got {other}"),
    }
    assert!(!registry.contains("greet"));

    registry
        .insert("greet", HandlerSource::library(&fixtures.v1))
        .unwrap();
    let refused = registry.swap_graceful(
        "greet",
        HandlerSource::library(&fixtures.wrong_abi),
        PATIENCE,
    );
    assert!(matches!(refused, Err(Error::AbiMismatch { .. })));
    let response = registry
        .execute("greet", &ctx(), Request::new("GET", "/"))
        .unwrap();
    assert_eq!(version_of(&response), 1);
}

#[test]
fn a_panic_inside_a_library_is_a_500_and_the_library_keeps_serving() {
    let fixtures = fixtures();
    let registry = HandlerRegistry::new();
    registry
        .insert("greet", HandlerSource::library(&fixtures.v1))
        .unwrap();
    for _ in 0..2 {
        let error = registry
            .execute("greet", &ctx(), Request::new("GET", "/panic"))
            .unwrap_err();
        assert!(
            matches!(&error, Error::HandlerPanicked { message, .. } if message.contains("asked to panic")),
            "{error}"
        );
        assert_eq!(error_response(&error).status, 500);
        let response = registry
            .execute("greet", &ctx(), Request::new("GET", "/ok"))
            .unwrap();
        assert_eq!(response.status, 200);
    }
}

// ---------------------------------------------------------------------------
// Stress: swaps under load, in-process handlers.

struct Counted {
    drops: Arc<AtomicUsize>,
}

impl Handler for Counted {
    fn handle(&self, _ctx: &Context, _request: Request) -> Response {
        Response::new(204)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn two_threads_hammering_an_endpoint_while_it_is_swapped_1000_times_lose_nothing() {
    const SWAPS: usize = 1000;
    let registry = Arc::new(HandlerRegistry::new());
    let drops = Arc::new(AtomicUsize::new(0));
    let handler = |drops: &Arc<AtomicUsize>| {
        HandlerSource::handler(Counted {
            drops: Arc::clone(drops),
        })
    };
    registry.insert("hot", handler(&drops)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + PATIENCE;
    let hammers: Vec<_> = (0..2)
        .map(|_| {
            let (registry, stop, served) = (
                Arc::clone(&registry),
                Arc::clone(&stop),
                Arc::clone(&served),
            );
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let ctx = Context::new("hot", ok);
                    match registry.execute("hot", &ctx, Request::default()) {
                        Ok(response) if response.status == 204 => {
                            ok += 1;
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        other => {
                            eprintln!("failed request: {:?}", other.map(|r| r.status));
                            failed += 1;
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut swaps_with_pending = 0;
    for _ in 0..SWAPS {
        // Every swap happens while requests flow: wait for one more first.
        let before = served.load(Ordering::SeqCst);
        while served.load(Ordering::SeqCst) == before {
            assert!(Instant::now() < deadline, "no request is being served");
            std::thread::yield_now();
        }
        let outcome = registry
            .swap_graceful("hot", handler(&drops), PATIENCE)
            .unwrap();
        swaps_with_pending += usize::from(outcome.pending_on_old > 0);
    }
    stop.store(true, Ordering::SeqCst);
    let results: Vec<(u64, u64)> = hammers
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect();

    assert!(
        results.iter().all(|(_, failed)| *failed == 0),
        "failed requests: {results:?}"
    );
    assert!(registry.wait_drained(PATIENCE), "every old handler dropped");
    let stats = registry.stats();
    assert_eq!(
        (stats.active_requests, stats.draining_requests),
        (0, 0),
        "leaked guards"
    );
    assert_eq!(stats.endpoints[0].version, 1 + SWAPS as u64);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        SWAPS,
        "every old handler dropped"
    );
    assert_eq!(stats.unloaded, SWAPS as u64);
    eprintln!(
        "stress: {results:?} requests (ok, failed) per thread; {swaps_with_pending} of {SWAPS} swaps had requests pending on the old handler"
    );
}

// ---------------------------------------------------------------------------
// The gateway example, as a real process.

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn write_request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: gateway.test\r\ncontent-length: {}\r\n",
        body.len()
    );
    if close {
        head.push_str("connection: close\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
}

fn read_response(reader: &mut BufReader<TcpStream>) -> HttpResponse {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, value)| value.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn connect(address: SocketAddr, patience: Duration) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(patience)).unwrap();
    stream.set_write_timeout(Some(patience)).unwrap();
    stream
}

/// One request on a fresh connection.
fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let patience = if path.ends_with("/compile") {
        BUILD_PATIENCE
    } else {
        PATIENCE
    };
    let mut stream = connect(address, patience);
    write_request(&mut stream, method, path, headers, body, true);
    read_response(&mut BufReader::new(stream))
}

/// A gateway process, killed and reaped (and its directory removed) on drop.
struct GatewayProcess {
    child: Option<Child>,
    http: SocketAddr,
    admin: SocketAddr,
    dir: TempDir,
}

impl GatewayProcess {
    fn start(config: &str) -> GatewayProcess {
        let binary = example("gateway");
        let dir = TempDir::new("gateway");
        std::fs::write(dir.path().join("gateway.toml"), config).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(dir.path().join("gateway.toml"))
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--build-dir")
            .arg(dir.path().join("build"))
            .arg("--build-target-dir")
            .arg(handler_builds().join("target"))
            .arg("--build-lockfile")
            .arg(workspace_dir().join("Cargo.lock"))
            .env("HANDOFF_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // Built before anything can fail, so that its Drop cleans up.
        let mut process = GatewayProcess {
            child: Some(child),
            http: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:1".parse().unwrap(),
            dir,
        };
        let line = rx.recv_timeout(PATIENCE).unwrap_or_default();
        let address = |key: &str| -> Option<SocketAddr> {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(key))?
                .parse()
                .ok()
        };
        match (address("http="), address("admin=")) {
            (Some(http), Some(admin)) => (process.http, process.admin) = (http, admin),
            _ => panic!("the gateway did not start: {line:?}\n{}", process.log()),
        }
        process
    }

    /// Waits (bounded) for the process to exit by itself.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(PATIENCE) {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = waiter.join();
                panic!("the gateway did not exit; log:\n{}", self.log());
            }
        }
    }

    fn pid(&self) -> String {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_default()
            .to_string()
    }

    /// Replaces the config file atomically, as the gateway asks, so that
    /// its watcher never reads a half-written file.
    fn write_config(&self, config: &str) {
        let staging = self.dir.path().join("gateway.toml.new");
        std::fs::write(&staging, config).unwrap();
        std::fs::rename(&staging, self.dir.path().join("gateway.toml")).unwrap();
    }

    fn get(&self, path: &str) -> HttpResponse {
        request(self.http, "GET", path, &[], b"")
    }

    fn admin(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        request(self.admin, method, path, &[], body)
    }

    /// PUT source, compile, deploy; returns the deploy's answer.
    fn deploy_source(&self, id: &str, source: &str) -> Value {
        let put = self.admin("PUT", &format!("/endpoints/{id}/source"), source.as_bytes());
        assert_eq!(put.status, 200, "{}", put.json());
        let compile = self.admin("POST", &format!("/endpoints/{id}/compile"), b"");
        assert_eq!(compile.status, 200, "{}", compile.json());
        let deploy = self.admin("POST", &format!("/endpoints/{id}/deploy"), b"");
        assert_eq!(deploy.status, 200, "{}", deploy.json());
        deploy.json()
    }

    /// Starts a `/slow` request on `id` on a thread; returns once the
    /// handler reported that it runs.
    fn start_slow(&self, path: &str) -> (std::thread::JoinHandle<HttpResponse>, TcpStream) {
        let handshake = Handshake::new();
        let address = handshake.address();
        let http = self.http;
        let path = path.to_owned();
        let slow = std::thread::spawn(move || {
            request(http, "GET", &path, &[("x-handshake", &address)], b"")
        });
        (slow, handshake.started())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = i32::try_from(self.child.as_ref().unwrap().id()).unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("gateway log:\n{}", self.log());
        }
    }
}

fn config_with(endpoints: &[(&str, &str, &Path)]) -> String {
    let mut config = String::from("drain_timeout = \"60s\"\n");
    for (id, prefix, library) in endpoints {
        config.push_str(&format!(
            "[[endpoints]]\nid = \"{id}\"\npath_prefix = \"{prefix}\"\nlibrary = \"{}\"\n",
            library.display()
        ));
    }
    config
}

/// Polls the gateway (each poll a real request) until `done` or PATIENCE.
fn eventually(what: &str, done: impl FnMut() -> bool) {
    eventually_within(PATIENCE, what, done);
}

#[test]
fn gateway_deploys_v2_while_a_slow_request_finishes_on_v1_and_unloads_v1_after() {
    fixtures();
    let gateway = GatewayProcess::start("");
    let v1 = gateway.deploy_source("greet", &handler_source(1));
    assert_eq!(v1["new_version"], 1);
    assert_eq!(gateway.get("/greet/x").json()["version"], 1);
    assert_eq!(mapped(&gateway.pid(), "libhandler_greet").len(), 1);

    let (slow, waiting) = gateway.start_slow("/greet/slow");
    let v2 = gateway.deploy_source("greet", &handler_source(2));
    assert_eq!(
        (v2["old_version"].as_u64(), v2["new_version"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        (v2["pending_on_old"].as_u64(), v2["draining"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(
        gateway.get("/greet/x").json()["version"],
        2,
        "new requests go to v2 at once"
    );
    let both = mapped(&gateway.pid(), "libhandler_greet");
    assert_eq!(
        both.len(),
        2,
        "v1 stays mapped under its running call: {both:?}"
    );

    go(waiting);
    let old = slow.join().unwrap();
    assert_eq!((old.status, old.json()["version"].as_u64()), (200, Some(1)));
    let drained = gateway.admin("POST", "/wait-drained?timeout_ms=60000", b"");
    assert_eq!(drained.json()["drained"], true);
    let left = mapped(&gateway.pid(), "libhandler_greet");
    assert_eq!(left.len(), 1, "v1 unloaded after draining: {left:?}");
    assert!(both.contains(left.iter().next().unwrap()));
    assert_eq!(gateway.get("/greet/x").json()["version"], 2);
}

#[test]
fn gateway_answers_500_for_a_panicking_handler_and_keeps_serving() {
    let fixtures = fixtures();
    let gateway = GatewayProcess::start(&config_with(&[("greet", "/greet", &fixtures.v1)]));
    for _ in 0..3 {
        let panicked = gateway.get("/greet/panic");
        assert_eq!(panicked.status, 500);
        assert_eq!(panicked.json()["error"], "handler failed");
        let fine = gateway.get("/greet/fine");
        assert_eq!(
            (fine.status, fine.json()["version"].as_u64()),
            (200, Some(1))
        );
    }
}

#[test]
fn gateway_refuses_a_library_with_a_wrong_abi_version_and_keeps_the_old_one() {
    let fixtures = fixtures();
    let gateway = GatewayProcess::start(&config_with(&[("greet", "/greet", &fixtures.v1)]));
    gateway.write_config(&config_with(&[("greet", "/greet", &fixtures.wrong_abi)]));
    // Applied by this reload or by the watcher before it; either way it is
    // applied when the reload returns (reloads are serialised).
    assert_eq!(gateway.admin("POST", "/reload", b"").status, 200);
    assert_eq!(gateway.get("/greet/x").json()["version"], 1);
    let endpoints = gateway.admin("GET", "/endpoints", b"").json();
    assert_eq!(endpoints["endpoints"][0]["state"], "loaded");
    assert!(
        endpoints["endpoints"][0]["last_error"]
            .to_string()
            .contains("ABI version 999")
    );
}

#[test]
fn gateway_reports_the_compiler_message_and_keeps_v1_when_the_source_does_not_compile() {
    fixtures();
    let gateway = GatewayProcess::start("");
    gateway.deploy_source("greet", &handler_source(1));
    let put = gateway.admin("PUT", "/endpoints/greet/source", BROKEN_SOURCE.as_bytes());
    assert_eq!(put.status, 200);
    let compile = gateway.admin("POST", "/endpoints/greet/compile", b"");
    assert_eq!(compile.status, 422);
    let report = compile.json();
    let output = report["compiler_output"].as_str().unwrap();
    assert!(output.contains("this_function_does_not_exist"), "{output}");
    assert!(output.contains("error"), "{output}");
    assert_eq!(report["state"], "loaded");
    assert_eq!(gateway.get("/greet/x").json()["version"], 1);
    // Deploying now loads the last library that built: v1 again.
    let redeploy = gateway.admin("POST", "/endpoints/greet/deploy", b"");
    assert_eq!(redeploy.json()["new_version"], 2);
    assert_eq!(gateway.get("/greet/x").json()["version"], 1);
}

#[test]
fn gateway_answers_503_for_a_removed_endpoint_while_it_drains_then_404() {
    let fixtures = fixtures();
    let gateway = GatewayProcess::start(&config_with(&[
        ("greet", "/greet", &fixtures.v1),
        ("other", "/other", &fixtures.v2),
    ]));
    let (slow, waiting) = gateway.start_slow("/greet/slow");
    gateway.write_config(&config_with(&[("other", "/other", &fixtures.v2)]));
    assert_eq!(gateway.admin("POST", "/reload", b"").status, 200);

    let refused = gateway.get("/greet/x");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.json()["endpoint"], "greet");
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("draining")
    );
    assert_eq!(
        gateway.get("/other/x").status,
        200,
        "other endpoints are untouched"
    );

    go(waiting);
    let old = slow.join().unwrap();
    assert_eq!((old.status, old.json()["version"].as_u64()), (200, Some(1)));
    eventually("the drained endpoint to be dropped", || {
        gateway.get("/greet/x").status == 404
    });
}

#[test]
fn gateway_follows_its_config_file() {
    let fixtures = fixtures();
    let gateway = GatewayProcess::start("");
    assert_eq!(gateway.get("/greet/x").status, 404);
    gateway.write_config(&config_with(&[("greet", "/greet", &fixtures.v1)]));
    eventually("the added endpoint", || {
        gateway.get("/greet/x").status == 200
    });
    gateway.write_config(&config_with(&[("greet", "/greet", &fixtures.v2)]));
    eventually("the changed endpoint", || {
        gateway.get("/greet/x").json()["version"] == 2
    });
    gateway.write_config(&config_with(&[]));
    eventually("the removed endpoint", || {
        gateway.get("/greet/x").status == 404
    });
}

#[test]
fn gateway_drains_on_sigterm_closing_kept_alive_connections_after_their_next_request() {
    let fixtures = fixtures();
    let mut gateway = GatewayProcess::start(&config_with(&[("greet", "/greet", &fixtures.v1)]));
    // A kept-alive connection that served one request.
    let mut kept = connect(gateway.http, PATIENCE);
    write_request(&mut kept, "GET", "/greet/a", &[], b"", false);
    let mut kept_reader = BufReader::new(kept.try_clone().unwrap());
    assert_eq!(read_response(&mut kept_reader).status, 200);

    let (slow, waiting) = gateway.start_slow("/greet/slow");
    gateway.signal(nix::sys::signal::Signal::SIGTERM);
    eventually("the gateway to stop accepting", || {
        gateway.admin("GET", "/status", b"").json()["accepting"] == false
    });

    // A request on a connection the gateway accepted before the drain is
    // still served (nothing else could serve it), and the connection closes
    // after it.
    write_request(&mut kept, "GET", "/greet/b", &[], b"", false);
    let served = read_response(&mut kept_reader);
    assert_eq!(served.status, 200);
    assert_eq!(served.header("connection"), Some("close"));
    let mut rest = String::new();
    assert_eq!(
        kept_reader.read_line(&mut rest).unwrap_or(0),
        0,
        "closed after the response"
    );

    go(waiting);
    let old = slow.join().unwrap();
    assert_eq!((old.status, old.json()["version"].as_u64()), (200, Some(1)));
    let exit = gateway.wait_exit();
    assert!(exit.success(), "{exit}; log:\n{}", gateway.log());
}

#[test]
fn gateway_answers_504_when_a_handler_overruns_its_timeout() {
    let fixtures = fixtures();
    let config = format!(
        "[[endpoints]]\nid = \"greet\"\npath_prefix = \"/greet\"\nlibrary = \"{}\"\ntimeout = \"300ms\"\n",
        fixtures.v1.display()
    );
    let gateway = GatewayProcess::start(&config);
    // The handler waits for our go, which comes only after the 504.
    let (slow, waiting) = gateway.start_slow("/greet/slow");
    let overrun = slow.join().unwrap();
    assert_eq!(overrun.status, 504);
    assert_eq!(overrun.json()["error"], "handler timed out");
    let active = |gateway: &GatewayProcess| {
        gateway.admin("GET", "/stats", b"").json()["active_requests"].as_u64()
    };
    assert_eq!(
        active(&gateway),
        Some(1),
        "the call goes on in the background"
    );
    assert_eq!(
        gateway.get("/greet/x").status,
        200,
        "and the endpoint keeps serving"
    );
    go(waiting);
    eventually("the overrunning call to return", || {
        active(&gateway) == Some(0)
    });
}
