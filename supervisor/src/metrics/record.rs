//! The counters, sans I/O: supervisor events in, numbers out. No clock is
//! read here (the caller passes the time) and nothing is written anywhere;
//! [`Counters`] is plain data that serializes, so a supervisor that
//! re-executes itself carries it across the exec (`to_state`, `from_state`
//! in `mod.rs`).
//!
//! Label values are small closed sets ([`UpgradeOutcome`], [`Reason`],
//! [`RestartCause`]): an abort's free text never becomes a label, or every
//! distinct message would be a new time series.

use std::collections::BTreeMap;
use std::time::Duration;

use handoff::supervisor::{ExitStatus, Outcome, ResumeCheck, SupervisorEvent};
use handoff::wire::AbortReason;

/// The upper bounds of the duration histograms' buckets, in seconds: an
/// idle handoff takes milliseconds, a drain up to its timeout (60 s by
/// default), a handoff up to its deadline (5 min by default).
pub const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// How an upgrade ended (`outcome` label).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeOutcome {
    /// The new generation serves.
    Committed,
    /// The handoff was rolled back.
    RolledBack,
    /// The successor could not even be spawned: no handoff ran.
    Failed,
}

impl UpgradeOutcome {
    /// Every value, in order.
    pub const ALL: [UpgradeOutcome; 3] = [
        UpgradeOutcome::Committed,
        UpgradeOutcome::RolledBack,
        UpgradeOutcome::Failed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeOutcome::Committed => "committed",
            UpgradeOutcome::RolledBack => "rolled_back",
            UpgradeOutcome::Failed => "failed",
        }
    }
}

/// Why an upgrade did not commit (`reason` label): a small, stable set.
/// Causes an operator handles the same way share a value (a successor that
/// exited and one that closed its control connection are one event seen
/// from two sides, whichever the supervisor noticed first).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// It committed.
    None,
    /// The successor could not be spawned.
    SpawnFailed,
    /// The successor exited, or closed its control connection, before Ready.
    SuccessorExited,
    /// The successor sent nothing for the liveness timeout.
    SuccessorSilent,
    /// The successor reported that it could not start.
    SuccessorFailed,
    /// The successor reported itself unhealthy.
    Unhealthy,
    /// The health gate's probe never passed.
    ProbeFailed,
    /// The successor broke the protocol or shares no version of it.
    Protocol,
    /// The successor's state fingerprint differs from the sealed one.
    StateMismatch,
    /// The incumbent could not seal, broke the protocol or died.
    IncumbentFailed,
    /// The handoff's deadline passed.
    Deadline,
    /// A stop or an operator cancelled it.
    Cancelled,
}

impl Reason {
    /// Every value, in order.
    pub const ALL: [Reason; 12] = [
        Reason::None,
        Reason::SpawnFailed,
        Reason::SuccessorExited,
        Reason::SuccessorSilent,
        Reason::SuccessorFailed,
        Reason::Unhealthy,
        Reason::ProbeFailed,
        Reason::Protocol,
        Reason::StateMismatch,
        Reason::IncumbentFailed,
        Reason::Deadline,
        Reason::Cancelled,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::None => "none",
            Reason::SpawnFailed => "spawn_failed",
            Reason::SuccessorExited => "successor_exited",
            Reason::SuccessorSilent => "successor_silent",
            Reason::SuccessorFailed => "successor_failed",
            Reason::Unhealthy => "unhealthy",
            Reason::ProbeFailed => "probe_failed",
            Reason::Protocol => "protocol",
            Reason::StateMismatch => "state_mismatch",
            Reason::IncumbentFailed => "incumbent_failed",
            Reason::Deadline => "deadline",
            Reason::Cancelled => "cancelled",
        }
    }

    /// The label of an abort (exhaustive: a new abort reason must pick one).
    pub fn of(reason: &AbortReason) -> Reason {
        match reason {
            AbortReason::SuccessorExited { .. } | AbortReason::SuccessorClosed => {
                Reason::SuccessorExited
            }
            AbortReason::SuccessorSilent => Reason::SuccessorSilent,
            AbortReason::SuccessorFailed { .. } => Reason::SuccessorFailed,
            AbortReason::Unhealthy { .. } => Reason::Unhealthy,
            AbortReason::ProbeFailed { .. } => Reason::ProbeFailed,
            AbortReason::SuccessorProtocol { .. } | AbortReason::VersionMismatch { .. } => {
                Reason::Protocol
            }
            AbortReason::FingerprintMismatch { .. } | AbortReason::SchemaRefused { .. } => {
                Reason::StateMismatch
            }
            AbortReason::SealFailed { .. } | AbortReason::IncumbentFailed { .. } => {
                Reason::IncumbentFailed
            }
            AbortReason::Deadline { .. } => Reason::Deadline,
            AbortReason::Cancelled => Reason::Cancelled,
        }
    }

    /// The reasons a `outcome` can come with.
    pub fn of_outcome(outcome: UpgradeOutcome) -> &'static [Reason] {
        match outcome {
            UpgradeOutcome::Committed => &Reason::ALL[..1],
            UpgradeOutcome::Failed => &Reason::ALL[1..2],
            UpgradeOutcome::RolledBack => &Reason::ALL[2..],
        }
    }
}

