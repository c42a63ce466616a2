//! A supervisor carried across the replacement of its own image (the
//! process stays; its program changes): the driver's state as JSON and the
//! fds it needs, and the way back from them.
//!
//! What is carried: the lifecycle machine between handoffs (its snapshot:
//! generations, retirees, probation and restart deadlines as absolute
//! monotonic times), each generation's pid and exit if reaped, its control
//! connection (the socket and what was read from it and not yet decoded:
//! no frame is lost) or its notification socket, the notification
//! directory, the fd store (each entry's fd by index, with its name, kind,
//! identity and hang-up check), and the start time. What is not: the
//! listeners and the
//! configuration (the caller has them and gives them back to
//! [`super::Supervisor::thaw`]), threads (restarted), and probes in flight
//! (started again from the snapshot).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use crossbeam_channel::Sender;

use super::fdstore::Store;
use super::process::{GenerationProcess, Watch};
use crate::channel::{self, Receiver, Residue};
use crate::error::{Error, Peer, Result};
use crate::protocol::{
    Entry, ExitStatus, FileId, GenerationId, LifecycleMachine, LifecycleSnapshot, Refusal,
    StoredKind,
};
use crate::sys;

/// The version of the frozen state's format. [`super::Supervisor::thaw`]
/// refuses another one: the format is private to one build of the
/// library, and an image that cannot read it must say so before anything
/// changed. Version 2 added the fd store, version 3 the item store (an
/// older image would close their fds).
pub const FROZEN_VERSION: u32 = 3;

/// A supervisor frozen between handoffs: its state and its fds, to be
/// kept across an exec and given to [`super::Supervisor::thaw`] in the new
/// image. The frozen supervisor does nothing until this value is dropped
/// (the exec failed): it then goes on as before.
#[derive(Debug)]
pub struct Frozen {
    state: Vec<u8>,
    fds: Vec<OwnedFd>,
    _resume: Sender<()>,
}

impl Frozen {
    /// The state (JSON), referring to [`Frozen::fds`] by index.
    pub fn state(&self) -> &[u8] {
        &self.state
    }

    /// The fds to keep across the exec, in the order the state counts
    /// them; give them back to `thaw` in that order.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FrozenState {
    version: u32,
    machine: LifecycleSnapshot,
    #[serde(with = "crate::protocol::mono")]
    started: Instant,
    #[serde(flatten)]
    held: FrozenHeld,
}

/// What holds fds: the generations, the notification directory, the fd
/// store.
#[derive(serde::Serialize, serde::Deserialize)]
struct FrozenHeld {
    processes: Vec<FrozenProcess>,
    notify_dir: Option<PathBuf>,
    /// The fd store, oldest first.
    fd_store: Vec<FrozenStored>,
    /// The item store (I21): each entry and its fd by index.
    #[serde(default)]
    items: Vec<FrozenItem>,
}

/// One item of the item store, its fd by index.
#[derive(serde::Serialize, serde::Deserialize)]
struct FrozenItem {
    entry: crate::wire::ItemEntry,
    fd: usize,
    writer: GenerationId,
}

