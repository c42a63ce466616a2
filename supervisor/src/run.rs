//! `handoffctl run`: the supervisor process. The main thread owns the
//! process's life (start, stop, exit code); the signal thread
//! (`signals.rs`), the event thread (`events.rs`) and the admin threads
//! (`admin/`) talk to the library's supervisor through its handle.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use handoff::os::SignalSet;
use handoff::supervisor::{EventStream, NamedListener, Supervisor, SupervisorConfig};

use crate::admin::wire::Response;
use crate::admin::{AdminState, Control};
use crate::cli::{LogFormat, RunArgs};
use crate::config::Settings;
use crate::error::{Failure, chain};
use crate::orphan::{RecordWriter, SupervisorLock};
use crate::recorder::HistoryRecorder;
use crate::reexec::Carry;
use crate::reexec::state::EventsCarried;
use crate::systemd::Notifier;
use handoff::fault::SupervisorStep;

/// Runs the supervisor until it is stopped; returns the exit code.
pub fn run(args: RunArgs) -> Result<u8, Failure> {
    if let Some(fd) = args.restore_fd {
        return crate::reexec::restore::run_restored(fd, args.exec_back);
    }
    // Before any thread exists, or a thread could receive them (see sys).
    let signals =
        SignalSet::block(&crate::signals::TAKEN).map_err(|e| Failure::failed(chain(&e)))?;
    let run_args = run_args()?;
    let start_path = std::env::current_exe()
        .map_err(|e| Failure::failed(format!("finding our own binary: {e}")))?;
    let settings = Settings::resolve(args)?;
    init_logging(settings.log_format);
    // Before anything is bound: one supervisor per admin socket (its
    // directory checked before the lock file is opened there).
    prepare_socket_dir(&settings.socket, settings.socket_is_default)?;
    let lock = SupervisorLock::take(&settings.socket)?;
    let image = crate::reexec::Image::open(start_path)?;
    make_data_dir(&settings)?;
    // Bound before any generation starts: a bad path fails alone.
    let socket = AdminSocket::bind(&settings.socket, settings.socket_is_default)?;
    // So is the metrics address: one that cannot be bound fails here.
    let metrics = crate::metrics::Metrics::bind(settings.metrics.clone())?;
    warn_if_orphans_cannot_be_adopted(&settings);
    let orphan = crate::orphan::orphan_to_adopt(&settings.socket, settings.timeouts.kill_grace);
    // Read first: handoff ids go on past the ones it holds (said once the
    // start went through: a start that fails says one thing).
    let (mut history, history_warning) = crate::history::load(&settings.history_file);
    let first_handoff_id = history.next_handoff_id();
    let (supervisor, events, listeners, passed) = match &orphan {
        Some(record) => adopt(&settings, record, first_handoff_id)?,
        None => start(&settings, first_handoff_id)?,
    };
    // Under systemd, none: its units and its fd store own the files.
    let socket_files = match (passed, Notifier::from_env().is_active()) {
        (Some(passed), false) => {
            crate::socket_file::SocketFile::held(&duplicates(&listeners)?, &passed)
        }
        _ => Vec::new(),
    };
    // Kept by systemd across a crash of this process, if the unit allows.
    Notifier::from_env().store_listeners(&listeners);
    log_history(&settings, &history, history_warning);
    let identities = crate::identity::Identities::default();
    if orphan.is_some() {
        // No start of its own tells what an adopted generation runs: what
        // the first upgrade replaces, and a rollback goes back to.
        history.live = supervisor.handle().status().ok().and_then(|status| {
            let pid = status.child_pid?;
            identities.started(pid, &status.program)?;
            identities.of_generation(pid)
        });
    }
    let carry = Carry {
        image,
        run_args,
        config: settings.config.clone(),
        listeners,
        admin: socket.duplicate()?,
        allowed: settings.allowed_supervisor_binaries.clone(),
        reexecs: 0,
        lock,
        socket_files,
    };
    Running {
        settings,
        supervisor,
        events,
        socket,
        history,
        carry,
        fan_out: EventsCarried {
            ready: false,
            clean: true,
        },
        metrics,
        identities,
    }
    .serve(signals, None)
}

