//! `kvd` on its own: the log survives a restart and a torn tail is cut; a
//! stop drains kept-alive connections at request boundaries and gives up on
//! a hung one at the drain timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::common::{self, IO, TempDir, WAIT};

/// Starts `kvd` alone on a free loopback port; returns it once it accepts.
fn start_kvd(data: &Path, extra: &[&str]) -> (Child, SocketAddr) {
    let (child, addr, _stderr) = start_kvd_logged(data, extra);
    (child, addr)
}

/// Like `start_kvd`, with kvd's stderr lines on a channel (a thread reads
/// the pipe, so kvd never blocks on it).
fn start_kvd_logged(
    data: &Path,
    extra: &[&str],
) -> (Child, SocketAddr, crossbeam_channel::Receiver<String>) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let mut child = Command::new(common::example("kvd"))
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg(addr.to_string())
        .args(extra)
        .env_remove(handoff::ENV_CONTROL_FD)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kvd");
    let (lines_tx, lines) = crossbeam_channel::unbounded();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            let _ = lines_tx.send(line);
        }
    });
    let until = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < until, "kvd never listened");
        std::thread::sleep(Duration::from_millis(5));
    }
    (child, addr, lines)
}

/// A response: status, lowercased head, body.
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

fn send(stream: &mut TcpStream, method: &str, path: &str, body: &[u8]) {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write head");
    stream.write_all(body).expect("write body");
}

fn read_reply(reader: &mut BufReader<TcpStream>) -> Reply {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line).expect("read head");
        assert!(read > 0, "connection closed before a full response");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("read body");
    Reply { status, head, body }
}

fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO)).expect("timeout");
    send(&mut stream, method, path, body);
    read_reply(&mut BufReader::new(stream))
}

fn stop(child: &mut Child) -> std::process::ExitStatus {
    handoff::os::signal(child.id(), handoff::os::Sig::Term).expect("SIGTERM");
    child.wait().expect("wait kvd")
}

/// Waits for EOF on `stream`; returns when it came.
fn eof_after(stream: &mut BufReader<TcpStream>, since: Instant) -> Duration {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("read to EOF");
    assert!(rest.is_empty(), "unexpected bytes before EOF");
    since.elapsed()
}

#[test]
fn kvd_replays_its_log_and_cuts_a_torn_tail() {
    let data = TempDir::new("kvd-log");
    let (mut kvd, addr) = start_kvd(data.path(), &[]);
    assert_eq!(request(addr, "PUT", "/kv/a", b"one").status, 200);
    assert_eq!(request(addr, "PUT", "/kv/b", b"two").status, 200);
    assert_eq!(request(addr, "GET", "/kv/missing", b"").status, 404);
    assert!(stop(&mut kvd).success());

    let log_path = data.path().join("kvd.log");
    let log = std::fs::read(&log_path).expect("log");
    let seal = std::fs::read_to_string(data.path().join("kvd.seal")).expect("seal record");
    assert_eq!(
        seal.trim(),
        format!(
            "revisions=2 fingerprint={}",
            handoff::Fingerprint::of_bytes(&log)
        )
    );
    // A crash in the middle of an append: a header promising more bytes.
    let mut torn = log.clone();
    torn.extend_from_slice(&[1, 0, 0, 0, 9, 0, 0, 0, b'c', b'x']);
    std::fs::write(&log_path, &torn).expect("tear the log");

    let (mut kvd, addr) = start_kvd(data.path(), &[]);
    assert_eq!(request(addr, "GET", "/kv/a", b"").body, b"one");
    assert_eq!(request(addr, "GET", "/kv/b", b"").body, b"two");
    assert_eq!(request(addr, "GET", "/kv/c", b"").status, 404);
    let info: serde_json::Value =
        serde_json::from_slice(&request(addr, "GET", "/info", b"").body).expect("info json");
    assert_eq!(info["revisions"], 2);
    assert_eq!(info["pid"], kvd.id());
    assert_eq!(std::fs::read(&log_path).expect("log"), log, "torn tail cut");
    assert!(stop(&mut kvd).success());
}

#[test]
fn kvd_stop_drains_kept_alive_connections_at_request_boundaries() {
    let data = TempDir::new("kvd-drain");
    let (mut kvd, addr, stderr) = start_kvd_logged(data.path(), &["--drain-timeout", "2"]);
    let open = || {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(IO)).expect("timeout");
        stream
    };
    // `busy` sends again during the drain; `idle` does not; `hung` never
    // finishes its request.
    let (mut busy, mut idle, mut hung) = (open(), open(), open());
    let mut busy_reader = BufReader::new(busy.try_clone().expect("clone"));
    let mut idle_reader = BufReader::new(idle.try_clone().expect("clone"));
    for (stream, reader) in [(&mut busy, &mut busy_reader), (&mut idle, &mut idle_reader)] {
        send(stream, "GET", "/healthz", b"");
        let reply = read_reply(reader);
        assert_eq!(reply.status, 200);
        assert!(!reply.head.contains("connection: close"));
    }
    hung.write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .expect("partial request");

    let stopped = Instant::now();
    handoff::os::signal(kvd.id(), handoff::os::Sig::Term).expect("SIGTERM");
    // kvd prints this once it is draining.
    let until = Instant::now() + WAIT;
    loop {
        let line = stderr
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .expect("kvd announces its drain");
        if line.contains("SIGTERM: draining") {
            break;
        }
    }
    send(&mut busy, "PUT", "/kv/late", b"still served");
    let reply = read_reply(&mut busy_reader);
    assert_eq!(reply.status, 200, "a request during the drain is served");
    assert!(reply.head.contains("connection: close"), "{}", reply.head);
    eof_after(&mut busy_reader, stopped);

    let idle_closed = eof_after(&mut idle_reader, stopped);
    assert!(
        idle_closed >= Duration::from_millis(200) && idle_closed < Duration::from_millis(1500),
        "an idle connection closes after the grace, not at once: {idle_closed:?}"
    );
    let mut hung_reader = BufReader::new(hung);
    let hung_closed = eof_after(&mut hung_reader, stopped);
    assert!(
        hung_closed >= Duration::from_millis(1900),
        "a hung connection is cut at the drain timeout: {hung_closed:?}"
    );
    let status = kvd.wait().expect("wait kvd");
    assert!(status.success(), "{status}");
    assert!(stopped.elapsed() < Duration::from_secs(5));

    // The write acknowledged during the drain is durable.
    let (mut kvd, addr) = start_kvd(data.path(), &[]);
    assert_eq!(request(addr, "GET", "/kv/late", b"").body, b"still served");
    assert!(stop(&mut kvd).success());
}

#[test]
fn kvd_refuses_a_log_with_a_record_that_does_not_decode() {
    let data = TempDir::new("kvd-corrupt");
    // One good record, then a complete one whose key is not UTF-8.
    let mut log = vec![1, 0, 0, 0, 1, 0, 0, 0, b'a', b'1'];
    log.extend_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, 0xff, b'2']);
    let log_path = data.path().join("kvd.log");
    std::fs::write(&log_path, &log).expect("write log");
    let mut kvd = Command::new(common::example("kvd"))
        .arg("--data-dir")
        .arg(data.path())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env_remove(handoff::ENV_CONTROL_FD)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn kvd");
    let until = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = kvd.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < until, "kvd served a corrupt log");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(!status.success());
    assert_eq!(std::fs::read(&log_path).expect("log"), log, "nothing cut");
}