/// Why a generation was started again outside an upgrade (`cause` label).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RestartCause {
    /// The serving generation exited with a non-zero status.
    Exited,
    /// A signal killed it.
    Signal,
    /// It exited with status 0 (`--restart always`).
    CleanExit,
    /// A generation being started never served (it exited or failed before
    /// Ready), and is tried again.
    StartFailed,
    /// A rolled-back upgrade left nobody serving (the old generation died
    /// or did not resume).
    Rollback,
    /// A generation resumed by an automatic rollback never answered its
    /// check and was killed.
    ResumeFailed,
    /// The reap reported no status.
    Unknown,
}

impl RestartCause {
    /// Every value, in order.
    pub const ALL: [RestartCause; 7] = [
        RestartCause::Exited,
        RestartCause::Signal,
        RestartCause::CleanExit,
        RestartCause::StartFailed,
        RestartCause::Rollback,
        RestartCause::ResumeFailed,
        RestartCause::Unknown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartCause::Exited => "exited",
            RestartCause::Signal => "signal",
            RestartCause::CleanExit => "clean_exit",
            RestartCause::StartFailed => "start_failed",
            RestartCause::Rollback => "rollback",
            RestartCause::ResumeFailed => "resume_failed",
            RestartCause::Unknown => "unknown",
        }
    }

    fn of(status: ExitStatus) -> RestartCause {
        match status {
            ExitStatus::Code(0) => RestartCause::CleanExit,
            ExitStatus::Code(_) => RestartCause::Exited,
            ExitStatus::Signal(_) => RestartCause::Signal,
            ExitStatus::Unknown => RestartCause::Unknown,
        }
    }
}

/// A cumulative histogram over [`BUCKETS`] (counts kept per bucket, summed
/// when written).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Histogram {
    /// Observations per bucket (`BUCKETS.len() + 1`, the last one +Inf).
    pub buckets: Vec<u64>,
    /// The sum of the observations, seconds.
    pub sum: f64,
    /// How many.
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: vec![0; BUCKETS.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    /// Adds one observation.
    pub fn observe(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        let index = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        if let Some(bucket) = self.buckets.get_mut(index) {
            *bucket += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    /// `(upper bound, cumulative count)` per bucket, +Inf last.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let bounds = BUCKETS.iter().copied().chain([f64::INFINITY]);
        bounds.zip(&self.buckets).scan(0, |total, (bound, count)| {
            *total += count;
            Some((bound, *total))
        })
    }

    /// Whether it was made with the same buckets as this build's (a state
    /// carried from another version may not be).
    fn fits(&self) -> bool {
        self.buckets.len() == BUCKETS.len() + 1
    }
}

/// The last upgrade attempt.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LastUpgrade {
    /// Its handoff's id (absent when it could not be spawned).
    pub handoff_id: Option<u64>,
    /// It committed and was not undone by an automatic rollback in its
    /// probation.
    pub success: bool,
    /// When it ended, seconds since the Unix epoch.
    pub at_unix: f64,
}

