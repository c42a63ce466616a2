//! The data-directory lock against processes that are not the handoff's own
//! two generations: an orphan left by a crashed supervisor, and a third
//! process that takes the lock in the instant the incumbent lets go of it.
//! In both, the lock is never broken and never held by two at once
//! (invariant I1): whoever cannot get it fails, and the writer that holds it
//! keeps writing.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;

use handoff::Mode;
use handoff::os::{Sig, signal};
use handoff::supervisor::{Outcome, SupervisorEvent, UpgradeRequest};

use crate::common::{
    Harness, IO, LockProber, Reaper, WAIT, alive, eventually, flocks, get, lock_id, put,
};

/// Blocks in `flock` on `DIR/.handoff.lock` on a thread of the test
/// process, an open file description of its own: a third process as far as
/// the lock is concerned. Returns once the request is queued in the kernel
/// (listed as blocked in /proc/locks); the file arrives on the channel when
/// the lock is taken.
fn third_party_waits_for_the_lock(
    dir: &Path,
) -> (
    crossbeam_channel::Receiver<File>,
    std::thread::JoinHandle<()>,
) {
    let path = dir.join(".handoff.lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open the lock file");
    let id = lock_id(&file.metadata().expect("lock file metadata"));
    let (sender, receiver) = crossbeam_channel::bounded(1);
    let waiter = std::thread::spawn(move || {
        file.lock().expect("flock");
        let _ = sender.send(file);
    });
    eventually("the test's lock request is blocked in the kernel", || {
        flocks(&id).waiters == 1
    });
    (receiver, waiter)
}

/// A third process takes the data-directory lock between the incumbent's
/// seal and the successor's Begin: the successor fails with a lock error,
/// the handoff rolls back, and the incumbent re-takes the lock once the
/// third party lets go, then writes again.
///
/// The third party is this test: an `flock` request queued in the kernel
/// before the upgrade starts, so the incumbent's release at seal wakes it.
/// Waking is not handing over (the woken waiter still has to run and take
/// the lock, and a `try_lock` that comes first wins), so the test fixes the
/// order instead of racing for it: a client request held open keeps the
/// drain (and so the seal) from finishing until the successor, which is by
/// then waiting for Begin, is stopped with SIGSTOP; it is continued once the
/// test holds the lock.
#[test]
fn a_successor_that_cannot_take_the_lock_aborts_and_the_incumbent_keeps_writing() {
    let harness = Harness::start(Mode::Exclusive, &["--relock-ms", "10000"]);
    let dir = harness.data.as_ref().expect("data").path().to_path_buf();
    let _reaper = Reaper(dir.display().to_string());
    let prober = LockProber::start(&dir);
    let incumbent = harness.info().pid;
    put(harness.addr, "before", "1");

    // testd drains by waiting for the connections it accepted. One accepted
    // connection with no request yet holds the drain open; the INFO after
    // it proves it was accepted (one accept loop, a FIFO backlog).
    let mut held = TcpStream::connect(harness.addr).expect("connect");
    held.set_read_timeout(Some(IO)).expect("timeout");
    assert_eq!(harness.info().pid, incumbent);
    let (third_party, waiter) = third_party_waits_for_the_lock(&dir);

    let handle = harness.handle.clone();
    let args = harness.args(&[]).into_iter().map(Into::into).collect();
    let upgrade = std::thread::spawn(move || {
        handle.upgrade(UpgradeRequest {
            args: Some(args),
            ..UpgradeRequest::default()
        })
    });
    let SupervisorEvent::HandoffStarted { successor_pid, .. } =
        harness.wait_event(|event| matches!(event, SupervisorEvent::HandoffStarted { .. }))
    else {
        unreachable!("matched above");
    };
    // Draining comes after the successor's Warm: it now waits for Begin.
    harness.wait_phase("draining");
    signal(successor_pid, Sig::Stop).expect("stop the successor");
    // Let the drain finish: the seal releases the lock to the test.
    writeln!(held, "INFO").expect("finish the held request");
    let mut reply = String::new();
    BufReader::new(&held).read_line(&mut reply).expect("reply");
    let lock = third_party
        .recv_timeout(WAIT)
        .expect("the test gets the lock the incumbent released at seal");
    signal(successor_pid, Sig::Cont).expect("continue the successor");

    // The successor fails on the lock; the supervisor tells the incumbent to
    // resume, which waits (up to its relock timeout) for the lock the test
    // holds. Let go of it.
    harness.wait_phase("resuming");
    drop(lock);
    waiter.join().expect("waiter");
    let outcome = upgrade.join().expect("upgrade thread").expect("an outcome");
    let Outcome::RolledBack {
        reason,
        old_pid,
        failed_pid,
        ..
    } = outcome
    else {
        panic!("expected a rollback, got {outcome:?}");
    };
    assert!(
        reason.to_string().contains("locked"),
        "the reason names the lock: {reason}"
    );
    assert_eq!(old_pid, Some(incumbent));
    assert_eq!(failed_pid, Some(successor_pid));
    assert!(!alive(successor_pid), "the successor was reaped");
    assert_eq!(harness.info().pid, incumbent, "the incumbent serves");
    put(harness.addr, "after", "2");
    assert_eq!(get(harness.addr, "before"), "VALUE 1");
    assert_eq!(get(harness.addr, "after"), "VALUE 2");
    // The test's own lock counts as a holder: one at a time means 1.
    assert_eq!(prober.finish(), 1, "two lock holders at once");
}

