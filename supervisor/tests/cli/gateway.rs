//! `handoffctl` upgrades the gateway example (the handler registry's
//! daemon) in overlap mode: the gateway takes `http` and `admin` from the
//! supervisor, serves before Ready, and a client hammering it sees no
//! failed request.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

#[test]
fn handoffctl_upgrades_the_gateway_with_no_failed_request() {
    let work = TempDir::new("gateway");
    let config = work.path().join("gateway.toml");
    // No endpoints: every path answers 404 "no route", which is enough to
    // tell a served request from a failed one.
    std::fs::write(&config, "drain_timeout = \"5s\"\n").expect("config");
    let build = work.path().join("build");
    let supervisor = Supervisor::start_with(Start {
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
    });
    let status = supervisor.status();
    let http: SocketAddr = status["listeners"][0]["address"]
        .as_str()
        .expect("address")
        .parse()
        .expect("addr");
    assert_eq!(get(http, "/x").expect("served"), 404);

    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match get(http, "/x") {
                    Ok(404) => served.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };
    let mut old_pids = Vec::new();
    for _ in 0..2 {
        let before = u64_of(&supervisor.status(), "child_pid");
        let upgrade = supervisor.ctl("upgrade", &["--json"]);
        assert_eq!(upgrade.code, Some(0), "committed: {}", upgrade.stderr);
        let after = u64_of(&supervisor.status(), "child_pid");
        assert_ne!(before, after, "a new gateway serves");
        old_pids.push(u32::try_from(before).expect("pid"));
    }
    stop.store(true, Ordering::SeqCst);
    client.join().expect("client");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request failed across the upgrades"
    );
    assert!(served.load(Ordering::SeqCst) > 0);
    for pid in old_pids {
        wait_gone(pid);
        assert!(!alive(pid));
    }
}
