//! Provider selection (R15–R18): the hot path.
//!
//! One `ArcSwap::load`, one hash lookup, a pass over the model's inline slots
//! and an insertion sort of at most a handful of `u32`s: no lock, and no heap
//! allocation for up to four providers (`engine/tests/select_alloc.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::Guard;
use smallvec::SmallVec;

use crate::provider::{Operation, Provider, ProviderId};
use crate::registry::{Health, Registry, Slot, Table};
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

/// R18: keeps only the providers with `capable` when at least one has it, so
/// a lone incapable provider still answers with its clear refusal.
#[inline]
fn keep_capable(order: &mut SmallVec<[u32; 4]>, slots: &[Slot], capable: impl Fn(&Slot) -> bool) {
    let cap = |o: &u32| capable(&slots[*o as usize]);
    if order.iter().any(cap) {
        order.retain(|o| cap(o));
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
    let Some(idx) = table.models.get(model) else {
        return Err(SelectError::UnknownModel);
    };
    let slots = table.model_slots(idx);

    // R15: a model with any attested provider never selects a plaintext one.
    // Slots are tier-sorted, so plaintext providers are a suffix.
    let verifiable = slots.first().is_some_and(|s| s.tier.is_attested());
    let mut order: SmallVec<[u32; 4]> = SmallVec::new();
    for (i, s) in slots.iter().enumerate() {
        if verifiable && !s.tier.is_attested() {
            break;
        }
        // R16: only providers holding the key; Chutes holds none.
        if let Some(key) = model_pub_key {
            if !s.keys.iter().any(|k| **k == *key) {
                continue;
            }
        }
        order.push(idx.start + i as u32);
    }
    if order.is_empty() {
        return Err(if model_pub_key.is_some() {
            SelectError::NoProviderForPubKey
        } else {
            SelectError::NoProviders
        });
    }
    let all = &table.slots;
    let at = |o: u32| &all[o as usize];

    if op.is_streaming() {
        keep_capable(&mut order, all, |s| s.caps.streaming);
    }
    if client_e2ee {
        keep_capable(&mut order, all, |s| s.caps.client_e2ee);
    }

    // R17: order by (demoted, tier). The slots are already tier-sorted, so a
    // stable partition of the healthy before the demoted completes it.
    if order.iter().any(|&o| at(o).health.is_demoted()) {
        let healthy = |o: &&u32| !at(**o).health.is_demoted();
        let mut sorted: SmallVec<[u32; 4]> = order.iter().filter(healthy).copied().collect();
        sorted.extend(order.iter().filter(|o| !healthy(o)).copied());
        order = sorted;
    }
    // Round-robin within the leading (demoted, tier) group only, so lower
    // groups keep their place (rotating the whole list skews the leaders).
    let first = at(order[0]);
    let lead = order
        .iter()
        .take_while(|&&o| {
            let s = at(o);
            s.tier == first.tier && s.health.is_demoted() == first.health.is_demoted()
        })
        .count();
    if lead > 1 {
        let counter = if model_pub_key.is_some() {
            &idx.rr.pubkey
        } else {
            &idx.rr.plain
        };
        let n = counter.fetch_add(1, Ordering::Relaxed);
        order[..lead].rotate_left(n % lead);
    }
    Ok(Selection { table, order })
}

#[cfg(test)]
mod tests;
