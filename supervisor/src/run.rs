//! `handoffctl run`: the supervisor process. The main thread owns the
//! lifecycle (start, stop, exit code); a signal thread, an event thread
//! (logs and systemd notifications) and the admin threads talk to the
//! library's supervisor through its handle.
//!
//! Signals: SIGTERM, SIGINT and SIGHUP are blocked before any thread starts
//! and taken with `sigwait` by the signal thread, so no handler runs at an
//! arbitrary point and no thread can receive them unexpectedly. Generations
//! start with an empty mask (std resets it in the child).

use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use handoff::os::{Sig, SignalSet};
use handoff::supervisor::{
    EventStream, NamedListener, Outcome, Supervisor, SupervisorConfig, SupervisorEvent,
    SupervisorHandle,
};

use crate::admin::{self, Control, Shared};
use crate::cli::{LogFormat, RunArgs};
use crate::config::Settings;
use crate::error::{Failure, chain};
use crate::protocol::{HandoffReport, Response};
use crate::systemd::Notifier;

/// Runs the supervisor until it is stopped; returns the exit code.
pub fn run(args: RunArgs) -> Result<u8, Failure> {
    // Before any thread exists, or a thread could receive them (see sys).
    let signals = SignalSet::block(&[Sig::Term, Sig::Int, Sig::Hup])
        .map_err(|e| Failure::failed(chain(&e)))?;
    let settings = Settings::resolve(args)?;
    init_logging(settings.log_format);
    let notify = Notifier::from_env();

    let mut env = Vec::new();
    if let Some(dir) = &settings.data_dir {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Failure::failed(format!("data directory {}: {e}", dir.display())))?;
        env.push((
            OsString::from(handoff::ENV_DATA_DIR),
            dir.clone().into_os_string(),
        ));
    }
    let listeners = listeners(&settings)?;
    let socket = AdminSocket::bind(&settings.socket, settings.socket_is_default)?;
    // Never a reason not to start: a bad file is a warning (history.rs).
    let (history, warning) = crate::history::load(&settings.history_file);
    match warning {
        Some(warning) => tracing::warn!("{warning}"),
        None => tracing::info!(
            file = %settings.history_file.display(),
            entries = history.entries.len(),
            "history loaded"
        ),
    }
    if let handoff::supervisor::DaemonProtocol::Systemd { quiesce: None, .. } = settings.protocol
        && !settings.timeouts.probation.is_zero()
    {
        tracing::info!(
            "probation without --probation-signal: after each commit the previous generation \
             keeps serving beside the new one (a warm standby) until the probation ends"
        );
    }

    let config = SupervisorConfig {
        program: settings.program.clone(),
        args: settings.args.clone(),
        env,
        mode: settings.mode,
        timeouts: settings.timeouts,
        restart: settings.restart,
        listeners,
        probe: settings.probe.clone(),
        program_sha256: settings.sha256.clone(),
        protocol: settings.protocol,
    };
    tracing::info!(
        binary = %settings.program.display(),
        socket = %settings.socket.display(),
        "starting the supervisor"
    );
    // Subscribed before generation 1 spawns: every phase is seen.
    let (supervisor, events) = Supervisor::start_with_events(config)
        .map_err(|e| Failure::failed(format!("cannot start generation 1: {}", chain(&e))))?;
    let handle = supervisor.handle();

    let (control_tx, control_rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        handle: handle.clone(),
        program: settings.program.clone(),
        sha256: settings.sha256.clone(),
        allowed_uids: settings.allowed_uids.clone(),
        allowed_binaries: settings.allowed_binaries.clone(),
        our_uid: handoff::os::effective_uid(),
        timeouts: settings.timeouts,
        mode: settings.mode,
        identities: crate::identity::Identities::default(),
        notify: notify.clone(),
        upgrading: Mutex::new(()),
        control: control_tx.clone(),
        connections: AtomicUsize::new(0),
        history: Mutex::new(history),
        history_changed: std::sync::Condvar::new(),
        history_file: settings.history_file.clone(),
    });
    spawn("signals", {
        let shared = Arc::clone(&shared);
        let control = control_tx.clone();
        move || signal_loop(signals, &shared, &control)
    })?;
    spawn("events", {
        let handle = handle.clone();
        let notify = notify.clone();
        let shared = Arc::clone(&shared);
        move || event_loop(&events, &handle, &notify, &control_tx, &shared)
    })?;
    admin::serve(socket.take_listener()?, Arc::clone(&shared))
        .map_err(|e| Failure::failed(format!("admin thread: {e}")))?;

    let code = match control_rx.recv() {
        Ok(Control::Stop(first)) => {
            notify.stopping("stopping");
            tracing::info!("stopping: the generations drain");
            let _ = handle.stop();
            let _ = supervisor.join();
            let mut waiting: Vec<_> = first.into_iter().collect();
            while let Ok(control) = control_rx.try_recv() {
                if let Control::Stop(Some(stream)) = control {
                    waiting.push(stream);
                }
            }
            for stream in &waiting {
                admin::respond(stream, &Response::Stopped);
            }
            tracing::info!("stopped");
            0
        }
        Ok(Control::Ended { clean }) => {
            notify.stopping("the generation exited and is not restarted");
            let _ = supervisor.join();
            tracing::info!(
                clean,
                "the generation exited and the restart policy ends here"
            );
            u8::from(!clean)
        }
        Err(_) => 1,
    };
    drop(socket);
    Ok(code)
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), Failure> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map(drop)
        .map_err(|e| Failure::failed(format!("cannot start the {name} thread: {e}")))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HANDOFF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // No colour codes in files and the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Adopts what systemd passed by socket activation, then binds the
