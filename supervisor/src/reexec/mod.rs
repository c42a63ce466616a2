//! `handoffctl reexec` (and SIGUSR2): the supervisor replaces its own image
//! with a new `handoffctl` build, keeping its pid, its generations and
//! their control connections, its listeners and its admin socket.
//!
//! In the old image (this file), in order: check the target (the start
//! path or an allowed build, executable, optionally pinned), run its
//! `self-check` (refused before anything changes), `RELOADING=1`, close the
//! admin gate and let the connections being served finish, freeze the
//! library's supervisor, wait until the event thread recorded everything,
//! write the whole state into a sealed memfd, block every signal, and exec
//! the hashed file itself. The new image (`restore.rs`) takes everything
//! back and answers the caller; until it has, a crash or a stall there
//! execs this image back (its file kept open since the start) with the
//! same state. If the exec itself fails, this image goes on.

pub mod restore;
pub mod state;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use handoff::fault::{self, SupervisorStep};
use handoff::os::SignalSet;

use self::state::{
    Carried, CarriedConfig, CarriedListener, EventsCarried, STATE_SCHEMA, SelfCheck,
};
use crate::admin::AdminState;
use crate::admin::wire::{ErrorKind, ImageRecord, ReexecReport, Response, millis};
use crate::error::{Failure, chain};

/// How long a target's `self-check` may take.
pub const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the new image has, from its start, to take over before it
/// execs the old one back.
pub const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the event thread has to catch up with the freeze.
const EVENTS_CATCH_UP: Duration = Duration::from_secs(5);

/// What a re-exec asks for.
#[derive(Debug, Default)]
pub struct Reexec {
    /// `--binary` (absolute); the start path when absent.
    pub binary: Option<PathBuf>,
    /// `--sha256`.
    pub sha256: Option<String>,
    /// `--if-changed`.
    pub if_changed: bool,
}

/// The running image: its file (open since the start: what an exec back
/// runs), the path the supervisor was first started from, and its identity
/// once hashed.
#[derive(Debug)]
pub struct Image {
    file: File,
    /// The path the supervisor was first started from.
    pub start_path: PathBuf,
    record: OnceLock<ImageRecord>,
}

impl Image {
    /// Opens this process's image; `start_path` is where it was first
    /// started from (kept across re-execs).
    pub fn open(start_path: PathBuf) -> Result<Image, Failure> {
        let file = File::open("/proc/self/exe")
            .map_err(|e| Failure::failed(format!("opening our own image: {e}")))?;
        Ok(Image {
            file,
            start_path,
            record: OnceLock::new(),
        })
    }

    /// Knows its record already (a re-exec's image was hashed by the one
    /// before it, as its target).
    pub fn with_record(self, record: ImageRecord) -> Image {
        let _ = self.record.set(record);
        self
    }

    /// Its version and sha256 (hashed once, through the open file).
    pub fn record(&self) -> Result<ImageRecord, String> {
        if let Some(record) = self.record.get() {
            return Ok(record.clone());
        }
        // An open file description of its own: hashing moves its offset.
        let file =
            File::open(self.exec_path()).map_err(|e| format!("reading our own image: {e}"))?;
        let sha256 =
            handoff::os::sha256_hex(&file).map_err(|e| format!("hashing our own image: {e}"))?;
        let record = ImageRecord {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            sha256,
        };
        Ok(self.record.get_or_init(|| record).clone())
    }

