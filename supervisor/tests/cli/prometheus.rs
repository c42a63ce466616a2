//! A real Prometheus server (Debian's `prometheus` package) scrapes a
//! supervisor under test: one committed upgrade, one rolled-back upgrade
//! (an allowed binary that exits) and one crash restart, read back through
//! Prometheus's HTTP query API; the alert rules of `docs/` are loaded into
//! it, and checked and unit-tested with `promtool`, which also checks a
//! scrape (`promtool check metrics`).
//!
//! Prometheus runs on loopback only, from a temporary directory (config,
//! data), scraping every 250 ms; it is stopped (SIGTERM, then SIGKILL) and
//! its directory removed even when the test fails. Without `prometheus`
//! and `promtool` in `PATH` the test skips with one line, unless
//! `HANDOFF_REQUIRE_PROMETHEUS=1` (set by `.ci/run`), which makes their
//! absence a failure.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use handoff::os::Sig;
use serde_json::Value;

use crate::common::{IO, Supervisor, TempDir, WAIT, run_bounded, serving_pid, u64_of};
use crate::metrics::{http_get, metrics_addr, scrape, with_metrics};

/// Set to 1 where a missing Prometheus must fail the test (CI).
const REQUIRE: &str = "HANDOFF_REQUIRE_PROMETHEUS";

/// The alert rules shipped with the monitoring docs, and their unit tests.
fn rules() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/handoff.rules.yml"
    ))
}

fn rules_tests() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/handoff.rules.test.yml"
    ))
}

/// `name` in `PATH`.
fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// `(prometheus, promtool)`, or `None` after saying why the test skips.
fn tools() -> Option<(PathBuf, PathBuf)> {
    match (in_path("prometheus"), in_path("promtool")) {
        (Some(prometheus), Some(promtool)) => Some((prometheus, promtool)),
        _ if std::env::var_os(REQUIRE).is_some_and(|v| v == "1") => {
            panic!("{REQUIRE}=1 but prometheus or promtool is not in PATH")
        }
        _ => {
            eprintln!(
                "prometheus test skipped: no prometheus/promtool in PATH (apt-get install \
                 prometheus); {REQUIRE}=1 makes this a failure"
            );
            None
        }
    }
}

