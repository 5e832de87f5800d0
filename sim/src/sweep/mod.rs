//! Seed sweeps: each seed runs the scenario under a random fault schedule
//! drawn from that seed, with every oracle checked after every step.
//!
//! ```text
//! Plan::new ─ strip expectations, resolve the [sweep] menu (+ flags),
//!             one fault-free reference run: each step's start time
//! Plan::schedule(seed) ─ ChaCha20 seeded from the seed ─▶ Vec<FaultEvent>
//! Plan::compose(seed, events) ─ events as [[step]]s (inject at `at`, clear /
//!             repair / restart at `end`), merged into the base steps by time
//! run_seeds ─ N threads, one turmoil sim per seed, sorted by seed
//! shrink::shrink ─ on a violation: greedy removal while the same check fails
//!             ─▶ scenario::write::to_toml ─▶ a standalone reproducer file
//! ```
//!
//! A schedule is ordinary scenario steps, so a (shrunk) schedule is written
//! back as an ordinary scenario file that `tiersim run` replays without any
//! of this machinery.

pub mod shrink;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tiersim_engine::registry::PlantedBug;
use toml::Spanned;

use crate::fault::{Dice, DrawLimits, FaultInjection, FaultRule};
use crate::hosts::derive_seed;
use crate::hosts::Chunking;
use crate::record::{Report, Violation};
use crate::render;
use crate::runner::{self, RunOptions};
use crate::scenario::format::{Dur, FaultKind, Scenario, Step};
use crate::scenario::load::{fault_counts, host_names};
use crate::scenario::Action;

/// The fault menu a seed's schedule is drawn from: the scenario's `[sweep]`
/// table with the defaults filled in and the flags applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Menu {
    pub hosts: Vec<String>,
    /// Kinds with a positive weight, in [`FaultKind::ALL`] order.
    pub kinds: Vec<(FaultKind, u32)>,
    pub min_faults: u32,
    pub max_faults: u32,
    pub from: Duration,
    /// `None`: the end of the reference run.
    pub until: Option<Duration>,
    pub max_hold: Duration,
    pub max_times: u32,
    pub statuses: Vec<u16>,
    pub max_latency: Duration,
    /// Chunkings a seed draws from (empty: the scenario's own).
    pub chunkings: Vec<Chunking>,
}

/// Command-line overrides of the `[sweep]` table.
#[derive(Debug, Clone, Default)]
pub struct MenuFlags {
    pub hosts: Option<Vec<String>>,
    pub kinds: Option<Vec<FaultKind>>,
    pub min_faults: Option<u32>,
    pub max_faults: Option<u32>,
    pub until: Option<Duration>,
    /// Replaces the scenario's turmoil time step (`tick`) for the sweep and
    /// its reproducers.
    pub tick: Option<Duration>,
    /// Replaces the `[sweep] chunking` dimension.
    pub chunking: Option<Vec<Chunking>>,
    /// Runs the sweep under this semantics profile; under `upstream` its
    /// violations are findings about production, not tiersim bugs.
    pub profile: Option<tiersim_engine::config::Profile>,
}

const DEFAULT_STATUSES: &[u16] = &[500, 502, 503, 504, 429, 408, 400];

