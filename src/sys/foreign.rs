//! Spawning a daemon that does not link the library, the way systemd's
//! socket activation starts one: listeners on fds 3.. in order,
//! `LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID` naming the child itself;
//! plus a per-generation `NOTIFY_SOCKET` whose datagrams are accepted only
//! with the child's credentials.
//!
//! # Hazards
//!
//! - **`LISTEN_PID` is known only after fork.** std's `Command` fixes the
//!   environment before forking. So the whole `argv`/`envp` is built here
//!   before the fork, with `LISTEN_PID=` followed by a fixed-width buffer;
//!   the `pre_exec` hook writes `getpid()`'s digits into that preallocated
//!   buffer (no allocation) and calls `execve` itself. On success it never
//!   returns; on failure it returns the errno, which std reports to the
//!   parent through its exec-error pipe.
//! - **fd shuffling.** The listeners must land on 3, 4, ... in order, and
//!   the numbers they come from may lie inside that range. The child first
//!   duplicates each one above the range (close-on-exec), then `dup2`s them
//!   into place (which clears close-on-exec on the target only).
//! - **std's exec-error pipe.** std creates it during `spawn`; if it got a
//!   number in 3..3+n, the `dup2` would close it and an exec failure would
//!   be written into a listener. Before spawning, the parent parks a
//!   duplicate of each listener at the lowest free number from 3 on, so that
//!   every number of the range is taken (by a parked duplicate or by
//!   another open fd) while std creates its pipe; the same argument as the
//!   control fd's (`process.rs`), with the same caveat (another thread
//!   closing an fd of the range during the spawn).
//! - **Notification senders.** Anyone who can reach the socket file can send
//!   a datagram; the file lives in a private 0700 directory and each
//!   datagram's sender is read from `SCM_CREDENTIALS` (`SO_PASSCRED` is set
//!   on the receiving socket before its path exists), so only the child's
//!   own pid counts. A datagram without credentials is rejected.
//! - **Fds in notifications** (`FDSTORE=1`). They arrive close-on-exec
//!   (`MSG_CMSG_CLOEXEC`) and owned at once, with room for the 253 one
//!   message can carry; a truncated control buffer (`MSG_CTRUNC`) is
//!   reported, and the fds that did arrive are still owned (`fdpass`).
#![allow(
    unsafe_code,
    reason = "Command::pre_exec and execve between fork and exec work on raw pointers and fd numbers"
)]

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;
use nix::sys::socket::{setsockopt, sockopt::PassCred};
use nix::unistd::{Pid, getpid};

/// The first fd of socket activation (`SD_LISTEN_FDS_START`).
const FIRST: RawFd = 3;
/// Digits reserved for `LISTEN_PID` (a pid fits in 10 decimal digits).
const PID_DIGITS: usize = 10;
/// What to start.
#[derive(Debug)]
pub(crate) struct ForeignSpec<'a> {
    /// The binary: a path with a slash, or a name searched in `PATH`.
    pub program: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<OsString>,
    /// Variables added to the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// `(name, fd)` of each listener, in the order of fds 3, 4, ...
    pub listeners: Vec<(String, BorrowedFd<'a>)>,
    /// The `NOTIFY_SOCKET` path, if any.
    pub notify_socket: Option<PathBuf>,
    /// SIGKILL the child when the spawning thread exits.
    pub die_with_parent: bool,
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in an argument or variable",
        )
    })
}

fn find_program(program: &Path) -> io::Result<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(program.to_owned());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not found in PATH"))
}