/// The serving generation and when it became the one serving.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Serving {
    /// Its number.
    pub generation: u64,
    /// Its commit, or its resumption by an automatic rollback, seconds since
    /// the Unix epoch.
    pub since_unix: f64,
}

/// The handoff in flight, as its start announced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InFlight {
    /// Its id.
    pub handoff_id: u64,
    /// Whether an incumbent takes part (an upgrade, not a cold start).
    pub upgrade: bool,
}

/// Everything the metrics count, as one serializable value: what a
/// supervisor re-exec carries across (serde derives; the gauges read from
/// the status and `/proc` are not in it, they are read again).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Upgrades by outcome and reason.
    pub upgrades: BTreeMap<UpgradeOutcome, BTreeMap<Reason, u64>>,
    /// Upgrade durations (request to the end) by outcome.
    pub upgrade_seconds: BTreeMap<UpgradeOutcome, Histogram>,
    /// Upgrade phase durations by phase name.
    pub phase_seconds: BTreeMap<String, Histogram>,
    /// The last upgrade attempt, once there was one.
    pub last_upgrade: Option<LastUpgrade>,
    /// Restarts by cause.
    pub restarts: BTreeMap<RestartCause, u64>,
    /// Restarts that could not spawn (tried again after a backoff).
    pub restart_failures: u64,
    /// Automatic rollbacks during a probation.
    pub probation_rollbacks: u64,
    /// The serving generation, once one served.
    pub serving: Option<Serving>,
    /// The handoff in flight.
    pub in_flight: Option<InFlight>,
    /// Why nobody serves, until a restart starts (the restart's cause).
    pub pending_restart: Option<RestartCause>,
}

impl Counters {
    /// Counts one event that happened at `now_unix` (seconds since the
    /// Unix epoch).
    pub fn on_event(&mut self, event: &SupervisorEvent, now_unix: f64) {
        match event {
            SupervisorEvent::HandoffStarted {
                handoff_id,
                upgrade,
                ..
            } => {
                self.in_flight = Some(InFlight {
                    handoff_id: *handoff_id,
                    upgrade: *upgrade,
                });
                // A cold start after a loss is a restart; the first start
                // follows none.
                if !upgrade && let Some(cause) = self.pending_restart.take() {
                    *self.restarts.entry(cause).or_default() += 1;
                }
            }
            SupervisorEvent::HandoffFinished(outcome) => self.finished(outcome, now_unix),
            SupervisorEvent::GenerationExited {
                status,
                expected: false,
                ..
            } => {
                self.pending_restart
                    .get_or_insert(RestartCause::of(*status));
            }
            SupervisorEvent::RolledBackInProbation(rollback) => {
                self.probation_rollbacks += 1;
                // The old generation serves again: no restart follows.
                self.pending_restart = None;
                self.serving = Some(Serving {
                    generation: rollback.generation,
                    since_unix: now_unix,
                });
                if let Some(last) = &mut self.last_upgrade
                    && last.handoff_id == Some(rollback.handoff_id)
                {
                    last.success = false;
                }
            }
            SupervisorEvent::ResumeChecked {
                check: ResumeCheck::Failed(_),
                ..
            } => {
                self.pending_restart
                    .get_or_insert(RestartCause::ResumeFailed);
            }
            SupervisorEvent::RestartFailed { .. } => self.restart_failures += 1,
            SupervisorEvent::GenerationExited { expected: true, .. }
            | SupervisorEvent::ResumeChecked { .. }
            | SupervisorEvent::Phase { .. }
            | SupervisorEvent::GenerationRetired { .. }
            | SupervisorEvent::Frozen
            | SupervisorEvent::Stopping => {}
        }
    }

