//! The Chutes provider (tier Attested3p, R1): SPEC §7 over HTTP, §7b
//! attestation, R3 canonical ids, R23 stream rules and R24 refusals.
//!
//! One request goes:
//!
//! 1. `GET /v1/models` resolves the chute slug to its `chute_id` (cached);
//! 2. `GET /e2e/instances/{chute_id}` lists instances with their ML-KEM key,
//!    single-use nonces and attestation evidence. Every instance's evidence
//!    must bind its key to the trusted vendor (§7b), or the whole listing is
//!    refused (fail closed). Nonces are kept until used once or expired
//!    (`nonce_expires_in`, tokio time), then the listing is fetched again;
//! 3. `POST /e2e/invoke` carries the sealed request (its `model` is the
//!    slug); the reply is opened, and its `model` becomes the canonical id.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use super::attest::{verify_binding, Evidence};
use super::e2ee::{
    seal_request, ResponseKey, StreamVersion, MLKEM_PK_LEN, RESPONSE_PK_FIELD, STREAM_VERSION_FIELD,
};
use super::stream::{StreamDecoder, StreamError, StreamEvent};
use crate::http::{BodyStream, HttpClient};
use crate::openai::{
    bound_message, provider_error, status_error, with_model, OpenAiClient, Timeouts, MAX_BODY,
};
use crate::provider::{
    ChatRequest, ChatResponse, ChatStream, Provider, ProviderError, ProviderId, Refusal, StreamItem,
};
use crate::tier::{Capabilities, Tier};

/// Chutes' model list: `data[] {id, chute_id}`.
pub const MODELS_PATH: &str = "/v1/models";
/// Instance discovery, followed by `/{chute_id}`.
pub const INSTANCES_PATH: &str = "/e2e/instances";
/// The encrypted invocation endpoint.
pub const INVOKE_PATH: &str = "/e2e/invoke";
/// The path the instance serves the decrypted request on (`X-E2E-Path`).
pub const CHAT_PATH: &str = "/v1/chat/completions";

pub const HEADER_CHUTE_ID: &str = "x-chute-id";
pub const HEADER_INSTANCE_ID: &str = "x-instance-id";
pub const HEADER_NONCE: &str = "x-e2e-nonce";
pub const HEADER_STREAM: &str = "x-e2e-stream";
pub const HEADER_PATH: &str = "x-e2e-path";

/// `error.code`s of a 401/403 from `/e2e/invoke` saying the nonce was
/// refused (unknown, expired or already used): the client's listing is stale.
pub const NONCE_REJECTED: &[&str] = &["invalid_nonce", "nonce_reused"];

/// Largest error body read to explain a failed status.
const MAX_ERROR_BODY: usize = 64 << 10;
/// A listing's nonces are treated as expired this much before the gateway
/// says, so a nonce is never sent at the very edge of its life.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);
/// Upper bound on `nonce_expires_in` honoured (a day): a gateway cannot make
/// the client keep a listing forever.
const MAX_NONCE_TTL: f64 = 86_400.0;

/// The RNG the provider draws ML-KEM keys, encapsulations and AEAD nonces
/// from: a seeded `ChaCha20Rng` in the simulation, [`super::e2ee::os_rng`]
/// in production.
pub type SharedRng = Arc<Mutex<dyn CryptoRng + Send>>;

/// Wraps an RNG for [`ChutesConfig::build`].
pub fn shared_rng(rng: impl CryptoRng + Send + 'static) -> SharedRng {
    Arc::new(Mutex::new(rng))
}

// ---------------------------------------------------------------- wire types

/// `GET /v1/models` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    pub data: Vec<ModelEntry>,
}

/// One chute of the model list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// The chute slug, e.g. `zai-org/GLM-5.1-TEE`.
    pub id: String,
    #[serde(default)]
    pub chute_id: Option<String>,
}

