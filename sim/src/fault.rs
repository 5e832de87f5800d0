//! A deterministic, scriptable fault board shared by the simulated hosts.
//!
//! The scenario runner injects faults per host; each host asks the board once
//! per request ([`FaultBoard::take`]) and acts out what it gets. Partitions and
//! crash/restart are not here: the runner uses turmoil's own API for those.
//!
//! In a scenario a fault is one flat table (see [`FaultInjection`]):
//!
//! ```toml
//! fault = { host = "near-1", http_status = 503, times = 4 }
//! fault = { host = "near-1", http_status = 500, code = "client_media_fetch_failed" }
//! fault = { host = "near-1", model_not_found = true }
//! fault = { host = "near-1", reset_before_body = true }
//! fault = { host = "near-1", reset_after_chunks = 2 }
//! fault = { host = "near-1", latency_ms = 5000 }
//! fault = { host = "near-1", slow_first_token_ms = 5000 }
//! fault = { host = "near-1", cut_stream_after = 2 }
//! fault = { host = "catalog", http_status = 503, on = "catalog" }
//! # Chutes only (frame indices count the encrypted `e2e` frames, 0-based,
//! # the inner [DONE] frame included):
//! fault = { host = "chutes", forged_outer_done = 2 }  # outer [DONE] after 2 frames, rest dropped
//! fault = { host = "chutes", e2e_error = true }       # an e2e_error event instead of the stream
//! fault = { host = "chutes", drop_frame = 1 }
//! fault = { host = "chutes", reorder_frame = 1 }      # swap frames 1 and 2
//! fault = { host = "chutes", replay_frame = 1 }       # frame 1 sent twice
//! fault = { host = "chutes", wrong_key = true }       # instance listing carries the gateway's key
//! fault = { host = "chutes", gzip_bomb = true }       # JSON reply inflates past 64 MiB
//! fault = { host = "chutes", oversized_line = true }  # an SSE line over 16 MiB
//! fault = { host = "chutes", frame_before_init = true } # frame 0 moved before e2e_init
//! fault = { host = "chutes", corrupt_frame = 2 }      # one ciphertext bit of frame 2 flipped
//! fault = { host = "chutes", bad_base64_frame = 2 }   # frame 2's payload is not base64
//! ```
//!
//! `times` (default: until cleared) counts the requests the fault hits. `on`
//! narrows which requests it hits; by default a stream-only fault hits
//! streamed chats and any other fault hits every request but the
//! attestation report (see [`Scope`]). Several faults on one host: the first
//! injected that matches the request fires.
//!
//! Adding a fault kind (e.g. Chutes' forged outer `[DONE]`): a [`Fault`]
//! variant, its key in `FaultSpec` and the two conversions below.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// What a host is asked to serve, as far as faults are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `POST /v1/chat/completions`, JSON answer.
    Chat,
    /// `POST /v1/chat/completions` with `stream: true`.
    ChatStream,
    /// `GET /v1/attestation/report`.
    Attestation,
    /// `GET /v1/catalog`.
    Catalog,
    /// `GET /v1/external`.
    External,
    /// `PATCH /v1/catalog`.
    CatalogPatch,
    /// Chutes' `GET /v1/models` (slug → chute id).
    Models,
    /// Chutes' `GET /e2e/instances/{chute_id}` (keys, nonces, evidence).
    Instances,
}

/// Which requests a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Any,
    /// Everything but the attestation report: a host's own traffic.
    Service,
    /// Chat completions, JSON or streamed.
    Chat,
    ChatJson,
    ChatStream,
    Attestation,
    Catalog,
    External,
    CatalogPatch,
    Models,
    Instances,
}

impl Scope {
    pub fn matches(self, kind: RequestKind) -> bool {
        use RequestKind as K;
        match self {
            Scope::Any => true,
            Scope::Service => kind != K::Attestation,
            Scope::Chat => matches!(kind, K::Chat | K::ChatStream),
            Scope::ChatJson => kind == K::Chat,
            Scope::ChatStream => kind == K::ChatStream,
            Scope::Attestation => kind == K::Attestation,
            Scope::Catalog => kind == K::Catalog,
            Scope::External => kind == K::External,
            Scope::CatalogPatch => kind == K::CatalogPatch,
            Scope::Models => kind == K::Models,
            Scope::Instances => kind == K::Instances,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scope::Any => "any",
            Scope::Service => "service",
            Scope::Chat => "chat",
            Scope::ChatJson => "chat_json",
            Scope::ChatStream => "chat_stream",
            Scope::Attestation => "attestation",
            Scope::Catalog => "catalog",
            Scope::External => "external",
            Scope::CatalogPatch => "catalog_patch",
            Scope::Models => "models",
            Scope::Instances => "instances",
        }
    }
}