/// One fd store entry, its fd by index.
#[derive(serde::Serialize, serde::Deserialize)]
struct FrozenStored {
    name: String,
    poll: bool,
    file: FileId,
    kind: StoredKind,
    fd: usize,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FrozenProcess {
    id: GenerationId,
    pid: u32,
    exit: Option<ExitStatus>,
    control: Option<FrozenControl>,
    notify: Option<FrozenNotify>,
    /// An adopted orphan's pidfd (it is not our child).
    #[serde(default)]
    pidfd: Option<usize>,
}

/// A control connection: the socket and the undecoded residue, its fds by
/// index into the fd list with the offset each came at.
#[derive(serde::Serialize, serde::Deserialize)]
struct FrozenControl {
    socket: usize,
    residue: Vec<u8>,
    residue_fds: Vec<(usize, usize)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FrozenNotify {
    socket: usize,
    path: PathBuf,
}

/// What [`export`] reads.
pub(crate) struct Exporting<'a> {
    pub(crate) machine: &'a LifecycleMachine,
    pub(crate) processes: &'a HashMap<GenerationId, GenerationProcess>,
    pub(crate) receivers: &'a HashMap<GenerationId, Receiver>,
    pub(crate) stored: &'a Store,
    pub(crate) items: &'a super::items::Items,
    pub(crate) notify_dir: Option<PathBuf>,
    pub(crate) started: Instant,
}

/// The anchor converting instants to monotonic nanoseconds, now.
fn anchor() -> Result<(Instant, u64)> {
    let nanos = sys::monotonic_nanos()
        .map_err(|source| Error::io("reading the monotonic clock", source))?;
    Ok((Instant::now(), nanos))
}

/// The state and fds of a paused driver. Refused (`Busy`) while a handoff
/// runs, and while stopping.
pub(crate) fn export(from: Exporting<'_>, resume: Sender<()>) -> Result<Frozen> {
    let machine = from.machine.snapshot().map_err(|refusal| match refusal {
        Refusal::Busy => Error::Busy,
        Refusal::Stopping => Error::SessionOver,
    })?;
    let mut fds = Vec::new();
    let mut keep = |fd: OwnedFd| {
        fds.push(fd);
        fds.len() - 1
    };
    let mut processes = Vec::new();
    let mut ids: Vec<_> = from.processes.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let process = &from.processes[&id];
        let control = match from.receivers.get(&id) {
            Some(receiver) => {
                let (socket, residue) = receiver.export()?;
                Some(FrozenControl {
                    socket: keep(socket),
                    residue: residue.bytes,
                    residue_fds: residue
                        .fds
                        .into_iter()
                        .map(|(offset, fd)| (offset, keep(fd)))
                        .collect(),
                })
            }
            None => None,
        };
        let notify = match &process.notify {
            Some(notify) => Some(FrozenNotify {
                socket: keep(duplicate(notify.as_fd())?),
                path: notify.path().to_owned(),
            }),
            None => None,
        };
        let pidfd = match &process.watch {
            Watch::Orphan(pidfd) => Some(keep(duplicate(pidfd.as_fd())?)),
            Watch::Child => None,
        };
        processes.push(FrozenProcess {
            id,
            pid: process.pid,
            exit: process.exit,
            control,
            notify,
            pidfd,
        });
    }
    let (fd_store, items) = export_stores(&from, &mut keep)?;
    let state = FrozenState {
        version: FROZEN_VERSION,
        machine,
        started: from.started,
        held: FrozenHeld {
            processes,
            notify_dir: from.notify_dir,
            fd_store,
            items,
        },
    };
    let json = crate::protocol::mono::with_anchor(anchor()?, || serde_json::to_vec(&state))
        .map_err(|error| Error::Restore {
            reason: format!("writing the state: {error}"),
        })?;
    Ok(Frozen {
        state: json,
        fds,
        _resume: resume,
    })
}

/// The fd store's entries and the item store's, their fds kept by
/// `keep` (duplicates).
fn export_stores(
    from: &Exporting<'_>,
    keep: &mut impl FnMut(OwnedFd) -> usize,
) -> Result<(Vec<FrozenStored>, Vec<FrozenItem>)> {
    let mut fd_store = Vec::new();
    for entry in from.stored.entries() {
        fd_store.push(FrozenStored {
            name: entry.name.clone(),
            poll: entry.poll,
            file: entry.file,
            kind: entry.kind,
            fd: keep(duplicate(entry.fd.as_fd())?),
        });
    }
    let mut items = Vec::new();
    for item in from.items.stored() {
        items.push(FrozenItem {
            entry: item.entry.clone(),
            fd: keep(duplicate(item.fd.as_fd())?),
            writer: item.writer,
        });
    }
    Ok((fd_store, items))
}

