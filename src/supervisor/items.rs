//! The supervisor's item store (I21): the last item each generation put
//! under each name, given to every generation before its `Begin`. An item
//! is refused (closed, with a log line) when its name is longer than
//! `ITEM_NAME_MAX`, when the store already holds `ITEMS_MAX` others, when
//! a blob lacks a seal or its announced length (the reader also checks its
//! sha256), and when a newer generation already put that name. A removal
//! (`ItemsRemoved`) is a batch too, decided as a put is: it removes a name
//! unless a newer generation put it.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};

use crate::channel;
use crate::error::Result;
use crate::items::{ITEM_NAME_MAX, ITEMS_MAX};
use crate::protocol::GenerationId;
#[cfg(test)]
use crate::wire::MAX_FDS_PER_FRAME;
use crate::wire::per_frame;
use crate::wire::{ItemEntry, Message};

/// One stored item: what it is, its fd, who put it.
pub(crate) struct Stored {
    pub(crate) entry: ItemEntry,
    pub(crate) fd: OwnedFd,
    pub(crate) writer: GenerationId,
}

/// What a batch asks: items to put, or names to remove.
enum Batch {
    Put(Vec<(ItemEntry, OwnedFd)>),
    Remove(Vec<String>),
}

/// A batch dropped: how many items it put, or how many names it removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Items put (their fds closed).
    Puts(usize),
    /// Names whose removal is ignored.
    Removals(usize),
}

/// Items held, by batch until the lifecycle machine decides, then by name.
#[derive(Default)]
pub(crate) struct Items {
    batches: HashMap<u64, Batch>,
    next_batch: u64,
    store: BTreeMap<String, Stored>,
}

impl Items {
    /// A store holding `stored` (a thawed supervisor's).
    pub(crate) fn restore(stored: Vec<Stored>) -> Items {
        Items {
            store: stored
                .into_iter()
                .map(|item| (item.entry.name.clone(), item))
                .collect(),
            ..Items::default()
        }
    }

    /// Holds a batch until the machine decides; its id.
    pub(crate) fn hold(&mut self, entries: Vec<ItemEntry>, fds: Vec<OwnedFd>) -> u64 {
        let batch = Batch::Put(entries.into_iter().zip(fds).collect());
        self.hold_batch(batch)
    }

    /// Holds a removal of `names` until the machine decides; its id.
    pub(crate) fn hold_removal(&mut self, names: Vec<String>) -> u64 {
        self.hold_batch(Batch::Remove(names))
    }

    fn hold_batch(&mut self, batch: Batch) -> u64 {
        self.next_batch += 1;
        self.batches.insert(self.next_batch, batch);
        self.next_batch
    }

