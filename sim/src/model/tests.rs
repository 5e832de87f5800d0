//! The model on its own: fed hand-written world events, it predicts what
//! SPEC says, whatever any engine does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tiersim_engine::catalog::CatalogRow;
use tiersim_engine::health::Ttft;
use tiersim_engine::provider::ProviderId;
use tiersim_engine::registry::{ProviderView, RegistryView};
use tiersim_engine::retry::{Attempt, Decision, Outcome};

use super::latency::Range;
use super::registry::{Kind, DEMOTED_AT};
use super::request::{Asks, Step};
use super::{Facts, Prediction, Registry};
use crate::fault::{EvidenceFlaw, Fault, HostEvent, RequestKind};
use crate::hosts::DEFAULT_NONCES;
use crate::record::{RequestRecord, StepRecord};
use crate::scenario::format::RequestSpec;

/// The three-NEAR + Chutes world of the R17 scenario, its registry after one
/// complete refresh that listed and attested all three backends.
fn three_near() -> (Facts, Registry) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/three_near_round_robin_chutes_last.toml");
    let scenario = crate::scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let near_keys = ["near-1", "near-2", "near-3"]
        .iter()
        .map(|h| (h.to_string(), format!("key-of-{h}")))
        .collect();
    let facts = Facts {
        scenario,
        near_keys,
    };
    let mut reg = Registry::boot(&facts);
    let req = |host: &str, kind| HostEvent::Request {
        host: host.into(),
        kind,
        fault: None,
    };
    let row = |h: &str| CatalogRow {
        id: MODEL.into(),
        inference_url: Some(format!("http://{h}")),
        active: true,
        price: 0,
        provider_type: Default::default(),
        ..Default::default()
    };
    let events = vec![
        HostEvent::RouterBoot,
        req("catalog", RequestKind::Catalog),
        HostEvent::Listing {
            kind: RequestKind::Catalog,
            models: vec![row("near-1"), row("near-2"), row("near-3")],
            external: Vec::new(),
        },
        req("near-1", RequestKind::Attestation),
        req("near-2", RequestKind::Attestation),
        req("near-3", RequestKind::Attestation),
        req("catalog", RequestKind::External),
        HostEvent::Listing {
            kind: RequestKind::External,
            models: Vec::new(),
            external: Vec::new(),
        },
    ];
    let end = reg.absorb(&facts, &events, 0, events.len());
    assert_eq!(end, events.len());
    assert!(!reg.pending);
    (facts, reg)
}

const MODEL: &str = "zai-org/GLM-5.1-FP8";

fn spec() -> RequestSpec {
    RequestSpec {
        model: MODEL.into(),
        stream: false,
        prompt: None,
        repeat: None,
        messages: None,
        max_tokens: None,
        extra: None,
        pub_key_of: None,
        model_pub_key: None,
        client_pub_key: None,
    }
}

/// Every backend answers once, `fault` on `faulty`.
fn window(faulty: &str, fault: Option<Fault>) -> Vec<HostEvent> {
    ["near-1", "near-2", "near-3"]
        .iter()
        .map(|h| HostEvent::Request {
            host: h.to_string(),
            kind: RequestKind::Chat,
            fault: if *h == faulty { fault.clone() } else { None },
        })
        .collect()
}

fn ids(reg: &Registry) -> Vec<String> {
    reg.list(MODEL).into_iter().map(|p| p.id).collect()
}

#[test]
fn r7_model_lists_near_then_pinned_chutes() {
    let (_, reg) = three_near();
    assert_eq!(
        ids(&reg),
        ["near-1", "near-2", "near-3", "chutes:zai-org/GLM-5.1-TEE"]
    );
    assert!(reg.reserved.contains(MODEL));
}

#[test]
fn r19_an_answer_held_near_the_upstream_deadline_leaves_the_run_undecided() {
    // The world's deadline is 30 s; at the R17 scenario's 1 ms tick a call
    // crosses the network in at most 408 ms.
    for (ms, undecided, status) in [
        (29_000, false, 200),
        (29_592, true, 0),
        (29_999, true, 0),
        (30_000, false, 200),
    ] {
        let (facts, mut reg) = three_near();
        let fault = Some(Fault::LatencyMs { ms });
        let p = reg.request(&facts, &spec(), &window("near-1", fault));
        assert_eq!(p.undecided, undecided, "held {ms} ms");
        assert_eq!(p.status, status, "held {ms} ms");
        if ms == 30_000 {
            // Surely a timeout: retried on the next NEAR.
            assert_eq!(p.attempts[0].decision, Decision::FallThrough);
        }
    }
}

#[test]
fn r19_r21_a_stream_silent_past_its_idle_limit_is_not_counted() {
    // The leader (R48 places a stream by its prefix hash) holds its first
    // token past the 30 s idle limit: the stream was handed over and ends
    // without [DONE] on a timeout, which R19 makes non-retryable, so R21
    // does not count it (a cut is counted).
    let stream = RequestSpec {
        stream: true,
        ..spec()
    };
    let every = |fault: Fault| -> Vec<HostEvent> {
        ["near-1", "near-2", "near-3"]
            .iter()
            .map(|h| HostEvent::Request {
                host: h.to_string(),
                kind: RequestKind::ChatStream,
                fault: Some(fault.clone()),
            })
            .collect()
    };
    let (facts, mut reg) = three_near();
    let p = reg.request(
        &facts,
        &stream,
        &every(Fault::SlowFirstTokenMs { ms: 31_000 }),
    );
    assert_eq!((p.status, p.done), (200, Some(false)));
    assert_eq!(decisions(&p), [Decision::Served]);
    let leader = p.attempts[0].provider.clone();
    assert_eq!(reg.failures(&leader), 0);
    let (facts, mut reg) = three_near();
    let cut = Fault::ResetAfterChunks { after_chunks: 1 };
    let p = reg.request(&facts, &stream, &every(cut));
    assert_eq!((p.status, p.done), (200, Some(false)));
    assert_eq!(p.attempts[0].provider, leader);
    assert_eq!(reg.failures(&leader), 1);
}

#[test]
fn r17_model_rotates_the_leading_group_only() {
    let (facts, mut reg) = three_near();
    let leaders: Vec<String> = (0..6)
        .map(|_| {
            let p = reg.request(&facts, &spec(), &window("", None));
            assert_eq!(p.status, 200);
            p.attempts[0].provider.clone()
        })
        .collect();
    assert_eq!(
        leaders,
        ["near-1", "near-2", "near-3", "near-1", "near-2", "near-3"]
    );
}

#[test]
fn r65_the_counter_is_read_modulo_the_current_group_and_one_candidate_leaves_it() {
    let (facts, mut reg) = three_near();
    let lead = |reg: &mut Registry, demoted: &[&str]| {
        for h in ["near-1", "near-2", "near-3"] {
            let n = if demoted.contains(&h) { DEMOTED_AT } else { 0 };
            reg.health.insert(h.into(), n);
        }
        let p = reg.request(&facts, &spec(), &window("", None));
        assert_eq!(p.status, 200);
        p.attempts[0].provider.clone()
    };
    assert_eq!(lead(&mut reg, &[]), "near-1");
    assert_eq!(lead(&mut reg, &[]), "near-2");
    // The counter holds 2; a group of two reads 2 mod 2 and stores 1.
    assert_eq!(lead(&mut reg, &["near-3"]), "near-1");
    assert_eq!(reg.turns[MODEL], (1, 0));
    // A group of one leaves it at 1, read mod 3 once all are back.
    assert_eq!(lead(&mut reg, &["near-2", "near-3"]), "near-1");
    assert_eq!(reg.turns[MODEL], (1, 0));
    assert_eq!(lead(&mut reg, &[]), "near-2");
}

/// The R17 world where near-1 declares 1 000 tokens, near-2 and near-3
/// 2 000: near-1 leads a short request (smallest window first), then
/// near-2, near-3, then Chutes.
fn windowed() -> (Facts, Registry) {
    let (facts, mut reg) = three_near();
    reg.windows.insert("near-1".into(), 1000);
    reg.windows.insert("near-2".into(), 2000);
    reg.windows.insert("near-3".into(), 2000);
    (facts, reg)
}

fn http_fault(status: u16, message: &str) -> Option<Fault> {
    Some(Fault::HttpStatus {
        status,
        code: None,
        message: Some(message.into()),
    })
}

fn too_long() -> Option<Fault> {
    http_fault(400, "This model's maximum context length is 1000 tokens")
}

/// One chat answer per (host, fault), in order.
fn chats(answers: impl IntoIterator<Item = (&'static str, Option<Fault>)>) -> Vec<HostEvent> {
    answers
        .into_iter()
        .map(|(h, fault)| HostEvent::Request {
            host: h.into(),
            kind: RequestKind::Chat,
            fault,
        })
        .collect()
}

#[test]
fn r45_a_context_400_falls_through_only_where_a_window_is_strictly_larger() {
    let cases = [
        // A larger window is left: next provider, not counted.
        (
            [too_long(), None],
            vec![Decision::FallThrough, Decision::Served],
            200,
            0,
        ),
        // near-2's is the largest: its context 400 is the client's.
        (
            [too_long(), too_long()],
            vec![Decision::FallThrough, Decision::FastReturn],
            400,
            0,
        ),
        // Any other failure is what it always is (a 503: counted, next).
        (
            [http_fault(503, "busy"), None],
            vec![Decision::Retryable, Decision::Served],
            200,
            1,
        ),
    ];
    for (faults, want, want_status, near_1_failures) in cases {
        let (facts, mut reg) = windowed();
        let [near_1, near_2] = faults;
        let p = reg.request(
            &facts,
            &spec(),
            &chats([("near-1", near_1), ("near-2", near_2)]),
        );
        assert_eq!(decisions(&p), want);
        assert_eq!(p.attempts[0].provider, "near-1");
        assert_eq!(p.status, want_status);
        assert_eq!(reg.failures("near-1"), near_1_failures);
    }
}

#[test]
fn r22_r45_every_round_failing_the_earlier_of_the_most_informative_errors_ends_it() {
    // Each round: near-1's context 400 falls through (R45: never over a
    // retryable error), near-2 answers 500, near-3 503 and Chutes cannot
    // be reached (none more informative: the earliest wins). R29: near-2's
    // 500 is the client's 502 (a 503 would be its 429).
    let (facts, mut reg) = windowed();
    let round = || {
        [
            ("near-1", too_long()),
            ("near-2", http_fault(500, "oops")),
            ("near-3", http_fault(503, "busy")),
        ]
    };
    let events = chats((0..super::request::ROUNDS).flat_map(|_| round()));
    let p = reg.request(&facts, &spec(), &events);
    assert_eq!(p.attempts.len(), 16, "four rounds of four");
    assert_eq!(p.status, 502);
    assert_eq!(reg.failures("near-1"), 0);
}

#[test]
fn r29_a_near_providers_404_reaches_the_client_as_400() {
    // A 404 that does not say the model is missing stops the request
    // (R35); from NEAR's fleet the client gets 400 (R29).
    let (facts, mut reg) = three_near();
    let not_found = Some(Fault::HttpStatus {
        status: 404,
        code: None,
        message: Some("no such route".into()),
    });
    let p = reg.request(&facts, &spec(), &window("near-1", not_found));
    assert_eq!(decisions(&p), [Decision::FastReturn]);
    assert_eq!(p.status, 400);
}

#[test]
fn r48_a_streamed_request_is_placed_by_its_prefix_and_takes_no_turn() {
    let (facts, mut reg) = three_near();
    let streamed = RequestSpec {
        stream: true,
        ..spec()
    };
    let mut seen = super::request::Seen::over(&[]);
    let leads: Vec<String> = (0..3)
        .map(|_| {
            let ordered = reg
                .order(&facts, &streamed, &mut seen)
                .unwrap_or_else(|_| panic!("ordered"));
            assert_eq!(ordered.group.len(), 3);
            ordered.group[0].id.clone()
        })
        .collect();
    // One prefix, one place, whoever asked before.
    assert!(leads.iter().all(|l| *l == leads[0]), "{leads:?}");
    assert!(reg.turns.get(MODEL).is_none_or(|t| *t == (0, 0)));
    // The unstreamed request after them takes the first turn.
    let p = reg.request(&facts, &spec(), &window("", None));
    assert_eq!(p.attempts[0].provider, "near-1");
}

#[test]
fn r44_every_window_exceeded_the_bigger_is_tried_first() {
    // near-1 declares 100 000 tokens, near-2 one more; near-3 none. A body
    // of ~250 000 tokens (far from both, so no tokenize call) overflows
    // both: near-3 and Chutes (no window) first, then the bigger window,
    // however close the two are.
    let (facts, mut reg) = three_near();
    reg.windows.insert("near-1".into(), 100_000);
    reg.windows.insert("near-2".into(), 100_001);
    let long = RequestSpec {
        prompt: Some("x".repeat(1_000_000)),
        ..spec()
    };
    let ordered = reg
        .order(&facts, &long, &mut super::request::Seen::over(&[]))
        .unwrap_or_else(|_| panic!("ordered"));
    let ids: Vec<&str> = ordered.cands.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["near-3", GLM_ID, "near-2", "near-1"]);
}

