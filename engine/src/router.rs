//! The router facade: catalog gate (R6/R13), selection (R15–R18), retry and
//! fallback (R19–R22), and the canonical id on every response (R3).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::config::Profile;
use crate::context::{self, ContextRouting, TOKENIZE_PERMITS, TOKENIZE_TIMEOUT};
use crate::health::Health;
use crate::provider::{
    ChatRequest, ChatResponse, ChatStream, ProviderError, ProviderId, StreamItem,
};
use crate::registry::Registry;
use crate::registry::Table;
use crate::retry::{self, Attempt};
use crate::select::{select_traced, with_order, SelectError};
use crate::tier::Tier;
use arc_swap::Guard;
use smallvec::SmallVec;

/// Who served a request, as its usage record names it (R54).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    pub provider: ProviderId,
    pub tier: Tier,
    /// R54's `served_via_fallback`.
    pub via_fallback: bool,
}

/// A successful response and who served it.
pub enum Served {
    Json {
        by: Attribution,
        response: ChatResponse,
    },
    /// The stream as opened by the provider; its items arrive later.
    Stream { by: Attribution, stream: ChatStream },
}

impl Served {
    pub fn attribution(&self) -> &Attribution {
        match self {
            Served::Json { by, .. } | Served::Stream { by, .. } => by,
        }
    }
    pub fn provider(&self) -> &ProviderId {
        &self.attribution().provider
    }
    pub fn tier(&self) -> Tier {
        self.attribution().tier
    }
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Served::Json { .. } => "Json",
            Served::Stream { .. } => "Stream",
        };
        write!(f, "Served::{kind}({} {})", self.provider(), self.tier())
    }
}

/// Why a request was not served. What the client sees for each is decided
/// in one place, `client_error::reply` (R28–R31).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("model {model} not found")]
    UnknownModel { model: String },
    /// The catalog row is inactive (R6/R13); indistinguishable from unknown to
    /// a client (R28), distinct in the log.
    #[error("model {model} not found (inactive)")]
    Inactive { model: String },
    /// R16/R30: `x-model-pub-key` names no provider of the model.
    #[error("model {model}: no provider for this public key")]
    NoProviderForPubKey { model: String },
    /// R28: the id is active but no provider serves it.
    #[error("model {model}: no provider available")]
    NoProviders { model: String },
    /// R28: the model's in-flight cap is reached.
    #[error("model {model}: {limit} requests already in flight")]
    Overloaded { model: String, limit: usize },
    /// Every attempt failed; this is the error that ends the request (R22
    /// or, under the `upstream` profile, R33), unredacted.
    #[error("model {model}: {}", crate::client_error::redact(&error.to_string()))]
    Provider {
        model: String,
        provider: ProviderId,
        error: ProviderError,
        /// The failing provider is not NEAR's own fleet (R29 "external").
        external: bool,
        /// The length of the candidate list walked (R31's prefix).
        candidates: usize,
        /// The walk stopped at this failure (R35.1, R36).
        fast_return: bool,
    },
}

impl RouteError {
    /// The same error with the requested id as it may be shown: bounded and
    /// escaped (`echo`), for log lines.
    pub fn echoed(&self) -> RouteError {
        let mut shown = self.clone();
        let (RouteError::UnknownModel { model }
        | RouteError::Inactive { model }
        | RouteError::NoProviderForPubKey { model }
        | RouteError::NoProviders { model }
        | RouteError::Overloaded { model, .. }
        | RouteError::Provider { model, .. }) = &mut shown;
        if let std::borrow::Cow::Owned(m) = crate::echo::echo(model) {
            *model = m;
        }
        shown
    }

    /// The HTTP status the client receives.
    pub fn status(&self) -> u16 {
        crate::client_error::reply(self).status
    }
}

/// SPEC-parity R42/R43's outcome for one request.
#[derive(Debug, Default)]
struct Estimate {
    /// The requirement in tokens; `None`: none (nothing overflows).
    tokens: Option<u32>,
    /// The provider asked for an exact count and its answer (`None`: the
    /// heuristic was used after all); absent when no count was asked.
    exact: Option<(ProviderId, Option<u64>)>,
}

/// The result of routing one request, with every attempt made.
#[derive(Debug)]
pub struct Routed {
    /// The canonical model id requested.
    pub model: String,
    pub attempts: Vec<Attempt>,
    pub result: Result<Served, RouteError>,
}

