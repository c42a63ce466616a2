//! `handoffctl wait`: the gate between two batches of a rolling upgrade.
//! It returns 0 once the serving generation (running the build
//! `--sha256`, if given) has served for `--serving-for`, and exits 1 with
//! the reason at `--timeout`.
//!
//! "Served for" is the supervisor's `serving_for_ms`, counted from the
//! generation's commit or resumption: a restart after a crash and an
//! automatic rollback in probation both start it again, so the gate passes
//! only after `--serving-for` without either. A generation whose
//! predecessor is still kept in probation has not passed yet either: an
//! automatic rollback could still undo it, and the next batch must not
//! start on a build that may be rolled back. A handoff in flight holds the
//! gate too: its outcome decides who serves.
//!
//! A client-side poll of `status`, one connection each: nothing new on the
//! admin socket, and a supervisor that restarts meanwhile (its socket gone
//! for a moment) is waited for like any other "not yet". While only time is
//! missing it sleeps until the goal; otherwise it looks again every
//! `STATUS_POLL`. A look waits for its answer the admin request bound at
//! most, and no longer than the time left (but at least `STATUS_POLL`), so
//! `--timeout` is kept to within that; a look left unanswered at the end
//! reports the last answer's reason beside its own (a supervisor too slow
//! to answer in time must not hide why it had not passed).

use std::path::Path;
use std::time::{Duration, Instant};

use handoff::Timeouts;
use handoff::supervisor::SupervisorState;
use handoff::timeouts::{STATUS_POLL, format_duration};

use crate::admin::wire::{Request, Response, StatusReport};
use crate::cli::WaitArgs;
use crate::client::ask;
use crate::config::{client_socket, duration, parse_sha256};
use crate::error::Failure;
use crate::verdict::Verdict;

/// What the gate waits for.
#[derive(Debug)]
struct Goal {
    serving_for: Duration,
    sha256: Option<String>,
}

/// The gate's answer, as `--json` prints it (with Ansible's fields).
#[derive(Debug, Default, serde::Serialize)]
struct WaitReport {
    /// Whether the goal was reached.
    served: bool,
    /// The serving generation at the last look (0 when none).
    generation: u64,
    /// Its pid.
    pid: Option<u32>,
    /// The sha256 of what it runs.
    sha256: Option<String>,
    /// How long it had served, milliseconds.
    serving_for_ms: Option<u64>,
    /// How long the gate waited, milliseconds.
    waited_ms: u64,
    /// Every generation seen serving during the wait, in order: more than
    /// one means a restart, a rollback or another upgrade happened.
    generations_seen: Vec<u64>,
    /// Why the goal was not reached (null when it was).
    reason: Option<String>,
}

/// `handoffctl wait`.
impl WaitReport {
    /// The line of a gate that passed.
    fn served_line(&self) -> String {
        format!(
            "generation {} (pid {}, sha256 {}) has served for {}",
            self.generation,
            self.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            self.sha256.as_deref().map_or("unknown", short),
            format_duration(Duration::from_millis(
                self.serving_for_ms.unwrap_or_default()
            )),
        )
    }
}