/// `GET /e2e/instances/{chute_id}` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceList {
    pub instances: Vec<InstanceInfo>,
    /// Seconds the listed nonces stay valid; absent means
    /// [`DEFAULT_NONCE_EXPIRES_IN`], as Chutes' published client reads it.
    #[serde(default = "default_nonce_expires_in")]
    pub nonce_expires_in: f64,
}

/// `nonce_expires_in` of a listing that does not say (Chutes' published
/// client, `chutes-e2ee` 0.1.0, assumes 55 s).
pub const DEFAULT_NONCE_EXPIRES_IN: f64 = 55.0;

fn default_nonce_expires_in() -> f64 {
    DEFAULT_NONCE_EXPIRES_IN
}

/// One instance: its ML-KEM key, nonces and the evidence binding the key (§7b).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub instance_id: String,
    /// base64 of the 1184-byte ML-KEM-768 encapsulation key.
    pub e2e_pubkey: String,
    /// Single-use invocation nonces.
    pub nonces: Vec<String>,
    pub evidence: Evidence,
}

// ------------------------------------------------------------------- config

/// Why a Chutes provider could not be built (the canonical id stays
/// reserved without it, R5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("invalid Chutes base URL: {0}")]
    InvalidUrl(String),
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("the Chutes API key is not a valid header value")]
    InvalidApiKey,
}

/// Everything a [`ChutesProvider`] is built from.
#[derive(Clone)]
pub struct ChutesConfig {
    /// `http://host[:port]` of the Chutes API.
    pub base_url: String,
    /// `CHUTES_API_KEY`.
    pub api_key: String,
    /// The public id it is routed under and every answer carries (R3).
    pub canonical_id: String,
    /// The chute it names upstream.
    pub chute_slug: String,
    /// `CHUTES_ENABLE_STREAMING` (default off).
    pub streaming: bool,
    /// Encrypted stream protocol (v1 default; v2 opt-in per chute, R25).
    pub stream_version: StreamVersion,
    /// The ed25519 vendor key instance evidence must be signed by (§7b).
    pub vendor_key: [u8; 32],
    pub timeouts: Timeouts,
}

impl std::fmt::Debug for ChutesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The API key stays out of logs.
        f.debug_struct("ChutesConfig")
            .field("base_url", &self.base_url)
            .field("canonical_id", &self.canonical_id)
            .field("chute_slug", &self.chute_slug)
            .field("streaming", &self.streaming)
            .field("stream_version", &self.stream_version)
            .finish_non_exhaustive()
    }
}

impl ChutesConfig {
    /// Streaming off, stream protocol v1, default timeouts.
    pub fn new(
        base_url: impl Into<String>,
        api_key: impl Into<String>,
        canonical_id: impl Into<String>,
        chute_slug: impl Into<String>,
        vendor_key: [u8; 32],
    ) -> Self {
        ChutesConfig {
            base_url: base_url.into(),
            api_key: api_key.into(),
            canonical_id: canonical_id.into(),
            chute_slug: chute_slug.into(),
            streaming: false,
            stream_version: StreamVersion::V1,
            vendor_key,
            timeouts: Timeouts::default(),
        }
    }

    pub fn streaming(mut self, on: bool) -> Self {
        self.streaming = on;
        self
    }

    pub fn stream_version(mut self, version: StreamVersion) -> Self {
        self.stream_version = version;
        self
    }

    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Builds the provider. Nothing is fetched yet: discovery happens on the
    /// first request, so a Chutes outage at start-up costs no registration.
    pub fn build(self, http: HttpClient, rng: SharedRng) -> Result<ChutesProvider, BuildError> {
        for (what, value) in [
            ("the Chutes API key", &self.api_key),
            ("the canonical id", &self.canonical_id),
            ("the chute slug", &self.chute_slug),
        ] {
            if value.trim().is_empty() {
                return Err(BuildError::Empty(what));
            }
        }
        let auth = HeaderValue::from_str(&format!("Bearer {}", self.api_key))
            .map_err(|_| BuildError::InvalidApiKey)?;
        let client = OpenAiClient::new(http.clone(), &self.base_url)
            .map_err(|e| BuildError::InvalidUrl(e.to_string()))?
            .with_api_key(self.api_key.clone())
            .with_timeouts(self.timeouts);
        Ok(ChutesProvider {
            id: ProviderId::new(format!("chutes:{}", self.chute_slug)),
            canonical: Arc::from(self.canonical_id.as_str()),
            slug: self.chute_slug,
            streaming: self.streaming,
            version: self.stream_version,
            vendor_key: self.vendor_key,
            invoke_url: format!("{}{INVOKE_PATH}", client.base_url()),
            auth,
            timeouts: self.timeouts,
            http,
            client,
            rng,
            pool: tokio::sync::Mutex::new(Pool::default()),
        })
    }
}

