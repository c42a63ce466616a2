//! A generation's process as the driver holds it: its pid, how it is
//! watched (our child, or an adopted orphan through a pidfd), its control
//! connection (library daemons) or notification socket (foreign ones), and
//! its exit once reaped.
//!
//! Hazard: a pid may be reused once its process is reaped. Only the
//! driver's loop reaps (I11), and a reaped process is never signalled
//! again, so a signal cannot reach a stranger. An adopted orphan is not
//! our child and is never reaped here: it is named by its pidfd, which no
//! other process can take over, and signalled through it.

use std::os::fd::AsFd;

use crate::channel;
use crate::error::Result;
use crate::protocol::{ExitStatus, GenerationId};
use crate::sys::{self, Sig};
use crate::wire::Message;

/// How a generation's process is known.
#[derive(Debug)]
pub(crate) enum Watch {
    /// Spawned by this process (or an earlier image of it): waited for and
    /// reaped by pid.
    Child,
    /// Adopted after its supervisor died: not our child; its pidfd.
    Orphan(std::os::fd::OwnedFd),
}

/// One generation's process.
#[derive(Debug)]
pub(crate) struct GenerationProcess {
    pub(crate) id: GenerationId,
    pub(crate) pid: u32,
    /// Our child, or an orphan's pidfd.
    pub(crate) watch: Watch,
    /// The control connection (`None` for a foreign daemon).
    pub(crate) sender: Option<channel::Sender>,
    /// A foreign daemon's notification socket.
    pub(crate) notify: Option<sys::NotifySocket>,
    /// The executable it runs, held open (see `images`); `None` if it
    /// could not be opened.
    pub(crate) image: Option<std::fs::File>,
    /// Its status once reaped.
    pub(crate) exit: Option<ExitStatus>,
}

impl GenerationProcess {
    /// A child of this process (spawned by it, or by the image this process
    /// ran before it replaced itself: the same process).
    pub(crate) fn new(
        id: GenerationId,
        pid: u32,
        sender: Option<channel::Sender>,
        notify: Option<sys::NotifySocket>,
    ) -> Self {
        GenerationProcess {
            id,
            pid,
            watch: Watch::Child,
            sender,
            notify,
            image: None,
            exit: None,
        }
    }

    /// It, holding its executable from now on (see `images`): a live
    /// process only (a reaped pid may be another process's by now).
    pub(crate) fn holding_image(mut self) -> Self {
        self.image = sys::open_image(self.pid);
        self
    }

    /// An adopted orphan, watched through `pidfd`.
    pub(crate) fn orphan(
        id: GenerationId,
        pid: u32,
        pidfd: std::os::fd::OwnedFd,
        sender: Option<channel::Sender>,
    ) -> Self {
        GenerationProcess {
            id,
            pid,
            watch: Watch::Orphan(pidfd),
            sender,
            notify: None,
            image: None,
            exit: None,
        }
    }

    /// Sends on the control connection (a foreign daemon has none: no-op).
    pub(crate) fn send(&self, handoff_id: u64, message: Message) -> Result<()> {
        match &self.sender {
            Some(sender) => sender.send(handoff_id, message, &[]),
            None => Ok(()),
        }
    }

    /// Signals the process, unless it was reaped. SIGKILL goes to the
    /// whole group (I16), so nothing the generation forked outlives it;
    /// polite signals go to the leader, which owns its children.
    pub(crate) fn signal(&self, signal: Sig) {
        if self.exit.is_some() {
            return;
        }
        let sent = match (&self.watch, signal) {
            (Watch::Child, Sig::Kill) => {
                sys::signal_group(self.pid, signal).or_else(|_| sys::signal(self.pid, signal))
            }
            (Watch::Child, _) => sys::signal(self.pid, signal),
            (Watch::Orphan(pidfd), Sig::Kill) => {
                // Its group (the id stays the group's while any member
                // lives), then the leader itself through its pidfd.
                let _ = sys::signal_group(self.pid, signal);
                sys::pidfd::send_signal(pidfd.as_fd(), signal)
            }
            (Watch::Orphan(pidfd), _) => sys::pidfd::send_signal(pidfd.as_fd(), signal),
        };
        if let Err(error) = sent {
            tracing::debug!(pid = self.pid, error = %error, "signal failed");
        }
    }

    /// Reaps after the waiter reported the exit. First SIGKILLs what is
    /// left of the generation's process group (I16): the exited leader is
    /// still a zombie, so the group it leads cannot have been reused (I11).
    pub(crate) fn reap(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let status = match &self.watch {
            Watch::Child => {
                if sys::signal_group(self.pid, Sig::Kill).is_ok() {
                    tracing::debug!(
                        generation = self.id,
                        pid = self.pid,
                        "SIGKILL to its process group before the reap"
                    );
                }
                match sys::reap(self.pid) {
                    Ok(status) => status,
                    Err(error) => {
                        tracing::error!(pid = self.pid, %error, "reaping a generation failed");
                        ExitStatus::Unknown
                    }
                }
            }
            // Its parent (init, or a subreaper) reaps it; its status is
            // not ours to read. What it forked goes with it (I16): its
            // group keeps its id while any member lives.
            Watch::Orphan(_) => {
                let _ = sys::signal_group(self.pid, Sig::Kill);
                ExitStatus::Unknown
            }
        };
        // The control socket is left alone: the dead peer's end is closed,
        // so the reader reads every frame the child sent before it died,
        // then EOF. It is shut down when the process handle is dropped.
        if let Some(notify) = &self.notify {
            notify.shutdown();
        }
        self.exit = Some(status);
        status
    }
}

impl Drop for GenerationProcess {
    fn drop(&mut self) {
        // Wakes the reader thread even if some other process still holds
        // the generation's end of the socket.
        if let Some(sender) = &self.sender {
            sender.shutdown();
        }
        if self.exit.is_none() {
            // Forgotten unreaped would be a defect: say so, and do not
            // leave a zombie behind.
            tracing::error!(
                generation = self.id,
                pid = self.pid,
                "a generation's handle was dropped before its reap; killing it"
            );
            self.signal(Sig::Kill);
            if let Watch::Child = self.watch
                && let Ok(None) = sys::reap_within(self.pid, crate::timeouts::REAP_AFTER_KILL)
            {
                tracing::error!(
                    generation = self.id,
                    pid = self.pid,
                    "it did not exit after SIGKILL (uninterruptible sleep?): not waited for"
                );
            }
        }
    }
}