impl Menu {
    /// The menu of `s` (its `[sweep]` table, defaults) under `flags`.
    pub fn resolve(s: &Scenario, flags: &MenuFlags) -> Result<Menu, String> {
        let spec = s.sweep.as_ref().map(|t| t.get_ref().clone());
        let spec = spec.unwrap_or_default();
        let known = host_names(s);
        let hosts: Vec<String> = match (&flags.hosts, &spec.hosts) {
            (Some(h), _) => h.clone(),
            (None, Some(h)) => h.iter().map(|h| h.get_ref().clone()).collect(),
            (None, None) => known.iter().filter(|h| *h != "client").cloned().collect(),
        };
        for h in &hosts {
            if !known.contains(h) || h == "client" {
                return Err(format!(
                    "sweep host {h:?} is not a host this scenario can fault (hosts: {})",
                    known
                        .iter()
                        .filter(|h| *h != "client")
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let chosen: Vec<FaultKind> = match (&flags.kinds, &spec.kinds) {
            (Some(k), _) => k.clone(),
            (None, Some(k)) => k.iter().map(|k| *k.get_ref()).collect(),
            (None, None) => FaultKind::ALL
                .iter()
                .copied()
                .filter(|k| !k.costly())
                .collect(),
        };
        let kinds: Vec<(FaultKind, u32)> = FaultKind::ALL
            .iter()
            .copied()
            .filter(|k| chosen.contains(k))
            .map(|k| (k, spec.weights.get(&k).copied().unwrap_or(1)))
            .filter(|(k, w)| *w > 0 && hosts.iter().any(|h| k.hits(h)))
            .collect();
        if kinds.is_empty() {
            return Err(format!(
                "no fault kind of the menu ({}) can hit a sweep host ({})",
                chosen
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                hosts.join(", ")
            ));
        }
        let (min_faults, max_faults) = fault_counts(
            flags
                .min_faults
                .or(spec.min_faults.as_ref().map(|n| *n.get_ref())),
            flags
                .max_faults
                .or(spec.max_faults.as_ref().map(|n| *n.get_ref())),
        )?;
        Ok(Menu {
            hosts,
            kinds,
            min_faults,
            max_faults,
            from: spec.from.as_ref().map_or(Duration::ZERO, |d| d.get_ref().0),
            until: flags.until.or(spec.until.as_ref().map(|d| d.get_ref().0)),
            max_hold: spec
                .max_hold
                .as_ref()
                .map_or(Duration::from_secs(30), |d| d.get_ref().0),
            max_times: spec.max_times.as_ref().map_or(4, |n| *n.get_ref()),
            statuses: spec
                .statuses
                .as_ref()
                .map_or_else(|| DEFAULT_STATUSES.to_vec(), |s| s.get_ref().clone()),
            max_latency: spec.max_latency.map_or(Duration::from_secs(2), |d| d.0),
            chunkings: match (&flags.chunking, &spec.chunking) {
                (Some(c), _) => c.clone(),
                (None, Some(c)) => c.get_ref().clone(),
                (None, None) => Vec::new(),
            },
        })
    }
}

/// Notes of the liveness phase's steps start with this.
pub const LIVENESS_NOTE: &str = "liveness";
/// Simulated time the liveness phase waits after healing, for restarted
/// hosts to boot, before it asks each model once.
const LIVENESS_SETTLE: Duration = Duration::from_secs(2);

/// The most a swarm multiplies a kind's menu weight by.
const SWARM_MAX_RATE: u64 = 4;

/// The fault kinds one seed enables and their draw rates (see
/// [`Plan::swarm`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swarm {
    /// Enabled kinds with their weights, in menu order.
    pub kinds: Vec<(FaultKind, u32)>,
    /// How many kinds the menu has.
    pub of: usize,
}

impl fmt::Display for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|(k, w)| format!("{} x{w}", k.name()))
            .collect();
        write!(
            f,
            "swarm: {} of {} fault kinds enabled ({})",
            self.kinds.len(),
            self.of,
            kinds.join(", ")
        )
    }
}

/// What a fault of the schedule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventAction {
    /// A fault on a host's fault board, cleared (`clear_faults`) at the end.
    Fault(FaultInjection),
    /// The router cut from this host, repaired at the end.
    Partition(String),
    /// This host crashed, restarted at the end.
    Crash(String),
}

/// One fault of a seed's schedule, active from `at` to `end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultEvent {
    /// 1-based, in time order: "sweep fault 2".
    pub number: usize,
    pub at: Duration,
    pub end: Duration,
    pub action: EventAction,
}

impl fmt::Display for EventAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventAction::Fault(i) => write!(f, "fault = {i}"),
            EventAction::Partition(h) => write!(f, "partition = [\"router\", {h:?}]"),
            EventAction::Crash(h) => write!(f, "crash = {h:?}"),
        }
    }
}

impl fmt::Display for FaultEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sweep fault {} @ {} until {}: {}",
            self.number,
            humantime::format_duration(self.at),
            humantime::format_duration(self.end),
            self.action
        )
    }
}