fn duplicate(fd: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd> {
    fd.try_clone_to_owned()
        .map_err(|source| Error::io("duplicating a generation's fd", source))
}

/// What [`import`] gives back: the machine's snapshot, each generation's
/// process (with the receiver of its control connection), the
/// notification directory, the start time and the fd store's entries.
pub(crate) struct Imported {
    pub(crate) machine: LifecycleSnapshot,
    pub(crate) processes: Vec<(GenerationProcess, Option<Receiver>)>,
    pub(crate) notify_dir: Option<sys::PrivateDir>,
    pub(crate) started: Instant,
    pub(crate) stored: Vec<Entry<OwnedFd>>,
    pub(crate) items: Vec<super::items::Stored>,
}

/// Reads a frozen state back, taking `fds` (in the order [`Frozen::fds`]
/// gave them). Every generation not reaped must still be a child of this
/// process.
pub(crate) fn import(
    state: &[u8],
    fds: Vec<OwnedFd>,
    write_timeout: std::time::Duration,
) -> Result<Imported> {
    let bad = |reason: String| Error::Restore { reason };
    let state: FrozenState =
        crate::protocol::mono::with_anchor(anchor()?, || serde_json::from_slice(state))
            .map_err(|error| bad(format!("reading the state: {error}")))?;
    // Version 2 is version 3 without items (they default to none).
    if !(2..=FROZEN_VERSION).contains(&state.version) {
        return Err(bad(format!(
            "the state's format is version {}, this build reads versions 2 to {FROZEN_VERSION}",
            state.version
        )));
    }
    let mut imported = Imported {
        machine: state.machine,
        processes: Vec::new(),
        notify_dir: None,
        started: state.started,
        stored: Vec::new(),
        items: Vec::new(),
    };
    let taken = take_back(&mut imported, state.held, fds, write_timeout);
    match taken {
        Ok(()) => Ok(imported),
        Err(error) => {
            // Nothing taken back may act on its drop: a process handle
            // kills its generation and shuts its control socket down, a
            // notification socket or directory removes its file. The image
            // that froze the state takes over again with its own fds.
            std::mem::forget(imported);
            Err(error)
        }
    }
}

/// Builds each generation's process, the notification directory and the
/// fd store's entries into `imported`, taking their fds.
fn take_back(
    imported: &mut Imported,
    state: FrozenHeld,
    fds: Vec<OwnedFd>,
    write_timeout: std::time::Duration,
) -> Result<()> {
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut take = |index: usize| {
        fds.get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| Error::Restore {
                reason: format!("fd number {index} of the state is missing"),
            })
    };
    for frozen in state.processes {
        let process = take_process(frozen, &mut take, write_timeout)?;
        imported.processes.push(process);
    }
    for stored in state.fd_store {
        imported.stored.push(Entry {
            name: stored.name,
            poll: stored.poll,
            file: stored.file,
            kind: stored.kind,
            fd: take(stored.fd)?,
        });
    }
    for item in state.items {
        imported.items.push(super::items::Stored {
            entry: item.entry,
            fd: take(item.fd)?,
            writer: item.writer,
        });
    }
    if let Some(path) = state.notify_dir {
        imported.notify_dir = Some(
            sys::PrivateDir::adopt(&path)
                .map_err(|source| Error::io("taking the notification directory back", source))?,
        );
    }
    Ok(())
}

