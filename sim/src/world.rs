//! Builds the turmoil world a scenario describes: catalog, NEAR backends,
//! Chutes, external providers and the router running the real engine.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tiersim_engine::api::{self, RouteObserver};
use tiersim_engine::app::{App, AppSettings, ChutesFactory};
use tiersim_engine::catalog::CatalogRow;
use tiersim_engine::config::EngineConfig;
use tiersim_engine::openai::Timeouts;
use tiersim_engine::registry::PlantedBug;
use tiersim_engine::retry::Attempt;
use tiersim_engine::{Attribution, RouteError, Tier};
use tokio::sync::{mpsc, oneshot, Notify};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tiersim_engine::chutes::attest::SimulatedVendor;
use tiersim_engine::chutes::e2ee::StreamVersion;
use tiersim_engine::chutes::{shared_rng, ChutesConfig, SharedRng};
use tiersim_engine::config::ChutesModelEntry;
use tiersim_engine::http::HttpClient;

use crate::fault::FaultBoard;
use crate::hosts::{derive_seed, keys, ChutesGateway, ChutesHandle, Service, MODELS_PREFIX};
use crate::hosts::{Catalog, CatalogHandle, ExternalBackend, NearBackend};
use crate::net::{self, TurmoilListener, HTTP_PORT};
use crate::scenario::format::{CatalogRow as ScenarioRow, Scenario};

pub type RefreshTrigger = mpsc::Sender<oneshot::Sender<tiersim_engine::app::RefreshReport>>;

/// What the router host publishes each time it boots, for the driver.
#[derive(Default)]
pub struct RouterSlot {
    pub app: Option<Arc<App>>,
    pub trigger: Option<RefreshTrigger>,
    /// Stops the router gracefully (`shutdown`): it stops accepting and
    /// finishes the requests in flight.
    pub shutdown: Option<oneshot::Sender<()>>,
}

/// One routed request as the router's observer saw it.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    /// The client's `x-request-id`.
    pub request_id: Option<String>,
    pub model: String,
    pub attempts: Vec<Attempt>,
    /// The serving provider, its tier and R54's `served_via_fallback`, or
    /// why the request was not served.
    pub outcome: Result<(String, Tier, bool), String>,
}

/// The router's attempt journal, shared with the driver.
#[derive(Clone, Default)]
pub struct Journal(pub Arc<Mutex<Vec<JournalEntry>>>);

impl RouteObserver for Journal {
    fn routed(
        &self,
        model: &str,
        attempts: &[Attempt],
        outcome: Result<&Attribution, &RouteError>,
    ) {
        self.routed_request(None, model, attempts, outcome);
    }

    fn routed_request(
        &self,
        request_id: Option<&str>,
        model: &str,
        attempts: &[Attempt],
        outcome: Result<&Attribution, &RouteError>,
    ) {
        self.0.lock().unwrap().push(JournalEntry {
            request_id: request_id.map(str::to_string),
            model: model.to_string(),
            attempts: attempts.to_vec(),
            outcome: outcome
                .map(|by| (by.provider.to_string(), by.tier, by.via_fallback))
                .map_err(|e| e.to_string()),
        });
    }
}

/// The handles the driver needs into a built world.
#[derive(Clone)]
pub struct WorldHandles {
    pub board: FaultBoard,
    pub catalog: CatalogHandle,
    pub router: Arc<Mutex<RouterSlot>>,
    /// Notified each time the router host publishes a booted app in
    /// `router`, so the driver waits for a boot without polling the slot
    /// (a poll each simulated millisecond kept the driver, and so the
    /// whole world, from ever being idle while the router boots).
    pub router_booted: Arc<Notify>,
    pub journal: Journal,
    /// NEAR host → its signing key (hex), for `pub_key_of`.
    pub near_keys: BTreeMap<String, String>,
}

/// The simulated router's admin key (R13: without one the admin API is
/// closed). Scripted `admin_patch` steps send it; it is a constant because
/// the world is deterministic and never reachable from outside.
pub const SIM_ADMIN_KEY: &str = "tiersim-sim-admin-key";

