//! The Chutes provider (tier Attested3p, R1): SPEC §7 over HTTP, §7b
//! attestation, R3 canonical ids, R23 stream rules and R24 refusals.
//!
//! One request goes:
//!
//! 1. `GET /v1/models` resolves the chute slug to its `chute_id` (cached);
//!    (on the model-listing base URL, which may differ from the API's);
//! 2. `GET /e2e/instances/{chute_id}` lists instances with their ML-KEM key
//!    and single-use nonces (R60: kept until used once or expired,
//!    `nonce_expires_in`, tokio time, then the listing is fetched again);
//! 3. per request, `GET /chutes/{chute_id}/evidence?nonce=<fresh>` (§7b,
//!    R61): candidates are tried in turn from a counter, and the first whose
//!    evidence binds its key under the [`Verifier`] gets a nonce; an
//!    instance absent from the evidence, listed as failed or failing the
//!    check is skipped; when none verifies, the attempt fails closed with
//!    [`ProviderError::Attestation`] and nothing is sent;
//! 4. `POST /e2e/invoke` carries the sealed request (its `model` is the
//!    slug, the body as SPEC-parity R56 shapes it); the reply is opened and
//!    normalised (`model` the canonical id, R57–R59, [`super::normalize`]).
//!
//! Every failure of these calls is mapped by R39 (`chutes_failure`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode};
use rand_core::{CryptoRng, Rng as _};
use serde_json::Value;
use tokio::time::Instant;

use super::attest::{check_instance, Verifier};
use super::e2ee::{
    seal_request_to, AttestFailure, ResponseKey, SealingKey, StreamVersion, MLKEM_PK_LEN,
    RESPONSE_PK_FIELD, STREAM_VERSION_FIELD,
};
use super::normalize::{self, StreamNormalizer};
use super::stream::{StreamDecoder, StreamError, StreamEvent};
use super::wire::{
    evidence_path, EvidenceList, InstanceList, ModelList, CHAT_PATH, EVIDENCE_NONCE_LEN,
    HEADER_CHUTE_ID, HEADER_INSTANCE_ID, HEADER_NONCE, HEADER_PATH, HEADER_STREAM, INSTANCES_PATH,
    INVOKE_PATH, MODELS_PATH,
};
use crate::http::{BodyStream, HttpClient};
use crate::openai::{
    bound_message, provider_error, status_error, OpenAiClient, Timeouts, MAX_BODY,
};
use crate::provider::{
    ChatRequest, ChatResponse, ChatStream, Provider, ProviderError, ProviderId, Refusal, StreamItem,
};
#[cfg(feature = "planted-bugs")]
use crate::registry::PlantedBug;
use crate::tier::{Capabilities, Tier};

/// Largest error body read to explain a failed status.
const MAX_ERROR_BODY: usize = 64 << 10;
/// R60: a snapshot is kept at most this long, whatever the gateway says.
const MAX_SNAPSHOT_TTL: f64 = 120.0;
/// R60: the lifetime of a snapshot whose `nonce_expires_in` is not positive.
const FALLBACK_SNAPSHOT_TTL: f64 = 30.0;
/// R60: a snapshot expires this much before its nonces do, so a nonce is
/// never sent at the very edge of its life.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// R60: how long a listing with `nonce_expires_in` serves: min(it, 120) s
/// when positive, else 30 s, minus 5 s. Zero (`nonce_expires_in` <= 5):
/// only the request that listed uses it; every request discovers again.
fn snapshot_ttl(nonce_expires_in: f64) -> Duration {
    let secs = if nonce_expires_in > 0.0 && nonce_expires_in.is_finite() {
        nonce_expires_in.min(MAX_SNAPSHOT_TTL)
    } else {
        FALLBACK_SNAPSHOT_TTL
    };
    Duration::from_secs_f64(secs).saturating_sub(EXPIRY_MARGIN)
}

