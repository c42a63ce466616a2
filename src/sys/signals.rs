//! Waiting for signals synchronously: block them in every thread, then take
//! them one at a time with `sigwait` on a dedicated thread.
//!
//! The hazard: the signal mask is per thread and inherited by threads created
//! afterwards, so the set must be blocked in `main` *before* any other thread
//! starts; a thread started earlier keeps the signals unblocked and the
//! kernel may deliver a process-directed signal there (default action: the
//! process dies). A blocked mask is also inherited across `fork` and kept
//! across `exec`; std's `Command` does not reset it when a `pre_exec` hook
//! makes it fork, so [`spawn`](super::spawn) empties the mask in the child,
//! and the tests of this module check that a child spawned from a thread
//! with the set blocked starts with nothing blocked.

use std::io;

use nix::sys::signal::{SigSet, Signal};

use super::process::Sig;

/// A set of signals blocked in the calling thread (and in every thread it
/// starts afterwards), to be received with [`SignalSet::wait`].
#[derive(Debug, Clone, Copy)]
pub struct SignalSet {
    set: SigSet,
}

impl SignalSet {
    /// Blocks `signals` in the calling thread.
    pub fn block(signals: &[Sig]) -> io::Result<SignalSet> {
        let mut set = SigSet::empty();
        for &sig in signals {
            set.add(Signal::from(sig));
        }
        set.thread_block()?;
        Ok(SignalSet { set })
    }

    /// Blocks every signal in the calling thread (a crash's signals
    /// excepted: blocked, they would kill the process outright); the
    /// previous mask comes back with [`BlockedAll::restore`]. The mask
    /// crosses an exec; until then another thread may still take a signal
    /// (a `sigwait` thread does).
    pub fn block_all() -> io::Result<BlockedAll> {
        let mut all = SigSet::all();
        for crash in CRASHES {
            all.remove(crash);
        }
        let mut previous = SigSet::empty();
        nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&all),
            Some(&mut previous),
        )?;
        Ok(BlockedAll { previous })
    }

    /// Blocks exactly `signals` in the calling thread, unblocking the rest:
    /// for an image that starts with the mask its predecessor left.
    pub fn block_only(signals: &[Sig]) -> io::Result<SignalSet> {
        let mut set = SigSet::empty();
        for &sig in signals {
            set.add(Signal::from(sig));
        }
        nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&set),
            None,
        )?;
        Ok(SignalSet { set })
    }

    /// Waits for one of the blocked signals (`sigwait`) and returns it.
    /// `sigwait` itself never fails with `EINTR` on Linux.
    pub fn wait(&self) -> io::Result<Sig> {
        let signal = self.set.wait()?;
        Sig::try_from(signal)
            .map_err(|()| io::Error::other(format!("sigwait returned {signal}, not in the set")))
    }
}

/// The signals a crash raises: never blocked (a blocked fault is fatal at
/// once), and what an exec-on-crash handler catches.
pub(super) const CRASHES: [Signal; 5] = [
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGILL,
    Signal::SIGFPE,
    Signal::SIGABRT,
];

/// Every signal blocked, until [`BlockedAll::restore`].
#[derive(Debug)]
pub struct BlockedAll {
    previous: SigSet,
}

impl BlockedAll {
    /// The mask as it was.
    pub fn restore(self) -> io::Result<()> {
        nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&self.previous),
            None,
        )?;
        Ok(())
    }
}

impl TryFrom<Signal> for Sig {
    type Error = ();

    fn try_from(signal: Signal) -> Result<Sig, ()> {
        Ok(match signal {
            Signal::SIGTERM => Sig::Term,
            Signal::SIGKILL => Sig::Kill,
            Signal::SIGINT => Sig::Int,
            Signal::SIGHUP => Sig::Hup,
            Signal::SIGQUIT => Sig::Quit,
            Signal::SIGSTOP => Sig::Stop,
            Signal::SIGCONT => Sig::Cont,
            Signal::SIGUSR1 => Sig::Usr1,
            Signal::SIGUSR2 => Sig::Usr2,
            Signal::SIGWINCH => Sig::Winch,
            Signal::SIGALRM => Sig::Alrm,
            Signal::SIGPIPE => Sig::Pipe,
            _ => return Err(()),
        })
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::pthread::{pthread_kill, pthread_self};

    use super::*;
    use crate::sys::process::{SpawnSpec, spawn};
    use crate::sys::test_support::{ChildGuard, TEST_DEADLINE, exited_within, forking};

    #[test]
    fn a_blocked_signal_is_taken_by_wait() {
        // A thread of its own: the mask stays with it.
        std::thread::spawn(|| {
            let set = SignalSet::block(&[Sig::Usr2]).expect("block");
            // Thread-directed, so no other test thread can receive it.
            pthread_kill(pthread_self(), Signal::SIGUSR2).expect("pthread_kill");
            assert_eq!(set.wait().expect("sigwait"), Sig::Usr2);
        })
        .join()
        .expect("signal thread");
    }

    #[test]
    fn a_child_does_not_inherit_the_blocked_set() {
        // `sleep` does not touch its mask (a shell may clear it at start):
        // read the mask of the exec'd image from /proc.
        let mut child = std::thread::spawn(|| {
            let _set = SignalSet::block(&[Sig::Term, Sig::Int, Sig::Hup]).expect("block");
            let _forking = forking();
            ChildGuard::new(
                spawn(SpawnSpec {
                    program: "sleep".into(),
                    args: vec!["30".into()],
                    env: Vec::new(),
                    control: None,
                    die_with_parent: false,
                })
                .expect("spawn"),
            )
        })
        .join()
        .expect("spawning thread");
        let status_path = format!("/proc/{}/status", child.id());
        let deadline = std::time::Instant::now() + TEST_DEADLINE;
        let status = loop {
            let status = std::fs::read_to_string(&status_path).expect("status");
            if status
                .lines()
                .any(|l| l.starts_with("Name:") && l.ends_with("sleep"))
            {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the child never exec'd"
            );
            std::thread::yield_now();
        };
        let mask = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .expect("SigBlk line")
            .trim()
            .to_owned();
        crate::sys::process::signal(child.id(), Sig::Kill).expect("kill");
        let _ = exited_within(&mut child);
        assert!(
            mask.bytes().all(|b| b == b'0'),
            "the child starts with signals blocked: {mask}"
        );
    }

    #[test]
    fn signals_map_both_ways() {
        for sig in [
            Sig::Term,
            Sig::Int,
            Sig::Hup,
            Sig::Usr1,
            Sig::Kill,
            Sig::Winch,
            Sig::Alrm,
            Sig::Pipe,
        ] {
            assert_eq!(Sig::try_from(Signal::from(sig)), Ok(sig));
        }
        assert_eq!(Sig::try_from(Signal::SIGCHLD), Err(()));
    }
}
