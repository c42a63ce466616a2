//! A real HTTP client nobody here wrote, curl, against kvd (exclusive mode)
//! and echod (overlap) across twenty upgrades under `handoffctl run`:
//!
//! - one curl process keeps one connection alive through every upgrade:
//!   curl reuses its connection for each URL of one invocation, checks it
//!   is still alive before each reuse, and says with `%{num_connects}`
//!   whenever it had to open another; the connection is served by each new
//!   generation in turn (the pid in `/info` changes, the socket does not);
//! - one-shot curl processes, one connection each, half of them sending
//!   `Connection: close`, write (kvd) or echo (echod) all the while.
//!
//! Every answer is a 200 with the right body, every one-shot curl exits 0,
//! the kept-alive one never opens a new connection, and every acknowledged
//! write reads back.
//! Without `curl` in `PATH` the test skips with one line, unless
//! `HANDOFF_REQUIRE_CURL=1` (set by `.ci/run`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::{TempDir, WAIT, example, http, run_bounded, u64_of};

/// Set to 1 where a missing curl must fail the test (CI).
const REQUIRE: &str = "HANDOFF_REQUIRE_CURL";
/// Upgrades per daemon.
const UPGRADES: usize = 20;
/// Requests of the kept-alive curl (a URL glob, `?n=[1-N]`), and their
/// rate: a cap of about 8 minutes, far more than the upgrades take (the
/// test fails if curl ends first); curl is stopped once the last
/// generation answered `AFTER_LAST` times.
const KEPT_ALIVE_REQUESTS: usize = 100_000;
const KEPT_ALIVE_RATE: &str = "200/s";
const AFTER_LAST: usize = 10;

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Whether curl is there; `false` after saying why the test skips.
fn curl_present() -> bool {
    let found = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found && std::env::var_os(REQUIRE).is_some_and(|v| v == "1") {
        panic!("{REQUIRE}=1 but curl is not in PATH");
    }
    if !found {
        eprintln!(
            "curl test skipped: no curl in PATH (apt-get install curl); {REQUIRE}=1 makes this a failure"
        );
    }
    found
}

#[test]
fn curl_keeps_its_connection_and_gets_every_answer_across_upgrades_in_both_modes() {
    if !curl_present() {
        return;
    }
    for daemon in ["kvd", "echod"] {
        let dir = TempDir::new("curl");
        let supervisor = crate::transit::supervise(daemon, &dir, Vec::new());
        let addr = supervisor.addr_of("http");
        let mut kept = KeptAlive::start(&format!("http://{addr}/info?n=[1-{KEPT_ALIVE_REQUESTS}]"));
        let first_pid = kept.wait_answer_from(None);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        // The one-shot curls stop with the test, a failed one included.
        let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
        let one_shots: Vec<_> = (0..2)
            .map(|worker| {
                let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
                let url = format!("http://{addr}");
                std::thread::spawn(move || one_shots(daemon, &url, worker, &acked, &stop))
            })
            .collect();
        let binary = example(daemon);
        for round in 1..=UPGRADES {
            let binary = binary.to_str().expect("utf-8");
            let ran = supervisor.ctl("upgrade", &["--binary", binary, "--json"]);
            assert_eq!(ran.code, Some(0), "{daemon} upgrade {round}: {ran:?}");
            let report: serde_json::Value = serde_json::from_str(&ran.stdout).expect("json");
            // The next upgrade once the new generation answered on the
            // kept-alive connection: each one serves it in turn.
            kept.wait_answer_from(Some(u64_of(&report, "new_pid")));
        }
        let last_pid = u64_of(&supervisor.status(), "child_pid");
        stop.store(true, Ordering::SeqCst);
        let sent: usize = one_shots
            .into_iter()
            .map(|worker| worker.join().expect("one-shot curls"))
            .sum();
        for _ in 0..AFTER_LAST {
            kept.wait_answer_from(Some(last_pid));
        }
        let seen = kept.stop();
        check_kept_alive(daemon, &seen, first_pid, last_pid);
        assert!(sent > 0, "{daemon}: no one-shot request was sent");
        let acked = acked.lock().expect("acked");
        for (key, value) in acked.iter() {
            let read = http(addr, "GET", &format!("/kv/{key}"), "");
            assert_eq!(read, Ok((200, value.clone())), "{daemon}: {key} lost");
        }
        eprintln!(
            "curl {daemon}: {} kept-alive requests on one connection across {UPGRADES} upgrades \
             ({} generations served it), {sent} one-shot requests answered, {} acknowledged \
             writes read back",
            seen.len(),
            distinct_pids(&seen),
            acked.len()
        );
    }
}

/// One answer on the kept-alive connection: its status, the connections
/// curl opened for it, and the pid `/info` named.
#[derive(Debug)]
struct Seen {
    status: u16,
    connects: u64,
    pid: Option<u64>,
}

