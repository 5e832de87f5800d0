//! The engine's HTTP providers against simulated hosts on a turmoil network:
//! round trips, attestation discovery, every HTTP fault kind as the right
//! `ProviderError`, the catalog, and byte-for-byte determinism.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tiersim::fault::{Fault, FaultBoard, FaultInjection, RequestKind, Scope};
use tiersim::hosts::{derive_seed, Catalog, CatalogHandle, ExternalBackend, NearBackend};
use tiersim::net::{http_client, url};
use tiersim_engine::catalog::{CatalogClient, CatalogPatchRow, CatalogRow, ExternalRow};
use tiersim_engine::external::ExternalProvider;
use tiersim_engine::near::NearProvider;
use tiersim_engine::openai::Timeouts;
use tiersim_engine::{ChatRequest, ChatStream, Provider, ProviderError, StreamItem, Tier};

const MODEL: &str = "zai-org/GLM-5.1-FP8";
const EXT_MODEL: &str = "meta/llama-ext";
const TIMEOUTS: Timeouts = Timeouts {
    request: Duration::from_secs(5),
    stream_idle: Duration::from_secs(2),
};

struct World {
    sim: turmoil::Sim<'static>,
    faults: FaultBoard,
    catalog: CatalogHandle,
    near_key: String,
}

fn world(seed: u64) -> World {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .rng_seed(seed)
        .build();
    let faults = FaultBoard::new();
    let near = NearBackend::new("near-1")
        .serves([MODEL])
        .signing_seed(derive_seed(seed, "near-1"))
        .faults(&faults);
    let near_key = near.signing_key_hex();
    near.install(&mut sim);
    ExternalBackend::new("openrouter")
        .serves([EXT_MODEL])
        .faults(&faults)
        .install(&mut sim);
    let catalog = Catalog::new("catalog")
        .model(CatalogRow {
            id: MODEL.into(),
            inference_url: Some(url("near-1")),
            active: true,
            price: 1_000_000,
            provider_type: Default::default(),
            ..Default::default()
        })
        .external(ExternalRow {
            model: EXT_MODEL.into(),
            base_url: url("openrouter"),
            name: "openrouter".into(),
            kind: ExternalRow::OPENAI_COMPATIBLE.into(),
        })
        .faults(&faults)
        .install(&mut sim);
    World {
        sim,
        faults,
        catalog,
        near_key,
    }
}

impl World {
    /// Runs `f` as the one client of the world, to completion.
    fn run<F, Fut>(mut self, f: F)
    where
        F: FnOnce(FaultBoard) -> Fut,
        Fut: Future<Output = ()> + 'static,
    {
        let fut = f(self.faults.clone());
        self.sim.client("client", async move {
            fut.await;
            Ok(())
        });
        self.sim.run().unwrap();
    }
}

fn request(model: &str, text: &str) -> ChatRequest {
    let body = json!({ "messages": [{ "role": "user", "content": text }] });
    ChatRequest {
        model: model.into(),
        body: body.as_object().unwrap().clone(),
        model_pub_key: None,
        client_pub_key: None,
    }
}

async fn near() -> NearProvider {
    NearProvider::discover_with(http_client(), &url("near-1"), TIMEOUTS)
        .await
        .expect("discovery")
}

/// Every item of a stream up to its end or first error.
async fn drain(mut s: ChatStream) -> (Vec<StreamItem>, Option<ProviderError>) {
    let mut items = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(i) => items.push(i),
            Err(e) => return (items, Some(e)),
        }
    }
    (items, None)
}

fn content_of(items: &[StreamItem]) -> String {
    items
        .iter()
        .filter_map(|i| match i {
            StreamItem::Chunk(b) => {
                let v: Value = serde_json::from_slice(b).unwrap();
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            }
            StreamItem::Metered(_) | StreamItem::Done => None,
        })
        .collect()
}

fn status(status: u16) -> Fault {
    Fault::HttpStatus {
        status,
        code: None,
        message: None,
    }
}

