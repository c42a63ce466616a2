//! Spawning a generation, signalling it, and waiting for it without reaping.
//!
//! A generation is spawned with std's [`Command`] plus a `pre_exec` hook,
//! which makes std fork and exec (rather than `posix_spawn`): the two things
//! we need done in the child can only happen between fork and exec. The
//! parent-death signal must be set in the child itself, and the control
//! socket must be moved to fd 3 and made inheritable only in the child, so
//! that the parent never holds an inheritable fd another concurrent spawn
//! could leak. Everything else the child holds is close-on-exec already, so
//! a generation starts with fds 0, 1, 2 and 3 and nothing else it was not
//! given. The hook also empties the signal mask, which exec keeps and std
//! does not reset on this path (a supervisor blocking SIGTERM for `sigwait`
//! would otherwise hand it to every generation).
#![allow(
    unsafe_code,
    reason = "Command::pre_exec is unsafe (the hook runs between fork and exec), and the \
              hook works on fd numbers that the child does not own as OwnedFd"
)]

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;
use nix::sys::prctl;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::{Pid, getpid, getppid};

/// The fd number a generation finds its control socket on.
pub(crate) const CONTROL_FD: RawFd = 3;

/// The environment variable that tells a generation its control fd number.
pub(crate) const CONTROL_FD_ENV: &str = "HANDOFF_CONTROL_FD";

/// What to start, and how.
#[derive(Debug)]
pub(crate) struct SpawnSpec {
    /// The binary (searched in `PATH` if it has no slash).
    pub program: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<OsString>,
    /// Variables added to the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// The child's end of the control connection; it becomes fd 3 and
    /// `HANDOFF_CONTROL_FD=3` is set. `None` removes `HANDOFF_CONTROL_FD`
    /// from the child's environment. The parent's copy is closed on return.
    pub control: Option<OwnedFd>,
    /// SIGKILL the child when the spawning *thread* exits (see the `sys`
    /// module header: spawn from a long-lived thread).
    pub die_with_parent: bool,
}

/// A signal we send to a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// SIGTERM.
    Term,
    /// SIGKILL.
    Kill,
    /// SIGINT.
    Int,
    /// SIGHUP.
    Hup,
    /// SIGQUIT.
    Quit,
    /// SIGSTOP.
    Stop,
    /// SIGCONT.
    Cont,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
    /// SIGWINCH (nginx: the old master's workers stop accepting and finish
    /// gracefully; the master stays).
    Winch,
    /// SIGALRM.
    Alrm,
    /// SIGPIPE.
    Pipe,
}

impl From<Sig> for Signal {
    fn from(sig: Sig) -> Signal {
        match sig {
            Sig::Term => Signal::SIGTERM,
            Sig::Kill => Signal::SIGKILL,
            Sig::Int => Signal::SIGINT,
            Sig::Hup => Signal::SIGHUP,
            Sig::Quit => Signal::SIGQUIT,
            Sig::Stop => Signal::SIGSTOP,
            Sig::Cont => Signal::SIGCONT,
            Sig::Usr1 => Signal::SIGUSR1,
            Sig::Usr2 => Signal::SIGUSR2,
            Sig::Winch => Signal::SIGWINCH,
            Sig::Alrm => Signal::SIGALRM,
            Sig::Pipe => Signal::SIGPIPE,
        }
    }
}

/// Variables a service manager sets for the supervisor's own process:
/// socket activation (`LISTEN_*`), readiness (`NOTIFY_SOCKET`), the fd
/// store's bound (`FDSTORE`), the watchdog (`WATCHDOG_*`), and the control
/// fd of a supervisor above this one. A generation inheriting them would
/// take fds or notify on behalf of the supervisor from a pid the service
/// manager does not expect; every spawn drops them (a foreign generation
/// gets its own `LISTEN_*`, `NOTIFY_SOCKET` and `FDSTORE`).
const SUPERVISOR_ONLY_VARS: [&str; 8] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "FDSTORE",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    CONTROL_FD_ENV,
];

/// Whether an inherited variable is one of [`SUPERVISOR_ONLY_VARS`].
pub(crate) fn meant_for_the_supervisor(key: &std::ffi::OsStr) -> bool {
    SUPERVISOR_ONLY_VARS
        .iter()
        .any(|own| key.as_encoded_bytes() == own.as_bytes())
}

