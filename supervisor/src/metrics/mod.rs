//! `handoffctl run --metrics ADDR`: Prometheus metrics of the supervisor,
//! served over plain HTTP at `http://ADDR/metrics` (see
//! `docs/monitoring.md` for each metric and the alert rules).
//!
//! ```text
//! event thread --Feed: count, wake--> Counters (one lock) <--clone-- metrics thread --> Published page
//! admin upgrade --Feed (not spawned)--^      ^ to_state (re-exec)    | status, /proc/self  ^ pointer copy
//!                                                                    '-- METRICS_REFRESH   http thread <-- scrapers
//! ```
//!
//! The feed counts on the caller's thread, under one lock held for the
//! counting only (a few map updates), then wakes the metrics thread over
//! a channel that never blocks. [`Counters`] are plain data behind that
//! lock: a supervisor re-exec takes them with [`Feed::to_state`] (never
//! waiting on the metrics thread, which may itself be waiting on a frozen
//! supervisor) and the next image goes on from them through serde and
//! [`Metrics::rebind`]. The metrics thread owns the gauges: it reads the
//! status once per [`METRICS_REFRESH`] and after an event that changes
//! generations, never for a scrape, renders a page from a copy of the
//! counters, and publishes it. Scrapes copy the last page (`http.rs`
//! bounds every connection). The supervisor's loop waits for none of it.
//!
//! Without `--metrics`, nothing here runs and the feed drops what it is
//! given.

mod http;
mod process;
pub mod record;
mod text;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use handoff::supervisor::{Status, SupervisorEvent};
use handoff::timeouts::METRICS_REFRESH;

use self::process::ProcessStats;
pub use self::record::Counters;
use crate::admin::AdminState;
use crate::admin::wire::BinaryRecord;
use crate::error::Failure;

/// Why the metrics thread is woken: whether generations may have changed
/// (the status is then read again).
#[derive(Debug, Clone, Copy)]
struct Wake {
    generations: bool,
}

/// What the feed and the metrics thread share.
#[derive(Debug)]
struct Shared {
    counters: Mutex<Counters>,
    wake: mpsc::Sender<Wake>,
}

