//! A scenario prepared for sweeping (expectations stripped, menu resolved,
//! one fault-free reference run), one seed's run and its outcome, and many
//! seeds on parallel threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tiersim_engine::registry::PlantedBug;
use toml::Spanned;

use super::compose::spanned;
use super::{canonical, first_divergence, Composed, Divergence, Menu, MenuFlags};
use crate::model::Abstention;
use crate::record::{Report, Violation};
use crate::runner::{self, RunOptions};
use crate::scenario::format::{Dur, Scenario};
use crate::scenario::Action;

/// A scenario ready to sweep: expectations stripped, menu resolved, and the
/// start time of each base step in a fault-free reference run (the schedule
/// is merged by time).
#[derive(Debug, Clone)]
pub struct Plan {
    pub base: Scenario,
    pub file: PathBuf,
    pub menu: Menu,
    pub plant: Option<PlantedBug>,
    /// [`RunOptions::step_every_tick`] for every run of the plan.
    pub step_every_tick: bool,
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
                step_every_tick: flags.step_every_tick,
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
            step_every_tick: flags.step_every_tick,
            timeline,
            horizon: reference.sim_time,
        })
    }

    /// Runs one composed scenario with this plan's options.
    pub fn run(&self, composed: &Composed) -> Report {
        runner::run(
            &composed.scenario,
            &self.file,
            &RunOptions {
                seed: Some(composed.scenario.seed),
                plant: self.plant,
                step_every_tick: self.step_every_tick,
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
            abstained: report.model_abstained,
        }
    }
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
    /// Where and why the reference model stopped predicting this seed's run.
    pub abstained: Option<Abstention>,
}

impl SeedOutcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.divergence.is_none()
    }
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
