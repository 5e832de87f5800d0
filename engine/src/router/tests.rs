//! Routing end to end on fake providers: R3, R6/R9/R13 at the API edge, the
//! R18 masking findings, and retry/fallback R19–R22 on paused tokio time.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::*;
use crate::provider::{Provider, ProviderError, Refusal};
use crate::registry::{CatalogRow, Discovered, External, SourceRead};
use crate::retry::{classify, Backoff, Class, Decision, Outcome};
use crate::testing::{request, rows, FakeProvider};

const M: &str = "zai-org/GLM-5.1-FP8";
const SLUG: &str = "zai-org/GLM-5.1-TEE";

fn active(reg: &Registry, model: &str) {
    reg.set_catalog_rows([(
        model,
        CatalogRow {
            active: true,
            price: 1,
            ..Default::default()
        },
    )]);
}

/// M served by `near` then the pinned `chutes`, catalog row active.
fn world(near: &[&Arc<FakeProvider>], chutes: &[&Arc<FakeProvider>]) -> Router {
    let reg = Registry::new();
    reg.reserve([M]);
    for c in chutes {
        reg.register_secondary(M, Arc::clone(c) as Arc<dyn Provider>);
    }
    reg.refresh(
        SourceRead::Ok(Discovered(rows(&[(M, near)]))),
        SourceRead::Ok(External::default()),
    );
    active(&reg, M);
    Router::new(Arc::new(reg))
}

fn s503() -> ProviderError {
    ProviderError::status(503, "service unavailable")
}

fn tried(r: &Routed) -> Vec<(&str, u32, u64)> {
    r.attempts
        .iter()
        .map(|a| (a.provider.as_str(), a.round, a.at.as_millis() as u64))
        .collect()
}

fn err(r: &Routed) -> &RouteError {
    r.result.as_ref().unwrap_err()
}

fn body(r: &Routed) -> serde_json::Value {
    match r.result.as_ref().unwrap() {
        Served::Json { response, .. } => serde_json::from_slice(&response.body).unwrap(),
        other => panic!("expected JSON, got {other:?}"),
    }
}

fn failures(router: &Router, provider: &str) -> Option<u32> {
    router.registry().view().failures(provider)
}

// ---- R3 ----

#[tokio::test(start_paused = true)]
async fn r3_responses_carry_the_canonical_id_never_the_slug() {
    let c = FakeProvider::chutes("chutes:slug")
        .with_streaming(true)
        .with_upstream_model(SLUG)
        .arc();
    let router = world(&[], &[&c]);
    let r = router.chat(request(M), false).await;
    assert_eq!(body(&r)["model"], M);
    assert!(!format!("{}", body(&r)).contains(SLUG));

    let r = router.chat(request(M), true).await;
    let Ok(Served::Stream { stream, .. }) = r.result else {
        panic!("expected a stream");
    };
    let items: Vec<_> = stream.collect().await;
    assert_eq!(items.len(), 2);
    let Ok(StreamItem::Chunk(chunk)) = &items[0] else {
        panic!("{items:?}")
    };
    let chunk: serde_json::Value = serde_json::from_slice(chunk).unwrap();
    assert_eq!(chunk["model"], M);
    assert_eq!(items[1], Ok(StreamItem::Done));
}

#[tokio::test(start_paused = true)]
async fn r3_bodies_already_canonical_pass_through_byte_for_byte() {
    let n1 = FakeProvider::near("n1").arc();
    let router = world(&[&n1], &[]);
    let r = router.chat(request(M), false).await;
    let Ok(Served::Json { response, .. }) = &r.result else {
        panic!()
    };
    let expected = serde_json::json!({"id": "n1-1", "model": M, "provider": "n1"}).to_string();
    assert_eq!(response.body, expected.as_bytes());
}

// ---- R6 / R9 / R13 at the API edge ----

#[tokio::test(start_paused = true)]
async fn r28_unknown_and_inactive_ids_are_400_model_without_touching_a_provider() {
    let c = FakeProvider::chutes("c1").arc();
    let reg = Registry::new();
    reg.reserve([M]);
    reg.register_secondary(M, c.clone());
    assert!(reg.seed_catalog_row_if_absent(M));
    let router = Router::new(Arc::new(reg));

    let r = router.chat(request(M), false).await;
    assert!(matches!(err(&r), RouteError::Inactive { .. }), "{r:?}");
    let inactive = crate::client_error::reply(err(&r));
    assert_eq!((inactive.status, inactive.param), (400, Some("model")));
    assert!(err(&r).to_string().contains(M));
    let r = router.chat(request("no/such-model"), false).await;
    assert!(matches!(err(&r), RouteError::UnknownModel { .. }));
    let unknown = crate::client_error::reply(err(&r));
    assert_eq!(unknown.status, 400);
    // An inactive id reads exactly like an unknown one to the client.
    assert_eq!(
        unknown.message.replace("no/such-model", M),
        inactive.message
    );
    assert_eq!(c.calls(), 0);
    assert!(r.attempts.is_empty());

    router.registry().set_active(M, true);
    let r = router.chat(request(M), false).await;
    assert_eq!(r.result.unwrap().provider().as_str(), "c1");
}

