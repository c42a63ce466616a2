//! What a supervisor reports: its state and its status. The events it
//! announces and the outcome of a handoff are the lifecycle machine's own
//! types (`protocol::outcome`), re-exported from here.

use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::{LifecycleState, Outcome, ProbationRollback, StoredGroup};
use crate::wire::Mode;

/// What the supervisor is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupervisorState {
    /// No generation serves yet (first start or a restart).
    Starting,
    /// A generation serves.
    Serving,
    /// A handoff is in flight.
    HandingOff,
    /// Stopping.
    Stopping,
}

/// A report of the supervisor.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// What it does.
    pub state: SupervisorState,
    /// The serving generation's number (0 when none).
    pub generation: u64,
    /// The serving generation's pid.
    pub child_pid: Option<u32>,
    /// The serving generation's binary, by the path it was started from
    /// (not the `/proc/self/fd/N` a pinned binary is executed through);
    /// with nobody serving, the one a restart runs.
    pub program: PathBuf,
    /// The mode.
    pub mode: Mode,
    /// `(name, address)` of each listener.
    pub listeners: Vec<(String, String)>,
    /// Time since the supervisor started.
    pub uptime: Duration,
    /// The last handoff (cold starts included).
    pub last_handoff: Option<Outcome>,
    /// Pids of old generations still being retired.
    pub retiring: Vec<u32>,
    /// The old generations still being retired, with the state of each
    /// (`in_probation` says whether it may still be resumed).
    pub retirees: Vec<RetireeStatus>,
    /// How long the serving generation has been the one serving (since its
    /// commit, or its resumption by an automatic rollback): no restart and
    /// no rollback in that time.
    pub serving_for: Option<Duration>,
    /// The last automatic rollback during a probation, if any since the
    /// supervisor started.
    pub last_probation_rollback: Option<ProbationRollback>,
    /// The fd store's bound (0: off; always 0 for a library daemon).
    pub fd_store_max: usize,
    /// What the fd store holds, by name and kind, in the order stored.
    pub fd_store: Vec<StoredGroup>,
    /// The item store (I21), by name.
    pub items: Vec<ItemReport>,
}

/// One item of the item store in a status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ItemReport {
    /// Its name.
    pub name: String,
    /// The generation that put it.
    pub writer: u64,
    /// A blob's schema, version and length; `None` for an fd.
    pub blob: Option<BlobReport>,
}

/// A blob in a status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobReport {
    /// Its schema's name.
    pub schema: String,
    /// Its schema's version.
    pub version: u32,
    /// Its length in bytes.
    pub len: u64,
}

/// An old generation being retired.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetireeStatus {
    /// Its number.
    pub generation: u64,
    /// Its pid.
    pub pid: u32,
    /// Its retirement's state (`retire_draining`, `retire_probation`, ...).
    pub state: String,
    /// Whether it is kept for a resumption (a probation).
    pub in_probation: bool,
}

impl SupervisorState {
    /// The public state: a handoff with nobody serving (a cold start, a
    /// restart) is still starting.
    pub(crate) fn of(state: LifecycleState, serving: bool) -> SupervisorState {
        match state {
            LifecycleState::Starting => SupervisorState::Starting,
            LifecycleState::Serving => SupervisorState::Serving,
            LifecycleState::HandingOff if serving => SupervisorState::HandingOff,
            LifecycleState::HandingOff => SupervisorState::Starting,
            LifecycleState::Stopping | LifecycleState::Finished => SupervisorState::Stopping,
        }
    }
}
