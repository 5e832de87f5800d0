//! The HTTP edge against hostile input: R16 key headers fail closed, R13
//! admin auth and whole-batch validation, R26 envelope on every error, R27
//! validation before any provider, bounded and escaped echoes.

mod common;

use common::*;
use http::StatusCode;
use serde_json::json;
use tower::ServiceExt;

// ---- R16: key headers fail closed ----

#[tokio::test]
async fn r16_unreadable_model_pub_key_is_400_and_never_routed() {
    let w = World::new(Some(ADMIN_KEY));
    let mut long = NEAR_KEY.to_string();
    long.push('0');
    let cases: [&[u8]; 7] = [
        b"\xff",
        b"\xffa00000000000000000000000000000000000000000000000000000000000001",
        &NEAR_KEY.as_bytes()[..32],
        long.as_bytes(),
        b"zz00000000000000000000000000000000000000000000000000000000000001",
        b"aa00000000000000000000000000000000000000000000000000000000000 01",
        b"",
    ];
    for key in cases {
        let r = w.send(chat(chat_body(), &[("x-model-pub-key", key)])).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{key:?}");
        let e = r.envelope();
        assert_eq!(e["type"], "invalid_parameter", "{key:?}");
        assert!(e["message"].as_str().unwrap().contains("x-model-pub-key"));
    }
    assert_eq!(w.provider_calls(), 0, "no provider saw any of them");
}

#[tokio::test]
async fn r16_unreadable_client_pub_key_is_400_and_never_routed() {
    let w = World::new(Some(ADMIN_KEY));
    let k64 = "b".repeat(64);
    let cases: [&[u8]; 5] = [
        b"\xff",
        b"client-key-1",
        &k64.as_bytes()[..63],
        b"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\tbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        b"g".repeat(128).leak(),
    ];
    for key in cases {
        let r = w
            .send(chat(chat_body(), &[("x-client-pub-key", key)]))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{key:?}");
        assert_eq!(r.envelope()["type"], "invalid_parameter");
    }
    assert_eq!(w.provider_calls(), 0);
}

