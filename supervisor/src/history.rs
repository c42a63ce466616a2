//! What `history` and `rollback` read, and its file.
//!
//! The record lives in `handoffctl`, not in the library: the binaries are
//! identified by reading `/proc/PID/exe` of each successor right after it
//! was spawned, on the event thread, so hashing never delays the supervisor
//! loop. It is kept in memory and, when a history file is configured,
//! persisted after every change so that a restarted supervisor knows what
//! ran before it (and `rollback` can return to it).
//!
//! Hazards the file handles (invariant I15 in ARCHITECTURE.md):
//! - **Torn writes.** The file is replaced, never rewritten in place: the
//!   new content goes to a temporary file in the same directory, is
//!   fsynced, renamed over the old one, and the directory is fsynced, so a
//!   crash or power loss leaves the old file or the new one, whole.
//! - **A bad file must not stop the supervisor.** A file that cannot be
//!   read, does not parse or has another version gives a warning and an
//!   empty history; one that does not parse is moved aside to
//!   `FILE.corrupt` first, so the next save does not destroy the evidence.
//!   A file that exists but cannot be read (permissions after a change of
//!   user, an I/O error) is never written over: saving is off for the run
//!   ([`History::read_only`]). A failed save is a warning too: the daemon
//!   matters more than its record.
//! - **Paths that are not UTF-8.** JSON cannot hold them; serializing such
//!   an entry fails, and the save is skipped with a warning rather than
//!   replacing the file with an empty one ([`History::to_file_bytes`]).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::admin::wire::{BinaryRecord, HISTORY_LEN, HistoryEntry};

/// The file format's version; a file with another one is not read.
pub const HISTORY_VERSION: u32 = 1;

/// The last handoffs and what the live generation runs (carried whole
/// across a re-exec).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct History {
    /// Oldest first, at most [`HISTORY_LEN`]; loaded entries come first.
    pub entries: VecDeque<HistoryEntry>,
    /// What the live generation runs.
    pub live: Option<BinaryRecord>,
    /// The handoff id this process recorded last (a loaded entry's id says
    /// nothing about now: it may be an earlier supervisor's last).
    pub recorded: Option<u64>,
    /// How many of the oldest entries were loaded from the file (the
    /// others were recorded by this process).
    pub loaded: usize,
    /// The last automatic rollback this process noted: the undone handoff's
    /// id and the failed pid.
    pub undone: Option<(u64, u32)>,
    /// Why the file must not be written this run (it exists but could not
    /// be read: writing would destroy what it holds).
    pub read_only: Option<String>,
}

/// The file as written.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct HistoryFile {
    version: u32,
    entries: Vec<HistoryEntry>,
}

impl History {
    /// The id after every one the history holds (1 for none): where a
    /// supervisor started again numbers its handoffs from.
    pub fn next_handoff_id(&self) -> u64 {
        self.entries
            .iter()
            .map(|entry| entry.report.handoff_id + 1)
            .max()
            .unwrap_or(1)
    }

    /// Records a finished handoff.
    pub fn record(&mut self, entry: HistoryEntry) {
        if entry.report.committed {
            self.live = entry.new_binary.clone();
        }
        self.recorded = Some(entry.report.handoff_id);
        if self.entries.len() == HISTORY_LEN {
            // The oldest goes, unless a rollback needs it (restarts and
            // failed upgrades must not push the last commit out).
            let drop = usize::from(self.rollback_source() == Some(0));
            self.entries.remove(drop);
            if drop < self.loaded {
                self.loaded -= 1;
            }
        }
        self.entries.push_back(entry);
    }

    /// The index of the entry [`History::rollback_target`] comes from.
    fn rollback_source(&self) -> Option<usize> {
        self.entries.iter().rposition(|entry| {
            entry.report.committed
                && entry
                    .old_binary
                    .as_ref()
                    .is_some_and(|old| Some(old) != self.live.as_ref())
        })
    }

    /// Notes an automatic rollback in probation on the commit it undid (the
    /// newest committed entry of this process that made `failed_generation`
    /// live); the live binary is that entry's old one again. Returns false
    /// if no such entry is found.
    pub fn undo(
        &mut self,
        failed_generation: u64,
        handoff_id: u64,
        rollback: crate::admin::wire::AutomaticRollback,
    ) -> bool {
        self.undone = Some((handoff_id, rollback.failed_pid));
        let Some(entry) = self
            .entries
            .iter_mut()
            .skip(self.loaded)
            .rev()
            .find(|entry| entry.report.committed && entry.report.generation == failed_generation)
        else {
            return false;
        };
        self.live = entry.old_binary.clone();
        entry.automatic_rollback = Some(rollback);
        true
    }