// ------------------------------------------------------------ instance pool

/// A verified instance and its unused nonces.
struct PoolInstance {
    id: HeaderValue,
    pubkey: Arc<[u8]>,
    nonces: VecDeque<HeaderValue>,
}

/// What discovery learnt, shared by every request of the provider.
#[derive(Default)]
struct Pool {
    chute_id: Option<HeaderValue>,
    instances: Vec<PoolInstance>,
    /// When the listed nonces expire (tokio time).
    expires: Option<Instant>,
    /// Round-robin position over instances.
    cursor: usize,
}

impl Pool {
    /// Takes one unused, unexpired nonce (round robin over instances). A
    /// taken nonce leaves the pool for good: it is never sent twice.
    fn take(&mut self) -> Option<Slot> {
        if self.expires.is_none_or(|at| Instant::now() >= at) {
            self.instances.clear();
            return None;
        }
        let n = self.instances.len();
        for step in 0..n {
            let i = (self.cursor + step) % n;
            let inst = &mut self.instances[i];
            if let Some(nonce) = inst.nonces.pop_front() {
                self.cursor = i + 1;
                return Some(Slot {
                    chute_id: self.chute_id.clone()?,
                    instance_id: inst.id.clone(),
                    pubkey: inst.pubkey.clone(),
                    nonce,
                });
            }
        }
        None
    }

    fn forget_instances(&mut self) {
        self.instances.clear();
        self.expires = None;
    }
}

/// Everything one invocation needs from discovery.
struct Slot {
    chute_id: HeaderValue,
    instance_id: HeaderValue,
    pubkey: Arc<[u8]>,
    nonce: HeaderValue,
}

// ----------------------------------------------------------------- provider

/// A chute reached over Chutes' end-to-end encryption (SPEC §7).
pub struct ChutesProvider {
    id: ProviderId,
    canonical: Arc<str>,
    slug: String,
    streaming: bool,
    version: StreamVersion,
    vendor_key: [u8; 32],
    invoke_url: String,
    auth: HeaderValue,
    timeouts: Timeouts,
    http: HttpClient,
    /// Discovery GETs: OpenAI-style error mapping and the bearer key.
    client: OpenAiClient,
    rng: SharedRng,
    /// Held across discovery so concurrent requests share one listing.
    pool: tokio::sync::Mutex<Pool>,
}

impl std::fmt::Debug for ChutesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChutesProvider")
            .field("id", &self.id)
            .field("canonical", &self.canonical)
            .field("streaming", &self.streaming)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// How an invocation failed: a status keeps its body, which says whether
/// the nonce was rejected (worth one retry on a fresh listing).
enum InvokeError {
    Status(StatusCode, Bytes),
    Other(ProviderError),
}

impl From<ProviderError> for InvokeError {
    fn from(e: ProviderError) -> Self {
        InvokeError::Other(e)
    }
}

impl ChutesProvider {
    /// The id it is routed under (R3).
    pub fn canonical_id(&self) -> &str {
        &self.canonical
    }

    /// The chute slug it names upstream.
    pub fn chute_slug(&self) -> &str {
        &self.slug
    }

    pub fn stream_version(&self) -> StreamVersion {
        self.version
    }

