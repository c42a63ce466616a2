//! Every duration the library uses, in one place (house style: no duration
//! literal elsewhere).
//!
//! All deadlines are computed on the monotonic clock ([`std::time::Instant`]).
//! The rationale of each default is an invariant in ARCHITECTURE.md.

use std::time::Duration;

use crate::error::{Error, Result};

/// Every duration the protocol, the supervisor and the daemons use.
///
/// ```
/// let t = handoff::Timeouts::default();
/// assert_eq!(t.heartbeat_interval.as_secs(), 2);
/// assert_eq!(t.liveness.as_secs(), 10);
/// t.validate().unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Timeouts {
    /// How often each side of a control connection sends a heartbeat (I2).
    pub heartbeat_interval: Duration,
    /// How long a peer may stay silent during a handoff before it is declared
    /// dead (I2). EOF is noticed at once and does not wait for this.
    pub liveness: Duration,
    /// The overall bound on one handoff, from spawn to commit (I7).
    pub handoff_deadline: Duration,
    /// How long the incumbent may take to drain (I7).
    pub drain_grace: Duration,
    /// After a commit, how long the old generation has to exit after its
    /// drain before SIGTERM, and after SIGTERM before SIGKILL (I8).
    pub kill_grace: Duration,
    /// Bound on one blocking write to a control socket (`SO_SNDTIMEO`), so
    /// that a peer that stops reading cannot stall the writer (I2).
    pub socket_write: Duration,
    /// Bound on a sealed incumbent's wait to re-take the data-directory lock
    /// after the supervisor died (I5).
    pub relock: Duration,
    /// First delay before restarting a generation that exited outside a
    /// handoff; doubled on each consecutive failure.
    pub restart_backoff_initial: Duration,
    /// Cap of the restart delay.
    pub restart_backoff_max: Duration,
    /// How long an admin client may take to send its request.
    pub admin_request: Duration,
    /// The health gate's readiness timeout: how long the supervisor retries
    /// its probe of a successor that sent a healthy Ready before it rolls
    /// back (I12). Bounded by `handoff_deadline` as well.
    #[serde(default = "default_probe")]
    pub probe: Duration,
    /// After a commit in overlap mode, how long the old generation is kept
    /// drained and idle, ready to be resumed if the new one crashes (I14).
    /// Zero (the default) turns probation off.
    #[serde(default)]
    pub probation: Duration,
    /// After an aborted handoff, how long the incumbent has to resume
    /// (`ResumeAfterAbort` to `ResumeAck`: re-take the lock, run its resume
    /// hook). Past it, the incumbent is killed and treated as crashed.
    #[serde(default = "default_resume")]
    pub resume: Duration,
}

fn default_resume() -> Duration {
    Timeouts::default().resume
}

fn default_probe() -> Duration {
    Timeouts::default().probe
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            heartbeat_interval: Duration::from_secs(2),
            liveness: Duration::from_secs(10),
            handoff_deadline: Duration::from_secs(5 * 60),
            drain_grace: Duration::from_secs(60),
            kill_grace: Duration::from_secs(5),
            socket_write: Duration::from_secs(5),
            relock: Duration::from_secs(10),
            restart_backoff_initial: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(30),
            admin_request: Duration::from_secs(5),
            probe: Duration::from_secs(30),
            probation: Duration::ZERO,
            resume: Duration::from_secs(30),
        }
    }
}

/// The drain timeout of a graceful stop (SIGTERM outside a handoff).
pub const STOP_DRAIN: Duration = Duration::from_secs(30);

/// How late past its drain grace an incumbent may still report `Drained`
/// before its drain hook is taken for stuck: the incumbent is then killed
/// and the successor proceeds as after its death.
pub const DRAIN_OVERRUN: Duration = Duration::from_secs(1);

/// A seal may stay silent (no `SealComplete`, no `SealProgress`) for the
/// time left to the deadline when it began divided by this, counted again
/// at each `SealProgress`; past it the seal hook is taken for stuck, and the
/// successor keeps the rest to take over as after the incumbent's death.
pub const SEAL_SILENCE_SHARE: u32 = 2;

/// A silence allowance shorter than this leaves the successor too little
/// time to take over: the seal is then bounded by the deadline alone (a
/// rollback, the incumbent resumed), as a drain-long handoff left it.
pub const SEAL_SILENCE_MIN: Duration = Duration::from_secs(1);