#[tokio::test(start_paused = true)]
async fn r28_reserved_only_id_dropped_by_near_is_400_not_in_any_provider() {
    let n1 = FakeProvider::near("n1").arc();
    let router = world(&[&n1], &[]);
    assert!(router.chat(request(M), false).await.result.is_ok());
    router.registry().refresh(
        SourceRead::Ok(Discovered::default()),
        SourceRead::Ok(External::default()),
    );
    let r = router.chat(request(M), false).await;
    assert!(matches!(err(&r), RouteError::NoProviders { .. }), "{r:?}");
    let reply = crate::client_error::reply(err(&r));
    assert_eq!((reply.status, reply.param), (400, Some("model")));
    assert!(
        reply
            .message
            .ends_with("not found in any configured provider"),
        "{}",
        reply.message
    );
    assert_eq!(n1.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn r13_deactivated_pinned_id_is_400_and_serves_again_when_reactivated() {
    let n1 = FakeProvider::near("n1").arc();
    let c1 = FakeProvider::chutes("c1").arc();
    let router = world(&[&n1], &[&c1]);
    router.registry().set_active(M, false);
    let r = router.chat(request(M), false).await;
    assert_eq!(err(&r).status(), 400);
    assert_eq!(router.registry().view().provider_ids(M), ["n1", "c1"]);
    router.registry().set_active(M, true);
    assert!(router.chat(request(M), false).await.result.is_ok());
}

// ---- R16 at the API edge ----

#[tokio::test(start_paused = true)]
async fn r16_unmatched_pubkey_is_an_error_and_never_reaches_chutes() {
    let n1 = FakeProvider::near("n1").with_keys(["k1"]).arc();
    let c1 = FakeProvider::chutes("c1").arc();
    let router = world(&[&n1], &[&c1]);
    let mut req = request(M);
    req.model_pub_key = Some("k-other".into());
    let r = router.chat(req.clone(), false).await;
    assert!(matches!(err(&r), RouteError::NoProviderForPubKey { .. }));
    assert_eq!(err(&r).status(), 421, "R30: a pubkey miss is 421");
    // Matching key, NEAR failing: no Chutes fallback on the pubkey path.
    n1.push_failures(s503(), 4);
    req.model_pub_key = Some("k1".into());
    let r = router.chat(req, false).await;
    assert_eq!(err(&r).status(), 429, "R29: NEAR 503 is service_overloaded");
    assert_eq!(c1.calls(), 0);
}

// ---- R18 masking findings (with R20/R22) ----

#[tokio::test(start_paused = true)]
async fn r18_near_5xx_with_chutes_streaming_off_surfaces_near_503() {
    // Review round 1, blocking 2 (a design-card scenario).
    let n1 = FakeProvider::near("n1").fail(s503(), 4).arc();
    let c1 = FakeProvider::chutes("c1").arc();
    let router = world(&[&n1], &[&c1]);
    let r = router.chat(request(M), true).await;
    assert_eq!(
        tried(&r),
        [
            ("n1", 1, 0),
            ("n1", 2, 500),
            ("n1", 3, 1500),
            ("n1", 4, 3500)
        ]
    );
    assert_eq!(
        err(&r).status(),
        429,
        "R29: a 503 ends as 429 service_overloaded"
    );
    assert!(!err(&r).to_string().contains("streaming"), "{}", err(&r));
    assert_eq!(c1.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn r18_client_e2ee_request_never_masks_a_near_failure_with_a_chutes_refusal() {
    // Review round 3, blocking (a design-card scenario).
    let n1 = FakeProvider::near("n1").fail(s503(), 1).arc();
    let c1 = FakeProvider::chutes("c1").arc();
    let router = world(&[&n1], &[&c1]);
    let mut req = request(M);
    req.client_pub_key = Some("client-key".into());
    let r = router.chat(req, false).await;
    assert_eq!(tried(&r), [("n1", 1, 0), ("n1", 2, 500)]);
    assert_eq!(r.result.unwrap().provider().as_str(), "n1");
    assert_eq!(c1.calls(), 0);
}

// ---- R19 ----

#[test]
fn r35_classification_in_order() {
    use ProviderError as E;
    let st = |status, message: &str| E::status(status, message);
    let cases = [
        (st(500, "x"), Class::Retryable(Backoff::Standard)),
        (st(502, "x"), Class::Retryable(Backoff::Standard)),
        (st(503, "x"), Class::Retryable(Backoff::Standard)),
        (st(429, "x"), Class::Retryable(Backoff::RateLimited)),
        (
            E::Connection("reset".into()),
            Class::Retryable(Backoff::Standard),
        ),
        (
            E::BodyDecode("eof".into()),
            Class::Retryable(Backoff::Standard),
        ),
        (E::Truncated, Class::Retryable(Backoff::Standard)),
        (
            st(500, "failed to fetch image: 403 Client Error: Forbidden"),
            Class::FastReturn,
        ),
        (
            st(500, "failed to fetch image: 503 Client Error: Unavailable"),
            Class::Retryable(Backoff::Standard),
        ),
        (st(408, "x"), Class::FallThrough),
        (st(404, "The model `m` does not exist."), Class::FallThrough),
        (st(400, "model m not found"), Class::FallThrough),
        (st(400, "bad request"), Class::FastReturn),
        (st(404, "x"), Class::FastReturn),
        (st(401, "x"), Class::FastReturn),
        (st(422, "x"), Class::FastReturn),
        (
            E::Connection("operation timed out (connect)".into()),
            Class::Retryable(Backoff::Standard),
        ),
        (E::Parse("EOF while parsing".into()), Class::FallThrough),
        (E::Timeout, Class::FallThrough),
        (E::Refused(Refusal::StreamingDisabled), Class::FallThrough),
        (
            E::Refused(Refusal::ClientE2eeUnsupported),
            Class::FallThrough,
        ),
        (E::Integrity("bad tag".into()), Class::Fatal),
    ];
    for (e, want) in cases {
        assert_eq!(classify(&e), want, "{e:?}");
    }
    // R35.6's word scan on its own.
    use crate::retry::scan;
    assert_eq!(
        scan("vLLM: operation timed out after 90s"),
        Class::FallThrough
    );
    assert_eq!(
        scan("operation timed out (connect)"),
        Class::Retryable(Backoff::Standard)
    );
    assert_eq!(
        scan("request or response body error"),
        Class::Retryable(Backoff::Standard)
    );
    assert_eq!(scan("something odd"), Class::FallThrough);
}

#[tokio::test(start_paused = true)]
async fn r19_non_retryable_4xx_fast_returns_without_chutes_or_failure_count() {
    let n1 = FakeProvider::near("n1")
        .fail(
            ProviderError::status(400, "bad request: messages must not be empty"),
            1,
        )
        .arc();
    let c1 = FakeProvider::chutes("c1").arc();
    let router = world(&[&n1], &[&c1]);
    let r = router.chat(request(M), false).await;
    assert_eq!(tried(&r), [("n1", 1, 0)]);
    assert_eq!(r.attempts[0].decision, Decision::FastReturn);
    assert_eq!(err(&r).status(), 400);
    assert_eq!(c1.calls(), 0, "no Chutes quota spent");
    assert_eq!(failures(&router, "n1"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn r38_408_and_model_not_found_fall_through_without_making_the_round_retryable() {
    for (e, client_status) in [
        (ProviderError::status(408, "request timeout"), 504),
        (ProviderError::status(404, "model not found"), 400),
        (
            ProviderError::status(400, "The model `m` does not exist."),
            400,
        ),
    ] {
        // Falls through to the next provider…
        let n1 = FakeProvider::near("n1").fail(e.clone(), 1).arc();
        let c1 = FakeProvider::chutes("c1").arc();
        let router = world(&[&n1], &[&c1]);
        let r = router.chat(request(M), false).await;
        assert_eq!(tried(&r), [("n1", 1, 0), ("c1", 1, 0)], "{e:?}");
        assert_eq!(r.attempts[0].decision, Decision::FallThrough);
        assert_eq!(r.result.unwrap().provider().as_str(), "c1");
        assert_eq!(failures(&router, "n1"), Some(0));
        // …and alone, it is not retried.
        let n1 = FakeProvider::near("n1").fail(e.clone(), 4).arc();
        let router = world(&[&n1], &[]);
        let r = router.chat(request(M), false).await;
        assert_eq!(tried(&r), [("n1", 1, 0)], "{e:?}");
        assert_eq!(err(&r).status(), client_status);
    }
}

#[tokio::test(start_paused = true)]
async fn r36_client_media_error_short_circuits_across_providers() {
    let e = ProviderError::status(
        500,
        "loading IMAGE data: 403 Client Error: Forbidden for url: http://img/x.png",
    );
    let n1 = FakeProvider::near("n1").fail(e, 4).arc();
    let n2 = FakeProvider::near("n2").fail(s503(), 4).arc();
    let router = world(&[&n1, &n2], &[]);
    let r = router.chat(request(M), false).await;
    assert_eq!(tried(&r), [("n1", 1, 0)], "no other provider, no round");
    let reply = crate::client_error::reply(err(&r));
    assert_eq!(reply.status, 400);
    assert!(!reply.message.contains("img"), "the URL is never echoed");
    assert_eq!(failures(&router, "n1"), Some(0));
    assert_eq!(n2.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn r19_timeout_and_refusal_are_not_retried() {
    let n1 = FakeProvider::near("n1")
        .fail(ProviderError::Timeout, 4)
        .arc();
    let router = world(&[&n1], &[]);
    let r = router.chat(request(M), false).await;
    assert_eq!(tried(&r), [("n1", 1, 0)]);
    assert_eq!(err(&r).status(), 504);
    assert_eq!(failures(&router, "n1"), Some(0));

    let c1 = FakeProvider::chutes("c1").arc();
    let router = world(&[], &[&c1]);
    let r = router.chat(request(M), true).await;
    assert_eq!(tried(&r), [("c1", 1, 0)]);
    assert!(
        err(&r).to_string().contains("CHUTES_ENABLE_STREAMING"),
        "{}",
        err(&r)
    );
}

#[tokio::test(start_paused = true)]
async fn r19_integrity_failure_fails_closed() {
    let n1 = FakeProvider::near("n1")
        .fail(ProviderError::Integrity("AEAD tag mismatch".into()), 1)
        .arc();
    let c1 = FakeProvider::chutes("c1").arc();
    let router = world(&[&n1], &[&c1]);
    let r = router.chat(request(M), false).await;
    assert_eq!(tried(&r), [("n1", 1, 0)]);
    assert_eq!(r.attempts[0].decision, Decision::FailClosed);
    assert_eq!(err(&r).status(), 502);
    assert_eq!(c1.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn r19_truncated_before_stream_start_is_retried_as_body_decode() {
    let n1 = FakeProvider::near("n1")
        .fail(ProviderError::Truncated, 1)
        .arc();
    let router = world(&[&n1], &[]);
    let r = router.chat(request(M), true).await;
    assert_eq!(tried(&r), [("n1", 1, 0), ("n1", 2, 500)]);
    assert!(matches!(r.result, Ok(Served::Stream { .. })));
}

// ---- R20 ----

#[tokio::test(start_paused = true)]
async fn r20_5xx_and_connection_backoff_is_500ms_1s_2s_over_four_rounds() {
    for e in [
        s503(),
        ProviderError::Connection("connection reset by peer".into()),
    ] {
        let n1 = FakeProvider::near("n1").fail(e.clone(), 10).arc();
        let router = world(&[&n1], &[]);
        let r = router.chat(request(M), false).await;
        assert_eq!(
            tried(&r),
            [
                ("n1", 1, 0),
                ("n1", 2, 500),
                ("n1", 3, 1500),
                ("n1", 4, 3500)
            ],
            "{e:?}"
        );
        let waits: Vec<_> = r.attempts.iter().map(|a| a.retry_after).collect();
        let ms = Duration::from_millis;
        assert_eq!(waits, [Some(ms(500)), Some(ms(1000)), Some(ms(2000)), None]);
        assert_eq!(n1.calls(), 4);
    }
}

#[tokio::test(start_paused = true)]
async fn r20_429_backoff_is_1s_2s_4s() {
    let n1 = FakeProvider::near("n1")
        .fail(ProviderError::status(429, "slow down"), 10)
        .arc();
    let router = world(&[&n1], &[]);
    let r = router.chat(request(M), false).await;
    assert_eq!(
        tried(&r),
        [
            ("n1", 1, 0),
            ("n1", 2, 1000),
            ("n1", 3, 3000),
            ("n1", 4, 7000)
        ]
    );
    assert_eq!(err(&r).status(), 429);
}

#[tokio::test(start_paused = true)]
async fn r20_each_round_walks_every_provider_before_backing_off() {
    let n1 = FakeProvider::near("n1").fail(s503(), 2).arc();
    let c1 = FakeProvider::chutes("c1")
        .fail(ProviderError::status(429, "quota"), 2)
        .arc();
    let router = world(&[&n1], &[&c1]);
    let r = router.chat(request(M), false).await;
    // The round's last retryable failure (429) sets the schedule: 1 s, 2 s.
    assert_eq!(
        tried(&r),
        [
            ("n1", 1, 0),
            ("c1", 1, 0),
            ("n1", 2, 1000),
            ("c1", 2, 1000),
            ("n1", 3, 3000)
        ]
    );
    assert_eq!(r.result.unwrap().provider().as_str(), "n1");
}

#[tokio::test(start_paused = true)]
async fn r20_attempt_times_include_provider_latency() {
    let n1 = FakeProvider::near("n1")
        .with_latency(Duration::from_millis(100))
        .fail(s503(), 1)
        .arc();
    let router = world(&[&n1], &[]);
    tokio::time::advance(Duration::from_secs(5)).await;
    let r = router.chat(request(M), false).await;
    // 5 s after the router was created; 100 ms call + 500 ms backoff.
    assert_eq!(tried(&r), [("n1", 1, 5000), ("n1", 2, 5600)]);
}

#[tokio::test(start_paused = true)]
async fn r20_stream_open_is_retried_then_the_stream_is_handed_over() {
    let n1 = FakeProvider::near("n1").fail(s503(), 2).arc();
    let router = world(&[&n1], &[]);
    let r = router.chat(request(M), true).await;
    assert_eq!(tried(&r), [("n1", 1, 0), ("n1", 2, 500), ("n1", 3, 1500)]);
    let Ok(Served::Stream { stream, by }) = r.result else {
        panic!()
    };
    assert_eq!(by.provider.as_str(), "n1");
    let items: Vec<_> = stream.collect().await;
    assert_eq!(items.last(), Some(&Ok(StreamItem::Done)));
}

// ---- R21 ----

#[tokio::test(start_paused = true)]
async fn r21_retryable_failures_count_and_a_success_resets() {
    let n1 = FakeProvider::near("n1").fail(s503(), 6).arc();
    let router = world(&[&n1], &[]);
    let _ = router.chat(request(M), false).await;
    assert_eq!(failures(&router, "n1"), Some(4));
    let r = router.chat(request(M), false).await;
    assert_eq!(failures(&router, "n1"), Some(0));
    assert!(r.result.is_ok());
}

#[tokio::test(start_paused = true)]
async fn r21_ten_consecutive_failures_demote_below_chutes() {
    let n1 = FakeProvider::near("n1").fail(s503(), 10).arc();
    let c1 = FakeProvider::chutes("c1").arc();
    let router = world(&[&n1], &[&c1]);
    for i in 1..=10 {
        let r = router.chat(request(M), false).await;
        assert_eq!(
            tried(&r).iter().map(|t| t.0).collect::<Vec<_>>(),
            ["n1", "c1"],
            "#{i}"
        );
    }
    let v = router.registry().view();
    assert_eq!(v.models[M][0].consecutive_failures, 10);
    assert!(v.models[M][0].demoted);
    let r = router.chat(request(M), false).await;
    assert_eq!(tried(&r), [("c1", 1, 0)]);
}

#[tokio::test(start_paused = true)]
async fn r21_non_retryable_failures_are_not_counted() {
    let n1 = FakeProvider::near("n1")
        .fail(ProviderError::status(408, "timeout"), 1)
        .fail(ProviderError::Timeout, 1)
        .fail(ProviderError::status(403, "forbidden"), 1)
        .arc();
    let router = world(&[&n1], &[]);
    for _ in 0..3 {
        assert!(router.chat(request(M), false).await.result.is_err());
    }
    assert_eq!(n1.calls(), 3);
    assert_eq!(failures(&router, "n1"), Some(0));
}

// ---- R22 ----

#[tokio::test(start_paused = true)]
async fn r22_refusal_never_replaces_a_retryable_primary_failure() {
    // R18 normally keeps the refusing provider out; here Chutes refuses a
    // request R18 cannot know about, right after NEAR's 503 in every round.
    // The 503 must win, and the refusal must not stop the retries.
    let n1 = FakeProvider::near("n1").fail(s503(), 10).arc();
    let c1 = FakeProvider::chutes("c1")
        .fail(ProviderError::Refused(Refusal::StreamingDisabled), 10)
        .arc();
    let router = world(&[&n1], &[&c1]);
    let r = router.chat(request(M), false).await;
    assert_eq!(
        tried(&r),
        [
            ("n1", 1, 0),
            ("c1", 1, 0),
            ("n1", 2, 500),
            ("c1", 2, 500),
            ("n1", 3, 1500),
            ("c1", 3, 1500),
            ("n1", 4, 3500),
            ("c1", 4, 3500)
        ]
    );
    match err(&r) {
        RouteError::Provider {
            provider, error, ..
        } => {
            assert_eq!(provider.as_str(), "n1");
            assert_eq!(*error, s503());
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(
        failures(&router, "c1"),
        Some(0),
        "a refusal is not a health failure"
    );
}

#[tokio::test(start_paused = true)]
async fn r22_most_informative_error_of_the_last_round_wins() {
    let n1 = FakeProvider::near("n1").fail(s503(), 10).arc();
    let c1 = FakeProvider::chutes("c1")
        .fail(ProviderError::status(404, "model not found"), 10)
        .arc();
    let router = world(&[&n1], &[&c1]);
    let r = router.chat(request(M), false).await;
    assert_eq!(r.attempts.len(), 8);
    match err(&r) {
        RouteError::Provider {
            provider, error, ..
        } => {
            assert_eq!(provider.as_str(), "n1");
            assert_eq!(*error, s503());
        }
        e => panic!("{e:?}"),
    }
    // A timeout says more than a refusal.
    let n2 = FakeProvider::near("n2")
        .fail(ProviderError::Timeout, 1)
        .arc();
    let c2 = FakeProvider::chutes("c2").arc();
    let router = world(&[&n2], &[&c2]);
    let mut req = request(M);
    req.client_pub_key = Some("ck".into());
    let r = router.chat(req, false).await;
    assert_eq!(tried(&r), [("n2", 1, 0)], "R18 dropped c2");
    assert_eq!(err(&r).status(), 504);
}

/// The provider whose error ended the request and that error's HTTP status
/// (as the attempt log shows it).
fn provider_error(r: &Routed) -> (&str, u16) {
    match err(r) {
        RouteError::Provider {
            provider, error, ..
        } => (provider.as_str(), retry::http_status(error)),
        e => panic!("expected a provider error, got {e:?}"),
    }
}

/// R22: the client gets the most informative error of the last round even
/// when the primary's error is the less informative one and the better one
/// comes second (a 408 falls through; Chutes' 503 says more).
#[tokio::test(start_paused = true)]
async fn r22_the_most_informative_error_wins_when_it_comes_second() {
    let n1 = FakeProvider::near("n1")
        .fail(ProviderError::status(408, "request timeout"), 10)
        .arc();
    let c1 = FakeProvider::chutes("c1").fail(s503(), 10).arc();
    let router = world(&[&n1], &[&c1]);
    let r = router.chat(request(M), false).await;
    assert_eq!(r.attempts.len(), 8, "the 503 keeps the rounds going");
    assert_eq!(provider_error(&r), ("c1", 503));

    // A single round: a timeout (fall-through) then a reset (retryable,
    // more informative) on the last attempt of the last round.
    let n2 = FakeProvider::near("n2")
        .fail(ProviderError::Timeout, 10)
        .arc();
    let c2 = FakeProvider::chutes("c2")
        .fail(ProviderError::Connection("connection reset".into()), 10)
        .arc();
    let router = world(&[&n2], &[&c2]);
    let r = router.chat(request(M), false).await;
    assert_eq!(provider_error(&r), ("c2", 502));
}

/// R22: two errors of equal informativeness tie; the earlier (the primary's)
/// wins, whichever status it carries.
#[tokio::test(start_paused = true)]
async fn r22_on_a_tie_the_primary_error_wins() {
    for (first, second) in [(503, 500), (500, 503), (429, 502)] {
        let n1 = FakeProvider::near("n1")
            .fail(ProviderError::status(first, "upstream failed"), 10)
            .arc();
        let c1 = FakeProvider::chutes("c1")
            .fail(ProviderError::status(second, "upstream failed"), 10)
            .arc();
        let router = world(&[&n1], &[&c1]);
        let r = router.chat(request(M), false).await;
        assert_eq!(r.attempts.len(), 8);
        assert_eq!(provider_error(&r), ("n1", first), "{first} then {second}");
    }
    // Two connection failures tie too.
    let n2 = FakeProvider::near("n2")
        .fail(ProviderError::Connection("reset by n2".into()), 10)
        .arc();
    let c2 = FakeProvider::chutes("c2")
        .fail(ProviderError::BodyDecode("bad body from c2".into()), 10)
        .arc();
    let router = world(&[&n2], &[&c2]);
    let r = router.chat(request(M), false).await;
    assert_eq!(provider_error(&r), ("n2", 502));
}

#[tokio::test(start_paused = true)]
async fn r22_messages_are_sanitised_and_name_the_canonical_id() {
    let n1 = FakeProvider::near("n1")
        .fail(
            ProviderError::Connection(
                "error sending request for url (https://10.0.0.7:8000/v1/chat/completions): reset"
                    .into(),
            ),
            10,
        )
        .arc();
    let router = world(&[&n1], &[]);
    let r = router.chat(request(M), false).await;
    let msg = err(&r).to_string();
    assert!(msg.contains(M), "{msg}");
    assert!(
        msg.contains("provider connection failed ([URL_REDACTED]"),
        "{msg}"
    );
    assert!(
        !msg.contains("10.0.0.7") && !msg.contains("https://"),
        "{msg}"
    );
    assert_eq!(err(&r).status(), 502);
    for a in &r.attempts {
        let Outcome::Error { message, status } = &a.outcome else {
            panic!()
        };
        assert_eq!(*status, 502);
        assert!(!message.contains("10.0.0.7"), "{message}");
    }
}

#[test]
fn router_chat_future_is_send() {
    fn send<T: Send>(_: T) {}
    let router = world(&[], &[]);
    send(router.chat(request(M), false));
}

#[tokio::test(start_paused = true)]
async fn r21_a_stream_broken_after_it_opened_counts_against_health() {
    use futures_util::StreamExt;
    let n1 = FakeProvider::near("n1").cutting_streams().arc();
    let router = world(&[&n1], &[]);
    for expected in 1..=2u32 {
        let r = router.chat(request(M), true).await;
        let Ok(Served::Stream { mut stream, .. }) = r.result else {
            panic!("the stream should open");
        };
        assert!(matches!(
            stream.next().await,
            Some(Ok(StreamItem::Chunk(_)))
        ));
        assert_eq!(stream.next().await, Some(Err(ProviderError::Truncated)));
        assert_eq!(
            failures(&router, "n1"),
            Some(expected),
            "a cut after opening is a retryable failure of n1"
        );
    }
}

// ---- R54 ----

fn via_fallback(r: &crate::router::Routed) -> bool {
    r.result.as_ref().unwrap().attribution().via_fallback
}

#[tokio::test(start_paused = true)]
async fn r54_served_via_fallback_rules_in_order() {
    // NEAR first and serving: not fallback.
    let n1 = FakeProvider::near("n1").arc();
    let c1 = FakeProvider::chutes("c1").arc();
    let router = world(&[&n1], &[&c1]);
    assert!(!via_fallback(&router.chat(request(M), false).await));
    // Rule 1: not first in the list.
    n1.push_failures(s503(), 1);
    let r = router.chat(request(M), false).await;
    assert_eq!(r.result.as_ref().unwrap().provider().as_str(), "c1");
    assert!(via_fallback(&r));
    // Rule 3: NEAR left, Chutes alone serves: still fallback (memory).
    router.registry().refresh(
        SourceRead::Ok(Discovered::default()),
        SourceRead::Ok(External::default()),
    );
    router.registry().set_catalog_rows([(
        M,
        CatalogRow {
            active: true,
            price: 1,
            ..Default::default()
        },
    )]);
    let r = router.chat(request(M), false).await;
    assert_eq!(tried(&r), [("c1", 1, 0)]);
    assert!(via_fallback(&r));
    // A Chutes-only model is primary.
    let c2 = FakeProvider::chutes("c2").arc();
    let router = world(&[], &[&c2]);
    assert!(!via_fallback(&router.chat(request(M), false).await));
    // A later round's first provider is not fallback (rule 1 is per round).
    let n3 = FakeProvider::near("n3").fail(s503(), 1).arc();
    let c3 = FakeProvider::chutes("c3").fail(s503(), 1).arc();
    let router = world(&[&n3], &[&c3]);
    let r = router.chat(request(M), false).await;
    assert_eq!(tried(&r), [("n3", 1, 0), ("c3", 1, 0), ("n3", 2, 500)]);
    assert!(!via_fallback(&r));
}

// ---- the retry loop's planted-bug knobs (`retry::Rounds`) ----

/// Runs `retry::run` over `providers` (each with a fresh health) with `rounds`.
async fn walk(
    providers: &[&Arc<FakeProvider>],
    rounds: retry::Rounds,
) -> (Vec<Attempt>, Result<String, (String, u16)>, Vec<u32>) {
    let candidates: Vec<(Arc<dyn Provider>, Arc<Health>)> = providers
        .iter()
        .map(|p| (Arc::clone(p) as Arc<dyn Provider>, Arc::default()))
        .collect();
    let mut attempts = Vec::new();
    let req = request(M);
    let out = retry::run(
        &candidates,
        Instant::now(),
        &mut attempts,
        true,
        rounds,
        |p| {
            let req = req.clone();
            async move { p.chat_completion(&req).await }
        },
    )
    .await;
    let out = out
        .map(|(i, _)| candidates[i].0.id().to_string())
        .map_err(|f| (f.provider.to_string(), retry::http_status(&f.error)));
    let counts = candidates
        .iter()
        .map(|(_, h)| h.consecutive_failures())
        .collect();
    (attempts, out, counts)
}

/// R20/R22: `Rounds::SPEC` is the specified loop; each knob reproduces
/// exactly its planted bug (`registry/planted.rs`) and nothing else.
#[tokio::test(start_paused = true)]
async fn r20_r21_r22_each_rounds_knob_reproduces_only_its_planted_bug() {
    let spec = retry::Rounds::SPEC;
    let refusal = || ProviderError::Refused(Refusal::StreamingDisabled);

    // Last error decides (refusal masking): the refusal after NEAR's 503
    // ends the retries and is what the client gets.
    let n = FakeProvider::near("n").fail(s503(), 10).arc();
    let c = FakeProvider::chutes("c").fail(refusal(), 10).arc();
    let (a, out, _) = walk(&[&n, &c], spec).await;
    assert_eq!((a.len(), out), (8, Err(("n".into(), 503))));
    let n = FakeProvider::near("n").fail(s503(), 10).arc();
    let c = FakeProvider::chutes("c").fail(refusal(), 10).arc();
    let masking = retry::Rounds {
        last_error_decides: true,
        ..spec
    };
    let (a, out, _) = walk(&[&n, &c], masking).await;
    assert_eq!((a.len(), out), (2, Err(("c".into(), 502))));
    // ... and a retryable last error still retries under that knob.
    let c = FakeProvider::chutes("c").fail(refusal(), 10).arc();
    let n = FakeProvider::near("n").fail(s503(), 10).arc();
    let (a, out, _) = walk(&[&c, &n], masking).await;
    assert_eq!((a.len(), out), (8, Err(("n".into(), 503))));

    // Ties: the primary's 503 unless the tie goes to the later 500.
    let tie = |last| async move {
        let n = FakeProvider::near("n").fail(s503(), 10).arc();
        let c = FakeProvider::chutes("c")
            .fail(ProviderError::status(500, "internal"), 10)
            .arc();
        let rounds = retry::Rounds {
            tie_goes_last: last,
            ..spec
        };
        walk(&[&n, &c], rounds).await.1
    };
    assert_eq!(tie(false).await, Err(("n".into(), 503)));
    assert_eq!(tie(true).await, Err(("c".into(), 500)));
    // A strictly better later error wins either way; a worse one never does.
    let n = FakeProvider::near("n")
        .fail(ProviderError::Timeout, 10)
        .arc();
    let c = FakeProvider::chutes("c").fail(s503(), 10).arc();
    let tie_last = retry::Rounds {
        tie_goes_last: true,
        ..spec
    };
    assert_eq!(walk(&[&n, &c], tie_last).await.1, Err(("c".into(), 503)));
    let n = FakeProvider::near("n").fail(s503(), 10).arc();
    let c = FakeProvider::chutes("c")
        .fail(ProviderError::Timeout, 10)
        .arc();
    assert_eq!(walk(&[&n, &c], tie_last).await.1, Err(("n".into(), 503)));

    // Backoff one step ahead: 1 s, 2 s, 4 s instead of 500 ms, 1 s, 2 s.
    let delays = |rounds| async move {
        let n = FakeProvider::near("n").fail(s503(), 10).arc();
        let (a, _, _) = walk(&[&n], rounds).await;
        a.iter()
            .filter_map(|x| x.retry_after.map(|d| d.as_millis() as u64))
            .collect::<Vec<_>>()
    };
    assert_eq!(delays(spec).await, [500, 1000, 2000]);
    let ahead = retry::Rounds {
        backoff_step_ahead: true,
        ..spec
    };
    assert_eq!(delays(ahead).await, [1000, 2000, 4000]);

    // A success resets the counter, unless the knob keeps it.
    let reset = |keep| async move {
        let n = FakeProvider::near("n").fail(s503(), 2).arc();
        let rounds = retry::Rounds {
            keep_failures_on_success: keep,
            ..spec
        };
        let (_, out, counts) = walk(&[&n], rounds).await;
        assert_eq!(out, Ok("n".into()));
        counts[0]
    };
    assert_eq!(reset(false).await, 0);
    assert_eq!(reset(true).await, 2);
}

// ---- SPEC-parity R42–R45: context-length tiers ----

/// A request whose one user message is `bytes` letters, with `max_tokens`.
fn long_request(bytes: usize, max_tokens: u64) -> ChatRequest {
    let mut r = request(M);
    r.body = serde_json::json!({
        "model": M,
        "messages": [{ "role": "user", "content": "a".repeat(bytes) }],
        "max_tokens": max_tokens,
    })
    .as_object()
    .unwrap()
    .clone();
    r
}

fn served_by(r: &Routed) -> &str {
    r.result.as_ref().unwrap().provider().as_str()
}

/// Base NEAR (1 000) and long NEAR (10 000); base's tokenize answers `count`.
fn two_tiers(count: Option<u64>) -> (Router, Arc<FakeProvider>, Arc<FakeProvider>) {
    let base = FakeProvider::near("base")
        .with_context_window(1_000)
        .with_token_count(count, Duration::ZERO)
        .arc();
    let long = FakeProvider::near("long")
        .with_context_window(10_000)
        .with_token_count(Some(1), Duration::ZERO)
        .arc();
    (world(&[&base, &long], &[]), base, long)
}

#[tokio::test(start_paused = true)]
async fn r42_refined_estimate_sends_a_long_request_to_the_long_tier() {
    let (router, base, long) = two_tiers(None);
    // 20 000 bytes, max_tokens 10: ceil(5 000 × 1.2) + 4 + 10 = 6 014.
    let r = router.chat(long_request(20_000, 10), false).await;
    assert_eq!(served_by(&r), "long");
    assert_eq!((base.calls(), long.calls()), (0, 1));
    assert_eq!(base.tokenize_calls(), 0, "far from every window: no count");
    // A small request stays on the base tier.
    let r = router.chat(long_request(400, 10), false).await;
    assert_eq!(served_by(&r), "base");
}

#[tokio::test(start_paused = true)]
async fn r42_single_window_model_uses_the_hint_for_streams_only() {
    let near = FakeProvider::near("near")
        .with_context_window(1_000)
        .with_token_count(Some(1), Duration::ZERO)
        .arc();
    let chutes = FakeProvider::chutes("chutes").with_streaming(true).arc();
    let router = world(&[&near], &[&chutes]);
    // Not refined: non-streamed chat has no estimate, so NEAR leads.
    let r = router.chat(long_request(20_000, 0), false).await;
    assert_eq!(served_by(&r), "near");
    // Streamed: the hint (5 000) overflows NEAR; the undeclared Chutes leads.
    let r = router.chat(long_request(20_000, 0), true).await;
    assert_eq!(served_by(&r), "chutes");
    assert_eq!(near.tokenize_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn r43_exact_count_near_a_boundary_decides_the_tier() {
    // 4 000 bytes, max_tokens 10: 1 000 + 4 + 10 lies in [700, 1 300].
    for (count, want) in [(Some(100), "base"), (Some(2_000), "long"), (None, "long")] {
        let (router, base, long) = two_tiers(count);
        let r = router.chat(long_request(4_000, 10), false).await;
        assert_eq!(served_by(&r), want, "count {count:?}");
        assert_eq!(base.tokenize_calls(), 1, "one call, on the smallest window");
        assert_eq!(long.tokenize_calls(), 0, "never on the long host");
    }
}

#[tokio::test(start_paused = true)]
async fn r43_encrypted_requests_are_never_tokenized() {
    let (router, base, _long) = two_tiers(Some(100));
    let mut req = long_request(4_000, 10);
    req.client_pub_key = Some("ab".repeat(32));
    let r = router.chat(req, false).await;
    // The heuristic: ceil(1 000 × 1.2) + 14 = 1 214 > 1 000.
    assert_eq!(served_by(&r), "long");
    assert_eq!(base.tokenize_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn r43_a_slow_tokenize_times_out_after_2s_and_the_heuristic_decides() {
    let base = FakeProvider::near("base")
        .with_context_window(1_000)
        .with_token_count(Some(100), Duration::from_secs(3))
        .arc();
    let long = FakeProvider::near("long").with_context_window(10_000).arc();
    let router = world(&[&base, &long], &[]);
    let r = router.chat(long_request(4_000, 10), false).await;
    assert_eq!(served_by(&r), "long");
    assert_eq!(r.attempts[0].at, Duration::from_secs(2), "2 s, then routed");
}

#[tokio::test(start_paused = true)]
async fn r43_four_permits_and_a_fifth_request_never_waits() {
    let base = FakeProvider::near("base")
        .with_context_window(1_000)
        .with_token_count(Some(100), Duration::from_millis(500))
        .arc();
    let long = FakeProvider::near("long").with_context_window(10_000).arc();
    let router = world(&[&base, &long], &[]);
    let calls = (0..5).map(|_| router.chat(long_request(4_000, 10), false));
    let routed = futures_util::future::join_all(calls).await;
    assert_eq!(base.tokenize_calls(), 4);
    let on_base = routed.iter().filter(|r| served_by(r) == "base").count();
    assert_eq!(
        on_base, 4,
        "the counted four fit; the fifth used the heuristic"
    );
    let fifth = routed.iter().find(|r| served_by(r) == "long").unwrap();
    assert_eq!(fifth.attempts[0].at, Duration::ZERO, "it did not wait");
}

fn context_400() -> ProviderError {
    ProviderError::status(
        400,
        "This model's maximum context length is 1000 tokens. However, you requested 1200 tokens.",
    )
}

#[tokio::test(start_paused = true)]
async fn r45_context_400_falls_through_to_a_larger_window_uncounted() {
    let base = FakeProvider::near("base")
        .with_context_window(1_000)
        .fail(context_400(), 1)
        .arc();
    let long = FakeProvider::near("long").with_context_window(10_000).arc();
    let router = world(&[&base, &long], &[]);
    let r = router.chat(long_request(40, 0), false).await;
    assert_eq!(served_by(&r), "long");
    let decisions: Vec<Decision> = r.attempts.iter().map(|a| a.decision).collect();
    assert_eq!(decisions, [Decision::FallThrough, Decision::Served]);
    assert_eq!(failures(&router, "base"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn r45_without_a_larger_declared_sibling_it_fast_returns() {
    // NEAR declares a window, Chutes none: an undeclared window does not
    // count, so the 400 is returned and Chutes is never called.
    let near = FakeProvider::near("near")
        .with_context_window(202_752)
        .fail(context_400(), 1)
        .arc();
    let chutes = FakeProvider::chutes("chutes").arc();
    let router = world(&[&near], &[&chutes]);
    let r = router.chat(long_request(40, 0), false).await;
    assert_eq!(err(&r).status(), 400);
    assert_eq!(chutes.calls(), 0);
    assert_eq!(r.attempts[0].decision, Decision::FastReturn);
}

#[tokio::test(start_paused = true)]
async fn r45_never_clobbers_a_recorded_retryable_error_in_either_profile() {
    for profile in Profile::ALL {
        // Oversize: long first (503 every time), base answers context 400.
        let base = FakeProvider::near("base")
            .with_context_window(1_000)
            .fail(context_400(), 4)
            .arc();
        let long = FakeProvider::near("long")
            .with_context_window(10_000)
            .fail(s503(), 4)
            .arc();
        let reg = Registry::new();
        reg.refresh(
            SourceRead::Ok(Discovered(rows(&[(M, &[&base, &long])]))),
            SourceRead::Ok(External::default()),
        );
        active(&reg, M);
        let router = Router::with_settings(Arc::new(reg), profile, 64);
        let r = router.chat(long_request(40_000, 0), false).await;
        let order: Vec<(&str, u32, u64)> = tried(&r);
        assert_eq!(order.len(), 8, "{profile}: 4 rounds of [long, base]");
        assert_eq!(order[0].0, "long");
        assert_eq!(err(&r).status(), 429, "{profile}: the 503, never the 400");
        assert_eq!(failures(&router, "base"), Some(0), "{profile}");
    }
}

// ---- R46 TTFT samples ----

fn ttft(router: &Router, provider: &str) -> crate::health::Ttft {
    router
        .registry()
        .view()
        .models
        .values()
        .flatten()
        .find(|p| p.id.as_str() == provider)
        .map(|p| p.ttft)
        .unwrap()
}

/// Routes one streamed request and reads its stream to the end.
async fn stream_to_end(router: &Router) {
    let r = router.chat(request(M), true).await;
    let Ok(Served::Stream { stream, .. }) = r.result else {
        panic!("expected a stream, got {:?}", r.result);
    };
    let _items: Vec<_> = stream.collect().await;
}

#[tokio::test(start_paused = true)]
async fn r46_each_streamed_request_takes_one_sample_at_close() {
    let n1 = FakeProvider::near("n1")
        .with_first_token(Duration::from_secs(2))
        .arc();
    let router = world(&[&n1], &[]);
    for _ in 0..8 {
        stream_to_end(&router).await;
    }
    let t = ttft(&router, "n1");
    assert_eq!(t.samples, 8);
    assert_eq!(t.ema_ms, 2000.0);
    // A non-streamed request never samples.
    assert!(router.chat(request(M), false).await.result.is_ok());
    assert_eq!(ttft(&router, "n1").samples, 8);
}

#[tokio::test(start_paused = true)]
async fn r46_no_sample_without_a_content_chunk_or_before_close() {
    // The plain fake's chunk has no content and no usage: no sample.
    let bare = FakeProvider::near("bare").arc();
    let router = world(&[&bare], &[]);
    stream_to_end(&router).await;
    assert_eq!(ttft(&router, "bare").samples, 0);

    let n1 = FakeProvider::near("n1")
        .with_first_token(Duration::from_millis(300))
        .arc();
    let router = world(&[&n1], &[]);
    // Dropped by the client before its first chunk: no sample.
    let r = router.chat(request(M), true).await;
    drop(r);
    assert_eq!(ttft(&router, "n1").samples, 0);
    // Read past the first chunk but not yet closed: still none; the
    // sample is taken once, when the stream closes.
    let r = router.chat(request(M), true).await;
    let Ok(Served::Stream { mut stream, .. }) = r.result else {
        panic!("expected a stream");
    };
    assert!(matches!(
        stream.next().await,
        Some(Ok(StreamItem::Chunk(_)))
    ));
    assert_eq!(ttft(&router, "n1").samples, 0);
    drop(stream);
    assert_eq!(
        ttft(&router, "n1"),
        crate::health::Ttft {
            samples: 1,
            ema_ms: 300.0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn r46_tiersim_times_the_served_attempt_upstream_the_whole_request() {
    for (profile, want) in [(Profile::Tiersim, 100.0), (Profile::Upstream, 350.0)] {
        // n1 leads, takes 250 ms to fail with a 503; Chutes then opens at
        // once and sends its first content 100 ms later.
        let n1 = FakeProvider::near("n1")
            .with_latency(Duration::from_millis(250))
            .fail(s503(), 1)
            .arc();
        let n2 = FakeProvider::chutes("n2")
            .with_streaming(true)
            .with_first_token(Duration::from_millis(100))
            .arc();
        let reg = Registry::new();
        reg.register_secondary(M, Arc::clone(&n2) as Arc<dyn Provider>);
        reg.refresh(
            SourceRead::Ok(Discovered(rows(&[(M, &[&n1])]))),
            SourceRead::Ok(External::default()),
        );
        active(&reg, M);
        let router = Router::with_settings(Arc::new(reg), profile, 64);
        let r = router.chat(request(M), true).await;
        assert_eq!(r.attempts.len(), 2, "{profile:?}");
        let Ok(Served::Stream { stream, .. }) = r.result else {
            panic!("expected a stream");
        };
        let _items: Vec<_> = stream.collect().await;
        let t = ttft(&router, "n2");
        assert_eq!((t.samples, t.ema_ms), (1, want), "{profile:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn r43_a_request_over_the_in_flight_cap_spends_no_tokenize_call() {
    let base = FakeProvider::near("base")
        .with_context_window(1_000)
        .with_token_count(Some(100), Duration::ZERO)
        .arc();
    let long = FakeProvider::near("long")
        .with_context_window(10_000)
        .with_latency(Duration::from_secs(1))
        .arc();
    let reg = Registry::new();
    reg.refresh(
        SourceRead::Ok(Discovered(rows(&[(M, &[&base, &long])]))),
        SourceRead::Ok(External::default()),
    );
    active(&reg, M);
    let router = Router::with_settings(Arc::new(reg), Profile::Tiersim, 1);
    // The first (oversize, far from every window: long, 1 s) holds the
    // only slot; the second,
    // near the base window, is refused without a tokenize call.
    let (first, second) = tokio::join!(
        router.chat(long_request(60_000, 0), false),
        router.chat(long_request(4_000, 10), false)
    );
    assert_eq!(served_by(&first), "long");
    assert_eq!(err(&second).status(), 429);
    assert_eq!(base.tokenize_calls(), 0);
    // With the slot free again, the same request is counted.
    let third = router.chat(long_request(4_000, 10), false).await;
    assert_eq!(served_by(&third), "base");
    assert_eq!(base.tokenize_calls(), 1);
}
