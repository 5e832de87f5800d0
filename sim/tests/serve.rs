//! `tiersim serve` end to end on real loopback sockets (OS-assigned ports):
//! the interop world answers through the real engine, and the script's
//! crash/restart/shutdown steps act on real listeners.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use tiersim::serve::{self, ServeArgs};
use tiersim_engine::http::HttpClient;
use tiersim_engine::net::TokioConnector;

const CANONICAL: &str = "zai-org/GLM-5.1-FP8";

fn args(scenario: PathBuf) -> ServeArgs {
    ServeArgs {
        scenario,
        bind: "127.0.0.1".into(),
        port_base: 0,
        allow_non_loopback: false,
        admin_key: None,
    }
}

async fn chat(router: &str, prompt: &str, stream: bool) -> (u16, String) {
    let body = serde_json::json!({
        "model": CANONICAL,
        "messages": [{ "role": "user", "content": prompt }],
        "stream": stream,
    });
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{router}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap();
    let (status, _, body) = HttpClient::new(Arc::new(TokioConnector))
        .fetch(req, Duration::from_secs(60), 1 << 20)
        .await
        .expect("the router answers");
    (status.as_u16(), String::from_utf8(body.to_vec()).unwrap())
}

fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_interop_world_falls_back_to_chutes_then_near() {
    let mut world = serve::start(&args(scenario("interop_near_primary_chutes_fallback.toml")))
        .await
        .unwrap();
    world.play().await;
    let urls = world.urls().clone();
    assert!(urls.values().all(|u| u.starts_with("http://127.0.0.1:")));
    let router = &urls["router"];

    let (status, body) = chat(router, "one", false).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("chutes says: one"), "{body}");
    assert!(
        body.contains(&format!("\"model\":\"{CANONICAL}\"")),
        "{body}"
    );
    assert!(!body.contains("GLM-5.1-TEE"), "{body}");

    let (status, body) = chat(router, "two", true).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(" two"), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert!(!body.contains("GLM-5.1-TEE"), "{body}");

    let (status, body) = chat(router, "three", false).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("near-1 says: three"), "{body}");
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_crash_and_restart_act_on_real_listeners() {
    let dir = std::env::temp_dir().join(format!("tiersim-serve-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("crash.toml");
    std::fs::write(
        &file,
        r#"
name = "serve crash/restart"
description = "near-1 crashes and restarts; the router crashes and restarts"
seed = 5
[config]
chutes_models = "zai-org/GLM-5.1-FP8=zai-org/GLM-5.1-TEE"
[[near]]
host = "near-1"
models = ["zai-org/GLM-5.1-FP8"]
[[chutes]]
slug = "zai-org/GLM-5.1-TEE"
[[catalog]]
id = "zai-org/GLM-5.1-FP8"
inference_url = "near-1"
[[step]]
crash = "near-1"
[[step]]
restart = "near-1"
[[step]]
crash = "router"
[[step]]
restart = "router"
"#,
    )
    .unwrap();
    let mut world = serve::start(&args(file)).await.unwrap();
    let router = world.urls()["router"].clone();

    // near-1's port is closed: a connection failure, Chutes serves.
    world.play_steps(0..1).await;
    let (status, body) = chat(&router, "down", false).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("chutes says: down"), "{body}");

    // Restarted on the same port.
    world.play_steps(1..2).await;
    let (status, body) = chat(&router, "up", false).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("near-1 says: up"), "{body}");

    // The router's own port closes, then a new boot serves on it again.
    world.play_steps(2..3).await;
    let req = Request::get(format!("{router}/v1/models"))
        .body(Bytes::new())
        .unwrap();
    assert!(HttpClient::new(Arc::new(TokioConnector))
        .fetch(req, Duration::from_secs(5), 1 << 20)
        .await
        .is_err());
    world.play_steps(3..4).await;
    let (status, body) = chat(&router, "back", false).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("near-1 says: back"), "{body}");

    world.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `shutdown = "router"` on real sockets: the request in flight still gets
/// its answer, the closed port then refuses a new connection, and a
/// restart serves on the same port again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_shutdown_finishes_the_request_in_flight_then_refuses() {
    let dir = std::env::temp_dir().join(format!(
        "tiersim-serve-shutdown-test-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("shutdown.toml");
    std::fs::write(
        &file,
        r#"
name = "serve shutdown"
description = "the router shuts down while a slow request is in flight, then restarts"
seed = 5
[[near]]
host = "near-1"
models = ["zai-org/GLM-5.1-FP8"]
[[catalog]]
id = "zai-org/GLM-5.1-FP8"
inference_url = "near-1"
[[step]]
fault = { host = "near-1", latency_ms = 1500, times = 1 }
[[step]]
shutdown = "router"
[[step]]
restart = "router"
"#,
    )
    .unwrap();
    let mut world = serve::start(&args(file)).await.unwrap();
    let router = world.urls()["router"].clone();
    world.play_steps(0..1).await;

    let in_flight = tokio::spawn({
        let router = router.clone();
        async move { chat(&router, "slow", false).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    world.play_steps(1..2).await;
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("near-1 says: slow"), "{body}");
    let req = Request::get(format!("{router}/v1/models"))
        .body(Bytes::new())
        .unwrap();
    assert!(HttpClient::new(Arc::new(TokioConnector))
        .fetch(req, Duration::from_secs(5), 1 << 20)
        .await
        .is_err());

    world.play_steps(2..3).await;
    let (status, body) = chat(&router, "back", false).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("near-1 says: back"), "{body}");
    world.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn fetch(req: Request<Bytes>) -> (u16, String) {
    let (status, _, body) = HttpClient::new(Arc::new(TokioConnector))
        .fetch(req, Duration::from_secs(30), 1 << 20)
        .await
        .expect("the router answers");
    (status.as_u16(), String::from_utf8(body.to_vec()).unwrap())
}

async fn listed(router: &str) -> String {
    let req = Request::get(format!("{router}/v1/models"))
        .body(Bytes::new())
        .unwrap();
    fetch(req).await.1
}

/// R13 on real sockets: the admin API wants `serve`'s key; a scripted
/// `admin_patch` sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r13_serve_admin_api_needs_the_key_and_the_script_sends_it() {
    let dir = std::env::temp_dir().join(format!("tiersim-serve-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("admin.toml");
    std::fs::write(
        &file,
        r#"
name = "serve admin"
description = "the script deactivates the model through the admin API"
seed = 9
[[near]]
host = "near-1"
models = ["zai-org/GLM-5.1-FP8"]
[[catalog]]
id = "zai-org/GLM-5.1-FP8"
inference_url = "near-1"
[[step]]
admin_patch = [{ id = "zai-org/GLM-5.1-FP8", active = false }]
"#,
    )
    .unwrap();
    let mut a = args(file);
    a.admin_key = Some("serve-test-key".into());
    let mut world = serve::start(&a).await.unwrap();
    let router = world.urls()["router"].clone();

    let patch = |auth: Option<&str>| {
        let mut req = Request::patch(format!("{router}/v1/admin/models"))
            .header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.body(Bytes::from(
            r#"{"models":[{"id":"zai-org/GLM-5.1-FP8","active":false}]}"#,
        ))
        .unwrap()
    };
    for auth in [None, Some("Bearer wrong"), Some("serve-test-key")] {
        let (status, body) = fetch(patch(auth)).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error", "{body}");
    }
    assert!(listed(&router).await.contains(CANONICAL), "nothing changed");

    world.play_steps(0..1).await;
    assert!(
        !listed(&router).await.contains(CANONICAL),
        "the scripted batch was applied with the key"
    );
    world.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