/// How long a generation must have run before a crash no longer counts as
/// consecutive (the restart backoff resets).
pub const RESTART_STABLE: Duration = Duration::from_secs(10);

/// Pause between two attempts of a health probe that failed (the health
/// gate retries until its readiness timeout, `Timeouts::probe`).
pub const PROBE_RETRY: Duration = Duration::from_millis(100);

/// During a probation, how often the live generation is probed (I14).
pub const PROBATION_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Bound on one probe attempt (connect, request, response).
pub const PROBE_ATTEMPT: Duration = Duration::from_secs(2);

/// How long the supervisor holds back a successor's exit waiting for the
/// EOF of its control connection, so that the frames it sent before dying
/// are stepped first. The EOF normally follows the exit at once; the bound
/// covers a socket end that some other process still holds.
pub const EXIT_AFTER_EOF: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a generation's handle, dropped before its reap, waits for the
/// process it killed to exit (a process in uninterruptible sleep never
/// does: the supervisor must still end).
pub const REAP_AFTER_KILL: Duration = Duration::from_secs(1);

/// How long a stopping `handoffctl run` waits, once its generations are
/// gone, for its event thread to record what the stop ended (a cancelled
/// handoff in the history) before it answers the stop and exits. The
/// thread has files to write by then, and may wait for the background hash
/// of the cancelled successor's binary (at idle priority: on a saturated
/// machine the entry may be lost past this bound, said in the log).
pub const EVENTS_FLUSH: Duration = Duration::from_secs(5);

/// How long a background hash runs only on idle CPU time (`SCHED_IDLE`)
/// before it goes on as an ordinary thread at nice 19 (or, where the
/// process may not leave `SCHED_IDLE`, its waiter hashes at its own
/// priority): on a saturated machine an idle-only thread hardly runs.
pub const HASH_IDLE_BOUND: Duration = Duration::from_secs(1);

/// How long after a generation is gone the supervisor closes the
/// executable it held for it (a replaced build's file is freed then, off
/// the handoff; never while a handoff, a drain, a stop or a retirement is
/// under way).
pub const IMAGE_RELEASE: Duration = Duration::from_secs(1);

/// How long a supervisor adopting an orphaned library generation waits for
/// its rendezvous socket (the orphan binds it as soon as it sees its
/// supervisor's connection end).
pub const RENDEZVOUS_WAIT: Duration = Duration::from_secs(5);

/// How long a peer on a rendezvous socket has for its first frame
/// (`Adopt`, or the answer `Adopted`).
pub const RENDEZVOUS_FRAME: Duration = Duration::from_secs(5);

/// A short poll slice for loops that must also notice a flag (a daemon's
/// accept loop checking for drain). Not a synchronisation: the flag is read
/// after every slice.
pub const POLL_SLICE: Duration = Duration::from_millis(20);

/// How often `handoffctl wait` asks for the status while what it waits
/// for cannot be reckoned from the last answer (nobody serves, another
/// build serves, a probation runs); while only time is missing it sleeps
/// until the goal instead.
pub const STATUS_POLL: Duration = Duration::from_millis(250);

/// Default drain timeout of a handler replaced by
/// [`crate::registry::HandlerRegistry::swap_graceful`] or removed: how long
/// the registry waits for its requests before reporting it (R6).
pub const HANDLER_DRAIN: Duration = Duration::from_secs(30);

/// What a 503 from a draining handler puts in `Retry-After`: a client may
/// try again this soon, when the endpoint's replacement is serving.
pub const HANDLER_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How often `handoffctl run --metrics` reads the gauges it takes from the
/// supervisor's status and from `/proc/self` (counters change at each
/// event, and generations are read again after each event that changes
/// them).
pub const METRICS_REFRESH: Duration = Duration::from_secs(1);

/// Bound on one connection to `handoffctl run --metrics`: from its accept
/// to the last byte of the answer (a scraper that never sends holds a
/// thread no longer).
pub const METRICS_CONNECTION: Duration = Duration::from_secs(5);

/// Bound on one `cargo build` of a handler library; the build is killed
/// past it. Generous: a cold build compiles the SDK's dependencies.
pub const HANDLER_BUILD: Duration = Duration::from_secs(10 * 60);

