//! A fault schedule merged into the base scenario's steps by time, then the
//! liveness phase; the result is an ordinary scenario (a reproducer is this,
//! shrunk, written back as a file).

use std::time::Duration;

use toml::Spanned;

use super::schedule::Draw;
use super::{EventAction, FaultEvent, Plan};
use crate::fault::Dice;
use crate::hosts::Chunking;
use crate::scenario::format::{Dur, Scenario, Step};
use crate::scenario::Action;

/// Notes of the liveness phase's steps start with this.
pub const LIVENESS_NOTE: &str = "liveness";
/// Simulated time the liveness phase waits after healing, for restarted
/// hosts to boot, before it asks each model once.
const LIVENESS_SETTLE: Duration = Duration::from_secs(2);

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
            .filter(|s| sends_requests(s.get_ref()))
            .count()
    }
}

/// Whether `step` sends client requests (one, or several at once).
pub(super) fn sends_requests(step: &Step) -> bool {
    step.request.is_some() || step.concurrent.is_some()
}

/// `--concurrent n`: an unstreamed request step, by a draw, as `n` copies
/// of its request sent at once. Every such step draws (taken or not), in
/// script order, so the choice is a function of the seed and the script.
fn sent_at_once(st: &Spanned<Step>, n: usize, draw: &mut Draw) -> Spanned<Step> {
    let step = st.get_ref();
    match &step.request {
        Some(spec) if !spec.stream && draw.below(2) == 0 => {
            let mut step = step.clone();
            step.request = None;
            step.concurrent = Some(vec![spec.clone(); n]);
            if step.note.is_none() {
                step.note = Some(format!("sweep: sent {n} at once"));
            }
            spanned(step)
        }
        _ => st.clone(),
    }
}

/// `[sweep] max_tokens`: each request of `st` that sets `max_tokens` takes
/// a drawn one of `reserves`. Every such request draws, in script order, so
/// the reserves are a function of the seed and the script.
fn reserves_drawn(st: &Spanned<Step>, reserves: &[u64], draw: &mut Draw) -> Spanned<Step> {
    let mut step = st.get_ref().clone();
    let requests = step
        .request
        .iter_mut()
        .chain(step.concurrent.iter_mut().flatten());
    let mut drawn = false;
    for r in requests.filter(|r| r.max_tokens.is_some()) {
        r.max_tokens = Some(reserves[draw.below(reserves.len() as u64) as usize]);
        drawn = true;
    }
    if drawn {
        spanned(step)
    } else {
        st.clone()
    }
}

pub(super) fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}

