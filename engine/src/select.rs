//! Provider selection (R15–R18, SPEC-parity R44/R47/R48): the hot path.
//!
//! One snapshot (the caller's, or the thread's cached handle:
//! [`Registry::with_selection`]), one hash lookup and a pass over the
//! model's slots, which the snapshot keeps sorted by (tier, capacity rank)
//! with the request-independent part of the order precomputed
//! (`StaticOrder`): no lock, no provider's health read while none in the
//! registry is notable (`health::Notable`), and no heap allocation for up to
//! four providers (`engine/tests/select_alloc.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::Guard;
use smallvec::SmallVec;

use crate::health::{Health, LatencyFloor, Ttft};
use crate::provider::{Operation, Provider, ProviderId};
use crate::registry::{ModelIdx, Registry, Slot, Table, UNDECLARED_RANK};
use crate::tier::Tier;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("no provider is registered for this model")]
    UnknownModel,
    #[error("no provider for this public key")]
    NoProviderForPubKey,
    #[error("no provider is available for this model")]
    NoProviders,
}

/// Why a provider of the model was left out of a request's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Dropped {
    /// R15: plaintext, and the model has an attested provider.
    PlaintextForVerifiableModel,
    /// R16: it does not hold the requested signing key.
    NoMatchingKey,
    /// R18: cannot stream, and a streaming-capable provider exists.
    CannotStream,
    /// R18: no client E2EE, and a capable provider exists.
    NoClientE2ee,
}

/// How a request's leading group was rotated (R17, R48).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// The model's round-robin counter's turn (R17, R65).
    RoundRobin { turn: usize },
    /// R48: streamed chat, by the hash of its first two messages; the
    /// counter did not move.
    Prefix { hash: u64 },
}

/// Hears the decisions of one selection, for the routing trace. The hot path
/// uses `()`, which compiles to nothing.
pub(crate) trait SelectObserver {
    /// Whether [`SelectObserver::keyed`] wants every provider's key (the
    /// key is otherwise computed only on the rare reordering path).
    const KEYS: bool = false;
    /// Whether the selection only looks: it reads the round-robin turn
    /// instead of taking it (R17's position, for [`Registry::round_robin`]).
    const PEEKS: bool = false;
    fn dropped(&mut self, _slot: u32, _why: Dropped) {}
    /// A provider kept for the request, with its sort key and TTFT state.
    fn keyed(&mut self, _slot: &Slot, _key: SortKey, _ttft: Ttft) {}
    fn latency_floor(&mut self, _floor: LatencyFloor) {}
    fn leading_group(&mut self, _len: usize, _placed: Placement) {}
}

impl SelectObserver for () {}

/// One provider of a traced selection, as the routing trace shows it.
#[derive(Debug)]
pub(crate) struct TracedProvider {
    pub id: ProviderId,
    /// SPEC-parity R40: its declared window.
    pub window: Option<u32>,
    pub key: SortKey,
    pub failures: u32,
    pub ttft: Ttft,
}

/// A selection that takes no turn: the order the next request would get.
struct Peek;

/// [`PlantedBug::TurnTakenLate`](crate::registry::PlantedBug): the
/// candidates, reading the round-robin turn instead of taking it.
#[cfg(feature = "planted-bugs")]
pub(crate) fn candidates_peeking(
    table: &Table,
    model: &str,
    req: Request<'_>,
) -> Result<Candidates, SelectError> {
    with_order(table, model, req, &mut Peek, |sel| sel.to_candidates())
}

/// The providers a request will try, in order, each with its health.
pub(crate) type Candidates = Vec<(Arc<dyn Provider>, Arc<Health>)>;

impl SelectObserver for Peek {
    const PEEKS: bool = true;
}