    /// The binary to roll back to: the newest binary, other than the one
    /// running now, that a commit replaced. Cold starts and restarts
    /// replaced nothing and are skipped, so after a supervisor restart the
    /// record loaded from the file still names the binary that ran before
    /// the last upgrade.
    pub fn rollback_target(&self) -> Option<&BinaryRecord> {
        let source = self.entries.get(self.rollback_source()?)?;
        source.old_binary.as_ref()
    }

    /// The bytes [`save`] writes: the file format of the current entries;
    /// `Err` if they cannot be written (saving is off, or an entry does not
    /// serialize: a path that is not UTF-8).
    pub fn to_file_bytes(&self) -> Result<Vec<u8>, String> {
        if let Some(why) = &self.read_only {
            return Err(why.clone());
        }
        let file = HistoryFile {
            version: HISTORY_VERSION,
            entries: self.entries.iter().cloned().collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// Reads the history file. Never fails: a missing file is an empty
/// history; any other problem is an empty history and a warning to log
/// (the file moved aside to `FILE.corrupt` if it did not parse; left alone
/// and never written this run if it could not be read).
pub fn load(path: &Path) -> (History, Option<String>) {
    load_from(path, std::fs::read(path))
}

/// [`load`] with the read done by the caller (tests inject read errors).
fn load_from(path: &Path, read: std::io::Result<Vec<u8>>) -> (History, Option<String>) {
    let shown = path.display();
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return (History::default(), None);
        }
        Err(error) => {
            let why = format!("history file {shown} cannot be read ({error})");
            let warning =
                format!("{why}: starting with an empty history and leaving the file as it is");
            let history = History {
                read_only: Some(why),
                ..History::default()
            };
            return (history, Some(warning));
        }
    };
    let problem = match serde_json::from_slice::<HistoryFile>(&bytes) {
        Ok(file) if file.version == HISTORY_VERSION => {
            let skip = file.entries.len().saturating_sub(HISTORY_LEN);
            let entries: VecDeque<_> = file.entries.into_iter().skip(skip).collect();
            let history = History {
                loaded: entries.len(),
                entries,
                ..History::default()
            };
            return (history, None);
        }
        Ok(file) => format!(
            "has version {}, this handoffctl reads version {HISTORY_VERSION}",
            file.version
        ),
        Err(error) => format!("is corrupt ({error})"),
    };
    let aside = corrupt_path(path);
    let moved = match std::fs::rename(path, &aside) {
        Ok(()) => format!("moved to {}", aside.display()),
        Err(error) => format!("could not be moved aside: {error}"),
    };
    (
        History::default(),
        Some(format!(
            "history file {shown} {problem}: starting with an empty history; the file {moved}"
        )),
    )
}

/// `FILE.corrupt`.
fn corrupt_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".corrupt");
    path.with_file_name(name)
}

/// How a replaced file must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A power loss too (the history): fsynced.
    PowerLoss,
    /// Only a crash of this process (the generation record, which names
    /// processes a reboot ends anyway): the rename's atomicity is enough,
    /// and no fsync stalls the daemons' own on a journaling filesystem
    /// while a handoff runs.
    ProcessCrash,
}

/// Replaces `path` with `bytes` atomically and durably: a temporary file in
/// the same directory (mode 0600), fsynced, renamed over `path`, then the
/// directory fsynced. The directory is created (0700) if missing.
pub fn save(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, Durability::PowerLoss)
}

