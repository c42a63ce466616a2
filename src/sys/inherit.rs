//! Taking ownership of an fd inherited across exec, and shutting sockets.
#![allow(
    unsafe_code,
    reason = "OwnedFd::from_raw_fd is the one way to own an fd inherited across exec"
)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

/// Owns the fd a supervisor left open at `raw` (the control fd) and makes it
/// close-on-exec, so the daemon's own children do not inherit it.
pub(crate) fn adopt_inherited_fd(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative fd"));
    }
    // SAFETY: F_GETFD only reads the flags of `raw`; it fails with EBADF
    // when `raw` is not open, which we check before taking ownership.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    fcntl(borrowed, FcntlArg::F_GETFD).map_err(io::Error::from)?;
    // SAFETY: `raw` is open (checked above) and was handed to this process
    // by its supervisor for the library to own (HANDOFF_CONTROL_FD); nothing
    // else in the process refers to it, and this is called once per start.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    fcntl(owned.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    Ok(owned)
}

/// `shutdown(SHUT_RDWR)`: the peer sees EOF, and so does a reader thread
/// blocked on our end.
pub(crate) fn shutdown(fd: BorrowedFd<'_>) -> io::Result<()> {
    nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both)
        .map_err(io::Error::from)
}

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
pub(crate) const LISTEN_FDS_START: RawFd = 3;

/// What systemd's socket-activation variables say: how many fds start at
/// [`LISTEN_FDS_START`] and their names. `Ok(None)` when the variables are
/// absent or meant for another process (`LISTEN_PID` is not `our_pid`: a
/// parent's variables leaked into our environment).
///
/// Names come from `LISTEN_FDNAMES` (colon-separated, one per fd); without
/// it every fd is named `unknown`, as `sd_listen_fds_with_names` does.
pub(crate) fn parse_listen_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    our_pid: u32,
) -> io::Result<Option<Vec<String>>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    let Some(pid) = listen_pid else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| bad("LISTEN_PID is not a process id"))?;
    if pid != our_pid {
        return Ok(None);
    }
    let count: usize = listen_fds
        .ok_or_else(|| bad("LISTEN_PID is set but LISTEN_FDS is not"))?
        .trim()
        .parse()
        .map_err(|_| bad("LISTEN_FDS is not a number"))?;
    // Far above any real unit; keeps a corrupt value from adopting the
    // whole fd table.
    if count > usize::from(u16::MAX) {
        return Err(bad("LISTEN_FDS is implausibly large"));
    }
    let names: Vec<String> = match listen_fdnames {
        Some(names) => names.split(':').map(str::to_owned).collect(),
        None => vec!["unknown".to_owned(); count],
    };
    if names.len() != count {
        return Err(bad("LISTEN_FDNAMES does not name exactly LISTEN_FDS fds"));
    }
    Ok(Some(names))
}

/// Adopts the fds systemd passed by socket activation, as `(name, fd)` in
/// order, each made close-on-exec. Empty when this process was not socket
/// activated. The variables stay in the environment (removing them is not
/// thread-safe); children see a `LISTEN_PID` that is not theirs and ignore
/// it, and the adopted fds are close-on-exec.
pub(crate) fn listen_fds() -> io::Result<Vec<(String, OwnedFd)>> {
    let var = |name| std::env::var(name).ok();
    let Some(names) = parse_listen_env(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(Vec::new());
    };
    names
        .into_iter()
        .zip(LISTEN_FDS_START..)
        .map(|(name, raw)| Ok((name, adopt_inherited_fd(raw)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_env_for_us_is_parsed() {
        let names = parse_listen_env(Some("42"), Some("2"), Some("http:admin"), 42).expect("ok");
        assert_eq!(names, Some(vec!["http".to_owned(), "admin".to_owned()]));
        let unnamed = parse_listen_env(Some("42"), Some("1"), None, 42).expect("ok");
        assert_eq!(unnamed, Some(vec!["unknown".to_owned()]));
        let none = parse_listen_env(Some("42"), Some("0"), Some(""), 42);
        assert!(none.is_err(), "one empty name for zero fds");
    }

    #[test]
    fn listen_env_for_another_process_or_absent_is_ignored() {
        assert_eq!(
            parse_listen_env(None, Some("1"), None, 42).expect("ok"),
            None
        );
        assert_eq!(
            parse_listen_env(Some("41"), Some("1"), None, 42).expect("ok"),
            None
        );
    }

    #[test]
    fn malformed_listen_env_is_an_error() {
        for (pid, fds, names) in [
            (Some("x"), Some("1"), None),
            (Some("42"), None, None),
            (Some("42"), Some("-1"), None),
            (Some("42"), Some("2"), Some("one")),
            (Some("42"), Some("99999999"), None),
        ] {
            let err = parse_listen_env(pid, fds, names, 42).expect_err("malformed");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn adopting_makes_an_fd_cloexec() {
        let _quiet = crate::sys::test_support::no_fork_while_held();
        let (one, _other) = crate::sys::control_pair().expect("pair");
        let raw = nix::fcntl::fcntl(&one, FcntlArg::F_DUPFD(10)).expect("dup");
        let adopted = adopt_inherited_fd(raw).expect("adopt");
        assert!(crate::sys::is_cloexec(&adopted).expect("fcntl"));
        assert!(adopt_inherited_fd(-1).is_err());
    }
}
