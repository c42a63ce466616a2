//! The admin API, served on a loopback address only.
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /endpoints` | endpoint states, routes, last errors, and registry statistics |
//! | `GET /stats` | registry statistics |
//! | `GET /status` | the gateway's snapshot: accepting, connections, requests in flight, its pid |
//! | `PUT /endpoints/{id}/source` | stores handler source (body: Rust) |
//! | `POST /endpoints/{id}/compile` | builds the stored source; 422 with the compiler's output on failure |
//! | `POST /endpoints/{id}/deploy` | loads the built library (insert, or graceful swap); optional JSON body `{"path_prefix", "host", "timeout_ms"}` |
//! | `DELETE /endpoints/{id}` | drains the endpoint (503 meanwhile), then drops it |
//! | `POST /reload` | applies the config file now |
//! | `POST /wait-drained?timeout_ms=N` | waits until no replaced handler is loaded |

use std::sync::Arc;
use std::time::Duration;

use handoff::registry::{HandlerSource, LifecycleEvent, library_file_name};
use http_body_util::{BodyExt, Limited};
use hyper::{Method, Request as HyperRequest, Response as HyperResponse, StatusCode};
use serde_json::{Value, json};

use crate::config::{DEFAULT_REQUEST_TIMEOUT, Route};
use crate::gateway::{EndpointRecord, Origin, Shared, lock};
use crate::http::{self, Body, MAX_BODY};
use crate::prefixed::Tracked;

/// Answers one admin request. Connections come from the gateway's accept
/// loop ([`Shared::serve_listener`] with [`crate::gateway::Service::Admin`]),
/// which refuses non-loopback peers and drains admin connections with the
/// public ones.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: HyperRequest<Tracked>,
) -> HyperResponse<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large or unreadable",
            );
        }
    };
    match (&method, segments.as_slice()) {
        (&Method::GET, ["endpoints"]) => endpoints(&shared),
        (&Method::GET, ["stats"]) => ok(&json!(shared.registry.stats())),
        (&Method::GET, ["status"]) => {
            let mut status = json!(shared.snapshot());
            status["pid"] = json!(std::process::id());
            ok(&status)
        }
        (&Method::PUT, ["endpoints", id, "source"]) => put_source(&shared, id, &body),
        (&Method::POST, ["endpoints", id, "compile"]) => compile(&shared, id).await,
        (&Method::POST, ["endpoints", id, "deploy"]) => deploy(&shared, id, &body).await,
        (&Method::DELETE, ["endpoints", id]) => remove(&shared, id),
        (&Method::POST, ["reload"]) => reload(&shared).await,
        (&Method::POST, ["wait-drained"]) => wait_drained(&shared, &query).await,
        _ => error(StatusCode::NOT_FOUND, "no such admin operation"),
    }
}

fn ok(value: &Value) -> HyperResponse<Body> {
    http::json(StatusCode::OK, value)
}

fn error(status: StatusCode, message: &str) -> HyperResponse<Body> {
    http::json(status, &json!({ "error": message }))
}

fn endpoints(shared: &Shared) -> HyperResponse<Body> {
    let stats = shared.registry.stats();
    let records = lock(&shared.records);
    let endpoints: Vec<Value> = records
        .iter()
        .map(|(id, record)| {
            let serving = stats.endpoints.iter().find(|endpoint| &endpoint.id == id);
            json!({
                "id": id,
                "state": record.state,
                "origin": record.origin,
                "route": record.route,
                "compiled": record.compiled,
                "last_error": record.last_error,
                "version": serving.map(|endpoint| endpoint.version),
                "active_requests": serving.map(|endpoint| endpoint.active_requests),
            })
        })
        .collect();
    ok(&json!({ "endpoints": endpoints, "stats": stats }))
}

fn put_source(shared: &Shared, id: &str, body: &[u8]) -> HyperResponse<Body> {
    if let Err(problem) = handoff::registry::validate_endpoint_id(id) {
        return error(StatusCode::BAD_REQUEST, &problem.to_string());
    }
    let Ok(source) = std::str::from_utf8(body) else {
        return error(StatusCode::BAD_REQUEST, "the source is not UTF-8");
    };
    let mut records = lock(&shared.records);
    let record = records
        .entry(id.to_owned())
        .or_insert_with(|| EndpointRecord::new(Origin::Admin));
    if let Err(refused) = record.apply(LifecycleEvent::SourcePut) {
        return error(
            StatusCode::CONFLICT,
            &format!("endpoint is {}: cannot take new source", refused.state),
        );
    }
    record.source = Some(source.to_owned());
    ok(&json!({ "id": id, "state": record.state }))
}

async fn compile(shared: &Arc<Shared>, id: &str) -> HyperResponse<Body> {
    let source = match lock(&shared.records).get(id) {
        Some(EndpointRecord {
            source: Some(source),
            ..
        }) => source.clone(),
        _ => return error(StatusCode::CONFLICT, "no source stored for this endpoint"),
    };
    let builder_shared = Arc::clone(shared);
    let endpoint = id.to_owned();
    let built =
        tokio::task::spawn_blocking(move || builder_shared.builder.build(&endpoint, &source)).await;
    let built = match built {
        Ok(built) => built,
        Err(join_error) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, &join_error.to_string());
        }
    };
    let mut records = lock(&shared.records);
    let Some(record) = records.get_mut(id) else {
        return error(
            StatusCode::CONFLICT,
            "the endpoint went away during the build",
        );
    };
    match built {
        Ok(library) => {
            record.compiled = Some(library.path.clone());
            record.last_error = None;
            // A refused event means the endpoint is draining; the library
            // is built all the same.
            let _ = record.apply(LifecycleEvent::BuildSucceeded);
            ok(&json!({
                "id": id,
                "state": record.state,
                "library": library.path,
                "elapsed_ms": u64::try_from(library.elapsed.as_millis()).unwrap_or(u64::MAX),
            }))
        }
        Err(failure) => {
            let _ = record.apply(LifecycleEvent::BuildFailed);
            let (message, compiler_output) = match &failure {
                handoff::Error::Build {
                    compiler_output, ..
                } => ("build failed".to_owned(), compiler_output.clone()),
                other => (other.to_string(), String::new()),
            };
            record.last_error = Some(message.clone());
            http::json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({
                    "id": id,
                    "state": record.state,
                    "error": message,
                    "compiler_output": compiler_output,
                }),
            )
        }
    }
}

async fn deploy(shared: &Arc<Shared>, id: &str, body: &[u8]) -> HyperResponse<Body> {
    if let Err(problem) = handoff::registry::validate_endpoint_id(id) {
        return error(StatusCode::BAD_REQUEST, &problem.to_string());
    }
    let options: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(options) => options,
            Err(problem) => return error(StatusCode::BAD_REQUEST, &problem.to_string()),
        }
    };
    let (library, route) = {
        let records = lock(&shared.records);
        let record = records.get(id);
        let library = record
            .and_then(|record| record.compiled.clone())
            .unwrap_or_else(|| shared.builder.handlers_dir().join(library_file_name(id)));
        let existing = record.and_then(|record| record.route.clone());
        let asked = options
            .get("path_prefix")
            .and_then(Value::as_str)
            .map(|prefix| Route {
                host: options
                    .get("host")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                path_prefix: prefix.to_owned(),
                timeout: options
                    .get("timeout_ms")
                    .and_then(Value::as_u64)
                    .map_or(DEFAULT_REQUEST_TIMEOUT, Duration::from_millis),
            });
        let route = asked.or(existing).unwrap_or_else(|| Route {
            host: None,
            path_prefix: format!("/{id}"),
            timeout: DEFAULT_REQUEST_TIMEOUT,
        });
        (library, route)
    };
    let deploy_shared = Arc::clone(shared);
    let endpoint = id.to_owned();
    let drain_timeout = shared.drain_timeout();
    let deployed = tokio::task::spawn_blocking(move || {
        deploy_shared.deploy(
            &endpoint,
            HandlerSource::library(library),
            drain_timeout,
            Origin::Admin,
            Some(route),
        )
    })
    .await;
    match deployed {
        Ok(Ok(outcome)) => ok(&outcome),
        Ok(Err(failure)) => http::json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({ "id": id, "error": failure.to_string() }),
        ),
        Err(join_error) => error(StatusCode::INTERNAL_SERVER_ERROR, &join_error.to_string()),
    }
}

fn remove(shared: &Arc<Shared>, id: &str) -> HyperResponse<Body> {
    if !lock(&shared.records).contains_key(id) {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    }
    shared.start_removal(id, shared.drain_timeout());
    http::json(
        StatusCode::ACCEPTED,
        &json!({ "id": id, "state": "draining" }),
    )
}

async fn reload(shared: &Arc<Shared>) -> HyperResponse<Body> {
    let reload_shared = Arc::clone(shared);
    match tokio::task::spawn_blocking(move || reload_shared.reload()).await {
        Ok(Ok(changes)) => ok(&json!({ "changes": changes, "reloads": *shared.reloads.borrow() })),
        Ok(Err(problem)) => error(StatusCode::UNPROCESSABLE_ENTITY, &problem),
        Err(join_error) => error(StatusCode::INTERNAL_SERVER_ERROR, &join_error.to_string()),
    }
}

async fn wait_drained(shared: &Arc<Shared>, query: &str) -> HyperResponse<Body> {
    let timeout = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("timeout_ms="))
        .and_then(|value| value.parse().ok())
        .map_or(shared.drain_timeout(), Duration::from_millis);
    let registry = Arc::clone(&shared.registry);
    match tokio::task::spawn_blocking(move || registry.wait_drained(timeout)).await {
        Ok(drained) => ok(&json!({ "drained": drained, "stats": shared.registry.stats() })),
        Err(join_error) => error(StatusCode::INTERNAL_SERVER_ERROR, &join_error.to_string()),
    }
}