/// The RNG the provider draws ML-KEM keys, encapsulations and AEAD nonces
/// from: a seeded `ChaCha20Rng` in the simulation, [`super::e2ee::os_rng`]
/// in production.
pub type SharedRng = Arc<Mutex<dyn CryptoRng + Send>>;

/// Wraps an RNG for [`ChutesConfig::build`].
pub fn shared_rng(rng: impl CryptoRng + Send + 'static) -> SharedRng {
    Arc::new(Mutex::new(rng))
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
    /// `http://host[:port]` of the Chutes API: E2EE discovery, invocation
    /// and evidence.
    pub base_url: String,
    /// Where `/v1/models` lives when not on `base_url` (Chutes serves its
    /// model list from another host than its API).
    pub models_base_url: Option<String>,
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
    /// Checks instance evidence (§7b): the simulated vendor in this
    /// testbed, a real TDX quote verifier in a deployment.
    pub verifier: Arc<dyn Verifier>,
    pub timeouts: Timeouts,
    /// SPEC-parity R40/R41: the window `CHUTES_MODELS`' `@n` declares.
    pub context_window: Option<u32>,
    /// The planted bug this provider acts out (`PlantedBug::KeyedPriming`,
    /// `PlantedBug::FirstCandidateOnly`; others live elsewhere): none
    /// unless a simulation run asks for one.
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<PlantedBug>,
}

impl std::fmt::Debug for ChutesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The API key stays out of logs.
        f.debug_struct("ChutesConfig")
            .field("base_url", &self.base_url)
            .field("models_base_url", &self.models_base_url)
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
        verifier: Arc<dyn Verifier>,
    ) -> Self {
        ChutesConfig {
            base_url: base_url.into(),
            models_base_url: None,
            api_key: api_key.into(),
            canonical_id: canonical_id.into(),
            chute_slug: chute_slug.into(),
            streaming: false,
            stream_version: StreamVersion::V1,
            verifier,
            timeouts: Timeouts::default(),
            context_window: None,
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }

    /// R40/R41: the window it declares (the entry's `@n`), or none.
    pub fn context_window(mut self, window: Option<u32>) -> Self {
        self.context_window = window;
        self
    }

    /// Plants `bug` in the provider built from this config (the
    /// simulation's proof that its checks find it); a bug that does not
    /// live in the Chutes provider changes nothing here.
    #[cfg(feature = "planted-bugs")]
    pub fn plant(mut self, bug: Option<PlantedBug>) -> Self {
        self.planted = bug;
        self
    }

    /// Serve `/v1/models` from `url` instead of the API base URL.
    pub fn models_base_url(mut self, url: impl Into<String>) -> Self {
        self.models_base_url = Some(url.into());
        self
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
        let models_client = match &self.models_base_url {
            None => client.clone(),
            Some(url) => OpenAiClient::new(http.clone(), url)
                .map_err(|e| BuildError::InvalidUrl(e.to_string()))?
                .with_api_key(self.api_key.clone())
                .with_timeouts(self.timeouts),
        };
        Ok(ChutesProvider {
            id: ProviderId::new(format!("chutes:{}", self.chute_slug)),
            canonical: Arc::from(self.canonical_id.as_str()),
            slug: self.chute_slug,
            streaming: self.streaming,
            version: self.stream_version,
            verifier: self.verifier,
            invoke_url: format!("{}{INVOKE_PATH}", client.base_url()),
            auth,
            timeouts: self.timeouts,
            http,
            client,
            models_client,
            rng,
            turn: AtomicUsize::new(0),
            pool: tokio::sync::Mutex::new(Pool::default()),
            context_window: self.context_window,
            #[cfg(feature = "planted-bugs")]
            planted: self.planted,
        })
    }
}

// ------------------------------------------------------------ instance pool

/// A listed instance and its unused nonces. Listing is not trust: its key
/// is only used after that request's evidence binds it (§7b).
struct PoolInstance {
    id: HeaderValue,
    /// The id as listed, matched against the evidence.
    id_text: String,
    /// The key as listed (base64): what the report data binds.
    pubkey_b64: String,
    /// The decoded key, parsed once per listing; `None` when it is not a
    /// base64 ML-KEM-768 key.
    pubkey: Option<Arc<SealingKey>>,
    nonces: VecDeque<HeaderValue>,
}

