//! Model-based property tests of the registry (R4–R14, with R21's counters
//! as the registry keeps them): arbitrary sequences of operations run on the
//! real [`Registry`] and on [`Model`], a deliberately naive restatement of
//! SPEC §4 written from the spec's sentences, not from `table.rs`. After
//! every operation the two must agree on each model's provider list (with
//! tier, failure count and demotion), the pinned and reserved ids, the
//! pubkey map and the catalog.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::provider::{Provider, ProviderId};
use crate::testing::FakeProvider;
use crate::tier::Tier;

const MODELS: &[&str] = &["m0", "m1", "m2", "m3"];

/// The providers the sequences draw from. NEAR backends carry signing keys
/// (near-4 shares near-1's key, so one key maps to two providers); one
/// Chutes provider and one external row claim keys too, never indexed.
struct Universe {
    near: Vec<Arc<FakeProvider>>,
    chutes: Vec<Arc<FakeProvider>>,
    external: Vec<Arc<FakeProvider>>,
}

impl Universe {
    fn new() -> Universe {
        let near = [
            ("near-1", "key-a"),
            ("near-2", "key-b"),
            ("near-3", "key-c"),
            ("near-4", "key-a"),
        ]
        .iter()
        .map(|(id, key)| FakeProvider::near(id).with_keys([*key]).arc())
        .collect();
        // chutes:b and external:y report a signing key, which must never be
        // indexed (R4/R16: only keys from a NEAR attestation report route).
        let chutes = vec![
            FakeProvider::chutes("chutes:a").arc(),
            FakeProvider::chutes("chutes:b").with_keys(["key-z"]).arc(),
        ];
        let external = vec![
            FakeProvider::external("external:x").arc(),
            FakeProvider::external("external:y")
                .with_keys(["key-a"])
                .arc(),
        ];
        Universe {
            near,
            chutes,
            external,
        }
    }

    fn dyns(ps: &[Arc<FakeProvider>], picks: &[usize]) -> Vec<Arc<dyn Provider>> {
        picks
            .iter()
            .map(|&i| ps[i].clone() as Arc<dyn Provider>)
            .collect()
    }

    fn rows(
        ps: &[Arc<FakeProvider>],
        rows: &BTreeMap<usize, Vec<usize>>,
    ) -> BTreeMap<String, Vec<Arc<dyn Provider>>> {
        rows.iter()
            .map(|(m, picks)| (MODELS[*m].to_string(), Self::dyns(ps, picks)))
            .collect()
    }

    /// Every provider of the universe: id, tier, signing keys.
    fn facts(&self) -> BTreeMap<String, (Tier, Vec<String>)> {
        self.near
            .iter()
            .chain(&self.chutes)
            .chain(&self.external)
            .map(|p| {
                let keys = p.signing_keys().iter().map(|k| k.to_string()).collect();
                (p.id().to_string(), (p.tier(), keys))
            })
            .collect()
    }
}

/// One source read of a complete refresh: `None` is a failed read (R10).
type Read = Option<BTreeMap<usize, Vec<usize>>>;

#[derive(Debug, Clone)]
enum Op {
    Reserve(Vec<usize>),
    RegisterSecondary {
        model: usize,
        chutes: usize,
    },
    /// An admin batch (R13 → R7): model → NEAR indices (possibly empty).
    Merge(BTreeMap<usize, Vec<usize>>),
    /// The periodic complete refresh (R7–R12).
    Refresh {
        discovery: Read,
        external: Read,
        catalog: Option<BTreeMap<usize, (bool, u64)>>,
    },
    Unregister(usize),
    SetCatalogRow {
        model: usize,
        active: bool,
        price: u64,
    },
    SetActive {
        model: usize,
        active: bool,
    },
    SeedCatalogRow(usize),
    /// R21 as the registry keeps it: `n` retryable failures of a provider.
    Fail {
        provider: String,
        n: u32,
    },
    Succeed(String),
}

