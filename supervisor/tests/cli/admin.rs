//! The admin socket's defences: peers of another uid, garbage, silence,
//! oversized requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use crate::common::{IO, Ran, Supervisor, WAIT, handoffctl, run_bounded};

/// The uid/gid the test client drops to (`nobody`).
const NOBODY: u32 = 65534;

fn status_as_nobody(supervisor: &Supervisor) -> Ran {
    let mut command = Command::new(handoffctl());
    command
        .arg("status")
        .arg("--socket")
        .arg(&supervisor.socket)
        .uid(NOBODY)
        .gid(NOBODY);
    run_bounded(command).into()
}

#[test]
fn an_admin_client_of_another_uid_is_refused() {
    if handoff::os::effective_uid() != 0 {
        eprintln!(
            "SKIPPED an_admin_client_of_another_uid_is_refused: needs root to run a client \
             under another uid (CI runs as root)"
        );
        return;
    }
    let supervisor = Supervisor::start();
    let mode = std::fs::symlink_metadata(&supervisor.socket)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the admin socket is 0600");

    // First wall: the file mode.
    let denied = status_as_nobody(&supervisor);
    assert_eq!(denied.code, Some(2), "{denied:?}");
    assert!(
        denied.one_error_line().contains("ermission denied"),
        "{denied:?}"
    );

    // Second wall: with the mode opened up by mistake, SO_PEERCRED still
    // refuses the uid, and the supervisor logs it.
    std::fs::set_permissions(&supervisor.socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod");
    let refused = status_as_nobody(&supervisor);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.one_error_line().contains("uid 65534 may not"),
        "{refused:?}"
    );
    assert!(
        supervisor.log().contains("admin connection refused"),
        "logged: {}",
        supervisor.log()
    );
    supervisor.wait_serving();
}

fn connect(supervisor: &Supervisor) -> UnixStream {
    let stream = UnixStream::connect(&supervisor.socket).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.set_write_timeout(Some(IO)).expect("timeout");
    stream
}

fn answer(stream: &UnixStream) -> Value {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("answer");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[test]
fn garbage_and_silent_clients_do_not_stall_the_supervisor() {
    let supervisor = Supervisor::start();

    // Silent clients hold their connections open...
    let silent: Vec<UnixStream> = (0..4).map(|_| connect(&supervisor)).collect();
    let started = Instant::now();
    // ...while others are served at once.
    let mut garbage = connect(&supervisor);
    garbage
        .write_all(b"\x00\xffnot json at all\n")
        .expect("write");
    let reply = answer(&garbage);
    assert_eq!(reply["result"], "error");
    assert_eq!(reply["kind"], "bad_request");

    let mut wrong = connect(&supervisor);
    wrong
        .write_all(b"{\"command\":\"reboot\"}\n")
        .expect("write");
    assert_eq!(answer(&wrong)["kind"], "bad_request");

    let mut long = connect(&supervisor);
    // No newline, over the line limit: cut off, not buffered for ever.
    let chunk = vec![b'x'; 80 * 1024];
    let _ = long.write_all(&chunk);
    assert_eq!(answer(&long)["kind"], "bad_request");

    let status = supervisor.ctl("status", &["--json"]);
    assert_eq!(status.code, Some(0), "{status:?}");
    assert!(
        started.elapsed() < handoff::Timeouts::default().admin_request,
        "served while silent clients wait"
    );

    // A silent client is answered and cut off after the request bound.
    for mut stream in silent {
        let mut rest = String::new();
        let _ = stream.read_to_string(&mut rest);
        assert!(rest.contains("bad_request"), "{rest:?}");
    }
    let upgraded = supervisor.ctl("upgrade", &[]);
    assert_eq!(upgraded.code, Some(0), "{upgraded:?}");
}

#[test]
fn admin_connections_beyond_the_cap_are_answered_overloaded() {
    // The cap of `admin::MAX_CONNECTIONS` in the binary.
    const CAP: usize = 32;
    let supervisor = Supervisor::start();
    let held: Vec<UnixStream> = (0..CAP).map(|_| connect(&supervisor)).collect();
    let extra = connect(&supervisor);
    let reply = answer(&extra);
    assert_eq!(reply["kind"], "overloaded", "{reply}");
    // Closing the held connections frees their slots.
    drop(held);
    supervisor.wait_serving();
}
