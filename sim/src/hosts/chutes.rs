//! The simulated Chutes: one turmoil host playing the gateway and every
//! instance behind it (instances are logical), speaking SPEC §7 exactly.
//!
//! * `GET /v1/models` → `{"object":"list","data":[{"id": slug, "chute_id"}]}`;
//! * `GET /e2e/instances/{chute_id}` → per instance its ML-KEM key, fresh
//!   single-use nonces and evidence signed by the simulated vendor (§7b);
//! * `POST /e2e/invoke` → the instance opens the request, answers like a
//!   NEAR backend would (content from the request, `model` = the slug, ids
//!   and timestamps from counters) and seals the reply.
//!
//! Keys derive from the world seed; every random byte (nonces, ML-KEM
//! encapsulations, AEAD nonces) comes from a per-boot `ChaCha20Rng` seeded
//! from it, so a seed replays byte for byte.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::header::AUTHORIZATION;
use http::{HeaderMap, StatusCode};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tiersim_engine::chutes::attest::Evidence;
use tiersim_engine::chutes::e2ee::{
    seal_response, seal_response_raw, InstanceKeypair, StreamSealer, StreamVersion,
    MAX_DECOMPRESSED, NONCE_LEN,
};
use tiersim_engine::chutes::provider::{
    InstanceInfo, InstanceList, ModelEntry, ModelList, CHAT_PATH, HEADER_CHUTE_ID,
    HEADER_INSTANCE_ID, HEADER_NONCE, HEADER_PATH, HEADER_STREAM, INVOKE_PATH, MODELS_PATH,
};
use tiersim_engine::chutes::stream::{
    error_event, frame_event, init_event, usage_event, OUTER_DONE_EVENT,
};
use tiersim_engine::openai::MAX_SSE_LINE;

use super::{
    before_answer, body_answer, derive_seed, error_response, json_answer, keys, last_user_message,
    scripted, words, Service, Step, CREATED_BASE,
};
use crate::fault::{Fault, FaultBoard, RequestKind};

/// Nonces listed per instance and discovery (Chutes hands out a few).
const DEFAULT_NONCES: usize = 4;
/// `nonce_expires_in` of a listing.
const DEFAULT_NONCE_TTL: Duration = Duration::from_secs(60);

/// Builder of the Chutes host:
/// `ChutesGateway::new("chutes").chute(slug, 2, StreamVersion::V1).vendor_seed(s).world_seed(7).faults(&board).install(&mut sim)`.
#[derive(Debug, Clone)]
pub struct ChutesGateway {
    host: String,
    chutes: Vec<(String, u32, StreamVersion)>,
    vendor_seed: Option<[u8; 32]>,
    world_seed: u64,
    faults: FaultBoard,
    nonces_per_instance: usize,
    nonce_ttl: Duration,
    api_key: Option<String>,
}

impl ChutesGateway {
    pub fn new(host: impl Into<String>) -> Self {
        ChutesGateway {
            host: host.into(),
            chutes: Vec::new(),
            vendor_seed: None,
            world_seed: 0,
            faults: FaultBoard::new(),
            nonces_per_instance: DEFAULT_NONCES,
            nonce_ttl: DEFAULT_NONCE_TTL,
            api_key: None,
        }
    }

    /// Adds a chute with `instances` instances (at least one). A v1 chute
    /// always streams protocol v1 (as Chutes does today, whatever the client
    /// asks); a v2 chute honours the version the encrypted request asks for.
    pub fn chute(
        mut self,
        slug: impl Into<String>,
        instances: u32,
        version: StreamVersion,
    ) -> Self {
        self.chutes.push((slug.into(), instances.max(1), version));
        self
    }

    /// The simulated vendor's ed25519 seed (default: derived from the world seed).
    pub fn vendor_seed(mut self, seed: [u8; 32]) -> Self {
        self.vendor_seed = Some(seed);
        self
    }

    /// The seed every key, id and random byte of this host derives from.
    pub fn world_seed(mut self, seed: u64) -> Self {
        self.world_seed = seed;
        self
    }

    pub fn faults(mut self, board: &FaultBoard) -> Self {
        self.faults = board.clone();
        self
    }

