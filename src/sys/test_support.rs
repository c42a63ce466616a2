//! Helpers shared by the tests of `sys`: child guards, bounded waits, fd
//! flags and the fork lock; temporary directories are `testkit`'s.

use std::collections::BTreeSet;
use std::process::{Child, ExitStatus};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use super::process::{Sig, signal, wait_exit_nowait};
use super::socket::open_fds;
pub(crate) use testkit::TempDir;

/// The bound on every wait in these tests; reached only when something is
/// broken.
pub(crate) const TEST_DEADLINE: Duration = Duration::from_secs(10);

/// `O_CLOEXEC` as `/proc/self/fdinfo` prints the open flags (octal).
const O_CLOEXEC_IN_FDINFO: u32 = 0o2_000_000;

/// Tests run as threads of one process, and a fork copies every fd of the
/// process into the child until its exec closes the close-on-exec ones. A
/// test that needs "the last copy of this fd is closed now" (EOF, EPIPE, a
/// socket that stops listening) or that briefly holds a non-CLOEXEC fd holds
/// the read side; spawning tests hold the write side while they fork.
static FORK: RwLock<()> = RwLock::new(());

/// No test forks while this is held.
pub(crate) fn no_fork_while_held() -> RwLockReadGuard<'static, ()> {
    FORK.read().unwrap_or_else(PoisonError::into_inner)
}

/// Held while forking.
pub(crate) fn forking() -> RwLockWriteGuard<'static, ()> {
    FORK.write().unwrap_or_else(PoisonError::into_inner)
}

/// A child that is killed and reaped on drop unless it was reaped already.
pub(crate) struct ChildGuard(Child);

impl ChildGuard {
    pub(crate) fn new(child: Child) -> ChildGuard {
        ChildGuard(child)
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Unreaped, so the pid is still this child's.
        if let Ok(None) = self.0.try_wait() {
            let _ = signal(self.0.id(), Sig::Kill);
            let _ = self.0.wait();
        }
    }
}

/// Waits (without reaping) for the child to exit, at most `TEST_DEADLINE`.
pub(crate) fn exit_within(child: &ChildGuard) {
    let pid = child.id();
    let (sender, receiver) = crossbeam_channel::bounded(1);
    // If we give up, the guard's kill ends this thread's wait.
    std::thread::spawn(move || {
        let _ = sender.send(wait_exit_nowait(pid));
    });
    match receiver.recv_timeout(TEST_DEADLINE) {
        Ok(result) => result.expect("waitid"),
        Err(_) => panic!("child {pid} still running after {TEST_DEADLINE:?}"),
    }
}

/// Waits for the child to exit, at most `TEST_DEADLINE`, and reaps it.
pub(crate) fn exited_within(child: &mut ChildGuard) -> ExitStatus {
    exit_within(child);
    child
        .try_wait()
        .expect("try_wait")
        .expect("exited but no status")
}

/// Fds above 2 that this process holds without close-on-exec (inherited from
/// whoever started the tests, say); a spawned child gets them too.
pub(crate) fn inherited_fds() -> BTreeSet<i32> {
    let mut inherited = BTreeSet::new();
    for fd in open_fds()
        .expect("list fds")
        .into_iter()
        .filter(|&fd| fd > 2)
    {
        // An fd closed meanwhile by another thread has no fdinfo any more.
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|line| line.strip_prefix("flags:"))
            .and_then(|flags| u32::from_str_radix(flags.trim(), 8).ok())
            .expect("flags in fdinfo");
        if flags & O_CLOEXEC_IN_FDINFO == 0 {
            inherited.insert(fd);
        }
    }
    inherited
}
