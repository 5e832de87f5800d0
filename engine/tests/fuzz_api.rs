//! Property-based fuzzing of the router's HTTP edge (issue 9):
//!
//! - chat requests (arbitrary JSON-ish bodies, byte noise, key header bytes,
//!   content types): never a panic; every reply is 200 from a provider or
//!   the R26 envelope; an error never reached a provider; what an
//!   independent reference check calls invalid (R27, R16) is refused and
//!   what it calls valid is routed;
//! - admin batches (R13): never a panic; a batch is applied whole (registry
//!   and catalog hold every row as patched) or not at all (both unchanged),
//!   and the reference check decides which.
//!
//! `cargo test` runs 256 cases per target. The long run:
//! `PROPTEST_CASES=1000000 cargo test --release -p tiersim-engine --test fuzz_api`.

mod common;

use std::collections::BTreeMap;

use common::*;
use http::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};
use tiersim_engine::admin::{MAX_ADMIN_BATCH_ROWS, MAX_MODEL_ID_BYTES};
use tiersim_engine::catalog::{CatalogPatchRow, CatalogRow as WireRow};

fn config() -> Config {
    // PROPTEST_CASES overrides the default for the long run.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---- generators ----

fn short_string() -> BoxedStrategy<String> {
    prop_oneof![
        proptest::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect()),
        proptest::collection::vec(
            prop::sample::select(vec![
                'a', 'z', ' ', '\n', '"', '\\', 'é', '\u{1b}', '\u{202e}'
            ]),
            0..8
        )
        .prop_map(|c| c.into_iter().collect()),
    ]
    .boxed()
}

fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just(-1i64),
            Just(0),
            Just(1),
            Just(2),
            Just(4),
            Just(20),
            Just(21)
        ]
        .prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just(-0.5f64),
            Just(0.0),
            Just(0.5),
            Just(1.0),
            Just(1.5),
            Just(2.0),
            Just(2.5)
        ]
        .prop_map(Value::from),
        short_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(short_string(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

fn role() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => prop::sample::select(vec!["system", "developer", "user", "assistant", "tool"])
            .prop_map(Value::from),
        1 => any_json(),
    ]
    .boxed()
}

fn message() -> BoxedStrategy<Value> {
    prop_oneof![
        12 => (proptest::option::weighted(0.95, role()), short_string()).prop_map(|(role, content)| {
            let mut m = Map::new();
            if let Some(r) = role {
                m.insert("role".into(), r);
            }
            m.insert("content".into(), content.into());
            Value::Object(m)
        }),
        1 => any_json(),
    ]
    .boxed()
}

/// An optional field: absent most of the time, else well-typed or anything.
fn field(typed: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    prop_oneof![16 => Just(None), 4 => typed.prop_map(Some), 1 => any_json().prop_map(Some)].boxed()
}

fn chat_object() -> BoxedStrategy<Value> {
    let model =
        prop_oneof![12 => Just(Value::from(M)), 1 => Just(Value::from("")), 1 => any_json()];
    let messages = prop_oneof![
        12 => proptest::collection::vec(message(), 1..3).prop_map(Value::Array),
        1 => Just(json!([])),
        1 => any_json(),
    ];
    // Mostly in range, sometimes just outside, as a float or an integer.
    let num = |lo: f64, hi: f64| {
        prop_oneof![
            3 => (lo..=hi).prop_map(Value::from),
            1 => ((lo - 1.0)..(hi + 1.0)).prop_map(Value::from),
            1 => ((lo as i64 - 1)..(hi as i64 + 2)).prop_map(Value::from),
        ]
    };
    (
        (
            proptest::option::weighted(0.95, model),
            proptest::option::weighted(0.95, messages),
        ),
        (
            field(any::<bool>().prop_map(Value::from)),
            field(num(0.0, 2.0)),
            field(num(0.0, 1.0)),
            field(
                proptest::collection::vec(short_string().prop_map(Value::from), 0..7)
                    .prop_map(Value::Array),
            ),
        ),
        (
            field(any::<bool>().prop_map(Value::from)),
            field((-1i64..23).prop_map(Value::from)),
            field((-1i64..4).prop_map(Value::from)),
            field((-1i64..4).prop_map(Value::from)),
        ),
        proptest::option::weighted(0.2, (short_string(), any_json())),
    )
        .prop_map(
            |(
                (model, messages),
                (stream, temperature, top_p, stop),
                (logprobs, top_logprobs, max_tokens, n),
                extra,
            )| {
                let mut m = Map::new();
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                };
                put("model", model);
                put("messages", messages);
                put("stream", stream);
                put("temperature", temperature);
                put("top_p", top_p);
                put("stop", stop);
                put("logprobs", logprobs);
                put("top_logprobs", top_logprobs);
                put("max_tokens", max_tokens);
                put("n", n);
                if let Some((k, v)) = extra {
                    m.entry(k).or_insert(v);
                }
                Value::Object(m)
            },
        )
        .boxed()
}

