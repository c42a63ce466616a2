//! The admin socket's server side: an accept thread, one thread per
//! connection (at most [`MAX_CONNECTIONS`] at once), each bounded by
//! `Timeouts::admin_request` for reading its request and for every write, so
//! a silent, slow or hostile client holds one thread for a bounded time and
//! never the supervisor loop or another client.
//!
//! Also the one place an upgrade is carried out (admin requests and SIGHUP
//! both come here): the binary check, the sha256 pin, the call into the
//! library.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use handoff::os::PinnedBinary;
use handoff::supervisor::{Outcome, SupervisorHandle, UpgradeRequest};
use handoff::{Error, Timeouts};

use crate::config::check_executable;
use crate::error::chain;
use crate::history::History;
use crate::identity::Identities;
use crate::protocol::{ErrorKind, HandoffReport, MAX_LINE, Request, Response, StatusReport};
use crate::systemd::Notifier;

/// Admin connections served at once; more are answered `overloaded`.
pub const MAX_CONNECTIONS: usize = 32;

/// What the admin side asks of the main thread.
#[derive(Debug)]
pub enum Control {
    /// Stop gracefully; answer `stopped` on the connection when done.
    Stop(Option<UnixStream>),
    /// The supervisor loop ended on its own (restart policy); whether the
    /// last generation exited with status 0.
    Ended {
        /// Status 0.
        clean: bool,
    },
}

/// What the admin threads share.
#[derive(Debug)]
pub struct Shared {
    /// The library's supervisor.
    pub handle: SupervisorHandle,
    /// The configured binary.
    pub program: PathBuf,
    /// The configured binary's expected sha256, if pinned in the config.
    pub sha256: Option<String>,
    /// Uids admitted besides ours and root.
    pub allowed_uids: Vec<u32>,
    /// Binaries an upgrade may run besides the configured one.
    pub allowed_binaries: Vec<PathBuf>,
    /// Our effective uid.
    pub our_uid: u32,
    /// Durations (admin_request bounds each client).
    pub timeouts: Timeouts,
    /// Exclusive or overlap.
    pub mode: handoff::Mode,
    /// The sha256 of every binary a generation runs, hashed once.
    pub identities: Identities,
    /// systemd's notification socket.
    pub notify: Notifier,
    /// Held while an upgrade runs: a second one is `busy` at once, before
    /// it notifies systemd of a reload that will not happen.
    pub upgrading: Mutex<()>,
    /// To the main thread.
    pub control: mpsc::Sender<Control>,
    /// Admin connections being served.
    pub connections: AtomicUsize,
    /// The last handoffs and what the live generation runs (written by the
    /// event thread, which sees every handoff).
    pub history: Mutex<History>,
    /// Signalled by the event thread after each record.
    pub history_changed: std::sync::Condvar,
    /// Where the history is persisted.
    pub history_file: PathBuf,
}

/// The history once it holds the last finished handoff and the last
/// automatic rollback: the event thread records them asynchronously, so a
/// client that just saw an upgrade end (or `status` report a rollback)
/// could otherwise read a history without it. Waits at most
/// `admin_request`.
fn history_now(shared: &Shared) -> std::sync::MutexGuard<'_, History> {
    let status = shared.handle.status().ok();
    let last = status
        .as_ref()
        .and_then(|status| status.last_handoff.as_ref())
        .map(Outcome::handoff_id);
    let undone = status
        .and_then(|status| status.last_probation_rollback)
        .map(|rollback| (rollback.handoff_id, rollback.failed_pid));
    let history = shared
        .history
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    shared
        .history_changed
        .wait_timeout_while(history, shared.timeouts.admin_request, |history| {
            let behind = last.is_some_and(|last| history.recorded.is_none_or(|id| id < last));
            behind || (undone.is_some() && history.undone != undone)
        })
        .map_or_else(|poisoned| poisoned.into_inner().0, |(history, _)| history)
}

