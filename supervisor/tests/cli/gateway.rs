//! `handoffctl` upgrades the gateway example (the handler registry's
//! daemon) in overlap mode: the gateway takes `http` and `admin` from the
//! supervisor, serves before Ready, and a client hammering it sees no
//! failed request.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::{IO, Start, Supervisor, TempDir, alive, example, u64_of, wait_gone};

/// One HTTP/1.1 request on a fresh connection; the status code.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, IO)?;
    stream.set_read_timeout(Some(IO))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: gateway.test\r\nconnection: close\r\n\r\n"
    )?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))
}

/// A client hammering `path` on `addr` with a fresh connection per
/// request until `stop`: what it saw.
struct Hammer {
    served: u64,
    failed: Vec<String>,
}

fn hammer(
    addr: SocketAddr,
    path: &'static str,
    expected: u16,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Hammer> {
    std::thread::spawn(move || {
        let mut seen = Hammer {
            served: 0,
            failed: Vec::new(),
        };
        while !stop.load(Ordering::SeqCst) {
            match get(addr, path) {
                Ok(status) if status == expected => seen.served += 1,
                other => {
                    let at = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0);
                    seen.failed
                        .push(format!("{addr}{path}: {other:?} at unix {at:.6}"));
                }
            }
        }
        seen
    })
}

/// The gateway in overlap mode on `http` and `admin` (deadline 20 s, drain
/// 5 s), its config and builds in `work`. No endpoints: every path answers
/// 404 "no route", which is enough to tell a served request from a failed
/// one.
fn supervise_gateway(work: &TempDir) -> Supervisor {
    let config = work.path().join("gateway.toml");
    std::fs::write(&config, "drain_timeout = \"5s\"\n").expect("config");
    let build = work.path().join("build");
    Supervisor::start_with(Start {
        flags: [
            "--mode",
            "overlap",
            "--listen",
            "http=127.0.0.1:0",
            "--listen",
            "admin=127.0.0.1:0",
            "--deadline",
            "20s",
            "--drain-timeout",
            "5s",
        ]
        .map(String::from)
        .to_vec(),
        program: Some(example("gateway")),
        testd_args: vec![
            "--config".into(),
            config.display().to_string(),
            "--build-dir".into(),
            build.display().to_string(),
        ],
        ..Start::default()
    })
}

// Both listeners are hammered: the admin API once accepted connections up
// to the old gateway's exit (its own accept loop never paused for the
// drain), and its clients got resets; an earlier version of this test
// hammered the admin port by mistake (listeners are listed by name) and
// caught exactly that.
#[test]
fn handoffctl_upgrades_the_gateway_with_no_failed_request() {
    let work = TempDir::new("gateway");
    let supervisor = supervise_gateway(&work);
    let (http, admin) = (supervisor.addr_of("http"), supervisor.addr_of("admin"));
    assert_ne!(http, admin);
    assert_eq!(get(http, "/x").expect("public API served"), 404);
    assert_eq!(get(admin, "/status").expect("admin API served"), 200);

    let stop = Arc::new(AtomicBool::new(false));
    let clients = [
        hammer(http, "/x", 404, stop.clone()),
        hammer(admin, "/status", 200, stop.clone()),
    ];
    // A kept-alive admin client: its connection goes to each new gateway
    // (I20), never closed.
    let mut kept = crate::transit::KeepAlive::open(admin);
    let mut old_pids = Vec::new();
    for _ in 0..3 {
        let before = u64_of(&supervisor.status(), "child_pid");
        let upgrade = supervisor.ctl("upgrade", &["--json"]);
        assert_eq!(upgrade.code, Some(0), "committed: {}", upgrade.stderr);
        let after = u64_of(&supervisor.status(), "child_pid");
        assert_ne!(before, after, "a new gateway serves");
        old_pids.push(u32::try_from(before).expect("pid"));
        // The old gateway drains after the commit, handing the connection
        // over at its request boundary: once it is gone the new one has it.
        wait_gone(u32::try_from(before).expect("pid"));
        let answer = kept
            .request("GET", "/status", "")
            .expect("kept-alive /status");
        assert!(!answer.closes, "the gateway closed a kept-alive connection");
        let status: serde_json::Value = serde_json::from_str(&answer.body).expect("json");
        assert_eq!(u64_of(&status, "pid"), after, "served by the new gateway");
    }
    // Every old gateway has exited while the clients still run: the moment
    // a connection held by an exiting process would be reset.
    for pid in &old_pids {
        wait_gone(*pid);
        assert!(!alive(*pid));
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        let seen = client.join().expect("client");
        assert!(
            seen.failed.is_empty(),
            "no request failed across the upgrades: {:?}; log:\n{}",
            seen.failed,
            supervisor.log()
        );
        assert!(seen.served > 0, "the client was served");
    }
}

/// The gateway's connections stop between two requests as kvd's and
/// echod's do, and a spent one (its first request begun when the drain
/// started, answered with `Connection: close`) is closed, not handed over.
#[test]
fn a_connection_the_old_gateway_began_reading_is_closed_after_its_answer() {
    let work = TempDir::new("gateway-close");
    let supervisor = supervise_gateway(&work);
    let request = "GET /x HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n";
    let (first, rest) = request.as_bytes().split_at(4);
    let stream =
        crate::transit::began_reading_when_the_drain_starts(&supervisor, first, rest, &["--json"]);
    let response = crate::transit::read_to_the_end(stream, &supervisor);
    assert!(response.starts_with("HTTP/1.1 404"), "{response:?}");
}
