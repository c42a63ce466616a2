//! Handoffs through the library's supervisor with real `testd` processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use handoff::Mode;
use handoff::supervisor::{Outcome, SupervisorEvent};
use handoff::wire::AbortReason;

use crate::common::{Harness, alive, request, test_timeouts};

fn put_many(harness: &Harness, prefix: &str, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            let (key, value) = (format!("{prefix}{i}"), format!("value-{prefix}-{i}"));
            let reply = harness.request(&format!("PUT {key} {value}"));
            assert!(reply.starts_with("OK "), "PUT acknowledged: {reply}");
            (key, value)
        })
        .collect()
}

fn assert_all_present(harness: &Harness, writes: &[(String, String)]) {
    for (key, value) in writes {
        assert_eq!(
            harness.request(&format!("GET {key}")),
            format!("VALUE {value}"),
            "acknowledged write {key} survives"
        );
    }
}

fn rolled_back(outcome: Outcome) -> AbortReason {
    match outcome {
        Outcome::RolledBack { reason, .. } => reason,
        other => panic!("expected a rollback, got {other:?}"),
    }
}

fn wait_retired(harness: &Harness, pid: u32) {
    if !alive(pid) {
        return;
    }
    harness.wait_event(
        |event| matches!(event, SupervisorEvent::GenerationRetired { pid: p, .. } if *p == pid),
    );
}

#[test]
fn exclusive_handoff_commits_and_keeps_every_write() {
    let harness = Harness::start(Mode::Exclusive, &["--build", "v1"]);
    let before = harness.info();
    assert_eq!(before.build, "v1");
    let writes = put_many(&harness, "a", 20);

    let outcome = harness.upgrade(harness.args(&["--build", "v2"]));
    let Outcome::Committed {
        old_pid,
        new_pid,
        phases,
        ..
    } = outcome
    else {
        panic!("expected a commit, got {outcome:?}");
    };
    assert_eq!(old_pid, Some(before.pid));
    assert_ne!(new_pid, before.pid);
    assert!(
        phases.drain.is_some() && phases.seal.is_some(),
        "exclusive mode drains and seals: {phases:?}"
    );

    let after = harness.info();
    assert_eq!((after.pid, after.build.as_str()), (new_pid, "v2"));
    assert_eq!(after.revisions, 20, "the successor opened the sealed state");
    assert!(
        after.generation > before.generation,
        "generation numbers grow: {before:?} → {after:?}"
    );
    assert_all_present(&harness, &writes);
    wait_retired(&harness, before.pid);
    assert!(!alive(before.pid), "the old generation exited");

    // The successor writes, and a second handoff carries everything on.
    let more = put_many(&harness, "b", 5);
    let outcome = harness.upgrade(harness.args(&["--build", "v3"]));
    assert!(outcome.is_committed(), "{outcome:?}");
    assert_all_present(&harness, &writes);
    assert_all_present(&harness, &more);
}

#[test]
fn overlap_handoff_under_load_refuses_nothing() {
    let harness = Harness::start(Mode::Overlap, &["--build", "v1"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), harness.addr);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match request(addr, "INFO") {
                        Ok(reply) if reply.starts_with("pid=") => ok.fetch_add(1, Ordering::SeqCst),
                        _ => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        })
        .collect();
    let mut pids = vec![harness.info().pid];
    for round in 0..3 {
        let outcome = harness.upgrade(harness.args(&["--build", &format!("v{}", round + 2)]));
        let Outcome::Committed {
            new_pid, phases, ..
        } = outcome
        else {
            panic!("expected a commit, got {outcome:?}");
        };
        assert!(phases.seal.is_none(), "overlap mode does not seal");
        pids.push(new_pid);
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("client thread");
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request failed across overlap handoffs"
    );
    assert!(ok.load(Ordering::SeqCst) > 0);
    for pid in &pids[..pids.len() - 1] {
        wait_retired(&harness, *pid);
    }
}

