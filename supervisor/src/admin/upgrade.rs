//! The one place an upgrade is carried out (admin requests, `rollback` and
//! SIGHUP all come here): the binary check against the allow list, the
//! sha256 pin, the bounds, then the library's upgrade between systemd's
//! `RELOADING=1` and `READY=1`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use handoff::os::PinnedBinary;
use handoff::supervisor::UpgradeRequest;
use handoff::{Error, Timeouts};

use super::wire::{ErrorKind, HandoffReport, Response};
use super::{AdminState, plan};
use crate::config::check_executable;
use crate::error::chain;

/// What an upgrade asks for (admin request, rollback or SIGHUP).
#[derive(Debug, Default)]
pub struct Upgrade {
    /// `--binary` (absolute); the configured binary when absent.
    pub binary: Option<PathBuf>,
    /// `--sha256`.
    pub sha256: Option<String>,
    /// `--drain-timeout`.
    pub drain_grace: Option<Duration>,
    /// `--deadline`.
    pub deadline: Option<Duration>,
    /// `--force`.
    pub force: bool,
    /// `--if-changed`: nothing to do when the serving generation already
    /// runs the target build (see `plan`).
    pub if_changed: bool,
    /// `--check`: every check, then what it would do, changing nothing.
    pub check: bool,
}

impl Upgrade {
    /// What it asks of `plan`.
    fn plan(&self) -> plan::Asked {
        plan::Asked {
            check: self.check,
            if_changed: self.if_changed,
        }
    }
}

/// An upgrade, from an admin request or SIGHUP: checked, then carried out
/// between systemd's `RELOADING=1` and `READY=1`.
pub fn upgrade(state: &AdminState, asked: Upgrade) -> Response {
    // The total counts from here: the checks and a pin's hashing are part
    // of what the caller waits for.
    let requested = std::time::Instant::now();
    let Ok(_one_at_a_time) = state.upgrading.try_lock() else {
        return Response::error(ErrorKind::Busy, "another handoff is in flight");
    };
    if asked.force && state.mode != handoff::Mode::Exclusive {
        return Response::error(
            ErrorKind::Rejected,
            "--force applies to exclusive mode only (this supervisor runs overlap mode, \
             where the old generation drains after the commit anyway)",
        );
    }
    let planning = asked.plan();
    let target = match Target::check(state, asked.binary, asked.sha256) {
        Ok(target) => target,
        Err(message) => return Response::error(ErrorKind::Rejected, message),
    };
    let (drain_grace, deadline) =
        match handoff_bounds(state.timeouts, asked.drain_grace, asked.deadline) {
            Ok(bounds) => bounds,
            Err(message) => return Response::error(ErrorKind::Rejected, message),
        };
    let planned = target.planned((drain_grace, deadline));
    if let Some(answer) = plan::before_handoff(state, &planned, planning) {
        return answer;
    }
    let request = UpgradeRequest {
        program: Some(target.exec_path()),
        args: None,
        drain_grace,
        deadline,
        env: Vec::new(),
        // A pinned exec path dies with the pinned file: restart by path,
        // and only while the file still has the pinned content.
        restart_program: Some(target.program.clone()),
        restart_sha256: target
            .pinned
            .as_ref()
            .map(|pinned| pinned.sha256().to_owned()),
        force: asked.force,
        requested: Some(requested),
    };
    state
        .notify
        .reloading(&format!("upgrading to {}", target.program.display()));
    let result = state.handle.upgrade(request);
    // The pinned file stays open until here: the successor was spawned (and
    // exec'd) by the time the handoff ended.
    drop(target);
    let response = match result {
        Ok(outcome) => Response::Handoff(HandoffReport::from_outcome(&outcome)),
        Err(Error::Busy) => Response::error(ErrorKind::Busy, "another handoff is in flight"),
        Err(Error::SessionOver) => {
            Response::error(ErrorKind::Stopping, "the supervisor is stopping")
        }
        Err(other) => {
            // The successor could not be spawned: an attempt that failed.
            state.metrics.upgrade_not_started();
            Response::error(ErrorKind::Failed, chain(&other))
        }
    };
    // READY=1 ends the reload before the caller hears the result.
    state.notify.ready(&status_after(state, &response));
    response
}

/// systemd's `STATUS=` after an upgrade: who serves, and why nothing
/// changed if nothing did.
fn status_after(state: &AdminState, response: &Response) -> String {
    match response {
        Response::Handoff(report) => report.status_line(),
        Response::Error { message, .. } => match state.handle.status() {
            Ok(status) => match status.child_pid {
                Some(pid) => format!(
                    "serving: generation {}, pid {pid} (upgrade not started: {message})",
                    status.generation
                ),
                None => format!("starting (upgrade not started: {message})"),
            },
            Err(_) => format!("stopping (upgrade not started: {message})"),
        },
        _ => String::new(),
    }
}

