//! Provider selection (R15–R18): the hot path.
//!
//! One `ArcSwap::load`, one hash lookup and a pass over the model's slots,
//! which the snapshot keeps tier-sorted with the request-independent part of
//! the order precomputed (`StaticOrder`): no lock, and no heap allocation
//! for up to four providers (`engine/tests/select_alloc.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::Guard;
use smallvec::SmallVec;

use crate::provider::{Operation, Provider, ProviderId};
use crate::registry::{Health, ModelIdx, Registry, Slot, Table};
use crate::tier::{Capabilities, Tier};

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

/// Hears the decisions of one selection, for the routing trace. The hot path
/// uses `()`, which compiles to nothing.
pub(crate) trait SelectObserver {
    fn dropped(&mut self, _slot: u32, _why: Dropped) {}
    fn leading_group(&mut self, _len: usize, _turn: usize) {}
}

impl SelectObserver for () {}

/// A selection's decisions, by slot; see [`Dropped`].
#[derive(Debug, Default)]
pub(crate) struct SelectTrace {
    pub dropped: Vec<(u32, Dropped)>,
    pub lead: Option<(usize, usize)>,
}

impl SelectObserver for SelectTrace {
    fn dropped(&mut self, slot: u32, why: Dropped) {
        self.dropped.push((slot, why));
    }
    fn leading_group(&mut self, len: usize, turn: usize) {
        self.lead = Some((len, turn));
    }
}

/// The providers to try for one request, best first. Holds the snapshot it
/// was selected from, so the order stays valid whatever writers do meanwhile.
pub struct Selection {
    table: Guard<Arc<Table>>,
    order: SmallVec<[u32; 4]>,
}

impl Selection {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn slot(&self, i: usize) -> &Slot {
        &self.table.slots[self.order[i] as usize]
    }

    pub fn provider(&self, i: usize) -> &Arc<dyn Provider> {
        &self.slot(i).provider
    }

    pub fn tier(&self, i: usize) -> Tier {
        self.slot(i).tier
    }

    pub fn ids(&self) -> impl Iterator<Item = &ProviderId> + '_ {
        self.order
            .iter()
            .map(|&s| self.table.slots[s as usize].provider.id())
    }

    /// Owned candidates for the retry loop, which outlives the snapshot guard.
    pub(crate) fn to_candidates(&self) -> Vec<(Arc<dyn Provider>, Arc<Health>)> {
        (0..self.len())
            .map(|i| {
                let s = self.slot(i);
                (s.provider.clone(), s.health.clone())
            })
            .collect()
    }
}

/// The owned candidate list the router builds from a selection (for the
/// selection benchmark's `engine_owned` case); opaque outside the engine.
#[cfg(feature = "testing")]
pub struct OwnedCandidates(#[allow(dead_code)] Vec<(Arc<dyn Provider>, Arc<Health>)>);

#[cfg(feature = "testing")]
impl Selection {
    /// What `router.rs` does after selecting: `to_candidates`.
    pub fn to_owned_candidates(&self) -> OwnedCandidates {
        OwnedCandidates(self.to_candidates())
    }
}

impl std::fmt::Debug for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ids()).finish()
    }
}

impl Registry {
    /// Orders the providers of `model` for one request (R15–R18).
    #[inline]
    pub fn select(
        &self,
        model: &str,
        op: Operation,
        model_pub_key: Option<&str>,
        client_e2ee: bool,
    ) -> Result<Selection, SelectError> {
        select_in(self.load(), model, op, model_pub_key, client_e2ee)
    }
}

/// The request-independent part of a model's order, computed once per
/// snapshot from its tier-sorted slots.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StaticOrder {
    /// R15: how many leading slots may be selected. A model with any attested
    /// provider never selects a plaintext one; plaintext providers sort last.
    pub cut: u32,
    /// R17: the size of the leading tier group among them, before demotions.
    pub lead: u32,
    /// R18: capabilities every selectable slot has (a filter that would keep
    /// everything is skipped).
    pub all: Capabilities,
    /// A planted bug (`registry/planted.rs`): the demotion sort moves each
    /// demoted provider back one place only. Read on the rare demoted path.
    #[cfg(feature = "planted-bugs")]
    pub demotion_sort_one_step: bool,
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
        let lead = eligible
            .iter()
            .take_while(|s| Some(s.tier) == eligible.first().map(|f| f.tier))
            .count();
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
            all,
            #[cfg(feature = "planted-bugs")]
            demotion_sort_one_step: false,
        }
    }
}

