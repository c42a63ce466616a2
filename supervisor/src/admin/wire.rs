//! The admin protocol: one JSON request line, one JSON response line per
//! connection, over the admin Unix socket (mode 0600, peers checked with
//! `SO_PEERCRED`). The request must arrive within `Timeouts::admin_request`
//! and fit in [`MAX_LINE`] bytes.
//!
//! | request | response |
//! |---|---|
//! | `{"command":"status"}` | `{"result":"status", ...StatusReport}` |
//! | `{"command":"upgrade","binary":P?,"sha256":H?,"drain_timeout_ms":N?,"deadline_ms":N?,"force":B?,"if_changed":B?,"check":B?}` | `{"result":"handoff", ...HandoffReport}` when the handoff ended; `{"result":"plan", ...PlanReport}` for a `check`, or an `if_changed` with nothing to change |
//! | `{"command":"stop"}` | `{"result":"stopped"}` once every generation exited |
//! | `{"command":"history"}` | `{"result":"history","entries":[HistoryEntry...]}` (oldest first) |
//! | `{"command":"rollback","drain_timeout_ms":N?,"deadline_ms":N?,"force":B?}` | as `upgrade`, to the binary that ran before the last commit |
//! | anything else, too long, too slow | `{"result":"error","kind":K,"message":M}` |

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use handoff::Mode;
use handoff::supervisor::{
    Outcome, ProbationRollback, ResumeCheck, Status, StoredGroup, SupervisorState,
};

/// The longest request or response line accepted, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// A client's one request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Report the supervisor.
    Status,
    /// Run one handoff to its end.
    Upgrade {
        /// Absolute path of the successor's binary; the configured one when
        /// absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<PathBuf>,
        /// Expected sha256 (lowercase hex).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        /// Drain timeout for this handoff.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        drain_timeout_ms: Option<u64>,
        /// Deadline for this handoff.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<u64>,
        /// Stop an incumbent that fails to drain or seal (exclusive mode).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
        /// Do nothing when the serving generation already runs a binary
        /// with the target's sha256.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        if_changed: bool,
        /// A dry run: every check, then a [`PlanReport`] instead of the
        /// handoff.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        check: bool,
    },
    /// Stop gracefully.
    Stop,
    /// The last handoffs.
    History,
    /// The supervisor replaces its own image, keeping its pid, its
    /// generations and its listeners.
    Reexec {
        /// Absolute path of the new `handoffctl`; the one the supervisor
        /// was started from when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<PathBuf>,
        /// Expected sha256 (lowercase hex).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        /// Nothing to do when the target hashes like the running image.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        if_changed: bool,
    },
    /// An upgrade back to the binary (path and sha256 as recorded) that ran
    /// before the last commit.
    Rollback {
        /// Drain timeout for this handoff.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        drain_timeout_ms: Option<u64>,
        /// Deadline for this handoff.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<u64>,
        /// As for `upgrade`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
}

/// The supervisor's one response.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Answer to `status`.
    Status(Box<StatusReport>),
    /// Answer to `upgrade`: the handoff committed or rolled back.
    Handoff(HandoffReport),
    /// Answer to `upgrade` with `check` (what it would do), or with
    /// `if_changed` when the target build already serves (nothing done).
    Plan(PlanReport),
    /// Answer to `stop`: everything exited.
    Stopped,
    /// Answer to `reexec`, from whichever image is in charge afterwards.
    Reexec(ReexecReport),
    /// Answer to `history`.
    History {
        /// Oldest first, at most [`HISTORY_LEN`].
        entries: Vec<HistoryEntry>,
    },
    /// The request was not carried out.
    Error {
        /// What kind of refusal.
        kind: ErrorKind,
        /// One line for a human.
        message: String,
    },
}

impl Response {
    /// A refusal.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}

/// Handoffs kept for `history`.
pub const HISTORY_LEN: usize = 32;

/// A binary as the supervisor recorded it: the path of what the generation
/// ran (`/proc/PID/exe` resolved, right after its exec) and its sha256.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BinaryRecord {
    /// Absolute path.
    pub path: PathBuf,
    /// Lowercase hex.
    pub sha256: String,
}

