//! Helpers the handoff test crates share: a temp-dir guard, the path of a
//! built example, the bounds every wait uses, bounded runs and waits, and
//! a one-line client for the line-protocol example daemons.
//!
//! A dev-dependency only, and it must never depend on `handoff`: the
//! library's own unit tests use it too (`src/sys/test_support.rs`), and a
//! cycle through the library would give them a second copy of it.
//!
//! Every wait here is bounded by [`WAIT`] and panics past it naming what it
//! waited for, so a broken test fails instead of hanging.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(30);
/// Client socket I/O bound.
pub const IO: Duration = Duration::from_secs(10);
/// Pause between two checks of a polled condition.
pub const POLL: Duration = Duration::from_millis(10);

/// A fresh directory under the system temp dir (mode 0755), removed with
/// everything in it on drop.
///
/// The name is short (an admin socket inside must fit in `sockaddr_un`)
/// and unique to this process and call; the counter comes before the tag,
/// so one directory's path is never a prefix of another's (tests find a
/// run's processes by the path on their command line).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/handoff-PID-N-TAG`.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "handoff-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `target/<profile>/examples/NAME`, next to the running test binary;
/// panics with the build command if it was not built.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir layout");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the examples first (`cargo build --workspace --examples --all-features`, as README's test command does)",
        path.display()
    );
    path
}

/// Runs `command` to its end within `WAIT`, stdin empty and both outputs
/// captured; SIGKILLed and a panic past it.
pub fn run_bounded(mut command: Command) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(output) => output.expect("wait"),
        Err(_) => {
            // Not reaped yet (its waiter has not returned), so the pid is
            // still this child's.
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            panic!("{command:?} did not finish within {WAIT:?}");
        }
    }
}

/// Runs `command` to its end in a process group of its own, stdin empty,
/// for at most `bound`; past it, the whole group (the command and whatever
/// it forked) is SIGKILLed and reaped, and the error says so. For tools
/// that fork workers (a playbook run, a package install): killing the
/// leader alone would leave them behind. Output goes where `command` sends
/// it.
pub fn run_group_bounded(
    mut command: Command,
    bound: Duration,
) -> Result<std::process::ExitStatus, String> {
    use std::os::unix::process::CommandExt;
    command.stdin(Stdio::null()).process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("spawning {command:?}: {e}"))?;
    let group = GroupKill(Pid::from_raw(
        i32::try_from(child.id()).expect("pid fits i32"),
    ));
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            // Reaped: its pid (the group's id) may be reused, never signal
            // it again. A tool that ends normally has waited for its own.
            std::mem::forget(group);
            return Ok(status);
        }
        if Instant::now() >= deadline {
            // The leader is not reaped yet, so the group id is still its.
            drop(group);
            let _ = child.wait();
            return Err(format!("{command:?} did not finish within {bound:?}"));
        }
        std::thread::sleep(POLL);
    }
}

/// SIGKILLs a process group when dropped (a panic included); forgotten
/// once its leader is reaped.
struct GroupKill(Pid);

impl Drop for GroupKill {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(self.0, Signal::SIGKILL);
    }
}

/// Waits until `condition` holds, checking every `POLL`, for at most `WAIT`.
pub fn eventually(what: &str, condition: impl FnMut() -> bool) {
    eventually_within(WAIT, what, condition);
}

/// [`eventually`] with a bound of its own.
pub fn eventually_within(bound: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !condition() {
        assert!(Instant::now() < deadline, "not within {bound:?}: {what}");
        std::thread::sleep(POLL);
    }
}

/// A child killed and reaped on drop, whatever the test did.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether our child `pid` still runs: a `waitid` that neither blocks nor
/// reaps. Unlike [`alive`], never fooled by the zombie thread-group leader
/// a multi-threaded process shows for a moment while it execs.
pub fn child_running(pid: u32) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    matches!(
        waitid(Id::Pid(Pid::from_raw(raw)), flags),
        Ok(WaitStatus::StillAlive)
    )
}

/// Whether a process exists; a zombie counts as gone (its parent reaps).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(") ")
                .next()
                .is_some_and(|rest| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Waits until `pid` is gone (see [`alive`]), for at most `WAIT`.
pub fn wait_gone(pid: u32) {
    let deadline = Instant::now() + WAIT;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still alive after {WAIT:?}"
        );
        std::thread::sleep(POLL);
    }
}

/// testd's `HIT` (`--items`): its memfd counter after one more hit.
pub fn testd_hit(addr: SocketAddr) -> u64 {
    let reply = request(addr, "HIT").expect("HIT");
    reply
        .strip_prefix("HITS ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad HIT reply {reply:?}"))
}

/// testd's `ITEMS` (`--items`): the blob it inherited ("-" for none) and
/// its memfd counter.
pub fn testd_items(addr: SocketAddr) -> (String, u64) {
    let reply = request(addr, "ITEMS").expect("ITEMS");
    reply
        .strip_prefix("blob=")
        .and_then(|rest| rest.rsplit_once(" hits="))
        .and_then(|(blob, hits)| Some((blob.to_owned(), hits.parse().ok()?)))
        .unwrap_or_else(|| panic!("bad ITEMS reply {reply:?}"))
}

/// One request line on a fresh connection and the reply line without its
/// newline, each step bounded by `IO`. A connection closed without a reply
/// is an `UnexpectedEof` error.
pub fn request(addr: SocketAddr, line: &str) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, IO)?;
    stream.set_read_timeout(Some(IO))?;
    stream.set_write_timeout(Some(IO))?;
    let mut writer = stream.try_clone()?;
    writeln!(writer, "{line}")?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    if reply.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed without a reply",
        ));
    }
    Ok(reply.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dirs_are_distinct_and_removed_on_drop() {
        let first = TempDir::new("x");
        let second = TempDir::new("x");
        assert_ne!(first.path(), second.path());
        let kept = first.path().to_owned();
        assert!(kept.is_dir());
        std::fs::write(kept.join("file"), "data").expect("write");
        drop(first);
        assert!(!kept.exists());
    }

    #[test]
    fn this_process_is_alive() {
        assert!(alive(std::process::id()));
    }

    #[test]
    fn a_child_runs_until_it_exits_and_is_seen_without_being_reaped() {
        let mut child = Command::new("sh")
            .args(["-c", "read line"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        assert!(child_running(pid));
        drop(child.stdin.take());
        eventually("the child exited", || !child_running(pid));
        // Not reaped by the check: `wait` still gets the status (read at
        // end of input exits 1).
        assert_eq!(child.wait().expect("reap").code(), Some(1));
        assert!(!child_running(pid), "reaped: not our child any more");
    }

    #[test]
    fn run_bounded_captures_both_outputs() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exit 3"]);
        let output = run_bounded(command);
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
    }
}