#[test]
fn r21_model_demotes_at_ten_failures_and_a_success_resets() {
    let (facts, mut reg) = three_near();
    // near-2 leads every third request; each time it fails with a reset
    // (retryable) and near-3 serves in the same round.
    let mut failures = 0;
    for i in 0..40 {
        let p = reg.request(
            &facts,
            &spec(),
            &window("near-2", Some(Fault::ResetBeforeBody)),
        );
        assert_eq!(p.status, 200, "request {i}");
        if p.attempts.iter().any(|a| a.provider == "near-2") {
            failures += 1;
        }
        if failures == 10 {
            break;
        }
    }
    assert_eq!(reg.failures("near-2"), 10);
    // Demoted: behind every healthy provider, Chutes included.
    for _ in 0..4 {
        let p = reg.request(&facts, &spec(), &window("", None));
        assert_ne!(p.attempts[0].provider, "near-2");
    }
    // Everything ahead fails: near-2 is tried, succeeds and is reset.
    let fail_all = vec![
        HostEvent::Request {
            host: "near-1".into(),
            kind: RequestKind::Chat,
            fault: Some(Fault::HttpStatus {
                status: 408,
                code: None,
                message: None,
            }),
        },
        HostEvent::Request {
            host: "near-3".into(),
            kind: RequestKind::Chat,
            fault: Some(Fault::HttpStatus {
                status: 408,
                code: None,
                message: None,
            }),
        },
        HostEvent::Request {
            host: "chutes".into(),
            kind: RequestKind::Chat,
            fault: Some(Fault::HttpStatus {
                status: 408,
                code: None,
                message: None,
            }),
        },
        HostEvent::Request {
            host: "near-2".into(),
            kind: RequestKind::Chat,
            fault: None,
        },
    ];
    let p = reg.request(&facts, &spec(), &fail_all);
    assert_eq!(p.status, 200);
    assert_eq!(p.attempts.last().unwrap().provider, "near-2");
    assert_eq!(reg.failures("near-2"), 0);
}

#[test]
fn r19_r20_model_rounds_backoff_and_fast_return() {
    let (facts, mut reg) = three_near();
    // Nothing answers: every attempt is a connection failure, 4 rounds with
    // 500 ms, 1 s, 2 s between them. Chutes' is SPEC-parity R39's retryable
    // 503 (a transport failure), more informative than NEAR's connection
    // errors (R22), so the client gets 429 `service_overloaded`, not 502.
    let p = reg.request(&facts, &spec(), &[]);
    assert_eq!(p.status, 429);
    assert_eq!(p.attempts.len(), 16);
    let backoffs: Vec<u128> = p
        .attempts
        .iter()
        .filter_map(|a| a.backoff.map(|d| d.as_millis()))
        .collect();
    assert_eq!(backoffs, [500, 1000, 2000]);
    assert!(p.attempts.iter().all(|a| a.decision == Decision::Retryable));
    // A client error from the leader is returned at once.
    let bad = Some(Fault::HttpStatus {
        status: 400,
        code: None,
        message: None,
    });
    let all_400: Vec<HostEvent> = ["near-1", "near-2", "near-3"]
        .iter()
        .map(|h| HostEvent::Request {
            host: h.to_string(),
            kind: RequestKind::Chat,
            fault: bad.clone(),
        })
        .collect();
    let p = reg.request(&facts, &spec(), &all_400);
    assert_eq!(p.status, 400);
    assert_eq!(p.attempts.len(), 1);
    assert_eq!(p.attempts[0].decision, Decision::FastReturn);
}

#[test]
fn r18_model_streaming_filter_keeps_chutes_out_when_streaming_is_off() {
    let (facts, mut reg) = three_near();
    assert!(!reg.chutes_streaming);
    let mut s = spec();
    s.stream = true;
    let p = reg.request(&facts, &s, &[]);
    assert!(p.attempts.iter().all(|a| !a.provider.starts_with("chutes")));
    assert_eq!(p.status, 502);
}

// ------------------------------------------------ Chutes: §7b and priming

const KIMI: &str = "moonshotai/Kimi-K2.6-TEE";
const KIMI_ID: &str = "chutes:moonshotai/Kimi-K2.6-TEE";
const GLM_ID: &str = "chutes:zai-org/GLM-5.1-TEE";

/// The world of the evidence scenario (Kimi: one instance; GLM: two),
/// booted, both ids active, Chutes streaming on.
fn chutes_world() -> (Facts, Registry) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/chutes_evidence_fail_closed.toml");
    let scenario = crate::scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let facts = Facts {
        scenario,
        near_keys: Default::default(),
    };
    let mut reg = Registry::boot(&facts);
    for id in [KIMI, MODEL] {
        reg.catalog.insert(id.into(), (true, 0));
    }
    reg.chutes_streaming = true;
    (facts, reg)
}

fn chutes(kind: RequestKind, fault: Option<Fault>) -> HostEvent {
    HostEvent::Request {
        host: crate::world::CHUTES.into(),
        kind,
        fault,
    }
}

/// One Chutes attempt as the gateway saw it: a listing when `list`, the
/// evidence fetch, and the invocation when it was sent.
fn chutes_attempt(
    list: bool,
    evidence: Option<Fault>,
    invoke: Option<Option<Fault>>,
) -> Vec<HostEvent> {
    let mut events = Vec::new();
    if list {
        events.push(chutes(RequestKind::Models, None));
        events.push(chutes(RequestKind::Instances, None));
    }
    events.push(chutes(RequestKind::Evidence, evidence));
    if let Some(fault) = invoke {
        events.push(chutes(RequestKind::ChatStream, fault));
    }
    events
}

fn kimi(stream: bool) -> RequestSpec {
    RequestSpec {
        model: KIMI.into(),
        stream,
        ..spec()
    }
}

fn decisions(p: &super::Prediction) -> Vec<Decision> {
    p.attempts.iter().map(|a| a.decision).collect()
}

#[test]
fn r7b_every_evidence_flaw_on_the_only_instance_fails_closed_at_once() {
    for &flaw in EvidenceFlaw::ALL {
        let (facts, mut reg) = chutes_world();
        let evidence = Some(Fault::Evidence { flaw, instance: 0 });
        // Nothing is invoked: the gateway never sees a chat call.
        let p = reg.request(&facts, &kimi(false), &chutes_attempt(true, evidence, None));
        assert_eq!(p.status, 502, "{flaw:?}");
        assert_eq!(decisions(&p), [Decision::FailClosed], "{flaw:?}: no retry");
        assert_eq!(reg.failures(KIMI_ID), 0, "{flaw:?}: no health count");
        // The unproven listing is dropped: the next request lists afresh,
        // and honest evidence serves.
        let p = reg.request(
            &facts,
            &kimi(false),
            &chutes_attempt(true, None, Some(None)),
        );
        assert_eq!((p.status, decisions(&p)), (200, vec![Decision::Served]));
    }
}

#[test]
fn r7b_untrusted_vendor_or_substituted_listing_key_binds_nothing() {
    use super::chutes::{Choice, Pool};
    let mut pool = Pool::default();
    pool.list(2, 4, true);
    assert_eq!(pool.choose(None, false), Choice::AllFailed);
    // Dropped: nothing left to choose until the next listing.
    assert_eq!(pool.choose(None, true), Choice::NoneListed);
    pool.list(2, 4, false);
    assert_eq!(pool.choose(None, true), Choice::AllFailed);
}

#[test]
fn r7b_evidence_binding_the_substituted_listing_key_verifies_that_instance_alone() {
    use super::chutes::{Choice, Pool};

    let other_key = |instance| Fault::Evidence {
        flaw: EvidenceFlaw::OtherKey,
        instance,
    };
    // The listing names the gateway's key; the quote for instance 1 binds
    // that same key, so instance 1's listed key is attested.
    let mut pool = Pool::default();
    pool.list(2, 4, false);
    assert!(!pool.listed_own_keys());
    assert_eq!(pool.choose(Some(&other_key(1)), true), Choice::Instance(1));
    // Only under the trusted vendor's signature.
    assert_eq!(pool.choose(Some(&other_key(1)), false), Choice::AllFailed);
    // With the instances' own keys listed, `other_key` spoils its instance.
    let mut pool = Pool::default();
    pool.list(1, 4, true);
    assert!(pool.listed_own_keys());
    assert_eq!(pool.choose(Some(&other_key(0)), true), Choice::AllFailed);
    // Any other flaw binds nothing, whatever the listing named.
    for flaw in [EvidenceFlaw::Missing, EvidenceFlaw::BadSignature] {
        let mut pool = Pool::default();
        pool.list(1, 4, false);
        let evidence = Fault::Evidence { flaw, instance: 0 };
        assert_eq!(
            pool.choose(Some(&evidence), true),
            Choice::AllFailed,
            "{flaw:?}"
        );
    }
}

#[test]
fn r7b_a_request_sealed_to_an_attested_substituted_key_is_an_ordinary_chutes_failure() {
    // Found by `tiersim sweep scenarios/sweep_mixed_traffic.toml --seeds
    // 5000..5600 --chunking random,writes --max-faults 6` (seed 5572): a
    // `wrong_key` listing and `other_key` evidence agree on the gateway's
    // key, so attestation passes and the router seals to it; the instance
    // cannot open the request and answers 400 (no stale target): the
    // attempt falls through (R19: not counted) instead of failing closed.
    // A `wrong_key` listing, then `other_key` evidence and `invoke` at the
    // invocation.
    let substituted = |invoke| {
        let mut events = vec![
            chutes(RequestKind::Models, None),
            chutes(RequestKind::Instances, Some(Fault::WrongKey)),
        ];
        let evidence = Fault::Evidence {
            flaw: crate::fault::EvidenceFlaw::OtherKey,
            instance: 0,
        };
        events.extend(chutes_attempt(false, Some(evidence), Some(invoke)));
        events
    };
    let (facts, mut reg) = chutes_world();
    let events = substituted(None);
    let p = reg.request(&facts, &kimi(true), &events);
    assert_eq!(p.status, 502);
    assert_eq!(decisions(&p), [Decision::FallThrough]);
    assert_eq!(reg.failures(KIMI_ID), 0, "a fall-through is not counted");
    // Healed, the listing of the gateway's key stays: honest evidence binds
    // none of it, so the next request fails closed and drops it. Liveness
    // is not asked of that request; it is again of the one after.
    assert!(!reg.servable(&facts, &kimi(false)));
    let p = reg.request(&facts, &kimi(false), &chutes_attempt(false, None, None));
    assert_eq!((p.status, decisions(&p)), (502, vec![Decision::FailClosed]));
    assert!(reg.servable(&facts, &kimi(false)));
    let p = reg.request(
        &facts,
        &kimi(false),
        &chutes_attempt(true, None, Some(None)),
    );
    assert_eq!((p.status, decisions(&p)), (200, vec![Decision::Served]));
    // An answer the gateway acts out before opening decides instead.
    let (facts, mut reg) = chutes_world();
    let events = substituted(Some(Fault::HttpStatus {
        status: 503,
        code: None,
        message: None,
    }));
    let p = reg.request(&facts, &kimi(true), &events);
    assert_eq!(p.attempts[0].decision, Decision::Retryable);
}