/// What discovery learnt, shared by every request of the provider (R60).
#[derive(Default)]
struct Pool {
    chute_id: Option<HeaderValue>,
    instances: Vec<PoolInstance>,
    /// When the listed nonces expire (tokio time).
    expires: Option<Instant>,
}

impl Pool {
    /// Whether the snapshot can still serve: unexpired, and some instance
    /// has a key and a nonce (R60). An expired snapshot is dropped.
    fn usable(&mut self) -> bool {
        if self.expires.is_none_or(|at| Instant::now() >= at) {
            self.forget_instances();
            return false;
        }
        self.instances
            .iter()
            .any(|i| !i.pubkey_b64.is_empty() && !i.nonces.is_empty())
    }

    /// The candidates of one request, in listing order (R61 step 2).
    fn candidates(&self) -> Vec<Candidate> {
        self.instances
            .iter()
            .filter(|i| !i.pubkey_b64.is_empty() && !i.nonces.is_empty())
            .map(|i| Candidate {
                id: i.id.clone(),
                id_text: i.id_text.clone(),
                pubkey_b64: i.pubkey_b64.clone(),
                pubkey: i.pubkey.clone(),
            })
            .collect()
    }

    /// Takes one unused nonce of instance `id`, the last listed first (R60).
    /// A taken nonce leaves the pool for good: it is never sent twice. The
    /// snapshot's expiry is not checked again here: the request took its
    /// candidates from a snapshot that could serve (with a TTL of zero,
    /// R60, only the request that listed may use it).
    fn take_nonce(&mut self, id: &HeaderValue) -> Option<HeaderValue> {
        self.instances
            .iter_mut()
            .find(|i| i.id == *id)?
            .nonces
            .pop_back()
    }

    fn forget_instances(&mut self) {
        self.instances.clear();
        self.expires = None;
    }
}

/// An instance one request may try.
struct Candidate {
    id: HeaderValue,
    id_text: String,
    pubkey_b64: String,
    pubkey: Option<Arc<SealingKey>>,
}

/// Why a candidate was skipped (R61 step 4).
enum Skipped {
    Attestation(AttestFailure),
    BadKey,
    Drained,
}

/// Everything one invocation needs from discovery and attestation.
struct Slot {
    chute_id: HeaderValue,
    instance_id: HeaderValue,
    pubkey: Arc<SealingKey>,
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
    verifier: Arc<dyn Verifier>,
    invoke_url: String,
    auth: HeaderValue,
    timeouts: Timeouts,
    http: HttpClient,
    /// Discovery and evidence GETs: OpenAI-style error mapping and the
    /// bearer key.
    client: OpenAiClient,
    /// `/v1/models`, on its own base URL when configured.
    models_client: OpenAiClient,
    rng: SharedRng,
    /// R61: the candidate a request starts at (advances once per request).
    turn: AtomicUsize,
    /// R40/R41: the declared window.
    context_window: Option<u32>,
    #[cfg(feature = "planted-bugs")]
    planted: Option<PlantedBug>,
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
    /// the slug as `model` (R3) and R56's changes. Client-supplied protocol
    /// fields are dropped: the provider alone decides the response key and
    /// stream version.
    fn upstream_body(&self, req: &ChatRequest, stream: bool) -> Value {
        let mut body = req.body.clone();
        normalize::request_body(&mut body, stream);
        body.remove(RESPONSE_PK_FIELD);
        body.remove(STREAM_VERSION_FIELD);
        body.insert("model".into(), Value::String(self.slug.clone()));
        body.insert("stream".into(), Value::Bool(stream));
        if stream {
            self.version.tag_request(&mut body);
        }
        Value::Object(body)
    }

