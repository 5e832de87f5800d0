//! The model of SPEC-parity R46 (TTFT samples), R47 (latency demotion) and
//! R48 (prefix placement), written from the spec.
//!
//! The model cannot know a sample's exact value: it is simulated network
//! time (turmoil draws each message's latency from the seed). It knows
//! bounds: a sample is at least the delay a fault scripted rounded up to
//! whole ticks, and at least one tick (messages cross at tick boundaries,
//! and an answer sent at once leaves at the next one), and at most [`hops`] crossings of at most the link's
//! maximum latency and a tick each, plus every delay scripted on the way.
//! So each provider's average is tracked as an interval (the update is
//! monotone in the old average and the sample), and its sample count as a
//! range (a stream broken after content may or may not have delivered its
//! first content chunk). A demotion the intervals decide is predicted; one
//! they cannot decide makes the model stop judging the run (`undecided`),
//! never a false violation.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

/// R47: warmed from this many samples.
const WARM: u32 = 8;
/// R47: never latency-demoted at or under this average (ms).
const FLOOR_MS: f64 = 500.0;

/// turmoil 0.7.2's default maximum message latency (`world` keeps it).
const MAX_LINK_MS: f64 = 100.0;

/// The most network crossings between an attempt's start and its first
/// content chunk: connect (SYN, SYN-ACK), the request, the answer. A Chutes
/// attempt may first discover (`/v1/models`, `/e2e/instances`) and always
/// fetches evidence, each a request of its own before the invocation.
pub fn hops(chutes: bool) -> u32 {
    if chutes {
        16
    } else {
        4
    }
}

/// The bounds of one sample, in ms: `delay_ms` scripted by faults on the
/// attempt's way, `tick` the world's step.
pub fn sample_bounds(
    delay_lo_ms: f64,
    delay_hi_ms: f64,
    tick: Duration,
    chutes: bool,
) -> (f64, f64) {
    let tick_ms = tick.as_secs_f64() * 1000.0;
    let hops = f64::from(hops(chutes));
    // Messages move at tick boundaries: the request lands on one, and the
    // answer, sent the scripted delay later, leaves on the next boundary at
    // or after it, and never in the step it was sent in when it was sent
    // at once. So at least the delay rounded up to whole ticks, and at
    // least a tick (not the delay plus a tick: a delay that ends mid-tick
    // waits only for that tick's end).
    let lo = ((delay_lo_ms / tick_ms).ceil() * tick_ms).max(tick_ms);
    (
        lo,
        delay_hi_ms + hops * (MAX_LINK_MS + tick_ms) + 4.0 * tick_ms,
    )
}

/// R46's update for sample number `n` (1-based): the first sets the
/// average, samples 2–8 move it halfway, later ones a tenth of the way.
fn update(ema: f64, n: u32, x: f64) -> f64 {
    match n {
        0 | 1 => x,
        2..=WARM => ema + 0.5 * (x - ema),
        _ => ema + 0.1 * (x - ema),
    }
}

/// One provider's TTFT state as far as the model can tell.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Range {
    pub samples_lo: u32,
    pub samples_hi: u32,
    pub ema_lo: f64,
    pub ema_hi: f64,
}

impl Range {
    /// One sample in `[lo, hi]` ms; `surely` false when it may not have been
    /// taken at all. Samples under 1 ms are not taken (R46), so a lower
    /// bound under 1 ms makes the sample uncertain.
    pub fn sample(&mut self, lo: f64, hi: f64, surely: bool) {
        let surely = surely && lo >= 1.0;
        let mut los = Vec::new();
        let mut his = Vec::new();
        if !surely {
            los.push(self.ema_lo);
            his.push(self.ema_hi);
        }
        // Every update rule the sample's number may select.
        let first = self.samples_lo.saturating_add(1);
        let last = self.samples_hi.saturating_add(1);
        let mut ns = vec![first, last];
        ns.extend(
            [1, 2, WARM, WARM + 1]
                .into_iter()
                .filter(|n| (first..=last).contains(n)),
        );
        for n in ns {
            // With no sample so far the old average is unused.
            los.push(update(self.ema_lo, n, lo.max(1.0)));
            his.push(update(self.ema_hi, n, hi));
        }
        self.ema_lo = los.into_iter().fold(f64::INFINITY, f64::min);
        self.ema_hi = his.into_iter().fold(0.0, f64::max);
        if surely {
            self.samples_lo = self.samples_lo.saturating_add(1);
        }
        self.samples_hi = self.samples_hi.saturating_add(1);
    }

    fn surely_warmed(&self) -> bool {
        self.samples_lo >= WARM && self.ema_lo > 0.0
    }

