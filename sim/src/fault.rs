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
//! fault = { host = "near-1", http_status = 400, message = "bad upstream http://10.0.0.1:8000/x" }
//! fault = { host = "near-1", model_not_found = true }
//! fault = { host = "near-1", reset_before_body = true }
//! fault = { host = "near-1", reset_after_chunks = 2 }
//! fault = { host = "near-1", latency_ms = 5000 }
//! fault = { host = "near-1", slow_first_token_ms = 5000 }
//! fault = { host = "near-1", cut_stream_after = 2 }
//! fault = { host = "near-1", stream_error_after = 1 }  # then {"error":{"code":503,…}}
//! fault = { host = "near-1", own_model_name = true }  # answers as `near-1/<model>`
//! fault = { host = "catalog", http_status = 503, on = "catalog" }
//! # Chutes only (frame indices count the encrypted `e2e` frames, 0-based,
//! # the inner [DONE] frame included):
//! fault = { host = "chutes", forged_outer_done = 2 }  # outer [DONE] after 2 frames, rest dropped
//! fault = { host = "chutes", e2e_error = true }       # an e2e_error event instead of the stream
//! fault = { host = "chutes", e2e_error_after = 0 }    # e2e_init, then e2e_error (0 frames)
//! fault = { host = "chutes", stream_wrong_key = true } # stream keyed to another response key
//! # Chutes evidence (§7b; `instance` is the 0-based instance of the chute, default 0):
//! fault = { host = "chutes", evidence = "missing", instance = 0 }  # no entry for it
//! fault = { host = "chutes", evidence = "other_nonce" }   # quote bound to another fetch nonce
//! fault = { host = "chutes", evidence = "other_key" }     # quote bound to another ML-KEM key
//! fault = { host = "chutes", evidence = "bad_signature" } # one quote signature bit flipped
//! fault = { host = "chutes", evidence = "listed_failed" } # in failed_instance_ids
//! fault = { host = "chutes", evidence = "null_lists" }    # {"evidence":null,"failed_instance_ids":null}
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
//! attestation (NEAR's report, Chutes' evidence; see [`Scope`]). Several faults on one host: the first
//! injected that matches the request fires.
//!
//! Adding a fault kind (e.g. Chutes' forged outer `[DONE]`): one row of
//! the `fault_table!` below (variant, key, default scope, Chutes-only,
//! costly, wire read/write, sweep draw), then the host that acts it out.

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
    /// Chutes' `GET /e2e/instances/{chute_id}` (keys, nonces).
    Instances,
    /// Chutes' `GET /chutes/{chute_id}/evidence?nonce=…` (§7b).
    Evidence,
    /// A NEAR backend's `POST /v1/tokenize` (SPEC-parity R43).
    Tokenize,
}

/// Which requests a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Any,
    /// Everything but attestation (NEAR's report, Chutes' evidence): a
    /// host's own traffic. Attestation is hit only when a fault says so
    /// (`on = "attestation"` / `"evidence"`, or an `evidence` flaw).
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
    Evidence,
    Tokenize,
}

impl Scope {
    pub fn matches(self, kind: RequestKind) -> bool {
        use RequestKind as K;
        match self {
            Scope::Any => true,
            Scope::Service => !matches!(kind, K::Attestation | K::Evidence),
            Scope::Chat => matches!(kind, K::Chat | K::ChatStream),
            Scope::ChatJson => kind == K::Chat,
            Scope::ChatStream => kind == K::ChatStream,
            Scope::Attestation => kind == K::Attestation,
            Scope::Catalog => kind == K::Catalog,
            Scope::External => kind == K::External,
            Scope::CatalogPatch => kind == K::CatalogPatch,
            Scope::Models => kind == K::Models,
            Scope::Instances => kind == K::Instances,
            Scope::Evidence => kind == K::Evidence,
            Scope::Tokenize => kind == K::Tokenize,
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
            Scope::Evidence => "evidence",
            Scope::Tokenize => "tokenize",
        }
    }
}