    /// A path that executes this image.
    pub fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Its fd.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// What a re-exec carries besides the library's state.
#[derive(Debug)]
pub struct Carry {
    /// The running image.
    pub image: Image,
    /// `run`'s arguments at the first start.
    pub run_args: Vec<String>,
    /// The config file as read at the first start.
    pub config: Option<CarriedConfig>,
    /// The listeners by name (duplicates of the library's).
    pub listeners: Vec<(String, OwnedFd)>,
    /// The admin socket's listener (a duplicate of the accept thread's).
    pub admin: UnixListener,
    /// `allowed_supervisor_binaries`.
    pub allowed: Vec<PathBuf>,
    /// Re-execs committed so far.
    pub reexecs: u64,
    /// The supervisor's lock, held across re-execs.
    pub lock: crate::orphan::SupervisorLock,
    /// The listeners' socket files to remove at a clean stop.
    pub socket_files: Vec<crate::socket_file::SocketFile>,
}

/// `handoffctl self-check`: what this build is and can take over.
pub fn self_check() -> Result<(), Failure> {
    let json =
        serde_json::to_string(&SelfCheck::ours()).map_err(|e| Failure::failed(e.to_string()))?;
    println!("{json}");
    Ok(())
}

/// Carries out a re-exec; answers `caller` (if any) unless the new image
/// took the answer over, and logs the outcome.
pub fn reexec(state: &AdminState, asked: Reexec, caller: Option<UnixStream>) {
    let response = attempt(state, asked, caller.as_ref());
    match &response {
        Response::Reexec(report) if !report.changed => {
            tracing::info!("re-exec: {}", report.line())
        }
        Response::Reexec(report) => tracing::warn!("re-exec: {}", report.line()),
        Response::Error { message, .. } => tracing::warn!("re-exec not started: {message}"),
        _ => {}
    }
    if let Some(caller) = &caller {
        crate::admin::server::respond(caller, &response);
    }
}

/// Every step up to the exec; returns only if this image stays in charge.
fn attempt(state: &AdminState, asked: Reexec, caller: Option<&UnixStream>) -> Response {
    let mut steps = Steps::new();
    let Ok(_one_at_a_time) = state.upgrading.try_lock() else {
        return Response::error(ErrorKind::Busy, "a handoff or a re-exec is in flight");
    };
    let from = match state.carry.image.record() {
        Ok(from) => from,
        Err(message) => return Response::error(ErrorKind::Failed, message),
    };
    let target = match Target::check(state, asked.binary, asked.sha256) {
        Ok(target) => target,
        Err(message) => return Response::error(ErrorKind::Rejected, message),
    };
    let mut report = ReexecReport {
        changed: true,
        committed: false,
        reason: None,
        pid: std::process::id(),
        to: Some(ImageRecord {
            version: String::new(),
            sha256: target.sha256.clone(),
        }),
        from,
        phases_ms: BTreeMap::new(),
        total_ms: 0.0,
    };
    if asked.if_changed && target.sha256 == report.from.sha256 {
        report.changed = false;
        // The same build: the version running now.
        report.to = Some(report.from.clone());
        report.total_ms = millis(steps.begun.elapsed());
        return Response::Reexec(report);
    }
    let failed = |mut report: ReexecReport, steps: &Steps, reason: String| {
        report.reason = Some(reason);
        report.phases_ms = steps.phases.clone();
        report.total_ms = millis(steps.begun.elapsed());
        Response::Reexec(report)
    };
    let check = match preflight(&target) {
        Ok(check) => check,
        Err(reason) => return failed(report, &steps, reason),
    };
    if let Some(to) = &mut report.to {
        to.version = check.version;
    }
    steps.mark("preflight");
    state.notify.reloading("re-executing the supervisor");
    let response = match freeze_and_exec(state, &target, &report, caller, &mut steps) {
        Ok(reason) => failed(report, &steps, reason),
        Err(refusal) => *refusal,
    };
    state.notify.ready(&serving_line(state, &response));
    response
}

/// The steps' durations, from the request.
struct Steps {
    begun: Instant,
    requested_ns: u64,
    last: Instant,
    phases: BTreeMap<String, f64>,
}

impl Steps {
    fn new() -> Steps {
        let now = Instant::now();
        Steps {
            begun: now,
            requested_ns: handoff::os::monotonic_nanos().unwrap_or(0),
            last: now,
            phases: BTreeMap::new(),
        }
    }

