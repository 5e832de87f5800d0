//! The router's HTTP surface (`api::router`) over fake providers and no
//! network: what reaches a provider is counted, what the client reads is
//! the real reply.

#![allow(dead_code)]

use std::io;
use std::sync::Arc;

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tiersim_engine::app::{App, AppSettings};
use tiersim_engine::catalog::{
    CatalogList, CatalogPatch, CatalogRow as WireRow, ExternalList, CATALOG_PATH, EXTERNAL_PATH,
};
use tiersim_engine::config::{AdminKey, EngineConfig};
use tiersim_engine::http::HttpClient;
use tiersim_engine::net::Listener;
use tiersim_engine::net::{Connector, Io};
use tiersim_engine::openai::Timeouts;
use tiersim_engine::registry::{CatalogRow, Discovered, External, Registry, SourceRead};
use tiersim_engine::testing::{rows, FakeProvider};
use tiersim_engine::Provider;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tower::ServiceExt;

pub const M: &str = "zai-org/GLM-5.1-FP8";
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
/// The NEAR fake's signing key (64 hex digits).
pub const NEAR_KEY: &str = "aa00000000000000000000000000000000000000000000000000000000000001";

/// The catalog database the router's admin batches write through.
#[derive(Clone, Default)]
pub struct CatalogDb(pub Arc<Mutex<BTreeMap<String, WireRow>>>);

impl CatalogDb {
    pub fn rows(&self) -> BTreeMap<String, WireRow> {
        self.0.lock().unwrap().clone()
    }

    fn list(&self) -> axum::Json<CatalogList> {
        axum::Json(CatalogList {
            models: self.rows().into_values().collect(),
        })
    }

    fn service(&self) -> axum::Router {
        async fn list(State(db): State<CatalogDb>) -> axum::Json<CatalogList> {
            db.list()
        }
        async fn patch(
            State(db): State<CatalogDb>,
            axum::Json(p): axum::Json<CatalogPatch>,
        ) -> axum::Json<CatalogList> {
            {
                let mut rows = db.0.lock().unwrap();
                for r in &p.models {
                    let row = r.apply(rows.get(&r.id));
                    rows.insert(r.id.clone(), row);
                }
            }
            db.list()
        }
        axum::Router::new()
            .route(CATALOG_PATH, get(list).patch(patch))
            .route(
                EXTERNAL_PATH,
                get(|| async { axum::Json(ExternalList::default()) }),
            )
            .with_state(self.clone())
    }
}

/// The router's only network: an in-memory catalog at `catalog:80`;
/// every other address (a NEAR backend a batch names) refuses.
struct CatalogOnly(mpsc::UnboundedSender<DuplexStream>);

#[async_trait]
impl Connector for CatalogOnly {
    async fn connect(&self, authority: &str) -> io::Result<Box<dyn Io>> {
        let refused = |why| io::Error::new(io::ErrorKind::ConnectionRefused, why);
        if authority != "catalog:80" {
            return Err(refused("no such host in this test"));
        }
        let (client, server) = tokio::io::duplex(1 << 16);
        self.0
            .send(server)
            .map_err(|_| refused("catalog is down"))?;
        Ok(Box::new(client))
    }
}

struct Accept(mpsc::UnboundedReceiver<DuplexStream>);

#[async_trait]
impl Listener for Accept {
    async fn accept(&mut self) -> io::Result<Box<dyn Io>> {
        match self.0.recv().await {
            Some(io) => Ok(Box::new(io)),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "closed")),
        }
    }
}

pub struct World {
    pub app: Arc<App>,
    pub api: axum::Router,
    pub near: Arc<FakeProvider>,
    pub chutes: Arc<FakeProvider>,
    pub db: CatalogDb,
}

