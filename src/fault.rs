//! Named fault points at every state transition of every role.
//!
//! Each driver calls `reached` once per transition with the state it just
//! entered; the list of points is the product of the roles and the machines'
//! state-name lists ([`points`]), so it cannot drift from the machines. With
//! the `fault-injection` cargo feature, a point is armed from the environment:
//!
//! ```text
//! HANDOFF_FAULT=ROLE:STATE:ACTION          e.g. successor:await_begin:crash
//! HANDOFF_FAULT_GENERATION=N               (optional) only generation N
//! ```
//! ROLE is `supervisor`, `successor` or `incumbent`; ACTION is `crash`
//! (abort), `panic` (unwind), `exit` (status 86), `hang` (block for ever) or
//! `error` (the driver treats its peer as gone). Without the feature, `reached` is an
//! empty inline function and the environment is never read.

use crate::protocol::{ForeignState, GenerationState, HandoffState, RetireState};

/// Environment variable arming one fault point.
pub const ENV_FAULT: &str = "HANDOFF_FAULT";
/// Environment variable restricting a generation's fault to one generation.
pub const ENV_FAULT_GENERATION: &str = "HANDOFF_FAULT_GENERATION";
/// Exit status of the `exit` action.
pub const EXIT_FAULT: i32 = 86;

/// Whose transition a point is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultRole {
    /// The supervisor's handoff and retire machines.
    Supervisor,
    /// A generation before its commit.
    Successor,
    /// A generation after its commit.
    Incumbent,
}

impl FaultRole {
    /// The role as written in `HANDOFF_FAULT`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultRole::Supervisor => "supervisor",
            FaultRole::Successor => "successor",
            FaultRole::Incumbent => "incumbent",
        }
    }
}

/// What an armed point does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// `std::process::abort()`.
    Crash,
    /// `panic!`: unwinds the calling thread.
    Panic,
    /// `exit(86)`.
    Exit,
    /// Block the calling thread for ever.
    Hang,
    /// Report an error to the driver.
    Error,
}

/// One fault point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultPoint {
    /// Whose transition.
    pub role: FaultRole,
    /// The state entered.
    pub state: &'static str,
}

impl std::fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.role.as_str(), self.state)
    }
}

/// Every fault point, generated from the machines' state lists.
pub fn points() -> Vec<FaultPoint> {
    let supervisor = HandoffState::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(RetireState::ALL.iter().map(|s| s.as_str()))
        .chain(ForeignState::ALL.iter().map(|s| s.as_str()))
        .chain(SupervisorStep::ALL.iter().map(|s| s.as_str()))
        .map(|state| FaultPoint {
            role: FaultRole::Supervisor,
            state,
        });
    let generation = GenerationState::ALL.iter().map(|s| FaultPoint {
        role: generation_role(*s),
        state: s.as_str(),
    });
    supervisor.chain(generation).collect()
}

/// The role a generation plays in `state`.
pub fn generation_role(state: GenerationState) -> FaultRole {
    if state.is_successor() {
        FaultRole::Successor
    } else {
        FaultRole::Incumbent
    }
}

/// The `error` action fired: the driver must treat its peer as gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected;

/// The steps of the supervisor's own re-exec and of its adoption of an
/// orphaned generation: fault points of role `supervisor`, reached by
/// `handoffctl` through [`step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupervisorStep {
    /// The state is frozen and written; the exec is next.
    ReexecBeforeExec,
    /// The new image runs; nothing is restored yet.
    ReexecAfterExec,
    /// The state is read back (settings, listeners, admin socket).
    ReexecRestored,
    /// The generations are taken back; nothing runs yet.
    ReexecReadopted,
    /// An orphan was found and claimed; its listeners are not back yet.
    AdoptBeforeListeners,
    /// The orphan's listeners are back; its supervision starts next.
    AdoptAfterListeners,
}

impl SupervisorStep {
    /// Every step, in order.
    pub const ALL: &'static [SupervisorStep] = &[
        SupervisorStep::ReexecBeforeExec,
        SupervisorStep::ReexecAfterExec,
        SupervisorStep::ReexecRestored,
        SupervisorStep::ReexecReadopted,
        SupervisorStep::AdoptBeforeListeners,
        SupervisorStep::AdoptAfterListeners,
    ];

    /// The name in `HANDOFF_FAULT`.
    pub fn as_str(self) -> &'static str {
        match self {
            SupervisorStep::ReexecBeforeExec => "reexec_before_exec",
            SupervisorStep::ReexecAfterExec => "reexec_after_exec",
            SupervisorStep::ReexecRestored => "reexec_restored",
            SupervisorStep::ReexecReadopted => "reexec_readopted",
            SupervisorStep::AdoptBeforeListeners => "adopt_before_listeners",
            SupervisorStep::AdoptAfterListeners => "adopt_after_listeners",
        }
    }
}