/// configured listeners it did not pass.
fn listeners(settings: &Settings) -> Result<Vec<NamedListener>, Failure> {
    let mut listeners = Vec::new();
    for (name, fd) in handoff::os::listen_fds().map_err(|e| Failure::failed(chain(&e)))? {
        let listener = NamedListener::adopt(name.clone(), fd)
            .map_err(|e| Failure::failed(format!("socket-activated fd {name:?}: {}", chain(&e))))?;
        tracing::info!(name = %listener.name, address = %listener.address, "adopted a socket-activated listener");
        listeners.push(listener);
    }
    for (name, addr) in &settings.listeners {
        if listeners.iter().any(|l: &NamedListener| &l.name == name) {
            continue;
        }
        let listener = NamedListener::bind(name.clone(), addr)
            .map_err(|e| Failure::failed(format!("listener {name} ({addr}): {}", chain(&e))))?;
        tracing::info!(name = %listener.name, address = %listener.address, "bound a listener");
        listeners.push(listener);
    }
    let mut names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(Failure::usage(format!(
            "two listeners are named {:?}; names must be unique",
            pair[0]
        )));
    }
    Ok(listeners)
}

/// The admin socket file, removed when the supervisor exits.
struct AdminSocket {
    path: PathBuf,
    listener: Option<std::os::unix::net::UnixListener>,
}

