//! Step actions shared by the simulated runner and `tiersim serve`: the
//! same scenario step does the same thing in both worlds; only how a host
//! name becomes a URL differs.

use std::sync::Mutex;

use serde_json::{json, Value};
use tiersim_engine::app::RefreshReport;

use crate::hosts::CatalogHandle;
use crate::scenario::format::{CatalogEdit, ExternalSpec, PatchRow};
use crate::world::{self, RouterSlot};

/// Asks the router for a complete refresh now and waits until it is applied.
/// `None` while the router is down.
pub async fn refresh(router: &Mutex<RouterSlot>) -> Option<RefreshReport> {
    let trigger = router
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .trigger
        .clone()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    trigger.send(tx).await.ok()?;
    rx.await.ok()
}

/// The `Authorization` header value of an admin request (R13).
pub fn admin_authorization(key: &str) -> String {
    format!("Bearer {key}")
}

/// The body of `PATCH /v1/admin/models` for a scenario's rows: only the
/// fields a row sets; an empty `inference_url` clears it (JSON `null`).
pub fn admin_patch_body(rows: &[PatchRow], url: &dyn Fn(&str) -> String) -> String {
    let models: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut row = json!({ "id": r.id });
            if let Some(u) = &r.inference_url {
                let u = u.get_ref();
                row["inference_url"] = if u.is_empty() {
                    Value::Null
                } else {
                    url(u).into()
                };
            }
            if let Some(a) = r.active {
                row["active"] = a.into();
            }
            if let Some(p) = r.price {
                row["price"] = p.into();
            }
            if let Some(n) = r.context_length {
                row["context_length"] = n.into();
            }
            if let Some(l) = &r.long_context {
                row["provider_config"] = world::long_context_config(l, url);
            }
            row
        })
        .collect();
    json!({ "models": models }).to_string()
}

/// An operator's direct edit of the catalog database.
/// `external` is the scenario's external providers (the loader checked
/// that every external row names one).
pub fn edit_catalog(
    edit: &CatalogEdit,
    catalog: &CatalogHandle,
    external: &[ExternalSpec],
    url: &dyn Fn(&str) -> String,
) {
    for row in &edit.upsert {
        catalog.upsert_rows(world::wire_rows(row, url));
    }
    for id in &edit.remove {
        catalog.remove(id);
    }
    for row in &edit.external_upsert {
        let host = row.host.get_ref();
        if let Some(spec) = external.iter().find(|e| &e.host == host) {
            catalog.add_external(spec.row(&row.model, url(host)));
        }
    }
    for model in &edit.external_remove {
        for row in catalog.external() {
            if &row.model == model {
                catalog.remove_external(model, &row.name);
            }
        }
    }
}