#[test]
fn r7b_an_untrusted_vendor_leaves_chutes_unservable_for_liveness() {
    // §7b fails every request to its instances closed, healed or not.
    let (mut facts, reg) = chutes_world();
    assert!(reg.servable(&facts, &kimi(false)));
    facts.scenario.config.trust_chutes_vendor = false;
    assert!(!reg.servable(&facts, &kimi(false)));
}

#[test]
fn r25_r46_an_unnoticed_v1_frame_loss_ends_cleanly_but_may_cost_the_ttft_sample() {
    // Found sweeping parity_chutes_normalisation (seed 23): a v1 stream
    // cannot tell a dropped frame (R25), so it ends with [DONE] and counts
    // as a success, but the dropped frame may be the one whose content
    // gives R46's sample.
    let (mut facts, mut reg) = chutes_world();
    for c in &mut facts.scenario.chutes {
        c.reply.push(crate::scenario::format::ReplyWord::Usage);
    }
    let dropped = Some(Fault::DropFrame { index: 2 });
    let p = reg.request(
        &facts,
        &kimi(true),
        &chutes_attempt(true, None, Some(dropped)),
    );
    assert_eq!((p.status, p.done), (200, Some(true)));
    assert_eq!(reg.failures(KIMI_ID), 0);
    let t = &reg.ttft[KIMI_ID];
    assert_eq!((t.samples_lo, t.samples_hi), (0, 1));
    // Untouched, the sample is sure.
    let p = reg.request(
        &facts,
        &kimi(true),
        &chutes_attempt(false, None, Some(None)),
    );
    assert_eq!(p.done, Some(true));
    let t = &reg.ttft[KIMI_ID];
    assert_eq!((t.samples_lo, t.samples_hi), (1, 2));
}

#[test]
fn r46_a_sample_comes_from_a_served_stream_and_from_chutes_only_with_usage_chunks() {
    // NEAR: a served unstreamed reply gives no sample, a served stream one.
    let (facts, mut reg) = three_near();
    let p = reg.request(&facts, &spec(), &window("", None));
    assert_eq!(p.status, 200);
    assert!(reg.ttft.is_empty(), "{:?}", reg.ttft);
    let streamed = RequestSpec {
        stream: true,
        ..spec()
    };
    let p = reg.request(&facts, &streamed, &window("", None));
    assert_eq!((p.status, p.done), (200, Some(true)));
    let near = reg.ttft[&p.attempts[0].provider];
    assert_eq!((near.samples_lo, near.samples_hi), (1, 1));
    // Chutes: only a deployment whose chunks carry usage; its bound covers
    // discovery and evidence crossings, above a NEAR call's.
    let usage = crate::scenario::format::ReplyWord::Usage;
    for (with_usage, sampled) in [("zai-org/GLM-5.1-TEE", false), (KIMI, true)] {
        let (mut facts, mut reg) = chutes_world();
        for c in &mut facts.scenario.chutes {
            if c.slug == with_usage {
                c.reply.push(usage);
            }
        }
        let p = reg.request(&facts, &kimi(true), &chutes_attempt(true, None, Some(None)));
        assert_eq!((p.status, p.done), (200, Some(true)), "{with_usage}");
        assert_eq!(reg.ttft.contains_key(KIMI_ID), sampled, "{with_usage}");
        if let Some(t) = reg.ttft.get(KIMI_ID) {
            assert_eq!((t.samples_lo, t.samples_hi), (1, 1));
            assert!(t.ema_hi > near.ema_hi, "{t:?} {near:?}");
        }
    }
}

#[test]
fn r61_a_spoilt_instance_is_skipped_and_the_next_serves() {
    let (facts, mut reg) = chutes_world();
    let glm = spec();
    for flaw in [
        crate::fault::EvidenceFlaw::Missing,
        crate::fault::EvidenceFlaw::ListedFailed,
    ] {
        let evidence = Some(Fault::Evidence { flaw, instance: 0 });
        let list = !reg.pools.contains_key(GLM_ID);
        let p = reg.request(&facts, &glm, &chutes_attempt(list, evidence, Some(None)));
        assert_eq!(p.status, 200, "{flaw:?}");
        assert_eq!(decisions(&p), [Decision::Served], "{flaw:?}");
    }
    // Both instances spoilt only by null lists: fail closed.
    let evidence = Some(Fault::Evidence {
        flaw: crate::fault::EvidenceFlaw::NullLists,
        instance: 0,
    });
    let p = reg.request(&facts, &glm, &chutes_attempt(false, evidence, None));
    assert_eq!((p.status, decisions(&p)), (502, vec![Decision::FailClosed]));
}

#[test]
fn r61_counter_starts_each_request_at_the_next_instance_and_r60_nonces_run_dry() {
    use super::chutes::{Choice, Pool};
    let mut pool = Pool::default();
    pool.list(3, 4, true);
    let picks: Vec<Choice> = (0..4).map(|_| pool.choose(None, true)).collect();
    assert_eq!(
        picks,
        [
            Choice::Instance(0),
            Choice::Instance(1),
            Choice::Instance(2),
            Choice::Instance(0)
        ]
    );
    // R60: single-use nonces; a dry instance is no candidate, and a dry
    // pool chooses nothing (the router must list again).
    let mut pool = Pool::default();
    pool.list(1, 2, true);
    let picks: Vec<Choice> = (0..3).map(|_| pool.choose(None, true)).collect();
    assert_eq!(
        picks,
        [Choice::Instance(0), Choice::Instance(0), Choice::NoneListed]
    );
    // Instance 1 has no evidence: from counter 1 it is skipped for 2.
    let mut pool = Pool::default();
    pool.list(3, 4, true);
    assert_eq!(pool.choose(None, true), Choice::Instance(0));
    let missing = Fault::Evidence {
        flaw: crate::fault::EvidenceFlaw::Missing,
        instance: 1,
    };
    assert_eq!(pool.choose(Some(&missing), true), Choice::Instance(2));
}

#[test]
fn r23_a_failure_before_the_first_authenticated_item_is_a_failed_attempt() {
    // Kimi is alone: a retryable failure runs four rounds; a fatal one,
    // one attempt; the stream is never handed over.
    let retryable = [
        Fault::E2eError,
        Fault::E2eErrorAfter { frames: 0 },
        Fault::ForgedOuterDone { after_frames: 0 },
        Fault::CutStreamAfter { after_chunks: 0 },
    ];
    for fault in retryable {
        let (facts, mut reg) = chutes_world();
        let mut events = chutes_attempt(true, None, Some(Some(fault.clone())));
        for _ in 1..4 {
            events.extend(chutes_attempt(false, None, Some(Some(fault.clone()))));
        }
        let p = reg.request(&facts, &kimi(true), &events);
        assert_eq!(p.status, 502, "{fault:?}");
        assert_eq!(decisions(&p), [Decision::Retryable; 4], "{fault:?}");
        assert_eq!(p.done, None, "{fault:?}: no stream reached the client");
        assert_eq!(reg.failures(KIMI_ID), 4, "{fault:?}: each counted");
    }
    for fault in [
        Fault::StreamWrongKey,
        Fault::CorruptFrame { index: 0 },
        Fault::BadBase64Frame { index: 0 },
        Fault::FrameBeforeInit,
    ] {
        let (facts, mut reg) = chutes_world();
        let events = chutes_attempt(true, None, Some(Some(fault.clone())));
        let p = reg.request(&facts, &kimi(true), &events);
        assert_eq!(p.status, 502, "{fault:?}");
        assert_eq!(decisions(&p), [Decision::FailClosed], "{fault:?}");
        assert_eq!(reg.failures(KIMI_ID), 0, "{fault:?}: not counted");
    }
}

#[test]
fn r23_after_content_the_stream_is_the_clients_and_ends_without_done() {
    for (fault, counted) in [
        (Fault::E2eErrorAfter { frames: 2 }, 1),
        (Fault::ForgedOuterDone { after_frames: 1 }, 1),
        (Fault::CorruptFrame { index: 1 }, 0),
    ] {
        let (facts, mut reg) = chutes_world();
        let events = chutes_attempt(true, None, Some(Some(fault.clone())));
        let p = reg.request(&facts, &kimi(true), &events);
        assert_eq!(p.status, 200, "{fault:?}");
        assert_eq!(decisions(&p), [Decision::Served], "{fault:?}: no retry");
        assert_eq!(p.done, Some(false), "{fault:?}: no [DONE]");
        assert_eq!(reg.failures(KIMI_ID), counted, "{fault:?}");
    }
    // The error after all six frames: the inner [DONE] already ended it.
    let (facts, mut reg) = chutes_world();
    let events = chutes_attempt(true, None, Some(Some(Fault::E2eErrorAfter { frames: 6 })));
    let p = reg.request(&facts, &kimi(true), &events);
    assert_eq!((p.status, p.done), (200, Some(true)));
}

// ------------------------------------------------ the judge's comparisons

/// What an engine that agrees with the model in every compared field
/// shows: each model's list in the model's order, with the model's
/// windows, failure counts and demotions, the lowest TTFT the model
/// allows; the pinned, reserved and pubkey maps; the catalog.
fn faithful_view(reg: &Registry) -> RegistryView {
    let mut view = RegistryView::default();
    let mut pubkeys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, list) in reg.lists() {
        let ps = list
            .iter()
            .map(|p| {
                if let Kind::Near { key, .. } = &p.kind {
                    pubkeys.entry(key.clone()).or_default().insert(p.id.clone());
                }
                let n = reg.failures(&p.id);
                let t = reg.ttft.get(&p.id).copied().unwrap_or_default();
                ProviderView {
                    id: ProviderId::new(&p.id),
                    tier: p.tier,
                    consecutive_failures: n,
                    demoted: n >= DEMOTED_AT,
                    context_window: p.window,
                    ttft: Ttft {
                        samples: t.samples_lo,
                        ema_ms: t.ema_lo,
                    },
                    latency_demoted: false,
                }
            })
            .collect();
        view.models.insert(m, ps);
    }
    view.pinned = reg
        .pinned
        .iter()
        .map(|(m, ps)| {
            (
                m.clone(),
                ps.iter().map(|p| ProviderId::new(&p.id)).collect(),
            )
        })
        .collect();
    view.reserved = reg.reserved.clone();
    view.pubkeys = pubkeys
        .into_iter()
        .map(|(k, ids)| (k, ids.iter().map(ProviderId::new).collect()))
        .collect();
    view.catalog = reg
        .catalog
        .iter()
        .map(|(m, &(active, price))| {
            let row = tiersim_engine::registry::CatalogRow {
                active,
                price,
                context_length: reg.contexts.get(m).copied(),
            };
            (m.clone(), row)
        })
        .collect();
    view
}

/// The R17 world with every compared field away from its default: near-1
/// declares a window (and so leads), near-2 has 3 failures, near-3 is
/// demoted, near-1 has a TTFT range, the catalog declares a context length.
fn busy_registry() -> (Facts, Registry) {
    let (facts, mut reg) = three_near();
    reg.windows.insert("near-1".into(), 8000);
    reg.contexts.insert(MODEL.into(), 8000);
    reg.health.insert("near-2".into(), 3);
    reg.health.insert("near-3".into(), DEMOTED_AT);
    reg.ttft.insert(
        "near-1".into(),
        Range {
            samples_lo: 1,
            samples_hi: 2,
            ema_lo: 100.0,
            ema_hi: 200.0,
        },
    );
    (facts, reg)
}