/// One handoff in `history`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    /// Outcome, pids, phases and total time (`abort_reason` is the reason).
    #[serde(flatten)]
    pub report: HandoffReport,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// What the incumbent ran (absent on a cold start or a restart).
    pub old_binary: Option<BinaryRecord>,
    /// What the successor ran (absent if it was gone before it was seen).
    pub new_binary: Option<BinaryRecord>,
    /// Set on a committed handoff whose new generation failed during its
    /// probation: the previous generation was resumed (null otherwise).
    #[serde(default)]
    pub automatic_rollback: Option<AutomaticRollback>,
}

/// An automatic rollback during probation, as `history` records it on the
/// handoff whose commit it undid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AutomaticRollback {
    /// Wall-clock time of the resumption, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The generation serving again.
    pub resumed_generation: u64,
    /// Its pid.
    pub resumed_pid: u32,
    /// The generation that failed.
    pub failed_generation: u64,
    /// Its pid.
    pub failed_pid: u32,
    /// How it failed (exit status or the probe's last answer).
    pub reason: String,
}

impl HistoryEntry {
    /// One line for a human.
    pub fn line(&self) -> String {
        let binary = |record: &Option<BinaryRecord>| {
            record.as_ref().map_or_else(
                || "-".to_owned(),
                |r| {
                    format!(
                        "{} ({})",
                        r.path.display(),
                        &r.sha256[..r.sha256.len().min(12)]
                    )
                },
            )
        };
        let undone = self
            .automatic_rollback
            .as_ref()
            .map_or_else(String::new, |r| {
                format!(
                    "; automatic rollback in probation: pid {} failed ({}), pid {} serves again",
                    r.failed_pid, r.reason, r.resumed_pid
                )
            });
        format!(
            "{} {} -> {}: {}{undone}",
            utc(self.started_unix_ms),
            binary(&self.old_binary),
            binary(&self.new_binary),
            self.report.line()
        )
    }
}

/// Milliseconds since the epoch as UTC in RFC 3339 (`2026-12-06T11:33:37.123Z`),
/// by the proleptic Gregorian calendar (days to civil date: the era
/// arithmetic of Howard Hinnant's `civil_from_days`).
fn utc(unix_ms: u64) -> String {
    let (days, ms) = (unix_ms / 86_400_000, unix_ms % 86_400_000);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (h, m, sec, milli) = (
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1_000 % 60,
        ms % 1_000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}.{milli:03}Z")
}

/// Why a request was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not a request (garbage, too long, too slow).
    BadRequest,
    /// The peer's uid may not use the admin socket.
    PermissionDenied,
    /// Another handoff is in flight.
    Busy,
    /// The binary is not allowed, missing, not executable, or its hash
    /// differs.
    Rejected,
    /// The supervisor is stopping.
    Stopping,
    /// Too many admin connections at once.
    Overloaded,
    /// The supervisor could not start the handoff.
    Failed,
}

/// A `handoffctl` image: its version and the sha256 of its file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    /// `handoffctl --version`'s number.
    pub version: String,
    /// Lowercase hex.
    pub sha256: String,
}

/// One re-exec of the supervisor, as `reexec --json` prints it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReexecReport {
    /// Whether there was anything to do (false: `--if-changed` found the
    /// running image's sha256).
    pub changed: bool,
    /// Whether the new image is in charge now.
    pub committed: bool,
    /// Why not (`null` when committed or unchanged).
    pub reason: Option<String>,
    /// The supervisor's pid (the same before and after).
    pub pid: u32,
    /// The image that ran before.
    pub from: ImageRecord,
    /// The image asked for (absent when it could not be read).
    pub to: Option<ImageRecord>,
    /// Milliseconds per step reached: `preflight`, `quiesce` (admin
    /// connections finish), `freeze`, `exec`, `restore`, `readopt`,
    /// `resume`.
    pub phases_ms: BTreeMap<String, f64>,
    /// Milliseconds from the request to the answer.
    pub total_ms: f64,
}

