//! Figures from a run: the verdict ([`Counts::zero_loss_violations`], the
//! one zero-loss predicate, used by the benchmark and the integration
//! tests alike), the JSON report, the human table and the SVG picture.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::client::Failure;
use crate::load::Sample;
use crate::reexec::{ReexecCounts, ReexecPhase};
use crate::run::{Daemon, Observed, SupervisorLog, UpgraderKind};

/// A request counts as "during a handoff" if its intended send time falls
/// in an upgrade's window widened by this much on each side (a request sent
/// just before a drain can still be in flight in it).
pub const WINDOW_MARGIN: Duration = Duration::from_millis(20);

/// Whether a request sent at `at` falls in `(start, end)` widened by
/// [`WINDOW_MARGIN`] on each side.
fn within(at: Duration, (start, end): (Duration, Duration)) -> bool {
    at + WINDOW_MARGIN >= start && at <= end + WINDOW_MARGIN
}

/// The supervisor's own event log, an independent witness of the commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventLog {
    /// There is none to read: the supervisor runs in the benchmark's
    /// process, or the daemon runs alone (the naive control).
    #[default]
    NotKept,
    /// `handoffctl run` was asked to keep one, and it could not be read.
    Unreadable,
    /// What it counted.
    Read(SupervisorLog),
}

/// The exact counts of a run: the loss counts a zero-loss run must have at
/// 0, and what they are compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Upgrades the run asked for.
    pub upgrades_asked: u64,
    /// All requests.
    pub requests: u64,
    /// Failed requests, all classes.
    pub failed: u64,
    /// Refused connects.
    pub refused: u64,
    /// Resets.
    pub reset: u64,
    /// Timeouts.
    pub timeout: u64,
    /// 5xx answers.
    pub http_5xx: u64,
    /// Other failures.
    pub other: u64,
    /// Requests retried after a kept-alive connection closed under them.
    pub retried_idle_close: u64,
    /// Acknowledged writes.
    pub acked_writes: u64,
    /// Acknowledged writes lost.
    pub lost_writes: u64,
    /// Committed handoffs.
    pub handoffs: u64,
    /// Handoffs where `/info` showed a new pid, build and generation.
    pub identity_changes: u64,
    /// Old generations still running at the end.
    pub lingering_generations: u64,
    /// The supervisor's event log.
    pub event_log: EventLog,
    /// Whether the supervisor's event log (when there is one) counts the
    /// same commits as the harness and no rollback; false when
    /// `handoffctl run`'s log could not be read.
    pub witness_agrees: bool,
    /// In a private network namespace, the sum of the kernel's refusal,
    /// reset and drop counters over the run ([`crate::kernel`]); `None`
    /// in a shared namespace, where other traffic counts too.
    pub kernel_trouble: Option<u64>,
    /// Errors of the harness itself (an upgrade call failing, `/info`
    /// unreachable, a generation not running its build).
    pub harness_errors: u64,
    /// Clients that keep their connection alive.
    pub kept_alive_clients: u64,
    /// New TCP connections the kept-alive clients had to open beyond
    /// their first (reported, not a gate).
    pub reconnects: u64,
    /// The supervisor re-execs ([`crate::reexec`]); all zero when none was
    /// asked.
    pub reexec: ReexecCounts,
}

