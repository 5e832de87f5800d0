//! The oracles of SPEC §9, checked after every step of every run. Each
//! returns the evidence of a violation; an empty list means it holds.

use serde_json::Value;
use tiersim_engine::registry::RegistryView;
use tiersim_engine::retry::Decision;
use tiersim_engine::Tier;

use crate::record::{RequestRecord, StepRecord};

/// An oracle: the evidence of its violations on one step (empty: it holds).
pub type Oracle = fn(&StepRecord) -> Vec<String>;

/// Every oracle, by name.
pub const ORACLES: &[(&str, Oracle)] = &[
    ("verifiable_never_plaintext", verifiable_never_plaintext),
    ("pinned_never_dropped", pinned_never_dropped),
    ("canonical_model", canonical_model),
    ("no_orphan_pubkey", no_orphan_pubkey),
    ("no_fake_success_stream", no_fake_success_stream),
    (
        "refusal_never_masks_retryable",
        refusal_never_masks_retryable,
    ),
    ("reserved_never_plaintext", reserved_never_plaintext),
    ("admin_batch_leaves_others", admin_batch_leaves_others),
];

/// Runs every oracle on one step.
pub fn check(rec: &StepRecord) -> Vec<(&'static str, String)> {
    ORACLES
        .iter()
        .flat_map(|(name, oracle)| oracle(rec).into_iter().map(move |m| (*name, m)))
        .collect()
}

fn tier_of(view: Option<&RegistryView>, model: &str, provider: &str) -> Option<Tier> {
    view?
        .models
        .get(model)?
        .iter()
        .find(|p| p.id.as_str() == provider)
        .map(|p| p.tier)
}

/// R15: a request for a model with an attested provider never reaches a
/// plaintext one.
fn verifiable_never_plaintext(rec: &StepRecord) -> Vec<String> {
    let (Some(req), Some(view)) = (&rec.request, &rec.state) else {
        return Vec::new();
    };
    let Some(list) = view.models.get(&req.model) else {
        return Vec::new();
    };
    if !list.iter().any(|p| p.tier.is_attested()) {
        return Vec::new();
    }
    req.attempts
        .iter()
        .filter(|a| tier_of(Some(view), &req.model, a.provider.as_str()) == Some(Tier::NonAttested))
        .map(|a| {
            format!(
                "{} is verifiable but plaintext provider {} was tried",
                req.model, a.provider
            )
        })
        .collect()
}

/// A pinned provider is always in its model's list.
fn pinned_never_dropped(rec: &StepRecord) -> Vec<String> {
    let Some(view) = &rec.state else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (model, pins) in &view.pinned {
        let ids = view.provider_ids(model);
        for pin in pins {
            if !ids.contains(&pin.as_str()) {
                out.push(format!(
                    "pinned provider {pin} of {model} is missing from its list {ids:?}"
                ));
            }
        }
    }
    out
}

/// R3: every `model` the client sees is the canonical id it asked for.
fn canonical_model(rec: &StepRecord) -> Vec<String> {
    let Some(req) = &rec.request else {
        return Vec::new();
    };
    payloads(req)
        .filter_map(|v| v.get("model").and_then(Value::as_str).map(str::to_string))
        .filter(|m| m != &req.model)
        .map(|m| format!("client asked for {} but saw model {m:?}", req.model))
        .collect()
}

/// The JSON objects a client received: the body, or each SSE `data:` event.
fn payloads(req: &RequestRecord) -> impl Iterator<Item = Value> + '_ {
    let body = String::from_utf8_lossy(&req.body).into_owned();
    let events: Vec<Value> = if req.stream && req.status == 200 {
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect()
    } else {
        serde_json::from_str(&body).into_iter().collect()
    };
    events.into_iter()
}

/// R8/R9: the pubkey map names only providers that back some model.
fn no_orphan_pubkey(rec: &StepRecord) -> Vec<String> {
    let Some(view) = &rec.state else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, ids) in &view.pubkeys {
        for id in ids {
            if !view.models.values().flatten().any(|p| &p.id == id) {
                out.push(format!("pubkey {key} points at {id}, which backs no model"));
            }
        }
    }
    out
}

/// R23: a stream ends with `[DONE]` only when nothing failed: no error event
/// before it, nothing after it, once.
fn no_fake_success_stream(rec: &StepRecord) -> Vec<String> {
    let Some(req) = &rec.request else {
        return Vec::new();
    };
    if !req.stream || req.status != 200 {
        return Vec::new();
    }
    let body = String::from_utf8_lossy(&req.body);
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let dones = events.iter().filter(|e| **e == "[DONE]").count();
    let mut out = Vec::new();
    if dones > 1 {
        out.push(format!("{dones} [DONE] events"));
    }
    if dones == 1 {
        if events.last() != Some(&"[DONE]") {
            out.push("events after [DONE]".into());
        }
        if events.iter().any(|e| e.contains("\"error\"")) {
            out.push("[DONE] after an error event".into());
        }
    }
    out
}

const REFUSALS: &[&str] = &[
    "streaming is disabled",
    "client-facing E2EE is not supported",
];

/// R18/R22: a capability refusal is never the error that ends a request
/// in which a provider failed retryably.
fn refusal_never_masks_retryable(rec: &StepRecord) -> Vec<String> {
    let Some(req) = &rec.request else {
        return Vec::new();
    };
    if req.status == 200 {
        return Vec::new();
    }
    // The error that ended the request, as the router recorded it: the
    // client's reply shows generic text for a refusal (R30).
    let ended_on = req.error.as_deref().unwrap_or_default();
    let refused = REFUSALS.iter().any(|r| ended_on.contains(r));
    let retryable = req
        .attempts
        .iter()
        .find(|a| a.decision == Decision::Retryable);
    match (refused, retryable) {
        (true, Some(a)) => vec![format!(
            "the client saw a capability refusal although {} failed retryably",
            a.provider
        )],
        _ => Vec::new(),
    }
}

/// R5/R12: reserved and pinned ids never hold a plaintext provider.
fn reserved_never_plaintext(rec: &StepRecord) -> Vec<String> {
    let Some(view) = &rec.state else {
        return Vec::new();
    };
    view.reserved
        .iter()
        .chain(view.pinned.keys())
        .filter_map(|m| view.models.get(m).map(|l| (m, l)))
        .flat_map(|(m, l)| {
            l.iter()
                .filter(|p| p.tier == Tier::NonAttested)
                .map(move |p| format!("reserved id {m} holds plaintext provider {}", p.id))
        })
        .collect()
}

/// R7/R13: an admin PATCH is a partial batch: every model it does not name
/// keeps exactly its provider list across the PATCH (checked when no refresh
/// interleaved with it; health counters may move, the lists may not).
fn admin_batch_leaves_others(rec: &StepRecord) -> Vec<String> {
    let (Some(before), Some(after)) = (&rec.patch_before, &rec.state) else {
        return Vec::new();
    };
    let models: std::collections::BTreeSet<&String> = before
        .view
        .models
        .keys()
        .chain(after.models.keys())
        .filter(|m| !before.ids.contains(m))
        .collect();
    models
        .into_iter()
        .filter_map(|m| {
            let was = before.view.provider_ids(m);
            let now = after.provider_ids(m);
            (was != now).then(|| {
                format!(
                    "an admin PATCH of {:?} changed unrelated model {m}: {was:?} -> {now:?}",
                    before.ids
                )
            })
        })
        .collect()
}