#[test]
fn near_json_and_stream_round_trip() {
    let w = world(1);
    let key = w.near_key.clone();
    w.run(|_| async move {
        let p = near().await;
        assert_eq!(p.id().as_str(), "near-1");
        assert_eq!(p.tier(), Tier::Near);
        assert_eq!(p.signing_keys(), [key]);

        let resp = p.chat_completion(&request(MODEL, "hello")).await.unwrap();
        let v: Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["model"], MODEL);
        assert_eq!(v["choices"][0]["message"]["content"], "near-1 says: hello");
        assert_eq!(v["id"], "chatcmpl-near-1-1");

        let s = p
            .chat_completion_stream(&request(MODEL, "again"))
            .await
            .unwrap();
        let (items, err) = drain(s).await;
        assert_eq!(err, None);
        assert_eq!(items.len(), 6, "five chunks and [DONE]: {items:?}");
        assert_eq!(items.last(), Some(&StreamItem::Done));
        assert_eq!(content_of(&items), "near-1 says: again");
        for item in &items[..5] {
            let StreamItem::Chunk(b) = item else { panic!() };
            let v: Value = serde_json::from_slice(b).unwrap();
            assert_eq!(v["model"], MODEL);
            assert_eq!(v["id"], "chatcmpl-near-1-2");
        }
    });
}

#[test]
fn attestation_key_discovery_follows_the_seed_and_its_faults() {
    let w = world(2);
    // Keys derive from the seed: another seed, another key.
    assert_ne!(w.near_key, world(3).near_key);
    assert_eq!(w.near_key, world(2).near_key);
    let key = w.near_key.clone();
    w.run(|faults| async move {
        // A default-scope fault hits service traffic, not the report.
        faults.inject("near-1", status(503).rule().times(1));
        assert_eq!(near().await.signing_keys(), std::slice::from_ref(&key));
        faults.clear("near-1");

        faults.inject("near-1", status(503).rule().on(Scope::Attestation).times(1));
        let err = NearProvider::discover_with(http_client(), &url("near-1"), TIMEOUTS)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProviderError::Status { status: 503, .. }),
            "{err:?}"
        );

        faults.inject(
            "near-1",
            Fault::CutStreamAfter { after_chunks: 0 }
                .rule()
                .on(Scope::Attestation)
                .times(1),
        );
        let err = NearProvider::discover_with(http_client(), &url("near-1"), TIMEOUTS)
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::BodyDecode(_)), "{err:?}");
        assert_eq!(near().await.signing_keys(), [key]);
    });
}

#[test]
fn status_faults_surface_as_status_errors() {
    world(4).run(|faults| async move {
        let p = near().await;
        let req = request(MODEL, "hi");
        faults.inject("near-1", status(503).rule().times(2));
        for _ in 0..2 {
            let err = p.chat_completion(&req).await.unwrap_err();
            assert!(
                // Kept raw (R31 extraction; redaction is where it is shown).
                matches!(&err, ProviderError::Status { status: 503, message }
                    if message == "near-1: injected Service Unavailable at http://near-1:8000/v1"),
                "{err:?}"
            );
        }
        assert!(p.chat_completion(&req).await.is_ok(), "times = 2 expired");

        faults.inject("near-1", status(503).rule().times(1));
        let err = p.chat_completion_stream(&req).await.err().unwrap();
        assert!(
            matches!(err, ProviderError::Status { status: 503, .. }),
            "{err:?}"
        );

        faults.inject("near-1", status(429).rule().times(1));
        let err = p.chat_completion(&req).await.unwrap_err();
        assert!(
            matches!(err, ProviderError::Status { status: 429, .. }),
            "{err:?}"
        );

        // R31: the body's `error.message` is what the router reads (R36).
        let media = Fault::HttpStatus {
            status: 500,
            code: Some("ignored".into()),
            message: Some("failed to fetch image: 403 Client Error: Forbidden".into()),
        };
        faults.inject("near-1", media.rule().times(1));
        let err = p.chat_completion(&req).await.unwrap_err();
        assert!(
            matches!(&err, ProviderError::Status { status: 500, message }
                if tiersim_engine::retry::is_client_media(500, message)),
            "{err:?}"
        );
    });
}

#[test]
fn r38_model_not_found_is_said_in_the_text() {
    world(5).run(|faults| async move {
        let p = near().await;
        let err = p
            .chat_completion(&request("other/model", "hi"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                ProviderError::Status {
                    status: 404,
                    message,
                } if tiersim_engine::retry::is_model_not_found(404, message)
            ),
            "{err:?}"
        );
        faults.inject("near-1", Fault::ModelNotFound.rule().times(1));
        let err = p
            .chat_completion_stream(&request(MODEL, "hi"))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                &err,
                ProviderError::Status {
                    status: 404,
                    message,
                } if tiersim_engine::retry::is_model_not_found(404, message)
            ),
            "{err:?}"
        );
    });
}