    fn finished(&mut self, outcome: &Outcome, now_unix: f64) {
        let handoff_id = outcome.handoff_id();
        let upgrade = match self.in_flight.take() {
            Some(started) if started.handoff_id == handoff_id => started.upgrade,
            // Its start was not seen (a state carried across an exec):
            // an upgrade had a generation serving before.
            _ => match outcome {
                Outcome::Committed { old_pid, .. } => old_pid.is_some(),
                Outcome::RolledBack { .. } => true,
            },
        };
        match outcome {
            Outcome::Committed { generation, .. } => {
                self.pending_restart = None;
                self.serving = Some(Serving {
                    generation: *generation,
                    since_unix: now_unix,
                });
            }
            Outcome::RolledBack { old_pid, .. } => {
                if old_pid.is_none() {
                    // Says more than the exit of a generation that died
                    // during the handoff, seen just before.
                    self.pending_restart = Some(if upgrade {
                        RestartCause::Rollback
                    } else {
                        RestartCause::StartFailed
                    });
                }
            }
        }
        if !upgrade {
            return;
        }
        let (label, reason) = match outcome {
            Outcome::Committed { .. } => (UpgradeOutcome::Committed, Reason::None),
            Outcome::RolledBack { reason, .. } => (UpgradeOutcome::RolledBack, Reason::of(reason)),
        };
        self.count_upgrade(label, reason, Some(handoff_id), now_unix);
        let phases = outcome.phases();
        self.upgrade_seconds
            .entry(label)
            .or_default()
            .observe(phases.total);
        for (name, took) in phases.named() {
            if let Some(took) = took {
                self.phase_seconds
                    .entry(name.to_owned())
                    .or_default()
                    .observe(took);
            }
        }
    }

    /// An upgrade whose successor could not be spawned (no event tells it:
    /// the library answers the request with an error).
    pub fn upgrade_not_started(&mut self, now_unix: f64) {
        self.count_upgrade(UpgradeOutcome::Failed, Reason::SpawnFailed, None, now_unix);
    }

    fn count_upgrade(
        &mut self,
        outcome: UpgradeOutcome,
        reason: Reason,
        handoff_id: Option<u64>,
        now_unix: f64,
    ) {
        *self
            .upgrades
            .entry(outcome)
            .or_default()
            .entry(reason)
            .or_default() += 1;
        self.last_upgrade = Some(LastUpgrade {
            handoff_id,
            success: outcome == UpgradeOutcome::Committed,
            at_unix: now_unix,
        });
    }

    /// A count by outcome and reason (0 when never seen).
    pub fn upgrades(&self, outcome: UpgradeOutcome, reason: Reason) -> u64 {
        self.upgrades
            .get(&outcome)
            .and_then(|reasons| reasons.get(&reason))
            .copied()
            .unwrap_or(0)
    }

