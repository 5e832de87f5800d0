//! The running router: bootstrap (R5, R4, R6), the periodic complete refresh
//! and the partial admin batch (R7–R13), over the injected network.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::admin::{validate_batch, BatchError};
use crate::catalog::{CatalogClient, CatalogPatchRow, CatalogRow as WireRow, ExternalRow};
use crate::config::{ChutesModelEntry, EngineConfig};
use crate::external::ExternalProvider;
use crate::http::HttpClient;
use crate::near::NearProvider;
use crate::openai::Timeouts;
use crate::provider::{Provider, ProviderError};
use crate::registry::{CatalogRow, Discovered, External, Registry, SourceRead};
use crate::router::Router;

/// Builds the Chutes provider of one `CHUTES_MODELS` entry, given the API
/// key. Injected so the engine is agnostic of how the E2EE channel's RNG and
/// trust anchors are obtained.
pub type ChutesFactory =
    Box<dyn Fn(&ChutesModelEntry, &str) -> Result<Arc<dyn Provider>, String> + Send + Sync>;

/// Where the router's sources live.
pub struct AppSettings {
    pub config: EngineConfig,
    /// The catalog service (discovery source and model database).
    pub catalog_url: String,
    pub timeouts: Timeouts,
}

/// What a refresh did, for logs and the simulation's trace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RefreshReport {
    pub discovery: Option<String>,
    pub external: Option<String>,
    /// External rows the load refused, each naming its row and why.
    pub refused: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The batch broke a rule of R13; nothing of it was applied.
    #[error("bad admin batch: {0}")]
    Invalid(#[from] BatchError),
    #[error("catalog write failed: {0}")]
    Catalog(ProviderError),
}

/// An external provider's identity: its name, base URL and kind.
type ExternalKey = (String, String, String);

pub struct App {
    registry: Arc<Registry>,
    router: Router,
    http: HttpClient,
    catalog: CatalogClient,
    timeouts: Timeouts,
    /// NEAR providers are shared per inference URL (R8's shared-provider
    /// guard relies on one provider backing several models).
    near_by_url: Mutex<BTreeMap<String, Arc<NearProvider>>>,
    external_by_row: Mutex<BTreeMap<ExternalKey, Arc<dyn Provider>>>,
    /// The external rows the last successful external load refused (a
    /// missing API key, an unsupported kind): an operator's read.
    refused_rows: std::sync::Mutex<Vec<String>>,
    /// Serialises refreshes and admin batches so they apply in order.
    writer: Mutex<()>,
    config: EngineConfig,
}

impl App {
    /// Bootstraps the router: every configured canonical id is reserved
    /// before any load (R5), each Chutes provider that builds is registered as
    /// the pinned secondary (R4), Chutes-only ids get an inactive catalog row
    /// (R6), then the first complete refresh runs.
    pub async fn start(settings: AppSettings, http: HttpClient, chutes: ChutesFactory) -> Arc<App> {
        let app = Arc::new(App::over_registry(
            Arc::new(Registry::new()),
            settings,
            http,
        ));
        let entries = &app.config.chutes_models;
        app.registry
            .reserve(entries.iter().map(|e| e.canonical_id.clone()));
        for entry in entries {
            let built = match app.config.chutes_api_key.as_deref() {
                None => Err("CHUTES_API_KEY is not set".to_string()),
                Some(key) => chutes(entry, key),
            };
            match built {
                Ok(p) => app.registry.register_secondary(&entry.canonical_id, p),
                Err(why) => tracing::warn!(
                    model = %entry.canonical_id,
                    %why,
                    "Chutes provider not built; the id stays reserved (fail closed)"
                ),
            }
        }
        app.refresh().await;
        app
    }

