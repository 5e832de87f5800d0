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

/// Each oracle fed a hand-built record that breaks its rule, and one that
/// keeps it: a judge that can no longer fail is caught here, not by a
/// scenario (a passing scenario cannot tell a blind oracle from a clean run).
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use tiersim_engine::health::Ttft;
    use tiersim_engine::provider::ProviderId;
    use tiersim_engine::registry::ProviderView;
    use tiersim_engine::retry::{Attempt, Outcome};

    use super::*;
    use crate::record::PatchBefore;

    const M: &str = "zai-org/GLM-5.1-FP8";

    fn provider(id: &str, tier: Tier) -> ProviderView {
        ProviderView {
            id: ProviderId::new(id),
            tier,
            consecutive_failures: 0,
            demoted: false,
            context_window: None,
            ttft: Ttft::default(),
            latency_demoted: false,
        }
    }

    fn view(models: &[(&str, &[(&str, Tier)])]) -> RegistryView {
        RegistryView {
            models: models
                .iter()
                .map(|(m, ps)| {
                    let list = ps.iter().map(|(id, t)| provider(id, *t)).collect();
                    (m.to_string(), list)
                })
                .collect(),
            ..Default::default()
        }
    }

    fn attempt(provider: &str, decision: Decision) -> Attempt {
        Attempt {
            provider: ProviderId::new(provider),
            round: 1,
            at: Duration::ZERO,
            outcome: if decision == Decision::Served {
                Outcome::Ok
            } else {
                Outcome::Error {
                    status: 503,
                    message: "upstream failed".into(),
                }
            },
            decision,
            retry_after: None,
        }
    }

    fn request(
        stream: bool,
        status: u16,
        body: &str,
        attempts: &[(&str, Decision)],
    ) -> RequestRecord {
        RequestRecord {
            id: "step1".into(),
            model: M.into(),
            stream,
            client_e2ee: false,
            status,
            headers: Vec::new(),
            body: Bytes::from(body.to_string()),
            attempts: attempts.iter().map(|(p, d)| attempt(p, *d)).collect(),
            upstream: Vec::new(),
            tokenized: Vec::new(),
            served: None,
            via_fallback: None,
            error: None,
        }
    }

    fn step(request: Option<RequestRecord>, state: Option<RegistryView>) -> StepRecord {
        StepRecord {
            request,
            state,
            ..StepRecord::new(0, Duration::ZERO, "request")
        }
    }

    /// A stream's body: each event as an SSE `data:` line.
    fn sse(events: &[&str]) -> String {
        events.iter().map(|e| format!("data: {e}\n\n")).collect()
    }

    const CHUNK: &str = r#"{"model":"zai-org/GLM-5.1-FP8","choices":[]}"#;
    const ERROR_EVENT: &str = r#"{"error":{"message":"upstream failed"}}"#;

    #[test]
    fn r5_r12_a_reserved_id_holding_a_plaintext_provider_is_flagged() {
        let world = WorldSide {
            reserved: [M.to_string()].into(),
            ..Default::default()
        };
        let state = view(&[
            (
                M,
                &[("near-1", Tier::Near), ("external:or", Tier::NonAttested)],
            ),
            ("other", &[("external:or", Tier::NonAttested)]),
        ]);
        let rec = step(None, Some(state));
        assert_eq!(
            reserved_never_plaintext(&world, &rec),
            [format!(
                "reserved id {M} holds plaintext provider external:or"
            )]
        );
        let clean = step(None, Some(view(&[(M, &[("near-1", Tier::Near)])])));
        assert!(reserved_never_plaintext(&world, &clean).is_empty());
    }

    #[test]
    fn r23_done_without_an_upstream_end_is_flagged() {
        let done = sse(&[CHUNK, "[DONE]"]);
        let rec = step(Some(request(true, 200, &done, &[])), None);
        let ended = |e| WorldSide {
            upstream_ended: e,
            ..Default::default()
        };
        assert_eq!(
            stream_done_only_if_upstream_ended(&ended(Some(false)), &rec),
            ["the client got [DONE] but the upstream that served it never ended its stream"]
        );
        assert_eq!(
            stream_done_only_if_upstream_ended(&ended(None), &rec),
            ["the client got [DONE] but no upstream streamed anything"]
        );
        assert!(stream_done_only_if_upstream_ended(&ended(Some(true)), &rec).is_empty());
        // A stream cut before [DONE] claims nothing, whatever the upstream did.
        let cut = step(Some(request(true, 200, &sse(&[CHUNK]), &[])), None);
        assert!(stream_done_only_if_upstream_ended(&ended(Some(false)), &cut).is_empty());
        assert!(stream_done_only_if_upstream_ended(&ended(None), &cut).is_empty());
    }

    fn capable_world() -> WorldSide {
        WorldSide {
            eligible: vec![
                ("near-1".into(), false, false),
                ("chutes:glm".into(), true, true),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn r18_a_stream_tried_on_a_provider_that_cannot_stream_is_flagged() {
        let tried = [
            ("near-1", Decision::Retryable),
            ("chutes:glm", Decision::Served),
        ];
        let rec = step(Some(request(true, 200, "", &tried)), None);
        assert_eq!(
            streaming_filter(&capable_world(), &rec),
            ["near-1 was tried although it cannot stream and a capable provider is listed"]
        );
        // Only the capable provider tried: nothing to flag.
        let ok = step(
            Some(request(true, 200, "", &[("chutes:glm", Decision::Served)])),
            None,
        );
        assert!(streaming_filter(&capable_world(), &ok).is_empty());
        // No capable provider eligible: the incapable one is the only choice.
        let none_capable = WorldSide {
            eligible: vec![("near-1".into(), false, false)],
            ..Default::default()
        };
        let alone = step(
            Some(request(true, 200, "", &[("near-1", Decision::Served)])),
            None,
        );
        assert!(streaming_filter(&none_capable, &alone).is_empty());
        // A request that does not stream asks for no streaming.
        let plain = step(Some(request(false, 200, "", &tried)), None);
        assert!(streaming_filter(&capable_world(), &plain).is_empty());
    }

    #[test]
    fn r18_a_client_e2ee_request_tried_on_a_provider_without_it_is_flagged() {
        let tried = [
            ("near-1", Decision::Retryable),
            ("chutes:glm", Decision::Served),
        ];
        let mut req = request(false, 200, "", &tried);
        req.client_e2ee = true;
        assert_eq!(
            client_e2ee_filter(&capable_world(), &step(Some(req.clone()), None)),
            ["near-1 was tried although it has no client E2EE and a capable provider is listed"]
        );
        req.client_e2ee = false;
        assert!(client_e2ee_filter(&capable_world(), &step(Some(req), None)).is_empty());
    }

    #[test]
    fn r22_an_internal_url_reaching_the_client_is_flagged() {
        let world = WorldSide {
            hosts: vec!["near-1".into(), "near-2".into()],
            ..Default::default()
        };
        let body =
            r#"{"error":{"message":"error sending request for url (http://near-1:8000/v1)"}}"#;
        let rec = step(Some(request(false, 502, body, &[])), None);
        assert_eq!(
            no_internal_url_to_client(&world, &rec),
            ["the client saw an internal URL of near-1"]
        );
        let redacted = step(Some(request(false, 502, r#"{"error":{}}"#, &[])), None);
        assert!(no_internal_url_to_client(&world, &redacted).is_empty());
    }

    #[test]
    fn r15_a_verifiable_model_tried_on_a_plaintext_provider_is_flagged() {
        let state = view(&[(
            M,
            &[("near-1", Tier::Near), ("external:or", Tier::NonAttested)],
        )]);
        let tried = [
            ("near-1", Decision::Retryable),
            ("external:or", Decision::Served),
        ];
        let rec = step(Some(request(false, 200, "", &tried)), Some(state));
        assert_eq!(
            verifiable_never_plaintext(&rec),
            [format!(
                "{M} is verifiable but plaintext provider external:or was tried"
            )]
        );
        // A model with no attested provider may be served in plaintext.
        let plain = view(&[(M, &[("external:or", Tier::NonAttested)])]);
        let rec = step(
            Some(request(
                false,
                200,
                "",
                &[("external:or", Decision::Served)],
            )),
            Some(plain),
        );
        assert!(verifiable_never_plaintext(&rec).is_empty());
    }

    #[test]
    fn r4_a_pinned_provider_missing_from_its_list_is_flagged() {
        let mut state = view(&[(M, &[("near-1", Tier::Near)])]);
        state
            .pinned
            .insert(M.into(), vec![ProviderId::new("chutes:glm")]);
        assert_eq!(
            pinned_never_dropped(&step(None, Some(state.clone()))),
            [format!(
                "pinned provider chutes:glm of {M} is missing from its list [\"near-1\"]"
            )]
        );
        state
            .models
            .get_mut(M)
            .unwrap()
            .push(provider("chutes:glm", Tier::Attested3p));
        assert!(pinned_never_dropped(&step(None, Some(state))).is_empty());
    }

    #[test]
    fn r3_a_non_canonical_model_in_a_reply_or_a_chunk_is_flagged() {
        let own = r#"{"model":"near-1/zai-org/GLM-5.1-FP8","choices":[]}"#;
        let want = [format!(
            "client asked for {M} but saw model \"near-1/zai-org/GLM-5.1-FP8\""
        )];
        let json = step(Some(request(false, 200, own, &[])), None);
        assert_eq!(canonical_model(&json), want);
        let stream = step(
            Some(request(true, 200, &sse(&[CHUNK, own, "[DONE]"]), &[])),
            None,
        );
        assert_eq!(canonical_model(&stream), want);
        let fine = step(
            Some(request(true, 200, &sse(&[CHUNK, "[DONE]"]), &[])),
            None,
        );
        assert!(canonical_model(&fine).is_empty());
        let fine = step(Some(request(false, 200, CHUNK, &[])), None);
        assert!(canonical_model(&fine).is_empty());
    }

    #[test]
    fn r8_r9_a_pubkey_naming_a_provider_that_backs_nothing_is_flagged() {
        let mut state = view(&[(M, &[("near-1", Tier::Near), ("near-2", Tier::Near)])]);
        state
            .pubkeys
            .insert("key-1".into(), vec![ProviderId::new("near-1")]);
        state
            .pubkeys
            .insert("key-3".into(), vec![ProviderId::new("near-3")]);
        assert_eq!(
            no_orphan_pubkey(&step(None, Some(state))),
            ["pubkey key-3 points at near-3, which backs no model"]
        );
    }

    #[test]
    fn r23_a_stream_ending_with_done_after_a_failure_is_flagged() {
        let judge = |events: &[&str]| {
            no_fake_success_stream(&step(Some(request(true, 200, &sse(events), &[])), None))
        };
        assert!(judge(&[CHUNK, "[DONE]"]).is_empty());
        // Cut before [DONE]: no success claimed.
        assert!(judge(&[CHUNK]).is_empty());
        assert!(judge(&[CHUNK, ERROR_EVENT]).is_empty());
        assert_eq!(judge(&[CHUNK, "[DONE]", "[DONE]"]), ["2 [DONE] events"]);
        assert_eq!(
            judge(&[CHUNK, "[DONE]", "[DONE]", "[DONE]"]),
            ["3 [DONE] events"]
        );
        assert_eq!(judge(&["[DONE]", CHUNK]), ["events after [DONE]"]);
        assert_eq!(
            judge(&[CHUNK, ERROR_EVENT, "[DONE]"]),
            ["[DONE] after an error event"]
        );
    }

    #[test]
    fn r18_r22_a_refusal_ending_a_request_with_a_retryable_failure_is_flagged() {
        let tried = [
            ("near-1", Decision::FallThrough),
            ("near-2", Decision::Retryable),
        ];
        let mut req = request(true, 503, "", &tried);
        req.error = Some("streaming is disabled for chutes:glm".into());
        assert_eq!(
            refusal_never_masks_retryable(&step(Some(req.clone()), None)),
            ["the client saw a capability refusal although near-2 failed retryably"]
        );
        // The same refusal with no retryable failure before it is honest.
        req.attempts = vec![attempt("near-1", Decision::FallThrough)];
        assert!(refusal_never_masks_retryable(&step(Some(req), None)).is_empty());
    }

    #[test]
    fn r7_r13_an_admin_patch_changing_an_unnamed_model_is_flagged() {
        let before = view(&[
            (M, &[("near-1", Tier::Near)]),
            ("other", &[("near-2", Tier::Near)]),
        ]);
        let mut rec = step(None, None);
        rec.patch_before = Some(PatchBefore {
            ids: vec![M.into()],
            view: before.clone(),
        });
        // The named model may change; the other one is left as it was.
        rec.state = Some(view(&[
            (M, &[("near-3", Tier::Near)]),
            ("other", &[("near-2", Tier::Near)]),
        ]));
        assert!(admin_batch_leaves_others(&rec).is_empty());
        rec.state = Some(view(&[
            (M, &[("near-3", Tier::Near)]),
            ("other", &[("near-2", Tier::Near), ("near-3", Tier::Near)]),
        ]));
        assert_eq!(
            admin_batch_leaves_others(&rec),
            [format!(
                "an admin PATCH of [\"{M}\"] changed unrelated model other: \
                 [\"near-2\"] -> [\"near-2\", \"near-3\"]"
            )]
        );
    }

    #[test]
    fn every_oracle_reports_under_its_own_name() {
        let mut state = view(&[(M, &[("near-1", Tier::Near)])]);
        state
            .pinned
            .insert(M.into(), vec![ProviderId::new("chutes:glm")]);
        let rec = step(None, Some(state.clone()));
        let got = check(&rec);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "pinned_never_dropped");

        state
            .models
            .get_mut(M)
            .unwrap()
            .push(provider("external:or", Tier::NonAttested));
        let world = WorldSide {
            reserved: [M.to_string()].into(),
            ..Default::default()
        };
        let got = check_world(&world, &step(None, Some(state)));
        assert_eq!(
            got,
            [(
                "reserved_never_plaintext",
                format!("reserved id {M} holds plaintext provider external:or")
            )]
        );
    }
}
