//! The immutable routing snapshot and its builder.
//!
//! A [`Table`] has two halves:
//! - [`Sources`], the state writers change: what discovery, the pinned
//!   (secondary) registrations and the external load each say about a model,
//!   plus the reserved ids and the catalog rows;
//! - an index derived from them on every build (flat provider slots, model →
//!   slot range, per-provider health and per-model round-robin counters), which
//!   is what the selection hot path reads.
//!
//! Because every model list, the pubkey view and the health table are derived
//! from `Sources` in one build, nothing can point at a provider that backs no
//! model (R8/R9 cleanup holds by construction).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use serde::Serialize;

use crate::health::{Health, Notable};
use crate::provider::{Provider, ProviderId};
use crate::tier::{Capabilities, Tier};

/// One model's catalog row (R6/R13): whether clients may use it, and its price
/// in integer micro-units per million tokens (no floats in the engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CatalogRow {
    pub active: bool,
    pub price: u64,
    /// SPEC-parity R40: the row's context length (a long-context row's long
    /// window), which `/v1/models` shows; `None`: not declared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
}

pub(crate) type Providers = Vec<Arc<dyn Provider>>;

/// What each source says, keyed by model id. Lists are never empty: an empty
/// list is removed, so a model with no provider has no mapping (R9: 404, not a
/// dead mapping).
#[derive(Clone, Default)]
pub(crate) struct Sources {
    /// NEAR providers from discovery or the admin PATCH (R7).
    pub near: BTreeMap<String, Providers>,
    /// Pinned (secondary, Chutes) providers: the source of truth for
    /// re-attachment (R4). A key here means the id is pinned.
    pub pinned: BTreeMap<String, Providers>,
    /// Plaintext rows from the external load (R12).
    pub external: BTreeMap<String, Providers>,
    /// Canonical ids reserved before any load (R5).
    pub reserved: BTreeSet<String>,
    pub catalog: BTreeMap<String, CatalogRow>,
    /// Bugs planted for a sweep test (see `registry/planted.rs`); empty
    /// outside a planted test run.
    #[cfg(feature = "planted-bugs")]
    pub planted: super::planted::Planted,
}

impl Sources {
    /// R5 + R12, the one place the fail-closed reservation is enforced: a
    /// reserved or pinned id holds no NonAttested provider and no external row,
    /// whatever path tried to add one. Also drops emptied lists.
    pub fn enforce_fail_closed(&mut self) {
        #[cfg(feature = "planted-bugs")]
        let ignores_reserved = self
            .planted
            .has(super::planted::PlantedBug::ExternalIgnoresReserved);
        let Sources {
            near,
            pinned,
            external,
            reserved,
            ..
        } = self;
        let protected = |m: &str| reserved.contains(m) || pinned.contains_key(m);
        #[cfg(feature = "planted-bugs")]
        let skip_external = |m: &str| {
            if ignores_reserved {
                pinned.contains_key(m)
            } else {
                protected(m)
            }
        };
        #[cfg(not(feature = "planted-bugs"))]
        let skip_external = protected;
        external.retain(|m, ps| !skip_external(m) && !ps.is_empty());
        near.retain(|m, ps| {
            if protected(m) {
                ps.retain(|p| p.tier().is_attested());
            }
            !ps.is_empty()
        });
        pinned.retain(|_, ps| {
            ps.retain(|p| p.tier().is_attested());
            !ps.is_empty()
        });
    }
}

/// Per-model round-robin counters (R17, SPEC-parity R65), carried across
/// snapshots by model id and dropped with the model. Each holds a value
/// below the size of the leading group it last rotated. Production keys
/// the pubkey counter by the key (`pubkey:<key>`), shared across models;
/// here it is per model, which differs only if one signing key backed
/// several models' providers at once (never in the simulated world, where
/// each NEAR backend has its own key).
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    pub plain: AtomicUsize,
    /// Pubkey-routed requests rotate on their own counter.
    pub pubkey: AtomicUsize,
}

