//! The only code in the library that calls the OS (`nix`, std's process and
//! Unix-only APIs): fd passing, sockets, peer credentials, the
//! data-directory lock, spawning generations and helper programs, signals,
//! the systemd notification, network namespaces and watching for a build
//! landing at a path (inotify). Other modules hold the
//! std socket types that `sys` returns (the public API hands them out), and
//! use `std::fs`.
//!
//! One exception, by choice: `registry/dylib.rs` loads handler libraries
//! and calls into them (dlopen and dlsym through `libloading`, calls
//! through the handler ABI's function pointers). Its `unsafe` is the
//! boundary with the handler SDK's ABI rather than a system-call wrapper,
//! and it lives next to the ABI checks and the handler types it serves;
//! moving it here would pull the registry into `sys`.
//!
//! # Contract
//!
//! - Every function returns [`std::io::Result`]; the drivers wrap errors into
//!   [`crate::Error`] with the operation and path they were attempting. Two
//!   exceptions: [`ListenAddr`]'s parser, whose errors are user input
//!   errors ([`crate::Error::BadAddress`]), and [`run_bounded`], whose
//!   [`RunError`] tells a timeout and the step that failed apart.
//! - Every fd is an [`OwnedFd`](std::os::fd::OwnedFd) from the call that
//!   creates or receives it, and is close-on-exec from birth (`SOCK_CLOEXEC`,
//!   `MSG_CMSG_CLOEXEC`, `O_CLOEXEC`, `F_DUPFD_CLOEXEC`): never a window in
//!   which a concurrent fork + exec elsewhere in the process could inherit
//!   it. The only fd a spawned generation inherits is the control socket, put
//!   there on purpose by [`spawn`]. Functions take `impl AsFd` or
//!   `BorrowedFd`, never a raw fd number.
//! - `EINTR` is retried here, so callers never see it. A timeout configured
//!   on a socket (`SO_SNDTIMEO`/`SO_RCVTIMEO`) surfaces as the kernel reports
//!   it: [`std::io::ErrorKind::WouldBlock`].
//! - `unsafe` is allowed only in the files of this module that need it
//!   (`binary`, `exec`, `fdpass`, `foreign`, `inherit`, `netns`, `pidfd`,
//!   `process`, `socket`), each with its reason written in its `allow` and each block
//!   with a `SAFETY:` note; outside `sys`, only in `registry/dylib.rs`
//!   (above).
//!
//! # OS hazards handled here
//!
//! - **Unix socket path length.** `sockaddr_un.sun_path` holds 108 bytes
//!   including the terminating NUL, so a path of 108 bytes or more cannot be
//!   bound. [`bind`] refuses it with a message naming the limit instead of the
//!   kernel's bare `EINVAL`/`ENAMETOOLONG`.
//! - **Stale Unix socket files.** A socket file outlives the process that
//!   bound it. [`bind`] and [`bind_admin_socket`] replace a socket file only
//!   when a connect to it is refused (nobody listens); a live listener or a
//!   file that is not a socket is an `AddrInUse` error, never deleted.
//! - **flock semantics.** A `flock` lock belongs to the *open file
//!   description*, not to the process or the fd: it is shared by every fd
//!   `dup`ed from it and by every child that inherits it across `fork`, and
//!   it is released only when the last of those fds closes (or on an explicit
//!   unlock). Two `open`s of the same file in one process therefore exclude
//!   each other, which the lock tests rely on. Our lock fd is close-on-exec,
//!   so a spawned generation never inherits the supervisor's lock; and
//!   [`DataDirLock`] unlocks explicitly on release so that a forked child
//!   still between fork and exec cannot prolong it.
//! - **Parent-death signal.** `PR_SET_PDEATHSIG` fires when the *thread* that
//!   forked the child exits, not when the parent process does. The supervisor
//!   must therefore spawn generations from its long-lived loop thread, never
//!   from a short-lived helper thread (a test in `process.rs` shows a child
//!   killed by its spawning thread's exit). If the parent process died
//!   between `fork` and the `prctl` in the child, the signal will never come;
//!   the child closes that race by comparing `getppid()` with the pid the
//!   parent recorded before forking, and fails the spawn if it differs.
//! - **Shared file status flags.** `O_NONBLOCK` lives on the open file
//!   description, which every process holding a passed listener shares. The
//!   library changes it on a listener only when the daemon asks for it by
//!   accepting through [`crate::AcceptGate`], which needs a non-blocking
//!   accept (a blocking one can sleep past a drain when another generation
//!   took the connection `poll` announced); every generation of such a
//!   daemon then accepts the same way, as async runtimes do. Writes on the
//!   control socket are bounded with `SO_SNDTIMEO`, which only this side of
//!   the connection holds (reads block on a thread of their own until EOF).
//! - **Fds dropped silently.** If the receiver's control buffer is too small,
//!   the kernel sets `MSG_CTRUNC` and closes the fds that did not fit; nothing
//!   else reports it. [`recv_chunk`] sizes its buffer for the maximum of 253
//!   fds (`SCM_MAX_FD`), beside a notification's credentials, and reports
//!   `MSG_CTRUNC` as
//!   [`Received::truncated`](fdpass::Received::truncated), still handing over (as owned fds, so they get
//!   closed) the fds that did arrive. A foreign daemon's notification
//!   socket receives the same way (`FDSTORE=1`).
//! - **Fds only travel with bytes.** On a stream socket, `sendmsg` with zero
//!   bytes of payload silently sends no fds, and a receiver never gets fds
//!   from two different sends in one `recvmsg`: the kernel stops a read at an
//!   fd-carrying boundary. [`send_frame`] attaches the fds to the first byte
//!   of a frame, so they arrive with the first chunk of that frame.
//! - **SIGPIPE.** Writing to a stream socket whose peer has gone raises
//!   `SIGPIPE`, whose default action kills the process; a library cannot rely
//!   on the program ignoring it. Every send uses `MSG_NOSIGNAL` and reports
//!   `EPIPE` instead.
//! - **Fd numbers in the child.** Between `fork` and `exec`, the child moves
//!   the control socket to fd 3 with `dup2` (which clears close-on-exec on
//!   the new number). Before forking, [`spawn`] parks the control socket at
//!   fd 3 in the parent when fd 3 is free, so std's own spawn fds (the
//!   exec-error pipe, `/dev/null`) cannot land on fd 3 and be overwritten.
//! - **Signal masks.** A mask blocked for `sigwait` is per thread, inherited
//!   by later threads and kept across `exec`; it must be blocked before any
//!   thread starts, and a generation must not inherit it: [`spawn`] empties
//!   the mask in the child (std does not on its fork path; `signals.rs`
//!   tests it).
//! - **Socket activation.** systemd passes fds from 3 on with `LISTEN_PID`,
//!   `LISTEN_FDS` and `LISTEN_FDNAMES`; they are ours only if `LISTEN_PID`
//!   is our pid. [`listen_fds`] checks that and adopts them close-on-exec.
//! - **Network namespaces are per thread.** `unshare(CLONE_NEWNET)` moves
//!   the calling thread only; [`enter_private_network`] must run before any
//!   other thread starts (the benchmark calls it first in `main`).