/// A request that is valid apart from, at most, one typed field that may be
/// out of range: the side of the space that must be routed.
fn clean_object() -> BoxedStrategy<Value> {
    let message = (
        prop::sample::select(vec!["system", "developer", "user", "assistant", "tool"]),
        short_string(),
    )
        .prop_map(|(role, content)| json!({ "role": role, "content": content }));
    let one_field = prop_oneof![
        prop::sample::select(vec!["temperature", "top_p"])
            .prop_flat_map(|k| { (-0.5f64..2.5).prop_map(move |v| (k, Value::from(v))) }),
        prop::sample::select(vec!["max_tokens", "n"])
            .prop_flat_map(|k| { (-1i64..1000).prop_map(move |v| (k, Value::from(v))) }),
        proptest::collection::vec(short_string(), 0..6).prop_map(|s| ("stop", Value::from(s))),
        any::<bool>().prop_map(|b| ("logprobs", Value::from(b))),
    ];
    (
        proptest::collection::vec(message, 1..3),
        proptest::option::of(any::<bool>()),
        proptest::option::weighted(0.5, one_field),
    )
        .prop_map(|(messages, stream, field)| {
            let mut o = json!({ "model": M, "messages": messages });
            if let Some(stream) = stream {
                o["stream"] = stream.into();
            }
            if let Some((k, v)) = field {
                o[k] = v;
            }
            o
        })
        .boxed()
}

/// The body bytes: a clean or a noisy chat object, sometimes cut or with a byte replaced,
/// sometimes any JSON or any bytes at all.
fn body() -> BoxedStrategy<(Vec<u8>, bool)> {
    prop_oneof![
        5 => clean_object().prop_map(|v| (v.to_string().into_bytes(), false)),
        5 => chat_object().prop_map(|v| (v.to_string().into_bytes(), false)),
        1 => (chat_object(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, b)| {
            let mut bytes = v.to_string().into_bytes();
            let i = at.index(bytes.len());
            bytes[i] = b;
            (bytes, true)
        }),
        1 => (chat_object(), any::<prop::sample::Index>()).prop_map(|(v, at)| {
            let bytes = v.to_string().into_bytes();
            (bytes[..at.index(bytes.len())].to_vec(), true)
        }),
        1 => any_json().prop_map(|v| (v.to_string().into_bytes(), false)),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| (b, true)),
    ]
    .boxed()
}

fn hex(len: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop::sample::select(b"0123456789abcdefABCDEF".to_vec()),
        len,
    )
}

/// A key header's bytes: well-formed of each allowed length, hex of another
/// length, or any bytes a header value may carry (`\xff` included).
fn key_bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        2 => Just(NEAR_KEY.as_bytes().to_vec()),
        1 => hex(64),
        1 => hex(128),
        1 => (0usize..130).prop_flat_map(hex),
        2 => proptest::collection::vec(any::<u8>(), 0..70)
            .prop_map(|b| b.into_iter().filter(|c| *c == b'\t' || (*c >= 0x20 && *c != 0x7f)).collect()),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
struct ChatCase {
    content_type: Option<&'static str>,
    body: Vec<u8>,
    /// The body's bytes were cut or changed after serialization.
    mutated: bool,
    model_key: Option<Vec<u8>>,
    client_key: Option<Vec<u8>>,
}

fn chat_case() -> BoxedStrategy<ChatCase> {
    (
        prop_oneof![
            16 => Just(Some("application/json")),
            1 => Just(Some("application/json; charset=utf-8")),
            1 => Just(Some("text/plain")),
            1 => Just(None),
        ],
        body(),
        proptest::option::weighted(0.3, key_bytes()),
        proptest::option::weighted(0.2, key_bytes()),
    )
        .prop_map(
            |(content_type, (body, mutated), model_key, client_key)| ChatCase {
                content_type,
                body,
                mutated,
                model_key,
                client_key,
            },
        )
        .boxed()
}