/// R17's round-robin position of one model, read without moving it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoundRobinView {
    /// The value the model's counter holds (SPEC-parity R65): the turn the
    /// next request (without `x-model-pub-key`, which rotates on its own
    /// counter) whose leading group has more than one provider takes, mod
    /// that group's size. Each such request stores (value + 1) mod size.
    pub counter: usize,
    /// The order the next such request would be tried in (JSON, no key
    /// headers): its first provider is the one it leads on.
    pub next: Vec<ProviderId>,
}

/// A selection's decisions; see [`Dropped`] and [`SortKey`].
#[derive(Debug, Default)]
pub(crate) struct SelectTrace {
    /// Every provider of the model, in registration (tier-sorted) order.
    pub listed: Vec<(ProviderId, Tier)>,
    /// By slot index (see `first_slot`).
    pub dropped: Vec<(u32, Dropped)>,
    pub kept: Vec<TracedProvider>,
    pub floor: LatencyFloor,
    pub lead: Option<(usize, Placement)>,
    /// The slot index of `listed[0]`, for naming dropped slots.
    first_slot: u32,
}

impl SelectObserver for SelectTrace {
    const KEYS: bool = true;
    fn dropped(&mut self, slot: u32, why: Dropped) {
        self.dropped.push((slot, why));
    }
    fn keyed(&mut self, slot: &Slot, key: SortKey, ttft: Ttft) {
        self.kept.push(TracedProvider {
            id: slot.provider.id().clone(),
            window: slot.window,
            key,
            failures: slot.health.consecutive_failures(),
            ttft,
        });
    }
    fn latency_floor(&mut self, floor: LatencyFloor) {
        self.floor = floor;
    }
    fn leading_group(&mut self, len: usize, placed: Placement) {
        self.lead = Some((len, placed));
    }
}

/// The providers to try for one request, best first, as a view of the
/// snapshot it was selected from: what [`Registry::with_selection`] lends its
/// closure (nothing owned, nothing to drop), and what a [`Selection`] shows.
#[derive(Clone, Copy)]
pub struct Selected<'a> {
    table: &'a Table,
    order: &'a [u32],
}

impl<'a> Selected<'a> {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn slot(&self, i: usize) -> &'a Slot {
        &self.table.slots[self.order[i] as usize]
    }

    pub fn provider(&self, i: usize) -> &'a Arc<dyn Provider> {
        &self.slot(i).provider
    }

    pub fn tier(&self, i: usize) -> Tier {
        self.slot(i).tier
    }

    pub fn ids(&self) -> impl Iterator<Item = &'a ProviderId> + 'a {
        let slots = &self.table.slots;
        self.order
            .iter()
            .map(move |&s| slots[s as usize].provider.id())
    }

    /// Owned candidates for the retry loop, which outlives the snapshot.
    pub(crate) fn to_candidates(self) -> Candidates {
        (0..self.len())
            .map(|i| {
                let s = self.slot(i);
                (s.provider.clone(), s.health.clone())
            })
            .collect()
    }

    /// What `router.rs` does after selecting: `to_candidates` (for the
    /// selection benchmark's `engine_owned` case).
    #[cfg(feature = "testing")]
    pub fn to_owned_candidates(self) -> OwnedCandidates {
        OwnedCandidates(self.to_candidates())
    }
}

impl std::fmt::Debug for Selected<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ids()).finish()
    }
}

/// A [`Selected`] that owns its snapshot guard, so it can be returned and
/// kept (tests, operators' reads). The hot path lends a [`Selected`]
/// instead ([`Registry::with_selection`]).
pub struct Selection {
    table: Guard<Arc<Table>>,
    order: SmallVec<[u32; 4]>,
}

impl Selection {
    /// The order as a borrowed view.
    pub fn view(&self) -> Selected<'_> {
        Selected {
            table: &self.table,
            order: &self.order,
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn provider(&self, i: usize) -> &Arc<dyn Provider> {
        self.view().provider(i)
    }

    pub fn tier(&self, i: usize) -> Tier {
        self.view().tier(i)
    }

    pub fn ids(&self) -> impl Iterator<Item = &ProviderId> + '_ {
        self.view().ids()
    }

