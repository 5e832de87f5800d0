//! The scenario file format (TOML). These types are the format: the JSON
//! Schema in `scenarios/scenario.schema.json` is generated from them.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use tiersim_engine::catalog::ProviderType;
use tiersim_engine::config::Profile;
use toml::Spanned;

use crate::fault::FaultInjection;
pub use crate::fault::FaultKind;
use crate::hosts::{ChunkPlan, Chunking};

/// One scenario: a world, a configuration and an ordered script of steps.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A short human title.
    pub name: String,
    /// What the scenario pins and why its expected outcome is right.
    pub description: String,
    /// Drives turmoil, every RNG, every id and timestamp in served bytes.
    #[serde(default)]
    pub seed: u64,
    /// turmoil's time step (default `"1ms"`): every event happens on a
    /// multiple of it. A coarser step (e.g. `"10ms"`) simulates the same
    /// second in fewer steps, so long runs and sweeps go faster; times in
    /// the snapshot are rounded to it.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub tick: Option<Spanned<Dur>>,
    /// The SPEC rules (`R1`…`R25`) this scenario pins.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub pins: Vec<Spanned<String>>,
    /// Review findings of the seed PR this scenario pins (free text ids,
    /// e.g. `round2/blocking`).
    #[serde(default)]
    pub findings: Vec<String>,
    #[serde(default)]
    pub config: Config,
    /// How the simulated world behaves below the hosts (chunking).
    #[serde(default)]
    pub world: WorldSpec,
    /// Oracles this scenario is expected to violate (by name, e.g.
    /// `honest_error`): the documented departures of the `upstream`
    /// profile. A violation not listed, or a listed one that does not
    /// happen, fails the run.
    #[serde(default)]
    pub expect_violations: Vec<String>,
    /// NEAR backends: one host each.
    #[serde(default)]
    pub near: Vec<NearSpec>,
    /// Chutes on the `chutes` gateway host.
    #[serde(default)]
    pub chutes: Vec<ChuteSpec>,
    /// Plaintext OpenAI-compatible providers: one host each.
    #[serde(default)]
    pub external: Vec<ExternalSpec>,
    /// The catalog's initial rows (the router's discovery source).
    #[serde(default)]
    pub catalog: Vec<CatalogRow>,
    /// The script, in order.
    #[serde(default, rename = "step")]
    #[schemars(with = "Vec<Step>")]
    pub steps: Vec<Spanned<Step>>,
    /// The fault menu of `tiersim sweep` (optional; `tiersim run` ignores it).
    #[serde(default)]
    #[schemars(with = "Option<SweepSpec>")]
    pub sweep: Option<Spanned<SweepSpec>>,
}