    /// An attested instance and one of its nonces for one invocation
    /// (R60, R61, §7b): discovery when the snapshot cannot serve, then a
    /// fresh evidence fetch, then candidates in turn from the counter.
    async fn slot(&self) -> Result<Slot, ProviderError> {
        let (chute_id, candidates) = self.snapshot().await?;
        let chute_text = chute_id
            .to_str()
            .map_err(|_| ProviderError::BodyDecode("Chutes sent an unusable chute_id".into()))?;
        let nonce_hex = self.boot_nonce();
        let evidence: EvidenceList = self
            .client
            .get_json(&evidence_path(&encode_segment(chute_text), &nonce_hex))
            .await
            .map_err(|e| chutes_failure(Stage::Evidence, e))?;
        let n = candidates.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        #[cfg(feature = "planted-bugs")]
        let tries = if self.planted == Some(PlantedBug::FirstCandidateOnly) {
            1
        } else {
            n
        };
        #[cfg(not(feature = "planted-bugs"))]
        let tries = n;
        let mut last = None;
        for k in 0..tries {
            let c = &candidates[(start + k) % n];
            let skipped = match &c.pubkey {
                None => Skipped::BadKey,
                Some(pubkey) => match check_instance(
                    &*self.verifier,
                    &evidence,
                    &nonce_hex,
                    &c.id_text,
                    &c.pubkey_b64,
                ) {
                    Err(why) => Skipped::Attestation(why),
                    Ok(()) => match self.pool.lock().await.take_nonce(&c.id) {
                        Some(nonce) => {
                            return Ok(Slot {
                                chute_id,
                                instance_id: c.id.clone(),
                                pubkey: pubkey.clone(),
                                nonce,
                            })
                        }
                        None => Skipped::Drained,
                    },
                },
            };
            last = Some((bound_message(&c.id_text), skipped));
        }
        let (name, skipped) = last.expect("a snapshot has at least one candidate");
        if !matches!(skipped, Skipped::Drained) {
            // No listed key is proven: the next request lists afresh rather
            // than failing on this listing until it expires.
            self.pool.lock().await.forget_instances();
        }
        Err(match skipped {
            // R39: a drained pool is Chutes being busy, not an attack.
            Skipped::Drained => ProviderError::status(
                503,
                format!(
                    "Chutes instance {name} has no nonce left for {}",
                    self.canonical
                ),
            ),
            Skipped::BadKey => ProviderError::Attestation(format!(
                "all candidate Chutes instances failed (refusing to send inference); \
                 last: instance {name}: e2e_pubkey is not a base64 ML-KEM-768 key"
            )),
            Skipped::Attestation(why) => ProviderError::Attestation(format!(
                "all candidate Chutes instances failed (refusing to send inference); \
                 last: instance {name}: {why}"
            )),
        })
    }

    /// A fresh random boot nonce for one evidence fetch, as hex.
    fn boot_nonce(&self) -> String {
        let mut raw = [0u8; EVIDENCE_NONCE_LEN];
        // Sync lock, never held across an await.
        self.rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fill_bytes(&mut raw);
        raw.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The chute id and this request's candidates, discovering (again)
    /// when the snapshot cannot serve. Concurrent requests share one
    /// discovery: the pool lock is held across it.
    async fn snapshot(&self) -> Result<(HeaderValue, Vec<Candidate>), ProviderError> {
        let mut pool = self.pool.lock().await;
        if pool.usable() {
            if let Some(id) = pool.chute_id.clone() {
                return Ok((id, pool.candidates()));
            }
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
            }
            Err(e) => {
                if matches!(e, ProviderError::Status { status: 404, .. }) {
                    // The chute id may have changed: resolve it again next time.
                    pool.chute_id = None;
                }
                return Err(e);
            }
        }
        let candidates = pool.candidates();
        if candidates.is_empty() {
            return Err(ProviderError::status(
                503,
                format!(
                    "Chutes lists no instance with a key and a nonce for {}",
                    self.canonical
                ),
            ));
        }
        Ok((chute_id, candidates))
    }

