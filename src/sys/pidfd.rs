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
    if rest.starts_with('Z') {
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
}