/// One kind of misbehaviour of an HTTP host (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this status and an OpenAI-style error body; `code` is the
    /// body's `error.code` (429 defaults to `rate_limit_exceeded`).
    HttpStatus {
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// 404 with `error.code = "model_not_found"`, whatever the model.
    ModelNotFound,
    /// Drop the connection before any response byte.
    ResetBeforeBody,
    /// Send the head and `after_chunks` stream chunks (half a JSON body),
    /// then drop the connection.
    ResetMidBody { after_chunks: u32 },
    /// Delay the whole response.
    Latency { ms: u64 },
    /// Send the stream's head at once but its first chunk after `ms`.
    SlowFirstToken { ms: u64 },
    /// End the stream cleanly after `after_chunks` chunks, without `[DONE]`
    /// (a JSON body: cut in half).
    CutStream { after_chunks: u32 },
    /// Chutes gateway: send `after_frames` encrypted frames, then a forged
    /// plaintext outer `data: [DONE]`, and drop the rest.
    ForgedOuterDone { after_frames: u32 },
    /// Chutes instance: an `{"e2e_error": …}` event instead of the stream.
    E2eError,
    /// Chutes gateway: drop encrypted frame `index`.
    DropFrame { index: u32 },
    /// Chutes gateway: swap encrypted frames `index` and `index + 1`.
    ReorderFrame { index: u32 },
    /// Chutes gateway: send encrypted frame `index` twice.
    ReplayFrame { index: u32 },
    /// Chutes gateway: list its own ML-KEM key for every instance, with the
    /// evidence of the real key (§7b must reject it).
    WrongKey,
    /// Chutes instance: a JSON reply whose authenticated gzip inflates past
    /// the 64 MiB cap.
    GzipBomb,
    /// Chutes gateway: an SSE line longer than the 16 MiB cap.
    OversizedLine,
    /// Chutes gateway: relay frame 0 before the `e2e_init` event.
    FrameBeforeInit,
    /// Chutes gateway: flip one ciphertext bit of frame `index` (AEAD failure).
    CorruptFrame { index: u32 },
    /// Chutes gateway: replace frame `index`'s payload with text that is not base64.
    BadBase64Frame { index: u32 },
}

impl Fault {
    /// Requests the fault hits when the scenario does not say (`on`).
    pub fn default_scope(&self) -> Scope {
        match self {
            Fault::SlowFirstToken { .. }
            | Fault::CutStream { .. }
            | Fault::ForgedOuterDone { .. }
            | Fault::E2eError
            | Fault::DropFrame { .. }
            | Fault::ReorderFrame { .. }
            | Fault::ReplayFrame { .. }
            | Fault::OversizedLine
            | Fault::FrameBeforeInit
            | Fault::CorruptFrame { .. }
            | Fault::BadBase64Frame { .. } => Scope::ChatStream,
            Fault::GzipBomb => Scope::ChatJson,
            Fault::WrongKey => Scope::Instances,
            _ => Scope::Service,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::HttpStatus { status, code: None } => write!(f, "http_status = {status}"),
            Fault::HttpStatus {
                status,
                code: Some(code),
            } => write!(f, "http_status = {status}, code = {code:?}"),
            Fault::ModelNotFound => f.write_str("model_not_found = true"),
            Fault::ResetBeforeBody => f.write_str("reset_before_body = true"),
            Fault::ResetMidBody { after_chunks } => {
                write!(f, "reset_after_chunks = {after_chunks}")
            }
            Fault::Latency { ms } => write!(f, "latency_ms = {ms}"),
            Fault::SlowFirstToken { ms } => write!(f, "slow_first_token_ms = {ms}"),
            Fault::CutStream { after_chunks } => write!(f, "cut_stream_after = {after_chunks}"),
            Fault::ForgedOuterDone { after_frames } => {
                write!(f, "forged_outer_done = {after_frames}")
            }
            Fault::E2eError => f.write_str("e2e_error = true"),
            Fault::DropFrame { index } => write!(f, "drop_frame = {index}"),
            Fault::ReorderFrame { index } => write!(f, "reorder_frame = {index}"),
            Fault::ReplayFrame { index } => write!(f, "replay_frame = {index}"),
            Fault::WrongKey => f.write_str("wrong_key = true"),
            Fault::GzipBomb => f.write_str("gzip_bomb = true"),
            Fault::OversizedLine => f.write_str("oversized_line = true"),
            Fault::FrameBeforeInit => f.write_str("frame_before_init = true"),
            Fault::CorruptFrame { index } => write!(f, "corrupt_frame = {index}"),
            Fault::BadBase64Frame { index } => write!(f, "bad_base64_frame = {index}"),
        }
    }
}

