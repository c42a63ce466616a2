//! The image after a re-exec: `run --restore-fd N`. It owns every fd it
//! inherited, reads the state from the sealed memfd, and takes the
//! supervisor back working on duplicates, so that the originals stay
//! exactly as the old image left them. Until it commits, a crash (a fatal
//! signal), a stall past [`TAKEOVER_TIMEOUT`] or a refusal (a schema it
//! does not read, arguments it does not accept, an injected fault) execs
//! the old image back with the same memfd and fds (`--exec-back REASON`);
//! that image restores the same way and answers the caller that the
//! re-exec failed. At the commit the originals are closed, the supervisor
//! starts its threads, and the caller hears the answer.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Instant;

use clap::Parser;
use handoff::fault::{self, SupervisorStep};
use handoff::os::SignalSet;
use handoff::supervisor::{Supervisor, Thawed};

use super::state::Carried;
use super::{Carry, Image, TAKEOVER_TIMEOUT, restore_args};
use crate::admin::wire::{ReexecReport, Response, millis};
use crate::cli::{Cli, Command};
use crate::config::{Checks, Settings};
use crate::error::{Failure, chain};
use crate::run::{AdminSocket, Running};

/// Runs the supervisor restored from the memfd at `restore_fd`.
/// `exec_back`: this is the old image again, and why.
pub fn run_restored(restore_fd: i32, exec_back: Option<String>) -> Result<u8, Failure> {
    let begun = Instant::now();
    let begun_ns = handoff::os::monotonic_nanos().unwrap_or(0);
    // The old image blocked everything for the exec: take ours, free the rest.
    let signals = SignalSet::block_only(&crate::signals::TAKEN)
        .map_err(|e| Failure::failed(format!("setting the signal mask: {e}")))?;
    let inherited = Inherited::take();
    let bytes = inherited
        .get(restore_fd)
        .ok_or_else(|| Failure::failed(format!("--restore-fd {restore_fd}: not an open fd")))
        .and_then(|memfd| {
            handoff::os::read_sealed_memfd(memfd).map_err(|e| Failure::failed(chain(&e)))
        })?;
    let back = Back::new(&inherited, &bytes, restore_fd);
    let committed = Mutex::new(false);
    let outcome = std::thread::scope(|scope| {
        // Armed only in a new image: the old one has nothing to go back to.
        let watch = exec_back
            .is_none()
            .then(|| Watch::arm(scope, &back, &committed));
        // A panic is a crash too: it must reach the way back, not unwind
        // past the guards.
        let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            take_back(&inherited, &bytes, exec_back.as_deref())
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!(
                "the new image panicked before it took over: {what}"
            ))
        });
        match (taken, watch) {
            (Ok(restored), Some(watch)) => {
                watch.commit();
                Ok(restored)
            }
            (Ok(restored), None) => Ok(restored),
            (Err(reason), Some(watch)) => {
                watch.commit();
                Err(back.exec(&reason))
            }
            (Err(reason), None) => Err(Failure::failed(format!(
                "the old image could not take its state back either ({reason}); the \
                 generations run on without a supervisor until one is started again"
            ))),
        }
    });
    let restored = outcome?;
    // Committed: the originals go; the supervisor runs on duplicates.
    drop(inherited);
    restored.start(signals, exec_back, begun, begun_ns)
}

/// Every fd this image inherited (3 and up), owned and close-on-exec: the
/// originals an exec back hands on.
struct Inherited {
    fds: BTreeMap<i32, OwnedFd>,
}

impl Inherited {
    fn take() -> Inherited {
        let numbers = handoff::os::open_fds().unwrap_or_default();
        let fds = numbers
            .into_iter()
            .filter(|&fd| fd > 2)
            .filter_map(|fd| Some((fd, handoff::os::adopt_inherited_fd(fd).ok()?)))
            .collect();
        Inherited { fds }
    }