/// A Prometheus server as a child process, stopped on drop.
struct Prometheus {
    child: Option<Child>,
    api: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    /// Starts it in `dir`, scraping `target` every 250 ms with `rules`
    /// loaded, and waits until it is ready.
    fn start(binary: &Path, dir: &Path, target: SocketAddr, rules: &Path) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 250ms\n  scrape_timeout: 200ms\n  \
                 evaluation_interval: 250ms\nrule_files:\n  - {}\nscrape_configs:\n  \
                 - job_name: handoff\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .expect("prometheus.yml");
        // A free loopback port, released just before Prometheus binds it.
        let api = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let log = dir.join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={api}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn prometheus");
        let prometheus = Prometheus {
            child: Some(child),
            api,
            log,
        };
        prometheus.wait_until("ready", |p| {
            matches!(http_get(p.api, "/-/ready"), Ok((200, _)))
        });
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded by `WAIT`) until `condition` holds.
    fn wait_until(&self, what: &str, mut condition: impl FnMut(&Prometheus) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !condition(self) {
            assert!(
                Instant::now() < deadline,
                "prometheus: no {what} within {WAIT:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(handoff::timeouts::POLL_SLICE * 5);
        }
    }

    /// An instant query's samples: `(labels, value)`.
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encoded(promql));
        let (code, body) = http_get(self.api, &path).expect("query");
        assert_eq!(code, 200, "{promql}: {body}");
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        answer["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|sample| {
                let value = sample["value"][1].as_str().expect("value");
                (sample["metric"].clone(), value.parse().expect("number"))
            })
            .collect()
    }

    /// Waits until `promql` gives exactly one sample equal to `value`.
    fn wait_for(&self, promql: &str, value: f64) {
        self.wait_until(&format!("{promql} == {value}"), |p| {
            let samples = p.query(promql);
            samples.len() == 1 && samples[0].1 == value
        });
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = handoff::os::signal(child.id(), Sig::Term);
        let deadline = Instant::now() + IO;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(handoff::timeouts::POLL_SLICE);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Every byte but unreserved ones as `%XX` (RFC 3986).
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `promtool ARGS` with `stdin`; panics with its output unless it succeeds.
fn promtool(promtool: &Path, args: &[&str], stdin: Option<&Path>) {
    let mut command = Command::new(promtool);
    command.args(args);
    if let Some(path) = stdin {
        command.stdin(std::fs::File::open(path).expect("stdin"));
    }
    let output = run_bounded(command);
    assert!(
        output.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_real_prometheus_reads_upgrades_rollbacks_and_restarts() {
    let Some((prometheus_binary, promtool_binary)) = tools() else {
        return;
    };
    let started = Instant::now();
    // The rules are valid, and their own tests (synthetic series) pass.
    let rules = rules();
    for (verb, file) in [("check", &rules), ("test", &rules_tests())] {
        promtool(
            &promtool_binary,
            &[verb, "rules", file.to_str().expect("utf-8")],
            None,
        );
    }

    // Declared first, so removed last: Prometheus is stopped before.
    let dir = TempDir::new("prometheus");
    let supervisor = Supervisor::start_with(with_metrics(&["--allow-binary", "/bin/false"]));
    let target = metrics_addr(&supervisor);
    let prometheus = Prometheus::start(&prometheus_binary, dir.path(), target, &rules);
    // Its first scrape (Prometheus hands new targets over after about 5 s).
    prometheus.wait_for("up", 1.0);

    // A committed upgrade.
    let ran = supervisor.ctl("upgrade", &[]);
    assert_eq!(ran.code, Some(0), "{ran:?}");
    prometheus.wait_for(r#"handoff_upgrades_total{outcome="committed"}"#, 1.0);
    prometheus.wait_for("handoff_last_upgrade_success", 1.0);
    prometheus.wait_for("handoff_generation", 2.0);

    // A rolled-back upgrade: the successor exits before Ready.
    let ran = supervisor.ctl("upgrade", &["--binary", "/bin/false"]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    prometheus.wait_for(r#"sum(handoff_upgrades_total{outcome="rolled_back"})"#, 1.0);
    prometheus.wait_for(
        r#"handoff_upgrades_total{outcome="rolled_back",reason="successor_exited"}"#,
        1.0,
    );
    prometheus.wait_for("handoff_last_upgrade_success", 0.0);
    // The shipped alert fires on it.
    prometheus.wait_for(
        r#"count(ALERTS{alertname="HandoffLastUpgradeFailed",alertstate="firing"})"#,
        1.0,
    );

    // A crash: the serving generation is killed and restarted.
    let crashed = serving_pid(supervisor.addr());
    handoff::os::signal(crashed, Sig::Kill).expect("kill the generation");
    let status = supervisor.wait_status("a restarted generation", |s| {
        s["state"] == "serving"
            && s["child_pid"]
                .as_u64()
                .is_some_and(|p| p != u64::from(crashed))
    });
    prometheus.wait_for(r#"handoff_restarts_total{cause="signal"}"#, 1.0);
    prometheus.wait_for("sum(handoff_restarts_total)", 1.0);
    prometheus.wait_for("handoff_generation", u64_of(&status, "generation") as f64);

    check_the_whole_picture(&prometheus);
    // promtool's own checker accepts a scrape with every family present.
    let page = dir.path().join("scrape.txt");
    std::fs::write(&page, scrape(target)).expect("scrape");
    promtool(&promtool_binary, &["check", "metrics"], Some(&page));
    drop(prometheus);
    eprintln!(
        "prometheus test: {:.1} s (of which about 5 s wait for Prometheus's first scrape)",
        started.elapsed().as_secs_f64()
    );
}

/// After one commit, one rollback and one restart: the upgrades by
/// outcome, the last upgrade failed, one committed duration observed, as
/// Prometheus holds them.
fn check_the_whole_picture(prometheus: &Prometheus) {
    let by_outcome = prometheus.query("sum by (outcome) (handoff_upgrades_total)");
    let count = |outcome: &str| {
        by_outcome
            .iter()
            .find(|(labels, _)| labels["outcome"] == outcome)
            .map(|(_, value)| *value)
    };
    assert_eq!(count("committed"), Some(1.0), "{by_outcome:?}");
    assert_eq!(count("rolled_back"), Some(1.0), "{by_outcome:?}");
    assert_eq!(count("failed"), Some(0.0), "{by_outcome:?}");
    assert_eq!(
        prometheus.query("handoff_last_upgrade_success")[0].1,
        0.0,
        "a restart is not an upgrade: the last upgrade still failed"
    );
    let committed =
        prometheus.query(r#"handoff_upgrade_duration_seconds_count{outcome="committed"}"#);
    assert_eq!(committed[0].1, 1.0, "{committed:?}");
}
