//! The public face of the OS layer: what the `handoffctl` binary and tests
//! need from the system, with the library's error type. The implementations
//! live in `sys`, the only module that touches the OS.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::error::{Error, Result};
use crate::sys;

pub use crate::sys::{
    BlockedAll, Interest, Landings, PIN_FD_FLOOR, PeerCred, PinnedBinary, PinnedProcess, Sig,
    SignalSet, open_file_headroom, poll_ready, raise_open_files, sha256_hex, sha256_hex_niced,
};

/// Opens `path` and checks that its contents hash to `expected` (lowercase
/// hex sha256). Run the result through [`PinnedBinary::exec_path`] while it
/// lives, so that what runs is what was checked (a `#!` script: by its
/// path, checked just before).
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
    sys::peer_credentials(socket)
        .map_err(|source| Error::io("reading the peer's credentials", source))
}

/// Sends one systemd notification (`READY=1`, ...) to `socket` (the value
/// of `NOTIFY_SOCKET`: a path, or `@name` for an abstract socket).
pub fn notify(socket: &OsStr, message: &str) -> Result<()> {
    sys::notify(socket, message).map_err(|source| Error::io("sending a notification", source))
}

/// [`notify`] with fds attached (`FDSTORE=1` and `FDNAME=`: systemd keeps
/// them for the unit's next start).
pub fn notify_with_fds(
    socket: &OsStr,
    message: &str,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<()> {
    sys::notify_with_fds(socket, message, fds)
        .map_err(|source| Error::io("handing fds to systemd", source))
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

/// A close-on-exec memfd holding `bytes`, sealed for good (no write, grow,
/// shrink or further seal): state that crosses an exec.
pub fn sealed_memfd(name: &str, bytes: &[u8]) -> Result<OwnedFd> {
    sys::memfd::sealed(name, bytes).map_err(|source| Error::io("writing a sealed memfd", source))
}

/// A close-on-exec memfd holding `bytes`, not sealed: shared memory a
/// daemon changes in place and keeps for its next generations with
/// [`crate::ItemStore::put_fd`].
pub fn memfd(name: &str, bytes: &[u8]) -> Result<OwnedFd> {
    sys::memfd::unsealed(name, bytes).map_err(|source| Error::io("creating a memfd", source))
}

/// The contents of a sealed memfd; an error if it is not sealed (anyone
/// holding it could still change it).
pub fn read_sealed_memfd(fd: impl AsFd) -> Result<Vec<u8>> {
    sys::memfd::read_sealed(fd.as_fd())
        .map_err(|source| Error::io("reading a sealed memfd", source))
}

/// `CLOCK_MONOTONIC` in nanoseconds (an exec keeps the clock).
pub fn monotonic_nanos() -> Result<u64> {
    sys::monotonic_nanos().map_err(|source| Error::io("reading the monotonic clock", source))
}

/// An `execve` of this process made ready ahead of time: a path, its
/// argv (argv\[0\] included) and exactly an environment, and the fds it keeps
/// (close-on-exec is cleared on them only for the exec, and set back if it
/// fails).
pub struct Exec<'fd>(sys::exec::PreparedExec<'fd>);

impl std::fmt::Debug for Exec<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec").finish_non_exhaustive()
    }
}

impl<'fd> Exec<'fd> {
    /// Builds the strings and tables now, so that [`Exec::exec`] allocates
    /// nothing.
    pub fn new(
        path: &Path,
        args: &[std::ffi::OsString],
        env: &[(std::ffi::OsString, std::ffi::OsString)],
        keep: &[std::os::fd::BorrowedFd<'fd>],
    ) -> Result<Exec<'fd>> {
        sys::exec::PreparedExec::new(path, args, env, keep)
            .map(Exec)
            .map_err(|source| Error::path("preparing an exec", path, source))
    }

    /// Replaces this process's image; returns only if that failed (the
    /// error, the fds close-on-exec again).
    pub fn exec(&self) -> Error {
        Error::io("replacing the process image", self.0.exec())
    }

    /// Until the returned guard is dropped, a crash of this process (a
    /// fatal signal: SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT) runs this
    /// exec instead of ending it.
    pub fn on_crash(self) -> Result<CrashExec<'fd>> {
        sys::exec::exec_on_crash(self.0)
            .map(CrashExec)
            .map_err(|source| Error::io("installing the crash handlers", source))
    }
}

/// See [`Exec::on_crash`].
#[derive(Debug)]
pub struct CrashExec<'fd>(
    #[allow(dead_code, reason = "disarms on drop")] sys::exec::CrashExec<'fd>,
);

/// What a program run by [`run_bounded`] did.
#[derive(Debug)]
pub struct Ran {
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its standard output, lossily decoded.
    pub stdout: String,
    /// Its standard error, lossily decoded.
    pub stderr: String,
}

/// Runs `program` with `args` (stdin empty) in a process group of its own,
/// collecting its output; at `timeout` the whole group is killed, and the
/// error says so (`TimedOut`). Always reaped.
pub fn run_bounded(program: &Path, args: &[&OsStr], timeout: std::time::Duration) -> Result<Ran> {
    match sys::run_bounded(program.as_os_str(), args, &[], timeout) {
        Ok(finished) => Ok(Ran {
            code: finished.status.code(),
            stdout: finished.stdout,
            stderr: finished.stderr,
        }),
        Err(sys::RunError::TimedOut) => Err(Error::path(
            "running a program",
            program,
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "still running after {}",
                    crate::timeouts::format_duration(timeout)
                ),
            ),
        )),
        Err(
            sys::RunError::Spawn(source)
            | sys::RunError::Waiter(source)
            | sys::RunError::Wait(source),
        ) => Err(Error::path("running a program", program, source)),
    }
}

/// Opens (creating it 0600 if missing) a file of ours for reading and
/// writing, never through a symbolic link (`O_NOFOLLOW`), close-on-exec; an
/// existing file must belong to us (or root). For lock and state files in a
/// directory others might write.
pub fn open_private_file(path: &Path) -> Result<std::fs::File> {
    sys::open_private_file(path)
        .map_err(|source| Error::path("opening a private file", path, source))
}

/// Whether a Unix socket can be bound at `path` (`sun_path` holds 108 bytes,
/// the terminating NUL included).
pub fn fits_unix_socket(path: &Path) -> bool {
    path.as_os_str().len() < sys::SUN_PATH_CAPACITY
}