#[cfg(feature = "fault-injection")]
mod orphan {
    use std::io::{BufRead, BufReader, Write};
    use std::net::SocketAddr;
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use handoff::fault;

    use crate::common::{
        LockProber, Reaper, TempDir, WAIT, eventually, example, get, processes_mentioning, put,
        request, spawn_line_reader, wait_child,
    };

    /// A supervisor that crashed mid-drain leaves the old generation serving
    /// as an orphan, holding the lock. A supervisor restarted on the same
    /// data directory must not break that lock: its generation fails at
    /// Begin, again after each backoff, and never serves, while the orphan
    /// keeps writing.
    #[test]
    fn a_restarted_supervisor_does_not_break_the_lock_of_a_live_orphan() {
        let data = TempDir::new("orphan");
        let needle = data.path().display().to_string();
        let _reaper = Reaper(needle.clone());
        let prober = LockProber::start(data.path());

        let (addr, orphan) = orphan_of_a_crashed_supervisor(data.path(), &needle);
        let mut second = Second::start(data.path());

        // A negative cannot be awaited: this is a bounded observation window
        // (not a synchronisation) in which the second supervisor retries its
        // cold start several times. It must never report SERVING, and the
        // orphan must keep writing throughout.
        const WINDOW: Duration = Duration::from_secs(3);
        let until = Instant::now() + WINDOW;
        let mut writes = 0;
        while Instant::now() < until {
            put(addr, &format!("during{writes}"), "2");
            writes += 1;
            if let Ok(line) = second.lines.recv_timeout(Duration::from_millis(100)) {
                panic!("the second supervisor printed {line:?} while the orphan holds the lock");
            }
        }
        assert!(
            second.child.try_wait().expect("try_wait").is_none(),
            "the second supervisor keeps retrying"
        );
        // The supervisor logs each attempt's rollback with its reason.
        let log = second.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let attempts = log
            .lines()
            .filter(|line| {
                line.contains("handoff rolled back")
                    && line.contains("is locked by another live process")
            })
            .count();
        // With the backoff (100 ms doubling) about 5 attempts fit in the
        // window; without it, dozens would.
        assert!(
            (2..=10).contains(&attempts),
            "the second supervisor's generation failed on the lock, retried with backoff ({attempts} attempts): {log}"
        );
        eprintln!("{attempts} cold starts refused the lock in {WINDOW:?}");

        // The orphan still serves, with every acknowledged write.
        assert!(processes_mentioning(&needle).contains(&orphan));
        put(addr, "after", "3");
        assert_eq!(get(addr, "before"), "VALUE 1");
        for index in 0..writes {
            assert_eq!(get(addr, &format!("during{index}")), "VALUE 2");
        }
        assert_eq!(get(addr, "after"), "VALUE 3");
        assert!(prober.finish() <= 1, "two lock holders at once");
    }

    /// A faultsup supervisor on `data` that crashes in the drain of its
    /// first upgrade, leaving its generation serving as an orphan alone
    /// (`needle` names the processes on `data`): its address and pid.
    fn orphan_of_a_crashed_supervisor(data: &Path, needle: &str) -> (SocketAddr, u32) {
        let mut first = Command::new(example("faultsup"))
            .arg(example("testd"))
            .arg(data)
            .env(fault::ENV_FAULT, "supervisor:draining:crash")
            .env(fault::ENV_FAULT_GENERATION, "2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("faultsup");
        let mut stdin = first.stdin.take().expect("stdin");
        let lines = spawn_line_reader(first.stdout.take().expect("stdout"));
        let next = |prefix: &str| -> String {
            let line = lines.recv_timeout(WAIT).expect("a line from faultsup");
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix}, got {line}"))
                .to_owned()
        };
        let addr: SocketAddr = next("ADDR ").parse().expect("addr");
        let orphan: u32 = next("SERVING ").parse().expect("pid");
        put(addr, "before", "1");
        writeln!(stdin, "UPGRADE").expect("ask for an upgrade");
        let status = wait_child(&mut first);
        assert!(!status.success(), "the supervisor crashed: {status:?}");
        drop(stdin);
        eventually("the orphan alone is left, serving", || {
            processes_mentioning(needle) == [orphan]
                && request(addr, "GET before").is_ok_and(|reply| reply == "VALUE 1")
        });
        (addr, orphan)
    }

    /// The second supervisor, on the same data directory: its stdout's
    /// lines and its log (its generations inherit the pipe: collected, EOF
    /// not awaited); killed when dropped.
    struct Second {
        child: std::process::Child,
        _stdin: std::process::ChildStdin,
        lines: crossbeam_channel::Receiver<String>,
        log: Arc<Mutex<String>>,
    }

    impl Second {
        fn start(data: &Path) -> Second {
            let mut child = Command::new(example("faultsup"))
                .arg(example("testd"))
                .arg(data)
                .env("RUST_LOG", "info")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("faultsup");
            let stdin = child.stdin.take().expect("stdin");
            let lines = spawn_line_reader(child.stdout.take().expect("stdout"));
            let log = Arc::new(Mutex::new(String::new()));
            let log_writer = log.clone();
            let stderr = child.stderr.take().expect("stderr");
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log_writer.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
            });
            let addr = lines.recv_timeout(WAIT).expect("ADDR");
            assert!(addr.starts_with("ADDR "), "{addr}");
            Second {
                child,
                _stdin: stdin,
                lines,
                log,
            }
        }
    }

    impl Drop for Second {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