    /// What `router.rs` does after selecting: `to_candidates`.
    #[cfg(feature = "testing")]
    pub fn to_owned_candidates(&self) -> OwnedCandidates {
        self.view().to_owned_candidates()
    }
}

/// The owned candidate list the router builds from a selection (for the
/// selection benchmark's `engine_owned` case); opaque outside the engine.
#[cfg(feature = "testing")]
pub struct OwnedCandidates(#[allow(dead_code)] Vec<(Arc<dyn Provider>, Arc<Health>)>);

impl std::fmt::Debug for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.view().fmt(f)
    }
}

impl Registry {
    /// Orders the providers of `model` for one request (R15–R18, R47), with
    /// round-robin in the leading group.
    #[inline]
    pub fn select(
        &self,
        model: &str,
        op: Operation,
        model_pub_key: Option<&str>,
        client_e2ee: bool,
    ) -> Result<Selection, SelectError> {
        self.select_shaped(model, op, model_pub_key, client_e2ee, Shape::default())
    }

    /// R17's round-robin position of `model` (`None` when it is not
    /// mapped): the turns its counter has taken and the order the next
    /// plain request would get, computed by the selection itself without
    /// taking a turn. An operator's read, like [`Registry::view`].
    pub fn round_robin(&self, model: &str) -> Option<RoundRobinView> {
        let table = self.load();
        let counter = table.models.get(model)?.rr.plain.load(Ordering::Relaxed);
        let plain = Request {
            op: Operation::ChatCompletion,
            model_pub_key: None,
            client_e2ee: false,
            estimate: None,
            prefix: None,
        };
        let next = with_order(&table, model, plain, &mut Peek, |sel| {
            sel.ids().cloned().collect()
        })
        .unwrap_or_default();
        Some(RoundRobinView { counter, next })
    }

    /// [`Registry::select`] for a request of a known [`Shape`]: its context
    /// requirement (SPEC-parity R42; a provider whose declared window it
    /// exceeds sorts behind every one that fits, R44) and R48's prefix hash
    /// (streamed chat only: the leading group is rotated by the hash, and the
    /// round-robin counter does not move).
    #[inline]
    pub fn select_shaped(
        &self,
        model: &str,
        op: Operation,
        model_pub_key: Option<&str>,
        client_e2ee: bool,
        shape: Shape,
    ) -> Result<Selection, SelectError> {
        let req = Request::shaped(op, model_pub_key, client_e2ee, shape);
        select_observed(self.load(), model, req, &mut ())
    }

    /// [`Registry::select_shaped`] without an owned result: `f` gets the
    /// order as a [`Selected`] borrowed from the snapshot, read through this
    /// thread's cached snapshot handle ([`Registry::with_snapshot`]: one
    /// atomic load when nothing changed, no reference count touched) and the
    /// order kept on the stack. The cheapest way to select; zero heap
    /// allocations for up to four providers.
    #[inline]
    pub fn with_selection<R>(
        &self,
        model: &str,
        op: Operation,
        model_pub_key: Option<&str>,
        client_e2ee: bool,
        shape: Shape,
        f: impl FnOnce(Selected<'_>) -> R,
    ) -> Result<R, SelectError> {
        let req = Request::shaped(op, model_pub_key, client_e2ee, shape);
        self.with_snapshot(
            #[inline(always)]
            |table| with_order(table, model, req, &mut (), f),
        )
    }
}

/// What of a request's content its order depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// SPEC-parity R42's requirement, in tokens; `None`: no estimate.
    pub estimate: Option<u32>,
    /// SPEC-parity R48's hash of the first two messages (streamed chat).
    pub prefix: Option<u64>,
}

