//! Simulated HTTP hosts: NEAR backends, an external plaintext provider, the
//! catalog and the Chutes gateway. Each builder yields a [`Service`]: an
//! axum router served by the engine's own [`serve`](tiersim_engine::http::serve)
//! over a turmoil listener (the simulation) or a tokio one (`tiersim serve`).
//! Each host consults the shared [`FaultBoard`] once per request.
//!
//! Everything a host answers is a function of the request, its configuration
//! and a per-boot request counter: no wall clock, no OS randomness.

mod catalog;
mod chunking;
mod chutes;
mod external;
pub mod keys;
mod near;

pub use catalog::{Catalog, CatalogHandle};
pub use chunking::{ChunkPlan, Chunking};
pub use chutes::{
    ChutesGateway, ChutesHandle, Invocation, Reply as ChuteReply, Served, DEFAULT_NONCES,
    MODELS_PREFIX,
};
pub use external::ExternalBackend;
pub use near::{count_tokens, NearBackend};

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, StatusCode};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde_json::{json, Value};
use tiersim_engine::api::MAX_FORWARDED_BODY;

use crate::fault::{Fault, FaultBoard, RequestKind};
use crate::net::{TurmoilListener, HTTP_PORT};
use tiersim_engine::net::Listener;

/// `created` timestamps count up from here (one per request), so responses
/// look plausible without reading any clock.
const CREATED_BASE: u64 = 1_700_000_000;

/// A 32-byte key seed derived from the world's seed and a label (e.g. a host
/// name): distinct labels get independent keys, the same inputs the same key.
pub fn derive_seed(world_seed: u64, label: &str) -> [u8; 32] {
    // FNV-1a: a stable hash (std's hashers are not stable across releases).
    let label_hash = label.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&world_seed.to_le_bytes());
    key[8..16].copy_from_slice(&label_hash.to_le_bytes());
    let mut out = [0u8; 32];
    ChaCha20Rng::from_seed(key).fill_bytes(&mut out);
    out
}

/// A host's HTTP surface, independent of the network it is served on: the
/// same [`Service`] is installed on turmoil ([`Service::install`]) or served
/// on real sockets ([`Service::serve`], `tiersim serve`).
///
/// Each [`boot`](Service::boot) builds a fresh router with fresh per-boot
/// state (request counters, a gateway's nonces and RNG), as a restarted
/// process would have; what outlives a crash (a catalog's rows, a fault
/// board) is shared by every boot.
#[derive(Clone)]
pub struct Service {
    host: String,
    make: Arc<dyn Fn() -> Router + Send + Sync>,
    /// How its response bytes are cut into writes, and the world seed the
    /// cuts derive from (`None`: as the host writes them).
    chunks: Option<(ChunkPlan, u64)>,
    boots: Arc<chunking::BootCounter>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Service {
    pub fn new(host: impl Into<String>, make: impl Fn() -> Router + Send + Sync + 'static) -> Self {
        Service {
            host: host.into(),
            make: Arc::new(make),
            chunks: None,
            boots: Arc::default(),
        }
    }

    /// Cuts every response body of this host under `plan`, seeded from
    /// `world_seed` (see [`Chunking`]).
    pub fn chunked(mut self, plan: ChunkPlan, world_seed: u64) -> Self {
        self.chunks = Some((plan, world_seed));
        self
    }

    /// The host's name (`near-1`, `chutes`, …).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A fresh router: one boot of the host. Every host accepts bodies up
    /// to what the router may forward for a request it accepted
    /// ([`MAX_FORWARDED_BODY`]), so the router's own limit is the one a
    /// client meets (axum's default of 2 MiB would refuse upstream what the
    /// router took).
    pub fn boot(&self) -> Router {
        let router = (self.make)().layer(axum::extract::DefaultBodyLimit::max(MAX_FORWARDED_BODY));
        match self.chunks {
            Some((plan, seed)) => {
                chunking::layer(router, plan, &self.host, seed, self.boots.next())
            }
            None => router,
        }
    }

    /// Registers the host on the simulation: each (re)boot builds a fresh
    /// router and serves it on [`HTTP_PORT`] of the simulated network.
    pub fn install(self, sim: &mut turmoil::Sim<'_>) {
        let host = self.host.clone();
        sim.host(host.as_str(), move || {
            let router = self.boot();
            async move {
                let listener = TurmoilListener::bind(HTTP_PORT).await?;
                tiersim_engine::http::serve(listener, router).await?;
                Ok(())
            }
        });
    }

    /// Serves one boot of the host on `listener` (any [`Listener`]: real
    /// tokio sockets in `tiersim serve`). Returns only when accepting fails;
    /// dropping the future closes the host and its connections.
    pub async fn serve<L: Listener>(&self, listener: L) -> io::Result<()> {
        tiersim_engine::http::serve(listener, self.boot()).await
    }
}

/// An OpenAI-style error: `{"error":{"message","type","code"}}`.
fn error_response(status: StatusCode, code: Option<&str>, message: &str) -> Response {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let body = json!({ "error": { "message": message, "type": kind, "code": code } });
    let mut resp = (
        status,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert(RETRY_AFTER, http::HeaderValue::from_static("1"));
    }
    resp
}

fn model_not_found(model: &str, host: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        Some("model_not_found"),
        &format!("The model `{model}` does not exist on {host}"),
    )
}

