//! `handoffctl run --metrics ADDR`: Prometheus metrics of the supervisor,
//! served over plain HTTP at `http://ADDR/metrics` (see
//! `docs/monitoring.md` for each metric and the alert rules).
//!
//! ```text
//! event thread --Feed (events, stamped)--> metrics thread --publishes--> Published page
//! admin upgrade --Feed (not spawned)-----^   | owns Counters              ^ reads (pointer copy)
//!                                            | reads status, /proc/self   |
//!                                            '-- every METRICS_REFRESH    http thread <-- scrapers
//! ```
//!
//! One thread owns the numbers ([`Counters`], plain data: a supervisor
//! re-exec carries them across with [`Feed::to_state`] and
//! [`Metrics::rebind`], through serde). The supervisor's loop
//! never waits for it: the feed is an unbounded channel, and the status
//! is asked for once per [`METRICS_REFRESH`] and after an event that
//! changes generations, never for a scrape. Scrapes never wait for either:
//! they copy the last published page (`http.rs` bounds every connection).
//!
//! Without `--metrics`, nothing here runs and the feed drops what it is
//! given.

mod http;
mod process;
pub mod record;
mod text;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use handoff::supervisor::{Status, SupervisorEvent};
use handoff::timeouts::METRICS_REFRESH;

use self::process::ProcessStats;
pub use self::record::Counters;
use crate::admin::AdminState;
use crate::admin::wire::BinaryRecord;
use crate::error::Failure;

/// What the metrics thread is told.
#[derive(Debug)]
enum Input {
    /// An event, and when it was seen (seconds since the Unix epoch).
    Event(Box<SupervisorEvent>, f64),
    /// An upgrade's successor could not be spawned.
    UpgradeNotStarted(f64),
    /// Send the counters (for a re-exec).
    State(mpsc::Sender<Counters>),
}

/// The way into the metrics thread: cheap to clone, never blocks, and a
/// no-op when `--metrics` is not given.
#[derive(Debug, Clone, Default)]
pub struct Feed {
    inbox: Option<mpsc::Sender<Input>>,
}

impl Feed {
    /// Counts `event` (cloned only when metrics are on).
    pub fn event(&self, event: &SupervisorEvent) {
        if let Some(inbox) = &self.inbox {
            let _ = inbox.send(Input::Event(Box::new(event.clone()), unix_now()));
        }
    }

    /// Counts an upgrade whose successor could not be spawned (the library
    /// answers it with an error, not with an event).
    pub fn upgrade_not_started(&self) {
        if let Some(inbox) = &self.inbox {
            let _ = inbox.send(Input::UpgradeNotStarted(unix_now()));
        }
    }

    /// The counters as they are now, once every input sent before this
    /// call was counted: what a supervisor re-exec carries across (they
    /// serialize with serde). `None` without `--metrics`.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the supervisor re-exec (in progress) calls it")
    )]
    pub fn to_state(&self) -> Option<Counters> {
        let inbox = self.inbox.as_ref()?;
        let (reply, answer) = mpsc::channel();
        inbox.send(Input::State(reply)).ok()?;
        answer.recv().ok()
    }
}

/// `--metrics`: the endpoint bound at start (so that an address that
/// cannot be bound fails `run` before anything starts), and the feed's
/// receiving end.
#[derive(Debug)]
pub struct Metrics {
    running: Option<(TcpListener, mpsc::Receiver<Input>)>,
    feed: Feed,
    /// The counters to go on from (a re-exec's).
    restored: Option<Counters>,
}

impl Metrics {
    /// Binds `addr`, if given; a failure is one line naming `--metrics`.
    pub fn bind(addr: Option<SocketAddr>) -> Result<Metrics, Failure> {
        let Some(addr) = addr else {
            return Ok(Metrics {
                running: None,
                feed: Feed::default(),
                restored: None,
            });
        };
        let listener = http::bind(addr)
            .map_err(|e| Failure::failed(format!("--metrics {addr}: cannot listen: {e}")))?;
        let (inbox, receiver) = mpsc::channel();
        Ok(Metrics {
            running: Some((listener, receiver)),
            feed: Feed { inbox: Some(inbox) },
            restored: None,
        })
    }