/// The registry as SPEC §4 describes it, kept as plain per-source maps of
/// provider ids (R10 speaks of "the mappings of a source").
#[derive(Debug, Default)]
struct Model {
    /// What discovery or an admin batch last said each model's NEAR
    /// providers are.
    near: BTreeMap<String, Vec<String>>,
    /// R4: each pinned id's pinned providers, in registration order.
    pinned: BTreeMap<String, Vec<String>>,
    /// R12: external rows, loaded only for ids neither reserved nor pinned.
    external: BTreeMap<String, Vec<String>>,
    reserved: BTreeSet<String>,
    catalog: BTreeMap<String, CatalogRow>,
    /// R21: consecutive failures of providers that back some model.
    failures: BTreeMap<String, u32>,
}

impl Model {
    fn protected(&self, m: &str) -> bool {
        self.reserved.contains(m) || self.pinned.contains_key(m)
    }

    /// A model's list: `[NEAR…] + [pinned…]` (R7), then its external rows
    /// unless the id is protected (R5/R12); one entry per provider; stably
    /// ordered by tier (R17's static half, as the snapshot records it).
    /// Empty means unmapped (R9: 404, not a dead mapping).
    fn list(&self, m: &str, facts: &BTreeMap<String, (Tier, Vec<String>)>) -> Vec<String> {
        let none = Vec::new();
        let mut out: Vec<String> = Vec::new();
        let external = if self.protected(m) {
            &none
        } else {
            self.external.get(m).unwrap_or(&none)
        };
        for p in self
            .near
            .get(m)
            .unwrap_or(&none)
            .iter()
            .chain(self.pinned.get(m).unwrap_or(&none))
            .chain(external)
        {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out.sort_by_key(|p| facts[p].0);
        out
    }

    fn lists(
        &self,
        facts: &BTreeMap<String, (Tier, Vec<String>)>,
    ) -> BTreeMap<String, Vec<String>> {
        let ids: BTreeSet<&String> = self
            .near
            .keys()
            .chain(self.pinned.keys())
            .chain(self.external.keys())
            .collect();
        ids.into_iter()
            .map(|m| (m.clone(), self.list(m, facts)))
            .filter(|(_, l)| !l.is_empty())
            .collect()
    }

    /// R8/R9: a provider that backs no model any more leaves with its
    /// counter; one still backing another model keeps it.
    fn forget_orphans(&mut self, facts: &BTreeMap<String, (Tier, Vec<String>)>) {
        let backing: BTreeSet<String> = self.lists(facts).into_values().flatten().collect();
        self.failures.retain(|p, _| backing.contains(p));
    }

    fn apply(&mut self, op: &Op, facts: &BTreeMap<String, (Tier, Vec<String>)>, u: &Universe) {
        let near_ids = |picks: &[usize]| -> Vec<String> {
            picks.iter().map(|&i| u.near[i].id().to_string()).collect()
        };
        match op {
            Op::Reserve(ms) => {
                for &m in ms {
                    // R5: a reserved id never holds a NonAttested provider.
                    self.reserved.insert(MODELS[m].to_string());
                    self.external.remove(MODELS[m]);
                }
            }
            Op::RegisterSecondary { model, chutes } => {
                let m = MODELS[*model].to_string();
                let id = u.chutes[*chutes].id().to_string();
                // R4: pushed, never replacing, never stacked; pinned (R12).
                let pins = self.pinned.entry(m.clone()).or_default();
                if !pins.contains(&id) {
                    pins.push(id);
                }
                self.external.remove(&m);
            }
            Op::Merge(batch) => {
                // R7/R13: only the batch's models change; nothing is pruned.
                for (m, picks) in batch {
                    let m = MODELS[*m].to_string();
                    if picks.is_empty() {
                        self.near.remove(&m);
                    } else {
                        self.near.insert(m, near_ids(picks));
                    }
                }
            }
            Op::Refresh {
                discovery,
                external,
                catalog,
            } => {
                // R10: a failed read keeps that source's mappings. R8/R11:
                // the complete set (possibly empty) replaces the NEAR
                // mappings, so a pinned id it lacks is pinned-only and any
                // other id it lacks is gone (R9).
                if let Some(set) = discovery {
                    self.near = set
                        .iter()
                        .filter(|(_, picks)| !picks.is_empty())
                        .map(|(m, picks)| (MODELS[*m].to_string(), near_ids(picks)))
                        .collect();
                }
                if let Some(rows) = external {
                    self.external = rows
                        .iter()
                        .filter(|(m, picks)| !picks.is_empty() && !self.protected(MODELS[**m]))
                        .map(|(m, picks)| {
                            let ids = picks
                                .iter()
                                .map(|&i| u.external[i].id().to_string())
                                .collect();
                            (MODELS[*m].to_string(), ids)
                        })
                        .collect();
                }
                if let Some(rows) = catalog {
                    self.catalog = rows
                        .iter()
                        .map(|(m, (active, price))| {
                            let row = CatalogRow {
                                active: *active,
                                price: *price,
                                ..Default::default()
                            };
                            (MODELS[*m].to_string(), row)
                        })
                        .collect();
                }
            }
            Op::Unregister(m) => {
                // R14: every mapping, the pin and the reservation go; the
                // catalog row is the admin's.
                let m = MODELS[*m];
                self.near.remove(m);
                self.pinned.remove(m);
                self.external.remove(m);
                self.reserved.remove(m);
            }
            Op::SetCatalogRow {
                model,
                active,
                price,
            } => {
                let row = CatalogRow {
                    active: *active,
                    price: *price,
                    ..Default::default()
                };
                self.catalog.insert(MODELS[*model].to_string(), row);
            }
            Op::SetActive { model, active } => {
                if let Some(row) = self.catalog.get_mut(MODELS[*model]) {
                    row.active = *active;
                }
            }
            Op::SeedCatalogRow(m) => {
                // R6: an existing row is kept verbatim; else inactive, price 0.
                self.catalog
                    .entry(MODELS[*m].to_string())
                    .or_insert(CatalogRow {
                        active: false,
                        price: 0,
                        ..Default::default()
                    });
            }
            Op::Fail { provider, n } => {
                if let Some(c) = self.failures.get_mut(provider) {
                    *c += n;
                }
            }
            Op::Succeed(provider) => {
                if let Some(c) = self.failures.get_mut(provider) {
                    *c = 0;
                }
            }
        }
        self.forget_orphans(facts);
        for p in self.lists(facts).into_values().flatten() {
            self.failures.entry(p).or_insert(0);
        }
    }

    /// What the registry's view must read.
    fn view(&self, facts: &BTreeMap<String, (Tier, Vec<String>)>) -> RegistryView {
        let lists = self.lists(facts);
        let mut pubkeys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for p in lists.values().flatten() {
            let (tier, keys) = &facts[p];
            // R4/R16: only NEAR keys (from an attestation report) route.
            if *tier == Tier::Near {
                for k in keys {
                    pubkeys.entry(k.clone()).or_default().insert(p.clone());
                }
            }
        }
        RegistryView {
            models: lists
                .into_iter()
                .map(|(m, l)| {
                    let views = l
                        .into_iter()
                        .map(|p| {
                            let n = self.failures[&p];
                            ProviderView {
                                id: ProviderId::new(&p),
                                tier: facts[&p].0,
                                consecutive_failures: n,
                                // R17/R21: 10 or more consecutive failures.
                                demoted: n >= 10,
                                context_window: None,
                                // No stream is served in these sequences.
                                ttft: Default::default(),
                                latency_demoted: false,
                            }
                        })
                        .collect();
                    (m, views)
                })
                .collect(),
            pinned: self
                .pinned
                .iter()
                .map(|(m, ps)| (m.clone(), ps.iter().map(ProviderId::new).collect()))
                .collect(),
            reserved: self.reserved.clone(),
            pubkeys: pubkeys
                .into_iter()
                .map(|(k, ps)| (k, ps.iter().map(ProviderId::new).collect()))
                .collect(),
            catalog: self.catalog.clone(),
        }
    }
}

/// Runs `op` on the real registry.
fn apply(reg: &Registry, op: &Op, u: &Universe) {
    match op {
        Op::Reserve(ms) => reg.reserve(ms.iter().map(|&m| MODELS[m])),
        Op::RegisterSecondary { model, chutes } => {
            reg.register_secondary(MODELS[*model], u.chutes[*chutes].clone())
        }
        Op::Merge(batch) => reg.merge_discovered(Discovered(Universe::rows(&u.near, batch))),
        Op::Refresh {
            discovery,
            external,
            catalog,
        } => {
            let discovery = match discovery {
                Some(set) => SourceRead::Ok(Discovered(Universe::rows(&u.near, set))),
                None => SourceRead::Failed("discovery unreachable".into()),
            };
            let external = match external {
                Some(rows) => SourceRead::Ok(External(Universe::rows(&u.external, rows))),
                None => SourceRead::Failed("external source unreachable".into()),
            };
            let catalog = catalog.as_ref().map(|rows| {
                rows.iter()
                    .map(|(m, (active, price))| {
                        let row = CatalogRow {
                            active: *active,
                            price: *price,
                            ..Default::default()
                        };
                        (MODELS[*m].to_string(), row)
                    })
                    .collect()
            });
            reg.refresh_with_catalog(discovery, external, catalog);
        }
        Op::Unregister(m) => reg.unregister(MODELS[*m]),
        Op::SetCatalogRow {
            model,
            active,
            price,
        } => reg.set_catalog_rows([(
            MODELS[*model],
            CatalogRow {
                active: *active,
                price: *price,
                ..Default::default()
            },
        )]),
        Op::SetActive { model, active } => {
            reg.set_active(MODELS[*model], *active);
        }
        Op::SeedCatalogRow(m) => {
            reg.seed_catalog_row_if_absent(MODELS[*m]);
        }
        Op::Fail { provider, n } => {
            if let Some(h) = reg.load().health.get(&ProviderId::new(provider)) {
                for _ in 0..*n {
                    h.record_failure();
                }
            }
        }
        Op::Succeed(provider) => {
            if let Some(h) = reg.load().health.get(&ProviderId::new(provider)) {
                h.record_success();
            }
        }
    }
}

fn model_idx() -> impl Strategy<Value = usize> {
    0..MODELS.len()
}

/// Model → indices into a provider list of `n` (lists may repeat a provider
/// or be empty: both are things a source can say).
fn rows(n: usize) -> impl Strategy<Value = BTreeMap<usize, Vec<usize>>> {
    prop::collection::btree_map(model_idx(), prop::collection::vec(0..n, 0..3), 0..4)
}

fn read(n: usize) -> impl Strategy<Value = Read> {
    // Mostly complete reads (some empty: R11), sometimes a failure (R10).
    prop_oneof![4 => rows(n).prop_map(Some), 1 => Just(None)]
}

fn provider_id() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "near-1",
        "near-2",
        "near-3",
        "near-4",
        "chutes:a",
        "chutes:b",
        "external:x",
    ])
    .prop_map(str::to_string)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => prop::collection::vec(model_idx(), 1..3).prop_map(Op::Reserve),
        3 => (model_idx(), 0..2usize)
            .prop_map(|(model, chutes)| Op::RegisterSecondary { model, chutes }),
        3 => rows(4).prop_map(Op::Merge),
        4 => (
            read(4),
            read(2),
            prop::option::of(prop::collection::btree_map(
                model_idx(),
                (any::<bool>(), 0..3u64),
                0..4
            ))
        )
            .prop_map(|(discovery, external, catalog)| Op::Refresh {
                discovery,
                external,
                catalog,
            }),
        1 => model_idx().prop_map(Op::Unregister),
        1 => (model_idx(), any::<bool>(), 0..3u64)
            .prop_map(|(model, active, price)| Op::SetCatalogRow { model, active, price }),
        1 => (model_idx(), any::<bool>()).prop_map(|(model, active)| Op::SetActive { model, active }),
        1 => model_idx().prop_map(Op::SeedCatalogRow),
        3 => (provider_id(), 1..11u32).prop_map(|(provider, n)| Op::Fail { provider, n }),
        1 => provider_id().prop_map(Op::Succeed),
    ]
}

