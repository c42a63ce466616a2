//! The open-file limit. A process that holds client connections in transit
//! (the supervisor between two generations, a generation taking them over)
//! raises its soft limit to the hard one; the children it spawns get the
//! soft limit back that it started with, as a program expects (code using
//! `select` breaks past 1024 fds).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The soft limit before [`raise_open_files`] (`u64::MAX`: never raised).
static STARTED_WITH: AtomicU64 = AtomicU64::new(u64::MAX);

/// Raises the soft limit on open files to the hard limit; returns the new
/// soft limit. Idempotent.
pub fn raise_open_files() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        let _ = STARTED_WITH.compare_exchange(u64::MAX, soft, Ordering::SeqCst, Ordering::SeqCst);
    }
    Ok(hard)
}

/// Before an exec (in a child between fork and exec, or this process
/// re-executing itself): the soft limit this process started with, if it
/// raised its own. Async-signal-safe (two syscalls).
pub(super) fn restore_in_child() -> io::Result<()> {
    let soft = STARTED_WITH.load(Ordering::SeqCst);
    if soft == u64::MAX {
        return Ok(());
    }
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)?;
    Ok(())
}

/// How many more fds process `pid` (this one when `None`) can open: its
/// soft limit on open files less the fds it has open now.
pub fn open_file_headroom(pid: Option<u32>) -> io::Result<u64> {
    let base = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let limits = std::fs::read_to_string(format!("{base}/limits"))?;
    let soft = limits
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix("Max open files")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .ok_or_else(|| io::Error::other(format!("no \"Max open files\" in {base}/limits")))?;
    let open = std::fs::read_dir(format!("{base}/fd"))?.count() as u64;
    Ok(soft.saturating_sub(open))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_shrinks_by_the_fds_opened() {
        let before = open_file_headroom(None).expect("headroom");
        let files: Vec<_> = (0..5)
            .map(|_| std::fs::File::open("/proc/self/stat").expect("open"))
            .collect();
        let after = open_file_headroom(None).expect("headroom");
        assert_eq!(before - after, files.len() as u64);
    }

    #[test]
    fn the_headroom_of_a_process_that_does_not_exist_is_an_error() {
        assert!(open_file_headroom(Some(u32::MAX)).is_err());
    }
}
