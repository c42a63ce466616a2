//! The ABI round trip in one process: the macro's entry point is called the
//! way a host calls it, through raw pointers.
#![allow(
    unsafe_code,
    reason = "these tests call the exported extern \"C\" entry point as a host would"
)]
#![allow(clippy::unwrap_used, reason = "tests")]

use crate::abi::{
    ABI_VERSION, AbiContext, AbiResponse, AbiSlice, OUTCOME_OK, OUTCOME_PANICKED, RequestView,
    take_response,
};
use crate::{Context, HandlerError, Request, Response};

fn handler(context: &Context, request: Request) -> Result<Response, HandlerError> {
    match request.path.as_str() {
        "/panic" => panic!("boom at {}", context.request_id()),
        "/json" => {
            let value: serde_json::Value = request.json()?;
            Ok(Response::ok(value))
        }
        _ => Ok(
            Response::text(201, format!("{} {}", context.endpoint(), request.method))
                .with_header("x-path", request.path.clone())
                .with_header("x-seen", request.header("X-Custom").unwrap_or("none"))
                .with_body(request.body),
        ),
    }
}

crate::export_handler!(handler);

fn call(endpoint: &str, request: &Request) -> (i32, Option<Response>) {
    let view = RequestView::new(request);
    let abi_request = view.abi();
    let context = AbiContext {
        endpoint: AbiSlice::of(endpoint.as_bytes()),
        request_id: 42,
    };
    let mut response = AbiResponse::unfilled();
    // SAFETY: the context, request and response outlive the call.
    let outcome = unsafe { handler_entry(&context, &abi_request, &mut response) };
    // SAFETY: the entry point returned and filled the response once.
    let response = unsafe { take_response(&mut response) };
    (outcome, response)
}

#[test]
fn abi_version_is_exported() {
    assert_eq!(handoff_handler_abi_version(), ABI_VERSION);
}

#[test]
fn request_and_response_cross_the_boundary() {
    let request = Request::new("PUT", "/things/1?x=y")
        .with_header("x-custom", "yes")
        .with_body(vec![0u8, 159, 146, 150]);
    let (outcome, response) = call("things", &request);
    assert_eq!(outcome, OUTCOME_OK);
    let response = response.unwrap();
    assert_eq!(response.status, 201);
    assert_eq!(response.header("X-PATH"), Some("/things/1?x=y"));
    assert_eq!(response.header("x-seen"), Some("yes"));
    assert_eq!(response.body, vec![0u8, 159, 146, 150]);
}

#[test]
fn a_panic_becomes_a_500_inside_the_library() {
    let (outcome, response) = call("things", &Request::new("GET", "/panic"));
    assert_eq!(outcome, OUTCOME_PANICKED);
    let response = response.unwrap();
    assert_eq!(response.status, 500);
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["detail"], "boom at 42");
}

#[test]
fn handler_errors_map_to_their_status() {
    let request = Request::new("POST", "/json").with_body("{not json");
    let (outcome, response) = call("things", &request);
    assert_eq!(outcome, OUTCOME_OK);
    assert_eq!(response.unwrap().status, 400);
}

#[test]
fn an_unfilled_response_is_none() {
    let mut response = AbiResponse::unfilled();
    // SAFETY: an unfilled response has no release function; nothing is read.
    assert!(unsafe { take_response(&mut response) }.is_none());
}

#[test]
fn panic_messages_are_recovered_from_both_payload_kinds() {
    let literal = std::panic::catch_unwind(|| panic!("literal")).unwrap_err();
    let formatted = std::panic::catch_unwind(|| panic!("formatted {}", 7)).unwrap_err();
    assert_eq!(crate::panic_message(&*literal), "literal");
    assert_eq!(crate::panic_message(&*formatted), "formatted 7");
}

/// The layouts documented in ARCHITECTURE.md ("Handler ABI"); a change here
/// is an ABI change and must bump ABI_VERSION.
#[cfg(target_pointer_width = "64")]
#[test]
fn abi_layouts_are_pinned() {
    use crate::abi::{AbiHeader, AbiRequest};
    use std::mem::{align_of, offset_of, size_of};

    assert_eq!(ABI_VERSION, 1);
    assert_eq!((size_of::<AbiSlice>(), align_of::<AbiSlice>()), (16, 8));
    assert_eq!(
        (offset_of!(AbiSlice, ptr), offset_of!(AbiSlice, len)),
        (0, 8)
    );
    assert_eq!(size_of::<AbiHeader>(), 32);
    assert_eq!(
        (offset_of!(AbiHeader, name), offset_of!(AbiHeader, value)),
        (0, 16)
    );
    assert_eq!(size_of::<AbiContext>(), 24);
    assert_eq!(
        (
            offset_of!(AbiContext, endpoint),
            offset_of!(AbiContext, request_id)
        ),
        (0, 16)
    );
    assert_eq!(size_of::<AbiRequest>(), 64);
    assert_eq!(
        [
            offset_of!(AbiRequest, method),
            offset_of!(AbiRequest, path),
            offset_of!(AbiRequest, headers),
            offset_of!(AbiRequest, header_count),
            offset_of!(AbiRequest, body),
        ],
        [0, 16, 32, 40, 48]
    );
    assert_eq!(size_of::<AbiResponse>(), 56);
    assert_eq!(
        [
            offset_of!(AbiResponse, status),
            offset_of!(AbiResponse, headers),
            offset_of!(AbiResponse, header_count),
            offset_of!(AbiResponse, body),
            offset_of!(AbiResponse, release),
            offset_of!(AbiResponse, owner),
        ],
        [0, 8, 16, 24, 40, 48]
    );
    assert_eq!(
        (crate::abi::ABI_VERSION_SYMBOL, crate::abi::ENTRY_SYMBOL),
        ("handoff_handler_abi_version", "handler_entry")
    );
}