impl Counts {
    /// Why this run is not a zero-loss run: one sentence per count that is
    /// not what it must be; empty when all are. A run asked for
    /// `upgrades_asked` upgrades: every one committed and seen serving its
    /// new build, nothing failed, retried, lost or left running, every
    /// supervisor re-exec asked kept the supervisor and the daemon
    /// ([`ReexecCounts::violations`]), the supervisor's event log (when
    /// kept) and the kernel's counters (when ours alone) agree, and the
    /// harness itself had no error.
    pub fn zero_loss_violations(&self) -> Vec<String> {
        let mut violations = Vec::new();
        if self.requests == 0 {
            violations.push("no request was sent: the load did not run".to_owned());
        }
        if self.failed > 0 {
            violations.push(format!(
                "{} requests failed (refused {}, reset {}, timeout {}, 5xx {}, other {})",
                self.failed, self.refused, self.reset, self.timeout, self.http_5xx, self.other
            ));
        }
        if self.retried_idle_close > 0 {
            violations.push(format!(
                "{} requests were sent on a kept-alive connection the server closed, and retried",
                self.retried_idle_close
            ));
        }
        if self.lost_writes > 0 {
            violations.push(format!(
                "{} of {} acknowledged writes lost or unreadable",
                self.lost_writes, self.acked_writes
            ));
        }
        if self.lingering_generations > 0 {
            violations.push(format!(
                "{} old generations still running at the end",
                self.lingering_generations
            ));
        }
        if self.handoffs != self.upgrades_asked {
            violations.push(format!(
                "{} of {} upgrades committed",
                self.handoffs, self.upgrades_asked
            ));
        }
        if self.identity_changes != self.upgrades_asked {
            violations.push(format!(
                "{} of {} upgrades were seen to put a new process running the new build in place",
                self.identity_changes, self.upgrades_asked
            ));
        }
        match self.event_log {
            EventLog::NotKept => {}
            EventLog::Unreadable => {
                violations.push("handoffctl's event log could not be read".to_owned());
            }
            EventLog::Read(log) => {
                if log.upgrades_committed != self.handoffs {
                    violations.push(format!(
                        "handoffctl's event log counts {} commits, the harness {}",
                        log.upgrades_committed, self.handoffs
                    ));
                }
                if log.rolled_back > 0 {
                    violations.push(format!(
                        "handoffctl's event log counts {} rollbacks",
                        log.rolled_back
                    ));
                }
                if log.reexecs_committed != self.reexec.committed {
                    violations.push(format!(
                        "handoffctl's event log counts {} re-exec commits, the harness {}",
                        log.reexecs_committed, self.reexec.committed
                    ));
                }
            }
        }
        violations.extend(self.reexec.violations());
        if let Some(trouble) = self.kernel_trouble.filter(|&n| n > 0) {
            violations.push(format!(
                "the kernel counted {trouble} refusals, resets or drops"
            ));
        }
        if self.harness_errors > 0 {
            violations.push(format!("{} harness errors", self.harness_errors));
        }
        violations
    }

    /// Why a naive restart (the negative control) does not show the
    /// harness can see losses: empty when the clients saw refused or reset
    /// connections and the kernel, when its counters are ours alone,
    /// counted some too.
    pub fn control_violations(&self) -> Vec<String> {
        let mut violations = Vec::new();
        if self.refused + self.reset == 0 {
            violations.push(
                "a close-and-rebind restart showed no refused or reset connection: the harness is blind"
                    .to_owned(),
            );
        }
        if self.kernel_trouble == Some(0) {
            violations
                .push("the kernel counted no refusal, reset or drop in a naive restart".to_owned());
        }
        violations
    }

    /// Reconnects per committed upgrade, if any committed.
    pub fn reconnects_per_upgrade(&self) -> Option<f64> {
        (self.handoffs > 0).then(|| self.reconnects as f64 / self.handoffs as f64)
    }
}

/// The latency and handoff figures of a run, in milliseconds, each list
/// sorted.
struct Figures {
    steady: Vec<f64>,
    during: Vec<f64>,
    /// During supervisor re-execs (neither steady nor during handoffs).
    during_reexecs: Vec<f64>,
    /// While the benchmark put a fresh build in place, outside handoffs
    /// and re-execs (neither steady nor during handoffs).
    during_deploys: Vec<f64>,
    /// During handoffs, by who answered (when the daemon says its pid).
    by_old: Vec<f64>,
    by_new: Vec<f64>,
    accept_stall: f64,
    totals: Vec<f64>,
    walls: Vec<f64>,
    to_old_exit: Vec<f64>,
    phases: BTreeMap<String, Vec<f64>>,
}

impl Figures {
    /// p99 during handoffs over steady p99.
    fn p99_ratio(&self) -> Option<f64> {
        let steady = percentile(&self.steady, 0.99);
        let during = percentile(&self.during, 0.99);
        (steady > 0.0 && during.is_finite()).then(|| during / steady)
    }
}

