//! Watching one path for a new file landing there (inotify): a build
//! renamed over it (`IN_MOVED_TO`) or written in place and closed
//! (`IN_CLOSE_WRITE`). The directory is watched, not the file, so a rename
//! over the path is seen however often it happens; the directory is the
//! one the path named when the watch began (a symlink to it resolved then).

use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent};

use super::wake::{Interest, poll_ready};

/// A watch on one path's directory, close-on-exec, for the files that land
/// at that path.
#[derive(Debug)]
pub struct Landings {
    inotify: Inotify,
    name: OsString,
}

impl Landings {
    /// Watches `path` (its directory must exist; the file need not).
    pub fn watch(path: &Path) -> io::Result<Landings> {
        let name = path
            .file_name()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "a path without a file name")
            })?
            .to_owned();
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(
            dir,
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE,
        )?;
        Ok(Landings { inotify, name })
    }

    /// Waits until a file lands at the path (or the kernel's queue
    /// overflowed, which may have hidden one): `true`, or `false` once
    /// `timeout` passed without one (`None`: waits for ever). Files that
    /// land at other names in the directory are passed over; a directory
    /// gone is an error.
    pub fn next(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let deadline = timeout.map(|timeout| std::time::Instant::now() + timeout);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            if left.is_some_and(|left| left.is_zero()) {
                return Ok(false);
            }
            let ready = poll_ready(&[(self.inotify.as_fd(), Interest::Read)], left)?;
            if !ready.first().copied().unwrap_or(false) {
                continue;
            }
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
                Err(errno) => return Err(errno.into()),
            };
            if events
                .iter()
                .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED))
            {
                return Err(io::Error::other(
                    "the watched directory is gone (removed, renamed or unmounted)",
                ));
            }
            // Events lost to a full queue may have been a landing.
            let overflowed = |e: &InotifyEvent| e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW);
            if events
                .iter()
                .any(|e| overflowed(e) || e.name.as_ref() == Some(&self.name))
            {
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_renamed_over_or_written_at_the_path_is_seen_and_others_are_not() {
        let scratch = testkit::TempDir::new("handoff-landing");
        let dir = scratch.path().to_path_buf();
        let path = dir.join("daemon");
        let landings = Landings::watch(&path).expect("watch");
        let short = Some(Duration::from_millis(50));
        // Another name in the same directory.
        std::fs::write(dir.join("other"), b"x").expect("write");
        assert!(!landings.next(short).expect("next"));
        // A build renamed over the path.
        std::fs::write(dir.join(".daemon.new"), b"build 2").expect("write");
        std::fs::rename(dir.join(".daemon.new"), &path).expect("rename");
        assert!(landings.next(short).expect("next"));
        // Written in place and closed.
        std::fs::write(&path, b"build 3").expect("write");
        assert!(landings.next(short).expect("next"));
        assert!(!landings.next(short).expect("next"));
        assert!(crate::sys::is_cloexec(landings.inotify.as_fd()).expect("flags"));
        // The directory gone: the watch ends with an error.
        drop(scratch);
        assert!(landings.next(short).is_err());
    }
}
