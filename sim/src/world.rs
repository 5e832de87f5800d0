//! Builds the turmoil world a scenario describes: catalog, NEAR backends,
//! Chutes, external providers and the router running the real engine.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tiersim_engine::api::{self, RouteObserver};
use tiersim_engine::app::{App, AppSettings, ChutesFactory};
use tiersim_engine::catalog::{CatalogRow, ExternalRow};
use tiersim_engine::config::EngineConfig;
use tiersim_engine::openai::Timeouts;
use tiersim_engine::registry::PlantedBug;
use tiersim_engine::retry::Attempt;
use tiersim_engine::{RouteError, Tier};
use tokio::sync::{mpsc, oneshot};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tiersim_engine::chutes::e2ee::StreamVersion;
use tiersim_engine::chutes::{shared_rng, ChutesConfig};

use crate::fault::FaultBoard;
use crate::hosts::{derive_seed, ChutesGateway, ChutesHandle};
use crate::hosts::{Catalog, CatalogHandle, ExternalBackend, NearBackend};
use crate::net::{self, TurmoilListener, HTTP_PORT};
use crate::scenario::format::{CatalogRow as ScenarioRow, Scenario};

pub type RefreshTrigger = mpsc::Sender<oneshot::Sender<tiersim_engine::app::RefreshReport>>;

/// What the router host publishes each time it boots, for the driver.
#[derive(Default)]
pub struct RouterSlot {
    pub app: Option<Arc<App>>,
    pub trigger: Option<RefreshTrigger>,
}

/// One routed request as the router's observer saw it.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub model: String,
    pub attempts: Vec<Attempt>,
    pub outcome: Result<(String, Tier), String>,
}

/// The router's attempt journal, shared with the driver.
#[derive(Clone, Default)]
pub struct Journal(pub Arc<Mutex<Vec<JournalEntry>>>);

