//! The model's registry: R4–R14 and R21's bookkeeping, as plain maps.

use std::collections::{BTreeMap, BTreeSet};

use tiersim_engine::catalog::{CatalogRow, ExternalRow, ProviderType};
use tiersim_engine::config::EngineConfig;
use tiersim_engine::registry::RegistryView;
use tiersim_engine::Tier;

use super::Facts;
use crate::fault::{Fault, HostEvent, RequestKind};
use crate::scenario::format::PatchRow;

/// Consecutive retryable failures that demote a provider (R17, R21).
pub const DEMOTED_AT: u32 = 10;

/// One provider as the model knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prov {
    pub id: String,
    pub tier: Tier,
    pub kind: Kind,
    /// SPEC-parity R40: its declared context window (filled in by
    /// [`Registry::list`] from [`Registry::windows`]).
    pub window: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A NEAR backend on `host`, with its signing key.
    Near { host: String, key: String },
    /// Chutes, routed under its canonical id, naming `slug` upstream.
    Chutes { slug: String },
    /// A plaintext provider on `host`.
    External { host: String },
}

impl Prov {
    pub fn streams(&self, chutes_streaming: bool) -> bool {
        match self.kind {
            Kind::Chutes { .. } => chutes_streaming,
            _ => true,
        }
    }
    pub fn client_e2ee(&self) -> bool {
        !matches!(self.kind, Kind::Chutes { .. })
    }
    /// SPEC-parity R44: the capacity rank without overflow (undeclared
    /// after every declared window).
    pub fn capacity_rank(&self) -> u64 {
        self.window.map_or(1 << 32, u64::from)
    }
}

/// The registry as SPEC says it must be.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// R7: the NEAR providers discovery (or the admin) gave each model.
    pub near: BTreeMap<String, Vec<Prov>>,
    /// R4: pinned providers; a key here means the id is pinned.
    pub pinned: BTreeMap<String, Vec<Prov>>,
    /// R12: plaintext rows.
    pub external: BTreeMap<String, Vec<Prov>>,
    /// R5.
    pub reserved: BTreeSet<String>,
    /// R6/R13: id → (active, price).
    pub catalog: BTreeMap<String, (bool, u64)>,
    /// SPEC-parity R40: id → the context length its catalog row declares
    /// (what `/v1/models` shows).
    pub contexts: BTreeMap<String, u32>,
    /// R21: provider id → consecutive retryable failures.
    pub health: BTreeMap<String, u32>,
    /// R46: provider id → its TTFT state, as far as the model can tell.
    pub ttft: BTreeMap<String, super::latency::Range>,
    /// R17: model id → (plain turn, pubkey turn).
    pub turns: BTreeMap<String, (u64, u64)>,
    /// NEAR providers already attested, by inference URL (a backend is
    /// attested once per router boot).
    pub attested: BTreeMap<String, Prov>,
    /// A refresh has started (the catalog was listed) but not finished.
    pub pending: bool,
    pub chutes_streaming: bool,
    /// R60/R61: each Chutes provider's instance pool and counter, by id
    /// (built once per router boot, kept across refreshes).
    pub pools: BTreeMap<String, super::chutes::Pool>,
    canonical: Vec<String>,
    /// Ids unregistered since the router booted (R14 clears their
    /// reservation).
    unregistered: BTreeSet<String>,
    /// SPEC-parity R40: provider id → its declared window. A NEAR
    /// provider's is the last row that named it (a row without one never
    /// clears it); Chutes' is its `@n`. Per router boot.
    pub windows: BTreeMap<String, u32>,
}

/// Whether the fault a host acted out kept a listing from arriving whole.
fn breaks_answer(fault: &Option<Fault>) -> bool {
    match fault {
        Some(Fault::HttpStatus { .. })
        | Some(Fault::ModelNotFound)
        | Some(Fault::ResetBeforeBody)
        | Some(Fault::ResetAfterChunks { .. })
        | Some(Fault::CutStreamAfter { .. }) => true,
        Some(Fault::LatencyMs { ms }) => *ms >= super::request::DEADLINE_MS,
        _ => false,
    }
}

