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
    // 500 ms, 1 s, 2 s between them, and the client gets 502.
    let p = reg.request(&facts, &spec(), &[]);
    assert_eq!(p.status, 502);
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
