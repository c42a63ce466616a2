//! The benchmark's zero-loss claim, short: `kvd` (exclusive mode),
//! `echod` (overlap mode) and the foreign Python daemon
//! (`examples/foreign/httpd.py`, `--protocol systemd`) under `handoffctl
//! run`, upgraded 5 times each with `handoffctl upgrade` under open-loop
//! load from 32 clients, lose nothing; the same load across naive restarts
//! (close the listener, bind again) fails requests, so the harness can see
//! losses. Where the test may (root), it runs in a network namespace of
//! its own, and the kernel's TCP counters are a third witness: none of its
//! refusal, reset or drop counters moves in a supervised run, and some do
//! in the naive one. The long run is `cargo run --release -p handoff-bench`
//! (README.md).

use std::time::Duration;

use handoff_bench::report::Counts;
use handoff_bench::run::{Config, Daemon, Observed, UpgraderKind, run};

use crate::common;

/// One benchmark at a time: each keeps both cores busy, and the suite's
/// timing-sensitive tests (liveness timeouts) run beside them.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Short enough for CI, with every kept-alive client sending more often
/// than the daemons' idle grace (32 clients at 300/s: every ~107 ms).
fn short(daemon: Daemon, upgrader: UpgraderKind, upgrades: usize) -> Observed {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Without the privilege the kernel's counters are shared with the rest
    // of the machine and only reported (`kernel_trouble` is then None).
    if let Err(error) = handoff_bench::kernel::enter_private_network() {
        eprintln!("kernel counters not isolated: {error}");
    }
    let examples = common::example("kvd")
        .parent()
        .expect("examples dir")
        .to_path_buf();
    let handoffctl = examples.parent().expect("target dir").join("handoffctl");
    assert!(
        handoffctl.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds handoffctl)",
        handoffctl.display()
    );
    let config = Config {
        upgrader,
        upgrades,
        clients: 32,
        rate: 300.0,
        steady: Duration::from_millis(300),
        interval: Duration::from_millis(150),
        ..Config::new(daemon, examples)
    };
    let observed = run(config).expect("benchmark run");
    eprintln!("{}", observed.to_json());
    observed
}

fn assert_zero_loss(observed: &Observed, upgrades: u64) {
    let counts = observed.counts();
    assert!(counts.requests > 0, "no load ran");
    assert_eq!(
        observed.harness_errors,
        Vec::<String>::new(),
        "harness errors"
    );
    assert_eq!(
        (
            counts.failed,
            counts.retried_idle_close,
            counts.lost_writes,
            counts.lingering_generations
        ),
        (0, 0, 0, 0),
        "{counts:?}"
    );
    assert_eq!(counts.handoffs, upgrades, "{counts:?}");
    assert_eq!(counts.identity_changes, upgrades, "{counts:?}");
    assert_eq!(
        observed.supervisor_log.map(|log| log.upgrades_committed),
        Some(upgrades),
        "handoffctl's event log agrees"
    );
    assert!(counts.witness_agrees);
    assert!(
        counts.kernel_trouble.is_none_or(|n| n == 0),
        "the kernel refused, reset or dropped connections: {:?}",
        observed.kernel
    );
}

#[test]
fn kvd_exclusive_upgrades_under_load_lose_nothing() {
    let observed = short(Daemon::Kvd, UpgraderKind::Ctl, 5);
    assert_zero_loss(&observed, 5);
    assert!(observed.counts().acked_writes > 0);
}

#[test]
fn echod_overlap_upgrades_under_load_lose_nothing() {
    let observed = short(Daemon::Echod, UpgraderKind::Ctl, 5);
    assert_zero_loss(&observed, 5);
}

#[test]
fn a_foreign_python_daemon_upgraded_under_load_loses_nothing() {
    // python3 is part of the machine image and of CI's; without it the run
    // fails with a clear error rather than passing.
    let observed = short(Daemon::ForeignHttpd, UpgraderKind::Ctl, 5);
    assert_zero_loss(&observed, 5);
    // Every answer was checked to be `pid=N` from the daemon.
    assert!(observed.counts().requests > 100, "{:?}", observed.counts());
}

#[test]
fn naive_restart_under_the_same_load_fails_requests() {
    let observed = short(Daemon::Kvd, UpgraderKind::NaiveRestart, 2);
    let Counts { refused, reset, .. } = observed.counts();
    assert!(
        refused + reset > 0,
        "a close-and-rebind restart showed no refused or reset connection: the harness is blind"
    );
    assert!(
        observed.counts().kernel_trouble.is_none_or(|n| n > 0),
        "the kernel counted no refusal or reset in a naive restart: {:?}",
        observed.kernel
    );
}

#[test]
fn a_naive_restart_of_the_foreign_daemon_fails_requests() {
    // The foreign client path (`GET /`, `pid=N` checked) is not blind
    // either: httpd.py alone (`--listen`), SIGTERM, start again.
    let observed = short(Daemon::ForeignHttpd, UpgraderKind::NaiveRestart, 2);
    let Counts { refused, reset, .. } = observed.counts();
    assert!(
        refused + reset > 0,
        "a close-and-rebind restart of httpd.py showed no refused or reset connection: {:?}",
        observed.counts()
    );
    assert!(
        observed.counts().kernel_trouble.is_none_or(|n| n > 0),
        "the kernel counted no refusal or reset: {:?}",
        observed.kernel
    );
    assert_eq!(
        observed.counts().identity_changes,
        2,
        "{:?}",
        observed.counts()
    );
}