#[tokio::test]
async fn r16_a_repeated_key_header_is_400() {
    let w = World::new(Some(ADMIN_KEY));
    let r = w
        .send(chat(
            chat_body(),
            &[
                ("x-model-pub-key", NEAR_KEY.as_bytes()),
                ("x-model-pub-key", NEAR_KEY.as_bytes()),
            ],
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(w.provider_calls(), 0);
}

#[tokio::test]
async fn r16_well_formed_keys_route_any_case() {
    let w = World::new(Some(ADMIN_KEY));
    let upper = NEAR_KEY.to_ascii_uppercase();
    let r = w
        .send(chat(chat_body(), &[("x-model-pub-key", upper.as_bytes())]))
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(w.near.calls(), 1);
    let r = w
        .send(chat(
            chat_body(),
            &[("x-client-pub-key", "C".repeat(128).as_bytes())],
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(w.near.calls(), 2);
    // A well-formed key nobody holds: R16's own error, never Chutes.
    let other = "cd".repeat(32);
    let r = w
        .send(chat(chat_body(), &[("x-model-pub-key", other.as_bytes())]))
        .await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST, "R30: 421");
    assert_eq!(r.envelope()["type"], "provider_error");
    assert_eq!(w.chutes.calls(), 0);
}

// ---- R13: admin auth and whole-batch validation ----

fn batch(rows: serde_json::Value) -> String {
    json!({ "models": rows }).to_string()
}

fn deactivate() -> String {
    batch(json!([{ "id": M, "active": false, "inference_url": null }]))
}

#[tokio::test]
async fn r13_admin_without_or_with_a_wrong_key_is_401_and_changes_nothing() {
    let w = World::new(Some(ADMIN_KEY));
    let before = w.app.registry().view();
    let wrong = format!("Bearer {ADMIN_KEY}x");
    let basic = format!("Basic {ADMIN_KEY}");
    for auth in [
        None,
        Some("Bearer"),
        Some("Bearer "),
        Some(wrong.as_str()),
        Some(basic.as_str()),
    ] {
        let r = w.send(admin(auth, deactivate())).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(r.envelope()["type"], "authentication_error");
        assert!(!r.message().contains(ADMIN_KEY), "the key is never echoed");
    }
    assert_eq!(w.app.registry().view(), before);
    // The model still serves.
    let r = w.send(chat(chat_body(), &[])).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn r13_admin_with_the_key_applies_a_valid_batch() {
    let w = World::new(Some(ADMIN_KEY));
    let r = w
        .send(admin(Some(&format!("Bearer {ADMIN_KEY}")), deactivate()))
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(!w.app.registry().view().catalog[M].active);
    assert!(!w.db.rows()[M].active, "written to the catalog too");
    let r = w.send(chat(chat_body(), &[])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "deactivated (R28)");
    assert_eq!(r.envelope()["param"], "model");
}

#[tokio::test]
async fn r13_admin_api_is_closed_when_no_key_is_configured() {
    let w = World::new(None);
    let before = w.app.registry().view();
    for auth in [None, Some("Bearer "), Some("Bearer anything")] {
        let r = w.send(admin(auth, deactivate())).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(
            r.message().contains("no admin key is configured"),
            "{}",
            r.message()
        );
    }
    assert_eq!(w.app.registry().view(), before);
}

#[tokio::test]
async fn r13_batch_with_one_bad_row_applies_nothing_and_names_the_row() {
    let w = World::new(Some(ADMIN_KEY));
    let before = w.app.registry().view();
    let auth = format!("Bearer {ADMIN_KEY}");
    for (bad, why) in [
        (json!({ "id": "" }), "row 1: id is empty"),
        (
            json!({ "id": "x".repeat(257) }),
            "row 1: id is longer than 256 bytes",
        ),
        (
            json!({ "id": "a\u{1b}[2Jb" }),
            "row 1: id contains a control character",
        ),
        (
            json!({ "id": "n", "inference_url": "file:///etc/passwd" }),
            "row 1: inference_url must use the http or https scheme",
        ),
        (
            json!({ "id": "n", "inference_url": "http://" }),
            "row 1: inference_url",
        ),
    ] {
        let body = batch(json!([{ "id": M, "active": false, "inference_url": null }, bad]));
        let r = w.send(admin(Some(&auth), body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{why}");
        let e = r.envelope();
        assert_eq!(e["type"], "invalid_request_error");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(why), "{msg:?} should say {why:?}");
    }
    assert_eq!(
        w.app.registry().view(),
        before,
        "row 0 was not applied either"
    );
    assert_eq!(w.send(chat(chat_body(), &[])).await.status, StatusCode::OK);
}

#[tokio::test]
async fn r13_batch_over_the_row_cap_is_refused_whole() {
    let w = World::new(Some(ADMIN_KEY));
    let before = w.app.registry().view();
    let rows: Vec<_> = (0..=tiersim_engine::admin::MAX_ADMIN_BATCH_ROWS)
        .map(|i| json!({ "id": format!("m{i}"), "active": true }))
        .collect();
    let r = w
        .send(admin(
            Some(&format!("Bearer {ADMIN_KEY}")),
            batch(json!(rows)),
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("at most 1024"), "{}", r.message());
    assert_eq!(w.app.registry().view(), before);
}

#[tokio::test]
async fn r13_malformed_admin_body_is_an_envelope_400() {
    let w = World::new(Some(ADMIN_KEY));
    let auth = format!("Bearer {ADMIN_KEY}");
    for body in [
        "",
        "{",
        "[]",
        r#"{"models":[{"id":"m","bogus":1}]}"#,
        r#"{"models":[{"id":7}]}"#,
    ] {
        let r = w.send(admin(Some(&auth), body.to_string())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            r.message().starts_with("bad admin batch: "),
            "{}",
            r.message()
        );
    }
}

// ---- R26 / R27: every error is the envelope; validation before routing ----

#[tokio::test]
async fn r27_field_checks_in_order_with_their_messages_and_params() {
    let w = World::new(Some(ADMIN_KEY));
    let msgs = json!([{ "role": "user", "content": "hi" }]);
    let cases = [
        (
            json!({ "model": "", "messages": msgs }),
            "model is required",
            None,
        ),
        (
            json!({ "model": M, "messages": [] }),
            "messages cannot be empty",
            None,
        ),
        (
            json!({ "model": M, "messages": [{ "content": "x" }] }),
            "message role is required",
            None,
        ),
        (
            json!({ "model": M, "messages": [{ "role": "" }] }),
            "message role is required",
            None,
        ),
        (
            json!({ "model": M, "messages": [{ "role": "wizard" }] }),
            "invalid message role: wizard",
            None,
        ),
        (
            json!({ "model": M, "messages": msgs, "temperature": 3 }),
            "temperature must be between 0 and 2",
            None,
        ),
        (
            json!({ "model": M, "messages": msgs, "temperature": -0.5 }),
            "temperature must be between 0 and 2",
            None,
        ),
        (
            json!({ "model": M, "messages": msgs, "top_p": 1.5 }),
            "top_p must be between 0 and 1",
            None,
        ),
        (
            json!({ "model": M, "messages": msgs, "stop": ["a","b","c","d","e"] }),
            "stop array may contain at most 4 sequences",
            None,
        ),
        (
            json!({ "model": M, "messages": msgs, "logprobs": "yes" }),
            "logprobs must be a boolean",
            None,
        ),
        (
            json!({ "model": M, "messages": msgs, "logprobs": true, "top_logprobs": 1.5 }),
            "top_logprobs must be an integer",
            None,
        ),
        (
            json!({ "model": M, "messages": msgs, "logprobs": true, "top_logprobs": 21 }),
            "top_logprobs must be in the range 0..=20",
            None,
        ),
        (
            json!({ "model": M, "messages": msgs, "top_logprobs": 2 }),
            "top_logprobs requires logprobs to be true",
            None,
        ),
        (
            json!({ "model": M, "messages": msgs, "max_tokens": 0 }),
            "max_tokens must be at least 1",
            Some("max_tokens"),
        ),
        (
            json!({ "model": M, "messages": msgs, "n": 0 }),
            "n must be at least 1",
            Some("n"),
        ),
        // Order: the first failing check wins.
        (
            json!({ "model": M, "messages": msgs, "temperature": 9, "max_tokens": 0 }),
            "temperature must be between 0 and 2",
            None,
        ),
        (
            json!({ "model": M, "messages": msgs, "max_tokens": 0, "n": 0 }),
            "max_tokens must be at least 1",
            Some("max_tokens"),
        ),
    ];
    for (body, message, param) in cases {
        let r = w.send(chat(body.to_string(), &[])).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let e = r.envelope();
        assert_eq!(e["message"], message, "{body}");
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["param"].as_str(), param, "{body}");
    }
    assert_eq!(
        w.provider_calls(),
        0,
        "validation happens before any provider"
    );
    let ok = json!({ "model": M, "messages": msgs, "temperature": 2, "top_p": 0, "stop": ["a","b","c","d"],
        "logprobs": true, "top_logprobs": 20, "max_tokens": 1, "n": 1, "stream": false });
    assert_eq!(
        w.send(chat(ok.to_string(), &[])).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn r27_bodies_that_do_not_deserialize_are_400_with_the_parser_text() {
    let w = World::new(Some(ADMIN_KEY));
    let msgs = json!([{ "role": "user", "content": "hi" }]);
    let cases = [
        ("{\"model\":", "EOF"),
        ("not json", "expected"),
        ("[]", "invalid type"),
        (r#"{"messages":[{"role":"user"}]}"#, "missing field `model`"),
        (r#"{"model":"m"}"#, "missing field `messages`"),
        (
            &*json!({ "model": 42, "messages": msgs }).to_string(),
            "invalid type: integer `42`, expected a string",
        ),
        (
            &*json!({ "model": M, "messages": msgs, "stream": "yes" }).to_string(),
            "expected a boolean",
        ),
        (
            &*json!({ "model": M, "messages": "hi" }).to_string(),
            "invalid type: string",
        ),
        (
            &*json!({ "model": M, "messages": ["hi"] }).to_string(),
            "invalid type: string",
        ),
        (
            &*json!({ "model": M, "messages": msgs, "max_tokens": "5" }).to_string(),
            "invalid type",
        ),
    ];
    for (body, says) in cases {
        let r = w.send(chat(body.to_string(), &[])).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let e = r.envelope();
        assert_eq!(e["type"], "invalid_request_error");
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains(says),
            "{body}: {msg:?} should contain {says:?}"
        );
        assert_ne!(msg, "model is required", "{body}");
    }
    assert_eq!(w.provider_calls(), 0);
}

#[tokio::test]
async fn r27_missing_json_content_type_is_400() {
    let w = World::new(Some(ADMIN_KEY));
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = http::Request::post("/v1/chat/completions");
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let r = w.send(req.body(chat_body().into()).unwrap()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{ct:?}");
        assert!(r.message().contains("application/json"));
    }
    let req = http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json; charset=utf-8")
        .body(chat_body().into())
        .unwrap();
    assert_eq!(w.send(req).await.status, StatusCode::OK);
    assert_eq!(w.provider_calls(), 1);
}

#[tokio::test]
async fn r27_over_limit_body_is_an_honest_413_envelope() {
    let w = World::new(Some(ADMIN_KEY));
    let big = format!(
        r#"{{"model":"{M}","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(tiersim_engine::api::MAX_REQUEST_BODY)
    );
    let r = w.send(chat(big, &[])).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let e = r.envelope();
    assert!(e["message"].as_str().unwrap().contains("4194304"), "{e:?}");
    assert_eq!(w.provider_calls(), 0);
    // Just under the limit is accepted and routed.
    let pad = tiersim_engine::api::MAX_REQUEST_BODY - chat_body().len() - 16;
    let fits = json!({ "model": M, "messages": [{ "role": "user", "content": "a".repeat(pad) }] });
    assert!(fits.to_string().len() <= tiersim_engine::api::MAX_REQUEST_BODY);
    assert_eq!(
        w.send(chat(fits.to_string(), &[])).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn r26_unknown_paths_and_methods_answer_the_envelope() {
    let w = World::new(Some(ADMIN_KEY));
    let r = w
        .send(
            http::Request::get("/nope")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.message(), "Not found");
    assert_eq!(r.header("x-should-retry"), Some("false"), "R32");
    let r = w
        .send(
            http::Request::get("/v1/chat/completions")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.message(), "Method not allowed");
    assert_eq!(r.header("x-should-retry"), Some("false"), "R32");
    let r = w
        .send(
            http::Request::post("/v1/embeddings")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(r.envelope()["type"], "not_implemented");
    assert_eq!(r.header("x-should-retry"), Some("false"), "R32");
}

#[tokio::test]
async fn r26_r29_r32_routing_errors_use_the_envelope_and_429_carries_retry_after() {
    let w = World::new(Some(ADMIN_KEY));
    w.near
        .push_failures(tiersim_engine::ProviderError::status(503, "busy"), 64);
    w.chutes
        .push_failures(tiersim_engine::ProviderError::status(503, "busy"), 64);
    for stream in [false, true] {
        let body = json!({ "model": M, "stream": stream, "messages": [{ "role": "user", "content": "hi" }] });
        let r = w.send(chat(body.to_string(), &[])).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "stream {stream}");
        let e = r.envelope();
        assert!(e["param"].is_null());
        assert_eq!(e["type"], "service_overloaded");
        assert_eq!(r.header("retry-after"), Some("2"), "R32");
        assert_eq!(
            r.header("x-should-retry"),
            None,
            "R32: never on chat errors"
        );
        assert_eq!(r.header("x-serving-provider"), None, "R53: never on errors");
    }
    // R53: a success names the tier that served it.
    let w = World::new(Some(ADMIN_KEY));
    let body = json!({ "model": M, "messages": [{ "role": "user", "content": "hi" }] });
    let r = w.send(chat(body.to_string(), &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-serving-provider"), Some("near"));
    // A 400 from a provider carries neither R32 header.
    w.near
        .push_failures(tiersim_engine::ProviderError::status(400, "bad"), 1);
    let r = w.send(chat(body.to_string(), &[])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.message(), format!("Provider failed for model '{M}': bad"));
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(r.header("x-should-retry"), None);
}

#[tokio::test]
async fn r28_in_flight_cap_per_model_is_429_with_retry_after() {
    let w = World::with_concurrency(Some(ADMIN_KEY), 1);
    let body =
        json!({ "model": M, "stream": true, "messages": [{ "role": "user", "content": "hi" }] });
    // An open stream holds the model's only slot…
    let held = w
        .api
        .clone()
        .oneshot(chat(body.to_string(), &[]))
        .await
        .unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    let r = w.send(chat(body.to_string(), &[])).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.envelope()["type"], "rate_limit_exceeded");
    assert_eq!(
        r.message(),
        format!("Concurrent request limit exceeded for model {M}. Organization limit: 1 concurrent requests per model.")
    );
    assert_eq!(r.header("retry-after"), Some("2"));
    // …until it ends.
    drop(held);
    let r = w.send(chat(body.to_string(), &[])).await;
    assert_eq!(r.status, StatusCode::OK);
}

// ---- Echoes are bounded and escaped ----

#[tokio::test]
async fn r26_requested_model_is_echoed_bounded_and_escaped() {
    let w = World::new(Some(ADMIN_KEY));
    let hostile = format!("evil\n\x1b[31mFAKE LOG LINE\r{}", "x".repeat(1 << 20));
    let body = json!({ "model": hostile, "messages": [{ "role": "user", "content": "hi" }] });
    let r = w.send(chat(body.to_string(), &[])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let msg = r.message();
    assert!(
        r.body.len() < 4096,
        "reply is bounded: {} bytes",
        r.body.len()
    );
    assert!(!msg.chars().any(char::is_control), "{msg:?}");
    assert!(
        msg.contains("evil\\u{a}\\u{1b}[31mFAKE LOG LINE\\u{d}"),
        "{msg:?}"
    );
    assert!(msg.contains('…'));
    // A long invalid role is bounded too.
    let body = json!({ "model": M, "messages": [{ "role": "r".repeat(1 << 20) }] });
    let r = w.send(chat(body.to_string(), &[])).await;
    assert!(r.body.len() < 4096);
    // And a parser message quoting a huge value.
    let body = json!({ "model": M, "messages": [], "stream": "s".repeat(1 << 20) });
    let r = w.send(chat(body.to_string(), &[])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.len() < 4096);
}
