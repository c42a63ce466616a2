//! systemd's fd store under `handoffctl run --protocol systemd`: the Python
//! daemon (`examples/foreign/httpd.py --fd-store counter`) keeps a start
//! counter in a memfd it stores with `FDSTORE=1` and takes back by name
//! from `LISTEN_FDS` at every start; more fds are stored through its HTTP
//! requests (`/store`, `/hangup`, `/remove`).

use std::net::SocketAddr;

use serde_json::Value;

use crate::common::{Start, Supervisor, u64_of, wait_gone};
use crate::foreign::{get, httpd, pid_of, python, upgrade};

/// A supervisor of httpd.py keeping its counter under `counter`.
fn start(flags: &[&str]) -> Supervisor {
    let mut all: Vec<String> = [
        "--listen",
        "http=127.0.0.1:0",
        "--protocol",
        "systemd",
        "--deadline",
        "20s",
        "--drain-timeout",
        "5s",
    ]
    .map(String::from)
    .to_vec();
    all.extend(flags.iter().map(|flag| flag.to_string()));
    Supervisor::start_with(Start {
        flags: all,
        daemon: Some(vec![
            python(),
            httpd().display().to_string(),
            "--fd-store".into(),
            "counter".into(),
        ]),
        ..Start::default()
    })
}

/// `GET path`, which must answer.
fn ask(addr: SocketAddr, path: &str) -> String {
    get(addr, path).unwrap_or_else(|error| panic!("GET {path}: {error}"))
}

/// The serving generation's counter.
fn counter(addr: SocketAddr) -> u64 {
    let body = ask(addr, "/counter");
    body.strip_prefix("counter=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {body:?}"))
}

/// `status --json`'s store: `name kind count` per row.
fn rows(status: &Value) -> Vec<String> {
    status["fd_store"]["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no fd_store in {status}"))
        .iter()
        .map(|row| format!("{} {} {}", row["name"], row["kind"], row["count"]).replace('"', ""))
        .collect()
}

/// Waits until the store holds exactly `expected`.
fn wait_rows(supervisor: &Supervisor, expected: &[&str]) -> Value {
    supervisor.wait_status(&format!("the fd store holding {expected:?}"), |status| {
        rows(status) == expected
    })
}

/// An upgrade that commits; the new generation's pid once the old one is
/// gone.
fn upgrade_committed(supervisor: &Supervisor, old: u32) -> u32 {
    let (code, report) = upgrade(supervisor, &[]);
    assert_eq!(code, Some(0), "{report}; log:\n{}", supervisor.log());
    wait_gone(old);
    u64_of(&report, "new_pid") as u32
}

#[test]
fn a_stored_memfd_survives_ten_upgrades_and_a_crash_until_it_is_removed() {
    let supervisor = start(&[]);
    let addr = supervisor.addr();
    assert_eq!(counter(addr), 0, "a fresh memfd");
    let status = wait_rows(&supervisor, &["counter memfd 1"]);
    assert_eq!(status["fd_store"]["max"], 16, "the default bound");
    let mut pid = pid_of(addr);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        environ.split(|&b| b == 0).any(|var| var == b"FDSTORE=16"),
        "systemd.exec's FDSTORE= names the bound"
    );
    for round in 1..=10 {
        pid = upgrade_committed(&supervisor, pid);
        assert_eq!(counter(addr), round, "upgrade {round}");
        // Stored again at every start: the same memfd counts once.
        assert_eq!(rows(&supervisor.status()), ["counter memfd 1"]);
    }

    // A crash: the restart gets the memfd back.
    handoff::os::signal(pid, handoff::os::Sig::Kill).expect("kill -9");
    wait_gone(pid);
    let status = supervisor.wait_status("the restarted generation", |status| {
        status["state"] == "serving" && status["child_pid"].as_u64() != Some(u64::from(pid))
    });
    pid = u64_of(&status, "child_pid") as u32;
    assert_eq!(
        counter(addr),
        11,
        "after the crash; log:\n{}",
        supervisor.log()
    );

    // FDSTOREREMOVE=1: the next generation starts from a fresh memfd.
    assert_eq!(ask(addr, "/remove?name=counter"), "removed");
    wait_rows(&supervisor, &[]);
    assert!(supervisor.log().contains("fd store: removed"));
    upgrade_committed(&supervisor, pid);
    assert_eq!(counter(addr), 0, "removed: a fresh start");
    wait_rows(&supervisor, &["counter memfd 1"]);
}

#[test]
fn the_store_survives_a_reexec_of_the_supervisor() {
    let supervisor = start(&[]);
    let addr = supervisor.addr();
    assert_eq!(counter(addr), 0);
    ask(addr, "/store?name=peer&kind=socket");
    ask(addr, "/store?name=quiet&kind=socket&poll=0");
    wait_rows(
        &supervisor,
        &["counter memfd 1", "peer unix 1", "quiet unix 1"],
    );
    let ran = supervisor.ctl("reexec", &["--json"]);
    assert_eq!(ran.code, Some(0), "{ran:?}; log:\n{}", supervisor.log());
    let status = supervisor.status();
    assert_eq!(
        rows(&status),
        ["counter memfd 1", "peer unix 1", "quiet unix 1"],
        "the new image holds the same store"
    );
    // FDPOLL=0 crossed the exec too.
    ask(addr, "/hangup?name=peer");
    ask(addr, "/hangup?name=quiet");
    wait_rows(&supervisor, &["counter memfd 1", "quiet unix 1"]);
    let pid = pid_of(addr);
    upgrade_committed(&supervisor, pid);
    assert_eq!(counter(addr), 1, "the new image handed the memfd back");
}

