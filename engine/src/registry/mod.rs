//! The provider registry: the single writer-side API (R4–R14).
//!
//! State lives in an immutable `Table` behind an `ArcSwap`. A writer takes
//! the writer mutex, copies the current `Sources`, applies one operation,
//! rebuilds the derived index and stores the new table in one swap, so readers
//! never see a half-applied update and never take a lock (selection only does
//! an `ArcSwap::load`).

#[cfg(feature = "planted-bugs")]
mod planted;
mod table;
mod view;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, Cache, Guard};

use crate::provider::Provider;
pub use table::CatalogRow;
use table::Sources;
#[cfg(feature = "planted-bugs")]
pub(crate) use table::StaticOrder;
pub(crate) use table::{ModelIdx, Slot, Table, UNDECLARED_RANK};
pub use view::{ProviderView, RegistryView};

#[cfg(feature = "planted-bugs")]
pub use planted::PlantedBug;

/// The outcome of reading one source during a refresh (R10).
#[derive(Debug, Clone)]
pub enum SourceRead<T> {
    Ok(T),
    /// The read failed; the source's existing mappings are kept.
    Failed(String),
}

/// The complete set from discovery: model id → its NEAR providers (shared per
/// inference URL, so one provider may back several models).
#[derive(Debug, Clone, Default)]
pub struct Discovered(pub BTreeMap<String, Vec<Arc<dyn Provider>>>);

/// External plaintext rows: model id → providers.
#[derive(Debug, Clone, Default)]
pub struct External(pub BTreeMap<String, Vec<Arc<dyn Provider>>>);

