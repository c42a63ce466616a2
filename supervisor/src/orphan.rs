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
//!   its protocol, its rendezvous, its listeners, the next handoff id, a
//!   successor in flight (killed on adoption: it never committed), and the
//!   old generations being retired (stopped on adoption, with SIGTERM).
//!   Removed when the supervisor stops cleanly.
//! - **The claim**, by protocol (`handoff::supervisor::adopt`): a library
//!   daemon at its rendezvous socket, a foreign one by copying its
//!   listeners out of it (`pidfd_getfd`).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use handoff::os::PinnedProcess;
use handoff::protocol::Build;
use handoff::supervisor::{Adoption, DaemonProtocol, Orphan, Status};

use crate::error::{Failure, chain};

/// The record's format.
const RECORD_VERSION: u32 = 2;

/// `<socket>.SUFFIX`: the admin socket's whole name, then the suffix (two
/// sockets that differ only in their extension get files of their own).
fn beside(socket: &Path, suffix: &str) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
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
        let mut file = handoff::os::open_private_file(&path)
            .map_err(|e| Failure::failed(format!("supervisor lock {shown}: {}", chain(&e))))?;
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

/// A generation the record names: its number, pid and start time (clock
/// ticks since boot: a reused pid has another one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recorded {
    /// Its number.
    pub generation: u64,
    /// Its pid.
    pub pid: u32,
    /// When it started.
    pub start_time: u64,
}

impl Recorded {
    fn of(generation: u64, pid: u32) -> Option<Recorded> {
        Some(Recorded {
            generation,
            pid,
            start_time: handoff::supervisor::start_time(pid).ok()?,
        })
    }

    /// Whether it still runs (same pid, same start).
    pub fn alive(&self) -> bool {
        handoff::supervisor::start_time(self.pid).ok() == Some(self.start_time)
    }
}

/// The record of the generations a supervisor runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    version: u32,
    /// The supervisor that wrote it.
    pub supervisor_pid: u32,
    /// The generation that serves (none during a start or a restart).
    pub live: Option<Recorded>,
    /// The new generation of the handoff in flight (not known to have
    /// committed yet).
    pub successor: Option<Recorded>,
    /// Old generations being retired (draining, in probation): a
    /// supervisor that adopts the live one stops them.
    #[serde(default)]
    pub retirees: Vec<Recorded>,
    /// `library` or `systemd`.
    pub protocol: String,
    /// What the live generation runs.
    pub build: Build,
    /// Where a library generation N waits to be adopted: this, then `.genN`.
    pub rendezvous: Option<PathBuf>,
    /// The listeners, `(name, address)`, in the order generations get them.
    pub listeners: Vec<(String, String)>,
    /// The next handoff id.
    pub next_handoff_id: u64,
}

impl Record {
    /// The record of what `status` reports, with the handoff in flight
    /// (its generation number and pid); `None` when it names nobody.
    pub fn of(
        status: &Status,
        protocol: DaemonProtocol,
        args: &[std::ffi::OsString],
        rendezvous: &Path,
        in_flight: Option<(u64, u32)>,
    ) -> Option<Record> {
        let live = status
            .child_pid
            .and_then(|pid| Recorded::of(status.generation, pid));
        // Once committed, a handoff's generation is the live one.
        let successor = in_flight
            .filter(|&(_, pid)| Some(pid) != status.child_pid)
            .and_then(|(generation, pid)| Recorded::of(generation, pid));
        if live.is_none() && successor.is_none() {
            return None;
        }
        let library = matches!(protocol, DaemonProtocol::Library);
        let retirees = status
            .retirees
            .iter()
            .filter_map(|retiree| Recorded::of(retiree.generation, retiree.pid))
            .collect();
        Some(Record {
            version: RECORD_VERSION,
            supervisor_pid: std::process::id(),
            live,
            successor,
            retirees,
            protocol: if library { "library" } else { "systemd" }.to_owned(),
            build: Build {
                program: status.program.clone(),
                args: args.to_vec(),
                sha256: None,
            },
            rendezvous: library.then(|| rendezvous.to_owned()),
            listeners: status.listeners.clone(),
            next_handoff_id: status
                .last_handoff
                .as_ref()
                .map_or(1, |last| last.handoff_id() + 1),
        })
    }