/// A fault with how often and on what it fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    pub fault: Fault,
    /// Requests it hits before expiring; `None`: until cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// Requests it hits; `None`: [`Fault::default_scope`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Scope>,
}

impl FaultRule {
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    pub fn on(mut self, scope: Scope) -> Self {
        self.on = Some(scope);
        self
    }

    pub fn scope(&self) -> Scope {
        self.on.unwrap_or_else(|| self.fault.default_scope())
    }
}

impl From<Fault> for FaultRule {
    fn from(fault: Fault) -> Self {
        FaultRule {
            fault,
            times: None,
            on: None,
        }
    }
}

impl Fault {
    /// This fault as a rule, for chaining `.times(n)` / `.on(scope)`.
    pub fn rule(self) -> FaultRule {
        self.into()
    }
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.fault)?;
        if let Some(n) = self.times {
            write!(f, ", times = {n}")?;
        }
        if let Some(scope) = self.on {
            write!(f, ", on = {:?}", scope.as_str())?;
        }
        Ok(())
    }
}

/// A fault aimed at a host: the scenario's flat table
/// `{ host = "near-1", http_status = 503, times = 4 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FaultSpec", into = "FaultSpec")]
pub struct FaultInjection {
    pub host: String,
    pub rule: FaultRule,
}

impl fmt::Display for FaultInjection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{ host = {:?}, {} }}", self.host, self.rule)
    }
}

/// The flat wire form of [`FaultInjection`]: exactly one fault key.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model_not_found: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reset_before_body: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reset_after_chunks: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slow_first_token_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cut_stream_after: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forged_outer_done: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e2e_error: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    drop_frame: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reorder_frame: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replay_frame: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wrong_key: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gzip_bomb: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oversized_line: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    frame_before_init: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    corrupt_frame: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bad_base64_frame: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    times: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on: Option<Scope>,
}

fn flag(key: &str, value: bool) -> Result<(), String> {
    if value {
        Ok(())
    } else {
        Err(format!("`{key} = false` means nothing: leave the key out"))
    }
}

impl TryFrom<FaultSpec> for FaultInjection {
    type Error = String;

