//! `handoffctl run --metrics`: an address that cannot be bound, hostile
//! scrapers (silent connections, a thousand at once) that must delay
//! neither handoffs nor the admin socket, counters across a re-exec, and
//! the gauges against real generations (build info, start times, serving,
//! draining and in probation, an automatic rollback, the process's own).
//! The HTTP helpers here are shared with the real-Prometheus test
//! (`prometheus.rs`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{IO, Start, Supervisor, ctl, script, testd, u64_of};
use testkit::eventually;

/// `Start::default()` with `--metrics` on an ephemeral loopback port, and
/// `extra` flags.
pub fn with_metrics(extra: &[&str]) -> Start {
    let mut start = Start::default();
    start
        .flags
        .extend(["--metrics", "127.0.0.1:0"].iter().map(|s| s.to_string()));
    start.flags.extend(extra.iter().map(|s| s.to_string()));
    start
}

/// The metrics endpoint's address, from the supervisor's log line
/// `metrics at http://ADDR/metrics`.
pub fn metrics_addr(supervisor: &Supervisor) -> SocketAddr {
    const LINE: &str = "metrics at http://";
    let end = supervisor.wait_log(LINE, 0);
    let log = supervisor.log();
    let rest = &log[end..];
    let addr = rest.split('/').next().unwrap_or_default();
    addr.parse()
        .unwrap_or_else(|e| panic!("metrics address {addr:?}: {e}; log:\n{log}"))
}

/// `GET path` over HTTP/1.0 within `IO`: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, IO)?;
    stream.set_read_timeout(Some(IO))?;
    stream.set_write_timeout(Some(IO))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

/// A scrape of `/metrics`: its body (panics unless 200).
pub fn scrape(addr: SocketAddr) -> String {
    let (code, body) = http_get(addr, "/metrics").expect("scrape");
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of the sample line that starts with `series ` in a scrape.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[test]
fn a_metrics_address_that_cannot_be_bound_fails_run_in_one_line_naming_the_flag() {
    let dir = crate::common::TempDir::new("metrics-bad");
    let socket = dir.path().join("admin.sock");
    let socket = socket.to_str().expect("utf-8");
    // A daemon that leaves a trace if it is ever started.
    let started = dir.path().join("started");
    let daemon = script(
        dir.path(),
        "daemon",
        &format!("touch {}\nexec {}", started.display(), testd().display()),
    );
    let daemon = daemon.to_str().expect("utf-8");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    for (metrics, wanted) in [
        (taken.as_str(), "in use"),
        ("nonsense", "HOST:PORT"),
        ("192.0.2.1:9464", "cannot listen"),
    ] {
        let ran = ctl(&[
            "run",
            "--socket",
            socket,
            "--metrics",
            metrics,
            "--",
            daemon,
        ]);
        assert_ne!(ran.code, Some(0), "{metrics}: {ran:?}");
        let line = ran.one_error_line();
        assert!(
            line.starts_with(&format!("handoffctl: --metrics {metrics:?}: "))
                && line.contains(wanted),
            "{line}"
        );
        assert!(!started.exists(), "no generation was started: {metrics}");
    }
}

/// The supervisor's open fds (its `/proc/PID/fd` entries).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0)
}

/// An upgrade's `total_ms` from its JSON report, and the wall time of a
/// `status` round trip (a client process each).
fn upgrade_and_status(supervisor: &Supervisor) -> (f64, Duration) {
    let ran = supervisor.ctl("upgrade", &["--json"]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    let report: Value = serde_json::from_str(&ran.stdout).expect("report");
    assert_eq!(report["committed"], true, "{report}");
    let asked = Instant::now();
    let status = supervisor.status();
    let took = asked.elapsed();
    assert_eq!(status["state"], "serving");
    (report["total_ms"].as_f64().expect("total_ms"), took)
}

/// The supervisor's CPU time (user and system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of proc(5); 3 is fields[0].
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    field(14).unwrap_or(0) + field(15).unwrap_or(0)
}

fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).expect("ordered"));
    values[values.len() / 2]
}

#[test]
fn hostile_scrapers_delay_neither_handoffs_nor_the_admin_socket() {
    const ROUNDS: usize = 5;
    const HOSTILE: usize = 1_000;
    let supervisor = Supervisor::start_with(with_metrics(&[]));
    let addr = metrics_addr(&supervisor);
    let pid = supervisor.pid();
    eventually("generation 1 in the metrics", || {
        sample(&scrape(addr), "handoff_generation") == Some(1.0)
    });

    let quiet: Vec<_> = (0..ROUNDS)
        .map(|_| upgrade_and_status(&supervisor))
        .collect();
    let fds_before = open_fds(pid);

    // One connection that never sends, then a thousand at once, all kept
    // open while upgrades and status requests run.
    let cpu_before = cpu_ticks(pid);
    let silent = TcpStream::connect(addr).expect("connect");
    let opened = Instant::now();
    let hostile: Vec<TcpStream> = (0..HOSTILE)
        .map(|_| TcpStream::connect_timeout(&addr, IO).expect("connect"))
        .collect();
    let opening = opened.elapsed();
    // The endpoint's thread has accepted them all once the backlog is empty:
    // a scrape behind them is answered.
    let _ = scrape(addr);
    let cpu_ticks_spent = cpu_ticks(pid) - cpu_before;
    let attacked: Vec<_> = (0..ROUNDS)
        .map(|_| upgrade_and_status(&supervisor))
        .collect();
    // A real scraper sends its request at once: it is served meanwhile.
    let page = scrape(addr);
    let fds_during = open_fds(pid);
    let dropped = sample(&page, "handoff_metrics_connections_dropped_total").expect("dropped");

    let total = |rounds: &[(f64, Duration)]| median(rounds.iter().map(|r| r.0).collect());
    let admin = |rounds: &[(f64, Duration)]| median(rounds.iter().map(|r| r.1).collect());
    eprintln!(
        "{HOSTILE} connections opened in {opening:?}, the supervisor's CPU meanwhile \
         {cpu_ticks_spent} ticks; handoff total_ms p50 {:.2} quiet, {:.2} \
         attacked; status round trip p50 {:?} quiet, {:?} attacked; supervisor fds {fds_before} \
         -> {fds_during}; {dropped} metrics connections dropped",
        total(&quiet),
        total(&attacked),
        admin(&quiet),
        admin(&attacked),
    );
    // Times: relative to the same run, with room for a shared machine.
    assert!(
        total(&attacked) <= 3.0 * total(&quiet) + 20.0,
        "handoffs slowed: {quiet:?} vs {attacked:?}"
    );
    assert!(
        admin(&attacked) <= 3 * admin(&quiet) + Duration::from_millis(100),
        "admin slowed: {quiet:?} vs {attacked:?}"
    );
    // Counts: the endpoint holds a bounded number of fds, and the silent
    // ones made room for the real scrape.
    // 16 metrics connections at most, and a few fds of the moment (an
    // admin connection, a file read under /proc).
    assert!(
        fds_during <= fds_before + 16 + 4,
        "fds {fds_before} -> {fds_during}"
    );
    assert!(dropped >= (HOSTILE - 16) as f64, "{dropped} dropped");
    drop(hostile);
    drop(silent);
    let status = supervisor.status();
    assert_eq!(u64_of(&status, "generation"), 1 + 2 * ROUNDS as u64);
}

