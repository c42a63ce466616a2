//! The C ABI between a host (the `handoff` registry) and a handler library.
//!
//! This module is the one definition of the ABI: the host and every handler
//! library compile against it. Rust has no stable ABI, so nothing but
//! `#[repr(C)]` structs, integers, raw pointers and `extern "C"` functions
//! crosses the boundary. Strings and bodies travel as byte slices; the host
//! decides what a response's bytes mean.
//!
//! # Symbols a library exports
//!
//! | symbol | type | meaning |
//! | --- | --- | --- |
//! | [`ABI_VERSION_SYMBOL`] | [`AbiVersionFn`] | returns the [`ABI_VERSION`] the library was built with; checked at load |
//! | [`ENTRY_SYMBOL`] | [`EntryFn`] | handles one request |
//!
//! # One call
//!
//! 1. The host fills an [`AbiContext`] and an [`AbiRequest`] whose pointers
//!    borrow host memory, valid until `handler_entry` returns.
//! 2. The library fills the [`AbiResponse`] it is given. The response's
//!    memory belongs to the library; the host copies what it needs and then
//!    calls the response's `release` function, which frees it *inside the
//!    library* (host and library need not share an allocator).
//! 3. `handler_entry` returns [`OUTCOME_OK`], or [`OUTCOME_PANICKED`] with a
//!    500 response when the handler panicked. A panic never unwinds across
//!    the boundary: unwinding out of an `extern "C"` function aborts the
//!    process, so the library catches it.
//!
//! Any change to a layout, a symbol or the meaning of a field bumps
//! [`ABI_VERSION`]; the host refuses a library whose version differs.

use std::ffi::c_void;

use crate::Request;

pub use crate::export::take_response;

/// The ABI version this SDK speaks. A host loads only libraries that report
/// the same number.
pub const ABI_VERSION: u32 = 1;

/// Name of the exported function returning the library's ABI version.
pub const ABI_VERSION_SYMBOL: &str = "handoff_handler_abi_version";

/// Name of the exported request entry point.
pub const ENTRY_SYMBOL: &str = "handler_entry";

/// `handler_entry` filled the response normally.
pub const OUTCOME_OK: i32 = 0;

/// The handler panicked; the library caught the panic and filled a 500
/// response whose body describes it.
pub const OUTCOME_PANICKED: i32 = 1;

/// Type of [`ABI_VERSION_SYMBOL`].
pub type AbiVersionFn = unsafe extern "C" fn() -> u32;

/// Type of [`ENTRY_SYMBOL`].
///
/// # Safety
///
/// `context` and `request` must point to valid values whose slices stay
/// valid for the duration of the call; `response` must point to writable
/// memory for one [`AbiResponse`]. After an [`OUTCOME_OK`] or
/// [`OUTCOME_PANICKED`] return, the caller must call the response's
/// `release` (when it is not `None`) exactly once, and not touch the
/// response's pointers afterwards.
pub type EntryFn = unsafe extern "C" fn(
    context: *const AbiContext,
    request: *const AbiRequest,
    response: *mut AbiResponse,
) -> i32;

/// Type of [`AbiResponse::release`].
pub type ReleaseFn = unsafe extern "C" fn(response: *mut AbiResponse);

/// A borrowed run of bytes: `len` bytes at `ptr` (`ptr` may be dangling
/// when `len` is 0, never null).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AbiSlice {
    /// First byte.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl AbiSlice {
    /// A slice borrowing `bytes`.
    pub fn of(bytes: &[u8]) -> AbiSlice {
        AbiSlice {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// The empty slice.
    pub fn empty() -> AbiSlice {
        AbiSlice::of(&[])
    }
}

/// One header: a name and a value, both bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AbiHeader {
    /// Header name.
    pub name: AbiSlice,
    /// Header value.
    pub value: AbiSlice,
}

/// What the host tells the handler about the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AbiContext {
    /// The endpoint id (UTF-8).
    pub endpoint: AbiSlice,
    /// The host's id for this request.
    pub request_id: u64,
}

/// A request, borrowed from the host for the duration of the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AbiRequest {
    /// Method (UTF-8), e.g. `GET`.
    pub method: AbiSlice,
    /// Path with query (UTF-8), e.g. `/users/7?full=1`.
    pub path: AbiSlice,
    /// First of `header_count` headers.
    pub headers: *const AbiHeader,
    /// Number of headers.
    pub header_count: usize,
    /// The body.
    pub body: AbiSlice,
}

/// A response, owned by the library until the host calls `release`.
#[repr(C)]
#[derive(Debug)]
pub struct AbiResponse {
    /// Status code (100 to 999).
    pub status: u16,
    /// First of `header_count` headers.
    pub headers: *const AbiHeader,
    /// Number of headers.
    pub header_count: usize,
    /// The body.
    pub body: AbiSlice,
    /// Frees what the response points to, inside the library. `None` when
    /// the library filled nothing (the host then answers 500).
    pub release: Option<ReleaseFn>,
    /// The library's private allocation behind the pointers above.
    pub owner: *mut c_void,
}

impl AbiResponse {
    /// A response with nothing filled in, for the host to pass to
    /// `handler_entry`.
    pub fn unfilled() -> AbiResponse {
        AbiResponse {
            status: 0,
            headers: std::ptr::null(),
            header_count: 0,
            body: AbiSlice::empty(),
            release: None,
            owner: std::ptr::null_mut(),
        }
    }
}

/// A request laid out for the ABI, borrowing a [`Request`]: the host builds
/// one per call and passes [`RequestView::abi`] to `handler_entry`.
pub struct RequestView<'request> {
    request: &'request Request,
    headers: Vec<AbiHeader>,
}

impl<'request> RequestView<'request> {
    /// Lays out `request`'s headers for the ABI.
    pub fn new(request: &'request Request) -> RequestView<'request> {
        let headers = request
            .headers
            .iter()
            .map(|(name, value)| AbiHeader {
                name: AbiSlice::of(name.as_bytes()),
                value: AbiSlice::of(value.as_bytes()),
            })
            .collect();
        RequestView { request, headers }
    }

    /// The ABI struct; its pointers are valid while `self` lives.
    pub fn abi(&self) -> AbiRequest {
        AbiRequest {
            method: AbiSlice::of(self.request.method.as_bytes()),
            path: AbiSlice::of(self.request.path.as_bytes()),
            headers: self.headers.as_ptr(),
            header_count: self.headers.len(),
            body: AbiSlice::of(&self.request.body),
        }
    }
}
