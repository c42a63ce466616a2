//! The OS side of the fd store (systemd's `FDSTORE=1`; the decisions are
//! `protocol::FdStore`'s): what a stored fd refers to and is, and whether
//! its peer hung up.
//!
//! # Hazards
//!
//! - **Duplicates.** Two fds for one object (the fd a generation got back
//!   and stores again) must count once. The object is `fstat`'s device and
//!   inode: unique for a socket, a pipe or a memfd (systemd compares open
//!   file descriptions; only a file opened twice tells them apart).
//! - **Hang-up without reading.** [`hung_up`] polls with no events asked:
//!   the kernel then reports only `POLLHUP`, `POLLERR` and `POLLNVAL`, and
//!   nothing is read or consumed. A regular file or memfd never reports
//!   them (systemd, with epoll, cannot watch those at all: the same
//!   outcome). The poll does not wait.
//! - **What is a memfd.** Its `/proc/self/fd` link reads `/memfd:NAME`;
//!   `F_GET_SEALS` would also accept any tmpfs file.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::stat::fstat;

use crate::protocol::{FileId, StoredKind};
use crate::wire::FdKind;

/// What `fd` refers to and what it is.
pub(crate) fn describe(fd: BorrowedFd<'_>) -> io::Result<(FileId, StoredKind)> {
    let stat = fstat(fd)?;
    let file = FileId {
        device: stat.st_dev,
        inode: stat.st_ino,
    };
    let kind = match stat.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => match super::inspect(fd)?.kind {
            Some(FdKind::Tcp) => StoredKind::Tcp,
            Some(FdKind::Udp) => StoredKind::Udp,
            Some(FdKind::Unix) => StoredKind::Unix,
            Some(FdKind::Other) | None => StoredKind::Other,
        },
        libc::S_IFIFO => StoredKind::Pipe,
        libc::S_IFREG => {
            let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
            if link.as_os_str().as_encoded_bytes().starts_with(b"/memfd:") {
                StoredKind::Memfd
            } else {
                StoredKind::Other
            }
        }
        _ => StoredKind::Other,
    };
    Ok((file, kind))
}

/// For each of `fds`, whether its peer hung up or it is in error
/// (`POLLHUP`, `POLLERR`, `POLLNVAL`), without waiting. `EINTR` is retried.
pub(crate) fn hung_up(fds: &[BorrowedFd<'_>]) -> io::Result<Vec<bool>> {
    if fds.is_empty() {
        return Ok(Vec::new());
    }
    let gone = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
    loop {
        let mut polled: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::empty()))
            .collect();
        match nix::poll::poll(&mut polled, PollTimeout::ZERO) {
            Ok(_) => {
                return Ok(polled
                    .iter()
                    .map(|fd| fd.revents().is_some_and(|r| r.intersects(gone)))
                    .collect());
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, UdpSocket};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    use nix::sys::memfd::{MFdFlags, memfd_create};

    use super::*;

    #[test]
    fn kinds_and_identities() {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("tcp");
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
        let (unix, _peer) = UnixStream::pair().expect("pair");
        let memfd: OwnedFd = memfd_create("counter", MFdFlags::MFD_CLOEXEC).expect("memfd");
        let (reader, _writer) = std::io::pipe().expect("pipe");
        let file = std::fs::File::open("/proc/self/status").expect("file");
        let cases: [(BorrowedFd<'_>, StoredKind); 6] = [
            (tcp.as_fd(), StoredKind::Tcp),
            (udp.as_fd(), StoredKind::Udp),
            (unix.as_fd(), StoredKind::Unix),
            (memfd.as_fd(), StoredKind::Memfd),
            (reader.as_fd(), StoredKind::Pipe),
            (file.as_fd(), StoredKind::Other),
        ];
        for (fd, kind) in cases {
            assert_eq!(describe(fd).expect("describe").1, kind);
        }
        let copy = memfd.try_clone().expect("dup");
        assert_eq!(
            describe(copy.as_fd()).expect("copy").0,
            describe(memfd.as_fd()).expect("memfd").0,
            "a duplicate is the same object"
        );
        assert_ne!(
            describe(unix.as_fd()).expect("unix").0,
            describe(memfd.as_fd()).expect("memfd").0
        );
    }

    #[test]
    fn a_hang_up_is_seen_and_nothing_else_is() {
        let (kept, peer) = UnixStream::pair().expect("pair");
        let (alone, gone) = UnixStream::pair().expect("pair");
        let memfd: OwnedFd = memfd_create("state", MFdFlags::MFD_CLOEXEC).expect("memfd");
        let listener = TcpListener::bind("127.0.0.1:0").expect("tcp");
        std::io::Write::write_all(&mut &peer, b"unread").expect("write");
        drop(gone);
        let fds = [kept.as_fd(), alone.as_fd(), memfd.as_fd(), listener.as_fd()];
        assert_eq!(
            hung_up(&fds).expect("poll"),
            [false, true, false, false],
            "pending bytes are not a hang-up; a closed peer is"
        );
        assert!(hung_up(&[]).expect("nothing").is_empty());
        drop(peer);
        assert_eq!(hung_up(&[kept.as_fd()]).expect("poll"), [true]);
    }
}
