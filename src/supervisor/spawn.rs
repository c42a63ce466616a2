//! Starting a generation: what it runs (a pinned binary through its open,
//! hashed file), the process, and the threads that report on it (the
//! control connection's reader, a notification reader for a foreign
//! daemon, and a waiter that reports its exit without reaping it, I11).
//!
//! Called from the driver's loop thread only: `PR_SET_PDEATHSIG` fires when
//! the *thread* that forked a child exits (see `sys`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use super::config::{DaemonProtocol, SupervisorConfig, UpgradeRequest};
use super::process::{GenerationProcess, Watch};
use crate::channel::{self, Received, Receiver};
use crate::error::{Error, Peer, Result};
use crate::os::PinnedBinary;
use crate::protocol::{Build, GenerationId};
use crate::successor::{ENV_HEARTBEAT_MS, ENV_SUPERVISOR_PID};
use crate::sys::{self, SpawnSpec};
use crate::timeouts::Timeouts;

/// What the reader, waiter and notification threads report.
#[derive(Debug)]
pub(crate) enum Event {
    /// A frame on a generation's control connection.
    Frame {
        generation: GenerationId,
        frame: crate::wire::Frame,
    },
    /// Its control connection ended.
    Closed {
        generation: GenerationId,
        error: Option<String>,
    },
    /// Its process exited (not reaped yet).
    Exited { generation: GenerationId },
    /// A datagram on a foreign generation's notification socket (whose
    /// process is `pid`: known here even after its reap).
    Notified {
        generation: GenerationId,
        pid: u32,
        note: sys::Notification,
    },
}

/// What one spawn runs: the path to execute (a pin's `/proc/self/fd/N`
/// while the pin lives), the build recorded for restarts, the durations,
/// the extra environment, and the pin itself.
pub(crate) struct Launch {
    pub(crate) exec: PathBuf,
    pub(crate) build: Build,
    pub(crate) timeouts: Timeouts,
    pub(crate) force: bool,
    pub(crate) env: Vec<(OsString, OsString)>,
    /// Kept open until the spawn has exec'd it.
    pub(crate) _pin: Option<PinnedBinary>,
}

impl Launch {
    /// An upgrade (or the first start): the request's binary, or the
    /// configured one (pinned when the config pins it).
    pub(crate) fn upgrade(config: &SupervisorConfig, request: UpgradeRequest) -> Result<Launch> {
        let timeouts = config
            .timeouts
            .for_handoff(request.drain_grace, request.deadline)?;
        let args = request.args.unwrap_or_else(|| config.args.clone());
        let (exec, build, pin) = match (request.program, &config.program_sha256) {
            (Some(program), _) => {
                let build = Build {
                    program: request.restart_program.unwrap_or_else(|| program.clone()),
                    args,
                    sha256: request.restart_sha256,
                };
                (program, build, None)
            }
            (None, expected) => {
                let build = Build {
                    program: config.program.clone(),
                    args,
                    sha256: expected.clone(),
                };
                let (exec, pin) = pinned(&build)?;
                (exec, build, pin)
            }
        };
        Ok(Launch {
            exec,
            build,
            timeouts,
            force: request.force,
            env: request.env,
            _pin: pin,
        })
    }

    /// A restart: the build again, and, if it was pinned, only if its file
    /// still has that content (run from the open, hashed file).
    pub(crate) fn restart(config: &SupervisorConfig, build: Build) -> Result<Launch> {
        let (exec, pin) = pinned(&build)?;
        Ok(Launch {
            exec,
            build,
            timeouts: config.timeouts,
            force: false,
            env: Vec::new(),
            _pin: pin,
        })
    }
}

/// The path to execute `build` through: its open, hashed file when it is
/// pinned (a different content is refused), else its path.
fn pinned(build: &Build) -> Result<(PathBuf, Option<PinnedBinary>)> {
    match &build.sha256 {
        Some(expected) => {
            let pin = crate::os::pin_binary(&build.program, expected)?;
            Ok((pin.exec_path(), Some(pin)))
        }
        None => Ok((build.program.clone(), None)),
    }
}

