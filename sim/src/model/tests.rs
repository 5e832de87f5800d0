//! The model on its own: fed hand-written world events, it predicts what
//! SPEC says, whatever any engine does.

use std::path::Path;

use tiersim_engine::catalog::CatalogRow;
use tiersim_engine::retry::Decision;

use super::{Facts, Registry};
use crate::fault::{Fault, HostEvent, RequestKind};
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
    use crate::fault::EvidenceFlaw;
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
    use crate::fault::EvidenceFlaw;
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
