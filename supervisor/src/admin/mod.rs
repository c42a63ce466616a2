//! The admin socket: the server (`server`), the upgrades it carries out
//! (`upgrade`, also used by SIGHUP; `plan` answers a dry run or an upgrade
//! with nothing to change), and the JSON lines it speaks (`wire`).
//! What they share is [`AdminState`].

pub mod plan;
pub mod server;
pub mod upgrade;
pub mod wire;

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc;

use handoff::Timeouts;
use handoff::supervisor::SupervisorHandle;

use crate::identity::Identities;
use crate::recorder::HistoryRecorder;
use crate::reexec::Carry;
use crate::reexec::state::EventsCarried;
use crate::systemd::Notifier;

/// What the admin side asks of the main thread.
#[derive(Debug)]
pub enum Control {
    /// Stop gracefully; answer `stopped` on the connection when done.
    Stop(Option<UnixStream>),
    /// The supervisor loop ended on its own (restart policy); whether the
    /// last generation exited with status 0.
    Ended {
        /// Status 0.
        clean: bool,
    },
}

impl AdminState {
    /// Asks the main thread to stop (it answers `stream`, if any, when
    /// everything exited); a re-exec not yet past its exec gives way.
    pub fn request_stop(&self, stream: Option<UnixStream>) -> Result<(), mpsc::SendError<Control>> {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.control.send(Control::Stop(stream))
    }

    /// Whether a stop was asked.
    pub fn stop_requested(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What the admin threads share.
#[derive(Debug)]
pub struct AdminState {
    /// The library's supervisor.
    pub handle: SupervisorHandle,
    /// The configured binary.
    pub program: PathBuf,
    /// The configured binary's expected sha256, if pinned in the config.
    pub sha256: Option<String>,
    /// Uids admitted besides ours and root.
    pub allowed_uids: Vec<u32>,
    /// Binaries an upgrade may run besides the configured one.
    pub allowed_binaries: Vec<PathBuf>,
    /// Our effective uid.
    pub our_uid: u32,
    /// Durations (admin_request bounds each client).
    pub timeouts: Timeouts,
    /// Exclusive or overlap.
    pub mode: handoff::Mode,
    /// The sha256 of every binary a generation runs, hashed once.
    pub identities: Identities,
    /// systemd's notification socket.
    pub notify: Notifier,
    /// Held while an upgrade runs: a second one is `busy` at once, before
    /// it notifies systemd of a reload that will not happen.
    pub upgrading: Mutex<()>,
    /// To the main thread.
    pub control: mpsc::Sender<Control>,
    /// Admits admin connections and counts them; closed while the
    /// supervisor re-executes.
    pub gate: handoff::AcceptGate,
    /// The last handoffs (written by the event thread, which sees every
    /// handoff), and its file.
    pub recorder: HistoryRecorder,
    /// What a re-exec carries besides the library's state.
    pub carry: Carry,
    /// Set when a stop was asked (a signal or `stop`): a re-exec in
    /// progress gives way to it.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Set by a re-exec before it freezes the supervisor: the event thread
    /// sends its memory here once it has seen every event before the
    /// freeze.
    pub frozen: Mutex<Option<mpsc::Sender<EventsCarried>>>,
    /// The Prometheus metrics' feed (a no-op without `--metrics`).
    pub metrics: crate::metrics::Feed,
}