/// Where a step of a composed scenario comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// Step `i` (0-based) of the base scenario.
    Base(usize),
    /// The start of sweep fault `n`.
    Start(usize),
    /// The end of sweep fault `n`.
    End(usize),
    /// Step `i` (0-based) of the liveness phase.
    Liveness(usize),
}

/// A base scenario with a fault schedule merged into its steps.
#[derive(Debug, Clone)]
pub struct Composed {
    pub scenario: Scenario,
    /// One per step of `scenario`.
    pub origins: Vec<Origin>,
    pub events: Vec<FaultEvent>,
}

impl Composed {
    /// The composed scenario keeping only the steps `keep` accepts.
    pub fn retain(&self, keep: impl Fn(Origin) -> bool) -> Composed {
        let mut out = self.clone();
        let mut steps = Vec::new();
        let mut origins = Vec::new();
        for (st, o) in self.scenario.steps.iter().zip(&self.origins) {
            if keep(*o) {
                steps.push(st.clone());
                origins.push(*o);
            }
        }
        (out.scenario.steps, out.origins) = playable(steps, origins);
        out.events
            .retain(|e| out.origins.contains(&Origin::Start(e.number)));
        out
    }

    pub fn fault_count(&self) -> usize {
        self.events.len()
    }

    pub fn request_count(&self) -> usize {
        self.scenario
            .steps
            .iter()
            .filter(|s| s.get_ref().request.is_some())
            .count()
    }
}

/// A scenario ready to sweep: expectations stripped, menu resolved, and the
/// start time of each base step in a fault-free reference run (the schedule
/// is merged by time).
#[derive(Debug, Clone)]
pub struct Plan {
    pub base: Scenario,
    pub file: PathBuf,
    pub menu: Menu,
    pub plant: Option<PlantedBug>,
    /// Start of each base step in the reference run.
    pub timeline: Vec<Duration>,
    /// End of the reference run.
    pub horizon: Duration,
}

/// The scenario without its expectations (faults legitimately change
/// outcomes; only oracles judge a sweep). Steps that only held an
/// expectation go too.
pub fn strip_expectations(s: &Scenario) -> Scenario {
    let mut out = s.clone();
    out.steps = s
        .steps
        .iter()
        .filter_map(|st| {
            let mut step = st.get_ref().clone();
            step.expect = None;
            (!matches!(step.action(), Action::Check)).then(|| Spanned::new(st.span(), step))
        })
        .collect();
    // A sweep's violations are findings, declared or not.
    out.expect_violations.clear();
    out
}

fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Deterministic draws from a ChaCha20 stream.
struct Draw(ChaCha20Rng);

impl Dice for Draw {
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.0.next_u64() % n
        }
    }
}

impl Draw {
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

impl Plan {
    /// Prepares `s` (read from `file`) for a sweep: one fault-free reference run.
    pub fn new(
        s: &Scenario,
        file: &Path,
        flags: &MenuFlags,
        plant: Option<PlantedBug>,
    ) -> Result<Plan, String> {
        if let Some(e) = &s.config.expect_startup_error {
            return Err(format!(
                "the scenario's engine refuses to start ({e:?}): nothing to sweep"
            ));
        }
        crate::world::engine_config(s).map_err(|e| format!("the engine refuses to start: {e}"))?;
        let menu = Menu::resolve(s, flags)?;
        let mut base = strip_expectations(s);
        if let Some(profile) = flags.profile {
            base.config.profile = profile;
        }
        if let Some(t) = flags.tick {
            if t < Duration::from_millis(1) || t > Duration::from_millis(100) {
                return Err("--tick must be between 1ms and 100ms".into());
            }
            base.tick = Some(spanned(Dur(t)));
        }
        let reference = runner::run(
            &base,
            file,
            &RunOptions {
                seed: None,
                plant,
                ..RunOptions::default()
            },
        );
        let mut timeline: Vec<Duration> = reference.steps.iter().map(|r| r.at).collect();
        let last = timeline.last().copied().unwrap_or_default();
        timeline.resize(base.steps.len(), last);
        Ok(Plan {
            base,
            file: file.to_path_buf(),
            menu,
            plant,
            timeline,
            horizon: reference.sim_time,
        })
    }

