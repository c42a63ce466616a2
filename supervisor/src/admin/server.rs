//! The admin socket's server side: an accept thread, one thread per
//! connection (at most [`MAX_CONNECTIONS`] at once), each bounded by
//! `Timeouts::admin_request` for reading its request and for every write, so
//! a silent, slow or hostile client holds one thread for a bounded time and
//! never the supervisor loop or another client.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::mpsc;

use handoff::Admitted;
use std::time::{Duration, Instant};

use super::upgrade::{Upgrade, upgrade};
use super::wire::{BinaryRecord, ErrorKind, MAX_LINE, Request, Response, StatusReport};
use super::{AdminState, Control};
use crate::error::chain;
use crate::reexec::Reexec;

/// Admin connections served at once; more are answered `overloaded`.
pub const MAX_CONNECTIONS: usize = 32;

/// Starts the accept thread. Connections are admitted through the state's
/// gate: a re-exec closes it, waits for those being served, and carries
/// the listener (its backlog holds whoever connects meanwhile) to the next
/// image.
pub fn serve(listener: UnixListener, state: Arc<AdminState>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("admin-accept".into())
        .spawn(move || {
            loop {
                match state.gate.accept(&listener) {
                    Ok(stream) => connection(stream, &state),
                    Err(error) => {
                        tracing::warn!(error = %chain(&error), "admin accept failed");
                        // Out of fds, typically: back off rather than spin.
                        std::thread::sleep(handoff::timeouts::POLL_SLICE);
                    }
                }
            }
        })
        .map(drop)
}

fn connection(stream: Admitted<UnixStream>, state: &Arc<AdminState>) {
    let bound = state.timeouts.admin_request;
    if stream.set_write_timeout(Some(bound)).is_err() {
        return;
    }
    if state.gate.open_connections() as usize > MAX_CONNECTIONS {
        tracing::warn!("admin connection refused: {MAX_CONNECTIONS} already open");
        respond(
            &stream,
            &Response::error(ErrorKind::Overloaded, "too many admin connections; retry"),
        );
        return;
    }
    let state = Arc::clone(state);
    let spawned = std::thread::Builder::new()
        .name("admin-conn".into())
        .spawn(move || serve_one(stream, &state));
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start an admin connection thread");
    }
}

fn serve_one(stream: Admitted<UnixStream>, state: &AdminState) {
    let Some(peer) = admitted(&stream, state) else {
        return;
    };
    let request = match read_request(&stream, state.timeouts.admin_request) {
        Ok(request) => request,
        Err(message) => {
            tracing::warn!(peer_pid = peer.pid, %message, "bad admin request");
            respond(&stream, &Response::error(ErrorKind::BadRequest, message));
            return;
        }
    };
    tracing::debug!(peer_pid = peer.pid, ?request, "admin request");
    match request {
        Request::Stop => {
            // The main thread answers once everything exited.
            if let Err(mpsc::SendError(Control::Stop(Some(stream)))) =
                state.request_stop(Some(stream.into_inner()))
            {
                respond(
                    &stream,
                    &Response::error(ErrorKind::Stopping, "already stopping"),
                );
            }
        }
        Request::Reexec {
            binary,
            sha256,
            if_changed,
        } => {
            let asked = Reexec {
                binary,
                sha256,
                if_changed,
            };
            // Answered by whichever image is in charge at the end; not
            // counted among the connections a re-exec waits for.
            crate::reexec::reexec(state, asked, Some(stream.into_inner()));
        }
        request => respond(&stream, &answer(request, state)),
    }
}

/// The peer's credentials if its uid may use this supervisor (ours, root,
/// or an allowed one); otherwise it is told why and `None`.
fn admitted(stream: &UnixStream, state: &AdminState) -> Option<handoff::os::PeerCred> {
    let peer = match handoff::os::peer_credentials(stream) {
        Ok(peer) => peer,
        Err(error) => {
            tracing::warn!(error = %chain(&error), "admin connection without credentials");
            return None;
        }
    };
    if peer.uid == 0 || peer.uid == state.our_uid || state.allowed_uids.contains(&peer.uid) {
        return Some(peer);
    }
    tracing::warn!(
        peer_uid = peer.uid,
        peer_pid = peer.pid,
        "admin connection refused: uid not allowed"
    );
    let message = format!("uid {} may not use this supervisor", peer.uid);
    respond(
        stream,
        &Response::error(ErrorKind::PermissionDenied, message),
    );
    None
}

