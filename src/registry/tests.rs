//! Unit tests of the registry with in-process handlers. Library handlers
//! and the stress test are in the integration binary.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;

/// Long enough never to pass in a test that does not expect it to.
const LONG: Duration = Duration::from_secs(60);

/// Spins (yielding) until `condition` holds; fails after 10 s. Used only to
/// observe a state another thread reaches without telling us, never instead
/// of an event we could wait for.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// An in-process handler that answers its label and counts its drops.
struct Tracked {
    label: &'static str,
    drops: Arc<AtomicUsize>,
}

impl Handler for Tracked {
    fn handle(&self, _ctx: &Context, _request: Request) -> Response {
        Response::text(200, self.label)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

fn tracked(label: &'static str, drops: &Arc<AtomicUsize>) -> HandlerSource {
    HandlerSource::handler(Tracked {
        label,
        drops: Arc::clone(drops),
    })
}

fn text(label: &'static str) -> HandlerSource {
    HandlerSource::from_fn(move |_, _| Response::text(200, label))
}

fn ctx() -> Context {
    Context::new("test", 7)
}

fn get() -> Request {
    Request::new("GET", "/")
}

fn body(registry: &HandlerRegistry, id: &str) -> String {
    let response = registry.execute(id, &ctx(), get()).unwrap();
    String::from_utf8(response.body).unwrap()
}

fn endpoint_state(registry: &HandlerRegistry, id: &str) -> Option<EndpointState> {
    registry
        .stats()
        .endpoints
        .iter()
        .find(|endpoint| endpoint.id == id)
        .map(|endpoint| endpoint.state)
}

#[test]
fn a_guard_counts_its_request_until_dropped_even_by_a_panic() {
    let registry = HandlerRegistry::new();
    registry.insert("a", text("a")).unwrap();
    let guard = registry.acquire("a").unwrap();
    assert_eq!(registry.stats().active_requests, 1);
    drop(guard);
    assert_eq!(registry.stats().active_requests, 0);

    let unwound = catch_unwind(AssertUnwindSafe(|| {
        let _guard = registry.acquire("a").unwrap();
        assert_eq!(registry.stats().active_requests, 1);
        panic!("request code panicked while holding a guard");
    }));
    assert!(unwound.is_err());
    assert_eq!(registry.stats().active_requests, 0);
}

#[test]
fn guards_taken_on_many_threads_sum_correctly() {
    let registry = Arc::new(HandlerRegistry::new());
    registry.insert("a", text("a")).unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(5));
    let (done_sender, done) = crossbeam_channel::unbounded();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (registry, barrier, done_sender) = (
                Arc::clone(&registry),
                Arc::clone(&barrier),
                done_sender.clone(),
            );
            std::thread::spawn(move || {
                let guards: Vec<_> = (0..3).map(|_| registry.acquire("a").unwrap()).collect();
                done_sender.send(()).unwrap();
                barrier.wait();
                drop(guards);
            })
        })
        .collect();
    for _ in 0..4 {
        done.recv_timeout(LONG).unwrap();
    }
    assert_eq!(registry.stats().active_requests, 12);
    barrier.wait();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(registry.stats().active_requests, 0);
}

#[test]
fn swap_graceful_sends_new_requests_to_the_new_handler_while_old_ones_finish() {
    let registry = HandlerRegistry::new();
    let v1_drops = Arc::new(AtomicUsize::new(0));
    registry.insert("greet", tracked("v1", &v1_drops)).unwrap();
    let in_flight = registry.acquire("greet").unwrap();

    let outcome = registry.swap_graceful("greet", text("v2"), LONG).unwrap();
    assert_eq!(
        outcome,
        SwapOutcome {
            endpoint: "greet".into(),
            new_version: 2,
            old_version: 1,
            pending_on_old: 1,
            draining: true,
        }
    );
    assert_eq!(body(&registry, "greet"), "v2");
    let stats = registry.stats();
    assert_eq!(
        (stats.loaded, stats.draining, stats.draining_requests),
        (1, 1, 1)
    );
    assert_eq!(stats.retired[0].version, 1);
    assert!(!stats.retired[0].released);

    let old = in_flight.call(&ctx(), get()).unwrap();
    assert_eq!(old.body, b"v1");
    assert_eq!(
        v1_drops.load(Ordering::SeqCst),
        0,
        "v1 must stay loaded while a request holds it"
    );
    drop(in_flight);
    assert!(registry.wait_drained(LONG));
    assert_eq!(v1_drops.load(Ordering::SeqCst), 1);
    let stats = registry.stats();
    assert_eq!(
        (stats.draining, stats.unloaded, stats.drain_timeouts),
        (0, 1, 0)
    );
}

