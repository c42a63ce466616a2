//! Foreign daemons, which do not link the library: `handoffctl run
//! --protocol systemd` with a few lines of Python (`examples/foreign/
//! httpd.py`) that takes its socket from fd 3 (checking `LISTEN_PID`),
//! sends `READY=1` and finishes its requests on SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use crate::common::{IO, Start, Supervisor, TempDir, alive, u64_of, wait_gone};
use crate::load::Load;

pub fn httpd() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join("foreign")
        .join("httpd.py")
}

pub fn python() -> String {
    // CPython 3 is part of the machine image (and of CI's).
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("python3"))
        .find(|candidate| candidate.is_file())
        .expect("python3 in PATH");
    found.display().to_string()
}

/// `GET path` on a fresh connection; the body, or what went wrong.
pub fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, IO).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(IO))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(IO))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e:?}"))?;
    if !response.starts_with("HTTP/1.0 200") {
        return Err(format!("bad response {response:?}"));
    }
    Ok(response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned())
}

pub fn pid_of(addr: SocketAddr) -> u32 {
    let body = get(addr, "/").expect("GET /");
    body.strip_prefix("pid=")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {body:?}"))
}

/// A supervisor running httpd.py with `--fault-file DIR/fault`.
pub fn start(dir: &TempDir, extra: &[&str]) -> Supervisor {
    start_on(dir, "127.0.0.1:0", extra)
}

/// As [`start`], with the listener `http` on `address`.
pub fn start_on(dir: &TempDir, address: &str, extra: &[&str]) -> Supervisor {
    let listen = format!("http={address}");
    let mut flags: Vec<String> = [
        "--listen",
        &listen,
        "--protocol",
        "systemd",
        "--deadline",
        "20s",
        "--drain-timeout",
        "5s",
    ]
    .map(String::from)
    .to_vec();
    flags.extend(extra.iter().map(|s| s.to_string()));
    let fault = dir.path().join("fault");
    Supervisor::start_with(Start {
        flags,
        daemon: Some(vec![
            python(),
            httpd().display().to_string(),
            "--fault-file".into(),
            fault.display().to_string(),
        ]),
        ..Start::default()
    })
}

pub fn upgrade(supervisor: &Supervisor, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let ran = supervisor.ctl("upgrade", &all);
    let report = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("upgrade output {ran:?}: {e}; log:\n{}", supervisor.log()));
    (ran.code, report)
}

#[test]
fn a_python_daemon_is_upgraded_under_load_with_nothing_lost() {
    let dir = TempDir::new("foreign");
    let supervisor = start(&dir, &[]);
    let addr = supervisor.addr();
    let mut pids = vec![pid_of(addr)];
    assert_eq!(u64_of(&supervisor.status(), "child_pid") as u32, pids[0]);
    let load = Load::start(
        300,
        Arc::new(move || {
            get(addr, "/").and_then(|body| body.starts_with("pid=").then_some(()).ok_or(body))
        }),
    );
    for _ in 0..10 {
        let (code, report) = upgrade(&supervisor, &[]);
        assert_eq!(code, Some(0), "{report}; log:\n{}", supervisor.log());
        eprintln!("foreign upgrade: {report}");
        let new_pid = u64_of(&report, "new_pid") as u32;
        // The old generation got SIGTERM after the commit and finishes.
        wait_gone(*pids.last().expect("a pid"));
        assert_eq!(pid_of(addr), new_pid, "the successor serves alone");
        pids.push(new_pid);
    }
    let report = load.finish();
    eprintln!(
        "foreign daemon, 10 upgrades under load: {}",
        report.summary()
    );
    assert!(report.ok > 200, "{}", report.summary());
    assert_eq!(
        report.failed(),
        0,
        "{}: {:?}",
        report.summary(),
        &report.failures[..report.failures.len().min(5)]
    );
}