    fn get(&self, fd: i32) -> Option<BorrowedFd<'_>> {
        self.fds.get(&fd).map(AsFd::as_fd)
    }

    /// A duplicate of inherited fd `fd`.
    fn duplicate(&self, fd: i32) -> Result<OwnedFd, String> {
        self.fds
            .get(&fd)
            .ok_or_else(|| format!("fd {fd} named by the state was not inherited"))?
            .try_clone()
            .map_err(|e| format!("duplicating fd {fd}: {e}"))
    }
}

/// The way back to the old image: its file (an inherited fd the state
/// names), the same memfd and every inherited fd.
struct Back<'a> {
    image_fd: Option<i32>,
    memfd: i32,
    keep: Vec<BorrowedFd<'a>>,
    env: Vec<(OsString, OsString)>,
}

impl<'a> Back<'a> {
    fn new(inherited: &'a Inherited, bytes: &[u8], memfd: i32) -> Back<'a> {
        // Read alone, so that a state this image refuses still says where
        // the old image is.
        let image_fd = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|value| value.get("image_fd")?.as_i64())
            .and_then(|fd| i32::try_from(fd).ok())
            .filter(|fd| inherited.fds.contains_key(fd));
        Back {
            image_fd,
            memfd,
            keep: inherited.fds.values().map(AsFd::as_fd).collect(),
            // An armed fault would fire again in the old image.
            env: std::env::vars_os()
                .filter(|(key, _)| key != handoff::fault::ENV_FAULT)
                .collect(),
        }
    }

    /// The exec back, made ready, telling the old image `reason`.
    fn prepare(&self, reason: &str) -> Result<handoff::os::Exec<'a>, String> {
        let image_fd = self
            .image_fd
            .ok_or("the state does not name the old image's fd")?;
        let path = std::path::PathBuf::from(format!("/proc/self/fd/{image_fd}"));
        let args = restore_args(std::path::Path::new("handoffctl"), self.memfd, Some(reason));
        handoff::os::Exec::new(&path, &args, &self.env, &self.keep).map_err(|e| chain(&e))
    }

    /// Execs the old image; returns only if that failed.
    fn exec(&self, reason: &str) -> Failure {
        tracing::error!(%reason, "the new image cannot take over: executing the old one again");
        let failed = match self.prepare(reason) {
            Ok(prepared) => {
                let _blocked = SignalSet::block_all();
                chain(&prepared.exec())
            }
            Err(why) => why,
        };
        Failure::failed(format!(
            "the new image cannot take over ({reason}) and the old one cannot be executed \
             again ({failed}); the generations run on without a supervisor until one is \
             started again"
        ))
    }
}

/// The new image's guards until it commits: a crash execs the old image
/// back, and so does a watchdog at [`TAKEOVER_TIMEOUT`].
struct Watch<'a> {
    _crash: Option<handoff::os::CrashExec<'a>>,
    committed: &'a Mutex<bool>,
    stop: mpsc::Sender<()>,
}

impl<'env> Watch<'env> {
    fn arm<'scope>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        back: &'env Back<'env>,
        committed: &'env Mutex<bool>,
    ) -> Watch<'env> {
        let crash = back
            .prepare("the new image crashed before it took over")
            .and_then(|prepared| prepared.on_crash().map_err(|e| chain(&e)))
            .map_err(|why| tracing::error!(%why, "no exec back on a crash"))
            .ok();
        let (stop, stopped) = mpsc::channel::<()>();
        scope.spawn(move || {
            // Only an explicit commit stands the watchdog down: a guard
            // dropped by an unwinding image is a failure too.
            if stopped.recv_timeout(TAKEOVER_TIMEOUT).is_ok() {
                return;
            }
            let committed = committed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !*committed {
                let reason = format!(
                    "the new image did not take over within {}",
                    handoff::timeouts::format_duration(TAKEOVER_TIMEOUT)
                );
                // (Or it unwound past its guards: then the reason it gave,
                // if any, was logged.)
                let failure = back.exec(&reason);
                tracing::error!("{}", failure.message);
            }
        });
        Watch {
            _crash: crash,
            committed,
            stop,
        }
    }

    /// Disarms both: from here this image is in charge (or execs back on
    /// its own).
    fn commit(self) {
        *self
            .committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        let _ = self.stop.send(());
    }
}