/// The fault menu `tiersim sweep` draws each seed's random fault schedule
/// from (SPEC §8). Every key is optional; the sweep's flags override them.
///
/// ```toml
/// [sweep]
/// hosts = ["near-1", "chutes"]
/// kinds = ["http_status", "reset_before_body", "drop_frame", "crash"]
/// weights = { http_status = 3 }
/// max_faults = 4
/// until = "20s"
/// ```
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Hosts the faults may hit (default: every host but the client).
    /// `router` only takes `crash`; a `partition` cuts the router from
    /// another host; Chutes kinds only hit `chutes`.
    #[schemars(with = "Option<Vec<String>>")]
    pub hosts: Option<Vec<Spanned<String>>>,
    /// Fault kinds to draw from (default: every kind but the costly
    /// `gzip_bomb` and `oversized_line`). Chutes kinds only hit `chutes`.
    #[schemars(with = "Option<Vec<FaultKind>>")]
    pub kinds: Option<Vec<Spanned<FaultKind>>>,
    /// How often each kind is drawn relative to the others (default 1 each;
    /// 0 never draws it).
    #[serde(default)]
    pub weights: BTreeMap<FaultKind, u32>,
    /// Fewest faults in a seed's schedule (default 1).
    #[schemars(with = "Option<u32>")]
    pub min_faults: Option<Spanned<u32>>,
    /// Most faults in a seed's schedule (default 3).
    #[schemars(with = "Option<u32>")]
    pub max_faults: Option<Spanned<u32>>,
    /// Earliest simulated time a fault starts (default `"0s"`).
    #[schemars(with = "Option<String>")]
    pub from: Option<Spanned<Dur>>,
    /// Latest simulated time a fault starts (default: when the base
    /// scenario's fault-free run ends).
    #[schemars(with = "Option<String>")]
    pub until: Option<Spanned<Dur>>,
    /// Longest a fault lasts before it is cleared, its crashed host
    /// restarted or its partition repaired (default `"30s"`).
    #[schemars(with = "Option<String>")]
    pub max_hold: Option<Spanned<Dur>>,
    /// A fault hits between 1 and `max_times` requests (default 4).
    #[schemars(with = "Option<u32>")]
    pub max_times: Option<Spanned<u32>>,
    /// Statuses `http_status` draws from (default 500, 502, 503, 504, 429,
    /// 408, 400).
    #[schemars(with = "Option<Vec<u16>>")]
    pub statuses: Option<Spanned<Vec<u16>>>,
    /// Error texts a drawn `http_status` fault may carry as its
    /// `error.message`: each drawn status fault takes one of them or the
    /// host's fixed text, by the seed (default: the fixed text only). An
    /// engine's context-length wording, for example, makes drawn 400s reach
    /// SPEC-parity R45.
    #[schemars(with = "Option<Vec<String>>")]
    pub messages: Option<Spanned<Vec<String>>>,
    /// Output reserves a seed draws for the script's requests that set
    /// `max_tokens`: each such request takes one of them (default: its
    /// own). SPEC-parity R42.2 adds the reserve to a refined requirement,
    /// so a reserve can move a request past a window.
    #[schemars(with = "Option<Vec<u64>>")]
    pub max_tokens: Option<Spanned<Vec<u64>>>,
    /// Longest `latency_ms` and `slow_first_token_ms` delay (default `"2s"`).
    #[schemars(with = "Option<String>")]
    pub max_latency: Option<Dur>,
    /// Chunkings a seed draws from (a sweep dimension; default: the
    /// scenario's own `[world] chunking`). A drawn `random` cuts with the
    /// seed as its `chunk_seed`.
    #[schemars(with = "Option<Vec<Chunking>>")]
    pub chunking: Option<Spanned<Vec<Chunking>>>,
}

/// The simulated network below the hosts.
///
/// ```toml
/// [world]
/// chunking = "random"   # "writes" (default), "whole" or "random"
/// max_chunk = 64        # random pieces of 1..=64 bytes (default: whole bodies)
/// chunk_seed = 3        # another cut of the same world
/// chutes_nonce_expires_in = "5s"   # the gateway's nonce lifetime (default 60s)
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WorldSpec {
    /// How every simulated host's response bytes are cut into writes:
    /// `writes` as the host writes them, `whole` everything ready at once,
    /// `random` at seed-drawn boundaries. A client-visible outcome must not
    /// depend on it (`tiersim check-chunking`).
    pub chunking: Chunking,
    /// Largest piece under `random`, in bytes (at least 1).
    #[schemars(with = "Option<u32>")]
    pub max_chunk: Option<Spanned<u32>>,
    /// Mixed into the seed of the cuts: the same world, cut differently.
    pub chunk_seed: u64,
    /// The simulated Chutes gateway's `nonce_expires_in`: how long a listed
    /// nonce stays valid and is remembered (whole seconds, at least 1;
    /// default 60 s). The router's instance cache follows it (R60).
    #[schemars(with = "Option<String>")]
    pub chutes_nonce_expires_in: Option<Dur>,
}

