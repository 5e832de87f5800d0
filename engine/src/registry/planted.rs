//! Review bugs of the seed PR, re-introduced on demand (feature
//! `planted-bugs`) so the simulation can prove that its seed sweeps find and
//! shrink them. Every [`Registry`](super::Registry) starts with none planted;
//! only [`Registry::plant`](super::Registry::plant) switches one on.

use std::sync::atomic::{AtomicU32, Ordering};

use super::table::Sources;
use super::Discovered;

/// A review bug that can be switched back on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PlantedBug {
    /// Review round 2, blocking: the stale-prune ran on the admin PATCH's
    /// *partial* batch, so every pinned id absent from the batch was rebuilt
    /// pinned-only (an unrelated NEAR+Chutes model lost its NEAR providers).
    PartialBatchPrune,
    /// Review round 1, blocking 2 (and round 3's client-E2EE twin), as the
    /// seed PR first had it: no capability filter, and each attempt's error
    /// overwrote the round's last error and retry decision. A streamed
    /// request after NEAR's 5xx walks into Chutes' "streaming disabled"
    /// refusal, which masks the 5xx and ends the retries.
    RefusalMasking,
    /// Issue 15 (not the seed PR): the Chutes provider handed its stream to
    /// the router as soon as `e2e_init` keyed it, so a first frame that did
    /// not authenticate gave a 502 when it arrived in the same read as
    /// `e2e_init` and a 200 stream with an error event when it came in the
    /// next. It lives in the Chutes provider (`ChutesConfig::plant_keyed_priming`);
    /// the registry only carries the name.
    KeyedPriming,
}

impl PlantedBug {
    pub const ALL: &'static [PlantedBug] = &[
        PlantedBug::PartialBatchPrune,
        PlantedBug::RefusalMasking,
        PlantedBug::KeyedPriming,
    ];

    /// The bug's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::PartialBatchPrune => "partial-batch-prune",
            PlantedBug::RefusalMasking => "refusal-masking",
            PlantedBug::KeyedPriming => "keyed-priming",
        }
    }

    pub fn from_name(name: &str) -> Option<PlantedBug> {
        Self::ALL.iter().copied().find(|b| b.name() == name)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl std::fmt::Display for PlantedBug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The set of planted bugs of one registry.
#[derive(Debug, Default)]
pub(super) struct Planted(AtomicU32);

impl Planted {
    pub fn plant(&self, bug: PlantedBug) {
        self.0.fetch_or(bug.bit(), Ordering::Relaxed);
    }

    pub fn has(&self, bug: PlantedBug) -> bool {
        self.0.load(Ordering::Relaxed) & bug.bit() != 0
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

/// [`PlantedBug::RefusalMasking`], selection half: the derived order claims
/// every provider can stream and speak client E2EE, so nothing is filtered.
pub(super) fn skip_capability_filters(order: &mut crate::select::StaticOrder) {
    order.all = crate::tier::Capabilities::ALL;
}