pub struct Registry {
    /// Shared (an `Arc`) so a thread's snapshot cache can name the cell it
    /// caches ([`Registry::with_snapshot`]).
    table: Arc<ArcSwap<Table>>,
    /// Serialises writers only; readers never touch it.
    write: Mutex<()>,
    /// R54.3: model ids ever published with both a NEAR and an attested
    /// third-party provider. Never cleared while the process runs.
    seen_near_and_attested: Mutex<BTreeSet<String>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Registry").field(&self.view()).finish()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            table: Arc::new(ArcSwap::from_pointee(Table::empty())),
            write: Mutex::new(()),
            seen_near_and_attested: Mutex::default(),
        }
    }

    /// The current snapshot, for one consistent read (selection, catalog gate).
    #[inline]
    pub(crate) fn load(&self) -> Guard<Arc<Table>> {
        self.table.load()
    }

    /// Runs `f` on the current snapshot through this thread's cached handle
    /// to it (`arc_swap::Cache`): when the registry has not been written
    /// since this thread last looked, that is one relaxed atomic load and
    /// no reference count or debt slot touched (a `Guard` costs two locked
    /// instructions). The cache holds one registry's latest snapshot per
    /// thread; using another registry on the thread replaces it, a nested
    /// call loads its own, and `f` sees exactly the snapshot current when
    /// it was called, as with [`Registry::load`]. Synchronous only: the
    /// snapshot cannot be held across an await.
    #[inline(always)]
    pub(crate) fn with_snapshot<R>(&self, f: impl FnOnce(&Table) -> R) -> R {
        type Snapshot = Cache<Arc<ArcSwap<Table>>, Arc<Table>>;
        thread_local! {
            static SNAPSHOT: Cell<Option<Snapshot>> = const { Cell::new(None) };
        }
        let mut f = Some(f);
        let cached = SNAPSHOT.try_with(|cell| {
            let mut cache = match cell.take() {
                Some(c) if std::ptr::eq(c.arc_swap(), &*self.table) => c,
                _ => Cache::new(self.table.clone()),
            };
            let out = (f.take().expect("called once"))(cache.load());
            cell.set(Some(cache));
            out
        });
        match cached {
            Ok(out) => out,
            // The thread is exiting and its cache is gone: a plain load.
            Err(_) => (f.take().expect("not called yet"))(&self.load()),
        }
    }

    /// Applies `f` to a copy of the sources and publishes the rebuilt table.
    fn update<R>(&self, f: impl FnOnce(&mut Sources) -> R) -> R {
        let _writer = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let cur = self.table.load_full();
        let mut sources = cur.sources.clone();
        let out = f(&mut sources);
        let table = Table::build(sources, Some(&cur));
        self.remember_near_and_attested(&table);
        self.table.store(Arc::new(table));
        out
    }

    fn remember_near_and_attested(&self, table: &Table) {
        let mut seen = self
            .seen_near_and_attested
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (model, near) in &table.sources.near {
            let attested = table
                .sources
                .pinned
                .get(model)
                .is_some_and(|ps| ps.iter().any(|p| p.tier() == crate::tier::Tier::Attested3p));
            if !near.is_empty() && attested && !seen.contains(model) {
                seen.insert(model.clone());
            }
        }
    }

    /// R54.3: whether `model` was ever published with both a NEAR and an
    /// attested third-party provider.
    pub fn ever_near_and_attested(&self, model: &str) -> bool {
        self.seen_near_and_attested
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(model)
    }

    /// R5: reserves canonical ids before any external or discovery load. A
    /// reserved id never holds a NonAttested provider, even when its Chutes
    /// provider failed to build (enforced for every write in
    /// `Sources::enforce_fail_closed`).
    pub fn reserve<I, S>(&self, ids: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.update(|s| s.reserved.extend(ids.into_iter().map(Into::into)));
    }

    /// R4: registers `provider` (Chutes) as a secondary provider of `model`
    /// under its canonical id (R3). It is appended after the NEAR providers,
    /// never replaces them, is recorded as the model's pinned provider (the
    /// source of truth for re-attachment on every merge) and marks the id
    /// pinned. The same provider id is not stacked twice. It gets no pubkey
    /// entries (only NEAR keys are indexed).
    pub fn register_secondary(&self, model: &str, provider: Arc<dyn Provider>) {
        self.update(|s| {
            let pinned = s.pinned.entry(model.to_string()).or_default();
            if pinned.iter().all(|p| p.id() != provider.id()) {
                pinned.push(provider);
            } else {
                tracing::warn!(model, provider = %provider.id(), "secondary provider already registered; not stacking it");
            }
        });
    }

    /// R7 (and the R13 admin PATCH): merges a *partial* batch of discovered
    /// NEAR providers. Each model in the batch is rebuilt as
    /// `[fresh NEAR…] + [its pinned providers]`; an empty entry leaves it
    /// pinned-only (or unmapped). Models not in the batch are untouched and
    /// nothing is pruned.
    pub fn merge_discovered(&self, batch: Discovered) {
        self.update(|s| {
            #[cfg(feature = "planted-bugs")]
            if s.planted.has(PlantedBug::PartialBatchPrune) && !batch.0.is_empty() {
                planted::prune_absent_pinned(s, &batch);
            }
            for (model, near) in batch.0 {
                if near.is_empty() {
                    s.near.remove(&model);
                } else {
                    s.near.insert(model, near);
                }
            }
        });
    }

    /// The periodic complete refresh, in one atomic swap.
    ///
    /// - R7: every discovered model is rebuilt `[fresh NEAR…] + [pinned…]`.
    /// - R8/R11: discovery is the complete set (possibly empty), so a pinned id
    ///   absent from it is left pinned-only. Membership is a key lookup in the
    ///   new set; lengths are never compared.
    /// - R9: a model neither discovered nor external is removed, unless it has
    ///   an actual pinned provider; a reserved-only id is removed. The pubkey
    ///   view, failure and round-robin counters go with it (derived state),
    ///   but a provider still backing another model keeps its counter.
    /// - R10: a failed source keeps every existing mapping of that source.
    /// - R12: external rows for reserved or pinned ids are skipped.
    pub fn refresh(&self, discovery: SourceRead<Discovered>, external: SourceRead<External>) {
        self.refresh_with_catalog(discovery, external, None);
    }

    /// [`Registry::refresh`], replacing the catalog rows in the same swap
    /// (R6/R9: a row deleted from the database is gone here too: 404, not
    /// listed), so no reader sees new rows with old providers or the reverse.
    pub fn refresh_with_catalog(
        &self,
        discovery: SourceRead<Discovered>,
        external: SourceRead<External>,
        catalog: Option<BTreeMap<String, CatalogRow>>,
    ) {
        #[cfg(not(feature = "planted-bugs"))]
        self.update(|s| apply_refresh(s, discovery, external, catalog));
        #[cfg(feature = "planted-bugs")]
        {
            let forget = self.update(|s| {
                let discovered = match &discovery {
                    SourceRead::Ok(d) => Some(d),
                    SourceRead::Failed(_) => None,
                };
                let external_ids = match &external {
                    SourceRead::Ok(External(rows)) => Some(rows.keys().cloned().collect()),
                    SourceRead::Failed(_) => None,
                };
                let forget = planted::on_refresh(s, discovered, external_ids);
                apply_refresh(s, discovery, external, catalog);
                forget
            });
            let t = self.load();
            for id in forget {
                if let Some(h) = t.health.get(&id) {
                    h.record_success();
                }
            }
        }
    }

    /// R14: removes every mapping of `model` and clears its pinned and
    /// reserved state, so discovery (or an external row) can register it again.
    /// The catalog row is the admin's and stays.
    pub fn unregister(&self, model: &str) {
        self.update(|s| {
            s.near.remove(model);
            s.pinned.remove(model);
            s.external.remove(model);
            s.reserved.remove(model);
        });
    }

    /// R6/R13: upserts catalog rows (the catalog the admin edits).
    pub fn set_catalog_rows<I, S>(&self, rows: I)
    where
        I: IntoIterator<Item = (S, CatalogRow)>,
        S: Into<String>,
    {
        self.update(|s| {
            s.catalog
                .extend(rows.into_iter().map(|(m, r)| (m.into(), r)));
        });
    }

    /// R13: (de)activates a catalog row without touching any provider.
    /// Returns false when the id has no row.
    pub fn set_active(&self, model: &str, active: bool) -> bool {
        self.update(|s| match s.catalog.get_mut(model) {
            Some(row) => {
                row.active = active;
                true
            }
            None => false,
        })
    }

    /// R6: a canonical id that already has a row (e.g. NEAR serves it) keeps
    /// it verbatim; otherwise (Chutes-only) it is seeded inactive at zero price
    /// until an admin activates and prices it. Returns whether it seeded.
    pub fn seed_catalog_row_if_absent(&self, model: &str) -> bool {
        self.update(|s| {
            if s.catalog.contains_key(model) {
                return false;
            }
            s.catalog.insert(model.to_string(), CatalogRow::default());
            true
        })
    }

    pub fn catalog_row(&self, model: &str) -> Option<CatalogRow> {
        self.load().catalog_row(model)
    }

    /// A deterministic read-only picture of the current snapshot.
    pub fn view(&self) -> RegistryView {
        RegistryView::of(&self.load())
    }

    /// Gives `provider` one R46 TTFT sample, as a served stream would: for
    /// tests and the selection benchmark (feature `testing`), which set up
    /// latency state without streaming. Returns false when no model has it.
    #[cfg(any(test, feature = "testing"))]
    pub fn record_ttft(&self, provider: &str, ttft: std::time::Duration) -> bool {
        let t = self.load();
        match t.health.get(&crate::provider::ProviderId::new(provider)) {
            Some(h) => {
                h.record_ttft(ttft);
                true
            }
            None => false,
        }
    }

    /// Switches a review bug of the seed PR back on, for this registry only.
    #[cfg(feature = "planted-bugs")]
    pub fn plant(&self, bug: PlantedBug) {
        self.update(|s| s.planted.plant(bug));
    }

    #[cfg(test)]
    pub(crate) fn writer_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap()
    }
}

/// R7–R12 on the sources: discovery replaces the NEAR set and the external
/// load its rows, each only when its read succeeded (R10); the rebuild does
/// the rest (R8 prune, R9 stale removal, R12 skip).
fn apply_refresh(
    s: &mut Sources,
    discovery: SourceRead<Discovered>,
    external: SourceRead<External>,
    catalog: Option<BTreeMap<String, CatalogRow>>,
) {
    match discovery {
        SourceRead::Ok(Discovered(set)) => s.near = set,
        SourceRead::Failed(why) => {
            tracing::warn!(%why, "discovery failed; keeping existing NEAR mappings");
        }
    }
    match external {
        SourceRead::Ok(External(rows)) => s.external = rows,
        SourceRead::Failed(why) => {
            tracing::warn!(%why, "external load failed; keeping existing external mappings");
        }
    }
    if let Some(rows) = catalog {
        s.catalog = rows;
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod model_tests;