#[test]
fn ready_from_another_process_is_ignored_and_the_handoff_rolls_back() {
    let dir = TempDir::new("foreign-sender");
    let supervisor = start(&dir, &[]);
    let addr = supervisor.addr();
    let incumbent = pid_of(addr);
    // The successor forks a child that sends READY=1; the successor never
    // does. Only the successor's own pid counts: the deadline rolls back.
    std::fs::write(dir.path().join("fault"), "ready-from-child").expect("fault");
    let (code, report) = upgrade(&supervisor, &["--deadline", "2s", "--drain-timeout", "1s"]);
    assert_eq!(code, Some(1), "{report}");
    let reason = report["abort_reason"].as_str().expect("reason");
    assert!(reason.contains("deadline"), "{reason}");
    assert!(
        supervisor
            .log()
            .contains("notification from another process ignored"),
        "{}",
        supervisor.log()
    );
    let failed = u64_of(&report, "new_pid") as u32;
    wait_gone(failed);
    assert!(alive(incumbent));
    assert_eq!(pid_of(addr), incumbent, "the incumbent was never touched");
}

#[test]
fn a_successor_that_dies_before_ready_rolls_back() {
    let dir = TempDir::new("foreign-crash");
    let supervisor = start(&dir, &[]);
    let addr = supervisor.addr();
    let incumbent = pid_of(addr);
    std::fs::write(dir.path().join("fault"), "no-ready").expect("fault");
    // Never ready, and SIGTERM at the deadline: it exits on its own.
    let (code, report) = upgrade(&supervisor, &["--deadline", "1s", "--drain-timeout", "1s"]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(pid_of(addr), incumbent);
    std::fs::write(dir.path().join("fault"), "crash-after-ready").expect("fault");
    let (code, report) = upgrade(&supervisor, &[]);
    // READY=1 and the exit race: either it exits before the commit (rolled
    // back) or it commits and the crash is a restart. Both keep serving.
    if code == Some(1) {
        assert_eq!(pid_of(addr), incumbent);
    } else {
        assert_eq!(code, Some(0), "{report}");
    }
    std::fs::write(dir.path().join("fault"), "").expect("fault");
    let _ = supervisor.wait_serving();
    let _ = pid_of(addr);
}

#[test]
fn protocol_flags_are_checked() {
    let ran = crate::common::ctl(&["run", "--stop-signal", "QUIT", "--", "/bin/true"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(
        ran.one_error_line().contains("--protocol systemd"),
        "{ran:?}"
    );
    let ran = crate::common::ctl(&[
        "run",
        "--protocol",
        "systemd",
        "--stop-signal",
        "BOGUS",
        "--",
        "/bin/true",
    ]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    let ran = crate::common::ctl(&[
        "run",
        "--protocol",
        "systemd",
        "--ready-signal",
        "probe",
        "--",
        "/bin/true",
    ]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.one_error_line().contains("--probe"), "{ran:?}");
}

/// nginx-style: SIGQUIT is the graceful stop. A request the incumbent
/// accepted before the upgrade is answered by it after the commit (the
/// default action of SIGQUIT would kill it and fail the request).
#[test]
fn the_stop_signal_lets_the_old_generation_finish_its_requests() {
    let dir = TempDir::new("foreign-quit");
    let supervisor = start(&dir, &["--stop-signal", "QUIT"]);
    let addr = supervisor.addr();
    let incumbent = pid_of(addr);
    let slow = std::thread::spawn(move || get(addr, "/slow"));
    // The slow request is accepted by the only generation there is; the
    // upgrade commits while it runs (Python starts in well under 300 ms
    // here; if not, the request is simply answered before the stop).
    let (code, report) = upgrade(&supervisor, &[]);
    assert_eq!(code, Some(0), "{report}");
    let answer = slow.join().expect("client thread");
    assert_eq!(answer, Ok(format!("pid={incumbent}")));
    wait_gone(incumbent);
    assert_eq!(pid_of(addr), u64_of(&report, "new_pid") as u32);
}

/// The health gate with a foreign daemon: READY=1 arrives, the probe then
/// says 503, the successor is stopped with the stop signal (it finishes
/// what it accepted: overlap, it was serving) and the incumbent keeps
/// serving; under load, no request fails.
#[test]
fn a_foreign_successor_failing_its_probe_is_stopped_gracefully_under_load() {
    let health = crate::health::HealthServer::start(200);
    let probe = format!("http://{}/healthz", health.addr);
    let dir = TempDir::new("foreign-probe");
    let supervisor = start(&dir, &["--probe", &probe, "--probe-timeout", "500ms"]);
    let addr = supervisor.addr();
    let incumbent = pid_of(addr);
    let load = Load::start(
        300,
        Arc::new(move || {
            get(addr, "/").and_then(|body| body.starts_with("pid=").then_some(()).ok_or(body))
        }),
    );
    load.wait_answered(150);
    health
        .status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    let (code, report) = upgrade(&supervisor, &[]);
    assert_eq!(code, Some(1), "{report}");
    let reason = report["abort_reason"].as_str().expect("reason");
    assert!(reason.contains("status 503"), "{reason}");
    wait_gone(u64_of(&report, "new_pid") as u32);
    load.wait_answered(150);
    health
        .status
        .store(200, std::sync::atomic::Ordering::SeqCst);
    let (code, report) = upgrade(&supervisor, &[]);
    assert_eq!(code, Some(0), "{report}");
    wait_gone(incumbent);
    load.wait_answered(150);
    let report = load.finish();
    eprintln!(
        "foreign daemon, failed probe then commit under load: {}",
        report.summary()
    );
    assert_eq!(
        report.failed(),
        0,
        "{}: {:?}",
        report.summary(),
        &report.failures[..report.failures.len().min(5)]
    );
}

/// The process group a process is in (`/proc/PID/stat`, field 5).
fn pgrp_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(") ").next()?.split(' ').nth(2)?.parse().ok()
}

/// Kills a leftover worker if the test fails before the supervisor did.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let ours = std::fs::read(format!("/proc/{}/cmdline", self.0))
            .is_ok_and(|cmdline| cmdline.windows(8).any(|w| w == b"httpd.py"));
        if ours && alive(self.0) {
            let _ = handoff::os::signal(self.0, handoff::os::Sig::Kill);
        }
    }
}

/// What a foreign generation forked does not outlive it: the generation
/// leads a process group of its own, and what is left of the group when
/// the leader exits is SIGKILLed before the reap (I16). The worker here
/// holds the listener and never takes the stop signal; left alive it would
/// hold the generation's fds for good.
#[test]
fn a_worker_a_foreign_generation_forked_does_not_outlive_it() {
    let dir = TempDir::new("foreign-worker");
    let fault = dir.path().join("fault");
    std::fs::write(&fault, "fork-worker").expect("fault file");
    let supervisor = start(&dir, &[]);
    let addr = supervisor.addr();
    let master = pid_of(addr);
    std::fs::write(&fault, "").expect("later generations fork nothing");
    let announced = format!("httpd {master}: worker ");
    let after = supervisor.wait_log(&announced, 0);
    let worker: u32 = supervisor.log()[after..]
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .expect("the worker's pid");
    let _guard = KillOnDrop(worker);
    assert!(alive(worker));
    assert_eq!(pgrp_of(worker), Some(master), "in the generation's group");
    assert_eq!(pgrp_of(master), Some(master), "the generation leads it");

    let (code, report) = upgrade(&supervisor, &[]);
    assert_eq!(code, Some(0), "{report}");
    wait_gone(master);
    wait_gone(worker);
    let new = u64_of(&report, "new_pid") as u32;
    assert_eq!(pgrp_of(new), Some(new), "the successor leads its own group");
    assert_eq!(pid_of(addr), new);
}

/// The live generation dies while an upgrade runs (no probation): the
/// verdict decides, the upgrade commits, and no restart replaces the
/// generation just committed.
#[test]
fn a_restart_pending_when_an_upgrade_commits_is_dropped() {
    let dir = TempDir::new("foreign-restart-pending");
    let supervisor = start(&dir, &[]);
    let addr = supervisor.addr();
    let v1 = pid_of(addr);
    std::fs::write(dir.path().join("fault"), "hold-ready").expect("fault file");
    let (code, report) = std::thread::scope(|scope| {
        let upgrading = scope.spawn(|| upgrade(&supervisor, &[]));
        supervisor.wait_log("generation spawned generation=2", 0);
        handoff::os::signal(v1, handoff::os::Sig::Kill).expect("kill v1");
        supervisor.wait_log("the live generation exited during a handoff", 0);
        std::fs::write(dir.path().join("fault"), "").expect("release READY=1");
        upgrading.join().expect("upgrade thread")
    });
    assert_eq!(code, Some(0), "{report}");
    let v2 = u64_of(&report, "new_pid") as u32;
    supervisor.wait_log("a restart was pending", 0);
    let status = supervisor.status();
    assert_eq!(u64_of(&status, "child_pid") as u32, v2, "{status}");
    assert_eq!(pid_of(addr), v2);
    assert!(
        !supervisor.log().contains("generation spawned generation=3"),
        "{}",
        supervisor.log()
    );
}