/// [`select_observed`] with the routing trace: logs, at debug level, every
/// provider of the model (tier, hard demotion, TTFT state), which were
/// dropped and why, each kept provider's sort key, the latency floor, how
/// the leading group was placed and the final order. One selection: the
/// round-robin turn it takes is the request's own, traced or not.
pub(crate) fn select_traced<R>(
    table: &Table,
    model: &str,
    req: Request<'_>,
    f: impl FnOnce(Selected<'_>) -> R,
) -> Result<R, SelectError> {
    let mut trace = SelectTrace::default();
    if let Some(idx) = table.models.get(model) {
        trace.first_slot = idx.start;
        trace.listed = table
            .model_slots(idx)
            .iter()
            .map(|s| (s.provider.id().clone(), s.tier))
            .collect();
    }
    let result = with_order(table, model, req, &mut trace, |sel| {
        let order: Vec<String> = sel.ids().map(|p| p.to_string()).collect();
        (f(sel), order)
    });
    let listed: Vec<String> = trace
        .listed
        .iter()
        .map(|(id, tier)| format!("{id} ({tier})"))
        .collect();
    let dropped: Vec<String> = trace
        .dropped
        .iter()
        .map(|&(slot, why)| {
            let id = slot
                .checked_sub(trace.first_slot)
                .and_then(|i| trace.listed.get(i as usize))
                .map_or("?", |(id, _)| id.as_str());
            format!("{id} ({why:?})")
        })
        .collect();
    let kept: Vec<String> = trace.kept.iter().map(describe).collect();
    let (result, order) = match result {
        Ok((out, order)) => (Ok(out), order),
        Err(e) => (Err(e), vec![format!("<{e}>")]),
    };
    let floor = trace
        .floor
        .min_ms()
        .map_or_else(|| "none warmed".to_string(), |ms| format!("{ms:.1} ms"));
    let lead = trace.lead.map(|(len, placed)| match placed {
        Placement::RoundRobin { turn } => format!("{len} providers, round-robin turn {turn}"),
        Placement::Prefix { hash } => {
            format!("{len} providers, prefix hash {hash:016x} (R48, counter untouched)")
        }
    });
    tracing::debug!(
        model,
        op = ?req.op,
        estimate = ?req.estimate,
        pubkey = req.model_pub_key.is_some(),
        client_e2ee = req.client_e2ee,
        listed = %listed.join(", "),
        dropped = %dropped.join(", "),
        keys = %kept.join("; "),
        fastest_warmed_ttft = %floor,
        leading_group = ?lead,
        order = %order.join(" > "),
        "selected"
    );
    result
}

/// One kept provider for the trace: why it sorts where it does.
fn describe(p: &TracedProvider) -> String {
    let k = p.key;
    let hard = if k.hard_demoted {
        format!("demoted ({} failures)", p.failures)
    } else {
        format!("{} failures", p.failures)
    };
    let ttft = if p.ttft.samples == 0 {
        "no TTFT sample".to_string()
    } else {
        format!(
            "TTFT {:.1} ms over {} samples{}",
            p.ttft.ema_ms,
            p.ttft.samples,
            if p.ttft.warmed() { "" } else { " (warming)" }
        )
    };
    let slow = if k.latency_demoted {
        ", latency-demoted"
    } else {
        ""
    };
    let window = match p.window {
        Some(w) if k.overflow => format!(", window {w} overflowed"),
        Some(w) => format!(", window {w}"),
        None => String::new(),
    };
    format!("{} [{}{window}, {hard}, {ttft}{slow}]", p.id, k.tier)
}

/// A provider's place in a request's order (R17 amended by SPEC-parity R44
/// and R47), compared ascending field by field; the sort is stable over the
/// slots' (tier, capacity rank) order. Built by [`sort_key`] only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SortKey {
    /// R44: the request's estimate exceeds the declared window.
    pub overflow: bool,
    /// R17/R21: 10 or more consecutive retryable failures.
    pub hard_demoted: bool,
    /// R47: slow against the request's fastest warmed provider.
    pub latency_demoted: bool,
    pub tier: Tier,
    /// R44: the window (undeclared last) so the smallest sufficient window
    /// leads; with overflow, the biggest window leads.
    pub capacity_rank: u64,
}

