//! The oracles of SPEC §9, checked after every step of every run. Each
//! returns the evidence of a violation; an empty list means it holds.

use std::collections::BTreeSet;

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
    ("admin_batch_leaves_others", admin_batch_leaves_others),
];

/// Runs every oracle on one step.
pub fn check(rec: &StepRecord) -> Vec<(&'static str, String)> {
    ORACLES
        .iter()
        .flat_map(|(name, oracle)| oracle(rec).into_iter().map(move |m| (*name, m)))
        .collect()
}

/// What the world (not the engine) says about one step, for the oracles that
/// must not trust the engine's own records. Built by the reference model
/// from the scenario's configuration and the hosts' records.
#[derive(Debug, Clone, Default)]
pub struct WorldSide {
    /// R5: the ids the configuration reserves (`CHUTES_MODELS`), minus the
    /// ones a scenario step unregistered since the router booted (R14).
    pub reserved: BTreeSet<String>,
    /// The requested model's providers the request may use (R15/R16 applied),
    /// with what each can do: `(id, streams, client_e2ee)`.
    pub eligible: Vec<(String, bool, bool)>,
    /// For a request: did the last upstream that answered a chat call end its
    /// stream properly (what the host actually sent)? `None`: no streamed
    /// answer reached any host.
    pub upstream_ended: Option<bool>,
    /// Every simulated host's name: none may reach a client inside a URL.
    pub hosts: Vec<String>,
}

/// An oracle that judges from the world's side.
pub type WorldOracle = fn(&WorldSide, &StepRecord) -> Vec<String>;

/// Every world-side oracle, by name.
pub const WORLD_ORACLES: &[(&str, WorldOracle)] = &[
    ("reserved_never_plaintext", reserved_never_plaintext),
    (
        "stream_done_only_if_upstream_ended",
        stream_done_only_if_upstream_ended,
    ),
    ("streaming_filter", streaming_filter),
    ("client_e2ee_filter", client_e2ee_filter),
    ("no_internal_url_to_client", no_internal_url_to_client),
];

/// Runs every world-side oracle on one step.
pub fn check_world(world: &WorldSide, rec: &StepRecord) -> Vec<(&'static str, String)> {
    WORLD_ORACLES
        .iter()
        .flat_map(|(name, oracle)| oracle(world, rec).into_iter().map(move |m| (*name, m)))
        .collect()
}

/// R5/R12: the ids the configuration reserves never hold a plaintext
/// provider (the set comes from the configuration, not the engine, so a bug
/// that empties the engine's reserved set cannot switch this off).
fn reserved_never_plaintext(world: &WorldSide, rec: &StepRecord) -> Vec<String> {
    let Some(view) = &rec.state else {
        return Vec::new();
    };
    world
        .reserved
        .iter()
        .filter_map(|m| view.models.get(m).map(|l| (m, l)))
        .flat_map(|(m, l)| {
            l.iter()
                .filter(|p| p.tier == Tier::NonAttested)
                .map(move |p| format!("reserved id {m} holds plaintext provider {}", p.id))
        })
        .collect()
}

/// R23: a client gets `[DONE]` only when the upstream that served it really
/// ended its stream (an authenticated inner `[DONE]` for Chutes, `[DONE]`
/// for NEAR), as the host recorded what it sent.
fn stream_done_only_if_upstream_ended(world: &WorldSide, rec: &StepRecord) -> Vec<String> {
    let Some(req) = &rec.request else {
        return Vec::new();
    };
    if !req.stream || req.status != 200 {
        return Vec::new();
    }
    let body = String::from_utf8_lossy(&req.body);
    let done = body.lines().any(|l| l == "data: [DONE]");
    match (done, world.upstream_ended) {
        (true, Some(false)) => vec![
            "the client got [DONE] but the upstream that served it never ended its stream".into(),
        ],
        (true, None) => vec!["the client got [DONE] but no upstream streamed anything".into()],
        _ => Vec::new(),
    }
}

/// R18: a streamed request never tries a provider that cannot stream while
/// a streaming-capable one is eligible.
fn streaming_filter(world: &WorldSide, rec: &StepRecord) -> Vec<String> {
    let Some(req) = &rec.request else {
        return Vec::new();
    };
    if !req.stream {
        return Vec::new();
    }
    capability_misses(world, req, |(_, streams, _)| *streams, "cannot stream")
}

/// R18: a request carrying `x-client-pub-key` never tries a provider without
/// client E2EE while a capable one is eligible.
fn client_e2ee_filter(world: &WorldSide, rec: &StepRecord) -> Vec<String> {
    let Some(req) = &rec.request else {
        return Vec::new();
    };
    if !req.client_e2ee {
        return Vec::new();
    }
    capability_misses(world, req, |(_, _, e2ee)| *e2ee, "has no client E2EE")
}

fn capability_misses(
    world: &WorldSide,
    req: &RequestRecord,
    capable: impl Fn(&(String, bool, bool)) -> bool,
    lacks: &str,
) -> Vec<String> {
    if !world.eligible.iter().any(&capable) {
        return Vec::new();
    }
    req.attempts
        .iter()
        .filter(|a| {
            world
                .eligible
                .iter()
                .any(|p| p.0 == a.provider.as_str() && !capable(p))
        })
        .map(|a| {
            format!(
                "{} was tried although it {lacks} and a capable provider is listed",
                a.provider
            )
        })
        .collect()
}

/// R22: no internal URL or address reaches a client (upstream error texts
/// carry their URL: the sanitiser must redact them).
fn no_internal_url_to_client(world: &WorldSide, rec: &StepRecord) -> Vec<String> {
    let Some(req) = &rec.request else {
        return Vec::new();
    };
    let body = String::from_utf8_lossy(&req.body);
    world
        .hosts
        .iter()
        .filter(|h| body.contains(&format!("://{h}")))
        .map(|h| format!("the client saw an internal URL of {h}"))
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
