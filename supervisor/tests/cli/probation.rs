//! Probation: after an overlap commit the old generation stays drained and
//! idle; if the new one crashes meanwhile, the old one is resumed at once
//! (an automatic rollback); after probation it exits.

use std::sync::Arc;
use std::time::Instant;

use handoff::os::Sig;

use crate::common::{Start, Supervisor, WAIT, alive, serving_pid, u64_of, wait_gone};
use crate::load::Load;

/// Runs `handoffctl upgrade --json`, checks it committed, and returns the
/// new generation's pid.
fn upgraded(supervisor: &Supervisor) -> u32 {
    let (code, report) = crate::foreign::upgrade(supervisor, &[]);
    assert_eq!(code, Some(0), "{report}; log:\n{}", supervisor.log());
    u64_of(&report, "new_pid") as u32
}

fn start(probation: &str) -> Supervisor {
    start_overlap(probation, &[], &[])
}

/// testd in overlap mode with `--probation`, `extra` flags for `run` and
/// `testd_args` for testd.
fn start_overlap(probation: &str, extra: &[&str], testd_args: &[&str]) -> Supervisor {
    let mut flags = vec![
        "--listen",
        "main=127.0.0.1:0",
        "--mode",
        "overlap",
        "--deadline",
        "20s",
        "--drain-timeout",
        "5s",
        "--probation",
        probation,
    ];
    flags.extend_from_slice(extra);
    Supervisor::start_with(Start {
        flags: flags.into_iter().map(String::from).collect(),
        testd_args: testd_args.iter().map(|a| a.to_string()).collect(),
        ..Start::default()
    })
}

