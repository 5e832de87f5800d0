//! A read-only, deterministic picture of the registry for snapshots, oracles
//! and tests. Everything is ordered (BTreeMap / sorted Vec); nothing comes from
//! hash-map iteration order.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::table::{CatalogRow, Table};
use crate::health::{LatencyFloor, Ttft};
use crate::provider::ProviderId;
use crate::tier::Tier;

/// One provider of one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderView {
    pub id: ProviderId,
    pub tier: Tier,
    pub consecutive_failures: u32,
    pub demoted: bool,
    /// SPEC-parity R40: its declared context window (`None`: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u32>,
    /// R46: its TTFT moving average and sample count.
    pub ttft: Ttft,
    /// R47: latency-demoted among the model's providers, as a request
    /// without a pubkey sees them.
    pub latency_demoted: bool,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RegistryView {
    /// Model id → its providers in registration order (`[NEAR…] + [pinned…]`,
    /// then the external rows of an unprotected id), stably sorted by tier
    /// and capacity rank (SPEC-parity R44: smallest declared window first).
    /// The per-request order (overflow, demotion, round-robin) is the
    /// selection's.
    pub models: BTreeMap<String, Vec<ProviderView>>,
    /// Pinned ids → their pinned provider ids (R4).
    pub pinned: BTreeMap<String, Vec<ProviderId>>,
    /// Reserved canonical ids (R5).
    pub reserved: BTreeSet<String>,
    /// Signing key → the sorted ids of providers holding it (R16).
    pub pubkeys: BTreeMap<String, Vec<ProviderId>>,
    pub catalog: BTreeMap<String, CatalogRow>,
}

impl RegistryView {
    pub(crate) fn of(t: &Table) -> RegistryView {
        let mut models = BTreeMap::new();
        let mut pubkeys: BTreeMap<String, BTreeSet<ProviderId>> = BTreeMap::new();
        for idx in t.models.iter() {
            let m = &idx.name;
            let slots = t.model_slots(idx);
            for s in slots {
                for k in s.keys.iter() {
                    pubkeys
                        .entry(k.to_string())
                        .or_default()
                        .insert(s.provider.id().clone());
                }
            }
            let floor = LatencyFloor::of(slots.iter().map(|s| s.health.ttft()));
            let list = slots
                .iter()
                .map(|s| ProviderView {
                    id: s.provider.id().clone(),
                    tier: s.tier,
                    consecutive_failures: s.health.consecutive_failures(),
                    demoted: s.health.is_demoted(),
                    context_window: s.window,
                    ttft: s.health.ttft(),
                    latency_demoted: floor.demotes(s.health.ttft()),
                })
                .collect();
            models.insert(m.to_string(), list);
        }
        let src = &t.sources;
        RegistryView {
            models,
            pinned: src
                .pinned
                .iter()
                .map(|(m, ps)| (m.clone(), ps.iter().map(|p| p.id().clone()).collect()))
                .collect(),
            reserved: src.reserved.clone(),
            pubkeys: pubkeys
                .into_iter()
                .map(|(k, ids)| (k, ids.into_iter().collect()))
                .collect(),
            catalog: src.catalog.clone(),
        }
    }

    /// The provider ids of `model` in registration order (empty if unmapped).
    pub fn provider_ids(&self, model: &str) -> Vec<&str> {
        self.models
            .get(model)
            .map(|ps| ps.iter().map(|p| p.id.as_str()).collect())
            .unwrap_or_default()
    }

    /// Consecutive failures of a provider that still backs some model.
    pub fn failures(&self, provider: &str) -> Option<u32> {
        self.models
            .values()
            .flatten()
            .find(|p| p.id.as_str() == provider)
            .map(|p| p.consecutive_failures)
    }
}