/// One provider in one model's list, with everything selection reads inline.
pub(crate) struct Slot {
    pub tier: Tier,
    pub caps: Capabilities,
    pub health: Arc<Health>,
    /// Signing keys usable for pubkey routing (R16); empty for anything not NEAR.
    pub keys: Arc<[Box<str>]>,
    /// SPEC-parity R40: the declared context window, read from the provider
    /// when the snapshot is built (`None`: unlimited).
    pub window: Option<u32>,
    pub provider: Arc<dyn Provider>,
}

impl Slot {
    /// R44's capacity rank without overflow: the window, undeclared above
    /// every declared one, so the smallest sufficient window sorts first.
    #[inline]
    pub(crate) fn capacity_rank(&self) -> u64 {
        self.window.map_or(UNDECLARED_RANK, u64::from)
    }
}

/// The capacity rank of an undeclared window: above any `u32` window.
pub(crate) const UNDECLARED_RANK: u64 = 1 << 32;

/// A model's slots: `slots[start..start + len]`, stably sorted by tier, then
/// by capacity rank (R44's request-independent part).
pub(crate) struct ModelIdx {
    pub name: Box<str>,
    pub start: u32,
    pub order: StaticOrder,
    pub len: u32,
    pub rr: Arc<RoundRobin>,
}

/// The request-independent part of a model's order, computed once per
/// snapshot from its tier-sorted slots.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StaticOrder {
    /// R15: how many leading slots may be selected. A model with any attested
    /// provider never selects a plaintext one; plaintext providers sort last.
    pub cut: u32,
    /// R17/R44: the size of the leading (tier, capacity rank) group among
    /// them, before demotions and overflow.
    pub lead: u32,
    /// R40: some provider declares a window (else no estimate can matter).
    pub any_window: bool,
    /// R42.2: the providers declare at least two distinct windows, so the
    /// pool refines the estimate.
    pub refine: bool,
    /// R18: capabilities every selectable slot has (a filter that would keep
    /// everything is skipped).
    pub all: Capabilities,
    /// A planted bug (`registry/planted.rs`): the demotion sort moves each
    /// demoted provider back one place only. Read on the rare demoted path.
    #[cfg(feature = "planted-bugs")]
    pub demotion_sort_one_step: bool,
    /// A planted bug: with overflow the smallest window leads (R44's rank
    /// not inverted). Read on the rare overflow path.
    #[cfg(feature = "planted-bugs")]
    pub overflow_smallest_first: bool,
    /// A planted bug: prefix placement (R48) also takes a round-robin turn.
    #[cfg(feature = "planted-bugs")]
    pub prefix_moves_turn: bool,
    /// A planted bug: R47 demotes without its 500 ms floor. Read only once
    /// some provider is warmed.
    #[cfg(feature = "planted-bugs")]
    pub latency_floor_missing: bool,
}

impl StaticOrder {
    pub(crate) fn of(tier_sorted: &[Slot]) -> StaticOrder {
        let verifiable = tier_sorted.first().is_some_and(|s| s.tier.is_attested());
        let eligible = if verifiable {
            tier_sorted
                .iter()
                .take_while(|s| s.tier.is_attested())
                .count()
        } else {
            tier_sorted.len()
        };
        let eligible = &tier_sorted[..eligible];
        let static_key = |s: &Slot| (s.tier, s.capacity_rank());
        let lead = eligible
            .iter()
            .take_while(|s| Some(static_key(s)) == eligible.first().map(static_key))
            .count();
        let mut windows = tier_sorted.iter().filter_map(|s| s.window);
        let first_window = windows.next();
        let refine = first_window.is_some_and(|w| windows.any(|x| x != w));
        let all = eligible
            .iter()
            .fold(Capabilities::ALL, |a, s| Capabilities {
                streaming: a.streaming && s.caps.streaming,
                client_e2ee: a.client_e2ee && s.caps.client_e2ee,
            });
        let n = |x: usize| u32::try_from(x).expect("fewer than 2^32 slots");
        StaticOrder {
            cut: n(eligible.len()),
            lead: n(lead),
            any_window: first_window.is_some(),
            refine,
            all,
            #[cfg(feature = "planted-bugs")]
            demotion_sort_one_step: false,
            #[cfg(feature = "planted-bugs")]
            overflow_smallest_first: false,
            #[cfg(feature = "planted-bugs")]
            prefix_moves_turn: false,
            #[cfg(feature = "planted-bugs")]
            latency_floor_missing: false,
        }
    }
}