    /// Swarm testing (as TigerBeetle's VOPR): each seed enables only some of
    /// the menu's fault kinds, each at its own rate, so rare combinations
    /// (one kind alone, at a high rate) get explored. A function of the seed
    /// and the menu only (its own ChaCha20 stream).
    pub fn swarm(&self, seed: u64) -> Swarm {
        let mut rng = Draw(ChaCha20Rng::from_seed(derive_seed(seed, "sweep/swarm")));
        let mut kinds: Vec<(FaultKind, u32)> = self
            .menu
            .kinds
            .iter()
            .filter_map(|(k, w)| {
                let on = rng.below(2) == 0;
                let rate = rng.between(1, SWARM_MAX_RATE) as u32;
                on.then_some((*k, w * rate))
            })
            .collect();
        if kinds.is_empty() {
            let (k, w) = *rng.pick(&self.menu.kinds);
            kinds.push((k, w));
        }
        Swarm {
            kinds,
            of: self.menu.kinds.len(),
        }
    }

    /// The random fault schedule of `seed`: a function of the seed, the menu
    /// and the reference run only (ChaCha20, never OS randomness).
    pub fn schedule(&self, seed: u64) -> Vec<FaultEvent> {
        let m = &self.menu;
        let mut rng = Draw(ChaCha20Rng::from_seed(derive_seed(seed, "sweep/schedule")));
        let swarm = self.swarm(seed);
        let targets: Vec<(FaultKind, u32, Vec<&String>)> = swarm
            .kinds
            .iter()
            .map(|(k, w)| (*k, *w, m.hosts.iter().filter(|h| k.hits(h)).collect()))
            .collect();
        let total: u64 = targets.iter().map(|(_, w, _)| u64::from(*w)).sum();
        let n = rng.between(u64::from(m.min_faults), u64::from(m.max_faults));
        let from = ms(m.from);
        let until = ms(m.until.unwrap_or(self.horizon)).max(from);
        let mut events = Vec::new();
        for _ in 0..n {
            let mut ticket = rng.below(total);
            let (kind, _, hosts) = targets
                .iter()
                .find(|(_, w, _)| {
                    let hit = ticket < u64::from(*w);
                    ticket = ticket.saturating_sub(u64::from(*w));
                    hit
                })
                .expect("tickets fall in the total weight");
            let host = (*rng.pick(hosts)).clone();
            let at = rng.between(from, until);
            let hold = rng.between(1, ms(m.max_hold).max(1));
            let action = match kind {
                FaultKind::Partition => EventAction::Partition(host),
                FaultKind::Crash => EventAction::Crash(host),
                k => {
                    let limits = DrawLimits {
                        statuses: &m.statuses,
                        max_latency_ms: ms(m.max_latency).max(1),
                    };
                    let fault = k.draw(&mut rng, &limits).expect("a fault-board kind");
                    let times = rng.between(1, u64::from(m.max_times.max(1))) as u32;
                    EventAction::Fault(FaultInjection {
                        host,
                        rule: FaultRule {
                            fault,
                            times: Some(times),
                            on: None,
                        },
                    })
                }
            };
            events.push(FaultEvent {
                number: 0,
                at: Duration::from_millis(at),
                end: Duration::from_millis(at + hold),
                action,
            });
        }
        events.sort_by_key(|e| e.at);
        for (i, e) in events.iter_mut().enumerate() {
            e.number = i + 1;
        }
        events
    }

