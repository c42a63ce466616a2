//! The benchmark's zero-loss claim, short: `kvd` (exclusive mode),
//! `echod` (overlap mode) and the foreign Python daemon
//! (`examples/foreign/httpd.py`, `--protocol systemd`) under `handoffctl
//! run`, upgraded 5 times each with `handoffctl upgrade` under open-loop
//! load from 32 clients, lose nothing; each upgrade runs a fresh build put
//! in place just before it, as a deploy does (echod alternates two fixed
//! builds, the benchmark's other mode). `kvd` upgraded many times under a
//! connection per request loses nothing either: that load is the one that
//! most often has a connection accepted as a drain begins. The same load
//! across naive restarts (close the listener, bind again) fails requests,
//! so the harness can see losses. Where the test may (root), it runs in a
//! network namespace of its own, and the kernel's TCP counters are a third
//! witness: none of its refusal, reset or drop counters moves in a
//! supervised run, and some do in the naive one. One predicate judges a
//! run, the benchmark's own (`Counts::zero_loss_violations`). The long run
//! is `cargo run --release -p handoff-bench` (README.md).

use std::time::Duration;

use handoff_bench::load::Connections;
use handoff_bench::run::{Builds, Config, Daemon, Observed, UpgraderKind, run};

use crate::common;

/// One benchmark at a time: each keeps both cores busy, and the suite's
/// timing-sensitive tests (liveness timeouts) run beside them.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Short enough for CI, with every kept-alive client sending more often
/// than the daemons' idle grace (32 clients at 300/s: every ~107 ms).
fn short(daemon: Daemon, upgrader: UpgraderKind, upgrades: usize) -> Observed {
    measure(Config {
        upgrader,
        upgrades,
        ..short_config(daemon)
    })
}

/// The debug examples, beside `handoffctl`.
fn examples() -> std::path::PathBuf {
    common::example("kvd")
        .parent()
        .expect("examples dir")
        .to_path_buf()
}

/// Runs the benchmark with `config` over the short defaults below, one at
/// a time, and prints its table.
fn measure(config: Config) -> Observed {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Without the privilege the kernel's counters are shared with the rest
    // of the machine and only reported (`kernel_trouble` is then None).
    if let Err(error) = handoff_bench::kernel::enter_private_network() {
        eprintln!("kernel counters not isolated: {error}");
    }
    let handoffctl = config
        .examples_dir
        .parent()
        .expect("target dir")
        .join("handoffctl");
    assert!(
        handoffctl.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds handoffctl)",
        handoffctl.display()
    );
    let started = std::time::Instant::now();
    let observed = run(config).expect("benchmark run");
    eprintln!(
        "{} ({:.1} s)\n{}",
        observed.title(),
        started.elapsed().as_secs_f64(),
        observed.to_table()
    );
    observed
}

/// The short defaults: 32 clients at 300 requests/s, 300 ms steady, 150 ms
/// between upgrades.
fn short_config(daemon: Daemon) -> Config {
    Config {
        clients: 32,
        rate: 300.0,
        steady: Duration::from_millis(300),
        interval: Duration::from_millis(150),
        ..Config::new(daemon, examples())
    }
}

fn assert_zero_loss(observed: &Observed) {
    let violations = observed.counts().zero_loss_violations();
    assert!(
        violations.is_empty(),
        "{}\n{}",
        violations.join("\n"),
        observed.to_table()
    );
}

#[test]
fn kvd_exclusive_upgrades_under_load_lose_nothing() {
    let observed = short(Daemon::Kvd, UpgraderKind::Ctl, 5);
    assert_zero_loss(&observed);
    assert!(observed.counts().acked_writes > 0);
    assert_eq!(observed.config.builds, Builds::Fresh, "the default");
}

#[test]
fn echod_overlap_upgrades_to_two_fixed_builds_under_load_lose_nothing() {
    let observed = measure(Config {
        upgrades: 5,
        builds: Builds::Fixed,
        ..short_config(Daemon::Echod)
    });
    assert_zero_loss(&observed);
}

#[test]
fn a_foreign_python_daemon_upgraded_under_load_loses_nothing() {
    // python3 is part of the machine image and of CI's; without it the run
    // fails with a clear error rather than passing.
    let observed = short(Daemon::ForeignHttpd, UpgraderKind::Ctl, 5);
    assert_zero_loss(&observed);
    // Every answer was checked to be `pid=N` from the daemon.
    assert!(observed.counts().requests > 100, "{:?}", observed.counts());
}

/// A request answered by a closed connection during handoffs: a
/// connection accepted just as a drain began was counted only once its
/// task first ran, so the drain could count none, end at once, and the
/// connection closed with no answer (or was answered 503 after the seal).
/// A new connection per request makes the most connections arrive at that
/// instant; each upgrade runs a fresh build, as a deploy does.
///
/// The race is rare per upgrade, hence the count. Against the code before
/// the fix (e4f4ff7, debug builds as here) 200 upgrades at 1000/s failed
/// 8 runs of 8 (1 to 4 requests each); at 300/s the failures cluster (6
/// runs of 8: 0 to 7 each); 100 upgrades at 1000/s missed 1 run of 11.
/// With the fix: 0 failures, about 25 s.
#[test]
fn kvd_upgraded_many_times_with_a_connection_per_request_loses_nothing() {
    let observed = measure(Config {
        upgrades: PER_REQUEST_UPGRADES,
        connections: Connections::PerRequest,
        rate: PER_REQUEST_RATE,
        // Shorter than a deploy (copy and hash a debug kvd): upgrades
        // follow each other as fast as builds are put in place.
        interval: Duration::from_millis(50),
        ..short_config(Daemon::Kvd)
    });
    assert_zero_loss(&observed);
}

/// Upgrades of the per-request test.
const PER_REQUEST_UPGRADES: usize = 200;
/// Its arrival rate, requests (and so connections) per second.
const PER_REQUEST_RATE: f64 = 1000.0;

#[test]
fn naive_restart_under_the_same_load_fails_requests() {
    let observed = short(Daemon::Kvd, UpgraderKind::NaiveRestart, 2);
    let violations = observed.counts().control_violations();
    assert!(violations.is_empty(), "{violations:?}");
}

#[test]
fn a_naive_restart_of_the_foreign_daemon_fails_requests() {
    // The foreign client path (`GET /`, `pid=N` checked) is not blind
    // either: httpd.py alone (`--listen`), SIGTERM, start again.
    let observed = short(Daemon::ForeignHttpd, UpgraderKind::NaiveRestart, 2);
    let violations = observed.counts().control_violations();
    assert!(violations.is_empty(), "{violations:?}");
    assert_eq!(
        observed.counts().identity_changes,
        2,
        "{:?}",
        observed.counts()
    );
}