    /// R24: refusals that need no network call.
    fn refuse(&self, req: &ChatRequest, stream: bool) -> Result<(), ProviderError> {
        if req.client_pub_key.is_some() {
            return Err(ProviderError::Refused(Refusal::ClientE2eeUnsupported));
        }
        if stream && !self.streaming {
            return Err(ProviderError::Refused(Refusal::StreamingDisabled));
        }
        Ok(())
    }

    /// The plaintext request the instance receives: the client's body with
    /// the slug as `model` (R3). Client-supplied protocol fields are dropped:
    /// the provider alone decides the response key and stream version.
    fn upstream_body(&self, req: &ChatRequest, stream: bool) -> Value {
        let mut body = req.body.clone();
        body.remove(RESPONSE_PK_FIELD);
        body.remove(STREAM_VERSION_FIELD);
        body.insert("model".into(), Value::String(self.slug.clone()));
        body.insert("stream".into(), Value::Bool(stream));
        if stream {
            self.version.tag_request(&mut body);
        }
        Value::Object(body)
    }

    /// A nonce with its instance, discovering (again) when none is left.
    async fn slot(&self) -> Result<Slot, ProviderError> {
        let mut pool = self.pool.lock().await;
        if let Some(slot) = pool.take() {
            return Ok(slot);
        }
        let chute_id = match &pool.chute_id {
            Some(id) => id.clone(),
            None => {
                let id = self.resolve_chute_id().await?;
                pool.chute_id = Some(id.clone());
                id
            }
        };
        match self.discover(&chute_id).await {
            Ok((instances, expires)) => {
                pool.instances = instances;
                pool.expires = Some(expires);
                pool.cursor = 0;
            }
            Err(e) => {
                if matches!(e, ProviderError::Status { status: 404, .. }) {
                    // The chute id may have changed: resolve it again next time.
                    pool.chute_id = None;
                }
                return Err(e);
            }
        }
        pool.take().ok_or_else(|| {
            ProviderError::status(
                503,
                format!(
                    "Chutes lists no instance with a nonce for {}",
                    self.canonical
                ),
            )
        })
    }

    /// `GET /v1/models` → the slug's `chute_id`. An unlisted slug is a
    /// "model not found" 404, which lets the router fall through (R19).
    async fn resolve_chute_id(&self) -> Result<HeaderValue, ProviderError> {
        let list: ModelList = self.client.get_json(MODELS_PATH).await?;
        let entry = list.data.into_iter().find(|m| m.id == self.slug);
        let Some(chute_id) = entry.and_then(|m| m.chute_id) else {
            // R38: the text says "model … not found", so the router falls
            // through to the next provider.
            return Err(ProviderError::status(
                404,
                format!(
                    "model {} not found: Chutes lists no chute for it",
                    self.canonical
                ),
            ));
        };
        HeaderValue::from_str(&chute_id)
            .map_err(|_| ProviderError::BodyDecode("Chutes sent an unusable chute_id".into()))
    }

