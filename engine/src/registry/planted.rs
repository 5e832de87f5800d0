//! Review bugs of the seed PR, classic routing mistakes and slips in
//! implementing SPEC-parity, re-introduced on demand (feature
//! `planted-bugs`) so the simulation can prove that its seed sweeps find and
//! shrink them. Every [`Registry`](super::Registry) starts
//! with none planted; only [`Registry::plant`](super::Registry::plant)
//! switches one on.
//!
//! The switch is data, never a branch on the selection hot path: a planted
//! bug lives in the table's [`Sources`] (so it is carried by every snapshot),
//! and each one acts where it is cheap: in the table build's derived
//! [`StaticOrder`](crate::registry::StaticOrder) (computed once per snapshot),
//! in a writer (refresh, merge), in the retry loop's [`Rounds`] knobs, or in
//! the router before and after selection. Unplanted, each of those paths
//! runs exactly as specified.

use std::collections::BTreeSet;

use super::table::Sources;
use super::Discovered;
use crate::provider::ProviderId;
use crate::retry::Rounds;

/// Declares every planted bug once: its variant (with the doc saying what
/// it re-introduces), its command-line name, the rule it breaks and a
/// one-line summary. The enum, [`PlantedBug::ALL`] and the lookups are
/// generated from it.
macro_rules! planted_bugs {
    ($( $(#[doc = $doc:literal])* $Variant:ident => $name:literal, $rule:literal, $summary:literal; )*) => {
        /// A bug that can be switched back on.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum PlantedBug {
            $( $(#[doc = $doc])* $Variant, )*
        }

        impl PlantedBug {
            pub const ALL: &'static [PlantedBug] = &[$(PlantedBug::$Variant,)*];

            /// The bug's command-line name.
            pub fn name(self) -> &'static str {
                match self {
                    $( PlantedBug::$Variant => $name, )*
                }
            }

            /// The rule it breaks (SPEC or SPEC-parity).
            pub fn rule(self) -> &'static str {
                match self {
                    $( PlantedBug::$Variant => $rule, )*
                }
            }

            /// What it does, in one line.
            pub fn summary(self) -> &'static str {
                match self {
                    $( PlantedBug::$Variant => $summary, )*
                }
            }
        }
    };
}

