//! The chunking metamorphic check (issue 15): a scenario run again with
//! only its hosts' write boundaries changed must give the client the same
//! outcome for every request — status, exact bytes, and the router's
//! attempts (provider, round, outcome, decision). Simulated times are left
//! out: they may move by a tick when a body goes out in more pieces.
//!
//! The variants are `[world] chunking = "whole"`, `"writes"` and
//! `"random"` cut with several `chunk_seed`s, with and without a small
//! `max_chunk`, so a boundary falls inside SSE lines, JSON and base64.

use std::fmt;
use std::path::Path;

use bytes::Bytes;
use tiersim_engine::retry::{Decision, Outcome};

use crate::hosts::Chunking;
use crate::record::Report;
use crate::runner::{self, RunOptions};
use crate::scenario::format::{Scenario, WorldSpec};

/// What the client saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOutcome {
    /// 1-based step.
    pub step: usize,
    pub status: u16,
    pub body: Bytes,
    /// Per attempt: provider, round, outcome, decision.
    pub attempts: Vec<(String, u32, Outcome, Decision)>,
}

/// Every request's client outcome in `r`, in step order.
pub fn outcomes(r: &Report) -> Vec<ClientOutcome> {
    r.steps
        .iter()
        .filter_map(|st| {
            let req = st.request.as_ref()?;
            Some(ClientOutcome {
                step: st.index,
                status: req.status,
                body: req.body.clone(),
                attempts: req
                    .attempts
                    .iter()
                    .map(|a| {
                        (
                            a.provider.as_str().to_string(),
                            a.round,
                            a.outcome.clone(),
                            a.decision,
                        )
                    })
                    .collect(),
            })
        })
        .collect()
}

/// The chunkings a scenario is compared under: whole, as written, and
/// `random_cuts` seeded random cuts (alternately with 8-byte pieces at
/// most and with whole-body pieces).
pub fn variants(random_cuts: u64) -> Vec<WorldSpec> {
    let mut out = vec![
        WorldSpec {
            chunking: Chunking::Whole,
            ..WorldSpec::default()
        },
        WorldSpec::default(),
    ];
    for seed in 0..random_cuts {
        out.push(WorldSpec {
            chunking: Chunking::Random,
            max_chunk: (seed % 2 == 0).then(|| toml::Spanned::new(0..0, 8)),
            chunk_seed: seed,
            ..WorldSpec::default()
        });
    }
    out
}

/// Two chunkings of one world that gave the client different outcomes.
#[derive(Debug, Clone)]
pub struct Divergence {
    pub step: usize,
    pub base: String,
    pub other: String,
    /// What differs, both sides.
    pub what: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {}: the client outcome depends on chunking ({} vs {}): {}",
            self.step, self.base, self.other, self.what
        )
    }
}

fn describe(w: &WorldSpec) -> String {
    match (w.chunking, &w.max_chunk) {
        (Chunking::Random, Some(m)) => format!(
            "chunking = \"random\", max_chunk = {}, chunk_seed = {}",
            m.get_ref(),
            w.chunk_seed
        ),
        (Chunking::Random, None) => {
            format!("chunking = \"random\", chunk_seed = {}", w.chunk_seed)
        }
        (c, _) => format!("chunking = {:?}", c.name()),
    }
}

fn difference(a: &ClientOutcome, b: &ClientOutcome) -> String {
    if a.status != b.status {
        return format!("status {} vs {}", a.status, b.status);
    }
    if a.attempts != b.attempts {
        return format!("attempts {:?} vs {:?}", a.attempts, b.attempts);
    }
    let cut = |b: &Bytes| String::from_utf8_lossy(&b[..b.len().min(160)]).into_owned();
    format!("bytes {:?} vs {:?}", cut(&a.body), cut(&b.body))
}

/// Runs `s` under each of `worlds` and compares every request's client
/// outcome with the first world's. `Ok(n)`: all `n` runs agreed.
pub fn check(
    s: &Scenario,
    file: &Path,
    opts: &RunOptions,
    worlds: &[WorldSpec],
) -> Result<usize, Divergence> {
    let run = |w: &WorldSpec| {
        let mut s = s.clone();
        // Only the cut changes: the rest of the world stays the scenario's.
        s.world = WorldSpec {
            chutes_nonce_expires_in: s.world.chutes_nonce_expires_in,
            ..w.clone()
        };
        outcomes(&runner::run(&s, file, opts))
    };
    let Some((first, rest)) = worlds.split_first() else {
        return Ok(0);
    };
    let base = run(first);
    for w in rest {
        let other = run(w);
        for (a, b) in base.iter().zip(&other) {
            if a != b {
                return Err(Divergence {
                    step: a.step,
                    base: describe(first),
                    other: describe(w),
                    what: difference(a, b),
                });
            }
        }
        if base.len() != other.len() {
            return Err(Divergence {
                step: base.len().min(other.len()) + 1,
                base: describe(first),
                other: describe(w),
                what: format!("{} requests vs {}", base.len(), other.len()),
            });
        }
    }
    Ok(worlds.len())
}