/// Runs `ops` on both and compares after each; the error names the step,
/// the operation and the first part that differs.
fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let u = Universe::new();
    let facts = u.facts();
    let reg = Registry::new();
    let mut model = Model::default();
    for (i, op) in ops.iter().enumerate() {
        apply(&reg, op, &u);
        model.apply(op, &facts, &u);
        let got = reg.view();
        let want = model.view(&facts);
        let step = || format!("after step {i}: {op:?}");
        prop_assert_eq!(&got.models, &want.models, "provider lists, {}", step());
        prop_assert_eq!(&got.pinned, &want.pinned, "pinned ids, {}", step());
        prop_assert_eq!(&got.reserved, &want.reserved, "reserved ids, {}", step());
        prop_assert_eq!(&got.pubkeys, &want.pubkeys, "pubkey map, {}", step());
        prop_assert_eq!(&got.catalog, &want.catalog, "catalog, {}", step());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// R4–R14 (and R21's counters): any sequence of reserve, register
    /// secondary, admin batch, complete / empty / failed refresh, external
    /// load, unregister and catalog edits leaves the registry exactly where
    /// the spec's model says, after every operation.
    #[test]
    fn r4_to_r14_registry_matches_the_spec_model_after_every_operation(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        check(&ops)?;
    }

    /// R5/R12/R14 in the order bootstrap runs them (reserve and register
    /// first), then refreshes and admin batches: reserved and pinned ids
    /// never take external rows, and an unregistered id can be loaded again.
    #[test]
    fn r5_r12_r14_bootstrap_then_loads_match_the_spec_model(
        reserve in prop::collection::vec(model_idx(), 1..3),
        pins in prop::collection::vec((model_idx(), 0..2usize), 0..3),
        ops in prop::collection::vec(op(), 1..25)
    ) {
        let mut all = vec![Op::Reserve(reserve)];
        all.extend(pins.into_iter().map(|(model, chutes)| Op::RegisterSecondary { model, chutes }));
        all.extend(ops);
        check(&all)?;
    }
}