/// Whether the external read at `at` is still waiting for its answer: the
/// catalog records a listing when it builds the answer, after any delay a
/// fault scripted, and the router applies the refresh only once the answer
/// is in. Not pending once the listing is recorded, once a fault broke the
/// read, or once a later catalog read or router boot shows the read ended
/// without an answer (the catalog went down meanwhile).
fn answer_pending(events: &[HostEvent], at: usize, upto: usize) -> bool {
    let HostEvent::Request { fault, .. } = &events[at] else {
        return false;
    };
    !breaks_answer(fault)
        && !events[at + 1..upto].iter().any(|e| match e {
            HostEvent::Listing {
                kind: RequestKind::External,
                ..
            }
            | HostEvent::RouterBoot => true,
            HostEvent::Request { host, kind, .. } => {
                host == crate::world::CATALOG
                    && matches!(kind, RequestKind::External | RequestKind::Catalog)
            }
            _ => false,
        })
}

impl Registry {
    /// R5 then R4 then R6: what a router holds after booting, before its first
    /// refresh (the refresh itself comes from the host events).
    pub fn boot(facts: &Facts) -> Registry {
        let mut reg = Registry::default();
        let Ok(config) = crate::world::engine_config(&facts.scenario) else {
            return reg;
        };
        reg.chutes_streaming = facts.scenario.config.chutes_streaming;
        reg.configure(facts, &config);
        reg
    }

    fn configure(&mut self, facts: &Facts, config: &EngineConfig) {
        for e in &config.chutes_models {
            self.reserved.insert(e.canonical_id.clone());
            self.canonical.push(e.canonical_id.clone());
        }
        // R4: a Chutes provider builds when the key is set and the world has
        // a Chutes gateway to reach.
        let builds = facts.scenario.config.chutes_api_key && !facts.scenario.chutes.is_empty();
        if builds {
            let fails = &facts.scenario.config.chutes_build_fails;
            for e in &config.chutes_models {
                if fails.iter().any(|id| *id.get_ref() == e.canonical_id) {
                    continue;
                }
                let p = Prov {
                    id: format!("chutes:{}", e.chute_slug),
                    tier: Tier::Attested3p,
                    kind: Kind::Chutes {
                        slug: e.chute_slug.clone(),
                    },
                    window: None,
                };
                // R41: the slug's `@n`.
                if let Some(w) = e.context_window {
                    self.windows.insert(p.id.clone(), w);
                }
                let list = self.pinned.entry(e.canonical_id.clone()).or_default();
                if !list.iter().any(|q| q.id == p.id) {
                    list.push(p);
                }
            }
        }
        self.seed_catalog();
        self.rebuilt();
    }

    /// R6: Chutes-only canonical ids get an inactive zero-price row.
    fn seed_catalog(&mut self) {
        for id in &self.canonical {
            self.catalog.entry(id.clone()).or_insert((false, 0));
        }
    }

    /// R5/R12: protected ids hold nothing plaintext.
    fn fail_closed(&mut self) {
        let protected: BTreeSet<String> = self
            .reserved
            .iter()
            .cloned()
            .chain(self.pinned.keys().cloned())
            .collect();
        self.external
            .retain(|m, ps| !protected.contains(m) && !ps.is_empty());
        for (m, ps) in self.near.iter_mut() {
            if protected.contains(m) {
                ps.retain(|p| p.tier != Tier::NonAttested);
            }
        }
        self.near.retain(|_, ps| !ps.is_empty());
        for ps in self.pinned.values_mut() {
            ps.retain(|p| p.tier != Tier::NonAttested);
        }
        self.pinned.retain(|_, ps| !ps.is_empty());
    }

    /// After any write: derived state (counters) of what no longer exists goes.
    fn rebuilt(&mut self) {
        self.fail_closed();
        let lists = self.lists();
        let live: BTreeSet<String> = lists.values().flatten().map(|p| p.id.clone()).collect();
        self.health.retain(|id, _| live.contains(id));
        self.ttft.retain(|id, _| live.contains(id));
        self.turns.retain(|m, _| lists.contains_key(m));
    }

