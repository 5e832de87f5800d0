//! The reference model (SPEC §9): a small, independent, obviously correct
//! executable form of R4–R22 and the client-visible parts of R3/R23/R24.
//!
//! It is written from SPEC, not from the engine, and shares no code with
//! `engine/src/registry`, `select.rs` or `retry.rs`: plain `Vec`s and
//! `BTreeMap`s, no performance tricks. It is fed only what the *world* did
//! (the scenario's configuration and steps, and the host-side record of every
//! request each simulated host served: the fault it acted out, the rows the
//! catalog listed), never what the engine decided. From that it predicts,
//! after every step, each model's provider list, the pinned and reserved ids,
//! the pubkey map, every provider's failure count and demotion, and for each
//! request the attempt sequence (who, round, backoff), the client status and
//! whether the stream ended properly. [`Model::step`] returns every
//! difference from what the engine did, as readable lines.
//!
//! Where the world is nondeterministic relative to the model (which attempt a
//! fault hits), the model reads what the simulated host saw for the attempt
//! it predicts: the next request that host served during the client request.
//! An attempt the host never saw (partition, crash) is a connection failure.

mod admission;
mod chutes;
mod concurrent;
mod context;
mod latency;
mod registry;
mod request;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tiersim_engine::registry::RegistryView;

use crate::fault::{FaultBoard, HostEvent, RequestKind};
use crate::oracle;
use crate::record::StepRecord;
use crate::scenario::format::{Scenario, Step};

pub use registry::Registry;
pub use request::Prediction;

/// The oracle name under which the model's disagreements are reported.
pub const ORACLE: &str = "reference_model";
/// The liveness oracle of a sweep's liveness phase.
pub const LIVENESS: &str = "liveness";

/// The world facts the model may read besides the host events: the
/// scenario itself and each NEAR host's signing key.
pub struct Facts {
    pub scenario: Scenario,
    /// NEAR host → its signing key (hex), as its attestation report carries.
    pub near_keys: BTreeMap<String, String>,
}

impl Facts {
    /// The NEAR host of an inference URL (`http://near-1` → `near-1`).
    fn host_of(url: &str) -> &str {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or(url);
        let end = rest.find(['/', ':']).unwrap_or(rest.len());
        &rest[..end]
    }

    /// The provider id of a NEAR backend at `url`: its authority.
    fn near_id(url: &str) -> String {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or(url);
        rest.split('/').next().unwrap_or(rest).to_string()
    }

    fn serves(&self, host: &str, model: &str) -> bool {
        self.scenario
            .near
            .iter()
            .find(|n| n.host == host)
            .map(|n| n.models.iter().any(|m| m == model))
            .or_else(|| {
                self.scenario
                    .external
                    .iter()
                    .find(|e| e.host == host)
                    .map(|e| e.models.iter().any(|m| m == model))
            })
            .unwrap_or(false)
    }
}

/// Why the model stopped predicting a run. From that step on only the
/// world-side oracles (and the scenario's own expectations) judge it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Abstain {
    /// A `concurrent` step whose outcome the interleaving of its requests
    /// decides (`model/concurrent.rs` judges the ones it cannot change).
    Concurrent,
    /// A request whose outcome the world's timing bounds cannot decide
    /// (R43's tokenize deadline, the upstream deadline, R47's latency
    /// demotion).
    Timing,
}

impl Abstain {
    /// How a report names the reason.
    pub fn describe(self) -> &'static str {
        match self {
            Abstain::Concurrent => "a concurrent step",
            Abstain::Timing => "an outcome the timing bounds cannot decide",
        }
    }
}

/// Where (the 1-based step index) and why the model stopped predicting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abstention {
    pub step: usize,
    pub why: Abstain,
}

/// The model of one run: the registry as it should be, fed step by step.
pub struct Model {
    facts: Facts,
    reg: Registry,
    /// Every host event so far (copied from the board as the run goes).
    events: Vec<HostEvent>,
    /// Host events already consumed.
    cursor: usize,
    /// The router is down (crashed or shut down, not yet restarted).
    down: bool,
    /// Set at the first step the model cannot predict; from then on only
    /// the world-side oracles judge the run.
    abstained: Option<Abstention>,
    /// While a refresh waits for the catalog's answer, the catalog went down
    /// or was cut off from the router: the read may have failed (and the
    /// router applied the refresh without it) at a time the model cannot
    /// place.
    catalog_lost: bool,
}