impl WorldSpec {
    /// The plan the hosts are cut under.
    pub fn plan(&self) -> ChunkPlan {
        ChunkPlan {
            chunking: self.chunking,
            max_chunk: self.max_chunk.as_ref().map(|m| *m.get_ref() as usize),
            seed: self.chunk_seed,
        }
    }
}

/// The engine's environment-style settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `CHUTES_MODELS`: comma-separated `canonical_id=chute_slug` entries.
    pub chutes_models: Option<String>,
    /// Whether `CHUTES_API_KEY` is set.
    pub chutes_api_key: bool,
    /// `CHUTES_ENABLE_STREAMING`.
    pub chutes_streaming: bool,
    /// How often the router polls the catalog (simulated time; whole
    /// seconds, at least `"1s"`).
    #[schemars(with = "String")]
    pub refresh_interval: Dur,
    /// Whether the router trusts the simulated vendor key that signs Chutes
    /// instance evidence (SPEC §7b). `false` models a misconfigured router.
    pub trust_chutes_vendor: bool,
    /// The engine must refuse to start, with an error containing this text.
    pub expect_startup_error: Option<String>,
    /// The semantics profile (SPEC-parity, Decisions): `"tiersim"` (the
    /// default) or `"upstream"`, production's behaviour on the contested
    /// points. Under `upstream` the scenario lists the oracles production
    /// breaks in `expect_violations`.
    #[schemars(with = "String")]
    pub profile: Profile,
    /// `MODEL_CONCURRENCY_LIMIT`: R28's in-flight cap per model (default 64).
    pub model_concurrency: Option<usize>,
    /// SPEC-parity R42's `CONTEXT_ROUTE_*` knobs (each a positive finite
    /// number; default: the engine's).
    pub context_route: Option<ContextRoute>,
    /// Canonical ids of `chutes_models` whose Chutes provider fails to
    /// build at startup (as a constructor error would): each stays reserved
    /// with no Chutes provider (reserved-only, SPEC §3), next to the ids
    /// whose provider builds and is pinned.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub chutes_build_fails: Vec<Spanned<String>>,
}

/// SPEC-parity R42's estimate knobs, by their `CONTEXT_ROUTE_*` names.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextRoute {
    /// `CONTEXT_ROUTE_SAFETY_FACTOR` (1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_factor: Option<f64>,
    /// `CONTEXT_ROUTE_EXACT_FACTOR` (1.05).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_factor: Option<f64>,
    /// `CONTEXT_ROUTE_TOKENIZE_BAND_LOW` (0.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenize_band_low: Option<f64>,
    /// `CONTEXT_ROUTE_TOKENIZE_BAND_HIGH` (1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenize_band_high: Option<f64>,
    /// `CONTEXT_ROUTE_MEDIA_PART_TOKENS` (1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_part_tokens: Option<f64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            chutes_models: None,
            chutes_api_key: true,
            chutes_streaming: false,
            refresh_interval: Dur(Duration::from_secs(60)),
            trust_chutes_vendor: true,
            expect_startup_error: None,
            profile: Profile::Tiersim,
            model_concurrency: None,
            context_route: None,
            chutes_build_fails: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NearSpec {
    /// Host name, also the provider id (e.g. `near-1`): lowercase letters,
    /// digits and `-`, at most 63 characters.
    pub host: String,
    /// Model ids this backend serves; others answer 404 model_not_found.
    pub models: Vec<String>,
    /// The model name this backend answers with (its own name for the
    /// model, e.g. a quantised variant), instead of echoing the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_model: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChuteSpec {
    /// The chute slug named upstream (e.g. `zai-org/GLM-5.1-TEE`).
    pub slug: String,
    /// Instances behind the gateway, each with its own ML-KEM key (1 to
    /// 64).
    #[serde(default = "one")]
    pub instances: u32,
    /// Encrypted stream protocol: 1 (Chutes' v1, the default) or 2 (hardened).
    #[serde(default = "one")]
    pub stream_protocol: u32,
    /// What the instances put in their answers beyond the plain reply, for
    /// the router's normalisation to act on (SPEC-parity R57–R59):
    /// `think`, `extra_fields`, `usage`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply: Vec<ReplyWord>,
}