    /// The record beside `socket`, if one is there, readable, and written
    /// by our uid (or root): it names a process to adopt or kill.
    pub fn load(socket: &Path) -> Option<Record> {
        use std::os::unix::fs::MetadataExt;
        let path = beside(socket, "generation.json");
        let meta = std::fs::symlink_metadata(&path).ok()?;
        let uid = handoff::os::effective_uid();
        if !meta.is_file() || (meta.uid() != uid && meta.uid() != 0) {
            tracing::warn!(file = %path.display(), owner = meta.uid(), "a generation record not written by us: ignored");
            return None;
        }
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
            .and_then(|bytes| {
                let durability = crate::history::Durability::ProcessCrash;
                crate::history::replace(&path, &bytes, durability).map_err(|e| e.to_string())
            });
        if let Err(error) = written {
            tracing::warn!(file = %path.display(), %error, "cannot write the generation record: a crash now could not be recovered by adoption");
        }
    }

    /// Removes the record beside `socket` (a clean end: nothing to adopt).
    pub fn remove(socket: &Path) {
        let _ = std::fs::remove_file(beside(socket, "generation.json"));
    }

    /// The generations it names that still run: the live one, and the
    /// successor in flight.
    fn running(&self) -> (Option<Recorded>, Option<Recorded>) {
        let live = self.live.filter(Recorded::alive);
        let successor = self
            .successor
            .filter(Recorded::alive)
            .filter(|s| live.is_none_or(|l| l.pid != s.pid));
        (live, successor)
    }

    /// Whether any generation it names still runs.
    pub fn alive(&self) -> bool {
        let (live, successor) = self.running();
        live.is_some() || successor.is_some()
    }

    /// Claims the orphan: which one, by protocol. A library successor that
    /// still runs committed (an uncommitted one dies with its supervisor)
    /// and waits at its rendezvous: it is adopted, and the old generation,
    /// if it resumed on its own, is stopped. A foreign successor never said
    /// it was ready: the live generation is adopted and the successor
    /// killed, unless only the successor is left (its incumbent was
    /// stopped at the commit).
    pub fn claim(&self, timeouts: &handoff::Timeouts) -> Result<(Adoption, Recorded), Failure> {
        let (live, successor) = self.running();
        let (chosen, other) = match (&self.rendezvous, live, successor) {
            (Some(_), live, Some(successor)) => (successor, live),
            (None, Some(live), successor) => (live, successor),
            (_, Some(live), None) => (live, None),
            (_, None, Some(successor)) => (successor, None),
            (_, None, None) => {
                return Err(Failure::failed(
                    "the previous supervisor's generations are gone".to_owned(),
                ));
            }
        };
        let adoption = self.claim_one(chosen, timeouts.socket_write);
        if adoption.is_ok() {
            let mut stopped = Vec::new();
            if let Some(other) = other {
                let signal = match self.rendezvous {
                    Some(_) => handoff::os::Sig::Term,
                    None => handoff::os::Sig::Kill,
                };
                stopped.extend(stop_left(
                    other,
                    signal,
                    "the other generation of its handoff",
                ));
            }
            // Unsupervised, an old overlap generation would serve on beside
            // the adopted one: it gets the stop signal a retiree gets.
            let left = |r: &&Recorded| r.pid != chosen.pid;
            for retiree in self.retirees.iter().filter(left) {
                let retiring = "an old generation it was retiring";
                stopped.extend(stop_left(*retiree, handoff::os::Sig::Term, retiring));
            }
            // And, as a retiree, a drain and `kill_grace` to exit in.
            kill_past(stopped, timeouts.drain_grace + timeouts.kill_grace);
        }
        adoption.map(|adoption| (adoption, chosen))
    }