    /// The base scenario with `events` merged into its steps by time: a base
    /// step sits at its own `at`, or at its start in the reference run; each
    /// fault starts at its `at` and ends at its `end` (an end after the last
    /// base step is left out: the fault simply lasts to the end). Every `at`
    /// of the result goes forward, so it is a valid scenario file.
    pub fn compose(&self, seed: u64, events: &[FaultEvent]) -> Composed {
        let mut marks: Vec<(Duration, Origin, Step)> = Vec::new();
        for e in events {
            let (start, end) = event_steps(e);
            marks.push((e.at, Origin::Start(e.number), start));
            marks.push((e.end, Origin::End(e.number), end));
        }
        marks.sort_by_key(|(t, o, _)| (*t, *o));
        let mut steps = Vec::new();
        let mut origins = Vec::new();
        let mut next = marks.into_iter().peekable();
        for (i, st) in self.base.steps.iter().enumerate() {
            let key = st
                .get_ref()
                .at
                .as_ref()
                .map_or(self.timeline[i], |a| a.get_ref().0);
            while let Some((_, o, step)) = next.next_if(|(t, _, _)| *t < key) {
                steps.push(spanned(step));
                origins.push(o);
            }
            steps.push(st.clone());
            origins.push(Origin::Base(i));
        }
        // After the last base step, the faults that start there, then the
        // liveness phase: every fault still active is healed at once.
        let mut heal = Vec::new();
        for (_, o, mut step) in next {
            if matches!(o, Origin::Start(_)) {
                steps.push(spanned(step));
                origins.push(o);
            } else {
                step.at = None;
                heal.push((o, step));
            }
        }
        for (o, step) in heal {
            steps.push(spanned(step));
            origins.push(o);
        }
        for (i, step) in self.liveness_steps().into_iter().enumerate() {
            steps.push(spanned(step));
            origins.push(Origin::Liveness(i));
        }
        let (steps, origins) = playable(steps, origins);
        let mut scenario = self.base.clone();
        scenario.seed = seed;
        if !self.menu.chunkings.is_empty() {
            // The chunking dimension: one per seed, cut with the seed.
            let chunking = self.menu.chunkings[(seed % self.menu.chunkings.len() as u64) as usize];
            if chunking != Chunking::Random {
                scenario.world.max_chunk = None;
            }
            scenario.world.chunking = chunking;
            scenario.world.chunk_seed = seed;
        }
        scenario.steps = steps;
        scenario.sweep = None;
        scenario.pins.clear();
        scenario.findings.clear();
        scenario.name = format!("{} (sweep seed {seed})", self.base.name);
        scenario.description = format!(
            "{} under the random fault schedule of sweep seed {seed}.\n",
            self.file.display()
        );
        let mut events = events.to_vec();
        events.retain(|e| origins.contains(&Origin::Start(e.number)));
        Composed {
            scenario,
            origins,
            events,
        }
    }

    /// The liveness phase, after every fault is healed (as TigerBeetle's
    /// VOPR does): a pause for restarted hosts to come up, then one request
    /// per model id the scenario knows. The reference model judges each
    /// (`liveness`): a model it says is servable must be served by its best
    /// provider (the first of the model's order) at the first attempt.
    fn liveness_steps(&self) -> Vec<Step> {
        let s = &self.base;
        let mut ids: std::collections::BTreeSet<String> =
            s.catalog.iter().map(|r| r.id.clone()).collect();
        if let Ok(config) = crate::world::engine_config(s) {
            ids.extend(config.chutes_models.iter().map(|e| e.canonical_id.clone()));
        }
        for st in &s.steps {
            let st = st.get_ref();
            if let Some(rows) = &st.admin_patch {
                ids.extend(rows.iter().map(|r| r.id.clone()));
            }
            if let Some(edit) = &st.catalog {
                ids.extend(edit.upsert.iter().map(|r| r.id.clone()));
            }
        }
        let mut out = vec![Step {
            advance: Some(Dur(LIVENESS_SETTLE)),
            note: Some(format!("{LIVENESS_NOTE}: every fault healed")),
            ..Step::default()
        }];
        for id in ids {
            out.push(Step {
                request: Some(crate::scenario::format::RequestSpec {
                    model: id.clone(),
                    stream: false,
                    prompt: None,
                    messages: None,
                    max_tokens: None,
                    extra: None,
                    pub_key_of: None,
                    model_pub_key: None,
                    client_pub_key: None,
                }),
                note: Some(format!(
                    "{LIVENESS_NOTE}: {id} must be served by its best provider"
                )),
                ..Step::default()
            });
        }
        out
    }

    /// Runs one composed scenario with this plan's options.
    pub fn run(&self, composed: &Composed) -> Report {
        runner::run(
            &composed.scenario,
            &self.file,
            &RunOptions {
                seed: Some(composed.scenario.seed),
                plant: self.plant,
                ..RunOptions::default()
            },
        )
    }

