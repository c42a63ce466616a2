//! The data-directory lock: one live writer of a daemon's state at a time.
//!
//! An exclusive `flock` on `DIR/.handoff.lock`, taken through std's
//! [`File::try_lock`]/[`File::lock`]. The lock belongs to the open file
//! description (see the `sys` module header): two opens in one process
//! exclude each other, and the kernel drops the lock when the holder's last
//! fd to it closes, crash included, so a lock is never stale and never has to
//! be broken. The holder's pid is written into the file for operators; the
//! lock, not the file's content, is the truth.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;

/// The lock file's name inside the data directory.
pub(crate) const LOCK_FILE_NAME: &str = ".handoff.lock";

/// A held data-directory lock. Released on [`release`](DataDirLock::release)
/// or drop.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the tests check where the lock file is")
    )]
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock of `dir` (created if missing) if no one holds it;
    /// `Ok(None)` if another open file description does.
    pub fn try_acquire(dir: &Path) -> io::Result<Option<DataDirLock>> {
        let (file, path) = open_lock_file(dir)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(err)) => return Err(err),
        }
        let lock = DataDirLock { file, path };
        lock.record_holder()?;
        Ok(Some(lock))
    }

    /// Waits up to `timeout` for the lock of `dir`; `Ok(None)` if it is still
    /// held by someone else then.
    ///
    /// The kernel does the waiting: a helper thread blocks in `flock` and
    /// hands the lock over a channel, so the lock is taken the instant it is
    /// freed, with no polling. If we stop waiting first, the helper stays
    /// blocked until the holder lets go, then drops (and so releases) the lock
    /// it got: it never keeps the lock for nobody. Until then the helper
    /// thread and its fd live on, and a later attempt may briefly find the
    /// lock held by it.
    pub fn acquire_within(dir: &Path, timeout: Duration) -> io::Result<Option<DataDirLock>> {
        if let Some(lock) = DataDirLock::try_acquire(dir)? {
            return Ok(Some(lock));
        }
        let (file, path) = open_lock_file(dir)?;
        let (sender, receiver) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("handoff-lock-wait".to_owned())
            .spawn(move || {
                let outcome = match file.lock() {
                    Ok(()) => Ok(DataDirLock { file, path }),
                    Err(err) => Err(err),
                };
                // If the waiter has given up, send() hands the lock back and
                // it is dropped here; if the waiter gives up after the send,
                // it is dropped with the channel. Dropping unlocks.
                let _ = sender.send(outcome);
            })?;
        match receiver.recv_timeout(timeout) {
            Ok(Ok(lock)) => {
                lock.record_holder()?;
                Ok(Some(lock))
            }
            Ok(Err(err)) => Err(err),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(io::Error::other(
                "the lock waiter thread ended without an answer",
            )),
        }
    }

    /// The lock file.
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pid the most recent holder of `dir`'s lock wrote, if readable.
    /// Advisory: it stays in the file after the holder is gone.
    #[cfg(test)]
    pub fn holder_pid(dir: &Path) -> Option<u32> {
        std::fs::read_to_string(dir.join(LOCK_FILE_NAME))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Releases the lock now. Dropping releases it too, without the error.
    pub fn release(self) -> io::Result<()> {
        self.file.unlock()
    }

    /// Replaces the file's content with our pid, durably.
    fn record_holder(&self) -> io::Result<()> {
        self.file.set_len(0)?;
        std::os::unix::fs::FileExt::write_all_at(
            &self.file,
            format!("{}\n", std::process::id()).as_bytes(),
            0,
        )?;
        self.file.sync_all()
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        // Closing alone would not release the lock while a child forked
        // meanwhile still holds a copy of the fd (until its exec closes it);
        // an explicit unlock releases it for every copy at once.
        let _ = self.file.unlock();
    }
}

/// Creates `dir` if needed and opens (creating, never truncating: a holder's
/// pid is there) its lock file, close-on-exec.
fn open_lock_file(dir: &Path) -> io::Result<(File, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    Ok((file, path))
}

/// See [`crate::os::open_private_file`].
pub(crate) fn open_private_file(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let owner = file.metadata()?.uid();
    if owner != nix::unistd::geteuid().as_raw() && owner != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("owned by uid {owner}, not by us"),
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::sys::socket::is_cloexec;
    use crate::sys::test_support::{TEST_DEADLINE, TempDir};

    /// How long a test waits for a lock it knows is held.
    const SHORT_WAIT: Duration = Duration::from_millis(100);

    fn lock(dir: &Path) -> DataDirLock {
        DataDirLock::try_acquire(dir)
            .expect("try_acquire")
            .expect("lock is free")
    }

    #[test]
    fn a_second_open_is_refused_until_release() {
        let dir = TempDir::new("lock");
        let data = dir.path().join("data");
        let first = lock(&data);
        assert!(data.is_dir(), "the data directory is created");
        assert!(is_cloexec(&first.file).expect("fcntl"));
        assert_eq!(first.path(), data.join(LOCK_FILE_NAME));
        assert!(DataDirLock::try_acquire(&data).expect("try").is_none());
        first.release().expect("release");
        let again = lock(&data);
        drop(again);
        drop(lock(&data));
    }

    #[test]
    fn the_holder_writes_its_pid() {
        let dir = TempDir::new("lockpid");
        std::fs::write(dir.path().join(LOCK_FILE_NAME), "999999999 and more junk\n").expect("seed");
        let held = lock(dir.path());
        let content = std::fs::read_to_string(held.path()).expect("read");
        assert_eq!(content, format!("{}\n", std::process::id()));
        assert_eq!(
            DataDirLock::holder_pid(dir.path()),
            Some(std::process::id())
        );
        // A refused attempt does not touch the holder's pid.
        assert!(DataDirLock::try_acquire(dir.path()).expect("try").is_none());
        assert_eq!(std::fs::read_to_string(held.path()).expect("read"), content);
    }

    #[test]
    fn acquire_within_times_out_while_held() {
        let dir = TempDir::new("lockwait");
        let held = lock(dir.path());
        let started = Instant::now();
        let got = DataDirLock::acquire_within(dir.path(), SHORT_WAIT).expect("wait");
        assert!(got.is_none());
        assert!(started.elapsed() >= SHORT_WAIT);
        held.release().expect("release");
        // The helper of the attempt that timed out gets the lock now and must
        // let it go again, or this would time out.
        let got = DataDirLock::acquire_within(dir.path(), TEST_DEADLINE).expect("wait");
        assert!(got.is_some(), "the abandoned waiter kept the lock");
    }

    #[test]
    fn acquire_within_gets_the_lock_when_the_holder_releases() {
        let dir = TempDir::new("lockhand");
        let held = lock(dir.path());
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| DataDirLock::acquire_within(dir.path(), TEST_DEADLINE));
            held.release().expect("release");
            let got = waiter.join().expect("waiter panicked").expect("wait");
            let got = got.expect("lock not handed over within the deadline");
            assert_eq!(
                DataDirLock::holder_pid(dir.path()),
                Some(std::process::id())
            );
            drop(got);
        });
    }
}