#[test]
fn successor_that_exits_before_ready_rolls_back() {
    let harness = Harness::start(Mode::Exclusive, &[]);
    let writes = put_many(&harness, "k", 3);
    let old = harness.info().pid;
    for stage in ["start", "warm", "begin", "ready"] {
        let reason = rolled_back(harness.upgrade(harness.args(&["--fail-at", stage])));
        assert!(
            matches!(
                reason,
                AbortReason::SuccessorExited { .. } | AbortReason::SuccessorClosed
            ),
            "stage {stage}: {reason:?}"
        );
        assert_eq!(
            harness.info().pid,
            old,
            "the incumbent still serves after a failure at {stage}"
        );
        put_many(&harness, stage, 1);
    }
    assert_all_present(&harness, &writes);
}

#[test]
fn successor_that_hangs_is_killed_at_the_deadline() {
    let mut timeouts = test_timeouts();
    timeouts.handoff_deadline = Duration::from_secs(3);
    timeouts.drain_grace = Duration::from_secs(2);
    let harness = Harness::start_with(Mode::Exclusive, &[], timeouts);
    let old = harness.info().pid;
    for stage in ["warm", "begin"] {
        let outcome = harness.upgrade(harness.args(&["--hang-at", stage]));
        let Outcome::RolledBack {
            reason, failed_pid, ..
        } = outcome
        else {
            panic!("expected a rollback, got {outcome:?}");
        };
        assert!(
            matches!(reason, AbortReason::Deadline { .. }),
            "{stage}: {reason:?}"
        );
        let failed_pid = failed_pid.expect("successor pid");
        assert!(
            !alive(failed_pid),
            "the hung successor was killed and reaped"
        );
        assert_eq!(harness.info().pid, old);
        // After a hang past Begin the incumbent had sealed: it writes again.
        put_many(&harness, stage, 2);
    }
}

#[test]
fn seal_failure_rolls_back_and_the_incumbent_keeps_writing() {
    let harness = Harness::start(Mode::Exclusive, &["--seal-fail"]);
    let writes = put_many(&harness, "s", 3);
    let reason = rolled_back(harness.upgrade(harness.args(&[])));
    assert!(
        matches!(reason, AbortReason::SealFailed { .. }),
        "{reason:?}"
    );
    put_many(&harness, "after", 3);
    assert_all_present(&harness, &writes);
}

#[test]
fn fingerprint_mismatch_rolls_back() {
    let harness = Harness::start(Mode::Exclusive, &[]);
    let writes = put_many(&harness, "f", 3);
    let old = harness.info().pid;
    let reason = rolled_back(harness.upgrade(harness.args(&["--bad-fingerprint"])));
    assert!(
        matches!(reason, AbortReason::FingerprintMismatch { .. }),
        "{reason:?}"
    );
    assert_eq!(harness.info().pid, old);
    put_many(&harness, "after", 2);
    assert_all_present(&harness, &writes);
}

#[test]
fn unhealthy_successor_is_not_committed() {
    let harness = Harness::start(Mode::Exclusive, &[]);
    let old = harness.info().pid;
    let reason = rolled_back(harness.upgrade(harness.args(&["--unhealthy"])));
    assert!(
        matches!(reason, AbortReason::Unhealthy { .. }),
        "{reason:?}"
    );
    assert_eq!(harness.info().pid, old);
    put_many(&harness, "after", 2);
}

#[test]
fn disjoint_protocol_versions_end_at_hello() {
    let harness = Harness::start(Mode::Exclusive, &[]);
    let old = harness.info().pid;
    let outcome = harness.upgrade(harness.args(&["--protocol", "7..9"]));
    let Outcome::RolledBack { reason, phases, .. } = outcome else {
        panic!("expected a rollback, got {outcome:?}");
    };
    assert!(
        matches!(reason, AbortReason::VersionMismatch { .. }),
        "{reason:?}"
    );
    assert!(
        phases.drain.is_none(),
        "the incumbent was never asked to drain"
    );
    assert_eq!(harness.info().pid, old);
}