    /// Counters carried from another build: histograms with other buckets
    /// are dropped (their counts cannot be re-binned); the number dropped.
    pub fn keep_fitting(&mut self) -> usize {
        let before = self.upgrade_seconds.len() + self.phase_seconds.len();
        self.upgrade_seconds.retain(|_, histogram| histogram.fits());
        self.phase_seconds.retain(|_, histogram| histogram.fits());
        before - self.upgrade_seconds.len() - self.phase_seconds.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff::supervisor::ProbationRollback;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn started(handoff_id: u64, upgrade: bool) -> SupervisorEvent {
        SupervisorEvent::HandoffStarted {
            handoff_id,
            upgrade,
            generation: handoff_id,
            successor_pid: 100 + handoff_id as u32,
            incumbent_pid: upgrade.then_some(99),
            program: "/usr/bin/daemon".into(),
        }
    }

    fn committed(handoff_id: u64, old_pid: Option<u32>) -> SupervisorEvent {
        let phases = handoff::protocol::Phases {
            spawn: Some(ms(1)),
            hello: Some(ms(2)),
            commit: Some(ms(1)),
            total: ms(4),
            ..Default::default()
        };
        SupervisorEvent::HandoffFinished(Box::new(Outcome::Committed {
            handoff_id,
            old_pid,
            new_pid: 100 + handoff_id as u32,
            generation: handoff_id,
            phases,
            incumbent_stopped: None,
        }))
    }

    fn rolled_back(handoff_id: u64, reason: AbortReason, old_pid: Option<u32>) -> SupervisorEvent {
        let phases = handoff::protocol::Phases {
            spawn: Some(ms(1)),
            abort: Some(ms(3)),
            total: ms(2_000),
            ..Default::default()
        };
        SupervisorEvent::HandoffFinished(Box::new(Outcome::RolledBack {
            handoff_id,
            reason,
            old_pid,
            failed_pid: Some(100 + handoff_id as u32),
            generation: 1,
            phases,
        }))
    }

    fn exited(status: ExitStatus) -> SupervisorEvent {
        SupervisorEvent::GenerationExited {
            generation: 1,
            pid: 101,
            status,
            expected: false,
        }
    }

    /// Generation 1's cold start, then an upgrade that commits.
    fn serving_after_one_upgrade() -> Counters {
        let mut counters = Counters::default();
        counters.on_event(&started(1, false), 10.0);
        counters.on_event(&committed(1, None), 11.0);
        counters.on_event(&started(2, true), 20.0);
        counters.on_event(&committed(2, Some(101)), 21.0);
        counters
    }

    #[test]
    fn the_first_start_is_neither_an_upgrade_nor_a_restart() {
        let mut counters = Counters::default();
        counters.on_event(&started(1, false), 10.0);
        counters.on_event(&committed(1, None), 11.0);
        assert!(counters.upgrades.is_empty());
        assert!(counters.restarts.is_empty());
        assert_eq!(counters.last_upgrade, None);
        assert_eq!(
            counters.serving,
            Some(Serving {
                generation: 1,
                since_unix: 11.0
            })
        );
    }

    #[test]
    fn upgrades_are_counted_by_outcome_and_reason_and_timed() {
        let mut counters = serving_after_one_upgrade();
        assert_eq!(
            counters.upgrades(UpgradeOutcome::Committed, Reason::None),
            1
        );
        assert_eq!(counters.last_upgrade.map(|l| l.success), Some(true));
        counters.on_event(&started(3, true), 30.0);
        let exited = AbortReason::SuccessorExited {
            status: "exit status 1".into(),
        };
        counters.on_event(&rolled_back(3, exited, Some(102)), 32.0);
        counters.on_event(&started(4, true), 40.0);
        counters.on_event(
            &rolled_back(4, AbortReason::SuccessorClosed, Some(102)),
            41.0,
        );
        assert_eq!(
            counters.upgrades(UpgradeOutcome::RolledBack, Reason::SuccessorExited),
            2,
            "an exit and a closed connection are one reason"
        );
        let last = counters.last_upgrade.expect("an attempt");
        assert!(!last.success);
        assert_eq!(last.at_unix, 41.0);
        assert_eq!(last.handoff_id, Some(4));
        let total = &counters.upgrade_seconds[&UpgradeOutcome::RolledBack];
        assert_eq!((total.count, total.sum), (2, 4.0));
        let spawn = &counters.phase_seconds["spawn"];
        assert_eq!(
            spawn.count, 3,
            "the committed upgrade's and both rollbacks'"
        );
        assert_eq!(counters.phase_seconds["abort"].count, 2);
        assert!(!counters.phase_seconds.contains_key("drain"));
        assert!(counters.restarts.is_empty(), "the old generation serves");

        // Recomputed on every attempt: a commit sets it back.
        counters.on_event(&started(5, true), 50.0);
        counters.on_event(&committed(5, Some(102)), 51.0);
        assert_eq!(counters.last_upgrade.map(|l| l.success), Some(true));
        counters.upgrade_not_started(60.0);
        assert_eq!(
            counters.upgrades(UpgradeOutcome::Failed, Reason::SpawnFailed),
            1
        );
        assert_eq!(
            counters.last_upgrade,
            Some(LastUpgrade {
                handoff_id: None,
                success: false,
                at_unix: 60.0
            })
        );
    }

    #[test]
    fn a_crash_is_a_restart_with_its_cause_counted_when_the_restart_starts() {
        let mut counters = serving_after_one_upgrade();
        counters.on_event(&exited(ExitStatus::Signal(9)), 30.0);
        assert!(counters.restarts.is_empty(), "not restarted yet");
        counters.on_event(
            &SupervisorEvent::RestartFailed {
                reason: "ENOENT".into(),
            },
            30.1,
        );
        counters.on_event(&started(3, false), 30.5);
        counters.on_event(&committed(3, None), 30.6);
        assert_eq!(counters.restarts[&RestartCause::Signal], 1);
        assert_eq!(counters.restart_failures, 1);
        assert_eq!(
            counters.upgrades(UpgradeOutcome::Committed, Reason::None),
            1,
            "a restart is not an upgrade"
        );
        assert_eq!(counters.serving.map(|s| s.generation), Some(3));

        // A restart whose generation never serves is tried again.
        counters.on_event(&exited(ExitStatus::Code(3)), 40.0);
        counters.on_event(&started(4, false), 40.1);
        let crashed = AbortReason::SuccessorExited {
            status: "exit status 3".into(),
        };
        counters.on_event(&rolled_back(4, crashed, None), 40.2);
        counters.on_event(&started(5, false), 40.5);
        assert_eq!(counters.restarts[&RestartCause::Exited], 1);
        assert_eq!(counters.restarts[&RestartCause::StartFailed], 1);
        assert!(counters.upgrades(UpgradeOutcome::RolledBack, Reason::SuccessorExited) == 0);
    }

    #[test]
    fn an_incumbent_that_dies_during_a_committed_upgrade_leaves_no_restart_behind() {
        let mut counters = serving_after_one_upgrade();
        counters.on_event(&started(3, true), 30.0);
        counters.on_event(&exited(ExitStatus::Signal(9)), 30.1);
        counters.on_event(&committed(3, Some(102)), 30.2);
        // A later crash is counted with its own cause, not the stale one.
        counters.on_event(&exited(ExitStatus::Code(1)), 40.0);
        counters.on_event(&started(4, false), 40.1);
        assert_eq!(
            counters.restarts.iter().collect::<Vec<_>>(),
            [(&RestartCause::Exited, &1)]
        );
    }

    #[test]
    fn an_incumbent_that_dies_during_its_handoff_restarts_as_a_rollback() {
        let mut counters = serving_after_one_upgrade();
        counters.on_event(&started(3, true), 30.0);
        counters.on_event(&exited(ExitStatus::Code(3)), 30.5);
        counters.on_event(&rolled_back(3, AbortReason::SuccessorSilent, None), 31.0);
        counters.on_event(&started(4, false), 31.5);
        assert_eq!(
            counters.restarts.iter().collect::<Vec<_>>(),
            [(&RestartCause::Rollback, &1)]
        );
    }

    #[test]
    fn a_rollback_that_leaves_nobody_serving_is_the_next_restarts_cause() {
        let mut counters = serving_after_one_upgrade();
        counters.on_event(&started(3, true), 30.0);
        counters.on_event(&rolled_back(3, AbortReason::SuccessorSilent, None), 31.0);
        counters.on_event(&started(4, false), 31.5);
        assert_eq!(counters.restarts[&RestartCause::Rollback], 1);
        assert_eq!(
            counters.upgrades(UpgradeOutcome::RolledBack, Reason::SuccessorSilent),
            1
        );
    }

    #[test]
    fn a_probation_rollback_undoes_the_last_success_and_is_no_restart() {
        let mut counters = serving_after_one_upgrade();
        counters.on_event(&exited(ExitStatus::Code(1)), 30.0);
        counters.on_event(
            &SupervisorEvent::RolledBackInProbation(ProbationRollback {
                handoff_id: 2,
                generation: 1,
                pid: 101,
                failed_generation: 2,
                failed_pid: 102,
                reason: "exited (exit status 1)".into(),
                resume_check: ResumeCheck::Unchecked,
            }),
            30.5,
        );
        assert_eq!(counters.probation_rollbacks, 1);
        assert_eq!(counters.last_upgrade.map(|l| l.success), Some(false));
        assert_eq!(
            counters.serving,
            Some(Serving {
                generation: 1,
                since_unix: 30.5
            })
        );
        assert_eq!(counters.pending_restart, None);
        // The resumed generation fails its check and is killed.
        counters.on_event(
            &SupervisorEvent::ResumeChecked {
                generation: 1,
                check: ResumeCheck::Failed("refused".into()),
            },
            40.0,
        );
        counters.on_event(&exited(ExitStatus::Signal(9)), 40.1);
        counters.on_event(&started(3, false), 40.2);
        assert_eq!(counters.restarts[&RestartCause::ResumeFailed], 1);
    }

    #[test]
    fn every_abort_reason_maps_to_a_listed_rollback_reason() {
        let fingerprint = handoff::wire::Fingerprint([0; 32]);
        let version = handoff::wire::VersionRange { min: 1, max: 1 };
        let text = String::new;
        let reasons = [
            AbortReason::SuccessorExited { status: text() },
            AbortReason::SuccessorClosed,
            AbortReason::SuccessorSilent,
            AbortReason::SuccessorProtocol { detail: text() },
            AbortReason::Unhealthy { reason: text() },
            AbortReason::SuccessorFailed { reason: text() },
            AbortReason::FingerprintMismatch {
                expected: fingerprint,
                actual: fingerprint,
            },
            AbortReason::VersionMismatch {
                ours: version,
                theirs: version,
            },
            AbortReason::SealFailed { reason: text() },
            AbortReason::IncumbentFailed { detail: text() },
            AbortReason::Deadline { phase: text() },
            AbortReason::Cancelled,
            AbortReason::ProbeFailed { detail: text() },
        ];
        let allowed = Reason::of_outcome(UpgradeOutcome::RolledBack);
        for reason in &reasons {
            assert!(allowed.contains(&Reason::of(reason)), "{reason:?}");
        }
        let values: std::collections::BTreeSet<_> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(values.len(), Reason::ALL.len(), "distinct label values");
    }

    #[test]
    fn histograms_are_cumulative_and_carry_across_serialization() {
        let mut histogram = Histogram::default();
        histogram.observe(ms(3));
        histogram.observe(ms(3));
        histogram.observe(Duration::from_secs(400));
        let cumulative: Vec<_> = histogram.cumulative().collect();
        assert_eq!(cumulative[1], (0.0025, 0));
        assert_eq!(cumulative[2], (0.005, 2));
        assert_eq!(cumulative[BUCKETS.len() - 1], (300.0, 2));
        assert_eq!(cumulative[BUCKETS.len()], (f64::INFINITY, 3));

        let mut counters = serving_after_one_upgrade();
        counters.on_event(&exited(ExitStatus::Code(1)), 30.0);
        let json = serde_json::to_string(&counters).expect("serialize");
        let mut back: Counters = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, counters);
        assert_eq!(back.keep_fitting(), 0);
        // The restart after the exec is counted with the cause seen before.
        back.on_event(&started(3, false), 31.0);
        assert_eq!(back.restarts[&RestartCause::Exited], 1);
        // Another build's buckets are dropped, not misread.
        if let Some(histogram) = back.phase_seconds.get_mut("spawn") {
            histogram.buckets.push(0);
        }
        assert_eq!(back.keep_fitting(), 1);
        // An older state without some fields still loads.
        let partial: Counters =
            serde_json::from_str(r#"{"probation_rollbacks":2}"#).expect("partial");
        assert_eq!(partial.probation_rollbacks, 2);
    }
}