    fn mark(&mut self, name: &str) {
        let now = Instant::now();
        self.phases.insert(name.to_owned(), millis(now - self.last));
        self.last = now;
    }
}

/// Closes the admin gate, freezes the supervisor, writes the state and
/// execs. Returns only when this image stays in charge: `Ok(reason)` for a
/// failed re-exec, `Err(response)` for a refusal (busy, stopping).
fn freeze_and_exec(
    state: &AdminState,
    target: &Target,
    report: &ReexecReport,
    caller: Option<&UnixStream>,
    steps: &mut Steps,
) -> Result<String, Box<Response>> {
    state.gate.close();
    let _reopen = Reopen(&state.gate);
    let bound = state.timeouts.admin_request;
    if !state.gate.wait_idle(Instant::now() + bound) {
        return Ok(format!(
            "{} admin connections were still being served after {}",
            state.gate.open_connections(),
            handoff::timeouts::format_duration(bound)
        ));
    }
    steps.mark("quiesce");
    let (caught_up, events) = std::sync::mpsc::channel();
    *lock(&state.frozen) = Some(caught_up);
    let frozen = match state.handle.freeze() {
        Ok(frozen) => frozen,
        Err(error) => {
            *lock(&state.frozen) = None;
            return Err(Box::new(match error {
                handoff::Error::Busy => {
                    Response::error(ErrorKind::Busy, "a handoff is in flight; retry after it")
                }
                handoff::Error::SessionOver => {
                    Response::error(ErrorKind::Stopping, "the supervisor is stopping")
                }
                other => return Ok(format!("freezing the supervisor failed: {}", chain(&other))),
            }));
        }
    };
    let caught_up = events.recv_timeout(EVENTS_CATCH_UP);
    // Whatever happened, no later freeze may find this one's sender.
    *lock(&state.frozen) = None;
    let Ok(events) = caught_up else {
        return Ok("the event thread did not catch up with the freeze".into());
    };
    steps.mark("freeze");
    // A stop asked meanwhile waits behind the frozen supervisor: it goes
    // first (the re-exec would carry the supervisor past it).
    if state.stop_requested() {
        return Ok("a stop was asked".into());
    }
    let reason = exec(state, target, report, caller, &frozen, events, steps);
    // `frozen` drops after this: the supervisor goes on in this image.
    Ok(reason)
}

/// Writes the state and execs the target; returns why that failed.
fn exec(
    state: &AdminState,
    target: &Target,
    report: &ReexecReport,
    caller: Option<&UnixStream>,
    frozen: &handoff::supervisor::Frozen,
    events: EventsCarried,
    steps: &mut Steps,
) -> String {
    let carry = &state.carry;
    let memfd = match carried(state, report, caller, frozen, events, steps) {
        Ok(memfd) => memfd,
        Err(reason) => return reason,
    };
    let mut keep: Vec<BorrowedFd<'_>> = carry.listeners.iter().map(|(_, fd)| fd.as_fd()).collect();
    keep.extend([
        carry.admin.as_fd(),
        carry.image.as_fd(),
        carry.lock.as_fd(),
        memfd.as_fd(),
    ]);
    keep.extend(frozen.fds().iter().map(AsFd::as_fd));
    keep.extend(caller.map(AsFd::as_fd));
    let args = restore_args(&carry.image.start_path, memfd.as_raw_fd(), None);
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let prepared = match handoff::os::Exec::new(&target.exec_path(), &args, &env, &keep) {
        Ok(prepared) => prepared,
        Err(error) => return chain(&error),
    };
    if fault::step(SupervisorStep::ReexecBeforeExec).is_err() {
        return "an injected fault before the exec".into();
    }
    tracing::info!(
        target = %target.program.display(),
        sha256 = %target.sha256,
        "re-exec: replacing the supervisor's image"
    );
    let blocked = SignalSet::block_all();
    let error = prepared.exec();
    if let Ok(blocked) = blocked
        && let Err(error) = blocked.restore()
    {
        tracing::error!(%error, "restoring the signal mask after a failed exec");
    }
    chain(&error)
}

/// The whole state, written into a sealed memfd.
fn carried(
    state: &AdminState,
    report: &ReexecReport,
    caller: Option<&UnixStream>,
    frozen: &handoff::supervisor::Frozen,
    events: EventsCarried,
    steps: &mut Steps,
) -> Result<OwnedFd, String> {
    let carry = &state.carry;
    let library = serde_json::from_slice(frozen.state())
        .map_err(|error| format!("the library's state is not JSON: {error}"))?;
    let mut carried = Carried {
        schema: STATE_SCHEMA,
        must_understand: Carried::must_understand(),
        from: report.from.clone(),
        to: report.to.clone(),
        start_path: carry.image.start_path.clone(),
        run_args: carry.run_args.clone(),
        config: carry.config.clone(),
        listeners: carry
            .listeners
            .iter()
            .map(|(name, fd)| CarriedListener {
                name: name.clone(),
                fd: fd.as_raw_fd(),
            })
            .collect(),
        admin_fd: carry.admin.as_raw_fd(),
        lock_fd: Some(carry.lock.as_fd().as_raw_fd()),
        library,
        library_fds: frozen.fds().iter().map(AsRawFd::as_raw_fd).collect(),
        history: state.recorder.lock().clone(),
        caller_fd: caller.map(AsRawFd::as_raw_fd),
        image_fd: carry.image.as_fd().as_raw_fd(),
        requested_ns: steps.requested_ns,
        exec_ns: 0,
        phases_ms: BTreeMap::new(),
        events,
        reexecs: carry.reexecs,
        socket_files: carry.socket_files.clone(),
        // The event thread caught up with the freeze: every event before
        // it is counted.
        metrics: state.metrics.to_state(),
        identities: state.identities.entries(),
    };
    steps.mark("write");
    carried.phases_ms = steps.phases.clone();
    carried.exec_ns = handoff::os::monotonic_nanos().unwrap_or(0);
    let bytes = carried.to_bytes()?;
    handoff::os::sealed_memfd("handoffctl-state", &bytes).map_err(|e| chain(&e))
}

/// `run --restore-fd N [--exec-back REASON]`, with `argv[0]` the start path.
pub fn restore_args(start_path: &Path, memfd: i32, exec_back: Option<&str>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        start_path.as_os_str().to_owned(),
        "run".into(),
        "--restore-fd".into(),
        memfd.to_string().into(),
    ];
    if let Some(reason) = exec_back {
        args.extend(["--exec-back".into(), reason.into()]);
    }
    args
}