fn provider_mut<'a>(view: &'a mut RegistryView, id: &str) -> &'a mut ProviderView {
    view.models
        .get_mut(MODEL)
        .and_then(|l| l.iter_mut().find(|p| p.id.as_str() == id))
        .unwrap_or_else(|| panic!("{id} is not in {MODEL}'s list"))
}

#[test]
fn r4_r21_r40_the_registry_diff_is_silent_on_a_view_that_agrees() {
    let (facts, reg) = busy_registry();
    let view = faithful_view(&reg);
    assert_eq!(
        view.provider_ids(MODEL),
        ["near-1", "near-2", "near-3", GLM_ID]
    );
    assert!(view.models[MODEL][2].demoted);
    assert_eq!(reg.diff(&facts, &view), Vec::<String>::new());
}

#[test]
fn r7_the_registry_diff_flags_a_list_differing_in_members_or_order() {
    let (facts, reg) = busy_registry();
    let mut view = faithful_view(&reg);
    view.models.get_mut(MODEL).unwrap().swap(0, 1);
    let model = format!("[\"near-1\", \"near-2\", \"near-3\", \"{GLM_ID}\"]");
    assert_eq!(
        reg.diff(&facts, &view),
        [format!(
            "providers of {MODEL}: model {model}, engine [\"near-2\", \"near-1\", \"near-3\", \"{GLM_ID}\"]"
        )]
    );
    // An extra provider is one list difference: the model knows nothing of
    // its health, so that is not compared.
    let mut view = faithful_view(&reg);
    let mut extra = view.models[MODEL][1].clone();
    extra.id = ProviderId::new("near-9");
    extra.consecutive_failures = 2;
    view.models.get_mut(MODEL).unwrap().push(extra);
    assert_eq!(
        reg.diff(&facts, &view),
        [format!(
            "providers of {MODEL}: model {model}, engine [\"near-1\", \"near-2\", \"near-3\", \"{GLM_ID}\", \"near-9\"]"
        )]
    );
}

#[test]
fn r40_the_registry_diff_flags_a_declared_window_that_differs() {
    let (facts, reg) = busy_registry();
    let mut view = faithful_view(&reg);
    provider_mut(&mut view, "near-1").context_window = None;
    assert_eq!(
        reg.diff(&facts, &view),
        [format!(
            "window of near-1 (in {MODEL}): model Some(8000), engine None"
        )]
    );
}

#[test]
fn r46_the_registry_diff_flags_a_ttft_outside_the_models_bounds() {
    let (facts, reg) = busy_registry();
    let judge = |samples: u32, ema_ms: f64| {
        let mut view = faithful_view(&reg);
        provider_mut(&mut view, "near-1").ttft = Ttft { samples, ema_ms };
        reg.diff(&facts, &view)
    };
    let flagged = |samples: u32, ema_ms: f64| {
        [format!(
            "TTFT of near-1 (in {MODEL}): model 1..=2 samples, average 100.0..=200.0 ms; \
             engine {samples} samples, {ema_ms:.1} ms"
        )]
    };
    // Both ends of the range hold (the bounds are inclusive).
    for (n, ema) in [(1, 100.0), (2, 200.0), (2, 150.0)] {
        assert_eq!(judge(n, ema), Vec::<String>::new(), "{n} samples, {ema} ms");
    }
    for (n, ema) in [(1, 99.0), (2, 201.0), (3, 150.0), (0, 150.0)] {
        assert_eq!(judge(n, ema), flagged(n, ema), "{n} samples, {ema} ms");
    }
}

#[test]
fn r21_the_registry_diff_flags_a_failure_count_or_demotion_that_differs() {
    let (facts, reg) = busy_registry();
    let mut view = faithful_view(&reg);
    provider_mut(&mut view, "near-2").consecutive_failures = 4;
    provider_mut(&mut view, "near-3").demoted = false;
    assert_eq!(
        reg.diff(&facts, &view),
        [
            format!("health of near-2 (in {MODEL}): model 3 failures, engine 4"),
            format!("health of near-3 (in {MODEL}): model 10 failures (demoted), engine 10"),
        ]
    );
}

#[test]
fn r4_r5_r16_r40_the_registry_diff_flags_pinned_reserved_pubkeys_and_catalog() {
    let (facts, reg) = busy_registry();
    let judge = |edit: &dyn Fn(&mut RegistryView)| {
        let mut view = faithful_view(&reg);
        edit(&mut view);
        reg.diff(&facts, &view)
    };
    assert_eq!(
        judge(&|v| v.pinned.clear()),
        [format!(
            "pinned: model {{\"{MODEL}\": [\"{GLM_ID}\"]}}, engine {{}}"
        )]
    );
    assert_eq!(
        judge(&|v| v.reserved.clear()),
        [format!("reserved: model {{\"{MODEL}\"}}, engine {{}}")]
    );
    let keys = faithful_view(&reg).pubkeys.len();
    assert_eq!(keys, 3, "one signing key per NEAR backend");
    let pubkeys = judge(&|v| {
        v.pubkeys.pop_last();
    });
    assert_eq!(pubkeys.len(), 1);
    assert!(pubkeys[0].starts_with("pubkey map: model {"), "{pubkeys:?}");
    assert_eq!(
        judge(&|v| v.catalog.get_mut(MODEL).unwrap().active = false),
        [format!(
            "catalog: model {{\"{MODEL}\": (true, 0)}}, engine {{\"{MODEL}\": (false, 0)}}"
        )]
    );
    assert_eq!(
        judge(&|v| v.catalog.get_mut(MODEL).unwrap().context_length = Some(4096)),
        [format!(
            "catalog context lengths: model {{\"{MODEL}\": 8000}}, engine {{\"{MODEL}\": 4096}}"
        )]
    );
}

fn got(stream: bool, status: u16, body: &str, attempts: &[Step]) -> RequestRecord {
    RequestRecord {
        id: "step1".into(),
        model: MODEL.into(),
        stream,
        client_e2ee: false,
        status,
        headers: Vec::new(),
        body: Bytes::from(body.to_string()),
        attempts: attempts
            .iter()
            .map(|s| Attempt {
                provider: ProviderId::new(&s.provider),
                round: s.round,
                at: Duration::ZERO,
                outcome: Outcome::Ok,
                decision: s.decision,
                retry_after: s.backoff,
            })
            .collect(),
        upstream: Vec::new(),
        tokenized: Vec::new(),
        served: None,
        via_fallback: None,
        error: None,
    }
}

fn attempt_step(provider: &str, decision: Decision) -> Step {
    Step {
        provider: provider.into(),
        round: 1,
        decision,
        backoff: None,
    }
}

#[test]
fn r20_the_request_diff_flags_attempts_and_status_that_differ() {
    let predicted = Prediction {
        attempts: vec![
            attempt_step("near-1", Decision::Retryable),
            attempt_step("near-2", Decision::Served),
        ],
        status: 200,
        done: None,
        undecided: false,
        ..Prediction::default()
    };
    let same = got(false, 200, "{}", &predicted.attempts);
    assert_eq!(predicted.diff(&same), Vec::<String>::new());
    let other = got(false, 502, "{}", &predicted.attempts[..1]);
    assert_eq!(
        predicted.diff(&other),
        [
            format!(
                "request {MODEL}: attempts differ\n    model:  near-1#1 Retryable, near-2#1 Served\n    \
                 engine: near-1#1 Retryable"
            ),
            format!("request {MODEL}: status: model 200, engine 502"),
        ]
    );
}

#[test]
fn r43_the_model_says_which_near_host_may_be_asked_for_the_count() {
    // 3 600 bytes in one message: 900 countable + 4 = 904 tokens, within
    // [0.7, 1.3] of near-1's 1 000 (windowed(): near-1 1 000, near-2 and
    // near-3 2 000).
    let near_a_window = || RequestSpec {
        prompt: Some("aaaa".into()),
        repeat: Some(900),
        ..spec()
    };
    let asks = |(facts, mut reg): (Facts, Registry), spec: RequestSpec| {
        reg.request(&facts, &spec, &window("", None)).tokenize
    };
    // The first NEAR with the smallest window.
    assert_eq!(
        asks(windowed(), near_a_window()),
        Asks::Only("near-1".into())
    );
    let (facts, mut reg) = windowed();
    reg.windows.insert("near-1".into(), 2000);
    reg.windows.insert("near-2".into(), 1000);
    assert_eq!(
        asks((facts, reg), near_a_window()),
        Asks::Only("near-2".into())
    );
    // Far from every window, or encrypted: no count.
    assert_eq!(asks(windowed(), spec()), Asks::Nobody);
    let encrypted = RequestSpec {
        client_pub_key: Some("cd".into()),
        ..near_a_window()
    };
    assert_eq!(asks(windowed(), encrypted), Asks::Nobody);
    // One window (however near the request is), or none: nothing to
    // choose between.
    let (facts, mut reg) = windowed();
    for h in ["near-2", "near-3"] {
        reg.windows.insert(h.into(), 1000);
    }
    assert_eq!(asks((facts, reg), near_a_window()), Asks::Nobody);
    assert_eq!(asks(three_near(), near_a_window()), Asks::Nobody);
    // A request refused before its estimate is not judged.
    let unknown = RequestSpec {
        model: "no/such-model".into(),
        ..near_a_window()
    };
    assert_eq!(asks(windowed(), unknown.clone()), Asks::Unjudged);
    let (facts, mut reg) = windowed();
    assert_eq!(reg.request(&facts, &unknown, &[]).status, 400);
}

#[test]
fn r43_an_exact_count_is_used_only_from_an_answer_in_time_and_whole() {
    // 3 600 bytes of one word: the heuristic says ceil(900 × 1.2) + 4 =
    // 1 084 tokens, past near-1's 1 000, so near-2 leads; the simulated
    // tokenizer counts one word, so with its count near-1 leads.
    let body = RequestSpec {
        prompt: Some("aaaa".into()),
        repeat: Some(900),
        ..spec()
    };
    let lead = |fault: Option<Fault>| {
        let (facts, mut reg) = windowed();
        let mut events = vec![HostEvent::Request {
            host: "near-1".into(),
            kind: RequestKind::Tokenize,
            fault,
        }];
        events.extend(window("", None));
        reg.request(&facts, &body, &events).attempts[0]
            .provider
            .clone()
    };
    assert_eq!(lead(None), "near-1");
    for broken in [
        http_fault(503, "busy"),
        Some(Fault::ModelNotFound),
        Some(Fault::LatencyMs { ms: 3000 }),
    ] {
        assert_eq!(lead(broken.clone()), "near-2", "{broken:?}");
    }
    // Held well under the 2 s deadline: still counted.
    assert_eq!(lead(Some(Fault::LatencyMs { ms: 100 })), "near-1");
    // No call seen (no free permit): the heuristic.
    let (facts, mut reg) = windowed();
    let p = reg.request(&facts, &body, &window("", None));
    assert_eq!(p.attempts[0].provider, "near-2");
}

