//! A binary pinned by its content: opened once (close-on-exec), hashed from
//! the open file, and executed through `/proc/self/fd/N`, so that what runs
//! is the file that was hashed even if the path is replaced in between.
//!
//! The hazard: `/proc/self/fd/N` names a number, and a spawn rearranges
//! numbers between fork and exec (the control socket onto fd 3, a foreign
//! daemon's listeners onto 3, 4, ...). A pin whose number falls in that
//! range would be closed by the `dup2` and the exec would run a socket
//! (`EACCES`). So the pin is moved above every number a spawn writes:
//! [`PIN_FD_FLOOR`] and up.
#![allow(
    unsafe_code,
    reason = "the fd F_DUPFD_CLOEXEC returns is adopted with OwnedFd::from_raw_fd; \
              setpriority and sched_setscheduler on the hashing thread itself, \
              pthread_setschedparam on it from its waiter"
)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The lowest fd number a pin takes: above fd 3 plus the most listeners a
/// spawn places from fd 3 on (`MAX_FDS_PER_FRAME`, 253).
pub const PIN_FD_FLOOR: i32 = 3 + crate::wire::MAX_FDS_PER_FRAME as i32;

use sha2::{Digest, Sha256};

/// An open binary and the sha256 of its contents when it was opened.
#[derive(Debug)]
pub struct PinnedBinary {
    file: File,
    path: PathBuf,
    sha256: String,
    /// It starts with `#!`: its interpreter opens it by the path it is
    /// given, which a close-on-exec `/proc/self/fd/N` would not be.
    script: bool,
}

impl PinnedBinary {
    /// Opens `path` (std opens with `O_CLOEXEC`), moves it to
    /// [`PIN_FD_FLOOR`] or above, and hashes it. Where the fd limit is too
    /// low for that, the pin keeps the number `open` gave it.
    pub(crate) fn open(path: &Path) -> io::Result<PinnedBinary> {
        let file = above_spawn_range(File::open(path)?);
        let sha256 = sha256_hex(&file)?;
        let mut start = [0u8; 2];
        let script = std::os::unix::fs::FileExt::read_exact_at(&file, &mut start, 0).is_ok()
            && start == *b"#!";
        Ok(PinnedBinary {
            file,
            path: path.to_owned(),
            sha256,
            script,
        })
    }

    /// Lowercase hex sha256 of the contents.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path that executes exactly this open file while `self` lives (in
    /// this process and in a child forked from it: the fd is inherited by
    /// the fork and closed only by the exec, after the kernel opened it).
    /// A script (`#!`) is the exception: its path, checked just before.
    /// Its interpreter opens what it is given after the exec, when a
    /// close-on-exec fd is gone, and a script finds its siblings by `$0`.
    pub fn exec_path(&self) -> PathBuf {
        if self.script {
            self.path.clone()
        } else {
            PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
        }
    }
}

/// The executable process `pid` runs, opened (close-on-exec) through
/// `/proc/PID/exe`: it stays readable, and its blocks allocated, while
/// the file is open, even once renamed over and the process gone. `None`
/// if it cannot be opened (the process is gone, or not ours to read).
pub(crate) fn open_image(pid: u32) -> Option<File> {
    File::open(format!("/proc/{pid}/exe")).ok()
}

/// `file` at [`PIN_FD_FLOOR`] or above (a close-on-exec duplicate; the
/// original is closed), or `file` itself if no such number is free.
fn above_spawn_range(file: File) -> File {
    match nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(PIN_FD_FLOOR)) {
        // SAFETY: F_DUPFD_CLOEXEC returned a new open fd that nothing
        // else owns.
        Ok(raw) => File::from(unsafe { OwnedFd::from_raw_fd(raw) }),
        Err(_) => file,
    }
}

/// Lowercase hex sha256 of `file`'s contents from its current offset.
pub fn sha256_hex(mut file: &File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex(hasher))
}

