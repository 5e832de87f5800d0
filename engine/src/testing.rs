//! In-memory providers with scripted outcomes, for engine tests, the
//! simulation's unit tests and the benches (feature `testing`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::provider::{
    ChatRequest, ChatResponse, ChatStream, Provider, ProviderError, ProviderId, Refusal, StreamItem,
};
use crate::tier::{Capabilities, Tier};

/// A provider whose next calls fail as scripted, then succeed.
///
/// A success answers `{"id":…,"model":…,"provider":…}` (and, streamed, one
/// such chunk then [`StreamItem::Done`]) where `model` is the upstream name if
/// one is set (to exercise R3), else the request's model. Like Chutes (R24),
/// it refuses a stream when it cannot stream and a client-E2EE request when it
/// lacks client E2EE, before consuming its script.
pub struct FakeProvider {
    id: ProviderId,
    tier: Tier,
    caps: Capabilities,
    keys: Vec<String>,
    upstream_model: Option<String>,
    latency: Duration,
    script: Mutex<VecDeque<ProviderError>>,
    calls: AtomicUsize,
    cut_streams: AtomicBool,
    /// SPEC-parity R40: its declared window.
    window: Option<u32>,
    /// SPEC-parity R43: what its tokenize answers (`None`: no count), and
    /// how long it takes.
    token_count: Option<u64>,
    tokenize_latency: Duration,
    tokenize_calls: AtomicUsize,
    /// Streams send a content chunk with an id and usage this long after
    /// opening (R46's TTFT), instead of the bare chunk.
    first_token: Option<Duration>,
}

impl FakeProvider {
    pub fn new(id: &str, tier: Tier, caps: Capabilities) -> FakeProvider {
        FakeProvider {
            id: ProviderId::new(id),
            tier,
            caps,
            keys: Vec::new(),
            upstream_model: None,
            latency: Duration::ZERO,
            script: Mutex::new(VecDeque::new()),
            calls: AtomicUsize::new(0),
            cut_streams: AtomicBool::new(false),
            window: None,
            token_count: None,
            tokenize_latency: Duration::ZERO,
            tokenize_calls: AtomicUsize::new(0),
            first_token: None,
        }
    }

    /// Declares a context window of `tokens` (SPEC-parity R40).
    pub fn with_context_window(mut self, tokens: u32) -> Self {
        self.window = Some(tokens);
        self
    }

    /// Its tokenize answers `count` after `latency` (SPEC-parity R43).
    pub fn with_token_count(mut self, count: Option<u64>, latency: Duration) -> Self {
        self.token_count = count;
        self.tokenize_latency = latency;
        self
    }

    /// How many tokenize calls it received.
    pub fn tokenize_calls(&self) -> usize {
        self.tokenize_calls.load(Ordering::Relaxed)
    }

    /// A NEAR backend: every capability.
    pub fn near(id: &str) -> FakeProvider {
        FakeProvider::new(id, Tier::Near, Capabilities::ALL)
    }

    /// Chutes: streaming off (the default), no client E2EE.
    pub fn chutes(id: &str) -> FakeProvider {
        FakeProvider::new(
            id,
            Tier::Attested3p,
            Capabilities {
                streaming: false,
                client_e2ee: false,
            },
        )
    }

    /// A plaintext OpenAI-compatible provider.
    pub fn external(id: &str) -> FakeProvider {
        FakeProvider::new(id, Tier::NonAttested, Capabilities::ALL)
    }

    pub fn with_keys<I: IntoIterator<Item = S>, S: Into<String>>(mut self, keys: I) -> Self {
        self.keys = keys.into_iter().map(Into::into).collect();
        self
    }

    pub fn with_streaming(mut self, on: bool) -> Self {
        self.caps.streaming = on;
        self
    }

    /// The name this provider reports in `model` (e.g. a chute slug).
    pub fn with_upstream_model(mut self, name: &str) -> Self {
        self.upstream_model = Some(name.into());
        self
    }

    /// Each call takes this long on tokio time.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// The next `times` calls fail with `error`, after anything already scripted.
    pub fn fail(self, error: ProviderError, times: usize) -> Self {
        self.push_failures(error, times);
        self
    }

