//! The crash matrix: every fault point of every role armed in turn with
//! `crash`, against a real `testd` under writes. After each run: the
//! documented outcome, every acknowledged write readable, never two holders
//! of the data-directory lock (a prober reads /proc/locks every millisecond,
//! without taking the lock), and no generation left behind.
//!
//! Needs `--features fault-injection` (the README's test command enables it).

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use handoff::Mode;
use handoff::fault::{self, FaultPoint, FaultRole, SupervisorStep};
use handoff::supervisor::{Outcome, UpgradeRequest};
use testkit::{testd_hit as hit, testd_items as items};

use crate::common::{
    Harness, LockProber, Reaper, TempDir, WAIT, alive, eventually, example, get,
    processes_mentioning, put, request, spawn_line_reader, test_timeouts, wait_child,
};

fn crash_env(point: FaultPoint, generation: Option<u64>) -> Vec<(OsString, OsString)> {
    let mut env = vec![(fault::ENV_FAULT.into(), format!("{point}:crash").into())];
    if let Some(generation) = generation {
        env.push((
            fault::ENV_FAULT_GENERATION.into(),
            generation.to_string().into(),
        ));
    }
    env
}

/// Points the process matrix cannot reach deterministically; their
/// transitions are covered by the machines' unit tests.
fn unreachable_here(point: FaultPoint) -> Option<&'static str> {
    match (point.role, point.state) {
        (FaultRole::Incumbent, "draining_aborted" | "sealing_aborted") => {
            Some("needs an abort to arrive while the drain or seal hook runs")
        }
        (FaultRole::Supervisor, "await_incumbent_exit") => {
            Some("needs the incumbent to die mid-handoff")
        }
        (FaultRole::Supervisor, "retire_draining") => {
            Some("overlap mode only (testd runs exclusive here)")
        }
        (
            FaultRole::Supervisor,
            "foreign_starting" | "foreign_probing" | "foreign_stopping_successor" | "foreign_done",
        ) => Some("--protocol systemd only (faultsup runs library daemons)"),
        (
            FaultRole::Supervisor,
            "retire_probation" | "retire_resuming" | "retire_resumed" | "retire_standby",
        ) => Some("probation is off in faultsup (overlap mode with --probation only)"),
        (FaultRole::Supervisor, "terminated" | "killed") => {
            Some("needs an old generation that ignores Retire")
        }
        (FaultRole::Supervisor, state)
            if SupervisorStep::ALL
                .iter()
                .any(|step| step.as_str() == state) =>
        {
            Some("handoffctl's own re-exec and adoption steps: its CLI tests run them")
        }
        _ => None,
    }
}

/// A successor crashing at any of its points: rolled back, the incumbent
/// keeps serving and writing.
fn successor_point(point: FaultPoint) {
    let harness = Harness::start(Mode::Exclusive, &["--relock-ms", "2000", "--items", "1"]);
    let dir = harness.data.as_ref().expect("data").path().to_path_buf();
    let _reaper = Reaper(dir.display().to_string());
    let prober = LockProber::start(&dir);
    let old = harness.info().pid;
    put(harness.addr, "before", "1");
    hit(harness.addr);
    let outcome = harness
        .handle
        .upgrade(UpgradeRequest {
            args: Some(
                harness
                    .args(&["--items", "1"])
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            ),
            // Only this successor gets the variable: no generation filter.
            env: crash_env(point, None),
            ..UpgradeRequest::default()
        })
        .expect("outcome");
    let Outcome::RolledBack { failed_pid, .. } = outcome else {
        panic!("{point}: expected a rollback, got {outcome:?}");
    };
    assert!(
        !failed_pid.is_some_and(alive),
        "{point}: the successor was reaped"
    );
    assert_eq!(harness.info().pid, old, "{point}: the incumbent serves");
    put(harness.addr, "after", "2");
    assert_eq!(get(harness.addr, "before"), "VALUE 1");
    // What the crashed successor put (its "begun" blob, from its begin
    // on) was dropped with it (I21): the next successor gets the
    // incumbent's cache, its sealed blob and its own "begun".
    let outcome = harness.upgrade(harness.args(&["--items", "1"]));
    assert!(outcome.is_committed(), "{point}: {outcome:?}");
    assert_eq!(
        items(harness.addr),
        (format!("revisions=2 by={old}"), 1),
        "{point}"
    );
    let begun = request(harness.addr, "BEGUN").expect("BEGUN");
    assert_eq!(begun, format!("by={old}"), "{point}");
    assert!(prober.finish() <= 1, "{point}: two lock holders at once");
}