#[test]
fn resets_surface_as_connection_errors() {
    world(6).run(|faults| async move {
        let p = near().await;
        let req = request(MODEL, "hi");

        faults.inject("near-1", Fault::ResetBeforeBody.rule().times(2));
        let err = p.chat_completion(&req).await.unwrap_err();
        assert!(matches!(err, ProviderError::Connection(_)), "{err:?}");
        let err = p.chat_completion_stream(&req).await.err().unwrap();
        assert!(matches!(err, ProviderError::Connection(_)), "{err:?}");

        faults.inject(
            "near-1",
            Fault::ResetAfterChunks { after_chunks: 2 }.rule().times(2),
        );
        let err = p.chat_completion(&req).await.unwrap_err();
        assert!(matches!(err, ProviderError::Connection(_)), "{err:?}");
        let s = p.chat_completion_stream(&req).await.unwrap();
        let (items, err) = drain(s).await;
        assert_eq!(items.len(), 2, "{items:?}");
        assert!(!items.contains(&StreamItem::Done));
        assert!(matches!(err, Some(ProviderError::Connection(_))), "{err:?}");

        assert!(p.chat_completion(&req).await.is_ok());
    });
}

#[test]
fn latency_beyond_the_deadline_times_out() {
    world(7).run(|faults| async move {
        let p = near().await;
        let req = request(MODEL, "hi");

        faults.inject("near-1", Fault::LatencyMs { ms: 10_000 }.rule().times(2));
        let start = tokio::time::Instant::now();
        assert_eq!(
            p.chat_completion(&req).await.unwrap_err(),
            ProviderError::Timeout
        );
        assert_eq!(start.elapsed().as_secs(), TIMEOUTS.request.as_secs());
        assert_eq!(
            p.chat_completion_stream(&req).await.err(),
            Some(ProviderError::Timeout)
        );

        faults.inject("near-1", Fault::LatencyMs { ms: 1_000 }.rule().times(1));
        assert!(p.chat_completion(&req).await.is_ok(), "within the deadline");

        // The head comes at once; the first chunk only after the idle deadline.
        faults.inject(
            "near-1",
            Fault::SlowFirstTokenMs { ms: 3_000 }.rule().times(1),
        );
        let s = p.chat_completion_stream(&req).await.unwrap();
        let (items, err) = drain(s).await;
        assert!(items.is_empty(), "{items:?}");
        assert_eq!(err, Some(ProviderError::Timeout));

        faults.inject(
            "near-1",
            Fault::SlowFirstTokenMs { ms: 1_500 }.rule().times(1),
        );
        let (items, err) = drain(p.chat_completion_stream(&req).await.unwrap()).await;
        assert_eq!((items.last(), err), (Some(&StreamItem::Done), None));
    });
}

#[test]
fn cut_stream_is_truncated_never_done() {
    world(8).run(|faults| async move {
        let p = near().await;
        let req = request(MODEL, "hi");
        for after_chunks in [0, 2, 5] {
            faults.inject(
                "near-1",
                Fault::CutStreamAfter { after_chunks }.rule().times(1),
            );
            let (items, err) = drain(p.chat_completion_stream(&req).await.unwrap()).await;
            assert_eq!(items.len(), after_chunks as usize, "{items:?}");
            assert!(!items.contains(&StreamItem::Done));
            assert_eq!(err, Some(ProviderError::Truncated));
        }
        // A stream-only fault leaves JSON requests alone.
        faults.inject(
            "near-1",
            Fault::CutStreamAfter { after_chunks: 1 }.rule().times(1),
        );
        assert!(p.chat_completion(&req).await.is_ok());
        assert_eq!(faults.active().len(), 1, "still armed for the next stream");
    });
}