#[inline]
pub(crate) fn select_in(
    table: Guard<Arc<Table>>,
    model: &str,
    op: Operation,
    model_pub_key: Option<&str>,
    client_e2ee: bool,
) -> Result<Selection, SelectError> {
    select_observed(table, model, op, model_pub_key, client_e2ee, &mut ())
}

/// [`select_in`], telling `obs` why each provider was dropped and how the
/// leading group rotated. One selection: the round-robin turn it takes is the
/// request's own, traced or not.
#[inline]
pub(crate) fn select_observed<O: SelectObserver>(
    table: Guard<Arc<Table>>,
    model: &str,
    op: Operation,
    model_pub_key: Option<&str>,
    client_e2ee: bool,
    obs: &mut O,
) -> Result<Selection, SelectError> {
    let Some(idx) = table.models.get(model) else {
        return Err(SelectError::UnknownModel);
    };
    let req = Request {
        op,
        model_pub_key,
        client_e2ee,
    };
    // Up to four providers are ordered in a stack buffer; more may allocate.
    let order = if idx.order.cut <= 4 {
        let mut buf = [0u32; 4];
        let n = order_into(&table.slots, idx, &mut buf, req, obs)?;
        SmallVec::from_buf_and_len(buf, n)
    } else {
        let mut buf = vec![0u32; idx.order.cut as usize];
        let n = order_into(&table.slots, idx, &mut buf, req, obs)?;
        buf.truncate(n);
        SmallVec::from_vec(buf)
    };
    Ok(Selection { table, order })
}

#[derive(Clone, Copy)]
struct Request<'a> {
    op: Operation,
    model_pub_key: Option<&'a str>,
    client_e2ee: bool,
}

/// Writes the model's selected slot indices, best first, into `buf` (at least
/// as long as the model's list) and returns how many there are.
#[inline(always)]
fn order_into<O: SelectObserver>(
    all: &[Slot],
    idx: &ModelIdx,
    buf: &mut [u32],
    req: Request<'_>,
    obs: &mut O,
) -> Result<usize, SelectError> {
    // R15, precomputed in `StaticOrder`: plaintext providers are cut off.
    let eligible = &all[idx.start as usize..][..idx.order.cut as usize];
    let at = |o: u32| &all[o as usize];
    for cut in idx.order.cut..idx.len {
        obs.dropped(idx.start + cut, Dropped::PlaintextForVerifiableModel);
    }

    let mut n = 0;
    let mut any_demoted = false;
    for (i, s) in eligible.iter().enumerate() {
        // R16: only providers holding the key; Chutes holds none.
        if let Some(key) = req.model_pub_key {
            if !s.keys.iter().any(|k| **k == *key) {
                obs.dropped(idx.start + i as u32, Dropped::NoMatchingKey);
                continue;
            }
        }
        any_demoted |= s.health.is_demoted();
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

    let order = &mut buf[..n];

    // R17: order by (demoted, tier). The slots are already tier-sorted, so
    // without demotions the order stands; otherwise a stable move of the
    // demoted behind the healthy completes it (rare path).
    let demoted = |o: u32| any_demoted && at(o).health.is_demoted();
    if any_demoted {
        #[cfg(feature = "planted-bugs")]
        let one_step = idx.order.demotion_sort_one_step;
        #[cfg(not(feature = "planted-bugs"))]
        let one_step = false;
        for i in 1..order.len() {
            let mut j = i;
            while j > 0 && demoted(order[j - 1]) && !demoted(order[j]) {
                order.swap(j - 1, j);
                if one_step {
                    break;
                }
                j -= 1;
            }
        }
    }
    // Round-robin within the leading (demoted, tier) group only, so lower
    // groups keep their place (rotating the whole list skews the leaders).
    let lead = if n == eligible.len() && !any_demoted {
        idx.order.lead as usize
    } else {
        let (tier, down) = (at(order[0]).tier, demoted(order[0]));
        order
            .iter()
            .take_while(|&&o| at(o).tier == tier && demoted(o) == down)
            .count()
    };
    if lead > 1 {
        let counter = if req.model_pub_key.is_some() {
            &idx.rr.pubkey
        } else {
            &idx.rr.plain
        };
        // R65: the value mod the group's size picks the turn; the counter
        // then stores (value + 1) mod size, so it stays below the size of
        // the group it last served.
        let value = counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some((v % lead + 1) % lead)
            })
            .unwrap_or_else(|v| v);
        let turn = value % lead;
        obs.leading_group(lead, turn);
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