#[test]
fn an_idle_handler_is_dropped_by_the_swap_itself() {
    let registry = HandlerRegistry::new();
    let drops = Arc::new(AtomicUsize::new(0));
    registry.insert("a", tracked("v1", &drops)).unwrap();
    let outcome = registry.swap_graceful("a", text("v2"), LONG).unwrap();
    assert_eq!((outcome.pending_on_old, outcome.draining), (0, false));
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert!(registry.stats().retired.is_empty());
}

#[test]
fn a_load_failure_leaves_the_old_handler_serving() {
    let registry = HandlerRegistry::new();
    registry.insert("a", text("v1")).unwrap();
    let missing = std::env::temp_dir().join("handoff-no-such-library.so");
    let error = registry
        .swap_graceful("a", HandlerSource::library(&missing), LONG)
        .unwrap_err();
    assert!(
        matches!(&error, Error::HandlerLoad { path, .. } if path == &missing),
        "{error}"
    );
    assert_eq!(body(&registry, "a"), "v1");
    assert_eq!(registry.stats().endpoints[0].version, 1);
    // The failed load consumed no version number.
    assert_eq!(registry.swap("a", text("v2")).unwrap().new_version, 2);
}

#[test]
fn a_drain_timeout_is_reported_and_the_last_request_unloads_the_handler() {
    let registry = HandlerRegistry::new();
    let v1_drops = Arc::new(AtomicUsize::new(0));
    registry.insert("a", tracked("v1", &v1_drops)).unwrap();
    let overrunning = registry.acquire("a").unwrap();
    registry
        .swap_graceful("a", text("v2"), Duration::from_millis(20))
        .unwrap();
    // The monitor reports at the deadline and lets go of v1.
    eventually("the monitor to release v1", || {
        registry
            .stats()
            .retired
            .first()
            .is_some_and(|retired| retired.released)
    });
    let stats = registry.stats();
    assert_eq!(stats.drain_timeouts, 1);
    assert_eq!(stats.retired[0].active_requests, 1);
    assert_eq!(
        v1_drops.load(Ordering::SeqCst),
        0,
        "never unloaded under a running call"
    );

    // The overrunning request still runs on v1, then its return unloads it.
    assert_eq!(overrunning.call(&ctx(), get()).unwrap().body, b"v1");
    drop(overrunning);
    assert_eq!(v1_drops.load(Ordering::SeqCst), 1);
    assert!(registry.wait_drained(LONG));
    assert_eq!(registry.stats().drain_timeouts, 1, "reported once");
}

#[test]
fn an_immediate_swap_lets_the_last_request_unload_the_old_handler() {
    let registry = HandlerRegistry::new();
    let v1_drops = Arc::new(AtomicUsize::new(0));
    registry.insert("a", tracked("v1", &v1_drops)).unwrap();
    let in_flight = registry.acquire("a").unwrap();
    let outcome = registry.swap("a", text("v2")).unwrap();
    assert_eq!((outcome.pending_on_old, outcome.draining), (1, true));
    let retired = registry.stats().retired;
    assert_eq!((retired.len(), retired[0].released), (1, true));
    assert_eq!(body(&registry, "a"), "v2");
    drop(in_flight);
    assert_eq!(v1_drops.load(Ordering::SeqCst), 1);
    assert_eq!(registry.stats().drain_timeouts, 0);
}

#[test]
fn cleanup_drained_counts_the_handlers_it_drops() {
    let registry = HandlerRegistry::new();
    registry.insert("a", text("v1")).unwrap();
    registry.insert("b", text("v1")).unwrap();
    let guards = [
        registry.acquire("a").unwrap(),
        registry.acquire("b").unwrap(),
    ];
    // Without the monitor thread, so that only cleanup_drained drops.
    registry.replace("a", text("v2"), Some(LONG)).unwrap();
    registry.replace("b", text("v2"), Some(LONG)).unwrap();
    assert_eq!(registry.cleanup_drained(), 0, "both still have a request");
    let [a, b] = guards;
    drop(a);
    assert_eq!(registry.cleanup_drained(), 1);
    drop(b);
    assert_eq!(registry.cleanup_drained(), 1);
    assert_eq!(registry.cleanup_drained(), 0);
    assert_eq!(registry.stats().unloaded, 2);
}