    fn try_from(s: FaultSpec) -> Result<Self, String> {
        let mut faults = Vec::new();
        if let Some(status) = s.http_status {
            if !(400..=599).contains(&status) {
                return Err(format!(
                    "http_status = {status}: a fault status must be 4xx or 5xx"
                ));
            }
            faults.push(Fault::HttpStatus {
                status,
                code: s.code.clone(),
            });
        } else if s.code.is_some() {
            return Err("`code` only goes with `http_status`".into());
        }
        if let Some(v) = s.model_not_found {
            flag("model_not_found", v)?;
            faults.push(Fault::ModelNotFound);
        }
        if let Some(v) = s.reset_before_body {
            flag("reset_before_body", v)?;
            faults.push(Fault::ResetBeforeBody);
        }
        if let Some(after_chunks) = s.reset_after_chunks {
            faults.push(Fault::ResetMidBody { after_chunks });
        }
        if let Some(ms) = s.latency_ms {
            faults.push(Fault::Latency { ms });
        }
        if let Some(ms) = s.slow_first_token_ms {
            faults.push(Fault::SlowFirstToken { ms });
        }
        if let Some(after_chunks) = s.cut_stream_after {
            faults.push(Fault::CutStream { after_chunks });
        }
        if let Some(after_frames) = s.forged_outer_done {
            faults.push(Fault::ForgedOuterDone { after_frames });
        }
        if let Some(v) = s.e2e_error {
            flag("e2e_error", v)?;
            faults.push(Fault::E2eError);
        }
        if let Some(index) = s.drop_frame {
            faults.push(Fault::DropFrame { index });
        }
        if let Some(index) = s.reorder_frame {
            faults.push(Fault::ReorderFrame { index });
        }
        if let Some(index) = s.replay_frame {
            faults.push(Fault::ReplayFrame { index });
        }
        if let Some(v) = s.wrong_key {
            flag("wrong_key", v)?;
            faults.push(Fault::WrongKey);
        }
        if let Some(v) = s.gzip_bomb {
            flag("gzip_bomb", v)?;
            faults.push(Fault::GzipBomb);
        }
        if let Some(v) = s.oversized_line {
            flag("oversized_line", v)?;
            faults.push(Fault::OversizedLine);
        }
        if let Some(v) = s.frame_before_init {
            flag("frame_before_init", v)?;
            faults.push(Fault::FrameBeforeInit);
        }
        if let Some(index) = s.corrupt_frame {
            faults.push(Fault::CorruptFrame { index });
        }
        if let Some(index) = s.bad_base64_frame {
            faults.push(Fault::BadBase64Frame { index });
        }
        if s.times == Some(0) {
            return Err("times = 0 would never fire: use times >= 1, or leave it out".into());
        }
        if faults.len() != 1 {
            return Err(format!(
                "a fault names exactly one of http_status, model_not_found, reset_before_body, \
                 reset_after_chunks, latency_ms, slow_first_token_ms, cut_stream_after, \
                 forged_outer_done, e2e_error, drop_frame, reorder_frame, replay_frame, \
                 wrong_key, gzip_bomb, oversized_line, frame_before_init, corrupt_frame, \
                 bad_base64_frame (found {})",
                faults.len()
            ));
        }
        Ok(FaultInjection {
            host: s.host,
            rule: FaultRule {
                fault: faults.remove(0),
                times: s.times,
                on: s.on,
            },
        })
    }
}

impl From<FaultInjection> for FaultSpec {
    fn from(i: FaultInjection) -> Self {
        let mut s = FaultSpec {
            host: i.host,
            times: i.rule.times,
            on: i.rule.on,
            ..FaultSpec::default()
        };
        match i.rule.fault {
            Fault::HttpStatus { status, code } => {
                s.http_status = Some(status);
                s.code = code;
            }
            Fault::ModelNotFound => s.model_not_found = Some(true),
            Fault::ResetBeforeBody => s.reset_before_body = Some(true),
            Fault::ResetMidBody { after_chunks } => s.reset_after_chunks = Some(after_chunks),
            Fault::Latency { ms } => s.latency_ms = Some(ms),
            Fault::SlowFirstToken { ms } => s.slow_first_token_ms = Some(ms),
            Fault::CutStream { after_chunks } => s.cut_stream_after = Some(after_chunks),
            Fault::ForgedOuterDone { after_frames } => s.forged_outer_done = Some(after_frames),
            Fault::E2eError => s.e2e_error = Some(true),
            Fault::DropFrame { index } => s.drop_frame = Some(index),
            Fault::ReorderFrame { index } => s.reorder_frame = Some(index),
            Fault::ReplayFrame { index } => s.replay_frame = Some(index),
            Fault::WrongKey => s.wrong_key = Some(true),
            Fault::GzipBomb => s.gzip_bomb = Some(true),
            Fault::OversizedLine => s.oversized_line = Some(true),
            Fault::FrameBeforeInit => s.frame_before_init = Some(true),
            Fault::CorruptFrame { index } => s.corrupt_frame = Some(index),
            Fault::BadBase64Frame { index } => s.bad_base64_frame = Some(index),
        }
        s
    }
}

/// What a host must do for one request.
pub type Action = Fault;

/// One fault that fired, for the scenario's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fired {
    pub host: String,
    pub kind: RequestKind,
    pub fault: Fault,
}

/// An injected rule and what is left of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveFault {
    pub rule: FaultRule,
    /// Hits left; `None`: until cleared.
    pub remaining: Option<u32>,
}

/// What a simulated host did, in the order it happened: the world's side of
/// every request, which the reference model (`crate::model`) is fed. Never
/// read from the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// `host` consulted the board for one request of `kind`; `fault` is what
    /// it was told to act out (`None`: it answered normally).
    Request {
        host: String,
        kind: RequestKind,
        fault: Option<Fault>,
    },
    /// The catalog built this answer (a listing, or the rows after a patch).
    Listing {
        kind: RequestKind,
        models: Vec<tiersim_engine::catalog::CatalogRow>,
        external: Vec<tiersim_engine::catalog::ExternalRow>,
    },
}

