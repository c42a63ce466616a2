//! Bad input: one clear line and a non-zero exit, never a panic.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

use crate::common::{TempDir, ctl, testd};

fn run(args: &[&str]) -> String {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let ran = ctl(&all);
    assert_ne!(ran.code, Some(0), "{args:?}: {ran:?}");
    assert_ne!(ran.code, None, "{args:?} died of a signal: {ran:?}");
    ran.one_error_line().to_owned()
}

#[test]
fn bad_run_input_is_one_line() {
    let dir = TempDir::new("bad");
    let socket = dir.path().join("admin.sock");
    let socket = socket.to_str().expect("utf-8");
    let testd = testd();
    let testd = testd.to_str().expect("utf-8");

    let missing = dir.path().join("missing.toml");
    let line = run(&["--config", missing.to_str().expect("utf-8"), "--", testd]);
    assert!(line.contains("cannot read config"), "{line}");

    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, "mode = \"sideways\"\n").expect("write");
    let line = run(&["--config", invalid.to_str().expect("utf-8"), "--", testd]);
    assert!(
        line.contains("invalid config") && line.contains("line 1"),
        "{line}"
    );

    let line = run(&[
        "--socket",
        socket,
        "--listen",
        "main=nowhere:80",
        "--",
        testd,
    ]);
    assert!(line.contains("nowhere:80"), "{line}");
    let line = run(&["--socket", socket, "--listen", "main", "--", testd]);
    assert!(line.contains("NAME=ADDR"), "{line}");
    let twice = [
        "--listen",
        "main=127.0.0.1:0",
        "--listen",
        "main=127.0.0.1:0",
    ];
    let line = run(&[&["--socket", socket][..], &twice, &["--", testd]].concat());
    assert!(line.contains("given twice"), "{line}");
    let line = run(&[
        "--socket",
        socket,
        "--listen",
        "a:b=127.0.0.1:0",
        "--",
        testd,
    ]);
    assert!(line.contains("without ':'"), "{line}");
    let data = ["--data-dir", "/proc/no-such-directory"];
    let line = run(&[&["--socket", socket][..], &data, &["--", testd]].concat());
    assert!(
        line.contains("--data-dir /proc/no-such-directory"),
        "{line}"
    );
    let probe = ["--probe", "http://127.0.0.1:9/", "--probe-status", "999"];
    let line = run(&[&["--socket", socket][..], &probe, &["--", testd]].concat());
    assert!(line.contains("--probe-status 999"), "{line}");

    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = format!("main={}", taken.local_addr().expect("addr"));
    let line = run(&["--socket", socket, "--listen", &taken, "--", testd]);
    assert!(line.to_lowercase().contains("in use"), "{line}");

    let line = run(&["--socket", socket, "--", "/nonexistent/daemon"]);
    assert!(line.contains("/nonexistent/daemon"), "{line}");
    let plain = dir.path().join("not-executable");
    std::fs::write(&plain, "data").expect("write");
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let line = run(&["--socket", socket, "--", plain.to_str().expect("utf-8")]);
    assert!(line.contains("not executable"), "{line}");
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let line = run(&["--socket", socket, "--", plain.to_str().expect("utf-8")]);
    assert!(
        line.contains("neither an ELF executable nor a #! script"),
        "{line}"
    );

    let long = format!("/tmp/{}/admin.sock", "x".repeat(120));
    let line = run(&["--socket", &long, "--", testd]);
    assert!(line.contains("108"), "{line}");

    // A config that pins the binary to other contents: generation 1 is
    // not started.
    let pinned = dir.path().join("pinned.toml");
    std::fs::write(&pinned, format!("sha256 = \"{}\"\n", "0".repeat(64))).expect("write");
    let line = run(&[
        "--socket",
        socket,
        "--config",
        pinned.to_str().expect("utf-8"),
        "--",
        testd,
    ]);
    assert!(
        line.contains("has sha256") && line.contains(&format!("expected {}", "0".repeat(64))),
        "{line}"
    );

    let line = run(&["--socket", socket, "--deadline", "soon", "--", testd]);
    assert!(line.contains("--deadline \"soon\""), "{line}");
    // Errors name the flags, never the library's field names.
    let line = run(&[
        "--socket",
        socket,
        "--deadline",
        "5s",
        "--drain-timeout",
        "10s",
        "--",
        testd,
    ]);
    assert!(
        line.contains("--drain-timeout") && line.contains("--deadline"),
        "{line}"
    );
    assert!(
        !line.contains("drain_grace") && !line.contains("handoff_deadline"),
        "{line}"
    );
    let line = run(&["--socket", socket]);
    assert!(line.contains("no daemon binary"), "{line}");
    assert!(
        !std::path::Path::new(socket).exists(),
        "no socket left behind"
    );
}

/// A request delivered and then met by a closed connection (the supervisor
/// died while it worked) has an unknown outcome: exit 1, not the exit 2 of
/// "nothing started", and the JSON says it failed.
#[test]
fn a_request_delivered_without_an_answer_is_an_unknown_outcome() {
    use std::io::BufRead;
    let dir = TempDir::new("noanswer");
    let path = dir.path().join("admin.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut request = String::new();
        std::io::BufReader::new(&stream)
            .read_line(&mut request)
            .expect("read the request");
        // Closed without an answer.
        request
    });
    let socket = path.to_str().expect("utf-8");
    let ran = ctl(&["upgrade", "--socket", socket, "--json"]);
    let request = server.join().expect("the fake supervisor");
    assert!(request.contains("upgrade"), "{request}");
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.one_error_line().contains("unknown"), "{ran:?}");
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).expect("one JSON object");
    assert_eq!(json["failed"], true, "{json}");
    assert_eq!(json["kind"], "outcome_unknown", "{json}");
}

#[test]
fn clients_without_a_supervisor_exit_2() {
    let dir = TempDir::new("nosup");
    let socket = dir.path().join("admin.sock");
    let socket = socket.to_str().expect("utf-8");
    for verb in ["status", "upgrade", "stop"] {
        let ran = ctl(&[verb, "--socket", socket]);
        assert_eq!(ran.code, Some(2), "{verb}: {ran:?}");
        assert!(ran.one_error_line().contains("no supervisor"), "{ran:?}");
    }
    for verb in ["status", "upgrade", "history"] {
        let ran = ctl(&[verb, "--socket", socket, "--json"]);
        let json: serde_json::Value = serde_json::from_str(&ran.stdout).expect("one JSON object");
        assert_eq!(json["kind"], "unreachable", "{verb}: {json}");
    }
    let ran = ctl(&["upgrade", "--socket", socket, "--sha256", "xyz"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    let ran = ctl(&["upgrade", "--bogus"]);
    assert_eq!(ran.code, Some(2), "clap usage errors exit 2: {ran:?}");
    // With --json, one JSON object too.
    for args in [&["upgrade", "--json", "--bogus"][..], &["wait", "--json"]] {
        let ran = ctl(args);
        assert_eq!(ran.code, Some(2), "{args:?}: {ran:?}");
        let json: serde_json::Value = serde_json::from_str(&ran.stdout).expect("one JSON object");
        assert_eq!(json["failed"], true, "{json}");
        assert_eq!(json["kind"], "usage", "{json}");
        let msg = json["msg"].as_str().expect("msg");
        assert!(
            msg.contains("--bogus") || msg.contains("--serving-for"),
            "{msg}"
        );
    }
}
