//! The router's HTTP API over the engine: `POST /v1/chat/completions` (JSON
//! and SSE), `GET /v1/models`, `PATCH /v1/admin/models`.
//!
//! Every error reply, the router's own and axum's, is the R26 envelope
//! `{"error":{"message","type","param","code"}}`. A chat request is read,
//! deserialized and validated (R27, then the key headers of R16) before
//! `Router::chat` sees it; an admin request is authorised and its batch
//! validated (R13) before anything is written.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, patch, post};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin;
use crate::app::{AdminError, App};
use crate::catalog::CatalogPatch;
use crate::client_error;
use crate::config::{AdminKey, Profile};
use crate::echo::echo;
use crate::near::SIGNING_KEY_HEX_LEN;
use crate::provider::{ChatRequest, ProviderError, StreamItem};
use crate::retry::Attempt;
use crate::router::{Attribution, RouteError, Served};
use crate::tier::Tier;

/// Largest request body the router accepts; a larger one is a 413 envelope.
pub const MAX_REQUEST_BODY: usize = 4 << 20;

/// Largest body the router may send upstream for a request it accepted.
/// Re-serializing the parsed body can grow it: a number written `1e15` (4
/// bytes) is forwarded as `1000000000000000.0` (18 bytes), so a body grows
/// at most 4.5 times, plus the upstream model name. Upstream hosts that
/// accept this much never refuse a request the router accepted.
pub const MAX_FORWARDED_BODY: usize = 5 * MAX_REQUEST_BODY;

/// Longest `x-request-id` passed to the [`RouteObserver`].
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The hex lengths `x-client-pub-key` may have (R16, R27.3): an ed25519 key
/// (32 bytes) or an uncompressed secp256k1 key without its prefix (64
/// bytes), the two signing algorithms of NEAR's client E2EE.
pub const CLIENT_PUB_KEY_HEX_LENS: [usize; 2] = [64, 128];

/// The roles a message may have (R27.2).
pub const MESSAGE_ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// Hears about every routed request, e.g. to keep a journal of attempts and
/// usage attribution (R54: a failed request records none).
pub trait RouteObserver: Send + Sync + 'static {
    fn routed(&self, model: &str, attempts: &[Attempt], outcome: Result<&Attribution, &RouteError>);

    /// [`RouteObserver::routed`] with the client's `x-request-id`, when it
    /// sent a readable one: lets an observer match a routed request to the
    /// client's call while several are in flight.
    fn routed_request(
        &self,
        request_id: Option<&str>,
        model: &str,
        attempts: &[Attempt],
        outcome: Result<&Attribution, &RouteError>,
    ) {
        let _ = request_id;
        self.routed(model, attempts, outcome);
    }
}

/// Observes nothing.
pub struct NoObserver;

impl RouteObserver for NoObserver {
    fn routed(&self, _: &str, _: &[Attempt], _: Result<&Attribution, &RouteError>) {}
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
        .route("/v1/completions", any(not_implemented))
        .route("/v1/embeddings", any(not_implemented))
        .route("/v1/moderations", any(not_implemented))
        .route("/v1/responses", any(not_implemented))
        .route("/v1/images/variations", any(not_implemented))
        .route("/v1/audio/translations", any(not_implemented))
        .fallback(|| async {
            should_not_retry(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "Not found",
            ))
        })
        .method_not_allowed_fallback(|| async {
            should_not_retry(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "Method not allowed",
            ))
        })
        .with_state(Api { app, observer })
}

/// R32: the only replies that tell a client not to retry: an unknown route,
/// a wrong method, a known but unimplemented OpenAI endpoint.
fn should_not_retry(e: ApiError) -> Response {
    let mut resp = e.into_response();
    resp.headers_mut().insert(
        "x-should-retry",
        axum::http::HeaderValue::from_static("false"),
    );
    resp
}

async fn not_implemented() -> Response {
    should_not_retry(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "This endpoint is not implemented by this router.",
    ))
}

/// An error reply in the R26 envelope. `param` names the offending field
/// where a rule says so; `code` is always null on this API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
        }
    }

    /// A 400 `invalid_request_error` (R27).
    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    fn param(mut self, param: &'static str) -> ApiError {
        self.param = Some(param);
        self
    }

    /// The envelope's JSON.
    pub fn body(&self) -> Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": Value::Null,
        }})
    }
}

impl IntoResponse for ApiError {
    /// R32: every 429 carries `Retry-After` (none of this router's own 429s
    /// sets one, so the default always applies).
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(client_error::RETRY_AFTER_SECS),
            );
        }
        resp
    }
}

/// What the client is told for a request that was not served: the one
/// mapping of `client_error::reply` (R28–R31) in the R26 envelope.
fn client_error(e: &RouteError) -> ApiError {
    let reply = client_error::reply(e);
    ApiError {
        status: StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY),
        kind: reply.kind,
        message: reply.message,
        param: reply.param,
    }
}