#[test]
fn the_bound_refuses_the_fd_past_it_and_the_daemon_keeps_serving() {
    let supervisor = start(&["--fd-store-max", "2"]);
    let addr = supervisor.addr();
    wait_rows(&supervisor, &["counter memfd 1"]);
    ask(addr, "/store?name=extra");
    wait_rows(&supervisor, &["counter memfd 1", "extra memfd 1"]);
    let from = supervisor.log().len();
    ask(addr, "/store?name=over");
    supervisor.wait_log("fd store full", from);
    assert!(
        supervisor.log()[from..].contains("--fd-store-max"),
        "the line names the flag to raise"
    );
    assert_eq!(
        rows(&supervisor.status()),
        ["counter memfd 1", "extra memfd 1"]
    );
    let pid = pid_of(addr);
    assert_eq!(counter(addr), 0, "the daemon keeps serving");
    upgrade_committed(&supervisor, pid);
    assert_eq!(counter(addr), 1);
    assert_eq!(
        rows(&supervisor.status()),
        ["counter memfd 1", "extra memfd 1"]
    );
}

#[test]
fn a_bound_of_zero_turns_the_store_off() {
    let supervisor = start(&["--fd-store-max", "0"]);
    let addr = supervisor.addr();
    supervisor.wait_log(
        "fd store off: fds refused and closed (set --fd-store-max",
        0,
    );
    let status = supervisor.status();
    assert_eq!(status["fd_store"]["max"], 0);
    assert!(rows(&status).is_empty());
    let pid = pid_of(addr);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        !environ
            .split(|&b| b == 0)
            .any(|var| var.starts_with(b"FDSTORE=")),
        "no FDSTORE= when the store is off"
    );
    upgrade_committed(&supervisor, pid);
    assert_eq!(counter(addr), 0, "nothing was kept");
}

#[test]
fn a_stored_socket_whose_peer_hangs_up_is_dropped_unless_stored_with_fdpoll_0() {
    let supervisor = start(&[]);
    let addr = supervisor.addr();
    ask(addr, "/store?name=peer&kind=socket");
    ask(addr, "/store?name=quiet&kind=socket&poll=0");
    wait_rows(
        &supervisor,
        &["counter memfd 1", "peer unix 1", "quiet unix 1"],
    );
    let ctl = supervisor.ctl("status", &[]);
    assert!(
        ctl.stdout
            .contains("fd store    3 of 16: counter (memfd), peer (unix), quiet (unix)"),
        "{ctl:?}"
    );
    ask(addr, "/hangup?name=peer");
    ask(addr, "/hangup?name=quiet");
    wait_rows(&supervisor, &["counter memfd 1", "quiet unix 1"]);
    assert!(supervisor.log().contains("peer hung up"));
    // The next generation gets what is left, in the order stored.
    let pid = pid_of(addr);
    upgrade_committed(&supervisor, pid);
    let environ = std::fs::read(format!("/proc/{}/environ", pid_of(addr))).expect("environ");
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|var| var == b"LISTEN_FDNAMES=http:counter:quiet"),
        "{}",
        String::from_utf8_lossy(&environ)
    );
}

#[test]
fn fds_the_store_refuses_are_logged_and_closed() {
    let supervisor = start(&[]);
    let addr = supervisor.addr();
    wait_rows(&supervisor, &["counter memfd 1"]);
    // The refused fds are the daemon's memfds named "x" (and the child's
    // "from-child"): none of them may stay open in the supervisor.
    let refused_held = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fd dir")
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .map(|target| target.to_string_lossy().into_owned())
            .filter(|target| {
                target.starts_with("/memfd:x ") || target.starts_with("/memfd:from-child ")
            })
            .count()
    };
    let mut from = supervisor.log().len();
    for (request, line) in [
        (
            "/store?name=x&sender=child",
            "fds from another process than the generation refused and closed",
        ),
        (
            "/store?name=x&nostore=1",
            "fds sent with a notification without FDSTORE=1 are closed",
        ),
        (
            "/remove",
            "FDSTOREREMOVE=1 without a valid FDNAME=; ignored",
        ),
    ] {
        ask(addr, request);
        from = supervisor.wait_log(line, from);
    }
    testkit::eventually("the refused fds closed in the supervisor", || {
        refused_held(supervisor.pid()) == 0
    });
    // An invalid name: stored, as "stored".
    ask(addr, "/store?name=a:b");
    supervisor.wait_log("FDNAME= is not a valid name", from);
    wait_rows(&supervisor, &["counter memfd 1", "stored memfd 1"]);
}

#[test]
fn the_fd_store_bound_needs_the_foreign_protocol_and_a_count() {
    let ran = crate::common::ctl(&["run", "--fd-store-max", "4", "--", "/bin/true"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(
        ran.one_error_line()
            .contains("--fd-store-max applies to a daemon under --protocol systemd only"),
        "{ran:?}"
    );
    for bad in ["--fd-store-max=-1", "--fd-store-max=many"] {
        let ran = crate::common::ctl(&["run", "--protocol", "systemd", bad, "--", "/bin/true"]);
        assert_eq!(ran.code, Some(2), "{bad}: {ran:?}");
        assert!(ran.stderr.contains("--fd-store-max"), "{bad}: {ran:?}");
    }
}
