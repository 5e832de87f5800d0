//! A simulated NEAR backend: OpenAI-compatible chat plus an attestation
//! report carrying its ed25519 signing key.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;
use tiersim_engine::context::TOKENIZE_PATH;
use tiersim_engine::near::{AttestationReport, ATTESTATION_PATH};

use super::{
    before_answer, chat_router, derive_seed, error_response, json_answer, model_not_found,
    ChatBackend, Service,
};
use crate::fault::{FaultBoard, RequestKind};

/// Builder of a NEAR backend host:
/// `NearBackend::new("near-1").serves(["m1"]).signing_seed(seed).faults(&board).install(&mut sim)`.
#[derive(Debug, Clone)]
pub struct NearBackend {
    host: String,
    models: BTreeSet<String>,
    signing_seed: [u8; 32],
    faults: FaultBoard,
    answer_model: Option<String>,
}

impl NearBackend {
    /// A backend serving nothing yet, its key derived from its name.
    pub fn new(host: impl Into<String>) -> Self {
        let host = host.into();
        NearBackend {
            signing_seed: derive_seed(0, &host),
            host,
            models: BTreeSet::new(),
            faults: FaultBoard::new(),
            answer_model: None,
        }
    }

    /// Adds models it serves; any other model gets 404 `model_not_found`.
    pub fn serves<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.models.extend(models.into_iter().map(Into::into));
        self
    }

    /// The ed25519 secret key seed of its signing key.
    pub fn signing_seed(mut self, seed: [u8; 32]) -> Self {
        self.signing_seed = seed;
        self
    }

    /// The fault board it consults (shared with the scenario runner).
    pub fn faults(mut self, board: &FaultBoard) -> Self {
        self.faults = board.clone();
        self
    }

    /// Answers with this model name instead of the request's.
    pub fn answer_model(mut self, model: Option<String>) -> Self {
        self.answer_model = model;
        self
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Lower-case hex of its ed25519 verifying key, as its report carries it.
    pub fn signing_key_hex(&self) -> String {
        super::keys::ed25519_public(self.signing_seed)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn install(self, sim: &mut turmoil::Sim<'_>) {
        self.service().install(sim);
    }

    /// The host's HTTP surface, to install on turmoil or serve on real sockets.
    pub fn service(self) -> Service {
        let key = self.signing_key_hex();
        let report = AttestationReport {
            signing_algo: "ed25519".into(),
            signing_public_keys: vec![key.clone()],
        };
        let attestation = Attestation {
            host: self.host.clone(),
            report: serde_json::to_string(&report).expect("report serialises"),
            faults: self.faults.clone(),
        };
        let host = self.host.clone();
        Service::new(host, move || {
            let chat = chat_router(ChatBackend {
                host: self.host.clone(),
                models: self.models.clone(),
                faults: self.faults.clone(),
                signing_key: Some(key.clone()),
                served: AtomicU64::new(0),
                answer_model: self.answer_model.clone(),
                api_key: None,
            });
            chat.merge(
                Router::new()
                    .route(ATTESTATION_PATH, get(attestation_report))
                    .with_state(attestation.clone()),
            )
            .merge(
                Router::new()
                    .route(TOKENIZE_PATH, post(tokenize))
                    .with_state(Tokenizer {
                        host: self.host.clone(),
                        models: self.models.clone(),
                        faults: self.faults.clone(),
                    }),
            )
        })
    }
}

#[derive(Clone)]
struct Attestation {
    host: String,
    report: String,
    faults: FaultBoard,
}

async fn attestation_report(State(a): State<Attestation>) -> Response {
    let fault = a.faults.take(&a.host, RequestKind::Attestation);
    if let Some(resp) = before_answer(fault.as_ref(), &a.host, "", false).await {
        return resp;
    }
    json_answer(fault.as_ref(), a.report.into())
}

/// The simulated tokenizer (SPEC-parity R43): one token per
/// whitespace-separated word of the prompt, the same count the backend's
/// `usage.prompt_tokens` reports. Documented so a scenario can build a
/// prompt with the count it needs (`"a "` × 2000 is 2000 tokens in 4000
/// bytes; 100 words of 39 letters are 100 tokens).
pub fn count_tokens(prompt: &str) -> u64 {
    prompt.split_whitespace().count() as u64
}

#[derive(Clone)]
struct Tokenizer {
    host: String,
    models: BTreeSet<String>,
    faults: FaultBoard,
}

/// `POST /v1/tokenize` `{"model", "prompt"}` → `{"count": n}`; faultable
/// like any request of the host (`on = "tokenize"` targets it alone).
async fn tokenize(State(t): State<Tokenizer>, body: Bytes) -> Response {
    let request: Option<Value> = serde_json::from_slice(&body).ok();
    let model = request
        .as_ref()
        .and_then(|r| r["model"].as_str())
        .unwrap_or_default()
        .to_string();
    let fault = t.faults.take(&t.host, RequestKind::Tokenize);
    if let Some(resp) = before_answer(fault.as_ref(), &t.host, &model, false).await {
        return resp;
    }
    let Some(prompt) = request.as_ref().and_then(|r| r["prompt"].as_str()) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            None,
            "tokenize: `prompt` must be a string",
        );
    };
    if !t.models.contains(&model) {
        return model_not_found(&model, &t.host);
    }
    let count = count_tokens(prompt);
    json_answer(
        fault.as_ref(),
        serde_json::json!({ "count": count }).to_string().into(),
    )
}