    fn claim_one(&self, orphan: Recorded, write_timeout: Duration) -> Result<Adoption, Failure> {
        let refused = |e: handoff::Error| {
            Failure::failed(format!(
                "cannot adopt generation {} (pid {}) of a previous supervisor: {}; stop it \
                 (kill {}) to start afresh",
                orphan.generation,
                orphan.pid,
                chain(&e),
                orphan.pid
            ))
        };
        let orphan_claim = match &self.rendezvous {
            Some(prefix) => {
                let mut path = prefix.as_os_str().to_owned();
                path.push(format!(".gen{}", orphan.generation));
                Orphan::Library(
                    handoff::rendezvous::claim(
                        &PathBuf::from(path),
                        orphan.generation,
                        (orphan.pid, orphan.start_time),
                        write_timeout,
                    )
                    .map_err(refused)?,
                )
            }
            None => Orphan::Foreign(
                handoff::supervisor::claim_foreign(orphan.pid, orphan.start_time, &self.listeners)
                    .map_err(refused)?,
            ),
        };
        let named = self
            .live
            .iter()
            .chain(&self.successor)
            .chain(&self.retirees);
        Ok(Adoption {
            generation: orphan.generation,
            build: self.build.clone(),
            next_handoff_id: self.next_handoff_id,
            next_generation: named.map(|r| r.generation + 1).max().unwrap_or(0),
            orphan: orphan_claim,
        })
    }
}

/// Signals `generation`, which the dead supervisor left, with a log line
/// saying `what` it was.
fn stop_left(generation: Recorded, signal: handoff::os::Sig, what: &str) -> Option<PinnedProcess> {
    // Through a pidfd checked against the recorded start: a pid reused
    // since by another process never gets the signal.
    let pinned = PinnedProcess::open(generation.pid, generation.start_time)?;
    tracing::warn!(
        generation = generation.generation,
        pid = generation.pid,
        ?signal,
        "stopping {what}, left by the dead supervisor"
    );
    if let Err(error) = pinned.signal(signal) {
        tracing::warn!(pid = generation.pid, %error, "signalling it failed");
    }
    Some(pinned)
}

/// Keeps the record current: written whenever what it says changes.
#[derive(Debug)]
pub struct RecordWriter {
    socket: PathBuf,
    protocol: DaemonProtocol,
    args: Vec<std::ffi::OsString>,
    last: Option<Record>,
    /// The handoff in flight: its generation and pid.
    in_flight: Option<(u64, u32)>,
}

impl RecordWriter {
    /// For the supervisor at `socket`.
    pub fn new(socket: PathBuf, protocol: DaemonProtocol, args: Vec<std::ffi::OsString>) -> Self {
        RecordWriter {
            socket,
            protocol,
            args,
            last: None,
            in_flight: None,
        }
    }

    /// A handoff started (its generation and pid) or ended (`None`).
    pub fn in_flight(&mut self, successor: Option<(u64, u32)>) {
        self.in_flight = successor;
    }

    /// Writes the record of `status` if it changed.
    pub fn update(&mut self, status: &Status) {
        let rendezvous = rendezvous_prefix(&self.socket);
        let Some(record) = Record::of(
            status,
            self.protocol,
            &self.args,
            &rendezvous,
            self.in_flight,
        ) else {
            return;
        };
        if self.last.as_ref() != Some(&record) {
            record.save(&self.socket);
            self.last = Some(record);
        }
    }
}

/// Reads the record at start: the orphans to adopt from, if any still run.
/// When only old generations it was retiring are left, they hold the
/// listeners a fresh start binds: they are stopped first (SIGTERM, then
/// SIGKILL past `kill_grace`).
pub fn orphan_to_adopt(socket: &Path, kill_grace: Duration) -> Option<Record> {
    let record = Record::load(socket)?;
    if record.alive() {
        return Some(record);
    }
    let retiring = "an old generation it was retiring";
    stop_and_wait(
        &record.retirees,
        handoff::os::Sig::Term,
        retiring,
        kill_grace,
    );
    let stuck = "an old generation past its grace";
    stop_and_wait(&record.retirees, handoff::os::Sig::Kill, stuck, kill_grace);
    tracing::info!("the previous supervisor's generations are gone: starting afresh");
    Record::remove(socket);
    None
}