/// Defines every fault kind once: its [`Fault`] variant, its scenario key
/// (which is also its `[sweep]`/`--kinds` name and the snake_case of its
/// variant), the requests it hits by default, whether only Chutes acts it
/// out, whether the sweep leaves it out unless asked, how the scenario's
/// wire value reads into it and back, and how the sweep draws one. The
/// kind list ([`FaultKind`]), the names, the wire form (`FaultSpec`), the
/// conversions, `Display` and the sweep's draw are generated from it.
macro_rules! fault_table {
    (
        $(
            $(#[doc = $doc:literal])*
            $Variant:ident $({ $($field:ident : $fty:ty),* $(,)? })? => $key:ident : $wire:ty {
                scope: $scope:ident,
                chutes_only: $chutes_only:literal,
                costly: $costly:literal,
                read: |$rv:ident, $rs:ident| $read:expr,
                write: $write:expr,
                draw: |$dd:ident, $dm:ident| $draw:expr $(,)?
            }
        )*
        ;
        $(
            $(#[doc = $xdoc:literal])*
            $Extra:ident => $xkey:ident
        )*
    ) => {
        /// One kind of misbehaviour of an HTTP host (SPEC §8).
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Fault {
            $( $(#[doc = $doc])* $Variant $({ $($field: $fty),* })?, )*
        }

        /// A kind of fault the sweep can draw (SPEC §8): every fault-board
        /// kind, plus turmoil's partitions and crash/restart. Its name is
        /// its scenario key.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize,
            schemars::JsonSchema,
        )]
        #[serde(rename_all = "snake_case")]
        pub enum FaultKind {
            $( $(#[doc = $doc])* $Variant, )*
            $( $(#[doc = $xdoc])* $Extra, )*
        }

        impl FaultKind {
            pub const ALL: &'static [FaultKind] = &[$(FaultKind::$Variant,)* $(FaultKind::$Extra,)*];

            /// Whether a sweep leaves this kind out unless asked for (each
            /// allocates tens of MiB).
            pub fn costly(self) -> bool {
                match self {
                    $( FaultKind::$Variant => $costly, )*
                    $( FaultKind::$Extra => false, )*
                }
            }

            /// The name used in scenarios, `[sweep]` and on the command line.
            pub fn name(self) -> &'static str {
                match self {
                    $( FaultKind::$Variant => stringify!($key), )*
                    $( FaultKind::$Extra => stringify!($xkey), )*
                }
            }

            /// Whether only the Chutes gateway acts this fault out.
            pub fn chutes_only(self) -> bool {
                match self {
                    $( FaultKind::$Variant => $chutes_only, )*
                    $( FaultKind::$Extra => false, )*
                }
            }

            /// A random fault of this kind for the sweep (`None` for the
            /// kinds that are not fault-board faults: partition, crash).
            pub fn draw(self, dice: &mut dyn Dice, limits: &DrawLimits) -> Option<Fault> {
                match self {
                    $( FaultKind::$Variant => {
                        let ($dd, $dm) = (dice, limits);
                        Some($draw)
                    } )*
                    $( FaultKind::$Extra => None, )*
                }
            }
        }

        impl Fault {
            /// This fault's kind.
            pub fn kind(&self) -> FaultKind {
                match self {
                    $( Fault::$Variant { .. } => FaultKind::$Variant, )*
                }
            }

            /// Requests the fault hits when the scenario does not say (`on`).
            pub fn default_scope(&self) -> Scope {
                match self {
                    $( Fault::$Variant { .. } => Scope::$scope, )*
                }
            }

            /// The value of the fault's scenario key.
            fn wire_value(&self) -> String {
                match self {
                    $( Fault::$Variant { $($($field,)*)? .. } => {
                        $($(let _ = &$field;)*)?
                        let value: $wire = $write;
                        value.to_string()
                    } )*
                }
            }
        }

        /// The flat wire form of [`FaultInjection`]: exactly one fault key.
        #[derive(Debug, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FaultSpec {
            host: String,
            $(
                #[serde(default, skip_serializing_if = "Option::is_none")]
                $key: Option<$wire>,
            )*
            #[serde(default, skip_serializing_if = "Option::is_none")]
            code: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            message: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            instance: Option<u32>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            times: Option<u32>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            on: Option<Scope>,
        }

        impl FaultSpec {
            /// Every fault the spec names, read from its keys.
            fn faults(&self) -> Result<Vec<Fault>, String> {
                let mut out = Vec::new();
                $(
                    if let Some($rv) = self.$key.clone() {
                        WireValue::accept(&$rv, stringify!($key))?;
                        let $rs = self;
                        out.push($read);
                    }
                )*
                Ok(out)
            }

            /// The spec's key for `fault`.
            fn set(&mut self, fault: &Fault) {
                match fault {
                    $( Fault::$Variant { $($($field,)*)? .. } => {
                        $($(let _ = &$field;)*)?
                        self.$key = Some($write);
                    } )*
                }
            }
        }
    };
}

fault_table! {
    /// Answer with this status and an OpenAI-style error body; `code` is the
    /// body's `error.code` (429 defaults to `rate_limit_exceeded`) and
    /// `message` its `error.message` (default: a fixed text naming the host).
    HttpStatus { status: u16, code: Option<String>, message: Option<String> } => http_status: u16 {
        scope: Service, chutes_only: false, costly: false,
        read: |v, spec| {
            if !(400..=599).contains(&v) {
                return Err(format!("http_status = {v}: a fault status must be 4xx or 5xx"));
            }
            Fault::HttpStatus { status: v, code: spec.code.clone(), message: spec.message.clone() }
        },
        write: *status,
        draw: |d, m| Fault::HttpStatus {
            status: m.statuses[d.below(m.statuses.len() as u64) as usize],
            code: None,
            message: m.draw_message(d),
        },
    }
    /// 404 with `error.code = "model_not_found"`, whatever the model.
    ModelNotFound => model_not_found: bool {
        scope: Service, chutes_only: false, costly: false,
        read: |_v, _s| Fault::ModelNotFound,
        write: true,
        draw: |_d, _m| Fault::ModelNotFound,
    }
    /// Drop the connection before any response byte.
    ResetBeforeBody => reset_before_body: bool {
        scope: Service, chutes_only: false, costly: false,
        read: |_v, _s| Fault::ResetBeforeBody,
        write: true,
        draw: |_d, _m| Fault::ResetBeforeBody,
    }
    /// Send the head and `after_chunks` stream chunks (half a JSON body),
    /// then drop the connection.
    ResetAfterChunks { after_chunks: u32 } => reset_after_chunks: u32 {
        scope: Service, chutes_only: false, costly: false,
        read: |v, _s| Fault::ResetAfterChunks { after_chunks: v },
        write: *after_chunks,
        draw: |d, _m| Fault::ResetAfterChunks { after_chunks: d.below(3) as u32 },
    }
    /// Delay the whole response by `ms`.
    LatencyMs { ms: u64 } => latency_ms: u64 {
        scope: Service, chutes_only: false, costly: false,
        read: |v, _s| Fault::LatencyMs { ms: v },
        write: *ms,
        draw: |d, m| Fault::LatencyMs { ms: d.between(1, m.max_latency_ms) },
    }
    /// Send the stream's head at once but its first chunk after `ms`.
    SlowFirstTokenMs { ms: u64 } => slow_first_token_ms: u64 {
        scope: ChatStream, chutes_only: false, costly: false,
        read: |v, _s| Fault::SlowFirstTokenMs { ms: v },
        write: *ms,
        draw: |d, m| Fault::SlowFirstTokenMs { ms: d.between(1, m.max_latency_ms) },
    }
    /// End the stream cleanly after `after_chunks` chunks, without `[DONE]`
    /// (a JSON body: cut in half).
    CutStreamAfter { after_chunks: u32 } => cut_stream_after: u32 {
        scope: ChatStream, chutes_only: false, costly: false,
        read: |v, _s| Fault::CutStreamAfter { after_chunks: v },
        write: *after_chunks,
        draw: |d, _m| Fault::CutStreamAfter { after_chunks: d.below(4) as u32 },
    }
    /// Stream `after_chunks` chunks, then an OpenAI-style in-stream error
    /// object `{"error":{"code":503,"message":"queue full"}}`, and end
    /// (SPEC-parity R34.6: the router reads it as an HTTP 503).
    StreamErrorAfter { after_chunks: u32 } => stream_error_after: u32 {
        scope: ChatStream, chutes_only: false, costly: false,
        read: |v, _s| Fault::StreamErrorAfter { after_chunks: v },
        write: *after_chunks,
        draw: |d, _m| Fault::StreamErrorAfter { after_chunks: d.below(4) as u32 },
    }
    /// Chutes gateway: send `after_frames` encrypted frames, then a forged
    /// plaintext outer `data: [DONE]`, and drop the rest.
    ForgedOuterDone { after_frames: u32 } => forged_outer_done: u32 {
        scope: ChatStream, chutes_only: true, costly: false,
        read: |v, _s| Fault::ForgedOuterDone { after_frames: v },
        write: *after_frames,
        draw: |d, _m| Fault::ForgedOuterDone { after_frames: d.below(4) as u32 },
    }
    /// Chutes instance: an `{"e2e_error": …}` event instead of the stream.
    E2eError => e2e_error: bool {
        scope: ChatStream, chutes_only: true, costly: false,
        read: |_v, _s| Fault::E2eError,
        write: true,
        draw: |_d, _m| Fault::E2eError,
    }
    /// Chutes instance: `e2e_init`, `frames` encrypted frames, then an
    /// `{"e2e_error": …}` event (0: before any content).
    E2eErrorAfter { frames: u32 } => e2e_error_after: u32 {
        scope: ChatStream, chutes_only: true, costly: false,
        read: |v, _s| Fault::E2eErrorAfter { frames: v },
        write: *frames,
        draw: |d, _m| Fault::E2eErrorAfter { frames: d.below(4) as u32 },
    }
    /// Chutes instance: the stream is keyed to a response key other than
    /// the request's (every frame fails authentication).
    StreamWrongKey => stream_wrong_key: bool {
        scope: ChatStream, chutes_only: true, costly: false,
        read: |_v, _s| Fault::StreamWrongKey,
        write: true,
        draw: |_d, _m| Fault::StreamWrongKey,
    }
    /// Chutes gateway: the evidence of `instance` (0-based; the scenario's
    /// `instance` key, default 0) is flawed.
    Evidence { flaw: EvidenceFlaw, instance: u32 } => evidence: EvidenceFlaw {
        scope: Evidence, chutes_only: true, costly: false,
        read: |v, spec| Fault::Evidence { flaw: v, instance: spec.instance.unwrap_or(0) },
        write: *flaw,
        draw: |d, _m| Fault::Evidence {
            flaw: EvidenceFlaw::ALL[d.below(EvidenceFlaw::ALL.len() as u64) as usize],
            instance: d.below(2) as u32,
        },
    }
    /// Chutes gateway: drop encrypted frame `index`.
    DropFrame { index: u32 } => drop_frame: u32 {
        scope: ChatStream, chutes_only: true, costly: false,
        read: |v, _s| Fault::DropFrame { index: v },
        write: *index,
        draw: |d, _m| Fault::DropFrame { index: d.below(4) as u32 },
    }
    /// Chutes gateway: swap encrypted frames `index` and `index + 1`.
    ReorderFrame { index: u32 } => reorder_frame: u32 {
        scope: ChatStream, chutes_only: true, costly: false,
        read: |v, _s| Fault::ReorderFrame { index: v },
        write: *index,
        draw: |d, _m| Fault::ReorderFrame { index: d.below(3) as u32 },
    }
    /// Chutes gateway: send encrypted frame `index` twice.
    ReplayFrame { index: u32 } => replay_frame: u32 {
        scope: ChatStream, chutes_only: true, costly: false,
        read: |v, _s| Fault::ReplayFrame { index: v },
        write: *index,
        draw: |d, _m| Fault::ReplayFrame { index: d.below(4) as u32 },
    }
    /// Chutes gateway: list its own ML-KEM key for every instance, with the
    /// evidence of the real key (§7b must reject it).
    WrongKey => wrong_key: bool {
        scope: Instances, chutes_only: true, costly: false,
        read: |_v, _s| Fault::WrongKey,
        write: true,
        draw: |_d, _m| Fault::WrongKey,
    }
    /// Chutes instance: a JSON reply whose authenticated gzip inflates past
    /// the 64 MiB cap.
    GzipBomb => gzip_bomb: bool {
        scope: ChatJson, chutes_only: true, costly: true,
        read: |_v, _s| Fault::GzipBomb,
        write: true,
        draw: |_d, _m| Fault::GzipBomb,
    }
    /// Chutes gateway: an SSE line longer than the 16 MiB cap.
    OversizedLine => oversized_line: bool {
        scope: ChatStream, chutes_only: true, costly: true,
        read: |_v, _s| Fault::OversizedLine,
        write: true,
        draw: |_d, _m| Fault::OversizedLine,
    }
    /// Chutes gateway: relay frame 0 before the `e2e_init` event.
    FrameBeforeInit => frame_before_init: bool {
        scope: ChatStream, chutes_only: true, costly: false,
        read: |_v, _s| Fault::FrameBeforeInit,
        write: true,
        draw: |_d, _m| Fault::FrameBeforeInit,
    }
    /// Chutes gateway: flip one ciphertext bit of frame `index` (AEAD failure).
    CorruptFrame { index: u32 } => corrupt_frame: u32 {
        scope: ChatStream, chutes_only: true, costly: false,
        read: |v, _s| Fault::CorruptFrame { index: v },
        write: *index,
        draw: |d, _m| Fault::CorruptFrame { index: d.below(4) as u32 },
    }
    /// Chutes gateway: replace frame `index`'s payload with text that is not base64.
    BadBase64Frame { index: u32 } => bad_base64_frame: u32 {
        scope: ChatStream, chutes_only: true, costly: false,
        read: |v, _s| Fault::BadBase64Frame { index: v },
        write: *index,
        draw: |d, _m| Fault::BadBase64Frame { index: d.below(4) as u32 },
    }
    /// A chat backend names its own model (`<host>/<model>`, as a server
    /// that serves a local path would) in every answer and chunk, so the
    /// router's rewrite to the canonical id (R3) is visible.
    OwnModelName => own_model_name: bool {
        scope: Chat, chutes_only: false, costly: false,
        read: |_v, _s| Fault::OwnModelName,
        write: true,
        draw: |_d, _m| Fault::OwnModelName,
    }
    ;
    /// Cut the link between the router and the host for a while.
    Partition => partition
    /// Crash the host, restart it later.
    Crash => crash
}

/// A scenario value that must mean something: `key = false` does not.
trait WireValue {
    fn accept(&self, _key: &str) -> Result<(), String> {
        Ok(())
    }
}

impl WireValue for bool {
    fn accept(&self, key: &str) -> Result<(), String> {
        if *self {
            Ok(())
        } else {
            Err(format!("`{key} = false` means nothing: leave the key out"))
        }
    }
}

impl WireValue for u16 {}
impl WireValue for EvidenceFlaw {}
impl WireValue for u32 {}
impl WireValue for u64 {}

/// How the gateway spoils an instance's evidence (§7b).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceFlaw {
    /// No entry for the instance.
    Missing,
    /// The quote binds another fetch nonce (a replayed quote).
    OtherNonce,
    /// The quote binds another ML-KEM key.
    OtherKey,
    /// One bit of the quote's signature flipped.
    BadSignature,
    /// The instance is listed in `failed_instance_ids` (its entry stays).
    ListedFailed,
    /// Both lists are `null` (every instance, whatever `instance` says).
    NullLists,
}

impl EvidenceFlaw {
    pub const ALL: &'static [EvidenceFlaw] = &[
        EvidenceFlaw::Missing,
        EvidenceFlaw::OtherNonce,
        EvidenceFlaw::OtherKey,
        EvidenceFlaw::BadSignature,
        EvidenceFlaw::ListedFailed,
        EvidenceFlaw::NullLists,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EvidenceFlaw::Missing => "missing",
            EvidenceFlaw::OtherNonce => "other_nonce",
            EvidenceFlaw::OtherKey => "other_key",
            EvidenceFlaw::BadSignature => "bad_signature",
            EvidenceFlaw::ListedFailed => "listed_failed",
            EvidenceFlaw::NullLists => "null_lists",
        }
    }
}

/// Its scenario value as written in a fault table (a quoted TOML string),
/// as [`Fault`]'s `Display` writes every fault key's value.
impl fmt::Display for EvidenceFlaw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.name())
    }
}