/// The part of a fault that happens before any answer is built: delays, and
/// faults that replace the answer with an error. `None`: go on serving.
async fn before_answer(
    fault: Option<&Fault>,
    host: &str,
    model: &str,
    streaming: bool,
) -> Option<Response> {
    match fault? {
        Fault::LatencyMs { ms } => {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            None
        }
        // A JSON answer has no first token: the whole answer is slow.
        Fault::SlowFirstTokenMs { ms } if !streaming => {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            None
        }
        Fault::HttpStatus {
            status,
            code,
            message,
        } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let code = code
                .as_deref()
                .or((status == StatusCode::TOO_MANY_REQUESTS).then_some("rate_limit_exceeded"));
            // By default, like a real backend's error text, it names the
            // backend's own internal URL: the router must redact it (R22).
            let message = message.clone().unwrap_or_else(|| {
                format!(
                    "{host}: injected {} at http://{host}:8000/v1",
                    status.canonical_reason().unwrap_or("error")
                )
            });
            Some(error_response(status, code, &message))
        }
        Fault::ModelNotFound => Some(model_not_found(model, host)),
        _ => None,
    }
}

/// One step of a scripted response body.
enum Step {
    Data(Bytes),
    Sleep(Duration),
    /// Let the server flush what it has buffered before the next step.
    Flush,
    /// Fail the body: hyper then drops the connection, which the client sees
    /// as a reset / early close.
    Reset,
}