    /// R7: each model's list `[NEAR…] + [pinned…] (+ external)`, duplicates
    /// dropped (first wins), stably ordered by tier, then (SPEC-parity R44)
    /// by declared window, smallest first, undeclared last.
    pub fn list(&self, model: &str) -> Vec<Prov> {
        let mut out: Vec<Prov> = Vec::new();
        let sources = [&self.near, &self.pinned, &self.external];
        for p in sources.iter().filter_map(|s| s.get(model)).flatten() {
            if !out.iter().any(|q| q.id == p.id) {
                let mut p = p.clone();
                p.window = self.windows.get(&p.id).copied();
                out.push(p);
            }
        }
        out.sort_by_key(|p| (p.tier, p.capacity_rank()));
        out
    }

    pub fn lists(&self) -> BTreeMap<String, Vec<Prov>> {
        let ids: BTreeSet<&String> = self
            .near
            .keys()
            .chain(self.pinned.keys())
            .chain(self.external.keys())
            .collect();
        ids.into_iter()
            .map(|m| (m.clone(), self.list(m)))
            .filter(|(_, l)| !l.is_empty())
            .collect()
    }

    /// The canonical ids the configuration reserves (R5), minus the ones
    /// unregistered since the router booted (R14).
    pub fn configured(&self) -> BTreeSet<String> {
        self.canonical
            .iter()
            .filter(|m| !self.unregistered.contains(*m))
            .cloned()
            .collect()
    }

    pub fn failures(&self, id: &str) -> u32 {
        self.health.get(id).copied().unwrap_or(0)
    }

    /// R14.
    pub fn unregister(&mut self, model: &str) {
        self.near.remove(model);
        self.pinned.remove(model);
        self.external.remove(model);
        self.reserved.remove(model);
        self.unregistered.insert(model.to_string());
        self.rebuilt();
    }

    /// NEAR providers for catalog rows with an URL, attested once per URL:
    /// the first attestation request the backend served after `from` (and
    /// before `to`) decides; one it never saw (partition, crash) or failed
    /// leaves the backend out of this cycle.
    fn discover(
        &mut self,
        facts: &Facts,
        rows: &[CatalogRow],
        events: &[HostEvent],
        used: &mut BTreeSet<usize>,
        (from, to): (usize, usize),
    ) -> BTreeMap<String, Vec<Prov>> {
        let mut out: BTreeMap<String, Vec<Prov>> = BTreeMap::new();
        for row in rows {
            // Only a vLLM row's URL is a NEAR backend.
            let Some(url) = row
                .inference_url
                .as_ref()
                .filter(|_| row.provider_type == ProviderType::Vllm)
            else {
                continue;
            };
            // SPEC-parity R40: the base URL with the row's window, or with
            // a valid long-context block the base window, then the long
            // URL with the long window.
            let mut tiers = vec![(url.clone(), row.context_length)];
            if let Some((long_url, base, long)) = long_tier(row) {
                tiers[0].1 = Some(base);
                tiers.push((long_url, Some(long)));
            }
            for (url, window) in tiers {
                let Some(p) = self.attest(facts, &url, events, used, (from, to)) else {
                    continue;
                };
                if let Some(w) = window {
                    self.windows.insert(p.id.clone(), w);
                }
                out.entry(row.id.clone()).or_default().push(p);
            }
        }
        out
    }

    /// The NEAR provider of `url`: attested once per boot, by the first
    /// attestation request its backend served in `events[from..to]`.
    fn attest(
        &mut self,
        facts: &Facts,
        url: &String,
        events: &[HostEvent],
        used: &mut BTreeSet<usize>,
        (from, to): (usize, usize),
    ) -> Option<Prov> {
        if let Some(p) = self.attested.get(url) {
            return Some(p.clone());
        }
        let host = Facts::host_of(url);
        let i = (from..to).find(|i| {
            !used.contains(i)
                && matches!(&events[*i], HostEvent::Request { host: h, kind: RequestKind::Attestation, .. } if h == host)
        })?;
        used.insert(i);
        let HostEvent::Request { fault, .. } = &events[i] else {
            return None;
        };
        if breaks_answer(fault) {
            return None;
        }
        let key = facts.near_keys.get(host)?;
        let p = Prov {
            id: Facts::near_id(url),
            tier: Tier::Near,
            kind: Kind::Near {
                host: host.to_string(),
                key: key.clone(),
            },
            window: None,
        };
        self.attested.insert(url.clone(), p.clone());
        Some(p)
    }