    /// Nonces listed per instance on each discovery.
    pub fn nonces_per_instance(mut self, n: usize) -> Self {
        self.nonces_per_instance = n;
        self
    }

    /// How long listed nonces stay valid (`nonce_expires_in`).
    pub fn nonce_ttl(mut self, ttl: Duration) -> Self {
        self.nonce_ttl = ttl;
        self
    }

    /// Require this bearer key (default: any non-empty bearer token).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The vendor key's seed: the one set, else derived from the world seed.
    fn vendor_key_seed(&self) -> [u8; 32] {
        self.vendor_seed
            .unwrap_or_else(|| derive_seed(self.world_seed, "chutes/vendor"))
    }

    /// The vendor key the router must trust (§7b).
    pub fn vendor_public_key(&self) -> [u8; 32] {
        keys::ed25519_public(self.vendor_key_seed())
    }

    /// The `chute_id` the gateway lists for `slug`.
    pub fn chute_id(&self, slug: &str) -> String {
        uuid(&derive_seed(
            self.world_seed,
            &format!("chutes/chute-id/{slug}"),
        ))
    }

    pub fn install(self, sim: &mut turmoil::Sim<'_>) -> ChutesHandle {
        let (service, handle) = self.service();
        service.install(sim);
        handle
    }

    /// The host's HTTP surface, to install on turmoil or serve on real
    /// sockets, and the handle to what it does across boots.
    pub fn service(self) -> (Service, ChutesHandle) {
        let world = Arc::new(self.world());
        let handle = ChutesHandle::default();
        let boots = Arc::new(AtomicU64::new(0));
        let host = self.host.clone();
        let (log, faults, seed) = (handle.clone(), self.faults.clone(), self.world_seed);
        let (nonces, ttl, api_key) = (self.nonces_per_instance, self.nonce_ttl, self.api_key);
        let service = Service::new(host.clone(), move || {
            // A restarted host draws fresh randomness (it forgot its nonces,
            // and must not hand out the same ones again).
            let boot = boots.fetch_add(1, Ordering::Relaxed);
            let rng_seed = derive_seed(seed, &format!("chutes/{host}/rng/boot-{boot}"));
            let gateway = Gateway {
                host: host.clone(),
                world: world.clone(),
                faults: faults.clone(),
                log: log.clone(),
                nonces_per_instance: nonces,
                nonce_ttl: ttl,
                api_key: api_key.clone(),
                boot: Mutex::new(Boot {
                    rng: ChaCha20Rng::from_seed(rng_seed),
                    nonces: BTreeMap::new(),
                    served: 0,
                }),
            };
            Router::new()
                .route(MODELS_PATH, get(models))
                .route("/e2e/instances/{chute_id}", get(instances))
                .route(INVOKE_PATH, post(invoke))
                .with_state(Arc::new(gateway))
        });
        (service, handle)
    }

    fn world(&self) -> World {
        let vendor_seed = self.vendor_key_seed();
        let mitm = keys::instance_keypair(seed64(
            self.world_seed,
            &format!("chutes/{}/gateway-key", self.host),
        ));
        let mut chutes = BTreeMap::new();
        for (slug, n, version) in &self.chutes {
            let chute_id = self.chute_id(slug);
            let instances = (0..*n)
                .map(|i| {
                    let label = format!("chutes/{slug}/instance-{i}");
                    let key_seed = seed64(self.world_seed, &label);
                    let key = keys::instance_keypair(key_seed);
                    Instance {
                        id: uuid(&derive_seed(self.world_seed, &format!("{label}/id"))),
                        pubkey_b64: B64.encode(key.public_key_bytes()),
                        evidence: keys::binding_evidence(vendor_seed, key_seed),
                        key,
                    }
                })
                .collect();
            let chute = Chute {
                slug: slug.clone(),
                version: *version,
                instances,
            };
            chutes.insert(chute_id, chute);
        }
        World {
            chutes,
            mitm_pubkey_b64: B64.encode(mitm.public_key_bytes()),
        }
    }
}