#[test]
fn external_provider_round_trip_and_faults() {
    world(9).run(|faults| async move {
        let p = ExternalProvider::new(http_client(), "openrouter", &url("openrouter"))
            .unwrap()
            .with_timeouts(TIMEOUTS);
        assert_eq!(p.id().as_str(), "external:openrouter");
        assert_eq!(p.tier(), Tier::NonAttested);
        assert!(p.signing_keys().is_empty());
        let resp = p.chat_completion(&request(EXT_MODEL, "yo")).await.unwrap();
        let v: Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "openrouter says: yo");
        let (items, err) = drain(
            p.chat_completion_stream(&request(EXT_MODEL, "yo"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (content_of(&items).as_str(), err),
            ("openrouter says: yo", None)
        );

        faults.inject("openrouter", status(500).rule().times(1));
        let err = p
            .chat_completion(&request(EXT_MODEL, "yo"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProviderError::Status { status: 500, .. }),
            "{err:?}"
        );
        // Faults are per host: NEAR is untouched.
        faults.inject("openrouter", status(500).rule());
        assert!(near()
            .await
            .chat_completion(&request(MODEL, "x"))
            .await
            .is_ok());
    });
}

#[test]
fn catalog_get_patch_edits_and_source_failure() {
    let w = world(10);
    let handle = w.catalog.clone();
    w.run(move |faults| async move {
        let c = CatalogClient::new(http_client(), &url("catalog"), TIMEOUTS).unwrap();
        let models = c.models().await.unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].inference_url.as_deref(), Some("http://near-1"));
        assert_eq!(c.external().await.unwrap()[0].name, "openrouter");

        // Admin write: a partial batch (deactivate one, add one).
        let rows = c
            .patch(vec![
                CatalogPatchRow {
                    id: MODEL.into(),
                    active: Some(false),
                    ..Default::default()
                },
                CatalogPatchRow {
                    id: "a/new".into(),
                    inference_url: Some(Some(url("near-2"))),
                    ..Default::default()
                },
            ])
            .await
            .unwrap();
        let ids: Vec<_> = rows.iter().map(|r| (r.id.as_str(), r.active)).collect();
        assert_eq!(ids, [("a/new", false), (MODEL, false)], "ordered by id");
        assert_eq!(
            rows[1].inference_url.as_deref(),
            Some("http://near-1"),
            "kept"
        );

        // Direct edits from the runner show through HTTP.
        assert!(handle.remove("a/new"));
        handle.add_external(ExternalRow {
            model: "b/ext".into(),
            base_url: url("openrouter"),
            name: "openrouter".into(),
            kind: ExternalRow::OPENAI_COMPATIBLE.into(),
        });
        assert_eq!(c.models().await.unwrap().len(), 1);
        assert_eq!(c.external().await.unwrap().len(), 2);

        // R10 is scriptable: the catalog read fails, the external read does not.
        faults.inject("catalog", status(503).rule().on(Scope::Catalog).times(1));
        let err = c.models().await.unwrap_err();
        assert!(
            matches!(err, ProviderError::Status { status: 503, .. }),
            "{err:?}"
        );
        assert_eq!(c.external().await.unwrap().len(), 2);

        // A failed PATCH writes nothing.
        faults.inject(
            "catalog",
            status(500).rule().on(Scope::CatalogPatch).times(1),
        );
        let patch = vec![CatalogPatchRow {
            id: MODEL.into(),
            active: Some(true),
            ..Default::default()
        }];
        assert!(c.patch(patch.clone()).await.is_err());
        assert!(!handle.models()[0].active);
        assert!(c.patch(patch).await.unwrap()[0].active);
        assert_eq!(
            faults.fired().iter().map(|f| f.kind).collect::<Vec<_>>(),
            [RequestKind::Catalog, RequestKind::CatalogPatch]
        );
    });
}

