//! What a handler is: an in-process value implementing [`Handler`], or a
//! dynamic library speaking the ABI of `handoff_handler_sdk::abi`. Both run
//! through the same registry machinery.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use handoff_handler_sdk::{Context, Request, Response, panic_message};

use super::dylib::DylibHandler;
use crate::error::Result;

/// A request handler living in the daemon's own code.
///
/// Any `Fn(&Context, Request) -> Response + Send + Sync` closure is one;
/// [`HandlerSource::from_fn`] spares the closure's type annotations.
///
/// ```
/// use handoff::registry::{Context, Handler, Request, Response};
///
/// struct Version(u32);
///
/// impl Handler for Version {
///     fn handle(&self, _ctx: &Context, _request: Request) -> Response {
///         Response::ok(serde_json::json!({ "version": self.0 }))
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. A panic is caught and answered with a 500.
    fn handle(&self, ctx: &Context, request: Request) -> Response;
}

impl<F> Handler for F
where
    F: Fn(&Context, Request) -> Response + Send + Sync + 'static,
{
    fn handle(&self, ctx: &Context, request: Request) -> Response {
        self(ctx, request)
    }
}

/// Where a new handler comes from. Loading happens before anything in the
/// registry changes, so a source that fails to load leaves the endpoint as
/// it was.
#[derive(Clone)]
pub enum HandlerSource {
    /// A dynamic library at this path (see `handoff_handler_sdk`).
    Library(PathBuf),
    /// A value in the daemon's own code.
    InProcess(Arc<dyn Handler>),
}

impl HandlerSource {
    /// A dynamic library at `path`.
    pub fn library(path: impl Into<PathBuf>) -> HandlerSource {
        HandlerSource::Library(path.into())
    }

    /// The library of endpoint `id` in a handlers directory, under the
    /// platform's name ([`library_file_name`]).
    pub fn from_dir(dir: impl AsRef<Path>, id: &str) -> HandlerSource {
        HandlerSource::Library(dir.as_ref().join(library_file_name(id)))
    }

    /// An in-process handler.
    pub fn handler(handler: impl Handler) -> HandlerSource {
        HandlerSource::InProcess(Arc::new(handler))
    }

    /// An in-process handler from a closure.
    ///
    /// ```
    /// use handoff::registry::{HandlerSource, Response};
    /// let source = HandlerSource::from_fn(|ctx, request| {
    ///     Response::text(200, format!("{} {}", ctx.endpoint(), request.path))
    /// });
    /// # let _ = source;
    /// ```
    pub fn from_fn<F>(handler: F) -> HandlerSource
    where
        F: Fn(&Context, Request) -> Response + Send + Sync + 'static,
    {
        HandlerSource::InProcess(Arc::new(handler))
    }

    pub(crate) fn load(self) -> Result<LoadedHandler> {
        match self {
            HandlerSource::Library(path) => Ok(LoadedHandler::Library(DylibHandler::load(&path)?)),
            HandlerSource::InProcess(handler) => Ok(LoadedHandler::InProcess(handler)),
        }
    }
}

impl std::fmt::Debug for HandlerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerSource::Library(path) => f.debug_tuple("Library").field(path).finish(),
            HandlerSource::InProcess(_) => f.write_str("InProcess"),
        }
    }
}

/// The file name of endpoint `id`'s library in a handlers directory:
/// `libhandler_{id}.so` on Linux, `libhandler_{id}.dylib` on macOS,
/// `handler_{id}.dll` on Windows.
///
/// ```
/// # #[cfg(target_os = "linux")]
/// assert_eq!(handoff::registry::library_file_name("users"), "libhandler_users.so");
/// ```
pub fn library_file_name(id: &str) -> String {
    format!(
        "{}handler_{id}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// A handler ready to take calls.
pub(crate) enum LoadedHandler {
    InProcess(Arc<dyn Handler>),
    Library(DylibHandler),
}

#[cold]
fn panicked(payload: Box<dyn std::any::Any + Send>) -> CallOutcome {
    let message = panic_message(&*payload);
    // The payload's Drop is user code too.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    CallOutcome::Panicked(message)
}

/// How one call ended.
pub(crate) enum CallOutcome {
    Answered(Response),
    Panicked(String),
    NoResponse,
}

impl LoadedHandler {
    #[inline]
    pub(crate) fn call(&self, ctx: &Context, request: Request) -> CallOutcome {
        match self {
            LoadedHandler::InProcess(handler) => {
                match catch_unwind(AssertUnwindSafe(|| handler.handle(ctx, request))) {
                    Ok(response) => CallOutcome::Answered(response),
                    Err(payload) => panicked(payload),
                }
            }
            LoadedHandler::Library(library) => library.call(ctx, &request),
        }
    }

    /// What the handler was loaded from, for statistics and the seal
    /// fingerprint.
    pub(crate) fn origin(&self) -> String {
        match self {
            LoadedHandler::InProcess(_) => "in-process".to_owned(),
            LoadedHandler::Library(library) => library.path().display().to_string(),
        }
    }
}
