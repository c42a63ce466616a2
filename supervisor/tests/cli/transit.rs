//! Client connections travel with the handoff (I20), with real builds of
//! kvd (exclusive) and echod (overlap) under `handoffctl run`: a kept-alive
//! connection goes on, on the same socket, served by the new generation; a
//! request sent byte by byte across the transfer is answered once; a
//! rollback gives every connection back to the incumbent; past what the
//! processes can hold a connection drains the old way; and 10,000 idle
//! connections cross one upgrade.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::common::{IO, Start, Supervisor, TempDir, example, u64_of};

/// One kept-alive HTTP/1.1 connection, read with a buffer of its own.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
    local_port: u16,
}

/// A response: status, whether it said `Connection: close`, body.
pub struct Answer {
    pub status: u16,
    pub closes: bool,
    pub body: String,
}

impl KeepAlive {
    pub fn open(addr: SocketAddr) -> KeepAlive {
        KeepAlive::from_stream(TcpStream::connect_timeout(&addr, IO).expect("connect"))
    }

    /// A connection opened already.
    pub fn from_stream(stream: TcpStream) -> KeepAlive {
        stream.set_read_timeout(Some(IO)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        let local_port = stream.local_addr().expect("local").port();
        KeepAlive {
            reader: BufReader::new(stream),
            local_port,
        }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    pub fn request(&mut self, method: &str, path: &str, body: &str) -> Result<Answer, String> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(head.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        self.answer()
    }

    fn answer(&mut self) -> Result<Answer, String> {
        let mut line = String::new();
        let read = self
            .reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        if read == 0 {
            return Err("connection closed with no answer".into());
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let (mut length, mut closes) = (0, false);
        loop {
            let mut header = String::new();
            self.reader
                .read_line(&mut header)
                .map_err(|e| format!("read: {e}"))?;
            let header = header.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(value) = header.strip_prefix("content-length:") {
                length = value.trim().parse().map_err(|_| "bad length")?;
            }
            closes |= header == "connection: close";
        }
        let mut body = vec![0; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| format!("body: {e}"))?;
        let body = String::from_utf8(body).map_err(|_| "body not utf-8")?;
        Ok(Answer {
            status,
            closes,
            body,
        })
    }

    /// `/info` on this connection: the pid that answered; the answer must
    /// keep the connection open.
    pub fn pid(&mut self) -> u64 {
        let answer = self.request("GET", "/info", "").expect("/info");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(!answer.closes, "the server asked to close the connection");
        let info: Value = serde_json::from_str(&answer.body).expect("json");
        u64_of(&info, "pid")
    }
}

/// A supervisor running kvd (exclusive) or echod (overlap) on `http`.
pub fn supervise(daemon: &str, dir: &TempDir, env: Vec<(String, String)>) -> Supervisor {
    let mut flags = vec!["--listen".to_owned(), "http=127.0.0.1:0".to_owned()];
    if daemon == "kvd" {
        let data = dir.path().join("data");
        flags.extend(["--data-dir".into(), data.display().to_string()]);
    } else {
        flags.extend(["--mode".into(), "overlap".into()]);
    }
    Supervisor::start_with(Start {
        flags,
        daemon: Some(vec![example(daemon).display().to_string()]),
        env,
        ..Start::default()
    })
}

/// `upgrade --json` to the same build: the report.
fn upgrade(supervisor: &Supervisor, daemon: &str) -> (Option<i32>, Value) {
    let binary = example(daemon);
    let ran = supervisor.ctl(
        "upgrade",
        &["--binary", binary.to_str().expect("utf-8"), "--json"],
    );
    let report = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|_| panic!("{ran:?}; log:\n{}", supervisor.log()));
    (ran.code, report)
}

/// How many connections the supervisor's log says went to `generation`.
pub fn handed_over_to(log: &str, generation: u64) -> u64 {
    let prefix = format!("client connections handed over generation={generation} count=");
    log.lines()
        .filter_map(|line| line.split_once(&prefix))
        .filter_map(|(_, count)| count.trim().parse::<u64>().ok())
        .sum()
}

#[test]
fn kept_alive_connections_cross_every_upgrade_on_their_own_socket_in_both_modes() {
    for daemon in ["kvd", "echod"] {
        let dir = TempDir::new("transit-modes");
        let supervisor = supervise(daemon, &dir, Vec::new());
        let addr = supervisor.addr_of("http");
        let mut clients: Vec<_> = (0..8).map(|_| KeepAlive::open(addr)).collect();
        let ports: Vec<_> = clients.iter().map(|c| c.local_port).collect();
        let mut serving = clients[0].pid();
        for client in &mut clients {
            assert_eq!(client.pid(), serving);
        }
        for round in 0..5 {
            let (code, report) = upgrade(&supervisor, daemon);
            assert_eq!(code, Some(0), "{daemon} round {round}: {report}");
            let new_pid = u64_of(&report, "new_pid");
            assert_ne!(new_pid, serving);
            // Overlap mode: the old generation drains after the commit and
            // serves until it hands a connection over; once it is gone,
            // the same sockets (no reconnect) are served by the successor.
            crate::common::wait_gone(u32::try_from(serving).expect("pid"));
            for client in &mut clients {
                assert_eq!(client.pid(), new_pid, "{daemon} round {round}");
            }
            serving = new_pid;
        }
        let now: Vec<_> = clients.iter().map(|c| c.local_port).collect();
        assert_eq!(now, ports);
        // Every round moved all eight (generations 2 to 6 got them).
        let log = supervisor.log();
        for generation in 2..=6 {
            assert_eq!(handed_over_to(&log, generation), 8, "{daemon}: {log}");
        }
    }
}

/// The bytes the kernel holds unread on the server's side of the loopback
/// connection from `client` to `server` (`/proc/net/tcp`'s rx_queue).
fn server_unread(server: SocketAddr, client: u16) -> Option<u64> {
    let hex_port = |port: u16| format!("{port:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, queues) = (fields.get(1)?, fields.get(2)?, fields.get(4)?);
        let ours = local.ends_with(&format!(":{}", hex_port(server.port())))
            && remote.ends_with(&format!(":{}", hex_port(client)));
        let (_, rx) = queues.split_once(':')?;
        ours.then(|| u64::from_str_radix(rx, 16).ok()).flatten()
    })
}

#[test]
fn a_request_sent_byte_by_byte_across_the_transfer_is_answered_once() {
    let dir = TempDir::new("transit-bytes");
    let supervisor = supervise("kvd", &dir, Vec::new());
    let addr = supervisor.addr_of("http");
    let mut client = KeepAlive::open(addr);
    let old_pid = client.pid();
    let revisions = |client: &mut KeepAlive| {
        let answer = client.request("GET", "/info", "").expect("info");
        u64_of(
            &serde_json::from_str(&answer.body).expect("json"),
            "revisions",
        )
    };
    let before = revisions(&mut client);
    let request = b"PUT /kv/slow HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\n\r\nhello";
    // The first bytes go before the upgrade, one by one, and the
    // incumbent reads them (the kernel holds none): it hands over a
    // connection whose request it has only begun to read, the bytes in
    // hyper's buffer going along. The rest go, one by one, to the
    // successor once it committed.
    let (first, rest) = request.split_at(12);
    for byte in first {
        client.send(&[*byte]).expect("a byte");
    }
    testkit::eventually("the incumbent read the first bytes", || {
        server_unread(addr, client.local_port) == Some(0)
    });
    let upgraded = supervisor.ctl(
        "upgrade",
        &[
            "--binary",
            example("kvd").to_str().expect("utf-8"),
            "--json",
        ],
    );
    assert_eq!(upgraded.code, Some(0), "{upgraded:?}");
    assert_eq!(
        handed_over_to(&supervisor.log(), 2),
        1,
        "{}",
        supervisor.log()
    );
    for byte in rest {
        client.send(&[*byte]).expect("a byte");
    }
    let answer = client.answer().expect("the PUT's answer");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_ne!(
        client.pid(),
        old_pid,
        "the connection moved to the successor"
    );
    let value = client.request("GET", "/kv/slow", "").expect("GET");
    assert_eq!((value.status, value.body.as_str()), (200, "hello"));
    assert_eq!(revisions(&mut client), before + 1, "written exactly once");
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_rollback_gives_every_connection_handed_over_back_to_the_incumbent_still_working() {
    let dir = TempDir::new("transit-rollback");
    // The successor (generation 2) exits once it has begun: after the
    // incumbent drained, handed its connections over and sealed.
    let env = vec![
        (
            "HANDOFF_FAULT".to_owned(),
            "successor:begun:exit".to_owned(),
        ),
        ("HANDOFF_FAULT_GENERATION".to_owned(), "2".to_owned()),
    ];
    let supervisor = supervise("kvd", &dir, env);
    let addr = supervisor.addr_of("http");
    let mut clients: Vec<_> = (0..5).map(|_| KeepAlive::open(addr)).collect();
    let incumbent = clients[0].pid();
    for client in &mut clients {
        assert_eq!(
            client.request("PUT", "/kv/a", "1").expect("put").status,
            200
        );
    }
    let (code, report) = upgrade(&supervisor, "kvd");
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["committed"], false);
    let log = supervisor.log();
    assert_eq!(
        handed_over_to(&log, 1),
        5,
        "every connection went back to generation 1; log:\n{log}"
    );
    for client in &mut clients {
        assert_eq!(client.pid(), incumbent);
        let answer = client.request("PUT", "/kv/a", "2").expect("put after");
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
}

#[test]
fn ten_thousand_idle_connections_cross_one_upgrade() {
    const CONNECTIONS: usize = 10_000;
    let limit = handoff::os::raise_open_files().expect("open-file limit");
    // This test, the supervisor and two generations each hold them all.
    assert!(
        limit > CONNECTIONS as u64 + 1024,
        "the hard limit on open files ({limit}) is too low for this test; raise it (ulimit -Hn)"
    );
    let dir = TempDir::new("transit-10k");
    let supervisor = supervise("kvd", &dir, Vec::new());
    let addr = supervisor.addr_of("http");
    let mut clients: Vec<_> = (0..CONNECTIONS).map(|_| KeepAlive::open(addr)).collect();
    let old_pid = clients[0].pid();
    for client in &mut clients[1..] {
        assert_eq!(client.pid(), old_pid);
    }
    let (code, report) = upgrade(&supervisor, "kvd");
    assert_eq!(code, Some(0), "{report}");
    let new_pid = u64_of(&report, "new_pid");
    let moved = clients
        .iter_mut()
        .map(KeepAlive::pid)
        .filter(|&pid| pid == new_pid)
        .count();
    assert_eq!(moved, CONNECTIONS);
    eprintln!(
        "{CONNECTIONS} idle connections handed over: drain {} ms, handoff total {} ms",
        report["phases_ms"]["drain"], report["total_ms"]
    );
}

/// What one busy client saw: answers from each pid, polite closes (a
/// response with `Connection: close`, then a new connection), failures.
#[derive(Default)]
struct Seen {
    pids: Vec<u64>,
    polite_closes: u32,
    failures: Vec<String>,
}

/// A client sending `/info` every 10 ms on a kept-alive connection until
/// `stop`, reconnecting only when the server asked it to.
fn busy_client(addr: SocketAddr, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let mut client = KeepAlive::open(addr);
    while !stop.load(Ordering::SeqCst) {
        match client.request("GET", "/info", "") {
            Ok(answer) => {
                let info: Value = serde_json::from_str(&answer.body).expect("json");
                seen.pids.push(u64_of(&info, "pid"));
                if answer.closes {
                    seen.polite_closes += 1;
                    client = KeepAlive::open(addr);
                }
            }
            Err(error) => {
                seen.failures.push(error);
                client = KeepAlive::open(addr);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    seen
}

#[test]
fn past_what_the_processes_can_hold_connections_drain_the_old_way_and_none_fails() {
    const CLIENTS: usize = 16;
    let dir = TempDir::new("transit-limit");
    let supervisor = supervise("kvd", &dir, Vec::new());
    // From now on the supervisor, and the successors it spawns, may hold a
    // dozen fds beyond what they hold now and the reserve each keeps
    // (FD_RESERVE, 256): room for a few of the connections only.
    let open = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fd dir")
            .count()
    };
    let generation = u32::try_from(u64_of(&supervisor.status(), "child_pid")).expect("pid");
    let limit = open(supervisor.pid()).max(open(generation)) + 256 + 12;
    let limited = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", supervisor.pid()))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit (util-linux)");
    assert!(limited.success());
    let addr = supervisor.addr_of("http");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || busy_client(addr, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let (code, report) = upgrade(&supervisor, "kvd");
    assert_eq!(code, Some(0), "{report}");
    let new_pid = u64_of(&report, "new_pid");
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let seen: Vec<Seen> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    let failures: Vec<_> = seen.iter().flat_map(|s| &s.failures).collect();
    assert!(failures.is_empty(), "{failures:?}");
    let moved = handed_over_to(&supervisor.log(), 2);
    let polite: u32 = seen.iter().map(|s| s.polite_closes).sum();
    assert!(
        moved > 0 && (moved as usize) < CLIENTS && moved as usize + polite as usize >= CLIENTS,
        "{moved} handed over, {polite} closed politely; log:\n{}",
        supervisor.log()
    );
    for client in &seen {
        assert_eq!(client.pids.last(), Some(&new_pid));
    }
}

/// A fresh connection whose first request the incumbent had only begun to
/// read when its drain started: the drain waits for that request and hands
/// the connection over after its answer, still kept alive (stopped at
/// once, hyper would serve it and close, and the client reconnect). One
/// that asked to close is closed after its answer, never handed over: its
/// client reads until the end, which the successor would never send.
#[test]
fn a_first_request_begun_when_the_drain_starts_is_answered_then_its_connection_travels() {
    for daemon in ["kvd", "echod"] {
        let dir = TempDir::new("transit-first");
        let supervisor = supervise(daemon, &dir, Vec::new());
        let (method, path, answer) = match daemon {
            "kvd" => ("PUT", "/kv/first", "\n"),
            _ => ("POST", "/echo", "hello"),
        };
        let binary = example(daemon);
        let binary = binary.to_str().expect("utf-8");
        let upgrade = ["--binary", binary, "--json"];
        for close in [false, true] {
            let connection = if close { "connection: close\r\n" } else { "" };
            let request = format!(
                "{method} {path} HTTP/1.1\r\nhost: test\r\n{connection}content-length: 5\r\n\r\nhello"
            );
            let (first, rest) = request.as_bytes().split_at(4);
            let old_pid = u64_of(&supervisor.status(), "child_pid");
            let stream = began_reading_when_the_drain_starts(&supervisor, first, rest, &upgrade);
            if close {
                let response = read_to_the_end(stream, &supervisor);
                assert!(
                    response.starts_with("HTTP/1.1 200"),
                    "{daemon}: {response:?}"
                );
                assert!(response.ends_with(answer), "{daemon}: {response:?}");
                continue;
            }
            let mut kept = KeepAlive::from_stream(stream);
            let answered = kept.answer().expect("the answer");
            assert_eq!(answered.status, 200, "{daemon}: {}", answered.body);
            assert!(!answered.closes, "{daemon}: the connection was closed");
            assert!(answered.body.ends_with(answer.trim_end()), "{daemon}");
            assert_ne!(kept.pid(), old_pid, "{daemon}: the connection moved on");
        }
    }
}

/// An answer given before its request's body was read to the end (the body
/// is larger than the daemon takes) says `connection: close` and ends the
/// connection, in a drain too: handed over, the rest of the body would be
/// read as a request by the next generation.
#[test]
fn an_answer_before_the_body_was_read_closes_the_connection_even_in_a_drain() {
    for daemon in ["kvd", "echod"] {
        let dir = TempDir::new("transit-unread");
        let supervisor = supervise(daemon, &dir, Vec::new());
        let path = if daemon == "kvd" { "/kv/big" } else { "/echo" };
        let method = if daemon == "kvd" { "PUT" } else { "POST" };
        // Both daemons take at most 1 MiB; 3 MiB are announced, 1.5 sent.
        let mut first = format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\r\n",
            3 << 20
        )
        .into_bytes();
        first.extend(std::iter::repeat_n(b'x', 512 << 10));
        let rest = vec![b'x'; 1 << 20];
        let binary = example(daemon);
        let binary = binary.to_str().expect("utf-8");
        let upgrade = ["--binary", binary, "--json"];
        let stream = began_reading_when_the_drain_starts(&supervisor, &first, &rest, &upgrade);
        let response = read_to_the_end(stream, &supervisor);
        let (head, _) = response.split_once("\r\n\r\n").expect("a whole answer");
        assert!(head.starts_with("HTTP/1.1 413"), "{daemon}: {head:?}");
        assert!(head.contains("connection: close"), "{daemon}: {head:?}");
        assert_eq!(
            response.matches("HTTP/1.1").count(),
            1,
            "{daemon}: {response:?}"
        );
    }
}

/// Sends `first` on a fresh connection to the supervisor's `http`
/// listener, waits until the incumbent read it, upgrades with
/// `upgrade_args`, and sends `rest` once the incumbent drains; the
/// connection, once the upgrade committed. The drain's start is seen on an
/// idle kept-alive connection beside it: its socket leaves the incumbent
/// for the supervisor (exclusive mode holds it there until the commit) or,
/// in overlap mode, the log says it reached the new generation.
pub fn began_reading_when_the_drain_starts(
    supervisor: &Supervisor,
    first: &[u8],
    rest: &[u8],
    upgrade_args: &[&str],
) -> TcpStream {
    let addr = supervisor.addr_of("http");
    let mut idle = KeepAlive::open(addr);
    let old_pid = u64_of(&supervisor.status(), "child_pid");
    // Served once: the incumbent holds its socket.
    let served = idle
        .request("GET", "/info", "")
        .expect("the idle connection");
    assert!(!served.closes, "the idle connection was closed");
    let mut stream = TcpStream::connect_timeout(&addr, IO).expect("connect");
    stream.set_read_timeout(Some(IO)).expect("timeout");
    let local_port = stream.local_addr().expect("local").port();
    stream.write_all(first).expect("the first bytes");
    testkit::eventually("the incumbent read the first bytes", || {
        server_unread(addr, local_port) == Some(0)
    });
    let exclusive = supervisor.status()["mode"] == "exclusive";
    let generation = u64_of(&supervisor.status(), "generation") + 1;
    let handed_over = format!("client connections handed over generation={generation}");
    let idle_socket = server_socket(addr, idle.local_port).expect("the idle connection's socket");
    let from = supervisor.log().len();
    let upgrade = std::thread::scope(|scope| {
        let upgrade = scope.spawn(|| supervisor.ctl("upgrade", upgrade_args));
        if exclusive {
            testkit::eventually("the incumbent handed the idle connection over", || {
                holds_socket(supervisor.pid(), idle_socket)
            });
        } else {
            supervisor.wait_log(&handed_over, from);
        }
        stream.write_all(rest).expect("the rest of the request");
        upgrade.join().expect("upgrade")
    });
    assert_eq!(upgrade.code, Some(0), "{upgrade:?}");
    let answer = idle
        .request("GET", "/info", "")
        .expect("the idle connection");
    assert!(!answer.closes, "the idle connection was closed");
    assert_ne!(u64_of(&supervisor.status(), "child_pid"), old_pid);
    stream
}

/// Reads `stream` to the end of the connection, which must come (a reset
/// after the answer counts as the end: the server closed with bytes
/// unread); what it read.
pub fn read_to_the_end(mut stream: TcpStream, supervisor: &Supervisor) -> String {
    let mut response = Vec::new();
    let read = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    assert!(
        read.is_ok()
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "{read:?} after {response:?}: the connection never ended; log:\n{}",
        supervisor.log()
    );
    response
}

/// The inode of the server's side of the loopback connection from
/// `client` to `server` (`/proc/net/tcp`).
fn server_socket(server: SocketAddr, client: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ours = fields.get(1)?.ends_with(&format!(":{:04X}", server.port()))
            && fields.get(2)?.ends_with(&format!(":{client:04X}"));
        ours.then(|| fields.get(9)?.parse().ok()).flatten()
    })
}

/// Whether process `pid` holds the socket with `inode`.
fn holds_socket(pid: u32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.filter_map(Result::ok).any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == wanted.as_str())
        })
    })
}
