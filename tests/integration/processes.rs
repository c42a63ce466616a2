//! Processes named for good: a pid and its start time, as an adopting
//! supervisor checks them.

use crate::common::{WAIT, eventually, example};
use testkit::Reaped;

/// A live process whose main thread has ended shows a zombie leader in
/// `/proc/PID/stat`: it still has a start time and can be pinned, and once
/// its last thread ends it has none.
#[test]
fn a_process_whose_main_thread_ended_is_alive_until_its_last_thread_ends() {
    let child = std::process::Command::new(example("leaderless"))
        .spawn()
        .expect("spawn leaderless");
    let mut child = Reaped(child);
    let pid = child.0.id();
    let leader_is_zombie = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
    };
    eventually("the main thread ended", leader_is_zombie);
    let started = handoff::supervisor::start_time(pid).expect("alive: a start time");
    let pinned = handoff::os::PinnedProcess::open(pid, started).expect("alive: pinned");
    assert!(pinned.running());
    pinned.signal(handoff::os::Sig::Kill).expect("SIGKILL");
    let one = std::slice::from_ref(&pinned);
    assert!(
        handoff::os::PinnedProcess::wait_all_exit(one, WAIT),
        "exited"
    );
    assert!(
        handoff::supervisor::start_time(pid).is_err(),
        "exited, not reaped: gone"
    );
    let status = child.0.wait().expect("reap");
    assert!(!status.success());
}
