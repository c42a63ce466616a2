//! A small open-loop load driver (bounded, loopback only): requests are
//! due at a fixed rate whatever happens to earlier ones, a fixed pool of
//! workers sends them, and latency is measured from the intended send time
//! (no coordinated omission: a stalled server shows up as latency, not as
//! fewer requests).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request: `Ok` or a failure class with detail.
pub type Send = dyn Fn() -> Result<(), String> + Sync + std::marker::Send;

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub sent: u64,
    pub ok: u64,
    pub failures: Vec<String>,
    /// The intended send time of each failure, in the order of `failures`.
    pub failed_at: Vec<Instant>,
    /// Latency from each request's intended send time, sorted.
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
}

impl Report {
    pub fn failed(&self) -> u64 {
        self.failures.len() as u64
    }

    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[index]
    }

    pub fn summary(&self) -> String {
        format!(
            "sent={} ok={} failed={} rate={:.0}/s p50={:.2}ms p99={:.2}ms max={:.2}ms",
            self.sent,
            self.ok,
            self.failed(),
            self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.percentile(0.5).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.latencies
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
        )
    }
}

/// A load run in the background; [`Load::finish`] stops it and reports.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    report: Arc<Mutex<Report>>,
    started: Instant,
}

/// How many requests may be in flight at once.
pub const WORKERS: usize = 8;
/// Hard bound on a run, whatever the caller does.
const MAX_RUN: Duration = Duration::from_secs(120);

impl Load {
    /// Starts sending testd `INFO` requests to `addr`, `rate` per second;
    /// an answer that is not testd's `pid=...` line counts as failed.
    pub fn testd_info(addr: std::net::SocketAddr, rate: u32) -> Load {
        Load::start(
            rate,
            Arc::new(move || match crate::common::request(addr, "INFO") {
                Ok(reply) if reply.starts_with("pid=") => Ok(()),
                Ok(reply) => Err(format!("bad reply {reply:?}")),
                Err(error) => Err(format!("{:?}: {error}", error.kind())),
            }),
        )
    }

    /// Starts sending `rate` requests per second with `send`.
    pub fn start(rate: u32, send: Arc<Send>) -> Load {
        Load::start_with(rate, WORKERS, MAX_RUN, send)
    }

    /// [`Load::start`] with `workers` requests in flight at most and a hard
    /// bound of `max_run` (a fleet of daemons, a run of several minutes).
    pub fn start_with(rate: u32, workers: usize, max_run: Duration, send: Arc<Send>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(Report::default()));
        let started = Instant::now();
        let interval = Duration::from_secs(1) / rate.max(1);
        let (due_tx, due_rx) = crossbeam_channel::unbounded::<Instant>();
        let mut threads = Vec::new();
        for _ in 0..workers {
            let (due_rx, send, report) = (due_rx.clone(), Arc::clone(&send), Arc::clone(&report));
            threads.push(std::thread::spawn(move || {
                while let Ok(due) = due_rx.recv() {
                    let result = send();
                    let latency = due.elapsed();
                    let mut report = report.lock().expect("report");
                    report.sent += 1;
                    report.latencies.push(latency);
                    match result {
                        Ok(()) => report.ok += 1,
                        Err(error) => {
                            report.failures.push(error);
                            report.failed_at.push(due);
                        }
                    }
                }
            }));
        }
        let stop_flag = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || {
            let mut next = Instant::now();
            while !stop_flag.load(Ordering::SeqCst) && started.elapsed() < max_run {
                if due_tx.send(next).is_err() {
                    return;
                }
                next += interval;
                let now = Instant::now();
                if next > now {
                    // Pacing an open-loop schedule, not a synchronisation.
                    std::thread::sleep(next - now);
                }
            }
        }));
        Load {
            stop,
            threads,
            report,
            started,
        }
    }

    /// Stops scheduling, waits for requests in flight, reports.
    pub fn finish(mut self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        for thread in std::mem::take(&mut self.threads) {
            let _ = thread.join();
        }
        let mut report = std::mem::take(&mut *self.report.lock().expect("report"));
        report.elapsed = self.started.elapsed();
        report.latencies.sort_unstable();
        report
    }
}

impl Load {
    /// Requests answered so far.
    pub fn ok_so_far(&self) -> u64 {
        self.report.lock().expect("report").ok
    }

    /// Waits (bounded) until `more` further requests were answered: steady
    /// load before and after an event, counted rather than slept.
    pub fn wait_answered(&self, more: u64) {
        let target = self.ok_so_far() + more;
        let deadline = Instant::now() + MAX_RUN;
        while self.ok_so_far() < target {
            assert!(Instant::now() < deadline, "the load stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// testd `PUT`s under load (100 per second): every acknowledged write is
/// remembered, and read back by [`Writes::finish`].
pub struct Writes {
    pub load: Load,
    acked: Arc<Mutex<Vec<String>>>,
}

impl Writes {
    pub fn start(addr: std::net::SocketAddr) -> Writes {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let load = Load::start(100, {
            let acked = Arc::clone(&acked);
            Arc::new(move || {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let key = format!("k{n}");
                match crate::common::request(addr, &format!("PUT {key} v{n}")) {
                    Ok(reply) if reply.starts_with("OK ") => {
                        acked.lock().expect("acked").push(key);
                        Ok(())
                    }
                    Ok(reply) => Err(format!("bad reply {reply:?}")),
                    Err(error) => Err(format!("{:?}: {error}", error.kind())),
                }
            })
        });
        load.wait_answered(20);
        Writes { load, acked }
    }

    /// Stops the load and checks that every acknowledged write reads back;
    /// the load's report (its failures say why each failed).
    pub fn finish(self, addr: std::net::SocketAddr) -> Report {
        let report = self.load.finish();
        let acked = self.acked.lock().expect("acked").clone();
        assert!(!acked.is_empty(), "no write was acknowledged");
        for key in &acked {
            let n = &key[1..];
            assert_eq!(
                crate::common::request(addr, &format!("GET {key}")).expect("GET"),
                format!("VALUE v{n}"),
                "acknowledged write {key} lost"
            );
        }
        report
    }
}
