//! systemd integration: readiness notifications to a `NOTIFY_SOCKET` the
//! test binds, and socket activation with a `LISTEN_FDS` the test prepares.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::common::{IO, Start, Supervisor, TempDir, WAIT, request, serving_pid};

/// Receives notification datagrams until one contains `wanted`; returns it.
fn until(socket: &UnixDatagram, wanted: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {wanted:?} within {WAIT:?}; got {seen:?}"
        );
        socket.set_read_timeout(Some(left)).expect("timeout");
        let len = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {wanted:?} ({e}); got {seen:?}"));
        let message = String::from_utf8_lossy(&buf[..len]).into_owned();
        seen.push(message.clone());
        if message.lines().any(|line| line == wanted) {
            return message;
        }
    }
}

#[test]
fn notifications_follow_start_upgrade_and_stop() {
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&path).expect("bind the notify socket");
    let mut supervisor = Supervisor::spawn(Start {
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
        ..Start::default()
    });
    let mut seen = Vec::new();
    let ready = until(&notify, "READY=1", &mut seen);
    assert!(ready.contains("STATUS=serving: generation 1"), "{ready}");

    // Meant for the supervisor alone: a generation never sees it.
    let addr = supervisor.addr();
    let inherited = request(addr, "ENV NOTIFY_SOCKET").expect("ENV request");
    assert_eq!(inherited, "UNSET");

    let upgraded = supervisor.ctl("upgrade", &[]);
    assert_eq!(upgraded.code, Some(0), "{upgraded:?}");
    // Both were sent before the client got its answer (an ExecReload exits
    // only after systemd saw them): they are queued already.
    notify.set_nonblocking(true).expect("nonblocking");
    let mut queued = Vec::new();
    let mut buf = vec![0; 4096];
    while let Ok(len) = notify.recv(&mut buf) {
        queued.push(String::from_utf8_lossy(&buf[..len]).into_owned());
    }
    notify.set_nonblocking(false).expect("blocking");
    let position = |wanted: &str| {
        queued
            .iter()
            .position(|m| m.lines().any(|l| l == wanted))
            .unwrap_or_else(|| panic!("no {wanted} before the upgrade returned: {queued:?}"))
    };
    assert!(position("RELOADING=1") < position("READY=1"), "{queued:?}");
    seen.extend(queued.iter().cloned());
    let reloading = queued[position("RELOADING=1")].clone();
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading}"));
    assert!(usec > 0);
    let ready = &queued[position("READY=1")];
    assert!(ready.contains("STATUS=serving: generation 2"), "{ready}");

    let stopped = supervisor.ctl("stop", &[]);
    assert_eq!(stopped.code, Some(0), "{stopped:?}");
    until(&notify, "STOPPING=1", &mut seen);
    assert_eq!(supervisor.wait_exit().code(), Some(0));
}

#[test]
fn socket_activation_adopts_the_passed_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fd = OwnedFd::from(listener);
    // As systemd does: the socket on fd 3, LISTEN_PID naming the process
    // that runs handoffctl. The shell moves stdin to fd 3 and execs, so $$
    // is handoffctl's pid.
    let supervisor = Supervisor::start_with(Start {
        flags: vec!["--deadline".into(), "20s".into()],
        wrap: Some(Box::new(move |inner: Command| {
            let mut command = Command::new("/bin/sh");
            command
                .arg("-c")
                .arg(
                    "exec 3<&0 0</dev/null; \
                     export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=main; \
                     exec \"$0\" \"$@\"",
                )
                .arg(inner.get_program())
                .args(inner.get_args())
                .envs(
                    inner
                        .get_envs()
                        .filter_map(|(key, value)| value.map(|value| (key, value))),
                )
                .stdin(Stdio::from(fd));
            let log = inner_log(&inner);
            command.stderr(log).stdout(Stdio::null());
            command
        })),
        ..Start::default()
    });
    let status = supervisor.status();
    assert_eq!(status["listeners"][0]["name"], "main");
    assert_eq!(status["listeners"][0]["address"], addr.to_string());
    let pid = serving_pid(addr);
    assert_eq!(status["child_pid"], pid);
    assert!(
        supervisor
            .log()
            .contains("adopted a socket-activated listener")
    );
    let upgraded = supervisor.ctl("upgrade", &[]);
    assert_eq!(upgraded.code, Some(0), "{upgraded:?}");
    assert_ne!(
        serving_pid(addr),
        pid,
        "the same socket reaches the successor"
    );
    let _ = request(addr, "INFO").expect("still served");
    let _ = IO;
}

/// The log file the fixture opened for the inner command (the wrapper
/// writes to the same file).
fn inner_log(inner: &Command) -> std::fs::File {
    let socket = inner
        .get_args()
        .skip_while(|arg| *arg != "--socket")
        .nth(1)
        .expect("--socket");
    let dir = std::path::Path::new(socket).parent().expect("dir");
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("supervisor.log"))
        .expect("log")
}