#[test]
fn r43_the_request_diff_flags_a_token_count_asked_of_a_host_r43_does_not_ask() {
    let served = [attempt_step("near-1", Decision::Served)];
    let predict = |tokenize| Prediction {
        attempts: served.to_vec(),
        status: 200,
        tokenize,
        ..Prediction::default()
    };
    let asked = |hosts: &[&str]| RequestRecord {
        tokenized: hosts.iter().map(|h| h.to_string()).collect(),
        ..got(false, 200, "{}", &served)
    };
    let only = || Asks::Only("near-1".into());
    // The counter asked once, or not at all (no free permit): as R43 says.
    for hosts in [&[][..], &["near-1"]] {
        assert_eq!(predict(only()).diff(&asked(hosts)), Vec::<String>::new());
    }
    // Asked twice: a request makes at most one call.
    assert_eq!(
        predict(only()).diff(&asked(&["near-1", "near-1"])),
        [format!(
            "request {MODEL}: the router asked for a token count 2 times; R43 asks at most once"
        )]
    );
    // The long tier asked although a smaller-window NEAR exists: named
    // once however often.
    assert_eq!(
        predict(only()).diff(&asked(&["near-long"])),
        [format!(
            "request {MODEL}: the router asked near-long for a token count; R43 asks near-1"
        )]
    );
    assert_eq!(
        predict(only()).diff(&asked(&["near-1", "near-long", "near-long"]))[1..],
        [format!(
            "request {MODEL}: the router asked near-long for a token count; R43 asks near-1"
        )]
    );
    // No count is asked for this request at all (encrypted, one window…).
    assert_eq!(
        predict(Asks::Nobody).diff(&asked(&["near-1"])),
        [format!(
            "request {MODEL}: the router asked near-1 for a token count; R43 asks none"
        )]
    );
    // Not judged (a held link may bring an earlier request's call).
    assert_eq!(
        predict(Asks::Unjudged).diff(&asked(&["near-long", "near-1"])),
        Vec::<String>::new()
    );
}

#[test]
fn r23_the_request_diff_flags_a_done_the_upstream_did_not_earn_and_one_missing() {
    let served = [attempt_step("near-1", Decision::Served)];
    let predict = |done| Prediction {
        attempts: served.to_vec(),
        status: 200,
        done: Some(done),
        undecided: false,
        ..Prediction::default()
    };
    let with_done = "data: {\"choices\":[]}\n\ndata: [DONE]\n\n";
    let cut = "data: {\"choices\":[]}\n\n";
    let judge = |done, body| predict(done).diff(&got(true, 200, body, &served));
    assert_eq!(judge(true, with_done), Vec::<String>::new());
    assert_eq!(judge(false, cut), Vec::<String>::new());
    assert_eq!(
        judge(false, with_done),
        [format!(
            "request {MODEL} (stream): the upstream never ended it properly but the client got [DONE]"
        )]
    );
    assert_eq!(
        judge(true, cut),
        [format!(
            "request {MODEL} (stream): the upstream ended it properly but the client did not get [DONE]"
        )]
    );
}

// ------------------------------------------------ the per-step judge

/// The R17 world's model, booted and refreshed, judging from here.
fn judging() -> super::Model {
    judging_in(three_near())
}

/// The model of `world`, judging from its registry.
fn judging_in((facts, reg): (Facts, Registry)) -> super::Model {
    let mut model = super::Model::new(facts);
    model.reg = reg;
    model
}

fn step_of(toml: &str) -> crate::scenario::format::Step {
    toml::from_str(toml).unwrap_or_else(|e| panic!("{toml}: {e}"))
}

fn asking(spec: RequestSpec) -> crate::scenario::format::Step {
    crate::scenario::format::Step {
        request: Some(spec),
        ..Default::default()
    }
}

fn recorded(request: Option<RequestRecord>, state: Option<RegistryView>) -> StepRecord {
    StepRecord {
        request,
        state,
        ..StepRecord::new(1, Duration::ZERO, "step")
    }
}

