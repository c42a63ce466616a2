//! The driver's side of connections in transit (I20): it holds the fds of
//! every batch a generation handed over until the lifecycle machine says
//! where the batch goes, and sizes the budget a draining generation gets.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use crate::channel;
use crate::error::Result;
use crate::protocol::GenerationId;
use crate::sys;
#[cfg(test)]
use crate::wire::MAX_PAYLOAD;
use crate::wire::per_frame;
use crate::wire::{ConnectionEntry, Message};

/// Fds a process keeps free beside the connections it takes in: its own
/// sockets, pipes, files and the next generation's spawn.
pub(crate) const FD_RESERVE: u64 = 256;

/// Batches held, by the id the lifecycle machine knows them by, and what
/// each generation may still hand over.
#[derive(Default)]
pub(crate) struct Transit {
    held: HashMap<u64, Vec<(ConnectionEntry, OwnedFd)>>,
    next_batch: u64,
    /// The budget each generation was offered, less what it handed over.
    allowed: HashMap<GenerationId, u32>,
}

impl Transit {
    /// Holds a batch `from` handed over; its id and size. Connections
    /// past the budget it was offered are closed here (a library daemon
    /// never sends them; another peer is not trusted with our fds).
    pub(crate) fn hold(
        &mut self,
        from: GenerationId,
        entries: Vec<ConnectionEntry>,
        fds: Vec<OwnedFd>,
    ) -> (u64, u32) {
        let allowed = self.allowed.entry(from).or_insert(0);
        let mut batch: Vec<_> = entries.into_iter().zip(fds).collect();
        let within = batch.len().min(*allowed as usize);
        if within < batch.len() {
            let past = batch.split_off(within);
            tracing::warn!(
                generation = from,
                count = past.len(),
                "connections past the budget closed"
            );
        }
        *allowed -= within as u32;
        self.next_batch += 1;
        let count = u32::try_from(batch.len()).unwrap_or(u32::MAX);
        self.held.insert(self.next_batch, batch);
        (self.next_batch, count)
    }

    /// How many connections the supervisor and the generation with pid
    /// `receiver` can hold beside what is held already. Raises this
    /// process's open-file limit first (again after a failed re-exec put
    /// it back).
    pub(crate) fn budget(&mut self, to: GenerationId, receiver: u32) -> u32 {
        if let Err(error) = sys::raise_open_files() {
            tracing::warn!(%error, "raising the open-file limit failed");
        }
        let held: u64 = self.held.values().map(|batch| batch.len() as u64).sum();
        let headroom = |pid| match sys::open_file_headroom(pid) {
            Ok(free) => free.saturating_sub(FD_RESERVE),
            Err(error) => {
                tracing::warn!(%error, "no open-file headroom known; no connection handoff");
                0
            }
        };
        let ours = headroom(None).saturating_sub(held);
        let theirs = headroom(Some(receiver)).saturating_sub(held);
        let budget = u32::try_from(ours.min(theirs)).unwrap_or(u32::MAX);
        self.allowed.insert(to, budget);
        budget
    }

    /// Sends batch `batch` on `sender`, to the generation with pid
    /// `receiver`, as many frames as it takes; the fds close here once
    /// sent. Connections past what the receiver can hold now (it kept
    /// accepting since its budget) are closed instead, with a log line:
    /// a receive past its limit would break its control connection.
    /// `Ok(0)` for a batch not held.
    pub(crate) fn send(
        &mut self,
        batch: u64,
        (sender, receiver): (&channel::Sender, u32),
        handoff_id: u64,
    ) -> Result<usize> {
        let Some(mut connections) = self.held.remove(&batch) else {
            return Ok(0);
        };
        let room = sys::open_file_headroom(Some(receiver))
            .map_or(0, |free| free.saturating_sub(FD_RESERVE / 2));
        if connections.len() as u64 > room {
            let past = connections.split_off(usize::try_from(room).unwrap_or(usize::MAX));
            tracing::warn!(
                pid = receiver,
                count = past.len(),
                "connections closed: their receiver cannot hold them"
            );
        }
        for frame in frames(&connections) {
            let entries = frame.iter().map(|(entry, _)| entry.clone()).collect();
            let fds: Vec<_> = frame.iter().map(|(_, fd)| fd.as_fd()).collect();
            sender.send(handoff_id, Message::Connections { entries }, &fds)?;
        }
        Ok(connections.len())
    }

    /// Closes batch `batch`; returns how many connections it held.
    pub(crate) fn close(&mut self, batch: u64) -> usize {
        self.held.remove(&batch).map_or(0, |batch| batch.len())
    }
}

/// A connection's share of a frame's payload.
fn encoded_size(connection: &(ConnectionEntry, OwnedFd)) -> usize {
    connection.0.unread.len() + connection.0.tag.len() + 16
}

/// A batch split into frames.
fn frames(connections: &[(ConnectionEntry, OwnedFd)]) -> Vec<&[(ConnectionEntry, OwnedFd)]> {
    per_frame(connections, encoded_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(unread: &[usize]) -> Vec<(ConnectionEntry, OwnedFd)> {
        unread
            .iter()
            .map(|&len| {
                let fd = OwnedFd::from(std::fs::File::open("/dev/null").expect("open"));
                let entry = ConnectionEntry {
                    tag: "http".into(),
                    unread: vec![b'x'; len],
                };
                (entry, fd)
            })
            .collect()
    }

    #[test]
    fn frames_carry_at_most_253_fds() {
        let batch = connections(&[0; 600]);
        let sizes: Vec<_> = frames(&batch).iter().map(|f| f.len()).collect();
        assert_eq!(sizes, [253, 253, 94]);
    }

    #[test]
    fn frames_keep_unread_bytes_under_the_payload_bound() {
        let batch = connections(&[60 * 1024; 20]);
        let split = frames(&batch);
        assert!(split.len() > 1, "{}", split.len());
        for frame in &split {
            let bytes: usize = frame.iter().map(|(e, _)| e.unread.len()).sum();
            assert!(bytes <= MAX_PAYLOAD / 2, "{bytes}");
        }
        let total: usize = split.iter().map(|f| f.len()).sum();
        assert_eq!(total, 20);
    }

    #[test]
    fn connections_past_the_budget_offered_are_closed() {
        let mut transit = Transit::default();
        transit.allowed.insert(7, 3);
        let (entries, fds): (Vec<_>, Vec<_>) = connections(&[0, 0]).into_iter().unzip();
        assert_eq!(transit.hold(7, entries, fds).1, 2);
        let (entries, fds): (Vec<_>, Vec<_>) = connections(&[0, 0]).into_iter().unzip();
        assert_eq!(transit.hold(7, entries, fds).1, 1, "one left of three");
        let (entries, fds): (Vec<_>, Vec<_>) = connections(&[0]).into_iter().unzip();
        assert_eq!(transit.hold(8, entries, fds).1, 0, "never offered");
    }

    #[test]
    fn a_batch_is_sent_or_closed_once() {
        let mut transit = Transit::default();
        transit.allowed.insert(1, 2);
        let batch = connections(&[0, 3]);
        let (entries, fds): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let (id, count) = transit.hold(1, entries, fds);
        assert_eq!(count, 2);
        assert_eq!(transit.close(id), 2);
        assert_eq!(transit.close(id), 0);
    }
}