/// The one curl process that keeps its connection alive, read as it goes.
struct KeptAlive {
    child: Option<Child>,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every answer read so far.
    seen: Vec<Seen>,
    /// The pid of the body read last, until its write-out comes.
    body_pid: Option<u64>,
}

/// What curl writes after each answer (the body, `/info`'s JSON, comes
/// first on its own line).
const WRITE_OUT: &str = "%{http_code} %{num_connects}\\n";

impl KeptAlive {
    fn start(url: &str) -> KeptAlive {
        let mut command = Command::new("curl");
        command
            .args([
                "--silent",
                "--show-error",
                "--no-buffer",
                "--max-time",
                "60",
            ])
            .args(["--rate", KEPT_ALIVE_RATE, "--write-out", WRITE_OUT])
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("spawning curl");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        KeptAlive {
            child: Some(child),
            lines,
            seen: Vec::new(),
            body_pid: None,
        }
    }

    /// Reads curl's output until an answer from `pid` (any pid: `None`);
    /// that pid. Curl ending first fails the test: its run must span the
    /// upgrades.
    fn wait_answer_from(&mut self, pid: Option<u64>) -> u64 {
        loop {
            let line = self.lines.recv_timeout(WAIT).unwrap_or_else(|_| {
                panic!("curl gave no answer from {pid:?}; so far: {:?}", self.seen)
            });
            if let Some(answered) = self.take(&line)
                && pid.is_none_or(|pid| pid == answered)
            {
                return answered;
            }
        }
    }

    /// Takes one line of curl's output: a body (its pid is kept) or the
    /// write-out that ends an answer (the answer's pid, if its body had
    /// one).
    fn take(&mut self, line: &str) -> Option<u64> {
        if line.starts_with('{') {
            self.body_pid = pid_of(line);
            return None;
        }
        let (status, connects) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("not curl's write-out: {line:?}"));
        let pid = self.body_pid.take();
        self.seen.push(Seen {
            status: status.parse().expect("status"),
            connects: connects.parse().expect("num_connects"),
            pid,
        });
        pid
    }

    /// Stops curl (killed: it would go on to its cap); every answer read.
    fn stop(mut self) -> Vec<Seen> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for KeptAlive {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn pid_of(json: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()?
        .get("pid")?
        .as_u64()
}

fn distinct_pids(seen: &[Seen]) -> usize {
    let pids: std::collections::BTreeSet<_> = seen.iter().filter_map(|s| s.pid).collect();
    pids.len()
}

/// Every answer a 200 on the first connection, which every generation
/// served in turn, the last one last.
fn check_kept_alive(daemon: &str, seen: &[Seen], first_pid: u64, last_pid: u64) {
    assert_eq!(seen[0].connects, 1, "{daemon}: {:?}", seen[0]);
    assert_eq!(seen[0].pid, Some(first_pid));
    let bad: Vec<_> = seen
        .iter()
        .enumerate()
        .filter(|(i, s)| s.status != 200 || (*i > 0 && s.connects != 0))
        .collect();
    assert!(bad.is_empty(), "{daemon}: failed or reconnected: {bad:?}");
    assert_eq!(distinct_pids(seen), UPGRADES + 1, "{daemon}: {seen:?}");
    assert_eq!(seen.last().and_then(|s| s.pid), Some(last_pid), "{daemon}");
}

/// One-shot curl processes until `stop`: kvd gets `PUT /kv/KEY` (the
/// acknowledged ones remembered), echod a body to echo. Returns how many
/// were sent.
fn one_shots(
    daemon: &str,
    url: &str,
    worker: usize,
    acked: &Mutex<Vec<(String, String)>>,
    stop: &AtomicBool,
) -> usize {
    let mut sent = 0;
    while !stop.load(Ordering::SeqCst) {
        let value = format!("w{worker}-{sent}");
        let (method, target) = match daemon {
            "kvd" => ("PUT", format!("{url}/kv/{value}")),
            _ => ("POST", format!("{url}/echo")),
        };
        let mut command = Command::new("curl");
        command
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(["--request", method, "--data-binary", &value])
            .args(["--write-out", "\\n%{http_code}"]);
        if sent % 2 == 1 {
            command.args(["--header", "Connection: close"]);
        }
        command.arg(&target);
        let ran = run_bounded(command);
        let stdout = String::from_utf8_lossy(&ran.stdout);
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        assert!(
            ran.status.success() && status == "200",
            "{daemon}: curl {method} {target}: {}, status {status:?}, {}",
            ran.status,
            String::from_utf8_lossy(&ran.stderr)
        );
        match daemon {
            "kvd" => acked
                .lock()
                .expect("acked")
                .push((value.clone(), value.clone())),
            _ => assert_eq!(body, value, "{daemon}: echoed"),
        }
        sent += 1;
    }
    sent
}