impl AdminSocket {
    /// Binds `path`, creating its directory (0700) if missing. A default
    /// path's directory may sit in a shared place (`/tmp/handoff-UID`): it
    /// must then be ours and writable by nobody else, or another user could
    /// swap the socket file.
    fn bind(path: &Path, default: bool) -> Result<AdminSocket, Failure> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let shown = dir.display();
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| Failure::failed(format!("admin socket directory {shown}: {e}")))?;
            }
            if default {
                use std::os::unix::fs::MetadataExt;
                let meta = std::fs::symlink_metadata(dir)
                    .map_err(|e| Failure::failed(format!("admin socket directory {shown}: {e}")))?;
                let ours = meta.uid() == handoff::os::effective_uid() || meta.uid() == 0;
                if !meta.is_dir() || !ours || meta.mode() & 0o022 != 0 {
                    return Err(Failure::failed(format!(
                        "admin socket directory {shown} is not a directory owned by us and \
                         writable only by us; remove it or pass --socket"
                    )));
                }
            }
        }
        let listener = handoff::os::bind_admin_socket(path)
            .map_err(|e| Failure::failed(format!("admin socket: {}", chain(&e))))?;
        Ok(AdminSocket {
            path: path.to_owned(),
            listener: Some(listener),
        })
    }

    fn take_listener(&self) -> Result<std::os::unix::net::UnixListener, Failure> {
        self.listener
            .as_ref()
            .ok_or_else(|| Failure::failed("admin socket already served"))?
            .try_clone()
            .map_err(|e| Failure::failed(format!("admin socket: {e}")))
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn signal_loop(signals: SignalSet, shared: &Arc<Shared>, control: &mpsc::Sender<Control>) {
    loop {
        match signals.wait() {
            Ok(Sig::Hup) => {
                tracing::info!("SIGHUP: upgrading to the configured binary");
                let shared = Arc::clone(shared);
                let upgrading = std::thread::Builder::new()
                    .name("sighup-upgrade".into())
                    .spawn(
                        move || match admin::upgrade(&shared, admin::Upgrade::default()) {
                            Response::Handoff(report) if report.committed => {
                                tracing::info!(
                                    handoff_id = report.handoff_id,
                                    "SIGHUP upgrade: {}",
                                    report.line()
                                );
                            }
                            Response::Handoff(report) => {
                                tracing::warn!(
                                    handoff_id = report.handoff_id,
                                    "SIGHUP upgrade: {}",
                                    report.line()
                                );
                            }
                            Response::Error { message, .. } => {
                                tracing::warn!("SIGHUP upgrade not started: {message}");
                            }
                            _ => {}
                        },
                    );
                if let Err(error) = upgrading {
                    tracing::warn!(%error, "cannot start the SIGHUP upgrade");
                }
            }
            Ok(signal) => {
                tracing::info!(?signal, "stopping on a signal");
                let _ = control.send(Control::Stop(None));
            }
            Err(error) => {
                tracing::error!(%error, "sigwait failed; signals are no longer handled");
                return;
            }
        }
    }
}

/// Logs every supervisor event and turns them into systemd notifications.
fn event_loop(
    events: &EventStream,
    handle: &SupervisorHandle,
    notify: &Notifier,
    control: &mpsc::Sender<Control>,
    shared: &Shared,
) {
    #[derive(Default)]
    struct Current {
        generation: u64,
        successor_pid: u32,
        incumbent_pid: Option<u32>,
        upgrade: bool,
        started_unix_ms: u64,
        new_binary: Option<crate::protocol::BinaryRecord>,
    }
    let mut current = Current::default();
    let mut ready = false;
    let mut clean_exit = true;
    let mut stopping = false;
    // The stream was subscribed before generation 1 spawned, so its commit
    // arrives as an event; the status check only guards a slow start.
    if let Ok(status) = handle.status()
        && let Some(pid) = status.child_pid
    {
        notify.ready(&format!(
            "serving: generation {}, pid {pid}",
            status.generation
        ));
        tracing::info!(generation = status.generation, pid, "serving");
        ready = true;
    }
    while let Some(event) = events.next() {
        match event {
            SupervisorEvent::HandoffStarted {
                handoff_id,
                upgrade,
                generation,
                successor_pid,
                incumbent_pid,
            } => {
                current = Current {
                    generation,
                    successor_pid,
                    incumbent_pid,
                    upgrade,
                    started_unix_ms: unix_ms(),
                    // Read now, while the successor surely runs its binary
                    // (an upgrade hashed it before it started: a cache hit).
                    new_binary: shared.identities.of_pid(successor_pid),
                };
                tracing::info!(
                    handoff_id,
                    generation,
                    successor_pid,
                    incumbent_pid,
                    upgrade,
                    "handoff started"
                );
            }
            // A phase before any start was seen (not expected since the
            // stream is subscribed before the start): ids only.
            SupervisorEvent::Phase { handoff_id, phase } if current.generation == 0 => {
                tracing::info!(handoff_id, phase, "handoff phase");
            }
            SupervisorEvent::Phase { handoff_id, phase } => {
                tracing::info!(
                    handoff_id,
                    generation = current.generation,
                    successor_pid = current.successor_pid,
                    incumbent_pid = current.incumbent_pid,
                    phase,
                    "handoff phase"
                );
            }
            SupervisorEvent::HandoffFinished(outcome) => {
                let report = HandoffReport::from_outcome(&outcome);
                {
                    let mut history = shared
                        .history
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let old_binary = if current.incumbent_pid.is_some() {
                        history.live.clone()
                    } else {
                        None
                    };
                    history.record(crate::protocol::HistoryEntry {
                        report: report.clone(),
                        started_unix_ms: current.started_unix_ms,
                        old_binary,
                        new_binary: current.new_binary.take(),
                        automatic_rollback: None,
                    });
                    // Saved under the lock: what `history` shows is on disk.
                    persist_history(shared, &history);
                }
                shared.history_changed.notify_all();
                let serving = match &*outcome {
                    Outcome::Committed { new_pid, .. } => Some(*new_pid),
                    Outcome::RolledBack { old_pid, .. } => *old_pid,
                };
                log_outcome(&report);
                // Under --restart never, a start that left nobody serving is
                // how the supervisor ends: not a clean exit.
                clean_exit = report.serving;
                // An upgrade's RELOADING=1 and READY=1 are sent by the thread
                // that carried it out (systemd.rs); here the first start and
                // restarts.
                if !current.upgrade {
                    if !ready && serving.is_some() {
                        notify.ready(&report.status_line());
                        ready = true;
                    } else {
                        notify.status(&report.status_line());
                    }
                }
                current.upgrade = false;
            }
            SupervisorEvent::GenerationExited {
                generation,
                pid,
                status,
                expected,
            } => {
                clean_exit = status.is_clean();
                if stopping || expected {
                    tracing::info!(generation, pid, %status, "generation stopped");
                } else {
                    tracing::warn!(generation, pid, %status, "generation exited outside a handoff");
                    notify.status(&format!(
                        "generation {generation} (pid {pid}) exited ({status})"
                    ));
                }
            }
            SupervisorEvent::GenerationRetired { pid, status, .. } => {
                tracing::info!(pid, %status, "old generation retired");
            }
            SupervisorEvent::RolledBackInProbation(rollback) => {
                tracing::warn!(
                    handoff_id = rollback.handoff_id,
                    generation = rollback.generation,
                    pid = rollback.pid,
                    failed_pid = rollback.failed_pid,
                    reason = %rollback.reason,
                    "automatic rollback: the new generation failed during probation; the previous one serves again"
                );
                {
                    let mut history = shared
                        .history
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let recorded = history.undo(
                        rollback.failed_generation,
                        rollback.handoff_id,
                        crate::protocol::AutomaticRollback {
                            at_unix_ms: unix_ms(),
                            resumed_generation: rollback.generation,
                            resumed_pid: rollback.pid,
                            failed_generation: rollback.failed_generation,
                            failed_pid: rollback.failed_pid,
                            reason: rollback.reason.clone(),
                        },
                    );
                    if !recorded {
                        tracing::warn!(
                            generation = rollback.failed_generation,
                            "no history entry for the commit that was rolled back"
                        );
                    }
                    persist_history(shared, &history);
                }
                shared.history_changed.notify_all();
                notify.status(&format!(
                    "serving: generation {}, pid {} (automatic rollback in probation)",
                    rollback.generation, rollback.pid
                ));
            }
            SupervisorEvent::ResumeChecked { generation, check } => {
                tracing::info!(generation, ?check, "resumed generation checked");
            }
            SupervisorEvent::RestartFailed { reason } => {
                notify.status(&format!("restart failed, retrying: {reason}"));
            }
            SupervisorEvent::Stopping => {
                stopping = true;
                tracing::info!("supervisor stopping");
            }
        }
    }
    let _ = control.send(Control::Ended { clean: clean_exit });
}

/// The log line of a finished handoff.
fn log_outcome(report: &HandoffReport) {
    if report.committed {
        tracing::info!(
            handoff_id = report.handoff_id,
            generation = report.generation,
            old_pid = report.old_pid,
            new_pid = report.new_pid,
            total_ms = report.total_ms,
            "handoff committed"
        );
    } else {
        tracing::warn!(
            handoff_id = report.handoff_id,
            generation = report.generation,
            old_pid = report.old_pid,
            failed_pid = report.new_pid,
            reason = report.abort_reason.as_deref().unwrap_or(""),
            "handoff rolled back"
        );
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Writes the history file; a failure is logged, never fatal. Called with
/// the history locked, so saves never interleave and a `history` answer
/// never shows an entry that is not on disk yet.
fn persist_history(shared: &Shared, history: &crate::history::History) {
    let bytes = match history.to_file_bytes() {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(
                file = %shared.history_file.display(),
                %error,
                "not writing the history file; the history is kept in memory"
            );
            return;
        }
    };
    if let Err(error) = crate::history::save(&shared.history_file, &bytes) {
        tracing::warn!(
            file = %shared.history_file.display(),
            %error,
            "cannot write the history file; the history is kept in memory"
        );
    }
}
