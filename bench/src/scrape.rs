//! `--scrape-metrics-ms N`: `handoffctl run --metrics` scraped every N ms
//! while the load runs, as a Prometheus with a short interval would, to
//! show that being watched costs the handoffs nothing. A thread of its own
//! (plain blocking HTTP/1.0, each scrape bounded by [`SCRAPE_BOUND`]) keeps
//! a fixed schedule: a late scrape skips the ticks it missed rather than
//! bunching up.
//!
//! The last scrape, taken after every upgrade, is a further witness: its
//! `handoff_upgrades_total` must count the commits the harness saw, and no
//! rollback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Bound on one scrape (connect, request, answer).
pub const SCRAPE_BOUND: Duration = Duration::from_secs(2);

/// What the scraper saw.
#[derive(Debug, Clone, Default)]
pub struct Scrapes {
    /// The interval asked for.
    pub every: Duration,
    /// Scrapes answered `200` with a page.
    pub ok: u64,
    /// Scrapes that failed (connect, timeout, status), with the first
    /// error.
    pub failed: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Each successful scrape's duration, ms.
    pub latency_ms: Vec<f64>,
    /// The page of the scrape taken after the run.
    pub last_page: Option<String>,
}

impl Scrapes {
    /// The value of the sample `series` (name and labels exactly as
    /// written) in the last page.
    pub fn last(&self, series: &str) -> Option<f64> {
        let page = self.last_page.as_deref()?;
        page.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    /// The sum of every sample of `name` whose labels contain `label` in
    /// the last page.
    pub fn last_sum(&self, name: &str, label: &str) -> Option<f64> {
        let page = self.last_page.as_deref()?;
        let values = page.lines().filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            labels.contains(label).then(|| value.parse::<f64>().ok())?
        });
        Some(values.sum())
    }

    /// The witness check: an empty list when the last page counts
    /// `committed` commits and no rollback, and no scrape failed.
    pub fn disagreements(&self, committed: u64) -> Vec<String> {
        let mut problems = Vec::new();
        if self.failed > 0 {
            problems.push(format!(
                "{} of {} metrics scrapes failed (first: {})",
                self.failed,
                self.failed + self.ok,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        let counted = self.last(r#"handoff_upgrades_total{outcome="committed",reason="none"}"#);
        let rolled_back = self.last_sum("handoff_upgrades_total", r#"outcome="rolled_back""#);
        match (counted, rolled_back) {
            (Some(counted), Some(rolled_back)) => {
                if counted != committed as f64 {
                    problems.push(format!(
                        "the metrics count {counted} commits, the harness {committed}"
                    ));
                }
                if rolled_back != 0.0 {
                    problems.push(format!("the metrics count {rolled_back} rollbacks"));
                }
            }
            _ => problems.push("the last metrics scrape has no handoff_upgrades_total".into()),
        }
        problems
    }

    /// For the JSON report.
    pub fn to_json(&self) -> Value {
        let mut latency = self.latency_ms.clone();
        latency.sort_by(f64::total_cmp);
        let pick = |fraction: f64| {
            (!latency.is_empty()).then(|| {
                let index = ((latency.len() as f64 * fraction).ceil() as usize).max(1) - 1;
                (latency[index.min(latency.len() - 1)] * 1000.0).round() / 1000.0
            })
        };
        json!({
            "every_ms": self.every.as_millis() as u64,
            "ok": self.ok,
            "failed": self.failed,
            "first_error": self.first_error,
            "latency_ms": { "p50": pick(0.5), "p99": pick(0.99), "max": pick(1.0) },
            "upgrades_committed": self.last(r#"handoff_upgrades_total{outcome="committed",reason="none"}"#),
        })
    }
}

/// A running scraper.
#[derive(Debug)]
pub struct Scraper {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Scrapes>,
}

impl Scraper {
    /// Scrapes `http://addr/metrics` every `every` from now on.
    pub fn start(addr: SocketAddr, every: Duration) -> Result<Scraper, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("metrics-scraper".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || scrape_until(addr, every, &stop)
            })
            .map_err(|e| format!("starting the metrics scraper: {e}"))?;
        Ok(Scraper { addr, stop, thread })
    }

    /// Stops it, then takes one more scrape (the witness's page).
    pub fn finish(self) -> Scrapes {
        self.stop.store(true, Ordering::SeqCst);
        let mut scrapes = self.thread.join().unwrap_or_default();
        match scrape(self.addr) {
            Ok(page) => scrapes.last_page = Some(page),
            Err(error) => {
                scrapes.failed += 1;
                scrapes.first_error.get_or_insert(error);
            }
        }
        scrapes
    }
}

fn scrape_until(addr: SocketAddr, every: Duration, stop: &AtomicBool) -> Scrapes {
    let mut scrapes = Scrapes {
        every,
        ..Scrapes::default()
    };
    let start = Instant::now();
    let mut tick = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let began = Instant::now();
        match scrape(addr) {
            Ok(_) => {
                scrapes.ok += 1;
                scrapes.latency_ms.push(began.elapsed().as_secs_f64() * 1e3);
            }
            Err(error) => {
                scrapes.failed += 1;
                scrapes.first_error.get_or_insert(error);
            }
        }
        // The next tick still ahead (a late scrape skips the missed ones).
        let elapsed = start.elapsed();
        tick = tick.max((elapsed.as_nanos() / every.as_nanos().max(1)) as u32) + 1;
        std::thread::sleep((every * tick).saturating_sub(start.elapsed()));
    }
    scrapes
}

/// One `GET /metrics`: the page, or why not.
fn scrape(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, SCRAPE_BOUND).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(SCRAPE_BOUND))
        .and_then(|()| stream.set_write_timeout(Some(SCRAPE_BOUND)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200 ") => Ok(body.to_owned()),
        _ => Err(format!(
            "answer: {}",
            answer.lines().next().unwrap_or("(empty)")
        )),
    }
}

/// The metrics address `handoffctl run --log-format json` logged
/// (`metrics at http://ADDR/metrics`) in `log`.
pub fn metrics_addr(log: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|line| {
        let event: Value = serde_json::from_str(line).ok()?;
        let message = event["fields"]["message"].as_str()?;
        let rest = message.strip_prefix("metrics at http://")?;
        rest.strip_suffix("/metrics")?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_page_is_a_witness_of_the_commits() {
        let page = "# TYPE handoff_upgrades_total counter\n\
            handoff_upgrades_total{outcome=\"committed\",reason=\"none\"} 3\n\
            handoff_upgrades_total{outcome=\"rolled_back\",reason=\"deadline\"} 0\n\
            handoff_upgrades_total{outcome=\"rolled_back\",reason=\"protocol\"} 0\n";
        let scrapes = Scrapes {
            ok: 10,
            last_page: Some(page.to_owned()),
            ..Scrapes::default()
        };
        assert!(scrapes.disagreements(3).is_empty());
        assert_eq!(
            scrapes.disagreements(4),
            ["the metrics count 3 commits, the harness 4"]
        );
        let rolled = Scrapes {
            last_page: Some(page.replace("protocol\"} 0", "protocol\"} 1")),
            failed: 1,
            first_error: Some("refused".into()),
            ..scrapes.clone()
        };
        assert_eq!(
            rolled.disagreements(3),
            [
                "1 of 11 metrics scrapes failed (first: refused)",
                "the metrics count 1 rollbacks"
            ]
        );
    }

    #[test]
    fn the_address_is_read_from_the_json_log() {
        let dir = std::env::temp_dir().join(format!("bench-scrape-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("handoffctl.log");
        std::fs::write(
            &log,
            "{\"fields\":{\"message\":\"starting\"}}\n\
             {\"fields\":{\"message\":\"metrics at http://127.0.0.1:4321/metrics\"}}\n",
        )
        .expect("write");
        assert_eq!(metrics_addr(&log), Some(([127, 0, 0, 1], 4321).into()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
