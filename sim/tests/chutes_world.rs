//! `ChutesProvider` against the simulated Chutes gateway on a turmoil
//! network: round trips (v1, v2) with the canonical id (R3), every R23
//! adversarial case, R24 refusals, single-use nonces and §7b key binding,
//! the v1 residual and v2 detection (R25), and seed determinism.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::{json, Value};
use tiersim::fault::{EvidenceFlaw, Fault, FaultBoard, RequestKind};
use tiersim::hosts::{ChutesGateway, ChutesHandle};
use tiersim::net::{http_client, url};
use tiersim_engine::chutes::attest::SimulatedVendor;
use tiersim_engine::chutes::e2ee::{seal_request, StreamVersion};
use tiersim_engine::chutes::wire::{InstanceList, HEADER_CHUTE_ID, HEADER_INSTANCE_ID};
use tiersim_engine::chutes::{shared_rng, ChutesConfig, ChutesProvider};
use tiersim_engine::openai::Timeouts;
use tiersim_engine::{
    Capabilities, ChatRequest, ChatStream, Provider, ProviderError, Refusal, StreamItem, Tier,
};

/// A NEAR-served canonical id whose Chutes fallback is a v1 chute.
const CANON: &str = "zai-org/GLM-5.1-FP8";
const SLUG: &str = "zai-org/GLM-5.1-TEE";
/// A Chutes-only model on a chute that speaks the hardened v2 stream.
const CANON_V2: &str = "moonshotai/Kimi-K2.6";
const SLUG_V2: &str = "moonshotai/Kimi-K2.6-TEE";
const TIMEOUTS: Timeouts = Timeouts {
    request: Duration::from_secs(10),
    stream_idle: Duration::from_secs(5),
};

struct World {
    sim: turmoil::Sim<'static>,
    faults: FaultBoard,
    chutes: ChutesHandle,
    vendor: [u8; 32],
    seed: u64,
}

fn world(seed: u64) -> World {
    world_with(seed, |g| g)
}

fn world_with(seed: u64, tune: impl FnOnce(ChutesGateway) -> ChutesGateway) -> World {
    world_ticking(seed, Duration::from_millis(1), tune)
}

/// [`world_with`] on a coarser turmoil step (long simulated runs).
fn world_ticking(
    seed: u64,
    tick: Duration,
    tune: impl FnOnce(ChutesGateway) -> ChutesGateway,
) -> World {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(tick)
        .rng_seed(seed)
        .build();
    let faults = FaultBoard::new();
    let gateway = tune(
        ChutesGateway::new("chutes")
            .chute(SLUG, 2, StreamVersion::V1)
            .chute(SLUG_V2, 1, StreamVersion::V2)
            .world_seed(seed)
            .faults(&faults),
    );
    let vendor = gateway.vendor_public_key();
    let chutes = gateway.install(&mut sim);
    World {
        sim,
        faults,
        chutes,
        vendor,
        seed,
    }
}

impl World {
    /// Runs `f` as the one client of the world, to completion.
    fn run<F, Fut>(mut self, f: F)
    where
        F: FnOnce(Ctx) -> Fut,
        Fut: Future<Output = ()> + 'static,
    {
        let fut = f(self.ctx());
        self.sim.client("client", async move {
            fut.await;
            Ok(())
        });
        self.sim.run().unwrap();
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            faults: self.faults.clone(),
            chutes: self.chutes.clone(),
            vendor: self.vendor,
            seed: self.seed,
        }
    }
}

/// What a test's client sees of the world.
#[derive(Clone)]
struct Ctx {
    faults: FaultBoard,
    chutes: ChutesHandle,
    vendor: [u8; 32],
    seed: u64,
}

impl Ctx {
    /// The v1 provider of `CANON`, streaming on.
    fn v1(&self) -> ChutesProvider {
        self.provider(CANON, SLUG, StreamVersion::V1, true)
    }

    /// The v2 provider of `CANON_V2`, streaming on.
    fn v2(&self) -> ChutesProvider {
        self.provider(CANON_V2, SLUG_V2, StreamVersion::V2, true)
    }

    fn provider(
        &self,
        canonical: &str,
        slug: &str,
        version: StreamVersion,
        streaming: bool,
    ) -> ChutesProvider {
        self.config(canonical, slug, version, streaming)
            .build(
                http_client(),
                shared_rng(ChaCha20Rng::seed_from_u64(self.seed ^ 0x5eed)),
            )
            .unwrap()
    }

    fn config(
        &self,
        canonical: &str,
        slug: &str,
        version: StreamVersion,
        streaming: bool,
    ) -> ChutesConfig {
        ChutesConfig::new(
            url("chutes"),
            "test-key",
            canonical,
            slug,
            Arc::new(SimulatedVendor::new(self.vendor)),
        )
        .streaming(streaming)
        .stream_version(version)
        .timeouts(TIMEOUTS)
    }
}