/// Reopens the admin gate when the re-exec did not happen.
struct Reopen<'a>(&'a handoff::AcceptGate);

impl Drop for Reopen<'_> {
    fn drop(&mut self) {
        self.0.reopen();
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// systemd's `STATUS=` after a re-exec that left this image in charge.
fn serving_line(state: &AdminState, response: &Response) -> String {
    let why = match response {
        Response::Reexec(report) => report.reason.clone().unwrap_or_default(),
        Response::Error { message, .. } => message.clone(),
        _ => String::new(),
    };
    match state.handle.status() {
        Ok(status) => match status.child_pid {
            Some(pid) => format!(
                "serving: generation {}, pid {pid} (re-exec failed: {why})",
                status.generation
            ),
            None => format!("starting (re-exec failed: {why})"),
        },
        Err(_) => format!("stopping (re-exec failed: {why})"),
    }
}

/// Runs the target's `self-check` in the environment the exec will give
/// it; what it says it is, if it can take over from this build.
fn preflight(target: &Target) -> Result<SelfCheck, String> {
    let ran = handoff::os::run_bounded(
        &target.exec_path(),
        &[std::ffi::OsStr::new("self-check")],
        SELF_CHECK_TIMEOUT,
    )
    .map_err(|error| format!("its self-check did not run: {}", chain(&error)))?;
    if ran.code != Some(0) {
        let said = ran.stderr.lines().last().unwrap_or("").trim().to_owned();
        return Err(format!(
            "its self-check failed ({}){}",
            ran.code.map_or_else(
                || "killed by a signal".to_owned(),
                |code| format!("exit {code}")
            ),
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        ));
    }
    let check: SelfCheck = serde_json::from_str(ran.stdout.trim())
        .map_err(|error| format!("its self-check printed something else than expected: {error}"))?;
    check
        .can_take_over_from(&SelfCheck::ours())
        .map_err(|why| format!("it cannot take over: {why}"))?;
    Ok(check)
}

/// The image a re-exec runs: the start path or an allowed build,
/// executable, opened and hashed through the open file (pinned when a
/// sha256 is expected; else hashed once per file identity).
struct Target {
    program: PathBuf,
    file: File,
    sha256: String,
}

impl Target {
    fn check(
        state: &AdminState,
        binary: Option<PathBuf>,
        sha256: Option<String>,
    ) -> Result<Target, String> {
        let carry = &state.carry;
        let program = binary.unwrap_or_else(|| carry.image.start_path.clone());
        if !program.is_absolute() {
            return Err(format!(
                "--binary {}: not an absolute path; give the full path",
                program.display()
            ));
        }
        let canonical =
            |path: &Path| std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let wanted = canonical(&program);
        let allowed = std::iter::once(&carry.image.start_path)
            .chain(&carry.allowed)
            .any(|candidate| *candidate == program || canonical(candidate) == wanted);
        if !allowed {
            return Err(format!(
                "--binary {}: neither the path this supervisor was started from ({}) nor \
                 allowed (add it with run's --allow-supervisor-binary, or the config's \
                 allowed_supervisor_binaries)",
                program.display(),
                carry.image.start_path.display()
            ));
        }
        crate::config::check_executable(&program).map_err(|failure| failure.message)?;
        let file = File::open(&program).map_err(|e| format!("{}: {e}", program.display()))?;
        let actual = state
            .identities
            .sha256_of(&file)
            .map_err(|e| format!("hashing {}: {e}", program.display()))?;
        if let Some(expected) = sha256 {
            let expected = crate::config::parse_sha256(&expected)
                .map_err(|f| format!("--sha256: {}", f.message))?;
            if expected != actual {
                return Err(format!(
                    "binary {} has sha256 {actual}, not the {expected} --sha256 expects",
                    program.display()
                ));
            }
        }
        Ok(Target {
            program,
            file,
            sha256: actual,
        })
    }

    /// A path that executes exactly the open, hashed file.
    fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}