planted_bugs! {
    /// Review round 2, blocking: the stale-prune ran on the admin PATCH's
    /// *partial* batch, so every pinned id absent from the batch was rebuilt
    /// pinned-only (an unrelated NEAR+Chutes model lost its NEAR providers).
    PartialBatchPrune => "partial-batch-prune", "R13",
        "an admin PATCH's partial batch prunes every pinned id it does not name";
    /// Review round 1, blocking 2 (and round 3's client-E2EE twin), as the
    /// seed PR first had it: no capability filter, and each attempt's error
    /// overwrote the round's last error and retry decision. A streamed
    /// request after NEAR's 5xx walks into Chutes' "streaming disabled"
    /// refusal, which masks the 5xx and ends the retries.
    RefusalMasking => "refusal-masking", "R18",
        "no capability filter, and the last error decides: a refusal masks a 5xx";
    /// R21/R17 off by one: a provider is demoted at 9 consecutive failures.
    DemoteAtNine => "demote-at-nine", "R21",
        "a provider is demoted at 9 consecutive failures";
    /// R21: a success does not reset the failure counter, so failures
    /// accumulate across successes until the provider is demoted.
    SuccessKeepsFailures => "success-keeps-failures", "R21",
        "a success does not reset the failure counter";
    /// R8/R9: a refresh forgets the NEAR providers of a model that left
    /// discovery (their pubkey entries and failure counters) although the
    /// same provider still backs another model.
    SharedProviderForgotten => "shared-provider-forgotten", "R8",
        "a refresh forgets a provider another model still uses";
    /// R18: the streaming capability filter is missing (the E2EE filter and
    /// the retry rules are intact), so a streamed walk reaches a provider
    /// that cannot stream.
    StreamingFilterMissing => "streaming-filter-missing", "R18",
        "a streamed walk reaches a provider that cannot stream";
    /// R21: a stream counts as a success when it merely opened, not at its
    /// authenticated end, so a stream cut afterwards has already wiped the
    /// provider's failure count.
    StreamOpenIsSuccess => "stream-open-is-success", "R21",
        "a stream counts as a success when it opens";
    /// R16: the pubkey path falls back to the model's Chutes provider (after
    /// the matching NEAR providers, or instead of none).
    PubkeyFallsBackToChutes => "pubkey-falls-back-to-chutes", "R16",
        "the pubkey walk falls back to Chutes";
    /// R20: the backoff schedule is one step ahead (1 s, 2 s, 4 s for 5xx).
    BackoffStepAhead => "backoff-step-ahead", "R20",
        "the backoff schedule is one step ahead";
    /// R17: round-robin rotates the whole list instead of the leading group,
    /// so Chutes leads a NEAR+Chutes model every other request.
    RoundRobinWholeList => "round-robin-whole-list", "R17",
        "round-robin rotates the whole list";
    /// R17: the demotion sort moves a demoted provider back by one place
    /// only, so with two demoted providers ahead of a healthy one a demoted
    /// provider still leads.
    DemotionSortOneStep => "demotion-sort-one-step", "R17",
        "the demotion sort moves a provider one place";
    /// R9: stale removal forgets the exception for an id with a pinned
    /// provider: a pinned id neither discovered nor external disappears
    /// (404) while its pin stays recorded.
    StaleRemovesPinned => "stale-removes-pinned", "R9",
        "stale removal drops a pinned id";
    /// R12: the external load skips pinned ids but not reserved ones, so a
    /// reserved id without a Chutes provider takes a plaintext row.
    ExternalIgnoresReserved => "external-ignores-reserved", "R12",
        "a plaintext external row lands on a reserved id";
    /// R22: on a tie of informativeness the later error wins instead of the
    /// primary's.
    ErrorTieGoesLast => "error-tie-goes-last", "R22",
        "an error tie goes to the later provider";
    /// Issue 15 (not the seed PR): the Chutes provider handed its stream to
    /// the router as soon as `e2e_init` keyed it, so a first frame that did
    /// not authenticate gave a 502 when it arrived in the same read as
    /// `e2e_init` and a 200 stream with an error event when it came in the
    /// next. It lives in the Chutes provider (`ChutesConfig::plant`);
    /// the registry only carries the name.
    KeyedPriming => "keyed-priming", "R23",
        "a Chutes stream is handed over once keyed, before it authenticates";
    /// R17 under load: the round-robin turn is taken once the JSON reply is
    /// in, not at selection, so requests in flight together read the same
    /// turn and lead on the same provider (one at a time, nothing shows).
    TurnTakenLate => "turn-taken-late", "R17",
        "the round-robin turn is taken when the reply is in";
    /// SPEC-parity R43: the exact count is asked of the NEAR provider with
    /// the largest declared window (the long tier) instead of the first one
    /// with the smallest window, so a request near the base window is
    /// counted by the wrong host.
    TokenizeOnLongTier => "tokenize-on-long-tier", "R43",
        "the exact count is asked of the long tier";
    /// SPEC-parity R44: with overflow the capacity rank stays the window, so
    /// among the providers a request overflows the smallest window leads
    /// (the biggest should: it is the likeliest to take the request).
    OverflowSmallestFirst => "overflow-smallest-first", "R44",
        "among overflowed providers the smallest window leads";
    /// SPEC-parity R48: a streamed request placed by its prefix hash also
    /// takes a round-robin turn, so the next non-streamed request of the
    /// model leads on a provider one turn further along.
    PrefixMovesTurn => "prefix-moves-turn", "R48",
        "a prefix-placed stream also takes a round-robin turn";
    /// SPEC-parity R42.2: the pool's refinement runs as soon as one provider
    /// declares a window instead of at two distinct windows, so a
    /// single-window model's non-streamed request (no hint: no estimate)
    /// gets a requirement and can overflow its NEAR.
    RefineSingleWindow => "refine-single-window", "R42",
        "the pool refines a one-window model's estimate";
    /// SPEC-parity R45.3: a candidate without a declared window counts as
    /// a larger one, so a context-length 400 from a NEAR whose only sibling
    /// is an undeclared Chutes falls through to Chutes instead of reaching
    /// the client as a 400.
    ContextFallsToUndeclared => "context-falls-to-undeclared", "R45",
        "a context 400 falls through to an undeclared window";
    /// SPEC-parity R47: latency demotion without its 500 ms floor, so a
    /// warmed provider at 150 ms sorts behind Chutes when another answers
    /// in 50.
    LatencyFloorMissing => "latency-floor-missing", "R47",
        "latency demotion without its 500 ms floor";
    /// SPEC-parity R42.2: the output reserve (`max_completion_tokens`,
    /// else `max_tokens`) is left out of the requirement and of R43's band,
    /// so a request whose prompt fits a window but whose answer may not is
    /// still sent to it first.
    ReserveIgnored => "reserve-ignored", "R42",
        "the output reserve is left out of the requirement";
    /// SPEC-parity R61: only the counter's candidate is tried, so an
    /// instance absent from the evidence (or failing it) ends the request
    /// closed although another listed instance would verify. It lives in
    /// the Chutes provider (`ChutesConfig::plant`).
    FirstCandidateOnly => "first-candidate-only", "R61",
        "only one Chutes instance is tried per request";
    /// SPEC-parity R38: a model-not-found 404 is returned to the client as
    /// an ordinary 4xx instead of falling through to the next provider.
    NotFoundFastReturns => "not-found-fast-returns", "R38",
        "a model-not-found 404 reaches the client";
    /// SPEC-parity R46: a served non-streamed request also gives its
    /// provider a TTFT sample (its whole answer time), so JSON traffic
    /// warms and moves the averages R47 orders by.
    SampleOnJson => "sample-on-json", "R46",
        "a non-streamed answer gives a TTFT sample";
}

