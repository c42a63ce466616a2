//! Which binary a generation runs: a path and the sha256 of its contents,
//! hashed once per file identity (device, inode, size, modification time),
//! so that a 20 MB binary is hashed once however many generations, status
//! answers and history records ask for it.
//!
//! An upgrade does not wait for a hash unless its target is pinned: the
//! event thread opens the file the successor was started from (its
//! `/proc/PID/exe`, or its `#!` script) once the handoff has
//! started and a thread of its own hashes it on idle CPU time
//! (`sha256_hex_niced`: `SCHED_IDLE`, an ordinary nice-19 thread past
//! `HASH_IDLE_BOUND`, or the waiter itself where the process may not leave
//! `SCHED_IDLE`), off the upgrade's path, the generation record and
//! systemd's notifications, as the metrics refresh does; only the history
//! entry waits for it. Status answers then find it cached. A caller that waits for a
//! hash (a status, a dry run) hashes at its own priority. A file is
//! hashed in the background once: a second background asker waits for
//! that hash.
//!
//! A build that lands at the configured program's path (renamed over it
//! or written in place) is hashed as it lands ([`hash_landings`]), so the
//! upgrade that follows finds its hash known.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};

use crate::admin::wire::{BinaryRecord, HISTORY_LEN};

/// A file's identity: `(device, inode, size, mtime seconds, mtime nanoseconds)`.
pub type Key = (u64, u64, u64, i64, i64);

/// Who waits for a hash.
#[derive(Debug, Clone, Copy)]
enum Priority {
    /// A caller (a status, a dry run): at its own priority.
    Caller,
    /// Nobody in a hurry (the event thread, the metrics refresh): niced.
    Background,
}

/// What a process runs, opened while it surely runs it: `/proc/PID/exe`
/// resolved, and the file (readable once renamed over, or the process
/// gone).
#[derive(Debug)]
pub struct Image {
    path: PathBuf,
    file: File,
}

impl Image {
    /// `None` once the process is gone.
    pub fn of_pid(pid: u32) -> Option<Image> {
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        Some(Image {
            path: std::fs::read_link(&exe).ok()?,
            file: File::open(&exe).ok()?,
        })
    }

    /// What generation `pid`, started from `program`, runs: its
    /// `/proc/PID/exe`, unless `program` is a script (`#!`) that the exe is
    /// not: then the exe is its interpreter, or what a wrapper script went
    /// on to run, and the build is the script (what a rollback runs again,
    /// what `--if-changed` compares), as the file at `program` is now.
    /// Whether it is the script.
    fn of_generation(pid: u32, program: &Path) -> Option<(Image, bool)> {
        let exe = Image::of_pid(pid)?;
        let Ok(mut script) = File::open(program) else {
            return Some((exe, false));
        };
        let mut start = [0u8; 2];
        let is_script = script.read_exact(&mut start).is_ok() && start == *b"#!";
        let same = |a: &File, b: &File| match (a.metadata(), b.metadata()) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        };
        if !is_script || same(&script, &exe.file) {
            return Some((exe, false));
        }
        let _ = script.seek(SeekFrom::Start(0));
        let image = Image {
            path: program.to_owned(),
            file: script,
        };
        Some((image, true))
    }

    /// Another handle on the same open file.
    fn try_clone(&self) -> Option<Image> {
        Some(Image {
            path: self.path.clone(),
            file: self.file.try_clone().ok()?,
        })
    }
}

/// The sha256 cache of the binaries generations run, and the generations
/// started from a script.
#[derive(Debug, Default)]
pub struct Identities {
    hashes: Mutex<Hashes>,
    /// A hash finished (another waiter's key may be done).
    hashed: Condvar,
    /// Generations started from a script (`#!`), by pid: the script as it
    /// was at their start, held open, so that a deploy renaming a new
    /// script over the path does not change what they are known by.
    scripts: Mutex<HashMap<u32, Image>>,
}

