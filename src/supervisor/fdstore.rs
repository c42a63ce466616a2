//! The supervisor's fd store (systemd's `FDSTORE=1`) as the driver holds
//! it: the fds, in the decision model `protocol::FdStore`, and the I/O
//! around it. What arrives on a foreign generation's notification socket
//! is described (`sys`) and delivered to the model; what the model notes
//! is logged; stored fds are checked for a hang-up before each use; every
//! spawn gets them after the listeners.
//!
//! The hang-up check runs before each use of the store, not on a thread
//! of its own: before each spawn (what a generation gets is never an fd
//! whose peer is gone), each delivery (a dead entry must not fill the
//! bound), each status (it shows what a spawn would get) and each freeze.
//! Between two uses a dead fd stays open in the supervisor, at most
//! `fd_store_max` of them; in exchange no thread has to be paused for a
//! re-exec or woken when the store changes.
//!
//! The store lives as long as the supervisor: it crosses a re-exec of the
//! supervisor (`freeze.rs`), not a crash of it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::protocol::{
    Arrived, Delivery, Entry, EntryId, FdStore, GenerationId, StoreNote, StoredGroup,
};
use crate::sys::{self, Notification};

/// The store and its fds.
#[derive(Debug)]
pub(crate) struct Store {
    model: FdStore<OwnedFd>,
}

impl Store {
    /// An empty store of at most `max` fds.
    pub(crate) fn new(max: usize) -> Store {
        Store {
            model: FdStore::new(max),
        }
    }

    /// The store taken back after a re-exec.
    pub(crate) fn restore(max: usize, entries: Vec<Entry<OwnedFd>>) -> Store {
        Store {
            model: FdStore::restore(max, entries),
        }
    }

    /// Takes the fds of a datagram on generation `generation`'s
    /// notification socket (whose pid is `pid`) as the model decides;
    /// what it does not keep is closed here.
    pub(crate) fn notified(&mut self, generation: GenerationId, pid: u32, note: &mut Notification) {
        let fds = std::mem::take(&mut note.fds);
        if !fds.is_empty() {
            // A dead entry must not hold a place a new fd needs.
            self.sweep();
        }
        let mut arrived = Vec::with_capacity(fds.len());
        for fd in fds {
            match sys::describe_stored(fd.as_fd()) {
                Ok((file, kind)) => arrived.push(Arrived { fd, file, kind }),
                Err(error) => {
                    tracing::warn!(generation, %error, "an fd sent to the fd store cannot be inspected; closed");
                }
            }
        }
        let notes = self.model.deliver(Delivery {
            generation_pid: pid,
            sender: note.pid,
            text: &note.text,
            fds: arrived,
            truncated: note.truncated,
        });
        for note in notes {
            log(Some(generation), &note);
        }
    }

    /// Drops the stored fds whose peer hung up (but those stored with
    /// `FDPOLL=0`).
    pub(crate) fn sweep(&mut self) {
        let (ids, fds): (Vec<EntryId>, Vec<BorrowedFd<'_>>) =
            self.model.polled().map(|(id, fd)| (id, fd.as_fd())).unzip();
        let gone: Vec<EntryId> = match sys::hung_up(&fds) {
            Ok(flags) => ids
                .into_iter()
                .zip(flags)
                .filter_map(|(id, gone)| gone.then_some(id))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "checking the fd store for hang-ups failed");
                return;
            }
        };
        for note in self.model.hung_up(&gone) {
            log(None, &note);
        }
    }

    /// What a spawn gets after its listeners: name and fd of each entry,
    /// oldest first (after a sweep).
    pub(crate) fn handed_out(&self) -> Vec<(String, BorrowedFd<'_>)> {
        self.model
            .handed_out()
            .map(|(name, fd)| (name.to_owned(), fd.as_fd()))
            .collect()
    }

    /// The bound.
    pub(crate) fn max(&self) -> usize {
        self.model.max()
    }

    /// The entries by name and kind, for `status`.
    pub(crate) fn groups(&self) -> Vec<StoredGroup> {
        self.model.groups()
    }

    /// Every entry, oldest first (for a freeze).
    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry<OwnedFd>> {
        self.model.entries()
    }
}

/// One log line per note; `generation` is the sender's (`None`: a sweep).
fn log(generation: Option<GenerationId>, note: &StoreNote) {
    let generation = generation.unwrap_or_default();
    match note {
        StoreNote::Stored { name, count, total } => {
            tracing::info!(generation, name, count, total, "fd store: stored")
        }
        StoreNote::Duplicate { name } => tracing::debug!(
            generation,
            name,
            "fd store: already holds this fd's object; the duplicate is closed"
        ),
        StoreNote::Full {
            name,
            refused,
            max: 0,
        } => tracing::warn!(
            generation,
            name,
            refused,
            "fd store off: fds refused and closed (set --fd-store-max / fd_store_max above 0)"
        ),
        StoreNote::Full { name, refused, max } => tracing::warn!(
            generation,
            name,
            refused,
            max,
            "fd store full: fds refused and closed (raise --fd-store-max / fd_store_max)"
        ),
        StoreNote::InvalidName { given } => tracing::warn!(
            generation,
            given,
            "fd store: FDNAME= is not a valid name (ASCII, no control characters or ':', \
             at most 255 bytes); stored as \"stored\""
        ),
        StoreNote::Removed { name, count } => {
            tracing::info!(
                generation,
                name,
                count,
                "fd store: removed (FDSTOREREMOVE=1)"
            )
        }
        StoreNote::RemoveWithoutName => tracing::warn!(
            generation,
            "fd store: FDSTOREREMOVE=1 without a valid FDNAME=; ignored"
        ),
        StoreNote::ForeignSender {
            sender,
            expected,
            closed,
        } => tracing::warn!(
            generation,
            ?sender,
            expected,
            closed,
            "fd store: fds from another process than the generation refused and closed"
        ),
        StoreNote::Truncated { closed } => tracing::warn!(
            generation,
            closed,
            "fd store: a notification's control data was truncated (MSG_CTRUNC); its fds are closed"
        ),
        StoreNote::NotStored { closed } => tracing::warn!(
            generation,
            closed,
            "fds sent with a notification without FDSTORE=1 are closed"
        ),
        StoreNote::HungUp { name, kind } => tracing::info!(
            name,
            kind = kind.as_str(),
            "fd store: a stored fd's peer hung up; dropped (store it with FDPOLL=0 to keep it)"
        ),
    }
}