    /// Runs seed `seed` (twice with `check_determinism`).
    pub fn run_seed(&self, seed: u64, check_determinism: bool) -> SeedOutcome {
        let composed = self.compose(seed, &self.schedule(seed));
        let report = self.run(&composed);
        let text = canonical(&report);
        let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let divergence = if check_determinism {
            let again = canonical(&self.run(&composed));
            let hash2: [u8; 32] = Sha256::digest(again.as_bytes()).into();
            (hash2 != hash).then(|| first_divergence(&text, &again))
        } else {
            None
        };
        SeedOutcome {
            seed,
            faults: composed.fault_count(),
            requests: report.requests(),
            violations: report.violations,
            sim_time: report.sim_time,
            hash,
            divergence,
        }
    }
}

/// `steps` as a script the loader accepts, running as they would: a crash
/// (or shutdown) of a host already down and a restart of a host already up are left out
/// (overlapping crash windows of one host, or a shrink that removed one
/// half of a base crash/restart pair), and an `at` the steps before already
/// passed is raised to the time they reach (the runner would start that
/// step at once anyway).
fn playable(steps: Vec<Spanned<Step>>, origins: Vec<Origin>) -> (Vec<Spanned<Step>>, Vec<Origin>) {
    let mut now = Duration::ZERO;
    let mut down = std::collections::BTreeSet::new();
    let mut out = (Vec::new(), Vec::new());
    for (mut step, origin) in steps.into_iter().zip(origins) {
        let st = step.get_mut();
        if let Some(h) = st.crash.as_ref().or(st.shutdown.as_ref()) {
            if !down.insert(h.get_ref().clone()) {
                continue;
            }
        }
        if let Some(h) = &st.restart {
            if !down.remove(h.get_ref()) {
                continue;
            }
        }
        if let Some(at) = &mut st.at {
            if at.get_ref().0 < now {
                *at = spanned(Dur(now));
            }
            now = at.get_ref().0;
        }
        now += st.advance.map_or(Duration::ZERO, |d| d.0);
        out.0.push(step);
        out.1.push(origin);
    }
    out
}

/// The two steps of a fault: its start and its end.
fn event_steps(e: &FaultEvent) -> (Step, Step) {
    let at = |d: Duration| Some(spanned(Dur(d)));
    let start_note = format!(
        "sweep fault {} (until {})",
        e.number,
        humantime::format_duration(e.end)
    );
    let end_note = format!("sweep fault {} ends", e.number);
    let (start_action, end_action) = match &e.action {
        EventAction::Fault(f) => (Action::Fault(f), Action::ClearFaults(&f.host)),
        EventAction::Partition(h) => (Action::Partition("router", h), Action::Repair("router", h)),
        EventAction::Crash(h) => (Action::Crash(h), Action::Restart(h)),
    };
    let start = Step {
        at: at(e.at),
        note: Some(start_note),
        ..Step::of(start_action)
    };
    let end = Step {
        at: at(e.end),
        note: Some(end_note),
        ..Step::of(end_action)
    };
    (start, end)
}

/// What one seed did.
#[derive(Debug, Clone)]
pub struct SeedOutcome {
    pub seed: u64,
    pub faults: usize,
    pub requests: usize,
    pub violations: Vec<Violation>,
    pub sim_time: Duration,
    /// SHA-256 of the run's canonical text (snapshot + fired faults).
    pub hash: [u8; 32],
    /// With `--check-determinism`: where a second run first differed.
    pub divergence: Option<Divergence>,
}

impl SeedOutcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.divergence.is_none()
    }
}

/// Where two runs of the same seed first differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// The step whose record differs (0: before the first step, or in the
    /// fired-fault log after the steps).
    pub step: usize,
    /// 1-based line of the canonical text.
    pub line: usize,
    pub first: String,
    pub second: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "first divergence at step {} (line {}): {:?} vs {:?}",
            self.step, self.line, self.first, self.second
        )
    }
}

/// A run as hashed for the determinism check: the snapshot text (registry,
/// attempts, served bytes) and every fault that fired.
pub fn canonical(r: &Report) -> String {
    let mut text = render::render(r);
    text.push_str("\n## fired\n");
    for f in &r.fired {
        text.push_str(&format!("- {} {:?}: {}\n", f.host, f.kind, f.fault));
    }
    text
}