fn scripted(status: StatusCode, content_type: &'static str, steps: Vec<Step>) -> Response {
    let steps: VecDeque<Step> = steps.into();
    let body = futures_util::stream::unfold(steps, |mut steps| async move {
        loop {
            match steps.pop_front()? {
                Step::Data(b) => return Some((Ok(b), steps)),
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Flush => tokio::task::yield_now().await,
                Step::Reset => {
                    let err = io::Error::new(io::ErrorKind::ConnectionReset, "injected reset");
                    return Some((Err(err), VecDeque::new()));
                }
            }
        }
    });
    (
        status,
        [(CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

/// A complete JSON answer, shaped by a body fault if one fired.
fn json_answer(fault: Option<&Fault>, body: Bytes) -> Response {
    body_answer(fault, "application/json", body)
}

/// A complete 200 answer of any type, shaped by a body fault if one fired.
fn body_answer(fault: Option<&Fault>, content_type: &'static str, body: Bytes) -> Response {
    let half = || Step::Data(body.slice(..body.len() / 2));
    let steps = match fault {
        Some(Fault::ResetBeforeBody) => vec![Step::Reset],
        Some(Fault::ResetAfterChunks { .. }) => vec![half(), Step::Flush, Step::Reset],
        // A clean end after half the body: an undecodable body.
        Some(Fault::CutStreamAfter { .. }) => vec![half()],
        _ => return ([(CONTENT_TYPE, content_type)], body).into_response(),
    };
    scripted(StatusCode::OK, content_type, steps)
}

/// An OpenAI-compatible chat backend: the part NEAR backends and external
/// providers share.
struct ChatBackend {
    host: String,
    models: BTreeSet<String>,
    faults: FaultBoard,
    /// Hex signing key of a NEAR backend: a request pinned to another key
    /// (`x-model-pub-key`) was misrouted and is refused, loudly.
    signing_key: Option<String>,
    /// Requests served since boot: ids and timestamps derive from it.
    served: AtomicU64,
    /// The model name the backend answers with (its own name for the
    /// model), instead of echoing the request's.
    answer_model: Option<String>,
    /// The API key an external provider requires (`Authorization: Bearer
    /// <key>`); a request without it is refused with 401.
    api_key: Option<String>,
}

fn chat_router(backend: ChatBackend) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(Arc::new(backend))
}

/// The text of the last user message (string content or text parts).
fn last_user_message(body: &Value) -> String {
    let Some(msg) = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
    else {
        return String::new();
    };
    match &msg["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// What a backend echoes of a prompt: its first 64 bytes, then `…`, so a
/// long request (SPEC-parity R42) keeps the answer and snapshot short.
pub(crate) fn echo_of(prompt: &str) -> String {
    const ECHOED: usize = 64;
    if prompt.len() <= ECHOED {
        return prompt.to_string();
    }
    let mut end = ECHOED;
    while !prompt.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &prompt[..end])
}

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

async fn chat(
    State(backend): State<Arc<ChatBackend>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error_response(StatusCode::BAD_REQUEST, None, "request body is not JSON");
    };
    let streaming = request["stream"] == true;
    let kind = if streaming {
        RequestKind::ChatStream
    } else {
        RequestKind::Chat
    };
    let host = backend.host.as_str();
    backend.faults.note_received(host, &request);
    let model = request["model"].as_str().unwrap_or_default().to_string();
    let fault = backend.faults.take(host, kind);
    if let Some(resp) = before_answer(fault.as_ref(), host, &model, streaming).await {
        return resp;
    }
    if let Some(key) = &backend.api_key {
        let sent = headers.get(http::header::AUTHORIZATION);
        if sent.is_none_or(|v| v.as_bytes() != format!("Bearer {key}").as_bytes()) {
            let message = format!("{host}: missing or wrong API key");
            return error_response(StatusCode::UNAUTHORIZED, Some("invalid_api_key"), &message);
        }
    }
    if let (Some(ours), Some(pinned)) = (&backend.signing_key, headers.get("x-model-pub-key")) {
        if !pinned.as_bytes().eq_ignore_ascii_case(ours.as_bytes()) {
            let message =
                format!("{host}: x-model-pub-key does not match this backend's signing key");
            return error_response(
                StatusCode::BAD_REQUEST,
                Some("model_pub_key_mismatch"),
                &message,
            );
        }
    }
    if !backend.models.contains(&model) {
        return model_not_found(&model, host);
    }

    // What the backend calls the model in its answers.
    let model = if fault == Some(Fault::OwnModelName) {
        format!("{host}/{model}")
    } else {
        model
    };
    let n = backend.served.fetch_add(1, Ordering::Relaxed) + 1;
    let id = format!("chatcmpl-{host}-{n}");
    let created = CREATED_BASE + n;
    let prompt = last_user_message(&request);
    let content = format!("{host} says: {}", echo_of(&prompt));
    let model = backend.answer_model.clone().unwrap_or(model);

    if !streaming {
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": content },
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": words(&prompt),
                "completion_tokens": words(&content),
                "total_tokens": words(&prompt) + words(&content),
            },
        });
        return json_answer(fault.as_ref(), body.to_string().into());
    }

    // Role, three content pieces, the finish: five chunks, then [DONE].
    // Each carries the usage so far, as a backend asked for per-chunk usage
    // does (NEAR's router always asks; SPEC-parity R46 samples TTFT only
    // from a stream that carried a non-zero usage record).
    let prompt_tokens = words(&prompt);
    let chunk = |delta: Value, finish: Value, completion_tokens: usize| {
        let c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        });
        Step::Data(format!("data: {c}\n\n").into())
    };
    let mut chunks = vec![chunk(
        json!({ "role": "assistant", "content": "" }),
        Value::Null,
        0,
    )];
    let mut said = String::new();
    for piece in [
        host.to_string(),
        " says:".into(),
        format!(" {}", echo_of(&prompt)),
    ] {
        said.push_str(&piece);
        chunks.push(chunk(
            json!({ "content": piece }),
            Value::Null,
            words(&said),
        ));
    }
    chunks.push(chunk(json!({}), json!("stop"), words(&said)));
    let done = Step::Data(Bytes::from_static(b"data: [DONE]\n\n"));

    let steps = match fault {
        Some(Fault::ResetBeforeBody) => vec![Step::Reset],
        Some(Fault::ResetAfterChunks { after_chunks }) => {
            chunks.truncate(after_chunks as usize);
            chunks.extend([Step::Flush, Step::Reset]);
            chunks
        }
        Some(Fault::CutStreamAfter { after_chunks }) => {
            chunks.truncate(after_chunks as usize);
            chunks
        }
        Some(Fault::StreamErrorAfter { after_chunks }) => {
            chunks.truncate(after_chunks as usize);
            chunks.push(Step::Data(Bytes::from_static(
                b"data: {\"error\":{\"code\":503,\"message\":\"queue full\"}}\n\n",
            )));
            chunks
        }
        Some(Fault::SlowFirstTokenMs { ms }) => {
            let mut steps = vec![Step::Sleep(Duration::from_millis(ms))];
            steps.extend(chunks);
            steps.push(done);
            steps
        }
        _ => {
            chunks.push(done);
            chunks
        }
    };
    scripted(StatusCode::OK, "text/event-stream", steps)
}
