//! A daemon's own hooks misbehaving: a seal that panics, a drain that
//! hangs, a resume that hangs, a successor that panics before Ready, and a
//! build whose seal always fails, upgraded away with `--force`. For each:
//! the upgrade answers within its deadline plus the documented bounds
//! (ARCHITECTURE.md, "Timeouts"), someone serves afterwards, and every
//! acknowledged write is still there.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Start, Supervisor, TempDir, request, script, serving_pid, testd, u64_of};
use crate::load::Load;

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

/// Writes under load: every acknowledged `PUT` is remembered.
struct Writes {
    load: Load,
    acked: Arc<Mutex<Vec<String>>>,
}

impl Writes {
    fn start(addr: std::net::SocketAddr) -> Writes {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let load = Load::start(100, {
            let acked = Arc::clone(&acked);
            Arc::new(move || {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let key = format!("k{n}");
                match request(addr, &format!("PUT {key} v{n}")) {
                    Ok(reply) if reply.starts_with("OK ") => {
                        acked.lock().expect("acked").push(key);
                        Ok(())
                    }
                    Ok(reply) => Err(format!("bad reply {reply:?}")),
                    Err(error) => Err(format!("{:?}: {error}", error.kind())),
                }
            })
        });
        load.wait_answered(20);
        Writes { load, acked }
    }