pub struct Router {
    registry: Arc<Registry>,
    epoch: Instant,
    profile: Profile,
    inflight: Arc<InFlight>,
    /// SPEC-parity R42's knobs.
    context: ContextRouting,
    /// SPEC-parity R43: tokenize calls in flight at once, for this router
    /// (the process-wide permits of one router process); never waited for.
    tokenize_permits: tokio::sync::Semaphore,
}

/// R28's per-model in-flight counts. Looked up by key only, never iterated.
struct InFlight {
    limit: usize,
    counts: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One request's slot; released when dropped (the JSON reply returned, or
/// the stream ended or was dropped by the client).
struct Slot {
    inflight: Arc<InFlight>,
    model: String,
}

impl InFlight {
    /// Whether `model` is at its cap right now (a new request would be
    /// refused).
    fn is_full(&self, model: &str) -> bool {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(model).is_some_and(|n| *n >= self.limit)
    }

    fn acquire(self: &Arc<Self>, model: &str) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(model.to_string()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            inflight: self.clone(),
            model: model.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .inflight
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.model) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.model);
            }
        }
    }
}

impl Router {
    /// Attempt times are measured from here, on tokio time (paused in tests,
    /// driven by turmoil in the simulation), never the wall clock. The
    /// `tiersim` profile and the default in-flight cap.
    pub fn new(registry: Arc<Registry>) -> Router {
        Router::with_settings(
            registry,
            Profile::Tiersim,
            crate::config::DEFAULT_MODEL_CONCURRENCY,
        )
    }

    /// A router with its semantics profile and R28's per-model cap.
    pub fn with_settings(registry: Arc<Registry>, profile: Profile, model_cap: usize) -> Router {
        Router {
            registry,
            epoch: Instant::now(),
            profile,
            inflight: Arc::new(InFlight {
                limit: model_cap,
                counts: Default::default(),
            }),
            context: ContextRouting::default(),
            tokenize_permits: tokio::sync::Semaphore::new(TOKENIZE_PERMITS),
        }
    }

    /// The same router with SPEC-parity R42's knobs.
    pub fn with_context_routing(mut self, context: ContextRouting) -> Router {
        self.context = context;
        self
    }