/// One trait of a chute's answers (`[[chutes]] reply`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ReplyWord {
    /// The content opens with a reasoning block:
    /// `"\n<think>chutes plans</think>\n\nchutes says: …"` (JSON), and
    /// streamed as `<thi` + `nk>chutes plans</thi` + `nk>\n\nchutes says: …`,
    /// both tags split across chunks (R58).
    Think,
    /// Fields no client should see: `prompt_sha256`, `metadata`,
    /// `choices[].matched_stop`, `prompt_token_ids`, `delta.token_ids`, and
    /// the allowed `chutes_verification` (R57).
    ExtraFields,
    /// Streamed: every content chunk carries `usage`, and a request asking
    /// `stream_options.include_usage` gets a final `"choices": []` chunk
    /// with the usage before the inner `[DONE]` (one frame more; R59).
    Usage,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalSpec {
    /// Host name (e.g. `openrouter`); the provider id is `external:<host>`.
    /// Lowercase letters, digits and `-`, at most 63 characters.
    pub host: String,
    /// Model ids this provider serves.
    pub models: Vec<String>,
    /// Model ids the catalog lists for this provider (default: `models`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<String>>,
    /// Whether the router is configured with this provider's API key
    /// (`EXTERNAL_API_KEYS`; default true). Without one, each of its rows
    /// is refused at load, naming the row; the other rows still load.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub api_key: bool,
    /// The provider's API kind on its catalog rows (default
    /// `"openai_compatible"`, the one the router speaks; another kind's
    /// rows are refused at load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

fn is_true(b: &bool) -> bool {
    *b
}

impl ExternalSpec {
    /// The catalog's external row for `model` served by this provider at
    /// `base_url`.
    pub fn row(&self, model: &str, base_url: String) -> tiersim_engine::catalog::ExternalRow {
        tiersim_engine::catalog::ExternalRow {
            model: model.to_string(),
            base_url,
            name: self.host.clone(),
            kind: self
                .kind
                .clone()
                .unwrap_or_else(|| tiersim_engine::catalog::ExternalRow::OPENAI_COMPATIBLE.into()),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogRow {
    pub id: String,
    /// The NEAR host serving this id, if any; a list when several NEAR
    /// backends serve it (one database row each).
    #[serde(default)]
    #[schemars(with = "Option<Hosts>")]
    pub inference_url: Option<Spanned<Hosts>>,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default)]
    pub price: u64,
    /// SPEC-parity R40: the row's context window in tokens (its NEAR
    /// providers declare it; with a valid `long_context`, the long window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    /// SPEC-parity R40: the row's `provider_config.long_context` block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContext>,
    /// The model database's `provider_type`: `"vllm"` (the default: the
    /// `inference_url` hosts are NEAR backends) or `"external"` (served by
    /// external provider rows; a URL it carries is never used as NEAR).
    #[serde(default, skip_serializing_if = "ProviderType::is_vllm")]
    #[schemars(with = "Option<String>")]
    pub provider_type: ProviderType,
}

/// SPEC-parity R40's long-context block: a second NEAR provider under the
/// same id. Valid when its host differs from the base URL,
/// `base_max_context_tokens` is positive and below the long window
/// (`max_context_tokens` if positive, else the row's `context_length`);
/// the router ignores an invalid block with a warning.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LongContext {
    /// The long tier's NEAR host.
    #[schemars(with = "String")]
    pub inference_url: Spanned<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_context_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_max_context_tokens: Option<i64>,
}

/// One host name or several.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Hosts {
    One(String),
    Many(Vec<String>),
}