/// Whether `estimate` exceeds `s`'s declared window (R44).
#[inline]
fn overflows(s: &Slot, estimate: Option<u32>) -> bool {
    matches!((estimate, s.window), (Some(e), Some(w)) if e > w)
}

/// The one construction of a provider's [`SortKey`] for a request.
/// `overflow_smallest_first` is a planted bug (always false unplanted).
#[inline]
fn sort_key(
    s: &Slot,
    estimate: Option<u32>,
    ttft: Ttft,
    floor: LatencyFloor,
    overflow_smallest_first: bool,
) -> SortKey {
    let overflow = overflows(s, estimate);
    let capacity_rank = match (overflow, s.window) {
        (true, Some(w)) if !overflow_smallest_first => UNDECLARED_RANK - u64::from(w),
        _ => s.capacity_rank(),
    };
    SortKey {
        overflow,
        hard_demoted: s.health.is_demoted(),
        latency_demoted: floor.demotes(ttft),
        tier: s.tier,
        capacity_rank,
    }
}

/// [`Registry::select`]'s body on an already loaded snapshot, owning it in
/// the result ([`with_order`] with the order copied out).
#[inline]
pub(crate) fn select_observed<O: SelectObserver>(
    table: Guard<Arc<Table>>,
    model: &str,
    req: Request<'_>,
    obs: &mut O,
) -> Result<Selection, SelectError> {
    let order = with_order(&table, model, req, obs, |sel| {
        SmallVec::from_slice(sel.order)
    })?;
    Ok(Selection { table, order })
}

/// The one selection: orders `model`'s providers for `req` on `table`,
/// telling `obs` why each provider was dropped, its sort key and how the
/// leading group was placed, and lends the order to `f`.
#[inline(always)]
pub(crate) fn with_order<O: SelectObserver, R>(
    table: &Table,
    model: &str,
    req: Request<'_>,
    obs: &mut O,
    f: impl FnOnce(Selected<'_>) -> R,
) -> Result<R, SelectError> {
    let Some(idx) = table.models.get(model) else {
        return Err(SelectError::UnknownModel);
    };
    // Up to 64 providers are ordered in a stack buffer (the usual two to
    // four in a small one); more allocate.
    if idx.order.cut <= 4 {
        let mut buf = [0u32; 4];
        let n = order_into(table, idx, &mut buf, req, obs)?;
        Ok(f(Selected {
            table,
            order: &buf[..n],
        }))
    } else if idx.order.cut <= 64 {
        let mut buf = [0u32; 64];
        let n = order_into(table, idx, &mut buf, req, obs)?;
        Ok(f(Selected {
            table,
            order: &buf[..n],
        }))
    } else {
        let mut buf = vec![0u32; idx.order.cut as usize];
        let n = order_into(table, idx, &mut buf, req, obs)?;
        Ok(f(Selected {
            table,
            order: &buf[..n],
        }))
    }
}

/// What selection needs to know of one request.
#[derive(Clone, Copy)]
pub(crate) struct Request<'a> {
    pub op: Operation,
    pub model_pub_key: Option<&'a str>,
    pub client_e2ee: bool,
    /// SPEC-parity R42's requirement, in tokens; `None`: no estimate.
    pub estimate: Option<u32>,
    /// R48's hash of the first two messages (streamed chat only).
    pub prefix: Option<u64>,
}

impl<'a> Request<'a> {
    /// A request of a known [`Shape`], as the public selection calls see it.
    #[inline(always)]
    fn shaped(
        op: Operation,
        model_pub_key: Option<&'a str>,
        client_e2ee: bool,
        shape: Shape,
    ) -> Self {
        Request {
            op,
            model_pub_key,
            client_e2ee,
            estimate: shape.estimate,
            prefix: shape.prefix,
        }
    }
}