/// The answer to every request but `stop`.
fn answer(request: Request, state: &AdminState) -> Response {
    let millis = |ms: Option<u64>| ms.map(Duration::from_millis);
    match request {
        Request::Status => status(state),
        Request::Upgrade {
            binary,
            sha256,
            drain_timeout_ms,
            deadline_ms,
            force,
            if_changed,
            check,
        } => upgrade(
            state,
            Upgrade {
                binary,
                sha256,
                drain_grace: millis(drain_timeout_ms),
                deadline: millis(deadline_ms),
                force,
                if_changed,
                check,
            },
        ),
        Request::History => Response::History {
            entries: history(state).entries.iter().cloned().collect(),
        },
        Request::Rollback {
            drain_timeout_ms,
            deadline_ms,
            force,
        } => rollback(state, millis(drain_timeout_ms), millis(deadline_ms), force),
        Request::Stop | Request::Reexec { .. } => Response::error(
            ErrorKind::BadRequest,
            "stop and reexec are answered by the connection's thread",
        ),
    }
}

/// An upgrade back to the build the last commit replaced, pinned by its
/// recorded sha256.
fn rollback(
    state: &AdminState,
    drain_grace: Option<Duration>,
    deadline: Option<Duration>,
    force: bool,
) -> Response {
    let Some(target) = history(state).rollback_target().cloned() else {
        return Response::error(
            ErrorKind::Rejected,
            "no binary other than the running one was replaced by a recorded commit: \
             nothing to roll back to",
        );
    };
    if let Some(refusal) = previous_build_gone(state, &target) {
        return refusal;
    }
    tracing::info!(binary = %target.path.display(), sha256 = %target.sha256, "rollback");
    let asked = Upgrade {
        binary: Some(target.path),
        sha256: Some(target.sha256),
        drain_grace,
        deadline,
        force,
        ..Upgrade::default()
    };
    upgrade(state, asked)
}

/// A rollback's refusal when the recorded build's file is no longer at its
/// path as it was (a deploy renamed a new build over the same path, or
/// removed it), in words that say what to do; `None` when it is there.
fn previous_build_gone(state: &AdminState, target: &BinaryRecord) -> Option<Response> {
    let short = |sha: &str| sha.chars().take(12).collect::<String>();
    let now = match state.identities.of_path(&target.path) {
        Ok(now) if now.sha256 == target.sha256 => return None,
        Ok(now) => format!(
            "is gone: the file now has sha256 {} (a deploy replaced it)",
            short(&now.sha256)
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            "is gone: the file was removed".to_owned()
        }
        Err(error) => format!("cannot be read: {error}"),
    };
    Some(Response::error(
        ErrorKind::Rejected,
        format!(
            "cannot roll back: the previous build, {} with sha256 {}, {now}. Put that build \
             back at its path, or keep each release at a path of its own \
             (/opt/app/releases/VERSION/app) so that a rollback finds it",
            target.path.display(),
            short(&target.sha256)
        ),
    ))
}

/// The history, once it holds what the supervisor reports.
fn history(state: &AdminState) -> std::sync::MutexGuard<'_, crate::history::History> {
    let status = state.handle.status().ok();
    state
        .recorder
        .current(status.as_ref(), state.timeouts.admin_request)
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

fn status(state: &AdminState) -> Response {
    let status = match state.handle.status() {
        Ok(status) => status,
        Err(_) => return Response::error(ErrorKind::Stopping, "the supervisor is stopping"),
    };
    let binary = status.program.clone();
    let sha256 = status
        .child_pid
        .and_then(|pid| state.identities.of_generation(pid))
        .map(|record| record.sha256);
    Response::Status(Box::new(StatusReport::new(status, binary, sha256)))
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