/// Everything the client received in one scripted session, and when, as bytes.
fn session_bytes(seed: u64) -> Vec<u8> {
    #[derive(serde::Deserialize)]
    struct Step {
        fault: FaultInjection,
    }
    let out = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = out.clone();
    world(seed).run(move |faults| async move {
        let log = |bytes: &[u8]| {
            let mut o = sink.lock().unwrap();
            o.extend_from_slice(bytes);
            o.push(b'\n');
        };
        let start = tokio::time::Instant::now();
        let p = near().await;
        log(p.signing_keys()[0].as_bytes());
        let req = request(MODEL, "determinism");
        for step in 0..6 {
            let fault = match step {
                1 => Some(r#"fault = { host = "near-1", http_status = 503 }"#),
                3 => Some(r#"fault = { host = "near-1", reset_after_chunks = 3 }"#),
                4 => Some(r#"fault = { host = "near-1", latency_ms = 250 }"#),
                _ => None,
            };
            if let Some(src) = fault {
                faults.apply(toml::from_str::<Step>(src).unwrap().fault);
            }
            match p.chat_completion(&req).await {
                Ok(r) => log(&r.body),
                Err(e) => log(e.to_string().as_bytes()),
            }
            match p.chat_completion_stream(&req).await {
                Ok(s) => {
                    let (items, err) = drain(s).await;
                    for i in items {
                        match i {
                            StreamItem::Chunk(b) => log(&b),
                            StreamItem::Metered(b) => {
                                log(b"(metered) ");
                                log(&b)
                            }
                            StreamItem::Done => log(b"[DONE]"),
                        }
                    }
                    log(format!("{err:?}").as_bytes());
                }
                Err(e) => log(e.to_string().as_bytes()),
            }
            faults.clear("near-1");
            // Simulated time is part of the outcome: it must replay too.
            log(format!("at {:?}", start.elapsed()).as_bytes());
        }
    });
    let bytes = out.lock().unwrap().clone();
    bytes
}

#[test]
fn same_seed_same_bytes() {
    let a = session_bytes(42);
    let b = session_bytes(42);
    assert!(!a.is_empty());
    assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
    assert_ne!(
        a,
        session_bytes(43),
        "the seed reaches the bytes (signing key)"
    );
}

#[test]
fn partitions_and_held_links_fail_as_connection_or_timeout() {
    world(11).run(|faults| async move {
        let http = http_client().with_connect_timeout(Duration::from_secs(1));
        let p = NearProvider::discover_with(http, &url("near-1"), TIMEOUTS)
            .await
            .unwrap();
        let req = request(MODEL, "hi");

        // turmoil drops a partitioned SYN together with its reply channel:
        // the connect is refused at once.
        turmoil::partition("client", "near-1");
        let err = p.chat_completion(&req).await.unwrap_err();
        assert_eq!(err, ProviderError::Connection("connection refused".into()));
        turmoil::repair("client", "near-1");
        assert!(p.chat_completion(&req).await.is_ok());

        // A held link never answers the SYN (no retransmit either): the
        // connect deadline ends it, as a connection failure.
        turmoil::hold("client", "near-1");
        let start = tokio::time::Instant::now();
        let err = p.chat_completion(&req).await.unwrap_err();
        assert_eq!(err, ProviderError::Connection("connect timed out".into()));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        turmoil::release("client", "near-1");

        // Connected, then the link holds the chunks (due in 500 ms, well
        // within the idle deadline): the stream goes idle.
        faults.inject(
            "near-1",
            Fault::SlowFirstTokenMs { ms: 500 }.rule().times(1),
        );
        let s = p.chat_completion_stream(&req).await.unwrap();
        turmoil::hold("client", "near-1");
        let (items, err) = drain(s).await;
        turmoil::release("client", "near-1");
        assert!(items.is_empty(), "{items:?}");
        assert_eq!(err, Some(ProviderError::Timeout));
    });
}

#[test]
fn pubkey_headers_reach_the_backend() {
    let w = world(12);
    let key = w.near_key.clone();
    w.run(|_| async move {
        let p = near().await;
        let mut req = request(MODEL, "secret");
        req.model_pub_key = Some(key.to_uppercase());
        assert!(p.chat_completion(&req).await.is_ok());
        req.model_pub_key = Some("00".repeat(32));
        let err = p.chat_completion(&req).await.unwrap_err();
        assert!(
            matches!(err, ProviderError::Status { status: 400, .. }),
            "{err:?}"
        );
    });
}

/// Issue 9: the router's body limit is the one a client meets. A body the
/// router accepts (at most `MAX_REQUEST_BODY`, here one that grows when
/// re-serialized: `1e15` is forwarded as `1000000000000000.0`) is accepted
/// by the simulated NEAR backend, never refused with hyper's "Failed to
/// buffer the request body".
#[test]
fn router_accepted_body_is_never_refused_upstream() {
    use tiersim_engine::api::{validate_chat, MAX_REQUEST_BODY};
    let head =
        format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}],"x":["#);
    let mut body = head.into_bytes();
    while body.len() + 5 + 2 < MAX_REQUEST_BODY {
        body.extend_from_slice(b"1e15,");
    }
    body.extend_from_slice(b"0]}");
    assert!(body.len() <= MAX_REQUEST_BODY);
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let req = validate_chat(&headers, &body)
        .expect("the router accepts it")
        .request;
    let forwarded = serde_json::to_vec(&req.body).unwrap().len();
    assert!(
        forwarded > 3 * MAX_REQUEST_BODY,
        "it grows: {forwarded} bytes"
    );
    let w = world(13);
    w.run(|_| async move {
        let p = near().await;
        let r = p.chat_completion(&req).await;
        assert!(r.is_ok(), "{r:?}");
    });
}