impl Hosts {
    pub fn names(&self) -> &[String] {
        match self {
            Hosts::One(h) => std::slice::from_ref(h),
            Hosts::Many(hs) => hs,
        }
    }
}

fn yes() -> bool {
    true
}

/// One step: at most one action, optionally at a simulated time, optionally
/// followed by expectations.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Absolute simulated time at which the step runs (e.g. `"90s"`);
    /// default: right after the previous step. It may not be earlier than
    /// the previous steps' `at` plus the `advance`s after it, and the
    /// script may not reach beyond 24h.
    #[schemars(with = "Option<String>")]
    pub at: Option<Spanned<Dur>>,
    /// A note shown in the snapshot and the Mermaid diagram.
    pub note: Option<String>,

    /// Trigger a complete discovery refresh now (the periodic one also runs).
    pub refresh: Option<Empty>,
    /// `PATCH /v1/admin/models` on the router: a partial batch.
    pub admin_patch: Option<Vec<PatchRow>>,
    /// Edit the catalog directly (as an operator editing the database).
    pub catalog: Option<CatalogEdit>,
    /// Inject a fault on a host, e.g. `{ host = "near-1", http_status = 503, times = 4 }`
    /// (the keys are listed in `sim/src/fault.rs`).
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub fault: Option<Spanned<FaultInjection>>,
    /// Clear every fault of a host.
    #[schemars(with = "Option<String>")]
    pub clear_faults: Option<Spanned<String>>,
    /// Cut the link between two different hosts.
    #[schemars(with = "Option<[String; 2]>")]
    pub partition: Option<Spanned<[String; 2]>>,
    /// Restore the link between two hosts.
    #[schemars(with = "Option<[String; 2]>")]
    pub repair: Option<Spanned<[String; 2]>>,
    /// Hold the link between two different hosts: packets wait instead of
    /// being refused, so a connection attempt hangs until its deadline (a
    /// connect *timeout*, where `partition` is refused at once).
    #[schemars(with = "Option<[String; 2]>")]
    pub hold: Option<Spanned<[String; 2]>>,
    /// Release a held link: what waited is delivered.
    #[schemars(with = "Option<[String; 2]>")]
    pub release: Option<Spanned<[String; 2]>>,
    /// Crash a running host (its state is lost); never the client, which
    /// plays the script.
    #[schemars(with = "Option<String>")]
    pub crash: Option<Spanned<String>>,
    /// Restart a host an earlier step crashed or shut down.
    #[schemars(with = "Option<String>")]
    pub restart: Option<Spanned<String>>,
    /// Shut a host down gracefully (only `"router"`): it stops accepting at
    /// once, finishes the requests in flight, and its closed port then
    /// refuses every connection (a client sees a transport error, status
    /// 0); `restart` boots it again.
    #[schemars(with = "Option<String>")]
    pub shutdown: Option<Spanned<String>>,
    /// A client request to the router.
    pub request: Option<RequestSpec>,
    /// Several client requests sent at once, all in flight together (each
    /// carries its own `x-request-id`, so its attempts are told apart);
    /// the step ends when all are answered. `expect.each` checks them in
    /// order.
    pub concurrent: Option<Vec<RequestSpec>>,
    /// Unregister a model id on the router (R14: clears its pinned and
    /// reserved state too).
    pub unregister: Option<String>,
    /// Let simulated time pass (e.g. `"30s"`).
    #[schemars(with = "Option<String>")]
    pub advance: Option<Dur>,

    /// What must hold after the step.
    pub expect: Option<Expect>,
}

