//! The provider model (R1): what the router needs from any upstream.
//!
//! Providers have stable textual ids; nothing in the engine compares pointers.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::tier::{Capabilities, Tier};

/// Stable identity of a provider, e.g. `near-1` (NEAR providers are shared per
/// inference URL, so the id is derived from it), `chutes:zai-org/GLM-5.1-TEE`,
/// `external:openrouter`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProviderId(Arc<str>);

impl ProviderId {
    pub fn new(id: impl AsRef<str>) -> Self {
        ProviderId(Arc::from(id.as_ref()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for ProviderId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// The operations the router performs through a provider. Streaming is an
/// explicit property of the operation, not a naming convention (R18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Operation {
    ChatCompletion,
    ChatCompletionStream,
}

use serde::Serialize;

impl Operation {
    /// Every operation that produces a stream. A new streaming operation must
    /// be added here; `r18_streaming_operations_are_listed` guards it.
    pub const STREAMING: &'static [Operation] = &[Operation::ChatCompletionStream];

    #[inline]
    pub fn is_streaming(self) -> bool {
        Self::STREAMING.contains(&self)
    }
}

/// A chat completion request as the router forwards it. `body` is the client's
/// OpenAI-style JSON object; its `model` is the canonical id, and each provider
/// substitutes its own upstream name (R3).
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub body: serde_json::Map<String, serde_json::Value>,
    /// `x-model-pub-key`: route only to providers holding this signing key (R16).
    pub model_pub_key: Option<String>,
    /// `x-client-pub-key`: the client wants a provider that speaks client E2EE (R18).
    pub client_pub_key: Option<String>,
}

impl ChatRequest {
    pub fn operation(&self, stream: bool) -> Operation {
        if stream {
            Operation::ChatCompletionStream
        } else {
            Operation::ChatCompletion
        }
    }
}

/// A complete (non-streamed) response: the JSON body the client receives,
/// already carrying the canonical id in `model`.
#[derive(Debug, Clone)]
pub struct ChatResponse {
    pub body: Bytes,
}

/// One item of a streamed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// One OpenAI SSE `data:` payload (without the `data: ` prefix), already
    /// carrying the canonical id in `model`.
    Chunk(Bytes),
    /// An authenticated chunk for the router's own accounting only, never
    /// sent to the client: SPEC-parity R59's final usage chunk a client did
    /// not ask for, which billing and R46's TTFT sample still see.
    Metered(Bytes),
    /// The authenticated end of the stream. Only this produces the client's
    /// `[DONE]`; a stream that ends without it is a truncation (R23).
    Done,
}

pub type ChatStream = Pin<Box<dyn Stream<Item = Result<StreamItem, ProviderError>> + Send>>;

/// Why a provider refused a request it cannot serve (R24).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Refusal {
    StreamingDisabled,
    ClientE2eeUnsupported,
}

/// A failed attempt, as the provider observed it. Classification into
/// retryable / fall-through / fatal lives in one place: [`crate::retry::classify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The upstream answered with a non-success HTTP status. `message` is
    /// the text extracted from its body (R31), unredacted: classification
    /// (R35–R38) reads it raw, and every place that shows it redacts it
    /// (`client_error::redact`).
    #[error("HTTP error {status}: {message}")]
    Status { status: u16, message: String },
    /// Could not connect, or the connection was reset / the pipe broke.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The upstream's body broke in transit or could not be read (R37: a
    /// broken body, retryable).
    #[error("error decoding response body: {0}")]
    BodyDecode(String),
    /// A 2xx body arrived complete but is not a valid completion (R37: not
    /// retryable; a retry would get the same answer).
    #[error("Failed to parse response: {0}")]
    Parse(String),
    /// The inference did not finish within its deadline.
    #[error("inference timed out")]
    Timeout,
    /// The provider cannot serve this kind of request (R24).
    #[error("{}", refusal_message(*.0))]
    Refused(Refusal),
    /// End-to-end encryption or attestation failed: tampering or a broken
    /// peer. Fail closed; never retried on another round.
    #[error("end-to-end encryption failed: {0}")]
    Integrity(String),
    /// No candidate instance's key is bound by attestation evidence (§7b,
    /// R61): nothing was sent. Fail closed; never retried.
    #[error("attestation failed: {0}")]
    Attestation(String),
    /// The stream ended without an authenticated terminator (R23).
    #[error("stream truncated: upstream ended without an authenticated [DONE]")]
    Truncated,
    /// An upstream failure that is passed on neither as HTTP nor with its
    /// status (SPEC-parity R39: a Chutes 400/404/413/422 or other client
    /// error, a model Chutes does not list): 502 generic to the client,
    /// classified by R35.6's words.
    #[error("{0}")]
    Masked(String),
}

fn refusal_message(r: Refusal) -> &'static str {
    match r {
        Refusal::StreamingDisabled => {
            "streaming is disabled for this provider (set CHUTES_ENABLE_STREAMING to enable it)"
        }
        Refusal::ClientE2eeUnsupported => "client-facing E2EE is not supported by this provider",
    }
}

impl ProviderError {
    pub fn status(status: u16, message: impl Into<String>) -> Self {
        ProviderError::Status {
            status,
            message: message.into(),
        }
    }
}

/// An upstream the router can route to.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn id(&self) -> &ProviderId;
    fn tier(&self) -> Tier;
    fn capabilities(&self) -> Capabilities;
    /// Signing public keys (hex) for pubkey routing (R16). NEAR: from its
    /// attestation report. Chutes and plaintext providers: none.
    fn signing_keys(&self) -> &[String];

    /// SPEC-parity R40: the context window it declares, in tokens; `None`
    /// is unlimited. NEAR: its catalog row's `context_length` (or a
    /// long-context block's window); Chutes: `CHUTES_MODELS`' `@n` (R41).
    fn context_window(&self) -> Option<u32> {
        None
    }

    /// SPEC-parity R43: an exact token count of `prompt` for `model`, or
    /// `None` (the provider cannot count, the call failed or timed out, the
    /// reply had no count). Only NEAR counts.
    async fn tokenize(&self, _model: &str, _prompt: &str) -> Option<u64> {
        None
    }

    async fn chat_completion(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError>;

    /// Opens a stream. `Ok` means the upstream accepted the request; errors
    /// after that arrive as stream items.
    async fn chat_completion_stream(&self, req: &ChatRequest) -> Result<ChatStream, ProviderError>;
}

impl fmt::Debug for dyn Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Provider({} {})", self.id(), self.tier())
    }
}