/// The incumbent (generation 1) crashing at one of its points during (or
/// around) an upgrade. Some generation serves afterwards and every
/// acknowledged write is there.
fn incumbent_point(point: FaultPoint) {
    let harness = Harness::start_env(
        Mode::Exclusive,
        &["--relock-ms", "2000", "--items", "1"],
        test_timeouts(),
        crash_env(point, Some(1)),
    );
    let dir = harness.data.as_ref().expect("data").path().to_path_buf();
    let _reaper = Reaper(dir.display().to_string());
    let prober = LockProber::start(&dir);
    // At "serving" generation 1 crashes at its own start, perhaps with a
    // connection its accept loop just took: a restart serves.
    if point.state == "serving" {
        eventually(&format!("{point}: the restart serves"), || {
            request(harness.addr, "INFO").is_ok_and(|info| !info.contains(" generation=1 "))
        });
    }
    put(harness.addr, "before", "1");
    let first = harness.info().pid;
    hit(harness.addr);
    // Relocking and resuming are only on the abort path: make the
    // successor fail after the incumbent sealed.
    let successor_args = match point.state {
        "relocking" | "resuming" => harness.args(&["--fail-at", "begin", "--items", "1"]),
        _ => harness.args(&["--items", "1"]),
    };
    let outcome = harness
        .handle
        .upgrade(UpgradeRequest {
            args: Some(successor_args.into_iter().map(Into::into).collect()),
            ..UpgradeRequest::default()
        })
        .expect("outcome");
    match point.state {
        "draining" | "drained" | "sealing" | "sealed" | "ended" | "serving" => {
            assert!(
                outcome.is_committed(),
                "{point}: the successor takes over: {outcome:?}"
            )
        }
        _ => assert!(!outcome.is_committed(), "{point}: {outcome:?}"),
    }
    // Whoever serves now (successor, or a restarted generation) has it all.
    eventually(&format!("{point}: a generation serves"), || {
        request(harness.addr, "GET before").is_ok_and(|reply| reply == "VALUE 1")
    });
    put(harness.addr, "after", "2");
    // Whoever serves has the cache generation 1 put (one hit), and either
    // no blob or the one generation 1 sealed (I21).
    let (blob, hits) = items(harness.addr);
    assert_eq!(hits, 1, "{point}");
    let sealed = format!("revisions=1 by={first}");
    assert!(blob == "-" || blob == sealed, "{point}: blob {blob:?}");
    eventually(&format!("{point}: one generation left"), || {
        processes_mentioning(&dir.display().to_string()).len() == 1
    });
    assert!(prober.finish() <= 1, "{point}: two lock holders at once");
}