/// The engine's environment, as the scenario configures it.
pub fn engine_config(s: &Scenario) -> Result<EngineConfig, tiersim_engine::config::ConfigError> {
    let c = &s.config;
    let secs = c.refresh_interval.0.as_secs().max(1).to_string();
    EngineConfig::from_env(|k| match k {
        "CHUTES_MODELS" => c.chutes_models.clone(),
        "CHUTES_API_KEY" => c.chutes_api_key.then(|| "sim-chutes-key".to_string()),
        "CHUTES_ENABLE_STREAMING" => Some(c.chutes_streaming.to_string()),
        "MODEL_REFRESH_INTERVAL_SECS" => Some(secs.clone()),
        "ADMIN_API_KEY" => Some(SIM_ADMIN_KEY.to_string()),
        "TIERSIM_PROFILE" => Some(c.profile.as_str().to_string()),
        "MODEL_CONCURRENCY_LIMIT" => c.model_concurrency.map(|n| n.to_string()),
        "EXTERNAL_API_KEYS" => Some(
            s.external
                .iter()
                .filter(|e| e.api_key)
                .map(|e| format!("{}={}", e.host, external_api_key(&e.host)))
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => {
            let knobs = c.context_route.as_ref()?;
            match k {
                "CONTEXT_ROUTE_SAFETY_FACTOR" => knobs.safety_factor,
                "CONTEXT_ROUTE_EXACT_FACTOR" => knobs.exact_factor,
                "CONTEXT_ROUTE_TOKENIZE_BAND_LOW" => knobs.tokenize_band_low,
                "CONTEXT_ROUTE_TOKENIZE_BAND_HIGH" => knobs.tokenize_band_high,
                "CONTEXT_ROUTE_MEDIA_PART_TOKENS" => knobs.media_part_tokens,
                _ => None,
            }
            .map(|x| x.to_string())
        }
    })
}

/// The API key an external provider host requires, and the router holds
/// for it when the scenario says so (`[[external]] api_key`).
pub fn external_api_key(host: &str) -> String {
    format!("sim-{host}-key")
}

/// The catalog row a scenario row stands for, its NEAR host named by `url`.
/// The catalog rows of a scenario row: one per NEAR backend serving it (a
/// database row each), or one without a URL.
pub fn wire_rows(r: &ScenarioRow, url: &dyn Fn(&str) -> String) -> Vec<CatalogRow> {
    let row = |inference_url| CatalogRow {
        id: r.id.clone(),
        inference_url,
        active: r.active,
        price: r.price,
        context_length: r.context_length,
        provider_config: r.long_context.as_ref().map(|l| long_context_config(l, url)),
        provider_type: r.provider_type,
    };
    match &r.inference_url {
        None => vec![row(None)],
        Some(hosts) => hosts
            .get_ref()
            .names()
            .iter()
            .map(|h| row(Some(url(h))))
            .collect(),
    }
}

/// SPEC-parity R40: a scenario's long-context block as the catalog row's
/// `provider_config`, its host named by `url`.
pub fn long_context_config(
    l: &crate::scenario::format::LongContext,
    url: &dyn Fn(&str) -> String,
) -> serde_json::Value {
    let mut block = serde_json::json!({ "inference_url": url(l.inference_url.get_ref()) });
    if let Some(n) = l.max_context_tokens {
        block["max_context_tokens"] = n.into();
    }
    if let Some(n) = l.base_max_context_tokens {
        block["base_max_context_tokens"] = n.into();
    }
    serde_json::json!({ "long_context": block })
}

/// Upstream deadlines inside the world: generous next to scripted latency,
/// short enough that a held link fails within a scenario.
pub const TIMEOUTS: Timeouts = Timeouts {
    request: Duration::from_secs(30),
    stream_idle: Duration::from_secs(30),
};

/// The router's host name.
pub const ROUTER: &str = "router";
/// The catalog's host name.
pub const CATALOG: &str = "catalog";
/// The Chutes gateway's host name.
pub const CHUTES: &str = "chutes";

/// Every host of `s`'s world, router first: `router`, `catalog`, the NEAR
/// backends, the external providers, then `chutes` when the scenario has
/// chutes.
pub fn host_names(s: &Scenario) -> Vec<String> {
    let mut hosts = vec![ROUTER.to_string(), CATALOG.to_string()];
    hosts.extend(s.near.iter().map(|n| n.host.clone()));
    hosts.extend(s.external.iter().map(|e| e.host.clone()));
    if !s.chutes.is_empty() {
        hosts.push(CHUTES.to_string());
    }
    hosts
}

/// The simulated hosts of a world (everything but the router), built
/// independently of the network they will be served on.
pub struct Services {
    pub board: FaultBoard,
    pub catalog: CatalogHandle,
    /// Catalog, NEAR backends, external providers, Chutes: in
    /// [`host_names`] order.
    pub hosts: Vec<Service>,
    pub chutes: ChutesWorld,
    /// NEAR host → its signing key (hex), for `pub_key_of`.
    pub near_keys: BTreeMap<String, String>,
}

/// Builds every host of `s` but the router; `url` names a host's base URL
/// (turmoil: `http://near-1`; real sockets: `http://127.0.0.1:18082`).
pub fn services(s: &Scenario, url: &dyn Fn(&str) -> String) -> Services {
    let board = FaultBoard::new();
    let mut catalog = Catalog::new(CATALOG).faults(&board);
    for row in &s.catalog {
        for wire in wire_rows(row, url) {
            catalog = catalog.model(wire);
        }
    }
    for ext in &s.external {
        for model in ext.rows.as_ref().unwrap_or(&ext.models) {
            catalog = catalog.external(ext.row(model, url(&ext.host)));
        }
    }
    let catalog_handle = catalog.handle();
    let mut hosts = vec![catalog.service()];

    let mut near_keys = BTreeMap::new();
    for n in &s.near {
        let backend = NearBackend::new(n.host.clone())
            .serves(n.models.clone())
            .signing_seed(derive_seed(s.seed, &n.host))
            .answer_model(n.answer_model.clone())
            .faults(&board);
        near_keys.insert(n.host.clone(), backend.signing_key_hex());
        hosts.push(backend.service());
    }
    for e in &s.external {
        hosts.push(
            ExternalBackend::new(e.host.clone())
                .serves(e.models.clone())
                .api_key(external_api_key(&e.host))
                .faults(&board)
                .service(),
        );
    }
    let chutes = match chutes_service(s, &board) {
        Some((service, world)) => {
            hosts.push(service);
            world
        }
        None => ChutesWorld::default(),
    };
    // Every host's bytes are cut as `[world] chunking` says.
    let plan = s.world.plan();
    let hosts = hosts.into_iter().map(|h| h.chunked(plan, s.seed)).collect();
    Services {
        board,
        catalog: catalog_handle,
        hosts,
        chutes,
        near_keys,
    }
}

/// Installs every host of `s` on `sim`.
pub fn build(sim: &mut turmoil::Sim<'_>, s: &Scenario, config: EngineConfig) -> WorldHandles {
    build_with(sim, s, config, None)
}

/// [`build`], with a review bug of the seed PR planted in the router's
/// registry at every boot (only when a run asks for one).
pub fn build_with(
    sim: &mut turmoil::Sim<'_>,
    s: &Scenario,
    config: EngineConfig,
    plant: Option<PlantedBug>,
) -> WorldHandles {
    let Services {
        board,
        catalog,
        hosts,
        mut chutes,
        near_keys,
    } = services(s, &net::url);
    chutes.plant = plant;
    for host in hosts {
        host.install(sim);
    }

    let router = Arc::new(Mutex::new(RouterSlot::default()));
    let router_booted = Arc::new(Notify::new());
    let journal = Journal::default();
    {
        let router = router.clone();
        let router_booted = router_booted.clone();
        let journal = journal.clone();
        let seed = s.seed;
        let boots = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let board = board.clone();
        sim.host(ROUTER, move || {
            board.record(crate::fault::HostEvent::RouterBoot);
            let router = router.clone();
            let router_booted = router_booted.clone();
            let journal = journal.clone();
            let config = config.clone();
            let boot = boots.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // A restarted router does not replay its randomness.
            let rng = move |entry: &ChutesModelEntry| {
                let rng_seed = derive_seed(
                    seed,
                    &format!("router/{boot}/chutes/{}", entry.canonical_id),
                );
                shared_rng(ChaCha20Rng::from_seed(rng_seed))
            };
            let factory: ChutesFactory =
                chutes_factory(&chutes, net::url(CHUTES), net::http_client(), Box::new(rng));
            async move {
                let settings = AppSettings {
                    config,
                    catalog_url: net::url(CATALOG),
                    timeouts: TIMEOUTS,
                };
                let app = App::start(settings, net::http_client(), factory).await;
                if let Some(bug) = plant {
                    app.registry().plant(bug);
                }
                let (tx, rx) = mpsc::channel(4);
                tokio::spawn(app.clone().run_refresh_loop(rx));
                let api = api::router(app.clone(), Arc::new(journal));
                let (stop, stopped) = oneshot::channel();
                {
                    let mut slot = router.lock().unwrap();
                    slot.app = Some(app);
                    slot.trigger = Some(tx);
                    slot.shutdown = Some(stop);
                }
                router_booted.notify_waiters();
                let listener = TurmoilListener::bind(HTTP_PORT).await?;
                let asked = async {
                    // A dropped sender (a crash clearing the slot) is no stop.
                    if stopped.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                tiersim_engine::http::serve_until(listener, api, asked).await?;
                // The router process has ended; its machine stays up with the
                // port closed, so a connection is refused at once (a crashed
                // host never answers at all).
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    WorldHandles {
        board,
        catalog,
        router,
        router_booted,
        journal,
        near_keys,
    }
}

/// What the router needs to reach the simulated Chutes.
#[derive(Clone, Default)]
pub struct ChutesWorld {
    /// The vendor key the router trusts (§7b); `None` when the scenario says
    /// the router does not trust it.
    pub trusted_vendor: Option<[u8; 32]>,
    /// Stream protocol per chute slug (v1 unless the scenario opts in).
    pub versions: BTreeMap<String, StreamVersion>,
    /// Chute slug → the `chute_id` the gateway lists for it.
    pub chute_ids: BTreeMap<String, String>,
    pub streaming: bool,
    pub handle: Option<ChutesHandle>,
    /// The planted bug every Chutes provider is built with (those that
    /// live there act on it; tests only).
    pub plant: Option<PlantedBug>,
    /// Canonical ids whose Chutes provider fails to build
    /// (`[config] chutes_build_fails`).
    pub build_fails: std::collections::BTreeSet<String>,
}

fn version(v: u32) -> StreamVersion {
    if v == 2 {
        StreamVersion::V2
    } else {
        StreamVersion::V1
    }
}

/// The Chutes gateway of `s` (`None` when the scenario has no chutes) and
/// what the router needs to reach it.
fn chutes_service(s: &Scenario, board: &FaultBoard) -> Option<(Service, ChutesWorld)> {
    if s.chutes.is_empty() {
        return None;
    }
    let mut gw = ChutesGateway::new(CHUTES)
        .world_seed(s.seed)
        .key_seed(keys::IDENTITY_SEED)
        .faults(board);
    if let Some(ttl) = &s.world.chutes_nonce_expires_in {
        gw = gw.nonce_ttl(ttl.0);
    }
    let mut versions = BTreeMap::new();
    for c in &s.chutes {
        gw = gw.chute(c.slug.clone(), c.instances, version(c.stream_protocol));
        if !c.reply.is_empty() {
            use crate::scenario::format::ReplyWord;
            gw = gw.reply(
                c.slug.clone(),
                crate::hosts::ChuteReply {
                    think: c.reply.contains(&ReplyWord::Think),
                    extra_fields: c.reply.contains(&ReplyWord::ExtraFields),
                    usage: c.reply.contains(&ReplyWord::Usage),
                },
            );
        }
        versions.insert(c.slug.clone(), version(c.stream_protocol));
    }
    let trusted = gw.vendor_public_key();
    let chute_ids = s
        .chutes
        .iter()
        .map(|c| (c.slug.clone(), gw.chute_id(&c.slug)))
        .collect();
    let (service, handle) = gw.service();
    let world = ChutesWorld {
        trusted_vendor: if s.config.trust_chutes_vendor {
            Some(trusted)
        } else {
            // A key the simulated vendor never signs with.
            Some(keys::ed25519_public(derive_seed(
                s.seed,
                "untrusted-vendor",
            )))
        },
        versions,
        chute_ids,
        streaming: s.config.chutes_streaming,
        handle: Some(handle),
        plant: None,
        build_fails: s
            .config
            .chutes_build_fails
            .iter()
            .map(|id| id.get_ref().clone())
            .collect(),
    };
    Some((service, world))
}

/// The RNG of each configured Chutes provider (seeded in the simulation,
/// the OS generator in `tiersim serve`).
pub type ChutesRng = Box<dyn Fn(&ChutesModelEntry) -> SharedRng + Send + Sync>;

/// Builds each configured Chutes provider against the simulated gateway at
/// `base_url`, reached through `http`.
pub fn chutes_factory(
    chutes: &ChutesWorld,
    base_url: String,
    http: HttpClient,
    rng: ChutesRng,
) -> ChutesFactory {
    let chutes = chutes.clone();
    Box::new(move |entry, key| {
        let Some(vendor) = chutes.trusted_vendor else {
            return Err("no simulated Chutes in this world".into());
        };
        if chutes.build_fails.contains(&entry.canonical_id) {
            return Err(format!(
                "the Chutes provider of {} failed to build ([config] chutes_build_fails)",
                entry.canonical_id
            ));
        }
        let version = chutes
            .versions
            .get(&entry.chute_slug)
            .copied()
            .unwrap_or(StreamVersion::V1);
        let config = ChutesConfig::new(
            base_url.clone(),
            key,
            &entry.canonical_id,
            &entry.chute_slug,
            Arc::new(SimulatedVendor::new(vendor)),
        )
        .models_base_url(format!("{base_url}{MODELS_PREFIX}"))
        .streaming(chutes.streaming)
        .stream_version(version)
        .context_window(entry.context_window)
        .timeouts(TIMEOUTS)
        .plant(chutes.plant);
        config
            .build(http.clone(), rng(entry))
            .map(|p| Arc::new(p) as Arc<dyn tiersim_engine::Provider>)
            .map_err(|e| e.to_string())
    })
}