impl Plan {
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
        let mut at_once = self
            .menu
            .concurrent
            .map(|n| (n, Draw::of(seed, "sweep/concurrent")));
        let reserves = &self.menu.max_tokens;
        let mut reserve_draw = (!reserves.is_empty()).then(|| Draw::of(seed, "sweep/max_tokens"));
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
            let st = match &mut reserve_draw {
                Some(draw) => reserves_drawn(st, reserves, draw),
                None => st.clone(),
            };
            steps.push(match &mut at_once {
                Some((n, draw)) => sent_at_once(&st, *n, draw),
                None => st,
            });
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
        // What the base script itself leaves broken is healed too: its own
        // faults, crashes, partitions and holds with no later step undoing
        // them (the sweep's own are healed by their end steps).
        let mut out: Vec<Step> = base_leftovers(s)
            .iter()
            .map(|a| Step {
                note: Some(format!("{LIVENESS_NOTE}: heal what the script left")),
                ..Step::of(a.as_action())
            })
            .collect();
        out.push(Step {
            advance: Some(Dur(LIVENESS_SETTLE)),
            note: Some(format!("{LIVENESS_NOTE}: every fault healed")),
            ..Step::default()
        });
        for id in ids {
            out.push(Step {
                request: Some(crate::scenario::format::RequestSpec {
                    model: id.clone(),
                    stream: false,
                    prompt: None,
                    repeat: None,
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
}

/// What undoes one thing a script leaves broken at its end.
enum Undo {
    ClearFaults(String),
    Restart(String),
    Repair(String, String),
    Release(String, String),
}

impl Undo {
    fn as_action(&self) -> Action<'_> {
        match self {
            Undo::ClearFaults(h) => Action::ClearFaults(h),
            Undo::Restart(h) => Action::Restart(h),
            Undo::Repair(a, b) => Action::Repair(a, b),
            Undo::Release(a, b) => Action::Release(a, b),
        }
    }
}

/// The undoing steps for what `s`'s own steps leave broken at their end,
/// in a fixed order: fault boards, then down hosts, partitions, holds.
fn base_leftovers(s: &Scenario) -> Vec<Undo> {
    use std::collections::BTreeSet;
    let (mut faulted, mut down) = (BTreeSet::new(), BTreeSet::new());
    let (mut parted, mut held) = (BTreeSet::new(), BTreeSet::new());
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    for st in &s.steps {
        match st.get_ref().action() {
            Action::Fault(f) => {
                faulted.insert(f.host.clone());
            }
            Action::ClearFaults(h) => {
                faulted.remove(h);
            }
            Action::Crash(h) | Action::Shutdown(h) => {
                down.insert(h.to_string());
            }
            Action::Restart(h) => {
                down.remove(h);
            }
            Action::Partition(a, b) => {
                parted.insert(pair(a, b));
            }
            Action::Repair(a, b) => {
                parted.remove(&pair(a, b));
            }
            Action::Hold(a, b) => {
                held.insert(pair(a, b));
            }
            Action::Release(a, b) => {
                held.remove(&pair(a, b));
            }
            _ => {}
        }
    }
    let faulted = faulted.into_iter().map(Undo::ClearFaults);
    let down = down.into_iter().map(Undo::Restart);
    let parted = parted.into_iter().map(|(a, b)| Undo::Repair(a, b));
    let held = held.into_iter().map(|(a, b)| Undo::Release(a, b));
    faulted.chain(down).chain(parted).chain(held).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn asking(stream: bool) -> Spanned<Step> {
        let toml = format!("request = {{ model = \"m\", stream = {stream} }}");
        spanned(toml::from_str(&toml).unwrap_or_else(|e| panic!("{toml}: {e}")))
    }

    fn shown(step: &Spanned<Step>) -> String {
        format!("{:?}", step.get_ref())
    }

    #[test]
    fn r17_concurrent_sends_an_unstreamed_request_n_times_at_once_by_a_draw() {
        let unstreamed = asking(false);
        let streamed = asking(true);
        let refresh = spanned(Step {
            refresh: Some(Default::default()),
            ..Default::default()
        });
        let mut taken = [0; 2];
        for seed in 0..16 {
            let mut draw = Draw::of(seed, "sweep/concurrent");
            // The same stream of draws, read by hand: one per unstreamed
            // request step, none for any other step.
            let mut twin = Draw::of(seed, "sweep/concurrent");
            for _ in 0..2 {
                for other in [&streamed, &refresh] {
                    let same = sent_at_once(other, 3, &mut draw);
                    assert_eq!(shown(&same), shown(other));
                }
                let got = sent_at_once(&unstreamed, 3, &mut draw);
                let step = got.get_ref();
                if twin.below(2) == 0 {
                    taken[0] += 1;
                    let spec = format!("{:?}", unstreamed.get_ref().request.as_ref().unwrap());
                    assert!(step.request.is_none());
                    let sent = step.concurrent.as_deref().unwrap_or_default();
                    assert_eq!(sent.len(), 3);
                    assert!(sent.iter().all(|s| format!("{s:?}") == spec));
                    assert_eq!(step.note.as_deref(), Some("sweep: sent 3 at once"));
                } else {
                    taken[1] += 1;
                    assert_eq!(shown(&got), shown(&unstreamed));
                }
            }
        }
        assert!(taken.iter().all(|n| *n > 0), "both ways: {taken:?}");
    }
}
