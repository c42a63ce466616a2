//! Replacing this process's image, keeping the process: an exec that keeps
//! chosen fds, and an exec prepared ahead of time so that it can run where
//! nothing may allocate (a crash's signal handler).
//!
//! Hazards:
//! - **Close-on-exec is cleared only for the exec.** Every fd is created
//!   close-on-exec (the `sys` contract); the fds an exec must keep lose the
//!   flag right before `execve` and get it back if `execve` fails, so a
//!   spawn on another thread in between could inherit them: freeze every
//!   spawning thread first.
//! - **Async-signal safety.** A handler for SIGSEGV and the like may only
//!   make async-signal-safe calls: [`PreparedExec::exec`] builds nothing,
//!   it calls `fcntl` and `execve` on strings and tables made beforehand.
//! - **A crash handler that crashes.** The handlers are installed with
//!   `SA_RESETHAND`: a second fault takes the default action (the process
//!   dies) instead of looping.
#![allow(
    unsafe_code,
    reason = "execve with prebuilt tables and sigaction handlers have no safe wrapper"
)]

use std::ffi::{CString, OsString};
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, Ordering};

use nix::libc;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};

use super::signals::CRASHES;

/// An `execve` made ready: the path, argv and envp as C strings and
/// pointer tables, and the fds to keep.
pub(crate) struct PreparedExec<'fd> {
    path: CString,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    keep: Vec<RawFd>,
    _fds: PhantomData<BorrowedFd<'fd>>,
}

// SAFETY: the pointer tables point into `_strings` and `path`, owned by the
// same value and never changed after `new`; reading them from any thread
// (or a signal handler) is a read of immutable memory.
unsafe impl Send for PreparedExec<'_> {}
// SAFETY: as above: nothing is mutated after construction.
unsafe impl Sync for PreparedExec<'_> {}

impl<'fd> PreparedExec<'fd> {
    /// `path` with `args` (argv[0] included) and exactly `env`, keeping
    /// `keep` open across the exec.
    pub(crate) fn new(
        path: &Path,
        args: &[OsString],
        env: &[(OsString, OsString)],
        keep: &[BorrowedFd<'fd>],
    ) -> io::Result<PreparedExec<'fd>> {
        let cstring = |bytes: &[u8]| {
            CString::new(bytes)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte"))
        };
        let path = cstring(path.as_os_str().as_bytes())?;
        let argv_strings: Vec<CString> = args
            .iter()
            .map(|arg| cstring(arg.as_bytes()))
            .collect::<io::Result<_>>()?;
        let env_strings: Vec<CString> = env
            .iter()
            .map(|(key, value)| cstring(&[key.as_bytes(), b"=", value.as_bytes()].concat()))
            .collect::<io::Result<_>>()?;
        let table = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        let argv = table(&argv_strings);
        let envp = table(&env_strings);
        let mut strings = argv_strings;
        strings.extend(env_strings);
        Ok(PreparedExec {
            path,
            _strings: strings,
            argv,
            envp,
            keep: keep.iter().map(AsRawFd::as_raw_fd).collect(),
            _fds: PhantomData,
        })
    }

    /// Clears close-on-exec on the kept fds and execs; returns only if the
    /// exec failed (the flags set back). Async-signal-safe.
    pub(crate) fn exec(&self) -> io::Error {
        for &fd in &self.keep {
            // SAFETY: fcntl on an fd the caller keeps open (the lifetime
            // 'fd), clearing FD_CLOEXEC.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        }
        // The new image starts with the open-file limit this process
        // started with (it raises its own when it needs to).
        let _ = super::limits::restore_in_child();
        // SAFETY: path, argv and envp are NUL-terminated C strings and
        // null-terminated tables owned by `self`, alive for the call.
        unsafe { libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        let error = io::Error::last_os_error();
        for &fd in &self.keep {
            // SAFETY: as above, setting the flag back.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        error
    }
}

/// The exec a crash runs (null: none).
static ON_CRASH: AtomicPtr<PreparedExec<'static>> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_crash(_signal: libc::c_int) {
    let prepared = ON_CRASH.load(Ordering::SeqCst);
    if !prepared.is_null() {
        // SAFETY: set by `exec_on_crash` from a Box that is never freed,
        // over fds its guard keeps open (or, once the guard is gone, the
        // pointer is null).
        let prepared = unsafe { &*prepared };
        let _ = prepared.exec();
    }
    // The exec failed or none was prepared: with SA_RESETHAND the default
    // action now applies when the fault repeats (or the abort is raised).
}

/// While it lives, a crash runs the prepared exec; dropped, crashes end
/// the process again.
#[derive(Debug)]
pub(crate) struct CrashExec<'fd> {
    /// The actions the handlers replaced, put back on drop (std's
    /// stack-overflow handler among them).
    previous: Vec<(nix::sys::signal::Signal, SigAction)>,
    _fds: PhantomData<BorrowedFd<'fd>>,
}

/// From now on a crash (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT: a panic
/// that aborts) runs `prepared` instead of ending the process, until the
/// guard is dropped.
pub(crate) fn exec_on_crash(prepared: PreparedExec<'_>) -> io::Result<CrashExec<'_>> {
    // Never freed: a handler on another thread may be reading it when the
    // guard drops. One per image (an exec starts afresh), a few kilobytes.
    let leaked = Box::into_raw(Box::new(prepared)).cast::<PreparedExec<'static>>();
    ON_CRASH.store(leaked, Ordering::SeqCst);
    // On the alternate stack where the thread has one (std gives every
    // thread one): a stack overflow is a crash to go back from too.
    let action = SigAction::new(
        SigHandler::Handler(on_crash),
        SaFlags::SA_RESETHAND | SaFlags::SA_NODEFER | SaFlags::SA_ONSTACK,
        SigSet::empty(),
    );
    let mut previous = Vec::new();
    for signal in CRASHES {
        // SAFETY: on_crash only reads an atomic and calls PreparedExec::exec,
        // which is async-signal-safe.
        previous.push((signal, unsafe { sigaction(signal, &action) }?));
    }
    Ok(CrashExec {
        previous,
        _fds: PhantomData,
    })
}

impl Drop for CrashExec<'_> {
    fn drop(&mut self) {
        for (signal, action) in &self.previous {
            // SAFETY: putting back the action this guard replaced.
            let _ = unsafe { sigaction(*signal, action) };
        }
        ON_CRASH.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prepared_exec_that_fails_returns_the_error_and_keeps_cloexec() {
        let fd = crate::sys::memfd::sealed("kept", b"x").expect("memfd");
        let prepared = PreparedExec::new(
            Path::new("/nonexistent/binary"),
            &["x".into()],
            &[],
            &[std::os::fd::AsFd::as_fd(&fd)],
        )
        .expect("prepare");
        let error = prepared.exec();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(crate::sys::is_cloexec(&fd).expect("flags"), "set back");
    }
}