    /// In an image restored after a re-exec: binds `addr` again (the exec
    /// closed the old image's listener), going on from `restored`. A
    /// failure is a warning, never a reason to fail the re-exec: the
    /// supervisor goes on without metrics.
    pub fn rebind(addr: Option<SocketAddr>, restored: Option<Counters>) -> Metrics {
        match Metrics::bind(addr) {
            Ok(metrics) => Metrics {
                restored,
                ..metrics
            },
            Err(failure) => {
                tracing::warn!("no metrics after the re-exec: {failure}");
                Metrics {
                    running: None,
                    feed: Feed::default(),
                    restored: None,
                }
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
        let Some((listener, inbox)) = self.running else {
            return Ok(());
        };
        let address = listener
            .local_addr()
            .map_err(|e| Failure::failed(format!("--metrics: {e}")))?;
        let mut counters = self.restored.unwrap_or_default();
        let dropped = counters.keep_fitting();
        if dropped > 0 {
            tracing::warn!(dropped, "histograms of another build's buckets were reset");
        }
        let page = http::Published::default();
        let mut owner = Owner {
            state,
            counters,
            gauges: Gauges::default(),
            draining_since: HashMap::new(),
            daemon_pid: None,
            page,
            dropped_connections: Arc::new(AtomicU64::new(0)),
        };
        owner.gauges.drain_timeout = owner.state.timeouts.drain_grace;
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || owner.run(listener, &inbox))
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

/// The metrics thread: the one owner of the counters and gauges.
struct Owner {
    state: Arc<AdminState>,
    counters: Counters,
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
    fn run(&mut self, listener: TcpListener, inbox: &mpsc::Receiver<Input>) {
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
            let mut changed = match inbox.recv_timeout(wait) {
                Ok(input) => apply(&mut self.counters, input),
                Err(mpsc::RecvTimeoutError::Timeout) => true,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            // Whatever queued meanwhile is rendered once.
            while let Ok(input) = inbox.try_recv() {
                changed |= apply(&mut self.counters, input);
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
        self.page
            .publish(text::render(&self.counters, &self.gauges));
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
                .and_then(|pid| self.state.identities.of_pid(pid))
                .map(|record| BinaryRecord {
                    path: status.program.clone(),
                    sha256: record.sha256,
                });
        }
        // Counters carried without the commit that started the serving
        // generation: its start from the status.
        if let (Some(serving_for), true) = (
            status.serving_for,
            self.counters
                .serving
                .is_none_or(|serving| serving.generation != status.generation),
        ) {
            self.counters.serving = Some(record::Serving {
                generation: status.generation,
                since_unix: unix_now() - serving_for.as_secs_f64(),
            });
        }
    }
}

/// Counts one input; whether generations may have changed (the status is
/// then read again).
fn apply(counters: &mut Counters, input: Input) -> bool {
    match input {
        Input::Event(event, at) => {
            counters.on_event(&event, at);
            !matches!(
                *event,
                SupervisorEvent::Phase { .. } | SupervisorEvent::HandoffStarted { .. }
            )
        }
        Input::UpgradeNotStarted(at) => {
            counters.upgrade_not_started(at);
            false
        }
        Input::State(reply) => {
            let _ = reply.send(counters.clone());
            false
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

        let (inbox, receiver) = mpsc::channel();
        let feed = Feed { inbox: Some(inbox) };
        let owner = std::thread::spawn(move || {
            let mut counters = Counters::default();
            while let Ok(input) = receiver.recv() {
                apply(&mut counters, input);
            }
        });
        feed.upgrade_not_started();
        feed.event(&SupervisorEvent::RestartFailed {
            reason: "ENOENT".into(),
        });
        // Everything sent before is counted in the state handed over.
        let state = feed.to_state().expect("the owner answers");
        assert_eq!(
            state.upgrades(UpgradeOutcome::Failed, Reason::SpawnFailed),
            1
        );
        assert_eq!(state.restart_failures, 1);
        let carried: Counters =
            serde_json::from_str(&serde_json::to_string(&state).expect("json")).expect("back");
        assert_eq!(carried, state);
        drop(feed);
        owner.join().expect("the owner ends with its feed");
    }
}