    /// An app over an already-filled registry, without bootstrap or
    /// refresh ([`App::start`] bootstraps one over an empty registry; tests
    /// use it for the HTTP surface over fake providers). The catalog URL is
    /// the host's own configuration, never client input.
    pub fn over_registry(registry: Arc<Registry>, settings: AppSettings, http: HttpClient) -> App {
        let catalog = CatalogClient::new(http.clone(), &settings.catalog_url, settings.timeouts)
            .expect("catalog url is valid");
        App {
            router: Router::with_settings(
                registry.clone(),
                settings.config.profile,
                settings.config.model_concurrency,
            )
            .with_context_routing(settings.config.context),
            registry,
            http,
            catalog,
            timeouts: settings.timeouts,
            near_by_url: Mutex::default(),
            external_by_row: Mutex::default(),
            refused_rows: std::sync::Mutex::default(),
            writer: Mutex::new(()),
            config: settings.config,
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The external rows the last successful external load refused, each
    /// as `external row <model> (external:<name>): <why>`, in row order.
    pub fn refused_rows(&self) -> Vec<String> {
        self.refused_rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The provider of one external row: refused without a configured API
    /// key or with a kind the router does not speak.
    fn external_provider(&self, row: &ExternalRow) -> Result<Arc<dyn Provider>, String> {
        if row.kind != ExternalRow::OPENAI_COMPATIBLE {
            return Err(format!(
                "kind {} is not supported (the router speaks {})",
                crate::echo::echo(&row.kind),
                ExternalRow::OPENAI_COMPATIBLE
            ));
        }
        let key = self
            .config
            .external_api_keys
            .get(&row.name)
            .ok_or_else(|| "its API key is missing (no EXTERNAL_API_KEYS entry)".to_string())?;
        let provider = ExternalProvider::new(self.http.clone(), &row.name, &row.base_url)
            .map_err(|e| e.to_string())?
            .with_api_key(key)
            .with_timeouts(self.timeouts);
        Ok(Arc::new(provider))
    }

    /// Whether a refresh or an admin batch is being applied right now, for
    /// an observer that compares the registry across one operation.
    pub fn is_writing(&self) -> bool {
        self.writer.try_lock().is_err()
    }

    /// R6: a Chutes canonical id without a catalog row is seeded inactive at
    /// zero price, in the database too, so an admin can activate it.
    async fn seed_chutes_rows(&self) {
        let missing: Vec<CatalogPatchRow> = self
            .config
            .chutes_models
            .iter()
            .filter(|e| self.registry.seed_catalog_row_if_absent(&e.canonical_id))
            .map(|e| CatalogPatchRow {
                id: e.canonical_id.clone(),
                active: Some(false),
                price: Some(0),
                ..CatalogPatchRow::default()
            })
            .collect();
        if !missing.is_empty() {
            if let Err(e) = self.catalog.patch(missing).await {
                tracing::warn!(error = %e, "could not seed Chutes catalog rows; will retry next refresh");
            }
        }
    }

    /// The periodic complete refresh (R7–R12) as one atomic registry swap.
    pub async fn refresh(&self) -> RefreshReport {
        let _w = self.writer.lock().await;
        let mut report = RefreshReport::default();
        let mut catalog = None;
        let discovery = match self.catalog.models().await {
            Ok(rows) => {
                catalog = Some(
                    rows.iter()
                        .map(|r| {
                            let row = CatalogRow {
                                active: r.active,
                                price: r.price,
                                context_length: r.context_length,
                            };
                            (r.id.clone(), row)
                        })
                        .collect(),
                );
                SourceRead::Ok(Discovered(self.discover(&rows).await))
            }
            Err(e) => {
                report.discovery = Some(e.to_string());
                SourceRead::Failed(e.to_string())
            }
        };
        let external = match self.catalog.external().await {
            Ok(rows) => {
                let mut cache = self.external_by_row.lock().await;
                let mut out: BTreeMap<String, Vec<Arc<dyn Provider>>> = BTreeMap::new();
                for row in rows {
                    let key = (row.name.clone(), row.base_url.clone(), row.kind.clone());
                    let provider = match cache.get(&key) {
                        Some(p) => p.clone(),
                        None => match self.external_provider(&row) {
                            Ok(p) => {
                                cache.insert(key, p.clone());
                                p
                            }
                            Err(why) => {
                                // One bad row is refused; the others still load.
                                let refused = format!(
                                    "external row {} (external:{}): {why}",
                                    crate::echo::echo(&row.model),
                                    crate::echo::echo(&row.name)
                                );
                                tracing::warn!("{refused}");
                                report.refused.push(refused);
                                continue;
                            }
                        },
                    };
                    out.entry(row.model).or_default().push(provider);
                }
                *self
                    .refused_rows
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = report.refused.clone();
                SourceRead::Ok(External(out))
            }
            Err(e) => {
                report.external = Some(e.to_string());
                SourceRead::Failed(e.to_string())
            }
        };
        self.registry
            .refresh_with_catalog(discovery, external, catalog);
        self.seed_chutes_rows().await;
        report
    }

    /// R13: the admin's partial batch. The whole batch is validated first
    /// (one bad row refuses it all); then the catalog is written; only when
    /// it accepted the batch does the router merge it (R7, never prune) and
    /// apply activity, so a refused batch or a failed write changes nothing.
    pub async fn admin_patch(
        &self,
        batch: Vec<CatalogPatchRow>,
    ) -> Result<Vec<WireRow>, AdminError> {
        validate_batch(&batch)?;
        let _w = self.writer.lock().await;
        let ids: Vec<String> = batch.iter().map(|r| r.id.clone()).collect();
        // R13/R40: a row is re-registered from its merged catalog rows only
        // when the patch touches what its providers are built from: the
        // URL, `provider_config` or the context length.
        let rebuilt: std::collections::BTreeSet<String> = batch
            .iter()
            .filter(|r| {
                r.inference_url.is_some()
                    || r.provider_config.is_some()
                    || r.context_length.is_some()
            })
            .map(|r| r.id.clone())
            .collect();
        let all = self
            .catalog
            .patch(batch)
            .await
            .map_err(AdminError::Catalog)?;
        let rows: Vec<WireRow> = ids
            .iter()
            .filter_map(|id| all.iter().find(|r| &r.id == id).cloned())
            .collect();
        self.registry.set_catalog_rows(rows.iter().map(|r| {
            (
                r.id.clone(),
                CatalogRow {
                    active: r.active,
                    price: r.price,
                    context_length: r.context_length,
                },
            )
        }));
        // Every row of a rebuilt id (one per NEAR backend serving it).
        let url_rows: Vec<WireRow> = all
            .iter()
            .filter(|r| rebuilt.contains(&r.id))
            .cloned()
            .collect();
        let mut batch = self.discover(&url_rows).await;
        // A cleared URL is an empty entry: the model is rebuilt pinned-only.
        for id in &rebuilt {
            batch.entry(id.clone()).or_default();
        }
        self.registry.merge_discovered(Discovered(batch));
        Ok(rows)
    }

    /// NEAR providers for `vllm` catalog rows with an inference URL, shared
    /// per URL (another provider type's URL is not a NEAR backend).
    /// A backend whose attestation cannot be read is left out of this cycle
    /// (its models fall back to their pinned providers); one that was known
    /// keeps serving from the cache.
    ///
    /// SPEC-parity R40: each declares the row's `context_length`; a row
    /// with a valid `provider_config.long_context` block also gets a second
    /// NEAR provider (after the base) declaring the long window, the base
    /// declaring the block's base window. An invalid block is ignored with
    /// a warning. A reused provider's window is overwritten, never cleared.
    async fn discover(&self, rows: &[WireRow]) -> BTreeMap<String, Vec<Arc<dyn Provider>>> {
        let mut out: BTreeMap<String, Vec<Arc<dyn Provider>>> = BTreeMap::new();
        let mut cache = self.near_by_url.lock().await;
        for row in rows {
            let Some(url) = row
                .inference_url
                .as_ref()
                .filter(|_| row.provider_type.is_vllm())
            else {
                continue;
            };
            let long = match crate::context::long_context(
                Some(url),
                row.context_length,
                row.provider_config.as_ref(),
            ) {
                Ok(long) => long,
                Err(why) => {
                    tracing::warn!(model = %row.id, why, "long-context block ignored");
                    None
                }
            };
            let mut tiers = vec![(
                url.as_str(),
                long.as_ref()
                    .map_or(row.context_length, |l| Some(l.base_window)),
            )];
            if let Some(l) = &long {
                tiers.push((l.inference_url.as_str(), Some(l.long_window)));
            }
            for (url, window) in tiers {
                let Some(provider) = self.near_provider(&mut cache, url, &row.id).await else {
                    continue;
                };
                provider.declare_context_window(window);
                out.entry(row.id.clone())
                    .or_default()
                    .push(provider as Arc<dyn Provider>);
            }
        }
        out
    }

    /// The cached provider of `url`, or a freshly attested one.
    async fn near_provider(
        &self,
        cache: &mut BTreeMap<String, Arc<NearProvider>>,
        url: &str,
        model: &str,
    ) -> Option<Arc<NearProvider>> {
        if let Some(p) = cache.get(url) {
            return Some(p.clone());
        }
        match NearProvider::discover_with(self.http.clone(), url, self.timeouts).await {
            Ok(p) => {
                let p = Arc::new(p);
                cache.insert(url.to_string(), p.clone());
                Some(p)
            }
            Err(e) => {
                tracing::warn!(model, error = %e, "NEAR backend not attested; skipped this cycle");
                None
            }
        }
    }

    /// Refreshes every `refresh_interval` of tokio time, or at once when
    /// asked through `trigger` (the reply is sent when the refresh is applied).
    pub async fn run_refresh_loop(
        self: Arc<Self>,
        mut trigger: mpsc::Receiver<oneshot::Sender<RefreshReport>>,
    ) {
        let period = self.config.refresh_interval;
        let mut next = tokio::time::Instant::now() + period;
        loop {
            tokio::select! {
                biased;
                asked = trigger.recv() => match asked {
                    Some(reply) => {
                        let report = self.refresh().await;
                        let _ = reply.send(report);
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(next) => {
                    self.refresh().await;
                    next += period;
                }
            }
        }
    }
}
