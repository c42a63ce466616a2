//! Supervisor re-execs (`--reexecs N`): `handoffctl run` replaces its own
//! image with another build of handoffctl (`handoffctl reexec`), keeping
//! its pid, its generations and their listeners, while the daemon serves
//! on; then the daemon is upgraded once more, by the new image.
//!
//! The builds: two copies of the handoffctl the benchmark uses, written
//! into the run's directory as `handoffctl-a` and `handoffctl-b`, each with
//! a trailer of its own after the ELF image (which the loader ignores), so
//! their sha256 differ from each other and from the original. `handoffctl
//! run` starts from the original with both allowed
//! (`--allow-supervisor-binary`), and the re-execs alternate a, b, a, …:
//! every one changes the image.
//!
//! The verdict ([`ReexecCounts::violations`], part of
//! [`crate::report::Counts::zero_loss_violations`]): every re-exec
//! committed (`reexec --json` exits 0 with `"committed": true`), the
//! supervisor is still the process the benchmark started and runs the
//! target's file (`/proc/PID/exe`), the same daemon process serves with the
//! same generation (`/info`), and the upgrade after the last re-exec
//! committed and was seen serving its build. Timing comes from both sides:
//! the report's own `total_ms` and phases (from the admin request to the
//! new image's answer, the preflight — hashing the target and running its
//! `self-check` — included) and the caller's wall time (`handoffctl reexec`
//! spawned to exited). The supervisor's RSS (`VmRSS`) and open fds are
//! sampled before the first re-exec and after the last.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::report::{millis, percentile, round, summary};
use crate::run::{Config, Identity, SupervisorLog};
use crate::upgrade::{Build, FileId, Handoff, write_build};

/// The phases `reexec --json` reports, in the order they run.
pub const PHASES: [&str; 8] = [
    "preflight",
    "quiesce",
    "freeze",
    "write",
    "exec",
    "restore",
    "readopt",
    "resume",
];

/// Two builds of handoffctl to re-exec into, alternately.
#[derive(Debug, Clone)]
pub struct SupervisorBuilds {
    builds: [Build; 2],
}

impl SupervisorBuilds {
    /// Writes `dir/handoffctl-a` and `dir/handoffctl-b`: `handoffctl`'s
    /// image, each with a trailer of its own.
    pub fn write(handoffctl: &Path, dir: &Path) -> Result<SupervisorBuilds, String> {
        let image =
            std::fs::read(handoffctl).map_err(|e| format!("{}: {e}", handoffctl.display()))?;
        let build = |letter: &str| {
            let trailer = format!("\0handoff-bench: supervisor build {letter}\0");
            write_build(
                &dir.join(format!("handoffctl-{letter}")),
                &[&image, trailer.as_bytes()],
                true,
            )
        };
        Ok(SupervisorBuilds {
            builds: [build("a")?, build("b")?],
        })
    }

    /// Both paths (`--allow-supervisor-binary`).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.builds.iter().map(|build| build.path.clone()).collect()
    }

    /// The build re-exec `round` (1-based) runs: a, b, a, …
    pub fn target(&self, round: usize) -> &Build {
        &self.builds[(round + 1) % 2]
    }
}

/// Whether process `pid` runs the file `image` was written as.
pub fn runs_image(pid: u32, image: &Build) -> bool {
    FileId::of(Path::new(&format!("/proc/{pid}/exe"))) == Some(image.file)
}

/// One `handoffctl reexec --json`, as its caller saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reexecuted {
    /// The exit code: 0 committed, 1 the old image still in charge.
    pub exit_code: Option<i32>,
    /// `"changed"`: there was something to do.
    pub changed: bool,
    /// `"committed"`: the new image is in charge.
    pub committed: bool,
    /// `"reason"`: why not.
    pub reason: Option<String>,
    /// `"pid"`: the supervisor's, the same before and after.
    pub pid: Option<u32>,
    /// `"from"."sha256"`.
    pub from_sha256: Option<String>,
    /// `"to"."sha256"`.
    pub to_sha256: Option<String>,
    /// `"total_ms"`: the supervisor's measure, request to answer.
    pub total: Option<Duration>,
    /// `"phases_ms"`, by name.
    pub phases: BTreeMap<String, Duration>,
    /// The caller's measure: `handoffctl reexec` spawned to exited.
    pub wall: Duration,
}

