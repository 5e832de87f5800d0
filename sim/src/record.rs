//! What a run records: each request as the client saw it, the state after
//! each step, the violations found, and the run's report. Expectations,
//! oracles, the snapshot renderer, Mermaid and JUnit read these; none of
//! them depends on the runner that fills them in.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tiersim_engine::registry::RegistryView;
use tiersim_engine::retry::Attempt;
use tiersim_engine::{RoundRobinView, Tier};

use crate::fault::{Fired, Received};

/// One request as the client saw it, with the router's attempt log.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// The `x-request-id` the client sent (`step<N>`, `step<N>.<k>` in a
    /// `concurrent` step): the router's journal entry is matched by it.
    pub id: String,
    pub model: String,
    pub stream: bool,
    /// The request carried `x-client-pub-key`.
    pub client_e2ee: bool,
    pub status: u16,
    /// Response headers (lowercase names, in the order received).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub attempts: Vec<Attempt>,
    /// The chat requests upstream hosts received while this request ran,
    /// in order.
    pub upstream: Vec<Received>,
    /// The NEAR hosts that served a `POST /v1/tokenize` while this request
    /// ran (SPEC-parity R43's exact count), in order.
    pub tokenized: Vec<String>,
    pub served: Option<(String, Tier)>,
    /// R54's `served_via_fallback` of a served request.
    pub via_fallback: Option<bool>,
    /// The router's own account of the error that ended an unserved
    /// request (the client may see only generic text, R29/R30).
    pub error: Option<String>,
}

/// The reply headers a snapshot shows: R32's retry hints and R53's serving
/// tier (the record keeps every header; these are the client contract's).
pub const CONTRACT_HEADERS: [&str; 3] = ["retry-after", "x-should-retry", "x-serving-provider"];

/// The state after one step.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub index: usize,
    pub at: Duration,
    pub action: String,
    pub note: Option<String>,
    pub request: Option<RequestRecord>,
    /// The requests of a `concurrent` step, in script order.
    pub concurrent: Vec<RequestRecord>,
    /// `GET /v1/models`, when the step's expectations ask for it.
    pub listed: Option<Vec<String>>,
    /// R17's round-robin position of each model the step's expectations
    /// name, read from the router after the step (`None`: not mapped, or
    /// the router is down).
    pub round_robin: Vec<(String, Option<RoundRobinView>)>,
    /// The external rows the router's last external load refused (a missing
    /// API key, an unsupported kind), each naming its row.
    pub refused: Vec<String>,
    /// Status and body of an admin PATCH.
    pub admin: Option<(u16, String)>,
    /// `None` while the router is down.
    pub state: Option<RegistryView>,
    /// For an admin PATCH: the batch and the registry just before it, when
    /// nothing else wrote the registry around it (no refresh interleaved).
    pub patch_before: Option<PatchBefore>,
}

impl StepRecord {
    /// The record of step `index` (1-based), begun at `at`, before its
    /// action has done anything.
    pub fn new(index: usize, at: Duration, action: impl Into<String>) -> StepRecord {
        StepRecord {
            index,
            at,
            action: action.into(),
            note: None,
            request: None,
            concurrent: Vec::new(),
            listed: None,
            round_robin: Vec::new(),
            refused: Vec::new(),
            admin: None,
            state: None,
            patch_before: None,
        }
    }
}

/// The registry right before an admin PATCH, for the oracle that the batch
/// leaves every other model alone.
#[derive(Debug, Clone)]
pub struct PatchBefore {
    /// The ids the batch names.
    pub ids: Vec<String>,
    pub view: RegistryView,
}

/// A failed expectation or oracle (a sweep's outcomes file carries it as
/// JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Violation {
    /// 1-based step, 0 for the run as a whole.
    pub step: usize,
    /// `expect` or `oracle:<name>`.
    pub check: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {}: {}: {}", self.step, self.check, self.message)
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub file: PathBuf,
    pub seed: u64,
    pub steps: Vec<StepRecord>,
    pub violations: Vec<Violation>,
    /// Violations the scenario declared (`expect_violations`).
    pub expected: Vec<Violation>,
    pub sim_time: Duration,
    pub startup_error: Option<String>,
    /// Every fault that fired, in order (part of the determinism hash).
    pub fired: Vec<Fired>,
    /// Where and why the reference model stopped predicting the run (the
    /// world-side oracles and the expectations judged it to the end).
    pub model_abstained: Option<crate::model::Abstention>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
    pub fn requests(&self) -> usize {
        self.steps
            .iter()
            .map(|s| usize::from(s.request.is_some()) + s.concurrent.len())
            .sum()
    }
}
