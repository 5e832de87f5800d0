//! The router's HTTP API over the engine: `POST /v1/chat/completions` (JSON
//! and SSE), `GET /v1/models`, `PATCH /v1/admin/models`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::app::App;
use crate::catalog::CatalogPatch;
use crate::provider::{ChatRequest, ProviderError, StreamItem};
use crate::retry::Attempt;
use crate::router::{RouteError, Served};
use crate::tier::Tier;

/// Largest request body the router accepts.
pub const MAX_REQUEST_BODY: usize = 4 << 20;

/// Hears about every routed request, e.g. to keep a journal of attempts.
pub trait RouteObserver: Send + Sync + 'static {
    fn routed(&self, model: &str, attempts: &[Attempt], outcome: Result<(&str, Tier), &RouteError>);

    /// [`RouteObserver::routed`] with the client's `x-request-id`, when it
    /// sent a readable one: lets an observer match a routed request to the
    /// client's call while several are in flight.
    fn routed_request(
        &self,
        request_id: Option<&str>,
        model: &str,
        attempts: &[Attempt],
        outcome: Result<(&str, Tier), &RouteError>,
    ) {
        let _ = request_id;
        self.routed(model, attempts, outcome);
    }
}

/// Observes nothing.
pub struct NoObserver;

impl RouteObserver for NoObserver {
    fn routed(&self, _: &str, _: &[Attempt], _: Result<(&str, Tier), &RouteError>) {}
}

#[derive(Clone)]
struct Api {
    app: Arc<App>,
    observer: Arc<dyn RouteObserver>,
}

/// The router's HTTP surface.
pub fn router(app: Arc<App>, observer: Arc<dyn RouteObserver>) -> axum::Router {
    axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/v1/admin/models", patch(admin_models))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .with_state(Api { app, observer })
}

/// An OpenAI-style error response.
fn error(status: u16, kind: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = json!({ "error": { "message": message, "type": kind, "code": status.as_u16() } });
    (status, axum::Json(body)).into_response()
}

fn route_error_kind(e: &RouteError) -> &'static str {
    match e {
        RouteError::UnknownModel { .. } | RouteError::Inactive { .. } => "model_not_found",
        RouteError::NoProviderForPubKey { .. } => "no_provider_for_pub_key",
        RouteError::NoProviders { .. } => "no_provider_available",
        RouteError::Provider { .. } => "upstream_error",
    }
}

/// What the client is told. An inactive id reads exactly like an unknown one
/// (R6/R13: the catalog gate does not reveal what it hides); the attempt log
/// keeps the distinction.
fn client_message(e: &RouteError) -> String {
    match e {
        RouteError::Inactive { model } => RouteError::UnknownModel {
            model: model.clone(),
        }
        .to_string(),
        e => e.to_string(),
    }
}

async fn chat(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let body: serde_json::Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => map,
        _ => {
            return error(
                400,
                "invalid_request_error",
                "request body must be a JSON object",
            )
        }
    };
    let Some(model) = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return error(400, "invalid_request_error", "`model` is required");
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let req = ChatRequest {
        model,
        body,
        model_pub_key: header("x-model-pub-key"),
        client_pub_key: header("x-client-pub-key"),
    };
    let request_id = header("x-request-id");
    let routed = api.app.router().chat(req, stream).await;
    let outcome = routed
        .result
        .as_ref()
        .map(|s| (s.provider().as_str(), s.tier()));
    api.observer.routed_request(
        request_id.as_deref(),
        &routed.model,
        &routed.attempts,
        outcome,
    );
    match routed.result {
        Err(e) => error(e.status(), route_error_kind(&e), &client_message(&e)),
        Ok(Served::Json { response, .. }) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            response.body,
        )
            .into_response(),
        Ok(Served::Stream { stream, .. }) => {
            let model = routed.model;
            let sse = stream_to_sse(stream, model);
            (
                [
                    (axum::http::header::CONTENT_TYPE, "text/event-stream"),
                    (axum::http::header::CACHE_CONTROL, "no-cache"),
                ],
                Body::from_stream(sse),
            )
                .into_response()
        }
    }
}

/// Frames provider items as SSE. Only an authenticated `Done` produces the
/// client's `[DONE]`; an error, or an end without `Done`, produces an error
/// event and no `[DONE]` (no fake-success stream, R23).
fn stream_to_sse(
    stream: crate::provider::ChatStream,
    model: String,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let state = Some((stream, model));
    futures_util::stream::unfold(state, |state| async move {
        let (mut stream, model) = state?;
        let frame = match stream.next().await {
            Some(Ok(StreamItem::Chunk(data))) => {
                let mut out = Vec::with_capacity(data.len() + 8);
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\n\n");
                return Some((Ok(Bytes::from(out)), Some((stream, model))));
            }
            Some(Ok(StreamItem::Done)) => Bytes::from_static(b"data: [DONE]\n\n"),
            Some(Err(e)) => error_event(&model, &e),
            None => error_event(&model, &ProviderError::Truncated),
        };
        Some((Ok(frame), None))
    })
}

fn error_event(model: &str, e: &ProviderError) -> Bytes {
    let message = format!("model {model}: {}", crate::retry::sanitize(&e.to_string()));
    let body = json!({ "error": { "message": message, "type": "stream_error" } });
    Bytes::from(format!("data: {body}\n\n"))
}

/// Active catalog ids, sorted.
async fn models(State(api): State<Api>) -> Response {
    let view = api.app.registry().view();
    let data: Vec<Value> = view
        .catalog
        .iter()
        .filter(|(_, row)| row.active)
        .map(|(id, _)| json!({ "id": id, "object": "model", "owned_by": "tiersim" }))
        .collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

async fn admin_models(State(api): State<Api>, body: Bytes) -> Response {
    let patch: CatalogPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                400,
                "invalid_request_error",
                &format!("bad admin batch: {e}"),
            )
        }
    };
    match api.app.admin_patch(patch.models).await {
        Ok(rows) => axum::Json(json!({ "models": rows })).into_response(),
        Err(e) => error(
            502,
            "catalog_error",
            &crate::retry::sanitize(&e.to_string()),
        ),
    }
}