impl Reexecuted {
    /// Reads `reexec --json`'s object; missing keys stay empty.
    pub fn from_answer(answer: &Value, exit_code: Option<i32>, wall: Duration) -> Reexecuted {
        let duration = |value: &Value| {
            value
                .as_f64()
                .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1e3))
        };
        let text = |value: &Value| value.as_str().map(str::to_owned);
        Reexecuted {
            exit_code,
            changed: answer["changed"].as_bool() == Some(true),
            committed: answer["committed"].as_bool() == Some(true),
            reason: text(&answer["reason"]),
            pid: answer["pid"]
                .as_u64()
                .and_then(|pid| u32::try_from(pid).ok()),
            from_sha256: text(&answer["from"]["sha256"]),
            to_sha256: text(&answer["to"]["sha256"]),
            total: duration(&answer["total_ms"]),
            phases: answer["phases_ms"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(name, ms)| Some((name.clone(), duration(ms)?)))
                .collect(),
            wall,
        }
    }

    /// Exit 0, a change, committed, and from one image to another.
    pub fn committed(&self) -> bool {
        self.exit_code == Some(0)
            && self.changed
            && self.committed
            && self.to_sha256.is_some()
            && self.from_sha256 != self.to_sha256
    }

    /// Why it does not count as committed, for a person.
    pub fn why(&self) -> String {
        match (&self.reason, self.exit_code) {
            (Some(reason), code) => format!("{reason} (exit {code:?})"),
            (None, Some(0)) if !self.changed => "nothing changed".into(),
            (None, Some(0)) if self.from_sha256 == self.to_sha256 => {
                "the same image before and after".into()
            }
            (None, code) => format!("exit {code:?}"),
        }
    }
}

/// A process's footprint: resident set and open fds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footprint {
    /// `VmRSS` from `/proc/PID/status`, KiB.
    pub rss_kib: Option<u64>,
    /// Entries of `/proc/PID/fd`.
    pub fds: Option<u64>,
}

impl Footprint {
    /// Samples process `pid` now.
    pub fn of(pid: u32) -> Footprint {
        Footprint {
            rss_kib: crate::run::rss_kib(pid),
            fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
                .ok()
                .map(|entries| entries.count() as u64),
        }
    }

    fn to_json(self) -> Value {
        json!({ "rss_kib": self.rss_kib, "fds": self.fds })
    }

    fn line(self) -> String {
        let or_dash = |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |v| v.to_string());
        format!("{} KiB, {} fds", or_dash(self.rss_kib), or_dash(self.fds))
    }
}

/// One re-exec as observed from outside.
#[derive(Debug, Clone)]
pub struct ReexecWindow {
    /// From the load's start (an idle run: the run's): asked.
    pub start: Duration,
    /// From the load's start: answered.
    pub end: Duration,
    /// The build it was asked to run.
    pub image: Build,
    /// What `reexec --json` said.
    pub reexec: Reexecuted,
    /// `handoffctl run`'s pid, as the benchmark started it.
    pub supervisor_pid: u32,
    /// After the answer, that process still runs (is not a zombie).
    pub supervisor_running: bool,
    /// After the answer, that process runs the file of `image`.
    pub supervisor_runs_image: bool,
    /// Who served before.
    pub daemon_before: Identity,
    /// Who served after (`None`: nobody answered).
    pub daemon_after: Option<Identity>,
}

impl ReexecWindow {
    /// The report names the supervisor's pid, and that process runs the
    /// new image.
    pub fn supervisor_kept(&self) -> bool {
        self.reexec.pid == Some(self.supervisor_pid)
            && self.supervisor_running
            && self.supervisor_runs_image
    }