#[derive(Debug, Default)]
struct Board {
    /// Per host, in injection order. BTreeMap: any listing is ordered.
    rules: BTreeMap<String, Vec<ActiveFault>>,
    fired: Vec<Fired>,
    events: Vec<HostEvent>,
}

/// The shared fault board. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct FaultBoard(Arc<Mutex<Board>>);

impl FaultBoard {
    pub fn new() -> Self {
        Self::default()
    }

    fn board(&self) -> MutexGuard<'_, Board> {
        // A panicking host must not take the whole board down with it.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a fault to `host`, after the ones already there.
    pub fn inject(&self, host: impl Into<String>, rule: impl Into<FaultRule>) {
        let rule = rule.into();
        let remaining = rule.times;
        self.board()
            .rules
            .entry(host.into())
            .or_default()
            .push(ActiveFault { rule, remaining });
    }

    /// Applies a scenario's fault step.
    pub fn apply(&self, injection: FaultInjection) {
        self.inject(injection.host, injection.rule);
    }

    /// Removes every fault of `host`.
    pub fn clear(&self, host: &str) {
        self.board().rules.remove(host);
    }

    pub fn clear_all(&self) {
        self.board().rules.clear();
    }

    /// Called by `host` once per request of `kind`: the first matching fault,
    /// counting one hit against it (it expires after its last).
    pub fn take(&self, host: &str, kind: RequestKind) -> Option<Action> {
        let mut board = self.board();
        let fault = Self::take_rule(&mut board, host, kind);
        board.events.push(HostEvent::Request {
            host: host.to_string(),
            kind,
            fault: fault.clone(),
        });
        fault
    }

    fn take_rule(board: &mut Board, host: &str, kind: RequestKind) -> Option<Action> {
        let rules = board.rules.get_mut(host)?;
        let at = rules.iter().position(|r| r.rule.scope().matches(kind))?;
        let fault = rules[at].rule.fault.clone();
        if let Some(left) = &mut rules[at].remaining {
            *left -= 1;
            if *left == 0 {
                rules.remove(at);
            }
        }
        if rules.is_empty() {
            board.rules.remove(host);
        }
        board.fired.push(Fired {
            host: host.to_string(),
            kind,
            fault: fault.clone(),
        });
        Some(fault)
    }

    /// The faults still armed, per host.
    pub fn active(&self) -> BTreeMap<String, Vec<ActiveFault>> {
        self.board().rules.clone()
    }

    /// Every fault that fired so far, in order.
    pub fn fired(&self) -> Vec<Fired> {
        self.board().fired.clone()
    }

    /// Records what a host did beyond the fault it consulted (the catalog's
    /// rows), for the reference model.
    pub fn record(&self, event: HostEvent) {
        self.board().events.push(event);
    }

    /// How many host events happened so far.
    pub fn events_len(&self) -> usize {
        self.board().events.len()
    }

