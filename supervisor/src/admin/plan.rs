//! What an upgrade would do, decided once it has passed every check and
//! before anything changes: `upgrade --check` (a dry run, answered by a
//! [`PlanReport`] instead of the handoff) and `upgrade --if-changed`
//! (nothing to do when the serving generation already runs the target
//! build). A fleet engine needs both: a dry run that sees what the real
//! step would refuse, and a step that can answer "unchanged".
//!
//! Called by `upgrade::upgrade` after the binary, pin and bounds checks,
//! with the upgrade lock held: a dry run meets every refusal the real
//! upgrade would (busy included) and adds the supervisor's own state (a
//! restart in flight is busy, a stopping supervisor refuses). Neither
//! answer notifies systemd: no reload happens.
//!
//! The build's identity is its sha256: the serving generation's
//! (`/proc/PID/exe`, through the identity cache) against the target's (the
//! pinned file's, else the path's, hashed here). A generation's arguments
//! and environment are the supervisor's and no upgrade changes them, so the
//! build is all an upgrade can change.

use std::path::Path;
use std::time::Duration;

use handoff::supervisor::SupervisorState;

use super::AdminState;
use super::wire::{BinaryRecord, ErrorKind, PlanAction, PlanReport, Response};

/// What the caller asked besides the upgrade itself.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    /// `--check`.
    pub check: bool,
    /// `--if-changed`.
    pub if_changed: bool,
}

/// The checked target of an upgrade.
#[derive(Debug)]
pub struct Target<'a> {
    /// Its path.
    pub program: &'a Path,
    /// Its sha256 when it was pinned (already hashed and compared).
    pub pinned_sha256: Option<&'a str>,
    /// This handoff's drain timeout and deadline, when set by the caller.
    pub bounds: (Option<Duration>, Option<Duration>),
}

/// The answer that ends this upgrade before its handoff (a plan, or a
/// refusal a dry run meets), or `None` when the handoff goes on.
pub fn before_handoff(state: &AdminState, target: &Target<'_>, asked: Asked) -> Option<Response> {
    if !asked.check && !asked.if_changed {
        return None;
    }
    let Ok(status) = state.handle.status() else {
        return Some(stopping());
    };
    if asked.check {
        // What the library would answer the real upgrade.
        match status.state {
            SupervisorState::HandingOff => {
                return Some(Response::error(
                    ErrorKind::Busy,
                    "another handoff is in flight",
                ));
            }
            SupervisorState::Stopping => return Some(stopping()),
            SupervisorState::Starting | SupervisorState::Serving => {}
        }
    }
    let sha256 = match target_sha256(state, target) {
        Ok(sha256) => sha256,
        // As the upgrade refuses a file it cannot read.
        Err(message) => return Some(Response::error(ErrorKind::Rejected, message)),
    };
    let current = status
        .child_pid
        .and_then(|pid| state.identities.of_generation(pid));
    let action = match (&current, status.child_pid) {
        (_, None) => PlanAction::Start,
        (Some(current), Some(_)) if asked.if_changed && current.sha256 == sha256 => {
            PlanAction::None
        }
        _ => PlanAction::Upgrade,
    };
    if !asked.check && action != PlanAction::None {
        return None;
    }
    let (drain, deadline) = target.bounds;
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let plan = PlanReport {
        action,
        check: asked.check,
        generation: status.generation,
        pid: status.child_pid,
        current,
        target: BinaryRecord {
            path: target.program.to_owned(),
            sha256,
        },
        sha256_verified: target.pinned_sha256.is_some(),
        deadline_ms: millis(deadline.unwrap_or(state.timeouts.handoff_deadline)),
        drain_timeout_ms: millis(drain.unwrap_or(state.timeouts.drain_grace)),
    };
    tracing::info!(
        action = ?plan.action,
        check = plan.check,
        target = %plan.target.path.display(),
        sha256 = %plan.target.sha256,
        "upgrade answered without a handoff"
    );
    Some(Response::Plan(plan))
}

/// The target's sha256: the pin's, else the file's (through the identity
/// cache); why not, for a file that cannot be read.
fn target_sha256(state: &AdminState, target: &Target<'_>) -> Result<String, String> {
    match target.pinned_sha256 {
        Some(sha256) => Ok(sha256.to_owned()),
        None => state
            .identities
            .of_path(target.program)
            .map(|record| record.sha256)
            .map_err(|e| format!("binary {}: {e}", target.program.display())),
    }
}

fn stopping() -> Response {
    Response::error(ErrorKind::Stopping, "the supervisor is stopping")
}