#[test]
fn a_removed_endpoint_answers_503_until_drained_then_404() {
    let registry = Arc::new(HandlerRegistry::new());
    let drops = Arc::new(AtomicUsize::new(0));
    registry.insert("gone", tracked("v1", &drops)).unwrap();
    let in_flight = registry.acquire("gone").unwrap();
    let remover = std::thread::spawn({
        let registry = Arc::clone(&registry);
        move || registry.remove("gone", LONG)
    });
    eventually("the removal to start", || {
        endpoint_state(&registry, "gone") == Some(EndpointState::Draining)
    });
    let refused = registry.execute("gone", &ctx(), get()).unwrap_err();
    assert!(
        matches!(refused, Error::EndpointDraining { .. }),
        "{refused}"
    );
    let response = error_response(&refused);
    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert!(matches!(
        registry.swap("gone", text("v2")),
        Err(Error::EndpointDraining { .. })
    ));

    assert_eq!(in_flight.call(&ctx(), get()).unwrap().body, b"v1");
    drop(in_flight);
    let outcome = remover.join().unwrap().unwrap();
    assert_eq!(
        outcome,
        RemoveOutcome {
            endpoint: "gone".into(),
            version: 1,
            drained: true,
            still_active: 0,
        }
    );
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    let unknown = registry.execute("gone", &ctx(), get()).unwrap_err();
    assert_eq!(error_response(&unknown).status, 404);
    // Versions go on across removal.
    assert_eq!(registry.insert("gone", text("again")).unwrap(), 2);
}

