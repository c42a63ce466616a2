//! The one owner of the history while `handoffctl run` runs: the data
//! (`history::History`), its file, and the waiting. The event thread
//! records; admin threads read once the record caught up with what the
//! supervisor reports.

use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use handoff::supervisor::{Outcome, Status};

use crate::admin::wire::{AutomaticRollback, BinaryRecord, HandoffReport, HistoryEntry};
use crate::history::History;

/// The history, its file, and a condition variable for readers that must
/// see the last handoff.
#[derive(Debug)]
pub struct HistoryRecorder {
    history: Mutex<History>,
    changed: Condvar,
    file: PathBuf,
}

impl HistoryRecorder {
    /// Over a history loaded from `file`.
    pub fn new(history: History, file: PathBuf) -> HistoryRecorder {
        HistoryRecorder {
            history: Mutex::new(history),
            changed: Condvar::new(),
            file,
        }
    }

    /// Records a finished handoff. An upgrade replaced what ran before
    /// (`old_binary` is what the history said was live).
    pub fn record(
        &self,
        report: HandoffReport,
        started_unix_ms: u64,
        upgrade: bool,
        new_binary: Option<BinaryRecord>,
    ) {
        let mut history = self.lock();
        let old_binary = if upgrade { history.live.clone() } else { None };
        history.record(HistoryEntry {
            report,
            started_unix_ms,
            old_binary,
            new_binary,
            automatic_rollback: None,
        });
        self.persist(&history);
        drop(history);
        self.changed.notify_all();
    }

    /// Notes an automatic rollback on the commit it undid; false if that
    /// commit is not in the history.
    pub fn undo(
        &self,
        failed_generation: u64,
        handoff_id: u64,
        rollback: AutomaticRollback,
    ) -> bool {
        let mut history = self.lock();
        let recorded = history.undo(failed_generation, handoff_id, rollback);
        self.persist(&history);
        drop(history);
        self.changed.notify_all();
        recorded
    }

    /// The history once it holds the last finished handoff and the last
    /// automatic rollback `status` reports: the event thread records them
    /// asynchronously, so a client that just saw an upgrade end could
    /// otherwise read a history without it. Waits at most `bound`.
    pub fn current(&self, status: Option<&Status>, bound: Duration) -> MutexGuard<'_, History> {
        let last = status
            .and_then(|status| status.last_handoff.as_ref())
            .map(Outcome::handoff_id);
        let undone = status
            .and_then(|status| status.last_probation_rollback.as_ref())
            .map(|rollback| (rollback.handoff_id, rollback.failed_pid));
        let history = self.lock();
        self.changed
            .wait_timeout_while(history, bound, |history| {
                let behind = last.is_some_and(|last| history.recorded.is_none_or(|id| id < last));
                behind || (undone.is_some() && history.undone != undone)
            })
            .map_or_else(|poisoned| poisoned.into_inner().0, |(history, _)| history)
    }

    /// The history as it is now (for a re-exec to carry).
    pub fn lock(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the file; a failure is logged, never fatal. Called with the
    /// history locked, so saves never interleave and a `history` answer
    /// never shows an entry that is not on disk yet.
    fn persist(&self, history: &History) {
        let bytes = match history.to_file_bytes() {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(
                    file = %self.file.display(),
                    %error,
                    "not writing the history file; the history is kept in memory"
                );
                return;
            }
        };
        if let Err(error) = crate::history::save(&self.file, &bytes) {
            tracing::warn!(
                file = %self.file.display(),
                %error,
                "cannot write the history file; the history is kept in memory"
            );
        }
    }
}
