//! A supervisor that dies (`kill -9`, a crash) leaves its generation
//! serving, unsupervised. Started again with the same configuration,
//! `handoffctl run` takes it back instead of binding (which would fail:
//! the orphan holds the addresses). Three pieces, each beside the admin
//! socket:
//!
//! - **The lock** (`<socket>.lock`, `flock`, held for the supervisor's
//!   whole life and across its re-execs): one supervisor per admin socket,
//!   so two started at once never both adopt one orphan, and a live
//!   supervisor's generation is never adopted by another.
//! - **The record** (`<socket>.generation.json`, replaced atomically after
//!   every handoff and restart): which generation serves (number, pid and
//!   its start time, so a reused pid is not mistaken for it), what it runs,
//!   its protocol, its rendezvous, its listeners, the next handoff id, and
//!   a successor in flight (killed on adoption: it never committed).
//!   Removed when the supervisor stops cleanly.
//! - **The claim**, by protocol (`handoff::supervisor::adopt`): a library
//!   daemon at its rendezvous socket, a foreign one by copying its
//!   listeners out of it (`pidfd_getfd`).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use handoff::protocol::Build;
use handoff::supervisor::{Adoption, DaemonProtocol, Orphan, Status};

use crate::error::{Failure, chain};

/// How long a library orphan has to open its rendezvous.
pub const RENDEZVOUS_WAIT: Duration = Duration::from_secs(5);

/// The record's format.
const RECORD_VERSION: u32 = 1;

/// `<socket>.EXTENSION`.
fn beside(socket: &Path, extension: &str) -> PathBuf {
    socket.with_extension(extension)
}

/// The rendezvous prefix for a supervisor at `socket` (generation N adds
/// `.genN`).
pub fn rendezvous_prefix(socket: &Path) -> PathBuf {
    beside(socket, "adopt")
}

/// The supervisor's lock: held while it lives.
#[derive(Debug)]
pub struct SupervisorLock {
    file: File,
}

impl SupervisorLock {
    /// Takes the lock of the admin socket `socket`, or says who holds it.
    pub fn take(socket: &Path) -> Result<SupervisorLock, Failure> {
        let path = beside(socket, "lock");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir);
        }
        let shown = path.display();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Failure::failed(format!("supervisor lock {shown}: {e}")))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Failure::failed(format!(
                    "another supervisor{} runs with the admin socket {}: stop it \
                     (handoffctl stop --socket {}) or give this one another --socket",
                    if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {holder})")
                    },
                    socket.display(),
                    socket.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Failure::failed(format!("supervisor lock {shown}: {e}")));
            }
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        if let Err(e) = written {
            tracing::warn!(file = %shown, error = %e, "cannot write our pid into the lock file");
        }
        Ok(SupervisorLock { file })
    }

    /// The lock a re-exec carried (an fd of the same open file: the lock
    /// is the open file's).
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> SupervisorLock {
        SupervisorLock {
            file: File::from(fd),
        }
    }

    /// Its fd, for a re-exec to carry.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.file)
    }
}

/// The record of the generation that serves.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    version: u32,
    /// The supervisor that wrote it.
    pub supervisor_pid: u32,
    /// The serving generation's number.
    pub generation: u64,
    /// Its pid.
    pub pid: u32,
    /// Its start time (clock ticks since boot).
    pub start_time: u64,
    /// `library` or `systemd`.
    pub protocol: String,
    /// What it runs.
    pub build: Build,
    /// Where it waits to be adopted (a library daemon).
    pub rendezvous: Option<PathBuf>,
    /// Its listeners, `(name, address)`, in the order it got them.
    pub listeners: Vec<(String, String)>,
    /// The next handoff id.
    pub next_handoff_id: u64,
    /// A successor in flight: its pid and start time.
    pub successor: Option<(u32, u64)>,
}

impl Record {
    /// The record of what `status` reports (None while nobody serves).
    pub fn of(
        status: &Status,
        protocol: DaemonProtocol,
        args: &[std::ffi::OsString],
        rendezvous: &Path,
        successor: Option<u32>,
    ) -> Option<Record> {
        let pid = status.child_pid?;
        let start_time = handoff::supervisor::start_time(pid).ok()?;
        let library = matches!(protocol, DaemonProtocol::Library);
        let mut path = rendezvous.as_os_str().to_owned();
        path.push(format!(".gen{}", status.generation));
        Some(Record {
            version: RECORD_VERSION,
            supervisor_pid: std::process::id(),
            generation: status.generation,
            pid,
            start_time,
            protocol: if library { "library" } else { "systemd" }.to_owned(),
            build: Build {
                program: status.program.clone(),
                args: args.to_vec(),
                sha256: None,
            },
            rendezvous: library.then(|| PathBuf::from(path)),
            listeners: status.listeners.clone(),
            next_handoff_id: status
                .last_handoff
                .as_ref()
                .map_or(1, |last| last.handoff_id() + 1),
            // A cold start's or restart's new generation is the one that
            // serves once it commits, never a successor to kill.
            successor: successor
                .filter(|&successor| successor != pid)
                .and_then(|pid| Some((pid, handoff::supervisor::start_time(pid).ok()?))),
        })
    }