/// The supervisor (a separate `faultsup` process) crashing at one of its
/// points during an upgrade: the generations keep serving on the listener
/// they hold, exactly one of them writes, no uncommitted successor survives.
fn supervisor_point(point: FaultPoint) {
    let data = TempDir::new("faultsup");
    let needle = data.path().display().to_string();
    let _reaper = Reaper(needle.clone());
    let prober = LockProber::start(data.path());
    let mut successor_args: Vec<String> = Vec::new();
    if matches!(point.state, "aborting" | "resuming") {
        successor_args.extend(["--fail-at".into(), "begin".into()]);
    }
    // Handoff points fire in the upgrade (generation 2); retire points on
    // generation 1 being retired.
    let generation = if matches!(point.state, "retiring" | "gone") {
        1
    } else {
        2
    };
    let mut child: Child = Command::new(example("faultsup"))
        .arg(example("testd"))
        .arg(data.path())
        .arg("--")
        .args(&successor_args)
        .envs(crash_env(point, Some(generation)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("faultsup");
    let mut stdin = child.stdin.take().expect("stdin");
    let lines = spawn_line_reader(child.stdout.take().expect("stdout"));
    let next = |prefix: &str| -> Option<String> {
        lines.recv_timeout(WAIT).ok().map(|line| {
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{point}: expected {prefix}, got {line}"))
                .to_owned()
        })
    };
    let addr: SocketAddr = next("ADDR ").expect("ADDR").parse().expect("addr");
    let old: u32 = next("SERVING ").expect("SERVING").parse().expect("pid");
    put(addr, "before", "1");
    writeln!(stdin, "UPGRADE").expect("ask for an upgrade");
    // Every point of this list is reached by this scenario: the supervisor
    // must crash (at `done` and `gone` after it printed the outcome).
    // The generations inherit faultsup's stdout, so its pipe does not end
    // when faultsup dies: wait for the process, then take what it printed.
    let status = wait_child(&mut child);
    let outcome = lines.try_recv().ok();
    assert!(
        !status.success(),
        "{point}: the supervisor crashed ({status:?}, outcome {outcome:?})"
    );
    drop(stdin);
    eventually(&format!("{point}: a generation serves"), || {
        request(addr, "GET before").is_ok_and(|reply| reply == "VALUE 1")
    });
    put(addr, "after", "2");
    eventually(&format!("{point}: one generation left (old {old})"), || {
        processes_mentioning(&needle).len() <= 1
    });
    assert!(prober.finish() <= 1, "{point}: two lock holders at once");
}

fn run(role: FaultRole, each: fn(FaultPoint)) {
    let mut ran = Vec::new();
    for point in fault::points().into_iter().filter(|p| p.role == role) {
        if let Some(why) = unreachable_here(point) {
            eprintln!("fault matrix: {point} not run: {why}");
            continue;
        }
        eprintln!("fault matrix: {point}");
        each(point);
        ran.push(point.to_string());
    }
    assert!(!ran.is_empty());
    eprintln!(
        "fault matrix: {role:?}: {} points: {}",
        ran.len(),
        ran.join(" ")
    );
}

#[test]
fn every_successor_point_rolls_back() {
    run(FaultRole::Successor, successor_point);
}

#[test]
fn every_incumbent_point_leaves_one_writer_serving() {
    run(FaultRole::Incumbent, incumbent_point);
}

#[test]
fn every_supervisor_point_leaves_one_writer_serving() {
    run(FaultRole::Supervisor, supervisor_point);
}

#[test]
fn the_matrix_skips_only_the_documented_points() {
    let skipped: Vec<String> = fault::points()
        .into_iter()
        .filter(|p| unreachable_here(*p).is_some())
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        skipped,
        [
            "supervisor:await_incumbent_exit",
            "supervisor:retire_draining",
            "supervisor:terminated",
            "supervisor:killed",
            "supervisor:retire_probation",
            "supervisor:retire_resuming",
            "supervisor:retire_resumed",
            "supervisor:retire_standby",
            "supervisor:foreign_starting",
            "supervisor:foreign_probing",
            "supervisor:foreign_stopping_successor",
            "supervisor:foreign_done",
            "supervisor:reexec_before_exec",
            "supervisor:reexec_after_exec",
            "supervisor:reexec_restored",
            "supervisor:reexec_readopted",
            "supervisor:adopt_before_listeners",
            "supervisor:adopt_after_listeners",
            "incumbent:draining_aborted",
            "incumbent:sealing_aborted",
        ],
        "the skips listed in ARCHITECTURE.md's fault table"
    );
}