/// An immutable snapshot. Readers hold it through an `arc_swap` guard.
pub(crate) struct Table {
    pub(crate) sources: Sources,
    pub(crate) slots: Vec<Slot>,
    pub(crate) models: ModelIndex,
    pub(crate) health: BTreeMap<ProviderId, Arc<Health>>,
    /// The registry's one count of providers with a failure or a warmed
    /// TTFT (every `Health` above is counted in it), carried from table to
    /// table: at zero selection reads no provider's health.
    pub(crate) notable: Arc<Notable>,
}

impl Table {
    pub(crate) fn empty() -> Table {
        Table::build(Sources::default(), None)
    }

    /// Builds the derived index from `sources`, reusing `prev`'s health and
    /// round-robin counters for providers and models that are still present
    /// (so they survive unrelated swaps and vanish with their owner).
    pub(crate) fn build(mut sources: Sources, prev: Option<&Table>) -> Table {
        sources.enforce_fail_closed();
        let mut ids: BTreeSet<&str> = BTreeSet::new();
        for map in [&sources.near, &sources.pinned, &sources.external] {
            ids.extend(map.keys().map(String::as_str));
        }
        fn list<'a>(map: &'a BTreeMap<String, Providers>, m: &str) -> &'a [Arc<dyn Provider>] {
            map.get(m).map_or(&[], Vec::as_slice)
        }

        let mut slots = Vec::new();
        let mut models = ModelIndex::with_capacity(ids.len());
        let mut health: BTreeMap<ProviderId, Arc<Health>> = BTreeMap::new();
        let notable = prev.map_or_else(Arc::default, |t| t.notable.clone());
        let mut keys: BTreeMap<ProviderId, Arc<[Box<str>]>> = BTreeMap::new();
        for m in ids {
            #[cfg(feature = "planted-bugs")]
            if sources.planted.drops_model(&sources, m) {
                continue;
            }
            let start = slots.len();
            // R7: [NEAR…] + [pinned…] (+ external, only on unprotected ids),
            // deduplicated by provider id, first occurrence wins.
            let chain = list(&sources.near, m)
                .iter()
                .chain(list(&sources.pinned, m))
                .chain(list(&sources.external, m));
            for p in chain {
                let id = p.id();
                if slots[start..].iter().any(|s: &Slot| s.provider.id() == id) {
                    continue;
                }
                let h = health
                    .entry(id.clone())
                    .or_insert_with(|| {
                        prev.and_then(|t| t.health.get(id).cloned())
                            .unwrap_or_else(|| Arc::new(Health::counted_in(notable.clone())))
                    })
                    .clone();
                #[cfg(feature = "planted-bugs")]
                h.demote_after.store(
                    sources.planted.demote_after(),
                    std::sync::atomic::Ordering::Relaxed,
                );
                #[cfg(feature = "planted-bugs")]
                let forgotten = sources.planted.forgotten.contains(id);
                #[cfg(not(feature = "planted-bugs"))]
                let forgotten = false;
                let tier = p.tier();
                let k = keys
                    .entry(id.clone())
                    .or_insert_with(|| {
                        // Pubkey routing trusts keys from an attestation report,
                        // which only NEAR has (R4: Chutes gets no pubkey entries).
                        if tier == Tier::Near && !forgotten {
                            p.signing_keys().iter().map(|k| k.as_str().into()).collect()
                        } else {
                            Arc::from([])
                        }
                    })
                    .clone();
                slots.push(Slot {
                    tier,
                    caps: p.capabilities(),
                    health: h,
                    keys: k,
                    window: p.context_window(),
                    provider: p.clone(),
                });
            }
            // The static half of R17/R44's order, done once here rather
            // than per request: a stable sort by (tier, capacity rank).
            // Selection only reorders by overflow and demotion and rotates
            // the leading group.
            slots[start..].sort_by_key(|s| (s.tier, s.capacity_rank()));
            let rr = prev
                .and_then(|t| t.models.get(m))
                .map(|x| x.rr.clone())
                .unwrap_or_default();
            let len = slots.len() - start;
            #[allow(unused_mut)]
            let mut order = StaticOrder::of(&slots[start..]);
            #[cfg(feature = "planted-bugs")]
            sources.planted.bend_order(&mut order);
            models.insert(ModelIdx {
                name: m.into(),
                order,
                start: u32::try_from(start).expect("fewer than 2^32 slots"),
                len: u32::try_from(len).expect("fewer than 2^32 slots"),
                rr,
            });
        }
        Table {
            sources,
            slots,
            models,
            health,
            notable,
        }
    }

    #[inline]
    pub(crate) fn model_slots(&self, idx: &ModelIdx) -> &[Slot] {
        &self.slots[idx.start as usize..(idx.start + idx.len) as usize]
    }

    pub(crate) fn catalog_row(&self, model: &str) -> Option<CatalogRow> {
        self.sources.catalog.get(model).copied()
    }
}