/// Starts a foreign daemon: stdin `/dev/null`, stdout and stderr inherited.
pub(crate) fn spawn_foreign(spec: ForeignSpec<'_>) -> io::Result<Child> {
    let program = find_program(&spec.program)?;
    let env = child_env(&spec)?;
    // The one entry the child rewrites: "LISTEN_PID=" + digits + NUL.
    let mut listen_pid = b"LISTEN_PID=".to_vec();
    listen_pid.resize(listen_pid.len() + PID_DIGITS + 1, 0);
    let path = cstring(program.as_os_str().as_bytes())?;
    let argv: Vec<CString> = std::iter::once(cstring(spec.program.as_os_str().as_bytes()))
        .chain(spec.args.iter().map(|arg| cstring(arg.as_bytes())))
        .collect::<io::Result<_>>()?;
    // Pointer tables as integers (Send + Sync for the hook); the buffers
    // they point into are moved into the hook and live until the exec.
    let argv_table: Vec<usize> = argv
        .iter()
        .map(|arg| arg.as_ptr() as usize)
        .chain([0])
        .collect();
    let env_table: Vec<usize> = env
        .iter()
        .map(|var| var.as_ptr() as usize)
        .chain([listen_pid.as_ptr() as usize, 0])
        .collect();

    let parked = park(&spec.listeners)?;
    let sources: Vec<RawFd> = parked.iter().map(AsRawFd::as_raw_fd).collect();
    // Filled in the child (no allocation there): the copies above the range.
    let mut highs: Vec<RawFd> = vec![-1; sources.len()];
    let parent = getpid();
    let die_with_parent = spec.die_with_parent;

    let mut command = Command::new(&program);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let hook = move || {
        // Keep the buffers alive (and owned) in the hook.
        let _ = (&path, &argv, &env);
        in_child(
            &sources,
            &mut highs,
            die_with_parent,
            parent,
            &mut listen_pid,
            &path,
            &argv_table,
            &env_table,
        )
    };
    // SAFETY: `in_child` makes only async-signal-safe calls (prctl, getppid,
    // pthread_sigmask, fcntl, dup2, close_range, getpid, execve), does not
    // allocate and takes no lock; it writes only into `listen_pid`, a buffer
    // the hook owns whose heap address the env table already holds.
    unsafe { command.pre_exec(hook) };
    let child = command.spawn();
    drop(parked);
    child
}

/// The foreign daemon's environment: ours without what is meant for the
/// supervisor, the spec's, and socket activation's (`LISTEN_PID` is the
/// child's own, written after the fork).
fn child_env(spec: &ForeignSpec<'_>) -> io::Result<Vec<CString>> {
    let names: Vec<&str> = spec
        .listeners
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    let mut env: Vec<Vec<u8>> = std::env::vars_os()
        .filter(|(key, _)| !super::process::meant_for_the_supervisor(key))
        .filter(|(key, _)| !spec.env.iter().any(|(k, _)| k == key))
        .chain(spec.env.iter().cloned())
        .map(|(key, value)| [key.as_bytes(), b"=", value.as_bytes()].concat())
        .collect();
    env.push(format!("LISTEN_FDS={}", names.len()).into_bytes());
    env.push(format!("LISTEN_FDNAMES={}", names.join(":")).into_bytes());
    if let Some(socket) = &spec.notify_socket {
        env.push([b"NOTIFY_SOCKET=".as_slice(), socket.as_os_str().as_bytes()].concat());
    }
    env.iter().map(|v| cstring(v)).collect()
}

/// A duplicate of each listener parked at the lowest free number from 3:
/// the range 3..3+n is then fully taken while std creates its pipe.
fn park(listeners: &[(String, BorrowedFd<'_>)]) -> io::Result<Vec<OwnedFd>> {
    listeners
        .iter()
        .map(|(_, fd)| {
            let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(FIRST))?;
            // SAFETY: F_DUPFD_CLOEXEC just created `raw`; nothing else owns it.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        })
        .collect()
}

#[allow(
    clippy::too_many_arguments,
    reason = "everything the child needs was prepared before the fork and is passed in"
)]
fn in_child(
    sources: &[RawFd],
    highs: &mut [RawFd],
    die_with_parent: bool,
    parent: Pid,
    listen_pid: &mut [u8],
    path: &CString,
    argv: &[usize],
    env: &[usize],
) -> io::Result<()> {
    // As for a library generation: SIGKILL reaches whatever the daemon
    // forked (workers holding the listeners), nothing blocked.
    super::process::child_prologue(die_with_parent, parent)?;
    let count = RawFd::try_from(sources.len()).map_err(|_| Errno::EMFILE)?;
    let above = FIRST + count;
    // All up out of the target range first (close-on-exec copies), then
    // all down into place: a dup2 onto 3+i must not close a source not yet
    // copied. dup2 clears close-on-exec on the target only.
    for (high, &source) in highs.iter_mut().zip(sources) {
        // SAFETY: fcntl on an fd number open in the child (inherited from
        // the parked duplicates).
        *high = Errno::result(unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, above) })?;
    }
    for (index, &high) in highs.iter().enumerate() {
        let target = FIRST + RawFd::try_from(index).map_err(|_| Errno::EMFILE)?;
        // SAFETY: dup2 on two fd numbers; `high` was created above.
        Errno::result(unsafe { libc::dup2(high, target) })?;
    }
    // Everything else above the listeners stays out of the daemon.
    let first = u32::try_from(above).unwrap_or(u32::MAX);
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 && Errno::last() != Errno::ENOSYS {
        return Err(Errno::last().into());
    }
    // LISTEN_PID's digits, written into the preallocated buffer.
    // SAFETY: getpid is async-signal-safe and cannot fail.
    let mut pid = u32::try_from(unsafe { libc::getpid() }).unwrap_or(0);
    let mut digits = [0u8; PID_DIGITS];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (pid % 10) as u8;
        len += 1;
        pid /= 10;
        if pid == 0 || len == PID_DIGITS {
            break;
        }
    }
    let start = b"LISTEN_PID=".len();
    for (offset, digit) in digits[..len].iter().rev().enumerate() {
        listen_pid[start + offset] = *digit;
    }
    listen_pid[start + len] = 0;
    // SAFETY: `path` is a NUL-terminated string; `argv` and `env` are
    // null-terminated tables of addresses of NUL-terminated strings owned by
    // the hook (the LISTEN_PID entry is `listen_pid`, terminated above).
    unsafe {
        libc::execve(
            path.as_ptr(),
            argv.as_ptr().cast::<*const libc::c_char>(),
            env.as_ptr().cast::<*const libc::c_char>(),
        )
    };
    Err(Errno::last().into())
}