/// An empty table: `refresh = {}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchRow {
    pub id: String,
    /// A NEAR host; `""` clears the inference URL.
    #[schemars(with = "Option<String>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_url: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<u64>,
    /// SPEC-parity R40: a new context length (re-registers the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    /// SPEC-parity R40: a new `provider_config.long_context` block
    /// (re-registers the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContext>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogEdit {
    /// Rows to insert or replace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert: Vec<CatalogRow>,
    /// Row ids to delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// External (plaintext) rows to add: `{ model, host }`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_upsert: Vec<ExternalRow>,
    /// External rows to delete, by model id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalRow {
    pub model: String,
    #[schemars(with = "String")]
    pub host: Spanned<String>,
}

/// A client request to the router's `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    pub model: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// The user message (default: "hello"); or `messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Sends `prompt` repeated this many times (a long request without a
    /// long file, for SPEC-parity R42's context estimate; at most 2 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<u32>,
    /// The whole `messages` array instead of one user `prompt` (e.g.
    /// `[{ role = "system", content = "…" }, { role = "user", content = "…" }]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<serde_json::Value>>,
    /// `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Any other body fields, sent as given (e.g. `{ temperature = 0.5,
    /// tools = [...] }`); they may not repeat `model`, `messages`, `stream`
    /// or `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    /// `x-model-pub-key` set to the signing key of this NEAR host.
    #[schemars(with = "Option<String>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pub_key_of: Option<Spanned<String>>,
    /// `x-model-pub-key` set to this literal value (printable ASCII: it is
    /// sent as a header; a non-hex value pins the router's own refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_pub_key: Option<String>,
    /// `x-client-pub-key` set to this literal value (printable ASCII).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_pub_key: Option<String>,
}

/// Expectations checked after the step. Provider names match a provider id
/// exactly or its family (`chutes` matches `chutes:<slug>`, `external`
/// matches `external:<host>`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The HTTP status the client received.
    pub status: Option<u16>,
    /// The provider that served the request.
    pub served_by: Option<String>,
    /// The tier that served it: `near`, `attested3p`, `non_attested`.
    pub tier: Option<String>,
    /// The exact attempt sequence (provider per attempt).
    pub tried: Option<Vec<String>>,
    /// Providers never attempted.
    #[serde(default)]
    pub never: Vec<String>,
    /// Simulated delays between consecutive rounds (e.g. `["500ms", "1s"]`).
    #[schemars(with = "Option<Vec<String>>")]
    pub backoff: Option<Vec<Dur>>,
    /// Substrings of the bytes the client received.
    #[serde(default)]
    pub contains: Vec<String>,
    /// Substrings that must not appear in them.
    #[serde(default)]
    pub not_contains: Vec<String>,
    /// Whether a stream ended with `[DONE]`.
    pub done: Option<bool>,
    /// R54's `served_via_fallback` of the served request.
    pub via_fallback: Option<bool>,
    /// A model's ordered provider ids (`[]` means the model is absent).
    #[serde(default)]
    pub providers: BTreeMap<String, Vec<String>>,
    /// Model ids that must be absent from the routing table.
    #[serde(default)]
    pub absent: Vec<String>,
    /// The exact set of pinned ids.
    pub pinned: Option<Vec<String>>,
    /// The exact set of reserved ids.
    pub reserved: Option<Vec<String>>,
    /// Ids `GET /v1/models` lists.
    pub listed: Option<Vec<String>>,
    /// The client's error body (`{"error": {…}}`): its type, code, param and
    /// message.
    pub error: Option<ErrorExpect>,
    /// Response headers the client received, by lowercase name, with their
    /// exact value (e.g. `{ "retry-after" = "1" }`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response headers that must be absent (lowercase names).
    #[serde(default)]
    pub headers_absent: Vec<String>,
    /// A provider's health in the registry after the step: its consecutive
    /// failure count and whether it is demoted.
    #[serde(default)]
    pub health: Vec<HealthExpect>,
    /// Exactly the chat requests upstream hosts received while the request
    /// ran, in order (a Chutes request as decrypted by the instance).
    pub upstream: Option<Vec<UpstreamExpect>>,
    /// Exactly the NEAR hosts that served a tokenize call (SPEC-parity

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenized: Option<Vec<String>>,
    /// For a `concurrent` step: one expectation per request, in order (the
    /// request keys: status, served_by, tried, error, …).
    #[serde(default)]
    pub each: Vec<Expect>,
    /// R17's round-robin position of a model after the step, as the router
    /// reports it (read without taking a turn): the turns its counter has
    /// taken and the provider the next plain request leads on.
    #[serde(default)]
    pub round_robin: Vec<RoundRobinExpect>,
    /// Exactly the external rows the router's last external load refused,
    /// in row order: each entry a substring of one refusal (which names
    /// the row and why, e.g. `"llama (external:together): its API key is
    /// missing"`); `[]` means none.
    pub refused: Option<Vec<String>>,
}