    /// `GET /v1/models` → the slug's `chute_id`. An unlisted slug is R39's
    /// masked error (not HTTP: 502 generic), which falls through to the
    /// next provider and is not retried (R35.6).
    async fn resolve_chute_id(&self) -> Result<HeaderValue, ProviderError> {
        let list: ModelList = self
            .models_client
            .get_json(MODELS_PATH)
            .await
            .map_err(|e| chutes_failure(Stage::Resolve, e))?;
        let entry = list.data.into_iter().find(|m| m.id == self.slug);
        let Some(chute_id) = entry.and_then(|m| m.chute_id) else {
            return Err(ProviderError::Masked(format!(
                "{}: model {} not found: Chutes lists no chute for it",
                Stage::Resolve.name(),
                self.canonical
            )));
        };
        HeaderValue::from_str(&chute_id)
            .map_err(|_| ProviderError::BodyDecode("Chutes sent an unusable chute_id".into()))
    }

    /// `GET /e2e/instances/{chute_id}`: the listed instances and when their
    /// nonces expire. Nothing here is trusted yet: each request checks its
    /// candidate's evidence before using its key (§7b).
    async fn discover(
        &self,
        chute_id: &HeaderValue,
    ) -> Result<(Vec<PoolInstance>, Instant), ProviderError> {
        let chute_id = chute_id
            .to_str()
            .map_err(|_| ProviderError::BodyDecode("Chutes sent an unusable chute_id".into()))?;
        let path = format!("{INSTANCES_PATH}/{}", encode_segment(chute_id));
        let list: InstanceList = self
            .client
            .get_json(&path)
            .await
            .map_err(|e| chutes_failure(Stage::Discover, e))?;
        let expires = Instant::now() + snapshot_ttl(list.nonce_expires_in);

        let mut instances = Vec::with_capacity(list.instances.len());
        for info in list.instances {
            let pubkey = B64
                .decode(&info.e2e_pubkey)
                .ok()
                .filter(|k| k.len() == MLKEM_PK_LEN)
                .map(|k| Arc::new(SealingKey::new(&k)));
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
                id_text: info.instance_id,
                pubkey_b64: info.e2e_pubkey,
                pubkey,
                nonces,
            });
        }
        Ok((instances, expires))
    }

    /// Seals the request and `POST`s it to `/e2e/invoke`, every failure as
    /// R39 maps it. A refused nonce (R39's stale target: a restarted
    /// gateway forgot it) proves the snapshot stale and nothing was
    /// processed, so the snapshot is dropped and the attempt lists afresh
    /// once, transparently; a second refusal is R39's retryable 503.
    /// tiersim's departure from R60, which keeps the snapshot until it
    /// expires and so spends one attempt per dead nonce after a gateway
    /// restart. A gone chute or instance (404) drops the snapshot too.
    /// Returns the response key and the 200 response.
    async fn invoke(
        &self,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<(ResponseKey, crate::http::Response), ProviderError> {
        let body = self.upstream_body(req, stream);
        let mut relisted = false;
        loop {
            let (status, err_body) = match self.invoke_once(&body, stream).await {
                Ok(ok) => return Ok(ok),
                Err(InvokeError::Other(e)) => return Err(e),
                Err(InvokeError::Status(status, err_body)) => (status, err_body),
            };
            let raw = status_error(status, &err_body);
            let stale = matches!(
                &raw,
                ProviderError::Status { status: 400, message } if is_stale_target(message)
            );
            if stale || status == StatusCode::NOT_FOUND {
                let mut pool = self.pool.lock().await;
                pool.forget_instances();
                if status == StatusCode::NOT_FOUND {
                    // The chute or instance is gone: resolve it afresh next time.
                    pool.chute_id = None;
                }
            }
            if stale && !relisted {
                relisted = true;
                continue;
            }
            return Err(chutes_failure(Stage::invoke(stream), raw));
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
            seal_request_to(&mut *rng, &slot.pubkey, body.clone()).map_err(ProviderError::from)?
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
            .map_err(|e| chutes_failure(Stage::invoke(stream), provider_error(e)))?;
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

    fn context_window(&self) -> Option<u32> {
        self.context_window
    }

    async fn chat_completion(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        self.refuse(req, false)?;
        let started = Instant::now();
        let (key, resp) = self.invoke(req, false).await?;
        let left = self.timeouts.request.saturating_sub(started.elapsed());
        let blob = resp
            .bytes(MAX_BODY, left)
            .await
            .map_err(|e| chutes_failure(Stage::Invoke, provider_error(e)))?;
        let json = key.open_response(&blob)?;
        let body = normalize::json_answer(&json, &self.canonical)?;
        Ok(ChatResponse { body })
    }

    async fn chat_completion_stream(&self, req: &ChatRequest) -> Result<ChatStream, ProviderError> {
        self.refuse(req, true)?;
        let (key, resp) = self.invoke(req, true).await?;
        let mut state = Decrypting {
            body: Some(resp.into_stream(MAX_BODY, self.timeouts.stream_idle)),
            dec: StreamDecoder::new(key, self.version),
            norm: StreamNormalizer::new(&self.canonical, normalize::wants_usage(&req.body)),
            pending: None,
            after_flush: None,
            ended: false,
            #[cfg(feature = "planted-bugs")]
            keyed_priming: self.planted == Some(PlantedBug::KeyedPriming),
        };
        // R39: a cut or stall before the first item is a transport failure
        // of the invocation; anything else the stream said keeps its kind.
        state.prime().await.map_err(|e| match e {
            ProviderError::Connection(_) | ProviderError::Timeout => {
                chutes_failure(Stage::InvokeStream, e)
            }
            other => other,
        })?;
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |mut st| async move { st.next().await.map(|item| (item, st)) },
        )))
    }
}

