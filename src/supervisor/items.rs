//! The supervisor's item store (I21): the last item each generation put
//! under each name, given to every generation before its `Begin`. A blob
//! is checked when it comes in (every seal, its length, its sha256) and
//! refused, closed with a log line, if it is not what it says.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};

use crate::channel;
use crate::error::Result;
use crate::wire::{ItemEntry, MAX_FDS_PER_FRAME, Message};

/// Items held, by batch until the lifecycle machine decides, then by name.
#[derive(Default)]
pub(crate) struct Items {
    batches: HashMap<u64, Vec<(ItemEntry, OwnedFd)>>,
    next_batch: u64,
    store: BTreeMap<String, (ItemEntry, OwnedFd)>,
}

impl Items {
    /// A store holding `entries` (a thawed supervisor's).
    pub(crate) fn restore(entries: Vec<(ItemEntry, OwnedFd)>) -> Items {
        Items {
            store: entries
                .into_iter()
                .map(|(entry, fd)| (entry.name.clone(), (entry, fd)))
                .collect(),
            ..Items::default()
        }
    }

    /// Holds a batch until the machine decides; its id.
    pub(crate) fn hold(&mut self, entries: Vec<ItemEntry>, fds: Vec<OwnedFd>) -> u64 {
        self.next_batch += 1;
        let batch = entries.into_iter().zip(fds).collect();
        self.batches.insert(self.next_batch, batch);
        self.next_batch
    }

    /// Puts batch `batch` in the store: each item replaces the one of its
    /// name; a blob that fails its checks is closed instead.
    pub(crate) fn keep(&mut self, batch: u64) {
        for (entry, fd) in self.batches.remove(&batch).unwrap_or_default() {
            if let Some(info) = &entry.blob
                && let Err(why) = crate::items::read_blob(info, fd.as_fd())
            {
                tracing::warn!(name = %entry.name, %why, "a blob put in the item store was refused and closed");
                continue;
            }
            tracing::debug!(name = %entry.name, "item kept");
            self.store.insert(entry.name.clone(), (entry, fd));
        }
    }

    /// Closes batch `batch`; how many items it held.
    pub(crate) fn close(&mut self, batch: u64) -> usize {
        self.batches.remove(&batch).map_or(0, |batch| batch.len())
    }

    /// Sends every stored item on `sender` (duplicates: the store keeps
    /// its own); how many.
    pub(crate) fn send_all(&self, sender: &channel::Sender, handoff_id: u64) -> Result<usize> {
        let all: Vec<_> = self.store.values().collect();
        for frame in all.chunks(usize::from(MAX_FDS_PER_FRAME)) {
            let entries = frame.iter().map(|(entry, _)| entry.clone()).collect();
            let fds: Vec<_> = frame.iter().map(|(_, fd)| fd.as_fd()).collect();
            sender.send(handoff_id, Message::Items { entries }, &fds)?;
        }
        Ok(all.len())
    }

    /// The stored items, by name (a freeze, `status`).
    pub(crate) fn stored(&self) -> impl Iterator<Item = &(ItemEntry, OwnedFd)> {
        self.store.values()
    }
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

    #[test]
    fn a_kept_item_replaces_its_name_and_a_bad_blob_is_refused() {
        let mut items = Items::default();
        let good = crate::sys::memfd::sealed("a", b"one").expect("memfd");
        let (entry, fd) = blob("state", b"one", good);
        let batch = items.hold(vec![entry], vec![fd]);
        items.keep(batch);
        let newer = crate::sys::memfd::sealed("a", b"two").expect("memfd");
        let (entry, fd) = blob("state", b"two", newer);
        let batch = items.hold(vec![entry], vec![fd]);
        items.keep(batch);
        let names: Vec<_> = items.stored().map(|(e, _)| e.name.clone()).collect();
        assert_eq!(names, ["state"]);
        let unsealed = crate::sys::memfd::unsealed("b", b"three").expect("memfd");
        let (entry, fd) = blob("other", b"three", unsealed);
        let batch = items.hold(vec![entry], vec![fd]);
        items.keep(batch);
        assert_eq!(items.stored().count(), 1, "the unsealed blob was refused");
        let (entry, fd) = items.stored().next().expect("kept");
        let info = entry.blob.as_ref().expect("a blob");
        assert_eq!(
            crate::items::read_blob(info, fd.as_fd()).expect("reads"),
            b"two"
        );
    }
}
