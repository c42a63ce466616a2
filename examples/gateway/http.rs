//! Conversions between hyper's types and the handler SDK's, and small
//! response helpers shared by the gateway and its admin API.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Request as HyperRequest, Response as HyperResponse, StatusCode};

use handoff::registry::{Request, Response};

use crate::prefixed::Tracked;

/// The body type of every response the gateway sends.
pub type Body = Full<Bytes>;

/// Largest request body the gateway reads.
pub const MAX_BODY: usize = 1024 * 1024;

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> HyperResponse<Body> {
    let mut response = HyperResponse::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Asks hyper to close the connection after this response.
pub fn close_after(response: &mut HyperResponse<Body>) {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
}

/// The request's host, without port.
pub fn host(request: &HyperRequest<Tracked>) -> Option<String> {
    let host = request
        .headers()
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| request.uri().host())?;
    let without_port = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|byte| byte.is_ascii_digit()) => name,
        _ => host,
    };
    Some(without_port.to_owned())
}

/// Reads the whole request (body up to [`MAX_BODY`]) into the SDK's type.
pub async fn read_request(request: HyperRequest<Tracked>) -> Result<Request, HyperResponse<Body>> {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_BODY).collect().await.map_err(|error| {
        json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &serde_json::json!({ "error": "cannot read the request body", "detail": error.to_string() }),
        )
    })?;
    let path = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_owned(),
        |path| path.as_str().to_owned(),
    );
    Ok(Request {
        method: parts.method.as_str().to_owned(),
        path,
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_bytes().to_vec(),
    })
}

/// The SDK's response as hyper's; an invalid status or header is a 502.
pub fn to_hyper(response: Response) -> HyperResponse<Body> {
    let Ok(status) = StatusCode::from_u16(response.status) else {
        return json(
            StatusCode::BAD_GATEWAY,
            &serde_json::json!({ "error": "handler answered an invalid status" }),
        );
    };
    let mut converted = HyperResponse::new(Full::new(Bytes::from(response.body)));
    *converted.status_mut() = status;
    for (name, value) in response.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            return json(
                StatusCode::BAD_GATEWAY,
                &serde_json::json!({ "error": "handler answered an invalid header" }),
            );
        };
        converted.headers_mut().append(name, value);
    }
    converted
}