/// Starts generations and their reporting threads, and pauses those
/// threads for a freeze (the supervisor replacing its image).
pub(crate) struct Spawner {
    events: Sender<Event>,
    /// Where foreign generations' notification sockets live (made on the
    /// first foreign spawn).
    pub(crate) notify_dir: Option<sys::PrivateDir>,
    /// Where to make it: a fixed place an adopter finds again
    /// (`SupervisorConfig::notify_home`), else under the temporary directory.
    notify_home: Option<PathBuf>,
    /// Set to pause every reader at a frame (or datagram) boundary.
    pause: Arc<sys::Waker>,
    /// The readers running, by generation.
    readers: HashMap<GenerationId, JoinHandle<Option<Receiver>>>,
}

impl Spawner {
    pub(crate) fn new(events: Sender<Event>, notify_home: Option<PathBuf>) -> Result<Spawner> {
        let pause = sys::Waker::new().map_err(|source| Error::io("creating a waker", source))?;
        Ok(Spawner {
            events,
            notify_dir: None,
            notify_home,
            pause: Arc::new(pause),
            readers: HashMap::new(),
        })
    }

    /// Spawns generation `id` running `launch`, a foreign one with
    /// `stored` (the fd store's entries, name and fd) after its listeners.
    pub(crate) fn spawn(
        &mut self,
        config: &SupervisorConfig,
        id: GenerationId,
        launch: &Launch,
        stored: &[(String, BorrowedFd<'_>)],
    ) -> Result<GenerationProcess> {
        let mut env = config.env.clone();
        env.extend(launch.env.iter().cloned());
        let process = match config.protocol {
            DaemonProtocol::Library => self.spawn_library(config, id, launch, env)?,
            DaemonProtocol::Systemd { fd_store_max, .. } => {
                if fd_store_max > 0 {
                    // systemd.exec(5): the bound, for a daemon to check
                    // before it stores.
                    env.push(("FDSTORE".into(), fd_store_max.to_string().into()));
                }
                let fds = config
                    .listeners
                    .iter()
                    .map(|l| (l.name.clone(), l.fd.as_fd()))
                    .chain(stored.iter().cloned())
                    .collect();
                self.spawn_foreign(fds, id, launch, env)?
            }
        };
        self.spawn_waiter(id, process.pid)?;
        tracing::info!(
            generation = id,
            pid = process.pid,
            program = %launch.build.program.display(),
            "generation spawned"
        );
        Ok(process)
    }

    fn spawn_library(
        &mut self,
        config: &SupervisorConfig,
        id: GenerationId,
        launch: &Launch,
        mut env: Vec<(OsString, OsString)>,
    ) -> Result<GenerationProcess> {
        let (ours, theirs) = sys::control_pair()
            .map_err(|source| Error::io("creating a generation's socketpair", source))?;
        env.push((
            ENV_SUPERVISOR_PID.into(),
            std::process::id().to_string().into(),
        ));
        let heartbeat = config.timeouts.heartbeat_interval.as_millis().to_string();
        env.push((ENV_HEARTBEAT_MS.into(), heartbeat.into()));
        if let Some(path) = config.rendezvous_of(id) {
            env.push((crate::rendezvous::ENV_RENDEZVOUS.into(), path.into()));
        }
        let process = sys::spawn(SpawnSpec {
            program: launch.exec.clone(),
            args: launch.build.args.clone(),
            env,
            control: Some(theirs),
            die_with_parent: true,
        })
        .map_err(|source| Error::Spawn {
            binary: launch.build.program.clone(),
            source,
        })?;
        let (sender, receiver) =
            channel::split(ours, Peer::Successor, config.timeouts.socket_write)?;
        self.spawn_reader(id, receiver)?;
        Ok(GenerationProcess::new(id, process.id(), Some(sender), None).holding_image())
    }

    /// The reader of generation `id`'s control connection.
    pub(crate) fn spawn_reader(&mut self, id: GenerationId, receiver: Receiver) -> Result<()> {
        let events = self.events.clone();
        let pause = Some(Arc::clone(&self.pause));
        let reader = channel::spawn_reader(format!("handoff-gen{id}"), receiver, pause, {
            move |received| {
                let event = match received {
                    Received::Frame(frame) => Event::Frame {
                        generation: id,
                        frame,
                    },
                    Received::Closed(error) => Event::Closed {
                        generation: id,
                        error: error.map(|e| e.to_string()),
                    },
                };
                events.send(event).is_ok()
            }
        })?;
        // A reader left from an earlier connection of `id` ended at its EOF.
        self.readers.insert(id, reader);
        Ok(())
    }

    /// A foreign generation (`DaemonProtocol::Systemd`): socket activation
    /// of `fds` (the listeners, then the fd store's entries), a
    /// notification socket of its own, and a reader for it. Not set to
    /// die with the supervisor: a foreign daemon cannot say when it
    /// committed, and a committed one must outlive a supervisor that
    /// crashes (to be adopted) or replaces its image (a thread's exit at
    /// the exec would fire the parent-death signal).
    fn spawn_foreign(
        &mut self,
        fds: Vec<(String, BorrowedFd<'_>)>,
        id: GenerationId,
        launch: &Launch,
        env: Vec<(OsString, OsString)>,
    ) -> Result<GenerationProcess> {
        let notify = self.notify_socket(id)?;
        let process = sys::spawn_foreign(sys::ForeignSpec {
            program: launch.exec.clone(),
            args: launch.build.args.clone(),
            env,
            listeners: fds,
            notify_socket: Some(notify.path().to_owned()),
            die_with_parent: false,
        })
        .map_err(|source| Error::Spawn {
            binary: launch.build.program.clone(),
            source,
        })?;
        self.spawn_notify_reader(id, process.id(), &notify)?;
        Ok(GenerationProcess::new(id, process.id(), None, Some(notify)).holding_image())
    }

    /// Whether the notification directory has a fixed place.
    pub(crate) fn has_notify_home(&self) -> bool {
        self.notify_home.is_some()
    }

    /// Binds generation `id`'s notification socket, in the notification
    /// directory (made first if need be: at its fixed place, or, if that
    /// cannot be ours, under the temporary directory, said once).
    pub(crate) fn notify_socket(&mut self, id: GenerationId) -> Result<sys::NotifySocket> {
        if self.notify_dir.is_none() {
            let taken = self.notify_home.as_deref().map(sys::PrivateDir::take);
            let made = match taken {
                Some(Ok(dir)) => Ok(dir),
                Some(Err(error)) => {
                    tracing::warn!(
                        %error,
                        "the notification directory beside the admin socket cannot be ours: \
                         using one under the temporary directory (a supervisor adopting these \
                         generations after a crash will not hear them)"
                    );
                    self.notify_home = None;
                    sys::PrivateDir::create()
                }
                None => sys::PrivateDir::create(),
            };
            self.notify_dir = Some(
                made.map_err(|source| Error::io("creating the notification directory", source))?,
            );
        }
        let dir = self
            .notify_dir
            .as_ref()
            .map(|d| d.path().to_owned())
            .unwrap_or_default();
        sys::NotifySocket::bind(&dir.join(format!("gen{id}.sock")))
            .map_err(|source| Error::io("binding a notification socket", source))
    }

    /// The reader of a foreign generation's notification socket (its
    /// process `pid`); it ends when the socket is shut down at the reap
    /// (after the datagrams still queued), or paused.
    pub(crate) fn spawn_notify_reader(
        &mut self,
        id: GenerationId,
        pid: u32,
        notify: &sys::NotifySocket,
    ) -> Result<()> {
        let reader = notify
            .try_clone()
            .map_err(|source| Error::io("cloning a notification socket", source))?;
        let events = self.events.clone();
        let pause = Arc::clone(&self.pause);
        let thread = std::thread::Builder::new()
            .name(format!("handoff-notify{id}"))
            .spawn(move || {
                loop {
                    match sys::poll_either(reader.as_fd(), pause.as_fd(), None) {
                        Ok((_, true)) => return None,
                        Ok((_, false)) => {}
                        Err(_) => return None,
                    }
                    let Ok(Some(note)) = sys::receive_notification(&reader) else {
                        return None;
                    };
                    let event = Event::Notified {
                        generation: id,
                        pid,
                        note,
                    };
                    if events.send(event).is_err() {
                        return None;
                    }
                }
            })
            .map_err(|source| Error::io("starting a notification reader", source))?;
        self.readers.insert(id, thread);
        Ok(())
    }

    /// A thread that reports the child's exit without reaping it (I11).
    pub(crate) fn spawn_waiter(&self, id: GenerationId, pid: u32) -> Result<()> {
        let events = self.events.clone();
        std::thread::Builder::new()
            .name(format!("handoff-wait{id}"))
            .spawn(move || {
                if let Err(error) = sys::wait_exit_nowait(pid) {
                    tracing::error!(pid, error = %error, "waiting for a generation failed");
                }
                let _ = events.send(Event::Exited { generation: id });
            })
            .map(drop)
            .map_err(|source| Error::io("starting a waiter thread", source))
    }

    /// A thread that reports an adopted orphan's exit (through its pidfd:
    /// it is not our child).
    pub(crate) fn spawn_orphan_waiter(&self, id: GenerationId, pidfd: OwnedFd) -> Result<()> {
        let events = self.events.clone();
        std::thread::Builder::new()
            .name(format!("handoff-wait{id}"))
            .spawn(move || {
                if let Err(error) = sys::pidfd::wait_exit(pidfd.as_fd()) {
                    tracing::error!(generation = id, error = %error, "waiting for an orphan failed");
                }
                let _ = events.send(Event::Exited { generation: id });
            })
            .map(drop)
            .map_err(|source| Error::io("starting a waiter thread", source))
    }

    /// The waiter `process` needs: by pid for a child, by pidfd for an
    /// orphan.
    pub(crate) fn watch(&self, process: &GenerationProcess) -> Result<()> {
        match &process.watch {
            Watch::Child => self.spawn_waiter(process.id, process.pid),
            Watch::Orphan(pidfd) => {
                let pidfd = pidfd
                    .try_clone()
                    .map_err(|source| Error::io("duplicating an orphan's pidfd", source))?;
                self.spawn_orphan_waiter(process.id, pidfd)
            }
        }
    }

    /// Pauses every reader at a frame or datagram boundary and waits for
    /// them: what they read is in the events channel, the rest is in the
    /// sockets and the returned receivers' residue.
    pub(crate) fn pause_readers(&mut self) -> Result<HashMap<GenerationId, Receiver>> {
        self.pause
            .set()
            .map_err(|source| Error::io("pausing the readers", source))?;
        let mut receivers = HashMap::new();
        for (id, reader) in self.readers.drain() {
            if let Ok(Some(receiver)) = reader.join() {
                receivers.insert(id, receiver);
            }
        }
        Ok(receivers)
    }

    /// Starts the readers again after [`Spawner::pause_readers`]: one for
    /// each receiver, and one for each notification socket of `processes`.
    pub(crate) fn resume_readers<'a>(
        &mut self,
        receivers: HashMap<GenerationId, Receiver>,
        processes: impl Iterator<Item = &'a GenerationProcess>,
    ) -> Result<()> {
        self.pause
            .clear()
            .map_err(|source| Error::io("resuming the readers", source))?;
        for (id, receiver) in receivers {
            self.spawn_reader(id, receiver)?;
        }
        for process in processes {
            if let (Some(notify), None) = (&process.notify, process.exit) {
                self.spawn_notify_reader(process.id, process.pid, notify)?;
            }
        }
        Ok(())
    }
}