/// One generation's process (and its control connection's receiver),
/// taking its fds with `take`.
fn take_process(
    frozen: FrozenProcess,
    take: &mut impl FnMut(usize) -> Result<OwnedFd>,
    write_timeout: std::time::Duration,
) -> Result<(GenerationProcess, Option<Receiver>)> {
    let orphan = frozen.pidfd.is_some();
    if frozen.exit.is_none() && !orphan && !sys::is_unreaped_child(frozen.pid) {
        return Err(Error::Restore {
            reason: format!(
                "generation {} (pid {}) is not a child of this process",
                frozen.id, frozen.pid
            ),
        });
    }
    let (sender, receiver) = match frozen.control {
        Some(control) => {
            let socket = take(control.socket)?;
            let residue_fds = control
                .residue_fds
                .into_iter()
                .map(|(offset, index)| Ok((offset, take(index)?)))
                .collect::<Result<_>>()?;
            let residue = Residue {
                bytes: control.residue,
                fds: residue_fds,
            };
            let (sender, receiver) =
                channel::split_with(socket, residue, Peer::Successor, write_timeout)?;
            (Some(sender), Some(receiver))
        }
        None => (None, None),
    };
    let notify = match frozen.notify {
        Some(notify) => Some(sys::NotifySocket::from_parts(
            take(notify.socket)?,
            notify.path,
        )),
        None => None,
    };
    let mut process = match frozen.pidfd {
        Some(index) => GenerationProcess::orphan(frozen.id, frozen.pid, take(index)?, sender),
        None => GenerationProcess::new(frozen.id, frozen.pid, sender, notify),
    };
    if frozen.exit.is_none() {
        process = process.holding_image();
    }
    process.exit = frozen.exit;
    Ok((process, receiver))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Build, DaemonKind, LifecycleConfig, RestartPolicy};
    use crate::timeouts::Timeouts;
    use crate::wire::Mode;

    fn machine() -> LifecycleMachine {
        let config = LifecycleConfig {
            mode: Mode::Overlap,
            daemon: DaemonKind::Library,
            restart: RestartPolicy::OnFailure,
            timeouts: Timeouts::default(),
            probe: false,
            fd_count: 0,
            build: Build {
                program: "/bin/true".into(),
                args: Vec::new(),
                sha256: None,
            },
        };
        LifecycleMachine::new(config, Instant::now())
    }

    fn memfd(name: &str) -> OwnedFd {
        nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC).expect("memfd")
    }

    #[test]
    fn the_fd_and_item_stores_cross_a_freeze_by_index_and_a_missing_fd_is_refused() {
        let (counter, peer) = (memfd("counter"), memfd("peer"));
        let identity = |fd: &OwnedFd| sys::describe_stored(fd.as_fd()).expect("describe");
        let entry = |name: &str, poll: bool, fd: &OwnedFd| Entry {
            name: name.into(),
            poll,
            file: identity(fd).0,
            kind: identity(fd).1,
            fd: fd.try_clone().expect("dup"),
        };
        let store = Store::restore(
            4,
            vec![
                entry("counter", true, &counter),
                entry("peer", false, &peer),
            ],
        );
        let cache = memfd("cache");
        let item = crate::wire::ItemEntry {
            name: "cache".into(),
            blob: None,
        };
        let items = super::super::items::Items::restore(vec![super::super::items::Stored {
            entry: item.clone(),
            fd: cache.try_clone().expect("dup"),
            writer: 4,
        }]);
        let (resume, _resumed) = crossbeam_channel::bounded(0);
        let machine = machine();
        let frozen = export(
            Exporting {
                machine: &machine,
                processes: &HashMap::new(),
                receivers: &HashMap::new(),
                stored: &store,
                items: &items,
                notify_dir: None,
                started: Instant::now(),
            },
            resume,
        )
        .expect("export");
        assert_eq!(frozen.fds().len(), 3, "one fd per entry and item");
        let fds: Vec<OwnedFd> = frozen
            .fds()
            .iter()
            .map(|fd| fd.try_clone().expect("dup"))
            .collect();
        let timeout = Timeouts::default().socket_write;
        let imported = import(frozen.state(), fds, timeout).expect("import");
        let back: Vec<(&str, bool)> = imported
            .stored
            .iter()
            .map(|entry| (entry.name.as_str(), entry.poll))
            .collect();
        assert_eq!(back, [("counter", true), ("peer", false)]);
        assert_eq!(identity(&imported.stored[0].fd), identity(&counter));
        assert_eq!(identity(&imported.stored[1].fd), identity(&peer));
        assert_eq!(imported.items.len(), 1);
        assert_eq!(imported.items[0].entry, item);
        assert_eq!(imported.items[0].writer, 4);
        assert_eq!(identity(&imported.items[0].fd), identity(&cache));

        let error = import(frozen.state(), Vec::new(), timeout)
            .err()
            .expect("refused");
        assert!(
            error
                .to_string()
                .contains("fd number 0 of the state is missing"),
            "{error}"
        );
    }
}
