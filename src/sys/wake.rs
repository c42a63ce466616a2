//! Waiting in `poll`: a level-triggered wake-up for threads blocked on a
//! listener (a non-blocking pipe that reads as readable while it is set),
//! and [`poll_ready`], readiness of a set of fds for a server loop.
//!
//! Used by the accept gate: closing the gate sets it, so every acceptor
//! blocked in [`poll_either`] returns at once and parks; opening it again
//! clears it. Level-triggered on purpose: any number of acceptors see one
//! `set`, which an eventfd or a condition variable alone would not give a
//! thread blocked in `poll`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// A pipe whose read end is readable while the waker is set.
#[derive(Debug)]
pub(crate) struct Waker {
    read: OwnedFd,
    write: OwnedFd,
}

impl Waker {
    /// A cleared waker (both ends close-on-exec and non-blocking).
    pub(crate) fn new() -> io::Result<Waker> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(Waker { read, write })
    }

    /// Makes the read end readable (idempotent: a full pipe is set too).
    pub(crate) fn set(&self) -> io::Result<()> {
        match nix::unistd::write(&self.write, &[1]) {
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => Ok(()),
            Err(errno) => Err(errno.into()),
        }
    }

    /// Empties the pipe: no longer readable.
    pub(crate) fn clear(&self) -> io::Result<()> {
        let mut buf = [0u8; 64];
        loop {
            match nix::unistd::read(&self.read, &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
    }

    /// The end to poll.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

/// Waits until `first` or `second` is readable (or `timeout` passes);
/// which of them are. `EINTR` is retried.
pub(crate) fn poll_either(
    first: BorrowedFd<'_>,
    second: BorrowedFd<'_>,
    timeout: Option<Duration>,
) -> io::Result<(bool, bool)> {
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(wait) => PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX),
    };
    loop {
        let mut fds = [
            PollFd::new(first, PollFlags::POLLIN),
            PollFd::new(second, PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) => {
                let ready = |fd: &PollFd<'_>| {
                    fd.revents().is_some_and(|r| {
                        r.intersects(PollFlags::POLLIN | PollFlags::POLLERR | PollFlags::POLLHUP)
                    })
                };
                return Ok((ready(&fds[0]), ready(&fds[1])));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// What [`poll_ready`] waits for on one fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Readable (or an incoming connection).
    Read,
    /// Writable.
    Write,
}

/// Waits until one of `fds` is ready for its interest, has hung up, failed
/// or is not open (all "ready": the caller's next call on it says which),
/// or `timeout` passes (`None`: no bound, else rounded up to poll's
/// millisecond); whether each one is. `EINTR` returns with none ready, for
/// the caller to look at its clock.
pub fn poll_ready(
    fds: &[(BorrowedFd<'_>, Interest)],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(wait) => {
            let millis = wait.as_micros().div_ceil(1000);
            PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
        }
    };
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|(fd, interest)| {
            let flags = match interest {
                Interest::Read => PollFlags::POLLIN,
                Interest::Write => PollFlags::POLLOUT,
            };
            PollFd::new(*fd, flags)
        })
        .collect();
    match nix::poll::poll(&mut polled, timeout) {
        Ok(_) => Ok(polled
            .iter()
            .map(|fd| fd.revents().is_none_or(|r| !r.is_empty()))
            .collect()),
        Err(nix::errno::Errno::EINTR) => Ok(vec![false; fds.len()]),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_waker_stays_readable_until_cleared_and_its_fds_are_cloexec() {
        let waker = Waker::new().expect("waker");
        assert!(crate::sys::is_cloexec(waker.read.as_fd()).expect("flags"));
        assert!(crate::sys::is_cloexec(waker.write.as_fd()).expect("flags"));
        let other = Waker::new().expect("other");
        let short = Some(Duration::from_millis(10));
        assert_eq!(
            poll_either(waker.as_fd(), other.as_fd(), short).expect("poll"),
            (false, false)
        );
        waker.set().expect("set");
        waker.set().expect("set twice");
        // Level-triggered: every poller sees it, as often as it looks.
        for _ in 0..3 {
            assert_eq!(
                poll_either(waker.as_fd(), other.as_fd(), short).expect("poll"),
                (true, false)
            );
        }
        waker.clear().expect("clear");
        assert_eq!(
            poll_either(waker.as_fd(), other.as_fd(), short).expect("poll"),
            (false, false)
        );
    }

    #[test]
    fn poll_ready_tells_each_fd_by_its_interest_and_a_hang_up_counts() {
        use std::io::Write;
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
        let short = Some(Duration::from_millis(10));
        let both = |ours: &std::os::unix::net::UnixStream, theirs: BorrowedFd<'_>| {
            let fds = [
                (ours.as_fd(), Interest::Read),
                (theirs, Interest::Read),
                (ours.as_fd(), Interest::Write),
            ];
            poll_ready(&fds, short).expect("poll")
        };
        assert_eq!(both(&ours, theirs.as_fd()), [false, false, true]);
        ours.write_all(b"x").expect("write");
        assert_eq!(both(&ours, theirs.as_fd()), [false, true, true]);
        drop(theirs);
        let fds = [(ours.as_fd(), Interest::Read)];
        assert_eq!(poll_ready(&fds, short).expect("poll"), [true], "EOF");
    }
}