impl Observed {
    fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.clients.iter().flat_map(|c| c.samples.iter())
    }

    fn window_of(&self, at: Duration) -> Option<&crate::run::Window> {
        self.windows.iter().find(|w| within(at, (w.start, w.end)))
    }

    /// Each supervisor re-exec, asked to answered, from the load's start.
    fn reexec_spans(&self) -> impl Iterator<Item = (Duration, Duration)> {
        self.reexecs
            .iter()
            .flat_map(|r| &r.windows)
            .map(|w| (w.start, w.end))
    }

    /// Whether `at` falls in a supervisor re-exec's window (widened as a
    /// handoff's).
    fn in_reexec(&self, at: Duration) -> bool {
        self.reexec_spans().any(|span| within(at, span))
    }

    /// Whether `at` falls in a fresh build's deploy (widened as a
    /// handoff's window).
    fn in_deploy(&self, at: Duration) -> bool {
        self.deploys.iter().any(|&span| within(at, span))
    }

    /// The exact counts.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for sample in self.samples() {
            counts.requests += 1;
            counts.retried_idle_close += u64::from(sample.retried);
            let Some(failure) = sample.failure else {
                continue;
            };
            counts.failed += 1;
            match failure {
                Failure::Refused => counts.refused += 1,
                Failure::Reset => counts.reset += 1,
                Failure::Timeout => counts.timeout += 1,
                Failure::Http5xx => counts.http_5xx += 1,
                Failure::Other => counts.other += 1,
            }
        }
        counts.acked_writes = self.clients.iter().map(|c| c.acked.len() as u64).sum();
        counts.lost_writes = self.lost_writes + self.unreadable_writes;
        counts.handoffs = self.windows.iter().filter(|w| w.handoff.committed).count() as u64;
        counts.identity_changes = self.windows.iter().filter(|w| w.identity_changed).count() as u64;
        counts.lingering_generations = self.lingering_generations as u64;
        counts.upgrades_asked = self.config.upgrades_asked() as u64;
        counts.reexec = self
            .reexecs
            .as_ref()
            .map(ReexecPhase::counts)
            .unwrap_or_default();
        counts.event_log = match (self.config.upgrader, self.supervisor_log) {
            (_, Some(log)) => EventLog::Read(log),
            (UpgraderKind::Ctl, None) => EventLog::Unreadable,
            (_, None) => EventLog::NotKept,
        };
        counts.witness_agrees = match counts.event_log {
            EventLog::NotKept => true,
            EventLog::Unreadable => false,
            EventLog::Read(log) => {
                log.upgrades_committed == counts.handoffs
                    && log.rolled_back == 0
                    && log.reexecs_committed == counts.reexec.committed
            }
        };
        counts.harness_errors = self.harness_errors.len() as u64;
        counts.kept_alive_clients = self.clients.iter().filter(|c| c.keep_alive).count() as u64;
        counts.reconnects = self.clients.iter().map(|c| c.reconnects()).sum();
        counts.kernel_trouble = self
            .kernel
            .as_ref()
            .filter(|witness| witness.netns == crate::kernel::Netns::Private)
            .map(|witness| witness.delta.total());
        counts
    }

    /// Why this run fails its verdict: for a supervised run,
    /// [`Counts::zero_loss_violations`]; for the naive control,
    /// [`Counts::control_violations`].
    pub fn violations(&self) -> Vec<String> {
        let counts = self.counts();
        match self.config.upgrader {
            UpgraderKind::NaiveRestart => counts.control_violations(),
            UpgraderKind::Ctl | UpgraderKind::InProcess => counts.zero_loss_violations(),
        }
    }

    /// The sha256 of every build seen serving: the first generation's and
    /// each upgrade's whose new process was checked to run it.
    fn builds_served(&self) -> std::collections::BTreeSet<&str> {
        std::iter::once(self.first_build.sha256.as_str())
            .chain(
                self.windows
                    .iter()
                    .filter(|w| w.identity_changed)
                    .map(|w| w.build.sha256.as_str()),
            )
            .collect()
    }

    fn figures(&self) -> Figures {
        let mut figures = Figures {
            steady: Vec::new(),
            during: Vec::new(),
            during_reexecs: Vec::new(),
            during_deploys: Vec::new(),
            by_old: Vec::new(),
            by_new: Vec::new(),
            accept_stall: 0.0,
            totals: Vec::new(),
            walls: Vec::new(),
            to_old_exit: Vec::new(),
            phases: BTreeMap::new(),
        };
        for sample in self.samples() {
            if sample.failure.is_some() {
                continue;
            }
            let ms = millis(sample.latency);
            if let Some(window) = self.window_of(sample.at) {
                figures.during.push(ms);
                match sample.served_by {
                    Some(pid) if pid == window.old_pid => figures.by_old.push(ms),
                    Some(pid) if Some(pid) == window.handoff.new_pid => figures.by_new.push(ms),
                    _ => {}
                }
            } else if self.in_reexec(sample.at) {
                figures.during_reexecs.push(ms);
            } else if self.in_deploy(sample.at) {
                figures.during_deploys.push(ms);
            } else {
                figures.steady.push(ms);
            }
            if let Some(wait) = sample.accept_wait {
                figures.accept_stall = figures.accept_stall.max(millis(wait));
            }
        }
        for window in self.windows.iter().filter(|w| w.handoff.committed) {
            figures.totals.push(millis(window.handoff.total));
            figures.walls.push(millis(window.handoff.wall));
            if let Some(gone) = window.old_gone {
                figures.to_old_exit.push(millis(gone));
            }
            for (name, duration) in &window.handoff.phases {
                figures
                    .phases
                    .entry(name.clone())
                    .or_default()
                    .push(millis(*duration));
            }
        }
        for values in [
            &mut figures.steady,
            &mut figures.during,
            &mut figures.during_reexecs,
            &mut figures.during_deploys,
            &mut figures.by_old,
            &mut figures.by_new,
            &mut figures.totals,
            &mut figures.walls,
            &mut figures.to_old_exit,
        ]
        .into_iter()
        .chain(figures.phases.values_mut())
        {
            values.sort_by(f64::total_cmp);
        }
        figures
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let counts = self.counts();
        let mut figures = self.figures();
        let config = &self.config;
        json!({
            "mode": config.daemon.name(),
            "daemon": self.daemon_name(),
            "upgrader": format!("{:?}", config.upgrader),
            "builds": config.builds.name(),
            "distinct_builds_served": self.builds_served().len(),
            "clients": config.clients,
            "connections": config.connections.name(),
            "rate_per_s": config.rate,
            "duration_s": round(self.duration.as_secs_f64()),
            "requests": counts.requests,
            "failed": {
                "total": counts.failed,
                "refused": counts.refused,
                "reset": counts.reset,
                "timeout": counts.timeout,
                "http_5xx": counts.http_5xx,
                "other": counts.other,
            },
            "retried_idle_close": counts.retried_idle_close,
            "acked_writes": counts.acked_writes,
            "lost_writes": counts.lost_writes,
            "handoffs": counts.handoffs,
            "upgrades_asked": counts.upgrades_asked,
            "identity_changes": counts.identity_changes,
            "lingering_generations": counts.lingering_generations,
            "reconnects": {
                "total": counts.reconnects,
                "kept_alive_clients": counts.kept_alive_clients,
                "per_upgrade": counts.reconnects_per_upgrade().map(round),
                "per_kept_alive_client_per_upgrade": counts
                    .reconnects_per_upgrade()
                    .filter(|_| counts.kept_alive_clients > 0)
                    .map(|r| round(r / counts.kept_alive_clients as f64)),
            },
            "supervisor_log": self.supervisor_log.map(|log| json!({
                "upgrades_committed": log.upgrades_committed,
                "rolled_back": log.rolled_back,
                "reexecs_committed": log.reexecs_committed,
                "agrees": counts.witness_agrees,
            })),
            "handoff_ms": {
                "total": summary(&mut figures.totals),
                "upgrade_call_wall": summary(&mut figures.walls),
                "phases": figures
                    .phases
                    .iter_mut()
                    .map(|(name, values)| (name.clone(), summary(values)))
                    .collect::<serde_json::Map<_, _>>(),
                "ask_to_old_exit": summary(&mut figures.to_old_exit),
            },
            "max_accept_stall_ms": round(figures.accept_stall),
            "latency_ms": latency_json(&mut figures),
            "supervisor_rss_kib": {
                "before": self.supervisor_rss_kib.0,
                "after": self.supervisor_rss_kib.1,
            },
            "reexecs": self.reexecs.as_ref().map(ReexecPhase::to_json),
            "kernel_tcp_counters": self.kernel.as_ref().map(crate::kernel::Witness::to_json),
            "metrics_scrapes": self.scrapes.as_ref().map(crate::scrape::Scrapes::to_json),
            "harness_errors": self.harness_errors,
            "violations": self.violations(),
        })
    }

    /// What the daemon is, as a person calls it.
    pub fn daemon_name(&self) -> &'static str {
        match (self.config.daemon, self.config.upgrader) {
            (Daemon::Kvd, _) => "kvd",
            (Daemon::Echod, _) => "echod",
            (Daemon::ForeignHttpd, UpgraderKind::NaiveRestart) => {
                "httpd.py (python3, alone: --listen)"
            }
            (Daemon::ForeignHttpd, _) => "httpd.py (python3, --protocol systemd)",
        }
    }

    /// A short table for a person: what ran, the counts that gate, the
    /// headline times, the re-execs (when asked), the reconnects, the
    /// witnesses and the verdict.
    pub fn to_table(&self) -> String {
        let counts = self.counts();
        let figures = self.figures();
        let control = self.config.upgrader == UpgraderKind::NaiveRestart;
        let mut rows = self.count_rows(&counts);
        rows.extend(self.time_rows(&counts, &figures));
        if let Some(reexecs) = &self.reexecs {
            rows.extend(reexecs.rows());
            rows.push((
                "p99 during re-execs",
                format!(
                    "{} ms ({} requests; steady {} ms)",
                    ms(&figures.during_reexecs, 0.99),
                    figures.during_reexecs.len(),
                    ms(&figures.steady, 0.99)
                ),
            ));
        }
        rows.extend(self.witness_rows(&counts));
        let violations = self.violations();
        let verdict = match (control, violations.is_empty()) {
            (false, true) => "zero loss".to_owned(),
            (true, true) => "the harness sees a naive restart's losses".to_owned(),
            (false, false) => format!("LOSS: {}", violations.join("; ")),
            (true, false) => format!("BLIND: {}", violations.join("; ")),
        };
        rows.push(("verdict", verdict));
        for error in &self.harness_errors {
            rows.push(("harness error", error.clone()));
        }
        let mut table = String::new();
        for (name, value) in rows {
            let _ = writeln!(table, "  {name:<28} {value}");
        }
        table
    }

    /// The counts that gate, as table rows.
    fn count_rows(&self, counts: &Counts) -> Vec<(&'static str, String)> {
        let config = &self.config;
        let mut rows = vec![
            (
                "upgrades committed",
                format!(
                    "{} of {}; {} seen running their new build; {} distinct builds served",
                    counts.handoffs,
                    counts.upgrades_asked,
                    counts.identity_changes,
                    self.builds_served().len()
                ),
            ),
            (
                "requests",
                format!(
                    "{} in {:.1} s ({} clients, {} connections, {} per s)",
                    counts.requests,
                    self.duration.as_secs_f64(),
                    config.clients,
                    config.connections.name(),
                    config.rate
                ),
            ),
            (
                "failed",
                format!(
                    "{} (refused {}, reset {}, timeout {}, 5xx {}, other {})",
                    counts.failed,
                    counts.refused,
                    counts.reset,
                    counts.timeout,
                    counts.http_5xx,
                    counts.other
                ),
            ),
            (
                "retried after an idle close",
                counts.retried_idle_close.to_string(),
            ),
        ];
        if config.daemon == Daemon::Kvd {
            rows.push((
                "acknowledged writes lost",
                format!("{} of {}", counts.lost_writes, counts.acked_writes),
            ));
        }
        rows.push((
            "old generations left",
            counts.lingering_generations.to_string(),
        ));
        rows
    }

    /// Handoff times, latency and reconnects, as table rows.
    fn time_rows(&self, counts: &Counts, figures: &Figures) -> Vec<(&'static str, String)> {
        let mut rows = Vec::new();
        if self.config.upgrader != UpgraderKind::NaiveRestart {
            rows.push((
                "handoff p50 / p99",
                format!(
                    "{} / {} ms",
                    ms(&figures.totals, 0.5),
                    ms(&figures.totals, 0.99)
                ),
            ));
        }
        rows.push((
            "p99 during handoffs",
            format!(
                "{} ms, steady {} ms: {}",
                ms(&figures.during, 0.99),
                ms(&figures.steady, 0.99),
                figures
                    .p99_ratio()
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.2} times")),
            ),
        ));
        if !self.deploys.is_empty() {
            rows.push((
                "p99 while builds were put in place",
                format!(
                    "{} ms ({} requests; the benchmark's own writing and hashing)",
                    ms(&figures.during_deploys, 0.99),
                    figures.during_deploys.len()
                ),
            ));
        }
        rows.push((
            "reconnects (kept alive)",
            match counts.reconnects_per_upgrade() {
                _ if counts.kept_alive_clients == 0 => "- (no client keeps its connection)".into(),
                Some(per_upgrade) => format!(
                    "{} ({per_upgrade:.1} per upgrade; {:.2} per kept-alive client per upgrade)",
                    counts.reconnects,
                    per_upgrade / counts.kept_alive_clients as f64
                ),
                None => counts.reconnects.to_string(),
            },
        ));
        rows
    }

    /// The supervisor's event log and the kernel's counters, as table
    /// rows.
    fn witness_rows(&self, counts: &Counts) -> Vec<(&'static str, String)> {
        let mut rows = Vec::new();
        match self.supervisor_log {
            Some(log) => rows.push((
                "handoffctl's event log",
                format!(
                    "{} commits, {} rollbacks{}",
                    log.upgrades_committed,
                    log.rolled_back,
                    if self.reexecs.is_some() {
                        format!(", {} re-execs committed", log.reexecs_committed)
                    } else {
                        String::new()
                    }
                ),
            )),
            None if self.config.upgrader == UpgraderKind::Ctl => {
                rows.push(("handoffctl's event log", "unreadable".into()));
            }
            None => {}
        }
        if let Some(scrapes) = &self.scrapes {
            let json = scrapes.to_json();
            rows.push((
                "metrics scrapes",
                format!(
                    "{} ok, {} failed, every {} ms; p50 / max {} / {} ms",
                    scrapes.ok,
                    scrapes.failed,
                    scrapes.every.as_millis(),
                    json["latency_ms"]["p50"],
                    json["latency_ms"]["max"]
                ),
            ));
        }
        rows.push((
            "kernel TCP trouble",
            match (counts.kernel_trouble, &self.kernel) {
                (Some(0), _) => "0 (a network namespace of its own)".into(),
                (Some(n), Some(witness)) => format!(
                    "{n} ({}; a network namespace of its own)",
                    witness.delta.moved()
                ),
                (Some(n), None) => format!("{n} (a network namespace of its own)"),
                (None, Some(witness)) => format!(
                    "{} (shared namespace: other traffic counts too; not a gate)",
                    witness.delta.total()
                ),
                (None, None) => "unread".into(),
            },
        ));
        rows
    }

    /// The table's title line.
    pub fn title(&self) -> String {
        let config = &self.config;
        match config.upgrader {
            UpgraderKind::NaiveRestart => format!(
                "{}: {} naive restarts (SIGTERM, start again, bind again), the negative control",
                self.daemon_name(),
                config.upgrades
            ),
            upgrader => format!(
                "{}, {} mode, upgraded by {}: {} upgrades to {} builds{}",
                self.daemon_name(),
                config.daemon.name(),
                match upgrader {
                    UpgraderKind::InProcess => "the supervisor in this process",
                    _ => "handoffctl",
                },
                config.upgrades,
                config.builds.name(),
                if config.reexecs > 0 {
                    format!(
                        ", then {} re-execs of handoffctl under load and one more upgrade",
                        config.reexecs
                    )
                } else {
                    String::new()
                }
            ),
        }
    }

    /// The spans to shade, with their colour: the handoffs in orange, the
    /// supervisor re-execs in purple.
    fn shaded(&self) -> impl Iterator<Item = (Duration, Duration, &'static str)> {
        let handoffs = self.windows.iter().map(|w| (w.start, w.end, "orange"));
        handoffs.chain(
            self.reexec_spans()
                .map(|(start, end)| (start, end, "purple")),
        )
    }

    /// The answered requests' latencies in ms by `bucket` of intended send
    /// time (its index), each sorted.
    fn latency_buckets(&self, bucket: Duration) -> BTreeMap<u64, Vec<f64>> {
        let mut buckets: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for sample in self.samples().filter(|s| s.failure.is_none()) {
            let index = (sample.at.as_nanos() / bucket.as_nanos()) as u64;
            buckets
                .entry(index)
                .or_default()
                .push(millis(sample.latency));
        }
        for values in buckets.values_mut() {
            values.sort_by(f64::total_cmp);
        }
        buckets
    }

    /// Latency over time (log scale), failures in red, each handoff and
    /// supervisor re-exec window shaded.
    pub fn to_svg(&self, title: &str) -> String {
        const WIDTH: f64 = 1000.0;
        const HEIGHT: f64 = 400.0;
        const LEFT: f64 = 60.0;
        const BOTTOM: f64 = 30.0;
        const TOP: f64 = 30.0;
        const BUCKET: Duration = Duration::from_millis(20);
        let span = self.duration.as_secs_f64().max(0.001);
        let samples: Vec<&Sample> = self.samples().collect();
        let max_ms = samples
            .iter()
            .map(|s| millis(s.latency))
            .fold(1.0f64, f64::max);
        let (low, high) = (0.1f64.log10(), max_ms.max(1.0).log10() + 0.1);
        let x = |at: f64| LEFT + (WIDTH - LEFT - 10.0) * at / span;
        let y = |ms: f64| {
            let v = ms.max(0.1).log10();
            TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - (v - low) / (high - low))
        };
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="18" font-size="13">{title}</text>"#
        );
        for (start, end, fill) in self.shaded() {
            let (x0, x1) = (x(start.as_secs_f64()), x(end.as_secs_f64()));
            let _ = writeln!(
                svg,
                r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="{fill}" fill-opacity="0.3"/>"#,
                (x1 - x0).max(1.0),
                HEIGHT - TOP - BOTTOM
            );
        }
        let grid = std::iter::successors(Some(0.1f64), |decade| Some(decade * 10.0))
            .take_while(|decade| decade.log10() <= high);
        for decade in grid {
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="5" y="{:.1}">{decade} ms</text>"##,
                WIDTH - 10.0,
                y(decade) + 4.0,
                y = y(decade)
            );
        }
        let buckets = self.latency_buckets(BUCKET);
        for (stroke, pick) in [("#1f77b4", 0.5), ("#d62728", 1.0)] {
            let points: Vec<String> = buckets
                .iter()
                .map(|(index, values)| {
                    let at = (*index as f64 + 0.5) * BUCKET.as_secs_f64();
                    format!("{:.1},{:.1}", x(at), y(percentile(values, pick)))
                })
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{stroke}" stroke-width="1" points="{}"/>"#,
                points.join(" ")
            );
        }
        for sample in samples.iter().filter(|s| s.failure.is_some()) {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="black"/>"#,
                x(sample.at.as_secs_f64()),
                y(millis(sample.latency))
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{LEFT}" y="{}">time (s, 0 to {span:.1}); blue: p50 per 20 ms, red: max per 20 ms; black dots: failed requests; orange: handoffs; purple: supervisor re-execs</text>"##,
            HEIGHT - 8.0
        );
        svg.push_str("</svg>\n");
        svg
    }
}

