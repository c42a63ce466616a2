//! Taking ownership of an fd inherited across exec, and shutting sockets.
#![allow(unsafe_code)] // from_raw_fd is the one way to own an inherited fd; fenced here.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

/// Owns the fd a supervisor left open at `raw` (the control fd) and makes it
/// close-on-exec, so the daemon's own children do not inherit it.
pub(crate) fn adopt_inherited_fd(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative fd"));
    }
    // SAFETY: F_GETFD only reads the flags of `raw`; it fails with EBADF
    // when `raw` is not open, which we check before taking ownership.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    fcntl(borrowed, FcntlArg::F_GETFD).map_err(io::Error::from)?;
    // SAFETY: `raw` is open (checked above) and was handed to this process
    // by its supervisor for the library to own (HANDOFF_CONTROL_FD); nothing
    // else in the process refers to it, and this is called once per start.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    fcntl(owned.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    Ok(owned)
}

/// `shutdown(SHUT_RDWR)`: the peer sees EOF, and so does a reader thread
/// blocked on our end.
pub(crate) fn shutdown(fd: BorrowedFd<'_>) -> io::Result<()> {
    nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both)
        .map_err(io::Error::from)
}