    /// What became of the supervisor, for a person: `kept, new image`,
    /// `kept, OLD image`, `pid MISMATCH` or `GONE`.
    pub fn supervisor_fate(&self) -> &'static str {
        match (
            self.supervisor_running,
            self.reexec.pid == Some(self.supervisor_pid),
            self.supervisor_runs_image,
        ) {
            (false, _, _) => "GONE",
            (true, false, _) => "pid MISMATCH in the report",
            (true, true, true) => "kept, new image",
            (true, true, false) => "kept, OLD image",
        }
    }

    /// The same daemon process serves, with the same build and generation.
    pub fn daemon_kept(&self) -> bool {
        self.daemon_after.as_ref() == Some(&self.daemon_before)
    }
}

/// The daemon upgrade after the last re-exec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpgradeAfter {
    /// It committed.
    pub committed: bool,
    /// A new process running its build and a higher generation served.
    pub seen_serving: bool,
    /// The supervisor's measure.
    pub total: Duration,
    /// The caller's.
    pub wall: Duration,
}

impl UpgradeAfter {
    /// From the upgrader's report and the check of who serves after it.
    pub fn of(handoff: &Handoff, seen_serving: bool) -> UpgradeAfter {
        UpgradeAfter {
            committed: handoff.committed,
            seen_serving,
            total: handoff.total,
            wall: handoff.wall,
        }
    }
}

/// The re-execs of one run and the upgrade after them.
#[derive(Debug, Clone)]
pub struct ReexecPhase {
    /// Re-execs asked.
    pub asked: usize,
    /// One per re-exec that answered.
    pub windows: Vec<ReexecWindow>,
    /// The supervisor's footprint before the first re-exec.
    pub before: Footprint,
    /// After the last (once its admin connection had time to close).
    pub after: Footprint,
    /// The daemon upgrade after the last re-exec (`None`: it could not be
    /// asked).
    pub upgrade_after: Option<UpgradeAfter>,
}

/// The exact counts of the re-execs: all must be `asked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReexecCounts {
    /// Re-execs asked (0: none, and nothing to judge).
    pub asked: u64,
    /// Committed ([`Reexecuted::committed`]).
    pub committed: u64,
    /// The supervisor kept its pid and runs the new image.
    pub supervisor_kept: u64,
    /// The same daemon process and generation served after.
    pub daemon_kept: u64,
    /// The upgrade after the last re-exec committed and was seen serving.
    pub upgrade_after: bool,
}

impl ReexecCounts {
    /// Why these re-execs fail: one sentence per count that is not what it
    /// must be; empty when all are (or none was asked).
    pub fn violations(&self) -> Vec<String> {
        let mut violations = Vec::new();
        if self.asked == 0 {
            return violations;
        }
        let mut short = |count: u64, what: &str| {
            if count != self.asked {
                violations.push(format!(
                    "{count} of {} supervisor re-execs {what}",
                    self.asked
                ));
            }
        };
        short(self.committed, "committed");
        short(
            self.supervisor_kept,
            "kept the supervisor's pid with the new image running",
        );
        short(
            self.daemon_kept,
            "left the same daemon process and generation serving",
        );
        if !self.upgrade_after {
            violations.push(
                "the daemon upgrade after the last re-exec did not commit, or its build was not seen serving"
                    .to_owned(),
            );
        }
        violations
    }
}

impl ReexecPhase {
    /// No re-exec done yet; the footprint `before`.
    pub fn new(asked: usize, before: Footprint) -> ReexecPhase {
        ReexecPhase {
            asked,
            windows: Vec::new(),
            before,
            after: Footprint::default(),
            upgrade_after: None,
        }
    }

    /// The exact counts.
    pub fn counts(&self) -> ReexecCounts {
        let count = |judge: fn(&ReexecWindow) -> bool| {
            self.windows.iter().filter(|w| judge(w)).count() as u64
        };
        ReexecCounts {
            asked: self.asked as u64,
            committed: count(|w| w.reexec.committed()),
            supervisor_kept: count(ReexecWindow::supervisor_kept),
            daemon_kept: count(ReexecWindow::daemon_kept),
            upgrade_after: self
                .upgrade_after
                .is_some_and(|u| u.committed && u.seen_serving),
        }
    }