impl PlantedBug {
    pub fn from_name(name: &str) -> Option<PlantedBug> {
        Self::ALL.iter().copied().find(|b| b.name() == name)
    }

    fn bit(self) -> u32 {
        const _: () = assert!(PlantedBug::ALL.len() <= 32, "the planted set is one u32");
        1 << (self as u32)
    }
}

impl std::fmt::Display for PlantedBug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The bugs planted in one registry, carried in its [`Sources`] so every
/// snapshot knows them. Empty unless planted.
#[derive(Debug, Clone, Default)]
pub(crate) struct Planted {
    bits: u32,
    /// [`PlantedBug::SharedProviderForgotten`]: providers whose pubkey
    /// entries the last complete refresh dropped, until the next one.
    pub forgotten: BTreeSet<ProviderId>,
    /// [`PlantedBug::StaleRemovesPinned`]: pinned ids the last complete
    /// refresh saw in neither source, until the next one.
    pub stale_pinned: BTreeSet<String>,
}

impl Planted {
    pub fn plant(&mut self, bug: PlantedBug) {
        self.bits |= bug.bit();
    }

    #[inline]
    pub fn has(&self, bug: PlantedBug) -> bool {
        self.bits & bug.bit() != 0
    }

    /// The retry loop's knobs bent by these bugs (`base`, the profile's
    /// rounds, when none is planted).
    pub fn rounds(&self, base: Rounds) -> Rounds {
        let mut r = base;
        r.last_error_decides |= self.has(PlantedBug::RefusalMasking);
        r.keep_failures_on_success |= self.has(PlantedBug::SuccessKeepsFailures);
        r.backoff_step_ahead |= self.has(PlantedBug::BackoffStepAhead);
        r.tie_goes_last |= self.has(PlantedBug::ErrorTieGoesLast);
        r.undeclared_window_is_larger |= self.has(PlantedBug::ContextFallsToUndeclared);
        r.not_found_fast_returns |= self.has(PlantedBug::NotFoundFastReturns);
        r.sample_on_json |= self.has(PlantedBug::SampleOnJson);
        r
    }