/// The randomness the sweep draws faults with (its seeded ChaCha20 stream).
pub trait Dice {
    /// Uniform in `0..n` (0 when `n == 0`).
    fn below(&mut self, n: u64) -> u64;

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
}

/// The sweep menu's bounds on drawn faults.
pub struct DrawLimits<'a> {
    /// What `http_status` draws from.
    pub statuses: &'a [u16],
    /// Texts an `http_status` fault may carry (empty: the fixed text).
    pub messages: &'a [String],
    /// Longest `latency_ms` / `slow_first_token_ms` (at least 1).
    pub max_latency_ms: u64,
}

impl DrawLimits<'_> {
    /// One of the messages or none (the host's fixed text), each equally
    /// likely. Draws nothing without messages, so a menu without them
    /// draws the schedules it always drew.
    fn draw_message(&self, dice: &mut dyn Dice) -> Option<String> {
        if self.messages.is_empty() {
            return None;
        }
        let i = dice.below(self.messages.len() as u64 + 1) as usize;
        i.checked_sub(1).map(|i| self.messages[i].clone())
    }
}

impl FaultKind {
    pub fn from_name(name: &str) -> Option<FaultKind> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// Whether `host` can suffer this fault: the router only crashes (a
    /// partition cuts it from another host); the client, which drives the
    /// scenario, suffers none.
    pub fn hits(self, host: &str) -> bool {
        match self {
            _ if host == "client" => false,
            FaultKind::Crash => true,
            FaultKind::Partition => host != "router",
            _ if host == "router" => false,
            k if k.chutes_only() => host == "chutes",
            _ => true,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}", self.kind().name(), self.wire_value())?;
        if let Fault::HttpStatus { code, message, .. } = self {
            if let Some(code) = code {
                write!(f, ", code = {code:?}")?;
            }
            if let Some(message) = message {
                write!(f, ", message = {message:?}")?;
            }
        }
        if let Fault::Evidence { instance, .. } = self {
            write!(f, ", instance = {instance}")?;
        }
        Ok(())
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

impl TryFrom<FaultSpec> for FaultInjection {
    type Error = String;

    fn try_from(s: FaultSpec) -> Result<Self, String> {
        let mut faults = s.faults()?;
        if s.http_status.is_none() && (s.code.is_some() || s.message.is_some()) {
            return Err("`code` and `message` only go with `http_status`".into());
        }
        if s.evidence.is_none() && s.instance.is_some() {
            return Err("`instance` only goes with `evidence`".into());
        }
        if s.times == Some(0) {
            return Err("times = 0 would never fire: use times >= 1, or leave it out".into());
        }
        if faults.len() != 1 {
            let keys: Vec<&str> = FaultKind::ALL
                .iter()
                .filter(|k| k.draw(&mut NoDice, &NO_LIMITS).is_some())
                .map(|k| k.name())
                .collect();
            return Err(format!(
                "a fault names exactly one of {} (found {})",
                keys.join(", "),
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

/// Draws nothing random: lists the fault-board kinds (those that draw).
struct NoDice;

impl Dice for NoDice {
    fn below(&mut self, _n: u64) -> u64 {
        0
    }
}

const NO_LIMITS: DrawLimits<'static> = DrawLimits {
    statuses: &[500],
    messages: &[],
    max_latency_ms: 1,
};

impl From<FaultInjection> for FaultSpec {
    fn from(i: FaultInjection) -> Self {
        let mut s = FaultSpec {
            host: i.host,
            times: i.rule.times,
            on: i.rule.on,
            ..FaultSpec::default()
        };
        s.set(&i.rule.fault);
        match i.rule.fault {
            Fault::HttpStatus { code, message, .. } => {
                s.code = code;
                s.message = message;
            }
            Fault::Evidence { instance, .. } => s.instance = Some(instance),
            _ => {}
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
    /// The router process (re)started: a fresh registry, then its first
    /// refresh.
    RouterBoot,
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
    received: Vec<Received>,
    events: Vec<HostEvent>,
    /// `serve` keeps no record (nothing reads it, and it would grow with
    /// every request a long-running world serves): see
    /// [`FaultBoard::stop_recording`].
    unrecorded: bool,
}

/// A chat request as an upstream host received it (a Chutes request once
/// decrypted). Every host already holds the board, so the board also keeps
/// these, for the `upstream` expectation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Received {
    pub host: String,
    pub body: serde_json::Value,
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
        if !board.unrecorded {
            board.events.push(HostEvent::Request {
                host: host.to_string(),
                kind,
                fault: fault.clone(),
            });
        }
        fault
    }

    /// From now on, keep no record of what hosts did (fired faults, host
    /// events, received bodies): for `serve`, whose world runs for as long
    /// as it is asked to and whose records nobody reads. Faults still act.
    pub fn stop_recording(&self) {
        let mut board = self.board();
        board.unrecorded = true;
        board.fired = Vec::new();
        board.received = Vec::new();
        board.events = Vec::new();
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
        if !board.unrecorded {
            board.fired.push(Fired {
                host: host.to_string(),
                kind,
                fault: fault.clone(),
            });
        }
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

    /// Notes that `host` received the chat request `body`.
    pub fn note_received(&self, host: &str, body: &serde_json::Value) {
        let mut board = self.board();
        if !board.unrecorded {
            board.received.push(Received {
                host: host.to_string(),
                body: body.clone(),
            });
        }
    }

    /// How many chat requests upstream hosts have received so far.
    pub fn received_count(&self) -> usize {
        self.board().received.len()
    }

    /// Records what a host did beyond the fault it consulted (the catalog's
    /// rows, a router boot), for the reference model.
    pub fn record(&self, event: HostEvent) {
        let mut board = self.board();
        if !board.unrecorded {
            board.events.push(event);
        }
    }

    /// How many host events happened so far.
    pub fn events_len(&self) -> usize {
        self.board().events.len()
    }

    /// The host events from index `from` on.
    /// How many events are recorded so far.
    pub fn event_count(&self) -> usize {
        self.board().events.len()
    }

    pub fn events_from(&self, from: usize) -> Vec<HostEvent> {
        let board = self.board();
        board.events[from.min(board.events.len())..].to_vec()
    }

    /// The chat requests received after the first `from`, in order.
    pub fn received_since(&self, from: usize) -> Vec<Received> {
        self.board()
            .received
            .get(from..)
            .unwrap_or_default()
            .to_vec()
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
                code: None,
                message: None,
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
            (
                r#"fault = { host = "n", code = "x" }"#,
                "only go with `http_status`",
            ),
            (
                r#"fault = { host = "n", http_status = 503, tims = 2 }"#,
                "unknown field",
            ),
            (
                r#"fault = { host = "n", instance = 1 }"#,
                "only goes with `evidence`",
            ),
            (
                r#"fault = { host = "n", evidence = "stale" }"#,
                "unknown variant",
            ),
            (
                r#"fault = { host = "n", stream_wrong_key = false }"#,
                "means nothing",
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

    /// One definition per kind: the scenario key, the sweep's name and
    /// the variant agree, and every drawn fault reads back from its wire
    /// form as itself.
    #[test]
    fn fault_kind_key_sweep_name_and_variant_agree() {
        struct Ones;
        impl Dice for Ones {
            fn below(&mut self, n: u64) -> u64 {
                u64::from(n > 1)
            }
        }
        // A drawn message rides the wire too (`Ones` draws the first).
        let messages = ["maximum context length is 10 tokens".to_string()];
        let limits = DrawLimits {
            statuses: &[503],
            messages: &messages,
            max_latency_ms: 10,
        };
        for kind in FaultKind::ALL {
            let variant = format!("{kind:?}");
            let snake: String = variant
                .chars()
                .enumerate()
                .flat_map(|(i, c)| {
                    let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
                    sep.into_iter()
                        .chain(std::iter::once(c.to_ascii_lowercase()))
                })
                .collect();
            assert_eq!(kind.name(), snake.replace("base_64", "base64"));
            let Some(fault) = kind.draw(&mut Ones, &limits) else {
                assert!(matches!(kind, FaultKind::Partition | FaultKind::Crash));
                continue;
            };
            assert_eq!(fault.kind(), *kind);
            let wire = format!("fault = {{ host = \"h\", {fault} }}");
            assert_eq!(parse(&wire).unwrap().rule.fault, fault, "{wire}");
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
                message: None,
            }
            .rule()
            .times(2),
        );
        board.inject("near-1", Fault::CutStreamAfter { after_chunks: 1 });
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
            Some(Fault::CutStreamAfter { after_chunks: 1 })
        );
        assert_eq!(board.fired().len(), 3);
        board.clear("near-1");
        assert!(board.active().is_empty());
        assert_eq!(board.take("near-1", RequestKind::ChatStream), None);
    }
}
