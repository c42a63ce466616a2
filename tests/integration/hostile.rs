//! Hostile and broken peers: successors that write malformed frames, stop
//! responding, or leave connections open. The supervisor never panics, the
//! handoff rolls back (or completes) as documented, and the incumbent keeps
//! serving.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use handoff::Mode;
use handoff::supervisor::{Outcome, SupervisorEvent, UpgradeRequest};
use handoff::wire::AbortReason;

use crate::common::{Harness, alive, test_timeouts};

/// Runs an upgrade whose "successor" is `sh -c SCRIPT`, with the control
/// socket on fd 3.
fn upgrade_to_script(harness: &Harness, script: &str) -> Outcome {
    harness
        .handle
        .upgrade(UpgradeRequest {
            program: Some("/bin/sh".into()),
            args: Some(vec!["-c".into(), script.into()]),
            deadline: Some(Duration::from_secs(5)),
            drain_grace: Some(Duration::from_secs(2)),
            ..UpgradeRequest::default()
        })
        .expect("an outcome")
}

fn assert_rolled_back_and_serving(harness: &Harness, outcome: Outcome, old: u32, what: &str) {
    let Outcome::RolledBack {
        reason, failed_pid, ..
    } = outcome
    else {
        panic!("{what}: expected a rollback, got {outcome:?}");
    };
    assert!(
        !failed_pid.is_some_and(alive),
        "{what}: the successor was reaped"
    );
    assert_eq!(
        harness.info().pid,
        old,
        "{what}: the incumbent serves ({reason})"
    );
    let reply = harness.request("PUT after-hostile 1");
    assert!(
        reply.starts_with("OK "),
        "{what}: the incumbent writes: {reply}"
    );
}

#[test]
fn malformed_frames_from_a_successor_roll_back() {
    let harness = Harness::start(Mode::Exclusive, &[]);
    let old = harness.info().pid;
    let cases = [
        // Half a header, then exit: EOF in the middle of a frame.
        ("truncated header", r"printf 'HNDF\001' >&3"),
        // A whole header announcing 100 bytes, 3 of them sent.
        (
            "truncated payload",
            r"printf 'HNDF\001\000\144\000\000\000\000\000abc' >&3",
        ),
        (
            "wrong magic",
            r"printf 'EVIL\001\000\000\000\000\000\000\000' >&3; exec sleep 30",
        ),
        (
            "unknown wire version",
            r"printf 'HNDF\011\000\000\000\000\000\000\000' >&3; exec sleep 30",
        ),
        (
            "length 2^32-1",
            r"printf 'HNDF\001\000\377\377\377\377\000\000' >&3; exec sleep 30",
        ),
        (
            "too many fds declared",
            r"printf 'HNDF\001\000\000\000\000\000\377\377' >&3; exec sleep 30",
        ),
        // Handoff id 0, then variant index 200 as a varint (0xc8 0x01).
        (
            "unknown message kind",
            r"printf 'HNDF\001\000\003\000\000\000\000\000\000\310\001' >&3; exec sleep 30",
        ),
        (
            "random garbage",
            r"head -c 4096 /dev/urandom >&3; exec sleep 30",
        ),
    ];
    for (what, script) in cases {
        let started = Instant::now();
        let outcome = upgrade_to_script(&harness, script);
        // Every one of these is caught at once (EOF or a decode error),
        // not by the 5 s deadline.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert_rolled_back_and_serving(&harness, outcome, old, what);
    }
}

#[test]
fn a_successor_that_says_nothing_is_killed_at_the_deadline() {
    let harness = Harness::start(Mode::Exclusive, &[]);
    let old = harness.info().pid;
    let outcome = upgrade_to_script(&harness, "exec sleep 60");
    let Outcome::RolledBack { ref reason, .. } = outcome else {
        panic!("expected a rollback, got {outcome:?}");
    };
    assert!(matches!(reason, AbortReason::Deadline { .. }), "{reason:?}");
    assert_rolled_back_and_serving(&harness, outcome, old, "silent successor");
}

