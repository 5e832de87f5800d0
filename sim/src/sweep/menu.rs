//! The fault menu a seed's schedule is drawn from: the scenario's `[sweep]`
//! table, its defaults, and the command-line overrides.

use std::time::Duration;

use crate::hosts::Chunking;
use crate::scenario::format::{FaultKind, Scenario};
use crate::scenario::load::{fault_counts, host_names, MAX_CONCURRENT};

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
    /// Texts a drawn `http_status` fault may carry (empty: the fixed text).
    pub messages: Vec<String>,
    /// Output reserves drawn for the requests that set `max_tokens`
    /// (empty: each keeps its own).
    pub max_tokens: Vec<u64>,
    pub max_latency: Duration,
    /// Chunkings a seed draws from (empty: the scenario's own).
    pub chunkings: Vec<Chunking>,
    /// `--concurrent N`: each unstreamed request step of the base script
    /// is, by a draw of the seed, sent as `N` requests at once.
    pub concurrent: Option<usize>,
}

/// Command-line overrides of the `[sweep]` table.
#[derive(Debug, Clone, Default, PartialEq)]
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
    /// Sends a drawn half of the base script's unstreamed requests as this
    /// many requests at once (`concurrent` steps).
    pub concurrent: Option<usize>,
    /// Runs the sweep under this semantics profile; under `upstream` its
    /// violations are findings about production, not tiersim bugs.
    pub profile: Option<tiersim_engine::config::Profile>,
    /// Steps every tick instead of eliding idle ones (`--step-every-tick`,
    /// hidden: for measuring; the outcomes are the same either way).
    pub step_every_tick: bool,
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
            messages: spec
                .messages
                .as_ref()
                .map_or_else(Vec::new, |m| m.get_ref().clone()),
            max_tokens: spec
                .max_tokens
                .as_ref()
                .map_or_else(Vec::new, |m| m.get_ref().clone()),
            max_latency: spec.max_latency.map_or(Duration::from_secs(2), |d| d.0),
            chunkings: match (&flags.chunking, &spec.chunking) {
                (Some(c), _) => c.clone(),
                (None, Some(c)) => c.get_ref().clone(),
                (None, None) => Vec::new(),
            },
            concurrent: match flags.concurrent {
                Some(n) if !(2..=MAX_CONCURRENT).contains(&n) => {
                    return Err(format!(
                        "--concurrent {n}: send 2 to {MAX_CONCURRENT} requests at once"
                    ))
                }
                n => n,
            },
        })
    }
}