/// What a supervisor starts with: the library's supervisor, its events,
/// the listeners by name, and the names systemd passed (socket activation
/// or its fd store: files this supervisor does not remove; `None` when
/// that cannot be told).
type Started = (Supervisor, EventStream, Listeners, Option<Vec<String>>);

/// Listeners by name.
type Listeners = Vec<(String, OwnedFd)>;

/// A first start: binds (or takes from systemd) the listeners and starts
/// generation 1, its handoff numbered `first_handoff_id`.
fn start(settings: &Settings, first_handoff_id: u64) -> Result<Started, Failure> {
    let (listeners, passed) = listeners(settings)?;
    let config = SupervisorConfig {
        first_handoff_id,
        ..supervisor_config(settings, duplicates(&listeners)?)?
    };
    tracing::info!(
        binary = %settings.program.display(),
        socket = %settings.socket.display(),
        "starting the supervisor"
    );
    // Subscribed before generation 1 spawns: every phase is seen.
    let (supervisor, events) = Supervisor::start_with_events(config)
        .map_err(|e| Failure::failed(format!("cannot start generation 1: {}", chain(&e))))?;
    Ok((supervisor, events, listeners, Some(passed)))
}

/// A start after a crash: takes over the generation a previous supervisor
/// left serving, with its listeners (nothing is bound, nothing closed).
fn adopt(
    settings: &Settings,
    record: &crate::orphan::Record,
    first_handoff_id: u64,
) -> Result<Started, Failure> {
    tracing::info!(
        previous_supervisor = record.supervisor_pid,
        "a generation of a previous supervisor still runs: adopting it"
    );
    // Socket activation passes the same sockets again: the orphan's copies
    // are the ones kept.
    let passed = handoff::os::listen_fds()
        .map(|fds| fds.into_iter().map(|(name, _)| name).collect())
        .ok();
    step(SupervisorStep::AdoptBeforeListeners)?;
    let (mut adoption, orphan) = record.claim(&settings.timeouts)?;
    let listeners = adoption.orphan.take_listeners();
    let mut names: Vec<&str> = listeners.iter().map(|(name, _)| name.as_str()).collect();
    let mut wanted: Vec<&str> = settings
        .listeners
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    names.sort_unstable();
    wanted.sort_unstable();
    if names != wanted {
        tracing::warn!(
            adopted = ?names,
            configured = ?wanted,
            "the adopted generation holds other listeners than the configuration names; it \
             keeps them until the next upgrade"
        );
    }
    step(SupervisorStep::AdoptAfterListeners)?;
    let config = SupervisorConfig {
        first_handoff_id,
        ..supervisor_config(settings, duplicates(&listeners)?)?
    };
    let (supervisor, events) = Supervisor::adopt(config, adoption).map_err(|e| {
        Failure::failed(format!(
            "cannot supervise the adopted generation: {}",
            chain(&e)
        ))
    })?;
    tracing::info!(
        generation = orphan.generation,
        pid = orphan.pid,
        "adopted: the generation serves under this supervisor"
    );
    Ok((supervisor, events, listeners, passed))
}

/// A library generation orphaned by a crash waits at a socket beside the
/// admin socket, and a foreign one's notification socket is there too;
/// both paths are longer: said at start, not found at the crash.
fn warn_if_orphans_cannot_be_adopted(settings: &Settings) {
    let prefix = crate::orphan::rendezvous_prefix(&settings.socket);
    if let handoff::supervisor::DaemonProtocol::Library = settings.protocol {
        let mut longest = prefix.into_os_string();
        longest.push(format!(".gen{}", u32::MAX));
        if !handoff::os::fits_unix_socket(Path::new(&longest)) {
            tracing::warn!(
                socket = %settings.socket.display(),
                "the admin socket's path is too long for the rendezvous sockets beside it \
                 (.adopt.genN): a generation orphaned by a crash of this supervisor could not \
                 be adopted; choose a shorter --socket"
            );
        }
    } else if handoff::supervisor::notify_home(&prefix).is_none() {
        tracing::warn!(
            socket = %settings.socket.display(),
            "the admin socket's path is too long for the notification sockets beside it \
             (.adopt.notify/genN.sock): they go under the temporary directory, and a \
             generation adopted after a crash of this supervisor could not notify the new \
             one; choose a shorter --socket"
        );
    }
}

