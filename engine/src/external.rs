//! External plaintext OpenAI-compatible providers (tier NonAttested, R1),
//! e.g. an OpenRouter row. No signing keys: never pubkey-routed (R16).

use async_trait::async_trait;

use crate::http::HttpClient;
use crate::openai::{provider_error, OpenAiClient, Timeouts};
use crate::provider::{ChatRequest, ChatResponse, ChatStream, Provider, ProviderError, ProviderId};
use crate::tier::{Capabilities, Tier};

#[derive(Debug)]
pub struct ExternalProvider {
    id: ProviderId,
    client: OpenAiClient,
}

impl ExternalProvider {
    /// The provider `external:<name>` at `base_url`.
    pub fn new(http: HttpClient, name: &str, base_url: &str) -> Result<Self, ProviderError> {
        let client = OpenAiClient::new(http, base_url).map_err(provider_error)?;
        Ok(ExternalProvider {
            id: ProviderId::new(format!("external:{name}")),
            client,
        })
    }

    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.client = self.client.with_api_key(key);
        self
    }

    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.client = self.client.with_timeouts(timeouts);
        self
    }

    pub fn base_url(&self) -> &str {
        self.client.base_url()
    }
}

#[async_trait]
impl Provider for ExternalProvider {
    fn id(&self) -> &ProviderId {
        &self.id
    }

    fn tier(&self) -> Tier {
        Tier::NonAttested
    }

    /// As in the seed PR, every provider but Chutes claims both capabilities;
    /// R15 keeps a plaintext provider away from any verifiable model anyway.
    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn signing_keys(&self) -> &[String] {
        &[]
    }

    async fn chat_completion(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        self.client.chat_completion(req, &req.model).await
    }

    async fn chat_completion_stream(&self, req: &ChatRequest) -> Result<ChatStream, ProviderError> {
        self.client.chat_completion_stream(req, &req.model).await
    }
}