fn request(model: &str, text: &str) -> ChatRequest {
    let body = json!({ "model": model, "messages": [{ "role": "user", "content": text }] });
    ChatRequest {
        model: model.into(),
        body: body.as_object().unwrap().clone(),
        model_pub_key: None,
        client_pub_key: None,
    }
}

/// Everything a streamed request produced: the items up to the first
/// error, and that error (from the open or from the stream). Reads on
/// after an error to prove nothing follows it.
async fn collect(
    opened: Result<ChatStream, ProviderError>,
) -> (Vec<StreamItem>, Option<ProviderError>) {
    let mut s = match opened {
        Ok(s) => s,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut items = Vec::new();
    let mut err = None;
    while let Some(item) = s.next().await {
        match item {
            Ok(i) => {
                assert!(err.is_none(), "an item after the error: {i:?}");
                assert!(
                    !items.contains(&StreamItem::Done),
                    "an item after Done: {i:?}"
                );
                items.push(i);
            }
            Err(e) => {
                assert!(err.is_none(), "a second error: {e:?}");
                err = Some(e);
            }
        }
    }
    (items, err)
}

fn chunk_json(item: &StreamItem) -> Option<Value> {
    match item {
        StreamItem::Chunk(b) => Some(serde_json::from_slice(b).unwrap()),
        // Never the client's (R59).
        StreamItem::Metered(_) | StreamItem::Done => None,
    }
}

fn content_of(items: &[StreamItem]) -> String {
    items
        .iter()
        .filter_map(chunk_json)
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// Every chunk carries the canonical id, never the slug (R3).
fn assert_canonical(items: &[StreamItem], canonical: &str) {
    for v in items.iter().filter_map(chunk_json) {
        assert_eq!(v["model"], canonical, "{v}");
    }
}

fn is_integrity(e: &Option<ProviderError>, needle: &str) -> bool {
    matches!(e, Some(ProviderError::Integrity(m)) if m.contains(needle))
}

fn is_attestation(e: &Option<ProviderError>, needle: &str) -> bool {
    matches!(e, Some(ProviderError::Attestation(m)) if m.contains(needle))
}

// ------------------------------------------------------------- round trips

#[test]
fn r3_json_round_trip_carries_the_canonical_id() {
    world(1).run(|ctx| async move {
        let p = ctx.v1();
        assert_eq!(p.id().as_str(), format!("chutes:{SLUG}"));
        assert_eq!(p.tier(), Tier::Attested3p);
        assert!(p.signing_keys().is_empty());

        let resp = p.chat_completion(&request(CANON, "hello")).await.unwrap();
        let v: Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["model"], CANON, "rewritten from the slug");
        assert_eq!(v["choices"][0]["message"]["content"], "chutes says: hello");
        assert_eq!(v["id"], "chatcmpl-chutes-1");
        assert!(!String::from_utf8_lossy(&resp.body).contains(SLUG));

        // Upstream, the decrypted request named the slug.
        let inv = ctx.chutes.invocations();
        assert_eq!(inv.len(), 1);
        assert_eq!(inv[0].model.as_deref(), Some(SLUG));
        assert!(!inv[0].stream);
        assert_eq!(inv[0].status, 200);
    });
}

#[test]
fn r3_stream_round_trips_v1_and_v2() {
    world(2).run(|ctx| async move {
        for (p, canonical, version) in [
            (ctx.v1(), CANON, StreamVersion::V1),
            (ctx.v2(), CANON_V2, StreamVersion::V2),
        ] {
            let opened = p.chat_completion_stream(&request(canonical, "hi")).await;
            let (items, err) = collect(opened).await;
            assert_eq!(err, None, "{version:?}");
            assert_eq!(items.len(), 6, "five chunks and Done: {items:?}");
            assert_eq!(items.last(), Some(&StreamItem::Done));
            assert_eq!(content_of(&items), "chutes says: hi");
            assert_canonical(&items, canonical);
            // The plaintext usage event is billing, not content.
            assert!(items
                .iter()
                .filter_map(chunk_json)
                .all(|v| v.get("usage").is_none()));
            let last = ctx.chutes.invocations().pop().unwrap();
            assert_eq!(last.stream_version, Some(version));
            assert!(last.stream);
        }
    });
}

#[test]
fn r25_v2_client_refuses_a_v1_only_chute() {
    // A v2 client on a chute that only speaks v1 (a downgrade): the first
    // frame fails under the v2 key; nothing is forwarded.
    world(3).run(|ctx| async move {
        let p = ctx.provider(CANON, SLUG, StreamVersion::V2, true);
        let (items, err) = collect(p.chat_completion_stream(&request(CANON, "x")).await).await;
        assert!(items.is_empty(), "{items:?}");
        assert!(is_integrity(&err, "frame 0"), "{err:?}");
    });
}

// ------------------------------------------------------------------ R23

#[test]
fn r23_forged_outer_done_is_a_truncation() {
    world(4).run(|ctx| async move {
        let p = ctx.v1();
        for after in [0u32, 2, 5] {
            ctx.faults.inject(
                "chutes",
                Fault::ForgedOuterDone {
                    after_frames: after,
                }
                .rule()
                .times(1),
            );
            let (items, err) = collect(p.chat_completion_stream(&request(CANON, "hi")).await).await;
            assert_eq!(items.len(), after as usize, "{items:?}");
            assert!(!items.contains(&StreamItem::Done));
            assert_canonical(&items, CANON);
            assert_eq!(err, Some(ProviderError::Truncated));
        }
    });
}

#[test]
fn r23_eof_without_inner_done_is_a_truncation() {
    world(5).run(|ctx| async move {
        let p = ctx.v1();
        for after in [0u32, 3] {
            ctx.faults.inject(
                "chutes",
                Fault::CutStreamAfter {
                    after_chunks: after,
                }
                .rule()
                .times(1),
            );
            let (items, err) = collect(p.chat_completion_stream(&request(CANON, "hi")).await).await;
            assert_eq!(items.len(), after as usize);
            assert!(!items.contains(&StreamItem::Done));
            assert_eq!(err, Some(ProviderError::Truncated));
        }
        // A connection reset mid-stream is a connection error, never Done.
        ctx.faults.inject(
            "chutes",
            Fault::ResetAfterChunks { after_chunks: 2 }.rule().times(1),
        );
        let (items, err) = collect(p.chat_completion_stream(&request(CANON, "hi")).await).await;
        assert_eq!(items.len(), 2, "{err:?}");
        assert!(matches!(err, Some(ProviderError::Connection(_))), "{err:?}");
    });
}

#[test]
fn r23_e2e_error_is_a_typed_upstream_error_before_any_content() {
    world(6).run(|ctx| async move {
        let p = ctx.v1();
        ctx.faults.inject("chutes", Fault::E2eError.rule().times(1));
        // Before any content: the open itself fails, retryable as a 502.
        let err = p
            .chat_completion_stream(&request(CANON, "hi"))
            .await
            .err()
            .expect("the open fails");
        assert!(
            matches!(&err, ProviderError::Status { status: 502, message, .. }
                if message.contains("instance failed")),
            "{err:?}"
        );
        // The next stream is fine again.
        let (items, err) = collect(p.chat_completion_stream(&request(CANON, "hi")).await).await;
        assert_eq!((items.last(), err), (Some(&StreamItem::Done), None));
    });
}

#[test]
fn r23_frame_before_init_bad_base64_and_aead_failure_are_fatal() {
    world(7).run(|ctx| async move {
        let p = ctx.v1();
        let cases: [(Fault, usize, &str); 3] = [
            (Fault::FrameBeforeInit, 0, "before e2e_init"),
            (Fault::BadBase64Frame { index: 2 }, 2, "base64"),
            (
                Fault::CorruptFrame { index: 3 },
                3,
                "frame 3 failed authentication",
            ),
        ];
        for (fault, forwarded, needle) in cases {
            ctx.faults.inject("chutes", fault.clone().rule().times(1));
            let (items, err) = collect(p.chat_completion_stream(&request(CANON, "hi")).await).await;
            assert_eq!(items.len(), forwarded, "{fault}: {items:?}");
            assert!(!items.contains(&StreamItem::Done), "{fault}");
            assert_canonical(&items, CANON);
            assert!(is_integrity(&err, needle), "{fault}: {err:?}");
        }
        // The last corrupted frame is the inner [DONE] itself: no Done.
        ctx.faults
            .inject("chutes", Fault::CorruptFrame { index: 5 }.rule().times(1));
        let (items, err) = collect(p.chat_completion_stream(&request(CANON, "hi")).await).await;
        assert_eq!(items.len(), 5);
        assert!(!items.contains(&StreamItem::Done));
        assert!(is_integrity(&err, "frame 5"), "{err:?}");
    });
}

#[test]
fn r23_oversized_line_is_rejected() {
    world(8).run(|ctx| async move {
        let p = ctx.v1();
        ctx.faults
            .inject("chutes", Fault::OversizedLine.rule().times(1));
        let (items, err) = collect(p.chat_completion_stream(&request(CANON, "hi")).await).await;
        assert_eq!(items.len(), 1, "the frame before the giant line: {items:?}");
        assert!(is_integrity(&err, "exceeds"), "{err:?}");
    });
}

#[test]
fn r23_gzip_bomb_is_rejected() {
    world(9).run(|ctx| async move {
        let p = ctx.v1();
        ctx.faults.inject("chutes", Fault::GzipBomb.rule().times(1));
        let err = p.chat_completion(&request(CANON, "hi")).await.unwrap_err();
        assert!(is_integrity(&Some(err.clone()), "exceeds"), "{err:?}");
        assert!(p.chat_completion(&request(CANON, "hi")).await.is_ok());
    });
}

#[test]
fn r23_wrong_instance_key_fails_closed() {
    world(10).run(|ctx| async move {
        let p = ctx.v1();
        // The gateway lists its own key with the real key's evidence (§7b).
        ctx.faults.inject("chutes", Fault::WrongKey.rule().times(1));
        let err = p.chat_completion(&request(CANON, "hi")).await.unwrap_err();
        assert!(
            is_attestation(&Some(err.clone()), "report data does not bind"),
            "{err:?}"
        );
        let (items, err) = collect(p.chat_completion_stream(&request(CANON, "hi")).await).await;
        assert_eq!(
            (items.last(), err),
            (Some(&StreamItem::Done), None),
            "the tainted listing was not kept: a fresh one serves"
        );
        assert_eq!(
            ctx.chutes.invocations().len(),
            1,
            "nothing was ever sealed to the substituted key"
        );

        // A router trusting another vendor rejects the real evidence too.
        let mut untrusted = ctx.config(CANON, SLUG, StreamVersion::V1, true);
        untrusted.verifier = Arc::new(SimulatedVendor::new(
            ChutesGateway::new("x").world_seed(999).vendor_public_key(),
        ));
        let p = untrusted
            .build(http_client(), shared_rng(ChaCha20Rng::seed_from_u64(1)))
            .unwrap();
        let err = p.chat_completion(&request(CANON, "hi")).await.unwrap_err();
        assert!(
            is_attestation(&Some(err.clone()), "not signed by the trusted vendor"),
            "{err:?}"
        );
        assert_eq!(ctx.chutes.invocations().len(), 1);
    });
}

// ------------------------------------------------------------------ R24

#[test]
fn r24_refusals_make_no_network_call() {
    world(11).run(|ctx| async move {
        let off = ctx.provider(CANON, SLUG, StreamVersion::V1, false);
        assert_eq!(
            off.capabilities(),
            Capabilities {
                streaming: false,
                client_e2ee: false
            }
        );
        assert_eq!(
            off.chat_completion_stream(&request(CANON, "hi"))
                .await
                .err(),
            Some(ProviderError::Refused(Refusal::StreamingDisabled))
        );
        let mut e2ee = request(CANON, "hi");
        e2ee.client_pub_key = Some("ab".repeat(32));
        for p in [&off, &ctx.v1()] {
            assert_eq!(
                p.chat_completion(&e2ee).await.err(),
                Some(ProviderError::Refused(Refusal::ClientE2eeUnsupported))
            );
            assert_eq!(
                p.chat_completion_stream(&e2ee).await.err(),
                Some(ProviderError::Refused(Refusal::ClientE2eeUnsupported))
            );
        }
        assert_eq!(ctx.chutes.requests(), 0, "no request reached Chutes");
        // Streaming off still serves JSON.
        assert!(off.chat_completion(&request(CANON, "hi")).await.is_ok());
    });
}

// ------------------------------------------------------ nonces (SPEC §7)

#[test]
fn s7_nonces_are_single_use_and_refetched_when_exhausted_or_expired() {
    let w = world_with(12, |g| {
        g.nonces_per_instance(2).nonce_ttl(Duration::from_secs(30))
    });
    w.run(|ctx| async move {
        let p = ctx.v1();
        // 2 instances × 2 nonces per listing: 9 requests need 3 listings.
        for i in 0..9 {
            let req = request(CANON, &format!("n{i}"));
            if i % 2 == 0 {
                assert!(p.chat_completion(&req).await.is_ok());
            } else {
                let (items, err) = collect(p.chat_completion_stream(&req).await).await;
                assert_eq!((items.last(), err), (Some(&StreamItem::Done), None));
            }
        }
        let inv = ctx.chutes.invocations();
        assert_eq!(inv.len(), 9);
        assert!(inv.iter().all(|i| i.status == 200));
        let mut nonces: Vec<_> = inv.iter().map(|i| i.nonce.clone()).collect();
        nonces.sort();
        nonces.dedup();
        assert_eq!(nonces.len(), 9, "no nonce sent twice");
        // Round robin over both instances.
        assert_ne!(inv[0].instance_id, inv[1].instance_id);
        let listings = |c: &ChutesHandle| {
            c.served_log()
                .iter()
                .filter(|s| s.kind == RequestKind::Instances)
                .count()
        };
        assert_eq!(listings(&ctx.chutes), 3);
        let models = ctx
            .chutes
            .served_log()
            .iter()
            .filter(|s| s.kind == RequestKind::Models)
            .count();
        assert_eq!(models, 1, "the chute id is cached");

        // One nonce is left; after the listing expires it is not used.
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(p.chat_completion(&request(CANON, "late")).await.is_ok());
        assert_eq!(listings(&ctx.chutes), 4, "expired: listed again");
        assert_eq!(ctx.chutes.invocations().last().unwrap().status, 200);
    });
}

/// Instance listings the gateway served.
fn listings(c: &ChutesHandle) -> usize {
    c.served_log()
        .iter()
        .filter(|s| s.kind == RequestKind::Instances)
        .count()
}

#[test]
fn r60_snapshot_serves_for_nonce_expires_in_minus_5s() {
    // nonce_expires_in 60: the snapshot serves 55 s, then is listed again.
    let w = world_with(22, |g| {
        g.nonces_per_instance(20).nonce_ttl(Duration::from_secs(60))
    });
    w.run(|ctx| async move {
        let p = ctx.v1();
        p.chat_completion(&request(CANON, "a")).await.unwrap();
        assert_eq!(listings(&ctx.chutes), 1);
        tokio::time::sleep(Duration::from_secs(54)).await;
        p.chat_completion(&request(CANON, "b")).await.unwrap();
        assert_eq!(listings(&ctx.chutes), 1, "54 s: the same snapshot");
        tokio::time::sleep(Duration::from_secs(2)).await;
        p.chat_completion(&request(CANON, "c")).await.unwrap();
        assert_eq!(listings(&ctx.chutes), 2, "past 55 s: listed again");
    });
}

#[test]
fn r60_nonce_expires_in_of_5s_or_less_lists_on_every_request() {
    let w = world_with(23, |g| g.nonce_ttl(Duration::from_secs(5)));
    w.run(|ctx| async move {
        let p = ctx.v1();
        for i in 1..=3 {
            p.chat_completion(&request(CANON, "a")).await.unwrap();
            assert_eq!(listings(&ctx.chutes), i);
        }
        let inv = ctx.chutes.invocations();
        assert!(
            inv.iter().all(|i| i.status == 200),
            "each used its own listing"
        );
    });
}

#[test]
fn s7_gateway_rejects_reused_unknown_and_expired_nonces() {
    let w = world_with(13, |g| g.nonce_ttl(Duration::from_secs(30)));
    let chute_id = ChutesGateway::new("chutes").world_seed(13).chute_id(SLUG);
    w.run(|ctx| async move {
        let http = http_client();
        let get = http::Request::get(format!("{}/e2e/instances/{chute_id}", url("chutes")))
            .header("authorization", "Bearer k")
            .body(Bytes::new())
            .unwrap();
        let (status, _, body) = http
            .fetch(get, Duration::from_secs(5), 1 << 20)
            .await
            .unwrap();
        assert_eq!(status, 200);
        let list: InstanceList = serde_json::from_slice(&body).unwrap();
        assert_eq!(list.nonce_expires_in, 30.0);
        let inst = &list.instances[0];
        let pk = B64.decode(&inst.e2e_pubkey).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let invoke = |nonce: &str, rng: &mut ChaCha20Rng| {
            let req = json!({ "model": SLUG, "messages": [{ "role": "user", "content": "x" }] });
            let (blob, _) = seal_request(rng, &pk, req).unwrap();
            http::Request::post(format!("{}/e2e/invoke", url("chutes")))
                .header("authorization", "Bearer k")
                .header(HEADER_CHUTE_ID, chute_id.as_str())
                .header(HEADER_INSTANCE_ID, inst.instance_id.as_str())
                .header("x-e2e-nonce", nonce)
                .header("x-e2e-stream", "false")
                .header("x-e2e-path", "/v1/chat/completions")
                .body(Bytes::from(blob))
                .unwrap()
        };
        let status_of = |req| {
            let http = http.clone();
            async move {
                let (status, _, body) = http
                    .fetch(req, Duration::from_secs(5), 1 << 20)
                    .await
                    .unwrap();
                (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
            }
        };
        let n0 = &inst.nonces[0];
        assert_eq!(status_of(invoke(n0, &mut rng)).await.0, 200);
        let (s, body) = status_of(invoke(n0, &mut rng)).await;
        assert_eq!((s, body.contains("nonce_reused")), (400, true), "{body}");
        let (s, body) = status_of(invoke("00ff", &mut rng)).await;
        assert_eq!((s, body.contains("invalid_nonce")), (400, true), "{body}");
        tokio::time::sleep(Duration::from_secs(31)).await;
        let (s, body) = status_of(invoke(&inst.nonces[1], &mut rng)).await;
        assert_eq!((s, body.contains("expired")), (400, true), "{body}");
        // Without a bearer key nothing is listed.
        let get = http::Request::get(format!("{}/v1/models", url("chutes")))
            .body(Bytes::new())
            .unwrap();
        assert_eq!(status_of(get).await.0, 401);
        let statuses: Vec<u16> = ctx.chutes.invocations().iter().map(|i| i.status).collect();
        assert_eq!(statuses, [200, 400, 400, 400]);
    });
}

#[test]
fn r39_gateway_restart_relists_once_then_a_second_refusal_is_a_retryable_503() {
    // The gateway forgets its nonces on restart: the provider's cached one
    // is refused (400, "nonce expired or never issued"), a stale target. It
    // drops the snapshot and lists again once, transparently. A nonce
    // refused on the fresh listing too is R39's retryable 503.
    let mut w = world(14);
    let ctx = w.ctx();
    let first_done = Arc::new(AtomicBool::new(false));
    let restarted = Arc::new(AtomicBool::new(false));
    let (flag, seen) = (first_done.clone(), restarted.clone());
    w.sim.client("client", async move {
        let p = ctx.v1();
        assert!(p.chat_completion(&request(CANON, "a")).await.is_ok());
        flag.store(true, Ordering::SeqCst);
        while !seen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let resp = p.chat_completion(&request(CANON, "b")).await.unwrap();
        let v: Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "chutes says: b");
        let statuses: Vec<u16> = ctx.chutes.invocations().iter().map(|i| i.status).collect();
        assert_eq!(statuses, [200, 400, 200]);

        let stale = Fault::HttpStatus {
            status: 400,
            code: None,
            message: Some("nonce already used".into()),
        };
        ctx.faults.inject(
            "chutes",
            stale.rule().on(tiersim::fault::Scope::Chat).times(2),
        );
        let err = p.chat_completion(&request(CANON, "c")).await.unwrap_err();
        assert_eq!(
            err,
            ProviderError::status(
                503,
                "Chutes /e2e/invoke: Chutes temporarily unavailable (stale Chutes E2E target)"
            )
        );
        assert!(matches!(
            tiersim_engine::retry::classify(&err),
            tiersim_engine::retry::Class::Retryable(_)
        ));
        assert!(p.chat_completion(&request(CANON, "d")).await.is_ok());
        Ok(())
    });
    while !w.sim.step().unwrap() {
        if first_done.load(Ordering::SeqCst) && !restarted.load(Ordering::SeqCst) {
            w.sim.bounce("chutes");
            restarted.store(true, Ordering::SeqCst);
        }
    }
}

// ------------------------------------------------------------------ R25

/// The frame faults, and what a v1 client then sees for prompt "hi"
/// (frames: 0 role, 1 "chutes", 2 " says:", 3 " hi", 4 finish, 5 inner [DONE]).
fn tamperings() -> [(Fault, &'static str, usize); 3] {
    [
        (Fault::DropFrame { index: 2 }, "chutes hi", 2),
        (Fault::ReorderFrame { index: 2 }, "chutes hi says:", 2),
        (Fault::ReplayFrame { index: 2 }, "chutes says: says: hi", 3),
    ]
}

#[test]
fn r25_v1_frame_tampering_goes_undetected() {
    world(15).run(|ctx| async move {
        let p = ctx.v1();
        for (fault, altered, _) in tamperings() {
            ctx.faults.inject("chutes", fault.clone().rule().times(1));
            let (items, err) = collect(p.chat_completion_stream(&request(CANON, "hi")).await).await;
            assert_eq!(err, None, "{fault}: v1 cannot tell");
            assert_eq!(items.last(), Some(&StreamItem::Done), "{fault}");
            assert_eq!(content_of(&items), altered, "{fault}");
            assert_canonical(&items, CANON);
        }
    });
}

#[test]
fn r25_v2_frame_tampering_is_detected() {
    world(16).run(|ctx| async move {
        let p = ctx.v2();
        for (fault, _, forwarded) in tamperings() {
            ctx.faults.inject("chutes", fault.clone().rule().times(1));
            let (items, err) =
                collect(p.chat_completion_stream(&request(CANON_V2, "hi")).await).await;
            assert_eq!(items.len(), forwarded, "{fault}: {items:?}");
            assert!(!items.contains(&StreamItem::Done), "{fault}");
            assert!(is_integrity(&err, "out of sequence"), "{fault}: {err:?}");
            assert_canonical(&items, CANON_V2);
        }
        // Untampered, the same provider streams cleanly.
        let (items, err) = collect(p.chat_completion_stream(&request(CANON_V2, "hi")).await).await;
        assert_eq!(
            (content_of(&items).as_str(), err),
            ("chutes says: hi", None)
        );
    });
}

// ------------------------------------------------- HTTP faults, determinism

#[test]
fn r39_http_faults_map_as_chutes_failures() {
    world(17).run(|ctx| async move {
        let p = ctx.v1();
        let req = request(CANON, "hi");
        let status = |status| Fault::HttpStatus {
            status,
            code: None,
            message: None,
        };

        // Discovery fails first: nothing is cached from a failed listing.
        // R39: the status is kept, the body is not.
        ctx.faults.inject("chutes", status(503).rule().times(2));
        for stage in ["resolve chute_id", "resolve chute_id"] {
            let err = p.chat_completion(&req).await.unwrap_err();
            assert_eq!(
                err,
                ProviderError::status(503, format!("{stage}: Chutes returned HTTP 503"))
            );
        }
        assert!(p.chat_completion(&req).await.is_ok());

        // Warm: the invocation itself fails.
        ctx.faults.inject("chutes", status(429).rule().times(1));
        let err = p.chat_completion_stream(&req).await.err().unwrap();
        assert!(
            matches!(err, ProviderError::Status { status: 429, .. }),
            "{err:?}"
        );

        // R39: an injected 403 is neither stale nor kept as HTTP: masked
        // (502 generic), not retryable.
        ctx.faults.inject("chutes", status(403).rule().times(1));
        let err = p.chat_completion(&req).await.unwrap_err();
        assert!(
            matches!(&err, ProviderError::Masked(m) if m.starts_with("Chutes /e2e/invoke: Chutes returned HTTP 403")),
            "{err:?}"
        );
        assert_eq!(
            tiersim_engine::retry::classify(&err),
            tiersim_engine::retry::Class::FallThrough
        );
        assert!(p.chat_completion(&req).await.is_ok());

        // R39: transport failures (a reset, the deadline) are a retryable 503.
        let transport = ProviderError::status(
            503,
            "Chutes /e2e/invoke: Chutes temporarily unavailable (Chutes HTTP transport error)",
        );
        ctx.faults
            .inject("chutes", Fault::ResetBeforeBody.rule().times(1));
        assert_eq!(p.chat_completion(&req).await.unwrap_err(), transport);

        ctx.faults
            .inject("chutes", Fault::LatencyMs { ms: 20_000 }.rule().times(1));
        assert_eq!(p.chat_completion(&req).await.unwrap_err(), transport);

        // A half ciphertext does not open.
        ctx.faults.inject(
            "chutes",
            Fault::CutStreamAfter { after_chunks: 0 }
                .rule()
                .on(tiersim::fault::Scope::ChatJson)
                .times(1),
        );
        let err = p.chat_completion(&req).await.unwrap_err();
        assert!(matches!(err, ProviderError::Integrity(_)), "{err:?}");

        // A slug Chutes does not list is R39's masked error: 502 generic,
        // falls through, not retried.
        let ghost = ctx.provider("a/ghost", "a/ghost-TEE", StreamVersion::V1, true);
        let err = ghost
            .chat_completion(&request("a/ghost", "hi"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProviderError::Masked(m) if m.contains("Chutes lists no chute")),
            "{err:?}"
        );
        assert_eq!(
            tiersim_engine::retry::classify(&err),
            tiersim_engine::retry::Class::FallThrough
        );
    });
}

/// What one scripted session served (gateway bytes) and decrypted (client).
fn session(seed: u64) -> (Vec<Bytes>, Vec<Bytes>) {
    let w = world(seed);
    let handle = w.chutes.clone();
    let out = Arc::new(Mutex::new(Vec::<Bytes>::new()));
    let sink = out.clone();
    w.run(move |ctx| async move {
        let log = |b: Bytes| sink.lock().unwrap().push(b);
        let (v1, v2) = (ctx.v1(), ctx.v2());
        log(v1
            .chat_completion(&request(CANON, "same"))
            .await
            .unwrap()
            .body);
        for (p, m) in [(&v1, CANON), (&v2, CANON_V2)] {
            let (items, err) = collect(p.chat_completion_stream(&request(m, "same")).await).await;
            assert_eq!(err, None);
            for i in items {
                log(match i {
                    StreamItem::Chunk(b) => b,
                    StreamItem::Metered(b) => [&b"(metered) "[..], &b].concat().into(),
                    StreamItem::Done => Bytes::from_static(b"[DONE]"),
                });
            }
        }
    });
    let served = handle.served_log().into_iter().map(|s| s.body).collect();
    let decrypted = out.lock().unwrap().clone();
    (served, decrypted)
}

#[test]
fn r3_same_seed_same_bytes_other_seed_other_ciphertexts_same_content() {
    let (served_a, plain_a) = session(42);
    let (served_b, plain_b) = session(42);
    assert!(served_a.len() >= 5, "models, listings, three invocations");
    assert_eq!(served_a, served_b, "same seed: identical served bytes");
    assert_eq!(plain_a, plain_b);

    let (served_c, plain_c) = session(43);
    assert_eq!(
        plain_a, plain_c,
        "the decrypted content depends on the request only"
    );
    assert_eq!(served_a.len(), served_c.len());
    for (a, c) in served_a.iter().zip(&served_c) {
        assert_ne!(
            a, c,
            "another seed: other keys, ids, nonces and ciphertexts"
        );
    }
}

// ------------------------------------------------------- §7b evidence, R61

/// How many evidence fetches the gateway answered.
fn evidence_fetches(c: &ChutesHandle) -> usize {
    c.served_log()
        .iter()
        .filter(|s| s.kind == RequestKind::Evidence)
        .count()
}

#[test]
fn r61_candidates_start_at_the_counter_and_skip_an_unattested_one() {
    world(21).run(|ctx| async move {
        let p = ctx.v1();
        // SLUG has two instances: requests start at 0, 1, 0 (the counter).
        for _ in 0..3 {
            p.chat_completion(&request(CANON, "hi")).await.unwrap();
        }
        let inv = ctx.chutes.invocations();
        assert_ne!(inv[0].instance_id, inv[1].instance_id);
        assert_eq!(inv[2].instance_id, inv[0].instance_id);
        assert_eq!(evidence_fetches(&ctx.chutes), 3, "one fetch per request");

        // The fourth request starts at instance 1; it is missing from the
        // evidence, so instance 0 serves, in the same attempt.
        ctx.faults.inject(
            "chutes",
            Fault::Evidence {
                flaw: EvidenceFlaw::Missing,
                instance: 1,
            }
            .rule()
            .times(1),
        );
        p.chat_completion(&request(CANON, "hi")).await.unwrap();
        let inv = ctx.chutes.invocations();
        assert_eq!(inv.len(), 4, "instance 1 was sent nothing");
        assert_eq!(inv[3].instance_id, inv[0].instance_id);
        assert_eq!(evidence_fetches(&ctx.chutes), 4);
    });
}

#[test]
fn r7b_every_evidence_flaw_fails_closed_and_sends_nothing() {
    world(22).run(|ctx| async move {
        // CANON_V2's chute has one instance: any flaw leaves no candidate.
        let p = ctx.v2();
        for flaw in EvidenceFlaw::ALL {
            ctx.faults.inject(
                "chutes",
                Fault::Evidence {
                    flaw: *flaw,
                    instance: 0,
                }
                .rule()
                .times(1),
            );
            let before = ctx.chutes.invocations().len();
            let err = p
                .chat_completion(&request(CANON_V2, "hi"))
                .await
                .unwrap_err();
            assert!(
                is_attestation(&Some(err.clone()), "refusing to send inference"),
                "{flaw:?}: {err:?}"
            );
            assert_eq!(
                tiersim_engine::retry::classify(&err),
                tiersim_engine::retry::Class::Fatal,
                "{flaw:?}: never retried"
            );
            assert_eq!(ctx.chutes.invocations().len(), before, "{flaw:?}: sent");
            // The next, honest fetch serves.
            p.chat_completion(&request(CANON_V2, "hi")).await.unwrap();
        }
    });
}

#[test]
fn issue9_gateway_nonce_table_stays_flat_over_thousands_of_requests() {
    // Soak (bounded, simulated): 2,000 Chutes-served requests, one every
    // 50 ms, against a gateway whose nonces live 10 s. The gateway forgets
    // each nonce when it expires, so what it remembers is bounded by one
    // TTL's worth of listings, however many requests it has served.
    let w = world_ticking(23, Duration::from_millis(10), |g| {
        g.nonce_ttl(Duration::from_secs(10))
    });
    w.run(|ctx| async move {
        let p = ctx.v1();
        let mut live_after_warmup = None;
        for i in 0..2_000u32 {
            p.chat_completion(&request(CANON, "soak")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if i == 500 {
                live_after_warmup = Some(ctx.chutes.nonces_peak());
            }
        }
        let issued = ctx.chutes.nonces_issued();
        let peak = ctx.chutes.nonces_peak();
        let warm = live_after_warmup.unwrap();
        assert!(issued >= 2_000, "{issued} nonces issued");
        // One TTL is ~170 requests here, 8 nonces per listing (2 instances
        // × 4): well under 400 live at any time.
        assert!(peak < 400, "peak {peak} live nonces of {issued} issued");
        assert_eq!(peak, warm.max(peak));
        assert!(
            peak <= warm + 16,
            "the table stopped growing after warm-up: {warm} then {peak}"
        );
    });
}