/// Starts `spec.program`: stdin `/dev/null`, stdout and stderr inherited,
/// the control socket (if any) on fd 3.
pub(crate) fn spawn(spec: SpawnSpec) -> io::Result<Child> {
    spawn_with_control_at(spec, CONTROL_FD)
}

/// [`spawn`] with the control socket put on fd `target` (tests use it to
/// reach the branch where the socket already has its final number).
fn spawn_with_control_at(spec: SpawnSpec, target: RawFd) -> io::Result<Child> {
    let SpawnSpec {
        program,
        args,
        env,
        control,
        die_with_parent,
    } = spec;
    let mut command = Command::new(&program);
    for key in SUPERVISOR_ONLY_VARS {
        command.env_remove(key);
    }
    command
        .args(&args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let control = control.map(|fd| park_at(fd, target)).transpose()?;
    match &control {
        Some(_) => command.env(CONTROL_FD_ENV, target.to_string()),
        None => command.env_remove(CONTROL_FD_ENV),
    };
    let control_raw = control.as_ref().map(AsRawFd::as_raw_fd);
    let parent = getpid();
    let hook = move || in_child(control_raw, target, die_with_parent, parent);
    // SAFETY: `in_child` only makes async-signal-safe system calls (prctl,
    // pthread_sigmask, getppid, dup2, fcntl), does not allocate, and touches
    // no lock; it captures only plain integers.
    unsafe { command.pre_exec(hook) };
    let child = command.spawn();
    // The child has exec'd (or failed) by now: our copy can go.
    drop(control);
    child
}

/// Moves `fd` to the number `target` in the parent if that number is free
/// (else leaves it where it is).
///
/// While the control socket sits on `target`, none of the fds std creates for
/// the spawn (its exec-error pipe, `/dev/null`) can get that number; if one
/// did, the child's `dup2` onto `target` would close it, and an exec failure
/// would then be reported as success and its error bytes written to the
/// control socket. When `target` is taken by another fd of the process the
/// collision cannot happen either, unless that fd is closed by another
/// thread during the spawn.
fn park_at(fd: OwnedFd, target: RawFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() == target {
        return Ok(fd);
    }
    // F_DUPFD_CLOEXEC returns the lowest free number >= target.
    let raw = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(target))?;
    // SAFETY: F_DUPFD_CLOEXEC just created `raw`; nothing else owns it.
    let duplicate = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok(if raw == target { duplicate } else { fd })
}

/// What every generation's child does first between fork and exec, library
/// and foreign alike. Async-signal-safe calls only, no allocation.
pub(super) fn child_prologue(die_with_parent: bool, parent: Pid) -> io::Result<()> {
    // A process group of its own: the supervisor's final SIGKILL reaches
    // whatever the generation forked, and a terminal's Ctrl-C reaches only
    // the supervisor, which decides what the generations get.
    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
    if die_with_parent {
        prctl::set_pdeathsig(Signal::SIGKILL)?;
        // The parent died before the prctl: the signal will never come.
        if getppid() != parent {
            return Err(Errno::ESRCH.into());
        }
    }
    // A signal mask is kept across exec, and std leaves it alone when a
    // pre_exec hook makes it fork: a supervisor that blocks SIGTERM for
    // sigwait would hand a generation a SIGTERM it never receives. Start
    // every generation with nothing blocked (pthread_sigmask is
    // async-signal-safe; SigSet::empty does not allocate).
    SigSet::empty().thread_set_mask()?;
    // The open-file limit the supervisor started with, not the one it
    // raised for connections in transit.
    super::limits::restore_in_child()?;
    Ok(())
}