/// The latency figures: steady, during handoffs (and by whom answered),
/// during re-execs, and the ratio of the p99s.
fn latency_json(figures: &mut Figures) -> Value {
    let ratio = figures.p99_ratio().map_or(Value::Null, |r| json!(round(r)));
    let (by_old, by_new) = (&mut figures.by_old, &mut figures.by_new);
    let answered_by = (!by_old.is_empty() || !by_new.is_empty()).then(|| {
        json!({
            "old_generation": summary(by_old),
            "new_generation": summary(by_new),
        })
    });
    json!({
        "steady": summary(&mut figures.steady),
        "during_handoffs": summary(&mut figures.during),
        "during_handoffs_answered_by": answered_by,
        "during_reexecs": summary(&mut figures.during_reexecs),
        "during_deploys": summary(&mut figures.during_deploys),
        "p99_ratio_during_to_steady": ratio,
    })
}

pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// `value` to three decimals (a microsecond, for milliseconds).
pub(crate) fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// A percentile of sorted milliseconds for a table: one decimal, `-` for
/// none.
fn ms(values: &[f64], fraction: f64) -> String {
    match percentile(values, fraction) {
        v if v.is_nan() => "-".to_owned(),
        v => format!("{v:.1}"),
    }
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `n`, p50, p99 and max of `values` (sorted here), rounded to the
/// microsecond.
pub(crate) fn summary(values: &mut [f64]) -> Value {
    if values.is_empty() {
        return json!({ "n": 0 });
    }
    values.sort_by(f64::total_cmp);
    json!({
        "n": values.len(),
        "p50": round(percentile(values, 0.5)),
        "p99": round(percentile(values, 0.99)),
        "max": round(percentile(values, 1.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_is_widened_by_the_margin_on_both_sides() {
        let ms = Duration::from_millis;
        let span = (ms(100), ms(110));
        // Sent up to the margin before the start: it can be in flight in it.
        assert!(within(ms(80), span));
        assert!(!within(ms(79), span));
        assert!(within(ms(105), span));
        // Sent up to the margin after the end.
        assert!(within(ms(130), span));
        assert!(!within(ms(131), span));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(percentile(&values, 0.5), 5.0);
        assert_eq!(percentile(&values, 0.99), 10.0);
        assert_eq!(percentile(&values, 1.0), 10.0);
        assert_eq!(percentile(&values, 0.0), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    /// A run of 5 upgrades under `handoffctl` that lost nothing.
    fn clean() -> Counts {
        Counts {
            upgrades_asked: 5,
            requests: 1000,
            acked_writes: 400,
            handoffs: 5,
            identity_changes: 5,
            event_log: EventLog::Read(SupervisorLog {
                upgrades_committed: 5,
                rolled_back: 0,
                ..SupervisorLog::default()
            }),
            witness_agrees: true,
            kernel_trouble: Some(0),
            kept_alive_clients: 16,
            reconnects: 80,
            ..Counts::default()
        }
    }

    #[test]
    fn re_execs_are_judged_with_the_zero_counts() {
        let reexec = ReexecCounts {
            asked: 3,
            committed: 3,
            supervisor_kept: 3,
            daemon_kept: 3,
            upgrade_after: true,
        };
        let logged = EventLog::Read(SupervisorLog {
            upgrades_committed: 5,
            reexecs_committed: 3,
            ..SupervisorLog::default()
        });
        let with_reexecs = Counts {
            reexec,
            event_log: logged,
            ..clean()
        };
        assert_eq!(with_reexecs.zero_loss_violations(), Vec::<String>::new());
        let moved = Counts {
            reexec: ReexecCounts {
                daemon_kept: 2,
                ..reexec
            },
            ..with_reexecs
        };
        let violations = moved.zero_loss_violations();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].contains("same daemon process"),
            "{violations:?}"
        );
        // The log of a supervisor that did not log its re-execs disagrees.
        let violations = Counts { reexec, ..clean() }.zero_loss_violations();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].contains("counts 0 re-exec commits, the harness 3"),
            "{violations:?}"
        );
    }

    #[test]
    fn a_clean_run_has_no_violation_and_each_violation_is_caught() {
        assert_eq!(clean().zero_loss_violations(), Vec::<String>::new());
        // Reconnects are reported, not gated; no kept event log (the
        // in-process supervisor) or a shared namespace is no violation.
        for fine in [
            Counts {
                reconnects: 10_000,
                ..clean()
            },
            Counts {
                event_log: EventLog::NotKept,
                kernel_trouble: None,
                ..clean()
            },
        ] {
            assert_eq!(fine.zero_loss_violations(), Vec::<String>::new());
        }
        let log = |upgrades_committed, rolled_back| {
            EventLog::Read(SupervisorLog {
                upgrades_committed,
                rolled_back,
                ..SupervisorLog::default()
            })
        };
        let cases: Vec<(Counts, &str)> = vec![
            (
                Counts {
                    requests: 0,
                    ..clean()
                },
                "no request",
            ),
            (
                Counts {
                    failed: 1,
                    other: 1,
                    ..clean()
                },
                "1 requests failed",
            ),
            (
                Counts {
                    failed: 1,
                    refused: 1,
                    ..clean()
                },
                "refused 1",
            ),
            (
                Counts {
                    failed: 1,
                    reset: 1,
                    ..clean()
                },
                "reset 1",
            ),
            (
                Counts {
                    failed: 1,
                    timeout: 1,
                    ..clean()
                },
                "timeout 1",
            ),
            (
                Counts {
                    failed: 1,
                    http_5xx: 1,
                    ..clean()
                },
                "5xx 1",
            ),
            (
                Counts {
                    retried_idle_close: 2,
                    ..clean()
                },
                "2 requests were sent",
            ),
            (
                Counts {
                    lost_writes: 3,
                    ..clean()
                },
                "3 of 400 acknowledged writes",
            ),
            (
                Counts {
                    lingering_generations: 1,
                    ..clean()
                },
                "1 old generations",
            ),
            (
                Counts {
                    handoffs: 4,
                    event_log: log(4, 0),
                    ..clean()
                },
                "4 of 5 upgrades committed",
            ),
            (
                Counts {
                    identity_changes: 4,
                    ..clean()
                },
                "4 of 5 upgrades were seen",
            ),
            (
                Counts {
                    event_log: EventLog::Unreadable,
                    ..clean()
                },
                "could not be read",
            ),
            (
                Counts {
                    event_log: log(4, 0),
                    ..clean()
                },
                "counts 4 commits, the harness 5",
            ),
            (
                Counts {
                    event_log: log(5, 1),
                    ..clean()
                },
                "1 rollbacks",
            ),
            (
                Counts {
                    kernel_trouble: Some(2),
                    ..clean()
                },
                "the kernel counted 2",
            ),
            (
                Counts {
                    harness_errors: 1,
                    ..clean()
                },
                "1 harness errors",
            ),
        ];
        for (counts, expected) in cases {
            let violations = counts.zero_loss_violations();
            assert_eq!(violations.len(), 1, "{counts:?}: {violations:?}");
            assert!(
                violations[0].contains(expected),
                "{violations:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn the_control_must_see_losses() {
        let blind = Counts {
            kernel_trouble: None,
            ..clean()
        };
        assert_eq!(blind.control_violations().len(), 1, "clients saw nothing");
        let seen = Counts {
            refused: 3,
            failed: 3,
            ..blind
        };
        assert_eq!(seen.control_violations(), Vec::<String>::new());
        let kernel_blind = Counts {
            kernel_trouble: Some(0),
            ..seen
        };
        let violations = kernel_blind.control_violations();
        assert!(
            violations.len() == 1 && violations[0].contains("kernel"),
            "{violations:?}"
        );
    }

    #[test]
    fn summaries_sort_first() {
        let mut values = vec![3.0, 1.0, 2.0];
        let figures = summary(&mut values);
        assert_eq!(figures["n"], 3);
        assert_eq!(figures["p50"], 2.0);
        assert_eq!(figures["max"], 3.0);
        assert_eq!(summary(&mut []), json!({ "n": 0 }));
    }
}