/// SIGKILLs those of `stopped` that still run after `bound`, from a thread
/// of its own (the adopter supervises meanwhile).
fn kill_past(stopped: Vec<PinnedProcess>, bound: Duration) {
    if stopped.is_empty() {
        return;
    }
    let killing = move || {
        if PinnedProcess::wait_all_exit(&stopped, bound) {
            return;
        }
        for process in stopped.iter().filter(|p| p.running()) {
            tracing::warn!(
                pid = process.pid,
                ?bound,
                "an old generation left by the dead supervisor outlived its stop: killing it"
            );
            if let Err(error) = process.signal(handoff::os::Sig::Kill) {
                tracing::warn!(pid = process.pid, %error, "killing it failed");
            }
        }
    };
    if let Err(error) = std::thread::Builder::new()
        .name("stop-left".into())
        .spawn(killing)
    {
        tracing::warn!(%error, "no thread to kill what outlives its stop");
    }
}

/// Signals those of `generations` still running (same pid, same start)
/// and waits until they are gone, for at most `bound`.
fn stop_and_wait(generations: &[Recorded], signal: handoff::os::Sig, what: &str, bound: Duration) {
    let running: Vec<PinnedProcess> = generations
        .iter()
        .filter_map(|generation| stop_left(*generation, signal, what))
        .collect();
    if !PinnedProcess::wait_all_exit(&running, bound) {
        tracing::warn!(?bound, "{what} still runs");
    }
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
    fn a_record_without_retirees_reads_back_with_none() {
        let record = Record {
            version: RECORD_VERSION,
            supervisor_pid: 1,
            live: Some(Recorded {
                generation: 3,
                pid: 42,
                start_time: 7,
            }),
            successor: None,
            retirees: vec![Recorded {
                generation: 2,
                pid: 41,
                start_time: 6,
            }],
            protocol: "library".into(),
            build: Build {
                program: "/bin/daemon".into(),
                args: Vec::new(),
                sha256: None,
            },
            rendezvous: None,
            listeners: Vec::new(),
            next_handoff_id: 4,
        };
        let mut json = serde_json::to_value(&record).expect("json");
        assert_eq!(json["retirees"][0]["pid"], 41);
        // What a supervisor before the field wrote.
        json.as_object_mut().expect("object").remove("retirees");
        let older: Record = serde_json::from_value(json).expect("reads");
        assert_eq!(older.retirees, Vec::new());
        assert_eq!(older.live, record.live);
    }

    #[test]
    fn one_supervisor_per_socket() {
        let scratch = testkit::TempDir::new("handoff-lock");
        let dir = scratch.path().to_path_buf();
        let socket = dir.join("admin.sock");
        let first = SupervisorLock::take(&socket).expect("first");
        assert_eq!(
            contents(&dir.join("admin.sock.lock")).trim(),
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
    }

    #[test]
    fn a_lock_file_planted_as_a_link_is_refused_and_its_target_untouched() {
        let scratch = testkit::TempDir::new("handoff-lock-link");
        let dir = scratch.path().to_path_buf();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        let socket = dir.join("admin.sock");
        std::os::unix::fs::symlink(&victim, dir.join("admin.sock.lock")).expect("link");
        let refused = SupervisorLock::take(&socket).expect_err("a link");
        assert!(
            refused.message.contains("supervisor lock"),
            "{}",
            refused.message
        );
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        // Two sockets that differ only in their extension lock apart.
        let api = SupervisorLock::take(&dir.join("com.example.api")).expect("api");
        let web = SupervisorLock::take(&dir.join("com.example.web")).expect("web");
        drop((api, web));
    }
}