// ---- the reference check (independent of api.rs) ----

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Some rule of R27/R16 refuses it.
    Invalid,
    /// Every check passes: it is routed (200 for M, a routing 404 else).
    Valid,
    /// The reference cannot tell (a mutated body may repeat a key, which
    /// the JSON value model hides).
    Unsure,
}

fn key_ok(key: &[u8], lens: &[usize]) -> bool {
    lens.contains(&key.len()) && key.iter().all(u8::is_ascii_hexdigit)
}

fn reference(c: &ChatCase) -> Verdict {
    let json_ct = matches!(c.content_type, Some(ct) if ct.starts_with("application/json"));
    if !json_ct {
        return Verdict::Invalid;
    }
    if c.model_key.as_deref().is_some_and(|k| !key_ok(k, &[64])) {
        return Verdict::Invalid;
    }
    if c.client_key
        .as_deref()
        .is_some_and(|k| !key_ok(k, &[64, 128]))
    {
        return Verdict::Invalid;
    }
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(&c.body) else {
        return Verdict::Invalid;
    };
    if !fields_ok(&o) {
        return Verdict::Invalid;
    }
    if c.mutated {
        Verdict::Unsure
    } else {
        Verdict::Valid
    }
}

fn fields_ok(o: &Map<String, Value>) -> bool {
    let get = |k: &str| o.get(k).filter(|v| !v.is_null());
    let Some(Value::String(model)) = o.get("model") else {
        return false;
    };
    let Some(Value::Array(msgs)) = o.get("messages") else {
        return false;
    };
    let roles_ok = msgs.iter().all(|m| {
        matches!(m.get("role"), Some(Value::String(r))
            if ["system", "developer", "user", "assistant", "tool"].contains(&r.as_str()))
    });
    let messages_are_objects = msgs.iter().all(Value::is_object);
    let in_range = |k: &str, hi: f64| match get(k) {
        None => true,
        Some(v) => v.as_f64().is_some_and(|x| (0.0..=hi).contains(&x)),
    };
    let stop_ok = match get("stop") {
        None | Some(Value::String(_)) => true,
        Some(Value::Array(a)) => a.len() <= 4 && a.iter().all(Value::is_string),
        Some(_) => false,
    };
    let logprobs = match get("logprobs") {
        None => Some(false),
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => None,
    };
    let top_ok = match get("top_logprobs") {
        None => true,
        Some(v) => v.as_i64().is_some_and(|t| (0..=20).contains(&t)) && logprobs == Some(true),
    };
    let at_least_one = |k: &str| match get(k) {
        None => true,
        Some(v) => v.as_i64().is_some_and(|x| x >= 1),
    };
    !model.is_empty()
        && !msgs.is_empty()
        && messages_are_objects
        && roles_ok
        && matches!(o.get("stream"), None | Some(Value::Null | Value::Bool(_)))
        && in_range("temperature", 2.0)
        && in_range("top_p", 1.0)
        && stop_ok
        && logprobs.is_some()
        && top_ok
        && at_least_one("max_tokens")
        && at_least_one("n")
}