    /// The committed re-execs' times in ms, sorted: the reports' totals,
    /// the callers' wall times, and each phase.
    fn times(&self) -> (Vec<f64>, Vec<f64>, BTreeMap<String, Vec<f64>>) {
        let committed = || self.windows.iter().filter(|w| w.reexec.committed());
        let mut totals: Vec<f64> = committed()
            .filter_map(|w| w.reexec.total.map(millis))
            .collect();
        let mut walls: Vec<f64> = committed().map(|w| millis(w.reexec.wall)).collect();
        let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (name, duration) in committed().flat_map(|w| &w.reexec.phases) {
            phases
                .entry(name.clone())
                .or_default()
                .push(millis(*duration));
        }
        for values in [&mut totals, &mut walls]
            .into_iter()
            .chain(phases.values_mut())
        {
            values.sort_by(f64::total_cmp);
        }
        (totals, walls, phases)
    }

    /// The re-execs as one JSON object.
    pub fn to_json(&self) -> Value {
        let counts = self.counts();
        let (mut totals, mut walls, mut phases) = self.times();
        json!({
            "asked": counts.asked,
            "committed": counts.committed,
            "supervisor_kept": counts.supervisor_kept,
            "daemon_kept": counts.daemon_kept,
            "supervisor_pid": self.windows.first().map(|w| w.supervisor_pid),
            "total_ms": summary(&mut totals),
            "client_wall_ms": summary(&mut walls),
            "phases_ms": phases
                .iter_mut()
                .map(|(name, values)| (name.clone(), summary(values)))
                .collect::<serde_json::Map<_, _>>(),
            "supervisor_footprint": {
                "before_first": self.before.to_json(),
                "after_last": self.after.to_json(),
            },
            "upgrade_after": self.upgrade_after.map(|u| json!({
                "committed": u.committed,
                "seen_serving": u.seen_serving,
                "total_ms": round(millis(u.total)),
                "upgrade_call_wall_ms": round(millis(u.wall)),
            })),
            "not_committed": self
                .windows
                .iter()
                .filter(|w| !w.reexec.committed())
                .map(|w| w.reexec.why())
                .collect::<Vec<_>>(),
            "violations": counts.violations(),
        })
    }

    /// Rows for a person's table: `(name, value)`.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let counts = self.counts();
        let (totals, walls, phases) = self.times();
        let ms = |values: &[f64], fraction: f64| match percentile(values, fraction) {
            v if v.is_nan() => "-".to_owned(),
            v => format!("{v:.1}"),
        };
        let mut phase_line = String::new();
        let ordered = PHASES.iter().map(|name| name.to_string()).chain(
            phases
                .keys()
                .filter(|k| !PHASES.contains(&k.as_str()))
                .cloned(),
        );
        for name in ordered {
            if let Some(values) = phases.get(&name) {
                let _ = write!(phase_line, "{}{name} {}", sep(&phase_line), ms(values, 0.5));
            }
        }
        vec![
            (
                "re-execs committed",
                format!(
                    "{} of {}; supervisor pid kept, new image running: {}; \
                     same daemon pid and generation: {}",
                    counts.committed, counts.asked, counts.supervisor_kept, counts.daemon_kept
                ),
            ),
            (
                "re-exec p50 / p99",
                format!(
                    "{} / {} ms (supervisor's total); {} / {} ms (`handoffctl reexec`, spawn to exit)",
                    ms(&totals, 0.5),
                    ms(&totals, 0.99),
                    ms(&walls, 0.5),
                    ms(&walls, 0.99)
                ),
            ),
            ("re-exec phases p50 ms", phase_line),
            (
                "supervisor footprint",
                format!(
                    "{} before the first re-exec; {} after the last",
                    self.before.line(),
                    self.after.line()
                ),
            ),
            (
                "upgrade after re-execs",
                upgrade_after_line(self.upgrade_after),
            ),
        ]
    }
}