#[test]
fn a_frozen_incumbent_is_declared_dead_after_the_liveness_timeout() {
    let mut timeouts = test_timeouts();
    timeouts.heartbeat_interval = Duration::from_millis(500);
    timeouts.liveness = Duration::from_secs(2);
    let harness = Harness::start_with(Mode::Exclusive, &["--hang-at", "drain"], timeouts);
    put(&harness, "frozen", "1");
    let old = harness.info().pid;
    let upgrade = harness.upgrade_in_background(harness.args(&[]));
    harness.wait_phase("draining");
    // SIGSTOP: alive but silent. Its heartbeats stop; EOF never comes.
    handoff::os::signal(old, handoff::os::Sig::Stop).expect("SIGSTOP");
    let started = Instant::now();
    let outcome = upgrade.join().expect("thread").expect("outcome");
    assert!(
        outcome.is_committed(),
        "the successor takes over: {outcome:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "not before the liveness timeout: {waited:?}"
    );
    assert!(!alive(old), "the frozen incumbent was killed and reaped");
    assert_eq!(get(&harness, "frozen"), "VALUE 1");
}

#[test]
fn a_drain_that_never_ends_is_cut_at_the_drain_grace() {
    let mut timeouts = test_timeouts();
    timeouts.drain_grace = Duration::from_secs(1);
    let harness = Harness::start_with(Mode::Exclusive, &[], timeouts);
    let old = harness.info().pid;
    // A client that connects and never sends its request line.
    let stuck = TcpStream::connect(harness.addr).expect("connect");
    // The incumbent has accepted it once a later request was answered.
    put(&harness, "k", "v");
    let started = Instant::now();
    let outcome = harness.upgrade(harness.args(&[]));
    assert!(outcome.is_committed(), "{outcome:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the drain waited for the stuck connection"
    );
    harness.wait_event(
        |event| matches!(event, SupervisorEvent::GenerationRetired { pid, .. } if *pid == old),
    );
    assert!(!alive(old), "no lingering generation");
    // The stuck connection was closed with the old process.
    let mut line = String::new();
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let read = BufReader::new(&stuck).read_line(&mut line);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "closed: {read:?} {line:?}"
    );
    assert_eq!(get(&harness, "k"), "VALUE v");
    drop(stuck);
}

#[test]
fn every_fd_the_supervisor_creates_is_close_on_exec() {
    let before: std::collections::BTreeSet<i32> =
        handoff::os::open_fds().expect("fds").into_iter().collect();
    let harness = Harness::start(Mode::Exclusive, &[]);
    let outcome = harness.upgrade(harness.args(&[]));
    assert!(outcome.is_committed());
    for fd in handoff::os::open_fds().expect("fds") {
        if before.contains(&fd) {
            continue;
        }
        let flags = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        let cloexec = flags
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .map(|f| f & 0o2000000 != 0);
        // An fd may close between the listing and the read: skip it then.
        if let Some(cloexec) = cloexec {
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
            assert!(
                cloexec,
                "fd {fd} ({}) is not close-on-exec",
                target.display()
            );
        }
    }
}

fn put(harness: &Harness, key: &str, value: &str) {
    let reply = harness.request(&format!("PUT {key} {value}"));
    assert!(reply.starts_with("OK "), "{reply}");
}

fn get(harness: &Harness, key: &str) -> String {
    harness.request(&format!("GET {key}"))
}

/// A failed successor's own children die with it: each generation leads a
/// process group, and the final SIGKILL goes to the group.
#[test]
fn a_failed_successors_children_are_killed_with_it() {
    let harness = Harness::start(Mode::Exclusive, &[]);
    let old = harness.info().pid;
    let dir = crate::common::TempDir::new("pgrp");
    let pid_file = dir.path().join("child.pid");
    // A background child, then a successor that never speaks (deadline).
    let script = format!("sleep 60 & echo $! > {}; exec sleep 60", pid_file.display());
    let outcome = upgrade_to_script(&harness, &script);
    let child: u32 = std::fs::read_to_string(&pid_file)
        .expect("the script recorded its child")
        .trim()
        .parse()
        .expect("pid");
    assert_rolled_back_and_serving(&harness, outcome, old, "successor with a child");
    let deadline = Instant::now() + crate::common::WAIT;
    while alive(child) {
        assert!(
            Instant::now() < deadline,
            "the successor's child {child} outlived it"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