impl Model {
    /// The model of a freshly booted router; `events` are the host events
    /// of the boot so far.
    pub fn new(facts: Facts) -> Model {
        let reg = Registry::boot(&facts);
        Model {
            facts,
            reg,
            events: Vec::new(),
            cursor: 0,
            down: false,
            abstained: None,
            catalog_lost: false,
        }
    }

    /// Feeds one step: `board` holds every host event since the run began,
    /// `before` how many of them happened before the step's action. Returns
    /// the differences between the prediction and `rec` (what the engine
    /// did), as readable lines. `writing`: the engine was applying a refresh
    /// when the step was recorded (its registry is then compared later).
    pub fn step(
        &mut self,
        step: &Step,
        rec: &StepRecord,
        board: &FaultBoard,
        before: usize,
        writing: bool,
    ) -> Vec<(&'static str, String)> {
        let new = board.events_from(self.events.len());
        self.events.extend(new);
        let events = std::mem::take(&mut self.events);
        let out = self.judge(step, rec, &events, before, writing);
        self.events = events;
        out
    }

    fn judge(
        &mut self,
        step: &Step,
        rec: &StepRecord,
        events: &[HostEvent],
        before: usize,
        writing: bool,
    ) -> Vec<(&'static str, String)> {
        let before = before.max(self.cursor).min(events.len());
        self.absorb(events, before);
        let mut out = Vec::new();
        if self.reg.pending && cuts_off_catalog(step) {
            self.catalog_lost = true;
        }
        let sends = step.request.is_some() || step.concurrent.is_some();
        if sends && self.reg.pending && self.catalog_lost && !self.down {
            self.abstain(rec.index, Abstain::Timing);
        }
        if let (Some(specs), None) = (&step.concurrent, self.abstained) {
            let verdict = if self.down || writing || self.reg.pending {
                concurrent::Verdict::Undecided(Vec::new())
            } else {
                concurrent::judge(
                    &self.facts,
                    &self.reg,
                    specs,
                    &rec.concurrent,
                    &events[before..],
                )
            };
            match verdict {
                concurrent::Verdict::Judged(diffs, after) => {
                    out.extend(diffs.into_iter().map(|m| (ORACLE, m)));
                    self.reg = *after;
                }
                concurrent::Verdict::Undecided(diffs) => {
                    out.extend(diffs.into_iter().map(|m| (ORACLE, m)));
                    self.abstain(rec.index, Abstain::Concurrent);
                }
            }
        }
        // What the script does to the router and the gateway, and what the
        // operator unregisters: facts of the world, kept whether or not the
        // model still predicts (the world-side oracles read the reserved
        // ids).
        if let Some(h) = step.crash.as_ref().or(step.shutdown.as_ref()) {
            if h.get_ref() == crate::world::ROUTER {
                self.down = true;
            }
        } else if let Some(h) = &step.restart {
            // The fresh registry comes with the router's boot event.
            if h.get_ref() == crate::world::ROUTER {
                self.down = false;
            }
            // A restarted gateway forgot every nonce it listed (R39, R60).
            if h.get_ref() == crate::world::CHUTES {
                for pool in self.reg.pools.values_mut() {
                    pool.gateway_restarted();
                }
            }
        } else if let Some(m) = &step.unregister {
            if !self.down {
                self.reg.unregister(m);
            }
        }
        if self.abstained.is_some() {
            // World-side facts only, the stream's upstream end included (it
            // reads the hosts' records, not a prediction).
            let upstream_ended = step
                .request
                .as_ref()
                .and_then(|spec| self.upstream_ended(&events[before..], &spec.model));
            self.absorb(events, events.len());
            let world = oracle::WorldSide {
                hosts: crate::world::host_names(&self.facts.scenario),
                reserved: self.reg.configured(),
                upstream_ended,
                ..Default::default()
            };
            let mut judged = oracle::check_world(&world, rec);
            judged.extend(out);
            return judged;
        }
        let window = &events[before..];
        let mut world = oracle::WorldSide {
            hosts: crate::world::host_names(&self.facts.scenario),
            ..Default::default()
        };
        if let Some(rows) = &step.admin_patch {
            self.reg.admin_patch(&self.facts, rows, window);
        } else if let Some(spec) = &step.request {
            let refused = if self.down {
                None
            } else {
                admission::refusal(spec)
            };
            if let Some(why) = refused {
                // Refused before routing: a 400, nothing tried, nothing counted.
                if let Some(got) = &rec.request {
                    if got.status != 400 || !got.attempts.is_empty() {
                        out.push((
                            ORACLE,
                            format!(
                                "request {}: the router must refuse it before routing ({why}): \
                                 model 400 with no attempt, engine {} with {} attempt(s)",
                                spec.model,
                                got.status,
                                got.attempts.len()
                            ),
                        ));
                    }
                }
            } else if !self.down {
                world.eligible = self.reg.eligible(&self.facts, spec);
                world.upstream_ended = self.upstream_ended(window, &spec.model);
                let servable = self.reg.servable(&self.facts, spec);
                let pred = self.reg.request(&self.facts, spec, window);
                if pred.undecided {
                    // Undecidable from the world's timing bounds (R47's
                    // latency demotion, R43's tokenize deadline): from here
                    // on only the world-side oracles judge the run.
                    tracing::debug!(
                        model = %spec.model,
                        "reference model: outcome undecidable from the world's \
                         timing bounds; only world-side oracles judge from here"
                    );
                    self.abstain(rec.index, Abstain::Timing);
                    self.absorb(events, events.len());
                    return oracle::check_world(&world, rec);
                }
                let liveness = step
                    .note
                    .as_deref()
                    .is_some_and(|n| n.starts_with(crate::sweep::LIVENESS_NOTE));
                if let (true, true, Some(got)) = (liveness, servable, &rec.request) {
                    if got.status != 200 || got.attempts.len() != 1 {
                        out.push((
                            LIVENESS,
                            format!(
                                "after every fault healed, {} was not served by its best provider \
                                 at the first attempt: status {}, {} attempt(s)",
                                spec.model,
                                got.status,
                                got.attempts.len()
                            ),
                        ));
                    }
                }
                if let Some(got) = &rec.request {
                    out.extend(pred.diff(got).into_iter().map(|m| (ORACLE, m)));
                }
            }
        }
        self.absorb(events, events.len());
        if !self.reg.pending {
            self.catalog_lost = false;
        }
        if !self.down && !writing && !self.reg.pending {
            if let Some(view) = &rec.state {
                out.extend(
                    self.reg
                        .diff(&self.facts, view)
                        .into_iter()
                        .map(|m| (ORACLE, m)),
                );
            }
        }
        world.reserved = self.reg.configured();
        let mut judged = oracle::check_world(&world, rec);
        judged.extend(out);
        judged
    }