    /// The consecutive failures at which a provider is demoted.
    pub fn demote_after(&self) -> u32 {
        if self.has(PlantedBug::DemoteAtNine) {
            crate::health::DEMOTE_AFTER - 1
        } else {
            crate::health::DEMOTE_AFTER
        }
    }

    /// The derived per-model order, bent by the selection bugs.
    pub fn bend_order(&self, order: &mut crate::registry::StaticOrder) {
        if self.has(PlantedBug::RefusalMasking) {
            order.all = crate::tier::Capabilities::ALL;
        }
        if self.has(PlantedBug::StreamingFilterMissing) {
            order.all.streaming = true;
        }
        if self.has(PlantedBug::RoundRobinWholeList) {
            order.lead = order.cut;
        }
        if self.has(PlantedBug::RefineSingleWindow) {
            order.refine = order.any_window;
        }
        order.demotion_sort_one_step = self.has(PlantedBug::DemotionSortOneStep);
        order.overflow_smallest_first = self.has(PlantedBug::OverflowSmallestFirst);
        order.prefix_moves_turn = self.has(PlantedBug::PrefixMovesTurn);
        order.latency_floor_missing = self.has(PlantedBug::LatencyFloorMissing);
    }

    /// Whether a model's slots are left out of the table (R9's exception
    /// forgotten): a pinned id seen in neither source by the last refresh.
    pub fn drops_model(&self, s: &Sources, model: &str) -> bool {
        self.has(PlantedBug::StaleRemovesPinned)
            && self.stale_pinned.contains(model)
            && !s.near.contains_key(model)
            && !s.external.contains_key(model)
    }
}

/// [`PlantedBug::PartialBatchPrune`]: the seed PR's merge, which treated a
/// partial batch as the complete set and dropped the NEAR providers of every
/// pinned id the batch did not name.
pub(super) fn prune_absent_pinned(s: &mut Sources, batch: &Discovered) {
    let absent: Vec<String> = s
        .pinned
        .keys()
        .filter(|m| !batch.0.contains_key(*m))
        .cloned()
        .collect();
    for m in absent {
        s.near.remove(&m);
    }
}

/// The complete refresh's planted bookkeeping, run on the sources *before*
/// the refresh applies `discovered` (`None`: discovery failed, nothing is
/// pruned) and `external_ids`. Returns the providers whose failure counters
/// the refresh forgets.
pub(super) fn on_refresh(
    s: &mut Sources,
    discovered: Option<&Discovered>,
    external_ids: Option<BTreeSet<String>>,
) -> Vec<ProviderId> {
    let mut forget = Vec::new();
    let Some(discovered) = discovered else {
        return forget;
    };
    if s.planted.has(PlantedBug::SharedProviderForgotten) {
        // The seed PR's prune dropped the providers of every model that left
        // discovery (pruned pinned-only, R8, or removed, R9) from the global
        // pubkey and health maps without asking whether another model still
        // uses them.
        let forgotten: BTreeSet<ProviderId> = s
            .near
            .iter()
            .filter(|(model, _)| !discovered.0.contains_key(*model))
            .flat_map(|(_, near)| near.iter().map(|p| p.id().clone()))
            .collect();
        forget = forgotten.iter().cloned().collect();
        s.planted.forgotten = forgotten;
    }
    if s.planted.has(PlantedBug::StaleRemovesPinned) {
        let external = external_ids.unwrap_or_else(|| s.external.keys().cloned().collect());
        s.planted.stale_pinned = s
            .pinned
            .keys()
            .filter(|m| !discovered.0.contains_key(*m) && !external.contains(*m))
            .cloned()
            .collect();
    }
    forget
}
