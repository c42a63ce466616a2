//! The library side of the ABI: what [`crate::export_handler!`] expands to
//! calls into here. This is the SDK's only unsafe code.
//!
//! Hazards handled here:
//! - A panic must not unwind out of `handler_entry` (that aborts the host):
//!   the handler runs under `catch_unwind`, and so does dropping the panic
//!   payload, whose own `Drop` could panic.
//! - The host's bytes are not trusted to be UTF-8: they are converted
//!   lossily, never assumed.
//! - The response is allocated and freed by this library's allocator only.
#![allow(
    unsafe_code,
    reason = "reading the host's #[repr(C)] request and handing back a response are raw-pointer operations; they are confined to this file"
)]

use std::any::Any;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::{
    AbiContext, AbiHeader, AbiRequest, AbiResponse, AbiSlice, OUTCOME_OK, OUTCOME_PANICKED,
};
use crate::{Context, Request, Response};

/// The memory a filled [`AbiResponse`] points into.
struct OwnedResponse {
    response: Response,
    headers: Vec<AbiHeader>,
}

/// Runs `handler` for one ABI call. Called by the code that
/// [`crate::export_handler!`] generates; not for direct use.
///
/// # Safety
///
/// The pointers must satisfy the contract of [`crate::abi::EntryFn`].
#[doc(hidden)]
pub unsafe fn entry(
    context: *const AbiContext,
    request: *const AbiRequest,
    response: *mut AbiResponse,
    handler: impl FnOnce(&Context, Request) -> Response,
) -> i32 {
    // SAFETY: the caller guarantees (EntryFn contract) that `context` and
    // `request` point to valid values whose slices live for this call.
    let (context, request) = unsafe { (read_context(&*context), read_request(&*request)) };
    let (outcome, reply) = match catch_unwind(AssertUnwindSafe(|| handler(&context, request))) {
        Ok(reply) => (OUTCOME_OK, reply),
        Err(payload) => {
            let message = panic_message(&*payload);
            // Dropping the payload runs user code; keep its panic inside too.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            (
                OUTCOME_PANICKED,
                Response::json(
                    500,
                    &serde_json::json!({ "error": "handler panicked", "detail": message }),
                ),
            )
        }
    };
    // SAFETY: the caller guarantees `response` is writable for one
    // AbiResponse (EntryFn contract).
    unsafe { fill_response(&mut *response, reply) };
    outcome
}

/// Frees a response filled by [`entry`]; installed as its `release`.
///
/// # Safety
///
/// `response` must be a response filled by [`entry`] and not yet released.
unsafe extern "C" fn release(response: *mut AbiResponse) {
    // SAFETY: per this function's contract the response was filled by
    // `entry`, so `owner` came from Box::into_raw of an OwnedResponse and
    // has not been freed yet.
    let response = unsafe { &mut *response };
    if !response.owner.is_null() {
        // SAFETY: see above; the pointer is cleared so a second call is a
        // no-op rather than a double free.
        drop(unsafe { Box::from_raw(response.owner.cast::<OwnedResponse>()) });
    }
    response.owner = std::ptr::null_mut();
    response.headers = std::ptr::null();
    response.header_count = 0;
    response.body = AbiSlice::empty();
    response.release = None;
}

fn fill_response(out: &mut AbiResponse, response: Response) {
    let mut owned = Box::new(OwnedResponse {
        response,
        headers: Vec::new(),
    });
    // The header array points into the strings owned by the same box; the
    // box's heap contents do not move when the box itself is moved.
    let headers: Vec<AbiHeader> = owned
        .response
        .headers
        .iter()
        .map(|(name, value)| AbiHeader {
            name: AbiSlice::of(name.as_bytes()),
            value: AbiSlice::of(value.as_bytes()),
        })
        .collect();
    owned.headers = headers;
    out.status = owned.response.status;
    out.headers = owned.headers.as_ptr();
    out.header_count = owned.headers.len();
    out.body = AbiSlice::of(&owned.response.body);
    out.release = Some(release);
    out.owner = Box::into_raw(owned).cast::<c_void>();
}

/// Copies a response filled by a library's `handler_entry` into a
/// [`Response`] and releases the library's memory. Returns `None` when the
/// library filled nothing (`release` is `None`) or the status is outside
/// 100..=999; the response is released in every case.
///
/// # Safety
///
/// `response` must have been passed to a library's `handler_entry`, which
/// returned, and must not have been released yet; the library must still be
/// loaded.
pub unsafe fn take_response(response: &mut AbiResponse) -> Option<Response> {
    let release = response.release?;
    // SAFETY: per this function's contract the library filled the response:
    // its header array and slices are valid until `release` is called below.
    let copied = unsafe {
        Response {
            status: response.status,
            headers: read_headers(response.headers, response.header_count),
            body: bytes(response.body).to_vec(),
        }
    };
    // SAFETY: `release` is the library's own function for this response,
    // called once; nothing reads the response's pointers afterwards.
    unsafe { release(response) };
    (100..=999).contains(&copied.status).then_some(copied)
}

/// # Safety
///
/// `slice` must describe `len` readable bytes valid for `'a`.
unsafe fn bytes<'a>(slice: AbiSlice) -> &'a [u8] {
    if slice.len == 0 {
        return &[];
    }
    // SAFETY: per this function's contract.
    unsafe { std::slice::from_raw_parts(slice.ptr, slice.len) }
}

/// # Safety
///
/// The slices in `context` must be valid (EntryFn contract).
unsafe fn read_context(context: &AbiContext) -> Context {
    // SAFETY: per this function's contract.
    let endpoint = unsafe { bytes(context.endpoint) };
    Context::new(String::from_utf8_lossy(endpoint), context.request_id)
}

/// # Safety
///
/// The slices and the header array in `request` must be valid (EntryFn
/// contract).
unsafe fn read_request(request: &AbiRequest) -> Request {
    // SAFETY: per this function's contract, every slice below is valid.
    unsafe {
        Request {
            method: String::from_utf8_lossy(bytes(request.method)).into_owned(),
            path: String::from_utf8_lossy(bytes(request.path)).into_owned(),
            headers: read_headers(request.headers, request.header_count),
            body: bytes(request.body).to_vec(),
        }
    }
}

/// # Safety
///
/// `headers` must point to `count` valid headers whose slices are valid
/// (any pointer when `count` is 0).
unsafe fn read_headers(headers: *const AbiHeader, count: usize) -> Vec<(String, String)> {
    if count == 0 {
        return Vec::new();
    }
    // SAFETY: per this function's contract.
    let headers = unsafe { std::slice::from_raw_parts(headers, count) };
    headers
        .iter()
        .map(|header| {
            // SAFETY: per this function's contract, each header's slices are
            // valid.
            let (name, value) = unsafe { (bytes(header.name), bytes(header.value)) };
            (
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            )
        })
        .collect()
}

/// The text of a panic payload (`&str` or `String`, as `panic!` makes them).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