    /// Stops predicting at `step` (the first reason is kept).
    fn abstain(&mut self, step: usize, why: Abstain) {
        if self.abstained.is_none() {
            tracing::info!(
                step,
                "reference model: stops predicting here ({}); the world-side oracles \
                 judge the rest",
                why.describe()
            );
            self.abstained = Some(Abstention { step, why });
        }
    }

    /// Where and why the model stopped predicting, if it did.
    pub fn abstained(&self) -> Option<Abstention> {
        self.abstained
    }

    /// Whether the last upstream stream of `window` really ended (SPEC
    /// R23/R25), from the host's record; `None` when no host streamed.
    fn upstream_ended(&self, window: &[HostEvent], model: &str) -> Option<bool> {
        window.iter().rev().find_map(|e| match e {
            HostEvent::Request {
                host,
                kind: RequestKind::ChatStream,
                fault,
            } => Some(request::upstream_ended(
                &self.facts,
                &self.reg,
                host,
                fault.as_ref(),
                model,
            )),
            _ => None,
        })
    }

    /// Applies every router boot and complete refresh in
    /// `events[cursor..upto]`.
    fn absorb(&mut self, events: &[HostEvent], upto: usize) {
        self.cursor = self.reg.absorb(&self.facts, events, self.cursor, upto);
    }

    /// The registry the model predicts, for tests and the trace.
    pub fn registry(&self) -> &Registry {
        &self.reg
    }
}

/// Whether `step` takes the catalog down or cuts (or holds) its link to the
/// router.
fn cuts_off_catalog(step: &Step) -> bool {
    use crate::world::{CATALOG, ROUTER};
    let down = step
        .crash
        .as_ref()
        .or(step.shutdown.as_ref())
        .is_some_and(|h| h.get_ref() == CATALOG);
    let link = [&step.partition, &step.hold]
        .into_iter()
        .flatten()
        .any(|pair| {
            let [a, b] = pair.get_ref();
            (a == ROUTER && b == CATALOG) || (a == CATALOG && b == ROUTER)
        });
    down || link
}

/// Renders a view's model lists for a diff line.
fn lists(view: &RegistryView) -> BTreeMap<String, Vec<String>> {
    view.models
        .iter()
        .map(|(m, ps)| (m.clone(), ps.iter().map(|p| p.id.to_string()).collect()))
        .collect()
}

#[cfg(test)]
mod tests;
