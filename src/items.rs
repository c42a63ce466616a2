//! Named items kept for the next generations (I21): fds of any kind (a
//! memfd cache, a pipe, an upstream connection) and sealed state blobs.
//!
//! The supervisor keeps the last item put under each name and gives them
//! all to every generation it starts later, before its `Begin`: a
//! successor, and a restart after a crash too. A blob travels as a sealed
//! memfd (never through the control socket) with its schema, length and
//! sha256; the reader checks all of them, not the writer's word. An
//! exclusive daemon puts its blob in `seal` (its successor reads it at
//! its `Begin`); an overlap successor begins before the old generation
//! drains, so what that one puts in `drain` arrives while the successor
//! serves ([`ItemStore::arrivals`]). A cache it mutates in place it puts
//! once, when it creates it.
//!
//! ```no_run
//! use handoff::wire::{Schema, SchemaRange};
//! let schema = Schema { name: "counter".into(), version: 2 };
//! let reads = SchemaRange { name: "counter".into(), min: 1, max: 2 };
//! let options = handoff::StartOptions::new("mydaemon 1.2.0")
//!     .with_schemas(vec![schema.clone()], vec![reads.clone()]);
//! let generation = handoff::start(options)?;
//! let items = generation.items();
//! // One code path: an inherited blob, else what is on disk.
//! let count = match items.take_blob("state", &reads)? {
//!     Some(blob) => u64::from_le_bytes(blob.bytes.try_into().unwrap_or_default()),
//!     None => 0, // read the data directory
//! };
//! // ... in `seal`:
//! items.put_blob("state", schema, &count.to_le_bytes())?;
//! # Ok::<(), handoff::Error>(())
//! ```

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossbeam_channel::Sender;
use sha2::Digest;

use crate::error::{Error, Result};
use crate::incumbent::AgentInput;
use crate::sys;
use crate::wire::{BlobInfo, ItemEntry, Message, Schema, SchemaRange};

/// The most items the supervisor keeps; a put of a new name past it is
/// refused (logged by the supervisor).
pub const ITEMS_MAX: usize = 64;

/// The longest item name, in bytes.
pub const ITEM_NAME_MAX: usize = 255;

/// A blob read back: its schema and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// The format it was written in.
    pub schema: Schema,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Items received, by name, and who watches them arrive.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    items: Mutex<HashMap<String, (ItemEntry, OwnedFd)>>,
    watchers: Mutex<Vec<Sender<String>>>,
}

/// A generation's inbox, shared by its agent and its `ItemStore`s.
pub(crate) type Received = Arc<Inbox>;

impl Inbox {
    /// The items not yet taken, by name.
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<String, (ItemEntry, OwnedFd)>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `items`, each replacing what was kept under its name, then
    /// tells every watcher their names (a watcher gone is forgotten).
    pub(crate) fn deliver(&self, items: Vec<(ItemEntry, OwnedFd)>) {
        let names: Vec<String> = {
            let mut kept = self.lock();
            items
                .into_iter()
                .map(|(entry, fd)| {
                    let name = entry.name.clone();
                    kept.insert(name.clone(), (entry, fd));
                    name
                })
                .collect()
        };
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        watchers.retain(|watcher| names.iter().all(|name| watcher.send(name.clone()).is_ok()));
    }
}

/// A generation's items: those kept for it, and those it keeps for the
/// next generations. Cheap to clone; every clone is the same store.
#[derive(Debug, Clone)]
pub struct ItemStore {
    received: Received,
    /// `None` without a supervisor: nothing is kept.
    to_agent: Option<Sender<AgentInput>>,
}

impl ItemStore {
    pub(crate) fn new(received: Received, to_agent: Option<Sender<AgentInput>>) -> ItemStore {
        ItemStore { received, to_agent }
    }