#[test]
fn incumbent_killed_mid_drain_hands_over_to_the_successor() {
    let harness = Harness::start(Mode::Exclusive, &["--hang-at", "drain"]);
    let writes = put_many(&harness, "d", 5);
    let old = harness.info().pid;
    let upgrade = harness.upgrade_in_background(harness.args(&["--build", "v2"]));
    harness.wait_phase("draining");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill incumbent");
    let outcome = upgrade.join().expect("upgrade thread").expect("outcome");
    assert!(
        outcome.is_committed(),
        "the successor takes over from a dead incumbent: {outcome:?}"
    );
    let info = harness.info();
    assert_ne!(info.pid, old);
    assert_eq!(info.build, "v2");
    assert_all_present(&harness, &writes);
}

#[test]
fn a_second_upgrade_while_one_is_in_flight_is_busy() {
    let harness = Harness::start(Mode::Exclusive, &[]);
    let handle = harness.handle.clone();
    let args = harness.args(&["--hang-at", "warm"]);
    let mut timeouts_deadline = handoff::supervisor::UpgradeRequest {
        args: Some(args.into_iter().map(Into::into).collect()),
        deadline: Some(Duration::from_secs(3)),
        drain_grace: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let first = std::thread::spawn(move || handle.upgrade(std::mem::take(&mut timeouts_deadline)));
    harness
        .wait_event(|event| matches!(event, SupervisorEvent::HandoffStarted { upgrade: true, .. }));
    let second = harness.handle.upgrade(Default::default());
    assert!(matches!(second, Err(handoff::Error::Busy)), "{second:?}");
    let first = first.join().expect("thread").expect("outcome");
    assert!(!first.is_committed());
}

#[test]
fn generations_hold_only_what_they_were_given() {
    let harness = Harness::start(Mode::Exclusive, &[]);
    let outcome = harness.upgrade(harness.args(&[]));
    assert!(outcome.is_committed());
    let info = harness.info();
    assert_eq!(
        info.start_fds, "0:inherit,1:inherit,2:inherit,3:inherit",
        "a generation starts with stdio and its control fd only"
    );
    let fds = harness.request("FDS");
    for entry in fds.split(',') {
        let (fd, flag) = entry.split_once(':').expect("fd:flag");
        let fd: i32 = fd.parse().expect("fd number");
        if fd > 2 {
            assert_eq!(
                flag, "cloexec",
                "fd {fd} of the successor is close-on-exec ({fds})"
            );
        }
    }
}

#[test]
fn crashed_generation_is_restarted_and_listeners_stay_open() {
    let harness = Harness::start(Mode::Exclusive, &[]);
    let writes = put_many(&harness, "c", 3);
    let old = harness.info().pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    // Connections made while nobody accepts wait in the backlog.
    let reply = request(harness.addr, "GET c0").expect("served after the restart");
    assert_eq!(reply, "VALUE value-c-0");
    assert_ne!(harness.info().pid, old);
    assert_all_present(&harness, &writes);
}

/// TCP, Unix stream and UDP sockets and a plain fd (a file) travel by name
/// to every generation; the same sockets (same Unix socket inode) serve
/// after each upgrade.
#[test]
fn every_kind_of_fd_travels_by_name() {
    use std::os::unix::fs::MetadataExt;

    use handoff::supervisor::{NamedListener, Supervisor, SupervisorConfig, SupervisorEvent};

    let data = crate::common::TempDir::new("kinds");
    let sock_dir = crate::common::TempDir::new("sock");
    let unix_path = sock_dir.path().join("testd.sock");
    let state_path = sock_dir.path().join("state.txt");
    std::fs::write(&state_path, "hello-from-the-supervisor\n").expect("state file");
    let main = NamedListener::bind("main", &"127.0.0.1:0".parse().expect("addr")).expect("tcp");
    let tcp: std::net::SocketAddr = main.address.parse().expect("tcp addr");
    let unix =
        NamedListener::bind("unix", &handoff::ListenAddr::Unix(unix_path.clone())).expect("unix");
    let udp = NamedListener::bind("udp", &"udp:127.0.0.1:0".parse().expect("addr")).expect("udp");
    let udp_addr: std::net::SocketAddr = udp
        .address
        .trim_start_matches("udp:")
        .parse()
        .expect("udp addr");
    let file = std::fs::File::open(&state_path).expect("open state");
    let state = NamedListener::adopt("state", std::os::fd::OwnedFd::from(file)).expect("adopt");
    let args: Vec<std::ffi::OsString> = [
        "--data-dir",
        data.path().to_str().expect("utf-8"),
        "--unix-name",
        "unix",
        "--udp-name",
        "udp",
        "--fd-name",
        "state",
    ]
    .iter()
    .map(Into::into)
    .collect();
    let listeners = vec![main, unix, udp, state];
    let testd = crate::common::example("testd");
    let (supervisor, events) = Supervisor::start_with_events(SupervisorConfig {
        timeouts: crate::common::test_timeouts(),
        ..SupervisorConfig::new(testd, args.clone(), Mode::Exclusive, listeners)
    })
    .expect("supervisor");
    let handle = supervisor.handle();
    let guard = StopOnDrop(Some(supervisor), handle.clone());
    let next = |wanted: &dyn Fn(&SupervisorEvent) -> bool| loop {
        match events.next_timeout(crate::common::WAIT) {
            Some(event) if wanted(&event) => return event,
            Some(_) => continue,
            None => panic!("no matching event"),
        }
    };
    next(&|e| matches!(e, SupervisorEvent::HandoffFinished(o) if o.is_committed()));
    let inode = std::fs::metadata(&unix_path).expect("socket file").ino();
    let udp_client = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp client");
    udp_client
        .set_read_timeout(Some(crate::common::IO))
        .expect("timeout");
    let mut previous = 0;
    for round in 0..3 {
        let pid = every_kind_answers(tcp, &unix_path, &udp_client, udp_addr);
        assert_ne!(pid, previous, "round {round}: a new generation");
        assert_eq!(
            std::fs::metadata(&unix_path).expect("socket file").ino(),
            inode,
            "the same Unix socket, never re-bound"
        );
        previous = pid;
        if round < 2 {
            let outcome = handle
                .upgrade(handoff::supervisor::UpgradeRequest {
                    args: Some(args.clone()),
                    ..Default::default()
                })
                .expect("outcome");
            assert!(outcome.is_committed(), "{outcome:?}");
            next(&|e| matches!(e, SupervisorEvent::GenerationRetired { pid: p, .. } if *p == pid));
        }
    }
    drop(guard);
}

/// One exchange over each kind of fd testd got: INFO over TCP (which
/// shows the plain fd's contents), the Unix listener, the UDP socket; the
/// pid that answered all three.
fn every_kind_answers(
    tcp: std::net::SocketAddr,
    unix_path: &std::path::Path,
    udp_client: &std::net::UdpSocket,
    udp_addr: std::net::SocketAddr,
) -> u32 {
    let info = request(tcp, "INFO").expect("INFO over TCP");
    let pid: u32 = info
        .split(' ')
        .find_map(|kv| kv.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .expect("pid");
    assert!(
        info.contains("file_fd=hello-from-the-supervisor"),
        "the plain fd arrived: {info}"
    );
    let stream = std::os::unix::net::UnixStream::connect(unix_path).expect("unix");
    stream
        .set_read_timeout(Some(crate::common::IO))
        .expect("timeout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line)
        .expect("unix reply");
    assert_eq!(
        line.trim(),
        format!("pid={pid}"),
        "the Unix listener serves"
    );
    udp_client.send_to(b"who", udp_addr).expect("udp send");
    let mut buf = [0u8; 64];
    let (n, _) = udp_client.recv_from(&mut buf).expect("udp reply");
    assert_eq!(
        &buf[..n],
        format!("pid={pid}").as_bytes(),
        "the UDP socket serves"
    );
    pid
}

/// Stops and joins a supervisor even when the test fails.
struct StopOnDrop(
    Option<handoff::supervisor::Supervisor>,
    handoff::supervisor::SupervisorHandle,
);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.1.stop();
        if let Some(supervisor) = self.0.take() {
            let _ = supervisor.join();
        }
    }
}