#[test]
fn the_counters_carry_across_a_reexec_and_the_endpoint_comes_back_on_its_address() {
    // A fixed port: after the exec the new image binds it again.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let mut start = Start::default();
    start.flags.extend(
        ["--metrics", &metrics, "--allow-binary", "/bin/false"]
            .iter()
            .map(|s| s.to_string()),
    );
    let supervisor = Supervisor::start_with(start);
    let addr = metrics_addr(&supervisor);
    assert_eq!(addr.port(), port);
    assert_eq!(supervisor.ctl("upgrade", &[]).code, Some(0));
    assert_eq!(
        supervisor.ctl("upgrade", &["--binary", "/bin/false"]).code,
        Some(1)
    );
    let committed = r#"handoff_upgrades_total{outcome="committed",reason="none"}"#;
    let rolled_back = r#"handoff_upgrades_total{outcome="rolled_back",reason="successor_exited"}"#;
    // Counted by the event thread, published by the metrics thread: soon
    // after the upgrade's answer, not necessarily before it.
    eventually("both upgrades counted", || {
        let page = scrape(addr);
        sample(&page, committed) == Some(1.0) && sample(&page, rolled_back) == Some(1.0)
    });
    let before = scrape(addr);
    let attempted = sample(&before, "handoff_last_upgrade_timestamp_seconds");

    let ran = supervisor.ctl("reexec", &["--json"]);
    assert_eq!(ran.code, Some(0), "{ran:?}; log:\n{}", supervisor.log());
    let report: Value = serde_json::from_str(ran.stdout.trim()).expect("report");
    assert_eq!(report["committed"], true, "{report}");
    // The new image serves the same address with the same counts.
    eventually("the endpoint after the re-exec", || {
        http_get(addr, "/metrics").is_ok_and(|(code, page)| {
            code == 200 && sample(&page, "handoff_generation") == Some(2.0)
        })
    });
    let after = scrape(addr);
    assert_eq!(sample(&after, committed), Some(1.0), "{after}");
    assert_eq!(sample(&after, rolled_back), Some(1.0), "{after}");
    assert_eq!(sample(&after, "handoff_last_upgrade_success"), Some(0.0));
    assert_eq!(
        sample(&after, "handoff_last_upgrade_timestamp_seconds"),
        attempted
    );
    assert_eq!(
        sample(
            &after,
            r#"handoff_upgrade_duration_seconds_count{outcome="committed"}"#
        ),
        Some(1.0)
    );
    // And counts on.
    assert_eq!(supervisor.ctl("upgrade", &[]).code, Some(0));
    eventually("the upgrade after the re-exec counted", || {
        sample(&scrape(addr), committed) == Some(2.0)
    });
    assert_eq!(
        sample(&scrape(addr), "handoff_last_upgrade_success"),
        Some(1.0)
    );
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// The one sample of family `name` whose labels include `label`, and its
/// value.
fn labelled(page: &str, name: &str, label: &str) -> Option<(String, f64)> {
    page.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| line.contains(label))
        .and_then(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
}

/// `--mode overlap --metrics` over a first build that is testd `flags`
/// behind a script named `name` (another binary than testd, which upgrades
/// may run), with `extra` flags.
fn overlap_behind_script(dir: &Path, name: &str, flags: &str, extra: &[&str]) -> Supervisor {
    let first_build = script(
        dir,
        name,
        &format!("exec {} {flags} \"$@\"", testd().display()),
    );
    let testd = testd().display().to_string();
    let mut all = vec!["--mode", "overlap", "--allow-binary", &testd];
    all.extend_from_slice(extra);
    let mut start = with_metrics(&all);
    start.program = Some(first_build);
    Supervisor::start_with(start)
}

fn upgrade_to_testd(supervisor: &Supervisor) {
    let testd = testd().display().to_string();
    let ran = supervisor.ctl("upgrade", &["--binary", &testd]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
}

#[test]
fn the_gauges_follow_the_generations_through_a_probation_and_its_rollback() {
    let dir = crate::common::TempDir::new("metrics-gauges");
    let before_start = unix_now();
    let supervisor = overlap_behind_script(dir.path(), "daemon-a", "", &["--probation", "30s"]);
    let addr = metrics_addr(&supervisor);
    let serving = r#"handoff_generations{state="serving"}"#;
    let probation = r#"handoff_generations{state="probation"}"#;
    eventually("generation 1 published", || {
        let page = scrape(addr);
        sample(&page, "handoff_generation") == Some(1.0) && sample(&page, serving) == Some(1.0)
    });
    let page = scrape(addr);
    let first = supervisor.status();
    let first_sha = first["binary_sha256"].as_str().expect("sha256").to_owned();
    assert!(
        labelled(&page, "handoff_daemon_build_info", &first_sha).is_some(),
        "{page}"
    );
    let own = crate::common::sha256_hex(&crate::common::handoffctl());
    let info = labelled(&page, "handoff_build_info", &own).map(|(_, value)| value);
    assert_eq!(info, Some(1.0), "{page}");
    let since = sample(&page, "handoff_generation_start_time_seconds").expect("start time");
    assert!(before_start <= since && since <= unix_now(), "{since}");
    let started = sample(&page, "process_start_time_seconds").expect("start");
    assert!(before_start - 1.0 <= started && started <= since, "{page}");
    assert!(sample(&page, "process_resident_memory_bytes").is_some_and(|b| b > 1e6));
    assert!(sample(&page, "process_open_fds").is_some_and(|n| n >= 3.0));
    assert_eq!(sample(&page, probation), Some(0.0));

    // An upgrade: the old generation is kept in probation, drained, idle.
    upgrade_to_testd(&supervisor);
    let second = supervisor.status();
    let second_sha = second["binary_sha256"].as_str().expect("sha256").to_owned();
    assert_ne!(second_sha, first_sha);
    eventually("generation 2 serving, generation 1 in probation", || {
        let page = scrape(addr);
        sample(&page, "handoff_generation") == Some(2.0)
            && sample(&page, serving) == Some(1.0)
            && sample(&page, probation) == Some(1.0)
            && labelled(&page, "handoff_daemon_build_info", &second_sha).is_some()
    });
    let page = scrape(addr);
    assert!(
        sample(&page, "handoff_generation_start_time_seconds") > Some(since),
        "{page}"
    );

    // The new generation crashes in probation: the old one is resumed.
    let new = u64_of(&second, "child_pid") as u32;
    handoff::os::signal(new, handoff::os::Sig::Kill).expect("kill the new generation");
    eventually("the automatic rollback counted", || {
        let page = scrape(addr);
        sample(&page, "handoff_probation_rollbacks_total") == Some(1.0)
            && sample(&page, "handoff_generation") == Some(1.0)
            && sample(&page, serving) == Some(1.0)
            && sample(&page, probation) == Some(0.0)
            && labelled(&page, "handoff_daemon_build_info", &first_sha).is_some()
    });
}

#[test]
fn the_draining_gauges_follow_an_old_generation_stuck_in_its_drain() {
    let dir = crate::common::TempDir::new("metrics-draining");
    let supervisor = overlap_behind_script(dir.path(), "hangs-in-drain", "--hang-at drain", &[]);
    let addr = metrics_addr(&supervisor);
    let draining = r#"handoff_generations{state="draining"}"#;
    let old = u64_of(&supervisor.status(), "child_pid") as u32;
    upgrade_to_testd(&supervisor);
    // Replaced, the first build hangs in its drain: draining, for longer
    // and longer, until its bounds (the drain timeout, then the kill
    // grace) end it.
    eventually("the old generation draining", || {
        let page = scrape(addr);
        sample(&page, draining) == Some(1.0)
            && sample(&page, "handoff_oldest_draining_seconds").is_some_and(|s| s > 0.0)
    });
    let first = sample(&scrape(addr), "handoff_oldest_draining_seconds").expect("drain age");
    eventually("the drain's age grows", || {
        sample(&scrape(addr), "handoff_oldest_draining_seconds").is_some_and(|s| s > first)
    });
    crate::common::wait_gone(old);
    eventually("nothing draining once it is gone", || {
        let page = scrape(addr);
        sample(&page, draining) == Some(0.0)
            && sample(&page, "handoff_oldest_draining_seconds") == Some(0.0)
    });
}