    /// `GET /e2e/instances/{chute_id}`: the verified instances and when their
    /// nonces expire. One instance whose evidence does not bind its key fails
    /// the whole listing: a gateway caught substituting a key is trusted with
    /// nothing (§7b).
    async fn discover(
        &self,
        chute_id: &HeaderValue,
    ) -> Result<(Vec<PoolInstance>, Instant), ProviderError> {
        let chute_id = chute_id
            .to_str()
            .map_err(|_| ProviderError::BodyDecode("Chutes sent an unusable chute_id".into()))?;
        let path = format!("{INSTANCES_PATH}/{}", encode_segment(chute_id));
        let list: InstanceList = self.client.get_json(&path).await?;
        let ttl = list.nonce_expires_in;
        if !(ttl > 0.0 && ttl.is_finite()) {
            return Err(ProviderError::BodyDecode(
                "Chutes instance listing has no valid nonce_expires_in".into(),
            ));
        }
        let ttl = Duration::from_secs_f64(ttl.min(MAX_NONCE_TTL));
        let expires = Instant::now() + ttl.saturating_sub(EXPIRY_MARGIN).max(ttl / 2);

        let mut instances = Vec::with_capacity(list.instances.len());
        for info in list.instances {
            let name = bound_message(&info.instance_id);
            let pubkey = B64
                .decode(&info.e2e_pubkey)
                .ok()
                .filter(|k| k.len() == MLKEM_PK_LEN)
                .ok_or_else(|| {
                    ProviderError::Integrity(format!(
                        "Chutes instance {name}: e2e_pubkey is not a base64 ML-KEM-768 key"
                    ))
                })?;
            verify_binding(&self.vendor_key, &pubkey, &info.evidence)
                .map_err(|e| ProviderError::Integrity(format!("Chutes instance {name}: {e}")))?;
            let id = HeaderValue::from_str(&info.instance_id).map_err(|_| {
                ProviderError::BodyDecode("Chutes sent an unusable instance_id".into())
            })?;
            let nonces = info
                .nonces
                .iter()
                .map(|n| HeaderValue::from_str(n))
                .collect::<Result<VecDeque<_>, _>>()
                .map_err(|_| ProviderError::BodyDecode("Chutes sent an unusable nonce".into()))?;
            instances.push(PoolInstance {
                id,
                pubkey: Arc::from(pubkey),
                nonces,
            });
        }
        Ok((instances, expires))
    }

    /// Seals the request and `POST`s it to `/e2e/invoke`. When the gateway
    /// rejects the nonce itself (a [`NONCE_REJECTED`] code: a restarted
    /// gateway forgot it, or its clock ran ahead), the pool is stale rather
    /// than the request wrong: one retry on a fresh listing. Any other
    /// failure is returned as is (an injected 403 stays a 403). Returns the
    /// response key and the 200 response.
    async fn invoke(
        &self,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<(ResponseKey, crate::http::Response), ProviderError> {
        let body = self.upstream_body(req, stream);
        let mut retried = false;
        loop {
            let (status, err_body) = match self.invoke_once(&body, stream).await {
                Ok(ok) => return Ok(ok),
                Err(InvokeError::Other(e)) => return Err(e),
                Err(InvokeError::Status(status, err_body)) => (status, err_body),
            };
            let nonce_rejected = matches!(status.as_u16(), 401 | 403)
                && error_code(&err_body).is_some_and(|c| NONCE_REJECTED.contains(&c.as_str()));
            if nonce_rejected || status == StatusCode::NOT_FOUND {
                let mut pool = self.pool.lock().await;
                pool.forget_instances();
                if status == StatusCode::NOT_FOUND {
                    // The chute or instance is gone: resolve it afresh next time.
                    pool.chute_id = None;
                }
            }
            if nonce_rejected && !retried {
                retried = true;
                continue;
            }
            return Err(status_error(status, &err_body));
        }
    }

    async fn invoke_once(
        &self,
        body: &Value,
        stream: bool,
    ) -> Result<(ResponseKey, crate::http::Response), InvokeError> {
        let slot = self.slot().await?;
        let (blob, key) = {
            // Sync lock, never held across an await.
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            seal_request(&mut *rng, &slot.pubkey, body.clone()).map_err(ProviderError::from)?
        };
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(&self.invoke_url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(HEADER_CHUTE_ID, slot.chute_id)
            .header(HEADER_INSTANCE_ID, slot.instance_id)
            .header(HEADER_NONCE, slot.nonce)
            .header(HEADER_STREAM, if stream { "true" } else { "false" })
            .header(HEADER_PATH, CHAT_PATH);
        if stream {
            builder = builder.header(ACCEPT, "text/event-stream");
        }
        let http_req = builder
            .body(Bytes::from(blob))
            .map_err(|e| ProviderError::Connection(format!("invalid request: {e}")))?;
        let resp = self
            .http
            .open(http_req, self.timeouts.request)
            .await
            .map_err(provider_error)?;
        if !resp.status.is_success() {
            let status = resp.status;
            let body = resp
                .bytes(MAX_ERROR_BODY, self.timeouts.request)
                .await
                .unwrap_or_default();
            return Err(InvokeError::Status(status, body));
        }
        Ok((key, resp))
    }
}

#[async_trait]
impl Provider for ChutesProvider {
    fn id(&self) -> &ProviderId {
        &self.id
    }

    fn tier(&self) -> Tier {
        Tier::Attested3p
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            streaming: self.streaming,
            client_e2ee: false,
        }
    }

    fn signing_keys(&self) -> &[String] {
        &[]
    }

    async fn chat_completion(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        self.refuse(req, false)?;
        let started = Instant::now();
        let (key, resp) = self.invoke(req, false).await?;
        let left = self.timeouts.request.saturating_sub(started.elapsed());
        let blob = resp.bytes(MAX_BODY, left).await.map_err(provider_error)?;
        let json = key.open_response(&blob)?;
        let body = with_model(Bytes::from(json), &self.canonical)?;
        Ok(ChatResponse { body })
    }

    async fn chat_completion_stream(&self, req: &ChatRequest) -> Result<ChatStream, ProviderError> {
        self.refuse(req, true)?;
        let (key, resp) = self.invoke(req, true).await?;
        let mut state = Decrypting {
            body: Some(resp.into_stream(MAX_BODY, self.timeouts.stream_idle)),
            dec: StreamDecoder::new(key, self.version),
            canonical: self.canonical.clone(),
            pending: None,
            ended: false,
        };
        state.prime().await?;
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |mut st| async move { st.next().await.map(|item| (item, st)) },
        )))
    }
}

