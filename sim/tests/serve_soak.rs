//! Issue 9: `tiersim serve` does not grow with traffic. Thousands of
//! Chutes-served requests on real loopback sockets (the simulated gateway
//! issues nonces for every listing); the process's resident memory after
//! warm-up and at the end must agree within a bound far below what the old
//! leak cost (about 3 KB per Chutes-served request: never-forgotten nonces).
//! Alone in its own test binary, so no other test shares the process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use tiersim::serve::{self, ServeArgs};
use tiersim_engine::http::HttpClient;
use tiersim_engine::net::TokioConnector;

const MODEL: &str = "zai-org/GLM-5.1-FP8";
const WARM_UP: usize = 1_000;
const SOAK: usize = 4_000;
/// The old leak would add about 12 MB over `SOAK` requests.
const MAX_GROWTH_KB: u64 = 4_096;

/// NEAR fails every chat call (so it is demoted after ten and Chutes serves
/// the rest); the gateway's nonces live 2 s, so the soak spans many
/// lifetimes.
const WORLD: &str = r#"
name = "serve soak: Chutes-served traffic"
description = "Issue 9's serve soak (sim/tests/serve_soak.rs)."
seed = 9
pins = ["R4"]

[config]
chutes_models = "zai-org/GLM-5.1-FP8=zai-org/GLM-5.1-TEE"

[world]
chutes_nonce_expires_in = "2s"

[[near]]
host = "near-1"
models = ["zai-org/GLM-5.1-FP8"]

[[chutes]]
slug = "zai-org/GLM-5.1-TEE"
instances = 2

[[catalog]]
id = "zai-org/GLM-5.1-FP8"
inference_url = "near-1"

[[step]]
refresh = {}

[[step]]
fault = { host = "near-1", http_status = 503, on = "chat" }
"#;

/// Resident set size of this process, in KiB.
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

async fn requests(client: &HttpClient, router: &str, n: usize) -> usize {
    let mut served_by_chutes = 0;
    for i in 0..n {
        let body = serde_json::json!({
            "model": MODEL,
            "messages": [{ "role": "user", "content": format!("soak {i}") }],
        });
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("{router}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Bytes::from(body.to_string()))
            .unwrap();
        let (status, headers, _) = client
            .fetch(req, Duration::from_secs(60), 1 << 20)
            .await
            .expect("the router answers");
        assert_eq!(status.as_u16(), 200, "request {i}");
        if headers
            .get("x-serving-provider")
            .is_some_and(|v| v == "chutes")
        {
            served_by_chutes += 1;
        }
    }
    served_by_chutes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue9_serve_rss_stays_flat_over_thousands_of_chutes_requests() {
    let dir = std::env::temp_dir().join(format!("tiersim-serve-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join("serve_soak.toml");
    std::fs::write(&file, WORLD).unwrap();
    let mut world = serve::start(&ServeArgs {
        scenario: file,
        bind: "127.0.0.1".into(),
        port_base: 0,
        allow_non_loopback: false,
        admin_key: None,
    })
    .await
    .unwrap();
    world.play().await;
    let router = world.urls()["router"].clone();
    let client = HttpClient::new(Arc::new(TokioConnector));

    let warm = requests(&client, &router, WARM_UP).await;
    let before = rss_kb();
    let soaked = requests(&client, &router, SOAK).await;
    let after = rss_kb();
    world.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    eprintln!(
        "serve soak: RSS {before} KiB after {WARM_UP} requests, {after} KiB after {SOAK} more \
         ({} KiB growth); Chutes served {warm} + {soaked}",
        after.saturating_sub(before)
    );
    assert!(warm >= WARM_UP - 10, "Chutes serves once NEAR is demoted");
    assert_eq!(soaked, SOAK, "every soak request is Chutes-served");
    assert!(
        after.saturating_sub(before) <= MAX_GROWTH_KB,
        "RSS grew {} KiB over {SOAK} Chutes-served requests ({before} -> {after} KiB)",
        after.saturating_sub(before)
    );
}