impl ReexecReport {
    /// One line for a human.
    pub fn line(&self) -> String {
        let to = self
            .to
            .as_ref()
            .map_or_else(|| "?".to_owned(), |to| short(&to.sha256));
        match (self.changed, self.committed) {
            (false, _) => format!(
                "unchanged: pid {} already runs handoffctl {} ({})",
                self.pid,
                self.from.version,
                short(&self.from.sha256)
            ),
            (true, true) => format!(
                "re-executed: pid {} runs {} now (was {}) in {:.1} ms",
                self.pid,
                to,
                short(&self.from.sha256),
                self.total_ms
            ),
            (true, false) => format!(
                "not re-executed: pid {} still runs {} ({})",
                self.pid,
                short(&self.from.sha256),
                self.reason.as_deref().unwrap_or("no reason given")
            ),
        }
    }
}

/// The first 12 hex digits of a sha256.
fn short(sha256: &str) -> String {
    sha256.chars().take(12).collect()
}

/// One handoff, as `upgrade --json` prints it and `status` reports the last.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HandoffReport {
    /// The handoff's id.
    pub handoff_id: u64,
    /// Whether the successor serves now.
    pub committed: bool,
    /// Why it rolled back (`null` when committed).
    pub abort_reason: Option<String>,
    /// The generation serving before (absent on a cold start).
    pub old_pid: Option<u32>,
    /// The successor (the one that failed, on a rollback).
    pub new_pid: Option<u32>,
    /// The serving generation's number now (0 when none).
    pub generation: u64,
    /// Whether a generation serves after this handoff (false when a
    /// rollback found nobody to resume: the restart policy decides next).
    #[serde(default = "serving_by_default")]
    pub serving: bool,
    /// Why the supervisor stopped the old generation before the commit, if
    /// it did (its drain overran the drain timeout, its seal was silent too
    /// long, or `--force`).
    #[serde(default)]
    pub incumbent_stopped: Option<String>,
    /// Rolled back because it was cancelled (by a stop of the supervisor,
    /// which goes on to stop the old generation), not because the successor
    /// failed.
    #[serde(default)]
    pub cancelled: bool,
    /// Milliseconds per phase the handoff reached.
    pub phases_ms: BTreeMap<String, f64>,
    /// Milliseconds in all, from the request to the verdict (the phases
    /// follow each other with no gap and add up to this).
    pub total_ms: f64,
}

/// Reports recorded before `serving` existed were all of serving outcomes
/// but rollbacks with nobody left; those read `true` (the old files cannot
/// tell).
fn serving_by_default() -> bool {
    true
}

impl HandoffReport {
    /// The report of a library outcome.
    pub fn from_outcome(outcome: &Outcome) -> HandoffReport {
        let phases = match outcome {
            Outcome::Committed { phases, .. } | Outcome::RolledBack { phases, .. } => phases,
        };
        let mut report = HandoffReport {
            handoff_id: outcome.handoff_id(),
            committed: outcome.is_committed(),
            abort_reason: None,
            old_pid: None,
            new_pid: None,
            generation: 0,
            serving: true,
            incumbent_stopped: None,
            cancelled: false,
            phases_ms: phases
                .named()
                .into_iter()
                .filter_map(|(name, took)| took.map(|took| (name.to_owned(), millis(took))))
                .collect(),
            total_ms: millis(phases.total),
        };
        match outcome {
            Outcome::Committed {
                old_pid,
                new_pid,
                generation,
                incumbent_stopped,
                ..
            } => {
                report.old_pid = *old_pid;
                report.new_pid = Some(*new_pid);
                report.generation = *generation;
                report.incumbent_stopped.clone_from(incumbent_stopped);
            }
            Outcome::RolledBack {
                reason,
                old_pid,
                failed_pid,
                generation,
                ..
            } => {
                report.abort_reason = Some(reason.to_string());
                report.cancelled = *reason == handoff::wire::AbortReason::Cancelled;
                report.old_pid = *old_pid;
                report.new_pid = *failed_pid;
                report.generation = *generation;
                report.serving = old_pid.is_some();
            }
        }
        report
    }

