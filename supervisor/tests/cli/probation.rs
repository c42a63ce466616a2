//! Probation (issue 7, part 3): after an overlap commit the old generation
//! stays drained and idle; if the new one crashes meanwhile, the old one is
//! resumed at once (an automatic rollback); after probation it exits.

use std::sync::Arc;
use std::time::Instant;

use handoff::os::Sig;

use crate::common::{Start, Supervisor, WAIT, alive, request, serving_pid, u64_of, wait_gone};
use crate::load::Load;

fn start(probation: &str) -> Supervisor {
    Supervisor::start_with(Start {
        flags: [
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
        ]
        .map(String::from)
        .to_vec(),
        ..Start::default()
    })
}

#[test]
fn a_crash_in_probation_resumes_the_previous_generation_under_load() {
    let supervisor = start("30s");
    let addr = supervisor.addr();
    let old = serving_pid(addr);
    let load = Load::start(
        200,
        Arc::new(move || match request(addr, "INFO") {
            Ok(reply) if reply.starts_with("pid=") => Ok(()),
            Ok(reply) => Err(format!("bad reply {reply:?}")),
            Err(error) => Err(format!("{:?}: {error}", error.kind())),
        }),
    );
    load.wait_answered(200);
    let ran = supervisor.ctl("upgrade", &["--json"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    load.wait_answered(200);
    let report: serde_json::Value = serde_json::from_str(&ran.stdout).expect("report");
    let new = u64_of(&report, "new_pid") as u32;
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
    assert!(
        supervisor.log().contains("automatic rollback"),
        "{}",
        supervisor.log()
    );
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
    assert!(report.failed() <= 8, "{}", report.summary());
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
    let supervisor = Supervisor::start_with(Start {
        flags: [
            "--listen",
            "main=127.0.0.1:0",
            "--mode",
            "overlap",
            "--deadline",
            "20s",
            "--drain-timeout",
            "5s",
            "--probation",
            "30s",
            "--probe",
            &probe,
            "--probe-timeout",
            "300ms",
        ]
        .map(String::from)
        .to_vec(),
        ..Start::default()
    });
    let addr = supervisor.addr();
    let old = serving_pid(addr);
    let load = Load::start(
        200,
        Arc::new(move || match request(addr, "INFO") {
            Ok(reply) if reply.starts_with("pid=") => Ok(()),
            Ok(reply) => Err(format!("bad reply {reply:?}")),
            Err(error) => Err(format!("{:?}: {error}", error.kind())),
        }),
    );
    load.wait_answered(100);
    let ran = supervisor.ctl("upgrade", &["--json"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let report: serde_json::Value = serde_json::from_str(&ran.stdout).expect("report");
    let new = u64_of(&report, "new_pid") as u32;
    load.wait_answered(100);
    health
        .status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    supervisor.wait_status("the previous generation live again", |s| {
        s["child_pid"] == old
    });
    wait_gone(new);
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
    assert!(report.failed() <= 8, "{}", report.summary());
    assert!(
        report
            .failures
            .iter()
            .all(|f| !f.contains("ConnectionRefused")),
        "{:?}",
        report.failures
    );
}