/// A private directory (mode 0700, created new, never reused) for the
/// notification sockets; removed with its contents on drop.
#[derive(Debug)]
pub(crate) struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// Creates `<tmp>/handoff-notify-<pid>-<n>` with the first free `n`.
    pub(crate) fn create() -> io::Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        for attempt in 0..100u32 {
            let path = base.join(format!("handoff-notify-{}-{attempt}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir { path }),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(error),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free notification directory name",
        ))
    }

    /// Makes `path` this process's private directory at a fixed place: made
    /// new, or, left by a supervisor that died there, checked as
    /// [`PrivateDir::adopt`] does and emptied of its dead sockets. The
    /// caller makes sure nobody else uses `path` (the admin socket's lock).
    pub(crate) fn take(path: &Path) -> io::Result<PrivateDir> {
        use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {
                return Ok(PrivateDir {
                    path: path.to_owned(),
                });
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
        // Checked as ours before anything in it is removed, and emptied
        // before it is owned (a failure leaves it as it was, not deleted).
        check_private(path)?;
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_socket() {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(PrivateDir {
            path: path.to_owned(),
        })
    }

    /// Takes back a directory [`PrivateDir::create`] made in this process
    /// before it replaced its image: still a directory of ours that nobody
    /// else may write.
    pub(crate) fn adopt(path: &Path) -> io::Result<PrivateDir> {
        check_private(path)?;
        Ok(PrivateDir {
            path: path.to_owned(),
        })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// That `path` is a directory (not a link to one) of our uid that nobody
/// else may use.
fn check_private(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a private directory of ours", path.display()),
        ));
    }
    Ok(())
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A per-generation notification socket: bound in `dir` (which must be a
/// private directory), `SO_PASSCRED` on before the path exists.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

/// One datagram: its text, the sender's pid (from `SCM_CREDENTIALS`), and
/// the fds that came with it (`SCM_RIGHTS`, close-on-exec: `FDSTORE=1`).
#[derive(Debug)]
pub(crate) struct Notification {
    pub pid: Option<u32>,
    pub text: String,
    pub fds: Vec<OwnedFd>,
    /// The kernel truncated the control data (`MSG_CTRUNC`): fds were lost
    /// (those in `fds` arrived, and are owned so they get closed).
    pub truncated: bool,
}

impl NotifySocket {
    /// Binds `path`.
    pub(crate) fn bind(path: &Path) -> io::Result<NotifySocket> {
        let socket = UnixDatagram::unbound()?;
        setsockopt(&socket, PassCred, &true)?;
        // std has no bind for an existing datagram socket: go through nix.
        nix::sys::socket::bind(
            socket.as_raw_fd(),
            &nix::sys::socket::UnixAddr::new(path).map_err(io::Error::from)?,
        )?;
        Ok(NotifySocket {
            socket,
            path: path.to_owned(),
        })
    }

    /// A socket [`NotifySocket::bind`] made, taken back (after an exec)
    /// from its fd and path.
    pub(crate) fn from_parts(fd: OwnedFd, path: PathBuf) -> NotifySocket {
        NotifySocket {
            socket: UnixDatagram::from(fd),
            path,
        }
    }

    /// The socket.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// The path to put in `NOTIFY_SOCKET`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A handle for a reader thread (the same socket).
    pub(crate) fn try_clone(&self) -> io::Result<UnixDatagram> {
        self.socket.try_clone()
    }

    /// Wakes a reader blocked in [`receive`] (it then sees end of input).
    pub(crate) fn shutdown(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Receives one datagram (blocking; retries `EINTR`), with room for the
/// most fds one message can carry (`SCM_MAX_FD`, 253) beside the
/// credentials. `Ok(None)` after [`NotifySocket::shutdown`].
pub(crate) fn receive(socket: &UnixDatagram) -> io::Result<Option<Notification>> {
    receive_with_control(socket, None)
}

/// [`receive`] offering the kernel `control_len` bytes of control buffer
/// (tests provoke `MSG_CTRUNC` with it).
fn receive_with_control(
    socket: &UnixDatagram,
    control_len: Option<usize>,
) -> io::Result<Option<Notification>> {
    // systemd reads at most this much of a notification (PIPE_BUF).
    let mut buf = [0u8; 4096];
    let got = super::fdpass::recv_datagram(socket.as_fd(), &mut buf, control_len)?;
    // Every datagram carries credentials (SO_PASSCRED): none and no bytes
    // is the end of input after a shutdown.
    if got.len == 0 && got.pid.is_none() && got.fds.is_empty() && !got.truncated {
        return Ok(None);
    }
    Ok(Some(Notification {
        pid: got.pid,
        text: String::from_utf8_lossy(&buf[..got.len]).into_owned(),
        fds: got.fds,
        truncated: got.truncated,
    }))
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::sys::test_support::{ChildGuard, TEST_DEADLINE, TempDir, exited_within, forking};

    fn link(fd: &impl AsRawFd) -> String {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .expect("readlink")
            .display()
            .to_string()
    }

    #[test]
    fn a_fixed_private_dir_is_made_or_emptied_of_dead_sockets_and_refused_if_open() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("private-take");
        let home = dir.path().join("notify");
        let made = PrivateDir::take(&home).expect("made new");
        let mode = std::fs::metadata(&home).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A supervisor that died left its socket and the directory.
        let dead = NotifySocket::bind(&home.join("gen3.sock")).expect("bind");
        std::fs::write(home.join("note"), b"kept").expect("write");
        drop(dead);
        std::mem::forget(made);
        let taken = PrivateDir::take(&home).expect("taken back");
        assert!(
            !home.join("gen3.sock").exists(),
            "its dead socket is removed"
        );
        assert!(home.join("note").exists(), "only sockets are removed");
        NotifySocket::bind(&home.join("gen3.sock")).expect("bound again at the same path");
        drop(taken);
        assert!(!home.exists(), "removed on drop");
        // One that others may write is not ours to take.
        std::fs::create_dir(&home).expect("mkdir");
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let refused = PrivateDir::take(&home).expect_err("refused");
        assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied);
        // Nor a link to a private directory (of ours or anyone's).
        let target = dir.path().join("elsewhere");
        std::fs::create_dir(&target).expect("mkdir");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let link = dir.path().join("linked");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let refused = PrivateDir::take(&link).expect_err("a link is refused");
        assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied);
        assert!(target.exists(), "what it points to is left alone");
    }

    #[test]
    fn listeners_land_on_3_and_up_with_listen_pid_naming_the_child() {
        let dir = TempDir::new("foreign");
        let report = dir.path().join("report");
        let first = TcpListener::bind("127.0.0.1:0").expect("bind");
        let second = TcpListener::bind("127.0.0.1:0").expect("bind");
        let script = format!(
            r#"l=; for f in /proc/self/fd/*; do [ -L "$f" ] && l="$l ${{f##*/}}"; done
            printf '%s\n' "$LISTEN_PID" "$$" "$LISTEN_FDS" "$LISTEN_FDNAMES" "$(readlink /proc/self/fd/3)" "$(readlink /proc/self/fd/4)" "$l" "$NOTIFY_SOCKET" "${{HANDOFF_CONTROL_FD-unset}}" > {}"#,
            report.display()
        );
        let mut child = {
            let _forking = forking();
            ChildGuard::new(
                spawn_foreign(ForeignSpec {
                    program: "sh".into(),
                    args: vec!["-c".into(), script.into()],
                    env: vec![("EXTRA".into(), "1".into())],
                    listeners: vec![
                        ("web".into(), first.as_fd()),
                        ("admin".into(), second.as_fd()),
                    ],
                    notify_socket: Some("/run/x/notify".into()),
                    die_with_parent: true,
                })
                .expect("spawn"),
            )
        };
        let status = exited_within(&mut child);
        assert!(status.success(), "{status:?}");
        let text = std::fs::read_to_string(&report).expect("report");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0], lines[1],
            "LISTEN_PID is the child's pid: {lines:?}"
        );
        assert_eq!(lines[0], child.id().to_string());
        assert_eq!(lines[2], "2");
        assert_eq!(lines[3], "web:admin");
        assert_eq!(lines[4], link(&first), "fd 3 is the first listener");
        assert_eq!(lines[5], link(&second), "fd 4 is the second listener");
        assert_eq!(
            lines[6].trim(),
            "0 1 2 3 4",
            "no other fd reaches the daemon"
        );
        assert_eq!(lines[7], "/run/x/notify");
        assert_eq!(lines[8], "unset");
    }

    #[test]
    fn a_missing_program_fails_the_spawn() {
        let _forking = forking();
        let error = spawn_foreign(ForeignSpec {
            program: "/nonexistent/foreign-daemon".into(),
            args: Vec::new(),
            env: Vec::new(),
            listeners: Vec::new(),
            notify_socket: None,
            die_with_parent: true,
        })
        .expect_err("missing");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn notifications_carry_the_sender_pid() {
        let dir = TempDir::new("notify-creds");
        let socket = NotifySocket::bind(&dir.path().join("n.sock")).expect("bind");
        let reader = socket.try_clone().expect("clone");
        reader
            .set_read_timeout(Some(TEST_DEADLINE))
            .expect("timeout");
        crate::sys::notify(socket.path().as_os_str(), "READY=1").expect("send");
        let got = receive(&reader).expect("receive").expect("a datagram");
        assert_eq!(got.text, "READY=1");
        assert_eq!(got.pid, Some(std::process::id()));
        socket.shutdown();
        assert!(receive(&reader).expect("after shutdown").is_none());
        let path = socket.path().to_owned();
        drop(socket);
        assert!(!path.exists(), "the socket file is removed");
    }

    fn identity(fd: BorrowedFd<'_>) -> (u64, u64) {
        let stat = nix::sys::stat::fstat(fd).expect("fstat");
        (stat.st_dev, stat.st_ino)
    }

    #[test]
    fn fds_arrive_owned_and_close_on_exec() {
        let dir = TempDir::new("notify-fds");
        let socket = NotifySocket::bind(&dir.path().join("n.sock")).expect("bind");
        let reader = socket.try_clone().expect("clone");
        reader
            .set_read_timeout(Some(TEST_DEADLINE))
            .expect("timeout");
        let (pipe, _writer) = std::io::pipe().expect("pipe");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let sent = [pipe.as_fd(), listener.as_fd()];
        crate::sys::notify_with_fds(socket.path().as_os_str(), "FDSTORE=1\nFDNAME=x", &sent)
            .expect("send");
        let got = receive(&reader).expect("receive").expect("a datagram");
        assert_eq!(got.text, "FDSTORE=1\nFDNAME=x");
        assert_eq!(got.pid, Some(std::process::id()));
        assert!(!got.truncated);
        assert_eq!(got.fds.len(), 2);
        for (fd, original) in got.fds.iter().zip(sent) {
            assert!(crate::sys::is_cloexec(fd).expect("flags"));
            assert_eq!(identity(fd.as_fd()), identity(original));
        }
    }

    #[test]
    fn a_truncated_control_buffer_is_reported_and_what_arrived_is_owned() {
        let dir = TempDir::new("notify-ctrunc");
        let socket = NotifySocket::bind(&dir.path().join("n.sock")).expect("bind");
        let reader = socket.try_clone().expect("clone");
        reader
            .set_read_timeout(Some(TEST_DEADLINE))
            .expect("timeout");
        let (pipe, _writer) = std::io::pipe().expect("pipe");
        let three = [pipe.as_fd(), pipe.as_fd(), pipe.as_fd()];
        crate::sys::notify_with_fds(socket.path().as_os_str(), "FDSTORE=1", &three).expect("send");
        // Room for the credentials and one fd.
        let room =
            nix::sys::socket::cmsg_space::<libc::ucred>() + nix::sys::socket::cmsg_space::<RawFd>();
        let got = receive_with_control(&reader, Some(room))
            .expect("receive")
            .expect("a datagram");
        assert!(got.truncated, "MSG_CTRUNC reported");
        // CMSG_SPACE rounds up: room for one or two of the three.
        assert!(
            !got.fds.is_empty() && got.fds.len() < three.len(),
            "{:?}",
            got.fds
        );
        assert_eq!(got.pid, Some(std::process::id()));
        for fd in &got.fds {
            assert!(crate::sys::is_cloexec(fd).expect("flags"));
        }
    }
}