#[test]
fn r27_r16_fuzz_chat_requests_never_panic_and_never_route_invalid_input() {
    let rt = runtime();
    let w = rt.block_on(async { World::new(Some(ADMIN_KEY)) });
    let mut runner = TestRunner::new(config());
    runner
        .run(&chat_case(), |c| {
            rt.block_on(async {
                let mut req = http::Request::post("/v1/chat/completions");
                if let Some(ct) = c.content_type {
                    req = req.header("content-type", ct);
                }
                if let Some(k) = &c.model_key {
                    req = req.header("x-model-pub-key", http::HeaderValue::from_bytes(k).unwrap());
                }
                if let Some(k) = &c.client_key {
                    req = req.header(
                        "x-client-pub-key",
                        http::HeaderValue::from_bytes(k).unwrap(),
                    );
                }
                let before = w.provider_calls();
                let r = w.send(req.body(c.body.clone().into()).unwrap()).await;
                let called = w.provider_calls() - before;
                if r.status == StatusCode::OK {
                    prop_assert_eq!(called, 1, "a 200 came from exactly one provider call");
                } else {
                    // The envelope, or `envelope()` fails the case.
                    let e = r.envelope();
                    prop_assert!(r.body.len() < 8192, "bounded reply: {} bytes", r.body.len());
                    prop_assert!(!e["message"].as_str().unwrap().chars().any(char::is_control));
                    // Healthy fakes: only an invalid or unknown request is an error.
                    prop_assert_eq!(
                        called,
                        0,
                        "an error reply never reached a provider: {:?}",
                        e
                    );
                }
                let verdict = reference(&c);
                STATS.with(|s| {
                    s.borrow_mut()
                        .push((r.status.as_u16(), format!("{verdict:?}")))
                });
                match verdict {
                    Verdict::Invalid => {
                        prop_assert_eq!(
                            r.status,
                            StatusCode::BAD_REQUEST,
                            "invalid but {:?}",
                            String::from_utf8_lossy(&r.body)
                        );
                    }
                    Verdict::Valid => {
                        // Routed: M is served unless the key pins it to
                        // a key nobody holds (R30's 421); any other id is
                        // unknown (R28's 400).
                        let for_m = serde_json::from_slice::<Value>(&c.body).unwrap()["model"] == M;
                        let key_held = c
                            .model_key
                            .as_deref()
                            .is_none_or(|k| k.eq_ignore_ascii_case(NEAR_KEY.as_bytes()));
                        let expected = match (for_m, key_held) {
                            (true, true) => StatusCode::OK,
                            (true, false) => StatusCode::MISDIRECTED_REQUEST,
                            (false, _) => StatusCode::BAD_REQUEST,
                        };
                        prop_assert_eq!(
                            r.status,
                            expected,
                            "valid but {:?}",
                            String::from_utf8_lossy(&r.body)
                        );
                    }
                    Verdict::Unsure => {}
                }
                Ok(())
            })
        })
        .unwrap();
    // The generator must reach both sides, or the property proves little.
    let stats = STATS.with(|s| s.take());
    let routed = stats.iter().filter(|(st, _)| *st == 200).count();
    let refused = stats.iter().filter(|(_, v)| v == "Invalid").count();
    eprintln!(
        "chat fuzz: {} cases, {routed} routed, {refused} refused as invalid",
        stats.len()
    );
    assert!(
        routed * 10 >= stats.len(),
        "at least a tenth are routed: {routed}/{}",
        stats.len()
    );
    assert!(
        refused * 10 >= stats.len(),
        "at least a tenth are refused: {refused}/{}",
        stats.len()
    );
}

thread_local! {
    /// (status, verdict) of every case run on this thread.
    static STATS: std::cell::RefCell<Vec<(u16, String)>> = const { std::cell::RefCell::new(Vec::new()) };
}

// ---- admin batches ----

#[derive(Debug, Clone)]
struct Row {
    json: Value,
    /// Whether the reference check accepts the row (`None`: undecided).
    valid: Option<bool>,
}

fn row() -> BoxedStrategy<Row> {
    let id = prop_oneof![
        6 => (0u8..6).prop_map(|i| (format!("model-{i}"), Some(true))),
        1 => Just((M.to_string(), Some(true))),
        1 => Just((String::new(), Some(false))),
        1 => Just(("x".repeat(MAX_MODEL_ID_BYTES + 1), Some(false))),
        1 => Just(("y".repeat(MAX_MODEL_ID_BYTES), Some(true))),
        1 => short_string().prop_map(|s| {
            let ok = !s.is_empty() && s.len() <= MAX_MODEL_ID_BYTES && !s.chars().any(char::is_control);
            (s, Some(ok))
        }),
    ];
    let url = prop_oneof![
        4 => Just((None, Some(true))),
        1 => Just((Some(Value::Null), Some(true))),
        2 => (1u8..4).prop_map(|i| (Some(Value::from(format!("http://near-{i}"))), Some(true))),
        1 => Just((Some(Value::from("https://n.example:8443/v1")), Some(true))),
        1 => prop::sample::select(vec!["file:///etc/passwd", "", "near-1", "http://", "ftp://h", "http://u:p@h", "javascript:alert(1)"])
            .prop_map(|u| (Some(Value::from(u)), Some(false))),
        1 => short_string().prop_map(|u| (Some(Value::from(u)), None)),
        1 => any_json().prop_map(|u| (Some(u), None)),
    ];
    let active = prop_oneof![3 => Just(None), 2 => any::<bool>().prop_map(|b| Some(Value::from(b))), 1 => any_json().prop_map(Some)];
    let price = prop_oneof![3 => Just(None), 2 => any::<u32>().prop_map(|p| Some(Value::from(p))), 1 => any_json().prop_map(Some)];
    (
        id,
        url,
        active,
        price,
        proptest::option::weighted(0.05, short_string()),
    )
        .prop_map(|((id, id_ok), (url, url_ok), active, price, unknown)| {
            let mut m = Map::new();
            m.insert("id".into(), id.into());
            let mut typed = true;
            if let Some(u) = url {
                typed &= u.is_null() || u.is_string();
                m.insert("inference_url".into(), u);
            }
            if let Some(a) = active {
                typed &= a.is_boolean() || a.is_null();
                m.insert("active".into(), a);
            }
            if let Some(p) = price {
                typed &= p.is_u64() || p.is_null();
                m.insert("price".into(), p);
            }
            if let Some(k) = unknown {
                typed &= m.contains_key(&k);
                m.entry(k).or_insert(Value::Null);
            }
            let valid = match (typed, id_ok, url_ok) {
                (false, ..) => Some(false),
                (true, Some(a), Some(b)) => Some(a && b),
                _ => None,
            };
            Row {
                json: Value::Object(m),
                valid,
            }
        })
        .boxed()
}

