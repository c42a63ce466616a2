//! The admin socket's client side: every verb but `run` and `self-check`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use handoff::Timeouts;
use handoff::timeouts::parse_duration;

use crate::admin::wire::{ErrorKind, MAX_LINE, Request, Response};
use crate::cli::{ReexecArgs, RollbackArgs, StatusArgs, Target, UpgradeArgs};
use crate::config::{client_socket, parse_sha256};
use crate::error::Failure;
use crate::verdict::{Verdict, handoff_exit};

/// Sends `request` and returns the response. `wait` bounds the wait for the
/// answer (`None`: until the supervisor answers, for synchronous verbs).
pub(crate) fn ask(
    socket: &Path,
    request: &Request,
    wait: Option<Duration>,
) -> Result<Response, Failure> {
    let bound = Timeouts::default().admin_request;
    let shown = socket.display();
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        Failure::unreachable(match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("no supervisor at {shown}: the socket does not exist (is it running?)")
            }
            std::io::ErrorKind::ConnectionRefused => {
                format!("no supervisor is listening at {shown} (it is not running)")
            }
            _ => format!("cannot connect to the supervisor at {shown}: {e}"),
        })
    })?;
    let lost = |e: std::io::Error| {
        Failure::unreachable(format!("talking to the supervisor at {shown}: {e}"))
    };
    stream.set_write_timeout(Some(bound)).map_err(lost)?;
    stream.set_read_timeout(wait).map_err(lost)?;
    let mut line = serde_json::to_vec(request).map_err(|e| Failure::usage(e.to_string()))?;
    line.push(b'\n');
    // A supervisor that refuses us (uid, overload) answers and closes
    // without reading: the write may fail, the answer is still there.
    let written = stream.write_all(&line);
    let mut reply = Vec::new();
    let read = BufReader::new(&stream)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut reply);
    if reply.is_empty() {
        written.map_err(lost)?;
        // The request was delivered: what it did is not known (exit 1, not
        // 2, which says that nothing started).
        let unknown = |what: String| {
            Failure::outcome_unknown(format!(
                "{what}; whether the request took effect is unknown: see `handoffctl status`"
            ))
        };
        read.map_err(|e| unknown(format!("no answer from the supervisor at {shown}: {e}")))?;
        return Err(unknown(format!(
            "the supervisor at {shown} closed the connection without an answer"
        )));
    }
    serde_json::from_slice(&reply)
        .map_err(|e| Failure::outcome_unknown(format!("unreadable answer from {shown}: {e}")))
}

fn refused(kind: ErrorKind, message: String) -> Failure {
    Failure::refused(kind, message)
}

fn unexpected(response: &Response) -> Failure {
    Failure::outcome_unknown(format!(
        "unexpected answer from the supervisor: {response:?}"
    ))
}

/// `handoffctl upgrade`: exit 0 committed (or nothing to do, or a dry run
/// that passed), 1 rolled back, 2 usage, refusal or connection, 3 busy,
/// 4 rolled back with nobody serving.
pub fn upgrade(args: UpgradeArgs) -> Result<(), Failure> {
    let socket = client_socket(&args.target)?;
    let binary = args
        .binary
        .map(|binary| {
            std::path::absolute(&binary)
                .map_err(|e| Failure::usage(format!("binary {}: {e}", binary.display())))
        })
        .transpose()?;
    let request = Request::Upgrade {
        binary,
        sha256: args.sha256.as_deref().map(parse_sha256).transpose()?,
        drain_timeout_ms: millis("--drain-timeout", &args.drain_timeout)?,
        deadline_ms: millis("--deadline", &args.deadline)?,
        force: args.force,
        if_changed: args.if_changed,
        check: args.check,
    };
    handoff_request(&socket, &request, args.json)
}

/// `handoffctl rollback`: exit codes as `upgrade`.
pub fn rollback(args: RollbackArgs) -> Result<(), Failure> {
    let socket = client_socket(&args.target)?;
    let request = Request::Rollback {
        drain_timeout_ms: millis("--drain-timeout", &args.drain_timeout)?,
        deadline_ms: millis("--deadline", &args.deadline)?,
        force: args.force,
    };
    handoff_request(&socket, &request, args.json)
}