    /// Stops the load and checks that every acknowledged write reads back;
    /// returns (requests sent, failed).
    fn finish(self, addr: std::net::SocketAddr) -> (u64, u64) {
        let report = self.load.finish();
        let acked = self.acked.lock().expect("acked").clone();
        assert!(!acked.is_empty(), "no write was acknowledged");
        for key in &acked {
            let n = &key[1..];
            assert_eq!(
                request(addr, &format!("GET {key}")).expect("GET"),
                format!("VALUE v{n}"),
                "acknowledged write {key} lost"
            );
        }
        (report.sent, report.failed())
    }
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

#[test]
fn a_seal_hook_that_panics_rolls_back_and_the_incumbent_serves_again() {
    let dir = TempDir::new("seal-panic");
    let data = TempDir::new("seal-panic-data");
    let panicking = build(dir.path(), "panics-in-seal", "--panic-at seal");
    let supervisor = supervise(&panicking, &data, &[]);
    let addr = supervisor.addr();
    let before = serving_pid(addr);
    let writes = Writes::start(addr);

    let (code, report, took) = upgrade(&supervisor, &["--binary", &testd_arg()]);
    assert_eq!(code, Some(1), "{report}");
    let reason = report["abort_reason"].as_str().expect("reason");
    assert!(reason.contains("the seal hook panicked"), "{reason}");
    assert_eq!(report["serving"], true);
    assert!(took < DEADLINE + SLACK, "answered after {took:?}");
    writes.load.wait_answered(20);
    assert_eq!(serving_pid(addr), before, "the incumbent serves again");
    let (sent, failed) = writes.finish(addr);
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    eprintln!("seal panic: rolled back in {took:?}; {sent} requests, 0 failed");
}

#[test]
fn a_drain_hook_that_hangs_is_stopped_and_the_successor_takes_over() {
    let dir = TempDir::new("drain-hang");
    let data = TempDir::new("drain-hang-data");
    let hanging = build(dir.path(), "hangs-in-drain", "--hang-at drain");
    let supervisor = supervise(&hanging, &data, &[]);
    let addr = supervisor.addr();
    let before = serving_pid(addr);
    let writes = Writes::start(addr);

    let (code, report, took) = upgrade(&supervisor, &["--binary", &testd_arg()]);
    assert_eq!(code, Some(0), "{report}");
    let why = report["incumbent_stopped"].as_str().expect("why");
    assert!(why.contains("drain overran"), "{why}");
    // The overrun is noticed at the drain timeout plus one second.
    assert!(
        took < DRAIN + Duration::from_secs(1) + SLACK,
        "answered after {took:?}"
    );
    let after = serving_pid(addr);
    assert_ne!(after, before);
    assert_eq!(u64_of(&report, "new_pid"), u64::from(after));
    writes.load.wait_answered(20);
    // The hung generation accepted connections it never answered before it
    // was killed: those fail (its drain is broken), no acknowledged write
    // is lost.
    let (sent, failed) = writes.finish(addr);
    eprintln!("drain hang: committed in {took:?}; {sent} requests, {failed} failed");
}

#[test]
fn a_seal_hook_that_hangs_is_stopped_and_the_successor_takes_over_from_the_disk() {
    let dir = TempDir::new("seal-hang");
    let data = TempDir::new("seal-hang-data");
    let hanging = build(dir.path(), "hangs-in-seal", "--hang-at seal");
    let supervisor = supervise(&hanging, &data, &[]);
    let addr = supervisor.addr();
    let before = serving_pid(addr);
    let writes = Writes::start(addr);

    let (code, report, took) = upgrade(&supervisor, &["--binary", &testd_arg()]);
    assert_eq!(code, Some(0), "{report}");
    let why = report["incumbent_stopped"].as_str().expect("why");
    assert!(why.contains("seal sent no word"), "{why}");
    // The seal may stay silent for half the time the deadline left it;
    // the successor commits before the deadline.
    assert!(took < DEADLINE + SLACK, "answered after {took:?}");
    let after = serving_pid(addr);
    assert_ne!(after, before);
    assert_eq!(u64_of(&report, "new_pid"), u64::from(after));
    writes.load.wait_answered(20);
    // Drained before its seal hung: nothing was in flight in it, and what
    // waited in the backlog went to the successor, which read every
    // acknowledged write back from the disk.
    let (sent, failed) = writes.finish(addr);
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    eprintln!("seal hang: committed in {took:?}; {sent} requests, 0 failed");
}

#[test]
fn a_resume_hook_that_hangs_is_killed_and_the_restart_policy_starts_the_build_again() {
    let dir = TempDir::new("resume-hang");
    let data = TempDir::new("resume-hang-data");
    let hanging = build(dir.path(), "hangs-in-resume", "--hang-at resume");
    let failing = build(dir.path(), "fails-at-begin", "--fail-at begin");
    let supervisor = supervise(&hanging, &data, &[&failing]);
    let addr = supervisor.addr();
    let before = serving_pid(addr);
    let writes = Writes::start(addr);

    let failing = failing.display().to_string();
    let (code, report, took) = upgrade(&supervisor, &["--binary", &failing]);
    assert_eq!(code, Some(4), "nobody serves: exit 4: {report}");
    assert_eq!(report["committed"], false);
    assert_eq!(
        report["serving"], false,
        "the truth about who serves: {report}"
    );
    assert_eq!(report["changed"], true, "nobody serves any more: {report}");
    assert_eq!(report["failed"], true, "{report}");
    assert!(
        report["msg"]
            .as_str()
            .is_some_and(|msg| msg.contains("nobody serves")),
        "{report}"
    );
    assert!(report["old_pid"].is_null(), "{report}");
    assert!(
        took < DEADLINE + KILL_GRACE + RESUME + SLACK,
        "answered after {took:?}"
    );
    // The restart policy starts the configured build again.
    let status = supervisor.wait_status("a restarted generation", |s| {
        s["state"] == "serving" && s["child_pid"].as_u64() != Some(u64::from(before))
    });
    let recovered = status["generation"].as_u64().expect("generation");
    assert!(recovered >= 3, "{status}");
    writes.load.wait_answered(20);
    let (sent, failed) = writes.finish(addr);
    eprintln!(
        "resume hang: answered in {took:?}, generation {recovered} serves; {sent} requests, {failed} failed"
    );
}

#[test]
fn a_successor_that_panics_before_ready_rolls_back() {
    let dir = TempDir::new("successor-panic");
    let data = TempDir::new("successor-panic-data");
    let panicking = build(dir.path(), "panics-at-begin", "--panic-at begin");
    let supervisor = supervise(&testd(), &data, &[&panicking]);
    let addr = supervisor.addr();
    let before = serving_pid(addr);
    let writes = Writes::start(addr);

    let panicking = panicking.display().to_string();
    let (code, report, took) = upgrade(&supervisor, &["--binary", &panicking]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["serving"], true);
    let reason = report["abort_reason"].as_str().expect("reason");
    assert!(reason.contains("101"), "the panic's exit status: {reason}");
    assert!(took < DEADLINE + SLACK, "answered after {took:?}");
    writes.load.wait_answered(20);
    assert_eq!(serving_pid(addr), before);
    let (sent, failed) = writes.finish(addr);
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    eprintln!("successor panic: rolled back in {took:?}; {sent} requests, 0 failed");
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
    let (sent, failed) = writes.finish(addr);
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