    /// The record beside `socket`, if one is there and readable.
    pub fn load(socket: &Path) -> Option<Record> {
        let path = beside(socket, "generation.json");
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(record) if record.version == RECORD_VERSION => Some(record),
            Ok(record) => {
                tracing::warn!(file = %path.display(), version = record.version, "a generation record of another version: ignored");
                None
            }
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "an unreadable generation record: ignored");
                None
            }
        }
    }

    /// Writes it beside `socket` (atomically and durably).
    pub fn save(&self, socket: &Path) {
        let path = beside(socket, "generation.json");
        let written = serde_json::to_vec_pretty(self)
            .map_err(|e| e.to_string())
            .and_then(|bytes| crate::history::save(&path, &bytes).map_err(|e| e.to_string()));
        if let Err(error) = written {
            tracing::warn!(file = %path.display(), %error, "cannot write the generation record: a crash now could not be recovered by adoption");
        }
    }

    /// Removes the record beside `socket` (a clean end: nothing to adopt).
    pub fn remove(socket: &Path) {
        let _ = std::fs::remove_file(beside(socket, "generation.json"));
    }

    /// Whether the process it names still runs (same pid, same start).
    pub fn alive(&self) -> bool {
        handoff::supervisor::start_time(self.pid).ok() == Some(self.start_time)
    }

    /// Claims the orphan it names, and kills a successor that was in
    /// flight (it never committed).
    pub fn claim(&self) -> Result<Adoption, Failure> {
        if let Some((pid, started)) = self.successor
            && pid != self.pid
            && handoff::supervisor::start_time(pid).ok() == Some(started)
        {
            tracing::warn!(
                pid,
                "killing the successor the dead supervisor had in flight"
            );
            let _ = handoff::os::signal(pid, handoff::os::Sig::Kill);
        }
        let refused = |e: handoff::Error| {
            Failure::failed(format!(
                "cannot adopt generation {} (pid {}) of a previous supervisor: {}; stop it \
                 (kill {}) to start afresh",
                self.generation,
                self.pid,
                chain(&e),
                self.pid
            ))
        };
        let orphan = match &self.rendezvous {
            Some(path) => Orphan::Library(
                handoff::rendezvous::claim(path, self.generation, self.pid, RENDEZVOUS_WAIT)
                    .map_err(refused)?,
            ),
            None => Orphan::Foreign(
                handoff::supervisor::claim_foreign(self.pid, self.start_time, &self.listeners)
                    .map_err(refused)?,
            ),
        };
        Ok(Adoption {
            generation: self.generation,
            build: self.build.clone(),
            next_handoff_id: self.next_handoff_id,
            orphan,
        })
    }
}

/// Keeps the record current: written whenever what it says changes.
#[derive(Debug)]
pub struct RecordWriter {
    socket: PathBuf,
    protocol: DaemonProtocol,
    args: Vec<std::ffi::OsString>,
    last: Option<Record>,
    /// A successor in flight.
    successor: Option<u32>,
}

impl RecordWriter {
    /// For the supervisor at `socket`.
    pub fn new(socket: PathBuf, protocol: DaemonProtocol, args: Vec<std::ffi::OsString>) -> Self {
        RecordWriter {
            socket,
            protocol,
            args,
            last: None,
            successor: None,
        }
    }

    /// A handoff started (`Some(successor)`) or ended (`None`).
    pub fn in_flight(&mut self, successor: Option<u32>) {
        self.successor = successor;
    }

    /// Writes the record of `status` if it changed.
    pub fn update(&mut self, status: &Status) {
        let rendezvous = rendezvous_prefix(&self.socket);
        let Some(record) = Record::of(
            status,
            self.protocol,
            &self.args,
            &rendezvous,
            self.successor,
        ) else {
            return;
        };
        if self.last.as_ref() != Some(&record) {
            record.save(&self.socket);
            self.last = Some(record);
        }
    }
}

/// Reads the record at start: the orphan to adopt, if one still serves.
pub fn orphan_to_adopt(socket: &Path) -> Option<Record> {
    let record = Record::load(socket)?;
    if record.alive() {
        return Some(record);
    }
    tracing::info!(
        generation = record.generation,
        pid = record.pid,
        "the previous supervisor's generation is gone: starting afresh"
    );
    Record::remove(socket);
    None
}

/// Reads what a file holds, for tests of the lock.
#[cfg(test)]
fn contents(path: &Path) -> String {
    let mut text = String::new();
    let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_supervisor_per_socket() {
        let dir = std::env::temp_dir().join(format!("handoff-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let socket = dir.join("admin.sock");
        let first = SupervisorLock::take(&socket).expect("first");
        assert_eq!(
            contents(&dir.join("admin.lock")).trim(),
            std::process::id().to_string()
        );
        let second = SupervisorLock::take(&socket).expect_err("second");
        assert!(
            second.message.contains("another supervisor"),
            "{}",
            second.message
        );
        assert!(second.message.contains(&std::process::id().to_string()));
        drop(first);
        SupervisorLock::take(&socket).expect("free again");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