/// Starts the accept thread.
pub fn serve(listener: UnixListener, shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("admin-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => connection(stream, &shared),
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        // Out of fds, typically: back off rather than spin.
                        std::thread::sleep(handoff::timeouts::POLL_SLICE);
                    }
                }
            }
        })
        .map(drop)
}

/// A counted admin connection; the count drops with it.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn connection(stream: UnixStream, shared: &Arc<Shared>) {
    let bound = shared.timeouts.admin_request;
    if stream.set_write_timeout(Some(bound)).is_err() {
        return;
    }
    if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        shared.connections.fetch_sub(1, Ordering::SeqCst);
        tracing::warn!("admin connection refused: {MAX_CONNECTIONS} already open");
        respond(
            &stream,
            &error(ErrorKind::Overloaded, "too many admin connections; retry"),
        );
        return;
    }
    let shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("admin-conn".into())
        .spawn(move || {
            let _slot = Slot(&shared.connections);
            serve_one(stream, &shared);
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start an admin connection thread");
    }
}

fn serve_one(stream: UnixStream, shared: &Shared) {
    let peer = match handoff::os::peer_credentials(&stream) {
        Ok(peer) => peer,
        Err(error) => {
            tracing::warn!(error = %chain(&error), "admin connection without credentials");
            return;
        }
    };
    if !(peer.uid == 0 || peer.uid == shared.our_uid || shared.allowed_uids.contains(&peer.uid)) {
        tracing::warn!(
            peer_uid = peer.uid,
            peer_pid = peer.pid,
            "admin connection refused: uid not allowed"
        );
        respond(
            &stream,
            &error(
                ErrorKind::PermissionDenied,
                format!("uid {} may not use this supervisor", peer.uid),
            ),
        );
        return;
    }
    let request = match read_request(&stream, shared.timeouts.admin_request) {
        Ok(request) => request,
        Err(message) => {
            tracing::warn!(peer_pid = peer.pid, %message, "bad admin request");
            respond(&stream, &error(ErrorKind::BadRequest, message));
            return;
        }
    };
    tracing::debug!(peer_pid = peer.pid, ?request, "admin request");
    let response = match request {
        Request::Status => status(shared),
        Request::Upgrade {
            binary,
            sha256,
            drain_timeout_ms,
            deadline_ms,
            force,
        } => upgrade(
            shared,
            Upgrade {
                binary,
                sha256,
                drain_grace: drain_timeout_ms.map(Duration::from_millis),
                deadline: deadline_ms.map(Duration::from_millis),
                force,
            },
        ),
        Request::History => Response::History {
            entries: history_now(shared).entries.iter().cloned().collect(),
        },
        Request::Rollback {
            drain_timeout_ms,
            deadline_ms,
            force,
        } => {
            let target = history_now(shared).rollback_target().cloned();
            match target {
                Some(target) => {
                    tracing::info!(binary = %target.path.display(), sha256 = %target.sha256, "rollback");
                    upgrade(
                        shared,
                        Upgrade {
                            binary: Some(target.path),
                            sha256: Some(target.sha256),
                            drain_grace: drain_timeout_ms.map(Duration::from_millis),
                            deadline: deadline_ms.map(Duration::from_millis),
                            force,
                        },
                    )
                }
                None => error(
                    ErrorKind::Rejected,
                    "no binary other than the running one was replaced by a recorded commit: nothing to roll back to",
                ),
            }
        }
        Request::Stop => {
            // The main thread answers once everything exited.
            if let Err(mpsc::SendError(Control::Stop(Some(stream)))) =
                shared.control.send(Control::Stop(Some(stream)))
            {
                respond(&stream, &error(ErrorKind::Stopping, "already stopping"));
            }
            return;
        }
    };
    respond(&stream, &response);
}

