//! A daemon's own hooks misbehaving, as a matrix: every hook that panics or
//! hangs, in the incumbent (drain, seal, resume) and in the successor
//! (begin, ready); and a build whose seal always fails, upgraded away with
//! `--force`. For each: the upgrade answers within its deadline plus the
//! documented bounds (ARCHITECTURE.md, "Timeouts"), its answer says who
//! serves, someone serves afterwards, and every acknowledged write is
//! still there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Start, Supervisor, TempDir, script, serving_pid, testd, u64_of};
use crate::load::Writes;

/// The bounds these tests run with: `--deadline`, `--drain-timeout`,
/// `--resume-timeout`; the kill grace is the default (5 s).
const DEADLINE: Duration = Duration::from_secs(5);
const DRAIN: Duration = Duration::from_secs(1);
const RESUME: Duration = Duration::from_secs(2);
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Room for a loaded 2-core machine on top of the bounds.
const SLACK: Duration = Duration::from_secs(5);

/// A build of testd that misbehaves: a script that runs it with `flags`.
fn build(dir: &Path, name: &str, flags: &str) -> PathBuf {
    script(
        dir,
        name,
        &format!("exec {} {flags} \"$@\"", testd().display()),
    )
}

/// A supervisor running `first` on `data`, allowed to upgrade to testd and
/// to `others`.
fn supervise(first: &Path, data: &TempDir, others: &[&Path]) -> Supervisor {
    let mut flags: Vec<String> = [
        "--listen",
        "main=127.0.0.1:0",
        "--deadline",
        "5s",
        "--drain-timeout",
        "1s",
        "--resume-timeout",
        "2s",
        "--allow-binary",
    ]
    .map(String::from)
    .to_vec();
    flags.push(testd().display().to_string());
    for other in others {
        flags.extend(["--allow-binary".to_owned(), other.display().to_string()]);
    }
    Supervisor::start_with(Start {
        flags,
        program: Some(first.to_owned()),
        testd_args: vec!["--data-dir".into(), data.path().display().to_string()],
        ..Start::default()
    })
}

/// `upgrade ARGS --json`, timed: (exit code, report, how long it took).
fn upgrade(supervisor: &Supervisor, args: &[&str]) -> (Option<i32>, Value, Duration) {
    let started = Instant::now();
    let mut all = args.to_vec();
    all.push("--json");
    let ran = supervisor.ctl("upgrade", &all);
    let took = started.elapsed();
    let report: Value =
        serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {ran:?}"));
    // The phases, the request and the spawn included, add up to the total
    // (each is rounded to the microsecond).
    let phases: f64 = report["phases_ms"]
        .as_object()
        .expect("phases_ms")
        .values()
        .filter_map(Value::as_f64)
        .sum();
    let total = report["total_ms"].as_f64().expect("total_ms");
    assert!(
        (total - phases).abs() <= 0.01,
        "total {total} ms, its phases {phases} ms: {report}"
    );
    (ran.code, report, took)
}

fn testd_arg() -> String {
    testd().display().to_string()
}

/// Who serves after a misbehaving hook, as the upgrade's answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Rolled back (exit 1): the incumbent serves again, nothing failed.
    Incumbent,
    /// Committed (exit 0): the incumbent was taken for stuck and killed.
    Successor,
    /// Nobody serves (exit 4): the incumbent could not resume and was
    /// killed; the restart policy starts the build again.
    Restarted,
}

/// One case of the hook matrix.
struct Case {
    /// The incumbent's and the successor's testd flags.
    incumbent: &'static str,
    successor: &'static str,
    after: After,
    /// What the report must say (the abort reason, or why the incumbent
    /// was stopped).
    says: &'static str,
    /// The upgrade answers within this (plus `SLACK`).
    within: Duration,
}

/// Every hook that panics or hangs, in the incumbent (drain, seal,
/// resume) and in the successor (before Ready).
fn hook_matrix() -> Vec<Case> {
    use After::*;
    let case = |incumbent, successor, after, says, within| Case {
        incumbent,
        successor,
        after,
        says,
        within,
    };
    vec![
        case(
            "--panic-at drain",
            "",
            Incumbent,
            "drain hook panicked",
            DEADLINE,
        ),
        case(
            "--hang-at drain",
            "",
            Successor,
            "drain overran",
            DRAIN + Duration::from_secs(1),
        ),
        case(
            "--panic-at seal",
            "",
            Incumbent,
            "seal hook panicked",
            DEADLINE,
        ),
        // A share of the time the deadline left the seal when it began.
        case(
            "--hang-at seal",
            "",
            Successor,
            "seal sent no word",
            DEADLINE / handoff::timeouts::SEAL_SILENCE_SHARE,
        ),
        case(
            "--panic-at resume",
            "--fail-at begin",
            Restarted,
            "successor exited",
            DEADLINE + KILL_GRACE + RESUME,
        ),
        case(
            "--hang-at resume",
            "--fail-at begin",
            Restarted,
            "successor exited",
            DEADLINE + KILL_GRACE + RESUME,
        ),
        case("", "--panic-at begin", Incumbent, "101", DEADLINE),
        case(
            "",
            "--hang-at begin",
            Incumbent,
            "deadline",
            DEADLINE + KILL_GRACE,
        ),
        case("", "--panic-at ready", Incumbent, "101", DEADLINE),
        case(
            "",
            "--hang-at ready",
            Incumbent,
            "deadline",
            DEADLINE + KILL_GRACE,
        ),
    ]
}