    /// Puts batch `batch`, put by generation `writer`, in the store: each
    /// item replaces the one of its name, unless it is refused. The names
    /// it put (none for a removal).
    pub(crate) fn keep(&mut self, batch: u64, writer: GenerationId) -> Vec<String> {
        match self.batches.remove(&batch) {
            Some(Batch::Put(items)) => self.put(items, writer),
            Some(Batch::Remove(names)) => {
                self.remove(&names, writer);
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// Removes each of `names`, unless a newer generation than `writer`
    /// put it.
    fn remove(&mut self, names: &[String], writer: GenerationId) {
        for name in names {
            match self.store.get(name) {
                Some(stored) if stored.writer > writer => tracing::warn!(
                    %name,
                    writer,
                    newer = stored.writer,
                    "an item removal was refused: a newer generation put it since"
                ),
                Some(_) => {
                    self.store.remove(name);
                    tracing::debug!(%name, writer, "item removed");
                }
                None => {}
            }
        }
    }

    fn put(&mut self, items: Vec<(ItemEntry, OwnedFd)>, writer: GenerationId) -> Vec<String> {
        let mut kept = Vec::new();
        for (entry, fd) in items {
            let name = entry.name.clone();
            match self.refusal(&entry, &fd, writer) {
                Some(why) => {
                    tracing::warn!(%name, writer, %why, "an item put in the item store was refused and closed");
                }
                None => {
                    tracing::debug!(%name, writer, "item kept");
                    self.store
                        .insert(name.clone(), Stored { entry, fd, writer });
                    kept.push(name);
                }
            }
        }
        kept
    }

    fn refusal(&self, entry: &ItemEntry, fd: &OwnedFd, writer: GenerationId) -> Option<String> {
        if entry.name.len() > ITEM_NAME_MAX {
            return Some(format!("a name longer than {ITEM_NAME_MAX} bytes"));
        }
        match self.store.get(&entry.name) {
            Some(stored) if stored.writer > writer => {
                return Some(format!(
                    "generation {} put it since (a put of an older generation comes late)",
                    stored.writer
                ));
            }
            None if self.store.len() >= ITEMS_MAX => {
                return Some(format!("the store holds {ITEMS_MAX} items already"));
            }
            _ => {}
        }
        let info = entry.blob.as_ref()?;
        crate::sys::memfd::check_sealed(fd.as_fd(), info.len)
            .err()
            .map(|error| error.to_string())
    }

    /// Drops batch `batch` (its fds close); what it was, for the log line.
    pub(crate) fn close(&mut self, batch: u64) -> Dropped {
        match self.batches.remove(&batch) {
            Some(Batch::Put(items)) => Dropped::Puts(items.len()),
            Some(Batch::Remove(names)) => Dropped::Removals(names.len()),
            None => Dropped::Puts(0),
        }
    }

    /// Sends every stored item on `sender`; how many.
    pub(crate) fn send_all(&self, sender: &channel::Sender, handoff_id: u64) -> Result<usize> {
        let all: Vec<&Stored> = self.store.values().collect();
        send(&all, sender, handoff_id)
    }

    /// Sends the stored items named `names` on `sender`; how many.
    pub(crate) fn send_named(
        &self,
        names: &[String],
        sender: &channel::Sender,
        handoff_id: u64,
    ) -> Result<usize> {
        let named: Vec<&Stored> = names.iter().filter_map(|n| self.store.get(n)).collect();
        send(&named, sender, handoff_id)
    }

    /// The stored items, by name (a freeze).
    pub(crate) fn stored(&self) -> impl Iterator<Item = &Stored> {
        self.store.values()
    }

    /// The store, as `status` shows it.
    pub(crate) fn report(&self) -> Vec<super::report::ItemReport> {
        self.store
            .values()
            .map(|item| super::report::ItemReport {
                name: item.entry.name.clone(),
                writer: item.writer,
                blob: item
                    .entry
                    .blob
                    .as_ref()
                    .map(|blob| super::report::BlobReport {
                        schema: blob.schema.name.clone(),
                        version: blob.schema.version,
                        len: blob.len,
                    }),
            })
            .collect()
    }
}

/// Sends `items` on `sender` (duplicates: the store keeps its own), in
/// frames of at most 253 fds and half the payload bound; how many.
fn send(items: &[&Stored], sender: &channel::Sender, handoff_id: u64) -> Result<usize> {
    for frame in per_frame(items, encoded_size) {
        let entries = frame.iter().map(|item| item.entry.clone()).collect();
        let fds: Vec<_> = frame.iter().map(|item| item.fd.as_fd()).collect();
        sender.send(handoff_id, Message::Items { entries }, &fds)?;
    }
    Ok(items.len())
}

/// An item's share of a frame's payload, bounded above.
fn encoded_size(item: &&Stored) -> usize {
    item.entry.encoded_size()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{BlobInfo, Schema};
    use sha2::Digest;

    fn blob(name: &str, announced: &[u8], fd: OwnedFd) -> (ItemEntry, OwnedFd) {
        let info = BlobInfo {
            schema: Schema {
                name: "s".into(),
                version: 1,
            },
            len: announced.len() as u64,
            sha256: sha2::Sha256::digest(announced).into(),
        };
        let entry = ItemEntry {
            name: name.into(),
            blob: Some(info),
        };
        (entry, fd)
    }

    fn put(items: &mut Items, name: &str, bytes: &[u8], writer: GenerationId) {
        let fd = crate::sys::memfd::sealed("a", bytes).expect("memfd");
        let (entry, fd) = blob(name, bytes, fd);
        let batch = items.hold(vec![entry], vec![fd]);
        items.keep(batch, writer);
    }

    fn content(items: &Items, name: &str) -> Vec<u8> {
        let item = items.store.get(name).expect("stored");
        let info = item.entry.blob.as_ref().expect("a blob");
        crate::items::read_blob(info, item.fd.as_fd()).expect("reads")
    }

    #[test]
    fn a_kept_item_replaces_its_name_and_a_bad_blob_is_refused() {
        let mut items = Items::default();
        put(&mut items, "state", b"one", 1);
        put(&mut items, "state", b"two", 2);
        assert_eq!(items.stored().count(), 1);
        assert_eq!(content(&items, "state"), b"two");
        // An older generation's late put does not undo a newer one's.
        put(&mut items, "state", b"stale", 1);
        assert_eq!(content(&items, "state"), b"two");
        let unsealed = crate::sys::memfd::unsealed("b", b"three").expect("memfd");
        let (entry, fd) = blob("other", b"three", unsealed);
        let batch = items.hold(vec![entry], vec![fd]);
        items.keep(batch, 2);
        assert_eq!(items.stored().count(), 1, "the unsealed blob was refused");
        let sealed = crate::sys::memfd::sealed("c", b"four").expect("memfd");
        let (entry, fd) = blob("resized", b"four!", sealed);
        let batch = items.hold(vec![entry], vec![fd]);
        items.keep(batch, 2);
        assert_eq!(items.stored().count(), 1, "the wrong length was refused");
    }

    #[test]
    fn keeping_a_batch_names_what_it_put_for_the_live_generation() {
        let mut items = Items::default();
        put(&mut items, "state", b"newer", 3);
        let mut batch = Vec::new();
        for (name, bytes) in [("state", b"older"), ("cache", b"fresh")] {
            let fd = crate::sys::memfd::sealed(name, bytes).expect("memfd");
            batch.push(blob(name, bytes, fd));
        }
        let (entries, fds) = batch.into_iter().unzip();
        let id = items.hold(entries, fds);
        // Generation 3 put "state" since: only "cache" is kept and passed.
        assert_eq!(items.keep(id, 2), ["cache"]);
        assert_eq!(content(&items, "state"), b"newer");
        let removal = items.hold_removal(vec!["cache".into()]);
        assert!(items.keep(removal, 2).is_empty());
    }

    #[test]
    fn a_removal_drops_the_name_unless_a_newer_generation_put_it() {
        let mut items = Items::default();
        put(&mut items, "cache", b"one", 1);
        put(&mut items, "state", b"two", 2);
        // Generation 1 comes late: generation 2 put "state" since.
        let late = items.hold_removal(vec!["state".into(), "cache".into()]);
        items.keep(late, 1);
        let names: Vec<_> = items.stored().map(|item| item.entry.name.clone()).collect();
        assert_eq!(names, ["state"]);
        // A removal the machine refused (a successor that did not commit).
        let refused = items.hold_removal(vec!["state".into()]);
        assert_eq!(items.close(refused), Dropped::Removals(1));
        assert_eq!(items.stored().count(), 1);
        let removal = items.hold_removal(vec!["state".into(), "never-put".into()]);
        items.keep(removal, 2);
        assert_eq!(items.stored().count(), 0);
    }

    #[test]
    fn the_store_is_bounded_in_names_and_count() {
        let mut items = Items::default();
        put(&mut items, &"n".repeat(ITEM_NAME_MAX + 1), b"x", 1);
        assert_eq!(items.stored().count(), 0);
        for index in 0..ITEMS_MAX + 3 {
            put(&mut items, &format!("item{index}"), b"x", 1);
        }
        assert_eq!(items.stored().count(), ITEMS_MAX);
        // A name already stored is still replaced.
        put(&mut items, "item0", b"y", 2);
        assert_eq!(content(&items, "item0"), b"y");
    }

    #[test]
    fn frames_stay_under_the_payload_bound_however_long_the_names() {
        let stored: Vec<Stored> = (0..300)
            .map(|index| Stored {
                entry: ItemEntry {
                    name: format!("{index:0>250}"),
                    blob: None,
                },
                fd: crate::sys::memfd::unsealed("f", b"").expect("memfd"),
                writer: 1,
            })
            .collect();
        let all: Vec<&Stored> = stored.iter().collect();
        let split = per_frame(&all, encoded_size);
        assert!(
            split
                .iter()
                .all(|f| f.len() <= usize::from(MAX_FDS_PER_FRAME))
        );
        assert_eq!(split.iter().map(|f| f.len()).sum::<usize>(), 300);
    }
}
