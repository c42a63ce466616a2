//! Cost of the request path of the handler registry: acquire + release of a
//! guard, and a whole `execute` of an in-process handler, on one thread and
//! on two threads at once, beside a baseline built the simple way (an
//! `RwLock<HashMap<String, Arc<_>>>` with atomic counters).
//!
//! Figures are CPU time per call, read from the thread's CPU clock (see
//! `on_two_threads`). On two threads the figure is the time per call *on
//! each thread*
//! (both threads run the same number of calls at once): equal to the
//! one-thread figure means no slowdown per call.
//!
//! Run: `cargo bench --bench registry -- --warm-up-time 1 --measurement-time 3`
//!
//! Wall-clock figures on a shared 2-core machine are noisy; for a stable
//! CPU cost, count instructions: with `HANDOFF_BENCH_CALLS=N` and one
//! argument naming an operation (`registry_acquire`, `baseline_acquire`,
//! `registry_execute`, `baseline_execute`), the binary runs that operation
//! N times on one thread and exits, for `perf stat -e instructions:u`:
//! the difference between two N divided by their difference is the cost of
//! one call.
#![allow(clippy::unwrap_used, reason = "benchmark setup")]

use std::collections::HashMap;
use std::hint::black_box;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, RwLock};
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use handoff::registry::{Context, Handler, HandlerRegistry, HandlerSource, Request, Response};

const ENDPOINTS: usize = 16;
const TARGET: &str = "endpoint_7";

fn answer(_ctx: &Context, _request: Request) -> Response {
    Response::new(204)
}

/// The simple design the registry is measured against.
struct Baseline {
    handlers: RwLock<HashMap<String, Arc<BaselineEntry>>>,
}

struct BaselineEntry {
    handler: Arc<dyn Handler>,
    active: AtomicUsize,
    draining: AtomicBool,
}

struct BaselineGuard(Arc<BaselineEntry>);

impl Drop for BaselineGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Baseline {
    fn new() -> Baseline {
        let handlers = (0..ENDPOINTS)
            .map(|index| {
                let entry = BaselineEntry {
                    handler: Arc::new(answer),
                    active: AtomicUsize::new(0),
                    draining: AtomicBool::new(false),
                };
                (format!("endpoint_{index}"), Arc::new(entry))
            })
            .collect();
        Baseline {
            handlers: RwLock::new(handlers),
        }
    }

    fn acquire(&self, id: &str) -> Option<BaselineGuard> {
        let entry = Arc::clone(self.handlers.read().unwrap().get(id)?);
        entry.active.fetch_add(1, Ordering::SeqCst);
        let guard = BaselineGuard(entry);
        (!guard.0.draining.load(Ordering::SeqCst)).then_some(guard)
    }

    fn execute(&self, id: &str, ctx: &Context, request: Request) -> Option<Response> {
        let guard = self.acquire(id)?;
        catch_unwind(AssertUnwindSafe(|| guard.0.handler.handle(ctx, request))).ok()
    }
}

fn registry() -> HandlerRegistry {
    let registry = HandlerRegistry::new();
    for index in 0..ENDPOINTS {
        registry
            .insert(&format!("endpoint_{index}"), HandlerSource::handler(answer))
            .unwrap();
    }
    registry
}

/// Runs `operation` `iterations` times on each of two threads started
/// together; returns the mean of the two threads' CPU times, so criterion
/// reports the CPU cost of one call on each thread. CPU time rather than
/// wall time: on a shared machine a thread that is descheduled would
/// otherwise be charged for another process's work, while stalls on a cache
/// line that the other thread keeps taking away are still counted.
fn on_two_threads(iterations: u64, operation: &(dyn Fn() + Sync)) -> Duration {
    let barrier = Barrier::new(2);
    let thread_times: Vec<Duration> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let started = thread_cpu_time();
                    for _ in 0..iterations {
                        operation();
                    }
                    thread_cpu_time().saturating_sub(started)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .collect()
    });
    thread_times.iter().sum::<Duration>() / 2
}

