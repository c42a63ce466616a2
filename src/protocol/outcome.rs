//! What the supervisor's machines report: how a generation ended, how a
//! handoff ended, and the events a supervisor announces. Plain data; the
//! public API re-exports it from [`crate::supervisor`].

use std::fmt;

use super::Phases;
use crate::wire::AbortReason;

/// How a generation's process ended, as the reap reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// The reap failed or reported neither (not expected on Linux).
    Unknown,
}

impl ExitStatus {
    /// Exit status 0.
    pub fn is_clean(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit status {code}"),
            ExitStatus::Signal(signal) => write!(f, "killed by signal {signal}"),
            ExitStatus::Unknown => f.write_str("unknown status"),
        }
    }
}

/// When a generation that exited outside a handoff is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit status.
    Always,
    /// Unless it exited with status 0.
    OnFailure,
    /// Never; the supervisor stops when its generation exits.
    Never,
}

/// How a handoff ended, with the per-phase timings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// The successor serves.
    Committed {
        /// The handoff's id.
        handoff_id: u64,
        /// The generation that was serving (absent on a cold start).
        old_pid: Option<u32>,
        /// The generation serving now.
        new_pid: u32,
        /// Its number.
        generation: u64,
        /// Where the time went.
        phases: Phases,
        /// Why the supervisor stopped the old generation before the commit,
        /// if it did (its drain overran the drain timeout, its seal was
        /// silent too long, or `force` after it failed to drain or seal).
        #[serde(default)]
        incumbent_stopped: Option<String>,
    },
    /// The incumbent kept (or got back) the work.
    RolledBack {
        /// The handoff's id.
        handoff_id: u64,
        /// Why.
        reason: AbortReason,
        /// The generation serving now, if any.
        old_pid: Option<u32>,
        /// The successor that was killed, if it was spawned.
        failed_pid: Option<u32>,
        /// The serving generation's number (0 when none).
        generation: u64,
        /// Where the time went.
        phases: Phases,
    },
}

impl Outcome {
    /// The handoff id.
    pub fn handoff_id(&self) -> u64 {
        match self {
            Outcome::Committed { handoff_id, .. } | Outcome::RolledBack { handoff_id, .. } => {
                *handoff_id
            }
        }
    }

    /// Whether it committed.
    pub fn is_committed(&self) -> bool {
        matches!(self, Outcome::Committed { .. })
    }

    /// Where the time went.
    pub fn phases(&self) -> &Phases {
        match self {
            Outcome::Committed { phases, .. } | Outcome::RolledBack { phases, .. } => phases,
        }
    }
}

/// An automatic rollback: the new generation failed during its probation
/// and the previous one serves again (I14).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbationRollback {
    /// The handoff whose commit was undone.
    pub handoff_id: u64,
    /// The resumed generation's number.
    pub generation: u64,
    /// Its pid.
    pub pid: u32,
    /// The generation that failed.
    pub failed_generation: u64,
    /// Its pid.
    pub failed_pid: u32,
    /// How it failed: its exit status, or the health probe's last answer.
    pub reason: String,
    /// Whether the resumed generation was seen serving again.
    #[serde(default)]
    pub resume_check: ResumeCheck,
}

/// After an automatic rollback, whether the resumed generation serves
/// again. A foreign daemon acknowledges nothing: it gets its resume signal
/// and may ignore it, stay alive and leave every connection waiting in the
/// backlog. With a health probe configured, the supervisor probes the
/// listeners (retried for `Timeouts::probe`, as for a successor); a
/// resumed generation that never answers is killed, and the restart
/// policy starts a fresh one of the same binary (I14).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum ResumeCheck {
    /// No health probe is configured: the resumption is trusted.
    #[default]
    Unchecked,
    /// The probe is running.
    Probing,
    /// The probe passed: someone accepts and answers again.
    Passed,
    /// The probe never passed (its last answer): the resumed generation
    /// was killed.
    Failed(String),
}

/// What the supervisor announces to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// A handoff (or a cold start) began.
    HandoffStarted {
        /// Its id.
        handoff_id: u64,
        /// Whether an incumbent takes part (false on a cold start).
        upgrade: bool,
        /// The successor's generation number.
        generation: u64,
        /// The successor's pid.
        successor_pid: u32,
        /// The incumbent's pid (absent on a cold start).
        incumbent_pid: Option<u32>,
        /// The program the successor was started from, as the upgrade named
        /// it.
        program: std::path::PathBuf,
    },
    /// A handoff entered a phase (the machine's state name).
    Phase {
        /// The handoff.
        handoff_id: u64,
        /// The phase entered.
        phase: &'static str,
    },
    /// A handoff ended.
    HandoffFinished(Box<Outcome>),
    /// The serving generation exited outside a handoff (`expected` during
    /// a stop).
    GenerationExited {
        /// Its number.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// Whether the supervisor asked for it (a stop).
        expected: bool,
    },
    /// An old generation exited after a commit.
    GenerationRetired {
        /// Its number.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// The new generation failed during the probation after its commit
    /// and the previous one was resumed (an automatic rollback, I14).
    RolledBackInProbation(ProbationRollback),
    /// The check of a generation resumed by an automatic rollback ended.
    ResumeChecked {
        /// The resumed generation.
        generation: u64,
        /// Its result.
        check: ResumeCheck,
    },
    /// A restart after a crash was refused or failed; it is tried again.
    RestartFailed {
        /// Why.
        reason: String,
    },
    /// The supervisor is stopping.
    Stopping,
    /// The supervisor froze (`SupervisorHandle::freeze`): the last event
    /// before it goes on in place or in the next image of the process.
    Frozen,
}
