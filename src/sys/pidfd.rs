//! Processes that are not our children: a pidfd names one process for good
//! (a pid number can be reused once its process is reaped, a pidfd
//! cannot), can be polled for its exit, signalled, and asked for a copy of
//! one of its fds (`pidfd_getfd`, which needs ptrace access to it: the
//! same uid, or `CAP_SYS_PTRACE` where Yama restricts ptrace).
#![allow(
    unsafe_code,
    reason = "pidfd_open, pidfd_getfd and pidfd_send_signal have no safe wrapper in nix"
)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::Sig;

/// A process named for good, not our child: a pidfd opened for a pid and
/// checked against the start time it was recorded with, so that a signal
/// never reaches another process that reused the pid.
#[derive(Debug)]
pub struct PinnedProcess {
    /// Its pid.
    pub pid: u32,
    pidfd: OwnedFd,
}

impl PinnedProcess {
    /// Process `pid` if it still runs the process that started at
    /// `started` ([`crate::supervisor::start_time`]); `None` when it exited (or is a zombie)
    /// or the pid names another process now.
    pub fn open(pid: u32, started: u64) -> Option<PinnedProcess> {
        let pidfd = open(pid).ok()?;
        // Checked after the pidfd exists: if the start time matches now,
        // the pidfd names that process, whatever happens to the pid later.
        (start_time(pid).ok()? == started).then_some(PinnedProcess { pid, pidfd })
    }

    /// Sends it `signal`; once it exited, nobody gets it.
    pub fn signal(&self, signal: Sig) -> io::Result<()> {
        send_signal(self.pidfd.as_fd(), signal)
    }

    /// Whether it has not exited yet.
    pub fn running(&self) -> bool {
        !wait_all_exit(&[self.pidfd.as_fd()], std::time::Duration::ZERO)
    }

    /// Waits until every one of `processes` has exited, for at most
    /// `bound`; whether they all did.
    pub fn wait_all_exit(processes: &[PinnedProcess], bound: std::time::Duration) -> bool {
        let pidfds: Vec<_> = processes.iter().map(|p| p.pidfd.as_fd()).collect();
        wait_all_exit(&pidfds, bound)
    }
}

/// A pidfd for `pid` (close-on-exec).
pub(crate) fn open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| Errno::ESRCH)?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    let fd = RawFd::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just created `fd` (close-on-exec); nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A copy of the process's fd number `target` (close-on-exec).
pub(crate) fn get_fd(pidfd: BorrowedFd<'_>, target: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes a pidfd, an fd number in that process and
    // flags, and returns a new fd in ours (close-on-exec) or -1.
    let fd = Errno::result(unsafe {
        libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0)
    })?;
    let fd = RawFd::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just created `fd`; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process (never to another one reusing its pid).
pub(crate) fn send_signal(pidfd: BorrowedFd<'_>, signal: Sig) -> io::Result<()> {
    let signal = nix::sys::signal::Signal::from(signal) as libc::c_int;
    // SAFETY: pidfd_send_signal with a null siginfo and no flags.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })?;
    Ok(())
}

