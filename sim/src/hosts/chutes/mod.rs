//! The simulated Chutes: one turmoil host playing the gateway and every
//! instance behind it (instances are logical), on the wire of SPEC §7 and
//! §7b (`tiersim_engine::chutes::wire`, shared with the engine's client):
//!
//! * `GET /v1/models` (also under [`MODELS_PREFIX`], the model-listing base
//!   URL the router is configured with) → `{"object":"list","data":[{"id":
//!   slug, "chute_id"}]}`;
//! * `GET /e2e/instances/{chute_id}` → per instance its ML-KEM key and
//!   fresh single-use nonces (no evidence: Chutes serves that apart);
//! * `GET /chutes/{chute_id}/evidence?nonce=<64 hex>` → per instance a
//!   quote signed by the simulated vendor whose report data binds the
//!   fetch nonce, the instance key and its certificate (§7b);
//! * `POST /e2e/invoke` → the instance opens the request, answers like a
//!   NEAR backend would (content from the request, `model` = the slug, ids
//!   and timestamps from counters) and seals the reply.
//!
//! Split by concern: [`gateway`] (routes, the fault board, the nonce
//! table), [`instance`] (opening the request, building and sealing the
//! reply), [`tamper`] (what an on-path gateway does to streams and
//! evidence under a fault).
//!
//! Keys derive from the world seed; every random byte (nonces, ML-KEM
//! encapsulations, AEAD nonces) comes from a per-boot `ChaCha20Rng` seeded
//! from it, so a seed replays byte for byte.

mod gateway;
mod instance;
mod tamper;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::Serialize;
use tiersim_engine::chutes::attest::{simulated_certificate, VendorKey};
use tiersim_engine::chutes::e2ee::{InstanceKeypair, StreamVersion};
use tiersim_engine::chutes::wire::{
    EVIDENCE_PREFIX, EVIDENCE_SUFFIX, INSTANCES_PATH, INVOKE_PATH, MODELS_PATH,
};

use super::{derive_seed, keys, Service};
use crate::fault::{FaultBoard, RequestKind};
use gateway::{Boot, Gateway, NonceTable};

/// Path prefix the model list is also served under: the router's
/// model-listing base URL is `{gateway}{MODELS_PREFIX}`, apart from its API
/// base URL, as at Chutes (§7b).
pub const MODELS_PREFIX: &str = "/llm";

/// Nonces listed per instance and discovery (Chutes hands out a few). A
/// world fact the reference model reads: it decides when an instance has
/// run dry and drops out of R61's candidates.
pub const DEFAULT_NONCES: usize = 4;
/// `nonce_expires_in` of a listing.
const DEFAULT_NONCE_TTL: Duration = Duration::from_secs(60);

/// What a chute's instances put in their answers beyond the plain reply
/// (the scenario's `[[chutes]] reply` words), for the router's
/// normalisation to act on (SPEC-parity R57–R59).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reply {
    /// A leading `<think>` block in the content, its tags split across
    /// chunks when streamed (R58).
    pub think: bool,
    /// Fields outside R57's allowlist (and the allowed
    /// `chutes_verification`).
    pub extra_fields: bool,
    /// Streamed: `usage` on every content chunk, and a final choice-less
    /// usage chunk when the request asks `include_usage` (R59).
    pub usage: bool,
}

/// Builder of the Chutes host:
/// `ChutesGateway::new("chutes").chute(slug, 2, StreamVersion::V1).vendor_seed(s).world_seed(7).faults(&board).install(&mut sim)`.
#[derive(Debug, Clone)]
pub struct ChutesGateway {
    host: String,
    chutes: Vec<(String, u32, StreamVersion)>,
    replies: BTreeMap<String, Reply>,
    vendor_seed: Option<[u8; 32]>,
    world_seed: u64,
    key_seed: Option<u64>,
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
            replies: BTreeMap::new(),
            vendor_seed: None,
            world_seed: 0,
            key_seed: None,
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