// ------------------------------------------------------------------ stream

/// The encrypted SSE body turned into stream items (R23): only
/// authenticated chunks, `model` rewritten (R3); `Done` only for the
/// authenticated inner `[DONE]`; the first error ends it.
struct Decrypting {
    body: Option<BodyStream>,
    dec: StreamDecoder,
    canonical: Arc<str>,
    /// An item read while priming, yielded first.
    pending: Option<Result<StreamItem, ProviderError>>,
    ended: bool,
}

impl Decrypting {
    /// Reads until the stream is keyed (`e2e_init`) or content arrives, so a
    /// failure before any content (an `e2e_error`, a bad init, a cut) is the
    /// open's error, which the router may retry, not a dead stream.
    async fn prime(&mut self) -> Result<(), ProviderError> {
        loop {
            if self.dec.is_keyed() {
                return Ok(());
            }
            match self.step().await {
                Some(Ok(item)) => {
                    self.pending = Some(Ok(item));
                    return Ok(());
                }
                Some(Err(e)) => return Err(e),
                None if self.ended => return Err(ProviderError::Truncated),
                None => {}
            }
        }
    }

    async fn next(&mut self) -> Option<Result<StreamItem, ProviderError>> {
        if let Some(item) = self.pending.take() {
            return Some(item);
        }
        loop {
            match self.step().await {
                Some(item) => return Some(item),
                None if self.ended => return None,
                None => {}
            }
        }
    }

    /// One item from the decoder's queue, or else one read from the body
    /// (`None` then).
    async fn step(&mut self) -> Option<Result<StreamItem, ProviderError>> {
        if self.ended {
            return None;
        }
        while let Some(ev) = self.dec.next_event() {
            match ev {
                Ok(StreamEvent::Chunk(chunk)) => {
                    return Some(match with_model(chunk, &self.canonical) {
                        Ok(c) => Ok(StreamItem::Chunk(c)),
                        Err(e) => self.end(e),
                    });
                }
                // Plaintext billing: unauthenticated, never content.
                Ok(StreamEvent::Usage(_)) => {}
                Ok(StreamEvent::Done) => {
                    self.ended = true;
                    self.body = None;
                    return Some(Ok(StreamItem::Done));
                }
                Err(e) => return Some(self.end(stream_error(e))),
            }
        }
        let Some(body) = self.body.as_mut() else {
            // EOF was fed and the decoder is drained (it queues an error or
            // Done at EOF, so this is only reached after one of them).
            self.ended = true;
            return None;
        };
        match body.next().await {
            Some(Ok(bytes)) => self.dec.feed(&bytes),
            Some(Err(e)) => return Some(self.end(provider_error(e))),
            None => {
                self.body = None;
                self.dec.finish();
            }
        }
        None
    }

