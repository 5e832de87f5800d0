//! Property-based fuzzing of the scenario loader (issue 9): whatever the
//! bytes, and whatever values sit under the format's real keys, loading
//! never panics and either succeeds or fails with an error located at a
//! line and column of the file.
//!
//! `cargo test` runs 256 cases per property; a long run sets
//! `PROPTEST_CASES` (README, "Fuzzing the loader"):
//! `PROPTEST_CASES=100000 cargo test --release -p tiersim --test loader_fuzz`.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::Config;
use toml::{Table, Value};

fn config() -> Config {
    // `Config::default()` reads PROPTEST_CASES; failures are reported, not
    // written into the source tree.
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

/// Loading `bytes` returns a scenario or a located error, never a panic.
fn loads_or_points(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    match tiersim::scenario::parse_bytes(Path::new("fuzz.toml"), bytes) {
        Ok(_) => Ok(()),
        Err(e) => {
            prop_assert!(e.line >= 1 && e.column >= 1, "unlocated error: {e}");
            prop_assert!(!e.message.is_empty());
            Ok(())
        }
    }
}

/// Strings the loader has rules about: hosts (real, built in, empty,
/// path-like, with control characters), durations (zero, huge, beyond the
/// bound, malformed), keys and ids.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("near-1".to_string()),
        Just("near-2".to_string()),
        Just("router".to_string()),
        Just("client".to_string()),
        Just("chutes".to_string()),
        Just("catalog".to_string()),
        Just("ext-a".to_string()),
        Just("m".to_string()),
        Just(String::new()),
        Just("../etc/passwd".to_string()),
        Just("a\nb".to_string()),
        Just("\u{1b}[31m".to_string()),
        Just("0s".to_string()),
        Just("1ms".to_string()),
        Just("90s".to_string()),
        Just("23h".to_string()),
        Just("10years".to_string()),
        Just("99999999999999999999999s".to_string()),
        Just("m=s".to_string()),
        Just("m=".to_string()),
        Just("=s,a=b=c".to_string()),
        Just("R16".to_string()),
        Just("chutes:s".to_string()),
        Just("external:ext-a".to_string()),
        Just("platinum".to_string()),
        "[a-z0-9:=/ -]{0,12}",
        any::<String>(),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::String),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(2),
            Just(3),
            Just(-1),
            Just(200),
            Just(503),
            Just(i64::from(u32::MAX)),
            Just(i64::MAX),
            any::<i64>(),
        ]
        .prop_map(Value::Integer),
        any::<bool>().prop_map(Value::Boolean),
        any::<f64>().prop_map(Value::Float),
    ]
}

/// A value for a key: mostly scalars, sometimes lists or small tables.
fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..3)
                .prop_map(|m| Value::Table(m.into_iter().collect())),
        ]
    })
}