    /// The fd kept under `name` (not a blob), taken out of this store.
    pub fn take_fd(&self, name: &str) -> Result<Option<OwnedFd>> {
        let mut received = self.received.lock();
        match received.remove(name) {
            None => Ok(None),
            Some((entry, fd)) if entry.blob.is_none() => Ok(Some(fd)),
            Some((entry, fd)) => {
                received.insert(name.to_owned(), (entry, fd));
                Err(refused(name, "it is a blob: take it with take_blob"))
            }
        }
    }

    /// The blob kept under `name`, if its schema is in `reads` and its
    /// memfd is sealed and holds the bytes announced. `Ok(None)` when there
    /// is none: read the state from disk. `Err` when there is one this
    /// build must not use.
    pub fn take_blob(&self, name: &str, reads: &SchemaRange) -> Result<Option<Blob>> {
        let taken = self.received.lock().remove(name);
        let Some((entry, fd)) = taken else {
            return Ok(None);
        };
        let Some(info) = entry.blob else {
            return Err(refused(
                name,
                "it is an fd, not a blob: take it with take_fd",
            ));
        };
        if !reads.accepts(&info.schema) {
            let why = format!(
                "schema {} version {} is not one of {} {}..={}",
                info.schema.name, info.schema.version, reads.name, reads.min, reads.max
            );
            return Err(refused(name, &why));
        }
        let bytes = read_blob(&info, fd.as_fd()).map_err(|why| refused(name, &why))?;
        Ok(Some(Blob {
            schema: info.schema,
            bytes,
        }))
    }

    /// The name of every item kept for this generation from now on, as it
    /// arrives; take it with [`take_blob`](Self::take_blob) or
    /// [`take_fd`](Self::take_fd). The store comes before `Begin`, before
    /// any of it can be taken; in overlap mode, what the generation this
    /// one replaced puts in its `drain` comes while this one serves, each
    /// name again as it comes; not an item under a name this generation
    /// put or removed itself. Without a supervisor nothing arrives. The
    /// channel does not end while the store lives: read it, or drop it
    /// (a receiver dropped is forgotten at the next arrival).
    pub fn arrivals(&self) -> crossbeam_channel::Receiver<String> {
        let (watcher, arrivals) = crossbeam_channel::unbounded();
        self.received
            .watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(watcher);
        arrivals
    }

    /// Keeps a duplicate of `fd` under `name` for the next generations,
    /// replacing what was kept under that name.
    pub fn put_fd(&self, name: &str, fd: impl AsFd) -> Result<()> {
        let fd = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| Error::io("duplicating an item's fd", source))?;
        let entry = ItemEntry {
            name: name.to_owned(),
            blob: None,
        };
        self.put(entry, fd)
    }

    /// Keeps `bytes` under `name`, as a sealed memfd in `schema`, for the
    /// next generations. In `seal` it reaches the supervisor before the
    /// hook's answer, so the successor's `Begin` brings it.
    pub fn put_blob(&self, name: &str, schema: Schema, bytes: &[u8]) -> Result<()> {
        let fd = sys::memfd::sealed(name, bytes)
            .map_err(|source| Error::io("writing a sealed blob", source))?;
        let entry = ItemEntry {
            name: name.to_owned(),
            blob: Some(BlobInfo {
                schema,
                len: bytes.len() as u64,
                sha256: sha2::Sha256::digest(bytes).into(),
            }),
        };
        self.put(entry, fd)
    }

    /// Keeps nothing more under `name` for the next generations (an item
    /// this build no longer uses: the store holds at most [`ITEMS_MAX`]
    /// names). What was kept for this generation under it is dropped too.
    /// A supervisor that speaks protocol version 2 or older cannot remove
    /// items: it is logged and the item stays until replaced.
    pub fn remove(&self, name: &str) -> Result<()> {
        if name.len() > ITEM_NAME_MAX {
            return Err(refused(
                name,
                &format!("a name longer than {ITEM_NAME_MAX} bytes"),
            ));
        }
        self.received.lock().remove(name);
        let Some(agent) = &self.to_agent else {
            return Ok(());
        };
        agent
            .send(AgentInput::RemoveItem(name.to_owned()))
            .map_err(|_| Error::SessionOver)
    }

    fn put(&self, entry: ItemEntry, fd: OwnedFd) -> Result<()> {
        if entry.name.len() > ITEM_NAME_MAX {
            return Err(refused(
                &entry.name,
                &format!("a name longer than {ITEM_NAME_MAX} bytes"),
            ));
        }
        let Some(agent) = &self.to_agent else {
            return Ok(());
        };
        agent
            .send(AgentInput::PutItem(entry, fd))
            .map_err(|_| Error::SessionOver)
    }
}