    fn maybe_warmed(&self) -> bool {
        self.samples_hi >= WARM && self.ema_hi > 0.0
    }
}

/// R47 for each of a request's providers (`None`: the intervals cannot
/// tell), given every provider's state by id.
pub fn demoted(ids: &[&str], states: &BTreeMap<String, Range>) -> Vec<Option<bool>> {
    let state = |id: &str| states.get(id).copied().unwrap_or_default();
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let me = state(id);
            let others = ids
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, o)| state(o));
            // Demoted iff warmed, over 500 ms and over twice the fastest
            // *other* warmed provider (over twice itself is impossible).
            let fastest_surely = others
                .clone()
                .filter(Range::surely_warmed)
                .map(|o| o.ema_hi)
                .reduce(f64::min);
            let fastest_maybe = others
                .filter(Range::maybe_warmed)
                .map(|o| o.ema_lo)
                .reduce(f64::min);
            let surely = me.surely_warmed()
                && me.ema_lo > FLOOR_MS
                && fastest_surely.is_some_and(|m| me.ema_lo > 2.0 * m);
            let surely_not = !me.maybe_warmed()
                || me.ema_hi <= FLOOR_MS
                || fastest_maybe.is_none_or(|m| me.ema_hi <= 2.0 * m);
            match (surely, surely_not) {
                (true, _) => Some(true),
                (false, true) => Some(false),
                (false, false) => None,
            }
        })
        .collect()
}

/// R48's prefix hash, from the spec's description and tiersim's choice
/// of 64-bit FNV-1a (`engine/src/placement.rs` documents it): for each of
/// the first two messages, its role, then its string content or the
/// `text` of each text part, each piece preceded by its length as 8
/// little-endian bytes.
pub fn prefix_hash(body: &Value) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |piece: &str| {
        let len = (piece.len() as u64).to_le_bytes();
        for &b in len.iter().chain(piece.as_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    for m in messages.iter().take(2) {
        eat(m["role"].as_str().unwrap_or(""));
        match &m["content"] {
            Value::String(s) => eat(s),
            Value::Array(parts) => {
                for p in parts.iter().filter(|p| p["type"] == "text") {
                    if let Some(t) = p["text"].as_str() {
                        eat(t);
                    }
                }
            }
            _ => {}
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r46_a_sample_is_at_least_the_delay_rounded_up_to_whole_ticks() {
        let ms = Duration::from_millis;
        // Seen at a 13 ms tick: a 1244 ms delay gave a 1255 ms sample, under
        // the delay plus a tick (1257).
        let (lo, hi) = sample_bounds(1244.0, 1244.0, ms(13), false);
        assert_eq!(lo, 1248.0);
        assert!(lo <= 1255.0 && 1255.0 <= hi);
        // No delay: the answer leaves at the next boundary, a tick later.
        assert_eq!(sample_bounds(0.0, 0.0, ms(13), false).0, 13.0);
        assert_eq!(sample_bounds(0.0, 0.0, ms(1), false).0, 1.0);
        // A delay of whole ticks can land on the boundary it ends on.
        assert_eq!(sample_bounds(130.0, 130.0, ms(13), false).0, 130.0);
        assert_eq!(sample_bounds(700.0, 700.0, ms(1), true).0, 700.0);
    }

    #[test]
    fn r46_model_interval_holds_the_exact_average() {
        let mut r = Range::default();
        for x in [100.0, 200.0, 300.0] {
            r.sample(x, x, true);
        }
        // 100 → 150 → 225
        assert_eq!((r.samples_lo, r.samples_hi), (3, 3));
        assert_eq!((r.ema_lo, r.ema_hi), (225.0, 225.0));
        r.sample(100.0, 300.0, false);
        assert_eq!((r.samples_lo, r.samples_hi), (3, 4));
        assert!(r.ema_lo <= 162.5 && r.ema_hi >= 262.5);
    }

    #[test]
    fn r47_model_decides_only_what_the_intervals_decide() {
        let at = |lo: f64, hi: f64| Range {
            samples_lo: 8,
            samples_hi: 8,
            ema_lo: lo,
            ema_hi: hi,
        };
        let states: BTreeMap<String, Range> = [
            ("slow".to_string(), at(4000.0, 4400.0)),
            ("fast".to_string(), at(1.0, 408.0)),
            ("unsure".to_string(), at(300.0, 900.0)),
        ]
        .into();
        assert_eq!(
            demoted(&["slow", "fast"], &states),
            [Some(true), Some(false)]
        );
        assert_eq!(demoted(&["fast", "unsure"], &states), [Some(false), None]);
        assert_eq!(demoted(&["slow"], &states), [Some(false)], "alone");
    }
}
