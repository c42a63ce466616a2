//! `faultsup`: the library's supervisor in a process of its own, for tests
//! that kill or crash the supervisor (fault points armed with
//! `HANDOFF_FAULT`). Not an operator tool: that is `handoffctl`.
//!
//! `faultsup TESTD DATA_DIR [-- SUCCESSOR_ARGS...]` starts `testd` in
//! exclusive mode on 127.0.0.1:0 and speaks a line protocol on stdio:
//! it prints `ADDR <addr>` and `SERVING <pid>`; each `UPGRADE` line read
//! runs one upgrade (testd with `--data-dir DATA_DIR` plus the successor
//! args) and prints `OUTCOME committed <pid>` or `OUTCOME rolled_back
//! <reason>`; end of input stops the supervisor gracefully.

use std::ffi::OsString;
use std::io::{BufRead, Write};

use handoff::supervisor::{
    NamedListener, Outcome, Supervisor, SupervisorConfig, SupervisorEvent, UpgradeRequest,
};
use handoff::{Mode, Timeouts};

const USAGE: &str = "\
usage: faultsup TESTD DATA_DIR [-- SUCCESSOR_ARGS...]
The library's supervisor in a process of its own, for tests that crash it (HANDOFF_FAULT).
Starts TESTD in exclusive mode on 127.0.0.1:0 and prints ADDR and SERVING lines; each
UPGRADE line read from stdin runs one upgrade and prints its OUTCOME; end of input stops.
";

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args_os().skip(1);
    if std::env::args_os()
        .nth(1)
        .is_some_and(|first| first == "--help" || first == "-h")
    {
        print!("{USAGE}");
        return;
    }
    let testd = args
        .next()
        .expect("usage: faultsup TESTD DATA_DIR [-- ARGS]");
    let data = args
        .next()
        .expect("usage: faultsup TESTD DATA_DIR [-- ARGS]");
    let mut successor_args: Vec<OsString> = vec!["--data-dir".into(), data.clone()];
    if args.next().is_some_and(|dashdash| dashdash == "--") {
        successor_args.extend(args);
    }
    let listener =
        NamedListener::bind("main", &"127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.address.clone();
    let args = [
        "--data-dir".into(),
        data,
        "--relock-ms".into(),
        "2000".into(),
    ];
    let supervisor = Supervisor::start(SupervisorConfig {
        timeouts: Timeouts {
            handoff_deadline: std::time::Duration::from_secs(20),
            drain_grace: std::time::Duration::from_secs(5),
            kill_grace: std::time::Duration::from_secs(2),
            ..Timeouts::default()
        },
        // The health gate is on so that the `probing` point is reached: a
        // connect to the shared listener (it always passes; see
        // handoff::probe for why a real probe targets a private address).
        probe: Some(handoff::probe::Probe::Tcp {
            address: addr.clone(),
        }),
        ..SupervisorConfig::new(testd, args.to_vec(), Mode::Exclusive, vec![listener])
    })
    .expect("supervisor");
    let handle = supervisor.handle();
    let events = handle.subscribe().expect("subscribe");
    let mut out = std::io::stdout();
    writeln!(out, "ADDR {addr}").expect("stdout");
    let pid = loop {
        if let Some(pid) = handle.status().expect("status").child_pid {
            break pid;
        }
        if let Some(SupervisorEvent::HandoffFinished(outcome)) = events.next()
            && let Outcome::Committed { new_pid, .. } = *outcome
        {
            break new_pid;
        }
    };
    writeln!(out, "SERVING {pid}").expect("stdout");
    upgrade_on_request(&handle, &successor_args);
    handle.stop().expect("stop");
    supervisor.join().expect("join");
}

/// Runs one upgrade per `UPGRADE` line of stdin and prints its `OUTCOME`,
/// until the end of input.
fn upgrade_on_request(handle: &handoff::supervisor::SupervisorHandle, successor_args: &[OsString]) {
    let mut out = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() != "UPGRADE" {
            continue;
        }
        let outcome = handle.upgrade(UpgradeRequest {
            args: Some(successor_args.to_vec()),
            ..UpgradeRequest::default()
        });
        match outcome {
            Ok(Outcome::Committed { new_pid, .. }) => writeln!(out, "OUTCOME committed {new_pid}"),
            Ok(Outcome::RolledBack { reason, .. }) => writeln!(out, "OUTCOME rolled_back {reason}"),
            Err(error) => writeln!(out, "OUTCOME error {error}"),
        }
        .expect("stdout");
    }
}