#[test]
fn a_crash_in_probation_resumes_the_previous_generation_under_load() {
    let supervisor = start("30s");
    let addr = supervisor.addr();
    let old = serving_pid(addr);
    let load = Load::testd_info(addr, 200);
    load.wait_answered(200);
    let new = upgraded(&supervisor);
    load.wait_answered(200);
    // The old generation is kept, drained and idle.
    let status = supervisor.wait_status("the old generation in probation", |s| {
        s["retiring"]
            .as_array()
            .is_some_and(|r| r.contains(&old.into()))
    });
    assert_eq!(u64_of(&status, "child_pid") as u32, new);
    assert!(alive(old));

    // The new generation crashes: the old one serves again at once.
    let crashed = Instant::now();
    handoff::os::signal(new, Sig::Kill).expect("kill the new generation");
    supervisor.wait_status("the previous generation live again", |s| {
        s["child_pid"] == old
    });
    let rollback_ms = crashed.elapsed().as_secs_f64() * 1e3;
    wait_gone(new);
    assert_eq!(serving_pid(addr), old);
    // Logged by the event thread, after `status` already tells.
    supervisor.wait_log("automatic rollback", 0);
    let ran = supervisor.ctl("history", &["--json"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&ran.stdout).expect("history");
    let undone = &entries.last().expect("the upgrade")["automatic_rollback"];
    assert_eq!(u64_of(undone, "failed_pid") as u32, new, "{entries:?}");
    assert_eq!(u64_of(undone, "resumed_pid") as u32, old, "{entries:?}");
    load.wait_answered(200);
    let report = load.finish();
    eprintln!(
        "probation crash under load: {} (status showed the old generation live {rollback_ms:.1} ms after the SIGKILL)",
        report.summary()
    );
    eprintln!("failures: {:?}", report.failures);
    assert!(report.ok > 500, "{}", report.summary());
    // Only requests the crashed process had accepted can fail (at most
    // one per load worker), never a refused connection: the listener and
    // its queue belong to the supervisor.
    assert!(
        report.failed() <= crate::load::WORKERS as u64,
        "{}",
        report.summary()
    );
    assert!(
        report
            .failures
            .iter()
            .all(|f| !f.contains("ConnectionRefused")),
        "{:?}",
        report.failures
    );
}

#[test]
fn after_probation_the_old_generation_exits() {
    let supervisor = start("300ms");
    let addr = supervisor.addr();
    let old = serving_pid(addr);
    let ran = supervisor.ctl("upgrade", &[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let started = Instant::now();
    wait_gone(old);
    assert!(started.elapsed() < WAIT);
    assert_ne!(serving_pid(addr), old);
}

/// The new generation fails its health probe during probation: it is
/// killed and the previous one resumed (the probe is the test's health
/// endpoint, standing for a private health port, flipped to 503).
#[test]
fn a_failed_probe_in_probation_resumes_the_previous_generation() {
    let health = crate::health::HealthServer::start(200);
    let probe = format!("http://{}/healthz", health.addr);
    let supervisor = start_overlap("30s", &["--probe", &probe, "--probe-timeout", "300ms"], &[]);
    let addr = supervisor.addr();
    let old = serving_pid(addr);
    let load = Load::testd_info(addr, 200);
    load.wait_answered(100);
    let new = upgraded(&supervisor);
    load.wait_answered(100);
    health
        .status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    wait_probe_rollback(&supervisor, old, new);
    assert!(
        supervisor
            .log()
            .contains("failed its health probe during probation"),
        "{}",
        supervisor.log()
    );
    load.wait_answered(100);
    let report = load.finish();
    eprintln!("probation probe failure under load: {}", report.summary());
    eprintln!("failures: {:?}", report.failures);
    assert!(
        report.failed() <= crate::load::WORKERS as u64,
        "{}",
        report.summary()
    );
    assert!(
        report
            .failures
            .iter()
            .all(|f| !f.contains("ConnectionRefused")),
        "{:?}",
        report.failures
    );
}

/// A probe failure that starts inside the probation but takes longer to
/// confirm than the probation has left (probation 1 s, confirmation up to
/// 3 s): the probation is held open while the failure is confirmed, so the
/// new generation is still rolled back instead of the verdict arriving
/// after the previous generation was retired.
#[test]
fn a_probe_failure_confirmed_after_the_probation_would_have_ended_still_rolls_back() {
    let health = crate::health::HealthServer::start(200);
    let probe = format!("http://{}/healthz", health.addr);
    let supervisor = start_overlap("1s", &["--probe", &probe, "--probe-timeout", "3s"], &[]);
    let addr = supervisor.addr();
    let old = serving_pid(addr);
    let new = upgraded(&supervisor);
    // Within the first probation probe interval (500 ms) of the commit,
    // well inside the 1 s probation.
    health
        .status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    let held = supervisor.wait_log("the probation is held open while it is confirmed", 0);
    wait_probe_rollback(&supervisor, old, new);
    assert!(
        !supervisor.log()[..held].contains(&format!("old generation gone generation=1 pid={old}")),
        "{}",
        supervisor.log()
    );
    assert!(alive(old));
    assert_eq!(serving_pid(addr), old);
}

/// Waits until `old` is live again after `new` failed its probation probe,
/// and `new` is gone.
fn wait_probe_rollback(supervisor: &Supervisor, old: u32, new: u32) {
    let status = supervisor.wait_status("the previous generation live again", |s| {
        s["child_pid"] == old
    });
    wait_gone(new);
    assert!(
        status["last_probation_rollback"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("health probe failed")),
        "{status}"
    );
}

/// The foreign daemon under `--probation` with the nginx pair of signals.
fn start_foreign(dir: &crate::common::TempDir, probation: &str, signals: bool) -> Supervisor {
    let mut extra = vec!["--probation", probation];
    if signals {
        extra.extend(["--probation-signal", "WINCH", "--resume-signal", "HUP"]);
    }
    crate::foreign::start(dir, &extra)
}

/// Open-loop `GET /` on fresh connections against the foreign daemon.
fn foreign_load(addr: std::net::SocketAddr, rate: u32) -> Load {
    Load::start(
        rate,
        Arc::new(move || {
            crate::foreign::get(addr, "/").and_then(|body| {
                body.starts_with("pid=")
                    .then_some(())
                    .ok_or_else(|| format!("cut body {body:?}"))
            })
        }),
    )
}

/// Checks the load report after a crash of the new generation at `gone`
/// (the instant its pid was seen gone): a request may fail only if it had
/// reached the crashed process, so every failure was due before `gone`, is
/// a broken connection (never a refusal: the supervisor holds the
/// listener; never a timeout: someone accepts again), and there are at
/// most as many as the load can have in flight.
fn assert_only_the_crashed_process_lost_requests(report: &crate::load::Report, gone: Instant) {
    eprintln!("failures: {:?}", report.failures);
    let after = report.failed_at.iter().filter(|due| **due >= gone).count();
    assert_eq!(
        after, 0,
        "requests sent after the crashed process was gone failed: {:?}",
        report.failures
    );
    for failure in &report.failures {
        // Reset, closed without an answer, or cut after the status line:
        // after the connect succeeded, and a process accepted it.
        let broken = failure.starts_with("read: ")
            || failure.starts_with("write: ")
            || failure == "bad response \"\""
            || failure.starts_with("cut body");
        let timeout = failure.contains("WouldBlock") || failure.contains("TimedOut");
        assert!(
            broken && !timeout,
            "not a connection the crashed process had accepted: {failure}"
        );
    }
    assert!(
        report.failed() <= crate::load::WORKERS as u64,
        "{}",
        report.summary()
    );
}

/// A foreign (Python) successor crashes during probation: the quiesced
/// previous generation gets its resume signal and serves again, the
/// automatic rollback shows in status and history, and under load only
/// requests the crashed process had accepted can fail.
#[test]
fn a_foreign_crash_in_probation_resumes_the_quiesced_generation_under_load() {
    let dir = crate::common::TempDir::new("foreign-probation");
    let supervisor = start_foreign(&dir, "30s", true);
    let addr = supervisor.addr();
    let old = crate::foreign::pid_of(addr);
    let load = foreign_load(addr, 300);
    load.wait_answered(150);
    let (code, report) = crate::foreign::upgrade(&supervisor, &[]);
    assert_eq!(code, Some(0), "{report}; log:\n{}", supervisor.log());
    let new = u64_of(&report, "new_pid") as u32;
    let handoff_id = u64_of(&report, "handoff_id");
    // The old generation got the quiesce signal: it stops accepting and
    // stays alive; from then on only the new one answers.
    let quiesced = supervisor.wait_log(&format!("httpd {old}: quiesced"), 0);
    assert!(alive(old));
    let status = supervisor.status();
    assert_eq!(u64_of(&status, "child_pid") as u32, new);
    assert!(
        status["retiring"]
            .as_array()
            .is_some_and(|r| r.contains(&old.into())),
        "{status}"
    );
    for _ in 0..20 {
        assert_eq!(
            crate::foreign::pid_of(addr),
            new,
            "the quiesced one accepted"
        );
    }
    load.wait_answered(150);

    let crashed = Instant::now();
    handoff::os::signal(new, Sig::Kill).expect("kill the new generation");
    let status = supervisor.wait_status("the previous generation live again", |s| {
        s["child_pid"] == old
    });
    let rollback_ms = crashed.elapsed().as_secs_f64() * 1e3;
    wait_gone(new);
    let gone = Instant::now();
    supervisor.wait_log(&format!("httpd {old}: accepting"), quiesced);
    assert_eq!(crate::foreign::pid_of(addr), old);
    let undone = &status["last_probation_rollback"];
    assert_eq!(u64_of(undone, "handoff_id"), handoff_id, "{status}");
    assert_eq!(u64_of(undone, "failed_pid") as u32, new, "{status}");
    assert_eq!(u64_of(undone, "pid") as u32, old, "{status}");
    assert!(
        undone["reason"]
            .as_str()
            .is_some_and(|r| r.contains("signal 9")),
        "{status}"
    );
    // No probe configured: the resumption is trusted, and status says so.
    assert_eq!(undone["resume_check"]["state"], "unchecked", "{status}");
    let ran = supervisor.ctl("history", &["--json"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&ran.stdout).expect("history");
    let entry = entries
        .iter()
        .rev()
        .find(|e| e["handoff_id"] == handoff_id)
        .expect("the commit in history");
    assert_eq!(entry["committed"], true);
    assert_eq!(
        u64_of(&entry["automatic_rollback"], "failed_pid") as u32,
        new,
        "{entry}"
    );
    assert_eq!(
        u64_of(&entry["automatic_rollback"], "resumed_pid") as u32,
        old,
        "{entry}"
    );

    load.wait_answered(150);
    let report = load.finish();
    eprintln!(
        "foreign probation crash under load: {} (status showed the old generation live {rollback_ms:.1} ms after the SIGKILL)",
        report.summary()
    );
    assert!(report.ok > 400, "{}", report.summary());
    assert_only_the_crashed_process_lost_requests(&report, gone);
}

/// Without a quiesce signal the previous foreign generation stays a warm
/// standby: it keeps serving beside the new one, and takes over alone when
/// the new one crashes (no signal needed).
#[test]
fn a_foreign_warm_standby_takes_over_when_the_new_generation_crashes() {
    let dir = crate::common::TempDir::new("foreign-standby");
    let supervisor = start_foreign(&dir, "30s", false);
    let addr = supervisor.addr();
    let old = crate::foreign::pid_of(addr);
    let load = foreign_load(addr, 200);
    load.wait_answered(100);
    let (code, report) = crate::foreign::upgrade(&supervisor, &[]);
    assert_eq!(code, Some(0), "{report}; log:\n{}", supervisor.log());
    let new = u64_of(&report, "new_pid") as u32;
    supervisor.wait_status("the old generation as a standby", |s| {
        s["retiring"]
            .as_array()
            .is_some_and(|r| r.contains(&old.into()))
    });
    load.wait_answered(100);
    assert!(alive(old));
    assert!(
        !supervisor.log().contains(&format!("httpd {old}: quiesced")),
        "a standby is not quiesced"
    );
    assert!(
        supervisor.log().contains("a warm standby"),
        "the choice is logged at start: {}",
        supervisor.log()
    );
    handoff::os::signal(new, Sig::Kill).expect("kill the new generation");
    let status = supervisor.wait_status("the standby live", |s| s["child_pid"] == old);
    wait_gone(new);
    let gone = Instant::now();
    assert_eq!(crate::foreign::pid_of(addr), old);
    assert_eq!(
        u64_of(&status["last_probation_rollback"], "failed_pid") as u32,
        new
    );
    load.wait_answered(100);
    let report = load.finish();
    eprintln!(
        "foreign warm standby crash under load: {}",
        report.summary()
    );
    assert_only_the_crashed_process_lost_requests(&report, gone);
}

/// A foreign probation that passes: the quiesced generation stays alive
/// for the whole period, then gets the stop signal and exits.
#[test]
fn after_a_foreign_probation_the_quiesced_generation_exits() {
    let dir = crate::common::TempDir::new("foreign-probation-over");
    let probation = std::time::Duration::from_secs(1);
    let supervisor = start_foreign(&dir, "1s", true);
    let addr = supervisor.addr();
    let old = crate::foreign::pid_of(addr);
    let committed = Instant::now();
    let (code, report) = crate::foreign::upgrade(&supervisor, &[]);
    assert_eq!(code, Some(0), "{report}");
    let new = u64_of(&report, "new_pid") as u32;
    supervisor.wait_log(&format!("httpd {old}: quiesced"), 0);
    wait_gone(old);
    // Not before the probation was over (its timer starts at the commit,
    // after `committed`).
    assert!(
        committed.elapsed() >= probation,
        "exited after {:?}",
        committed.elapsed()
    );
    // The supervisor reaped it (the pid may be gone a moment before).
    supervisor.wait_log(&format!("old generation gone generation=1 pid={old}"), 0);
    let status = supervisor.status();
    assert_eq!(u64_of(&status, "child_pid") as u32, new);
    assert!(status["last_probation_rollback"].is_null(), "{status}");
    assert_eq!(crate::foreign::pid_of(addr), new);
}

#[test]
fn probation_signal_flags_are_checked() {
    let cases: [(&[&str], &str); 9] = [
        // The default stop signal is TERM.
        (
            &[
                "--probation",
                "5s",
                "--probation-signal",
                "WINCH",
                "--resume-signal",
                "TERM",
            ],
            "differ from the stop signal",
        ),
        (
            &[
                "--probation",
                "5s",
                "--stop-signal",
                "QUIT",
                "--probation-signal",
                "QUIT",
                "--resume-signal",
                "HUP",
            ],
            "differ from the stop signal",
        ),
        (
            &["--probation", "5s", "--probation-signal", "WINCH"],
            "--resume-signal",
        ),
        (
            &["--probation", "5s", "--resume-signal", "HUP"],
            "needs --probation-signal",
        ),
        (
            &["--probation-signal", "WINCH", "--resume-signal", "HUP"],
            "--probation DUR",
        ),
        (
            &[
                "--probation",
                "5s",
                "--probation-signal",
                "HUP",
                "--resume-signal",
                "HUP",
            ],
            "different",
        ),
        (
            &[
                "--probation",
                "5s",
                "--probation-signal",
                "BOGUS",
                "--resume-signal",
                "HUP",
            ],
            "BOGUS",
        ),
        (
            &["--protocol", "library", "--probation-signal", "WINCH"],
            "--protocol systemd",
        ),
        // A library daemon in exclusive mode (the default) has nothing to
        // resume after its seal.
        (
            &["--protocol", "library", "--probation", "5s"],
            "needs --mode overlap",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["run"];
        if !flags.contains(&"library") {
            args.extend(["--protocol", "systemd"]);
        }
        args.extend_from_slice(flags);
        args.extend(["--", "/bin/true"]);
        let ran = crate::common::ctl(&args);
        assert_eq!(ran.code, Some(2), "{args:?}: {ran:?}");
        assert!(ran.one_error_line().contains(expected), "{args:?}: {ran:?}");
    }
}

/// The foreign daemon under `--probation` with the nginx signals and an
/// HTTP health probe on its own listener, which after a rollback only the
/// resumed generation serves; `fault` is what generation 1 reads at start
/// (later generations read an empty fault file).
fn start_foreign_probed(dir: &crate::common::TempDir, fault: &str) -> (Supervisor, String) {
    std::fs::write(dir.path().join("fault"), fault).expect("fault file");
    // A port that was free a moment ago: the probe needs the address
    // before the supervisor binds it.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let probe = format!("http://{address}/");
    let supervisor = crate::foreign::start_on(
        dir,
        &address,
        &[
            "--probation",
            "30s",
            "--probation-signal",
            "WINCH",
            "--resume-signal",
            "HUP",
            "--probe",
            &probe,
            "--probe-timeout",
            "1s",
        ],
    );
    std::fs::write(dir.path().join("fault"), "").expect("fault file");
    (supervisor, address)
}

/// Upgrades, waits for the old generation's quiesce, kills the new one;
/// returns (old, new) once the rollback shows in status.
fn crash_in_foreign_probation(supervisor: &Supervisor) -> (u32, u32) {
    let addr = supervisor.addr();
    let old = crate::foreign::pid_of(addr);
    let (code, report) = crate::foreign::upgrade(supervisor, &[]);
    assert_eq!(code, Some(0), "{report}; log:\n{}", supervisor.log());
    let new = u64_of(&report, "new_pid") as u32;
    supervisor.wait_log(&format!("httpd {old}: quiesced"), 0);
    assert_eq!(crate::foreign::pid_of(addr), new);
    handoff::os::signal(new, Sig::Kill).expect("kill the new generation");
    supervisor.wait_status("the automatic rollback", |s| {
        s["last_probation_rollback"]["failed_pid"] == new
    });
    wait_gone(new);
    (old, new)
}

/// After an automatic rollback the supervisor probes the resumed
/// generation: one that answers is kept and the check shows `passed`.
#[test]
fn a_resumed_foreign_generation_that_answers_its_probe_is_kept() {
    let dir = crate::common::TempDir::new("foreign-resume-probed");
    let (supervisor, _) = start_foreign_probed(&dir, "");
    let (old, _) = crash_in_foreign_probation(&supervisor);
    let status = supervisor.wait_status("the resume check passed", |s| {
        s["last_probation_rollback"]["resume_check"]["state"] == "passed"
    });
    assert_eq!(u64_of(&status, "child_pid") as u32, old, "{status}");
    assert_eq!(crate::foreign::pid_of(supervisor.addr()), old);
    assert!(alive(old));
}

/// A foreign daemon that ignores its resume signal stays alive and never
/// accepts again: without a check, connections would wait in the backlog
/// for good. The probe finds no answer, the supervisor kills the resumed
/// generation, and the restart policy starts a fresh one of the same
/// binary; a request sent while nobody accepted waits in the backlog and
/// is answered by it.
#[test]
fn a_resumed_foreign_generation_that_ignores_its_resume_signal_is_replaced() {
    let dir = crate::common::TempDir::new("foreign-resume-ignored");
    let (supervisor, _) = start_foreign_probed(&dir, "ignore-resume");
    let (old, new) = crash_in_foreign_probation(&supervisor);
    let ignored = supervisor.wait_log(&format!("httpd {old}: ignoring the resume signal"), 0);
    // Sent while nobody accepts: the supervisor holds the listener, so the
    // connection waits in the backlog (IO, 10 s, covers the 1 s probe and
    // the restart).
    let addr = supervisor.addr();
    let waiting = std::thread::spawn(move || {
        let sent = Instant::now();
        crate::foreign::get(addr, "/").map(|body| (body, sent.elapsed()))
    });
    let status = supervisor.wait_status("the resume check failed", |s| {
        s["last_probation_rollback"]["resume_check"]["state"] == "failed"
    });
    assert!(
        status["last_probation_rollback"]["resume_check"]["detail"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{status}"
    );
    supervisor.wait_log(
        "the resumed generation does not answer its health probe: killing it",
        ignored,
    );
    wait_gone(old);
    let status = supervisor.wait_status("a fresh generation live", |s| {
        s["child_pid"].as_u64().is_some_and(|pid| {
            let pid = pid as u32;
            pid != old && pid != new
        })
    });
    let fresh = u64_of(&status, "child_pid") as u32;
    let ran = supervisor.ctl("status", &[]);
    assert!(
        ran.stdout.contains("it failed its probe") && ran.stdout.contains("and was killed"),
        "{ran:?}"
    );
    let (answered, waited) = waiting
        .join()
        .expect("thread")
        .expect("the waiting request");
    eprintln!(
        "resume ignored: the request sent while nobody accepted was answered by the fresh generation after {:.0} ms (probe timeout 1 s)",
        waited.as_secs_f64() * 1e3
    );
    assert_eq!(answered, format!("pid={fresh}"));
    assert_eq!(crate::foreign::pid_of(addr), fresh);
}

/// The fixture's own contract, which the foreign probation tests rely on:
/// a quiesce and a resume that are pending together (the new generation
/// died right after the commit, before the old process ran) leave
/// `httpd.py` accepting. Linux hands out the lower signal first (SIGHUP
/// before SIGWINCH); taken one at a time they would end quiesced for good.
#[test]
fn httpd_takes_a_quiesce_and_a_resume_pending_together_as_a_resume() {
    let dir = crate::common::TempDir::new("httpd-pending-signals");
    let supervisor = crate::foreign::start(&dir, &[]);
    let addr = supervisor.addr();
    let pid = crate::foreign::pid_of(addr);
    let from = supervisor.log().len();
    handoff::os::signal(pid, Sig::Stop).expect("SIGSTOP");
    handoff::os::signal(pid, Sig::Winch).expect("SIGWINCH");
    handoff::os::signal(pid, Sig::Hup).expect("SIGHUP");
    handoff::os::signal(pid, Sig::Cont).expect("SIGCONT");
    let after = supervisor.wait_log(&format!("httpd {pid}: accepting"), from);
    assert!(
        !supervisor.log()[from..after].contains("quiesced"),
        "{}",
        supervisor.log()
    );
    assert_eq!(crate::foreign::pid_of(addr), pid);
}

/// v1 quiesced in probation, v2 live, an upgrade to v3 running whose
/// `READY=1` the test holds back (`hold-ready`): v2 is killed meanwhile.
/// Returns (v1, v2) and runs `then` with the upgrade still in flight; the
/// upgrade's exit code and report come back too.
fn live_dies_during_an_upgrade_in_probation(
    dir: &crate::common::TempDir,
    supervisor: &Supervisor,
    upgrade_args: &[&str],
    then: impl FnOnce(),
) -> (u32, u32, Option<i32>, serde_json::Value) {
    let addr = supervisor.addr();
    let v1 = crate::foreign::pid_of(addr);
    let (code, report) = crate::foreign::upgrade(supervisor, &[]);
    assert_eq!(code, Some(0), "{report}");
    let v2 = u64_of(&report, "new_pid") as u32;
    supervisor.wait_log(&format!("httpd {v1}: quiesced"), 0);
    std::fs::write(dir.path().join("fault"), "hold-ready").expect("fault file");
    std::thread::scope(|scope| {
        let upgrading = scope.spawn(|| crate::foreign::upgrade(supervisor, upgrade_args));
        supervisor.wait_log("generation spawned generation=3", 0);
        handoff::os::signal(v2, Sig::Kill).expect("kill v2");
        supervisor.wait_log("the live generation exited during a handoff", 0);
        then();
        let (code, report) = upgrading.join().expect("upgrade thread");
        (v1, v2, code, report)
    })
}

/// The live generation dies while an upgrade runs, with the previous one
/// in probation, and the upgrade commits: the new generation serves, the
/// one in probation is not resumed and no restart follows.
#[test]
fn a_crash_during_an_upgrade_in_probation_is_covered_by_its_commit() {
    let dir = crate::common::TempDir::new("probation-crash-upgrade-commits");
    let supervisor = start_foreign(&dir, "30s", true);
    let (v1, v2, code, report) =
        live_dies_during_an_upgrade_in_probation(&dir, &supervisor, &[], || {
            std::fs::write(dir.path().join("fault"), "").expect("release READY=1");
        });
    assert_eq!(code, Some(0), "{report}; log:\n{}", supervisor.log());
    let v3 = u64_of(&report, "new_pid") as u32;
    assert_eq!(crate::foreign::pid_of(supervisor.addr()), v3);
    let status = supervisor.status();
    assert_eq!(u64_of(&status, "child_pid") as u32, v3, "{status}");
    assert!(status["last_probation_rollback"].is_null(), "{status}");
    let log = supervisor.log();
    assert!(!log.contains("in probation: resuming it"), "{log}");
    assert!(!log.contains("restarting the generation"), "{log}");
    assert!(!log.contains("generation spawned generation=4"), "{log}");
    assert!(!alive(v2));
    assert!(alive(v1), "still in probation behind v3");
}

/// The same, but the upgrade rolls back (its successor never says
/// `READY=1` before the deadline): nobody would serve, and the generation
/// in probation is resumed rather than a restart of the binary that just
/// crashed.
#[test]
fn a_crash_during_an_upgrade_in_probation_that_rolls_back_resumes_the_probation() {
    let dir = crate::common::TempDir::new("probation-crash-upgrade-rolls-back");
    let supervisor = start_foreign(&dir, "30s", true);
    let (v1, v2, code, report) = live_dies_during_an_upgrade_in_probation(
        &dir,
        &supervisor,
        &["--deadline", "1500ms", "--drain-timeout", "1s"],
        || {},
    );
    assert_ne!(code, Some(0), "{report}");
    assert_eq!(report["committed"], false, "{report}");
    let status = supervisor.wait_status("v1 live again", |s| s["child_pid"] == v1);
    assert_eq!(
        u64_of(&status["last_probation_rollback"], "failed_pid") as u32,
        v2,
        "{status}"
    );
    supervisor.wait_log(&format!("httpd {v1}: accepting"), 0);
    assert_eq!(crate::foreign::pid_of(supervisor.addr()), v1);
    assert!(
        !supervisor.log().contains("restarting the generation"),
        "{}",
        supervisor.log()
    );
}

/// A resumption acknowledged only after another generation was committed
/// (testd takes 2 s to resume; an upgrade commits meanwhile): no rollback
/// is reported, and the late generation retires to its reap instead of
/// being dropped unreaped.
#[test]
fn a_resume_acknowledged_after_another_commit_retires_the_late_generation() {
    let supervisor = start_overlap("30s", &[], &["--resume-delay-ms", "2000"]);
    let addr = supervisor.addr();
    let old = serving_pid(addr);
    let new = upgraded(&supervisor);
    supervisor.wait_status("the old generation in probation", |s| {
        s["retiring"]
            .as_array()
            .is_some_and(|r| r.contains(&old.into()))
    });
    handoff::os::signal(new, Sig::Kill).expect("kill the new generation");
    supervisor.wait_log("testd: resuming in 2000 ms as asked", 0);
    let third = upgraded(&supervisor);
    supervisor.wait_log(
        "the resumed generation found another one serving: it retires",
        0,
    );
    wait_gone(old);
    supervisor.wait_log(&format!("old generation gone generation=1 pid={old}"), 0);
    let status = supervisor.status();
    assert_eq!(u64_of(&status, "child_pid") as u32, third, "{status}");
    assert!(status["last_probation_rollback"].is_null(), "{status}");
    assert_eq!(serving_pid(addr), third);
}
