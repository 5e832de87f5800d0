//! A whole sweep as library calls: the settings that decide its outcomes
//! ([`Sweep`]), running one shard of it ([`Sweep::run`]), and concluding
//! from the outcomes ([`conclude`]: shrinking, the report, JUnit and the
//! reproducer files). `tiersim sweep` and `tiersim sweep merge` parse their
//! flags and call these; a merge of shard outcome files
//! ([`super::outcomes::merge`]) concludes exactly as one machine would.
//!
//! Everything [`conclude`] writes is a function of the settings and the
//! per-seed outcomes only (no clock, no host name, no thread count), so a
//! sweep run on one machine and the same sweep run as shards and merged
//! give the same bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quick_junit::Report as JReport;
use tiersim_engine::registry::PlantedBug;

use super::{by_check, shard, shard_len, shrink, MenuFlags, Plan, SeedOutcome, Shard, MAX_SEEDS};
use crate::junit;
use crate::model::Abstain;
use crate::scenario;

/// What decides a sweep's outcomes: the scenario, the seeds, the menu
/// overrides and the planted bug. Shards of one sweep differ in `shard`
/// only.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// The scenario file as named on the command line: the report, the
    /// JUnit suite and each reproducer's description quote it, so shards
    /// and their merge must name it alike (run from the same folder).
    pub file: PathBuf,
    pub seeds: std::ops::RangeInclusive<u64>,
    pub shard: Shard,
    pub check_determinism: bool,
    pub flags: MenuFlags,
    pub plant: Option<PlantedBug>,
}

impl Sweep {
    /// The seeds this shard runs, in order. An error when it holds none or
    /// more than [`MAX_SEEDS`].
    pub fn shard_seeds(&self) -> Result<Vec<u64>, String> {
        let Shard { k, n } = self.shard;
        if shard_len(&self.seeds, k, n) > MAX_SEEDS {
            return Err(format!(
                "--seeds {}..={} gives shard {k}/{n} more than {MAX_SEEDS} seeds; split it with --shard K/N",
                self.seeds.start(),
                self.seeds.end(),
            ));
        }
        let seeds = shard(self.seeds.clone(), k, n);
        if seeds.is_empty() {
            return Err(format!(
                "shard {k}/{n} of seeds {}..={} is empty: nothing would run",
                self.seeds.start(),
                self.seeds.end()
            ));
        }
        Ok(seeds)
    }

    /// Loads the scenario and prepares the plan (one fault-free reference
    /// run).
    pub fn plan(&self) -> Result<Plan, String> {
        let s = scenario::load(&self.file).map_err(|e| e.to_string())?;
        Plan::new(&s, &self.file, &self.flags, self.plant)
            .map_err(|e| format!("{}: {e}", self.file.display()))
    }

    /// Runs this shard's seeds on `jobs` threads; `done` is called as each
    /// finishes. Sorted by seed whatever `jobs` is.
    pub fn run(
        &self,
        plan: &Plan,
        seeds: &[u64],
        jobs: usize,
        done: &(dyn Fn(&SeedOutcome) + Sync),
    ) -> Vec<SeedOutcome> {
        super::run_seeds(plan, seeds, jobs, self.check_determinism, done)
    }

    /// The report's first line: what was swept.
    fn heading(&self, seeds: usize) -> String {
        let shard = if self.shard == Shard::WHOLE {
            String::new()
        } else {
            format!("shard {}, ", self.shard)
        };
        format!(
            "sweep {}: seeds {}..={} ({shard}{seeds} seeds){}{}",
            self.file.display(),
            self.seeds.start(),
            self.seeds.end(),
            if self.check_determinism {
                ", determinism check"
            } else {
                ""
            },
            plant_flag(self.plant)
        )
    }
}

/// ` --plant NAME` for a replay command, or nothing.
pub fn plant_flag(plant: Option<PlantedBug>) -> String {
    plant.map(|b| format!(" --plant {b}")).unwrap_or_default()
}

/// Where [`conclude`] writes.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// Shrink the lowest failing seed of each check into a reproducer file
    /// in this folder; `None`: report failures without shrinking.
    pub reproducers: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    /// The report text, as printed.
    pub report: Option<PathBuf>,
}