mod binary;
mod command;
pub(crate) mod exec;
mod fdpass;
mod fdstore;
mod foreign;
mod inherit;
mod landing;
mod limits;
mod lock;
pub(crate) mod memfd;
mod netns;
mod notify;
pub(crate) mod pidfd;
pub use pidfd::PinnedProcess;

mod probe;
mod process;
mod signals;
mod socket;
mod wake;

#[cfg(test)]
mod test_support;

pub(crate) use binary::open_image;
pub use binary::{PIN_FD_FLOOR, PinnedBinary, sha256_hex, sha256_hex_niced};
pub(crate) use command::{RunError, run_bounded};
pub(crate) use fdpass::{recv_chunk, send_frame};
pub(crate) use fdstore::{describe as describe_stored, hung_up};
pub(crate) use foreign::{
    ForeignSpec, Notification, NotifySocket, PrivateDir, receive as receive_notification,
    spawn_foreign,
};
pub(crate) use inherit::{LISTEN_FDS_START, adopt_inherited_fd, listen_fds, shutdown};
pub use landing::Landings;
pub use limits::{open_file_headroom, raise_open_files};
pub(crate) use lock::{DataDirLock, LOCK_FILE_NAME, open_private_file};
pub(crate) use netns::enter_private_network;
pub use notify::{monotonic_nanos, monotonic_usec, notify, notify_with_fds};
pub(crate) use probe::{http_status, tcp_connect};
pub use process::Sig;
pub(crate) use process::{
    SpawnSpec, clear_die_with_parent, effective_uid, is_main_thread, is_unreaped_child, parent_pid,
    reap, reap_within, signal, signal_group, spawn, wait_exit_nowait,
};
pub use signals::{BlockedAll, SignalSet};
pub(crate) use socket::SUN_PATH_CAPACITY;
pub use socket::{ListenAddr, PeerCred, is_cloexec, open_fds};
pub(crate) use socket::{
    accept_unix, bind, bind_admin_socket, connect_unix, control_pair, inspect, peer_credentials,
    set_read_timeout, set_write_timeout,
};
pub use wake::{Interest, poll_ready};
pub(crate) use wake::{Waker, poll_either};