/// The first line where two canonical texts differ, and its step.
pub fn first_divergence(a: &str, b: &str) -> Divergence {
    let mut step = 0;
    let (mut la, mut lb) = (a.lines(), b.lines());
    let mut line = 0;
    loop {
        line += 1;
        let (x, y) = (la.next(), lb.next());
        if let Some(rest) = x.and_then(|x| x.strip_prefix("## step ")) {
            step = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(step);
        }
        if x == Some("## fired") {
            step = 0;
        }
        if x != y {
            return Divergence {
                step,
                line,
                first: x.unwrap_or("<end>").to_string(),
                second: y.unwrap_or("<end>").to_string(),
            };
        }
        if x.is_none() {
            return Divergence {
                step,
                line,
                first: "<end>".into(),
                second: "<end>".into(),
            };
        }
    }
}

/// Most seeds one sweep (or one shard of it) runs: a bound on the seed list
/// it holds; shard a larger sweep (`--shard K/N`).
pub const MAX_SEEDS: u64 = 1_000_000;

/// `--seeds`: `A..B` (B excluded) or `A..=B`, as a non-empty inclusive range.
/// An empty range is an error: a CI gate must never pass on zero work. The
/// end never wraps (`18446744073709551615..=18446744073709551615` is one
/// seed).
pub fn parse_seeds(s: &str) -> Result<std::ops::RangeInclusive<u64>, String> {
    let bad = |why: &str| format!("{s:?}: {why}; write seeds as A..B (B excluded) or A..=B");
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| bad("not a seed number"))
    };
    let (first, last) = if let Some((a, b)) = s.split_once("..=") {
        (num(a)?, num(b)?)
    } else if let Some((a, b)) = s.split_once("..") {
        let (a, b) = (num(a)?, num(b)?);
        if b == 0 {
            return Err(bad("the range is empty"));
        }
        (a, b - 1)
    } else {
        return Err(bad("not a range"));
    };
    if first > last {
        return Err(bad("the range is empty"));
    }
    Ok(first..=last)
}

/// How many seeds shard `k` of `n` (1-based) of `seeds` holds.
pub fn shard_len(seeds: &std::ops::RangeInclusive<u64>, k: u64, n: u64) -> u64 {
    let total = u128::from(seeds.end() - seeds.start()) + 1;
    ((total + u128::from(n) - u128::from(k)) / u128::from(n)) as u64
}

/// `seeds` split for shard `k` of `n` (1-based): every `n`-th seed from the
/// `k`-th, so shards are disjoint, cover the range and share the work.
pub fn shard(seeds: std::ops::RangeInclusive<u64>, k: u64, n: u64) -> Vec<u64> {
    assert!(n >= 1 && (1..=n).contains(&k), "shard {k}/{n}");
    let skip = usize::try_from(k - 1).expect("shard index fits usize");
    let step = usize::try_from(n).expect("shard count fits usize");
    seeds.skip(skip).step_by(step).collect()
}

/// Runs `seeds` on `jobs` threads (each seed's turmoil world is
/// single-threaded and independent); `done` is called as each finishes.
/// The result is sorted by seed, whatever the number of threads.
pub fn run_seeds(
    plan: &Plan,
    seeds: &[u64],
    jobs: usize,
    check_determinism: bool,
    done: &(dyn Fn(&SeedOutcome) + Sync),
) -> Vec<SeedOutcome> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::with_capacity(seeds.len()));
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, seeds.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else {
                    return;
                };
                let outcome = plan.run_seed(seed, check_determinism);
                done(&outcome);
                out.lock().unwrap().push(outcome);
            });
        }
    });
    let mut out = out.into_inner().unwrap();
    out.sort_by_key(|o| o.seed);
    out
}

/// Violating seeds per check (`oracle:<name>`, `simulation`), each list sorted.
pub fn by_check(outcomes: &[SeedOutcome]) -> BTreeMap<String, Vec<u64>> {
    let mut map: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for o in outcomes {
        let mut checks: Vec<&str> = o.violations.iter().map(|v| v.check.as_str()).collect();
        checks.sort_unstable();
        checks.dedup();
        for c in checks {
            map.entry(c.to_string()).or_default().push(o.seed);
        }
    }
    map
}