/// [`save`] with the fsyncs `durability` asks for.
pub fn replace(path: &Path, bytes: &[u8], durability: Durability) -> std::io::Result<()> {
    let synced = durability == Durability::PowerLoss;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // A name no other writer uses (two supervisors can both be pid 1, in
    // containers), created exclusively: an existing file or a symlink
    // planted there is an error, never followed or overwritten.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".tmp-{}-{nanos}", std::process::id()));
    let temporary = dir.join(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)?;
    let written = (|| {
        file.write_all(bytes)?;
        if synced {
            file.sync_all()?;
        }
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    if synced {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::wire::{AutomaticRollback, HandoffReport};
    use testkit::TempDir;

    fn entry(id: u64, committed: bool, old: Option<&str>, new: &str) -> HistoryEntry {
        let record = |path: &str| BinaryRecord {
            path: path.into(),
            sha256: "00".repeat(32),
        };
        HistoryEntry {
            report: HandoffReport {
                serving: true,
                incumbent_stopped: None,
                cancelled: false,
                handoff_id: id,
                committed,
                abort_reason: None,
                old_pid: None,
                new_pid: None,
                generation: id,
                phases_ms: Default::default(),
                total_ms: 0.0,
            },
            started_unix_ms: id,
            old_binary: old.map(record),
            new_binary: Some(record(new)),
            automatic_rollback: None,
        }
    }

    fn path_of(record: Option<&BinaryRecord>) -> Option<PathBuf> {
        record.map(|b| b.path.clone())
    }

    #[test]
    fn handoff_ids_go_on_past_the_history() {
        let mut history = History::default();
        assert_eq!(history.next_handoff_id(), 1);
        history.record(entry(4, true, None, "/a"));
        history.record(entry(2, true, Some("/a"), "/b"));
        assert_eq!(history.next_handoff_id(), 5);
    }

    #[test]
    fn history_is_bounded_and_rolls_back_past_the_last_commit() {
        let mut history = History::default();
        assert_eq!(history.rollback_target(), None);
        history.record(entry(1, true, None, "/v1"));
        assert_eq!(
            history.rollback_target(),
            None,
            "a cold start has no predecessor"
        );
        history.record(entry(2, true, Some("/v1"), "/v2"));
        history.record(entry(3, false, Some("/v2"), "/v3"));
        assert_eq!(path_of(history.rollback_target()), Some("/v1".into()));
        assert_eq!(path_of(history.live.as_ref()), Some("/v2".into()));
        for id in 4..100 {
            history.record(entry(id, false, Some("/v2"), "/vx"));
        }
        assert_eq!(history.entries.len(), HISTORY_LEN);
        // The commit the rollback goes back past stays; the rest are the
        // newest.
        let ids: Vec<u64> = history
            .entries
            .iter()
            .map(|e| e.report.handoff_id)
            .collect();
        assert_eq!(ids[0], 2, "{ids:?}");
        assert_eq!(ids[1], 100 - HISTORY_LEN as u64 + 1, "{ids:?}");
        assert_eq!(path_of(history.rollback_target()), Some("/v1".into()));
    }

    #[test]
    fn restarts_do_not_push_the_last_commit_out() {
        let mut history = History::default();
        history.record(entry(1, true, None, "/v1"));
        history.record(entry(2, true, Some("/v1"), "/v2"));
        // A daemon that crashes now and then: each restart is an entry.
        for id in 3..200 {
            history.record(entry(id, true, None, "/v2"));
        }
        assert_eq!(history.entries.len(), HISTORY_LEN);
        assert_eq!(path_of(history.rollback_target()), Some("/v1".into()));
    }

    #[test]
    fn a_restart_keeps_the_rollback_target_and_skips_the_running_binary() {
        let dir = TempDir::new("restart");
        let file = dir.path().join("history.json");
        let mut history = History::default();
        history.record(entry(1, true, None, "/v1"));
        history.record(entry(2, true, Some("/v1"), "/v2"));
        save(&file, &history.to_file_bytes().expect("bytes")).expect("save");

        // The supervisor restarts on v2: its cold start replaced nothing.
        let (mut loaded, warning) = load(&file);
        assert_eq!(warning, None);
        assert_eq!(loaded.entries.len(), 2);
        assert_eq!(loaded.recorded, None);
        loaded.record(entry(1, true, None, "/v2"));
        assert_eq!(path_of(loaded.rollback_target()), Some("/v1".into()));

        // Restarted on v1 instead: v1 runs, nothing older differs from it.
        let (mut loaded, _) = load(&file);
        loaded.record(entry(1, true, None, "/v1"));
        assert_eq!(loaded.rollback_target(), None);
    }

    #[test]
    fn an_automatic_rollback_marks_the_commit_of_this_run_it_undid() {
        let mut history = History::default();
        // A loaded entry with the same generation number must not match.
        history
            .entries
            .push_back(entry(2, true, Some("/old"), "/loaded"));
        history.loaded = 1;
        history.record(entry(1, true, None, "/v1"));
        history.record(entry(2, true, Some("/v1"), "/v2"));
        let rollback = AutomaticRollback {
            at_unix_ms: 5,
            resumed_generation: 1,
            resumed_pid: 10,
            failed_generation: 2,
            failed_pid: 11,
            reason: "exited (killed by signal 9)".into(),
        };
        assert!(history.undo(2, 2, rollback.clone()));
        assert_eq!(history.undone, Some((2, 11)));
        assert_eq!(
            history.entries[2].automatic_rollback,
            Some(rollback.clone())
        );
        assert_eq!(history.entries[0].automatic_rollback, None);
        assert_eq!(path_of(history.live.as_ref()), Some("/v1".into()));
        assert!(history.entries[2].line().contains("automatic rollback"));
        assert!(!history.undo(7, 7, rollback), "no such commit");
    }

    #[test]
    fn saving_replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = TempDir::new("save");
        let file = dir.path().join("sub").join("history.json");
        let mut history = History::default();
        history.record(entry(1, true, None, "/v1"));
        save(&file, &history.to_file_bytes().expect("bytes")).expect("first save");
        history.record(entry(2, true, Some("/v1"), "/v2"));
        save(&file, &history.to_file_bytes().expect("bytes")).expect("second save");
        let (loaded, warning) = load(&file);
        assert_eq!(warning, None);
        assert_eq!(loaded.entries, history.entries);
        let names: Vec<_> = std::fs::read_dir(file.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["history.json"], "no temporary left behind");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_missing_file_is_an_empty_history_without_a_warning() {
        let dir = TempDir::new("missing");
        let (history, warning) = load(&dir.path().join("none.json"));
        assert!(history.entries.is_empty());
        assert_eq!(warning, None);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_with_a_warning() {
        let dir = TempDir::new("corrupt");
        let file = dir.path().join("history.json");
        std::fs::write(&file, b"{\"version\":1,\"entries\":[{\"handoff_").expect("write");
        let (history, warning) = load(&file);
        assert!(history.entries.is_empty());
        let warning = warning.expect("a warning");
        assert!(warning.contains("is corrupt"), "{warning}");
        assert!(warning.contains("history.json.corrupt"), "{warning}");
        assert!(!file.exists());
        assert!(dir.path().join("history.json.corrupt").exists());
    }

    #[test]
    fn another_version_or_an_unreadable_file_gives_a_warning() {
        let dir = TempDir::new("version");
        let file = dir.path().join("history.json");
        std::fs::write(&file, b"{\"version\":99,\"entries\":[]}").expect("write");
        let (history, warning) = load(&file);
        assert!(history.entries.is_empty());
        let warning = warning.expect("a warning");
        assert!(warning.contains("version 99"), "{warning}");

        // A directory where the file should be: unreadable (root reads any
        // file, so permissions cannot make one unreadable here).
        let file = dir.path().join("a-directory");
        std::fs::create_dir(&file).expect("dir");
        let (history, warning) = load(&file);
        assert!(history.entries.is_empty());
        assert!(
            warning.expect("a warning").contains("cannot be read"),
            "unreadable"
        );
        assert!(save(&file, b"{}").is_err(), "cannot replace a directory");
    }

    #[test]
    fn a_file_that_cannot_be_read_is_never_written_over() {
        let dir = TempDir::new("unreadable");
        let file = dir.path().join("history.json");
        let mut before = History::default();
        before.record(entry(1, true, Some("/opt/d/1"), "/opt/d/2"));
        let bytes = before.to_file_bytes().expect("bytes");
        save(&file, &bytes).expect("save");
        // As after a change of user: the file is there, the read is refused
        // (root reads any file, so the error is injected).
        let refused = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let (mut history, warning) = load_from(&file, Err(refused));
        let warning = warning.expect("a warning");
        assert!(warning.contains("leaving the file as it is"), "{warning}");
        assert!(history.entries.is_empty());
        history.record(entry(1, true, Some("/opt/d/2"), "/opt/d/3"));
        let error = history.to_file_bytes().expect_err("saving is off");
        assert!(error.contains("cannot be read"), "{error}");
        assert_eq!(std::fs::read(&file).expect("read"), bytes, "untouched");
        assert!(!corrupt_path(&file).exists());
    }

    #[test]
    fn a_path_that_is_not_utf8_skips_the_save_instead_of_emptying_the_file() {
        use std::os::unix::ffi::OsStrExt;
        let mut history = History::default();
        history.record(entry(1, true, Some("/opt/d/1"), "/opt/d/2"));
        let mut odd = entry(2, true, Some("/opt/d/2"), "/opt/d/3");
        odd.new_binary = Some(BinaryRecord {
            path: std::ffi::OsStr::from_bytes(b"/opt/d/\xff").into(),
            sha256: "00".repeat(32),
        });
        history.record(odd);
        let error = history.to_file_bytes().expect_err("not JSON");
        assert!(error.contains("UTF-8"), "{error}");
    }

    #[test]
    fn a_long_file_is_cut_to_the_newest_entries() {
        let dir = TempDir::new("long");
        let file = dir.path().join("history.json");
        let entries: Vec<_> = (1..=40).map(|id| entry(id, true, None, "/v")).collect();
        let bytes = serde_json::to_vec(&HistoryFile {
            version: HISTORY_VERSION,
            entries,
        })
        .expect("encode");
        std::fs::write(&file, bytes).expect("write");
        let (history, warning) = load(&file);
        assert_eq!(warning, None);
        assert_eq!(history.entries.len(), HISTORY_LEN);
        assert_eq!(
            history.entries.front().map(|e| e.report.handoff_id),
            Some(40 - HISTORY_LEN as u64 + 1)
        );
    }
}