/// Runs in the child between fork and exec: async-signal-safe calls only, no
/// allocation (an `io::Error` from an errno does not allocate).
fn in_child(
    control: Option<RawFd>,
    target: RawFd,
    die_with_parent: bool,
    parent: Pid,
) -> io::Result<()> {
    child_prologue(die_with_parent, parent)?;
    if let Some(control) = control {
        let rc = if control == target {
            // Already in place: only make it survive the exec.
            // SAFETY: fcntl on an fd number the child inherited open.
            unsafe { libc::fcntl(control, libc::F_SETFD, 0) }
        } else {
            // dup2 closes whatever `target` held (close-on-exec anyway) and
            // gives the new fd no FD_CLOEXEC.
            // SAFETY: dup2 on two fd numbers; `control` is open in the child.
            unsafe { libc::dup2(control, target) }
        };
        Errno::result(rc)?;
    }
    // Stray inheritable fds of the supervisor process (left by whatever
    // started it) must not reach a generation: mark every fd above the
    // control fd close-on-exec. Closing them instead would also close std's
    // exec-error pipe, which must stay open until the exec.
    let first = u32::try_from(target.max(2) + 1).unwrap_or(u32::MAX);
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on fd
    // numbers; it is a plain system call, async-signal-safe.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    // Kernels before 5.11 lack it (ENOSYS): everything we create is
    // close-on-exec already, so going on is safe.
    if rc != 0 && Errno::last() != Errno::ENOSYS {
        return Err(Errno::last().into());
    }
    Ok(())
}

/// Stops delivering SIGKILL to this process when its parent thread exits
/// (`PR_SET_PDEATHSIG` 0). A generation calls it when it commits and
/// outlives a supervisor restart. The setting is per *thread*: the kernel
/// signals the process if any of its threads has one, and after exec only
/// the main thread has it, so this must run on the main thread.
pub(crate) fn clear_die_with_parent() -> io::Result<()> {
    prctl::set_pdeathsig(None)?;
    Ok(())
}