    /// SPEC-parity R42/R43: the request's context requirement, in tokens,
    /// or `None` when no provider of the model declares a window (nothing
    /// can overflow). A single-window model uses the service hint (streamed
    /// chat only); two or more distinct windows switch on the pool's
    /// refinement, with an exact count from one NEAR provider when the
    /// request lies near a window, is not encrypted and a permit is free.
    /// The snapshot guard is not held across the tokenize call: the table
    /// is loaded again after it.
    async fn estimate(
        &self,
        table: Guard<Arc<Table>>,
        req: &ChatRequest,
        stream: bool,
    ) -> (Guard<Arc<Table>>, Estimate) {
        let Some(idx) = table.models.get(req.model.as_str()) else {
            return (table, Estimate::default());
        };
        if !idx.order.any_window {
            return (table, Estimate::default());
        }
        let m = context::measure(&req.body);
        #[cfg(feature = "planted-bugs")]
        let m = if table
            .sources
            .planted
            .has(crate::registry::PlantedBug::ReserveIgnored)
        {
            context::Measure { reserve: 0, ..m }
        } else {
            m
        };
        if !idx.order.refine {
            let tokens = stream.then(|| context::service_hint(&m));
            return (
                table,
                Estimate {
                    tokens,
                    exact: None,
                },
            );
        }
        let slots = table.model_slots(idx);
        let encrypted = req.model_pub_key.is_some() || req.client_pub_key.is_some();
        let windows: SmallVec<[u32; 4]> = slots.iter().filter_map(|s| s.window).collect();
        // R43: the first NEAR with the smallest declared window, else the
        // first NEAR (slots are sorted by tier, then window).
        let smallest = windows.iter().copied().min();
        let near = || slots.iter().filter(|s| s.tier == Tier::Near);
        #[cfg(feature = "planted-bugs")]
        let on_long_tier = table
            .sources
            .planted
            .has(crate::registry::PlantedBug::TokenizeOnLongTier);
        #[cfg(not(feature = "planted-bugs"))]
        let on_long_tier = false;
        let counter = if on_long_tier {
            near()
                .filter(|s| s.window.is_some())
                .max_by_key(|s| s.window)
        } else {
            near().find(|s| s.window.is_some() && s.window == smallest)
        }
        .or_else(|| near().next())
        .map(|s| s.provider.clone());
        // A request R28's cap is about to refuse spends no tokenize call
        // (production admits before the pool counts).
        let Some(counter) = counter.filter(|_| {
            !encrypted
                && self.context.near_boundary(&m, &windows)
                && !self.inflight.is_full(&req.model)
        }) else {
            return (
                table,
                Estimate {
                    tokens: Some(self.context.required(&m, None)),
                    exact: None,
                },
            );
        };
        let Ok(_permit) = self.tokenize_permits.try_acquire() else {
            tracing::debug!(model = %req.model, "no tokenize permit free; heuristic used");
            return (
                table,
                Estimate {
                    tokens: Some(self.context.required(&m, None)),
                    exact: None,
                },
            );
        };
        drop(table);
        let prompt = context::tokenize_prompt(&req.body);
        let exact = tokio::time::timeout(TOKENIZE_TIMEOUT, counter.tokenize(&req.model, &prompt))
            .await
            .ok()
            .flatten();
        let estimate = Estimate {
            tokens: Some(self.context.required(&m, exact)),
            exact: Some((counter.id().clone(), exact)),
        };
        (self.registry.load(), estimate)
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Routes one chat completion. For a stream, retry and fallback cover
    /// opening it; the first opened stream is returned.
    pub async fn chat(&self, req: ChatRequest, stream: bool) -> Routed {
        let mut attempts = Vec::new();
        let result = self.route(&req, stream, &mut attempts).await;
        Routed {
            model: req.model,
            attempts,
            result,
        }
    }

    async fn route(
        &self,
        req: &ChatRequest,
        stream: bool,
        attempts: &mut Vec<Attempt>,
    ) -> Result<Served, RouteError> {
        // R46: under the `upstream` profile a TTFT sample runs from here.
        let accepted = Instant::now();
        let model = req.model.as_str();
        let table = self.registry.load();
        match table.catalog_row(model) {
            None => {
                return Err(RouteError::UnknownModel {
                    model: model.into(),
                })
            }
            Some(row) if !row.active => {
                return Err(RouteError::Inactive {
                    model: model.into(),
                })
            }
            Some(_) => {}
        }
        let op = req.operation(stream);
        let (table, estimate) = self.estimate(table, req, stream).await;
        tracing::debug!(
            model,
            estimate = ?estimate.tokens,
            tokenized = ?estimate.exact,
            "context requirement"
        );
        let estimate = estimate.tokens;
        let rounds = match self.profile {
            Profile::Tiersim => retry::Rounds::SPEC,
            Profile::Upstream => retry::Rounds::LAST_ERROR,
        };
        #[cfg(feature = "planted-bugs")]
        let planted = table.sources.planted.clone();
        #[cfg(feature = "planted-bugs")]
        let rounds = planted.rounds(rounds);
        let pubkey = req.model_pub_key.as_deref();
        let e2ee = req.client_pub_key.is_some();
        #[cfg(feature = "planted-bugs")]
        let chutes_fallback = if planted.has(crate::registry::PlantedBug::PubkeyFallsBackToChutes)
            && pubkey.is_some()
        {
            attested_3p(&table, model)
        } else {
            Vec::new()
        };
        let selecting = crate::select::Request {
            op,
            model_pub_key: pubkey,
            client_e2ee: e2ee,
            estimate,
            // R48: streamed chat is placed by its first two messages.
            prefix: stream.then(|| crate::placement::prefix_hash(&req.body)),
        };
        // Owned candidates, built on the snapshot the catalog gate read: the
        // snapshot guard is not held across awaits.
        #[cfg(feature = "planted-bugs")]
        let turn_taken_late = !stream && planted.has(crate::registry::PlantedBug::TurnTakenLate);
        #[cfg(not(feature = "planted-bugs"))]
        let turn_taken_late = false;
        let candidates = match () {
            #[cfg(feature = "planted-bugs")]
            _ if turn_taken_late => crate::select::candidates_peeking(&table, model, selecting),
            _ if tracing::enabled!(tracing::Level::DEBUG) => {
                select_traced(&table, model, selecting, |sel| sel.to_candidates())
            }
            _ => with_order(&table, model, selecting, &mut (), |sel| sel.to_candidates()),
        };
        drop(table);
        let candidates = candidates.map_err(|e| match e {
            // R30: a pubkey miss covers a model with no providers at all.
            _ if pubkey.is_some() => RouteError::NoProviderForPubKey {
                model: model.into(),
            },
            // R28: the catalog row is active, the pool holds nothing for it.
            SelectError::UnknownModel | SelectError::NoProviders => RouteError::NoProviders {
                model: model.into(),
            },
            SelectError::NoProviderForPubKey => RouteError::NoProviderForPubKey {
                model: model.into(),
            },
        });
        #[cfg(feature = "planted-bugs")]
        let candidates = match candidates {
            Err(RouteError::NoProviderForPubKey { .. }) if !chutes_fallback.is_empty() => {
                Ok(Vec::new())
            }
            other => other,
        };
        #[allow(unused_mut)]
        let mut candidates = candidates?;
        #[cfg(feature = "planted-bugs")]
        for c in chutes_fallback {
            if candidates.iter().all(|(p, _)| p.id() != c.0.id()) {
                candidates.push(c);
            }
        }
        // R28: admitted only under the cap; the slot lives as long as the
        // reply (JSON) or the stream.
        let slot = self
            .inflight
            .acquire(model)
            .ok_or_else(|| RouteError::Overloaded {
                model: model.into(),
                limit: self.inflight.limit,
            })?;

        let failed = |f: retry::Failure| {
            let external = candidates
                .iter()
                .find(|(p, _)| *p.id() == f.provider)
                .is_some_and(|(p, _)| p.tier() != Tier::Near);
            RouteError::Provider {
                model: model.into(),
                provider: f.provider,
                error: f.error,
                external,
                candidates: candidates.len(),
                fast_return: f.fast_return,
            }
        };
        // R54: the first test that applies decides.
        let served = |i: usize| {
            let p = &candidates[i].0;
            let tier = p.tier();
            let via_fallback = i > 0
                || (tier != Tier::Near
                    && (candidates.iter().any(|(c, _)| c.tier() == Tier::Near)
                        || self.registry.ever_near_and_attested(model)));
            Attribution {
                provider: p.id().clone(),
                tier,
                via_fallback,
            }
        };
        if stream {
            #[cfg(feature = "planted-bugs")]
            let opened_is_success = planted.has(crate::registry::PlantedBug::StreamOpenIsSuccess);
            #[cfg(not(feature = "planted-bugs"))]
            let opened_is_success = false;
            let (i, stream) = retry::run(
                &candidates,
                self.epoch,
                attempts,
                opened_is_success,
                rounds,
                |p| async move { p.chat_completion_stream(req).await },
            )
            .await
            .map_err(failed)?;
            let health = candidates[i].1.clone();
            // R46: the sample's start (SPEC-parity's Decisions): the served
            // attempt's own start, or under `upstream` the request's.
            let ttft_from = match self.profile {
                Profile::Tiersim => attempts.last().map_or(accepted, |a| self.epoch + a.at),
                Profile::Upstream => accepted,
            };
            let probe = TtftProbe::new(health.clone(), ttft_from);
            Ok(Served::Stream {
                by: served(i),
                stream: canonical_stream(stream, model, health, rounds, slot, probe),
            })
        } else {
            let outcome = retry::run(
                &candidates,
                self.epoch,
                attempts,
                true,
                rounds,
                |p| async move { p.chat_completion(req).await },
            )
            .await;
            if turn_taken_late {
                // The turn the selection only read, taken now.
                let _ = with_order(&self.registry.load(), model, selecting, &mut (), |_| ());
            }
            let (i, response) = outcome.map_err(failed)?;
            Ok(Served::Json {
                by: served(i),
                response: ChatResponse {
                    body: canonical_model(response.body, model),
                },
            })
        }
    }
}

/// [`PlantedBug::PubkeyFallsBackToChutes`](crate::registry::PlantedBug):
/// the model's Attested3p providers, appended to a pubkey-routed walk.
#[cfg(feature = "planted-bugs")]
fn attested_3p(
    table: &Table,
    model: &str,
) -> Vec<(Arc<dyn crate::provider::Provider>, Arc<Health>)> {
    table
        .models
        .get(model)
        .map(|idx| {
            table
                .model_slots(idx)
                .iter()
                .filter(|s| s.tier == Tier::Attested3p)
                .map(|s| (s.provider.clone(), s.health.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// R3: the `model` the client sees is the canonical id, never a provider's
/// upstream name (e.g. a chute slug). Bodies already right pass through
/// byte-for-byte; anything not a JSON object with `model` is left alone.
fn canonical_model(body: Bytes, model: &str) -> Bytes {
    crate::openai::with_model(body.clone(), model).unwrap_or(body)
}

/// R3 on every chunk, and R21 for the stream's life: only the authenticated
/// end is a success, and a retryable failure after the stream opened (cut,
/// reset) counts against the provider, so one that always breaks its streams
/// is eventually demoted.
fn canonical_stream(
    stream: ChatStream,
    model: &str,
    health: Arc<Health>,
    rounds: retry::Rounds,
    slot: Slot,
    mut probe: TtftProbe,
) -> ChatStream {
    let model: Arc<str> = model.into();
    Box::pin(stream.map(move |item| {
        let _held = &slot;
        if let Ok(StreamItem::Chunk(b) | StreamItem::Metered(b)) = &item {
            probe.chunk(b);
        }
        canonical_item(item, &model, &health, rounds)
    }))
}

/// R46: watches one served stream for a TTFT sample, and takes it once,
/// when the client stream closes (ended, failed or dropped by the client):
/// only if a content chunk arrived, the stream carried a chat id and a
/// usage record with non-zero tokens, and the time is at least 1 ms.
struct TtftProbe {
    health: Arc<Health>,
    from: Instant,
    first_content: Option<Instant>,
    chat_id: bool,
    usage: bool,
}

impl TtftProbe {
    fn new(health: Arc<Health>, from: Instant) -> TtftProbe {
        TtftProbe {
            health,
            from,
            first_content: None,
            chat_id: false,
            usage: false,
        }
    }

    /// Reads one chunk until everything a sample needs has been seen.
    fn chunk(&mut self, data: &[u8]) {
        if self.first_content.is_some() && self.chat_id && self.usage {
            return;
        }
        #[derive(serde::Deserialize)]
        struct Chunk {
            #[serde(default)]
            id: Option<String>,
            #[serde(default)]
            usage: Option<serde_json::Map<String, serde_json::Value>>,
            #[serde(default)]
            choices: Vec<Choice>,
        }
        #[derive(serde::Deserialize)]
        struct Choice {
            #[serde(default)]
            delta: Option<Delta>,
        }
        #[derive(serde::Deserialize)]
        struct Delta {
            #[serde(default)]
            content: Option<String>,
        }
        let Ok(c) = serde_json::from_slice::<Chunk>(data) else {
            return;
        };
        self.chat_id |= c.id.is_some_and(|id| !id.is_empty());
        self.usage |= c
            .usage
            .is_some_and(|u| u.values().any(|v| v.as_f64().is_some_and(|n| n > 0.0)));
        let content = c.choices.iter().any(|ch| {
            ch.delta
                .as_ref()
                .and_then(|d| d.content.as_deref())
                .is_some_and(|t| !t.is_empty())
        });
        if content && self.first_content.is_none() {
            self.first_content = Some(Instant::now());
        }
    }
}

impl Drop for TtftProbe {
    fn drop(&mut self) {
        if let (Some(first), true, true) = (self.first_content, self.chat_id, self.usage) {
            self.health
                .record_ttft(first.saturating_duration_since(self.from));
        }
    }
}

fn canonical_item(
    item: Result<StreamItem, ProviderError>,
    model: &str,
    health: &Health,
    rounds: retry::Rounds,
) -> Result<StreamItem, ProviderError> {
    match item {
        Ok(StreamItem::Chunk(b)) => Ok(StreamItem::Chunk(canonical_model(b, model))),
        Ok(StreamItem::Metered(b)) => Ok(StreamItem::Metered(b)),
        Ok(StreamItem::Done) => {
            if !rounds.keep_failures_on_success {
                health.record_success();
            }
            Ok(StreamItem::Done)
        }
        Err(e) => {
            if matches!(retry::classify(&e), retry::Class::Retryable(_)) {
                health.record_failure();
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests;