    /// Who serves after this handoff, as systemd's `STATUS=` shows it.
    pub fn status_line(&self) -> String {
        let reason = self.abort_reason.as_deref().unwrap_or("");
        match (
            self.committed,
            self.committed
                .then_some(self.new_pid)
                .flatten()
                .or(self.old_pid),
        ) {
            (true, Some(pid)) => format!("serving: generation {}, pid {pid}", self.generation),
            (false, Some(pid)) if self.cancelled => format!(
                "stopping: generation {}, pid {pid} (upgrade cancelled)",
                self.generation
            ),
            (false, Some(pid)) => format!(
                "serving: generation {}, pid {pid} (upgrade rolled back: {reason})",
                self.generation
            ),
            (_, None) => format!("starting: generation failed ({reason})"),
        }
    }

    /// One line for a human.
    pub fn line(&self) -> String {
        let pid = |pid: Option<u32>| pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        if self.committed {
            let replaced = self
                .old_pid
                .map_or_else(|| "started".to_owned(), |old| format!("replaced pid {old}"));
            let stopped = self
                .incumbent_stopped
                .as_deref()
                .map_or_else(String::new, |why| {
                    format!(" (the old generation was stopped: {why})")
                });
            format!(
                "committed: handoff {}, generation {} (pid {}) {replaced} in {:.1} ms{stopped}",
                self.handoff_id,
                self.generation,
                pid(self.new_pid),
                self.total_ms
            )
        } else if self.cancelled {
            let kept = match self.old_pid {
                Some(old) => format!(
                    "generation {} (pid {old}) was not replaced",
                    self.generation
                ),
                None => "nothing was serving".to_owned(),
            };
            format!(
                "cancelled: handoff {} was cancelled before its commit; {kept}",
                self.handoff_id
            )
        } else if self.serving {
            format!(
                "rolled back: handoff {}: {}; generation {} (pid {}) still serving",
                self.handoff_id,
                self.abort_reason.as_deref().unwrap_or("unknown reason"),
                self.generation,
                pid(self.old_pid)
            )
        } else {
            format!(
                "rolled back: handoff {}: {}; nobody serves now (the old generation is gone or \
                 could not resume); the restart policy decides what starts next",
                self.handoff_id,
                self.abort_reason.as_deref().unwrap_or("unknown reason"),
            )
        }
    }
}

/// What an upgrade would do, decided after every check it makes: the
/// answer to a dry run (`check`), and to `if_changed` when there is
/// nothing to do. Nothing was changed in either case.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanReport {
    /// What the upgrade does (or did not have to do).
    pub action: PlanAction,
    /// Whether this was a dry run (`--check`).
    pub check: bool,
    /// The serving generation's number (0 when none).
    pub generation: u64,
    /// Its pid.
    pub pid: Option<u32>,
    /// What it runs (`/proc/PID/exe` and its sha256), when readable.
    pub current: Option<BinaryRecord>,
    /// The binary the upgrade runs, hashed.
    pub target: BinaryRecord,
    /// Whether `target.sha256` was checked against an expected one
    /// (`--sha256`, or the config's pin of the configured binary).
    pub sha256_verified: bool,
    /// The handoff's deadline, milliseconds (the flag's or the configured).
    pub deadline_ms: u64,
    /// The incumbent's drain timeout, milliseconds.
    pub drain_timeout_ms: u64,
}

/// What an upgrade does, as [`PlanReport`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanAction {
    /// Replace the serving generation with one running the target.
    Upgrade,
    /// Nobody serves now (a restart is pending): start the target.
    Start,
    /// Nothing: the serving generation already runs the target build.
    None,
}

impl PlanReport {
    /// Whether carrying it out changes anything.
    pub fn changes(&self) -> bool {
        self.action != PlanAction::None
    }

