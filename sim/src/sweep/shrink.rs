//! Shrinking a failing seed to a small standalone reproducer: greedy removal
//! (faults first, then requests, then any other step) while the *same* check
//! still fails, then the result written as an ordinary scenario file.

use std::path::{Path, PathBuf};

use super::{Composed, Origin, Plan};
use crate::record::Violation;
use crate::scenario::format::Scenario;

/// A minimised failing run.
#[derive(Debug, Clone)]
pub struct Shrunk {
    pub seed: u64,
    /// The check that failed (`oracle:<name>`), and still does.
    pub check: String,
    /// Its first violation in the shrunk run.
    pub violation: Violation,
    pub composed: Composed,
    pub faults_before: usize,
    pub requests_before: usize,
    /// Simulation runs the shrinking took.
    pub runs: usize,
}

impl Shrunk {
    /// The reproducer as a standalone scenario: oracles only, a description
    /// naming the check, the seed and where it came from.
    pub fn scenario(&self, plan: &Plan) -> Scenario {
        let mut s = self.composed.scenario.clone();
        let oracle = self.check.strip_prefix("oracle:").unwrap_or(&self.check);
        s.name = format!("Sweep reproducer: {oracle} in {}", plan.base.name);
        let plant = plan
            .plant
            .map(|b| {
                format!(
                    "\nIt needs the planted review bug `{b}`: replay with `--plant {b}`; \
                     without it, it passes.\n"
                )
            })
            .unwrap_or_default();
        s.description = format!(
            "Found by `tiersim sweep {file}`: seed {seed} of \"{name}\" violated {check} \
             at step {step}:\n  {message}\n\nShrunk (greedy removal while the same check \
             still fails) from {fb} faults and {rb} requests to {fa} faults and {ra} \
             requests. Expectations are left out: the oracles alone judge this file, and \
             `tiersim run` fails while the bug is there.\nThe seed's {swarm}.\n{plant}",
            file = plan.file.display(),
            seed = self.seed,
            name = plan.base.name,
            check = self.check,
            step = self.violation.step,
            message = self.violation.message,
            fb = self.faults_before,
            rb = self.requests_before,
            fa = self.composed.fault_count(),
            ra = self.composed.request_count(),
            swarm = plan.swarm(self.seed),
        );
        s
    }

    /// Writes the reproducer into `dir`; returns its path.
    pub fn write(&self, plan: &Plan, dir: &Path) -> std::io::Result<PathBuf> {
        let stem = plan
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".into());
        let oracle = self.check.strip_prefix("oracle:").unwrap_or(&self.check);
        let path = dir.join(format!("{stem}-seed{}-{oracle}.toml", self.seed));
        let text = crate::scenario::write::to_toml(&self.scenario(plan))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        super::campaign::write_file(&path, &text)?;
        Ok(path)
    }
}

struct Shrinker<'a> {
    plan: &'a Plan,
    check: &'a str,
    runs: usize,
}

impl Shrinker<'_> {
    /// The first violation of the check in `c`'s run, if it still fails.
    fn fails(&mut self, c: &Composed) -> Option<Violation> {
        self.runs += 1;
        self.plan
            .run(c)
            .violations
            .into_iter()
            .find(|v| v.check == self.check)
    }

    /// Drops every step after the one where the check first fails (later
    /// steps cannot change an earlier step's record).
    fn cut_after(&self, c: &Composed, v: &Violation) -> Composed {
        if v.step == 0 {
            return c.clone();
        }
        let mut out = c.clone();
        out.scenario.steps.truncate(v.step);
        out.origins.truncate(v.step);
        let origins = out.origins.clone();
        out.events
            .retain(|e| origins.contains(&Origin::Start(e.number)));
        out
    }

    /// Tries removing each unit (a set of origins) in turn, last first,
    /// keeping every removal after which the check still fails.
    fn greedy(
        &mut self,
        mut cur: Composed,
        mut v: Violation,
        units: Vec<Vec<Origin>>,
    ) -> (Composed, Violation, bool) {
        let mut changed = false;
        for unit in units.into_iter().rev() {
            if !unit.iter().any(|o| cur.origins.contains(o)) {
                continue;
            }
            let trial = cur.retain(|o| !unit.contains(&o));
            if let Some(tv) = self.fails(&trial) {
                cur = self.cut_after(&trial, &tv);
                v = tv;
                changed = true;
            }
        }
        (cur, v, changed)
    }
}

fn fault_units(c: &Composed) -> Vec<Vec<Origin>> {
    c.events
        .iter()
        .map(|e| vec![Origin::Start(e.number), Origin::End(e.number)])
        .collect()
}

fn base_units(c: &Composed, requests: bool) -> Vec<Vec<Origin>> {
    c.scenario
        .steps
        .iter()
        .zip(&c.origins)
        .filter(|(st, o)| {
            matches!(o, Origin::Base(_) | Origin::Liveness(_))
                && super::compose::sends_requests(st.get_ref()) == requests
        })
        .map(|(_, o)| vec![*o])
        .collect()
}

/// Shrinks seed `seed` of `plan` while `check` still fails. `None` when the
/// seed does not fail that check.
pub fn shrink(plan: &Plan, seed: u64, check: &str) -> Option<Shrunk> {
    let full = plan.compose(seed, &plan.schedule(seed));
    let mut sh = Shrinker {
        plan,
        check,
        runs: 0,
    };
    let v = sh.fails(&full)?;
    let mut cur = sh.cut_after(&full, &v);
    let mut v = v;
    // Every fault at once first: often none is needed.
    if !cur.events.is_empty() {
        let bare = cur.retain(|o| matches!(o, Origin::Base(_) | Origin::Liveness(_)));
        if let Some(bv) = sh.fails(&bare) {
            cur = sh.cut_after(&bare, &bv);
            v = bv;
        }
    }
    for _round in 0..3 {
        let mut changed = false;
        for units in [
            fault_units(&cur),
            base_units(&cur, true),
            base_units(&cur, false),
        ] {
            let (c, nv, ch) = sh.greedy(cur, v, units);
            cur = c;
            v = nv;
            changed |= ch;
        }
        if !changed {
            break;
        }
    }
    Some(Shrunk {
        seed,
        check: check.to_string(),
        violation: v,
        faults_before: full.fault_count(),
        requests_before: full.request_count(),
        composed: cur,
        runs: sh.runs,
    })
}
