//! The quick start's daemon, `examples/counterd.rs`, as a user runs it:
//! under `handoffctl run --data-dir`, counted under load across upgrades,
//! then stopped with SIGTERM (`handoffctl stop`).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::common::{IO, Start, Supervisor, TempDir, example};
use crate::load::Load;

/// One `counterd` request on a fresh connection.
fn counterd(addr: SocketAddr, line: &str) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, IO)?;
    stream.set_read_timeout(Some(IO))?;
    writeln!(&stream, "{line}")?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    Ok(reply.trim_end().to_owned())
}

#[test]
fn counterd_counts_every_acknowledged_increment_across_upgrades() {
    let data = TempDir::new("counterd");
    let mut supervisor = Supervisor::start_with(Start {
        flags: [
            "--listen",
            "http=127.0.0.1:0",
            "--data-dir",
            &data.path().join("state").display().to_string(),
        ]
        .map(String::from)
        .to_vec(),
        daemon: Some(vec![example("counterd").display().to_string()]),
        ..Start::default()
    });
    let addr = supervisor.addr_of("http");
    let acked = Arc::new(AtomicU64::new(0));
    let load = Load::start(200, {
        let acked = Arc::clone(&acked);
        Arc::new(move || match counterd(addr, "INCR") {
            Ok(reply) if reply.parse::<u64>().is_ok() => {
                acked.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Ok(reply) => Err(format!("bad reply {reply:?}")),
            Err(error) => Err(format!("{:?}: {error}", error.kind())),
        })
    });
    load.wait_answered(50);
    for round in 0..3 {
        let ran = supervisor.ctl("upgrade", &[]);
        assert_eq!(ran.code, Some(0), "upgrade {round}: {ran:?}");
        load.wait_answered(50);
    }
    let report = load.finish();
    assert_eq!(report.failed(), 0, "{:?}", report.failures);
    let count: u64 = counterd(addr, "GET")
        .expect("GET")
        .parse()
        .expect("a count");
    assert_eq!(count, acked.load(Ordering::SeqCst), "every increment, once");

    let stopped = supervisor.ctl("stop", &[]);
    assert_eq!(stopped.code, Some(0), "{stopped:?}");
    assert_eq!(supervisor.wait_exit().code(), Some(0));
    let log = supervisor.log();
    assert!(
        log.contains("counterd: Term: draining"),
        "SIGTERM drains:\n{log}"
    );
}