/// The binary an upgrade runs, checked: absolute, allowed, executable, and
/// pinned (opened and hashed before the handoff starts) when a sha256 is
/// expected.
struct Target {
    program: PathBuf,
    pinned: Option<PinnedBinary>,
}

impl Target {
    fn check(
        state: &AdminState,
        binary: Option<PathBuf>,
        sha256: Option<String>,
    ) -> Result<Target, String> {
        let explicit = binary.is_some();
        let program = binary.unwrap_or_else(|| state.program.clone());
        if !program.is_absolute() {
            return Err(format!(
                "--binary {}: not an absolute path; give the full path",
                program.display()
            ));
        }
        if !allowed(state, &program) {
            tracing::warn!(binary = %program.display(), "upgrade refused: binary not allowed");
            return Err(format!(
                "binary {} is neither the configured binary nor in allowed_binaries; \
                 add it to allowed_binaries in the config (or --allow-binary to `handoffctl run`)",
                program.display()
            ));
        }
        // The config's hash pins the configured binary only.
        let expected = sha256.or_else(|| (!explicit).then(|| state.sha256.clone()).flatten());
        let pinned = match expected {
            Some(expected) => Some(pin(&program, &expected)?),
            None => {
                check_executable(&program).map_err(|failure| failure.message)?;
                None
            }
        };
        // Not hashed here unless pinned: what the successor runs is hashed
        // on a thread of its own while the handoff goes on, off this path
        // and off systemd's notifications.
        Ok(Target { program, pinned })
    }

    /// What `plan` needs of it.
    fn planned(&self, bounds: (Option<Duration>, Option<Duration>)) -> plan::Target<'_> {
        plan::Target {
            program: &self.program,
            pinned_sha256: self.pinned.as_ref().map(PinnedBinary::sha256),
            bounds,
        }
    }

    fn exec_path(&self) -> PathBuf {
        self.pinned
            .as_ref()
            .map_or_else(|| self.program.clone(), PinnedBinary::exec_path)
    }
}

/// This upgrade's drain timeout and deadline: an unset drain timeout
/// follows a shorter deadline down (as `handoffctl run` does); a drain
/// timeout longer than the deadline is refused in the flags' words.
fn handoff_bounds(
    configured: Timeouts,
    drain_grace: Option<Duration>,
    deadline: Option<Duration>,
) -> Result<(Option<Duration>, Option<Duration>), String> {
    for (flag, asked) in [("--deadline", deadline), ("--drain-timeout", drain_grace)] {
        if asked == Some(Duration::ZERO) {
            return Err(format!(
                "{flag} 0s: must be greater than zero; give a duration such as 30s"
            ));
        }
    }
    let effective_deadline = deadline.unwrap_or(configured.handoff_deadline);
    match drain_grace {
        Some(drain) if drain > effective_deadline => Err(format!(
            "--drain-timeout {} is longer than {} {}: the drain must fit in the handoff; \
             lower --drain-timeout or raise --deadline",
            handoff::timeouts::format_duration(drain),
            if deadline.is_some() {
                "--deadline"
            } else {
                "the configured deadline"
            },
            handoff::timeouts::format_duration(effective_deadline),
        )),
        Some(drain) => Ok((Some(drain), deadline)),
        None if configured.drain_grace > effective_deadline => {
            Ok((Some(effective_deadline), deadline))
        }
        None => Ok((None, deadline)),
    }
}

/// Whether `program` is the configured binary or an allowed one (compared
/// after resolving symlinks, when they resolve).
fn allowed(state: &AdminState, program: &Path) -> bool {
    let canonical = |path: &Path| std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let wanted = canonical(program);
    std::iter::once(&state.program)
        .chain(&state.allowed_binaries)
        .any(|candidate| candidate == program || canonical(candidate) == wanted)
}

/// Opens `path` and checks it against `expected` (hex, any case): the
/// upgrade then executes the open, hashed file.
fn pin(path: &Path, expected: &str) -> Result<PinnedBinary, String> {
    let expected = crate::config::parse_sha256(expected).map_err(|f| f.message)?;
    check_executable(path).map_err(|f| f.message)?;
    handoff::os::pin_binary(path, &expected).map_err(|error| {
        if let Error::BinaryMismatch { .. } = error {
            tracing::warn!(binary = %path.display(), %error, "upgrade refused: sha256 mismatch");
        }
        chain(&error)
    })
}