fn named<'a>(judged: &'a [(&'static str, String)], oracle: &str) -> Vec<&'a str> {
    judged
        .iter()
        .filter(|(n, _)| *n == oracle)
        .map(|(_, m)| m.as_str())
        .collect()
}

/// near-1 serves the request at the first attempt.
fn served_by_near_1() -> [Step; 1] {
    [attempt_step("near-1", Decision::Served)]
}

#[test]
fn r9_liveness_flags_a_servable_model_not_served_at_the_first_attempt() {
    let mut s = asking(spec());
    s.note = Some(format!("{}: ask each model", crate::sweep::LIVENESS_NOTE));
    let events = window("", None);
    let judge = |got: RequestRecord| {
        let mut model = judging();
        model.judge(&s, &recorded(Some(got), None), &events, 0, false)
    };
    assert_eq!(
        judge(got(false, 200, "{}", &served_by_near_1())),
        Vec::<(&str, String)>::new()
    );
    let second = [
        attempt_step("near-1", Decision::Retryable),
        attempt_step("near-2", Decision::Served),
    ];
    let judged = judge(got(false, 200, "{}", &second));
    assert_eq!(
        named(&judged, super::LIVENESS),
        [format!(
            "after every fault healed, {MODEL} was not served by its best provider at the \
             first attempt: status 200, 2 attempt(s)"
        )]
    );
    let judged = judge(got(false, 502, "{}", &[]));
    assert_eq!(
        named(&judged, super::LIVENESS),
        [format!(
            "after every fault healed, {MODEL} was not served by its best provider at the \
             first attempt: status 502, 0 attempt(s)"
        )]
    );
    // Outside the liveness phase the same request is judged by the model
    // alone (it predicted near-1 serving at once).
    let mut model = judging();
    let plain = asking(spec());
    let judged = model.judge(
        &plain,
        &recorded(Some(got(false, 502, "{}", &[])), None),
        &events,
        0,
        false,
    );
    assert!(named(&judged, super::LIVENESS).is_empty());
    assert_eq!(
        named(&judged, super::ORACLE),
        [
            format!(
                "request {MODEL}: attempts differ\n    model:  near-1#1 Served\n    engine: (none)"
            ),
            format!("request {MODEL}: status: model 200, engine 502"),
        ]
    );
}

#[test]
fn r27_a_request_the_router_must_refuse_is_flagged_unless_a_400_with_no_attempt() {
    let s = asking(RequestSpec {
        max_tokens: Some(0),
        ..spec()
    });
    let judge = |got: RequestRecord| {
        let mut model = judging();
        model.judge(&s, &recorded(Some(got), None), &[], 0, false)
    };
    assert_eq!(
        judge(got(false, 400, "{}", &[])),
        Vec::<(&str, String)>::new()
    );
    let refused = |status, n| {
        [format!(
            "request {MODEL}: the router must refuse it before routing (max_tokens must be at \
             least 1): model 400 with no attempt, engine {status} with {n} attempt(s)"
        )]
    };
    let fast = [attempt_step("near-1", Decision::FastReturn)];
    assert_eq!(
        named(&judge(got(false, 400, "{}", &fast)), super::ORACLE),
        refused(400, 1)
    );
    assert_eq!(
        named(
            &judge(got(false, 200, "{}", &served_by_near_1())),
            super::ORACLE
        ),
        refused(200, 1)
    );
}

#[test]
fn r9_a_request_to_a_crashed_router_is_not_judged_until_it_restarts() {
    let mut model = judging();
    let unanswered = || recorded(Some(got(false, 0, "", &[])), None);
    let none = Vec::<(&str, String)>::new();
    assert_eq!(
        model.judge(
            &step_of("crash = \"router\""),
            &recorded(None, None),
            &[],
            0,
            false
        ),
        none
    );
    assert_eq!(
        model.judge(&asking(spec()), &unanswered(), &[], 0, false),
        none
    );
    // A crashed backend leaves the router up: its request is judged.
    let mut up = judging();
    up.judge(
        &step_of("crash = \"near-1\""),
        &recorded(None, None),
        &[],
        0,
        false,
    );
    assert!(!named(
        &up.judge(&asking(spec()), &unanswered(), &[], 0, false),
        super::ORACLE
    )
    .is_empty());
    // Restarted: judged again (its boot event brings the fresh registry;
    // here none arrived, so the registry is the one it had).
    model.judge(
        &step_of("restart = \"router\""),
        &recorded(None, None),
        &[],
        0,
        false,
    );
    let events = window("", None);
    let judged = model.judge(&asking(spec()), &unanswered(), &events, 0, false);
    assert_eq!(
        named(&judged, super::ORACLE),
        [
            format!(
                "request {MODEL}: attempts differ\n    model:  near-1#1 Served\n    engine: (none)"
            ),
            format!("request {MODEL}: status: model 200, engine 0"),
        ]
    );
}

#[test]
fn r14_an_unregister_is_predicted_while_the_router_is_up() {
    let mut model = judging();
    let mut after = model.reg.clone();
    after.unregister(MODEL);
    let view = faithful_view(&after);
    assert!(view.models.is_empty());
    let judged = model.judge(
        &step_of(&format!("unregister = \"{MODEL}\"")),
        &recorded(None, Some(view)),
        &[],
        0,
        false,
    );
    assert_eq!(judged, Vec::<(&str, String)>::new());
}

#[test]
fn r7_the_registry_is_compared_after_a_step_unless_a_refresh_is_being_applied() {
    let advance = step_of("advance = \"1s\"");
    let mut view = faithful_view(&judging().reg);
    view.models.get_mut(MODEL).unwrap().pop();
    let differs = format!(
        "providers of {MODEL}: model [\"near-1\", \"near-2\", \"near-3\", \"{GLM_ID}\"], \
         engine [\"near-1\", \"near-2\", \"near-3\"]"
    );
    // A refresh has listed the catalog but not yet the external rows.
    let listing = [HostEvent::Request {
        host: crate::world::CATALOG.into(),
        kind: RequestKind::Catalog,
        fault: None,
    }];
    let judge = |writing: bool, pending: bool| {
        let mut model = judging();
        let events: &[HostEvent] = if pending { &listing } else { &[] };
        let judged = model.judge(
            &advance,
            &recorded(None, Some(view.clone())),
            events,
            0,
            writing,
        );
        assert_eq!(model.reg.pending, pending);
        judged
    };
    assert_eq!(
        named(&judge(false, false), super::ORACLE),
        [differs.as_str()]
    );
    assert!(named(&judge(true, false), super::ORACLE).is_empty());
    assert!(named(&judge(false, true), super::ORACLE).is_empty());
}

#[test]
fn r5_r22_r23_the_world_side_oracles_judge_every_step_and_after_a_desync() {
    let leak = r#"{"error":{"message":"error sending request for url (http://near-1:8000/v1)"}}"#;
    let mut plaintext = faithful_view(&judging().reg);
    plaintext.models.get_mut(MODEL).unwrap().push(ProviderView {
        id: ProviderId::new("external:or"),
        tier: tiersim_engine::Tier::NonAttested,
        consecutive_failures: 0,
        demoted: false,
        context_window: None,
        ttft: Ttft::default(),
        latency_demoted: false,
    });
    let cut = vec![HostEvent::Request {
        host: "near-1".into(),
        kind: RequestKind::ChatStream,
        fault: Some(Fault::CutStreamAfter { after_chunks: 1 }),
    }];
    let stream = RequestSpec {
        stream: true,
        ..spec()
    };
    let done = "data: {\"choices\":[]}\n\ndata: [DONE]\n\n";
    let check = |model: &mut super::Model| {
        let judged = model.judge(
            &asking(spec()),
            &recorded(Some(got(false, 502, leak, &[])), Some(plaintext.clone())),
            &[],
            0,
            false,
        );
        assert_eq!(
            named(&judged, "no_internal_url_to_client"),
            ["the client saw an internal URL of near-1"]
        );
        assert_eq!(
            named(&judged, "reserved_never_plaintext"),
            [format!(
                "reserved id {MODEL} holds plaintext provider external:or"
            )]
        );
        let judged = model.judge(
            &asking(stream.clone()),
            &recorded(Some(got(true, 200, done, &served_by_near_1())), None),
            &cut,
            0,
            false,
        );
        assert_eq!(
            named(&judged, "stream_done_only_if_upstream_ended"),
            ["the client got [DONE] but the upstream that served it never ended its stream"]
        );
    };
    check(&mut judging());
    // After a concurrent step the model no longer predicts, but the world's
    // side still judges.
    let mut model = judging();
    let concurrent = crate::scenario::format::Step {
        concurrent: Some(vec![spec(), spec()]),
        ..Default::default()
    };
    model.judge(&concurrent, &recorded(None, None), &[], 0, false);
    assert!(model.abstained().is_some());
    check(&mut model);
}

#[test]
fn r39_r60_a_restarted_gateway_leaves_the_listing_stale_and_no_other_restart_does() {
    let listed = || {
        let (facts, mut reg) = chutes_world();
        let p = reg.request(&facts, &kimi(true), &chutes_attempt(true, None, Some(None)));
        assert_eq!(p.status, 200);
        assert!(!reg.pools[KIMI_ID].is_stale());
        let mut model = super::Model::new(facts);
        model.reg = reg;
        model
    };
    let restart = |model: &mut super::Model, host: &str| {
        let step = step_of(&format!("restart = \"{host}\""));
        model.judge(&step, &recorded(None, None), &[], 0, false)
    };
    let mut model = listed();
    restart(&mut model, crate::world::CATALOG);
    assert!(
        !model.reg.pools[KIMI_ID].is_stale(),
        "the catalog restarted"
    );
    let mut model = listed();
    restart(&mut model, crate::world::CHUTES);
    assert!(
        model.reg.pools[KIMI_ID].is_stale(),
        "the gateway forgot the nonces it listed: the next invocation is refused"
    );
}

/// A request record as the runner keeps one: `attempts` as (provider,
/// decision), the last one served with `status`.
fn concurrent_record(attempts: &[(&str, Decision)], status: u16) -> crate::record::RequestRecord {
    use tiersim_engine::provider::ProviderId;
    use tiersim_engine::retry::{Attempt, Outcome};
    crate::record::RequestRecord {
        id: "step1.1".into(),
        model: MODEL.into(),
        stream: false,
        client_e2ee: false,
        status,
        headers: Vec::new(),
        body: bytes::Bytes::new(),
        attempts: attempts
            .iter()
            .map(|(p, decision)| Attempt {
                provider: ProviderId::new(p),
                round: 1,
                at: std::time::Duration::ZERO,
                outcome: if *decision == Decision::Served {
                    Outcome::Ok
                } else {
                    Outcome::Error {
                        status: 503,
                        message: "down".into(),
                    }
                },
                decision: *decision,
                retry_after: None,
            })
            .collect(),
        upstream: Vec::new(),
        tokenized: Vec::new(),
        served: None,
        via_fallback: None,
        error: None,
    }
}

fn chat_served(host: &str) -> HostEvent {
    HostEvent::Request {
        host: host.into(),
        kind: RequestKind::Chat,
        fault: None,
    }
}

/// `host` answered a chat request with `status` (a fault it acted out).
fn chat_failed(host: &str, status: u16) -> HostEvent {
    HostEvent::Request {
        host: host.into(),
        kind: RequestKind::Chat,
        fault: Some(Fault::HttpStatus {
            status,
            code: None,
            message: None,
        }),
    }
}

#[test]
fn r17_requests_in_flight_together_each_take_their_own_turn() {
    use super::concurrent::{judge, Verdict};
    let (facts, reg) = three_near();
    let specs = [spec(), spec()];
    let window = [chat_served("near-1"), chat_served("near-2")];
    let served = |p| concurrent_record(&[(p, Decision::Served)], 200);

    // Both served at their first attempt, one per turn, in either order of
    // arrival: judged, and the model goes on two turns later.
    for got in [
        [served("near-1"), served("near-2")],
        [served("near-2"), served("near-1")],
    ] {
        let Verdict::Judged(diffs, after) = judge(&facts, &reg, &specs, &got, &window) else {
            panic!("a quiet concurrent step is judged");
        };
        assert!(diffs.is_empty(), "{diffs:?}");
        let mut serial = reg.clone();
        serial.request(&facts, &spec(), &[chat_served("near-1")]);
        serial.request(&facts, &spec(), &[chat_served("near-2")]);
        assert_eq!(after.turns, serial.turns);
    }

    // Two requests on one turn (a turn read but not taken): a violation,
    // whichever order, and the model stops predicting.
    let Verdict::Undecided(diffs) = judge(
        &facts,
        &reg,
        &specs,
        &[served("near-1"), served("near-1")],
        &[chat_served("near-1"), chat_served("near-1")],
    ) else {
        panic!("a doubled turn is not judged quiet");
    };
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(
        diffs[0].contains(
            "first attempts go to near-1, near-2 (in some order); engine: near-1, near-1"
        ),
        "{diffs:?}"
    );

    // Turns right, but a request the world served answered 502: judged
    // against the prediction that shares its lead.
    let Verdict::Judged(diffs, _) = judge(
        &facts,
        &reg,
        &specs,
        &[
            served("near-1"),
            concurrent_record(&[("near-2", Decision::Served)], 502),
        ],
        &window,
    ) else {
        panic!("judged");
    };
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(
        diffs[0].contains("status: model 200, engine 502"),
        "{diffs:?}"
    );

    // A failure on the way (near-2 answered 503): the interleaving decides
    // retries and counts, so no verdict and no violation.
    let failing = [
        chat_served("near-1"),
        HostEvent::Request {
            host: "near-2".into(),
            kind: RequestKind::Chat,
            fault: Some(Fault::HttpStatus {
                status: 503,
                code: None,
                message: None,
            }),
        },
    ];
    let got = [
        served("near-1"),
        concurrent_record(
            &[
                ("near-2", Decision::Retryable),
                ("near-3", Decision::Served),
            ],
            200,
        ),
    ];
    assert!(matches!(
        judge(&facts, &reg, &specs, &got, &failing),
        Verdict::Undecided(d) if d.is_empty()
    ));

    // Streamed requests are placed by their prefix (R48), not turned: left
    // to the interleaving.
    let streamed = RequestSpec {
        stream: true,
        ..spec()
    };
    assert!(matches!(
        judge(&facts, &reg, &[streamed.clone(), streamed], &[served("near-1"), served("near-2")], &window),
        Verdict::Undecided(d) if d.is_empty()
    ));
}

/// The world of `catalog_back_between_refresh_reads`: an external host
/// serving a plain model, and the rows it lists.
fn external_world() -> (Facts, Vec<tiersim_engine::catalog::ExternalRow>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/catalog_back_between_refresh_reads.toml");
    let scenario = crate::scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let rows = vec![tiersim_engine::catalog::ExternalRow {
        model: LLAMA.into(),
        base_url: "http://openrouter".into(),
        name: "openrouter".into(),
        kind: tiersim_engine::catalog::ExternalRow::OPENAI_COMPATIBLE.into(),
    }];
    (
        Facts {
            scenario,
            near_keys: Default::default(),
        },
        rows,
    )
}

const LLAMA: &str = "meta-llama/Llama-3.3-70B-Instruct";

fn catalog_read(kind: RequestKind, fault: Option<Fault>) -> HostEvent {
    HostEvent::Request {
        host: "catalog".into(),
        kind,
        fault,
    }
}

fn external_listing(rows: &[tiersim_engine::catalog::ExternalRow]) -> HostEvent {
    HostEvent::Listing {
        kind: RequestKind::External,
        models: Vec::new(),
        external: rows.to_vec(),
    }
}

#[test]
fn r10_a_refresh_applies_once_the_catalogs_answer_is_in() {
    let (facts, rows) = external_world();
    let served = |reg: &Registry| {
        reg.list(LLAMA)
            .iter()
            .map(|p| p.id.clone())
            .collect::<Vec<_>>()
    };
    let delayed = Some(Fault::LatencyMs { ms: 1119 });

    // The external read arrived, its answer is still held by a scripted
    // delay (the catalog records the listing when it answers): pending.
    let mut events = vec![
        HostEvent::RouterBoot,
        catalog_read(RequestKind::Catalog, None),
        HostEvent::Listing {
            kind: RequestKind::Catalog,
            models: Vec::new(),
            external: Vec::new(),
        },
        catalog_read(RequestKind::External, delayed.clone()),
    ];
    let mut reg = Registry::boot(&facts);
    let cursor = reg.absorb(&facts, &events, 0, events.len());
    assert!(reg.pending, "waiting for the external answer");
    assert!(served(&reg).is_empty());
    // The answer: applied.
    events.push(external_listing(&rows));
    reg.absorb(&facts, &events, cursor, events.len());
    assert!(!reg.pending);
    assert_eq!(served(&reg), ["external:openrouter"]);

    // The catalog read never reached the catalog (it was down), the
    // external read did: R10 keeps the catalog's side, the rows apply.
    let events = vec![
        HostEvent::RouterBoot,
        catalog_read(RequestKind::External, None),
        external_listing(&rows),
    ];
    let mut reg = Registry::boot(&facts);
    reg.absorb(&facts, &events, 0, events.len());
    assert!(!reg.pending);
    assert_eq!(served(&reg), ["external:openrouter"]);

    // An external read whose answer never came (the next refresh's catalog
    // read shows it ended): applied without it; the next one is pending.
    let events = vec![
        HostEvent::RouterBoot,
        catalog_read(RequestKind::Catalog, None),
        catalog_read(RequestKind::External, delayed),
        catalog_read(RequestKind::Catalog, None),
    ];
    let mut reg = Registry::boot(&facts);
    let cursor = reg.absorb(&facts, &events, 0, events.len());
    assert_eq!(cursor, 3, "the next refresh is the one in progress");
    assert!(reg.pending);
    assert!(served(&reg).is_empty());
}

#[test]
fn r10_a_request_while_the_catalogs_answer_may_be_lost_is_undecidable() {
    let record = |index| StepRecord::new(index, Duration::ZERO, "step");
    let ask = crate::scenario::format::Step {
        request: Some(RequestSpec {
            model: LLAMA.into(),
            ..spec()
        }),
        ..Default::default()
    };
    let crash = crate::scenario::format::Step {
        crash: Some(toml::Spanned::new(0..0, "catalog".to_string())),
        ..Default::default()
    };
    // A refresh waiting for the external answer, held by a scripted delay.
    let events = vec![
        HostEvent::RouterBoot,
        catalog_read(RequestKind::Catalog, None),
        catalog_read(RequestKind::External, Some(Fault::LatencyMs { ms: 1119 })),
    ];
    // Still on its way: the router has not applied it, nor has the model.
    let mut waiting = super::Model::new(external_world().0);
    waiting.judge(&ask, &record(1), &events, events.len(), false);
    assert_eq!(waiting.abstained(), None);
    // The catalog crashes meanwhile: the read may have failed and the
    // refresh been applied without it, when the model cannot tell.
    let mut lost = super::Model::new(external_world().0);
    lost.judge(&crash, &record(1), &events, events.len(), false);
    assert_eq!(lost.abstained(), None, "no request yet");
    lost.judge(&ask, &record(2), &events, events.len(), false);
    assert_eq!(
        lost.abstained(),
        Some(super::Abstention {
            step: 2,
            why: super::Abstain::Timing
        })
    );
}

#[test]
fn r17_a_concurrent_step_is_judged_only_where_its_interleaving_cannot_change_it() {
    use super::concurrent::{judge, Verdict};
    let (facts, reg) = three_near();
    let window = [chat_served("near-1"), chat_served("near-2")];
    let served = |p| concurrent_record(&[(p, Decision::Served)], 200);
    let got = [served("near-1"), served("near-2")];
    let judged = |facts: &Facts, reg: &Registry, specs: &[RequestSpec], window: &[HostEvent]| {
        matches!(
            judge(facts, reg, specs, &got, window),
            Verdict::Judged(ref d, _) if d.is_empty()
        )
    };
    let specs = [spec(), spec()];
    assert!(
        judged(&facts, &reg, &specs, &window),
        "the baseline is judged"
    );

    // Requests that do not route alike: each field that routes.
    let unlike = [
        RequestSpec {
            model: "openai/gpt-oss-120b".into(),
            ..spec()
        },
        RequestSpec {
            max_tokens: Some(5),
            ..spec()
        },
        RequestSpec {
            extra: Some(serde_json::Map::from_iter([(
                "temperature".to_string(),
                serde_json::json!(0.5),
            )])),
            ..spec()
        },
        RequestSpec {
            pub_key_of: Some(toml::Spanned::new(0..0, "near-1".into())),
            ..spec()
        },
        RequestSpec {
            model_pub_key: Some("ab".into()),
            ..spec()
        },
        RequestSpec {
            client_pub_key: Some("cd".into()),
            ..spec()
        },
    ];
    for other in unlike {
        assert!(
            !judged(&facts, &reg, &[spec(), other.clone()], &window),
            "{other:?}"
        );
    }
    // A different message text routes alike (no window makes it matter).
    let worded = RequestSpec {
        prompt: Some("second".into()),
        ..spec()
    };
    assert!(judged(&facts, &reg, &[spec(), worded], &window));

    // A record missing: nothing to compare.
    assert!(matches!(
        judge(&facts, &reg, &specs, &got[..1], &window),
        Verdict::Undecided(d) if d.is_empty()
    ));

    // A refresh or a boot during the step may change the group.
    for e in [
        HostEvent::RouterBoot,
        HostEvent::Listing {
            kind: RequestKind::Catalog,
            models: Vec::new(),
            external: Vec::new(),
        },
    ] {
        let mut w = window.to_vec();
        w.push(e);
        assert!(!judged(&facts, &reg, &specs, &w));
    }

    // A cap under the step's size: whoever arrives second may get a 429.
    let mut capped = three_near().0;
    capped.scenario.config.model_concurrency = Some(1);
    assert!(!judged(&capped, &reg, &specs, &window));
    capped.scenario.config.model_concurrency = Some(2);
    assert!(judged(&capped, &reg, &specs, &window));

    // A NEAR provider the step's failures could demote before a first
    // attempt (2 requests: the other one's 4 rounds, 4 failures at most) is
    // judged only because the step turned out quiet; one already demoted
    // never (a success would promote it mid-step).
    for (failures, ok) in [(5, true), (6, true), (DEMOTED_AT, false)] {
        let mut near_limit = reg.clone();
        near_limit.health.insert("near-3".into(), failures);
        assert_eq!(
            judged(&facts, &near_limit, &specs, &window),
            ok,
            "{failures} failures"
        );
    }
    // Not quiet, and both first attempts on near-1, a turn read twice.
    // near-3 answered one request normally and failed another, so which
    // request met which answer is the interleaving's. From 5 failures the
    // other request's 4 cannot demote near-3, so the turns are judged: a
    // violation. From 6 they could, so no verdict.
    let failing = [
        chat_served("near-1"),
        chat_failed("near-2", 503),
        chat_served("near-3"),
        chat_failed("near-3", 503),
    ];
    let doubled = [served("near-1"), served("near-1")];
    // The turn violations `judge` reports, from `reg` with `counts` set,
    // for a step it leaves to the interleaving (`None`: judged).
    let violations = |counts: &[(&str, u32)], got: &[RequestRecord], window: &[HostEvent]| {
        let mut at = reg.clone();
        for (id, n) in counts {
            at.health.insert((*id).into(), *n);
        }
        match judge(&facts, &at, &specs, got, window) {
            Verdict::Undecided(d) => Some(d.len()),
            Verdict::Judged(..) => None,
        }
    };
    for (failures, want) in [(5, 1), (6, 0)] {
        let got = violations(&[("near-3", failures)], &doubled, &failing);
        assert_eq!(got, Some(want), "{failures} failures, not quiet");
    }
    // Every host answered alike (near-2 failed the one request it saw):
    // at most one failure, so from 6 the turns are still judged, and up to
    // 8 (8 + 1 < 10); from 9 that one failure could demote near-2.
    let alike = [
        chat_served("near-1"),
        chat_failed("near-2", 503),
        chat_served("near-3"),
    ];
    for (failures, want) in [(6, 1), (8, 1), (9, 0)] {
        let got = violations(&[("near-2", failures)], &doubled, &alike);
        assert_eq!(
            got,
            Some(want),
            "{failures} failures, hosts answering alike"
        );
    }
    // A host that answered nothing (down, cut off, or never tried) may
    // fail every attempt of every request, once per round: with near-2
    // within reach of the threshold (6 + 4) and a record that is not a
    // plain success, near-3, silent, bounds the step at 2 × 4 failures.
    let silent = [chat_served("near-1"), chat_served("near-2")];
    let not_plain = [
        served("near-1"),
        concurrent_record(&[("near-1", Decision::Served)], 502),
    ];
    for (failures, want) in [(1, 1), (2, 0)] {
        let got = violations(&[("near-2", 6), ("near-3", failures)], &not_plain, &silent);
        assert_eq!(got, Some(want), "{failures} failures on a silent host");
    }
    // Three requests: the other two's 8 failures at most; quiet, judged
    // whatever the counts under the threshold.
    let three = [spec(), spec(), spec()];
    let window3 = [
        chat_served("near-1"),
        chat_served("near-2"),
        chat_served("near-3"),
    ];
    let got3 = [served("near-1"), served("near-2"), served("near-3")];
    for (failures, ok) in [
        (1, true),
        (2, true),
        (DEMOTED_AT - 1, true),
        (DEMOTED_AT, false),
    ] {
        let mut near_limit = reg.clone();
        near_limit.health.insert("near-1".into(), failures);
        assert_eq!(
            matches!(
                judge(&facts, &near_limit, &three, &got3, &window3),
                Verdict::Judged(ref d, _) if d.is_empty()
            ),
            ok,
            "{failures} failures, three requests"
        );
    }
}

/// The world of `round_robin_within_leading_group`: Llama on three external
/// providers, after a complete refresh.
fn three_external() -> (Facts, Registry) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/round_robin_within_leading_group.toml");
    let scenario = crate::scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let facts = Facts {
        scenario,
        near_keys: Default::default(),
    };
    let rows: Vec<_> = ["ext-a", "ext-b", "ext-c"]
        .iter()
        .map(|h| tiersim_engine::catalog::ExternalRow {
            model: LLAMA.into(),
            base_url: format!("http://{h}"),
            name: h.to_string(),
            kind: tiersim_engine::catalog::ExternalRow::OPENAI_COMPATIBLE.into(),
        })
        .collect();
    let mut reg = Registry::boot(&facts);
    let events = [
        HostEvent::RouterBoot,
        catalog_read(RequestKind::Catalog, None),
        HostEvent::Listing {
            kind: RequestKind::Catalog,
            models: vec![CatalogRow {
                id: LLAMA.into(),
                active: true,
                ..Default::default()
            }],
            external: Vec::new(),
        },
        catalog_read(RequestKind::External, None),
        external_listing(&rows),
    ];
    let end = reg.absorb(&facts, &events, 0, events.len());
    assert_eq!(end, events.len());
    (facts, reg)
}

#[test]
fn r17_concurrent_requests_on_external_providers_each_take_their_own_turn() {
    use super::concurrent::{judge, Verdict};
    let (facts, reg) = three_external();
    let ids: Vec<String> = reg.list(LLAMA).iter().map(|p| p.id.clone()).collect();
    assert_eq!(ids, ["external:ext-a", "external:ext-b", "external:ext-c"]);
    let llama = RequestSpec {
        model: LLAMA.into(),
        ..spec()
    };
    let specs = [llama.clone(), llama.clone(), llama];
    let window = [
        chat_served("ext-a"),
        chat_served("ext-b"),
        chat_served("ext-c"),
    ];
    let served = |p: &str| crate::record::RequestRecord {
        model: LLAMA.into(),
        ..concurrent_record(&[(p, Decision::Served)], 200)
    };

    // A plaintext provider keeps no per-request state: the group cannot
    // change, each request takes its own turn and a quiet step is judged.
    let got = [
        served("external:ext-c"),
        served("external:ext-a"),
        served("external:ext-b"),
    ];
    let Verdict::Judged(diffs, after) = judge(&facts, &reg, &specs, &got, &window) else {
        panic!("a quiet step on external providers is judged");
    };
    assert!(diffs.is_empty(), "{diffs:?}");
    assert_ne!(after.turns, reg.turns, "three turns taken");

    // Two on one turn: a violation.
    let doubled = [
        served("external:ext-a"),
        served("external:ext-a"),
        served("external:ext-b"),
    ];
    let Verdict::Undecided(diffs) = judge(&facts, &reg, &specs, &doubled, &window) else {
        panic!("a doubled turn is not judged quiet");
    };
    assert_eq!(diffs.len(), 1, "{diffs:?}");
}

/// `model` judges a `concurrent` step of `specs` (step 1) whose records are
/// `got`, `events` its host events: the reference model's differences.
fn judge_concurrent(
    model: &mut super::Model,
    specs: Vec<RequestSpec>,
    got: Vec<RequestRecord>,
    events: &[HostEvent],
) -> Vec<String> {
    let step = crate::scenario::format::Step {
        concurrent: Some(specs),
        ..Default::default()
    };
    let rec = StepRecord {
        concurrent: got,
        ..recorded(None, None)
    };
    let judged = model.judge(&step, &rec, events, 0, false);
    named(&judged, super::ORACLE)
        .into_iter()
        .map(String::from)
        .collect()
}

const STOPPED_AT_CONCURRENT: Option<super::Abstention> = Some(super::Abstention {
    step: 1,
    why: super::Abstain::Concurrent,
});

#[test]
fn r17_r21_four_requests_in_flight_are_judged_when_their_failures_cannot_demote_mid_step() {
    // Four requests on three turns (the group wraps). Before the last one's
    // first attempt the other three could each have failed on a NEAR
    // provider in every one of their 4 rounds: 12 failures reach R21's
    // threshold of 10 from a clean count, and a demotion mid-step would
    // change the group the later arrivals turn. So the turns hold only
    // when the step's own answers rule that out: nothing failed, or every
    // host answered alike and too few failures to demote anyone.
    const { assert!(3 * super::request::ROUNDS >= DEMOTED_AT) };
    const { assert!(2 * super::request::ROUNDS < DEMOTED_AT) };
    let hosts = ["near-1", "near-2", "near-3", "near-1"];
    let events: Vec<HostEvent> = hosts.iter().map(|h| chat_served(h)).collect();
    let got = |hosts: [&str; 4]| {
        hosts
            .iter()
            .map(|h| concurrent_record(&[(h, Decision::Served)], 200))
            .collect::<Vec<_>>()
    };
    // Served in turn order one at a time, as the serial model predicts.
    let (facts, mut serial) = three_near();
    for h in hosts {
        let p = serial.request(&facts, &spec(), &[chat_served(h)]);
        assert_eq!((p.status, p.attempts[0].provider.as_str()), (200, h));
    }
    let mut model = judging();
    assert!(model
        .reg
        .list(MODEL)
        .iter()
        .all(|p| model.reg.failures(&p.id) == 0));

    // Quiet, in any order of arrival: judged, and the model goes on from
    // the serial state.
    let diffs = judge_concurrent(
        &mut model,
        vec![spec(); 4],
        got(["near-3", "near-1", "near-1", "near-2"]),
        &events,
    );
    assert!(diffs.is_empty(), "{diffs:?}");
    assert_eq!(model.abstained(), None);
    assert_eq!(model.reg.turns, serial.turns);

    // Quiet, but a turn read twice (near-2 twice, near-3 never): a
    // violation.
    let (_, diffs) = judged_step(
        three_near(),
        vec![spec(); 4],
        got(["near-1", "near-2", "near-2", "near-1"]),
        &events,
    );
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(
        diffs[0].contains("near-1, near-1, near-2, near-3 (in some order)"),
        "{diffs:?}"
    );

    // near-2 answered one request normally and failed another: which
    // request met the failure is the interleaving's, and the failures
    // could have demoted a provider mid-step, so whatever the engine's
    // first attempts, no verdict and no violation; the model stops.
    let mixed = vec![
        chat_served("near-1"),
        chat_failed("near-2", 503),
        chat_served("near-2"),
        chat_served("near-3"),
        chat_served("near-1"),
    ];
    let (model, diffs) = judged_step(
        three_near(),
        vec![spec(); 4],
        got(["near-1", "near-1", "near-1", "near-1"]),
        &mixed,
    );
    assert!(diffs.is_empty(), "{diffs:?}");
    assert_eq!(model.abstained(), STOPPED_AT_CONCURRENT);

    // near-2 failed the one request it saw, every other host served all
    // of its: whichever request led on near-2 failed there and was served
    // by near-3 at its next attempt (R17's order within the round). One
    // failure cannot demote anyone, so the step is the serial one: judged,
    // and the model goes on with near-2's count at 1.
    let alike = vec![
        chat_served("near-1"),
        chat_failed("near-2", 503),
        chat_served("near-3"),
        chat_served("near-3"),
        chat_served("near-1"),
    ];
    let retried = || {
        concurrent_record(
            &[
                ("near-2", Decision::Retryable),
                ("near-3", Decision::Served),
            ],
            200,
        )
    };
    let mut records = got(["near-3", "near-1", "near-1", "near-1"]);
    records[2] = retried();
    let (model, diffs) = judged_step(three_near(), vec![spec(); 4], records.clone(), &alike);
    assert!(diffs.is_empty(), "{diffs:?}");
    assert_eq!(model.abstained(), None);
    assert_eq!(model.reg.failures("near-2"), 1);
    // An answer the predictions do not account for (near-1 answered a
    // third request), the Chutes gateway answering at all (its pool is
    // per-request state), or a fault on any other request (an attestation
    // fetch): left to the interleaving.
    let attestation_failed = HostEvent::Request {
        host: "near-3".into(),
        kind: RequestKind::Attestation,
        fault: Some(Fault::HttpStatus {
            status: 503,
            code: None,
            message: None,
        }),
    };
    for stray in [
        chat_served("near-1"),
        chutes(RequestKind::Evidence, None),
        attestation_failed,
    ] {
        let mut window = alike.clone();
        window.push(stray);
        let (model, diffs) = judged_step(three_near(), vec![spec(); 4], records.clone(), &window);
        assert!(diffs.is_empty(), "{diffs:?}");
        assert_eq!(model.abstained(), STOPPED_AT_CONCURRENT, "{window:?}");
    }
    // The near-2-led request reported served by near-2 at once: a
    // violation naming its attempts.
    records[2] = got(["near-2"; 4]).remove(0);
    let (_, diffs) = judged_step(three_near(), vec![spec(); 4], records, &alike);
    assert_eq!(diffs.len(), 1, "{diffs:?}");

    // Three requests (the other two's 8 failures at most) have their turns
    // judged even when the step is not quiet.
    let (model, diffs) = judged_step(
        three_near(),
        vec![spec(); 3],
        got(["near-1", "near-1", "near-1", "near-1"])[..3].to_vec(),
        &mixed[..4],
    );
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!(model.abstained(), STOPPED_AT_CONCURRENT);
}

#[test]
fn r17_a_concurrent_step_of_one_request_is_not_judged_as_requests_in_flight_together() {
    // Only requests in flight together take turns "whichever arrived
    // first"; a step of one is left to the interleaving like any other the
    // concurrent judge does not cover.
    let mut model = judging();
    let diffs = judge_concurrent(
        &mut model,
        vec![spec()],
        vec![concurrent_record(&[("near-1", Decision::Served)], 200)],
        &[chat_served("near-1")],
    );
    assert!(diffs.is_empty(), "{diffs:?}");
    assert_eq!(model.abstained(), STOPPED_AT_CONCURRENT);
}

/// Two Chutes requests in flight together, as the gateway saw them: their
/// events interleave. The first to arrive discovers (the other waits for
/// its listing), then both fetch evidence, then both invoke; `evidence`
/// is what the first evidence fetch acted out.
fn two_chutes_requests_interleaved(evidence: Option<Fault>) -> Vec<HostEvent> {
    vec![
        chutes(RequestKind::Models, None),
        chutes(RequestKind::Instances, None),
        chutes(RequestKind::Evidence, evidence),
        chutes(RequestKind::Evidence, None),
        chutes(RequestKind::Chat, None),
        chutes(RequestKind::Chat, None),
    ]
}

/// A concurrent request's record for `model` (the helper's is for MODEL).
fn record_of(model: &str, attempts: &[(&str, Decision)], status: u16) -> RequestRecord {
    RequestRecord {
        model: model.into(),
        ..concurrent_record(attempts, status)
    }
}

/// One concurrent step judged in a fresh model of `world`: the model after
/// it (where it stopped, its pools) and the differences it found.
fn judged_step(
    world: (Facts, Registry),
    specs: Vec<RequestSpec>,
    got: Vec<RequestRecord>,
    events: &[HostEvent],
) -> (super::Model, Vec<String>) {
    let mut model = judging_in(world);
    let diffs = judge_concurrent(&mut model, specs, got, events);
    (model, diffs)
}

#[test]
fn r28_concurrent_requests_for_a_model_no_provider_serves_are_judged() {
    // No provider serves the id: the router answers each request alone
    // with R28's 400 and tries nothing, whatever the order.
    const UNKNOWN: &str = "no-such/model";
    let unknown = || RequestSpec {
        model: UNKNOWN.into(),
        ..spec()
    };
    let answered = |status| record_of(UNKNOWN, &[], status);
    let (model, diffs) = judged_step(
        three_near(),
        vec![unknown(), unknown()],
        vec![answered(400), answered(400)],
        &[],
    );
    assert!(diffs.is_empty(), "{diffs:?}");
    assert_eq!(model.abstained(), None, "the step is judged");
    let (_, diffs) = judged_step(
        three_near(),
        vec![unknown(), unknown()],
        vec![answered(400), answered(404)],
        &[],
    );
    assert!(!diffs.is_empty(), "a 404 is not R28's answer");
}

#[test]
fn r17_r44_concurrent_requests_with_one_body_are_judged_under_declared_windows() {
    // windowed(): near-1 declares 1 000, near-2 and near-3 2 000, so a
    // short request's leading group is near-1 alone (R44). Two copies of
    // one short body: one estimate orders both, neither may ask for a
    // count (R43), so both lead on near-1 whatever their order.
    let on = |host| concurrent_record(&[(host, Decision::Served)], 200);
    let both_on_near_1 = chats([("near-1", None), ("near-1", None)]);
    let (model, diffs) = judged_step(
        windowed(),
        vec![spec(), spec()],
        vec![on("near-1"), on("near-1")],
        &both_on_near_1,
    );
    assert!(diffs.is_empty(), "{diffs:?}");
    assert_eq!(model.abstained(), None, "the step is judged");
    // A request that went elsewhere is a violation.
    let (_, diffs) = judged_step(
        windowed(),
        vec![spec(), spec()],
        vec![on("near-1"), on("near-2")],
        &chats([("near-1", None), ("near-2", None)]),
    );
    assert!(!diffs.is_empty(), "near-2 does not lead a short request");

    // Bodies of different sizes have estimates of their own, and a body
    // near a window may be counted (R43's call and its permits are the
    // interleaving's): the model stops.
    let longer = RequestSpec {
        prompt: Some("aaaa".into()),
        repeat: Some(10),
        ..spec()
    };
    let near_a_window = RequestSpec {
        prompt: Some("aaaa".into()),
        repeat: Some(900),
        ..spec()
    };
    let (model, _) = judged_step(
        windowed(),
        vec![spec(), longer],
        vec![on("near-1"), on("near-1")],
        &both_on_near_1,
    );
    assert_eq!(model.abstained(), STOPPED_AT_CONCURRENT);
    // 904 tokens near near-1's 1 000: uncounted, the heuristic's 1 084
    // overflows near-1, so each would take a turn of near-2 and near-3;
    // but either may have been counted first and led on near-1.
    let (model, _) = judged_step(
        windowed(),
        vec![near_a_window.clone(), near_a_window],
        vec![on("near-2"), on("near-3")],
        &chats([("near-2", None), ("near-3", None)]),
    );
    assert_eq!(model.abstained(), STOPPED_AT_CONCURRENT);
}

#[test]
fn r17_r60_r61_a_chutes_led_concurrent_step_served_from_one_listing_is_judged() {
    // Kimi's only provider is Chutes. Whichever request arrived first
    // listed, and each took the next value of R61's counter: which
    // instance each used is the interleaving's, but every instance verifies
    // and has a nonce for both, so both are served and the pool after the
    // step is the same in either order.
    let events = two_chutes_requests_interleaved(None);
    let kimi_record = |decision, status| record_of(KIMI, &[(KIMI_ID, decision)], status);
    let served = || kimi_record(Decision::Served, 200);
    let (model, diffs) = judged_step(
        chutes_world(),
        vec![kimi(false), kimi(false)],
        vec![served(), served()],
        &events,
    );
    assert!(diffs.is_empty(), "{diffs:?}");
    assert_eq!(model.abstained(), None, "the step is judged");
    // One listing served both: two of its one instance's nonces are spent.
    let pool = &model.reg.pools[KIMI_ID];
    assert!(pool.serves_each_of(DEFAULT_NONCES - 2));
    assert!(!pool.serves_each_of(DEFAULT_NONCES - 1));

    // So a request the engine failed is a violation, not a stop.
    let (model, diffs) = judged_step(
        chutes_world(),
        vec![kimi(false), kimi(false)],
        vec![served(), kimi_record(Decision::FailClosed, 502)],
        &events,
    );
    assert!(!diffs.is_empty(), "a failed request is judged");
    assert_eq!(model.abstained(), None);
}

#[test]
fn r17_r60_a_chutes_led_concurrent_step_that_meets_a_chutes_fault_is_left_to_the_interleaving() {
    // GLM is served by Chutes alone, from two instances. Instance 0 is
    // missing from one evidence fetch: that request skips to instance 1
    // and both are served, but which request met the flaw decides which
    // instance each used and so which nonces are left. The model stops.
    let flaw = Fault::Evidence {
        flaw: EvidenceFlaw::Missing,
        instance: 0,
    };
    let events = two_chutes_requests_interleaved(Some(flaw));
    let served = || concurrent_record(&[(GLM_ID, Decision::Served)], 200);
    let (facts, mut serial) = chutes_world();
    let mut seen = super::request::Seen::by_kind(&events);
    for _ in 0..2 {
        let p = serial.request_seen(&facts, &spec(), &mut seen);
        assert_eq!((p.status, decisions(&p)), (200, vec![Decision::Served]));
        assert_eq!(p.attempts[0].provider, GLM_ID);
    }
    let (model, diffs) = judged_step(
        chutes_world(),
        vec![spec(), spec()],
        vec![served(), served()],
        &events,
    );
    assert!(diffs.is_empty(), "{diffs:?}");
    assert_eq!(model.abstained(), STOPPED_AT_CONCURRENT);
}

#[test]
fn r17_r19_a_concurrent_request_held_near_the_upstream_deadline_stops_the_model() {
    // The turns agree, but near-1's answer is held 29.999 s, within a
    // network crossing of the 30 s deadline: whether it timed out (and was
    // retried) is the timing's. Not quiet, so the step is not judged.
    let held = HostEvent::Request {
        host: "near-1".into(),
        kind: RequestKind::Chat,
        fault: Some(Fault::LatencyMs { ms: 29_999 }),
    };
    let events = [held, chat_served("near-2")];
    let (facts, mut serial) = three_near();
    assert!(serial.request(&facts, &spec(), &events[..1]).undecided);
    let mut model = judging();
    let diffs = judge_concurrent(
        &mut model,
        vec![spec(), spec()],
        vec![
            concurrent_record(&[("near-1", Decision::Served)], 200),
            concurrent_record(&[("near-2", Decision::Served)], 200),
        ],
        &events,
    );
    assert!(diffs.is_empty(), "{diffs:?}");
    assert_eq!(model.abstained(), STOPPED_AT_CONCURRENT);
}