/// The hashes known, and the keys a background thread is hashing now (a
/// second background asker waits for it instead of hashing the same file
/// again).
#[derive(Debug, Default)]
struct Hashes {
    known: HashMap<Key, String>,
    hashing: HashSet<Key>,
    /// How many askers wait now (for the tests).
    waiting: usize,
}

impl Identities {
    /// Hashes the file at `path` now, on idle CPU time, unless it is known
    /// (a build that just landed at the configured program's path: its
    /// upgrade finds the hash ready).
    pub fn landed(&self, path: &Path) -> std::io::Result<String> {
        self.sha256(&File::open(path)?, Priority::Background)
    }

    /// The file at `path` (symlinks followed) and its sha256 (an upgrade's
    /// unpinned target, when `--check` or `--if-changed` needs it).
    pub fn of_path(&self, path: &std::path::Path) -> std::io::Result<BinaryRecord> {
        let file = File::open(path)?;
        let sha256 = self.sha256(&file, Priority::Caller)?;
        Ok(BinaryRecord {
            path: path.to_owned(),
            sha256,
        })
    }

    /// Notes that generation `pid` was started from `program` (right after
    /// its spawn, or when this supervisor takes it over): the image it is
    /// known by from now on, its exe or the script ([`Image::of_generation`]).
    pub fn started(&self, pid: u32, program: &Path) -> Option<Image> {
        let (image, script) = Image::of_generation(pid, program)?;
        let mut scripts = self.scripts.lock().unwrap_or_else(PoisonError::into_inner);
        // A pid reused by a generation started from a binary, and the
        // generations gone, are forgotten.
        scripts.remove(&pid);
        scripts.retain(|pid, _| Path::new(&format!("/proc/{pid}")).exists());
        if script && let Some(kept) = image.try_clone() {
            scripts.insert(pid, kept);
        }
        Some(image)
    }

    /// What generation `pid` runs and its sha256: the script it was started
    /// from ([`Identities::started`]), else its exe.
    pub fn of_generation(&self, pid: u32) -> Option<BinaryRecord> {
        self.of_image(self.image_of(pid)?, Priority::Caller)
    }

    /// [`Identities::of_generation`] from a background thread: hashed at
    /// nice 19.
    pub fn of_generation_in_background(&self, pid: u32) -> Option<BinaryRecord> {
        self.of_image(self.image_of(pid)?, Priority::Background)
    }

    fn image_of(&self, pid: u32) -> Option<Image> {
        let scripts = self.scripts.lock().unwrap_or_else(PoisonError::into_inner);
        match scripts.get(&pid) {
            Some(script) => script.try_clone(),
            None => Image::of_pid(pid),
        }
    }

    /// What process `pid` runs: `/proc/PID/exe` resolved, and the sha256 of
    /// that image (read through the link, so a file renamed over the path
    /// since does not change it). `None` once the process is gone.
    pub fn of_pid(&self, pid: u32) -> Option<BinaryRecord> {
        self.of_image(Image::of_pid(pid)?, Priority::Caller)
    }

    /// The sha256 of an image [`Identities::started`] gave, at nice 19.
    pub fn of_image_in_background(&self, image: Image) -> Option<BinaryRecord> {
        self.of_image(image, Priority::Background)
    }

    fn of_image(&self, Image { path, file }: Image, priority: Priority) -> Option<BinaryRecord> {
        let sha256 = self.sha256(&file, priority).ok()?;
        Some(BinaryRecord { path, sha256 })
    }

    /// Every identity hashed so far, for a re-exec to carry.
    pub fn entries(&self) -> Vec<(Key, String)> {
        self.lock()
            .known
            .iter()
            .map(|(key, hash)| (*key, hash.clone()))
            .collect()
    }

    /// A cache that knows `entries` already (a re-exec's).
    pub fn with_entries(entries: Vec<(Key, String)>) -> Identities {
        let hashes = Hashes {
            known: entries.into_iter().collect(),
            ..Hashes::default()
        };
        Identities {
            hashes: Mutex::new(hashes),
            ..Identities::default()
        }
    }