/// Reached by `handoffctl` at each [`SupervisorStep`]; fires the point if
/// armed (`HANDOFF_FAULT=supervisor:STEP:ACTION`, with the
/// `fault-injection` feature).
pub fn step(step: SupervisorStep) -> Result<(), Injected> {
    reached(FaultRole::Supervisor, step.as_str(), 0)
}

/// Called by the drivers on every transition. `generation` is the calling
/// generation's number when known (0 for the supervisor or before HelloAck).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn reached(
    _role: FaultRole,
    _state: &'static str,
    _generation: u64,
) -> Result<(), Injected> {
    Ok(())
}

/// Called by the drivers on every transition. `generation` is the calling
/// generation's number when known (0 for the supervisor or before HelloAck).
#[cfg(feature = "fault-injection")]
pub(crate) fn reached(
    role: FaultRole,
    state: &'static str,
    generation: u64,
) -> Result<(), Injected> {
    let Some(armed) = armed() else {
        return Ok(());
    };
    if armed.role != role || armed.state != state {
        return Ok(());
    }
    if let Some(only) = armed.generation
        && only != generation
    {
        return Ok(());
    }
    tracing::warn!(point = %FaultPoint { role, state }, action = ?armed.action, "fault point fired");
    match armed.action {
        FaultAction::Crash => std::process::abort(),
        FaultAction::Panic => panic!("fault point {} fired", FaultPoint { role, state }),
        FaultAction::Exit => std::process::exit(EXIT_FAULT),
        FaultAction::Hang => loop {
            std::thread::park();
        },
        FaultAction::Error => Err(Injected),
    }
}

#[cfg(feature = "fault-injection")]
struct Armed {
    role: FaultRole,
    state: String,
    action: FaultAction,
    generation: Option<u64>,
}

#[cfg(feature = "fault-injection")]
fn armed() -> Option<&'static Armed> {
    static ARMED: std::sync::OnceLock<Option<Armed>> = std::sync::OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV_FAULT).ok()?;
            let parsed = parse(&spec);
            if parsed.is_none() {
                tracing::error!(%spec, "{ENV_FAULT} does not parse as ROLE:STATE:ACTION; ignored");
            }
            parsed
        })
        .as_ref()
}

#[cfg(feature = "fault-injection")]
fn parse(spec: &str) -> Option<Armed> {
    let mut parts = spec.split(':');
    let role = match parts.next()? {
        "supervisor" => FaultRole::Supervisor,
        "successor" => FaultRole::Successor,
        "incumbent" => FaultRole::Incumbent,
        _ => return None,
    };
    let state = parts.next()?.to_owned();
    let action = match parts.next()? {
        "crash" => FaultAction::Crash,
        "panic" => FaultAction::Panic,
        "exit" => FaultAction::Exit,
        "hang" => FaultAction::Hang,
        "error" => FaultAction::Error,
        _ => return None,
    };
    if parts.next().is_some() || !points().iter().any(|p| p.role == role && p.state == state) {
        return None;
    }
    let generation = std::env::var(ENV_FAULT_GENERATION)
        .ok()
        .and_then(|n| n.parse().ok());
    Some(Armed {
        role,
        state,
        action,
        generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_of_every_machine_is_a_point_once() {
        let points = points();
        let unique: std::collections::HashSet<_> = points.iter().collect();
        assert_eq!(unique.len(), points.len(), "no duplicate points");
        assert_eq!(
            points.len(),
            HandoffState::ALL.len()
                + RetireState::ALL.len()
                + ForeignState::ALL.len()
                + SupervisorStep::ALL.len()
                + GenerationState::ALL.len()
        );
        assert!(points.contains(&FaultPoint {
            role: FaultRole::Successor,
            state: "await_begin"
        }));
        assert!(points.contains(&FaultPoint {
            role: FaultRole::Incumbent,
            state: "sealed"
        }));
        assert!(points.contains(&FaultPoint {
            role: FaultRole::Supervisor,
            state: "retiring"
        }));
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn specs_parse_only_for_existing_points() {
        assert!(parse("successor:await_begin:crash").is_some());
        assert!(parse("incumbent:sealed:error").is_some());
        assert!(
            parse("successor:sealed:crash").is_none(),
            "sealed is an incumbent state"
        );
        assert!(parse("supervisor:nowhere:crash").is_none());
        assert!(parse("supervisor:draining:explode").is_none());
        assert!(parse("supervisor:draining:crash:extra").is_none());
    }
}