/// Blocks until child `pid` has exited, without reaping it: only the
/// supervisor's loop reaps, and an unreaped pid cannot be reused while it
/// may still be signalled. Retries `EINTR`.
pub(crate) fn wait_exit_nowait(pid: u32) -> io::Result<()> {
    let pid = one_process(pid)?;
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Reaps child `pid`, waiting for it to exit if it has not; its status.
pub(crate) fn reap(pid: u32) -> io::Result<crate::protocol::ExitStatus> {
    use crate::protocol::ExitStatus;
    let pid = one_process(pid)?;
    loop {
        match nix::sys::wait::waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(ExitStatus::Signal(signal as i32)),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Reaps child `pid` if it exits within `bound` (seen on a pidfd); `None`
/// if it did not (a process in uninterruptible sleep: left to whoever
/// reaps this process's children after it, never waited for unbounded).
pub(crate) fn reap_within(
    pid: u32,
    bound: std::time::Duration,
) -> io::Result<Option<crate::protocol::ExitStatus>> {
    let pidfd = super::pidfd::open(pid)?;
    if !super::pidfd::wait_all_exit(&[std::os::fd::AsFd::as_fd(&pidfd)], bound) {
        return Ok(None);
    }
    reap(pid).map(Some)
}

/// Whether `pid` is a child of this process not yet reaped (running or
/// exited): what a supervisor checks before it takes a generation back
/// after replacing its own image.
pub(crate) fn is_unreaped_child(pid: u32) -> bool {
    let Ok(pid) = one_process(pid) else {
        return false;
    };
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        match waitid(Id::Pid(pid), flags) {
            Ok(_) => return true,
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Sends `sig` to process `pid`.
pub(crate) fn signal(pid: u32, sig: Sig) -> io::Result<()> {
    kill(one_process(pid)?, Signal::from(sig))?;
    Ok(())
}

/// Sends `sig` to the process group led by `pid` (a generation and what it
/// forked). Only meaningful for a pid spawned by [`spawn`], which makes each
/// child a group leader, and only while it is not reaped.
pub(crate) fn signal_group(pid: u32, sig: Sig) -> io::Result<()> {
    nix::sys::signal::killpg(one_process(pid)?, Signal::from(sig))?;
    Ok(())
}

/// This process's parent (0 if it lives outside our pid namespace).
/// Whether the calling thread is the process's main thread (the one that
/// exec'd, and so the one carrying the parent-death signal).
pub(crate) fn is_main_thread() -> bool {
    nix::unistd::gettid() == getpid()
}

pub(crate) fn parent_pid() -> u32 {
    u32::try_from(getppid().as_raw()).unwrap_or(0)
}

/// This process's effective uid.
pub(crate) fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether `pid` names a process (a zombie counts) that exists, ours or not.
#[cfg(test)]
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = one_process(pid) else {
        return false;
    };
    matches!(kill(pid, None), Ok(()) | Err(Errno::EPERM))
}

/// `pid` as a [`Pid`] naming exactly one process: 0 and anything above
/// `i32::MAX` (negative as a `pid_t`) would make `kill` signal a whole
/// process group or every process we may signal.
fn one_process(pid: u32) -> io::Result<Pid> {
    match i32::try_from(pid) {
        Ok(raw) if raw > 0 => Ok(Pid::from_raw(raw)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{pid} is not the pid of one process"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fs::File;
    use std::os::unix::process::ExitStatusExt;

    use super::*;
    use crate::sys::fdpass::recv_chunk;
    use crate::sys::socket::{control_pair, set_read_timeout};
    use crate::sys::test_support::{
        ChildGuard, TEST_DEADLINE, TempDir, exit_within, exited_within, forking, inherited_fds,
    };

    /// Lists the fds the shell holds once its own globbing is done (`-L`
    /// fails for the directory fd the glob used), and the control variable.
    const REPORT_FDS: &str = r#"l=; for f in /proc/self/fd/*; do [ -L "$f" ] && l="$l ${f##*/}"; done; printf 'fds:%s env:%s\n' "$l" "$HANDOFF_CONTROL_FD" >&3"#;

    /// The child of the parent-death test sleeps this long unless killed.
    const SLEEP_ARG: &str = "30";

    fn sh(script: &str, control: Option<OwnedFd>, die_with_parent: bool) -> SpawnSpec {
        SpawnSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: Vec::new(),
            control,
            die_with_parent,
        }
    }

    fn start(spec: SpawnSpec) -> ChildGuard {
        let _forking = forking();
        ChildGuard::new(spawn(spec).expect("spawn"))
    }

    /// Everything the child writes to its control fd until it closes it.
    fn read_all(ours: &OwnedFd) -> String {
        set_read_timeout(ours, Some(TEST_DEADLINE)).expect("timeout");
        let mut out = Vec::new();
        let mut buf = [0; 1024];
        loop {
            let got = recv_chunk(ours, &mut buf).expect("child output");
            assert!(got.fds.is_empty());
            if got.len == 0 {
                return String::from_utf8(out).expect("utf-8");
            }
            out.extend_from_slice(&buf[..got.len]);
        }
    }

    #[test]
    #[allow(
        clippy::zombie_processes,
        reason = "reaped by reap_within, the function under test"
    )]
    fn a_reap_after_a_kill_is_bounded() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn");
        let pid = child.id();
        let bound = std::time::Duration::from_millis(50);
        assert_eq!(
            reap_within(pid, bound).expect("pidfd"),
            None,
            "still running"
        );
        signal(pid, Sig::Kill).expect("kill");
        let status = reap_within(pid, TEST_DEADLINE).expect("pidfd");
        assert_eq!(status, Some(crate::protocol::ExitStatus::Signal(9)));
    }

    #[test]
    fn a_child_gets_fds_0_to_3_and_nothing_else() {
        // Close-on-exec fds that must not reach the child.
        let dir = TempDir::new("spawn");
        let _file = File::create(dir.path().join("private")).expect("create");
        let _pair = control_pair().expect("pair");
        let _pipe = std::io::pipe().expect("pipe");

        let (ours, theirs) = control_pair().expect("pair");
        let (mut child, inherited) = {
            let _forking = forking();
            // Taken while no other test can hold a transient non-CLOEXEC fd.
            let inherited = inherited_fds();
            let child = spawn(sh(REPORT_FDS, Some(theirs), false)).expect("spawn");
            (ChildGuard::new(child), inherited)
        };
        let report = read_all(&ours);
        let status = exited_within(&mut child);
        assert!(status.success(), "{status:?}");

        if !inherited.is_empty() {
            // The spawn marks every fd above 3 close-on-exec in the child,
            // so even these stray fds of the test process must not arrive.
            eprintln!("note: this test process inherited fds {inherited:?} without CLOEXEC");
        }
        let expected: BTreeSet<i32> = [0, 1, 2, 3].into_iter().collect();
        let (fds, env) = report
            .trim_end()
            .strip_prefix("fds: ")
            .and_then(|rest| rest.split_once(" env:"))
            .unwrap_or_else(|| panic!("unexpected report {report:?}"));
        let fds: BTreeSet<i32> = fds
            .split(' ')
            .map(|fd| fd.parse().expect("fd number"))
            .collect();
        assert_eq!(fds, expected, "the child holds fds it was not given");
        assert_eq!(env, "3");
    }

    #[test]
    fn a_control_fd_already_on_its_number_survives_exec() {
        let (_ours, theirs) = control_pair().expect("pair");
        let target = theirs.as_raw_fd();
        let spec = sh(
            r#"[ "$HANDOFF_CONTROL_FD" = "$1" ] && [ -L "/proc/self/fd/$1" ]"#,
            Some(theirs),
            false,
        );
        let spec = SpawnSpec {
            args: vec![
                "-c".into(),
                spec.args[1].clone(),
                "sh".into(),
                target.to_string().into(),
            ],
            ..spec
        };
        let mut child = {
            let _forking = forking();
            ChildGuard::new(spawn_with_control_at(spec, target).expect("spawn"))
        };
        let status = exited_within(&mut child);
        assert!(
            status.success(),
            "fd {target} did not survive exec: {status:?}"
        );
    }

    #[test]
    fn without_control_the_variable_is_removed() {
        let mut spec = sh(
            r#"[ -z "${HANDOFF_CONTROL_FD+set}" ] && [ "$KEPT" = yes ]"#,
            None,
            false,
        );
        spec.env = vec![
            (CONTROL_FD_ENV.into(), "3".into()),
            ("KEPT".into(), "yes".into()),
        ];
        let mut child = start(spec);
        let status = exited_within(&mut child);
        assert!(status.success(), "{status:?}");
    }

    #[test]
    fn a_missing_program_fails_the_spawn() {
        let (_ours, theirs) = control_pair().expect("pair");
        let spec = SpawnSpec {
            program: "/nonexistent/handoff-test-binary".into(),
            ..sh("", Some(theirs), true)
        };
        let _forking = forking();
        let err = spawn(spec).expect_err("no such program");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn die_with_parent_fires_when_the_spawning_thread_exits() {
        // The hazard this documents: PR_SET_PDEATHSIG follows the *thread*
        // that forked, so a child spawned from a short-lived thread dies when
        // that thread ends, although this process lives on.
        let spawned = std::thread::spawn(|| {
            let _forking = forking();
            spawn(SpawnSpec {
                program: "sleep".into(),
                args: vec![SLEEP_ARG.into()],
                env: Vec::new(),
                control: None,
                die_with_parent: true,
            })
        })
        .join()
        .expect("spawning thread panicked")
        .expect("spawn");
        let mut child = ChildGuard::new(spawned);
        let status = exited_within(&mut child);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    #[test]
    fn wait_exit_nowait_leaves_the_status_to_reap() {
        let mut child = start(sh("exit 7", None, true));
        let pid = child.id();
        exit_within(&child);
        assert!(process_alive(pid), "an unreaped child is still a pid");
        let status = child.try_wait().expect("try_wait").expect("exited");
        assert_eq!(status.code(), Some(7));
    }

    #[test]
    fn signals_reach_the_child() {
        let mut child = start(SpawnSpec {
            program: "sleep".into(),
            args: vec![SLEEP_ARG.into()],
            env: Vec::new(),
            control: None,
            die_with_parent: true,
        });
        let pid = child.id();
        assert!(process_alive(pid));
        signal(pid, Sig::Term).expect("kill");
        let status = exited_within(&mut child);
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn pids_that_name_many_processes_are_refused() {
        for pid in [0, u32::MAX, 1 << 31] {
            let err = signal(pid, Sig::Term).expect_err("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert_eq!(
                wait_exit_nowait(pid).expect_err("refused").kind(),
                io::ErrorKind::InvalidInput
            );
            assert!(!process_alive(pid));
        }
    }

    #[test]
    fn parent_pid_and_clearing_pdeathsig() {
        assert_eq!(parent_pid(), getppid().as_raw() as u32);
        clear_die_with_parent().expect("prctl");
        assert_eq!(prctl::get_pdeathsig().expect("prctl"), None);
    }
}