/// The model itself is not vacuous: a shared NEAR provider pruned from a
/// pinned id keeps its key and counter because it still backs another
/// model (R8), and loses both when it backs none (R9).
#[test]
fn r8_r9_model_keeps_shared_provider_state_and_drops_orphans() {
    let near = |m: usize, picks: &[usize]| (m, picks.to_vec());
    let ops = vec![
        Op::RegisterSecondary {
            model: 0,
            chutes: 0,
        },
        Op::Refresh {
            discovery: Some([near(0, &[2]), near(1, &[2])].into_iter().collect()),
            external: Some(BTreeMap::new()),
            catalog: None,
        },
        Op::Fail {
            provider: "near-3".into(),
            n: 3,
        },
        // m0 absent: pruned to pinned-only; near-3 still backs m1.
        Op::Refresh {
            discovery: Some([near(1, &[2])].into_iter().collect()),
            external: Some(BTreeMap::new()),
            catalog: None,
        },
    ];
    check(&ops).unwrap();
    let u = Universe::new();
    let facts = u.facts();
    let mut model = Model::default();
    for op in &ops {
        model.apply(op, &facts, &u);
    }
    let view = model.view(&facts);
    assert_eq!(view.models["m0"].len(), 1, "pinned-only");
    assert_eq!(view.models["m1"][0].consecutive_failures, 3);
    assert_eq!(view.pubkeys["key-c"], vec![ProviderId::new("near-3")]);
    // Nothing discovered: near-3 backs nothing, its key and counter go.
    let empty = Op::Refresh {
        discovery: Some(BTreeMap::new()),
        external: None,
        catalog: None,
    };
    model.apply(&empty, &facts, &u);
    let view = model.view(&facts);
    assert!(!view.pubkeys.contains_key("key-c"));
    assert!(!model.failures.contains_key("near-3"));
    let mut all = ops;
    all.push(empty);
    check(&all).unwrap();
}