/// One model's round-robin position (every key but `model` optional).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoundRobinExpect {
    pub model: String,
    /// The value its round-robin counter holds (SPEC-parity R65): the turn
    /// the next request without `x-model-pub-key` whose leading group has
    /// more than one provider takes; each such request stores
    /// (value + 1) mod the group's size.
    pub counter: Option<usize>,
    /// The provider the next such request leads on (a provider id or its
    /// family, as in `served_by`).
    pub next: Option<String>,
}

/// One chat request an upstream host received.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamExpect {
    /// The host that received it (`near-1`, `chutes`, `openrouter`).
    pub host: String,
    /// The body's `model` (e.g. the chute slug, where the client named the
    /// canonical id).
    pub model: Option<String>,
    /// Body fields it held, with these exact values.
    #[serde(default)]
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Body fields it did not hold.
    #[serde(default)]
    pub absent: Vec<String>,
}

/// What the client's error body must say (every key optional).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorExpect {
    /// `error.type`, e.g. `invalid_request_error`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `error.code`.
    pub code: Option<String>,
    /// `error.param`.
    pub param: Option<String>,
    /// Substrings `error.message` holds.
    #[serde(default)]
    pub message_contains: Vec<String>,
    /// Substrings `error.message` must not hold.
    #[serde(default)]
    pub message_not_contains: Vec<String>,
}

/// One provider's health for one model.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthExpect {
    pub model: String,
    /// The provider id (or its family, as in `served_by`).
    pub provider: String,
    /// Its consecutive failure count.
    pub failures: Option<u32>,
    /// Whether it is demoted.
    pub demoted: Option<bool>,
    /// R46: how many TTFT samples it has taken.
    pub ttft_samples: Option<u32>,
    /// R46: bounds on its TTFT moving average, in ms.
    pub ttft_ema_ms: Option<Bounds>,
    /// R47: whether it is latency-demoted among the model's providers.
    pub latency_demoted: Option<bool>,
}

/// Inclusive bounds on a measured value (simulated network time makes the
/// exact value a function of the seed).
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    pub at_least: Option<f64>,
    pub at_most: Option<f64>,
}

impl Bounds {
    pub fn holds(&self, x: f64) -> bool {
        self.at_least.is_none_or(|lo| x >= lo) && self.at_most.is_none_or(|hi| x <= hi)
    }
}

/// A duration written as text: `"500ms"`, `"2s"`, `"1m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

/// The longest simulated time a scenario may script (every duration of the
/// format, and the time its steps add up to, are checked against it at
/// load): a day, far beyond any refresh interval or retry budget, and a run
/// that still ends in seconds of wall time at the 1 ms tick.
pub const MAX_SIM_TIME: Duration = Duration::from_secs(24 * 60 * 60);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let d = humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "bad duration {text:?}: {e} (write e.g. \"500ms\", \"2s\", \"1m 30s\")"
            ))
        })?;
        if d > MAX_SIM_TIME {
            return Err(serde::de::Error::custom(format!(
                "duration {text:?} is beyond the simulated-time bound of 24h"
            )));
        }
        Ok(Dur(d))
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}