impl Shared {
    fn counters(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The way into the counters: cheap to clone, never blocks on the metrics
/// thread, and a no-op when `--metrics` is not given.
#[derive(Debug, Clone, Default)]
pub struct Feed {
    shared: Option<Arc<Shared>>,
}

impl Feed {
    /// Counts `event`.
    pub fn event(&self, event: &SupervisorEvent) {
        if let Some(shared) = &self.shared {
            shared.counters().on_event(event, unix_now());
            let generations = !matches!(
                event,
                SupervisorEvent::Phase { .. } | SupervisorEvent::HandoffStarted { .. }
            );
            let _ = shared.wake.send(Wake { generations });
        }
    }

    /// Counts an upgrade whose successor could not be spawned (the library
    /// answers it with an error, not with an event).
    pub fn upgrade_not_started(&self) {
        if let Some(shared) = &self.shared {
            shared.counters().upgrade_not_started(unix_now());
            let _ = shared.wake.send(Wake { generations: false });
        }
    }

    /// The counters, everything fed so far counted: what a supervisor
    /// re-exec carries across (they serialize with serde). `None` without
    /// `--metrics`.
    pub fn to_state(&self) -> Option<Counters> {
        Some(self.shared.as_ref()?.counters().clone())
    }
}

/// `--metrics`: the endpoint bound at start (so that an address that
/// cannot be bound fails `run` before anything starts), and the feed's
/// receiving end.
#[derive(Debug)]
pub struct Metrics {
    running: Option<(TcpListener, mpsc::Receiver<Wake>)>,
    feed: Feed,
}

impl Metrics {
    /// Binds `addr`, if given; a failure is one line naming the option as
    /// the user `written` it.
    pub fn bind(addr: Option<(SocketAddr, String)>) -> Result<Metrics, Failure> {
        let Some((addr, written)) = addr else {
            return Ok(Metrics::off());
        };
        let listener = http::bind(addr)
            .map_err(|e| Failure::failed(format!("{written}: cannot listen on {addr}: {e}")))?;
        let (wake, woken) = mpsc::channel();
        let shared = Shared {
            counters: Mutex::new(Counters::default()),
            wake,
        };
        Ok(Metrics {
            running: Some((listener, woken)),
            feed: Feed {
                shared: Some(Arc::new(shared)),
            },
        })
    }

    fn off() -> Metrics {
        Metrics {
            running: None,
            feed: Feed::default(),
        }
    }

    /// In an image restored after a re-exec: binds `addr` again (the exec
    /// closed the old image's listener), going on from `restored`. A
    /// failure is a warning, never a reason to fail the re-exec: the
    /// supervisor goes on without metrics.
    pub fn rebind(addr: Option<(SocketAddr, String)>, restored: Option<Counters>) -> Metrics {
        match Metrics::bind(addr) {
            Ok(metrics) => {
                if let (Some(shared), Some(mut restored)) = (&metrics.feed.shared, restored) {
                    let dropped = restored.keep_fitting();
                    if dropped > 0 {
                        tracing::warn!(dropped, "histograms of another build's buckets were reset");
                    }
                    *shared.counters() = restored;
                }
                metrics
            }
            Err(failure) => {
                tracing::warn!("no metrics after the re-exec: {failure}");
                Metrics::off()
            }
        }
    }

    /// The feed (for the event thread and the admin side).
    pub fn feed(&self) -> Feed {
        self.feed.clone()
    }

    /// Starts the metrics thread and the endpoint (counting on from a
    /// re-exec's counters, if [`Metrics::rebind`] was given some).
    pub fn start(self, state: Arc<AdminState>) -> Result<(), Failure> {
        let (Some((listener, woken)), Some(shared)) = (self.running, self.feed.shared) else {
            return Ok(());
        };
        let address = listener
            .local_addr()
            .map_err(|e| Failure::failed(format!("--metrics: {e}")))?;
        let page = http::Published::default();
        let mut owner = Owner {
            state,
            shared,
            gauges: Gauges::default(),
            draining_since: HashMap::new(),
            daemon_pid: None,
            page,
            dropped_connections: Arc::new(AtomicU64::new(0)),
        };
        owner.gauges.drain_timeout = owner.state.timeouts.drain_grace;
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || owner.run(listener, &woken))
            .map_err(|e| Failure::failed(format!("cannot start the metrics thread: {e}")))?;
        tracing::info!(%address, "metrics at http://{address}/metrics");
        Ok(())
    }
}

/// What is read, not counted: from the supervisor's status and `/proc`.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// sha256 of the supervisor's binary.
    pub supervisor_sha256: Option<String>,
    /// The serving generation's binary.
    pub daemon: Option<BinaryRecord>,
    /// The serving generation's number (0 while none serves).
    pub generation: u64,
    /// 1 while a generation serves.
    pub serving: u64,
    /// Old generations on their way out.
    pub draining: u64,
    /// Old generations kept for a probation.
    pub probation: u64,
    /// How long the oldest of the draining ones has been draining.
    pub oldest_draining: Duration,
    /// The configured drain timeout.
    pub drain_timeout: Duration,
    /// Connections shut down unanswered to make room.
    pub dropped_connections: u64,
    /// The supervisor's process.
    pub process: Option<ProcessStats>,
}

/// The metrics thread: the one owner of the gauges and the page.
struct Owner {
    state: Arc<AdminState>,
    shared: Arc<Shared>,
    gauges: Gauges,
    /// When each draining old generation was first seen draining.
    draining_since: HashMap<u64, Instant>,
    /// The pid whose binary `gauges.daemon` describes.
    daemon_pid: Option<u32>,
    page: http::Published,
    dropped_connections: Arc<AtomicU64>,
}

