//! A simulated external plaintext OpenAI-compatible provider (e.g.
//! `openrouter`): the same chat surface as a NEAR backend, no attestation.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;

use super::{chat_router, ChatBackend, Service};
use crate::fault::FaultBoard;

/// Builder: `ExternalBackend::new("openrouter").serves(["m"]).faults(&board).install(&mut sim)`.
#[derive(Debug, Clone)]
pub struct ExternalBackend {
    host: String,
    models: BTreeSet<String>,
    faults: FaultBoard,
    api_key: Option<String>,
}

impl ExternalBackend {
    pub fn new(host: impl Into<String>) -> Self {
        ExternalBackend {
            host: host.into(),
            models: BTreeSet::new(),
            faults: FaultBoard::new(),
            api_key: None,
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

    /// Requires `Authorization: Bearer <key>` on every chat request (401
    /// without it), as a real provider does.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    pub fn faults(mut self, board: &FaultBoard) -> Self {
        self.faults = board.clone();
        self
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn install(self, sim: &mut turmoil::Sim<'_>) {
        self.service().install(sim);
    }

    /// The host's HTTP surface, to install on turmoil or serve on real sockets.
    pub fn service(self) -> Service {
        let host = self.host.clone();
        Service::new(host, move || {
            chat_router(ChatBackend {
                host: self.host.clone(),
                models: self.models.clone(),
                faults: self.faults.clone(),
                signing_key: None,
                served: AtomicU64::new(0),
                answer_model: None,
                api_key: self.api_key.clone(),
            })
        })
    }
}