/// What this generation knows the supervisor's store holds: the items it
/// received and those it put since, each a duplicate of the fd (the store
/// holds the same open file). A supervisor that adopts the generation
/// after its own died starts with an empty store and is sent these again.
#[derive(Debug, Default)]
pub(crate) struct StoreCopy {
    items: HashMap<String, (ItemEntry, OwnedFd)>,
    /// The names this generation put or removed itself.
    own: std::collections::HashSet<String>,
}

impl StoreCopy {
    /// Notes `entry`, put by this generation: its name is its own now.
    pub(crate) fn put(&mut self, entry: &ItemEntry, fd: impl AsFd) {
        self.own.insert(entry.name.clone());
        self.note(entry, fd);
    }

    /// Of `items` received, those this generation takes (noted as
    /// stored): not one under a name it put or removed itself, which an
    /// older generation's late put cannot replace (I21); those are closed.
    pub(crate) fn receive(
        &mut self,
        items: Vec<(ItemEntry, OwnedFd)>,
    ) -> Vec<(ItemEntry, OwnedFd)> {
        let (stale, taken): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|(entry, _)| self.own.contains(&entry.name));
        for (entry, _) in &stale {
            tracing::debug!(
                name = entry.name,
                "an older generation's item under a name this one wrote: dropped"
            );
        }
        for (entry, fd) in &taken {
            self.note(entry, fd);
        }
        taken
    }

    /// Notes `entry` as stored, with a duplicate of `fd` (at most
    /// [`ITEMS_MAX`] names, as the store).
    fn note(&mut self, entry: &ItemEntry, fd: impl AsFd) {
        if !self.items.contains_key(&entry.name) && self.items.len() >= ITEMS_MAX {
            return;
        }
        match fd.as_fd().try_clone_to_owned() {
            Ok(copy) => {
                self.items.insert(entry.name.clone(), (entry.clone(), copy));
            }
            Err(error) => {
                tracing::warn!(name = entry.name, %error, "an item cannot be kept for an adoption")
            }
        }
    }

    /// Forgets `name`: this generation removed it from the store.
    pub(crate) fn forget(&mut self, name: &str) {
        self.own.insert(name.to_owned());
        self.items.remove(name);
    }

    /// The `Items` messages that give a new supervisor the store again,
    /// each with its fds, in frames under the payload bound (none when
    /// empty).
    pub(crate) fn messages(&self) -> Vec<(Message, Vec<BorrowedFd<'_>>)> {
        let mut items: Vec<_> = self.items.values().collect();
        items.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        crate::wire::per_frame(&items, |(entry, _)| entry.encoded_size())
            .into_iter()
            .map(|frame| {
                let entries = frame.iter().map(|(entry, _)| entry.clone()).collect();
                let fds = frame.iter().map(|(_, fd)| fd.as_fd()).collect();
                (Message::Items { entries }, fds)
            })
            .collect()
    }
}