/// Reads one request line within `bound` (in all, not per read: a client
/// dripping a byte at a time is cut off too) and at most [`MAX_LINE`] bytes.
fn read_request(mut stream: &UnixStream, bound: Duration) -> Result<Request, String> {
    let deadline = Instant::now() + bound;
    let mut line = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no complete request within {bound:?}"));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) if line.is_empty() => return Err("connection closed without a request".into()),
            Ok(0) => break,
            Ok(read) => {
                let got = &chunk[..read];
                if let Some(end) = got.iter().position(|&b| b == b'\n') {
                    line.extend_from_slice(&got[..end]);
                    break;
                }
                line.extend_from_slice(got);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no complete request within {bound:?}"));
            }
            Err(e) => return Err(format!("reading the request: {e}")),
        }
        if line.len() >= MAX_LINE {
            return Err(format!("request longer than {MAX_LINE} bytes"));
        }
    }
    if line.len() >= MAX_LINE {
        return Err(format!("request longer than {MAX_LINE} bytes"));
    }
    serde_json::from_slice(&line).map_err(|e| format!("not a request: {e}"))
}

/// Writes one response line; a client that does not read is cut off by the
/// write timeout.
pub fn respond(mut stream: &UnixStream, response: &Response) {
    let mut line = serde_json::to_vec(response).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    if let Err(error) = stream.write_all(&line).and_then(|()| stream.flush()) {
        tracing::debug!(%error, "admin response not delivered");
    }
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

fn status(shared: &Shared) -> Response {
    let status = match shared.handle.status() {
        Ok(status) => status,
        Err(_) => return error(ErrorKind::Stopping, "the supervisor is stopping"),
    };
    let binary = status.program.clone();
    let sha256 = status
        .child_pid
        .and_then(|pid| shared.identities.of_pid(pid))
        .map(|record| record.sha256);
    Response::Status(StatusReport::new(status, binary, sha256))
}

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
}

/// An upgrade, from an admin request or SIGHUP: checked, then carried out
/// between systemd's `RELOADING=1` and `READY=1`.
pub fn upgrade(shared: &Shared, asked: Upgrade) -> Response {
    let Ok(_one_at_a_time) = shared.upgrading.try_lock() else {
        return error(ErrorKind::Busy, "another handoff is in flight");
    };
    if asked.force && shared.mode != handoff::Mode::Exclusive {
        return error(
            ErrorKind::Rejected,
            "--force applies to exclusive mode only (this supervisor runs overlap mode, \
             where the old generation drains after the commit anyway)",
        );
    }
    let target = match Target::check(shared, asked.binary, asked.sha256) {
        Ok(target) => target,
        Err(message) => return error(ErrorKind::Rejected, message),
    };
    let (drain_grace, deadline) =
        match handoff_bounds(shared.timeouts, asked.drain_grace, asked.deadline) {
            Ok(bounds) => bounds,
            Err(message) => return error(ErrorKind::Rejected, message),
        };
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
    };
    shared
        .notify
        .reloading(&format!("upgrading to {}", target.program.display()));
    let result = shared.handle.upgrade(request);
    // The pinned file stays open until here: the successor was spawned (and
    // exec'd) by the time the handoff ended.
    drop(target);
    let response = match result {
        Ok(outcome) => Response::Handoff(HandoffReport::from_outcome(&outcome)),
        Err(Error::Busy) => error(ErrorKind::Busy, "another handoff is in flight"),
        Err(Error::SessionOver) => error(ErrorKind::Stopping, "the supervisor is stopping"),
        Err(other) => error(ErrorKind::Failed, chain(&other)),
    };
    // READY=1 ends the reload before the caller hears the result.
    let status = match &response {
        Response::Handoff(report) => report.status_line(),
        Response::Error { message, .. } => match shared.handle.status() {
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
    };
    shared.notify.ready(&status);
    response
}

/// The binary an upgrade runs, checked: absolute, allowed, executable,
/// pinned when a sha256 is expected, and hashed (into the identity cache)
/// before the handoff starts.
struct Target {
    program: PathBuf,
    pinned: Option<PinnedBinary>,
}