/// `handoffctl history [--json]`.
pub fn history(args: StatusArgs) -> Result<(), Failure> {
    let socket = client_socket(&args.target)?;
    let wait = Some(Timeouts::default().admin_request);
    match ask(&socket, &Request::History, wait)? {
        Response::History { entries } => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&entries).map_err(|e| Failure::failed(e.to_string()))?
                );
            } else {
                for entry in &entries {
                    println!("{}", entry.line());
                }
            }
            Ok(())
        }
        Response::Error { kind, message } => Err(refused(kind, message)),
        other => Err(unexpected(&other)),
    }
}

fn millis(what: &str, text: &Option<String>) -> Result<Option<u64>, Failure> {
    text.as_deref()
        .map(|t| {
            parse_duration(t)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .map_err(|e| Failure::usage(format!("{what} {t:?}: {e}")))
        })
        .transpose()
}

/// Sends a request answered by a handoff report (or a plan); prints it,
/// with Ansible's fields under `--json`.
fn handoff_request(socket: &Path, request: &Request, json: bool) -> Result<(), Failure> {
    match ask(socket, request, None)? {
        Response::Handoff(report) => {
            if json {
                println!("{}", Verdict::of_handoff(&report).beside(&report)?);
            } else if report.committed {
                println!("{}", report.line());
            }
            match handoff_exit(&report) {
                None => Ok(()),
                Some(exit) => Err(Failure {
                    printed: json,
                    ..Failure::with(exit, report.line())
                }),
            }
        }
        Response::Plan(plan) => {
            if json {
                println!("{}", Verdict::of_plan(&plan).beside(&plan)?);
            } else {
                println!("{}", plan.line());
            }
            Ok(())
        }
        Response::Error { kind, message } => Err(refused(kind, message)),
        other => Err(unexpected(&other)),
    }
}

/// `handoffctl status`.
pub fn status(args: StatusArgs) -> Result<(), Failure> {
    let socket = client_socket(&args.target)?;
    let wait = Some(Timeouts::default().admin_request);
    match ask(&socket, &Request::Status, wait)? {
        Response::Status(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).map_err(|e| Failure::failed(e.to_string()))?
                );
            } else {
                print!("{}", report.text());
            }
            Ok(())
        }
        Response::Error { kind, message } => Err(refused(kind, message)),
        other => Err(unexpected(&other)),
    }
}

/// `handoffctl stop`: returns once the supervisor stopped its generations.
pub fn stop(target: Target) -> Result<(), Failure> {
    let socket = client_socket(&target)?;
    match ask(&socket, &Request::Stop, None)? {
        Response::Stopped => Ok(()),
        Response::Error { kind, message } => Err(refused(kind, message)),
        other => Err(unexpected(&other)),
    }
}

/// `handoffctl reexec`: exit 0 when the new image took over (or nothing
/// changed), 1 when the old one is still in charge, 2 usage or connection,
/// 3 busy.
pub fn reexec(args: ReexecArgs) -> Result<(), Failure> {
    let socket = client_socket(&args.target)?;
    let binary = args
        .binary
        .map(|binary| {
            std::path::absolute(&binary)
                .map_err(|e| Failure::usage(format!("--binary {}: {e}", binary.display())))
        })
        .transpose()?;
    let request = Request::Reexec {
        binary,
        sha256: args.sha256.as_deref().map(parse_sha256).transpose()?,
        if_changed: args.if_changed,
    };
    match ask(&socket, &request, None)? {
        Response::Reexec(report) => {
            if args.json {
                println!("{}", Verdict::of_reexec(&report).over(&report)?);
            } else if report.committed || !report.changed {
                println!("{}", report.line());
            }
            if report.committed || !report.changed {
                Ok(())
            } else {
                let mut failure = Failure::failed(report.line());
                failure.printed = args.json;
                Err(failure)
            }
        }
        Response::Error { kind, message } => Err(refused(kind, message)),
        other => Err(unexpected(&other)),
    }
}
