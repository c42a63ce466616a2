//! The health gate: `--probe` checks a successor after its healthy Ready
//! and before Commit; a probe that never passes rolls the handoff back
//! while the incumbent keeps serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use crate::common::{IO, Start, Supervisor, serving_pid, u64_of};
use crate::load::Load;

/// An HTTP health endpoint the test controls: every GET gets `status`.
/// Stands for a private health port; stopped on drop.
pub struct HealthServer {
    pub addr: SocketAddr,
    pub status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthServer {
    pub fn start(status: u16) -> HealthServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind health");
        let addr = listener.local_addr().expect("addr");
        let status = Arc::new(AtomicU16::new(status));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (status, stop) = (Arc::clone(&status), Arc::clone(&stop));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut stream) = stream else { continue };
                    let _ = stream.set_read_timeout(Some(IO));
                    let mut head = Vec::new();
                    let mut buf = [0; 512];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(got) => head.extend_from_slice(&buf[..got]),
                        }
                    }
                    let code = status.load(Ordering::SeqCst);
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
            })
        };
        HealthServer {
            addr,
            status,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, IO);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn upgrade_json(supervisor: &Supervisor) -> (Option<i32>, serde_json::Value) {
    let ran = supervisor.ctl("upgrade", &["--json"]);
    let report =
        serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("upgrade output {ran:?}: {e}"));
    (ran.code, report)
}

/// Exclusive mode: the successor serves only after Commit (I6) and the
/// incumbent is sealed while the probe runs, so requests wait in the
/// shared backlog and the resumed incumbent answers them: 0 failed. (In
/// overlap mode a library successor already accepts before Ready, and the
/// abort that follows a failed probe resets what it had accepted; see
/// ARCHITECTURE.md, "Not promised".)
#[test]
fn a_successor_failing_the_probe_is_rolled_back_under_load() {
    let health = HealthServer::start(200);
    let probe = format!("http://{}/healthz", health.addr);
    let supervisor = Supervisor::start_with(Start {
        flags: [
            "--listen",
            "main=127.0.0.1:0",
            "--deadline",
            "20s",
            "--drain-timeout",
            "5s",
            "--probe",
            &probe,
            "--probe-timeout",
            "1s",
        ]
        .map(String::from)
        .to_vec(),
        ..Start::default()
    });
    let addr = supervisor.addr();
    let incumbent = serving_pid(addr);
    let load = Load::testd_info(addr, 200);

    // The successor sends a healthy Ready, but its health endpoint says 503.
    health.status.store(503, Ordering::SeqCst);
    let (code, report) = upgrade_json(&supervisor);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["committed"], false);
    let reason = report["abort_reason"].as_str().expect("reason");
    assert!(
        reason.contains("health probe failed") && reason.contains("status 503"),
        "{reason}"
    );
    assert!(report["phases_ms"]["probe"].as_f64().expect("probe phase") >= 900.0);
    assert_eq!(serving_pid(addr), incumbent, "the incumbent still serves");
    let failed_pid = u64_of(&report, "new_pid") as u32;
    crate::common::wait_gone(failed_pid);

    // Healthy again: the same upgrade commits, after the probe.
    health.status.store(200, Ordering::SeqCst);
    let (code, report) = upgrade_json(&supervisor);
    assert_eq!(code, Some(0), "{report}");
    assert!(report["phases_ms"]["probe"].is_f64(), "{report}");
    let successor = u64_of(&report, "new_pid") as u32;
    crate::common::wait_gone(incumbent);
    assert_eq!(serving_pid(addr), successor);

    let report = load.finish();
    eprintln!("health gate under load: {}", report.summary());
    assert!(report.ok > 100, "{}", report.summary());
    assert_eq!(
        report.failed(),
        0,
        "{}: {:?}",
        report.summary(),
        &report.failures[..report.failures.len().min(5)]
    );
}

#[test]
fn a_bad_probe_is_a_usage_error() {
    let ran = crate::common::ctl(&["run", "--probe", "ftp://x", "--", "/bin/true"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.one_error_line().contains("health probe"), "{ran:?}");
    let ran = crate::common::ctl(&["run", "--probe-status", "204", "--", "/bin/true"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
}