    /// The sha256 of `file` (an open file: what is read is what runs), for
    /// a caller that waits for it.
    pub fn sha256_of(&self, file: &File) -> std::io::Result<String> {
        self.sha256(file, Priority::Caller)
    }

    fn sha256(&self, file: &File, priority: Priority) -> std::io::Result<String> {
        let key = key_of(file)?;
        let mut hashes = self.lock();
        // One background thread hashes a file; the others wait for its
        // answer. A caller never waits for a hash on idle CPU time: it
        // hashes at its own priority.
        let background = matches!(priority, Priority::Background);
        while background && hashes.hashing.contains(&key) {
            hashes.waiting += 1;
            hashes = self
                .hashed
                .wait(hashes)
                .unwrap_or_else(PoisonError::into_inner);
            hashes.waiting -= 1;
        }
        if let Some(hash) = hashes.known.get(&key) {
            return Ok(hash.clone());
        }
        if background {
            hashes.hashing.insert(key);
        }
        drop(hashes);
        // Whatever happens to this hash (an error, a panic), the askers
        // waiting for it wake up.
        let _done = background.then(|| Hashing {
            identities: self,
            key,
        });
        // Hashed without the lock: a status request does not wait for it.
        let hash = match priority {
            Priority::Caller => handoff::os::sha256_hex(file)?,
            // A deploy's hash yields the CPU to the daemons.
            Priority::Background => handoff::os::sha256_hex_niced(file)?,
        };
        // Kept only if the file did not change under the hash (a build
        // written in place while it was read).
        if key_of(file)? == key {
            let mut hashes = self.lock();
            if hashes.known.len() >= 2 * HISTORY_LEN {
                hashes.known.clear();
            }
            hashes.known.insert(key, hash.clone());
        }
        Ok(hash)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hashes> {
        self.hashes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A hash under way: when it ends, however it ends, its key is no longer
/// being hashed and every asker waiting for it wakes up.
struct Hashing<'a> {
    identities: &'a Identities,
    key: Key,
}

impl Drop for Hashing<'_> {
    fn drop(&mut self) {
        self.identities.lock().hashing.remove(&self.key);
        self.identities.hashed.notify_all();
    }
}

/// `file`'s identity.
fn key_of(file: &File) -> std::io::Result<Key> {
    let meta = file.metadata()?;
    Ok((
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
    ))
}

/// Hashes each build that `landings` sees land at `program` (renamed over
/// it, or written in place), on idle CPU time, as it lands: the upgrade
/// that runs it finds its hash known instead of hashing it while the
/// daemons hand over. Runs until the watch fails (logged); without one, an
/// upgrade hashes its build itself.
pub fn hash_landings(landings: &handoff::os::Landings, program: &Path, identities: &Identities) {
    loop {
        match landings.next(None) {
            Ok(true) => match identities.landed(program) {
                Ok(sha256) => {
                    tracing::info!(program = %program.display(), %sha256, "a new build landed; hashed ahead of its upgrade")
                }
                Err(error) => {
                    tracing::debug!(program = %program.display(), %error, "a build landed and went")
                }
            },
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(program = %program.display(), %error, "no longer watching for new builds");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_background_asker_waits_for_the_hash_under_way_and_a_caller_does_not() {
        let scratch = testkit::TempDir::new("handoff-identity-once");
        let path = scratch.path().join("binary");
        std::fs::write(&path, b"a build").expect("write");
        let key = key_of(&File::open(&path).expect("open")).expect("key");
        let identities = std::sync::Arc::new(Identities::default());
        // Another thread is hashing it.
        identities.lock().hashing.insert(key);
        let asker = std::thread::spawn({
            let (identities, path) = (std::sync::Arc::clone(&identities), path.clone());
            move || identities.landed(&path).expect("hash")
        });
        // A caller does not wait for it: it hashes the bytes itself.
        let caller = identities.of_path(&path).expect("hash").sha256;
        assert_eq!(
            caller,
            handoff::os::sha256_hex(&File::open(&path).expect("open")).expect("sha")
        );
        // A background asker waits for it, then takes that thread's answer
        // (not what the bytes hash to).
        testkit::eventually("the asker waits", || identities.lock().waiting == 1);
        let mut hashes = identities.lock();
        hashes.hashing.remove(&key);
        hashes.known.insert(key, "the other thread's".into());
        drop(hashes);
        identities.hashed.notify_all();
        assert_eq!(asker.join().expect("asker"), "the other thread's");
    }

    #[test]
    fn a_hash_that_fails_leaves_nothing_being_hashed() {
        let scratch = testkit::TempDir::new("handoff-identity-fails");
        let identities = Identities::default();
        // A directory opens, and its read fails.
        assert!(identities.landed(scratch.path()).is_err());
        let hashes = identities.lock();
        assert!(hashes.hashing.is_empty() && hashes.known.is_empty());
    }

    #[test]
    fn a_file_is_hashed_by_content_and_rehashed_when_replaced() {
        let scratch = testkit::TempDir::new("handoff-identity");
        let dir = scratch.path().to_path_buf();
        let path = dir.join("binary");
        std::fs::write(&path, b"first build").expect("write");
        let identities = Identities::default();
        let first = identities.of_path(&path).expect("hash");
        assert_eq!(
            first.sha256,
            handoff::os::sha256_hex(&File::open(&path).expect("open")).expect("sha")
        );
        assert_eq!(
            identities.of_path(&path).expect("again").sha256,
            first.sha256
        );
        // A deploy: a new file renamed over the path (new inode).
        let next = dir.join("binary.new");
        File::create(&next)
            .and_then(|mut f| f.write_all(b"second build"))
            .expect("write");
        std::fs::rename(&next, &path).expect("rename");
        let second = identities.of_path(&path).expect("rehash");
        assert_ne!(second.sha256, first.sha256);
        // Our own image, through /proc.
        let ours = identities.of_pid(std::process::id()).expect("own exe");
        assert_eq!(ours.path, std::env::current_exe().expect("exe"));
    }

    /// A generation started from a wrapper script that went on to exec
    /// another program is known by the script as it was at the start, even
    /// once a new script is renamed over the path; one started from a
    /// binary, by its exe.
    #[test]
    fn a_generation_started_from_a_script_is_known_by_the_script() {
        let scratch = testkit::TempDir::new("handoff-identity-sh");
        let dir = scratch.path().to_path_buf();
        let script = dir.join("wrapper");
        let marker = dir.join("execed");
        let text = format!("#!/bin/sh\n: > {}\nexec sleep 30\n", marker.display());
        std::fs::write(&script, text).expect("write");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let child = testkit::Reaped(std::process::Command::new(&script).spawn().expect("spawn"));
        let pid = child.0.id();
        // Past the wrapper's exec: the exe is sleep's once the marker is
        // there and the exe is no longer the shell.
        let shell = std::fs::canonicalize("/bin/sh").expect("sh");
        testkit::eventually("the wrapper exec'd sleep", || {
            marker.exists()
                && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe != shell)
        });
        let identities = Identities::default();
        let script_sha = handoff::os::sha256_hex(&File::open(&script).expect("open")).expect("sha");
        identities.started(pid, &script).expect("noted");
        let record = identities.of_generation(pid).expect("identity");
        assert_eq!(
            (record.path.clone(), record.sha256),
            (script.clone(), script_sha.clone())
        );
        // A deploy renames a new script over the path: still the old one.
        let next = dir.join("wrapper.new");
        std::fs::write(&next, "#!/bin/sh\nexec true\n").expect("write");
        std::fs::rename(&next, &script).expect("rename");
        let record = identities.of_generation(pid).expect("identity");
        assert_eq!(record.sha256, script_sha, "as it was at the start");
        // A binary is known by its exe, whatever path named it.
        let exe = identities.of_pid(pid).expect("exe");
        assert_ne!(exe.path, script, "the process runs sleep");
        let binaries = Identities::default();
        binaries.started(pid, &exe.path).expect("noted");
        assert_eq!(binaries.of_generation(pid), Some(exe));
        drop(child);
    }
}
