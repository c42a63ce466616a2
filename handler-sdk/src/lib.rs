//! What a `handoff` handler library depends on.
//!
//! A handler is a plain Rust function `fn(&Context, Request) -> Response`
//! (or `-> Result<Response, HandlerError>`). [`export_handler!`] exports it
//! through the stable C ABI of [`abi`], so a host built with another
//! compiler version can load it with `handoff::registry`:
//!
//! ```
//! use handoff_handler_sdk::serde_json::{Value, json};
//! use handoff_handler_sdk::{Context, HandlerError, Request, Response, export_handler};
//!
//! fn greet(ctx: &Context, request: Request) -> Result<Response, HandlerError> {
//!     let body: Value = request.json()?;
//!     let name = body["name"].as_str().ok_or_else(|| HandlerError::bad_request("missing name"))?;
//!     Ok(Response::ok(json!({ "hello": name, "endpoint": ctx.endpoint() })))
//! }
//!
//! export_handler!(greet);
//! ```
//!
//! The library's `Cargo.toml` needs `crate-type = ["cdylib"]`. The host
//! calls the handler from many threads at once, and may unload the library
//! once no call is running: keep no state that must outlive a call (a
//! handler that needs state across versions keeps it outside the library).
//! A panic is answered with a 500; the library's own panic hook still
//! prints the message to stderr.
//!
//! The same types serve in-process handlers: the host re-exports them, so a
//! daemon without dynamic libraries writes the same function.

pub mod abi;
mod export;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use export::panic_message;
pub use serde_json;

/// Not public API: what the expansion of [`export_handler!`] refers to.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::entry;
}

/// Exports a handler function as the library's ABI entry point.
///
/// The function must have the signature `fn(&Context, Request) -> R` where
/// `R` is [`Response`] or `Result<Response, HandlerError>` (anything
/// implementing [`IntoResponse`]). Use it once per library, at the crate
/// root. It defines the two symbols of [`abi`]: the ABI version and the
/// entry point; a panic in the handler becomes a 500 response.
#[macro_export]
macro_rules! export_handler {
    ($handler:path) => {
        /// The ABI version this library was built with (checked at load).
        #[unsafe(no_mangle)]
        pub extern "C" fn handoff_handler_abi_version() -> u32 {
            $crate::abi::ABI_VERSION
        }

        /// The request entry point (see `handoff_handler_sdk::abi::EntryFn`).
        ///
        /// # Safety
        ///
        /// The pointers must satisfy the contract of `EntryFn`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn handler_entry(
            context: *const $crate::abi::AbiContext,
            request: *const $crate::abi::AbiRequest,
            response: *mut $crate::abi::AbiResponse,
        ) -> i32 {
            // SAFETY: forwarded contract of EntryFn, which the host upholds.
            unsafe {
                $crate::__private::entry(context, request, response, |context, request| {
                    $crate::IntoResponse::into_response($handler(context, request))
                })
            }
        }
    };
}

/// What the host says about one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    endpoint: String,
    request_id: u64,
}

impl Context {
    /// A context for a request to `endpoint`.
    pub fn new(endpoint: impl Into<String>, request_id: u64) -> Context {
        Context {
            endpoint: endpoint.into(),
            request_id,
        }
    }

    /// The endpoint id the request was routed to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The host's id for this request.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }
}

/// A request: method, path with query, headers and body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path with query, e.g. `/users/7?full=1`.
    pub path: String,
    /// Headers in arrival order; names as sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            ..Request::default()
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// The first header called `name` (compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body parsed as JSON; a body that does not parse is a 400.
    ///
    /// ```
    /// # use handoff_handler_sdk::Request;
    /// let request = Request::new("POST", "/").with_body(r#"{"n": 3}"#);
    /// let value: serde_json::Value = request.json().unwrap();
    /// assert_eq!(value["n"], 3);
    /// assert_eq!(Request::new("POST", "/").with_body("{").json::<serde_json::Value>().unwrap_err().status(), 400);
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.body).map_err(|error| {
            HandlerError::bad_request(format!("request body is not the expected JSON: {error}"))
        })
    }
}

/// A response: status, headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with this status, no headers and no body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// 200 with `json` as an `application/json` body.
    ///
    /// ```
    /// # use handoff_handler_sdk::Response;
    /// let response = Response::ok(serde_json::json!({ "version": 2 }));
    /// assert_eq!(response.status, 200);
    /// assert_eq!(response.body, br#"{"version":2}"#);
    /// ```
    pub fn ok(json: impl Serialize) -> Response {
        Response::json(200, &json)
    }

    /// `status` with `json` as an `application/json` body. A value that does
    /// not serialise gives a 500.
    pub fn json(status: u16, json: &impl Serialize) -> Response {
        match serde_json::to_vec(json) {
            Ok(body) => Response::new(status)
                .with_header("content-type", "application/json")
                .with_body(body),
            Err(error) => HandlerError::internal(format!("response does not serialise: {error}"))
                .into_response(),
        }
    }

    /// `status` with a `text/plain` body.
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(text.into())
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The first header called `name` (compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// A handler's failure, answered as `{"error": message}` with its status.
///
/// ```
/// # use handoff_handler_sdk::{HandlerError, Response};
/// let response: Response = HandlerError::not_found("no such user").into();
/// assert_eq!(response.status, 404);
/// assert_eq!(response.body, br#"{"error":"no such user"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    status: u16,
    message: String,
}

impl HandlerError {
    /// An error answered with `status`.
    pub fn new(status: u16, message: impl Into<String>) -> HandlerError {
        HandlerError {
            status,
            message: message.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> HandlerError {
        HandlerError::new(400, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> HandlerError {
        HandlerError::new(404, message)
    }

    /// 500 Internal Server Error.
    pub fn internal(message: impl Into<String>) -> HandlerError {
        HandlerError::new(500, message)
    }

    /// The status it is answered with.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The response it is answered with.
    pub fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        // A JSON object of one string always serialises.
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        Response::new(self.status)
            .with_header("content-type", "application/json")
            .with_body(bytes)
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for HandlerError {}

impl From<HandlerError> for Response {
    fn from(error: HandlerError) -> Response {
        error.into_response()
    }
}

/// What a handler function may return.
pub trait IntoResponse {
    /// The response to send.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for HandlerError {
    fn into_response(self) -> Response {
        HandlerError::into_response(self)
    }
}

impl<E: Into<HandlerError>> IntoResponse for Result<Response, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(response) => response,
            Err(error) => error.into().into_response(),
        }
    }
}

#[cfg(test)]
mod tests;