/// Blocks until the process has exited.
pub(crate) fn wait_exit(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Waits until every process in `pidfds` has exited, for at most
/// `bound`; whether they all did. Each exit is seen on its pidfd, no
/// polling of `/proc`.
pub(crate) fn wait_all_exit(pidfds: &[BorrowedFd<'_>], bound: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + bound;
    let mut waiting: Vec<BorrowedFd<'_>> = pidfds.to_vec();
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // Rounded up: a wait cut short by a sub-millisecond rest is no wait.
        let left = left + std::time::Duration::from_micros(999);
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds: Vec<PollFd<'_>> = waiting
            .iter()
            .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => return false,
            Ok(_) => {
                let exited: Vec<bool> = fds
                    .iter()
                    .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
                    .collect();
                let mut exits = exited.into_iter();
                waiting.retain(|_| !exits.next().unwrap_or(false));
            }
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
    true
}

/// When the process started, in clock ticks since boot (`/proc/PID/stat`,
/// field 22): with the pid, it names one process even across pid reuse.
/// A process that exited and waits to be reaped (a zombie: its parent died
/// too, and nobody reaped it yet) has none (`NotFound`): it holds nothing
/// and cannot be adopted or stopped.
pub(crate) fn start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its last ')'.
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/PID/stat"))?;
    // A leader that ended with pthread_exit shows `Z` too while its other
    // threads run (field 20, the thread count, is above 1 then).
    let threads: Option<u64> = rest.split_whitespace().nth(17).and_then(|f| f.parse().ok());
    if rest.starts_with('Z') && threads.is_none_or(|threads| threads <= 1) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("process {pid} has exited (a zombie)"),
        ));
    }
    rest.split_whitespace()
        .nth(19)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no start time in /proc/PID/stat",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::test_support::ChildGuard;

    #[test]
    fn a_pidfd_watches_signals_and_copies_fds_of_a_process() {
        let child = {
            let _forking = crate::sys::test_support::forking();
            std::process::Command::new("sleep")
                .arg("30")
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("spawn sleep")
        };
        let mut child = ChildGuard::new(child);
        let pid = child.id();
        let pidfd = open(pid).expect("pidfd_open");
        assert!(crate::sys::is_cloexec(&pidfd).expect("flags"));
        assert!(start_time(pid).expect("start time") > 0);
        assert_eq!(
            start_time(pid).expect("again"),
            start_time(pid).expect("stable")
        );
        // Its stdin, copied into this process.
        let copy = get_fd(pidfd.as_fd(), 0).expect("pidfd_getfd");
        assert!(crate::sys::is_cloexec(&copy).expect("flags"));
        send_signal(pidfd.as_fd(), Sig::Kill).expect("signal");
        wait_exit(pidfd.as_fd()).expect("exit seen");
        // Exited, not reaped yet: no start time (a zombie).
        let gone = start_time(pid).expect_err("a zombie");
        assert_eq!(gone.kind(), io::ErrorKind::NotFound, "{gone}");
        let status = child.wait().expect("reap");
        assert!(!status.success());
    }

    /// `sleep 30`, killed and reaped on drop.
    fn sleeper() -> ChildGuard {
        let _forking = crate::sys::test_support::forking();
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        ChildGuard::new(child)
    }

    #[test]
    fn a_wait_for_several_exits_ends_with_the_last_or_at_its_bound() {
        let (first, second) = (sleeper(), sleeper());
        let first_fd = open(first.id()).expect("pidfd_open");
        let second_fd = open(second.id()).expect("pidfd_open");
        let both = [first_fd.as_fd(), second_fd.as_fd()];
        send_signal(first_fd.as_fd(), Sig::Kill).expect("signal");
        let short = std::time::Duration::from_millis(50);
        assert!(!wait_all_exit(&both, short), "one still runs");
        send_signal(second_fd.as_fd(), Sig::Kill).expect("signal");
        assert!(wait_all_exit(&both, std::time::Duration::from_secs(10)));
        assert!(wait_all_exit(&[], short), "nothing to wait for");
    }

    #[test]
    fn a_pinned_process_is_the_recorded_one_and_is_signalled_by_its_pidfd() {
        let child = sleeper();
        let pid = child.id();
        let started = start_time(pid).expect("start time");
        assert!(
            PinnedProcess::open(pid, started + 1).is_none(),
            "another start"
        );
        let pinned = PinnedProcess::open(pid, started).expect("the recorded process");
        assert!(pinned.running());
        pinned.signal(Sig::Term).expect("signal");
        let bound = std::time::Duration::from_secs(10);
        let one = std::slice::from_ref(&pinned);
        assert!(PinnedProcess::wait_all_exit(one, bound), "exited");
        assert!(!pinned.running());
        assert!(
            PinnedProcess::open(pid, started).is_none(),
            "exited: nothing to pin"
        );
    }
}
