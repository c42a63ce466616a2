//! The durable state of `kvd`: an append-only log in the data directory,
//! replayed at open, with group commit.
//!
//! Record: `key length (u32 LE) | value length (u32 LE) | key | value`. A
//! torn tail (a crash in the middle of an append, never acknowledged: a
//! record running past the end of the file) is cut at open; a complete
//! record that does not decode (a key that is not UTF-8) refuses the open
//! rather than dropping what follows it. Records carry no checksum: a
//! corrupted length looks like a torn tail. A production store would add one. One writer thread owns the file: it takes every PUT waiting
//! in its queue, appends them in one write, fsyncs once, then applies them
//! to the map and answers each — a PUT is acknowledged only after its fsync.
//!
//! The fingerprint is the SHA-256 of the log's bytes, kept incrementally,
//! so a seal costs one fsync and not a re-read; it equals
//! `Fingerprint::of_bytes(log)`, which the successor computes at open.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, mpsc};

use bytes::Bytes;
use handoff::{Fingerprint, SealInfo};
use sha2::Digest;

/// The log file's name in the data directory.
pub const LOG_FILE: &str = "kvd.log";
/// The seal record's name: `revisions=N fingerprint=HEX`, fsynced at seal,
/// for operators and offline checks (the library checks the fingerprint
/// itself, invariant I3).
pub const SEAL_FILE: &str = "kvd.seal";
/// The longest key accepted.
pub const MAX_KEY: usize = 1024;
/// The largest value accepted.
pub const MAX_VALUE: usize = 1 << 20;

/// The map the HTTP handlers read.
pub type Map = HashMap<String, Bytes>;

enum Command {
    Put {
        key: String,
        value: Bytes,
        reply: tokio::sync::oneshot::Sender<io::Result<u64>>,
    },
    Seal(mpsc::Sender<io::Result<SealInfo>>),
    Reopen(mpsc::Sender<io::Result<()>>),
}

/// A handle to the store; cheap to share.
pub struct Store {
    map: Arc<RwLock<Map>>,
    revisions: Arc<AtomicU64>,
    commands: mpsc::Sender<Command>,
    fingerprint_at_open: Fingerprint,
}

/// What the writer thread owns.
struct Log {
    dir: PathBuf,
    /// `None` once sealed (or after a failed write: nothing more is
    /// acknowledged until a reopen).
    file: Option<File>,
    hasher: sha2::Sha256,
    map: Arc<RwLock<Map>>,
    revisions: Arc<AtomicU64>,
}

fn sealed_error() -> io::Error {
    io::Error::other("the store is sealed")
}

impl Store {
    /// Opens (or creates) the log in `dir`, replays it and starts the
    /// writer thread.
    pub fn open(dir: &Path) -> io::Result<Store> {
        let map = Arc::new(RwLock::new(Map::new()));
        let revisions = Arc::new(AtomicU64::new(0));
        let mut log = Log {
            dir: dir.to_path_buf(),
            file: None,
            hasher: sha2::Sha256::new(),
            map: Arc::clone(&map),
            revisions: Arc::clone(&revisions),
        };
        log.replay()?;
        let fingerprint_at_open = log.fingerprint();
        let (commands, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("kvd-writer".into())
            .spawn(move || log.run(queue))?;
        Ok(Store {
            map,
            revisions,
            commands,
            fingerprint_at_open,
        })
    }

    /// The fingerprint of the state as opened.
    pub fn fingerprint_at_open(&self) -> Fingerprint {
        self.fingerprint_at_open
    }

    /// Records applied (acknowledged writes, replayed ones included).
    pub fn revisions(&self) -> u64 {
        self.revisions.load(Ordering::SeqCst)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Appends and fsyncs; resolves to the revision once durable.
    pub async fn put(&self, key: String, value: Bytes) -> io::Result<u64> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Put { key, value, reply })
            .map_err(|_| sealed_error())?;
        answer.await.map_err(|_| sealed_error())?
    }

    /// Fsyncs, writes the seal record and refuses writes from now on
    /// (blocking: for the hook thread or `main`).
    pub fn seal_blocking(&self) -> io::Result<SealInfo> {
        let (reply, answer) = mpsc::channel();
        self.commands
            .send(Command::Seal(reply))
            .map_err(|_| sealed_error())?;
        answer.recv().map_err(|_| sealed_error())?
    }

