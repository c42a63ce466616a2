//! Handlers that were replaced or removed, and the background monitor that
//! drops them once drained.
//!
//! Waiting is done on a *bell*: a counter under a mutex with a condition
//! variable. The last request out of a draining handler rings it, and so
//! does every unload; a waiter reads the counter, checks its condition, and
//! sleeps until the counter moves or its deadline passes. A ring between the
//! check and the sleep moves the counter, so no wake-up is lost. The only
//! timer is the drain deadline itself.
//!
//! A retired handler is held in one of two ways (R6):
//! - *watched*: the registry holds it until its requests reach zero, then
//!   drops it (unloading its library), or until its deadline, when the
//!   timeout is logged and counted and the registry lets go of it;
//! - *released*: the registry keeps only a weak reference, for the
//!   statistics; whichever request finishes last drops it, on its own
//!   thread, after its call returned. A library is never unmapped while a
//!   call runs inside it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::instance::Instance;
use super::stats::DrainingStats;
use crate::error::{Error, Result};

/// Locks `mutex`, also after a panic on another thread poisoned it: every
/// critical section in the registry leaves its data consistent at each
/// statement, so the data is still good.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wake-ups and counters shared by a registry's instances.
#[derive(Default)]
pub(crate) struct Signals {
    pub(crate) bell: Bell,
    /// Instances dropped (libraries unloaded) so far.
    pub(crate) unloaded: AtomicU64,
    /// Drains that reached their deadline with requests still running.
    pub(crate) drain_timeouts: AtomicU64,
}

/// See the module header.
#[derive(Default)]
pub(crate) struct Bell {
    rings: Mutex<u64>,
    rung: Condvar,
}

impl Bell {
    pub(crate) fn rings(&self) -> u64 {
        *lock(&self.rings)
    }

    pub(crate) fn ring(&self) {
        *lock(&self.rings) += 1;
        self.rung.notify_all();
    }

    /// Sleeps until the bell rang after `seen` was read, or `deadline`.
    pub(crate) fn wait(&self, seen: u64, deadline: Option<Instant>) {
        let mut rings = lock(&self.rings);
        while *rings == seen {
            match deadline {
                None => {
                    rings = self
                        .rung
                        .wait(rings)
                        .unwrap_or_else(PoisonError::into_inner)
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return;
                    }
                    rings = self
                        .rung
                        .wait_timeout(rings, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    /// Waits until `done()` holds (true) or `deadline` passes (false).
    pub(crate) fn wait_until(&self, deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
        loop {
            let seen = self.rings();
            if done() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.wait(seen, Some(deadline));
        }
    }
}

enum Hold {
    Watched {
        instance: Arc<Instance>,
        deadline: Option<Instant>,
    },
    Released(Weak<Instance>),
}

struct Retiree {
    endpoint: Arc<str>,
    version: u64,
    since: Instant,
    hold: Hold,
}

/// Handlers replaced or removed and not yet unloaded.
#[derive(Default)]
pub(crate) struct Retired {
    retirees: Mutex<Vec<Retiree>>,
}

impl Retired {
    /// Holds `instance` until it drains or `deadline` passes.
    pub(crate) fn watch(&self, instance: Arc<Instance>, deadline: Option<Instant>) {
        let retiree = Retiree {
            endpoint: Arc::clone(&instance.endpoint),
            version: instance.version,
            since: Instant::now(),
            hold: Hold::Watched { instance, deadline },
        };
        lock(&self.retirees).push(retiree);
    }

    /// Lets go of `instance`: its last request unloads it.
    pub(crate) fn release(&self, instance: &Arc<Instance>, since: Instant) {
        let retiree = Retiree {
            endpoint: Arc::clone(&instance.endpoint),
            version: instance.version,
            since,
            hold: Hold::Released(Arc::downgrade(instance)),
        };
        lock(&self.retirees).push(retiree);
    }

    /// Drops watched instances that drained; reports and releases those past
    /// their deadline; forgets released ones that are gone. Returns how many
    /// instances it dropped and the next deadline.
    ///
    /// Instances are dropped under the lock, so once `sweep` returned, a
    /// drained instance it removed has been unloaded (unless a thread still
    /// holds a reference it took before the drain, which then unloads it).
    pub(crate) fn sweep(&self, signals: &Signals, now: Instant) -> (usize, Option<Instant>) {
        let mut retirees = lock(&self.retirees);
        let mut dropped = 0;
        let mut next_deadline: Option<Instant> = None;
        retirees.retain_mut(|retiree| match &retiree.hold {
            Hold::Watched { instance, deadline } => {
                let active = instance.active();
                if active == 0 {
                    dropped += 1;
                    return false;
                }
                match deadline {
                    Some(deadline) if *deadline <= now => {
                        signals.drain_timeouts.fetch_add(1, Ordering::SeqCst);
                        tracing::warn!(
                            endpoint = %retiree.endpoint,
                            version = retiree.version,
                            active,
                            waited_ms = millis(now.saturating_duration_since(retiree.since)),
                            "drain timeout: handler still has requests; it is unloaded when the last one returns"
                        );
                        retiree.hold = Hold::Released(Arc::downgrade(instance));
                    }
                    Some(deadline) => {
                        next_deadline = Some(next_deadline.map_or(*deadline, |next| next.min(*deadline)));
                    }
                    None => {}
                }
                true
            }
            Hold::Released(weak) => weak.strong_count() > 0,
        });
        (dropped, next_deadline)
    }

    /// Whether no retired instance is alive.
    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.retirees)
            .iter()
            .all(|retiree| match &retiree.hold {
                Hold::Watched { .. } => false,
                Hold::Released(weak) => weak.strong_count() == 0,
            })
    }

    /// Requests still running on retired instances.
    pub(crate) fn active(&self) -> usize {
        self.stats(Instant::now())
            .iter()
            .map(|stats| stats.active_requests)
            .sum()
    }

    pub(crate) fn stats(&self, now: Instant) -> Vec<DrainingStats> {
        lock(&self.retirees)
            .iter()
            .filter_map(|retiree| {
                let (active, overdue) = match &retiree.hold {
                    Hold::Watched { instance, .. } => (instance.active(), false),
                    Hold::Released(weak) => (weak.upgrade()?.active(), true),
                };
                Some(DrainingStats {
                    endpoint: retiree.endpoint.to_string(),
                    version: retiree.version,
                    active_requests: active,
                    released: overdue,
                    draining_for_ms: millis(now.saturating_duration_since(retiree.since)),
                })
            })
            .collect()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The background thread that sweeps [`Retired`] whenever the bell rings
/// or a drain deadline passes.
pub(crate) struct Monitor {
    stop: Arc<AtomicBool>,
    signals: Arc<Signals>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    pub(crate) fn start(retired: Arc<Retired>, signals: Arc<Signals>) -> Result<Monitor> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("handoff-drain-monitor".to_owned())
            .spawn({
                let stop = Arc::clone(&stop);
                let signals = Arc::clone(&signals);
                move || {
                    loop {
                        let seen = signals.bell.rings();
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let (_, next_deadline) = retired.sweep(&signals, Instant::now());
                        signals.bell.wait(seen, next_deadline);
                    }
                }
            })
            .map_err(|source| Error::io("starting the drain monitor thread", source))?;
        Ok(Monitor {
            stop,
            signals,
            thread: Some(thread),
        })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.signals.bell.ring();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the drain monitor thread panicked");
        }
    }
}