fn hex(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The sha256 of the whole of `file` by positional reads (its offset,
/// shared with its duplicates, is left alone); `None` if `stop` is set
/// before the end.
fn sha256_hex_whole(file: &File, stop: &AtomicBool) -> io::Result<Option<String>> {
    use std::os::unix::fs::FileExt;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0_u8; 64 * 1024];
    let mut at = 0_u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match file.read_at(&mut buffer, at) {
            Ok(0) => return Ok(Some(hex(hasher))),
            Ok(read) => {
                hasher.update(&buffer[..read]);
                at += read as u64;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// Who finished a niced hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashedBy {
    /// The hashing thread, on idle CPU time.
    Idle,
    /// The hashing thread, promoted to an ordinary nice-19 thread.
    Promoted,
    /// The caller, at its own priority: the hashing thread could not be
    /// promoted (leaving `SCHED_IDLE` takes `CAP_SYS_NICE` or an
    /// `RLIMIT_NICE` of at least 1) and is told to stop.
    Caller,
}

/// The sha256 of the whole of `file` ([`sha256_hex`] from offset 0) on a
/// thread of its own at the lowest CPU priority: a deploy's new build
/// (20 MB: about 60 ms of one core) is hashed with the CPU time the
/// daemons' threads leave idle (`SCHED_IDLE`, nice 19). On a saturated
/// machine such a thread hardly runs: past `HASH_IDLE_BOUND` it goes on as
/// an ordinary thread at nice 19 or, where this process may not promote it,
/// the caller hashes at its own priority; either way its wait is bounded.
pub fn sha256_hex_niced(file: &File) -> io::Result<String> {
    hash_niced(file, crate::timeouts::HASH_IDLE_BOUND).map(|(hash, _)| hash)
}

fn hash_niced(file: &File, idle_bound: std::time::Duration) -> io::Result<(String, HashedBy)> {
    let stop = Arc::new(AtomicBool::new(false));
    let (done, result) = std::sync::mpsc::sync_channel(1);
    let (idle, idle_now) = std::sync::mpsc::sync_channel(1);
    let hashing = std::thread::Builder::new()
        .name("handoff-hash".into())
        .spawn({
            let (file, stop) = (file.try_clone()?, Arc::clone(&stop));
            move || {
                make_idle();
                let _ = idle.send(());
                let _ = done.send(sha256_hex_whole(&file, &stop));
            }
        })?;
    let unfinished = || io::Error::other("the hashing thread ended without a hash");
    // Until then it runs at the ordinary priority: a promotion before it
    // went idle would be undone by it.
    idle_now.recv().map_err(|_| unfinished())?;
    let hashed = match result.recv_timeout(idle_bound) {
        Ok(hashed) => (hashed?.ok_or_else(unfinished)?, HashedBy::Idle),
        Err(_) => match promote(&hashing) {
            Ok(()) => {
                let hashed = result.recv().map_err(|_| unfinished())?;
                (hashed?.ok_or_else(unfinished)?, HashedBy::Promoted)
            }
            Err(error) => {
                tracing::debug!(%error, "the idle hashing thread cannot be promoted; hashing here");
                // Stops at its next read, whenever it gets the CPU; not
                // waited for (it is detached).
                stop.store(true, Ordering::Relaxed);
                let hash = sha256_hex_whole(file, &AtomicBool::new(false))?;
                return Ok((hash.ok_or_else(unfinished)?, HashedBy::Caller));
            }
        },
    };
    let _ = hashing.join();
    Ok(hashed)
}

/// Puts the calling thread at nice 19 under `SCHED_IDLE`.
fn make_idle() {
    // SAFETY: setpriority with this thread's own id (Linux applies
    // PRIO_PROCESS to one thread), then sched_setscheduler on the calling
    // thread (pid 0) with a valid parameter; a failure leaves the thread
    // as it was.
    unsafe {
        nix::libc::setpriority(
            nix::libc::PRIO_PROCESS,
            nix::libc::gettid() as nix::libc::id_t,
            19,
        );
        let param = nix::libc::sched_param { sched_priority: 0 };
        nix::libc::sched_setscheduler(0, nix::libc::SCHED_IDLE, &param);
    }
}

/// Moves the (not yet joined) thread `thread` from `SCHED_IDLE` to the
/// ordinary policy; it keeps its nice value. `EPERM` without
/// `CAP_SYS_NICE` and an `RLIMIT_NICE` below 1.
fn promote<T>(thread: &std::thread::JoinHandle<T>) -> io::Result<()> {
    use std::os::unix::thread::JoinHandleExt;
    let param = nix::libc::sched_param { sched_priority: 0 };
    // SAFETY: the pthread_t is valid until the handle is joined, which
    // happens after this call; the parameter is valid for SCHED_OTHER.
    let error = unsafe {
        nix::libc::pthread_setschedparam(thread.as_pthread_t(), nix::libc::SCHED_OTHER, &param)
    };
    match error {
        0 => Ok(()),
        error => Err(io::Error::from_raw_os_error(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_niced_hash_is_the_same_hash() {
        let file = File::open("/proc/self/exe").expect("exe");
        let niced = sha256_hex_niced(&file).expect("niced");
        let plain = sha256_hex(&File::open("/proc/self/exe").expect("exe")).expect("plain");
        assert_eq!(niced, plain);
    }

    #[test]
    fn a_promoted_idle_thread_runs_as_an_ordinary_one_at_its_nice_value() {
        let (ready, idle_now) = std::sync::mpsc::channel::<i32>();
        let (go, promoted) = std::sync::mpsc::channel::<()>();
        let idle = std::thread::spawn(move || {
            // SAFETY: as in sha256_hex_niced, on this thread only; then
            // reading this thread's own policy and nice value.
            unsafe {
                let tid = nix::libc::gettid() as nix::libc::id_t;
                nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid, 19);
                let param = nix::libc::sched_param { sched_priority: 0 };
                nix::libc::sched_setscheduler(0, nix::libc::SCHED_IDLE, &param);
                ready.send(nix::libc::sched_getscheduler(0)).expect("ready");
                promoted.recv().expect("promoted");
                let nice = nix::libc::getpriority(nix::libc::PRIO_PROCESS, tid);
                (nix::libc::sched_getscheduler(0), nice)
            }
        });
        assert_eq!(idle_now.recv().expect("idle"), nix::libc::SCHED_IDLE);
        let promoted_now = promote(&idle);
        go.send(()).expect("go");
        let (after, nice) = idle.join().expect("join");
        if may_leave_idle() {
            promoted_now.expect("promoted");
            assert_eq!(after, nix::libc::SCHED_OTHER);
        } else {
            let refused = promoted_now.expect_err("not ours to promote");
            assert_eq!(refused.raw_os_error(), Some(nix::libc::EPERM), "{refused}");
            assert_eq!(after, nix::libc::SCHED_IDLE);
        }
        assert_eq!(nice, 19);
    }

    #[test]
    fn a_hash_its_thread_cannot_promote_is_finished_by_the_caller() {
        let exe = File::open("/proc/self/exe").expect("exe");
        let plain = sha256_hex(&File::open("/proc/self/exe").expect("exe")).expect("plain");
        let (hash, by, allowed) = std::thread::spawn(move || {
            drop_cap_sys_nice();
            let allowed = may_leave_idle();
            let (hash, by) = hash_niced(&exe, std::time::Duration::ZERO).expect("hashed");
            (hash, by, allowed)
        })
        .join()
        .expect("join");
        assert_eq!(hash, plain);
        let expected = if allowed {
            HashedBy::Promoted
        } else {
            HashedBy::Caller
        };
        assert_eq!(by, expected);
    }

    /// Whether this thread may move a thread of its from `SCHED_IDLE` back
    /// to nice 19: `CAP_SYS_NICE` in effect, or an `RLIMIT_NICE` of at
    /// least 1.
    fn may_leave_idle() -> bool {
        let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
        let effective = status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .expect("CapEff");
        let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NICE)
            .expect("RLIMIT_NICE");
        effective & (1 << CAP_SYS_NICE) != 0 || soft >= 1
    }

    const CAP_SYS_NICE: u32 = 23;

    /// Drops `CAP_SYS_NICE` from the calling thread's effective set
    /// (capabilities are per thread; threads it spawns inherit it).
    fn drop_cap_sys_nice() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: capget and capset on the calling thread (pid 0) with a
        // version-3 header and the two data words that version takes.
        unsafe {
            let got = nix::libc::syscall(nix::libc::SYS_capget, &mut header, data.as_mut_ptr());
            assert_eq!(got, 0, "capget");
            data[0].effective &= !(1 << CAP_SYS_NICE);
            let set = nix::libc::syscall(nix::libc::SYS_capset, &mut header, data.as_ptr());
            assert_eq!(set, 0, "capset");
        }
    }

    #[test]
    fn the_pinned_file_is_hashed_and_executable_through_its_fd() {
        let scratch = testkit::TempDir::new("handoff-pin");
        let dir = scratch.path().to_path_buf();
        let path = dir.join("abc");
        std::fs::write(&path, b"abc").expect("write");
        let pinned = PinnedBinary::open(&path).expect("open");
        // Out of reach of the dup2s of a spawn (fd 3 and the listeners
        // after it), where the fd limit allows.
        let limit: Option<i32> =
            std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|limits| {
                    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
                    line.split_whitespace().nth(3)?.parse().ok()
                });
        if limit.is_none_or(|soft| soft > PIN_FD_FLOOR) {
            assert!(pinned.file.as_raw_fd() >= PIN_FD_FLOOR, "{limit:?}");
        }
        assert!(crate::sys::is_cloexec(&pinned.file).expect("fcntl"));
        // The sha256 of "abc" (FIPS 180-2, appendix B.1).
        assert_eq!(
            pinned.sha256(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Replacing the path does not change what the pin reads.
        std::fs::remove_file(&path).expect("unlink");
        std::fs::write(&path, b"something else").expect("rewrite");
        let through_fd = std::fs::read(pinned.exec_path()).expect("read through /proc/self/fd");
        assert_eq!(through_fd, b"abc");
        // A script runs by its path (its interpreter opens it after the
        // exec, and finds its siblings by `$0`); its content was checked.
        let script = dir.join("wrapper");
        std::fs::write(&script, b"#!/bin/sh\nexec true\n").expect("write");
        let pinned = PinnedBinary::open(&script).expect("open");
        assert_eq!(pinned.exec_path(), script);
    }
}