/// Writes the model's selected slot indices, best first, into `buf` (at least
/// as long as the model's list) and returns how many there are.
#[inline(always)]
fn order_into<O: SelectObserver>(
    table: &Table,
    idx: &ModelIdx,
    buf: &mut [u32],
    req: Request<'_>,
    obs: &mut O,
) -> Result<usize, SelectError> {
    let all = &table.slots[..];
    // R15, precomputed in `StaticOrder`: plaintext providers are cut off.
    let eligible = &all[idx.start as usize..][..idx.order.cut as usize];
    let at = |o: u32| &all[o as usize];
    for cut in idx.order.cut..idx.len {
        obs.dropped(idx.start + cut, Dropped::PlaintextForVerifiableModel);
    }

    let mut n = 0;
    let mut any_demoted = false;
    let mut any_overflow = false;
    // R47: the fastest warmed TTFT among the request's providers (after
    // R15/R16, before the capability filters, as the candidate list is
    // ordered before R18 filters it).
    let mut floor = LatencyFloor::default();
    // With no provider of the registry failing or warmed, no health can
    // change the order: none is read.
    let weigh_health = !table.notable.none();
    for (i, s) in eligible.iter().enumerate() {
        // R16: only providers holding the key; Chutes holds none.
        if let Some(key) = req.model_pub_key {
            if !s.keys.iter().any(|k| **k == *key) {
                obs.dropped(idx.start + i as u32, Dropped::NoMatchingKey);
                continue;
            }
        }
        any_overflow |= overflows(s, req.estimate);
        if weigh_health {
            any_demoted |= s.health.is_demoted();
            floor = floor.with_warmed(s.health.warmed_ttft_ms());
        }
        buf[n] = idx.start + i as u32;
        n += 1;
    }
    if n == 0 {
        return Err(if req.model_pub_key.is_some() {
            SelectError::NoProviderForPubKey
        } else {
            SelectError::NoProviders
        });
    }
    #[cfg(feature = "planted-bugs")]
    if floor.min_ms().is_some() {
        floor.no_absolute_floor = idx.order.latency_floor_missing;
    }
    obs.latency_floor(floor);

    let order = &mut buf[..n];

    // R17/R44/R47: order by the sort key. The slots are already sorted by
    // (tier, capacity rank), so with nobody demoted (hard or by latency) and
    // nothing overflowing the order stands; otherwise a stable insertion sort
    // by the whole key completes it (rare path: a latency floor exists only
    // once some provider has 8 TTFT samples).
    let keyed = any_demoted || any_overflow || floor.min_ms().is_some();
    // A planted bug's flag, read only where a sort key is built.
    #[cfg(feature = "planted-bugs")]
    let smallest_first = || idx.order.overflow_smallest_first;
    #[cfg(not(feature = "planted-bugs"))]
    let smallest_first = || false;
    let key = |o: u32| {
        let s = at(o);
        sort_key(s, req.estimate, s.health.ttft(), floor, smallest_first())
    };
    if keyed {
        #[cfg(feature = "planted-bugs")]
        let one_step = idx.order.demotion_sort_one_step;
        #[cfg(not(feature = "planted-bugs"))]
        let one_step = false;
        for i in 1..order.len() {
            let mut j = i;
            while j > 0 && key(order[j - 1]) > key(order[j]) {
                order.swap(j - 1, j);
                if one_step {
                    break;
                }
                j -= 1;
            }
        }
    }
    if O::KEYS {
        for &o in order.iter() {
            let s = at(o);
            let ttft = s.health.ttft();
            obs.keyed(
                s,
                sort_key(s, req.estimate, ttft, floor, smallest_first()),
                ttft,
            );
        }
    }
    // The leading group: every provider whose whole key equals the first
    // one's. Only it is rotated, so lower groups keep their place (rotating
    // the whole list skews the leaders) and two capacity tiers never share
    // traffic.
    let lead = if n == eligible.len() && !keyed {
        idx.order.lead as usize
    } else {
        let first = key(order[0]);
        order.iter().take_while(|&&o| key(o) == first).count()
    };
    if lead > 1 {
        // R48: streamed chat is placed by its prefix hash, the counter
        // untouched; everything else takes the next round-robin turn.
        let take_turn = || {
            let counter = if req.model_pub_key.is_some() {
                &idx.rr.pubkey
            } else {
                &idx.rr.plain
            };
            // R65: the value mod the group's size picks the turn; the
            // counter then stores (value + 1) mod size, so it stays below
            // the size of the group it last served.
            let value = if O::PEEKS {
                counter.load(Ordering::Relaxed)
            } else {
                counter
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                        let next = modulo(v, lead) + 1;
                        Some(if next == lead { 0 } else { next })
                    })
                    .unwrap_or_else(|v| v)
            };
            modulo(value, lead)
        };
        let (turn, placed) = match req.prefix {
            Some(hash) if req.op.is_streaming() => {
                #[cfg(feature = "planted-bugs")]
                if idx.order.prefix_moves_turn {
                    take_turn();
                }
                // The remainder is below `lead`, so it fits a usize.
                let turn = (hash % lead as u64) as usize;
                (turn, Placement::Prefix { hash })
            }
            _ => {
                let turn = take_turn();
                (turn, Placement::RoundRobin { turn })
            }
        };
        obs.leading_group(lead, placed);
        rotate(&mut order[..lead], turn);
    }

    // R18 after the rotation (R65: the counter advances even when the
    // provider whose turn it was is then filtered out).
    if req.op.is_streaming() && !idx.order.all.streaming {
        n = keep_capable(
            &mut buf[..n],
            |o| at(o).caps.streaming,
            |o| obs.dropped(o, Dropped::CannotStream),
        );
    }
    if req.client_e2ee && !idx.order.all.client_e2ee {
        n = keep_capable(
            &mut buf[..n],
            |o| at(o).caps.client_e2ee,
            |o| obs.dropped(o, Dropped::NoClientE2ee),
        );
    }
    Ok(n)
}