/// A fault point of the adoption.
fn step(step: SupervisorStep) -> Result<(), Failure> {
    handoff::fault::step(step)
        .map_err(|_| Failure::failed(format!("an injected fault at {}", step.as_str())))
}

/// `run`'s own arguments as given (after `run`), which a re-exec carries.
fn run_args() -> Result<Vec<String>, Failure> {
    std::env::args_os()
        .skip(2)
        .map(|arg| {
            arg.into_string().map_err(|arg| {
                Failure::usage(format!(
                    "argument {arg:?} is not UTF-8; handoffctl run takes UTF-8 arguments only"
                ))
            })
        })
        .collect()
}

/// A supervisor process however it began (a first start, or an image
/// restored after a re-exec): what its threads are built from.
pub struct Running {
    /// The resolved options.
    pub settings: Settings,
    /// The library's supervisor.
    pub supervisor: Supervisor,
    /// Its events, subscribed before anything happened.
    pub events: EventStream,
    /// The admin socket.
    pub socket: AdminSocket,
    /// The history.
    pub history: crate::history::History,
    /// What a re-exec carries.
    pub carry: Carry,
    /// The event fan-out's memory.
    pub fan_out: EventsCarried,
    /// The Prometheus metrics (bound; off without `--metrics`).
    pub metrics: crate::metrics::Metrics,
    /// The binaries hashed so far.
    pub identities: crate::identity::Identities,
}

impl Running {
    /// Starts the signal, event and admin threads, answers `answer`'s
    /// caller (a re-exec's), and waits for the end; the exit code.
    pub fn serve(
        self,
        signals: SignalSet,
        answer: Option<(UnixStream, Response)>,
    ) -> Result<u8, Failure> {
        let Running {
            settings,
            supervisor,
            events,
            socket,
            history,
            carry,
            fan_out,
            metrics,
            identities,
        } = self;
        let notify = Notifier::from_env();
        let handle = supervisor.handle();
        let (control_tx, control_rx) = mpsc::channel();
        let gate = handoff::AcceptGate::new().map_err(|e| Failure::failed(chain(&e)))?;
        let state = Arc::new(AdminState {
            handle: handle.clone(),
            program: settings.program.clone(),
            sha256: settings.sha256.clone(),
            allowed_uids: settings.allowed_uids.clone(),
            allowed_binaries: settings.allowed_binaries.clone(),
            our_uid: handoff::os::effective_uid(),
            timeouts: settings.timeouts,
            mode: settings.mode,
            identities,
            notify: notify.clone(),
            upgrading: Mutex::new(()),
            control: control_tx.clone(),
            gate,
            recorder: HistoryRecorder::new(history, settings.history_file.clone()),
            carry,
            frozen: Mutex::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
            metrics: metrics.feed(),
        });
        metrics.start(Arc::clone(&state))?;
        // Watching before the admin socket answers: a deploy after any
        // answer is seen.
        watch_landings(&state)?;
        spawn("signals", {
            let state = Arc::clone(&state);
            move || crate::signals::signal_loop(signals, &state)
        })?;
        let record = RecordWriter::new(
            settings.socket.clone(),
            settings.protocol,
            settings.args.clone(),
        );
        spawn("events", {
            let state = Arc::clone(&state);
            move || {
                crate::events::event_loop(&events, &handle, &state, &control_tx, fan_out, record)
            }
        })?;
        crate::admin::server::serve(socket.take_listener()?, Arc::clone(&state))
            .map_err(|e| Failure::failed(format!("admin thread: {e}")))?;
        if let Some((caller, response)) = answer {
            crate::admin::server::respond(&caller, &response);
        }
        let code = until_the_end(&control_rx, supervisor, &notify);
        // Everything exited: nothing is left for a next supervisor to adopt,
        // and no listener's socket file is ours to keep.
        crate::orphan::Record::remove(&settings.socket);
        for file in &state.carry.socket_files {
            file.remove();
        }
        drop(socket);
        Ok(code)
    }
}