    pub fn push_failures(&self, error: ProviderError, times: usize) {
        let mut s = self.script.lock().unwrap_or_else(PoisonError::into_inner);
        s.extend(std::iter::repeat_n(error, times));
    }

    /// Streams open, send one chunk, then break without a terminator.
    pub fn cutting_streams(self) -> Self {
        self.cut_streams.store(true, Ordering::Relaxed);
        self
    }

    /// Streams open at once and send their first content chunk (with a chat
    /// id and a non-zero usage record, so R46 samples it) after `ttft`.
    pub fn with_first_token(mut self, ttft: Duration) -> Self {
        self.first_token = Some(ttft);
        self
    }

    pub fn arc(self) -> Arc<FakeProvider> {
        Arc::new(self)
    }

    /// How many times a chat operation was called.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    async fn answer(&self, req: &ChatRequest, stream: bool) -> Result<Bytes, ProviderError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if stream && !self.caps.streaming {
            return Err(ProviderError::Refused(Refusal::StreamingDisabled));
        }
        if req.client_pub_key.is_some() && !self.caps.client_e2ee {
            return Err(ProviderError::Refused(Refusal::ClientE2eeUnsupported));
        }
        let next = self
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        if let Some(e) = next {
            return Err(e);
        }
        let model = self.upstream_model.as_deref().unwrap_or(&req.model);
        let body = serde_json::json!({
            "id": format!("{}-{}", self.id, self.calls()),
            "model": model,
            "provider": self.id.as_str(),
        });
        Ok(Bytes::from(body.to_string()))
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn id(&self) -> &ProviderId {
        &self.id
    }
    fn tier(&self) -> Tier {
        self.tier
    }
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    fn signing_keys(&self) -> &[String] {
        &self.keys
    }
    fn context_window(&self) -> Option<u32> {
        self.window
    }
    async fn tokenize(&self, _model: &str, _prompt: &str) -> Option<u64> {
        self.tokenize_calls.fetch_add(1, Ordering::Relaxed);
        if !self.tokenize_latency.is_zero() {
            tokio::time::sleep(self.tokenize_latency).await;
        }
        self.token_count
    }

    async fn chat_completion(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        Ok(ChatResponse {
            body: self.answer(req, false).await?,
        })
    }

    async fn chat_completion_stream(&self, req: &ChatRequest) -> Result<ChatStream, ProviderError> {
        let chunk = self.answer(req, true).await?;
        let end = if self.cut_streams.load(Ordering::Relaxed) {
            Err(ProviderError::Truncated)
        } else {
            Ok(StreamItem::Done)
        };
        if let Some(ttft) = self.first_token {
            use futures_util::StreamExt;
            let content = serde_json::json!({
                "id": format!("{}-{}", self.id, self.calls()),
                "model": self.upstream_model.as_deref().unwrap_or(&req.model),
                "choices": [{"index": 0, "delta": {"content": "hi"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            });
            let first = futures_util::stream::once(async move {
                tokio::time::sleep(ttft).await;
                Ok(StreamItem::Chunk(Bytes::from(content.to_string())))
            });
            return Ok(Box::pin(first.chain(futures_util::stream::iter([end]))));
        }
        let items = [Ok(StreamItem::Chunk(chunk)), end];
        Ok(Box::pin(futures_util::stream::iter(items)))
    }
}

/// A request for `model` with no keys.
pub fn request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        body: serde_json::Map::new(),
        model_pub_key: None,
        client_pub_key: None,
    }
}

/// `(model, providers)` rows as the registry's source maps take them, e.g.
/// `Discovered(rows(&[("m", &[&n1, &n2])]))`.
pub fn rows(rows: &[(&str, &[&Arc<FakeProvider>])]) -> BTreeMap<String, Vec<Arc<dyn Provider>>> {
    rows.iter()
        .map(|(m, ps)| {
            let ps = ps
                .iter()
                .map(|p| Arc::clone(p) as Arc<dyn Provider>)
                .collect();
            (m.to_string(), ps)
        })
        .collect()
}