impl Timeouts {
    /// Checks that the settings can work together.
    ///
    /// ```
    /// let mut t = handoff::Timeouts::default();
    /// t.liveness = t.heartbeat_interval;
    /// assert!(t.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let nonzero = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("liveness", self.liveness),
            ("handoff_deadline", self.handoff_deadline),
            ("drain_grace", self.drain_grace),
            ("kill_grace", self.kill_grace),
            ("socket_write", self.socket_write),
            ("relock", self.relock),
            ("restart_backoff_initial", self.restart_backoff_initial),
            ("restart_backoff_max", self.restart_backoff_max),
            ("admin_request", self.admin_request),
            ("probe", self.probe),
            ("resume", self.resume),
        ];
        for (field, value) in nonzero {
            if value.is_zero() {
                return Err(Error::InvalidTimeout {
                    field,
                    problem: "must be greater than zero; give a positive duration such as 5s",
                });
            }
        }
        if self.liveness < self.heartbeat_interval * 2 {
            return Err(Error::InvalidTimeout {
                field: "liveness",
                problem: "must be at least two heartbeat intervals (or one late heartbeat kills a \
                          peer); raise it or shorten heartbeat_interval",
            });
        }
        if self.drain_grace > self.handoff_deadline {
            return Err(Error::InvalidTimeout {
                field: "drain_grace",
                problem: "must not exceed handoff_deadline; lower it or raise handoff_deadline",
            });
        }
        if self.restart_backoff_initial > self.restart_backoff_max {
            return Err(Error::InvalidTimeout {
                field: "restart_backoff_initial",
                problem: "must not exceed restart_backoff_max; lower it or raise restart_backoff_max",
            });
        }
        Ok(())
    }

    /// One handoff's durations: these, with a request's drain timeout and
    /// deadline. An unset drain timeout follows a shorter deadline down.
    ///
    /// ```
    /// use std::time::Duration;
    /// let t = handoff::Timeouts::default().for_handoff(None, Some(Duration::from_secs(3))).unwrap();
    /// assert_eq!(t.drain_grace, Duration::from_secs(3));
    /// ```
    pub fn for_handoff(
        &self,
        drain_grace: Option<Duration>,
        deadline: Option<Duration>,
    ) -> Result<Timeouts> {
        let mut timeouts = *self;
        if let Some(deadline) = deadline {
            timeouts.handoff_deadline = deadline;
            timeouts.drain_grace = timeouts.drain_grace.min(deadline);
        }
        if let Some(grace) = drain_grace {
            timeouts.drain_grace = grace;
        }
        timeouts.validate()?;
        Ok(timeouts)
    }

    /// Restart delay after `failures` consecutive failures (exponential, capped).
    pub fn restart_backoff(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
        self.restart_backoff_initial
            .saturating_mul(factor)
            .min(self.restart_backoff_max)
    }
}

/// Parses a human duration: `250ms`, `30s`, `5m`, `1h`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(handoff::timeouts::parse_duration("250ms").unwrap(), Duration::from_millis(250));
/// assert_eq!(handoff::timeouts::parse_duration("5m").unwrap(), Duration::from_secs(300));
/// assert!(handoff::timeouts::parse_duration("5 parsecs").is_err());
/// ```
pub fn parse_duration(input: &str) -> Result<Duration> {
    let bad = |problem| Error::InvalidTimeout {
        field: "duration",
        problem,
    };
    let text = input.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or(bad("missing unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| bad("expected a whole number"))?;
    let millis = match unit {
        "ms" => Some(value),
        "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        _ => return Err(bad("unknown unit (use ms, s, m or h)")),
    };
    millis
        .map(Duration::from_millis)
        .ok_or(bad("duration too large"))
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest
/// unit that divides it: `250ms`, `30s`, `5m`, `1h`.
///
/// ```
/// use std::time::Duration;
/// use handoff::timeouts::format_duration;
/// assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
/// assert_eq!(format_duration(Duration::from_secs(300)), "5m");
/// ```
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    match millis {
        0 => "0s".to_owned(),
        _ if millis.is_multiple_of(3_600_000) => format!("{}h", millis / 3_600_000),
        _ if millis.is_multiple_of(60_000) => format!("{}m", millis / 60_000),
        _ if millis.is_multiple_of(1_000) => format!("{}s", millis / 1_000),
        _ => format!("{millis}ms"),
    }
}