    /// Applies every refresh whose host events are complete in
    /// `events[from..upto]`; returns the new cursor (at the start of a
    /// refresh still in progress, which sets `pending`).
    pub fn absorb(
        &mut self,
        facts: &Facts,
        events: &[HostEvent],
        from: usize,
        upto: usize,
    ) -> usize {
        let mut i = from;
        self.pending = false;
        while i < upto {
            if events[i] == HostEvent::RouterBoot {
                *self = Registry::boot(facts);
                i += 1;
                continue;
            }
            let catalog_read = match &events[i] {
                HostEvent::Request { kind, host, .. } if host == crate::world::CATALOG => {
                    Some(*kind)
                }
                _ => None,
            };
            match catalog_read {
                Some(RequestKind::Catalog) => {}
                Some(RequestKind::External) => {
                    // An external read with no catalog read before it: the
                    // refresh's catalog read never reached the catalog (down,
                    // partitioned). R10 keeps the catalog's mappings; the
                    // external rows still apply.
                    if answer_pending(events, i, upto) {
                        self.pending = true;
                        return i;
                    }
                    self.refresh(facts, events, None, Some(i), upto);
                    i += 1;
                    continue;
                }
                _ => {
                    i += 1;
                    continue;
                }
            }
            // The refresh ends with the external listing request. A router
            // boot first: it died mid-refresh (nothing applied). Another
            // catalog listing first: its external read never reached the
            // catalog (a failed read, R10).
            let next = (i + 1..upto).find(|j| match &events[*j] {
                HostEvent::RouterBoot => true,
                HostEvent::Request { host, kind, .. } => {
                    host == crate::world::CATALOG
                        && matches!(kind, RequestKind::External | RequestKind::Catalog)
                }
                _ => false,
            });
            let Some(end) = next else {
                self.pending = true;
                return i;
            };
            match &events[end] {
                HostEvent::RouterBoot => {
                    i = end;
                    continue;
                }
                HostEvent::Request {
                    kind: RequestKind::Catalog,
                    ..
                } => {
                    self.refresh(facts, events, Some(i), None, end);
                    i = end;
                    continue;
                }
                _ => {}
            }
            if answer_pending(events, end, upto) {
                self.pending = true;
                return i;
            }
            self.refresh(facts, events, Some(i), Some(end), upto);
            i = end + 1;
        }
        upto
    }

    /// R7–R12: one complete refresh, its catalog request at `catalog` and
    /// its external request at `external` (`None`: that read never reached
    /// the catalog).
    fn refresh(
        &mut self,
        facts: &Facts,
        events: &[HostEvent],
        catalog: Option<usize>,
        external: Option<usize>,
        upto: usize,
    ) {
        let end = external.unwrap_or(upto);
        let listing = |at: usize, kind: RequestKind, to: usize| -> Option<usize> {
            let HostEvent::Request { fault, .. } = &events[at] else {
                return None;
            };
            if breaks_answer(fault) {
                return None;
            }
            (at + 1..to)
                .find(|j| matches!(&events[*j], HostEvent::Listing { kind: k, .. } if *k == kind))
        };
        let mut used = BTreeSet::new();
        let discovered = catalog.and_then(|start| {
            let j = listing(start, RequestKind::Catalog, end)?;
            let HostEvent::Listing { models, .. } = &events[j] else {
                unreachable!("found a listing")
            };
            let rows = models.clone();
            let near = self.discover(facts, &rows, events, &mut used, (start, end));
            Some((rows, near))
        });
        let external = external
            .and_then(|at| listing(at, RequestKind::External, upto))
            .map(|j| {
                let HostEvent::Listing { external, .. } = &events[j] else {
                    unreachable!("found a listing")
                };
                external.clone()
            });
        // R10: a failed source keeps its mappings; R11: an empty one is a
        // complete empty set.
        if let Some((rows, near)) = discovered {
            self.near = near;
            self.catalog = rows
                .iter()
                .map(|r| (r.id.clone(), (r.active, r.price)))
                .collect();
            self.contexts = rows
                .iter()
                .map(|r| (r.id.clone(), r.context_length))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .filter_map(|(id, n)| Some((id, n?)))
                .collect();
        }
        if let Some(rows) = external {
            self.external = external_providers(facts, &rows);
        }
        self.rebuilt();
        self.seed_catalog();
    }