/// Runs `operation` `iterations` times on this thread; returns the
/// thread's CPU time (see [`on_two_threads`]).
fn on_one_thread(iterations: u64, operation: &dyn Fn()) -> Duration {
    let started = thread_cpu_time();
    for _ in 0..iterations {
        operation();
    }
    thread_cpu_time().saturating_sub(started)
}

fn thread_cpu_time() -> Duration {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    Duration::from(now)
}

fn benches(criterion: &mut Criterion) {
    let registry = registry();
    let baseline = Baseline::new();
    let ctx = Context::new(TARGET, 1);

    let registry_acquire = || drop(black_box(registry.acquire(black_box(TARGET)).unwrap()));
    let baseline_acquire = || drop(black_box(baseline.acquire(black_box(TARGET)).unwrap()));
    let registry_execute = || {
        black_box(
            registry
                .execute(black_box(TARGET), &ctx, Request::default())
                .unwrap(),
        );
    };
    let baseline_execute = || {
        black_box(
            baseline
                .execute(black_box(TARGET), &ctx, Request::default())
                .unwrap(),
        );
    };

    let mut group = criterion.benchmark_group("acquire_release");
    group.bench_function("registry/1_thread", |bencher| {
        bencher.iter_custom(|iterations| on_one_thread(iterations, &registry_acquire))
    });
    group.bench_function("baseline/1_thread", |bencher| {
        bencher.iter_custom(|iterations| on_one_thread(iterations, &baseline_acquire))
    });
    group.bench_function("registry/2_threads", |bencher| {
        bencher.iter_custom(|iterations| on_two_threads(iterations, &registry_acquire))
    });
    group.bench_function("baseline/2_threads", |bencher| {
        bencher.iter_custom(|iterations| on_two_threads(iterations, &baseline_acquire))
    });
    group.finish();

    let mut group = criterion.benchmark_group("execute");
    group.bench_function("registry/1_thread", |bencher| {
        bencher.iter_custom(|iterations| on_one_thread(iterations, &registry_execute))
    });
    group.bench_function("baseline/1_thread", |bencher| {
        bencher.iter_custom(|iterations| on_one_thread(iterations, &baseline_execute))
    });
    group.bench_function("registry/2_threads", |bencher| {
        bencher.iter_custom(|iterations| on_two_threads(iterations, &registry_execute))
    });
    group.bench_function("baseline/2_threads", |bencher| {
        bencher.iter_custom(|iterations| on_two_threads(iterations, &baseline_execute))
    });
    group.finish();
}

criterion_group!(registry_benches, benches);

/// Runs one operation `calls` times, for instruction counting.
fn count_mode(calls: u64, operation: &str) {
    let registry = registry();
    let baseline = Baseline::new();
    let ctx = Context::new(TARGET, 1);
    let repeat = |operation: &dyn Fn()| {
        for _ in 0..calls {
            operation();
        }
    };
    match operation {
        "registry_acquire" => {
            repeat(&|| drop(black_box(registry.acquire(black_box(TARGET)).unwrap())))
        }
        "baseline_acquire" => {
            repeat(&|| drop(black_box(baseline.acquire(black_box(TARGET)).unwrap())))
        }
        "registry_execute" => repeat(&|| {
            drop(black_box(
                registry
                    .execute(black_box(TARGET), &ctx, Request::default())
                    .unwrap(),
            ))
        }),
        "baseline_execute" => repeat(&|| {
            drop(black_box(
                baseline
                    .execute(black_box(TARGET), &ctx, Request::default())
                    .unwrap(),
            ))
        }),
        other => panic!("unknown operation {other}"),
    }
}

fn main() {
    if let Some(calls) = std::env::var("HANDOFF_BENCH_CALLS")
        .ok()
        .and_then(|calls| calls.parse().ok())
    {
        let operation = std::env::args().nth(1).unwrap_or_default();
        count_mode(calls, &operation);
        return;
    }
    registry_benches();
    Criterion::default().configure_from_args().final_summary();
}