/// The shrinking of one check's lowest failing seed.
#[derive(Debug, Clone)]
pub enum Shrink {
    Written {
        seed: u64,
        check: String,
        path: PathBuf,
        runs: usize,
        faults: (usize, usize),
        requests: (usize, usize),
    },
    /// The seed did not fail the check again: the sweep is nondeterministic.
    Vanished { seed: u64, check: String },
    /// The reproducer could not be written.
    Unwritten {
        seed: u64,
        check: String,
        error: String,
    },
}

/// A concluded sweep: its outcomes, shrinks, report and JUnit XML.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub outcomes: Vec<SeedOutcome>,
    pub shrinks: Vec<Shrink>,
    /// The report: deterministic text ending with `N passed, M failed`.
    pub report: String,
    /// The JUnit XML (one test case per seed).
    pub junit: String,
    /// Files that could not be written (the report or JUnit file).
    pub write_errors: Vec<String>,
}

impl Verdict {
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| !o.passed()).count()
    }

    /// No seed failed and everything asked for was written.
    pub fn passed(&self) -> bool {
        self.failed() == 0
            && self.write_errors.is_empty()
            && !self
                .shrinks
                .iter()
                .any(|s| matches!(s, Shrink::Unwritten { .. }))
    }
}

/// Concludes a sweep from its outcomes (sorted by seed): shrinks the lowest
/// failing seed of each check, writes the reproducers, the JUnit XML and
/// the report where `outputs` says, and returns them all.
pub fn conclude(
    sweep: &Sweep,
    plan: &Plan,
    outcomes: Vec<SeedOutcome>,
    outputs: &Outputs,
) -> Verdict {
    let checks = by_check(&outcomes);
    let mut shrinks = Vec::new();
    if let Some(dir) = &outputs.reproducers {
        for (check, seeds) in &checks {
            shrinks.push(shrink_one(plan, seeds[0], check, dir));
        }
    }
    let reproducers: Vec<(u64, String, PathBuf)> = shrinks
        .iter()
        .filter_map(|s| match s {
            Shrink::Written {
                seed, check, path, ..
            } => Some((*seed, check.clone(), path.clone())),
            _ => None,
        })
        .collect();
    let junit = xml(&junit::sweep_report(&sweep.file, &outcomes, &reproducers));
    let report = report(sweep, &outcomes, &checks, &shrinks);
    let mut write_errors = Vec::new();
    for (path, text) in [(&outputs.junit, &junit), (&outputs.report, &report)] {
        if let Some(path) = path {
            if let Err(e) = write_file(path, text) {
                write_errors.push(format!("cannot write {}: {e}", path.display()));
            }
        }
    }
    Verdict {
        outcomes,
        shrinks,
        report,
        junit,
        write_errors,
    }
}

fn shrink_one(plan: &Plan, seed: u64, check: &str, dir: &Path) -> Shrink {
    let Some(shrunk) = shrink::shrink(plan, seed, check) else {
        return Shrink::Vanished {
            seed,
            check: check.to_string(),
        };
    };
    match shrunk.write(plan, dir) {
        Ok(path) => Shrink::Written {
            seed,
            check: check.to_string(),
            path,
            runs: shrunk.runs,
            faults: (shrunk.faults_before, shrunk.composed.fault_count()),
            requests: (shrunk.requests_before, shrunk.composed.request_count()),
        },
        Err(e) => Shrink::Unwritten {
            seed,
            check: check.to_string(),
            error: e.to_string(),
        },
    }
}

