//! The public face of the OS layer: what the `handoffctl` binary and tests
//! need from the system, with the library's error type. The implementations
//! live in `sys`, the only module that touches the OS.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::error::{Error, Result};
use crate::sys;

pub use crate::sys::{PeerCred, PinnedBinary, Sig, SignalSet, sha256_hex};

/// Opens `path` and checks that its contents hash to `expected` (lowercase
/// hex sha256). Run the result through [`PinnedBinary::exec_path`] while it
/// lives, so that what runs is what was checked.
pub fn pin_binary(path: &Path, expected: &str) -> Result<PinnedBinary> {
    let pinned = PinnedBinary::open(path)
        .map_err(|source| Error::path("opening a binary to hash it", path, source))?;
    if pinned.sha256() != expected {
        return Err(Error::BinaryMismatch {
            path: path.to_owned(),
            expected: expected.to_owned(),
            actual: pinned.sha256().to_owned(),
        });
    }
    Ok(pinned)
}

/// A Unix stream listener for the admin socket, created mode 0600 with no
/// window in which another user could connect.
pub fn bind_admin_socket(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    sys::bind_admin_socket(path)
        .map(std::os::unix::net::UnixListener::from)
        .map_err(|source| Error::path("binding the admin socket", path, source))
}

/// The pid, uid and gid of the process at the other end of a Unix socket.
pub fn peer_credentials(socket: impl AsFd) -> Result<PeerCred> {
    sys::peer_credentials(socket).map_err(|source| Error::io("reading the peer's credentials", source))
}

/// Sends one systemd notification (`READY=1`, ...) to `socket` (the value
/// of `NOTIFY_SOCKET`: a path, or `@name` for an abstract socket).
pub fn notify(socket: &OsStr, message: &str) -> Result<()> {
    sys::notify(socket, message).map_err(|source| Error::io("sending a notification", source))
}

/// Moves the calling thread, and every thread and process it starts from
/// now on, into a new network namespace whose loopback interface is up, so
/// that the kernel's TCP counters count their traffic alone. Call it before
/// any other thread starts: threads that already exist stay outside. Needs
/// `CAP_SYS_ADMIN`.
pub fn enter_private_network() -> Result<()> {
    sys::enter_private_network()
        .map_err(|source| Error::io("entering a private network namespace", source))
}

/// Whether `fd` is close-on-exec.
pub fn is_cloexec(fd: impl AsFd) -> Result<bool> {
    sys::is_cloexec(fd).map_err(|source| Error::io("reading an fd's flags", source))
}

/// The fds open in this process.
pub fn open_fds() -> Result<Vec<i32>> {
    sys::open_fds().map_err(|source| Error::io("listing /proc/self/fd", source))
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: Sig) -> Result<()> {
    sys::signal(pid, signal).map_err(|source| Error::io("sending a signal", source))
}

/// Takes ownership of an fd this process inherited (socket activation) and
/// makes it close-on-exec.
pub fn adopt_inherited_fd(fd: i32) -> Result<OwnedFd> {
    sys::adopt_inherited_fd(fd).map_err(|source| Error::io("adopting an inherited fd", source))
}

/// The fds systemd passed by socket activation, as `(name, fd)`, each made
/// close-on-exec; empty when `LISTEN_PID` is absent or not this process.
/// Names come from `LISTEN_FDNAMES` (`unknown` without it). Call it once,
/// early: it takes ownership of fds 3 and up.
pub fn listen_fds() -> Result<Vec<(String, OwnedFd)>> {
    sys::listen_fds().map_err(|source| Error::io("adopting socket-activation fds", source))
}

/// `CLOCK_MONOTONIC` in microseconds, for systemd's `MONOTONIC_USEC=`.
pub fn monotonic_usec() -> Result<u64> {
    sys::monotonic_usec().map_err(|source| Error::io("reading the monotonic clock", source))
}

/// This process's effective uid (the admin socket admits it, root, and the
/// configured `allowed_uids`).
pub fn effective_uid() -> u32 {
    sys::effective_uid()
}