impl World {
    /// M served by a NEAR fake holding [`NEAR_KEY`], then a pinned Chutes
    /// fake (streaming on); the admin key is `admin_key`.
    pub fn new(admin_key: Option<&str>) -> World {
        World::with_concurrency(admin_key, tiersim_engine::config::DEFAULT_MODEL_CONCURRENCY)
    }

    /// The same world with R28's per-model cap set to `cap`.
    pub fn with_concurrency(admin_key: Option<&str>, cap: usize) -> World {
        let near = FakeProvider::near("near-1").with_keys([NEAR_KEY]).arc();
        let chutes = FakeProvider::chutes("chutes:slug")
            .with_streaming(true)
            .arc();
        let reg = Registry::new();
        reg.reserve([M]);
        reg.register_secondary(M, Arc::clone(&chutes) as Arc<dyn Provider>);
        reg.refresh(
            SourceRead::Ok(Discovered(rows(&[(M, &[&near])]))),
            SourceRead::Ok(External::default()),
        );
        reg.set_catalog_rows([(
            M,
            CatalogRow {
                active: true,
                price: 1,
                ..Default::default()
            },
        )]);
        let config = EngineConfig {
            admin_api_key: admin_key.map(|k| AdminKey::new(k).unwrap()),
            model_concurrency: cap,
            ..EngineConfig::default()
        };
        let settings = AppSettings {
            config,
            catalog_url: "http://catalog".into(),
            timeouts: Timeouts::default(),
        };
        let db = CatalogDb::default();
        db.0.lock().unwrap().insert(
            M.to_string(),
            WireRow {
                id: M.into(),
                inference_url: None,
                active: true,
                price: 1,
                provider_type: Default::default(),
                ..Default::default()
            },
        );
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(tiersim_engine::http::serve(Accept(rx), db.service()));
        let app = Arc::new(App::over_registry(
            Arc::new(reg),
            settings,
            HttpClient::new(Arc::new(CatalogOnly(tx))),
        ));
        let api =
            tiersim_engine::api::router(app.clone(), Arc::new(tiersim_engine::api::NoObserver));
        World {
            app,
            api,
            near,
            chutes,
            db,
        }
    }

    /// Calls every provider got.
    pub fn provider_calls(&self) -> usize {
        self.near.calls() + self.chutes.calls()
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.api.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("?").to_string());
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Reply {
            status,
            content_type,
            headers,
            body,
        }
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// A response header as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap_or("?"))
    }

    /// The R26 envelope's `error` object; panics (failing the test) when the
    /// reply is not exactly that envelope.
    pub fn envelope(&self) -> serde_json::Map<String, serde_json::Value> {
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "an error reply is JSON: {} {:?}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body))
        });
        let outer = v.as_object().expect("an object");
        assert_eq!(outer.len(), 1, "only `error`: {v}");
        let err = outer["error"]
            .as_object()
            .expect("`error` is an object")
            .clone();
        let mut keys: Vec<&str> = err.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["code", "message", "param", "type"], "{v}");
        assert!(err["message"].is_string() && err["type"].is_string(), "{v}");
        assert!(err["param"].is_null() || err["param"].is_string(), "{v}");
        assert!(err["code"].is_null(), "code is never set: {v}");
        err
    }

    pub fn message(&self) -> String {
        self.envelope()["message"].as_str().unwrap().to_string()
    }
}

/// `POST /v1/chat/completions` with a JSON body and extra headers (raw bytes).
pub fn chat(body: impl Into<Body>, headers: &[(&str, &[u8])]) -> Request<Body> {
    let mut req = Request::post("/v1/chat/completions").header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, http::HeaderValue::from_bytes(v).unwrap());
    }
    req.body(body.into()).unwrap()
}

/// A valid chat body for M.
pub fn chat_body() -> String {
    serde_json::json!({"model": M, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

/// `PATCH /v1/admin/models` with `authorization` (if any) and `body`.
pub fn admin(authorization: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut req = Request::patch("/v1/admin/models").header("content-type", "application/json");
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    req.body(body.into()).unwrap()
}