/// Model id → its [`ModelIdx`]: a hash table keyed by the name inside the
/// entry, compared inline (a libc `memcmp` call for a ~20-byte id cost as
/// much as the rest of the lookup).
pub(crate) struct ModelIndex(HashTable<ModelIdx>);

impl ModelIndex {
    fn with_capacity(n: usize) -> Self {
        ModelIndex(HashTable::with_capacity(n))
    }

    #[inline]
    fn hash(name: &str) -> u64 {
        FxBuildHasher.hash_one(name)
    }

    fn insert(&mut self, idx: ModelIdx) {
        let h = Self::hash(&idx.name);
        self.0.insert_unique(h, idx, |m| Self::hash(&m.name));
    }

    #[inline]
    pub fn get(&self, name: &str) -> Option<&ModelIdx> {
        self.0.find(Self::hash(name), |m| {
            same_bytes(m.name.as_bytes(), name.as_bytes())
        })
    }

    #[cfg(test)]
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// In hash order: callers must not let it reach anything observable
    /// unsorted.
    pub fn iter(&self) -> impl Iterator<Item = &ModelIdx> {
        self.0.iter()
    }
}

/// Byte equality in word-sized steps, inlined.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    let word = |s: &[u8], i: usize| u64::from_ne_bytes(s[i..i + 8].try_into().expect("8 bytes"));
    let mut i = 0;
    while i + 8 < n {
        if word(a, i) != word(b, i) {
            return false;
        }
        i += 8;
    }
    // The last word overlaps the previous one rather than going byte-wise.
    word(a, n - 8) == word(b, n - 8)
}

#[cfg(test)]
mod tests {
    use super::same_bytes;

    #[test]
    fn same_bytes_matches_slice_equality() {
        let base = b"zai-org/GLM-5.1-FP8-and-some-more-bytes";
        for n in 0..base.len() {
            let a = &base[..n];
            assert!(same_bytes(a, a));
            for i in 0..n {
                let mut b = a.to_vec();
                b[i] ^= 1;
                assert!(!same_bytes(a, &b), "n={n} i={i}");
            }
            if n > 0 {
                assert!(!same_bytes(a, &base[..n - 1]));
            }
        }
    }
}