#[test]
fn a_removal_past_its_timeout_reports_and_unloads_after_the_last_request() {
    let registry = HandlerRegistry::new();
    let drops = Arc::new(AtomicUsize::new(0));
    registry.insert("slow", tracked("v1", &drops)).unwrap();
    let overrunning = registry.acquire("slow").unwrap();
    let outcome = registry.remove("slow", Duration::from_millis(20)).unwrap();
    assert_eq!((outcome.drained, outcome.still_active), (false, 1));
    assert!(!registry.contains("slow"));
    let stats = registry.stats();
    assert_eq!((stats.drain_timeouts, stats.draining_requests), (1, 1));
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(overrunning);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn a_panicking_handler_gives_500_and_leaves_every_other_handler_working() {
    let registry = HandlerRegistry::new();
    registry
        .insert(
            "boom",
            HandlerSource::from_fn(|_, request| panic!("bad input {}", request.path)),
        )
        .unwrap();
    registry.insert("fine", text("fine")).unwrap();
    for _ in 0..2 {
        let error = registry.execute("boom", &ctx(), get()).unwrap_err();
        match &error {
            Error::HandlerPanicked {
                id,
                version,
                message,
            } => {
                assert_eq!(
                    (id.as_str(), *version, message.as_str()),
                    ("boom", 1, "bad input /")
                );
            }
            other => panic!("expected a panic error, got {other}"),
        }
        let response = error_response(&error);
        assert_eq!(response.status, 500);
        assert!(
            !String::from_utf8_lossy(&response.body).contains("bad input"),
            "panic text stays in the log"
        );
        assert_eq!(body(&registry, "fine"), "fine");
    }
    assert_eq!(registry.stats().active_requests, 0);
}

#[test]
fn an_overrunning_handler_gives_504_and_keeps_its_guard_until_it_returns() {
    let registry = HandlerRegistry::new();
    let (release, released) = crossbeam_channel::bounded::<()>(1);
    registry
        .insert(
            "slow",
            HandlerSource::from_fn(move |_, _| {
                // The workload: wait until the test lets the call finish.
                let _ = released.recv_timeout(LONG);
                Response::text(200, "late")
            }),
        )
        .unwrap();
    let error = registry
        .execute_with_timeout("slow", &ctx(), get(), Duration::from_millis(20))
        .unwrap_err();
    assert!(
        matches!(error, Error::HandlerTimeout { version: 1, .. }),
        "{error}"
    );
    assert_eq!(error_response(&error).status, 504);
    assert_eq!(
        registry.stats().active_requests,
        1,
        "the call goes on in the background"
    );
    release.send(()).unwrap();
    eventually("the overrunning call to return", || {
        registry.stats().active_requests == 0
    });

    registry.insert("quick", text("quick")).unwrap();
    let response = registry
        .execute_with_timeout("quick", &ctx(), get(), LONG)
        .unwrap();
    assert_eq!(response.body, b"quick");
}

#[test]
fn an_acquire_racing_with_a_swap_moves_to_the_new_handler() {
    // An acquirer that loaded the old handler just before the swap sees it
    // draining and retries on the current one: a swap never fails a request.
    let registry = HandlerRegistry::new();
    registry.insert("a", text("v1")).unwrap();
    let endpoint = registry.endpoint("a").unwrap();
    let stale = endpoint.current.load();
    registry.swap("a", text("v2")).unwrap();
    assert!(stale.is_draining());
    let guard = HandlerRegistry::enter(&endpoint, stale).unwrap();
    assert_eq!(guard.version(), 2);
    drop(guard);
    // Whereas a draining handler that is still current refuses.
    endpoint.current.load().mark_draining();
    let refused = HandlerRegistry::enter(&endpoint, endpoint.current.load());
    assert!(matches!(refused, Err(Refusal::Draining)));
}

#[test]
fn ids_are_checked_on_insert_and_swap() {
    let registry = HandlerRegistry::new();
    registry.insert("a", text("v1")).unwrap();
    assert!(matches!(
        registry.insert("a", text("again")),
        Err(Error::EndpointExists { .. })
    ));
    assert!(matches!(
        registry.swap("b", text("b")),
        Err(Error::UnknownEndpoint { .. })
    ));
    assert!(matches!(
        registry.remove("b", LONG),
        Err(Error::UnknownEndpoint { .. })
    ));
}

#[test]
fn the_registry_drains_for_a_handoff_and_resumes_after_an_abort() {
    let mut registry = HandlerRegistry::new();
    registry.insert("a", text("v1")).unwrap();
    let before = registry.seal_info();

    // Drain with a request running past the deadline.
    let guard = registry.acquire("a").unwrap();
    let report =
        Drainable::drain(&mut registry, Instant::now() + Duration::from_millis(20)).unwrap();
    assert_eq!(
        report,
        DrainReport {
            open_connections: 1,
            accept_closed: true
        }
    );
    assert!(!registry.snapshot().accepting);
    assert!(matches!(
        registry.acquire("a"),
        Err(Error::EndpointDraining { .. })
    ));
    assert!(matches!(
        registry.swap("a", text("v2")),
        Err(Error::RegistryDrained)
    ));
    assert!(matches!(
        registry.insert("b", text("b")),
        Err(Error::RegistryDrained)
    ));
    drop(guard);
    let report = Drainable::drain(&mut registry, Instant::now() + LONG).unwrap();
    assert_eq!(report.open_connections, 0);
    let sealed = registry.seal(&mut SealProgress::discard()).unwrap();
    assert_eq!(
        sealed, before,
        "nothing changed, so the fingerprint is the same"
    );

    registry.resume_after_abort().unwrap();
    assert!(registry.snapshot().accepting);
    assert_eq!(body(&registry, "a"), "v1");
    registry.swap("a", text("v2")).unwrap();
    let after = registry.seal_info();
    assert_ne!(after.fingerprint, before.fingerprint);
    assert_eq!((before.revisions, after.revisions), (1, 2));
}

#[test]
fn a_drain_counts_requests_on_retired_handlers_too() {
    let registry = HandlerRegistry::new();
    registry.insert("a", text("v1")).unwrap();
    let on_old = registry.acquire("a").unwrap();
    registry.swap_graceful("a", text("v2"), LONG).unwrap();
    let report = registry.drain_all(Instant::now() + Duration::from_millis(20));
    assert_eq!(report.open_connections, 1);
    drop(on_old);
    let report = registry.drain_all(Instant::now() + LONG);
    assert_eq!(report.open_connections, 0);
}

#[test]
fn a_thread_caching_the_endpoint_map_keeps_no_removed_handler_loaded() {
    let registry = Arc::new(HandlerRegistry::new());
    let drops = Arc::new(AtomicUsize::new(0));
    registry.insert("a", tracked("v1", &drops)).unwrap();
    registry.insert("b", tracked("b", &drops)).unwrap();
    let (used, used_signal) = crossbeam_channel::bounded(1);
    let (finish, finish_signal) = crossbeam_channel::bounded::<()>(1);
    // A thread that served a request (so it caches the map) and then idles.
    let idle = std::thread::spawn({
        let registry = Arc::clone(&registry);
        move || {
            drop(registry.acquire("a").unwrap());
            drop(registry);
            used.send(()).unwrap();
            let _ = finish_signal.recv_timeout(LONG);
        }
    });
    used_signal.recv_timeout(LONG).unwrap();
    registry.remove("a", LONG).unwrap();
    assert_eq!(drops.load(Ordering::SeqCst), 1, "removed handler unloaded");
    drop(Arc::try_unwrap(registry).unwrap());
    assert_eq!(
        drops.load(Ordering::SeqCst),
        2,
        "dropped registry's handlers unloaded"
    );
    finish.send(()).unwrap();
    idle.join().unwrap();
}
