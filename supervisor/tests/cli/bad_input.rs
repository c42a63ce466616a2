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

/// `handoffctl run` refuses each of these with one line holding every
/// listed piece (the flag, key or path as written, and the fix).
#[test]
fn bad_run_input_is_one_line() {
    let dir = TempDir::new("bad");
    let socket = dir.path().join("admin.sock");
    let socket = socket.to_str().expect("utf-8").to_owned();
    let testd = testd().to_str().expect("utf-8").to_owned();
    let file = |name: &str, contents: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path.to_str().expect("utf-8").to_owned()
    };
    let missing = dir.path().join("missing.toml");
    let invalid = file("invalid.toml", "mode = \"sideways\"\n", 0o644);
    // A config that pins the binary to other contents: generation 1 is
    // not started.
    let zeros = "0".repeat(64);
    let pinned = file("pinned.toml", &format!("sha256 = \"{zeros}\"\n"), 0o644);
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = format!("main={}", taken.local_addr().expect("addr"));
    let long = format!("/tmp/{}/admin.sock", "x".repeat(120));
    let plain = file("not-executable", "data", 0o644);
    let unknown_format = file("unknown-format", "data", 0o755);
    let expected_zeros = format!("expected {zeros}");
    let cases: Vec<(Vec<&str>, &str, Vec<&str>)> = vec![
        (
            vec!["--config", missing.to_str().expect("utf-8")],
            &testd,
            vec!["cannot read config"],
        ),
        (
            vec!["--config", &invalid],
            &testd,
            vec!["invalid config", "line 1"],
        ),
        (
            vec!["--listen", "main=nowhere:80"],
            &testd,
            vec!["nowhere:80"],
        ),
        (vec!["--listen", "main"], &testd, vec!["NAME=ADDR"]),
        (
            vec![
                "--listen",
                "main=127.0.0.1:0",
                "--listen",
                "main=127.0.0.1:0",
            ],
            &testd,
            vec!["given twice"],
        ),
        (
            vec!["--listen", "a:b=127.0.0.1:0"],
            &testd,
            vec!["without ':'"],
        ),
        (
            vec!["--data-dir", "/proc/no-such-directory"],
            &testd,
            vec!["--data-dir /proc/no-such-directory"],
        ),
        (
            vec!["--probe", "http://127.0.0.1:9/", "--probe-status", "999"],
            &testd,
            vec!["--probe-status 999"],
        ),
        (vec!["--listen", &taken], &testd, vec!["in use"]),
        (vec![], "/nonexistent/daemon", vec!["/nonexistent/daemon"]),
        (vec![], &plain, vec!["not executable"]),
        (
            vec![],
            &unknown_format,
            vec!["neither an ELF executable nor a #! script"],
        ),
        (
            vec!["--config", &pinned],
            &testd,
            vec!["has sha256", &expected_zeros],
        ),
        (
            vec!["--deadline", "soon"],
            &testd,
            vec!["--deadline \"soon\""],
        ),
        // Errors name the flags, never the library's field names.
        (
            vec!["--deadline", "5s", "--drain-timeout", "10s"],
            &testd,
            vec!["--drain-timeout", "--deadline"],
        ),
    ];
    for (flags, daemon, pieces) in cases {
        let line = run(&[&["--socket", &socket][..], &flags, &["--", daemon]].concat());
        for piece in pieces {
            assert!(
                line.contains(piece),
                "{flags:?} {daemon}: {piece:?} not in {line}"
            );
        }
        assert!(
            !line.contains("drain_grace") && !line.contains("handoff_deadline"),
            "{line}"
        );
    }
    let line = run(&["--socket", &long, "--", &testd]);
    assert!(line.contains("108"), "{line}");
    let line = run(&["--socket", &socket]);
    assert!(line.contains("no daemon binary"), "{line}");
    assert!(
        !std::path::Path::new(&socket).exists(),
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