/// How much of the sweep the reference model judged: a seed whose run it
/// stopped predicting (a concurrent step, an outcome the timing bounds
/// cannot decide) was judged from there by the world-side oracles only, and
/// a pass there is a weaker pass.
fn judged(r: &mut String, outcomes: &[SeedOutcome]) {
    let mut by_reason: BTreeMap<Abstain, Vec<(u64, usize)>> = BTreeMap::new();
    for o in outcomes {
        if let Some(a) = o.abstained {
            by_reason.entry(a.why).or_default().push((o.seed, a.step));
        }
    }
    if by_reason.is_empty() {
        let _ = writeln!(r, "reference model: judged every step of every seed");
        return;
    }
    let stopped: usize = by_reason.values().map(Vec::len).sum();
    let _ = writeln!(
        r,
        "reference model: stopped predicting in {stopped} of {} seeds \
         (world-side oracles only from that step on):",
        outcomes.len()
    );
    for (why, seeds) in &by_reason {
        let (seed, step) = seeds[0];
        let _ = writeln!(
            r,
            "  at {}: {} seed(s), first: seed {seed} at step {step}",
            why.describe(),
            seeds.len()
        );
    }
}

fn xml(report: &JReport) -> String {
    report
        .to_string()
        .expect("a JUnit report of plain strings serialises")
}

/// Writes `text` to `path` (creating its folder) through a temporary file
/// renamed into place, so a reader never sees half of it.
pub(crate) fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)
}

/// The report: what was swept, totals, violations per check, the
/// determinism check, the shrinks, and `N passed, M failed` last.
fn report(
    sweep: &Sweep,
    outcomes: &[SeedOutcome],
    checks: &BTreeMap<String, Vec<u64>>,
    shrinks: &[Shrink],
) -> String {
    let mut r = String::new();
    // With the determinism check every seed ran twice: both runs count.
    let runs = if sweep.check_determinism { 2 } else { 1 };
    let sim: Duration = outcomes.iter().map(|o| o.sim_time).sum::<Duration>() * runs;
    let faults: usize = outcomes.iter().map(|o| o.faults).sum();
    let failed: Vec<&SeedOutcome> = outcomes.iter().filter(|o| !o.passed()).collect();
    let _ = writeln!(r, "{}", sweep.heading(outcomes.len()));
    let _ = writeln!(
        r,
        "{} seeds; {faults} faults injected; simulated {:.1}s",
        outcomes.len(),
        sim.as_secs_f64()
    );
    judged(&mut r, outcomes);
    if checks.is_empty() {
        let _ = writeln!(r, "violations: none");
    } else {
        let _ = writeln!(r, "violations:");
        for (check, seeds) in checks {
            let _ = writeln!(
                r,
                "  {check:<40} {} seed(s), first: seed {}",
                seeds.len(),
                seeds[0]
            );
        }
        for o in failed.iter().filter(|o| !o.violations.is_empty()).take(20) {
            let _ = writeln!(r, "  seed {}: {}", o.seed, o.violations[0]);
        }
    }
    if sweep.check_determinism {
        let diverged: Vec<&&SeedOutcome> =
            failed.iter().filter(|o| o.divergence.is_some()).collect();
        let _ = writeln!(
            r,
            "determinism: {} seeds run twice, {} diverged",
            outcomes.len(),
            diverged.len()
        );
        for o in diverged {
            if let Some(d) = &o.divergence {
                let _ = writeln!(r, "  seed {}: {d}", o.seed);
            }
        }
    }
    for s in shrinks {
        match s {
            Shrink::Written {
                seed,
                check,
                path,
                runs,
                faults,
                requests,
            } => {
                let _ = writeln!(
                    r,
                    "shrunk seed {seed} ({check}) in {runs} runs: {} -> {} faults, {} -> {} requests",
                    faults.0, faults.1, requests.0, requests.1
                );
                let _ = writeln!(r, "  reproducer: {}", path.display());
                let _ = writeln!(
                    r,
                    "  replay: cargo run --release -p tiersim -- run {} --trace{}",
                    path.display(),
                    plant_flag(sweep.plant)
                );
            }
            Shrink::Vanished { seed, check } => {
                let _ = writeln!(
                    r,
                    "shrink: seed {seed} no longer fails {check} (nondeterministic?)"
                );
            }
            Shrink::Unwritten { seed, check, error } => {
                let _ = writeln!(
                    r,
                    "shrink: seed {seed} ({check}): cannot write the reproducer: {error}"
                );
            }
        }
    }
    let _ = writeln!(
        r,
        "\n{} passed, {} failed",
        outcomes.len() - failed.len(),
        failed.len()
    );
    r
}
