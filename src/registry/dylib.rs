//! Loading, calling and unloading handler libraries: the crate's only
//! unsafe code outside `sys/` (an exception written into the contract in
//! `sys/mod.rs`).
//!
//! Hazards handled here:
//! - **dlopen deduplicates by path.** Opening a path that is already loaded
//!   returns the loaded mapping, even when the file was rebuilt in between:
//!   "loading v2" would silently keep v1. Each load therefore opens a
//!   private copy with a unique name (R9). On Unix the copy is unlinked as
//!   soon as it is mapped, so nothing is left behind even after a crash;
//!   `/proc/PID/maps` shows it as `(deleted)`.
//! - **Library constructors run at dlopen**, before any check: the ABI
//!   version can only be checked after mapping. A library with the wrong
//!   version is closed again at once and never called.
//! - **Unresolved symbols**: the library is opened with `RTLD_NOW` on Unix,
//!   so a missing symbol fails the load instead of the first call.
//! - **Unmapping under a running call** would crash the process. This type
//!   closes its library only when dropped, and an [`super::instance::Instance`]
//!   (which owns it) is dropped only when no guard references it (R2).
//! - **Panics** never cross the boundary: the library catches them (see
//!   `handoff_handler_sdk::abi`).
//! - **glibc may keep a library mapped after `dlclose`** when code in it
//!   registered a thread-local destructor on a thread that is still alive;
//!   the mapping then goes when that thread exits. Handlers built with the
//!   SDK register none on the request path.
#![allow(
    unsafe_code,
    reason = "dlopen, dlsym and calls through foreign function pointers are inherently unsafe; this file is the one place the library does them"
)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use handoff_handler_sdk::abi::{
    ABI_VERSION, ABI_VERSION_SYMBOL, AbiContext, AbiResponse, AbiSlice, AbiVersionFn, ENTRY_SYMBOL,
    EntryFn, OUTCOME_OK, OUTCOME_PANICKED, RequestView, take_response,
};
use handoff_handler_sdk::{Context, Request};
use libloading::Library;

use super::handler::CallOutcome;
use crate::error::{Error, Result};

/// A loaded handler library.
pub(crate) struct DylibHandler {
    /// Valid while `library` is loaded; `library` is dropped only with self.
    entry: EntryFn,
    library: Option<Library>,
    path: PathBuf,
    /// The private copy that was mapped (already unlinked on Unix).
    mapped: PathBuf,
}

impl DylibHandler {
    /// Maps a private copy of `path`, checks its ABI version, resolves its
    /// entry point.
    pub(crate) fn load(path: &Path) -> Result<DylibHandler> {
        let load_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::HandlerLoad {
            path: path.to_owned(),
            source,
        };
        let mapped = private_copy(path).map_err(|error| load_error(error.into()))?;
        let opened = open(&mapped);
        // On Unix the mapping outlives the name; elsewhere the name goes
        // after the library is closed (in Drop), or now if it did not open.
        if (cfg!(unix) || opened.is_err())
            && let Err(error) = std::fs::remove_file(&mapped)
        {
            tracing::warn!(path = %mapped.display(), %error, "cannot remove the private copy of a handler library");
        }
        let library = opened.map_err(|error| load_error(error.into()))?;

        // SAFETY: the symbol is declared by the ABI as `AbiVersionFn`; the
        // function pointer is used only here, while `library` is alive.
        let version_symbol = unsafe { library.get::<AbiVersionFn>(ABI_VERSION_SYMBOL) }
            .map_err(|error| load_error(error.into()))?;
        let version_fn: AbiVersionFn = *version_symbol;
        // SAFETY: an ABI-version function takes nothing and returns a u32
        // (ABI contract); it cannot unwind (`extern "C"`).
        let got = unsafe { version_fn() };
        if got != ABI_VERSION {
            return Err(Error::AbiMismatch {
                path: path.to_owned(),
                expected: ABI_VERSION,
                got,
            });
        }
        // SAFETY: the symbol is declared by the ABI version just checked as
        // `EntryFn`.
        let entry_symbol = unsafe { library.get::<EntryFn>(ENTRY_SYMBOL) }
            .map_err(|error| load_error(error.into()))?;
        // The plain function pointer is copied out of the `Symbol`; it stays
        // valid while `library` is loaded, which this type's `Drop`
        // guarantees (the library is closed only there).
        let entry: EntryFn = *entry_symbol;
        tracing::debug!(path = %path.display(), mapped = %mapped.display(), "handler library loaded");
        Ok(DylibHandler {
            entry,
            library: Some(library),
            path: path.to_owned(),
            mapped,
        })
    }

    /// The path the library was loaded from.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn call(&self, ctx: &Context, request: &Request) -> CallOutcome {
        let view = RequestView::new(request);
        let abi_request = view.abi();
        let abi_context = AbiContext {
            endpoint: AbiSlice::of(ctx.endpoint().as_bytes()),
            request_id: ctx.request_id(),
        };
        let mut response = AbiResponse::unfilled();
        // SAFETY: `entry` belongs to the library held by `self`, loaded for
        // the whole call. The context and request borrow `ctx`, `request`
        // and `view`, which outlive the call; `response` is writable. The
        // library catches panics (ABI contract), so nothing unwinds here.
        let outcome = unsafe { (self.entry)(&abi_context, &abi_request, &mut response) };
        // SAFETY: the entry point returned; the response is released once,
        // by the library's own function, while the library is loaded.
        let taken = unsafe { take_response(&mut response) };
        match (outcome, taken) {
            (OUTCOME_OK, Some(response)) => CallOutcome::Answered(response),
            (OUTCOME_PANICKED, Some(response)) => {
                CallOutcome::Panicked(String::from_utf8_lossy(&response.body).into_owned())
            }
            (OUTCOME_PANICKED, None) => CallOutcome::Panicked("handler panicked".to_owned()),
            _ => CallOutcome::NoResponse,
        }
    }
}

impl Drop for DylibHandler {
    fn drop(&mut self) {
        if let Some(library) = self.library.take()
            && let Err(error) = library.close()
        {
            tracing::warn!(path = %self.path.display(), %error, "closing a handler library failed");
        }
        #[cfg(not(unix))]
        if let Err(error) = std::fs::remove_file(&self.mapped) {
            tracing::warn!(path = %self.mapped.display(), %error, "cannot remove the private copy of a handler library");
        }
        tracing::debug!(path = %self.path.display(), mapped = %self.mapped.display(), "handler library unloaded");
    }
}

#[cfg(unix)]
fn open(path: &Path) -> std::result::Result<Library, libloading::Error> {
    use libloading::os::unix::{Library as UnixLibrary, RTLD_LOCAL, RTLD_NOW};
    // SAFETY: mapping a library runs its initialisers; handler libraries
    // are trusted code chosen by the operator, like the daemon's binary.
    unsafe { UnixLibrary::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map(Library::from)
}

#[cfg(not(unix))]
fn open(path: &Path) -> std::result::Result<Library, libloading::Error> {
    // SAFETY: as on Unix: handler libraries are trusted code.
    unsafe { Library::new(path) }
}

/// Copies `path` to a fresh name in the temporary directory (R9).
fn private_copy(path: &Path) -> std::io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let sequence = NEXT.fetch_add(1, Ordering::Relaxed);
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "handler".to_owned());
    let copy = std::env::temp_dir().join(format!(
        "handoff-{}-{sequence}-{file_name}",
        std::process::id()
    ));
    std::fs::copy(path, &copy)?;
    Ok(copy)
}