/// A 64-byte ML-KEM seed from the world seed and a label.
fn seed64(world_seed: u64, label: &str) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&derive_seed(world_seed, &format!("{label}/d")));
    out[32..].copy_from_slice(&derive_seed(world_seed, &format!("{label}/z")));
    out
}

/// UUID-shaped text from 16 bytes (ids look like Chutes' ones).
fn uuid(bytes: &[u8]) -> String {
    let hex: String = bytes[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// What the host knows for its whole life (all boots).
struct World {
    /// By chute id. BTreeMap: listings come out in a stable order.
    chutes: BTreeMap<String, Chute>,
    /// The gateway's own ML-KEM key, listed by the `wrong_key` fault.
    mitm_pubkey_b64: String,
}

struct Chute {
    slug: String,
    version: StreamVersion,
    instances: Vec<Instance>,
}

struct Instance {
    id: String,
    key: Arc<InstanceKeypair>,
    pubkey_b64: String,
    evidence: Evidence,
}

/// Per-boot state: lost on a crash, like a real gateway's.
struct Boot {
    rng: ChaCha20Rng,
    /// Every nonce issued this boot. BTreeMap: deterministic, never listed.
    nonces: BTreeMap<String, NonceRecord>,
    /// Invocations answered: ids and timestamps derive from it.
    served: u64,
}

struct NonceRecord {
    chute_id: String,
    instance_id: String,
    expires: tokio::time::Instant,
    used: bool,
}

struct Gateway {
    host: String,
    world: Arc<World>,
    faults: FaultBoard,
    log: ChutesHandle,
    nonces_per_instance: usize,
    nonce_ttl: Duration,
    api_key: Option<String>,
    boot: Mutex<Boot>,
}

impl Gateway {
    fn boot(&self) -> MutexGuard<'_, Boot> {
        self.boot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Authorization: Bearer <key>` present (and right, if a key is set).
    fn authorised(&self, headers: &HeaderMap) -> bool {
        let Some(token) = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        match &self.api_key {
            Some(key) => token == key,
            None => !token.trim().is_empty(),
        }
    }

    /// The gateway's front door, shared by every route: the fault board is
    /// consulted once (delays and injected statuses act here), then the API
    /// key is checked. `Ok`: the fault left to act on the answer, if any.
    async fn admit(
        &self,
        kind: RequestKind,
        headers: &HeaderMap,
        model: &str,
        streaming: bool,
    ) -> Result<Option<Fault>, Response> {
        let fault = self.faults.take(&self.host, kind);
        if let Some(resp) = before_answer(fault.as_ref(), &self.host, model, streaming).await {
            self.log.served(kind, resp.status().as_u16(), Bytes::new());
            return Err(resp);
        }
        if !self.authorised(headers) {
            return Err(self.error(
                kind,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or bad API key",
            ));
        }
        Ok(fault)
    }

    /// An error answer, logged.
    fn error(&self, kind: RequestKind, status: StatusCode, code: &str, message: &str) -> Response {
        let resp = error_response(status, Some(code), &format!("{}: {message}", self.host));
        self.log.served(kind, status.as_u16(), Bytes::new());
        resp
    }
}

// ------------------------------------------------------------------ handle

/// What the Chutes host did, across boots, for tests and the runner.
#[derive(Debug, Clone, Default)]
pub struct ChutesHandle(Arc<Mutex<Log>>);

#[derive(Debug, Default)]
struct Log {
    served: Vec<Served>,
    invocations: Vec<Invocation>,
    nonces_issued: u64,
}

/// One answer the host sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Served {
    pub kind: RequestKind,
    pub status: u16,
    /// The exact body bytes (empty for error answers; an oversized-line
    /// stream records a placeholder for the giant line).
    #[serde(skip)]
    pub body: Bytes,
}

/// One `POST /e2e/invoke` that reached an instance check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invocation {
    pub chute_id: String,
    pub instance_id: String,
    pub nonce: String,
    /// `X-E2E-Stream`.
    pub stream: bool,
    /// The decrypted request's `model` (`None`: it did not decrypt).
    pub model: Option<String>,
    /// The stream protocol answered with (streams only).
    pub stream_version: Option<StreamVersion>,
    pub status: u16,
}

impl ChutesHandle {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn served(&self, kind: RequestKind, status: u16, body: Bytes) {
        self.log().served.push(Served { kind, status, body });
    }

    /// Every answer, in order.
    pub fn served_log(&self) -> Vec<Served> {
        self.log().served.clone()
    }

    /// Every invocation, in order.
    pub fn invocations(&self) -> Vec<Invocation> {
        self.log().invocations.clone()
    }

    /// Nonces handed out so far.
    pub fn nonces_issued(&self) -> u64 {
        self.log().nonces_issued
    }

    /// Requests answered so far (any route, any status).
    pub fn requests(&self) -> usize {
        self.log().served.len()
    }
}

// ------------------------------------------------------------------ routes

async fn models(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let kind = RequestKind::Models;
    let fault = match gw.admit(kind, &headers, "", false).await {
        Ok(fault) => fault,
        Err(resp) => return resp,
    };
    let list = ModelList {
        data: gw
            .world
            .chutes
            .iter()
            .map(|(id, c)| ModelEntry {
                id: c.slug.clone(),
                chute_id: Some(id.clone()),
            })
            .collect(),
    };
    let mut body = serde_json::to_value(&list).expect("model list serialises");
    body["object"] = json!("list");
    let body = Bytes::from(body.to_string());
    gw.log.served(kind, 200, body.clone());
    json_answer(fault.as_ref(), body)
}

async fn instances(
    State(gw): State<Arc<Gateway>>,
    Path(chute_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let kind = RequestKind::Instances;
    let fault = match gw.admit(kind, &headers, "", false).await {
        Ok(fault) => fault,
        Err(resp) => return resp,
    };
    let Some(chute) = gw.world.chutes.get(&chute_id) else {
        return gw.error(
            kind,
            StatusCode::NOT_FOUND,
            "chute_not_found",
            "no such chute",
        );
    };
    let substitute = matches!(fault, Some(Fault::WrongKey));
    let list = {
        let mut boot = gw.boot();
        let expires = tokio::time::Instant::now() + gw.nonce_ttl;
        let mut infos = Vec::with_capacity(chute.instances.len());
        for inst in &chute.instances {
            let nonces: Vec<String> = (0..gw.nonces_per_instance)
                .map(|_| {
                    let mut raw = [0u8; 16];
                    boot.rng.fill_bytes(&mut raw);
                    let nonce: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                    boot.nonces.insert(
                        nonce.clone(),
                        NonceRecord {
                            chute_id: chute_id.clone(),
                            instance_id: inst.id.clone(),
                            expires,
                            used: false,
                        },
                    );
                    nonce
                })
                .collect();
            infos.push(InstanceInfo {
                instance_id: inst.id.clone(),
                // wrong_key: the gateway lists its own key but can only
                // replay the evidence of the real one.
                e2e_pubkey: if substitute {
                    gw.world.mitm_pubkey_b64.clone()
                } else {
                    inst.pubkey_b64.clone()
                },
                nonces,
                evidence: inst.evidence.clone(),
            });
        }
        InstanceList {
            instances: infos,
            nonce_expires_in: gw.nonce_ttl.as_secs_f64(),
        }
    };
    gw.log.log().nonces_issued += (chute.instances.len() * gw.nonces_per_instance) as u64;
    let body = Bytes::from(serde_json::to_vec(&list).expect("listing serialises"));
    gw.log.served(kind, 200, body.clone());
    json_answer(fault.as_ref(), body)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn invoke(State(gw): State<Arc<Gateway>>, headers: HeaderMap, blob: Bytes) -> Response {
    let stream = header(&headers, HEADER_STREAM).eq_ignore_ascii_case("true");
    let kind = if stream {
        RequestKind::ChatStream
    } else {
        RequestKind::Chat
    };
    let chute_id = header(&headers, HEADER_CHUTE_ID).to_string();
    let instance_id = header(&headers, HEADER_INSTANCE_ID).to_string();
    let nonce = header(&headers, HEADER_NONCE).to_string();
    let chute = gw.world.chutes.get(&chute_id);
    let slug = chute.map(|c| c.slug.as_str()).unwrap_or_default();

    let fault = match gw.admit(kind, &headers, slug, stream).await {
        Ok(fault) => fault,
        Err(resp) => return resp,
    };
    let Some(chute) = chute else {
        return gw.error(
            kind,
            StatusCode::NOT_FOUND,
            "chute_not_found",
            "no such chute",
        );
    };
    let Some(instance) = chute.instances.iter().find(|i| i.id == instance_id) else {
        return gw.error(
            kind,
            StatusCode::NOT_FOUND,
            "instance_not_found",
            "no such instance",
        );
    };
    if header(&headers, HEADER_PATH) != CHAT_PATH {
        return gw.error(
            kind,
            StatusCode::BAD_REQUEST,
            "unsupported_path",
            "X-E2E-Path must be /v1/chat/completions",
        );
    }

    let mut record = Invocation {
        chute_id: chute_id.clone(),
        instance_id: instance_id.clone(),
        nonce: nonce.clone(),
        stream,
        model: None,
        stream_version: None,
        status: 200,
    };
    let answer = gw.answer(fault.as_ref(), chute, instance, &mut record, &blob);
    let resp = match answer {
        Ok((content_type, steps)) => {
            let body: Vec<u8> = steps
                .iter()
                .filter_map(|s| match s {
                    Step::Data(b) if b.len() > MAX_SSE_LINE => Some(&b"<oversized line>\n"[..]),
                    Step::Data(b) => Some(&b[..]),
                    _ => None,
                })
                .flatten()
                .copied()
                .collect();
            gw.log.served(kind, 200, body.into());
            match steps.as_slice() {
                // A plain body keeps the generic body faults (reset, cut).
                [Step::Data(b)] if !stream => body_answer(fault.as_ref(), content_type, b.clone()),
                _ => scripted(StatusCode::OK, content_type, steps),
            }
        }
        Err((status, code, message)) => {
            record.status = status.as_u16();
            gw.error(kind, status, code, &message)
        }
    };
    gw.log.log().invocations.push(record);
    resp
}

/// An instance-side rejection: status, `error.code`, message.
type Rejection = (StatusCode, &'static str, String);

impl Gateway {
    /// The instance's side: check and spend the nonce, open the request,
    /// build the reply (`(content type, body steps)`). Synchronous: the boot
    /// lock is never held across an await.
    fn answer(
        &self,
        fault: Option<&Fault>,
        chute: &Chute,
        instance: &Instance,
        record: &mut Invocation,
        blob: &[u8],
    ) -> Result<(&'static str, Vec<Step>), Rejection> {
        let mut boot = self.boot();
        let now = tokio::time::Instant::now();
        match boot.nonces.get_mut(&record.nonce) {
            None => {
                return Err((
                    StatusCode::FORBIDDEN,
                    "invalid_nonce",
                    "unknown nonce".into(),
                ))
            }
            Some(n) if n.used => {
                return Err((
                    StatusCode::FORBIDDEN,
                    "nonce_reused",
                    "nonce already used".into(),
                ))
            }
            Some(n) if n.chute_id != record.chute_id || n.instance_id != record.instance_id => {
                return Err((
                    StatusCode::FORBIDDEN,
                    "invalid_nonce",
                    "nonce issued for another instance".into(),
                ))
            }
            Some(n) if now >= n.expires => {
                n.used = true;
                return Err((
                    StatusCode::FORBIDDEN,
                    "invalid_nonce",
                    "nonce expired".into(),
                ));
            }
            Some(n) => n.used = true,
        }

        let (request, response_pk) = instance.key.open_request(blob).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                "e2e_decrypt_failed",
                format!("could not open the request: {e}"),
            )
        })?;
        self.faults.note_received(&self.host, &request);
        let model = request["model"].as_str().unwrap_or_default().to_string();
        record.model = Some(model.clone());
        if model != chute.slug {
            return Err((
                StatusCode::BAD_REQUEST,
                "model_mismatch",
                format!("model `{model}` is not this chute's"),
            ));
        }

        boot.served += 1;
        let n = boot.served;
        let id = format!("chatcmpl-{}-{n}", self.host);
        let created = CREATED_BASE + n;
        let prompt = last_user_message(&request);
        let content = format!("chutes says: {prompt}");
        let usage = json!({
            "prompt_tokens": words(&prompt),
            "completion_tokens": words(&content),
            "total_tokens": words(&prompt) + words(&content),
        });
        let rng = &mut boot.rng;

        if !record.stream {
            let body = json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": chute.slug,
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": content },
                    "finish_reason": "stop",
                }],
                "usage": usage,
            });
            let sealed = match fault {
                Some(Fault::GzipBomb) => seal_response_raw(rng, &response_pk, gzip_bomb()),
                _ => seal_response(rng, &response_pk, body.to_string().as_bytes()),
            };
            let sealed = sealed.map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    "e2e_encrypt_failed",
                    format!("could not seal the reply: {e}"),
                )
            })?;
            return Ok((
                "application/octet-stream",
                vec![Step::Data(Bytes::from(sealed))],
            ));
        }

        // A v1 chute speaks v1 whatever is asked; a v2 chute honours the ask.
        let version = match chute.version {
            StreamVersion::V1 => StreamVersion::V1,
            StreamVersion::V2 => StreamVersion::from_request(&request).map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    "unsupported_stream_version",
                    e.to_string(),
                )
            })?,
        };
        record.stream_version = Some(version);

        if matches!(fault, Some(Fault::E2eError)) {
            // The instance fails before keying the stream.
            let events = [
                error_event("instance failed to process the request"),
                OUTER_DONE_EVENT.to_string(),
            ];
            return Ok(("text/event-stream", events.map(data).into()));
        }

        // Role, three content pieces, the finish: five raw SSE lines.
        let line = |delta: Value, finish: Value| {
            let c = json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": chute.slug,
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
            });
            format!("data: {c}")
        };
        let mut lines = vec![line(
            json!({ "role": "assistant", "content": "" }),
            Value::Null,
        )];
        for piece in ["chutes".to_string(), " says:".into(), format!(" {prompt}")] {
            lines.push(line(json!({ "content": piece }), Value::Null));
        }
        lines.push(line(json!({}), json!("stop")));

        let (init, mut sealer) = StreamSealer::new(rng, &response_pk, version).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                "e2e_encrypt_failed",
                format!("could not key the stream: {e}"),
            )
        })?;
        let mut events = vec![Event::Init(init_event(&init))];
        for l in &lines {
            events.push(Event::Frame(frame_event(
                &sealer.seal_frame(rng, l.as_bytes()),
            )));
        }
        events.push(Event::Frame(frame_event(&sealer.seal_done(rng))));
        // The plaintext billing event follows the inner [DONE]: Chutes'
        // published client passes it through to the OpenAI SDK as a chunk
        // without `choices`, and the SDK stops yielding at the first
        // [DONE], so this is the one place where the client, used as its
        // README shows (`chunk.choices[0]` on every chunk), does not break.
        events.push(Event::Plain(usage_event(&usage)));
        events.push(Event::Plain(OUTER_DONE_EVENT.into()));

        Ok(("text/event-stream", gateway_stream(fault, events)))
    }
}

/// One SSE event of an encrypted stream, as the gateway relays it.
enum Event {
    Init(String),
    /// An `e2e` frame: what frame faults count and move.
    Frame(String),
    /// Plaintext: usage, outer `[DONE]`.
    Plain(String),
}

impl Event {
    fn text(self) -> String {
        match self {
            Event::Init(s) | Event::Frame(s) | Event::Plain(s) => s,
        }
    }
}

fn data(event: String) -> Step {
    Step::Data(Bytes::from(event))
}

/// Position in `events` of frame number `index`.
fn frame_pos(events: &[Event], index: u32) -> Option<usize> {
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::Frame(_)))
        .nth(index as usize)
        .map(|(i, _)| i)
}

/// Position in `events` right after `n` frames (and anything before the next).
fn after_frames(events: &[Event], n: u32) -> usize {
    if n == 0 {
        return events
            .iter()
            .position(|e| !matches!(e, Event::Init(_)))
            .unwrap_or(events.len());
    }
    frame_pos(events, n - 1).map_or(events.len(), |i| i + 1)
}

/// The frame event with one ciphertext bit flipped (valid base64 still).
fn corrupt(event: &Event) -> String {
    let Event::Frame(text) = event else {
        unreachable!("only frames are corrupted")
    };
    let b64 = text
        .trim_end()
        .strip_prefix("data: {\"e2e\": \"")
        .and_then(|t| t.strip_suffix("\"}"))
        .expect("frame events are built by frame_event");
    let mut raw = B64.decode(b64).expect("the sealer's base64");
    // Past the AEAD nonce: the ciphertext (or tag) itself.
    let at = NONCE_LEN.min(raw.len() - 1);
    raw[at] ^= 0x01;
    frame_event(&B64.encode(raw))
}

/// The gateway relays the instance's events, tampered with as the fault says.
fn gateway_stream(fault: Option<&Fault>, mut events: Vec<Event>) -> Vec<Step> {
    match fault {
        Some(Fault::DropFrame { index }) => {
            if let Some(i) = frame_pos(&events, *index) {
                events.remove(i);
            }
        }
        Some(Fault::ReorderFrame { index }) => {
            if let (Some(a), Some(b)) = (frame_pos(&events, *index), frame_pos(&events, index + 1))
            {
                events.swap(a, b);
            }
        }
        Some(Fault::ReplayFrame { index }) => {
            if let Some(i) = frame_pos(&events, *index) {
                let Event::Frame(copy) = &events[i] else {
                    unreachable!("frame_pos finds frames")
                };
                let copy = Event::Frame(copy.clone());
                events.insert(i + 1, copy);
            }
        }
        Some(Fault::FrameBeforeInit) => {
            if let Some(i) = frame_pos(&events, 0) {
                let frame = events.remove(i);
                events.insert(0, frame);
            }
        }
        Some(Fault::CorruptFrame { index }) => {
            if let Some(i) = frame_pos(&events, *index) {
                events[i] = Event::Frame(corrupt(&events[i]));
            }
        }
        Some(Fault::BadBase64Frame { index }) => {
            if let Some(i) = frame_pos(&events, *index) {
                events[i] = Event::Frame(frame_event("!!not base64!!"));
            }
        }
        Some(Fault::ForgedOuterDone { after_frames: n }) => {
            events.truncate(after_frames(&events, *n));
            events.push(Event::Plain(OUTER_DONE_EVENT.into()));
        }
        // A clean end after n frames: no inner, no outer [DONE].
        Some(Fault::CutStreamAfter { after_chunks }) => {
            events.truncate(after_frames(&events, *after_chunks));
        }
        _ => {}
    }
    let mut steps: Vec<Step> = events.into_iter().map(|e| data(e.text())).collect();
    match fault {
        Some(Fault::ResetBeforeBody) => steps = vec![Step::Reset],
        Some(Fault::ResetAfterChunks { after_chunks }) => {
            // The init event plus `after_chunks` frames, then the reset.
            steps.truncate(1 + *after_chunks as usize);
            steps.extend([Step::Flush, Step::Reset]);
        }
        Some(Fault::SlowFirstTokenMs { ms }) => {
            steps.insert(1, Step::Sleep(Duration::from_millis(*ms)));
        }
        Some(Fault::OversizedLine) => {
            // After the init and one frame: an `e2e` line past the cap.
            let mut line = Vec::with_capacity(MAX_SSE_LINE + 32);
            line.extend_from_slice(b"data: {\"e2e\": \"");
            line.resize(MAX_SSE_LINE + 16, b'A');
            line.extend_from_slice(b"\"}\n\n");
            steps.insert(2.min(steps.len()), Step::Data(Bytes::from(line)));
        }
        _ => {}
    }
    steps
}

/// An authenticated gzip stream that inflates to 64 MiB + 1 KiB of zeros
/// (about 64 KiB compressed). Built once: it is the same bytes every time.
fn gzip_bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..MAX_DECOMPRESSED >> 20 {
            enc.write_all(&zeros).expect("writing to a Vec cannot fail");
        }
        enc.write_all(&zeros[..1024])
            .expect("writing to a Vec cannot fail");
        enc.finish().expect("writing to a Vec cannot fail")
    })
}