    /// One line for a human.
    pub fn line(&self) -> String {
        let short = |sha256: &str| sha256[..sha256.len().min(12)].to_owned();
        let current = self.current.as_ref().map_or_else(
            || "an unreadable binary".to_owned(),
            |c| format!("{} (sha256 {})", c.path.display(), short(&c.sha256)),
        );
        let target = format!(
            "{} (sha256 {}{})",
            self.target.path.display(),
            short(&self.target.sha256),
            if self.sha256_verified {
                ", as expected"
            } else {
                ""
            }
        );
        let pid = self
            .pid
            .map_or_else(|| "-".to_owned(), |pid| pid.to_string());
        let prefix = if self.check { "check: " } else { "" };
        match self.action {
            PlanAction::None => format!(
                "{prefix}unchanged: generation {} (pid {pid}) already runs {current}",
                self.generation
            ),
            PlanAction::Upgrade if self.check => format!(
                "check: would replace generation {} (pid {pid}, {current}) with {target}; \
                 deadline {}",
                self.generation,
                handoff::timeouts::format_duration(Duration::from_millis(self.deadline_ms))
            ),
            PlanAction::Start if self.check => {
                format!("check: nobody serves now; would start {target}")
            }
            PlanAction::Upgrade | PlanAction::Start => {
                format!("{prefix}would upgrade to {target}")
            }
        }
    }
}

/// `status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StatusReport {
    /// The supervisor's pid.
    pub supervisor_pid: u32,
    /// `starting`, `serving`, `handing_off` or `stopping`.
    pub state: SupervisorState,
    /// The serving generation's number (0 when none).
    pub generation: u64,
    /// The serving generation's pid.
    pub child_pid: Option<u32>,
    /// The serving generation's binary.
    pub binary: PathBuf,
    /// The sha256 of the image the serving generation runs
    /// (`/proc/PID/exe`), when readable.
    pub binary_sha256: Option<String>,
    /// `exclusive` or `overlap`.
    pub mode: String,
    /// The listeners.
    pub listeners: Vec<ListenerReport>,
    /// Milliseconds since the supervisor started.
    pub uptime_ms: u64,
    /// The last handoff, cold starts included.
    pub last_handoff: Option<HandoffReport>,
    /// Old generations still being retired.
    pub retiring: Vec<u32>,
    /// The same, with each one's retirement state and whether it is in
    /// probation.
    #[serde(default)]
    pub retirees: Vec<handoff::supervisor::RetireeStatus>,
    /// How long the serving generation has served (since its commit or its
    /// resumption): no restart and no rollback in that time.
    #[serde(default)]
    pub serving_for_ms: Option<u64>,
    /// The last automatic rollback during a probation since the supervisor
    /// started (null if none).
    pub last_probation_rollback: Option<Box<ProbationRollback>>,
    /// The fd store (a foreign daemon's `FDSTORE=1`).
    #[serde(default)]
    pub fd_store: FdStoreReport,
    /// The item store (a library daemon's named fds and blobs), by name.
    #[serde(default)]
    pub items: Vec<handoff::supervisor::ItemReport>,
}

/// The fd store in `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FdStoreReport {
    /// Its bound (`fd_store_max`; 0: off).
    pub max: usize,
    /// What it holds: `{name, kind, count}` per name and kind, in the
    /// order stored; `kind` is `tcp`, `udp`, `unix`, `memfd`, `pipe` or
    /// `other`.
    pub entries: Vec<StoredGroup>,
}

impl FdStoreReport {
    /// The fds it holds.
    pub fn count(&self) -> usize {
        self.entries.iter().map(|group| group.count).sum()
    }

    /// `2 of 16: counter (memfd), peer (unix) x2`; `None` when off and
    /// empty.
    pub fn line(&self) -> Option<String> {
        if self.max == 0 && self.entries.is_empty() {
            return None;
        }
        let held: Vec<String> = self
            .entries
            .iter()
            .map(|group| {
                let times = if group.count > 1 {
                    format!(" x{}", group.count)
                } else {
                    String::new()
                };
                format!("{} ({}){times}", group.name, group.kind.as_str())
            })
            .collect();
        let held = if held.is_empty() {
            "empty".to_owned()
        } else {
            held.join(", ")
        };
        Some(format!("{} of {}: {held}", self.count(), self.max))
    }
}