fn sep(line: &str) -> &'static str {
    if line.is_empty() { "" } else { ", " }
}

fn upgrade_after_line(upgrade: Option<UpgradeAfter>) -> String {
    match upgrade {
        None => "NOT ASKED (see the harness errors)".to_owned(),
        Some(u) => format!(
            "{}{}, {:.1} ms (upgrade call {:.1} ms)",
            if u.committed {
                "committed"
            } else {
                "ROLLED BACK"
            },
            if u.seen_serving {
                ""
            } else {
                ", NOT seen serving its build"
            },
            millis(u.total),
            millis(u.wall)
        ),
    }
}

/// Re-execs with no load: what a re-exec costs alone.
#[derive(Debug)]
pub struct IdleReexecs {
    /// The settings (`daemon`, `reexecs`).
    pub config: Config,
    /// The re-execs and the upgrade after them.
    pub phase: ReexecPhase,
    /// Old generations still running at the end.
    pub lingering_generations: usize,
    /// `handoffctl run`'s event log.
    pub supervisor_log: Option<SupervisorLog>,
    /// Harness errors.
    pub harness_errors: Vec<String>,
}

impl IdleReexecs {
    /// Why it fails: the re-execs' counts, the event log (which must count
    /// every re-exec and the upgrade after them), old generations left and
    /// harness errors.
    pub fn violations(&self) -> Vec<String> {
        let counts = self.phase.counts();
        let mut violations = counts.violations();
        match self.supervisor_log {
            None => violations.push("handoffctl's event log could not be read".to_owned()),
            Some(log) if log.reexecs_committed != counts.committed => violations.push(format!(
                "handoffctl's event log counts {} re-exec commits, the harness {}",
                log.reexecs_committed, counts.committed
            )),
            Some(_) => {}
        }
        if self.lingering_generations > 0 {
            violations.push(format!(
                "{} old generations still running at the end",
                self.lingering_generations
            ));
        }
        if !self.harness_errors.is_empty() {
            violations.push(format!("{} harness errors", self.harness_errors.len()));
        }
        violations
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "mode": self.config.daemon.name(),
            "load": "none (idle)",
            "reexecs": self.phase.to_json(),
            "supervisor_log": self.supervisor_log.map(|log| json!({
                "reexecs_committed": log.reexecs_committed,
                "upgrades_committed": log.upgrades_committed,
                "rolled_back": log.rolled_back,
            })),
            "lingering_generations": self.lingering_generations,
            "harness_errors": self.harness_errors,
            "violations": self.violations(),
        })
    }

    /// A title and a short table for a person.
    pub fn to_table(&self) -> String {
        let mut table = format!(
            "{}, {} mode, idle (no load): {} supervisor re-execs, then one upgrade\n",
            match self.config.daemon.target() {
                crate::load::Target::KeyValue => "kvd",
                crate::load::Target::Echo => "echod",
                crate::load::Target::Pid => "httpd.py",
            },
            self.config.daemon.name(),
            self.phase.asked
        );
        for (name, value) in self.phase.rows() {
            let _ = writeln!(table, "  {name:<28} {value}");
        }
        let violations = self.violations();
        let verdict = if violations.is_empty() {
            "every re-exec kept the supervisor and the daemon".to_owned()
        } else {
            format!("FAILED: {}", violations.join("; "))
        };
        let _ = writeln!(table, "  {:<28} {verdict}", "verdict");
        for error in &self.harness_errors {
            let _ = writeln!(table, "  {:<28} {error}", "harness error");
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(committed: bool, from: &str, to: &str) -> Value {
        json!({
            "changed": true,
            "committed": committed,
            "reason": if committed { Value::Null } else { json!("its self-check failed") },
            "pid": 42,
            "from": { "version": "0.1.0", "sha256": from },
            "to": { "version": "0.1.0", "sha256": to },
            "phases_ms": { "preflight": 4.5, "exec": 1.25, "resume": 0.5 },
            "total_ms": 9.0,
        })
    }

    #[test]
    fn the_report_is_read_and_judged() {
        let wall = Duration::from_millis(12);
        let read = Reexecuted::from_answer(&answer(true, "aa", "bb"), Some(0), wall);
        assert!(read.committed(), "{read:?}");
        assert_eq!(read.pid, Some(42));
        assert_eq!(read.total, Some(Duration::from_millis(9)));
        assert_eq!(read.phases["preflight"], Duration::from_micros(4500));
        assert_eq!(read.phases.len(), 3);
        assert_eq!(read.wall, wall);
        let failed = Reexecuted::from_answer(&answer(false, "aa", "bb"), Some(1), wall);
        assert!(!failed.committed());
        assert!(
            failed.why().contains("self-check failed"),
            "{}",
            failed.why()
        );
        let same = Reexecuted::from_answer(&answer(true, "aa", "aa"), Some(0), wall);
        assert!(!same.committed(), "the same image is no re-exec");
        let busy = Reexecuted::from_answer(&answer(true, "aa", "bb"), Some(3), wall);
        assert!(!busy.committed());
    }

    #[test]
    fn every_count_short_of_the_asked_is_a_violation() {
        let clean = ReexecCounts {
            asked: 4,
            committed: 4,
            supervisor_kept: 4,
            daemon_kept: 4,
            upgrade_after: true,
        };
        assert_eq!(clean.violations(), Vec::<String>::new());
        assert_eq!(ReexecCounts::default().violations(), Vec::<String>::new());
        for (counts, expected) in [
            (
                ReexecCounts {
                    committed: 3,
                    ..clean
                },
                "3 of 4 supervisor re-execs committed",
            ),
            (
                ReexecCounts {
                    supervisor_kept: 0,
                    ..clean
                },
                "supervisor's pid",
            ),
            (
                ReexecCounts {
                    daemon_kept: 2,
                    ..clean
                },
                "same daemon process",
            ),
            (
                ReexecCounts {
                    upgrade_after: false,
                    ..clean
                },
                "upgrade after the last",
            ),
        ] {
            let violations = counts.violations();
            assert_eq!(violations.len(), 1, "{violations:?}");
            assert!(violations[0].contains(expected), "{violations:?}");
        }
    }

    #[test]
    fn the_builds_alternate_and_differ_from_the_original() {
        let dir =
            std::env::temp_dir().join(format!("handoff-bench-ctl-builds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let original = dir.join("handoffctl");
        std::fs::write(&original, b"\x7fELF pretend handoffctl").expect("write");
        let out = dir.join("out");
        std::fs::create_dir_all(&out).expect("out");
        let builds = SupervisorBuilds::write(&original, &out).expect("builds");
        let [a, b] = [1, 2].map(|round| builds.target(round).clone());
        assert_eq!(builds.target(3), &a);
        assert_eq!(
            builds.paths(),
            [out.join("handoffctl-a"), out.join("handoffctl-b")]
        );
        let original_sha =
            handoff::os::sha256_hex(&std::fs::File::open(&original).expect("open")).expect("hash");
        assert!(a.sha256 != b.sha256 && a.sha256 != original_sha && b.sha256 != original_sha);
        let bytes = std::fs::read(&b.path).expect("read");
        assert!(bytes.starts_with(b"\x7fELF pretend handoffctl"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn this_process_runs_its_own_image_and_no_copy() {
        let me = FileId::of(Path::new("/proc/self/exe")).expect("stat");
        let build = |file| Build {
            path: PathBuf::from("/proc/self/exe"),
            named: true,
            label: String::new(),
            sha256: String::new(),
            file,
        };
        assert!(runs_image(std::process::id(), &build(me)));
        let other = FileId::of(Path::new("/bin/sh")).expect("stat");
        assert!(!runs_image(std::process::id(), &build(other)));
        let footprint = Footprint::of(std::process::id());
        assert!(footprint.rss_kib.is_some_and(|kib| kib > 0));
        assert!(footprint.fds.is_some_and(|fds| fds >= 3));
    }
}