/// `v % n`, without the division when `v` is already below `n` (R65: the
/// counter holds a value below the size of the group it last served, so
/// it is whenever the group's size has not shrunk).
#[inline(always)]
fn modulo(v: usize, n: usize) -> usize {
    if v < n {
        v
    } else {
        v % n
    }
}

/// `group.rotate_left(k % group.len())`, without a division or a call for the
/// usual two to four leaders.
#[inline]
fn rotate(group: &mut [u32], k: usize) {
    match *group {
        [a, b] => {
            if k & 1 == 1 {
                group.copy_from_slice(&[b, a]);
            }
        }
        [a, b, c] => match k % 3 {
            1 => group.copy_from_slice(&[b, c, a]),
            2 => group.copy_from_slice(&[c, a, b]),
            _ => {}
        },
        [a, b, c, d] => match k & 3 {
            1 => group.copy_from_slice(&[b, c, d, a]),
            2 => group.copy_from_slice(&[c, d, a, b]),
            3 => group.copy_from_slice(&[d, a, b, c]),
            _ => {}
        },
        _ => {
            let len = group.len();
            group.rotate_left(k % len);
        }
    }
}

/// R18: keeps only the capable providers when at least one is capable, so a
/// lone incapable provider still answers with its clear refusal.
#[inline]
fn keep_capable(
    order: &mut [u32],
    capable: impl Fn(u32) -> bool,
    mut dropped: impl FnMut(u32),
) -> usize {
    if !order.iter().any(|&o| capable(o)) {
        return order.len();
    }
    let mut w = 0;
    for r in 0..order.len() {
        if capable(order[r]) {
            order[w] = order[r];
            w += 1;
        } else {
            dropped(order[r]);
        }
    }
    w
}

#[cfg(test)]
mod tests;