/// `state (blob kv v3, 300 B, from generation 4)` or `cache (fd, from
/// generation 2)`.
fn item_text(item: &handoff::supervisor::ItemReport) -> String {
    let what = match &item.blob {
        Some(blob) => format!("blob {} v{}, {} B", blob.schema, blob.version, blob.len),
        None => "fd".to_owned(),
    };
    format!("{} ({what}, from generation {})", item.name, item.writer)
}

/// A listener in `status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ListenerReport {
    /// Its name.
    pub name: String,
    /// Its address.
    pub address: String,
}

impl StatusReport {
    /// The report of a library status; `binary` and its hash are supplied
    /// by the caller, which knows which path a pinned upgrade ran.
    pub fn new(status: Status, binary: PathBuf, binary_sha256: Option<String>) -> StatusReport {
        StatusReport {
            supervisor_pid: status.supervisor_pid,
            state: status.state,
            generation: status.generation,
            child_pid: status.child_pid,
            binary,
            binary_sha256,
            mode: match status.mode {
                Mode::Exclusive => "exclusive",
                Mode::Overlap => "overlap",
            }
            .to_owned(),
            listeners: status
                .listeners
                .into_iter()
                .map(|(name, address)| ListenerReport { name, address })
                .collect(),
            uptime_ms: u64::try_from(status.uptime.as_millis()).unwrap_or(u64::MAX),
            last_handoff: status
                .last_handoff
                .as_ref()
                .map(HandoffReport::from_outcome),
            retiring: status.retiring,
            retirees: status.retirees,
            serving_for_ms: status
                .serving_for
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            last_probation_rollback: status.last_probation_rollback.map(Box::new),
            fd_store: FdStoreReport {
                max: status.fd_store_max,
                entries: status.fd_store,
            },
            items: status.items,
        }
    }

    /// A few readable lines.
    pub fn text(&self) -> String {
        let state = serde_json::to_value(self.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut out = format!(
            "supervisor  pid {}, {state}, up {}\n",
            self.supervisor_pid,
            human(Duration::from_millis(self.uptime_ms))
        );
        match self.child_pid {
            Some(pid) => out.push_str(&format!(
                "generation  {} (pid {pid}), {} mode\n",
                self.generation, self.mode
            )),
            None => out.push_str(&format!("generation  none serving, {} mode\n", self.mode)),
        }
        out.push_str(&format!(
            "binary      {} (sha256 {})\n",
            self.binary.display(),
            self.binary_sha256.as_deref().unwrap_or("unknown")
        ));
        for listener in &self.listeners {
            out.push_str(&format!(
                "listener    {} {}\n",
                listener.name, listener.address
            ));
        }
        if let Some(line) = self.fd_store.line() {
            out.push_str(&format!("fd store    {line}\n"));
        }
        if !self.items.is_empty() {
            let items: Vec<String> = self.items.iter().map(item_text).collect();
            out.push_str(&format!("items       {}\n", items.join(", ")));
        }
        if !self.retiring.is_empty() {
            out.push_str(&format!("retiring    pids {:?}\n", self.retiring));
        }
        if let Some(last) = &self.last_handoff {
            out.push_str(&format!("last        {}\n", last.line()));
        }
        if let Some(undone) = &self.last_probation_rollback {
            out.push_str(&format!(
                "rollback    automatic, in probation: handoff {} undone, pid {} failed ({}), generation {} (pid {}) resumed; {}\n",
                undone.handoff_id,
                undone.failed_pid,
                undone.reason,
                undone.generation,
                undone.pid,
                match &undone.resume_check {
                    ResumeCheck::Unchecked => "unchecked (no probe)".to_owned(),
                    ResumeCheck::Probing => "probing it".to_owned(),
                    ResumeCheck::Passed => "it answers its probe".to_owned(),
                    ResumeCheck::Failed(detail) =>
                        format!("it failed its probe ({detail}) and was killed"),
                }
            ));
        }
        out
    }
}

/// Milliseconds, as the reports write them (to the microsecond).
pub fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}

