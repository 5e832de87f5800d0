//! NEAR backends: the operator's attested fleet (tier Near, R1).
//!
//! A backend is found through its inference URL; its attestation report
//! carries the signing public keys that pubkey routing matches (R16). One
//! provider per inference URL, shared by every model that URL serves.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::context::{tokenize_count, TOKENIZE_PATH, TOKENIZE_TIMEOUT};
use crate::http::HttpClient;
use crate::openai::{provider_error, OpenAiClient, Timeouts};
use crate::provider::{ChatRequest, ChatResponse, ChatStream, Provider, ProviderError, ProviderId};
use crate::tier::{Capabilities, Tier};

/// Where a backend publishes its attestation report.
pub const ATTESTATION_PATH: &str = "/v1/attestation/report";

/// The attestation report's wire form:
/// `{"signing_algo":"ed25519","signing_public_keys":["<64 hex>", …]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationReport {
    pub signing_algo: String,
    /// Lower-case hex of each 32-byte ed25519 verifying key.
    pub signing_public_keys: Vec<String>,
}

impl AttestationReport {
    /// The report's keys, validated and normalised (lower-case, deduplicated,
    /// in report order). A key that is not a valid ed25519 point fails closed.
    pub fn verified_keys(&self) -> Result<Vec<String>, ProviderError> {
        if self.signing_algo != "ed25519" {
            return Err(ProviderError::Integrity(format!(
                "attestation report: unsupported signing algorithm {:?}",
                self.signing_algo
            )));
        }
        let mut keys: Vec<String> = Vec::with_capacity(self.signing_public_keys.len());
        for key in &self.signing_public_keys {
            let bytes = decode_key(key).ok_or_else(|| {
                ProviderError::Integrity("attestation report: malformed signing key".into())
            })?;
            ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| {
                ProviderError::Integrity("attestation report: invalid ed25519 key".into())
            })?;
            let key = key.to_ascii_lowercase();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Ok(keys)
    }
}

/// A signing key as reports carry it and `x-model-pub-key` names it (R16):
/// the hex of a 32-byte ed25519 verifying key.
pub const SIGNING_KEY_HEX_LEN: usize = 64;

fn decode_key(hex: &str) -> Option<[u8; 32]> {
    let digits = hex.as_bytes();
    if digits.len() != SIGNING_KEY_HEX_LEN {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// A NEAR backend, reached over plain OpenAI-compatible HTTP.
#[derive(Debug)]
pub struct NearProvider {
    id: ProviderId,
    client: OpenAiClient,
    signing_keys: Vec<String>,
    /// SPEC-parity R40: the declared window, [`NO_WINDOW`] when none. A
    /// provider is shared per URL and reused across refreshes, so the
    /// latest row's number wins; a row without one never clears it.
    window: AtomicU64,
}

/// [`NearProvider`]'s window before any row declared one.
const NO_WINDOW: u64 = u64::MAX;

impl NearProvider {
    /// Fetches the backend's attestation report and builds its provider.
    pub async fn discover(http: HttpClient, inference_url: &str) -> Result<Self, ProviderError> {
        Self::discover_with(http, inference_url, Timeouts::default()).await
    }

    pub async fn discover_with(
        http: HttpClient,
        inference_url: &str,
        timeouts: Timeouts,
    ) -> Result<Self, ProviderError> {
        let client = OpenAiClient::new(http, inference_url)
            .map_err(provider_error)?
            .with_timeouts(timeouts)
            .forwarding_key_headers(true);
        let report: AttestationReport = client.get_json(ATTESTATION_PATH).await?;
        let signing_keys = report.verified_keys()?;
        Ok(NearProvider {
            // Shared per inference URL, so the URL's authority names it.
            id: ProviderId::new(client.authority()),
            client,
            signing_keys,
            window: AtomicU64::new(NO_WINDOW),
        })
    }

    /// R40: a refresh or PATCH that reuses this provider overwrites its
    /// window with the row's number and never clears it (`None` keeps it).
    pub fn declare_context_window(&self, window: Option<u32>) {
        if let Some(w) = window {
            self.window.store(u64::from(w), Ordering::Relaxed);
        }
    }

    pub fn inference_url(&self) -> &str {
        self.client.base_url()
    }
}

#[async_trait]
impl Provider for NearProvider {
    fn id(&self) -> &ProviderId {
        &self.id
    }

    fn tier(&self) -> Tier {
        Tier::Near
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn signing_keys(&self) -> &[String] {
        &self.signing_keys
    }

    fn context_window(&self) -> Option<u32> {
        u32::try_from(self.window.load(Ordering::Relaxed)).ok()
    }

    /// R43: `POST /v1/tokenize` with `{"model", "prompt"}`, 2 s at most;
    /// any failure or other shape is no count.
    async fn tokenize(&self, model: &str, prompt: &str) -> Option<u64> {
        let client = self.client.clone().with_timeouts(Timeouts {
            request: TOKENIZE_TIMEOUT,
            ..self.client.timeouts()
        });
        let body = serde_json::json!({ "model": model, "prompt": prompt });
        let call = client.send_json::<serde_json::Value>(http::Method::POST, TOKENIZE_PATH, &body);
        match tokio::time::timeout(TOKENIZE_TIMEOUT, call).await {
            Ok(Ok(reply)) => tokenize_count(&reply),
            Ok(Err(e)) => {
                tracing::debug!(provider = %self.id, error = %e, "tokenize failed; heuristic used");
                None
            }
            Err(_) => {
                tracing::debug!(provider = %self.id, "tokenize timed out; heuristic used");
                None
            }
        }
    }

    async fn chat_completion(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        self.client.chat_completion(req, &req.model).await
    }

    async fn chat_completion_stream(&self, req: &ChatRequest) -> Result<ChatStream, ProviderError> {
        self.client.chat_completion_stream(req, &req.model).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(keys: &[&str]) -> AttestationReport {
        AttestationReport {
            signing_algo: "ed25519".into(),
            signing_public_keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn keys_are_validated_and_normalised() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let hex: String = sk
            .verifying_key()
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        let keys = report(&[&hex, &hex.to_lowercase()])
            .verified_keys()
            .unwrap();
        assert_eq!(keys, vec![hex.to_lowercase()]);
        assert!(matches!(
            report(&["zz"]).verified_keys(),
            Err(ProviderError::Integrity(_))
        ));
        let mut wrong_algo = report(&[&hex]);
        wrong_algo.signing_algo = "rsa".into();
        assert!(matches!(
            wrong_algo.verified_keys(),
            Err(ProviderError::Integrity(_))
        ));
    }
}