pub fn wait(args: WaitArgs) -> Result<(), Failure> {
    let socket = client_socket(&args.target)?;
    let serving_for = duration("--serving-for", &args.serving_for)?;
    let timeout = match &args.timeout {
        Some(text) => duration("--timeout", text)?,
        None => serving_for + Timeouts::default().handoff_deadline,
    };
    let goal = Goal {
        serving_for,
        sha256: args.sha256.as_deref().map(parse_sha256).transpose()?,
    };
    let started = Instant::now();
    let deadline = started + timeout;
    let mut report = WaitReport::default();
    // Why the supervisor's last answer did not pass: kept beside a later
    // failure to get one, which alone would say less.
    let mut answered: Option<String> = None;
    loop {
        let next = match look(&socket, deadline, &goal, &mut report) {
            Look::Reached => {
                report.served = true;
                // Why it was not there yet, earlier: not a reason now.
                report.reason = None;
                report.waited_ms = millis(started.elapsed());
                return print(&report, report.served_line(), args.json);
            }
            Look::NotYet { reason, next } => {
                report.reason = Some(reason.clone());
                answered = Some(reason);
                next
            }
            Look::NoAnswer(error) => {
                report.reason = Some(match &answered {
                    Some(seen) => format!("{error} (its last answer: {seen})"),
                    None => error,
                });
                STATUS_POLL
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            report.waited_ms = millis(started.elapsed());
            let changes = if report.generations_seen.len() > 1 {
                format!(
                    " (generations seen: {}: a restart, a rollback or another upgrade)",
                    report
                        .generations_seen
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(" -> ")
                )
            } else {
                String::new()
            };
            let msg = format!(
                "not served for {} within {}: {}{changes}",
                format_duration(goal.serving_for),
                format_duration(timeout),
                report.reason.as_deref().unwrap_or("no answer"),
            );
            let mut failure = Failure::failed(msg.clone());
            if args.json {
                print(&report, msg, true)?;
                failure.printed = true;
            }
            return Err(failure);
        }
        // Pacing a poll of another process's state, bounded by the timeout.
        std::thread::sleep(next.min(left));
    }
}

/// What one look at the supervisor saw.
enum Look {
    /// The goal is reached.
    Reached,
    /// The supervisor answered, and not yet: why, and when to look again.
    NotYet { reason: String, next: Duration },
    /// No answer: no supervisor, a refusal, or none in time.
    NoAnswer(String),
}

/// One look at the supervisor, its answer bounded by the admin request
/// bound and the time left (at least `STATUS_POLL`). Updates `report` with
/// what it saw.
fn look(socket: &Path, deadline: Instant, goal: &Goal, report: &mut WaitReport) -> Look {
    let bound = Timeouts::default()
        .admin_request
        .min(deadline.saturating_duration_since(Instant::now()))
        .max(STATUS_POLL);
    let status = match ask(socket, &Request::Status, Some(bound)) {
        Ok(Response::Status(status)) => status,
        Ok(Response::Error { message, .. }) => return Look::NoAnswer(message),
        Ok(other) => return Look::NoAnswer(format!("unexpected answer {other:?}")),
        Err(failure) => return Look::NoAnswer(failure.message),
    };
    report.generation = status.generation;
    report.pid = status.child_pid;
    report.sha256.clone_from(&status.binary_sha256);
    report.serving_for_ms = status.serving_for_ms;
    if status.child_pid.is_some() && report.generations_seen.last() != Some(&status.generation) {
        report.generations_seen.push(status.generation);
    }
    match judge(&status, goal) {
        Ok(()) => Look::Reached,
        Err((reason, next)) => Look::NotYet { reason, next },
    }
}

/// Whether `status` meets `goal`; else why not and when to look again.
fn judge(status: &StatusReport, goal: &Goal) -> Result<(), (String, Duration)> {
    let not_yet = |reason: String| Err((reason, STATUS_POLL));
    let (generation, pid) = match (status.state, status.child_pid) {
        (SupervisorState::Serving, Some(pid)) => (status.generation, pid),
        (SupervisorState::HandingOff, _) => {
            return not_yet("a handoff is in flight".into());
        }
        (SupervisorState::Stopping, _) => return not_yet("the supervisor is stopping".into()),
        (SupervisorState::Starting | SupervisorState::Serving, _) => {
            return not_yet("nobody serves: the supervisor is starting a generation".into());
        }
    };
    let running = status.binary_sha256.as_deref();
    if let Some(expected) = &goal.sha256
        && running != Some(expected.as_str())
    {
        return not_yet(format!(
            "generation {generation} (pid {pid}) runs sha256 {}, not the expected {}",
            running.unwrap_or("unknown"),
            expected
        ));
    }
    if let Some(kept) = status.retirees.iter().find(|r| r.in_probation) {
        return not_yet(format!(
            "generation {generation} (pid {pid}) is in probation: generation {} (pid {}) is \
             kept to resume if it fails",
            kept.generation, kept.pid
        ));
    }
    let served = Duration::from_millis(status.serving_for_ms.unwrap_or_default());
    if served < goal.serving_for {
        return Err((
            format!(
                "generation {generation} (pid {pid}) has served for {} of {}",
                format_duration(served),
                format_duration(goal.serving_for)
            ),
            goal.serving_for - served,
        ));
    }
    Ok(())
}

fn print(report: &WaitReport, msg: String, json: bool) -> Result<(), Failure> {
    let verdict = Verdict {
        changed: false,
        failed: !report.served,
        msg,
    };
    if json {
        println!("{}", verdict.beside(report)?);
    } else if report.served {
        println!("{}", verdict.msg);
    }
    Ok(())
}

fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