/// `1h 2m 3s`, `4.2s`.
fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs < 60 {
        return format!("{:.1}s", duration.as_secs_f64());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h {m}m {s}s")
    } else {
        format!("{m}m {s}s")
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn history_times_are_utc_dates() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_700_000_000_000, "2023-11-14T22:13:20.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_709_164_800_123, "2024-02-29T00:00:00.123Z"),
            (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
        ];
        for (unix_ms, expected) in cases {
            assert_eq!(utc(unix_ms), expected, "{unix_ms}");
        }
    }
    use super::*;

    #[test]
    fn requests_have_a_pinned_json_form() {
        let cases = [
            (Request::Status, r#"{"command":"status"}"#),
            (Request::Stop, r#"{"command":"stop"}"#),
            (
                Request::Upgrade {
                    binary: Some("/usr/bin/d".into()),
                    sha256: None,
                    drain_timeout_ms: Some(250),
                    deadline_ms: None,
                    force: false,
                    if_changed: false,
                    check: false,
                },
                r#"{"command":"upgrade","binary":"/usr/bin/d","drain_timeout_ms":250}"#,
            ),
            (
                Request::Upgrade {
                    binary: None,
                    sha256: None,
                    drain_timeout_ms: None,
                    deadline_ms: None,
                    force: true,
                    if_changed: false,
                    check: false,
                },
                r#"{"command":"upgrade","force":true}"#,
            ),
            (
                Request::Upgrade {
                    binary: Some("/usr/bin/d".into()),
                    sha256: Some("ab".repeat(32)),
                    drain_timeout_ms: None,
                    deadline_ms: None,
                    force: false,
                    if_changed: true,
                    check: true,
                },
                concat!(
                    r#"{"command":"upgrade","binary":"/usr/bin/d","sha256":"#,
                    r#""abababababababababababababababababababababababababababababababab","#,
                    r#""if_changed":true,"check":true}"#
                ),
            ),
            (Request::History, r#"{"command":"history"}"#),
            (
                Request::Rollback {
                    drain_timeout_ms: None,
                    deadline_ms: Some(9000),
                    force: false,
                },
                r#"{"command":"rollback","deadline_ms":9000}"#,
            ),
        ];
        for (request, json) in cases {
            assert_eq!(serde_json::to_string(&request).expect("encode"), json);
            assert_eq!(
                serde_json::from_str::<Request>(json).expect("decode"),
                request
            );
        }
        for garbage in [
            "",
            "{}",
            "[]",
            r#"{"command":"reboot"}"#,
            r#"{"command":"upgrade","binray":"/x"}"#,
        ] {
            assert!(
                serde_json::from_str::<Request>(garbage).is_err(),
                "{garbage}"
            );
        }
    }

    #[test]
    fn an_error_response_round_trips() {
        let response = Response::Error {
            kind: ErrorKind::Busy,
            message: "another handoff is in flight".into(),
        };
        let json = serde_json::to_string(&response).expect("encode");
        assert_eq!(
            json,
            r#"{"result":"error","kind":"busy","message":"another handoff is in flight"}"#
        );
        assert!(matches!(
            serde_json::from_str::<Response>(&json).expect("decode"),
            Response::Error {
                kind: ErrorKind::Busy,
                ..
            }
        ));
    }

    #[test]
    fn a_plan_has_a_pinned_json_form() {
        let plan = PlanReport {
            action: PlanAction::None,
            check: false,
            generation: 3,
            pid: Some(42),
            current: Some(BinaryRecord {
                path: "/usr/bin/d".into(),
                sha256: "ab".repeat(32),
            }),
            target: BinaryRecord {
                path: "/usr/bin/d".into(),
                sha256: "ab".repeat(32),
            },
            sha256_verified: true,
            deadline_ms: 300_000,
            drain_timeout_ms: 60_000,
        };
        let json = serde_json::to_string(&Response::Plan(plan.clone())).expect("encode");
        let sha = "ab".repeat(32);
        assert_eq!(
            json,
            format!(
                r#"{{"result":"plan","action":"none","check":false,"generation":3,"pid":42,"current":{{"path":"/usr/bin/d","sha256":"{sha}"}},"target":{{"path":"/usr/bin/d","sha256":"{sha}"}},"sha256_verified":true,"deadline_ms":300000,"drain_timeout_ms":60000}}"#
            )
        );
        match serde_json::from_str::<Response>(&json).expect("decode") {
            Response::Plan(decoded) => assert_eq!(decoded, plan),
            other => panic!("{other:?}"),
        }
        assert!(!plan.changes());
        assert!(plan.line().starts_with("unchanged: generation 3 (pid 42)"));
        let would = PlanReport {
            action: PlanAction::Upgrade,
            check: true,
            ..plan
        };
        assert!(would.changes());
        assert!(
            would
                .line()
                .starts_with("check: would replace generation 3"),
            "{}",
            would.line()
        );
    }

    #[test]
    fn a_history_entry_has_a_pinned_json_form() {
        let entry = HistoryEntry {
            report: HandoffReport {
                serving: true,
                incumbent_stopped: None,
                cancelled: false,
                handoff_id: 2,
                committed: true,
                abort_reason: None,
                old_pid: Some(10),
                new_pid: Some(11),
                generation: 2,
                phases_ms: [("spawn".to_owned(), 0.5)].into_iter().collect(),
                total_ms: 12.0,
            },
            started_unix_ms: 1_700_000_000_000,
            old_binary: None,
            new_binary: Some(BinaryRecord {
                path: "/usr/bin/d".into(),
                sha256: "ab".repeat(32),
            }),
            automatic_rollback: None,
        };
        let json = serde_json::to_string(&Response::History {
            entries: vec![entry.clone()],
        })
        .expect("encode");
        assert_eq!(
            json,
            format!(
                r#"{{"result":"history","entries":[{{"handoff_id":2,"committed":true,"abort_reason":null,"old_pid":10,"new_pid":11,"generation":2,"serving":true,"incumbent_stopped":null,"cancelled":false,"phases_ms":{{"spawn":0.5}},"total_ms":12.0,"started_unix_ms":1700000000000,"old_binary":null,"new_binary":{{"path":"/usr/bin/d","sha256":"{}"}},"automatic_rollback":null}}]}}"#,
                "ab".repeat(32)
            )
        );
        match serde_json::from_str::<Response>(&json).expect("decode") {
            Response::History { entries } => assert_eq!(entries, vec![entry.clone()]),
            other => panic!("{other:?}"),
        }
        // A file written before `serving` and `incumbent_stopped` existed.
        let older = json.replace(r#""serving":true,"incumbent_stopped":null,"#, "");
        match serde_json::from_str::<Response>(&older).expect("decode the older form") {
            Response::History { entries } => assert_eq!(entries, vec![entry]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_fd_store_has_a_pinned_json_form_and_a_line() {
        use handoff::supervisor::StoredKind;
        let store = FdStoreReport {
            max: 16,
            entries: vec![
                StoredGroup {
                    name: "counter".into(),
                    kind: StoredKind::Memfd,
                    count: 1,
                },
                StoredGroup {
                    name: "peer".into(),
                    kind: StoredKind::Unix,
                    count: 2,
                },
            ],
        };
        assert_eq!(
            serde_json::to_string(&store).expect("encode"),
            r#"{"max":16,"entries":[{"name":"counter","kind":"memfd","count":1},{"name":"peer","kind":"unix","count":2}]}"#
        );
        assert_eq!(
            store.line().as_deref(),
            Some("3 of 16: counter (memfd), peer (unix) x2")
        );
        let empty = FdStoreReport {
            max: 16,
            entries: Vec::new(),
        };
        assert_eq!(empty.line().as_deref(), Some("0 of 16: empty"));
        assert_eq!(FdStoreReport::default().line(), None, "off and empty");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(4200)), "4.2s");
        assert_eq!(human(Duration::from_secs(125)), "2m 5s");
        assert_eq!(human(Duration::from_secs(3725)), "1h 2m 5s");
    }
}