impl Owner {
    /// Publishes a first page, then serves it on `listener` (scrapers wait
    /// in its backlog until then) and keeps it current.
    fn run(&mut self, listener: TcpListener, woken: &mpsc::Receiver<Wake>) {
        self.gauges.supervisor_sha256 = self
            .state
            .identities
            .of_pid(std::process::id())
            .map(|record| record.sha256);
        self.refresh();
        let page = self.page.clone();
        if let Err(error) = http::serve(listener, page, Arc::clone(&self.dropped_connections)) {
            tracing::error!(%error, "cannot start the metrics endpoint's thread");
            return;
        }
        let mut next_refresh = Instant::now() + METRICS_REFRESH;
        loop {
            let wait = next_refresh.saturating_duration_since(Instant::now());
            let mut changed = match woken.recv_timeout(wait) {
                Ok(wake) => wake.generations,
                Err(mpsc::RecvTimeoutError::Timeout) => true,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            // Whatever queued meanwhile is rendered once.
            while let Ok(wake) = woken.try_recv() {
                changed |= wake.generations;
            }
            if changed || Instant::now() >= next_refresh {
                self.refresh();
                next_refresh = Instant::now() + METRICS_REFRESH;
            } else {
                self.publish();
            }
        }
    }

    /// Reads the status and `/proc/self`, then publishes.
    fn refresh(&mut self) {
        if let Ok(status) = self.state.handle.status() {
            self.generations(&status);
        }
        self.gauges.process = ProcessStats::read();
        self.publish();
    }

    fn publish(&mut self) {
        self.gauges.dropped_connections = self.dropped_connections.load(Ordering::Relaxed);
        // Rendered from a copy: the feed waits for a clone, not a render.
        let counters = self.shared.counters().clone();
        self.page.publish(text::render(&counters, &self.gauges));
    }

    fn generations(&mut self, status: &Status) {
        let now = Instant::now();
        self.gauges.generation = status.generation;
        self.gauges.serving = u64::from(status.child_pid.is_some());
        let draining: Vec<u64> = status
            .retirees
            .iter()
            .filter(|retiree| !retiree.in_probation && retiree.state != "gone")
            .map(|retiree| retiree.generation)
            .collect();
        self.gauges.probation = status.retirees.iter().filter(|r| r.in_probation).count() as u64;
        self.gauges.draining = draining.len() as u64;
        self.draining_since
            .retain(|generation, _| draining.contains(generation));
        self.gauges.oldest_draining = draining
            .iter()
            .map(|generation| now - *self.draining_since.entry(*generation).or_insert(now))
            .max()
            .unwrap_or_default();
        if status.child_pid != self.daemon_pid {
            self.daemon_pid = status.child_pid;
            self.gauges.daemon = status
                .child_pid
                .and_then(|pid| self.state.identities.of_generation_in_background(pid))
                .map(|record| BinaryRecord {
                    path: status.program.clone(),
                    sha256: record.sha256,
                });
        }
        // Counters carried without the commit that started the serving
        // generation: its start from the status.
        let mut counters = self.shared.counters();
        if let (Some(serving_for), true) = (
            status.serving_for,
            counters
                .serving
                .is_none_or(|serving| serving.generation != status.generation),
        ) {
            counters.serving = Some(record::Serving {
                generation: status.generation,
                since_unix: unix_now() - serving_for.as_secs_f64(),
            });
        }
    }
}

/// Seconds since the Unix epoch, to the millisecond.
fn unix_now() -> f64 {
    crate::events::unix_ms() as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use record::{Reason, UpgradeOutcome};

    #[test]
    fn the_feed_is_a_no_op_when_off_and_hands_the_counters_over_when_on() {
        let off = Feed::default();
        off.upgrade_not_started();
        assert_eq!(off.to_state(), None);

        let at = (([127, 0, 0, 1], 0).into(), "--metrics".to_owned());
        let metrics = Metrics::bind(Some(at)).expect("bind");
        let feed = metrics.feed();
        feed.upgrade_not_started();
        feed.event(&SupervisorEvent::RestartFailed {
            reason: "ENOENT".into(),
        });
        // Everything fed before is in the state handed over, at once.
        let state = feed.to_state().expect("on");
        assert_eq!(
            state.upgrades(UpgradeOutcome::Failed, Reason::SpawnFailed),
            1
        );
        assert_eq!(state.restart_failures, 1);
        let carried: Counters =
            serde_json::from_str(&serde_json::to_string(&state).expect("json")).expect("back");
        assert_eq!(carried, state);

        // The next image goes on from them.
        drop(metrics);
        let next = Metrics::rebind(
            Some((([127, 0, 0, 1], 0).into(), "--metrics".into())),
            Some(carried),
        );
        next.feed().upgrade_not_started();
        let after = next.feed().to_state().expect("on");
        assert_eq!(
            after.upgrades(UpgradeOutcome::Failed, Reason::SpawnFailed),
            2
        );
        assert_eq!(after.restart_failures, 1);
    }
}