    /// The host events from index `from` on.
    pub fn events_from(&self, from: usize) -> Vec<HostEvent> {
        let board = self.board();
        board.events[from.min(board.events.len())..].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<FaultInjection, String> {
        #[derive(Deserialize)]
        struct Step {
            fault: FaultInjection,
        }
        toml::from_str::<Step>(s)
            .map(|s| s.fault)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn scenario_form_round_trips() {
        let f = parse(r#"fault = { host = "near-1", http_status = 503, times = 4 }"#).unwrap();
        assert_eq!(f.host, "near-1");
        assert_eq!(
            f.rule,
            Fault::HttpStatus {
                status: 503,
                code: None
            }
            .rule()
            .times(4)
        );
        assert_eq!(
            f.to_string(),
            r#"{ host = "near-1", http_status = 503, times = 4 }"#
        );
        let back = toml::to_string(&f).unwrap();
        assert_eq!(back, "host = \"near-1\"\nhttp_status = 503\ntimes = 4\n");

        let f = parse(r#"fault = { host = "catalog", latency_ms = 10, on = "catalog" }"#).unwrap();
        assert_eq!(f.rule.scope(), Scope::Catalog);
        let f = parse(r#"fault = { host = "n", cut_stream_after = 2 }"#).unwrap();
        assert_eq!(f.rule.scope(), Scope::ChatStream);
    }

    #[test]
    fn chutes_faults_round_trip_with_their_scopes() {
        for (src, fault, scope) in [
            (
                "forged_outer_done = 2",
                Fault::ForgedOuterDone { after_frames: 2 },
                Scope::ChatStream,
            ),
            ("e2e_error = true", Fault::E2eError, Scope::ChatStream),
            (
                "drop_frame = 1",
                Fault::DropFrame { index: 1 },
                Scope::ChatStream,
            ),
            (
                "reorder_frame = 0",
                Fault::ReorderFrame { index: 0 },
                Scope::ChatStream,
            ),
            (
                "replay_frame = 3",
                Fault::ReplayFrame { index: 3 },
                Scope::ChatStream,
            ),
            ("wrong_key = true", Fault::WrongKey, Scope::Instances),
            ("gzip_bomb = true", Fault::GzipBomb, Scope::ChatJson),
            (
                "oversized_line = true",
                Fault::OversizedLine,
                Scope::ChatStream,
            ),
            (
                "frame_before_init = true",
                Fault::FrameBeforeInit,
                Scope::ChatStream,
            ),
            (
                "corrupt_frame = 2",
                Fault::CorruptFrame { index: 2 },
                Scope::ChatStream,
            ),
            (
                "bad_base64_frame = 2",
                Fault::BadBase64Frame { index: 2 },
                Scope::ChatStream,
            ),
        ] {
            let f = parse(&format!("fault = {{ host = \"chutes\", {src} }}")).unwrap();
            assert_eq!(f.rule.fault, fault, "{src}");
            assert_eq!(f.rule.scope(), scope, "{src}");
            assert_eq!(f.to_string(), format!("{{ host = \"chutes\", {src} }}"));
            let back: FaultInjection = toml::from_str(&toml::to_string(&f).unwrap()).unwrap();
            assert_eq!(back, f);
        }
        let err = parse(r#"fault = { host = "chutes", wrong_key = false }"#).unwrap_err();
        assert!(err.contains("means nothing"), "{err}");
        let f = parse(r#"fault = { host = "chutes", http_status = 503, on = "instances" }"#);
        assert_eq!(f.unwrap().rule.scope(), Scope::Instances);
    }

    #[test]
    fn bad_faults_are_rejected_with_reasons() {
        for (src, needle) in [
            (r#"fault = { host = "n" }"#, "exactly one"),
            (
                r#"fault = { host = "n", http_status = 503, latency_ms = 1 }"#,
                "exactly one",
            ),
            (r#"fault = { host = "n", http_status = 200 }"#, "4xx or 5xx"),
            (
                r#"fault = { host = "n", http_status = 503, times = 0 }"#,
                "times = 0",
            ),
            (
                r#"fault = { host = "n", model_not_found = false }"#,
                "means nothing",
            ),
            (r#"fault = { host = "n", code = "x" }"#, "only goes with"),
            (
                r#"fault = { host = "n", http_status = 503, tims = 2 }"#,
                "unknown field",
            ),
            (
                r#"fault = { host = "n", http_status = 503, on = "chats" }"#,
                "unknown variant",
            ),
        ] {
            let err = parse(src).unwrap_err();
            assert!(err.contains(needle), "{src}: {err}");
        }
    }

    #[test]
    fn take_counts_down_and_respects_scope() {
        let board = FaultBoard::new();
        board.inject(
            "near-1",
            Fault::HttpStatus {
                status: 503,
                code: None,
            }
            .rule()
            .times(2),
        );
        board.inject("near-1", Fault::CutStream { after_chunks: 1 });
        assert_eq!(board.take("near-1", RequestKind::Attestation), None);
        assert_eq!(board.take("near-2", RequestKind::Chat), None);
        for _ in 0..2 {
            assert!(matches!(
                board.take("near-1", RequestKind::ChatStream),
                Some(Fault::HttpStatus { status: 503, .. })
            ));
        }
        assert_eq!(board.take("near-1", RequestKind::Chat), None);
        assert_eq!(
            board.take("near-1", RequestKind::ChatStream),
            Some(Fault::CutStream { after_chunks: 1 })
        );
        assert_eq!(board.fired().len(), 3);
        board.clear("near-1");
        assert!(board.active().is_empty());
        assert_eq!(board.take("near-1", RequestKind::ChatStream), None);
    }
}
