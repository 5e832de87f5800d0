//! A seed's random fault schedule: which fault kinds the seed enables
//! (swarm testing) and the faults drawn from them, each with its start and
//! end. A function of the seed, the menu and the reference run only
//! (ChaCha20 streams derived from the seed, never OS randomness).

use std::fmt;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use super::Plan;
use crate::fault::{Dice, DrawLimits, FaultInjection, FaultRule};
use crate::hosts::derive_seed;
use crate::scenario::format::FaultKind;

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

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Deterministic draws from a ChaCha20 stream.
pub(super) struct Draw(ChaCha20Rng);

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
    /// The stream of `label` for `seed` (its own, so draws for one purpose
    /// never shift another's).
    pub(super) fn of(seed: u64, label: &str) -> Draw {
        Draw(ChaCha20Rng::from_seed(derive_seed(seed, label)))
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

impl Plan {
    /// Swarm testing (as TigerBeetle's VOPR): each seed enables only some of
    /// the menu's fault kinds, each at its own rate, so rare combinations
    /// (one kind alone, at a high rate) get explored. A function of the seed
    /// and the menu only (its own ChaCha20 stream).
    pub fn swarm(&self, seed: u64) -> Swarm {
        let mut rng = Draw::of(seed, "sweep/swarm");
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
        let mut rng = Draw::of(seed, "sweep/schedule");
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
                        messages: &m.messages,
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
}