    /// R13: the admin's partial batch, applied when the catalog accepted it
    /// (the catalog's answer in `window` carries the rows).
    pub fn admin_patch(&mut self, facts: &Facts, batch: &[PatchRow], window: &[HostEvent]) {
        let Some(at) = window.iter().position(|e| {
            matches!(e, HostEvent::Request { kind: RequestKind::CatalogPatch, host, .. } if host == crate::world::CATALOG)
        }) else {
            return;
        };
        let HostEvent::Request { fault, .. } = &window[at] else {
            return;
        };
        if breaks_answer(fault) {
            return;
        }
        let Some(rows) = window[at..].iter().find_map(|e| match e {
            HostEvent::Listing {
                kind: RequestKind::CatalogPatch,
                models,
                ..
            } => Some(models.clone()),
            _ => None,
        }) else {
            return;
        };
        let mut url_rows = Vec::new();
        let mut rebuilt = BTreeSet::new();
        for r in batch {
            let Some(row) = rows.iter().find(|x| x.id == r.id) else {
                continue;
            };
            self.catalog.insert(r.id.clone(), (row.active, row.price));
            match row.context_length {
                Some(n) => self.contexts.insert(r.id.clone(), n),
                None => self.contexts.remove(&r.id),
            };
            // SPEC-parity R40: the URL, the context length or the
            // long-context block re-register the id from all its rows.
            let touched =
                r.inference_url.is_some() || r.context_length.is_some() || r.long_context.is_some();
            if touched && rebuilt.insert(r.id.clone()) {
                url_rows.extend(rows.iter().filter(|x| x.id == r.id).cloned());
            }
        }
        self.rebuilt();
        let mut used = BTreeSet::new();
        let mut found = self.discover(facts, &url_rows, window, &mut used, (at, window.len()));
        for id in &rebuilt {
            found.entry(id.clone()).or_default();
        }
        for (model, near) in found {
            if near.is_empty() {
                self.near.remove(&model);
            } else {
                self.near.insert(model, near);
            }
        }
        self.rebuilt();
    }