/// Hashes each build that lands at the configured program's path, on a
/// thread of its own, from now on; without a watch, each build is hashed
/// at its upgrade.
fn watch_landings(state: &Arc<AdminState>) -> Result<(), Failure> {
    match handoff::os::Landings::watch(&state.program) {
        Ok(landings) => spawn("landings", {
            let state = Arc::clone(state);
            move || crate::identity::hash_landings(&landings, &state.program, &state.identities)
        }),
        Err(error) => {
            tracing::info!(
                program = %state.program.display(),
                %error,
                "not watching for new builds: each is hashed at its upgrade"
            );
            Ok(())
        }
    }
}

/// Waits for a stop (answered once everything exited) or for the
/// supervisor to end on its own; the exit code.
fn until_the_end(
    control: &mpsc::Receiver<Control>,
    supervisor: Supervisor,
    notify: &Notifier,
) -> u8 {
    match control.recv() {
        Ok(Control::Stop(first)) => {
            notify.stopping("stopping");
            tracing::info!("stopping: the generations drain");
            let _ = supervisor.handle().stop();
            let _ = supervisor.join();
            let mut waiting: Vec<_> = first.into_iter().collect();
            // The event thread ends with the event stream: what it records
            // of the stop's last events (a cancelled handoff) is written
            // before the answer and the exit.
            let deadline = std::time::Instant::now() + handoff::timeouts::EVENTS_FLUSH;
            loop {
                match control
                    .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                {
                    Ok(Control::Stop(stream)) => waiting.extend(stream),
                    Ok(Control::Ended { .. }) => break,
                    Err(_) => {
                        tracing::warn!(
                            "the event thread did not end: the history may miss the stop's last handoff"
                        );
                        break;
                    }
                }
            }
            for stream in &waiting {
                crate::admin::server::respond(stream, &Response::Stopped);
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
    }
}

/// Makes the data directory (mode 0700) if it is missing: before anything
/// is bound, a path that cannot be one is an input error naming the flag.
fn make_data_dir(settings: &Settings) -> Result<(), Failure> {
    let Some(dir) = &settings.data_dir else {
        return Ok(());
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            Failure::usage(format!(
                "--data-dir {}: cannot make it a directory ({e}); give a writable path",
                dir.display()
            ))
        })
}

/// The library's configuration: the data directory made (its path passed
/// to every generation), with `listeners`.
pub fn supervisor_config(
    settings: &Settings,
    listeners: Vec<NamedListener>,
) -> Result<SupervisorConfig, Failure> {
    let mut env = Vec::new();
    make_data_dir(settings)?;
    if let Some(dir) = &settings.data_dir {
        env.push((
            OsString::from(handoff::ENV_DATA_DIR),
            dir.clone().into_os_string(),
        ));
    }
    if let handoff::supervisor::DaemonProtocol::Systemd { quiesce: None, .. } = settings.protocol
        && !settings.timeouts.probation.is_zero()
    {
        tracing::info!(
            "probation without --probation-signal: after each commit the previous generation \
             keeps serving beside the new one (a warm standby) until the probation ends"
        );
    }
    Ok(SupervisorConfig {
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
        rendezvous: Some(crate::orphan::rendezvous_prefix(&settings.socket)),
        first_handoff_id: 1,
    })
}

/// Says what the history file gave; never a reason not to start (a bad
/// file is a warning, see history.rs).
fn log_history(settings: &Settings, history: &crate::history::History, warning: Option<String>) {
    match warning {
        Some(warning) => tracing::warn!("{warning}"),
        None => tracing::info!(
            file = %settings.history_file.display(),
            entries = history.entries.len(),
            "history loaded"
        ),
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), Failure> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map(drop)
        .map_err(|e| Failure::failed(format!("cannot start the {name} thread: {e}")))
}

/// Standard error for log lines, its write failures dropped: a reader gone
/// (`EPIPE`) or a full disk loses log lines, never the supervisor (the
/// logging layer would otherwise report the failure on standard error,
/// and that report panics).
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HANDOFF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // No colour codes in files and the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_writer(|| LossyStderr)
        .with_ansi(ansi)
        .with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Duplicates of `listeners` for the library (the originals stay with the
/// re-exec's carry).
pub fn duplicates(listeners: &[(String, OwnedFd)]) -> Result<Vec<NamedListener>, Failure> {
    listeners
        .iter()
        .map(|(name, fd)| {
            let fd = fd
                .try_clone()
                .map_err(|e| Failure::failed(format!("listener {name}: {e}")))?;
            NamedListener::adopt(name.clone(), fd)
                .map_err(|e| Failure::failed(format!("listener {name}: {}", chain(&e))))
        })
        .collect()
}

/// Adopts what systemd passed by socket activation, then binds the
/// configured listeners it did not pass; each by name, and the names
/// systemd passed.
fn listeners(settings: &Settings) -> Result<(Listeners, Vec<String>), Failure> {
    let mut listeners = Vec::new();
    for (name, fd) in handoff::os::listen_fds().map_err(|e| Failure::failed(chain(&e)))? {
        let listener = NamedListener::adopt(name.clone(), fd)
            .map_err(|e| Failure::failed(format!("socket-activated fd {name:?}: {}", chain(&e))))?;
        tracing::info!(name = %listener.name, address = %listener.address, "adopted a socket-activated listener");
        listeners.push(listener);
    }
    let passed: Vec<String> = listeners.iter().map(|l| l.name.clone()).collect();
    for (name, addr) in &settings.listeners {
        if passed.contains(name) {
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
    Ok((
        listeners.into_iter().map(|l| (l.name, l.fd)).collect(),
        passed,
    ))
}

/// Creates the admin socket's directory (0700) if missing. A default
/// path's directory may sit in a shared place (`/tmp/handoff-UID`): it must
/// then be ours and writable by nobody else, or another user could swap the
/// socket file, or plant links where the lock and the record go. Checked
/// before anything is written there.
pub fn prepare_socket_dir(path: &Path, default: bool) -> Result<(), Failure> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
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
    Ok(())
}

/// The admin socket file, removed when the supervisor exits.
pub struct AdminSocket {
    path: PathBuf,
    listener: Option<std::os::unix::net::UnixListener>,
}

impl AdminSocket {
    /// Binds `path`, creating its directory (0700) if missing. A default
    /// path's directory may sit in a shared place (`/tmp/handoff-UID`): it
    /// must then be ours and writable by nobody else, or another user could
    /// swap the socket file.
    fn bind(path: &Path, default: bool) -> Result<AdminSocket, Failure> {
        prepare_socket_dir(path, default)?;
        let listener = handoff::os::bind_admin_socket(path)
            .map_err(|e| Failure::failed(format!("admin socket: {}", chain(&e))))?;
        Ok(AdminSocket {
            path: path.to_owned(),
            listener: Some(listener),
        })
    }

    /// The socket a re-exec carried over, at `path`.
    pub fn adopt(path: PathBuf, listener: std::os::unix::net::UnixListener) -> AdminSocket {
        AdminSocket {
            path,
            listener: Some(listener),
        }
    }

    /// A duplicate of the listener (for a re-exec to carry).
    pub fn duplicate(&self) -> Result<std::os::unix::net::UnixListener, Failure> {
        self.take_listener()
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