    /// Reopens after an aborted handoff: replays the log from disk (the
    /// truth) and accepts writes again.
    pub fn reopen_blocking(&self) -> io::Result<()> {
        let (reply, answer) = mpsc::channel();
        self.commands
            .send(Command::Reopen(reply))
            .map_err(|_| sealed_error())?;
        answer.recv().map_err(|_| sealed_error())?
    }
}

impl Log {
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint(self.hasher.clone().finalize().into())
    }

    /// Reads the whole log, cuts a torn tail, rebuilds the map and hash, and
    /// opens the file for appending.
    fn replay(&mut self) -> io::Result<()> {
        let path = self.dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut map = Map::new();
        let mut revisions = 0u64;
        let mut at = 0usize;
        while let Some(record) = decode(&bytes, at) {
            let (key, value, next) = record.map_err(|offset| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: a record at byte {offset} does not decode",
                        path.display()
                    ),
                )
            })?;
            map.insert(key, value);
            revisions += 1;
            at = next;
        }
        if at < bytes.len() {
            file.set_len(at as u64)?;
            file.sync_all()?;
        }
        self.hasher = sha2::Sha256::new();
        self.hasher.update(&bytes[..at]);
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = map;
        self.revisions.store(revisions, Ordering::SeqCst);
        self.file = Some(file);
        Ok(())
    }

    fn run(mut self, queue: mpsc::Receiver<Command>) {
        let mut next = queue.recv().ok();
        while let Some(command) = next.take() {
            let mut batch = Vec::new();
            let mut other = None;
            let mut current = Some(command);
            while let Some(command) = current.take() {
                match command {
                    Command::Put { key, value, reply } => batch.push((key, value, reply)),
                    command => {
                        other = Some(command);
                        break;
                    }
                }
                current = queue.try_recv().ok();
            }
            if !batch.is_empty() {
                self.commit(batch);
            }
            match other {
                Some(Command::Seal(reply)) => {
                    let _ = reply.send(self.seal());
                }
                Some(Command::Reopen(reply)) => {
                    let _ = reply.send(self.replay());
                }
                Some(Command::Put { .. }) | None => {}
            }
            next = queue.recv().ok();
        }
    }

    fn commit(
        &mut self,
        batch: Vec<(String, Bytes, tokio::sync::oneshot::Sender<io::Result<u64>>)>,
    ) {
        let Some(file) = self.file.as_mut() else {
            for (_, _, reply) in batch {
                let _ = reply.send(Err(sealed_error()));
            }
            return;
        };
        let mut buffer = Vec::new();
        for (key, value, _) in &batch {
            encode(&mut buffer, key, value);
        }
        if let Err(error) = file.write_all(&buffer).and_then(|()| file.sync_data()) {
            // The file may hold a partial batch: acknowledge nothing more
            // until a reopen replays what is really there.
            self.file = None;
            for (_, _, reply) in batch {
                let _ = reply.send(Err(io::Error::new(error.kind(), error.to_string())));
            }
            return;
        }
        self.hasher.update(&buffer);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for (key, value, reply) in batch {
            map.insert(key, value);
            let revision = self.revisions.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = reply.send(Ok(revision));
        }
    }

    fn seal(&mut self) -> io::Result<SealInfo> {
        if let Some(file) = self.file.take() {
            file.sync_all()?;
        }
        let info = SealInfo {
            revisions: self.revisions.load(Ordering::SeqCst),
            fingerprint: self.fingerprint(),
        };
        let mut record = File::create(self.dir.join(SEAL_FILE))?;
        writeln!(
            record,
            "revisions={} fingerprint={}",
            info.revisions, info.fingerprint
        )?;
        record.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        Ok(info)
    }
}

fn encode(buffer: &mut Vec<u8>, key: &str, value: &[u8]) {
    buffer.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buffer.extend_from_slice(&(value.len() as u32).to_le_bytes());
    buffer.extend_from_slice(key.as_bytes());
    buffer.extend_from_slice(value);
}

/// The record at `at` and where the next one starts; `None` at the end of
/// the file or at a torn tail; `Err(at)` for a complete record that does not
/// decode.
fn decode(bytes: &[u8], at: usize) -> Option<Result<(String, Bytes, usize), usize>> {
    let header = bytes.get(at..at + 8)?;
    let key_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let value_len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let key_end = at + 8 + key_len;
    let end = key_end + value_len;
    let value = bytes.get(key_end..end)?;
    let Ok(key) = std::str::from_utf8(&bytes[at + 8..key_end]) else {
        return Some(Err(at));
    };
    Some(Ok((key.to_owned(), Bytes::copy_from_slice(value), end)))
}