    /// The differences between this registry and the engine's `view`.
    pub fn diff(&self, facts: &Facts, view: &RegistryView) -> Vec<String> {
        let _ = facts;
        let mut out = Vec::new();
        let want = self.lists();
        let got = super::lists(view);
        let ids: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
        for m in ids {
            let w: Vec<String> = want
                .get(m)
                .map(|l| l.iter().map(|p| p.id.clone()).collect())
                .unwrap_or_default();
            let g = got.get(m).cloned().unwrap_or_default();
            if w != g {
                out.push(format!("providers of {m}: model {w:?}, engine {g:?}"));
            }
        }
        // SPEC-parity R40: every provider's declared window.
        for (m, ps) in &view.models {
            for p in ps {
                let Some(q) = want
                    .get(m)
                    .and_then(|l| l.iter().find(|q| q.id == p.id.as_str()))
                else {
                    continue;
                };
                if q.window != p.context_window {
                    out.push(format!(
                        "window of {} (in {m}): model {:?}, engine {:?}",
                        p.id, q.window, p.context_window
                    ));
                }
            }
        }
        for (m, ps) in &view.models {
            for p in ps {
                // R46: the sample count in the model's range, the average
                // within its bounds (a hair of float slack).
                let t = self.ttft.get(p.id.as_str()).copied().unwrap_or_default();
                let (n, ema) = (p.ttft.samples, p.ttft.ema_ms);
                let in_range = (t.samples_lo..=t.samples_hi).contains(&n)
                    && (n == 0 || (ema >= t.ema_lo - 1e-6 && ema <= t.ema_hi + 1e-6));
                if !in_range {
                    out.push(format!(
                        "TTFT of {} (in {m}): model {}..={} samples, average {:.1}..={:.1} ms; \
                         engine {n} samples, {ema:.1} ms",
                        p.id, t.samples_lo, t.samples_hi, t.ema_lo, t.ema_hi
                    ));
                }
                let want_n = self.failures(p.id.as_str());
                if want
                    .get(m)
                    .is_some_and(|l| l.iter().any(|q| q.id == p.id.as_str()))
                    && (p.consecutive_failures != want_n || p.demoted != (want_n >= DEMOTED_AT))
                {
                    out.push(format!(
                        "health of {} (in {m}): model {want_n} failures{}, engine {}{}",
                        p.id,
                        if want_n >= DEMOTED_AT {
                            " (demoted)"
                        } else {
                            ""
                        },
                        p.consecutive_failures,
                        if p.demoted { " (demoted)" } else { "" },
                    ));
                }
            }
        }
        let pinned: BTreeMap<String, Vec<String>> = self
            .pinned
            .iter()
            .map(|(m, ps)| (m.clone(), ps.iter().map(|p| p.id.clone()).collect()))
            .collect();
        let vpinned: BTreeMap<String, Vec<String>> = view
            .pinned
            .iter()
            .map(|(m, ps)| (m.clone(), ps.iter().map(|p| p.to_string()).collect()))
            .collect();
        if pinned != vpinned {
            out.push(format!("pinned: model {pinned:?}, engine {vpinned:?}"));
        }
        if self.reserved != view.reserved {
            out.push(format!(
                "reserved: model {:?}, engine {:?}",
                self.reserved, view.reserved
            ));
        }
        let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for p in want.values().flatten() {
            if let Kind::Near { key, .. } = &p.kind {
                keys.entry(key.clone()).or_default().insert(p.id.clone());
            }
        }
        let vkeys: BTreeMap<String, BTreeSet<String>> = view
            .pubkeys
            .iter()
            .map(|(k, ids)| (k.clone(), ids.iter().map(|p| p.to_string()).collect()))
            .collect();
        if keys != vkeys {
            out.push(format!("pubkey map: model {keys:?}, engine {vkeys:?}"));
        }
        let vcat: BTreeMap<String, (bool, u64)> = view
            .catalog
            .iter()
            .map(|(m, r)| (m.clone(), (r.active, r.price)))
            .collect();
        let vcontexts: BTreeMap<String, u32> = view
            .catalog
            .iter()
            .filter_map(|(m, r)| Some((m.clone(), r.context_length?)))
            .collect();
        if self.contexts != vcontexts {
            out.push(format!(
                "catalog context lengths: model {:?}, engine {vcontexts:?}",
                self.contexts
            ));
        }
        if self.catalog != vcat {
            out.push(format!(
                "catalog: model {:?}, engine {vcat:?}",
                self.catalog
            ));
        }
        out
    }
}

/// External rows as providers (`external:<name>`), by model: a row loads
/// only when the router has its provider's API key and speaks its kind.
fn external_providers(facts: &Facts, rows: &[ExternalRow]) -> BTreeMap<String, Vec<Prov>> {
    let mut out: BTreeMap<String, Vec<Prov>> = BTreeMap::new();
    let keyed = |name: &str| {
        facts
            .scenario
            .external
            .iter()
            .any(|e| e.host == name && e.api_key)
    };
    for r in rows {
        if r.kind != ExternalRow::OPENAI_COMPATIBLE || !keyed(&r.name) {
            continue;
        }
        out.entry(r.model.clone()).or_default().push(Prov {
            id: format!("external:{}", r.name),
            tier: Tier::NonAttested,
            kind: Kind::External {
                host: Facts::host_of(&r.base_url).to_string(),
            },
            window: None,
        });
    }
    out
}

/// SPEC-parity R40's long-context block of a catalog row, when valid: the
/// long URL, the base window and the long window. Invalid blocks are
/// ignored (the base keeps the row's `context_length`).
fn long_tier(row: &CatalogRow) -> Option<(String, u32, u32)> {
    let block = row.provider_config.as_ref()?.get("long_context")?;
    let url = block.get("inference_url")?.as_str()?.trim();
    let base_url = row.inference_url.as_deref().map(str::trim);
    if url.is_empty() || Some(url) == base_url {
        return None;
    }
    let positive = |k: &str| {
        let n = block.get(k)?.as_u64()?;
        (n > 0).then(|| n.min(u64::from(u32::MAX)) as u32)
    };
    let base = positive("base_max_context_tokens")?;
    let long = positive("max_context_tokens").or(row.context_length.filter(|n| *n > 0))?;
    (base < long).then(|| (url.to_string(), base, long))
}
