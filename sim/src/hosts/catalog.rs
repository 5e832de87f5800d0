//! The simulated catalog: the discovery source the router polls, and the
//! model DB the admin API writes. Wire format: [`tiersim_engine::catalog`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use tiersim_engine::catalog::{
    CatalogList, CatalogPatch, CatalogPatchRow, CatalogRow, ExternalList, ExternalRow,
    CATALOG_PATH, EXTERNAL_PATH,
};

use super::{before_answer, error_response, json_answer, Service};
use crate::fault::{FaultBoard, HostEvent, RequestKind};

#[derive(Debug, Default)]
struct Rows {
    /// Model id → its rows: one per NEAR backend serving it (or one row
    /// without a URL), in insertion order.
    models: BTreeMap<String, Vec<CatalogRow>>,
    external: BTreeSet<ExternalRow>,
    /// `GET /v1/catalog` requests received (each refresh starts with one).
    listings: u64,
}

/// Direct access to the catalog's rows, for the scenario runner's catalog
/// edits. The rows outlive host crashes (it is a database). Listings are
/// ordered (by id; external rows by model, base URL, name).
#[derive(Debug, Clone, Default)]
pub struct CatalogHandle(Arc<Mutex<Rows>>);

impl CatalogHandle {
    fn rows(&self) -> MutexGuard<'_, Rows> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts or replaces the rows of one model id (all of `rows` must
    /// share it): one row per NEAR backend serving it.
    pub fn upsert_rows(&self, rows: Vec<CatalogRow>) {
        let Some(id) = rows.first().map(|r| r.id.clone()) else {
            return;
        };
        debug_assert!(rows.iter().all(|r| r.id == id), "one model id per upsert");
        self.rows().models.insert(id, rows);
    }

    /// Inserts or replaces the rows of `row.id` with this one row.
    pub fn upsert(&self, row: CatalogRow) {
        self.upsert_rows(vec![row]);
    }

    /// Adds a row for another backend of a model that may already have rows.
    fn push(&self, row: CatalogRow) {
        self.rows()
            .models
            .entry(row.id.clone())
            .or_default()
            .push(row);
    }

    /// Applies partial updates, as `PATCH /v1/catalog` does: activity and
    /// price apply to every row of the id; a new inference URL replaces its
    /// backends with that one.
    pub fn patch(&self, patches: &[CatalogPatchRow]) {
        let mut rows = self.rows();
        for p in patches {
            let current = rows.models.remove(&p.id).unwrap_or_default();
            let updated: Vec<CatalogRow> = if p.inference_url.is_some() || current.is_empty() {
                vec![p.apply(current.first())]
            } else {
                current.iter().map(|r| p.apply(Some(r))).collect()
            };
            rows.models.insert(p.id.clone(), updated);
        }
    }

    /// Removes every row of `id`; false if there was none.
    pub fn remove(&self, id: &str) -> bool {
        self.rows().models.remove(id).is_some()
    }

    /// How many discovery listings the catalog was asked for so far: a
    /// change means a refresh ran (or started) in between.
    pub fn listings(&self) -> u64 {
        self.rows().listings
    }

    pub fn models(&self) -> Vec<CatalogRow> {
        self.rows().models.values().flatten().cloned().collect()
    }

    pub fn add_external(&self, row: ExternalRow) {
        self.rows().external.insert(row);
    }

    /// Removes every external row of `model` named `name`; false if none.
    pub fn remove_external(&self, model: &str, name: &str) -> bool {
        let mut rows = self.rows();
        let before = rows.external.len();
        rows.external
            .retain(|r| !(r.model == model && r.name == name));
        rows.external.len() != before
    }

    pub fn external(&self) -> Vec<ExternalRow> {
        self.rows().external.iter().cloned().collect()
    }
}

/// Builder of the catalog host:
/// `Catalog::new("catalog").model(row).external(row).faults(&board).install(&mut sim)`.
#[derive(Debug, Clone)]
pub struct Catalog {
    host: String,
    rows: CatalogHandle,
    faults: FaultBoard,
}

impl Catalog {
    pub fn new(host: impl Into<String>) -> Self {
        Catalog {
            host: host.into(),
            rows: CatalogHandle::default(),
            faults: FaultBoard::new(),
        }
    }

    /// Adds a row (several rows of one id: several NEAR backends).
    pub fn model(self, row: CatalogRow) -> Self {
        self.rows.push(row);
        self
    }

    pub fn external(self, row: ExternalRow) -> Self {
        self.rows.add_external(row);
        self
    }

    pub fn faults(mut self, board: &FaultBoard) -> Self {
        self.faults = board.clone();
        self
    }

    pub fn handle(&self) -> CatalogHandle {
        self.rows.clone()
    }

    /// Registers the host; returns the handle to its rows.
    pub fn install(self, sim: &mut turmoil::Sim<'_>) -> CatalogHandle {
        let handle = self.rows.clone();
        self.service().install(sim);
        handle
    }

    /// The host's HTTP surface, to install on turmoil or serve on real
    /// sockets. Its rows are shared by every boot (take [`Catalog::handle`]
    /// first to edit them).
    pub fn service(self) -> Service {
        let host = self.host.clone();
        let state = Arc::new(self);
        Service::new(host, move || {
            Router::new()
                .route(CATALOG_PATH, get(list_models).patch(patch_models))
                .route(EXTERNAL_PATH, get(list_external))
                .with_state(state.clone())
        })
    }

    /// Serves `answer()` unless a fault says otherwise. The fault is taken
    /// before `answer` runs, so an error status means nothing was written;
    /// a reset after a write means the write happened but its answer was lost.
    async fn respond(&self, kind: RequestKind, answer: impl FnOnce() -> Bytes) -> Response {
        let fault = self.faults.take(&self.host, kind);
        if let Some(resp) = before_answer(fault.as_ref(), &self.host, "", false).await {
            return resp;
        }
        json_answer(fault.as_ref(), answer())
    }
}

impl Catalog {
    /// Tells the world's record what this answer carries.
    fn listed(&self, kind: RequestKind, models: Vec<CatalogRow>, external: Vec<ExternalRow>) {
        self.faults.record(HostEvent::Listing {
            kind,
            models,
            external,
        });
    }
}

fn to_json(value: &impl serde::Serialize) -> Bytes {
    serde_json::to_vec(value)
        .expect("catalog rows serialise")
        .into()
}

async fn list_models(State(c): State<Arc<Catalog>>) -> Response {
    c.rows.rows().listings += 1;
    c.respond(RequestKind::Catalog, || {
        let models = c.rows.models();
        c.listed(RequestKind::Catalog, models.clone(), Vec::new());
        to_json(&CatalogList { models })
    })
    .await
}

async fn list_external(State(c): State<Arc<Catalog>>) -> Response {
    c.respond(RequestKind::External, || {
        let providers = c.rows.external();
        c.listed(RequestKind::External, Vec::new(), providers.clone());
        to_json(&ExternalList { providers })
    })
    .await
}

async fn patch_models(State(c): State<Arc<Catalog>>, body: Bytes) -> Response {
    let patch: CatalogPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, None, &format!("bad patch: {e}")),
    };
    c.respond(RequestKind::CatalogPatch, || {
        c.rows.patch(&patch.models);
        let models = c.rows.models();
        c.listed(RequestKind::CatalogPatch, models.clone(), Vec::new());
        to_json(&CatalogList { models })
    })
    .await
}
