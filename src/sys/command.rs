//! Bounded runs of helper programs (the handler builder's `cargo build`, a
//! new `handoffctl`'s `self-check`): stdin empty, stdout and stderr
//! collected, a process group of their own, killed whole at a timeout and
//! always reaped.
//!
//! Hazards handled here:
//! - **Grandchildren.** cargo runs rustc and build scripts; killing cargo
//!   alone would leave them running, holding stderr open. The program runs
//!   in a process group of its own, and the whole group is SIGKILLed at the
//!   timeout or when the run is abandoned ([`GroupGuard`]).
//! - **Zombies.** A waiter thread owns the child: it reads stderr to EOF,
//!   then reaps the child. After a kill, [`run_bounded`] joins it, so the
//!   child is reaped before the call returns.
//! - **Timers.** The kernel's EOF and exit status are the events; the
//!   timeout only bounds the wait for them (a channel receive with a
//!   deadline), no polling.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::process::{Sig, signal_group};

/// A run that finished: its exit status and what it wrote.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    /// Lossily decoded; a read error only truncates it.
    pub(crate) stdout: String,
    /// Lossily decoded; a read error only truncates it.
    pub(crate) stderr: String,
}

/// Why a bounded run has no [`Finished`].
#[derive(Debug)]
pub(crate) enum RunError {
    /// Still running at the timeout: its group was killed, and it was
    /// reaped.
    TimedOut,
    /// The program could not be started.
    Spawn(io::Error),
    /// No thread could be started to wait for it (its group was killed).
    Waiter(io::Error),
    /// Waiting for its exit failed.
    Wait(io::Error),
}

/// Kills a child's whole process group unless disarmed.
struct GroupGuard {
    /// The group's id: the child's pid, as it leads the group.
    pgid: Option<u32>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // The group may already be gone; nothing else to do then.
            let _ = signal_group(pgid, Sig::Kill);
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `program` with `args`, without the variables `env_remove`, in a
/// process group of its own, and kills the group at `timeout`.
///
/// A waiter thread owns the child: it reads stderr to the end, then reaps
/// the child and sends the result. This thread waits on that channel with
/// the deadline.
pub(crate) fn run_bounded(
    program: &OsStr,
    args: &[&OsStr],
    env_remove: &[&str],
    timeout: Duration,
) -> Result<Finished, RunError> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for name in env_remove {
        command.env_remove(name);
    }
    let mut child = command.spawn().map_err(RunError::Spawn)?;
    let mut group = GroupGuard {
        pgid: Some(child.id()),
    };
    let stderr = child.stderr.take();
    let stdout = child.stdout.take();
    let (sender, receiver) = crossbeam_channel::bounded(1);
    let waiter = std::thread::Builder::new()
        .name("handoff-run-wait".to_owned())
        .spawn(move || {
            // stdout on a thread of its own: either pipe may fill first.
            let reading = std::thread::Builder::new()
                .name("handoff-run-stdout".to_owned())
                .spawn(move || read_all(stdout));
            let errors = read_all(stderr);
            let output = match reading {
                Ok(reading) => reading.join().unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            let _ = sender.send((child.wait(), output, errors));
        })
        .map_err(RunError::Waiter)?;
    let received = match receiver.recv_timeout(timeout) {
        Ok(received) => Ok(received),
        Err(_) => {
            group.kill();
            Err(RunError::TimedOut)
        }
    };
    // After a kill, the waiter reaps the child and ends.
    let _ = waiter.join();
    let (status, output, errors) = received?;
    group.disarm();
    Ok(Finished {
        status: status.map_err(RunError::Wait)?,
        stdout: String::from_utf8_lossy(&output).into_owned(),
        stderr: String::from_utf8_lossy(&errors).into_owned(),
    })
}

/// Everything `pipe` yields; a read error only truncates it.
fn read_all(pipe: Option<impl Read>) -> Vec<u8> {
    let mut output = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut output);
    }
    output
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::sys::test_support::forking;

    fn sh(script: &str, timeout: Duration) -> Result<Finished, RunError> {
        let _fork = forking();
        run_bounded(
            OsStr::new("sh"),
            &[OsStr::new("-c"), OsStr::new(script)],
            &[],
            timeout,
        )
    }

    #[test]
    fn a_run_past_its_timeout_is_killed_and_reaped() {
        let started = Instant::now();
        let outcome = sh("echo started >&2; sleep 30", Duration::from_millis(300));
        assert!(matches!(outcome, Err(RunError::TimedOut)));
        // The grandchild `sleep` held stderr open; the group kill ended it.
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_finished_run_reports_its_status_and_stderr() {
        let outcome = sh(
            "echo out; echo 'error[E0425]: nope' >&2; exit 101",
            Duration::from_secs(30),
        );
        let Ok(finished) = outcome else {
            panic!("the command should finish");
        };
        assert_eq!(finished.status.code(), Some(101));
        assert_eq!(finished.stderr, "error[E0425]: nope\n");
        assert_eq!(finished.stdout, "out\n");
    }
}