    /// What the instances of chute `slug` add to their answers.
    pub fn reply(mut self, slug: impl Into<String>, reply: Reply) -> Self {
        self.replies.insert(slug.into(), reply);
        self
    }

    /// The simulated vendor's ed25519 seed (default: derived from the world seed).
    pub fn vendor_seed(mut self, seed: [u8; 32]) -> Self {
        self.vendor_seed = Some(seed);
        self
    }

    /// The seed every key, id and random byte of this host derives from
    /// (keys: unless [`key_seed`](Self::key_seed) is set).
    pub fn world_seed(mut self, seed: u64) -> Self {
        self.world_seed = seed;
        self
    }

    /// The seed its identity keys derive from instead of the world seed:
    /// the vendor key (unless [`vendor_seed`](Self::vendor_seed) is set),
    /// each instance's ML-KEM keypair and certificate key, and the
    /// gateway's own ML-KEM keypair. Ids, nonces
    /// and every other random byte still come from the world seed.
    pub fn key_seed(mut self, seed: u64) -> Self {
        self.key_seed = Some(seed);
        self
    }

    fn identity_seed(&self) -> u64 {
        self.key_seed.unwrap_or(self.world_seed)
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

    /// The vendor key's seed: the one set, else derived from the key seed.
    fn vendor_key_seed(&self) -> [u8; 32] {
        self.vendor_seed
            .unwrap_or_else(|| derive_seed(self.identity_seed(), "chutes/vendor"))
    }

    /// The vendor key the router must trust (§7b). Read from the memoised
    /// vendor key itself, so a world derives that ed25519 key once.
    pub fn vendor_public_key(&self) -> [u8; 32] {
        keys::vendor_key(self.vendor_key_seed()).public_key()
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
                    nonces: NonceTable::default(),
                    served: 0,
                }),
            };
            Router::new()
                .route(MODELS_PATH, get(gateway::models))
                .route(
                    &format!("{MODELS_PREFIX}{MODELS_PATH}"),
                    get(gateway::models),
                )
                .route(
                    &format!("{INSTANCES_PATH}/{{chute_id}}"),
                    get(gateway::instances),
                )
                .route(
                    &format!("{EVIDENCE_PREFIX}/{{chute_id}}{EVIDENCE_SUFFIX}"),
                    get(gateway::evidence),
                )
                .route(INVOKE_PATH, post(gateway::invoke))
                .with_state(Arc::new(gateway))
        });
        (service, handle)
    }

    fn world(&self) -> World {
        let mut chutes = BTreeMap::new();
        for (slug, n, version) in &self.chutes {
            let chute_id = self.chute_id(slug);
            let instances = (0..*n)
                .map(|i| {
                    let label = format!("chutes/{slug}/instance-{i}");
                    let tls = derive_seed(self.identity_seed(), &format!("{label}/tls"));
                    Instance {
                        id: uuid(&derive_seed(self.world_seed, &format!("{label}/id"))),
                        key: LazyKeypair::new(seed64(self.identity_seed(), &label)),
                        certificate: simulated_certificate(&tls),
                    }
                })
                .collect();
            let chute = Chute {
                slug: slug.clone(),
                version: *version,
                reply: self.replies.get(slug).copied().unwrap_or_default(),
                instances,
            };
            chutes.insert(chute_id, chute);
        }
        World {
            chutes,
            vendor_seed: self.vendor_key_seed(),
            vendor: OnceLock::new(),
            mitm: LazyKeypair::new(seed64(
                self.identity_seed(),
                &format!("chutes/{}/gateway-key", self.host),
            )),
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
///
/// Its ML-KEM keypairs and the vendor key are derived on first use, not
/// when the world is built: a seed that never lists a chute (most seeds of a
/// sweep list only the Chutes-only model's) never pays for its key, and a
/// world without an evidence fetch never derives the vendor's. Each is a
/// pure function of its seed, so when it is derived changes no byte.
pub(super) struct World {
    /// By chute id. BTreeMap: listings come out in a stable order.
    pub(super) chutes: BTreeMap<String, Chute>,
    vendor_seed: [u8; 32],
    vendor: OnceLock<Arc<VendorKey>>,
    /// The gateway's own ML-KEM key: listed by `wrong_key`, bound by
    /// `evidence = "other_key"`, keyed to by `stream_wrong_key`.
    pub(super) mitm: LazyKeypair,
}

impl World {
    /// Signs evidence (§7b).
    pub(super) fn vendor(&self) -> &VendorKey {
        self.vendor
            .get_or_init(|| keys::vendor_key(self.vendor_seed))
    }
}

pub(super) struct Chute {
    pub(super) slug: String,
    pub(super) version: StreamVersion,
    pub(super) reply: Reply,
    pub(super) instances: Vec<Instance>,
}

pub(super) struct Instance {
    pub(super) id: String,
    pub(super) key: LazyKeypair,
    /// Its simulated certificate (an ed25519 SPKI in DER), bound by evidence.
    pub(super) certificate: Vec<u8>,
}

/// An ML-KEM-768 keypair derived from its 64-byte seed when first asked for
/// (through the process-wide memo, [`keys::instance_keypair`]).
pub(super) struct LazyKeypair {
    seed: [u8; 64],
    derived: OnceLock<(Arc<InstanceKeypair>, String)>,
}

impl LazyKeypair {
    fn new(seed: [u8; 64]) -> Self {
        LazyKeypair {
            seed,
            derived: OnceLock::new(),
        }
    }

    fn derived(&self) -> &(Arc<InstanceKeypair>, String) {
        self.derived.get_or_init(|| {
            let key = keys::instance_keypair(self.seed);
            let b64 = B64.encode(key.public_key_bytes());
            (key, b64)
        })
    }

    pub(super) fn keypair(&self) -> &InstanceKeypair {
        &self.derived().0
    }

    /// The public key's bytes (1184).
    pub(super) fn public_key(&self) -> &[u8] {
        self.keypair().public_key_bytes()
    }

    /// The public key in base64, as a listing and evidence carry it.
    pub(super) fn public_key_b64(&self) -> &str {
        &self.derived().1
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
    /// Nonces the gateway's current boot still remembers.
    nonces_live: usize,
    /// The most it ever remembered at once.
    nonces_peak: usize,
    /// Evidence fetches answered.
    evidence_fetches: u64,
    /// `serve` keeps no per-request log (see [`ChutesHandle::stop_recording`]).
    unrecorded: bool,
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
        let mut log = self.log();
        if !log.unrecorded {
            log.served.push(Served { kind, status, body });
        }
    }

    fn invoked(&self, record: Invocation) {
        let mut log = self.log();
        if !log.unrecorded {
            log.invocations.push(record);
        }
    }

    /// From now on, keep no per-request log (answers, invocations): for
    /// `serve`, whose gateway serves for as long as it is asked to and
    /// whose log nobody reads. The counters still count.
    pub fn stop_recording(&self) {
        let mut log = self.log();
        log.unrecorded = true;
        log.served = Vec::new();
        log.invocations = Vec::new();
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

    /// Nonces the gateway remembers now (issued, not yet expired or evicted).
    pub fn nonces_live(&self) -> usize {
        self.log().nonces_live
    }

    /// The most nonces the gateway remembered at once.
    pub fn nonces_peak(&self) -> usize {
        self.log().nonces_peak
    }

    /// Evidence fetches answered.
    pub fn evidence_fetches(&self) -> u64 {
        self.log().evidence_fetches
    }

    /// Requests answered so far (any route, any status).
    pub fn requests(&self) -> usize {
        self.log().served.len()
    }
}