    fn end(&mut self, e: ProviderError) -> Result<StreamItem, ProviderError> {
        self.ended = true;
        self.body = None;
        Err(e)
    }
}

/// A decoder error as a provider error; an `e2e_error` message comes from
/// upstream, so it is bounded (and redacted wherever it is shown, R31).
fn stream_error(e: StreamError) -> ProviderError {
    match ProviderError::from(e) {
        ProviderError::Status { status, message } => ProviderError::Status {
            status,
            message: bound_message(&message),
        },
        other => other,
    }
}

/// `error.code` of an OpenAI-style error body.
fn error_code(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("error")?.get("code")?.as_str().map(str::to_owned)
}

/// Percent-encodes a path segment (ids are opaque to the client).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::TokioConnector;

    fn provider(streaming: bool) -> ChutesProvider {
        let rng = shared_rng(super::super::e2ee::os_rng());
        ChutesConfig::new("http://127.0.0.1:9", "k", "canon/M", "slug/M-TEE", [0; 32])
            .streaming(streaming)
            .build(HttpClient::new(Arc::new(TokioConnector)), rng)
            .unwrap()
    }

    #[test]
    fn r1_identity_tier_and_capabilities() {
        let p = provider(false);
        assert_eq!(p.id().as_str(), "chutes:slug/M-TEE");
        assert_eq!(p.tier(), Tier::Attested3p);
        assert_eq!(
            p.capabilities(),
            Capabilities {
                streaming: false,
                client_e2ee: false
            }
        );
        assert!(p.signing_keys().is_empty());
        assert!(provider(true).capabilities().streaming);
    }

    #[test]
    fn r3_upstream_body_names_the_slug_and_strips_protocol_fields() {
        let p = provider(true);
        let body = serde_json::json!({
            "model": "canon/M", "messages": [],
            "e2e_response_pk": "x", "e2e_stream_version": 2
        });
        let req = ChatRequest {
            model: "canon/M".into(),
            body: body.as_object().unwrap().clone(),
            model_pub_key: None,
            client_pub_key: None,
        };
        let up = p.upstream_body(&req, true);
        assert_eq!(up["model"], "slug/M-TEE");
        assert_eq!(up["stream"], true);
        assert!(up.get("e2e_response_pk").is_none());
        assert!(up.get("e2e_stream_version").is_none(), "v1 adds nothing");
    }

    #[test]
    fn build_rejects_bad_inputs() {
        let http = HttpClient::new(Arc::new(TokioConnector));
        let rng = || shared_rng(super::super::e2ee::os_rng());
        let cfg = |url: &str, key: &str| ChutesConfig::new(url, key, "c", "s", [0; 32]);
        assert!(matches!(
            cfg("https://x", "k").build(http.clone(), rng()),
            Err(BuildError::InvalidUrl(_))
        ));
        assert_eq!(
            cfg("http://x", " ").build(http.clone(), rng()).unwrap_err(),
            BuildError::Empty("the Chutes API key")
        );
        assert_eq!(
            cfg("http://x", "a\nb").build(http, rng()).unwrap_err(),
            BuildError::InvalidApiKey
        );
    }

    #[test]
    fn listing_without_nonce_expires_in_gets_the_published_default() {
        let list: InstanceList = serde_json::from_str(r#"{"instances":[]}"#).unwrap();
        assert_eq!(list.nonce_expires_in, 55.0);
        let list: InstanceList =
            serde_json::from_str(r#"{"instances":[],"nonce_expires_in":60}"#).unwrap();
        assert_eq!(list.nonce_expires_in, 60.0);
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_segment("ab-1_2.~"), "ab-1_2.~");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