fn batch() -> BoxedStrategy<(Vec<Row>, bool)> {
    // Occasionally over the row cap.
    (
        proptest::collection::vec(row(), 0..6),
        proptest::bool::weighted(0.03),
    )
        .boxed()
}

#[test]
fn r13_fuzz_admin_batches_apply_whole_or_not_at_all() {
    let rt = runtime();
    let mut runner = TestRunner::new(config());
    let auth = format!("Bearer {ADMIN_KEY}");
    runner
        .run(&batch(), |(rows, over_cap)| {
            rt.block_on(async {
                let w = World::new(Some(ADMIN_KEY));
                let mut models: Vec<Value> = rows.iter().map(|r| r.json.clone()).collect();
                if over_cap {
                    models.extend(
                        (models.len()..=MAX_ADMIN_BATCH_ROWS)
                            .map(|i| json!({ "id": format!("fill-{i}") })),
                    );
                }
                let body = json!({ "models": models }).to_string();
                let before = w.app.registry().view();
                let db_before = w.db.rows();
                let r = w.send(admin(Some(&auth), body.clone())).await;
                STATS.with(|s| s.borrow_mut().push((r.status.as_u16(), String::new())));
                if r.status == StatusCode::OK {
                    // Applied whole: every row as patched, in order, in the
                    // catalog and in the registry's catalog.
                    let patch: Vec<CatalogPatchRow> =
                        serde_json::from_value(Value::Array(models)).unwrap();
                    let mut expected: BTreeMap<String, WireRow> = db_before;
                    for p in &patch {
                        let row = p.apply(expected.get(&p.id));
                        expected.insert(p.id.clone(), row);
                    }
                    prop_assert_eq!(&w.db.rows(), &expected);
                    let view = w.app.registry().view();
                    for p in &patch {
                        let got = view.catalog.get(&p.id);
                        prop_assert!(got.is_some(), "row {} applied", p.id);
                        let got = got.unwrap();
                        prop_assert_eq!(
                            (got.active, got.price),
                            (expected[&p.id].active, expected[&p.id].price)
                        );
                    }
                } else {
                    let e = r.envelope();
                    prop_assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", e);
                    prop_assert!(r.body.len() < 8192);
                    prop_assert_eq!(w.app.registry().view(), before, "nothing applied");
                    prop_assert_eq!(w.db.rows(), db_before, "nothing written");
                }
                let expect_valid = if over_cap {
                    Some(false)
                } else {
                    rows.iter()
                        .try_fold(true, |acc, r| r.valid.map(|v| acc && v))
                };
                match expect_valid {
                    Some(true) => prop_assert_eq!(
                        r.status,
                        StatusCode::OK,
                        "{}",
                        String::from_utf8_lossy(&r.body)
                    ),
                    Some(false) => prop_assert_eq!(r.status, StatusCode::BAD_REQUEST),
                    None => {}
                }
                Ok(())
            })
        })
        .unwrap();
    let stats = STATS.with(|s| s.take());
    let applied = stats.iter().filter(|(st, _)| *st == 200).count();
    eprintln!("admin fuzz: {} cases, {applied} applied", stats.len());
    assert!(
        applied * 10 >= stats.len(),
        "at least a tenth apply: {applied}/{}",
        stats.len()
    );
    assert!(
        (stats.len() - applied) * 10 >= stats.len(),
        "at least a tenth are refused"
    );
}