/// A table holding some of `keys`, each with a random value.
fn table_of(keys: &'static [&'static str]) -> impl Strategy<Value = Table> {
    prop::collection::vec((prop::sample::select(keys), value()), 0..keys.len() + 1)
        .prop_map(|pairs| pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

const TOP: &[&str] = &["name", "description", "seed", "tick", "pins", "findings"];
const CONFIG: &[&str] = &[
    "chutes_models",
    "chutes_api_key",
    "chutes_streaming",
    "refresh_interval",
    "trust_chutes_vendor",
    "expect_startup_error",
    "context_route",
];
const NEAR: &[&str] = &["host", "models"];
const CHUTES: &[&str] = &["slug", "instances", "stream_protocol"];
const EXTERNAL: &[&str] = &["host", "models", "rows"];
const CATALOG: &[&str] = &[
    "id",
    "inference_url",
    "active",
    "price",
    "context_length",
    "long_context",
];
const STEP: &[&str] = &[
    "at",
    "note",
    "refresh",
    "admin_patch",
    "catalog",
    "fault",
    "clear_faults",
    "partition",
    "repair",
    "hold",
    "release",
    "crash",
    "restart",
    "request",
    "concurrent",
    "unregister",
    "advance",
    "expect",
];
const REQUEST: &[&str] = &[
    "model",
    "stream",
    "prompt",
    "pub_key_of",
    "model_pub_key",
    "client_pub_key",
    "messages",
    "max_tokens",
    "extra",
    "repeat",
];
const FAULT: &[&str] = &[
    "host",
    "times",
    "on",
    "http_status",
    "code",
    "message",
    "latency_ms",
    "reset_before_body",
    "drop_frame",
    "crash",
];
const EXPECT: &[&str] = &[
    "status",
    "served_by",
    "tier",
    "tried",
    "never",
    "backoff",
    "contains",
    "done",
    "providers",
    "listed",
    "error",
    "headers",
    "headers_absent",
    "health",
    "upstream",
    "tokenized",
    "each",
];
const SWEEP: &[&str] = &[
    "hosts",
    "kinds",
    "weights",
    "min_faults",
    "max_faults",
    "from",
    "until",
    "max_hold",
    "max_times",
    "statuses",
    "messages",
    "max_tokens",
    "max_latency",
];

fn tables(keys: &'static [&'static str], most: usize) -> impl Strategy<Value = Value> {
    prop::collection::vec(table_of(keys), 0..most)
        .prop_map(|ts| Value::Array(ts.into_iter().map(Value::Table).collect()))
}

/// A step whose request, fault and expect are themselves tables of the
/// real keys (so the loader's deeper rules are reached).
fn step() -> impl Strategy<Value = Value> {
    (
        table_of(STEP),
        prop::option::of(table_of(REQUEST)),
        prop::option::of(table_of(FAULT)),
        prop::option::of(table_of(EXPECT)),
    )
        .prop_map(|(mut st, req, fault, expect)| {
            for (k, t) in [("request", req), ("fault", fault), ("expect", expect)] {
                if let Some(t) = t {
                    st.insert(k.into(), Value::Table(t));
                }
            }
            Value::Table(st)
        })
}

/// A scenario file built from the format's real keys, with random values;
/// `name` and `description` are usually right so that the semantic checks
/// behind the syntax are reached.
fn scenario() -> impl Strategy<Value = String> {
    (
        table_of(TOP),
        any::<bool>(),
        prop::option::of(table_of(CONFIG)),
        tables(NEAR, 4),
        tables(CHUTES, 2),
        tables(EXTERNAL, 2),
        tables(CATALOG, 3),
        prop::collection::vec(step(), 0..6),
        prop::option::of(table_of(SWEEP)),
    )
        .prop_map(
            |(mut top, named, config, near, chutes, external, catalog, steps, sweep)| {
                if named {
                    top.insert("name".into(), Value::String("fuzz".into()));
                    top.insert("description".into(), Value::String("fuzz".into()));
                }
                if let Some(c) = config {
                    top.insert("config".into(), Value::Table(c));
                }
                top.insert("near".into(), near);
                top.insert("chutes".into(), chutes);
                top.insert("external".into(), external);
                top.insert("catalog".into(), catalog);
                top.insert("step".into(), Value::Array(steps));
                if let Some(s) = sweep {
                    top.insert("sweep".into(), Value::Table(s));
                }
                toml::to_string(&top).unwrap_or_default()
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_load_or_fail_with_a_position(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        loads_or_points(bytes)?;
    }

    #[test]
    fn toml_with_the_real_keys_loads_or_fails_with_a_position(text in scenario()) {
        loads_or_points(text.into_bytes())?;
    }

    #[test]
    fn a_valid_scenario_with_noise_loads_or_fails_with_a_position(
        cut in 0usize..2000,
        noise in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        // A real scenario with bytes spliced in somewhere.
        let mut bytes = include_bytes!("../../scenarios/crash_restart_near.toml").to_vec();
        let at = cut.min(bytes.len());
        bytes.splice(at..at, noise);
        loads_or_points(bytes)?;
    }
}