fn refused(name: &str, reason: &str) -> Error {
    Error::ItemRefused {
        name: name.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A blob's bytes, checked against `info`: every seal, the length, the
/// sha256. The supervisor checks a blob put in its store the same way.
pub(crate) fn read_blob(
    info: &BlobInfo,
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::result::Result<Vec<u8>, String> {
    let bytes = sys::memfd::read_sealed(fd).map_err(|e| e.to_string())?;
    if bytes.len() as u64 != info.len {
        return Err(format!(
            "the memfd holds {} bytes, {} were announced",
            bytes.len(),
            info.len
        ));
    }
    let sha256: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    if sha256 != info.sha256 {
        return Err("the memfd's bytes do not have the announced sha256".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(version: u32) -> Schema {
        Schema {
            name: "count".into(),
            version,
        }
    }

    fn reads(min: u32, max: u32) -> SchemaRange {
        SchemaRange {
            name: "count".into(),
            min,
            max,
        }
    }

    fn info(bytes: &[u8], version: u32) -> BlobInfo {
        BlobInfo {
            schema: schema(version),
            len: bytes.len() as u64,
            sha256: sha2::Sha256::digest(bytes).into(),
        }
    }

    /// A store holding `fd` as the blob "state" described by `info`.
    fn holding(info: BlobInfo, fd: OwnedFd) -> ItemStore {
        let entry = ItemEntry {
            name: "state".into(),
            blob: Some(info),
        };
        let received: Received = Arc::default();
        received.deliver(vec![(entry, fd)]);
        ItemStore::new(received, None)
    }

    #[test]
    fn each_watcher_hears_the_names_that_arrive_after_it_subscribed() {
        let received: Received = Arc::default();
        let store = ItemStore::new(Arc::clone(&received), None);
        let fd = |name: &str| {
            let entry = ItemEntry {
                name: name.into(),
                blob: None,
            };
            (entry, sys::memfd::unsealed(name, b"x").expect("memfd"))
        };
        received.deliver(vec![fd("before")]);
        let (first, second) = (store.arrivals(), store.clone().arrivals());
        received.deliver(vec![fd("cache"), fd("state")]);
        for arrivals in [&first, &second] {
            let names: Vec<String> = arrivals.try_iter().collect();
            assert_eq!(names, ["cache", "state"]);
        }
        assert!(store.take_fd("before").expect("an fd").is_some());
        // A watcher gone is forgotten at the next arrival.
        drop(second);
        received.deliver(vec![fd("later")]);
        assert_eq!(first.try_iter().collect::<Vec<_>>(), ["later"]);
        let watchers = received.watchers.lock().expect("watchers").len();
        assert_eq!(watchers, 1);
    }

    #[test]
    fn an_older_generations_item_under_a_name_this_one_wrote_is_not_taken() {
        let mut copy = StoreCopy::default();
        let item = |name: &str, bytes: &[u8]| {
            let entry = ItemEntry {
                name: name.into(),
                blob: None,
            };
            (entry, sys::memfd::sealed("item", bytes).expect("memfd"))
        };
        let (mine, fd) = item("state", b"mine");
        copy.put(&mine, &fd);
        copy.forget("gone");
        let arrived = vec![
            item("state", b"older"),
            item("gone", b"older"),
            item("cache", b"c"),
        ];
        let taken = copy.receive(arrived);
        let names: Vec<_> = taken.iter().map(|(e, _)| e.name.as_str()).collect();
        assert_eq!(names, ["cache"]);
        // The copy keeps this generation's own "state".
        let (message, fds) = copy.messages().pop().expect("one frame");
        let Message::Items { entries } = message else {
            panic!("{message:?}")
        };
        assert_eq!(entries.len(), 2, "{entries:?}");
        let state = entries
            .iter()
            .position(|e| e.name == "state")
            .expect("state");
        assert_eq!(sys::memfd::read_sealed(fds[state]).expect("read"), b"mine");
    }

    #[test]
    fn the_store_copy_keeps_the_last_item_of_each_name_up_to_the_bound() {
        let mut copy = StoreCopy::default();
        assert!(copy.messages().is_empty(), "nothing to send");
        let fd = |bytes: &[u8]| sys::memfd::sealed("item", bytes).expect("memfd");
        let entry = |name: &str| ItemEntry {
            name: name.into(),
            blob: None,
        };
        copy.note(&entry("b"), fd(b"old"));
        copy.note(&entry("a"), fd(b"a"));
        copy.note(&entry("b"), fd(b"new"));
        let mut messages = copy.messages();
        let (message, fds) = messages.pop().expect("two items");
        let Message::Items { entries } = message else {
            panic!("{message:?}")
        };
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        // A duplicate of the last fd put under "b".
        assert_eq!(sys::memfd::read_sealed(fds[1]).expect("read"), b"new");
        for n in 0..ITEMS_MAX {
            copy.note(&entry(&format!("n{n}")), fd(b"x"));
        }
        let sent: usize = copy.messages().iter().map(|(m, _)| m.fd_count()).sum();
        assert_eq!(sent, ITEMS_MAX, "as many as the store keeps");
    }

    #[test]
    fn a_store_copy_too_large_for_one_frame_goes_in_several() {
        let mut copy = StoreCopy::default();
        let long = "s".repeat(crate::wire::MAX_PAYLOAD / 16);
        for n in 0..16 {
            let entry = ItemEntry {
                name: format!("blob{n}"),
                blob: Some(BlobInfo {
                    schema: Schema {
                        name: long.clone(),
                        version: 1,
                    },
                    len: 0,
                    sha256: [0; 32],
                }),
            };
            copy.note(&entry, sys::memfd::sealed("item", b"").expect("memfd"));
        }
        let messages = copy.messages();
        assert!(messages.len() > 1, "{} frames", messages.len());
        for (message, fds) in &messages {
            assert_eq!(message.fd_count(), fds.len());
            let envelope = crate::wire::Envelope {
                handoff_id: 1,
                message: message.clone(),
            };
            crate::wire::encode(&envelope).expect("under the payload bound");
        }
    }

    #[test]
    fn a_sealed_blob_in_range_reads_back_once() {
        let fd = sys::memfd::sealed("state", b"42").expect("memfd");
        let store = holding(info(b"42", 2), fd);
        let blob = store.take_blob("state", &reads(1, 2)).expect("ok");
        assert_eq!(blob.map(|b| b.bytes), Some(b"42".to_vec()));
        assert!(
            store
                .take_blob("state", &reads(1, 2))
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn a_schema_out_of_range_is_refused() {
        let fd = sys::memfd::sealed("state", b"42").expect("memfd");
        let store = holding(info(b"42", 3), fd);
        let error = store.take_blob("state", &reads(1, 2)).expect_err("refused");
        assert!(
            error
                .to_string()
                .contains("version 3 is not one of count 1..=2"),
            "{error}"
        );
    }

    #[test]
    fn an_unsealed_memfd_is_refused() {
        let fd = sys::memfd::unsealed("state", b"42").expect("memfd");
        let store = holding(info(b"42", 1), fd);
        let error = store.take_blob("state", &reads(1, 1)).expect_err("refused");
        assert!(error.to_string().contains("not sealed"), "{error}");
    }

    #[test]
    fn a_resized_or_altered_blob_is_refused() {
        // Sealed, but not what was announced: shorter, or other bytes.
        let fd = sys::memfd::sealed("state", b"4").expect("memfd");
        let store = holding(info(b"42", 1), fd);
        let error = store.take_blob("state", &reads(1, 1)).expect_err("refused");
        assert!(
            error
                .to_string()
                .contains("holds 1 bytes, 2 were announced"),
            "{error}"
        );
        let fd = sys::memfd::sealed("state", b"43").expect("memfd");
        let store = holding(info(b"42", 1), fd);
        let error = store.take_blob("state", &reads(1, 1)).expect_err("refused");
        assert!(error.to_string().contains("sha256"), "{error}");
    }

    #[test]
    fn a_blob_is_not_an_fd_and_stays_for_take_blob() {
        let fd = sys::memfd::sealed("state", b"42").expect("memfd");
        let store = holding(info(b"42", 1), fd);
        assert!(store.take_fd("state").is_err());
        assert!(
            store
                .take_blob("state", &reads(1, 1))
                .expect("ok")
                .is_some()
        );
    }
}