impl RouteObserver for Journal {
    fn routed(
        &self,
        model: &str,
        attempts: &[Attempt],
        outcome: Result<(&str, Tier), &RouteError>,
    ) {
        self.0.lock().unwrap().push(JournalEntry {
            model: model.to_string(),
            attempts: attempts.to_vec(),
            outcome: outcome
                .map(|(p, t)| (p.to_string(), t))
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
    pub journal: Journal,
    /// NEAR host → its signing key (hex), for `pub_key_of`.
    pub near_keys: BTreeMap<String, String>,
}

/// The engine's environment, as the scenario configures it.
pub fn engine_config(s: &Scenario) -> Result<EngineConfig, tiersim_engine::config::ConfigError> {
    let c = &s.config;
    let secs = c.refresh_interval.0.as_secs().max(1).to_string();
    EngineConfig::from_env(|k| match k {
        "CHUTES_MODELS" => c.chutes_models.clone(),
        "CHUTES_API_KEY" => c.chutes_api_key.then(|| "sim-chutes-key".to_string()),
        "CHUTES_ENABLE_STREAMING" => Some(c.chutes_streaming.to_string()),
        "MODEL_REFRESH_INTERVAL_SECS" => Some(secs.clone()),
        _ => None,
    })
}

fn wire_row(r: &ScenarioRow) -> CatalogRow {
    CatalogRow {
        id: r.id.clone(),
        inference_url: r.inference_url.as_ref().map(|h| net::url(h.get_ref())),
        active: r.active,
        price: r.price,
    }
}

/// Upstream deadlines inside the world: generous next to scripted latency,
/// short enough that a held link fails within a scenario.
pub const TIMEOUTS: Timeouts = Timeouts {
    request: Duration::from_secs(30),
    stream_idle: Duration::from_secs(30),
};

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
    let board = FaultBoard::new();
    let mut catalog = Catalog::new("catalog").faults(&board);
    for row in &s.catalog {
        catalog = catalog.model(wire_row(row));
    }
    for ext in &s.external {
        for model in ext.rows.as_ref().unwrap_or(&ext.models) {
            catalog = catalog.external(ExternalRow {
                model: model.clone(),
                base_url: net::url(&ext.host),
                name: ext.host.clone(),
            });
        }
    }
    let catalog = catalog.install(sim);

    let mut near_keys = BTreeMap::new();
    for n in &s.near {
        let backend = NearBackend::new(n.host.clone())
            .serves(n.models.clone())
            .signing_seed(derive_seed(s.seed, &n.host))
            .faults(&board);
        near_keys.insert(n.host.clone(), backend.signing_key_hex());
        backend.install(sim);
    }
    for e in &s.external {
        ExternalBackend::new(e.host.clone())
            .serves(e.models.clone())
            .faults(&board)
            .install(sim);
    }
    let chutes: ChutesWorld = install_chutes(sim, s, &board);

    let router = Arc::new(Mutex::new(RouterSlot::default()));
    let journal = Journal::default();
    {
        let router = router.clone();
        let journal = journal.clone();
        let seed = s.seed;
        let boots = Arc::new(std::sync::atomic::AtomicU64::new(0));
        sim.host("router", move || {
            let router = router.clone();
            let journal = journal.clone();
            let config = config.clone();
            let boot = boots.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let factory: ChutesFactory = chutes_factory(&chutes, seed, boot);
            async move {
                let settings = AppSettings {
                    config,
                    catalog_url: net::url("catalog"),
                    timeouts: TIMEOUTS,
                };
                let app = App::start(settings, net::http_client(), factory).await;
                if let Some(bug) = plant {
                    app.registry().plant(bug);
                }
                let (tx, rx) = mpsc::channel(4);
                tokio::spawn(app.clone().run_refresh_loop(rx));
                let api = api::router(app.clone(), Arc::new(journal));
                {
                    let mut slot = router.lock().unwrap();
                    slot.app = Some(app);
                    slot.trigger = Some(tx);
                }
                tiersim_engine::http::serve(TurmoilListener::bind(HTTP_PORT).await?, api).await?;
                Ok(())
            }
        });
    }
    WorldHandles {
        board,
        catalog,
        router,
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
    pub streaming: bool,
    pub handle: Option<ChutesHandle>,
}

fn version(v: u32) -> StreamVersion {
    if v == 2 {
        StreamVersion::V2
    } else {
        StreamVersion::V1
    }
}

fn install_chutes(sim: &mut turmoil::Sim<'_>, s: &Scenario, board: &FaultBoard) -> ChutesWorld {
    if s.chutes.is_empty() {
        return ChutesWorld::default();
    }
    let mut gw = ChutesGateway::new("chutes")
        .world_seed(s.seed)
        .faults(board);
    let mut versions = BTreeMap::new();
    for c in &s.chutes {
        gw = gw.chute(c.slug.clone(), c.instances, version(c.stream_protocol));
        versions.insert(c.slug.clone(), version(c.stream_protocol));
    }
    let trusted = gw.vendor_public_key();
    let handle = gw.install(sim);
    ChutesWorld {
        trusted_vendor: if s.config.trust_chutes_vendor {
            Some(trusted)
        } else {
            // A key the simulated vendor never signs with.
            Some(
                tiersim_engine::chutes::attest::VendorKey::from_seed(derive_seed(
                    s.seed,
                    "untrusted-vendor",
                ))
                .public_key(),
            )
        },
        versions,
        streaming: s.config.chutes_streaming,
        handle: Some(handle),
    }
}

/// Builds each configured Chutes provider against the simulated gateway,
/// with an RNG derived from the world seed and the boot count, so a
/// restarted router does not replay its randomness.
fn chutes_factory(chutes: &ChutesWorld, seed: u64, boot: u64) -> ChutesFactory {
    let chutes = chutes.clone();
    Box::new(move |entry, key| {
        let Some(vendor) = chutes.trusted_vendor else {
            return Err("no simulated Chutes in this world".into());
        };
        let rng_seed = derive_seed(
            seed,
            &format!("router/{boot}/chutes/{}", entry.canonical_id),
        );
        let version = chutes
            .versions
            .get(&entry.chute_slug)
            .copied()
            .unwrap_or(StreamVersion::V1);
        ChutesConfig::new(
            net::url("chutes"),
            key,
            &entry.canonical_id,
            &entry.chute_slug,
            vendor,
        )
        .streaming(chutes.streaming)
        .stream_version(version)
        .timeouts(TIMEOUTS)
        .build(
            net::http_client(),
            shared_rng(ChaCha20Rng::from_seed(rng_seed)),
        )
        .map(|p| Arc::new(p) as Arc<dyn tiersim_engine::Provider>)
        .map_err(|e| e.to_string())
    })
}