// ------------------------------------------------------------------ stream

/// The encrypted SSE body turned into stream items (R23): only
/// authenticated chunks, normalised (R3, R57–R59); `Done` only for the
/// authenticated inner `[DONE]`; the first error ends it.
struct Decrypting {
    body: Option<BodyStream>,
    dec: StreamDecoder,
    norm: StreamNormalizer,
    /// An item read while priming, yielded first.
    pending: Option<Result<StreamItem, ProviderError>>,
    /// `Done`, held back while R58's flush chunk goes first.
    after_flush: Option<Result<StreamItem, ProviderError>>,
    ended: bool,
    /// `PlantedBug::KeyedPriming`: hand over once keyed (the old bug).
    #[cfg(feature = "planted-bugs")]
    keyed_priming: bool,
}

impl Decrypting {
    /// Reads until the first authenticated item (a chunk, or the inner
    /// `[DONE]`) or the first failure. Until content exists nothing has
    /// reached the client, so any failure before it (an `e2e_error` before
    /// or after `e2e_init`, a bad init, a first frame that does not
    /// authenticate, a cut) is the open's error: a failed attempt the router
    /// may retry or fall back from (SPEC-parity R34.7, R39). Stopping at the
    /// first *item*, not at a read boundary, is what makes the outcome the
    /// same however the body is chunked: `e2e_init` and a bad first frame in
    /// one read or in two give the same failed attempt.
    async fn prime(&mut self) -> Result<(), ProviderError> {
        loop {
            #[cfg(feature = "planted-bugs")]
            if self.keyed_priming && self.dec.is_keyed() {
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
        if let Some(done) = self.after_flush.take() {
            return Some(done);
        }
        if self.ended {
            return None;
        }
        while let Some(ev) = self.dec.next_event() {
            match ev {
                Ok(StreamEvent::Chunk(chunk)) => {
                    // R59: a usage chunk withheld from the client is still
                    // the router's (billing, R46).
                    let raw = chunk.clone();
                    return Some(Ok(match self.norm.chunk(chunk) {
                        Some(c) => StreamItem::Chunk(c),
                        None => StreamItem::Metered(raw),
                    }));
                }
                // Plaintext billing: unauthenticated, never content.
                Ok(StreamEvent::Usage(_)) => {}
                Ok(StreamEvent::Done) => {
                    self.ended = true;
                    self.body = None;
                    // R58: what the think transform held goes out first.
                    if let Some(flush) = self.norm.finish() {
                        self.after_flush = Some(Ok(StreamItem::Done));
                        return Some(Ok(StreamItem::Chunk(flush)));
                    }
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

/// A Chutes call, as R39's messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Resolve,
    Discover,
    Evidence,
    Invoke,
    InvokeStream,
}

impl Stage {
    fn invoke(stream: bool) -> Stage {
        if stream {
            Stage::InvokeStream
        } else {
            Stage::Invoke
        }
    }

    fn name(self) -> &'static str {
        match self {
            Stage::Resolve => "resolve chute_id",
            Stage::Discover => "discover instances",
            Stage::Evidence => "fetch evidence",
            Stage::Invoke => "Chutes /e2e/invoke",
            Stage::InvokeStream => "Chutes /e2e/invoke (stream)",
        }
    }
}

/// R39: a Chutes HTTP call's failure as the router classifies it. A stale
/// invoke target (a 400 about the nonce or instance) and any transport
/// failure (connect, reset, a deadline) are a retryable 503; 408, 429 and
/// 5xx keep their status but not the body (so it cannot trip R36 or R38);
/// every other status is masked: 502 generic, judged by its words (R35.6).
fn chutes_failure(stage: Stage, e: ProviderError) -> ProviderError {
    let invoke = matches!(stage, Stage::Invoke | Stage::InvokeStream);
    let stage = stage.name();
    let unavailable = |why: &str| {
        ProviderError::status(
            503,
            format!("{stage}: Chutes temporarily unavailable ({why})"),
        )
    };
    match e {
        ProviderError::Status { status, message } => match status {
            400 if invoke && is_stale_target(&message) => unavailable("stale Chutes E2E target"),
            408 | 429 | 500..=599 => {
                ProviderError::status(status, format!("{stage}: Chutes returned HTTP {status}"))
            }
            _ => {
                ProviderError::Masked(format!("{stage}: Chutes returned HTTP {status}: {message}"))
            }
        },
        ProviderError::Connection(_) | ProviderError::Timeout => {
            unavailable("Chutes HTTP transport error")
        }
        other => other,
    }
}

/// R39: an invoke 400 whose text says the nonce or instance it named is no
/// longer good: the client's snapshot is stale, not its request wrong.
fn is_stale_target(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    (m.contains("nonce") || m.contains("instance"))
        && [
            "expired",
            "stale",
            "already used",
            "consumed",
            "not found",
            "invalid",
        ]
        .iter()
        .any(|w| m.contains(w))
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
    use crate::chutes::attest::SimulatedVendor;
    use crate::net::TokioConnector;

    fn verifier() -> Arc<dyn Verifier> {
        Arc::new(SimulatedVendor::new([0; 32]))
    }

    fn provider(streaming: bool) -> ChutesProvider {
        let rng = shared_rng(super::super::e2ee::os_rng());
        ChutesConfig::new(
            "http://127.0.0.1:9",
            "k",
            "canon/M",
            "slug/M-TEE",
            verifier(),
        )
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
        let cfg = |url: &str, key: &str| ChutesConfig::new(url, key, "c", "s", verifier());
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
    fn r39_stale_invoke_target_is_a_retryable_503() {
        use crate::retry::{classify, Class};
        for text in [
            "nonce expired or never issued",
            "nonce already used",
            "invalid nonce: issued for another instance",
            "Instance not found",
            "nonce token expired",
        ] {
            for stage in [Stage::Invoke, Stage::InvokeStream] {
                let e = chutes_failure(stage, ProviderError::status(400, text));
                let ProviderError::Status {
                    status: 503,
                    message,
                } = &e
                else {
                    panic!("{text}: {e:?}");
                };
                assert!(message.ends_with("(stale Chutes E2E target)"), "{message}");
                assert!(matches!(classify(&e), Class::Retryable(_)), "{text}");
            }
            // Only the invocation names a target; a discovery 400 is masked.
            let e = chutes_failure(Stage::Discover, ProviderError::status(400, text));
            assert!(matches!(e, ProviderError::Masked(_)), "{e:?}");
        }
        // A 400 that is not about the nonce or instance is masked (502
        // generic), falls through, is not retried.
        let e = chutes_failure(
            Stage::Invoke,
            ProviderError::status(400, "malformed payload"),
        );
        assert_eq!(
            e,
            ProviderError::Masked(
                "Chutes /e2e/invoke: Chutes returned HTTP 400: malformed payload".into()
            )
        );
        assert_eq!(classify(&e), Class::FallThrough);
    }

    #[test]
    fn r39_statuses_keep_their_code_not_their_body() {
        use crate::retry::{classify, Class};
        // A body that would trip R36's client-media rule or R38's
        // model-not-found is dropped, so neither can.
        let media = "Error loading image data: 403 Client Error: Forbidden";
        for (status, stage, want) in [
            (
                500,
                Stage::Invoke,
                "Chutes /e2e/invoke: Chutes returned HTTP 500",
            ),
            (
                429,
                Stage::Discover,
                "discover instances: Chutes returned HTTP 429",
            ),
            (
                408,
                Stage::Evidence,
                "fetch evidence: Chutes returned HTTP 408",
            ),
            (
                503,
                Stage::Resolve,
                "resolve chute_id: Chutes returned HTTP 503",
            ),
        ] {
            let e = chutes_failure(stage, ProviderError::status(status, media));
            assert_eq!(e, ProviderError::status(status, want));
            assert_ne!(classify(&e), Class::FastReturn, "{want}");
        }
        for status in [401, 403, 404, 409, 413, 422] {
            let e = chutes_failure(Stage::Invoke, ProviderError::status(status, "nope"));
            assert!(matches!(e, ProviderError::Masked(_)), "{status}: {e:?}");
            assert_eq!(classify(&e), Class::FallThrough, "{status}");
        }
        // R35.6 still reads a masked error's words.
        let e = chutes_failure(
            Stage::Invoke,
            ProviderError::status(400, "upstream connection dropped"),
        );
        assert!(matches!(classify(&e), Class::Retryable(_)), "{e:?}");
    }

    #[test]
    fn r39_transport_failures_are_a_retryable_503() {
        use crate::retry::{classify, Class};
        for (stage, e) in [
            (Stage::Discover, ProviderError::Connection("reset".into())),
            (Stage::Invoke, ProviderError::Timeout),
            (Stage::InvokeStream, ProviderError::Timeout),
        ] {
            let got = chutes_failure(stage, e);
            assert_eq!(
                got,
                ProviderError::status(
                    503,
                    format!(
                        "{}: Chutes temporarily unavailable (Chutes HTTP transport error)",
                        stage.name()
                    )
                )
            );
            assert!(matches!(classify(&got), Class::Retryable(_)));
        }
        // Not transport, not HTTP: left as they are.
        for e in [
            ProviderError::Integrity("x".into()),
            ProviderError::Attestation("x".into()),
            ProviderError::BodyDecode("x".into()),
        ] {
            assert_eq!(chutes_failure(Stage::Invoke, e.clone()), e);
        }
    }

    #[test]
    fn r60_snapshot_ttl_is_min_120_else_30_minus_5() {
        let s = Duration::from_secs;
        assert_eq!(snapshot_ttl(60.0), s(55));
        assert_eq!(snapshot_ttl(55.0), s(50));
        assert_eq!(snapshot_ttl(600.0), s(115));
        assert_eq!(snapshot_ttl(0.0), s(25));
        assert_eq!(snapshot_ttl(-3.0), s(25));
        assert_eq!(snapshot_ttl(f64::NAN), s(25));
        // <= 5 s: every request discovers again.
        assert_eq!(snapshot_ttl(5.0), Duration::ZERO);
        assert_eq!(snapshot_ttl(2.0), Duration::ZERO);
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_segment("ab-1_2.~"), "ab-1_2.~");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