/// Everything taken back, nothing started.
struct Restored {
    carried: Carried,
    settings: Settings,
    thawed: Thawed,
    admin: UnixListener,
    caller: Option<UnixStream>,
    carry: Carry,
    restore_ms: f64,
    readopt_ms: f64,
}

/// Reads the state and takes the supervisor back on duplicates of the
/// inherited fds; why not, for an exec back.
fn take_back(
    inherited: &Inherited,
    bytes: &[u8],
    exec_back: Option<&str>,
) -> Result<Restored, String> {
    let begun = Instant::now();
    let carried = Carried::from_bytes(bytes)?;
    if exec_back.is_none() && fault::step(SupervisorStep::ReexecAfterExec).is_err() {
        return Err("an injected fault after the exec".into());
    }
    let settings = settings(&carried)?;
    crate::run::init_logging(settings.log_format);
    let listeners = carried
        .listeners
        .iter()
        .map(|l| Ok((l.name.clone(), inherited.duplicate(l.fd)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let library_listeners = crate::run::duplicates(&listeners).map_err(|f| f.message)?;
    let admin = UnixListener::from(inherited.duplicate(carried.admin_fd)?);
    let carry = Carry {
        // This image is the one the state names (`to`, or `from` after an
        // exec back), hashed by the image before it.
        image: Image::open(carried.start_path.clone())
            .map_err(|f| f.message)?
            .with_record(
                match exec_back {
                    Some(_) => Some(carried.from.clone()),
                    None => carried.to.clone(),
                }
                .unwrap_or_else(|| carried.from.clone()),
            ),
        run_args: carried.run_args.clone(),
        config: settings.config.clone(),
        listeners,
        admin: UnixListener::from(inherited.duplicate(carried.admin_fd)?),
        allowed: settings.allowed_supervisor_binaries.clone(),
        reexecs: carried.reexecs + u64::from(exec_back.is_none()),
        lock: match carried.lock_fd {
            Some(fd) => crate::orphan::SupervisorLock::from_fd(inherited.duplicate(fd)?),
            None => crate::orphan::SupervisorLock::take(&settings.socket).map_err(|f| f.message)?,
        },
        socket_files: carried.socket_files.clone(),
    };
    let caller = carried
        .caller_fd
        .map(|fd| inherited.duplicate(fd).map(UnixStream::from))
        .transpose()?;
    if exec_back.is_none() && fault::step(SupervisorStep::ReexecRestored).is_err() {
        return Err("an injected fault after the state was read back".into());
    }
    let restore_ms = millis(begun.elapsed());
    let readopting = Instant::now();
    let config =
        crate::run::supervisor_config(&settings, library_listeners).map_err(|f| f.message)?;
    let library_fds = carried
        .library_fds
        .iter()
        .map(|&fd| inherited.duplicate(fd))
        .collect::<Result<Vec<_>, String>>()?;
    let library = serde_json::to_vec(&carried.library).map_err(|e| e.to_string())?;
    let thawed = Supervisor::thaw(config, &library, library_fds).map_err(|e| chain(&e))?;
    if exec_back.is_none() && fault::step(SupervisorStep::ReexecReadopted).is_err() {
        thawed.abandon();
        return Err("an injected fault after the generations were taken back".into());
    }
    Ok(Restored {
        readopt_ms: millis(readopting.elapsed()),
        carried,
        settings,
        thawed,
        admin,
        caller,
        carry,
        restore_ms,
    })
}

/// The settings `run` was first started with, parsed by this build.
fn settings(carried: &Carried) -> Result<Settings, String> {
    let argv = ["handoffctl", "run"]
        .into_iter()
        .map(str::to_owned)
        .chain(carried.run_args.iter().cloned());
    let cli = Cli::try_parse_from(argv).map_err(|error| {
        let first = error.to_string();
        let first = first.lines().next().unwrap_or("").to_owned();
        format!("this build does not accept the arguments the supervisor was started with: {first}")
    })?;
    let Command::Run(args) = cli.command else {
        return Err("the carried arguments are not those of run".into());
    };
    Settings::resolve_with(*args, carried.config.clone(), Checks::Carried)
        .map_err(|failure| failure.message)
}

impl Restored {
    /// Starts the supervisor and its threads, and answers the caller.
    fn start(
        self,
        signals: SignalSet,
        exec_back: Option<String>,
        begun: Instant,
        begun_ns: u64,
    ) -> Result<u8, Failure> {
        let resuming = Instant::now();
        let generations = self.thawed.generations();
        let (supervisor, events) = self
            .thawed
            .start()
            .map_err(|e| Failure::failed(format!("restarting the supervisor: {}", chain(&e))))?;
        let carried = self.carried;
        let mut phases = carried.phases_ms.clone();
        let exec_ns = begun_ns.saturating_sub(carried.exec_ns);
        phases.insert("exec".into(), exec_ns as f64 / 1e6);
        phases.insert("restore".into(), self.restore_ms);
        phases.insert("readopt".into(), self.readopt_ms);
        phases.insert("resume".into(), millis(resuming.elapsed()));
        let now_ns = handoff::os::monotonic_nanos().unwrap_or(0);
        let report = ReexecReport {
            changed: true,
            committed: exec_back.is_none(),
            reason: exec_back,
            pid: std::process::id(),
            from: carried.from.clone(),
            to: carried.to.clone(),
            phases_ms: phases,
            total_ms: now_ns.saturating_sub(carried.requested_ns) as f64 / 1e6,
        };
        log_restored(&report, &generations, begun);
        let notify = crate::systemd::Notifier::from_env();
        notify.ready(&status_line(&report, &supervisor));
        let socket = AdminSocket::adopt(self.settings.socket.clone(), self.admin);
        let answer = self.caller.map(|caller| (caller, Response::Reexec(report)));
        let metrics =
            crate::metrics::Metrics::rebind(self.settings.metrics.clone(), carried.metrics);
        let identities = crate::identity::Identities::with_entries(carried.identities);
        // A generation started from a script is known by it again (as the
        // file is now: the one held open died with the old image).
        if let Ok(status) = supervisor.handle().status()
            && let Some(pid) = status.child_pid
        {
            let _ = identities.started(pid, &status.program);
        }
        Running {
            settings: self.settings,
            supervisor,
            events,
            socket,
            history: carried.history,
            carry: self.carry,
            fan_out: carried.events,
            metrics,
            identities,
        }
        .serve(signals, answer)
    }
}

fn log_restored(report: &ReexecReport, generations: &[(u64, u32)], begun: Instant) {
    let taken: Vec<String> = generations
        .iter()
        .map(|(generation, pid)| format!("{generation} (pid {pid})"))
        .collect();
    if report.committed {
        tracing::info!(
            generations = %taken.join(", "),
            took_ms = millis(begun.elapsed()),
            "re-exec committed: {}",
            report.line()
        );
    } else {
        tracing::warn!(
            generations = %taken.join(", "),
            "re-exec failed, the old image is back in charge: {}",
            report.line()
        );
    }
}

/// systemd's `STATUS=` after a re-exec.
fn status_line(report: &ReexecReport, supervisor: &Supervisor) -> String {
    let serving = match supervisor.handle().status() {
        Ok(status) => match status.child_pid {
            Some(pid) => format!("serving: generation {}, pid {pid}", status.generation),
            None => "starting".to_owned(),
        },
        Err(_) => "stopping".to_owned(),
    };
    match &report.reason {
        None => serving,
        Some(reason) => format!("{serving} (re-exec failed: {reason})"),
    }
}