/// R53: the `x-serving-provider` value naming the tier that served.
pub fn serving_provider(tier: Tier) -> &'static str {
    match tier {
        Tier::Near => "near",
        Tier::Attested3p => "chutes",
        Tier::NonAttested => "non-attested",
    }
}

/// Reads the whole body, at most [`MAX_REQUEST_BODY`] bytes (R27.1: a
/// read failure keeps its own status, in the envelope).
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    format!("request body exceeds the limit of {MAX_REQUEST_BODY} bytes"),
                )
            } else {
                ApiError::invalid("could not read the request body")
            })
        }
    }
}

/// A chat request that passed every check of R27 and R16.
#[derive(Debug, Clone)]
pub struct ValidChat {
    pub request: ChatRequest,
    pub stream: bool,
}

/// The fields R27 checks; everything else is forwarded untouched.
#[derive(Deserialize)]
struct ChatFields {
    model: String,
    messages: Vec<MessageFields>,
    stream: Option<bool>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Option<Stop>,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    max_tokens: Option<i64>,
    n: Option<i64>,
}

#[derive(Deserialize)]
struct MessageFields {
    role: Option<String>,
}

/// `stop`: one sequence or a list; only the list's length is checked.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(#[allow(dead_code)] String),
    Many(Vec<String>),
}

/// Parses and validates one chat request: the body (R27.1: a JSON object
/// with a JSON content type; the parser's own message otherwise), its
/// fields in R27.2's order, then the key headers (R16, R27.3). Nothing here
/// contacts a provider.
pub fn validate_chat(headers: &HeaderMap, body: &[u8]) -> Result<ValidChat, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::invalid(
            "expected a request with `Content-Type: application/json`",
        ));
    }
    let parse_error = |e: serde_json::Error| ApiError::invalid(echo(&e.to_string()).into_owned());
    let map: serde_json::Map<String, Value> = serde_json::from_slice(body).map_err(parse_error)?;
    let fields: ChatFields = serde_json::from_slice(body).map_err(parse_error)?;
    check_fields(&fields)?;
    let model_pub_key = key_header(
        headers,
        "x-model-pub-key",
        &[SIGNING_KEY_HEX_LEN],
        "x-model-pub-key must be 64 hex digits (an ed25519 public key)",
    )?;
    let client_pub_key = key_header(
        headers,
        "x-client-pub-key",
        &CLIENT_PUB_KEY_HEX_LENS,
        "x-client-pub-key must be 64 or 128 hex digits (an ed25519 or secp256k1 public key)",
    )?;
    Ok(ValidChat {
        stream: fields.stream.unwrap_or(false),
        request: ChatRequest {
            model: fields.model,
            body: map,
            model_pub_key,
            client_pub_key,
        },
    })
}

/// `application/json` or `application/<something>+json`, any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let essence = essence.to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

/// R27.2's field checks, in its order, with its messages.
fn check_fields(f: &ChatFields) -> Result<(), ApiError> {
    if f.model.is_empty() {
        return Err(ApiError::invalid("model is required"));
    }
    if f.messages.is_empty() {
        return Err(ApiError::invalid("messages cannot be empty"));
    }
    for m in &f.messages {
        match m.role.as_deref() {
            None | Some("") => return Err(ApiError::invalid("message role is required")),
            Some(r) if !MESSAGE_ROLES.contains(&r) => {
                return Err(ApiError::invalid(format!(
                    "invalid message role: {}",
                    echo(r)
                )))
            }
            Some(_) => {}
        }
    }
    if f.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(ApiError::invalid("temperature must be between 0 and 2"));
    }
    if f.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
        return Err(ApiError::invalid("top_p must be between 0 and 1"));
    }
    if matches!(&f.stop, Some(Stop::Many(s)) if s.len() > 4) {
        return Err(ApiError::invalid(
            "stop array may contain at most 4 sequences",
        ));
    }
    let logprobs = match &f.logprobs {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("logprobs must be a boolean")),
    };
    if let Some(top) = &f.top_logprobs {
        // An integer above i64::MAX is still an integer: out of range.
        let Some(top) = top.as_i64().or_else(|| top.as_u64().map(|_| i64::MAX)) else {
            return Err(ApiError::invalid("top_logprobs must be an integer"));
        };
        if !(0..=20).contains(&top) {
            return Err(ApiError::invalid(
                "top_logprobs must be in the range 0..=20",
            ));
        }
        if !logprobs {
            return Err(ApiError::invalid(
                "top_logprobs requires logprobs to be true",
            ));
        }
    }
    if f.max_tokens.is_some_and(|m| m < 1) {
        return Err(ApiError::invalid("max_tokens must be at least 1").param("max_tokens"));
    }
    if f.n.is_some_and(|n| n < 1) {
        return Err(ApiError::invalid("n must be at least 1").param("n"));
    }
    Ok(())
}