/// What the upgrade answered against what `case` expects, and who serves.
fn check_who_serves(
    case: &Case,
    what: &str,
    (code, report): (Option<i32>, &Value),
    supervisor: &Supervisor,
    before: u32,
) {
    let addr = supervisor.addr();
    match case.after {
        After::Incumbent => {
            assert_eq!(
                (code, &report["serving"]),
                (Some(1), &Value::Bool(true)),
                "{what}: {report}"
            );
            assert_eq!(
                serving_pid(addr),
                before,
                "{what}: the incumbent serves again"
            );
        }
        After::Successor => {
            assert_eq!(code, Some(0), "{what}: {report}");
            let after = serving_pid(addr);
            assert_ne!(after, before, "{what}");
            assert_eq!(u64_of(report, "new_pid"), u64::from(after), "{what}");
        }
        After::Restarted => {
            // The truth about who serves: nobody, and the answer is
            // one the fleet tools tell apart.
            assert_eq!(code, Some(4), "{what}: {report}");
            assert_eq!(report["serving"], false, "{what}: {report}");
            assert_eq!(report["changed"], true, "{what}: {report}");
            assert_eq!(report["failed"], true, "{what}: {report}");
            assert!(report["old_pid"].is_null(), "{what}: {report}");
            let msg = report["msg"].as_str().unwrap_or_default();
            assert!(msg.contains("nobody serves"), "{what}: {report}");
            supervisor.wait_status("a restarted generation", |s| {
                s["state"] == "serving" && s["child_pid"].as_u64() != Some(u64::from(before))
            });
        }
    }
}

#[test]
fn every_hook_that_panics_or_hangs_ends_in_bounded_time_with_someone_serving() {
    let mut measured = Vec::new();
    for (index, case) in hook_matrix().into_iter().enumerate() {
        let what = format!(
            "incumbent {:?}, successor {:?}",
            case.incumbent, case.successor
        );
        let dir = TempDir::new(&format!("hooks-{index}"));
        let data = TempDir::new(&format!("hooks-{index}-data"));
        let incumbent = build(dir.path(), "incumbent", case.incumbent);
        let successor = build(dir.path(), "successor", case.successor);
        let supervisor = supervise(&incumbent, &data, &[&successor]);
        let addr = supervisor.addr();
        let before = serving_pid(addr);
        let writes = Writes::start(addr);
        let target = successor.display().to_string();
        let (code, report, took) = upgrade(&supervisor, &["--binary", &target]);
        assert!(
            took < case.within + SLACK,
            "{what}: answered after {took:?}"
        );
        let said = match case.after {
            After::Successor => report["incumbent_stopped"].as_str(),
            _ => report["abort_reason"].as_str(),
        };
        assert!(
            said.is_some_and(|said| said.contains(case.says)),
            "{what}: {report}"
        );
        check_who_serves(&case, &what, (code, &report), &supervisor, before);
        writes.load.wait_answered(20);
        // Every acknowledged write reads back (checked by `finish`).
        let report = writes.finish(addr);
        let (sent, failed) = (report.sent, report.failed());
        // A rollback, and a stuck seal (the incumbent had drained: nothing
        // was in flight in it), fail nothing; a stuck drain or resume
        // kills a process that held accepted connections.
        let promised = case.after == After::Incumbent || case.incumbent == "--hang-at seal";
        if promised {
            assert_eq!(
                failed,
                0,
                "{what}: {}: {:?}",
                report.summary(),
                report.failures
            );
        }
        measured.push(format!(
            "{what}: {:?} in {took:.1?}; {sent} requests, {failed} failed",
            case.after
        ));
    }
    eprintln!("hook matrix:\n  {}", measured.join("\n  "));
}

#[test]
fn force_upgrades_away_from_a_build_whose_seal_always_fails() {
    let dir = TempDir::new("force");
    let data = TempDir::new("force-data");
    let stuck = build(dir.path(), "cannot-seal", "--seal-fail");
    let supervisor = supervise(&stuck, &data, &[]);
    let addr = supervisor.addr();
    let before = serving_pid(addr);
    let writes = Writes::start(addr);

    let (code, report, _) = upgrade(&supervisor, &["--binary", &testd_arg()]);
    assert_eq!(code, Some(1), "without --force it rolls back: {report}");
    assert_eq!(serving_pid(addr), before);

    let (code, report, took) = upgrade(&supervisor, &["--binary", &testd_arg(), "--force"]);
    assert_eq!(code, Some(0), "{report}");
    let why = report["incumbent_stopped"].as_str().expect("why");
    assert!(why.contains("--force") && why.contains("seal"), "{why}");
    assert!(
        took < DEADLINE + KILL_GRACE + SLACK,
        "answered after {took:?}"
    );
    let after = serving_pid(addr);
    assert_ne!(after, before);
    writes.load.wait_answered(20);
    let report = writes.finish(addr);
    let (sent, failed) = (report.sent, report.failed());
    eprintln!("force: committed in {took:?}; {sent} requests, {failed} failed");

    // Overlap mode has nothing to force.
    let overlap = Supervisor::start_with(Start {
        flags: ["--listen", "main=127.0.0.1:0", "--mode", "overlap"]
            .map(String::from)
            .to_vec(),
        ..Start::default()
    });
    let refused = overlap.ctl("upgrade", &["--force"]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.one_error_line().contains("exclusive mode only"),
        "{refused:?}"
    );
}