impl Target {
    fn check(
        shared: &Shared,
        binary: Option<PathBuf>,
        sha256: Option<String>,
    ) -> Result<Target, String> {
        let explicit = binary.is_some();
        let program = binary.unwrap_or_else(|| shared.program.clone());
        if !program.is_absolute() {
            return Err(format!(
                "--binary {}: not an absolute path; give the full path",
                program.display()
            ));
        }
        if !allowed(shared, &program) {
            tracing::warn!(binary = %program.display(), "upgrade refused: binary not allowed");
            return Err(format!(
                "binary {} is neither the configured binary nor in allowed_binaries; \
                 add it to allowed_binaries in the config",
                program.display()
            ));
        }
        // The config's hash pins the configured binary only.
        let expected = sha256.or_else(|| (!explicit).then(|| shared.sha256.clone()).flatten());
        let pinned = match expected {
            Some(expected) => Some(pin(&program, &expected)?),
            None => {
                check_executable(&program).map_err(|failure| failure.message)?;
                None
            }
        };
        let target = Target { program, pinned };
        // Hashed now, off the handoff: the successor's /proc/PID/exe is then
        // found in the cache (a pinned file was hashed by the pin already).
        if let Err(error) = shared.identities.of_path(&target.exec_path()) {
            tracing::debug!(%error, "the upgrade's binary could not be hashed ahead");
        }
        Ok(target)
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
fn allowed(shared: &Shared, program: &Path) -> bool {
    let canonical = |path: &Path| std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let wanted = canonical(program);
    std::iter::once(&shared.program)
        .chain(&shared.allowed_binaries)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Short enough for a unit test, long enough for a loaded machine to
    /// deliver a line written before the read starts.
    const BOUND: Duration = Duration::from_millis(300);

    #[test]
    fn a_request_line_is_read() {
        let (mut client, server) = UnixStream::pair().expect("pair");
        client
            .write_all(b"{\"command\":\"status\"}\ntrailing bytes are ignored")
            .expect("write");
        assert_eq!(read_request(&server, BOUND), Ok(Request::Status));
    }

    #[test]
    fn a_dripping_client_is_cut_off_in_all_not_per_read() {
        let (mut client, server) = UnixStream::pair().expect("pair");
        let dripping = std::thread::spawn(move || {
            // One byte per half bound: each read would succeed in time.
            for byte in b"{\"command\":\"status\"}\n" {
                if client.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(BOUND / 2);
            }
        });
        let started = Instant::now();
        let error = read_request(&server, BOUND).expect_err("cut off");
        assert!(error.contains("no complete request"), "{error}");
        assert!(started.elapsed() < BOUND * 3, "{:?}", started.elapsed());
        drop(server);
        dripping.join().expect("dripping client");
    }

    #[test]
    fn silence_garbage_and_long_lines_are_refused() {
        let (_client, server) = UnixStream::pair().expect("pair");
        assert!(read_request(&server, BOUND).is_err(), "silence");

        let (mut client, server) = UnixStream::pair().expect("pair");
        client.write_all(b"\xff\xfe garbage\n").expect("write");
        let error = read_request(&server, BOUND).expect_err("garbage");
        assert!(error.starts_with("not a request"), "{error}");

        let (client, server) = UnixStream::pair().expect("pair");
        let writer = std::thread::spawn(move || {
            let mut client = client;
            let _ = client.write_all(&vec![b'x'; 2 * MAX_LINE]);
        });
        let error = read_request(&server, BOUND).expect_err("too long");
        assert!(error.contains("longer than"), "{error}");
        drop(server);
        writer.join().expect("writer");

        let (client, server) = UnixStream::pair().expect("pair");
        drop(client);
        let error = read_request(&server, BOUND).expect_err("eof");
        assert!(error.contains("without a request"), "{error}");
    }
}