/// R16 fails closed on the header itself: a present key must be exactly one
/// value of hex digits of an allowed length, else the request is a 400 and
/// never routed (never read as absent). Keys are compared lower-case.
fn key_header(
    headers: &HeaderMap,
    name: &'static str,
    hex_lens: &[usize],
    what: &'static str,
) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = || ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", what);
    if values.next().is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!("{name} was sent more than once"),
        ));
    }
    let key = value.as_bytes();
    if !hex_lens.contains(&key.len()) || !key.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    Ok(Some(String::from_utf8_lossy(key).to_ascii_lowercase()))
}

async fn chat(State(api): State<Api>, headers: HeaderMap, body: Body) -> Response {
    let valid = match read_body(body)
        .await
        .and_then(|body| validate_chat(&headers, &body))
    {
        Ok(valid) => valid,
        Err(e) => return e.into_response(),
    };
    // The client's request id, only to match observations to calls (the
    // simulation's journal); an unreadable or oversized one is ignored.
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| id.len() <= MAX_REQUEST_ID_LEN)
        .map(str::to_string);
    let routed = api.app.router().chat(valid.request, valid.stream).await;
    let outcome = routed.result.as_ref().map(Served::attribution);
    api.observer.routed_request(
        request_id.as_deref(),
        &routed.model,
        &routed.attempts,
        outcome,
    );
    let profile = api.app.router().profile();
    match routed.result {
        Err(e) => client_error(&e).into_response(),
        Ok(Served::Json { response, by }) => (
            [
                (axum::http::header::CONTENT_TYPE, "application/json"),
                (SERVING_PROVIDER, serving_provider(by.tier)),
            ],
            response.body,
        )
            .into_response(),
        Ok(Served::Stream { stream, by }) => {
            let sse = stream_to_sse(stream, profile);
            (
                [
                    (axum::http::header::CONTENT_TYPE, "text/event-stream"),
                    (axum::http::header::CACHE_CONTROL, "no-cache"),
                    (SERVING_PROVIDER, serving_provider(by.tier)),
                ],
                Body::from_stream(sse),
            )
                .into_response()
        }
    }
}

/// R53's header.
pub const SERVING_PROVIDER: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-serving-provider");

/// Frames provider items as SSE. Only an authenticated `Done` produces the
/// upstream's `[DONE]`; an error, or an end without `Done`, produces one R34
/// error frame. Then, under `tiersim`, the stream ends without `[DONE]` (R23:
/// a cut stream never looks finished); under `upstream` a `[DONE]` is
/// minted after the frame (R34.5).
fn stream_to_sse(
    stream: crate::provider::ChatStream,
    profile: Profile,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    futures_util::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        let mut next = stream.next().await;
        // R59: what is metered only never reaches the client.
        while let Some(Ok(StreamItem::Metered(_))) = next {
            next = stream.next().await;
        }
        let error = match next {
            Some(Ok(StreamItem::Metered(_))) => unreachable!("skipped above"),
            Some(Ok(StreamItem::Chunk(data))) => {
                let mut out = Vec::with_capacity(data.len() + 8);
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\n\n");
                return Some((Ok(Bytes::from(out)), Some(stream)));
            }
            Some(Ok(StreamItem::Done)) => return Some((Ok(Bytes::from_static(DONE)), None)),
            Some(Err(e)) => e,
            None => ProviderError::Truncated,
        };
        let mut frame = client_error::stream_frame(&error, profile).to_vec();
        if profile == Profile::Upstream {
            frame.extend_from_slice(DONE);
        }
        Some((Ok(Bytes::from(frame)), None))
    })
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Active catalog ids, sorted, each with its context length if declared.
async fn models(State(api): State<Api>) -> Response {
    let view = api.app.registry().view();
    let data: Vec<Value> = view
        .catalog
        .iter()
        .filter(|(_, row)| row.active)
        .map(|(id, row)| {
            let mut entry = json!({ "id": id, "object": "model", "owned_by": "tiersim" });
            // SPEC-parity R40: one entry per id, with the row's context
            // length (a long-context row's long window).
            if let Some(n) = row.context_length {
                entry["context_length"] = n.into();
            }
            entry
        })
        .collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

/// R13: authorised first (before the body is read), then the batch is
/// parsed and validated whole; only a valid batch reaches the catalog.
async fn admin_models(State(api): State<Api>, headers: HeaderMap, body: Body) -> Response {
    let key = api
        .app
        .config()
        .admin_api_key
        .as_ref()
        .map(AdminKey::as_str);
    if let Err(e) = admin::authorize(&headers, key) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            e.to_string(),
        )
        .into_response();
    }
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let patch: CatalogPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return ApiError::invalid(format!("bad admin batch: {}", echo(&e.to_string())))
                .into_response()
        }
    };
    match api.app.admin_patch(patch.models).await {
        Ok(rows) => axum::Json(json!({ "models": rows })).into_response(),
        Err(e @ AdminError::Invalid(_)) => ApiError::invalid(e.to_string()).into_response(),
        Err(e @ AdminError::Catalog(_)) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "catalog_error",
            client_error::redact(&e.to_string()),
        )
        .into_response(),
    }
}
